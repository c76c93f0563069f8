//! What every way of starting a machine shares: the host's KVM and what it
//! offers the guest (CPUID, the extended register state kept), the VM with
//! its in-kernel interrupt controllers and PIT, guest memory registered,
//! the devices on their buses and the vCPU built on them. Whether the
//! machine then boots ([`super::cold`]) or comes back from a snapshot
//! ([`super::restore`]) is theirs; running it is [`super::supervise`]'s.

use super::arch::{self, layout};
use super::config::{kernel_cmdline, MailboxJob, VmConfig};
use super::kvm::{self, KvmKind};
use super::snapshot::state::{self as snap_state, VcpuState};
use super::snapshot::{HostKey, MachineState, SnapshotError};
use super::vcpu::{Shared, Vcpu, DOORBELL_PORT};
use super::xstate::{self, Keeper, Layout};
use super::VmmError;
use crate::devices::console::{ConsoleLog, ConsoleSink};
use crate::devices::i8042::{I8042, I8042_PORT_BASE, I8042_PORT_LEN};
use crate::devices::serial::{SerialDevice, COM1_IRQ, COM1_PORT_BASE, COM1_PORT_LEN};
use crate::devices::virtio::{DeviceFailures, Interrupt, MmioTransport, StartContext};
use crate::devices::Bus;
use crate::persist::Persist;
use crate::protocol::mailbox::{self, Part};
use crate::seccomp::Policy;
use kvm_bindings::{kvm_pit_config, kvm_userspace_memory_region, CpuId, KVM_MAX_CPUID_ENTRIES, KVM_PIT_SPEAKER_DUMMY};
use kvm_ioctls::{IoEventAddress, Kvm, VcpuFd, VmFd};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Instant;
use vm_memory::{GuestAddress, GuestMemory, GuestMemoryMmap, GuestMemoryRegion};
use vmm_sys_util::eventfd::EventFd;

/// Where KVM puts the real-mode TSS it needs on Intel (three pages just below
/// the 4 GiB boundary, away from RAM and the MMIO window).
const KVM_TSS_ADDRESS: usize = 0xfffb_d000;

pub(super) fn device_err<E: std::error::Error + Send + Sync + 'static>(
    what: &'static str,
) -> impl FnOnce(E) -> VmmError {
    move |source| VmmError::Device { what, source: Box::new(source) }
}

