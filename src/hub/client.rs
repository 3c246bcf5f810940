//! The Hub's HTTP API, as much of it as an import needs, on the blocking `ureq` client (no
//! async runtime; why not the `hf-hub` crate is said in [`super`]'s doc):
//!
//! - `GET /api/models/{id}/revision/{rev}?blobs=true`: the commit sha a revision names,
//!   the files (`siblings[].rfilename`) with their LFS sha256 and size, the card data
//!   (licence, base model) and the gating mode;
//! - `HEAD /{id}/resolve/{sha}/{path}`: the file's blob name (`X-Linked-Etag` for LFS
//!   files, else `ETag`), size (`X-Linked-Size`, else `Content-Length`), the commit it was
//!   served from (`X-Repo-Commit`), and where to fetch it (a redirect to a CDN, or here);
//! - `GET` of that location with `Range: bytes=N-` to resume a partial download.
//!
//! Redirects are followed by hand: the token goes only to the Hub's own origin, never to a
//! CDN a redirect names. Errors are read from the status and the Hub's `X-Error-Code`
//! (`RepoNotFound`, `RevisionNotFound`, `EntryNotFound`, `GatedRepo`).

use std::fs;
use std::io::{Read, Seek, SeekFrom, Write};
use std::time::Duration;

use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::cache::{git_blob_hasher, normalise_etag, RepoCache, Verified};
use super::spec::{check_repo_path, encode_path, encode_segment, CommitSha, RepoId};
use super::{io_err, HubError, Progress};
use crate::provenance::{Gated, HubCard};
use crate::types::Sha256Digest;

/// The model-info answer for a large repository is well under this.
const MAX_INFO_BYTES: u64 = 64 << 20;
/// Redirect hops followed before giving up.
const MAX_HOPS: usize = 10;
const USER_AGENT: &str = concat!("modelgate/", env!("CARGO_PKG_VERSION"));

/// The part of `/api/models/{id}/revision/{rev}` an import uses.
#[derive(Clone, Debug, Deserialize)]
pub struct ModelInfo {
    pub sha: CommitSha,
    #[serde(default)]
    pub siblings: Vec<Sibling>,
    #[serde(default, rename = "cardData")]
    pub card_data: Option<serde_json::Value>,
    /// `false`, `"auto"` or `"manual"`.
    #[serde(default)]
    pub gated: serde_json::Value,
    #[serde(default)]
    pub private: Option<bool>,
    #[serde(default)]
    pub author: Option<String>,
}

/// One file of the repository.
#[derive(Clone, Debug, Deserialize)]
pub struct Sibling {
    pub rfilename: String,
    #[serde(default)]
    pub size: Option<u64>,
    #[serde(default)]
    pub lfs: Option<Lfs>,
}

/// The LFS pointer facts of a file: the sha256 and size of its content.
#[derive(Clone, Debug, Deserialize)]
pub struct Lfs {
    pub sha256: Sha256Digest,
    pub size: u64,
}

impl ModelInfo {
    /// The licence and gating facts of the card data.
    pub fn card(&self) -> HubCard {
        let card = self.card_data.as_ref();
        let text = |k: &str| {
            card.and_then(|c| c.get(k))
                .and_then(|v| v.as_str())
                .map(str::to_owned)
        };
        let list = |k: &str| -> Vec<String> {
            match card.and_then(|c| c.get(k)) {
                Some(serde_json::Value::String(s)) => vec![s.clone()],
                Some(serde_json::Value::Array(a)) => a
                    .iter()
                    .filter_map(|v| v.as_str().map(str::to_owned))
                    .collect(),
                _ => Vec::new(),
            }
        };
        let gated = match &self.gated {
            serde_json::Value::String(s) if s == "manual" => Gated::Manual,
            serde_json::Value::String(_) | serde_json::Value::Bool(true) => Gated::Auto,
            _ => Gated::No,
        };
        HubCard {
            licence: list("license"),
            licence_name: text("license_name"),
            licence_link: text("license_link"),
            base_model: list("base_model"),
            gated,
            private: self.private,
            author: self.author.clone(),
        }
    }
}

