//! Leaving the guest: report the status, sync, and ring the VMM's
//! POWER_OFF doorbell, which ends the run there and then; if it is not
//! heard, reset through the i8042 (the kernel runs with `reboot=k`; the
//! host VMM takes the reset as a clean exit). PID 1 must never exit, so
//! every path ends here.
//!
//! The doorbell skips the kernel's reboot path (device shutdown, its
//! console line), about 0.01 s on an emulated KVM; what that path
//! would flush is flushed before: the console drained, the disks synced.

use nix::sys::reboot::{reboot, RebootMode};

use rootlayer_protocol::AGENT_STATUS_PREFIX;
pub use rootlayer_protocol::STATUS_INTERNAL;

pub fn off(status: i32) -> ! {
    println!("{AGENT_STATUS_PREFIX}{status}");
    crate::resume::drain_console();
    nix::unistd::sync();
    // Without the doorbell (a kernel without patch 0005), the reset below.
    let _ = crate::resume::write_event(rootlayer_protocol::VMM_EVENT_POWER_OFF);
    let err = reboot(RebootMode::RB_AUTOBOOT).unwrap_err();
    eprintln!("rootlayer-agent: reboot failed: {err}");
    loop {
        nix::unistd::pause();
    }
}
