//! e2e: a multi-layer base image with what a flattener can get wrong (a
//! file whiteout, an opaque directory, hardlinks, a whiteout of one name of
//! a hardlinked file, character and block devices, a fifo, xattrs, long
//! names, a 10,000-file directory) is flattened on the host into the EROFS
//! disk the guest mounts; the merged tree the script sees (the test agent's
//! listing) and the host's listing of base + layer must both equal what
//! `umoci unpack` makes of the same image plus the new layer.

mod common;

use common::runas::{make_store, rootlayer, script_header, write_script};
use std::path::Path;
use tar::{Builder, EntryType, Header};

fn header(kind: EntryType, mode: u32, size: u64) -> Header {
    let mut h = Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(1000);
    h.set_size(size);
    h.set_device_major(0).unwrap();
    h.set_device_minor(0).unwrap();
    h
}

fn dir(b: &mut Builder<Vec<u8>>, path: &str) {
    b.append_data(&mut header(EntryType::Directory, 0o755, 0), path, std::io::empty()).unwrap();
}

fn file(b: &mut Builder<Vec<u8>>, path: &str, data: &[u8]) {
    b.append_data(&mut header(EntryType::Regular, 0o644, data.len() as u64), path, data).unwrap();
}

fn special(b: &mut Builder<Vec<u8>>, path: &str, kind: EntryType, major: u32, minor: u32) {
    let mut h = header(kind, 0o640, 0);
    h.set_device_major(major).unwrap();
    h.set_device_minor(minor).unwrap();
    b.append_data(&mut h, path, std::io::empty()).unwrap();
}

fn link(b: &mut Builder<Vec<u8>>, path: &str, target: &str) {
    b.append_link(&mut header(EntryType::Link, 0o644, 0), path, target).unwrap();
}

