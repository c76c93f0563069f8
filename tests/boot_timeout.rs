//! e2e: a guest that does not finish before --timeout is stopped; the exit
//! code says timeout and the last console lines are printed.

mod common;

#[test]
fn timeout_stops_the_guest_and_prints_its_last_lines() {
    let Some(g) = common::guest("timeout_stops_the_guest_and_prints_its_last_lines") else {
        return;
    };
    let started = std::time::Instant::now();
    let (code, stderr) = common::run(
        common::rootlayer()
            .args([
                "boot",
                "--quiet",
                "--timeout",
                "4",
                "--mem-size",
                "128",
                "--kernel",
            ])
            .arg(&g.kernel)
            .arg("--initrd")
            .arg(&g.initrd),
    );
    assert_eq!(code, 124, "timeout exit code");
    assert!(
        stderr.contains("did not finish within 4s (before the agent's ready line)"),
        "{stderr}"
    );
    assert!(stderr.contains("last guest console lines:"));
    // The guest printed its first kernel lines well within 4 s; they must be
    // in the report.
    assert!(
        stderr
            .lines()
            .any(|l| l.starts_with("  | [") && l.contains("Linux version")),
        "{stderr}"
    );
    // Stopping is prompt: not a hang until some other limit.
    assert!(started.elapsed().as_secs() < 60);
}
