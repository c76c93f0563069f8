//! Test helpers: build input tars with the `tar` crate (raw names allowed, so
//! hostile paths can be written), read layers back, snapshot directory trees.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use tar::{EntryType, Header};

pub(crate) fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// True when the test may go on; prints why it is skipped otherwise.
pub(crate) fn require_root(test: &str) -> bool {
    if !is_root() {
        eprintln!("skipping {test}: needs root (mknod, chown, trusted.* xattrs)");
        return false;
    }
    true
}

/// One input tar entry.
#[derive(Debug, Clone)]
pub(crate) struct E {
    pub path: Vec<u8>,
    pub ty: EntryType,
    pub data: Vec<u8>,
    pub mode: u32,
    pub link: Vec<u8>,
    pub dev: (u32, u32),
    pub xattrs: Vec<(String, Vec<u8>)>,
    pub uid: u64,
    pub gid: u64,
    pub mtime: u64,
}

impl E {
    fn new(path: &str, ty: EntryType, mode: u32) -> Self {
        Self {
            path: path.as_bytes().to_vec(),
            ty,
            data: Vec::new(),
            mode,
            link: Vec::new(),
            dev: (0, 0),
            xattrs: Vec::new(),
            uid: 0,
            gid: 0,
            mtime: 1_000,
        }
    }
    pub fn dir(path: &str) -> Self {
        Self::new(path, EntryType::Directory, 0o755)
    }
    pub fn file(path: &str, data: &[u8]) -> Self {
        let mut e = Self::new(path, EntryType::Regular, 0o644);
        e.data = data.to_vec();
        e
    }
    pub fn symlink(path: &str, target: &str) -> Self {
        let mut e = Self::new(path, EntryType::Symlink, 0o777);
        e.link = target.as_bytes().to_vec();
        e
    }
    pub fn hardlink(path: &str, target: &str) -> Self {
        let mut e = Self::new(path, EntryType::Link, 0o644);
        e.link = target.as_bytes().to_vec();
        e
    }
    pub fn chardev(path: &str, major: u32, minor: u32) -> Self {
        let mut e = Self::new(path, EntryType::Char, 0o600);
        e.dev = (major, minor);
        e
    }
    pub fn blockdev(path: &str, major: u32, minor: u32) -> Self {
        let mut e = Self::new(path, EntryType::Block, 0o600);
        e.dev = (major, minor);
        e
    }
    pub fn fifo(path: &str) -> Self {
        Self::new(path, EntryType::Fifo, 0o644)
    }
    pub fn mode(mut self, mode: u32) -> Self {
        self.mode = mode;
        self
    }
    pub fn owner(mut self, uid: u64, gid: u64) -> Self {
        (self.uid, self.gid) = (uid, gid);
        self
    }
    pub fn mtime(mut self, t: u64) -> Self {
        self.mtime = t;
        self
    }
    pub fn xattr(mut self, k: &str, v: &[u8]) -> Self {
        self.xattrs.push((k.to_owned(), v.to_vec()));
        self
    }
}

fn pax_rec(out: &mut Vec<u8>, k: &[u8], v: &[u8]) {
    let rest = k.len() + v.len() + 3;
    let mut n = rest + 1;
    while n != rest + n.to_string().len() {
        n = rest + n.to_string().len();
    }
    out.extend_from_slice(format!("{n} ").as_bytes());
    out.extend_from_slice(k);
    out.push(b'=');
    out.extend_from_slice(v);
    out.push(b'\n');
}

