//! The script's sandbox, made once before the snapshot point: nixpkgs'
//! `unshare -imnpuf --mount-proc chroot` split into what every job does the
//! same and what its own.
//!
//! Made before READY (so a restored guest has it already): a keeper process
//! in new ipc, uts (hostname `localhost`), network (loopback up) and pid
//! namespaces, and its child, the pid namespace's init, waiting for a job.
//! Creating those namespaces and forking the agent twice took about 0.13 s
//! of every job here (the guest kernel is emulated), and their teardown
//! 0.07 s more: the keeper never exits, so they are never torn down (the
//! guest is powered off after the job).
//!
//! Per job, the init process (in the agent's mount namespace until then,
//! so it sees the overlay the agent mounted) gets the job, opens the
//! script, unshares a mount namespace of its own (a copy of the agent's,
//! made private), binds /dev, /sys and the stores (read-only) into the
//! merged tree, mounts a fresh /proc of its pid namespace, chroots and
//! execs the script, which is PID 1 there as in the seed's recipe. Its end
//! takes its mount namespace with it; the keeper reaps it and reports the
//! status.
//!
//! The agent sees two moments: the exec (the init says so on the job
//! socket, or its end closes if it died first) and the status; between the
//! job and the first is the sandbox's per-job setup, between the two the
//! script (its interpreter's lookup and load included).
//!
//! The script's stdout and stderr are one pipe, as a Nix builder's are
//! (the seed runs the script with the build's log pipe): the agent reads it
//! and passes it on to the console in chunks. Written straight to the
//! console, each line a program writes to a terminal is a write of its own
//! through the tty layer and the UART, about 1.7 ms of emulated kernel a
//! line here (`seq 1 3000`, 14 KB: 5.2 s); through the pipe the program's
//! stdio buffers whole blocks. The agent runs as a real-time task while
//! the script does: output after a quiet spell is on the console before
//! the script goes on (so the line before a crash of the guest kernel is
//! not lost in the pipe), and output that streams is gathered into one
//! write per [`GATHER`] (a shell loop of 2,000 `echo`s took 8.6 s passed
//! on line by line, 2.5 s gathered, 4.5 s written straight to the
//! console).

use anyhow::{bail, Context};
use nix::mount::{mount, MsFlags};
use nix::sched::{unshare, CloneFlags};
use nix::unistd::{chdir, chroot, fork, ForkResult};
use rootlayer_protocol::RunAsRoot;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

/// The agent's ends of the sandbox made before the snapshot.
#[derive(Debug)]
pub struct Sandbox {
    /// To the init process: the job goes in; one byte comes back when it
    /// execs the script (end of file if it died before).
    job: UnixStream,
    /// From the keeper: the script's exit status, one line.
    report: UnixStream,
    /// The read end of the script's stdout and stderr.
    output: std::fs::File,
}

/// How long output gathers in the pipe after the agent passed some on,
/// before it passes on the next: a script printing line by line costs at
/// most one console write per `GATHER`.
const GATHER: Duration = Duration::from_millis(20);
/// How long the output may go on after the script's end: its pid
/// namespace's other processes are killed with it, so the pipe's end of
/// file follows at once unless one of them is stuck in the kernel.
const OUTPUT_GRACE: Duration = Duration::from_secs(2);

/// How a script run went: its status and where the time went.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Run {
    pub status: i32,
    /// From the job handed over to the script's exec.
    pub setup: Duration,
    /// From the exec to the script's end.
    pub script: Duration,
}

