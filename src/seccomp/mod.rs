//! seccomp filters for the VMM's vCPU and device threads (Firecracker's
//! threat model: the guest is untrusted, and the threads that handle what it
//! writes run with the fewest system calls they need).
//!
//! Each thread kind ([`ThreadKind`]) has its own allow-list; a thread
//! installs its filter itself, as its first action after setup and before it
//! touches anything the guest controls (`seccompiler::apply_filter`, no
//! TSYNC). The vCPU thread is started by the VMM after all KVM setup; the
//! device worker threads are started at setup too (not when the guest
//! activates the device), so no filtered thread ever creates a thread and no
//! thread inherits another kind's filter. The main thread is not filtered:
//! after the VM it does the job's host-side work (reading result files,
//! converting the layer, writing the output, formatting the scratch disk
//! before).
//!
//! A call that is not on the list traps: the SIGSYS handler
//! ([`sigsys`]) prints `rootlayer: seccomp: thread NAME made forbidden
//! syscall NR (NAME); stopping` and exits with the internal-error code (70).
//! `--no-seccomp` turns the filters off for debugging.
//!
//! # How the lists were derived
//!
//! `scripts/seccomp-trace` runs a rootlayer command under `strace -f` and
//! prints, per thread kind (told apart by the name each thread gives itself),
//! the calls made, with the ioctl request / fcntl command / futex operation.
//! It was run with `--no-seccomp` on `boot` and on `scripts/example`
//! (run-as-root with a base image, a store, the layer written back through
//! the exchange share: every thread kind), and the union is below. The other
//! jobs and the error paths (the devices job, `export`, timeout, SIGINT, a
//! full scratch disk, a guest panic) were then run filtered by their e2e
//! tests, where a missing call would have stopped them with exit code 70.
//! The virtio-fs list also covers every call
//! fuse-backend-rs's passthrough file system can make for a request (read
//! from its source: the rarely-taken ones like `linkat`, `mknodat`,
//! `fallocate`, `removexattr` are as guest-reachable as `openat`), minus the
//! ones it makes only as root (`setresuid`/`setresgid`, which
//! [`crate::devices::virtio::fs`]'s `PolicyFs` never lets it reach).
//! On top come the calls of paths a trace rarely shows: thread exit and the
//! Rust panic machinery (write, sigaltstack, munmap, madvise, futex,
//! rt_sigprocmask, exit; an abort's tgkill to this process only), memory
//! allocation (mmap/mprotect without PROT_EXEC, munmap, mremap, brk,
//! madvise), returning from the kick and SIGINT/SIGTERM handlers
//! (rt_sigreturn), and the SIGSYS handler's own write and exit_group.
//! Re-derive after changing a device or a dependency: run the jobs above
//! through `scripts/seccomp-trace ... --no-seccomp`, `sort -u` the outputs,
//! and compare with the lists here.

mod sigsys;
mod syscall_names;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter, SeccompRule,
};
use std::collections::BTreeMap;
use std::sync::Once;

/// Errors building or installing a filter.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    #[error("building the {0} seccomp filter")]
    Build(ThreadKind, #[source] seccompiler::BackendError),
    #[error("installing the {kind} seccomp filter on thread {thread}")]
    Install {
        kind: ThreadKind,
        thread: String,
        #[source]
        source: seccompiler::Error,
    },
    #[error("installing the SIGSYS handler")]
    Handler(#[source] std::io::Error),
}

/// The kinds of filtered threads, one allow-list each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThreadKind {
    /// The vCPU thread: KVM_RUN and the devices on its exits (serial,
    /// i8042, virtio-mmio registers and activation).
    Vcpu,
    /// The virtio-blk worker: requests between the disk image and guest
    /// memory.
    Block,
    /// A virtio-fs worker: FUSE requests served by the passthrough file
    /// system on a host directory.
    Fs,
}

impl ThreadKind {
    pub const ALL: [ThreadKind; 3] = [ThreadKind::Vcpu, ThreadKind::Block, ThreadKind::Fs];

