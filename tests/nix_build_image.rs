//! A real sandboxed `nix-build` of nix/default.nix's buildImage: fromImage
//! (a docker-archive with a whiteout and an opaque dir), copyToRoot with a
//! symlinked directory, a runAsRoot that adds a user and group, chowns a
//! directory, makes a setuid file and deletes a base file, and
//! extraCommands (whose /store-listing names every store path the build
//! saw, so the layer holds every candidate). The result is checked with skopeo and as `umoci unpack`
//! shows it; the build ran as a nixbld user and saw only its inputs (and
//! of the host's devices only /dev/kvm beyond the usual ones); and
//! `nix-build --check` rebuilds it bit for bit.

mod common;

use std::os::unix::fs::MetadataExt;
use std::process::Command;

#[test]
fn nix_build_image_is_a_drop_in_for_docker_tools() {
    let Some(nix) = common::nix::setup("nix_build_image") else { return };
    let b = nix.build("image", &[]);
    assert_eq!(b.code, 0, "nix-build failed");
    let out = b.out.clone();
    assert!(out.starts_with("/nix/store/") && out.ends_with(".tar.gz"), "{out}");

    // Built by a nixbld user, in a user namespace, never root.
    let (inside, host) = common::nix::build_host_uid(&b.log);
    assert_ne!(host, 0, "the build ran as root");
    assert!(common::nix::nixbld_uids().contains(&host), "host uid {host} is not a nixbld user");
    eprintln!("built as uid {inside} in the sandbox, host uid {host}");

    // The image as skopeo sees it: three base layers and ours, the name and
    // tag lowercased, the config merged into the base's. (docker load and
    // podman load take the .tar.gz; Debian 12's skopeo wants it unpacked.)
    let plain = nix.work.path().join("image.tar");
    let st = Command::new("sh").arg("-c").arg(format!("gzip -dc '{out}' > '{}'", plain.display())).status().unwrap();
    assert!(st.success(), "not gzip");
    let archive = format!("docker-archive:{}", plain.display());
    let inspect = common::image::skopeo(&["inspect", &archive]);
    let v: serde_json::Value = serde_json::from_str(&inspect).unwrap();
    assert_eq!(v["Layers"].as_array().unwrap().len(), 4, "{inspect}");
    assert_eq!(v["Architecture"], "amd64");
    assert_eq!(v["Os"], "linux");
    let env: Vec<&str> = v["Env"].as_array().unwrap().iter().map(|e| e.as_str().unwrap()).collect();
    assert!(env.contains(&"APP=1"), "{env:?}");
    let tags =
        String::from_utf8(Command::new("tar").args(["-xzOf", &out, "manifest.json"]).output().unwrap().stdout).unwrap();
    assert!(tags.contains(&format!("rootlayer-test-{}:v1", nix.nonce)), "{tags}");
    let cfg = common::image::skopeo(&["inspect", "--config", &archive]);
    let cfg: serde_json::Value = serde_json::from_str(&cfg).unwrap();
    assert_eq!(cfg["config"]["User"], "app");
    assert_eq!(cfg["config"]["Cmd"][0], "/bin/sh");
    assert_eq!(cfg["created"], "1970-01-01T00:00:01Z");

    // The tree as umoci unpacks it.
    let layout = nix.work.path().join("oci");
    common::image::skopeo(&["copy", &archive, &format!("oci:{}:t", layout.display())]);
    let rootfs = common::image::umoci_unpack(&layout, "t", &nix.work.path().join("bundle"));
    let read = |p: &str| std::fs::read_to_string(rootfs.join(p)).unwrap_or_else(|e| panic!("{p}: {e}"));
    assert!(read("etc/passwd").contains("app:x:2000:2000::/home/app:/bin/sh"), "{}", read("etc/passwd"));
    assert!(read("etc/group").lines().any(|l| l.starts_with("app:x:2000:")), "{}", read("etc/group"));
    let owned = std::fs::metadata(rootfs.join("data/owned")).unwrap();
    assert_eq!((owned.uid(), owned.gid()), (2000, 2000));
    assert_eq!(common::nix::mode(&rootfs.join("usr/local/bin/suid-tool")) & 0o7777, 0o4755);
    assert!(!rootfs.join("old/file").exists(), "the deleted base file is back");
    assert_eq!(read("old/stays"), "kept\n");
    assert!(!rootfs.join("etc/motd").exists(), "the base's whiteout did not hold");
    assert!(!rootfs.join("keep/opaque-base").exists(), "the base's opaque dir did not hold");
    assert_eq!(read("keep/from-layer-2"), "visible\n");
    assert_eq!(read("extra-file"), "made by extraCommands\n");
    assert_eq!(read("etc/app.conf"), "app config\n");
    // copyToRoot's symlink to a store directory became a directory (no
    // keepContentsDirlinks), and the store paths it references are in the
    // layer, owned by root.
    let share = std::fs::symlink_metadata(rootfs.join("share")).unwrap();
    assert!(share.is_dir(), "share is not a directory");
    assert_eq!(read("share/doc/readme"), "from a linked store dir\n");
    let store: Vec<String> = std::fs::read_dir(rootfs.join("nix/store"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    // The layer holds the closure of the store paths its files name, and
    // /store-listing names every input of the build: so every candidate
    // (copyToRoot's closure, the scripts', the config's) is there, the
    // script too, as in dockerTools' layer; the build's other inputs
    // (rootlayer, the base image) are no candidates and are not.
    assert!(store.iter().any(|s| s.ends_with(&format!("-test-data-{}", nix.nonce))), "{store:?}");
    assert!(store.iter().any(|s| s.ends_with("-busybox")), "the script's references are missing: {store:?}");
    assert!(store.iter().any(|s| s.ends_with("-run-as-root.sh")), "the script the layer names is missing: {store:?}");
    assert!(!store.iter().any(|s| s.ends_with("-rootlayer") || s.ends_with("-base-image.tar")), "{store:?}");
    for s in &store {
        let m = std::fs::symlink_metadata(rootfs.join("nix/store").join(s)).unwrap();
        assert_eq!((m.uid(), m.gid()), (0, 0), "{s}");
    }

    // The sandbox's store, as the script saw it: the build's inputs only.
    let drv =
        String::from_utf8(Command::new("nix-store").args(["-q", "--deriver", &out]).output().unwrap().stdout).unwrap();
    let inputs = String::from_utf8(
        Command::new("nix-store")
            .args(["-q", "--requisites", "--include-outputs", drv.trim()])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    let seen = read("store-listing");
    assert!(!seen.trim().is_empty());
    for name in seen.lines() {
        let full = format!("/nix/store/{name}");
        assert!(
            inputs.lines().any(|l| l == full) || full == out || name.starts_with('.'),
            "the build saw {full}, not one of its inputs"
        );
    }
    assert!(!seen.lines().any(|l| l.ends_with("-failing-") || l.contains("-docker-layer-")), "{seen}");

    // The sandbox these settings make: the usual devices and /dev/kvm, no more.
    let devs = nix.build("sandboxDevices", &[]);
    assert_eq!(devs.code, 0);
    let seen = std::fs::read_to_string(&devs.out).unwrap();
    let usual = [
        "fd", "full", "kvm", "null", "ptmx", "pts", "random", "shm", "stderr", "stdin", "stdout", "tty", "urandom",
        "zero",
    ];
    assert!(seen.lines().any(|d| d == "kvm"), "no /dev/kvm in the sandbox: {seen}");
    assert!(seen.lines().all(|d| usual.contains(&d)), "the sandbox sees more of /dev: {seen}");
    nix.delete(&[&devs.out]);

    // Nix's own reproducibility check: the rebuild must give the same bytes.
    let again = nix.build("image", &["--check"]);
    assert_eq!(again.code, 0, "nix-build --check found a difference");
    nix.delete(&[&out]);
}
