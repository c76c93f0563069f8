//! Leaving the guest: report the status, sync, reset through the i8042
//! (the kernel runs with `reboot=k`; the host VMM takes the reset as a clean
//! exit). PID 1 must never exit, so every path ends here.

use nix::sys::reboot::{reboot, RebootMode};

use rootlayer_protocol::AGENT_STATUS_PREFIX;
pub use rootlayer_protocol::STATUS_INTERNAL;

pub fn off(status: i32) -> ! {
    println!("{AGENT_STATUS_PREFIX}{status}");
    nix::unistd::sync();
    let err = reboot(RebootMode::RB_AUTOBOOT).unwrap_err();
    eprintln!("rootlayer-agent: reboot failed: {err}");
    loop {
        nix::unistd::pause();
    }
}
