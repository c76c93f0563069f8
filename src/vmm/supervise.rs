//! Running a machine to its end: each vCPU on its own filtered thread, and
//! this (unfiltered) thread watching them: the time limit, SIGINT/SIGTERM, a
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
    /// The job to put in the mailbox at that pause, after the snapshot.
    pub job: Option<super::config::MailboxJob>,
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

/// How long the vCPUs have to pause for the snapshot once one heard READY
/// (they are kicked out of KVM_RUN every 20 ms meanwhile).
const PAUSE_WAIT: Duration = Duration::from_secs(5);

/// What a vCPU thread said when it ended: why, profile samples, host time
/// spent keeping extended state.
type Ended = (GuestExit, Vec<u64>, Duration);

/// Run every vCPU on its own thread (its seccomp filter installed first,
/// before the guest runs) and watch the machine until the guest ends: the
/// first vCPU to end ends the run, and the others are stopped.
pub(super) fn run(
    machine: Machine,
    mut vcpus: Vec<Vcpu>,
    seccomp: &Policy,
    mut watch: Watch,
) -> Result<RunReport, VmmError> {
    let started = vcpus[0].started_flag();
    let (tx, rx) = mpsc::channel();
    let mut resumes = Vec::new();
    if let Some(take) = &mut watch.take {
        for vcpu in &mut vcpus {
            let (resume_tx, resume_rx) = mpsc::channel();
            vcpu.pause_at_ready(Pause { paused: tx.clone(), resume: resume_rx }, take.msrs.clone());
            resumes.push(resume_tx);
        }
    }
    if watch.profile.is_some() {
        vcpus.iter_mut().for_each(Vcpu::enable_profiling);
    }
    let threads = spawn(vcpus, &machine, seccomp, tx)?;
    let mut ended: Vec<Option<Ended>> = threads.iter().map(|_| None).collect();

    // Wait for the guest, waking every 100 ms to notice SIGINT/SIGTERM
    // (every 5 ms while profiling, to sample the vCPUs). A pause for the
    // snapshot is served here, on this unfiltered thread.
    let tick = if watch.profile.is_some() { Duration::from_millis(5) } else { Duration::from_millis(100) };
    let restored = matches!(watch.boot, BootPath::Restored { .. });
    // The pause for the snapshot is the VMM's time, not the job's.
    let mut paused_for = Duration::ZERO;
    let end = loop {
        let remaining = (watch.timeout + paused_for).saturating_sub(watch.start.elapsed());
        match rx.recv_timeout(remaining.min(tick)) {
            Ok(VcpuMsg::Paused(index, state)) => {
                // One vCPU heard READY (or was kicked after it): all pause.
                let Some(take) = watch.take.take() else { continue };
                let paused = Instant::now();
                let states = gather_pause(&threads, &rx, (index, *state), &mut ended);
                watch.boot = write_snapshot(&machine, states, take, paused);
                if let Some(job) = watch.job.take() {
                    if let Err(e) = machine.post_job(&job) {
                        break RunEnd::DeviceFailed(e.to_string());
                    }
                }
                for resume in &resumes {
                    let _ = resume.send(());
                }
                paused_for += paused.elapsed();
                if let Some(exit) = first_ended(&ended) {
                    break RunEnd::Exited(exit);
                }
            }
            Ok(VcpuMsg::Done(index, exit, samples, time)) => {
                ended[index] = Some((exit.clone(), samples, time));
                break RunEnd::Exited(exit);
            }
            Err(mpsc::RecvTimeoutError::Timeout) if remaining.is_zero() => break RunEnd::TimedOut,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                if crate::signals::interrupted() {
                    break RunEnd::Interrupted;
                }
                if let Some(what) = machine.failures.first() {
                    break RunEnd::DeviceFailed(what);
                }
                if restored && !started.load(Ordering::SeqCst) && watch.start.elapsed() > RESTORE_WATCHDOG {
                    // A restored guest that does not get to its job is a
                    // failed restore (the job layer boots cold), not a
                    // timeout.
                    break RunEnd::RestoreHung;
                }
                // A vCPU thread that ended without a word panicked (below).
                if threads.iter().zip(&ended).any(|(t, e)| e.is_none() && t.is_finished()) {
                    break RunEnd::Exited(GuestExit::Stopped);
                }
                if watch.profile.is_some() {
                    for thread in &threads {
                        let _ = thread.kill(kick_signal());
                    }
                }
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break RunEnd::Exited(GuestExit::Stopped),
        }
    };
    stop(&machine, &threads, &rx, &resumes, &mut ended);
    let end = threads.into_iter().fold(end, |end, thread| ending(thread.join(), end));
    let end = with_device_failure(end, machine.failures.first());
    let peak_rss_kib = peak_rss_kib();
    let guest_rss_kib = machine.mem.iter().map(|r| mapping_rss_kib(r.as_ptr() as u64)).sum();
    let xstate = machine.keeper.as_ref().map(|keeper| XstateStats {
        ops: keeper.lock().expect("keeper lock").switches,
        time: ended.iter().flatten().map(|(_, _, time)| *time).sum(),
    });
    let console = machine.console.clone();
    let result = machine.take_result();
    let teardown = super::config::Teardown::of(machine);
    if let Some(path) = watch.profile {
        let text: String = ended.iter().flatten().flat_map(|(_, s, _)| s).map(|rip| format!("{rip:x}\n")).collect();
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
        result,
        teardown,
    })
}

