//! The one model of a new layer's tree, and the one writer of OCI layers.
//!
//! Every source decodes its own form of a tree into [`Node`]s as they come
//! in, whiteouts and opaque directories included, so nothing after a source
//! looks at `.wh.` names, 0/0 devices or `trusted.overlay.*` xattrs:
//!
//! - the tar of an overlay upper dir ([`super::convert`]);
//! - the upper dir on the scratch disk the guest left ([`super::upper::changes`]);
//! - a merged tree ([`Changeset::add_tree`]): the job's contents, and the
//!   whole flattened image for `export`;
//! - host store paths ([`super::store_paths::add`]).
//!
//! [`write`] is the sink: the changeset is checked (duplicates, parents,
//! hardlinks), named the OCI way (whiteouts as `.wh.NAME`, opaque
//! directories as a `.wh..wh..opq` marker), sorted by [`rules::cmp_paths`]
//! and written by one deterministic tar writer while the sha256 of the
//! stream (the diff_id) and of the optional gzip stream are computed. File
//! bytes are read from their [`Source`] only then, once, in output order:
//! no intermediate tar is written anywhere. Memory is O(entries).

use std::collections::{HashMap, HashSet};
use std::io::{self, BufWriter, Read, Write};
use std::path::PathBuf;

use super::flatten::{self, DataRef, Tree};
use super::rules::{self, Xattr};
use super::writer::{self, flag, EntryHeader};
use super::{show, LayerError};
use crate::image::digest::{HashingWriter, Sha256Digest};

/// How to write the layer.
#[derive(Debug, Clone, Default)]
pub struct ConvertOptions {
    /// Clamp every mtime to at most this (SOURCE_DATE_EPOCH).
    pub source_date_epoch: Option<u64>,
    /// Also gzip the layer at this level (0-9); the digests cover both forms.
    pub gzip: Option<u32>,
}

/// Digests and sizes of a written layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerInfo {
    /// sha256 of the uncompressed tar (the OCI diff_id).
    pub diff_id: Sha256Digest,
    /// Size of the uncompressed tar.
    pub size: u64,
    /// `(sha256:<hex>, size)` of the gzip stream, when gzip was asked for.
    pub compressed: Option<(Sha256Digest, u64)>,
}

/// Where a file's bytes are, for its [`Source`] to read at write time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Data {
    /// A range of the input tar ([`super::convert_seekable`]).
    Input { offset: u64, len: u64 },
    /// A range of the spool file a streamed input's data went to.
    Spool { offset: u64, len: u64 },
    /// A regular file of the scratch disk's ext4, by inode number.
    Ext4 { ino: u64, len: u64 },
    /// A host file (contents, store paths), by index into the source's list.
    Host { file: usize, len: u64 },
    /// A range of a base image layer's staged tar (`export`).
    Layer(DataRef),
}

impl Data {
    /// How many bytes the file has.
    pub fn len(&self) -> u64 {
        match *self {
            Data::Input { len, .. } | Data::Spool { len, .. } | Data::Ext4 { len, .. } | Data::Host { len, .. } => len,
            Data::Layer(r) => r.len,
        }
    }

    /// Whether the file is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Reads file bytes where a [`Data`] says they are.
pub trait Source {
    /// A reader positioned at the file's first byte. It may go on past the
    /// file's end (only `len` bytes are taken); ending early is an error.
    fn open(&mut self, data: &Data) -> io::Result<Box<dyn Read + '_>>;
}

/// Copy exactly the file's bytes from `src` to `out`; a source that ends
/// early is an error.
pub fn copy_exact<S: Source + ?Sized>(src: &mut S, data: &Data, out: &mut dyn Write) -> io::Result<()> {
    let n = io::copy(&mut src.open(data)?.take(data.len()), out)?;
    if n != data.len() {
        return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the file's data ends early"));
    }
    Ok(())
}

/// What a path of the changeset is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    File(Data),
    Dir,
    Symlink(Vec<u8>),
    /// A hardlink to the (normalized) path of another entry; resolved by
    /// [`write`] to the entry holding the inode.
    Link(Vec<u8>),
    Char(u32, u32),
    Block(u32, u32),
    Fifo,
    /// The path is gone.
    Whiteout,
    /// The directory at the path hides what the layers below have in it:
    /// an OCI layer's `.wh..wh..opq`, read by a source that has no
    /// directory entry to flag `opaque` (and made by [`write`] for one).
    OpaqueMarker,
}

