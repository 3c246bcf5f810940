//! Pipeline files: which model to vet, under which policy, where the outputs go, and which
//! steps run. Schema: `schemas/pipeline.schema.json`. Unknown keys are refused; every
//! syntax error names `file:line:column` (the same reporting as policy files, see
//! [`crate::policy::file::parse`]).
//!
//! Steps are keys of `steps:`; whatever order they are written in, they run in pipeline
//! order (scan, convert, verify, policy, parity, sign), because each consumes what the
//! earlier ones produce.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::PipelineError;
use crate::policy::file::ParityThreshold;

/// Pipeline files are small; anything larger is not one.
pub const MAX_PIPELINE_BYTES: u64 = 1 << 20;

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineFile {
    /// Shown in reports; defaults to the file's stem.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The source model (directory or weight file), relative to the pipeline file, or a
    /// Hugging Face Hub repository `hf://ORG/NAME[@REVISION]`.
    pub model: PathBuf,
    /// With an `hf://` model: take only the repository's files matching these globs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub include: Vec<String>,
    /// With an `hf://` model: leave out the files matching these globs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exclude: Vec<String>,
    /// The policy file, relative to the pipeline file. Needed by the `policy` step and
    /// by the `parity` step's default thresholds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<PathBuf>,
    /// The output folder, relative to the pipeline file (default `<stem>.out` beside it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub out: Option<PathBuf>,
    pub steps: Steps,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Steps {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scan: Option<ScanStep>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub convert: Option<ConvertStep>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verify: Option<VerifyStep>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<PolicyStep>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parity: Option<ParityStep>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sign: Option<SignStep>,
}

/// Scan the source model (pickle, remote code, structure, values).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScanStep {}

/// Convert the source into one or more targets, written into the output folder as
/// `NAME.gguf` (GGUF) or `NAME/` (a Hugging Face safetensors directory).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConvertStep {
    pub targets: Vec<Target>,
    /// Worker threads (default: all cores).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threads: Option<usize>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TargetFormat {
    Gguf,
    Safetensors,
}

impl TargetFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            TargetFormat::Gguf => "gguf",
            TargetFormat::Safetensors => "safetensors",
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Target {
    /// File-safe name: letters, digits, `-`, `_`, `.`.
    pub name: String,
    /// Target type (`Q8_0`, `Q4_K_M`, `F16`, ...); default as `modelgate convert`.
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub ty: Option<String>,
    pub format: TargetFormat,
    #[serde(default)]
    pub options: TargetOptions,
    /// The importance matrix the quantizers weight their errors by: computed by the engine
    /// from a calibration text (once per pipeline for every target asking for the same
    /// text, `ctx` and `chunks`), or an existing imatrix file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub imatrix: Option<ImatrixSpec>,
    /// Choose each tensor's type to minimise the predicted KLD at this many bits per weight
    /// (`convert --target-bpw`); the sensitivity pass runs on `imatrix.text`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_bpw: Option<f64>,
    /// Like `target_bpw`, with the whole file at most this size (`convert --max-size`):
    /// bytes, or a size such as `800M`, `4.5G`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_size: Option<Size>,
    /// With `target_bpw` or `max_size`: layers probed per kind of layer tensor (default 4).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probes: Option<usize>,
}

/// `imatrix:` of a target: `{text: PATH, ctx: N, chunks: N}` or `{file: PATH}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImatrixSpec {
    /// A calibration text (UTF-8), relative to the pipeline file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<PathBuf>,
    /// Tokens per chunk (default 512, as `modelgate imatrix`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ctx: Option<usize>,
    /// At most this many chunks (default: all the text holds; a budget mix's sensitivity
    /// pass takes at most 4 unless this is given).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chunks: Option<usize>,
    /// An existing imatrix file (llama.cpp's GGUF or legacy `.dat`, or `modelgate
    /// imatrix`'s), relative to the pipeline file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<PathBuf>,
}

/// Chunk size of a computed imatrix when the pipeline file gives none.
pub const DEFAULT_IMATRIX_CTX: usize = 512;

impl ImatrixSpec {
    /// Tokens per chunk.
    pub fn ctx(&self) -> usize {
        self.ctx.unwrap_or(DEFAULT_IMATRIX_CTX)
    }
}

