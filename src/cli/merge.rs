//! `modelgate merge PARTS... -o OUT.gguf [--keep-split] [--json]`: check the shares written
//! by `convert --shard I/N` (sidecars, digests, plan, completeness) and assemble them into
//! one GGUF file, or with `--keep-split` only check them and leave them as a split set.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;

use crate::convert::merge::{self, MergeSummary};
use crate::inspect::human_bytes;

use super::Outcome;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The shares: a directory holding them, the first part (`NAME-00001-of-0000N.gguf`),
    /// or every part (or `.shard.json` sidecar)
    #[arg(required = true, value_name = "PARTS")]
    parts: Vec<PathBuf>,
    /// The assembled GGUF file
    #[arg(
        short,
        long,
        required_unless_present = "keep_split",
        conflicts_with = "keep_split"
    )]
    output: Option<PathBuf>,
    /// Only check the shares and leave them as a GGUF split set (llama.cpp loads it from
    /// the first part)
    #[arg(long)]
    keep_split: bool,
    /// Print the summary as JSON
    #[arg(long)]
    json: bool,
}

pub fn run(args: Args) -> anyhow::Result<Outcome> {
    let summary = merge::merge(&args.parts, args.output.as_deref()).map_err(|e| {
        super::hint(
            e,
            "every share must come from `convert --shard I/N` with the same source and options, unchanged since",
        )
    })?;
    let mut out = std::io::stdout().lock();
    if args.json {
        serde_json::to_writer_pretty(&mut out, &summary).context("cannot write JSON to stdout")?;
        writeln!(out)?;
    } else {
        out.write_all(render_text(&summary).as_bytes())?;
    }
    Ok(Outcome::Pass)
}

fn render_text(s: &MergeSummary) -> String {
    use std::fmt::Write as _;
    let mut o = String::new();
    let _ = writeln!(
        o,
        "{} shares checked ({} tensors, plan sha256 {})",
        s.shares, s.tensors, s.plan_sha256
    );
    for p in &s.parts {
        let _ = writeln!(
            o,
            "  {}/{} `{}` {} tensors {} sha256 {}",
            p.share,
            s.shares,
            p.path.display(),
            p.tensors,
            human_bytes(p.bytes),
            p.sha256
        );
    }
    match (&s.output, &s.sha256) {
        (Some(out), Some(d)) => {
            let _ = writeln!(
                o,
                "merged into `{}` ({}, sha256 {d})",
                out.display(),
                human_bytes(s.bytes_out)
            );
        }
        _ => {
            let _ = writeln!(
                o,
                "kept as a split set ({}); load it from `{}`",
                human_bytes(s.bytes_out),
                s.parts
                    .first()
                    .map(|p| p.path.display().to_string())
                    .unwrap_or_default()
            );
        }
    }
    o
}
