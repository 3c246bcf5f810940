//! `hf://` models. No Hub is reachable from the test machines, so:
//! - the download path runs against [`FakeHub`], a local HTTP server (127.0.0.1 only)
//!   answering the Hub's endpoints as its public API documents them and as the clients
//!   (huggingface_hub, hf-hub) read them: `/api/models/{id}/revision/{rev}` with `sha`
//!   and `siblings[].lfs`, `/{id}/resolve/{rev}/{file}` with `X-Repo-Commit`,
//!   `X-Linked-Etag`, `X-Linked-Size`, a redirect to a CDN on another port, `Range`, and
//!   401/403 with `X-Error-Code` for unknown and gated repositories;
//! - the cache layout is checked with Python's huggingface_hub itself: its
//!   `scan_cache_dir()` must list what modelgate sees, and its `hf_hub_download()` from
//!   the same server must write the very same tree modelgate writes.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};

use modelgate::hub::{CommitSha, RepoCache, RepoId};
use sha1::Digest as _;

use crate::support;

const SHA: &str = "4b6d1e0c8a2f3e5d7c9b1a0f2e4d6c8b0a1f3e5d";
const TOKEN: &str = "hf_modelgate_test_token";
const REPO: &str = "org/tiny-llama";

struct RepoFile {
    path: String,
    bytes: Vec<u8>,
    lfs: bool,
}

impl RepoFile {
    fn sha256(&self) -> String {
        hex::encode(sha2::Sha256::digest(&self.bytes))
    }

    fn git_id(&self) -> String {
        let mut h = sha1::Sha1::new();
        h.update(format!("blob {}\0", self.bytes.len()).as_bytes());
        h.update(&self.bytes);
        hex::encode(h.finalize())
    }

    /// The blob name the cache uses.
    fn etag(&self) -> String {
        if self.lfs {
            self.sha256()
        } else {
            self.git_id()
        }
    }
}

struct FakeRepo {
    id: String,
    files: Vec<RepoFile>,
    gated: bool,
}

/// Misbehaviours the server can be told to show.
#[derive(Clone, Copy, Default)]
struct Faults {
    /// Close the connection halfway through an LFS file.
    truncate: bool,
    /// Serve LFS content that differs from the listed sha256.
    wrong_content: bool,
}

#[derive(Clone, Debug)]
struct Logged {
    method: String,
    path: String,
    auth: Option<String>,
    range: Option<String>,
}

struct State {
    repos: Vec<FakeRepo>,
    faults: Faults,
    log: Vec<Logged>,
}

struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    cut_at: Option<usize>,
}

impl Reply {
    fn new(status: u16) -> Reply {
        Reply {
            status,
            headers: Vec::new(),
            body: Vec::new(),
            cut_at: None,
        }
    }

    fn header(mut self, k: &str, v: impl Into<String>) -> Reply {
        self.headers.push((k.to_owned(), v.into()));
        self
    }

    fn error(status: u16, code: &str) -> Reply {
        Reply::new(status).header("X-Error-Code", code)
    }
}

/// A Hub on 127.0.0.1: the API and resolve endpoints on one port, LFS content on a CDN
/// on another (so a token must not follow the redirect there).
struct FakeHub {
    endpoint: String,
    state: Arc<Mutex<State>>,
}

impl FakeHub {
    fn start(repos: Vec<FakeRepo>) -> FakeHub {
        let state = Arc::new(Mutex::new(State {
            repos,
            faults: Faults::default(),
            log: Vec::new(),
        }));
        let hub = TcpListener::bind("127.0.0.1:0").unwrap();
        let cdn = TcpListener::bind("127.0.0.1:0").unwrap();
        let endpoint = format!("http://{}", hub.local_addr().unwrap());
        let cdn_url = format!("http://{}", cdn.local_addr().unwrap());
        for listener in [hub, cdn] {
            let state = Arc::clone(&state);
            let cdn_url = cdn_url.clone();
            std::thread::spawn(move || {
                for stream in listener.incoming().flatten() {
                    let state = Arc::clone(&state);
                    let cdn_url = cdn_url.clone();
                    std::thread::spawn(move || serve(stream, &state, &cdn_url));
                }
            });
        }
        FakeHub { endpoint, state }
    }

    fn faults(&self, f: Faults) {
        self.state.lock().unwrap().faults = f;
    }

    fn log(&self) -> Vec<Logged> {
        self.state.lock().unwrap().log.clone()
    }

    fn clear_log(&self) {
        self.state.lock().unwrap().log.clear();
    }
}

fn serve(stream: TcpStream, state: &Mutex<State>, cdn: &str) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut line = String::new();
    if reader.read_line(&mut line).unwrap_or(0) == 0 {
        return;
    }
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or("").to_owned();
    let path = parts.next().unwrap_or("").to_owned();
    let mut headers = BTreeMap::new();
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h).unwrap_or(0) == 0 || h.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_owned());
        }
    }
    let reply = {
        let mut st = state.lock().unwrap();
        st.log.push(Logged {
            method: method.clone(),
            path: path.clone(),
            auth: headers.get("authorization").cloned(),
            range: headers.get("range").cloned(),
        });
        answer(&st, cdn, &method, &path, &headers)
    };
    let mut out = stream;
    let mut head = format!("HTTP/1.1 {} X\r\n", reply.status);
    for (k, v) in &reply.headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str(&format!(
        "Content-Length: {}\r\nConnection: close\r\n\r\n",
        reply.body.len()
    ));
    let _ = out.write_all(head.as_bytes());
    if method != "HEAD" {
        let end = reply.cut_at.unwrap_or(reply.body.len());
        let _ = out.write_all(&reply.body[..end]);
    }
    let _ = out.flush();
    let _ = out.shutdown(std::net::Shutdown::Both);
}

fn decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            out.push(u8::from_str_radix(&s[i + 1..i + 3], 16).unwrap());
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).unwrap()
}

fn ranged(bytes: &[u8], range: Option<&String>) -> Reply {
    let len = bytes.len();
    match range.and_then(|r| {
        r.strip_prefix("bytes=")?
            .strip_suffix('-')?
            .parse::<usize>()
            .ok()
    }) {
        Some(start) if start >= len => {
            Reply::new(416).header("Content-Range", format!("bytes */{len}"))
        }
        Some(start) => {
            let mut r =
                Reply::new(206).header("Content-Range", format!("bytes {start}-{}/{len}", len - 1));
            r.body = bytes[start..].to_vec();
            r
        }
        None => {
            let mut r = Reply::new(200);
            r.body = bytes.to_vec();
            r
        }
    }
}

