//! The read-only shares' file system (the `--store` shares): a FUSE server
//! over a host directory that holds no host descriptor between requests.
//!
//! fuse-backend-rs's passthrough keeps an `O_PATH` descriptor open for every
//! inode the guest has looked up until the guest forgets it, which a guest
//! with a large cache does not do: a store of more files than the
//! descriptor limit (1024 by default) fails with EMFILE part way through.
//! Its way out, file handles, needs `CAP_DAC_READ_SEARCH`, which rootlayer
//! does not have. A store is immutable, so this file system names each inode
//! by its path below the shared directory instead, and opens what a request
//! needs for that request only: at most a few descriptors at any time, for
//! any number of files.
//!
//! Every path is opened with `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)`
//! from the shared directory: nothing resolves outside it, whatever the
//! host does to the tree meanwhile, and a symlink is an inode of its own
//! whose target only the guest interprets. Each open checks that the path
//! still names the inode the guest looked up (device and inode number),
//! else ESTALE. Only reads are served (lookup, getattr, readlink, open,
//! read, readdir, statfs, xattrs); [`super::policy::PolicyFs`] refuses the
//! rest before it gets here.

use fuse_backend_rs::abi::fuse_abi::{stat64, statvfs64, FsOptions, OpenOptions};
use fuse_backend_rs::api::filesystem::{
    Context, DirEntry, Entry, FileSystem, GetxattrReply, ListxattrReply, ZeroCopyWriter,
};
use rustix::fs::{Mode, OFlags, ResolveFlags};
use std::collections::HashMap;
use std::ffi::CStr;
use std::fs::File;
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

/// FUSE's root inode.
const ROOT: u64 = 1;
/// Most directories open at once (each holds its listing, no descriptor).
pub const MAX_OPEN_DIRS: usize = 4096;
/// Most entries one directory listing holds.
pub const MAX_DIR_ENTRIES: usize = 1 << 20;

fn errno(e: i32) -> io::Error {
    io::Error::from_raw_os_error(e)
}

/// One inode the guest knows: its path below the root ("" for the root),
/// the host's (dev, ino) it had, and the guest's lookup count.
#[derive(Debug)]
struct Node {
    path: Vec<u8>,
    key: (u64, u64),
    lookups: u64,
}

#[derive(Debug, Default)]
struct Table {
    nodes: HashMap<u64, Node>,
    by_key: HashMap<(u64, u64), u64>,
    next: u64,
    dirs: HashMap<u64, Vec<(Vec<u8>, u64, u32)>>,
    next_dir: u64,
}

/// See the module documentation.
#[derive(Debug)]
pub struct StoreFs {
    root: OwnedFd,
    timeout: Duration,
    table: Mutex<Table>,
}

impl StoreFs {
    /// Serve `dir` read-only; attributes and entries cached by the guest
    /// for `timeout`.
    pub fn new(dir: &Path, timeout: Duration) -> io::Result<Self> {
        let root = rustix::fs::open(dir, OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())?;
        let meta = File::from(root.try_clone()?).metadata()?;
        let mut table = Table { next: ROOT + 1, next_dir: 1, ..Default::default() };
        table.nodes.insert(ROOT, Node { path: Vec::new(), key: (meta.dev(), meta.ino()), lookups: 1 });
        table.by_key.insert((meta.dev(), meta.ino()), ROOT);
        Ok(Self { root, timeout, table: Mutex::new(table) })
    }

    fn table(&self) -> std::sync::MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Open `path` below the root, never leaving it or following a link.
    fn open_path(&self, path: &[u8], flags: OFlags) -> io::Result<File> {
        let p: &[u8] = if path.is_empty() { b"." } else { path };
        let fd = rustix::fs::openat2(
            &self.root,
            std::ffi::OsStr::from_bytes(p),
            flags | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
            ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS,
        )?;
        Ok(File::from(fd))
    }

