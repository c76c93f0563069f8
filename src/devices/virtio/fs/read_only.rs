//! A read-only view of a FUSE file system (the `--store` shares).
//!
//! Read-only here means the guest cannot change anything on the host through
//! the share, so the check is per operation, not per mount option the guest
//! could ignore: every operation is listed explicitly and either forwarded
//! (it only reads), answered with EROFS (it would modify something), or
//! answered with ENOSYS. Operations this wrapper does not name, including any
//! that a later fuse-backend-rs adds to the trait with a default body, get the
//! trait's default (ENOSYS or a no-op), never the inner file system: it fails
//! closed. Opcodes the server itself does not know (e.g. FUSE_COPY_FILE_RANGE,
//! FUSE_TMPFILE) never reach a file system and are answered with ENOSYS.
//!
//! Lookups stay inside the shared directory because the passthrough resolves
//! each name relative to its parent's `O_PATH` descriptor with `O_NOFOLLOW`,
//! refuses names containing `/`, and maps `..` at the root to the root; a
//! symlink is an inode of its own whose target only the guest interprets.
//! The tests in `super::tests` prove it through the device.

use fuse_backend_rs::abi::fuse_abi::{stat64, statvfs64, CreateIn, FsOptions, OpenOptions};
use fuse_backend_rs::abi::virtio_fs::RemovemappingOne;
use fuse_backend_rs::api::filesystem::{
    Context, DirEntry, Entry, FileLock, FileSystem, GetxattrReply, IoctlData, ListxattrReply, SetattrValid,
    ZeroCopyReader, ZeroCopyWriter,
};
use fuse_backend_rs::transport::FsCacheReqHandler;
use std::ffi::CStr;
use std::io;
use std::time::Duration;

fn erofs() -> io::Error {
    io::Error::from_raw_os_error(libc::EROFS)
}

fn enosys() -> io::Error {
    io::Error::from_raw_os_error(libc::ENOSYS)
}

/// Open flags that would modify the file: write access, truncation,
/// creation.
fn open_flags_write(flags: u32) -> bool {
    // Open flags are a C int carried as u32 in FUSE; reinterpret the bits.
    let flags = flags as i32;
    (flags & libc::O_ACCMODE) != libc::O_RDONLY || flags & (libc::O_TRUNC | libc::O_CREAT | libc::O_APPEND) != 0
}

/// The read-only wrapper (see the module documentation).
#[derive(Debug)]
pub struct ReadOnlyFs<F> {
    inner: F,
}

impl<F> ReadOnlyFs<F> {
    pub fn new(inner: F) -> Self {
        Self { inner }
    }
}

impl<F: FileSystem> FileSystem for ReadOnlyFs<F> {
    type Inode = F::Inode;
    type Handle = F::Handle;

    // --- Session and identity -------------------------------------------

    fn init(&self, capable: FsOptions) -> io::Result<FsOptions> {
        // Nothing is ever written, so nothing is cached for writing.
        let mut opts = self.inner.init(capable)?;
        opts.remove(FsOptions::WRITEBACK_CACHE | FsOptions::HANDLE_KILLPRIV_V2);
        Ok(opts)
    }

    fn destroy(&self) {
        self.inner.destroy()
    }

    fn id_remap(&self, ctx: &mut Context) -> io::Result<()> {
        self.inner.id_remap(ctx)
    }

    // --- Read-only operations: forwarded --------------------------------

    fn lookup(&self, ctx: &Context, parent: Self::Inode, name: &CStr) -> io::Result<Entry> {
        self.inner.lookup(ctx, parent, name)
    }

    fn forget(&self, ctx: &Context, inode: Self::Inode, count: u64) {
        self.inner.forget(ctx, inode, count)
    }

    fn batch_forget(&self, ctx: &Context, requests: Vec<(Self::Inode, u64)>) {
        self.inner.batch_forget(ctx, requests)
    }

    fn getattr(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        handle: Option<Self::Handle>,
    ) -> io::Result<(stat64, Duration)> {
        self.inner.getattr(ctx, inode, handle)
    }

    fn readlink(&self, ctx: &Context, inode: Self::Inode) -> io::Result<Vec<u8>> {
        self.inner.readlink(ctx, inode)
    }

    fn open(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        flags: u32,
        fuse_flags: u32,
    ) -> io::Result<(Option<Self::Handle>, OpenOptions, Option<u32>)> {
        if open_flags_write(flags) {
            return Err(erofs());
        }
        self.inner.open(ctx, inode, flags, fuse_flags)
    }

    #[allow(clippy::too_many_arguments)]
    fn read(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        handle: Self::Handle,
        w: &mut dyn ZeroCopyWriter,
        size: u32,
        offset: u64,
        lock_owner: Option<u64>,
        flags: u32,
    ) -> io::Result<usize> {
        self.inner.read(ctx, inode, handle, w, size, offset, lock_owner, flags)
    }

