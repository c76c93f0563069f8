//! e2e: a runAsRoot script that fills the scratch disk. rootlayer exits 6
//! (disk full) with a message saying to raise --disk-size, writes nothing at
//! `--out` and leaves nothing in its temp dir.

mod common;

use common::runas::FailingJob;

#[test]
fn run_as_root_full_scratch_disk_is_reported() {
    let Some(g) = common::guest("run_as_root_full_scratch_disk_is_reported") else { return };
    // Most of the disk goes at once (writing data is slow on emulated KVM);
    // dd's writes then meet the end of the disk.
    let job = FailingJob::new(
        "busybox fallocate -l 24M /prefill\nbusybox dd if=/dev/zero of=/fill bs=1M\necho 'not reached'\n",
    );
    let f = job.run(&g, 256, 32, 600, &[]);
    assert!(f.stderr.contains("No space left on device"), "dd met a full disk");
    assert!(!f.stderr.contains("not reached"), "dd failed and set -e stopped the script");
    job.assert_failed(&f, 6);
    assert_eq!(f.message(), "rootlayer: the scratch disk is full (raise --disk-size)");
}
