use std::io::Cursor;
use std::process::Command;

use sha2::{Digest, Sha256};

use super::*;
use crate::layer::test_util::{paths, read_layer, require_root, tar_of, Got, E};

fn conv(entries: &[E]) -> Result<(Vec<u8>, LayerInfo), LayerError> {
    conv_opts(entries, &ConvertOptions::default())
}

fn conv_opts(entries: &[E], opts: &ConvertOptions) -> Result<(Vec<u8>, LayerInfo), LayerError> {
    let input = tar_of(entries);
    let mut out = Vec::new();
    let info = convert(&input[..], &mut out, opts)?;
    // The seekable path must agree byte for byte.
    let mut out2 = Vec::new();
    let info2 = convert_seekable(Cursor::new(&input), &mut out2, opts)?;
    assert_eq!(out, out2, "convert and convert_seekable disagree");
    assert_eq!(info, info2);
    Ok((out, info))
}

fn get<'a>(got: &'a [Got], path: &str) -> &'a Got {
    got.iter().find(|g| g.path == path).unwrap_or_else(|| panic!("{path} not in {:?}", paths(got)))
}

fn err_of(entries: &[E]) -> String {
    conv(entries).expect_err("conversion should fail").to_string()
}

#[test]
fn whiteout_char_device_0_0_becomes_wh_file_with_basename() {
    let (out, _) = conv(&[E::dir("etc/"), E::chardev("etc/my-app-config", 0, 0)]).unwrap();
    let got = read_layer(&out);
    assert_eq!(paths(&got), ["etc/", "etc/.wh.my-app-config"]);
    let wh = get(&got, "etc/.wh.my-app-config");
    assert_eq!(wh.ty, b'0');
    assert!(wh.data.is_empty());
}

#[test]
fn whiteout_xattr_on_empty_file_becomes_wh_file() {
    let (out, _) = conv(&[E::file("a", b"").xattr("trusted.overlay.whiteout", b"")]).unwrap();
    let got = read_layer(&out);
    assert_eq!(paths(&got), [".wh.a"]);
    assert!(got.iter().all(|g| g.xattrs.is_empty() && g.data.is_empty()));
}

#[test]
fn nixpkgs_bug_opaque_dir_dropped_now_dir_entry_plus_opq_marker() {
    let (out, _) = conv(&[E::dir("d/").xattr("trusted.overlay.opaque", b"y"), E::file("d/new", b"x")]).unwrap();
    let got = read_layer(&out);
    assert_eq!(paths(&got), ["d/", "d/.wh..wh..opq", "d/new"]);
    assert!(get(&got, "d/").xattrs.is_empty(), "overlay xattr stripped");
    assert_eq!(get(&got, "d/.wh..wh..opq").ty, b'0');
}

#[test]
fn user_overlay_xattrs_a_script_set_are_ordinary_xattrs() {
    // The guest's overlay uses trusted.overlay.*: a script's
    // `setfattr -n user.overlay.opaque -v y /etc` is its own xattr, not an
    // opaque directory hiding the base's /etc.
    let (out, _) = conv(&[
        E::dir("etc/").xattr("user.overlay.opaque", b"y"),
        E::file("etc/x", b"").xattr("user.overlay.whiteout", b""),
        E::file("r", b"").xattr("user.overlay.redirect", b"/etc"),
    ])
    .unwrap();
    let got = read_layer(&out);
    assert_eq!(paths(&got), ["etc/", "etc/x", "r"], "no whiteout, no opaque marker");
    assert_eq!(get(&got, "etc/").xattrs, [("user.overlay.opaque".to_string(), b"y".to_vec())]);
    assert_eq!(get(&got, "etc/x").xattrs, [("user.overlay.whiteout".to_string(), Vec::new())]);
    assert_eq!(get(&got, "r").xattrs, [("user.overlay.redirect".to_string(), b"/etc".to_vec())]);
}

