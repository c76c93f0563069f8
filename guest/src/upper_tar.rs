//! The overlay upper dir as a faithful tar (issue 6, step 8).
//!
//! The host's layer engine (`src/layer/convert.rs`) turns this tar into the
//! OCI layer, so the tar carries the upper dir exactly as overlayfs left it
//! (`Documentation/filesystems/overlayfs.rst`): whiteouts as the 0/0
//! character devices they are, every xattr (`trusted.overlay.*` included) as
//! a PAX `SCHILY.xattr.NAME` record, hardlinks as tar hardlink entries to the
//! first path written, numeric owners, the full mode, mtime in seconds.
//!
//! Format: POSIX ustar headers plus PAX (`pax` in POSIX.1-2008) extended
//! headers where ustar falls short (path or link target over 100 bytes, size
//! over 8 GiB, ids over 2^21, xattrs). Paths are relative (`a/b`, directories
//! `a/b/`), without `./`; the upper dir itself is not an entry (the host
//! would drop it). Entries come in a fixed order: depth first, siblings by
//! name bytes. The walk never follows symlinks and does not descend into
//! other mounts. File data is streamed; memory is O(depth x breadth) for the
//! walk plus one path per multiply linked inode.
//!
//! Paths are handed to the kernel whole, so the tree must fit in PATH_MAX
//! (4096 bytes including the upper dir's own path).

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::{self, File, Metadata, OpenOptions};
use std::io::{self, BufWriter, Read, Write};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use rustix::io::Errno;
use tar::{EntryType, Header};

use crate::layer::rules::pax_record;

/// What [`write_upper_tar`] wrote.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UpperStats {
    /// Archive entries (PAX extended headers not counted).
    pub entries: u64,
    /// Bytes of regular file data.
    pub bytes: u64,
}

const BLOCK: usize = 512;
/// Longest value of a ustar name or linkname field.
const USTAR_NAME: usize = 100;
/// First value that no longer fits a 12-byte octal field (size, mtime): 8 GiB.
const OCTAL12: u64 = 1 << 33;
/// First value that no longer fits an 8-byte octal field (uid, gid).
const OCTAL8: u64 = 1 << 21;
/// A SCHILY.xattr record's prefix (GNU tar, Go's archive/tar, the host).
const XATTR_KEY: &[u8] = b"SCHILY.xattr.";

/// Stream the upper dir `upper` to `out` as a tar. `out` receives a complete
/// archive (with its end-of-archive blocks) only if this returns `Ok`.
pub fn write_upper_tar<W: Write>(upper: &Path, out: W) -> anyhow::Result<UpperStats> {
    let root = fs::symlink_metadata(upper).with_context(|| format!("stat {}", upper.display()))?;
    if !root.is_dir() {
        bail!("{} is not a directory", upper.display());
    }
    let mut w = Walker {
        out: BufWriter::with_capacity(64 << 10, out),
        dev: root.dev(),
        first_link: HashMap::new(),
        buf: vec![0u8; 256 << 10],
        stats: UpperStats::default(),
    };
    let mut stack = Vec::new();
    push_children(&mut stack, upper, b"")?;
    while let Some((abs, rel)) = stack.pop() {
        let descend = w.entry(&abs, &rel).with_context(|| format!("archive {}", abs.display()))?;
        if descend {
            push_children(&mut stack, &abs, &rel)?;
        }
    }
    // End of archive: two zero blocks. Written only here, so a failed walk
    // never leaves something that reads as a complete archive.
    w.out.write_all(&[0u8; 2 * BLOCK]).context("write tar")?;
    w.out.flush().context("write tar")?;
    Ok(w.stats)
}

/// Push a directory's children onto the walk stack, last name first so they
/// pop in name order.
fn push_children(stack: &mut Vec<(PathBuf, Vec<u8>)>, dir: &Path, rel: &[u8]) -> anyhow::Result<()> {
    let mut names = Vec::new();
    for e in fs::read_dir(dir).with_context(|| format!("read dir {}", dir.display()))? {
        let e = e.with_context(|| format!("read dir {}", dir.display()))?;
        names.push(e.file_name());
    }
    names.sort_unstable_by(|a, b| b.as_bytes().cmp(a.as_bytes()));
    for name in names {
        let mut r = Vec::with_capacity(rel.len() + 1 + name.len());
        if !rel.is_empty() {
            r.extend_from_slice(rel);
            r.push(b'/');
        }
        r.extend_from_slice(name.as_bytes());
        stack.push((dir.join(&name), r));
    }
    Ok(())
}

