//! e2e: the AVX hazard of software-emulated KVM, measured in the guest by
//! two processes (guest/src/selftest.rs). Guest user code must see
//! OSXSAVE=0 (so glibc and other CPUID-respecting code stay off AVX), and
//! two processes running glibc's string functions under the agent's
//! environment must not corrupt each other. The raw YMM corruption figure
//! is printed for the record.

mod common;

#[test]
fn guest_processes_do_not_corrupt_each_others_vector_state() {
    let Some(g) = common::guest("guest_processes_do_not_corrupt_each_others_vector_state") else {
        return;
    };
    let (code, stderr) = common::run(
        common::rootlayer()
            .args(["boot", "--timeout", "300", "--mem-size", "128", "--cmdline", "ROOTLAYER_SELFTEST=avx", "--kernel"])
            .arg(&g.kernel)
            .arg("--initrd")
            .arg(&g.initrd),
    );
    assert_eq!(code, 0, "self-test boot failed");
    let lines: Vec<&str> = stderr.lines().filter(|l| l.contains("selftest avx:")).collect();
    let cpuid = lines.iter().find(|l| l.contains("user CPUID")).expect("CPUID line");
    assert!(cpuid.contains("osxsave=0"), "guest user code must not be told AVX state is enabled: {cpuid}");
    assert!(
        lines.iter().any(|l| l.contains("raw YMM upper halves corrupted in") || l.contains("fault in guest user mode")),
        "raw probe result missing: {lines:?}"
    );
    assert!(
        lines.iter().any(|l| l.ends_with("glibc string functions with GLIBC_TUNABLES: 0 mismatches")),
        "glibc workload corrupted: {lines:?}"
    );
}
