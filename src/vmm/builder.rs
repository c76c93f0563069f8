//! One linear recipe from configuration to a finished guest:
//! KVM -> VM -> memory -> kernel -> devices -> vCPU -> run loop.

use super::arch::{boot, layout, mptable};
use super::kvm::{self, KvmKind};
use super::vcpu::{GuestExit, Vcpu, XstateStats};
use super::xstate::{self, Keeper, Layout};
use super::VmmError;
use crate::devices::console::{ConsoleLog, ConsoleSink, Echo, EchoLimit};
use crate::devices::i8042::{I8042, I8042_PORT_BASE, I8042_PORT_LEN};
use crate::devices::serial::{SerialDevice, COM1_IRQ, COM1_PORT_BASE, COM1_PORT_LEN};
use crate::devices::virtio::{DeviceFailures, Interrupt, MmioTransport, StartContext, VirtioDevice};
use crate::devices::Bus;
use crate::seccomp::{Policy, ThreadKind};
use kvm_bindings::{kvm_pit_config, kvm_userspace_memory_region, KVM_MAX_CPUID_ENTRIES, KVM_PIT_SPEAKER_DUMMY};
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

/// Boot the guest described by `config` and run it to its end.
pub fn run(mut config: VmConfig) -> Result<RunReport, VmmError> {
    let start = Instant::now();
    if !(layout::MEM_MIN_MIB..=layout::MEM_MAX_MIB).contains(&config.mem_mib) {
        return Err(VmmError::MemSize { mib: config.mem_mib, min: layout::MEM_MIN_MIB, max: layout::MEM_MAX_MIB });
    }
    let kvm = kvm::open()?;
    let kind = kvm::kind();
    let seccomp = Policy::new(config.seccomp);

    // Guest memory is declared before the VM so that it is unmapped after it.
    let mem_bytes = usize::try_from(config.mem_mib << 20).expect("bounded by MEM_MAX_MIB");
    let mem: GuestMemoryMmap = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), mem_bytes)])
        .map_err(|source| VmmError::Memory { mib: config.mem_mib, source })?;

    let vm = kvm.create_vm().map_err(kvm_err("create VM"))?;
    vm.set_tss_address(KVM_TSS_ADDRESS).map_err(kvm_err("set TSS address"))?;
    vm.create_irq_chip().map_err(kvm_err("create in-kernel irqchip"))?;
    let pit = kvm_pit_config { flags: KVM_PIT_SPEAKER_DUMMY, ..Default::default() };
    vm.create_pit2(pit).map_err(kvm_err("create in-kernel PIT"))?;
    for region in mem.iter() {
        // Back guest RAM with transparent huge pages where the host allows
        // it (QEMU does the same): fewer host page faults and TLB misses,
        // which shows most where the guest kernel is emulated. Advisory: a
        // failure only costs speed.
        // SAFETY: the range is exactly one live anonymous mapping owned by
        // `mem`; MADV_HUGEPAGE changes no contents.
        unsafe {
            libc::madvise(region.as_ptr().cast(), usize::try_from(region.len()).expect("fits"), libc::MADV_HUGEPAGE);
        }
    }
    for (slot, region) in mem.iter().enumerate() {
        let region_desc = kvm_userspace_memory_region {
            slot: u32::try_from(slot).expect("one region"),
            flags: 0,
            guest_phys_addr: region.start_addr().0,
            memory_size: region.len(),
            userspace_addr: region.as_ptr() as u64,
        };
        // SAFETY: the region is a live anonymous mapping of `memory_size`
        // bytes owned by `mem`, which outlives `vm` (declared before it), so
        // KVM never sees the host address after it is unmapped.
        unsafe { vm.set_user_memory_region(region_desc) }.map_err(kvm_err("register guest memory"))?;
    }

    // virtio-mmio devices: one window and one IRQ each, announced on the
    // command line; QueueNotify writes go straight to the queue eventfds
    // (ioeventfd) and interrupts straight into the irqchip (irqfd).
    let mut mmio = Bus::new();
    let mut cmdline = kernel_cmdline(kind, &config.cmdline);
    // A device worker that stops serving on its own says so here.
    let failures = DeviceFailures::default();
    for (index, mut device) in config.virtio.drain(..).enumerate() {
        let index = u32::try_from(index).expect("few devices");
        let irq = layout::VIRTIO_FIRST_IRQ + index;
        if irq > layout::VIRTIO_LAST_IRQ {
            return Err(VmmError::TooManyDevices { max: layout::VIRTIO_LAST_IRQ - layout::VIRTIO_FIRST_IRQ + 1 });
        }
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
        mmio.insert(Arc::new(Mutex::new(transport)), addr, layout::MMIO_DEVICE_SIZE)
            .map_err(device_err("placing a virtio device on the MMIO bus"))?;
        cmdline.push_str(&format!(" virtio_mmio.device=4K@{addr:#x}:{irq}"));
    }

    let entry = boot::load(&mem, &config.kernel, config.initrd.as_deref(), &cmdline)?;
    mptable::write(&mem)?;

    // Devices on the port bus: COM1 and the i8042 reset line.
    let reset = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let (sink, console) = ConsoleSink::new(config.echo, config.echo_limit, start);
    let serial_irq = EventFd::new(libc::EFD_NONBLOCK).map_err(device_err("serial eventfd"))?;
    vm.register_irqfd(&serial_irq, COM1_IRQ).map_err(kvm_err("register serial irqfd"))?;
    let serial = SerialDevice::new(serial_irq, sink);
    let mut pio = Bus::new();
    pio.insert(Arc::new(Mutex::new(serial)), COM1_PORT_BASE, COM1_PORT_LEN)
        .map_err(device_err("placing the serial port on the port bus"))?;
    pio.insert(Arc::new(Mutex::new(I8042::new(reset.clone()))), I8042_PORT_BASE, I8042_PORT_LEN)
        .map_err(device_err("placing the i8042 on the port bus"))?;

    // The extended register state the guest may use. On emulated KVM guest
    // user code reaches the host's XCR0, AMX tile data included where the
    // host has it, so the VMM asks for AMX (KVM then reports it and sizes
    // KVM_GET_XSAVE2 for it) and keeps all of it per guest task; on
    // hardware the guest kernel's XSAVE keeps what its CPUID offers (no AMX).
    let amx = kind == KvmKind::Emulated && request_amx_for_guests();
    let cpuid = kvm.get_supported_cpuid(KVM_MAX_CPUID_ENTRIES).map_err(kvm_err("get supported CPUID"))?;
    let xsave2_bytes = usize::try_from(vm.check_extension_int(kvm_ioctls::Cap::Xsave2)).unwrap_or(0);
    let area_max = if amx { xsave2_bytes.max(xstate::XSAVE_BYTES) } else { xstate::XSAVE_BYTES };
    let kept = Layout::from_supported_cpuid(cpuid.as_slice(), area_max, amx);
    let keeper = (kind == KvmKind::Emulated).then(|| Keeper::new(kept.clone()));
    let vcpu_fd = vm.create_vcpu(0).map_err(kvm_err("create vCPU"))?;
    let mut vcpu = Vcpu::new(vcpu_fd, pio, mmio, reset, stop.clone(), keeper, area_max);
    vcpu.configure(&mem, cpuid, entry, kind, &kept)?;
    let profile = std::env::var_os("ROOTLAYER_GUEST_PROFILE").map(PathBuf::from);
    if profile.is_some() {
        vcpu.enable_profiling();
    }

    let signal = kick_signal();
    let filter = seccomp.thread(ThreadKind::Vcpu)?;
    let (tx, rx) = mpsc::channel();
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
                let _ = tx.send((exit, vcpu.take_samples(), vcpu.xstate_stats()));
            }
        })
        .map_err(VmmError::Thread)?;
    let started = match ready_rx.recv() {
        Ok(installed) => installed.map_err(VmmError::from),
        Err(_) => Err(VmmError::Thread(std::io::Error::other("the vCPU thread ended at start"))),
    };
    if let Err(e) = started {
        let _ = thread.join();
        return Err(e);
    }

    // While profiling, kick the vCPU every few milliseconds; otherwise wait.
    // Wait for the guest, waking every 100 ms to notice SIGINT/SIGTERM
    // (every 5 ms while profiling, to sample the vCPU).
    let tick = if profile.is_some() { Duration::from_millis(5) } else { Duration::from_millis(100) };
    let mut interrupted = false;
    let mut device_failed = None;
    let wait = loop {
        let remaining = config.timeout.saturating_sub(start.elapsed());
        match rx.recv_timeout(remaining.min(tick)) {
            Err(mpsc::RecvTimeoutError::Timeout) if !remaining.is_zero() => {
                if super::interrupted() {
                    interrupted = true;
                    break Err(mpsc::RecvTimeoutError::Timeout);
                }
                if let Some(what) = failures.first() {
                    device_failed = Some(what);
                    break Err(mpsc::RecvTimeoutError::Timeout);
                }
                if profile.is_some() {
                    let _ = thread.kill(signal);
                }
            }
            other => break other,
        }
    };
    let ((exit, samples, xstate), timed_out) = match wait {
        Ok(done) => (done, false),
        Err(_) => {
            // Ask the vCPU to stop and kick it out of KVM_RUN until it does;
            // repeated, because a kick that lands just before KVM_RUN is lost.
            stop.store(true, Ordering::SeqCst);
            loop {
                let _ = thread.kill(signal);
                let timed_out = !interrupted && device_failed.is_none();
                match rx.recv_timeout(Duration::from_millis(20)) {
                    Ok(done) => break (done, timed_out),
                    Err(mpsc::RecvTimeoutError::Timeout) => continue,
                    Err(mpsc::RecvTimeoutError::Disconnected) => {
                        break ((GuestExit::Stopped, Vec::new(), None), timed_out)
                    }
                }
            }
        }
    };
    let _ = thread.join();
    let exit = match device_failed {
        Some(what) => GuestExit::DeviceFailed(what),
        None => exit,
    };
    let peak_rss_kib = peak_rss_kib();
    let guest_rss_kib = mem.iter().map(|r| mapping_rss_kib(r.as_ptr() as u64)).sum();
    drop(vm);
    if let Some(path) = profile {
        let text: String = samples.iter().map(|rip| format!("{rip:x}\n")).collect();
        if let Err(e) = std::fs::write(&path, text) {
            eprintln!("rootlayer: writing guest profile {}: {e}", path.display());
        }
    }
    Ok(RunReport { exit, timed_out, interrupted, wall: start.elapsed(), console, peak_rss_kib, guest_rss_kib, xstate })
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
