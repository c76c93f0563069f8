//! What the guest prints on its serial console: echoed live to the host's
//! stderr line by line, the last lines kept for error reports, and the few
//! lines the VMM acts on (the agent's ready line, a kernel panic) noted.
//!
//! The echo is rate-limited ([`EchoLimit`]): a script that prints forever
//! must not fill the disk that holds the builder's log. Lines over the rate
//! are dropped from the echo (not from the record), and stderr says so once
//! when dropping starts and again, with counts, when it ends.

use std::collections::VecDeque;
use std::io::{self, Write};
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// The agent's ready line starts with this and contains ` ready`.
pub use crate::protocol::AGENT_READY_PREFIX as READY_PREFIX;
use crate::protocol::{AGENT_READY_WORD, AGENT_STATUS_PREFIX as STATUS_PREFIX};
const PANIC_MARKER: &str = "Kernel panic - not syncing";
const OOM_MARKER: &str = "Out of memory: Killed process";
/// Lines kept for error reports.
pub const TAIL_LINES: usize = 40;
/// Longest line kept; the rest of an overlong line is dropped.
pub const MAX_LINE: usize = 4096;

/// Where echoed lines go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Echo {
    /// Print each line on the host's stderr.
    Stderr,
    /// Keep lines only (tests, `--quiet`).
    Off,
}

/// The echo's rate limit: a steady rate in bytes per second, after a burst
/// of [`EchoLimit::BURST_SECONDS`] at that rate (a token bucket).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EchoLimit {
    pub bytes_per_sec: u64,
}

impl EchoLimit {
    pub const BURST_SECONDS: u64 = 16;
    /// 64 KiB/s after a 1 MiB burst: far more than a build log needs, and at
    /// most about 225 MiB over the default one-hour timeout.
    pub const DEFAULT: EchoLimit = EchoLimit { bytes_per_sec: 64 << 10 };

    fn burst(self) -> u64 {
        self.bytes_per_sec.saturating_mul(Self::BURST_SECONDS).max(2 * MAX_LINE as u64)
    }
}

/// What the rate limit says of one line.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    /// Echo it; `resumed` counts the lines and bytes dropped just before.
    Echo { resumed: Option<(u64, u64)> },
    /// Drop it; `first` when dropping starts with this line.
    Drop { first: bool },
}

/// Token bucket of the echo. Once it drops a line it keeps dropping until
/// the bucket is half full again, so a steady flood costs one pair of notes
/// per half burst, not one per line.
#[derive(Debug)]
struct Throttle {
    limit: EchoLimit,
    tokens: f64,
    last: Instant,
    dropped: Option<(u64, u64)>,
}

impl Throttle {
    fn new(limit: EchoLimit, now: Instant) -> Self {
        Self { limit, tokens: limit.burst() as f64, last: now, dropped: None }
    }

    fn admit(&mut self, now: Instant, bytes: u64) -> Verdict {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.limit.bytes_per_sec as f64).min(self.limit.burst() as f64);
        let needed = if self.dropped.is_some() { bytes.max(self.limit.burst() / 2) } else { bytes };
        if self.tokens >= needed as f64 {
            self.tokens -= bytes as f64;
            return Verdict::Echo { resumed: self.dropped.take() };
        }
        let first = self.dropped.is_none();
        let (lines, total) = self.dropped.get_or_insert((0, 0));
        *lines += 1;
        *total += bytes;
        Verdict::Drop { first }
    }
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
        if self.ready_line.is_none() && line.starts_with(READY_PREFIX) && line.contains(AGENT_READY_WORD) {
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
    throttle: Option<Throttle>,
    line: Vec<u8>,
}

impl ConsoleSink {
    /// A sink and the shared log it fills. `start` is the VMM's start time,
    /// against which the ready line is timed; `limit` bounds the echo (None:
    /// no bound).
    pub fn new(echo: Echo, limit: Option<EchoLimit>, start: Instant) -> (Self, Arc<Mutex<ConsoleLog>>) {
        let log = Arc::new(Mutex::new(ConsoleLog::new(start)));
        let throttle = limit.map(|l| Throttle::new(l, start));
        (Self { log: log.clone(), echo, throttle, line: Vec::new() }, log)
    }

    fn finish_line(&mut self) {
        let text = String::from_utf8_lossy(&self.line).trim_end_matches('\r').to_string();
        self.line.clear();
        if self.echo == Echo::Stderr {
            let verdict = match &mut self.throttle {
                Some(t) => t.admit(Instant::now(), text.len() as u64 + 1),
                None => Verdict::Echo { resumed: None },
            };
            // The builder's log is the user interface here; a failed write to
            // stderr must not stop the guest.
            let mut err = io::stderr().lock();
            match verdict {
                Verdict::Echo { resumed } => {
                    if let Some(dropped) = resumed {
                        let _ = writeln!(err, "{}", dropped_note(dropped));
                    }
                    let _ = writeln!(err, "{text}");
                }
                Verdict::Drop { first: true } => {
                    let rate = self.throttle.as_ref().map_or(0, |t| t.limit.bytes_per_sec >> 10);
                    let _ = writeln!(
                        err,
                        "rootlayer: guest output over {rate} KiB/s: dropping lines until it slows down (--max-log-rate)"
                    );
                }
                Verdict::Drop { first: false } => {}
            }
        }
        self.log.lock().expect("console log poisoned").take_line(text);
    }
}

