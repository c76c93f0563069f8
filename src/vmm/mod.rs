//! The VMM: the only module that talks to KVM.
//!
//! [`run`] takes a [`VmConfig`] to a [`RunReport`], one file per step:
//! - [`machine`]: the host's KVM and what it offers the guest, the VM, its
//!   memory registered, the devices on their buses, the vCPU built;
//! - [`cold`]: a cold boot (fresh memory, kernel, initramfs, MP table);
//! - [`restore`]: which snapshot this guest is, finding it (or waiting for
//!   the job taking it), its memory mapped; the machine's state goes back
//!   through each part's [`Persist`](crate::persist::Persist);
//! - [`supervise`]: the vCPU thread watched to its end (time limit,
//!   signals, device failures, a restore that hangs, the pause at READY
//!   where the snapshot is written), ending in one [`RunEnd`].
//!
//! Falling back from a failed restore to a cold boot is the job layer's
//! ([`crate::job::run_machine`]): it rebinds the same device slots to
//! fresh files and runs again.

pub mod arch;
mod cold;
pub mod config;
pub mod kvm;
mod machine;
mod restore;
pub mod snapshot;
mod supervise;
pub mod vcpu;
pub mod xstate;

pub use config::{kernel_cmdline, MailboxJob, RunEnd, RunReport, VmConfig, BASE_CMDLINE};
pub use snapshot::{BootPath, SnapshotMode};
pub use vcpu::GuestExit;

use std::path::PathBuf;
use std::time::Instant;

/// Boot the guest `config` describes, or restore it from its snapshot,
/// and run it to its end.
pub fn run(mut config: VmConfig) -> Result<RunReport, VmmError> {
    let mut start = Instant::now();
    if !(arch::layout::MEM_MIN_MIB..=arch::layout::MEM_MAX_MIB).contains(&config.mem_mib) {
        return Err(VmmError::MemSize {
            mib: config.mem_mib,
            min: arch::layout::MEM_MIN_MIB,
            max: arch::layout::MEM_MAX_MIB,
        });
    }
    if !(1..=arch::mptable::MAX_CPUS).contains(&config.cpus) {
        return Err(VmmError::Cpus { cpus: config.cpus, max: arch::mptable::MAX_CPUS });
    }
    let mem_bytes = usize::try_from(config.mem_mib << 20).expect("bounded by MEM_MAX_MIB");
    let host = machine::Host::probe()?;
    let seccomp = crate::seccomp::Policy::new(config.seccomp);
    let cmdline = host.cmdline(&config)?;
    let (vm, vcpu_fds) = host.create_vm(u32::from(config.cpus))?;
    let plan = restore::plan(&config, &cmdline, &host, &vcpu_fds[0], &mut start);
    let mem = match &plan.loaded {
        Some(loaded) => restore::memory(loaded, mem_bytes).map_err(VmmError::Restore)?,
        None => cold::memory(config.mem_mib, mem_bytes)?,
    };
    let (machine, mut vcpus) = machine::Machine::assemble(&host, vm, mem, vcpu_fds, &mut config, &seccomp, start)?;
    let mut take = None;
    let boot = match plan.loaded {
        Some(loaded) => {
            if let Err(e) = machine.restore(&mut vcpus, &loaded.state) {
                // Not this guest's to use: the next job takes a new one.
                let _ = std::fs::remove_file(&loaded.path);
                return Err(VmmError::Restore(e));
            }
            BootPath::Restored { file: loaded.path, restore: start.elapsed() }
        }
        None => {
            cold::boot(&machine, &vcpus, &config, &cmdline)?;
            if let Some(why) = plan.cold_because {
                eprintln!("rootlayer: {why}: booting cold and taking a snapshot");
            }
            match plan.target {
                Some((dir, key)) => {
                    take = Some(supervise::Take { dir, key, msrs: host.snapshot_msrs()?, lock: plan.take_lock });
                    BootPath::NotReady
                }
                None => BootPath::Cold,
            }
        }
    };
    // The job goes in before the agent passes its snapshot point: now,
    // unless a snapshot is taken there first (then at that pause, once the
    // snapshot is written, so that no snapshot holds a job).
    let mut job = config.job.take();
    if take.is_none() {
        if let Some(job) = job.take() {
            machine.post_job(&job)?;
        }
    }
    let profile = std::env::var_os("ROOTLAYER_GUEST_PROFILE").map(PathBuf::from);
    let watch = supervise::Watch { start, timeout: config.timeout, boot, take, job, profile };
    supervise::run(machine, vcpus, &seccomp, watch)
}

/// Errors starting or running a VM.
#[derive(Debug, thiserror::Error)]
pub enum VmmError {
    #[error("{0}")]
    KvmUnavailable(String),
    #[error("KVM: {what}")]
    Kvm { what: &'static str, source: kvm_ioctls::Error },
    #[error("{cpus} vCPUs: a guest has 1 to {max}")]
    Cpus { cpus: u8, max: u8 },
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
    #[error("starting a vCPU thread")]
    Thread(#[source] std::io::Error),
    #[error(transparent)]
    Seccomp(#[from] crate::seccomp::SeccompError),
    #[error("file {path} not found: {hint}")]
    MissingFile { path: PathBuf, hint: String },
    #[error("restoring the snapshot")]
    Restore(#[source] snapshot::SnapshotError),
    #[error("putting the job in the guest's mailbox")]
    Mailbox(#[source] crate::protocol::mailbox::MailboxError),
}
