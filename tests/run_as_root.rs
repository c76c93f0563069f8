//! e2e: the product. A runAsRoot script on a two-layer busybox base image
//! adds a user and a group, chowns a file, makes a setuid binary, a device
//! node, a symlink, a hardlink pair and a file capability, deletes a base
//! file, replaces a base directory and makes a base symlink a directory (and checks it ignores no signals, as
//! a shell's child would not). Every change must be exact in the
//! layer; the same job twice gives the same bytes; umoci applying base +
//! new layer gives the tree the guest saw after the script.

mod common;

use common::runas::{make_base_image, make_store, read_layer, rootlayer, write_script, LayerEntry};
use std::collections::BTreeMap;
use std::path::Path;

fn script(store: &Path) -> String {
    format!(
        r#"#!{store}/bb/bin/sh
set -e
export PATH={store}/bb/bin:{store}/tools/bin
echo 'app:x:1234:1234:app:/home/app:/bin/sh' >> /etc/passwd
echo 'app:x:1234:' >> /etc/group
busybox mkdir -p /home/app
busybox chown 1234:1234 /home/app /data/owned
busybox cp /bin/busybox /usr/local/bin/suid-tool
busybox chmod 4755 /usr/local/bin/suid-tool
busybox mknod /etc/null-dev c 1 3
busybox ln -s /data/target /etc/link
echo same-inode > /etc/hl1
busybox ln /etc/hl1 /etc/hl2
busybox cp /bin/busybox /usr/local/bin/netd
setcap-raw /usr/local/bin/netd
busybox rm /old/file
busybox rm -rf /d
busybox mkdir /d
echo fresh > /d/new
busybox rm /bin/touch
busybox mkdir /bin/touch
echo in > /bin/touch/in
echo added > /keep/added
test ! -e /keep/opaque-base
test -e /opt/contents/from-contents
busybox grep -q '^SigIgn:[[:space:]]*0*$' /proc/self/status
echo "script ran as uid $(busybox id -u) in $(busybox hostname)"
"#,
        store = store.display()
    )
}

/// Entries by path, directories without their trailing slash.
fn by_path(entries: &[(String, LayerEntry)]) -> BTreeMap<String, LayerEntry> {
    entries.iter().map(|(p, e)| (p.trim_end_matches('/').to_string(), e.clone())).collect()
}

