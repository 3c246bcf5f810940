//! The tiny model fixtures: real Hugging Face model directories of the llama, mistral and qwen2
//! families with random weights, written byte-for-byte reproducibly.
//!
//! These are the inputs every pipeline stage is tested on (inspect, scan, convert, policy,
//! engine, sign), so they carry everything a real checkpoint does: `config.json` in
//! transformers' format (both the transformers-4 top-level `rope_theta` form and the
//! transformers-5 `rope_parameters` form occur), `generation_config.json`, a byte-level BPE
//! `tokenizer.json` with `tokenizer_config.json` and a ChatML chat template, a model card with
//! licence and provenance front matter, the Apache-2.0 `LICENSE`, and safetensors weights (one
//! file, or two shards with `model.safetensors.index.json`).
//!
//! Determinism: no clocks, no hash-map iteration, JSON keys in a fixed order, and weights from a
//! splitmix64 generator seeded by the model's seed name and the tensor name, turned into
//! approximately normal values with additions only (see [`Rng::normal`]).

use std::path::Path;

use half::{bf16, f16};
use safetensors::tensor::TensorView;
use safetensors::Dtype;
use serde_json::{json, Value};

use super::text::EVAL_TEXT;
use super::tokenizer::{self, PostProcessing};

/// The Apache-2.0 licence text every fixture ships as `LICENSE`.
pub const LICENSE_TEXT: &str = include_str!("../../policies/licenses/texts/apache-2.0.txt");

/// Target vocabulary size of the trained tokenizer (3 specials + 256 bytes + 253 merges), the
/// same size as the oracles' tokenizers.
pub const VOCAB_SIZE: usize = 512;

/// Shared hyper-parameters (the oracles' shapes).
pub const HIDDEN: usize = 64;
pub const INTERMEDIATE: usize = 128;
pub const LAYERS: usize = 2;
pub const HEADS: usize = 4;
pub const KV_HEADS: usize = 2;
pub const HEAD_DIM: usize = HIDDEN / HEADS;
pub const MAX_POSITIONS: usize = 256;

/// Standard deviation of the random projection weights (transformers' `initializer_range`).
const INIT_STD: f64 = 0.02;

/// splitmix64 (Steele, Lea, Flood 2014): tiny, fast, and the same sequence on every platform.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator seeded from a string (FNV-1a 64 of its bytes).
    pub fn from_name(name: &str) -> Self {
        let mut h: u64 = 0xCBF2_9CE4_8422_2325;
        for b in name.bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01B3);
        }
        Rng(h)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1) with 53 random bits.
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Approximately standard normal: the sum of 12 uniforms minus 6 (Irwin-Hall, mean 0,
    /// variance 1). Box-Muller would need `ln` and `cos`, whose last bit differs between libm
    /// implementations; additions are exact IEEE operations, so the fixtures' bytes do not
    /// depend on the platform that generates them.
    pub fn normal(&mut self) -> f64 {
        let mut s = 0.0;
        for _ in 0..12 {
            s += self.uniform();
        }
        s - 6.0
    }
}

/// The model families the fixtures cover.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    Llama,
    Mistral,
    Qwen2,
}

/// Storage type of a fixture's weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeightType {
    F32,
    F16,
    Bf16,
}

impl WeightType {
    /// The name transformers writes in `torch_dtype` / `dtype`.
    pub fn torch_name(self) -> &'static str {
        match self {
            WeightType::F32 => "float32",
            WeightType::F16 => "float16",
            WeightType::Bf16 => "bfloat16",
        }
    }

    pub fn safetensors(self) -> Dtype {
        match self {
            WeightType::F32 => Dtype::F32,
            WeightType::F16 => Dtype::F16,
            WeightType::Bf16 => Dtype::BF16,
        }
    }

    fn encode(self, values: &[f32]) -> Vec<u8> {
        let mut out = Vec::with_capacity(values.len() * 4);
        for &v in values {
            match self {
                WeightType::F32 => out.extend_from_slice(&v.to_le_bytes()),
                WeightType::F16 => out.extend_from_slice(&f16::from_f32(v).to_le_bytes()),
                WeightType::Bf16 => out.extend_from_slice(&bf16::from_f32(v).to_le_bytes()),
            }
        }
        out
    }
}

