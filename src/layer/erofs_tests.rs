//! The EROFS writer checked by an independent reader: Debian's erofs-utils
//! (`fsck.erofs --extract`, `dump.erofs`), on images of flattened layers.

use super::*;
use crate::layer::flatten::Tree;
use crate::layer::test_util::{is_root, tar_of, E};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;
use std::process::Command;

fn image(layers: &[Vec<u8>]) -> Vec<u8> {
    let mut tree = Tree::default();
    for (i, l) in layers.iter().enumerate() {
        tree.apply_tar(i, &l[..]).expect("apply");
    }
    let mut out = Vec::new();
    let mut src = Layers(layers.iter().map(|l| std::io::Cursor::new(l.clone())).collect());
    let info = write(&tree, &mut src, &mut out).expect("write");
    assert_eq!(info.bytes, out.len() as u64);
    assert_eq!(out.len() as u64 % BLOCK_SIZE, 0);
    out
}

fn have_erofs_utils(test: &str) -> bool {
    let ok = Command::new("fsck.erofs").arg("-V").output().is_ok_and(|o| o.status.success());
    if !ok {
        // scripts/install-test-deps installs erofs-utils; CI never skips.
        assert!(std::env::var_os("ROOTLAYER_REQUIRE_VM").is_none(), "{test}: fsck.erofs missing");
        eprintln!("skipping {test}: fsck.erofs (erofs-utils) not installed");
    }
    ok
}

/// fsck the image and extract it; returns the extraction directory.
fn fsck_extract(img: &[u8]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("base.erofs");
    std::fs::write(&path, img).unwrap();
    let out = dir.path().join("x");
    let mut cmd = Command::new("fsck.erofs");
    cmd.arg(format!("--extract={}", out.display()));
    if is_root() {
        cmd.arg("--preserve");
    }
    let r = cmd.arg(&path).output().unwrap();
    assert!(
        r.status.success(),
        "fsck.erofs: {}{}",
        String::from_utf8_lossy(&r.stdout),
        String::from_utf8_lossy(&r.stderr)
    );
    dir
}

