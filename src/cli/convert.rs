//! `modelgate convert SRC -o OUT [--type T] [--format gguf|safetensors] [--threads N] [--json]
//! [recipe options]`: turn the arguments into [`convert::Options`], run the conversion with a
//! progress bar on stderr (when stderr is a terminal), and print the summary as a table or
//! as JSON on stdout.

use std::fmt::Write as _;
use std::io::{IsTerminal, Write};
use std::path::PathBuf;

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};

use crate::convert::split::{self, Shard, SplitMode};
use crate::convert::{self, recipe, ConvertError, FileType, OutputFormat, RecipeOptions, Summary};
use crate::inspect::human_bytes;

use super::Outcome;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// A Hugging Face model directory (safetensors, single or sharded, or a PyTorch
    /// checkpoint), or a GGUF file
    src: PathBuf,
    /// Output: `NAME.gguf`, `NAME.safetensors` (weights only) or a directory (a Hugging Face
    /// model: model.safetensors, config.json, tokenizer files)
    #[arg(short, long)]
    output: PathBuf,
    /// Target type: F32 F16 BF16 Q8_0 Q4_0 Q4_1 Q5_0 Q5_1 Q2_K Q3_K_S Q3_K_M Q3_K_L Q4_K_S
    /// Q4_K_M Q5_K_S Q5_K_M Q6_K IQ4_NL IQ4_XS TQ1_0 TQ2_0 (Q3_K, Q4_K, Q5_K mean the _M
    /// mixtures, as in llama-quantize)
    #[arg(short = 't', long = "type", value_name = "T")]
    ty: Option<String>,
    /// Output format when OUT's name does not say: gguf or safetensors
    #[arg(long, value_name = "FORMAT")]
    format: Option<String>,
    /// Worker threads (default: all cores)
    #[arg(long, value_name = "N")]
    threads: Option<usize>,
    /// Print the summary as JSON
    #[arg(long)]
    json: bool,
    /// No progress bar
    #[arg(long, short)]
    quiet: bool,
    /// List every tensor that fell back to another type, not just each reason with a count
    /// (`--json` always lists them)
    #[arg(long, short)]
    verbose: bool,
    /// Keep output.weight in its source type
    #[arg(long)]
    leave_output_tensor: bool,
    /// Give every quantized tensor the target type (no mixture rules)
    #[arg(long)]
    pure: bool,
    /// Type of output.weight
    #[arg(long, value_name = "TYPE")]
    output_tensor_type: Option<String>,
    /// Type of token_embd.weight
    #[arg(long, value_name = "TYPE")]
    token_embedding_type: Option<String>,
    /// Type of the tensors whose GGUF name matches REGEX (repeatable; first match wins)
    #[arg(long = "tensor-type", value_name = "REGEX=TYPE")]
    tensor_type: Vec<String>,
    /// Importance matrix (llama-imatrix's GGUF or legacy .dat) weighting the quantizers'
    /// errors, as `llama-quantize --imatrix`
    #[arg(long, value_name = "FILE")]
    imatrix: Option<PathBuf>,
    /// Requantize already-quantized tensors (loses quality)
    #[arg(long)]
    allow_requantize: bool,
    /// llama.cpp pre-tokenizer name to write instead of the one derived from tokenizer.json
    #[arg(long, value_name = "NAME")]
    pre_tokenizer: Option<String>,
    /// general.name
    #[arg(long)]
    name: Option<String>,
    /// general.source.url
    #[arg(long, value_name = "URL")]
    source_url: Option<String>,
    /// general.quantized_by (default: modelgate)
    #[arg(long, value_name = "WHO")]
    quantized_by: Option<String>,
    /// Write a GGUF split set whose parts hold at most SIZE of tensor data (500M, 2G; M and
    /// G are powers of 1000 as in llama.cpp's gguf-split): `OUT-00001-of-0000N.gguf`, ...
    #[arg(long, value_name = "SIZE", conflicts_with = "shard")]
    split_max_size: Option<String>,
    /// Write a GGUF split set whose parts hold at most N tensors
    #[arg(long, value_name = "N", conflicts_with = "shard")]
    split_max_tensors: Option<u64>,
    /// Convert only share I of N (balanced by bytes) as part I of a split set, with a
    /// `.shard.json` sidecar; `modelgate merge` checks and assembles the N shares
    #[arg(long, value_name = "I/N")]
    shard: Option<String>,
    /// Choose each tensor's type to minimise the predicted KLD at this many bits per weight
    /// (tensor data over parameters, as `bits/weight` is printed); needs `--text`
    #[arg(long, value_name = "B", conflicts_with_all = ["ty", "max_size", "shard", "split_max_size", "split_max_tensors"], requires = "text")]
    target_bpw: Option<f64>,
    /// Like `--target-bpw`, with the whole file at most SIZE (800M, 4.5G, 123456789)
    #[arg(long, value_name = "SIZE", conflicts_with_all = ["ty", "shard", "split_max_size", "split_max_tensors"], requires = "text")]
    max_size: Option<String>,
    /// Calibration text for `--target-bpw` / `--max-size`: each tensor's sensitivity is
    /// measured with the engine on its first chunks
    #[arg(long, value_name = "FILE")]
    text: Option<PathBuf>,
    /// Tokens per calibration chunk (the second half of each is scored)
    #[arg(long, value_name = "N", default_value_t = 256)]
    ctx: usize,
    /// Calibration chunks used
    #[arg(long, value_name = "N", default_value_t = 4)]
    chunks: usize,
    /// Layers probed per kind of layer tensor
    #[arg(long, value_name = "N", default_value_t = 4)]
    probes: usize,
    /// Do not compare the written mix with the source on the calibration text
    #[arg(long)]
    no_measure: bool,
    #[command(flatten)]
    hub: super::model_arg::HubArgs,
}

