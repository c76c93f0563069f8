//! A listing of a directory tree with everything a write could change
//! (type, mode, owner, size, mtime, content hash, link target, xattrs), to
//! check that a target left a tree alone.

use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

pub type Snapshot = BTreeMap<String, String>;

/// The tree under `root` (not following symlinks), keyed by relative path.
pub fn snapshot(root: &Path) -> Snapshot {
    snapshot_without(root, &[])
}

/// [`snapshot`], leaving out what lies below the directories `skip`
/// (relative paths; their own entries are kept): the parts a target may
/// change, which may hold anything (a sparse file of a terabyte, say).
pub fn snapshot_without(root: &Path, skip: &[&str]) -> Snapshot {
    let mut out = BTreeMap::new();
    walk(root, root, skip, &mut out);
    out
}

fn walk(root: &Path, path: &Path, skip: &[&str], out: &mut Snapshot) {
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return;
    };
    let rel = path.strip_prefix(root).map(|p| p.display().to_string()).unwrap_or_default();
    if skip.contains(&rel.as_str()) {
        out.insert(rel, String::new());
        return;
    }
    let mut desc = format!(
        "mode={:o} uid={} gid={} size={} mtime={}.{} rdev={} nlink={}",
        meta.mode(),
        meta.uid(),
        meta.gid(),
        meta.len(),
        meta.mtime(),
        meta.mtime_nsec(),
        meta.rdev(),
        meta.nlink()
    );
    if meta.file_type().is_file() {
        if let Ok(data) = std::fs::read(path) {
            desc.push_str(&format!(" sha256={:x}", Sha256::digest(&data)));
        }
    }
    if meta.file_type().is_symlink() {
        if let Ok(t) = std::fs::read_link(path) {
            desc.push_str(&format!(" -> {}", t.display()));
        }
    }
    let mut names = [0u8; 4096];
    if let Ok(n) = rustix::fs::llistxattr(path, &mut names[..]) {
        for name in names[..n].split(|&b| b == 0).filter(|n| !n.is_empty()) {
            let name = String::from_utf8_lossy(name);
            let mut value = [0u8; 4096];
            let v = rustix::fs::lgetxattr(path, name.as_ref(), &mut value[..]).map(|n| value[..n].to_vec());
            desc.push_str(&format!(" xattr {name}={v:?}"));
        }
    }
    out.insert(rel, desc);
    if meta.is_dir() {
        if let Ok(rd) = std::fs::read_dir(path) {
            for e in rd.flatten() {
                walk(root, &e.path(), skip, out);
            }
        }
    }
}
