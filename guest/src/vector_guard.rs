//! Fail closed where guest user code could lose vector state.
//!
//! What guest user code can reach is what XGETBV(0) reports to it: on a
//! software-emulated KVM that is the *host's* XCR0, whatever the guest
//! kernel set or CPUID says; on hardware KVM it is the guest kernel's own
//! (and XGETBV faults under `noxsave`). What survives a context switch is
//! what the kernel says in `/sys/module/rootlayer_xstate/parameters/saved`
//! (kernel-config patch 0004): its own XSAVE features on hardware, x87/SSE
//! plus what the VMM keeps on emulated KVM, x87/SSE alone otherwise.
//!
//! AMX tile state counts as reachable only where this kernel lets a process
//! use it: Linux requires `arch_prctl(ARCH_REQ_XCOMP_PERM, XTILEDATA)`
//! before the first tile instruction (and the kernel saves the tiles of
//! every process it grants that), and a `noxsave` kernel refuses it. A
//! program that skips the request breaks the Linux ABI; on an emulated-KVM
//! host whose CPU has AMX its tile instructions may still execute natively
//! (the README's limits say so), as any guest root process may also write
//! any other's memory.
//!
//! No job runs unless every reachable component is saved.

use anyhow::{bail, Context};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

const SAVED_PATH: &str = "/sys/module/rootlayer_xstate/parameters/saved";
const PORT_PATH: &str = "/sys/module/rootlayer_xstate/parameters/port";
/// x87 and SSE: what every kernel saves (FXSAVE).
const FPSSE: u64 = 0b11;
/// XTILECFG and XTILEDATA (AMX): enabled lazily by the host through XFD.
const AMX: u64 = (1 << 17) | (1 << 18);

/// What this boot's guest user code can reach and what is saved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// XCR0 as user code reads it (None: XGETBV faults, no XSAVE state).
    pub xcr0: Option<u64>,
    /// XCR0 features that survive a context switch.
    pub saved: u64,
    /// Whether the VMM-kept state is on (a port the kernel found).
    pub vmm_kept: bool,
    /// The dynamically enabled features (AMX) this kernel lets a process
    /// use (`ARCH_REQ_XCOMP_PERM` granted).
    pub xfd_usable: u64,
}

impl Report {
    /// Features user code can change that nobody saves.
    pub fn unsaved(&self) -> u64 {
        let reachable = self.xcr0.map_or(FPSSE, |x| (x & !AMX) | (x & self.xfd_usable));
        reachable & !self.saved
    }

    /// The mechanism that holds, in words.
    pub fn mechanism(&self) -> &'static str {
        match (self.xcr0, self.vmm_kept) {
            (None, _) => "no XSAVE state reachable from user code (XGETBV faults)",
            (Some(x), _) if x & !FPSSE & !AMX == 0 => "only x87/SSE reachable from user code",
            (Some(_), _) if self.unsaved() != 0 => "UNSAVED extended state reachable from user code",
            (Some(_), true) => "extended state kept by the VMM per guest task",
            (Some(_), false) => "extended state saved by the guest kernel (XSAVE)",
        }
    }

    pub fn line(&self) -> String {
        let xcr0 = self.xcr0.map_or("faults".to_string(), |x| format!("{x:#x}"));
        format!(
            "vector state: user XCR0 {xcr0}, saved {:#x}, AMX permitted {:#x}: {}",
            self.saved,
            self.xfd_usable,
            self.mechanism()
        )
    }
}

/// XCR0 as user code reads it on every online vCPU, ORed (None only where
/// XGETBV faults on all of them): the agent moves itself to each in turn,
/// and back where it was.
fn xgetbv0_every_cpu() -> anyhow::Result<Option<u64>> {
    use nix::sched::{sched_getaffinity, sched_setaffinity, CpuSet};
    use nix::unistd::Pid;
    let before = sched_getaffinity(Pid::from_raw(0)).context("sched_getaffinity")?;
    let mut xcr0: Option<u64> = None;
    for cpu in 0..crate::online_cpus().unwrap_or(1) as usize {
        let mut one = CpuSet::new();
        one.set(cpu).context("a CPU set of this size")?;
        sched_setaffinity(Pid::from_raw(0), &one).with_context(|| format!("move to vCPU {cpu}"))?;
        if let Some(x) = xgetbv0() {
            xcr0 = Some(xcr0.unwrap_or(0) | x);
        }
    }
    sched_setaffinity(Pid::from_raw(0), &before).context("sched_setaffinity back")?;
    Ok(xcr0)
}

