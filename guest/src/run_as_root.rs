//! dockerTools' runAsRoot in the guest (nixpkgs `runWithOverlay` +
//! `mkRootLayer`, with their whiteout bugs fixed by the layer engine):
//! the base image and the contents are the host's read-only EROFS disks,
//! mounted as the lower dirs, contents on top (no base or contents file
//! passes through this kernel), over an empty layer of mount points; mount
//! the overlay, run the script as root in a chroot in new namespaces, run
//! the extra commands in the upper dir, and remount the scratch disk, whose
//! upper dir the host reads, read-only.

use anyhow::{bail, Context};
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{unshare, CloneFlags};
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::{chdir, fork, ForkResult};
use rootlayer_protocol::{JobResult, RunAsRoot, SCRATCH_MOUNT, SCRATCH_UPPER, SCRATCH_WORK, SCRIPT_MOUNTS};
use std::ffi::CString;
use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd};
use std::path::{Path, PathBuf};
use std::time::Instant;

// What the script gets mounted (`SCRIPT_MOUNTS`): the guest's /dev (with
// /dev/shm and /dev/pts), a fresh /proc, and /sys, as vmTools mounts them.
// /run stays the image's own directory, as in the seed's recipe and `docker
// build`: what a script or a package's postinst leaves there is part of the
// layer.

/// The mount points of `SCRIPT_MOUNTS` and the stores, as empty directories
/// on the guest's root file system: the overlay's bottom lower dir. Where
/// the image has a directory it shadows them (its owner and mode are what
/// the script sees and what a copy-up takes); where it has none, they show
/// through. Nothing is created in the overlay, so nothing is copied up or
/// has to be removed again.
const POINTS: &str = "/run/rootlayer/points";

/// Where the overlay is mounted (on the guest's root, not the scratch disk:
/// one directory less to make there).
const MERGED: &str = "/run/rootlayer/merged";

/// The mount points every job has (`SCRIPT_MOUNTS`) and the overlay's,
/// made once before the snapshot point; a job adds its stores'.
pub fn make_fixed_points() -> anyhow::Result<()> {
    let points = Path::new(POINTS);
    for d in SCRIPT_MOUNTS.iter().map(|p| points.join(p.trim_start_matches('/'))).chain([PathBuf::from(MERGED)]) {
        std::fs::create_dir_all(&d).with_context(|| format!("mkdir {}", d.display()))?;
    }
    Ok(())
}

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

