//! e2e: guests restored from one snapshot share no RNG state (the agent
//! mixes fresh host entropy in and reseeds) and have the host's time (the
//! snapshot's clock is set forward), so files the script writes get the
//! host's current mtimes, as after a cold boot.

mod common;

use common::runas::{read_layer, FailingJob};
use common::snapshot::{boot_of, run_ok, Cache};
use std::time::{SystemTime, UNIX_EPOCH};

fn now() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs_f64()
}

#[test]
fn snapshot_restored_guests_have_their_own_randomness_and_the_hosts_clock() {
    let Some(g) = common::guest("snapshot_restored_guests_have_their_own_randomness_and_the_hosts_clock") else {
        return;
    };
    let cache = Cache::new();
    let job = FailingJob::new(
        "busybox cat /proc/sys/kernel/random/uuid > /etc/uuid\nbusybox date +%s > /etc/now\nbusybox head -c 16 /dev/urandom | busybox od -An -tx1 > /etc/random\n",
    );
    let (first, _) = run_ok(&g, &job, &cache, &[], &[]);
    assert_eq!(boot_of(&first), "snapshot-taken", "{}", first.stderr);
    // Time passes between the snapshot and the restores: a clock left at
    // the snapshot's would be behind by at least this much.
    std::thread::sleep(std::time::Duration::from_secs(5));

    let mut seen = Vec::new();
    for i in 0..2 {
        let before = now();
        let (f, layer) = run_ok(&g, &job, &cache, &[], &[]);
        let after = now();
        assert_eq!(boot_of(&f), "restored", "job {i}: {}", f.stderr);
        // The kernel's own timing jitter would likely tell two guests apart
        // too; the agent's line says the host's bytes went in.
        assert!(
            f.stderr.contains(&format!("rootlayer-agent: {}", rootlayer::protocol::ENTROPY_LINE)),
            "job {i}: {}",
            f.stderr
        );
        let entries = read_layer(&layer);
        let file = |name: &str| {
            entries.iter().find(|(p, _)| p == name).unwrap_or_else(|| panic!("{name} in the layer")).1.clone()
        };
        let text = |name: &str| String::from_utf8(file(name).data).unwrap();
        let guest_now: f64 = text("etc/now").trim().parse().unwrap();
        assert!(
            guest_now >= before - 1.0 && guest_now <= after + 1.0,
            "job {i}: the guest's clock said {guest_now}, the host's went from {before} to {after}"
        );
        let mtime = file("etc/now").mtime as f64;
        assert!(mtime >= before - 1.0 && mtime <= after + 1.0, "job {i}: mtime {mtime}, host {before}..{after}");
        seen.push((text("etc/uuid"), text("etc/random")));
    }
    assert_ne!(seen[0].0, seen[1].0, "two restored guests drew the same uuid");
    assert_ne!(seen[0].1, seen[1].1, "two restored guests read the same /dev/urandom bytes");
}