struct Bar(ProgressBar);

impl convert::Progress for Bar {
    fn start(&self, total: u64) {
        self.0.set_length(total);
    }
    fn advance(&self, bytes: u64) {
        self.0.inc(bytes);
    }
    fn finish(&self) {
        self.0.finish_and_clear();
    }
}

fn options(args: &Args) -> anyhow::Result<convert::Options> {
    let mut o = convert::Options::default();
    if let Some(t) = &args.ty {
        o.file_type = Some(FileType::parse(t).ok_or_else(|| {
            super::hint(
                ConvertError::Options(format!("`{t}` is not a type modelgate writes")),
                format!("choose one of {}", FileType::names().join(", ")),
            )
        })?);
    }
    if let Some(n) = args.threads {
        anyhow::ensure!(n > 0, "--threads must be at least 1");
        o.threads = n;
    }
    let ggml = |s: &Option<String>| -> anyhow::Result<_> {
        s.as_deref()
            .map(recipe::parse_ggml_type)
            .transpose()
            .map_err(|e| anyhow::anyhow!(e))
    };
    o.recipe = RecipeOptions {
        leave_output_tensor: args.leave_output_tensor,
        pure: args.pure,
        output_tensor_type: ggml(&args.output_tensor_type)?,
        token_embedding_type: ggml(&args.token_embedding_type)?,
        tensor_types: args
            .tensor_type
            .iter()
            .map(|s| {
                recipe::parse_tensor_type(s).map_err(|e| anyhow::anyhow!("--tensor-type: {e}"))
            })
            .collect::<anyhow::Result<_>>()?,
        has_imatrix: args.imatrix.is_some(),
    };
    if let Some(path) = &args.imatrix {
        o.imatrix = Some(std::sync::Arc::new(convert::ImatrixInput::read(path)?));
    }
    o.allow_requantize = args.allow_requantize;
    if let Some(p) = &args.pre_tokenizer {
        anyhow::ensure!(!p.is_empty(), "--pre-tokenizer needs a name");
        o.pre_tokenizer = Some(p.clone());
    }
    o.name = args.name.clone();
    o.source_url = args.source_url.clone();
    o.quantized_by = args.quantized_by.clone();
    Ok(o)
}

