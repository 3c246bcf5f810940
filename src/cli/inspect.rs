//! `modelgate inspect PATH [--json] [--tensors]`: what a checkpoint file or model directory
//! contains, as a readable summary or as JSON described by `schemas/inspect.schema.json`.

use std::fmt::Write as _;
use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;

use crate::formats::{Checkpoint, Layout};
use crate::inspect::{group_digits, human_bytes, summarise, Summary};

use super::Outcome;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// A weight file (GGUF, safetensors, safetensors index, PyTorch) or a model directory
    path: PathBuf,
    /// Print JSON (described by schemas/inspect.schema.json) instead of a summary
    #[arg(long)]
    json: bool,
    /// List every tensor (name, dtype, shape, bytes)
    #[arg(long)]
    tensors: bool,
    #[command(flatten)]
    hub: super::model_arg::HubArgs,
}

pub fn run(mut args: Args) -> anyhow::Result<Outcome> {
    let _hub = super::model_arg::resolve(&mut args.path, &args.hub)?;
    let ckpt = Checkpoint::open(&args.path).map_err(|e| match e.hint() {
        Some(_) => anyhow::Error::new(e),
        None => super::hint(
            e,
            "`modelgate inspect` reads GGUF, safetensors (single or sharded), PyTorch checkpoints and model directories",
        ),
    })?;
    let summary = summarise(&ckpt, args.tensors);
    let mut out = std::io::stdout().lock();
    if args.json {
        serde_json::to_writer_pretty(&mut out, &summary).context("cannot write JSON to stdout")?;
        writeln!(out)?;
    } else {
        out.write_all(render_text(&summary).as_bytes())?;
    }
    Ok(Outcome::Pass)
}

/// The readable summary: one `label  value` line per fact, tables for dtypes, files and
/// (on request) tensors.
pub fn render_text(s: &Summary) -> String {
    let mut o = String::new();
    let what = match s.layout {
        Layout::Directory => format!("model directory, {} weights", s.format.as_str()),
        Layout::File => format!("{} file", s.format.as_str()),
    };
    let _ = writeln!(o, "`{}`: {what}", s.path);
    let mut line = |label: &str, value: String| {
        let _ = writeln!(o, "  {label:<13} {value}");
    };
    if let Some(g) = &s.gguf {
        line(
            "gguf",
            format!(
                "version {}, alignment {}, {} metadata keys",
                g.version, g.alignment, g.metadata_keys
            ),
        );
    }
    line(
        "architecture",
        s.architecture.clone().unwrap_or_else(|| "unknown".into()),
    );
    line(
        "parameters",
        format!(
            "{} in {} tensors",
            group_digits(s.parameters),
            s.tensor_count
        ),
    );
    if let Some(e) = &s.experts {
        let mut v = format!("{} routed, {} used per token", e.count, e.used_per_token);
        if e.shared > 0 {
            v.push_str(&format!(", {} shared", e.shared));
        }
        if e.leading_dense_layers > 0 {
            v.push_str(&format!(
                ", {} dense leading layer{}",
                e.leading_dense_layers,
                if e.leading_dense_layers == 1 { "" } else { "s" }
            ));
        }
        v.push_str(&format!(" (from {})", e.source));
        line("experts", v);
        line(
            "active params",
            format!(
                "{} per token of {} ({:.1}%)",
                group_digits(e.active_parameters),
                group_digits(e.total_parameters),
                100.0 * e.active_parameters as f64 / e.total_parameters.max(1) as f64
            ),
        );
    }
    let p = &s.params;
    let mut hp = Vec::new();
    let mut push = |name: &str, v: Option<String>| {
        if let Some(v) = v {
            hp.push(format!("{name} {v}"));
        }
    };
    push("blocks", p.block_count.map(|v| v.to_string()));
    push("embedding", p.embedding_length.map(|v| v.to_string()));
    push("ffn", p.feed_forward_length.map(|v| v.to_string()));
    push(
        "heads",
        p.head_count.map(|h| {
            format!(
                "{h} / {} kv",
                p.head_count_kv.map_or("?".into(), |k| k.to_string())
            )
        }),
    );
    push("head dim", p.head_dim.map(|v| v.to_string()));
    push("context", p.context_length.map(|v| v.to_string()));
    push("vocab", p.vocab_size.map(|v| v.to_string()));
    push("rope theta", p.rope_theta.map(|v| v.to_string()));
    push("rms eps", p.rms_norm_eps.map(|v| format!("{v:e}")));
    push(
        "tied embeddings",
        p.tie_word_embeddings.map(|v| v.to_string()),
    );
    if !hp.is_empty() {
        line("hyper-params", hp.join(", "));
    }
    match &s.tokenizer {
        Some(t) => {
            let special = [
                ("bos", &t.bos),
                ("eos", &t.eos),
                ("unk", &t.unk),
                ("pad", &t.pad),
            ]
            .iter()
            .filter_map(|(n, tok)| {
                tok.as_ref().map(|tok| match &tok.text {
                    Some(text) => format!("{n} {} `{text}`", tok.id),
                    None => format!("{n} {}", tok.id),
                })
            })
            .collect::<Vec<_>>();
            let mut v = t.model.to_string();
            if let Some(pre) = &t.pre {
                v.push_str(&format!(" (pre-tokenizer {pre})"));
            }
            v.push_str(&format!(
                ", {} tokens, {} merges",
                group_digits(t.vocab_size),
                group_digits(t.merges)
            ));
            if !special.is_empty() {
                v.push_str(&format!(", {}", special.join(", ")));
            }
            if let Some(b) = t.add_bos {
                v.push_str(&format!(", add bos {b}"));
            }
            v.push_str(if t.chat_template {
                ", chat template"
            } else {
                ", no chat template"
            });
            line("tokenizer", v);
        }
        None => line("tokenizer", "none found".into()),
    }
    if s.licence.is_empty() {
        line("licence", "none declared".into());
    }
    for d in &s.licence {
        line("licence", declared(d));
    }
    for f in &s.licence_files {
        line("licence file", format!("`{f}`"));
    }
    for d in &s.provenance {
        line("provenance", declared(d));
    }
    let _ = writeln!(o, "  dtypes:");
    for d in &s.dtypes {
        let _ = writeln!(
            o,
            "    {:<10} {:>6} tensors {:>12}",
            d.dtype,
            d.tensors,
            human_bytes(d.bytes)
        );
    }
    if !s.metadata.is_empty() {
        let _ = writeln!(o, "  metadata:");
        for (k, v) in &s.metadata {
            let _ = writeln!(o, "    {k} = {}", compact(v));
        }
    }
    let _ = writeln!(o, "  files ({} total):", human_bytes(s.total_bytes));
    for f in &s.files {
        let _ = writeln!(o, "    {:>12}  {}", human_bytes(f.size), f.path.display());
    }
    if let Some(tensors) = &s.tensors {
        let _ = writeln!(o, "  tensors:");
        for t in tensors {
            let shape = t
                .shape
                .iter()
                .map(u64::to_string)
                .collect::<Vec<_>>()
                .join(" x ");
            let _ = writeln!(
                o,
                "    {:<48} {:<8} {:<16} {:>12}",
                t.name,
                t.dtype,
                shape,
                group_digits(t.bytes)
            );
        }
    }
    o
}

fn declared(d: &crate::inspect::Declared) -> String {
    let at = match d.line {
        Some(l) => format!("`{}`:{l}", d.file),
        None => format!("`{}`", d.file),
    };
    format!("{} = {} ({} {at})", d.key, compact(&d.value), d.source)
}

/// A JSON value on one line, strings without quotes.
fn compact(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}
