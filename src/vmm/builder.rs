//! One linear recipe from configuration to a finished guest:
//! KVM -> VM -> snapshot key -> memory (anonymous, or the snapshot's mapped
//! private) -> devices -> kernel and boot registers, or the snapshot's
//! machine state -> vCPU -> run loop (which serves the pause at READY when
//! a snapshot is to be taken).

use super::arch::{self, boot, layout, mptable};
use super::kvm::{self, KvmKind};
use super::snapshot::state::VcpuState;
use super::snapshot::{self, BootPath, DeviceKey, HostKey, Key, MachineState, SnapshotError, SnapshotMode};
use super::vcpu::{GuestExit, Pause, Vcpu, VcpuMsg, XstateStats, DOORBELL_PORT};
use super::xstate::{self, Keeper, Layout};
use super::VmmError;
use crate::devices::console::{ConsoleLog, ConsoleSink, Echo, EchoLimit};
use crate::devices::i8042::{I8042, I8042_PORT_BASE, I8042_PORT_LEN};
use crate::devices::serial::{SerialDevice, COM1_IRQ, COM1_PORT_BASE, COM1_PORT_LEN};
use crate::devices::virtio::{DeviceFailures, Interrupt, MmioTransport, StartContext, VirtioDevice};
use crate::devices::Bus;
use crate::seccomp::{Policy, ThreadKind};
use kvm_bindings::{kvm_pit_config, kvm_userspace_memory_region, CpuId, KVM_MAX_CPUID_ENTRIES, KVM_PIT_SPEAKER_DUMMY};
use kvm_ioctls::IoEventAddress;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, Once};
use std::time::{Duration, Instant};
use vm_memory::{GuestAddress, GuestMemory, GuestMemoryMmap, GuestMemoryRegion};
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::signal::{register_signal_handler, Killable, SIGRTMIN};

/// Where KVM puts the real-mode TSS it needs on Intel (three pages just below
/// the 4 GiB boundary, away from RAM and the MMIO window).
const KVM_TSS_ADDRESS: usize = 0xfffb_d000;

/// How long a restored guest may take to ring STARTED (it takes well under
/// a second, emulated); past it the restore has failed.
const RESTORE_WATCHDOG: Duration = Duration::from_secs(60);

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
/// - `tsc=reliable`: no clocksource watchdog on a single-vCPU guest.
pub const BASE_CMDLINE: &str = "console=ttyS0 quiet reboot=k panic=-1 no_timer_check tsc=reliable rodata=off";

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
    /// Wall-clock limit from the start of [`run`].
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
}

impl std::fmt::Debug for VmConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VmConfig")
            .field("kernel", &self.kernel)
            .field("initrd", &self.initrd)
            .field("cmdline", &self.cmdline)
            .field("mem_mib", &self.mem_mib)
            .field("timeout", &self.timeout)
            .field("virtio", &self.virtio.iter().map(|d| d.device_type()).collect::<Vec<_>>())
            .field("seccomp", &self.seccomp)
            .field("snapshot", &self.snapshot)
            .finish()
    }
}

/// How a run ended.
#[derive(Debug)]
pub struct RunReport {
    pub exit: GuestExit,
    /// True when the wall-clock timeout stopped the guest.
    pub timed_out: bool,
    /// True when SIGINT or SIGTERM stopped the guest.
    pub interrupted: bool,
    /// Time from the start of [`run`] to the end of the guest.
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
}

