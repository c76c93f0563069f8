//! One taker per snapshot: jobs started together on a cache without the
//! snapshot of their guest (a builder running parallel builds after an
//! upgrade) would otherwise all boot cold. The first takes an exclusive
//! `flock` on `<snapshot>.lock` beside the file and holds it until its
//! snapshot is written; the others wait for the lock, bounded, then find
//! the snapshot and restore it. A taker that dies releases the lock with
//! its descriptors, and a waiter that gives up boots cold as before: the
//! lock only saves work, it never decides what a guest is.

use std::fs::File;
use std::path::Path;
use std::time::{Duration, Instant};

/// How long a job waits for another job's snapshot at most (a cold boot
/// takes well under a second on hardware KVM, some seconds emulated).
pub const TAKE_WAIT: Duration = Duration::from_secs(180);

/// The lock of one snapshot, held while this process takes it.
#[derive(Debug)]
pub struct TakeLock(#[allow(dead_code)] File);

/// What [`claim`] found.
#[derive(Debug)]
pub enum Claim {
    /// The lock is ours: no one else is taking this snapshot.
    Mine(TakeLock),
    /// Another job held the lock; it is free now (its snapshot may be
    /// there) or the wait ran out. `waited` is how long this job waited.
    Waited { waited: Duration, lock: Option<TakeLock> },
    /// No lock could be made (a read-only cache, say): proceed without.
    Unlocked,
}

/// Claim the right to take the snapshot `file_name` in `dir`, waiting at
/// most `bound` for a job that holds it (saying so once on stderr).
pub fn claim(dir: &Path, file_name: &str, bound: Duration) -> Claim {
    use rustix::fs::{flock, FlockOperation};
    use std::os::unix::fs::OpenOptionsExt;
    if super::make_dir(dir).is_err() {
        return Claim::Unlocked;
    }
    let Ok(file) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(dir.join(format!("{file_name}.lock")))
    else {
        return Claim::Unlocked;
    };
    let start = Instant::now();
    let mut said = false;
    loop {
        match flock(&file, FlockOperation::NonBlockingLockExclusive) {
            Ok(()) if !said => return Claim::Mine(TakeLock(file)),
            Ok(()) => return Claim::Waited { waited: start.elapsed(), lock: Some(TakeLock(file)) },
            Err(rustix::io::Errno::WOULDBLOCK) | Err(rustix::io::Errno::INTR) => {}
            Err(_) => return Claim::Unlocked,
        }
        if start.elapsed() >= bound {
            eprintln!("rootlayer: the other job's snapshot is not ready after {} s: booting cold", bound.as_secs());
            return Claim::Waited { waited: start.elapsed(), lock: None };
        }
        if !said {
            eprintln!("rootlayer: another job is taking the snapshot of this guest: waiting for it");
            said = true;
        }
        if crate::signals::interrupted() {
            return Claim::Waited { waited: start.elapsed(), lock: None };
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

impl Claim {
    /// The lock, when this job holds it.
    pub fn into_lock(self) -> Option<TakeLock> {
        match self {
            Claim::Mine(l) => Some(l),
            Claim::Waited { lock, .. } => lock,
            Claim::Unlocked => None,
        }
    }

    /// How long this job waited for another's snapshot.
    pub fn waited(&self) -> Duration {
        match self {
            Claim::Waited { waited, .. } => *waited,
            _ => Duration::ZERO,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_second_claimant_waits_for_the_first_and_then_holds_the_lock() {
        let dir = tempfile::tempdir().unwrap();
        let first = claim(dir.path(), "x.snap", Duration::from_secs(5));
        assert!(matches!(first, Claim::Mine(_)), "{first:?}");
        let t = std::thread::spawn({
            let dir = dir.path().to_path_buf();
            move || claim(&dir, "x.snap", Duration::from_secs(30))
        });
        std::thread::sleep(Duration::from_millis(300));
        drop(first);
        let second = t.join().unwrap();
        assert!(second.waited() >= Duration::from_millis(200), "{second:?}");
        assert!(second.into_lock().is_some(), "the lock passes to the waiter");
    }

    #[test]
    fn a_wait_is_bounded_and_another_snapshot_has_its_own_lock() {
        let dir = tempfile::tempdir().unwrap();
        let held = claim(dir.path(), "x.snap", Duration::from_secs(5)).into_lock();
        assert!(held.is_some());
        let gave_up = claim(dir.path(), "x.snap", Duration::from_millis(200));
        assert!(matches!(gave_up, Claim::Waited { lock: None, .. }), "{gave_up:?}");
        assert!(matches!(claim(dir.path(), "y.snap", Duration::ZERO), Claim::Mine(_)));
    }
}
