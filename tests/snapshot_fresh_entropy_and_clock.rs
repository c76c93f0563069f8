//! e2e: guests restored from one snapshot share no RNG state (the agent
//! mixes fresh host entropy in and reseeds) and have the host's time (the
//! snapshot's clock is set forward), so files the script writes get the
//! host's current mtimes, as after a cold boot. Their monotonic clock goes
//! on from the snapshot's, not from the time the snapshot lay on disk
//! (which the kernel's timekeeping caught up with in steps: 3.5 s for a
//! day).

mod common;

use common::runas::{read_layer, FailingJob};
use common::snapshot::{boot_of, run_ok, Cache};
use std::time::{SystemTime, UNIX_EPOCH};

fn now() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs_f64()
}

/// The guest's uptime on the agent's ready line.
fn ready_uptime(stderr: &str) -> f64 {
    stderr
        .lines()
        .find_map(|l| l.split(" ready (uptime ").nth(1))
        .and_then(|r| r.strip_suffix("s)"))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no ready line with an uptime: {stderr}"))
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
    let snapshot_uptime = ready_uptime(&first.stderr);
    // Time passes between the snapshot and the restores: a clock left at
    // the snapshot's would be behind by at least this much.
    std::thread::sleep(std::time::Duration::from_secs(5));

    let mut seen = Vec::new();
    let mut uptimes = Vec::new();
    for i in 0..2 {
        let before = now();
        let (f, layer) = run_ok(&g, &job, &cache, &[], &[]);
        let after = now();
        assert_eq!(boot_of(&f), "restored", "job {i}: {}", f.stderr);
        // The snapshot's clock is what the first job's guest had when it
        // paused, a little before its own ready line (the pause itself
        // counts on its clock, not on the snapshot's).
        let uptime = ready_uptime(&f.stderr);
        assert!(
            uptime < snapshot_uptime + 2.0,
            "job {i}: restored at uptime {uptime}s, the snapshot-taking guest was ready at \
             {snapshot_uptime}s, and more than 5 s of host time lay between"
        );
        uptimes.push(uptime);
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
    // A whole job ran between the two restores.
    assert!((uptimes[0] - uptimes[1]).abs() < 1.0, "the restored guests came up at uptimes {uptimes:?}");
    assert_ne!(seen[0].0, seen[1].0, "two restored guests drew the same uuid");
    assert_ne!(seen[0].1, seen[1].1, "two restored guests read the same /dev/urandom bytes");
}
