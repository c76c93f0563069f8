//! The device check task (e2e tests of the virtio devices): read a file from
//! a read-only share, try every kind of mutation there, write a file to the
//! exchange share and one to the disk. Each outcome is an observation the
//! host test asserts on.

use anyhow::Context;
use rootlayer_protocol::{DeviceCheck, IoBench, JobResult, XCHG_MOUNT};
use std::io::Read;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Instant;

fn outcome<T>(r: std::io::Result<T>) -> String {
    match r {
        Ok(_) => "ok".into(),
        Err(e) => match e.raw_os_error() {
            Some(libc::EROFS) => "EROFS".into(),
            Some(n) => format!("errno {n}: {e}"),
            None => e.to_string(),
        },
    }
}

pub fn run(c: &DeviceCheck, result: &mut JobResult) -> anyhow::Result<()> {
    let mut obs = |k: &str, v: String| result.observations.push((k.into(), v));

    let data = std::fs::read(&c.read_file).with_context(|| format!("read {}", c.read_file))?;
    obs("read_len", data.len().to_string());
    obs("read_fnv1a", format!("{:016x}", fnv1a(&data)));

    let dir = Path::new(&c.read_only_dir);
    // A hostile guest would first make the mount writable: do the same, so
    // that every refusal below comes from the host's device, not from this
    // kernel's read-only mount flag.
    obs("ro_remount_rw", outcome(remount_rw(dir)));
    obs("ro_create", outcome(std::fs::File::create(dir.join("new-file"))));
    // The share answers no OPEN (the kernel opens its files without
    // asking), so the refusal comes at the first byte written.
    obs(
        "ro_write",
        outcome(std::fs::OpenOptions::new().write(true).open(&c.read_file).and_then(|mut f| {
            use std::io::Write;
            f.write_all(b"x")
        })),
    );
    obs("ro_chmod", outcome(std::fs::set_permissions(&c.read_file, std::fs::Permissions::from_mode(0o777))));
    obs("ro_unlink", outcome(std::fs::remove_file(&c.read_file)));
    obs("ro_rename", outcome(std::fs::rename(&c.read_file, dir.join("renamed"))));
    obs("ro_mkdir", outcome(std::fs::create_dir(dir.join("new-dir"))));
    obs("ro_link", outcome(std::fs::hard_link(&c.read_file, dir.join("hardlink"))));
    obs("ro_symlink", outcome(std::os::unix::fs::symlink("/etc/passwd", dir.join("symlink"))));
    obs("ro_truncate", outcome(nix::unistd::truncate(Path::new(&c.read_file), 0).map_err(std::io::Error::from)));
    obs("ro_mknod", outcome(mkfifo(&dir.join("fifo"))));
    obs("ro_setxattr", outcome(setxattr(Path::new(&c.read_file), "user.rootlayer", b"x")));
    for path in &c.escapes {
        obs(&format!("escape:{path}"), outcome(std::fs::read(path)));
    }

    let xchg = Path::new(XCHG_MOUNT).join(&c.xchg_file);
    std::fs::write(&xchg, &c.xchg_contents).with_context(|| format!("write {}", xchg.display()))?;
    obs("xchg_write", "ok".into());

    let mut f = std::fs::File::create(&c.disk_file).with_context(|| format!("create {}", c.disk_file))?;
    f.write_all(c.disk_contents.as_bytes()).context("write disk file")?;
    f.sync_all().context("fsync disk file")?;
    nix::unistd::sync();
    obs("disk_write", "ok".into());
    Ok(())
}

/// Remount the file system that holds `path` read-write (MS_REMOUNT without
/// MS_RDONLY on its mount point, the longest mount path that is a prefix).
fn remount_rw(path: &Path) -> std::io::Result<()> {
    let mounts = std::fs::read_to_string("/proc/self/mounts")?;
    let target = mounts
        .lines()
        .filter_map(|l| l.split(' ').nth(1))
        .filter(|m| path.starts_with(m))
        .max_by_key(|m| m.len())
        .ok_or_else(|| std::io::Error::other("no mount point"))?;
    nix::mount::mount(None::<&str>, target, None::<&str>, nix::mount::MsFlags::MS_REMOUNT, None::<&str>)
        .map_err(std::io::Error::from)
}

fn mkfifo(path: &Path) -> std::io::Result<()> {
    nix::unistd::mkfifo(path, nix::sys::stat::Mode::from_bits_truncate(0o644)).map_err(std::io::Error::from)
}

fn setxattr(path: &Path, name: &str, value: &[u8]) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(path.as_os_str().as_bytes())?;
    let name = std::ffi::CString::new(name)?;
    // SAFETY: both strings are NUL-terminated and live across the call;
    // `value` is a valid buffer of the given length.
    let rc = unsafe { libc::setxattr(path.as_ptr(), name.as_ptr(), value.as_ptr().cast(), value.len(), 0) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// FNV-1a 64: enough to compare contents without a crypto crate in the agent.
fn fnv1a(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3))
}

/// Sequential read of `read_file` and sequential write + fsync of
/// `write_mib` MiB to `write_file`, 1 MiB at a time.
pub fn io_bench(b: &IoBench, result: &mut JobResult) -> anyhow::Result<()> {
    let mut buf = vec![0u8; 1 << 20];
    let t = Instant::now();
    let mut f = std::fs::File::open(&b.read_file).with_context(|| format!("open {}", b.read_file))?;
    let mut total = 0u64;
    loop {
        let n = f.read(&mut buf).context("read")?;
        if n == 0 {
            break;
        }
        total += n as u64;
    }
    result.observations.push(("read_bytes".into(), total.to_string()));
    result.observations.push(("read_secs".into(), format!("{:.3}", t.elapsed().as_secs_f64())));
    buf.fill(0x5a);
    let t = Instant::now();
    let mut w = std::fs::File::create(&b.write_file).with_context(|| format!("create {}", b.write_file))?;
    for _ in 0..b.write_mib {
        w.write_all(&buf).context("write")?;
    }
    w.sync_all().context("fsync")?;
    result.observations.push(("write_bytes".into(), (b.write_mib << 20).to_string()));
    result.observations.push(("write_secs".into(), format!("{:.3}", t.elapsed().as_secs_f64())));
    Ok(())
}
