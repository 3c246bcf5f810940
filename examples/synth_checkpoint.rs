//! A synthetic Hugging Face checkpoint with TinyLlama-1.1B's shape, for `benches/convert.sh`:
//! bf16 safetensors in shards with `model.safetensors.index.json`, config.json, and a
//! byte-level BPE tokenizer.json with the model's vocabulary size. The weights are
//! pseudo-random (fixed seed, roughly normal, std 0.02), so every run writes the same bytes.
//!
//!     cargo run --release --example synth_checkpoint -- --out DIR [--layers 22] [--shards 3]
//!
//! safetensors is written by hand here (header, then tensors streamed in order) so that a
//! multi-gigabyte checkpoint never has to be held in memory.
//!
//!     cargo run --release --example synth_checkpoint -- --gguf-f16 FILE.gguf [--layers 22]
//!
//! writes the F16 GGUF that `modelgate convert DIR -o FILE.gguf --type F16` would make of that
//! checkpoint (same weights, metadata, tokenizer and tensor order: byte for byte the same when
//! the file's stem equals the checkpoint folder's name, which becomes `general.name`), without
//! the checkpoint ever being on disk. `benches/parity_over_ram.sh` needs this for a model
//! larger than the machine's RAM: a 31.6 GB F16 file, its Q4_K_M and a bf16 checkpoint of
//! the same size do not fit on the disk together. The converter cannot stream from a
//! checkpoint that does not exist, so the GGUF side is reproduced here: the metadata keys
//! the converter writes for this config and tokenizer (sorted, as it sorts them), blocks in
//! layer order with names sorted within a layer, q/k rows permuted for llama.cpp's rope, and
//! bf16 weights widened to f32 (norms) or rounded to f16. It goes through the library's
//! streaming [`GgufWriter`], one layer in memory at a time (about 88 MB), into a temporary
//! file renamed at the end.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use modelgate::formats::gguf::{GgufWriter, TensorDesc, ValueType};
use modelgate::formats::{GgmlType, MetaValue};

const HIDDEN: u64 = 2048;
const HEADS: u64 = 32;
const KV_HEADS: u64 = 4;
const FFN: u64 = 5632;
const VOCAB: u64 = 32000;

struct Args {
    out: PathBuf,
    /// Write the F16 GGUF to `out` instead of a checkpoint folder.
    gguf_f16: bool,
    layers: u64,
    shards: usize,
}