    /// The name `ROOTLAYER_SECCOMP_PROBE` takes.
    pub const fn probe_name(self) -> &'static str {
        match self {
            ThreadKind::Vcpu => "vcpu",
            ThreadKind::Block => "virtio-blk",
            ThreadKind::Fs => "virtio-fs",
        }
    }
}

impl std::fmt::Display for ThreadKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.probe_name())
    }
}

/// Environment variable naming a thread kind that makes one forbidden call
/// (`socket`) where it handles the guest's first request, to test that the
/// filter stops it (tests/seccomp_*.rs). Not for users: hidden on purpose.
pub const PROBE_ENV: &str = "ROOTLAYER_SECCOMP_PROBE";

/// Whether the VMM's threads are filtered, and the test probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    enabled: bool,
    probe: Option<ThreadKind>,
}

impl Policy {
    /// Filters on (`enabled`) or off (`--no-seccomp`); the probe from
    /// [`PROBE_ENV`].
    pub fn new(enabled: bool) -> Self {
        let probe =
            std::env::var(PROBE_ENV).ok().and_then(|v| ThreadKind::ALL.into_iter().find(|k| k.probe_name() == v));
        Self { enabled, probe }
    }

    /// No filters, no probe (unit tests of devices).
    pub const fn disabled() -> Self {
        Self { enabled: false, probe: None }
    }

    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// The filter a thread of `kind` installs (compiled here, on the
    /// setting-up thread, so the filtered thread only installs it).
    pub fn thread(&self, kind: ThreadKind) -> Result<ThreadFilter, SeccompError> {
        let program = if self.enabled {
            install_sigsys_handler()?;
            Some(compile(kind)?)
        } else {
            None
        };
        Ok(ThreadFilter { kind, program, probe: self.probe == Some(kind) })
    }
}

/// One thread's filter, to install on that thread.
#[derive(Debug)]
pub struct ThreadFilter {
    kind: ThreadKind,
    program: Option<BpfProgram>,
    probe: bool,
}

impl ThreadFilter {
    /// Filter the calling thread, called `name` in the SIGSYS message
    /// (nothing when seccomp is off).
    pub fn install(&self, name: &str) -> Result<(), SeccompError> {
        let Some(program) = &self.program else {
            return Ok(());
        };
        sigsys::set_thread_name(name);
        seccompiler::apply_filter(program).map_err(|source| SeccompError::Install {
            kind: self.kind,
            thread: name.to_string(),
            source,
        })
    }

    /// The test probe: if [`PROBE_ENV`] names this thread's kind, make one
    /// call that is on no list (`socket(AF_INET, SOCK_STREAM)`). Filtered,
    /// the process stops in the SIGSYS handler; with `--no-seccomp` the call
    /// succeeds, is reported, and the socket is closed.
    pub fn probe(&self) {
        if !self.probe {
            return;
        }
        // SAFETY: socket(2) with constant arguments; the fd is closed below.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0) };
        eprintln!("rootlayer: seccomp probe: the {} thread made syscall socket: returned {fd}", self.kind);
        if fd >= 0 {
            // SAFETY: closing the descriptor socket() just returned.
            unsafe { libc::close(fd) };
        }
    }
}

fn install_sigsys_handler() -> Result<(), SeccompError> {
    static ONCE: Once = Once::new();
    let mut result = Ok(());
    ONCE.call_once(|| result = sigsys::install_handler());
    result.map_err(SeccompError::Handler)
}

/// The BPF program of `kind`'s allow-list; anything else traps.
pub fn compile(kind: ThreadKind) -> Result<BpfProgram, SeccompError> {
    let rules: BTreeMap<i64, Vec<SeccompRule>> = allow_list(kind).map_err(|e| SeccompError::Build(kind, e))?;
    let filter = SeccompFilter::new(rules, SeccompAction::Trap, SeccompAction::Allow, seccompiler::TargetArch::x86_64)
        .map_err(|e| SeccompError::Build(kind, e))?;
    BpfProgram::try_from(filter).map_err(|e| SeccompError::Build(kind, e))
}