fn answer(
    st: &State,
    cdn: &str,
    method: &str,
    path: &str,
    headers: &BTreeMap<String, String>,
) -> Reply {
    let path = path.split('?').next().unwrap_or("");
    if let Some(digest) = path.strip_prefix("/cdn/") {
        let Some(f) = st
            .repos
            .iter()
            .flat_map(|r| &r.files)
            .find(|f| f.lfs && f.sha256() == digest)
        else {
            return Reply::new(404);
        };
        let mut bytes = f.bytes.clone();
        if st.faults.wrong_content {
            let last = bytes.len() - 1;
            bytes[last] ^= 0xff;
        }
        let mut r = ranged(&bytes, headers.get("range"));
        if st.faults.truncate && r.status != 416 {
            r.cut_at = Some(r.body.len() / 2);
        }
        return r;
    }
    // A renamed repository: the Hub redirects its old name, relative to itself.
    if let Some(rest) = path.strip_prefix("/api/models/org/old-name/") {
        return Reply::new(307).header("Location", format!("/api/models/org/tiny-llama/{rest}"));
    }
    if let Some(rest) = path.strip_prefix("/org/old-name/resolve/") {
        return Reply::new(307).header("Location", format!("/org/tiny-llama/resolve/{rest}"));
    }
    if let Some(rest) = path.strip_prefix("/api/models/") {
        let segs: Vec<&str> = rest.splitn(4, '/').collect();
        if segs.len() != 4 || segs[2] != "revision" || method != "GET" {
            return Reply::new(404);
        }
        let id = format!("{}/{}", segs[0], segs[1]);
        let Some(repo) = st.repos.iter().find(|r| r.id == id) else {
            return Reply::error(401, "RepoNotFound");
        };
        let rev = decode(segs[3]);
        if rev != "main" && rev != SHA {
            return Reply::error(404, "RevisionNotFound");
        }
        let siblings: Vec<serde_json::Value> = repo
            .files
            .iter()
            .map(|f| {
                let mut s = serde_json::json!({
                    "rfilename": f.path, "size": f.bytes.len(), "blobId": f.git_id()
                });
                if f.lfs {
                    s["lfs"] = serde_json::json!({
                        "sha256": f.sha256(), "size": f.bytes.len(), "pointerSize": 134
                    });
                }
                s
            })
            .collect();
        let body = serde_json::json!({
            "_id": "0000", "id": id, "author": segs[0], "sha": SHA, "private": false,
            "gated": if repo.gated { serde_json::json!("manual") } else { serde_json::json!(false) },
            "cardData": {"license": "apache-2.0", "base_model": "org/base"},
            "siblings": siblings,
        });
        let mut r = Reply::new(200).header("Content-Type", "application/json");
        r.body = serde_json::to_vec(&body).unwrap();
        return r;
    }
    // /{org}/{name}/resolve/{rev}/{path}
    let segs: Vec<&str> = path.trim_start_matches('/').splitn(5, '/').collect();
    if segs.len() != 5 || segs[2] != "resolve" {
        return Reply::new(404);
    }
    let id = format!("{}/{}", segs[0], segs[1]);
    let Some(repo) = st.repos.iter().find(|r| r.id == id) else {
        return Reply::error(401, "RepoNotFound");
    };
    if repo.gated {
        match headers.get("authorization") {
            None => return Reply::error(401, "GatedRepo"),
            Some(a) if *a != format!("Bearer {TOKEN}") => return Reply::error(403, "GatedRepo"),
            _ => {}
        }
    }
    let rev = decode(segs[3]);
    if rev != "main" && rev != SHA {
        return Reply::error(404, "RevisionNotFound");
    }
    let file = decode(segs[4]);
    let Some(f) = repo.files.iter().find(|f| f.path == file) else {
        return Reply::error(404, "EntryNotFound");
    };
    let common = |r: Reply| r.header("X-Repo-Commit", SHA);
    if f.lfs {
        common(Reply::new(302))
            .header("Location", format!("{cdn}/cdn/{}", f.sha256()))
            .header("X-Linked-Etag", format!("\"{}\"", f.sha256()))
            .header("X-Linked-Size", f.bytes.len().to_string())
            .header("ETag", format!("\"{}\"", f.git_id()))
    } else {
        common(ranged(&f.bytes, headers.get("range"))).header("ETag", format!("\"{}\"", f.git_id()))
    }
}

fn tiny_llama(id: &str, gated: bool) -> FakeRepo {
    let dir = support::fixture("models/tiny-llama");
    let mut files: Vec<RepoFile> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            let path = e.file_name().to_string_lossy().into_owned();
            RepoFile {
                lfs: path.ends_with(".safetensors"),
                bytes: std::fs::read(e.path()).unwrap(),
                path,
            }
        })
        .collect();
    files.sort_by(|a, b| a.path.cmp(&b.path));
    FakeRepo {
        id: id.to_owned(),
        files,
        gated,
    }
}

/// A cache, its surroundings and the variables that point at them.
struct Env {
    /// Shared with every `with` variant, so the folder lives as long as the last of them
    /// (a variant of a temporary `Env` would otherwise see its folder deleted and the
    /// command under test recreate it outside any `TempDir`).
    _dir: std::rc::Rc<tempfile::TempDir>,
    home: PathBuf,
    cache: PathBuf,
    vars: Vec<(String, String)>,
}

impl Env {
    fn new(hub: Option<&FakeHub>) -> Env {
        let dir = tempfile::tempdir().unwrap();
        let home = dir.path().join("hf-home");
        let cache = home.join("hub");
        std::fs::create_dir_all(&home).unwrap();
        let mut vars = vec![
            ("HF_HOME".to_owned(), home.display().to_string()),
            ("HF_HUB_CACHE".to_owned(), cache.display().to_string()),
            ("HF_HUB_DISABLE_TELEMETRY".to_owned(), "1".to_owned()),
            ("NO_PROXY".to_owned(), "*".to_owned()),
        ];
        if let Some(h) = hub {
            vars.push(("HF_ENDPOINT".to_owned(), h.endpoint.clone()));
        }
        Env {
            _dir: std::rc::Rc::new(dir),
            home,
            cache,
            vars,
        }
    }

    fn with(&self, k: &str, v: &str) -> Env {
        let mut vars = self.vars.clone();
        vars.retain(|(key, _)| key != k);
        vars.push((k.to_owned(), v.to_owned()));
        Env {
            _dir: std::rc::Rc::clone(&self._dir),
            home: self.home.clone(),
            cache: self.cache.clone(),
            vars,
        }
    }

    fn command(&self, program: &Path) -> Command {
        let mut c = Command::new(program);
        for (k, _) in std::env::vars() {
            let l = k.to_ascii_lowercase();
            if k.starts_with("HF_") || k.starts_with("HUGGING") || l.contains("proxy") {
                c.env_remove(&k);
            }
        }
        for (k, v) in &self.vars {
            c.env(k, v);
        }
        c
    }