/// A tar of `entries`, in the given order, written with the `tar` crate.
pub(crate) fn tar_of(entries: &[E]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        let mut pax = Vec::new();
        if e.path.len() > 100 {
            pax_rec(&mut pax, b"path", &e.path);
        }
        if e.link.len() > 100 {
            pax_rec(&mut pax, b"linkpath", &e.link);
        }
        for (k, v) in &e.xattrs {
            pax_rec(&mut pax, format!("SCHILY.xattr.{k}").as_bytes(), v);
        }
        if !pax.is_empty() {
            let mut h = Header::new_ustar();
            h.set_entry_type(EntryType::XHeader);
            h.as_ustar_mut().unwrap().name[..9].copy_from_slice(b"PaxHeader");
            h.set_size(pax.len() as u64);
            h.set_mode(0o644);
            h.set_cksum();
            b.append(&h, &pax[..]).unwrap();
        }
        let mut h = Header::new_ustar();
        h.set_entry_type(e.ty);
        let n = e.path.len().min(100);
        h.as_ustar_mut().unwrap().name[..n].copy_from_slice(&e.path[..n]);
        let n = e.link.len().min(100);
        h.as_ustar_mut().unwrap().linkname[..n].copy_from_slice(&e.link[..n]);
        h.set_mode(e.mode);
        h.set_uid(e.uid);
        h.set_gid(e.gid);
        h.set_mtime(e.mtime);
        h.set_size(e.data.len() as u64);
        h.set_device_major(e.dev.0).unwrap();
        h.set_device_minor(e.dev.1).unwrap();
        h.set_cksum();
        b.append(&h, &e.data[..]).unwrap();
    }
    b.into_inner().unwrap()
}

/// One entry of a layer, as read back with the `tar` crate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Got {
    pub path: String,
    pub ty: u8,
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    pub mtime: u64,
    pub link: String,
    pub dev: (u32, u32),
    pub uname: Vec<u8>,
    pub gname: Vec<u8>,
    pub xattrs: Vec<(String, Vec<u8>)>,
    pub data: Vec<u8>,
}

pub(crate) fn read_layer(bytes: &[u8]) -> Vec<Got> {
    let mut a = tar::Archive::new(bytes);
    let mut out = Vec::new();
    for e in a.entries().unwrap() {
        let mut e = e.unwrap();
        let mut xattrs = Vec::new();
        if let Some(exts) = e.pax_extensions().unwrap() {
            for x in exts {
                let x = x.unwrap();
                if let Some(k) = x.key().unwrap().strip_prefix("SCHILY.xattr.") {
                    xattrs.push((k.to_owned(), x.value_bytes().to_vec()));
                }
            }
        }
        let h = e.header().clone();
        let mut data = Vec::new();
        std::io::Read::read_to_end(&mut e, &mut data).unwrap();
        out.push(Got {
            path: String::from_utf8_lossy(&e.path_bytes()).into_owned(),
            ty: h.entry_type().as_byte(),
            mode: h.mode().unwrap(),
            uid: h.uid().unwrap(),
            gid: h.gid().unwrap(),
            mtime: h.mtime().unwrap(),
            link: e.link_name_bytes().map(|l| String::from_utf8_lossy(&l).into_owned()).unwrap_or_default(),
            dev: (h.device_major().unwrap().unwrap_or(0), h.device_minor().unwrap().unwrap_or(0)),
            uname: h.username_bytes().unwrap_or_default().to_vec(),
            gname: h.groupname_bytes().unwrap_or_default().to_vec(),
            xattrs,
            data,
        });
    }
    out
}

pub(crate) fn paths(got: &[Got]) -> Vec<&str> {
    got.iter().map(|g| g.path.as_str()).collect()
}

/// What a tree holds at one path, for comparing trees made by different tools.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Node {
    Dir,
    File(Vec<u8>),
    Symlink(String),
    Char(u64),
    Block(u64),
    Fifo,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Meta {
    pub node: Node,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// First path (in walk order) of the hardlink group, if nlink > 1.
    pub link_group: Option<String>,
    pub xattrs: Vec<(String, Vec<u8>)>,
}

