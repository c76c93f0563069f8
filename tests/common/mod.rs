//! Shared by the e2e tests: find the built kernel and initramfs, decide
//! whether a VM test can run here, and run the rootlayer binary.

#![allow(dead_code)]

pub mod avx;
pub mod image;
pub mod nix;
pub mod runas;
pub mod seed;
pub mod snapshot;

use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

/// Kernel and initramfs to boot, or the reason the VM tests cannot run.
#[derive(Debug)]
pub struct Guest {
    pub kernel: PathBuf,
    /// The SMP kernel beside it (`vmlinux-smp`), for `--cpus 2` and more.
    pub kernel_smp: PathBuf,
    pub initrd: PathBuf,
}

fn cache_dir() -> PathBuf {
    std::env::var_os("ROOTLAYER_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/rootlayer"))
}

/// The guest to boot. Returns None (after printing why) when this machine
/// cannot run VM tests: no /dev/kvm, or no built kernel outside CI. With
/// ROOTLAYER_REQUIRE_VM set (scripts/test, CI), a missing kernel or
/// initramfs is a failure, not a skip.
pub fn guest(test: &str) -> Option<Guest> {
    guest_with(test, "ROOTLAYER_INITRD", "initramfs/current.cpio")
}

/// The guest with the test initramfs (`scripts/build-initramfs --test`):
/// for the tests that need its self-tests, device check, I/O benchmark or
/// merged listing, which the product's agent refuses.
pub fn test_guest(test: &str) -> Option<Guest> {
    guest_with(test, "ROOTLAYER_TEST_INITRD", "initramfs/test.cpio")
}

fn guest_with(test: &str, initrd_env: &str, initrd_cached: &str) -> Option<Guest> {
    // Read first: where VM tests are required, nothing may turn into a skip.
    let required = std::env::var_os("ROOTLAYER_REQUIRE_VM").is_some();
    if !std::path::Path::new("/dev/kvm").exists() {
        if required {
            panic!("{test}: /dev/kvm does not exist, and ROOTLAYER_REQUIRE_VM is set");
        }
        eprintln!("SKIP {test}: /dev/kvm does not exist on this machine");
        return None;
    }
    let kernel = std::env::var_os("ROOTLAYER_KERNEL")
        .map(PathBuf::from)
        .unwrap_or_else(|| cache_dir().join("kernel/current/vmlinux"));
    let initrd = std::env::var_os(initrd_env).map(PathBuf::from).unwrap_or_else(|| cache_dir().join(initrd_cached));
    let kernel_smp = kernel.with_file_name("vmlinux-smp");
    for p in [&kernel, &kernel_smp, &initrd] {
        if !p.exists() {
            let msg = format!("{} not found (run scripts/build-kernel and scripts/build-initramfs)", p.display());
            if required {
                panic!("{test}: {msg}");
            }
            eprintln!("SKIP {test}: {msg}");
            return None;
        }
    }
    Some(Guest { kernel, kernel_smp, initrd })
}

/// The rootlayer binary, as the test user when there is one (see
/// [`test_user`]).
pub fn rootlayer() -> Command {
    match test_user() {
        Some(user) => user.command(&user.stage(Path::new(env!("CARGO_BIN_EXE_rootlayer")))),
        None => Command::new(env!("CARGO_BIN_EXE_rootlayer")),
    }
}

/// The unprivileged user the e2e tests run rootlayer as: `scripts/test`, run
/// as root, creates it, grants it /dev/kvm (an ACL entry, nothing else) and
/// names it in ROOTLAYER_TEST_USER, with ROOTLAYER_TEST_HOME a directory it
/// can read (the kernel and initramfs are copied there). The tests stay root
/// where they check results with tools that need root (umoci unpack, tar
/// --same-owner), but every rootlayer process is the user's.
#[derive(Debug, Clone)]
pub struct TestUser {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    /// Readable and traversable by the user.
    pub home: PathBuf,
}

/// The test user, when ROOTLAYER_TEST_USER names one and this process is
/// root (a process that is not root already runs rootlayer unprivileged).
pub fn test_user() -> Option<TestUser> {
    static USER: OnceLock<Option<TestUser>> = OnceLock::new();
    USER.get_or_init(|| {
        let name = std::env::var("ROOTLAYER_TEST_USER").ok().filter(|n| !n.is_empty())?;
        if !image::is_root() {
            return None;
        }
        let id = |flag: &str| -> u32 {
            let out = Command::new("id").arg(flag).arg(&name).output().expect("id");
            assert!(out.status.success(), "ROOTLAYER_TEST_USER={name}: no such user");
            String::from_utf8_lossy(&out.stdout).trim().parse().expect("numeric id")
        };
        let home = PathBuf::from(std::env::var_os("ROOTLAYER_TEST_HOME").expect("ROOTLAYER_TEST_HOME"));
        Some(TestUser { uid: id("-u"), gid: id("-g"), name, home })
    })
    .clone()
}

