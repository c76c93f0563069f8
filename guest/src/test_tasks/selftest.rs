//! In-guest self-tests, requested with `ROOTLAYER_SELFTEST=NAME` on the kernel
//! command line (the kernel hands unknown `KEY=VALUE` parameters to PID 1 as
//! environment).
//!
//! `hang`: never finish (the host's timeout test).
//!
//! `switch`: what a context switch between two user processes costs: they
//! ping-pong a byte over two pipes (`scripts/bench-xstate` boots it with and
//! without the VMM keeping extended state).
//!
//! `avx`: the vector-state hazard of software-emulated KVM. Guest user code
//! runs natively there with the host's XCR0, whatever CPUID says, while the
//! guest kernel (running `noxsave`) saves only the legacy FPU/SSE state on a
//! context switch; the VMM keeps the rest per task (kernel-config patch 0004,
//! `src/vmm/xstate.rs`). Two processes that hold YMM (and, where the CPU has
//! AVX-512, ZMM and opmask) values across preemptions must find them intact,
//! and two processes running glibc's string functions, with whatever glibc
//! picks on this host, must see no corruption. The report names the case
//! (what user code reaches, what saves it).

use anyhow::{bail, Context};
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::{fork, ForkResult};
use std::time::{Duration, Instant};

const CHILD_ENV: &str = "ROOTLAYER_SELFTEST_CHILD";

pub fn run(name: &str) -> anyhow::Result<()> {
    match name {
        "avx" => avx(),
        "switch" => switch(),
        "hang" => {
            // For the host's timeout test: a guest that never finishes.
            println!("rootlayer-agent: selftest hang: sleeping forever");
            loop {
                std::thread::sleep(Duration::from_secs(3600));
            }
        }
        other => bail!("unknown self-test {other:?}"),
    }
}

/// Entry for a re-executed child (see `glibc_pair`): run the workload and
/// exit with the number of mismatches (capped).
pub fn child_main() -> Option<i32> {
    let what = std::env::var(CHILD_ENV).ok()?;
    let seed: u8 = what.parse().unwrap_or(1);
    let bad = glibc_workload(seed, Duration::from_secs(3));
    Some(bad.min(100) as i32)
}

fn avx() -> anyhow::Result<()> {
    // What guest user code sees through CPUID (native or filtered by the
    // VMM, depending on the KVM underneath) and through XGETBV.
    let (l1, l7) = (std::arch::x86_64::__cpuid(1), std::arch::x86_64::__cpuid_count(7, 0));
    let avx512 = (l7.ebx >> 16) & 1 == 1;
    println!(
        "rootlayer-agent: selftest avx: user CPUID leaf1.ecx={:#010x} (avx={} osxsave={}) leaf7.ebx={:#010x} (avx2={} avx512f={})",
        l1.ecx,
        (l1.ecx >> 28) & 1,
        (l1.ecx >> 27) & 1,
        l7.ebx,
        (l7.ebx >> 5) & 1,
        u32::from(avx512)
    );
    let guard = crate::vector_guard::check(&crate::vector_guard::KernelFacts::read()?)?;
    println!("rootlayer-agent: selftest avx: case: {}", guard.line());
    // Run the raw tests even where CPUID says AVX is unusable (OSXSAVE=0):
    // on software KVM the instructions may still execute natively, which is
    // exactly the hazard. Where they fault, the children die of SIGILL.
    let mut bad_total = 0;
    for (what, probe) in [("YMM upper halves", Probe::Ymm), ("ZMM, ZMM16-31 and opmask", Probe::Zmm)] {
        if probe == Probe::Zmm && !avx512 {
            println!("rootlayer-agent: selftest avx: raw {what}: not probed (no AVX-512 in user CPUID)");
            continue;
        }
        match pair(probe, 40)? {
            Some(Probed { bad, rounds, processes, cpus, moves }) => {
                bad_total += bad;
                println!(
                    "rootlayer-agent: selftest avx: raw {what} corrupted in {bad} of {rounds} rounds \
                     ({processes} processes on {cpus} vCPUs, moved between vCPUs {moves} times)"
                );
                if cpus > 1 && moves == 0 {
                    bail!("no probe process was moved between vCPUs");
                }
            }
            None => println!(
                "rootlayer-agent: selftest avx: raw {what}: instructions fault in guest user mode (SIGILL): no hazard"
            ),
        }
    }
    match signal_probe(40)? {
        Some((bad, rounds, signals)) => {
            bad_total += bad;
            println!(
                "rootlayer-agent: selftest avx: raw YMM across {signals} signal handlers that use YMM: corrupted in {bad} of {rounds} rounds"
            );
            if signals == 0 {
                bail!("no signal arrived during the signal probe");
            }
        }
        None => println!(
            "rootlayer-agent: selftest avx: raw YMM across signal handlers: instructions fault in guest user mode (SIGILL): no hazard"
        ),
    }
    let glibc = glibc_pair()?;
    println!("rootlayer-agent: selftest avx: glibc string functions: {glibc} mismatches");
    if bad_total != 0 || glibc != 0 {
        bail!("guest user processes corrupt each other's vector state");
    }
    crate::vector_guard::require_safe(&guard)
}

