//! The Intel MultiProcessor table (MP spec 1.4): how the guest kernel, with
//! no ACPI, learns about its local APIC, the I/O APIC and the ISA IRQ
//! routing. Without it, Linux scans low memory for the floating pointer with
//! one early mapping per 16 bytes, which costs seconds when the guest kernel
//! is emulated, and falls back to the 8259 PIC.
//!
//! Built as plain bytes (no `unsafe` casts): floating pointer at the EBDA,
//! the configuration table right behind it.

use super::layout::{EBDA_START, IOAPIC_ADDR, IOAPIC_PINS, LAPIC_ADDR};
use vm_memory::{Bytes, GuestAddress, GuestMemory};

const MPF_SIZE: usize = 16;
const MPC_HEADER_SIZE: usize = 44;
const ENTRY_PROCESSOR: u8 = 0;
const ENTRY_BUS: u8 = 1;
const ENTRY_IOAPIC: u8 = 2;
const ENTRY_INTSRC: u8 = 3;
const ENTRY_LINTSRC: u8 = 4;
const MP_INT: u8 = 0;
const MP_NMI: u8 = 1;
const MP_EXTINT: u8 = 3;
const CPU_ENABLED: u8 = 1;
const CPU_BOOTPROCESSOR: u8 = 2;
const APIC_VERSION: u8 = 0x14;
const IOAPIC_VERSION: u8 = 0x11;
const BUS_ISA: u8 = 0;
const MP_SPEC_REV: u8 = 4;

