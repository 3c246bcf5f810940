//! `hf://ORG/NAME[@REVISION]` and the names in it. Every part ends up in a cache path
//! (`models--ORG--NAME`, `refs/REVISION`) or a URL, so each is checked here, once, before
//! anything touches the disk or the network.

use std::fmt;

use super::HubError;
pub use crate::provenance::{encode_path, encode_segment, CommitSha, RepoId, SCHEME};

/// A revision longer than this is not a branch, tag or commit the Hub would serve.
const MAX_REVISION: usize = 255;

/// A parsed `hf://ORG/NAME[@REVISION]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HubRef {
    pub repo: RepoId,
    /// As the user wrote it; `main` when absent.
    pub revision: String,
}

impl HubRef {
    /// `None` when `arg` does not start with `hf://` (it is a local path); an error when it
    /// does but the rest is malformed.
    pub fn parse(arg: &str) -> Option<Result<HubRef, HubError>> {
        let rest = arg.strip_prefix(SCHEME)?;
        Some(Self::parse_rest(arg, rest))
    }

    fn parse_rest(arg: &str, rest: &str) -> Result<HubRef, HubError> {
        let (repo, revision) = match rest.split_once('@') {
            Some((r, rev)) => (r, rev),
            None => (rest, "main"),
        };
        let repo = RepoId::parse(repo).map_err(|why| HubError::BadSpec {
            spec: arg.to_owned(),
            why,
        })?;
        check_revision(revision).map_err(|why| HubError::BadSpec {
            spec: arg.to_owned(),
            why,
        })?;
        Ok(HubRef {
            repo,
            revision: revision.to_owned(),
        })
    }

    /// The revision when it is a full commit sha (a pinned revision).
    pub fn pinned(&self) -> Option<CommitSha> {
        CommitSha::parse(&self.revision)
    }
}

impl fmt::Display for HubRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{SCHEME}{}@{}", self.repo, self.revision)
    }
}

/// A revision names a file under `refs/` in the cache, so it may hold `/` (`refs/pr/1`)
/// but no empty, `.` or `..` component and nothing outside a git ref's usual characters.
fn check_revision(rev: &str) -> Result<(), String> {
    if rev.is_empty() || rev.len() > MAX_REVISION {
        return Err("a revision is 1 to 255 characters".into());
    }
    let chars_ok = rev
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'/' | b'+'));
    if !chars_ok {
        return Err(format!(
            "revision `{rev}` may hold only letters, digits, `-`, `_`, `.`, `+` and `/`"
        ));
    }
    if rev
        .split('/')
        .any(|c| c.is_empty() || c == "." || c == ".." || c.ends_with(".lock"))
    {
        return Err(format!(
            "revision `{rev}` is not a branch, tag or commit name"
        ));
    }
    Ok(())
}

/// A file path inside a repository, as the Hub lists it: relative, `/`-separated, no
/// empty, `.` or `..` component. A listing that breaks this is hostile.
pub fn check_repo_path(p: &str) -> bool {
    !p.is_empty()
        && p.len() <= 4096
        && !p.starts_with('/')
        && !p.contains('\\')
        && !p.contains('\0')
        && p.split('/').all(|c| !c.is_empty() && c != "." && c != "..")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_repo_and_revision() {
        let r = HubRef::parse("hf://meta-llama/Llama-3.1-8B@main")
            .unwrap()
            .unwrap();
        assert_eq!(r.repo.to_string(), "meta-llama/Llama-3.1-8B");
        assert_eq!(r.repo.cache_folder(), "models--meta-llama--Llama-3.1-8B");
        assert_eq!(r.revision, "main");
        assert!(r.pinned().is_none());
        let sha = "0123456789abcdef0123456789abcdef01234567";
        let r = HubRef::parse(&format!("hf://a/b@{sha}")).unwrap().unwrap();
        assert_eq!(r.pinned().unwrap().as_str(), sha);
        let r = HubRef::parse("hf://a/b").unwrap().unwrap();
        assert_eq!(r.revision, "main");
        let r = HubRef::parse("hf://a/b@refs/pr/1").unwrap().unwrap();
        assert_eq!(r.revision, "refs/pr/1");
        assert!(HubRef::parse("models/x").is_none());
    }

    #[test]
    fn refuses_names_that_would_leave_the_cache() {
        for bad in [
            "hf://a",
            "hf://a/b/c",
            "hf://../b",
            "hf://a/..",
            "hf://a--x/b",
            "hf://a/b@../../etc",
            "hf://a/b@",
            "hf://a/b@x//y",
            "hf://a/b@/abs",
            "hf://a/b c",
            "hf://a/b.git",
        ] {
            let e = HubRef::parse(bad).unwrap().unwrap_err();
            assert!(e.to_string().contains(bad), "{bad}: {e}");
        }
    }

    proptest::proptest! {
        /// Whatever the argument, parsing never panics, and a reference it accepts
        /// names folders inside the cache only and prints back to itself.
        #[test]
        fn accepted_references_stay_inside_the_cache(s in "hf://[a-z.\\-/_@A-Z0-9%+]{0,40}") {
            if let Some(Ok(r)) = HubRef::parse(&s) {
                let folder = r.repo.cache_folder();
                proptest::prop_assert!(!folder.contains('/') && !folder.contains(".."));
                proptest::prop_assert!(r.revision.split('/').all(|c| !c.is_empty() && c != ".."));
                let again = HubRef::parse(&r.to_string()).unwrap().unwrap();
                proptest::prop_assert_eq!(again, r);
            }
        }
    }

    #[test]
    fn repo_paths() {
        assert!(check_repo_path("a/b.gguf"));
        for bad in ["", "/a", "a/../b", "a//b", "./a", "a\\b"] {
            assert!(!check_repo_path(bad), "{bad}");
        }
    }
}
