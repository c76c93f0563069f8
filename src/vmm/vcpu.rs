//! The vCPU: boot state, and the run loop that dispatches port and MMIO
//! exits to the buses until the guest resets, stops or fails.

use super::arch::boot::EntryPoint;
use super::arch::regs;
use super::snapshot::state::VcpuState;
use super::snapshot::SnapshotError;
use super::xstate::{self, Action, Keeper, XstateError};
use super::VmmError;
use crate::devices::Bus;
use crate::persist::Persist;
use crate::seccomp::ThreadFilter;
use kvm_bindings::{kvm_msr_entry, CpuId, Msrs, Xsave, KVM_EXIT_INTERNAL_ERROR};
use kvm_ioctls::{VcpuExit, VcpuFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

/// The port of the agent's doorbell (kernel patch 0005,
/// `rootlayer_vmm.port`): a 32-bit OUT of a [`rootlayer_protocol`] event.
pub const DOORBELL_PORT: u16 = 0x7e20;

const MSR_MTRR_DEF_TYPE: u32 = 0x2ff;
const MTRR_ENABLE: u64 = 1 << 11;
const MTRR_TYPE_WRBACK: u64 = 6;
const MSR_IA32_MISC_ENABLE: u32 = 0x1a0;
const MISC_ENABLE_FAST_STRING: u64 = 1;
const APIC_LVT0: usize = 0x350;
const APIC_LVT1: usize = 0x360;
const APIC_MODE_NMI: u32 = 0x4;
const APIC_MODE_EXTINT: u32 = 0x7;
/// KVM_INTERNAL_ERROR_EMULATION.
const SUBERROR_EMULATION: u32 = 1;

/// Why the guest stopped running.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GuestExit {
    /// The guest reset the machine through the i8042, or the agent rang
    /// POWER_OFF: the agent's clean exit.
    Reset,
    /// The CPU halted with interrupts off (e.g. the kernel's halt after a
    /// power-off request it could not carry out).
    Halted,
    /// Triple fault (KVM_EXIT_SHUTDOWN).
    TripleFault,
    /// KVM_EXIT_SYSTEM_EVENT of this type (shutdown, reset, crash).
    SystemEvent(u32),
    /// KVM could not run or emulate an instruction.
    InternalError { suberror: u32, rip: u64, code: Option<Vec<u8>> },
    /// VM entry failed (hardware reason code).
    FailEntry(u64),
    /// The host asked the vCPU to stop (timeout or signal).
    Stopped,
    /// KVM_RUN failed with this errno.
    RunFailed(i32),
    /// Keeping the guest's extended register state failed: a vCPU ioctl
    /// (errno) or the keeper's bounds.
    Xstate(XstateFailure),
}

/// Why the VMM could not keep a guest task's extended register state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum XstateFailure {
    Ioctl { what: &'static str, errno: i32 },
    Keeper(XstateError),
}

impl std::fmt::Display for GuestExit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            GuestExit::Reset => write!(f, "guest reset (clean exit)"),
            GuestExit::Halted => write!(f, "guest halted"),
            GuestExit::TripleFault => write!(f, "guest triple fault"),
            GuestExit::SystemEvent(t) => write!(f, "guest system event {t}"),
            GuestExit::InternalError { suberror, rip, code } => {
                let what = if *suberror == SUBERROR_EMULATION { "emulation failure" } else { "internal error" };
                write!(f, "KVM {what} (suberror {suberror}) at rip {rip:#x}")?;
                match code {
                    Some(bytes) => {
                        write!(f, ", instruction bytes:")?;
                        bytes.iter().try_for_each(|b| write!(f, " {b:02x}"))
                    }
                    None => write!(f, ", instruction bytes unreadable"),
                }
            }
            GuestExit::FailEntry(r) => write!(f, "VM entry failed (reason {r:#x})"),
            GuestExit::Stopped => write!(f, "stopped by the host"),
            GuestExit::RunFailed(e) => write!(f, "KVM_RUN failed: {}", std::io::Error::from_raw_os_error(*e)),
            GuestExit::Xstate(XstateFailure::Ioctl { what, errno }) => write!(
                f,
                "keeping the guest's extended register state: {what}: {}",
                std::io::Error::from_raw_os_error(*errno)
            ),
            GuestExit::Xstate(XstateFailure::Keeper(e)) => {
                write!(f, "keeping the guest's extended register state: {e}")
            }
        }
    }
}