impl RunReport {
    /// A restored guest that ended before its agent started the job: the
    /// restore failed, and the job deserves a cold boot.
    pub fn restore_failed(&self) -> bool {
        matches!(self.boot, BootPath::Restored { .. }) && !self.started && !self.interrupted
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

fn device_err<E: std::error::Error + Send + Sync + 'static>(what: &'static str) -> impl FnOnce(E) -> VmmError {
    move |source| VmmError::Device { what, source: Box::new(source) }
}

fn kvm_err(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> VmmError {
    move |source| VmmError::Kvm { what, source }
}

extern "C" fn kick_handler(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}

/// The signal that interrupts KVM_RUN so the vCPU thread sees its stop flag.
fn kick_signal() -> libc::c_int {
    static REGISTER: Once = Once::new();
    REGISTER.call_once(|| {
        register_signal_handler(SIGRTMIN(), kick_handler).expect("registering the vCPU kick signal handler");
    });
    SIGRTMIN()
}

/// Boot the guest described by `config`, or restore it from its snapshot,
/// and run it to its end.
pub fn run(mut config: VmConfig) -> Result<RunReport, VmmError> {
    let mut start = Instant::now();
    if !(layout::MEM_MIN_MIB..=layout::MEM_MAX_MIB).contains(&config.mem_mib) {
        return Err(VmmError::MemSize { mib: config.mem_mib, min: layout::MEM_MIN_MIB, max: layout::MEM_MAX_MIB });
    }
    let kvm = kvm::open()?;
    let kind = kvm::kind();
    let seccomp = Policy::new(config.seccomp);

    // The extended register state the guest may use. On emulated KVM guest
    // user code reaches the host's XCR0, AMX tile data included where the
    // host has it, so the VMM asks for AMX (KVM then reports it and sizes
    // KVM_GET_XSAVE2 for it) and keeps all of it per guest task; on
    // hardware the guest kernel's XSAVE keeps what its CPUID offers (no AMX).
    let amx = kind == KvmKind::Emulated && request_amx_for_guests();
    let supported = kvm.get_supported_cpuid(KVM_MAX_CPUID_ENTRIES).map_err(kvm_err("get supported CPUID"))?;
    let xsave2_bytes = usize::try_from(kvm.check_extension_int(kvm_ioctls::Cap::Xsave2)).unwrap_or(0);
    let area_max = if amx { xsave2_bytes.max(xstate::XSAVE_BYTES) } else { xstate::XSAVE_BYTES };
    let kept = Layout::from_supported_cpuid(supported.as_slice(), area_max, amx);
    let mut cpuid = supported;
    arch::cpuid::filter(cpuid.as_mut_slice(), kind, &kept);

    // The command line: ours, the devices' windows, the doorbell.
    let mut cmdline = kernel_cmdline(kind, &config.cmdline);
    cmdline.push_str(&format!(" rootlayer_vmm.port={DOORBELL_PORT:#x}"));
    let device_count = u32::try_from(config.virtio.len()).unwrap_or(u32::MAX);
    if device_count > layout::VIRTIO_LAST_IRQ - layout::VIRTIO_FIRST_IRQ + 1 {
        return Err(VmmError::TooManyDevices { max: layout::VIRTIO_LAST_IRQ - layout::VIRTIO_FIRST_IRQ + 1 });
    }
    for index in 0..device_count {
        let (addr, irq) = (layout::mmio_device_addr(index), layout::VIRTIO_FIRST_IRQ + index);
        cmdline.push_str(&format!(" virtio_mmio.device=4K@{addr:#x}:{irq}"));
    }

    // Guest memory is declared before the VM so that it is unmapped after it.
    let mem: GuestMemoryMmap;
    let vm = kvm.create_vm().map_err(kvm_err("create VM"))?;
    vm.set_tss_address(KVM_TSS_ADDRESS).map_err(kvm_err("set TSS address"))?;
    vm.create_irq_chip().map_err(kvm_err("create in-kernel irqchip"))?;
    let pit = kvm_pit_config { flags: KVM_PIT_SPEAKER_DUMMY, ..Default::default() };
    vm.create_pit2(pit).map_err(kvm_err("create in-kernel PIT"))?;
    let vcpu_fd = vm.create_vcpu(0).map_err(kvm_err("create vCPU"))?;

    // Which way this guest comes up.
    let (dir, try_restore) = match &config.snapshot {
        SnapshotMode::Off => (None, false),
        SnapshotMode::Use(dir) => (Some(dir.clone()), true),
        SnapshotMode::Take(dir) => (Some(dir.clone()), false),
    };
    let key = match &dir {
        Some(_) => {
            let host = HostKey {
                kind: format!("{kind:?}"),
                cpuid_sha256: cpuid_digest(&cpuid),
                tsc_khz: vcpu_fd.get_tsc_khz().unwrap_or(0),
                kept_mask: kept.mask(),
                xsave_bytes: area_max,
            };
            // A kernel or initramfs that cannot be read is the cold boot's
            // to report, in its words.
            snapshot_key(&config, &cmdline, host).ok()
        }
        None => None,
    };
    // Why this guest boots cold although a snapshot was wanted: said once,
    // when the cold boot is under way (not before an input error).
    let mut cold_because = None;
    // Held while this guest takes the snapshot no other job is taking.
    let mut take_lock = None;
    let loaded = match (&dir, &key) {
        (Some(dir), Some(key)) if try_restore => {
            let path = dir.join(key.file_name());
            let mut loaded = snapshot::file::load(&path, key);
            let mut lock = None;
            if matches!(loaded, Err(snapshot::file::FileError::Missing)) {
                // Another job may be taking it right now: wait for that
                // one (its time is not this guest's), then look again.
                let claim = snapshot::lock::claim(dir, &key.file_name(), snapshot::lock::TAKE_WAIT);
                start += claim.waited();
                loaded = snapshot::file::load(&path, key);
                lock = claim.into_lock();
            }
            match loaded {
                Ok(loaded) => Some(loaded),
                Err(e) => {
                    cold_because = Some(e.to_string());
                    take_lock = lock;
                    None
                }
            }
        }
        _ => None,
    };

    let mem_bytes = usize::try_from(config.mem_mib << 20).expect("bounded by MEM_MAX_MIB");
    mem = match &loaded {
        Some(l) => map_snapshot_memory(l, mem_bytes).map_err(VmmError::Restore)?,
        None => {
            let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), mem_bytes)])
                .map_err(|source| VmmError::Memory { mib: config.mem_mib, source })?;
            for region in mem.iter() {
                // Back guest RAM with transparent huge pages where the host
                // allows it (QEMU does the same): fewer host page faults and
                // TLB misses, which shows most where the guest kernel is
                // emulated. Advisory: a failure only costs speed.
                // SAFETY: the range is exactly one live anonymous mapping
                // owned by `mem`; MADV_HUGEPAGE changes no contents.
                unsafe {
                    libc::madvise(
                        region.as_ptr().cast(),
                        usize::try_from(region.len()).expect("fits"),
                        libc::MADV_HUGEPAGE,
                    );
                }
            }
            mem
        }
    };

    for (slot, region) in mem.iter().enumerate() {
        let region_desc = kvm_userspace_memory_region {
            slot: u32::try_from(slot).expect("one region"),
            flags: 0,
            guest_phys_addr: region.start_addr().0,
            memory_size: region.len(),
            userspace_addr: region.as_ptr() as u64,
        };
        // SAFETY: the region is a live mapping of `memory_size` bytes owned
        // by `mem`, which outlives `vm` (declared before it), so KVM never
        // sees the host address after it is unmapped.
        unsafe { vm.set_user_memory_region(region_desc) }.map_err(kvm_err("register guest memory"))?;
    }

    // virtio-mmio devices: one window and one IRQ each, announced on the
    // command line; QueueNotify writes go straight to the queue eventfds
    // (ioeventfd) and interrupts straight into the irqchip (irqfd).
    let mut mmio = Bus::new();
    let mut transports = Vec::new();
    // A device worker that stops serving on its own says so here.
    let failures = DeviceFailures::default();
    for (index, mut device) in config.virtio.drain(..).enumerate() {
        let index = u32::try_from(index).expect("few devices");
        let irq = layout::VIRTIO_FIRST_IRQ + index;
        let addr = layout::mmio_device_addr(index);
        // Its worker thread starts now, filtered, before any vCPU runs.
        device
            .start(&StartContext { seccomp: &seccomp, failures: failures.clone() })
            .map_err(device_err("starting a device worker"))?;
        let irq_evt = EventFd::new(libc::EFD_NONBLOCK).map_err(device_err("virtio irq eventfd"))?;
        vm.register_irqfd(&irq_evt, irq).map_err(kvm_err("register virtio irqfd"))?;
        let transport = MmioTransport::new(device, mem.clone(), Interrupt::new(irq_evt))
            .map_err(device_err("virtio-mmio transport"))?;
        for (queue, evt) in transport.queue_evts().iter().enumerate() {
            let notify = IoEventAddress::Mmio(addr + MmioTransport::NOTIFY_OFFSET);
            vm.register_ioevent(evt, &notify, u32::try_from(queue).expect("few queues"))
                .map_err(kvm_err("register virtio ioeventfd"))?;
        }
        let transport = Arc::new(Mutex::new(transport));
        transports.push(transport.clone());
        mmio.insert(transport, addr, layout::MMIO_DEVICE_SIZE)
            .map_err(device_err("placing a virtio device on the MMIO bus"))?;
    }

    // Devices on the port bus: COM1 and the i8042 reset line.
    let reset = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let (sink, console) = ConsoleSink::new(config.echo, config.echo_limit, start);
    let serial_irq = EventFd::new(libc::EFD_NONBLOCK).map_err(device_err("serial eventfd"))?;
    vm.register_irqfd(&serial_irq, COM1_IRQ).map_err(kvm_err("register serial irqfd"))?;
    let serial = match &loaded {
        Some(l) => SerialDevice::from_state(&l.state.serial, serial_irq, sink)
            .ok_or(VmmError::Restore(SnapshotError::Serial))?,
        None => SerialDevice::new(serial_irq, sink),
    };
    let serial = Arc::new(Mutex::new(serial));
    let mut pio = Bus::new();
    pio.insert(serial.clone(), COM1_PORT_BASE, COM1_PORT_LEN)
        .map_err(device_err("placing the serial port on the port bus"))?;
    pio.insert(Arc::new(Mutex::new(I8042::new(reset.clone()))), I8042_PORT_BASE, I8042_PORT_LEN)
        .map_err(device_err("placing the i8042 on the port bus"))?;

    let keeper = (kind == KvmKind::Emulated).then(|| Keeper::new(kept.clone()));
    let mut vcpu = Vcpu::new(vcpu_fd, pio, mmio, reset, stop.clone(), keeper, area_max);
    let started = vcpu.started_flag();
    let (tx, rx) = mpsc::channel();
    let (resume_tx, resume_rx) = mpsc::channel();
    let mut boot_path = match &loaded {
        Some(l) => {
            if let Err(e) = restore_machine(&vm, &mut vcpu, &cpuid, &transports, l) {
                // Not this guest's to use: the next job takes a new one.
                let _ = std::fs::remove_file(&l.path);
                return Err(VmmError::Restore(e));
            }
            BootPath::Restored { file: l.path.clone(), restore: start.elapsed() }
        }
        None => {
            let entry = boot::load(&mem, &config.kernel, config.initrd.as_deref(), &cmdline)?;
            mptable::write(&mem)?;
            vcpu.configure(&mem, &cpuid, entry)?;
            if let Some(why) = cold_because {
                eprintln!("rootlayer: {why}: booting cold and taking a snapshot");
            }
            if let (Some(_), Some(_)) = (&dir, &key) {
                let mut msr_indices =
                    kvm.get_msr_index_list().map_err(kvm_err("get MSR index list"))?.as_slice().to_vec();
                // KVM does not list the MTRRs nor MISC_ENABLE, which the
                // boot set (QEMU saves them too); unreadable ones are skipped.
                for msr in snapshot::state::EXTRA_MSRS.iter().chain(&snapshot::state::MTRR_MSRS) {
                    if !msr_indices.contains(msr) {
                        msr_indices.push(*msr);
                    }
                }
                vcpu.pause_at_ready(Pause { msr_indices, paused: tx.clone(), resume: resume_rx });
                BootPath::NotReady
            } else {
                BootPath::Cold
            }
        }
    };
    drop(loaded);
    let profile = std::env::var_os("ROOTLAYER_GUEST_PROFILE").map(PathBuf::from);
    if profile.is_some() {
        vcpu.enable_profiling();
    }

    let signal = kick_signal();
    let filter = seccomp.thread(ThreadKind::Vcpu)?;
    let (ready_tx, ready_rx) = mpsc::channel();
    let vcpu_mem = mem.clone();
    let thread = std::thread::Builder::new()
        .name("vcpu0".into())
        .spawn(move || {
            // First thing: the filter; the guest has not run yet.
            let installed = filter.install("vcpu0");
            let ok = installed.is_ok();
            let _ = ready_tx.send(installed);
            if ok {
                let exit = vcpu.run(&vcpu_mem, &filter);
                let _ = tx.send(VcpuMsg::Done(exit, vcpu.take_samples(), vcpu.xstate_stats()));
            }
        })
        .map_err(VmmError::Thread)?;
    let started_ok = match ready_rx.recv() {
        Ok(installed) => installed.map_err(VmmError::from),
        Err(_) => Err(VmmError::Thread(std::io::Error::other("the vCPU thread ended at start"))),
    };
    if let Err(e) = started_ok {
        let _ = thread.join();
        return Err(e);
    }

    // Wait for the guest, waking every 100 ms to notice SIGINT/SIGTERM
    // (every 5 ms while profiling, to sample the vCPU). A pause for the
    // snapshot is served here, on this unfiltered thread.
    let tick = if profile.is_some() { Duration::from_millis(5) } else { Duration::from_millis(100) };
    let mut interrupted = false;
    let mut device_failed = None;
    let restored = matches!(boot_path, BootPath::Restored { .. });
    let mut restore_hung = false;
    // The pause for the snapshot is the VMM's time, not the job's.
    let mut paused_for = Duration::ZERO;
    let wait = loop {
        let remaining = (config.timeout + paused_for).saturating_sub(start.elapsed());
        match rx.recv_timeout(remaining.min(tick)) {
            Ok(VcpuMsg::Paused(state)) => {
                let paused = Instant::now();
                let written = (*state).and_then(|vcpu_state| {
                    let (dir, key) = (dir.as_deref().expect("armed with a dir"), key.as_ref().expect("and a key"));

                    take_snapshot(&vm, vcpu_state, &serial, &transports, &mem, dir, key)
                });
                let _ = resume_tx.send(());
                // Written (or not): the jobs waiting for it go on.
                drop(take_lock.take());
                paused_for += paused.elapsed();
                boot_path = match written {
                    Ok((file, disk_bytes)) => BootPath::Took { file, disk_bytes, pause: paused.elapsed() },
                    Err(e) => {
                        eprintln!("rootlayer: no snapshot taken: {e}");
                        BootPath::TakeFailed(e.to_string())
                    }
                };
            }
            Ok(VcpuMsg::Done(exit, samples, xstate)) => break Ok((exit, samples, xstate)),
            Err(mpsc::RecvTimeoutError::Timeout) if !remaining.is_zero() => {
                if super::interrupted() {
                    interrupted = true;
                    break Err(mpsc::RecvTimeoutError::Timeout);
                }
                if let Some(what) = failures.first() {
                    device_failed = Some(what);
                    break Err(mpsc::RecvTimeoutError::Timeout);
                }
                if restored && !started.load(Ordering::SeqCst) && start.elapsed() > RESTORE_WATCHDOG {
                    // A restored guest that does not get to its job is a
                    // failed restore (the caller boots cold), not a timeout.
                    restore_hung = true;
                    break Err(mpsc::RecvTimeoutError::Timeout);
                }
                if profile.is_some() {
                    let _ = thread.kill(signal);
                }
            }
            Err(e) => break Err(e),
        }
    };
    let ((exit, samples, xstate), timed_out) = match wait {
        Ok(done) => (done, false),
        // The vCPU thread ended without a word (it panicked: see below).
        Err(mpsc::RecvTimeoutError::Disconnected) => ((GuestExit::Stopped, Vec::new(), None), false),
        Err(_) => {
            // Ask the vCPU to stop and kick it out of KVM_RUN until it does;
            // repeated, because a kick that lands just before KVM_RUN is lost.
            stop.store(true, Ordering::SeqCst);
            let timed_out = !interrupted && device_failed.is_none() && !restore_hung;
            loop {
                let _ = thread.kill(signal);
                match rx.recv_timeout(Duration::from_millis(20)) {
                    Ok(VcpuMsg::Done(exit, samples, xstate)) => break ((exit, samples, xstate), timed_out),
                    // Paused as the time ran out: let it go on to its stop.
                    Ok(VcpuMsg::Paused(_)) => {
                        let _ = resume_tx.send(());
                    }
                    Err(mpsc::RecvTimeoutError::Timeout) => continue,
                    Err(mpsc::RecvTimeoutError::Disconnected) => {
                        break ((GuestExit::Stopped, Vec::new(), None), timed_out)
                    }
                }
            }
        }
    };
    let (exit, timed_out) = vcpu_ending(thread.join(), exit, timed_out, device_failed);
    let peak_rss_kib = peak_rss_kib();
    let guest_rss_kib = mem.iter().map(|r| mapping_rss_kib(r.as_ptr() as u64)).sum();
    drop(vm);
    if let Some(path) = profile {
        let text: String = samples.iter().map(|rip| format!("{rip:x}\n")).collect();
        if let Err(e) = std::fs::write(&path, text) {
            eprintln!("rootlayer: writing guest profile {}: {e}", path.display());
        }
    }
    Ok(RunReport {
        exit,
        timed_out,
        interrupted,
        wall: start.elapsed(),
        console,
        peak_rss_kib,
        guest_rss_kib,
        xstate,
        boot: boot_path,
        started: started.load(Ordering::SeqCst),
    })
}

