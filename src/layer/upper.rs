//! The overlay's upper dir, read off the scratch disk's ext4 image the guest
//! left ([`super::ext4`]), into the new layer's [`Changeset`]: whiteouts and
//! opaque directories decoded as entries come, what only hid the job's
//! contents left out, every byte the layer will hold counted against the
//! output limit. [`Ext4Files`] reads the files' bytes when the layer is
//! written; `upper_tar` (test support) writes the same directory as the
//! tar the guest agent used to stream.

use std::collections::HashMap;
use std::io::{self, Read, Seek};

use super::changeset::{self, Changeset, Data, Kind, Node};
use super::ext4::{device, Ext4, Ext4Error, Inode, MAX_DIR_ENTRIES};

/// What the upper dir holds at a path, as far as what lies below it (a
/// lower dir's copy of the path) is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Upper {
    /// A directory merged with the lower ones'.
    Dir,
    /// A directory hiding the lower ones' (`trusted.overlay.opaque=y`).
    Opaque,
    /// A whiteout: the path is gone.
    Whiteout,
    /// Anything else, replacing the lower ones' entry whole.
    Other,
}

/// The walk's bounds: at most `limit` bytes of layer (file data, headers,
/// names, xattrs, each counted as the layer's tar will hold it), and a
/// `stop` asked at every entry (the caller's signal or timeout: the image
/// is the guest's, and a crafted one must not outlive `--timeout`).
#[derive(Clone, Copy)]
pub struct Bounds<'a> {
    pub limit: u64,
    pub stop: &'a dyn Fn() -> bool,
}

impl std::fmt::Debug for Bounds<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bounds").field("limit", &self.limit).finish_non_exhaustive()
    }
}

impl Bounds<'_> {
    /// No stop, at most `limit` bytes.
    pub fn limit(limit: u64) -> Bounds<'static> {
        Bounds { limit, stop: &|| false }
    }
}

/// Read the directory `dir` of `fs` (its contents, not itself) into `out`,
/// file data by reference ([`Data::Ext4`], read by [`Ext4Files`]). Returns
/// every path of the directory and what it is there, so that more entries
/// can be added after them without a duplicate.
///
/// Overlayfs' forms are decoded as they come: a 0/0 character device (or
/// an empty file with `trusted.overlay.whiteout`) is a whiteout, a
/// directory with `trusted.overlay.opaque=y` is opaque.
///
/// `hides_only_contents(path)`: whether a lower dir's copy of `path` comes
/// from the job's contents alone, which the layer holds itself (the base
/// image has no such path). A whiteout there is left out and an opaque
/// directory written as a plain one: the layer just leaves out the contents'
/// copy, as the seed's layer (contents copied into the upper dir before the
/// overlay was mounted) never had one to hide.
pub fn changes<R: Read + Seek>(
    fs: &mut Ext4<R>,
    dir: &str,
    bounds: Bounds<'_>,
    hides_only_contents: &mut dyn FnMut(&[u8]) -> bool,
    out: &mut Changeset,
) -> Result<HashMap<Vec<u8>, Upper>, Ext4Error> {
    let root = fs.lookup(dir)?;
    if !root.is_dir() {
        return Err(Ext4Error::NotFound(format!("{dir} as a directory")));
    }
    let limit = bounds.limit;
    let mut written = HashMap::new();
    let mut first: HashMap<u64, Vec<u8>> = HashMap::new();
    let mut budget = limit;
    // A directory is reached once: a guest that links one twice (or into
    // itself) gets an error, not a walk that never ends.
    let mut dirs_seen = std::collections::HashSet::from([root.ino]);
    let mut stack = vec![(root, Vec::<u8>::new(), 0usize)];
    while let Some((d, path, depth)) = stack.pop() {
        if depth > 2048 {
            return Err(Ext4Error::Corrupt { ino: d.ino, what: "directories nested too deep".into() });
        }
        let mut subdirs = Vec::new();
        // Each entry will cost at least a tar header of the budget: a
        // directory of more entries than it allows is refused as it is read.
        let room = usize::try_from(budget / TAR_BLOCK).unwrap_or(usize::MAX).min(MAX_DIR_ENTRIES);
        let entries = fs.dir_limited(&d, room).map_err(|e| match e {
            Ext4Error::TooManyEntries { max, .. } if max < MAX_DIR_ENTRIES => Ext4Error::TooLarge(limit),
            Ext4Error::TooManyEntries { ino, .. } => {
                Ext4Error::Corrupt { ino, what: "too many directory entries".into() }
            }
            other => other,
        })?;
        for (name, child) in entries {
            if (bounds.stop)() {
                return Err(Ext4Error::Io(super::stopped()));
            }
            let p = super::rules::join(&path, &name);
            let inode = fs.inode(child)?;
            let mut ctx = EntryCtx { first: &mut first, budget: &mut budget, limit };
            let what = entry(fs, out, &inode, &p, &mut ctx, &mut || hides_only_contents(&p))?;
            written.insert(p.clone(), what);
            if inode.is_dir() {
                if !dirs_seen.insert(inode.ino) {
                    return Err(Ext4Error::Corrupt { ino: inode.ino, what: "a directory linked twice".into() });
                }
                subdirs.push((inode, p, depth + 1));
            }
        }
        stack.extend(subdirs.into_iter().rev());
    }
    Ok(written)
}

