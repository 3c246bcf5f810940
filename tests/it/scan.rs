//! The scan gate and the PyTorch reader on the hostile pickle corpus (`fixtures/pickle/`,
//! written by `examples/make_fixtures/hostile_pickle.rs`), the chat-template and tokenizer
//! corpus (`fixtures/templates/`, written by `examples/make_fixtures/templates.rs`) and on
//! model directories built in temporary folders.

#[path = "../../examples/make_fixtures/hostile_pickle.rs"]
mod hostile_pickle;
#[path = "../../examples/make_fixtures/templates.rs"]
mod templates;
// `templates` builds its tokenizers with the generator's shared BPE model object, which
// `fixtures` already compiles into this binary.
use crate::fixtures::tokenizer;

use std::fs;
use std::path::{Path, PathBuf};

use modelgate::finding::{Finding, Severity, Verdict};
use modelgate::formats::{pytorch, Checkpoint, DType, FormatError, WeightFormat};
use modelgate::scan::scan;

use crate::support::{fixture, modelgate, repo};

fn pickle_fixture(name: &str) -> PathBuf {
    fixture("pickle").join(name)
}

/// Findings that are not notes.
fn issues(path: &Path) -> Vec<Finding> {
    scan(path)
        .expect("scan runs")
        .into_iter()
        .filter(|f| f.severity != Severity::Note)
        .collect()
}

fn has(findings: &[Finding], rule: &str, severity: Severity, key: &str) -> bool {
    findings.iter().any(|f| {
        f.rule == rule
            && f.severity == severity
            && f.evidence.iter().any(|e| e.key.as_deref() == Some(key))
    })
}

/// The committed corpus is exactly what the committed script writes. Set
/// `MODELGATE_WRITE_FIXTURES=1` to rewrite it after changing the script.
#[test]
fn corpus_matches_its_generator() {
    let dir = fixture("pickle");
    if std::env::var_os("MODELGATE_WRITE_FIXTURES").is_some() {
        hostile_pickle::write_all(&dir).unwrap();
    }
    let tmp = tempfile::tempdir().unwrap();
    hostile_pickle::write_all(tmp.path()).unwrap();
    let mut names: Vec<_> = fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    names.sort();
    let mut committed: Vec<_> = fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    committed.sort();
    assert_eq!(
        names, committed,
        "fixtures/pickle holds other files than the generator writes"
    );
    for n in names {
        let a = fs::read(tmp.path().join(&n)).unwrap();
        let b = fs::read(dir.join(&n)).unwrap();
        assert!(
            a == b,
            "fixtures/pickle/{} differs from the generator's output",
            n.to_string_lossy()
        );
    }
}

const DANGEROUS: &str = "scan/pickle-dangerous-global";

/// Every hostile file, the finding that must flag it, and the global it names.
const HOSTILE: &[(&str, &str, Severity, &str)] = &[
    ("os_system.pkl", DANGEROUS, Severity::Error, "os.system"),
    (
        "posix_system.pkl",
        DANGEROUS,
        Severity::Error,
        "posix.system",
    ),
    (
        "subprocess_check_output.pkl",
        DANGEROUS,
        Severity::Error,
        "subprocess.check_output",
    ),
    (
        "builtins_eval.pkl",
        DANGEROUS,
        Severity::Error,
        "builtins.eval",
    ),
    (
        "builtins_exec.pkl",
        DANGEROUS,
        Severity::Error,
        "builtins.exec",
    ),
    (
        "builtin_import_inst.pkl",
        DANGEROUS,
        Severity::Error,
        "__builtin__.__import__",
    ),
    (
        "getattr_chain.pkl",
        DANGEROUS,
        Severity::Error,
        "builtins.getattr",
    ),
    (
        "getattr_chain.pkl",
        DANGEROUS,
        Severity::Error,
        "builtins.__import__",
    ),
    (
        "runpy_run_code.pkl",
        DANGEROUS,
        Severity::Error,
        "runpy._run_code",
    ),
    (
        "importlib_obj.pkl",
        DANGEROUS,
        Severity::Error,
        "importlib.import_module",
    ),
    (
        "marshal_loads.pkl",
        DANGEROUS,
        Severity::Error,
        "marshal.loads",
    ),
    (
        "marshal_loads.pkl",
        DANGEROUS,
        Severity::Error,
        "types.FunctionType",
    ),
    (
        "numpy_runstring.pkl",
        DANGEROUS,
        Severity::Error,
        "numpy.testing._private.utils.runstring",
    ),
    (
        "torch_collect_env.pkl",
        DANGEROUS,
        Severity::Error,
        "torch.utils.collect_env.run",
    ),
    (
        "multiprocessing_spawnv.pkl",
        DANGEROUS,
        Severity::Error,
        "multiprocessing.util.spawnv_passfds",
    ),
    (
        "pandas_read_csv.pkl",
        DANGEROUS,
        Severity::Error,
        "pandas.read_csv",
    ),
    (
        "webbrowser_open.pkl",
        DANGEROUS,
        Severity::Error,
        "webbrowser.open",
    ),
    (
        "socket_connect.pkl",
        DANGEROUS,
        Severity::Error,
        "socket.create_connection",
    ),
    (
        "operator_attrgetter.pkl",
        DANGEROUS,
        Severity::Error,
        "operator.attrgetter",
    ),
    (
        "stack_global_memo.pkl",
        DANGEROUS,
        Severity::Error,
        "os.system",
    ),
    (
        "stack_global_text_memo.pkl",
        DANGEROUS,
        Severity::Error,
        "os.system",
    ),
    (
        "dunder_attribute_path.pkl",
        DANGEROUS,
        Severity::Error,
        "torch._utils._rebuild_tensor_v2.__globals__",
    ),
    // unknown globals the pickle calls (REDUCE, NEWOBJ) are errors...
    (
        "dynamic_global.pkl",
        "scan/pickle-unknown-global",
        Severity::Error,
        "builtins.str",
    ),
    (
        "unknown_global.pkl",
        "scan/pickle-unknown-global",
        Severity::Error,
        "transformers.training_args.TrainingArguments",
    ),
    // ...one only referenced stays a warning
    (
        "unknown_global_referenced.pkl",
        "scan/pickle-unknown-global",
        Severity::Warning,
        "transformers.training_args.TrainingArguments",
    ),
    (
        "torch_injected.pt",
        DANGEROUS,
        Severity::Error,
        "builtins.exec",
    ),
    ("nested_pickle.pt", DANGEROUS, Severity::Error, "os.system"),
    (
        "legacy_os_system.pt",
        DANGEROUS,
        Severity::Error,
        "os.system",
    ),
];

