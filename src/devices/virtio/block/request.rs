//! One virtio-blk request out of one descriptor chain (virtio 1.2, 5.2.6
//! "Device Operation"), checked and typed, with no I/O.
//!
//! A request is a device-readable header (`le32 type, le32 reserved, le64
//! sector`, at least 16 bytes in the first descriptor), data descriptors
//! (device-writable for IN and GET_ID, device-readable for OUT, none for
//! FLUSH), and a final device-writable status byte. The guest controls all
//! of it, so before anything is touched:
//!
//! - the chain must end (no loop, no index past the table), be at most the
//!   queue size long, and its last descriptor must be a writable status byte
//!   inside guest memory; otherwise no status can be reported and the chain
//!   is [`Parsed::Dropped`];
//! - every other check fails into [`Parsed::Invalid`], answered with
//!   `VIRTIO_BLK_S_IOERR` (or `VIRTIO_BLK_S_UNSUPP` for an unknown type):
//!   header and data inside guest memory, data directions, whole sectors,
//!   `sector * 512 + len` without overflow and within the disk, no writes to
//!   a read-only disk.
//!
//! The chain iterator of virtio-queue stops silently on a loop (after queue
//! size descriptors), on a `next` index past the table and on more than
//! 4 GiB in total; the descriptor it yields last then still has NEXT set,
//! which is how a cut-off chain is recognised here.

use super::{SECTOR_SIZE, STATUS_IOERR, STATUS_UNSUPP};
use std::ops::Deref;
use virtio_bindings::virtio_blk::{VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT};
use virtio_queue::desc::split::Descriptor;
use virtio_queue::DescriptorChain;
use vm_memory::{Bytes, GuestAddress, GuestMemory};

/// Size of the request header (`struct virtio_blk_outhdr`).
pub const HEADER_LEN: usize = 16;

/// What the parser needs to know about the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiskInfo {
    /// Size in 512-byte sectors.
    pub capacity_sectors: u64,
    pub read_only: bool,
}

/// A guest buffer, checked to lie inside guest memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    pub addr: GuestAddress,
    pub len: u32,
}

/// A checked request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// `VIRTIO_BLK_T_IN`: fill `data` from the disk, starting at byte `offset`.
    Read { offset: u64, data: Vec<Segment> },
    /// `VIRTIO_BLK_T_OUT`: store `data` on the disk, starting at byte `offset`.
    Write { offset: u64, data: Vec<Segment> },
    /// `VIRTIO_BLK_T_FLUSH`: make earlier writes durable.
    Flush,
    /// `VIRTIO_BLK_T_GET_ID`: write the 20-byte device ID into `data`.
    GetId { data: Vec<Segment> },
}

/// A request ready to execute, and where its status byte goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub op: Op,
    pub status: GuestAddress,
}

/// The outcome of parsing one chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed {
    Valid(Request),
    /// A bad request with a usable status byte: write `error.status()`
    /// there, used length 1.
    Invalid {
        status: GuestAddress,
        error: RequestError,
    },
    /// No status byte can be written: return the chain with used length 0.
    Dropped(RequestError),
}

/// Why a chain is not a valid request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    #[error("descriptor chain is empty, loops or leaves the descriptor table")]
    BrokenChain,
    #[error("descriptor chain is longer than {0} descriptors")]
    ChainTooLong(usize),
    #[error("status descriptor is not device-writable")]
    StatusNotWritable,
    #[error("status descriptor is empty or outside guest memory")]
    StatusOutOfBounds,
    #[error("request header is missing, device-writable or shorter than 16 bytes")]
    BadHeader,
    #[error("request header is outside guest memory")]
    HeaderOutOfBounds,
    #[error("data descriptor has the wrong direction for the request")]
    DataDirection,
    #[error("data descriptor is outside guest memory")]
    DataOutOfBounds,
    #[error("request has no data")]
    NoData,
    #[error("flush request carries data")]
    UnexpectedData,
    #[error("data length {0} is not a whole number of sectors")]
    Unaligned(u64),
    #[error("{len} bytes at sector {sector} lie beyond the end of the disk")]
    OutOfRange { sector: u64, len: u64 },
    #[error("write to a read-only disk")]
    ReadOnly,
    #[error("unsupported request type {0}")]
    Unsupported(u32),
}

impl RequestError {
    /// The status byte that answers this error.
    pub fn status(&self) -> u8 {
        match self {
            Self::Unsupported(_) => STATUS_UNSUPP,
            _ => STATUS_IOERR,
        }
    }
}