    fn run(&self, args: &[&str]) -> Output {
        self.command(Path::new(env!("CARGO_BIN_EXE_modelgate")))
            .args(args)
            .output()
            .unwrap()
    }

    fn repo(&self) -> PathBuf {
        self.cache.join("models--org--tiny-llama")
    }
}

/// The file paths `inspect --json` lists.
fn inspected_files(o: &Output) -> Vec<String> {
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    v["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["path"].as_str().unwrap().to_owned())
        .collect()
}

/// huggingface_hub's `hf_hub_download` of `files` at `main`, with `env`'s variables.
fn python_download(env: &Env, files: &[&str]) {
    let script = format!(
        "from huggingface_hub import hf_hub_download\nfor f in {files:?}:\n    hf_hub_download('{REPO}', f, revision='main')\n"
    );
    let o = env
        .command(&support::oracle_python_path())
        .args(["-c", &script])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o.stderr));
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[track_caller]
fn assert_exit(o: &Output, code: i32, needle: &str) {
    let err = text(&o.stderr);
    assert_eq!(
        o.status.code(),
        Some(code),
        "stdout:\n{}\nstderr:\n{err}",
        text(&o.stdout)
    );
    assert!(err.contains(needle), "`{needle}` not in stderr:\n{err}");
}

/// Every entry under `root`: path, then `dir`, `link -> target` or the file's sha256.
fn tree(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_owned()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let rel = e.path().strip_prefix(root).unwrap().display().to_string();
            let ft = e.file_type().unwrap();
            if ft.is_symlink() {
                let t = std::fs::read_link(e.path()).unwrap();
                out.push(format!("{rel} -> {}", t.display()));
            } else if ft.is_dir() {
                out.push(format!("{rel}/"));
                stack.push(e.path());
            } else {
                let b = std::fs::read(e.path()).unwrap();
                out.push(format!("{rel} = {}", hex::encode(sha2::Sha256::digest(&b))));
            }
        }
    }
    out.sort();
    out
}

/// What a failed run may leave in a repository's cache folder: folders, and blobs that
/// are complete (their content matches their name), kept for the next run; with
/// `resumable`, also the `.incomplete` file of a cut-off download. Never a snapshot entry
/// or a ref, so no reader of the cache takes part of a download for the model.
#[track_caller]
fn assert_nothing_partial(repo: &Path, resumable: bool) {
    if !repo.exists() {
        return;
    }
    for e in tree(repo) {
        if e.ends_with('/') {
            continue;
        }
        let (rel, sha256) = e
            .split_once(" = ")
            .unwrap_or_else(|| panic!("a link was left in the cache: {e}"));
        let name = rel
            .strip_prefix("blobs/")
            .unwrap_or_else(|| panic!("`{rel}` was left in the cache"));
        if name.ends_with(".incomplete") {
            assert!(resumable, "`{rel}` was left in the cache");
            continue;
        }
        let bytes = std::fs::read(repo.join(rel)).unwrap();
        let git = RepoFile {
            path: String::new(),
            bytes,
            lfs: false,
        }
        .git_id();
        assert!(
            name == sha256 || name == git,
            "blob `{rel}` left in the cache does not match its name"
        );
    }
}

const SCAN: &str = r#"
import json, sys
from huggingface_hub import scan_cache_dir
info = scan_cache_dir(sys.argv[1])
repos = []
for r in sorted(info.repos, key=lambda r: r.repo_id):
    revs = []
    for rev in sorted(r.revisions, key=lambda v: v.commit_hash):
        files = sorted([f.file_path.relative_to(rev.snapshot_path).as_posix(), f.size_on_disk, f.blob_path.name] for f in rev.files)
        revs.append({"commit": rev.commit_hash, "refs": sorted(rev.refs), "files": files})
    repos.append({"id": r.repo_id, "type": r.repo_type, "revisions": revs})
print(json.dumps({"warnings": [str(w) for w in info.warnings], "repos": repos}))
"#;

/// What huggingface_hub's `scan_cache_dir` lists, and the same facts read by modelgate.
fn python_and_modelgate_views(cache: &Path) -> (serde_json::Value, serde_json::Value) {
    let o = support::oracle_python()
        .args(["-c", SCAN])
        .arg(cache)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o.stderr));
    let py: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(py["warnings"], serde_json::json!([]), "{py}");
    let mut repos = Vec::new();
    for r in py["repos"].as_array().unwrap() {
        let id = RepoId::parse(r["id"].as_str().unwrap()).unwrap();
        let c = RepoCache::new(cache, &id);
        let mut revs = Vec::new();
        for rev in r["revisions"].as_array().unwrap() {
            let sha = CommitSha::parse(rev["commit"].as_str().unwrap()).unwrap();
            assert_eq!(c.resolve_revision(sha.as_str()).unwrap(), Some(sha.clone()));
            let refs: Vec<String> = rev["refs"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_str().unwrap().to_owned())
                .collect();
            for name in &refs {
                assert_eq!(
                    c.resolve_revision(name).unwrap(),
                    Some(sha.clone()),
                    "{name}"
                );
            }
            let files: Vec<serde_json::Value> = c
                .snapshot_files(&sha)
                .unwrap()
                .iter()
                .map(|f| {
                    let v = c.verify(f).unwrap();
                    serde_json::json!([f.path, v.size, f.blob.clone().unwrap()])
                })
                .collect();
            revs.push(serde_json::json!({"commit": sha.as_str(), "refs": refs, "files": files}));
        }
        repos.push(serde_json::json!({"id": id.to_string(), "type": "model", "revisions": revs}));
    }
    let mg = serde_json::json!({"warnings": [], "repos": repos});
    (py, mg)
}

