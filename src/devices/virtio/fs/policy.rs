//! The one wrapper between fuse-backend-rs's FUSE server and its passthrough
//! file system: what a share lets the guest do ([`Policy`]), decided per
//! FUSE operation, and every request run as the host process's own user.
//!
//! # Read-only shares (the `--store` shares)
//!
//! Read-only here means the guest cannot change anything on the host through
//! the share, so the check is per operation, not per mount option the guest
//! could ignore: every operation is either forwarded (it only reads),
//! answered with EROFS (it would modify something), or answered with ENOSYS.
//! Operations this wrapper does not name (the locks, bmap, poll, and any that
//! a later fuse-backend-rs adds to the trait with a default body) get the
//! trait's default (ENOSYS or a no-op), never the inner file system, whatever
//! the policy: it fails closed. Opcodes the server itself does not know (e.g. FUSE_COPY_FILE_RANGE,
//! FUSE_TMPFILE) never reach a file system and are answered with ENOSYS.
//!
//! Lookups stay inside the shared directory because the passthrough resolves
//! each name relative to its parent's `O_PATH` descriptor with `O_NOFOLLOW`,
//! refuses names containing `/`, and maps `..` at the root to the root; a
//! symlink is an inode of its own whose target only the guest interprets.
//! The tests in `super::tests` prove it through the device.
//!
//! # Read-write shares (the exchange share)
//!
//! Every operation is forwarded but `mknod` of a character or block device
//! (EPERM: a host running as root would otherwise make the node, and the
//! guest could open the host's device through it). What a request may add
//! on the host's disk is charged against the share's [`OutputLimit`], when
//! it has one, before the request runs.
//!
//! # Every request as the host user
//!
//! fuse-backend-rs's passthrough file system was written for a virtiofsd
//! running as root: before creating a node (create, mknod, mkdir, symlink) it
//! switches the thread's effective uid/gid to the caller's from the FUSE
//! header (`setresuid(-1, uid, -1)`) and back to 0 afterwards. For an
//! unprivileged host process that fails with EPERM for every caller except
//! uid 0 (for which it does nothing). rootlayer wants the opposite anyway:
//! whatever the guest does, the host sees the invoking user doing it, so
//! files the guest creates are owned by that user and the host kernel's
//! permission checks for that user apply. The wrapper therefore maps the
//! caller to uid/gid 0 ("do not switch") in `id_remap`, which the server calls
//! before dispatching each request, whatever the policy.
//!
//! The passthrough also sets the process umask to 0 whenever it (re)imports
//! its root (FUSE_INIT, FUSE_DESTROY) so that guest-chosen modes are exact.
//! The umask is process-wide: left at 0 it would make every file the host
//! writes later (the output layer) world-writable. The wrapper restores the
//! previous umask after those calls ([`UmaskGuard`]), so guest-created files
//! get at most the permissions the invoking user's umask allows.

use super::limit::{OutputLimit, BLOCK, NODE_COST};
use fuse_backend_rs::abi::fuse_abi::{stat64, statvfs64, CreateIn, FsOptions, OpenOptions};
use fuse_backend_rs::abi::virtio_fs::RemovemappingOne;
use fuse_backend_rs::api::filesystem::{
    Context, DirEntry, Entry, FileSystem, GetxattrReply, IoctlData, ListxattrReply, SetattrValid, ZeroCopyReader,
    ZeroCopyWriter,
};
use fuse_backend_rs::transport::FsCacheReqHandler;
use rustix::fs::Mode;
use std::collections::HashMap;
use std::ffi::CStr;
use std::io;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

/// What a share lets the guest do (see the module documentation).
#[derive(Debug, Clone)]
pub enum Policy {
    /// Read, never change: EROFS for every mutating operation, ENOSYS for
    /// DAX mappings and ioctls, fsync a no-op.
    ReadOnly,
    /// Everything the passthrough does; with `limit`, what the guest may add
    /// to the share is bounded.
    ReadWrite { limit: Option<Arc<OutputLimit>> },
}

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

/// A [`FileSystem`] that serves `F` as [`Policy`] says, every request as the
/// host process's user (see the module documentation).
#[derive(Debug)]
pub struct PolicyFs<F> {
    inner: F,
    policy: Policy,
    /// The flags each open handle was opened with, as the passthrough
    /// recorded them (see [`PolicyFs::handle_flags`]).
    opened: Mutex<HashMap<u64, u32>>,
}

