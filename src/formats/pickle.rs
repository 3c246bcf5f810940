//! A bounded, non-executing reader for Python pickles (protocols 0 to 5): it decodes every
//! opcode, replays the unpickler's stack, mark stack and memo symbolically, and reports
//! every global the pickle imports (GLOBAL, STACK_GLOBAL, INST, EXT*) with its byte offset
//! and every call it makes (REDUCE, NEWOBJ, NEWOBJ_EX, OBJ, INST, BUILD).
//!
//! It sits under both pickle consumers of the pipeline: the scanner (`crate::scan`) judges
//! the globals it reports, and the PyTorch reader ([`super::pytorch`]) walks the symbolic
//! object graph it builds to find the tensor table, after refusing any pickle that imports
//! a global outside [`classify`]'s allowlist. Nothing is ever imported or called: a global
//! is a name, a call is a node recording who would have been called with what.
//!
//! Written by hand because no crate does static, bounded, non-executing analysis:
//! `serde-pickle` and candle's `pickle` module are deserialisers that build values (candle
//! allocates `vec![0; len]` for a claimed string length, clones memo entries, which lets a
//! few hundred bytes of GET/TUPLE blow up exponentially, and reads only the opcodes
//! `torch.save` emits), and neither reports opcode offsets. Here every argument length is
//! checked against the bytes left before it is read, strings and bytes are borrowed or
//! copied only after that check, memo entries and duplicated stack items share one node,
//! and the node count is capped, so memory stays linear in the input.
//!
//! The replay follows CPython's `_pickle.c`/`pickle.py` where it decides what runs: an
//! opcode that would make `pickle.load` fail (stack underflow, missing memo key, unknown
//! opcode, truncated argument) stops the replay with a [`Fault`], and everything recorded
//! before that point is what a real unpickler would already have done.

use std::collections::HashMap;
use std::fmt;
use std::mem;

/// Highest pickle protocol Python defines (3.8+).
pub const HIGHEST_PROTOCOL: u8 = 5;

/// Nodes (objects) one replay may create. A `torch.save` state dict needs about fifteen per
/// tensor, so this allows over 250,000 tensors while bounding memory (72 bytes a node) to
/// about 300 MiB for an adversarial pickle made of one-byte opcodes.
pub const MAX_NODES: usize = 1 << 22;

/// Index of a node in [`Analysis::nodes`].
pub type NodeId = usize;

/// One object on the symbolic stack. Containers hold node ids, so a memoised object that is
/// fetched many times is stored once.
#[derive(Clone, Debug, PartialEq)]
pub enum Node {
    None,
    Bool(bool),
    /// An integer; `None` when it does not fit in an `i64`.
    Int(Option<i64>),
    Float(f64),
    Str(String),
    /// Bytes (or a bytearray): `start..start+len` of the analysed input.
    Bytes {
        start: u64,
        len: u64,
    },
    Tuple(Vec<NodeId>),
    List(Vec<NodeId>),
    Dict(Vec<(NodeId, NodeId)>),
    Set(Vec<NodeId>),
    FrozenSet(Vec<NodeId>),
    /// What a global resolves to; index into [`Analysis::globals`].
    Global(usize),
    /// The result of a call ([`Analysis::calls`] index), with whatever APPEND(S),
    /// SETITEM(S) and BUILD later added to it (an `OrderedDict` gets its items this way).
    Object {
        call: usize,
        items: Vec<NodeId>,
        entries: Vec<(NodeId, NodeId)>,
        state: Option<NodeId>,
    },
    /// `persistent_load(pid)`: how PyTorch refers to tensor storages.
    PersistentId(NodeId),
    /// `persistent_load(text)` from the protocol 0 PERSID opcode.
    TextPersistentId(String),
    /// An object whose value cannot be known statically (an unregistered extension code).
    Opaque,
}

/// The opcode that imported a global.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GlobalOp {
    Global,
    StackGlobal,
    Inst,
    Ext,
}

impl GlobalOp {
    pub fn as_str(self) -> &'static str {
        match self {
            GlobalOp::Global => "GLOBAL",
            GlobalOp::StackGlobal => "STACK_GLOBAL",
            GlobalOp::Inst => "INST",
            GlobalOp::Ext => "EXT",
        }
    }
}

/// What a global names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GlobalName {
    /// `module` and attribute path, as the pickle spells them (Python 2 names included).
    Resolved { module: String, name: String },
    /// STACK_GLOBAL whose operands are computed at load time (the result of a call): the
    /// static reader cannot know what it imports. The text says what the operands were.
    Dynamic(String),
    /// EXT1/EXT2/EXT4: a global named through the `copyreg` extension registry.
    Extension(i64),
}

/// One import of a global.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GlobalRef {
    pub name: GlobalName,
    pub op: GlobalOp,
    /// Byte offset of the opcode in the analysed input.
    pub offset: u64,
}

impl GlobalRef {
    /// `module.name` for resolved globals; a description otherwise.
    pub fn qualified(&self) -> String {
        match &self.name {
            GlobalName::Resolved { module, name } => format!("{module}.{name}"),
            GlobalName::Dynamic(why) => format!("<dynamic: {why}>"),
            GlobalName::Extension(code) => format!("<extension code {code}>"),
        }
    }
}

/// The opcode that calls something.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CallOp {
    Reduce,
    NewObj,
    NewObjEx,
    Obj,
    Inst,
    /// BUILD calls `__setstate__` (or sets attributes) on an object.
    Build,
}

impl CallOp {
    pub fn as_str(self) -> &'static str {
        match self {
            CallOp::Reduce => "REDUCE",
            CallOp::NewObj => "NEWOBJ",
            CallOp::NewObjEx => "NEWOBJ_EX",
            CallOp::Obj => "OBJ",
            CallOp::Inst => "INST",
            CallOp::Build => "BUILD",
        }
    }
}

/// One call the unpickler would make.
#[derive(Clone, Debug, PartialEq)]
pub struct Call {
    pub op: CallOp,
    pub offset: u64,
    /// What is called (for BUILD: the object whose state is set).
    pub callee: NodeId,
    /// The argument tuple (for BUILD: the state).
    pub args: NodeId,
    /// NEWOBJ_EX keyword arguments.
    pub kwargs: Option<NodeId>,
}

/// Why the replay stopped before STOP: a real `pickle.load` fails at the same point.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fault {
    pub offset: u64,
    pub message: String,
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} at byte {}", self.message, self.offset)
    }
}

/// Everything one pickle does, as far as it can be read without running it.
#[derive(Clone, Debug, Default)]
pub struct Analysis {
    /// Offset of the pickle's first byte in the analysed input.
    pub start: u64,
    /// Offset just past STOP, or of the faulting opcode.
    pub end: u64,
    /// Protocol from the PROTO opcode, when there is one.
    pub protocol: Option<u8>,
    pub globals: Vec<GlobalRef>,
    pub calls: Vec<Call>,
    pub nodes: Vec<Node>,
    /// The object STOP returns.
    pub root: Option<NodeId>,
    pub fault: Option<Fault>,
    pub opcodes: u64,
}