/// What `HEAD /resolve` said about a file.
#[derive(Clone, Debug)]
struct FileMeta {
    etag: String,
    size: u64,
    location: String,
}

/// A client for one Hub endpoint.
pub struct Client {
    agent: ureq::Agent,
    endpoint: String,
    token: Option<String>,
}

impl Client {
    pub fn new(endpoint: &str, token: Option<String>) -> Client {
        let mut builder = ureq::Agent::config_builder();
        // A proxy (from HTTP_PROXY and the like) cannot serve this machine's own loopback.
        let host = origin(endpoint).rsplit("://").next().unwrap_or("");
        let host = host.rsplit_once(':').map_or(host, |(h, _)| h);
        if matches!(host, "127.0.0.1" | "localhost" | "[::1]") {
            builder = builder.proxy(None);
        }
        let config = builder
            .http_status_as_error(false)
            .max_redirects(0)
            .user_agent(USER_AGENT)
            .timeout_connect(Some(Duration::from_secs(30)))
            .timeout_recv_response(Some(Duration::from_secs(60)))
            .timeout_per_read(Some(Duration::from_secs(120)))
            .build();
        Client {
            agent: ureq::Agent::new_with_config(config),
            endpoint: endpoint.trim_end_matches('/').to_owned(),
            token,
        }
    }

    /// The token goes to the Hub's own origin only.
    fn auth<B>(&self, url: &str, req: ureq::RequestBuilder<B>) -> ureq::RequestBuilder<B> {
        match &self.token {
            Some(t) if origin(url) == origin(&self.endpoint) => {
                req.header("Authorization", format!("Bearer {t}"))
            }
            _ => req,
        }
    }

    fn refusal(
        &self,
        url: &str,
        resp: &ureq::http::Response<ureq::Body>,
        repo: &RepoId,
        revision: &str,
    ) -> HubError {
        let status = resp.status().as_u16();
        let code = header(resp, "x-error-code");
        let needs_token = || {
            if self.token.is_none() {
                HubError::NeedsToken {
                    repo: repo.clone(),
                    status,
                    endpoint: self.endpoint.clone(),
                }
            } else {
                HubError::AccessRefused {
                    repo: repo.clone(),
                    status,
                    endpoint: self.endpoint.clone(),
                }
            }
        };
        match code.as_deref() {
            Some("RepoNotFound") => HubError::UnknownRepository {
                repo: repo.clone(),
                endpoint: self.endpoint.clone(),
            },
            Some("RevisionNotFound") => HubError::UnknownRevision {
                repo: repo.clone(),
                revision: revision.to_owned(),
            },
            Some("GatedRepo") => needs_token(),
            _ => match status {
                401 | 403 => needs_token(),
                404 => HubError::UnknownRepository {
                    repo: repo.clone(),
                    endpoint: self.endpoint.clone(),
                },
                _ => HubError::Http {
                    url: url.to_owned(),
                    status,
                },
            },
        }
    }

    /// The commit a revision names and the files it holds.
    pub fn model_info(&self, repo: &RepoId, revision: &str) -> Result<ModelInfo, HubError> {
        let mut url = format!(
            "{}/api/models/{}/{}/revision/{}?blobs=true",
            self.endpoint,
            encode_segment(repo.org()),
            encode_segment(repo.name()),
            encode_segment(revision)
        );
        // A renamed repository answers with a redirect to its new name.
        let mut hops = 0;
        let resp = loop {
            let resp = self
                .auth(&url, self.agent.get(&url))
                .call()
                .map_err(|source| HubError::Transport {
                    url: url.clone(),
                    source,
                })?;
            match resp.status().as_u16() {
                200 => break resp,
                300..=399 if hops < MAX_HOPS => {
                    hops += 1;
                    let loc = header(&resp, "location").ok_or_else(|| HubError::BadResponse {
                        url: url.clone(),
                        why: "a redirect without `Location`".into(),
                    })?;
                    url = join(&url, &loc);
                }
                _ => return Err(self.refusal(&url, &resp, repo, revision)),
            }
        };
        let bad = |why: String| HubError::BadResponse {
            url: url.clone(),
            why,
        };
        let info: ModelInfo = resp
            .into_body()
            .into_with_config()
            .limit(MAX_INFO_BYTES)
            .read_json()
            .map_err(|e| bad(format!("not the model-info JSON expected ({e})")))?;
        for s in &info.siblings {
            if !check_repo_path(&s.rfilename) {
                return Err(bad(format!(
                    "lists `{}`, which is not a relative path inside the repository",
                    s.rfilename
                )));
            }
        }
        Ok(info)
    }

