//! Random access to the files of an image, whether it is a directory or a
//! tar (plain, gzip or zstd).
//!
//! A compressed tar is first decompressed into an unlinked temporary file so
//! that members can be read in any order. Member names are normalized
//! (`./a//b` is `a/b`); a name or link target that would leave the archive
//! root is an error, never followed.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, BufReader, Read, Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::compression::{Compression, Decoder};
use super::ImageError;

/// Limit on the size of JSON documents read whole (manifests, configs).
pub(crate) const MAX_JSON: u64 = 64 * 1024 * 1024;

#[derive(Debug)]
enum Member {
    File { offset: u64, size: u64 },
    Symlink(String),
    Hardlink(String),
    Other,
}

#[derive(Debug)]
enum Backing {
    Dir {
        root: PathBuf,
    },
    /// `spooled`: a compressed archive, decompressed into a temp file.
    Tar {
        file: File,
        members: HashMap<String, Member>,
        spooled: bool,
    },
}

/// An opened image archive or layout directory.
#[derive(Debug)]
pub(crate) struct Archive {
    path: PathBuf,
    backing: Backing,
}

/// Splits `name` into normal components, resolving `.` and `..` against
/// `base` (components already inside the archive). `..` above the root is an
/// escape.
fn resolve(base: &[String], name: &str, original: &str) -> Result<Vec<String>, ImageError> {
    let mut parts: Vec<String> = base.to_vec();
    for c in name.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                if parts.pop().is_none() {
                    return Err(ImageError::PathEscape { path: original.to_string() });
                }
            }
            c => parts.push(c.to_string()),
        }
    }
    Ok(parts)
}

/// Normalizes a name the image's own metadata refers to: relative, no `..`
/// above the root.
pub(crate) fn normalize(name: &str) -> Result<String, ImageError> {
    if name.starts_with('/') {
        return Err(ImageError::PathEscape { path: name.to_string() });
    }
    Ok(resolve(&[], name, name)?.join("/"))
}

impl Archive {
    /// Opens a layout directory, or a tar file (compressed or not).
    pub(crate) fn open(path: &Path) -> Result<Archive, ImageError> {
        let meta = std::fs::metadata(path).map_err(ImageError::io(path))?;
        if meta.is_dir() {
            let root = path.canonicalize().map_err(ImageError::io(path))?;
            return Ok(Archive { path: path.to_path_buf(), backing: Backing::Dir { root } });
        }
        let mut file = File::open(path).map_err(ImageError::io(path))?;
        let mut head = [0u8; 4];
        let n = read_up_to(&mut file, &mut head).map_err(ImageError::io(path))?;
        file.seek(SeekFrom::Start(0)).map_err(ImageError::io(path))?;
        let compression = Compression::sniff(&head[..n]);
        let spooled = compression != Compression::None;
        let file = if spooled { spool(file, compression, path)? } else { file };
        let members = index_tar(&file, path)?;
        Ok(Archive { path: path.to_path_buf(), backing: Backing::Tar { file, members, spooled } })
    }