/// A size: a number of bytes, or text such as `800M` (`convert --max-size`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Size {
    Bytes(u64),
    Text(String),
}

impl Size {
    /// The size in bytes; `Err` says what is wrong.
    pub fn bytes(&self) -> Result<u64, String> {
        match self {
            Size::Bytes(0) => Err("a size of 0 bytes".into()),
            Size::Bytes(n) => Ok(*n),
            Size::Text(s) => crate::convert::budget::parse_size(s).map_err(|e| e.to_string()),
        }
    }
}

impl Target {
    /// Whether the target is a size-budget mix.
    pub fn is_budget(&self) -> bool {
        self.target_bpw.is_some() || self.max_size.is_some()
    }
}

/// The recipe options of `modelgate convert`, by the same names.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetOptions {
    #[serde(default)]
    pub leave_output_tensor: bool,
    #[serde(default)]
    pub pure: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_tensor_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_embedding_type: Option<String>,
    /// `REGEX=TYPE`, first match wins.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tensor_types: Vec<String>,
    #[serde(default)]
    pub allow_requantize: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pre_tokenizer: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quantized_by: Option<String>,
}

/// Scan every converted artifact and check that it opens with the tensors the conversion
/// wrote.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VerifyStep {}

/// Apply the policy file to the source model, and its quantization rule to every artifact.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyStep {}

/// Compare each target's next-token distributions with a reference.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ParityStep {
    /// `source` (the source model) or the name of a target.
    #[serde(default = "source")]
    pub reference: String,
    /// Target names to compare (default: every target but the reference).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub targets: Option<Vec<String>>,
    /// The text to evaluate on, relative to the pipeline file.
    pub text: PathBuf,
    /// Tokens per chunk.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ctx: Option<usize>,
    /// Chunks of the text to evaluate (default: all that fit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chunks: Option<usize>,
    /// Thresholds by quant type (or `default`), overriding the policy's `parity.thresholds`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub thresholds: BTreeMap<String, ParityThreshold>,
}

fn source() -> String {
    "source".to_owned()
}

/// How the sign step establishes who signed (the `sign`/`verify` methods of
/// docs/sign-sigstore.md).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SignMethod {
    /// A private key; the verifier holds its public key.
    #[default]
    Key,
    /// A private key and the private-PKI certificate that certifies it.
    Certificate,
    /// Sigstore keyless: the CI's OIDC identity, a Fulcio certificate and a Rekor entry.
    Sigstore,
}

impl SignMethod {
    pub fn as_str(self) -> &'static str {
        match self {
            SignMethod::Key => "key",
            SignMethod::Certificate => "certificate",
            SignMethod::Sigstore => "sigstore",
        }
    }
}

/// Sign artifacts. `method: key` (the default) and `certificate` read a private key
/// (PKCS#8 PEM) from the environment variable `key_env` when it is set, else from the
/// file `key`; `certificate` adds the key's certificate and its issuers. `sigstore`
/// signs keyless with the CI's ambient OIDC token and takes no key.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignStep {
    #[serde(default)]
    pub method: SignMethod,
    /// `method: certificate`: the signing certificate (PEM), relative to the pipeline file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate: Option<PathBuf>,
    /// `method: certificate`: the certificate's issuers (PEM files); a self-signed root is
    /// left out of the bundle.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub certificate_chain: Vec<PathBuf>,
    /// `method: sigstore`: use the Sigstore staging instance instead of production.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub staging: bool,
    /// `method: sigstore`: also timestamp each signature at this RFC 3161 authority.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tsa_url: Option<String>,
    /// Private key file, relative to the pipeline file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<PathBuf>,
    /// Name of an environment variable holding the private key PEM.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_env: Option<String>,
    /// Target names to sign (default: every target).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifacts: Option<Vec<String>>,
    /// Also sign the gate results as an audit attestation (`*.att.sig`); default true.
    #[serde(default = "yes")]
    pub attest: bool,
}

fn yes() -> bool {
    true
}

/// A loaded pipeline file with its paths resolved against its folder.
#[derive(Clone, Debug)]
pub struct Pipeline {
    pub path: PathBuf,
    pub name: String,
    pub file: PipelineFile,
    pub digest: crate::types::Sha256Digest,
    /// The source model: a local path, or, for an `hf://` model, the local copy once
    /// the run has fetched it (until then the reference as written).
    pub model: PathBuf,
    /// The Hub repository and revision when the model is `hf://`.
    pub hub: Option<crate::hub::HubRef>,
    pub policy: Option<PathBuf>,
    pub out: PathBuf,
}

