//! Overlay upper dir tar -> OCI layer.
//!
//! Two passes. The first reads the input archive once and keeps an index of
//! entry headers (path, type, owner, mode, mtime, kept xattrs); file data stays
//! where it is when the input can seek ([`convert_seekable`]) and is otherwise
//! appended to an anonymous spool file ([`convert`]). The index is then checked
//! (duplicates, parents, hardlinks), turned into OCI form (whiteouts renamed,
//! opaque markers added), sorted into the canonical order of
//! [`rules::cmp_paths`], and written by a deterministic tar writer while the
//! sha256 of the uncompressed stream (the diff_id) and of the optional gzip
//! stream are computed. Memory is O(entries); no layer is buffered whole.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{self, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::Path;

use tar::EntryType;

use super::rules::{self, Xattr};
use super::writer::{self, flag, EntryHeader, HashingWriter};
use super::{show, LayerError};

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
    /// `sha256:<hex>` of the uncompressed tar (the OCI diff_id).
    pub diff_id: String,
    /// Size of the uncompressed tar.
    pub size: u64,
    /// `(sha256:<hex>, size)` of the gzip stream, when gzip was asked for.
    pub compressed: Option<(String, u64)>,
}

#[derive(Debug, Clone, Copy)]
enum Data {
    Input { offset: u64, len: u64 },
    Spool { offset: u64, len: u64 },
}

#[derive(Debug, Clone)]
enum Kind {
    File(Data),
    Dir,
    Symlink(Vec<u8>),
    /// Resolved to the normalized path of the entry holding the inode.
    Link(Vec<u8>),
    Char(u32, u32),
    Block(u32, u32),
    Fifo,
    Whiteout,
    OpaqueMarker,
}

#[derive(Debug, Clone)]
struct Node {
    /// Normalized input path.
    path: Vec<u8>,
    /// Output path (differs for whiteouts and markers).
    out: Vec<u8>,
    kind: Kind,
    opaque: bool,
    mode: u32,
    uid: u64,
    gid: u64,
    mtime: u64,
    xattrs: Vec<(String, Vec<u8>)>,
}

/// File data appended to an anonymous temporary file.
#[derive(Debug, Default)]
struct Spool {
    file: Option<File>,
    len: u64,
}

impl Spool {
    fn append<R: Read>(&mut self, r: &mut R, buf: &mut [u8]) -> io::Result<(u64, u64)> {
        let file = match &mut self.file {
            Some(f) => f,
            None => self.file.insert(tempfile::tempfile()?),
        };
        let start = self.len;
        loop {
            let n = r.read(buf)?;
            if n == 0 {
                break;
            }
            file.write_all(&buf[..n])?;
            self.len += n as u64;
        }
        Ok((start, self.len - start))
    }
}

const BUF: usize = 1 << 20;

/// Convert an upper-dir tar read from a stream; file data is spooled to an
/// anonymous temporary file.
pub fn convert<R: Read, W: Write>(input: R, output: W, opts: &ConvertOptions) -> Result<LayerInfo, LayerError> {
    let mut spool = Spool::default();
    let mut archive = tar::Archive::new(input);
    let entries = archive.entries().map_err(LayerError::Read)?;
    let nodes = index(entries, false, &mut spool)?;
    let nodes = plan(nodes)?;
    emit::<File, W>(&nodes, None, &mut spool, output, opts)
}

/// Convert an upper-dir tar that can be read at random: file data is copied
/// straight from the input, nothing is spooled.
pub fn convert_seekable<R: Read + Seek, W: Write>(
    mut input: R,
    output: W,
    opts: &ConvertOptions,
) -> Result<LayerInfo, LayerError> {
    let base = input.stream_position().map_err(LayerError::Read)?;
    let mut spool = Spool::default();
    let mut archive = tar::Archive::new(SeekBuf::new(input, base).map_err(LayerError::Read)?);
    let entries = archive.entries_with_seek().map_err(LayerError::Read)?;
    let nodes = index(entries, true, &mut spool)?;
    let nodes = plan(nodes)?;
    let mut input = archive.into_inner();
    emit(&nodes, Some(&mut input), &mut spool, output, opts)
}

