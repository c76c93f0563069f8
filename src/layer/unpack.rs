//! OCI layer -> overlay lower dir (`layer.md`, "Applying Changesets", in
//! overlayfs form).
//!
//! Each layer is unpacked into its own empty directory, which then serves as
//! one `lowerdir` of the overlay. A whiteout `.wh.NAME` becomes what overlayfs
//! reads as one, a 0/0 character device `NAME`; `.wh..wh..opq` becomes
//! `trusted.overlay.opaque=y` on its directory. Both are applied after the
//! whole layer is read, so the entry order does not matter, and a whiteout
//! never hides what the same layer creates ("Whiteout files MUST only apply to
//! resources in lower/parent layers"): a path both whited out and created as a
//! directory becomes an opaque directory instead.
//!
//! Every path stays inside the target: absolute paths and `..` are rejected,
//! no write goes through a symlinked parent, and hardlinks may only name
//! entries already unpacked inside the target. Nothing is created by following
//! a symlink: files are created with `O_EXCL`, an existing path is removed
//! first ("Changeset over existing files").

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsStr;
use std::fs::{self, File, Permissions};
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, FileType, Mode, Timespec, Timestamps, XattrFlags, CWD};
use tar::EntryType;

use super::rules::{self, EntryName, Xattr};
use super::{show, LayerError};

/// How to unpack a layer.
#[derive(Debug, Clone)]
pub struct UnpackOptions {
    /// Restore uid/gid from the archive (needs root, as the agent is).
    pub preserve_owners: bool,
}

impl Default for UnpackOptions {
    fn default() -> Self {
        Self { preserve_owners: true }
    }
}

#[derive(Debug, Clone, Copy)]
struct DirMeta {
    mode: u32,
    mtime: u64,
}

struct Unpacker<'a> {
    root: &'a Path,
    opts: &'a UnpackOptions,
    dirs: BTreeMap<Vec<u8>, DirMeta>,
    whiteouts: BTreeSet<Vec<u8>>,
    opaque: BTreeSet<Vec<u8>>,
    buf: Vec<u8>,
}

/// Unpack the OCI layer read from `layer` into the directory `target`, which
/// should be empty (one directory per layer).
pub fn unpack<R: Read>(layer: R, target: &Path, opts: &UnpackOptions) -> Result<(), LayerError> {
    let mut u = Unpacker {
        root: target,
        opts,
        dirs: BTreeMap::new(),
        whiteouts: BTreeSet::new(),
        opaque: BTreeSet::new(),
        buf: vec![0u8; 1 << 20],
    };
    let mut archive = tar::Archive::new(layer);
    for entry in archive.entries().map_err(LayerError::Read)? {
        let mut entry = entry.map_err(LayerError::Read)?;
        u.entry(&mut entry)?;
    }
    u.finish()
}

fn apply_err<'a>(path: &'a [u8], op: &'static str) -> impl FnOnce(io::Error) -> LayerError + 'a {
    move |source| LayerError::Apply { path: show(path), op, source }
}

fn errno<'a>(path: &'a [u8], op: &'static str) -> impl FnOnce(rustix::io::Errno) -> LayerError + 'a {
    move |e| LayerError::Apply { path: show(path), op, source: e.into() }
}

