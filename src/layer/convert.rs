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

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::Path;

use tar::EntryType;

use super::changeset::{self, Changeset, Data, Kind, Node, Source};
pub use super::changeset::{ConvertOptions, LayerInfo};
use super::rules;
use super::{show, LayerError};

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
    let changes = index(entries, false, &mut spool)?;
    changeset::write(changes, &mut TarData::<File> { input: None, spool: &mut spool }, output, opts)
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
    let changes = index(entries, true, &mut spool)?;
    let mut input = archive.into_inner();
    changeset::write(changes, &mut TarData { input: Some(&mut input), spool: &mut spool }, output, opts)
}

/// An upper-dir tar that can be read at random as a changeset, its file
/// data [`Data::Input`] ranges of `input` (for the tests that apply it).
#[cfg(test)]
pub(crate) fn tar_changes<R: Read + Seek>(input: R) -> Result<Changeset, LayerError> {
    let mut spool = Spool::default();
    let mut archive = tar::Archive::new(SeekBuf::new(input, 0).map_err(LayerError::Read)?);
    let entries = archive.entries_with_seek().map_err(LayerError::Read)?;
    index(entries, true, &mut spool)
}

/// The file bytes of an upper-dir tar: in the input itself, or spooled.
struct TarData<'a, S> {
    input: Option<&'a mut S>,
    spool: &'a mut Spool,
}

impl<S: Read + Seek> Source for TarData<'_, S> {
    fn open(&mut self, data: &Data) -> io::Result<Box<dyn Read + '_>> {
        let missing = || io::Error::other("no file data");
        let (src, offset): (&mut dyn ReadSeek, u64) = match *data {
            Data::Input { offset, .. } => (self.input.as_deref_mut().ok_or_else(missing)?, offset),
            Data::Spool { offset, .. } => (self.spool.file.as_mut().ok_or_else(missing)?, offset),
            other => return Err(io::Error::other(format!("not an upper tar's data: {other:?}"))),
        };
        src.seek(SeekFrom::Start(offset))?;
        Ok(Box::new(src))
    }
}

trait ReadSeek: Read + Seek {}
impl<T: Read + Seek> ReadSeek for T {}

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
    write_atomically(output, stop, |out| convert_seekable(file, out, opts))
}

/// Write a layer with `write` to a temporary file beside `output`, put in
/// place only on success: a failure leaves nothing at `output`. `stop` is
/// asked before every write and before the layer is put in place: once it
/// says so, the write fails (the caller's SIGINT/SIGTERM).
pub fn write_atomically(
    output: &Path,
    stop: &dyn Fn() -> bool,
    write: impl FnOnce(&mut dyn Write) -> Result<LayerInfo, LayerError>,
) -> Result<LayerInfo, LayerError> {
    let dir = match output.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(LayerError::Write)?;
    let info = write(&mut Stoppable { inner: tmp.as_file_mut(), stop })?;
    if stop() {
        return Err(LayerError::Write(stopped()));
    }
    tmp.as_file().sync_all().map_err(LayerError::Write)?;
    tmp.persist(output).map_err(|e| LayerError::Write(e.error))?;
    Ok(info)
}

/// A writer or reader that fails once `stop` says so (not with
/// `Interrupted`, which `write_all` and `io::copy` would retry).
#[derive(Debug)]
pub struct Stoppable<W, F> {
    pub inner: W,
    pub stop: F,
}

/// The error a [`Stoppable`] writer or reader fails with.
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

impl<R: io::Read, F: Fn() -> bool> io::Read for Stoppable<R, F> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if (self.stop)() {
            return Err(stopped());
        }
        self.inner.read(buf)
    }
}

fn entry_err(path: &[u8]) -> impl FnOnce(io::Error) -> LayerError + '_ {
    move |source| LayerError::Entry { path: show(path), source }
}

/// Pass one: read every entry into the changeset, the overlay's forms of
/// whiteouts (a 0/0 character device, `trusted.overlay.whiteout` on an
/// empty file) and opaque directories (`trusted.overlay.opaque=y`) decoded.
fn index<R: Read>(entries: tar::Entries<'_, R>, seekable: bool, spool: &mut Spool) -> Result<Changeset, LayerError> {
    let mut buf = vec![0u8; BUF];
    let mut changes = Changeset::default();
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
        let xattrs = changeset::sort_xattrs(pax.xattrs, &raw)?;
        let kind = match ty {
            EntryType::Regular | EntryType::Continuous if xattrs.whiteout && entry.size() == 0 => Kind::Whiteout,
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
        let opaque = xattrs.opaque && matches!(ty, EntryType::Directory);
        let node = Node { path, kind, opaque, mode, uid, gid, mtime, xattrs: xattrs.keep };
        changes.push(node, &raw)?;
    }
    Ok(changes)
}

#[cfg(test)]
#[path = "convert_tests.rs"]
mod tests;
