//! What the guest prints on its serial console: echoed live to the host's
//! stderr line by line, the last lines kept for error reports, and the few
//! lines the VMM acts on (the agent's ready line, a kernel panic) noted.

use std::collections::VecDeque;
use std::io::{self, Write};
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// The agent's ready line starts with this and contains ` ready`.
pub const READY_PREFIX: &str = "rootlayer-agent ";
const PANIC_MARKER: &str = "Kernel panic - not syncing";
/// The agent's last line: `rootlayer-agent: exit status N`.
const STATUS_PREFIX: &str = "rootlayer-agent: exit status ";
const OOM_MARKER: &str = "Out of memory: Killed process";
/// Lines kept for error reports.
pub const TAIL_LINES: usize = 40;
/// Longest line kept; the rest of an overlong line is dropped.
const MAX_LINE: usize = 4096;

/// Where echoed lines go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Echo {
    /// Print each line on the host's stderr.
    Stderr,
    /// Keep lines only (tests, `--quiet`).
    Off,
}

/// Shared record of the console.
#[derive(Debug)]
pub struct ConsoleLog {
    start: Instant,
    tail: VecDeque<String>,
    ready_at: Option<std::time::Duration>,
    ready_line: Option<String>,
    panic_line: Option<String>,
    oom_seen: bool,
    agent_status: Option<i32>,
    bytes: u64,
}

impl ConsoleLog {
    fn new(start: Instant) -> Self {
        Self {
            start,
            tail: VecDeque::with_capacity(TAIL_LINES),
            ready_at: None,
            ready_line: None,
            panic_line: None,
            oom_seen: false,
            agent_status: None,
            bytes: 0,
        }
    }

    /// The last lines printed, oldest first.
    pub fn tail(&self) -> Vec<String> {
        self.tail.iter().cloned().collect()
    }
    /// Time from VMM start to the agent's ready line, if seen.
    pub fn ready_at(&self) -> Option<std::time::Duration> {
        self.ready_at
    }
    pub fn ready_line(&self) -> Option<&str> {
        self.ready_line.as_deref()
    }
    /// The kernel's panic line, if it panicked.
    pub fn panic_line(&self) -> Option<&str> {
        self.panic_line.as_deref()
    }
    /// Whether the kernel's OOM killer ran.
    pub fn oom_seen(&self) -> bool {
        self.oom_seen
    }
    /// The status the agent reported before powering off.
    pub fn agent_status(&self) -> Option<i32> {
        self.agent_status
    }
    /// Bytes the guest wrote to the console.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    fn take_line(&mut self, line: String) {
        if self.ready_line.is_none() && line.starts_with(READY_PREFIX) && line.contains(" ready") {
            self.ready_at = Some(self.start.elapsed());
            self.ready_line = Some(line.clone());
        }
        if self.panic_line.is_none() && line.contains(PANIC_MARKER) {
            self.panic_line = Some(line.clone());
        }
        if let Some(code) = line.strip_prefix(STATUS_PREFIX) {
            self.agent_status = code.trim().parse().ok();
        }
        if line.contains(OOM_MARKER) {
            self.oom_seen = true;
        }
        if self.tail.len() == TAIL_LINES {
            self.tail.pop_front();
        }
        self.tail.push_back(line);
    }
}

/// The serial port's output: splits bytes into lines and records them.
#[derive(Debug)]
pub struct ConsoleSink {
    log: Arc<Mutex<ConsoleLog>>,
    echo: Echo,
    line: Vec<u8>,
}

impl ConsoleSink {
    /// A sink and the shared log it fills. `start` is the VMM's start time,
    /// against which the ready line is timed.
    pub fn new(echo: Echo, start: Instant) -> (Self, Arc<Mutex<ConsoleLog>>) {
        let log = Arc::new(Mutex::new(ConsoleLog::new(start)));
        (Self { log: log.clone(), echo, line: Vec::new() }, log)
    }

    fn finish_line(&mut self) {
        let text = String::from_utf8_lossy(&self.line).trim_end_matches('\r').to_string();
        self.line.clear();
        if self.echo == Echo::Stderr {
            // The builder's log is the user interface here; a failed write to
            // stderr must not stop the guest.
            let _ = writeln!(io::stderr().lock(), "{text}");
        }
        self.log.lock().expect("console log poisoned").take_line(text);
    }
}

impl Write for ConsoleSink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.log.lock().expect("console log poisoned").bytes += buf.len() as u64;
        for &b in buf {
            match b {
                b'\n' => self.finish_line(),
                _ if self.line.len() < MAX_LINE => self.line.push(b),
                _ => {}
            }
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for ConsoleSink {
    fn drop(&mut self) {
        if !self.line.is_empty() {
            self.finish_line();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_lines_and_notes_ready_and_panic() {
        let (mut sink, log) = ConsoleSink::new(Echo::Off, Instant::now());
        sink.write_all(b"[    0.1] booting\r\nrootlayer-agent 0.1.0 ready (uptime 1.2s)\r\n").unwrap();
        sink.write_all(b"Kernel panic - not syncing: Attempted to kill init!\n").unwrap();
        let log = log.lock().unwrap();
        assert_eq!(log.tail().len(), 3);
        assert_eq!(log.tail()[0], "[    0.1] booting");
        assert_eq!(log.ready_line(), Some("rootlayer-agent 0.1.0 ready (uptime 1.2s)"));
        assert!(log.ready_at().is_some());
        assert!(log.panic_line().unwrap().contains("Attempted to kill init"));
        assert!(!log.oom_seen());
        assert_eq!(log.agent_status(), None);
    }

    #[test]
    fn notes_the_agent_status() {
        let (mut sink, log) = ConsoleSink::new(Echo::Off, Instant::now());
        writeln!(sink, "rootlayer-agent: exit status 70\r").unwrap();
        assert_eq!(log.lock().unwrap().agent_status(), Some(70));
    }

    #[test]
    fn keeps_only_the_tail_and_bounds_line_length() {
        let (mut sink, log) = ConsoleSink::new(Echo::Off, Instant::now());
        for i in 0..(TAIL_LINES + 5) {
            writeln!(sink, "line {i}").unwrap();
        }
        sink.write_all(&vec![b'x'; MAX_LINE * 2]).unwrap();
        drop(sink);
        let log = log.lock().unwrap();
        let tail = log.tail();
        assert_eq!(tail.len(), TAIL_LINES);
        assert_eq!(tail[0], "line 6");
        assert_eq!(tail.last().unwrap().len(), MAX_LINE);
    }

    #[test]
    fn a_line_merely_mentioning_the_agent_is_not_ready() {
        let (mut sink, log) = ConsoleSink::new(Echo::Off, Instant::now());
        writeln!(sink, "rootlayer-agent: error: mount /proc").unwrap();
        assert!(log.lock().unwrap().ready_line().is_none());
    }
}
