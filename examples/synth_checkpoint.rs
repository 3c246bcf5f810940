//! A synthetic Hugging Face checkpoint with TinyLlama-1.1B's shape, for `benches/convert.sh`:
//! bf16 safetensors in shards with `model.safetensors.index.json`, config.json, and a
//! byte-level BPE tokenizer.json with the model's vocabulary size. The weights are
//! pseudo-random (fixed seed, roughly normal, std 0.02), so every run writes the same bytes.
//!
//!     cargo run --release --example synth_checkpoint -- --out DIR [--layers 22] [--shards 3]
//!
//! safetensors is written by hand here (header, then tensors streamed in order) so that a
//! multi-gigabyte checkpoint never has to be held in memory.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

const HIDDEN: u64 = 2048;
const HEADS: u64 = 32;
const KV_HEADS: u64 = 4;
const FFN: u64 = 5632;
const VOCAB: u64 = 32000;

struct Args {
    out: PathBuf,
    layers: u64,
    shards: usize,
}

fn args() -> Result<Args, String> {
    let mut out = None;
    let mut layers = 22;
    let mut shards = 3;
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut val = |name: &str| it.next().ok_or_else(|| format!("{name} needs a value"));
        match a.as_str() {
            "--out" => out = Some(PathBuf::from(val("--out")?)),
            "--layers" => {
                layers = val("--layers")?
                    .parse()
                    .map_err(|e| format!("--layers: {e}"))?
            }
            "--shards" => {
                shards = val("--shards")?
                    .parse()
                    .map_err(|e| format!("--shards: {e}"))?
            }
            other => return Err(format!("unknown argument `{other}`")),
        }
    }
    Ok(Args {
        out: out.ok_or("--out DIR is required")?,
        layers,
        shards: shards.max(1),
    })
}

/// The model's tensors in Hugging Face order, (name, shape).
fn tensors(layers: u64) -> Vec<(String, Vec<u64>)> {
    let head_dim = HIDDEN / HEADS;
    let mut t = vec![("model.embed_tokens.weight".to_owned(), vec![VOCAB, HIDDEN])];
    for l in 0..layers {
        let p = format!("model.layers.{l}");
        t.push((format!("{p}.input_layernorm.weight"), vec![HIDDEN]));
        t.push((
            format!("{p}.self_attn.q_proj.weight"),
            vec![HEADS * head_dim, HIDDEN],
        ));
        t.push((
            format!("{p}.self_attn.k_proj.weight"),
            vec![KV_HEADS * head_dim, HIDDEN],
        ));
        t.push((
            format!("{p}.self_attn.v_proj.weight"),
            vec![KV_HEADS * head_dim, HIDDEN],
        ));
        t.push((
            format!("{p}.self_attn.o_proj.weight"),
            vec![HIDDEN, HEADS * head_dim],
        ));
        t.push((format!("{p}.post_attention_layernorm.weight"), vec![HIDDEN]));
        t.push((format!("{p}.mlp.gate_proj.weight"), vec![FFN, HIDDEN]));
        t.push((format!("{p}.mlp.up_proj.weight"), vec![FFN, HIDDEN]));
        t.push((format!("{p}.mlp.down_proj.weight"), vec![HIDDEN, FFN]));
    }
    t.push(("model.norm.weight".to_owned(), vec![HIDDEN]));
    t.push(("lm_head.weight".to_owned(), vec![VOCAB, HIDDEN]));
    t
}

/// xorshift64*: fast, seeded, good enough for benchmark weights.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Roughly normal with std 0.02: sum of four uniforms, centred and scaled.
    fn weight(&mut self) -> f32 {
        let r = self.next();
        let s: u32 = (0..4).map(|i| ((r >> (16 * i)) & 0xffff) as u32).sum();
        let u = s as f32 / 65535.0 - 2.0; // mean 0, variance 4/12
        u * 0.02 / (1.0f32 / 3.0).sqrt()
    }
}

fn bf16(x: f32) -> [u8; 2] {
    // Round to nearest even, as torch does.
    let b = x.to_bits();
    let r = ((b >> 16) & 1) + 0x7fff;
    (((b + r) >> 16) as u16).to_le_bytes()
}