    /// Where and what a file is, following the Hub's own (relative) redirects and
    /// stopping at one to another host, as `huggingface_hub` does.
    fn file_meta(
        &self,
        repo: &RepoId,
        sha: &CommitSha,
        file: &Sibling,
    ) -> Result<FileMeta, HubError> {
        let mut url = format!(
            "{}/{}/resolve/{}/{}",
            self.endpoint,
            repo,
            sha,
            encode_path(&file.rfilename)
        );
        for _ in 0..MAX_HOPS {
            let resp = self
                .auth(&url, self.agent.head(&url))
                .call()
                .map_err(|source| HubError::Transport {
                    url: url.clone(),
                    source,
                })?;
            let status = resp.status().as_u16();
            let bad = |why: String| HubError::BadResponse {
                url: url.clone(),
                why,
            };
            let location = match status {
                200..=299 => url.clone(),
                300..=399 => {
                    let loc = header(&resp, "location")
                        .ok_or_else(|| bad(format!("HTTP {status} without `Location`")))?;
                    let next = join(&url, &loc);
                    if origin(&next) == origin(&url) && header(&resp, "x-linked-etag").is_none() {
                        url = next;
                        continue;
                    }
                    next
                }
                404 if header(&resp, "x-error-code").as_deref() == Some("EntryNotFound") => {
                    return Err(HubError::UnknownFile {
                        repo: repo.clone(),
                        commit: sha.clone(),
                        file: file.rfilename.clone(),
                    })
                }
                _ => return Err(self.refusal(&url, &resp, repo, sha.as_str())),
            };
            let commit = header(&resp, "x-repo-commit")
                .ok_or_else(|| bad("no `X-Repo-Commit` header".into()))?;
            if commit != sha.as_str() {
                return Err(bad(format!(
                    "served commit {commit}, but {sha} was asked for"
                )));
            }
            let raw = header(&resp, "x-linked-etag")
                .or_else(|| header(&resp, "etag"))
                .ok_or_else(|| bad("no `ETag` header".into()))?;
            let etag = normalise_etag(&raw).ok_or_else(|| {
                bad(format!(
                    "etag `{raw}` is neither a sha256 nor a git blob id"
                ))
            })?;
            let size = header(&resp, "x-linked-size")
                .or_else(|| header(&resp, "content-length"))
                .and_then(|s| s.parse::<u64>().ok())
                .ok_or_else(|| bad("no file size (`X-Linked-Size` or `Content-Length`)".into()))?;
            if let Some(lfs) = &file.lfs {
                if etag != lfs.sha256.to_hex() || size != lfs.size {
                    return Err(bad(format!(
                        "`{}` is served as {etag} ({size} bytes), but the file listing says sha256 {} ({} bytes)",
                        file.rfilename, lfs.sha256, lfs.size
                    )));
                }
            }
            return Ok(FileMeta {
                etag,
                size,
                location,
            });
        }
        Err(HubError::BadResponse {
            url,
            why: format!("more than {MAX_HOPS} redirects"),
        })
    }