#[test]
fn opaque_x_value_is_not_an_opaque_dir() {
    let (out, _) = conv(&[E::dir("d/").xattr("trusted.overlay.opaque", b"x")]).unwrap();
    assert_eq!(paths(&read_layer(&out)), ["d/"]);
}

#[test]
fn nixpkgs_bug_any_char_device_taken_as_whiteout_now_kept() {
    let (out, _) = conv(&[
        E::dir("dev/"),
        E::chardev("dev/null", 1, 3).mode(0o666),
        E::blockdev("dev/loop0", 7, 0),
        E::fifo("dev/fifo"),
    ])
    .unwrap();
    let got = read_layer(&out);
    assert_eq!(paths(&got), ["dev/", "dev/fifo", "dev/loop0", "dev/null"]);
    let null = get(&got, "dev/null");
    assert_eq!((null.ty, null.dev, null.mode), (b'3', (1, 3), 0o666));
    assert_eq!(get(&got, "dev/loop0").ty, b'4');
    assert_eq!(get(&got, "dev/loop0").dev, (7, 0));
    assert_eq!(get(&got, "dev/fifo").ty, b'6');
}

#[test]
fn nixpkgs_bug_user_file_named_wh_is_an_error_naming_it() {
    let msg = err_of(&[E::dir("etc/"), E::file("etc/.wh.passwd", b"")]);
    assert!(msg.contains("etc/.wh.passwd"), "{msg}");
    let msg = err_of(&[E::dir("d/"), E::dir("d/.wh..wh..opq/")]);
    assert!(msg.contains("d/.wh..wh..opq"), "{msg}");
}

#[test]
fn nixpkgs_bug_hardlinks_become_copies_now_links_to_first_path() {
    // The input archives "z" first and links "a" and "m" to it; in the output
    // "a" comes first, so it carries the data and the others link to it.
    let (out, _) =
        conv(&[E::file("z", b"shared").mode(0o750).owner(5, 6), E::hardlink("m", "z"), E::hardlink("a", "./z")])
            .unwrap();
    let got = read_layer(&out);
    assert_eq!(paths(&got), ["a", "m", "z"]);
    let a = get(&got, "a");
    assert_eq!((a.ty, a.data.as_slice(), a.mode, a.uid), (b'0', &b"shared"[..], 0o750, 5));
    for p in ["m", "z"] {
        let g = get(&got, p);
        assert_eq!((g.ty, g.link.as_str(), g.data.len()), (b'1', "a", 0), "{p}");
    }
}

#[test]
fn hardlink_chains_resolve_to_the_inode_holder() {
    let (out, _) = conv(&[E::file("c", b"1"), E::hardlink("b", "c"), E::hardlink("a", "b")]).unwrap();
    let got = read_layer(&out);
    assert_eq!(get(&got, "a").data, b"1");
    assert_eq!(get(&got, "b").link, "a");
    assert_eq!(get(&got, "c").link, "a");
}

#[test]
fn hardlinked_whiteouts_are_each_a_whiteout() {
    // Overlayfs shares one whiteout inode, so GNU tar archives later
    // whiteouts as hardlinks to the first.
    let (out, _) =
        conv(&[E::dir("d/"), E::chardev("d/x", 0, 0), E::hardlink("d/y", "d/x"), E::hardlink("a", "d/x")]).unwrap();
    let got = read_layer(&out);
    assert_eq!(paths(&got), [".wh.a", "d/", "d/.wh.x", "d/.wh.y"]);
    assert!(got.iter().all(|g| g.ty != b'1'));
}