    /// Open inode `inode` (as `flags`), checked to be the one looked up.
    fn open_inode(&self, inode: u64, flags: OFlags) -> io::Result<(File, std::fs::Metadata)> {
        let (path, key) = {
            let t = self.table();
            let n = t.nodes.get(&inode).ok_or_else(|| errno(libc::EBADF))?;
            (n.path.clone(), n.key)
        };
        let f = self.open_path(&path, flags)?;
        let meta = f.metadata()?;
        if (meta.dev(), meta.ino()) != key {
            return Err(errno(libc::ESTALE));
        }
        Ok((f, meta))
    }

    /// The entry for `path` (one more lookup of its inode).
    fn entry(&self, path: Vec<u8>) -> io::Result<Entry> {
        let meta = self.open_path(&path, OFlags::PATH)?.metadata()?;
        let key = (meta.dev(), meta.ino());
        let mut t = self.table();
        let inode = match t.by_key.get(&key).copied() {
            Some(i) => {
                t.nodes.get_mut(&i).expect("indexed").lookups += 1;
                i
            }
            None => {
                let i = t.next;
                t.next += 1;
                t.nodes.insert(i, Node { path, key, lookups: 1 });
                t.by_key.insert(key, i);
                i
            }
        };
        Ok(Entry {
            inode,
            generation: 0,
            attr: stat_of(&meta),
            attr_flags: 0,
            attr_timeout: self.timeout,
            entry_timeout: self.timeout,
        })
    }

    fn forget_one(t: &mut Table, inode: u64, count: u64) {
        if inode == ROOT {
            return;
        }
        let gone = match t.nodes.get_mut(&inode) {
            Some(n) => {
                n.lookups = n.lookups.saturating_sub(count);
                n.lookups == 0
            }
            None => false,
        };
        if gone {
            let n = t.nodes.remove(&inode).expect("present");
            t.by_key.remove(&n.key);
        }
    }
}

/// `meta` as FUSE's stat.
fn stat_of(meta: &std::fs::Metadata) -> stat64 {
    // SAFETY: stat64 is a plain C struct of integers; all zeroes is a valid
    // value, and every field FUSE reads is set below.
    let mut st: stat64 = unsafe { std::mem::zeroed() };
    st.st_dev = meta.dev();
    st.st_ino = meta.ino();
    st.st_mode = meta.mode();
    st.st_nlink = meta.nlink();
    st.st_uid = meta.uid();
    st.st_gid = meta.gid();
    st.st_rdev = meta.rdev();
    st.st_size = i64::try_from(meta.size()).unwrap_or(i64::MAX);
    st.st_blksize = i64::try_from(meta.blksize()).unwrap_or(4096);
    st.st_blocks = i64::try_from(meta.blocks()).unwrap_or(0);
    (st.st_atime, st.st_atime_nsec) = (meta.atime(), meta.atime_nsec());
    (st.st_mtime, st.st_mtime_nsec) = (meta.mtime(), meta.mtime_nsec());
    (st.st_ctime, st.st_ctime_nsec) = (meta.ctime(), meta.ctime_nsec());
    st
}

/// `name` as a path component: one, and not `.` or `..` (handled apart).
fn component(name: &CStr) -> io::Result<&[u8]> {
    let n = name.to_bytes();
    if n.is_empty() || n.contains(&b'/') || n.len() > 255 {
        return Err(errno(libc::EINVAL));
    }
    Ok(n)
}

fn join(parent: &[u8], name: &[u8]) -> Vec<u8> {
    let mut p = parent.to_vec();
    if !p.is_empty() {
        p.push(b'/');
    }
    p.extend_from_slice(name);
    p
}

impl FileSystem for StoreFs {
    type Inode = u64;
    type Handle = u64;

    fn init(&self, _capable: FsOptions) -> io::Result<FsOptions> {
        Ok(FsOptions::empty())
    }

    fn lookup(&self, _ctx: &Context, parent: u64, name: &CStr) -> io::Result<Entry> {
        let parent_path = self.table().nodes.get(&parent).map(|n| n.path.clone()).ok_or_else(|| errno(libc::EBADF))?;
        let path = match name.to_bytes() {
            b"." => parent_path,
            // The root's parent is the root: nothing above it is reachable.
            b".." => parent_path.rsplit_once_slash(),
            _ => join(&parent_path, component(name)?),
        };
        self.entry(path)
    }

