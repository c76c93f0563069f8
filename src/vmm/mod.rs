//! The VMM: the only module that talks to KVM.
//!
//! [`builder::run`] is the one recipe: open KVM, create the VM and its guest
//! memory, load kernel + initramfs + command line (or restore the guest's
//! [`snapshot`]), attach the devices, set up the vCPU, run it until the
//! guest resets, stops, fails or times out.

pub mod arch;
pub mod builder;
pub mod kvm;
pub mod snapshot;
pub mod vcpu;
pub mod xstate;

pub use builder::{run, RunReport, VmConfig};
pub use snapshot::{BootPath, SnapshotMode};
pub use vcpu::GuestExit;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_interrupt(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Catch SIGINT and SIGTERM: a running guest is stopped (its run returns
/// with `interrupted`) and the caller cleans up, instead of the process
/// dying with temporary files left behind.
pub fn install_interrupt_handlers() {
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: the handler only stores to an atomic (async-signal-safe);
        // the sigaction struct is fully initialised.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_interrupt as extern "C" fn(libc::c_int) as *const () as usize;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(sig, &sa, std::ptr::null_mut());
        }
    }
}

/// Whether SIGINT or SIGTERM arrived since the handlers were installed.
pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

/// Run the guest `config` gives for `mode`; when a restored guest fails
/// (its restore, or before its agent started the job), say so once, drop
/// the snapshot, and run a fresh `config` cold, taking a new snapshot. The
/// job never fails because of a snapshot.
pub fn run_with_fallback<E: From<VmmError>>(
    mode: SnapshotMode,
    mut config: impl FnMut(SnapshotMode) -> Result<VmConfig, E>,
) -> Result<RunReport, E> {
    let first = config(mode.clone())?;
    let SnapshotMode::Use(dir) = mode else { return Ok(run(first)?) };
    let why = match run(first) {
        Ok(report) if report.restore_failed() => {
            if let BootPath::Restored { file, .. } = &report.boot {
                let _ = std::fs::remove_file(file);
            }
            format!("the restored guest stopped before its job started ({})", report.exit)
        }
        Err(e @ VmmError::Restore(_)) => crate::exit::error_line(&e),
        other => return other.map_err(E::from),
    };
    eprintln!("rootlayer: {why}; booting cold");
    Ok(run(config(SnapshotMode::Take(dir))?)?)
}

impl VmmError {
    /// The exit code for this error, the same for every command: what the
    /// user gave (memory size, kernel, initramfs) is bad input; writing the
    /// boot information into guest memory that was just allocated is ours.
    pub fn exit(&self) -> crate::exit::Exit {
        use crate::exit::Exit;
        match self {
            VmmError::KvmUnavailable(_) => Exit::KvmUnavailable,
            VmmError::MemSize { .. } | VmmError::MissingFile { .. } => Exit::BadInput,
            VmmError::Boot(arch::boot::BootError::Memory(_)) => Exit::Internal,
            VmmError::Boot(_) => Exit::BadInput,
            _ => Exit::Internal,
        }
    }
}

/// Errors starting or running a VM.
#[derive(Debug, thiserror::Error)]
pub enum VmmError {
    #[error("{0}")]
    KvmUnavailable(String),
    #[error("KVM: {what}")]
    Kvm { what: &'static str, source: kvm_ioctls::Error },
    #[error("guest memory of {mib} MiB is out of range ({min}..={max} MiB)")]
    MemSize { mib: u64, min: u64, max: u64 },
    #[error("allocating {mib} MiB of guest memory")]
    Memory { mib: u64, source: vm_memory::mmap::FromRangesError },
    #[error(transparent)]
    Boot(#[from] arch::boot::BootError),
    #[error(transparent)]
    Regs(#[from] arch::regs::RegsError),
    #[error(transparent)]
    MpTable(#[from] arch::mptable::MpTableError),
    #[error("setting up devices: {what}")]
    Device {
        what: &'static str,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("too many virtio devices (at most {max})")]
    TooManyDevices { max: u32 },
    #[error("starting the vCPU thread")]
    Thread(#[source] std::io::Error),
    #[error(transparent)]
    Seccomp(#[from] crate::seccomp::SeccompError),
    #[error("file {path} not found: {hint}")]
    MissingFile { path: PathBuf, hint: String },
    #[error("restoring the snapshot")]
    Restore(#[source] snapshot::SnapshotError),
}