#[test]
fn nixpkgs_bug_security_capability_kept_as_pax_xattr() {
    let cap = b"\x01\x00\x00\x02\x00\x20\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00";
    let (out, _) = conv(&[E::file("ping", b"elf")
        .mode(0o755)
        .xattr("security.capability", cap)
        .xattr("user.note", b"v")
        .xattr("security.selinux", b"system_u:object_r:bin_t:s0")
        .xattr("trusted.overlay.origin", b"xx")
        .xattr("trusted.other", b"t")
        .xattr("system.posix_acl_access", b"acl")])
    .unwrap();
    let got = read_layer(&out);
    let ping = get(&got, "ping");
    // security.*, POSIX ACLs and user.*; not selinux, trusted.* or overlay's.
    let want: Vec<(String, Vec<u8>)> = vec![
        ("security.capability".into(), cap.to_vec()),
        ("system.posix_acl_access".into(), b"acl".to_vec()),
        ("user.note".into(), b"v".to_vec()),
    ];
    assert_eq!(ping.xattrs, want);
}

#[test]
fn redirect_and_metacopy_xattrs_are_errors_naming_the_path() {
    for x in ["trusted.overlay.redirect", "trusted.overlay.metacopy"] {
        let msg = err_of(&[E::dir("a/"), E::dir("a/moved/").xattr(x, b"/old")]);
        assert!(msg.contains("a/moved") && msg.contains(x), "{msg}");
    }
}

#[test]
fn whiteouts_appear_before_sibling_entries() {
    let (out, _) = conv(&[
        E::dir("a/").xattr("trusted.overlay.opaque", b"y"),
        E::dir("a/-b/"),
        E::file("a/+c", b""),
        E::chardev("a/zz", 0, 0),
        E::chardev("a/-a", 0, 0),
    ])
    .unwrap();
    assert_eq!(paths(&read_layer(&out)), ["a/", "a/.wh..wh..opq", "a/.wh.-a", "a/.wh.zz", "a/+c", "a/-b/"]);
}

#[test]
fn parents_precede_children_and_input_order_does_not_matter() {
    let entries = [
        E::file("b/c/d", b"1"),
        E::file("a.txt", b"2"),
        E::dir("b/c/"),
        E::dir("a/"),
        E::dir("b/"),
        E::file("a/x", b"3"),
    ];
    let (out, info) = conv(&entries).unwrap();
    assert_eq!(paths(&read_layer(&out)), ["a/", "a/x", "a.txt", "b/", "b/c/", "b/c/d"]);
    let mut rev = entries.to_vec();
    rev.reverse();
    let (out2, info2) = conv(&rev).unwrap();
    assert_eq!(out, out2);
    assert_eq!(info, info2);
}

#[test]
fn duplicate_paths_in_input_are_rejected() {
    let msg = err_of(&[E::file("a", b"1"), E::file("./a", b"2")]);
    assert!(msg.contains("duplicate") && msg.contains('a'), "{msg}");
}

#[test]
fn file_and_directory_at_same_path_rejected() {
    let msg = err_of(&[E::file("a", b"1"), E::dir("a/")]);
    assert!(msg.contains("duplicate"), "{msg}");
}

#[test]
fn entry_under_a_whiteout_is_rejected() {
    let msg = err_of(&[E::chardev("a", 0, 0), E::file("a/b", b"")]);
    assert!(msg.contains("a/b") && msg.contains("not a directory"), "{msg}");
}

#[test]
fn hostile_paths_are_rejected() {
    for p in ["../x", "/abs", "a/../../x", "a/.."] {
        let msg = err_of(&[E::file(p, b"")]);
        assert!(msg.contains(p), "{msg}");
    }
    let msg = err_of(&[E::file("a", b""), E::hardlink("b", "../etc/passwd")]);
    assert!(msg.contains("../etc/passwd"), "{msg}");
}

#[test]
fn hardlink_to_missing_or_directory_target_is_rejected() {
    let msg = err_of(&[E::hardlink("b", "nope")]);
    assert!(msg.contains("nope"), "{msg}");
    let msg = err_of(&[E::dir("d/"), E::hardlink("b", "d")]);
    assert!(msg.contains("directory"), "{msg}");
}

