//! `modelgate parity REFERENCE CANDIDATE`, `parity record REFERENCE --out GOLDEN` and
//! `parity check CANDIDATE --golden GOLDEN`: how far a candidate drifts from its reference,
//! with llama.cpp's KLD statistics, judged against per-type thresholds (exit code 1 when one
//! is exceeded).

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};

use crate::engine::layered::Budget;
use crate::engine::{DeviceSpec, Math};
use crate::finding::Verdict;
use crate::parity::thresholds::Overrides;
use crate::parity::{self, Corpus, Golden, ParityOptions, ParityReport, Summary, Thresholds};
use crate::policy::file::Policy;

use super::run::LogFormat;
use super::Outcome;

#[derive(Debug, clap::Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct Args {
    #[command(subcommand)]
    command: Option<Sub>,
    /// The reference model (full precision: safetensors directory or GGUF)
    #[arg(required = true)]
    reference: Option<PathBuf>,
    /// The candidate model (converted or quantized)
    #[arg(required = true)]
    candidate: Option<PathBuf>,
    #[command(flatten)]
    common: Common,
    #[command(flatten)]
    judge: Judge,
    #[command(flatten)]
    hub: super::model_arg::HubArgs,
}

#[derive(Debug, clap::Subcommand)]
enum Sub {
    /// Run the reference and store its top-k log-probabilities in a golden file
    Record(RecordArgs),
    /// Compare a candidate with a golden file, running only the candidate
    Check(CheckArgs),
}

#[derive(Debug, clap::Args)]
struct RecordArgs {
    /// The reference model
    reference: PathBuf,
    /// Where to write the golden file
    #[arg(long, short)]
    out: PathBuf,
    /// Logits kept per position (the KLD over them plus a tail bucket is a lower bound
    /// of the full KLD; 1024 keeps it within the standard error on SmolLM2)
    #[arg(long, default_value_t = 1024)]
    top: usize,
    #[command(flatten)]
    common: Common,
    #[command(flatten)]
    hub: super::model_arg::HubArgs,
}

#[derive(Debug, clap::Args)]
struct CheckArgs {
    /// The candidate model
    candidate: PathBuf,
    /// A golden file written by `parity record`
    #[arg(long)]
    golden: PathBuf,
    #[command(flatten)]
    judge: Judge,
    #[command(flatten)]
    run: Run,
    #[command(flatten)]
    hub: super::model_arg::HubArgs,
}

#[derive(Debug, clap::Args)]
struct Common {
    /// Running text to evaluate, cut into `--ctx`-token chunks
    #[arg(long, conflicts_with = "prompts")]
    text: Option<PathBuf>,
    /// Prompts to evaluate, one per line, each continued greedily by the reference
    #[arg(long)]
    prompts: Option<PathBuf>,
    /// Tokens per chunk; the second half of each is scored
    #[arg(long, default_value_t = 512)]
    ctx: usize,
    /// At most this many chunks
    #[arg(long)]
    chunks: Option<usize>,
    /// New tokens per prompt
    #[arg(long = "max-new", default_value_t = 32)]
    max_new: usize,
    #[command(flatten)]
    run: Run,
}

/// How the candidate runs.
#[derive(Debug, clap::Args)]
struct Run {
    /// How the candidate multiplies (the reference always uses `reference` math)
    #[arg(long, value_enum, default_value_t = Math::Reference)]
    math: Math,
    /// Compute device: `cpu`, or `cuda:N` / `metal` in builds with those features
    #[arg(long, default_value = "cpu")]
    device: DeviceSpec,
    /// Threads for the matrix kernels
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..))]
    threads: Option<u16>,
    /// No progress on stderr
    #[arg(long, short)]
    quiet: bool,
    /// Progress on stderr: a bar on a terminal (text), or one JSON object per line
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    log: LogFormat,
    /// Memory budget of a text evaluation (e.g. `800M`, `4G`): one layer's weights and
    /// activations must fit; hidden states go to a temporary file past it [default: half
    /// the available memory]
    #[arg(long = "max-memory", value_name = "SIZE", value_parser = parse_size)]
    max_memory: Option<u64>,
    /// Where hidden states and the reference's logits are kept on disk [default: the
    /// system's temporary directory]
    #[arg(long = "spill-dir", value_name = "DIR")]
    spill_dir: Option<PathBuf>,
}