/// How the run ended, from the vCPU thread's end (`joined`), its exit,
/// whether the time ran out and a failed device: a vCPU thread that
/// panicked is an internal error with its message, never a timeout.
fn vcpu_ending(
    joined: std::thread::Result<()>,
    exit: GuestExit,
    timed_out: bool,
    device_failed: Option<String>,
) -> (GuestExit, bool) {
    let panicked = joined.err().map(|payload| {
        payload
            .downcast_ref::<&str>()
            .map(|s| (*s).to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "no message".into())
    });
    match (panicked, device_failed) {
        (Some(what), _) => (GuestExit::VcpuPanicked(what), false),
        (None, Some(what)) => (GuestExit::DeviceFailed(what), timed_out),
        (None, None) => (exit, timed_out),
    }
}

/// sha256 of the CPUID entries the vCPU gets.
fn cpuid_digest(cpuid: &CpuId) -> String {
    let text: String = cpuid
        .as_slice()
        .iter()
        .map(|e| {
            format!("{:x}.{:x}.{:x}:{:x},{:x},{:x},{:x};", e.function, e.index, e.flags, e.eax, e.ebx, e.ecx, e.edx)
        })
        .collect();
    snapshot::sha256_hex(text.as_bytes())
}

/// The snapshot key of the guest `config` describes.
fn snapshot_key(config: &VmConfig, cmdline: &str, host: HostKey) -> std::io::Result<Key> {
    let digest = |path: &std::path::Path| std::fs::read(path).map(|bytes| snapshot::sha256_hex(&bytes));
    let exe = std::env::current_exe().ok();
    let meta = exe.as_ref().and_then(|e| std::fs::metadata(e).ok());
    let rootlayer = format!(
        "{} {} {} {}",
        env!("CARGO_PKG_VERSION"),
        exe.as_ref().map_or_else(String::new, |e| e.display().to_string()),
        meta.as_ref().map_or(0, std::os::unix::fs::MetadataExt::size),
        meta.as_ref().map_or(0, |m| m
            .modified()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_nanos())),
    );
    Ok(Key {
        format: snapshot::FORMAT_VERSION,
        rootlayer,
        kernel_sha256: digest(&config.kernel)?,
        initrd_sha256: match &config.initrd {
            Some(p) => digest(p)?,
            None => String::new(),
        },
        cmdline: cmdline.to_string(),
        mem_mib: config.mem_mib,
        vcpus: 1,
        devices: config
            .virtio
            .iter()
            .map(|d| DeviceKey {
                device_type: d.device_type(),
                features: d.features(),
                queues: d.queue_max_sizes().to_vec(),
            })
            .collect(),
        host,
    })
}

