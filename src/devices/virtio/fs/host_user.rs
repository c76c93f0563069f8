//! Serve every FUSE request as the host process's own user.
//!
//! fuse-backend-rs's passthrough file system was written for a virtiofsd
//! running as root: before creating a node (create, mknod, mkdir, symlink) it
//! switches the thread's effective uid/gid to the caller's from the FUSE
//! header (`setresuid(-1, uid, -1)`) and back to 0 afterwards. For an
//! unprivileged host process that fails with EPERM for every caller except
//! uid 0 (for which it does nothing). rootlayer wants the opposite anyway:
//! whatever the guest does, the host sees the invoking user doing it, so
//! files the guest creates are owned by that user and the host kernel's
//! permission checks for that user apply. [`AsHostUser`] therefore maps the
//! caller to uid/gid 0 ("do not switch") in `id_remap`, which the server calls
//! before dispatching each request, and forwards everything else unchanged.
//!
//! The passthrough also sets the process umask to 0 whenever it (re)imports
//! its root (FUSE_INIT, FUSE_DESTROY) so that guest-chosen modes are exact.
//! The umask is process-wide: left at 0 it would make every file the host
//! writes later (the output layer) world-writable. The wrapper restores the
//! previous umask after those calls, so guest-created files get at most the
//! permissions the invoking user's umask allows.
//!
//! Being the host's side of every request, the wrapper also enforces the
//! share's [`OutputLimit`] when it has one: what a request may add on the
//! host's disk is charged before the request runs.

use super::limit::{OutputLimit, NODE_COST};
use fuse_backend_rs::abi::fuse_abi::{stat64, statvfs64, CreateIn, FsOptions, OpenOptions};
use fuse_backend_rs::abi::virtio_fs::RemovemappingOne;
use fuse_backend_rs::api::filesystem::{
    Context, DirEntry, Entry, FileLock, FileSystem, GetxattrReply, IoctlData, ListxattrReply, SetattrValid,
    ZeroCopyReader, ZeroCopyWriter,
};
use fuse_backend_rs::transport::FsCacheReqHandler;
use rustix::fs::Mode;
use std::ffi::CStr;
use std::io;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

/// A [`FileSystem`] that runs every request of `F` as the host process's
/// user (see the module documentation).
#[derive(Debug)]
pub struct AsHostUser<F> {
    inner: F,
    limit: Option<Arc<OutputLimit>>,
}

impl<F> AsHostUser<F> {
    /// `inner` as the host user; with `limit`, what the guest may add to
    /// the share is bounded.
    pub fn new(inner: F, limit: Option<Arc<OutputLimit>>) -> Self {
        Self { inner, limit }
    }

    /// Run `op` after charging `bytes` (refunding what it reports unused).
    fn charged<T>(&self, bytes: u64, op: impl FnOnce() -> io::Result<T>, used: impl Fn(&T) -> u64) -> io::Result<T> {
        match &self.limit {
            Some(limit) => limit.charged(bytes, op, used),
            None => op(),
        }
    }

    /// Run `op`, which adds one directory entry (plus `extra` bytes).
    fn new_node<T>(&self, extra: usize, op: impl FnOnce() -> io::Result<T>) -> io::Result<T> {
        self.charged(NODE_COST + extra as u64, op, |_| NODE_COST + extra as u64)
    }
}

/// Serializes every umask change of this module: two shares initializing at
/// once must not restore each other's temporary 0.
static UMASK_LOCK: Mutex<()> = Mutex::new(());

/// Holds [`UMASK_LOCK`] and restores the process umask when dropped.
pub(super) struct UmaskGuard {
    saved: Mode,
    _lock: MutexGuard<'static, ()>,
}

impl UmaskGuard {
    /// Remember the current umask (reading it means setting it: 0 until the
    /// guard is dropped, which is what the passthrough sets anyway).
    pub(super) fn save() -> Self {
        let lock = UMASK_LOCK.lock().unwrap_or_else(PoisonError::into_inner);
        Self { saved: rustix::process::umask(Mode::empty()), _lock: lock }
    }
}

impl Drop for UmaskGuard {
    fn drop(&mut self) {
        rustix::process::umask(self.saved);
    }
}

/// The process umask outside any [`UmaskGuard`] (for tests).
#[cfg(test)]
pub(super) fn resting_umask() -> Mode {
    let _lock = UMASK_LOCK.lock().unwrap_or_else(PoisonError::into_inner);
    let mask = rustix::process::umask(Mode::empty());
    rustix::process::umask(mask);
    mask
}

impl<F: FileSystem> FileSystem for AsHostUser<F> {
    type Inode = F::Inode;
    type Handle = F::Handle;