struct Walker<W: Write> {
    out: BufWriter<W>,
    /// st_dev of the upper dir: directories elsewhere are other mounts.
    dev: u64,
    /// (st_dev, st_ino) of multiply linked inodes -> the path written first.
    first_link: HashMap<(u64, u64), Vec<u8>>,
    buf: Vec<u8>,
    stats: UpperStats,
}

impl<W: Write> std::fmt::Debug for Walker<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Walker").field("stats", &self.stats).finish()
    }
}

impl<W: Write> Walker<W> {
    /// Write one entry; true when the walk should descend into it.
    fn entry(&mut self, abs: &Path, rel: &[u8]) -> anyhow::Result<bool> {
        let meta = fs::symlink_metadata(abs).context("lstat")?;
        let ft = meta.file_type();
        if ft.is_socket() {
            warn(rel, "socket skipped");
            return Ok(false);
        }
        // Only directories say reliably which mount they are on: an overlayfs
        // whose layers span filesystems gives non-directories the st_dev of
        // their layer (overlayfs.rst, "Inode properties").
        let other_mount = ft.is_dir() && meta.dev() != self.dev;
        if !ft.is_dir() && meta.nlink() > 1 {
            let key = (meta.dev(), meta.ino());
            if let Some(first) = self.first_link.get(&key) {
                let target = first.clone();
                let e = Entry::new(EntryType::Link, rel, &meta).link(&target);
                self.header(&e)?;
                self.stats.entries += 1;
                return Ok(false);
            }
            self.first_link.insert(key, rel.to_vec());
        }
        let xattrs = xattrs(abs)?;
        let mut path;
        let mut target = Vec::new();
        let mut e = if ft.is_dir() {
            path = rel.to_vec();
            path.push(b'/');
            Entry::new(EntryType::Directory, &path, &meta)
        } else if ft.is_file() {
            Entry::new(EntryType::Regular, rel, &meta).size(meta.len())
        } else if ft.is_symlink() {
            target = fs::read_link(abs).context("readlink")?.into_os_string().into_vec();
            Entry::new(EntryType::Symlink, rel, &meta)
        } else if ft.is_char_device() {
            Entry::new(EntryType::Char, rel, &meta).device(meta.rdev())
        } else if ft.is_block_device() {
            Entry::new(EntryType::Block, rel, &meta).device(meta.rdev())
        } else if ft.is_fifo() {
            Entry::new(EntryType::Fifo, rel, &meta)
        } else {
            bail!("unknown file type {:o}", meta.mode() & libc::S_IFMT);
        };
        if ft.is_symlink() {
            e = e.link(&target);
        }
        e.xattrs = &xattrs;
        self.header(&e)?;
        if ft.is_file() {
            self.data(abs, &meta)?;
        }
        self.stats.entries += 1;
        if other_mount {
            warn(rel, "another mount, its contents skipped");
        }
        Ok(ft.is_dir() && !other_mount)
    }

    /// The PAX extended header (when needed) and the ustar header of `e`.
    fn header(&mut self, e: &Entry<'_>) -> anyhow::Result<()> {
        let mut pax = Vec::new();
        let mut h = Header::new_ustar();
        h.set_entry_type(e.ty);
        set_field(&mut h, Field::Name, e.path, &mut pax, b"path");
        if let Some(l) = e.link {
            set_field(&mut h, Field::Link, l, &mut pax, b"linkpath");
        }
        h.set_mode(e.mode);
        for (v, key) in [(e.uid, &b"uid"[..]), (e.gid, b"gid")] {
            if v >= OCTAL8 {
                pax_record(&mut pax, key, v.to_string().as_bytes());
            }
        }
        h.set_uid(e.uid);
        h.set_gid(e.gid);
        if e.size >= OCTAL12 {
            pax_record(&mut pax, b"size", e.size.to_string().as_bytes());
        }
        h.set_size(e.size);
        let mtime = u64::try_from(e.mtime).unwrap_or(0);
        if mtime >= OCTAL12 || e.mtime < 0 {
            pax_record(&mut pax, b"mtime", e.mtime.to_string().as_bytes());
        }
        h.set_mtime(mtime.min(OCTAL12 - 1));
        // Zero for other types, as GNU tar writes it (an empty field is not a
        // number to some readers, the `tar` crate among them).
        let (major, minor) = e.dev.unwrap_or((0, 0));
        h.set_device_major(major)?;
        h.set_device_minor(minor)?;
        for (k, v) in e.xattrs {
            let mut key = XATTR_KEY.to_vec();
            key.extend_from_slice(k);
            pax_record(&mut pax, &key, v);
        }
        h.set_cksum();
        if !pax.is_empty() {
            let mut x = Header::new_ustar();
            x.set_entry_type(EntryType::XHeader);
            let mut name = b"PaxHeaders/".to_vec();
            name.extend_from_slice(e.path);
            name.truncate(USTAR_NAME);
            set_field(&mut x, Field::Name, &name, &mut Vec::new(), b"");
            x.set_mode(0o644);
            x.set_mtime(h.mtime()?);
            x.set_size(pax.len() as u64);
            x.set_cksum();
            self.out.write_all(x.as_bytes()).context("write tar")?;
            self.out.write_all(&pax).context("write tar")?;
            self.pad(pax.len() as u64)?;
        }
        self.out.write_all(h.as_bytes()).context("write tar")?;
        Ok(())
    }