#[test]
fn every_hostile_file_is_flagged_with_its_global() {
    for (file, rule, severity, key) in HOSTILE {
        let found = issues(&pickle_fixture(file));
        assert!(
            has(&found, rule, *severity, key),
            "{file}: expected {severity} {rule} on `{key}`, got {found:#?}"
        );
        // every fixture is a well-formed pickle: CPython's unpickler would reach STOP
        assert!(
            !found.iter().any(|f| f.rule == "scan/pickle-malformed"),
            "{file}: {found:#?}"
        );
    }
}

#[test]
fn hostile_verdicts() {
    for (file, _, _, _) in HOSTILE {
        let found = scan(&pickle_fixture(file)).unwrap();
        let expect = if *file == "unknown_global_referenced.pkl" {
            Verdict::Pass
        } else {
            Verdict::Fail
        };
        assert_eq!(Verdict::from_findings(&found), expect, "{file}: {found:#?}");
    }
    // the dynamic import itself is an error of its own rule
    let found = issues(&pickle_fixture("dynamic_global.pkl"));
    assert!(found
        .iter()
        .any(|f| f.rule == "scan/pickle-dynamic-global" && f.severity == Severity::Error));
    // an unknown global the pickle instantiates fails, and names how it is used
    let found = issues(&pickle_fixture("unknown_global.pkl"));
    assert_eq!(found.len(), 1, "{found:#?}");
    assert_eq!(found[0].severity, Severity::Error);
    assert!(
        found[0].message.contains("instantiated by NEWOBJ"),
        "{}",
        found[0].message
    );
    // the same global only referenced warns without failing
    let found = issues(&pickle_fixture("unknown_global_referenced.pkl"));
    assert_eq!(found.len(), 1, "{found:#?}");
    assert_eq!(found[0].severity, Severity::Warning);
    assert!(!found[0].message.contains("NEWOBJ"), "{}", found[0].message);
}

#[test]
fn stack_global_with_memoised_names_resolves_at_its_offset() {
    let found = issues(&pickle_fixture("stack_global_memo.pkl"));
    let f = found
        .iter()
        .find(|f| f.evidence[0].key.as_deref() == Some("os.system"))
        .expect("os.system found");
    assert!(f.message.contains("STACK_GLOBAL at byte"), "{}", f.message);
    assert!(f.message.contains("called by REDUCE"), "{}", f.message);
    let bytes = fs::read(pickle_fixture("stack_global_memo.pkl")).unwrap();
    let offset = f.evidence[0].offset.expect("plain file has offsets") as usize;
    assert_eq!(
        bytes[offset], 0x93,
        "offset points at the STACK_GLOBAL opcode"
    );
    // the decoy OrderedDict before it is allowlisted and not reported
    assert!(!found.iter().any(|f| f.message.contains("OrderedDict")));
}

#[test]
fn injected_payload_has_a_file_offset_inside_the_stored_entry() {
    let found = issues(&pickle_fixture("torch_injected.pt"));
    let f = found
        .iter()
        .find(|f| f.evidence[0].key.as_deref() == Some("builtins.exec"))
        .unwrap();
    assert!(f.message.contains("of `archive/data.pkl`"), "{}", f.message);
    let bytes = fs::read(pickle_fixture("torch_injected.pt")).unwrap();
    let off = f.evidence[0].offset.unwrap() as usize;
    assert!(bytes[off..].starts_with(b"cbuiltins\nexec\n"));
}

#[test]
fn nested_pickle_in_a_zip_is_scanned() {
    let found = issues(&pickle_fixture("nested_pickle.pt"));
    let f = found.iter().find(|f| f.rule == DANGEROUS).unwrap();
    assert!(
        f.message.contains("`archive/extra/payload.pkl`"),
        "{}",
        f.message
    );
    // deflated: no file offset exists for it
    assert_eq!(f.evidence[0].offset, None);
    // the clean data.pkl beside it raises nothing
    assert_eq!(
        found
            .iter()
            .filter(|f| f.rule.starts_with("scan/pickle"))
            .count(),
        1
    );
}