    /// Download one file into the cache's blobs: `blobs/<etag>.incomplete` (resumed with
    /// `Range`), verified, renamed to `blobs/<etag>`. A file whose digest is wrong is
    /// deleted; a cut-off download leaves only the `.incomplete` file, which the next run
    /// resumes. The snapshot link is left to the caller, which makes the links only once
    /// every file is in, so a snapshot never shows part of a download. Returns the blob's
    /// name and what hashing the download found (`None` when the blob was in the cache
    /// already, another commit's).
    pub fn download(
        &self,
        cache: &RepoCache,
        repo: &RepoId,
        sha: &CommitSha,
        file: &Sibling,
        progress: &mut dyn Progress,
    ) -> Result<(String, Option<Verified>), HubError> {
        let meta = self.file_meta(repo, sha, file)?;
        let blob = cache.blob_path(&meta.etag);
        let fetched = if blob.is_file() {
            None
        } else {
            Some(self.fetch_blob(cache, repo, sha, file, &meta, progress)?)
        };
        Ok((meta.etag, fetched))
    }

    fn fetch_blob(
        &self,
        cache: &RepoCache,
        repo: &RepoId,
        sha: &CommitSha,
        file: &Sibling,
        meta: &FileMeta,
        progress: &mut dyn Progress,
    ) -> Result<Verified, HubError> {
        let name = &file.rfilename;
        let part = cache.incomplete_path(&meta.etag);
        if let Some(dir) = part.parent() {
            fs::create_dir_all(dir).map_err(io_err(dir))?;
        }
        let mut out = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&part)
            .map_err(io_err(&part))?;
        let mut start = out.metadata().map_err(io_err(&part))?.len();
        if start > meta.size {
            start = 0;
        }
        let mut url = meta.location.clone();
        let mut hops = 0;
        let resp = loop {
            let mut req = self.auth(&url, self.agent.get(&url));
            if start > 0 {
                req = req.header("Range", format!("bytes={start}-"));
            }
            let resp = req.call().map_err(|source| HubError::Transport {
                url: url.clone(),
                source,
            })?;
            let status = resp.status().as_u16();
            match status {
                300..=399 if hops < MAX_HOPS => {
                    hops += 1;
                    let loc = header(&resp, "location").ok_or_else(|| HubError::BadResponse {
                        url: url.clone(),
                        why: format!("HTTP {status} without `Location`"),
                    })?;
                    url = join(&url, &loc);
                }
                200 => {
                    // The whole file: a server that ignores `Range` starts over.
                    start = 0;
                    break resp;
                }
                206 => {
                    let range = header(&resp, "content-range").unwrap_or_default();
                    if content_range_start(&range) != Some(start) {
                        let _ = fs::remove_file(&part);
                        return Err(HubError::BadResponse {
                            url,
                            why: format!(
                                "asked for bytes from {start}, got `Content-Range: {range}`"
                            ),
                        });
                    }
                    break resp;
                }
                416 if start == meta.size => break resp,
                416 => {
                    let _ = fs::remove_file(&part);
                    return Err(HubError::BadResponse {
                        url,
                        why: format!("refused to resume `{name}` at byte {start}"),
                    });
                }
                _ => return Err(self.refusal(&url, &resp, repo, sha.as_str())),
            }
        };
        let complete_already = resp.status().as_u16() == 416;
        out.set_len(start).map_err(io_err(&part))?;
        let mut sha256 = Sha256::new();
        let mut git = git_blob_hasher(meta.size);
        // Resuming: hash the bytes already on disk first.
        out.seek(SeekFrom::Start(0)).map_err(io_err(&part))?;
        let mut buf = vec![0u8; 1 << 20];
        let mut left = start;
        while left > 0 {
            let want = usize::try_from(left.min(buf.len() as u64)).unwrap_or(buf.len());
            out.read_exact(&mut buf[..want]).map_err(io_err(&part))?;
            sha256.update(&buf[..want]);
            git.update(&buf[..want]);
            left -= want as u64;
        }
        progress.start(name, meta.size, start);
        let mut total = start;
        if !complete_already {
            let mut body = resp.into_body().into_reader();
            loop {
                let n = match body.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    // A cut connection: what arrived stays for the next run to resume.
                    Err(_) => break,
                };
                total += n as u64;
                if total > meta.size {
                    drop(out);
                    let _ = fs::remove_file(&part);
                    progress.finish();
                    return Err(HubError::BadResponse {
                        url,
                        why: format!("sent more than the {} bytes of `{name}`", meta.size),
                    });
                }
                out.write_all(&buf[..n]).map_err(io_err(&part))?;
                sha256.update(&buf[..n]);
                git.update(&buf[..n]);
                progress.advance(n as u64);
            }
        }
        out.flush().map_err(io_err(&part))?;
        out.sync_all().map_err(io_err(&part))?;
        drop(out);
        progress.finish();
        if total < meta.size {
            return Err(HubError::Truncated {
                file: name.clone(),
                got: total,
                expected: meta.size,
            });
        }
        let mut digest = [0u8; 32];
        digest.copy_from_slice(&sha256.finalize());
        let digest = Sha256Digest(digest);
        let got256 = digest.to_hex();
        let (algorithm, expected, actual) = match &file.lfs {
            Some(l) => ("sha256", l.sha256.to_hex(), got256),
            None if meta.etag.len() == 64 => ("sha256", meta.etag.clone(), got256),
            None => (
                "git blob id",
                meta.etag.clone(),
                hex::encode(git.finalize()),
            ),
        };
        if expected != actual {
            let _ = fs::remove_file(&part);
            return Err(HubError::DigestMismatch {
                file: name.clone(),
                algorithm,
                expected,
                actual,
            });
        }
        let blob = cache.blob_path(&meta.etag);
        fs::rename(&part, &blob).map_err(io_err(&blob))?;
        Ok(Verified {
            size: total,
            sha256: digest,
            named_sha256: Sha256Digest::from_hex(&meta.etag),
        })
    }
}

