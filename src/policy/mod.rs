//! Licences, provenance and policy: the stage that decides whether a model may be adopted
//! and says what adopting it obliges.
//!
//! It sits after the format readers and beside scan in the pipeline (import -> scan ->
//! convert -> verify -> **policy** -> parity -> sign). Input is a [`ModelFacts`]
//! gathered from a [`crate::formats::Checkpoint`]; [`assess()`] identifies the licence from
//! every source (card, licence texts, weight metadata), traces the base-model chain and
//! the architecture family, and applies lineage inheritance; [`evaluate()`] applies a
//! [`Policy`] file (intended use, licence conditions, provenance and security rules,
//! waivers) and lists the obligations for that use. Findings are rendered only by
//! [`crate::report`].
//!
//! Data: the licence catalogue (`policies/licenses/*.yaml` with texts in
//! `policies/licenses/texts/`) and the families catalogue (`policies/families.yaml`) are
//! compiled in; policy files are read at run time.

pub mod assess;
pub mod catalogue;
pub mod date;
pub mod evaluate;
pub mod facts;
pub mod families;
pub mod file;
pub mod provenance;
mod report;
pub mod rules;
pub mod text;

use std::path::PathBuf;

pub use assess::{assess, Assessment, Obligation};
pub use catalogue::Catalogue;
pub use date::Date;
pub use evaluate::{evaluate, Outcome};
pub use facts::ModelFacts;
pub use families::Families;
pub use file::{Policy, PolicyFile};
pub use report::Detail;

/// An error of the policy stage. Messages name the file and what was expected.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("cannot read `{path}`")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A policy file that does not parse or does not fit the schema.
    #[error("`{path}:{line}:{column}`: {message}")]
    Syntax {
        path: PathBuf,
        line: u64,
        column: u64,
        message: String,
    },
    /// A policy file that parses but says something impossible.
    #[error("`{path}`: {message}")]
    Invalid { path: PathBuf, message: String },
    /// The compiled-in catalogue is broken (a build with edited data files).
    #[error("built-in catalogue `{file}` is invalid: {message}")]
    Catalogue { file: PathBuf, message: String },
    #[error("today's date: {0}")]
    Today(String),
    /// A file of the model could not be hashed.
    #[error(transparent)]
    Digest(#[from] crate::digest::DigestError),
}

impl PolicyError {
    /// Advice for the `hint:` line, where there is something to do about it.
    pub fn hint(&self) -> Option<&'static str> {
        Some(match self {
            PolicyError::Syntax { .. } | PolicyError::Invalid { .. } => {
                "see schemas/policy.schema.json and the policies shipped in `policies/`"
            }
            PolicyError::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound => {
                "check the path"
            }
            PolicyError::Catalogue { .. } => {
                "the build's `policies/` data files were edited; rebuild from a clean checkout"
            }
            PolicyError::Digest(e) => return e.hint(),
            _ => return None,
        })
    }
}

/// The built-in catalogues.
pub struct Catalogues {
    pub licences: Catalogue,
    pub families: Families,
}

impl Catalogues {
    pub fn builtin() -> Result<Catalogues, PolicyError> {
        Ok(Catalogues {
            licences: Catalogue::builtin()?,
            families: Families::builtin()?,
        })
    }
}

/// `modelgate license`: licences, lineage and every obligation, with no policy.
pub fn license_report(facts: &ModelFacts, cats: &Catalogues) -> LicenceReport {
    let assessment = assess(facts, &cats.licences, &cats.families);
    let (obligations, documents) =
        evaluate::obligations_for(&assessment, &cats.licences, &assess::UseScope::default());
    LicenceReport {
        assessment,
        obligations,
        documents,
    }
}

/// Licences and obligations without a policy.
#[derive(Clone, Debug, serde::Serialize)]
pub struct LicenceReport {
    pub assessment: Assessment,
    pub obligations: Vec<Obligation>,
    pub documents: Vec<String>,
}

/// `modelgate policy check`: assess and apply a policy, with today's date for waivers.
pub fn check(
    facts: &ModelFacts,
    policy: &Policy,
    cats: &Catalogues,
) -> Result<Outcome, PolicyError> {
    let today = Date::today().map_err(PolicyError::Today)?;
    let assessment = assess(facts, &cats.licences, &cats.families);
    Ok(evaluate(facts, assessment, policy, &cats.licences, today))
}
