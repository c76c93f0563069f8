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
    /// The two-layer busybox base (runas::make_base_image).
    pub two_layer: PathBuf,
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
    let (base, two_layer) = base_image(work.path());
    let nonce = format!(
        "{}-{}",
        std::process::id(),
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos()
    );
    Some(Nix { prefix, work, busybox, base, two_layer, nonce })
}

/// The busybox base of the run-as-root tests plus a third layer with a
/// whiteout (`etc/motd`); its second layer makes `keep/` opaque. Also
/// returns the two-layer image.
fn base_image(root: &Path) -> (PathBuf, PathBuf) {
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
    (archive, two)
}

/// Host binaries as a directory test.nix's `wrapped` makes a package of
/// (nixpkgs' shadow and nix stand-ins): `libexec/NAME` for each of
/// `bins` (NAME, host path), and every library they load, with the
/// dynamic loader, in `lib/`.
pub fn host_binaries(dir: &Path, bins: &[(&str, &str)]) -> PathBuf {
    let lib = dir.join("lib");
    std::fs::create_dir_all(dir.join("libexec")).unwrap();
    std::fs::create_dir_all(&lib).unwrap();
    for (name, path) in bins {
        std::fs::copy(path, dir.join("libexec").join(name)).unwrap();
        let ldd = Command::new("ldd").arg(path).output().unwrap();
        assert!(ldd.status.success(), "ldd {path}");
        for line in String::from_utf8_lossy(&ldd.stdout).lines() {
            // "libx.so.1 => /lib/.../libx.so.1 (0x...)" or "/lib64/ld-linux-x86-64.so.2 (0x...)"
            let Some(file) = line.split_whitespace().find(|w| w.starts_with('/')) else { continue };
            let name = if file.contains("ld-linux") {
                "ld-linux-x86-64.so.2".to_string()
            } else {
                line.split_whitespace().next().unwrap().to_string()
            };
            if !lib.join(&name).exists() {
                std::fs::copy(file, lib.join(&name)).unwrap();
            }
        }
    }
    dir.to_path_buf()
}

/// The store paths an image's rootfs holds (names under nix/store).
pub fn store_names(rootfs: &Path) -> Vec<String> {
    let mut names: Vec<String> = match std::fs::read_dir(rootfs.join("nix/store")) {
        Ok(d) => d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect(),
        Err(_) => Vec::new(),
    };
    names.sort();
    names
}

/// A docker-archive from nix-build (`.tar`, `.tar.gz` or `.tar.zst`)
/// unpacked by umoci (through skopeo's OCI copy): the rootfs, and the
/// plain archive skopeo reads.
pub fn unpack_image(work: &Path, out: &str, tag: &str) -> (PathBuf, PathBuf) {
    let plain = work.join(format!("{tag}.tar"));
    let cat = if out.ends_with(".gz") {
        "gzip -dc"
    } else if out.ends_with(".zst") {
        "zstd -dc"
    } else {
        "cat"
    };
    let st = Command::new("sh").arg("-c").arg(format!("{cat} '{out}' > '{}'", plain.display())).status().unwrap();
    assert!(st.success(), "{cat} {out}");
    let layout = work.join(format!("{tag}.oci"));
    super::image::skopeo(&[
        "copy",
        &format!("docker-archive:{}", plain.display()),
        &format!("oci:{}:t", layout.display()),
    ]);
    let rootfs = super::image::umoci_unpack(&layout, "t", &work.join(format!("{tag}.bundle")));
    (rootfs, plain)
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