/// One path of the changeset, with the inode's attributes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    /// Normalized path (no leading `/`, no `.` or `..`, not empty).
    pub path: Vec<u8>,
    pub kind: Kind,
    /// A directory hiding what the layers below have under it.
    pub opaque: bool,
    /// Permission bits (07777).
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    pub mtime: u64,
    /// The xattrs a layer carries ([`rules::classify_xattr`]'s `Keep`),
    /// sorted by name, one value each.
    pub xattrs: Vec<(String, Vec<u8>)>,
}

impl Node {
    /// A node with no xattrs, not opaque.
    pub fn new(path: Vec<u8>, kind: Kind, mode: u32, uid: u64, gid: u64, mtime: u64) -> Node {
        Node { path, kind, opaque: false, mode, uid, gid, mtime, xattrs: Vec::new() }
    }
}

/// The xattrs of an entry sorted out: what the layer keeps (sorted, the
/// smallest value of a name given twice), and the overlay's marks.
#[derive(Debug, Default)]
pub struct SortedXattrs {
    pub keep: Vec<(String, Vec<u8>)>,
    /// `trusted.overlay.opaque=y`.
    pub opaque: bool,
    /// `trusted.overlay.whiteout` (a whiteout when on an empty file).
    pub whiteout: bool,
}

/// Sort an entry's xattrs by [`rules::classify_xattr`]; `path` names it in
/// the error a redirect or metacopy (which no layer can express) gives.
pub fn sort_xattrs(xattrs: Vec<(String, Vec<u8>)>, path: &[u8]) -> Result<SortedXattrs, LayerError> {
    let mut out = SortedXattrs::default();
    for (k, v) in xattrs {
        match rules::classify_xattr(&k) {
            Xattr::Keep => out.keep.push((k, v)),
            Xattr::Drop => {}
            Xattr::Overlay("opaque") => out.opaque = v == b"y",
            Xattr::Overlay("whiteout") => out.whiteout = true,
            Xattr::Overlay(s) if s == "redirect" || s == "metacopy" => {
                return Err(LayerError::OverlayFeature { path: show(path), xattr: k })
            }
            Xattr::Overlay(_) => {}
        }
    }
    out.keep.sort();
    out.keep.dedup_by(|a, b| a.0 == b.0);
    Ok(out)
}

/// What [`Changeset::add_tree`] does with one path of the tree.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Visit {
    /// Add the entry (and, for a directory, go on below it).
    Entry,
    /// Add nothing for this directory itself, but go on below it.
    Below,
    /// Add nothing for it or anything below it.
    Skip,
}

/// The nodes of a new layer, in the order they came.
#[derive(Debug, Default)]
pub struct Changeset {
    nodes: Vec<Node>,
}

impl Changeset {
    /// Add one node. A name starting with `.wh.` cannot be in a layer (it
    /// would read as a whiteout): refused, naming `raw` (the path as the
    /// source spells it).
    pub fn push(&mut self, node: Node, raw: &[u8]) -> Result<(), LayerError> {
        let (_, name) = rules::split(&node.path);
        if name.starts_with(rules::WHITEOUT_PREFIX) {
            return Err(LayerError::UserWhiteoutName { path: show(raw) });
        }
        // The root itself: its own attributes, or an opaque mark on it.
        let root = node.path.is_empty() && matches!(node.kind, Kind::Dir | Kind::OpaqueMarker);
        if !root && (node.path.is_empty() || rules::normalize(&node.path)? != node.path) {
            return Err(LayerError::InvalidPath { path: show(raw), reason: "not a normalized relative path" });
        }
        self.nodes.push(node);
        Ok(())
    }

