//! The ext4 reader, and the upper dir read off it ([`crate::layer::upper`]),
//! against images mkfs.ext4 makes from real trees (`-d`),
//! without a journal as the scratch disk is (but with flex_bg and
//! metadata_csum; `ext4_format_tests.rs` reads the formatter's own).

use super::*;
use crate::layer::changeset::{Changeset, Kind};
use crate::layer::test_util::{assert_upper_fixture, is_root, read_layer};
use crate::layer::upper::{changes, upper_tar, Bounds, Upper};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

fn mkfs(dir: &Path, img: &Path, mib: u64) {
    let f = std::fs::File::create(img).unwrap();
    f.set_len(mib << 20).unwrap();
    let out = Command::new("mkfs.ext4")
        .args(["-F", "-q", "-b", "4096", "-O", "^has_journal", "-E", "root_owner=0:0", "-d"])
        .arg(dir)
        .arg(img)
        .output()
        .expect("mkfs.ext4 (e2fsprogs)");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

fn tar_of_dir(img: &Path, dir: &str) -> Vec<u8> {
    let mut fs = Ext4::open(std::fs::File::open(img).unwrap()).unwrap();
    let mut out = Vec::new();
    upper_tar(&mut fs, dir, &mut out, u64::MAX).unwrap();
    out
}

#[test]
fn reads_files_dirs_symlinks_hardlinks_sparse_files_and_big_dirs() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("root");
    let up = root.join("upper");
    std::fs::create_dir_all(up.join("etc")).unwrap();
    std::fs::write(up.join("etc/passwd"), b"root:x:0:0::/root:/bin/sh\n").unwrap();
    let big: Vec<u8> = (0..300_000u32).flat_map(|i| i.to_le_bytes()).collect();
    std::fs::write(up.join("big"), &big).unwrap();
    std::fs::hard_link(up.join("big"), up.join("big2")).unwrap();
    std::os::unix::fs::symlink("passwd", up.join("etc/short")).unwrap();
    let long_target = format!("/nix/store/{}/bin/hello", "x".repeat(100));
    std::os::unix::fs::symlink(&long_target, up.join("etc/long")).unwrap();
    std::fs::set_permissions(up.join("etc/passwd"), std::fs::Permissions::from_mode(0o640)).unwrap();
    let sparse = std::fs::File::create(up.join("sparse")).unwrap();
    sparse.set_len(10 << 20).unwrap();
    std::fs::create_dir(up.join("many")).unwrap();
    for i in 0..3000 {
        std::fs::write(up.join(format!("many/file-with-a-longish-name-{i:05}")), i.to_string()).unwrap();
    }
    std::fs::write(root.join("outside"), b"not in the upper dir").unwrap();
    let img = t.path().join("scratch.img");
    mkfs(&root, &img, 64);
    let tar = tar_of_dir(&img, "upper");
    let entries = read_layer(&tar);
    let get = |p: &str| entries.iter().find(|g| g.path.trim_end_matches('/') == p).unwrap_or_else(|| panic!("{p}"));
    assert_eq!(get("etc/passwd").data, b"root:x:0:0::/root:/bin/sh\n");
    assert_eq!(get("etc/passwd").mode & 0o7777, 0o640);
    assert_upper_fixture(&entries, &big, &long_target);
    let many = entries.iter().filter(|g| g.path.starts_with("many/")).count();
    assert_eq!(many, 3000);
    assert_eq!(get("many/file-with-a-longish-name-02999").data, b"2999");
    assert!(!entries.iter().any(|g| g.path.contains("outside")), "only the upper dir");
}

