//! e2e: a snapshot with a flipped byte, or cut short, is noticed before use
//! (its checksums, its length); the job boots cold, says why once, succeeds
//! with the same layer, and leaves a whole snapshot behind.

mod common;

use common::runas::FailingJob;
use common::snapshot::{boot_of, run_ok, Cache};
use std::os::unix::fs::FileExt;

#[test]
fn snapshot_damaged_or_truncated_means_a_cold_boot() {
    let Some(g) = common::guest("snapshot_damaged_or_truncated_means_a_cold_boot") else { return };
    let cache = Cache::new();
    let job = FailingJob::new("echo x > /etc/x\n");
    let epoch = [("SOURCE_DATE_EPOCH", "1")];
    let (first, reference) = run_ok(&g, &job, &cache, &[], &epoch);
    assert_eq!(boot_of(&first), "snapshot-taken", "{}", first.stderr);
    let snap = cache.snapshots().pop().expect("a snapshot");
    let len = std::fs::metadata(&snap).unwrap().len();

    // One byte of guest memory flipped (a page the kernel wrote: low memory
    // holds its text), as a bad disk sector would.
    let f = std::fs::OpenOptions::new().read(true).write(true).open(&snap).unwrap();
    let at = len - (512 << 20) + (16 << 20) + 123;
    let mut b = [0u8];
    f.read_exact_at(&mut b, at).unwrap();
    f.write_all_at(&[b[0] ^ 0x01], at).unwrap();
    drop(f);
    let (damaged, layer) = run_ok(&g, &job, &cache, &[], &epoch);
    assert_eq!(boot_of(&damaged), "snapshot-taken", "cold, and taken again: {}", damaged.stderr);
    assert_eq!(damaged.stderr.matches("corrupt").count(), 1, "said once: {}", damaged.stderr);
    assert!(damaged.stderr.contains("booting cold"), "{}", damaged.stderr);
    assert_eq!(layer, reference);

    // Cut short.
    let snap = cache.snapshots().pop().expect("a snapshot again");
    let f = std::fs::OpenOptions::new().write(true).open(&snap).unwrap();
    f.set_len(len / 2).unwrap();
    drop(f);
    let (truncated, layer) = run_ok(&g, &job, &cache, &[], &epoch);
    assert_eq!(boot_of(&truncated), "snapshot-taken", "{}", truncated.stderr);
    assert_eq!(truncated.stderr.matches("truncated").count(), 1, "{}", truncated.stderr);
    assert_eq!(layer, reference);

    // What was left behind is whole again.
    let (restored, layer) = run_ok(&g, &job, &cache, &[], &epoch);
    assert_eq!(boot_of(&restored), "restored", "{}", restored.stderr);
    assert_eq!(layer, reference);
    assert_eq!(cache.snapshots().len(), 1, "{:?}", cache.snapshots());
}
