//! The virtio-mmio transport, version 2 (virtio 1.x "modern" only; virtio
//! spec 4.2.2). One 4 KiB window per device; the guest finds it through
//! `virtio_mmio.device=4K@ADDR:IRQ` on the kernel command line.
//!
//! Everything the guest writes is checked here: queue sizes, ring addresses
//! (validated against guest memory before activation), feature bits (only
//! offered ones, VERSION_1 required), and the status state machine.

use super::{ActivateContext, Interrupt, VirtioDevice, VIRTIO_F_VERSION_1};
use crate::devices::BusDevice;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

const MMIO_MAGIC_VALUE: u32 = 0x7472_6976; // "virt"
const MMIO_VERSION: u32 = 2;
const VENDOR_ID: u32 = 0x4c52_4f52; // "RORL"
const CONFIG_SPACE_OFFSET: u64 = 0x100;

const STATUS_ACKNOWLEDGE: u32 = 1;
const STATUS_DRIVER: u32 = 2;
const STATUS_DRIVER_OK: u32 = 4;
const STATUS_FEATURES_OK: u32 = 8;
const STATUS_NEEDS_RESET: u32 = 0x40;
const STATUS_FAILED: u32 = 0x80;

/// A virtio device behind its MMIO register window.
pub struct MmioTransport {
    device: Box<dyn VirtioDevice>,
    mem: GuestMemoryMmap,
    interrupt: Interrupt,
    queues: Vec<Queue>,
    queue_evts: Vec<EventFd>,
    status: u32,
    features_select: u32,
    acked_features_select: u32,
    acked_features: u64,
    queue_select: u32,
    config_generation: u32,
    activated: bool,
}

impl std::fmt::Debug for MmioTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MmioTransport")
            .field("device_type", &self.device.device_type())
            .field("status", &self.status)
            .field("activated", &self.activated)
            .finish_non_exhaustive()
    }
}

/// Errors building a transport, or saving and restoring its state.
#[derive(Debug, thiserror::Error)]
pub enum MmioError {
    #[error("device queue of size {0} is not a power of two in 1..=32768")]
    QueueSize(u16),
    #[error("creating a queue notification eventfd")]
    EventFd(#[source] std::io::Error),
    #[error("queue {0} has requests in flight")]
    Busy(usize),
    #[error("queue {0}'s rings are outside guest memory")]
    Rings(usize),
    #[error("the snapshot's device does not match this one: {0}")]
    Mismatch(&'static str),
    #[error("the restored device did not start")]
    NotActivated,
}

/// How much of a device's configuration space a snapshot compares (every
/// device here has less: the rest reads as zero).
const CONFIG_BYTES: usize = 256;

/// One queue as the driver configured it. Where the device is in its rings
/// is not saved: a snapshot is only taken with every ring drained (the
/// device has used all the driver made available), so it is the rings' own
/// indices, read back from guest memory at restore.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct QueueConfig {
    pub size: u16,
    pub ready: bool,
    pub desc: u64,
    pub avail: u64,
    pub used: u64,
}

/// A transport's registers, its queues and its device's configuration
/// space as the driver last read them.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TransportState {
    pub device_type: u32,
    pub status: u32,
    pub features_select: u32,
    pub acked_features_select: u32,
    pub acked_features: u64,
    pub queue_select: u32,
    pub config_generation: u32,
    pub interrupt_status: u32,
    pub queues: Vec<QueueConfig>,
    #[serde(with = "crate::persist::hex")]
    pub config: Vec<u8>,
    /// Whether the device has used any request since the driver set it up.
    pub served: bool,
    /// Whether any of them carried content of a job
    /// ([`super::VirtioDevice::served_content`]).
    #[serde(default)]
    pub served_content: bool,
}

/// A split ring's `idx` (the u16 after its flags).
fn ring_idx(mem: &GuestMemoryMmap, ring: u64) -> Option<u16> {
    mem.read_obj::<u16>(GuestAddress(ring.checked_add(2)?)).ok().map(u16::from_le)
}