impl Analysis {
    pub fn node(&self, id: NodeId) -> Option<&Node> {
        self.nodes.get(id)
    }

    /// The global a node comes from: the global itself, or the global whose call (or
    /// call of a call ...) produced it. Node ids only point backwards, so this ends.
    pub fn origin(&self, mut id: NodeId) -> Option<usize> {
        for _ in 0..self.nodes.len() {
            match self.nodes.get(id)? {
                Node::Global(g) => return Some(*g),
                Node::Object { call, .. } => id = self.calls.get(*call)?.callee,
                _ => return None,
            }
        }
        None
    }

    /// Calls whose callee is global `g` itself (not the result of calling it).
    pub fn direct_calls(&self, g: usize) -> impl Iterator<Item = &Call> {
        self.calls.iter().filter(move |c| {
            c.op != CallOp::Build
                && matches!(self.nodes.get(c.callee), Some(Node::Global(x)) if *x == g)
        })
    }

    /// The global named by node `id`, when it is a resolved one.
    pub fn global_name(&self, id: NodeId) -> Option<(&str, &str)> {
        match self.nodes.get(id)? {
            Node::Global(g) => match &self.globals.get(*g)?.name {
                GlobalName::Resolved { module, name } => Some((module, name)),
                _ => None,
            },
            _ => None,
        }
    }

    /// Whether the replay reached STOP.
    pub fn complete(&self) -> bool {
        self.fault.is_none() && self.root.is_some()
    }
}

/// Replay the pickle that starts at `start` in `data`.
pub fn analyze(data: &[u8], start: usize) -> Analysis {
    let mut m = Machine {
        data,
        pos: start,
        a: Analysis {
            start: start as u64,
            ..Analysis::default()
        },
        stack: Vec::new(),
        metastack: Vec::new(),
        memo: HashMap::new(),
    };
    if let Err(message) = m.run() {
        m.a.fault = Some(Fault {
            offset: m.op_offset(),
            message,
        });
    }
    m.a.end = m.pos as u64;
    m.a
}

/// Replay consecutive pickles from the start of `data`, as repeated `pickle.load` calls on
/// one file would: while the previous one reached STOP and bytes remain, the next is read
/// (it may fault: trailing bytes that are not a pickle). At most `max` pickles.
pub fn analyze_stream(data: &[u8], max: usize) -> Vec<Analysis> {
    let mut out = Vec::new();
    let mut pos = 0usize;
    while out.len() < max && pos < data.len() {
        let a = analyze(data, pos);
        let next = a.end as usize;
        let ok = a.complete();
        out.push(a);
        if !ok {
            break;
        }
        pos = next;
    }
    out
}

// Opcodes, named as in CPython's pickle.py.
const MARK: u8 = b'(';
const STOP: u8 = b'.';
const POP: u8 = b'0';
const POP_MARK: u8 = b'1';
const DUP: u8 = b'2';
const FLOAT: u8 = b'F';
const INT: u8 = b'I';
const BININT: u8 = b'J';
const BININT1: u8 = b'K';
const LONG: u8 = b'L';
const BININT2: u8 = b'M';
const NONE: u8 = b'N';
const PERSID: u8 = b'P';
const BINPERSID: u8 = b'Q';
const REDUCE: u8 = b'R';
const STRING: u8 = b'S';
const BINSTRING: u8 = b'T';
const SHORT_BINSTRING: u8 = b'U';
const UNICODE: u8 = b'V';
const BINUNICODE: u8 = b'X';
const APPEND: u8 = b'a';
const BUILD: u8 = b'b';
const GLOBAL: u8 = b'c';
const DICT: u8 = b'd';
const EMPTY_DICT: u8 = b'}';
const APPENDS: u8 = b'e';
const GET: u8 = b'g';
const BINGET: u8 = b'h';
const INST: u8 = b'i';
const LONG_BINGET: u8 = b'j';
const LIST: u8 = b'l';
const EMPTY_LIST: u8 = b']';
const OBJ: u8 = b'o';
const PUT: u8 = b'p';
const BINPUT: u8 = b'q';
const LONG_BINPUT: u8 = b'r';
const SETITEM: u8 = b's';
const TUPLE: u8 = b't';
const EMPTY_TUPLE: u8 = b')';
const SETITEMS: u8 = b'u';
const BINFLOAT: u8 = b'G';
const PROTO: u8 = 0x80;
const NEWOBJ: u8 = 0x81;
const EXT1: u8 = 0x82;
const EXT2: u8 = 0x83;
const EXT4: u8 = 0x84;
const TUPLE1: u8 = 0x85;
const TUPLE2: u8 = 0x86;
const TUPLE3: u8 = 0x87;
const NEWTRUE: u8 = 0x88;
const NEWFALSE: u8 = 0x89;
const LONG1: u8 = 0x8a;
const LONG4: u8 = 0x8b;
const BINBYTES: u8 = b'B';
const SHORT_BINBYTES: u8 = b'C';
const SHORT_BINUNICODE: u8 = 0x8c;
const BINUNICODE8: u8 = 0x8d;
const BINBYTES8: u8 = 0x8e;
const EMPTY_SET: u8 = 0x8f;
const ADDITEMS: u8 = 0x90;
const FROZENSET: u8 = 0x91;
const NEWOBJ_EX: u8 = 0x92;
const STACK_GLOBAL: u8 = 0x93;
const MEMOIZE: u8 = 0x94;
const FRAME: u8 = 0x95;
const BYTEARRAY8: u8 = 0x96;
const NEXT_BUFFER: u8 = 0x97;
const READONLY_BUFFER: u8 = 0x98;

type Step = Result<(), String>;

struct Machine<'a> {
    data: &'a [u8],
    pos: usize,
    a: Analysis,
    stack: Vec<NodeId>,
    metastack: Vec<Vec<NodeId>>,
    memo: HashMap<u64, NodeId>,
}

