//! The device check task (e2e tests of the virtio devices): read a file from
//! a read-only share, try every kind of mutation there, write a file to the
//! exchange share and one to the disk. Each outcome is an observation the
//! host test asserts on.

use crate::job::{DeviceCheck, IoBench, JobResult, XCHG_MOUNT};
use anyhow::Context;
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
    obs("ro_create", outcome(std::fs::File::create(dir.join("new-file"))));
    obs("ro_write", outcome(std::fs::OpenOptions::new().write(true).open(&c.read_file)));
    obs("ro_chmod", outcome(std::fs::set_permissions(&c.read_file, std::fs::Permissions::from_mode(0o777))));
    obs("ro_unlink", outcome(std::fs::remove_file(&c.read_file)));
    obs("ro_rename", outcome(std::fs::rename(&c.read_file, dir.join("renamed"))));
    obs("ro_mkdir", outcome(std::fs::create_dir(dir.join("new-dir"))));

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
