//! Hugging Face hub ids (`org/name`) resolved to a snapshot already in the local hub cache, the
//! layout `huggingface_hub` writes: `models--org--name/refs/<revision>` holds a commit hash,
//! `models--org--name/snapshots/<hash>/` the files. Nothing is ever downloaded: medkern runs
//! offline, so an id that is not cached is an error saying where it looked.

use crate::error::{Error, Result};
use std::path::{Path, PathBuf};

const OP: &str = "hub";

/// The longest part (org or name) of a hub id, as the hub allows.
const MAX_PART: usize = 96;
/// The longest revision (branch, tag or commit hash) accepted.
const MAX_REVISION: usize = 128;
/// The largest `refs/<revision>` file read (it holds one commit hash).
const MAX_REF_BYTES: u64 = 256;

fn invalid(arg: &'static str, detail: String) -> Error {
    Error::Invalid {
        op: OP,
        arg,
        detail,
    }
}

/// `spec` when it is an existing path (a model folder), else the snapshot folder of the hub id
/// `spec` (`org/name`, or a bare `name`) at `revision` (a branch or tag with a
/// `refs/<revision>` file, or a commit hash; default `main`) in the local hub cache:
/// `$HF_HUB_CACHE`, else `$HF_HOME/hub`, else `$XDG_CACHE_HOME/huggingface/hub`, else
/// `~/.cache/huggingface/hub`. The id and revision are checked before the file system is
/// touched with them. A revision with a local folder is an error (it would be ignored).
pub fn resolve_model(spec: impl AsRef<Path>, revision: Option<&str>) -> Result<PathBuf> {
    let spec = spec.as_ref();
    if spec.exists() {
        if let Some(r) = revision {
            return Err(invalid(
                "revision",
                format!(
                    "{r:?} given with the local folder {}; expected a revision only with a hub \
                     id (org/name)",
                    spec.display()
                ),
            ));
        }
        return Ok(spec.to_path_buf());
    }
    let id = spec.to_str().filter(|s| is_hub_id(s)).ok_or_else(|| {
        invalid(
            "model",
            format!(
                "{} is not a folder, nor a hub id; expected a model folder or org/name \
                 (letters, digits, '-', '_', '.'; no \"..\" or \"--\")",
                spec.display()
            ),
        )
    })?;
    let revision = revision.unwrap_or("main");
    if !is_revision(revision) {
        return Err(invalid(
            "revision",
            format!(
                "{revision:?}; expected a branch, tag or commit hash (letters, digits, '-', '_', \
                 '.', '/' between parts; no \"..\")"
            ),
        ));
    }
    let cache = hub_cache().ok_or_else(|| {
        invalid(
            "model",
            format!(
                "{id} is not a local folder, and no hub cache is set (HF_HUB_CACHE, HF_HOME \
                 and HOME are unset); nothing is downloaded"
            ),
        )
    })?;
    let repo = cache.join(format!("models--{}", id.replace('/', "--")));
    let not_cached = |detail: String| {
        invalid(
            "model",
            format!(
                "{id} at revision {revision} is not a local folder and not in the hub cache: \
                 {detail}; nothing is downloaded (fetch it first, e.g. `hf download {id}`)"
            ),
        )
    };
    let hash = if is_commit(revision) {
        revision.to_string()
    } else {
        let r = repo.join("refs").join(revision);
        read_ref(&r).map_err(|why| not_cached(format!("{} {why}", r.display())))?
    };
    let snap = repo.join("snapshots").join(&hash);
    if snap.is_dir() {
        Ok(snap)
    } else {
        Err(not_cached(format!("no folder {}", snap.display())))
    }
}

/// The hub cache folder, as `huggingface_hub` picks it (empty variables count as unset).
pub fn hub_cache() -> Option<PathBuf> {
    let var = |k: &str| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    var("HF_HUB_CACHE")
        .or_else(|| var("HF_HOME").map(|h| h.join("hub")))
        .or_else(|| var("XDG_CACHE_HOME").map(|c| c.join("huggingface").join("hub")))
        .or_else(|| var("HOME").map(|h| h.join(".cache").join("huggingface").join("hub")))
}

/// An `org/name` or `name` id: parts of letters, digits, `-`, `_`, `.`, not starting with `-`
/// or `.`, without `..` or `--` (the cache's separator); so never a path that leaves the cache.
pub fn is_hub_id(s: &str) -> bool {
    let parts: Vec<&str> = s.split('/').collect();
    parts.len() <= 2
        && parts.iter().all(|p| {
            !p.is_empty()
                && p.len() <= MAX_PART
                && p.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
                && !p.starts_with(['-', '.'])
                && !p.ends_with(['-', '.'])
                && !p.contains("..")
                && !p.contains("--")
        })
}

/// A branch, tag or hash: `/`-separated parts of letters, digits, `-`, `_`, `.`, none empty,
/// none `.` or `..`.
fn is_revision(s: &str) -> bool {
    s.len() <= MAX_REVISION
        && s.split('/').all(|p| {
            !p.is_empty()
                && !p.contains("..")
                && p != "."
                && p.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        })
}

/// A full git commit hash (40 lower-case hex digits).
fn is_commit(s: &str) -> bool {
    s.len() == 40 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// The commit hash in a `refs/<revision>` file, or why there is none.
fn read_ref(path: &Path) -> std::result::Result<String, String> {
    let meta = std::fs::metadata(path).map_err(|e| format!("cannot be read ({e})"))?;
    if !meta.is_file() || meta.len() > MAX_REF_BYTES {
        return Err(format!(
            "is not a regular file of at most {MAX_REF_BYTES} bytes"
        ));
    }
    let mut text = String::new();
    std::fs::File::open(path)
        .and_then(|f| {
            std::io::Read::read_to_string(&mut std::io::Read::take(f, MAX_REF_BYTES), &mut text)
        })
        .map_err(|e| format!("cannot be read ({e})"))?;
    let hash = text.trim();
    if is_commit(hash) {
        Ok(hash.to_string())
    } else {
        Err(format!("holds {hash:?}; expected a 40-digit commit hash"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_and_revisions_are_checked() {
        for ok in [
            "sentence-transformers/all-MiniLM-L6-v2",
            "bert-base-uncased",
            "a/b.c_d",
        ] {
            assert!(is_hub_id(ok), "{ok}");
        }
        for bad in [
            "", "/abs/x", "a/../b", "..", "a/b/c", "a--b/c", "-a/b", "a/b.", "a b/c", "a/",
        ] {
            assert!(!is_hub_id(bad), "{bad}");
        }
        assert!(is_revision("main") && is_revision("v1.0") && is_revision("feature/x"));
        for bad in ["", "../x", "a//b", "/main", "a/./b", "a b"] {
            assert!(!is_revision(bad), "{bad}");
        }
    }
}