impl Machine<'_> {
    /// Offset of the opcode being replayed (set at the top of each step).
    fn op_offset(&self) -> u64 {
        self.a.end
    }

    fn run(&mut self) -> Step {
        loop {
            self.a.end = self.pos as u64;
            let op = self.u8().ok_or("pickle ends without a STOP opcode")?;
            self.a.opcodes += 1;
            if self.step(op)? {
                self.a.end = self.pos as u64;
                return Ok(());
            }
        }
    }

    // ---- reading arguments: every length is checked against the bytes left ----

    fn left(&self) -> usize {
        self.data.len().saturating_sub(self.pos)
    }

    fn u8(&mut self) -> Option<u8> {
        let b = *self.data.get(self.pos)?;
        self.pos += 1;
        Some(b)
    }

    fn take(&mut self, n: u64, what: &str) -> Result<&[u8], String> {
        if n > self.left() as u64 {
            return Err(format!(
                "{what} claims {n} bytes but only {} are left",
                self.left()
            ));
        }
        let start = self.pos;
        self.pos += n as usize;
        Ok(&self.data[start..self.pos])
    }

    fn fixed<const N: usize>(&mut self, what: &str) -> Result<[u8; N], String> {
        let s = self.take(N as u64, what)?;
        let mut out = [0u8; N];
        out.copy_from_slice(s);
        Ok(out)
    }

    /// A newline-terminated argument, without the newline.
    fn line(&mut self, what: &str) -> Result<&[u8], String> {
        let rest = &self.data[self.pos.min(self.data.len())..];
        let n = rest
            .iter()
            .position(|&b| b == b'\n')
            .ok_or_else(|| format!("{what} argument has no terminating newline"))?;
        self.pos += n + 1;
        Ok(&rest[..n])
    }

    // ---- the symbolic stack ----

    fn node(&mut self, n: Node) -> Result<NodeId, String> {
        if self.a.nodes.len() >= MAX_NODES {
            return Err(format!(
                "pickle creates more than {MAX_NODES} objects, more than modelgate analyses"
            ));
        }
        self.a.nodes.push(n);
        Ok(self.a.nodes.len() - 1)
    }

    fn push(&mut self, n: Node) -> Step {
        let id = self.node(n)?;
        self.stack.push(id);
        Ok(())
    }

    fn pop(&mut self) -> Result<NodeId, String> {
        self.stack
            .pop()
            .ok_or_else(|| "unpickling stack underflow".to_owned())
    }

    fn top(&self) -> Result<NodeId, String> {
        self.stack
            .last()
            .copied()
            .ok_or_else(|| "unpickling stack underflow".to_owned())
    }

    fn pop_mark(&mut self) -> Result<Vec<NodeId>, String> {
        let below = self
            .metastack
            .pop()
            .ok_or("opcode needs a MARK but none is set")?;
        Ok(mem::replace(&mut self.stack, below))
    }

    fn memo_get(&mut self, key: u64) -> Step {
        let id = *self
            .memo
            .get(&key)
            .ok_or_else(|| format!("memo key {key} was never stored"))?;
        self.stack.push(id);
        Ok(())
    }

    fn memo_put(&mut self, key: u64) -> Step {
        let top = self.top()?;
        self.memo.insert(key, top);
        Ok(())
    }

    fn global(&mut self, name: GlobalName, op: GlobalOp, offset: u64) -> Result<NodeId, String> {
        self.a.globals.push(GlobalRef { name, op, offset });
        let g = self.a.globals.len() - 1;
        self.node(Node::Global(g))
    }

    fn call(
        &mut self,
        op: CallOp,
        callee: NodeId,
        args: NodeId,
        kwargs: Option<NodeId>,
    ) -> Result<NodeId, String> {
        let offset = self.op_offset();
        self.a.calls.push(Call {
            op,
            offset,
            callee,
            args,
            kwargs,
        });
        let call = self.a.calls.len() - 1;
        self.node(Node::Object {
            call,
            items: Vec::new(),
            entries: Vec::new(),
            state: None,
        })
    }

    fn str_node(&self, id: NodeId) -> Option<&str> {
        match self.a.nodes.get(id)? {
            Node::Str(s) => Some(s),
            _ => None,
        }
    }

    fn append_items(&mut self, target: NodeId, items: Vec<NodeId>) -> Step {
        match self.a.nodes.get_mut(target) {
            Some(Node::List(v)) | Some(Node::Set(v)) | Some(Node::Object { items: v, .. }) => {
                v.extend(items);
                Ok(())
            }
            // Python would look up `.append`/`.add` on anything else; statically the
            // object is unknown, and its origin is already reported as a global.
            Some(Node::Opaque) => Ok(()),
            _ => Err("APPEND/ADDITEMS target is not a list, set or object".into()),
        }
    }

    fn set_items(&mut self, target: NodeId, pairs: Vec<(NodeId, NodeId)>) -> Step {
        match self.a.nodes.get_mut(target) {
            Some(Node::Dict(v)) | Some(Node::Object { entries: v, .. }) => {
                v.extend(pairs);
                Ok(())
            }
            Some(Node::Opaque) => Ok(()),
            _ => Err("SETITEM target is not a dict or object".into()),
        }
    }

    /// Replay one opcode; `Ok(true)` at STOP.
    fn step(&mut self, op: u8) -> Result<bool, String> {
        let at = self.op_offset();
        match op {
            PROTO => {
                let p = self.u8().ok_or("PROTO has no version byte")?;
                if p > HIGHEST_PROTOCOL {
                    return Err(format!("unsupported pickle protocol {p}"));
                }
                self.a.protocol = Some(p);
            }
            FRAME => {
                // Frames only group opcodes for buffering; the frame must fit in the input.
                let n = u64::from_le_bytes(self.fixed::<8>("FRAME")?);
                if n > self.left() as u64 {
                    return Err(format!(
                        "FRAME claims {n} bytes but only {} are left",
                        self.left()
                    ));
                }
            }
            STOP => {
                let root = self.pop()?;
                self.a.root = Some(root);
                return Ok(true);
            }
            MARK => self.metastack.push(mem::take(&mut self.stack)),
            POP => {
                if self.stack.is_empty() {
                    self.pop_mark()?;
                } else {
                    self.pop()?;
                }
            }
            POP_MARK => {
                self.pop_mark()?;
            }
            DUP => {
                let t = self.top()?;
                self.stack.push(t);
            }
            NONE => self.push(Node::None)?,
            NEWTRUE => self.push(Node::Bool(true))?,
            NEWFALSE => self.push(Node::Bool(false))?,
            INT => {
                let l = self.line("INT")?;
                let n = match l {
                    b"00" => Node::Bool(false),
                    b"01" => Node::Bool(true),
                    _ => Node::Int(parse_text_int(l, "INT")?),
                };
                self.push(n)?;
            }
            LONG => {
                let l = self.line("LONG")?;
                let l = l.strip_suffix(b"L").unwrap_or(l);
                let n = parse_text_int(l, "LONG")?;
                self.push(Node::Int(n))?;
            }
            BININT => {
                let v = i32::from_le_bytes(self.fixed::<4>("BININT")?);
                self.push(Node::Int(Some(v.into())))?;
            }
            BININT1 => {
                let v = self.fixed::<1>("BININT1")?[0];
                self.push(Node::Int(Some(v.into())))?;
            }
            BININT2 => {
                let v = u16::from_le_bytes(self.fixed::<2>("BININT2")?);
                self.push(Node::Int(Some(v.into())))?;
            }
            LONG1 => {
                let n = self.fixed::<1>("LONG1")?[0];
                let v = le_signed(self.take(n.into(), "LONG1")?);
                self.push(Node::Int(v))?;
            }
            LONG4 => {
                let n = i32::from_le_bytes(self.fixed::<4>("LONG4")?);
                let n = u64::try_from(n).map_err(|_| "LONG4 has a negative byte count")?;
                let v = le_signed(self.take(n, "LONG4")?);
                self.push(Node::Int(v))?;
            }
            FLOAT => {
                let l = self.line("FLOAT")?;
                let v = std::str::from_utf8(l)
                    .ok()
                    .and_then(|s| s.trim().parse::<f64>().ok())
                    .ok_or("FLOAT argument is not a number")?;
                self.push(Node::Float(v))?;
            }
            BINFLOAT => {
                let v = f64::from_be_bytes(self.fixed::<8>("BINFLOAT")?);
                self.push(Node::Float(v))?;
            }
            STRING => {
                let l = self.line("STRING")?;
                let quoted =
                    l.len() >= 2 && l[0] == l[l.len() - 1] && (l[0] == b'\'' || l[0] == b'"');
                if !quoted {
                    return Err("the STRING opcode argument must be quoted".into());
                }
                let s = escape_decode(&l[1..l.len() - 1]);
                self.push(Node::Str(String::from_utf8_lossy(&s).into_owned()))?;
            }
            BINSTRING => {
                let n = i32::from_le_bytes(self.fixed::<4>("BINSTRING")?);
                let n = u64::try_from(n).map_err(|_| "BINSTRING has a negative byte count")?;
                let s = String::from_utf8_lossy(self.take(n, "BINSTRING")?).into_owned();
                self.push(Node::Str(s))?;
            }
            SHORT_BINSTRING => {
                let n = self.fixed::<1>("SHORT_BINSTRING")?[0];
                let s =
                    String::from_utf8_lossy(self.take(n.into(), "SHORT_BINSTRING")?).into_owned();
                self.push(Node::Str(s))?;
            }
            UNICODE => {
                let l = self.line("UNICODE")?;
                let s = raw_unicode_escape(l);
                self.push(Node::Str(s))?;
            }
            BINUNICODE | SHORT_BINUNICODE | BINUNICODE8 => {
                let (n, what) = match op {
                    SHORT_BINUNICODE => (
                        self.fixed::<1>("SHORT_BINUNICODE")?[0].into(),
                        "SHORT_BINUNICODE",
                    ),
                    BINUNICODE => (
                        u32::from_le_bytes(self.fixed::<4>("BINUNICODE")?).into(),
                        "BINUNICODE",
                    ),
                    _ => (
                        u64::from_le_bytes(self.fixed::<8>("BINUNICODE8")?),
                        "BINUNICODE8",
                    ),
                };
                let s = String::from_utf8_lossy(self.take(n, what)?).into_owned();
                self.push(Node::Str(s))?;
            }
            BINBYTES | SHORT_BINBYTES | BINBYTES8 | BYTEARRAY8 => {
                let (n, what) = match op {
                    SHORT_BINBYTES => (
                        self.fixed::<1>("SHORT_BINBYTES")?[0].into(),
                        "SHORT_BINBYTES",
                    ),
                    BINBYTES => (
                        u32::from_le_bytes(self.fixed::<4>("BINBYTES")?).into(),
                        "BINBYTES",
                    ),
                    BINBYTES8 => (
                        u64::from_le_bytes(self.fixed::<8>("BINBYTES8")?),
                        "BINBYTES8",
                    ),
                    _ => (
                        u64::from_le_bytes(self.fixed::<8>("BYTEARRAY8")?),
                        "BYTEARRAY8",
                    ),
                };
                let start = self.pos as u64;
                self.take(n, what)?;
                self.push(Node::Bytes { start, len: n })?;
            }
            NEXT_BUFFER => {
                // torch.load and pickle.load without `buffers=` fail here.
                return Err("NEXT_BUFFER refers to out-of-band data, which is never given".into());
            }
            READONLY_BUFFER => {
                self.top()?;
            }
            EMPTY_TUPLE => self.push(Node::Tuple(Vec::new()))?,
            TUPLE => {
                let items = self.pop_mark()?;
                self.push(Node::Tuple(items))?;
            }
            TUPLE1 | TUPLE2 | TUPLE3 => {
                let n = usize::from(op - TUPLE1) + 1;
                if self.stack.len() < n {
                    return Err("unpickling stack underflow".into());
                }
                let items = self.stack.split_off(self.stack.len() - n);
                self.push(Node::Tuple(items))?;
            }
            EMPTY_LIST => self.push(Node::List(Vec::new()))?,
            LIST => {
                let items = self.pop_mark()?;
                self.push(Node::List(items))?;
            }
            APPEND => {
                let v = self.pop()?;
                let target = self.top()?;
                self.append_items(target, vec![v])?;
            }
            APPENDS => {
                let items = self.pop_mark()?;
                let target = self.top()?;
                self.append_items(target, items)?;
            }
            EMPTY_DICT => self.push(Node::Dict(Vec::new()))?,
            DICT => {
                let items = self.pop_mark()?;
                let pairs = pairs(items)?;
                self.push(Node::Dict(pairs))?;
            }
            SETITEM => {
                let v = self.pop()?;
                let k = self.pop()?;
                let target = self.top()?;
                self.set_items(target, vec![(k, v)])?;
            }
            SETITEMS => {
                let items = self.pop_mark()?;
                let pairs = pairs(items)?;
                let target = self.top()?;
                self.set_items(target, pairs)?;
            }
            EMPTY_SET => self.push(Node::Set(Vec::new()))?,
            ADDITEMS => {
                let items = self.pop_mark()?;
                let target = self.top()?;
                self.append_items(target, items)?;
            }
            FROZENSET => {
                let items = self.pop_mark()?;
                self.push(Node::FrozenSet(items))?;
            }
            GET => {
                let l = self.line("GET")?;
                let key = parse_memo_key(l, "GET")?;
                self.memo_get(key)?;
            }
            BINGET => {
                let key = self.fixed::<1>("BINGET")?[0];
                self.memo_get(key.into())?;
            }
            LONG_BINGET => {
                let key = u32::from_le_bytes(self.fixed::<4>("LONG_BINGET")?);
                self.memo_get(key.into())?;
            }
            PUT => {
                let l = self.line("PUT")?;
                let key = parse_memo_key(l, "PUT")?;
                self.memo_put(key)?;
            }
            BINPUT => {
                let key = self.fixed::<1>("BINPUT")?[0];
                self.memo_put(key.into())?;
            }
            LONG_BINPUT => {
                let key = u32::from_le_bytes(self.fixed::<4>("LONG_BINPUT")?);
                self.memo_put(key.into())?;
            }
            MEMOIZE => {
                let key = self.memo.len() as u64;
                self.memo_put(key)?;
            }
            GLOBAL => {
                let module = String::from_utf8_lossy(self.line("GLOBAL")?).into_owned();
                let name = String::from_utf8_lossy(self.line("GLOBAL")?).into_owned();
                let g = self.global(GlobalName::Resolved { module, name }, GlobalOp::Global, at)?;
                self.stack.push(g);
            }
            STACK_GLOBAL => {
                let name = self.pop()?;
                let module = self.pop()?;
                let g = match (self.str_node(module), self.str_node(name)) {
                    (Some(m), Some(n)) => GlobalName::Resolved {
                        module: m.to_owned(),
                        name: n.to_owned(),
                    },
                    _ => {
                        let m = self.describe(module);
                        let n = self.describe(name);
                        if !self.computed(module) && !self.computed(name) {
                            return Err(format!(
                                "STACK_GLOBAL requires str operands, got {m} and {n}"
                            ));
                        }
                        GlobalName::Dynamic(format!("module {m}, name {n}"))
                    }
                };
                let g = self.global(g, GlobalOp::StackGlobal, at)?;
                self.stack.push(g);
            }
            EXT1 | EXT2 | EXT4 => {
                let code: i64 = match op {
                    EXT1 => self.fixed::<1>("EXT1")?[0].into(),
                    EXT2 => u16::from_le_bytes(self.fixed::<2>("EXT2")?).into(),
                    _ => i32::from_le_bytes(self.fixed::<4>("EXT4")?).into(),
                };
                if code <= 0 {
                    return Err("EXT code is not positive".into());
                }
                let g = self.global(GlobalName::Extension(code), GlobalOp::Ext, at)?;
                self.stack.push(g);
            }
            INST => {
                let module = String::from_utf8_lossy(self.line("INST")?).into_owned();
                let name = String::from_utf8_lossy(self.line("INST")?).into_owned();
                let args = self.pop_mark()?;
                let g = self.global(GlobalName::Resolved { module, name }, GlobalOp::Inst, at)?;
                let args = self.node(Node::Tuple(args))?;
                let obj = self.call(CallOp::Inst, g, args, None)?;
                self.stack.push(obj);
            }
            OBJ => {
                let mut items = self.pop_mark()?;
                if items.is_empty() {
                    return Err("OBJ has no class after its MARK".into());
                }
                let cls = items.remove(0);
                let args = self.node(Node::Tuple(items))?;
                let obj = self.call(CallOp::Obj, cls, args, None)?;
                self.stack.push(obj);
            }
            REDUCE => {
                let args = self.pop()?;
                let f = self.pop()?;
                let obj = self.call(CallOp::Reduce, f, args, None)?;
                self.stack.push(obj);
            }
            NEWOBJ => {
                let args = self.pop()?;
                let cls = self.pop()?;
                let obj = self.call(CallOp::NewObj, cls, args, None)?;
                self.stack.push(obj);
            }
            NEWOBJ_EX => {
                let kwargs = self.pop()?;
                let args = self.pop()?;
                let cls = self.pop()?;
                let obj = self.call(CallOp::NewObjEx, cls, args, Some(kwargs))?;
                self.stack.push(obj);
            }
            BUILD => {
                let state = self.pop()?;
                let target = self.top()?;
                self.a.calls.push(Call {
                    op: CallOp::Build,
                    offset: at,
                    callee: target,
                    args: state,
                    kwargs: None,
                });
                if let Some(Node::Object { state: s, .. }) = self.a.nodes.get_mut(target) {
                    *s = Some(state);
                }
            }
            PERSID => {
                let l = self.line("PERSID")?;
                if !l.is_ascii() {
                    return Err("PERSID argument is not ASCII".into());
                }
                let s = String::from_utf8_lossy(l).into_owned();
                self.push(Node::TextPersistentId(s))?;
            }
            BINPERSID => {
                let pid = self.pop()?;
                self.push(Node::PersistentId(pid))?;
            }
            other => return Err(format!("unknown opcode 0x{other:02x}")),
        }
        Ok(false)
    }

    /// Whether a node's value is only known at load time (so a STACK_GLOBAL on it is a
    /// dynamic import rather than a certain failure).
    fn computed(&self, id: NodeId) -> bool {
        matches!(
            self.a.nodes.get(id),
            Some(
                Node::Object { .. }
                    | Node::PersistentId(_)
                    | Node::TextPersistentId(_)
                    | Node::Opaque
            )
        )
    }

    fn describe(&self, id: NodeId) -> String {
        match self.a.nodes.get(id) {
            Some(Node::Str(s)) => format!("`{s}`"),
            Some(Node::Object { call, .. }) => match self.a.calls.get(*call) {
                Some(c) => format!("the result of the {} at byte {}", c.op.as_str(), c.offset),
                None => "a call result".into(),
            },
            Some(Node::PersistentId(_) | Node::TextPersistentId(_)) => {
                "a persistent-id object".into()
            }
            Some(n) => format!("a {}", node_kind(n)),
            None => "nothing".into(),
        }
    }
}