    fn flush(&self, ctx: &Context, inode: Self::Inode, handle: Self::Handle, lock_owner: u64) -> io::Result<()> {
        self.inner.flush(ctx, inode, handle, lock_owner)
    }

    #[allow(clippy::too_many_arguments)]
    fn release(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        flags: u32,
        handle: Self::Handle,
        flush: bool,
        flock_release: bool,
        lock_owner: Option<u64>,
    ) -> io::Result<()> {
        self.inner.release(ctx, inode, flags, handle, flush, flock_release, lock_owner)
    }

    fn statfs(&self, ctx: &Context, inode: Self::Inode) -> io::Result<statvfs64> {
        let mut st = self.inner.statfs(ctx, inode)?;
        st.f_flag |= libc::ST_RDONLY;
        Ok(st)
    }

    fn getxattr(&self, ctx: &Context, inode: Self::Inode, name: &CStr, size: u32) -> io::Result<GetxattrReply> {
        self.inner.getxattr(ctx, inode, name, size)
    }

    fn listxattr(&self, ctx: &Context, inode: Self::Inode, size: u32) -> io::Result<ListxattrReply> {
        self.inner.listxattr(ctx, inode, size)
    }

    fn opendir(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        flags: u32,
    ) -> io::Result<(Option<Self::Handle>, OpenOptions)> {
        if open_flags_write(flags) {
            return Err(erofs());
        }
        self.inner.opendir(ctx, inode, flags)
    }

    fn readdir(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        handle: Self::Handle,
        size: u32,
        offset: u64,
        add_entry: &mut dyn FnMut(DirEntry) -> io::Result<usize>,
    ) -> io::Result<()> {
        self.inner.readdir(ctx, inode, handle, size, offset, add_entry)
    }

    fn readdirplus(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        handle: Self::Handle,
        size: u32,
        offset: u64,
        add_entry: &mut dyn FnMut(DirEntry, Entry) -> io::Result<usize>,
    ) -> io::Result<()> {
        self.inner.readdirplus(ctx, inode, handle, size, offset, add_entry)
    }

    fn releasedir(&self, ctx: &Context, inode: Self::Inode, flags: u32, handle: Self::Handle) -> io::Result<()> {
        self.inner.releasedir(ctx, inode, flags, handle)
    }

    fn access(&self, ctx: &Context, inode: Self::Inode, mask: u32) -> io::Result<()> {
        // W_OK is a small positive constant; the cast cannot change it.
        if mask & (libc::W_OK as u32) != 0 {
            return Err(erofs());
        }
        self.inner.access(ctx, inode, mask)
    }

    fn lseek(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        handle: Self::Handle,
        offset: u64,
        whence: u32,
    ) -> io::Result<u64> {
        self.inner.lseek(ctx, inode, handle, offset, whence)
    }

    // --- Nothing to write back: successful no-ops -----------------------

    fn fsync(&self, _ctx: &Context, _inode: Self::Inode, _datasync: bool, _handle: Self::Handle) -> io::Result<()> {
        Ok(())
    }

    fn fsyncdir(&self, _ctx: &Context, _inode: Self::Inode, _datasync: bool, _handle: Self::Handle) -> io::Result<()> {
        Ok(())
    }

    // --- Mutating operations: EROFS -------------------------------------

    fn setattr(
        &self,
        _ctx: &Context,
        _inode: Self::Inode,
        _attr: stat64,
        _handle: Option<Self::Handle>,
        _valid: SetattrValid,
    ) -> io::Result<(stat64, Duration)> {
        Err(erofs())
    }

    fn symlink(&self, _ctx: &Context, _linkname: &CStr, _parent: Self::Inode, _name: &CStr) -> io::Result<Entry> {
        Err(erofs())
    }

    fn mknod(
        &self,
        _ctx: &Context,
        _inode: Self::Inode,
        _name: &CStr,
        _mode: u32,
        _rdev: u32,
        _umask: u32,
    ) -> io::Result<Entry> {
        Err(erofs())
    }

    fn mkdir(&self, _ctx: &Context, _parent: Self::Inode, _name: &CStr, _mode: u32, _umask: u32) -> io::Result<Entry> {
        Err(erofs())
    }

    fn unlink(&self, _ctx: &Context, _parent: Self::Inode, _name: &CStr) -> io::Result<()> {
        Err(erofs())
    }

    fn rmdir(&self, _ctx: &Context, _parent: Self::Inode, _name: &CStr) -> io::Result<()> {
        Err(erofs())
    }

    fn rename(
        &self,
        _ctx: &Context,
        _olddir: Self::Inode,
        _oldname: &CStr,
        _newdir: Self::Inode,
        _newname: &CStr,
        _flags: u32,
    ) -> io::Result<()> {
        Err(erofs())
    }

