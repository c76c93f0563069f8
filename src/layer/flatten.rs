//! OCI layers -> one merged tree, in memory (`layer.md`, "Applying
//! Changesets"), for the host to write as one read-only file system image
//! ([`super::erofs`]) that the guest mounts as the overlay's only lower dir.
//!
//! Layers apply bottom first. Within a layer its whiteouts and opaque
//! markers apply first, to what the layers below left ("Whiteout files MUST
//! only apply to resources in lower/parent layers"), then its entries in
//! archive order: a directory over a directory merges (the new metadata and
//! xattrs win), anything else replaces what was there ("Changeset over
//! existing files"). The merged tree has no whiteouts left.
//!
//! The same hostile-input rules as the per-layer unpacker (`super::unpack`, test support):
//! no absolute paths or `..`, no entry through a symlinked or non-directory
//! parent, hardlinks only to non-directories already in the tree, no 0/0
//! character devices (an overlay would read one as a whiteout), no sparse
//! files. File data is not held: each file keeps where its bytes lie in its
//! layer's tar ([`Data::Layer`]), and the image writer copies them from
//! there.
//!
//! A layer is read into the new layer's model, a
//! [`Changeset`] ([`layer_changes`]), and [`Tree::apply`] applies any
//! changeset: a base image's layers, and the new layer over them (the
//! image's listing).

use std::collections::BTreeMap;
use std::io::{self, Read};

use tar::EntryType;

use super::changeset::{Changeset, Data, Kind as ChangeKind, Node};
use super::rules::{self, EntryName, Xattr};
use super::tar_guard::Limits as TarLimits;
use super::{show, LayerError};

/// Linux's (and EROFS's) longest name.
pub const NAME_MAX: usize = 255;

/// Where a file's bytes lie: layer `layer`'s (uncompressed) tar, at byte
/// `offset`, `len` bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DataRef {
    pub layer: usize,
    pub offset: u64,
    pub len: u64,
}

/// What an inode is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// Children by name (sorted bytewise), each an inode index.
    Dir(BTreeMap<Vec<u8>, usize>),
    File(Data),
    Symlink(Vec<u8>),
    Char(u32, u32),
    Block(u32, u32),
    Fifo,
}

/// One inode of the merged tree (several names for a hardlinked file).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inode {
    pub kind: Kind,
    /// Permission bits (07777).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime: u64,
    /// The xattrs a layer carries (`security.*`, `user.*`), by name.
    pub xattrs: BTreeMap<String, Vec<u8>>,
}

/// The merged tree: inode 0 is the root directory. Inodes no name reaches
/// any more (replaced or whited out) stay in the vector, unreachable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tree {
    pub inodes: Vec<Inode>,
}

impl Default for Tree {
    fn default() -> Self {
        Tree { inodes: vec![new_dir(0o755, 0, 0, 0)] }
    }
}

fn new_dir(mode: u32, uid: u32, gid: u32, mtime: u64) -> Inode {
    Inode { kind: Kind::Dir(BTreeMap::new()), mode, uid, gid, mtime, xattrs: BTreeMap::new() }
}

impl Tree {
    /// Apply layer number `index`, read from `layer` (its uncompressed tar,
    /// from the start: data offsets count from there).
    pub fn apply_tar<R: Read>(&mut self, index: usize, layer: R) -> Result<(), LayerError> {
        self.apply(&layer_changes(index, layer, TarLimits::DEFAULT)?)
    }

    /// Apply a layer's `changes` over the tree, as an unpacker applies the
    /// layer (OCI "Applying Changesets"): its opaque marks and whiteouts
    /// first, to what the layers below left; then its entries in order: a
    /// directory over a directory merges (the new attributes win), anything
    /// else replaces the name; a hardlink names the inode its target has by
    /// then. The same for a base image's layer ([`layer_changes`]) and for
    /// the new layer's changeset (the listing of the image it makes).
    pub fn apply(&mut self, changes: &Changeset) -> Result<(), LayerError> {
        let nodes = changes.nodes();
        for n in nodes.iter().filter(|n| n.kind == ChangeKind::OpaqueMarker || n.opaque) {
            if let Some(dir) = self.lookup_dir_for_change(&n.path, &n.path, true)? {
                self.children_mut(dir).clear();
            }
        }
        for n in nodes.iter().filter(|n| n.kind == ChangeKind::Whiteout) {
            let (parent, name) = rules::split(&n.path);
            if let Some(dir) = self.lookup_dir_for_change(parent, &n.path, false)? {
                self.children_mut(dir).remove(name);
            }
        }
        for n in nodes.iter().filter(|n| !matches!(n.kind, ChangeKind::Whiteout | ChangeKind::OpaqueMarker)) {
            self.entry(n)?;
        }
        Ok(())
    }