    fn id_remap(&self, ctx: &mut Context) -> io::Result<()> {
        // uid/gid 0 means "no credential switch" to the passthrough: the
        // request runs with the host process's credentials.
        ctx.uid = 0;
        ctx.gid = 0;
        self.inner.id_remap(ctx)
    }

    fn init(&self, capable: FsOptions) -> io::Result<FsOptions> {
        let _umask = UmaskGuard::save();
        self.inner.init(capable)
    }

    fn destroy(&self) {
        let _umask = UmaskGuard::save();
        self.inner.destroy()
    }

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

    fn setattr(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        attr: stat64,
        handle: Option<Self::Handle>,
        valid: SetattrValid,
    ) -> io::Result<(stat64, Duration)> {
        // Growing a file by truncate is charged its whole new size (the old
        // one is not looked up: shrinking or a same-size truncate is what the
        // guest's writers do).
        let bytes = if valid.contains(SetattrValid::SIZE) { u64::try_from(attr.st_size).unwrap_or(0) } else { 0 };
        self.charged(bytes, || self.inner.setattr(ctx, inode, attr, handle, valid), |_| bytes)
    }

    fn readlink(&self, ctx: &Context, inode: Self::Inode) -> io::Result<Vec<u8>> {
        self.inner.readlink(ctx, inode)
    }

    fn symlink(&self, ctx: &Context, linkname: &CStr, parent: Self::Inode, name: &CStr) -> io::Result<Entry> {
        self.new_node(linkname.to_bytes().len(), || self.inner.symlink(ctx, linkname, parent, name))
    }

    fn mknod(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        name: &CStr,
        mode: u32,
        rdev: u32,
        umask: u32,
    ) -> io::Result<Entry> {
        self.new_node(0, || self.inner.mknod(ctx, inode, name, mode, rdev, umask))
    }

    fn mkdir(&self, ctx: &Context, parent: Self::Inode, name: &CStr, mode: u32, umask: u32) -> io::Result<Entry> {
        self.new_node(0, || self.inner.mkdir(ctx, parent, name, mode, umask))
    }

    fn unlink(&self, ctx: &Context, parent: Self::Inode, name: &CStr) -> io::Result<()> {
        self.inner.unlink(ctx, parent, name)
    }

    fn rmdir(&self, ctx: &Context, parent: Self::Inode, name: &CStr) -> io::Result<()> {
        self.inner.rmdir(ctx, parent, name)
    }

    fn rename(
        &self,
        ctx: &Context,
        olddir: Self::Inode,
        oldname: &CStr,
        newdir: Self::Inode,
        newname: &CStr,
        flags: u32,
    ) -> io::Result<()> {
        self.inner.rename(ctx, olddir, oldname, newdir, newname, flags)
    }

    fn link(&self, ctx: &Context, inode: Self::Inode, newparent: Self::Inode, newname: &CStr) -> io::Result<Entry> {
        self.new_node(0, || self.inner.link(ctx, inode, newparent, newname))
    }

    fn open(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        flags: u32,
        fuse_flags: u32,
    ) -> io::Result<(Option<Self::Handle>, OpenOptions, Option<u32>)> {
        self.inner.open(ctx, inode, flags, fuse_flags)
    }