fn dropped_note((lines, bytes): (u64, u64)) -> String {
    format!("rootlayer: dropped {lines} lines ({bytes} bytes) of guest output")
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
        if let Some(dropped) = self.throttle.as_mut().and_then(|t| t.dropped.take()) {
            if self.echo == Echo::Stderr {
                let _ = writeln!(io::stderr().lock(), "{}", dropped_note(dropped));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn splits_lines_and_notes_ready_and_panic() {
        let (mut sink, log) = ConsoleSink::new(Echo::Off, None, Instant::now());
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
        let (mut sink, log) = ConsoleSink::new(Echo::Off, None, Instant::now());
        writeln!(sink, "rootlayer-agent: exit status 70\r").unwrap();
        assert_eq!(log.lock().unwrap().agent_status(), Some(70));
    }

    #[test]
    fn keeps_only_the_tail_and_bounds_line_length() {
        let (mut sink, log) = ConsoleSink::new(Echo::Off, None, Instant::now());
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
        let (mut sink, log) = ConsoleSink::new(Echo::Off, None, Instant::now());
        writeln!(sink, "rootlayer-agent: error: mount /proc").unwrap();
        assert!(log.lock().unwrap().ready_line().is_none());
    }

    #[test]
    fn the_echo_gets_a_burst_then_the_steady_rate() {
        let t0 = Instant::now();
        let limit = EchoLimit { bytes_per_sec: 1000 };
        let mut t = Throttle::new(limit, t0);
        let burst = limit.burst();
        assert_eq!(burst, 16_000);
        assert_eq!(EchoLimit { bytes_per_sec: 1 }.burst(), 2 * MAX_LINE as u64, "a burst holds two whole lines");
        // The burst goes at once, then the next line is dropped.
        assert_eq!(t.admit(t0, burst), Verdict::Echo { resumed: None });
        assert_eq!(t.admit(t0, 10), Verdict::Drop { first: true });
        assert_eq!(t.admit(t0, 20), Verdict::Drop { first: false });
        // Dropping goes on until the bucket is half full again (8 s at this
        // rate); then a line passes and reports what was dropped before it.
        let t1 = t0 + Duration::from_millis(7900);
        assert_eq!(t.admit(t1, 100), Verdict::Drop { first: false });
        let t1 = t0 + Duration::from_millis(8000);
        assert_eq!(t.admit(t1, 100), Verdict::Echo { resumed: Some((3, 130)) });
        assert_eq!(t.admit(t1, 7900), Verdict::Echo { resumed: None });
        assert_eq!(t.admit(t1, 1), Verdict::Drop { first: true });
        // A long pause refills only up to the burst.
        let t2 = t1 + Duration::from_secs(3600);
        assert_eq!(t.admit(t2, burst), Verdict::Echo { resumed: Some((1, 1)) });
        assert_eq!(t.admit(t2, 1), Verdict::Drop { first: true });
        let t3 = t2 + Duration::from_secs(1);
        assert_eq!(t.admit(t3, 1), Verdict::Drop { first: false }, "not yet half full");
    }

    #[test]
    fn over_a_long_flood_the_echo_stays_within_burst_plus_rate() {
        let t0 = Instant::now();
        let limit = EchoLimit::DEFAULT;
        let mut t = Throttle::new(limit, t0);
        let (mut echoed, mut offered) = (0u64, 0u64);
        // 100 s of 81-byte lines at 10 MB/s.
        for i in 0..12_345_679u64 {
            let now = t0 + Duration::from_nanos(i * 8_100);
            offered += 81;
            if let Verdict::Echo { .. } = t.admit(now, 81) {
                echoed += 81;
            }
        }
        let bound = limit.burst() + 100 * limit.bytes_per_sec;
        assert!(echoed <= bound, "echoed {echoed} > {bound}");
        // At most the half burst that ends a drop episode is left unused.
        let slack = limit.burst() / 2 + 2 * 81;
        assert!(echoed >= bound - slack, "the limit is not stricter than it says: {echoed} of {bound}");
        assert!(offered > 10 * echoed);
    }

    #[test]
    fn the_record_keeps_every_line_even_when_the_echo_drops_it() {
        let (mut sink, log) = ConsoleSink::new(Echo::Stderr, Some(EchoLimit { bytes_per_sec: 1 }), Instant::now());
        for i in 0..100 {
            writeln!(sink, "line {i}").unwrap();
        }
        writeln!(sink, "Kernel panic - not syncing: late").unwrap();
        let log = log.lock().unwrap();
        assert_eq!(log.tail().last().unwrap(), "Kernel panic - not syncing: late");
        assert!(log.panic_line().is_some());
    }
}