/// What the guest kernel saves and lets a process use: its own state, the
/// same in every guest restored from the snapshot that holds it, so read
/// once before the snapshot point (three sysfs and prctl round trips that
/// an emulated guest kernel would otherwise pay after every restore).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KernelFacts {
    /// XCR0 features that survive a context switch.
    saved: u64,
    /// Whether the VMM-kept state is on (a port the kernel found).
    vmm_kept: bool,
    /// Whether this kernel grants AMX tile data to a process that asks.
    amx_permitted: bool,
}

impl KernelFacts {
    pub fn read() -> anyhow::Result<KernelFacts> {
        let saved = match std::fs::read_to_string(SAVED_PATH) {
            Ok(text) => text.trim().parse::<u64>().with_context(|| format!("parse {SAVED_PATH}: {text:?}"))?,
            // A kernel without patch 0004: it saves x87/SSE (the agent
            // cannot tell more), which fails closed wherever more is
            // reachable.
            Err(_) => FPSSE,
        };
        let vmm_kept = std::fs::read_to_string(PORT_PATH).is_ok_and(|p| p.trim() != "0") && saved & !FPSSE != 0;
        Ok(KernelFacts { saved, vmm_kept, amx_permitted: amx_permitted() })
    }
}

/// What this guest's user code can reach, on the host it runs on now (XCR0
/// from every vCPU: on a software-emulated KVM it is the host's, so it is
/// read after every restore), against what `kernel` saves.
pub fn check(kernel: &KernelFacts) -> anyhow::Result<Report> {
    let xcr0 = xgetbv0_every_cpu()?;
    let mut report = Report { xcr0, saved: kernel.saved, vmm_kept: kernel.vmm_kept, xfd_usable: 0 };
    if let Some(x) = xcr0 {
        if x & AMX != 0 && kernel.amx_permitted {
            report.xfd_usable = x & AMX;
        }
    }
    Ok(report)
}

/// Refuse to go on where user code can lose vector state.
pub fn require_safe(report: &Report) -> anyhow::Result<()> {
    let unsaved = report.unsaved();
    if unsaved != 0 {
        bail!(
            "guest user code can use vector state that neither the guest kernel nor the VMM saves \
             (XCR0 features {unsaved:#x}; {}): refusing to run, results could be silently wrong",
            report.line()
        );
    }
    Ok(())
}

static PROBE_ACTIVE: AtomicBool = AtomicBool::new(false);
static PROBE_FAULTED: AtomicBool = AtomicBool::new(false);
static PROBE_RIP: AtomicU64 = AtomicU64::new(0);

/// XGETBV is `0f 01 d0`.
const XGETBV_LEN: i64 = 3;

extern "C" fn on_sigill(_: libc::c_int, _: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
    let uc = ctx.cast::<libc::ucontext_t>();
    // SAFETY: the kernel passes a valid ucontext to an SA_SIGINFO handler;
    // only RIP is read and advanced, and only when the fault is at the
    // probe's own instruction.
    unsafe {
        let rip = &mut (*uc).uc_mcontext.gregs[libc::REG_RIP as usize];
        if PROBE_ACTIVE.load(Ordering::SeqCst) && *rip as u64 == PROBE_RIP.load(Ordering::SeqCst) {
            PROBE_FAULTED.store(true, Ordering::SeqCst);
            *rip += XGETBV_LEN;
        } else {
            // Not ours: die of it as without a handler.
            libc::signal(libc::SIGILL, libc::SIG_DFL);
        }
    }
}