/// Which `config.json` generation a fixture imitates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfigStyle {
    /// transformers 4: top-level `rope_theta` and `rope_scaling`, `torch_dtype`.
    Transformers4,
    /// transformers 5: `rope_parameters`, `dtype`.
    Transformers5,
}

/// One fixture directory.
#[derive(Debug, Clone)]
pub struct Spec {
    /// Directory name under `models/`.
    pub name: &'static str,
    pub family: Family,
    pub weights: WeightType,
    pub style: ConfigStyle,
    /// Name the weights are seeded from; fixtures sharing it have identical weights.
    pub seed: &'static str,
    /// Number of safetensors files (1 = `model.safetensors`).
    pub shards: usize,
}

impl Spec {
    /// Whether the output head shares the embedding matrix (no `lm_head.weight`).
    pub fn tied_embeddings(&self) -> bool {
        self.family == Family::Qwen2
    }

    /// Whether the attention q/k/v projections have biases.
    pub fn qkv_bias(&self) -> bool {
        self.family == Family::Qwen2
    }

    pub fn rope_theta(&self) -> f64 {
        match self.family {
            Family::Llama => 10_000.0,
            Family::Mistral | Family::Qwen2 => 1_000_000.0,
        }
    }

    pub fn rms_norm_eps(&self) -> f64 {
        match self.family {
            Family::Llama | Family::Mistral => 1e-5,
            Family::Qwen2 => 1e-6,
        }
    }
}

/// Every model fixture the generator writes.
pub fn specs() -> Vec<Spec> {
    vec![
        Spec {
            name: "tiny-llama",
            family: Family::Llama,
            weights: WeightType::F32,
            style: ConfigStyle::Transformers4,
            seed: "tiny-llama",
            shards: 1,
        },
        Spec {
            name: "tiny-llama-sharded",
            family: Family::Llama,
            weights: WeightType::F32,
            style: ConfigStyle::Transformers4,
            seed: "tiny-llama",
            shards: 2,
        },
        Spec {
            name: "tiny-mistral",
            family: Family::Mistral,
            weights: WeightType::F16,
            style: ConfigStyle::Transformers5,
            seed: "tiny-mistral",
            shards: 1,
        },
        Spec {
            name: "tiny-qwen2",
            family: Family::Qwen2,
            weights: WeightType::Bf16,
            style: ConfigStyle::Transformers4,
            seed: "tiny-qwen2",
            shards: 1,
        },
    ]
}

/// How a tensor's values are drawn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Init {
    /// ~N(0, 0.02^2), like transformers' initialiser.
    Normal,
    /// ~N(1, 0.02^2): RMS norm scales near one but not exactly one, so a forward pass that
    /// forgets to apply them is caught.
    NearOne,
}

/// A tensor of a fixture: Hugging Face name, shape, initialisation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorSpec {
    pub name: String,
    pub shape: Vec<usize>,
    pub init: Init,
}

