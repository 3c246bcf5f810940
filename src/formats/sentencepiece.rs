//! SentencePiece `tokenizer.model`: the `ModelProto` protobuf message, read and written.
//!
//! The wire format is written by hand rather than with a protobuf crate: the reader needs
//! four messages, three wire types and a handful of fields, and a generated reader would
//! still need every check below (file size cap, piece count cap, lengths bounded by the
//! bytes left, finite scores, errors that name the field) added around it. The writer
//! needs only varints, fixed32 and length prefixes.
//!
//! Read: the pieces (text, score, type), the `trainer_spec` fields that decide how text is
//! tokenized (model type, byte fallback, special ids and pieces, vocabulary size) and the
//! `normalizer_spec` (name, precompiled character map, dummy prefix, whitespace handling).
//! Every field this module does not interpret is kept as raw bytes (ordered by field
//! number, repeated fields in file order) and written back: fields are written in
//! field-number order, as protobuf's C++ library writes them, so a file written by
//! SentencePiece reads and writes back byte-identical.
//!
//! Hostile input: the file is capped at [`MAX_FILE_LEN`], the piece count at
//! [`MAX_PIECES`], every length and count is checked against the bytes left in its message
//! before anything is allocated, nesting is fixed (ModelProto → message → fields), groups
//! (a deprecated wire type no SentencePiece file uses) are refused, and a score that is NaN
//! or infinite is refused because every tokenizer built on it would rank merges arbitrarily.

use std::path::Path;

use super::FormatError;

/// Largest tokenizer.model read (Gemma 3's, with 262,144 pieces, is 4.7 MB).
pub const MAX_FILE_LEN: u64 = 64 << 20;
/// Most pieces accepted: four times the largest vocabulary in use.
pub const MAX_PIECES: usize = 1 << 20;

/// A piece's type (`ModelProto.SentencePiece.Type`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PieceType {
    Normal,
    Unknown,
    Control,
    UserDefined,
    Unused,
    Byte,
}

impl PieceType {
    /// The protobuf enum value; llama.cpp's `token_type` uses the same numbers.
    pub fn number(self) -> i32 {
        match self {
            PieceType::Normal => 1,
            PieceType::Unknown => 2,
            PieceType::Control => 3,
            PieceType::UserDefined => 4,
            PieceType::Unused => 5,
            PieceType::Byte => 6,
        }
    }

    pub fn from_number(n: i64) -> Option<PieceType> {
        Some(match n {
            1 => PieceType::Normal,
            2 => PieceType::Unknown,
            3 => PieceType::Control,
            4 => PieceType::UserDefined,
            5 => PieceType::Unused,
            6 => PieceType::Byte,
            _ => return None,
        })
    }
}

/// `TrainerSpec.model_type`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ModelType {
    Unigram,
    Bpe,
    Word,
    Char,
}

impl ModelType {
    pub fn number(self) -> i32 {
        match self {
            ModelType::Unigram => 1,
            ModelType::Bpe => 2,
            ModelType::Word => 3,
            ModelType::Char => 4,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            ModelType::Unigram => "UNIGRAM",
            ModelType::Bpe => "BPE",
            ModelType::Word => "WORD",
            ModelType::Char => "CHAR",
        }
    }
}

/// A field kept as read: its number and its encoded value (without the tag).
#[derive(Clone, Debug, PartialEq)]
pub struct RawField {
    pub number: u32,
    pub wire: Wire,
}

/// An encoded value by wire type.
#[derive(Clone, Debug, PartialEq)]
pub enum Wire {
    Varint(u64),
    Fixed64(u64),
    Bytes(Vec<u8>),
    Fixed32(u32),
}

/// One vocabulary entry.
#[derive(Clone, Debug, PartialEq)]
pub struct Piece {
    pub piece: String,
    pub score: f32,
    pub kind: PieceType,
    /// Fields of the entry this reader does not interpret.
    pub other: Vec<RawField>,
}

impl Piece {
    pub fn new(piece: impl Into<String>, score: f32, kind: PieceType) -> Piece {
        Piece {
            piece: piece.into(),
            score,
            kind,
            other: Vec::new(),
        }
    }
}