/// A size in bytes: a number with an optional `K`, `M`, `G` or `T` (powers of 1024,
/// optionally followed by `B` or `iB`).
pub(super) fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let lower = t.to_ascii_lowercase();
    let lower = lower
        .strip_suffix("ib")
        .or_else(|| lower.strip_suffix('b'))
        .unwrap_or(&lower);
    let (num, shift) = match lower.chars().last() {
        Some('k') => (&lower[..lower.len() - 1], 10),
        Some('m') => (&lower[..lower.len() - 1], 20),
        Some('g') => (&lower[..lower.len() - 1], 30),
        Some('t') => (&lower[..lower.len() - 1], 40),
        _ => (lower, 0),
    };
    let v: f64 = num
        .trim()
        .parse()
        .map_err(|_| format!("`{t}` is not a size (e.g. `800M`, `4G`, `1073741824`)"))?;
    let bytes = v * (1u64 << shift) as f64;
    if !bytes.is_finite() || bytes < 1.0 || bytes > u64::MAX as f64 {
        return Err(format!("`{t}` is not a size of at least one byte"));
    }
    Ok(bytes as u64)
}

impl Run {
    fn budget(&self) -> Option<Budget> {
        if self.max_memory.is_none() && self.spill_dir.is_none() {
            return None;
        }
        let d = Budget::default_for_machine();
        Some(Budget {
            max_memory: self.max_memory.unwrap_or(d.max_memory),
            spill_dir: self.spill_dir.clone().unwrap_or(d.spill_dir),
        })
    }
}

#[derive(Debug, clap::Args)]
struct Judge {
    /// A policy file whose `parity.thresholds` replace the built-in limits
    #[arg(long)]
    policy: Option<PathBuf>,
    /// Judge the candidate as this quant type instead of the one it declares
    #[arg(long = "as-type", value_name = "TYPE")]
    as_type: Option<String>,
    /// Print the report as JSON
    #[arg(long)]
    json: bool,
}

fn set_threads(n: Option<u16>) {
    if let Some(n) = n {
        // candle sizes its worker pools from these variables the first time it runs a
        // kernel and offers no other way to set them; nothing has run yet here.
        std::env::set_var("CANDLE_NUM_THREADS", n.to_string());
        std::env::set_var("RAYON_NUM_THREADS", n.to_string());
    }
}

fn options(c: &Common) -> anyhow::Result<ParityOptions> {
    let corpus = match (&c.text, &c.prompts) {
        (Some(t), None) => Corpus::Text(t.clone()),
        (None, Some(p)) => Corpus::Prompts(p.clone()),
        _ => {
            return Err(super::hint(
                parity::ParityError::NoInput,
                "`fixtures/text/eval.txt` is a small English text to start with",
            ))
        }
    };
    set_threads(c.run.threads);
    let mut o = ParityOptions::new(corpus);
    o.ctx = c.ctx;
    o.chunks = c.chunks;
    o.max_new_tokens = c.max_new;
    o.candidate_math = c.run.math;
    o.device = c.run.device.clone();
    o.budget = c.run.budget();
    Ok(o)
}

/// Progress on stderr: a bar on a terminal, JSON lines with `--log json`, else nothing.
struct Progress {
    bar: Option<ProgressBar>,
    json: bool,
    /// The model the bar is counting, so it restarts (and its ETA) for the next one.
    model: Option<&'static str>,
    started: std::time::Instant,
}