    fn link(&self, _ctx: &Context, _inode: Self::Inode, _newparent: Self::Inode, _newname: &CStr) -> io::Result<Entry> {
        Err(erofs())
    }

    fn create(
        &self,
        _ctx: &Context,
        _parent: Self::Inode,
        _name: &CStr,
        _args: CreateIn,
    ) -> io::Result<(Entry, Option<Self::Handle>, OpenOptions, Option<u32>)> {
        Err(erofs())
    }

    #[allow(clippy::too_many_arguments)]
    fn write(
        &self,
        _ctx: &Context,
        _inode: Self::Inode,
        _handle: Self::Handle,
        _r: &mut dyn ZeroCopyReader,
        _size: u32,
        _offset: u64,
        _lock_owner: Option<u64>,
        _delayed_write: bool,
        _flags: u32,
        _fuse_flags: u32,
    ) -> io::Result<usize> {
        Err(erofs())
    }

    fn fallocate(
        &self,
        _ctx: &Context,
        _inode: Self::Inode,
        _handle: Self::Handle,
        _mode: u32,
        _offset: u64,
        _length: u64,
    ) -> io::Result<()> {
        Err(erofs())
    }

    fn setxattr(
        &self,
        _ctx: &Context,
        _inode: Self::Inode,
        _name: &CStr,
        _value: &[u8],
        _flags: u32,
    ) -> io::Result<()> {
        Err(erofs())
    }

    fn removexattr(&self, _ctx: &Context, _inode: Self::Inode, _name: &CStr) -> io::Result<()> {
        Err(erofs())
    }

    // --- Not offered: ENOSYS --------------------------------------------
    // DAX mappings could be writable, ioctls and locks are opaque to this
    // wrapper, and none of them is needed to read a store.

    #[allow(clippy::too_many_arguments)]
    fn setupmapping(
        &self,
        _ctx: &Context,
        _inode: Self::Inode,
        _handle: Self::Handle,
        _foffset: u64,
        _len: u64,
        _flags: u64,
        _moffset: u64,
        _vu_req: &mut dyn FsCacheReqHandler,
    ) -> io::Result<()> {
        Err(enosys())
    }

    fn removemapping(
        &self,
        _ctx: &Context,
        _inode: Self::Inode,
        _requests: Vec<RemovemappingOne>,
        _vu_req: &mut dyn FsCacheReqHandler,
    ) -> io::Result<()> {
        Err(enosys())
    }

    #[allow(clippy::too_many_arguments)]
    fn ioctl(
        &self,
        _ctx: &Context,
        _inode: Self::Inode,
        _handle: Self::Handle,
        _flags: u32,
        _cmd: u32,
        _data: IoctlData,
        _out_size: u32,
    ) -> io::Result<IoctlData<'_>> {
        Err(enosys())
    }

    fn getlk(
        &self,
        _ctx: &Context,
        _inode: Self::Inode,
        _handle: Self::Handle,
        _owner: u64,
        _lock: FileLock,
        _flags: u32,
    ) -> io::Result<FileLock> {
        Err(enosys())
    }

    fn setlk(
        &self,
        _ctx: &Context,
        _inode: Self::Inode,
        _handle: Self::Handle,
        _owner: u64,
        _lock: FileLock,
        _flags: u32,
    ) -> io::Result<()> {
        Err(enosys())
    }

    fn setlkw(
        &self,
        _ctx: &Context,
        _inode: Self::Inode,
        _handle: Self::Handle,
        _owner: u64,
        _lock: FileLock,
        _flags: u32,
    ) -> io::Result<()> {
        Err(enosys())
    }

    fn bmap(&self, _ctx: &Context, _inode: Self::Inode, _block: u64, _blocksize: u32) -> io::Result<u64> {
        Err(enosys())
    }

    fn poll(
        &self,
        _ctx: &Context,
        _inode: Self::Inode,
        _handle: Self::Handle,
        _khandle: Self::Handle,
        _flags: u32,
        _events: u32,
    ) -> io::Result<u32> {
        Err(enosys())
    }

    fn notify_reply(&self) -> io::Result<()> {
        Err(enosys())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_flags_that_write_are_recognized() {
        let f = |x: i32| u32::try_from(x).unwrap();
        assert!(!open_flags_write(f(libc::O_RDONLY)));
        assert!(!open_flags_write(f(libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC)));
        assert!(open_flags_write(f(libc::O_WRONLY)));
        assert!(open_flags_write(f(libc::O_RDWR)));
        assert!(open_flags_write(f(libc::O_ACCMODE)));
        assert!(open_flags_write(f(libc::O_RDONLY | libc::O_TRUNC)));
        assert!(open_flags_write(f(libc::O_RDONLY | libc::O_CREAT)));
        assert!(open_flags_write(f(libc::O_RDONLY | libc::O_APPEND)));
    }
}
