//! dockerTools' runAsRoot in the guest (nixpkgs `runWithOverlay` +
//! `mkRootLayer`, with their whiteout bugs fixed by the layer engine):
//! the base image and the contents are the host's read-only EROFS disks,
//! mounted as the lower dirs, contents on top (no base or contents file
//! passes through this kernel), mount the overlay, run the script as root
//! in a chroot in new namespaces, remove the mount points we created, run
//! the extra commands in the upper dir, and unmount the scratch disk, whose
//! upper dir the host reads.

use anyhow::{bail, Context};
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{unshare, CloneFlags};
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::{chdir, chroot, fork, ForkResult};
use rootlayer_protocol::{JobResult, RunAsRoot, SCRATCH_MOUNT};
use std::ffi::CString;
use std::io::Read;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// What the script gets mounted (mount points made where the image lacks
/// them, removed again): the guest's /dev (with /dev/shm and /dev/pts), a
/// fresh /proc, and /sys, as vmTools mounts them. /run stays the image's
/// own directory, as in the seed's recipe and `docker build`: what a script
/// or a package's postinst leaves there is part of the layer.
const SCRIPT_MOUNTS: [&str; 3] = ["/dev", "/proc", "/sys"];

/// Time a phase into the result.
fn phase<T>(result: &mut JobResult, name: &str, f: impl FnOnce() -> anyhow::Result<T>) -> anyhow::Result<T> {
    let t = Instant::now();
    let r = f();
    result.phases.push((name.into(), t.elapsed().as_secs_f64()));
    r
}

fn lowerdir_option(lowers: &[PathBuf]) -> String {
    lowers.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(":")
}

pub fn run(job: &RunAsRoot, result: &mut JobResult) -> anyhow::Result<()> {
    let scratch = Path::new(SCRATCH_MOUNT);
    // Topmost first, as overlayfs' lowerdir= lists them.
    let lowers: Vec<PathBuf> = job.contents.iter().chain([&job.base]).map(PathBuf::from).collect();
    let upper = scratch.join("upper");
    let work = scratch.join("work");
    let merged = scratch.join("merged");
    let mut mount_points = Vec::new();
    phase(result, "overlay", || {
        for d in [&upper, &work, &merged] {
            std::fs::create_dir_all(d).with_context(|| format!("mkdir {}", d.display()))?;
        }
        let opts = format!(
            "lowerdir={},upperdir={},workdir={},redirect_dir=off,index=off,metacopy=off,xino=off",
            lowerdir_option(&lowers),
            upper.display(),
            work.display()
        );
        mount(Some("overlay"), &merged, Some("overlay"), MsFlags::empty(), Some(opts.as_str()))
            .context("mount overlay")?;
        for p in SCRIPT_MOUNTS.iter().map(|s| s.to_string()).chain(job.store_paths.iter().cloned()) {
            create_missing(&merged, &p, &mut mount_points)?;
        }
        Ok(())
    })?;

    let mut kernel_log = crate::kernel_log::Cursor::now();
    let status = phase(result, "script", || run_script(&merged, job));
    result.oom_kills = kernel_log.oom_kills();
    let status = status?;
    result.script_status = Some(status);
    println!("rootlayer-agent: script exited with status {status}");

    // Mount points we created go again, deepest first; a directory the
    // script filled (not possible under a mount, but a parent of a store
    // path could be) stays.
    phase(result, "cleanup", || {
        for p in mount_points.iter().rev() {
            let _ = std::fs::remove_dir(p);
        }
        if let Some(listing) = &job.merged_listing {
            write_listing(&merged, Path::new(listing)).context("write merged listing")?;
        }
        umount2(&merged, MntFlags::empty()).context("unmount overlay")?;
        // Creating a mount point under a directory of the image copied that
        // directory (and its ancestors) up; where nothing else changed it,
        // drop the copy so it does not show up in the layer.
        for p in SCRIPT_MOUNTS.iter().copied().chain(job.store_paths.iter().map(String::as_str)) {
            drop_unchanged_copy_ups(&upper, &lowers, p);
        }
        Ok(())
    })?;
    result.disk_full = disk_full(scratch);
    if status != 0 {
        return Ok(());
    }

    if let Some(extra) = &job.extra_commands {
        let mut kernel_log = crate::kernel_log::Cursor::now();
        // The seed runs them in its layer dir, which holds the contents:
        // here that is the upper dir over the contents disk alone.
        let code = phase(result, "extra_commands", || match &job.contents {
            None => run_extra(extra, &upper, &job.path),
            Some(contents) => {
                let opts = format!(
                    "lowerdir={contents},upperdir={},workdir={},redirect_dir=off,index=off,metacopy=off,xino=off",
                    upper.display(),
                    work.display()
                );
                mount(Some("overlay"), &merged, Some("overlay"), MsFlags::empty(), Some(opts.as_str()))
                    .context("mount the layer dir for the extra commands")?;
                let code = run_extra(extra, &merged, &job.path);
                umount2(&merged, MntFlags::empty()).context("unmount the layer dir")?;
                code
            }
        });
        result.oom_kills += kernel_log.oom_kills();
        let code = code?;
        if code != 0 {
            result.script_status = Some(code);
            println!("rootlayer-agent: extra commands exited with status {code}");
            return Ok(());
        }
    }

    // The host reads the upper dir straight off the scratch disk: unmount
    // it cleanly (ext4 then marks it clean, which the host requires).
    result.disk_full |= disk_full(scratch);
    phase(result, "unmount", || umount2(scratch, MntFlags::empty()).context("unmount the scratch disk"))?;
    Ok(())
}

