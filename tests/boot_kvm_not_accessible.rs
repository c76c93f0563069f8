//! e2e: a user who cannot open /dev/kvm gets exit code 3 and one line that
//! says what to do, not a panic. Runs the binary as `nobody` with setpriv
//! (needs root to switch users; skips otherwise).

mod common;

use std::os::unix::fs::MetadataExt;
use std::process::Command;

#[test]
fn kvm_not_accessible_names_what_to_do() {
    let test = "kvm_not_accessible_names_what_to_do";
    let Ok(meta) = std::fs::metadata("/dev/kvm") else {
        eprintln!("SKIP {test}: /dev/kvm does not exist");
        return;
    };
    // SAFETY: getuid has no preconditions.
    if unsafe { libc::getuid() } != 0 {
        eprintln!("SKIP {test}: switching to another user needs root");
        return;
    }
    if meta.mode() & 0o006 != 0 {
        eprintln!("SKIP {test}: /dev/kvm is open to everyone here");
        return;
    }
    // The binary must be reachable by nobody; copy it out of a possibly
    // private target directory.
    let dir = tempfile::tempdir().unwrap();
    let bin = dir.path().join("rootlayer");
    std::fs::copy(env!("CARGO_BIN_EXE_rootlayer"), &bin).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let kernel = dir.path().join("vmlinux");
    std::fs::write(&kernel, b"\x7fELF").unwrap();
    let (code, stderr) = common::run(
        Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
            .arg(&bin)
            .args(["boot", "--kernel"])
            .arg(&kernel)
            .arg("--initrd")
            .arg(&kernel)
            // A cache of nobody's own (none yet): the test user's is not.
            .env("ROOTLAYER_CACHE", dir.path().join("cache")),
    );
    assert_eq!(code, 3, "KVM unavailable exit code");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "one line: {stderr}");
    assert!(lines[0].contains("/dev/kvm is not accessible to this user"), "{stderr}");
    assert!(lines[0].contains("join") || lines[0].contains("group"), "says what to do: {stderr}");
}
