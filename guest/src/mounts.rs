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
        Ok(()) => {
            warm_scratch(&device);
            Some(ScratchAhead { device, size })
        }
        Err(e) => {
            println!("rootlayer-agent: the scratch disk is not mounted ahead: {e:#}");
            None
        }
    }
}

/// The read-only share the agent mounted before the snapshot point
/// (`SHARE_AHEAD_ENV`): its tag.
#[derive(Debug)]
pub struct ShareAhead {
    tag: String,
}

/// Mount the share the command line names read-only at
/// `SHARE_AHEAD_MOUNT`, ahead of any job: its FUSE_INIT is the one request
/// the host answers before the snapshot (anything more and it refuses to
/// take one). None when there is no such share or it does not mount.
pub fn mount_share_ahead() -> Option<ShareAhead> {
    let tag = std::env::var(rootlayer_protocol::SHARE_AHEAD_ENV).ok()?;
    match mount_new(&tag, rootlayer_protocol::SHARE_AHEAD_MOUNT, "virtiofs", MsFlags::MS_RDONLY, None) {
        Ok(()) => Some(ShareAhead { tag }),
        Err(e) => {
            println!("rootlayer-agent: share {tag} is not mounted ahead: {e:#}");
            None
        }
    }
}

impl ShareAhead {
    /// Whether the job's mount `m` is this share, read-only.
    pub fn serves(&self, m: &rootlayer_protocol::Mount) -> bool {
        self.wanted(m) && m.read_only
    }

    /// Whether the job mounts this share at all (read-only or not).
    pub fn wanted(&self, m: &rootlayer_protocol::Mount) -> bool {
        matches!(&m.source, rootlayer_protocol::MountSource::VirtioFs { tag } if *tag == self.tag)
    }

    /// Put the share at the job's `target`: a bind mount (read-only as the
    /// mount it binds), then one round trip to the host (the share's root
    /// attributes), so that a restored guest whose share does not answer
    /// fails before it says it started, as a fresh mount's FUSE_INIT would.
    pub fn bind(&self, target: &str) -> anyhow::Result<()> {
        std::fs::create_dir_all(target).with_context(|| format!("mkdir {target}"))?;
        let bind = MsFlags::MS_BIND;
        mount(Some(rootlayer_protocol::SHARE_AHEAD_MOUNT), Path::new(target), None::<&str>, bind, None::<&str>)
            .with_context(|| format!("bind share {} on {target}", self.tag))?;
        std::fs::metadata(target).with_context(|| format!("share {} on {target} does not answer", self.tag))?;
        Ok(())
    }

    /// Let go of it (the job mounts the share read-write).
    pub fn unmount(self) -> anyhow::Result<()> {
        nix::mount::umount(rootlayer_protocol::SHARE_AHEAD_MOUNT)
            .with_context(|| format!("unmount share {} (mounted ahead, read-only)", self.tag))
    }
}

/// Read ahead of the snapshot what a job's first writes to the scratch
/// disk read (the job's disk holds the same bytes, see
/// [`ScratchAhead::serves`]): group 0's block and inode bitmaps and first
/// inode table block, the upper and work dirs, and the block allocator's
/// buddy of the first groups. The restored guest then finds them cached:
/// about 15 ms less to mount the overlay, and up to 0.1 s less in a
/// script's first file creations. Best effort: a read that fails leaves it
/// to the job.
fn warm_scratch(device: &str) {
    use std::os::unix::fs::FileExt;
    const BLOCK: usize = 4096; // the host formatter's block size
    for dir in [rootlayer_protocol::SCRATCH_UPPER, rootlayer_protocol::SCRATCH_WORK] {
        let path = Path::new(rootlayer_protocol::SCRATCH_MOUNT).join(dir);
        let _ = std::fs::read_dir(path).map(Iterator::count);
    }
    // Synchronous reads (a read-ahead could still be in flight at the
    // snapshot point): the buffer cache is the block device's page cache.
    let Ok(disk) = std::fs::File::open(device) else { return };
    // No read-ahead: the data blocks after the metadata are best uncached
    // (a block allocated for a file's data must drop a cached copy).
    // SAFETY: posix_fadvise(2) on a descriptor we own; it only sets a hint.
    unsafe { libc::posix_fadvise(std::os::fd::AsRawFd::as_raw_fd(&disk), 0, 0, libc::POSIX_FADV_RANDOM) };
    let mut block = vec![0u8; BLOCK];
    // Group 0's descriptor, first in the block after the super block's.
    if disk.read_exact_at(&mut block, BLOCK as u64).is_err() {
        return;
    }
    let field = |at: usize| u64::from(u32::from_le_bytes([block[at], block[at + 1], block[at + 2], block[at + 3]]));
    // bg_block_bitmap, bg_inode_bitmap, bg_inode_table (low halves: group
    // 0 lies within the first 2^32 blocks).
    let blocks = [field(0x0), field(0x4), field(0x8)];
    let mut buf = vec![0u8; BLOCK];
    for b in blocks {
        let _ = disk.read_exact_at(&mut buf, b * BLOCK as u64);
    }
    // The buddy is built per group as its line is printed: a bounded
    // prefix of the table (a few dozen groups) and not a 16 TiB disk's.
    let name = Path::new(device).file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    if let Ok(mut groups) = std::fs::File::open(format!("/proc/fs/ext4/{name}/mb_groups")) {
        use std::io::Read;
        let _ = groups.read(&mut buf);
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

    #[test]
    fn the_share_mounted_ahead_serves_only_itself_read_only() {
        let ahead = ShareAhead { tag: "share0".into() };
        let share = |tag: &str, read_only: bool| Mount {
            source: MountSource::VirtioFs { tag: tag.into() },
            target: "/nix/store".into(),
            read_only,
        };
        assert!(ahead.serves(&share("share0", true)) && ahead.wanted(&share("share0", true)));
        assert!(!ahead.serves(&share("share0", false)), "read-write: mounted afresh");
        assert!(ahead.wanted(&share("share0", false)), "and the one ahead let go of first");
        assert!(!ahead.serves(&share("share1", true)) && !ahead.wanted(&share("share1", true)));
        assert!(!ahead.wanted(&disk("/dev/vda", "ext4", 128 << 20, true, SCRATCH_MOUNT)));
    }
}