/// Whether the scratch disk is (as good as) full: out of inodes, or less
/// than 1 MiB left. ext4 answers ENOSPC with a few blocks still available
/// (kept for extent metadata), so "no block left" is never seen.
fn disk_full(scratch: &Path) -> bool {
    nix::sys::statvfs::statvfs(scratch)
        .map(|s| {
            let left = s.blocks_available().saturating_mul(s.fragment_size());
            left < (1 << 20) || s.files_available() == 0
        })
        .unwrap_or(false)
}

/// For each ancestor of `path` (deepest first), remove its copy in `upper`
/// when that copy is an empty directory with the owner, mode and xattrs
/// (other than overlayfs' own) of the topmost lower directory it shadows.
fn drop_unchanged_copy_ups(upper: &Path, lowers: &[PathBuf], path: &str) {
    let mut ancestors: Vec<&Path> = Path::new(path).ancestors().skip(1).collect();
    ancestors.pop(); // "/" itself
    for anc in ancestors {
        let rel = anc.strip_prefix("/").unwrap_or(anc);
        let up = upper.join(rel);
        let Ok(um) = std::fs::symlink_metadata(&up) else { continue };
        let empty = std::fs::read_dir(&up).map(|mut d| d.next().is_none()).unwrap_or(false);
        let lower = lowers.iter().map(|l| l.join(rel)).find(|l| std::fs::symlink_metadata(l).is_ok());
        let Some(lm) = lower.as_ref().and_then(|l| std::fs::symlink_metadata(l).ok()) else { return };
        let same = um.is_dir()
            && lm.is_dir()
            && empty
            && um.mode() == lm.mode()
            && um.uid() == lm.uid()
            && um.gid() == lm.gid()
            && user_xattrs(&up) == user_xattrs(lower.as_deref().expect("found"));
        if !same || std::fs::remove_dir(&up).is_err() {
            return;
        }
    }
}

/// Xattrs of `p` except overlayfs' bookkeeping, sorted.
fn user_xattrs(p: &Path) -> Vec<(Vec<u8>, Vec<u8>)> {
    let all = crate::xattr::xattrs(p).unwrap_or_default();
    all.into_iter().filter(|(n, _)| !n.starts_with(b"trusted.overlay.") && !n.starts_with(b"user.overlay.")).collect()
}

/// Create `path` (absolute) under `root` where missing, recording every
/// directory created, outermost first.
fn create_missing(root: &Path, path: &str, created: &mut Vec<PathBuf>) -> anyhow::Result<()> {
    let mut cur = root.to_path_buf();
    for comp in Path::new(path).components().skip(1) {
        cur.push(comp);
        match std::fs::symlink_metadata(&cur) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => bail!("{path} exists in the image and is not a directory: cannot mount there"),
            Err(_) => {
                std::fs::create_dir(&cur).with_context(|| format!("mkdir {}", cur.display()))?;
                created.push(cur.clone());
            }
        }
    }
    Ok(())
}

