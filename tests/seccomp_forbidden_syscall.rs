//! e2e: a system call that is not on a thread's seccomp allow-list stops the
//! process with a message naming the thread and the call, and the
//! internal-error exit code; with --no-seccomp the same run completes. The
//! forbidden call is real: ROOTLAYER_SECCOMP_PROBE makes the named thread
//! call socket(2) where it handles the guest's first exit or request, after
//! its filter is in place.

mod common;

use rootlayer::exit::Exit;
use std::process::Command;

const PROBE: &str = "ROOTLAYER_SECCOMP_PROBE";

fn boot(g: &common::Guest) -> Command {
    let mut cmd = common::rootlayer();
    cmd.args(["boot", "--quiet", "--timeout", "300", "--mem-size", "256", "--kernel"])
        .arg(&g.kernel)
        .arg("--initrd")
        .arg(&g.initrd)
        .env(PROBE, "vcpu");
    cmd
}

/// A job with a scratch disk and two shares (the devices' own benchmark,
/// small): every device thread serves requests.
fn device_job(g: &common::Guest, store: &std::path::Path, probe: &str) -> Command {
    std::fs::write(store.join("data"), vec![7u8; 4096]).unwrap();
    let mut cmd = common::rootlayer();
    cmd.args(["bench-io", "--quiet", "--timeout", "300", "--mem-size", "256", "--disk-size", "64"])
        .args(["--write-mib", "1", "--kernel"])
        .arg(&g.kernel)
        .arg("--initrd")
        .arg(&g.initrd)
        .arg("--store")
        .arg(store)
        .arg("--read-file")
        .arg(store.join("data"))
        .env(PROBE, probe);
    cmd
}

fn assert_stopped(code: i32, stderr: &str, thread: &str) {
    assert_eq!(code, i32::from(Exit::Internal.code()), "internal-error exit code");
    let line =
        format!("rootlayer: seccomp: thread {thread} made forbidden syscall {} (socket); stopping", libc::SYS_socket);
    assert!(stderr.contains(&line), "stderr names the thread and the call: {line}");
    assert!(!stderr.contains("seccomp probe:"), "the call did not run");
}

#[test]
fn a_forbidden_call_on_the_vcpu_thread_stops_the_process() {
    let Some(g) = common::test_guest("a_forbidden_call_on_the_vcpu_thread_stops_the_process") else {
        return;
    };
    let (code, stderr) = common::run(&mut boot(&g));
    assert_stopped(code, &stderr, "vcpu0");
}

#[test]
fn without_seccomp_the_vcpu_probe_runs_and_the_boot_completes() {
    let Some(g) = common::test_guest("without_seccomp_the_vcpu_probe_runs_and_the_boot_completes") else {
        return;
    };
    let (code, stderr) = common::run(boot(&g).arg("--no-seccomp"));
    assert!(stderr.contains("rootlayer: seccomp probe: the vcpu thread made syscall socket: returned"));
    assert_eq!(code, 0, "boot completes");
}

#[test]
fn a_forbidden_call_on_a_device_thread_stops_the_process() {
    let Some(g) = common::test_guest("a_forbidden_call_on_a_device_thread_stops_the_process") else {
        return;
    };
    let store = tempfile::tempdir().unwrap();
    let (code, stderr) = common::run(&mut device_job(&g, store.path(), "virtio-blk"));
    assert_stopped(code, &stderr, "virtio-blk");
}

#[test]
fn without_seccomp_the_device_probe_runs_and_the_job_completes() {
    let Some(g) = common::test_guest("without_seccomp_the_device_probe_runs_and_the_job_completes") else {
        return;
    };
    let store = tempfile::tempdir().unwrap();
    let (code, stderr) = common::run(device_job(&g, store.path(), "virtio-blk").arg("--no-seccomp"));
    assert!(stderr.contains("rootlayer: seccomp probe: the virtio-blk thread made syscall socket: returned"));
    assert_eq!(code, 0, "job completes");
}