/// The `TrainerSpec` fields that decide tokenization; `None` where the file does not set
/// the field (the accessors give protobuf's defaults).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TrainerSpec {
    pub model_type: Option<ModelType>,
    pub vocab_size: Option<i32>,
    pub byte_fallback: Option<bool>,
    pub unk_id: Option<i32>,
    pub bos_id: Option<i32>,
    pub eos_id: Option<i32>,
    pub pad_id: Option<i32>,
    pub unk_piece: Option<String>,
    pub bos_piece: Option<String>,
    pub eos_piece: Option<String>,
    pub pad_piece: Option<String>,
    /// Every other field (training corpus, sizes, flags), kept for writing back.
    pub other: Vec<RawField>,
}

impl TrainerSpec {
    pub fn model_type(&self) -> ModelType {
        self.model_type.unwrap_or(ModelType::Unigram)
    }
    pub fn byte_fallback(&self) -> bool {
        self.byte_fallback.unwrap_or(false)
    }
    /// A special id, or `None` when disabled (negative).
    fn id(v: Option<i32>, default: i32) -> Option<u32> {
        u32::try_from(v.unwrap_or(default)).ok()
    }
    pub fn unk_id(&self) -> Option<u32> {
        Self::id(self.unk_id, 0)
    }
    pub fn bos_id(&self) -> Option<u32> {
        Self::id(self.bos_id, 1)
    }
    pub fn eos_id(&self) -> Option<u32> {
        Self::id(self.eos_id, 2)
    }
    pub fn pad_id(&self) -> Option<u32> {
        Self::id(self.pad_id, -1)
    }
}

/// `NormalizerSpec` (also used for the optional denormalizer).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct NormalizerSpec {
    pub name: Option<String>,
    pub precompiled_charsmap: Option<Vec<u8>>,
    pub add_dummy_prefix: Option<bool>,
    pub remove_extra_whitespaces: Option<bool>,
    pub escape_whitespaces: Option<bool>,
    pub other: Vec<RawField>,
}

impl NormalizerSpec {
    pub fn add_dummy_prefix(&self) -> bool {
        self.add_dummy_prefix.unwrap_or(true)
    }
    pub fn remove_extra_whitespaces(&self) -> bool {
        self.remove_extra_whitespaces.unwrap_or(true)
    }
    pub fn escape_whitespaces(&self) -> bool {
        self.escape_whitespaces.unwrap_or(true)
    }
    /// The precompiled character map, when there is a non-empty one.
    pub fn charsmap(&self) -> Option<&[u8]> {
        self.precompiled_charsmap
            .as_deref()
            .filter(|m| !m.is_empty())
    }
}

/// A SentencePiece model (`ModelProto`).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SpModel {
    pub pieces: Vec<Piece>,
    pub trainer: Option<TrainerSpec>,
    pub normalizer: Option<NormalizerSpec>,
    pub denormalizer: Option<NormalizerSpec>,
    /// Other top-level fields (`self_test_data`, extensions), kept for writing back.
    pub other: Vec<RawField>,
}

impl SpModel {
    pub fn trainer(&self) -> TrainerSpec {
        self.trainer.clone().unwrap_or_default()
    }
    pub fn normalizer(&self) -> NormalizerSpec {
        self.normalizer.clone().unwrap_or_default()
    }
    /// The id of a piece with this text (the first, if a hostile file repeats one).
    pub fn id_of(&self, text: &str) -> Option<u32> {
        self.pieces
            .iter()
            .position(|p| p.piece == text)
            .map(|i| i as u32)
    }
    /// The piece's text at an id.
    pub fn text(&self, id: Option<u32>) -> Option<&str> {
        self.pieces.get(id? as usize).map(|p| p.piece.as_str())
    }
}

// ---------------------------------------------------------------------------------------
// reading

/// Read and parse `tokenizer.model`.
pub fn read(path: &Path) -> Result<SpModel, FormatError> {
    let size = std::fs::metadata(path)
        .map_err(|e| FormatError::io(path, e))?
        .len();
    if size > MAX_FILE_LEN {
        return Err(FormatError::malformed(
            path,
            format!("file is {size} bytes, more than the {MAX_FILE_LEN}-byte limit for a SentencePiece model"),
        ));
    }
    let bytes = std::fs::read(path).map_err(|e| FormatError::io(path, e))?;
    parse(path, &bytes)
}

