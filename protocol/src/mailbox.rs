//! The job mailbox: a window of guest-physical memory outside the guest's
//! RAM that the VMM backs with memory of its own, through which the job
//! goes in and the result comes out without a round trip through the
//! guest kernel (mounting the exchange share, reading job.json and the
//! script off it, and writing and renaming result.json there, took about
//! 0.1 s of emulated kernel work of every job).
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
//! Layout (little-endian): a header page with, for each [`Part`] (the
//! job, the files it names, the result), a magic and a length; then each
//! part's bytes in its own span. A side with nothing to say leaves its
//! magic zero. Everything read from the window is checked: the guest may
//! have written anything there.

use std::fmt;

/// Where the window starts (guest-physical): above the most RAM a guest
/// gets, up to the virtio-mmio devices.
pub const MAILBOX_ADDR: u64 = 0xcf00_0000;
/// Its size: memory of the VMM's own, touched only where written.
pub const MAILBOX_SIZE: usize = 16 << 20;
const HEADER: usize = 4096;

/// The parts of the window, each with its header fields (magic, length)
/// and its own span.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    /// job.json, from the host.
    Job,
    /// The files a job names ([`crate::JobFile`]: its script), from the
    /// host.
    Files,
    /// result.json, from the agent.
    Result,
}

impl Part {
    /// (header field offset, magic, data offset, most bytes, name).
    const fn layout(self) -> (usize, u64, usize, usize, &'static str) {
        const JOB_MAX: usize = 256 << 10;
        const RESULT_MAX: usize = 256 << 10;
        match self {
            Part::Job => (0, u64::from_le_bytes(*b"RLJOB\0\0\x01"), HEADER, JOB_MAX, "job"),
            Part::Result => (16, u64::from_le_bytes(*b"RLRESLT\x01"), HEADER + JOB_MAX, RESULT_MAX, "result"),
            Part::Files => (
                32,
                u64::from_le_bytes(*b"RLFILES\x01"),
                HEADER + JOB_MAX + RESULT_MAX,
                MAILBOX_SIZE - HEADER - JOB_MAX - RESULT_MAX,
                "files",
            ),
        }
    }

    /// The most bytes the part holds.
    pub const fn max(self) -> usize {
        self.layout().3
    }
}

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

/// Put `bytes` into `part` of `mailbox`.
pub fn put(mailbox: &mut [u8], part: Part, bytes: &[u8]) -> Result<(), MailboxError> {
    let (fields, magic, offset, max, what) = part.layout();
    check(mailbox)?;
    if bytes.len() > max {
        return Err(MailboxError::TooLarge { what, len: bytes.len(), max });
    }
    mailbox[offset..offset + bytes.len()].copy_from_slice(bytes);
    mailbox[fields + 8..fields + 16].copy_from_slice(&(bytes.len() as u64).to_le_bytes());
    mailbox[fields..fields + 8].copy_from_slice(&magic.to_le_bytes());
    Ok(())
}

/// The bytes in `part` of `mailbox`, if its writer put any.
pub fn take(mailbox: &[u8], part: Part) -> Result<Option<&[u8]>, MailboxError> {
    let (fields, magic, offset, max, what) = part.layout();
    check(mailbox)?;
    let (found, len) = (field(mailbox, fields), field(mailbox, fields + 8));
    match usize::try_from(len) {
        _ if found == 0 && len == 0 => Ok(None),
        Ok(n) if found == magic && n <= max => Ok(Some(&mailbox[offset..offset + n])),
        _ => Err(MailboxError::BadHeader { what, magic: found, len }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PARTS: [Part; 3] = [Part::Job, Part::Files, Part::Result];

    #[test]
    fn each_part_goes_in_and_comes_out_on_its_own() {
        let mut m = vec![0u8; MAILBOX_SIZE];
        for part in PARTS {
            assert_eq!(take(&m, part), Ok(None), "an empty mailbox holds no {part:?}");
        }
        put(&mut m, Part::Job, b"{\"job\":1}").unwrap();
        assert_eq!(take(&m, Part::Result), Ok(None), "a job is not a result");
        put(&mut m, Part::Result, b"{\"status\":0}").unwrap();
        put(&mut m, Part::Files, b"#!/bin/sh\n").unwrap();
        assert_eq!(take(&m, Part::Job), Ok(Some(&b"{\"job\":1}"[..])));
        assert_eq!(take(&m, Part::Result), Ok(Some(&b"{\"status\":0}"[..])));
        assert_eq!(take(&m, Part::Files), Ok(Some(&b"#!/bin/sh\n"[..])));
        // Each part to its very end, and no further; none overlaps another.
        for (part, fill) in PARTS.into_iter().zip([b'j', b'f', b'r']) {
            put(&mut m, part, &vec![fill; part.max()]).unwrap();
        }
        for (part, fill) in PARTS.into_iter().zip([b'j', b'f', b'r']) {
            assert!(take(&m, part).unwrap().unwrap().iter().all(|&b| b == fill), "{part:?}");
            let max = part.max();
            assert!(
                matches!(put(&mut m, part, &vec![0; max + 1]), Err(MailboxError::TooLarge { len, .. }) if len == max + 1)
            );
        }
        assert_eq!(PARTS.iter().map(|p| p.max()).sum::<usize>() + HEADER, MAILBOX_SIZE);
    }

    #[test]
    fn headers_a_guest_could_write_are_refused() {
        let mut m = vec![0u8; MAILBOX_SIZE];
        put(&mut m, Part::Result, b"{}").unwrap();
        let (fields, magic_ok, ..) = Part::Result.layout();
        let (_, job_magic, ..) = Part::Job.layout();
        let header = |m: &mut Vec<u8>, magic: u64, len: u64| {
            m[fields..fields + 8].copy_from_slice(&magic.to_le_bytes());
            m[fields + 8..fields + 16].copy_from_slice(&len.to_le_bytes());
        };
        for (magic, len) in
            [(magic_ok, Part::Result.max() as u64 + 1), (magic_ok, u64::MAX), (job_magic, 2), (0, 2), (7, 0)]
        {
            header(&mut m, magic, len);
            assert_eq!(take(&m, Part::Result), Err(MailboxError::BadHeader { what: "result", magic, len }));
        }
        assert_eq!(take(&m[1..], Part::Job), Err(MailboxError::Size(MAILBOX_SIZE - 1)));
        assert!(put(&mut [0; 10], Part::Job, b"x").is_err());
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