    /// The nodes so far.
    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    /// How many nodes.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Add the merged `tree`'s paths, depth first and siblings by name,
    /// each as `visit` says for (its path, its inode). A later name of a hardlinked inode becomes a hardlink to the
    /// first; the root itself is not added. Only the xattrs a layer carries
    /// are kept.
    pub fn add_tree(
        &mut self,
        tree: &Tree,
        mut visit: impl FnMut(&[u8], &flatten::Inode) -> Visit,
    ) -> Result<(), LayerError> {
        let mut first_path: HashMap<usize, Vec<u8>> = HashMap::new();
        let mut stack: Vec<(usize, Vec<u8>)> = vec![(0, Vec::new())];
        while let Some((dir, path)) = stack.pop() {
            let flatten::Kind::Dir(children) = &tree.inodes[dir].kind else {
                unreachable!("only directories are stacked")
            };
            let mut subdirs = Vec::new();
            for (name, &ino) in children {
                let p = rules::join(&path, name);
                let inode = &tree.inodes[ino];
                let v = visit(&p, inode);
                if v == Visit::Entry {
                    let kind = match &inode.kind {
                        flatten::Kind::Dir(_) => Kind::Dir,
                        _ if first_path.contains_key(&ino) => Kind::Link(first_path[&ino].clone()),
                        flatten::Kind::File(d) => Kind::File(*d),
                        flatten::Kind::Symlink(t) if t.is_empty() => {
                            let empty = io::Error::other("a symlink with an empty target");
                            return Err(LayerError::Entry { path: show(&p), source: empty });
                        }
                        flatten::Kind::Symlink(t) => Kind::Symlink(t.clone()),
                        flatten::Kind::Char(a, b) => Kind::Char(*a, *b),
                        flatten::Kind::Block(a, b) => Kind::Block(*a, *b),
                        flatten::Kind::Fifo => Kind::Fifo,
                    };
                    if !matches!(inode.kind, flatten::Kind::Dir(_)) {
                        first_path.entry(ino).or_insert_with(|| p.clone());
                    }
                    let xattrs = inode.xattrs.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
                    let mut node =
                        Node::new(p.clone(), kind, inode.mode, inode.uid.into(), inode.gid.into(), inode.mtime);
                    node.xattrs = sort_xattrs(xattrs, &p)?.keep;
                    self.push(node, &p)?;
                }
                if v != Visit::Skip && matches!(inode.kind, flatten::Kind::Dir(_)) {
                    subdirs.push((ino, p));
                }
            }
            // Depth first in name order: the stack pops the first name first.
            stack.extend(subdirs.into_iter().rev());
        }
        Ok(())
    }
}

/// A node as it is written: its OCI name and resolved kind.
#[derive(Debug)]
struct Planned {
    node: Node,
    /// Output path (differs from `node.path` for whiteouts and markers).
    out: Vec<u8>,
}

/// Check the changeset and turn it into the sorted list of OCI entries.
fn plan(nodes: Vec<Node>) -> Result<Vec<Planned>, LayerError> {
    let mut nodes: Vec<Planned> = nodes
        .into_iter()
        // The root's own attributes are not in a layer.
        .filter(|n| !(n.path.is_empty() && n.kind == Kind::Dir))
        .map(|mut node| {
            if node.kind == Kind::OpaqueMarker {
                node.path = rules::join(&node.path, rules::OPAQUE_MARKER);
                (node.mode, node.uid, node.gid) = (0, 0, 0);
            }
            Planned { out: node.path.clone(), node }
        })
        .collect();
    // Duplicates, on input paths.
    let mut by_path: HashMap<Vec<u8>, usize> = HashMap::with_capacity(nodes.len());
    for (i, n) in nodes.iter().enumerate() {
        if by_path.insert(n.node.path.clone(), i).is_some() {
            return Err(LayerError::Duplicate { path: show(&n.node.path) });
        }
    }
    resolve_links(&mut nodes, &by_path)?;
    // Parents must be directories ("entry under a whiteout" lands here too).
    for n in &nodes {
        let (parent, _) = rules::split(&n.node.path);
        if let Some(&p) = by_path.get(parent) {
            if !matches!(nodes[p].node.kind, Kind::Dir) {
                return Err(LayerError::NotADirectory { path: show(&n.node.path), parent: show(parent) });
            }
        }
    }
    // OCI names.
    let mut markers = Vec::new();
    for n in &mut nodes {
        if matches!(n.node.kind, Kind::Whiteout) {
            let (parent, name) = rules::split(&n.node.path);
            let mut wh = rules::WHITEOUT_PREFIX.to_vec();
            wh.extend_from_slice(name);
            n.out = rules::join(parent, &wh);
            (n.node.mode, n.node.uid, n.node.gid) = (0, 0, 0);
            n.node.xattrs.clear();
        }
        if n.node.opaque {
            let path = rules::join(&n.node.path, rules::OPAQUE_MARKER);
            let node = Node::new(path.clone(), Kind::OpaqueMarker, 0, 0, 0, n.node.mtime);
            markers.push(Planned { node, out: path });
        }
    }
    nodes.append(&mut markers);
    nodes.sort_by(|a, b| rules::cmp_paths(&a.out, &b.out));
    for w in nodes.windows(2) {
        if w[0].out == w[1].out {
            return Err(LayerError::Duplicate { path: show(&w[1].out) });
        }
    }
    lead_links(&mut nodes);
    Ok(nodes)
}

