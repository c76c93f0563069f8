//! The virtio-blk device (virtio 1.2, 5.2): features, configuration space,
//! activation, and the queue handler that executes the requests
//! [`super::request`] parsed, directly between the backing file and guest
//! memory.
//!
//! No volatile write cache, so no `FLUSH` (Firecracker's default "Unsafe"
//! cache type): every write is in the host file when the request completes;
//! the disks live for one job (the scratch disk is read off through the
//! host's page cache once the guest has stopped, then removed) or are
//! read-only, so making them durable on the host's storage (a host fsync
//! per guest flush, five per job) is work no one needs. A flush a driver
//! sends anyway completes at once.
//!
//! One request queue; requests are served in order on the device's worker
//! thread. Data goes straight from the file into guest memory and back
//! (`read`/`write` on the guest's pages, no bounce buffer). `EVENT_IDX` is
//! not offered, so every batch of completions interrupts the guest once.
//!
//! A request the host fails to carry out (the image's file system full
//! under a sparse scratch disk, an I/O error reading the base) completes
//! with IOERR, as a real disk's would, and is also a device failure
//! ([`DeviceFailures`]): the VMM stops the guest and the job fails. The
//! guest kernel may not pass the error on (a page written back at the
//! final remount fails without failing the remount), and a disk the host
//! could not write is not the one the guest wrote, so nothing read off it
//! afterwards can be trusted.

use super::request::{self, DiskInfo, Op, Parsed, Segment};
use super::{ID_BYTES, QUEUE_SIZE, SECTOR_SIZE, STATUS_IOERR, STATUS_OK};
use crate::devices::virtio::queue;
use crate::devices::virtio::worker::{Handler as WorkerHandler, Worker};
use crate::devices::virtio::{
    read_config_bytes, ActivateContext, ActivateError, Interrupt, VirtioDevice, TYPE_BLOCK, VIRTIO_F_VERSION_1,
};
use crate::devices::virtio::{DeviceFailures, StartContext};
use crate::seccomp::ThreadKind;
use std::error::Error as _;
use std::fs::{File, OpenOptions};
use std::io::{self, Seek, SeekFrom};
use std::mem::{offset_of, size_of};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use virtio_bindings::virtio_blk::{virtio_blk_config, VIRTIO_BLK_F_BLK_SIZE, VIRTIO_BLK_F_RO, VIRTIO_BLK_F_SEG_MAX};
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryError, GuestMemoryMmap};

/// Data segments per request: the queue size minus header and status, so
/// that a driver without indirect descriptors can always fit a request.
pub const SEG_MAX: u32 = QUEUE_SIZE as u32 - 2;
/// The block size announced to the driver.
pub const BLOCK_SIZE: u32 = 512;

/// Errors setting up the block device.
#[derive(Debug, thiserror::Error)]
pub enum BlockError {
    #[error("cannot open disk image {path}")]
    Open {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot read the size of disk image {path}")]
    Size {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("device id {0:?} is longer than 20 bytes")]
    IdTooLong(String),
}

/// A virtio-blk device backed by a raw file.
#[derive(Debug)]
pub struct Block {
    file: Arc<File>,
    disk: DiskInfo,
    id: [u8; ID_BYTES],
    config: Vec<u8>,
    worker: Option<Worker>,
    /// Where a request the host failed is reported (the VMM's, from
    /// [`VirtioDevice::start`]).
    failures: DeviceFailures,
}

impl Block {
    /// Open the raw image at `path` (read-only when `read_only`). Its
    /// capacity is its size in whole 512-byte sectors; `id` (at most 20
    /// bytes) is what `VIRTIO_BLK_T_GET_ID` returns, the guest's
    /// `/sys/block/vda/serial`.
    pub fn new(path: &Path, read_only: bool, id: &str) -> Result<Self, BlockError> {
        let id_bytes = id.as_bytes();
        if id_bytes.len() > ID_BYTES {
            return Err(BlockError::IdTooLong(id.to_string()));
        }
        let mut padded = [0u8; ID_BYTES];
        padded[..id_bytes.len()].copy_from_slice(id_bytes);

        let file = OpenOptions::new()
            .read(true)
            .write(!read_only)
            .open(path)
            .map_err(|source| BlockError::Open { path: path.to_path_buf(), source })?;
        let size = file.metadata().map_err(|source| BlockError::Size { path: path.to_path_buf(), source })?.len();
        let capacity_sectors = size / SECTOR_SIZE;
        Ok(Self {
            file: Arc::new(file),
            disk: DiskInfo { capacity_sectors, read_only },
            id: padded,
            config: config_space(capacity_sectors),
            worker: None,
            failures: DeviceFailures::default(),
        })
    }

    /// Size in 512-byte sectors.
    pub fn capacity_sectors(&self) -> u64 {
        self.disk.capacity_sectors
    }