/// What every vCPU of a machine reaches: the buses, the reset line, the
/// flags the host and the vCPUs stop or pause each other with, the keeper
/// of the guest tasks' extended register state.
#[derive(Debug, Clone)]
pub struct Shared {
    pub pio: Bus,
    pub mmio: Bus,
    pub reset: Arc<AtomicBool>,
    /// Asks every vCPU to leave its run loop.
    pub stop: Arc<AtomicBool>,
    /// Set when the agent rings STARTED.
    pub started: Arc<AtomicBool>,
    /// Set when the agent rings READY with a snapshot wanted: every vCPU
    /// pauses at its next exit (the host kicks them out of KVM_RUN).
    pub pause: Arc<AtomicBool>,
    /// The guest tasks' extended register state, on emulated KVM.
    pub keeper: Option<Arc<Mutex<Keeper>>>,
}

/// One vCPU and what its exits reach.
#[derive(Debug)]
pub struct Vcpu {
    fd: VcpuFd,
    /// Its index: KVM's vCPU id and its APIC ID (0 boots the machine).
    index: usize,
    /// What the vCPU is given (filtered: `arch::cpuid::filter`, with its
    /// own APIC ID and the machine's topology), at boot and at a restore.
    cpuid: CpuId,
    /// The MSRs a snapshot saves (KVM_GET_MSR_INDEX_LIST and the extras).
    msr_indices: Vec<u32>,
    shared: Shared,
    /// Guest RIPs sampled at each kick (`ROOTLAYER_GUEST_PROFILE`).
    samples: Option<Vec<u64>>,
    /// The KVM_GET_XSAVE2 buffer where the kept state passes 4 KiB (AMX).
    xsave2: Option<Xsave>,
    /// Host time spent keeping extended state.
    xstate_time: std::time::Duration,
    /// Where to pause for a snapshot (taken once).
    pause: Option<Pause>,
}

/// How the vCPU thread hands a paused vCPU to the VMM for a snapshot.
#[derive(Debug)]
pub struct Pause {
    pub paused: mpsc::Sender<VcpuMsg>,
    /// The VMM answers once memory and devices are written down.
    pub resume: mpsc::Receiver<()>,
}

/// What a vCPU thread tells the VMM, with its index.
#[derive(Debug)]
pub enum VcpuMsg {
    /// Paused for the snapshot with this state (or why it could not be
    /// read); the thread waits for the resume message.
    Paused(usize, Box<Result<VcpuState, SnapshotError>>),
    /// The run ended: why, profiler samples, host time spent keeping
    /// extended state.
    Done(usize, GuestExit, Vec<u64>, std::time::Duration),
}

/// What keeping the guest tasks' extended state cost (emulated KVM).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct XstateStats {
    /// Operations that read (and most wrote) the vCPU's XSAVE state.
    pub ops: u64,
    /// Host time spent on them, port exit handling included.
    pub time: std::time::Duration,
}