/// Follow each hardlink to the entry that holds the inode, and give it that
/// entry's attributes. Overlayfs shares one whiteout inode between
/// whiteouts, so a link to a whiteout is a whiteout.
fn resolve_links(nodes: &mut [Planned], by_path: &HashMap<Vec<u8>, usize>) -> Result<(), LayerError> {
    for i in 0..nodes.len() {
        let Kind::Link(first) = &nodes[i].node.kind else {
            continue;
        };
        let mut target = first.clone();
        let mut steps = 0;
        let path = || show(&nodes[i].node.path);
        let root = loop {
            let Some(&j) = by_path.get(&target) else {
                return Err(LayerError::MissingLinkTarget { path: path(), target: show(&target) });
            };
            match &nodes[j].node.kind {
                Kind::Link(next) if steps < nodes.len() && j != i => {
                    target = next.clone();
                    steps += 1;
                }
                Kind::Link(_) => return Err(LayerError::MissingLinkTarget { path: path(), target: show(first) }),
                Kind::Dir => return Err(LayerError::LinkToDirectory { path: path(), target: show(first) }),
                _ => break j,
            }
        };
        let r = &nodes[root].node;
        let kind = match r.kind {
            Kind::Whiteout => Kind::Whiteout,
            _ => Kind::Link(r.path.clone()),
        };
        let (mode, uid, gid, mtime, xattrs) = (r.mode, r.uid, r.gid, r.mtime, r.xattrs.clone());
        let n = &mut nodes[i].node;
        (n.kind, n.mode, n.uid, n.gid, n.mtime, n.xattrs) = (kind, mode, uid, gid, mtime, xattrs);
    }
    Ok(())
}

/// Hardlinks point at the first path of their group in output order; that
/// path carries the data.
fn lead_links(nodes: &mut [Planned]) {
    let pos: HashMap<&[u8], usize> = nodes.iter().enumerate().map(|(i, n)| (n.node.path.as_slice(), i)).collect();
    let root_of = |n: &Planned| match &n.node.kind {
        Kind::Link(r) => Some(pos[r.as_slice()]),
        _ => None,
    };
    let roots: HashSet<usize> = nodes.iter().filter_map(root_of).collect();
    let mut leader: HashMap<usize, usize> = HashMap::new();
    for (i, n) in nodes.iter().enumerate() {
        match root_of(n) {
            Some(r) => {
                leader.entry(r).or_insert(i);
            }
            None if roots.contains(&i) => {
                leader.entry(i).or_insert(i);
            }
            None => {}
        }
    }
    let kinds: Vec<Option<Kind>> = nodes
        .iter()
        .enumerate()
        .map(|(i, n)| {
            let r = root_of(n).or(roots.contains(&i).then_some(i))?;
            let l = leader[&r];
            Some(if l == i { nodes[r].node.kind.clone() } else { Kind::Link(nodes[l].out.clone()) })
        })
        .collect();
    for (n, k) in nodes.iter_mut().zip(kinds) {
        if let Some(k) = k {
            n.node.kind = k;
        }
    }
}

const BUF: usize = 1 << 20;

fn entry_err(path: &[u8]) -> impl FnOnce(io::Error) -> LayerError + '_ {
    move |source| LayerError::Entry { path: show(path), source }
}

/// Copy exactly `len` bytes of `data` to `out`.
fn copy_data<W: Write>(
    src: &mut dyn Source,
    data: &Data,
    out: &mut W,
    buf: &mut [u8],
    path: &[u8],
) -> Result<(), LayerError> {
    let mut r = src.open(data).map_err(entry_err(path))?;
    let mut left = data.len();
    while left > 0 {
        let want = usize::try_from(left.min(buf.len() as u64)).unwrap_or(buf.len());
        let n = r.read(&mut buf[..want]).map_err(entry_err(path))?;
        if n == 0 {
            return Err(LayerError::Truncated { path: show(path) });
        }
        out.write_all(&buf[..n]).map_err(LayerError::Write)?;
        left -= n as u64;
    }
    Ok(())
}