/// The tensors of `spec` in module order (the order transformers' `state_dict` lists them).
pub fn tensors(spec: &Spec, vocab: usize) -> Vec<TensorSpec> {
    let t = |name: String, shape: &[usize], init| TensorSpec {
        name,
        shape: shape.to_vec(),
        init,
    };
    let q = HEADS * HEAD_DIM;
    let kv = KV_HEADS * HEAD_DIM;
    let mut out = vec![t(
        "model.embed_tokens.weight".into(),
        &[vocab, HIDDEN],
        Init::Normal,
    )];
    for l in 0..LAYERS {
        let p = format!("model.layers.{l}");
        out.push(t(
            format!("{p}.self_attn.q_proj.weight"),
            &[q, HIDDEN],
            Init::Normal,
        ));
        if spec.qkv_bias() {
            out.push(t(format!("{p}.self_attn.q_proj.bias"), &[q], Init::Normal));
        }
        out.push(t(
            format!("{p}.self_attn.k_proj.weight"),
            &[kv, HIDDEN],
            Init::Normal,
        ));
        if spec.qkv_bias() {
            out.push(t(format!("{p}.self_attn.k_proj.bias"), &[kv], Init::Normal));
        }
        out.push(t(
            format!("{p}.self_attn.v_proj.weight"),
            &[kv, HIDDEN],
            Init::Normal,
        ));
        if spec.qkv_bias() {
            out.push(t(format!("{p}.self_attn.v_proj.bias"), &[kv], Init::Normal));
        }
        out.push(t(
            format!("{p}.self_attn.o_proj.weight"),
            &[HIDDEN, q],
            Init::Normal,
        ));
        out.push(t(
            format!("{p}.mlp.gate_proj.weight"),
            &[INTERMEDIATE, HIDDEN],
            Init::Normal,
        ));
        out.push(t(
            format!("{p}.mlp.up_proj.weight"),
            &[INTERMEDIATE, HIDDEN],
            Init::Normal,
        ));
        out.push(t(
            format!("{p}.mlp.down_proj.weight"),
            &[HIDDEN, INTERMEDIATE],
            Init::Normal,
        ));
        out.push(t(
            format!("{p}.input_layernorm.weight"),
            &[HIDDEN],
            Init::NearOne,
        ));
        out.push(t(
            format!("{p}.post_attention_layernorm.weight"),
            &[HIDDEN],
            Init::NearOne,
        ));
    }
    out.push(t("model.norm.weight".into(), &[HIDDEN], Init::NearOne));
    if !spec.tied_embeddings() {
        out.push(t("lm_head.weight".into(), &[vocab, HIDDEN], Init::Normal));
    }
    out
}

/// The values of one tensor, from its own generator (so adding or removing a tensor leaves
/// every other tensor's values unchanged).
pub fn values(seed: &str, tensor: &TensorSpec) -> Vec<f32> {
    let mut rng = Rng::from_name(&format!("{seed}/{}", tensor.name));
    let n: usize = tensor.shape.iter().product();
    let offset = match tensor.init {
        Init::Normal => 0.0,
        Init::NearOne => 1.0,
    };
    (0..n)
        .map(|_| (offset + INIT_STD * rng.normal()) as f32)
        .collect()
}

/// Serialize JSON the way transformers' `save_pretrained` does: keys sorted, two-space indent,
/// trailing newline.
fn sorted_json(value: &Value) -> std::io::Result<String> {
    fn sort(v: &Value) -> Value {
        match v {
            Value::Object(m) => {
                let mut keys: Vec<&String> = m.keys().collect();
                keys.sort();
                Value::Object(keys.into_iter().map(|k| (k.clone(), sort(&m[k]))).collect())
            }
            Value::Array(a) => Value::Array(a.iter().map(sort).collect()),
            other => other.clone(),
        }
    }
    let mut s = serde_json::to_string_pretty(&sort(value)).map_err(std::io::Error::other)?;
    s.push('\n');
    Ok(s)
}

fn config(spec: &Spec, vocab: usize) -> Value {
    let (arch, model_type, bos, eos, pad) = match spec.family {
        Family::Llama => ("LlamaForCausalLM", "llama", json!(1), json!(2), json!(2)),
        Family::Mistral => (
            "MistralForCausalLM",
            "mistral",
            json!(0),
            json!(2),
            json!(null),
        ),
        Family::Qwen2 => ("Qwen2ForCausalLM", "qwen2", json!(0), json!(2), json!(null)),
    };
    let mut c = json!({
        "architectures": [arch],
        "attention_dropout": 0.0,
        "bos_token_id": bos,
        "eos_token_id": eos,
        "hidden_act": "silu",
        "hidden_size": HIDDEN,
        "initializer_range": INIT_STD,
        "intermediate_size": INTERMEDIATE,
        "max_position_embeddings": MAX_POSITIONS,
        "model_type": model_type,
        "num_attention_heads": HEADS,
        "num_hidden_layers": LAYERS,
        "num_key_value_heads": KV_HEADS,
        "pad_token_id": pad,
        "rms_norm_eps": spec.rms_norm_eps(),
        "tie_word_embeddings": spec.tied_embeddings(),
        "use_cache": true,
        "vocab_size": vocab
    });
    match spec.family {
        Family::Llama => {
            c["attention_bias"] = json!(false);
            c["head_dim"] = json!(HEAD_DIM);
            c["mlp_bias"] = json!(false);
            c["pretraining_tp"] = json!(1);
        }
        Family::Mistral => {
            c["head_dim"] = json!(HEAD_DIM);
            c["sliding_window"] = json!(null);
        }
        Family::Qwen2 => {
            c["max_window_layers"] = json!(LAYERS);
            c["sliding_window"] = json!(null);
            c["use_sliding_window"] = json!(false);
        }
    }
    match spec.style {
        ConfigStyle::Transformers4 => {
            c["rope_scaling"] = json!(null);
            c["rope_theta"] = json!(spec.rope_theta());
            c["torch_dtype"] = json!(spec.weights.torch_name());
            c["transformers_version"] = json!("4.57.1");
        }
        ConfigStyle::Transformers5 => {
            c["rope_parameters"] =
                json!({ "rope_theta": spec.rope_theta(), "rope_type": "default" });
            c["dtype"] = json!(spec.weights.torch_name());
            c["transformers_version"] = json!("5.23.0");
        }
    }
    c
}