pub(crate) fn xattrs_of(p: &Path) -> Vec<(String, Vec<u8>)> {
    let mut names = vec![0u8; 65536];
    let n = rustix::fs::llistxattr(p, &mut names[..]).unwrap_or(0);
    let mut out = Vec::new();
    for name in names[..n].split(|&b| b == 0).filter(|s| !s.is_empty()) {
        let name = String::from_utf8_lossy(name).into_owned();
        let mut v = vec![0u8; 65536];
        let len = rustix::fs::lgetxattr(p, name.as_str(), &mut v[..]).unwrap();
        v.truncate(len);
        out.push((name, v));
    }
    out.sort();
    out
}

/// Snapshot of a tree (the root itself excluded), keyed by relative path.
pub(crate) fn snapshot(root: &Path) -> BTreeMap<String, Meta> {
    let mut out = BTreeMap::new();
    let mut inodes: BTreeMap<(u64, u64), String> = BTreeMap::new();
    fn walk(root: &Path, rel: &str, out: &mut BTreeMap<String, Meta>, inodes: &mut BTreeMap<(u64, u64), String>) {
        let dir = if rel.is_empty() { root.to_path_buf() } else { root.join(rel) };
        let mut names: Vec<_> = fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name()).collect();
        names.sort();
        for name in names {
            let name = String::from_utf8_lossy(OsStr::as_bytes(&name)).into_owned();
            let r = if rel.is_empty() { name.clone() } else { format!("{rel}/{name}") };
            let p = root.join(&r);
            let m = fs::symlink_metadata(&p).unwrap();
            let ft = m.file_type();
            let node = if ft.is_dir() {
                Node::Dir
            } else if ft.is_symlink() {
                Node::Symlink(fs::read_link(&p).unwrap().to_string_lossy().into_owned())
            } else if ft.is_char_device() {
                Node::Char(m.rdev())
            } else if ft.is_block_device() {
                Node::Block(m.rdev())
            } else if ft.is_fifo() {
                Node::Fifo
            } else {
                Node::File(fs::read(&p).unwrap())
            };
            let link_group = if !ft.is_dir() && m.nlink() > 1 {
                Some(inodes.entry((m.dev(), m.ino())).or_insert_with(|| r.clone()).clone())
            } else {
                None
            };
            out.insert(
                r.clone(),
                Meta {
                    node,
                    mode: if ft.is_symlink() { 0 } else { m.mode() & 0o7777 },
                    uid: m.uid(),
                    gid: m.gid(),
                    link_group,
                    xattrs: xattrs_of(&p),
                },
            );
            if ft.is_dir() {
                walk(root, &r, out, inodes);
            }
        }
    }
    walk(root, "", &mut out, &mut inodes);
    // Only groups with two or more members inside this tree count: overlayfs
    // reports a lower inode's nlink even when some of its links are whited out.
    let mut members: BTreeMap<String, usize> = BTreeMap::new();
    for m in out.values() {
        if let Some(g) = &m.link_group {
            *members.entry(g.clone()).or_default() += 1;
        }
    }
    for m in out.values_mut() {
        if m.link_group.as_ref().is_some_and(|g| members[g] < 2) {
            m.link_group = None;
        }
    }
    out
}

/// The files both ext4 reader tests write into their upper dir (by mkfs -d
/// and by debugfs), as [`read_layer`] reads them back: a big file and its
/// hardlink, a short and a long symlink, a 10 MiB sparse file.
pub(crate) fn assert_upper_fixture(entries: &[Got], big: &[u8], long_target: &str) {
    let get = |p: &str| entries.iter().find(|g| g.path.trim_end_matches('/') == p).unwrap_or_else(|| panic!("{p}"));
    assert_eq!(get("big").data, big);
    assert_eq!(get("big2").ty, b'1', "the second name is a hardlink entry");
    assert_eq!(get("etc/short").link, "passwd");
    assert_eq!(get("etc/long").link, long_target);
    assert_eq!(get("sparse").data.len(), 10 << 20);
    assert!(get("sparse").data.iter().all(|b| *b == 0));
}