/// A short name for a node's kind, for messages.
pub fn node_kind(n: &Node) -> &'static str {
    match n {
        Node::None => "None",
        Node::Bool(_) => "bool",
        Node::Int(_) => "int",
        Node::Float(_) => "float",
        Node::Str(_) => "str",
        Node::Bytes { .. } => "bytes",
        Node::Tuple(_) => "tuple",
        Node::List(_) => "list",
        Node::Dict(_) => "dict",
        Node::Set(_) => "set",
        Node::FrozenSet(_) => "frozenset",
        Node::Global(_) => "global",
        Node::Object { .. } => "object",
        Node::PersistentId(_) | Node::TextPersistentId(_) => "persistent id",
        Node::Opaque => "opaque value",
    }
}

fn pairs(items: Vec<NodeId>) -> Result<Vec<(NodeId, NodeId)>, String> {
    if !items.len().is_multiple_of(2) {
        return Err("odd number of items for a dict".into());
    }
    Ok(items.chunks_exact(2).map(|c| (c[0], c[1])).collect())
}

/// A little-endian two's-complement integer (LONG1/LONG4); `None` when wider than i64.
fn le_signed(bytes: &[u8]) -> Option<i64> {
    if bytes.is_empty() {
        return Some(0);
    }
    if bytes.len() > 8 {
        // Wider encodings of small values (sign-extension bytes) still fit.
        let (lo, hi) = bytes.split_at(8);
        let neg = lo[7] & 0x80 != 0;
        let fill = if neg { 0xff } else { 0 };
        if hi.iter().all(|&b| b == fill) {
            return le_signed(lo);
        }
        return None;
    }
    let neg = bytes[bytes.len() - 1] & 0x80 != 0;
    let mut buf = [if neg { 0xff } else { 0 }; 8];
    buf[..bytes.len()].copy_from_slice(bytes);
    Some(i64::from_le_bytes(buf))
}

