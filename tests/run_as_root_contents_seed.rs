//! e2e: copyToRoot at real size, against the seed's recipe run for real as
//! root. Two `--contents` dirs (20,000 files, symlinks, a link to a
//! directory inside and one to a directory outside them, a setuid file,
//! overlapping paths) over a base that has some of the same paths, and a
//! script that edits, deletes, empties and refills, re-owns, hardlinks and
//! moves contents entries. With and without `--keep-contents-dirlinks`
//! (the second under `ulimit -n 256`), the image rootlayer writes, unpacked
//! by umoci, equals path by path the tree the seed's recipe leaves (base
//! unpacked, contents rsynced into the upper dir, overlayfs, `unshare
//! -imnpuf --mount-proc chroot`): type, mode, owner, content, link target,
//! device, xattrs, hardlinks. extraCommands run in the layer dir, which
//! holds the contents, as in the seed.

mod common;

use common::seed::{full_listing, Seed};
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

const SCRIPT: &str = r#"set -e
echo edited >> /etc/shared.conf
rm /usr/share/both/from-contents
rm /etc/base-only
rm /share/data/d007/f0700
rm -rf /share/data/d002
mkdir /share/data/d002
echo fresh > /share/data/d002/fresh
rm -rf /usr/share/both
mkdir /usr/share/both
echo new > /usr/share/both/new
chmod 0640 /share/data/d003/f0300
chown 1000:1000 /share/data/d003/f0301
ln /bin/tool /bin/tool-hard
mv /share/small /share/moved
rm -rf /lib/pkg
echo over > /bin/alias
echo "script done"
"#;

/// extraCommands: run in the layer dir, which holds the contents.
const EXTRA: &str = r#"set -e
rm share/data/d005/f0500
echo extra > share/data/d006/extra
chmod 0700 share/data/d008
ln -s bin/tool tool-link
test -f bin/tool2
"#;

/// A single-layer busybox base with paths the contents share.
fn base_layer(root: &Path) -> PathBuf {
    let l = root.join("base");
    for d in ["bin", "etc", "usr/share/both", "share", "dev", "proc", "sys", "tmp", "run"] {
        std::fs::create_dir_all(l.join(d)).unwrap();
    }
    std::fs::copy(common::runas::BUSYBOX, l.join("bin/busybox")).unwrap();
    for a in ["sh", "echo", "rm", "mkdir", "chmod", "chown", "ln", "mv", "cat"] {
        symlink("busybox", l.join("bin").join(a)).unwrap();
    }
    std::fs::write(l.join("etc/shared.conf"), "from the base\n").unwrap();
    std::fs::write(l.join("etc/base-only"), "deleted by the script\n").unwrap();
    std::fs::write(l.join("usr/share/both/from-base"), "hidden once the script remakes the dir\n").unwrap();
    let tar = root.join("base.tar");
    common::runas::layer_of_dir(&l, &tar);
    tar
}

