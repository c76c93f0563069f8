//! A cold boot: fresh anonymous guest memory, the kernel, initramfs, boot
//! parameters and MP table written into it, the vCPU at the entry point.

use super::arch::{boot, mptable};
use super::config::VmConfig;
use super::machine::Machine;
use super::vcpu::Vcpu;
use super::VmmError;
use vm_memory::{GuestAddress, GuestMemory, GuestMemoryMmap, GuestMemoryRegion};

/// `bytes` (`mib` MiB) of zeroed guest RAM at guest address 0.
pub(super) fn memory(mib: u64, bytes: usize) -> Result<GuestMemoryMmap, VmmError> {
    let mem =
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), bytes)]).map_err(|source| VmmError::Memory { mib, source })?;
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
    Ok(mem)
}

/// Load `config`'s kernel and initramfs with `cmdline` and the MP table
/// into the machine's memory, point the boot processor at the kernel's
/// entry and leave the others waiting for its startup IPIs.
pub(super) fn boot(machine: &Machine, vcpus: &[Vcpu], config: &VmConfig, cmdline: &str) -> Result<(), VmmError> {
    let entry = boot::load(&machine.mem, &config.kernel, config.initrd.as_deref(), cmdline)?;
    mptable::write(&machine.mem, config.cpus)?;
    let (bsp, aps) = vcpus.split_first().expect("at least one vCPU");
    bsp.configure(&machine.mem, entry)?;
    aps.iter().try_for_each(Vcpu::configure_ap)
}