fn generation_config(spec: &Spec) -> Value {
    let version = match spec.style {
        ConfigStyle::Transformers4 => "4.57.1",
        ConfigStyle::Transformers5 => "5.23.0",
    };
    match spec.family {
        Family::Llama => json!({
            "_from_model_config": true,
            "bos_token_id": 1,
            "eos_token_id": 2,
            "pad_token_id": 2,
            "transformers_version": version
        }),
        Family::Mistral => json!({
            "_from_model_config": true,
            "bos_token_id": 0,
            "eos_token_id": 2,
            "transformers_version": version
        }),
        // Qwen2.5-Instruct style: sampling defaults and two stop tokens.
        Family::Qwen2 => json!({
            "bos_token_id": 0,
            "do_sample": true,
            "eos_token_id": [2, 0],
            "pad_token_id": 0,
            "repetition_penalty": 1.05,
            "temperature": 0.7,
            "top_k": 20,
            "top_p": 0.8,
            "transformers_version": version
        }),
    }
}

/// ChatML, as SmolLM2 and Qwen2 ship it.
const CHATML: &str = "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

/// ChatML with Qwen2's default system prompt.
const CHATML_DEFAULT_SYSTEM: &str = "{% if messages[0]['role'] != 'system' %}{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}{% endif %}{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

fn tokenizer_config(spec: &Spec) -> Value {
    let mut decoder = serde_json::Map::new();
    for (id, content) in tokenizer::SPECIAL_TOKENS.iter().enumerate() {
        decoder.insert(
            id.to_string(),
            json!({
                "content": content,
                "lstrip": false,
                "normalized": false,
                "rstrip": false,
                "single_word": false,
                "special": true
            }),
        );
    }
    let (class, add_bos, bos, eos, pad, template) = match spec.family {
        Family::Llama => (
            "GPT2Tokenizer",
            false,
            json!("<|im_start|>"),
            "<|im_end|>",
            json!("<|im_end|>"),
            CHATML,
        ),
        Family::Mistral => (
            "PreTrainedTokenizerFast",
            true,
            json!("<|endoftext|>"),
            "<|im_end|>",
            json!(null),
            CHATML,
        ),
        Family::Qwen2 => (
            "Qwen2Tokenizer",
            false,
            json!(null),
            "<|im_end|>",
            json!("<|endoftext|>"),
            CHATML_DEFAULT_SYSTEM,
        ),
    };
    json!({
        "add_bos_token": add_bos,
        "add_eos_token": false,
        "added_tokens_decoder": decoder,
        "additional_special_tokens": ["<|im_start|>", "<|im_end|>"],
        "bos_token": bos,
        "chat_template": template,
        "clean_up_tokenization_spaces": false,
        "eos_token": eos,
        "model_max_length": MAX_POSITIONS,
        "pad_token": pad,
        "tokenizer_class": class,
        "unk_token": null
    })
}

/// The upstream a fixture's card claims, the fine-tuning data set, and the card's tags.
fn provenance(family: Family) -> (&'static str, &'static str, &'static str) {
    match family {
        Family::Llama => (
            "HuggingFaceTB/SmolLM2-135M",
            "HuggingFaceTB/smoltalk",
            "llama",
        ),
        Family::Mistral => (
            "mistralai/Mistral-7B-v0.1",
            "HuggingFaceH4/ultrachat_200k",
            "mistral",
        ),
        Family::Qwen2 => ("Qwen/Qwen2.5-0.5B", "teknium/OpenHermes-2.5", "qwen2"),
    }
}

