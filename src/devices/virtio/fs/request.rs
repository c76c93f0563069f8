//! Checking a request's descriptor chain before the FUSE server sees it
//! (virtio spec 5.11.6, "Device Operation": a request is the device-readable
//! `fuse_in_header` plus its arguments, followed by device-writable space for
//! the `fuse_out_header` and the reply).
//!
//! Every descriptor must lie inside one guest memory region, readable ones
//! must come before writable ones (2.7.4.2), and the header's `len` must equal
//! the readable bytes. The server re-reads the header from guest memory; these
//! checks keep a well-behaved server path for well-formed requests and turn
//! the rest into an error reply or a dropped chain.

use fuse_backend_rs::abi::fuse_abi::{InHeader, Opcode, OutHeader};
use std::mem::size_of;
use virtio_queue::DescriptorChain;
use vm_memory::{ByteValued, Bytes, GuestMemory, GuestMemoryMmap};

/// What the chain carries, once checked.
#[derive(Debug, Clone, Copy)]
pub struct Request {
    pub header: InHeader,
    pub writable: usize,
}

/// Why a chain was refused. `Shape` problems leave no safe place for a
/// reply: the chain is returned unanswered. `Header` problems get an EINVAL
/// reply when there is room for one.
#[derive(Debug, thiserror::Error, PartialEq, Eq, Clone, Copy)]
pub enum RequestError {
    #[error("descriptor at {addr:#x} of {len} bytes is outside guest memory")]
    OutsideMemory { addr: u64, len: u32 },
    #[error("device-readable descriptor after a device-writable one")]
    ReadableAfterWritable,
    #[error("request of {0} readable bytes is shorter than a FUSE header")]
    ShortHeader(usize),
    #[error("FUSE header declares {declared} bytes, the buffers hold {actual}")]
    LengthMismatch { declared: u32, actual: usize, unique: u64 },
}

impl RequestError {
    /// The request's `unique` if the chain is sound enough to carry an
    /// error reply.
    pub fn reply_to(&self) -> Option<u64> {
        match self {
            Self::LengthMismatch { unique, .. } => Some(*unique),
            _ => None,
        }
    }
}

/// Opcodes the guest expects no reply to (the server answers nothing).
pub fn expects_reply(opcode: u32) -> bool {
    ![Opcode::Forget as u32, Opcode::BatchForget as u32, Opcode::Interrupt as u32].contains(&opcode)
}

/// Size of a bare error reply.
pub const OUT_HEADER_LEN: usize = size_of::<OutHeader>();
/// The same, as the `len` of an `OutHeader` and of a used ring entry.
pub const OUT_HEADER_LEN_U32: u32 = 16;
const _: () = assert!(OUT_HEADER_LEN == OUT_HEADER_LEN_U32 as usize);

/// Check `chain` against `mem` and read its FUSE header.
pub fn parse(mem: &GuestMemoryMmap, chain: DescriptorChain<&GuestMemoryMmap>) -> Result<Request, RequestError> {
    let mut readable = 0usize;
    let mut writable = 0usize;
    let mut header = InHeader::default();
    let header_len = size_of::<InHeader>();
    for desc in chain {
        let len = desc.len();
        let outside = RequestError::OutsideMemory { addr: desc.addr().0, len };
        // A u32 always fits usize on the 64-bit hosts KVM runs on.
        let ulen = len as usize;
        // get_slice fails unless [addr, addr + len) lies in one region.
        if mem.get_slice(desc.addr(), ulen).is_err() {
            return Err(outside);
        }
        if desc.is_write_only() {
            writable = writable.saturating_add(ulen);
            continue;
        }
        if writable > 0 {
            return Err(RequestError::ReadableAfterWritable);
        }
        // Copy what is still missing of the header from this buffer.
        if readable < header_len {
            let n = ulen.min(header_len - readable);
            mem.read_slice(&mut header.as_mut_slice()[readable..readable + n], desc.addr()).map_err(|_| outside)?;
        }
        readable = readable.saturating_add(ulen);
    }
    if readable < header_len {
        return Err(RequestError::ShortHeader(readable));
    }
    if usize::try_from(header.len).ok() != Some(readable) {
        return Err(RequestError::LengthMismatch { declared: header.len, actual: readable, unique: header.unique });
    }
    Ok(Request { header, writable })
}
