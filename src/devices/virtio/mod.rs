//! virtio 1.x devices behind the virtio-mmio transport.
//!
//! A device implements [`VirtioDevice`]: what it offers (type, features,
//! queue sizes, config space) and [`VirtioDevice::activate`], which hands it
//! guest memory, its queues with their notification eventfds, and its
//! [`Interrupt`]. Devices never see KVM: the VMM binds the eventfds to
//! ioeventfd/irqfd, and a unit test can drive a device with
//! virtio-queue's `MockSplitQueue` and plain eventfds.

pub mod block;
pub mod fs;
pub mod mmio;
pub mod queue;
pub mod worker;

pub use mmio::MmioTransport;

use crate::seccomp::Policy;
use std::io;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use virtio_queue::Queue;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

/// Feature bit: the device complies with virtio 1.x (required by our
/// transport: no legacy devices).
pub const VIRTIO_F_VERSION_1: u64 = 1 << 32;
/// Device IDs (virtio spec 5).
pub const TYPE_BLOCK: u32 = 2;
pub const TYPE_FS: u32 = 26;

/// InterruptStatus bits of the MMIO transport.
pub const INT_USED_RING: u32 = 0x1;
pub const INT_CONFIG_CHANGE: u32 = 0x2;

/// A device's interrupt line: the transport's InterruptStatus register and
/// the eventfd the VMM bound to the device's IRQ with irqfd.
#[derive(Debug, Clone)]
pub struct Interrupt {
    status: Arc<AtomicU32>,
    evt: Arc<EventFd>,
}

impl Interrupt {
    pub fn new(evt: EventFd) -> Self {
        Self { status: Arc::new(AtomicU32::new(0)), evt: Arc::new(evt) }
    }

    /// Tell the driver that used rings have new entries.
    pub fn signal_used_queue(&self) -> io::Result<()> {
        self.status.fetch_or(INT_USED_RING, Ordering::SeqCst);
        self.evt.write(1)
    }

    /// Tell the driver that the configuration (or device status) changed.
    pub fn signal_config_change(&self) -> io::Result<()> {
        self.status.fetch_or(INT_CONFIG_CHANGE, Ordering::SeqCst);
        self.evt.write(1)
    }

    /// Current InterruptStatus.
    pub fn status(&self) -> u32 {
        self.status.load(Ordering::SeqCst)
    }

    /// Set status bits without signalling (a restored transport: the
    /// interrupt controller's own state says whether the line is raised).
    pub fn raise(&self, bits: u32) {
        self.status.fetch_or(bits, Ordering::SeqCst);
    }

    /// Raise the line again for the bits already set (a restored transport:
    /// a completion the device posted after the vCPU paused may be in the
    /// status but not in the saved interrupt controller; a spurious
    /// interrupt is harmless, a lost one hangs the driver).
    pub fn resignal(&self) -> io::Result<()> {
        if self.status() != 0 {
            self.evt.write(1)?;
        }
        Ok(())
    }

    /// InterruptACK: clear the given bits.
    pub fn ack(&self, bits: u32) {
        self.status.fetch_and(!bits, Ordering::SeqCst);
    }

    /// The eventfd (for tests: count how often the device interrupted).
    pub fn eventfd(&self) -> &EventFd {
        &self.evt
    }
}