#[test]
fn download_writes_the_layout_python_writes_and_reads() {
    let hub = FakeHub::start(vec![tiny_llama(REPO, false)]);
    let env = Env::new(Some(&hub)).with("HF_TOKEN", TOKEN);
    let o = env.run(&["inspect", "hf://org/tiny-llama"]);
    assert_exit(&o, 0, "");
    assert!(
        text(&o.stdout).contains("tiny-llama"),
        "{}",
        text(&o.stdout)
    );

    // The layout: refs, blobs named by etag, relative symlinks, nothing partial.
    let repo = env.repo();
    assert_eq!(
        std::fs::read_to_string(repo.join("refs/main")).unwrap(),
        SHA
    );
    let fake = tiny_llama(REPO, false);
    for f in &fake.files {
        let link = std::fs::read_link(repo.join("snapshots").join(SHA).join(&f.path)).unwrap();
        assert_eq!(link, Path::new("../../blobs").join(f.etag()), "{}", f.path);
        assert_eq!(
            std::fs::read(repo.join("blobs").join(f.etag())).unwrap(),
            f.bytes
        );
    }
    assert!(!tree(&repo).iter().any(|e| e.contains(".incomplete")));
    // The token reached the Hub but not the CDN.
    let log = hub.log();
    assert!(log.iter().any(|l| l.path.starts_with("/cdn/")));
    for l in &log {
        let expect = if l.path.starts_with("/cdn/") {
            None
        } else {
            Some(format!("Bearer {TOKEN}"))
        };
        assert_eq!(l.auth, expect, "{l:?}");
    }
    // The view modelgate made beside the cache is gone.
    let left: Vec<_> = std::fs::read_dir(&env.home)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(left, vec![std::ffi::OsString::from("hub")]);

    // Offline: through refs/main, and a pinned sha with no ref naming it.
    let offline = env.with("HF_HUB_OFFLINE", "1");
    hub.clear_log();
    assert_exit(
        &offline.run(&["inspect", "hf://org/tiny-llama@main"]),
        0,
        "",
    );
    std::fs::remove_file(repo.join("refs/main")).unwrap();
    assert_exit(
        &offline.run(&["inspect", &format!("hf://org/tiny-llama@{SHA}")]),
        0,
        "",
    );
    assert!(
        hub.log().is_empty(),
        "offline runs asked the server: {:?}",
        hub.log()
    );
    std::fs::write(repo.join("refs/main"), SHA).unwrap();

    // huggingface_hub's own reader lists what modelgate sees.
    let (py, mg) = python_and_modelgate_views(&env.cache);
    assert_eq!(py, mg);
    assert_eq!(
        py["repos"][0]["revisions"][0]["refs"],
        serde_json::json!(["main"])
    );
    assert_eq!(
        py["repos"][0]["revisions"][0]["files"]
            .as_array()
            .unwrap()
            .len(),
        fake.files.len()
    );

    // huggingface_hub's own downloader, from the same server, writes the same tree.
    let other = Env::new(Some(&hub));
    let files: Vec<&str> = fake.files.iter().map(|f| f.path.as_str()).collect();
    python_download(&other, &files);
    assert_eq!(tree(&other.repo()), tree(&repo));
}

#[test]
fn a_renamed_repository_is_followed_and_cached_under_the_name_asked_for() {
    let hub = FakeHub::start(vec![tiny_llama(REPO, false)]);
    let env = Env::new(Some(&hub)).with("HF_TOKEN", TOKEN);
    assert_exit(&env.run(&["inspect", "hf://org/old-name"]), 0, "");
    let dir = env.cache.join("models--org--old-name");
    assert_eq!(std::fs::read_to_string(dir.join("refs/main")).unwrap(), SHA);
    assert!(dir
        .join("snapshots")
        .join(SHA)
        .join("model.safetensors")
        .is_file());
    // The token followed the Hub's own (relative) redirects.
    let log = hub.log();
    assert!(log
        .iter()
        .any(|l| l.path.starts_with("/org/tiny-llama/resolve/")));
    assert!(log
        .iter()
        .filter(|l| !l.path.starts_with("/cdn/"))
        .all(|l| l.auth.is_some()));
}

#[test]
fn a_cache_python_wrote_is_read_offline() {
    let hub = FakeHub::start(vec![tiny_llama(REPO, false)]);
    let env = Env::new(Some(&hub));
    python_download(
        &env,
        &["config.json", "model.safetensors", "tokenizer.json"],
    );
    let offline = env.with("HF_HUB_OFFLINE", "1");
    hub.clear_log();
    let o = offline.run(&["inspect", "--json", "hf://org/tiny-llama"]);
    assert_exit(&o, 0, "");
    let files = inspected_files(&o);
    assert_eq!(
        files,
        ["config.json", "model.safetensors", "tokenizer.json"]
    );
    assert!(hub.log().is_empty());
    let (py, mg) = python_and_modelgate_views(&env.cache);
    assert_eq!(py, mg);
}

#[test]
fn include_and_exclude_take_a_subset() {
    let hub = FakeHub::start(vec![tiny_llama(REPO, false)]);
    let env = Env::new(Some(&hub));
    let o = env.run(&[
        "inspect",
        "--json",
        "hf://org/tiny-llama",
        "--include",
        "*.safetensors",
        "--include",
        "*.json",
        "--exclude",
        "tokenizer*",
    ]);
    assert_exit(&o, 0, "");
    let files = inspected_files(&o);
    assert_eq!(
        files,
        ["config.json", "generation_config.json", "model.safetensors"]
    );
    let fetched: Vec<String> = hub
        .log()
        .iter()
        .filter(|l| l.method == "GET" && l.path.contains("/resolve/"))
        .map(|l| l.path.rsplit('/').next().unwrap().to_owned())
        .collect();
    assert!(
        !fetched
            .iter()
            .any(|f| f.starts_with("tokenizer") || f == "LICENSE"),
        "{fetched:?}"
    );
    // One file selected: the stages get the file itself.
    let o = env.run(&[
        "inspect",
        "hf://org/tiny-llama",
        "--include",
        "model.safetensors",
    ]);
    assert_exit(&o, 0, "");
    assert!(
        text(&o.stdout).contains("safetensors file"),
        "{}",
        text(&o.stdout)
    );
    // Globs matching nothing, and globs on a local path, are usage errors.
    let o = env.run(&["inspect", "hf://org/tiny-llama", "--include", "*.gguf"]);
    assert_exit(&o, 2, "matches the --include/--exclude");
    let local = support::fixture("models/tiny-llama");
    let o = env.run(&["inspect", local.to_str().unwrap(), "--include", "*.json"]);
    assert_exit(&o, 2, "apply only to `hf://`");
}

#[test]
fn interrupted_download_resumes_with_range() {
    let hub = FakeHub::start(vec![tiny_llama(REPO, false)]);
    let env = Env::new(Some(&hub));
    let fake = tiny_llama(REPO, false);
    let weights = fake.files.iter().find(|f| f.lfs).unwrap();
    let part = env
        .repo()
        .join("blobs")
        .join(format!("{}.incomplete", weights.sha256()));

    hub.faults(Faults {
        truncate: true,
        ..Faults::default()
    });
    let o = env.run(&["scan", "hf://org/tiny-llama"]);
    assert_exit(&o, 2, "stopped after");
    assert_exit(&o, 2, "hint: run the command again");
    // Nothing partial is in the cache's view of the repository: no blob of the cut file,
    // no snapshot entry (not even of the files that did arrive), no ref.
    assert!(!env.repo().join("blobs").join(weights.sha256()).exists());
    assert_nothing_partial(&env.repo(), true);
    let had = std::fs::metadata(&part).unwrap().len();
    assert!(had > 0 && (had as usize) < weights.bytes.len());

    hub.faults(Faults::default());
    hub.clear_log();
    assert_exit(&env.run(&["scan", "hf://org/tiny-llama"]), 0, "");
    assert!(!part.exists());
    assert_eq!(
        std::fs::read(env.repo().join("blobs").join(weights.sha256())).unwrap(),
        weights.bytes
    );
    let ranges: Vec<_> = hub.log().into_iter().filter_map(|l| l.range).collect();
    assert_eq!(ranges, vec![format!("bytes={had}-")]);
}