/// The environment of the script and the extra commands.
fn script_env(path: &str) -> Vec<CString> {
    let env = [format!("PATH={path}"), "HOME=/root".into(), "TERM=dumb".into()];
    env.into_iter().map(|s| CString::new(s).expect("no NUL")).collect()
}

/// Open `file` for the child to execute through /proc/self/fd (so the script
/// never has to be copied into the image), and say whether it has a #! line.
fn open_script(file: &str) -> anyhow::Result<(std::fs::File, bool)> {
    let mut f = std::fs::File::open(file).with_context(|| format!("open {file}"))?;
    let mut head = [0u8; 2];
    let shebang = f.read(&mut head).map(|n| n == 2 && head == *b"#!").unwrap_or(false);
    // SAFETY: clears FD_CLOEXEC on a descriptor we own.
    if unsafe { libc::fcntl(f.as_raw_fd(), libc::F_SETFD, 0) } == -1 {
        return Err(std::io::Error::last_os_error()).context("keep the script open across exec");
    }
    Ok((f, shebang))
}

/// Exec the script held open as `fd`: through its #! line, or with /bin/sh.
fn exec_script(fd: i32, shebang: bool, env: &[CString]) -> anyhow::Error {
    // Rust's runtime starts the agent with SIGPIPE ignored, and an ignored
    // signal stays ignored across exec: give the script the default a shell
    // expects (`yes | head` ends by SIGPIPE).
    // SAFETY: signal(2) with SIG_DFL, in a single-threaded child about to exec.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    let path = CString::new(format!("/proc/self/fd/{fd}")).expect("no NUL");
    let err = if shebang {
        nix::unistd::execve(&path, std::slice::from_ref(&path), env).unwrap_err()
    } else {
        let sh = CString::new("/bin/sh").expect("no NUL");
        nix::unistd::execve(&sh, &[sh.clone(), path], env).unwrap_err()
    };
    anyhow::anyhow!("exec the script: {err}")
}

fn wait_status(pid: nix::unistd::Pid) -> anyhow::Result<i32> {
    loop {
        match waitpid(pid, None) {
            Ok(WaitStatus::Exited(_, code)) => return Ok(code),
            Ok(WaitStatus::Signaled(_, sig, _)) => return Ok(128 + sig as i32),
            Ok(_) => continue,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => bail!("waitpid: {e}"),
        }
    }
}

/// Run the script as root in a chroot of `merged`, in new ipc, mount, pid
/// and uts namespaces (the guest has no network to isolate); /dev and /sys
/// bound from the guest, a fresh /proc, the stores bound read-only. Its
/// output goes to the console, which the host streams live.
fn run_script(merged: &Path, job: &RunAsRoot) -> anyhow::Result<i32> {
    let (script, shebang) = open_script(&job.script)?;
    let env = script_env(&job.path);
    // SAFETY: the agent is single-threaded; the child only makes system
    // calls and execs or exits.
    match unsafe { fork() }.context("fork")? {
        ForkResult::Child => {
            let code = match sandbox(merged, job, script.as_raw_fd(), shebang, &env) {
                Ok(code) => code,
                Err(e) => {
                    eprintln!("rootlayer-agent: running the script: {e:#}");
                    127
                }
            };
            std::process::exit(code);
        }
        ForkResult::Parent { child } => wait_status(child),
    }
}

