//! The vCPU's and the VM's KVM state: what KVM_GET_* gives, put back with
//! KVM_SET_* in the order Firecracker restores it (`vstate/vcpu.rs`): CPUID
//! is set by the caller first, then MP state, registers, special
//! registers, XSAVE, XCRs, debug registers, LAPIC, MSRs (TSC before the
//! TSC deadline, as KVM lists them) and last the pending events.

use super::SnapshotError;
use crate::vmm::xstate::KeeperState;
use kvm_bindings::{
    kvm_clock_data, kvm_debugregs, kvm_irqchip, kvm_lapic_state, kvm_mp_state, kvm_msr_entry, kvm_pit_state2, kvm_regs,
    kvm_sregs, kvm_vcpu_events, kvm_xcrs, Msrs, Xsave, KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER,
    KVM_IRQCHIP_PIC_SLAVE,
};
use kvm_ioctls::{VcpuFd, VmFd};
use serde::{Deserialize, Serialize};

/// MSRs saved beyond what KVM_GET_MSR_INDEX_LIST names: MISC_ENABLE
/// (fast strings, set at boot).
pub const EXTRA_MSRS: [u32; 1] = [0x1a0];

/// The MTRRs (the boot enables them, write-back by default): MTRRdefType,
/// the fixed-range ones and eight variable-range base/mask pairs.
pub const MTRR_MSRS: [u32; 28] = [
    0x2ff, 0x250, 0x258, 0x259, 0x268, 0x269, 0x26a, 0x26b, 0x26c, 0x26d, 0x26e, 0x26f, 0x200, 0x201, 0x202, 0x203,
    0x204, 0x205, 0x206, 0x207, 0x208, 0x209, 0x20a, 0x20b, 0x20c, 0x20d, 0x20e, 0x20f,
];

fn kvm(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> SnapshotError {
    move |source| SnapshotError::Kvm { what, source }
}

/// One vCPU, paused at a completed exit.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VcpuState {
    pub regs: kvm_regs,
    pub sregs: kvm_sregs,
    /// The whole XSAVE area (KVM_GET_XSAVE, or KVM_GET_XSAVE2 where the
    /// kept state passes 4 KiB), as bytes.
    #[serde(with = "super::hex")]
    pub xsave: Vec<u8>,
    pub xcrs: kvm_xcrs,
    pub debugregs: kvm_debugregs,
    pub lapic: kvm_lapic_state,
    /// (index, value) of every MSR KVM lists and lets us read.
    pub msrs: Vec<(u32, u64)>,
    pub events: kvm_vcpu_events,
    pub mp_state: kvm_mp_state,
    /// The per-task extended state the VMM keeps (emulated KVM only).
    pub keeper: Option<KeeperState>,
}

/// The VM: both 8259s, the I/O APIC, the PIT and kvmclock.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VmState {
    pub pic_master: kvm_irqchip,
    pub pic_slave: kvm_irqchip,
    pub ioapic: kvm_irqchip,
    pub pit: kvm_pit_state2,
    pub clock: kvm_clock_data,
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
        let got = fd.get_msrs(&mut msrs).map_err(kvm("get MSRs"))?;
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
pub fn capture_vcpu(
    fd: &VcpuFd,
    xsave2: Option<&mut Xsave>,
    msr_indices: &[u32],
    keeper: Option<KeeperState>,
) -> Result<VcpuState, SnapshotError> {
    let xsave =
        crate::vmm::vcpu::get_xsave_bytes(fd, xsave2).map_err(|(what, source)| SnapshotError::Kvm { what, source })?;
    // MP state first: reading it makes KVM accept pending APIC events,
    // which may change the LAPIC and the events read after it.
    let mp_state = fd.get_mp_state().map_err(kvm("get MP state"))?;
    Ok(VcpuState {
        mp_state,
        regs: fd.get_regs().map_err(kvm("get registers"))?,
        sregs: fd.get_sregs().map_err(kvm("get special registers"))?,
        xsave,
        xcrs: fd.get_xcrs().map_err(kvm("get XCRs"))?,
        debugregs: fd.get_debug_regs().map_err(kvm("get debug registers"))?,
        lapic: fd.get_lapic().map_err(kvm("get local APIC"))?,
        msrs: read_msrs(fd, msr_indices)?,
        events: fd.get_vcpu_events().map_err(kvm("get vCPU events"))?,
        keeper,
    })
}