#[test]
fn sha256_mismatch_is_an_error_and_leaves_nothing() {
    let hub = FakeHub::start(vec![tiny_llama(REPO, false)]);
    let env = Env::new(Some(&hub));
    hub.faults(Faults {
        wrong_content: true,
        ..Faults::default()
    });
    let o = env.run(&["inspect", "hf://org/tiny-llama"]);
    assert_exit(&o, 2, "`model.safetensors` downloaded with sha256");
    let blobs = tree(&env.repo().join("blobs"));
    assert!(
        !blobs.iter().any(|b| b.contains(".incomplete")),
        "{blobs:?}"
    );
    let fake = tiny_llama(REPO, false);
    let weights = fake.files.iter().find(|f| f.lfs).unwrap();
    assert!(!env.repo().join("blobs").join(weights.sha256()).exists());
    assert_nothing_partial(&env.repo(), false);
    // The next run, with the right bytes, does not fetch again the files that arrived
    // whole before the bad one (listed before it).
    hub.faults(Faults::default());
    hub.clear_log();
    assert_exit(&env.run(&["inspect", "hf://org/tiny-llama"]), 0, "");
    let got: Vec<String> = hub
        .log()
        .iter()
        .filter(|l| l.method == "GET" && !l.path.starts_with("/api/"))
        .map(|l| l.path.rsplit('/').next().unwrap().to_owned())
        .collect();
    let before: Vec<&str> = fake
        .files
        .iter()
        .take_while(|f| !f.lfs)
        .map(|f| f.path.as_str())
        .collect();
    assert!(!before.is_empty());
    assert!(got.iter().all(|g| !before.contains(&g.as_str())), "{got:?}");
    assert_eq!(got.iter().filter(|g| **g == weights.sha256()).count(), 1);
}

#[test]
fn unknown_repositories_and_revisions_are_input_errors() {
    let hub = FakeHub::start(vec![tiny_llama(REPO, false)]);
    let env = Env::new(Some(&hub));
    assert_exit(
        &env.run(&["inspect", "hf://org/missing"]),
        2,
        "repository `org/missing` does not exist",
    );
    assert_exit(
        &env.run(&["inspect", "hf://org/tiny-llama@nope"]),
        2,
        "revision `nope` does not exist",
    );
    assert_exit(
        &env.run(&["inspect", "hf://org/../x"]),
        2,
        "is not a hub model reference",
    );
    assert!(!env.repo().exists() || tree(&env.repo()).iter().all(|e| e.ends_with('/')));
    assert!(!env.cache.join("models--org--missing").exists());
}

#[test]
fn gated_repositories_need_a_token() {
    let hub = FakeHub::start(vec![tiny_llama("org/gated", true)]);
    let env = Env::new(Some(&hub));
    let o = env.run(&["inspect", "hf://org/gated"]);
    assert_exit(
        &o,
        2,
        "`org/gated` is gated or private and no token was given (HTTP 401)",
    );
    assert_exit(&o, 2, "hint: accept the conditions");
    assert_exit(&o, 2, "HF_TOKEN");
    let o = env
        .with("HF_TOKEN", "hf_wrong")
        .run(&["inspect", "hf://org/gated"]);
    assert_exit(&o, 2, "refused access to `org/gated`");
    let dir = env.cache.join("models--org--gated");
    assert_nothing_partial(&dir, false);
    assert!(!dir.join("refs").exists());
    assert_exit(
        &env.with("HF_TOKEN", TOKEN)
            .run(&["inspect", "hf://org/gated"]),
        0,
        "",
    );
}

#[test]
fn offline_with_an_empty_cache_is_an_input_error() {
    let env = Env::new(None).with("HF_HUB_OFFLINE", "1");
    let o = env.run(&["scan", "hf://org/tiny-llama"]);
    assert_exit(&o, 2, "is not in the hub cache");
    assert_exit(&o, 2, "HF_HUB_OFFLINE");
    assert!(!env.cache.exists());
}

#[test]
fn hostile_cache_layouts_are_input_errors() {
    let hub = FakeHub::start(vec![tiny_llama(REPO, false)]);
    let env = Env::new(Some(&hub));
    assert_exit(&env.run(&["inspect", "hf://org/tiny-llama"]), 0, "");
    let offline = env.with("HF_HUB_OFFLINE", "1");
    let repo = env.repo();
    let fake = tiny_llama(REPO, false);
    let config = fake.files.iter().find(|f| f.path == "config.json").unwrap();
    let blob = repo.join("blobs").join(config.etag());

    // A blob whose content does not match its name.
    std::fs::write(&blob, b"{\"model_type\": \"evil\"}").unwrap();
    assert_exit(
        &offline.run(&["inspect", "hf://org/tiny-llama"]),
        2,
        "does not hold what its name says",
    );
    std::fs::write(&blob, &config.bytes).unwrap();

    // A snapshot entry linking outside the cache.
    let outside = env.home.join("outside.json");
    std::fs::write(&outside, &config.bytes).unwrap();
    let entry = repo.join("snapshots").join(SHA).join("config.json");
    std::fs::remove_file(&entry).unwrap();
    std::os::unix::fs::symlink(&outside, &entry).unwrap();
    assert_exit(
        &offline.run(&["inspect", "hf://org/tiny-llama"]),
        2,
        "outside the cache",
    );
    std::fs::remove_file(&entry).unwrap();
    std::os::unix::fs::symlink(Path::new("../../blobs").join(config.etag()), &entry).unwrap();
    assert_exit(&offline.run(&["inspect", "hf://org/tiny-llama"]), 0, "");

    // refs/main naming a snapshot that does not exist.
    std::fs::write(repo.join("refs/main"), "0".repeat(40)).unwrap();
    assert_exit(
        &offline.run(&["inspect", "hf://org/tiny-llama"]),
        2,
        "does not exist",
    );
}

