//! `modelgate parity`, `parity record` and `parity check` end to end: SmolLM2 against
//! itself, against its requantizations, golden files, thresholds and bad input.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use serde_json::Value;

use crate::support::{assert_schema, fixture, modelgate, repo, smollm2};

fn eval_text() -> PathBuf {
    fixture("text/eval.txt")
}

fn run_json(args: &[&str]) -> (i32, Value, String) {
    let o = modelgate(args);
    let stderr = String::from_utf8_lossy(&o.stderr).into_owned();
    let v = serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("{args:?} printed no JSON ({e}): {stderr}"));
    (o.status.code().unwrap_or(-1), v, stderr)
}

fn f(v: &Value, path: &str) -> f64 {
    v.pointer(path)
        .and_then(Value::as_f64)
        .unwrap_or_else(|| panic!("no number at {path}"))
}

/// SmolLM2 dequantized to f16 safetensors, and that requantized to Q8_0 and Q4_K_M, made
/// once for every test here. A static is never dropped, so the files live in one fixed
/// folder under cargo's `CARGO_TARGET_TMPDIR`, emptied at first use, rather than in a
/// temporary directory that would leak half a gigabyte into the system's temp on every run.
struct Requantized {
    f16: PathBuf,
    q8_0: PathBuf,
    q4_k_m: PathBuf,
}

fn requantized() -> &'static Requantized {
    static R: OnceLock<Requantized> = OnceLock::new();
    R.get_or_init(|| {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("parity-smollm2");
        if dir.exists() {
            std::fs::remove_dir_all(&dir).unwrap();
        }
        std::fs::create_dir_all(&dir).unwrap();
        let f16 = dir.join("smollm2-f16");
        let q8_0 = dir.join("smollm2-q8_0.gguf");
        let q4_k_m = dir.join("smollm2-q4_k_m.gguf");
        let src = smollm2();
        for (from, to, ty) in [
            (&src, &f16, "F16"),
            (&f16, &q8_0, "Q8_0"),
            (&f16, &q4_k_m, "Q4_K_M"),
        ] {
            let o = modelgate(&[
                "convert",
                from.to_str().unwrap(),
                "-o",
                to.to_str().unwrap(),
                "--type",
                ty,
                "--quiet",
            ]);
            assert!(
                o.status.success(),
                "convert to {ty}: {}",
                String::from_utf8_lossy(&o.stderr)
            );
        }
        Requantized { f16, q8_0, q4_k_m }
    })
}

fn parity(reference: &Path, candidate: &Path, extra: &[&str]) -> (i32, Value, String) {
    let mut a = vec![
        "parity",
        reference.to_str().unwrap(),
        candidate.to_str().unwrap(),
        "--json",
        "--quiet",
    ];
    a.extend_from_slice(extra);
    run_json(&a)
}

const TEXT: [&str; 4] = ["--ctx", "256", "--chunks", "3"];

fn with_text<'a>(extra: &[&'a str], text: &'a str) -> Vec<&'a str> {
    let mut v = vec!["--text", text];
    v.extend_from_slice(extra);
    v
}

