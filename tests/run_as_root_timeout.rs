//! e2e: a runAsRoot script that never ends. `--timeout` stops the guest:
//! rootlayer exits 124 promptly, names the timeout, writes nothing at
//! `--out` and leaves nothing in its temp dir.

mod common;

use common::runas::FailingJob;
use std::time::Duration;

#[test]
fn run_as_root_timeout_stops_the_job_and_cleans_up() {
    let Some(g) = common::guest("run_as_root_timeout_stops_the_job_and_cleans_up") else { return };
    // Boot alone takes ~15 s on software-emulated KVM: leave the script time to start.
    let timeout = 90;
    let job = FailingJob::new("echo 'sleeping forever'\nbusybox sleep 100000\n");
    let f = job.run(&g, 256, 64, timeout, &[]);
    assert!(f.stderr.contains("sleeping forever"), "the script started before the timeout");
    let json = job.assert_failed(&f, 124);
    assert_eq!(json["script_status"], serde_json::Value::Null, "{json}");
    assert!(f.message().contains(&format!("within {timeout}s")), "message names the timeout: {}", f.message());
    assert!(f.elapsed >= Duration::from_secs(timeout), "stopped early: {:?}", f.elapsed);
    assert!(f.elapsed < Duration::from_secs(timeout + 15), "stopping took too long: {:?}", f.elapsed);
}