impl Sandbox {
    /// Make the keeper and the init process (before the snapshot point).
    pub fn make() -> anyhow::Result<Sandbox> {
        let (job, job_init) = UnixStream::pair().context("socketpair")?;
        let (report, report_keeper) = UnixStream::pair().context("socketpair")?;
        let (output, output_init) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).context("pipe")?;
        // SAFETY: the agent is single-threaded; the child only makes system
        // calls, forks, and exits or execs.
        match unsafe { fork() }.context("fork the sandbox keeper")? {
            ForkResult::Child => {
                drop((job, report, output));
                let code = match keeper(job_init, output_init, &report_keeper) {
                    Ok(never) => match never {},
                    Err(e) => {
                        eprintln!("rootlayer-agent: sandbox: {e:#}");
                        127
                    }
                };
                let _ = writeln!(&report_keeper, "{code}");
                // Keep the namespaces: their teardown would be the guest's work.
                park()
            }
            ForkResult::Parent { .. } => {
                drop((job_init, report_keeper, output_init));
                // Made before the snapshot point, not after it: a guest
                // restored with the two still at work would do it again
                // in every job.
                let mut ready = [0u8];
                if (&job).read(&mut ready).ok() != Some(1) {
                    let mut status = String::new();
                    let _ = BufReader::new(&report).read_line(&mut status);
                    bail!("the script's sandbox could not be made (status {})", status.trim());
                }
                Ok(Sandbox { job, report, output: output.into() })
            }
        }
    }

    /// Run `job`'s script in the sandbox, chrooted into `merged`.
    pub fn run(self, merged: &Path, job: &RunAsRoot) -> anyhow::Result<Run> {
        let Sandbox { job: mut to_init, report, mut output } = self;
        let start = Instant::now();
        let mut line = serde_json::to_vec(&(merged, job)).context("serialise the job")?;
        line.push(b'\n');
        // The init may be gone (killed since it was made): the keeper's
        // status says how.
        let _ = to_init.write_all(&line);
        let _ = to_init.shutdown(std::net::Shutdown::Write);
        // One byte at the exec, nothing (end of file) if the init died first.
        let _ = to_init.read(&mut [0u8]);
        let execed = Instant::now();
        let mut forward = Forward::default();
        // While the script runs the agent is a real-time task: what the
        // script writes is on the console before the script goes on (a
        // line just before it crashes the guest kernel is not lost in the
        // pipe), and the script's stdio still fills the pipe in blocks.
        let realtime = Realtime::enter();
        // The output as it comes until the status does, then what is left.
        while forward.open && !readable(&[output.as_fd(), report.as_fd()], None)?[1] {
            forward.pass_on(&mut output);
        }
        let mut status = String::new();
        BufReader::new(&report).read_line(&mut status).context("read the script's status")?;
        let script = execed.elapsed();
        drop(realtime);
        let grace = Instant::now() + OUTPUT_GRACE;
        while forward.open {
            let Some(left) = grace.checked_duration_since(Instant::now()) else { break };
            if !readable(&[output.as_fd()], Some(left))?[0] {
                break;
            }
            forward.pass_on(&mut output);
        }
        forward.end_line();
        let status = status.trim().parse().with_context(|| format!("the sandbox reported {status:?}"))?;
        Ok(Run { status, setup: execed - start, script })
    }
}

/// The script's output on its way to the console.
#[derive(Debug)]
struct Forward {
    /// Until the pipe's end of file (or a read error).
    open: bool,
    /// When output was last passed on.
    last: Option<Instant>,
    /// The last byte passed on was not a newline: the agent's next line
    /// must not run on from it.
    mid_line: bool,
}

impl Default for Forward {
    fn default() -> Self {
        Self { open: true, last: None, mid_line: false }
    }
}

impl Forward {
    /// Read what the pipe holds and write it to the agent's stdout, the
    /// console: at once after a quiet spell, else once [`GATHER`] has
    /// passed since the last write.
    fn pass_on(&mut self, pipe: &mut std::fs::File) {
        if let Some(last) = self.last {
            std::thread::sleep(GATHER.saturating_sub(last.elapsed()));
        }
        let mut buf = [0u8; 64 << 10];
        match pipe.read(&mut buf) {
            Ok(0) | Err(_) => self.open = false,
            Ok(n) => {
                // A console that cannot be written to has nowhere to say so.
                let _ = std::io::stdout().lock().write_all(&buf[..n]);
                self.last = Some(Instant::now());
                self.mid_line = buf[n - 1] != b'\n';
            }
        }
    }

    fn end_line(&mut self) {
        if self.mid_line {
            println!();
            self.mid_line = false;
        }
    }
}

/// SCHED_FIFO for the agent until dropped (nothing if it cannot have it).
struct Realtime(bool);

impl Realtime {
    fn enter() -> Self {
        let param = libc::sched_param { sched_priority: 1 };
        // SAFETY: sched_setscheduler on this process with a param that
        // lives across the call.
        Self(unsafe { libc::sched_setscheduler(0, libc::SCHED_FIFO, &param) } == 0)
    }
}

impl Drop for Realtime {
    fn drop(&mut self) {
        if self.0 {
            let param = libc::sched_param { sched_priority: 0 };
            // SAFETY: as in `enter`.
            unsafe { libc::sched_setscheduler(0, libc::SCHED_OTHER, &param) };
        }
    }
}