/// The clean checkpoint's tensors, as the generator writes them.
fn expected_clean() -> Vec<(&'static str, DType, Vec<u64>, Vec<f32>)> {
    let embed: Vec<f32> = (0..12).map(|i| i as f32 * 0.25 - 1.0).collect();
    vec![
        ("model.embed.weight", DType::F32, vec![3, 4], embed.clone()),
        (
            "model.norm.weight",
            DType::F16,
            vec![4],
            vec![1.0, 0.5, -2.0, 1.5],
        ),
        (
            "lm_head.weight",
            DType::F32,
            vec![2, 4],
            embed[4..].to_vec(),
        ),
        ("model.scale", DType::F32, vec![], vec![3.0]),
    ]
}

fn decode(dtype: DType, bytes: &[u8]) -> Vec<f32> {
    match dtype {
        DType::F32 => bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect(),
        DType::F16 => bytes
            .chunks_exact(2)
            .map(|c| half::f16::from_le_bytes(c.try_into().unwrap()).to_f32())
            .collect(),
        other => panic!("unexpected dtype {other}"),
    }
}

#[test]
fn clean_checkpoints_pass_and_read_back_exactly() {
    for file in ["clean.pt", "clean_legacy.pt"] {
        let path = pickle_fixture(file);
        let found = scan(&path).unwrap();
        assert_eq!(
            Verdict::from_findings(&found),
            Verdict::Pass,
            "{file}: {found:#?}"
        );
        assert!(
            found
                .iter()
                .all(|f| f.rule == "scan/pickle-format" && f.severity == Severity::Note),
            "{file}: {found:#?}"
        );
        let ckpt = Checkpoint::open(&path).unwrap();
        let w = &ckpt.weights;
        assert_eq!(w.format, WeightFormat::PyTorch);
        let expect = expected_clean();
        assert_eq!(w.tensors.len(), expect.len(), "{file}");
        for (t, (name, dtype, shape, values)) in w.tensors.iter().zip(&expect) {
            assert_eq!(t.name.as_str(), *name, "{file}");
            assert_eq!(t.dtype, *dtype, "{file} {name}");
            assert_eq!(&t.shape, shape, "{file} {name}");
            let got = decode(t.dtype, w.tensor_data(t).unwrap());
            assert_eq!(&got, values, "{file} {name}");
        }
    }
}

#[test]
fn zip_storages_are_read_in_place_at_torch_alignment() {
    let w = pytorch::open(&pickle_fixture("clean.pt")).unwrap();
    let embed = w.tensor("model.embed.weight").unwrap();
    assert_eq!(embed.offset % 64, 0, "stored entries are 64-byte aligned");
    // the tied head views the same storage, 4 elements in
    assert_eq!(
        w.tensor("lm_head.weight").unwrap().offset,
        embed.offset + 16
    );
}

#[test]
fn clean_checkpoint_converts_to_safetensors_with_the_same_values() {
    let w = pytorch::open(&pickle_fixture("clean.pt")).unwrap();
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = w
        .tensors
        .iter()
        .map(|t| {
            let dtype = match t.dtype {
                DType::F32 => safetensors::Dtype::F32,
                DType::F16 => safetensors::Dtype::F16,
                other => panic!("unexpected dtype {other}"),
            };
            let shape = t.shape.iter().map(|&d| d as usize).collect();
            let view =
                safetensors::tensor::TensorView::new(dtype, shape, w.tensor_data(t).unwrap())
                    .unwrap();
            (t.name.to_string(), view)
        })
        .collect();
    let bytes = safetensors::serialize(views, None).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    for (name, dtype, shape, values) in expected_clean() {
        let t = st.tensor(name).unwrap();
        let shape: Vec<usize> = shape.iter().map(|&d| d as usize).collect();
        assert_eq!(t.shape(), shape.as_slice());
        assert_eq!(decode(dtype, t.data()), values, "{name}");
    }
}

#[test]
fn open_refuses_non_allowlisted_globals_naming_global_and_file() {
    for (file, global) in [
        ("torch_injected.pt", "builtins.exec"),
        ("legacy_os_system.pt", "os.system"),
    ] {
        let path = pickle_fixture(file);
        let e = pytorch::open(&path).unwrap_err();
        assert!(matches!(e, FormatError::Malformed { .. }), "{e}");
        let msg = e.to_string();
        assert!(msg.contains(&format!("`{global}`")), "{msg}");
        assert!(msg.contains(file), "{msg}");
        assert!(msg.contains("refusing to load"), "{msg}");
    }
    // plain pickles are not checkpoints torch.save wrote
    let e = pytorch::open(&pickle_fixture("posix_system.pkl")).unwrap_err();
    assert!(matches!(e, FormatError::Unsupported { .. }), "{e}");
}

#[test]
fn nan_inf_and_zero_tensors_are_found() {
    let found = issues(&pickle_fixture("nan_weights.pt"));
    assert!(
        has(&found, "scan/nan-inf", Severity::Error, "bad.weight"),
        "{found:#?}"
    );
    assert!(
        has(
            &found,
            "scan/all-zero-tensor",
            Severity::Warning,
            "zero.bias"
        ),
        "{found:#?}"
    );
    assert_eq!(found.len(), 2, "{found:#?}");
    let nan = found.iter().find(|f| f.rule == "scan/nan-inf").unwrap();
    assert!(
        nan.message
            .contains("1 NaN and 1 infinite values, the first at element 1"),
        "{}",
        nan.message
    );
    let w = pytorch::open(&pickle_fixture("nan_weights.pt")).unwrap();
    assert_eq!(
        nan.evidence[0].offset,
        Some(w.tensor("bad.weight").unwrap().offset + 4)
    );
}

