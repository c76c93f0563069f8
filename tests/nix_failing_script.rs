//! A failing runAsRoot fails the Nix build, with the script's output and
//! exit code in the build log.

mod common;

#[test]
fn a_failing_run_as_root_fails_the_nix_build() {
    let Some(nix) = common::nix::setup("nix_failing_script") else { return };
    let b = nix.build("failing", &[]);
    assert_ne!(b.code, 0, "the build succeeded");
    assert!(b.out.is_empty(), "an output was made: {}", b.out);
    assert!(b.log.contains("about to fail on purpose"), "the script's output is not in the log");
    assert!(b.log.contains("exit status 3"), "the script's exit code is not in the log");
}