/// The walk's state an entry updates: the first path of each hardlinked
/// inode, and what is left of the output budget.
struct EntryCtx<'a> {
    first: &'a mut HashMap<u64, Vec<u8>>,
    budget: &'a mut u64,
    limit: u64,
}

/// A tar block: every header, and the unit name and data records round to.
const TAR_BLOCK: u64 = 512;

impl EntryCtx<'_> {
    /// Take `bytes` of the layer from the budget (rounded up to whole tar
    /// blocks, as the layer stores them); over it, the output limit error.
    fn charge(&mut self, bytes: u64) -> Result<(), Ext4Error> {
        let blocks = bytes.div_ceil(TAR_BLOCK).saturating_mul(TAR_BLOCK);
        *self.budget = self.budget.checked_sub(blocks).ok_or(Ext4Error::TooLarge(self.limit))?;
        Ok(())
    }
}

fn entry<R: Read + Seek>(
    fs: &mut Ext4<R>,
    out: &mut Changeset,
    inode: &Inode,
    path: &[u8],
    ctx: &mut EntryCtx<'_>,
    hides_only_contents: &mut dyn FnMut() -> bool,
) -> Result<Upper, Ext4Error> {
    let mtime = u64::try_from(inode.mtime).unwrap_or(0);
    let node = |kind| {
        Node::new(path.to_vec(), kind, u32::from(inode.mode & 0o7777), inode.uid.into(), inode.gid.into(), mtime)
    };
    let push = |out: &mut Changeset, node| out.push(node, path).map_err(Ext4Error::Entry);
    // Every byte the layer will hold counts against the limit, not only
    // file data: the header, and a long name's own header and record (so
    // that many files under deep long names cannot make a huge layer, nor
    // take the host's memory, from a small disk).
    ctx.charge(TAR_BLOCK)?;
    if path.len() >= 100 {
        ctx.charge(TAR_BLOCK + path.len() as u64)?;
    }
    // Overlayfs (Linux 5.8 on) gives every whiteout one shared inode: each
    // is a whiteout of its own, never a hardlink of another, so that the
    // check below applies to each (a whiteout of a path only the contents
    // had is left out, whichever the walk meets first).
    if !inode.is_dir() && inode.links > 1 && !is_whiteout(inode) {
        if let Some(target) = ctx.first.get(&inode.ino).cloned() {
            if target.len() >= 100 {
                ctx.charge(TAR_BLOCK + target.len() as u64)?;
            }
            push(out, node(Kind::Link(target)))?;
            return Ok(Upper::Other);
        }
        ctx.first.insert(inode.ino, path.to_vec());
    }
    if is_whiteout(inode) && hides_only_contents() {
        return Ok(Upper::Whiteout);
    }
    let raw_xattrs = fs.xattrs(inode)?;
    if !raw_xattrs.is_empty() {
        // A PAX header and its records ("len SCHILY.xattr.name=value\n").
        let records: u64 = raw_xattrs.iter().map(|(k, v)| 32 + k.len() as u64 + v.len() as u64).sum();
        ctx.charge(TAR_BLOCK + records)?;
    }
    let xattrs = changeset::sort_xattrs(raw_xattrs, path).map_err(Ext4Error::Entry)?;
    let xattr_whiteout = inode.kind() == 0o100_000 && inode.size == 0 && xattrs.whiteout;
    if xattr_whiteout && hides_only_contents() {
        return Ok(Upper::Whiteout);
    }
    // An opaque directory hides the contents' copy below it either way; the
    // layer marks it opaque only where the base has the path too.
    let opaque = inode.is_dir() && xattrs.opaque;
    let corrupt = |what: &str| Ext4Error::Corrupt { ino: inode.ino, what: what.into() };
    let (kind, what) = match inode.kind() {
        0o040_000 => (Kind::Dir, if opaque { Upper::Opaque } else { Upper::Dir }),
        _ if is_whiteout(inode) || xattr_whiteout => (Kind::Whiteout, Upper::Whiteout),
        0o100_000 => {
            ctx.charge(inode.size)?;
            (Kind::File(Data::Ext4 { ino: inode.ino, len: inode.size }), Upper::Other)
        }
        0o120_000 => {
            let target = fs.symlink(inode)?;
            if target.is_empty() || target.contains(&0) {
                return Err(corrupt("bad symlink target"));
            }
            if target.len() >= 100 {
                ctx.charge(TAR_BLOCK + target.len() as u64)?;
            }
            (Kind::Symlink(target), Upper::Other)
        }
        0o020_000 => {
            let (major, minor) = device(inode);
            (Kind::Char(major, minor), Upper::Other)
        }
        0o060_000 => {
            let (major, minor) = device(inode);
            (Kind::Block(major, minor), Upper::Other)
        }
        0o010_000 => (Kind::Fifo, Upper::Other),
        // A socket cannot be in a layer; the converter names it.
        0o140_000 => return Err(Ext4Error::Socket(String::from_utf8_lossy(path).into_owned())),
        _ => return Err(corrupt("unknown file type")),
    };
    let mut n = node(kind);
    n.opaque = opaque && !hides_only_contents();
    n.xattrs = xattrs.keep;
    push(out, n)?;
    Ok(what)
}