impl Pipeline {
    /// Read, parse and check a pipeline file.
    pub fn load(path: &Path) -> Result<Pipeline, PipelineError> {
        let (bytes, text) =
            crate::userfile::read_capped(path, MAX_PIPELINE_BYTES, "a pipeline file").map_err(
                |e| match e {
                    crate::userfile::ReadError::Io(source) => PipelineError::Io {
                        path: path.to_owned(),
                        source,
                    },
                    crate::userfile::ReadError::Invalid(message) => PipelineError::Invalid {
                        path: path.to_owned(),
                        message,
                    },
                },
            )?;
        let file = parse(path, &text)?;
        let base = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
            _ => PathBuf::from("."),
        };
        let stem = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "pipeline".to_owned());
        let out = normalize(&match &file.out {
            Some(o) => base.join(o),
            None => base.join(format!("{stem}.out")),
        });
        let hub = match file.model.to_str().and_then(crate::hub::HubRef::parse) {
            Some(Ok(r)) => Some(r),
            Some(Err(e)) => return Err(invalid(path, format!("`model`: {e}"))),
            None => None,
        };
        let model = match &hub {
            Some(_) => file.model.clone(),
            None => normalize(&base.join(&file.model)),
        };
        Ok(Pipeline {
            path: path.to_owned(),
            name: file.name.clone().unwrap_or(stem),
            model,
            hub,
            policy: file.policy.as_ref().map(|p| normalize(&base.join(p))),
            out,
            digest: crate::types::Sha256Digest::of(&bytes),
            file,
        })
    }

    /// The source model as reports name it: `hf://ORG/NAME@REVISION` as asked for, or the
    /// path. Never the local copy of a Hub model, which changes from run to run.
    pub fn model_name(&self) -> String {
        match &self.hub {
            Some(r) => r.to_string(),
            None => self.model.display().to_string(),
        }
    }

    /// A path named in the pipeline file, resolved against its folder.
    pub fn resolve(&self, p: &Path) -> PathBuf {
        match self.path.parent() {
            Some(b) if !b.as_os_str().is_empty() => normalize(&b.join(p)),
            _ => p.to_owned(),
        }
    }
}

/// `a/b/../c` -> `a/c`, lexically (no file system access, so symlinks are not followed;
/// the paths only need to read well in reports). A leading `..` is kept.
pub fn normalize(p: &Path) -> PathBuf {
    use std::path::Component;
    let mut out: Vec<Component<'_>> = Vec::new();
    for c in p.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => match out.last() {
                Some(Component::Normal(_)) => {
                    out.pop();
                }
                Some(Component::RootDir | Component::Prefix(_)) => {}
                _ => out.push(c),
            },
            _ => out.push(c),
        }
    }
    if out.is_empty() {
        return PathBuf::from(".");
    }
    out.iter().collect()
}

fn invalid(path: &Path, message: String) -> PipelineError {
    PipelineError::Invalid {
        path: path.to_owned(),
        message,
    }
}

/// The path of a target's artifact, relative to the output folder: `NAME.gguf`, or the
/// directory `NAME` of a safetensors target.
pub fn artifact_rel(t: &Target) -> String {
    match t.format {
        TargetFormat::Gguf => format!("{}.gguf", t.name),
        TargetFormat::Safetensors => t.name.clone(),
    }
}

/// Targets that share one computed importance matrix: the same calibration text (as the
/// pipeline file names it, normalized), `ctx` and `chunks`.
#[derive(Clone, Debug, PartialEq)]
pub struct ImatrixGroup {
    pub text: PathBuf,
    pub ctx: usize,
    pub chunks: Option<usize>,
    /// Indices into the targets, in file order.
    pub targets: Vec<usize>,
}

impl ImatrixGroup {
    /// Where the matrix is written, relative to the output folder: named after the first
    /// target that uses it.
    pub fn file_name(&self, targets: &[Target]) -> String {
        format!("{}.imatrix.gguf", targets[self.targets[0]].name)
    }
}