fn base_image(root: &Path, long: &str) -> std::path::PathBuf {
    let mut l1 = Builder::new(Vec::new());
    dir(&mut l1, "big");
    for i in 0..10_000 {
        file(&mut l1, &format!("big/f{i:05}"), format!("file {i}\n").as_bytes());
    }
    dir(&mut l1, "links");
    file(&mut l1, "links/a", b"one inode, three names\n");
    link(&mut l1, "links/b", "links/a");
    link(&mut l1, "links/c", "links/a");
    dir(&mut l1, "devs");
    special(&mut l1, "devs/c13", EntryType::Char, 1, 3);
    special(&mut l1, "devs/b70", EntryType::Block, 7, 0);
    special(&mut l1, "devs/fifo", EntryType::Fifo, 0, 0);
    dir(&mut l1, "x");
    // security.capability (cap_net_bind_service+ep) and a user xattr, as PAX records.
    let cap: &[u8] = &[1, 0, 0, 2, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    l1.append_pax_extensions([("SCHILY.xattr.security.capability", cap), ("SCHILY.xattr.user.note", &b"kept"[..])])
        .unwrap();
    file(&mut l1, "x/attrs", b"with xattrs\n");
    let (d, _) = long.rsplit_once('/').unwrap();
    dir(&mut l1, "long");
    dir(&mut l1, d);
    file(&mut l1, long, b"a long path\n");
    dir(&mut l1, "gone");
    file(&mut l1, "gone/file", b"whited out in layer 2\n");
    file(&mut l1, "gone/stay", b"stays\n");
    dir(&mut l1, "opq");
    file(&mut l1, "opq/old", b"hidden by the opaque dir\n");
    let l1 = l1.into_inner().unwrap();

    let mut l2 = Builder::new(Vec::new());
    dir(&mut l2, "gone");
    file(&mut l2, "gone/.wh.file", b"");
    dir(&mut l2, "opq");
    file(&mut l2, "opq/.wh..wh..opq", b"");
    file(&mut l2, "opq/new", b"above the opaque marker\n");
    dir(&mut l2, "links");
    file(&mut l2, "links/.wh.b", b"");
    dir(&mut l2, "big");
    file(&mut l2, "big/f00001", b"changed in layer 2\n");
    let l2 = l2.into_inner().unwrap();

    let archive = root.join("rich.tar");
    common::image::docker_archive(&archive, &[(&["rich:latest"], &[l1, l2])], false);
    archive
}

#[test]
fn the_merged_tree_of_a_rich_base_equals_umoci_unpack() {
    let Some(g) = common::test_guest("run_as_root_rich_base") else { return };
    let tmp = common::tempdir();
    let store = make_store(tmp.path());
    let long = format!("long/{}/{}", "d".repeat(150), "n".repeat(200));
    let base = base_image(tmp.path(), &long);
    let script = tmp.path().join("script.sh");
    write_script(&script, &format!("{}echo from the script > /new-file\n", script_header(&store)));
    let out = tmp.path().join("out");
    let listing = tmp.path().join("merged.list");
    let host_listing = tmp.path().join("host.list");
    let (code, _, stderr) = rootlayer(
        &g,
        &[
            "run-as-root",
            "--from-image",
            base.to_str().unwrap(),
            "--store",
            store.to_str().unwrap(),
            "--script",
            script.to_str().unwrap(),
            "--format",
            "oci",
            "--guest-merged-listing",
            listing.to_str().unwrap(),
            "--merged-listing",
            host_listing.to_str().unwrap(),
            "--timeout",
            "1200",
            "--out",
            out.to_str().unwrap(),
        ],
    );
    assert_eq!(code, 0, "{stderr}");
    let ours = std::fs::read_to_string(&listing).unwrap();
    // What the guest saw, spot-checked, then compared whole.
    for want in ["big/f09999\tf", "links/c\tf", "devs/c13\to", "devs/fifo\to", "x/attrs\tf", "opq/new\tf", &long] {
        assert!(ours.lines().any(|l| l.starts_with(want)), "{want} missing from the merged tree");
    }
    for gone in ["gone/file\t", "opq/old\t", "links/b\t"] {
        assert!(!ours.lines().any(|l| l.starts_with(gone)), "{gone} is back in the merged tree");
    }
    assert_eq!(ours.lines().filter(|l| l.starts_with("big/")).count(), 10_000);
    if !common::image::is_root() {
        eprintln!("SKIP umoci comparison: umoci unpack needs root");
        return;
    }
    let rootfs = common::image::umoci_unpack(&out, "latest", &tmp.path().join("bundle"));
    let theirs = common::runas::listing(&rootfs);
    let ours: Vec<&str> = ours.lines().collect();
    let theirs: Vec<&str> = theirs.lines().collect();
    let only_ours: Vec<_> = ours.iter().filter(|l| !theirs.contains(l)).take(20).collect();
    let only_theirs: Vec<_> = theirs.iter().filter(|l| !ours.contains(l)).take(20).collect();
    assert!(only_ours.is_empty() && only_theirs.is_empty(), "guest: {only_ours:#?}\numoci: {only_theirs:#?}");
    // The host's listing, from the flattened base and the layer's changes.
    let host = std::fs::read_to_string(&host_listing).unwrap();
    let host: Vec<&str> = host.lines().collect();
    let only_host: Vec<_> = host.iter().filter(|l| !theirs.contains(l)).take(20).collect();
    let only_theirs: Vec<_> = theirs.iter().filter(|l| !host.contains(l)).take(20).collect();
    assert!(only_host.is_empty() && only_theirs.is_empty(), "host: {only_host:#?}\numoci: {only_theirs:#?}");
    // umoci kept the hardlinks as one inode and the xattrs, from the same layers.
    use std::os::unix::fs::MetadataExt;
    let a = std::fs::metadata(rootfs.join("links/a")).unwrap();
    assert_eq!((a.ino(), a.nlink()), (std::fs::metadata(rootfs.join("links/c")).unwrap().ino(), 2));
}