fn write_shard(path: &Path, items: &[(String, Vec<u64>)], rng: &mut Rng) -> std::io::Result<()> {
    let mut header = serde_json::Map::new();
    header.insert("__metadata__".into(), serde_json::json!({"format": "pt"}));
    let mut off = 0u64;
    for (name, shape) in items {
        let n: u64 = shape.iter().product::<u64>() * 2;
        header.insert(
            name.clone(),
            serde_json::json!({"dtype": "BF16", "shape": shape, "data_offsets": [off, off + n]}),
        );
        off += n;
    }
    let mut h = serde_json::Value::Object(header).to_string().into_bytes();
    while !h.len().is_multiple_of(8) {
        h.push(b' ');
    }
    let mut w = BufWriter::with_capacity(8 << 20, File::create(path)?);
    w.write_all(&(h.len() as u64).to_le_bytes())?;
    w.write_all(&h)?;
    let mut buf = Vec::with_capacity(1 << 20);
    for (name, shape) in items {
        let n: u64 = shape.iter().product();
        let norm = name.ends_with("layernorm.weight") || name == "model.norm.weight";
        let mut left = n;
        while left > 0 {
            let k = left.min(1 << 19);
            buf.clear();
            for _ in 0..k {
                let v = if norm {
                    1.0 + rng.weight()
                } else {
                    rng.weight()
                };
                buf.extend_from_slice(&bf16(v));
            }
            w.write_all(&buf)?;
            left -= k;
        }
    }
    w.flush()
}

fn tokenizer_json() -> serde_json::Value {
    // GPT-2's byte-to-unicode table: printable bytes map to themselves, the rest to U+0100+.
    let mut chars: Vec<char> = Vec::new();
    let mut extra = 0u32;
    for b in 0u32..256 {
        let printable =
            (33..=126).contains(&b) || (161..=172).contains(&b) || (174..=255).contains(&b);
        chars.push(if printable {
            char::from_u32(b).unwrap_or('?')
        } else {
            extra += 1;
            char::from_u32(255 + extra).unwrap_or('?')
        });
    }
    let mut vocab = serde_json::Map::new();
    vocab.insert("<|endoftext|>".into(), 0.into());
    for (i, c) in chars.iter().enumerate() {
        vocab.insert(c.to_string(), (i + 1).into());
    }
    let mut next = vocab.len() as u64;
    let mut k = 0u64;
    while next < VOCAB {
        vocab.insert(format!("\u{120}t{k}"), next.into());
        next += 1;
        k += 1;
    }
    serde_json::json!({
        "version": "1.0", "truncation": null, "padding": null,
        "added_tokens": [{"id": 0, "content": "<|endoftext|>", "single_word": false, "lstrip": false,
                          "rstrip": false, "normalized": false, "special": true}],
        "normalizer": null,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true},
        "post_processor": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": false, "use_regex": true},
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
                  "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
                  "vocab": vocab, "merges": []}
    })
}

fn main() {
    let a = match args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(2);
        }
    };
    if let Err(e) = run(&a) {
        eprintln!("error: cannot write `{}`: {e}", a.out.display());
        std::process::exit(2);
    }
}

fn run(a: &Args) -> std::io::Result<()> {
    std::fs::create_dir_all(&a.out)?;
    let all = tensors(a.layers);
    let total: u64 = all.iter().map(|(_, s)| s.iter().product::<u64>() * 2).sum();
    let per_shard = total.div_ceil(a.shards as u64);
    let mut groups: Vec<Vec<(String, Vec<u64>)>> = vec![Vec::new()];
    let mut acc = 0u64;
    for t in all {
        let b = t.1.iter().product::<u64>() * 2;
        if acc > 0 && acc + b > per_shard && groups.len() < a.shards {
            groups.push(Vec::new());
            acc = 0;
        }
        acc += b;
        if let Some(g) = groups.last_mut() {
            g.push(t);
        }
    }
    let n = groups.len();
    let mut map = serde_json::Map::new();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for (i, g) in groups.iter().enumerate() {
        let file = format!("model-{:05}-of-{:05}.safetensors", i + 1, n);
        for (name, _) in g {
            map.insert(name.clone(), file.clone().into());
        }
        write_shard(&a.out.join(&file), g, &mut rng)?;
    }
    let index = serde_json::json!({"metadata": {"total_size": total}, "weight_map": map});
    std::fs::write(
        a.out.join("model.safetensors.index.json"),
        serde_json::to_string_pretty(&index)?,
    )?;
    let config = serde_json::json!({
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": HIDDEN,
        "intermediate_size": FFN, "num_attention_heads": HEADS, "num_hidden_layers": a.layers,
        "num_key_value_heads": KV_HEADS, "vocab_size": VOCAB, "max_position_embeddings": 2048,
        "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "tie_word_embeddings": false,
        "bos_token_id": 0, "eos_token_id": 0, "torch_dtype": "bfloat16", "hidden_act": "silu"
    });
    std::fs::write(
        a.out.join("config.json"),
        serde_json::to_string_pretty(&config)?,
    )?;
    std::fs::write(a.out.join("tokenizer.json"), tokenizer_json().to_string())?;
    std::fs::write(
        a.out.join("tokenizer_config.json"),
        r#"{"bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>", "add_bos_token": false}"#,
    )?;
    println!(
        "{}: {} layers, {total} bytes in {n} shards",
        a.out.display(),
        a.layers
    );
    Ok(())
}