#[cfg(unix)]
#[test]
fn model_directory_code_executables_archives_and_symlinks() {
    use std::os::unix::fs::symlink;
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    fs::copy(pickle_fixture("clean.pt"), d.join("pytorch_model.bin")).unwrap();
    fs::write(
        d.join("config.json"),
        "{\n  \"model_type\": \"custom\",\n  \"auto_map\": {\"AutoModel\": \"modeling_custom.CustomModel\"}\n}\n",
    )
    .unwrap();
    fs::write(d.join("modeling_custom.py"), "import os\n").unwrap();
    fs::write(d.join("helper"), b"\x7fELF\x02\x01\x01\x00").unwrap();
    fs::write(d.join("extra.tar.gz"), b"\x1f\x8b\x08\x00").unwrap();
    fs::create_dir(d.join("sub")).unwrap();
    fs::copy(pickle_fixture("os_system.pkl"), d.join("sub/optimizer.pt")).unwrap();
    symlink("/etc/passwd", d.join("leak.txt")).unwrap();
    symlink("../../outside", d.join("sub/dangling")).unwrap();
    symlink("pytorch_model.bin", d.join("alias.bin")).unwrap();
    fs::write(d.join("tokenizer.json"), "{}").unwrap();

    let found = scan(d).unwrap();
    let at = |rule: &str, sev: Severity, file: &str| {
        found.iter().any(|f| {
            f.rule == rule
                && f.severity == sev
                && f.evidence.iter().any(|e| e.path == Path::new(file))
        })
    };
    assert!(
        at("scan/remote-code", Severity::Error, "config.json"),
        "{found:#?}"
    );
    assert!(at(
        "scan/remote-code",
        Severity::Error,
        "modeling_custom.py"
    ));
    assert!(at("scan/unexpected-file", Severity::Error, "helper"));
    assert!(at(
        "scan/unexpected-file",
        Severity::Warning,
        "extra.tar.gz"
    ));
    assert!(at(
        "scan/pickle-dangerous-global",
        Severity::Error,
        "sub/optimizer.pt"
    ));
    assert!(at("scan/symlink-escape", Severity::Error, "leak.txt"));
    assert!(at("scan/symlink-escape", Severity::Error, "sub/dangling"));
    // the in-directory alias is scanned as the checkpoint it points to
    assert!(at("scan/pickle-format", Severity::Note, "alias.bin"));
    assert!(!found.iter().any(|f| f
        .evidence
        .iter()
        .any(|e| e.path == Path::new("tokenizer.json"))));
    let auto = found
        .iter()
        .find(|f| f.rule == "scan/remote-code" && f.evidence[0].path == Path::new("config.json"))
        .unwrap();
    assert_eq!(auto.evidence[0].line, Some(3));
    assert_eq!(auto.evidence[0].key.as_deref(), Some("auto_map"));
    assert!(!found
        .iter()
        .any(|f| f.severity == Severity::Error
            && f.evidence[0].path == Path::new("pytorch_model.bin")));
}

#[test]
fn cli_exit_codes_and_sarif_location() {
    let rel = "fixtures/pickle/os_system.pkl";
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_modelgate"))
        .current_dir(repo())
        .args(["scan", rel, "--format", "sarif"])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let result = &v["runs"][0]["results"][0];
    assert_eq!(result["ruleId"], "scan/pickle-dangerous-global");
    assert_eq!(result["level"], "error");
    assert_eq!(
        result["locations"][0]["physicalLocation"]["artifactLocation"]["uri"],
        rel
    );

    let clean = pickle_fixture("clean.pt");
    let out = modelgate(&["scan", clean.to_str().unwrap(), "--format", "json"]);
    assert_eq!(out.status.code(), Some(0));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["verdict"], "pass");
    assert_eq!(v["gate"], "scan");

    let out = modelgate(&["scan", "/nonexistent/model"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).starts_with("error: cannot read `/nonexistent/model`")
    );
}

