//! Cross-checks against independent implementations: the kernel's overlayfs
//! makes the upper dir and the expected tree, GNU tar archives it as the agent
//! does, `umoci` applies our layer onto the base, and our own unpacker's lower
//! dirs are mounted as an overlay again. Plus a property test over random
//! upper trees.

use std::collections::BTreeMap;
use std::fs;
use std::io::Cursor;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use proptest::prelude::*;
use rustix::fs::{makedev, mknodat, FileType, Mode, XattrFlags, CWD};
use sha2::{Digest, Sha256};

use super::test_util::{is_root, read_layer, require_root, snapshot, tar_of, Meta, Node, E};
use super::{convert, convert_seekable, rules, unpack, ConvertOptions, UnpackOptions};

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn overlay_mount(lower: &str, upper: Option<(&Path, &Path)>, merged: &Path) -> std::io::Result<()> {
    let mut opts = format!("lowerdir={lower}");
    if let Some((u, w)) = upper {
        opts.push_str(&format!(",upperdir={},workdir={}", u.display(), w.display()));
    }
    let out = Command::new("mount").args(["-t", "overlay", "overlay", "-o", &opts]).arg(merged).output()?;
    if out.status.success() {
        Ok(())
    } else {
        Err(std::io::Error::other(String::from_utf8_lossy(&out.stderr).into_owned()))
    }
}

struct Umount<'a>(&'a Path);
impl Drop for Umount<'_> {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.0).status();
    }
}

/// GNU tar of a directory, as the agent archives the upper dir.
fn gnu_tar(dir: &Path, out: &Path) {
    run(Command::new("tar")
        .args(["--xattrs", "--xattrs-include=*", "--numeric-owner", "--sort=name", "-C"])
        .arg(dir)
        .arg("-cf")
        .arg(out)
        .arg("."));
}

fn blob(layout: &Path, bytes: &[u8]) -> (String, usize) {
    let hex: String = Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect();
    fs::write(layout.join("blobs/sha256").join(&hex), bytes).unwrap();
    (format!("sha256:{hex}"), bytes.len())
}