pub fn run(job: &RunAsRoot, sandbox: crate::sandbox::Sandbox, result: &mut JobResult) -> anyhow::Result<()> {
    let scratch = Path::new(SCRATCH_MOUNT);
    let mount_paths: Vec<&str> =
        SCRIPT_MOUNTS.iter().copied().chain(job.store_paths.iter().map(String::as_str)).collect();
    // The image's layers, topmost first as overlayfs' lowerdir= lists them,
    // then the mount points (see `POINTS`).
    let image: Vec<PathBuf> = job.contents.iter().chain([&job.base]).map(PathBuf::from).collect();
    let points = Path::new(POINTS);
    let lowers: Vec<PathBuf> = image.iter().cloned().chain([points.to_path_buf()]).collect();
    // The host's formatter made both, empty (making them here cost the
    // emulated guest kernel about 10 ms).
    let upper = scratch.join(SCRATCH_UPPER);
    let work = scratch.join(SCRATCH_WORK);
    let merged = Path::new(MERGED);
    phase(result, "overlay", || {
        for p in &job.store_paths {
            let d = points.join(p.trim_start_matches('/'));
            std::fs::create_dir_all(&d).with_context(|| format!("mkdir {}", d.display()))?;
        }
        mount_overlay(&lowers, &upper, &work, merged).context("mount overlay")?;
        check_mount_points(merged, &mount_paths)
    })?;

    // The sandbox's per-job setup (its mounts, the chroot) and the script
    // from its exec to its end, each a phase.
    let mut kernel_log = crate::kernel_log::Cursor::now();
    let run = sandbox.run(merged, job);
    result.oom_kills = kernel_log.oom_kills();
    let run = run?;
    result.phases.push(("sandbox".into(), run.setup.as_secs_f64()));
    result.phases.push(("script".into(), run.script.as_secs_f64()));
    let status = run.status;
    result.script_status = Some(status);
    println!("rootlayer-agent: script exited with status {status}");

    // The overlay stays mounted unless the upper dir is wanted on its own
    // (a listing of the result, the extra commands): unmounting it costs a
    // sync and the eviction of every inode it holds, and the scratch disk's
    // remount below writes everything out just the same.
    if job.merged_listing.is_some() || (status == 0 && job.extra_commands.is_some()) {
        phase(result, "cleanup", || {
            unmount_overlay(merged, &work).context("unmount overlay")?;
            if let Some(listing) = &job.merged_listing {
                // What the layer means: the image and the script's changes,
                // without the mount points.
                mount_overlay(&image, &upper, &work, merged).context("mount the overlay for the listing")?;
                write_listing(merged, Path::new(listing)).context("write merged listing")?;
                unmount_overlay(merged, &work).context("unmount overlay")?;
            }
            Ok(())
        })?;
    }
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
                mount_overlay(&[PathBuf::from(contents)], &upper, &work, merged)
                    .context("mount the layer dir for the extra commands")?;
                let code = run_extra(extra, merged, &job.path);
                unmount_overlay(merged, &work).context("unmount the layer dir")?;
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

    // The host reads the upper dir straight off the scratch disk: remount it
    // read-only, which writes out every dirty page and inode and marks the
    // file system clean (which the host requires), without the unmount's
    // eviction of every cached inode and page.
    if job.extra_commands.is_some() {
        result.disk_full |= disk_full(scratch);
    }
    phase(result, "writeback", || {
        mount(None::<&str>, scratch, None::<&str>, MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY, None::<&str>)
            .context("remount the scratch disk read-only")
    })?;
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

/// Mount the overlay of `lowers` (topmost first) and `upper` at `merged`.
///
/// `volatile`: fsync and syncfs in the overlay do nothing (a global sync
/// still writes the scratch disk out). The scratch disk's remount at the
/// end writes out every page, once; a script's own fsyncs (and overlayfs'
/// own after each copy-up) wrote pages out as it went, waiting for each,
/// and over and over for a file rewritten (shadow's useradd fsyncs passwd,
/// group, shadow and gshadow at every call), each page in the emulated
/// kernel of a software KVM. No file outlives the VM, so there is no crash
/// to be consistent for. Measured on Debian (same layers): 20 `useradd -m`,
/// script 58.5 -> 54.5 s; groupadd + useradd (dockerTools' example), total
/// 6.78 -> 6.63 s; `dpkg -i` of two packages (each file written once
/// either way) the same. It costs the mount about 25 ms (the mark below).
fn mount_overlay(lowers: &[PathBuf], upper: &Path, work: &Path, merged: &Path) -> nix::Result<()> {
    let opts = format!(
        "lowerdir={},upperdir={},workdir={},redirect_dir=off,index=off,metacopy=off,xino=off,volatile",
        lowerdir_option(lowers),
        upper.display(),
        work.display()
    );
    mount(Some("overlay"), merged, Some("overlay"), MsFlags::empty(), Some(opts.as_str()))
}

/// Unmount the overlay at `merged`, and take off the mark a `volatile`
/// mount leaves in its work dir (`work/incompat/volatile`), without which
/// overlayfs refuses to mount that work dir again (for the listing, or the
/// extra commands): the upper dir is whole, the overlay went away cleanly.
fn unmount_overlay(merged: &Path, work: &Path) -> anyhow::Result<()> {
    umount2(merged, MntFlags::empty())?;
    let mark = work.join("work/incompat");
    std::fs::remove_dir_all(&mark).with_context(|| format!("remove {}", mark.display()))
}

/// Every component of each of `paths` (absolute) under `root` is a
/// directory: the host checked the image already
/// (`runas::mount_point_blocked`); this guards the mounts themselves, in
/// one system call per path (a file or a symlink of the image there would
/// take the mount elsewhere).
fn check_mount_points(root: &Path, paths: &[&str]) -> anyhow::Result<()> {
    let root_dir = std::fs::File::open(root).with_context(|| format!("open {}", root.display()))?;
    // `struct open_how` of openat2(2).
    #[repr(C)]
    struct OpenHow {
        flags: u64,
        mode: u64,
        resolve: u64,
    }
    let how = OpenHow {
        flags: (libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC) as u64,
        mode: 0,
        resolve: libc::RESOLVE_BENEATH | libc::RESOLVE_NO_SYMLINKS,
    };
    for path in paths {
        let rel = CString::new(path.trim_start_matches('/')).context("a mount point with a NUL byte")?;
        // SAFETY: openat2(2) with a live directory descriptor, a
        // NUL-terminated path and an `open_how` of the size passed; it only
        // returns a new descriptor, which is closed right away.
        let fd = unsafe {
            libc::syscall(libc::SYS_openat2, root_dir.as_raw_fd(), rel.as_ptr(), &how, std::mem::size_of::<OpenHow>())
        };
        if fd < 0 {
            let err = std::io::Error::last_os_error();
            bail!("{path} is not a directory in the image ({err}): cannot mount there");
        }
        let fd = i32::try_from(fd).context("openat2 returned no descriptor")?;
        // SAFETY: `fd` was just returned to us and is not used elsewhere.
        drop(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) });
    }
    Ok(())
}

/// The environment of the script and the extra commands.
pub(crate) fn script_env(path: &str) -> Vec<CString> {
    let env = [format!("PATH={path}"), "HOME=/root".into(), "TERM=dumb".into()];
    env.into_iter().map(|s| CString::new(s).expect("no NUL")).collect()
}

/// Open `file` for the child to execute through /proc/self/fd (so the script
/// never has to be copied into the image), and say whether it has a #! line.
pub(crate) fn open_script(file: &str) -> anyhow::Result<(std::fs::File, bool)> {
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
pub(crate) fn exec_script(fd: i32, shebang: bool, env: &[CString]) -> anyhow::Error {
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

pub(crate) fn wait_status(pid: nix::unistd::Pid) -> anyhow::Result<i32> {
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

/// The merged tree's listing (`--merged-listing`, the e2e tests' witness of
/// what the guest saw): the test initramfs's agent only.
#[cfg(feature = "test-tasks")]
use crate::test_tasks::listing::write as write_listing;

#[cfg(not(feature = "test-tasks"))]
fn write_listing(_: &Path, _: &Path) -> anyhow::Result<()> {
    anyhow::bail!(crate::NO_TEST_TASKS)
}