impl TestUser {
    /// `program` run as the user: no supplementary groups, no capabilities.
    pub fn command(&self, program: &Path) -> Command {
        let mut cmd = Command::new("setpriv");
        cmd.args(["--reuid", &self.uid.to_string(), "--regid", &self.gid.to_string(), "--clear-groups", "--"]);
        cmd.arg(program);
        cmd
    }

    /// A copy of `exe` the user can run (the build tree may not be
    /// reachable by other users), made once per path.
    pub fn stage(&self, exe: &Path) -> PathBuf {
        let name = format!("{}-{:016x}", exe.file_name().unwrap().to_string_lossy(), fnv1a(exe.as_os_str().as_bytes()));
        let staged = self.home.join("bin").join(name);
        let fresh = |p: &Path| {
            let (a, b) = (std::fs::metadata(exe).unwrap(), std::fs::metadata(p));
            b.is_ok_and(|b| b.len() == a.len() && b.modified().unwrap() >= a.modified().unwrap())
        };
        if !fresh(&staged) {
            std::fs::create_dir_all(staged.parent().unwrap()).unwrap();
            // One name per caller: the tests of one binary run in threads.
            static PARTS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
            let n = PARTS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let part = staged.with_extension(format!("part-{}-{n}", std::process::id()));
            std::fs::copy(exe, &part).unwrap();
            std::fs::rename(&part, &staged).unwrap();
        }
        staged
    }

    /// Make `dir` (made by this root process) the user's, so rootlayer can
    /// write there: `--out` parents, TMPDIR.
    pub fn give(&self, dir: &Path) {
        std::os::unix::fs::chown(dir, Some(self.uid), Some(self.gid)).unwrap();
    }
}

/// A temporary directory for a test's files that rootlayer, run as the test
/// user, can write in.
pub fn tempdir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    give_to_test_user(dir.path());
    dir
}

/// [`TestUser::give`] when there is a test user.
pub fn give_to_test_user(dir: &Path) {
    if let Some(user) = test_user() {
        user.give(dir);
    }
}

/// Run the calling test again in a child process as the test user (for
/// tests that run the VMM in-process); true when it did and it passed (the
/// caller returns), false when this process is to run the test itself.
pub fn rerun_as_test_user(test: &str) -> bool {
    if std::env::var_os("ROOTLAYER_TEST_CHILD").is_some() {
        return false;
    }
    let Some(user) = test_user() else { return false };
    let exe = user.stage(&std::env::current_exe().unwrap());
    let out = user
        .command(&exe)
        .args([test, "--exact", "--nocapture", "--test-threads=1"])
        .env("ROOTLAYER_TEST_CHILD", "1")
        .env("HOME", &user.home)
        .current_dir(&user.home)
        .output()
        .expect("running the test as the test user");
    // Prefixed, so that the child's own `test result:` line is not counted
    // as a second test.
    for line in String::from_utf8_lossy(&out.stdout).lines().chain(String::from_utf8_lossy(&out.stderr).lines()) {
        eprintln!("[as {}] {line}", user.name);
    }
    assert!(out.status.success(), "{test} as {} failed: {}", user.name, out.status);
    true
}

/// FNV-1a 64, as the agent's listings use it (contents compared without a
/// crypto crate in the guest).
pub fn fnv1a(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3))
}

/// Run and return (exit code, stderr), echoing stderr so a failing test
/// shows what the guest printed.
pub fn run(cmd: &mut Command) -> (i32, String) {
    let Output { status, stderr, .. } = cmd.output().expect("running rootlayer");
    let stderr = String::from_utf8_lossy(&stderr).into_owned();
    eprintln!("--- rootlayer stderr ---\n{stderr}--- end ---");
    (status.code().unwrap_or(-1), stderr)
}

/// Run `cmd` (rootlayer, possibly through setpriv) under a descriptor limit
/// of `n`, soft and hard, as `ulimit -n N` in a shell sets it.
pub fn limit_open_files(cmd: &mut Command, n: u64) {
    use std::os::unix::process::CommandExt;
    // SAFETY: setrlimit in the child between fork and exec, touching no
    // memory of the parent's.
    unsafe {
        cmd.pre_exec(move || {
            let lim = libc::rlimit { rlim_cur: n, rlim_max: n };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}