pub(super) fn kvm_err(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> VmmError {
    move |source| VmmError::Kvm { what, source }
}

/// This host's KVM and what a guest gets from it.
#[derive(Debug)]
pub(super) struct Host {
    pub kvm: Kvm,
    pub kind: KvmKind,
    /// The CPUID the vCPU gets (filtered for this kind of host).
    pub cpuid: CpuId,
    /// The extended register state kept per guest task (emulated KVM).
    pub kept: Layout,
    /// The XSAVE area the vCPU's state takes, in bytes.
    pub area_max: usize,
}

impl Host {
    pub fn probe() -> Result<Self, VmmError> {
        let kvm = kvm::open()?;
        let kind = kvm::kind();
        // The extended register state the guest may use. On emulated KVM
        // guest user code reaches the host's XCR0, AMX tile data included
        // where the host has it, so the VMM asks for AMX (KVM then reports
        // it and sizes KVM_GET_XSAVE2 for it) and keeps all of it per guest
        // task; on hardware the guest kernel's XSAVE keeps what its CPUID
        // offers (no AMX).
        let amx = kind == KvmKind::Emulated && request_amx_for_guests();
        let supported = kvm.get_supported_cpuid(KVM_MAX_CPUID_ENTRIES).map_err(kvm_err("get supported CPUID"))?;
        let xsave2_bytes = usize::try_from(kvm.check_extension_int(kvm_ioctls::Cap::Xsave2)).unwrap_or(0);
        let area_max = if amx { xsave2_bytes.max(xstate::XSAVE_BYTES) } else { xstate::XSAVE_BYTES };
        let kept = Layout::from_supported_cpuid(supported.as_slice(), area_max, amx);
        let mut cpuid = supported;
        arch::cpuid::filter(cpuid.as_mut_slice(), kind, &kept);
        Ok(Host { kvm, kind, cpuid, kept, area_max })
    }

    /// The guest's whole command line: the doorbell, then `config`'s for
    /// this kind of host (so that a caller's `rootlayer_vmm.port=0` wins,
    /// and the guest runs without the doorbell), and every device's window.
    pub fn cmdline(&self, config: &VmConfig) -> Result<String, VmmError> {
        let mut cmdline =
            kernel_cmdline(self.kind, &format!("rootlayer_vmm.port={DOORBELL_PORT:#x} {}", config.cmdline));
        let device_count = u32::try_from(config.virtio.len()).unwrap_or(u32::MAX);
        if device_count > layout::VIRTIO_LAST_IRQ - layout::VIRTIO_FIRST_IRQ + 1 {
            return Err(VmmError::TooManyDevices { max: layout::VIRTIO_LAST_IRQ - layout::VIRTIO_FIRST_IRQ + 1 });
        }
        for index in 0..device_count {
            let (addr, irq) = (layout::mmio_device_addr(index), layout::VIRTIO_FIRST_IRQ + index);
            cmdline.push_str(&format!(" virtio_mmio.device=4K@{addr:#x}:{irq}"));
        }
        Ok(cmdline)
    }

    /// A VM with its interrupt controllers and PIT, and `cpus` vCPUs (ids
    /// 0 to `cpus` - 1; KVM makes 0 the boot processor).
    pub fn create_vm(&self, cpus: u32) -> Result<(VmFd, Vec<VcpuFd>), VmmError> {
        let vm = self.kvm.create_vm().map_err(kvm_err("create VM"))?;
        vm.set_tss_address(KVM_TSS_ADDRESS).map_err(kvm_err("set TSS address"))?;
        vm.create_irq_chip().map_err(kvm_err("create in-kernel irqchip"))?;
        let pit = kvm_pit_config { flags: KVM_PIT_SPEAKER_DUMMY, ..Default::default() };
        vm.create_pit2(pit).map_err(kvm_err("create in-kernel PIT"))?;
        let vcpus = (0..cpus)
            .map(|id| vm.create_vcpu(u64::from(id)).map_err(kvm_err("create vCPU")))
            .collect::<Result<Vec<_>, _>>()?;
        Ok((vm, vcpus))
    }

    /// What of this host a snapshot must match (`vcpu` gives the TSC rate).
    pub fn key(&self, vcpu: &VcpuFd) -> HostKey {
        HostKey {
            kind: format!("{:?}", self.kind),
            cpuid_sha256: cpuid_digest(&self.cpuid),
            tsc_khz: vcpu.get_tsc_khz().unwrap_or(0),
            kept_mask: self.kept.mask(),
            xsave_bytes: self.area_max,
        }
    }

    /// The MSRs a snapshot saves: what KVM lists, and the MTRRs and
    /// MISC_ENABLE, which the boot sets and KVM does not list (QEMU saves
    /// them too); unreadable ones are skipped when read.
    pub fn snapshot_msrs(&self) -> Result<Vec<u32>, VmmError> {
        let mut msrs = self.kvm.get_msr_index_list().map_err(kvm_err("get MSR index list"))?.as_slice().to_vec();
        for msr in snap_state::EXTRA_MSRS.iter().chain(&snap_state::MTRR_MSRS) {
            if !msrs.contains(msr) {
                msrs.push(*msr);
            }
        }
        Ok(msrs)
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
    super::snapshot::sha256_hex(text.as_bytes())
}

/// A VM put together: its memory registered, its devices on their buses
/// (their workers started, filtered), the console. Fields drop in order:
/// the VM before the memory it maps.
#[derive(Debug)]
pub(super) struct Machine {
    pub vm: VmFd,
    pub mem: GuestMemoryMmap,
    /// The job mailbox ([`crate::protocol::mailbox`]): memory of its own,
    /// in no snapshot.
    pub mailbox: GuestMemoryMmap,
    /// The virtio-mmio transports, in bus order.
    pub transports: Vec<Arc<Mutex<MmioTransport>>>,
    pub serial: Arc<Mutex<SerialDevice>>,
    /// A device worker that stops serving on its own says so here.
    pub failures: DeviceFailures,
    /// Asks the vCPUs to leave their run loops.
    pub stop: Arc<AtomicBool>,
    pub console: Arc<Mutex<ConsoleLog>>,
    /// The guest tasks' extended register state (emulated KVM), shared by
    /// the vCPUs.
    pub keeper: Option<Arc<Mutex<Keeper>>>,
}

impl Machine {
    /// Register `mem` with `vm`, attach `config`'s virtio devices (one
    /// window and one IRQ each; QueueNotify writes go straight to the queue
    /// eventfds, interrupts straight into the irqchip), COM1 and the i8042
    /// reset line, and build a vCPU on each of `vcpus` over them.
    pub fn assemble(
        host: &Host,
        vm: VmFd,
        mem: GuestMemoryMmap,
        vcpus: Vec<VcpuFd>,
        config: &mut VmConfig,
        seccomp: &Policy,
        start: Instant,
    ) -> Result<(Machine, Vec<Vcpu>), VmmError> {
        let (sink, console) = ConsoleSink::new(config.echo, config.echo_limit, start);
        let serial_irq = EventFd::new(libc::EFD_NONBLOCK).map_err(device_err("serial eventfd"))?;
        let serial = Arc::new(Mutex::new(SerialDevice::new(
            serial_irq.try_clone().map_err(device_err("serial eventfd"))?,
            sink,
        )));
        let mailbox = GuestMemoryMmap::from_ranges(&[(GuestAddress(layout::MAILBOX_ADDR), layout::MAILBOX_SIZE)])
            .map_err(|source| VmmError::Memory { mib: (layout::MAILBOX_SIZE >> 20) as u64, source })?;
        let mut machine = Machine {
            vm,
            mem,
            mailbox,
            transports: Vec::new(),
            serial,
            failures: DeviceFailures::default(),
            stop: Arc::new(AtomicBool::new(false)),
            console,
            keeper: (host.kind == KvmKind::Emulated)
                .then(|| Arc::new(Mutex::new(Keeper::new(host.kept.clone(), vcpus.len())))),
        };
        machine.register_memory()?;
        let mut mmio = Bus::new();
        for (index, mut device) in config.virtio.drain(..).enumerate() {
            let index = u32::try_from(index).expect("few devices");
            let irq = layout::VIRTIO_FIRST_IRQ + index;
            let addr = layout::mmio_device_addr(index);
            // Its worker thread starts now, filtered, before any vCPU runs.
            device
                .start(&StartContext { seccomp, failures: machine.failures.clone() })
                .map_err(device_err("starting a device worker"))?;
            let irq_evt = EventFd::new(libc::EFD_NONBLOCK).map_err(device_err("virtio irq eventfd"))?;
            machine.vm.register_irqfd(&irq_evt, irq).map_err(kvm_err("register virtio irqfd"))?;
            let transport = MmioTransport::new(device, machine.mem.clone(), Interrupt::new(irq_evt))
                .map_err(device_err("virtio-mmio transport"))?;
            for (queue, evt) in transport.queue_evts().iter().enumerate() {
                let notify = IoEventAddress::Mmio(addr + MmioTransport::NOTIFY_OFFSET);
                machine
                    .vm
                    .register_ioevent(evt, &notify, u32::try_from(queue).expect("few queues"))
                    .map_err(kvm_err("register virtio ioeventfd"))?;
            }
            let transport = Arc::new(Mutex::new(transport));
            machine.transports.push(transport.clone());
            mmio.insert(transport, addr, layout::MMIO_DEVICE_SIZE)
                .map_err(device_err("placing a virtio device on the MMIO bus"))?;
        }

        machine.vm.register_irqfd(&serial_irq, COM1_IRQ).map_err(kvm_err("register serial irqfd"))?;
        let reset = Arc::new(AtomicBool::new(false));
        let mut pio = Bus::new();
        pio.insert(machine.serial.clone(), COM1_PORT_BASE, COM1_PORT_LEN)
            .map_err(device_err("placing the serial port on the port bus"))?;
        pio.insert(Arc::new(Mutex::new(I8042::new(reset.clone()))), I8042_PORT_BASE, I8042_PORT_LEN)
            .map_err(device_err("placing the i8042 on the port bus"))?;

        let shared = Shared {
            pio,
            mmio,
            reset,
            stop: machine.stop.clone(),
            started: Arc::new(AtomicBool::new(false)),
            pause: Arc::new(AtomicBool::new(false)),
            keeper: machine.keeper.clone(),
        };
        let count = u32::try_from(vcpus.len()).expect("few vCPUs");
        let vcpus = vcpus
            .into_iter()
            .enumerate()
            .map(|(index, fd)| {
                let mut cpuid = host.cpuid.clone();
                arch::cpuid::for_vcpu(cpuid.as_mut_slice(), u32::try_from(index).expect("few vCPUs"), count);
                Vcpu::new(fd, index, cpuid, shared.clone(), host.area_max)
            })
            .collect();
        Ok((machine, vcpus))
    }

    fn register_memory(&self) -> Result<(), VmmError> {
        for (slot, region) in self.mem.iter().chain(self.mailbox.iter()).enumerate() {
            let region_desc = kvm_userspace_memory_region {
                slot: u32::try_from(slot).expect("one region"),
                flags: 0,
                guest_phys_addr: region.start_addr().0,
                memory_size: region.len(),
                userspace_addr: region.as_ptr() as u64,
            };
            // SAFETY: the region is a live mapping of `memory_size` bytes
            // owned by `self.mem` or `self.mailbox`, which drop after
            // `self.vm` (field order), so KVM never sees the host address
            // after it is unmapped.
            unsafe { self.vm.set_user_memory_region(region_desc) }.map_err(kvm_err("register guest memory"))?;
        }
        Ok(())
    }

    /// Put `job` in the mailbox (the headers of its parts over whatever the
    /// guest may have left there): done while no vCPU runs.
    pub fn post_job(&self, job: &MailboxJob) -> Result<(), VmmError> {
        // SAFETY: the region is a live mapping of MAILBOX_SIZE bytes owned
        // by `self.mailbox`, and no vCPU runs, so nothing else reads or
        // writes it while this slice lives.
        let window = unsafe { self.mailbox_window() };
        mailbox::put(window, Part::Job, &job.json).map_err(VmmError::Mailbox)?;
        mailbox::put(window, Part::Files, &job.files).map_err(VmmError::Mailbox)
    }

    /// The result the agent left in the mailbox: read once no vCPU runs.
    pub fn take_result(&self) -> Result<Option<Vec<u8>>, mailbox::MailboxError> {
        // SAFETY: as in `post_job`: every vCPU has stopped.
        let window = unsafe { self.mailbox_window() };
        mailbox::take(window, Part::Result).map(|r| r.map(<[u8]>::to_vec))
    }

    /// The mailbox's memory as a slice.
    ///
    /// # Safety
    /// No vCPU may run while the slice lives (the guest writes the window).
    #[allow(clippy::mut_from_ref)]
    unsafe fn mailbox_window(&self) -> &mut [u8] {
        let region = self.mailbox.iter().next().expect("one region");
        // SAFETY: the caller's; the region maps MAILBOX_SIZE bytes for as
        // long as `self` lives.
        unsafe { std::slice::from_raw_parts_mut(region.as_ptr(), layout::MAILBOX_SIZE) }
    }

    /// The machine's state but for memory, every vCPU paused and saved
    /// (`vcpus`, in index order). Refused if a share has served anything
    /// but its FUSE_INIT (the same for every job: a share mounted ahead):
    /// the job itself goes into the mailbox only after the snapshot, and
    /// everything else of a job reaches the guest through a share (its
    /// stores), so that would mean READY came late, from a guest no one
    /// else may reuse.
    pub fn save(&self, vcpus: Vec<VcpuState>) -> Result<MachineState, SnapshotError> {
        let vm = snap_state::capture_vm(&self.vm)?;
        let mut transports = Vec::new();
        for (index, t) in self.transports.iter().enumerate() {
            let state =
                t.lock().expect("transport lock").save().map_err(|source| SnapshotError::Device { index, source })?;
            if state.device_type == crate::devices::virtio::TYPE_FS && state.served_content {
                return Err(SnapshotError::ShareUsed { index });
            }
            transports.push(state);
        }
        let serial = self.serial.lock().expect("serial lock").save().map_err(|_| SnapshotError::Serial)?;
        let keeper = self.keeper.as_ref().map(|k| k.lock().expect("keeper lock").save()).transpose()?;
        Ok(MachineState { vcpus, vm, serial, transports, keeper })
    }

    /// Put a snapshot's machine state into this fresh machine and `vcpus`:
    /// the VM's interrupt controllers first, then the vCPUs (their LAPICs)
    /// and the keeper, then the transports, whose pending interrupts are
    /// raised again into the restored controllers.
    pub fn restore(&self, vcpus: &mut [Vcpu], state: &MachineState) -> Result<(), SnapshotError> {
        if state.transports.len() != self.transports.len() {
            return Err(SnapshotError::DeviceCount { snapshot: state.transports.len(), ours: self.transports.len() });
        }
        if state.vcpus.len() != vcpus.len() {
            return Err(SnapshotError::VcpuCount { snapshot: state.vcpus.len(), ours: vcpus.len() });
        }
        snap_state::restore_vm(&self.vm, &state.vm)?;
        for (vcpu, saved) in vcpus.iter_mut().zip(&state.vcpus) {
            vcpu.restore(saved)?;
        }
        match (&self.keeper, &state.keeper) {
            (Some(keeper), Some(kept)) => keeper.lock().expect("keeper lock").restore(kept)?,
            (None, None) => {}
            _ => return Err(SnapshotError::KeeperMismatch),
        }
        for (index, (transport, saved)) in self.transports.iter().zip(&state.transports).enumerate() {
            transport
                .lock()
                .expect("transport lock")
                .restore(saved)
                .map_err(|source| SnapshotError::Device { index, source })?;
        }
        self.serial.lock().expect("serial lock").restore(&state.serial).map_err(|_| SnapshotError::Serial)
    }
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
