//! The 8250 UART on COM1 (I/O 0x3f8, IRQ 4), from vm-superio, writing into a
//! [`ConsoleSink`]. Guest input is not wired: the agent takes its job from
//! the exchange share, not the console.

use super::console::ConsoleSink;
use super::BusDevice;
use vm_superio::{Serial, Trigger};
use vmm_sys_util::eventfd::EventFd;

pub const COM1_PORT_BASE: u64 = 0x3f8;
pub const COM1_PORT_LEN: u64 = 8;
pub const COM1_IRQ: u32 = 4;

/// An interrupt line raised by writing an eventfd (bound to a GSI with irqfd
/// by the VMM).
#[derive(Debug)]
pub struct EventFdTrigger(pub EventFd);

impl Trigger for EventFdTrigger {
    type E = std::io::Error;
    fn trigger(&self) -> std::io::Result<()> {
        self.0.write(1)
    }
}

/// COM1 as a bus device.
pub struct SerialDevice {
    inner: Serial<EventFdTrigger, vm_superio::serial::NoEvents, ConsoleSink>,
}

impl std::fmt::Debug for SerialDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SerialDevice").finish_non_exhaustive()
    }
}

impl SerialDevice {
    pub fn new(irq: EventFd, sink: ConsoleSink) -> Self {
        Self { inner: Serial::new(EventFdTrigger(irq), sink) }
    }
}

impl BusDevice for SerialDevice {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if let (Ok(off), [b]) = (u8::try_from(offset), data) {
            *b = self.inner.read(off);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let (Ok(off), [b]) = (u8::try_from(offset), data) {
            // The only error is a failed interrupt; the guest sees a lost
            // THRE interrupt, nothing the host can mend.
            let _ = self.inner.write(off, *b);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::console::Echo;
    use std::time::Instant;

    #[test]
    fn guest_bytes_reach_the_console_and_raise_thre() {
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let (sink, log) = ConsoleSink::new(Echo::Off, None, Instant::now());
        let mut dev = SerialDevice::new(irq.try_clone().unwrap(), sink);
        dev.write(1, &[0x02]); // IER: THR empty interrupt
        for b in b"hi\n" {
            dev.write(0, &[*b]);
        }
        assert_eq!(log.lock().unwrap().tail(), vec!["hi".to_string()]);
        assert!(irq.read().unwrap() >= 1);
        let mut lsr = [0u8];
        dev.read(5, &mut lsr);
        assert_ne!(lsr[0] & 0x20, 0, "THR empty");
    }
}