    /// Stream a regular file's data: exactly the size its header announced.
    fn data(&mut self, abs: &Path, meta: &Metadata) -> anyhow::Result<()> {
        let mut f = OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW).open(abs).context("open")?;
        let now = f.metadata().context("fstat")?;
        if (now.dev(), now.ino(), now.len()) != (meta.dev(), meta.ino(), meta.len()) {
            bail!("changed while being archived");
        }
        let size = meta.len();
        let mut left = size;
        while left > 0 {
            let want = usize::try_from(left).map_or(self.buf.len(), |l| l.min(self.buf.len()));
            let n = read_retry(&mut f, &mut self.buf[..want]).context("read")?;
            if n == 0 {
                bail!("shrank while being archived");
            }
            self.out.write_all(&self.buf[..n]).context("write tar")?;
            left -= n as u64;
        }
        self.pad(size)?;
        self.stats.bytes += size;
        Ok(())
    }

    fn pad(&mut self, len: u64) -> anyhow::Result<()> {
        let block = BLOCK as u64;
        let pad = (block - len % block) % block;
        io::copy(&mut io::repeat(0).take(pad), &mut self.out).context("write tar")?;
        Ok(())
    }
}

fn read_retry(f: &mut File, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        match f.read(buf) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            r => return r,
        }
    }
}

fn warn(rel: &[u8], what: &str) {
    eprintln!("rootlayer-agent: upper tar: {}: {what}", String::from_utf8_lossy(rel));
}

/// One archive entry's header data.
#[derive(Debug)]
struct Entry<'a> {
    ty: EntryType,
    path: &'a [u8],
    link: Option<&'a [u8]>,
    mode: u32,
    uid: u64,
    gid: u64,
    size: u64,
    mtime: i64,
    dev: Option<(u32, u32)>,
    xattrs: &'a [(Vec<u8>, Vec<u8>)],
}

impl<'a> Entry<'a> {
    fn new(ty: EntryType, path: &'a [u8], meta: &Metadata) -> Self {
        Self {
            ty,
            path,
            link: None,
            // Permission bits plus setuid, setgid and sticky.
            mode: meta.mode() & 0o7777,
            uid: meta.uid().into(),
            gid: meta.gid().into(),
            size: 0,
            mtime: meta.mtime(),
            dev: None,
            xattrs: &[],
        }
    }

    fn link(mut self, target: &'a [u8]) -> Self {
        self.link = Some(target);
        self
    }

    fn size(mut self, size: u64) -> Self {
        self.size = size;
        self
    }

    fn device(mut self, rdev: u64) -> Self {
        self.dev = Some((rustix::fs::major(rdev), rustix::fs::minor(rdev)));
        self
    }
}

#[derive(Debug, Clone, Copy)]
enum Field {
    Name,
    Link,
}

/// Put `value` in the ustar name or linkname field; when it does not fit, also
/// add a PAX record under `key` (the field keeps the first 100 bytes).
fn set_field(h: &mut Header, field: Field, value: &[u8], pax: &mut Vec<u8>, key: &[u8]) {
    let Some(ustar) = h.as_ustar_mut() else {
        unreachable!("Header::new_ustar is ustar");
    };
    let dst = match field {
        Field::Name => &mut ustar.name,
        Field::Link => &mut ustar.linkname,
    };
    if value.len() > USTAR_NAME && !key.is_empty() {
        pax_record(pax, key, value);
    }
    let n = value.len().min(USTAR_NAME);
    dst.fill(0);
    dst[..n].copy_from_slice(&value[..n]);
}