    /// The inode a name leads to, through directories only.
    pub fn lookup(&self, path: &[u8]) -> Option<usize> {
        let mut cur = 0;
        if path.is_empty() {
            return Some(0);
        }
        for comp in path.split(|&b| b == b'/') {
            match &self.inodes[cur].kind {
                Kind::Dir(children) => cur = *children.get(comp)?,
                _ => return None,
            }
        }
        Some(cur)
    }

    /// The directory at `dir` for a whiteout or opaque mark: None when it
    /// does not exist (nothing to hide); an error when a component on the
    /// way is a symlink or not a directory (as the unpacker refuses). For an
    /// `opaque` mark, `dir` itself may be anything (a directory made where
    /// the layers below had a file or symlink): nothing below it to hide.
    fn lookup_dir_for_change(&self, dir: &[u8], raw: &[u8], opaque: bool) -> Result<Option<usize>, LayerError> {
        let mut cur = 0;
        if dir.is_empty() {
            return Ok(Some(0));
        }
        let mut end = 0;
        for comp in dir.split(|&b| b == b'/') {
            end += comp.len() + usize::from(end != 0);
            let Kind::Dir(children) = &self.inodes[cur].kind else { unreachable!("walked only directories") };
            let Some(&next) = children.get(comp) else { return Ok(None) };
            match &self.inodes[next].kind {
                Kind::Dir(_) => cur = next,
                _ if opaque && end == dir.len() => return Ok(None),
                Kind::Symlink(_) => {
                    return Err(LayerError::SymlinkParent { path: show(raw), parent: show(&dir[..end]) })
                }
                _ => return Err(LayerError::NotADirectory { path: show(raw), parent: show(&dir[..end]) }),
            }
        }
        Ok(Some(cur))
    }

    /// The parent directory of `path`, creating missing ones (root-owned
    /// 0755, mtime 0); symlinks and non-directories on the way are refused.
    fn parent_dir(&mut self, path: &[u8]) -> Result<usize, LayerError> {
        let (parent, _) = rules::split(path);
        let mut cur = 0;
        if parent.is_empty() {
            return Ok(0);
        }
        let mut end = 0;
        for comp in parent.split(|&b| b == b'/') {
            end += comp.len() + usize::from(end != 0);
            let next = match &self.inodes[cur].kind {
                Kind::Dir(children) => children.get(comp).copied(),
                _ => unreachable!("walked only directories"),
            };
            cur = match next {
                Some(n) => match &self.inodes[n].kind {
                    Kind::Dir(_) => n,
                    Kind::Symlink(_) => {
                        return Err(LayerError::SymlinkParent { path: show(path), parent: show(&parent[..end]) })
                    }
                    _ => return Err(LayerError::NotADirectory { path: show(path), parent: show(&parent[..end]) }),
                },
                None => {
                    let n = self.push(new_dir(0o755, 0, 0, 0));
                    self.children_mut(cur).insert(comp.to_vec(), n);
                    n
                }
            };
        }
        Ok(cur)
    }

    fn push(&mut self, inode: Inode) -> usize {
        self.inodes.push(inode);
        self.inodes.len() - 1
    }

    fn children_mut(&mut self, dir: usize) -> &mut BTreeMap<Vec<u8>, usize> {
        match &mut self.inodes[dir].kind {
            Kind::Dir(c) => c,
            _ => unreachable!("a directory inode"),
        }
    }