#[test]
fn mtime_clamped_to_source_date_epoch_and_owner_names_empty() {
    let opts = ConvertOptions { source_date_epoch: Some(500), gzip: None };
    let (out, _) =
        conv_opts(&[E::file("new", b"").mtime(900).owner(1000, 100), E::file("old", b"").mtime(200)], &opts).unwrap();
    let got = read_layer(&out);
    assert_eq!(get(&got, "new").mtime, 500);
    assert_eq!(get(&got, "old").mtime, 200);
    assert_eq!((get(&got, "new").uid, get(&got, "new").gid), (1000, 100));
    assert!(got.iter().all(|g| g.uname.is_empty() && g.gname.is_empty()));
}

#[test]
fn root_entry_is_dropped_and_modes_keep_special_bits() {
    let (out, _) = conv(&[E::dir("./"), E::file("./su", b"").mode(0o4755), E::dir("./t/").mode(0o1777)]).unwrap();
    let got = read_layer(&out);
    assert_eq!(paths(&got), ["su", "t/"]);
    assert_eq!(get(&got, "su").mode, 0o4755);
    assert_eq!(get(&got, "t/").mode, 0o1777);
}

#[test]
fn long_names_long_targets_and_big_ids_use_pax() {
    let long_dir = "d".repeat(120);
    let long_file = format!("{long_dir}/{}", "f".repeat(150));
    let target = format!("/{}", "t".repeat(200));
    let (out, _) = conv(&[
        E::dir(&format!("{long_dir}/")),
        E::file(&long_file, b"data").owner(3_000_000, 4_000_000),
        E::symlink("s", &target),
    ])
    .unwrap();
    let got = read_layer(&out);
    assert_eq!(get(&got, &long_file).data, b"data");
    assert_eq!(get(&got, &long_file).uid, 3_000_000);
    assert_eq!(get(&got, &long_file).gid, 4_000_000);
    assert_eq!(get(&got, "s").link, target);
    // No GNU long-name records: only ustar and PAX type flags.
    let mut a = tar::Archive::new(&out[..]);
    let mut raw = a.entries().unwrap().raw(true);
    assert!(raw.all(|e| matches!(e.unwrap().header().entry_type().as_byte(), b'0'..=b'6' | b'x')));
}

#[test]
fn same_input_twice_gives_same_bytes_and_digest() {
    let entries = [
        E::dir("etc/").xattr("trusted.overlay.opaque", b"y"),
        E::file("etc/passwd", b"root:x:0:0"),
        E::chardev("etc/shadow", 0, 0),
        E::hardlink("etc/passwd-", "etc/passwd"),
    ];
    let (a, ia) = conv(&entries).unwrap();
    let (b, ib) = conv(&entries).unwrap();
    assert_eq!(a, b);
    assert_eq!(ia, ib);
}

#[test]
fn diff_id_and_size_are_those_of_the_written_bytes() {
    let (out, info) = conv(&[E::file("f", &vec![7u8; 100_000])]).unwrap();
    assert_eq!(info.size, out.len() as u64);
    assert_eq!(info.diff_id.to_string(), format!("sha256:{:x}", Sha256::digest(&out)));
    assert_eq!(out.len() % 512, 0);
}

#[test]
fn gzip_output_has_its_own_digest_and_decompresses_to_the_diff_id() {
    let entries = [E::file("f", &vec![1u8; 50_000]), E::file("g", b"hello")];
    let input = tar_of(&entries);
    let mut plain = Vec::new();
    let pinfo = convert(&input[..], &mut plain, &ConvertOptions::default()).unwrap();
    let mut gz = Vec::new();
    let opts = ConvertOptions { source_date_epoch: None, gzip: Some(6) };
    let ginfo = convert(&input[..], &mut gz, &opts).unwrap();
    assert_eq!(ginfo.diff_id, pinfo.diff_id);
    let (digest, size) = ginfo.compressed.unwrap();
    assert_eq!(size, gz.len() as u64);
    assert_eq!(digest.to_string(), format!("sha256:{:x}", Sha256::digest(&gz)));
    let mut dec = Vec::new();
    std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&gz[..]), &mut dec).unwrap();
    assert_eq!(dec, plain);
    let mut gz2 = Vec::new();
    assert_eq!(convert(&input[..], &mut gz2, &opts).unwrap(), ginfo);
    assert_eq!(gz, gz2);
}

