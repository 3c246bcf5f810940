//! `modelgate hash PATH`: the per-file (or per-shard) sha256 manifest of a model and its
//! root digest, in the OpenSSF model signing layout that `sign` signs.

use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use serde_json::json;

use crate::digest::GIT_PATHS;
use crate::sign::{hash_model, HashOptions, Manifest, RelPath, Serialization};

use super::Outcome;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// A model directory or a single model file
    path: PathBuf,
    #[command(flatten)]
    hashing: HashArgs,
    /// Print the manifest as JSON (the model signing predicate plus the root digest)
    #[arg(long)]
    json: bool,
    /// Print no timing line on stderr
    #[arg(long, short)]
    quiet: bool,
}

/// How a model is hashed; shared by `hash` and `sign`.
#[derive(Debug, Clone, clap::Args)]
pub struct HashArgs {
    /// Hash files in shards of this many bytes (serialization `shards`; 1000000000 when
    /// given without a value), which hashes one big file on several cores. Default: whole
    /// files, the only serialization `model_signing verify key` re-hashes with
    #[arg(long, value_name = "BYTES", num_args = 0..=1, default_missing_value = "1000000000")]
    shard_size: Option<u64>,
    /// Leave this path (relative to the model directory) out; repeatable
    #[arg(long = "ignore-paths", value_name = "PATH")]
    ignore_paths: Vec<String>,
    /// Hash `.git`, `.github`, `.gitattributes` and `.gitignore` too
    #[arg(long)]
    no_ignore_git_paths: bool,
    /// Hash the targets of symbolic links to files instead of refusing them
    #[arg(long)]
    allow_symlinks: bool,
    /// Hashing threads (default: one per core)
    #[arg(long, value_name = "N")]
    threads: Option<usize>,
}

impl HashArgs {
    pub fn options(&self) -> anyhow::Result<HashOptions> {
        let serialization = match self.shard_size {
            None => Serialization::Files,
            Some(0) => anyhow::bail!("`--shard-size` must be at least 1 byte"),
            Some(shard_size) => Serialization::Shards { shard_size },
        };
        let mut opts = HashOptions::new(serialization);
        if self.no_ignore_git_paths {
            opts.ignore.retain(|p| !GIT_PATHS.contains(&p.as_str()));
        }
        for p in &self.ignore_paths {
            let rel = RelPath::parse(p)
                .filter(|r| r.as_str() != ".")
                .with_context(|| {
                    format!("`--ignore-paths {p}` must be a path inside the model directory")
                })?;
            opts.ignore(rel);
        }
        opts.allow_symlinks = self.allow_symlinks;
        opts.threads = self.threads;
        Ok(opts)
    }
}

/// Bytes per second in decimal gigabytes.
pub fn gbps(bytes: u64, secs: f64) -> f64 {
    if secs > 0.0 {
        bytes as f64 / secs / 1e9
    } else {
        0.0
    }
}

/// The manifest as JSON: what `hash --json` prints.
pub fn manifest_json(m: &Manifest) -> serde_json::Value {
    let mut ser = json!({
        "method": m.serialization.method(),
        "hash_type": "sha256",
        "allow_symlinks": m.allow_symlinks,
        "ignore_paths": m.ignore_paths,
    });
    if let Serialization::Shards { shard_size } = m.serialization {
        ser["shard_size"] = json!(shard_size);
    }
    let algorithm = m.serialization.algorithm();
    json!({
        "model_name": m.model_name,
        "root_digest": { "sha256": m.root_digest().to_hex() },
        "serialization": ser,
        "files": m.files,
        "bytes": m.bytes,
        "resources": m.resources.iter().map(|r| json!({
            "name": r.name(),
            "algorithm": algorithm,
            "digest": r.digest.to_hex(),
        })).collect::<Vec<_>>(),
    })
}

pub fn run(args: Args) -> anyhow::Result<Outcome> {
    let opts = args.hashing.options()?;
    let start = Instant::now();
    let manifest = hash_model(&args.path, &opts, None)?;
    let secs = start.elapsed().as_secs_f64();
    let mut out = std::io::stdout().lock();
    if args.json {
        serde_json::to_writer_pretty(&mut out, &manifest_json(&manifest))?;
        writeln!(out)?;
    } else {
        for r in &manifest.resources {
            writeln!(out, "{}  {}", r.digest, r.name())?;
        }
        writeln!(
            out,
            "sha256:{}  root of `{}` ({} resources, serialization {})",
            manifest.root_digest(),
            manifest.model_name,
            manifest.resources.len(),
            manifest.serialization
        )?;
    }
    if !args.quiet {
        eprintln!(
            "hashed {} files, {} bytes in {:.3} s ({:.2} GB/s)",
            manifest.files,
            manifest.bytes,
            secs,
            gbps(manifest.bytes, secs)
        );
    }
    Ok(Outcome::Pass)
}
