//! The conversion's piece of a pipeline run report: the [`Artifact`] record of what it
//! wrote. Kept beside [`Summary`] so the record follows the summary's fields without the
//! pipeline copying them one by one.

use super::Summary;
use crate::report::run::{Artifact, StoredArtifact, TypeStat};

impl Summary {
    /// The run report's record of this conversion's output, written where `stored` says.
    pub fn artifact(&self, stored: StoredArtifact) -> Artifact {
        Artifact {
            name: stored.name,
            path: stored.path,
            format: stored.format,
            file_type: self.file_type.clone(),
            architecture: self.architecture.clone(),
            sha256: stored.sha256,
            files: stored.files,
            bytes: stored.bytes,
            tensors: self.tensors,
            parameters: self.parameters,
            bits_per_weight: self.bits_per_weight,
            types: self
                .types
                .iter()
                .map(|(k, v)| {
                    (
                        k.clone(),
                        TypeStat {
                            tensors: v.tensors,
                            bytes: v.bytes,
                        },
                    )
                })
                .collect(),
            hyperparameters: None,
            calibration: None,
            mix: None,
        }
    }
}
