//! Devices the guest sees. Nothing here touches KVM: a device gets guest
//! memory and an interrupt line handed in, so unit tests drive it directly.

pub mod bus;
pub mod console;
pub mod i8042;
pub mod serial;
pub mod virtio;

pub use bus::{Bus, BusDevice, BusError};