#[test]
fn owners_devices_whiteouts_and_xattrs_as_root() {
    if !is_root() {
        eprintln!("skipping owners_devices_whiteouts_and_xattrs_as_root: needs root (mknod, chown, trusted.*)");
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("root");
    let up = root.join("upper");
    std::fs::create_dir_all(up.join("opaque")).unwrap();
    std::fs::write(up.join("owned"), b"x").unwrap();
    std::os::unix::fs::chown(up.join("owned"), Some(100_000), Some(42)).unwrap();
    rustix::fs::mknodat(rustix::fs::CWD, up.join("gone"), rustix::fs::FileType::CharacterDevice, 0.into(), 0).unwrap();
    rustix::fs::mknodat(
        rustix::fs::CWD,
        up.join("null"),
        rustix::fs::FileType::CharacterDevice,
        0o666.into(),
        rustix::fs::makedev(1, 3),
    )
    .unwrap();
    rustix::fs::mknodat(
        rustix::fs::CWD,
        up.join("loop300"),
        rustix::fs::FileType::BlockDevice,
        0o660.into(),
        rustix::fs::makedev(7, 300),
    )
    .unwrap();
    rustix::fs::lsetxattr(up.join("opaque"), "trusted.overlay.opaque", b"y", rustix::fs::XattrFlags::empty()).unwrap();
    rustix::fs::lsetxattr(
        up.join("owned"),
        "security.capability",
        b"\x01\x00\x00\x02\x00\x20\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00",
        rustix::fs::XattrFlags::empty(),
    )
    .unwrap();
    rustix::fs::lsetxattr(up.join("owned"), "user.big", &[7u8; 3000], rustix::fs::XattrFlags::empty()).unwrap();
    let img = t.path().join("scratch.img");
    mkfs(&root, &img, 32);
    let tar = tar_of_dir(&img, "/upper");
    let entries = read_layer(&tar);
    let get = |p: &str| entries.iter().find(|g| g.path.trim_end_matches('/') == p).unwrap_or_else(|| panic!("{p}"));
    assert_eq!((get("owned").uid, get("owned").gid), (100_000, 42));
    assert_eq!((get("gone").ty, get("gone").dev), (b'3', (0, 0)), "a whiteout stays a 0/0 device");
    assert_eq!(get("null").dev, (1, 3));
    assert_eq!((get("loop300").ty, get("loop300").dev), (b'4', (7, 300)));
    let x = |p: &str, k: &str| get(p).xattrs.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    assert_eq!(x("opaque", "trusted.overlay.opaque"), Some(b"y".to_vec()));
    assert_eq!(x("owned", "security.capability").map(|v| v.len()), Some(20));
    assert_eq!(x("owned", "user.big"), Some(vec![7u8; 3000]), "a block xattr");
}

#[test]
fn a_damaged_or_unclean_image_is_an_error_not_a_panic() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("root");
    std::fs::create_dir_all(root.join("upper/d")).unwrap();
    std::fs::write(root.join("upper/d/f"), b"data").unwrap();
    let img = t.path().join("scratch.img");
    mkfs(&root, &img, 16);
    let good = std::fs::read(&img).unwrap();
    // Not cleanly unmounted (s_state without VALID).
    let mut unclean = good.clone();
    unclean[1024 + 58] = 0;
    assert!(matches!(Ext4::open(std::io::Cursor::new(unclean)), Err(Ext4Error::NotClean)));
    // Cut short, and every byte of the metadata flipped in turn: errors only.
    assert!(Ext4::open(std::io::Cursor::new(good[..2048].to_vec())).is_err());
    for at in (1024..good.len().min(1 << 20)).step_by(997) {
        let mut bad = good.clone();
        bad[at] ^= 0xa5;
        if let Ok(mut fs) = Ext4::open(std::io::Cursor::new(bad)) {
            let _ = upper_tar(&mut fs, "upper", std::io::sink(), 1 << 30);
        }
    }
    // The output bound.
    let mut fs = Ext4::open(std::io::Cursor::new(good)).unwrap();
    assert!(matches!(upper_tar(&mut fs, "upper", std::io::sink(), 2), Err(Ext4Error::TooLarge(2))));
}