type Rules = Vec<(i64, Vec<SeccompRule>)>;
type Built<T> = Result<T, seccompiler::BackendError>;

/// A condition `arg[index] == value`.
fn eq(index: u8, value: u64) -> Built<SeccompCondition> {
    SeccompCondition::new(index, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, value)
}

/// The call, whatever its arguments.
fn any(nr: i64) -> (i64, Vec<SeccompRule>) {
    (nr, Vec::new())
}

/// The call when argument `index` is one of `values` (32-bit compare).
fn one_of(nr: i64, index: u8, values: &[u64]) -> Built<(i64, Vec<SeccompRule>)> {
    let rules = values.iter().map(|&v| SeccompRule::new(vec![eq(index, v)?])).collect::<Built<Vec<_>>>()?;
    Ok((nr, rules))
}

/// The call when argument `index` has none of `bits` set.
fn without_bits(nr: i64, index: u8, bits: u64) -> Built<(i64, Vec<SeccompRule>)> {
    let cond = SeccompCondition::new(index, SeccompCmpArgLen::Dword, SeccompCmpOp::MaskedEq(bits), 0)?;
    Ok((nr, vec![SeccompRule::new(vec![cond])?]))
}

/// futex operations, with and without FUTEX_PRIVATE_FLAG, FUTEX_CLOCK_REALTIME
/// masked off: the waits and wakes of std's locks, condvars, parking and
/// thread join, and glibc's internal locks (malloc).
fn futex() -> Built<(i64, Vec<SeccompRule>)> {
    let ops = [libc::FUTEX_WAIT, libc::FUTEX_WAKE, libc::FUTEX_WAIT_BITSET, libc::FUTEX_WAKE_BITSET];
    let mask = !u64::from(libc::FUTEX_CLOCK_REALTIME.unsigned_abs()) & 0xffff_ffff;
    let mut rules = Vec::new();
    for op in ops {
        for private in [0, libc::FUTEX_PRIVATE_FLAG] {
            let value = u64::from((op | private).unsigned_abs());
            let cond = SeccompCondition::new(1, SeccompCmpArgLen::Dword, SeccompCmpOp::MaskedEq(mask), value)?;
            rules.push(SeccompRule::new(vec![cond])?);
        }
    }
    Ok((libc::SYS_futex, rules))
}

/// What every filtered thread needs: memory, locks, signals, messages,
/// thread exit and panics.
fn common() -> Built<Rules> {
    let prot_exec = u64::from(libc::PROT_EXEC.unsigned_abs());
    let pid = u64::from(std::process::id());
    Ok(vec![
        // Allocation (glibc malloc: brk, mmap; arenas grow with mprotect,
        // shrink with madvise/munmap; Vec growth with mremap). Never
        // executable memory.
        any(libc::SYS_brk),
        without_bits(libc::SYS_mmap, 2, prot_exec)?,
        without_bits(libc::SYS_mprotect, 2, prot_exec)?,
        any(libc::SYS_munmap),
        any(libc::SYS_mremap),
        one_of(libc::SYS_madvise, 2, &[libc::MADV_DONTNEED, libc::MADV_FREE].map(|a| u64::from(a.unsigned_abs())))?,
        // Locks, condvars, channels, thread join.
        futex()?,
        any(libc::SYS_sched_yield),
        // Messages to stderr (and the SIGSYS handler's), eventfd signals.
        any(libc::SYS_write),
        // Dropping descriptors; std's check (debug builds) that a dropped
        // descriptor is open.
        any(libc::SYS_close),
        one_of(libc::SYS_fcntl, 1, &[u64::from(libc::F_GETFD.unsigned_abs())])?,
        // Signal handlers return (the vCPU kick, SIGINT/SIGTERM, which may
        // land on any thread); thread exit and panics mask signals and
        // unregister the alternate signal stack.
        any(libc::SYS_rt_sigreturn),
        any(libc::SYS_rt_sigprocmask),
        any(libc::SYS_sigaltstack),
        // Thread exit; the SIGSYS handler's _exit.
        any(libc::SYS_exit),
        any(libc::SYS_exit_group),
        // abort() after a panic while panicking: SIGABRT to this process only.
        any(libc::SYS_gettid),
        any(libc::SYS_getpid),
        (libc::SYS_tgkill, vec![SeccompRule::new(vec![eq(0, pid)?])?]),
        // Time (std's Instant in timeouts; vDSO normally, syscall fallback).
        any(libc::SYS_clock_gettime),
    ])
}

