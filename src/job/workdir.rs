//! A job's private directory on the host.

use super::GuestError;
use std::path::{Path, PathBuf};

/// The job's private directory on the host: `xchg/` (shared with the guest)
/// and the scratch disk image. Removed when dropped.
#[derive(Debug)]
pub struct Workdir {
    dir: tempfile::TempDir,
}

impl Workdir {
    pub fn new() -> Result<Self, GuestError> {
        let dir = tempfile::Builder::new().prefix("rootlayer-").tempdir().map_err(GuestError::Xchg)?;
        std::fs::create_dir(dir.path().join("xchg")).map_err(GuestError::Xchg)?;
        Ok(Self { dir })
    }
    pub fn path(&self) -> &Path {
        self.dir.path()
    }
    /// The exchange directory (the guest sees it at [`crate::protocol::XCHG_MOUNT`]).
    pub fn xchg(&self) -> PathBuf {
        self.dir.path().join("xchg")
    }
    /// The scratch disk image.
    pub fn disk(&self) -> PathBuf {
        self.dir.path().join("scratch.img")
    }
    /// An empty file, for a disk slot the job does not use.
    pub(super) fn no_disk(&self) -> Result<PathBuf, GuestError> {
        let path = self.dir.path().join("none.img");
        std::fs::File::create(&path).map_err(|source| GuestError::Disk { path: path.clone(), mib: 0, source })?;
        Ok(path)
    }
    /// An empty directory, for a share slot the job does not use.
    pub(super) fn no_share(&self) -> Result<PathBuf, GuestError> {
        let path = self.dir.path().join("none");
        std::fs::create_dir_all(&path).map_err(GuestError::Xchg)?;
        Ok(path)
    }
}

impl Drop for Workdir {
    /// The guest may have left directories in the exchange share that its
    /// owner (this user) cannot list or empty (mode 000, say): give every
    /// directory under the work dir back its owner's rwx, without following
    /// any link, so that the TempDir's removal takes all of it.
    fn drop(&mut self) {
        make_removable(self.dir.path());
    }
}

/// `chmod u+rwx` every directory under `root` (itself included), never
/// through a symlink; errors are left to the removal to meet.
pub(crate) fn make_removable(root: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(meta) = std::fs::symlink_metadata(&dir) else { continue };
        if !meta.is_dir() {
            continue;
        }
        if meta.permissions().mode() & 0o700 != 0o700 {
            let _ = std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(meta.permissions().mode() | 0o700));
        }
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(e.path());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_work_dir_the_guest_locked_up_is_removed_whole() {
        use std::os::unix::fs::PermissionsExt;
        let w = Workdir::new().unwrap();
        let path = w.path().to_path_buf();
        let locked = w.xchg().join("a/b");
        std::fs::create_dir_all(&locked).unwrap();
        std::fs::write(locked.join("f"), "x").unwrap();
        // A link out of the work dir: its target's mode is never touched.
        let outside = tempfile::tempdir().unwrap();
        std::fs::set_permissions(outside.path(), std::fs::Permissions::from_mode(0o500)).unwrap();
        std::os::unix::fs::symlink(outside.path(), w.xchg().join("out")).unwrap();
        for d in [&locked, &w.xchg().join("a")] {
            std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o000)).unwrap();
        }
        // (Root could remove them anyway: check the modes themselves.)
        make_removable(w.path());
        for d in [&locked, &w.xchg().join("a")] {
            assert_eq!(std::fs::metadata(d).unwrap().permissions().mode() & 0o700, 0o700, "{}", d.display());
        }
        std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o000)).unwrap();
        drop(w);
        assert!(!path.exists(), "the work dir is gone");
        let mode = std::fs::metadata(outside.path()).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o500, "nothing outside was changed");
        std::fs::set_permissions(outside.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    }
}