impl<F> PolicyFs<F> {
    pub fn new(inner: F, policy: Policy) -> Self {
        Self { inner, policy, opened: Mutex::new(HashMap::new()) }
    }

    fn read_only(&self) -> bool {
        matches!(self.policy, Policy::ReadOnly)
    }

    fn opened(&self) -> MutexGuard<'_, HashMap<u64, u32>> {
        self.opened.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Remember the flags a new handle was opened with.
    fn opened_with<H: Into<u64> + From<u64>>(&self, handle: Option<H>, flags: u32) -> Option<H> {
        let raw: u64 = handle?.into();
        self.opened().insert(raw, flags);
        Some(H::from(raw))
    }

    /// The flags to pass on with a read or write of `handle`: the ones it
    /// was opened with, not the guest's. fuse-backend-rs's passthrough
    /// (0.14) sets differing flags on the handle's descriptor with
    /// `fcntl(F_SETFL)` through a `File` it borrowed from the handle, and
    /// when that fails (O_DIRECT on tmpfs, say) it returns early and the
    /// `File` closes the handle's descriptor: closed again at release, that
    /// number may by then be another file of the VMM's (found by the
    /// `exchange_fs` fuzz target, which aborts on the second close).
    ///
    /// A handle this wrapper did not see opened, or saw released, is EBADF
    /// here, never passed on with the guest's flags: the passthrough keeps a
    /// handle whose release named another inode (found by `exchange_fs`: a
    /// RELEASE of an O_PATH handle under the wrong inode, then a WRITE with
    /// other flags, whose `F_SETFL` failed with EBADF and closed the
    /// descriptor the handle still owned).
    ///
    /// A read-only share's file system is ours (`store.rs`): it opens
    /// without handles and never changes a descriptor's flags, so its reads
    /// go on with the guest's flags.
    fn handle_flags(&self, handle: u64, guest: u32) -> io::Result<u32> {
        match self.opened().get(&handle) {
            Some(&flags) => Ok(flags),
            None if self.read_only() => Ok(guest),
            None => Err(io::Error::from_raw_os_error(libc::EBADF)),
        }
    }

    /// Forget `handle` once the file system has released it (not before:
    /// a refused release leaves the handle open there).
    fn released(&self, handle: u64, result: io::Result<()>) -> io::Result<()> {
        if result.is_ok() {
            self.opened().remove(&handle);
        }
        result
    }

    /// Refuse (EROFS) an operation that would modify the share.
    fn mutates(&self) -> io::Result<()> {
        if self.read_only() {
            return Err(erofs());
        }
        Ok(())
    }

    /// Refuse (ENOSYS) an operation a read-only share does not offer.
    fn offered(&self) -> io::Result<()> {
        if self.read_only() {
            return Err(enosys());
        }
        Ok(())
    }

    /// Run `op` after charging `bytes` (refunding what it reports unused).
    fn charged<T>(&self, bytes: u64, op: impl FnOnce() -> io::Result<T>, used: impl Fn(&T) -> u64) -> io::Result<T> {
        match &self.policy {
            Policy::ReadWrite { limit: Some(limit) } => limit.charged(bytes, op, used),
            _ => op(),
        }
    }

    /// Run `op`, which adds one directory entry (plus `extra` bytes).
    fn new_node<T>(&self, extra: usize, op: impl FnOnce() -> io::Result<T>) -> io::Result<T> {
        self.mutates()?;
        self.charged(NODE_COST + extra as u64, op, |_| NODE_COST + extra as u64)
    }
}

/// The bytes of the host file system's blocks that `len` bytes at `offset`
/// touch (whole [`BLOCK`]s).
fn block_span(offset: u64, len: u64) -> u64 {
    if len == 0 {
        return 0;
    }
    let end = offset.saturating_add(len).div_ceil(BLOCK);
    (end - offset / BLOCK).saturating_mul(BLOCK)
}

impl<F: FileSystem> PolicyFs<F> {
    /// Bytes of disk the file `inode` takes (None if that cannot be read).
    fn allocated(&self, ctx: &Context, inode: u64, handle: u64) -> Option<u64> {
        let (st, _) = self.inner.getattr(ctx, F::Inode::from(inode), Some(F::Handle::from(handle))).ok()?;
        u64::try_from(st.st_blocks).ok()?.checked_mul(512)
    }

