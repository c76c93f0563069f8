//! The vCPU's and the VM's KVM state as a snapshot holds it. The vCPU saves
//! and restores its own ([`crate::vmm::vcpu::Vcpu`]'s [`Persist`](crate::persist::Persist));
//! the VM's interrupt controllers, PIT and clock are read and put back here.

use super::SnapshotError;
use kvm_bindings::{
    kvm_clock_data, kvm_debugregs, kvm_irqchip, kvm_lapic_state, kvm_mp_state, kvm_pit_state2, kvm_regs, kvm_sregs,
    kvm_vcpu_events, kvm_xcrs, KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE,
};
use kvm_ioctls::VmFd;
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
    #[serde(with = "crate::persist::hex")]
    pub xsave: Vec<u8>,
    pub xcrs: kvm_xcrs,
    pub debugregs: kvm_debugregs,
    pub lapic: kvm_lapic_state,
    /// (index, value) of every MSR KVM lists and lets us read.
    pub msrs: Vec<(u32, u64)>,
    pub events: kvm_vcpu_events,
    pub mp_state: kvm_mp_state,
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