/// The KVM ioctls the vCPU thread makes after setup.
mod kvm_ioctls_nr {
    use kvm_bindings::{
        kvm_debugregs, kvm_lapic_state, kvm_mp_state, kvm_msrs, kvm_regs, kvm_sregs, kvm_translation, kvm_vcpu_events,
        kvm_xcrs, kvm_xsave, KVMIO,
    };
    vmm_sys_util::ioctl_io_nr!(KVM_RUN, KVMIO, 0x80);
    vmm_sys_util::ioctl_ior_nr!(KVM_GET_XSAVE, KVMIO, 0xa4, kvm_xsave);
    vmm_sys_util::ioctl_iow_nr!(KVM_SET_XSAVE, KVMIO, 0xa5, kvm_xsave);
    vmm_sys_util::ioctl_ior_nr!(KVM_GET_XSAVE2, KVMIO, 0xcf, kvm_xsave);
    vmm_sys_util::ioctl_ior_nr!(KVM_GET_REGS, KVMIO, 0x81, kvm_regs);
    vmm_sys_util::ioctl_ior_nr!(KVM_GET_SREGS, KVMIO, 0x83, kvm_sregs);
    vmm_sys_util::ioctl_iowr_nr!(KVM_TRANSLATE, KVMIO, 0x85, kvm_translation);
    vmm_sys_util::ioctl_iowr_nr!(KVM_GET_MSRS, KVMIO, 0x88, kvm_msrs);
    vmm_sys_util::ioctl_ior_nr!(KVM_GET_LAPIC, KVMIO, 0x8e, kvm_lapic_state);
    vmm_sys_util::ioctl_ior_nr!(KVM_GET_MP_STATE, KVMIO, 0x98, kvm_mp_state);
    vmm_sys_util::ioctl_ior_nr!(KVM_GET_VCPU_EVENTS, KVMIO, 0x9f, kvm_vcpu_events);
    vmm_sys_util::ioctl_ior_nr!(KVM_GET_DEBUGREGS, KVMIO, 0xa1, kvm_debugregs);
    vmm_sys_util::ioctl_ior_nr!(KVM_GET_XCRS, KVMIO, 0xa6, kvm_xcrs);
}

fn vcpu() -> Built<Rules> {
    use kvm_ioctls_nr::*;
    Ok(vec![
        // KVM_RUN; KVM_GET_REGS for the profiler's samples and an internal
        // error's rip; KVM_GET_SREGS and KVM_TRANSLATE to read the failing
        // instruction's bytes; KVM_GET_XSAVE and KVM_SET_XSAVE for the
        // guest tasks' extended register state (vmm/xstate.rs); the other
        // KVM_GET_* of the vCPU's state, read once when it pauses for the
        // snapshot (vmm/snapshot). No other ioctl, on any fd.
        one_of(
            libc::SYS_ioctl,
            1,
            &[
                KVM_RUN(),
                KVM_GET_REGS(),
                KVM_GET_SREGS(),
                KVM_TRANSLATE(),
                KVM_GET_XSAVE(),
                KVM_GET_XSAVE2(),
                KVM_SET_XSAVE(),
                KVM_GET_MSRS(),
                KVM_GET_LAPIC(),
                KVM_GET_MP_STATE(),
                KVM_GET_VCPU_EVENTS(),
                KVM_GET_DEBUGREGS(),
                KVM_GET_XCRS(),
            ]
            .map(u64::from),
        )?,
        // Activation: the device's copies of the queue eventfds
        // (File::try_clone).
        one_of(libc::SYS_fcntl, 1, &[u64::from(libc::F_DUPFD_CLOEXEC.unsigned_abs())])?,
    ])
}