/// Where queue `index` is when the device has used all the driver made
/// available (both rings' `idx`); refused while requests are in flight.
fn drained_idx(mem: &GuestMemoryMmap, index: usize, avail: u64, used: u64) -> Result<u16, MmioError> {
    let avail = ring_idx(mem, avail).ok_or(MmioError::Rings(index))?;
    let used = ring_idx(mem, used).ok_or(MmioError::Rings(index))?;
    if avail != used {
        return Err(MmioError::Busy(index));
    }
    Ok(used)
}

impl MmioTransport {
    /// Wrap `device`. `interrupt` is its IRQ line; the returned transport
    /// owns one notification eventfd per queue (see [`Self::queue_evts`]).
    pub fn new(device: Box<dyn VirtioDevice>, mem: GuestMemoryMmap, interrupt: Interrupt) -> Result<Self, MmioError> {
        let mut queues = Vec::new();
        let mut queue_evts = Vec::new();
        for &size in device.queue_max_sizes() {
            queues.push(Queue::new(size).map_err(|_| MmioError::QueueSize(size))?);
            queue_evts.push(EventFd::new(libc::EFD_NONBLOCK).map_err(MmioError::EventFd)?);
        }
        Ok(Self {
            device,
            mem,
            interrupt,
            queues,
            queue_evts,
            status: 0,
            features_select: 0,
            acked_features_select: 0,
            acked_features: 0,
            queue_select: 0,
            config_generation: 0,
            activated: false,
        })
    }

    /// The queue notification eventfds, for the VMM to bind with ioeventfd
    /// (datamatch = queue index on the QueueNotify register).
    pub fn queue_evts(&self) -> &[EventFd] {
        &self.queue_evts
    }

    /// The transport's state for a snapshot. Refused while any ready queue
    /// has requests in flight (the driver made more available than the
    /// device used): only a quiet device can be restored from its rings.
    fn state(&self) -> Result<TransportState, MmioError> {
        let mut queues = Vec::new();
        let mut served = false;
        for (i, q) in self.queues.iter().enumerate() {
            if self.activated && q.ready() {
                served |= drained_idx(&self.mem, i, q.avail_ring(), q.used_ring())? != 0;
            }
            queues.push(QueueConfig {
                size: q.size(),
                ready: q.ready(),
                desc: q.desc_table(),
                avail: q.avail_ring(),
                used: q.used_ring(),
            });
        }
        Ok(TransportState {
            device_type: self.device.device_type(),
            status: self.status,
            features_select: self.features_select,
            acked_features_select: self.acked_features_select,
            acked_features: self.acked_features,
            queue_select: self.queue_select,
            config_generation: self.config_generation,
            interrupt_status: self.interrupt.status(),
            queues,
            config: self.config_bytes(),
            served,
            served_content: self.device.served_content(),
        })
    }

    fn config_bytes(&self) -> Vec<u8> {
        let mut config = vec![0u8; CONFIG_BYTES];
        self.device.read_config(0, &mut config);
        config
    }