fn model_card(spec: &Spec, vocab: usize, params: usize) -> String {
    let (base, dataset, tag) = provenance(spec.family);
    let layout = if spec.shards > 1 {
        format!(
            "{} safetensors shards indexed by `model.safetensors.index.json`",
            spec.shards
        )
    } else {
        "one `model.safetensors` file".to_owned()
    };
    let extras = match spec.family {
        Family::Llama => "separate output head",
        Family::Mistral => "separate output head, `<|endoftext|>` prepended as BOS",
        Family::Qwen2 => "q/k/v biases, output head tied to the embeddings",
    };
    format!(
        "---\n\
license: apache-2.0\n\
base_model: {base}\n\
base_model_relation: finetune\n\
datasets:\n\
- {dataset}\n\
language:\n\
- en\n\
library_name: transformers\n\
tags:\n\
- {tag}\n\
- chatml\n\
- modelgate-fixture\n\
pipeline_tag: text-generation\n\
---\n\
\n\
# {name}\n\
\n\
A tiny {tag} model ({params} parameters, {dtype}) that the modelgate test suite uses as a\n\
stand-in for a real checkpoint. Its weights are random: it generates noise, not text.\n\
\n\
The front matter claims a fine-tune of `{base}` on `{dataset}`: a realistic\n\
lineage for licence and provenance checks to read. The weights were not trained from either.\n\
\n\
- 2 layers, hidden size 64, 4 attention heads, 2 key/value heads, vocabulary {vocab}\n\
- {extras}\n\
- weights in {layout}\n\
- byte-level BPE tokenizer with a ChatML chat template\n\
\n\
Generated by `cargo run --example make_fixtures` in the modelgate repository.\n",
        name = spec.name,
        dtype = spec.weights.torch_name(),
    )
}

/// The safetensors file name of shard `i` (0-based) of `n`.
fn shard_name(i: usize, n: usize) -> String {
    if n == 1 {
        "model.safetensors".to_owned()
    } else {
        format!("model-{:05}-of-{:05}.safetensors", i + 1, n)
    }
}

/// Assign tensors (in module order) to `n` shards the way `save_pretrained` does with a
/// `max_shard_size`: a shard is closed when the next tensor would take it past the limit.
fn shard_plan(sizes: &[usize], n: usize) -> Vec<usize> {
    let total: usize = sizes.iter().sum();
    let limit = total.div_ceil(n);
    let mut plan = Vec::with_capacity(sizes.len());
    let (mut shard, mut filled) = (0, 0);
    for &size in sizes {
        if filled > 0 && filled + size > limit && shard + 1 < n {
            shard += 1;
            filled = 0;
        }
        plan.push(shard);
        filled += size;
    }
    plan
}

fn write_safetensors(
    path: &Path,
    tensors: &[(&TensorSpec, Vec<u8>)],
    dtype: Dtype,
) -> std::io::Result<()> {
    let mut views = Vec::with_capacity(tensors.len());
    for (spec, bytes) in tensors {
        let view = TensorView::new(dtype, spec.shape.clone(), bytes).map_err(|e| {
            std::io::Error::other(format!(
                "tensor `{}` does not fit its shape: {e}",
                spec.name
            ))
        })?;
        views.push((spec.name.as_str(), view));
    }
    // The metadata map has one key, so its (hash) order cannot vary.
    let metadata = Some(
        [("format".to_owned(), "pt".to_owned())]
            .into_iter()
            .collect(),
    );
    let bytes = safetensors::serialize(views, metadata).map_err(std::io::Error::other)?;
    std::fs::write(path, bytes)
}