/// A read buffer that survives seeks landing inside it. Both passes of
/// [`convert_seekable`] seek per entry (past data, then to each file's data in
/// output order, which mostly follows input order); `BufReader` would throw
/// its buffer away on every seek. Reads larger than the buffer bypass it.
#[derive(Debug)]
struct SeekBuf<R> {
    inner: R,
    buf: Box<[u8]>,
    /// Where the archive starts in `inner`; all other positions are relative.
    base: u64,
    /// Archive offset of `buf[0]` and how much of `buf` is valid.
    start: u64,
    len: usize,
    /// Logical position, and the inner reader's position when known.
    pos: u64,
    inner_pos: Option<u64>,
    /// The archive's length: a seek past it is an error, as reading past
    /// it is when streaming. (The `tar` crate skips entry data by seeking;
    /// a seek past the end would make a truncated archive look whole.)
    end: u64,
}

impl<R: Read + Seek> SeekBuf<R> {
    /// `inner` is positioned at `base`, which becomes position 0: the `tar`
    /// crate takes the positions a seek returns for archive offsets.
    fn new(mut inner: R, base: u64) -> io::Result<Self> {
        let end = inner.seek(SeekFrom::End(0))?.saturating_sub(base);
        inner.seek(SeekFrom::Start(base))?;
        let buf = vec![0u8; 256 << 10].into_boxed_slice();
        Ok(Self { inner, buf, base, start: 0, len: 0, pos: 0, inner_pos: Some(0), end })
    }

    fn sync_inner(&mut self) -> io::Result<()> {
        if self.inner_pos != Some(self.pos) {
            self.inner.seek(SeekFrom::Start(self.base + self.pos))?;
            self.inner_pos = Some(self.pos);
        }
        Ok(())
    }

    fn read_buffered(&mut self, out: &mut [u8]) -> Option<usize> {
        let end = self.start + self.len as u64;
        if self.pos < self.start || self.pos >= end {
            return None;
        }
        let off = usize::try_from(self.pos - self.start).ok()?;
        let n = out.len().min(self.len - off);
        out[..n].copy_from_slice(&self.buf[off..off + n]);
        self.pos += n as u64;
        Some(n)
    }
}

impl<R: Read + Seek> Read for SeekBuf<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if let Some(n) = self.read_buffered(out) {
            return Ok(n);
        }
        self.sync_inner()?;
        if out.len() >= self.buf.len() {
            let n = self.inner.read(out)?;
            self.pos += n as u64;
            self.inner_pos = Some(self.pos);
            return Ok(n);
        }
        let n = self.inner.read(&mut self.buf)?;
        (self.start, self.len) = (self.pos, n);
        self.inner_pos = Some(self.pos + n as u64);
        Ok(self.read_buffered(out).unwrap_or(0))
    }
}

impl<R: Read + Seek> Seek for SeekBuf<R> {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        let pos = match to {
            SeekFrom::Start(p) => p,
            SeekFrom::Current(d) => self
                .pos
                .checked_add_signed(d)
                .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "seek before start"))?,
            SeekFrom::End(_) => {
                let p = self
                    .inner
                    .seek(to)?
                    .checked_sub(self.base)
                    .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "seek before start"))?;
                self.inner_pos = Some(p);
                p
            }
        };
        if pos > self.end {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "archive ends inside an entry"));
        }
        self.pos = pos;
        Ok(self.pos)
    }
}

/// Convert the tar file `input` into the layer file `output`, atomically:
/// the layer is written to a temporary file beside `output` and renamed over
/// it only on success, so a failed conversion leaves nothing at `output`.
///
/// `input` is written by the guest (the upper tar in the exchange share): a
/// symlink there is not followed (it could name any host file the user can
/// read), and anything but a regular file, a FIFO say, is refused without
/// waiting on it.
///
/// `stop` is asked before every write and before the layer is put in
/// place: once it says so, the conversion fails and leaves nothing (the
/// caller's SIGINT/SIGTERM).
pub fn convert_file_to_path(
    input: &Path,
    output: &Path,
    opts: &ConvertOptions,
    stop: &dyn Fn() -> bool,
) -> Result<LayerInfo, LayerError> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(input)
        .map_err(LayerError::Read)?;
    if !file.metadata().map_err(LayerError::Read)?.is_file() {
        return Err(LayerError::Read(io::Error::new(io::ErrorKind::InvalidInput, "not a regular file")));
    }
    let dir = match output.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(LayerError::Write)?;
    let info = convert_seekable(file, Stoppable { inner: tmp.as_file_mut(), stop }, opts)?;
    if stop() {
        return Err(LayerError::Write(stopped()));
    }
    tmp.as_file().sync_all().map_err(LayerError::Write)?;
    tmp.persist(output).map_err(|e| LayerError::Write(e.error))?;
    Ok(info)
}

/// A writer that fails once `stop` says so (not with `Interrupted`, which
/// `write_all` would retry).
#[derive(Debug)]
pub struct Stoppable<W, F> {
    pub inner: W,
    pub stop: F,
}