/// An OCI image layout holding `layers` (uncompressed tars), tagged latest.
fn oci_layout(layout: &Path, layers: &[Vec<u8>]) {
    fs::create_dir_all(layout.join("blobs/sha256")).unwrap();
    fs::write(layout.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    let descs: Vec<(String, usize)> = layers.iter().map(|l| blob(layout, l)).collect();
    let diff_ids: Vec<String> = descs.iter().map(|(d, _)| format!("\"{d}\"")).collect();
    let config = format!(
        r#"{{"architecture":"amd64","os":"linux","config":{{}},"rootfs":{{"type":"layers","diff_ids":[{}]}}}}"#,
        diff_ids.join(",")
    );
    let (cd, cs) = blob(layout, config.as_bytes());
    let layer_descs: Vec<String> = descs
        .iter()
        .map(|(d, s)| format!(r#"{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"{d}","size":{s}}}"#))
        .collect();
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{cd}","size":{cs}}},"layers":[{}]}}"#,
        layer_descs.join(",")
    );
    let (md, ms) = blob(layout, manifest.as_bytes());
    fs::write(
        layout.join("index.json"),
        format!(
            r#"{{"schemaVersion":2,"manifests":[{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{md}","size":{ms},"annotations":{{"org.opencontainers.image.ref.name":"latest"}}}}]}}"#
        ),
    )
    .unwrap();
}

fn diff(want: &BTreeMap<String, Meta>, got: &BTreeMap<String, Meta>) -> Vec<String> {
    let mut out = Vec::new();
    for (p, w) in want {
        match got.get(p) {
            None => out.push(format!("missing {p}")),
            Some(g) if g != w => out.push(format!("{p}: want {w:?} got {g:?}")),
            _ => {}
        }
    }
    for p in got.keys().filter(|p| !want.contains_key(*p)) {
        out.push(format!("extra {p}"));
    }
    out
}

const CAP: &[u8] = b"\x01\x00\x00\x02\x00\x20\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00";

fn set(p: &Path, k: &str, v: &[u8]) {
    rustix::fs::lsetxattr(p, k, v, XattrFlags::empty()).unwrap();
}

/// The base image: a tree on disk.
fn make_base(b: &Path) {
    for d in ["etc/opaque/sub", "bin", "del/deep", "keep", "usr/share"] {
        fs::create_dir_all(b.join(d)).unwrap();
    }
    fs::write(b.join("etc/passwd"), b"root:x:0:0").unwrap();
    fs::write(b.join("etc/group"), b"root:x:0:").unwrap();
    fs::write(b.join("etc/opaque/old"), b"old").unwrap();
    fs::write(b.join("etc/opaque/sub/old2"), b"old2").unwrap();
    fs::write(b.join("bin/tool"), b"v1").unwrap();
    fs::write(b.join("del/deep/x"), b"x").unwrap();
    fs::write(b.join("keep/y"), b"y").unwrap();
    fs::hard_link(b.join("keep/y"), b.join("keep/y-link")).unwrap();
    std::os::unix::fs::symlink("../bin/tool", b.join("usr/share/tool")).unwrap();
}

/// The script's changes, made through the overlay mount like a real build.
fn change(m: &Path) {
    fs::remove_file(m.join("etc/passwd")).unwrap(); // whiteout
    fs::remove_dir_all(m.join("etc/opaque")).unwrap(); // opaque dir
    fs::create_dir(m.join("etc/opaque")).unwrap();
    fs::write(m.join("etc/opaque/new"), b"new").unwrap();
    fs::remove_dir_all(m.join("del")).unwrap(); // whiteout of a directory
    fs::write(m.join("bin/tool"), b"v2").unwrap(); // modified
    fs::write(m.join("bin/ping"), b"elf").unwrap();
    std::os::unix::fs::lchown(m.join("bin/ping"), Some(0), Some(0)).unwrap();
    fs::set_permissions(m.join("bin/ping"), fs::Permissions::from_mode(0o4755)).unwrap();
    set(&m.join("bin/ping"), "security.capability", CAP);
    fs::hard_link(m.join("bin/ping"), m.join("bin/ping6")).unwrap(); // hardlink
    fs::hard_link(m.join("bin/ping"), m.join("a-ping")).unwrap();
    fs::create_dir(m.join("dev")).unwrap();
    mknodat(CWD, m.join("dev/null"), FileType::CharacterDevice, Mode::from_raw_mode(0o666), makedev(1, 3)).unwrap();
    fs::set_permissions(m.join("dev/null"), fs::Permissions::from_mode(0o666)).unwrap();
    mknodat(CWD, m.join("dev/fifo"), FileType::Fifo, Mode::from_raw_mode(0o600), 0).unwrap();
    fs::create_dir(m.join("home")).unwrap();
    fs::write(m.join("home/f"), b"user").unwrap();
    std::os::unix::fs::lchown(m.join("home/f"), Some(1000), Some(100)).unwrap();
    std::os::unix::fs::lchown(m.join("home"), Some(1000), Some(100)).unwrap();
    set(&m.join("home/f"), "user.comment", b"hi");
    std::os::unix::fs::symlink("/bin/ping", m.join("bin/sym")).unwrap();
    fs::set_permissions(m.join("etc"), fs::Permissions::from_mode(0o750)).unwrap(); // copy-up, metadata only
    fs::remove_file(m.join("keep/y-link")).unwrap();
}

/// The whole chain against independent implementations: overlayfs makes the
/// upper dir, GNU tar archives it, we convert it; umoci applies base + our
/// layer, and our unpacker's lower dirs mounted as an overlay must both show
/// exactly the tree the original overlay mount showed.
#[test]
fn umoci_and_kernel_overlay_agree_with_the_original_merged_tree() {
    if !require_root("umoci_and_kernel_overlay_agree_with_the_original_merged_tree") {
        return;
    }
    if !Path::new("/usr/bin/umoci").exists() {
        eprintln!("skipping: /usr/bin/umoci not installed (apt-get install umoci)");
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let p = |s: &str| {
        let d = t.path().join(s);
        fs::create_dir_all(&d).unwrap();
        d
    };
    let (base, upper, work, merged) = (p("base"), p("upper"), p("work"), p("merged"));
    make_base(&base);
    if let Err(e) = overlay_mount(base.to_str().unwrap(), Some((&upper, &work)), &merged) {
        eprintln!("skipping: cannot mount overlayfs here: {e}");
        return;
    }
    let expected = {
        let _m = Umount(&merged);
        change(&merged);
        snapshot(&merged)
    };
    let base_tar = t.path().join("base.tar");
    gnu_tar(&base, &base_tar);
    let upper_tar = t.path().join("upper.tar");
    gnu_tar(&upper, &upper_tar);
    let mut layer = Vec::new();
    convert(fs::File::open(&upper_tar).unwrap(), &mut layer, &ConvertOptions::default()).unwrap();
    let base_bytes = fs::read(&base_tar).unwrap();

    // umoci, an independent OCI implementation, applies the layer.
    let layout = t.path().join("layout");
    oci_layout(&layout, &[base_bytes.clone(), layer.clone()]);
    let rootfs = t.path().join("rootfs");
    run(Command::new("umoci")
        .args(["raw", "unpack", "--image"])
        .arg(format!("{}:latest", layout.display()))
        .arg(&rootfs));
    let by_umoci = snapshot(&rootfs);
    let d = diff(&expected, &by_umoci);
    assert!(d.is_empty(), "umoci tree differs:\n{}", d.join("\n"));

    // Our unpacker, one lower dir per layer, read by the kernel.
    let (l0, l1, m2) = (p("l0"), p("l1"), p("m2"));
    unpack(&base_bytes[..], &l0, &UnpackOptions::default()).unwrap();
    unpack(&layer[..], &l1, &UnpackOptions::default()).unwrap();
    overlay_mount(&format!("{}:{}", l1.display(), l0.display()), None, &m2).unwrap();
    let ours = {
        let _m = Umount(&m2);
        snapshot(&m2)
    };
    let d = diff(&expected, &ours);
    assert!(d.is_empty(), "overlay of our lower dirs differs:\n{}", d.join("\n"));
}

/// What a random upper tree holds at a path.
#[derive(Debug, Clone, PartialEq)]
enum Model {
    Dir {
        opaque: bool,
    },
    File(Vec<u8>),
    /// A hardlink to the file at this (earlier) path.
    Link(String),
    Whiteout,
    Symlink(String),
}

const NAMES: &[&str] = &["a", "b", "a.b", "-c", "C", "zz", ".d", "ä"];

fn tree_strategy() -> impl Strategy<Value = BTreeMap<String, Model>> {
    let item = (prop::collection::vec(0..NAMES.len(), 1..4), 0u8..6, prop::collection::vec(any::<u8>(), 0..40));
    prop::collection::vec(item, 1..30).prop_map(|items| {
        let mut tree: BTreeMap<String, Model> = BTreeMap::new();
        let mut files: Vec<String> = Vec::new();
        'items: for (comps, kind, data) in items {
            let mut path = String::new();
            for (i, &c) in comps.iter().enumerate() {
                if !path.is_empty() {
                    path.push('/');
                }
                path.push_str(NAMES[c]);
                if i + 1 < comps.len() {
                    match tree.get(&path) {
                        Some(Model::Dir { .. }) => {}
                        Some(_) => continue 'items,
                        None => {
                            tree.insert(path.clone(), Model::Dir { opaque: false });
                        }
                    }
                }
            }
            if tree.contains_key(&path) {
                continue;
            }
            let m = match kind {
                0 => Model::Dir { opaque: false },
                1 => Model::Dir { opaque: true },
                2 if !files.is_empty() => Model::Link(files[data.len() % files.len()].clone()),
                3 => Model::Whiteout,
                4 => Model::Symlink(format!("../{}", data.len())),
                _ => {
                    files.push(path.clone());
                    Model::File(data)
                }
            };
            tree.insert(path, m);
        }
        tree
    })
}

fn entries_of(tree: &BTreeMap<String, Model>) -> Vec<E> {
    tree.iter()
        .map(|(p, m)| match m {
            Model::Dir { opaque: false } => E::dir(&format!("{p}/")),
            Model::Dir { opaque: true } => E::dir(&format!("{p}/")).xattr("trusted.overlay.opaque", b"y"),
            Model::File(d) => E::file(p, d).xattr("user.k", p.as_bytes()),
            Model::Link(t) => E::hardlink(p, t),
            Model::Whiteout => E::chardev(p, 0, 0),
            Model::Symlink(t) => E::symlink(p, t),
        })
        .collect()
}

/// Fisher-Yates with a small LCG: any input order must give the same layer.
fn shuffled(mut v: Vec<E>, mut seed: u64) -> Vec<E> {
    for i in (1..v.len()).rev() {
        seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        let j = usize::try_from((seed >> 33) % (i as u64 + 1)).unwrap_or(0);
        v.swap(i, j);
    }
    v
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn random_upper_trees_convert_canonically_and_unpack_to_the_same_tree(
        tree in tree_strategy(),
        seed in any::<u64>(),
    ) {
        let entries = entries_of(&tree);
        let mut out = Vec::new();
        let info = convert(&tar_of(&entries)[..], &mut out, &ConvertOptions::default()).unwrap();
        let mut out2 = Vec::new();
        let info2 = convert_seekable(Cursor::new(tar_of(&shuffled(entries, seed))), &mut out2, &ConvertOptions::default()).unwrap();
        prop_assert_eq!(&out, &out2);
        prop_assert_eq!(&info, &info2);

        let got = read_layer(&out);
        for w in got.windows(2) {
            let (a, b) = (w[0].path.trim_end_matches('/'), w[1].path.trim_end_matches('/'));
            prop_assert_eq!(rules::cmp_paths(a.as_bytes(), b.as_bytes()), std::cmp::Ordering::Less, "{} !< {}", a, b);
        }
        let by_path: BTreeMap<&str, _> = got.iter().map(|g| (g.path.trim_end_matches('/'), g)).collect();
        let mut first_of_inode: BTreeMap<String, String> = BTreeMap::new();
        for (p, m) in &tree {
            match m {
                Model::Dir { opaque } => {
                    prop_assert_eq!(by_path[p.as_str()].ty, b'5');
                    prop_assert_eq!(by_path.contains_key(format!("{p}/.wh..wh..opq").as_str()), *opaque);
                }
                Model::Whiteout => {
                    let (parent, name) = rules::split(p.as_bytes());
                    let wh = String::from_utf8(rules::join(parent, &[b".wh.", name].concat())).unwrap();
                    prop_assert!(by_path.contains_key(wh.as_str()), "no whiteout for {}", p);
                }
                Model::Symlink(t) => prop_assert_eq!(&by_path[p.as_str()].link, t),
                Model::File(_) | Model::Link(_) => {
                    let root = match m { Model::Link(t) => t.clone(), _ => p.clone() };
                    let Model::File(data) = &tree[&root] else { unreachable!() };
                    let g = by_path[p.as_str()];
                    let holder = if g.ty == b'1' { by_path[g.link.as_str()] } else { g };
                    prop_assert_eq!(&holder.data, data);
                    prop_assert_eq!(holder.ty, b'0');
                    // Every member of a group links to the same first path.
                    let first = first_of_inode.entry(root).or_insert_with(|| holder.path.clone());
                    prop_assert_eq!(first, &holder.path);
                }
            }
        }
        prop_assert_eq!(info.size, out.len() as u64);

        if !is_root() {
            return Ok(());
        }
        let t = tempfile::tempdir().unwrap();
        unpack(&out[..], t.path(), &UnpackOptions::default()).unwrap();
        let snap = snapshot(t.path());
        prop_assert_eq!(snap.len(), tree.len());
        for (p, m) in &tree {
            let s = &snap[p];
            match m {
                Model::Dir { opaque } => {
                    prop_assert_eq!(&s.node, &Node::Dir);
                    let has = s.xattrs.iter().any(|(k, v)| k == "trusted.overlay.opaque" && v == b"y");
                    prop_assert_eq!(has, *opaque);
                }
                Model::Whiteout => prop_assert_eq!(&s.node, &Node::Char(0)),
                Model::Symlink(t) => prop_assert_eq!(&s.node, &Node::Symlink(t.clone())),
                Model::File(d) => {
                    prop_assert_eq!(&s.node, &Node::File(d.clone()));
                    prop_assert_eq!(&s.xattrs, &vec![("user.k".to_string(), p.as_bytes().to_vec())]);
                }
                Model::Link(t) => {
                    prop_assert_eq!(&s.node, &snap[t].node);
                    prop_assert!(s.link_group.is_some() && s.link_group == snap[t].link_group);
                }
            }
        }
    }

    /// What our reader makes of the layer our writer wrote, applied over a
    /// base, is what the changeset it was written from means applied over
    /// the same base (the host's listing takes the second, umoci the first).
    #[test]
    fn a_written_layer_applies_over_a_base_as_its_changeset_does(
        base in tree_strategy(),
        upper in tree_strategy(),
    ) {
        use crate::layer::changeset::{Data, Source};
        use crate::layer::flatten::Tree;
        // Hardlinks to an earlier path, as every source gives them.
        prop_assume!(upper.iter().all(|(p, m)| !matches!(m, Model::Link(t) if t > p)));
        let base: BTreeMap<String, Model> = base
            .into_iter()
            .map(|(p, m)| match m {
                Model::Whiteout => (p, Model::File(b"was a whiteout".to_vec())),
                Model::Dir { .. } => (p, Model::Dir { opaque: false }),
                m => (p, m),
            })
            .collect();
        let base_tar = tar_of(&entries_of(&base));
        let upper_tar = tar_of(&entries_of(&upper));
        let mut layer = Vec::new();
        if convert(&upper_tar[..], &mut layer, &ConvertOptions::default()).is_err() {
            return Ok(());
        }
        let mut lower = Tree::default();
        // A base with a hardlink to a later path is no image.
        prop_assume!(lower.apply_tar(0, &base_tar[..]).is_ok());
        let mut read_back = lower.clone();
        let a = read_back.apply_tar(1, &layer[..]);
        let mut applied = lower;
        let b = applied.apply(&super::convert::tar_changes(Cursor::new(&upper_tar[..])).unwrap());
        prop_assert_eq!(a.is_ok(), b.is_ok(), "read back: {:?}, the changeset: {:?}", a, b);
        if a.is_err() {
            return Ok(());
        }
        /// The base's and the layer's bytes (Data::Layer 0 and 1), the
        /// upper tar's (Data::Input).
        struct Bytes<'a>(&'a [u8], &'a [u8], &'a [u8]);
        impl Source for Bytes<'_> {
            fn open(&mut self, d: &Data) -> std::io::Result<Box<dyn std::io::Read + '_>> {
                let (bytes, offset) = match *d {
                    Data::Layer(r) => ([self.0, self.1][r.layer], r.offset),
                    Data::Input { offset, .. } => (self.2, offset),
                    _ => unreachable!("no other data here"),
                };
                Ok(Box::new(&bytes[usize::try_from(offset).unwrap()..]))
            }
        }
        let mut src = Bytes(&base_tar, &layer, &upper_tar);
        let got = super::listing::of_tree(&read_back, &mut src).unwrap();
        let want = super::listing::of_tree(&applied, &mut src).unwrap();
        prop_assert_eq!(got, want);
    }
}
