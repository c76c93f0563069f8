//! Shared by the e2e tests: find the built kernel and initramfs, decide
//! whether a VM test can run here, and run the rootlayer binary.

#![allow(dead_code)]

pub mod image;
pub mod runas;

use std::path::PathBuf;
use std::process::{Command, Output};

/// Kernel and initramfs to boot, or the reason the VM tests cannot run.
#[derive(Debug)]
pub struct Guest {
    pub kernel: PathBuf,
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
    if !std::path::Path::new("/dev/kvm").exists() {
        eprintln!("SKIP {test}: /dev/kvm does not exist on this machine");
        return None;
    }
    let kernel = std::env::var_os("ROOTLAYER_KERNEL")
        .map(PathBuf::from)
        .unwrap_or_else(|| cache_dir().join("kernel/current/vmlinux"));
    let initrd = std::env::var_os("ROOTLAYER_INITRD")
        .map(PathBuf::from)
        .unwrap_or_else(|| cache_dir().join("initramfs/current.cpio"));
    for p in [&kernel, &initrd] {
        if !p.exists() {
            let msg = format!("{} not found (run scripts/build-kernel and scripts/build-initramfs)", p.display());
            if std::env::var_os("ROOTLAYER_REQUIRE_VM").is_some() {
                panic!("{test}: {msg}");
            }
            eprintln!("SKIP {test}: {msg}");
            return None;
        }
    }
    Some(Guest { kernel, initrd })
}

pub fn rootlayer() -> Command {
    Command::new(env!("CARGO_BIN_EXE_rootlayer"))
}

/// Run and return (exit code, stderr), echoing stderr so a failing test
/// shows what the guest printed.
pub fn run(cmd: &mut Command) -> (i32, String) {
    let Output { status, stderr, .. } = cmd.output().expect("running rootlayer");
    let stderr = String::from_utf8_lossy(&stderr).into_owned();
    eprintln!("--- rootlayer stderr ---\n{stderr}--- end ---");
    (status.code().unwrap_or(-1), stderr)
}
