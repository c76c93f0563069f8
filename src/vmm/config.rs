//! What to run (the guest's kernel, command line, memory, devices and
//! snapshot mode) and how its run ended.

use super::kvm::KvmKind;
use super::snapshot::{BootPath, SnapshotMode};
use super::vcpu::{GuestExit, XstateStats};
use super::xstate;
use crate::devices::console::{ConsoleLog, Echo, EchoLimit};
use crate::devices::virtio::VirtioDevice;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Kernel command line every guest gets; callers append their own.
///
/// - `console=ttyS0`: the 8250 on 0x3f8 is the only console;
/// - `quiet`: every console byte is a VM exit and emulated driver code
///   (append `loglevel=7` to see the boot log);
/// - `reboot=k`: reset through the i8042, our clean-exit path;
/// - `panic=-1`: reboot at once on panic (the VMM reads the panic line);
/// - `no_timer_check`: skip the IO-APIC timer sanity loop (seconds emulated);
/// - `rodata=off`: no read-only remapping of kernel text and no poisoning of
///   the freed gaps (about 4 s of emulated page-table and memset work; the
///   isolation boundary is the VM, not the guest kernel's W^X);
/// - `tsc=reliable`: no clocksource watchdog, and no TSC synchronisation
///   check between vCPUs (KVM starts them from one TSC and keeps them in step).
/// - `clocksource=kvm-clock`: the guest's time is the kvmclock a restore
///   sets back to the snapshot's (`snapshot::state::restore_vm`), so a
///   restored guest goes on from where the snapshot left it. On the TSC
///   (which the kernel prefers) its clock jumped by the time the snapshot
///   lay on disk wherever the guest TSC follows the host's (on a software
///   KVM it is the host's), and the kernel's timekeeping caught up in
///   steps of 128 ticks: a snapshot a day old took 3.5 s to come up, half
///   an hour 0.1 s more than a fresh one.
pub const BASE_CMDLINE: &str =
    "console=ttyS0 quiet reboot=k panic=-1 no_timer_check tsc=reliable clocksource=kvm-clock rodata=off";

/// What the VMM adds on a software-emulated KVM ([`KvmKind::Emulated`]):
/// keep the guest kernel off the instructions the emulator lacks (XSAVE,
/// CLAC, ...: kernel-config/README.md), and switch on the VMM-kept extended
/// register state ([`xstate`]), since guest user code there reaches the
/// host's AVX state whatever the kernel does.
pub fn emulated_cmdline() -> String {
    format!(
        "noxsave clearcpuid=cx16,popcnt,smap,fsgsbase,pcid,invpcid,pku,rdtscp,rdpid,avx,avx2,rdrand,rdseed,erms,fsrm,clflushopt,clwb,umip \
         rootlayer_xstate.port={:#x}",
        xstate::PORT_BASE
    )
}

/// The command line the guest gets on this kind of host: `cmdline` (from
/// [`BASE_CMDLINE`]) after the emulated-KVM parameters, so that a caller's
/// own (e.g. `rootlayer_xstate.port=0`, to see the agent refuse) win.
pub fn kernel_cmdline(kind: KvmKind, cmdline: &str) -> String {
    match kind {
        KvmKind::Emulated => format!("{} {cmdline}", emulated_cmdline()),
        KvmKind::Hardware => cmdline.to_string(),
    }
}

/// What to boot and how.
pub struct VmConfig {
    pub kernel: PathBuf,
    pub initrd: Option<PathBuf>,
    /// Full kernel command line (start from [`BASE_CMDLINE`]).
    pub cmdline: String,
    pub mem_mib: u64,
    /// Virtual CPUs (1 to [`super::arch::mptable::MAX_CPUS`]).
    pub cpus: u8,
    /// Wall-clock limit from the start of [`super::run`].
    pub timeout: Duration,
    pub echo: Echo,
    /// Rate limit of the echo (None: none).
    pub echo_limit: Option<EchoLimit>,
    /// virtio devices, in the order the guest enumerates them (the first
    /// block device is /dev/vda).
    pub virtio: Vec<Box<dyn VirtioDevice>>,
    /// Filter the vCPU and device threads ([`crate::seccomp`]); false for
    /// `--no-seccomp`.
    pub seccomp: bool,
    /// Restore from a snapshot, take one, or neither.
    pub snapshot: SnapshotMode,
    /// The job for the guest's mailbox ([`crate::protocol::mailbox`]), put
    /// there before the agent passes its snapshot point (None: the guest
    /// gets no job).
    pub job: Option<MailboxJob>,
}

/// What the host puts in the guest's mailbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MailboxJob {
    /// job.json.
    pub json: Vec<u8>,
    /// The files it names, one after the other.
    pub files: Vec<u8>,
}

impl std::fmt::Debug for VmConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VmConfig")
            .field("kernel", &self.kernel)
            .field("initrd", &self.initrd)
            .field("cmdline", &self.cmdline)
            .field("mem_mib", &self.mem_mib)
            .field("cpus", &self.cpus)
            .field("timeout", &self.timeout)
            .field("virtio", &self.virtio.iter().map(|d| d.device_type()).collect::<Vec<_>>())
            .field("seccomp", &self.seccomp)
            .field("snapshot", &self.snapshot)
            .field("job", &self.job.as_ref().map(|j| (j.json.len(), j.files.len())))
            .finish()
    }
}

