//! Engine: forward-pass oracles, SmolLM2 greedy continuations, tokenizer reconstruction,
//! and the `generate` / `logits` commands.

use std::borrow::Cow;
use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{Device, Tensor};
use modelgate::engine::EngineError;
use modelgate::engine::{Logits, Math, Model, ModelConfig, Naming, RawTensor, WeightSource};
use modelgate::formats::{DType, ModelParams};

fn oracle(name: &str) -> PathBuf {
    PathBuf::from("/work/shared/oracles").join(name)
}

/// Scratch source while the safetensors reader is being written.
struct Mem(HashMap<String, Vec<u8>>, HashMap<String, Vec<usize>>);

impl WeightSource for Mem {
    fn naming(&self) -> Naming {
        Naming::HuggingFace
    }
    fn tensor(&self, name: &str) -> Result<Option<RawTensor<'_>>, EngineError> {
        Ok(self.0.get(name).map(|d| RawTensor {
            name: name.into(),
            dtype: DType::F32,
            shape: self.1[name].clone(),
            data: Cow::Borrowed(d),
        }))
    }
}

fn params(cfg: &serde_json::Value) -> ModelParams {
    let u = |k: &str| cfg.get(k).and_then(|v| v.as_u64());
    ModelParams {
        architecture: cfg["model_type"].as_str().map(String::from),
        block_count: u("num_hidden_layers"),
        context_length: u("max_position_embeddings"),
        embedding_length: u("hidden_size"),
        feed_forward_length: u("intermediate_size"),
        head_count: u("num_attention_heads"),
        head_count_kv: u("num_key_value_heads"),
        head_dim: u("head_dim"),
        vocab_size: u("vocab_size"),
        rope_theta: None,
        rms_norm_eps: cfg["rms_norm_eps"].as_f64(),
        tie_word_embeddings: cfg["tie_word_embeddings"].as_bool(),
    }
}

fn max_delta(name: &str) -> f32 {
    let dir = oracle(name);
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    let ts = candle_core::safetensors::load(dir.join("model.safetensors"), &Device::Cpu).unwrap();
    let mut data = HashMap::new();
    let mut shapes = HashMap::new();
    for (k, t) in ts {
        let v: Vec<f32> = t.flatten_all().unwrap().to_vec1().unwrap();
        data.insert(k.clone(), v.iter().flat_map(|x| x.to_le_bytes()).collect());
        shapes.insert(k, t.dims().to_vec());
    }
    let src = Mem(data, shapes);
    let mc = ModelConfig::new(&params(&cfg), Some(&cfg), &[]).unwrap();
    let mut model = Model::load(&src, mc, Math::Reference, &Device::Cpu).unwrap();
    let exp =
        candle_core::safetensors::load(dir.join("expected.safetensors"), &Device::Cpu).unwrap();
    let ids: Vec<u32> = exp["input_ids"]
        .flatten_all()
        .unwrap()
        .to_vec1::<i64>()
        .unwrap()
        .iter()
        .map(|&x| x as u32)
        .collect();
    let want = exp["logits"].squeeze(0).unwrap();
    let got = model.forward(&ids, Logits::All).unwrap();
    let d = (got - &want)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    // the same positions again through the cache, one token at a time
    model.reset().unwrap();
    let mut rows = Vec::new();
    for &id in &ids {
        rows.push(model.forward(&[id], Logits::Last).unwrap());
    }
    let stepped = Tensor::cat(&rows, 0).unwrap();
    let d2 = (stepped - &want)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    eprintln!("{name}: max |delta logit| {d:e} (chunk), {d2:e} (token by token)");
    d.max(d2)
}

#[test]
fn oracles_scratch() {
    for name in ["llama", "llama3-rope-scaled", "mistral", "qwen2", "qwen3"] {
        assert!(max_delta(name) <= 1e-4, "{name}");
    }
}