    fn handler(&self, queue: Queue, mem: GuestMemoryMmap, interrupt: Interrupt) -> Handler {
        Handler {
            queue,
            interrupt,
            reported_broken_ring: false,
            requests: Requests {
                mem,
                file: Arc::clone(&self.file),
                disk: self.disk,
                id: self.id,
                failures: self.failures.clone(),
            },
        }
    }
}

#[cfg(any(test, feature = "fuzz"))]
impl Block {
    /// Serve what `queue` holds, as the worker does on a notification (for
    /// the fuzz targets, which need no thread); returns the queue as served.
    pub(crate) fn process_queue_once(&self, queue: Queue, mem: GuestMemoryMmap, interrupt: Interrupt) -> Queue {
        let mut handler = self.handler(queue, mem, interrupt);
        handler.process_queue();
        handler.queue
    }
}

/// `struct virtio_blk_config`, little endian, with the fields we offer set.
fn config_space(capacity_sectors: u64) -> Vec<u8> {
    let mut config = vec![0u8; size_of::<virtio_blk_config>()];
    let mut put = |offset: usize, bytes: &[u8]| {
        config[offset..offset + bytes.len()].copy_from_slice(bytes);
    };
    put(offset_of!(virtio_blk_config, capacity), &capacity_sectors.to_le_bytes());
    put(offset_of!(virtio_blk_config, seg_max), &SEG_MAX.to_le_bytes());
    put(offset_of!(virtio_blk_config, blk_size), &BLOCK_SIZE.to_le_bytes());
    config
}

impl VirtioDevice for Block {
    fn device_type(&self) -> u32 {
        TYPE_BLOCK
    }

    fn features(&self) -> u64 {
        let mut features = VIRTIO_F_VERSION_1 | 1 << VIRTIO_BLK_F_SEG_MAX | 1 << VIRTIO_BLK_F_BLK_SIZE;
        if self.disk.read_only {
            features |= 1 << VIRTIO_BLK_F_RO;
        }
        features
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE]
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config, offset, data);
    }

    fn activate(&mut self, ctx: ActivateContext) -> Result<(), ActivateError> {
        let count_error = ActivateError::QueueCount { expected: 1, got: ctx.queues.len() };
        if ctx.queues.len() != 1 || ctx.queue_evts.len() != 1 {
            return Err(count_error);
        }
        let Some(mut queue) = ctx.queues.into_iter().next() else {
            return Err(count_error);
        };
        // EVENT_IDX is never offered, whatever the driver acked.
        queue.set_event_idx(false);
        // A second activation without reset replaces the old handler.
        let mut handler = self.handler(queue, ctx.mem, ctx.interrupt);
        let worker = self.worker.as_mut().ok_or(ActivateError::NotStarted)?;
        worker.activate(
            ctx.queue_evts,
            Box::new(move || {
                Ok(Box::new(move |_| {
                    handler.process_queue();
                    true
                }) as WorkerHandler)
            }),
        )
    }

    fn start(&mut self, ctx: &StartContext<'_>) -> Result<(), ActivateError> {
        let filter = ctx.seccomp.thread(ThreadKind::Block)?;
        self.failures = ctx.failures.clone();
        self.worker = Some(Worker::spawn("virtio-blk", filter, ctx.failures.clone()).map_err(ActivateError::Worker)?);
        Ok(())
    }

    fn reset(&mut self) {
        // Stops serving and waits until the worker is idle.
        if let Some(w) = self.worker.as_mut() {
            w.deactivate();
        }
    }
}