/// Errors writing the table.
#[derive(Debug, thiserror::Error)]
#[error("writing the MP table to guest memory")]
pub struct MpTableError(#[source] vm_memory::GuestMemoryError);

fn checksum(bytes: &[u8]) -> u8 {
    bytes.iter().fold(0u8, |a, b| a.wrapping_add(*b)).wrapping_neg()
}

/// The most processors the table names (APIC IDs 0 to `MAX_CPUS` - 1, the
/// I/O APIC's after them): what fits the 1 KiB of EBDA the table lives in
/// (20 bytes a processor); the guest kernel's NR_CPUS is 64.
pub const MAX_CPUS: u8 = 32;

/// The bytes of the table for `cpus` processors (APIC IDs 0 to `cpus` - 1,
/// 0 the boot processor), to be placed at `base`.
pub fn build(base: u64, cpus: u8) -> Vec<u8> {
    assert!((1..=MAX_CPUS).contains(&cpus), "1 to {MAX_CPUS} processors");
    // The I/O APIC's ID follows the processors' (IDs share one space).
    let ioapic_id = cpus;
    let table_addr = u32::try_from(base + MPF_SIZE as u64).expect("MP table below 4 GiB");
    let mut entries: Vec<u8> = Vec::new();
    let mut count: u16 = 0;
    let mut push = |e: &[u8]| {
        entries.extend_from_slice(e);
        count += 1;
    };

    // Processors: APIC ID = index, enabled, 0 the boot processor;
    // signature and feature flags left 0 (Linux reads them from CPUID).
    for id in 0..cpus {
        let flags = if id == 0 { CPU_ENABLED | CPU_BOOTPROCESSOR } else { CPU_ENABLED };
        let mut cpu = vec![ENTRY_PROCESSOR, id, APIC_VERSION, flags];
        cpu.extend_from_slice(&[0u8; 16]);
        push(&cpu);
    }
    push(&[ENTRY_BUS, BUS_ISA, b'I', b'S', b'A', b' ', b' ', b' ']);
    let mut ioapic = vec![ENTRY_IOAPIC, ioapic_id, IOAPIC_VERSION, 1];
    ioapic.extend_from_slice(&u32::try_from(IOAPIC_ADDR).expect("below 4 GiB").to_le_bytes());
    push(&ioapic);
    // ISA IRQ n -> I/O APIC pin n, bus-default polarity and trigger.
    for pin in 0..IOAPIC_PINS {
        push(&[ENTRY_INTSRC, MP_INT, 0, 0, BUS_ISA, pin, ioapic_id, pin]);
    }
    // LINT0 takes the 8259's ExtINT, LINT1 NMIs (all local APICs).
    push(&[ENTRY_LINTSRC, MP_EXTINT, 0, 0, BUS_ISA, 0, 0, 0]);
    push(&[ENTRY_LINTSRC, MP_NMI, 0, 0, BUS_ISA, 0, 0xff, 1]);

    let table_len = u16::try_from(MPC_HEADER_SIZE + entries.len()).expect("small table");
    let mut mpc = Vec::with_capacity(usize::from(table_len));
    mpc.extend_from_slice(b"PCMP");
    mpc.extend_from_slice(&table_len.to_le_bytes());
    mpc.push(MP_SPEC_REV);
    mpc.push(0); // checksum, below
    mpc.extend_from_slice(b"ROOTLAYR"); // OEM ID, 8 bytes
    mpc.extend_from_slice(b"MICROVM     "); // product ID, 12 bytes
    mpc.extend_from_slice(&0u32.to_le_bytes()); // OEM table pointer
    mpc.extend_from_slice(&0u16.to_le_bytes()); // OEM table size
    mpc.extend_from_slice(&count.to_le_bytes());
    mpc.extend_from_slice(&u32::try_from(LAPIC_ADDR).expect("below 4 GiB").to_le_bytes());
    mpc.extend_from_slice(&0u32.to_le_bytes()); // extended table length + checksum + reserved
    debug_assert_eq!(mpc.len(), MPC_HEADER_SIZE);
    mpc.extend_from_slice(&entries);
    mpc[7] = checksum(&mpc);

    let mut mpf = Vec::with_capacity(MPF_SIZE);
    mpf.extend_from_slice(b"_MP_");
    mpf.extend_from_slice(&table_addr.to_le_bytes());
    mpf.push(1); // length in 16-byte units
    mpf.push(MP_SPEC_REV);
    mpf.push(0); // checksum, below
    mpf.extend_from_slice(&[0u8; 5]); // no default configuration, no IMCR
    mpf[10] = checksum(&mpf);

    mpf.extend_from_slice(&mpc);
    mpf
}

/// Write the table for `cpus` processors at the start of the EBDA
/// (reserved in the e820 map).
pub fn write<M: GuestMemory>(mem: &M, cpus: u8) -> Result<(), MpTableError> {
    mem.write_slice(&build(EBDA_START, cpus), GuestAddress(EBDA_START)).map_err(MpTableError)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sum(b: &[u8]) -> u8 {
        b.iter().fold(0u8, |a, x| a.wrapping_add(*x))
    }

    #[test]
    fn floating_pointer_and_table_checksum_to_zero() {
        let t = build(EBDA_START, 1);
        assert_eq!(&t[..4], b"_MP_");
        assert_eq!(sum(&t[..MPF_SIZE]), 0);
        let ptr = u32::from_le_bytes(t[4..8].try_into().unwrap());
        assert_eq!(u64::from(ptr), EBDA_START + MPF_SIZE as u64);
        let mpc = &t[MPF_SIZE..];
        assert_eq!(&mpc[..4], b"PCMP");
        let len = usize::from(u16::from_le_bytes([mpc[4], mpc[5]]));
        assert_eq!(len, mpc.len());
        assert_eq!(sum(mpc), 0);
    }

    #[test]
    fn routes_every_isa_irq_to_its_ioapic_pin() {
        let t = build(EBDA_START, 1);
        let mpc = &t[MPF_SIZE..];
        let count = u16::from_le_bytes([mpc[34], mpc[35]]);
        assert_eq!(usize::from(count), 1 + 1 + 1 + usize::from(IOAPIC_PINS) + 2);
        // Walk the entries by type and size, as Linux's mpparse does.
        let mut off = MPC_HEADER_SIZE;
        let mut pins = Vec::new();
        while off < mpc.len() {
            let size = if mpc[off] == ENTRY_PROCESSOR { 20 } else { 8 };
            if mpc[off] == ENTRY_INTSRC {
                assert_eq!(mpc[off + 5], mpc[off + 7], "ISA IRQ maps to the same pin");
                pins.push(mpc[off + 7]);
            }
            off += size;
        }
        assert_eq!(off, mpc.len());
        assert_eq!(pins, (0..IOAPIC_PINS).collect::<Vec<_>>());
        assert!(EBDA_START + t.len() as u64 <= 0xa0000, "table stays inside the EBDA");
    }

    #[test]
    fn names_every_processor_once_with_the_io_apic_after_them() {
        let t = build(EBDA_START, MAX_CPUS);
        let mpc = &t[MPF_SIZE..];
        assert_eq!(sum(mpc), 0);
        assert!(EBDA_START + t.len() as u64 <= 0xa0000, "the largest table stays inside the EBDA");
        let (mut off, mut cpus, mut boot) = (MPC_HEADER_SIZE, Vec::new(), Vec::new());
        let mut ioapic = None;
        while off < mpc.len() {
            match mpc[off] {
                ENTRY_PROCESSOR => {
                    cpus.push(mpc[off + 1]);
                    if mpc[off + 3] & CPU_BOOTPROCESSOR != 0 {
                        boot.push(mpc[off + 1]);
                    }
                }
                ENTRY_IOAPIC => ioapic = Some(mpc[off + 1]),
                ENTRY_INTSRC => assert_eq!(Some(mpc[off + 6]), ioapic, "routed to the I/O APIC's ID"),
                _ => {}
            }
            off += if mpc[off] == ENTRY_PROCESSOR { 20 } else { 8 };
        }
        assert_eq!(cpus, (0..MAX_CPUS).collect::<Vec<_>>());
        assert_eq!(boot, vec![0], "one boot processor");
        assert_eq!(ioapic, Some(MAX_CPUS), "no APIC ID taken twice");
    }
}