/// Guest memory from a snapshot: the file's memory image mapped private,
/// so that the guest's writes are its own and the file never changes.
fn map_snapshot_memory(loaded: &snapshot::file::Loaded, bytes: usize) -> Result<GuestMemoryMmap, SnapshotError> {
    use vm_memory::mmap::{GuestRegionMmap, MmapRegionBuilder};
    let file = loaded.file.try_clone().map_err(|e| {
        SnapshotError::File(snapshot::file::FileError::Io { what: "reopening the snapshot", source: e })
    })?;
    let region = MmapRegionBuilder::new(bytes)
        .with_file_offset(vm_memory::FileOffset::new(file, loaded.mem_offset))
        .with_mmap_prot(libc::PROT_READ | libc::PROT_WRITE)
        .with_mmap_flags(libc::MAP_PRIVATE | libc::MAP_NORESERVE)
        .build()
        .map_err(SnapshotError::Map)?;
    let region = GuestRegionMmap::new(region, GuestAddress(0)).expect("one region at 0 fits");
    Ok(GuestMemoryMmap::from_regions(vec![region]).expect("one region"))
}

/// Load a snapshot's machine state into the fresh VM, vCPU and devices.
fn restore_machine(
    vm: &kvm_ioctls::VmFd,
    vcpu: &mut Vcpu,
    cpuid: &CpuId,
    transports: &[Arc<Mutex<MmioTransport>>],
    loaded: &snapshot::file::Loaded,
) -> Result<(), SnapshotError> {
    let state = &loaded.state;
    if state.transports.len() != transports.len() {
        return Err(SnapshotError::DeviceCount { snapshot: state.transports.len(), ours: transports.len() });
    }
    snapshot::state::restore_vm(vm, &state.vm)?;
    vcpu.restore(cpuid, &state.vcpu)?;
    for (index, (transport, saved)) in transports.iter().zip(&state.transports).enumerate() {
        transport
            .lock()
            .expect("transport lock")
            .restore(saved)
            .map_err(|source| SnapshotError::Device { index, source })?;
    }
    Ok(())
}

