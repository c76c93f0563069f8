//! e2e (one boot): the virtio devices under KVM. The agent reads a known file
//! from a read-only store share, gets EROFS for every mutation there, writes
//! a file to the exchange share that the host reads, and writes and syncs a
//! file on the ext4 scratch disk that the host then finds in the disk image
//! with debugfs. The store on the host is unchanged.

mod common;

use rootlayer::devices::console::Echo;
use rootlayer::job::{DeviceCheck, Task};
use rootlayer::runner::{run_job, GuestSpec, Store, Workdir, SCRATCH_MOUNT};
use rootlayer::vmm::GuestExit;
use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

fn fnv1a(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3))
}

/// Path -> (mode, size, fnv1a) for every entry under `root`.
fn listing(root: &Path) -> BTreeMap<String, (u32, u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            let m = std::fs::symlink_metadata(&p).unwrap();
            let h = if m.is_file() { fnv1a(&std::fs::read(&p).unwrap()) } else { 0 };
            if m.is_dir() {
                stack.push(p.clone());
            }
            out.insert(p.strip_prefix(root).unwrap().display().to_string(), (m.mode(), m.len(), h));
        }
    }
    out
}

#[test]
fn shares_and_scratch_disk_work_and_the_store_stays_read_only() {
    let Some(g) = common::guest("shares_and_scratch_disk_work_and_the_store_stays_read_only") else {
        return;
    };
    let store = tempfile::Builder::new().prefix("rootlayer-store-").tempdir().unwrap();
    let data: Vec<u8> = (0..300_000u32).map(|i| i.wrapping_mul(2_654_435_761).to_le_bytes()[1]).collect();
    std::fs::create_dir(store.path().join("pkg")).unwrap();
    std::fs::write(store.path().join("pkg/data.bin"), &data).unwrap();
    std::os::unix::fs::symlink("pkg/data.bin", store.path().join("link")).unwrap();
    let before = listing(store.path());
    let store_dir = std::fs::canonicalize(store.path()).unwrap();

    let spec = GuestSpec {
        kernel: g.kernel,
        initrd: g.initrd,
        mem_mib: 256,
        timeout: Duration::from_secs(300),
        echo: Echo::Stderr,
        extra_cmdline: String::new(),
        disk_mib: Some(64),
        stores: vec![Store { dir: store_dir.clone() }],
        shares: Vec::new(),
        backend: Default::default(),
        seccomp: true,
    };
    let read_file = store_dir.join("pkg/data.bin").display().to_string();
    let task = Task::DeviceCheck(DeviceCheck {
        read_file: read_file.clone(),
        read_only_dir: store_dir.join("pkg").display().to_string(),
        xchg_file: "hello.txt".into(),
        xchg_contents: "written by the guest\n".into(),
        disk_file: format!("{SCRATCH_MOUNT}/on-disk.txt"),
        disk_contents: "synced to the scratch disk\n".into(),
    });
    let outcome = run_job(&spec, Workdir::new().unwrap(), task).expect("job runs");
    assert_eq!(outcome.report.exit, GuestExit::Reset, "clean guest exit; console: {:?}", outcome.report.console_tail());
    let result = outcome.result.clone().expect("the agent wrote result.json");
    assert_eq!(result.status, 0, "agent error: {:?}", result.error);
    let obs: BTreeMap<String, String> = result.observations.into_iter().collect();
    eprintln!("observations: {obs:?}");

    assert_eq!(obs["read_len"], data.len().to_string());
    assert_eq!(obs["read_fnv1a"], format!("{:016x}", fnv1a(&data)));
    for op in ["ro_create", "ro_write", "ro_chmod", "ro_unlink", "ro_rename", "ro_mkdir"] {
        assert_eq!(obs[op], "EROFS", "{op} in the read-only store");
    }

    let xchg = std::fs::read_to_string(outcome.xchg().join("hello.txt")).unwrap();
    assert_eq!(xchg, "written by the guest\n");
    use std::os::unix::fs::MetadataExt;
    // SAFETY: getuid has no preconditions.
    let uid = unsafe { libc::getuid() };
    assert_eq!(std::fs::metadata(outcome.xchg().join("hello.txt")).unwrap().uid(), uid, "owned by the invoking user");

    let out = Command::new("debugfs").args(["-R", "cat /on-disk.txt"]).arg(outcome.disk()).output().expect("debugfs");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "synced to the scratch disk\n",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    assert_eq!(listing(store.path()), before, "the store on the host is unchanged");
}
