//! The host process and its cache: where the cache is and whether it can be
//! trusted, where snapshots live, and the process settings every command
//! starts with (descriptor limit, umask).

use super::GuestError;
use crate::vmm::SnapshotMode;
use crate::vmm::VmmError;
use std::path::{Path, PathBuf};

/// $ROOTLAYER_CACHE, or ~/.cache/rootlayer: what the scripts build (kernel,
/// initramfs) and the base image disks.
pub fn cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("ROOTLAYER_CACHE") {
        return dir.into();
    }
    let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| "/nonexistent".into());
    home.join(".cache/rootlayer")
}

/// The cache's memos of base image layers verified (`BaseImage::open_remembering`).
pub const VERIFIED_DIR: &str = "verified";

/// Refuse a cache (`$ROOTLAYER_CACHE` and the parts of it rootlayer trusts:
/// base disks, snapshots, the built kernel and initramfs, the memos of
/// verified layers) that someone else
/// could have written: not this user's, or writable by its group or by
/// others, as ssh refuses such a key file. A snapshot or base disk planted
/// there would decide what every later guest runs. A missing directory is
/// fine: rootlayer makes it, with this user's umask.
pub fn check_cache_dir(dir: &Path) -> Result<(), GuestError> {
    use std::os::unix::fs::MetadataExt;
    let uid = rustix::process::geteuid().as_raw();
    let trusted = ["base", "snapshots", "kernel", "initramfs", VERIFIED_DIR].map(|d| dir.join(d));
    for d in [dir.to_path_buf()].into_iter().chain(trusted) {
        let bad = |reason: String| Err(GuestError::Cache { path: d.clone(), reason });
        let meta = match std::fs::metadata(&d) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return bad(e.to_string()),
        };
        if !meta.is_dir() {
            return bad("not a directory".into());
        }
        if meta.uid() != uid {
            return bad(format!("owned by uid {}, not by this user (uid {uid})", meta.uid()));
        }
        if meta.mode() & 0o022 != 0 {
            return bad(format!("writable by its group or by others (mode {:o})", meta.mode() & 0o7777));
        }
    }
    Ok(())
}

/// Where snapshots of the booted guest are kept.
pub fn snapshot_dir() -> PathBuf {
    cache_dir().join("snapshots")
}

/// The snapshot mode for a guest: `enabled` and a device set of the fixed
/// shape, else none.
pub fn snapshot_mode(enabled: bool) -> SnapshotMode {
    if enabled {
        SnapshotMode::Use(snapshot_dir())
    } else {
        SnapshotMode::Off
    }
}

/// Raise the soft limit on open descriptors to the hard one, as servers
/// do at start: the virtio-fs shares hold a host descriptor for each file
/// the guest has looked up, and the usual soft limit is 1024. Returns the
/// limit now in force.
pub fn raise_nofile_limit() -> Option<u64> {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let mut lim = getrlimit(Resource::Nofile);
    if lim.current != lim.maximum {
        lim.current = lim.maximum;
        setrlimit(Resource::Nofile, lim).ok()?;
    }
    getrlimit(Resource::Nofile).current
}

/// Add group and world write to the process's umask, as at start: what
/// rootlayer makes in `$ROOTLAYER_CACHE` (directories, base disks,
/// snapshots, memos) must not be writable by others, whom
/// [`check_cache_dir`] would then have to refuse (a directory) or could not
/// see (a file a group member rewrites in place). A umask of 002, common
/// where each user has a group of their own, would give both. Outputs too
/// are then written without group write.
pub fn restrict_umask() {
    use rustix::fs::Mode;
    let old = rustix::process::umask(Mode::from_raw_mode(0o022));
    rustix::process::umask(old | Mode::from_raw_mode(0o022));
}

/// The guest kernel or initramfs: given, else the installed one
/// (`PREFIX/share/rootlayer/NAME` beside `PREFIX/bin/rootlayer`, as
/// scripts/install lays it out), else the one the build scripts cached.
fn default_file(given: Option<PathBuf>, installed: &str, rel: &str, script: &str) -> Result<PathBuf, VmmError> {
    if let Some(p) = given {
        return Ok(p);
    }
    let share = std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.parent()?.join("share/rootlayer").join(installed)));
    if let Some(p) = share.filter(|p| p.is_file()) {
        return Ok(p);
    }
    let p = cache_dir().join(rel);
    if p.exists() {
        Ok(p)
    } else {
        Err(VmmError::MissingFile { path: p, hint: format!("run scripts/{script} first, or pass the path") })
    }
}

/// The default guest kernel for `cpus` vCPUs: the uniprocessor `vmlinux`
/// for one, `vmlinux-smp` for more (scripts/build-kernel builds both: an
/// SMP kernel costs about 30% more emulated kernel time on one vCPU). A
/// kernel given is used as it is.
pub fn default_kernel(given: Option<PathBuf>, cpus: u8) -> Result<PathBuf, VmmError> {
    if cpus > 1 {
        default_file(given, "vmlinux-smp", "kernel/current/vmlinux-smp", "build-kernel")
    } else {
        default_file(given, "vmlinux", "kernel/current/vmlinux", "build-kernel")
    }
}

/// The default initramfs.
pub fn default_initrd(given: Option<PathBuf>) -> Result<PathBuf, VmmError> {
    default_file(given, "initramfs.cpio", "initramfs/current.cpio", "build-initramfs")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cache_someone_else_could_write_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let cache = dir.path().join("cache");
        check_cache_dir(&cache).unwrap();
        std::fs::create_dir_all(cache.join("snapshots")).unwrap();
        std::fs::set_permissions(&cache, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::set_permissions(cache.join("snapshots"), std::fs::Permissions::from_mode(0o700)).unwrap();
        check_cache_dir(&cache).unwrap();
        std::fs::set_permissions(&cache, std::fs::Permissions::from_mode(0o777)).unwrap();
        let e = check_cache_dir(&cache).unwrap_err().to_string();
        assert!(e.contains("writable by its group or by others (mode 777)"), "{e}");
        std::fs::set_permissions(&cache, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::set_permissions(cache.join("snapshots"), std::fs::Permissions::from_mode(0o775)).unwrap();
        assert!(check_cache_dir(&cache).unwrap_err().to_string().contains("snapshots"));
        std::fs::set_permissions(cache.join("snapshots"), std::fs::Permissions::from_mode(0o700)).unwrap();
        if rustix::process::geteuid().is_root() {
            std::os::unix::fs::chown(cache.join("snapshots"), Some(65534), None).unwrap();
            let e = check_cache_dir(&cache).unwrap_err().to_string();
            assert!(e.contains("owned by uid 65534"), "{e}");
        }
    }

    #[test]
    fn the_descriptor_limit_is_raised_to_the_hard_one() {
        let hard = rustix::process::getrlimit(rustix::process::Resource::Nofile).maximum;
        assert_eq!(raise_nofile_limit(), hard);
        assert_eq!(rustix::process::getrlimit(rustix::process::Resource::Nofile).current, hard);
    }
}
