//! The `avx` self-test's report (guest/src/test_tasks/selftest.rs), as the
//! tests that boot it read it.

#![allow(dead_code)]

/// The raw probes' lines among `lines` (YMM, ZMM, YMM across signal
/// handlers), each checked to have lost nothing: corrupted in 0 rounds,
/// or the instructions fault, or not probed. `what` names the run in a
/// failure.
pub fn raw_probes<'a>(lines: &[&'a str], what: &str) -> Vec<&'a str> {
    let raw: Vec<&str> = lines.iter().copied().filter(|l| l.contains("selftest avx: raw ")).collect();
    assert_eq!(raw.len(), 3, "{what}: every raw probe reports (YMM, ZMM, YMM across signal handlers): {lines:#?}");
    for l in &raw {
        assert!(
            l.contains("corrupted in 0 of") || l.contains("(SIGILL): no hazard") || l.contains("not probed"),
            "{what}: vector state lost between guest processes: {l}"
        );
    }
    raw
}

/// A probe line of two vCPUs: eight processes, moved between them.
pub fn assert_moved_between_two_vcpus(probe: &str, what: &str) {
    assert!(probe.contains("(8 processes on 2 vCPUs, moved between vCPUs "), "{what}: {probe}");
    assert!(!probe.contains("moved between vCPUs 0 times"), "{what}: {probe}");
}