/// Every xattr of `path` (not following a symlink), sorted by name.
pub(crate) fn xattrs(path: &Path) -> anyhow::Result<Vec<(Vec<u8>, Vec<u8>)>> {
    let list = match read_sized(|buf| match buf {
        None => rustix::fs::llistxattr_query(path),
        Some(b) => rustix::fs::llistxattr(path, b),
    }) {
        Ok(l) => l,
        Err(Errno::OPNOTSUPP) => return Ok(Vec::new()),
        Err(e) => return Err(io::Error::from(e)).context("list xattrs"),
    };
    let mut out = Vec::new();
    for name in list.split(|&b| b == 0).filter(|n| !n.is_empty()) {
        if std::str::from_utf8(name).is_err() {
            bail!("xattr name {:?} is not UTF-8 (a PAX record cannot carry it)", String::from_utf8_lossy(name));
        }
        let n = OsStr::from_bytes(name);
        let value = match read_sized(|buf| match buf {
            None => rustix::fs::lgetxattr_query(path, n),
            Some(b) => rustix::fs::lgetxattr(path, n, b),
        }) {
            Ok(v) => v,
            // Removed since it was listed.
            Err(Errno::NODATA) => continue,
            Err(e) => {
                return Err(io::Error::from(e)).with_context(|| format!("get xattr {}", String::from_utf8_lossy(name)))
            }
        };
        out.push((name.to_vec(), value));
    }
    out.sort();
    Ok(out)
}

