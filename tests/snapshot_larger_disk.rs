//! e2e: the snapshot holds its scratch disk mounted read-only. A job
//! restored with a disk of the same size only remounts it read-write; one
//! with a larger `--disk-size` gets its own mount, learns its disk's size
//! (a config-change interrupt) and can fill all of it.

mod common;

use common::runas::{read_layer, FailingJob, Finished};
use common::snapshot::{boot_of, run_ok, Cache};

/// The guest kernel's lines about mounting the scratch disk: (fresh
/// mounts, remounts), as `ignore_loglevel` shows them on the console.
fn scratch_mounts(f: &Finished) -> (usize, usize) {
    let count = |what: &str| f.stderr.lines().filter(|l| l.contains(&format!("EXT4-fs (vda): {what}"))).count();
    (count("mounted filesystem"), count("re-mounted"))
}

#[test]
fn snapshot_restored_job_uses_a_larger_disk_whole() {
    let Some(g) = common::guest("snapshot_restored_job_uses_a_larger_disk_whole") else { return };
    let cache = Cache::new();
    let kernel_log = ["--cmdline", "ignore_loglevel"];
    let small = FailingJob::new("echo x > /etc/x\n");
    let epoch = [("SOURCE_DATE_EPOCH", "1")];
    let (first, reference) = run_ok(&g, &small, &cache, &[&kernel_log[..], &["--disk-size", "64"]].concat(), &epoch);
    assert_eq!(boot_of(&first), "snapshot-taken", "{}", first.stderr);

    // The same size: the mount the snapshot holds, remounted read-write
    // for the job and read-only after it.
    let (same, layer) = run_ok(&g, &small, &cache, &[&kernel_log[..], &["--disk-size", "64"]].concat(), &epoch);
    assert_eq!(boot_of(&same), "restored", "{}", same.stderr);
    assert_eq!(scratch_mounts(&same), (0, 2), "{}", same.stderr);
    assert!(layer == reference, "the restored job gives the layer of the job that took the snapshot");

    // 200 MiB does not fit the snapshot's 64 MiB disk; it must fit 256 MiB.
    let big = FailingJob::new(
        "busybox fallocate -l 200M /big\nbusybox rm /big\nbusybox df -k / | busybox tail -1 > /etc/df\n",
    );
    let (f, layer) = run_ok(&g, &big, &cache, &[&kernel_log[..], &["--disk-size", "256"]].concat(), &[]);
    assert_eq!(boot_of(&f), "restored", "{}", f.stderr);
    assert_eq!(scratch_mounts(&f), (1, 1), "its own mount: {}", f.stderr);
    let entries = read_layer(&layer);
    let df = entries.iter().find(|(p, _)| p == "etc/df").expect("etc/df").1.data.clone();
    let df = String::from_utf8(df).unwrap();
    let total_kib: u64 = df.split_whitespace().nth(1).unwrap().parse().unwrap();
    assert!(total_kib > 200 << 10, "the guest sees a {total_kib} KiB file system: {df}");
}