#[test]
fn policy_checks_pinning_and_publishers_of_hub_models() {
    let hub = FakeHub::start(vec![tiny_llama(REPO, false)]);
    let env = Env::new(Some(&hub));
    let policy = env.home.join("policy.yaml");
    std::fs::write(
        &policy,
        "name: hub\nintended_use:\n  commercial: false\n  distribution: internal\nprovenance:\n  require_pinned_revision: true\n  allowed_publishers: [trusted-org]\n",
    )
    .unwrap();
    let rules = |o: &Output| -> Vec<String> {
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        let mut r: Vec<String> = v
            .pointer("/reports/0/findings")
            .or_else(|| v.pointer("/0/findings"))
            .or_else(|| v.get("findings"))
            .and_then(|f| f.as_array())
            .unwrap_or_else(|| panic!("no findings in {v}"))
            .iter()
            .map(|f| f["rule"].as_str().unwrap().to_owned())
            .filter(|r| r == "policy/revision-unpinned" || r == "policy/publisher-not-allowed")
            .collect();
        r.sort();
        r
    };
    let p = policy.to_str().unwrap();
    let o = env.run(&[
        "policy",
        "check",
        "hf://org/tiny-llama",
        "--policy",
        p,
        "--format",
        "json",
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o.stderr));
    assert_eq!(
        rules(&o),
        ["policy/publisher-not-allowed", "policy/revision-unpinned"]
    );
    std::fs::write(
        &policy,
        std::fs::read_to_string(&policy)
            .unwrap()
            .replace("trusted-org", "ORG"),
    )
    .unwrap();
    let pinned = format!("hf://org/tiny-llama@{SHA}");
    let o = env.run(&[
        "policy", "check", &pinned, "--policy", p, "--format", "json",
    ]);
    assert!(rules(&o).is_empty(), "{}", text(&o.stdout));
}

#[test]
fn sign_and_verify_need_a_named_signature_for_hub_models() {
    let env = Env::new(None).with("HF_HUB_OFFLINE", "1");
    let key = env.home.join("k.pem");
    let o = env.run(&[
        "sign",
        "hf://org/tiny-llama",
        "--key",
        key.to_str().unwrap(),
    ]);
    assert_exit(&o, 2, "--signature FILE");
}

#[test]
fn resolve_records_the_provenance_of_every_file() {
    use modelgate::hub::{self, HubRef, NoProgress, Selection, Settings};
    let hub_server = FakeHub::start(vec![tiny_llama(REPO, false)]);
    let dir = tempfile::tempdir().unwrap();
    let mut settings = Settings {
        cache_root: dir.path().join("hub"),
        endpoint: hub_server.endpoint.clone(),
        token: None,
        offline: false,
    };
    let r = HubRef::parse("hf://org/tiny-llama").unwrap().unwrap();
    let online = hub::resolve(&r, &Selection::all(), &settings, &mut NoProgress).unwrap();
    let p = &online.provenance;
    assert_eq!(p.repository.to_string(), REPO);
    assert_eq!(p.requested_revision, "main");
    assert_eq!(p.commit.as_str(), SHA);
    assert!(!p.is_pinned());
    let card = p.hub.as_ref().unwrap();
    assert_eq!(card.licence, ["apache-2.0"]);
    assert_eq!(card.base_model, ["org/base"]);
    assert_eq!(card.gated, hub::Gated::No);
    let fake = tiny_llama(REPO, false);
    assert_eq!(p.files.len(), fake.files.len());
    for (got, want) in p.files.iter().zip(&fake.files) {
        assert_eq!(got.path, want.path);
        assert_eq!(got.size, want.bytes.len() as u64);
        assert_eq!(got.sha256.to_hex(), want.sha256());
        let lfs = got.hub_lfs_sha256.map(|d| d.to_hex());
        assert_eq!(lfs, want.lfs.then(|| want.sha256()), "{}", want.path);
    }
    // From the cache alone: the same files and digests, no Hub facts.
    settings.offline = true;
    let offline = hub::resolve(&r, &Selection::all(), &settings, &mut NoProgress).unwrap();
    assert_eq!(offline.provenance.files, p.files);
    assert_eq!(offline.provenance.commit, p.commit);
    assert!(offline.provenance.hub.is_none());
    // The record is deterministic.
    assert_eq!(
        serde_json::to_string(&offline.provenance).unwrap(),
        serde_json::to_string(
            &hub::resolve(&r, &Selection::all(), &settings, &mut NoProgress)
                .unwrap()
                .provenance
        )
        .unwrap()
    );
}

#[test]
fn every_model_command_takes_a_hub_model() {
    let hub = FakeHub::start(vec![tiny_llama(REPO, false)]);
    let env = Env::new(Some(&hub));
    assert_exit(&env.run(&["inspect", "hf://org/tiny-llama"]), 0, "");
    // From here on the cache answers: no command asks the server.
    let offline = env.with("HF_HUB_OFFLINE", "1");
    hub.clear_log();
    let m = "hf://org/tiny-llama";
    let dir = tempfile::tempdir().unwrap();
    let path = |n: &str| dir.path().join(n).to_str().unwrap().to_owned();
    let eval = support::fixture("text/eval.txt");
    let eval = eval.to_str().unwrap();

    let o = offline.run(&["license", m, "--json"]);
    assert_exit(&o, 0, "");
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(v["licences"].to_string().contains("apache-2.0"), "{v}");
    assert_eq!(v["subject"], "hf://org/tiny-llama@main");
    assert_eq!(v["source"]["commit"], SHA);

    let q8 = path("tiny-q8_0.gguf");
    let o = offline.run(&[
        "convert",
        m,
        "-o",
        &q8,
        "--type",
        "Q8_0",
        "--quiet",
        "--exclude",
        "README.md",
    ]);
    assert_exit(&o, 0, "");
    assert!(Path::new(&q8).is_file());

    // The globs apply to the hub model of the two.
    let o = offline.run(&[
        "parity",
        m,
        &q8,
        "--text",
        eval,
        "--ctx",
        "64",
        "--chunks",
        "1",
        "--json",
        "--quiet",
        "--exclude",
        "README.md",
    ]);
    assert_exit(&o, 0, "");
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["candidate"]["quant"], "Q8_0", "{v}");

    let golden = path("golden.json");
    let o = offline.run(&[
        "parity", "record", m, "--out", &golden, "--text", eval, "--ctx", "64", "--chunks", "1",
        "--top", "16", "--quiet",
    ]);
    assert_exit(&o, 0, "");
    let o = offline.run(&["parity", "check", m, "--golden", &golden, "--quiet"]);
    assert_exit(&o, 0, "");

    let key = path("k.pem");
    assert_exit(
        &offline.run(&["keygen", "--alg", "ed25519", "--out", &key]),
        0,
        "",
    );
    let public = format!("{key}.pub");
    let sig = path("tiny.sig");
    let o = offline.run(&["sign", m, "--key", &key, "--signature", &sig, "--quiet"]);
    assert_exit(&o, 0, "");
    let o = offline.run(&["verify", m, "--key", &public, "--signature", &sig]);
    assert_exit(&o, 0, "");
    // A subset of the repository is not what was signed.
    let o = offline.run(&[
        "verify",
        m,
        "--key",
        &public,
        "--signature",
        &sig,
        "--exclude",
        "tokenizer.json",
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o.stderr));

    assert!(hub.log().is_empty(), "{:?}", hub.log());
}