    /// The path the archive was opened from, for messages.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Resolves `name` (already normalized) through symlinks and hardlinks to
    /// a regular member.
    fn locate(&self, name: &str) -> Result<Located<'_>, ImageError> {
        match &self.backing {
            Backing::Dir { root } => {
                let full = root.join(name);
                let real = match full.canonicalize() {
                    Ok(p) => p,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {
                        return Err(ImageError::MissingEntry { path: name.to_string() })
                    }
                    Err(e) => return Err(ImageError::io(full)(e)),
                };
                if !real.starts_with(root) {
                    return Err(ImageError::PathEscape { path: name.to_string() });
                }
                if !real.is_file() {
                    return Err(ImageError::MissingEntry { path: name.to_string() });
                }
                Ok(Located::Path(real))
            }
            Backing::Tar { file, members, .. } => {
                let mut current = name.to_string();
                // Bounded, so a symlink loop is an error rather than a hang.
                for _ in 0..40 {
                    match members.get(&current) {
                        None => return Err(ImageError::MissingEntry { path: name.to_string() }),
                        Some(Member::File { offset, size }) => {
                            return Ok(Located::Slice { file, offset: *offset, size: *size })
                        }
                        Some(Member::Symlink(target)) => {
                            if target.starts_with('/') {
                                return Err(ImageError::PathEscape { path: target.clone() });
                            }
                            let mut dir: Vec<String> = current.split('/').map(str::to_string).collect();
                            dir.pop();
                            current = resolve(&dir, target, target)?.join("/");
                        }
                        Some(Member::Hardlink(target)) => current = normalize(target)?,
                        Some(Member::Other) => return Err(ImageError::MissingEntry { path: name.to_string() }),
                    }
                }
                Err(ImageError::Invalid(format!("too many levels of links resolving {name:?}")))
            }
        }
    }

    /// Whether a regular file (after links) named `name` exists.
    pub(crate) fn exists(&self, name: &str) -> bool {
        normalize(name).is_ok_and(|n| self.locate(&n).is_ok())
    }

    /// Opens a member for reading.
    pub(crate) fn open_file(&self, name: &str) -> Result<Box<dyn Read + '_>, ImageError> {
        let n = normalize(name)?;
        match self.locate(&n)? {
            Located::Path(p) => Ok(Box::new(File::open(&p).map_err(ImageError::io(p))?)),
            Located::Slice { file, offset, size } => {
                Ok(Box::new(SliceReader { file, pos: offset, end: offset + size }))
            }
        }
    }

    /// What identifies member `name`'s bytes without reading them: the
    /// [`settled_fingerprint`](super::digest::settled_fingerprint) of the
    /// file holding them and their place in it. None for a compressed
    /// archive (spooled to a new temp file each time) and a file changed in
    /// the last second.
    pub(crate) fn fingerprint(&self, name: &str) -> Option<String> {
        let n = normalize(name).ok()?;
        let (meta, offset, size) = match (&self.backing, self.locate(&n).ok()?) {
            (Backing::Tar { spooled: true, .. }, _) => return None,
            (_, Located::Path(p)) => (std::fs::metadata(&p).ok()?, 0, None),
            (_, Located::Slice { file, offset, size }) => (file.metadata().ok()?, offset, Some(size)),
        };
        Some(format!("{} at {offset} len {size:?}", super::digest::settled_fingerprint(&meta)?))
    }

    /// Copies member `name` to `out` at its position, in the kernel, 64 MiB
    /// at a time, failing between two once `abandon` says so; returns the
    /// bytes copied.
    pub(crate) fn copy_member(
        &self,
        name: &str,
        out: &File,
        abandon: &(dyn Fn() -> bool + Sync),
    ) -> Result<u64, ImageError> {
        let n = normalize(name)?;
        let (opened, offset, size);
        let from: &File = match self.locate(&n)? {
            Located::Path(p) => {
                opened = File::open(&p).map_err(ImageError::io(&p))?;
                size = opened.metadata().map_err(ImageError::io(&p))?.len();
                offset = 0;
                &opened
            }
            Located::Slice { file, offset: o, size: s } => {
                (offset, size) = (o, s);
                file
            }
        };
        let mut pos = offset;
        while pos < offset + size {
            if abandon() {
                return Err(ImageError::io(self.path.join(&n))(crate::layer::stopped()));
            }
            let want = usize::try_from(offset + size - pos).unwrap_or(usize::MAX).min(64 << 20);
            match rustix::fs::copy_file_range(from, Some(&mut pos), out, None, want) {
                Ok(0) => break,
                Ok(_) => {}
                Err(rustix::io::Errno::INTR) => {}
                Err(e) => return Err(ImageError::io(self.path.join(&n))(e.into())),
            }
        }
        Ok(pos - offset)
    }

    /// Reads a small member whole (at most [`MAX_JSON`] bytes).
    pub(crate) fn read_small(&self, name: &str) -> Result<Vec<u8>, ImageError> {
        let mut out = Vec::new();
        self.open_file(name)?
            .take(MAX_JSON + 1)
            .read_to_end(&mut out)
            .map_err(|e| ImageError::from_io(e, self.path.join(name)))?;
        if out.len() as u64 > MAX_JSON {
            return Err(ImageError::Invalid(format!("{name} is too large")));
        }
        Ok(out)
    }
}

