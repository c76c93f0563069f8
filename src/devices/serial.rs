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

/// A snapshot's UART state no UART can be in.
#[derive(Debug, thiserror::Error)]
#[error("the snapshot's serial port state is not one a UART can be in")]
pub struct BadSerialState;

/// The UART's registers as a snapshot keeps them; restored in place, into
/// this port's own console sink and interrupt line.
impl crate::persist::Persist for SerialDevice {
    type State = SerialState;
    type Error = BadSerialState;
    fn save(&mut self) -> Result<SerialState, BadSerialState> {
        Ok(SerialState::from(&self.inner.state()))
    }
    fn restore(&mut self, state: &SerialState) -> Result<(), BadSerialState> {
        let irq = self.inner.interrupt_evt().0.try_clone().map_err(|_| BadSerialState)?;
        let spare = EventFdTrigger(irq.try_clone().map_err(|_| BadSerialState)?);
        let (placeholder, _) = ConsoleSink::new(super::console::Echo::Off, None, std::time::Instant::now());
        let sink = std::mem::replace(&mut self.inner, Serial::new(spare, placeholder)).into_writer();
        let state = vm_superio::serial::SerialState::from(state);
        // Refused: more input than the FIFO holds (the port keeps the
        // placeholder, and the machine is not run).
        self.inner = Serial::from_state(&state, EventFdTrigger(irq), vm_superio::serial::NoEvents, sink)
            .map_err(|_| BadSerialState)?;
        Ok(())
    }
}

/// vm-superio's `SerialState`, with serde.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SerialState {
    pub registers: [u8; 9],
    pub in_buffer: Vec<u8>,
}

impl From<&vm_superio::serial::SerialState> for SerialState {
    fn from(s: &vm_superio::serial::SerialState) -> Self {
        SerialState {
            registers: [
                s.baud_divisor_low,
                s.baud_divisor_high,
                s.interrupt_enable,
                s.interrupt_identification,
                s.line_control,
                s.line_status,
                s.modem_control,
                s.modem_status,
                s.scratch,
            ],
            in_buffer: s.in_buffer.clone(),
        }
    }
}

impl From<&SerialState> for vm_superio::serial::SerialState {
    fn from(s: &SerialState) -> Self {
        let [baud_divisor_low, baud_divisor_high, interrupt_enable, interrupt_identification, line_control, line_status, modem_control, modem_status, scratch] =
            s.registers;
        vm_superio::serial::SerialState {
            baud_divisor_low,
            baud_divisor_high,
            interrupt_enable,
            interrupt_identification,
            line_control,
            line_status,
            modem_control,
            modem_status,
            scratch,
            in_buffer: s.in_buffer.clone(),
        }
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
    use crate::persist::Persist;
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

    #[test]
    fn a_restored_uart_has_the_registers_the_driver_set() {
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let (sink, _) = ConsoleSink::new(Echo::Off, None, Instant::now());
        let mut dev = SerialDevice::new(irq.try_clone().unwrap(), sink);
        dev.write(3, &[0x83]); // LCR: DLAB, 8 bits
        dev.write(0, &[0x01]); // divisor low
        dev.write(3, &[0x03]);
        dev.write(1, &[0x02]);
        dev.write(7, &[0x5a]); // scratch
        let state = dev.save().unwrap();
        let (sink, log) = ConsoleSink::new(Echo::Off, None, Instant::now());
        let json = serde_json::to_string(&state).unwrap();
        let back: SerialState = serde_json::from_str(&json).unwrap();
        let mut restored = SerialDevice::new(irq, sink);
        restored.restore(&back).unwrap();
        let mut b = [0u8];
        for (reg, want) in [(1, 0x02), (3, 0x03), (7, 0x5a)] {
            restored.read(reg, &mut b);
            assert_eq!(b[0], want, "register {reg}");
        }
        restored.write(0, b"x");
        restored.write(0, b"\n");
        assert_eq!(log.lock().unwrap().tail(), vec!["x".to_string()], "writes into the new sink");
        let full = SerialState { in_buffer: vec![0; 1000], ..state };
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let (sink, _) = ConsoleSink::new(Echo::Off, None, Instant::now());
        assert!(SerialDevice::new(irq, sink).restore(&full).is_err());
    }
}