#[test]
fn smollm2_against_itself_is_exact() {
    let s = smollm2();
    let text = eval_text();
    let (code, v, err) = parity(
        &s,
        &s,
        &with_text(&["--ctx", "128", "--chunks", "2"], text.to_str().unwrap()),
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(f(&v, "/summary/mean_kld/value"), 0.0);
    assert_eq!(f(&v, "/summary/kld/max"), 0.0);
    assert_eq!(f(&v, "/summary/same_top1/value"), 1.0);
    assert_eq!(f(&v, "/summary/ppl_ratio/value"), 1.0);
    assert_eq!(f(&v, "/summary/max_abs_delta_logit"), 0.0);
    // two chunks of 128, the second half of each scored: 2 x 63 predictions
    assert_eq!(v["summary"]["positions"], 126);
    assert_eq!(v["candidate"]["quant"], "Q4_1");
    assert_eq!(v["verdict"], "pass");
    assert_schema("schemas/parity-report.schema.json", &v);
}

#[test]
fn requantized_smollm2_figures_follow_the_published_order() {
    let r = requantized();
    let text = eval_text();
    let text = text.to_str().unwrap();
    let (c8, q8, e8) = parity(&r.f16, &r.q8_0, &with_text(&TEXT, text));
    let (c4, q4, e4) = parity(&r.f16, &r.q4_k_m, &with_text(&TEXT, text));
    assert_eq!(c8, 0, "{e8}");
    assert_eq!(c4, 0, "{e4}");
    let k8 = f(&q8, "/summary/mean_kld/value");
    let k4 = f(&q4, "/summary/mean_kld/value");
    eprintln!(
        "SmolLM2 f16 -> Q8_0: mean KLD {k8:.5}, top-1 {:.4}; Q4_K_M: mean KLD {k4:.5}, top-1 {:.4}",
        f(&q8, "/summary/same_top1/value"),
        f(&q4, "/summary/same_top1/value")
    );
    assert!(k8 > 0.0 && k8 < k4 / 3.0, "Q8_0 {k8} vs Q4_K_M {k4}");
    assert!(f(&q8, "/summary/same_top1/value") > f(&q4, "/summary/same_top1/value"));
    assert!(f(&q8, "/summary/rms_delta_p/value") < f(&q4, "/summary/rms_delta_p/value"));
    assert_eq!(q8["candidate"]["quant"], "Q8_0");
    assert_eq!(q4["candidate"]["quant"], "Q4_K_M");
    assert_eq!(q8["reference"]["quant"], "F16");
    assert_eq!(q4["thresholds"]["origin"], "built-in defaults");
}

#[test]
fn record_and_check_reproduce_parity_within_its_errors() {
    let r = requantized();
    let dir = tempfile::tempdir().unwrap();
    let golden = dir.path().join("golden.json");
    let text = eval_text();
    let mut rec = vec![
        "parity",
        "record",
        r.f16.to_str().unwrap(),
        "--out",
        golden.to_str().unwrap(),
        "--text",
        text.to_str().unwrap(),
        "--quiet",
    ];
    rec.extend_from_slice(&TEXT);
    let o = modelgate(&rec);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let g: Value = serde_json::from_slice(&std::fs::read(&golden).unwrap()).unwrap();
    assert_schema("schemas/golden.schema.json", &g);
    assert_eq!(g["top_k"], 1024);
    assert_eq!(g["reference"]["quant"], "F16");
    assert!(!g["hardware"]["cpu"].as_str().unwrap().is_empty());

    let (code, full, err) = parity(&r.f16, &r.q4_k_m, &with_text(&TEXT, text.to_str().unwrap()));
    assert_eq!(code, 0, "{err}");
    let (code, chk, err) = run_json(&[
        "parity",
        "check",
        r.q4_k_m.to_str().unwrap(),
        "--golden",
        golden.to_str().unwrap(),
        "--json",
        "--quiet",
    ]);
    assert_eq!(code, 0, "{err}");
    assert_schema("schemas/parity-report.schema.json", &chk);
    assert_eq!(chk["against"], "golden");
    assert_eq!(full["summary"]["positions"], chk["summary"]["positions"]);
    // Exact from the golden: the next token's probability and the reference's top-1.
    for p in [
        "/summary/same_top1/value",
        "/summary/ppl_ratio/value",
        "/summary/rms_delta_p/value",
    ] {
        assert!((f(&full, p) - f(&chk, p)).abs() < 1e-9, "{p}");
    }
    // KLD over the top-1024 plus a tail bucket: a lower bound, within the standard error.
    let (kf, kc) = (
        f(&full, "/summary/mean_kld/value"),
        f(&chk, "/summary/mean_kld/value"),
    );
    let se = f(&full, "/summary/mean_kld/stderr");
    assert!(
        kc <= kf + 1e-12 && kf - kc <= se,
        "full {kf} golden {kc} se {se}"
    );
    // The noise floor travels with the golden file.
    assert!(chk["noise_floor"]["mean_kld"]["value"].as_f64().unwrap() < 1e-6);
}

#[test]
fn prompts_report_where_greedy_continuations_part() {
    let s = smollm2();
    let dir = tempfile::tempdir().unwrap();
    let prompts = dir.path().join("prompts.txt");
    std::fs::write(&prompts, "The capital of France is\ndef fibonacci(n):\n").unwrap();
    let (code, v, err) = parity(
        &s,
        &s,
        &["--prompts", prompts.to_str().unwrap(), "--math", "native"],
    );
    assert_eq!(code, 0, "{err}");
    let d = v["divergence"].as_array().unwrap();
    assert_eq!(d.len(), 2);
    // The reference continuation is transformers' (issue 4), EOS included.
    let france: Vec<u64> = d[0]["reference"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap())
        .collect();
    assert_eq!(
        france,
        [
            7042, 30, 198, 198, 504, 2988, 314, 42, 216, 34, 32, 33, 40, 29, 32, 33, 29, 34, 34,
            216, 33, 34, 42, 33, 34, 42, 37, 35, 30, 2
        ]
    );
    // Native Q4_1 math leaves the reference path, as llama.cpp's does (at token 5 here).
    let first = d[0]["first_divergence"].as_u64();
    eprintln!(
        "native SmolLM2 Q4_1 diverges at {first:?} and {:?}",
        d[1]["first_divergence"]
    );
    assert!(first.is_some());
    assert_eq!(v["corpus"]["kind"], "prompts");
    // scored: each continuation's tokens (the first predicted from the prompt's last)
    let scored: usize = d
        .iter()
        .map(|x| x["reference"].as_array().unwrap().len())
        .sum();
    assert_eq!(v["summary"]["positions"], scored);
}

fn policy_with_tight_q4_k_m(dir: &Path) -> PathBuf {
    let text = std::fs::read_to_string(repo().join("policies/commercial.yaml")).unwrap();
    let line = text
        .lines()
        .find(|l| l.trim_start().starts_with("Q4_K_M:"))
        .expect("commercial policy has a Q4_K_M threshold");
    let tight = text.replace(
        line,
        "    Q4_K_M: { max_mean_kld: 0.000001, min_top1: 0.85 }",
    );
    let p = dir.join("tight.yaml");
    std::fs::write(&p, tight).unwrap();
    p
}

#[test]
fn a_threshold_set_too_tight_fails_with_exit_1_and_says_which() {
    let r = requantized();
    let dir = tempfile::tempdir().unwrap();
    let policy = policy_with_tight_q4_k_m(dir.path());
    let text = eval_text();
    let o = modelgate(&[
        "parity",
        r.f16.to_str().unwrap(),
        r.q4_k_m.to_str().unwrap(),
        "--text",
        text.to_str().unwrap(),
        "--ctx",
        "128",
        "--chunks",
        "1",
        "--policy",
        policy.to_str().unwrap(),
        "--quiet",
    ]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert_eq!(o.status.code(), Some(1), "{out}");
    assert!(out.contains("parity/max-mean-kld"), "{out}");
    assert!(out.contains("exceeds the Q4_K_M limit 1.000e-6"), "{out}");
    assert!(
        out.contains("tight.yaml` parity.thresholds.Q4_K_M"),
        "{out}"
    );
    assert!(out.contains("verdict: fail"), "{out}");
}

#[test]
fn fixture_safetensors_and_its_gguf_conversions_agree() {
    let dir = tempfile::tempdir().unwrap();
    let text = eval_text();
    for family in ["tiny-llama", "tiny-mistral", "tiny-qwen2"] {
        let src = fixture(&format!("models/{family}"));
        for (ty, max_kld) in [("F32", 1e-9), ("Q8_0", 1e-3)] {
            let out = dir.path().join(format!("{family}-{ty}.gguf"));
            let o = modelgate(&[
                "convert",
                src.to_str().unwrap(),
                "-o",
                out.to_str().unwrap(),
                "--type",
                ty,
                "--quiet",
            ]);
            assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
            let (code, v, err) = parity(
                &src,
                &out,
                &with_text(&["--ctx", "128", "--chunks", "2"], text.to_str().unwrap()),
            );
            assert_eq!(code, 0, "{family} {ty}: {err}");
            let k = f(&v, "/summary/mean_kld/value");
            assert!(k <= max_kld, "{family} {ty}: mean KLD {k}");
            assert_eq!(v["candidate"]["quant"], ty);
        }
    }
}

fn fails_with_2(args: &[&str], needle: &str) {
    let o = modelgate(args);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
    assert!(
        err.contains(needle),
        "{args:?}: expected `{needle}` in {err}"
    );
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn bad_input_exits_2_with_a_clear_message() {
    let llama = fixture("models/tiny-llama");
    let qwen = fixture("models/tiny-qwen2");
    let text = eval_text();
    let (l, q, t) = (
        llama.to_str().unwrap(),
        qwen.to_str().unwrap(),
        text.to_str().unwrap(),
    );
    fails_with_2(
        &["parity", l, q, "--text", t, "--ctx", "64"],
        "architecture differs",
    );
    // Same shapes, one token string changed.
    let dir = tempfile::tempdir().unwrap();
    let other = dir.path().join("tiny-llama-other-vocab");
    std::fs::create_dir(&other).unwrap();
    for e in std::fs::read_dir(&llama).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), other.join(e.file_name())).unwrap();
    }
    let tok_path = other.join("tokenizer.json");
    let mut tok: Value = serde_json::from_slice(&std::fs::read(&tok_path).unwrap()).unwrap();
    // Swap the ids of two ordinary tokens: every string is still there, in another order.
    let vocab = tok["model"]["vocab"].as_object_mut().unwrap();
    let a = vocab["Ġit"].clone();
    let b = vocab["Ġto"].clone();
    vocab.insert("Ġit".into(), b);
    vocab.insert("Ġto".into(), a);
    std::fs::write(&tok_path, serde_json::to_vec(&tok).unwrap()).unwrap();
    fails_with_2(
        &[
            "parity",
            l,
            other.to_str().unwrap(),
            "--text",
            t,
            "--ctx",
            "64",
        ],
        "vocabulary differs",
    );
    // A chunk longer than the model's context (256).
    fails_with_2(
        &["parity", l, l, "--text", t, "--ctx", "512"],
        "does not fit in the context",
    );
    fails_with_2(&["parity", l, l], "give `--text FILE` or `--prompts FILE`");
    // Golden files: not JSON, and a token id outside the vocabulary.
    let bad = dir.path().join("bad.json");
    std::fs::write(&bad, b"{\"format\": \"modelgate-parity-golden/1\", \"seq").unwrap();
    fails_with_2(
        &["parity", "check", l, "--golden", bad.to_str().unwrap()],
        "golden file",
    );
    let golden = dir.path().join("g.json");
    let o = modelgate(&[
        "parity",
        "record",
        l,
        "--out",
        golden.to_str().unwrap(),
        "--text",
        t,
        "--ctx",
        "64",
        "--chunks",
        "1",
        "--top",
        "4",
        "--quiet",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let mut g: Value = serde_json::from_slice(&std::fs::read(&golden).unwrap()).unwrap();
    g["sequences"][0]["tokens"][3] = Value::from(70000);
    std::fs::write(&golden, serde_json::to_vec(&g).unwrap()).unwrap();
    fails_with_2(
        &["parity", "check", l, "--golden", golden.to_str().unwrap()],
        "token id 70000 is outside the vocabulary",
    );
}

/// Layer-major evaluation (embedding, each layer over the whole sequence in two chunks
/// through that layer's own cache, final norm and head) gives bit for bit the logits of
/// `Model::forward` over the same chunks, for families with sliding windows, local RoPE,
/// q/k norms and LongRoPE.
#[test]
fn layer_steps_reproduce_the_forward_pass_exactly() {
    use candle_core::Device;
    use modelgate::engine::{Logits, Math, Model, ModelConfig};
    use modelgate::formats::Checkpoint;

    let dirs = [
        crate::support::oracle_dir("llama"),
        crate::support::oracle_dir("qwen3"),
        crate::support::oracle2_dir("gemma3"),
        fixture("oracles/phi3"),
    ];
    for dir in dirs {
        let ckpt = Checkpoint::open(&dir).unwrap();
        let cfg_json = ckpt.dir.as_ref().and_then(|d| d.config.as_ref());
        let cfg = ModelConfig::new(&ckpt.params(), cfg_json, &ckpt.weights.metadata).unwrap();
        let (ids, _) = crate::engine::expected(&dir);
        let split = ids.len() / 2;
        for math in [Math::Reference, Math::Native] {
            let mut full = Model::load(&ckpt.weights, cfg.clone(), math, &Device::Cpu).unwrap();
            let a = full.forward(&ids[..split], Logits::All).unwrap();
            let b = full.forward(&ids[split..], Logits::All).unwrap();
            let want = candle_core::Tensor::cat(&[a, b], 0).unwrap();

            let mut m =
                Model::load_without_layers(&ckpt.weights, cfg.clone(), math, &Device::Cpu).unwrap();
            let mut first = m.embed(&ids[..split]).unwrap();
            let mut second = m.embed(&ids[split..]).unwrap();
            for i in 0..cfg.n_layers {
                let w = m.load_layer(&ckpt.weights, i).unwrap();
                let mut cache = m.layer_cache().unwrap();
                first = m.run_layer(&w, &mut cache, &first).unwrap();
                second = m.run_layer(&w, &mut cache, &second).unwrap();
                assert_eq!(cache.len(), ids.len());
            }
            let got = candle_core::Tensor::cat(
                &[
                    m.head(&first, Logits::All).unwrap(),
                    m.head(&second, Logits::All).unwrap(),
                ],
                0,
            )
            .unwrap();
            let (want, got) = (
                want.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                got.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            );
            assert_eq!(want, got, "{} {math:?}", dir.display());
        }
    }
}

/// Sequences of different lengths stacked into one batch through each layer, one of them
/// in two halves through its cache, give every sequence bit for bit the states of running
/// it alone: only attention is per sequence, every product and norm works row by row.
#[test]
fn batched_layers_reproduce_single_sequences_exactly() {
    use candle_core::{Device, Tensor};
    use modelgate::engine::model::Segment;
    use modelgate::engine::{Math, Model, ModelConfig};
    use modelgate::formats::Checkpoint;

    let dirs = [
        crate::support::oracle_dir("llama"),
        crate::support::oracle_dir("qwen3"),
        crate::support::oracle2_dir("gemma3"),
        fixture("oracles/phi3"),
    ];
    for dir in dirs {
        let ckpt = Checkpoint::open(&dir).unwrap();
        let cfg_json = ckpt.dir.as_ref().and_then(|d| d.config.as_ref());
        let cfg = ModelConfig::new(&ckpt.params(), cfg_json, &ckpt.weights.metadata).unwrap();
        let (ids, _) = crate::engine::expected(&dir);
        let short = &ids[..ids.len() / 2 + 1];
        for math in [Math::Reference, Math::Native] {
            let mut m =
                Model::load_without_layers(&ckpt.weights, cfg.clone(), math, &Device::Cpu).unwrap();
            // alone: the whole sequence, a shorter one, the whole one in two halves
            let mut alone = [
                m.embed(&ids).unwrap(),
                m.embed(short).unwrap(),
                m.embed(&ids).unwrap(),
            ];
            let mut batch = Tensor::cat(&alone, 0).unwrap();
            let (n, s, half) = (ids.len(), short.len(), ids.len() / 2);
            let segments = [
                Segment {
                    cache: 0,
                    rows: 0..n,
                },
                Segment {
                    cache: 1,
                    rows: n..n + s,
                },
                Segment {
                    cache: 2,
                    rows: n + s..n + s + half,
                },
                Segment {
                    cache: 2,
                    rows: n + s + half..2 * n + s,
                },
            ];
            for i in 0..cfg.n_layers {
                let w = m.load_layer(&ckpt.weights, i).unwrap();
                for (k, x) in alone.iter_mut().enumerate() {
                    let mut cache = m.layer_cache().unwrap();
                    *x = if k == 2 {
                        let a = m.run_layer(&w, &mut cache, &x.narrow(0, 0, half).unwrap());
                        let b = m.run_layer(&w, &mut cache, &x.narrow(0, half, n - half).unwrap());
                        Tensor::cat(&[a.unwrap(), b.unwrap()], 0).unwrap()
                    } else {
                        m.run_layer(&w, &mut cache, x).unwrap()
                    };
                }
                let mut caches: Vec<_> = (0..3).map(|_| m.layer_cache().unwrap()).collect();
                let input = batch.clone();
                batch = m
                    .run_layer_batch(&w, &mut caches, &segments, &input, None)
                    .unwrap();
                assert_eq!(caches[2].len(), n);
                // only some rows past attention: the same bits for those rows
                let keep = [
                    1..n,
                    n + s - 2..n + s,
                    n + s..n + s,
                    2 * n + s - 3..2 * n + s,
                ];
                let mut caches: Vec<_> = (0..3).map(|_| m.layer_cache().unwrap()).collect();
                let kept = m
                    .run_layer_batch(&w, &mut caches, &segments, &input, Some(&keep))
                    .unwrap();
                let rows: Vec<_> = keep
                    .iter()
                    .filter(|r| !r.is_empty())
                    .map(|r| batch.narrow(0, r.start, r.len()).unwrap())
                    .collect();
                let (want, got) = (
                    Tensor::cat(&rows, 0).unwrap().flatten_all().unwrap(),
                    kept.flatten_all().unwrap(),
                );
                assert_eq!(
                    want.to_vec1::<f32>().unwrap(),
                    got.to_vec1::<f32>().unwrap(),
                    "kept rows of layer {i}, {} {math:?}",
                    dir.display()
                );
            }
            let want = Tensor::cat(&alone, 0).unwrap();
            let (want, got) = (
                want.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                batch.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            );
            assert_eq!(want, got, "{} {math:?}", dir.display());
        }
    }
}

/// stderr of a failed command without `--log json` event lines, temporary and repository
/// paths replaced, after checking the error form (each cause once, one hint).
fn failure_text(stderr: &str, tmp: &Path) -> String {
    let text: String = stderr
        .lines()
        .filter(|l| !l.starts_with('{'))
        .map(|l| format!("{l}\n"))
        .collect();
    crate::errors::assert_each_cause_once(&text);
    text.replace(tmp.to_str().unwrap(), "[TMP]")
        .replace(repo().to_str().unwrap(), "[REPO]")
}

fn empty_dir(dir: &Path) -> bool {
    std::fs::read_dir(dir).unwrap().next().is_none()
}

/// `--max-memory` below one layer's need: exit 2, the message says how much is needed; a
/// budget just above it spills the hidden states to `--spill-dir` and gives the same
/// figures as a run in memory, leaving no file behind.
#[test]
fn a_memory_budget_is_checked_and_spilling_changes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let spill = tmp.path().join("spill");
    std::fs::create_dir(&spill).unwrap();
    let llama = fixture("models/tiny-llama");
    let q8 = tmp.path().join("tiny-llama-q8_0.gguf");
    let o = modelgate(&[
        "convert",
        llama.to_str().unwrap(),
        "-o",
        q8.to_str().unwrap(),
        "--type",
        "Q8_0",
        "--quiet",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let text = eval_text();
    let (l, c, t, sp) = (
        llama.to_str().unwrap(),
        q8.to_str().unwrap(),
        text.to_str().unwrap(),
        spill.to_str().unwrap(),
    );
    let common = [
        "--text",
        t,
        "--ctx",
        "64",
        "--chunks",
        "3",
        "--spill-dir",
        sp,
    ];
    let need = |model: &str| -> (String, u64) {
        let mut args = vec!["parity", model, model, "--max-memory", "1K"];
        args.extend_from_slice(&common);
        let o = modelgate(&args);
        let err = String::from_utf8_lossy(&o.stderr).into_owned();
        assert_eq!(o.status.code(), Some(2), "{err}");
        let bytes = err
            .split(" bytes)")
            .next()
            .and_then(|s| s.rsplit('(').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no byte count in {err}"));
        (failure_text(&err, tmp.path()), bytes)
    };
    let (text_ref, need_ref) = need(l);
    let (_, need_cand) = need(c);
    insta::assert_snapshot!(text_ref.replace(&need_ref.to_string(), "[N]"), @r"
    error: running `[REPO]/fixtures/models/tiny-llama` failed
    caused by: a memory budget of 1.0 KiB is below the 161.1 MiB ([N] bytes) that one layer needs: its weights, the weights outside the layers and the activations of one sequence
    hint: raise `--max-memory` to at least the amount needed, or give a smaller `--ctx`
    ");
    assert!(empty_dir(&spill));

    let budget = (need_ref.max(need_cand) + 1).to_string();
    let mut args = vec!["parity", l, c, "--json", "--log", "json"];
    args.extend_from_slice(&common);
    let (code, in_memory, err) = run_json(&args);
    assert_eq!(code, 0, "{err}");
    assert!(!err.contains("\"spilled\":true"), "{err}");
    args.extend_from_slice(&["--max-memory", &budget]);
    let (code, spilled, err) = run_json(&args);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("\"spilled\":true"), "{err}");
    assert!(err.contains("\"event\":\"parity-layer\""), "{err}");
    assert_eq!(in_memory["summary"], spilled["summary"]);
    assert!(f(&spilled, "/summary/mean_kld/value") > 0.0);
    assert!(empty_dir(&spill));
}

/// A candidate truncated while the reference runs: exit 2, the message names the tensor
/// and the file, and nothing is left in the spill directory.
#[test]
fn a_model_truncated_under_a_running_parity_is_an_input_error() {
    use std::io::BufRead;
    let tmp = tempfile::tempdir().unwrap();
    let spill = tmp.path().join("spill");
    std::fs::create_dir(&spill).unwrap();
    let reference = smollm2();
    let cand = tmp.path().join("candidate.gguf");
    std::fs::copy(&reference, &cand).unwrap();
    let text = eval_text();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_modelgate"))
        .args([
            "parity",
            reference.to_str().unwrap(),
            cand.to_str().unwrap(),
            "--text",
            text.to_str().unwrap(),
            "--ctx",
            "256",
            "--log",
            "json",
            "--spill-dir",
            spill.to_str().unwrap(),
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = String::new();
    let mut truncated = false;
    for line in std::io::BufReader::new(child.stderr.take().unwrap()).lines() {
        let line = line.unwrap();
        if !truncated && line.contains("\"model\":\"reference\"") {
            let f = std::fs::OpenOptions::new().write(true).open(&cand).unwrap();
            let len = f.metadata().unwrap().len();
            f.set_len(len * 6 / 10).unwrap();
            truncated = true;
        }
        stderr.push_str(&line);
        stderr.push('\n');
    }
    let status = child.wait().unwrap();
    assert!(truncated, "{stderr}");
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(empty_dir(&spill));
    insta::assert_snapshot!(failure_text(&stderr, tmp.path()), @r"
    error: running `[TMP]/candidate.gguf` failed
    caused by: `[TMP]/candidate.gguf`: tensor `output_norm.weight` needs bytes 98360128..98362432 but the file now has 59017459 bytes (truncated or replaced while in use)
    hint: the file is damaged or truncated; download it again and compare its sha256 with the publisher's
    ");
}