/// Put a vCPU back as [`capture_vcpu`] read it (its CPUID already set).
/// `xsave2` as for capture: the saved area must be exactly that size.
pub fn restore_vcpu(fd: &VcpuFd, state: &VcpuState, xsave2: Option<&mut Xsave>) -> Result<(), SnapshotError> {
    fd.set_mp_state(state.mp_state).map_err(kvm("set MP state"))?;
    fd.set_regs(&state.regs).map_err(kvm("set registers"))?;
    fd.set_sregs(&state.sregs).map_err(kvm("set special registers"))?;
    let want = crate::vmm::vcpu::xsave_bytes_len(xsave2.as_deref());
    if state.xsave.len() != want {
        return Err(SnapshotError::XsaveSize { got: state.xsave.len(), want });
    }
    crate::vmm::vcpu::set_xsave_bytes(fd, xsave2, &state.xsave)
        .map_err(|(what, source)| SnapshotError::Kvm { what, source })?;
    fd.set_xcrs(&state.xcrs).map_err(kvm("set XCRs"))?;
    fd.set_debug_regs(&state.debugregs).map_err(kvm("set debug registers"))?;
    fd.set_lapic(&state.lapic).map_err(kvm("set local APIC"))?;
    let entries: Vec<kvm_msr_entry> =
        state.msrs.iter().map(|&(index, data)| kvm_msr_entry { index, data, ..Default::default() }).collect();
    for chunk in entries.chunks(64) {
        let msrs = Msrs::from_entries(chunk).expect("a batch fits");
        let got = fd.set_msrs(&msrs).map_err(kvm("set MSRs"))?;
        if got != chunk.len() {
            return Err(SnapshotError::Msrs { got, want: chunk.len(), first: chunk[got].index });
        }
    }
    fd.set_vcpu_events(&state.events).map_err(kvm("set vCPU events"))?;
    Ok(())
}

fn irqchip(vm: &VmFd, chip_id: u32) -> Result<kvm_irqchip, SnapshotError> {
    let mut chip = kvm_irqchip { chip_id, ..Default::default() };
    vm.get_irqchip(&mut chip).map_err(kvm("get irqchip"))?;
    Ok(chip)
}

/// Read the VM's interrupt controllers, PIT and clock (the vCPU paused).
pub fn capture_vm(vm: &VmFd) -> Result<VmState, SnapshotError> {
    Ok(VmState {
        pic_master: irqchip(vm, KVM_IRQCHIP_PIC_MASTER)?,
        pic_slave: irqchip(vm, KVM_IRQCHIP_PIC_SLAVE)?,
        ioapic: irqchip(vm, KVM_IRQCHIP_IOAPIC)?,
        pit: vm.get_pit2().map_err(kvm("get PIT"))?,
        clock: vm.get_clock().map_err(kvm("get clock"))?,
    })
}

/// Put the VM's state back (irqchip and PIT created, no vCPU run yet).
/// kvmclock is set to the snapshot's value, without KVM_CLOCK_REALTIME:
/// KVM does not add the time the snapshot lay on disk (where the host's
/// KVM keeps the guest TSC in step with its own, the guest's uptime jumps
/// ahead as after a suspend; that is all). The wall clock is the agent's to
/// set, from job.json.
pub fn restore_vm(vm: &VmFd, state: &VmState) -> Result<(), SnapshotError> {
    vm.set_pit2(&state.pit).map_err(kvm("set PIT"))?;
    let clock = kvm_clock_data { clock: state.clock.clock, flags: 0, ..Default::default() };
    vm.set_clock(&clock).map_err(kvm("set clock"))?;
    for chip in [&state.pic_master, &state.pic_slave, &state.ioapic] {
        vm.set_irqchip(chip).map_err(kvm("set irqchip"))?;
    }
    Ok(())
}