pub fn run(mut args: Args) -> anyhow::Result<Outcome> {
    let _hub = super::model_arg::resolve(&mut args.src, &args.hub)?;
    let opts = options(&args)?;
    let format = OutputFormat::for_output(&args.output, args.format.as_deref())?;
    if args.target_bpw.is_some() || args.max_size.is_some() {
        return run_budget(&args, &opts, format);
    }
    let bar = if !args.quiet && std::io::stderr().is_terminal() {
        let b = ProgressBar::new(0);
        b.set_style(
            ProgressStyle::with_template("{spinner} converting {bytes}/{total_bytes} {wide_bar} {binary_bytes_per_sec} eta {eta}")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        Some(Bar(b))
    } else {
        None
    };
    let progress: &dyn convert::Progress = match &bar {
        Some(b) => b,
        None => &convert::NoProgress,
    };
    let mode = if let Some(s) = &args.shard {
        Some(SplitMode::Shard(Shard::parse(s)?))
    } else if args.split_max_size.is_some() || args.split_max_tensors.is_some() {
        Some(SplitMode::Limit {
            max_bytes: args
                .split_max_size
                .as_deref()
                .map(split::parse_size)
                .transpose()?,
            max_tensors: args.split_max_tensors,
        })
    } else {
        None
    };
    if mode.is_some() && format != OutputFormat::Gguf {
        anyhow::bail!(ConvertError::Options(format!(
            "split and sharded output is GGUF; name OUT `NAME.gguf`, not `{}`",
            args.output.display()
        )));
    }
    let result = match mode {
        Some(m) => split::convert_split(&args.src, &args.output, &opts, m, progress),
        None => convert::convert(&args.src, &args.output, format, &opts, progress),
    };
    // The error's own hint is printed by `cli::print_error`.
    let summary = result?;
    {
        let mut err = std::io::stderr().lock();
        for n in &summary.notes {
            let _ = writeln!(err, "note: {n}");
        }
    }
    let mut out = std::io::stdout().lock();
    if args.json {
        serde_json::to_writer_pretty(&mut out, &summary).context("cannot write JSON to stdout")?;
        writeln!(out)?;
    } else {
        out.write_all(render_text(&summary, args.verbose).as_bytes())?;
    }
    Ok(Outcome::Pass)
}

/// The readable summary. Fallbacks are grouped by what was wanted, what was used and why,
/// one line per group with a count (a small model has hundreds of identical ones);
/// `verbose` lists the tensors of each group under it.
pub fn render_text(s: &Summary, verbose: bool) -> String {
    let mut o = String::new();
    let what = match s.format {
        OutputFormat::Gguf => format!("GGUF {}", s.file_type.as_deref().unwrap_or("")),
        OutputFormat::SafetensorsFile => "safetensors file".to_owned(),
        OutputFormat::HfDir => "Hugging Face directory".to_owned(),
    };
    let _ = writeln!(
        o,
        "`{}` -> `{}`: {}",
        s.source.display(),
        s.output.display(),
        what.trim()
    );
    let mut line = |label: &str, value: String| {
        let _ = writeln!(o, "  {label:<15} {value}");
    };
    if let Some(a) = &s.architecture {
        line("architecture", a.clone());
    }
    line(
        "tensors",
        format!(
            "{} ({} parameters)",
            s.tensors,
            crate::inspect::group_digits(s.parameters)
        ),
    );
    line(
        "size",
        format!(
            "{} in, {} out",
            human_bytes(s.bytes_in),
            human_bytes(s.bytes_out)
        ),
    );
    line("bits/weight", format!("{:.3}", s.bits_per_weight));
    if let Some(m) = &s.imatrix {
        line(
            "imatrix",
            format!(
                "`{}` ({} entries, {} chunks, sha256 {})",
                m.path.display(),
                m.entries,
                m.chunk_count,
                m.sha256
            ),
        );
    }
    for p in &s.parts {
        line(
            "part",
            format!(
                "`{}` ({} tensors, {})",
                p.path.display(),
                p.tensors,
                human_bytes(p.bytes)
            ),
        );
    }
    if let Some(sh) = &s.shard {
        line(
            "shard",
            format!(
                "{}/{} plan sha256 {} sidecar `{}`",
                sh.share,
                sh.shares,
                sh.plan_sha256,
                sh.sidecar.display()
            ),
        );
    }
    let gbps = if s.seconds > 0.0 {
        s.bytes_in as f64 / s.seconds / 1e9
    } else {
        0.0
    };
    line(
        "time",
        format!(
            "{:.2} s on {} threads ({gbps:.2} GB/s in)",
            s.seconds, s.threads
        ),
    );
    if let Some(p) = &s.pre_tokenizer {
        line("pre-tokenizer", format!("{} ({})", p.name, p.reason));
    }
    let _ = writeln!(o, "  types:");
    for (t, c) in &s.types {
        let _ = writeln!(
            o,
            "    {t:<8} {:>5} tensors  {:>12}",
            c.tensors,
            human_bytes(c.bytes)
        );
    }
    if !s.fallbacks.is_empty() {
        // Groups in order of first appearance, so the output follows the tensor order.
        // (wanted, used, reason) and the tensors that fell back so.
        type Group<'a> = ((&'a str, &'a str, &'a str), Vec<&'a str>);
        let mut groups: Vec<Group> = Vec::new();
        for f in &s.fallbacks {
            let key = (f.wanted.as_str(), f.used.as_str(), f.reason.as_str());
            match groups.iter_mut().find(|(k, _)| *k == key) {
                Some((_, tensors)) => tensors.push(&f.tensor),
                None => groups.push((key, vec![&f.tensor])),
            }
        }
        let _ = writeln!(o, "  fallbacks ({}):", s.fallbacks.len());
        for ((wanted, used, reason), tensors) in &groups {
            let n = tensors.len();
            let noun = if n == 1 { "tensor" } else { "tensors" };
            let _ = writeln!(o, "    {n:>5} {noun:<7} {wanted} -> {used} ({reason})");
            if verbose {
                for t in tensors {
                    let _ = writeln!(o, "            {t}");
                }
            }
        }
    }
    o
}

