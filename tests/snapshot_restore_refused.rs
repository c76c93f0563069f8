//! e2e: a snapshot that passes its checks but cannot be restored (a device
//! that is not the one the snapshot holds), or whose guest dies at once
//! when restored (its instruction pointer lost), costs a cold boot, said
//! once: the job succeeds with the same layer, and a good snapshot is
//! taken in its place.

mod common;

use common::runas::FailingJob;
use common::snapshot::{boot_of, run_ok, Cache};
use std::path::Path;

const STATE_OFFSET: usize = 64 << 10;

/// Rewrite the snapshot's machine state with `edit` (which must keep its
/// length: JSON padded with spaces) and fix its checksum in the header, as
/// a snapshot would look that a buggy or mismatched rootlayer wrote.
fn rewrite_state(path: &Path, edit: impl Fn(&mut serde_json::Value)) {
    let mut bytes = std::fs::read(path).unwrap();
    let header_len = u32::from_le_bytes(bytes[12..16].try_into().unwrap()) as usize;
    let mut header: serde_json::Value = serde_json::from_slice(&bytes[16..16 + header_len]).unwrap();
    let state_len = usize::try_from(header["state_len"].as_u64().unwrap()).unwrap();
    let mut state: serde_json::Value = serde_json::from_slice(&bytes[STATE_OFFSET..STATE_OFFSET + state_len]).unwrap();
    edit(&mut state);
    let mut text = serde_json::to_vec(&state).unwrap();
    assert!(text.len() <= state_len, "the edit grew the state");
    text.resize(state_len, b' ');
    bytes[STATE_OFFSET..STATE_OFFSET + state_len].copy_from_slice(&text);
    header["state_sha256"] = serde_json::Value::String(common::image::sha256_hex(&text));
    let header_text = serde_json::to_vec(&header).unwrap();
    assert_eq!(header_text.len(), header_len, "the header keeps its length");
    bytes[16..16 + header_len].copy_from_slice(&header_text);
    std::fs::write(path, bytes).unwrap();
}

#[test]
fn snapshot_that_cannot_be_restored_means_a_cold_boot() {
    let Some(g) = common::guest("snapshot_that_cannot_be_restored_means_a_cold_boot") else { return };
    let cache = Cache::new();
    let job = FailingJob::new("echo x > /etc/x\n");
    let epoch = [("SOURCE_DATE_EPOCH", "1")];
    let (first, reference) = run_ok(&g, &job, &cache, &[], &epoch);
    assert_eq!(boot_of(&first), "snapshot-taken", "{}", first.stderr);

    // The first virtio device (the scratch disk) claims to be another type.
    let snap = cache.snapshots().pop().unwrap();
    rewrite_state(&snap, |s| s["transports"][0]["device_type"] = serde_json::json!(9));
    let (f, layer) = run_ok(&g, &job, &cache, &[], &epoch);
    assert_eq!(boot_of(&f), "snapshot-taken", "cold, and a new snapshot: {}", f.stderr);
    assert_eq!(f.stderr.matches("restoring the snapshot").count(), 1, "said once: {}", f.stderr);
    assert!(f.stderr.contains("booting cold"), "{}", f.stderr);
    assert_eq!(layer, reference);

    // The boot vCPU's rip zeroed (bytes 128..136 of kvm_regs): the restored
    // guest faults before its agent reads the job.
    let snap = cache.snapshots().pop().unwrap();
    rewrite_state(&snap, |s| {
        for i in 128..136 {
            s["vcpus"][0]["regs"][i] = serde_json::json!(0);
        }
    });
    let (f, layer) = run_ok(&g, &job, &cache, &[], &epoch);
    assert_eq!(boot_of(&f), "snapshot-taken", "{}", f.stderr);
    assert_eq!(
        f.stderr.matches("the restored guest stopped before its job started").count(),
        1,
        "said once: {}",
        f.stderr
    );
    assert_eq!(layer, reference);

    let (f, layer) = run_ok(&g, &job, &cache, &[], &epoch);
    assert_eq!(boot_of(&f), "restored", "the new snapshot is good: {}", f.stderr);
    assert_eq!(layer, reference);
}
