//! e2e: the script's sandbox (made once before the snapshot point,
//! `guest/src/sandbox.rs`) is what nixpkgs' `unshare -imnpuf --mount-proc
//! chroot` gives, in every job, whichever way its guest came up: the
//! script is PID 1 of a pid namespace holding only its own processes, the
//! hostname is `localhost`, and its mount namespace holds the overlay, /dev,
//! /proc, /sys and the store, none of the agent's own mounts. Two jobs in a
//! row (the second restored from the snapshot the first took, or both
//! cold) see the same.

mod common;

use common::runas::{read_layer, FailingJob};

const FACTS: &str = r#"mkdir -p /etc/sandbox
echo $$ > /etc/sandbox/pid
ls /proc | grep '^[0-9]*$' | sort -n > /etc/sandbox/pids
hostname > /etc/sandbox/hostname
cut -d' ' -f2 /proc/self/mounts | sort > /etc/sandbox/mounts
"#;

/// The facts the script wrote, by name.
fn facts(layer: &[u8]) -> std::collections::BTreeMap<String, String> {
    read_layer(layer)
        .into_iter()
        .filter_map(|(p, e)| {
            let name = p.trim_start_matches("./").strip_prefix("etc/sandbox/")?.to_string();
            (!name.is_empty()).then(|| (name, String::from_utf8_lossy(&e.data).into_owned()))
        })
        .collect()
}

#[test]
fn the_script_runs_as_pid_1_of_its_own_namespaces_in_every_job() {
    let Some(g) = common::guest("the_script_runs_as_pid_1_of_its_own_namespaces_in_every_job") else { return };
    let job = FailingJob::new(FACTS);
    let mut seen = Vec::new();
    for i in 0..2 {
        let out = job.out_dir.join(format!("out-{i}"));
        let f = job.run_to(&g, &out, &["--mem-size", "256", "--disk-size", "128", "--timeout", "600"]);
        assert_eq!(f.code, 0, "job {i}: {}", f.message());
        let facts = facts(&std::fs::read(out.join("layer.tar")).unwrap());
        assert_eq!(facts.get("pid").map(String::as_str), Some("1\n"), "job {i}: {facts:?}");
        // The shell and the two of its pipeline: nothing of the agent's.
        let pids: Vec<u32> = facts["pids"].lines().map(|l| l.parse().unwrap()).collect();
        assert!(pids.first() == Some(&1) && pids.len() <= 6 && pids.iter().all(|&p| p < 16), "job {i}: {pids:?}");
        assert_eq!(facts["hostname"], "localhost\n", "job {i}");
        let mounts: Vec<&str> = facts["mounts"].lines().collect();
        let store = job.store.display().to_string();
        for want in ["/", "/dev", "/proc", "/sys", store.as_str()] {
            assert!(mounts.contains(&want), "job {i}: {want} not mounted: {mounts:?}");
        }
        assert_eq!(mounts.iter().filter(|m| **m == "/").count(), 1, "job {i}: {mounts:?}");
        assert!(mounts.iter().all(|m| !m.starts_with("/run")), "job {i}: the agent's mounts show: {mounts:?}");
        seen.push(facts);
    }
    assert_eq!(seen[0], seen[1], "two jobs saw different sandboxes");
}
