use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use super::*;
use crate::layer::test_util::{require_root, tar_of, xattrs_of, E};

fn unpack_to(entries: &[E], dir: &Path, opts: &UnpackOptions) -> Result<(), LayerError> {
    unpack(&tar_of(entries)[..], dir, opts)
}

/// Options for tests that must also run unprivileged.
fn no_owners() -> UnpackOptions {
    UnpackOptions { preserve_owners: false }
}

fn opaque(p: &Path) -> Option<Vec<u8>> {
    xattrs_of(p).into_iter().find(|(k, _)| k == "trusted.overlay.opaque").map(|(_, v)| v)
}

fn is_whiteout(p: &Path) -> bool {
    fs::symlink_metadata(p).map(|m| m.file_type().is_char_device() && m.rdev() == 0).unwrap_or(false)
}

#[test]
fn wh_file_becomes_0_0_char_device_and_is_hidden_itself() {
    if !require_root("wh_file_becomes_0_0_char_device_and_is_hidden_itself") {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    unpack_to(&[E::dir("etc/"), E::file("etc/.wh.my-app-config", b"")], t.path(), &UnpackOptions::default()).unwrap();
    assert!(is_whiteout(&t.path().join("etc/my-app-config")));
    assert!(!t.path().join("etc/.wh.my-app-config").exists());
}

#[test]
fn opaque_marker_sets_trusted_overlay_opaque_whatever_the_order() {
    if !require_root("opaque_marker_sets_trusted_overlay_opaque_whatever_the_order") {
        return;
    }
    // layer.md: "a/.wh..wh..opq is applied first ... regardless of the ordering".
    for order in [
        vec![E::dir("a/"), E::file("a/.wh..wh..opq", b""), E::dir("a/b/"), E::dir("a/b/c/"), E::file("a/b/c/foo", b"")],
        vec![E::dir("a/"), E::dir("a/b/"), E::dir("a/b/c/"), E::file("a/b/c/foo", b""), E::file("a/.wh..wh..opq", b"")],
        vec![E::file("a/.wh..wh..opq", b""), E::dir("a/").mode(0o700)],
    ] {
        let t = tempfile::tempdir().unwrap();
        unpack_to(&order, t.path(), &UnpackOptions::default()).unwrap();
        assert_eq!(opaque(&t.path().join("a")).as_deref(), Some(&b"y"[..]));
        assert!(!t.path().join("a/.wh..wh..opq").exists());
        if order.len() == 2 {
            assert_eq!(fs::metadata(t.path().join("a")).unwrap().mode() & 0o7777, 0o700);
        } else {
            assert!(t.path().join("a/b/c/foo").exists(), "same-layer files stay");
        }
    }
}

#[test]
fn nixpkgs_bug_opq_marker_in_base_layer_becoming_a_device() {
    if !require_root("nixpkgs_bug_opq_marker_in_base_layer_becoming_a_device") {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    unpack_to(&[E::dir("bin/"), E::file("bin/.wh..wh..opq", b"")], t.path(), &UnpackOptions::default()).unwrap();
    let names: Vec<_> = fs::read_dir(t.path().join("bin")).unwrap().collect();
    assert!(names.is_empty(), "no device or marker file: {names:?}");
    assert_eq!(opaque(&t.path().join("bin")).as_deref(), Some(&b"y"[..]));
}

#[test]
fn whiteout_only_applies_to_lower_layers_not_the_same_layer() {
    if !require_root("whiteout_only_applies_to_lower_layers_not_the_same_layer") {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    unpack_to(
        &[E::file("x", b"new"), E::file(".wh.x", b""), E::file(".wh.y", b"")],
        t.path(),
        &UnpackOptions::default(),
    )
    .unwrap();
    assert_eq!(fs::read(t.path().join("x")).unwrap(), b"new");
    assert!(is_whiteout(&t.path().join("y")));
}

#[test]
fn entry_under_a_whiteout_makes_an_opaque_directory() {
    if !require_root("entry_under_a_whiteout_makes_an_opaque_directory") {
        return;
    }
    // The lower "a" is removed and "a" made again in this layer: in overlay
    // form that is an opaque directory holding only this layer's entries.
    let t = tempfile::tempdir().unwrap();
    unpack_to(&[E::file(".wh.a", b""), E::file("a/b", b"1")], t.path(), &UnpackOptions::default()).unwrap();
    assert_eq!(fs::read(t.path().join("a/b")).unwrap(), b"1");
    assert_eq!(opaque(&t.path().join("a")).as_deref(), Some(&b"y"[..]));
}

#[test]
fn owners_modes_xattrs_devices_and_hardlinks_restored() {
    if !require_root("owners_modes_xattrs_devices_and_hardlinks_restored") {
        return;
    }
    let cap = b"\x01\x00\x00\x02\x00\x20\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00";
    let t = tempfile::tempdir().unwrap();
    unpack_to(
        &[
            E::dir("bin/").mode(0o750).owner(0, 10),
            E::file("bin/ping", b"elf")
                .mode(0o4755)
                .owner(1000, 1000)
                .xattr("security.capability", cap)
                .xattr("user.x", b"1"),
            E::hardlink("bin/ping2", "bin/ping"),
            E::symlink("bin/sh", "/bin/busybox").owner(7, 8),
            E::chardev("null", 1, 3).mode(0o666),
            E::blockdev("loop0", 7, 0).mode(0o660).owner(0, 6),
            E::fifo("fifo").mode(0o600),
            E::dir("ro/").mode(0o555),
            E::file("ro/f", b"ro"),
            E::file("bin/ping-selinux", b"").xattr("security.selinux", b"x").xattr("trusted.overlay.redirect", b"/etc"),
        ],
        t.path(),
        &UnpackOptions::default(),
    )
    .unwrap();
    let r = t.path();
    let m = fs::metadata(r.join("bin/ping")).unwrap();
    assert_eq!((m.mode() & 0o7777, m.uid(), m.gid()), (0o4755, 1000, 1000));
    assert_eq!(
        xattrs_of(&r.join("bin/ping")),
        vec![("security.capability".into(), cap.to_vec()), ("user.x".into(), b"1".to_vec())]
    );
    assert_eq!(m.ino(), fs::metadata(r.join("bin/ping2")).unwrap().ino());
    let d = fs::metadata(r.join("bin")).unwrap();
    assert_eq!((d.mode() & 0o7777, d.gid()), (0o750, 10));
    let s = fs::symlink_metadata(r.join("bin/sh")).unwrap();
    assert_eq!((s.uid(), s.gid()), (7, 8));
    assert_eq!(fs::read_link(r.join("bin/sh")).unwrap(), Path::new("/bin/busybox"));
    let n = fs::symlink_metadata(r.join("null")).unwrap();
    assert!(n.file_type().is_char_device());
    assert_eq!((n.rdev(), n.mode() & 0o7777), (rustix::fs::makedev(1, 3), 0o666));
    let b = fs::symlink_metadata(r.join("loop0")).unwrap();
    assert!(b.file_type().is_block_device());
    assert_eq!((b.rdev(), b.gid()), (rustix::fs::makedev(7, 0), 6));
    assert!(fs::symlink_metadata(r.join("fifo")).unwrap().file_type().is_fifo());
    assert_eq!(fs::metadata(r.join("ro")).unwrap().mode() & 0o7777, 0o555);
    assert_eq!(fs::read(r.join("ro/f")).unwrap(), b"ro");
    assert!(xattrs_of(&r.join("bin/ping-selinux")).is_empty(), "selinux and overlay xattrs not restored");
}

#[test]
fn zero_char_device_entry_is_rejected() {
    let t = tempfile::tempdir().unwrap();
    let err = unpack_to(&[E::chardev("dev/x", 0, 0)], t.path(), &no_owners()).unwrap_err();
    assert!(err.to_string().contains("dev/x"), "{err}");
}

#[test]
fn hostile_dotdot_and_absolute_paths_are_rejected() {
    let outer = tempfile::tempdir().unwrap();
    let root = outer.path().join("root");
    fs::create_dir(&root).unwrap();
    for p in ["../x", "/abs", "a/../../x", "./../x"] {
        let err = unpack_to(&[E::file(p, b"pwned")], &root, &no_owners()).unwrap_err();
        assert!(err.to_string().contains(p), "{err}");
        let err = unpack_to(&[E::file(&format!(".wh.{p}"), b"")], &root, &no_owners());
        assert!(err.is_err(), "whiteout {p}");
    }
    assert!(!outer.path().join("x").exists());
    assert!(!Path::new("/abs").exists());
}

#[test]
fn hostile_symlink_parent_escape_is_rejected() {
    let outer = tempfile::tempdir().unwrap();
    let root = outer.path().join("root");
    let outside = outer.path().join("outside");
    fs::create_dir_all(&root).unwrap();
    fs::create_dir_all(&outside).unwrap();
    for entries in [
        vec![E::symlink("l", outside.to_str().unwrap()), E::file("l/pwned", b"x")],
        vec![E::symlink("l", "../outside"), E::file("l/pwned", b"x")],
        vec![E::dir("d/"), E::symlink("d/l", "../../outside"), E::dir("d/l/sub/")],
        vec![E::symlink("l", "../outside"), E::file("l/.wh.pwned", b"")],
        vec![E::symlink("l", "../outside"), E::file("l/.wh..wh..opq", b"")],
    ] {
        let _ = fs::remove_dir_all(&root);
        fs::create_dir(&root).unwrap();
        let err = unpack_to(&entries, &root, &no_owners()).unwrap_err();
        assert!(err.to_string().contains("symlink"), "{err}");
        assert_eq!(fs::read_dir(&outside).unwrap().count(), 0, "wrote outside");
    }
}

#[test]
fn hostile_hardlink_to_outside_is_rejected() {
    let outer = tempfile::tempdir().unwrap();
    let root = outer.path().join("root");
    fs::create_dir(&root).unwrap();
    let secret = outer.path().join("secret");
    fs::write(&secret, b"s").unwrap();
    for entries in [
        vec![E::hardlink("x", "../secret")],
        vec![E::hardlink("x", secret.to_str().unwrap())],
        vec![E::symlink("l", ".."), E::hardlink("x", "l/secret")],
        vec![E::hardlink("x", "not-there")],
    ] {
        let _ = fs::remove_dir_all(&root);
        fs::create_dir(&root).unwrap();
        assert!(unpack_to(&entries, &root, &no_owners()).is_err());
        assert!(!root.join("x").exists());
    }
    assert_eq!(fs::metadata(&secret).unwrap().nlink(), 1);
}

#[test]
fn hardlink_to_a_symlink_links_the_symlink_not_its_target() {
    let outer = tempfile::tempdir().unwrap();
    let root = outer.path().join("root");
    fs::create_dir(&root).unwrap();
    fs::write(outer.path().join("secret"), b"s").unwrap();
    unpack_to(&[E::symlink("l", "../secret"), E::hardlink("x", "l")], &root, &no_owners()).unwrap();
    assert!(fs::symlink_metadata(root.join("x")).unwrap().file_type().is_symlink());
    assert_eq!(fs::metadata(outer.path().join("secret")).unwrap().nlink(), 1);
}

#[test]
fn file_and_directory_at_same_path_last_entry_wins() {
    // layer.md "Changeset over existing files": unless both are directories,
    // the old path is removed and recreated from the entry.
    let t = tempfile::tempdir().unwrap();
    unpack_to(&[E::file("a", b"1"), E::dir("a/"), E::file("a/in", b"2")], t.path(), &no_owners()).unwrap();
    assert_eq!(fs::read(t.path().join("a/in")).unwrap(), b"2");
    let t = tempfile::tempdir().unwrap();
    unpack_to(&[E::dir("a/"), E::file("a/in", b"2"), E::file("a", b"1")], t.path(), &no_owners()).unwrap();
    assert_eq!(fs::read(t.path().join("a")).unwrap(), b"1");
}

#[test]
fn duplicate_entries_last_one_wins_and_directories_merge() {
    let t = tempfile::tempdir().unwrap();
    unpack_to(
        &[
            E::dir("d/").mode(0o700),
            E::file("d/x", b"1"),
            E::file("f", b"old"),
            E::dir("d/").mode(0o711),
            E::file("f", b"new"),
        ],
        t.path(),
        &no_owners(),
    )
    .unwrap();
    assert_eq!(fs::read(t.path().join("f")).unwrap(), b"new");
    assert!(t.path().join("d/x").exists(), "directories merge");
    assert_eq!(fs::metadata(t.path().join("d")).unwrap().mode() & 0o7777, 0o711);
}

#[test]
fn existing_symlink_is_replaced_not_followed() {
    let outer = tempfile::tempdir().unwrap();
    let root = outer.path().join("root");
    fs::create_dir(&root).unwrap();
    let victim = outer.path().join("victim");
    fs::write(&victim, b"orig").unwrap();
    unpack_to(&[E::symlink("x", "../victim"), E::file("x", b"pwned")], &root, &no_owners()).unwrap();
    assert_eq!(fs::read(&victim).unwrap(), b"orig");
    assert_eq!(fs::read(root.join("x")).unwrap(), b"pwned");
}

#[test]
fn entry_under_a_file_is_rejected() {
    let t = tempfile::tempdir().unwrap();
    let err = unpack_to(&[E::file("a", b""), E::file("a/b", b"")], t.path(), &no_owners()).unwrap_err();
    assert!(err.to_string().contains("a/b"), "{err}");
}

#[test]
fn aufs_metadata_entries_are_ignored() {
    let t = tempfile::tempdir().unwrap();
    unpack_to(&[E::dir(".wh..wh.plnk/"), E::file(".wh..wh.aufs", b""), E::file("f", b"")], t.path(), &no_owners())
        .unwrap();
    let names: Vec<_> = fs::read_dir(t.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(names, ["f"]);
}

#[test]
fn malformed_whiteouts_are_rejected() {
    for p in [".wh.", "d/.wh..."] {
        let t = tempfile::tempdir().unwrap();
        assert!(unpack_to(&[E::file(p, b"")], t.path(), &no_owners()).is_err(), "{p}");
    }
}

#[test]
fn gnu_tar_layers_with_blank_device_fields_unpack() {
    // GNU tar leaves devmajor/devminor blank on non-device entries; a base
    // layer made by `tar -cf` must unpack (regression: the unpacker read
    // the device numbers of every entry).
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    fs::create_dir_all(src.join("etc")).unwrap();
    fs::write(src.join("etc/passwd"), "root:x:0:0::/root:/bin/sh\n").unwrap();
    std::os::unix::fs::symlink("passwd", src.join("etc/link")).unwrap();
    let tar = t.path().join("l.tar");
    let st = std::process::Command::new("tar")
        .args(["--format=gnu", "-C"])
        .arg(&src)
        .arg("-cf")
        .arg(&tar)
        .arg(".")
        .status()
        .unwrap();
    assert!(st.success());
    let dest = t.path().join("dest");
    fs::create_dir(&dest).unwrap();
    unpack(fs::File::open(&tar).unwrap(), &dest, &no_owners()).unwrap();
    assert_eq!(fs::read_to_string(dest.join("etc/passwd")).unwrap(), "root:x:0:0::/root:/bin/sh\n");
    assert_eq!(fs::read_link(dest.join("etc/link")).unwrap(), Path::new("passwd"));
}