/// How a run of a machine ended: one answer, whoever stopped it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunEnd {
    /// The guest stopped on its own (a reset is the agent's clean exit), or
    /// KVM stopped it.
    Exited(GuestExit),
    /// The wall-clock limit ([`VmConfig::timeout`]) stopped it.
    TimedOut,
    /// SIGINT or SIGTERM stopped it.
    Interrupted,
    /// A device worker stopped serving (its epoll failed): the VMM stopped
    /// the guest rather than let it wait for the device until the timeout.
    DeviceFailed(String),
    /// A restored guest did not reach its job within [`RESTORE_WATCHDOG`]:
    /// the restore failed (the job layer boots cold).
    RestoreHung,
    /// The vCPU thread panicked (a defect of the VMM): the message. Never
    /// read as a timeout.
    VcpuPanicked(String),
}

impl RunEnd {
    /// The agent's clean exit: the guest reset the machine.
    pub fn is_clean(&self) -> bool {
        *self == RunEnd::Exited(GuestExit::Reset)
    }
}

impl std::fmt::Display for RunEnd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RunEnd::Exited(exit) => exit.fmt(f),
            RunEnd::TimedOut => write!(f, "stopped at the time limit"),
            RunEnd::Interrupted => write!(f, "interrupted: the guest was stopped"),
            RunEnd::DeviceFailed(what) => write!(f, "{what}; the guest was stopped"),
            RunEnd::RestoreHung => {
                write!(f, "the restored guest did not reach its job within {}s", RESTORE_WATCHDOG.as_secs())
            }
            RunEnd::VcpuPanicked(what) => write!(f, "the vCPU thread panicked: {what}"),
        }
    }
}

/// How long a restored guest may take to ring STARTED (it takes well under
/// a second, emulated); past it the restore has failed.
pub const RESTORE_WATCHDOG: Duration = Duration::from_secs(60);

/// A finished run of a machine.
#[derive(Debug)]
pub struct RunReport {
    pub end: RunEnd,
    /// Time from the start of [`super::run`] to the end of the guest.
    pub wall: Duration,
    pub console: Arc<Mutex<ConsoleLog>>,
    /// Peak resident memory of this process, and how much of it was guest
    /// RAM the guest touched, both in KiB (None where /proc cannot tell).
    pub peak_rss_kib: Option<u64>,
    pub guest_rss_kib: Option<u64>,
    /// What keeping the guest's extended register state cost (None on
    /// hardware KVM, where the guest kernel saves it).
    pub xstate: Option<XstateStats>,
    /// Cold boot or restore, and what became of the snapshot.
    pub boot: BootPath,
    /// Whether the agent rang STARTED (it read its job).
    pub started: bool,
    /// The result's bytes the agent left in the mailbox, read once every
    /// vCPU had stopped: None if it left none, an error if what it left is
    /// not a result of this protocol's form.
    pub result: Result<Option<Vec<u8>>, crate::protocol::mailbox::MailboxError>,
    /// The machine being taken down; the report waits for it when dropped.
    pub teardown: Teardown,
}

/// A machine taken down on a thread of its own: unmapping the guest's
/// memory and freeing the KVM VM take 5-20 ms, which then overlap with
/// what the caller does with the report (reading the scratch disk,
/// writing the layer). Dropping it waits for the thread, so that nothing
/// of the machine (its disk files' descriptors) outlives its report.
#[derive(Debug, Default)]
pub struct Teardown(Option<std::thread::JoinHandle<()>>);

impl Teardown {
    /// Drop `what` on a thread of its own (here if none can be started).
    pub fn of<T: Send + 'static>(what: T) -> Teardown {
        // A thread that cannot be started drops its closure, and with it
        // `what`, on this one.
        Teardown(std::thread::Builder::new().name("teardown".into()).spawn(move || drop(what)).ok())
    }
}

impl Drop for Teardown {
    fn drop(&mut self) {
        if let Some(thread) = self.0.take() {
            let _ = thread.join();
        }
    }
}

impl RunReport {
    /// A restored guest that ended before its agent started the job: the
    /// restore failed, and the job deserves a cold boot.
    pub fn restore_failed(&self) -> bool {
        matches!(self.boot, BootPath::Restored { .. }) && !self.started && self.end != RunEnd::Interrupted
    }
}

impl RunReport {
    /// The last console lines, for error messages.
    pub fn console_tail(&self) -> Vec<String> {
        self.console.lock().expect("console log poisoned").tail()
    }
    /// Time from start to the agent's ready line.
    pub fn ready_at(&self) -> Option<Duration> {
        self.console.lock().expect("console log poisoned").ready_at()
    }
}

#[cfg(test)]
mod tests {
    use super::Teardown;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    /// Records where and whether it was dropped, slowly, as a machine is.
    struct Slow {
        dropped: Arc<AtomicBool>,
        on: Arc<Mutex<Option<std::thread::ThreadId>>>,
    }

    impl Drop for Slow {
        fn drop(&mut self) {
            std::thread::sleep(Duration::from_millis(50));
            *self.on.lock().unwrap() = Some(std::thread::current().id());
            self.dropped.store(true, Ordering::SeqCst);
        }
    }

    #[test]
    fn a_teardown_drops_on_its_own_thread_and_its_drop_waits_for_that() {
        let dropped = Arc::new(AtomicBool::new(false));
        let on = Arc::new(Mutex::new(None));
        let teardown = Teardown::of(Slow { dropped: Arc::clone(&dropped), on: Arc::clone(&on) });
        // The caller goes on at once (the drop sleeps 50 ms).
        assert!(!dropped.load(Ordering::SeqCst));
        drop(teardown);
        assert!(dropped.load(Ordering::SeqCst), "dropping the teardown waited for the machine's drop");
        let here = std::thread::current().id();
        assert!(on.lock().unwrap().is_some_and(|t| t != here), "dropped on a thread of its own");
    }
}