/// Parse `chain`, accepting at most `max_len` descriptors (the queue size;
/// it also bounds chains through indirect tables, which the iterator would
/// follow up to 65535 entries).
pub fn parse<M>(mut chain: DescriptorChain<M>, max_len: usize, disk: DiskInfo) -> Parsed
where
    M: Deref,
    M::Target: GuestMemory,
{
    let mut descs = Vec::new();
    for desc in chain.by_ref() {
        if descs.len() == max_len {
            return Parsed::Dropped(RequestError::ChainTooLong(max_len));
        }
        descs.push(desc);
    }
    parse_descriptors(chain.memory(), &descs, disk)
}

/// Parse the descriptors of one chain, in chain order.
pub fn parse_descriptors<M: GuestMemory + ?Sized>(mem: &M, descs: &[Descriptor], disk: DiskInfo) -> Parsed {
    let Some((status, body)) = descs.split_last() else {
        return Parsed::Dropped(RequestError::BrokenChain);
    };
    if status.has_next() {
        // The iterator cut the chain off: a loop, a bad index or too long.
        return Parsed::Dropped(RequestError::BrokenChain);
    }
    if !status.is_write_only() {
        return Parsed::Dropped(RequestError::StatusNotWritable);
    }
    if status.len() == 0 || !mem.check_range(status.addr(), 1) {
        return Parsed::Dropped(RequestError::StatusOutOfBounds);
    }
    match parse_body(mem, body, disk) {
        Ok(op) => Parsed::Valid(Request { op, status: status.addr() }),
        Err(error) => Parsed::Invalid { status: status.addr(), error },
    }
}

fn parse_body<M: GuestMemory + ?Sized>(mem: &M, descs: &[Descriptor], disk: DiskInfo) -> Result<Op, RequestError> {
    let (header, data) = descs.split_first().ok_or(RequestError::BadHeader)?;
    if header.is_write_only() || usize::try_from(header.len()).unwrap_or(usize::MAX) < HEADER_LEN {
        return Err(RequestError::BadHeader);
    }
    let mut raw = [0u8; HEADER_LEN];
    mem.read_slice(&mut raw, header.addr()).map_err(|_| RequestError::HeaderOutOfBounds)?;
    let (type_bytes, rest) = raw.split_at(4);
    let request_type = u32::from_le_bytes(type_bytes.try_into().expect("4 bytes"));
    let sector = u64::from_le_bytes(rest[4..].try_into().expect("8 bytes"));

    match request_type {
        VIRTIO_BLK_T_IN => {
            let (data, len) = segments(mem, data, true)?;
            let offset = disk_range(sector, len, disk)?;
            Ok(Op::Read { offset, data })
        }
        VIRTIO_BLK_T_OUT => {
            if disk.read_only {
                return Err(RequestError::ReadOnly);
            }
            let (data, len) = segments(mem, data, false)?;
            let offset = disk_range(sector, len, disk)?;
            Ok(Op::Write { offset, data })
        }
        VIRTIO_BLK_T_FLUSH => {
            if data.is_empty() {
                Ok(Op::Flush)
            } else {
                Err(RequestError::UnexpectedData)
            }
        }
        VIRTIO_BLK_T_GET_ID => {
            let (data, len) = segments(mem, data, true)?;
            if len == 0 {
                return Err(RequestError::NoData);
            }
            Ok(Op::GetId { data })
        }
        other => Err(RequestError::Unsupported(other)),
    }
}

/// Check the data descriptors: direction, and inside guest memory. Returns
/// them with their total length.
fn segments<M: GuestMemory + ?Sized>(
    mem: &M,
    descs: &[Descriptor],
    device_writes: bool,
) -> Result<(Vec<Segment>, u64), RequestError> {
    let mut total = 0u64;
    let mut out = Vec::with_capacity(descs.len());
    for d in descs {
        if d.is_write_only() != device_writes {
            return Err(RequestError::DataDirection);
        }
        let len = usize::try_from(d.len()).map_err(|_| RequestError::DataOutOfBounds)?;
        // check_range is vacuously true for an empty range; an empty buffer
        // must still start inside guest memory.
        let inside = mem.check_range(d.addr(), len) && mem.address_in_range(d.addr());
        if !inside {
            return Err(RequestError::DataOutOfBounds);
        }
        total = total.checked_add(u64::from(d.len())).ok_or(RequestError::DataOutOfBounds)?;
        out.push(Segment { addr: d.addr(), len: d.len() });
    }
    Ok((out, total))
}