enum Located<'a> {
    Path(PathBuf),
    Slice { file: &'a File, offset: u64, size: u64 },
}

/// Reads one tar member by position, without a shared file cursor.
struct SliceReader<'a> {
    file: &'a File,
    pos: u64,
    end: u64,
}

impl Read for SliceReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self.end - self.pos;
        let want = usize::try_from(left).unwrap_or(usize::MAX).min(buf.len());
        if want == 0 {
            return Ok(0);
        }
        let n = self.file.read_at(&mut buf[..want], self.pos)?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        self.pos += n as u64;
        Ok(n)
    }
}

fn read_up_to(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

/// Decompresses a whole archive into an unlinked temporary file.
fn spool(file: File, compression: Compression, path: &Path) -> Result<File, ImageError> {
    let mut out = tempfile::tempfile().map_err(ImageError::io(std::env::temp_dir()))?;
    let mut dec = Decoder::new(file, compression)
        .map_err(|source| ImageError::Decompress { path: path.to_path_buf(), source })?;
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = match dec.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(source) => return Err(ImageError::Decompress { path: path.to_path_buf(), source }),
        };
        io::Write::write_all(&mut out, &buf[..n]).map_err(ImageError::io(std::env::temp_dir()))?;
    }
    out.seek(SeekFrom::Start(0)).map_err(ImageError::io(std::env::temp_dir()))?;
    Ok(out)
}