/// The error a [`Stoppable`] writer fails with.
pub fn stopped() -> io::Error {
    io::Error::other("stopped by a signal")
}

impl<W: Write, F: Fn() -> bool> Write for Stoppable<W, F> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if (self.stop)() {
            return Err(stopped());
        }
        self.inner.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

fn entry_err(path: &[u8]) -> impl FnOnce(io::Error) -> LayerError + '_ {
    move |source| LayerError::Entry { path: show(path), source }
}

/// Pass one: read every entry into the index.
fn index<R: Read>(entries: tar::Entries<'_, R>, seekable: bool, spool: &mut Spool) -> Result<Vec<Node>, LayerError> {
    let mut buf = vec![0u8; BUF];
    let mut nodes = Vec::new();
    for entry in entries {
        let mut entry = entry.map_err(LayerError::Read)?;
        let ty = entry.header().entry_type();
        if ty.is_pax_global_extensions() {
            continue;
        }
        let raw = entry.path_bytes().into_owned();
        let path = rules::normalize(&raw)?;
        let pax = rules::pax_info(&mut entry, &raw)?;
        if pax.sparse {
            return Err(LayerError::UnsupportedType { path: show(&raw), kind: 'S' });
        }
        if path.is_empty() {
            // The upper dir itself: its attributes are the agent's, not the script's.
            continue;
        }
        let (_, name) = rules::split(&path);
        if name.starts_with(rules::WHITEOUT_PREFIX) {
            return Err(LayerError::UserWhiteoutName { path: show(&raw) });
        }
        let hdr = entry.header();
        let mode = hdr.mode().map_err(entry_err(&raw))? & 0o7777;
        let uid = hdr.uid().map_err(entry_err(&raw))?;
        let gid = hdr.gid().map_err(entry_err(&raw))?;
        let mtime = match pax.mtime {
            Some(m) => m,
            None => hdr.mtime().map_err(entry_err(&raw))?,
        };
        let dev = || -> Result<(u32, u32), LayerError> {
            Ok((
                hdr.device_major().map_err(entry_err(&raw))?.unwrap_or(0),
                hdr.device_minor().map_err(entry_err(&raw))?.unwrap_or(0),
            ))
        };
        let mut opaque = false;
        let mut whiteout_xattr = false;
        let mut xattrs = Vec::new();
        for (k, v) in pax.xattrs {
            match rules::classify_xattr(&k) {
                Xattr::Keep => xattrs.push((k, v)),
                Xattr::Drop => {}
                Xattr::Overlay("opaque") => opaque = v == b"y",
                Xattr::Overlay("whiteout") => whiteout_xattr = true,
                Xattr::Overlay(s) if s == "redirect" || s == "metacopy" => {
                    return Err(LayerError::OverlayFeature { path: show(&raw), xattr: k })
                }
                Xattr::Overlay(_) => {}
            }
        }
        xattrs.sort();
        xattrs.dedup_by(|a, b| a.0 == b.0);
        let kind = match ty {
            EntryType::Regular | EntryType::Continuous if whiteout_xattr && entry.size() == 0 => Kind::Whiteout,
            EntryType::Regular | EntryType::Continuous => match seekable {
                true => Kind::File(Data::Input { offset: entry.raw_file_position(), len: entry.size() }),
                false => {
                    let (offset, len) = spool.append(&mut entry, &mut buf).map_err(LayerError::Spool)?;
                    Kind::File(Data::Spool { offset, len })
                }
            },
            EntryType::GNUSparse => {
                let (offset, len) = spool.append(&mut entry, &mut buf).map_err(LayerError::Spool)?;
                Kind::File(Data::Spool { offset, len })
            }
            EntryType::Directory => Kind::Dir,
            EntryType::Symlink => Kind::Symlink(entry.link_name_bytes().map(|l| l.into_owned()).unwrap_or_default()),
            EntryType::Link => {
                let target = entry.link_name_bytes().unwrap_or_default();
                Kind::Link(rules::normalize(&target)?)
            }
            EntryType::Char => match dev()? {
                (0, 0) => Kind::Whiteout,
                (ma, mi) => Kind::Char(ma, mi),
            },
            EntryType::Block => {
                let (ma, mi) = dev()?;
                Kind::Block(ma, mi)
            }
            EntryType::Fifo => Kind::Fifo,
            other => return Err(LayerError::UnsupportedType { path: show(&raw), kind: char::from(other.as_byte()) }),
        };
        nodes.push(Node {
            out: path.clone(),
            path,
            kind,
            opaque: opaque && matches!(ty, EntryType::Directory),
            mode,
            uid,
            gid,
            mtime,
            xattrs,
        });
    }
    Ok(nodes)
}

