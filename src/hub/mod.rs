//! The Hugging Face Hub as a source of models: `hf://ORG/NAME[@REVISION]` resolved to a
//! verified local snapshot, with [`Provenance`] pinned to the commit and every file's
//! digest. This is the import step before every stage; it reads no checkpoint bytes
//! (that is [`crate::formats`]), it only fetches, files and hashes them.
//!
//! **The cache first.** The cache is the one Python's `huggingface_hub` uses, found the
//! same way (`HF_HUB_CACHE`, else `$HF_HOME/hub`, else `$XDG_CACHE_HOME/huggingface/hub`,
//! else `~/.cache/huggingface/hub`) and laid out the same way
//! (`models--ORG--NAME/{blobs,snapshots,refs}`, see [`cache`]), so a model downloaded by
//! `huggingface-cli` or transformers is used as it is. With `HF_HUB_OFFLINE=1` nothing
//! goes to the network; when the Hub cannot be reached, the cache answers too (as in
//! Python). A full commit sha resolves through `snapshots/<sha>` with no ref naming it.
//!
//! **Downloads** (see [`client`]) ask the Hub which commit a revision is and which files
//! it holds (`/api/models/{id}/revision/{rev}`), then fetch the missing files
//! (`/{id}/resolve/{sha}/{path}`) into `blobs/<etag>.incomplete`, resuming with `Range`,
//! verify each one (the LFS sha256 the Hub lists, or the git blob id for small files),
//! and only then rename it to its blob. The files are linked from `snapshots/<sha>/` once
//! every selected one is in, and the ref (`refs/main`) is written last, so a failed
//! download never leaves a snapshot with part of the files, nor a ref to a missing
//! snapshot.
//!
//! **Why not the `hf-hub` crate.** Its synchronous (ureq) client, version 0.4, was
//! evaluated and not used: it reads neither `HF_HUB_CACHE` nor the LFS digests of the
//! file listing (`RepoInfo` keeps only file names), so it cannot verify a download; it
//! renames a short (truncated) download into the cache as a complete blob, appends a
//! full `200` body to a partial file when a server ignores `Range`, names partial files
//! `.part` rather than Python's `.incomplete`, panics on a redirect without `Location`,
//! and reports 401/403 as a bare HTTP error. Version 1.0 is async (reqwest and tokio).
//! So the client is written here on `ureq`, the HTTP library `hf-hub` itself uses.
//!
//! Stages never see the cache: [`view::View`] hard-links (or copies) the selected files
//! into a temporary folder named after the repository, because a snapshot's files are
//! symlinks that leave the snapshot folder, which the format readers rightly refuse.

pub mod cache;
pub mod client;
pub mod spec;
pub mod view;

use std::path::{Path, PathBuf};

use globset::{Glob, GlobSet, GlobSetBuilder};

pub use crate::provenance::{Gated, HubCard, Provenance, ProvenanceFile};
pub use cache::RepoCache;
pub use spec::{CommitSha, HubRef, RepoId};
pub use view::View;

/// The Hub that answers when `HF_ENDPOINT` is not set.
pub const DEFAULT_ENDPOINT: &str = "https://huggingface.co";

