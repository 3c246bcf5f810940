//! Errors that stop a pipeline before it reaches a verdict. A step whose stage fails keeps
//! the stage's own typed error ([`StageError`]), so the command line can print the
//! stage's hint rather than a guess made from the step's name.

use std::path::PathBuf;

use crate::convert::ConvertError;
use crate::digest::DigestError;
use crate::engine::EngineError;
use crate::formats::FormatError;
use crate::hub::HubError;
use crate::parity::ParityError;
use crate::policy::PolicyError;
use crate::scan::ScanError;
use crate::sign::SignError;

/// An error that stops a pipeline before it reaches a verdict: a bad pipeline file, an
/// unreadable input, a stage that cannot run. Gate failures are not errors; they are
/// findings in the report.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error("cannot read `{path}`")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write `{path}`")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A pipeline file that does not parse or does not fit the schema.
    #[error("`{path}:{line}:{column}`: {message}")]
    Syntax {
        path: PathBuf,
        line: u64,
        column: u64,
        message: String,
    },
    /// A pipeline file that parses but says something impossible.
    #[error("`{path}`: {message}")]
    Invalid { path: PathBuf, message: String },
    /// The sign step's key does not load.
    #[error("step `sign` cannot load its signing key")]
    Key {
        #[source]
        source: SignError,
    },
    /// A stage failed to run (not a gate failure). The stage error is boxed because some
    /// are large, and every pipeline result carries this type.
    #[error("step `{step}` could not run")]
    Step {
        step: String,
        #[source]
        source: Box<StageError>,
    },
    #[error("internal error: {0}")]
    Internal(String),
}

impl PipelineError {
    pub(crate) fn step(step: &str, e: impl Into<StageError>) -> Self {
        PipelineError::Step {
            step: step.to_owned(),
            source: Box::new(e.into()),
        }
    }

    /// Advice for the `hint:` line: the pipeline's own for a bad pipeline file or key, the
    /// stage's for a step that failed.
    pub fn hint(&self) -> Option<String> {
        match self {
            PipelineError::Syntax { .. } | PipelineError::Invalid { .. } => {
                Some("see schemas/pipeline.schema.json and `fixtures/pipeline/example.yaml`".into())
            }
            PipelineError::Key { .. } => Some(
                "give `steps.sign.key` (a PKCS#8 PEM from `modelgate keygen`) or set the \
                 variable `steps.sign.key_env` names"
                    .into(),
            ),
            PipelineError::Step { source, .. } => source.hint(),
            PipelineError::Io { .. } | PipelineError::Write { .. } | PipelineError::Internal(_) => {
                None
            }
        }
    }
}

/// The typed error of the stage a step called. Its message and causes are the stage's
/// own (`transparent`), so the chain reads as it would from the stage's subcommand.
#[derive(Debug, thiserror::Error)]
pub enum StageError {
    #[error(transparent)]
    Format(#[from] FormatError),
    #[error(transparent)]
    Scan(#[from] ScanError),
    #[error(transparent)]
    Convert(#[from] ConvertError),
    #[error(transparent)]
    Policy(#[from] PolicyError),
    #[error(transparent)]
    Parity(#[from] ParityError),
    #[error(transparent)]
    Sign(#[from] SignError),
    #[error(transparent)]
    Digest(#[from] DigestError),
    #[error(transparent)]
    Hub(#[from] HubError),
    #[error(transparent)]
    Engine(#[from] EngineError),
}

impl StageError {
    /// The stage error's own hint, where it has one.
    pub fn hint(&self) -> Option<String> {
        match self {
            StageError::Sign(e) => e.hint().map(str::to_owned),
            StageError::Format(e) => e.hint().map(str::to_owned),
            StageError::Convert(e) => e.hint().map(str::to_owned),
            StageError::Policy(e) => e.hint().map(str::to_owned),
            StageError::Parity(e) => e.hint().map(str::to_owned),
            StageError::Digest(e) => e.hint().map(str::to_owned),
            StageError::Hub(e) => e.hint(),
            StageError::Engine(e) => e.hint().map(str::to_owned),
            StageError::Scan(e) => Some(e.hint().to_owned()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::error::Error as _;

    #[test]
    fn a_failed_sign_step_gives_the_sign_error_hint_not_the_key_hint() {
        let e = PipelineError::step(
            "sign:q8_0",
            SignError::Exists {
                path: "out/q8_0.gguf.sig".into(),
            },
        );
        assert_eq!(e.to_string(), "step `sign:q8_0` could not run");
        let cause = e.source().map(ToString::to_string);
        assert_eq!(cause.as_deref(), Some("`out/q8_0.gguf.sig` already exists"));
        assert_eq!(
            e.hint().as_deref(),
            Some("choose another path or pass `--force` to replace it")
        );
        // A cause the stage gives no hint for gets none, rather than one about keys.
        let e = PipelineError::step("sign:q8_0", SignError::Encode("bad".into()));
        assert_eq!(e.hint(), None);
    }

    #[test]
    fn a_key_that_does_not_load_says_how_to_give_one() {
        let e = PipelineError::Key {
            source: SignError::Key {
                path: "k.pem".into(),
                what: "is not PEM".into(),
            },
        };
        assert!(e.hint().is_some_and(|h| h.contains("steps.sign.key")));
        assert_eq!(
            e.source().map(ToString::to_string).as_deref(),
            Some("key file `k.pem` is not PEM")
        );
    }

    #[test]
    fn each_cause_is_printed_once() {
        let e = PipelineError::Io {
            path: "m".into(),
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "gone"),
        };
        let mut chain = vec![e.to_string()];
        let mut cur = e.source();
        while let Some(c) = cur {
            chain.push(c.to_string());
            cur = c.source();
        }
        assert_eq!(chain, ["cannot read `m`", "gone"]);
    }
}