/// Two processes pass a byte back and forth 500 times: every pass is a
/// switch from one user process to the other.
fn switch() -> anyhow::Result<()> {
    const ROUNDS: u32 = 500;
    let (to_child_rd, to_child_wr) = nix::unistd::pipe().context("pipe")?;
    let (to_parent_rd, to_parent_wr) = nix::unistd::pipe().context("pipe")?;
    // SAFETY: the agent is single-threaded here, so the child may run
    // arbitrary code after fork.
    match unsafe { fork() }.context("fork")? {
        ForkResult::Child => {
            let mut b = [0u8; 1];
            for _ in 0..ROUNDS {
                if nix::unistd::read(std::os::fd::AsRawFd::as_raw_fd(&to_child_rd), &mut b).unwrap_or(0) != 1 {
                    break;
                }
                let _ = nix::unistd::write(&to_parent_wr, &b);
            }
            // SAFETY: leaving the forked child without the parent's exit
            // handlers.
            unsafe { libc::_exit(0) }
        }
        ForkResult::Parent { child } => {
            let mut b = [0u8; 1];
            let start = Instant::now();
            for _ in 0..ROUNDS {
                nix::unistd::write(&to_child_wr, &b).context("write")?;
                nix::unistd::read(std::os::fd::AsRawFd::as_raw_fd(&to_parent_rd), &mut b).context("read")?;
            }
            let elapsed = start.elapsed();
            waitpid(child, None).context("waitpid")?;
            println!(
                "rootlayer-agent: selftest switch: {} switches between two processes, {:.1} us per switch",
                2 * ROUNDS,
                elapsed.as_secs_f64() * 1e6 / f64::from(2 * ROUNDS)
            );
            Ok(())
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Probe {
    Ymm,
    Zmm,
}

/// What a probe of processes holding vector values found.
struct Probed {
    /// Rounds in which a process found its values changed, of all rounds.
    bad: u32,
    rounds: u32,
    processes: u32,
    cpus: u32,
    /// Times the parent moved a probe process to another vCPU.
    moves: u32,
}

/// Pin `pid` to vCPU `cpu` (the kernel moves it at once, mid-round).
fn pin(pid: nix::unistd::Pid, cpu: u32) -> bool {
    let mut set = nix::sched::CpuSet::new();
    set.set(cpu as usize).is_ok() && nix::sched::sched_setaffinity(pid, &set).is_ok()
}

/// Forked processes each hold distinct vector values across busy loops
/// long enough to be preempted: two on one vCPU; four per vCPU where there
/// are more, which the parent moves from vCPU to vCPU every 5 ms while they
/// hold them (a task leaving one vCPU and going on with its registers on
/// another). Returns what they found, or None when the instructions fault.
fn pair(probe: Probe, rounds: u32) -> anyhow::Result<Option<Probed>> {
    let cpus = crate::online_cpus().unwrap_or(1);
    let processes = if cpus > 1 { 4 * cpus } else { 2 };
    // About the same work whatever the count.
    let per_process = (rounds * 2 / processes).max(5);
    let mut total = 0;
    let mut faulted = false;
    let mut children = Vec::new();
    for seed in (0..processes).map(|i| 0x11u8.wrapping_add(u8::try_from(i % 200).expect("small") * 0x22)) {
        // SAFETY: the agent is single-threaded here, so the child may run
        // arbitrary code after fork.
        match unsafe { fork() }.context("fork")? {
            ForkResult::Child => {
                let mut bad = 0;
                for _ in 0..per_process {
                    let intact = match probe {
                        // SAFETY: a deliberate probe: where the CPU cannot
                        // run AVX the first VEX instruction raises SIGILL
                        // and this child dies, which the parent reports.
                        Probe::Ymm => unsafe { hold_ymm(seed) },
                        // SAFETY: as above, for AVX-512.
                        Probe::Zmm => unsafe { hold_zmm(seed) },
                    };
                    if !intact {
                        bad += 1;
                    }
                }
                std::process::exit(bad);
            }
            ForkResult::Parent { child } => children.push(child),
        }
    }
    let mut moves = 0;
    let mut tick = 0u32;
    let mut running = children.clone();
    while !running.is_empty() {
        if cpus > 1 {
            for (k, child) in (0u32..).zip(&running) {
                moves += u32::from(pin(*child, (k + tick) % cpus));
            }
            tick += 1;
            std::thread::sleep(Duration::from_millis(5));
        }
        let mut still = Vec::new();
        for child in running {
            let flags = if cpus > 1 { Some(nix::sys::wait::WaitPidFlag::WNOHANG) } else { None };
            match waitpid(child, flags).context("waitpid")? {
                WaitStatus::StillAlive => still.push(child),
                WaitStatus::Exited(_, bad) => total += u32::try_from(bad).unwrap_or(0),
                WaitStatus::Signaled(_, nix::sys::signal::Signal::SIGILL, _) => faulted = true,
                other => bail!("{probe:?} probe child ended unexpectedly: {other:?}"),
            }
        }
        running = still;
    }
    let rounds = per_process * processes;
    Ok((!faulted).then_some(Probed { bad: total.min(rounds), rounds, processes, cpus, moves }))
}

/// Load a pattern into YMM0, spin for ~30 ms, read it back; true if intact.
///
/// # Safety
///
/// Runs AVX instructions: on a CPU (or under a kernel) without AVX the
/// first one raises SIGILL. Call it only in a forked probe child, whose
/// death by SIGILL the parent reports as "the instructions fault".
#[target_feature(enable = "avx")]
unsafe fn hold_ymm(seed: u8) -> bool {
    let pattern = [seed; 32];
    let mut out = [0u8; 32];
    let spins: u64 = 30_000_000;
    // SAFETY: reads and writes only the two local arrays; YMM0 is declared
    // clobbered.
    unsafe {
        std::arch::asm!(
            "vmovdqu ymm0, [{src}]",
            "2:",
            "dec {n}",
            "jnz 2b",
            "vmovdqu [{dst}], ymm0",
            src = in(reg) pattern.as_ptr(),
            dst = in(reg) out.as_mut_ptr(),
            n = inout(reg) spins => _,
            out("ymm0") _,
        );
    }
    out == pattern
}

static SIGNALS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

/// A SIGALRM handler that uses YMM0 (caller-saved, so any compiled code in
/// a handler may) as glibc's memcpy in a handler would.
extern "C" fn clobber_ymm0(_: libc::c_int) {
    SIGNALS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let junk = [0x5au8; 32];
    // SAFETY: reads the local array into YMM0, declared clobbered.
    unsafe { std::arch::asm!("vmovdqu ymm0, [{p}]", p = in(reg) junk.as_ptr(), out("ymm0") _) };
}

/// One forked process holds YMM0 across busy loops while a 3 ms interval
/// timer delivers signals whose handler overwrites YMM0; returns
/// (corrupted rounds, rounds, signals), or None where AVX faults.
fn signal_probe(rounds: u32) -> anyhow::Result<Option<(u32, u32, u32)>> {
    let (rd, wr) = nix::unistd::pipe().context("pipe")?;
    // SAFETY: the agent is single-threaded here, so the child may run
    // arbitrary code after fork.
    match unsafe { fork() }.context("fork")? {
        ForkResult::Child => {
            drop(rd);
            // SAFETY: installs a handler that only touches an atomic and
            // YMM0, and a process-private interval timer.
            unsafe {
                libc::signal(libc::SIGALRM, clobber_ymm0 as extern "C" fn(libc::c_int) as libc::sighandler_t);
                let tick = libc::timeval { tv_sec: 0, tv_usec: 3000 };
                let timer = libc::itimerval { it_interval: tick, it_value: tick };
                libc::setitimer(libc::ITIMER_REAL, &timer, std::ptr::null_mut());
            }
            let mut bad = 0u32;
            for _ in 0..rounds {
                // SAFETY: as in `pair`: SIGILL ends the child where AVX
                // cannot run.
                if !unsafe { hold_ymm(0x3c) } {
                    bad += 1;
                }
            }
            let signals = SIGNALS.load(std::sync::atomic::Ordering::Relaxed);
            let mut report = Vec::new();
            report.extend_from_slice(&bad.to_le_bytes());
            report.extend_from_slice(&signals.to_le_bytes());
            let _ = nix::unistd::write(&wr, &report);
            // SAFETY: leaving the forked child without the parent's exit
            // handlers.
            unsafe { libc::_exit(0) }
        }
        ForkResult::Parent { child } => {
            drop(wr);
            let mut buf = [0u8; 8];
            let n = nix::unistd::read(std::os::fd::AsRawFd::as_raw_fd(&rd), &mut buf).unwrap_or(0);
            match waitpid(child, None).context("waitpid")? {
                WaitStatus::Exited(_, 0) if n == 8 => {
                    let bad = u32::from_le_bytes(buf[..4].try_into().expect("4 bytes"));
                    let signals = u32::from_le_bytes(buf[4..].try_into().expect("4 bytes"));
                    Ok(Some((bad, rounds, signals)))
                }
                WaitStatus::Signaled(_, nix::sys::signal::Signal::SIGILL, _) => Ok(None),
                other => bail!("signal probe child ended unexpectedly: {other:?}"),
            }
        }
    }
}

/// Load a pattern into ZMM0, ZMM16 and k1, spin for ~30 ms, read them
/// back; true if all intact.
///
/// # Safety
///
/// As [`hold_ymm`], for AVX-512F: only in a forked probe child.
#[target_feature(enable = "avx512f")]
unsafe fn hold_zmm(seed: u8) -> bool {
    let pattern = [seed; 64];
    let mut out0 = [0u8; 64];
    let mut out16 = [0u8; 64];
    let mask_in = u32::from(seed) * 0x101;
    let mask_out: u32;
    let spins: u64 = 30_000_000;
    // SAFETY: reads the pattern, writes only the two local arrays; ZMM0,
    // ZMM16 and k1 are declared clobbered.
    unsafe {
        std::arch::asm!(
            "vmovdqu64 zmm0, [{src}]",
            "vmovdqu64 zmm16, [{src}]",
            "kmovw k1, {kin:e}",
            "2:",
            "dec {n}",
            "jnz 2b",
            "vmovdqu64 [{d0}], zmm0",
            "vmovdqu64 [{d16}], zmm16",
            "kmovw {kout:e}, k1",
            src = in(reg) pattern.as_ptr(),
            d0 = in(reg) out0.as_mut_ptr(),
            d16 = in(reg) out16.as_mut_ptr(),
            kin = in(reg) mask_in,
            kout = lateout(reg) mask_out,
            n = inout(reg) spins => _,
            out("zmm0") _,
            out("zmm16") _,
            out("k1") _,
        );
    }
    out0 == pattern && out16 == pattern && mask_out == mask_in
}

/// Two processes running the glibc workload at once, re-executed from
/// /proc/self/exe so that glibc picks its string functions afresh for this
/// host (AVX2 or EVEX ones where user CPUID offers them). Returns total
/// mismatches.
fn glibc_pair() -> anyhow::Result<u32> {
    let mut children = Vec::new();
    for seed in ["3", "5"] {
        let mut cmd = std::process::Command::new("/proc/self/exe");
        cmd.env(CHILD_ENV, seed);
        children.push(cmd.spawn().context("spawn self-test child")?);
    }
    let mut total = 0;
    for mut c in children {
        let status = c.wait().context("wait for self-test child")?;
        total += status.code().map_or(100, |c| c as u32);
    }
    Ok(total)
}

/// memcpy/memset/memmove/strlen over varying sizes, checked byte by byte
/// against the pattern; returns mismatches seen in `time`.
fn glibc_workload(seed: u8, time: Duration) -> u32 {
    let mut src = vec![0u8; 1 << 20];
    let mut dst = vec![0u8; 1 << 20];
    let mut bad = 0u32;
    let start = Instant::now();
    let mut round: usize = 0;
    while start.elapsed() < time {
        round += 1;
        let len = 4096 + (round * 7919) % ((1 << 20) - 4096);
        let fill = seed.wrapping_add(round.to_le_bytes()[0]) | 1;
        // memset, memcpy, memmove and strlen as glibc selected them.
        unsafe_memset(&mut src[..len], fill);
        std::hint::black_box(&mut src);
        dst[..len].copy_from_slice(&src[..len]);
        dst.copy_within(0..len / 2, len / 2);
        src[len - 1] = 0;
        // SAFETY: src[..len] is NUL-terminated at len - 1.
        let n = unsafe { libc::strlen(src.as_ptr().cast()) };
        if n != len - 1 {
            bad += 1;
        }
        let half = len / 2;
        if dst[..half].iter().chain(&dst[half..half * 2]).any(|b| *b != fill) {
            bad += 1;
        }
    }
    bad
}

fn unsafe_memset(buf: &mut [u8], value: u8) {
    // SAFETY: writes exactly buf.len() bytes into buf.
    unsafe { libc::memset(buf.as_mut_ptr().cast(), i32::from(value), buf.len()) };
}
