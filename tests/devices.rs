//! e2e (one boot): the virtio devices under KVM. The agent reads a known file
//! from a read-only store share, remounts it read-write as a hostile guest
//! would, and still gets EROFS (from the host) for every mutation there, writes
//! a file to the exchange share that the host reads, and writes and syncs a
//! file on the ext4 scratch disk that the host then finds in the disk image
//! with debugfs. `..` and symlinks (absolute or relative) never lead to the
//! host file beside the store. The store on the host is unchanged. Under scripts/test the
//! test runs as the unprivileged test user (tests/common/mod.rs).

mod common;

use rootlayer::devices::console::Echo;
use rootlayer::job::{run_job, GuestSpec, Store, Workdir, SCRATCH_MOUNT};
use rootlayer::protocol::{DeviceCheck, Task};
use rootlayer::vmm::{GuestExit, RunEnd};
use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// Path -> (mode, size, fnv1a) for every entry under `root`.
fn listing(root: &Path) -> BTreeMap<String, (u32, u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            let m = std::fs::symlink_metadata(&p).unwrap();
            let h = if m.is_file() { common::fnv1a(&std::fs::read(&p).unwrap()) } else { 0 };
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
    let test = "shares_and_scratch_disk_work_and_the_store_stays_read_only";
    let Some(g) = common::test_guest(test) else { return };
    // The VMM runs in this process: run the whole test as the test user.
    if common::rerun_as_test_user(test) {
        return;
    }
    // The store, and beside it on the host a file the guest must not reach.
    let top = tempfile::Builder::new().prefix("rootlayer-store-").tempdir().unwrap();
    let top_dir = std::fs::canonicalize(top.path()).unwrap();
    std::fs::write(top_dir.join("secret"), "host secret\n").unwrap();
    let store_dir = top_dir.join("store");
    std::fs::create_dir(&store_dir).unwrap();
    let data: Vec<u8> = (0..300_000u32).map(|i| i.wrapping_mul(2_654_435_761).to_le_bytes()[1]).collect();
    std::fs::create_dir(store_dir.join("pkg")).unwrap();
    std::fs::write(store_dir.join("pkg/data.bin"), &data).unwrap();
    std::os::unix::fs::symlink("pkg/data.bin", store_dir.join("link")).unwrap();
    std::os::unix::fs::symlink(top_dir.join("secret"), store_dir.join("abs-escape")).unwrap();
    std::os::unix::fs::symlink("../secret", store_dir.join("rel-escape")).unwrap();
    let before = listing(top.path());
    let escapes: Vec<String> = ["../secret", "abs-escape", "rel-escape", "pkg/../../secret"]
        .iter()
        .map(|p| format!("{}/{p}", store_dir.display()))
        .collect();

    let spec = GuestSpec {
        kernel: g.kernel,
        initrd: g.initrd,
        mem_mib: 256,
        cpus: 1,
        timeout: Duration::from_secs(300),
        echo: Echo::Stderr,
        extra_cmdline: String::new(),
        disk_mib: Some(64),
        base_disk: None,
        contents_disk: None,
        stores: vec![Store { dir: store_dir.clone() }],
        shares: Vec::new(),
        max_output: Some(1 << 20),
        echo_limit: None,
        seccomp: true,
        snapshot: true,
        files: Vec::new(),
    };
    let read_file = store_dir.join("pkg/data.bin").display().to_string();
    let task = Task::DeviceCheck(DeviceCheck {
        read_file: read_file.clone(),
        read_only_dir: store_dir.join("pkg").display().to_string(),
        xchg_file: "hello.txt".into(),
        xchg_contents: "written by the guest\n".into(),
        disk_file: format!("{SCRATCH_MOUNT}/on-disk.txt"),
        disk_contents: "synced to the scratch disk\n".into(),
        escapes: escapes.clone(),
    });
    let outcome = run_job(&spec, Workdir::new().unwrap(), task).expect("job runs");
    assert_eq!(
        outcome.report.end,
        RunEnd::Exited(GuestExit::Reset),
        "clean guest exit; console: {:?}",
        outcome.report.console_tail()
    );
    let result = outcome.result.clone().expect("the agent wrote result.json");
    assert_eq!(result.status, 0, "agent error: {:?}", result.error);
    let obs: BTreeMap<String, String> = result.observations.into_iter().collect();
    eprintln!("observations: {obs:?}");

    assert_eq!(obs["read_len"], data.len().to_string());
    assert_eq!(obs["read_fnv1a"], format!("{:016x}", common::fnv1a(&data)));
    // The guest made its mount writable, so each refusal is the host's.
    assert_eq!(obs["ro_remount_rw"], "ok");
    for op in [
        "ro_create",
        "ro_write",
        "ro_chmod",
        "ro_unlink",
        "ro_rename",
        "ro_mkdir",
        "ro_link",
        "ro_symlink",
        "ro_truncate",
        "ro_mknod",
        "ro_setxattr",
    ] {
        assert_eq!(obs[op], "EROFS", "{op} in the read-only store");
    }
    assert_eq!(std::fs::read(store_dir.join("pkg/data.bin")).unwrap(), data, "the store's file is as it was");

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

    // `..` and symlinks resolve in the guest's own tree, where the host's
    // file beside the store does not exist.
    for path in &escapes {
        let got = &obs[&format!("escape:{path}")];
        assert!(got.starts_with("errno 2:"), "{path} must not lead out of the share: {got}");
    }
    assert_eq!(listing(top.path()), before, "the store (and what is beside it) on the host is unchanged");
}
