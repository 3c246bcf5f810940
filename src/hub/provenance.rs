//! Where a Hub model came from, pinned: the repository, the revision asked for, the commit
//! it resolved to, the Hub's licence and gating facts, and every file's size and sha256
//! beside the sha256 the Hub lists for it (LFS). Reports, BOMs and attestations carry this
//! struct as it is; it serialises deterministically (files sorted by path).

use serde::{Deserialize, Serialize};

use super::spec::{encode_path, CommitSha, HubRef, RepoId, SCHEME};
use crate::types::Sha256Digest;

/// The provenance of a model resolved from `hf://`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Provenance {
    /// `ORG/NAME`.
    pub repository: RepoId,
    /// The revision as asked for (`main`, a tag, or a commit sha).
    pub requested_revision: String,
    /// The commit it resolved to.
    pub commit: CommitSha,
    /// The Hub the repository lives on (`HF_ENDPOINT`, default `https://huggingface.co`).
    pub endpoint: String,
    /// The Hub's card and gating facts; absent when only the cache was read (offline).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hub: Option<HubCard>,
    /// Every file taken, sorted by path.
    pub files: Vec<ProvenanceFile>,
}

/// Licence and access facts from the Hub's model info (`cardData`, `gated`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HubCard {
    /// `cardData.license`: one id, or several.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub licence: Vec<String>,
    /// `cardData.license_name` (with licence `other`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub licence_name: Option<String>,
    /// `cardData.license_link`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub licence_link: Option<String>,
    /// `cardData.base_model`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub base_model: Vec<String>,
    pub gated: Gated,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub private: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub author: Option<String>,
}

/// Whether users must ask for access before downloading.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Gated {
    #[default]
    No,
    /// Access is granted on accepting the conditions.
    Auto,
    /// The publisher approves each request.
    Manual,
}

/// One file of the snapshot.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProvenanceFile {
    /// The path in the repository, `/`-separated.
    pub path: String,
    pub size: u64,
    /// Computed from the bytes on disk.
    pub sha256: Sha256Digest,
    /// What the Hub lists (`siblings[].lfs.sha256`), or names the blob by; absent for
    /// files not stored in LFS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hub_lfs_sha256: Option<Sha256Digest>,
}

impl Provenance {
    /// The provenance of `files` of `r`, resolved to `commit`.
    pub fn new(
        r: &HubRef,
        commit: CommitSha,
        endpoint: &str,
        hub: Option<HubCard>,
        mut files: Vec<ProvenanceFile>,
    ) -> Provenance {
        files.sort_by(|a, b| a.path.cmp(&b.path));
        Provenance {
            repository: r.repo.clone(),
            requested_revision: r.revision.clone(),
            commit,
            endpoint: endpoint.trim_end_matches('/').to_owned(),
            hub,
            files,
        }
    }

    /// The organisation or user that publishes the repository.
    pub fn publisher(&self) -> &str {
        self.repository.org()
    }

    /// Whether the revision asked for was the commit itself.
    pub fn is_pinned(&self) -> bool {
        self.requested_revision == self.commit.as_str()
    }

    /// `hf://ORG/NAME@COMMIT`: the model, pinned.
    pub fn uri(&self) -> String {
        format!("{SCHEME}{}@{}", self.repository, self.commit)
    }

    /// The repository's files at the commit, on the Hub's web site (a BOM's
    /// `downloadLocation` / `externalReferences`).
    pub fn tree_url(&self) -> String {
        format!("{}/{}/tree/{}", self.endpoint, self.repository, self.commit)
    }

    /// Where one file of the commit is downloaded from (an attestation's `resourceUri`).
    pub fn file_url(&self, path: &str) -> String {
        format!(
            "{}/{}/resolve/{}/{}",
            self.endpoint,
            self.repository,
            self.commit,
            encode_path(path)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prov(rev: &str, hub: Option<HubCard>) -> Provenance {
        let r = HubRef::parse(&format!("hf://org/model@{rev}"))
            .unwrap()
            .unwrap();
        let sha = CommitSha::parse("0123456789abcdef0123456789abcdef01234567").unwrap();
        let d = Sha256Digest::of(b"abc");
        Provenance::new(
            &r,
            sha,
            "https://huggingface.co/",
            hub,
            vec![
                ProvenanceFile {
                    path: "model.safetensors".into(),
                    size: 3,
                    sha256: d,
                    hub_lfs_sha256: Some(d),
                },
                ProvenanceFile {
                    path: "config.json".into(),
                    size: 2,
                    sha256: Sha256Digest::of(b"{}"),
                    hub_lfs_sha256: None,
                },
            ],
        )
    }

    #[test]
    fn urls_name_the_commit() {
        let p = prov("main", None);
        assert!(!p.is_pinned());
        assert_eq!(p.publisher(), "org");
        assert_eq!(
            p.uri(),
            "hf://org/model@0123456789abcdef0123456789abcdef01234567"
        );
        assert_eq!(
            p.tree_url(),
            "https://huggingface.co/org/model/tree/0123456789abcdef0123456789abcdef01234567"
        );
        assert_eq!(
            p.file_url("dir/a b.gguf"),
            "https://huggingface.co/org/model/resolve/0123456789abcdef0123456789abcdef01234567/dir/a%20b.gguf"
        );
        assert!(prov("0123456789abcdef0123456789abcdef01234567", None).is_pinned());
    }

    #[test]
    fn serialises_sorted_and_round_trips() {
        let card = HubCard {
            licence: vec!["llama3.1".into()],
            gated: Gated::Manual,
            ..HubCard::default()
        };
        let p = prov("main", Some(card));
        let v = serde_json::to_value(&p).unwrap();
        assert_eq!(v["repository"], "org/model");
        assert_eq!(v["requested_revision"], "main");
        assert_eq!(v["hub"]["gated"], "manual");
        assert_eq!(v["hub"]["licence"][0], "llama3.1");
        assert_eq!(v["files"][0]["path"], "config.json");
        assert!(v["files"][0].get("hub_lfs_sha256").is_none());
        assert_eq!(
            v["files"][1]["hub_lfs_sha256"],
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        let back: Provenance = serde_json::from_value(v).unwrap();
        assert_eq!(back, p);
        let bad = serde_json::json!({"repository": "../x", "requested_revision": "main",
            "commit": "0123456789abcdef0123456789abcdef01234567", "endpoint": "e", "files": []});
        assert!(serde_json::from_value::<Provenance>(bad).is_err());
    }
}