fn write_entries<W: Write>(
    nodes: &[Planned],
    src: &mut dyn Source,
    out: &mut W,
    opts: &ConvertOptions,
) -> Result<(), LayerError> {
    let mut buf = vec![0u8; BUF];
    let mut path = Vec::new();
    for Planned { node: n, out: name } in nodes {
        let mtime = match opts.source_date_epoch {
            Some(sde) => n.mtime.min(sde),
            None => n.mtime,
        };
        path.clear();
        path.extend_from_slice(name);
        let (fl, size, link, dev): (u8, u64, &[u8], (u32, u32)) = match &n.kind {
            Kind::File(d) => (flag::REGULAR, d.len(), b"", (0, 0)),
            Kind::Whiteout | Kind::OpaqueMarker => (flag::REGULAR, 0, b"", (0, 0)),
            Kind::Dir => {
                path.push(b'/');
                (flag::DIR, 0, b"", (0, 0))
            }
            Kind::Symlink(t) => (flag::SYMLINK, 0, t, (0, 0)),
            Kind::Link(t) => (flag::LINK, 0, t, (0, 0)),
            Kind::Char(a, b) => (flag::CHAR, 0, b"", (*a, *b)),
            Kind::Block(a, b) => (flag::BLOCK, 0, b"", (*a, *b)),
            Kind::Fifo => (flag::FIFO, 0, b"", (0, 0)),
        };
        let (mode, uid, gid, xattrs) = (n.mode, n.uid, n.gid, &n.xattrs);
        let h = EntryHeader { path: &path, flag: fl, mode, uid, gid, size, mtime, link, dev, xattrs };
        writer::write_header(out, &h)?;
        if let Kind::File(d) = &n.kind {
            copy_data(src, d, out, &mut buf, &n.path)?;
        }
        writer::write_padding(out, size)?;
    }
    writer::write_trailer(out)
}

/// Write `changeset` as a deterministic OCI layer to `output`, file bytes
/// read from `src`; its digests and size.
pub fn write<W: Write>(
    changeset: Changeset,
    src: &mut dyn Source,
    output: W,
    opts: &ConvertOptions,
) -> Result<LayerInfo, LayerError> {
    let nodes = plan(changeset.nodes)?;
    let out = BufWriter::with_capacity(BUF, output);
    match opts.gzip {
        None => {
            let mut hw = HashingWriter::new(out);
            write_entries(&nodes, src, &mut hw, opts)?;
            hw.flush().map_err(LayerError::Write)?;
            let (_, tally) = hw.into_inner();
            Ok(LayerInfo { diff_id: tally.digest(), size: tally.len, compressed: None })
        }
        Some(level) => {
            let gz = flate2::GzBuilder::new()
                .mtime(0)
                .write(HashingWriter::new(out), flate2::Compression::new(level.min(9)));
            let mut hw = HashingWriter::new(gz);
            write_entries(&nodes, src, &mut hw, opts)?;
            let (gz, tally) = hw.into_inner();
            let mut comp = gz.finish().map_err(LayerError::Write)?;
            comp.flush().map_err(LayerError::Write)?;
            let (_, ctally) = comp.into_inner();
            let compressed = Some((ctally.digest(), ctally.len));
            Ok(LayerInfo { diff_id: tally.digest(), size: tally.len, compressed })
        }
    }
}

/// Host files, by [`Data::Host`] index: the contents' and store paths'
/// bytes.
#[derive(Debug, Default, Clone)]
pub struct HostFiles(pub Vec<PathBuf>);

impl HostFiles {
    /// Open file `file` (at most `len` bytes of it). It was a regular file
    /// when the tree was made: anything else now is refused rather than
    /// followed or waited on.
    pub fn open(&self, file: usize, len: u64) -> io::Result<std::io::Take<std::fs::File>> {
        use std::os::unix::fs::OpenOptionsExt;
        let path = self.0.get(file).ok_or_else(|| io::Error::other("no such host file"))?;
        let f = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY)
            .open(path)
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
        if !f.metadata()?.is_file() {
            return Err(io::Error::other(format!("{} is no longer a regular file", path.display())));
        }
        Ok(f.take(len))
    }

    /// Add a file; its index.
    pub fn push(&mut self, path: PathBuf) -> usize {
        self.0.push(path);
        self.0.len() - 1
    }
}

impl HostFiles {
    fn open_data(&self, data: &Data) -> io::Result<Box<dyn Read>> {
        match *data {
            Data::Host { file, len } => Ok(Box::new(self.open(file, len)?)),
            other => Err(io::Error::other(format!("not a host file: {other:?}"))),
        }
    }
}

impl Source for HostFiles {
    fn open(&mut self, data: &Data) -> io::Result<Box<dyn Read + '_>> {
        self.open_data(data)
    }
}

impl Source for &HostFiles {
    fn open(&mut self, data: &Data) -> io::Result<Box<dyn Read + '_>> {
        self.open_data(data)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layer::flatten::Inode;
    use crate::layer::test_util::read_layer;
    use std::collections::BTreeMap;