/// Check the index and turn it into the sorted list of OCI entries.
fn plan(mut nodes: Vec<Node>) -> Result<Vec<Node>, LayerError> {
    // Duplicates, on input paths.
    let mut by_path: HashMap<Vec<u8>, usize> = HashMap::with_capacity(nodes.len());
    for (i, n) in nodes.iter().enumerate() {
        if by_path.insert(n.path.clone(), i).is_some() {
            return Err(LayerError::Duplicate { path: show(&n.path) });
        }
    }
    // Hardlinks: follow to the entry that holds the inode. Overlayfs shares one
    // whiteout inode between whiteouts, so a link to a whiteout is a whiteout.
    for i in 0..nodes.len() {
        let Kind::Link(first) = &nodes[i].kind else {
            continue;
        };
        let mut target = first.clone();
        let mut steps = 0;
        let root = loop {
            let Some(&j) = by_path.get(&target) else {
                return Err(LayerError::MissingLinkTarget { path: show(&nodes[i].path), target: show(&target) });
            };
            match &nodes[j].kind {
                Kind::Link(next) if steps < nodes.len() && j != i => {
                    target = next.clone();
                    steps += 1;
                }
                Kind::Link(_) => {
                    return Err(LayerError::MissingLinkTarget { path: show(&nodes[i].path), target: show(first) })
                }
                Kind::Dir => {
                    return Err(LayerError::LinkToDirectory { path: show(&nodes[i].path), target: show(first) })
                }
                _ => break j,
            }
        };
        let root_node = &nodes[root];
        let root_path = root_node.path.clone();
        let (kind, mode, uid, gid, mtime, xattrs) = (
            root_node.kind.clone(),
            root_node.mode,
            root_node.uid,
            root_node.gid,
            root_node.mtime,
            root_node.xattrs.clone(),
        );
        let n = &mut nodes[i];
        (n.mode, n.uid, n.gid, n.mtime, n.xattrs) = (mode, uid, gid, mtime, xattrs);
        n.kind = match kind {
            Kind::Whiteout => Kind::Whiteout,
            _ => Kind::Link(root_path),
        };
    }
    // Parents must be directories ("entry under a whiteout" lands here too).
    for n in &nodes {
        let (parent, _) = rules::split(&n.path);
        if let Some(&p) = by_path.get(parent) {
            if !matches!(nodes[p].kind, Kind::Dir) {
                return Err(LayerError::NotADirectory { path: show(&n.path), parent: show(parent) });
            }
        }
    }
    // OCI names.
    let mut markers = Vec::new();
    for n in &mut nodes {
        if matches!(n.kind, Kind::Whiteout) {
            let (parent, name) = rules::split(&n.path);
            let mut wh = rules::WHITEOUT_PREFIX.to_vec();
            wh.extend_from_slice(name);
            n.out = rules::join(parent, &wh);
            (n.mode, n.uid, n.gid) = (0, 0, 0);
            n.xattrs.clear();
        }
        if n.opaque {
            markers.push(Node {
                path: rules::join(&n.path, rules::OPAQUE_MARKER),
                out: rules::join(&n.path, rules::OPAQUE_MARKER),
                kind: Kind::OpaqueMarker,
                opaque: false,
                mode: 0,
                uid: 0,
                gid: 0,
                mtime: n.mtime,
                xattrs: Vec::new(),
            });
        }
    }
    nodes.append(&mut markers);
    nodes.sort_by(|a, b| rules::cmp_paths(&a.out, &b.out));
    for w in nodes.windows(2) {
        if w[0].out == w[1].out {
            return Err(LayerError::Duplicate { path: show(&w[1].out) });
        }
    }
    // Hardlinks point at the first path of their group in output order; that
    // path carries the data.
    let pos: HashMap<&[u8], usize> = nodes.iter().enumerate().map(|(i, n)| (n.path.as_slice(), i)).collect();
    let roots: HashSet<usize> = nodes
        .iter()
        .filter_map(|n| match &n.kind {
            Kind::Link(r) => Some(pos[r.as_slice()]),
            _ => None,
        })
        .collect();
    let mut leader: HashMap<usize, usize> = HashMap::new();
    for (i, n) in nodes.iter().enumerate() {
        match &n.kind {
            Kind::Link(r) => {
                leader.entry(pos[r.as_slice()]).or_insert(i);
            }
            _ if roots.contains(&i) => {
                leader.entry(i).or_insert(i);
            }
            _ => {}
        }
    }
    let mut kinds = Vec::with_capacity(nodes.len());
    for (i, n) in nodes.iter().enumerate() {
        let root = match &n.kind {
            Kind::Link(r) => Some(pos[r.as_slice()]),
            _ if roots.contains(&i) => Some(i),
            _ => None,
        };
        kinds.push(match root {
            None => n.kind.clone(),
            Some(r) => {
                let l = leader[&r];
                if l == i {
                    nodes[r].kind.clone()
                } else {
                    Kind::Link(nodes[l].out.clone())
                }
            }
        });
    }
    for (n, k) in nodes.iter_mut().zip(kinds) {
        n.kind = k;
    }
    Ok(nodes)
}