impl Progress {
    fn new(run: &Run) -> Progress {
        let json = run.log == LogFormat::Json;
        let bar = (!run.quiet && !json && std::io::stderr().is_terminal()).then(|| {
            let b = ProgressBar::new(0);
            b.set_style(
                ProgressStyle::with_template("{msg} {wide_bar} {pos}/{len} eta {eta}")
                    .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            b
        });
        Progress {
            bar,
            json,
            model: None,
            started: std::time::Instant::now(),
        }
    }

    fn event(&mut self, e: parity::Event) {
        match e {
            parity::Event::Layers { model, progress: p } => {
                if self.json {
                    // one line when a model starts and one per layer finished
                    let done = if p.layer == 0 && p.sequences == 0 {
                        0
                    } else if p.sequences == p.total_sequences && p.layer < p.layers {
                        p.layer + 1
                    } else {
                        return;
                    };
                    let v = serde_json::json!({
                        "event": "parity-layer",
                        "model": model,
                        "layers_done": done,
                        "layers": p.layers,
                        "sequences": p.total_sequences,
                        "spilled": p.spilled,
                        "seconds": self.started.elapsed().as_secs_f64(),
                    });
                    eprintln!("{v}");
                    return;
                }
                let Some(b) = &self.bar else { return };
                if self.model != Some(model) {
                    self.model = Some(model);
                    b.reset();
                }
                b.set_length((p.layers * p.total_sequences) as u64);
                b.set_position((p.layer * p.total_sequences + p.sequences) as u64);
                b.set_message(format!(
                    "{model}: layer {}/{}, sequences {}/{}{}",
                    (p.layer + 1).min(p.layers),
                    p.layers,
                    p.sequences,
                    p.total_sequences,
                    if p.spilled { " (spilled)" } else { "" }
                ));
            }
            parity::Event::Sequence { done, total } => {
                if self.json {
                    let v = serde_json::json!({
                        "event": "parity-sequence",
                        "done": done,
                        "total": total,
                        "seconds": self.started.elapsed().as_secs_f64(),
                    });
                    eprintln!("{v}");
                    return;
                }
                if let Some(b) = &self.bar {
                    b.set_length(total as u64);
                    b.set_position(done as u64);
                    b.set_message("sequences");
                }
            }
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}

/// The thresholds for a candidate: the policy's or the built-in ones, for its declared
/// quant type unless `--as-type` names another.
fn thresholds(j: &Judge, declared: &str) -> anyhow::Result<Thresholds> {
    let quant = j.as_type.as_deref().unwrap_or(declared);
    let policy = j.policy.as_deref().map(Policy::load).transpose()?;
    Ok(Thresholds::resolve(
        quant,
        policy.as_ref().and_then(Overrides::policy),
    ))
}

fn declared_quant(candidate: &Path) -> anyhow::Result<String> {
    let ckpt = crate::formats::Checkpoint::open(candidate)?;
    Ok(parity::quant_type(&ckpt))
}

pub fn run(args: Args) -> anyhow::Result<Outcome> {
    match args.command {
        Some(Sub::Record(r)) => record(r),
        Some(Sub::Check(c)) => check(c),
        None => {
            // clap requires both when no subcommand is given.
            let (Some(mut reference), Some(mut candidate)) = (args.reference, args.candidate)
            else {
                anyhow::bail!("give REFERENCE and CANDIDATE, or `record` / `check`");
            };
            let _hub = super::model_arg::resolve_pair(&mut reference, &mut candidate, &args.hub)?;
            let opts = options(&args.common)?;
            let th = thresholds(&args.judge, &declared_quant(&candidate)?)?;
            let mut bar = Progress::new(&args.common.run);
            let report = parity::compare(&reference, &candidate, &opts, Some(th), &mut |e| {
                bar.event(e)
            })?;
            drop(bar);
            print_report(&report, args.judge.json)
        }
    }
}

fn record(mut r: RecordArgs) -> anyhow::Result<Outcome> {
    let _hub = super::model_arg::resolve(&mut r.reference, &r.hub)?;
    let mut opts = options(&r.common)?;
    opts.top_k = r.top;
    anyhow::ensure!(r.top > 0, "--top must be at least 1");
    let mut bar = Progress::new(&r.common.run);
    let golden = parity::record(&r.reference, &opts, &mut |e| bar.event(e))?;
    drop(bar);
    golden.write(&r.out)?;
    let positions: usize = golden.sequences.iter().map(|s| s.positions.len()).sum();
    println!(
        "recorded `{}`: {} sequences, {positions} scored positions, top {} per position -> `{}`",
        r.reference.display(),
        golden.sequences.len(),
        golden.top_k,
        r.out.display()
    );
    println!(
        "noise floor on this machine: mean KLD {:.3e}, top-1 {:.2} %, max |delta logit| {:.3e}",
        golden.noise_floor.mean_kld.value,
        100.0 * golden.noise_floor.same_top1.value,
        golden.noise_floor.max_abs_delta_logit
    );
    Ok(Outcome::Pass)
}

fn check(mut c: CheckArgs) -> anyhow::Result<Outcome> {
    let _hub = super::model_arg::resolve(&mut c.candidate, &c.hub)?;
    set_threads(c.run.threads);
    let golden = Golden::read(&c.golden)?;
    let opts = ParityOptions {
        candidate_math: c.run.math,
        device: c.run.device.clone(),
        ctx: golden.corpus.ctx,
        max_new_tokens: golden.corpus.max_new_tokens,
        budget: c.run.budget(),
        ..ParityOptions::new(Corpus::Text(PathBuf::from(&golden.corpus.path)))
    };
    let th = thresholds(&c.judge, &declared_quant(&c.candidate)?)?;
    let mut bar = Progress::new(&c.run);
    let report = parity::check(
        &c.candidate,
        &golden,
        &c.golden,
        &opts,
        Some(th),
        &mut |e| bar.event(e),
    )
    .with_context(|| format!("cannot check `{}`", c.candidate.display()))?;
    drop(bar);
    print_report(&report, c.judge.json)
}

fn print_report(r: &ParityReport, json: bool) -> anyhow::Result<Outcome> {
    let mut out = std::io::stdout().lock();
    if json {
        serde_json::to_writer_pretty(&mut out, r)?;
        writeln!(out)?;
    } else {
        write_text(&mut out, r)?;
    }
    Ok(match r.verdict {
        Verdict::Fail => Outcome::Fail,
        _ => Outcome::Pass,
    })
}

fn pct(x: f64) -> String {
    format!("{:.3} %", 100.0 * x)
}

fn write_summary(o: &mut dyn Write, s: &Summary) -> std::io::Result<()> {
    let e = |v: parity::stats::Estimate| format!("{:.6} ± {:.6}", v.value, v.stderr);
    writeln!(o, "  scored positions      {}", s.positions)?;
    writeln!(o, "  mean KLD              {}", e(s.mean_kld))?;
    writeln!(
        o,
        "  KLD median / 90 / 95 / 99 / 99.9 % / max   {:.6} / {:.6} / {:.6} / {:.6} / {:.6} / {:.6}",
        s.kld.median, s.kld.p90, s.kld.p95, s.kld.p99, s.kld.p99_9, s.kld.max
    )?;
    writeln!(o, "  PPL reference         {}", e(s.ppl_reference))?;
    writeln!(o, "  PPL candidate         {}", e(s.ppl_candidate))?;
    writeln!(o, "  PPL ratio             {}", e(s.ppl_ratio))?;
    writeln!(o, "  mean ln(PPL ratio)    {}", e(s.mean_ln_ppl_ratio))?;
    writeln!(o, "  NLL correlation       {:.4}", s.nll_correlation)?;
    writeln!(
        o,
        "  mean delta-p          {} ± {}",
        pct(s.mean_delta_p.value),
        pct(s.mean_delta_p.stderr)
    )?;
    writeln!(
        o,
        "  RMS delta-p           {} ± {}",
        pct(s.rms_delta_p.value),
        pct(s.rms_delta_p.stderr)
    )?;
    writeln!(
        o,
        "  delta-p 1 / 5 / 50 / 95 / 99 %   {} / {} / {} / {} / {}",
        pct(s.delta_p.p1),
        pct(s.delta_p.p5),
        pct(s.delta_p.median),
        pct(s.delta_p.p95),
        pct(s.delta_p.p99)
    )?;
    writeln!(
        o,
        "  same top-1            {} ± {}",
        pct(s.same_top1.value),
        pct(s.same_top1.stderr)
    )?;
    writeln!(o, "  max |delta logit|     {:.6}", s.max_abs_delta_logit)?;
    if s.max_tail_mass > 0.0 {
        writeln!(
            o,
            "  reference mass outside the golden top-k: mean {}, max {} (KLD is a lower bound)",
            pct(s.mean_tail_mass),
            pct(s.max_tail_mass)
        )?;
    }
    Ok(())
}

fn write_text(o: &mut dyn Write, r: &ParityReport) -> std::io::Result<()> {
    writeln!(
        o,
        "parity: {} ({}, {} math) against {} ({}{})",
        r.candidate.path,
        r.candidate.quant,
        match r.candidate.math {
            Math::Reference => "reference",
            Math::Native => "native",
        },
        r.reference.path,
        r.reference.quant,
        if r.against == "golden" {
            ", golden top-k"
        } else {
            ""
        }
    )?;
    writeln!(
        o,
        "corpus: {} `{}`, {} sequences, ctx {}",
        r.corpus.kind, r.corpus.path, r.corpus.chunks, r.corpus.ctx
    )?;
    write_summary(o, &r.summary)?;
    if let Some(n) = &r.noise_floor {
        writeln!(
            o,
            "noise floor (reference recorded twice on the golden's machine):"
        )?;
        writeln!(
            o,
            "  mean KLD {:.3e}, same top-1 {}, max |delta logit| {:.3e}",
            n.mean_kld.value,
            pct(n.same_top1.value),
            n.max_abs_delta_logit
        )?;
    }
    for d in &r.divergence {
        match d.first_divergence {
            Some(i) => writeln!(
                o,
                "greedy diverges at new token {i}: {:?}\n  reference: {:?}\n  candidate: {:?}",
                d.prompt, d.reference_text, d.candidate_text
            )?,
            None => writeln!(
                o,
                "greedy identical for {} tokens: {:?}",
                d.reference.len(),
                d.prompt
            )?,
        }
    }
    if let Some(t) = &r.thresholds {
        writeln!(o, "thresholds for {} ({}):", t.quant, t.origin)?;
        for c in &r.checks {
            writeln!(
                o,
                "  {:<16} {:>12.6} vs {:>10.6}  {}",
                c.limit,
                c.value,
                c.threshold,
                if c.passed { "ok" } else { "FAILED" }
            )?;
        }
    }
    for f in &r.findings {
        writeln!(o, "{}", crate::report::finding_text(f))?;
    }
    writeln!(o, "verdict: {}", r.verdict.as_str())
}
