//! The CPUID the guest kernel sees.
//!
//! On a software-emulated KVM ([`KvmKind::Emulated`]) it starts from what KVM
//! supports and removes every feature whose instructions the guest kernel
//! would otherwise use and that the emulator cannot execute in guest kernel
//! mode (found by booting Debian's 6.1 there: see kernel-config/README.md).
//! Leaf 0xd (XSAVE state) stays, cut to the components the VMM keeps for
//! the guest's tasks ([`crate::vmm::xstate`]): KVM sizes the state that
//! KVM_GET_XSAVE returns from it.
//!
//! On hardware KVM ([`KvmKind::Hardware`]) the guest gets what KVM supports
//! with XSAVE and AVX intact, so that its kernel saves the extended state
//! itself; only what a one-vCPU build guest must not see goes (VMX/SVM,
//! MONITOR, AMX, whose state needs a permission request the VMM does not
//! make).

use super::super::kvm::KvmKind;
#[cfg(test)]
use super::super::xstate::XSAVE_BYTES;
use super::super::xstate::{Layout, XFEATURE_MASK_FPSSE};
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
/// "Running under a hypervisor": KVM_GET_SUPPORTED_CPUID never reports it
/// (the VMM says so, as QEMU and Firecracker do). Without it the guest
/// kernel does not look for KVM's leaves, so no kvm-clock: on hardware KVM
/// it calibrated the TSC against the PIT, failed, marked the TSC unstable,
/// calibrated a delay loop and ran on jiffies (seen under nested SVM,
/// tests/hardware_kvm_nested.rs). An emulated KVM shows the guest the
/// host's CPUID, which has it.
const ECX_HYPERVISOR: u32 = 1 << 31;
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

// Leaf 7 EDX: AMX.
const EDX7_AMX_BF16: u32 = 1 << 22;
const EDX7_AMX_TILE: u32 = 1 << 24;
const EDX7_AMX_INT8: u32 = 1 << 25;

/// Filter KVM's supported CPUID in place for our guest (what every vCPU
/// gets; [`for_vcpu`] then makes it one vCPU's).
///
/// Both kinds:
/// - leaf 1: no MONITOR, VMX; HYPERVISOR set; APIC ID 0, one logical processor;
/// - leaf 6 (power management): empty;
/// - leaves 0xb and 0x1f: x2APIC ID 0 (KVM gives the asking host CPU's);
/// - leaf 0xd: only FP, SSE and the components in `kept`;
/// - KVM leaf 0x4000_0001: clock sources and NOP_IO_DELAY only;
/// - leaf 0x8000_0001: no SVM.
///
/// Emulated, also:
/// - leaf 1: no CX16, POPCNT, XSAVE/OSXSAVE, AVX, F16C, FMA, RDRAND, PCID;
/// - leaf 7 (all structured extended features: FSGSBASE, SMAP, SMEP, ERMS,
///   FSRM, INVPCID, PKU, UMIP, RDSEED, RDPID, CLFLUSHOPT, CLWB, AVX2,
///   AVX-512, ...): empty;
/// - leaf 0x8000_0001: no RDTSCP, ABM/LZCNT, PREFETCHW.
///
/// Hardware, also: leaf 7 without AMX.
pub fn filter(entries: &mut [kvm_cpuid_entry2], kind: KvmKind, kept: &Layout) {
    let emulated = kind == KvmKind::Emulated;
    let xcr0 = XFEATURE_MASK_FPSSE | kept.mask();
    for e in entries.iter_mut() {
        match e.function {
            0x1 => {
                e.ecx &= if emulated { !LEAF1_ECX_REMOVED } else { !(ECX_MONITOR | ECX_VMX) };
                e.ecx |= ECX_HYPERVISOR;
                // Initial APIC ID 0, one logical processor, keep CLFLUSH size.
                e.ebx = (e.ebx & 0x0000_ffff) | (1 << 16);
            }
            0x6 => clear(e),
            // x2APIC topology: EDX is the x2APIC ID, which KVM fills with
            // the host CPU's that asked; the vCPU's is 0 (and a snapshot's
            // key must not depend on where the VMM ran).
            0xb | 0x1f => e.edx = 0,
            0x7 if emulated => clear(e),
            0x7 if e.index == 0 => e.edx &= !(EDX7_AMX_BF16 | EDX7_AMX_TILE | EDX7_AMX_INT8),
            0xd => match e.index {
                0 => {
                    e.eax = u32::try_from(xcr0 & 0xffff_ffff).expect("masked");
                    e.edx = u32::try_from(xcr0 >> 32).expect("shifted");
                    let size = u32::try_from(kept.area_size()).expect("an XSAVE area size");
                    e.ebx = size;
                    e.ecx = size;
                }
                // XSAVEOPT/XSAVEC/XSAVES and supervisor states: the
                // emulated kernel runs noxsave; hardware keeps them.
                1 if emulated => clear(e),
                1 => {}
                i if kept.mask() & (1u64 << i.min(63)) != 0 && i < 64 => {}
                _ => clear(e),
            },
            0x1d | 0x1e => clear(e),
            0x4000_0001 => e.eax &= KVM_FEATURES_KEPT,
            0x8000_0001 => {
                if emulated {
                    e.ecx &= !EXT_ECX_REMOVED;
                    e.edx &= !EXT_EDX_RDTSCP;
                } else {
                    e.ecx &= !EXT_ECX_SVM;
                }
            }
            _ => {}
        }
    }
}