    /// Put this fresh transport (its device attached to this job's backing
    /// file or directory) where a snapshot's was, and start the device if
    /// the driver had. A configuration space that differs from the one the
    /// driver read (a disk of another size) is announced with a
    /// config-change interrupt. Call before any vCPU runs.
    fn restore_state(&mut self, state: &TransportState) -> Result<(), MmioError> {
        if state.device_type != self.device.device_type() {
            return Err(MmioError::Mismatch("device type"));
        }
        if state.queues.len() != self.queues.len() {
            return Err(MmioError::Mismatch("number of queues"));
        }
        let offered = self.device.features();
        if state.acked_features & !offered != 0 {
            return Err(MmioError::Mismatch("features"));
        }
        let split = |a: u64| (Some((a & 0xffff_ffff) as u32), Some((a >> 32) as u32));
        for (i, (q, c)) in self.queues.iter_mut().zip(&state.queues).enumerate() {
            q.set_size(c.size);
            let (lo, hi) = split(c.desc);
            q.set_desc_table_address(lo, hi);
            let (lo, hi) = split(c.avail);
            q.set_avail_ring_address(lo, hi);
            let (lo, hi) = split(c.used);
            q.set_used_ring_address(lo, hi);
            q.set_ready(c.ready);
            if q.size() != c.size || q.desc_table() != c.desc || q.avail_ring() != c.avail || q.used_ring() != c.used {
                return Err(MmioError::Mismatch("queue configuration"));
            }
            if c.ready && state.status & STATUS_DRIVER_OK != 0 {
                let at = drained_idx(&self.mem, i, c.avail, c.used)?;
                q.set_next_avail(at);
                q.set_next_used(at);
            }
        }
        self.features_select = state.features_select;
        self.acked_features_select = state.acked_features_select;
        self.acked_features = state.acked_features;
        self.queue_select = state.queue_select;
        self.config_generation = state.config_generation;
        self.status = state.status;
        self.interrupt.ack(u32::MAX);
        self.interrupt.raise(state.interrupt_status);
        let _ = self.interrupt.resignal();
        if state.status & STATUS_DRIVER_OK != 0 && state.status & STATUS_NEEDS_RESET == 0 {
            self.activate();
            if !self.activated {
                return Err(MmioError::NotActivated);
            }
        }
        if self.config_bytes() != state.config {
            self.config_generation = self.config_generation.wrapping_add(1);
            let _ = self.interrupt.signal_config_change();
        }
        Ok(())
    }

    /// Offset of the QueueNotify register in the window.
    pub const NOTIFY_OFFSET: u64 = 0x50;

    fn selected_queue(&mut self) -> Option<&mut Queue> {
        self.queues.get_mut(usize::try_from(self.queue_select).ok()?)
    }

    fn update_queue(&mut self, f: impl FnOnce(&mut Queue)) {
        // Queue configuration is only legal before DRIVER_OK.
        if self.status & STATUS_DRIVER_OK != 0 {
            return;
        }
        if let Some(q) = self.selected_queue() {
            f(q);
        }
    }

    fn reset(&mut self) {
        if self.activated {
            self.device.reset();
        }
        self.activated = false;
        self.status = 0;
        self.features_select = 0;
        self.acked_features_select = 0;
        self.acked_features = 0;
        self.queue_select = 0;
        self.interrupt.ack(u32::MAX);
        for q in &mut self.queues {
            q.reset();
        }
    }

    fn set_status(&mut self, value: u32) {
        if value == 0 {
            self.reset();
            return;
        }
        // The driver may only add bits (spec 3.1.1), except for FAILED.
        if value & self.status != self.status {
            return;
        }
        let new = value & !self.status;
        if new & STATUS_FEATURES_OK != 0 {
            let offered = self.device.features();
            let ok = self.acked_features & !offered == 0 && self.acked_features & VIRTIO_F_VERSION_1 != 0;
            if !ok {
                // Leave FEATURES_OK clear: the driver reads it back and fails.
                self.status = value & !STATUS_FEATURES_OK;
                return;
            }
        }
        self.status = value;
        if new & STATUS_DRIVER_OK != 0 && !self.activated {
            self.activate();
        }
    }

