//! The virtio-fs device (virtio spec 5.11): device ID 26, configuration
//! space `tag[36]` + `num_request_queues` (5.11.4), queue 0 the high-priority
//! queue (FORGET), queue 1 the one request queue (5.11.2).
//!
//! Each available descriptor chain is checked ([`super::request`]), given to
//! fuse-backend-rs's [`Server`] as a `Reader` over its device-readable part
//! and a `Writer` over its device-writable part, and returned on the used
//! ring with the number of bytes the reply took
//! ([`crate::devices::virtio::queue::drain`]). A bad request costs the
//! guest an error reply (or, when the chain cannot carry one, an empty used
//! entry); it never stops the device.

use super::limit::OutputLimit;
use super::policy::{Policy, PolicyFs, UmaskGuard};
use super::request::{self, OUT_HEADER_LEN, OUT_HEADER_LEN_U32};
use super::store::StoreFs;
use crate::devices::virtio::queue;
use crate::devices::virtio::worker::{Handler, Worker};
use crate::devices::virtio::StartContext;
use crate::devices::virtio::{
    read_config_bytes, ActivateContext, ActivateError, VirtioDevice, TYPE_FS, VIRTIO_F_VERSION_1,
};
use crate::seccomp::ThreadKind;
use fuse_backend_rs::abi::fuse_abi::{Opcode, OutHeader};
use fuse_backend_rs::api::filesystem::FileSystem;
use fuse_backend_rs::api::server::Server;
use fuse_backend_rs::passthrough::{CachePolicy, Config, PassthroughFs};
use fuse_backend_rs::transport::{Reader, VirtioFsWriter, Writer};
use std::io::{self, Write};
use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use virtio_queue::DescriptorChain;
use vm_memory::{ByteValued, GuestMemoryMmap};

/// Length of the tag field of the configuration space.
pub const TAG_LEN: usize = 36;
/// Maximum size of each queue.
pub const QUEUE_SIZE: u16 = 256;
const NUM_QUEUES: usize = 2;
/// Request queues besides the high-priority one.
const NUM_REQUEST_QUEUES: u32 = 1;

/// Attribute and entry timeouts of a read-only share: its content does not
/// change while a job runs (a Nix store path is immutable once valid).
const READ_ONLY_TIMEOUT: Duration = Duration::from_secs(3600);

/// Errors setting up a share.
#[derive(Debug, thiserror::Error)]
pub enum FsError {
    #[error("virtio-fs tag {0:?} must be 1 to 36 bytes without NUL")]
    Tag(String),
    #[error("shared directory {path}")]
    SharedDir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("shared directory {0} is not a directory")]
    NotADirectory(PathBuf),
    #[error("shared directory {0} is not valid UTF-8")]
    NotUtf8(PathBuf),
    #[error("serving {path} with the passthrough file system")]
    Passthrough {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// The FUSE server of one share, whatever its file system stack.
trait Serve: Send + Sync {
    fn serve(&self, r: Reader<'_>, w: Writer<'_>) -> fuse_backend_rs::Result<usize>;
}

impl<F: FileSystem + Send + Sync> Serve for Server<F> {
    fn serve(&self, r: Reader<'_>, w: Writer<'_>) -> fuse_backend_rs::Result<usize> {
        self.handle_message(r, w, None, None)
    }
}

/// A virtio-fs device sharing one host directory.
pub struct Fs {
    tag: String,
    shared_dir: PathBuf,
    read_only: bool,
    /// What the guest may add to a read-write share.
    limit: Option<Arc<OutputLimit>>,
    config: Vec<u8>,
    queue_sizes: [u16; NUM_QUEUES],
    /// Built by `new` (so a bad directory fails early) or, after a reset,
    /// afresh by `activate`.
    server: Option<Arc<dyn Serve>>,
    worker: Option<Worker>,
    /// Set once any server of this device has been asked anything but
    /// FUSE_INIT (see [`VirtioDevice::served_content`]).
    served_content: Arc<AtomicBool>,
}

impl std::fmt::Debug for Fs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fs")
            .field("tag", &self.tag)
            .field("shared_dir", &self.shared_dir)
            .field("read_only", &self.read_only)
            .field("started", &self.worker.is_some())
            .finish_non_exhaustive()
    }
}