fn args() -> Result<Args, String> {
    let mut out = None;
    let mut gguf = None;
    let mut layers = 22;
    let mut shards = 3;
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut val = |name: &str| it.next().ok_or_else(|| format!("{name} needs a value"));
        match a.as_str() {
            "--out" => out = Some(PathBuf::from(val("--out")?)),
            "--gguf-f16" => gguf = Some(PathBuf::from(val("--gguf-f16")?)),
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
    let (out, gguf_f16) = match (out, gguf) {
        (Some(o), None) => (o, false),
        (None, Some(g)) => (g, true),
        _ => return Err("give one of --out DIR and --gguf-f16 FILE".into()),
    };
    Ok(Args {
        out,
        gguf_f16,
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

/// The vocabulary in id order: `<|endoftext|>`, GPT-2's 256 byte characters (printable
/// bytes map to themselves, the rest to U+0100 on), then filler words up to the vocabulary
/// size.
fn vocab_tokens() -> Vec<String> {
    let mut tokens = vec!["<|endoftext|>".to_owned()];
    let mut extra = 0u32;
    for b in 0u32..256 {
        let printable =
            (33..=126).contains(&b) || (161..=172).contains(&b) || (174..=255).contains(&b);
        tokens.push(
            if printable {
                char::from_u32(b).unwrap_or('?')
            } else {
                extra += 1;
                char::from_u32(255 + extra).unwrap_or('?')
            }
            .to_string(),
        );
    }
    let mut k = 0u64;
    while (tokens.len() as u64) < VOCAB {
        tokens.push(format!("\u{120}t{k}"));
        k += 1;
    }
    tokens
}

fn tokenizer_json() -> serde_json::Value {
    let mut vocab = serde_json::Map::new();
    for (i, t) in vocab_tokens().into_iter().enumerate() {
        vocab.insert(t, i.into());
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
    let res = if a.gguf_f16 { run_gguf(&a) } else { run(&a) };
    if let Err(e) = res {
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

/// The GGUF name llama.cpp gives a Hugging Face tensor of this model.
fn gguf_name(hf: &str) -> String {
    match hf {
        "model.embed_tokens.weight" => return "token_embd.weight".into(),
        "model.norm.weight" => return "output_norm.weight".into(),
        "lm_head.weight" => return "output.weight".into(),
        _ => {}
    }
    let rest = hf.strip_prefix("model.layers.").unwrap_or(hf);
    let (layer, role) = rest.split_once('.').unwrap_or((rest, ""));
    let role = match role {
        "input_layernorm.weight" => "attn_norm",
        "self_attn.q_proj.weight" => "attn_q",
        "self_attn.k_proj.weight" => "attn_k",
        "self_attn.v_proj.weight" => "attn_v",
        "self_attn.o_proj.weight" => "attn_output",
        "post_attention_layernorm.weight" => "ffn_norm",
        "mlp.gate_proj.weight" => "ffn_gate",
        "mlp.up_proj.weight" => "ffn_up",
        "mlp.down_proj.weight" => "ffn_down",
        other => other,
    };
    format!("blk.{layer}.{role}.weight")
}

/// One tensor as the F16 GGUF stores it: the next weights of `rng` (the same draws as the
/// checkpoint's bf16 tensor), norms as f32, matrices rounded to f16, and q/k rows permuted
/// per head the way llama.cpp's converter does for rope (`(heads, 2, d/2)` to `(heads, d/2, 2)`).
fn gguf_tensor(rng: &mut Rng, hf: &str, shape: &[u64]) -> (TensorDesc, Vec<u8>) {
    let n: u64 = shape.iter().product();
    let norm = shape.len() == 1;
    let mut vals = Vec::with_capacity(n as usize);
    for _ in 0..n {
        let v = if norm {
            1.0 + rng.weight()
        } else {
            rng.weight()
        };
        vals.push(f32::from_bits(u32::from(u16::from_le_bytes(bf16(v))) << 16));
    }
    let heads = if hf.ends_with("q_proj.weight") {
        HEADS
    } else if hf.ends_with("k_proj.weight") {
        KV_HEADS
    } else {
        0
    };
    let (ggml_type, bytes) = if norm {
        let b = vals.iter().flat_map(|v| v.to_le_bytes()).collect();
        (GgmlType::F32, b)
    } else {
        let cols = shape[1] as usize;
        let rows = shape[0] as usize;
        let mut b = vec![0u8; vals.len() * 2];
        for r in 0..rows {
            // Output row `r` takes source row `src`: rows of a head go (half, index) in the
            // checkpoint and (index, half) in GGUF.
            let src = if heads > 0 {
                let d = rows / heads as usize;
                let (h, w) = (r / d, r % d);
                h * d + (w % 2) * (d / 2) + w / 2
            } else {
                r
            };
            let from = &vals[src * cols..(src + 1) * cols];
            for (o, v) in b[r * cols * 2..(r + 1) * cols * 2]
                .chunks_exact_mut(2)
                .zip(from)
            {
                o.copy_from_slice(&half::f16::from_f32(*v).to_le_bytes());
            }
        }
        (GgmlType::F16, b)
    };
    let desc = TensorDesc {
        name: gguf_name(hf),
        ggml_type,
        shape: shape.to_vec(),
    };
    (desc, bytes)
}

/// The metadata `modelgate convert` writes for this checkpoint at F16, sorted by key.
fn gguf_metadata(name: &str, layers: u64) -> Vec<(String, MetaValue)> {
    let u32v = |v: u64| MetaValue::U32(v as u32);
    let s = |v: &str| MetaValue::String(v.to_owned());
    let tokens = vocab_tokens();
    let types = (0..tokens.len())
        .map(|i| MetaValue::I32(if i == 0 { 3 } else { 1 }))
        .collect();
    let mut m = vec![
        ("general.architecture", s("llama")),
        ("general.file_type", MetaValue::U32(1)),
        ("general.name", s(name)),
        ("general.type", s("model")),
        ("llama.attention.head_count", u32v(HEADS)),
        ("llama.attention.head_count_kv", u32v(KV_HEADS)),
        (
            "llama.attention.layer_norm_rms_epsilon",
            MetaValue::F32(1e-5),
        ),
        ("llama.block_count", u32v(layers)),
        ("llama.context_length", MetaValue::U32(2048)),
        ("llama.embedding_length", u32v(HIDDEN)),
        ("llama.feed_forward_length", u32v(FFN)),
        ("llama.rope.dimension_count", u32v(HIDDEN / HEADS)),
        ("llama.rope.freq_base", MetaValue::F32(10000.0)),
        ("llama.vocab_size", u32v(VOCAB)),
        ("tokenizer.ggml.add_bos_token", MetaValue::Bool(false)),
        ("tokenizer.ggml.bos_token_id", MetaValue::U32(0)),
        ("tokenizer.ggml.eos_token_id", MetaValue::U32(0)),
        (
            "tokenizer.ggml.merges",
            MetaValue::Array {
                elem: ValueType::String,
                items: Vec::new(),
            },
        ),
        ("tokenizer.ggml.model", s("gpt2")),
        ("tokenizer.ggml.pre", s("gpt-2")),
        (
            "tokenizer.ggml.token_type",
            MetaValue::Array {
                elem: ValueType::I32,
                items: types,
            },
        ),
        (
            "tokenizer.ggml.tokens",
            MetaValue::Array {
                elem: ValueType::String,
                items: tokens.into_iter().map(MetaValue::String).collect(),
            },
        ),
    ];
    m.sort_by(|a, b| a.0.cmp(b.0));
    m.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()
}

/// Write the F16 GGUF directly: tensors drawn in the checkpoint's order, one layer at a
/// time, and written in the converter's order (names sorted within a layer).
fn run_gguf(a: &Args) -> std::io::Result<()> {
    let all = tensors(a.layers);
    let name = a
        .out
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let meta = gguf_metadata(&name, a.layers);
    // Groups drawn and written together: the embedding, each layer's nine tensors, then the
    // final norm and the head.
    let per_layer = 9;
    let mut groups: Vec<&[(String, Vec<u64>)]> = vec![&all[..1]];
    groups.extend(all[1..all.len() - 2].chunks(per_layer));
    groups.push(&all[all.len() - 2..]);
    // Names are sorted within a layer only: the converter writes the final norm before the
    // head, although `output.weight` sorts first.
    let last = groups.len() - 1;
    let sorted = |i: usize| i > 0 && i < last;
    let mut descs = Vec::new();
    for (i, g) in groups.iter().enumerate() {
        let mut d: Vec<TensorDesc> = g
            .iter()
            .map(|(hf, shape)| TensorDesc {
                name: gguf_name(hf),
                ggml_type: if shape.len() == 1 {
                    GgmlType::F32
                } else {
                    GgmlType::F16
                },
                shape: shape.clone(),
            })
            .collect();
        if sorted(i) {
            d.sort_by(|x, y| x.name.cmp(&y.name));
        }
        descs.extend(d);
    }
    let tmp = PathBuf::from(format!("{}.tmp", a.out.display()));
    let file = BufWriter::with_capacity(8 << 20, File::create(&tmp)?);
    let mut w = GgufWriter::new(file, &meta, &descs).map_err(std::io::Error::other)?;
    let total = w.total_len();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let res = (|| -> std::io::Result<()> {
        for (i, g) in groups.iter().enumerate() {
            let mut done: Vec<(TensorDesc, Vec<u8>)> = g
                .iter()
                .map(|(hf, shape)| gguf_tensor(&mut rng, hf, shape))
                .collect();
            if sorted(i) {
                done.sort_by(|x, y| x.0.name.cmp(&y.0.name));
            }
            for (d, bytes) in done {
                w.write_tensor(&d.name, &bytes)
                    .map_err(std::io::Error::other)?;
            }
        }
        Ok(())
    })();
    let res = res.and_then(|()| {
        let f = w.finish().map_err(std::io::Error::other)?;
        f.into_inner().map_err(|e| e.into_error())?.sync_all()
    });
    if let Err(e) = res.and_then(|()| std::fs::rename(&tmp, &a.out)) {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    println!(
        "{}: {} layers, {total} bytes of F16 GGUF",
        a.out.display(),
        a.layers
    );
    Ok(())
}