    fn forget(&self, _ctx: &Context, inode: u64, count: u64) {
        Self::forget_one(&mut self.table(), inode, count);
    }

    fn batch_forget(&self, _ctx: &Context, requests: Vec<(u64, u64)>) {
        let mut t = self.table();
        for (inode, count) in requests {
            Self::forget_one(&mut t, inode, count);
        }
    }

    fn getattr(&self, _ctx: &Context, inode: u64, _handle: Option<u64>) -> io::Result<(stat64, Duration)> {
        let (_, meta) = self.open_inode(inode, OFlags::PATH)?;
        Ok((stat_of(&meta), self.timeout))
    }

    fn readlink(&self, _ctx: &Context, inode: u64) -> io::Result<Vec<u8>> {
        let (f, meta) = self.open_inode(inode, OFlags::PATH)?;
        if !meta.file_type().is_symlink() {
            return Err(errno(libc::EINVAL));
        }
        Ok(rustix::fs::readlinkat(&f, "", Vec::new())?.into_bytes())
    }

    fn open(
        &self,
        _ctx: &Context,
        inode: u64,
        _flags: u32,
        _fuse_flags: u32,
    ) -> io::Result<(Option<u64>, OpenOptions, Option<u32>)> {
        let (_, meta) = self.open_inode(inode, OFlags::PATH)?;
        let ft = meta.file_type();
        if !ft.is_file() {
            // What open(O_NOFOLLOW) says of each (the guest kernel opens
            // devices and FIFOs itself, never through the share).
            return Err(errno(if ft.is_dir() {
                libc::EISDIR
            } else if ft.is_symlink() {
                libc::ELOOP
            } else {
                libc::EINVAL
            }));
        }
        // FUSE's answer for "no need to open": the guest kernel (which
        // offers FUSE_NO_OPEN_SUPPORT) takes it as success, keeps the
        // file's pages (FOPEN_KEEP_CACHE) and sends no OPEN or RELEASE for
        // any file of this share again. Each was a round trip through the
        // emulated guest kernel (about 4 ms) per open of a store file:
        // every exec, every library. `read` opens the inode itself, so no
        // handle is needed.
        Err(errno(libc::ENOSYS))
    }

    #[allow(clippy::too_many_arguments)]
    fn read(
        &self,
        _ctx: &Context,
        inode: u64,
        _handle: u64,
        w: &mut dyn ZeroCopyWriter,
        size: u32,
        offset: u64,
        _lock_owner: Option<u64>,
        _flags: u32,
    ) -> io::Result<usize> {
        let (mut f, meta) = self.open_inode(inode, OFlags::RDONLY | OFlags::NONBLOCK | OFlags::NOCTTY)?;
        if !meta.is_file() {
            return Err(errno(libc::EINVAL));
        }
        let size = usize::try_from(size).expect("u32 fits");
        let mut done = 0;
        while done < size {
            match w.write_from(&mut f, size - done, offset + done as u64) {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => break,
                Err(e) => return Err(e),
            }
        }
        Ok(done)
    }

    fn release(
        &self,
        _ctx: &Context,
        _inode: u64,
        _flags: u32,
        _handle: u64,
        _flush: bool,
        _flock_release: bool,
        _lock_owner: Option<u64>,
    ) -> io::Result<()> {
        Ok(())
    }

    fn statfs(&self, _ctx: &Context, _inode: u64) -> io::Result<statvfs64> {
        let s = rustix::fs::fstatvfs(&self.root)?;
        // SAFETY: statvfs64 is a plain C struct of integers; all zeroes is
        // a valid value, and every field FUSE reads is set below.
        let mut st: statvfs64 = unsafe { std::mem::zeroed() };
        st.f_bsize = s.f_bsize;
        st.f_frsize = s.f_frsize;
        st.f_blocks = s.f_blocks;
        st.f_bfree = s.f_bfree;
        st.f_bavail = s.f_bavail;
        st.f_files = s.f_files;
        st.f_ffree = s.f_ffree;
        st.f_favail = s.f_favail;
        st.f_fsid = s.f_fsid;
        st.f_namemax = s.f_namemax;
        Ok(st)
    }