/// `dump.erofs --path=P` of an image.
fn dump(img: &[u8], p: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("img");
    std::fs::write(&path, img).unwrap();
    let o = Command::new("dump.erofs").arg(format!("--path={p}")).arg(&path).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// i_mode of the inode at `p`, found through dump.erofs's NID.
fn stored_mode(img: &[u8], p: &str) -> u16 {
    let text = dump(img, p);
    let nid: usize = text
        .split_whitespace()
        .skip_while(|w| *w != "NID:")
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no NID in {text}"));
    let at = nid * 32 + 4;
    u16::from_le_bytes([img[at], img[at + 1]])
}

fn x(dir: &tempfile::TempDir, rel: &str) -> std::path::PathBuf {
    dir.path().join("x").join(rel)
}

#[test]
fn fsck_reads_back_files_dirs_symlinks_devices_and_owners() {
    if !have_erofs_utils("fsck_reads_back_files_dirs_symlinks_devices_and_owners") {
        return;
    }
    let big: Vec<u8> = (0..10_000u32).flat_map(|i| i.to_le_bytes()).collect();
    let l0 = tar_of(&[
        E::dir("etc").mtime(1_700_000_000),
        E::file("etc/passwd", b"root:x:0:0::/root:/bin/sh\n").mode(0o644),
        E::file("etc/shadow", b"root:*:1::::::\n").mode(0o640).owner(0, 42),
        E::file("etc/old", b"gone"),
        E::dir("usr/bin"),
        E::file("usr/bin/tool", &big).mode(0o4755).owner(1000, 1000),
        E::symlink("usr/bin/sh", "busybox"),
        E::file("empty", b""),
        E::chardev("dev/null", 1, 3).mode(0o666),
        E::blockdev("dev/loop300", 7, 300),
        E::fifo("run/fifo").mode(0o600),
        E::dir("tmp").mode(0o1777),
    ]);
    let l1 = tar_of(&[E::file("etc/.wh.old", b""), E::hardlink("usr/bin/tool2", "usr/bin/tool")]);
    let img = image(&[l0, l1]);
    let d = fsck_extract(&img);
    assert_eq!(std::fs::read(x(&d, "etc/passwd")).unwrap(), b"root:x:0:0::/root:/bin/sh\n");
    assert_eq!(std::fs::read(x(&d, "usr/bin/tool")).unwrap(), big);
    assert_eq!(std::fs::read(x(&d, "usr/bin/tool2")).unwrap(), big);
    assert_eq!(std::fs::read_link(x(&d, "usr/bin/sh")).unwrap(), Path::new("busybox"));
    assert_eq!(std::fs::read(x(&d, "empty")).unwrap(), b"");
    assert!(!x(&d, "etc/old").exists(), "whited out");
    if is_root() {
        let m = |p: &str| std::fs::symlink_metadata(x(&d, p)).unwrap();
        assert_eq!(m("etc/shadow").mode() & 0o7777, 0o640);
        assert_eq!((m("etc/shadow").uid(), m("etc/shadow").gid()), (0, 42));
        // fsck.erofs chowns after chmod, which clears setuid, and
        // dump.erofs 1.5 prints only the rwx bits: read the stored i_mode
        // at the inode dump.erofs names.
        assert_eq!(stored_mode(&img, "/usr/bin/tool"), 0o104_755);
        assert_eq!((m("usr/bin/tool").uid(), m("usr/bin/tool").gid()), (1000, 1000));
        assert_eq!(m("tmp").mode() & 0o7777, 0o1777);
        assert!(m("dev/null").file_type().is_char_device());
        assert_eq!(m("dev/null").rdev(), rustix::fs::makedev(1, 3));
        assert!(m("dev/loop300").file_type().is_block_device());
        assert_eq!(m("dev/loop300").rdev(), rustix::fs::makedev(7, 300));
        assert!(m("run/fifo").file_type().is_fifo());
        assert_eq!(m("etc").mtime(), 1_700_000_000);
    }
}

#[test]
fn large_directories_span_blocks_and_stay_sorted() {
    if !have_erofs_utils("large_directories_span_blocks_and_stay_sorted") {
        return;
    }
    let mut entries = vec![E::dir("many")];
    let names: Vec<String> =
        (0..700).map(|i| format!("entry-with-a-long-name-{i:05}-{}", "x".repeat(i % 40))).collect();
    for n in &names {
        entries.push(E::file(&format!("many/{n}"), n.as_bytes()));
    }
    // Names that sort before '.' and '..'.
    entries.push(E::file("many/+plus", b"p"));
    entries.push(E::file("many/-dash", b"d"));
    let img = image(&[tar_of(&entries)]);
    let d = fsck_extract(&img);
    let mut got: Vec<String> = std::fs::read_dir(x(&d, "many"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    got.sort();
    let mut want = names.clone();
    want.extend(["+plus".to_string(), "-dash".to_string()]);
    want.sort();
    assert_eq!(got, want);
    for n in &names {
        assert_eq!(std::fs::read(x(&d, &format!("many/{n}"))).unwrap(), n.as_bytes());
    }
}

#[test]
fn xattrs_and_nlink_as_dump_erofs_shows_them() {
    if !have_erofs_utils("xattrs_and_nlink_as_dump_erofs_shows_them") {
        return;
    }
    let l0 = tar_of(&[
        E::file("bin/ping", b"elf").xattr(
            "security.capability",
            b"\x01\x00\x00\x02\x00\x20\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00",
        ),
        E::hardlink("bin/ping2", "bin/ping"),
        E::dir("d1"),
        E::dir("d1/a"),
        E::dir("d1/b"),
    ]);
    let img = image(&[l0]);
    let ping = dump(&img, "/bin/ping");
    assert!(ping.contains("Links: 2"), "{ping}");
    assert!(ping.contains("Xattr size: "), "{ping}");
    let d1 = dump(&img, "/d1");
    assert!(d1.contains("Links: 4"), "{d1}");
    // The whole image passes the checker.
    fsck_extract(&img);
}

#[test]
fn the_same_layers_give_the_same_image() {
    let layers = [
        tar_of(&[E::dir("a"), E::file("a/x", b"1"), E::file("b", b"2").xattr("user.k", b"v")]),
        tar_of(&[E::file("a/.wh.x", b""), E::file("c", b"3")]),
    ];
    let one = image(&layers);
    let two = image(&layers);
    assert_eq!(one, two);
    // The superblock: magic, 4 KiB blocks, the root at nid 128.
    assert_eq!(&one[1024..1028], &MAGIC.to_le_bytes());
    assert_eq!(one[1024 + 12], 12);
    assert_eq!(u16::from_le_bytes([one[1024 + 14], one[1024 + 15]]), 128);
}

#[test]
fn a_layer_that_ends_inside_a_file_is_an_error_not_a_short_image() {
    let layer = tar_of(&[E::file("f", &[7u8; 5000])]);
    let mut tree = Tree::default();
    tree.apply_tar(0, &layer[..]).unwrap();
    let cut = layer[..layer.len() - 1024 * 3].to_vec();
    let mut src = Layers(vec![std::io::Cursor::new(cut)]);
    let err = write(&tree, &mut src, &mut Vec::new()).unwrap_err();
    assert!(matches!(err, LayerError::Entry { .. }), "{err}");
}

#[test]
fn lookup_finds_what_the_writer_wrote_and_nothing_else() {
    let mut entries = vec![E::dir("etc"), E::file("etc/passwd", b"root"), E::symlink("bin", "usr/bin")];
    entries.push(E::dir("usr/bin"));
    entries.push(E::fifo("run.fifo"));
    // A directory over several blocks, names in every block.
    let names: Vec<String> = (0..600).map(|i| format!("entry-{i:04}-{}", "y".repeat(i % 50))).collect();
    for n in &names {
        entries.push(E::file(&format!("usr/bin/{n}"), b""));
    }
    let img = image(&[tar_of(&entries)]);
    let mut r = std::io::Cursor::new(img.clone());
    assert_eq!(lookup(&mut r, b"").unwrap(), Some(S_IFDIR));
    assert_eq!(lookup(&mut r, b"etc").unwrap(), Some(S_IFDIR));
    assert_eq!(lookup(&mut r, b"etc/passwd").unwrap(), Some(S_IFREG));
    assert_eq!(lookup(&mut r, b"bin").unwrap(), Some(S_IFLNK));
    assert_eq!(lookup(&mut r, b"run.fifo").unwrap(), Some(S_IFIFO));
    for n in &names {
        assert_eq!(lookup(&mut r, format!("usr/bin/{n}").as_bytes()).unwrap(), Some(S_IFREG), "{n}");
    }
    for missing in ["etc/shadow", "etc/passwd/x", "bin/entry-0000-", "usr/bin/entry-9999", "e", "etcc", "usr/bi"] {
        assert_eq!(lookup(&mut r, missing.as_bytes()).unwrap(), None, "{missing}");
    }
    // A damaged image is an error, never a panic.
    for at in [SUPER_OFFSET, SUPER_OFFSET + 14, 4096 + 16, 4096 + 8] {
        let mut bad = img.clone();
        bad[at] ^= 0xff;
        bad[at + 1] ^= 0x7f;
        let _ = lookup(&mut std::io::Cursor::new(bad.clone()), b"usr/bin/entry-0599-yyyyyyyyy");
        let _ = lookup(&mut std::io::Cursor::new(bad), b"etc/passwd");
    }
    assert!(lookup(&mut std::io::Cursor::new(vec![0u8; 8192]), b"etc").is_err(), "no superblock");
}

#[test]
fn posix_acls_are_stored_as_erofs_acl_xattrs() {
    if !have_erofs_utils("posix_acls_are_stored_as_erofs_acl_xattrs") || !is_root() {
        eprintln!("skipping posix_acls_are_stored_as_erofs_acl_xattrs: needs erofs-utils and root");
        return;
    }
    // user::rwx, user:1000:rwx, group::r-x, mask::rwx, other::r-x, as the
    // kernel's getxattr gives it.
    let acl = crate::layer::ext4::acl_xattr([
        (1, 7, u32::MAX),
        (2, 7, 1000),
        (4, 5, u32::MAX),
        (0x10, 7, u32::MAX),
        (0x20, 5, u32::MAX),
    ]);
    let l0 = tar_of(&[
        E::dir("data").xattr("system.posix_acl_access", &acl).xattr("system.posix_acl_default", &acl),
        E::file("f", b"x").xattr("system.posix_acl_access", &acl).xattr("user.note", b"n"),
    ]);
    let img = image(&[l0]);
    // The reader is the host's own kernel (erofs-utils 1.5 extracts no
    // xattrs): the image mounted through a loop device.
    let dir = tempfile::tempdir().unwrap();
    let (path, mnt) = (dir.path().join("img"), dir.path().join("mnt"));
    std::fs::write(&path, &img).unwrap();
    std::fs::create_dir(&mnt).unwrap();
    let o = Command::new("mount").args(["-t", "erofs", "-o", "loop,ro"]).arg(&path).arg(&mnt).output().unwrap();
    if !o.status.success() {
        eprintln!("skipping posix_acls_are_stored_as_erofs_acl_xattrs: mount: {}", String::from_utf8_lossy(&o.stderr));
        return;
    }
    let get = |p: &str, name: &str| {
        let mut buf = vec![0u8; 4096];
        let n = rustix::fs::lgetxattr(mnt.join(p), name, &mut buf).map_err(|e| format!("{p} {name}: {e}"));
        n.map(|n| buf[..n].to_vec())
    };
    let got = [
        get("data", "system.posix_acl_access"),
        get("data", "system.posix_acl_default"),
        get("f", "system.posix_acl_access"),
        get("f", "user.note"),
    ];
    let _ = Command::new("umount").arg(&mnt).status();
    let want = [Ok(acl.clone()), Ok(acl.clone()), Ok(acl), Ok(b"n".to_vec())];
    assert_eq!(got, want);
}
