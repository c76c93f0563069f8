//! `blk`: virtqueue descriptor chains and virtio-blk requests, as a guest
//! lays them out in its memory.
//!
//! Input: `size: u8` (queue size `1 << (size % 9)`), `flags: u8` (bit 0: a
//! read-only disk), then the first bytes of guest memory. The descriptor
//! table is at 0, the available ring at 0x1000 and the used ring at 0x2000,
//! so the input chooses every descriptor (address, length, flags, next,
//! indirect tables), the available ring and the request headers and data.
//! The device serves the queue once, against a 16-sector disk file.
//!
//! Invariants: no panic; the disk file keeps its size (no write past the
//! capacity); no chain is returned that was not taken from the available
//! ring, and when every chain taken was returned, the used index in memory
//! says so; a read-only disk is never written.
//!
//! The disk is zeroed before each input, so that an input replays alone as
//! it ran under the fuzzer. The rings are counted from the queue, not from
//! guest memory alone: a read request may land on the rings themselves (the
//! guest DMAs into its own available ring and so makes more chains
//! available, which the device then rightly serves).

use super::{take, take_u8};
use crate::devices::virtio::block::Block;
use crate::devices::virtio::Interrupt;
use std::sync::OnceLock;
use tempfile::NamedTempFile;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

const MEM_SIZE: usize = 0x1_0000;
pub(super) const DESC_TABLE: u32 = 0;
pub(super) const AVAIL_RING: u32 = 0x1000;
pub(super) const USED_RING: u32 = 0x2000;
const DISK_BYTES: usize = 16 * 512;

fn disk() -> &'static NamedTempFile {
    static DISK: OnceLock<NamedTempFile> = OnceLock::new();
    DISK.get_or_init(|| {
        let f = NamedTempFile::new().expect("temporary disk");
        f.as_file().set_len(DISK_BYTES as u64).expect("size the disk");
        f
    })
}

/// A queue of `size` at the fixed ring addresses, as a driver sets it up.
pub(super) fn queue(size: u16, mem: &GuestMemoryMmap) -> Option<Queue> {
    let mut q = Queue::new(256).ok()?;
    q.set_size(size);
    q.set_desc_table_address(Some(DESC_TABLE), Some(0));
    q.set_avail_ring_address(Some(AVAIL_RING), Some(0));
    q.set_used_ring_address(Some(USED_RING), Some(0));
    q.set_ready(true);
    q.is_valid(mem).then_some(q)
}

pub fn blk(data: &[u8]) {
    run(data);
}

/// The target; returns guest memory as the device left it.
fn run(mut data: &[u8]) -> Option<GuestMemoryMmap> {
    let (Some(size), Some(flags)) = (take_u8(&mut data), take_u8(&mut data)) else {
        return None;
    };
    let size = 1u16 << (size % 9);
    let read_only = flags & 1 == 1;
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).expect("guest memory");
    mem.write_slice(take(&mut data, MEM_SIZE), GuestAddress(0)).expect("fill guest memory");
    let Some(queue) = queue(size, &mem) else {
        panic!("queue of size {size} at fixed addresses is invalid");
    };
    // The used ring is the device's: count from zero.
    mem.write_obj(0u16, GuestAddress(u64::from(USED_RING) + 2)).expect("used idx");

    let path = disk().path();
    std::fs::write(path, [0u8; DISK_BYTES]).expect("zero the disk");
    let block = Block::new(path, read_only, "fuzz").expect("block device");
    let irq = Interrupt::new(EventFd::new(libc::EFD_NONBLOCK).expect("eventfd"));
    let queue = block.process_queue_once(queue, mem.clone(), irq);

    let disk = std::fs::read(path).expect("read the disk");
    assert_eq!(disk.len(), DISK_BYTES, "the disk changed size");
    if read_only {
        assert!(disk.iter().all(|b| *b == 0), "a read-only disk was written");
    }
    // Both counts start at 0 and a queue serves at most a ring (<= 256) per
    // pass, so neither wraps unless the guest loops the device 256 times.
    let (taken, returned) = (queue.next_avail(), queue.next_used());
    assert!(returned <= taken, "{returned} chains returned, {taken} taken");
    if returned == taken && returned > 0 {
        // add_used wrote the index last (after the chain's own DMA).
        let used: u16 = mem.read_obj(GuestAddress(u64::from(USED_RING) + 2)).expect("used idx");
        assert_eq!(used, returned, "the used index in memory");
    }
    Some(mem)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The harness reaches the device: the read seed completes with
    /// status OK, the past-the-end one with IOERR, a loop is dropped.
    #[test]
    fn seeds_complete_as_a_driver_expects() {
        let seeds = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus-seeds/blk");
        let status = |name: &str| {
            let mem = run(&std::fs::read(seeds.join(name)).unwrap()).unwrap();
            let used: u16 = mem.read_obj(GuestAddress(u64::from(USED_RING) + 2)).unwrap();
            (used, mem.read_obj::<u8>(GuestAddress(0x800)).unwrap())
        };
        assert_eq!(status("read-sector-3"), (1, 0));
        assert_eq!(status("indirect-read"), (1, 0));
        assert_eq!(status("read-then-write"), (2, 0));
        assert_eq!(status("past-the-end"), (1, 1));
        assert_eq!(status("unsupported-type"), (1, 2));
    }
}
