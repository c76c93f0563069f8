//! e2e: the first job with no snapshot boots cold and takes one; the next
//! is restored from it, and both give the layer a `--no-snapshot` run gives,
//! byte for byte.

mod common;

use common::runas::FailingJob;
use common::snapshot::{boot_of, run_ok, Cache};

#[test]
fn snapshot_second_job_is_restored_and_gives_the_same_layer() {
    let Some(g) = common::guest("snapshot_second_job_is_restored_and_gives_the_same_layer") else { return };
    let cache = Cache::new();
    let job = FailingJob::new("echo restored > /etc/hello\nrm /old/file\nchown 7:7 /data/owned\nbusybox rm -rf /d\n");
    let epoch = [("SOURCE_DATE_EPOCH", "1")];

    let (cold, reference) = run_ok(&g, &job, &cache, &["--no-snapshot"], &epoch);
    assert_eq!(boot_of(&cold), "cold");
    assert!(cache.snapshots().is_empty(), "--no-snapshot takes none: {:?}", cache.snapshots());

    let (first, layer1) = run_ok(&g, &job, &cache, &[], &epoch);
    assert_eq!(boot_of(&first), "snapshot-taken", "{}", first.stderr);
    let snaps = cache.snapshots();
    assert_eq!(snaps.len(), 1, "{snaps:?}");
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let meta = std::fs::metadata(&snaps[0]).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o600, "the snapshot is its owner's only");
    assert!(meta.blocks() * 512 < meta.len() / 4, "sparse: {} bytes on disk of {}", meta.blocks() * 512, meta.len());

    let (second, layer2) = run_ok(&g, &job, &cache, &[], &epoch);
    assert_eq!(boot_of(&second), "restored", "{}", second.stderr);
    assert!(second.message().contains("boot (restored)"), "{}", second.message());
    assert!(!second.stderr.contains("booting cold"), "{}", second.stderr);
    assert_eq!(cache.snapshots(), snaps, "restoring leaves the snapshot as it was");

    assert_eq!(layer1, reference, "the job that took the snapshot gives the cold layer");
    assert_eq!(layer2, reference, "the restored job gives the cold layer");
}
