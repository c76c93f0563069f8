//! The job mailbox: a window of guest-physical memory outside the guest's
//! RAM that the VMM backs with memory of its own, through which the job
//! goes in and the result comes out without a round trip through the
//! guest kernel (reading job.json off the exchange share, and writing and
//! renaming result.json there, took about 75 ms of emulated kernel work of
//! every job).
//!
//! The VMM fills the job in before the agent passes its snapshot point
//! (before a restored guest runs; during the pause of a boot that takes a
//! snapshot, once it is written, so that no snapshot holds a job; before
//! any other boot) and reads the result once every vCPU has stopped. The
//! agent maps the window through /dev/mem before its snapshot point (the
//! window is not RAM, so the kernel's strict /dev/mem filter lets it
//! through) and reads the job after it. The snapshot holds no byte of the
//! window: each machine has its own.
//!
//! Layout (little-endian): a header page with, for the job and for the
//! result, a magic and a length; the job's bytes at [`JOB_OFFSET`], the
//! result's at [`RESULT_OFFSET`]. A side with nothing to say leaves its
//! magic zero. Everything read from the window is checked: the guest may
//! have written anything there.

use std::fmt;

/// Where the window starts (guest-physical): above the most RAM a guest
/// gets, below the virtio-mmio devices.
pub const MAILBOX_ADDR: u64 = 0xcf00_0000;
/// Its size.
pub const MAILBOX_SIZE: usize = 1 << 20;
const HEADER: usize = 4096;
/// Where the job's bytes start, and the most there are.
pub const JOB_OFFSET: usize = HEADER;
pub const MAX_JOB: usize = (MAILBOX_SIZE - HEADER) / 2;
/// Where the result's bytes start, and the most there are.
pub const RESULT_OFFSET: usize = JOB_OFFSET + MAX_JOB;
pub const MAX_RESULT: usize = MAILBOX_SIZE - RESULT_OFFSET;

const JOB_MAGIC: u64 = u64::from_le_bytes(*b"RLJOB\0\0\x01");
const RESULT_MAGIC: u64 = u64::from_le_bytes(*b"RLRESLT\x01");
/// Header fields: (magic, length) of the job, then of the result.
const JOB_FIELDS: usize = 0;
const RESULT_FIELDS: usize = 16;

/// Why a mailbox's contents cannot be put or taken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MailboxError {
    /// The window is not [`MAILBOX_SIZE`] bytes.
    Size(usize),
    /// More bytes than their part of the window holds.
    TooLarge { what: &'static str, len: usize, max: usize },
    /// A header that no writer of this protocol makes.
    BadHeader { what: &'static str, magic: u64, len: u64 },
}

impl fmt::Display for MailboxError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Size(len) => write!(f, "the mailbox is {len} bytes, not {MAILBOX_SIZE}"),
            Self::TooLarge { what, len, max } => write!(f, "the {what} is {len} bytes, more than the mailbox's {max}"),
            Self::BadHeader { what, magic, len } => {
                write!(f, "the mailbox's {what} header is not this protocol's (magic {magic:#018x}, length {len})")
            }
        }
    }
}

impl std::error::Error for MailboxError {}

fn check(mailbox: &[u8]) -> Result<(), MailboxError> {
    if mailbox.len() == MAILBOX_SIZE {
        Ok(())
    } else {
        Err(MailboxError::Size(mailbox.len()))
    }
}

fn field(mailbox: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(mailbox[at..at + 8].try_into().expect("8 bytes"))
}

fn put(
    mailbox: &mut [u8],
    fields: usize,
    magic: u64,
    offset: usize,
    max: usize,
    what: &'static str,
    bytes: &[u8],
) -> Result<(), MailboxError> {
    check(mailbox)?;
    if bytes.len() > max {
        return Err(MailboxError::TooLarge { what, len: bytes.len(), max });
    }
    mailbox[offset..offset + bytes.len()].copy_from_slice(bytes);
    mailbox[fields + 8..fields + 16].copy_from_slice(&(bytes.len() as u64).to_le_bytes());
    mailbox[fields..fields + 8].copy_from_slice(&magic.to_le_bytes());
    Ok(())
}

fn take<'m>(
    mailbox: &'m [u8],
    fields: usize,
    magic: u64,
    offset: usize,
    max: usize,
    what: &'static str,
) -> Result<Option<&'m [u8]>, MailboxError> {
    check(mailbox)?;
    let (found, len) = (field(mailbox, fields), field(mailbox, fields + 8));
    match usize::try_from(len) {
        _ if found == 0 && len == 0 => Ok(None),
        Ok(n) if found == magic && n <= max => Ok(Some(&mailbox[offset..offset + n])),
        _ => Err(MailboxError::BadHeader { what, magic: found, len }),
    }
}