fn header(resp: &ureq::http::Response<ureq::Body>, name: &str) -> Option<String> {
    resp.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

/// `scheme://host[:port]` of a URL.
fn origin(url: &str) -> &str {
    let after = url.find("://").map_or(0, |i| i + 3);
    match url[after..].find('/') {
        Some(i) => &url[..after + i],
        None => url,
    }
}

/// Resolve a `Location` against the URL that sent it.
fn join(base: &str, location: &str) -> String {
    if location.contains("://") {
        location.to_owned()
    } else if location.starts_with('/') {
        format!("{}{location}", origin(base))
    } else {
        let dir = base.rfind('/').map_or(base, |i| &base[..=i]);
        format!("{dir}{location}")
    }
}

/// The first byte of `bytes START-END/TOTAL`.
fn content_range_start(v: &str) -> Option<u64> {
    v.trim()
        .strip_prefix("bytes ")?
        .split('-')
        .next()?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_and_ranges() {
        assert_eq!(origin("http://127.0.0.1:8080/a/b"), "http://127.0.0.1:8080");
        assert_eq!(origin("https://hf.co"), "https://hf.co");
        assert_eq!(join("http://h:1/a/b", "/c/d"), "http://h:1/c/d");
        assert_eq!(join("http://h:1/a/b", "https://cdn/x"), "https://cdn/x");
        assert_eq!(join("http://h:1/a/b", "c"), "http://h:1/a/c");
        assert_eq!(content_range_start("bytes 100-199/200"), Some(100));
        assert_eq!(content_range_start("items 1-2/3"), None);
    }

    #[test]
    fn card_facts_are_read_from_model_info() {
        let info: ModelInfo = serde_json::from_value(serde_json::json!({
            "sha": "0123456789abcdef0123456789abcdef01234567",
            "gated": "manual",
            "author": "meta-llama",
            "cardData": {"license": "llama3.1", "base_model": ["a/b"], "license_link": "LICENSE"},
            "siblings": [
                {"rfilename": "model.safetensors", "size": 3,
                 "lfs": {"sha256": "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad", "size": 3, "pointerSize": 130}},
                {"rfilename": "config.json"}
            ]
        }))
        .unwrap();
        let c = info.card();
        assert_eq!(c.licence, vec!["llama3.1"]);
        assert_eq!(c.base_model, vec!["a/b"]);
        assert_eq!(c.gated, Gated::Manual);
        assert_eq!(c.licence_link.as_deref(), Some("LICENSE"));
        assert_eq!(info.siblings[0].lfs.as_ref().unwrap().size, 3);
        assert!(info.siblings[1].lfs.is_none());
    }
}
