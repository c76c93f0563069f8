//! Every guest-physical address the VMM uses, in one place.
//!
//! ```text
//! 0x0000_0500  GDT (4 entries)             0x0000_0520  IDT (empty)
//! 0x0000_6000  PVH hvm_start_info, 0x6080 module list (initramfs), 0x6100 memory map
//! 0x0000_7000  zero page (64-bit boot protocol, bzImage)
//! 0x0000_8ff0  boot stack (64-bit boot protocol)
//! 0x0000_9000  PML4, 0xa000 PDPT, 0xb000 PD (identity map of the first GiB)
//! 0x0002_0000  kernel command line (2 KiB)
//! 0x0009_fc00  EBDA (reserved in the e820 map): MP floating pointer + table
//! 0x0010_0000  kernel (vmlinux at its ELF load address, bzImage here)
//! top of RAM   initramfs, page aligned, below INITRD_MAX
//! 0xcf00_0000  the job mailbox, 16 MiB (not RAM: the VMM's own memory)
//! 0xd000_0000  virtio-mmio devices, 4 KiB each
//! ```

pub const BOOT_GDT_START: u64 = 0x500;
pub const BOOT_IDT_START: u64 = 0x520;
pub const PVH_INFO_START: u64 = 0x6000;
pub const PVH_MODLIST_START: u64 = 0x6080;
pub const PVH_MEMMAP_START: u64 = 0x6100;
pub const ZERO_PAGE_START: u64 = 0x7000;
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;
pub const PML4_START: u64 = 0x9000;
pub const PDPTE_START: u64 = 0xa000;
pub const PDE_START: u64 = 0xb000;
pub const CMDLINE_START: u64 = 0x20000;
/// x86 COMMAND_LINE_SIZE.
pub const CMDLINE_MAX_SIZE: usize = 2048;
pub const EBDA_START: u64 = 0x9fc00;
/// Start of memory above the legacy hole.
pub const HIMEM_START: u64 = 0x10_0000;
/// Lowest address of the MMIO window; guest RAM must end below it.
pub const MMIO_START: u64 = 0xd000_0000;
pub const MMIO_DEVICE_SIZE: u64 = 0x1000;
/// First IRQ for virtio-mmio devices (COM1 has 4); ISA IRQs go to the I/O
/// APIC pin of the same number (see mptable.rs).
pub const VIRTIO_FIRST_IRQ: u32 = 5;
/// Pins of KVM's in-kernel I/O APIC.
pub const IOAPIC_PINS: u8 = 24;
/// Last IRQ for virtio-mmio devices.
pub const VIRTIO_LAST_IRQ: u32 = IOAPIC_PINS as u32 - 1;
/// Local APIC and I/O APIC MMIO addresses (the architectural defaults).
pub const LAPIC_ADDR: u64 = 0xfee0_0000;
pub const IOAPIC_ADDR: u64 = 0xfec0_0000;
/// Largest initramfs address the kernel accepts from the boot protocol.
pub const INITRD_ADDR_MAX: u64 = 0x7fff_ffff;

/// The job mailbox (`protocol::mailbox`): its own memory slot, above the
/// most RAM a guest gets and below the MMIO window.
pub use crate::protocol::mailbox::{MAILBOX_ADDR, MAILBOX_SIZE};

/// Guest memory limits in MiB: the kernel, agent and page tables need some
/// room; RAM must end below the MMIO window.
pub const MEM_MIN_MIB: u64 = 64;
pub const MEM_MAX_MIB: u64 = (MMIO_START >> 20) - 256;

/// Guest-physical address of virtio-mmio device `index`.
pub fn mmio_device_addr(index: u32) -> u64 {
    MMIO_START + u64::from(index) * MMIO_DEVICE_SIZE
}