/// The vCPU is paused at READY: write the machine and memory down.
fn take_snapshot(
    vm: &kvm_ioctls::VmFd,
    vcpu: VcpuState,
    serial: &Arc<Mutex<SerialDevice>>,
    transports: &[Arc<Mutex<MmioTransport>>],
    mem: &GuestMemoryMmap,
    dir: &std::path::Path,
    key: &Key,
) -> Result<(PathBuf, u64), SnapshotError> {
    let vm_state = snapshot::state::capture_vm(vm)?;
    let mut saved = Vec::new();
    for (index, t) in transports.iter().enumerate() {
        let state =
            t.lock().expect("transport lock").state().map_err(|source| SnapshotError::Device { index, source })?;
        // Everything of a job reaches the guest through a share (job.json
        // first): a share that served anything means READY came late (not
        // from the agent before its job), and the guest is no one's to reuse.
        if state.device_type == crate::devices::virtio::TYPE_FS && state.served {
            return Err(SnapshotError::ShareUsed { index });
        }
        saved.push(state);
    }
    let state =
        MachineState { vcpu, vm: vm_state, serial: serial.lock().expect("serial lock").state(), transports: saved };
    Ok(snapshot::file::write(dir, key, &state, mem)?)
}

/// Ask the host kernel to let this process's guests use AMX tile data
/// (`ARCH_REQ_XCOMP_GUEST_PERM`); true if granted. Fails harmlessly where
/// the CPU has no AMX.
fn request_amx_for_guests() -> bool {
    const ARCH_REQ_XCOMP_GUEST_PERM: libc::c_long = 0x1025;
    const XFEATURE_XTILEDATA: libc::c_long = 18;
    // SAFETY: arch_prctl with this code only changes the process's XSTATE
    // permissions; no memory is passed.
    unsafe { libc::syscall(libc::SYS_arch_prctl, ARCH_REQ_XCOMP_GUEST_PERM, XFEATURE_XTILEDATA) == 0 }
}