    fn activate(&mut self) {
        let needed = STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK;
        let all_valid = self.queues.iter().all(|q| q.ready() && q.is_valid(&self.mem));
        if self.status & needed != needed || !all_valid {
            self.status |= STATUS_NEEDS_RESET;
            let _ = self.interrupt.signal_config_change();
            return;
        }
        let queue_evts = match self.queue_evts.iter().map(EventFd::try_clone).collect::<Result<Vec<_>, _>>() {
            Ok(e) => e,
            Err(_) => {
                self.status |= STATUS_NEEDS_RESET;
                return;
            }
        };
        // The device gets its own copies of the validated queue state.
        let queues = match self.queues.iter().map(|q| Queue::try_from(q.state())).collect::<Result<Vec<_>, _>>() {
            Ok(q) => q,
            Err(_) => {
                self.status |= STATUS_NEEDS_RESET;
                return;
            }
        };
        let ctx = ActivateContext {
            mem: self.mem.clone(),
            interrupt: self.interrupt.clone(),
            queues,
            queue_evts,
            acked_features: self.acked_features,
        };
        match self.device.activate(ctx) {
            Ok(()) => self.activated = true,
            Err(e) => {
                eprintln!("rootlayer: virtio device {} failed to start: {e}", self.device.device_type());
                self.status |= STATUS_NEEDS_RESET;
                let _ = self.interrupt.signal_config_change();
            }
        }
    }

    fn read_reg(&self, offset: u64) -> u32 {
        let q = usize::try_from(self.queue_select).ok().and_then(|i| self.queues.get(i));
        match offset {
            0x00 => MMIO_MAGIC_VALUE,
            0x04 => MMIO_VERSION,
            0x08 => self.device.device_type(),
            0x0c => VENDOR_ID,
            0x10 => match self.features_select {
                0 => (self.device.features() & 0xffff_ffff) as u32,
                1 => (self.device.features() >> 32) as u32,
                _ => 0,
            },
            0x34 => q.map_or(0, |q| u32::from(q.max_size())),
            0x44 => q.map_or(0, |q| u32::from(q.ready())),
            0x60 => self.interrupt.status(),
            0x70 => self.status,
            0xfc => self.config_generation,
            _ => 0,
        }
    }

    fn write_reg(&mut self, offset: u64, v: u32) {
        match offset {
            0x14 => self.features_select = v,
            // Features are fixed once FEATURES_OK is set.
            0x20 if self.status & STATUS_FEATURES_OK == 0 => {
                let (mask, value) = match self.acked_features_select {
                    0 => (0xffff_ffff, u64::from(v)),
                    1 => (0xffff_ffff << 32, u64::from(v) << 32),
                    _ => (0, 0),
                };
                self.acked_features = (self.acked_features & !mask) | value;
            }
            0x24 => self.acked_features_select = v,
            0x30 => self.queue_select = v,
            0x38 => self.update_queue(|q| q.set_size(u16::try_from(v).unwrap_or(0))),
            0x44 => self.update_queue(|q| q.set_ready(v == 1)),
            0x50 => {
                if let Some(evt) = usize::try_from(v).ok().and_then(|i| self.queue_evts.get(i)) {
                    let _ = evt.write(1);
                }
            }
            0x64 => self.interrupt.ack(v),
            0x70 => self.set_status(v),
            0x80 => self.update_queue(|q| q.set_desc_table_address(Some(v), None)),
            0x84 => self.update_queue(|q| q.set_desc_table_address(None, Some(v))),
            0x90 => self.update_queue(|q| q.set_avail_ring_address(Some(v), None)),
            0x94 => self.update_queue(|q| q.set_avail_ring_address(None, Some(v))),
            0xa0 => self.update_queue(|q| q.set_used_ring_address(Some(v), None)),
            0xa4 => self.update_queue(|q| q.set_used_ring_address(None, Some(v))),
            _ => {}
        }
    }
}

impl BusDevice for MmioTransport {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= CONFIG_SPACE_OFFSET {
            data.fill(0);
            self.device.read_config(offset - CONFIG_SPACE_OFFSET, data);
            return;
        }
        // Registers are 32-bit; other access sizes read as zero.
        match <&mut [u8; 4]>::try_from(data) {
            Ok(d) if offset % 4 == 0 => *d = self.read_reg(offset).to_le_bytes(),
            Ok(d) => d.fill(0),
            Err(_) => {}
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset >= CONFIG_SPACE_OFFSET {
            if self.status & STATUS_FAILED == 0 {
                self.device.write_config(offset - CONFIG_SPACE_OFFSET, data);
                self.config_generation = self.config_generation.wrapping_add(1);
            }
            return;
        }
        if let (Ok(d), true) = (<[u8; 4]>::try_from(data), offset % 4 == 0) {
            self.write_reg(offset, u32::from_le_bytes(d));
        }
    }
}

