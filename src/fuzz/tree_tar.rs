//! `tree_tar`: a merged tree written as a layer ([`Changeset::add_tree`],
//! then [`changeset::write`]), as `export` writes a flattened base image
//! and a job writes its `--contents` into the new layer.
//!
//! Input: `mode: u8`, then operations that build a tree. Mode bit 0 clear:
//! a [`Tree`] made directly, as flattening makes it (any owner, mode,
//! mtime, device number, hardlinks, xattrs; file bytes from one blob).
//! Bit 0 set: a directory made on a temporary directory and gathered by
//! [`Contents::gather`] (bit 1: `keepContentsDirlinks`), with symlinks
//! (to directories too), hardlinks, FIFOs and modes. Each operation is
//! `op: u8` (`op % 8`: directory, file, symlink, character device, block
//! device, FIFO, hardlink, xattr), `parent: u8` (an index among the
//! directories made so far), a name (`len: u8` + bytes; `/` and NUL
//! replaced) and what the kind needs (mode, owner, mtime, data, target,
//! device numbers, link source, xattr name and value).
//!
//! Invariants: no panic; the tar reads back (tar crate) with exactly one
//! entry per name the tree reaches, each after its parent directory, with
//! the inode's type, mode, owner, mtime, device numbers, link target (byte
//! for byte), xattrs and data; every later name of a file is a hardlink to
//! an earlier name of the same inode. Writing fails only for what a layer
//! cannot hold (a device number over 7 octal digits, an empty symlink
//! target, a name starting with `.wh.`). For gathered
//! contents, also: everything is owned by 0:0, and a file reached through
//! directories only has the bytes of the file on disk.

use super::{take, take_u16, take_u32, take_u8};
use crate::job::contents::Contents;
use crate::layer::changeset::{self, Changeset, ConvertOptions, Data, Source, Visit};
use crate::layer::flatten::{DataRef, Inode, Kind, Tree};
use std::collections::{BTreeMap, HashMap};
use std::io::{self, Read};
use std::path::Path;

/// Operations read from one input.
const MAX_OPS: usize = 64;

/// File bytes from one in-memory blob.
struct Blob(Vec<u8>);

/// Largest device number a tar header holds (7 octal digits).
const MAX_DEVICE: u32 = 0o7777777;

impl Source for Blob {
    fn open(&mut self, d: &Data) -> io::Result<Box<dyn Read + '_>> {
        let Data::Layer(r) = d else { return Err(io::Error::other("not the blob's")) };
        let start = usize::try_from(r.offset).map_err(io::Error::other)?;
        let end = start + usize::try_from(r.len).map_err(io::Error::other)?;
        Ok(Box::new(self.0.get(start..end).ok_or_else(|| io::Error::other("past the blob"))?))
    }
}

/// A name from the input: no `/`, no NUL, not `.` or `..`, not empty.
fn name(data: &mut &[u8]) -> Vec<u8> {
    let n = take_u8(data).unwrap_or(1);
    let mut v: Vec<u8> =
        take(data, usize::from(n)).iter().map(|&b| if b == 0 || b == b'/' { b'_' } else { b }).collect();
    if v.is_empty() || v == b"." || v == b".." {
        v.push(b'x');
    }
    v
}

fn bytes<'a>(data: &mut &'a [u8]) -> &'a [u8] {
    let n = take_u8(data).unwrap_or(0);
    take(data, usize::from(n))
}

fn children(tree: &mut Tree, dir: usize) -> &mut BTreeMap<Vec<u8>, usize> {
    match &mut tree.inodes[dir].kind {
        Kind::Dir(c) => c,
        _ => unreachable!("only directories are parents"),
    }
}