/// VmHWM of this process, in KiB.
fn peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Resident KiB of the mapping that starts at host address `start`.
fn mapping_rss_kib(start: u64) -> Option<u64> {
    let smaps = std::fs::read_to_string("/proc/self/smaps").ok()?;
    let mut in_mapping = false;
    for line in smaps.lines() {
        if let Some((range, _)) = line.split_once(' ') {
            if let Some((lo, _)) = range.split_once('-') {
                if lo.chars().all(|c| c.is_ascii_hexdigit()) {
                    in_mapping = u64::from_str_radix(lo, 16).ok() == Some(start);
                    continue;
                }
            }
        }
        if in_mapping {
            if let Some(rest) = line.strip_prefix("Rss:") {
                return rest.split_whitespace().next()?.parse().ok();
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_vcpu_thread_that_panics_is_an_internal_error_not_a_timeout() {
        let joined = std::thread::spawn(|| panic!("KVM_RUN went wrong")).join();
        let (exit, timed_out) = vcpu_ending(joined, GuestExit::Stopped, true, None);
        assert_eq!(exit, GuestExit::VcpuPanicked("KVM_RUN went wrong".into()));
        assert!(!timed_out, "a panic never reads as a timeout");
        let joined = std::thread::spawn(|| std::panic::panic_any(format!("code {}", 7))).join();
        assert_eq!(vcpu_ending(joined, GuestExit::Reset, false, None).0, GuestExit::VcpuPanicked("code 7".into()));
        // A thread that ended normally: its exit, the device failure first.
        assert_eq!(vcpu_ending(Ok(()), GuestExit::Stopped, true, None), (GuestExit::Stopped, true));
        let failed = vcpu_ending(Ok(()), GuestExit::Stopped, false, Some("virtio-fs worker".into()));
        assert_eq!(failed, (GuestExit::DeviceFailed("virtio-fs worker".into()), false));
    }
}