impl Fs {
    /// Share `shared_dir` with the guest under `tag` (what the guest passes
    /// to `mount -t virtiofs`), read-only if `read_only`.
    pub fn new(tag: &str, shared_dir: &Path, read_only: bool) -> Result<Self, FsError> {
        if tag.is_empty() || tag.len() > TAG_LEN || tag.contains('\0') {
            return Err(FsError::Tag(tag.to_string()));
        }
        let mut config = vec![0u8; TAG_LEN];
        config[..tag.len()].copy_from_slice(tag.as_bytes());
        config.extend_from_slice(&NUM_REQUEST_QUEUES.to_le_bytes());

        // The passthrough opens its root with O_NOFOLLOW: resolve symlinks
        // in the path given on the command line here.
        let shared_dir = std::fs::canonicalize(shared_dir)
            .map_err(|source| FsError::SharedDir { path: shared_dir.to_path_buf(), source })?;
        if !shared_dir.is_dir() {
            return Err(FsError::NotADirectory(shared_dir));
        }
        let server = build_server(&shared_dir, read_only, None)?;
        Ok(Self {
            tag: tag.to_string(),
            shared_dir,
            read_only,
            limit: None,
            config,
            queue_sizes: [QUEUE_SIZE; NUM_QUEUES],
            server: Some(server),
            worker: None,
            served_content: Arc::default(),
        })
    }
}

impl Fs {
    /// Bound what the guest may add to this (read-write) share: see
    /// [`OutputLimit`].
    pub fn with_output_limit(mut self, limit: Arc<OutputLimit>) -> Result<Self, FsError> {
        self.server = Some(build_server(&self.shared_dir, self.read_only, Some(limit.clone()))?);
        self.limit = Some(limit);
        Ok(self)
    }
}

#[cfg(any(test, feature = "fuzz"))]
impl Fs {
    /// Serve one chain as the worker does (for the fuzz targets, which need
    /// no thread). Returns the used length; `None` after a reset.
    pub(crate) fn serve_chain(&self, mem: &GuestMemoryMmap, chain: DescriptorChain<&GuestMemoryMmap>) -> Option<u32> {
        Some(handle_chain(self.server.as_deref()?, &self.served_content, mem, chain))
    }
}

fn build_server(
    shared_dir: &Path,
    read_only: bool,
    limit: Option<Arc<OutputLimit>>,
) -> Result<Arc<dyn Serve>, FsError> {
    let passthrough_err = |source| FsError::Passthrough { path: shared_dir.to_path_buf(), source };
    if read_only {
        // Immutable content: the guest keeps pages and attributes, and the
        // share holds no descriptor per file it looked up.
        let fs = StoreFs::new(shared_dir, READ_ONLY_TIMEOUT).map_err(passthrough_err)?;
        return Ok(Arc::new(Server::new(PolicyFs::new(fs, Policy::ReadOnly))));
    }
    let root_dir = shared_dir.to_str().ok_or_else(|| FsError::NotUtf8(shared_dir.to_path_buf()))?.to_string();
    let cfg = Config {
        root_dir,
        xattr: true,
        // Import the root on FUSE_INIT, and validate names ourselves (the
        // passthrough skips its path checks when it is not importing).
        do_import: true,
        writeback: false,
        // The host reads the exchange directory only after the guest is
        // done; close-to-open consistency is enough.
        cache_policy: CachePolicy::Auto,
        ..Default::default()
    };
    let fs = PassthroughFs::<()>::new(cfg).map_err(passthrough_err)?;
    {
        // Open the root now, so a directory we cannot read fails here
        // rather than at the guest's mount.
        let _umask = UmaskGuard::save();
        fs.import().map_err(passthrough_err)?;
    }
    Ok(Arc::new(Server::new(PolicyFs::new(fs, Policy::ReadWrite { limit }))))
}

impl VirtioDevice for Fs {
    fn device_type(&self) -> u32 {
        TYPE_FS
    }

