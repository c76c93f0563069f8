//! The bound on what the guest may write into a read-write share
//! (`--max-output` for the exchange share).
//!
//! The guest is untrusted and the exchange directory lives on the host's
//! disk, so every request that can make the share take more space is
//! charged against one budget before it reaches the file system: each
//! write and fallocate the whole blocks it touches (a byte written into a
//! hole takes a block of the host's disk: charging bytes alone let 1-byte
//! writes a block apart take 4096 times the budget), refunded after it
//! down to the bytes written or the disk space the file grew by, whichever
//! is more; the growth of a file by truncate; each new node (file,
//! directory, link, device) as one block; and each xattr value. It errs on
//! the side of the host: rewriting a file charges again, and deleting
//! refunds nothing. A request over budget fails with EFBIG and marks the budget
//! exceeded, which the host reports as its own exit code; the guest sees an
//! ordinary write error.

use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// A block of the host file system: what a write into a hole takes.
pub const BLOCK: u64 = 4096;
/// What one new directory entry costs (one block of the host file system).
pub const NODE_COST: u64 = BLOCK;

/// A byte budget shared by every request of a share.
#[derive(Debug)]
pub struct OutputLimit {
    limit: u64,
    used: AtomicU64,
    exceeded: AtomicBool,
}

impl OutputLimit {
    pub fn new(limit: u64) -> Self {
        Self { limit, used: AtomicU64::new(0), exceeded: AtomicBool::new(false) }
    }

    pub fn limit(&self) -> u64 {
        self.limit
    }

    /// Bytes charged so far.
    pub fn used(&self) -> u64 {
        self.used.load(Ordering::SeqCst)
    }

    /// True once a request was refused for lack of budget.
    pub fn exceeded(&self) -> bool {
        self.exceeded.load(Ordering::SeqCst)
    }

    /// Take `bytes` from the budget, or refuse (EFBIG) and remember that the
    /// guest asked for more than it may write.
    pub fn charge(&self, bytes: u64) -> io::Result<()> {
        let taken = self.used.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |used| {
            used.checked_add(bytes).filter(|&total| total <= self.limit)
        });
        match taken {
            Ok(_) => Ok(()),
            Err(_) => {
                self.exceeded.store(true, Ordering::SeqCst);
                Err(io::Error::from_raw_os_error(libc::EFBIG))
            }
        }
    }

    /// Give back what a request charged but did not use (a short or failed
    /// write).
    pub fn refund(&self, bytes: u64) {
        let _ = self.used.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |used| Some(used.saturating_sub(bytes)));
    }

    /// Charge `bytes`, run `op`, and refund what it reports unused
    /// (`Err`: everything).
    pub fn charged<T>(
        &self,
        bytes: u64,
        op: impl FnOnce() -> io::Result<T>,
        used: impl Fn(&T) -> u64,
    ) -> io::Result<T> {
        self.charge(bytes)?;
        let result = op();
        self.refund(match &result {
            Ok(value) => bytes.saturating_sub(used(value)),
            Err(_) => bytes,
        });
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charges_up_to_the_limit_and_refuses_beyond_it() {
        let l = OutputLimit::new(10);
        l.charge(4).unwrap();
        l.charge(6).unwrap();
        assert!(!l.exceeded());
        assert_eq!(l.charge(1).unwrap_err().raw_os_error(), Some(libc::EFBIG));
        assert!(l.exceeded());
        assert_eq!(l.used(), 10, "a refused request takes nothing");
    }

    #[test]
    fn overflowing_requests_are_refused() {
        let l = OutputLimit::new(u64::MAX);
        l.charge(u64::MAX - 1).unwrap();
        assert!(l.charge(2).is_err());
    }

    #[test]
    fn short_and_failed_operations_are_refunded() {
        let l = OutputLimit::new(100);
        let n = l.charged(50, || Ok(20usize), |&n| n as u64).unwrap();
        assert_eq!((n, l.used()), (20, 20));
        let r: io::Result<usize> = l.charged(50, || Err(io::Error::other("no")), |&n| n as u64);
        assert!(r.is_err());
        assert_eq!(l.used(), 20);
        l.refund(1000);
        assert_eq!(l.used(), 0, "refunds never go below zero");
    }
}