#[test]
fn the_fuzz_seeds_are_readable_images_with_1k_and_4k_blocks() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus-seeds/scratch_ext4");
    for seed in ["mkfs-d-upper-64k.img", "mkfs-d-upper-256k.img"] {
        let bytes = std::fs::read(dir.join(seed)).unwrap();
        let mut fs = Ext4::open(std::io::Cursor::new(bytes)).unwrap();
        let mut out = Vec::new();
        upper_tar(&mut fs, "upper", &mut out, 1 << 20).unwrap();
        let entries = read_layer(&out);
        // `h` and `etc/f` are one inode: the first name written (the root's
        // entries come before the subdirectories') has the bytes, the
        // other is a hardlink entry to it.
        let h = entries.iter().find(|g| g.path == "h").unwrap_or_else(|| panic!("{seed}: h"));
        assert_eq!(h.data, b"hi\n", "{seed}");
        let f = entries.iter().find(|g| g.path == "etc/f").unwrap_or_else(|| panic!("{seed}: etc/f"));
        assert_eq!((f.ty, f.link.as_str()), (b'1', "h"), "{seed}");
        assert!(entries.iter().any(|g| g.path == "wh" && g.ty == b'3'), "{seed}: the whiteout");
    }
}

#[test]
fn mtimes_after_2038_keep_their_epoch_bits() {
    let t = tempfile::tempdir().unwrap();
    let up = t.path().join("root/upper");
    std::fs::create_dir_all(&up).unwrap();
    // 2038-01-19T03:14:08Z (2^31), 2040-01-01, 2100-01-01, 2200-01-01.
    let times = [("y2038", 1u64 << 31), ("y2040", 2_208_988_800), ("y2100", 4_102_444_800), ("y2200", 7_258_118_400)];
    for (name, _) in times {
        std::fs::File::create(up.join(name)).unwrap();
    }
    let img = t.path().join("scratch.img");
    mkfs(&t.path().join("root"), &img, 16);
    // mkfs.ext4 -d (e2fsprogs 1.47.0) drops the epoch bits; debugfs sets
    // i_mtime and i_mtime_extra as the kernel would.
    for (name, secs) in times {
        let out = Command::new("debugfs")
            .args(["-w", "-R", &format!("sif /upper/{name} mtime @{secs}")])
            .arg(&img)
            .output()
            .expect("debugfs (e2fsprogs)");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    let entries = read_layer(&tar_of_dir(&img, "upper"));
    for (name, secs) in times {
        let e = entries.iter().find(|g| g.path == name).unwrap_or_else(|| panic!("{name}"));
        assert_eq!(e.mtime, secs, "{name}");
    }
}

#[test]
fn posix_acls_read_back_in_the_kernels_xattr_form() {
    let have = Command::new("setfacl").arg("--version").output().is_ok_and(|o| o.status.success());
    if !have {
        assert!(std::env::var_os("ROOTLAYER_REQUIRE_VM").is_none(), "setfacl (acl) missing");
        eprintln!("skipping posix_acls_read_back_in_the_kernels_xattr_form: no setfacl");
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let up = t.path().join("root/upper");
    std::fs::create_dir_all(up.join("data")).unwrap();
    std::fs::write(up.join("file"), "x").unwrap();
    let setfacl = |args: &[&str], p: &Path| {
        let o = Command::new("setfacl").args(args).arg(p).output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    };
    setfacl(&["-m", "u:1000:rwx,g:2000:r-x"], &up.join("data"));
    setfacl(&["-d", "-m", "u:1000:rwx"], &up.join("data"));
    setfacl(&["-m", "u:4242:r--"], &up.join("file"));
    // What the host kernel's getxattr gives: the form a layer carries.
    let host = |p: &Path, name: &str| {
        let mut buf = vec![0u8; 4096];
        let n = rustix::fs::lgetxattr(p, name, &mut buf).unwrap();
        buf.truncate(n);
        buf
    };
    let want = [
        ("data", "system.posix_acl_access", host(&up.join("data"), "system.posix_acl_access")),
        ("data", "system.posix_acl_default", host(&up.join("data"), "system.posix_acl_default")),
        ("file", "system.posix_acl_access", host(&up.join("file"), "system.posix_acl_access")),
    ];
    let img = t.path().join("scratch.img");
    mkfs(&t.path().join("root"), &img, 16);
    let entries = read_layer(&tar_of_dir(&img, "upper"));
    for (path, name, bytes) in want {
        let e = entries.iter().find(|g| g.path.trim_end_matches('/') == path).unwrap_or_else(|| panic!("{path}"));
        let got = e.xattrs.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
        assert_eq!(got, Some(bytes), "{path} {name}");
    }
    assert_eq!(acl_to_xattr(&[1, 0, 0, 0, 1, 0]), None, "an entry cut short");
    assert_eq!(acl_to_xattr(&[2, 0, 0, 0]), None, "another version");
    assert_eq!(acl_to_xattr(&[1, 0, 0, 0, 0x40, 0, 7, 0]), None, "an unknown tag");
}

#[test]
fn the_output_limit_counts_headers_and_names_not_only_file_data() {
    // 2,000 empty files under a chain of 200-byte directory names: no file
    // data at all, but about 2.5 MB of layer (a header and a long name
    // each).
    let t = tempfile::tempdir().unwrap();
    let mut deep = t.path().join("root/upper");
    for i in 0..3 {
        deep.push(format!("{i}{}", "d".repeat(199)));
    }
    std::fs::create_dir_all(&deep).unwrap();
    for i in 0..2000 {
        std::fs::File::create(deep.join(format!("f{i:04}"))).unwrap();
    }
    let img = t.path().join("scratch.img");
    mkfs(&t.path().join("root"), &img, 64);
    let mut fs = Ext4::open(std::fs::File::open(&img).unwrap()).unwrap();
    let mut out = Vec::new();
    upper_tar(&mut fs, "upper", &mut out, 8 << 20).unwrap();
    let size = out.len() as u64;
    assert!(size > 2 << 20, "the layer of empty files is {size} bytes");
    let mut fs = Ext4::open(std::fs::File::open(&img).unwrap()).unwrap();
    let e = upper_tar(&mut fs, "upper", std::io::sink(), 1 << 20).unwrap_err();
    assert!(matches!(e, Ext4Error::TooLarge(n) if n == 1 << 20), "{e}");
    // The count is close to what is written: a limit of what the tar
    // takes (plus the end-of-archive blocks' slack) passes.
    let mut fs = Ext4::open(std::fs::File::open(&img).unwrap()).unwrap();
    upper_tar(&mut fs, "upper", std::io::sink(), size + (64 << 10)).unwrap();
}

#[test]
fn a_directory_of_more_entries_than_the_budget_allows_is_refused_as_read() {
    let t = tempfile::tempdir().unwrap();
    let up = t.path().join("root/upper/many");
    std::fs::create_dir_all(&up).unwrap();
    for i in 0..3000 {
        std::fs::File::create(up.join(format!("f{i:04}"))).unwrap();
    }
    let img = t.path().join("scratch.img");
    mkfs(&t.path().join("root"), &img, 16);
    let mut fs = Ext4::open(std::fs::File::open(&img).unwrap()).unwrap();
    let many = fs.lookup("upper/many").unwrap();
    assert_eq!(fs.dir(&many).unwrap().len(), 3000);
    assert!(matches!(fs.dir_limited(&many, 100), Err(Ext4Error::TooManyEntries { max: 100, .. })));
    // Through the walk: 3,000 headers do not fit 1 MiB.
    let mut fs = Ext4::open(std::fs::File::open(&img).unwrap()).unwrap();
    assert!(
        matches!(upper_tar(&mut fs, "upper", std::io::sink(), 1 << 20), Err(Ext4Error::TooLarge(n)) if n == 1 << 20)
    );
}

/// Give inode `ino` of the image at `img` an extent tree of depth 1 whose
/// index entries (`leaves`) point at the given blocks, and write `leaf` (a
/// depth-0 node of `extents` one-block extents, logical block i on
/// physical block `data`) at block `at`.
fn craft_tree(img: &Path, ino: u64, leaves: &[u64], at: u64, extents: u16, data: u64) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new().read(true).write(true).open(img).unwrap();
    let mut fs = Ext4::open(f.try_clone().unwrap()).unwrap();
    let off = fs.inode_offset(ino).unwrap();
    let mut root = [0u8; 60];
    root[0..2].copy_from_slice(&EXTENT_MAGIC.to_le_bytes());
    root[2..4].copy_from_slice(&u16::try_from(leaves.len()).unwrap().to_le_bytes());
    root[4..6].copy_from_slice(&4u16.to_le_bytes());
    root[6..8].copy_from_slice(&1u16.to_le_bytes());
    for (i, leaf) in leaves.iter().enumerate() {
        let e = &mut root[12 + 12 * i..24 + 12 * i];
        e[0..4].copy_from_slice(&(u32::try_from(i).unwrap() * 1000).to_le_bytes());
        e[4..8].copy_from_slice(&u32::try_from(*leaf).unwrap().to_le_bytes());
    }
    f.write_all_at(&root, off + 0x28).unwrap();
    let mut node = vec![0u8; usize::try_from(fs.block_size).unwrap()];
    node[0..2].copy_from_slice(&EXTENT_MAGIC.to_le_bytes());
    node[2..4].copy_from_slice(&extents.to_le_bytes());
    node[4..6].copy_from_slice(&340u16.to_le_bytes());
    for i in 0..usize::from(extents) {
        let e = &mut node[12 + 12 * i..24 + 12 * i];
        e[0..4].copy_from_slice(&u32::try_from(i).unwrap().to_le_bytes());
        e[4..6].copy_from_slice(&1u16.to_le_bytes());
        e[8..12].copy_from_slice(&u32::try_from(data).unwrap().to_le_bytes());
    }
    f.write_all_at(&node, at * fs.block_size).unwrap();
}

#[test]
fn extent_nodes_reused_within_a_file_or_across_files_are_refused_in_bounded_time() {
    let t = tempfile::tempdir().unwrap();
    let up = t.path().join("root/upper");
    std::fs::create_dir_all(&up).unwrap();
    for i in 0..64 {
        std::fs::write(up.join(format!("f{i:02}")), "x").unwrap();
    }
    let img = t.path().join("scratch.img");
    mkfs(&t.path().join("root"), &img, 16);
    let inos: Vec<u64> = {
        let mut fs = Ext4::open(std::fs::File::open(&img).unwrap()).unwrap();
        (0..64).map(|i| fs.lookup(&format!("upper/f{i:02}")).unwrap().ino).collect()
    };
    let data = {
        let mut fs = Ext4::open(std::fs::File::open(&img).unwrap()).unwrap();
        let f = fs.lookup("upper/f00").unwrap();
        fs.extents(&f).unwrap()[0].1
    };
    // A block past what mkfs used (the image is 16 MiB of 4 KiB blocks).
    let spare = 4000;
    let read = |img: &Path| {
        let mut fs = Ext4::open(std::fs::File::open(img).unwrap()).unwrap();
        upper_tar(&mut fs, "upper", std::io::sink(), u64::MAX).unwrap_err().to_string()
    };
    // One file's index reaching the same node twice.
    let once = t.path().join("once.img");
    std::fs::copy(&img, &once).unwrap();
    craft_tree(&once, inos[0], &[spare, spare], spare, 1, data);
    let e = read(&once);
    assert!(e.contains("an extent node reached twice"), "{e}");
    // Every file sharing one full node of 340 extents: each file alone is
    // well formed, together they hold more extents than the image has
    // blocks (4,096 here): stopped there, not read 64 times over.
    for ino in &inos {
        craft_tree(&img, *ino, &[spare], spare, 340, data);
    }
    let e = read(&img);
    assert!(e.contains("more extents and extent nodes than the image has blocks"), "{e}");
}

#[test]
fn a_socket_in_the_upper_dir_is_named_as_one_not_as_an_unsupported_disk() {
    let t = tempfile::tempdir().unwrap();
    let up = t.path().join("root/upper/run");
    std::fs::create_dir_all(&up).unwrap();
    let _listener = std::os::unix::net::UnixListener::bind(up.join("daemon.sock")).unwrap();
    let img = t.path().join("scratch.img");
    mkfs(&t.path().join("root"), &img, 16);
    let mut fs = Ext4::open(std::fs::File::open(&img).unwrap()).unwrap();
    let e = upper_tar(&mut fs, "upper", &mut Vec::new(), u64::MAX).unwrap_err();
    assert!(matches!(&e, Ext4Error::Socket(p) if p.ends_with("run/daemon.sock")), "{e:?}");
}

#[test]
fn whiteouts_sharing_one_inode_are_each_left_out_or_written_by_their_own_path() {
    if !is_root() {
        eprintln!("skipping whiteouts_sharing_one_inode_...: needs root (mknod)");
        return;
    }
    // As overlayfs leaves them: one 0/0 device inode, hardlinked for every
    // whiteout. Some hide a base path, some only a contents path (left out,
    // whichever the walk meets first).
    let t = tempfile::tempdir().unwrap();
    let up = t.path().join("root/upper");
    std::fs::create_dir_all(&up).unwrap();
    let first = up.join("w0");
    rustix::fs::mknodat(rustix::fs::CWD, &first, rustix::fs::FileType::CharacterDevice, 0.into(), 0).unwrap();
    for i in 1..12 {
        std::fs::hard_link(&first, up.join(format!("w{i}"))).unwrap();
    }
    let img = t.path().join("scratch.img");
    mkfs(&t.path().join("root"), &img, 16);
    // Odd names hide only contents paths.
    let contents_only = |p: &[u8]| p.last().is_some_and(|c| (c - b'0') % 2 == 1);
    let mut fs = Ext4::open(std::fs::File::open(&img).unwrap()).unwrap();
    let mut cs = Changeset::default();
    let written =
        changes(&mut fs, "upper", Bounds::limit(u64::MAX), &mut |p: &[u8]| contents_only(p), &mut cs).unwrap();
    assert_eq!(written.len(), 12);
    let mut names: Vec<&[u8]> = cs.nodes().iter().map(|n| n.path.as_slice()).collect();
    names.sort();
    assert_eq!(names, [&b"w0"[..], b"w10", b"w2", b"w4", b"w6", b"w8"], "each base whiteout once, no contents one");
    assert!(cs.nodes().iter().all(|n| n.kind == Kind::Whiteout), "whiteouts, not hardlinks: {:?}", cs.nodes());
}

#[test]
fn an_opaque_directory_hides_the_contents_below_it_but_is_marked_only_over_the_base() {
    if !is_root() {
        eprintln!("skipping an_opaque_directory_...: needs root (trusted.* xattrs)");
        return;
    }
    // A script that emptied and refilled two directories: `c` the contents
    // alone had, `b` the base had too.
    let t = tempfile::tempdir().unwrap();
    for d in ["b", "c"] {
        let dir = t.path().join("root/upper").join(d);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("fresh"), "new").unwrap();
        rustix::fs::setxattr(&dir, "trusted.overlay.opaque", b"y", rustix::fs::XattrFlags::empty()).unwrap();
    }
    let img = t.path().join("scratch.img");
    mkfs(&t.path().join("root"), &img, 16);
    let mut fs = Ext4::open(std::fs::File::open(&img).unwrap()).unwrap();
    let mut cs = Changeset::default();
    let contents_only = &mut |p: &[u8]| p == b"c";
    let upper = changes(&mut fs, "upper", Bounds::limit(u64::MAX), contents_only, &mut cs).unwrap();
    assert_eq!((upper[&b"b"[..]], upper[&b"c"[..]]), (Upper::Opaque, Upper::Opaque), "both hide what is below");
    let mut opaque: Vec<(&[u8], bool)> =
        cs.nodes().iter().filter(|n| n.kind == Kind::Dir).map(|n| (n.path.as_slice(), n.opaque)).collect();
    opaque.sort();
    assert_eq!(opaque, [(&b"b"[..], true), (&b"c"[..], false)], "marked only where the base has the path");
}