fn block() -> Built<Rules> {
    Ok(vec![
        // The queue and stop eventfds; the disk image.
        any(libc::SYS_epoll_wait),
        any(libc::SYS_epoll_pwait),
        any(libc::SYS_epoll_ctl),
        any(libc::SYS_epoll_create1),
        any(libc::SYS_read),
        any(libc::SYS_readv),
        any(libc::SYS_writev),
        any(libc::SYS_lseek),
    ])
}

fn fs() -> Built<Rules> {
    let mut rules = vec![
        // The queue and stop eventfds.
        any(libc::SYS_epoll_wait),
        any(libc::SYS_epoll_pwait),
        any(libc::SYS_epoll_ctl),
        any(libc::SYS_epoll_create1),
        // FUSE requests, as the passthrough file system serves them.
        any(libc::SYS_read),
        any(libc::SYS_pread64),
        any(libc::SYS_preadv),
        any(libc::SYS_readv),
        any(libc::SYS_pwrite64),
        any(libc::SYS_pwritev),
        any(libc::SYS_writev),
        any(libc::SYS_lseek),
        any(libc::SYS_openat),
        // The read-only shares' path lookups (store.rs), beneath the root.
        any(libc::SYS_openat2),
        any(libc::SYS_faccessat2),
        any(libc::SYS_open),
        any(libc::SYS_newfstatat),
        any(libc::SYS_fstat),
        any(libc::SYS_statx),
        any(libc::SYS_fstatfs),
        any(libc::SYS_getdents64),
        any(libc::SYS_readlinkat),
        any(libc::SYS_mkdirat),
        any(libc::SYS_mknodat),
        any(libc::SYS_symlinkat),
        any(libc::SYS_linkat),
        any(libc::SYS_unlinkat),
        any(libc::SYS_renameat2),
        any(libc::SYS_fchmodat),
        any(libc::SYS_fchmod),
        any(libc::SYS_fchownat),
        any(libc::SYS_utimensat),
        any(libc::SYS_ftruncate),
        any(libc::SYS_fallocate),
        any(libc::SYS_fsync),
        any(libc::SYS_fdatasync),
        any(libc::SYS_getxattr),
        any(libc::SYS_fgetxattr),
        any(libc::SYS_lgetxattr),
        any(libc::SYS_setxattr),
        any(libc::SYS_fsetxattr),
        any(libc::SYS_lsetxattr),
        any(libc::SYS_listxattr),
        any(libc::SYS_flistxattr),
        any(libc::SYS_llistxattr),
        any(libc::SYS_removexattr),
        any(libc::SYS_fremovexattr),
        any(libc::SYS_lremovexattr),
        any(libc::SYS_name_to_handle_at),
        any(libc::SYS_dup),
        // FUSE_INIT re-imports the root with umask 0 (PolicyFs restores it).
        any(libc::SYS_umask),
        // The passthrough's uid/gid checks and HashMap seeds on a rebuilt
        // file system.
        any(libc::SYS_getuid),
        any(libc::SYS_getgid),
        any(libc::SYS_getrandom),
    ];
    // fcntl: the passthrough's F_GETFL/F_SETFL (O_DIRECT), descriptor dups.
    rules.push(one_of(
        libc::SYS_fcntl,
        1,
        &[libc::F_GETFL, libc::F_SETFL, libc::F_SETFD, libc::F_DUPFD_CLOEXEC].map(|c| u64::from(c.unsigned_abs())),
    )?);
    Ok(rules)
}

