//! `layer_convert` and `layer_unpack`: the layer engine in both
//! directions.
//!
//! `layer_convert`: input = the tar of an overlay upper dir as the guest
//! streams it (the guest controls every byte). Invariants: no panic; the
//! streaming and the seekable conversion agree (same result, same bytes);
//! an output is a tar that reads back whole, its digest and size are the
//! ones reported, its paths are normalized, unique and in canonical order,
//! and no mtime exceeds SOURCE_DATE_EPOCH.
//!
//! `layer_unpack`: input = an OCI layer (from a base image: the user's
//! input, and unpacked by the agent as root), unpacked as root where
//! possible into an empty directory. Invariants: no panic; nothing beside
//! the target directory is created, removed or changed, whatever symlinks,
//! hardlinks, `..` or whiteouts the layer holds.

use super::snapshot::{snapshot, Snapshot};
use crate::layer::rules::{cmp_paths, normalize};
use crate::layer::{convert, convert_seekable, unpack, ConvertOptions, UnpackOptions};
use sha2::{Digest, Sha256};
use std::cmp::Ordering;
use std::io::{Cursor, Read};
use std::path::Path;

const EPOCH: u64 = 1_700_000_000;

pub fn layer_convert(data: &[u8]) {
    let opts = ConvertOptions { source_date_epoch: Some(EPOCH), gzip: None };
    let mut streamed = Vec::new();
    let a = convert(data, &mut streamed, &opts);
    let mut seeked = Vec::new();
    let b = convert_seekable(Cursor::new(data), &mut seeked, &opts);
    let info = match (a, b) {
        (Ok(a), Ok(b)) => {
            assert_eq!(a, b, "streaming and seekable conversion report different layers");
            assert!(streamed == seeked, "streaming and seekable conversion wrote different bytes");
            a
        }
        (Err(_), Err(_)) => return,
        (a, b) => panic!("streaming and seekable conversion disagree: {a:?} / {b:?}"),
    };
    assert_eq!(info.size, streamed.len() as u64, "reported size");
    assert_eq!(info.diff_id, format!("sha256:{:x}", Sha256::digest(&streamed)), "reported diff_id");
    check_layer(&streamed);
}

/// The output layer reads back: normalized, unique paths in canonical
/// order, clamped mtimes, all data present.
fn check_layer(layer: &[u8]) {
    let mut archive = tar::Archive::new(layer);
    let mut prev: Option<Vec<u8>> = None;
    for entry in archive.entries().expect("output layer") {
        let mut entry = entry.expect("output entry");
        if entry.header().entry_type().is_pax_local_extensions() {
            continue;
        }
        let path = entry.path_bytes().into_owned();
        let norm = normalize(&path).expect("output path normalizes");
        let trimmed = path.strip_suffix(b"/").unwrap_or(&path);
        assert_eq!(norm, trimmed, "output path {:?} is not normalized", String::from_utf8_lossy(&path));
        if let Some(p) = &prev {
            assert_eq!(cmp_paths(p, &norm), Ordering::Less, "entries out of order or duplicated");
        }
        let mtime = entry.header().mtime().expect("mtime");
        assert!(mtime <= EPOCH, "mtime {mtime} not clamped");
        let mut data = Vec::new();
        entry.read_to_end(&mut data).expect("entry data");
        assert_eq!(data.len() as u64, entry.size(), "entry data length");
        prev = Some(norm);
    }
}

/// Where layers are unpacked: a directory holding the target and a
/// neighbour to stay out of. As root, a private tmpfs mounted `nodev`, so
/// that a device node a layer creates can never reach a host device even
/// if the unpacker were fooled into opening one.
struct Scratch {
    dir: tempfile::TempDir,
    mounted: bool,
}

impl Scratch {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("temporary directory");
        let mounted = private_tmpfs(dir.path());
        let s = Scratch { dir, mounted };
        let canary = s.dir.path().join("canary");
        std::fs::create_dir_all(canary.join("sub")).expect("mkdir");
        std::fs::write(canary.join("file"), b"outside the layer").expect("write");
        std::os::unix::fs::symlink("../canary", canary.join("sub/loop")).expect("symlink");
        s
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if self.mounted {
            let path = std::ffi::CString::new(self.dir.path().as_os_str().as_encoded_bytes()).expect("path");
            // SAFETY: umount2 reads a NUL-terminated path we own.
            unsafe { libc::umount2(path.as_ptr(), libc::MNT_DETACH) };
        }
    }
}

/// Make this thread's mount namespace private and mount a small `nodev`,
/// `nosuid` tmpfs on `dir`; false if that is not allowed (not root).
fn private_tmpfs(dir: &Path) -> bool {
    if !rustix::process::geteuid().is_root() {
        return false;
    }
    let c = |s: &[u8]| std::ffi::CString::new(s).expect("no NUL");
    let (none, root, tmpfs, target, opts) =
        (c(b"none"), c(b"/"), c(b"tmpfs"), c(dir.as_os_str().as_encoded_bytes()), c(b"size=64m,mode=0755"));
    // SAFETY: unshare takes no pointers; CLONE_NEWNS only affects this thread
    // (its fs struct is unshared with it).
    if unsafe { libc::unshare(libc::CLONE_NEWNS) } != 0 {
        return false;
    }
    // SAFETY: mount reads NUL-terminated strings we own, data is one too.
    let private = unsafe {
        libc::mount(none.as_ptr(), root.as_ptr(), std::ptr::null(), libc::MS_REC | libc::MS_PRIVATE, std::ptr::null())
    };
    if private != 0 {
        return false;
    }
    // SAFETY: as above.
    let mounted = unsafe {
        libc::mount(
            tmpfs.as_ptr(),
            target.as_ptr(),
            tmpfs.as_ptr(),
            libc::MS_NODEV | libc::MS_NOSUID,
            opts.as_ptr().cast(),
        )
    };
    mounted == 0
}

thread_local! {
    static SCRATCH: (Scratch, Snapshot) = {
        let s = Scratch::new();
        let before = snapshot(s.dir.path());
        (s, before)
    };
}

pub fn layer_unpack(data: &[u8]) {
    SCRATCH.with(|(scratch, before)| {
        let top = scratch.dir.path();
        let target = top.join("layer");
        std::fs::create_dir(&target).expect("target directory");
        if let Err(e) = unpack(data, &target, &UnpackOptions { preserve_owners: true }) {
            let _ = e.to_string();
        }
        assert!(std::fs::symlink_metadata(&target).is_ok_and(|m| m.is_dir()), "the target is no directory now");
        // The top directory's own times change with the target's creation.
        let outside = |s: &Snapshot| -> Snapshot {
            s.iter()
                .filter(|(k, _)| !k.is_empty() && *k != "layer" && !k.starts_with("layer/"))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        };
        assert_eq!(outside(&snapshot(top)), outside(before), "unpacking changed something outside the target");
        remove_tree(&target);
    });
}

/// Remove what a layer left, whatever its modes.
fn remove_tree(path: &Path) {
    if std::fs::remove_dir_all(path).is_ok() {
        return;
    }
    fn open_up(p: &Path) {
        if let Ok(m) = std::fs::symlink_metadata(p) {
            if m.is_dir() {
                let _ = std::fs::set_permissions(p, std::os::unix::fs::PermissionsExt::from_mode(0o700));
                for e in std::fs::read_dir(p).into_iter().flatten().flatten() {
                    open_up(&e.path());
                }
            }
        }
    }
    open_up(path);
    std::fs::remove_dir_all(path).expect("remove the unpacked layer");
}