/// A protocol 0 integer (`int(text, 0)` in Python). Values beyond i64 give `Ok(None)`.
fn parse_text_int(l: &[u8], what: &str) -> Result<Option<i64>, String> {
    let s = std::str::from_utf8(l)
        .map_err(|_| format!("{what} argument is not text"))?
        .trim();
    let digits = s.strip_prefix(['+', '-']).unwrap_or(s);
    let valid = !digits.is_empty()
        && digits
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if !valid {
        return Err(format!("{what} argument `{s}` is not an integer"));
    }
    Ok(s.parse::<i64>().ok())
}

fn parse_memo_key(l: &[u8], what: &str) -> Result<u64, String> {
    std::str::from_utf8(l)
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .ok_or_else(|| format!("{what} argument is not a non-negative integer"))
}

/// Python's `codecs.escape_decode`, used by the STRING opcode.
fn escape_decode(s: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        let b = s[i];
        i += 1;
        if b != b'\\' || i >= s.len() {
            out.push(b);
            continue;
        }
        let e = s[i];
        i += 1;
        match e {
            b'\n' => {}
            b'\\' | b'\'' | b'"' => out.push(e),
            b'a' => out.push(7),
            b'b' => out.push(8),
            b'f' => out.push(12),
            b'n' => out.push(b'\n'),
            b'r' => out.push(b'\r'),
            b't' => out.push(b'\t'),
            b'v' => out.push(11),
            b'x' => {
                let hex = s.get(i..i + 2).and_then(|h| std::str::from_utf8(h).ok());
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(v) => {
                        out.push(v);
                        i += 2;
                    }
                    None => out.extend_from_slice(b"\\x"),
                }
            }
            b'0'..=b'7' => {
                let mut v = u32::from(e - b'0');
                for _ in 0..2 {
                    match s.get(i) {
                        Some(d @ b'0'..=b'7') => {
                            v = v * 8 + u32::from(d - b'0');
                            i += 1;
                        }
                        _ => break,
                    }
                }
                out.push((v & 0xff) as u8);
            }
            other => {
                out.push(b'\\');
                out.push(other);
            }
        }
    }
    out
}