#[test]
fn cli_text_report() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_modelgate"))
        .current_dir(repo())
        .args(["scan", "fixtures/pickle/getattr_chain.pkl"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    insta::assert_snapshot!(String::from_utf8_lossy(&out.stdout));
}

/// CPython's own pickler as an independent oracle: a state dict pickled by `pickle` with a
/// stand-in `torch` package (the same `__reduce_ex__` and `persistent_id` torch uses),
/// zipped by `zipfile` without alignment, reads back with the right names, shapes and values.
#[test]
fn checkpoint_pickled_by_cpython_reads_back() {
    const SCRIPT: &str = r#"
import sys, io, zipfile, pickle, struct, collections, json, os
root = sys.argv[1]
os.makedirs(os.path.join(root, "torch"))
open(os.path.join(root, "torch", "__init__.py"), "w").write("class FloatStorage: pass\nclass HalfStorage: pass\n")
open(os.path.join(root, "torch", "_utils.py"), "w").write("def _rebuild_tensor_v2(*a): return a\n")
sys.path.insert(0, root)
import torch, torch._utils
class Storage:
    def __init__(s, key, cls, numel): s.key, s.cls, s.numel = key, cls, numel
class Tensor:
    def __init__(s, st, off, shape): s.st, s.off, s.shape = st, off, shape
    def __reduce_ex__(s, proto):
        stride, acc = [], 1
        for d in reversed(s.shape):
            stride.insert(0, acc); acc *= d
        return (torch._utils._rebuild_tensor_v2, (s.st, s.off, tuple(s.shape), tuple(stride), False, collections.OrderedDict()))
class P(pickle.Pickler):
    def persistent_id(s, o):
        return ('storage', o.cls, o.key, 'cpu', o.numel) if isinstance(o, Storage) else None
sd, storages, expect = collections.OrderedDict(), {}, {}
for l in range(3):
    for name, shape, cls in [(f"layers.{l}.w", (5, 3), torch.FloatStorage), (f"layers.{l}.b", (5,), torch.HalfStorage)]:
        n = 1
        for d in shape: n *= d
        st = Storage(str(len(storages)), cls, n)
        vals = [l + i / 8 for i in range(n)]
        fmt = "<%d%s" % (n, "f" if cls is torch.FloatStorage else "e")
        storages[st.key] = struct.pack(fmt, *vals)
        sd[name] = Tensor(st, 0, list(shape))
        expect[name] = [list(shape), vals]
# a tied weight: a second tensor on storage 0, one row in
sd["tied"] = Tensor(sd["layers.0.w"].st, 3, [4, 3])
expect["tied"] = [[4, 3], expect["layers.0.w"][1][3:]]
buf = io.BytesIO()
P(buf, protocol=2).dump(sd)
with zipfile.ZipFile(os.path.join(root, "m.pt"), "w", zipfile.ZIP_STORED) as z:
    z.writestr("m/data.pkl", buf.getvalue())
    z.writestr("m/byteorder", "little")
    for k, v in storages.items():
        z.writestr(f"m/data/{k}", v)
    z.writestr("m/version", "3\n")
json.dump(expect, open(os.path.join(root, "expect.json"), "w"))
"#;
    let tmp = tempfile::tempdir().unwrap();
    let status = crate::support::oracle_python()
        .arg("-c")
        .arg(SCRIPT)
        .arg(tmp.path())
        .status()
        .expect("python3 runs");
    assert!(status.success());
    let path = tmp.path().join("m.pt");
    let found = scan(&path).unwrap();
    assert_eq!(Verdict::from_findings(&found), Verdict::Pass, "{found:#?}");
    let w = pytorch::open(&path).unwrap();
    let expect: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&fs::read(tmp.path().join("expect.json")).unwrap()).unwrap();
    assert_eq!(w.tensors.len(), expect.len());
    for t in &w.tensors {
        let e = &expect[t.name.as_str()];
        let shape: Vec<u64> = serde_json::from_value(e[0].clone()).unwrap();
        let vals: Vec<f32> = serde_json::from_value(e[1].clone()).unwrap();
        assert_eq!(t.shape, shape, "{}", t.name);
        assert_eq!(
            decode(t.dtype, w.tensor_data(t).unwrap()),
            vals,
            "{}",
            t.name
        );
    }
}

/// A second pickle appended after a clean one runs on the next `pickle.load`; trailing
/// bytes that are not a pickle are reported as such.
#[test]
fn appended_pickles_and_trailing_bytes() {
    let tmp = tempfile::tempdir().unwrap();
    let appended = tmp.path().join("appended.pkl");
    fs::write(&appended, b"\x80\x02K\x01.cos\nsystem\n(S'echo pwned'\ntR.").unwrap();
    let found = issues(&appended);
    let f = found
        .iter()
        .find(|f| f.rule == DANGEROUS)
        .expect("appended payload found");
    assert_eq!(f.evidence[0].offset, Some(5));
    let junk = tmp.path().join("junk.pkl");
    fs::write(&junk, b"\x80\x02K\x01.\xff\xff").unwrap();
    let found = issues(&junk);
    assert_eq!(found.len(), 1, "{found:#?}");
    assert_eq!(found[0].rule, "scan/pickle-malformed");
    assert_eq!(found[0].severity, Severity::Warning);
}

/// torch.save stores storages uncompressed; a deflated storage cannot be memory-mapped and
/// is refused as unsupported, naming the entry.
#[test]
fn compressed_storage_is_unsupported() {
    use std::io::{Read, Write};
    let src = fs::read(pickle_fixture("clean.pt")).unwrap();
    let mut zin = zip::ZipArchive::new(std::io::Cursor::new(src)).unwrap();
    let mut zw = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    for i in 0..zin.len() {
        let mut f = zin.by_index(i).unwrap();
        let name = f.name().to_owned();
        let mut data = Vec::new();
        f.read_to_end(&mut data).unwrap();
        let method = if name == "archive/data/0" {
            zip::CompressionMethod::Deflated
        } else {
            zip::CompressionMethod::Stored
        };
        let opts = zip::write::SimpleFileOptions::default().compression_method(method);
        zw.start_file(name, opts).unwrap();
        zw.write_all(&data).unwrap();
    }
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("deflated.pt");
    fs::write(&path, zw.finish().unwrap().into_inner()).unwrap();
    let e = pytorch::open(&path).unwrap_err();
    assert!(matches!(e, FormatError::Unsupported { .. }), "{e}");
    assert!(
        e.to_string()
            .contains("compressed storage entry `archive/data/0`"),
        "{e}"
    );
    // the scan passes the pickle and says the values were not checked
    let found = scan(&path).unwrap();
    assert!(
        found
            .iter()
            .any(|f| f.rule == "scan/structure" && f.severity == Severity::Note),
        "{found:#?}"
    );
}

