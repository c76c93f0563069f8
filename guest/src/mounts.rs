//! Mount helpers: idempotent, each failure names what it was mounting.

use anyhow::Context;
use nix::mount::{mount, MsFlags};
use std::path::Path;

/// Mount one file system at `target`, creating the directory first. A
/// target that already has this file system mounted is left alone.
pub fn mount_fs(source: &str, target: &str, fstype: &str, flags: MsFlags, data: Option<&str>) -> anyhow::Result<()> {
    if is_mounted(target) {
        return Ok(());
    }
    mount_new(source, target, fstype, flags, data)
}

/// Mount where nothing is mounted yet (a job's mounts): without reading
/// the mount table first, which costs the emulated guest kernel ~13 ms.
pub fn mount_new(source: &str, target: &str, fstype: &str, flags: MsFlags, data: Option<&str>) -> anyhow::Result<()> {
    std::fs::create_dir_all(target).with_context(|| format!("mkdir {target}"))?;
    mount(Some(source), Path::new(target), Some(fstype), flags, data)
        .with_context(|| format!("mount {fstype} on {target}"))
}

/// /dev (devtmpfs, with /dev/shm and /dev/pts as any Linux has them),
/// /proc and /sys, as every later step expects them. The script's /dev is
/// this one, bound.
pub fn mount_basics() -> anyhow::Result<()> {
    let nosuid_noexec = MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC | MsFlags::MS_NODEV;
    mount_fs("devtmpfs", "/dev", "devtmpfs", MsFlags::MS_NOSUID, Some("mode=0755"))?;
    attach_console()?;
    mount_fs("proc", "/proc", "proc", nosuid_noexec, None)?;
    mount_fs("sysfs", "/sys", "sysfs", nosuid_noexec, None)?;
    mount_fs("tmpfs", "/dev/shm", "tmpfs", MsFlags::MS_NOSUID | MsFlags::MS_NODEV, Some("mode=1777"))?;
    mount_fs(
        "devpts",
        "/dev/pts",
        "devpts",
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some("mode=0620,ptmxmode=0666,gid=5"),
    )?;
    // The pseudo-terminal multiplexer of this devpts instance.
    if std::fs::symlink_metadata("/dev/ptmx").is_ok_and(|m| !m.file_type().is_symlink()) {
        std::fs::remove_file("/dev/ptmx").context("replace /dev/ptmx")?;
    }
    if std::fs::symlink_metadata("/dev/ptmx").is_err() {
        std::os::unix::fs::symlink("pts/ptmx", "/dev/ptmx").context("symlink /dev/ptmx")?;
    }
    Ok(())
}

/// Make /dev/console our stdin, stdout and stderr when the kernel could not
/// (the initramfs carries no device nodes, so it can be built without root).
fn attach_console() -> anyhow::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: F_GETFD on a descriptor number only queries it.
    let stdout_open = unsafe { libc::fcntl(1, libc::F_GETFD) } != -1;
    if stdout_open {
        return Ok(());
    }
    let console =
        std::fs::OpenOptions::new().read(true).write(true).open("/dev/console").context("open /dev/console")?;
    for fd in 0..3 {
        // SAFETY: dup2 onto the standard descriptors, which are closed;
        // `console` stays open until after the calls.
        if unsafe { libc::dup2(console.as_raw_fd(), fd) } == -1 {
            return Err(std::io::Error::last_os_error()).context("dup2 /dev/console");
        }
    }
    Ok(())
}

fn is_mounted(target: &str) -> bool {
    std::fs::read_to_string("/proc/self/mounts")
        .map(|m| m.lines().any(|l| l.split(' ').nth(1) == Some(target)))
        .unwrap_or(false)
}

/// The guest kernel's uptime, as /proc/uptime gives it (seconds).
pub fn uptime() -> Option<String> {
    let s = std::fs::read_to_string("/proc/uptime").ok()?;
    Some(format!("{}s", s.split_whitespace().next()?))
}
