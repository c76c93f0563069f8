//! The job mailbox (`rootlayer_protocol::mailbox`), mapped through
//! /dev/mem: the job comes in there and the result goes out, with no round
//! trip through the guest kernel.

use anyhow::Context;
use rootlayer_protocol::mailbox::{self, Part, MAILBOX_ADDR, MAILBOX_SIZE};
use std::os::fd::AsRawFd;

/// The agent's mapping of the mailbox window.
#[derive(Debug)]
pub struct Mailbox {
    window: *mut u8,
}

impl Mailbox {
    /// Map the window (before the snapshot point: a restored guest has the
    /// mapping, and the VMM's memory behind it is the new machine's).
    pub fn map() -> anyhow::Result<Mailbox> {
        let mem = std::fs::OpenOptions::new().read(true).write(true).open("/dev/mem").context(
            "open /dev/mem for the job mailbox (a guest kernel without CONFIG_DEVMEM: rebuild it with scripts/build-kernel)",
        )?;
        let offset = libc::off_t::try_from(MAILBOX_ADDR).expect("below 4 GiB");
        // SAFETY: a new shared mapping of MAILBOX_SIZE bytes of /dev/mem at
        // the mailbox's physical address; no existing memory is touched.
        // The mapping outlives the descriptor, and is never unmapped (the
        // agent is PID 1 until the guest powers off).
        let window = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                MAILBOX_SIZE,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                mem.as_raw_fd(),
                offset,
            )
        };
        if window == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error()).context("map the job mailbox from /dev/mem");
        }
        Ok(Mailbox { window: window.cast() })
    }

    /// The job the host put in, if it put one, and the files it names.
    pub fn job(&self) -> anyhow::Result<Option<(Vec<u8>, Vec<u8>)>> {
        // SAFETY: the mapping is MAILBOX_SIZE bytes, live for the agent's
        // life. Nothing else writes it while the job is read: the VMM puts
        // the job in before the agent passes its snapshot point, and no
        // process of the job runs yet.
        let window = unsafe { std::slice::from_raw_parts(self.window, MAILBOX_SIZE) };
        let Some(job) = mailbox::take(window, Part::Job).context("read the job from the mailbox")? else {
            return Ok(None);
        };
        let files = mailbox::take(window, Part::Files).context("read the job's files from the mailbox")?;
        Ok(Some((job.to_vec(), files.unwrap_or_default().to_vec())))
    }

    /// Put the result in, for the VMM to read once the guest has stopped.
    pub fn put_result(&mut self, result: &[u8]) -> anyhow::Result<()> {
        // SAFETY: as in `job`; the job's processes have ended (the script's
        // pid namespace ended with it), and the agent is single-threaded.
        let window = unsafe { std::slice::from_raw_parts_mut(self.window, MAILBOX_SIZE) };
        mailbox::put(window, Part::Result, result).context("put the result in the mailbox")
    }
}
