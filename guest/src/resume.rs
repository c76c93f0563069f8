//! What makes one guest serve many jobs: the doorbell to the VMM (the
//! snapshot point), and what a guest restored from a snapshot must renew
//! before it runs anything of a job: its RNG state, its wall clock, and its
//! view of the disks, whose backing files are the job's, not the snapshot's.
//!
//! All of it is also right after a cold boot, so the agent does not need to
//! know which path the host took: fresh entropy never hurts, the clock is
//! only ever moved forward, and a cold guest's disks already have their size.

use anyhow::Context;
use rootlayer_protocol::{ENTROPY_BYTES, VMM_EVENT_PATH};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

/// Tell the VMM `event` (kernel patch 0005 passes it to the VMM's port).
/// A kernel without the doorbell only costs the snapshot: said, not fatal.
pub fn ring(event: u32) {
    if let Err(e) = write_event(event) {
        eprintln!("rootlayer-agent: telling the VMM event {event}: {e} (no snapshot of this guest)");
    }
}

/// Write `event` to the doorbell, through a descriptor opened at the first
/// ring (READY, before the snapshot point, so a restored guest has it):
/// the walk to it through sysfs costs an emulated guest kernel about 3 ms
/// at each of a job's two rings (STARTED, POWER_OFF).
pub fn write_event(event: u32) -> std::io::Result<()> {
    use std::os::unix::fs::FileExt;
    static DOORBELL: std::sync::OnceLock<Option<std::fs::File>> = std::sync::OnceLock::new();
    let doorbell = DOORBELL.get_or_init(|| std::fs::OpenOptions::new().write(true).open(VMM_EVENT_PATH).ok());
    match doorbell {
        // A module parameter takes each write whole, at offset 0.
        Some(file) => file.write_at(event.to_string().as_bytes(), 0).map(drop),
        None => std::fs::write(VMM_EVENT_PATH, event.to_string()),
    }
}

/// The snapshot point: everything printed so far has left the guest (a
/// restored guest must not repeat the tail of the boot log), then READY.
/// Returns in the guest that took the snapshot and in every restored one.
pub fn ready_for_snapshot() {
    drain_console();
    ring(rootlayer_protocol::VMM_EVENT_READY);
}

/// Wait until everything printed so far has left the guest (the serial
/// driver sends from its buffer on interrupts, after write(2) returned).
pub fn drain_console() {
    use std::io::Write;
    let _ = std::io::stdout().flush();
    let _ = std::io::stderr().flush();
    // SAFETY: tcdrain on the standard output descriptor only waits for
    // output to be sent; it fails harmlessly if it is not a terminal.
    unsafe { libc::tcdrain(1) };
}

/// `RNDADDENTROPY`: `_IOW('R', 0x03, int[2])`.
const RNDADDENTROPY: libc::c_ulong = 0x4008_5203;
/// `RNDRESEEDCRNG`: `_IO('R', 0x07)`.
const RNDRESEEDCRNG: libc::c_ulong = 0x5207;

/// Mix the host's bytes (hex) into the guest's pool, credited, and reseed
/// the CRNG at once, so that no two jobs restored from one snapshot draw
/// the same random numbers from here on.
pub fn add_entropy(hex: &str) -> anyhow::Result<()> {
    let bytes = rootlayer_protocol::hex::decode(hex).context("job.json entropy is not hex")?;
    anyhow::ensure!(bytes.len() == ENTROPY_BYTES, "job.json entropy is {} bytes, not {ENTROPY_BYTES}", bytes.len());
    // struct rand_pool_info { int entropy_count; int buf_size; __u32 buf[]; }
    let mut info = Vec::with_capacity(8 + bytes.len());
    let bits = i32::try_from(bytes.len() * 8).expect("64 bytes");
    let len = i32::try_from(bytes.len()).expect("64 bytes");
    info.extend_from_slice(&bits.to_ne_bytes());
    info.extend_from_slice(&len.to_ne_bytes());
    info.extend_from_slice(&bytes);
    let random = std::fs::OpenOptions::new().write(true).open("/dev/urandom").context("open /dev/urandom")?;
    // SAFETY: `info` is a whole rand_pool_info with `buf_size` bytes after
    // its header, alive for the call; the kernel only reads it.
    if unsafe { libc::ioctl(random.as_raw_fd(), RNDADDENTROPY, info.as_ptr()) } == -1 {
        return Err(std::io::Error::last_os_error()).context("RNDADDENTROPY");
    }
    // SAFETY: RNDRESEEDCRNG takes no argument.
    if unsafe { libc::ioctl(random.as_raw_fd(), RNDRESEEDCRNG) } == -1 {
        return Err(std::io::Error::last_os_error()).context("RNDRESEEDCRNG");
    }
    Ok(())
}