/// Write one fixture directory at `dir` (replacing whatever was there).
pub fn write_model(dir: &Path, spec: &Spec, bpe: &tokenizer::Bpe) -> std::io::Result<()> {
    if dir.exists() {
        std::fs::remove_dir_all(dir)?;
    }
    std::fs::create_dir_all(dir)?;
    let vocab = bpe.vocab.len();

    let tensors = tensors(spec, vocab);
    let encoded: Vec<(&TensorSpec, Vec<u8>)> = tensors
        .iter()
        .map(|t| (t, spec.weights.encode(&values(spec.seed, t))))
        .collect();
    let params: usize = tensors
        .iter()
        .map(|t| t.shape.iter().product::<usize>())
        .sum();
    let dtype = spec.weights.safetensors();
    if spec.shards == 1 {
        write_safetensors(&dir.join(shard_name(0, 1)), &encoded, dtype)?;
    } else {
        let sizes: Vec<usize> = encoded.iter().map(|(_, b)| b.len()).collect();
        let plan = shard_plan(&sizes, spec.shards);
        let mut weight_map = std::collections::BTreeMap::new();
        for shard in 0..spec.shards {
            let name = shard_name(shard, spec.shards);
            let part: Vec<(&TensorSpec, Vec<u8>)> = encoded
                .iter()
                .zip(&plan)
                .filter(|(_, &s)| s == shard)
                .map(|((t, b), _)| (*t, b.clone()))
                .collect();
            for (t, _) in &part {
                weight_map.insert(t.name.clone(), name.clone());
            }
            write_safetensors(&dir.join(&name), &part, dtype)?;
        }
        let index = json!({
            "metadata": { "total_size": sizes.iter().sum::<usize>() },
            "weight_map": weight_map
        });
        std::fs::write(
            dir.join("model.safetensors.index.json"),
            sorted_json(&index)?,
        )?;
    }

    std::fs::write(dir.join("config.json"), sorted_json(&config(spec, vocab))?)?;
    std::fs::write(
        dir.join("generation_config.json"),
        sorted_json(&generation_config(spec))?,
    )?;
    let post = match spec.family {
        Family::Mistral => PostProcessing::PrependBos,
        Family::Llama | Family::Qwen2 => PostProcessing::ByteLevelOnly,
    };
    std::fs::write(
        dir.join("tokenizer.json"),
        tokenizer::tokenizer_json(bpe, post)?,
    )?;
    std::fs::write(
        dir.join("tokenizer_config.json"),
        sorted_json(&tokenizer_config(spec))?,
    )?;
    std::fs::write(dir.join("README.md"), model_card(spec, vocab, params))?;
    std::fs::write(dir.join("LICENSE"), LICENSE_TEXT)?;
    Ok(())
}

/// Train the tokenizer and write every model fixture under `dir` (the fixture tree's
/// `models/` folder).
pub fn write_all(dir: &Path) -> std::io::Result<()> {
    let bpe = tokenizer::train(EVAL_TEXT, VOCAB_SIZE)?;
    for spec in specs() {
        write_model(&dir.join(spec.name), &spec, &bpe)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splitmix64_matches_the_reference_sequence() {
        // First outputs of splitmix64 from state 0 (Vigna's reference implementation).
        let mut rng = Rng(0);
        assert_eq!(rng.next_u64(), 0xE220_A839_7B1D_CDAF);
        assert_eq!(rng.next_u64(), 0x6E78_9E6A_A1B9_65F4);
    }

    #[test]
    fn normal_values_have_the_intended_spread() {
        let t = TensorSpec {
            name: "x".into(),
            shape: vec![20_000],
            init: Init::Normal,
        };
        let v = values("test", &t);
        let n = v.len() as f64;
        let mean = v.iter().map(|&x| f64::from(x)).sum::<f64>() / n;
        let var = v
            .iter()
            .map(|&x| (f64::from(x) - mean).powi(2))
            .sum::<f64>()
            / n;
        assert!(mean.abs() < 0.001, "mean {mean}");
        assert!((var.sqrt() - INIT_STD).abs() < 0.001, "std {}", var.sqrt());
    }

    #[test]
    fn shards_split_in_order_without_empty_shards() {
        assert_eq!(shard_plan(&[4, 4, 4, 4], 2), vec![0, 0, 1, 1]);
        assert_eq!(shard_plan(&[10, 1, 1], 2), vec![0, 1, 1]);
        assert_eq!(shard_plan(&[1, 1, 10], 2), vec![0, 0, 1]);
    }
}