/// A Hugging Face cache snapshot is all symlinks into the repository's `blobs/`: they stay
/// inside the repository, and the files they point to are scanned under the link names.
#[cfg(unix)]
#[test]
fn hugging_face_cache_snapshot_links_are_followed() {
    use std::os::unix::fs::symlink;
    let tmp = tempfile::tempdir().unwrap();
    let repo = tmp.path().join("models--org--tiny");
    fs::create_dir_all(repo.join("blobs")).unwrap();
    let snap = repo.join("snapshots/0123abcd");
    fs::create_dir_all(&snap).unwrap();
    fs::copy(pickle_fixture("torch_injected.pt"), repo.join("blobs/aa11")).unwrap();
    fs::write(repo.join("blobs/bb22"), "{\"model_type\": \"llama\"}").unwrap();
    symlink("../../blobs/aa11", snap.join("pytorch_model.bin")).unwrap();
    symlink("../../blobs/bb22", snap.join("config.json")).unwrap();
    let found = issues(&snap);
    assert!(
        !found.iter().any(|f| f.rule == "scan/symlink-escape"),
        "{found:#?}"
    );
    assert!(found.iter().any(|f| f.rule == DANGEROUS
        && f.evidence[0].path == Path::new("pytorch_model.bin")
        && f.evidence[0].key.as_deref() == Some("builtins.exec")));
}

// ---- chat templates and tokenizers ----

fn template_fixture(rel: &str) -> PathBuf {
    fixture("templates").join(rel)
}

/// Every file under `root`, as sorted relative paths.
fn tree(root: &Path) -> Vec<PathBuf> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<PathBuf>) {
        for e in fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(root, &p, out);
            } else {
                out.push(p.strip_prefix(root).unwrap().to_owned());
            }
        }
    }
    let mut out = Vec::new();
    walk(root, root, &mut out);
    out.sort();
    out
}

/// The committed template corpus is exactly what the generator writes
/// (`MODELGATE_WRITE_FIXTURES=1` rewrites it).
#[test]
fn template_corpus_matches_its_generator() {
    let dir = fixture("templates");
    if std::env::var_os("MODELGATE_WRITE_FIXTURES").is_some() {
        templates::write_all(&dir).unwrap();
    }
    let tmp = tempfile::tempdir().unwrap();
    templates::write_all(tmp.path()).unwrap();
    let names = tree(tmp.path());
    assert_eq!(names, tree(&dir), "run `cargo run --example make_fixtures`");
    for n in names {
        assert!(
            fs::read(tmp.path().join(&n)).unwrap() == fs::read(dir.join(&n)).unwrap(),
            "`fixtures/templates/{}` differs from the generator's output",
            n.display()
        );
    }
}

/// (fixture, rule, severity, evidence key): every hostile file and the rule it must raise.
const HOSTILE_TEMPLATES: &[(&str, &str, Severity, &str)] = &[
    (
        "hostile/ssti-jfrog.gguf",
        "scan/template-ssti",
        Severity::Error,
        "tokenizer.chat_template",
    ),
    (
        "hostile/ssti-jfrog",
        "scan/template-ssti",
        Severity::Error,
        "chat_template",
    ),
    (
        "hostile/ssti-lipsum-concat",
        "scan/template-ssti",
        Severity::Error,
        "chat_template",
    ),
    (
        "hostile/ssti-cycler-format.gguf",
        "scan/template-ssti",
        Severity::Error,
        "tokenizer.chat_template",
    ),
    (
        "hostile/ssti-joiner-join",
        "scan/template-ssti",
        Severity::Error,
        "chat_template",
    ),
    (
        "hostile/ssti-namespace-attr.gguf",
        "scan/template-ssti",
        Severity::Error,
        "tokenizer.chat_template",
    ),
    (
        "hostile/ssti-tool-use.gguf",
        "scan/template-ssti",
        Severity::Error,
        "tokenizer.chat_template.tool_use",
    ),
    (
        "hostile/ssti-config-list",
        "scan/template-ssti",
        Severity::Error,
        "chat_template[tool_use]",
    ),
    (
        "hostile/ssti-padded",
        "scan/template-ssti",
        Severity::Error,
        "chat_template.jinja",
    ),
    (
        "hostile/ssti-padded",
        "scan/template-oversize",
        Severity::Warning,
        "chat_template.jinja",
    ),
    (
        "hostile/backdoor-trigger.gguf",
        "scan/template-injection",
        Severity::Error,
        "tokenizer.chat_template",
    ),
    (
        "hostile/backdoor-trigger",
        "scan/template-injection",
        Severity::Error,
        "chat_template.jinja",
    ),
    (
        "hostile/backdoor-tools",
        "scan/template-injection",
        Severity::Error,
        "chat_template",
    ),
    (
        "hostile/messages-rewrite",
        "scan/template-injection",
        Severity::Error,
        "chat_template.jinja",
    ),
    (
        "hostile/messages-reverse.gguf",
        "scan/template-injection",
        Severity::Error,
        "tokenizer.chat_template",
    ),
    (
        "hostile/unparseable.gguf",
        "scan/template-unparseable",
        Severity::Error,
        "tokenizer.chat_template",
    ),
    (
        "hostile/unparseable",
        "scan/template-unparseable",
        Severity::Error,
        "chat_template.jinja",
    ),
    (
        "hostile/oversize.gguf",
        "scan/template-oversize",
        Severity::Warning,
        "tokenizer.chat_template",
    ),
    (
        "hostile/oversize",
        "scan/template-oversize",
        Severity::Warning,
        "chat_template",
    ),
    (
        "hostile/regex-catastrophic.gguf",
        "scan/tokenizer-regex",
        Severity::Error,
        "tokenizer.huggingface.json:pre_tokenizer.pretokenizers[0]",
    ),
    (
        "hostile/duplicate-id.gguf",
        "scan/tokenizer-duplicate",
        Severity::Error,
        "tokenizer.huggingface.json:model.vocab",
    ),
    (
        "hostile/normalizer-replace.gguf",
        "scan/tokenizer-normalizer",
        Severity::Warning,
        "tokenizer.huggingface.json:normalizer.normalizers[1]",
    ),
    (
        "hostile/regex-catastrophic",
        "scan/tokenizer-regex",
        Severity::Error,
        "pre_tokenizer.pretokenizers[0]",
    ),
    (
        "hostile/duplicate-id",
        "scan/tokenizer-duplicate",
        Severity::Error,
        "model.vocab",
    ),
    (
        "hostile/added-token-zero-width",
        "scan/tokenizer-added-token",
        Severity::Warning,
        "added_tokens[id=5]",
    ),
    (
        "hostile/added-token-zero-width.gguf",
        "scan/tokenizer-added-token",
        Severity::Warning,
        "tokenizer.ggml.tokens[id=3]",
    ),
    (
        "hostile/normalizer-replace",
        "scan/tokenizer-normalizer",
        Severity::Warning,
        "normalizer.normalizers[1]",
    ),
];