/// Set IFF_UP on `lo` of this network namespace (what `ip link set lo up`
/// does), through any socket: the guest has AF_UNIX.
fn loopback_up() -> anyhow::Result<()> {
    use std::os::fd::AsRawFd;
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

fn sandbox(merged: &Path, job: &RunAsRoot, fd: i32, shebang: bool, env: &[CString]) -> anyhow::Result<i32> {
    // nixpkgs' `unshare -imnpuf`: ipc, mount, network (loopback only), pid
    // and uts namespaces.
    unshare(
        CloneFlags::CLONE_NEWNS
            | CloneFlags::CLONE_NEWIPC
            | CloneFlags::CLONE_NEWUTS
            | CloneFlags::CLONE_NEWPID
            | CloneFlags::CLONE_NEWNET,
    )
    .context("unshare")?;
    loopback_up().context("bring up lo")?;
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
    nix::unistd::sethostname("localhost").context("sethostname")?;
    // SAFETY: single-threaded child; the grandchild execs or exits.
    match unsafe { fork() }.context("fork into the pid namespace")? {
        ForkResult::Child => {
            let err = (|| -> anyhow::Result<anyhow::Error> {
                let proc_flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
                mount(Some("proc"), &merged.join("proc"), Some("proc"), proc_flags, None::<&str>)
                    .context("mount /proc")?;
                chroot(merged).context("chroot")?;
                chdir("/").context("chdir /")?;
                Ok(exec_script(fd, shebang, env))
            })()
            .unwrap_or_else(|e| e);
            eprintln!("rootlayer-agent: {err:#}");
            std::process::exit(127);
        }
        ForkResult::Parent { child } => wait_status(child),
    }
}

/// Run the extra commands in `upper`, not chrooted (mkRootLayer's
/// extraCommands); they need a #! line naming an interpreter in a store.
/// Like the script they run as PID 1 of a pid namespace of their own, so
/// that whatever they leave running in the background is killed when they
/// end, before the upper dir is read.
fn run_extra(file: &str, upper: &Path, path: &str) -> anyhow::Result<i32> {
    let (f, shebang) = open_script(file)?;
    if !shebang {
        bail!(
            "the extra commands need a #! line naming an interpreter in a --store (the guest has no shell of its own)"
        );
    }
    let env = script_env(path);
    // SAFETY: single-threaded agent; the child only makes system calls and
    // forks, execs or exits.
    match unsafe { fork() }.context("fork")? {
        ForkResult::Child => {
            let code = (|| -> anyhow::Result<i32> {
                unshare(CloneFlags::CLONE_NEWPID).context("unshare pid namespace")?;
                // SAFETY: single-threaded child; the grandchild execs or exits.
                match unsafe { fork() }.context("fork into the pid namespace")? {
                    ForkResult::Child => {
                        let err = match chdir(upper) {
                            Ok(()) => exec_script(f.as_raw_fd(), true, &env),
                            Err(e) => anyhow::anyhow!("chdir {}: {e}", upper.display()),
                        };
                        eprintln!("rootlayer-agent: extra commands: {err:#}");
                        std::process::exit(127);
                    }
                    ForkResult::Parent { child } => wait_status(child),
                }
            })()
            .unwrap_or_else(|e| {
                eprintln!("rootlayer-agent: extra commands: {e:#}");
                127
            });
            std::process::exit(code);
        }
        ForkResult::Parent { child } => wait_status(child),
    }
}

/// One line per entry of the tree under `root`, sorted: path, type, mode,
/// uid, gid, size, link target, FNV-1a of the contents. Tests compare it
/// with the same listing of an independent unpack of the produced layer.
fn write_listing(root: &Path, out: &Path) -> anyhow::Result<()> {
    let mut lines = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir)? {
            let p = e?.path();
            let m = std::fs::symlink_metadata(&p)?;
            let rel = p.strip_prefix(root).expect("under root");
            let ft = m.file_type();
            let (kind, link, hash) = if ft.is_dir() {
                stack.push(p.clone());
                ("d", String::new(), 0)
            } else if ft.is_symlink() {
                ("l", std::fs::read_link(&p)?.display().to_string(), 0)
            } else if ft.is_file() {
                ("f", String::new(), fnv1a_file(&p)?)
            } else {
                ("o", format!("{:x}", m.rdev()), 0)
            };
            let size = if ft.is_file() { m.len() } else { 0 };
            lines.push(format!(
                "{}\t{kind}\t{:o}\t{}\t{}\t{size}\t{link}\t{hash:016x}",
                String::from_utf8_lossy(rel.as_os_str().as_bytes()),
                m.mode() & 0o7777,
                m.uid(),
                m.gid()
            ));
        }
    }
    lines.sort();
    std::fs::write(out, lines.join("\n") + "\n")?;
    Ok(())
}

fn fnv1a_file(p: &Path) -> anyhow::Result<u64> {
    let mut f = std::fs::File::open(p)?;
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            return Ok(h);
        }
        for b in &buf[..n] {
            h = (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3);
        }
    }
}