/// Two contents dirs and a directory outside them that one links to.
fn contents(root: &Path) -> Vec<PathBuf> {
    let (a, b, outside) = (root.join("c1"), root.join("c2"), root.join("outside"));
    for d in ["bin", "etc", "usr/share/both", "lib/pkg", "share/small"] {
        std::fs::create_dir_all(a.join(d)).unwrap();
    }
    for d in 0..200 {
        let dir = a.join(format!("share/data/d{d:03}"));
        std::fs::create_dir_all(&dir).unwrap();
        for f in 0..100 {
            let n = d * 100 + f;
            std::fs::write(dir.join(format!("f{n:04}")), format!("file {n}\n")).unwrap();
        }
    }
    for f in 0..5 {
        std::fs::write(a.join(format!("share/small/s{f}")), format!("small {f}\n")).unwrap();
    }
    std::fs::write(a.join("bin/tool"), "#!/bin/sh\necho tool\n").unwrap();
    std::fs::set_permissions(a.join("bin/tool"), std::fs::Permissions::from_mode(0o4755)).unwrap();
    symlink("tool", a.join("bin/alias")).unwrap();
    std::fs::write(a.join("etc/shared.conf"), "from contents 1\n").unwrap();
    std::fs::write(a.join("etc/secret"), "0600\n").unwrap();
    std::fs::set_permissions(a.join("etc/secret"), std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::write(a.join("usr/share/both/from-contents"), "deleted by the script\n").unwrap();
    std::fs::write(a.join("lib/pkg/lib.so"), "elf\n").unwrap();
    symlink("share/data/d001", a.join("docs")).unwrap();
    std::fs::create_dir_all(outside.join("share")).unwrap();
    std::fs::write(outside.join("share/readme"), "outside the contents\n").unwrap();
    symlink(outside.join("share"), a.join("outside-share")).unwrap();
    // The second dir overlaps the first.
    for d in ["etc", "bin", "docs/extra", "share/data/d000"] {
        std::fs::create_dir_all(b.join(d)).unwrap();
    }
    // Another size: rsync's quick check skips a file of the same size and
    // mtime (so the seed keeps the first of two equal-sized store files,
    // all of mtime 1); rootlayer takes the later one, as the order says.
    std::fs::write(b.join("etc/shared.conf"), "from contents two\n").unwrap();
    std::fs::write(b.join("bin/tool2"), "second\n").unwrap();
    std::fs::write(b.join("docs/extra/more"), "written through docs\n").unwrap();
    std::fs::write(b.join("share/data/d000/f0000"), "replaced by contents 2\n").unwrap();
    // rootlayer runs as the test user: the contents must be its to read.
    if let Some(u) = common::test_user() {
        for d in [&a, &b, &outside] {
            let st = Command::new("chown").arg("-R").arg(format!("{}:{}", u.uid, u.gid)).arg(d).status().unwrap();
            assert!(st.success());
        }
        // chown clears the setuid bit: set it again.
        std::fs::set_permissions(a.join("bin/tool"), std::fs::Permissions::from_mode(0o4755)).unwrap();
    }
    vec![a, b]
}

/// rootlayer's image of the job, unpacked by umoci.
fn rootlayer_tree(
    g: &common::Guest,
    tmp: &Path,
    base: &Path,
    c: &[PathBuf],
    keep: bool,
    nofile: Option<u64>,
) -> PathBuf {
    let name = if keep { "keep" } else { "follow" };
    let script = tmp.join(format!("script-{name}.sh"));
    common::runas::write_script(&script, &format!("#!/bin/sh\n{SCRIPT}"));
    let store = tmp.join("store");
    let extra = tmp.join(format!("extra-{name}.sh"));
    let sh = store.join("bb/bin/sh");
    common::runas::write_script(
        &extra,
        &format!("#!{}\nexport PATH={}\n{EXTRA}", sh.display(), store.join("bb/bin").display()),
    );
    let out = tmp.join(format!("out-{name}"));
    let mut cmd = common::rootlayer();
    cmd.args(["run-as-root", "--from-image"]).arg(base).arg("--script").arg(&script);
    cmd.arg("--extra-commands").arg(&extra).arg("--store").arg(&store);
    for d in c {
        cmd.arg("--contents").arg(d);
    }
    if keep {
        cmd.arg("--keep-contents-dirlinks");
    }
    cmd.args(["--format", "oci", "--tag", "t", "--timeout", "900", "--out"]).arg(&out);
    cmd.arg("--kernel").arg(&g.kernel).arg("--initrd").arg(&g.initrd);
    if let Some(n) = nofile {
        common::limit_open_files(&mut cmd, n);
    }
    let (code, stderr) = common::run(&mut cmd);
    assert_eq!(code, 0, "rootlayer ({name}) failed:\n{stderr}");
    assert!(stderr.contains("script done"), "the script ran to its end");
    let bundle = tmp.join(format!("bundle-{name}"));
    common::image::umoci_unpack(&out, "t", &bundle)
}

/// The whiteouts of the image's new (last) layer whose path the base layer
/// does not have.
fn stray_whiteouts(oci: &Path, base_layer: &Path) -> Vec<String> {
    let json = |p: PathBuf| -> serde_json::Value { serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap() };
    let blob = |d: &serde_json::Value| oci.join("blobs/sha256").join(d.as_str().unwrap().trim_start_matches("sha256:"));
    let index = json(oci.join("index.json"));
    let manifest = json(blob(&index["manifests"][0]["digest"]));
    let layers = manifest["layers"].as_array().unwrap();
    let new = std::fs::read(blob(&layers[layers.len() - 1]["digest"])).unwrap();
    let base: std::collections::HashSet<String> = common::runas::read_layer(&std::fs::read(base_layer).unwrap())
        .into_iter()
        .map(|(p, _)| p.trim_start_matches("./").trim_end_matches('/').to_string())
        .collect();
    common::runas::read_layer(&new)
        .into_iter()
        .filter_map(|(p, _)| {
            let (dir, name) = p.rsplit_once('/').map_or(("", p.as_str()), |(d, n)| (d, n));
            let hidden = name.strip_prefix(".wh.").filter(|n| !n.starts_with(".wh."))?;
            let hidden = if dir.is_empty() { hidden.to_string() } else { format!("{dir}/{hidden}") };
            (!base.contains(&hidden)).then_some(hidden)
        })
        .collect()
}

fn base_docker_archive(tmp: &Path, layer: &Path) -> PathBuf {
    let archive = tmp.join("base-image.tar");
    let layers = vec![std::fs::read(layer).unwrap()];
    common::image::docker_archive(&archive, &[(&["base:latest"], &layers)], false);
    common::give_to_test_user(tmp);
    archive
}

#[test]
fn run_as_root_contents_match_the_seed_recipe() {
    let Some(g) = common::guest("run_as_root_contents_match_the_seed_recipe") else { return };
    if !common::image::is_root() {
        assert!(std::env::var_os("ROOTLAYER_REQUIRE_VM").is_none(), "scripts/test runs the tests as root");
        eprintln!("SKIP run_as_root_contents_match_the_seed_recipe: the seed's recipe needs root");
        return;
    }
    let tmp = common::tempdir();
    let layer = base_layer(tmp.path());
    let base = base_docker_archive(tmp.path(), &layer);
    let c = contents(tmp.path());
    common::runas::make_store(tmp.path());
    // Mount points the seed's recipe binds over (and the base has).
    let skip = ["dev", "proc", "sys"];
    for (keep, nofile) in [(false, None), (true, Some(256))] {
        let ours = full_listing(&rootlayer_tree(&g, tmp.path(), &base, &c, keep, nofile), &skip);
        let work = tmp.path().join(format!("seed-{keep}"));
        let seed = Seed::run_with_extra(&work, std::slice::from_ref(&layer), &c, keep, SCRIPT, Some(EXTRA));
        let theirs = full_listing(&seed.merged, &skip);
        drop(seed);
        assert!(ours.len() > 20_000, "the contents are in the image: {} paths", ours.len());
        let only = |a: &std::collections::BTreeMap<String, String>, b: &std::collections::BTreeMap<String, String>| {
            a.iter()
                .filter(|(k, v)| b.get(*k) != Some(v))
                .take(20)
                .map(|(k, v)| format!("{k}: {v}"))
                .collect::<Vec<_>>()
        };
        assert!(
            ours == theirs,
            "keep_dirlinks={keep}: rootlayer's image differs from the seed's tree\nrootlayer only or different: {:#?}\nseed only or different: {:#?}",
            only(&ours, &theirs),
            only(&theirs, &ours)
        );
        // What the scenario is about, spelled out.
        assert!(ours["etc/shared.conf"].contains("(25 bytes)"), "contents 2's, edited: {}", ours["etc/shared.conf"]);
        assert!(!ours.contains_key("usr/share/both/from-base") && ours.contains_key("usr/share/both/new"));
        assert!(!ours.contains_key("share/data/d002/f0200") && ours.contains_key("share/data/d002/fresh"));
        assert!(ours["bin/tool"].contains("4755 0:0") && ours["bin/tool"].contains("hardlinked"));
        let docs = &ours["docs"];
        assert_eq!(docs.starts_with("link"), keep, "docs: {docs}");
        let extra = if keep { "share/data/d001/extra/more" } else { "docs/extra/more" };
        assert!(ours.contains_key(extra), "{extra}");
        assert!(!ours.contains_key("share/data/d005/f0500") && ours.contains_key("share/data/d006/extra"));
        assert!(ours["share/data/d008"].contains(" 700 "), "extraCommands see the contents");
        // A whiteout only where the base has the path: what the script
        // deleted of the contents alone is simply not in the layer.
        let name = if keep { "keep" } else { "follow" };
        let stray = stray_whiteouts(&tmp.path().join(format!("out-{name}")), &layer);
        assert!(stray.is_empty(), "whiteouts of paths the base does not have: {stray:?}");
    }
}