/// Python's `raw-unicode-escape` decoding, used by the UNICODE opcode: `\uXXXX` and
/// `\UXXXXXXXX` escapes, every other byte is a Latin-1 character.
fn raw_unicode_escape(s: &[u8]) -> String {
    let mut out = String::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        let b = s[i];
        if b == b'\\' {
            let width = match s.get(i + 1) {
                Some(b'u') => 4,
                Some(b'U') => 8,
                _ => 0,
            };
            if width > 0 {
                let hex = s
                    .get(i + 2..i + 2 + width)
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u32::from_str_radix(h, 16).ok())
                    .and_then(char::from_u32);
                if let Some(c) = hex {
                    out.push(c);
                    i += 2 + width;
                    continue;
                }
            }
        }
        out.push(char::from(b));
        i += 1;
    }
    out
}

/// How a global is judged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GlobalClass {
    /// On the allowlist: rebuilds tensors or plain containers and runs nothing else.
    Allowed,
    /// Known to run code, commands, network or file access, or a known denylist bypass.
    /// The text says what it can do.
    Dangerous(&'static str),
    /// Not on the allowlist and not known to be dangerous: suspicious.
    Unknown,
}

/// Globals a PyTorch or numpy checkpoint needs to rebuild tensors and containers. Every
/// other global is either dangerous or unknown.
pub const ALLOWED_GLOBALS: &[(&str, &str)] = &[
    ("collections", "OrderedDict"),
    ("torch._utils", "_rebuild_tensor"),
    ("torch._utils", "_rebuild_tensor_v2"),
    ("torch._utils", "_rebuild_parameter"),
    ("torch._utils", "_rebuild_parameter_with_state"),
    ("torch._tensor", "_rebuild_from_type_v2"),
    ("torch", "Tensor"),
    ("torch.nn.parameter", "Parameter"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "dtype"),
    ("numpy", "ndarray"),
    // Protocol 2 pickles encode Python 3 `bytes` (numpy array data) as
    // `_codecs.encode(str, "latin1")`: a pure text-to-bytes conversion.
    ("_codecs", "encode"),
];

/// Legacy storage classes (`torch.FloatStorage` ...) and the dtype they hold.
pub const TORCH_STORAGES: &[(&str, super::DType)] = &[
    ("FloatStorage", super::DType::F32),
    ("DoubleStorage", super::DType::F64),
    ("HalfStorage", super::DType::F16),
    ("BFloat16Storage", super::DType::BF16),
    ("LongStorage", super::DType::I64),
    ("IntStorage", super::DType::I32),
    ("ShortStorage", super::DType::I16),
    ("CharStorage", super::DType::I8),
    ("ByteStorage", super::DType::U8),
    ("BoolStorage", super::DType::Bool),
    ("UInt16Storage", super::DType::U16),
    ("UInt32Storage", super::DType::U32),
    ("UInt64Storage", super::DType::U64),
    ("ComplexFloatStorage", super::DType::C64),
    ("Float8_e4m3fnStorage", super::DType::F8E4M3),
    ("Float8_e5m2Storage", super::DType::F8E5M2),
];

/// Builtins that evaluate code, import modules, reach attributes by name or touch files.
const DANGEROUS_BUILTINS: &[(&str, &str)] = &[
    ("eval", "evaluates Python code"),
    ("exec", "evaluates Python code"),
    ("execfile", "evaluates Python code"),
    ("compile", "compiles Python code"),
    ("open", "opens files"),
    ("file", "opens files"),
    ("getattr", "reaches any attribute by name"),
    ("setattr", "sets any attribute by name"),
    ("delattr", "deletes any attribute by name"),
    ("apply", "calls any function"),
    ("__import__", "imports any module"),
    ("reload", "imports any module"),
    ("breakpoint", "starts a debugger"),
    ("input", "reads from the terminal"),
    ("globals", "exposes a module namespace"),
    ("locals", "exposes a namespace"),
    ("vars", "exposes a namespace"),
];