/// A cursor over one message's bytes; `base` is the message's offset in the file, for
/// messages.
struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
    base: usize,
}

/// A parse fault: what, where. Turned into a [`FormatError`] naming the file.
type Fault = String;

impl<'a> Cursor<'a> {
    fn at(&self) -> usize {
        self.base + self.pos
    }
    fn left(&self) -> usize {
        self.bytes.len() - self.pos
    }
    fn varint(&mut self, field: &str) -> Result<u64, Fault> {
        let start = self.at();
        let mut v: u64 = 0;
        for i in 0..10 {
            let Some(&b) = self.bytes.get(self.pos) else {
                return Err(format!(
                    "truncated varint of `{field}` at byte {start}: the message ends after {i} bytes"
                ));
            };
            self.pos += 1;
            // The tenth byte may only carry the top bit of a 64-bit value.
            if i == 9 && b > 1 {
                return Err(format!(
                    "varint of `{field}` at byte {start} overflows 64 bits"
                ));
            }
            v |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(format!(
            "varint of `{field}` at byte {start} is longer than 10 bytes"
        ))
    }
    fn take(&mut self, n: usize, field: &str) -> Result<&'a [u8], Fault> {
        if n > self.left() {
            return Err(format!(
                "truncated `{field}` at byte {}: needs {n} bytes, {} left in its message",
                self.at(),
                self.left()
            ));
        }
        let s = &self.bytes[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }
    /// The next tag: (field number, wire type).
    fn tag(&mut self, msg: &str) -> Result<(u32, u8), Fault> {
        let at = self.at();
        let t = self.varint(&format!("{msg} field tag"))?;
        let number = u32::try_from(t >> 3)
            .ok()
            .filter(|n| *n >= 1 && *n < (1 << 29))
            .ok_or_else(|| format!("{msg} has a field number out of range at byte {at}"))?;
        Ok((number, (t & 7) as u8))
    }
    /// Read one value of `wire` type.
    fn value(&mut self, wire: u8, field: &str) -> Result<Wire, Fault> {
        let start = self.at();
        let w = match wire {
            0 => Wire::Varint(self.varint(field)?),
            1 => {
                let b = self.take(8, field)?;
                Wire::Fixed64(u64::from_le_bytes(
                    b.try_into().map_err(|_| field.to_owned())?,
                ))
            }
            2 => {
                let len = self.varint(&format!("{field} length"))?;
                let len = usize::try_from(len)
                    .ok()
                    .filter(|l| *l <= self.left())
                    .ok_or_else(|| {
                        format!(
                            "truncated `{field}` at byte {}: its length says {len} bytes, {} left in its message",
                            self.at(),
                            self.left()
                        )
                    })?;
                Wire::Bytes(self.take(len, field)?.to_vec())
            }
            5 => {
                let b = self.take(4, field)?;
                Wire::Fixed32(u32::from_le_bytes(
                    b.try_into().map_err(|_| field.to_owned())?,
                ))
            }
            3 | 4 => {
                return Err(format!(
                "`{field}` at byte {start} is a protobuf group, which SentencePiece never writes"
            ))
            }
            w => {
                return Err(format!(
                    "`{field}` at byte {start} has unknown wire type {w}"
                ))
            }
        };
        Ok(w)
    }
}

fn want_varint(w: Wire, field: &str) -> Result<u64, Fault> {
    match w {
        Wire::Varint(v) => Ok(v),
        _ => Err(format!("`{field}` is not a varint")),
    }
}

fn want_bytes(w: Wire, field: &str) -> Result<Vec<u8>, Fault> {
    match w {
        Wire::Bytes(b) => Ok(b),
        _ => Err(format!("`{field}` is not length-delimited")),
    }
}

fn want_string(w: Wire, field: &str) -> Result<String, Fault> {
    String::from_utf8(want_bytes(w, field)?).map_err(|e| {
        format!(
            "`{field}` is not valid UTF-8 (first bad byte at {})",
            e.utf8_error().valid_up_to()
        )
    })
}

/// int32 as protobuf encodes it: the low 32 bits of a sign-extended varint.
fn want_i32(w: Wire, field: &str) -> Result<i32, Fault> {
    Ok(want_varint(w, field)? as i32)
}

fn want_bool(w: Wire, field: &str) -> Result<bool, Fault> {
    Ok(want_varint(w, field)? != 0)
}

/// Parse a `ModelProto` from bytes; `path` names the file in errors.
pub fn parse(path: &Path, bytes: &[u8]) -> Result<SpModel, FormatError> {
    parse_model(bytes).map_err(|f| FormatError::malformed(path, f))
}

fn sub<'a>(bytes: &'a [u8], base: usize) -> Cursor<'a> {
    Cursor {
        bytes,
        pos: 0,
        base,
    }
}