// Leaf 1 EDX: more than one logical processor per package.
const EDX_HTT: u32 = 1 << 28;
/// Leaf 0xb/0x1f ECX level types.
const LEVEL_SMT: u32 = 1;
const LEVEL_CORE: u32 = 2;

/// Make the filtered CPUID vCPU `index`'s of `count`: its APIC ID in leaf
/// 1 and the x2APIC leaves, and the machine's topology, one package of
/// `count` cores of one thread each (as Firecracker and QEMU give a guest
/// without threads): leaf 1's logical processor count and HTT, leaf 4's
/// cores per package, leaf 0xb's (and 0x1f's) SMT and core levels, and on
/// AMD leaf 0x8000_0008's core count. The MP table names the same APIC
/// IDs ([`super::mptable`]). On emulated KVM the guest kernel reads the
/// host's CPUID whatever this says, and takes the APIC IDs from the MP
/// table and its local APIC.
pub fn for_vcpu(entries: &mut [kvm_cpuid_entry2], index: u32, count: u32) {
    let count = count.max(1);
    // Bits of the APIC ID that number the cores.
    let core_bits = 32 - (count - 1).leading_zeros();
    for e in entries.iter_mut() {
        match e.function {
            0x1 => {
                e.ebx = (e.ebx & 0x0000_ffff) | (index << 24) | (count.min(255) << 16);
                if count > 1 {
                    e.edx |= EDX_HTT;
                } else {
                    e.edx &= !EDX_HTT;
                }
            }
            // Cores per package - 1 in EAX[31:26], one thread per cache.
            0x4 if e.eax & 0x1f != 0 => e.eax = (e.eax & 0x03ff_ffff) | ((count - 1).min(63) << 26),
            0xb | 0x1f => {
                let (shift, processors, level) = match e.index {
                    0 => (0, 1, LEVEL_SMT),
                    1 => (core_bits, count, LEVEL_CORE),
                    _ => (0, 0, 0),
                };
                e.eax = shift;
                e.ebx = processors;
                e.ecx = (level << 8) | (e.index & 0xff);
                e.edx = index;
            }
            0x8000_0008 => e.ecx = (e.ecx & !0xf0ff) | (core_bits << 12) | (count - 1).min(255),
            _ => {}
        }
    }
}