fn kvm_err(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> VmmError {
    move |source| VmmError::Kvm { what, source }
}

impl Vcpu {
    /// vCPU `index` on `fd`, given `cpuid` (its own), reaching `shared`.
    pub fn new(fd: VcpuFd, index: usize, cpuid: CpuId, shared: Shared, xsave_bytes: usize) -> Self {
        // The buffer is what KVM_CAP_XSAVE2 said (KVM copies that much),
        // never less than the kept layout.
        let area =
            shared.keeper.as_ref().map_or(0, |k| k.lock().expect("keeper lock").layout().area_size().max(xsave_bytes));
        let xsave2 = (area > xstate::XSAVE_BYTES).then(|| {
            let words = (area - xstate::XSAVE_BYTES).div_ceil(4);
            Xsave::new(words).expect("an XSAVE area fits a FAM wrapper")
        });
        Self {
            fd,
            index,
            cpuid,
            msr_indices: Vec::new(),
            shared,
            samples: None,
            xsave2,
            xstate_time: std::time::Duration::ZERO,
            pause: None,
        }
    }

    pub fn index(&self) -> usize {
        self.index
    }

    /// The flag the agent's STARTED sets.
    pub fn started_flag(&self) -> Arc<AtomicBool> {
        self.shared.started.clone()
    }

    /// Pause for a snapshot when the guest's vCPUs are asked to (the agent
    /// rang READY), saving these MSRs (what KVM_GET_MSR_INDEX_LIST gave,
    /// and the ones the boot sets).
    pub fn pause_at_ready(&mut self, pause: Pause, msr_indices: Vec<u32>) {
        self.pause = Some(pause);
        self.msr_indices = msr_indices;
    }

    /// A pause armed and asked for: complete the exit KVM_RUN returned last
    /// (the doorbell's OUT on the vCPU that heard READY) without running
    /// the guest further (`immediate_exit`, as KVM's API document asks
    /// before saving state), hand the state over and wait.
    fn pause_for_snapshot(&mut self) {
        let Some(pause) = self.pause.take() else { return };
        self.fd.set_kvm_immediate_exit(1);
        let completed = match self.fd.run() {
            // EAGAIN: an application processor still waiting for its
            // startup IPI woke with nothing to do (no exit pending).
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => Ok(()),
            Err(source) => Err(SnapshotError::Kvm { what: "complete the last exit's I/O", source }),
            Ok(_) => Err(SnapshotError::Kvm {
                what: "complete the last exit's I/O (the guest ran on)",
                source: kvm_ioctls::Error::new(libc::EBUSY),
            }),
        };
        self.fd.set_kvm_immediate_exit(0);
        let state = completed.and_then(|()| self.save());
        if pause.paused.send(VcpuMsg::Paused(self.index, Box::new(state))).is_ok() {
            let _ = pause.resume.recv();
        }
    }

    /// Host time spent keeping extended state so far.
    pub fn xstate_time(&self) -> std::time::Duration {
        self.xstate_time
    }

    /// Record the guest's instruction pointer every time the host kicks the
    /// vCPU out of KVM_RUN (a sampling profiler of the guest kernel).
    pub fn enable_profiling(&mut self) {
        self.samples = Some(Vec::new());
    }

    /// The samples taken so far.
    pub fn take_samples(&mut self) -> Vec<u64> {
        self.samples.take().unwrap_or_default()
    }

    /// The boot processor: CPUID, MSRs and local APIC as for every vCPU,
    /// then registers and FPU for the kernel entry point.
    pub fn configure(&self, mem: &GuestMemoryMmap, entry: EntryPoint) -> Result<(), VmmError> {
        self.configure_ap()?;
        let sregs = self.fd.get_sregs().map_err(kvm_err("get special registers"))?;
        let sregs = regs::setup_sregs(mem, entry.mode, sregs)?;
        self.fd.set_sregs(&sregs).map_err(kvm_err("set special registers"))?;
        self.fd.set_regs(&regs::boot_regs(entry.mode, entry.addr.0)).map_err(kvm_err("set registers"))?;
        self.fd.set_fpu(&regs::boot_fpu()).map_err(kvm_err("set FPU"))
    }

    /// What every vCPU gets: CPUID (filtered already), MSRs and local APIC.
    /// An application processor then waits, in KVM, for the boot
    /// processor's INIT and startup IPIs (KVM makes every vCPU but id 0
    /// wait so, with the in-kernel irqchip).
    pub fn configure_ap(&self) -> Result<(), VmmError> {
        self.fd.set_cpuid2(&self.cpuid).map_err(kvm_err("set CPUID"))?;
        // What firmware would leave: MTRRs enabled with write-back as the
        // default memory type, fast string operations on.
        let msrs = Msrs::from_entries(&[
            kvm_msr_entry { index: MSR_MTRR_DEF_TYPE, data: MTRR_ENABLE | MTRR_TYPE_WRBACK, ..Default::default() },
            kvm_msr_entry { index: MSR_IA32_MISC_ENABLE, data: MISC_ENABLE_FAST_STRING, ..Default::default() },
        ])
        .expect("two entries fit");
        let set = self.fd.set_msrs(&msrs).map_err(kvm_err("set MSRs"))?;
        if set != 2 {
            return Err(VmmError::Kvm { what: "set MSRs", source: kvm_ioctls::Error::new(libc::EINVAL) });
        }
        // LINT0 delivers the 8259's interrupts (ExtINT), LINT1 NMIs, as the
        // BIOS would leave them.
        let mut lapic = self.fd.get_lapic().map_err(kvm_err("get local APIC"))?;
        set_lvt_mode(&mut lapic.regs, APIC_LVT0, APIC_MODE_EXTINT);
        set_lvt_mode(&mut lapic.regs, APIC_LVT1, APIC_MODE_NMI);
        self.fd.set_lapic(&lapic).map_err(kvm_err("set local APIC"))?;
        Ok(())
    }

    /// Run until the guest stops; device exits are handled on this thread.
    /// `filter` is the thread's seccomp filter, installed by the caller; its
    /// test probe runs where the first exit is handled.
    pub fn run(&mut self, mem: &GuestMemoryMmap, filter: &ThreadFilter) -> GuestExit {
        let mut first = true;
        loop {
            if self.shared.stop.load(Ordering::SeqCst) {
                return GuestExit::Stopped;
            }
            if self.pause.is_some() && self.shared.pause.load(Ordering::SeqCst) {
                self.pause_for_snapshot();
                continue;
            }
            let exit = self.fd.run();
            if std::mem::take(&mut first) {
                filter.probe();
            }
            match exit {
                Ok(VcpuExit::IoOut(DOORBELL_PORT, data)) => {
                    let event = <[u8; 4]>::try_from(data).map(u32::from_le_bytes).ok();
                    match event {
                        // Every vCPU pauses (this one at the loop's top,
                        // the others once the host kicks them).
                        Some(rootlayer_protocol::VMM_EVENT_READY) if self.pause.is_some() => {
                            self.shared.pause.store(true, Ordering::SeqCst);
                        }
                        Some(rootlayer_protocol::VMM_EVENT_STARTED) => {
                            self.shared.started.store(true, Ordering::SeqCst);
                        }
                        Some(rootlayer_protocol::VMM_EVENT_POWER_OFF) => return GuestExit::Reset,
                        _ => {}
                    }
                }
                Ok(VcpuExit::IoIn(port, data)) if Keeper::claims(port) => match &self.shared.keeper {
                    Some(keeper) => keeper.lock().expect("keeper lock").read(port, data),
                    None => data.fill(0xff),
                },
                Ok(VcpuExit::IoOut(port, data)) if Keeper::claims(port) => {
                    let started = std::time::Instant::now();
                    let action = self
                        .shared
                        .keeper
                        .as_ref()
                        .map_or(Action::None, |k| k.lock().expect("keeper lock").write(self.index, port, data));
                    let done = self.xstate_action(action);
                    self.xstate_time += started.elapsed();
                    if let Err(failure) = done {
                        return GuestExit::Xstate(failure);
                    }
                }
                Ok(VcpuExit::IoIn(port, data)) => {
                    self.shared.pio.read(u64::from(port), data);
                }
                Ok(VcpuExit::IoOut(port, data)) => {
                    self.shared.pio.write(u64::from(port), data);
                    if self.shared.reset.load(Ordering::SeqCst) {
                        return GuestExit::Reset;
                    }
                }
                Ok(VcpuExit::MmioRead(addr, data)) => {
                    self.shared.mmio.read(addr, data);
                }
                Ok(VcpuExit::MmioWrite(addr, data)) => {
                    self.shared.mmio.write(addr, data);
                }
                Ok(VcpuExit::Hlt) => return GuestExit::Halted,
                Ok(VcpuExit::Shutdown) => return GuestExit::TripleFault,
                Ok(VcpuExit::SystemEvent(kind, _)) => return GuestExit::SystemEvent(kind),
                Ok(VcpuExit::FailEntry(reason, _cpu)) => return GuestExit::FailEntry(reason),
                Ok(VcpuExit::InternalError) => return self.internal_error(mem),
                Ok(other) => {
                    // Exits we never enable (debug, hypercalls, ...): report
                    // them as an internal error rather than spinning.
                    let _ = other;
                    return self.internal_error(mem);
                }
                Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                    if let Some(samples) = self.samples.as_mut() {
                        if let Ok(regs) = self.fd.get_regs() {
                            samples.push(regs.rip);
                        }
                    }
                }
                Err(e) => return GuestExit::RunFailed(e.errno()),
            }
        }
    }

    /// Carry out what the keeper asked for on this vCPU's XSAVE state,
    /// under the keeper's lock (the saved states are the whole guest's; the
    /// keeper checks the vCPU's owner again, as another vCPU may have come
    /// in between).
    fn xstate_action(&mut self, action: Action) -> Result<(), XstateFailure> {
        let Some(keeper) = self.shared.keeper.clone() else { return Ok(()) };
        if action == Action::None {
            return Ok(());
        }
        let mut keeper = keeper.lock().expect("keeper lock");
        let ioctl = |(what, e): (&'static str, kvm_ioctls::Error)| XstateFailure::Ioctl { what, errno: e.errno() };
        let mut bytes = get_xsave_bytes(&self.fd, self.xsave2.as_mut()).map_err(ioctl)?;
        if keeper.apply(self.index, action, &mut bytes).map_err(XstateFailure::Keeper)? {
            set_xsave_bytes(&self.fd, self.xsave2.as_mut(), &bytes).map_err(ioctl)?;
        }
        Ok(())
    }

    fn internal_error(&mut self, mem: &GuestMemoryMmap) -> GuestExit {
        let run = self.fd.get_kvm_run();
        let suberror = if run.exit_reason == KVM_EXIT_INTERNAL_ERROR {
            // SAFETY: exit_reason says the `internal` member of the exit
            // union is the one KVM filled in; it is plain old data.
            unsafe { run.__bindgen_anon_1.internal.suberror }
        } else {
            u32::MAX
        };
        let rip = self.fd.get_regs().map(|r| r.rip).unwrap_or(u64::MAX);
        let code = self.read_code(mem, rip);
        GuestExit::InternalError { suberror, rip, code }
    }

    /// The 16 bytes at the guest's current instruction, through its page
    /// tables.
    fn read_code(&self, mem: &GuestMemoryMmap, rip: u64) -> Option<Vec<u8>> {
        let sregs = self.fd.get_sregs().ok()?;
        let linear = sregs.cs.base.wrapping_add(rip);
        let tr = self.fd.translate_gva(linear).ok()?;
        if tr.valid == 0 {
            return None;
        }
        let mut buf = vec![0u8; 16];
        mem.read_slice(&mut buf, GuestAddress(tr.physical_address)).ok()?;
        Some(buf)
    }
}

/// The vCPU's KVM state, read at the pause for a snapshot (an exit KVM
/// completed) and put back into a fresh vCPU: its CPUID first (the one the
/// snapshot's key names), then the registers. (The keeper's per-task state
/// is the machine's: [`super::machine::Machine::save`].)
impl Persist for Vcpu {
    type State = VcpuState;
    type Error = SnapshotError;
    fn save(&mut self) -> Result<VcpuState, SnapshotError> {
        capture_vcpu(&self.fd, self.xsave2.as_mut(), &self.msr_indices)
    }
    fn restore(&mut self, state: &VcpuState) -> Result<(), SnapshotError> {
        self.fd.set_cpuid2(&self.cpuid).map_err(snap_kvm("set CPUID"))?;
        restore_vcpu(&self.fd, state, self.xsave2.as_mut())
    }
}

/// A failed XSAVE ioctl: its name and KVM's error.
pub type XsaveIoctlError = (&'static str, kvm_ioctls::Error);

/// The vCPU's whole XSAVE area as bytes: KVM_GET_XSAVE, or KVM_GET_XSAVE2
/// into `xsave2` where the vCPU has that buffer (kept state past 4 KiB).
pub fn get_xsave_bytes(fd: &VcpuFd, xsave2: Option<&mut Xsave>) -> Result<Vec<u8>, XsaveIoctlError> {
    match xsave2 {
        None => Ok(xstate::words_to_bytes(&fd.get_xsave().map_err(|e| ("KVM_GET_XSAVE", e))?.region)),
        Some(area) => {
            // SAFETY: `area` holds the KVM_CAP_XSAVE2 size the kept layout
            // was built from, queried after the AMX permission request and
            // never enlarged since.
            unsafe { fd.get_xsave2(area) }.map_err(|e| ("KVM_GET_XSAVE2", e))?;
            let mut words = area.as_fam_struct_ref().xsave.region.to_vec();
            words.extend_from_slice(area.as_slice());
            Ok(xstate::words_to_bytes(&words))
        }
    }
}

/// How many bytes [`get_xsave_bytes`] gives for this vCPU.
pub fn xsave_bytes_len(xsave2: Option<&Xsave>) -> usize {
    xstate::XSAVE_BYTES + xsave2.map_or(0, |area| area.as_slice().len() * 4)
}

/// Write an area of [`xsave_bytes_len`] bytes back into the vCPU (the
/// caller checks the length).
pub fn set_xsave_bytes(fd: &VcpuFd, xsave2: Option<&mut Xsave>, bytes: &[u8]) -> Result<(), XsaveIoctlError> {
    match xsave2 {
        None => {
            let mut state = kvm_bindings::kvm_xsave::default();
            xstate::bytes_to_words(bytes, &mut state.region);
            // SAFETY: a whole `kvm_xsave`; no dynamic (AMX) feature is
            // enabled for a vCPU without an XSAVE2 buffer (the kept area
            // fits 4 KiB), so KVM reads no more than that.
            unsafe { fd.set_xsave(&state) }.map_err(|e| ("KVM_SET_XSAVE", e))
        }
        Some(area) => {
            let mut words = vec![0u32; bytes.len() / 4];
            xstate::bytes_to_words(bytes, &mut words);
            // SAFETY: the FAM struct's own region, then its entries.
            unsafe { area.as_mut_fam_struct() }.xsave.region.copy_from_slice(&words[..xstate::XSAVE_BYTES / 4]);
            area.as_mut_slice().copy_from_slice(&words[xstate::XSAVE_BYTES / 4..]);
            // SAFETY: as for KVM_GET_XSAVE2: the buffer is the full size KVM
            // uses for this vCPU.
            unsafe { fd.set_xsave2(area) }.map_err(|e| ("KVM_SET_XSAVE2", e))
        }
    }
}

fn snap_kvm(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> SnapshotError {
    move |source| SnapshotError::Kvm { what, source }
}

/// KVM_GET_MSRS reads in order and stops at the first MSR it refuses:
/// read in batches, and step over a refused one alone.
fn read_msrs(fd: &VcpuFd, indices: &[u32]) -> Result<Vec<(u32, u64)>, SnapshotError> {
    const BATCH: usize = 64;
    let mut out = Vec::with_capacity(indices.len());
    let mut rest = indices;
    while !rest.is_empty() {
        let n = rest.len().min(BATCH);
        let entries: Vec<kvm_msr_entry> =
            rest[..n].iter().map(|&index| kvm_msr_entry { index, ..Default::default() }).collect();
        let mut msrs = Msrs::from_entries(&entries).expect("a batch fits");
        let got = fd.get_msrs(&mut msrs).map_err(snap_kvm("get MSRs"))?;
        out.extend(msrs.as_slice()[..got].iter().map(|e| (e.index, e.data)));
        // The one at `got` was refused (not saved; KVM lists MSRs the
        // vCPU's CPUID does not give it).
        rest = &rest[(got + 1).min(n)..];
    }
    Ok(out)
}

/// Read a paused vCPU. `xsave2` is the vCPU's XSAVE2 buffer where it has
/// one (the same the keeper uses), `msr_indices` what KVM_GET_MSR_INDEX_LIST
/// gave.
fn capture_vcpu(fd: &VcpuFd, xsave2: Option<&mut Xsave>, msr_indices: &[u32]) -> Result<VcpuState, SnapshotError> {
    let xsave = get_xsave_bytes(fd, xsave2).map_err(|(what, source)| SnapshotError::Kvm { what, source })?;
    // MP state first: reading it makes KVM accept pending APIC events,
    // which may change the LAPIC and the events read after it.
    let mp_state = fd.get_mp_state().map_err(snap_kvm("get MP state"))?;
    Ok(VcpuState {
        mp_state,
        regs: fd.get_regs().map_err(snap_kvm("get registers"))?,
        sregs: fd.get_sregs().map_err(snap_kvm("get special registers"))?,
        xsave,
        xcrs: fd.get_xcrs().map_err(snap_kvm("get XCRs"))?,
        debugregs: fd.get_debug_regs().map_err(snap_kvm("get debug registers"))?,
        lapic: fd.get_lapic().map_err(snap_kvm("get local APIC"))?,
        msrs: read_msrs(fd, msr_indices)?,
        events: fd.get_vcpu_events().map_err(snap_kvm("get vCPU events"))?,
    })
}

/// Put a vCPU back as [`capture_vcpu`] read it (its CPUID already set), in
/// the order Firecracker restores it (`vstate/vcpu.rs`): MP state,
/// registers, special registers, XSAVE, XCRs, debug registers, LAPIC, MSRs
/// (TSC before the TSC deadline, as KVM lists them), the pending events last.
/// `xsave2` as for capture: the saved area must be exactly that size.
fn restore_vcpu(fd: &VcpuFd, state: &VcpuState, xsave2: Option<&mut Xsave>) -> Result<(), SnapshotError> {
    fd.set_mp_state(state.mp_state).map_err(snap_kvm("set MP state"))?;
    fd.set_regs(&state.regs).map_err(snap_kvm("set registers"))?;
    fd.set_sregs(&state.sregs).map_err(snap_kvm("set special registers"))?;
    let want = xsave_bytes_len(xsave2.as_deref());
    if state.xsave.len() != want {
        return Err(SnapshotError::XsaveSize { got: state.xsave.len(), want });
    }
    set_xsave_bytes(fd, xsave2, &state.xsave).map_err(|(what, source)| SnapshotError::Kvm { what, source })?;
    fd.set_xcrs(&state.xcrs).map_err(snap_kvm("set XCRs"))?;
    fd.set_debug_regs(&state.debugregs).map_err(snap_kvm("set debug registers"))?;
    fd.set_lapic(&state.lapic).map_err(snap_kvm("set local APIC"))?;
    let entries: Vec<kvm_msr_entry> =
        state.msrs.iter().map(|&(index, data)| kvm_msr_entry { index, data, ..Default::default() }).collect();
    for chunk in entries.chunks(64) {
        let msrs = Msrs::from_entries(chunk).expect("a batch fits");
        let got = fd.set_msrs(&msrs).map_err(snap_kvm("set MSRs"))?;
        if got != chunk.len() {
            return Err(SnapshotError::Msrs { got, want: chunk.len(), first: chunk[got].index });
        }
    }
    fd.set_vcpu_events(&state.events).map_err(snap_kvm("set vCPU events"))?;
    Ok(())
}

fn set_lvt_mode(regs: &mut [std::os::raw::c_char; 1024], offset: usize, mode: u32) {
    let mut b = [0u8; 4];
    for (i, v) in b.iter_mut().enumerate() {
        *v = regs[offset + i] as u8;
    }
    let value = (u32::from_le_bytes(b) & !0x700) | (mode << 8);
    for (i, v) in value.to_le_bytes().iter().enumerate() {
        regs[offset + i] = *v as std::os::raw::c_char;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lvt_mode_sets_only_the_delivery_mode_bits() {
        let mut regs = [0 as std::os::raw::c_char; 1024];
        regs[APIC_LVT0] = 0x12;
        regs[APIC_LVT0 + 1] = 0x01; // fixed mode bits set to 1
        regs[APIC_LVT0 + 2] = 0x01; // masked
        set_lvt_mode(&mut regs, APIC_LVT0, APIC_MODE_EXTINT);
        assert_eq!(regs[APIC_LVT0] as u8, 0x12);
        assert_eq!(regs[APIC_LVT0 + 1] as u8, 0x07);
        assert_eq!(regs[APIC_LVT0 + 2] as u8, 0x01);
    }

    #[test]
    fn emulation_failure_prints_the_instruction_bytes() {
        let e =
            GuestExit::InternalError { suberror: 1, rip: 0xffff_ffff_8100_0000, code: Some(vec![0x0f, 0x01, 0xca]) };
        assert_eq!(
            e.to_string(),
            "KVM emulation failure (suberror 1) at rip 0xffffffff81000000, instruction bytes: 0f 01 ca"
        );
    }
}
