//! The CPUID the guest kernel sees.
//!
//! Starts from what KVM supports and removes every feature whose instructions
//! the guest kernel would otherwise use and that a software-emulated KVM
//! cannot execute in guest kernel mode (found by booting Debian's 6.1 there:
//! see kernel-config/README.md). Each removed feature has a plain fallback in
//! the kernel, so the same filter is harmless on hardware KVM, where it only
//! gives up speed-ups that a short build job does not need.
//!
//! Guest *user* code on software KVM executes CPUID natively and is kept off
//! AVX by the agent's GLIBC_TUNABLES, not by this filter.

use kvm_bindings::kvm_cpuid_entry2;

// Leaf 1 ECX.
const ECX_MONITOR: u32 = 1 << 3;
const ECX_VMX: u32 = 1 << 5;
const ECX_CX16: u32 = 1 << 13;
const ECX_PCID: u32 = 1 << 17;
const ECX_POPCNT: u32 = 1 << 23;
const ECX_XSAVE: u32 = 1 << 26;
const ECX_OSXSAVE: u32 = 1 << 27;
const ECX_AVX: u32 = 1 << 28;
const ECX_F16C: u32 = 1 << 29;
const ECX_RDRAND: u32 = 1 << 30;
const ECX_FMA: u32 = 1 << 12;
const LEAF1_ECX_REMOVED: u32 = ECX_MONITOR
    | ECX_VMX
    | ECX_CX16
    | ECX_PCID
    | ECX_POPCNT
    | ECX_XSAVE
    | ECX_OSXSAVE
    | ECX_AVX
    | ECX_F16C
    | ECX_RDRAND
    | ECX_FMA;

// Leaf 0x8000_0001.
const EXT_ECX_ABM: u32 = 1 << 5;
const EXT_ECX_PREFETCHW: u32 = 1 << 8;
const EXT_ECX_SVM: u32 = 1 << 2;
const EXT_ECX_REMOVED: u32 = EXT_ECX_ABM | EXT_ECX_PREFETCHW | EXT_ECX_SVM;
const EXT_EDX_RDTSCP: u32 = 1 << 27;

// KVM paravirtual features (leaf 0x4000_0001 EAX) kept: the clock sources and
// the no-op I/O delay. Async page faults, steal time, PV EOI and the rest are
// for long-lived, overcommitted guests, and each is more kernel code run
// emulated.
const KVM_FEATURE_CLOCKSOURCE: u32 = 1 << 0;
const KVM_FEATURE_NOP_IO_DELAY: u32 = 1 << 1;
const KVM_FEATURE_CLOCKSOURCE2: u32 = 1 << 3;
const KVM_FEATURE_CLOCKSOURCE_STABLE_BIT: u32 = 1 << 24;
const KVM_FEATURES_KEPT: u32 =
    KVM_FEATURE_CLOCKSOURCE | KVM_FEATURE_NOP_IO_DELAY | KVM_FEATURE_CLOCKSOURCE2 | KVM_FEATURE_CLOCKSOURCE_STABLE_BIT;

/// Filter KVM's supported CPUID in place for our single-vCPU guest.
///
/// - leaf 1: no CX16, POPCNT, XSAVE/OSXSAVE, AVX, F16C, FMA, RDRAND, PCID,
///   MONITOR, VMX; APIC ID 0, one logical processor;
/// - leaf 6 (power management), leaf 7 (all structured extended features:
///   FSGSBASE, SMAP, SMEP, ERMS, FSRM, INVPCID, PKU, UMIP, RDSEED, RDPID,
///   CLFLUSHOPT, CLWB, AVX2, AVX-512, ...) and leaf 0xd (XSAVE state): empty;
/// - leaf 0x8000_0001: no RDTSCP, ABM/LZCNT, PREFETCHW, SVM;
/// - KVM leaf 0x4000_0001: clock sources and NOP_IO_DELAY only.
pub fn filter(entries: &mut [kvm_cpuid_entry2]) {
    for e in entries.iter_mut() {
        match e.function {
            0x1 => {
                e.ecx &= !LEAF1_ECX_REMOVED;
                // Initial APIC ID 0, one logical processor, keep CLFLUSH size.
                e.ebx = (e.ebx & 0x0000_ffff) | (1 << 16);
            }
            0x6 | 0x7 | 0xd => {
                e.eax = 0;
                e.ebx = 0;
                e.ecx = 0;
                e.edx = 0;
            }
            0x4000_0001 => e.eax &= KVM_FEATURES_KEPT,
            0x8000_0001 => {
                e.ecx &= !EXT_ECX_REMOVED;
                e.edx &= !EXT_EDX_RDTSCP;
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(function: u32, index: u32, regs: [u32; 4]) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            eax: regs[0],
            ebx: regs[1],
            ecx: regs[2],
            edx: regs[3],
            ..Default::default()
        }
    }

    #[test]
    fn removes_what_the_emulator_cannot_run() {
        let mut e = vec![
            entry(1, 0, [0x806f8, 0x0a40_0800, 0xfffa_3223, 0x178b_fbff]),
            entry(7, 0, [2, 0xffff_ffff, 0xffff_ffff, 0xffff_ffff]),
            entry(7, 1, [0xffff_ffff, 0, 0, 0]),
            entry(0xd, 0, [7, 0x340, 0x340, 0]),
            entry(0x4000_0001, 0, [0x01ff_ffff, 0, 0, 0]),
            entry(0x8000_0001, 0, [0, 0, 0xffff_ffff, 0xffff_ffff]),
        ];
        filter(&mut e);
        let ecx1 = e[0].ecx;
        for bit in [ECX_CX16, ECX_POPCNT, ECX_XSAVE, ECX_OSXSAVE, ECX_AVX, ECX_RDRAND, ECX_PCID] {
            assert_eq!(ecx1 & bit, 0, "leaf 1 ecx bit {bit:#x} kept");
        }
        assert_ne!(ecx1 & (1 << 0), 0, "SSE3 must stay");
        assert_eq!(e[0].edx, 0x178b_fbff, "leaf 1 edx untouched");
        assert_eq!(e[0].ebx >> 24, 0, "APIC ID 0");
        assert_eq!((e[0].ebx >> 16) & 0xff, 1, "one logical processor");
        assert_eq!((e[0].ebx >> 8) & 0xff, 0x08, "CLFLUSH line size kept");
        for leaf in &e[1..4] {
            assert_eq!([leaf.eax, leaf.ebx, leaf.ecx, leaf.edx], [0; 4], "leaf {:#x}.{}", leaf.function, leaf.index);
        }
        assert_eq!(e[4].eax, KVM_FEATURES_KEPT);
        assert_eq!(e[5].edx & EXT_EDX_RDTSCP, 0);
        assert_eq!(e[5].ecx & EXT_ECX_PREFETCHW, 0);
        assert_ne!(e[5].edx & (1 << 29), 0, "long mode must stay");
        assert_ne!(e[5].edx & (1 << 11), 0, "SYSCALL must stay");
    }
}