/// Where the wall clock must go: the host's time when it wrote the job is
/// a lower bound of the true time, so a clock behind it is wrong (a guest
/// restored from a snapshot wakes at the time the snapshot was taken) and
/// is set to it; a clock ahead of it (a cold boot takes seconds) is right.
pub fn clock_target(now_ns: u128, host_ns: u128) -> Option<u128> {
    (now_ns < host_ns).then_some(host_ns)
}

/// Set the wall clock forward to the host's time if it is behind.
pub fn set_clock(host_ns: u128) -> anyhow::Result<()> {
    use nix::time::{clock_gettime, clock_settime, ClockId};
    let now = clock_gettime(ClockId::CLOCK_REALTIME).context("read the clock")?;
    let now_ns = u128::try_from(now.tv_sec()).unwrap_or(0) * 1_000_000_000 + u128::try_from(now.tv_nsec()).unwrap_or(0);
    if let Some(target) = clock_target(now_ns, host_ns) {
        let secs = i64::try_from(target / 1_000_000_000).context("host time out of range")?;
        let nanos = i64::try_from(target % 1_000_000_000).expect("below 1e9");
        clock_settime(ClockId::CLOCK_REALTIME, nix::sys::time::TimeSpec::new(secs, nanos)).context("set the clock")?;
    }
    Ok(())
}

/// How long a disk may take to show the size the host gave it (a restored
/// guest's kernel reads it in a work item after the config interrupt).
const DISK_SIZE_WAIT: Duration = Duration::from_secs(20);

/// The size in bytes the kernel shows for `device` (`/dev/vda`).
pub fn disk_size(device: &str) -> anyhow::Result<u64> {
    size_of(&open_disk(device)?, device)
}

fn open_disk(device: &str) -> anyhow::Result<std::fs::File> {
    std::fs::File::open(device).with_context(|| format!("open {device}"))
}

/// `BLKGETSIZE64`: `_IOR(0x12, 114, size_t)`.
const BLKGETSIZE64: libc::c_ulong = 0x8008_1272;

/// The size of the open block device `disk` in bytes: asked of the device
/// itself, not read from /sys/class/block/NAME/size, whose walk through
/// sysfs and its symlink costs an emulated guest kernel about 8 ms.
fn size_of(disk: &std::fs::File, device: &str) -> anyhow::Result<u64> {
    let mut bytes: u64 = 0;
    // SAFETY: BLKGETSIZE64 writes one u64 through the pointer, which points
    // at `bytes`, alive for the call; the descriptor is open.
    if unsafe { libc::ioctl(disk.as_raw_fd(), BLKGETSIZE64, &mut bytes as *mut u64) } == -1 {
        return Err(std::io::Error::last_os_error()).with_context(|| format!("BLKGETSIZE64 {device}"));
    }
    Ok(bytes)
}

/// `BLKFLSBUF`: `_IO(0x12, 97)`.
const BLKFLSBUF: libc::c_ulong = 0x1261;

/// Before `device` is mounted: wait until the kernel shows it with `size`
/// bytes, then drop whatever it cached of the disk's blocks (a restored
/// guest read the snapshot's disk once, at probe).
pub fn settle_disk(device: &str, size: u64) -> anyhow::Result<()> {
    let disk = open_disk(device)?;
    wait_for(&disk, device, size)?;
    // SAFETY: BLKFLSBUF takes no argument; the descriptor is open.
    if unsafe { libc::ioctl(disk.as_raw_fd(), BLKFLSBUF) } == -1 {
        return Err(std::io::Error::last_os_error()).with_context(|| format!("BLKFLSBUF {device}"));
    }
    Ok(())
}

/// Wait until the kernel shows `device` with `size` bytes.
pub fn wait_for_size(device: &str, size: u64) -> anyhow::Result<()> {
    wait_for(&open_disk(device)?, device, size)
}

fn wait_for(disk: &std::fs::File, device: &str, size: u64) -> anyhow::Result<()> {
    let start = Instant::now();
    loop {
        let shown = size_of(disk, device)?;
        if shown == size {
            break;
        }
        anyhow::ensure!(start.elapsed() < DISK_SIZE_WAIT, "{device} shows {shown} bytes, the host gave it {size}");
        std::thread::sleep(Duration::from_millis(5));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_clock_only_moves_forward() {
        assert_eq!(clock_target(100, 200), Some(200), "a restored guest is behind");
        assert_eq!(clock_target(300, 200), None, "a cold boot is ahead of the job's writing");
        assert_eq!(clock_target(200, 200), None);
    }
}
