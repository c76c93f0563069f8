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
//! possible into an empty directory; as root, in a sandbox (see
//! [`sandbox`]) where nothing else on the host is writable. Invariants: no panic; nothing beside
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
    assert_eq!(info.diff_id.to_string(), format!("sha256:{:x}", Sha256::digest(&streamed)), "reported diff_id");
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
/// neighbour to stay out of.
struct Scratch {
    dir: tempfile::TempDir,
    sandboxed: bool,
}

impl Scratch {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("temporary directory");
        let sandboxed = rustix::process::geteuid().is_root();
        if sandboxed {
            if let Err(e) = sandbox(dir.path()) {
                panic!("layer_unpack runs as root only in its sandbox: {e}");
            }
        }
        let s = Scratch { dir, sandboxed };
        let canary = s.dir.path().join("canary");
        std::fs::create_dir_all(canary.join("sub")).expect("mkdir");
        std::fs::write(canary.join("file"), b"outside the layer").expect("write");
        std::os::unix::fs::symlink("../canary", canary.join("sub/loop")).expect("symlink");
        s
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if self.sandboxed {
            let path = std::ffi::CString::new(self.dir.path().as_os_str().as_encoded_bytes()).expect("path");
            // SAFETY: umount2 reads a NUL-terminated path we own.
            unsafe { libc::umount2(path.as_ptr(), libc::MNT_DETACH) };
        }
    }
}

fn cstring(p: &Path) -> std::io::Result<std::ffi::CString> {
    std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).map_err(std::io::Error::other)
}

fn check(rc: libc::c_int, what: &str) -> std::io::Result<()> {
    if rc == 0 {
        Ok(())
    } else {
        let e = std::io::Error::last_os_error();
        Err(std::io::Error::new(e.kind(), format!("{what}: {e}")))
    }
}

/// Set (`set`) or clear the read-only attribute of the mount at `path`, and
/// of every mount below it if `recursive`.
fn mount_read_only(path: &Path, set: bool, recursive: bool) -> std::io::Result<()> {
    let p = cstring(path)?;
    let mut attr: libc::mount_attr = libc::mount_attr { attr_set: 0, attr_clr: 0, propagation: 0, userns_fd: 0 };
    if set {
        attr.attr_set = libc::MOUNT_ATTR_RDONLY;
    } else {
        attr.attr_clr = libc::MOUNT_ATTR_RDONLY;
    }
    let flags = if recursive { libc::AT_RECURSIVE } else { 0 };
    // SAFETY: mount_setattr reads a NUL-terminated path and `size` bytes of
    // `attr`, both ours and alive for the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            libc::AT_FDCWD,
            p.as_ptr(),
            flags,
            &attr as *const libc::mount_attr,
            std::mem::size_of::<libc::mount_attr>(),
        )
    };
    check(if rc == 0 { 0 } else { -1 }, "mount_setattr")
}

/// As root, an unpacker that went wrong could overwrite any host file or
/// open a host device through a node it made. So this thread gets its own
/// mount namespace, private, in which every mount is read-only except a
/// `nodev`, `nosuid` tmpfs on `dir` and the directories listed in
/// `ROOTLAYER_FUZZ_WRITABLE` (colon-separated: libFuzzer's corpus and
/// artifacts, set by scripts/fuzz).
pub(super) fn sandbox(dir: &Path) -> std::io::Result<()> {
    let none = c"none";
    let tmpfs = c"tmpfs";
    let opts = c"size=64m,mode=0755";
    // SAFETY: unshare takes no pointers; it detaches this thread's mount
    // namespace and file system attributes only.
    check(unsafe { libc::unshare(libc::CLONE_NEWNS) }, "unshare")?;
    let flags = libc::MS_REC | libc::MS_PRIVATE;
    // SAFETY: mount reads NUL-terminated strings that outlive the call.
    let rc = unsafe { libc::mount(none.as_ptr(), c"/".as_ptr(), std::ptr::null(), flags, std::ptr::null()) };
    check(rc, "making mounts private")?;
    mount_read_only(Path::new("/"), true, true)?;
    let target = cstring(dir)?;
    let flags = libc::MS_NODEV | libc::MS_NOSUID;
    // SAFETY: as above; `opts` is the NUL-terminated data string.
    let rc = unsafe { libc::mount(tmpfs.as_ptr(), target.as_ptr(), tmpfs.as_ptr(), flags, opts.as_ptr().cast()) };
    check(rc, "mounting the scratch tmpfs")?;
    let writable = std::env::var_os("ROOTLAYER_FUZZ_WRITABLE").unwrap_or_default();
    for path in std::env::split_paths(&writable).filter(|p| p.is_dir()) {
        let p = cstring(&path)?;
        // SAFETY: as above.
        let rc = unsafe { libc::mount(p.as_ptr(), p.as_ptr(), std::ptr::null(), libc::MS_BIND, std::ptr::null()) };
        check(rc, "binding a writable directory")?;
        mount_read_only(&path, false, false)?;
    }
    Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;

    /// As root, the unpacking thread can write its scratch tmpfs and
    /// nothing else, and no device node there opens.
    #[test]
    fn unpacking_as_root_is_sandboxed() {
        if !rustix::process::geteuid().is_root() {
            eprintln!("not root: layer_unpack runs unsandboxed and cannot make devices");
            return;
        }
        let outside = tempfile::tempdir().unwrap();
        let probe = outside.path().join("probe");
        std::thread::spawn(move || {
            SCRATCH.with(|(s, _)| {
                std::fs::write(s.dir.path().join("inside"), b"x").expect("scratch is writable");
                let err = std::fs::write(&probe, b"x").expect_err("the rest is read-only");
                assert_eq!(err.raw_os_error(), Some(libc::EROFS));
                let null = s.dir.path().join("null");
                rustix::fs::mknodat(
                    rustix::fs::CWD,
                    &null,
                    rustix::fs::FileType::CharacterDevice,
                    0o666.into(),
                    rustix::fs::makedev(1, 3),
                )
                .unwrap();
                let err = std::fs::OpenOptions::new().write(true).open(&null).expect_err("nodev");
                assert_eq!(err.raw_os_error(), Some(libc::EACCES));
                std::fs::remove_file(null).unwrap();
                std::fs::remove_file(s.dir.path().join("inside")).unwrap();
            });
        })
        .join()
        .unwrap();
        assert!(std::fs::write(outside.path().join("probe"), b"x").is_ok(), "other threads are not sandboxed");
    }
}
