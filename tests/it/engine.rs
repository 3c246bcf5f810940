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

// ---- scratch GGUF source (until the formats reader lands) ----
use candle_core::quantized::gguf_file;
use modelgate::engine::TextTokenizer;
use modelgate::formats::gguf::ValueType;
use modelgate::formats::{GgmlType, MetaValue};

struct GgufMem {
    bytes: Vec<u8>,
    infos: HashMap<String, (DType, Vec<usize>, usize, usize)>,
}

impl WeightSource for GgufMem {
    fn naming(&self) -> Naming {
        Naming::Gguf
    }
    fn tensor(&self, name: &str) -> Result<Option<RawTensor<'_>>, EngineError> {
        Ok(self.infos.get(name).map(|(dt, shape, off, len)| RawTensor {
            name: name.into(),
            dtype: *dt,
            shape: shape.clone(),
            data: Cow::Borrowed(&self.bytes[*off..off + len]),
        }))
    }
}

fn meta(v: &gguf_file::Value) -> MetaValue {
    use gguf_file::Value as V;
    match v {
        V::U8(x) => MetaValue::U8(*x),
        V::I8(x) => MetaValue::I8(*x),
        V::U16(x) => MetaValue::U16(*x),
        V::I16(x) => MetaValue::I16(*x),
        V::U32(x) => MetaValue::U32(*x),
        V::I32(x) => MetaValue::I32(*x),
        V::U64(x) => MetaValue::U64(*x),
        V::I64(x) => MetaValue::I64(*x),
        V::F32(x) => MetaValue::F32(*x),
        V::F64(x) => MetaValue::F64(*x),
        V::Bool(x) => MetaValue::Bool(*x),
        V::String(x) => MetaValue::String(x.clone()),
        V::Array(items) => MetaValue::Array {
            elem: ValueType::String,
            items: items.iter().map(meta).collect(),
        },
    }
}

fn smollm2_scratch() -> (GgufMem, Vec<(String, MetaValue)>, ModelParams) {
    let path = crate::support::smollm2();
    let mut f = std::fs::File::open(&path).unwrap();
    let c = gguf_file::Content::read(&mut f).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    let mut infos = HashMap::new();
    for (name, ti) in &c.tensor_infos {
        let id = match format!("{:?}", ti.ggml_dtype).as_str() {
            "F32" => 0,
            "Q4_1" => 3,
            "Q8_0" => 8,
            other => panic!("{other}"),
        };
        let dt = DType::from_ggml(GgmlType::from_id(id));
        let n: u64 = ti.shape.elem_count() as u64;
        let len = dt.bytes_for(n).unwrap() as usize;
        let off = (c.tensor_data_offset + ti.offset) as usize;
        infos.insert(name.clone(), (dt, ti.shape.dims().to_vec(), off, len));
    }
    let md: Vec<(String, MetaValue)> = c
        .metadata
        .iter()
        .map(|(k, v)| (k.clone(), meta(v)))
        .collect();
    let u = |k: &str| {
        c.metadata
            .get(k)
            .and_then(|v| v.to_u32().ok())
            .map(u64::from)
    };
    let p = ModelParams {
        architecture: Some("llama".into()),
        block_count: u("llama.block_count"),
        context_length: u("llama.context_length"),
        embedding_length: u("llama.embedding_length"),
        feed_forward_length: u("llama.feed_forward_length"),
        head_count: u("llama.attention.head_count"),
        head_count_kv: u("llama.attention.head_count_kv"),
        head_dim: None,
        vocab_size: u("llama.vocab_size"),
        rope_theta: Some(100000.0),
        rms_norm_eps: Some(1e-5),
        tie_word_embeddings: None,
    };
    (GgufMem { bytes, infos }, md, p)
}

#[test]
fn smollm2_scratch_greedy() {
    let (src, md, p) = smollm2_scratch();
    let tok = TextTokenizer::from_gguf(&md).unwrap();
    assert_eq!(
        tok.encode("The capital of France is").unwrap(),
        vec![504, 3575, 282, 4649, 314]
    );
    assert_eq!(
        tok.encode("def fibonacci(n):").unwrap(),
        vec![1604, 3987, 46477, 24, 94, 727]
    );
    for math in [Math::Reference, Math::Native] {
        let cfg = ModelConfig::new(&p, None, &md).unwrap();
        let mut model = Model::load(&src, cfg, math, &Device::Cpu).unwrap();
        for prompt in [
            vec![504u32, 3575, 282, 4649, 314],
            vec![1604, 3987, 46477, 24, 94, 727],
        ] {
            let mut s = modelgate::engine::Sampler::new(0.0, 0).unwrap();
            let g = modelgate::engine::generate(
                &mut model,
                &prompt,
                &modelgate::engine::GenerationConfig {
                    max_tokens: 32,
                    stop: tok.eos().to_vec(),
                },
                &mut s,
            )
            .unwrap();
            eprintln!(
                "{math:?}: {:?} stop {:?} {:?} prompt {:?} gen {:?}/{}",
                g.tokens,
                g.stop_token,
                g.reason,
                g.prompt_time,
                g.generation_time,
                g.generation_steps
            );
            eprintln!("{:?}", tok.decode(&g.tokens).unwrap());
        }
    }
}