/// Check `len` bytes at `sector` against the disk; returns the byte offset.
fn disk_range(sector: u64, len: u64, disk: DiskInfo) -> Result<u64, RequestError> {
    if len == 0 {
        return Err(RequestError::NoData);
    }
    if len % SECTOR_SIZE != 0 {
        return Err(RequestError::Unaligned(len));
    }
    let out_of_range = RequestError::OutOfRange { sector, len };
    let offset = sector.checked_mul(SECTOR_SIZE).ok_or(out_of_range.clone())?;
    let end = offset.checked_add(len).ok_or(out_of_range.clone())?;
    let capacity = disk.capacity_sectors.saturating_mul(SECTOR_SIZE);
    if end > capacity {
        return Err(out_of_range);
    }
    Ok(offset)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
    use vm_memory::GuestMemoryMmap;

    const MEM_SIZE: usize = 0x1_0000;
    const DISK: DiskInfo = DiskInfo { capacity_sectors: 8, read_only: false };
    const HDR: u64 = 0x1000;
    const DATA: u64 = 0x2000;
    const STATUS: u64 = 0x3000;

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap()
    }

    fn flag(f: u32) -> u16 {
        u16::try_from(f).unwrap()
    }

    /// Descriptors of one chain: NEXT set on all but the last.
    fn chain(parts: &[(u64, u32, bool)]) -> Vec<Descriptor> {
        parts
            .iter()
            .enumerate()
            .map(|(i, &(addr, len, writable))| {
                let mut flags = if writable { flag(VRING_DESC_F_WRITE) } else { 0 };
                if i + 1 < parts.len() {
                    flags |= flag(VRING_DESC_F_NEXT);
                }
                let next = u16::try_from(i + 1).unwrap();
                Descriptor::new(addr, len, flags, next)
            })
            .collect()
    }

    fn header(mem: &GuestMemoryMmap, request_type: u32, sector: u64) {
        mem.write_obj(request_type.to_le(), GuestAddress(HDR)).unwrap();
        mem.write_obj(0u32, GuestAddress(HDR + 4)).unwrap();
        mem.write_obj(sector.to_le(), GuestAddress(HDR + 8)).unwrap();
    }

    fn invalid(p: Parsed) -> RequestError {
        match p {
            Parsed::Invalid { status, error } => {
                assert_eq!(status, GuestAddress(STATUS));
                error
            }
            other => panic!("expected an invalid request, got {other:?}"),
        }
    }

    #[test]
    fn parses_a_read_into_checked_segments() {
        let m = mem();
        header(&m, VIRTIO_BLK_T_IN, 2);
        let descs = chain(&[(HDR, 16, false), (DATA, 512, true), (DATA + 0x1000, 1024, true), (STATUS, 1, true)]);
        assert_eq!(
            parse_descriptors(&m, &descs, DISK),
            Parsed::Valid(Request {
                op: Op::Read {
                    offset: 1024,
                    data: vec![
                        Segment { addr: GuestAddress(DATA), len: 512 },
                        Segment { addr: GuestAddress(DATA + 0x1000), len: 1024 },
                    ],
                },
                status: GuestAddress(STATUS),
            })
        );
    }

    #[test]
    fn parses_write_flush_and_get_id() {
        let m = mem();
        header(&m, VIRTIO_BLK_T_OUT, 7);
        let descs = chain(&[(HDR, 16, false), (DATA, 512, false), (STATUS, 1, true)]);
        assert!(matches!(
            parse_descriptors(&m, &descs, DISK),
            Parsed::Valid(Request { op: Op::Write { offset: 3584, .. }, .. })
        ));
        header(&m, VIRTIO_BLK_T_FLUSH, 0);
        let descs = chain(&[(HDR, 16, false), (STATUS, 1, true)]);
        assert!(matches!(parse_descriptors(&m, &descs, DISK), Parsed::Valid(Request { op: Op::Flush, .. })));
        header(&m, VIRTIO_BLK_T_GET_ID, 0);
        let descs = chain(&[(HDR, 16, false), (DATA, 20, true), (STATUS, 1, true)]);
        assert!(matches!(parse_descriptors(&m, &descs, DISK), Parsed::Valid(Request { op: Op::GetId { .. }, .. })));
    }

    #[test]
    fn the_last_sector_is_in_range_and_the_next_is_not() {
        let m = mem();
        header(&m, VIRTIO_BLK_T_IN, 7);
        let descs = chain(&[(HDR, 16, false), (DATA, 512, true), (STATUS, 1, true)]);
        assert!(matches!(parse_descriptors(&m, &descs, DISK), Parsed::Valid(_)));
        header(&m, VIRTIO_BLK_T_IN, 8);
        assert_eq!(invalid(parse_descriptors(&m, &descs, DISK)), RequestError::OutOfRange { sector: 8, len: 512 });
    }

    #[test]
    fn sector_arithmetic_overflow_is_out_of_range() {
        let m = mem();
        for sector in [u64::MAX, u64::MAX / SECTOR_SIZE, u64::MAX / SECTOR_SIZE - 1] {
            header(&m, VIRTIO_BLK_T_IN, sector);
            let descs = chain(&[(HDR, 16, false), (DATA, 1024, true), (STATUS, 1, true)]);
            assert!(matches!(invalid(parse_descriptors(&m, &descs, DISK)), RequestError::OutOfRange { .. }));
        }
    }

    #[test]
    fn partial_sectors_and_empty_transfers_are_refused() {
        let m = mem();
        header(&m, VIRTIO_BLK_T_IN, 0);
        let descs = chain(&[(HDR, 16, false), (DATA, 100, true), (STATUS, 1, true)]);
        assert_eq!(invalid(parse_descriptors(&m, &descs, DISK)), RequestError::Unaligned(100));
        let descs = chain(&[(HDR, 16, false), (STATUS, 1, true)]);
        assert_eq!(invalid(parse_descriptors(&m, &descs, DISK)), RequestError::NoData);
    }

    #[test]
    fn status_problems_drop_the_chain() {
        let m = mem();
        header(&m, VIRTIO_BLK_T_IN, 0);
        let readable = chain(&[(HDR, 16, false), (DATA, 512, true), (STATUS, 1, false)]);
        assert_eq!(parse_descriptors(&m, &readable, DISK), Parsed::Dropped(RequestError::StatusNotWritable));
        let empty = chain(&[(HDR, 16, false), (DATA, 512, true), (STATUS, 0, true)]);
        assert_eq!(parse_descriptors(&m, &empty, DISK), Parsed::Dropped(RequestError::StatusOutOfBounds));
        let outside = chain(&[(HDR, 16, false), (DATA, 512, true), (u64::MAX, 1, true)]);
        assert_eq!(parse_descriptors(&m, &outside, DISK), Parsed::Dropped(RequestError::StatusOutOfBounds));
        assert_eq!(parse_descriptors(&m, &[], DISK), Parsed::Dropped(RequestError::BrokenChain));
        let mut cut = chain(&[(HDR, 16, false), (DATA, 512, true), (STATUS, 1, true)]);
        cut.truncate(2);
        assert_eq!(parse_descriptors(&m, &cut, DISK), Parsed::Dropped(RequestError::BrokenChain));
    }

    #[test]
    fn header_must_be_readable_long_enough_and_in_memory() {
        let m = mem();
        header(&m, VIRTIO_BLK_T_IN, 0);
        for hdr in [(HDR, 15, false), (HDR, 16, true)] {
            let descs = chain(&[hdr, (DATA, 512, true), (STATUS, 1, true)]);
            assert_eq!(invalid(parse_descriptors(&m, &descs, DISK)), RequestError::BadHeader);
        }
        let m_end = u64::try_from(MEM_SIZE).unwrap();
        let descs = chain(&[(m_end - 8, 16, false), (DATA, 512, true), (STATUS, 1, true)]);
        assert_eq!(invalid(parse_descriptors(&m, &descs, DISK)), RequestError::HeaderOutOfBounds);
        // A lone status descriptor has no header.
        let descs = chain(&[(STATUS, 1, true)]);
        assert_eq!(invalid(parse_descriptors(&m, &descs, DISK)), RequestError::BadHeader);
    }

    #[test]
    fn data_must_lie_in_guest_memory_and_go_the_right_way() {
        let m = mem();
        let m_end = u64::try_from(MEM_SIZE).unwrap();
        header(&m, VIRTIO_BLK_T_IN, 0);
        for data in [(m_end - 256, 512, true), (m_end, 0, true), (u64::MAX, 512, true)] {
            let descs = chain(&[(HDR, 16, false), data, (STATUS, 1, true)]);
            assert_eq!(invalid(parse_descriptors(&m, &descs, DISK)), RequestError::DataOutOfBounds);
        }
        let descs = chain(&[(HDR, 16, false), (DATA, 512, true), (DATA + 512, 512, false), (STATUS, 1, true)]);
        assert_eq!(invalid(parse_descriptors(&m, &descs, DISK)), RequestError::DataDirection);
        header(&m, VIRTIO_BLK_T_OUT, 0);
        let descs = chain(&[(HDR, 16, false), (DATA, 512, true), (STATUS, 1, true)]);
        assert_eq!(invalid(parse_descriptors(&m, &descs, DISK)), RequestError::DataDirection);
        header(&m, VIRTIO_BLK_T_GET_ID, 0);
        let descs = chain(&[(HDR, 16, false), (DATA, 20, false), (STATUS, 1, true)]);
        assert_eq!(invalid(parse_descriptors(&m, &descs, DISK)), RequestError::DataDirection);
    }

    #[test]
    fn writes_to_a_read_only_disk_are_refused_and_reads_are_not() {
        let m = mem();
        let ro = DiskInfo { read_only: true, ..DISK };
        header(&m, VIRTIO_BLK_T_OUT, 0);
        let descs = chain(&[(HDR, 16, false), (DATA, 512, false), (STATUS, 1, true)]);
        assert_eq!(invalid(parse_descriptors(&m, &descs, ro)), RequestError::ReadOnly);
        header(&m, VIRTIO_BLK_T_IN, 0);
        let descs = chain(&[(HDR, 16, false), (DATA, 512, true), (STATUS, 1, true)]);
        assert!(matches!(parse_descriptors(&m, &descs, ro), Parsed::Valid(_)));
    }

    #[test]
    fn unknown_types_are_unsupported_and_flush_takes_no_data() {
        let m = mem();
        for t in [2, 11, 13, 0x8000_0000, u32::MAX] {
            header(&m, t, 0);
            let descs = chain(&[(HDR, 16, false), (DATA, 512, true), (STATUS, 1, true)]);
            let err = invalid(parse_descriptors(&m, &descs, DISK));
            assert_eq!(err, RequestError::Unsupported(t));
            assert_eq!(err.status(), STATUS_UNSUPP);
        }
        header(&m, VIRTIO_BLK_T_FLUSH, 0);
        let descs = chain(&[(HDR, 16, false), (DATA, 512, false), (STATUS, 1, true)]);
        let err = invalid(parse_descriptors(&m, &descs, DISK));
        assert_eq!(err, RequestError::UnexpectedData);
        assert_eq!(err.status(), STATUS_IOERR);
    }

    fn any_desc() -> impl Strategy<Value = Descriptor> {
        let addr =
            prop_oneof![0..(2 * u64::try_from(MEM_SIZE).unwrap()), any::<u64>(), Just(HDR), Just(DATA), Just(STATUS),];
        let len = prop_oneof![0..2048u32, any::<u32>(), Just(16u32), Just(512u32)];
        (addr, len, 0u16..8, any::<u16>()).prop_map(|(a, l, f, n)| Descriptor::new(a, l, f, n))
    }

    proptest! {
        /// Whatever the guest puts in the chain: no panic, and a valid
        /// request only names guest memory and disk bytes that exist.
        #[test]
        fn arbitrary_chains_parse_into_in_bounds_requests_or_errors(
            request_type in prop_oneof![0u32..10, any::<u32>()],
            sector in prop_oneof![0u64..16, any::<u64>()],
            descs in proptest::collection::vec(any_desc(), 0..6),
            read_only in any::<bool>(),
        ) {
            let m = mem();
            header(&m, request_type, sector);
            let disk = DiskInfo { read_only, ..DISK };
            match parse_descriptors(&m, &descs, disk) {
                Parsed::Valid(req) => {
                    prop_assert!(m.check_range(req.status, 1));
                    let (data, range) = match req.op {
                        Op::Read { offset, data } => (data, Some(offset)),
                        Op::Write { offset, data } => {
                            prop_assert!(!read_only);
                            (data, Some(offset))
                        }
                        Op::GetId { data } => (data, None),
                        Op::Flush => (Vec::new(), None),
                    };
                    let mut total = 0u64;
                    for s in &data {
                        prop_assert!(m.check_range(s.addr, usize::try_from(s.len).unwrap()));
                        total += u64::from(s.len);
                    }
                    if let Some(offset) = range {
                        prop_assert!(offset + total <= DISK.capacity_sectors * SECTOR_SIZE);
                    }
                }
                Parsed::Invalid { status, .. } => prop_assert!(m.check_range(status, 1)),
                Parsed::Dropped(_) => {}
            }
        }
    }
}