fn parse_model(bytes: &[u8]) -> Result<SpModel, Fault> {
    let mut m = SpModel::default();
    let mut c = sub(bytes, 0);
    while c.left() > 0 {
        let (number, wire) = c.tag("ModelProto")?;
        let name = match number {
            1 => format!("pieces[{}]", m.pieces.len()),
            2 => "trainer_spec".into(),
            3 => "normalizer_spec".into(),
            5 => "denormalizer_spec".into(),
            n => format!("ModelProto field {n}"),
        };
        let w = c.value(wire, &name)?;
        // A sub-message starts after its tag and length; the value is read whole, so its
        // offset is where the cursor is now minus its length.
        match number {
            1 | 2 | 3 | 5 => {
                let body = want_bytes(w, &name)?;
                let base = c.at() - body.len();
                match number {
                    1 => {
                        if m.pieces.len() >= MAX_PIECES {
                            return Err(format!(
                                "more than {MAX_PIECES} `pieces`: over the cap for a vocabulary"
                            ));
                        }
                        m.pieces.push(parse_piece(&body, base, &name)?);
                    }
                    2 => m.trainer = Some(parse_trainer(&body, base)?),
                    3 => m.normalizer = Some(parse_normalizer(&body, base, &name)?),
                    _ => m.denormalizer = Some(parse_normalizer(&body, base, &name)?),
                }
            }
            _ => m.other.push(RawField { number, wire: w }),
        }
    }
    m.other.sort_by_key(|f| f.number);
    Ok(m)
}

fn parse_piece(bytes: &[u8], base: usize, name: &str) -> Result<Piece, Fault> {
    let mut c = sub(bytes, base);
    let mut p = Piece::new("", 0.0, PieceType::Normal);
    while c.left() > 0 {
        let (number, wire) = c.tag(name)?;
        let field = match number {
            1 => format!("{name}.piece"),
            2 => format!("{name}.score"),
            3 => format!("{name}.type"),
            n => format!("{name} field {n}"),
        };
        let w = c.value(wire, &field)?;
        match number {
            1 => p.piece = want_string(w, &field)?,
            2 => {
                let Wire::Fixed32(bits) = w else {
                    return Err(format!("`{field}` is not a 32-bit float"));
                };
                let s = f32::from_bits(bits);
                if !s.is_finite() {
                    return Err(format!(
                        "`{field}` is {s}: a score must be a finite number (piece `{}`)",
                        p.piece
                    ));
                }
                p.score = s;
            }
            3 => {
                let v = want_varint(w, &field)?;
                p.kind = PieceType::from_number(v as i64)
                    .ok_or_else(|| format!("`{field}` is {v}, not a piece type (1 to 6)"))?;
            }
            _ => p.other.push(RawField { number, wire: w }),
        }
    }
    p.other.sort_by_key(|f| f.number);
    Ok(p)
}

