//! e2e: a snapshot is only used for the guest it was taken of: another
//! initramfs or another memory size boots cold (and takes its own).

mod common;

use common::runas::FailingJob;
use common::snapshot::{boot_of, run_ok, Cache};

#[test]
fn snapshot_of_another_initramfs_or_memory_size_is_not_used() {
    let Some(g) = common::guest("snapshot_of_another_initramfs_or_memory_size_is_not_used") else { return };
    let cache = Cache::new();
    let job = FailingJob::new("echo x > /etc/x\n");
    let (first, _) = run_ok(&g, &job, &cache, &[], &[]);
    assert_eq!(boot_of(&first), "snapshot-taken", "{}", first.stderr);

    // The same agent, another file: the cpio with padding after its trailer
    // (the kernel reads up to the trailer), so only its digest differs.
    let other = job.tmp.path().join("other-initramfs.cpio");
    let mut bytes = std::fs::read(&g.initrd).unwrap();
    bytes.extend_from_slice(&[0u8; 512]);
    std::fs::write(&other, &bytes).unwrap();
    let other_guest = common::Guest { kernel: g.kernel.clone(), kernel_smp: g.kernel_smp.clone(), initrd: other };
    let (f, _) = run_ok(&other_guest, &job, &cache, &[], &[]);
    assert_eq!(boot_of(&f), "snapshot-taken", "another initramfs boots cold: {}", f.stderr);
    assert!(f.stderr.contains("no snapshot for this guest yet"), "{}", f.stderr);

    let (f, _) = run_ok(&g, &job, &cache, &["--mem-size", "384"], &[]);
    assert_eq!(boot_of(&f), "snapshot-taken", "another memory size boots cold: {}", f.stderr);
    assert_eq!(cache.snapshots().len(), 3, "one per guest: {:?}", cache.snapshots());

    let (f, _) = run_ok(&g, &job, &cache, &[], &[]);
    assert_eq!(boot_of(&f), "restored", "the first guest's is still used: {}", f.stderr);
}
