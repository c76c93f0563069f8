//! e2e: the snapshot's scratch disk was small; a job restored from it with
//! a larger `--disk-size` learns its disk's size (a config-change
//! interrupt) and can fill all of it.

mod common;

use common::runas::{read_layer, FailingJob};
use common::snapshot::{boot_of, run_ok, Cache};

#[test]
fn snapshot_restored_job_uses_a_larger_disk_whole() {
    let Some(g) = common::guest("snapshot_restored_job_uses_a_larger_disk_whole") else { return };
    let cache = Cache::new();
    let small = FailingJob::new("echo x > /etc/x\n");
    let (first, _) = run_ok(&g, &small, &cache, &["--disk-size", "64"], &[]);
    assert_eq!(boot_of(&first), "snapshot-taken", "{}", first.stderr);

    // 200 MiB does not fit the snapshot's 64 MiB disk; it must fit 256 MiB.
    let big = FailingJob::new(
        "busybox fallocate -l 200M /big\nbusybox rm /big\nbusybox df -k / | busybox tail -1 > /etc/df\n",
    );
    let (f, layer) = run_ok(&g, &big, &cache, &["--disk-size", "256"], &[]);
    assert_eq!(boot_of(&f), "restored", "{}", f.stderr);
    let entries = read_layer(&layer);
    let df = entries.iter().find(|(p, _)| p == "etc/df").expect("etc/df").1.data.clone();
    let df = String::from_utf8(df).unwrap();
    let total_kib: u64 = df.split_whitespace().nth(1).unwrap().parse().unwrap();
    assert!(total_kib > 200 << 10, "the guest sees a {total_kib} KiB file system: {df}");
}