    fn features(&self) -> u64 {
        VIRTIO_F_VERSION_1
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_sizes
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config, offset, data);
    }

    fn activate(&mut self, ctx: ActivateContext) -> Result<(), ActivateError> {
        if ctx.queues.len() != NUM_QUEUES || ctx.queue_evts.len() != NUM_QUEUES {
            return Err(ActivateError::QueueCount { expected: NUM_QUEUES, got: ctx.queues.len() });
        }
        let worker = self.worker.as_mut().ok_or(ActivateError::NotStarted)?;
        // The file system is built (after a reset: afresh) on the worker
        // thread, under its filter.
        let server = self.server.take();
        let (shared_dir, read_only, limit) = (self.shared_dir.clone(), self.read_only, self.limit.clone());
        let served_content = Arc::clone(&self.served_content);
        let ActivateContext { mem, interrupt, mut queues, queue_evts, .. } = ctx;
        let make = move || {
            let server = match server {
                Some(s) => s,
                None => build_server(&shared_dir, read_only, limit)?,
            };
            Ok(Box::new(move |i: usize| {
                if let Some(q) = queues.get_mut(i) {
                    // A broken available ring serves nothing until the
                    // driver resets the device.
                    let _ = queue::drain(q, &mem, &interrupt, |chain| {
                        handle_chain(server.as_ref(), &served_content, &mem, chain)
                    });
                }
                true
            }) as Handler)
        };
        worker.activate(queue_evts, Box::new(make))
    }

    fn start(&mut self, ctx: &StartContext<'_>) -> Result<(), ActivateError> {
        let filter = ctx.seccomp.thread(ThreadKind::Fs)?;
        let name = format!("virtio-fs-{}", self.tag);
        self.worker = Some(Worker::spawn(&name, filter, ctx.failures.clone()).map_err(ActivateError::Worker)?);
        Ok(())
    }

    fn served_content(&self) -> bool {
        self.served_content.load(Ordering::SeqCst)
    }

    fn reset(&mut self) {
        // Stops serving (the handler and its file system are dropped on the
        // worker thread); the next activation starts from a fresh file
        // system, as the driver will send FUSE_INIT again.
        if let Some(w) = self.worker.as_mut() {
            w.deactivate();
        }
    }
}

/// Serve one request; returns the bytes written to its writable buffers.
/// Anything but a well-formed FUSE_INIT sets `served_content`.
fn handle_chain(
    server: &dyn Serve,
    served_content: &AtomicBool,
    mem: &GuestMemoryMmap,
    chain: DescriptorChain<&GuestMemoryMmap>,
) -> u32 {
    let req = match request::parse(mem, chain.clone()) {
        Ok(req) => req,
        Err(e) => {
            served_content.store(true, Ordering::SeqCst);
            return e.reply_to().map_or(0, |unique| reply_error(mem, chain, unique, libc::EINVAL));
        }
    };
    if req.header.opcode != Opcode::Init as u32 {
        served_content.store(true, Ordering::SeqCst);
    }
    let unique = req.header.unique;
    let wants_reply = request::expects_reply(req.header.opcode);
    if wants_reply && req.writable < OUT_HEADER_LEN {
        return 0;
    }
    let reader = match Reader::from_descriptor_chain(mem, chain.clone()) {
        Ok(r) => r,
        Err(_) => return 0,
    };
    let writer = match VirtioFsWriter::new(mem, chain.clone()) {
        Ok(w) => w,
        Err(_) => return 0,
    };
    // The server is meant not to panic on guest input, but some of its
    // consistency checks are debug assertions on reply sizes a guest chooses
    // (a reply buffer shorter than the reply). Keep such a request from
    // taking the device down; the file system holds no lock across them.
    let result = panic::catch_unwind(AssertUnwindSafe(|| server.serve(reader, Writer::from(writer))));
    match result {
        Ok(Ok(n)) => u32::try_from(n).unwrap_or(0),
        Ok(Err(e)) if wants_reply => reply_error(mem, chain, unique, errno_of(&e)),
        Err(_) if wants_reply => reply_error(mem, chain, unique, libc::EIO),
        _ => 0,
    }
}

/// The errno for a request the server could not handle.
fn errno_of(e: &fuse_backend_rs::Error) -> i32 {
    use fuse_backend_rs::Error as E;
    match e {
        E::DecodeMessage(_)
        | E::InvalidHeaderLength
        | E::InvalidCString(_)
        | E::MissingParameter
        | E::InvalidXattrSize(_)
        | E::InvalidMessage(_) => libc::EINVAL,
        _ => libc::EIO,
    }
}

/// Write a bare error reply at the start of the chain's writable buffers.
fn reply_error(mem: &GuestMemoryMmap, chain: DescriptorChain<&GuestMemoryMmap>, unique: u64, errno: i32) -> u32 {
    let header = OutHeader { len: OUT_HEADER_LEN_U32, error: -errno, unique };
    let Ok(mut w) = VirtioFsWriter::new(mem, chain) else {
        return 0;
    };
    if w.available_bytes() < OUT_HEADER_LEN || w.write_all(header.as_slice()).is_err() {
        return 0;
    }
    header.len
}