    /// Run `op`, which writes `len` bytes at `offset` of `inode`: charged
    /// first the whole blocks it touches (a byte written into a hole takes
    /// a block of the host's disk), then refunded down to what it took: the
    /// bytes it reports written (`written`), or the disk space the file
    /// grew by, whichever is more (a rewrite is charged again).
    fn charged_blocks<T>(
        &self,
        (ctx, inode, handle): (&Context, u64, u64),
        (offset, len): (u64, u64),
        op: impl FnOnce() -> io::Result<T>,
        written: impl Fn(&T) -> u64,
    ) -> io::Result<T> {
        let Policy::ReadWrite { limit: Some(limit) } = &self.policy else { return op() };
        let span = block_span(offset, len);
        limit.charge(span)?;
        let before = self.allocated(ctx, inode, handle);
        let result = op();
        // Where the file's size cannot be read, it took every block touched.
        let grown = match (before, self.allocated(ctx, inode, handle)) {
            (Some(before), Some(after)) => after.saturating_sub(before),
            _ => span,
        };
        let used = match &result {
            Ok(v) => written(v).max(grown),
            Err(_) => grown,
        };
        limit.refund(span.saturating_sub(used));
        result
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

impl<F: FileSystem> FileSystem for PolicyFs<F> {
    type Inode = F::Inode;
    type Handle = F::Handle;

    // --- Session and identity -------------------------------------------

    fn init(&self, capable: FsOptions) -> io::Result<FsOptions> {
        let mut opts = {
            let _umask = UmaskGuard::save();
            self.inner.init(capable)?
        };
        if self.read_only() {
            // Nothing is ever written, so nothing is cached for writing.
            opts.remove(FsOptions::WRITEBACK_CACHE | FsOptions::HANDLE_KILLPRIV_V2);
        }
        Ok(opts)
    }

    fn destroy(&self) {
        let _umask = UmaskGuard::save();
        self.opened().clear();
        self.inner.destroy()
    }

    fn id_remap(&self, ctx: &mut Context) -> io::Result<()> {
        // uid/gid 0 means "no credential switch" to the passthrough: the
        // request runs with the host process's credentials.
        ctx.uid = 0;
        ctx.gid = 0;
        self.inner.id_remap(ctx)
    }

    // --- Reading: forwarded (writing flags refused when read-only) ------

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
            self.mutates()?;
        }
        let (handle, opts, passthrough) = self.inner.open(ctx, inode, flags, fuse_flags)?;
        Ok((self.opened_with(handle, flags), opts, passthrough))
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
        let handle: u64 = handle.into();
        let flags = self.handle_flags(handle, flags)?;
        self.inner.read(ctx, inode, handle.into(), w, size, offset, lock_owner, flags)
    }

    /// Not implemented, on purpose: FUSE's ENOSYS tells the guest kernel to
    /// treat every later FLUSH as done without sending it. A FLUSH comes at
    /// every close of a descriptor, in every process that inherited it:
    /// each command a script forks closed the script's own descriptor on
    /// the exchange share, a round trip through the emulated guest kernel
    /// (about 4 ms) per command. The passthrough's flush only closes a
    /// duplicate of its descriptor; writes reach the host file as they are
    /// made (no writeback cache), and the host reads the share after the
    /// guest is gone.
    fn flush(&self, _ctx: &Context, _inode: Self::Inode, _handle: Self::Handle, _lock_owner: u64) -> io::Result<()> {
        Err(io::Error::from_raw_os_error(libc::ENOSYS))
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
        let raw: u64 = handle.into();
        self.released(raw, self.inner.release(ctx, inode, flags, raw.into(), flush, flock_release, lock_owner))
    }