    fn create(
        &self,
        ctx: &Context,
        parent: Self::Inode,
        name: &CStr,
        args: CreateIn,
    ) -> io::Result<(Entry, Option<Self::Handle>, OpenOptions, Option<u32>)> {
        self.new_node(0, || self.inner.create(ctx, parent, name, args))
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

    #[allow(clippy::too_many_arguments)]
    fn write(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        handle: Self::Handle,
        r: &mut dyn ZeroCopyReader,
        size: u32,
        offset: u64,
        lock_owner: Option<u64>,
        delayed_write: bool,
        flags: u32,
        fuse_flags: u32,
    ) -> io::Result<usize> {
        self.charged(
            u64::from(size),
            || self.inner.write(ctx, inode, handle, r, size, offset, lock_owner, delayed_write, flags, fuse_flags),
            |&n| n as u64,
        )
    }

    fn flush(&self, ctx: &Context, inode: Self::Inode, handle: Self::Handle, lock_owner: u64) -> io::Result<()> {
        self.inner.flush(ctx, inode, handle, lock_owner)
    }

    fn fsync(&self, ctx: &Context, inode: Self::Inode, datasync: bool, handle: Self::Handle) -> io::Result<()> {
        self.inner.fsync(ctx, inode, datasync, handle)
    }

    fn fallocate(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        handle: Self::Handle,
        mode: u32,
        offset: u64,
        length: u64,
    ) -> io::Result<()> {
        self.charged(length, || self.inner.fallocate(ctx, inode, handle, mode, offset, length), |_| length)
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
        self.inner.statfs(ctx, inode)
    }

    fn setxattr(&self, ctx: &Context, inode: Self::Inode, name: &CStr, value: &[u8], flags: u32) -> io::Result<()> {
        let bytes = (name.to_bytes().len() + value.len()) as u64;
        self.charged(bytes, || self.inner.setxattr(ctx, inode, name, value, flags), |_| bytes)
    }

    fn getxattr(&self, ctx: &Context, inode: Self::Inode, name: &CStr, size: u32) -> io::Result<GetxattrReply> {
        self.inner.getxattr(ctx, inode, name, size)
    }

    fn listxattr(&self, ctx: &Context, inode: Self::Inode, size: u32) -> io::Result<ListxattrReply> {
        self.inner.listxattr(ctx, inode, size)
    }

    fn removexattr(&self, ctx: &Context, inode: Self::Inode, name: &CStr) -> io::Result<()> {
        self.inner.removexattr(ctx, inode, name)
    }

    fn opendir(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        flags: u32,
    ) -> io::Result<(Option<Self::Handle>, OpenOptions)> {
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

    fn fsyncdir(&self, ctx: &Context, inode: Self::Inode, datasync: bool, handle: Self::Handle) -> io::Result<()> {
        self.inner.fsyncdir(ctx, inode, datasync, handle)
    }

    fn releasedir(&self, ctx: &Context, inode: Self::Inode, flags: u32, handle: Self::Handle) -> io::Result<()> {
        self.inner.releasedir(ctx, inode, flags, handle)
    }

    #[allow(clippy::too_many_arguments)]
    fn setupmapping(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        handle: Self::Handle,
        foffset: u64,
        len: u64,
        flags: u64,
        moffset: u64,
        vu_req: &mut dyn FsCacheReqHandler,
    ) -> io::Result<()> {
        self.inner.setupmapping(ctx, inode, handle, foffset, len, flags, moffset, vu_req)
    }

    fn removemapping(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        requests: Vec<RemovemappingOne>,
        vu_req: &mut dyn FsCacheReqHandler,
    ) -> io::Result<()> {
        self.inner.removemapping(ctx, inode, requests, vu_req)
    }

    fn access(&self, ctx: &Context, inode: Self::Inode, mask: u32) -> io::Result<()> {
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

    fn getlk(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        handle: Self::Handle,
        owner: u64,
        lock: FileLock,
        flags: u32,
    ) -> io::Result<FileLock> {
        self.inner.getlk(ctx, inode, handle, owner, lock, flags)
    }

    fn setlk(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        handle: Self::Handle,
        owner: u64,
        lock: FileLock,
        flags: u32,
    ) -> io::Result<()> {
        self.inner.setlk(ctx, inode, handle, owner, lock, flags)
    }

    fn setlkw(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        handle: Self::Handle,
        owner: u64,
        lock: FileLock,
        flags: u32,
    ) -> io::Result<()> {
        self.inner.setlkw(ctx, inode, handle, owner, lock, flags)
    }

    #[allow(clippy::too_many_arguments)]
    fn ioctl(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        handle: Self::Handle,
        flags: u32,
        cmd: u32,
        data: IoctlData,
        out_size: u32,
    ) -> io::Result<IoctlData<'_>> {
        self.inner.ioctl(ctx, inode, handle, flags, cmd, data, out_size)
    }

    fn bmap(&self, ctx: &Context, inode: Self::Inode, block: u64, blocksize: u32) -> io::Result<u64> {
        self.inner.bmap(ctx, inode, block, blocksize)
    }

    fn poll(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        handle: Self::Handle,
        khandle: Self::Handle,
        flags: u32,
        events: u32,
    ) -> io::Result<u32> {
        self.inner.poll(ctx, inode, handle, khandle, flags, events)
    }

    fn notify_reply(&self) -> io::Result<()> {
        self.inner.notify_reply()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn callers_are_mapped_to_the_host_process_user() {
        struct Plain;
        impl FileSystem for Plain {
            type Inode = u64;
            type Handle = u64;
        }
        let fs = AsHostUser::new(Plain, None);
        let mut ctx = Context { uid: 1234, gid: 5678, pid: 42 };
        fs.id_remap(&mut ctx).unwrap();
        assert_eq!((ctx.uid, ctx.gid, ctx.pid), (0, 0, 42));
    }

    #[test]
    fn the_umask_guard_restores_the_previous_umask() {
        let before = resting_umask();
        {
            let _g = UmaskGuard::save();
            // What the passthrough does when it imports its root.
            rustix::process::umask(Mode::empty());
        }
        assert_eq!(resting_umask(), before);
    }
}