/// Put the job's bytes (job.json) into `mailbox`.
pub fn put_job(mailbox: &mut [u8], job: &[u8]) -> Result<(), MailboxError> {
    put(mailbox, JOB_FIELDS, JOB_MAGIC, JOB_OFFSET, MAX_JOB, "job", job)
}

/// The job's bytes, if the host put a job in.
pub fn job(mailbox: &[u8]) -> Result<Option<&[u8]>, MailboxError> {
    take(mailbox, JOB_FIELDS, JOB_MAGIC, JOB_OFFSET, MAX_JOB, "job")
}

/// Put the result's bytes (result.json) into `mailbox`.
pub fn put_result(mailbox: &mut [u8], result: &[u8]) -> Result<(), MailboxError> {
    put(mailbox, RESULT_FIELDS, RESULT_MAGIC, RESULT_OFFSET, MAX_RESULT, "result", result)
}

/// The result's bytes, if the agent put a result in.
pub fn result(mailbox: &[u8]) -> Result<Option<&[u8]>, MailboxError> {
    take(mailbox, RESULT_FIELDS, RESULT_MAGIC, RESULT_OFFSET, MAX_RESULT, "result")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_and_result_go_in_and_come_out_each_in_its_own_part() {
        let mut m = vec![0u8; MAILBOX_SIZE];
        assert_eq!(job(&m), Ok(None), "an empty mailbox holds no job");
        assert_eq!(result(&m), Ok(None));
        put_job(&mut m, b"{\"job\":1}").unwrap();
        assert_eq!(result(&m), Ok(None), "a job is not a result");
        put_result(&mut m, b"{\"status\":0}").unwrap();
        assert_eq!(job(&m), Ok(Some(&b"{\"job\":1}"[..])));
        assert_eq!(result(&m), Ok(Some(&b"{\"status\":0}"[..])));
        // Each part to its very end, and no further.
        put_job(&mut m, &vec![b'j'; MAX_JOB]).unwrap();
        put_result(&mut m, &vec![b'r'; MAX_RESULT]).unwrap();
        assert!(job(&m).unwrap().unwrap().iter().all(|&b| b == b'j'));
        assert!(result(&m).unwrap().unwrap().iter().all(|&b| b == b'r'));
        assert_eq!(
            put_result(&mut m, &vec![0; MAX_RESULT + 1]),
            Err(MailboxError::TooLarge { what: "result", len: MAX_RESULT + 1, max: MAX_RESULT })
        );
        assert!(matches!(put_job(&mut m, &vec![0; MAX_JOB + 1]), Err(MailboxError::TooLarge { .. })));
    }

    #[test]
    fn headers_a_guest_could_write_are_refused() {
        let mut m = vec![0u8; MAILBOX_SIZE];
        put_result(&mut m, b"{}").unwrap();
        let header = |m: &mut Vec<u8>, magic: u64, len: u64| {
            m[RESULT_FIELDS..RESULT_FIELDS + 8].copy_from_slice(&magic.to_le_bytes());
            m[RESULT_FIELDS + 8..RESULT_FIELDS + 16].copy_from_slice(&len.to_le_bytes());
        };
        for (magic, len) in
            [(RESULT_MAGIC, MAX_RESULT as u64 + 1), (RESULT_MAGIC, u64::MAX), (JOB_MAGIC, 2), (0, 2), (7, 0)]
        {
            header(&mut m, magic, len);
            assert_eq!(result(&m), Err(MailboxError::BadHeader { what: "result", magic, len }), "{magic:x} {len}");
        }
        assert_eq!(job(&m[1..]), Err(MailboxError::Size(MAILBOX_SIZE - 1)));
        assert!(put_job(&mut [0; 10], b"x").is_err());
    }

    #[test]
    fn the_window_lies_between_the_most_ram_and_the_devices() {
        // The VMM's layout (src/vmm/arch/layout.rs): RAM ends at most at
        // 3 GiB, the virtio-mmio devices start at 0xd000_0000.
        const RAM_END_MAX: u64 = 3 << 30;
        const MMIO_START: u64 = 0xd000_0000;
        assert!(MAILBOX_ADDR >= RAM_END_MAX && MAILBOX_ADDR + MAILBOX_SIZE as u64 <= MMIO_START);
        assert_eq!(MAILBOX_ADDR % 4096, 0);
    }
}