/// An error of the Hub import. Messages name the repository, revision or file and what was
/// expected; [`HubError::hint`] says what to do.
#[derive(Debug, thiserror::Error)]
pub enum HubError {
    #[error("`{spec}` is not a hub model reference: {why}")]
    BadSpec { spec: String, why: String },
    #[error("`{pattern}` is not a valid glob")]
    BadGlob {
        pattern: String,
        #[source]
        source: globset::Error,
    },
    #[error(
        "cannot find the hub cache: none of HF_HUB_CACHE, HF_HOME, XDG_CACHE_HOME or HOME is set"
    )]
    NoCacheDir,
    #[error("cannot read or write `{path}`")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("`{repo}@{revision}` is not in the hub cache `{cache}`, and HF_HUB_OFFLINE is set")]
    NotCached {
        repo: RepoId,
        revision: String,
        cache: PathBuf,
    },
    #[error("no file of `{repo}@{revision}` matches the --include/--exclude globs")]
    NothingSelected { repo: RepoId, revision: String },
    #[error("`{path}` in the hub cache is a symlink to `{target}`, which is outside the cache `{cache}`")]
    SymlinkEscapes {
        path: PathBuf,
        target: PathBuf,
        cache: PathBuf,
    },
    #[error("blob `{path}` does not hold what its name says: its {algorithm} is {actual}")]
    BlobMismatch {
        path: PathBuf,
        algorithm: &'static str,
        actual: String,
    },
    #[error("`{path}` names commit {commit}, but the snapshot folder `{snapshot}` does not exist")]
    DanglingRef {
        path: PathBuf,
        commit: String,
        snapshot: PathBuf,
    },
    #[error("`{path}` in the hub cache is malformed: {why}")]
    HostileLayout { path: PathBuf, why: String },
    #[error("repository `{repo}` does not exist on `{endpoint}`, or is private")]
    UnknownRepository { repo: RepoId, endpoint: String },
    #[error("revision `{revision}` does not exist in `{repo}`")]
    UnknownRevision { repo: RepoId, revision: String },
    #[error("`{file}` does not exist in `{repo}` at commit {commit}")]
    UnknownFile {
        repo: RepoId,
        commit: CommitSha,
        file: String,
    },
    #[error("`{repo}` is gated or private and no token was given (HTTP {status})")]
    NeedsToken {
        repo: RepoId,
        status: u16,
        /// The Hub asked, for the hint's link to the repository's page.
        endpoint: String,
    },
    #[error("the hub refused access to `{repo}` with the token in HF_TOKEN (HTTP {status})")]
    AccessRefused {
        repo: RepoId,
        status: u16,
        endpoint: String,
    },
    #[error("`{url}` answered HTTP {status}, expected 200")]
    Http { url: String, status: u16 },
    #[error("cannot reach `{url}`")]
    Transport {
        url: String,
        #[source]
        source: ureq::Error,
    },
    #[error("`{url}` sent an invalid answer: {why}")]
    BadResponse { url: String, why: String },
    #[error("the download of `{file}` stopped after {got} of {expected} bytes")]
    Truncated {
        file: String,
        got: u64,
        expected: u64,
    },
    #[error("`{file}` downloaded with {algorithm} {actual}, but the hub lists {expected}")]
    DigestMismatch {
        file: String,
        algorithm: &'static str,
        expected: String,
        actual: String,
    },
}

impl HubError {
    /// What the user can do about it.
    pub fn hint(&self) -> Option<String> {
        Some(match self {
            HubError::BadSpec { .. } => {
                "write `hf://ORG/NAME` or `hf://ORG/NAME@REVISION` (a branch, tag or 40-digit commit)".into()
            }
            HubError::BadGlob { .. } => "globs use `*`, `?`, `[...]` and `**`, e.g. `*.gguf`".into(),
            HubError::NoCacheDir => "set HF_HUB_CACHE to the cache folder".into(),
            HubError::NotCached { .. } => {
                "download it first (unset HF_HUB_OFFLINE), or point HF_HUB_CACHE at a cache that holds it".into()
            }
            HubError::NothingSelected { .. } => {
                "list the repository's files on its hub page and loosen the globs".into()
            }
            HubError::SymlinkEscapes { .. }
            | HubError::BlobMismatch { .. }
            | HubError::DanglingRef { .. }
            | HubError::HostileLayout { .. } => {
                "the cache was altered; delete the repository's `models--ORG--NAME` folder and download it again".into()
            }
            HubError::UnknownRepository { .. } => {
                "check the spelling `ORG/NAME`; for a private repository set HF_TOKEN".into()
            }
            HubError::UnknownRevision { .. } => {
                "give a branch, tag or full commit sha listed on the repository's hub page".into()
            }
            HubError::UnknownFile { .. } => "the hub listed a file it then did not serve; try again".into(),
            HubError::NeedsToken { repo, endpoint, .. } => format!(
                "accept the conditions on the repository's page ({endpoint}/{repo}), then set HF_TOKEN to an access token of that account"
            ),
            HubError::AccessRefused { repo, endpoint, .. } => format!(
                "the token's account has not been granted access: accept the conditions on {endpoint}/{repo} and wait for approval, or use a token with read access"
            ),
            HubError::Transport { .. } => {
                "check the network and HF_ENDPOINT, or set HF_HUB_OFFLINE=1 to use the cache only".into()
            }
            HubError::Truncated { .. } => {
                "run the command again: the download resumes from the `.incomplete` file".into()
            }
            HubError::DigestMismatch { .. } => {
                "the file was not stored in the cache; try again, and report it to the repository's owners if it persists".into()
            }
            HubError::Io { .. } | HubError::Http { .. } | HubError::BadResponse { .. } => {
                return None
            }
        })
    }
}

pub(crate) fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> HubError + '_ {
    move |source| HubError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Where the cache is, which Hub to ask, with which token, and whether to ask at all.
#[derive(Clone, Debug)]
pub struct Settings {
    pub cache_root: PathBuf,
    pub endpoint: String,
    pub token: Option<String>,
    pub offline: bool,
}