/// The importance matrices to compute, in the order of the first target using each.
pub fn imatrix_groups(targets: &[Target]) -> Vec<ImatrixGroup> {
    let mut groups: Vec<ImatrixGroup> = Vec::new();
    for (i, t) in targets.iter().enumerate() {
        let Some(spec) = &t.imatrix else { continue };
        let Some(text) = &spec.text else { continue };
        let text = normalize(text);
        let (ctx, chunks) = (spec.ctx(), spec.chunks);
        match groups
            .iter_mut()
            .find(|g| g.text == text && g.ctx == ctx && g.chunks == chunks)
        {
            Some(g) => g.targets.push(i),
            None => groups.push(ImatrixGroup {
                text,
                ctx,
                chunks,
                targets: vec![i],
            }),
        }
    }
    groups
}

/// What a target's `imatrix`, `target_bpw`, `max_size` and `probes` say together, and
/// whether its type needs an importance matrix it does not have.
fn check_calibration(t: &Target) -> Result<(), String> {
    if let Some(m) = &t.imatrix {
        match (&m.text, &m.file) {
            (Some(_), Some(_)) => {
                return Err(
                    "`imatrix` takes `text` (compute one) or `file` (use one), not both".into(),
                )
            }
            (None, None) => {
                return Err(
                    "`imatrix` needs `text: CALIBRATION.txt` or `file: IMATRIX.gguf`".into(),
                )
            }
            (None, Some(_)) if m.ctx.is_some() || m.chunks.is_some() => {
                return Err(
                    "`imatrix.ctx` and `imatrix.chunks` apply to `imatrix.text`, not to a `file`"
                        .into(),
                )
            }
            _ => {}
        }
        if m.ctx == Some(0) || m.chunks == Some(0) {
            return Err("`imatrix.ctx` and `imatrix.chunks` must be at least 1".into());
        }
    }
    if let Some(b) = t.target_bpw {
        if !b.is_finite() || b <= 0.0 {
            return Err(format!(
                "`target_bpw: {b}` is not a number of bits per weight above 0"
            ));
        }
    }
    if let Some(s) = &t.max_size {
        s.bytes().map_err(|e| format!("`max_size`: {e}"))?;
    }
    if t.probes.is_some() && !t.is_budget() {
        return Err("`probes` applies to a `target_bpw` or `max_size` target".into());
    }
    if t.probes == Some(0) {
        return Err("`probes` must be at least 1".into());
    }
    if t.is_budget() {
        if t.target_bpw.is_some() && t.max_size.is_some() {
            return Err("give `target_bpw` or `max_size`, not both".into());
        }
        if let Some(ty) = &t.ty {
            return Err(format!(
                "a `target_bpw` or `max_size` target chooses each tensor's type itself: drop `type: {ty}`"
            ));
        }
        if t.format != TargetFormat::Gguf {
            return Err(
                "a `target_bpw` or `max_size` target is written as GGUF: say `format: gguf`".into(),
            );
        }
        if t.imatrix.as_ref().and_then(|m| m.text.as_ref()).is_none() {
            return Err("`target_bpw` and `max_size` measure each tensor's sensitivity on a calibration text: add `imatrix: { text: CALIBRATION.txt }`".into());
        }
    }
    if t.imatrix.is_none() {
        let ft = t.ty.as_deref().and_then(crate::convert::FileType::parse);
        if let Some(ft) = ft.filter(|f| {
            crate::convert::recipe::requires_imatrix("blk.0.ffn_up.weight", f.default_type())
        }) {
            return Err(format!(
                "{ft} needs an importance matrix: add `imatrix: {{ text: CALIBRATION.txt }}` (computed by modelgate) or `imatrix: {{ file: IMATRIX.gguf }}`"
            ));
        }
    }
    Ok(())
}