/// The upper dir's file bytes, read off the image by [`Data::Ext4`] inode
/// when the layer is written (every read bounded as the walk's are).
#[derive(Debug)]
pub struct Ext4Files<R>(pub Ext4<R>);

impl<R: Read + Seek> changeset::Source for Ext4Files<R> {
    fn open(&mut self, data: &Data) -> io::Result<Box<dyn Read + '_>> {
        let &Data::Ext4 { ino, len } = data else {
            return Err(io::Error::other(format!("not a scratch disk file: {data:?}")));
        };
        let inode = self.0.inode(ino).map_err(io::Error::other)?;
        if inode.kind() != 0o100_000 || inode.size != len {
            return Err(io::Error::other(format!("inode {ino} is no longer the file the walk read")));
        }
        Ok(Box::new(self.0.contents(&inode).map_err(io::Error::other)?))
    }
}

/// Test support: the directory `dir` of `fs` (its contents, not itself) as
/// the tar the guest agent used to stream, the form [`super::convert`]
/// takes: whiteouts as 0/0 character devices, an opaque directory with
/// `trusted.overlay.opaque=y`, every kept xattr as a PAX `SCHILY.xattr.*`
/// record, hardlinks as entries to the first path; at most `limit` bytes.
#[cfg(any(test, feature = "fuzz"))]
pub fn upper_tar<R: Read + Seek, W: io::Write>(
    fs: &mut Ext4<R>,
    dir: &str,
    out: W,
    limit: u64,
) -> Result<(), Ext4Error> {
    use std::ffi::OsStr;
    use std::os::unix::ffi::OsStrExt;
    use std::path::Path;
    use tar::EntryType;
    let mut cs = Changeset::default();
    changes(fs, dir, Bounds::limit(limit), &mut |_| false, &mut cs)?;
    let mut b = tar::Builder::new(out);
    b.mode(tar::HeaderMode::Complete);
    let mut files = Ext4Files(fs.reopen()?);
    let w = Ext4Error::Write;
    for n in cs.nodes() {
        let p = Path::new(OsStr::from_bytes(&n.path));
        let mut h = tar::Header::new_gnu();
        h.set_mode(n.mode);
        h.set_uid(n.uid);
        h.set_gid(n.gid);
        h.set_mtime(n.mtime);
        h.set_size(0);
        h.set_device_major(0).map_err(w)?;
        h.set_device_minor(0).map_err(w)?;
        let mut records: Vec<(String, &[u8])> =
            n.xattrs.iter().map(|(k, v)| (format!("{}{k}", super::rules::PAX_XATTR_PREFIX), v.as_slice())).collect();
        if n.opaque {
            records.push((format!("{}{}", super::rules::PAX_XATTR_PREFIX, super::rules::OVERLAY_OPAQUE_XATTR), b"y"));
        }
        if !records.is_empty() && !matches!(n.kind, Kind::Link(_)) {
            b.append_pax_extensions(records.iter().map(|(k, v)| (k.as_str(), *v))).map_err(w)?;
        }
        let link = |b: &mut tar::Builder<W>, h: &mut tar::Header, ty, t: &[u8]| {
            h.set_entry_type(ty);
            b.append_link(h, p, Path::new(OsStr::from_bytes(t))).map_err(w)
        };
        let mut device = |ty, (ma, mi)| -> Result<(), Ext4Error> {
            h.set_entry_type(ty);
            h.set_device_major(ma).map_err(w)?;
            h.set_device_minor(mi).map_err(w)?;
            b.append_data(&mut h, p, io::empty()).map_err(w)
        };
        match &n.kind {
            Kind::Link(t) => link(&mut b, &mut h, EntryType::Link, t)?,
            Kind::Symlink(t) => link(&mut b, &mut h, EntryType::Symlink, t)?,
            Kind::Whiteout => device(EntryType::Char, (0, 0))?,
            Kind::Char(ma, mi) => device(EntryType::Char, (*ma, *mi))?,
            Kind::Block(ma, mi) => device(EntryType::Block, (*ma, *mi))?,
            Kind::Dir => {
                h.set_entry_type(EntryType::Directory);
                b.append_data(&mut h, p, io::empty()).map_err(w)?;
            }
            Kind::Fifo => {
                h.set_entry_type(EntryType::Fifo);
                b.append_data(&mut h, p, io::empty()).map_err(w)?;
            }
            Kind::File(d) => {
                h.set_entry_type(EntryType::Regular);
                h.set_size(d.len());
                let r = changeset::Source::open(&mut files, d).map_err(Ext4Error::from_io)?;
                b.append_data(&mut h, p, r).map_err(w)?;
            }
            Kind::OpaqueMarker => unreachable!("a source makes no markers"),
        }
    }
    b.into_inner().map_err(w)?.flush().map_err(w)
}

/// An overlay whiteout: a 0/0 character device.
fn is_whiteout(inode: &Inode) -> bool {
    inode.kind() == 0o020_000 && device(inode) == (0, 0)
}