    fn getxattr(&self, _ctx: &Context, inode: u64, name: &CStr, size: u32) -> io::Result<GetxattrReply> {
        let Some(f) = self.xattr_file(inode)? else { return Err(errno(libc::ENODATA)) };
        if size == 0 {
            let n = rustix::fs::fgetxattr(&f, name, &mut [0u8; 0][..])?;
            return Ok(GetxattrReply::Count(u32::try_from(n).map_err(|_| errno(libc::E2BIG))?));
        }
        let mut buf = vec![0u8; usize::try_from(size).expect("u32 fits")];
        let n = rustix::fs::fgetxattr(&f, name, &mut buf[..])?;
        buf.truncate(n);
        Ok(GetxattrReply::Value(buf))
    }

    fn listxattr(&self, _ctx: &Context, inode: u64, size: u32) -> io::Result<ListxattrReply> {
        let Some(f) = self.xattr_file(inode)? else {
            return Ok(if size == 0 { ListxattrReply::Count(0) } else { ListxattrReply::Names(Vec::new()) });
        };
        if size == 0 {
            let n = rustix::fs::flistxattr(&f, &mut [0u8; 0][..])?;
            return Ok(ListxattrReply::Count(u32::try_from(n).map_err(|_| errno(libc::E2BIG))?));
        }
        let mut buf = vec![0u8; usize::try_from(size).expect("u32 fits")];
        let n = rustix::fs::flistxattr(&f, &mut buf[..])?;
        buf.truncate(n);
        Ok(ListxattrReply::Names(buf))
    }

    fn opendir(&self, _ctx: &Context, inode: u64, _flags: u32) -> io::Result<(Option<u64>, OpenOptions)> {
        let (dir, meta) = self.open_inode(inode, OFlags::RDONLY | OFlags::DIRECTORY)?;
        let parent_ino = {
            let path = self.table().nodes.get(&inode).map(|n| n.path.rsplit_once_slash()).unwrap_or_default();
            self.open_path(&path, OFlags::PATH)?.metadata()?.ino()
        };
        let mut list = vec![(b".".to_vec(), meta.ino(), u32::from(libc::DT_DIR))];
        list.push((b"..".to_vec(), parent_ino, u32::from(libc::DT_DIR)));
        for e in rustix::fs::Dir::read_from(&dir)? {
            let e = e?;
            let name = e.file_name().to_bytes();
            if name == b"." || name == b".." {
                continue;
            }
            if list.len() >= MAX_DIR_ENTRIES {
                return Err(errno(libc::E2BIG));
            }
            let t = match e.file_type() {
                rustix::fs::FileType::Directory => libc::DT_DIR,
                rustix::fs::FileType::Symlink => libc::DT_LNK,
                rustix::fs::FileType::RegularFile => libc::DT_REG,
                rustix::fs::FileType::CharacterDevice => libc::DT_CHR,
                rustix::fs::FileType::BlockDevice => libc::DT_BLK,
                rustix::fs::FileType::Fifo => libc::DT_FIFO,
                rustix::fs::FileType::Socket => libc::DT_SOCK,
                rustix::fs::FileType::Unknown => libc::DT_UNKNOWN,
            };
            list.push((name.to_vec(), e.ino(), u32::from(t)));
        }
        let mut t = self.table();
        if t.dirs.len() >= MAX_OPEN_DIRS {
            return Err(errno(libc::EMFILE));
        }
        let handle = t.next_dir;
        t.next_dir += 1;
        t.dirs.insert(handle, list);
        Ok((Some(handle), OpenOptions::KEEP_CACHE))
    }