fn lstat(p: &Path) -> io::Result<Option<fs::Metadata>> {
    match fs::symlink_metadata(p) {
        Ok(m) => Ok(Some(m)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

fn timestamps(mtime: u64) -> Timestamps {
    let t = Timespec { tv_sec: i64::try_from(mtime).unwrap_or(i64::MAX), tv_nsec: 0 };
    Timestamps { last_access: t, last_modification: t }
}

impl Unpacker<'_> {
    fn full(&self, rel: &[u8]) -> PathBuf {
        if rel.is_empty() {
            self.root.to_path_buf()
        } else {
            self.root.join(OsStr::from_bytes(rel))
        }
    }

    /// Make sure every parent of `path` is a real directory inside the
    /// target (creating missing ones as root-owned 0755 if `create`).
    fn parents(&self, path: &[u8], raw: &[u8], create: bool) -> Result<(), LayerError> {
        let (parent, _) = rules::split(path);
        if parent.is_empty() {
            return Ok(());
        }
        let mut cur = self.root.to_path_buf();
        let mut end = 0;
        for comp in parent.split(|&b| b == b'/') {
            end += comp.len() + usize::from(end != 0);
            cur.push(OsStr::from_bytes(comp));
            match lstat(&cur).map_err(apply_err(raw, "inspecting a parent"))? {
                Some(m) if m.is_dir() => {}
                Some(m) if m.file_type().is_symlink() => {
                    return Err(LayerError::SymlinkParent { path: show(raw), parent: show(&parent[..end]) })
                }
                Some(_) => return Err(LayerError::NotADirectory { path: show(raw), parent: show(&parent[..end]) }),
                None if create => {
                    fs::create_dir(&cur).map_err(apply_err(raw, "creating a parent"))?;
                }
                None => return Err(LayerError::MissingLinkTarget { path: show(raw), target: show(path) }),
            }
        }
        Ok(())
    }

    fn entry<R: Read>(&mut self, entry: &mut tar::Entry<'_, R>) -> Result<(), LayerError> {
        let ty = entry.header().entry_type();
        if ty.is_pax_global_extensions() {
            return Ok(());
        }
        let raw = entry.path_bytes().into_owned();
        let path = rules::normalize(&raw)?;
        let pax = rules::pax_info(entry, &raw)?;
        if pax.sparse {
            return Err(LayerError::UnsupportedType { path: show(&raw), kind: 'S' });
        }
        match rules::classify_entry(&path, &raw)? {
            EntryName::Plain => {}
            EntryName::Skip => return Ok(()),
            EntryName::Opaque(dir) => {
                self.opaque.insert(dir.to_vec());
                return Ok(());
            }
            EntryName::Whiteout(wh) => {
                self.whiteouts.insert(wh);
                return Ok(());
            }
        }
        let hdr = entry.header();
        let num = |r: io::Result<u64>| -> Result<u64, LayerError> {
            r.map_err(|source| LayerError::Entry { path: show(&raw), source })
        };
        let mode = u32::try_from(num(hdr.mode().map(u64::from))? & 0o7777).unwrap_or(0);
        let uid = num(hdr.uid())?;
        let gid = num(hdr.gid())?;
        let mtime = match pax.mtime {
            Some(m) => m,
            None => num(hdr.mtime())?,
        };
        // Device numbers only mean something for device entries; GNU tar
        // leaves the fields blank on everything else.
        let dev = if matches!(ty, EntryType::Char | EntryType::Block) {
            (
                num(hdr.device_major().map(|d| u64::from(d.unwrap_or(0))))?,
                num(hdr.device_minor().map(|d| u64::from(d.unwrap_or(0))))?,
            )
        } else {
            (0, 0)
        };
        let link = entry.link_name_bytes().map(|l| l.into_owned());
        let xattrs: Vec<_> = pax.xattrs.into_iter().filter(|(k, _)| rules::classify_xattr(k) == Xattr::Keep).collect();

        if path.is_empty() {
            if ty != EntryType::Directory {
                return Err(LayerError::NotADirectory { path: show(&raw), parent: ".".into() });
            }
            self.owner_and_xattrs(&path, &raw, uid, gid, &xattrs)?;
            self.dirs.insert(path, DirMeta { mode, mtime });
            return Ok(());
        }
        self.parents(&path, &raw, true)?;
        let full = self.full(&path);
        // Changeset over existing files: directories merge, all else is replaced.
        if let Some(m) = lstat(&full).map_err(apply_err(&raw, "inspecting"))? {
            if m.is_dir() && ty == EntryType::Directory {
                self.owner_and_xattrs(&path, &raw, uid, gid, &xattrs)?;
                self.dirs.insert(path, DirMeta { mode, mtime });
                return Ok(());
            }
            if m.is_dir() {
                fs::remove_dir_all(&full).map_err(apply_err(&raw, "removing the old directory"))?;
            } else {
                fs::remove_file(&full).map_err(apply_err(&raw, "removing the old entry"))?;
            }
        }
        let dev32 =
            |v: u64| u32::try_from(v).map_err(|_| LayerError::TooLarge { path: show(&raw), field: "device number" });
        match ty {
            EntryType::Directory => {
                fs::create_dir(&full).map_err(apply_err(&raw, "creating the directory"))?;
                self.owner_and_xattrs(&path, &raw, uid, gid, &xattrs)?;
                self.dirs.insert(path, DirMeta { mode, mtime });
                return Ok(());
            }
            EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => {
                let mut f = File::create_new(&full).map_err(apply_err(&raw, "creating the file"))?;
                loop {
                    let n =
                        entry.read(&mut self.buf).map_err(|source| LayerError::Entry { path: show(&raw), source })?;
                    if n == 0 {
                        break;
                    }
                    f.write_all(&self.buf[..n]).map_err(apply_err(&raw, "writing the file"))?;
                }
            }
            EntryType::Symlink => {
                let target = link.unwrap_or_default();
                std::os::unix::fs::symlink(OsStr::from_bytes(&target), &full)
                    .map_err(apply_err(&raw, "creating the symlink"))?;
            }
            EntryType::Link => {
                let target = rules::normalize(&link.unwrap_or_default())?;
                self.parents(&target, &raw, false)?;
                let src = self.full(&target);
                match lstat(&src).map_err(apply_err(&raw, "inspecting the link target"))? {
                    None => return Err(LayerError::MissingLinkTarget { path: show(&raw), target: show(&target) }),
                    Some(m) if m.is_dir() => {
                        return Err(LayerError::LinkToDirectory { path: show(&raw), target: show(&target) })
                    }
                    Some(_) => {}
                }
                fs::hard_link(&src, &full).map_err(apply_err(&raw, "creating the hardlink"))?;
                // The inode and its attributes are the target's.
                return Ok(());
            }
            EntryType::Char | EntryType::Block | EntryType::Fifo => {
                let (ft, rdev) = match ty {
                    EntryType::Char if dev == (0, 0) => return Err(LayerError::ZeroDevice { path: show(&raw) }),
                    EntryType::Char => (FileType::CharacterDevice, rustix::fs::makedev(dev32(dev.0)?, dev32(dev.1)?)),
                    EntryType::Block => (FileType::BlockDevice, rustix::fs::makedev(dev32(dev.0)?, dev32(dev.1)?)),
                    _ => (FileType::Fifo, 0),
                };
                rustix::fs::mknodat(CWD, &full, ft, Mode::from_raw_mode(mode), rdev)
                    .map_err(errno(&raw, "creating the device node"))?;
            }
            other => return Err(LayerError::UnsupportedType { path: show(&raw), kind: char::from(other.as_byte()) }),
        }
        // chown clears setuid bits and capabilities: owner, then mode, then xattrs.
        self.owner(&path, &raw, uid, gid)?;
        if ty != EntryType::Symlink {
            fs::set_permissions(&full, Permissions::from_mode(mode)).map_err(apply_err(&raw, "setting the mode"))?;
        }
        self.xattrs(&path, &raw, &xattrs)?;
        rustix::fs::utimensat(CWD, &full, &timestamps(mtime), AtFlags::SYMLINK_NOFOLLOW)
            .map_err(errno(&raw, "setting the mtime"))?;
        Ok(())
    }

    fn owner(&self, path: &[u8], raw: &[u8], uid: u64, gid: u64) -> Result<(), LayerError> {
        if !self.opts.preserve_owners {
            return Ok(());
        }
        let too = |field| LayerError::TooLarge { path: show(raw), field };
        let uid = u32::try_from(uid).map_err(|_| too("uid"))?;
        let gid = u32::try_from(gid).map_err(|_| too("gid"))?;
        std::os::unix::fs::lchown(self.full(path), Some(uid), Some(gid)).map_err(apply_err(raw, "setting the owner"))
    }

    fn xattrs(&self, path: &[u8], raw: &[u8], xattrs: &[(String, Vec<u8>)]) -> Result<(), LayerError> {
        let full = self.full(path);
        for (k, v) in xattrs {
            rustix::fs::lsetxattr(&full, k.as_str(), v, XattrFlags::empty()).map_err(errno(raw, "setting an xattr"))?;
        }
        Ok(())
    }

    fn owner_and_xattrs(
        &self,
        path: &[u8],
        raw: &[u8],
        uid: u64,
        gid: u64,
        xattrs: &[(String, Vec<u8>)],
    ) -> Result<(), LayerError> {
        self.owner(path, raw, uid, gid)?;
        self.xattrs(path, raw, xattrs)
    }

    /// Whiteouts, opaque markers and directory modes/mtimes, after all entries.
    fn finish(mut self) -> Result<(), LayerError> {
        let whiteouts = std::mem::take(&mut self.whiteouts);
        for wh in &whiteouts {
            let (parent, name) = rules::split(wh);
            let mut shown = rules::WHITEOUT_PREFIX.to_vec();
            shown.extend_from_slice(name);
            let raw = rules::join(parent, &shown);
            self.parents(wh, &raw, true)?;
            let full = self.full(wh);
            match lstat(&full).map_err(apply_err(&raw, "inspecting"))? {
                None => {
                    rustix::fs::mknodat(CWD, &full, FileType::CharacterDevice, Mode::empty(), 0)
                        .map_err(errno(&raw, "creating the whiteout device"))?;
                }
                // Removed from the layers below and created again in this one.
                Some(m) if m.is_dir() => {
                    self.opaque.insert(wh.clone());
                }
                Some(_) => {}
            }
        }
        let opaque = std::mem::take(&mut self.opaque);
        for dir in &opaque {
            let raw = rules::join(dir, rules::OPAQUE_MARKER);
            self.parents(&raw, &raw, true)?;
            let full = self.full(dir);
            match lstat(&full).map_err(apply_err(&raw, "inspecting"))? {
                None => fs::create_dir(&full).map_err(apply_err(&raw, "creating the directory"))?,
                Some(m) if m.is_dir() => {}
                Some(_) => return Err(LayerError::NotADirectory { path: show(&raw), parent: show(dir) }),
            }
            rustix::fs::lsetxattr(&full, rules::OVERLAY_OPAQUE_XATTR, b"y", XattrFlags::empty())
                .map_err(errno(&raw, "setting trusted.overlay.opaque"))?;
        }
        // Deepest first, so setting a parent's mtime is the last change to it.
        let mut dirs: Vec<_> = std::mem::take(&mut self.dirs).into_iter().collect();
        dirs.sort_by_key(|(p, _)| {
            std::cmp::Reverse(p.iter().filter(|&&b| b == b'/').count() + usize::from(!p.is_empty()))
        });
        for (path, meta) in dirs {
            let full = self.full(&path);
            match lstat(&full).map_err(apply_err(&path, "inspecting"))? {
                Some(m) if m.is_dir() => {}
                _ => continue, // replaced by a later entry
            }
            fs::set_permissions(&full, Permissions::from_mode(meta.mode))
                .map_err(apply_err(&path, "setting the mode"))?;
            rustix::fs::utimensat(CWD, &full, &timestamps(meta.mtime), AtFlags::SYMLINK_NOFOLLOW)
                .map_err(errno(&path, "setting the mtime"))?;
        }
        Ok(())
    }
}

#[cfg(test)]
#[path = "unpack_tests.rs"]
mod tests;