fn copy_range<S: Read + Seek, W: Write>(
    src: &mut S,
    offset: u64,
    len: u64,
    out: &mut W,
    buf: &mut [u8],
    path: &[u8],
) -> Result<(), LayerError> {
    src.seek(SeekFrom::Start(offset)).map_err(entry_err(path))?;
    let mut left = len;
    while left > 0 {
        let want = usize::try_from(left.min(buf.len() as u64)).unwrap_or(buf.len());
        let n = src.read(&mut buf[..want]).map_err(entry_err(path))?;
        if n == 0 {
            return Err(LayerError::Truncated { path: show(path) });
        }
        out.write_all(&buf[..n]).map_err(LayerError::Write)?;
        left -= n as u64;
    }
    Ok(())
}

fn write_entries<S: Read + Seek, W: Write>(
    nodes: &[Node],
    mut input: Option<&mut S>,
    spool: &mut Spool,
    out: &mut W,
    opts: &ConvertOptions,
) -> Result<(), LayerError> {
    let mut buf = vec![0u8; BUF];
    let mut path = Vec::new();
    for n in nodes {
        let mtime = match opts.source_date_epoch {
            Some(sde) => n.mtime.min(sde),
            None => n.mtime,
        };
        path.clear();
        path.extend_from_slice(&n.out);
        let (fl, size, link, dev): (u8, u64, &[u8], (u32, u32)) = match &n.kind {
            Kind::File(Data::Input { len, .. } | Data::Spool { len, .. }) => (flag::REGULAR, *len, b"", (0, 0)),
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
        writer::write_header(
            out,
            &EntryHeader {
                path: &path,
                flag: fl,
                mode: n.mode,
                uid: n.uid,
                gid: n.gid,
                size,
                mtime,
                link,
                dev,
                xattrs: &n.xattrs,
            },
        )?;
        match n.kind {
            Kind::File(Data::Input { offset, len }) => {
                let src = input.as_deref_mut().ok_or(LayerError::Truncated { path: show(&n.path) })?;
                copy_range(src, offset, len, out, &mut buf, &n.path)?;
            }
            Kind::File(Data::Spool { offset, len }) => {
                let src = spool.file.as_mut().ok_or(LayerError::Truncated { path: show(&n.path) })?;
                copy_range(src, offset, len, out, &mut buf, &n.path)?;
            }
            _ => {}
        }
        writer::write_padding(out, size)?;
    }
    writer::write_trailer(out)
}

fn emit<S: Read + Seek, W: Write>(
    nodes: &[Node],
    input: Option<&mut S>,
    spool: &mut Spool,
    output: W,
    opts: &ConvertOptions,
) -> Result<LayerInfo, LayerError> {
    let out = BufWriter::with_capacity(BUF, output);
    match opts.gzip {
        None => {
            let mut hw = HashingWriter::new(out);
            write_entries(nodes, input, spool, &mut hw, opts)?;
            hw.flush().map_err(LayerError::Write)?;
            let (diff_id, size, _) = hw.finish();
            Ok(LayerInfo { diff_id, size, compressed: None })
        }
        Some(level) => {
            let gz = flate2::GzBuilder::new()
                .mtime(0)
                .write(HashingWriter::new(out), flate2::Compression::new(level.min(9)));
            let mut hw = HashingWriter::new(gz);
            write_entries(nodes, input, spool, &mut hw, opts)?;
            let (diff_id, size, gz) = hw.finish();
            let mut comp = gz.finish().map_err(LayerError::Write)?;
            comp.flush().map_err(LayerError::Write)?;
            let (digest, csize, _) = comp.finish();
            Ok(LayerInfo { diff_id, size, compressed: Some((digest, csize)) })
        }
    }
}

#[cfg(test)]
#[path = "convert_tests.rs"]
mod tests;
