//! Register state at the kernel's entry point, for the two entry protocols:
//!
//! - PVH (x86/HVM direct boot ABI): 32-bit protected mode, paging off, flat
//!   segments, `%ebx` = address of `hvm_start_info`;
//! - the Linux 64-bit boot protocol (Documentation/x86/boot.rst): long mode
//!   with an identity map, `%rsi` = address of the zero page.
//!
//! These functions only compute values and write the GDT and page tables
//! into guest memory; the vCPU module loads them into KVM.

use super::layout::*;
use kvm_bindings::{kvm_fpu, kvm_regs, kvm_segment, kvm_sregs};
use vm_memory::{Bytes, GuestAddress, GuestMemory};

const X86_CR0_PE: u64 = 0x1;
const X86_CR0_ET: u64 = 0x10;
const X86_CR0_PG: u64 = 0x8000_0000;
const X86_CR4_PAE: u64 = 0x20;
const EFER_LME: u64 = 0x100;
const EFER_LMA: u64 = 0x400;

/// Which entry protocol the kernel is started with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryMode {
    /// PVH: 32-bit protected mode.
    Pvh,
    /// 64-bit boot protocol.
    Long,
}

/// Errors writing boot structures into guest memory.
#[derive(Debug, thiserror::Error)]
pub enum RegsError {
    #[error("writing the boot GDT")]
    Gdt(#[source] vm_memory::GuestMemoryError),
    #[error("writing the boot page tables")]
    PageTables(#[source] vm_memory::GuestMemoryError),
}

/// A GDT entry from flags, base and limit (the descriptor bit layout).
pub const fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    ((base as u64 & 0xff00_0000) << (56 - 24))
        | ((flags as u64 & 0x0000_f0ff) << 40)
        | ((limit as u64 & 0x000f_0000) << (48 - 16))
        | ((base as u64 & 0x00ff_ffff) << 16)
        | (limit as u64 & 0x0000_ffff)
}

/// The KVM segment register equivalent of GDT entry `entry` at `index`.
pub fn segment_from_gdt(entry: u64, index: u8) -> kvm_segment {
    let base = ((entry >> 16) & 0x00ff_ffff) | ((entry >> 32) & 0xff00_0000);
    let mut limit = u32::try_from((entry & 0xffff) | ((entry >> 32) & 0x000f_0000)).expect("20-bit limit");
    let g = ((entry >> 55) & 1) as u8;
    if g == 1 {
        limit = (limit << 12) | 0xfff;
    }
    kvm_segment {
        base,
        limit,
        selector: u16::from(index) * 8,
        type_: ((entry >> 40) & 0xf) as u8,
        present: ((entry >> 47) & 1) as u8,
        dpl: ((entry >> 45) & 3) as u8,
        db: ((entry >> 54) & 1) as u8,
        s: ((entry >> 44) & 1) as u8,
        l: ((entry >> 53) & 1) as u8,
        g,
        avl: ((entry >> 52) & 1) as u8,
        unusable: u8::from(((entry >> 47) & 1) == 0),
        padding: 0,
    }
}

/// The boot GDT: null, code, data, TSS.
pub fn boot_gdt(mode: EntryMode) -> [u64; 4] {
    match mode {
        // 32-bit flat code (D=1, G=1), flat data, TSS.
        EntryMode::Pvh => [0, gdt_entry(0xc09b, 0, 0xfffff), gdt_entry(0xc093, 0, 0xfffff), gdt_entry(0x008b, 0, 0x67)],
        // 64-bit code (L=1), flat data, TSS.
        EntryMode::Long => {
            [0, gdt_entry(0xa09b, 0, 0xfffff), gdt_entry(0xc093, 0, 0xfffff), gdt_entry(0x808b, 0, 0xfffff)]
        }
    }
}

/// Write the GDT and (for the 64-bit protocol) the identity page tables, and
/// return the special registers to load.
pub fn setup_sregs<M: GuestMemory>(mem: &M, mode: EntryMode, mut sregs: kvm_sregs) -> Result<kvm_sregs, RegsError> {
    let gdt = boot_gdt(mode);
    for (i, entry) in gdt.iter().enumerate() {
        mem.write_obj(*entry, GuestAddress(BOOT_GDT_START + (i as u64) * 8)).map_err(RegsError::Gdt)?;
    }
    mem.write_obj(0u64, GuestAddress(BOOT_IDT_START)).map_err(RegsError::Gdt)?;

    let code = segment_from_gdt(gdt[1], 1);
    let data = segment_from_gdt(gdt[2], 2);
    let tss = segment_from_gdt(gdt[3], 3);
    sregs.gdt.base = BOOT_GDT_START;
    sregs.gdt.limit = u16::try_from(std::mem::size_of_val(&gdt) - 1).expect("4-entry GDT");
    sregs.idt.base = BOOT_IDT_START;
    sregs.idt.limit = 7;
    sregs.cs = code;
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = tss;

    match mode {
        EntryMode::Pvh => {
            sregs.cr0 = X86_CR0_PE | X86_CR0_ET;
            sregs.cr4 = 0;
            sregs.efer = 0;
        }
        EntryMode::Long => {
            write_identity_map(mem)?;
            sregs.cr3 = PML4_START;
            sregs.cr4 = X86_CR4_PAE;
            sregs.cr0 = X86_CR0_PE | X86_CR0_ET | X86_CR0_PG;
            sregs.efer = EFER_LME | EFER_LMA;
        }
    }
    Ok(sregs)
}

/// Identity-map the first GiB with 2 MiB pages: one PML4 entry, one PDPT
/// entry, 512 PD entries.
fn write_identity_map<M: GuestMemory>(mem: &M) -> Result<(), RegsError> {
    const PRESENT_RW: u64 = 0x3;
    const PAGE_SIZE_2M: u64 = 0x80;
    mem.write_obj(PDPTE_START | PRESENT_RW, GuestAddress(PML4_START)).map_err(RegsError::PageTables)?;
    mem.write_obj(PDE_START | PRESENT_RW, GuestAddress(PDPTE_START)).map_err(RegsError::PageTables)?;
    for i in 0..512u64 {
        mem.write_obj((i << 21) | PRESENT_RW | PAGE_SIZE_2M, GuestAddress(PDE_START + i * 8))
            .map_err(RegsError::PageTables)?;
    }
    Ok(())
}

/// General registers at the entry point.
pub fn boot_regs(mode: EntryMode, entry: u64) -> kvm_regs {
    let mut regs = kvm_regs { rflags: 0x2, rip: entry, ..Default::default() };
    match mode {
        EntryMode::Pvh => regs.rbx = PVH_INFO_START,
        EntryMode::Long => {
            regs.rsp = BOOT_STACK_POINTER;
            regs.rbp = BOOT_STACK_POINTER;
            regs.rsi = ZERO_PAGE_START;
        }
    }
    regs
}

/// x87 and SSE control words as after FNINIT / reset.
pub fn boot_fpu() -> kvm_fpu {
    kvm_fpu { fcw: 0x37f, mxcsr: 0x1f80, ..Default::default() }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::GuestMemoryMmap;

    #[test]
    fn gdt_entry_round_trips_through_segment() {
        let e = gdt_entry(0xa09b, 0, 0xfffff);
        assert_eq!(e, 0x00af_9b00_0000_ffff);
        let s = segment_from_gdt(e, 1);
        assert_eq!((s.selector, s.type_, s.l, s.db, s.g, s.present, s.s), (8, 0xb, 1, 0, 1, 1, 1));
        assert_eq!(s.limit, 0xffff_ffff);
        let pvh_code = segment_from_gdt(gdt_entry(0xc09b, 0, 0xfffff), 1);
        assert_eq!((pvh_code.l, pvh_code.db), (0, 1));
        let null = segment_from_gdt(0, 0);
        assert_eq!(null.unusable, 1);
    }

    #[test]
    fn long_mode_writes_identity_map() {
        let mem: GuestMemoryMmap = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
        let s = setup_sregs(&mem, EntryMode::Long, kvm_sregs::default()).unwrap();
        assert_eq!(s.cr3, PML4_START);
        assert_eq!(s.efer & (EFER_LME | EFER_LMA), EFER_LME | EFER_LMA);
        let pde: u64 = mem.read_obj(GuestAddress(PDE_START + 8 * 3)).unwrap();
        assert_eq!(pde, (3 << 21) | 0x83);
        let gdt1: u64 = mem.read_obj(GuestAddress(BOOT_GDT_START + 8)).unwrap();
        assert_eq!(gdt1, gdt_entry(0xa09b, 0, 0xfffff));
    }

    #[test]
    fn pvh_starts_in_protected_mode_without_paging() {
        let mem: GuestMemoryMmap = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
        let s = setup_sregs(&mem, EntryMode::Pvh, kvm_sregs::default()).unwrap();
        assert_eq!(s.cr0 & X86_CR0_PG, 0);
        assert_eq!(s.cr0 & X86_CR0_PE, 1);
        assert_eq!(s.cs.db, 1);
        assert_eq!(boot_regs(EntryMode::Pvh, 0x1000).rbx, PVH_INFO_START);
        assert_eq!(boot_regs(EntryMode::Long, 0x1000).rsi, ZERO_PAGE_START);
    }
}