/// `--target-bpw` / `--max-size`: the budget mix, its table and the predicted and measured
/// KLD.
fn run_budget(
    args: &Args,
    opts: &convert::Options,
    format: OutputFormat,
) -> anyhow::Result<Outcome> {
    use crate::pipeline::budget::{self as pb, BudgetOptions, Event};
    use crate::pipeline::StageError;
    if format != OutputFormat::Gguf {
        anyhow::bail!(ConvertError::Options(format!(
            "a budget mix is written as GGUF; name OUT `NAME.gguf`, not `{}`",
            args.output.display()
        )));
    }
    let budget = match (args.target_bpw, &args.max_size) {
        (Some(b), _) => convert::budget::Budget::Bpw(b),
        (None, Some(s)) => convert::budget::Budget::Bytes(convert::budget::parse_size(s)?),
        (None, None) => anyhow::bail!("--target-bpw or --max-size is needed"),
    };
    let Some(text) = &args.text else {
        anyhow::bail!(ConvertError::Options(
            "--target-bpw and --max-size need --text FILE, the calibration text".into()
        ));
    };
    let mut b = BudgetOptions::new(budget, text.clone());
    b.ctx = args.ctx;
    b.chunks = args.chunks.max(1);
    b.probes = args.probes.max(1);
    b.measure = !args.no_measure;
    let quiet = args.quiet;
    let mut progress = |e: Event| {
        if quiet {
            return;
        }
        let line = match e {
            Event::Errors { done, total } if done == total => {
                format!("quantization errors of {total} tensors measured")
            }
            Event::Errors { .. } => return,
            Event::Reference => "reference run on the calibration text done".to_owned(),
            Event::Probe { done, total } => format!("sensitivity probe {done}/{total}"),
            Event::Writing => "writing the mix".to_owned(),
            Event::Measuring => "measuring the written mix against the source".to_owned(),
        };
        let _ = writeln!(std::io::stderr().lock(), "{line}");
    };
    let outcome = pb::convert_to_budget(&args.src, &args.output, opts, &b, &mut progress).map_err(
        |e| match e {
            StageError::Convert(e) => anyhow::Error::new(e),
            StageError::Parity(e) => anyhow::Error::new(e),
            StageError::Format(e) => anyhow::Error::new(e),
            other => anyhow::Error::new(other),
        },
    )?;
    let mut out = std::io::stdout().lock();
    if args.json {
        serde_json::to_writer_pretty(&mut out, &outcome).context("cannot write JSON to stdout")?;
        writeln!(out)?;
    } else {
        out.write_all(render_budget(&outcome).as_bytes())?;
    }
    Ok(Outcome::Pass)
}

