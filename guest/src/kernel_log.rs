//! What the guest kernel itself said about a job: the agent reads the
//! kernel's log through /dev/kmsg, where every record carries its facility,
//! and counts only the kernel's own records (facility 0): a process writing
//! to /dev/kmsg gets LOG_USER whatever it asks for, so a script cannot forge
//! them. The host takes the agent's count instead of scanning the console,
//! which the script's output shares.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::OpenOptionsExt;

/// The OOM killer's line for each process it kills (mm/oom_kill.c).
const OOM_KILL: &str = "Out of memory: Killed process";

/// A position in the kernel log; [`Self::oom_kills`] counts what came after.
pub struct Cursor {
    file: Option<File>,
}

impl Cursor {
    /// From now on. Where /dev/kmsg cannot be opened nothing is counted.
    pub fn now() -> Cursor {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open("/dev/kmsg")
            .and_then(|mut f| f.seek(SeekFrom::End(0)).map(|_| f))
            .ok();
        Cursor { file }
    }

    /// The OOM kills the kernel logged since the cursor was taken.
    pub fn oom_kills(&mut self) -> u32 {
        let Some(f) = self.file.as_mut() else { return 0 };
        let mut kills = 0;
        let mut buf = vec![0u8; 8192];
        loop {
            match f.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => kills += u32::from(is_kernel_oom_kill(&buf[..n])),
                // Records overwritten before we read them: go on with the
                // next one.
                Err(e) if e.raw_os_error() == Some(libc::EPIPE) => continue,
                Err(_) => break,
            }
        }
        kills
    }
}

/// One /dev/kmsg record (`PRIO,SEQ,USEC,FLAGS;TEXT\n...`): the kernel's own
/// (facility 0) OOM-kill line?
fn is_kernel_oom_kill(record: &[u8]) -> bool {
    let text = String::from_utf8_lossy(record);
    let Some((header, message)) = text.split_once(';') else { return false };
    let prio: u32 = header.split(',').next().and_then(|p| p.parse().ok()).unwrap_or(u32::MAX);
    prio >> 3 == 0 && message.contains(OOM_KILL)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_kernels_own_records_count() {
        assert!(is_kernel_oom_kill(b"3,812,2311,-;Out of memory: Killed process 71 (busybox) total-vm:65808kB\n"));
        // What a process gets for writing "<3>Out of memory: ..." to /dev/kmsg.
        assert!(!is_kernel_oom_kill(b"11,813,2312,-;Out of memory: Killed process 1 (fake)\n"));
        assert!(!is_kernel_oom_kill(b"6,814,2313,-;oom-kill:constraint=CONSTRAINT_NONE\n"));
        assert!(!is_kernel_oom_kill(b"garbage"));
    }
}