#[test]
fn failed_conversion_leaves_nothing_at_the_output_path() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("upper.tar");
    let output = dir.path().join("layer.tar");
    std::fs::write(&input, tar_of(&[E::file(".wh.evil", b"")])).unwrap();
    let err = convert_file_to_path(&input, &output, &ConvertOptions::default(), &|| false).unwrap_err();
    assert!(err.to_string().contains(".wh.evil"));
    assert!(!output.exists());
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1, "temp file left behind");
    std::fs::write(&input, tar_of(&[E::file("ok", b"1")])).unwrap();
    let info = convert_file_to_path(&input, &output, &ConvertOptions::default(), &|| false).unwrap();
    assert_eq!(std::fs::metadata(&output).unwrap().len(), info.size);
}

#[test]
fn an_upper_tar_that_is_a_symlink_or_fifo_is_refused() {
    // The guest writes the exchange share: upper.tar could name a host file
    // or block the host on a FIFO.
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("secret.tar");
    std::fs::write(&secret, tar_of(&[E::file("host-secret", b"s")])).unwrap();
    let input = dir.path().join("upper.tar");
    let output = dir.path().join("layer.tar");
    std::os::unix::fs::symlink(&secret, &input).unwrap();
    assert!(convert_file_to_path(&input, &output, &ConvertOptions::default(), &|| false).is_err(), "symlink followed");
    std::fs::remove_file(&input).unwrap();
    rustix::fs::mknodat(rustix::fs::CWD, &input, rustix::fs::FileType::Fifo, 0o644.into(), 0).unwrap();
    assert!(convert_file_to_path(&input, &output, &ConvertOptions::default(), &|| false).is_err(), "FIFO read");
    assert!(!output.exists());
}

#[test]
fn truncated_input_is_an_error() {
    let input = tar_of(&[E::file("f", &vec![1u8; 5000])]);
    let mut out = Vec::new();
    assert!(convert(&input[..1024], &mut out, &ConvertOptions::default()).is_err());
}

/// A real upper dir, made the way overlayfs makes one, archived by GNU tar
/// the way the agent does (`--xattrs --xattrs-include='*'`).
#[test]
fn gnu_tar_of_real_upper_dir_converts() {
    if !require_root("gnu_tar_of_real_upper_dir_converts") {
        return;
    }
    use std::os::unix::fs::PermissionsExt;
    let t = tempfile::tempdir().unwrap();
    let u = t.path().join("upper");
    std::fs::create_dir_all(u.join("etc/opaque")).unwrap();
    std::fs::write(u.join("etc/opaque/kept"), b"k").unwrap();
    rustix::fs::lsetxattr(u.join("etc/opaque"), "trusted.overlay.opaque", b"y", rustix::fs::XattrFlags::empty())
        .unwrap();
    rustix::fs::mknodat(
        rustix::fs::CWD,
        u.join("etc/gone"),
        rustix::fs::FileType::CharacterDevice,
        rustix::fs::Mode::empty(),
        0,
    )
    .unwrap();
    std::fs::hard_link(u.join("etc/gone"), u.join("gone2")).unwrap();
    std::fs::write(u.join("etc/bin"), b"elf").unwrap();
    std::fs::set_permissions(u.join("etc/bin"), std::fs::Permissions::from_mode(0o755)).unwrap();
    let cap = b"\x01\x00\x00\x02\x00\x20\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00";
    rustix::fs::lsetxattr(u.join("etc/bin"), "security.capability", cap, rustix::fs::XattrFlags::empty()).unwrap();
    std::fs::hard_link(u.join("etc/bin"), u.join("a-bin")).unwrap();
    rustix::fs::mknodat(
        rustix::fs::CWD,
        u.join("null"),
        rustix::fs::FileType::CharacterDevice,
        rustix::fs::Mode::from_raw_mode(0o666),
        rustix::fs::makedev(1, 3),
    )
    .unwrap();
    let tarball = t.path().join("upper.tar");
    let st = Command::new("tar")
        .args(["--xattrs", "--xattrs-include=*", "--numeric-owner", "-C"])
        .arg(&u)
        .arg("-cf")
        .arg(&tarball)
        .arg(".")
        .status()
        .unwrap();
    assert!(st.success());
    let out_path = t.path().join("layer.tar");
    let info =
        convert_file_to_path(&tarball, &out_path, &ConvertOptions { source_date_epoch: Some(1), gzip: None }, &|| {
            false
        })
        .unwrap();
    let out = std::fs::read(&out_path).unwrap();
    assert_eq!(info.size, out.len() as u64);
    let got = read_layer(&out);
    assert_eq!(
        paths(&got),
        [
            ".wh.gone2",
            "a-bin",
            "etc/",
            "etc/.wh.gone",
            "etc/bin",
            "etc/opaque/",
            "etc/opaque/.wh..wh..opq",
            "etc/opaque/kept",
            "null"
        ]
    );
    assert_eq!(get(&got, "a-bin").data, b"elf");
    assert_eq!(get(&got, "a-bin").xattrs, vec![("security.capability".to_string(), cap.to_vec())]);
    assert_eq!(get(&got, "etc/bin").link, "a-bin");
    assert_eq!(get(&got, "null").dev, (1, 3));
    assert!(got.iter().all(|g| g.mtime <= 1));
    assert!(get(&got, "etc/opaque/").xattrs.is_empty());
}

