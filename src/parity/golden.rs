//! Golden files: a reference model's output recorded on one machine, so that a candidate
//! can be judged on another machine (the deployment target) without the reference.
//!
//! A golden file is JSON (`schemas/golden.schema.json`): the evaluated token ids, for every
//! scored position the reference's top-k logits in full precision with the row's
//! log-sum-exp (so log-probabilities are exact and the mass outside the top-k is known,
//! which bounds the KLD computed over the top-k), the next token's log-probability, the
//! model's digests, engine version, hardware fingerprint and the noise floor measured on the
//! recording machine. Reading one treats it as untrusted input: size cap, every count and
//! id checked against the sequence and the vocabulary before it is used.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::hardware::Hardware;
use super::stats::{Summary, TopK};
use super::{CorpusRef, ModelRef, ParityError, Sequence};

/// The `format` value of the files this version writes and reads.
pub const FORMAT: &str = "modelgate-parity-golden/1";

/// Golden files larger than this are refused before parsing.
const MAX_GOLDEN_BYTES: u64 = 1 << 30;

/// One evaluated sequence and its scored positions' reference top-k.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Recorded {
    #[serde(flatten)]
    pub sequence: Sequence,
    /// One per scored position, in order from `first_scored`.
    pub positions: Vec<TopK>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Golden {
    pub format: String,
    pub engine_version: String,
    pub reference: ModelRef,
    pub corpus: CorpusRef,
    pub top_k: usize,
    pub hardware: Hardware,
    /// The reference against itself, evaluated in two passes through its KV cache instead
    /// of one, on the recording machine.
    pub noise_floor: Summary,
    pub sequences: Vec<Recorded>,
}

impl Golden {
    /// Write atomically: a temporary file in the target folder, renamed into place.
    pub fn write(&self, path: &Path) -> Result<(), ParityError> {
        let err = |source| ParityError::Write {
            path: path.to_owned(),
            source,
        };
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(err)?;
        {
            let mut w = std::io::BufWriter::new(tmp.as_file_mut());
            serde_json::to_writer(&mut w, self).map_err(|e| err(e.into()))?;
            std::io::Write::flush(&mut w).map_err(err)?;
        }
        // A golden file is a shared artifact, not a secret: readable like any output
        // (the temporary file is created private).
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            tmp.as_file()
                .set_permissions(std::fs::Permissions::from_mode(0o644))
                .map_err(err)?;
        }
        tmp.persist(path).map_err(|e| err(e.error))?;
        Ok(())
    }

    /// Read and validate a golden file.
    pub fn read(path: &Path) -> Result<Golden, ParityError> {
        let bad = |why: String| ParityError::Golden {
            path: path.to_owned(),
            why,
        };
        let io = |source| ParityError::Io {
            path: path.to_owned(),
            source,
        };
        let size = std::fs::metadata(path).map_err(io)?.len();
        if size > MAX_GOLDEN_BYTES {
            return Err(bad(format!(
                "{size} bytes, more than the {MAX_GOLDEN_BYTES} a golden file may have"
            )));
        }
        let bytes = std::fs::read(path).map_err(io)?;
        Golden::from_slice(path, &bytes)
    }

    /// Parse and validate the bytes of a golden file read from `path`.
    pub fn from_slice(path: &Path, bytes: &[u8]) -> Result<Golden, ParityError> {
        let bad = |why: String| ParityError::Golden {
            path: path.to_owned(),
            why,
        };
        let g: Golden = serde_json::from_slice(bytes).map_err(|e| {
            bad(format!(
                "not a golden file: {e} (line {}, column {})",
                e.line(),
                e.column()
            ))
        })?;
        g.validate().map_err(bad)?;
        Ok(g)
    }

    fn validate(&self) -> Result<(), String> {
        if self.format != FORMAT {
            return Err(format!("format is `{}`, expected `{FORMAT}`", self.format));
        }
        if self.sequences.is_empty() {
            return Err("no sequences recorded".into());
        }
        let vocab = self.reference.vocab;
        for (i, r) in self.sequences.iter().enumerate() {
            let s = &r.sequence;
            let n = s.tokens.len();
            if s.first_scored + 1 >= n {
                return Err(format!(
                    "sequence {i}: first scored position {} leaves nothing to score in {n} tokens",
                    s.first_scored
                ));
            }
            if r.positions.len() != n - 1 - s.first_scored {
                return Err(format!(
                    "sequence {i}: {} positions recorded, expected {}",
                    r.positions.len(),
                    n - 1 - s.first_scored
                ));
            }
            if let Some(t) = s.tokens.iter().find(|&&t| t as usize >= vocab) {
                return Err(format!(
                    "sequence {i}: token id {t} is outside the vocabulary of {vocab}"
                ));
            }
            for (j, p) in r.positions.iter().enumerate() {
                if p.top.is_empty() || p.top.len() > self.top_k {
                    return Err(format!(
                        "sequence {i}, position {j}: {} top entries, expected 1..={}",
                        p.top.len(),
                        self.top_k
                    ));
                }
                if !p.lse.is_finite() || !p.next_logprob.is_finite() || p.next_logprob > 1e-9 {
                    return Err(format!(
                        "sequence {i}, position {j}: log-sum-exp {} / next log-probability {} are not valid",
                        p.lse, p.next_logprob
                    ));
                }
                for &(id, logit) in &p.top {
                    if id as usize >= vocab || !logit.is_finite() || logit as f64 > p.lse + 1e-6 {
                        return Err(format!(
                            "sequence {i}, position {j}: entry ({id}, {logit}) is outside the vocabulary or above the log-sum-exp"
                        ));
                    }
                }
            }
        }
        Ok(())
    }

    /// Whether `candidate` can be compared with this golden file: same architecture and
    /// vocabulary.
    pub fn check_candidate(&self, path: &Path, candidate: &ModelRef) -> Result<(), ParityError> {
        let r = &self.reference;
        super::agree(&[
            (
                "the architecture",
                super::network(&r.architecture).to_owned(),
                super::network(&candidate.architecture).to_owned(),
            ),
            (
                "the layer count",
                r.layers.to_string(),
                candidate.layers.to_string(),
            ),
            (
                "the vocabulary size",
                r.vocab.to_string(),
                candidate.vocab.to_string(),
            ),
        ])?;
        if r.vocab_digest != candidate.vocab_digest {
            return Err(ParityError::Vocabulary {
                what: format!(
                    "its token strings differ from those recorded in `{}`",
                    path.display()
                ),
            });
        }
        Ok(())
    }
}