/// The size-query-then-read dance of listxattr/getxattr, retried while the
/// value grows between the two calls.
fn read_sized(mut call: impl FnMut(Option<&mut Vec<u8>>) -> rustix::io::Result<usize>) -> rustix::io::Result<Vec<u8>> {
    loop {
        let size = call(None)?;
        if size == 0 {
            return Ok(Vec::new());
        }
        let mut buf = vec![0u8; size];
        match call(Some(&mut buf)) {
            Ok(n) => {
                buf.truncate(n);
                return Ok(buf);
            }
            Err(Errno::RANGE) => {}
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use std::io::Cursor;
    use std::os::unix::fs::{symlink, PermissionsExt};
    use std::process::Command;

    use rootlayer::layer::{convert_seekable, ConvertOptions};
    use rustix::fs::{makedev, mknodat, FileType, Mode, XattrFlags, CWD};

    /// A file capability (VFS_CAP_REVISION_2, effective; permitted
    /// cap_dac_override, cap_sys_rawio and cap_sys_ptrace), as found on a
    /// real binary (composefs/tar-rs#428): it holds a 0x0a byte, so its PAX
    /// record has a newline inside the value.
    const CAP: &[u8] = b"\x01\x00\x00\x02\x02\x00\x0a\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00";

    fn is_root(test: &str) -> bool {
        let root = rustix::process::geteuid().is_root();
        if !root {
            eprintln!("skipping {test}: needs root (mount, mknod, trusted.* xattrs)");
        }
        root
    }

    /// Mounts made by a test, unmounted (last first) when it ends.
    struct Mounts(Vec<PathBuf>);

    impl Mounts {
        fn mount(&mut self, args: &[&str], target: &Path) {
            run(Command::new("mount").args(args).arg(target));
            self.0.push(target.to_owned());
        }

        fn umount_last(&mut self) {
            let m = self.0.pop().unwrap();
            run(Command::new("umount").arg(&m));
        }
    }

    impl Drop for Mounts {
        fn drop(&mut self) {
            for m in self.0.iter().rev() {
                let _ = Command::new("umount").arg("-l").arg(m).status();
            }
        }
    }

    fn run(cmd: &mut Command) {
        let out = cmd.output().unwrap();
        assert!(
            out.status.success(),
            "{cmd:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// One entry as a reader sees it.
    #[derive(Debug, Clone, PartialEq, Eq)]
    struct Got {
        ty: u8,
        mode: u32,
        uid: u64,
        gid: u64,
        link: Vec<u8>,
        dev: (u32, u32),
        xattrs: BTreeMap<String, Vec<u8>>,
        data: Vec<u8>,
    }

    /// The records of a PAX extended header, walked by their length prefix
    /// (values may hold any byte, newlines included).
    fn pax_records(mut rest: &[u8]) -> Vec<(Vec<u8>, Vec<u8>)> {
        let mut out = Vec::new();
        while !rest.is_empty() {
            let sp = rest.iter().position(|&b| b == b' ').unwrap();
            let len: usize = std::str::from_utf8(&rest[..sp]).unwrap().parse().unwrap();
            assert_eq!(rest[len - 1], b'\n', "PAX record not newline-terminated");
            let rec = &rest[sp + 1..len - 1];
            let eq = rec.iter().position(|&b| b == b'=').unwrap();
            out.push((rec[..eq].to_vec(), rec[eq + 1..].to_vec()));
            rest = &rest[len..];
        }
        out
    }

    /// Every entry of a tar, in archive order, path without a trailing `/`.
    /// Extended headers are read here rather than by the `tar` crate, whose
    /// PAX parser splits records at newlines inside values
    /// (composefs/tar-rs#452).
    fn read_tar(bytes: &[u8]) -> Vec<(String, Got)> {
        let mut ar = tar::Archive::new(Cursor::new(bytes));
        let mut out = Vec::new();
        let mut pax = Vec::new();
        let (mut long_name, mut long_link) = (None, None);
        for e in ar.entries().unwrap().raw(true) {
            let mut e = e.unwrap();
            let h = e.header().clone();
            let mut data = Vec::new();
            e.read_to_end(&mut data).unwrap();
            let nul_trimmed = |d: &[u8]| d.split(|&b| b == 0).next().unwrap().to_vec();
            match h.entry_type() {
                EntryType::XHeader => {
                    pax = pax_records(&data);
                    continue;
                }
                EntryType::XGlobalHeader => continue,
                EntryType::GNULongName => {
                    long_name = Some(nul_trimmed(&data));
                    continue;
                }
                EntryType::GNULongLink => {
                    long_link = Some(nul_trimmed(&data));
                    continue;
                }
                _ => {}
            }
            let mut path = long_name.take().unwrap_or_else(|| h.path_bytes().into_owned());
            let mut link =
                long_link.take().unwrap_or_else(|| h.link_name_bytes().map(|l| l.into_owned()).unwrap_or_default());
            let mut xattrs = BTreeMap::new();
            for (k, v) in pax.drain(..) {
                match &k[..] {
                    b"path" => path = v,
                    b"linkpath" => link = v,
                    _ => {
                        if let Some(name) = k.strip_prefix(XATTR_KEY) {
                            xattrs.insert(String::from_utf8(name.to_vec()).unwrap(), v);
                        }
                    }
                }
            }
            let got = Got {
                ty: h.entry_type().as_byte(),
                mode: h.mode().unwrap(),
                uid: h.uid().unwrap(),
                gid: h.gid().unwrap(),
                link,
                dev: (h.device_major().unwrap().unwrap_or(0), h.device_minor().unwrap().unwrap_or(0)),
                xattrs,
                data,
            };
            let path = String::from_utf8(path).unwrap();
            out.push((path.trim_end_matches('/').to_owned(), got));
        }
        out
    }

    fn layer_of(tar: &[u8]) -> (String, Vec<u8>) {
        let mut layer = Vec::new();
        let info = convert_seekable(Cursor::new(tar), &mut layer, &ConvertOptions::default()).unwrap();
        (info.diff_id, layer)
    }

    fn gnu_tar(dir: &Path) -> Vec<u8> {
        let out = Command::new("tar")
            .args(["--xattrs", "--xattrs-include=*", "-C"])
            .arg(dir)
            .args(["-cf", "-", "."])
            .output()
            .unwrap();
        // GNU tar exits 0 after "socket ignored".
        assert!(out.status.success(), "GNU tar: {}", String::from_utf8_lossy(&out.stderr));
        out.stdout
    }

    fn ours(dir: &Path) -> (UpperStats, Vec<u8>) {
        let mut tar = Vec::new();
        let stats = write_upper_tar(dir, &mut tar).unwrap();
        (stats, tar)
    }

    /// Our tar's structural promises: relative paths, depth-first name
    /// order, hardlinks to an earlier non-link entry, stats that add up.
    fn check_shape(entries: &[(String, Got)], stats: UpperStats) {
        let paths: Vec<&str> = entries.iter().map(|(p, _)| p.as_str()).collect();
        for p in &paths {
            assert!(!p.is_empty() && !p.starts_with('/') && !p.starts_with("./"), "{p}");
        }
        let mut sorted = paths.clone();
        sorted.sort_by(|a, b| a.split('/').cmp(b.split('/')));
        assert_eq!(paths, sorted, "entries not in depth-first name order");
        for (i, (p, g)) in entries.iter().enumerate() {
            if g.ty == b'1' {
                let t = std::str::from_utf8(&g.link).unwrap();
                let j = paths.iter().position(|q| *q == t);
                assert!(j.is_some_and(|j| j < i), "{p} links to {t}, not written before it");
                assert_ne!(entries[j.unwrap()].1.ty, b'1', "{p} links to a link");
            }
        }
        assert_eq!(stats.entries, entries.len() as u64);
        let bytes: u64 = entries.iter().filter(|(_, g)| g.ty == b'0').map(|(_, g)| g.data.len() as u64).sum();
        assert_eq!(stats.bytes, bytes);
    }

    fn set_xattr(p: &Path, k: &str, v: &[u8]) {
        rustix::fs::lsetxattr(p, k, v, XattrFlags::empty()).unwrap();
    }

    fn chmod(p: &Path, mode: u32) {
        fs::set_permissions(p, fs::Permissions::from_mode(mode)).unwrap();
    }

    fn make_lower(l: &Path) {
        for d in ["etc/opaque/sub", "bin", "keep"] {
            fs::create_dir_all(l.join(d)).unwrap();
        }
        fs::write(l.join("etc/passwd"), b"root:x:0:0").unwrap();
        fs::write(l.join("etc/opaque/old"), b"old").unwrap();
        fs::write(l.join("etc/opaque/sub/old2"), b"old2").unwrap();
        fs::write(l.join("bin/tool"), b"v1").unwrap();
        fs::write(l.join("keep/a"), b"a").unwrap();
        fs::write(l.join("keep/b"), b"b").unwrap();
        fs::write(l.join("keep/c"), b"c").unwrap();
    }

    const DEEP: &str = "deep/0123456789012345678901234567890123456789/\
                        0123456789012345678901234567890123456789/file-past-100-bytes";

    fn long_target() -> String {
        "../".repeat(10) + &"t".repeat(150)
    }

    /// What a runAsRoot script does, through the overlay mount.
    fn script(m: &Path) {
        fs::remove_file(m.join("etc/passwd")).unwrap();
        fs::remove_file(m.join("keep/a")).unwrap();
        fs::remove_file(m.join("keep/b")).unwrap();
        fs::remove_dir_all(m.join("etc/opaque")).unwrap();
        fs::create_dir(m.join("etc/opaque")).unwrap();
        fs::write(m.join("etc/opaque/new"), b"new").unwrap();
        fs::write(m.join("bin/tool"), b"v2").unwrap();
        fs::write(m.join("new.txt"), b"fresh").unwrap();
        fs::write(m.join("bin/ping"), b"\x7fELF ping").unwrap();
        chmod(&m.join("bin/ping"), 0o4755);
        set_xattr(&m.join("bin/ping"), "security.capability", CAP);
        fs::hard_link(m.join("bin/ping"), m.join("bin/ping6")).unwrap();
        symlink("busybox", m.join("bin/sh")).unwrap();
        symlink("etc", m.join("linkdir")).unwrap();
        fs::create_dir(m.join("dev")).unwrap();
        for (name, ty, maj, min) in [
            ("dev/null", FileType::CharacterDevice, 1, 3),
            ("dev/loop0", FileType::BlockDevice, 7, 0),
            ("dev/fifo", FileType::Fifo, 0, 0),
        ] {
            let p = m.join(name);
            mknodat(CWD, &p, ty, Mode::from_raw_mode(0o600), makedev(maj, min)).unwrap();
            chmod(&p, 0o666);
        }
        fs::create_dir(m.join("home")).unwrap();
        fs::write(m.join("home/f"), b"user file").unwrap();
        std::os::unix::fs::lchown(m.join("home/f"), Some(1000), Some(100)).unwrap();
        std::os::unix::fs::lchown(m.join("home"), Some(1000), Some(100)).unwrap();
        set_xattr(&m.join("home/f"), "user.comment", b"two\nlines");
        fs::create_dir(m.join("shared")).unwrap();
        chmod(&m.join("shared"), 0o2775);
        fs::create_dir(m.join("tmp")).unwrap();
        chmod(&m.join("tmp"), 0o1777);
        let deep = m.join(DEEP);
        fs::create_dir_all(deep.parent().unwrap()).unwrap();
        fs::write(&deep, b"deep").unwrap();
        symlink(long_target(), m.join("deep/long-link")).unwrap();
        drop(std::os::unix::net::UnixListener::bind(m.join("run.sock")).unwrap());
    }

    /// The whole step: a real overlay, a script's changes, our tar, the
    /// host's converter; the layer must say exactly what the script did, and
    /// GNU tar's archive of the same upper dir must convert to the same bytes.
    #[test]
    fn overlay_upper_converts_to_the_expected_layer_and_matches_gnu_tar() {
        if !is_root("overlay_upper_converts_to_the_expected_layer_and_matches_gnu_tar") {
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let base = tmp.path();
        let mut mounts = Mounts(Vec::new());
        mounts.mount(&["-t", "tmpfs", "tmpfs"], base);
        let (lower, upper, work, merged) =
            (base.join("lower"), base.join("upper"), base.join("work"), base.join("merged"));
        for d in [&lower, &upper, &work, &merged] {
            fs::create_dir(d).unwrap();
        }
        make_lower(&lower);
        let opts = format!(
            "lowerdir={},upperdir={},workdir={},redirect_dir=off,index=off,metacopy=off",
            lower.display(),
            upper.display(),
            work.display()
        );
        mounts.mount(&["-t", "overlay", "overlay", "-o", &opts], &merged);
        script(&merged);
        mounts.umount_last();

        let (stats, tar) = ours(&upper);
        let raw = read_tar(&tar);
        check_shape(&raw, stats);
        let raw_map: BTreeMap<&str, &Got> = raw.iter().map(|(p, g)| (p.as_str(), g)).collect();
        // The upper dir as overlayfs wrote it.
        let wh = raw_map["etc/passwd"];
        assert_eq!((wh.ty, wh.dev), (b'3', (0, 0)), "whiteout is a 0/0 char device");
        assert_eq!(raw_map["etc/opaque"].xattrs.get("trusted.overlay.opaque"), Some(&b"y".to_vec()));
        assert_eq!(raw_map["bin/ping6"].ty, b'1');
        assert_eq!(raw_map["bin/ping6"].link, b"bin/ping");
        // Whiteouts sharing overlayfs' one whiteout inode are links to it.
        for p in ["keep/a", "keep/b"] {
            let nlink = fs::symlink_metadata(upper.join(p)).unwrap().nlink();
            let g = raw_map[p];
            if nlink > 1 {
                assert_eq!(g.ty, b'1', "{p}");
            } else {
                assert_eq!((g.ty, g.dev), (b'3', (0, 0)), "{p}");
            }
        }
        assert!(!raw_map.contains_key("run.sock"), "socket archived");
        assert!(raw.iter().all(|(p, _)| !p.starts_with("linkdir/")));
        assert_eq!(raw_map[DEEP].data, b"deep");

        // The layer.
        let (digest, layer) = layer_of(&tar);
        let got = read_tar(&layer);
        let l: BTreeMap<&str, &Got> = got.iter().map(|(p, g)| (p.as_str(), g)).collect();
        for p in ["etc/.wh.passwd", "keep/.wh.a", "keep/.wh.b"] {
            assert_eq!((l[p].ty, l[p].data.len()), (b'0', 0), "{p}");
        }
        for p in ["etc/passwd", "keep/a", "keep/b", "keep/c", "etc/opaque/old"] {
            assert!(!l.contains_key(p), "{p} in layer");
        }
        assert_eq!(l["etc/opaque/.wh..wh..opq"].ty, b'0');
        assert_eq!(l["etc/opaque/new"].data, b"new");
        assert_eq!(l["bin/tool"].data, b"v2");
        assert_eq!(l["new.txt"].data, b"fresh");
        let ping = l["bin/ping"];
        assert_eq!((ping.ty, ping.mode, ping.uid, ping.gid), (b'0', 0o4755, 0, 0));
        assert_eq!(ping.data, b"\x7fELF ping");
        assert_eq!(ping.xattrs.get("security.capability"), Some(&CAP.to_vec()));
        assert_eq!((l["bin/ping6"].ty, &l["bin/ping6"].link[..]), (b'1', &b"bin/ping"[..]));
        assert_eq!((l["bin/sh"].ty, &l["bin/sh"].link[..]), (b'2', &b"busybox"[..]));
        assert_eq!(l["linkdir"].ty, b'2');
        assert_eq!((l["dev/null"].ty, l["dev/null"].dev, l["dev/null"].mode), (b'3', (1, 3), 0o666));
        assert_eq!((l["dev/loop0"].ty, l["dev/loop0"].dev), (b'4', (7, 0)));
        assert_eq!(l["dev/fifo"].ty, b'6');
        let f = l["home/f"];
        assert_eq!((f.uid, f.gid), (1000, 100));
        assert_eq!(f.xattrs.get("user.comment"), Some(&b"two\nlines".to_vec()));
        assert_eq!((l["home"].uid, l["home"].gid), (1000, 100));
        assert_eq!((l["shared"].ty, l["shared"].mode), (b'5', 0o2775));
        assert_eq!(l["tmp"].mode, 0o1777);
        assert_eq!(l[DEEP].data, b"deep");
        assert_eq!(l["deep/long-link"].link, long_target().as_bytes());
        assert!(!l.contains_key("run.sock"));
        for (p, g) in &got {
            assert!(g.xattrs.keys().all(|k| !k.starts_with("trusted.")), "{p}: trusted xattr in the layer");
        }

        // GNU tar of the same upper dir, converted the same way.
        let (gnu_digest, gnu_layer) = layer_of(&gnu_tar(&upper));
        assert_eq!(gnu_digest, digest);
        assert!(gnu_layer == layer, "layers differ with equal digests?");
    }

    /// Paths and link targets past ustar's 100 bytes go through PAX path
    /// and linkpath records, for symlinks and hardlinks alike.
    #[test]
    fn long_paths_and_link_targets() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path();
        let deep = d.join(DEEP);
        fs::create_dir_all(deep.parent().unwrap()).unwrap();
        fs::write(&deep, b"deep").unwrap();
        // Written after DEEP (name order), so its link target is DEEP.
        fs::hard_link(&deep, d.join("top-link")).unwrap();
        symlink(long_target(), d.join("long-link")).unwrap();
        let exact = "x".repeat(USTAR_NAME);
        fs::write(d.join(&exact), b"100").unwrap();

        let (stats, tar) = ours(d);
        let raw = read_tar(&tar);
        check_shape(&raw, stats);
        let m: BTreeMap<&str, &Got> = raw.iter().map(|(p, g)| (p.as_str(), g)).collect();
        assert!(DEEP.len() > USTAR_NAME && long_target().len() > USTAR_NAME);
        assert_eq!(m[DEEP].data, b"deep");
        assert_eq!((m["top-link"].ty, &m["top-link"].link[..]), (b'1', DEEP.as_bytes()));
        assert_eq!((m["long-link"].ty, m["long-link"].link.clone()), (b'2', long_target().into_bytes()));
        assert_eq!(m[exact.as_str()].data, b"100");
        // The long values really are PAX records (not GNU longname entries).
        let has = |needle: &[u8]| tar.windows(needle.len()).any(|w| w == needle);
        assert!(has(format!(" path={DEEP}\n").as_bytes()));
        assert!(has(format!(" linkpath={}\n", long_target()).as_bytes()));
        assert!(!tar.chunks(BLOCK).any(|b| b[156] == b'L' || b[156] == b'K'));

        let (digest, _) = layer_of(&tar);
        let (gnu_digest, _) = layer_of(&gnu_tar(d));
        assert_eq!(digest, gnu_digest);
    }

    /// Keeps the start of a stream and counts the rest.
    #[derive(Debug, Default)]
    struct Head {
        head: Vec<u8>,
        total: u64,
    }

    impl Write for Head {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            let keep = (16usize << 10).saturating_sub(self.head.len()).min(b.len());
            self.head.extend_from_slice(&b[..keep]);
            self.total += b.len() as u64;
            Ok(b.len())
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    /// A file over 8 GiB (sparse) gets a PAX size record, and all its data.
    #[test]
    fn file_over_8gib_gets_pax_size() {
        let tmp = tempfile::tempdir().unwrap();
        let size = OCTAL12 + 5;
        File::create(tmp.path().join("big")).unwrap().set_len(size).unwrap();
        let mut out = Head::default();
        let stats = write_upper_tar(tmp.path(), &mut out).unwrap();
        assert_eq!(stats, UpperStats { entries: 1, bytes: size });
        let padded = size.div_ceil(512) * 512;
        // PAX header + its records (one block) + header + data + trailer.
        assert_eq!(out.total, 3 * 512 + padded + 1024);
        let mut ar = tar::Archive::new(Cursor::new(&out.head));
        let mut entries = ar.entries().unwrap();
        let mut e = entries.next().unwrap().unwrap();
        assert_eq!(e.path_bytes().as_ref(), b"big");
        assert_eq!(e.size(), size);
        let pax: Vec<(String, Vec<u8>)> = e
            .pax_extensions()
            .unwrap()
            .unwrap()
            .map(|x| {
                let x = x.unwrap();
                (x.key().unwrap().to_owned(), x.value_bytes().to_vec())
            })
            .collect();
        assert_eq!(pax, vec![("size".to_owned(), size.to_string().into_bytes())]);
    }

    /// Mount points below the upper dir are archived as directories, their
    /// contents are not.
    #[test]
    fn stays_on_one_filesystem() {
        if !is_root("stays_on_one_filesystem") {
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path();
        fs::create_dir(d.join("mnt")).unwrap();
        fs::write(d.join("z"), b"z").unwrap();
        let mut mounts = Mounts(Vec::new());
        mounts.mount(&["-t", "tmpfs", "tmpfs"], &d.join("mnt"));
        fs::write(d.join("mnt/inner"), b"other fs").unwrap();
        let (stats, tar) = ours(d);
        let raw = read_tar(&tar);
        check_shape(&raw, stats);
        let paths: Vec<&str> = raw.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(paths, ["mnt", "z"]);
    }

    #[test]
    fn pax_record_length_counts_itself() {
        for n in 0..300 {
            let mut rec = Vec::new();
            pax_record(&mut rec, b"path", "p".repeat(n).as_bytes());
            let sp = rec.iter().position(|&b| b == b' ').unwrap();
            let len: usize = std::str::from_utf8(&rec[..sp]).unwrap().parse().unwrap();
            assert_eq!(len, rec.len(), "value length {n}");
        }
    }
}