fn parse_trainer(bytes: &[u8], base: usize) -> Result<TrainerSpec, Fault> {
    let mut c = sub(bytes, base);
    let mut t = TrainerSpec::default();
    while c.left() > 0 {
        let (number, wire) = c.tag("trainer_spec")?;
        let field = match number {
            3 => "trainer_spec.model_type".to_owned(),
            4 => "trainer_spec.vocab_size".to_owned(),
            35 => "trainer_spec.byte_fallback".to_owned(),
            40 => "trainer_spec.unk_id".to_owned(),
            41 => "trainer_spec.bos_id".to_owned(),
            42 => "trainer_spec.eos_id".to_owned(),
            43 => "trainer_spec.pad_id".to_owned(),
            45 => "trainer_spec.unk_piece".to_owned(),
            46 => "trainer_spec.bos_piece".to_owned(),
            47 => "trainer_spec.eos_piece".to_owned(),
            48 => "trainer_spec.pad_piece".to_owned(),
            n => format!("trainer_spec field {n}"),
        };
        let w = c.value(wire, &field)?;
        match number {
            3 => {
                let v = want_varint(w, &field)?;
                t.model_type = Some(match v {
                    1 => ModelType::Unigram,
                    2 => ModelType::Bpe,
                    3 => ModelType::Word,
                    4 => ModelType::Char,
                    _ => return Err(format!("`{field}` is {v}, not a model type (1 to 4)")),
                });
            }
            4 => t.vocab_size = Some(want_i32(w, &field)?),
            35 => t.byte_fallback = Some(want_bool(w, &field)?),
            40 => t.unk_id = Some(want_i32(w, &field)?),
            41 => t.bos_id = Some(want_i32(w, &field)?),
            42 => t.eos_id = Some(want_i32(w, &field)?),
            43 => t.pad_id = Some(want_i32(w, &field)?),
            45 => t.unk_piece = Some(want_string(w, &field)?),
            46 => t.bos_piece = Some(want_string(w, &field)?),
            47 => t.eos_piece = Some(want_string(w, &field)?),
            48 => t.pad_piece = Some(want_string(w, &field)?),
            _ => t.other.push(RawField { number, wire: w }),
        }
    }
    t.other.sort_by_key(|f| f.number);
    Ok(t)
}

fn parse_normalizer(bytes: &[u8], base: usize, name: &str) -> Result<NormalizerSpec, Fault> {
    let mut c = sub(bytes, base);
    let mut n = NormalizerSpec::default();
    while c.left() > 0 {
        let (number, wire) = c.tag(name)?;
        let field = match number {
            1 => format!("{name}.name"),
            2 => format!("{name}.precompiled_charsmap"),
            3 => format!("{name}.add_dummy_prefix"),
            4 => format!("{name}.remove_extra_whitespaces"),
            5 => format!("{name}.escape_whitespaces"),
            k => format!("{name} field {k}"),
        };
        let w = c.value(wire, &field)?;
        match number {
            1 => n.name = Some(want_string(w, &field)?),
            2 => n.precompiled_charsmap = Some(want_bytes(w, &field)?),
            3 => n.add_dummy_prefix = Some(want_bool(w, &field)?),
            4 => n.remove_extra_whitespaces = Some(want_bool(w, &field)?),
            5 => n.escape_whitespaces = Some(want_bool(w, &field)?),
            _ => n.other.push(RawField { number, wire: w }),
        }
    }
    n.other.sort_by_key(|f| f.number);
    Ok(n)
}

// ---------------------------------------------------------------------------------------
// writing

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn put_field(out: &mut Vec<u8>, f: &RawField) {
    let wire = match f.wire {
        Wire::Varint(_) => 0,
        Wire::Fixed64(_) => 1,
        Wire::Bytes(_) => 2,
        Wire::Fixed32(_) => 5,
    };
    put_varint(out, (u64::from(f.number) << 3) | wire);
    match &f.wire {
        Wire::Varint(v) => put_varint(out, *v),
        Wire::Fixed64(v) => out.extend_from_slice(&v.to_le_bytes()),
        Wire::Bytes(b) => {
            put_varint(out, b.len() as u64);
            out.extend_from_slice(b);
        }
        Wire::Fixed32(v) => out.extend_from_slice(&v.to_le_bytes()),
    }
}

fn varint_field(number: u32, v: u64) -> RawField {
    RawField {
        number,
        wire: Wire::Varint(v),
    }
}

fn i32_field(number: u32, v: i32) -> RawField {
    // int32 is sign-extended to 64 bits on the wire.
    varint_field(number, v as i64 as u64)
}

fn bytes_field(number: u32, b: Vec<u8>) -> RawField {
    RawField {
        number,
        wire: Wire::Bytes(b),
    }
}