    fn statfs(&self, ctx: &Context, inode: Self::Inode) -> io::Result<statvfs64> {
        let mut st = self.inner.statfs(ctx, inode)?;
        if self.read_only() {
            st.f_flag |= libc::ST_RDONLY;
        }
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
            self.mutates()?;
        }
        let (handle, opts) = self.inner.opendir(ctx, inode, flags)?;
        // (The passthrough records a directory's flags with O_DIRECTORY.)
        Ok((self.opened_with(handle, flags | libc::O_DIRECTORY as u32), opts))
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
        let raw: u64 = handle.into();
        self.released(raw, self.inner.releasedir(ctx, inode, flags, raw.into()))
    }

    fn access(&self, ctx: &Context, inode: Self::Inode, mask: u32) -> io::Result<()> {
        // W_OK is a small positive constant; the cast cannot change it.
        if mask & (libc::W_OK as u32) != 0 {
            self.mutates()?;
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

    // --- Write-back: a successful no-op when read-only ------------------

    fn fsync(&self, ctx: &Context, inode: Self::Inode, datasync: bool, handle: Self::Handle) -> io::Result<()> {
        if self.read_only() {
            return Ok(());
        }
        self.inner.fsync(ctx, inode, datasync, handle)
    }

    fn fsyncdir(&self, ctx: &Context, inode: Self::Inode, datasync: bool, handle: Self::Handle) -> io::Result<()> {
        if self.read_only() {
            return Ok(());
        }
        self.inner.fsyncdir(ctx, inode, datasync, handle)
    }

    // --- Mutating: EROFS when read-only, else charged to the limit ------

    fn setattr(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        attr: stat64,
        handle: Option<Self::Handle>,
        valid: SetattrValid,
    ) -> io::Result<(stat64, Duration)> {
        self.mutates()?;
        // Growing a file by truncate is charged its whole new size (the old
        // one is not looked up: shrinking or a same-size truncate is what the
        // guest's writers do).
        let bytes = if valid.contains(SetattrValid::SIZE) { u64::try_from(attr.st_size).unwrap_or(0) } else { 0 };
        self.charged(bytes, || self.inner.setattr(ctx, inode, attr, handle, valid), |_| bytes)
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
        self.mutates()?;
        // The umask only ever takes permission bits away: the passthrough
        // makes the node with `mode & !umask`, and a umask with file-type
        // bits (from the guest) would turn an allowed type, or no valid
        // one, into a device (0o160000 & !0o140000 is S_IFCHR).
        let umask = umask & 0o777;
        // No device nodes: as root, the passthrough would make any the guest
        // asks for, and opening one through the share reaches the host's
        // device (a block device: the host's disk). Judged on the mode the
        // node gets.
        if matches!((mode & !umask) & libc::S_IFMT, libc::S_IFCHR | libc::S_IFBLK) {
            return Err(io::Error::from_raw_os_error(libc::EPERM));
        }
        self.new_node(0, || self.inner.mknod(ctx, inode, name, mode, rdev, umask))
    }

    fn mkdir(&self, ctx: &Context, parent: Self::Inode, name: &CStr, mode: u32, umask: u32) -> io::Result<Entry> {
        self.new_node(0, || self.inner.mkdir(ctx, parent, name, mode, umask))
    }

    fn unlink(&self, ctx: &Context, parent: Self::Inode, name: &CStr) -> io::Result<()> {
        self.mutates()?;
        self.inner.unlink(ctx, parent, name)
    }

    fn rmdir(&self, ctx: &Context, parent: Self::Inode, name: &CStr) -> io::Result<()> {
        self.mutates()?;
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
        self.mutates()?;
        self.inner.rename(ctx, olddir, oldname, newdir, newname, flags)
    }

    fn link(&self, ctx: &Context, inode: Self::Inode, newparent: Self::Inode, newname: &CStr) -> io::Result<Entry> {
        self.new_node(0, || self.inner.link(ctx, inode, newparent, newname))
    }

    fn create(
        &self,
        ctx: &Context,
        parent: Self::Inode,
        name: &CStr,
        args: CreateIn,
    ) -> io::Result<(Entry, Option<Self::Handle>, OpenOptions, Option<u32>)> {
        let flags = args.flags;
        let (entry, handle, opts, passthrough) = self.new_node(0, || self.inner.create(ctx, parent, name, args))?;
        Ok((entry, self.opened_with(handle, flags), opts, passthrough))
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
        self.mutates()?;
        let (inode, handle): (u64, u64) = (inode.into(), handle.into());
        self.charged_blocks(
            (ctx, inode, handle),
            (offset, u64::from(size)),
            || {
                let (i, h, flags) = (inode.into(), handle.into(), self.handle_flags(handle, flags)?);
                self.inner.write(ctx, i, h, r, size, offset, lock_owner, delayed_write, flags, fuse_flags)
            },
            |&n| n as u64,
        )
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
        self.mutates()?;
        let (inode, handle): (u64, u64) = (inode.into(), handle.into());
        self.charged_blocks(
            (ctx, inode, handle),
            (offset, length),
            || self.inner.fallocate(ctx, inode.into(), handle.into(), mode, offset, length),
            |_| 0,
        )
    }

    fn setxattr(&self, ctx: &Context, inode: Self::Inode, name: &CStr, value: &[u8], flags: u32) -> io::Result<()> {
        self.mutates()?;
        let bytes = (name.to_bytes().len() + value.len()) as u64;
        self.charged(bytes, || self.inner.setxattr(ctx, inode, name, value, flags), |_| bytes)
    }

    fn removexattr(&self, ctx: &Context, inode: Self::Inode, name: &CStr) -> io::Result<()> {
        self.mutates()?;
        self.inner.removexattr(ctx, inode, name)
    }

    // --- Not offered by a read-only share: ENOSYS -----------------------
    // DAX mappings could be writable, ioctls are opaque to this wrapper, and
    // neither is needed to read a store.

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
        self.offered()?;
        self.inner.setupmapping(ctx, inode, handle, foffset, len, flags, moffset, vu_req)
    }

    fn removemapping(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        requests: Vec<RemovemappingOne>,
        vu_req: &mut dyn FsCacheReqHandler,
    ) -> io::Result<()> {
        self.offered()?;
        self.inner.removemapping(ctx, inode, requests, vu_req)
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
        self.offered()?;
        self.inner.ioctl(ctx, inode, handle, flags, cmd, data, out_size)
    }

    // Not named, so the trait's ENOSYS whatever the policy (the passthrough
    // implements none of them either): getlk, setlk, setlkw, bmap, poll,
    // notify_reply.
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

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

    /// A file system that counts the operations it implements (each
    /// succeeds); the others get the trait's defaults.
    #[derive(Default)]
    struct Counting(AtomicUsize);

    impl FileSystem for Counting {
        type Inode = u64;
        type Handle = u64;

        fn unlink(&self, _ctx: &Context, _parent: u64, _name: &CStr) -> io::Result<()> {
            self.0.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }

        fn fsync(&self, _ctx: &Context, _inode: u64, _datasync: bool, _handle: u64) -> io::Result<()> {
            self.0.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }

        fn ioctl(
            &self,
            _ctx: &Context,
            _inode: u64,
            _handle: u64,
            _flags: u32,
            _cmd: u32,
            _data: IoctlData,
            _out_size: u32,
        ) -> io::Result<IoctlData<'_>> {
            self.0.fetch_add(1, Ordering::SeqCst);
            Ok(IoctlData { result: 7, data: None })
        }

        fn fallocate(
            &self,
            _ctx: &Context,
            _inode: u64,
            _handle: u64,
            _mode: u32,
            _offset: u64,
            _length: u64,
        ) -> io::Result<()> {
            self.0.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }
    }

    #[test]
    fn callers_are_mapped_to_the_host_process_user_whatever_the_policy() {
        for policy in [Policy::ReadOnly, Policy::ReadWrite { limit: None }] {
            let fs = PolicyFs::new(Counting::default(), policy);
            let mut ctx = Context { uid: 1234, gid: 5678, pid: 42 };
            fs.id_remap(&mut ctx).unwrap();
            assert_eq!((ctx.uid, ctx.gid, ctx.pid), (0, 0, 42));
        }
    }

    #[test]
    fn the_policy_decides_what_reaches_the_inner_file_system() {
        let ctx = Context::default();
        let errno = |r: io::Result<()>| r.unwrap_err().raw_os_error();
        let name = c"f";

        let ro = PolicyFs::new(Counting::default(), Policy::ReadOnly);
        assert_eq!(errno(ro.unlink(&ctx, 1, name)), Some(libc::EROFS));
        let ioctl = |fs: &PolicyFs<Counting>| fs.ioctl(&ctx, 1, 0, 0, 0, IoctlData::default(), 0).map(|d| d.result);
        assert_eq!(ioctl(&ro).unwrap_err().raw_os_error(), Some(libc::ENOSYS));
        ro.fsync(&ctx, 1, false, 0).unwrap();
        assert_eq!(ro.inner.0.load(Ordering::SeqCst), 0, "nothing reached the read-only share");

        let rw = PolicyFs::new(Counting::default(), Policy::ReadWrite { limit: None });
        rw.unlink(&ctx, 1, name).unwrap();
        assert_eq!(ioctl(&rw).unwrap(), 7);
        rw.fsync(&ctx, 1, false, 0).unwrap();
        assert_eq!(rw.inner.0.load(Ordering::SeqCst), 3, "everything reached the read-write share");
    }

    #[test]
    fn what_a_read_write_share_adds_is_charged_to_its_limit() {
        let ctx = Context::default();
        let limit = Arc::new(OutputLimit::new(2 * BLOCK));
        let fs = PolicyFs::new(Counting::default(), Policy::ReadWrite { limit: Some(limit.clone()) });
        // Counting has no getattr: the block the request touches is kept.
        fs.fallocate(&ctx, 1, 0, 0, 0, 60).unwrap();
        assert_eq!(limit.used(), BLOCK);
        // Counting has no mkdir: the trait's default (ENOSYS) is refunded.
        assert!(fs.mkdir(&ctx, 1, c"d", 0o755, 0).is_err());
        assert_eq!(limit.used(), BLOCK, "a failed request is refunded");
        assert!(!limit.exceeded());
        // 4097 bytes from a block boundary touch two blocks.
        let e = fs.fallocate(&ctx, 1, 0, 0, BLOCK, BLOCK + 1).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EFBIG));
        assert!(limit.exceeded());
        assert_eq!(fs.inner.0.load(Ordering::SeqCst), 1, "the refused request never ran");
    }

    #[test]
    fn a_read_write_share_makes_no_device_nodes() {
        let ctx = Context::default();
        let fs = PolicyFs::new(Counting::default(), Policy::ReadWrite { limit: None });
        for mode in [libc::S_IFCHR | 0o666, libc::S_IFBLK | 0o600] {
            let e = fs.mknod(&ctx, 1, c"dev", mode, 0x0800, 0).unwrap_err();
            assert_eq!(e.raw_os_error(), Some(libc::EPERM));
        }
        assert_eq!(fs.inner.0.load(Ordering::SeqCst), 0, "never passed on");
    }

    /// What the passthrough is given, to check what it would make.
    #[derive(Default)]
    struct Mknods(std::sync::Mutex<Vec<(u32, u32)>>);

    impl FileSystem for Mknods {
        type Inode = u64;
        type Handle = u64;
        fn mknod(&self, _: &Context, _: u64, _: &CStr, mode: u32, _: u32, umask: u32) -> io::Result<Entry> {
            self.0.lock().unwrap().push((mode, umask));
            Err(io::Error::from_raw_os_error(libc::ENOSYS))
        }
    }

    #[test]
    fn a_guest_umask_cannot_turn_a_node_into_a_device() {
        // Found by the exchange_fs fuzz target: mode 0o160000 (no valid
        // type) with umask 0o140000 made a character device on the host.
        let ctx = Context::default();
        let fs = PolicyFs::new(Mknods::default(), Policy::ReadWrite { limit: None });
        for (mode, umask) in [(0o160_644, 0o140_000), (libc::S_IFSOCK | 0o644, 0o120_000), (0o160_000, 0o100_000)] {
            let effective = mode & !(umask & 0o777);
            match effective & libc::S_IFMT {
                libc::S_IFCHR | libc::S_IFBLK => {
                    let e = fs.mknod(&ctx, 1, c"dev", mode, 0x0800, umask).unwrap_err();
                    assert_eq!(e.raw_os_error(), Some(libc::EPERM), "{mode:o} {umask:o}");
                }
                _ => {
                    let _ = fs.mknod(&ctx, 1, c"node", mode, 0x0800, umask);
                }
            }
        }
        for (mode, umask) in fs.inner.0.lock().unwrap().iter() {
            assert_eq!(umask & !0o777, 0, "only permission bits of the umask reach the passthrough");
            assert!(!matches!((mode & !umask) & libc::S_IFMT, libc::S_IFCHR | libc::S_IFBLK), "{mode:o} {umask:o}");
        }
    }

    #[test]
    fn a_write_is_charged_the_blocks_it_touches() {
        assert_eq!(block_span(0, 0), 0);
        assert_eq!(block_span(0, 1), BLOCK);
        assert_eq!(block_span(BLOCK - 1, 2), 2 * BLOCK);
        assert_eq!(block_span(BLOCK, BLOCK), BLOCK);
        assert!(block_span(u64::MAX - 1, 10) >= BLOCK, "no overflow");
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
