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
    raw_output();
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

/// The console's output as written: no output processing by the tty layer
/// (a terminal's `ONLCR` made each newline a write to the UART driver of
/// its own, and the host reads lines either way).
fn raw_output() {
    // SAFETY: tcgetattr/tcsetattr on descriptor 1 with a termios that lives
    // across both calls; on a descriptor that is no terminal both fail and
    // nothing changes.
    unsafe {
        let mut t: libc::termios = std::mem::zeroed();
        if libc::tcgetattr(1, &mut t) == 0 {
            t.c_oflag &= !libc::OPOST;
            libc::tcsetattr(1, libc::TCSANOW, &t);
        }
    }
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

/// The scratch disk as the agent mounted it before the snapshot point:
/// read-only, so that it has written nothing (a restored guest's disk is
/// another file) and can be let go of without writing anything.
#[derive(Debug)]
pub struct ScratchAhead {
    device: String,
    size: u64,
}

/// Mount the scratch disk the command line names read-only at
/// `SCRATCH_MOUNT`, ahead of any job: the ext4 mount is a tenth of a second
/// of emulated kernel work that a snapshot then holds done. None when
/// there is no such disk (an empty slot) or it does not mount.
pub fn mount_scratch_ahead() -> Option<ScratchAhead> {
    let device = std::env::var(rootlayer_protocol::SCRATCH_DEVICE_ENV).ok()?;
    let size = crate::resume::disk_size(&device).ok().filter(|&s| s > 0)?;
    match mount_new(&device, rootlayer_protocol::SCRATCH_MOUNT, "ext4", MsFlags::MS_RDONLY, None) {
        Ok(()) => Some(ScratchAhead { device, size }),
        Err(e) => {
            println!("rootlayer-agent: the scratch disk is not mounted ahead: {e:#}");
            None
        }
    }
}

impl ScratchAhead {
    /// Whether the job's mount `m` is this one: the same device and mount
    /// point, and the host's fresh ext4 of the same size, which holds the
    /// same bytes as the disk mounted ahead (layer::ext4_format).
    pub fn serves(&self, m: &rootlayer_protocol::Mount) -> bool {
        matches!(&m.source, rootlayer_protocol::MountSource::Disk { device, fstype, size, fresh: true }
            if *device == self.device && fstype == "ext4" && *size == self.size)
            && m.target == rootlayer_protocol::SCRATCH_MOUNT
    }

    /// Take the mount on for the job, with its flags.
    pub fn remount(self, flags: MsFlags) -> anyhow::Result<()> {
        mount(None::<&str>, rootlayer_protocol::SCRATCH_MOUNT, None::<&str>, MsFlags::MS_REMOUNT | flags, None::<&str>)
            .with_context(|| format!("remount {} for the job", self.device))
    }

    /// Let go of it: a read-only ext4 writes nothing when unmounted.
    pub fn unmount(self) -> anyhow::Result<()> {
        nix::mount::umount(rootlayer_protocol::SCRATCH_MOUNT)
            .with_context(|| format!("unmount {} (mounted ahead, not the job's)", self.device))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rootlayer_protocol::{Mount, MountSource, SCRATCH_MOUNT};

    fn disk(device: &str, fstype: &str, size: u64, fresh: bool, target: &str) -> Mount {
        let source = MountSource::Disk { device: device.into(), fstype: fstype.into(), size, fresh };
        Mount { source, target: target.into(), read_only: false }
    }

    #[test]
    fn the_disk_mounted_ahead_serves_only_the_same_fresh_ext4_at_the_same_place() {
        let ahead = ScratchAhead { device: "/dev/vda".into(), size: 128 << 20 };
        assert!(ahead.serves(&disk("/dev/vda", "ext4", 128 << 20, true, SCRATCH_MOUNT)));
        for other in [
            disk("/dev/vda", "ext4", 256 << 20, true, SCRATCH_MOUNT),
            disk("/dev/vda", "ext4", 128 << 20, false, SCRATCH_MOUNT),
            disk("/dev/vdb", "ext4", 128 << 20, true, SCRATCH_MOUNT),
            disk("/dev/vda", "erofs", 128 << 20, true, SCRATCH_MOUNT),
            disk("/dev/vda", "ext4", 128 << 20, true, "/mnt"),
        ] {
            assert!(!ahead.serves(&other), "{other:?}");
        }
        let share = Mount {
            source: MountSource::VirtioFs { tag: "xchg".into() },
            target: SCRATCH_MOUNT.into(),
            read_only: false,
        };
        assert!(!ahead.serves(&share));
    }
}