    fn readdir(
        &self,
        _ctx: &Context,
        _inode: u64,
        handle: u64,
        _size: u32,
        offset: u64,
        add_entry: &mut dyn FnMut(DirEntry) -> io::Result<usize>,
    ) -> io::Result<()> {
        let t = self.table();
        let list = t.dirs.get(&handle).ok_or_else(|| errno(libc::EBADF))?;
        let start = usize::try_from(offset).unwrap_or(usize::MAX);
        for (i, (name, ino, type_)) in list.iter().enumerate().skip(start) {
            let e = DirEntry { ino: *ino, offset: i as u64 + 1, type_: *type_, name };
            if add_entry(e)? == 0 {
                break;
            }
        }
        Ok(())
    }

    fn releasedir(&self, _ctx: &Context, _inode: u64, _flags: u32, handle: u64) -> io::Result<()> {
        self.table().dirs.remove(&handle);
        Ok(())
    }

    fn access(&self, _ctx: &Context, inode: u64, mask: u32) -> io::Result<()> {
        use std::os::fd::AsRawFd;
        let (f, _) = self.open_inode(inode, OFlags::PATH)?;
        let access = rustix::fs::Access::from_bits_truncate(mask);
        // The inode this descriptor holds (faccessat2 takes no AT_EMPTY_PATH
        // on every kernel): /proc/self/fd names it without a path walk.
        let proc_path = format!("/proc/self/fd/{}", f.as_raw_fd());
        Ok(rustix::fs::accessat(rustix::fs::CWD, proc_path.as_str(), access, rustix::fs::AtFlags::EACCESS)?)
    }
}

impl StoreFs {
    /// A readable descriptor for the xattr calls (a symlink has none the
    /// guest could read here: None).
    fn xattr_file(&self, inode: u64) -> io::Result<Option<File>> {
        let (_, meta) = self.open_inode(inode, OFlags::PATH)?;
        let ft = meta.file_type();
        if !(ft.is_file() || ft.is_dir()) {
            return Ok(None);
        }
        Ok(Some(self.open_inode(inode, OFlags::RDONLY | OFlags::NONBLOCK | OFlags::NOCTTY)?.0))
    }
}

/// The parent of a path below the root ("" for the root and its children).
trait Parent {
    fn rsplit_once_slash(&self) -> Vec<u8>;
}

