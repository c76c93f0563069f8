//! Port-I/O and MMIO buses: an address range maps to one device.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// A device reachable through a bus. `offset` is relative to the start of the
/// range the device was inserted at.
pub trait BusDevice: Send {
    /// Fill `data` from the device. Devices leave bytes they do not implement
    /// as the bus pre-set them (all ones, like an absent ISA device).
    fn read(&mut self, offset: u64, data: &mut [u8]);
    /// Take `data` from the guest.
    fn write(&mut self, offset: u64, data: &[u8]);
}

/// Errors building a bus.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BusError {
    #[error("bus range {base:#x}+{len:#x} is empty or wraps")]
    BadRange { base: u64, len: u64 },
    #[error("bus range {base:#x}+{len:#x} overlaps another device")]
    Overlap { base: u64, len: u64 },
}

type SharedDevice = Arc<Mutex<dyn BusDevice>>;

/// Address ranges to devices. Lookups are by the highest base at or below the
/// address, then a length check, so ranges must not overlap.
#[derive(Default, Clone)]
pub struct Bus {
    devices: BTreeMap<u64, (u64, SharedDevice)>,
}

impl std::fmt::Debug for Bus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ranges: Vec<_> = self.devices.iter().map(|(b, (l, _))| (*b, *l)).collect();
        f.debug_struct("Bus").field("ranges", &ranges).finish()
    }
}

impl Bus {
    pub fn new() -> Self {
        Self::default()
    }

    /// Map `[base, base + len)` to `device`.
    pub fn insert(&mut self, device: SharedDevice, base: u64, len: u64) -> Result<(), BusError> {
        let end = base.checked_add(len).filter(|_| len > 0).ok_or(BusError::BadRange { base, len })?;
        let overlaps_prev = self.devices.range(..end).next_back().is_some_and(|(b, (l, _))| b + l > base);
        if overlaps_prev {
            return Err(BusError::Overlap { base, len });
        }
        self.devices.insert(base, (len, device));
        Ok(())
    }

    fn find(&self, addr: u64, size: usize) -> Option<(u64, &SharedDevice)> {
        let (base, (len, dev)) = self.devices.range(..=addr).next_back()?;
        let offset = addr - base;
        let end = offset.checked_add(size as u64)?;
        (end <= *len).then_some((offset, dev))
    }

    /// Read from the device at `addr`; false if no device covers the access
    /// (then `data` is all ones).
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        data.fill(0xff);
        match self.find(addr, data.len()) {
            Some((offset, dev)) => {
                dev.lock().expect("device lock poisoned").read(offset, data);
                true
            }
            None => false,
        }
    }

    /// Write to the device at `addr`; false if no device covers the access.
    pub fn write(&self, addr: u64, data: &[u8]) -> bool {
        match self.find(addr, data.len()) {
            Some((offset, dev)) => {
                dev.lock().expect("device lock poisoned").write(offset, data);
                true
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Recorder {
        last: Vec<(u64, Vec<u8>)>,
    }
    impl BusDevice for Recorder {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            data.fill(u8::try_from(offset).unwrap());
        }
        fn write(&mut self, offset: u64, data: &[u8]) {
            self.last.push((offset, data.to_vec()));
        }
    }

    #[test]
    fn routes_by_range_and_offset() {
        let dev = Arc::new(Mutex::new(Recorder::default()));
        let mut bus = Bus::new();
        bus.insert(dev.clone(), 0x3f8, 8).unwrap();
        let mut b = [0u8; 1];
        assert!(bus.read(0x3fd, &mut b));
        assert_eq!(b, [5]);
        assert!(bus.write(0x3f8, &[7]));
        assert_eq!(dev.lock().unwrap().last, vec![(0, vec![7])]);
    }

    #[test]
    fn misses_read_as_all_ones() {
        let bus = Bus::new();
        let mut b = [0u8; 2];
        assert!(!bus.read(0x80, &mut b));
        assert_eq!(b, [0xff, 0xff]);
        assert!(!bus.write(0x80, &[1]));
    }

    #[test]
    fn access_straddling_the_end_is_a_miss() {
        let dev = Arc::new(Mutex::new(Recorder::default()));
        let mut bus = Bus::new();
        bus.insert(dev, 0x1000, 0x10).unwrap();
        let mut b = [0u8; 4];
        assert!(!bus.read(0x100e, &mut b));
        assert!(bus.read(0x100c, &mut b));
        assert!(!bus.read(u64::MAX - 1, &mut b));
    }

    #[test]
    fn rejects_overlaps_and_empty_ranges() {
        let mut bus = Bus::new();
        let d = || Arc::new(Mutex::new(Recorder::default())) as SharedDevice;
        bus.insert(d(), 0x100, 0x10).unwrap();
        assert_eq!(bus.insert(d(), 0x10f, 1), Err(BusError::Overlap { base: 0x10f, len: 1 }));
        assert_eq!(bus.insert(d(), 0xf8, 0x10), Err(BusError::Overlap { base: 0xf8, len: 0x10 }));
        assert_eq!(bus.insert(d(), 0x200, 0), Err(BusError::BadRange { base: 0x200, len: 0 }));
        assert_eq!(bus.insert(d(), u64::MAX, 2), Err(BusError::BadRange { base: u64::MAX, len: 2 }));
        bus.insert(d(), 0x110, 0x10).unwrap();
    }
}