#[test]
fn run_as_root_changes_are_exact_deterministic_and_match_umoci() {
    let Some(g) = common::guest("run_as_root_changes_are_exact_deterministic_and_match_umoci") else { return };
    let tmp = common::tempdir();
    let store = make_store(tmp.path());
    let base = make_base_image(tmp.path());
    let script_path = tmp.path().join("script.sh");
    write_script(&script_path, &script(&store));
    let out1 = tmp.path().join("out-layer");
    let out2 = tmp.path().join("out-oci");
    let listing = tmp.path().join("merged.list");
    // --contents: a file, and a symlink to a directory (followed: rsync -k).
    let contents = tmp.path().join("contents");
    std::fs::create_dir_all(contents.join("opt/contents")).unwrap();
    std::fs::write(contents.join("opt/contents/from-contents"), "copied in\n").unwrap();
    // As with Nix store paths, the link points into a --store, which the
    // guest sees at the same path.
    std::fs::create_dir_all(store.join("pkg/share")).unwrap();
    std::fs::write(store.join("pkg/share/inside"), "through the link\n").unwrap();
    std::os::unix::fs::symlink(store.join("pkg/share"), contents.join("linked-dir")).unwrap();
    // --extra-commands: run in the layer directory, not chrooted.
    let extra = tmp.path().join("extra.sh");
    write_script(&extra, &format!("#!{}/bb/bin/sh\necho from-extra-commands > ./extra-file\n", store.display()));

    let common_args = |out: &Path, format: &str| -> Vec<String> {
        vec![
            "run-as-root".into(),
            "--script".into(),
            script_path.display().to_string(),
            "--from-image".into(),
            base.display().to_string(),
            "--store".into(),
            store.display().to_string(),
            "--mem-size".into(),
            "256".into(),
            "--disk-size".into(),
            "128".into(),
            "--timeout".into(),
            "600".into(),
            "--source-date-epoch".into(),
            "1700000000".into(),
            "--contents".into(),
            contents.display().to_string(),
            "--extra-commands".into(),
            extra.display().to_string(),
            "--format".into(),
            format.into(),
            "--json".into(),
            "--out".into(),
            out.display().to_string(),
        ]
    };
    let args1 = common_args(&out1, "layer");
    let (code, stdout, stderr) = rootlayer(&g, &args1.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(code, 0, "run-as-root failed");
    assert!(stderr.contains("script ran as uid 0 in localhost"), "script output streams to stderr");
    let json: serde_json::Value = serde_json::from_str(stdout.trim()).expect("--json result");
    assert_eq!(json["status"], "ok");
    let diff_id = json["diff_id"].as_str().unwrap().to_string();

    // mkRootLayer's files.
    assert_eq!(std::fs::read_to_string(out1.join("VERSION")).unwrap().trim(), "1.0");
    assert_eq!(std::fs::read_to_string(out1.join("layer.sha256")).unwrap().trim(), diff_id);
    let layer = std::fs::read(out1.join("layer.tar")).unwrap();
    if let Some(user) = common::test_user() {
        use std::os::unix::fs::MetadataExt;
        let meta = std::fs::metadata(out1.join("layer.tar")).unwrap();
        assert_eq!((meta.uid(), meta.gid()), (user.uid, user.gid), "written by the unprivileged test user");
    }
    assert_eq!(format!("sha256:{}", common::image::sha256_hex(&layer)), diff_id);
    let entries = read_layer(&layer);
    let names: Vec<&str> = entries.iter().map(|(p, _)| p.as_str()).collect();
    eprintln!("layer entries: {names:#?}");
    let e = by_path(&entries);

    let passwd = String::from_utf8_lossy(&e["etc/passwd"].data).into_owned();
    assert!(passwd.contains("app:x:1234:1234:app:/home/app:/bin/sh"), "{passwd}");
    assert!(String::from_utf8_lossy(&e["etc/group"].data).contains("app:x:1234:"));
    assert_eq!((e["data/owned"].uid, e["data/owned"].gid), (1234, 1234));
    assert_eq!((e["home/app"].kind, e["home/app"].uid), ('d', 1234));
    assert_eq!(e["usr/local/bin/suid-tool"].mode & 0o7777, 0o4755);
    assert_eq!(e["usr/local/bin/suid-tool"].uid, 0);
    assert_eq!((e["etc/null-dev"].kind, e["etc/null-dev"].dev), ('c', Some((1, 3))));
    assert_eq!((e["etc/link"].kind, e["etc/link"].link.as_deref()), ('l', Some("/data/target")));
    assert_eq!(e["etc/hl1"].kind, 'f');
    assert_eq!((e["etc/hl2"].kind, e["etc/hl2"].link.as_deref()), ('h', Some("etc/hl1")), "hardlink kept as a link");
    let cap = e["usr/local/bin/netd"].xattrs.get("security.capability").expect("file capability kept");
    assert_eq!(cap[..8], [0x01, 0x00, 0x00, 0x02, 0x00, 0x04, 0x00, 0x00]);
    assert_eq!(e["old/.wh.file"].kind, 'f', "deleted base file is a whiteout");
    assert!(!e.contains_key("old/stays"), "unchanged base files are not in the layer");
    assert_eq!(e["d"].kind, 'd');
    assert!(e.contains_key("d/.wh..wh..opq"), "replaced base dir is opaque");
    assert_eq!(e["d/new"].data, b"fresh\n");
    assert_eq!(
        (e["bin/touch"].kind, e["bin/touch/in"].data.as_slice()),
        ('d', &b"in\n"[..]),
        "a symlink made a directory"
    );
    assert_eq!(e["keep/added"].data, b"added\n", "a file under a base layer's opaque dir");
    assert!(!e.contains_key("keep/opaque-base"));
    assert_eq!(
        (e["opt/contents/from-contents"].uid, e["opt/contents/from-contents"].data.as_slice()),
        (0, &b"copied in\n"[..])
    );
    assert_eq!(e["linked-dir"].kind, 'd', "a symlink to a directory in --contents is followed");
    assert_eq!(e["linked-dir/inside"].data, b"through the link\n");
    assert_eq!(e["extra-file"].data, b"from-extra-commands\n", "--extra-commands ran in the layer");
    for p in names.iter() {
        assert!(!p.starts_with("dev") && !p.starts_with("proc") && !p.starts_with("sys"), "mount point leaked: {p}");
        assert!(!p.starts_with(store.strip_prefix("/").unwrap().to_str().unwrap()), "store mount point leaked: {p}");
    }
    if store.starts_with("/tmp/") {
        // The store's mount point was made under the image's /tmp, which
        // copied /tmp up; unchanged, it must not be in the layer.
        assert!(!e.contains_key("tmp"), "an untouched base directory leaked into the layer");
    }
    let overlay_xattrs = entries.iter().flat_map(|(_, e)| e.xattrs.keys()).filter(|k| k.contains("overlay")).count();
    assert_eq!(overlay_xattrs, 0, "no overlay xattrs leak into the layer");
    for (p, e) in &entries {
        assert!(e.kind != 'f' || !p.contains(".wh.") || e.data.is_empty());
    }

    // The same job again (as an OCI layout this time): the same layer bytes.
    let mut args2 = common_args(&out2, "oci");
    args2.extend(["--merged-listing".into(), listing.display().to_string()]);
    let (code, stdout2, _) = rootlayer(&g, &args2.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(code, 0, "second run failed");
    let json2: serde_json::Value = serde_json::from_str(stdout2.trim()).unwrap();
    assert_eq!(json2["diff_id"].as_str().unwrap(), diff_id, "same input, same digest");
    let blob = out2.join("blobs/sha256").join(diff_id.trim_start_matches("sha256:"));
    assert_eq!(std::fs::read(blob).unwrap(), layer, "same input, same bytes");

    // An independent reader: umoci applies base + new layer; its tree must be
    // the tree the guest saw after the script.
    if !common::image::is_root() {
        eprintln!("SKIP umoci comparison: umoci unpack needs root");
        return;
    }
    let bundle = tmp.path().join("bundle");
    let rootfs = common::image::umoci_unpack(&out2, "latest", &bundle);
    // The host's listing of base + layer (--merged-listing), extra
    // commands' file included, line for line what umoci unpacked.
    let ours = std::fs::read_to_string(&listing).unwrap();
    let theirs = common::runas::listing(&rootfs);
    assert!(ours.lines().any(|l| l.starts_with("extra-file\t")), "the extra commands' file is in the listing");
    let ours: Vec<&str> = ours.lines().collect();
    let theirs: Vec<&str> = theirs.lines().collect();
    let only_ours: Vec<_> = ours.iter().filter(|l| !theirs.contains(l)).collect();
    let only_theirs: Vec<_> = theirs.iter().filter(|l| !ours.contains(l)).collect();
    assert!(only_ours.is_empty() && only_theirs.is_empty(), "host: {only_ours:#?}\numoci: {only_theirs:#?}");
}