/// A tree made directly from the input, and its file bytes.
fn direct(mut data: &[u8]) -> (Tree, Blob) {
    let mut tree = Tree::default();
    let mut blob = Vec::new();
    let mut dirs = vec![0usize];
    let mut others: Vec<usize> = Vec::new();
    for _ in 0..MAX_OPS {
        let (Some(op), Some(parent)) = (take_u8(&mut data), take_u8(&mut data)) else { break };
        let parent = dirs[usize::from(parent) % dirs.len()];
        let name = name(&mut data);
        let kind = op % 8;
        if kind == 6 {
            // A further name of an existing non-directory.
            let Some(&ino) = others.get(usize::from(take_u8(&mut data).unwrap_or(0)) % others.len().max(1)) else {
                continue;
            };
            children(&mut tree, parent).insert(name, ino);
            continue;
        }
        if kind == 7 {
            // An xattr on the last inode made.
            let ino = tree.inodes.len() - 1;
            let key: String = String::from_utf8_lossy(bytes(&mut data))
                .chars()
                .map(|c| if c == '\0' || c == '=' { '_' } else { c })
                .collect();
            let value = bytes(&mut data).to_vec();
            tree.inodes[ino].xattrs.insert(format!("user.{key}"), value);
            continue;
        }
        let mode = u32::from(take_u16(&mut data).unwrap_or(0o644)) & 0o7777;
        let uid = take_u32(&mut data).unwrap_or(0);
        let gid = take_u32(&mut data).unwrap_or(0);
        let mtime = u64::from(take_u32(&mut data).unwrap_or(0));
        let kind = match kind {
            0 => Kind::Dir(BTreeMap::new()),
            1 => {
                let d = bytes(&mut data);
                let r = DataRef { layer: 0, offset: blob.len() as u64, len: d.len() as u64 };
                blob.extend_from_slice(d);
                Kind::File(Data::Layer(r))
            }
            2 => Kind::Symlink(bytes(&mut data).iter().map(|&b| if b == 0 { b'_' } else { b }).collect()),
            3 | 4 => {
                let (ma, mi) = (take_u32(&mut data).unwrap_or(0), take_u32(&mut data).unwrap_or(0));
                if kind == 3 {
                    Kind::Char(ma, mi)
                } else {
                    Kind::Block(ma, mi)
                }
            }
            _ => Kind::Fifo,
        };
        let is_dir = matches!(kind, Kind::Dir(_));
        tree.inodes.push(Inode { kind, mode, uid, gid, mtime, xattrs: BTreeMap::new() });
        let ino = tree.inodes.len() - 1;
        children(&mut tree, parent).insert(name, ino);
        if is_dir {
            dirs.push(ino);
        } else {
            others.push(ino);
        }
    }
    (tree, Blob(blob))
}

/// A directory made on disk under `root` from the input.
fn on_disk(root: &Path, mut data: &[u8]) {
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::PermissionsExt;
    let mut dirs = vec![root.to_path_buf()];
    let mut files = Vec::new();
    for _ in 0..MAX_OPS {
        let (Some(op), Some(parent)) = (take_u8(&mut data), take_u8(&mut data)) else { break };
        let parent = dirs[usize::from(parent) % dirs.len()].clone();
        let path = parent.join(std::ffi::OsStr::from_bytes(&name(&mut data)));
        let mode = u32::from(take_u16(&mut data).unwrap_or(0o644)) & 0o7777;
        // Never open what is there (writing to a FIFO waits for a reader).
        let exists = std::fs::symlink_metadata(&path).is_ok();
        let made = match op % 8 {
            _ if exists => continue,
            0 | 3 => std::fs::create_dir(&path).map(|()| dirs.push(path.clone())),
            1 | 4 => std::fs::write(&path, bytes(&mut data)).map(|()| files.push(path.clone())),
            2 => {
                // Targets a contents tree has: up, across, absolute into it.
                let t = bytes(&mut data);
                let target = match t.first().map(|b| b % 4) {
                    Some(0) => root.join(std::ffi::OsStr::from_bytes(&t[1..])),
                    _ => Path::new(std::ffi::OsStr::from_bytes(t)).to_path_buf(),
                };
                std::os::unix::fs::symlink(target, &path)
            }
            5 => rustix::fs::mknodat(rustix::fs::CWD, &path, rustix::fs::FileType::Fifo, 0o644.into(), 0)
                .map_err(io::Error::from),
            6 => match files.get(usize::from(take_u8(&mut data).unwrap_or(0)) % files.len().max(1)) {
                Some(f) => std::fs::hard_link(f, &path),
                None => continue,
            },
            _ => continue,
        };
        if made.is_ok() && !path.is_symlink() {
            // Readable by its owner, so that the walk is not refused.
            let keep = if path.is_dir() { 0o700 } else { 0o600 };
            let _ = std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode | keep));
        }
    }
}