/// Encode a message: known fields and kept ones, in field-number order (a stable sort, so
/// repeated fields keep their order).
fn message(mut fields: Vec<RawField>) -> Vec<u8> {
    fields.sort_by_key(|f| f.number);
    let mut out = Vec::new();
    for f in &fields {
        put_field(&mut out, f);
    }
    out
}

fn piece_bytes(p: &Piece) -> Vec<u8> {
    let mut f = vec![
        bytes_field(1, p.piece.as_bytes().to_vec()),
        RawField {
            number: 2,
            wire: Wire::Fixed32(p.score.to_bits()),
        },
    ];
    // SentencePiece sets `type` only on pieces that are not NORMAL (the default), and
    // protobuf writes only fields that were set.
    if p.kind != PieceType::Normal {
        f.push(varint_field(3, p.kind.number() as u64));
    }
    f.extend(p.other.iter().cloned());
    message(f)
}

fn trainer_bytes(t: &TrainerSpec) -> Vec<u8> {
    let mut f = t.other.clone();
    let opt_i32 = |f: &mut Vec<RawField>, n, v: Option<i32>| {
        if let Some(v) = v {
            f.push(i32_field(n, v));
        }
    };
    if let Some(m) = t.model_type {
        f.push(varint_field(3, m.number() as u64));
    }
    opt_i32(&mut f, 4, t.vocab_size);
    if let Some(b) = t.byte_fallback {
        f.push(varint_field(35, u64::from(b)));
    }
    opt_i32(&mut f, 40, t.unk_id);
    opt_i32(&mut f, 41, t.bos_id);
    opt_i32(&mut f, 42, t.eos_id);
    opt_i32(&mut f, 43, t.pad_id);
    for (n, s) in [
        (45, &t.unk_piece),
        (46, &t.bos_piece),
        (47, &t.eos_piece),
        (48, &t.pad_piece),
    ] {
        if let Some(s) = s {
            f.push(bytes_field(n, s.as_bytes().to_vec()));
        }
    }
    message(f)
}

fn normalizer_bytes(n: &NormalizerSpec) -> Vec<u8> {
    let mut f = n.other.clone();
    if let Some(s) = &n.name {
        f.push(bytes_field(1, s.as_bytes().to_vec()));
    }
    if let Some(m) = &n.precompiled_charsmap {
        f.push(bytes_field(2, m.clone()));
    }
    for (k, b) in [
        (3, n.add_dummy_prefix),
        (4, n.remove_extra_whitespaces),
        (5, n.escape_whitespaces),
    ] {
        if let Some(b) = b {
            f.push(varint_field(k, u64::from(b)));
        }
    }
    message(f)
}