#[test]
fn a_pipeline_takes_a_hub_model_and_its_reports_name_the_commit() {
    let hub = FakeHub::start(vec![tiny_llama(REPO, false)]);
    let env = Env::new(Some(&hub));
    let dir = env.home.join("run");
    std::fs::create_dir_all(&dir).unwrap();
    let key = dir.join("k.pem");
    assert_exit(
        &env.run(&["keygen", "--alg", "ed25519", "--out", key.to_str().unwrap()]),
        0,
        "",
    );
    let policy = support::repo().join("policies/research.yaml");
    let yaml = format!(
        "name: hubrun\nmodel: hf://org/tiny-llama\nexclude: [generation_config.json]\npolicy: {}\nsteps:\n  scan: {{}}\n  convert:\n    targets:\n      - {{ name: q8, type: Q8_0, format: gguf }}\n  policy: {{}}\n  sign: {{ key: k.pem }}\n",
        policy.display()
    );
    let pipeline = dir.join("hub.yaml");
    std::fs::write(&pipeline, &yaml).unwrap();
    // The file fits the pipeline schema.
    let schema: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(support::repo().join("schemas/pipeline.schema.json")).unwrap(),
    )
    .unwrap();
    let doc: serde_json::Value = serde_yaml::from_str(&yaml).unwrap();
    let v = jsonschema::options().build(&schema).unwrap();
    crate::pipeline::assert_valid(&v, &doc, "hub.yaml");

    let o = env.run(&["run", pipeline.to_str().unwrap()]);
    assert_exit(&o, 0, "");
    let out = dir.join("hub.out");
    let fake = tiny_llama(REPO, false);
    let tree_url = format!("{}/{REPO}/tree/{SHA}", hub.endpoint);

    // report.json: the model by the name written, the provenance of every file taken.
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("report.json")).unwrap()).unwrap();
    assert_eq!(report["model"]["path"], "hf://org/tiny-llama@main");
    let src = &report["source"];
    assert_eq!(src["repository"], REPO);
    assert_eq!(src["requested_revision"], "main");
    assert_eq!(src["commit"], SHA);
    assert_eq!(src["hub"]["licence"][0], "apache-2.0");
    let files: Vec<&str> = src["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["path"].as_str().unwrap())
        .collect();
    let want: Vec<&str> = fake
        .files
        .iter()
        .map(|f| f.path.as_str())
        .filter(|p| *p != "generation_config.json")
        .collect();
    assert_eq!(files, want);
    let weights = fake.files.iter().find(|f| f.lfs).unwrap();
    let w = src["files"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["path"] == weights.path.as_str())
        .unwrap();
    assert_eq!(w["sha256"], weights.sha256());
    assert_eq!(w["hub_lfs_sha256"], weights.sha256());
    // No gate names the temporary local copy.
    let text_report = std::fs::read_to_string(out.join("report.json")).unwrap();
    assert!(!text_report.contains(".modelgate-view-"), "{text_report}");
    for s in report["steps"].as_array().unwrap() {
        if s["step"] == "scan" || s["step"] == "policy" {
            // The first gate is the source's (the policy step's others are artifacts').
            assert_eq!(s["gates"][0]["subject"], "hf://org/tiny-llama@main", "{s}");
        }
    }

    // report.md
    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(md.contains("## Source"), "{md}");
    assert!(md.contains(&format!("resolved to commit `{SHA}`")), "{md}");
    assert!(md.contains(&weights.sha256()), "{md}");

    // CycloneDX: pinned by version and purl, the commit's files as the distribution.
    let bom: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("bom.cdx.json")).unwrap()).unwrap();
    crate::pipeline::assert_valid(
        &crate::pipeline::cyclonedx_validator(),
        &bom,
        "bom.cdx.json",
    );
    let purl = format!("pkg:huggingface/org/tiny-llama@{SHA}");
    let source = bom.to_string();
    assert!(source.contains(&purl), "{bom}");
    assert!(source.contains(&tree_url), "{bom}");

    // SPDX: the source package's downloadLocation is the commit's files.
    let spdx_path = out.join("bom.spdx.json");
    let spdx: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&spdx_path).unwrap()).unwrap();
    let pkg = spdx["@graph"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["software_packageUrl"] == purl.as_str())
        .unwrap_or_else(|| panic!("no package with purl {purl}: {spdx}"));
    assert_eq!(pkg["software_downloadLocation"], tree_url.as_str());
    assert_eq!(pkg["software_packageVersion"], SHA);
    crate::pipeline::assert_spdx3_valid(&[&spdx_path]);

    // The artifact's signed attestation carries the source it was converted from.
    let att = std::fs::read(out.join("q8.gguf.att.sig")).unwrap();
    let att: serde_json::Value = serde_json::from_slice(&att).unwrap();
    let payload = att["dsseEnvelope"]["payload"].as_str().unwrap();
    let payload = base64_decode(payload);
    let statement: serde_json::Value = serde_json::from_slice(&payload).unwrap();
    assert_eq!(statement["predicate"]["modelgate"]["source"]["commit"], SHA);

    // A second run reads the cache, asks the Hub only for the revision, and is cached.
    hub.clear_log();
    let o = env.run(&["run", pipeline.to_str().unwrap()]);
    assert_exit(&o, 0, "");
    assert!(
        hub.log().iter().all(|l| l.path.starts_with("/api/")),
        "{:?}",
        hub.log()
    );
    let again: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("report.json")).unwrap()).unwrap();
    for s in again["steps"].as_array().unwrap() {
        assert_eq!(s["status"], "cached", "{}", s["name"]);
    }
}

