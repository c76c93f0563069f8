//! Just enough of the i8042 keyboard controller for the guest to reset the
//! machine: with `reboot=k` the kernel polls the status port until the input
//! buffer is empty, then writes the pulse-reset command 0xFE. The VMM treats
//! that reset as the guest's clean exit (the agent's power-off path).

use super::BusDevice;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// I/O ports 0x60-0x64.
pub const I8042_PORT_BASE: u64 = 0x60;
pub const I8042_PORT_LEN: u64 = 5;
const STATUS_OFFSET: u64 = 4;
const CMD_RESET_CPU: u8 = 0xfe;

#[derive(Debug)]
pub struct I8042 {
    reset: Arc<AtomicBool>,
}

impl I8042 {
    /// `reset` is set once the guest asks for a CPU reset.
    pub fn new(reset: Arc<AtomicBool>) -> Self {
        Self { reset }
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        // Status 0: output buffer empty, input buffer empty; data port 0.
        data.fill(0);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset == STATUS_OFFSET && data.first() == Some(&CMD_RESET_CPU) {
            self.reset.store(true, Ordering::SeqCst);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pulse_reset_on_command_port_requests_reset() {
        let flag = Arc::new(AtomicBool::new(false));
        let mut dev = I8042::new(flag.clone());
        let mut status = [0xffu8];
        dev.read(STATUS_OFFSET, &mut status);
        assert_eq!(status, [0], "input buffer must read as empty");
        dev.write(0, &[CMD_RESET_CPU]);
        assert!(!flag.load(Ordering::SeqCst), "0xfe on the data port is not a reset");
        dev.write(STATUS_OFFSET, &[0xd1]);
        assert!(!flag.load(Ordering::SeqCst));
        dev.write(STATUS_OFFSET, &[CMD_RESET_CPU]);
        assert!(flag.load(Ordering::SeqCst));
    }
}