/// The readable report of a budget mix.
pub fn render_budget(b: &crate::pipeline::budget::Outcome) -> String {
    let s = &b.summary;
    let mut o = String::new();
    let _ = writeln!(
        o,
        "`{}` -> `{}`: GGUF budget mix (general.file_type {})",
        s.source.display(),
        s.output.display(),
        s.file_type.as_deref().unwrap_or("F16")
    );
    let mut line = |label: &str, value: String| {
        let _ = writeln!(o, "  {label:<15} {value}");
    };
    line(
        "budget",
        format!(
            "{}: {} of tensor data (this model: {:.3} to {:.3} bits/weight)",
            b.budget,
            human_bytes(b.budget_bytes),
            b.min_bpw,
            b.max_bpw
        ),
    );
    line("bits/weight", format!("{:.3}", s.bits_per_weight));
    line(
        "size",
        format!(
            "{} in, {} out",
            human_bytes(s.bytes_in),
            human_bytes(s.bytes_out)
        ),
    );
    if let Some(m) = &s.imatrix {
        line(
            "imatrix",
            format!("`{}` (sha256 {})", m.path.display(), m.sha256),
        );
    }
    let c = &b.calibration;
    line(
        "calibration",
        format!(
            "`{}`: {} chunks of {} tokens, {} scored (sha256 {})",
            c.path.display(),
            c.chunks,
            c.ctx,
            c.scored_tokens,
            c.sha256
        ),
    );
    line(
        "time",
        format!(
            "errors {:.1} s, sensitivity {:.1} s ({} probes, {} checks), write {:.1} s, measure {:.1} s",
            b.seconds.errors,
            b.seconds.sensitivity,
            b.probes.len(),
            b.checks.len(),
            b.seconds.write,
            b.seconds.measure
        ),
    );
    if let Some(p) = &b.proxy {
        line(
            "proxy check",
            format!(
                "{} pairs: measured/predicted KLD {:.2} (geometric mean), worst {:.2}x, rank correlation {:.2}",
                p.pairs, p.ratio_geomean, p.worst_factor, p.rank_correlation
            ),
        );
    }
    line(
        "predicted KLD",
        format!("{:.5} (sum over tensors)", b.predicted_kld),
    );
    match &b.measured {
        Some(m) => line(
            "measured KLD",
            format!(
                "{:.5} ± {:.5} over {} positions of the calibration text, same top-1 {:.1} %",
                m.mean_kld.value,
                m.mean_kld.stderr,
                m.positions,
                m.same_top1.value * 100.0
            ),
        ),
        None => line(
            "measured KLD",
            format!(
                "not measured; run `modelgate parity {} {} --text {}`",
                s.source.display(),
                s.output.display(),
                c.path.display()
            ),
        ),
    }
    let _ = writeln!(
        o,
        "  {:<28} {:>7}  {:<28} {:>10} {:>6} {:>10}",
        "mix", "tensors", "types", "size", "bpw", "pred. KLD"
    );
    for g in &b.groups {
        let types = g
            .types
            .iter()
            .map(|(t, n)| format!("{t}x{n}"))
            .collect::<Vec<_>>()
            .join(" ");
        let _ = writeln!(
            o,
            "    {:<26} {:>7}  {:<28} {:>10} {:>6.2} {:>10.5}",
            g.group,
            g.tensors,
            types,
            human_bytes(g.bytes),
            g.bits_per_weight,
            g.predicted_kld
        );
    }
    o
}