impl Parent for Vec<u8> {
    fn rsplit_once_slash(&self) -> Vec<u8> {
        match self.iter().rposition(|&b| b == b'/') {
            Some(i) => self[..i].to_vec(),
            None => Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx() -> Context {
        Context::default()
    }

    #[test]
    fn any_number_of_lookups_holds_no_descriptor() {
        let dir = tempfile::tempdir().unwrap();
        for i in 0..3000 {
            std::fs::write(dir.path().join(format!("f{i}")), format!("{i}")).unwrap();
        }
        let fs = StoreFs::new(dir.path(), Duration::from_secs(1)).unwrap();
        let open_fds = || std::fs::read_dir("/proc/self/fd").unwrap().count();
        let before = open_fds();
        let mut inodes = Vec::new();
        for i in 0..3000 {
            let name = std::ffi::CString::new(format!("f{i}")).unwrap();
            let e = fs.lookup(&ctx(), ROOT, &name).unwrap();
            assert_eq!(e.attr.st_size, i64::try_from(format!("{i}").len()).unwrap());
            inodes.push(e.inode);
        }
        // Threads of other tests open files too: allow some slack.
        assert!(open_fds() < before + 16, "descriptors held: {} -> {}", before, open_fds());
        assert_eq!(fs.table().nodes.len(), 3001);
        for i in &inodes {
            fs.forget(&ctx(), *i, 1);
        }
        assert_eq!(fs.table().nodes.len(), 1, "forgotten inodes are dropped, the root stays");
    }

    #[test]
    fn nothing_outside_the_share_is_reached() {
        let top = tempfile::tempdir().unwrap();
        let share = top.path().join("share");
        std::fs::create_dir_all(share.join("d")).unwrap();
        std::fs::write(top.path().join("secret"), "outside").unwrap();
        std::os::unix::fs::symlink("../secret", share.join("up")).unwrap();
        std::os::unix::fs::symlink(top.path(), share.join("abs")).unwrap();
        let fs = StoreFs::new(&share, Duration::from_secs(1)).unwrap();
        let dotdot = fs.lookup(&ctx(), ROOT, c"..").unwrap();
        assert_eq!(dotdot.inode, ROOT, "the root's parent is the root");
        let up = fs.lookup(&ctx(), ROOT, c"up").unwrap();
        assert_eq!(fs.readlink(&ctx(), up.inode).unwrap(), b"../secret", "a link is its own inode");
        assert_eq!(fs.open(&ctx(), up.inode, 0, 0).unwrap_err().raw_os_error(), Some(libc::ELOOP));
        assert!(
            fs.read(&ctx(), up.inode, 0, &mut Sink(Vec::new()), 100, 0, None, 0).is_err(),
            "a link is not read through"
        );
        let abs = fs.lookup(&ctx(), ROOT, c"abs").unwrap();
        // A lookup below a link (which no guest kernel sends) resolves nothing.
        assert_eq!(fs.lookup(&ctx(), abs.inode, c"secret").unwrap_err().raw_os_error(), Some(libc::ELOOP));
        for bad in [c"a/b", c""] {
            assert_eq!(fs.lookup(&ctx(), ROOT, bad).unwrap_err().raw_os_error(), Some(libc::EINVAL));
        }
        // A path the host replaced meanwhile is stale, not another file.
        let d = fs.lookup(&ctx(), ROOT, c"d").unwrap();
        // (Renamed away, so that the new file cannot reuse its inode number.)
        std::fs::rename(share.join("d"), top.path().join("d-old")).unwrap();
        std::fs::write(share.join("d"), "replaced").unwrap();
        assert_eq!(fs.getattr(&ctx(), d.inode, None).unwrap_err().raw_os_error(), Some(libc::ESTALE));
    }

    #[test]
    fn reads_and_listings_are_the_host_files() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::fs::write(dir.path().join("sub/data"), "0123456789").unwrap();
        let fs = StoreFs::new(dir.path(), Duration::from_secs(1)).unwrap();
        let sub = fs.lookup(&ctx(), ROOT, c"sub").unwrap();
        let data = fs.lookup(&ctx(), sub.inode, c"data").unwrap();
        let mut w = Sink(Vec::new());
        assert_eq!(fs.read(&ctx(), data.inode, 0, &mut w, 4, 3, None, 0).unwrap(), 4);
        assert_eq!(w.0, b"3456");
        let (h, _) = fs.opendir(&ctx(), sub.inode, 0).unwrap();
        let mut names = Vec::new();
        fs.readdir(&ctx(), sub.inode, h.unwrap(), 4096, 0, &mut |e| {
            names.push(String::from_utf8_lossy(e.name).into_owned());
            Ok(1)
        })
        .unwrap();
        assert_eq!(names, [".", "..", "data"]);
        fs.releasedir(&ctx(), sub.inode, 0, h.unwrap()).unwrap();
        assert!(fs.table().dirs.is_empty());
    }

    /// A ZeroCopyWriter into memory.
    struct Sink(Vec<u8>);

    impl io::Write for Sink {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            self.0.extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl ZeroCopyWriter for Sink {
        fn write_from(
            &mut self,
            f: &mut dyn fuse_backend_rs::file_traits::FileReadWriteVolatile,
            count: usize,
            off: u64,
        ) -> io::Result<usize> {
            let mut buf = vec![0u8; count];
            let n = f.read_at_volatile(
                // SAFETY: `buf` is a live buffer of `count` bytes for the call.
                unsafe { fuse_backend_rs::file_buf::FileVolatileSlice::from_raw_ptr(buf.as_mut_ptr(), count) },
                off,
            )?;
            if n == 0 && count > 0 {
                return Err(io::Error::from(io::ErrorKind::UnexpectedEof));
            }
            self.0.extend_from_slice(&buf[..n]);
            Ok(n)
        }
        fn available_bytes(&self) -> usize {
            usize::MAX
        }
    }
}