fn clear(e: &mut kvm_cpuid_entry2) {
    e.eax = 0;
    e.ebx = 0;
    e.ecx = 0;
    e.edx = 0;
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
    fn the_x2apic_id_is_the_vcpus_not_the_host_cpus() {
        for kind in [KvmKind::Emulated, KvmKind::Hardware] {
            let mut e = vec![entry(0xb, 0, [1, 1, 0x100, 1]), entry(0x1f, 1, [4, 2, 0x201, 1])];
            filter(&mut e, kind, &Layout::from_supported_cpuid(&[], 4096, false));
            assert_eq!((e[0].edx, e[1].edx), (0, 0), "{kind:?}");
            assert_eq!((e[0].eax, e[0].ecx, e[1].ebx), (1, 0x100, 2), "the topology itself stays");
        }
    }

    #[test]
    fn each_vcpu_gets_its_own_apic_id_and_the_machines_topology() {
        let host = || {
            vec![
                entry(1, 0, [0x806f8, 0x0a40_0800, 0, 0x178b_fbff & !EDX_HTT]),
                entry(4, 0, [0x1c00_4121, 0, 0, 0]),
                entry(4, 4, [0, 0, 0, 0]),
                entry(0xb, 0, [1, 2, 0x100, 9]),
                entry(0xb, 1, [6, 48, 0x201, 9]),
                entry(0xb, 2, [0, 0, 2, 9]),
            ]
        };
        let mut e = host();
        for_vcpu(&mut e, 2, 3);
        assert_eq!(e[0].ebx >> 24, 2, "initial APIC ID");
        assert_eq!((e[0].ebx >> 16) & 0xff, 3, "logical processors per package");
        assert_eq!(e[0].ebx & 0xffff, 0x0800, "CLFLUSH size stays");
        assert_ne!(e[0].edx & EDX_HTT, 0);
        assert_eq!((e[1].eax >> 26, e[1].eax & 0x03ff_ffff), (2, 0x0000_4121), "cores per package");
        assert_eq!(e[2].eax, 0, "an empty cache leaf stays empty");
        assert_eq!((e[3].eax, e[3].ebx, e[3].ecx, e[3].edx), (0, 1, 0x100, 2), "one thread per core");
        assert_eq!((e[4].eax, e[4].ebx, e[4].ecx, e[4].edx), (2, 3, 0x201, 2), "three cores: two bits");
        assert_eq!((e[5].ebx, e[5].ecx >> 8, e[5].edx), (0, 0, 2), "no level past the cores");
        let mut one = host();
        for_vcpu(&mut one, 0, 1);
        assert_eq!((one[0].ebx >> 16, one[0].edx & EDX_HTT), (1, 0), "APIC ID 0, one processor, no HTT");
        assert_eq!((one[4].eax, one[4].ebx), (0, 1), "one core: no bits");
    }

    #[test]
    fn the_guest_is_told_it_runs_under_a_hypervisor() {
        for kind in [KvmKind::Emulated, KvmKind::Hardware] {
            // Leaf 1 as KVM_GET_SUPPORTED_CPUID gives it: bit 31 clear.
            let mut e = vec![entry(1, 0, [0x806f8, 0x0a40_0800, 0x7ffa_3223, 0x178b_fbff])];
            filter(&mut e, kind, &Layout::from_supported_cpuid(&[], 4096, false));
            assert_ne!(e[0].ecx & ECX_HYPERVISOR, 0, "{kind:?}: without it the guest kernel never finds kvm-clock");
        }
    }

    /// Leaf 0xd of an AVX-512 host with AMX (sizes as KVM reports them).
    fn xsave_leaves() -> Vec<kvm_cpuid_entry2> {
        vec![
            entry(0xd, 0, [0x6_02e7, 0x2b00, 0x2b00, 0]),
            entry(0xd, 1, [0xf, 0x2b00, 0x1900, 0]),
            entry(0xd, 2, [256, 576, 0, 0]),
            entry(0xd, 5, [64, 1088, 0, 0]),
            entry(0xd, 6, [512, 1152, 0, 0]),
            entry(0xd, 7, [1024, 1664, 0, 0]),
            entry(0xd, 9, [8, 2688, 0, 0]),
            entry(0xd, 17, [64, 2752, 2, 0]),
            entry(0xd, 18, [8192, 2816, 6, 0]),
        ]
    }

    fn host() -> Vec<kvm_cpuid_entry2> {
        let mut e = vec![
            entry(1, 0, [0x806f8, 0x0a40_0800, 0xfffa_3223, 0x178b_fbff]),
            entry(7, 0, [2, 0xffff_ffff, 0xffff_ffff, 0xffff_ffff]),
            entry(7, 1, [0xffff_ffff, 0, 0, 0]),
            entry(0x4000_0001, 0, [0x01ff_ffff, 0, 0, 0]),
            entry(0x8000_0001, 0, [0, 0, 0xffff_ffff, 0xffff_ffff]),
        ];
        e.extend(xsave_leaves());
        e
    }

    fn find(e: &[kvm_cpuid_entry2], function: u32, index: u32) -> kvm_cpuid_entry2 {
        *e.iter().find(|x| x.function == function && x.index == index).expect("leaf present")
    }

    #[test]
    fn leaf_0xd_offers_exactly_the_components_the_vmm_keeps() {
        let kept = Layout::from_supported_cpuid(&xsave_leaves(), XSAVE_BYTES, false);
        for kind in [KvmKind::Emulated, KvmKind::Hardware] {
            let mut e = host();
            filter(&mut e, kind, &kept);
            let l0 = find(&e, 0xd, 0);
            assert_eq!(u64::from(l0.eax) | (u64::from(l0.edx) << 32), 0x2e7, "{kind:?}: XCR0 without AMX");
            assert_eq!((l0.ebx, l0.ecx), (2696, 2696));
            for i in [2, 5, 6, 7, 9] {
                assert_ne!(find(&e, 0xd, i).eax, 0, "{kind:?}: component {i} kept");
            }
            for i in [17, 18] {
                assert_eq!(find(&e, 0xd, i).eax, 0, "{kind:?}: AMX component {i} removed");
            }
            assert_eq!(find(&e, 0xd, 1).eax == 0, kind == KvmKind::Emulated);
        }
    }

    #[test]
    fn hardware_keeps_xsave_and_avx_but_not_amx() {
        let kept = Layout::from_supported_cpuid(&xsave_leaves(), XSAVE_BYTES, false);
        let mut e = host();
        filter(&mut e, KvmKind::Hardware, &kept);
        let l1 = find(&e, 1, 0);
        for bit in [ECX_XSAVE, ECX_AVX, ECX_FMA, ECX_POPCNT] {
            assert_ne!(l1.ecx & bit, 0, "leaf 1 ecx bit {bit:#x} removed");
        }
        assert_eq!(l1.ecx & (ECX_VMX | ECX_MONITOR), 0);
        let l7 = find(&e, 7, 0);
        assert_eq!(l7.ebx, 0xffff_ffff, "AVX2, AVX-512 kept");
        assert_eq!(l7.edx & (EDX7_AMX_TILE | EDX7_AMX_INT8 | EDX7_AMX_BF16), 0);
        assert_eq!(find(&e, 0x8000_0001, 0).ecx & EXT_ECX_SVM, 0);
        assert_ne!(find(&e, 0x8000_0001, 0).edx & EXT_EDX_RDTSCP, 0);
    }

    #[test]
    fn removes_what_the_emulator_cannot_run() {
        let mut e = vec![
            entry(1, 0, [0x806f8, 0x0a40_0800, 0xfffa_3223, 0x178b_fbff]),
            entry(7, 0, [2, 0xffff_ffff, 0xffff_ffff, 0xffff_ffff]),
            entry(7, 1, [0xffff_ffff, 0, 0, 0]),
            entry(0xd, 1, [0xf, 0x340, 0x340, 0]),
            entry(0x4000_0001, 0, [0x01ff_ffff, 0, 0, 0]),
            entry(0x8000_0001, 0, [0, 0, 0xffff_ffff, 0xffff_ffff]),
        ];
        filter(&mut e, KvmKind::Emulated, &Layout::from_supported_cpuid(&[], XSAVE_BYTES, false));
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