    fn entry(&mut self, n: &Node) -> Result<(), LayerError> {
        let too = |field| LayerError::TooLarge { path: show(&n.path), field };
        let kind = match &n.kind {
            ChangeKind::Dir => Kind::Dir(BTreeMap::new()),
            ChangeKind::File(d) => Kind::File(*d),
            ChangeKind::Symlink(t) => Kind::Symlink(t.clone()),
            ChangeKind::Char(a, b) => Kind::Char(*a, *b),
            ChangeKind::Block(a, b) => Kind::Block(*a, *b),
            ChangeKind::Fifo => Kind::Fifo,
            ChangeKind::Link(target) => return self.link(n, target),
            ChangeKind::Whiteout | ChangeKind::OpaqueMarker => unreachable!("applied before the entries"),
        };
        let (uid, gid) = (u32::try_from(n.uid).map_err(|_| too("uid"))?, u32::try_from(n.gid).map_err(|_| too("gid"))?);
        let inode = Inode { kind, mode: n.mode, uid, gid, mtime: n.mtime, xattrs: n.xattrs.iter().cloned().collect() };
        if n.path.is_empty() {
            // The root's own attributes: a changeset holds no other node
            // with an empty path (`Changeset::push`).
            debug_assert!(matches!(inode.kind, Kind::Dir(_)));
            let root = &mut self.inodes[0];
            (root.mode, root.uid, root.gid, root.mtime, root.xattrs) =
                (inode.mode, inode.uid, inode.gid, inode.mtime, inode.xattrs);
            return Ok(());
        }
        let parent = self.parent_dir(&n.path)?;
        let (_, name) = rules::split(&n.path);
        let existing = match &self.inodes[parent].kind {
            Kind::Dir(children) => children.get(name).copied(),
            _ => unreachable!("a directory inode"),
        };
        if let (Some(old), Kind::Dir(_)) = (existing, &inode.kind) {
            if let Kind::Dir(_) = self.inodes[old].kind {
                let dir = &mut self.inodes[old];
                (dir.mode, dir.uid, dir.gid, dir.mtime, dir.xattrs) =
                    (inode.mode, inode.uid, inode.gid, inode.mtime, inode.xattrs);
                return Ok(());
            }
        }
        let ino = self.push(inode);
        self.children_mut(parent).insert(name.to_vec(), ino);
        Ok(())
    }

    /// A hardlink: the name gets the inode (and its attributes) `target`
    /// has now. (Never the root: a changeset's hardlink has a path.)
    fn link(&mut self, n: &Node, target: &[u8]) -> Result<(), LayerError> {
        let parent = self.parent_dir(&n.path)?;
        let (_, name) = rules::split(&n.path);
        let ino = match self.lookup(target) {
            None => return Err(LayerError::MissingLinkTarget { path: show(&n.path), target: show(target) }),
            Some(i) if matches!(self.inodes[i].kind, Kind::Dir(_)) => {
                return Err(LayerError::LinkToDirectory { path: show(&n.path), target: show(target) })
            }
            Some(i) => i,
        };
        self.children_mut(parent).insert(name.to_vec(), ino);
        Ok(())
    }
}

/// An OCI layer's tar as a changeset, each entry checked as the unpacker
/// checks it: a whiteout `.wh.NAME` is a whiteout node of NAME, an opaque
/// marker an [`ChangeKind::OpaqueMarker`] node of its directory, the root's
/// own entry a directory node with an empty path; file data by reference
/// into the layer's tar (layer `index`), whose archive is read within
/// `limits`.
pub fn layer_changes<R: Read>(index: usize, layer: R, limits: TarLimits) -> Result<Changeset, LayerError> {
    let mut changes = Changeset::default();
    // Bounded: no header can make the tar crate buffer more than 1 MiB.
    let mut archive = tar::Archive::new(super::tar_guard::TarGuard::with_limits(layer, limits));
    for entry in archive.entries().map_err(super::error::read_err)? {
        let mut entry = entry.map_err(super::error::read_err)?;
        if let Some((node, raw)) = layer_node(index, &mut entry)? {
            changes.push(node, &raw)?;
        }
    }
    Ok(changes)
}

