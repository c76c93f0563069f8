//! Running a machine to its end: the vCPU on its own filtered thread, and
//! this (unfiltered) thread watching it: the time limit, SIGINT/SIGTERM, a
//! device worker that stopped, a restored guest that never reaches its job,
//! and the pause at READY where the snapshot is written. One [`RunEnd`]
//! says how it ended.

use super::config::{RunEnd, RunReport, RESTORE_WATCHDOG};
use super::machine::Machine;
use super::snapshot::state::VcpuState;
use super::snapshot::SnapshotError;
use super::snapshot::{self, lock::TakeLock, BootPath, Key};
use super::vcpu::{GuestExit, Pause, Vcpu, VcpuMsg, XstateStats};
use super::VmmError;
use crate::seccomp::{Policy, ThreadKind};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{mpsc, Once};
use std::time::{Duration, Instant};
use vm_memory::GuestMemory;
use vmm_sys_util::signal::{register_signal_handler, Killable, SIGRTMIN};

/// What the run is watched for.
#[derive(Debug)]
pub(super) struct Watch {
    /// The run's start, and its wall-clock limit from there.
    pub start: Instant,
    pub timeout: Duration,
    /// How the guest came up so far.
    pub boot: BootPath,
    /// Take a snapshot at READY.
    pub take: Option<Take>,
    /// Sample the guest's RIP every 5 ms into this file
    /// (`ROOTLAYER_GUEST_PROFILE`).
    pub profile: Option<PathBuf>,
}

/// Where the snapshot taken at READY goes.
#[derive(Debug)]
pub(super) struct Take {
    pub dir: PathBuf,
    pub key: Key,
    /// The MSRs it saves.
    pub msrs: Vec<u32>,
    /// Held until it is written (or not): the jobs waiting for it go on.
    pub lock: Option<TakeLock>,
}

extern "C" fn kick_handler(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}

/// The signal that interrupts KVM_RUN so the vCPU thread sees its stop flag.
fn kick_signal() -> libc::c_int {
    static REGISTER: Once = Once::new();
    REGISTER.call_once(|| {
        register_signal_handler(SIGRTMIN(), kick_handler).expect("registering the vCPU kick signal handler");
    });
    SIGRTMIN()
}

