//! Engine, mixtures of experts: transformers' logits on the MoE oracles of
//! `../shared/oracles2` (Mixtral, Qwen2-MoE, Qwen3-MoE, DeepSeek-V3 with latent attention,
//! gpt-oss) in one pass, token by token and in chunks through the KV cache, both math
//! modes, and the `logits` / `generate` commands on them.

use std::path::Path;

use candle_core::{Device, Tensor};
use modelgate::engine::{Logits, Math, Model, ModelConfig};
use modelgate::formats::Checkpoint;

use crate::engine::{expected, max_abs_diff};
use crate::support::{modelgate, oracle2_dir};

const MOE_ORACLES: [&str; 5] = ["mixtral", "qwen2moe", "qwen3moe", "deepseek3", "gptoss"];

fn decoder(path: &Path, math: Math) -> Model {
    let ckpt = Checkpoint::open(path).unwrap();
    let cfg_json = ckpt.dir.as_ref().and_then(|d| d.config.as_ref());
    let cfg = ModelConfig::new(&ckpt.params(), cfg_json, &ckpt.weights.metadata).unwrap();
    Model::load(&ckpt.weights, cfg, math, &Device::Cpu).unwrap()
}

/// Logits of every position of `ids`, fed in chunks of the given sizes (cycled).
fn chunked_logits(model: &mut Model, ids: &[u32], chunks: &[usize]) -> Tensor {
    model.reset().unwrap();
    let mut rows = Vec::new();
    let mut at = 0;
    for &c in chunks.iter().cycle() {
        if at >= ids.len() {
            break;
        }
        let end = (at + c).min(ids.len());
        rows.push(model.forward(&ids[at..end], Logits::All).unwrap());
        at = end;
    }
    Tensor::cat(&rows, 0).unwrap()
}

/// One pass, token by token and chunks of 5/13/7 (which straddle gpt-oss's window of 16).
fn check_paths(name: &str, model: &mut Model, ids: &[u32], want: &Tensor, bound: f32) -> f32 {
    let d = [
        max_abs_diff(&chunked_logits(model, ids, &[ids.len()]), want),
        max_abs_diff(&chunked_logits(model, ids, &[1]), want),
        max_abs_diff(&chunked_logits(model, ids, &[5, 13, 7]), want),
    ];
    eprintln!(
        "{name}: max |delta logit| {:.2e} (one pass), {:.2e} (token by token), {:.2e} (chunks 5/13/7)",
        d[0], d[1], d[2]
    );
    assert!(d.iter().all(|&x| x <= bound), "{name}: {d:?} > {bound}");
    d[0]
}

#[test]
fn moe_oracles_match_transformers_in_f32() {
    for name in MOE_ORACLES {
        let dir = oracle2_dir(name);
        let (ids, want) = expected(&dir);
        let mut model = decoder(&dir, Math::Reference);
        check_paths(name, &mut model, &ids, &want, 1e-4);
    }
}

/// Native math on f32 weights multiplies in f32 as well.
#[test]
fn moe_oracles_native_math_stays_close() {
    for name in MOE_ORACLES {
        let dir = oracle2_dir(name);
        let (ids, want) = expected(&dir);
        let mut model = decoder(&dir, Math::Native);
        let d = max_abs_diff(&chunked_logits(&mut model, &ids, &[ids.len()]), &want);
        eprintln!("{name} native: max |delta logit| {d:.2e}");
        assert!(d <= 1e-3, "{name} native: {d}");
    }
}

/// `modelgate logits --ids ... --out` writes transformers' logits for every MoE oracle, and
/// `generate` runs on them.
#[test]
fn logits_and_generate_commands_run_the_moe_oracles() {
    let tmp = tempfile::tempdir().unwrap();
    for name in MOE_ORACLES {
        let dir = oracle2_dir(name);
        let (ids, want) = expected(&dir);
        let ids: Vec<String> = ids.iter().map(u32::to_string).collect();
        let out = tmp.path().join(format!("{name}.safetensors"));
        let run = modelgate(&[
            "logits",
            dir.to_str().unwrap(),
            "--ids",
            &ids.join(","),
            "--out",
            out.to_str().unwrap(),
            "--quiet",
        ]);
        assert!(
            run.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&run.stderr)
        );
        let dumped = tmp.path().join(name);
        std::fs::create_dir_all(&dumped).unwrap();
        std::fs::rename(&out, dumped.join("expected.safetensors")).unwrap();
        let (got_ids, got) = expected(&dumped);
        assert_eq!(got_ids.len(), ids.len());
        let d = max_abs_diff(&got, &want);
        assert!(d <= 1e-4, "{name}: logits command {d}");
        let run = modelgate(&[
            "generate",
            dir.to_str().unwrap(),
            "--prompt",
            "hello world",
            "-n",
            "8",
        ]);
        assert!(
            run.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&run.stderr)
        );
        assert!(!run.stdout.is_empty(), "{name}: generate printed nothing");
    }
}