impl Settings {
    /// The settings from the environment, read as `huggingface_hub` reads them.
    pub fn from_env() -> Result<Settings, HubError> {
        let var = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty());
        let hf_home = var("HF_HOME").map(PathBuf::from).or_else(|| {
            var("XDG_CACHE_HOME")
                .map(|x| PathBuf::from(x).join("huggingface"))
                .or_else(|| var("HOME").map(|h| PathBuf::from(h).join(".cache/huggingface")))
        });
        let cache_root = match var("HF_HUB_CACHE") {
            Some(c) => PathBuf::from(c),
            None => hf_home
                .as_ref()
                .map(|h| h.join("hub"))
                .ok_or(HubError::NoCacheDir)?,
        };
        let endpoint = std::env::var("HF_ENDPOINT")
            .ok()
            .filter(|e| !e.is_empty())
            .unwrap_or_else(|| DEFAULT_ENDPOINT.to_owned())
            .trim_end_matches('/')
            .to_owned();
        let token = std::env::var("HF_TOKEN")
            .ok()
            .map(|t| t.trim().to_owned())
            .filter(|t| !t.is_empty())
            .or_else(|| {
                let path = var("HF_TOKEN_PATH")
                    .map(PathBuf::from)
                    .or_else(|| hf_home.as_ref().map(|h| h.join("token")))?;
                let t = std::fs::read_to_string(path).ok()?;
                let t = t.trim();
                (!t.is_empty() && t.len() < 1024).then(|| t.to_owned())
            });
        let offline = std::env::var("HF_HUB_OFFLINE").is_ok_and(|v| truthy(&v));
        Ok(Settings {
            cache_root,
            endpoint,
            token,
            offline,
        })
    }
}

/// `huggingface_hub`'s reading of boolean variables.
fn truthy(v: &str) -> bool {
    ["1", "on", "yes", "true"]
        .iter()
        .any(|t| v.trim().eq_ignore_ascii_case(t))
}

/// Which files of a repository to take: `--include` globs (all files when none) minus
/// `--exclude` globs, matched against the `/`-separated path in the repository.
#[derive(Clone, Debug)]
pub struct Selection {
    include: Option<GlobSet>,
    exclude: Option<GlobSet>,
}

impl Selection {
    pub fn new(include: &[String], exclude: &[String]) -> Result<Selection, HubError> {
        fn set(patterns: &[String]) -> Result<Option<GlobSet>, HubError> {
            if patterns.is_empty() {
                return Ok(None);
            }
            let mut b = GlobSetBuilder::new();
            for p in patterns {
                let g = Glob::new(p).map_err(|source| HubError::BadGlob {
                    pattern: p.clone(),
                    source,
                })?;
                b.add(g);
            }
            b.build().map(Some).map_err(|source| HubError::BadGlob {
                pattern: patterns.join(" "),
                source,
            })
        }
        Ok(Selection {
            include: set(include)?,
            exclude: set(exclude)?,
        })
    }

    /// Every file.
    pub fn all() -> Selection {
        Selection {
            include: None,
            exclude: None,
        }
    }

    pub fn matches(&self, path: &str) -> bool {
        self.include.as_ref().is_none_or(|s| s.is_match(path))
            && !self.exclude.as_ref().is_some_and(|s| s.is_match(path))
    }
}

/// Told how a download advances, so the command line can draw progress bars (stages do
/// not print).
pub trait Progress {
    /// A file starts (or resumes at `done` bytes of `size`).
    fn start(&mut self, file: &str, size: u64, done: u64);
    fn advance(&mut self, bytes: u64);
    fn finish(&mut self);
}

/// Progress that nobody watches.
pub struct NoProgress;

impl Progress for NoProgress {
    fn start(&mut self, _: &str, _: u64, _: u64) {}
    fn advance(&mut self, _: u64) {}
    fn finish(&mut self) {}
}

/// A resolved, verified snapshot: the files selected, where they are in the cache, and
/// their provenance.
#[derive(Clone, Debug)]
pub struct Snapshot {
    pub provenance: Provenance,
    /// `(path in the repository, the blob or file holding it)`, sorted by path.
    pub files: Vec<(String, PathBuf)>,
}