/// A transport's snapshot: see [`MmioTransport::state`] (refused while a
/// ring has requests in flight) and [`MmioTransport::restore_state`].
impl crate::persist::Persist for MmioTransport {
    type State = TransportState;
    type Error = MmioError;
    fn save(&mut self) -> Result<TransportState, MmioError> {
        self.state()
    }
    fn restore(&mut self, state: &TransportState) -> Result<(), MmioError> {
        self.restore_state(state)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::virtio::INT_CONFIG_CHANGE;
    use crate::devices::virtio::{ActivateError, TYPE_BLOCK};
    use crate::persist::Persist;
    use std::sync::{Arc, Mutex};

    type Activated = Arc<Mutex<Option<(usize, u64)>>>;

    struct Probe {
        activated: Arc<Mutex<Option<(usize, u64)>>>,
        resets: Arc<Mutex<u32>>,
        config: Vec<u8>,
    }

    impl Default for Probe {
        fn default() -> Self {
            Probe {
                activated: Default::default(),
                resets: Default::default(),
                config: vec![0xaa, 0xbb, 0xcc, 0xdd, 1, 2, 3, 4],
            }
        }
    }

    impl VirtioDevice for Probe {
        fn device_type(&self) -> u32 {
            TYPE_BLOCK
        }
        fn features(&self) -> u64 {
            VIRTIO_F_VERSION_1 | 0b101
        }
        fn queue_max_sizes(&self) -> &[u16] {
            &[16]
        }
        fn read_config(&self, offset: u64, data: &mut [u8]) {
            super::super::read_config_bytes(&self.config, offset, data);
        }
        fn activate(&mut self, ctx: ActivateContext) -> Result<(), ActivateError> {
            *self.activated.lock().unwrap() = Some((ctx.queues.len(), ctx.acked_features));
            Ok(())
        }
        fn reset(&mut self) {
            *self.resets.lock().unwrap() += 1;
        }
    }

    fn setup() -> (MmioTransport, Activated, Arc<Mutex<u32>>) {
        setup_with_config(Probe::default().config)
    }

    fn setup_with_config(config: Vec<u8>) -> (MmioTransport, Activated, Arc<Mutex<u32>>) {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
        let probe = Probe { config, ..Probe::default() };
        let (a, r) = (probe.activated.clone(), probe.resets.clone());
        let irq = Interrupt::new(EventFd::new(libc::EFD_NONBLOCK).unwrap());
        (MmioTransport::new(Box::new(probe), mem, irq).unwrap(), a, r)
    }

    fn w(t: &mut MmioTransport, off: u64, v: u32) {
        t.write(off, &v.to_le_bytes());
    }
    fn r(t: &mut MmioTransport, off: u64) -> u32 {
        let mut d = [0u8; 4];
        t.read(off, &mut d);
        u32::from_le_bytes(d)
    }

    fn negotiate(t: &mut MmioTransport, features_hi: u32, features_lo: u32) {
        w(t, 0x70, STATUS_ACKNOWLEDGE);
        w(t, 0x70, STATUS_ACKNOWLEDGE | STATUS_DRIVER);
        w(t, 0x24, 0);
        w(t, 0x20, features_lo);
        w(t, 0x24, 1);
        w(t, 0x20, features_hi);
        w(t, 0x70, STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK);
    }

    fn setup_queue(t: &mut MmioTransport) {
        w(t, 0x30, 0);
        w(t, 0x38, 16);
        w(t, 0x80, 0x1000);
        w(t, 0x90, 0x2000);
        w(t, 0xa0, 0x3000);
        w(t, 0x44, 1);
    }

    #[test]
    fn identifies_as_a_modern_virtio_mmio_device() {
        let (mut t, ..) = setup();
        assert_eq!(r(&mut t, 0x00), MMIO_MAGIC_VALUE);
        assert_eq!(r(&mut t, 0x04), 2);
        assert_eq!(r(&mut t, 0x08), TYPE_BLOCK);
        w(&mut t, 0x14, 1);
        assert_eq!(r(&mut t, 0x10), 1, "VERSION_1 in the high word");
        w(&mut t, 0x14, 0);
        assert_eq!(r(&mut t, 0x10), 0b101);
        assert_eq!(r(&mut t, 0x34), 16);
        let mut cfg = [0u8; 2];
        t.read(0x102, &mut cfg);
        assert_eq!(cfg, [0xcc, 0xdd]);
    }

    #[test]
    fn activates_on_driver_ok_with_negotiated_features() {
        let (mut t, activated, _) = setup();
        negotiate(&mut t, 1, 0b100);
        assert_ne!(r(&mut t, 0x70) & STATUS_FEATURES_OK, 0);
        setup_queue(&mut t);
        w(&mut t, 0x70, STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK);
        assert_eq!(*activated.lock().unwrap(), Some((1, VIRTIO_F_VERSION_1 | 0b100)));
        assert_eq!(r(&mut t, 0x70) & STATUS_NEEDS_RESET, 0);
    }

    #[test]
    fn refuses_features_not_offered_or_without_version_1() {
        let (mut t, ..) = setup();
        negotiate(&mut t, 1, 0b010);
        assert_eq!(r(&mut t, 0x70) & STATUS_FEATURES_OK, 0, "bit 1 was not offered");
        w(&mut t, 0x70, 0);
        negotiate(&mut t, 0, 0b001);
        assert_eq!(r(&mut t, 0x70) & STATUS_FEATURES_OK, 0, "legacy driver refused");
    }

    #[test]
    fn queue_outside_guest_memory_is_not_activated() {
        let (mut t, activated, _) = setup();
        negotiate(&mut t, 1, 0);
        w(&mut t, 0x30, 0);
        w(&mut t, 0x38, 16);
        w(&mut t, 0x80, 0xffff_f000);
        w(&mut t, 0x84, 0xffff);
        w(&mut t, 0x90, 0x2000);
        w(&mut t, 0xa0, 0x3000);
        w(&mut t, 0x44, 1);
        w(&mut t, 0x70, STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK);
        assert!(activated.lock().unwrap().is_none());
        assert_ne!(r(&mut t, 0x70) & STATUS_NEEDS_RESET, 0);
    }

    #[test]
    fn bad_queue_size_and_selector_are_ignored() {
        let (mut t, activated, _) = setup();
        w(&mut t, 0x30, 7); // no such queue
        assert_eq!(r(&mut t, 0x34), 0);
        w(&mut t, 0x38, 16); // goes nowhere
        w(&mut t, 0x30, 0);
        w(&mut t, 0x38, 1000); // larger than the maximum: ignored
        w(&mut t, 0x38, 6); // not a power of two: ignored
        negotiate(&mut t, 1, 0);
        w(&mut t, 0x80, 0x1000);
        w(&mut t, 0x90, 0x2000);
        w(&mut t, 0xa0, 0x3000);
        w(&mut t, 0x44, 1);
        w(&mut t, 0x70, STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK);
        assert_eq!(*activated.lock().unwrap(), Some((1, VIRTIO_F_VERSION_1)), "queue kept its valid size 16");
    }

    #[test]
    fn notify_signals_the_queue_eventfd_and_reset_resets_the_device() {
        let (mut t, _, resets) = setup();
        negotiate(&mut t, 1, 0);
        setup_queue(&mut t);
        w(&mut t, 0x70, STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK);
        w(&mut t, 0x50, 0);
        assert_eq!(t.queue_evts()[0].read().unwrap(), 1);
        w(&mut t, 0x50, 9); // no such queue: ignored
                            // Queue setup after DRIVER_OK is ignored.
        w(&mut t, 0x38, 8);
        w(&mut t, 0x70, 0);
        assert_eq!(*resets.lock().unwrap(), 1);
        assert_eq!(r(&mut t, 0x70), 0);
        assert_eq!(r(&mut t, 0x44), 0, "queue reset");
    }

    #[test]
    fn a_restored_transport_serves_from_where_the_rings_are_and_announces_a_new_config() {
        let (mut t, _, _) = setup();
        negotiate(&mut t, 1, 0b100);
        setup_queue(&mut t);
        w(&mut t, 0x70, STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK);
        // The rings as a driver and device that handled 5 requests leave
        // them: both indices at 5.
        t.mem.write_obj(5u16, GuestAddress(0x2002)).unwrap();
        t.mem.write_obj(5u16, GuestAddress(0x3002)).unwrap();
        let state = t.state().unwrap();
        assert!(state.served, "5 requests were used");
        let json = serde_json::to_string(&state).unwrap();
        let state: TransportState = serde_json::from_str(&json).unwrap();

        let (mut fresh, activated, _) = setup_with_config(vec![0xaa, 0xbb, 0xcc, 0xdd, 1, 2, 3, 4]);
        fresh.mem = t.mem.clone();
        fresh.restore(&state).unwrap();
        assert_eq!(*activated.lock().unwrap(), Some((1, VIRTIO_F_VERSION_1 | 0b100)));
        assert_eq!(fresh.queues[0].next_avail(), 5);
        assert_eq!(fresh.queues[0].next_used(), 5);
        assert_eq!(r(&mut fresh, 0x70), state.status);
        assert_eq!(fresh.interrupt.status() & INT_CONFIG_CHANGE, 0, "same config: no interrupt");
        assert!(fresh.interrupt.eventfd().read().is_err(), "nothing pending: no interrupt");

        // A completion posted after the vCPU paused is in the status, not
        // in the saved interrupt controller: the line is raised again.
        let pending = TransportState { interrupt_status: crate::devices::virtio::INT_USED_RING, ..state.clone() };
        let (mut again, _, _) = setup();
        again.mem = t.mem.clone();
        again.restore(&pending).unwrap();
        assert_eq!(again.interrupt.eventfd().read().unwrap(), 1);

        let (mut bigger, _, _) = setup_with_config(vec![0xab, 0xbb, 0xcc, 0xdd, 1, 2, 3, 4]);
        bigger.mem = t.mem.clone();
        bigger.restore(&state).unwrap();
        assert_ne!(bigger.interrupt.status() & INT_CONFIG_CHANGE, 0, "a new size is announced");
        assert_eq!(r(&mut bigger, 0xfc), state.config_generation.wrapping_add(1));

        // Requests in flight: neither saved nor restored.
        t.mem.write_obj(6u16, GuestAddress(0x2002)).unwrap();
        assert!(matches!(t.state(), Err(MmioError::Busy(0))));
        let (mut busy, _, _) = setup();
        busy.mem = t.mem.clone();
        assert!(matches!(busy.restore(&state), Err(MmioError::Busy(0))));
        let mut other = state.clone();
        other.device_type = 26;
        assert!(matches!(setup().0.restore(&other), Err(MmioError::Mismatch(_))));
    }

    #[test]
    fn unaligned_and_odd_sized_register_accesses_are_harmless() {
        let (mut t, ..) = setup();
        let mut b = [0xffu8; 2];
        t.read(0x00, &mut b);
        assert_eq!(b, [0xff, 0xff], "2-byte register reads leave data alone");
        let mut d = [0xffu8; 4];
        t.read(0x02, &mut d);
        assert_eq!(d, [0; 4]);
        t.write(0x71, &[1, 2, 3, 4]);
        assert_eq!(r(&mut t, 0x70), 0);
    }
}