/// Run `vcpu` on its own thread (its seccomp filter installed first, before
/// the guest runs) and watch the machine until the guest ends.
pub(super) fn run(machine: Machine, mut vcpu: Vcpu, seccomp: &Policy, mut watch: Watch) -> Result<RunReport, VmmError> {
    let started = vcpu.started_flag();
    let (tx, rx) = mpsc::channel();
    let (resume_tx, resume_rx) = mpsc::channel();
    if let Some(take) = &mut watch.take {
        vcpu.pause_at_ready(Pause { paused: tx.clone(), resume: resume_rx }, std::mem::take(&mut take.msrs));
    }
    if watch.profile.is_some() {
        vcpu.enable_profiling();
    }
    let thread = spawn(vcpu, &machine, seccomp, tx)?;

    // Wait for the guest, waking every 100 ms to notice SIGINT/SIGTERM
    // (every 5 ms while profiling, to sample the vCPU). A pause for the
    // snapshot is served here, on this unfiltered thread.
    let tick = if watch.profile.is_some() { Duration::from_millis(5) } else { Duration::from_millis(100) };
    let restored = matches!(watch.boot, BootPath::Restored { .. });
    // The pause for the snapshot is the VMM's time, not the job's.
    let mut paused_for = Duration::ZERO;
    let stopped_for = loop {
        let remaining = (watch.timeout + paused_for).saturating_sub(watch.start.elapsed());
        match rx.recv_timeout(remaining.min(tick)) {
            Ok(VcpuMsg::Paused(state)) => {
                let paused = Instant::now();
                let take = watch.take.take().expect("a pause is armed with where the snapshot goes");
                watch.boot = write_snapshot(&machine, *state, take, paused);
                let _ = resume_tx.send(());
                paused_for += paused.elapsed();
            }
            Ok(VcpuMsg::Done(exit, samples, xstate)) => break Ok((exit, samples, xstate)),
            Err(mpsc::RecvTimeoutError::Timeout) if remaining.is_zero() => break Err(RunEnd::TimedOut),
            Err(mpsc::RecvTimeoutError::Timeout) => {
                if crate::signals::interrupted() {
                    break Err(RunEnd::Interrupted);
                }
                if let Some(what) = machine.failures.first() {
                    break Err(RunEnd::DeviceFailed(what));
                }
                if restored && !started.load(Ordering::SeqCst) && watch.start.elapsed() > RESTORE_WATCHDOG {
                    // A restored guest that does not get to its job is a
                    // failed restore (the job layer boots cold), not a
                    // timeout.
                    break Err(RunEnd::RestoreHung);
                }
                if watch.profile.is_some() {
                    let _ = thread.kill(kick_signal());
                }
            }
            // The vCPU thread ended without a word: it panicked (below).
            Err(mpsc::RecvTimeoutError::Disconnected) => break Err(RunEnd::Exited(GuestExit::Stopped)),
        }
    };
    let (end, (samples, xstate)) = match stopped_for {
        Ok((exit, samples, xstate)) => (RunEnd::Exited(exit), (samples, xstate)),
        Err(end @ RunEnd::Exited(_)) => (end, (Vec::new(), None)),
        Err(end) => (end, stop(&machine, &thread, &rx, &resume_tx)),
    };
    let end = ending(thread.join(), end);
    let peak_rss_kib = peak_rss_kib();
    let guest_rss_kib = machine.mem.iter().map(|r| mapping_rss_kib(r.as_ptr() as u64)).sum();
    let console = machine.console.clone();
    drop(machine);
    if let Some(path) = watch.profile {
        let text: String = samples.iter().map(|rip| format!("{rip:x}\n")).collect();
        if let Err(e) = std::fs::write(&path, text) {
            eprintln!("rootlayer: writing guest profile {}: {e}", path.display());
        }
    }
    Ok(RunReport {
        end,
        wall: watch.start.elapsed(),
        console,
        peak_rss_kib,
        guest_rss_kib,
        xstate,
        boot: watch.boot,
        started: started.load(Ordering::SeqCst),
    })
}

/// Start the vCPU thread: its seccomp filter first, before the guest runs;
/// it reports its end on `tx`.
fn spawn(
    mut vcpu: Vcpu,
    machine: &Machine,
    seccomp: &Policy,
    tx: mpsc::Sender<VcpuMsg>,
) -> Result<std::thread::JoinHandle<()>, VmmError> {
    let filter = seccomp.thread(ThreadKind::Vcpu)?;
    let (ready_tx, ready_rx) = mpsc::channel();
    let mem = machine.mem.clone();
    let thread = std::thread::Builder::new()
        .name("vcpu0".into())
        .spawn(move || {
            let installed = filter.install("vcpu0");
            let ok = installed.is_ok();
            let _ = ready_tx.send(installed);
            if ok {
                let exit = vcpu.run(&mem, &filter);
                let _ = tx.send(VcpuMsg::Done(exit, vcpu.take_samples(), vcpu.xstate_stats()));
            }
        })
        .map_err(VmmError::Thread)?;
    let installed = match ready_rx.recv() {
        Ok(installed) => installed.map_err(VmmError::from),
        Err(_) => Err(VmmError::Thread(std::io::Error::other("the vCPU thread ended at start"))),
    };
    match installed {
        Ok(()) => Ok(thread),
        Err(e) => {
            let _ = thread.join();
            Err(e)
        }
    }
}