/// One entry of an OCI layer as a node, and its path as the archive spells it.
fn layer_node<R: Read>(index: usize, entry: &mut tar::Entry<'_, R>) -> Result<Option<(Node, Vec<u8>)>, LayerError> {
    let ty = entry.header().entry_type();
    if ty.is_pax_global_extensions() {
        return Ok(None);
    }
    let raw = entry.path_bytes().into_owned();
    let path = rules::normalize(&raw)?;
    if path.split(|&b| b == b'/').any(|c| c.len() > NAME_MAX) {
        return Err(LayerError::InvalidPath { path: show(&raw), reason: "a name longer than 255 bytes" });
    }
    let pax = rules::pax_info(entry, &raw)?;
    if pax.sparse || ty == EntryType::GNUSparse {
        return Err(LayerError::UnsupportedType { path: show(&raw), kind: 'S' });
    }
    let marker = |path: &[u8], kind| Node::new(path.to_vec(), kind, 0, 0, 0, 0);
    match rules::classify_entry(&path, &raw)? {
        EntryName::Plain => {}
        EntryName::Skip => return Ok(None),
        EntryName::Opaque(dir) => return Ok(Some((marker(dir, ChangeKind::OpaqueMarker), raw))),
        EntryName::Whiteout(wh) => return Ok(Some((marker(&wh, ChangeKind::Whiteout), raw))),
    }
    let hdr = entry.header();
    let num = |r: io::Result<u64>| -> Result<u64, LayerError> {
        r.map_err(|source| LayerError::Entry { path: show(&raw), source })
    };
    let too = |field| LayerError::TooLarge { path: show(&raw), field };
    let mode = u32::try_from(num(hdr.mode().map(u64::from))? & 0o7777).expect("masked");
    let uid = u32::try_from(num(hdr.uid())?).map_err(|_| too("uid"))?;
    let gid = u32::try_from(num(hdr.gid())?).map_err(|_| too("gid"))?;
    let mtime = match pax.mtime {
        Some(m) => m,
        None => num(hdr.mtime())?,
    };
    let dev = |r: io::Result<Option<u32>>| num(r.map(|d| u64::from(d.unwrap_or(0))));
    // A name given twice: the last value (as an unpacker setting them in turn).
    let xattrs: BTreeMap<String, Vec<u8>> =
        pax.xattrs.into_iter().filter(|(k, _)| rules::classify_xattr(k) == Xattr::Keep).collect();
    let link = entry.link_name_bytes().map(|l| l.into_owned());
    let kind = match ty {
        EntryType::Directory => ChangeKind::Dir,
        EntryType::Regular | EntryType::Continuous => {
            let len = num(entry.header().entry_size())?;
            ChangeKind::File(Data::Layer(DataRef { layer: index, offset: entry.raw_file_position(), len }))
        }
        EntryType::Symlink => match link {
            Some(target) if !target.is_empty() && !target.contains(&0) => ChangeKind::Symlink(target),
            _ => return Err(LayerError::InvalidPath { path: show(&raw), reason: "empty symlink target" }),
        },
        EntryType::Link => ChangeKind::Link(rules::normalize(&link.unwrap_or_default())?),
        EntryType::Char | EntryType::Block => {
            let (major, minor) = (dev(hdr.device_major())?, dev(hdr.device_minor())?);
            if ty == EntryType::Char && (major, minor) == (0, 0) {
                return Err(LayerError::ZeroDevice { path: show(&raw) });
            }
            let major = u32::try_from(major).ok().filter(|m| *m < 1 << 12).ok_or_else(|| too("device major"))?;
            let minor = u32::try_from(minor).ok().filter(|m| *m < 1 << 20).ok_or_else(|| too("device minor"))?;
            if ty == EntryType::Char {
                ChangeKind::Char(major, minor)
            } else {
                ChangeKind::Block(major, minor)
            }
        }
        EntryType::Fifo => ChangeKind::Fifo,
        other => return Err(LayerError::UnsupportedType { path: show(&raw), kind: char::from(other.as_byte()) }),
    };
    let mut node = Node::new(path, kind, mode, uid.into(), gid.into(), mtime);
    node.xattrs = xattrs.into_iter().collect();
    Ok(Some((node, raw)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layer::test_util::{tar_of, E};

    fn tree(layers: &[Vec<u8>]) -> Result<Tree, LayerError> {
        let mut t = Tree::default();
        for (i, l) in layers.iter().enumerate() {
            t.apply_tar(i, &l[..])?;
        }
        Ok(t)
    }

    fn names(t: &Tree, dir: &[u8]) -> Vec<String> {
        match &t.inodes[t.lookup(dir).expect("dir")].kind {
            Kind::Dir(c) => c.keys().map(|k| String::from_utf8_lossy(k).into_owned()).collect(),
            other => panic!("not a dir: {other:?}"),
        }
    }

    fn file<'a>(t: &Tree, layers: &'a [Vec<u8>], path: &[u8]) -> &'a [u8] {
        match t.inodes[t.lookup(path).expect("file")].kind {
            Kind::File(Data::Layer(r)) => {
                let start = usize::try_from(r.offset).unwrap();
                &layers[r.layer][start..start + usize::try_from(r.len).unwrap()]
            }
            ref other => panic!("not a file: {other:?}"),
        }
    }

    #[test]
    fn later_layers_replace_files_and_merge_directories() {
        let l0 = tar_of(&[E::dir("etc"), E::file("etc/a", b"old"), E::file("etc/b", b"b").mode(0o600)]);
        let l1 = tar_of(&[E::dir("etc").mode(0o700), E::file("etc/a", b"new")]);
        let layers = [l0, l1];
        let t = tree(&layers).unwrap();
        assert_eq!(names(&t, b"etc"), ["a", "b"]);
        assert_eq!(file(&t, &layers, b"etc/a"), b"new");
        assert_eq!(file(&t, &layers, b"etc/b"), b"b");
        assert_eq!(t.inodes[t.lookup(b"etc").unwrap()].mode, 0o700, "the upper directory's metadata wins");
    }

    #[test]
    fn whiteouts_remove_only_what_lower_layers_made() {
        let l0 = tar_of(&[E::file("a", b"1"), E::dir("d"), E::file("d/x", b"x")]);
        // Layer 1 removes a and d and makes d again, its whiteouts after its
        // own entries: the new d has only its own child.
        let l1 = tar_of(&[E::dir("d"), E::file("d/y", b"y"), E::file(".wh.a", b""), E::file(".wh.d", b"")]);
        let t = tree(&[l0, l1]).unwrap();
        assert_eq!(names(&t, b""), ["d"]);
        assert_eq!(names(&t, b"d"), ["y"]);
    }

    #[test]
    fn an_opaque_directory_hides_everything_below_it() {
        let l0 = tar_of(&[E::dir("d"), E::file("d/x", b"x"), E::dir("d/sub")]);
        let l1 = tar_of(&[E::dir("d"), E::file("d/new", b"n"), E::file("d/.wh..wh..opq", b"")]);
        let t = tree(&[l0, l1]).unwrap();
        assert_eq!(names(&t, b"d"), ["new"]);
    }

    #[test]
    fn an_opaque_directory_may_replace_a_file_or_symlink_below() {
        // What a script leaves after `rm f s; mkdir f s`: overlayfs makes
        // both opaque, and the layer says so after each directory.
        let l0 = tar_of(&[E::file("f", b"1"), E::symlink("s", "/etc")]);
        let l1 = tar_of(&[
            E::dir("f"),
            E::file("f/.wh..wh..opq", b""),
            E::file("f/in", b"i"),
            E::dir("s"),
            E::file("s/.wh..wh..opq", b""),
        ]);
        let t = tree(&[l0, l1]).unwrap();
        assert_eq!(names(&t, b"f"), ["in"]);
        assert!(names(&t, b"s").is_empty());
    }

    #[test]
    fn a_whiteout_of_nothing_creates_nothing() {
        let l0 = tar_of(&[E::file("f", b"1")]);
        let l1 = tar_of(&[E::file("missing/deep/.wh.x", b"")]);
        let t = tree(&[l0, l1]).unwrap();
        assert_eq!(names(&t, b""), ["f"]);
    }

    #[test]
    fn hostile_paths_are_refused() {
        assert!(matches!(tree(&[tar_of(&[E::file("../escape", b"x")])]), Err(LayerError::InvalidPath { .. })));
        assert!(matches!(tree(&[tar_of(&[E::file("/etc/passwd", b"x")])]), Err(LayerError::InvalidPath { .. })));
        let through = tar_of(&[E::symlink("link", "/etc"), E::file("link/passwd", b"x")]);
        assert!(matches!(tree(&[through]), Err(LayerError::SymlinkParent { .. })));
        let below = tar_of(&[E::symlink("link", "/etc")]);
        let above = tar_of(&[E::file("link/passwd", b"x")]);
        assert!(matches!(tree(&[below, above]), Err(LayerError::SymlinkParent { .. })), "a lower layer's symlink");
        let file_parent = tar_of(&[E::file("f", b""), E::file("f/x", b"x")]);
        assert!(matches!(tree(&[file_parent]), Err(LayerError::NotADirectory { .. })));
        let out = tar_of(&[E::hardlink("h", "../outside")]);
        assert!(matches!(tree(&[out]), Err(LayerError::InvalidPath { .. })));
        let missing = tar_of(&[E::hardlink("h", "nowhere")]);
        assert!(matches!(tree(&[missing]), Err(LayerError::MissingLinkTarget { .. })));
        let dirlink = tar_of(&[E::dir("d"), E::hardlink("h", "d")]);
        assert!(matches!(tree(&[dirlink]), Err(LayerError::LinkToDirectory { .. })));
        let zero = tar_of(&[E::chardev("wh", 0, 0)]);
        assert!(matches!(tree(&[zero]), Err(LayerError::ZeroDevice { .. })));
        let wh_through = tar_of(&[E::symlink("l", "/")]);
        let wh = tar_of(&[E::file("l/.wh.x", b"")]);
        assert!(matches!(tree(&[wh_through, wh]), Err(LayerError::SymlinkParent { .. })));
        let long = tar_of(&[E::file(&"n".repeat(256), b"")]);
        assert!(matches!(tree(&[long]), Err(LayerError::InvalidPath { .. })));
        let empty_link = tar_of(&[E::symlink("l", "")]);
        assert!(matches!(tree(&[empty_link]), Err(LayerError::InvalidPath { .. })));
        let bad_wh = tar_of(&[E::file(".wh..", b"")]);
        assert!(matches!(tree(&[bad_wh]), Err(LayerError::BadWhiteout { .. })));
        let root_file = tar_of(&[E::file("./", b"")]);
        assert!(tree(&[root_file]).is_err(), "the root must stay a directory");
    }

    #[test]
    fn a_changeset_applies_as_its_layer_would() {
        use crate::layer::changeset::{Changeset, Node};
        let l0 =
            tar_of(&[E::file("a", b"1"), E::dir("d"), E::file("d/x", b"x"), E::dir("keep"), E::file("keep/y", b"y")]);
        let mut t = tree(&[l0]).unwrap();
        let mut cs = Changeset::default();
        let node = |p: &str, kind, mode| Node::new(p.as_bytes().to_vec(), kind, mode, 0, 0, 5);
        let file = ChangeKind::File(Data::Host { file: 0, len: 0 });
        let mut d = node("d", ChangeKind::Dir, 0o755);
        d.opaque = true;
        for n in [
            node("a", ChangeKind::Whiteout, 0),
            d,
            node("d/new", file.clone(), 0o644),
            node("keep", ChangeKind::Dir, 0o700),
            node("keep/z", file, 0o600),
            node("keep/h", ChangeKind::Link(b"keep/y".to_vec()), 0),
            node("gone", ChangeKind::Whiteout, 0),
        ] {
            let raw = n.path.clone();
            cs.push(n, &raw).unwrap();
        }
        t.apply(&cs).unwrap();
        assert_eq!(names(&t, b""), ["d", "keep"]);
        assert_eq!(names(&t, b"d"), ["new"], "the opaque directory hides what was below");
        assert_eq!(names(&t, b"keep"), ["h", "y", "z"], "a directory merges");
        assert_eq!(t.inodes[t.lookup(b"keep").unwrap()].mode, 0o700);
        assert_eq!(t.lookup(b"keep/h"), t.lookup(b"keep/y"), "a hardlink is the target's inode");
    }

    #[test]
    fn hardlinks_share_one_inode_even_across_layers() {
        let l0 = tar_of(&[E::file("a", b"same").mode(0o4755)]);
        let l1 = tar_of(&[E::hardlink("b", "a")]);
        let t = tree(&[l0, l1]).unwrap();
        assert_eq!(t.lookup(b"a"), t.lookup(b"b"));
    }

    #[test]
    fn only_layer_xattrs_are_kept_and_devices_keep_their_numbers() {
        let l0 = tar_of(&[
            E::file("bin/ping", b"elf")
                .xattr("security.capability", b"\x01\x00\x00\x02")
                .xattr("trusted.overlay.opaque", b"y")
                .xattr("user.x", b"1"),
            E::chardev("dev/null", 1, 3),
            E::blockdev("dev/sda", 8, 0),
            E::fifo("run/fifo"),
        ]);
        let t = tree(&[l0]).unwrap();
        let x = &t.inodes[t.lookup(b"bin/ping").unwrap()].xattrs;
        assert_eq!(x.keys().collect::<Vec<_>>(), ["security.capability", "user.x"]);
        assert_eq!(t.inodes[t.lookup(b"dev/null").unwrap()].kind, Kind::Char(1, 3));
        assert_eq!(t.inodes[t.lookup(b"dev/sda").unwrap()].kind, Kind::Block(8, 0));
        assert_eq!(t.inodes[t.lookup(b"run/fifo").unwrap()].kind, Kind::Fifo);
    }
}
