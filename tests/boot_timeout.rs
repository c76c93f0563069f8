//! e2e: a guest that does not finish before --timeout is stopped; the exit
//! code says timeout and the last console lines are printed. The agent's
//! `hang` self-test makes the guest never finish, on any KVM speed.

mod common;

use std::time::{Duration, Instant};

#[test]
fn timeout_stops_the_guest_and_prints_its_last_lines() {
    let Some(g) = common::test_guest("timeout_stops_the_guest_and_prints_its_last_lines") else {
        return;
    };
    hang_until_timeout(&g.kernel, &g.initrd, 1);
}

/// The same with two vCPUs: every vCPU thread is stopped.
#[test]
fn timeout_stops_every_vcpu_of_a_two_vcpu_guest() {
    let Some(g) = common::test_guest("timeout_stops_every_vcpu_of_a_two_vcpu_guest") else {
        return;
    };
    hang_until_timeout(&g.kernel_smp, &g.initrd, 2);
}

fn hang_until_timeout(kernel: &std::path::Path, initrd: &std::path::Path, cpus: u32) {
    // Long enough for the slowest (software-emulated) KVM to boot 128 MiB.
    let timeout = 60;
    let started = Instant::now();
    let (code, stderr) = common::run(
        common::rootlayer()
            .args(["boot", "--quiet", "--mem-size", "128", "--cmdline", "ROOTLAYER_SELFTEST=hang"])
            .args(["--cpus", &cpus.to_string(), "--timeout", &timeout.to_string(), "--kernel"])
            .arg(kernel)
            .arg("--initrd")
            .arg(initrd),
    );
    let elapsed = started.elapsed();
    assert_eq!(code, 124, "timeout exit code");
    assert!(stderr.contains(&format!("timeout: the job did not finish within {timeout}s")), "{stderr}");
    assert!(stderr.contains("last guest console lines:"));
    assert!(
        stderr.lines().any(|l| l.starts_with("  | ") && l.ends_with("selftest hang: sleeping forever")),
        "the guest's last line is in the report: {stderr}"
    );
    // Stopping is prompt: every vCPU is kicked out of KVM_RUN at once.
    assert!(elapsed >= Duration::from_secs(timeout), "stopped early: {elapsed:?}");
    assert!(elapsed < Duration::from_secs(timeout + 10), "stopping took too long: {elapsed:?}");
}