/// Wait until one of `fds` is readable (or at its end, or in error), up to
/// `timeout` (None: no limit); which ones are.
fn readable(fds: &[std::os::fd::BorrowedFd<'_>], timeout: Option<Duration>) -> anyhow::Result<Vec<bool>> {
    let mut polls: Vec<libc::pollfd> =
        fds.iter().map(|fd| libc::pollfd { fd: fd.as_raw_fd(), events: libc::POLLIN, revents: 0 }).collect();
    let ms = timeout.map_or(-1, |t| i32::try_from(t.as_millis()).unwrap_or(i32::MAX));
    loop {
        // SAFETY: poll(2) on an array of pollfd that lives across the call,
        // its length given; the descriptors are borrowed, so open.
        let n = unsafe { libc::poll(polls.as_mut_ptr(), polls.len() as libc::nfds_t, ms) };
        if n >= 0 {
            return Ok(polls.iter().map(|p| p.revents != 0).collect());
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(e).context("poll the script's output");
        }
    }
}

/// Wait for the end of the guest.
fn park() -> ! {
    loop {
        // SAFETY: pause(2) only waits for a signal.
        unsafe { libc::pause() };
    }
}

/// The keeper: make the namespaces, fork their init, report its status.
fn keeper(job_init: UnixStream, output: OwnedFd, report: &UnixStream) -> anyhow::Result<std::convert::Infallible> {
    // nixpkgs' `unshare -imnpuf` but the mount namespace, which the init
    // makes per job (a copy of the agent's mounts as they are then).
    unshare(CloneFlags::CLONE_NEWIPC | CloneFlags::CLONE_NEWUTS | CloneFlags::CLONE_NEWPID | CloneFlags::CLONE_NEWNET)
        .context("unshare")?;
    loopback_up().context("bring up lo")?;
    nix::unistd::sethostname("localhost").context("sethostname")?;
    // SAFETY: single-threaded child; the grandchild execs or exits.
    match unsafe { fork() }.context("fork into the pid namespace")? {
        ForkResult::Child => {
            let err = init(job_init, &output).unwrap_or_else(|e| e);
            eprintln!("rootlayer-agent: running the script: {err:#}");
            std::process::exit(127);
        }
        ForkResult::Parent { child } => {
            // The pipe's end of file comes when the script and what it
            // started are gone.
            drop((job_init, output));
            let status = crate::run_as_root::wait_status(child)?;
            writeln!(&*report, "{status}").context("report the status")?;
            park()
        }
    }
}

/// The pid namespace's init: wait for the job, then become its script.
/// Returns only the error that stopped it.
fn init(socket: UnixStream, output: &OwnedFd) -> anyhow::Result<anyhow::Error> {
    (&socket).write_all(b"r").context("say the sandbox is made")?;
    let mut line = String::new();
    let mut reader = BufReader::new(&socket);
    reader.read_line(&mut line).context("read the job")?;
    if line.is_empty() {
        bail!("no job");
    }
    let (merged, job): (std::path::PathBuf, RunAsRoot) = serde_json::from_str(&line).context("parse the job")?;
    // Opened in the agent's view, before the chroot.
    let (script, shebang) = crate::run_as_root::open_script(&job.script)?;
    let env = crate::run_as_root::script_env(&job.path);
    unshare(CloneFlags::CLONE_NEWNS).context("unshare the mount namespace")?;
    mount(None::<&str>, "/", None::<&str>, MsFlags::MS_REC | MsFlags::MS_PRIVATE, None::<&str>)
        .context("make mounts private")?;
    let bind = MsFlags::MS_BIND | MsFlags::MS_REC;
    mount(Some("/dev"), &merged.join("dev"), None::<&str>, bind, None::<&str>).context("bind /dev")?;
    mount(Some("/sys"), &merged.join("sys"), None::<&str>, bind, None::<&str>).context("bind /sys")?;
    for store in &job.store_paths {
        let target = merged.join(store.trim_start_matches('/'));
        mount(Some(store.as_str()), &target, None::<&str>, bind, None::<&str>)
            .with_context(|| format!("bind {store}"))?;
        mount(None::<&str>, &target, None::<&str>, bind | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY, None::<&str>)
            .with_context(|| format!("make {store} read-only"))?;
    }
    let proc_flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    mount(Some("proc"), &merged.join("proc"), Some("proc"), proc_flags, None::<&str>).context("mount /proc")?;
    chroot(&merged).context("chroot")?;
    chdir("/").context("chdir /")?;
    // Its stdout and stderr: the pipe (close-on-exec itself, the copies not).
    for fd in [1, 2] {
        // SAFETY: dup2 onto a standard descriptor from one this process owns.
        if unsafe { libc::dup2(output.as_raw_fd(), fd) } == -1 {
            return Err(std::io::Error::last_os_error()).context("dup2 the output pipe");
        }
    }
    // The script's time starts here (its interpreter's lookup and load
    // are its own); the job socket is close-on-exec.
    (&socket).write_all(b"x").context("say the exec")?;
    Ok(crate::run_as_root::exec_script(script.as_raw_fd(), shebang, &env))
}

/// Set IFF_UP on `lo` of this network namespace (what `ip link set lo up`
/// does), through any socket: the guest has AF_UNIX.
fn loopback_up() -> anyhow::Result<()> {
    let sock = std::os::unix::net::UnixDatagram::unbound().context("socket")?;
    // SAFETY: ifreq is plain old data; zeroed is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in req.ifr_name.iter_mut().zip(b"lo\0") {
        *d = *s as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS/SIOCSIFFLAGS read and write `req`, which lives
    // across both calls; the descriptor is a live socket.
    unsafe {
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) == -1 {
            return Err(std::io::Error::last_os_error()).context("SIOCGIFFLAGS");
        }
        req.ifr_ifru.ifru_flags |= libc::c_short::try_from(libc::IFF_UP).expect("IFF_UP is bit 0");
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) == -1 {
            return Err(std::io::Error::last_os_error()).context("SIOCSIFFLAGS");
        }
    }
    Ok(())
}