/// Parse pipeline text; `path` names the file in errors. Checks what the schema cannot:
/// target names unique and file-safe, step references to existing targets.
pub fn parse(path: &Path, text: &str) -> Result<PipelineFile, PipelineError> {
    let file: PipelineFile = crate::userfile::yaml(text).map_err(|e| PipelineError::Syntax {
        path: path.to_owned(),
        line: e.line,
        column: e.column,
        message: e.message,
    })?;
    let targets: &[Target] = file
        .steps
        .convert
        .as_ref()
        .map_or(&[], |c| c.targets.as_slice());
    if let Some(c) = &file.steps.convert {
        if c.targets.is_empty() {
            return Err(invalid(
                path,
                "`steps.convert.targets` is empty; list at least one target".into(),
            ));
        }
        if c.threads == Some(0) {
            return Err(invalid(
                path,
                "`steps.convert.threads` must be at least 1".into(),
            ));
        }
    }
    for (i, t) in targets.iter().enumerate() {
        let safe = !t.name.is_empty()
            && t.name != "source"
            && !t.name.starts_with('.')
            && t.name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        if !safe {
            return Err(invalid(
                path,
                format!(
                    "target name `{}` must be letters, digits, `-`, `_` or `.`, not start with `.`, and not be `source`",
                    t.name
                ),
            ));
        }
        if targets[..i].iter().any(|o| o.name == t.name) {
            return Err(invalid(
                path,
                format!("target name `{}` is used twice", t.name),
            ));
        }
        check_calibration(t).map_err(|m| invalid(path, format!("target `{}`: {m}", t.name)))?;
    }
    for g in imatrix_groups(targets) {
        let file = g.file_name(targets);
        if let Some(t) = targets.iter().find(|t| artifact_rel(t) == file) {
            return Err(invalid(
                path,
                format!(
                    "target name `{}` clashes with `{file}`, the importance matrix of target `{}`",
                    t.name, targets[g.targets[0]].name
                ),
            ));
        }
    }
    let known = |n: &str| targets.iter().any(|t| t.name == n);
    let check = |what: &str, names: &[String]| -> Result<(), PipelineError> {
        for n in names {
            if !known(n) {
                let list: Vec<&str> = targets.iter().map(|t| t.name.as_str()).collect();
                return Err(invalid(
                    path,
                    format!(
                        "`{what}` names `{n}`, which is not a target of `steps.convert` (targets: {})",
                        if list.is_empty() { "none".to_owned() } else { list.join(", ") }
                    ),
                ));
            }
        }
        Ok(())
    };
    if let Some(p) = &file.steps.parity {
        if p.reference != "source" {
            check("steps.parity.reference", std::slice::from_ref(&p.reference))?;
        }
        if let Some(t) = &p.targets {
            check("steps.parity.targets", t)?;
        }
        if p.ctx == Some(0) || p.chunks == Some(0) {
            return Err(invalid(
                path,
                "`steps.parity.ctx` and `steps.parity.chunks` must be at least 1".into(),
            ));
        }
    }
    if let Some(s) = &file.steps.sign {
        if let Some(a) = &s.artifacts {
            check("steps.sign.artifacts", a)?;
        }
        let keyless = s.method == SignMethod::Sigstore;
        let has_key = s.key.is_some() || s.key_env.is_some();
        if !keyless && !has_key {
            return Err(invalid(
                path,
                "`steps.sign` needs `key` (a private key file) or `key_env` (an environment variable holding one)".into(),
            ));
        }
        if keyless && (has_key || s.certificate.is_some() || !s.certificate_chain.is_empty()) {
            return Err(invalid(
                path,
                "`steps.sign` with `method: sigstore` signs with an ephemeral key and a Fulcio certificate: drop `key`, `key_env`, `certificate` and `certificate_chain`".into(),
            ));
        }
        if !keyless && (s.staging || s.tsa_url.is_some()) {
            return Err(invalid(
                path,
                format!("`steps.sign.staging` and `steps.sign.tsa_url` apply to `method: sigstore`, not `method: {}`", s.method.as_str()),
            ));
        }
        match (s.method, &s.certificate) {
            (SignMethod::Certificate, None) => {
                return Err(invalid(
                    path,
                    "`steps.sign` with `method: certificate` needs `certificate` (the signing certificate, PEM)".into(),
                ))
            }
            (SignMethod::Key, Some(_)) => {
                return Err(invalid(
                    path,
                    "`steps.sign.certificate` is given but `method` is `key`: say `method: certificate`".into(),
                ))
            }
            _ => {}
        }
        if s.method == SignMethod::Key && !s.certificate_chain.is_empty() {
            return Err(invalid(
                path,
                "`steps.sign.certificate_chain` applies to `method: certificate`".into(),
            ));
        }
    }
    let is_hub = file
        .model
        .to_str()
        .is_some_and(|m| m.starts_with(crate::hub::spec::SCHEME));
    let globs = !file.include.is_empty() || !file.exclude.is_empty();
    if globs && !is_hub {
        return Err(invalid(
            path,
            "`include` and `exclude` apply only to an `hf://` model".into(),
        ));
    }
    for g in file.include.iter().chain(&file.exclude) {
        if let Err(e) = globset::Glob::new(g) {
            return Err(invalid(path, format!("`{g}` is not a valid glob: {e}")));
        }
    }
    if file.steps.policy.is_some() && file.policy.is_none() {
        return Err(invalid(
            path,
            "`steps.policy` needs a top-level `policy:` file".into(),
        ));
    }
    if file.steps.verify.is_some() && file.steps.convert.is_none() {
        return Err(invalid(
            path,
            "`steps.verify` checks converted artifacts; add `steps.convert`".into(),
        ));
    }
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "\
model: m
policy: p.yaml
steps:
  scan: {}
  convert:
    targets:
      - { name: q8, type: Q8_0, format: gguf }
  sign: { key: k.pem, artifacts: [q8] }
";

    fn err(text: &str) -> String {
        parse(Path::new("p.yaml"), text).unwrap_err().to_string()
    }

    #[test]
    fn parses_a_pipeline() {
        let f = parse(Path::new("p.yaml"), GOOD).unwrap();
        assert_eq!(
            f.steps.convert.unwrap().targets[0].ty.as_deref(),
            Some("Q8_0")
        );
        assert!(f.steps.sign.unwrap().attest);
    }

    #[test]
    fn unknown_key_gives_line_and_column() {
        let e = err(&GOOD.replace("  scan: {}", "  scan: {}\n  lint: {}"));
        assert!(e.starts_with("`p.yaml:5:3`: "), "{e}");
        assert!(e.contains("unknown field `lint`"), "{e}");
    }

    #[test]
    fn sign_methods_take_their_own_settings() {
        let f = parse(Path::new("p.yaml"), GOOD).unwrap();
        assert_eq!(f.steps.sign.unwrap().method, SignMethod::Key);
        let cert = GOOD.replace(
            "sign: { key: k.pem,",
            "sign: { method: certificate, key: k.pem, certificate: c.pem, certificate_chain: [i.pem],",
        );
        let f = parse(Path::new("p.yaml"), &cert).unwrap();
        let s = f.steps.sign.unwrap();
        assert_eq!(s.method, SignMethod::Certificate);
        assert_eq!(s.certificate_chain, vec![PathBuf::from("i.pem")]);
        let keyless = GOOD.replace(
            "sign: { key: k.pem,",
            "sign: { method: sigstore, staging: true,",
        );
        let s = parse(Path::new("p.yaml"), &keyless)
            .unwrap()
            .steps
            .sign
            .unwrap();
        assert_eq!(s.method, SignMethod::Sigstore);
        assert!(s.staging);

        let e = err(&GOOD.replace(
            "sign: { key: k.pem,",
            "sign: { method: sigstore, key: k.pem,",
        ));
        assert!(e.contains("drop `key`"), "{e}");
        let e = err(&GOOD.replace(
            "sign: { key: k.pem,",
            "sign: { method: certificate, key: k.pem,",
        ));
        assert!(e.contains("needs `certificate`"), "{e}");
        let e = err(&GOOD.replace(
            "sign: { key: k.pem,",
            "sign: { key: k.pem, certificate: c.pem,",
        ));
        assert!(e.contains("say `method: certificate`"), "{e}");
        let e = err(&GOOD.replace("sign: { key: k.pem,", "sign: { key: k.pem, staging: true,"));
        assert!(e.contains("apply to `method: sigstore`"), "{e}");
        let e = err(&GOOD.replace("sign: { key: k.pem,", "sign: { method: pgp, key: k.pem,"));
        assert!(e.contains("unknown variant `pgp`"), "{e}");
    }

    #[test]
    fn targets_with_the_same_calibration_share_one_imatrix() {
        let yaml = "\
model: m
steps:
  convert:
    targets:
      - { name: a, type: IQ4_XS, format: gguf, imatrix: { text: c.txt, ctx: 64 } }
      - { name: b, type: IQ2_XS, format: gguf, imatrix: { text: ./c.txt, ctx: 64 } }
      - { name: c, type: Q4_K_M, format: gguf, imatrix: { text: c.txt, ctx: 128 } }
      - { name: d, type: Q4_K_M, format: gguf, imatrix: { file: m.gguf } }
      - { name: e, format: gguf, max_size: 800M, imatrix: { text: c.txt, ctx: 64 } }
";
        let f = parse(Path::new("p.yaml"), yaml).unwrap();
        let targets = f.steps.convert.unwrap().targets;
        let g = imatrix_groups(&targets);
        assert_eq!(g.len(), 2);
        assert_eq!(g[0].targets, vec![0, 1, 4]);
        assert_eq!(g[0].file_name(&targets), "a.imatrix.gguf");
        assert_eq!(g[1].targets, vec![2]);
        assert_eq!(
            targets[4].max_size.as_ref().unwrap().bytes(),
            Ok(800_000_000)
        );
        // A target whose artifact would overwrite a matrix is refused.
        let clash = yaml.replace("name: d,", "name: a.imatrix,");
        let e = err(&clash);
        assert!(e.contains("clashes with `a.imatrix.gguf`"), "{e}");
    }

    #[test]
    fn calibration_settings_are_checked_per_target() {
        let t = |target: &str| {
            err(&format!(
                "model: m\nsteps:\n  convert:\n    targets:\n      - {target}\n"
            ))
        };
        let e = t("{ name: x, type: IQ2_XXS, format: gguf }");
        assert!(
            e.contains("target `x`: IQ2_XXS needs an importance matrix"),
            "{e}"
        );
        let e = t("{ name: x, format: gguf, target_bpw: .nan, imatrix: { text: c } }");
        assert!(e.contains("is not a number of bits per weight"), "{e}");
        let e = t("{ name: x, format: safetensors, target_bpw: 5, imatrix: { text: c } }");
        assert!(e.contains("say `format: gguf`"), "{e}");
        let e = t("{ name: x, format: gguf, target_bpw: 5, max_size: 1G, imatrix: { text: c } }");
        assert!(e.contains("not both"), "{e}");
        let e = t("{ name: x, type: Q4_0, format: gguf, probes: 2 }");
        assert!(e.contains("`probes` applies"), "{e}");
        let e = t("{ name: x, type: Q4_0, format: gguf, imatrix: { file: f, ctx: 5 } }");
        assert!(e.contains("apply to `imatrix.text`"), "{e}");
        let e = t("{ name: x, type: Q4_0, format: gguf, imatrix: { text: c, chunks: 0 } }");
        assert!(e.contains("at least 1"), "{e}");
        let e = t("{ name: x, type: Q4_0, format: gguf, imatrix: {} }");
        assert!(e.contains("needs `text"), "{e}");
    }

    #[test]
    fn references_to_missing_targets_are_refused() {
        let e = err(&GOOD.replace("artifacts: [q8]", "artifacts: [q4]"));
        assert!(e.contains("`steps.sign.artifacts` names `q4`"), "{e}");
        let e = err(&GOOD.replace("name: q8,", "name: ../x,"));
        assert!(e.contains("target name `../x`"), "{e}");
    }

    #[test]
    fn a_hub_model_is_kept_as_written_and_its_globs_checked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.yaml");
        let hub = GOOD.replace("model: m", "model: hf://org/m@v1\nexclude: ['*.bin']");
        std::fs::write(&path, &hub).unwrap();
        let p = Pipeline::load(&path).unwrap();
        assert_eq!(p.model, PathBuf::from("hf://org/m@v1"));
        assert_eq!(p.model_name(), "hf://org/m@v1");
        assert_eq!(p.hub.as_ref().map(|r| r.revision.as_str()), Some("v1"));
        // A malformed reference is an error of the pipeline file.
        std::fs::write(&path, GOOD.replace("model: m", "model: hf://org/../m")).unwrap();
        let e = Pipeline::load(&path).unwrap_err().to_string();
        assert!(e.contains("is not a hub model reference"), "{e}");
        // Globs need a hub model, and must parse.
        let e = err(&GOOD.replace("model: m", "model: m\ninclude: ['*.gguf']"));
        assert!(e.contains("apply only to an `hf://` model"), "{e}");
        let e = err(&hub.replace("'*.bin'", "'['"));
        assert!(e.contains("is not a valid glob"), "{e}");
        // A local model keeps its path and name.
        let local = parse(Path::new("p.yaml"), GOOD).unwrap();
        assert!(local.include.is_empty());
    }
}