/// XCR0 as user code reads it, None where XGETBV raises #UD.
fn xgetbv0() -> Option<u64> {
    // SAFETY: a plain SA_SIGINFO handler for SIGILL, restored below; it
    // touches atomics and the faulting context only.
    let old = unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_sigill as extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) as usize;
        sa.sa_flags = libc::SA_SIGINFO;
        libc::sigemptyset(&mut sa.sa_mask);
        let mut old: libc::sigaction = std::mem::zeroed();
        libc::sigaction(libc::SIGILL, &sa, &mut old);
        old
    };
    PROBE_FAULTED.store(false, Ordering::SeqCst);
    let (lo, hi): (u32, u32);
    // SAFETY: XGETBV with ECX=0 reads XCR0 into EDX:EAX and nothing else;
    // if it raises #UD, the handler skips exactly this instruction (its
    // address is published first) and EAX/EDX keep the zeros below.
    unsafe {
        std::arch::asm!(
            "lea {tmp}, [rip + 2f]",
            "mov [{rip_slot}], {tmp}",
            "mov byte ptr [{active}], 1",
            "2:",
            "xgetbv",
            "mov byte ptr [{active}], 0",
            tmp = out(reg) _,
            rip_slot = in(reg) PROBE_RIP.as_ptr(),
            active = in(reg) PROBE_ACTIVE.as_ptr(),
            inout("ecx") 0u32 => _,
            inout("eax") 0u32 => lo,
            inout("edx") 0u32 => hi,
        );
        libc::sigaction(libc::SIGILL, &old, std::ptr::null_mut());
    }
    (!PROBE_FAULTED.load(Ordering::SeqCst)).then_some(u64::from(lo) | (u64::from(hi) << 32))
}

/// Whether this kernel lets a process use AMX tile data (the request
/// Linux requires before any tile instruction). Asking changes nothing
/// for the agent: it never runs tile instructions.
fn amx_permitted() -> bool {
    const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
    const XFEATURE_XTILEDATA: libc::c_long = 18;
    // SAFETY: arch_prctl with this code only asks for a permission; no
    // memory is passed.
    unsafe { libc::syscall(libc::SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) == 0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(xcr0: Option<u64>, saved: u64, vmm_kept: bool, xfd_usable: u64) -> Report {
        Report { xcr0, saved, vmm_kept, xfd_usable }
    }

    #[test]
    fn emulated_host_without_the_vmm_keeping_state_is_refused() {
        let r = report(Some(0xe7), FPSSE, false, 0);
        assert_eq!(r.unsaved(), 0xe4);
        assert!(r.mechanism().contains("UNSAVED"));
        assert!(require_safe(&r).unwrap_err().to_string().contains("0xe4"));
    }

    #[test]
    fn vmm_kept_state_covering_xcr0_is_safe() {
        let r = report(Some(0xe7), 0xe7, true, 0);
        assert_eq!(r.unsaved(), 0);
        assert!(r.mechanism().contains("VMM"));
        assert!(require_safe(&r).is_ok());
        assert_eq!(report(Some(0x2e7), 0xe7, true, 0).unsaved(), 0x200, "PKRU reachable, not kept");
    }

    #[test]
    fn amx_counts_only_where_the_kernel_permits_it() {
        assert_eq!(report(Some(0x6_00e7), 0xe7, true, 0).unsaved(), 0, "no process may use AMX");
        assert_eq!(report(Some(0x6_00e7), 0xe7, true, AMX).unsaved(), AMX);
    }

    #[test]
    fn xgetbv_faulting_or_fp_sse_only_needs_nothing_more() {
        assert_eq!(report(None, FPSSE, false, 0).unsaved(), 0);
        assert_eq!(report(Some(FPSSE), FPSSE, false, 0).unsaved(), 0);
        assert!(report(None, FPSSE, false, 0).mechanism().contains("faults"));
    }

    #[test]
    fn hardware_kernel_saving_its_own_xcr0_is_safe() {
        let r = report(Some(0x2e7), 0x2e7, false, 0);
        assert_eq!(r.unsaved(), 0);
        assert!(r.mechanism().contains("guest kernel"));
    }

    #[test]
    fn xgetbv_probe_reads_this_hosts_xcr0() {
        // On any x86_64 host that runs these tests the probe returns, and
        // where it reads XCR0 x87 and SSE are on.
        if let Some(x) = xgetbv0() {
            assert_eq!(x & FPSSE, FPSSE, "{x:#x}");
        }
    }
}