#[test]
fn sign_attests_a_hub_model_by_its_commit() {
    let hub = FakeHub::start(vec![tiny_llama(REPO, false)]);
    let env = Env::new(Some(&hub));
    let dir = env.home.join("s");
    std::fs::create_dir_all(&dir).unwrap();
    let p = |n: &str| dir.join(n).to_str().unwrap().to_owned();
    let (key, sig, report) = (p("k.pem"), p("m.sig"), p("scan.json"));
    assert_exit(
        &env.run(&["keygen", "--alg", "ed25519", "--out", &key]),
        0,
        "",
    );
    let o = env.run(&["scan", "hf://org/tiny-llama", "--format", "json"]);
    assert_exit(&o, 0, "");
    std::fs::write(&report, &o.stdout).unwrap();
    // The scan report names the model as asked for and records where it came from.
    let scan: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let scan = if scan.is_array() { &scan[0] } else { &scan };
    assert_eq!(scan["subject"], "hf://org/tiny-llama@main", "{scan}");
    assert_eq!(scan["details"]["source"]["commit"], SHA, "{scan}");
    let o = env.run(&[
        "sign",
        "hf://org/tiny-llama",
        "--key",
        &key,
        "--signature",
        &sig,
        "--attest",
        &report,
        "--quiet",
    ]);
    assert_exit(&o, 0, "");
    let att: serde_json::Value =
        serde_json::from_slice(&std::fs::read(p("m.att.sig")).unwrap()).unwrap();
    let payload = base64_decode(att["dsseEnvelope"]["payload"].as_str().unwrap());
    let statement: serde_json::Value = serde_json::from_slice(&payload).unwrap();
    assert_eq!(
        statement["predicate"]["resourceUri"],
        format!("{}/{REPO}/tree/{SHA}", hub.endpoint)
    );
    assert_eq!(
        statement["predicate"]["modelgate"]["source"]["requested_revision"],
        "main"
    );
    let o = env.run(&[
        "verify",
        "hf://org/tiny-llama",
        "--key",
        &format!("{key}.pub"),
        "--signature",
        &sig,
    ]);
    assert_exit(&o, 0, "");
}

fn base64_decode(s: &str) -> Vec<u8> {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.decode(s).unwrap()
}

#[test]
fn a_pipeline_whose_hub_model_cannot_be_had_is_an_input_error() {
    let hub = FakeHub::start(vec![tiny_llama(REPO, false)]);
    let env = Env::new(Some(&hub));
    let dir = env.home.join("run");
    std::fs::create_dir_all(&dir).unwrap();
    let pipeline = dir.join("p.yaml");
    std::fs::write(&pipeline, "model: hf://org/missing\nsteps:\n  scan: {}\n").unwrap();
    let o = env.run(&["run", pipeline.to_str().unwrap()]);
    assert_exit(&o, 2, "step `import` could not run");
    assert_exit(&o, 2, "repository `org/missing` does not exist");
    assert_exit(&o, 2, "hint: check the spelling");
    let offline = env.with("HF_HUB_OFFLINE", "1");
    std::fs::write(
        &pipeline,
        "model: hf://org/tiny-llama\nsteps:\n  scan: {}\n",
    )
    .unwrap();
    let o = offline.run(&["run", pipeline.to_str().unwrap()]);
    assert_exit(&o, 2, "is not in the hub cache");
    assert!(!dir.join("p.out/report.json").exists());
}

/// The full stderr of every bad input, as one insta snapshot: `error:`, each cause once,
/// one `hint:`; the server's address and temporary paths normalised.
#[test]
fn bad_input_messages() {
    let hub = FakeHub::start(vec![tiny_llama(REPO, false), tiny_llama("org/gated", true)]);
    let env = Env::new(Some(&hub));
    let mut all = String::new();
    let mut case = |title: &str, e: &Env, args: &[&str]| {
        let tmp = e.home.parent().unwrap().to_owned();
        let o = e.run(args);
        let err = text(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{title}: {err}");
        assert!(o.stdout.is_empty(), "{title} printed to stdout");
        crate::errors::assert_each_cause_once(&err);
        let err = err
            .replace(&hub.endpoint, "[HUB]")
            .replace(tmp.to_str().unwrap(), "[TMP]");
        all.push_str(&format!(
            "## {title}: modelgate {}\n{err}\n",
            args.join(" ")
        ));
    };
    case("unknown repository", &env, &["inspect", "hf://org/missing"]);
    case(
        "unknown revision",
        &env,
        &["inspect", "hf://org/tiny-llama@nope"],
    );
    case("gated, no token", &env, &["inspect", "hf://org/gated"]);
    case(
        "gated, a token without access",
        &env.with("HF_TOKEN", "hf_wrong"),
        &["inspect", "hf://org/gated"],
    );
    hub.faults(Faults {
        truncate: true,
        ..Faults::default()
    });
    case("truncated download", &env, &["scan", "hf://org/tiny-llama"]);
    hub.faults(Faults {
        wrong_content: true,
        ..Faults::default()
    });
    let fresh = Env::new(Some(&hub));
    let fresh_tmp = fresh.home.parent().unwrap().to_owned();
    let o = fresh.run(&["inspect", "hf://org/tiny-llama"]);
    assert_eq!(o.status.code(), Some(2));
    crate::errors::assert_each_cause_once(&text(&o.stderr));
    let mismatch = text(&o.stderr).replace(fresh_tmp.to_str().unwrap(), "[TMP]");
    hub.faults(Faults::default());
    case(
        "offline, empty cache",
        &Env::new(None).with("HF_HUB_OFFLINE", "1"),
        &["scan", "hf://org/tiny-llama"],
    );
    case("bad reference", &env, &["inspect", "hf://org/../x"]);
    case(
        "globs on a local path",
        &env,
        &[
            "inspect",
            "fixtures/models/tiny-llama",
            "--include",
            "*.json",
        ],
    );

    // Hostile layouts, on a cache that held a good download.
    assert_exit(&env.run(&["inspect", "hf://org/tiny-llama"]), 0, "");
    let offline = env.with("HF_HUB_OFFLINE", "1");
    let repo = env.repo();
    let fake = tiny_llama(REPO, false);
    let config = fake.files.iter().find(|f| f.path == "config.json").unwrap();
    let blob = repo.join("blobs").join(config.etag());
    std::fs::write(&blob, b"{}").unwrap();
    case(
        "blob not matching its name",
        &offline,
        &["inspect", "hf://org/tiny-llama"],
    );
    std::fs::write(&blob, &config.bytes).unwrap();
    let entry = repo.join("snapshots").join(SHA).join("config.json");
    std::fs::remove_file(&entry).unwrap();
    std::os::unix::fs::symlink(env.home.join("outside.json"), &entry).unwrap();
    std::fs::write(env.home.join("outside.json"), &config.bytes).unwrap();
    case(
        "symlink leaving the cache",
        &offline,
        &["inspect", "hf://org/tiny-llama"],
    );
    std::fs::write(repo.join("refs/main"), "0".repeat(40)).unwrap();
    case(
        "refs/main naming a missing snapshot",
        &offline,
        &["inspect", "hf://org/tiny-llama"],
    );
    all.push_str(&format!(
        "## sha256 mismatch: modelgate inspect hf://org/tiny-llama\n{mismatch}\n"
    ));
    insta::assert_snapshot!(all);
}
