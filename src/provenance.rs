//! Where a model came from, as reports, BOMs and attestations record it: a Hugging Face
//! Hub repository (`ORG/NAME`), the revision asked for, the commit it resolved to, the
//! Hub's licence and gating facts, and every file's size and sha256 beside the sha256 the
//! Hub lists for it (LFS). A shared type: the `hub` stage fills it in, `policy` judges it,
//! `report` and `sign` write it; it serialises deterministically (files sorted by path).

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::types::Sha256Digest;

/// The scheme that marks a model argument as a Hub repository.
pub const SCHEME: &str = "hf://";

/// The longest repository id the Hub accepts (huggingface_hub's `validate_repo_id`).
const MAX_REPO_ID: usize = 96;

/// A model repository id, `ORG/NAME`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct RepoId {
    org: String,
    name: String,
}

impl RepoId {
    /// Parse `ORG/NAME` with the Hub's rules: letters, digits, `-`, `_`, `.`; no `--` or
    /// `..`; not starting or ending with `-` or `.`; at most 96 characters. The error says why, in words that follow "`ARG` is not a hub model reference: ".
    pub fn parse(s: &str) -> Result<RepoId, String> {
        let bad = |why: &str| why.to_owned();
        if s.len() > MAX_REPO_ID {
            return Err(bad("a repository id has at most 96 characters"));
        }
        let (org, name) = s
            .split_once('/')
            .ok_or_else(|| bad("expected `ORG/NAME`"))?;
        for part in [org, name] {
            let ok_chars = !part.is_empty()
                && part
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
            if !ok_chars {
                return Err(bad(
                    "expected `ORG/NAME` made of letters, digits, `-`, `_` and `.`",
                ));
            }
            if part.contains("--") || part.contains("..") {
                return Err(bad("`--` and `..` are not allowed in a repository id"));
            }
            let edge = |c: Option<char>| matches!(c, Some('-' | '.'));
            if edge(part.chars().next()) || edge(part.chars().last()) {
                return Err(bad(
                    "a repository id part cannot start or end with `-` or `.`",
                ));
            }
        }
        if name.ends_with(".git") {
            return Err(bad("a repository id cannot end with `.git`"));
        }
        Ok(RepoId {
            org: org.to_owned(),
            name: name.to_owned(),
        })
    }

    /// The organisation or user that publishes the repository.
    pub fn org(&self) -> &str {
        &self.org
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The repository's folder in the cache: `models--ORG--NAME`.
    pub fn cache_folder(&self) -> String {
        format!("models--{}--{}", self.org, self.name)
    }
}

impl fmt::Display for RepoId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.org, self.name)
    }
}

impl TryFrom<String> for RepoId {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        RepoId::parse(&s).map_err(|why| format!("`{s}` is not a repository id: {why}"))
    }
}

impl From<RepoId> for String {
    fn from(r: RepoId) -> String {
        r.to_string()
    }
}

/// A commit of a Hub repository: 40 lower-case hex digits.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct CommitSha(String);

impl CommitSha {
    /// `Some` for exactly 40 lower-case hex digits (the form the Hub and the cache use).
    pub fn parse(s: &str) -> Option<CommitSha> {
        let ok = s.len() == 40 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        ok.then(|| CommitSha(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for CommitSha {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for CommitSha {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        CommitSha::parse(&s).ok_or_else(|| format!("`{s}` is not a 40-digit commit sha"))
    }
}

impl From<CommitSha> for String {
    fn from(c: CommitSha) -> String {
        c.0
    }
}

/// Percent-encode one URL path segment (RFC 3986 unreserved characters are kept).
pub fn encode_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Percent-encode a repository path, keeping its `/` separators.
pub fn encode_path(p: &str) -> String {
    p.split('/')
        .map(encode_segment)
        .collect::<Vec<_>>()
        .join("/")
}

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
    /// The provenance of `files` of `repository` at `requested_revision`, resolved to
    /// `commit`.
    pub fn new(
        repository: RepoId,
        requested_revision: &str,
        commit: CommitSha,
        endpoint: &str,
        hub: Option<HubCard>,
        mut files: Vec<ProvenanceFile>,
    ) -> Provenance {
        files.sort_by(|a, b| a.path.cmp(&b.path));
        Provenance {
            repository,
            requested_revision: requested_revision.to_owned(),
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

    /// `hf://ORG/NAME@REVISION`: the model as it was asked for.
    pub fn requested_uri(&self) -> String {
        format!("{SCHEME}{}@{}", self.repository, self.requested_revision)
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

    /// The package URL (purl spec's `huggingface` type): `pkg:huggingface/ORG/NAME@COMMIT`,
    /// for a BOM's `purl` / `software_packageUrl`.
    pub fn purl(&self) -> String {
        format!(
            "pkg:huggingface/{}/{}@{}",
            self.repository.org(),
            self.repository.name(),
            self.commit
        )
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
        let sha = CommitSha::parse("0123456789abcdef0123456789abcdef01234567").unwrap();
        let d = Sha256Digest::of(b"abc");
        Provenance::new(
            RepoId::parse("org/model").unwrap(),
            rev,
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
    fn commit_sha_is_exactly_40_lower_hex() {
        assert!(CommitSha::parse(&"a".repeat(40)).is_some());
        assert!(CommitSha::parse(&"A".repeat(40)).is_none());
        assert!(CommitSha::parse(&"a".repeat(39)).is_none());
    }

    #[test]
    fn encodes_url_paths() {
        assert_eq!(encode_segment("refs/pr/1"), "refs%2Fpr%2F1");
        assert_eq!(encode_path("dir/a b.bin"), "dir/a%20b.bin");
    }

    #[test]
    fn urls_name_the_commit() {
        let p = prov("main", None);
        assert!(!p.is_pinned());
        assert_eq!(p.publisher(), "org");
        assert_eq!(p.requested_uri(), "hf://org/model@main");
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
        assert_eq!(
            p.purl(),
            "pkg:huggingface/org/model@0123456789abcdef0123456789abcdef01234567"
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