/// Every name the tree reaches (path -> inode), directories first.
fn reachable(tree: &Tree) -> BTreeMap<Vec<u8>, usize> {
    let mut out = BTreeMap::new();
    let mut stack = vec![(0usize, Vec::new())];
    while let Some((dir, path)) = stack.pop() {
        let Kind::Dir(c) = &tree.inodes[dir].kind else { continue };
        for (name, &ino) in c {
            let p = if path.is_empty() { name.clone() } else { [&path[..], b"/", name].concat() };
            if matches!(tree.inodes[ino].kind, Kind::Dir(_)) {
                stack.push((ino, p.clone()));
            }
            out.insert(p, ino);
        }
    }
    out
}

/// Write `tree` and check the layer against it, its files' bytes read from
/// `src`; `disk`: the contents directory it was gathered from.
fn write_and_check(tree: &Tree, src: &mut dyn Source, disk: Option<&Path>) {
    let names = reachable(tree);
    let too_big = names.values().any(
        |&i| matches!(tree.inodes[i].kind, Kind::Char(a, b) | Kind::Block(a, b) if a > MAX_DEVICE || b > MAX_DEVICE),
    );
    // No symlink can have an empty target; a `.wh.` name would read as a whiteout.
    let empty_link = names.values().any(|&i| matches!(&tree.inodes[i].kind, Kind::Symlink(t) if t.is_empty()));
    let whiteout_name = names.keys().any(|p| p.rsplit(|&b| b == b'/').next().is_some_and(|n| n.starts_with(b".wh.")));
    let mut out = Vec::new();
    let mut cs = Changeset::default();
    let written = cs
        .add_tree(tree, |_, _| Visit::Entry)
        .and_then(|()| changeset::write(cs, src, &mut out, &ConvertOptions::default()));
    match written {
        Ok(_) => assert!(!too_big && !empty_link && !whiteout_name, "a tree no layer can hold was written"),
        Err(e) => {
            assert!(too_big || empty_link || whiteout_name, "writing a tree failed: {e:?}");
            return;
        }
    }
    let mut seen: HashMap<Vec<u8>, usize> = HashMap::new();
    let mut archive = tar::Archive::new(&out[..]);
    for entry in archive.entries().expect("our tar") {
        let mut e = entry.expect("our entry");
        let path = e.path_bytes().into_owned();
        let path = path.strip_suffix(b"/").unwrap_or(&path).to_vec();
        let show = String::from_utf8_lossy(&path).into_owned();
        let &ino = names.get(&path).unwrap_or_else(|| panic!("{show:?} is no name of the tree"));
        if let Some(slash) = path.iter().rposition(|&b| b == b'/') {
            assert!(seen.contains_key(&path[..slash]), "{show:?} comes before its directory");
        }
        let inode = &tree.inodes[ino];
        let h = e.header().clone();
        let mut pax: HashMap<String, Vec<u8>> = HashMap::new();
        if let Some(records) = e.pax_extensions().expect("pax") {
            for x in records {
                let x = x.expect("a pax record");
                pax.insert(x.key().expect("a pax key").to_string(), x.value_bytes().to_vec());
            }
        }
        // A number too large for its header field is a PAX record.
        let number = |key: &str, field: u64| match pax.get(key) {
            Some(v) => std::str::from_utf8(v).expect("digits").parse::<u64>().expect("a number"),
            None => field,
        };
        assert_eq!(h.mode().expect("mode"), inode.mode, "{show:?} mode");
        assert_eq!(number("uid", h.uid().expect("uid")), u64::from(inode.uid), "{show:?} uid");
        assert_eq!(number("gid", h.gid().expect("gid")), u64::from(inode.gid), "{show:?} gid");
        assert_eq!(number("mtime", h.mtime().expect("mtime")), inode.mtime, "{show:?} mtime");
        if disk.is_some() {
            assert_eq!((inode.uid, inode.gid), (0, 0), "{show:?}: contents are owned by 0:0");
        }
        let ty = h.entry_type();
        if ty == tar::EntryType::Link {
            let target = e.link_name_bytes().expect("a hardlink's target").into_owned();
            assert_eq!(seen.get(&target), Some(&ino), "{show:?} links to {:?}", String::from_utf8_lossy(&target));
            assert!(matches!(
                inode.kind,
                Kind::File(_) | Kind::Symlink(_) | Kind::Char(..) | Kind::Block(..) | Kind::Fifo
            ));
        } else {
            assert!(!seen.values().any(|&i| i == ino) || matches!(inode.kind, Kind::Dir(_)), "{show:?}: a second copy");
            let xattrs: BTreeMap<String, Vec<u8>> = pax
                .iter()
                .filter_map(|(k, v)| Some((k.strip_prefix("SCHILY.xattr.")?.to_string(), v.clone())))
                .collect();
            assert_eq!(xattrs, inode.xattrs, "{show:?} xattrs");
            let mut content = Vec::new();
            e.read_to_end(&mut content).expect("entry data");
            match &inode.kind {
                Kind::Dir(_) => assert_eq!(ty, tar::EntryType::Directory, "{show:?}"),
                Kind::File(r) => {
                    assert_eq!(ty, tar::EntryType::Regular, "{show:?}");
                    let mut want = Vec::new();
                    src.open(r).expect("data").take(r.len()).read_to_end(&mut want).expect("data");
                    assert!(content == want, "{show:?} data");
                    if let Some(root) = disk {
                        check_on_disk(root, &path, &content);
                    }
                }
                Kind::Symlink(t) => {
                    assert_eq!(ty, tar::EntryType::Symlink, "{show:?}");
                    let got = e.link_name_bytes().expect("a symlink's target").into_owned();
                    assert!(&got == t, "{show:?} target");
                }
                Kind::Char(ma, mi) | Kind::Block(ma, mi) => {
                    let want =
                        if matches!(inode.kind, Kind::Char(..)) { tar::EntryType::Char } else { tar::EntryType::Block };
                    assert_eq!(ty, want, "{show:?}");
                    assert_eq!(h.device_major().expect("major"), Some(*ma), "{show:?} major");
                    assert_eq!(h.device_minor().expect("minor"), Some(*mi), "{show:?} minor");
                }
                Kind::Fifo => assert_eq!(ty, tar::EntryType::Fifo, "{show:?}"),
            }
        }
        assert!(seen.insert(path, ino).is_none(), "{show:?} twice");
    }
    assert_eq!(seen.len(), names.len(), "names of the tree missing from the tar");
}

/// A file whose path on disk has no symlink holds the bytes written.
fn check_on_disk(root: &Path, path: &[u8], content: &[u8]) {
    use std::os::unix::ffi::OsStrExt;
    let mut p = root.to_path_buf();
    for comp in path.split(|&b| b == b'/') {
        p.push(std::ffi::OsStr::from_bytes(comp));
        if std::fs::symlink_metadata(&p).map_or(true, |m| m.is_symlink()) {
            return;
        }
    }
    assert!(std::fs::read(&p).expect("the file on disk") == content, "{} differs on disk", p.display());
}

pub fn tree_tar(mut data: &[u8]) {
    let Some(mode) = take_u8(&mut data) else { return };
    if mode & 1 == 0 {
        let (tree, mut blob) = direct(data);
        write_and_check(&tree, &mut blob, None);
        return;
    }
    let dir = tempfile::tempdir().expect("temporary directory");
    on_disk(dir.path(), data);
    match Contents::gather(&[dir.path().to_path_buf()], mode & 2 != 0) {
        Ok(c) => {
            write_and_check(&c.tree, &mut c.data(), Some(dir.path()));
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
    crate::job::workdir::make_removable(dir.path());
}