/// The allow-list of `kind`: [`common`] plus the thread's own calls.
fn allow_list(kind: ThreadKind) -> Built<BTreeMap<i64, Vec<SeccompRule>>> {
    let own = match kind {
        ThreadKind::Vcpu => vcpu()?,
        ThreadKind::Block => block()?,
        ThreadKind::Fs => fs()?,
    };
    let mut map = BTreeMap::new();
    for (nr, rules) in common()?.into_iter().chain(own) {
        let entry: &mut Vec<SeccompRule> = map.entry(nr).or_default();
        entry.extend(rules);
    }
    Ok(map)
}

/// The names of the calls on `kind`'s list (for the closing note and tests).
pub fn allowed_names(kind: ThreadKind) -> Result<Vec<&'static str>, SeccompError> {
    let map = allow_list(kind).map_err(|e| SeccompError::Build(kind, e))?;
    Ok(map.keys().map(|nr| syscall_names::NAMES.iter().find(|(n, _)| n == nr).map_or("?", |(_, name)| name)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_thread_kind_compiles_to_bpf() {
        for kind in ThreadKind::ALL {
            let program = compile(kind).unwrap_or_else(|e| panic!("{kind}: {e}"));
            assert!(!program.is_empty());
            // The kernel's limit (BPF_MAXINSNS).
            assert!(program.len() <= 4096, "{kind}: {} instructions", program.len());
        }
    }

    #[test]
    fn the_kvm_ioctl_numbers_are_the_uapi_ones() {
        use kvm_ioctls_nr::*;
        assert_eq!(KVM_RUN(), 0xae80);
        assert_eq!(KVM_GET_REGS(), 0x8090_ae81);
        assert_eq!(KVM_GET_SREGS(), 0x8138_ae83);
        assert_eq!(KVM_TRANSLATE(), 0xc018_ae85);
        assert_eq!(KVM_GET_XSAVE(), 0x9000_aea4);
        assert_eq!(KVM_SET_XSAVE(), 0x5000_aea5);
        assert_eq!(KVM_GET_XSAVE2(), 0x9000_aecf);
        assert_eq!(KVM_GET_MSRS(), 0xc008_ae88);
        assert_eq!(KVM_GET_LAPIC(), 0x8400_ae8e);
        assert_eq!(KVM_GET_MP_STATE(), 0x8004_ae98);
        assert_eq!(KVM_GET_VCPU_EVENTS(), 0x8040_ae9f);
        assert_eq!(KVM_GET_DEBUGREGS(), 0x8080_aea1);
        assert_eq!(KVM_GET_XCRS(), 0x8188_aea6);
    }

    #[test]
    fn no_list_allows_creating_processes_sockets_or_executing() {
        let forbidden =
            ["socket", "connect", "fork", "vfork", "clone", "clone3", "execve", "execveat", "ptrace", "kill"];
        for kind in ThreadKind::ALL {
            let names = allowed_names(kind).unwrap();
            assert!(!names.contains(&"?"), "{kind}: a call without a name");
            for f in forbidden {
                assert!(!names.contains(&f), "{kind} allows {f}");
            }
        }
        let vcpu = allowed_names(ThreadKind::Vcpu).unwrap();
        assert!(!vcpu.contains(&"openat"), "the vCPU thread opens no files");
        assert!(!allowed_names(ThreadKind::Block).unwrap().contains(&"ioctl"), "no ioctl on the block worker");
        assert!(!allowed_names(ThreadKind::Fs).unwrap().contains(&"setresuid"), "the fs worker never switches uid");
    }

    #[test]
    fn the_probe_is_parsed_from_its_thread_kind_names() {
        assert_eq!(ThreadKind::ALL.map(ThreadKind::probe_name), ["vcpu", "virtio-blk", "virtio-fs"]);
        let p = Policy::disabled();
        let f = p.thread(ThreadKind::Fs).unwrap();
        assert!(!f.probe && f.program.is_none());
        f.install("test").unwrap();
    }
}