/// The exit of a vCPU that has ended, if one has.
fn first_ended(ended: &[Option<Ended>]) -> Option<GuestExit> {
    ended.iter().flatten().map(|(exit, _, _)| exit.clone()).next()
}

/// Start a thread per vCPU: its seccomp filter first, before the guest
/// runs; each reports its end on `tx`.
fn spawn(
    vcpus: Vec<Vcpu>,
    machine: &Machine,
    seccomp: &Policy,
    tx: mpsc::Sender<VcpuMsg>,
) -> Result<Vec<std::thread::JoinHandle<()>>, VmmError> {
    let mut threads = Vec::new();
    for mut vcpu in vcpus {
        let filter = seccomp.thread(ThreadKind::Vcpu)?;
        let (ready_tx, ready_rx) = mpsc::channel();
        let mem = machine.mem.clone();
        let tx = tx.clone();
        let name = format!("vcpu{}", vcpu.index());
        let spawned = std::thread::Builder::new().name(name.clone()).spawn(move || {
            let installed = filter.install(&name);
            let ok = installed.is_ok();
            let _ = ready_tx.send(installed);
            if ok {
                let exit = vcpu.run(&mem, &filter);
                let _ = tx.send(VcpuMsg::Done(vcpu.index(), exit, vcpu.take_samples(), vcpu.xstate_time()));
            }
        });
        let started = spawned.map_err(VmmError::Thread).and_then(|thread| {
            let installed = match ready_rx.recv() {
                Ok(installed) => installed.map_err(VmmError::from),
                Err(_) => Err(VmmError::Thread(std::io::Error::other("a vCPU thread ended at start"))),
            };
            threads.push(thread);
            installed
        });
        if let Err(e) = started {
            // The vCPUs started so far have not run the guest yet: each is
            // either waiting here or about to run; stop and join them.
            machine.stop.store(true, Ordering::SeqCst);
            for thread in threads {
                let _ = thread.kill(kick_signal());
                let _ = thread.join();
            }
            return Err(e);
        }
    }
    Ok(threads)
}

