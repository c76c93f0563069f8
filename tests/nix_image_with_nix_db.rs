//! nix/'s buildImageWithNixDb: the layer carries a Nix database that
//! registers copyToRoot's closure (loaded by `nix-store --load-db` from
//! closureInfo's registration, as dockerTools does), a gcroot for it, and
//! the store paths themselves; `nix-store --verify --check-contents` on
//! the unpacked image passes; with sqlite given (registration times reset
//! to SOURCE_DATE_EPOCH, as dockerTools does) `nix-build --check` rebuilds
//! it bit for bit.

mod common;

use std::process::Command;

#[test]
fn build_image_with_nix_db_verifies_in_the_unpacked_image() {
    let Some(nix) = common::nix::setup("nix_image_with_nix_db") else { return };
    let nixpkg = common::nix::host_binaries(&nix.work.path().join("nix"), &[("nix", "/usr/bin/nix")]);
    std::os::unix::fs::symlink("nix", nixpkg.join("libexec/nix-store")).unwrap();
    let sqlite = common::nix::host_binaries(&nix.work.path().join("sqlite"), &[("sqlite3", "/usr/bin/sqlite3")]);
    let args = ["--arg", "nixDir", nixpkg.to_str().unwrap(), "--arg", "sqliteDir", sqlite.to_str().unwrap()];
    let b = nix.build("withNixDb", &args);
    assert_eq!(b.code, 0, "nix-build failed");
    let (rootfs, _) = common::nix::unpack_image(nix.work.path(), &b.out, "db");
    assert!(rootfs.join("nix/var/nix/db/db.sqlite").is_file());
    let roots: Vec<_> =
        std::fs::read_dir(rootfs.join("nix/var/nix/gcroots/docker")).unwrap().map(|e| e.unwrap().path()).collect();
    assert_eq!(roots.len(), 1, "{roots:?}");
    let root = std::fs::read_link(&roots[0]).unwrap();
    assert!(root.to_string_lossy().ends_with(&format!("-test-root-{}", nix.nonce)), "{root:?}");

    let store = format!("local?root={}", rootfs.display());
    let verify = Command::new("nix-store").args(["--store", &store, "--verify", "--check-contents"]).output().unwrap();
    let log = String::from_utf8_lossy(&verify.stderr);
    assert!(verify.status.success() && !log.contains("error") && !log.contains("modified"), "{log}");
    // The database holds the closure: test-root and the test-data it links.
    let req = common::image::run(Command::new("nix-store").args(["--store", &store, "-q", "--requisites"]).arg(&root));
    let mut names: Vec<&str> = req.lines().map(|l| l.rsplit_once(&nix.nonce).map_or(l, |(a, _)| a)).collect();
    names.sort();
    assert_eq!(names.len(), 2, "{req}");
    assert!(
        names.iter().any(|n| n.ends_with("-test-data-")) && names.iter().any(|n| n.ends_with("-test-root-")),
        "{req}"
    );
    for p in req.lines() {
        assert!(rootfs.join(p.trim_start_matches('/')).exists(), "{p} is registered but not in the image");
    }
    let times = common::image::run(
        Command::new("sqlite3")
            .arg(rootfs.join("nix/var/nix/db/db.sqlite"))
            .arg("SELECT DISTINCT registrationTime FROM ValidPaths"),
    );
    assert_eq!(times.trim(), "315532800");

    let again = nix.build("withNixDb", &[&args[..], &["--check"]].concat());
    assert_eq!(again.code, 0, "nix-build --check found a difference");
    nix.delete(&[&b.out]);
}