/// Resolve `hf://` to a verified snapshot: from the cache when offline (or when the Hub
/// cannot be reached), else ask the Hub and download what the cache lacks.
pub fn resolve(
    r: &HubRef,
    sel: &Selection,
    settings: &Settings,
    progress: &mut dyn Progress,
) -> Result<Snapshot, HubError> {
    let cache = RepoCache::new(&settings.cache_root, &r.repo);
    if settings.offline {
        return from_cache(r, sel, settings, &cache);
    }
    let client = client::Client::new(&settings.endpoint, settings.token.clone());
    let info = match client.model_info(&r.repo, &r.revision) {
        Ok(info) => info,
        // As in Python: an unreachable or failing Hub falls back to what the cache holds.
        Err(HubError::Transport { .. } | HubError::Http { .. })
            if cache.has_revision(&r.revision)? =>
        {
            return from_cache(r, sel, settings, &cache)
        }
        Err(e) => return Err(e),
    };
    let wanted: Vec<&client::Sibling> = info
        .siblings
        .iter()
        .filter(|s| sel.matches(&s.rfilename))
        .collect();
    if wanted.is_empty() {
        return Err(HubError::NothingSelected {
            repo: r.repo.clone(),
            revision: r.revision.clone(),
        });
    }
    // What each download hashed, so that a file just fetched is not read a second time.
    let mut hashed = std::collections::BTreeMap::new();
    let mut to_link = Vec::new();
    for s in &wanted {
        if cache.snapshot_file(&info.sha, &s.rfilename)?.is_none() {
            let (etag, v) = client.download(&cache, &r.repo, &info.sha, s, progress)?;
            if let Some(v) = v {
                hashed.insert(s.rfilename.as_str(), v);
            }
            to_link.push((s.rfilename.as_str(), etag));
        }
    }
    // Every blob is in: only now does the snapshot show the files, all or none.
    cache.link_all(&info.sha, &to_link)?;
    if r.revision != info.sha.as_str() {
        cache.write_ref(&r.revision, &info.sha)?;
    }
    let mut files = Vec::with_capacity(wanted.len());
    let mut out = Vec::with_capacity(wanted.len());
    for s in &wanted {
        let f = cache
            .snapshot_file(&info.sha, &s.rfilename)?
            .ok_or_else(|| HubError::HostileLayout {
                path: cache.snapshot_dir(&info.sha).join(&s.rfilename),
                why: "the file vanished from the snapshot after it was written".into(),
            })?;
        let v = match hashed.get(s.rfilename.as_str()) {
            Some(v) => *v,
            None => cache.verify(&f)?,
        };
        let lfs = s.lfs.as_ref().map(|l| l.sha256);
        if let Some(expected) = lfs {
            if expected != v.sha256 {
                return Err(HubError::BlobMismatch {
                    path: f.target.clone(),
                    algorithm: "sha256",
                    actual: v.sha256.to_hex(),
                });
            }
        }
        files.push(ProvenanceFile {
            path: s.rfilename.clone(),
            size: v.size,
            sha256: v.sha256,
            hub_lfs_sha256: lfs.or(v.named_sha256),
        });
        out.push((s.rfilename.clone(), f.target));
    }
    let provenance = Provenance::new(
        r.repo.clone(),
        &r.revision,
        info.sha.clone(),
        &settings.endpoint,
        Some(info.card()),
        files,
    );
    Ok(Snapshot {
        provenance,
        files: out,
    })
}

fn from_cache(
    r: &HubRef,
    sel: &Selection,
    settings: &Settings,
    cache: &RepoCache,
) -> Result<Snapshot, HubError> {
    let not_cached = || HubError::NotCached {
        repo: r.repo.clone(),
        revision: r.revision.clone(),
        cache: settings.cache_root.clone(),
    };
    let sha = cache
        .resolve_revision(&r.revision)?
        .ok_or_else(not_cached)?;
    let listed = cache.snapshot_files(&sha)?;
    let mut files = Vec::new();
    let mut out = Vec::new();
    for f in listed.into_iter().filter(|f| sel.matches(&f.path)) {
        let v = cache.verify(&f)?;
        files.push(ProvenanceFile {
            path: f.path.clone(),
            size: v.size,
            sha256: v.sha256,
            hub_lfs_sha256: v.named_sha256,
        });
        out.push((f.path, f.target));
    }
    if out.is_empty() {
        return Err(if cache.snapshot_dir(&sha).exists() {
            HubError::NothingSelected {
                repo: r.repo.clone(),
                revision: r.revision.clone(),
            }
        } else {
            not_cached()
        });
    }
    Ok(Snapshot {
        provenance: Provenance::new(
            r.repo.clone(),
            &r.revision,
            sha,
            &settings.endpoint,
            None,
            files,
        ),
        files: out,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selection_includes_then_excludes() {
        let s = Selection::new(&["*.gguf".into(), "*.json".into()], &["*Q8*".into()]).unwrap();
        assert!(s.matches("m-Q4_K_M.gguf"));
        assert!(s.matches("config.json"));
        assert!(!s.matches("m-Q8_0.gguf"));
        assert!(!s.matches("model.safetensors"));
        assert!(Selection::all().matches("anything/at/all"));
        let e = Selection::new(&["[".into()], &[]).unwrap_err();
        assert!(e.to_string().contains("`[`"), "{e}");
    }

    #[test]
    fn offline_values_read_like_python() {
        for v in ["1", "ON", "yes", "True"] {
            assert!(truthy(v), "{v}");
        }
        for v in ["0", "", "no", "off"] {
            assert!(!truthy(v), "{v}");
        }
    }
}