/// Every vCPU paused for the snapshot, `first` having paused already: kick
/// the others out of KVM_RUN until each has paused and handed over its
/// state, bounded by [`PAUSE_WAIT`]. A vCPU that ends meanwhile is
/// recorded in `ended`, and there is no snapshot.
fn gather_pause(
    threads: &[std::thread::JoinHandle<()>],
    rx: &mpsc::Receiver<VcpuMsg>,
    first: (usize, Result<VcpuState, SnapshotError>),
    ended: &mut [Option<Ended>],
) -> Result<Vec<VcpuState>, SnapshotError> {
    let mut states: Vec<Option<Result<VcpuState, SnapshotError>>> = threads.iter().map(|_| None).collect();
    states[first.0] = Some(first.1);
    let deadline = Instant::now() + PAUSE_WAIT;
    while let Some(waiting) = states.iter().position(Option::is_none) {
        for (thread, state) in threads.iter().zip(&states) {
            if state.is_none() {
                let _ = thread.kill(kick_signal());
            }
        }
        match rx.recv_timeout(Duration::from_millis(20)) {
            Ok(VcpuMsg::Paused(index, state)) => states[index] = Some(*state),
            Ok(VcpuMsg::Done(index, exit, samples, time)) => {
                let why = format!("vCPU {index} ended before it paused ({exit})");
                ended[index] = Some((exit, samples, time));
                return Err(SnapshotError::Pause(why));
            }
            Err(mpsc::RecvTimeoutError::Timeout) if Instant::now() < deadline => {}
            Err(_) => {
                return Err(SnapshotError::Pause(format!("vCPU {waiting} did not pause within {PAUSE_WAIT:?}")));
            }
        }
    }
    states.into_iter().map(|s| s.expect("every vCPU paused")).collect()
}

/// Every vCPU paused with its state read (`vcpus`): write the snapshot,
/// and say how the guest came up.
fn write_snapshot(
    machine: &Machine,
    vcpus: Result<Vec<VcpuState>, SnapshotError>,
    take: Take,
    paused: Instant,
) -> BootPath {
    let Take { dir, key, lock, .. } = take;
    let written = vcpus
        .and_then(|vcpus| machine.save(vcpus))
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

/// Ask every vCPU to stop and kick each out of KVM_RUN until it does
/// (repeated: a kick that lands just before KVM_RUN is lost), collecting
/// their ends into `ended`. A vCPU paused for a snapshot is let go on to
/// its stop. Threads that ended without a word (a panic) are not waited
/// for.
fn stop(
    machine: &Machine,
    threads: &[std::thread::JoinHandle<()>],
    rx: &mpsc::Receiver<VcpuMsg>,
    resumes: &[mpsc::Sender<()>],
    ended: &mut [Option<Ended>],
) {
    machine.stop.store(true, Ordering::SeqCst);
    for resume in resumes {
        let _ = resume.send(());
    }
    loop {
        let running: Vec<_> =
            threads.iter().zip(ended.iter()).filter(|(t, e)| e.is_none() && !t.is_finished()).map(|(t, _)| t).collect();
        if running.is_empty() {
            break;
        }
        for thread in running {
            let _ = thread.kill(kick_signal());
        }
        match rx.recv_timeout(Duration::from_millis(20)) {
            Ok(VcpuMsg::Done(index, exit, samples, time)) => ended[index] = Some((exit, samples, time)),
            Ok(VcpuMsg::Paused(..)) | Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    // Ends sent just as the threads finished.
    while let Ok(msg) = rx.try_recv() {
        if let VcpuMsg::Done(index, exit, samples, time) = msg {
            ended[index] = Some((exit, samples, time));
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

/// A guest that ran to its end after a device failed (a write the host
/// could not make, say at the final remount, shortly before the power-off
/// and before the watch's next look) ended with that failure: what it
/// left behind is not what it wrote.
fn with_device_failure(end: RunEnd, failure: Option<String>) -> RunEnd {
    match (end, failure) {
        (RunEnd::Exited(_), Some(what)) => RunEnd::DeviceFailed(what),
        (end, _) => end,
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

    #[test]
    fn a_guest_that_ends_after_a_device_failed_ends_with_the_failure() {
        let what = || Some("virtio-blk disk rootlayer-scratch: No space left on device".to_string());
        let failed = RunEnd::DeviceFailed(what().unwrap());
        assert_eq!(with_device_failure(RunEnd::Exited(GuestExit::Reset), what()), failed);
        assert_eq!(with_device_failure(RunEnd::Exited(GuestExit::Stopped), what()), failed);
        // No failure: the end as it was; a timeout, a signal or a panic
        // stay what they were.
        assert_eq!(with_device_failure(RunEnd::Exited(GuestExit::Reset), None), RunEnd::Exited(GuestExit::Reset));
        for end in [RunEnd::TimedOut, RunEnd::Interrupted, RunEnd::VcpuPanicked("x".into())] {
            assert_eq!(with_device_failure(end.clone(), what()), end);
        }
    }
}