/// The vCPU paused at READY with its state read (`vcpu`): write the
/// snapshot, and say how the guest came up.
fn write_snapshot(machine: &Machine, vcpu: Result<VcpuState, SnapshotError>, take: Take, paused: Instant) -> BootPath {
    let Take { dir, key, lock, .. } = take;
    let written = vcpu
        .and_then(|vcpu| machine.save(vcpu))
        .and_then(|state| snapshot::file::write(&dir, &key, &state, &machine.mem).map_err(Into::into));
    // Written (or not): the jobs waiting for it go on.
    drop(lock);
    match written {
        Ok((file, disk_bytes)) => BootPath::Took { file, disk_bytes, pause: paused.elapsed() },
        Err(e) => {
            eprintln!("rootlayer: no snapshot taken: {e}");
            BootPath::TakeFailed(e.to_string())
        }
    }
}

/// Ask the vCPU to stop and kick it out of KVM_RUN until it does (repeated:
/// a kick that lands just before KVM_RUN is lost); its profile samples and
/// extended-state cost.
fn stop(
    machine: &Machine,
    thread: &std::thread::JoinHandle<()>,
    rx: &mpsc::Receiver<VcpuMsg>,
    resume: &mpsc::Sender<()>,
) -> (Vec<u64>, Option<XstateStats>) {
    machine.stop.store(true, Ordering::SeqCst);
    loop {
        let _ = thread.kill(kick_signal());
        match rx.recv_timeout(Duration::from_millis(20)) {
            Ok(VcpuMsg::Done(_, samples, xstate)) => return (samples, xstate),
            // Paused as the time ran out: let it go on to its stop.
            Ok(VcpuMsg::Paused(_)) => {
                let _ = resume.send(());
            }
            Err(mpsc::RecvTimeoutError::Timeout) => continue,
            Err(mpsc::RecvTimeoutError::Disconnected) => return (Vec::new(), None),
        }
    }
}

/// How the run ended, from the vCPU thread's end (`joined`) and what the
/// watch saw: a vCPU thread that panicked is an internal error with its
/// message, never a timeout.
fn ending(joined: std::thread::Result<()>, end: RunEnd) -> RunEnd {
    match joined {
        Ok(()) => end,
        Err(payload) => RunEnd::VcpuPanicked(
            payload
                .downcast_ref::<&str>()
                .map(|s| (*s).to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "no message".into()),
        ),
    }
}

/// VmHWM of this process, in KiB.
fn peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Resident KiB of the mapping that starts at host address `start`.
fn mapping_rss_kib(start: u64) -> Option<u64> {
    let smaps = std::fs::read_to_string("/proc/self/smaps").ok()?;
    let mut in_mapping = false;
    for line in smaps.lines() {
        if let Some((range, _)) = line.split_once(' ') {
            if let Some((lo, _)) = range.split_once('-') {
                if lo.chars().all(|c| c.is_ascii_hexdigit()) {
                    in_mapping = u64::from_str_radix(lo, 16).ok() == Some(start);
                    continue;
                }
            }
        }
        if in_mapping {
            if let Some(rest) = line.strip_prefix("Rss:") {
                return rest.split_whitespace().next()?.parse().ok();
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_vcpu_thread_that_panics_is_an_internal_error_not_a_timeout() {
        let joined = std::thread::spawn(|| panic!("KVM_RUN went wrong")).join();
        assert_eq!(ending(joined, RunEnd::TimedOut), RunEnd::VcpuPanicked("KVM_RUN went wrong".into()));
        let joined = std::thread::spawn(|| std::panic::panic_any(format!("code {}", 7))).join();
        assert_eq!(ending(joined, RunEnd::Exited(GuestExit::Reset)), RunEnd::VcpuPanicked("code 7".into()));
        // A thread that ended normally: what the watch saw.
        assert_eq!(ending(Ok(()), RunEnd::TimedOut), RunEnd::TimedOut);
        let failed = RunEnd::DeviceFailed("virtio-fs worker".into());
        assert_eq!(ending(Ok(()), failed.clone()), failed);
    }
}