/// Modules (and their submodules) whose every global is dangerous, with what they can do.
const DANGEROUS_MODULES: &[(&str, &str)] = &[
    ("os", "runs shell commands and touches files"),
    ("nt", "runs shell commands and touches files"),
    ("posix", "runs shell commands and touches files"),
    ("_posixsubprocess", "starts programs"),
    ("subprocess", "starts programs"),
    ("pty", "starts programs"),
    ("commands", "runs shell commands"),
    (
        "multiprocessing",
        "starts processes (`spawnv_passfds` is a known denylist bypass)",
    ),
    ("sys", "changes the interpreter (modules, hooks, exit)"),
    ("runpy", "runs Python code"),
    ("code", "runs Python code"),
    ("codeop", "compiles Python code"),
    ("timeit", "runs Python code strings"),
    ("cProfile", "runs Python code strings"),
    ("profile", "runs Python code strings"),
    ("trace", "runs Python code"),
    ("bdb", "runs Python code under a debugger"),
    ("pdb", "runs Python code under a debugger"),
    ("importlib", "imports arbitrary modules"),
    ("imp", "imports arbitrary modules"),
    ("marshal", "loads compiled code objects"),
    ("types", "builds functions and code objects"),
    ("ctypes", "calls native code"),
    ("pickle", "loads nested pickles"),
    ("_pickle", "loads nested pickles"),
    ("cPickle", "loads nested pickles"),
    ("dill", "loads nested pickles"),
    ("joblib", "loads nested pickles"),
    ("shutil", "copies, moves and deletes files"),
    ("asyncio", "starts processes and network connections"),
    ("socket", "opens network connections"),
    ("webbrowser", "opens URLs"),
    ("httplib", "makes network requests"),
    ("http.client", "makes network requests"),
    ("urllib", "makes network requests"),
    ("urllib2", "makes network requests"),
    ("requests", "makes network requests"),
    ("aiohttp", "makes network requests"),
    ("ftplib", "makes network requests"),
    ("smtplib", "makes network requests"),
    ("telnetlib", "makes network requests"),
    (
        "torch.utils.collect_env",
        "runs shell commands (a known denylist bypass)",
    ),
    ("torch.hub", "downloads and runs code"),
    ("torch.serialization", "loads nested pickles"),
    (
        "torch.utils.cpp_extension",
        "compiles and loads native code",
    ),
    ("torch.jit", "loads and runs TorchScript"),
];

/// Single globals that are dangerous in otherwise unremarkable modules.
const DANGEROUS_NAMES: &[(&str, &str, &str)] = &[
    ("operator", "attrgetter", "reaches arbitrary attributes"),
    ("operator", "methodcaller", "calls arbitrary methods"),
    ("_operator", "attrgetter", "reaches arbitrary attributes"),
    ("_operator", "methodcaller", "calls arbitrary methods"),
    ("torch", "load", "loads nested pickles"),
    ("io", "open", "opens files"),
    ("io", "FileIO", "opens files"),
    ("_io", "open", "opens files"),
    ("_io", "FileIO", "opens files"),
];

/// Python 2 module names that the unpickler maps to Python 3 modules (`fix_imports`).
fn py3_module(module: &str) -> &str {
    match module {
        "__builtin__" | "__builtins__" | "exceptions" => "builtins",
        "copy_reg" => "copyreg",
        "cPickle" => "pickle",
        "httplib" => "http.client",
        "urllib2" => "urllib.request",
        other => other,
    }
}

fn in_module(module: &str, prefix: &str) -> bool {
    module == prefix
        || module
            .strip_prefix(prefix)
            .is_some_and(|rest| rest.starts_with('.'))
}

/// Judge a global by its module and (dotted) name.
pub fn classify(module: &str, name: &str) -> GlobalClass {
    if ALLOWED_GLOBALS.contains(&(module, name))
        || (module == "torch" && TORCH_STORAGES.iter().any(|(s, _)| *s == name))
    {
        return GlobalClass::Allowed;
    }
    let m = py3_module(module);
    if m == "builtins" {
        let head = name.split('.').next().unwrap_or(name);
        if let Some((_, why)) = DANGEROUS_BUILTINS.iter().find(|(b, _)| *b == head) {
            return GlobalClass::Dangerous(why);
        }
    }
    for (prefix, why) in DANGEROUS_MODULES {
        if in_module(module, prefix) || in_module(m, prefix) {
            return GlobalClass::Dangerous(why);
        }
    }
    if let Some((_, _, why)) = DANGEROUS_NAMES
        .iter()
        .find(|(dm, dn, _)| *dm == m && (name == *dn || name.starts_with(&format!("{dn}."))))
    {
        return GlobalClass::Dangerous(why);
    }
    if in_module(m, "numpy") {
        return GlobalClass::Dangerous(
            "is a numpy function outside the array-rebuild allowlist (numpy has been used to bypass denylists)",
        );
    }
    if in_module(m, "pandas") && name.starts_with("read_") {
        return GlobalClass::Dangerous("reads files or URLs (a known denylist bypass)");
    }
    // Protocol 4 names are attribute paths: `torch` + `os.system` reaches os through a
    // module attribute, `x` + `f.__globals__` reaches a module's namespace.
    let parts: Vec<&str> = name.split('.').collect();
    if parts.len() > 1 {
        if parts
            .iter()
            .any(|p| p.starts_with("__") && p.ends_with("__"))
        {
            return GlobalClass::Dangerous(
                "reaches interpreter internals through a dunder attribute path",
            );
        }
        for p in &parts[..parts.len() - 1] {
            if DANGEROUS_MODULES.iter().any(|(dm, _)| dm == p) || *p == "builtins" {
                return GlobalClass::Dangerous(
                    "reaches a dangerous module through an attribute path",
                );
            }
        }
    }
    GlobalClass::Unknown
}