/// Encode a model as `tokenizer.model` bytes.
pub fn write(m: &SpModel) -> Vec<u8> {
    let mut f: Vec<RawField> = m
        .pieces
        .iter()
        .map(|p| bytes_field(1, piece_bytes(p)))
        .collect();
    if let Some(t) = &m.trainer {
        f.push(bytes_field(2, trainer_bytes(t)));
    }
    if let Some(n) = &m.normalizer {
        f.push(bytes_field(3, normalizer_bytes(n)));
    }
    if let Some(n) = &m.denormalizer {
        f.push(bytes_field(5, normalizer_bytes(n)));
    }
    f.extend(m.other.iter().cloned());
    message(f)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn small() -> SpModel {
        SpModel {
            pieces: vec![
                Piece::new("<unk>", 0.0, PieceType::Unknown),
                Piece::new("<s>", 0.0, PieceType::Control),
                Piece::new("</s>", 0.0, PieceType::Control),
                Piece::new("<0x41>", 0.0, PieceType::Byte),
                Piece::new("▁a", -1.0, PieceType::Normal),
            ],
            trainer: Some(TrainerSpec {
                model_type: Some(ModelType::Bpe),
                vocab_size: Some(5),
                byte_fallback: Some(true),
                pad_id: Some(-1),
                other: vec![bytes_field(1, b"corpus.txt".to_vec())],
                ..TrainerSpec::default()
            }),
            normalizer: Some(NormalizerSpec {
                name: Some("identity".into()),
                add_dummy_prefix: Some(true),
                ..NormalizerSpec::default()
            }),
            denormalizer: None,
            other: vec![bytes_field(4, vec![0x0a, 0x00])],
        }
    }

    #[test]
    fn writes_and_reads_back() {
        let m = small();
        let b = write(&m);
        let back = parse(Path::new("tokenizer.model"), &b).unwrap();
        assert_eq!(back, m);
        assert_eq!(write(&back), b);
        assert_eq!(back.trainer().pad_id(), None);
        assert_eq!(back.trainer().bos_id(), Some(1));
        assert_eq!(back.trainer().model_type(), ModelType::Bpe);
    }

    fn err(b: &[u8]) -> String {
        parse(Path::new("tokenizer.model"), b)
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn hostile_input_names_the_field() {
        let b = write(&small());
        let e = err(&b[..b.len() - 3]);
        assert!(e.contains("truncated"), "{e}");
        let mut nan = small();
        nan.pieces[4].score = f32::NAN;
        let e = err(&write(&nan));
        assert!(e.contains("`pieces[4].score` is NaN"), "{e}");
        let mut inf = small();
        inf.pieces[1].score = f32::NEG_INFINITY;
        assert!(err(&write(&inf)).contains("pieces[1].score"));
        // A length that runs past the end.
        let e = err(&[0x0a, 0xff, 0xff, 0x03, 0x00]);
        assert!(e.contains("pieces[0]") && e.contains("length says"), "{e}");
        // Groups and bad wire types.
        assert!(err(&[0x0b]).contains("group"));
        assert!(err(&[0x0f]).contains("wire type 7"));
        // An overlong varint.
        assert!(
            err(&[0x08, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f])
                .contains("overflows")
        );
        // A piece type outside the enum.
        let e = err(&[0x0a, 0x02, 0x18, 0x09]);
        assert!(e.contains("`pieces[0].type` is 9"), "{e}");
    }

    #[test]
    fn piece_count_is_capped() {
        // Empty pieces cost two bytes each: the cap is reached well inside 4 MB.
        let mut b = Vec::with_capacity(2 * (MAX_PIECES + 1));
        for _ in 0..=MAX_PIECES {
            b.extend_from_slice(&[0x0a, 0x00]);
        }
        let e = err(&b);
        assert!(e.contains("more than 1048576 `pieces`"), "{e}");
    }

    fn piece_type() -> impl Strategy<Value = PieceType> {
        (1i64..=6).prop_map(|n| PieceType::from_number(n).unwrap())
    }

    proptest! {
        #[test]
        fn round_trip(pieces in proptest::collection::vec(("\\PC{0,8}", -1e6f32..1e6, piece_type()), 0..40),
                      dummy in proptest::option::of(any::<bool>()), pad in proptest::option::of(-5i32..5),
                      charsmap in proptest::option::of(proptest::collection::vec(any::<u8>(), 0..64))) {
            let m = SpModel {
                pieces: pieces.into_iter().map(|(p, s, k)| Piece::new(p, s, k)).collect(),
                trainer: Some(TrainerSpec { pad_id: pad, model_type: Some(ModelType::Bpe), ..TrainerSpec::default() }),
                normalizer: Some(NormalizerSpec { add_dummy_prefix: dummy, precompiled_charsmap: charsmap, ..NormalizerSpec::default() }),
                denormalizer: None,
                other: Vec::new(),
            };
            let b = write(&m);
            let back = parse(Path::new("t.model"), &b).unwrap();
            prop_assert_eq!(&back, &m);
            prop_assert_eq!(write(&back), b);
        }

        /// What the fuzz target checks: any bytes parse or fail; what parses writes back
        /// to the same model, and writing is idempotent. Mutations of a valid model reach
        /// deeper than random bytes.
        #[test]
        fn arbitrary_and_mutated_bytes_round_trip_or_fail(
            b in proptest::collection::vec(any::<u8>(), 0..256),
            flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..4),
        ) {
            let mut mutated = write(&small());
            for (at, v) in flips {
                let n = mutated.len();
                mutated[at % n] = v;
            }
            for input in [b, mutated] {
                if let Ok(m) = parse(Path::new("t.model"), &input) {
                    let out = write(&m);
                    let again = parse(Path::new("t.model"), &out).unwrap();
                    prop_assert_eq!(&again, &m);
                    prop_assert_eq!(write(&again), out);
                }
            }
        }
    }
}
