//! e2e: guest processes never corrupt each other's vector state, whatever
//! the host (guest/src/selftest.rs, guest/src/vector_guard.rs).
//!
//! 1. The `avx` self-test: two processes holding YMM values (and ZMM,
//!    ZMM16-31 and opmask values where user CPUID shows AVX-512) across
//!    preemptions find them intact, and so does one whose YMM0 is used by
//!    hundreds of signal handlers meanwhile, or the instructions fault; two processes
//!    running glibc's string functions as glibc picks them on this host (no
//!    tunables) see no mismatch. The test prints which case the guest saw.
//! 2. Fail closed: where the VMM keeps the extended state (emulated KVM),
//!    booting with that switched off (`rootlayer_xstate.port=0`) makes the
//!    agent refuse to go on: exit 70 and the refusal, never a finished run.
//! 3. On two vCPUs, eight probe processes moved between the vCPUs while
//!    they hold their values lose nothing either.

mod common;

fn boot(g: &common::Guest, cmdline: &str) -> (i32, String) {
    boot_on(g, cmdline, 1)
}

fn boot_on(g: &common::Guest, cmdline: &str, cpus: u32) -> (i32, String) {
    let cpus = cpus.to_string();
    common::run(
        common::rootlayer()
            .args(["boot", "--timeout", "300", "--mem-size", "128", "--cpus", &cpus, "--cmdline", cmdline, "--kernel"])
            .arg(if cpus == "1" { &g.kernel } else { &g.kernel_smp })
            .arg("--initrd")
            .arg(&g.initrd),
    )
}

#[test]
fn guest_processes_do_not_corrupt_each_others_vector_state() {
    let Some(g) = common::test_guest("guest_processes_do_not_corrupt_each_others_vector_state") else {
        return;
    };
    let (code, stderr) = boot(&g, "ROOTLAYER_SELFTEST=avx");
    let lines: Vec<&str> = stderr.lines().filter(|l| l.contains("selftest avx:")).collect();
    let case = lines.iter().find(|l| l.contains("case: vector state:")).expect("case line");
    let cpuid = lines.iter().find(|l| l.contains("user CPUID")).expect("CPUID line");
    eprintln!("guest_avx: {cpuid}\nguest_avx: {case}");
    assert_eq!(code, 0, "self-test boot failed: {lines:#?}");
    let raw = common::avx::raw_probes(&lines, "one vCPU");
    let ymm = raw[0];
    assert!(ymm.contains("YMM") && !ymm.contains("not probed"), "the YMM probe always runs: {ymm}");
    assert!(ymm.contains("(2 processes on 1 vCPUs") || ymm.contains("no hazard"), "{ymm}");
    assert!(
        lines.iter().any(|l| l.ends_with("glibc string functions: 0 mismatches")),
        "glibc workload corrupted: {lines:#?}"
    );

    if !case.contains("kept by the VMM") {
        eprintln!("guest_avx: the VMM keeps no extended state on this host; nothing to switch off");
        return;
    }
    let (code, stderr) = boot(&g, "rootlayer_xstate.port=0");
    let refusal = stderr.lines().find(|l| l.contains("refusing to run")).map(str::to_owned);
    eprintln!("guest_avx: with the VMM's keeping off: exit {code}, {refusal:?}");
    assert_eq!(code, 70, "the agent must refuse where extended state is unsaved:\n{stderr}");
    let refusal = refusal.expect("the agent's refusal on the console");
    assert!(refusal.contains("neither the guest kernel nor the VMM saves"), "{refusal}");
    assert!(!stderr.contains("guest exited cleanly"), "{stderr}");
}

/// 3. The same on two vCPUs: eight probe processes, which the self-test
///    moves from vCPU to vCPU while they hold their values (a task leaving
///    one vCPU goes on with its registers on the other); none loses any.
#[test]
fn guest_processes_moved_between_two_vcpus_keep_their_vector_state() {
    let Some(g) = common::test_guest("guest_processes_moved_between_two_vcpus_keep_their_vector_state") else {
        return;
    };
    let (code, stderr) = boot_on(&g, "ROOTLAYER_SELFTEST=avx", 2);
    let lines: Vec<&str> = stderr.lines().filter(|l| l.contains("selftest avx:")).collect();
    assert_eq!(code, 0, "self-test boot failed: {lines:#?}\n{stderr}");
    let ymm = common::avx::raw_probes(&lines, "two vCPUs")[0];
    eprintln!("guest_avx: {ymm}");
    if !ymm.contains("no hazard") {
        common::avx::assert_moved_between_two_vcpus(ymm, "two vCPUs");
    }
    assert!(lines.iter().any(|l| l.ends_with("glibc string functions: 0 mismatches")), "{lines:#?}");
}
