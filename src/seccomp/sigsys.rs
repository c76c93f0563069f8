//! What happens when a filtered thread makes a forbidden system call: the
//! filter's default action traps (SIGSYS) and this handler says which thread
//! made which call, then ends the process with the internal-error exit code.
//!
//! Everything here is async-signal-safe: the thread's name is read from a
//! const-initialised thread-local set when the filter was installed, the
//! message is assembled in a stack buffer and written with one raw
//! `write(2)` to fd 2, and the process ends with `_exit` (exit_group).
//! Both calls are on every allow-list.

use crate::exit::Exit;
use std::cell::Cell;

/// Longest thread name kept for the message.
const NAME_MAX: usize = 32;

thread_local! {
    /// This thread's name, set by [`set_thread_name`] before its filter is
    /// installed. Const-initialised and without destructor, so reading it
    /// from a signal handler is a plain TLS load.
    static THREAD_NAME: Cell<([u8; NAME_MAX], usize)> = const { Cell::new(([0; NAME_MAX], 0)) };
}

/// Remember `name` for the message of this thread's SIGSYS handler.
pub(super) fn set_thread_name(name: &str) {
    let mut buf = [0u8; NAME_MAX];
    let n = name.len().min(NAME_MAX);
    buf[..n].copy_from_slice(&name.as_bytes()[..n]);
    THREAD_NAME.with(|c| c.set((buf, n)));
}

/// Offset of `si_syscall` in `siginfo_t` on x86_64, in `c_int`s: si_signo,
/// si_errno, si_code, padding, then `_sigsys { void *_call_addr; int
/// _syscall; unsigned _arch; }` (Firecracker reads it the same way).
const SI_OFF_SYSCALL: usize = 6;

/// A fixed-size message buffer: `write(2)` needs no allocation.
struct Message {
    buf: [u8; 160],
    len: usize,
}

impl Message {
    fn push(&mut self, bytes: &[u8]) {
        let n = bytes.len().min(self.buf.len() - self.len);
        self.buf[self.len..self.len + n].copy_from_slice(&bytes[..n]);
        self.len += n;
    }

    fn push_number(&mut self, mut v: i64) {
        if v < 0 {
            self.push(b"-");
            v = -v;
        }
        let mut digits = [0u8; 20];
        let mut i = digits.len();
        loop {
            i -= 1;
            digits[i] = b'0' + u8::try_from(v % 10).unwrap_or(0);
            v /= 10;
            if v == 0 {
                break;
            }
        }
        self.push(&digits[i..]);
    }
}

/// The message for a forbidden call `nr` from thread `name`.
fn message(name: &[u8], nr: i64) -> Message {
    let mut m = Message { buf: [0; 160], len: 0 };
    m.push(b"rootlayer: seccomp: thread ");
    m.push(if name.is_empty() { b"?" } else { name });
    m.push(b" made forbidden syscall ");
    m.push_number(nr);
    m.push(b" (");
    let syscall = super::syscall_names::NAMES.iter().find(|(n, _)| *n == nr).map_or("unknown", |(_, s)| s);
    m.push(syscall.as_bytes());
    m.push(b"); stopping (internal error)\n");
    m
}

extern "C" fn on_sigsys(_: libc::c_int, info: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo_t for SIGSYS (SA_SIGINFO);
    // for si_code SYS_SECCOMP its union holds `_sigsys`, whose `_syscall`
    // is the int at SI_OFF_SYSCALL.
    let nr = unsafe { *info.cast::<libc::c_int>().add(SI_OFF_SYSCALL) };
    let (name, len) = THREAD_NAME.with(Cell::get);
    let m = message(&name[..len], i64::from(nr));
    // SAFETY: write(2) from a valid buffer and _exit are async-signal-safe;
    // the process ends here, so nothing observes a half-handled state.
    unsafe {
        libc::write(libc::STDERR_FILENO, m.buf.as_ptr().cast(), m.len);
        libc::_exit(i32::from(Exit::Internal.code()));
    }
}

/// Install the SIGSYS handler (process-wide; once is enough).
pub fn install_handler() -> std::io::Result<()> {
    // SAFETY: a fully initialised sigaction with an async-signal-safe
    // SA_SIGINFO handler.
    let rc = unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction =
            on_sigsys as extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) as *const () as usize;
        sa.sa_flags = libc::SA_SIGINFO;
        libc::sigemptyset(&mut sa.sa_mask);
        libc::sigaction(libc::SIGSYS, &sa, std::ptr::null_mut())
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_names_the_thread_and_the_call() {
        let m = message(b"vcpu0", 41);
        assert_eq!(
            std::str::from_utf8(&m.buf[..m.len]).unwrap(),
            "rootlayer: seccomp: thread vcpu0 made forbidden syscall 41 (socket); stopping (internal error)\n"
        );
        let m = message(b"", 999);
        assert!(std::str::from_utf8(&m.buf[..m.len])
            .unwrap()
            .contains("thread ? made forbidden syscall 999 (unknown)"));
    }

    #[test]
    fn the_name_table_is_sorted_and_matches_libc() {
        assert!(super::super::syscall_names::NAMES.windows(2).all(|w| w[0].0 < w[1].0));
        for (nr, name) in [(libc::SYS_socket, "socket"), (libc::SYS_fork, "fork"), (libc::SYS_execve, "execve")] {
            assert!(super::super::syscall_names::NAMES.contains(&(nr, name)), "{name}");
        }
    }
}