#[test]
fn every_hostile_template_and_tokenizer_is_flagged_by_its_rule() {
    for (rel, rule, severity, key) in HOSTILE_TEMPLATES {
        let found = scan(&template_fixture(rel)).expect("scan runs");
        assert!(
            has(&found, rule, *severity, key),
            "{rel}: expected {severity} {rule} on `{key}`, got {found:#?}"
        );
        for f in found
            .iter()
            .filter(|f| f.rule.starts_with("scan/template-"))
        {
            assert!(
                f.evidence.iter().all(|e| e.key.is_some()),
                "{rel}: evidence names the key: {f:#?}"
            );
        }
    }
    // every hostile file and directory in the corpus is in the table
    let mut listed: Vec<&str> = HOSTILE_TEMPLATES.iter().map(|h| h.0).collect();
    listed.dedup();
    let mut on_disk: Vec<String> = fs::read_dir(template_fixture("hostile"))
        .unwrap()
        .map(|e| format!("hostile/{}", e.unwrap().file_name().to_string_lossy()))
        .collect();
    on_disk.sort();
    let mut sorted = listed.clone();
    sorted.sort();
    assert_eq!(sorted, on_disk);
    assert!(on_disk.len() >= 12);
}

/// The rule ids in a `scan --format json` report.
fn json_rules(stdout: &[u8]) -> Vec<String> {
    let v: serde_json::Value = serde_json::from_slice(stdout).expect("json report");
    v["findings"]
        .as_array()
        .expect("a report with findings")
        .iter()
        .filter_map(|f| f["rule"].as_str().map(str::to_owned))
        .collect()
}

