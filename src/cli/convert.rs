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
