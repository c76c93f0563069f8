//! The device check task (e2e tests of the virtio devices): read a file from
//! a read-only share, try every kind of mutation there, write a file to the
//! exchange share and one to the disk. Each outcome is an observation the
//! host test asserts on.

use crate::job::{DeviceCheck, JobResult, XCHG_MOUNT};
use anyhow::Context;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

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