/// Host-side failure executing a valid request; the guest sees IOERR and
/// the VMM a device failure.
#[derive(Debug, thiserror::Error)]
enum ExecError {
    #[error("seek in the disk image")]
    Seek(#[source] io::Error),
    #[error("transfer between the disk image and guest memory")]
    Transfer(#[source] GuestMemoryError),
}

/// The queue and what serves it, owned by the worker thread.
struct Handler {
    queue: Queue,
    interrupt: Interrupt,
    reported_broken_ring: bool,
    requests: Requests,
}

/// Guest memory and the backing file: what executes the requests.
struct Requests {
    mem: GuestMemoryMmap,
    file: Arc<File>,
    disk: DiskInfo,
    id: [u8; ID_BYTES],
    failures: DeviceFailures,
}

impl Handler {
    /// Serve every available request, then interrupt the guest once if any
    /// completed.
    fn process_queue(&mut self) {
        let max_chain = usize::from(self.queue.size());
        let requests = &self.requests;
        let served = queue::drain(&mut self.queue, &requests.mem, &self.interrupt, |chain| {
            requests.serve(request::parse(chain, max_chain, requests.disk))
        });
        if let Err(e) = served {
            // The available index is more than a ring ahead: the driver is
            // broken; nothing is served until it resets us.
            if !self.reported_broken_ring {
                eprintln!("rootlayer: virtio-blk: bad available ring: {e}");
                self.reported_broken_ring = true;
            }
        }
    }
}

impl Requests {
    /// Execute (or refuse) one parsed request; returns the used length.
    fn serve(&self, parsed: Parsed) -> u32 {
        match parsed {
            Parsed::Dropped(_) => 0,
            Parsed::Invalid { status, error } => self.complete(status, error.status(), 0),
            Parsed::Valid(req) => {
                let (status, written) = match self.execute(&req.op) {
                    Ok(written) => (STATUS_OK, written),
                    Err((e, written)) => {
                        // A host-side failure (say ENOSPC under the sparse
                        // image): the guest sees IOERR, and the VMM stops
                        // it (the module's doc); the first one is kept.
                        self.failures.report(format!(
                            "virtio-blk disk {}: {e}: {}",
                            String::from_utf8_lossy(&self.id).trim_end_matches('\0'),
                            source_text(&e)
                        ));
                        (STATUS_IOERR, written)
                    }
                };
                self.complete(req.status, status, written)
            }
        }
    }

    /// Write the status byte; the used length counts the bytes written to
    /// the guest, status included.
    fn complete(&self, addr: GuestAddress, status: u8, written: u32) -> u32 {
        match self.mem.write_obj(status, addr) {
            Ok(()) => written.saturating_add(1),
            Err(_) => 0,
        }
    }

    /// Run a checked request. Returns the bytes written into guest memory,
    /// also on failure (how far a read got).
    fn execute(&self, op: &Op) -> Result<u32, (ExecError, u32)> {
        match op {
            Op::Read { offset, data } => self.read(*offset, data),
            Op::Write { offset, data } => self.write(*offset, data).map(|()| 0).map_err(|e| (e, 0)),
            Op::Flush => Ok(0),
            Op::GetId { data } => self.get_id(data),
        }
    }

    fn read(&self, offset: u64, data: &[Segment]) -> Result<u32, (ExecError, u32)> {
        let mut file = &*self.file;
        file.seek(SeekFrom::Start(offset)).map_err(|e| (ExecError::Seek(e), 0))?;
        let mut written = 0u32;
        for seg in data {
            self.mem
                .read_exact_volatile_from(seg.addr, &mut file, len(seg))
                .map_err(|e| (ExecError::Transfer(e), written))?;
            written = written.saturating_add(seg.len);
        }
        Ok(written)
    }

    fn write(&self, offset: u64, data: &[Segment]) -> Result<(), ExecError> {
        let mut file = &*self.file;
        file.seek(SeekFrom::Start(offset)).map_err(ExecError::Seek)?;
        for seg in data {
            self.mem.write_all_volatile_to(seg.addr, &mut file, len(seg)).map_err(ExecError::Transfer)?;
        }
        Ok(())
    }

    /// The 20-byte ID, zero padded, as far as the buffers reach.
    fn get_id(&self, data: &[Segment]) -> Result<u32, (ExecError, u32)> {
        let mut done = 0usize;
        for seg in data {
            let n = len(seg).min(ID_BYTES - done);
            self.mem.write_slice(&self.id[done..done + n], seg.addr).map_err(|e| (ExecError::Transfer(e), 0))?;
            done += n;
            if done == ID_BYTES {
                break;
            }
        }
        Ok(u32::try_from(done).unwrap_or(u32::MAX))
    }
}

fn source_text(e: &ExecError) -> String {
    e.source().map_or_else(String::new, ToString::to_string)
}

/// A segment's length as usize (u32 always fits on the 64-bit hosts KVM
/// runs on; saturate rather than cast elsewhere).
fn len(seg: &Segment) -> usize {
    usize::try_from(seg.len).unwrap_or(usize::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::virtio::block::{QUEUE_SIZE, STATUS_UNSUPP};
    use std::io::Write as _;
    use std::time::{Duration, Instant};
    use tempfile::NamedTempFile;
    use virtio_bindings::virtio_blk::{VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT};
    use virtio_bindings::virtio_ring::{VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
    use virtio_queue::desc::split::Descriptor;
    use virtio_queue::desc::RawDescriptor;
    use virtio_queue::mock::MockSplitQueue;
    use vmm_sys_util::eventfd::EventFd;

    const MEM_SIZE: usize = 0x10_0000;
    const QSIZE: u16 = 16;
    /// 64 KiB disk: 128 sectors.
    const DISK_SECTORS: u64 = 128;
    const DISK_BYTES: usize = 64 * 1024;
    const OUTSIDE: u64 = 0x4000_0000;

    fn flag(f: u32) -> u16 {
        u16::try_from(f).unwrap()
    }

    /// One disk byte per offset, so every sector has distinct contents.
    fn pattern() -> Vec<u8> {
        (0..DISK_BYTES).map(|i| u8::try_from((i * 7 + i / 512) % 251).unwrap()).collect()
    }

    struct Rig {
        mem: GuestMemoryMmap,
        disk: NamedTempFile,
        block: Block,
        irq: Interrupt,
    }

    impl Rig {
        fn new(read_only: bool) -> Self {
            let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap();
            let mut disk = NamedTempFile::new().unwrap();
            disk.write_all(&pattern()).unwrap();
            disk.flush().unwrap();
            let block = Block::new(disk.path(), read_only, "rootlayer-scratch").unwrap();
            let irq = Interrupt::new(EventFd::new(libc::EFD_NONBLOCK).unwrap());
            Self { mem, disk, block, irq }
        }

        fn handler(&self, vq: &MockSplitQueue<'_, GuestMemoryMmap>) -> Handler {
            let queue: Queue = vq.create_queue().unwrap();
            self.block.handler(queue, self.mem.clone(), self.irq.clone())
        }

        fn file(&self) -> Vec<u8> {
            std::fs::read(self.disk.path()).unwrap()
        }

        fn header(&self, addr: u64, request_type: u32, sector: u64) {
            let mut h = [0u8; 16];
            h[..4].copy_from_slice(&request_type.to_le_bytes());
            h[8..].copy_from_slice(&sector.to_le_bytes());
            self.mem.write_slice(&h, GuestAddress(addr)).unwrap();
        }

        fn status(&self, addr: u64) -> u8 {
            self.mem.read_obj(GuestAddress(addr)).unwrap()
        }

        fn bytes(&self, addr: u64, len: usize) -> Vec<u8> {
            let mut v = vec![0u8; len];
            self.mem.read_slice(&mut v, GuestAddress(addr)).unwrap();
            v
        }
    }

    /// Put one chain at descriptor index `at`: `(addr, len, writable)`,
    /// linked in order, and make it available.
    fn add(vq: &MockSplitQueue<'_, GuestMemoryMmap>, at: u16, parts: &[(u64, u32, bool)]) {
        let descs: Vec<RawDescriptor> = parts
            .iter()
            .enumerate()
            .map(|(i, &(addr, len, writable))| {
                let index = at + u16::try_from(i).unwrap();
                let mut flags = if writable { flag(VRING_DESC_F_WRITE) } else { 0 };
                if i + 1 < parts.len() {
                    flags |= flag(VRING_DESC_F_NEXT);
                }
                RawDescriptor::from(Descriptor::new(addr, len, flags, index + 1))
            })
            .collect();
        vq.add_desc_chains(&descs, at).unwrap();
    }

    /// (head index, len) of used ring entry `i`.
    fn used(vq: &MockSplitQueue<'_, GuestMemoryMmap>, i: usize) -> (u32, u32) {
        let e = vq.used().ring().ref_at(i).unwrap().load();
        (e.id(), e.len())
    }

    fn used_idx(vq: &MockSplitQueue<'_, GuestMemoryMmap>) -> u16 {
        vq.used().idx().load()
    }

    const HDR: u64 = 0x1_0000;
    const DATA: u64 = 0x2_0000;
    const STATUS: u64 = 0x3_0000;
    /// Marks a status byte the device has not written.
    const UNTOUCHED: u8 = 0xee;

    /// Run one request in a fresh queue; returns the used entry.
    fn run(rig: &Rig, parts: &[(u64, u32, bool)]) -> (u32, u32) {
        let vq = MockSplitQueue::new(&rig.mem, QSIZE);
        rig.mem.write_obj(UNTOUCHED, GuestAddress(STATUS)).unwrap();
        add(&vq, 0, parts);
        rig.handler(&vq).process_queue();
        assert_eq!(used_idx(&vq), 1, "the chain is returned to the guest");
        used(&vq, 0)
    }

    #[test]
    fn new_sizes_the_disk_in_whole_sectors_and_checks_the_id() {
        let mut f = NamedTempFile::new().unwrap();
        f.as_file().set_len(DISK_SECTORS * SECTOR_SIZE + 100).unwrap();
        f.flush().unwrap();
        let b = Block::new(f.path(), false, "x").unwrap();
        assert_eq!(b.capacity_sectors(), DISK_SECTORS);
        assert!(matches!(Block::new(f.path(), false, "123456789012345678901"), Err(BlockError::IdTooLong(_))));
        assert!(Block::new(f.path(), false, "12345678901234567890").is_ok());
        assert!(matches!(Block::new(Path::new("/nonexistent/disk.img"), false, "x"), Err(BlockError::Open { .. })));
    }

    #[test]
    fn offers_seg_max_and_read_only_no_flush_and_lays_out_the_config() {
        let rig = Rig::new(false);
        let f = rig.block.features();
        assert_ne!(f & VIRTIO_F_VERSION_1, 0);
        assert_eq!(f & (1 << virtio_bindings::virtio_blk::VIRTIO_BLK_F_FLUSH), 0, "no volatile write cache");
        assert_ne!(f & (1 << VIRTIO_BLK_F_SEG_MAX), 0);
        assert_eq!(f & (1 << VIRTIO_BLK_F_RO), 0);
        assert_ne!(Rig::new(true).block.features() & (1 << VIRTIO_BLK_F_RO), 0);
        assert_eq!(rig.block.device_type(), TYPE_BLOCK);
        assert_eq!(rig.block.queue_max_sizes(), &[QUEUE_SIZE]);

        // virtio 1.2, 5.2.4: le64 capacity at 0, le32 seg_max at 12,
        // le32 blk_size at 20.
        let mut cap = [0u8; 8];
        rig.block.read_config(0, &mut cap);
        assert_eq!(u64::from_le_bytes(cap), DISK_SECTORS);
        let mut word = [0u8; 4];
        rig.block.read_config(12, &mut word);
        assert_eq!(u32::from_le_bytes(word), u32::from(QUEUE_SIZE) - 2);
        rig.block.read_config(20, &mut word);
        assert_eq!(u32::from_le_bytes(word), 512);
        // A read past the end leaves the caller's zeros.
        let mut past = [0u8; 4];
        rig.block.read_config(4096, &mut past);
        assert_eq!(past, [0; 4]);
    }

    #[test]
    fn read_copies_sectors_from_the_file_into_guest_memory() {
        let rig = Rig::new(false);
        rig.header(HDR, VIRTIO_BLK_T_IN, 3);
        // Two data buffers, the second one across a page boundary.
        let (id, len) =
            run(&rig, &[(HDR, 16, false), (DATA, 512, true), (DATA + 0x1e00, 1024, true), (STATUS, 1, true)]);
        assert_eq!((id, len), (0, 512 + 1024 + 1));
        assert_eq!(rig.status(STATUS), STATUS_OK);
        let disk = pattern();
        assert_eq!(rig.bytes(DATA, 512), disk[3 * 512..4 * 512]);
        assert_eq!(rig.bytes(DATA + 0x1e00, 1024), disk[4 * 512..6 * 512]);
        assert_eq!(rig.file(), disk);
    }

    #[test]
    fn write_stores_guest_memory_in_the_file_at_the_sector() {
        let rig = Rig::new(false);
        let payload: Vec<u8> = (0..1536u32).map(|i| u8::try_from(i % 13).unwrap() + 1).collect();
        rig.mem.write_slice(&payload[..1024], GuestAddress(DATA)).unwrap();
        rig.mem.write_slice(&payload[1024..], GuestAddress(DATA + 0x8000)).unwrap();
        rig.header(HDR, VIRTIO_BLK_T_OUT, DISK_SECTORS - 3);
        let (_, len) =
            run(&rig, &[(HDR, 16, false), (DATA, 1024, false), (DATA + 0x8000, 512, false), (STATUS, 1, true)]);
        assert_eq!(len, 1, "a write only writes the status byte to the guest");
        assert_eq!(rig.status(STATUS), STATUS_OK);
        let mut expected = pattern();
        expected[DISK_BYTES - 1536..].copy_from_slice(&payload);
        assert_eq!(rig.file(), expected);
    }

    #[test]
    fn a_flush_sent_anyway_succeeds_and_get_id_returns_the_zero_padded_serial() {
        let rig = Rig::new(false);
        rig.header(HDR, VIRTIO_BLK_T_FLUSH, 0);
        let (_, len) = run(&rig, &[(HDR, 16, false), (STATUS, 1, true)]);
        assert_eq!((len, rig.status(STATUS)), (1, STATUS_OK));

        rig.mem.write_slice(&[0xffu8; 32], GuestAddress(DATA)).unwrap();
        rig.header(HDR, VIRTIO_BLK_T_GET_ID, 0);
        let (_, len) = run(&rig, &[(HDR, 16, false), (DATA, 20, true), (STATUS, 1, true)]);
        assert_eq!((len, rig.status(STATUS)), (21, STATUS_OK));
        let mut id = b"rootlayer-scratch".to_vec();
        id.resize(20, 0);
        assert_eq!(rig.bytes(DATA, 20), id);
        assert_eq!(rig.bytes(DATA + 20, 12), [0xff; 12], "nothing past 20 bytes");

        // Split across two buffers, with more room than needed.
        rig.mem.write_slice(&[0xffu8; 64], GuestAddress(DATA)).unwrap();
        let (_, len) = run(&rig, &[(HDR, 16, false), (DATA, 8, true), (DATA + 32, 32, true), (STATUS, 1, true)]);
        assert_eq!((len, rig.status(STATUS)), (21, STATUS_OK));
        assert_eq!(rig.bytes(DATA, 8), id[..8]);
        assert_eq!(rig.bytes(DATA + 32, 12), id[8..]);
        assert_eq!(rig.bytes(DATA + 44, 20), [0xff; 20]);
        assert_eq!(rig.file(), pattern());
    }

    /// A refused request: IOERR (or `status`) in the status byte, used
    /// length 1, guest buffers and the file untouched.
    fn assert_refused(rig: &Rig, parts: &[(u64, u32, bool)], status: u8) {
        rig.mem.write_slice(&[0x5au8; 2048], GuestAddress(DATA)).unwrap();
        let (_, len) = run(rig, parts);
        assert_eq!(rig.status(STATUS), status, "status for {parts:x?}");
        assert_eq!(len, 1);
        assert_eq!(rig.bytes(DATA, 2048), [0x5a; 2048]);
        assert_eq!(rig.file(), pattern());
    }

    #[test]
    fn descriptors_outside_guest_memory_get_ioerr() {
        let rig = Rig::new(false);
        rig.header(HDR, VIRTIO_BLK_T_OUT, 0);
        assert_refused(&rig, &[(HDR, 16, false), (OUTSIDE, 512, false), (STATUS, 1, true)], STATUS_IOERR);
        // Starts inside, runs past the end of guest memory.
        let end = u64::try_from(MEM_SIZE).unwrap();
        assert_refused(&rig, &[(HDR, 16, false), (end - 512, 1024, false), (STATUS, 1, true)], STATUS_IOERR);
        rig.header(HDR, VIRTIO_BLK_T_IN, 0);
        assert_refused(
            &rig,
            &[(HDR, 16, false), (DATA, 512, true), (u64::MAX - 255, 512, true), (STATUS, 1, true)],
            STATUS_IOERR,
        );
        assert_refused(&rig, &[(OUTSIDE, 16, false), (DATA, 512, true), (STATUS, 1, true)], STATUS_IOERR);
    }

    #[test]
    fn status_outside_guest_memory_drops_the_chain() {
        let rig = Rig::new(false);
        rig.header(HDR, VIRTIO_BLK_T_OUT, 0);
        let (id, len) = run(&rig, &[(HDR, 16, false), (DATA, 512, false), (OUTSIDE, 1, true)]);
        assert_eq!((id, len), (0, 0));
        assert_eq!(rig.file(), pattern(), "nothing is executed");
    }

    #[test]
    fn sector_overflow_and_requests_past_the_end_get_ioerr() {
        let rig = Rig::new(false);
        for (sector, len) in [
            (u64::MAX, 512),
            (u64::MAX / SECTOR_SIZE, 512),
            (u64::MAX / SECTOR_SIZE - 1, 1024),
            (DISK_SECTORS, 512),
            (DISK_SECTORS - 1, 1024),
        ] {
            rig.header(HDR, VIRTIO_BLK_T_OUT, sector);
            assert_refused(&rig, &[(HDR, 16, false), (DATA, len, false), (STATUS, 1, true)], STATUS_IOERR);
            rig.header(HDR, VIRTIO_BLK_T_IN, sector);
            assert_refused(&rig, &[(HDR, 16, false), (DATA, len, true), (STATUS, 1, true)], STATUS_IOERR);
        }
        // A partial sector.
        rig.header(HDR, VIRTIO_BLK_T_OUT, 0);
        assert_refused(&rig, &[(HDR, 16, false), (DATA, 100, false), (STATUS, 1, true)], STATUS_IOERR);
    }

    #[test]
    fn a_looping_chain_is_dropped_without_io() {
        let rig = Rig::new(false);
        rig.header(HDR, VIRTIO_BLK_T_OUT, 0);
        let next = flag(VRING_DESC_F_NEXT);
        let write = flag(VRING_DESC_F_WRITE);
        // 0 -> 1 -> 2 -> 1 -> 2 ..., and 0 -> 1 -> 2 -> 2 -> 2 ...: the
        // iterator gives up after the queue size, on a writable status
        // descriptor in the second case.
        for back in [1, 2] {
            rig.mem.write_obj(UNTOUCHED, GuestAddress(STATUS)).unwrap();
            let vq = MockSplitQueue::new(&rig.mem, QSIZE);
            let descs = [
                Descriptor::new(HDR, 16, next, 1),
                Descriptor::new(DATA, 512, next, 2),
                Descriptor::new(STATUS, 1, next | write, back),
            ]
            .map(RawDescriptor::from);
            vq.add_desc_chains(&descs, 0).unwrap();
            rig.handler(&vq).process_queue();
            assert_eq!(used_idx(&vq), 1);
            assert_eq!(used(&vq, 0), (0, 0));
            assert_eq!(rig.status(STATUS), UNTOUCHED);
            assert_eq!(rig.file(), pattern());
        }
    }

    #[test]
    fn a_next_index_past_the_table_drops_the_chain() {
        let rig = Rig::new(false);
        let vq = MockSplitQueue::new(&rig.mem, QSIZE);
        rig.header(HDR, VIRTIO_BLK_T_FLUSH, 0);
        let descs = [Descriptor::new(HDR, 16, flag(VRING_DESC_F_NEXT), QSIZE)].map(RawDescriptor::from);
        vq.add_desc_chains(&descs, 0).unwrap();
        rig.handler(&vq).process_queue();
        assert_eq!(used(&vq, 0), (0, 0));
    }

    #[test]
    fn a_head_index_past_the_table_is_skipped() {
        let rig = Rig::new(false);
        let vq = MockSplitQueue::new(&rig.mem, QSIZE);
        rig.header(HDR, VIRTIO_BLK_T_FLUSH, 0);
        add(&vq, 0, &[(HDR, 16, false), (STATUS, 1, true)]);
        add(&vq, 2, &[(HDR, 16, false), (STATUS, 1, true)]);
        // The first available entry names descriptor 99 of 16.
        vq.avail().ring().ref_at(0).unwrap().store(99);
        rig.handler(&vq).process_queue();
        assert_eq!(used_idx(&vq), 1, "no used slot for a head that does not exist");
        assert_eq!(used(&vq, 0), (2, 1));
        assert_eq!(rig.status(STATUS), STATUS_OK);
    }

    #[test]
    fn a_chain_longer_than_the_queue_is_dropped() {
        // Through an indirect table, the iterator would follow up to 65535
        // descriptors; the device stops at the queue size.
        let rig = Rig::new(false);
        let vq = MockSplitQueue::new(&rig.mem, QSIZE);
        rig.header(HDR, VIRTIO_BLK_T_OUT, 0);
        rig.mem.write_obj(UNTOUCHED, GuestAddress(STATUS)).unwrap();
        let table = 0x5_0000u64;
        let write_data = |n: u16| {
            let mut descs = vec![Descriptor::new(HDR, 16, flag(VRING_DESC_F_NEXT), 1)];
            for i in 1..n - 1 {
                let addr = DATA + u64::from(i) * 512;
                descs.push(Descriptor::new(addr, 512, flag(VRING_DESC_F_NEXT), i + 1));
            }
            descs.push(Descriptor::new(STATUS, 1, flag(VRING_DESC_F_WRITE), 0));
            descs
        };
        let descs = write_data(QSIZE + 1);
        for (i, d) in descs.iter().enumerate() {
            let addr = table + 16 * u64::try_from(i).unwrap();
            rig.mem.write_obj(RawDescriptor::from(*d), GuestAddress(addr)).unwrap();
        }
        let len = u32::try_from(16 * descs.len()).unwrap();
        let head = Descriptor::new(table, len, flag(VRING_DESC_F_INDIRECT), 0);
        vq.add_desc_chains(&[RawDescriptor::from(head)], 0).unwrap();
        rig.handler(&vq).process_queue();
        assert_eq!(used(&vq, 0), (0, 0));
        assert_eq!(rig.status(STATUS), UNTOUCHED);
        assert_eq!(rig.file(), pattern());

        // The same request with exactly queue-size descriptors is served.
        let vq = MockSplitQueue::new(&rig.mem, QSIZE);
        let descs = write_data(QSIZE);
        for (i, d) in descs.iter().enumerate() {
            let addr = table + 16 * u64::try_from(i).unwrap();
            rig.mem.write_obj(RawDescriptor::from(*d), GuestAddress(addr)).unwrap();
        }
        let len = u32::try_from(16 * descs.len()).unwrap();
        let head = Descriptor::new(table, len, flag(VRING_DESC_F_INDIRECT), 0);
        vq.add_desc_chains(&[RawDescriptor::from(head)], 0).unwrap();
        rig.handler(&vq).process_queue();
        assert_eq!(used(&vq, 0), (0, 1));
        assert_eq!(rig.status(STATUS), STATUS_OK);
        assert_ne!(rig.file(), pattern());
    }

    #[test]
    fn a_request_the_host_fails_gets_ioerr_and_is_a_device_failure() {
        let mut rig = Rig::new(false);
        // The image's file as a host that cannot write it (a full file
        // system answers ENOSPC; this descriptor EBADF): the same path.
        rig.block.file = Arc::new(File::open(rig.disk.path()).unwrap());
        rig.mem.write_slice(&[0x11u8; 512], GuestAddress(DATA)).unwrap();
        rig.header(HDR, VIRTIO_BLK_T_OUT, 0);
        let (_, len) = run(&rig, &[(HDR, 16, false), (DATA, 512, false), (STATUS, 1, true)]);
        assert_eq!((len, rig.status(STATUS)), (1, STATUS_IOERR));
        assert_eq!(rig.file(), pattern());
        let what = rig.block.failures.first().expect("a device failure");
        assert!(what.starts_with("virtio-blk disk rootlayer-scratch: transfer between"), "{what}");
        assert!(what.contains("Bad file descriptor"), "{what}");

        // A read the host fails (past the end of a file cut short under
        // the device) is one too.
        let rig = Rig::new(true);
        rig.disk.as_file().set_len(512).unwrap();
        rig.header(HDR, VIRTIO_BLK_T_IN, 1);
        let (_, len) = run(&rig, &[(HDR, 16, false), (DATA, 512, true), (STATUS, 1, true)]);
        assert_eq!((len, rig.status(STATUS)), (1, STATUS_IOERR));
        let what = rig.block.failures.first().expect("a device failure");
        assert!(what.starts_with("virtio-blk disk rootlayer-scratch: transfer between"), "{what}");
    }

    #[test]
    fn writes_to_a_read_only_disk_get_ioerr_and_reads_work() {
        let rig = Rig::new(true);
        rig.mem.write_slice(&[0x11u8; 512], GuestAddress(DATA)).unwrap();
        rig.header(HDR, VIRTIO_BLK_T_OUT, 0);
        let (_, len) = run(&rig, &[(HDR, 16, false), (DATA, 512, false), (STATUS, 1, true)]);
        assert_eq!((len, rig.status(STATUS)), (1, STATUS_IOERR));
        assert_eq!(rig.file(), pattern());
        // The guest's mistake, refused: not a failure of the device.
        assert_eq!(rig.block.failures.first(), None);

        rig.header(HDR, VIRTIO_BLK_T_IN, 1);
        let (_, len) = run(&rig, &[(HDR, 16, false), (DATA, 512, true), (STATUS, 1, true)]);
        assert_eq!((len, rig.status(STATUS)), (513, STATUS_OK));
        assert_eq!(rig.bytes(DATA, 512), pattern()[512..1024]);

        // Flushing a read-only disk is harmless and allowed.
        rig.header(HDR, VIRTIO_BLK_T_FLUSH, 0);
        let (_, len) = run(&rig, &[(HDR, 16, false), (STATUS, 1, true)]);
        assert_eq!((len, rig.status(STATUS)), (1, STATUS_OK));
    }

    #[test]
    fn a_status_descriptor_that_is_not_writable_drops_the_request() {
        let rig = Rig::new(false);
        rig.mem.write_slice(&[0x22u8; 512], GuestAddress(DATA)).unwrap();
        rig.header(HDR, VIRTIO_BLK_T_OUT, 0);
        let (id, len) = run(&rig, &[(HDR, 16, false), (DATA, 512, false), (STATUS, 1, false)]);
        assert_eq!((id, len), (0, 0));
        assert_eq!(rig.status(STATUS), UNTOUCHED);
        assert_eq!(rig.file(), pattern(), "the write is not executed");

        rig.header(HDR, VIRTIO_BLK_T_IN, 0);
        rig.mem.write_slice(&[0x22u8; 512], GuestAddress(DATA)).unwrap();
        let (_, len) = run(&rig, &[(HDR, 16, false), (DATA, 512, true), (STATUS, 0, true)]);
        assert_eq!(len, 0);
        assert_eq!(rig.bytes(DATA, 512), [0x22; 512], "the read is not executed");
    }

    #[test]
    fn data_descriptors_in_the_wrong_direction_get_ioerr() {
        let rig = Rig::new(false);
        // A write whose data the device would have to write.
        rig.header(HDR, VIRTIO_BLK_T_OUT, 0);
        assert_refused(&rig, &[(HDR, 16, false), (DATA, 512, true), (STATUS, 1, true)], STATUS_IOERR);
        // A read into a buffer the device may only read, after a good one.
        rig.header(HDR, VIRTIO_BLK_T_IN, 0);
        assert_refused(
            &rig,
            &[(HDR, 16, false), (DATA, 512, true), (DATA + 512, 512, false), (STATUS, 1, true)],
            STATUS_IOERR,
        );
        rig.header(HDR, VIRTIO_BLK_T_GET_ID, 0);
        assert_refused(&rig, &[(HDR, 16, false), (DATA, 20, false), (STATUS, 1, true)], STATUS_IOERR);
        // A writable header.
        rig.header(HDR, VIRTIO_BLK_T_IN, 0);
        assert_refused(&rig, &[(HDR, 16, true), (DATA, 512, true), (STATUS, 1, true)], STATUS_IOERR);
    }

    #[test]
    fn a_short_header_gets_ioerr() {
        let rig = Rig::new(false);
        rig.header(HDR, VIRTIO_BLK_T_OUT, 0);
        assert_refused(&rig, &[(HDR, 15, false), (DATA, 512, false), (STATUS, 1, true)], STATUS_IOERR);
        assert_refused(&rig, &[(STATUS, 1, true)], STATUS_IOERR);
    }

    #[test]
    fn unknown_request_types_get_unsupp() {
        let rig = Rig::new(false);
        // SCSI_CMD, DISCARD, WRITE_ZEROES, and junk.
        for t in [2, 11, 13, 0xdead_beef] {
            rig.header(HDR, t, 0);
            assert_refused(&rig, &[(HDR, 16, false), (DATA, 512, false), (STATUS, 1, true)], STATUS_UNSUPP);
        }
    }

    #[test]
    fn a_bad_request_does_not_stop_the_next_good_one() {
        let rig = Rig::new(false);
        let vq = MockSplitQueue::new(&rig.mem, QSIZE);
        let mut handler = rig.handler(&vq);
        let (hdr2, status2) = (HDR + 0x100, STATUS + 0x100);
        rig.header(HDR, VIRTIO_BLK_T_OUT, 0);
        rig.header(hdr2, VIRTIO_BLK_T_IN, 2);
        for s in [STATUS, status2] {
            rig.mem.write_obj(UNTOUCHED, GuestAddress(s)).unwrap();
        }
        // In one batch: an out-of-memory write, an unwritable status, a read.
        add(&vq, 0, &[(HDR, 16, false), (OUTSIDE, 512, false), (STATUS, 1, true)]);
        add(&vq, 3, &[(HDR, 16, false), (DATA, 512, false), (STATUS + 8, 1, false)]);
        add(&vq, 6, &[(hdr2, 16, false), (DATA, 512, true), (status2, 1, true)]);
        handler.process_queue();
        assert_eq!(used_idx(&vq), 3);
        assert_eq!(used(&vq, 0), (0, 1));
        assert_eq!(used(&vq, 1), (3, 0));
        assert_eq!(used(&vq, 2), (6, 513));
        assert_eq!(rig.status(STATUS), STATUS_IOERR);
        assert_eq!(rig.status(status2), STATUS_OK);
        assert_eq!(rig.bytes(DATA, 512), pattern()[1024..1536]);
        assert_eq!(rig.irq.eventfd().read().unwrap(), 1, "one interrupt per batch");

        // And in a later batch on the same queue: a good write.
        rig.header(HDR, VIRTIO_BLK_T_OUT, 5);
        rig.mem.write_slice(&[0x77u8; 512], GuestAddress(DATA)).unwrap();
        add(&vq, 9, &[(HDR, 16, false), (DATA, 512, false), (STATUS, 1, true)]);
        handler.process_queue();
        assert_eq!(used_idx(&vq), 4);
        assert_eq!(used(&vq, 3), (9, 1));
        assert_eq!(rig.status(STATUS), STATUS_OK);
        assert_eq!(rig.file()[5 * 512..6 * 512], [0x77; 512]);
    }

    #[test]
    fn an_available_index_beyond_the_ring_serves_nothing_and_does_not_hang() {
        let rig = Rig::new(false);
        let vq = MockSplitQueue::new(&rig.mem, QSIZE);
        rig.header(HDR, VIRTIO_BLK_T_FLUSH, 0);
        add(&vq, 0, &[(HDR, 16, false), (STATUS, 1, true)]);
        vq.avail().idx().store(QSIZE + 5);
        rig.handler(&vq).process_queue();
        assert_eq!(used_idx(&vq), 0);
        assert!(rig.irq.eventfd().read().is_err(), "no interrupt");
    }

    fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
        let start = Instant::now();
        while !f() {
            assert!(start.elapsed() < Duration::from_secs(5), "timed out: {what}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn activate_serves_the_queue_on_notification_and_reset_stops_it() {
        let mut rig = Rig::new(false);
        let vq = MockSplitQueue::new(&rig.mem, QSIZE);
        let kick = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let ctx = ActivateContext {
            mem: rig.mem.clone(),
            interrupt: rig.irq.clone(),
            queues: vec![vq.create_queue().unwrap()],
            queue_evts: vec![kick.try_clone().unwrap()],
            acked_features: rig.block.features(),
        };
        rig.block.start(&crate::devices::virtio::StartContext::unwatched(&crate::seccomp::Policy::disabled())).unwrap();
        rig.block.activate(ctx).unwrap();

        rig.header(HDR, VIRTIO_BLK_T_IN, 4);
        add(&vq, 0, &[(HDR, 16, false), (DATA, 512, true), (STATUS, 1, true)]);
        kick.write(1).unwrap();
        wait_for("the request is served", || used_idx(&vq) == 1);
        assert_eq!(used(&vq, 0), (0, 513));
        assert_eq!(rig.bytes(DATA, 512), pattern()[2048..2560]);
        wait_for("the guest is interrupted", || rig.irq.eventfd().read().is_ok());
        assert_ne!(rig.irq.status() & crate::devices::virtio::INT_USED_RING, 0);

        rig.block.reset();
        add(&vq, 3, &[(HDR, 16, false), (DATA, 512, true), (STATUS, 1, true)]);
        kick.write(1).unwrap();
        std::thread::sleep(Duration::from_millis(100));
        assert_eq!(used_idx(&vq), 1, "nothing is served after reset");
    }

    #[test]
    fn activate_wants_exactly_one_queue() {
        let mut rig = Rig::new(false);
        let ctx = ActivateContext {
            mem: rig.mem.clone(),
            interrupt: rig.irq.clone(),
            queues: Vec::new(),
            queue_evts: Vec::new(),
            acked_features: VIRTIO_F_VERSION_1,
        };
        assert!(matches!(rig.block.activate(ctx), Err(ActivateError::QueueCount { expected: 1, got: 0 })));
    }
}
