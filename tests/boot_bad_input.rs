//! e2e (no VM needed): bad input gets one clear line and exit code 2, never a
//! panic.

mod common;

use std::path::PathBuf;

fn tmp(name: &str, contents: &[u8]) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("rootlayer-badinput-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join(name);
    std::fs::write(&p, contents).unwrap();
    p
}

fn boot(kernel: &std::path::Path, initrd: &std::path::Path, extra: &[&str]) -> (i32, String) {
    common::run(common::rootlayer().arg("boot").arg("--kernel").arg(kernel).arg("--initrd").arg(initrd).args(extra))
}

fn one_error_line(stderr: &str) -> &str {
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "exactly one line: {stderr:?}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    lines[0]
}

#[test]
fn missing_kernel_is_bad_input() {
    let initrd = tmp("initrd1", b"070701");
    let (code, stderr) = boot(std::path::Path::new("/nonexistent/vmlinux"), &initrd, &[]);
    if code == 3 {
        eprintln!("SKIP missing_kernel_is_bad_input: no usable /dev/kvm (checked first)");
        return;
    }
    assert_eq!(code, 2);
    assert!(one_error_line(&stderr).contains("cannot open kernel /nonexistent/vmlinux"), "{stderr}");
}

#[test]
fn a_file_that_is_not_a_kernel_is_bad_input() {
    let kernel = tmp("script.sh", b"#!/bin/sh\necho not a kernel\n");
    let initrd = tmp("initrd2", b"070701");
    let (code, stderr) = boot(&kernel, &initrd, &[]);
    if code == 3 {
        eprintln!("SKIP a_file_that_is_not_a_kernel_is_bad_input: no usable /dev/kvm");
        return;
    }
    assert_eq!(code, 2);
    assert!(one_error_line(&stderr).contains("is not a kernel this VMM can boot"), "{stderr}");
}

#[test]
fn missing_initramfs_is_bad_input() {
    let Some(g) = common::guest("missing_initramfs_is_bad_input") else {
        return;
    };
    let (code, stderr) = boot(&g.kernel, std::path::Path::new("/nonexistent/initrd.cpio"), &[]);
    assert_eq!(code, 2);
    assert!(one_error_line(&stderr).contains("cannot read initramfs /nonexistent/initrd.cpio"), "{stderr}");
}

#[test]
fn memory_size_out_of_range_is_bad_input() {
    let kernel = tmp("k", b"x");
    for mib in ["1", "1000000"] {
        let (code, stderr) = boot(&kernel, &kernel, &["--mem-size", mib]);
        assert_eq!(code, 2);
        assert!(one_error_line(&stderr).contains("out of range"), "{stderr}");
    }
}