    /// A tree: `d/` holding a file with two names (`d/a`, `d/z`), a second
    /// name `b` at the top, a symlink with a target as a script may write
    /// it, and a directory `skip/` with a file.
    fn tree() -> Tree {
        let mut t = Tree::default();
        let mut add = |kind, mode| {
            t.inodes.push(Inode { kind, mode, uid: 0, gid: 0, mtime: 7, xattrs: BTreeMap::new() });
            t.inodes.len() - 1
        };
        let file = add(flatten::Kind::File(Data::Layer(DataRef { layer: 0, offset: 0, len: 3 })), 0o644);
        let link = add(flatten::Kind::Symlink(b"../x//./y/".to_vec()), 0o777);
        let inner = add(flatten::Kind::File(Data::Layer(DataRef { layer: 0, offset: 3, len: 2 })), 0o600);
        let d = add(flatten::Kind::Dir([(b"z".to_vec(), file), (b"a".to_vec(), file)].into()), 0o755);
        let skip = add(flatten::Kind::Dir([(b"f".to_vec(), inner)].into()), 0o700);
        let root = [(b"d".to_vec(), d), (b"b".to_vec(), file), (b"l".to_vec(), link), (b"skip".to_vec(), skip)];
        t.inodes[0].kind = flatten::Kind::Dir(root.into());
        t
    }

    struct Bytes(&'static [u8]);

    impl Source for Bytes {
        fn open(&mut self, d: &Data) -> io::Result<Box<dyn Read + '_>> {
            let Data::Layer(r) = d else { return Err(io::Error::other("not mine")) };
            Ok(Box::new(&self.0[usize::try_from(r.offset).unwrap()..]))
        }
    }

    fn layer(visit: impl FnMut(&[u8], &flatten::Inode) -> Visit) -> Vec<crate::layer::test_util::Got> {
        let mut cs = Changeset::default();
        cs.add_tree(&tree(), visit).unwrap();
        let mut out = Vec::new();
        write(cs, &mut Bytes(b"abcde"), &mut out, &ConvertOptions::default()).unwrap();
        read_layer(&out)
    }

    #[test]
    fn a_trees_hardlinks_lead_from_the_first_name_in_layer_order_and_targets_stay_as_written() {
        let got = layer(|_, _| Visit::Entry);
        let names: Vec<(&str, u8, &str)> = got.iter().map(|g| (g.path.as_str(), g.ty, g.link.as_str())).collect();
        // The walk meets `b` first, but the layer's order puts it first too;
        // `d/a` and `d/z` link to it. The symlink's target is byte for byte
        // what the tree holds, as GNU tar and the kernel keep it.
        assert_eq!(
            names,
            [
                ("b", b'0', ""),
                ("d/", b'5', ""),
                ("d/a", b'1', "b"),
                ("d/z", b'1', "b"),
                ("l", b'2', "../x//./y/"),
                ("skip/", b'5', ""),
                ("skip/f", b'0', "")
            ]
        );
        assert_eq!((got[0].data.as_slice(), got[6].data.as_slice()), (&b"abc"[..], &b"de"[..]));
        assert!(got.iter().all(|g| g.mtime == 7));
    }

    #[test]
    fn visit_leaves_out_a_directory_itself_or_all_of_it() {
        let got = layer(|p, _| match p {
            b"d" => Visit::Below,
            b"skip" => Visit::Skip,
            _ => Visit::Entry,
        });
        let names: Vec<&str> = got.iter().map(|g| g.path.as_str()).collect();
        assert_eq!(names, ["b", "d/a", "d/z", "l"]);
    }

    #[test]
    fn a_name_no_layer_can_hold_is_refused_as_it_comes_in() {
        let mut cs = Changeset::default();
        let n = |p: &[u8]| Node::new(p.to_vec(), Kind::Fifo, 0o644, 0, 0, 0);
        assert!(matches!(cs.push(n(b"etc/.wh.x"), b"etc/.wh.x"), Err(LayerError::UserWhiteoutName { .. })));
        assert!(matches!(cs.push(n(b"a//b"), b"a//b"), Err(LayerError::InvalidPath { .. })));
        assert!(matches!(cs.push(n(b""), b""), Err(LayerError::InvalidPath { .. })));
        assert!(cs.push(n(b"etc/x.wh."), b"etc/x.wh.").is_ok() && cs.len() == 1);
    }
}
