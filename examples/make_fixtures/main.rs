//! `cargo run --example make_fixtures [-- --out DIR]`: regenerate the committed test fixtures.
//!
//! Writes, byte-for-byte reproducibly, the tree under `fixtures/` (or `DIR`) that the test
//! suite and the README examples run on:
//!
//! - `models/`: tiny Hugging Face model directories (llama, mistral, qwen2, and a sharded
//!   llama) with random weights, configs, tokenizer, model card and licence (`models.rs`);
//! - `text/eval.txt`: the evaluation text the tokenizer is trained on, and `text/heldout.txt`,
//!   a held-out text for scoring quantizations (`text.rs`);
//! - `hostile/` and `pickle/`: malformed and malicious files for the format readers and the
//!   scanner (written by the `hostile_*` modules, see below);
//! - `templates/`: official and hostile chat templates and tokenizers for the scanner's
//!   template and tokenizer rules (`templates.rs`).
//!
//! `tests/it/fixtures.rs` regenerates into a temporary folder and checks the committed files
//! are exactly this program's output.

use std::path::PathBuf;
use std::process::ExitCode;

mod models;
mod text;
mod tokenizer;

mod hostile_gguf;
mod hostile_pickle;
mod hostile_safetensors;
mod hostile_sentencepiece;
mod templates;

/// Write every fixture under `out`.
fn generate(out: &std::path::Path) -> std::io::Result<()> {
    models::write_all(&out.join("models"))?;
    text::write_all(&out.join("text"))?;
    for (sub, write) in [
        (
            "hostile/gguf",
            hostile_gguf::write_all as fn(&std::path::Path) -> std::io::Result<()>,
        ),
        ("hostile/safetensors", hostile_safetensors::write_all),
        ("hostile/sentencepiece", hostile_sentencepiece::write_all),
        ("pickle", hostile_pickle::write_all),
        ("templates", templates::write_all),
    ] {
        let dir = out.join(sub);
        std::fs::create_dir_all(&dir)?;
        write(&dir)?;
    }
    Ok(())
}

const USAGE: &str = "usage: cargo run --example make_fixtures [-- --out DIR]";

fn usage() -> ExitCode {
    eprintln!("{USAGE}");
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let mut out = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures");
    let mut args = std::env::args_os().skip(1);
    while let Some(arg) = args.next() {
        match arg.to_str() {
            Some("--out") => match args.next() {
                Some(dir) => out = PathBuf::from(dir),
                None => return usage(),
            },
            Some("-h" | "--help") => {
                eprintln!("{USAGE}");
                eprintln!(
                    "regenerates modelgate's test fixtures (default folder: `{}`)",
                    out.display()
                );
                return ExitCode::SUCCESS;
            }
            _ => {
                eprintln!("error: unexpected argument `{}`", arg.to_string_lossy());
                return usage();
            }
        }
    }
    match generate(&out) {
        Ok(()) => {
            eprintln!("wrote fixtures under `{}`", out.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: could not write fixtures under `{}`", out.display());
            eprintln!("caused by: {e}");
            ExitCode::from(2)
        }
    }
}
