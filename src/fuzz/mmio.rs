//! `mmio`: the guest's register accesses to a virtio-mmio window.
//!
//! Input: a sequence of accesses, each `op: u8` (bit 0: write; bits 2-3:
//! width 1, 2, 4 or 8 bytes), `offset: u16` (LE, within the 4 KiB window,
//! registers and config space) and, for writes, `value: u32` (LE,
//! repeated for 8-byte writes), against the transport of a real virtio-blk
//! device on a small disk file (so a well-ordered sequence activates it,
//! starting its worker, and resets it again).
//!
//! Invariants: no access panics; the identification registers never
//! change; a read of a width other than 4 outside the config space
//! leaves the buffer as it was; the disk file is never written to.

use super::{take_u16, take_u32, take_u8};
use crate::devices::virtio::block::Block;
use crate::devices::virtio::{Interrupt, MmioTransport, VirtioDevice, TYPE_BLOCK};
use crate::devices::BusDevice;
use std::sync::OnceLock;
use tempfile::NamedTempFile;
use vm_memory::{GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

const MEM_SIZE: usize = 0x1_0000;
const DISK_BYTES: usize = 8 * 512;
const WINDOW: u16 = 0x1000;

fn disk() -> &'static NamedTempFile {
    static DISK: OnceLock<NamedTempFile> = OnceLock::new();
    DISK.get_or_init(|| {
        let f = NamedTempFile::new().expect("temporary disk");
        std::fs::write(f.path(), vec![0x5a; DISK_BYTES]).expect("write the disk");
        f
    })
}

fn read_u32(t: &mut MmioTransport, offset: u64) -> u32 {
    let mut d = [0u8; 4];
    t.read(offset, &mut d);
    u32::from_le_bytes(d)
}

pub fn mmio(mut data: &[u8]) {
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).expect("guest memory");
    let mut block = Block::new(disk().path(), false, "fuzz").expect("block device");
    // As the VMM does before the guest runs: the worker waits for activation.
    block
        .start(&crate::devices::virtio::StartContext::unwatched(&crate::seccomp::Policy::disabled()))
        .expect("block worker");
    let irq = Interrupt::new(EventFd::new(libc::EFD_NONBLOCK).expect("eventfd"));
    let mut t = MmioTransport::new(Box::new(block), mem, irq).expect("transport");
    let mut ops = 0;
    while let Some(op) = take_u8(&mut data) {
        let Some(offset) = take_u16(&mut data) else { break };
        let offset = u64::from(offset % WINDOW);
        let width = [1usize, 2, 4, 8][usize::from(op >> 2 & 3)];
        if op & 1 == 1 {
            let Some(value) = take_u32(&mut data) else { break };
            let bytes = [value.to_le_bytes(), value.to_le_bytes()].concat();
            t.write(offset, &bytes[..width]);
        } else {
            let mut buf = vec![0xa5u8; width];
            t.read(offset, &mut buf);
            if offset < 0x100 && width != 4 {
                assert!(buf.iter().all(|&b| b == 0xa5), "{width}-byte read at {offset:#x} gave {buf:?}");
            }
        }
        assert_eq!(read_u32(&mut t, 0x00), 0x7472_6976, "magic value");
        assert_eq!(read_u32(&mut t, 0x04), 2, "version");
        assert_eq!(read_u32(&mut t, 0x08), TYPE_BLOCK, "device id");
        ops += 1;
        if ops == 1000 {
            break;
        }
    }
    drop(t);
    let disk = std::fs::read(disk().path()).expect("read the disk");
    assert!(disk.len() == DISK_BYTES && disk.iter().all(|&b| b == 0x5a), "the disk changed");
}
