//! The nix_* e2e tests: build nix/default.nix's derivations with a real,
//! sandboxed `nix-build` (Debian's nix-bin, run as root with the nixbld
//! build users, substituters off, sandbox on, only /dev/kvm added), from
//! the directory `scripts/install` made (ROOTLAYER_NIX_PREFIX, set by
//! scripts/test).

#![allow(dead_code)]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

/// What a nix test builds with.
#[derive(Debug)]
pub struct Nix {
    pub prefix: PathBuf,
    pub work: tempfile::TempDir,
    pub busybox: PathBuf,
    pub base: PathBuf,
    pub nonce: String,
}

/// A finished `nix-build`: its exit code, the output path (stdout) and
/// the build log (stderr).
#[derive(Debug)]
pub struct Build {
    pub code: i32,
    pub out: String,
    pub log: String,
}

/// The nix test setup, or None (after saying why) where a sandboxed
/// nix-build cannot run: not root, no nix-build, no /dev/kvm. With
/// ROOTLAYER_REQUIRE_VM set and running as root (CI), a missing part is a
/// failure.
pub fn setup(test: &str) -> Option<Nix> {
    let required = std::env::var_os("ROOTLAYER_REQUIRE_VM").is_some();
    let skip = |why: String| -> Option<Nix> {
        eprintln!("SKIP {test}: {why}");
        None
    };
    super::guest(test)?;
    if !super::image::is_root() {
        return skip("a sandboxed nix-build without a daemon needs root (scripts/test as root runs it)".into());
    }
    let fail_or_skip = |why: String| {
        if required {
            panic!("{test}: {why}");
        }
        skip(why)
    };
    if Command::new("nix-build").arg("--version").output().map(|o| !o.status.success()).unwrap_or(true) {
        return fail_or_skip("nix-build not found (scripts/install-test-deps installs nix-bin)".into());
    }
    let Some(prefix) = std::env::var_os("ROOTLAYER_NIX_PREFIX").map(PathBuf::from) else {
        return fail_or_skip(
            "ROOTLAYER_NIX_PREFIX is not set (scripts/test sets it to a scripts/install PREFIX)".into(),
        );
    };
    let work = tempfile::tempdir().unwrap();
    let busybox = work.path().join("busybox");
    std::fs::create_dir_all(busybox.join("bin")).unwrap();
    std::fs::copy(super::runas::BUSYBOX, busybox.join("bin/busybox")).unwrap();
    let list = Command::new(super::runas::BUSYBOX).arg("--list").output().unwrap();
    for applet in String::from_utf8_lossy(&list.stdout).lines().filter(|a| *a != "busybox") {
        std::os::unix::fs::symlink("busybox", busybox.join("bin").join(applet)).unwrap();
    }
    let base = base_image(work.path());
    let nonce = format!(
        "{}-{}",
        std::process::id(),
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos()
    );
    Some(Nix { prefix, work, busybox, base, nonce })
}

/// The busybox base of the run-as-root tests plus a third layer with a
/// whiteout (`etc/motd`); its second layer makes `keep/` opaque.
fn base_image(root: &Path) -> PathBuf {
    let two = super::runas::make_base_image(root);
    let t3 = root.join("l3.tar");
    let l3 = root.join("l3");
    std::fs::create_dir_all(l3.join("etc")).unwrap();
    std::fs::write(l3.join("etc/.wh.motd"), "").unwrap();
    std::fs::write(l3.join("etc/layer-3"), "layer three\n").unwrap();
    super::runas::layer_of_dir(&l3, &t3);
    // make_base_image leaves its layer tars beside the archive.
    assert!(two.exists());
    let layers: Vec<Vec<u8>> =
        ["l1.tar", "l2.tar", "l3.tar"].iter().map(|l| std::fs::read(root.join(l)).unwrap()).collect();
    let archive = root.join("base3.tar");
    super::image::docker_archive(&archive, &[(&["base:latest"], &layers)], false);
    archive
}

impl Nix {
    /// `nix-build tests/nix/test.nix -A attr`, sandboxed, with `extra` flags.
    pub fn build(&self, attr: &str, extra: &[&str]) -> Build {
        let expr = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/nix/test.nix");
        let mut cmd = Command::new("nix-build");
        cmd.arg(&expr).args(["-A", attr, "--no-out-link"]);
        cmd.args(["--option", "sandbox", "true"]);
        cmd.args(["--option", "substituters", ""]);
        cmd.args(["--option", "build-users-group", "nixbld"]);
        cmd.args(["--option", "system-features", "kvm"]);
        cmd.args(["--option", "extra-sandbox-paths", "/dev/kvm"]);
        cmd.arg("--arg").arg("prefix").arg(&self.prefix);
        cmd.arg("--arg").arg("busybox").arg(&self.busybox);
        cmd.arg("--arg").arg("fromImage").arg(&self.base);
        cmd.args(["--argstr", "nonce", &self.nonce]);
        cmd.args(extra);
        let out = cmd.output().expect("running nix-build");
        let log = String::from_utf8_lossy(&out.stderr).into_owned();
        eprintln!("--- nix-build -A {attr} {extra:?} ---\n{log}--- end ---");
        Build {
            code: out.status.code().unwrap_or(-1),
            out: String::from_utf8_lossy(&out.stdout).trim().to_string(),
            log,
        }
    }

    /// Remove what this test put in the store (its outputs; inputs shared
    /// with other runs stay for the next garbage collection).
    pub fn delete(&self, paths: &[&str]) {
        for p in paths.iter().filter(|p| !p.is_empty()) {
            let _ = Command::new("nix-store").args(["--delete", p]).output();
        }
    }
}

/// The host uid the sandbox's build user maps to, from the builder's log
/// line (`rootlayer-nix: building NAME as uid N (host uid M)`).
pub fn build_host_uid(log: &str) -> (u32, u32) {
    let line = log.lines().find(|l| l.contains("rootlayer-nix: building")).expect("the builder's identity line");
    let num = |after: &str| -> u32 {
        let rest = &line[line.find(after).unwrap() + after.len()..];
        rest.split(|c: char| !c.is_ascii_digit()).next().unwrap().parse().unwrap()
    };
    (num(" as uid "), num("(host uid "))
}

/// The uids of the members of the nixbld group.
pub fn nixbld_uids() -> Vec<u32> {
    let group = std::fs::read_to_string("/etc/group").unwrap();
    let members: Vec<String> = group
        .lines()
        .find(|l| l.starts_with("nixbld:"))
        .map(|l| l.rsplit(':').next().unwrap().split(',').map(str::to_string).collect())
        .unwrap_or_default();
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap();
    passwd
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            members.iter().any(|m| m == f[0]).then(|| f[2].parse().unwrap())
        })
        .collect()
}

/// Mode bits of `p` (not following a symlink).
pub fn mode(p: &Path) -> u32 {
    std::fs::symlink_metadata(p).unwrap().permissions().mode()
}