/// Lists the members of a tar with the position of their data.
fn index_tar(file: &File, path: &Path) -> Result<HashMap<String, Member>, ImageError> {
    let len = file.metadata().map_err(ImageError::io(path))?.len();
    let mut reader = BufReader::new(file);
    reader.seek(SeekFrom::Start(0)).map_err(ImageError::io(path))?;
    let mut archive = tar::Archive::new(reader);
    let mut members = HashMap::new();
    let corrupt = |members: &HashMap<String, Member>, e: io::Error| {
        if members.is_empty() {
            ImageError::NotAnArchive { path: path.to_path_buf() }
        } else {
            ImageError::CorruptTar { path: path.to_path_buf(), reason: e.to_string() }
        }
    };
    let entries = archive.entries_with_seek().map_err(|e| corrupt(&members, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| corrupt(&members, e))?;
        let raw_name = entry.path().map_err(|e| corrupt(&members, e))?;
        let raw_name = raw_name.to_str().ok_or_else(|| ImageError::CorruptTar {
            path: path.to_path_buf(),
            reason: format!("member name {raw_name:?} is not UTF-8"),
        })?;
        // Tar members are relative to the archive root; a leading `/` is
        // conventionally dropped, a `..` above the root is refused.
        let name = resolve(&[], raw_name.trim_start_matches('/'), raw_name)?.join("/");
        let kind = entry.header().entry_type();
        let link = || -> Result<String, ImageError> {
            let l = entry.link_name().map_err(|e| corrupt(&members, e))?.ok_or_else(|| ImageError::CorruptTar {
                path: path.to_path_buf(),
                reason: format!("link {name:?} has no target"),
            })?;
            l.to_str().map(str::to_string).ok_or_else(|| ImageError::CorruptTar {
                path: path.to_path_buf(),
                reason: format!("link target of {name:?} is not UTF-8"),
            })
        };
        let member = if kind.is_file() || kind.is_contiguous() {
            let offset = entry.raw_file_position();
            let size = entry.size();
            if offset.checked_add(size).map_or(true, |end| end > len) {
                return Err(ImageError::CorruptTar {
                    path: path.to_path_buf(),
                    reason: format!("member {name:?} extends past the end of the file"),
                });
            }
            Member::File { offset, size }
        } else if kind.is_symlink() {
            Member::Symlink(link()?)
        } else if kind.is_hard_link() {
            Member::Hardlink(link()?)
        } else {
            Member::Other
        };
        if !name.is_empty() {
            members.insert(name, member);
        }
    }
    if members.is_empty() {
        return Err(ImageError::NotAnArchive { path: path.to_path_buf() });
    }
    Ok(members)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tar_with(entries: &[(&str, &[u8])], links: &[(&str, &str)]) -> tempfile::NamedTempFile {
        let f = tempfile::NamedTempFile::new().unwrap();
        let mut b = tar::Builder::new(f.reopen().unwrap());
        for (name, data) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_entry_type(tar::EntryType::Regular);
            b.append_data(&mut h, name, *data).unwrap();
        }
        for (name, target) in links {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(tar::EntryType::Symlink);
            h.set_size(0);
            b.append_link(&mut h, name, target).unwrap();
        }
        b.into_inner().unwrap();
        f
    }

    #[test]
    fn normalize_accepts_relative_and_refuses_escapes() {
        assert_eq!(normalize("./a//b/./c").unwrap(), "a/b/c");
        assert_eq!(normalize("a/../b").unwrap(), "b");
        assert!(matches!(normalize("../x"), Err(ImageError::PathEscape { .. })));
        assert!(matches!(normalize("a/../../x"), Err(ImageError::PathEscape { .. })));
        assert!(matches!(normalize("/etc/passwd"), Err(ImageError::PathEscape { .. })));
    }

    #[test]
    fn tar_members_are_read_by_name_and_through_symlinks() {
        let f = tar_with(&[("./a/layer.tar", b"hello"), ("b.json", b"{}")], &[("c/layer.tar", "../a/layer.tar")]);
        let a = Archive::open(f.path()).unwrap();
        assert_eq!(a.read_small("a/layer.tar").unwrap(), b"hello");
        assert_eq!(a.read_small("c/layer.tar").unwrap(), b"hello");
        assert_eq!(a.read_small("./b.json").unwrap(), b"{}");
        assert!(a.exists("b.json"));
        assert!(!a.exists("nope"));
        assert!(matches!(a.read_small("nope"), Err(ImageError::MissingEntry { .. })));
    }

    #[test]
    fn symlink_out_of_the_archive_is_refused() {
        let f = tar_with(&[("a", b"x")], &[("l/layer.tar", "../../etc/passwd")]);
        let a = Archive::open(f.path()).unwrap();
        assert!(matches!(a.read_small("l/layer.tar"), Err(ImageError::PathEscape { .. })));
    }

    #[test]
    fn symlink_loop_is_an_error_not_a_hang() {
        let f = tar_with(&[("a", b"x")], &[("l1", "l2"), ("l2", "l1")]);
        let a = Archive::open(f.path()).unwrap();
        assert!(matches!(a.read_small("l1"), Err(ImageError::Invalid(_))));
    }

    #[test]
    fn gzip_and_zstd_archives_are_spooled() {
        let f = tar_with(&[("x", b"data")], &[]);
        let raw = std::fs::read(f.path()).unwrap();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        io::Write::write_all(&mut gz, &raw).unwrap();
        for blob in [gz.finish().unwrap(), zstd::encode_all(&raw[..], 3).unwrap()] {
            let t = tempfile::NamedTempFile::new().unwrap();
            std::fs::write(t.path(), &blob).unwrap();
            let a = Archive::open(t.path()).unwrap();
            assert_eq!(a.read_small("x").unwrap(), b"data");
        }
    }

    #[test]
    fn directory_refuses_symlinks_out_of_the_root() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("in"), b"1").unwrap();
        std::os::unix::fs::symlink("/etc/hostname", d.path().join("out")).unwrap();
        let a = Archive::open(d.path()).unwrap();
        assert_eq!(a.read_small("in").unwrap(), b"1");
        assert!(matches!(a.read_small("out"), Err(ImageError::PathEscape { .. })));
        assert!(matches!(a.read_small("../in"), Err(ImageError::PathEscape { .. })));
    }

    #[test]
    fn random_bytes_are_not_an_archive() {
        let t = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(t.path(), vec![0x55u8; 4096]).unwrap();
        assert!(matches!(Archive::open(t.path()), Err(ImageError::NotAnArchive { .. })));
    }
}