#[test]
fn seekable_input_may_start_mid_stream() {
    let entries = [E::file("b", &vec![2u8; 300_000]), E::file("a", b"1"), E::dir("d/")];
    let (want, _) = conv(&entries).unwrap();
    let mut input = b"junk!!!".to_vec();
    input.extend(tar_of(&entries));
    let mut cur = Cursor::new(input);
    cur.set_position(7);
    let mut out = Vec::new();
    convert_seekable(cur, &mut out, &ConvertOptions::default()).unwrap();
    assert_eq!(out, want);
}

#[test]
fn an_archive_cut_inside_an_entry_fails_in_both_modes() {
    // Found by the layer_convert fuzz target: the seekable reader skipped
    // entry data by seeking past the end of the input and took the cut
    // archive for a whole one.
    let whole = tar_of(&[E::dir("a/"), E::file("a/f", &[7u8; 2000]), E::file("b", b"b")]);
    for cut in [512 * 3, 512 * 3 + 100, 512 * 6 + 10] {
        let input = &whole[..cut];
        assert!(convert(input, Vec::new(), &ConvertOptions::default()).is_err(), "streaming, cut at {cut}");
        let seekable = convert_seekable(Cursor::new(input), Vec::new(), &ConvertOptions::default());
        assert!(seekable.is_err(), "seekable, cut at {cut}: {seekable:?}");
    }
    let regression = std::fs::read(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("fuzz/regressions/layer_convert/truncated-entry-seekable-accepted"),
    )
    .unwrap();
    assert!(convert_seekable(Cursor::new(&regression), Vec::new(), &ConvertOptions::default()).is_err());
}

#[test]
fn a_stopped_conversion_leaves_no_output() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("upper.tar");
    std::fs::write(&input, tar_of(&[E::file("a", &vec![7u8; 1 << 20])])).unwrap();
    let output = dir.path().join("layer.tar");
    let calls = std::cell::Cell::new(0);
    // Stopped part way through the writes.
    let stop = || {
        calls.set(calls.get() + 1);
        calls.get() > 3
    };
    assert!(convert_file_to_path(&input, &output, &ConvertOptions::default(), &stop).is_err());
    assert!(!output.exists());
    let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(left.len(), 1, "only the input: {left:?}");
    convert_file_to_path(&input, &output, &ConvertOptions::default(), &|| false).unwrap();
}
