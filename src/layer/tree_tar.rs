//! A merged tree ([`super::flatten::Tree`]) as a plain tar: every reachable
//! inode once (later names of a hardlinked file as hardlink entries to the
//! first), depth first, siblings by name bytes, owners, modes, mtimes and
//! xattrs (PAX `SCHILY.xattr.*`) as stored; the root itself is not an entry.
//! This is the input form of [`super::convert`], which makes the
//! deterministic layer of it: `export` (dockerTools' exportImage) needs no
//! guest at all.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::io::{self, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use tar::{EntryType, Header};

use super::erofs::DataSource;
use super::flatten::{Inode, Kind, Tree};
use super::{show, LayerError};

/// Largest device number a tar header holds (7 octal digits).
pub const MAX_DEVICE: u32 = 0o7777777;

/// Write `tree` to `out` as a tar, file bytes taken from `data`.
pub fn write<W: Write, D: DataSource>(tree: &Tree, data: &mut D, out: W) -> Result<(), LayerError> {
    let mut b = tar::Builder::new(out);
    b.mode(tar::HeaderMode::Complete);
    append(tree, data, &mut b, |_, _| Visit::Entry)?;
    b.into_inner().map_err(LayerError::Write)?.flush().map_err(LayerError::Write)
}

/// What [`append`] does with one path of the tree.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Visit {
    /// Write the entry (and, for a directory, go on below it).
    Entry,
    /// Write nothing for this directory itself, but go on below it.
    Below,
    /// Write nothing for it or anything below it.
    Skip,
}

/// Append `tree`'s entries to `b` in [`write`]'s order, each as `visit`
/// says for (its path, its inode).
pub fn append<W: Write, D: DataSource>(
    tree: &Tree,
    data: &mut D,
    b: &mut tar::Builder<W>,
    mut visit: impl FnMut(&[u8], &Inode) -> Visit,
) -> Result<(), LayerError> {
    let mut first_path: HashMap<usize, Vec<u8>> = HashMap::new();
    let mut stack: Vec<(usize, Vec<u8>)> = vec![(0, Vec::new())];
    while let Some((dir, path)) = stack.pop() {
        let Kind::Dir(children) = &tree.inodes[dir].kind else { unreachable!("only directories are stacked") };
        let mut subdirs = Vec::new();
        for (name, &ino) in children {
            let mut p = path.clone();
            if !p.is_empty() {
                p.push(b'/');
            }
            p.extend_from_slice(name);
            let v = visit(&p, &tree.inodes[ino]);
            if v == Visit::Entry {
                entry(b, tree, data, ino, &p, &mut first_path)?;
            }
            if v != Visit::Skip && matches!(tree.inodes[ino].kind, Kind::Dir(_)) {
                subdirs.push((ino, p));
            }
        }
        // Depth first in name order: the stack pops the first name first.
        stack.extend(subdirs.into_iter().rev());
    }
    Ok(())
}

/// The header every entry starts from: owner, mode, mtime, size 0 and
/// zero device numbers (set explicitly, as readers expect digits there).
pub(crate) fn header(mode: u32, uid: u32, gid: u32, mtime: u64) -> Header {
    let mut h = Header::new_gnu();
    h.set_mode(mode);
    h.set_uid(u64::from(uid));
    h.set_gid(u64::from(gid));
    h.set_mtime(mtime);
    h.set_size(0);
    h.set_device_major(0).expect("0 fits");
    h.set_device_minor(0).expect("0 fits");
    h
}

/// The entry's xattrs as PAX `SCHILY.xattr.*` records (none: no record).
pub(crate) fn append_xattrs<'a, W: Write>(
    b: &mut tar::Builder<W>,
    xattrs: impl Iterator<Item = (&'a str, &'a [u8])>,
) -> io::Result<()> {
    let records: Vec<(String, &[u8])> = xattrs.map(|(k, v)| (format!("SCHILY.xattr.{k}"), v)).collect();
    if records.is_empty() {
        return Ok(());
    }
    b.append_pax_extensions(records.iter().map(|(k, v)| (k.as_str(), *v)))
}

fn entry<W: Write, D: DataSource>(
    b: &mut tar::Builder<W>,
    tree: &Tree,
    data: &mut D,
    ino: usize,
    path: &[u8],
    first_path: &mut HashMap<usize, Vec<u8>>,
) -> Result<(), LayerError> {
    let inode = &tree.inodes[ino];
    let path_os = Path::new(OsStr::from_bytes(path));
    let entry_err = |source: io::Error| LayerError::Entry { path: show(path), source };
    let mut h = header(inode.mode, inode.uid, inode.gid, inode.mtime);
    if !matches!(inode.kind, Kind::Dir(_)) {
        if let Some(target) = first_path.get(&ino) {
            h.set_entry_type(EntryType::Link);
            let target = Path::new(OsStr::from_bytes(target));
            return b.append_link(&mut h, path_os, target).map_err(entry_err);
        }
        first_path.insert(ino, path.to_vec());
    }
    append_xattrs(b, inode.xattrs.iter().map(|(k, v)| (k.as_str(), v.as_slice()))).map_err(entry_err)?;
    match &inode.kind {
        Kind::Dir(_) => {
            h.set_entry_type(EntryType::Directory);
            b.append_data(&mut h, path_os, io::empty()).map_err(entry_err)
        }
        Kind::File(r) => {
            h.set_entry_type(EntryType::Regular);
            h.set_size(r.len);
            let reader = Exact { inner: data.open(r).map_err(entry_err)?, left: r.len };
            b.append_data(&mut h, path_os, reader).map_err(entry_err)
        }
        Kind::Symlink(target) => {
            h.set_entry_type(EntryType::Symlink);
            let target = Path::new(OsStr::from_bytes(target));
            b.append_link(&mut h, path_os, target).map_err(entry_err)
        }
        Kind::Char(ma, mi) | Kind::Block(ma, mi) => {
            h.set_entry_type(if matches!(inode.kind, Kind::Char(..)) { EntryType::Char } else { EntryType::Block });
            // The header's 8-byte octal fields hold 7 digits; the tar crate
            // would keep only the low ones of a larger number.
            for (n, field) in [(*ma, "device major"), (*mi, "device minor")] {
                if n > MAX_DEVICE {
                    return Err(LayerError::TooLarge { path: show(path), field });
                }
            }
            h.set_device_major(*ma).map_err(entry_err)?;
            h.set_device_minor(*mi).map_err(entry_err)?;
            b.append_data(&mut h, path_os, io::empty()).map_err(entry_err)
        }
        Kind::Fifo => {
            h.set_entry_type(EntryType::Fifo);
            b.append_data(&mut h, path_os, io::empty()).map_err(entry_err)
        }
    }
}

/// Exactly `left` bytes of `inner`: ending early is an error, not a short
/// entry in the tar.
struct Exact<R> {
    inner: R,
    left: u64,
}

impl<R: io::Read> io::Read for Exact<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.left == 0 {
            return Ok(0);
        }
        let want = usize::try_from(self.left.min(buf.len() as u64)).expect("bounded by buf");
        let n = self.inner.read(&mut buf[..want])?;
        if n == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "layer ends inside a file"));
        }
        self.left -= n as u64;
        Ok(n)
    }
}