/// Errors activating a device.
#[derive(Debug, thiserror::Error)]
pub enum ActivateError {
    #[error("device expects {expected} queues, driver set up {got}")]
    QueueCount { expected: usize, got: usize },
    #[error("starting the device worker")]
    Worker(#[source] io::Error),
    #[error("the device worker's seccomp filter")]
    Seccomp(#[from] crate::seccomp::SeccompError),
    #[error("the device was activated before the VMM started it")]
    NotStarted,
    #[error("building the device's handler")]
    Handler(#[source] worker::HandlerError),
}

/// Everything a device needs to run, handed over when the driver sets
/// DRIVER_OK.
#[derive(Debug)]
pub struct ActivateContext {
    pub mem: GuestMemoryMmap,
    pub interrupt: Interrupt,
    /// The queues the driver enabled, in queue index order, validated
    /// against guest memory.
    pub queues: Vec<Queue>,
    /// One notification eventfd per queue (same order).
    pub queue_evts: Vec<EventFd>,
    /// Features the driver accepted.
    pub acked_features: u64,
}

/// What a device gets to start its worker with.
#[derive(Debug)]
pub struct StartContext<'a> {
    pub seccomp: &'a Policy,
    pub failures: DeviceFailures,
}

impl<'a> StartContext<'a> {
    /// A context whose failures nobody watches (tests, fuzzing).
    pub fn unwatched(seccomp: &'a Policy) -> Self {
        StartContext { seccomp, failures: DeviceFailures::default() }
    }
}

/// Where device workers report that they stopped serving on their own (an
/// epoll failure): the VMM polls it and stops the guest instead of leaving
/// it to wait for a device that will never answer.
#[derive(Debug, Clone, Default)]
pub struct DeviceFailures(std::sync::Arc<std::sync::Mutex<Option<String>>>);

impl DeviceFailures {
    /// Record `what` (the first failure is kept).
    pub fn report(&self, what: String) {
        let mut f = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        f.get_or_insert(what);
    }
    /// The first failure reported, if any.
    pub fn first(&self) -> Option<String> {
        self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }
}

/// A virtio device model.
pub trait VirtioDevice: Send {
    /// virtio device ID ([`TYPE_BLOCK`], [`TYPE_FS`], ...).
    fn device_type(&self) -> u32;
    /// Features offered to the driver (including [`VIRTIO_F_VERSION_1`]).
    fn features(&self) -> u64;
    /// Maximum size of each queue; the length is the number of queues.
    fn queue_max_sizes(&self) -> &[u16];
    /// Read from the device-specific configuration space. Bytes beyond
    /// the config are left as the caller set them (zero).
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// Write to the configuration space; read-only by default.
    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}
    /// Set up before the guest runs (on the VMM's setup thread): a device
    /// with a worker thread starts it here, filtered as `ctx.seccomp` says,
    /// so that activation (on the vCPU thread) creates no thread; a worker
    /// that cannot go on tells `ctx.failures`, and the VMM stops the guest.
    fn start(&mut self, _ctx: &StartContext<'_>) -> Result<(), ActivateError> {
        Ok(())
    }
    /// Start serving the queues (the driver set DRIVER_OK; runs on the vCPU
    /// thread).
    fn activate(&mut self, ctx: ActivateContext) -> Result<(), ActivateError>;
    /// Stop serving (driver reset). The transport resets its own state.
    fn reset(&mut self) {}
    /// Whether the device has answered the guest with anything of what it
    /// serves for a job (a share: any request but FUSE_INIT, whose answer
    /// is the same for every job). A snapshot must hold no such answer.
    fn served_content(&self) -> bool {
        false
    }
}

/// Copy `config[offset..]` into `data`, as far as it goes: the common
/// read_config of devices whose config space is a byte array.
pub fn read_config_bytes(config: &[u8], offset: u64, data: &mut [u8]) {
    let Ok(start) = usize::try_from(offset) else {
        return;
    };
    if start >= config.len() {
        return;
    }
    let n = data.len().min(config.len() - start);
    data[..n].copy_from_slice(&config[start..start + n]);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interrupt_sets_status_and_signals_until_acked() {
        let irq = Interrupt::new(EventFd::new(libc::EFD_NONBLOCK).unwrap());
        irq.signal_used_queue().unwrap();
        irq.signal_config_change().unwrap();
        assert_eq!(irq.status(), INT_USED_RING | INT_CONFIG_CHANGE);
        assert_eq!(irq.eventfd().read().unwrap(), 2);
        irq.ack(INT_USED_RING);
        assert_eq!(irq.status(), INT_CONFIG_CHANGE);
    }

    #[test]
    fn config_reads_are_clipped_to_the_config_space() {
        let cfg = [1u8, 2, 3, 4];
        let mut d = [0u8; 4];
        read_config_bytes(&cfg, 2, &mut d);
        assert_eq!(d, [3, 4, 0, 0]);
        let mut d = [9u8; 2];
        read_config_bytes(&cfg, 4, &mut d);
        assert_eq!(d, [9, 9]);
        read_config_bytes(&cfg, u64::MAX, &mut d);
        assert_eq!(d, [9, 9]);
    }
}