/// Judge a global reference (dynamic and extension globals are never allowed).
pub fn classify_ref(g: &GlobalRef) -> GlobalClass {
    match &g.name {
        GlobalName::Resolved { module, name } => classify(module, name),
        GlobalName::Dynamic(_) => GlobalClass::Dangerous("imports a name computed at load time"),
        GlobalName::Extension(_) => GlobalClass::Unknown,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn globals(a: &Analysis) -> Vec<String> {
        a.globals.iter().map(GlobalRef::qualified).collect()
    }

    #[test]
    fn protocol0_global_reduce() {
        let p = b"cos\nsystem\n(S'echo pwned'\ntR.";
        let a = analyze(p, 0);
        assert!(a.complete(), "{:?}", a.fault);
        assert_eq!(globals(&a), ["os.system"]);
        assert_eq!(a.globals[0].offset, 0);
        assert_eq!(a.calls.len(), 1);
        assert_eq!(a.calls[0].op, CallOp::Reduce);
        assert_eq!(a.direct_calls(0).count(), 1);
        assert_eq!(a.end, p.len() as u64);
    }

    #[test]
    fn stack_global_resolves_memoised_names() {
        // 'os' MEMOIZE(0) 'system' MEMOIZE(1) POP POP ... BINGET 0 BINGET 1 STACK_GLOBAL
        let mut p = vec![0x80, 4];
        p.extend_from_slice(b"\x8c\x02os\x94\x8c\x06system\x94");
        p.extend_from_slice(b"00"); // pop both names
        p.extend_from_slice(b"N"); // something unrelated
        p.extend_from_slice(b"0");
        p.extend_from_slice(b"h\x00j\x01\x00\x00\x00\x93");
        let at = p.len() as u64 - 1;
        p.extend_from_slice(b"\x8c\x04echo\x85R.");
        let a = analyze(&p, 0);
        assert!(a.complete(), "{:?}", a.fault);
        assert_eq!(globals(&a), ["os.system"]);
        assert_eq!(a.globals[0].op, GlobalOp::StackGlobal);
        assert_eq!(a.globals[0].offset, at);
    }

    #[test]
    fn stack_global_on_a_call_result_is_dynamic() {
        // builtins.str('os') as the module name
        let p = b"\x80\x04\x8c\x08builtins\x8c\x03str\x93\x8c\x02os\x85R\x8c\x06system\x93N\x85R.";
        let a = analyze(p, 0);
        assert!(a.complete(), "{:?}", a.fault);
        assert!(matches!(a.globals[1].name, GlobalName::Dynamic(_)));
        assert!(matches!(
            classify_ref(&a.globals[1]),
            GlobalClass::Dangerous(_)
        ));
    }

    #[test]
    fn stack_global_on_ints_faults() {
        let a = analyze(b"\x80\x04K\x01K\x02\x93.", 0);
        assert!(a.fault.unwrap().message.contains("requires str"));
    }

    #[test]
    fn claimed_lengths_never_allocate() {
        for p in [
            &b"\x80\x04\x8d\xff\xff\xff\xff\xff\xff\xff\x7f"[..],
            b"X\xff\xff\xff\xff",
            b"\x8e\xff\xff\xff\xff\xff\xff\xff\xff",
            b"\x96\x00\x00\x00\x00\x00\x00\x00\x80",
            b"\x8b\xff\xff\xff\x7f",
            b"\x95\xff\xff\xff\xff\xff\xff\xff\xff",
        ] {
            let a = analyze(p, 0);
            let f = a.fault.expect("truncated pickle faults");
            assert!(
                f.message.contains("claims") || f.message.contains("negative"),
                "{f}"
            );
        }
    }

    #[test]
    fn memo_and_mark_faults_match_python() {
        assert!(analyze(b"h\x05.", 0)
            .fault
            .unwrap()
            .message
            .contains("memo key 5"));
        assert!(analyze(b"t.", 0).fault.unwrap().message.contains("MARK"));
        assert!(analyze(b"(R.", 0)
            .fault
            .unwrap()
            .message
            .contains("underflow"));
        assert!(analyze(b"\xff", 0)
            .fault
            .unwrap()
            .message
            .contains("unknown opcode"));
        assert!(analyze(b"\x80\x06.", 0)
            .fault
            .unwrap()
            .message
            .contains("protocol 6"));
        assert!(analyze(b"N", 0)
            .fault
            .unwrap()
            .message
            .contains("without a STOP"));
        // POP on an empty frame pops the mark, as CPython does
        assert!(analyze(b"(0N.", 0).complete());
    }

    #[test]
    fn exponential_memo_reuse_stays_linear() {
        // x = (); repeat: x = (x, x) -- a 2^n tree if copied, n nodes here
        let mut p = b"\x80\x02)q\x00".to_vec();
        for _ in 0..200 {
            p.extend_from_slice(b"h\x00h\x00\x86q\x00");
        }
        p.push(b'.');
        let a = analyze(&p, 0);
        assert!(a.complete());
        assert!(a.nodes.len() < 1000);
    }

    #[test]
    fn inst_and_obj_are_calls() {
        let a = analyze(b"(S'os'\ni__builtin__\n__import__\n.", 0);
        assert!(a.complete(), "{:?}", a.fault);
        assert_eq!(globals(&a), ["__builtin__.__import__"]);
        assert_eq!(a.calls[0].op, CallOp::Inst);
        assert!(matches!(
            classify("__builtin__", "__import__"),
            GlobalClass::Dangerous(_)
        ));
        let a = analyze(b"(cimportlib\nimport_module\nX\x02\x00\x00\x00oso.", 0);
        assert!(a.complete(), "{:?}", a.fault);
        assert_eq!(a.calls[0].op, CallOp::Obj);
        assert_eq!(a.direct_calls(0).count(), 1);
    }

    #[test]
    fn text_escapes_decode() {
        let a = analyze(b"S'\\x6fs'\nV\\u0073ystem\n\x93.", 0);
        assert!(a.complete(), "{:?}", a.fault);
        assert_eq!(globals(&a), ["os.system"]);
        assert_eq!(escape_decode(b"a\\101\\n"), b"aA\n");
    }

    #[test]
    fn longs_decode() {
        assert_eq!(le_signed(&[0xff]), Some(-1));
        assert_eq!(le_signed(&[0x00, 0x01]), Some(256));
        assert_eq!(le_signed(&[1, 0, 0, 0, 0, 0, 0, 0, 0, 0]), Some(1));
        assert_eq!(
            le_signed(&[0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19]),
            None
        );
    }

    #[test]
    fn stream_reads_consecutive_pickles() {
        let data = b"\x80\x02K\x01.\x80\x02cos\nsystem\n.\x80\xff";
        let all = analyze_stream(data, 8);
        assert_eq!(all.len(), 3);
        assert_eq!(all[1].start, 5);
        assert_eq!(globals(&all[1]), ["os.system"]);
        assert!(all[2]
            .fault
            .as_ref()
            .unwrap()
            .message
            .contains("protocol 255"));
        assert_eq!(analyze_stream(data, 2).len(), 2);
    }

    #[test]
    fn classification() {
        use GlobalClass::*;
        assert_eq!(classify("torch._utils", "_rebuild_tensor_v2"), Allowed);
        assert_eq!(classify("torch", "FloatStorage"), Allowed);
        assert_eq!(classify("collections", "OrderedDict"), Allowed);
        assert_eq!(classify("numpy", "dtype"), Allowed);
        for (m, n) in [
            ("os", "system"),
            ("posix", "system"),
            ("subprocess", "Popen"),
            ("builtins", "eval"),
            ("__builtin__", "exec"),
            ("builtins", "getattr"),
            ("runpy", "_run_code"),
            ("importlib", "import_module"),
            ("importlib.util", "find_spec"),
            ("marshal", "loads"),
            ("operator", "attrgetter"),
            ("webbrowser", "open"),
            ("requests.api", "get"),
            ("aiohttp.client", "ClientSession"),
            ("numpy.testing._private.utils", "runstring"),
            ("torch.utils.collect_env", "run"),
            ("multiprocessing.util", "spawnv_passfds"),
            ("pandas", "read_csv"),
            ("torch", "os.system"),
            ("torch._utils", "_rebuild_tensor_v2.__globals__"),
        ] {
            assert!(matches!(classify(m, n), Dangerous(_)), "{m}.{n}");
        }
        assert_eq!(classify("builtins", "set"), Unknown);
        assert_eq!(
            classify("transformers.training_args", "TrainingArguments"),
            Unknown
        );
        assert_eq!(classify("torch", "QInt8Storage"), Unknown);
        assert_eq!(classify("osmosis", "x"), Unknown);
    }
}
