//! `console`: what the guest prints on its serial console, as the host
//! reads it: the UART ([`SerialDevice`]) into the [`ConsoleSink`], which
//! splits lines and notes the agent's ready line, its exit status, a kernel
//! panic and the OOM killer; and `rootlayer boot`'s verdict on those
//! ([`crate::job::verdict::boot`]).
//!
//! Input: `mode: u8`, then for mode 0 (bit 0 clear) chunks `n: u8` + `n`
//! bytes written to the sink as the serial port's writes arrive, in pieces
//! that split lines anywhere; for mode 1, UART register writes `op: u8`
//! (bits 0-2: the register, bit 7: a read instead) and `value: u8`, as the
//! guest's 8250 driver makes them.
//!
//! Invariants: no panic; bounded memory for any stream: at most
//! [`TAIL_LINES`] lines kept, each at most [`MAX_LINE`] bytes of guest
//! output (as characters); the record agrees with a plain model of the
//! stream (the bytes the UART passes, their lines, the first ready and
//! panic lines, the last status, any OOM line); the console decides no
//! verdict: a boot the agent reported clean is clean whatever it printed,
//! one it did not report never is (a panic line names the cause then).

use super::take_u8;
use crate::devices::console::{ConsoleSink, Echo, MAX_LINE, READY_PREFIX, TAIL_LINES};
use crate::devices::serial::SerialDevice;
use crate::devices::BusDevice;
use crate::protocol::{AGENT_READY_WORD, AGENT_STATUS_PREFIX};
use crate::vmm::{BootPath, GuestExit, RunEnd, RunReport};
use std::collections::VecDeque;
use std::io::Write;
use std::time::{Duration, Instant};
use vmm_sys_util::eventfd::EventFd;

/// The record a plain reading of the stream gives.
#[derive(Debug, Default)]
struct Model {
    bytes: u64,
    line: Vec<u8>,
    tail: VecDeque<String>,
    ready: Option<String>,
    panic: Option<String>,
    status: Option<i32>,
    oom: bool,
}

impl Model {
    fn feed(&mut self, data: &[u8]) {
        self.bytes += data.len() as u64;
        for &b in data {
            if b == b'\n' {
                self.finish();
            } else {
                self.line.push(b);
            }
        }
    }

    fn finish(&mut self) {
        let raw = std::mem::take(&mut self.line);
        let text = String::from_utf8_lossy(&raw[..raw.len().min(MAX_LINE)]).trim_end_matches('\r').to_string();
        if self.ready.is_none() && text.starts_with(READY_PREFIX) && text.contains(AGENT_READY_WORD) {
            self.ready = Some(text.clone());
        }
        if self.panic.is_none() && text.contains("Kernel panic - not syncing") {
            self.panic = Some(text.clone());
        }
        if let Some(code) = text.strip_prefix(AGENT_STATUS_PREFIX) {
            self.status = code.trim().parse().ok();
        }
        self.oom |= text.contains("Out of memory: Killed process");
        if self.tail.len() == TAIL_LINES {
            self.tail.pop_front();
        }
        self.tail.push_back(text);
    }

    fn end(&mut self) {
        if !self.line.is_empty() {
            self.finish();
        }
    }
}

pub fn console(mut data: &[u8]) {
    let Some(mode) = take_u8(&mut data) else { return };
    let (mut sink, log) = ConsoleSink::new(Echo::Off, None, Instant::now());
    let mut model = Model::default();
    if mode & 1 == 0 {
        while let Some(n) = take_u8(&mut data) {
            let chunk = super::take(&mut data, usize::from(n));
            sink.write_all(chunk).expect("the sink takes every write");
            model.feed(chunk);
        }
        drop(sink);
    } else {
        let irq = EventFd::new(libc::EFD_NONBLOCK).expect("eventfd");
        let mut uart = SerialDevice::new(irq, sink);
        let (mut lcr, mut mcr) = (0u8, 0u8);
        while let (Some(op), Some(value)) = (take_u8(&mut data), take_u8(&mut data)) {
            let reg = op & 7;
            if op & 0x80 != 0 {
                let mut b = [0u8];
                uart.read(u64::from(reg), &mut b);
                continue;
            }
            uart.write(u64::from(reg), &[value]);
            match reg {
                // The transmit register, unless the divisor latch or the
                // loopback takes the byte.
                0 if lcr & 0x80 == 0 && mcr & 0x10 == 0 => model.feed(&[value]),
                3 => lcr = value,
                4 => mcr = value,
                _ => {}
            }
        }
        drop(uart);
    }
    model.end();
    let record = log.lock().expect("console log");
    let tail = record.tail();
    assert!(tail.len() <= TAIL_LINES, "{} lines kept", tail.len());
    for line in &tail {
        assert!(line.chars().count() <= MAX_LINE, "a kept line of {} characters", line.chars().count());
    }
    assert_eq!(record.bytes(), model.bytes, "bytes counted");
    assert_eq!(tail, Vec::from(model.tail.clone()), "the kept lines");
    assert_eq!(record.ready_line(), model.ready.as_deref(), "the ready line");
    assert_eq!(record.ready_at().is_some(), model.ready.is_some(), "the ready time");
    assert_eq!(record.panic_line(), model.panic.as_deref(), "the panic line");
    assert_eq!(record.agent_status(), model.status, "the agent's status");
    assert_eq!(record.oom_seen(), model.oom, "the OOM killer");
    drop(record);
    let report = RunReport {
        end: RunEnd::Exited(GuestExit::Reset),
        wall: Duration::from_secs(1),
        console: log,
        peak_rss_kib: None,
        guest_rss_kib: None,
        xstate: None,
        boot: BootPath::Cold,
        started: true,
        result: Ok(None),
        teardown: crate::vmm::config::Teardown::default(),
    };
    // The console decides no verdict the agent reported: a clean result
    // is a clean boot whatever the guest printed; without one, nothing the
    // guest printed makes it clean.
    let host = crate::job::verdict::HostFacts { timeout: 60, output_exceeded: None };
    let reported = crate::protocol::JobResult::default();
    let verdict = crate::job::verdict::boot(&report, Some(reported), host);
    assert_eq!(verdict.exit, crate::exit::Exit::Ok, "verdict {verdict:?} for {model:?}");
    let verdict = crate::job::verdict::boot(&report, None, host);
    assert_ne!(verdict.exit, crate::exit::Exit::Ok, "verdict {verdict:?} for {model:?}");
    let panicked = verdict.exit == crate::exit::Exit::GuestPanic;
    assert_eq!(panicked, model.panic.is_some(), "a panic line, only without a result: {verdict:?}");
}