#[test]
fn hostile_templates_exit_1_and_clean_ones_exit_0() {
    for (rel, rule, severity, _) in HOSTILE_TEMPLATES {
        let path = template_fixture(rel);
        let p = path.to_str().unwrap();
        // error-level classes fail the default gate; warning-level ones (an odd added
        // token, a rewriting normalizer, an oversized template) fail it with
        // `--fail-on warning` and are reported, without failing, by default
        let out = modelgate(&["scan", p, "--format", "json", "--fail-on", "warning"]);
        assert!(
            json_rules(&out.stdout).iter().any(|r| r == rule),
            "{rel}: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        assert_eq!(out.status.code(), Some(1), "{rel} with --fail-on warning");
        let out = modelgate(&["scan", p, "--format", "json"]);
        assert!(json_rules(&out.stdout).iter().any(|r| r == rule), "{rel}");
        let fails = *severity == Severity::Error || *rel == "hostile/ssti-padded";
        assert_eq!(out.status.code(), Some(if fails { 1 } else { 0 }), "{rel}");
    }
    for dir in ["clean", "unknown"] {
        for e in fs::read_dir(template_fixture(dir)).unwrap() {
            let path = e.unwrap().path();
            let out = modelgate(&["scan", path.to_str().unwrap(), "--fail-on", "warning"]);
            assert_eq!(
                out.status.code(),
                Some(0),
                "{}: {}",
                path.display(),
                String::from_utf8_lossy(&out.stdout)
            );
        }
    }
}

/// An official template with one edit raises only the catalogue note, naming the family.
#[test]
fn edited_official_templates_are_noted_as_unknown() {
    for (rel, key, family) in [
        (
            "unknown/chatml-edited.gguf",
            "tokenizer.chat_template",
            "ChatML",
        ),
        ("unknown/llama3-edited", "chat_template", "Llama 3"),
    ] {
        let found = scan(&template_fixture(rel)).unwrap();
        assert_eq!(found.len(), 1, "{rel}: {found:#?}");
        assert!(
            has(&found, "scan/template-unknown", Severity::Note, key),
            "{rel}: {found:#?}"
        );
        assert!(
            found[0]
                .message
                .contains(&format!("differs from {family}'s")),
            "{rel}: {}",
            found[0].message
        );
    }
}

/// The template texts in one fixture file.
fn templates_in(p: &Path) -> Vec<String> {
    use modelgate::formats::{gguf, template};
    let name = p.file_name().unwrap().to_str().unwrap();
    let found = if name.ends_with(".gguf") {
        template::from_gguf(p, &gguf::open(p).unwrap().metadata)
    } else if name.ends_with(".jinja") {
        vec![template::from_jinja_file(p, name).unwrap()]
    } else if name.ends_with("config.json") || name == "chat_template.json" {
        template::from_json_file(p).unwrap()
    } else {
        Vec::new()
    };
    found.into_iter().map(|t| t.text).collect()
}

/// `scan` and `generate`'s renderer on every hostile template finish quickly, without a
/// panic: the analyser parses, the renderer is sandboxed and bounded.
#[test]
fn hostile_templates_never_hang_scan_or_the_renderer() {
    let texts: Vec<String> = fs::read_dir(template_fixture("hostile"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .flat_map(|p| {
            if p.is_dir() {
                fs::read_dir(&p)
                    .unwrap()
                    .map(|e| e.unwrap().path())
                    .collect::<Vec<_>>()
            } else {
                vec![p]
            }
        })
        .flat_map(|p| templates_in(&p))
        .collect();
    assert!(texts.len() >= 15, "{}", texts.len());
    for t in &texts {
        let start = std::time::Instant::now();
        let _ = modelgate::scan::analyse_template(t);
        let _ = modelgate::engine::chat::render(t, "deploy mode: hello", Some("<s>"), Some("</s>"));
        assert!(
            start.elapsed().as_secs() < 10,
            "slow on {}",
            &t[..t.len().min(80)]
        );
    }
}

/// The official templates raise nothing at all, not even the catalogue note: their digests
/// are in `policies/templates.yaml`.
#[test]
fn official_templates_raise_no_finding() {
    for e in fs::read_dir(template_fixture("clean")).unwrap() {
        let path = e.unwrap().path();
        let found = scan(&path).unwrap();
        assert!(found.is_empty(), "{}: {found:#?}", path.display());
    }
    let catalogue = fs::read_to_string(repo().join("policies/templates.yaml")).unwrap();
    for (family, name, text, _) in templates::OFFICIAL {
        let found = modelgate::scan::analyse_template(text);
        assert!(found.is_empty(), "{name}: {found:#?}");
        let digest = {
            use sha2::Digest;
            hex::encode(sha2::Sha256::digest(text.trim().as_bytes()))
        };
        assert!(
            catalogue.contains(&digest),
            "{family} template {name} (sha256 {digest}) is not in policies/templates.yaml"
        );
    }
}

#[test]
fn template_evidence_points_into_the_file() {
    // GGUF: the offset is the payload's byte in the file
    let path = template_fixture("hostile/ssti-tool-use.gguf");
    let found = scan(&path).unwrap();
    let f = found
        .iter()
        .find(|f| f.rule == "scan/template-ssti")
        .expect("ssti found");
    let ev = &f.evidence[0];
    let bytes = fs::read(&path).unwrap();
    let at = ev.offset.expect("gguf offset") as usize;
    assert!(bytes[at..].starts_with(b"lipsum"), "{f:#?}");
    assert!(f.message.contains("line 1, column"), "{}", f.message);
    // tokenizer_config.json: the offset is inside the escaped JSON string, with its line
    let path = template_fixture("hostile/ssti-config-list/tokenizer_config.json");
    let found = scan(&path).unwrap();
    let f = found
        .iter()
        .find(|f| f.rule == "scan/template-ssti")
        .expect("ssti found");
    let text = fs::read_to_string(&path).unwrap();
    let at = f.evidence[0].offset.expect("json offset") as usize;
    assert!(text[at..].starts_with("()"), "{}", &text[at..at + 20]);
    let line = f.evidence[0].line.expect("json line") as usize;
    assert!(text.lines().nth(line - 1).unwrap().contains("\"template\""));
    // the padded .jinja file: the finding is past the padding, on the file's own line
    let found = scan(&template_fixture("hostile/ssti-padded")).unwrap();
    let f = found
        .iter()
        .find(|f| f.rule == "scan/template-ssti")
        .expect("ssti found");
    assert!(f.evidence[0].line.unwrap() > 1000, "{f:#?}");
    assert!(f.evidence[0].offset.unwrap() > 300 << 10, "{f:#?}");
}

#[test]
fn template_findings_in_sarif_have_rules_and_locations() {
    let path = template_fixture("hostile/ssti-padded");
    let out = modelgate(&["scan", path.to_str().unwrap(), "--format", "sarif"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let rules = v["runs"][0]["tool"]["driver"]["rules"].as_array().unwrap();
    let ssti = rules
        .iter()
        .find(|r| r["id"] == "scan/template-ssti")
        .expect("rule listed");
    assert_eq!(ssti["properties"]["security-severity"], "8.0");
    assert!(ssti["shortDescription"]["text"]
        .as_str()
        .unwrap()
        .contains("template-ssti"));
    let res = v["runs"][0]["results"].as_array().unwrap();
    assert!(res.iter().any(|r| r["ruleId"] == "scan/template-ssti"
        && r["locations"][0]["physicalLocation"]["region"]["startLine"]
            .as_u64()
            .unwrap()
            > 1000));
}

/// The tiny models' tokenizers and ChatML templates raise nothing above a note.
#[test]
fn fixture_models_have_clean_tokenizers_and_templates() {
    for m in ["tiny-llama", "tiny-mistral", "tiny-qwen2"] {
        let found = issues(&fixture("models").join(m));
        assert!(
            !found
                .iter()
                .any(|f| f.rule.starts_with("scan/template-")
                    || f.rule.starts_with("scan/tokenizer-")),
            "{m}: {found:#?}"
        );
    }
}
