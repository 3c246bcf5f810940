//! The generation loop: run the prompt through the model in one chunk, then one token at a
//! time until EOS or the token budget, timing both phases.

use std::time::{Duration, Instant};

use serde::Serialize;

use super::model::{Logits, Model};
use super::sampling::Sampler;
use super::EngineError;

/// What to generate.
#[derive(Clone, Debug)]
pub struct GenerationConfig {
    /// Most new tokens.
    pub max_tokens: usize,
    /// Ids that end generation (not included in the output).
    pub stop: Vec<u32>,
}

/// Why generation ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum StopReason {
    /// The model produced an end-of-sequence token.
    Eos,
    /// `max_tokens` were generated.
    Length,
    /// The context is full.
    Context,
}

/// The result of one generation.
#[derive(Clone, Debug)]
pub struct Generation {
    /// New tokens, without the stop token.
    pub tokens: Vec<u32>,
    /// The stop token, when generation ended on one.
    pub stop_token: Option<u32>,
    pub reason: StopReason,
    /// Time to process the prompt (through the first new token's logits).
    pub prompt_time: Duration,
    /// Time for the remaining forward passes.
    pub generation_time: Duration,
    /// Forward passes after the prompt.
    pub generation_steps: usize,
}

/// Generate from `prompt` with a fresh cache.
pub fn generate(
    model: &mut Model,
    prompt: &[u32],
    cfg: &GenerationConfig,
    sampler: &mut Sampler,
) -> Result<Generation, EngineError> {
    model.reset()?;
    let context = model.config().context;
    if prompt.len() > context {
        return Err(EngineError::ContextOverflow {
            tokens: prompt.len(),
            context,
        });
    }
    let start = Instant::now();
    let mut logits = model.forward(prompt, Logits::Last)?;
    let prompt_time = start.elapsed();
    let start = Instant::now();
    let mut tokens = Vec::new();
    let mut steps = 0;
    let (reason, stop_token) = loop {
        if tokens.len() >= cfg.max_tokens {
            break (StopReason::Length, None);
        }
        let row = logits.squeeze(0)?.to_vec1::<f32>()?;
        let next = sampler.pick(&row)?;
        if cfg.stop.contains(&next) {
            break (StopReason::Eos, Some(next));
        }
        tokens.push(next);
        if tokens.len() >= cfg.max_tokens {
            break (StopReason::Length, None);
        }
        if model.position() >= context {
            break (StopReason::Context, None);
        }
        logits = model.forward(&[next], Logits::Last)?;
        steps += 1;
    };
    Ok(Generation {
        tokens,
        stop_token,
        reason,
        prompt_time,
        generation_time: start.elapsed(),
        generation_steps: steps,
    })
}
