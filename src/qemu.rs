//! The comparison backend of the benchmarks: the same job, kernel and agent
//! run by `qemu-system-x86_64 -M microvm` the way nixpkgs' vmTools shares
//! directories (9p over virtio, `-virtfs`-style fsdevs) with a virtio-blk
//! scratch disk. Not used by the product; `--backend qemu-9p` selects it.

use crate::devices::console::{ConsoleSink, Echo, EchoLimit};
use crate::vmm::{GuestExit, RunReport};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// One 9p share.
#[derive(Debug, Clone)]
pub struct Share {
    pub tag: String,
    pub host: PathBuf,
    pub read_only: bool,
}

/// Errors starting QEMU.
#[derive(Debug, thiserror::Error)]
pub enum QemuError {
    #[error("starting qemu-system-x86_64 (install qemu-system-x86): {0}")]
    Spawn(std::io::Error),
    #[error("waiting for qemu: {0}")]
    Wait(std::io::Error),
}

/// Run QEMU with the given kernel, initramfs and command line until it
/// exits (the guest's reset, `-no-reboot`) or `timeout` passes.
#[allow(clippy::too_many_arguments)]
pub fn run(
    kernel: &Path,
    initrd: &Path,
    cmdline: &str,
    mem_mib: u64,
    disk: Option<&Path>,
    base: Option<&Path>,
    shares: &[Share],
    timeout: Duration,
    echo: Echo,
) -> Result<RunReport, QemuError> {
    let start = Instant::now();
    let mut cmd = Command::new("qemu-system-x86_64");
    cmd.args(["-M", "microvm,acpi=off", "-enable-kvm", "-cpu", "host", "-smp", "1"])
        .args(["-m", &format!("{mem_mib}M")])
        .args(["-nodefaults", "-no-user-config", "-nographic", "-serial", "stdio", "-no-reboot", "-device", "i8042"])
        .arg("-kernel")
        .arg(kernel)
        .arg("-initrd")
        .arg(initrd)
        .args(["-append", &format!("{cmdline} ROOTLAYER_XCHG_FS=9p")]);
    if let Some(d) = disk {
        cmd.arg("-drive").arg(format!("file={},format=raw,if=none,id=scratch,cache=writeback", d.display()));
        cmd.args(["-device", "virtio-blk-device,drive=scratch"]);
    }
    if let Some(b) = base {
        cmd.arg("-drive").arg(format!("file={},format=raw,if=none,id=base,readonly=on", b.display()));
        cmd.args(["-device", "virtio-blk-device,drive=base"]);
    }
    for (i, s) in shares.iter().enumerate() {
        let ro = if s.read_only { ",readonly=on" } else { "" };
        cmd.arg("-fsdev").arg(format!("local,id=fs{i},path={},security_model=none{ro}", s.host.display()));
        cmd.arg("-device").arg(format!("virtio-9p-device,fsdev=fs{i},mount_tag={}", s.tag));
    }
    cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::inherit());
    let mut child = cmd.spawn().map_err(QemuError::Spawn)?;
    let (mut sink, console) = ConsoleSink::new(echo, Some(EchoLimit::DEFAULT), start);
    let mut stdout = child.stdout.take().expect("piped");
    let reader = std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = stdout.read(&mut buf) {
            if n == 0 {
                break;
            }
            let _ = std::io::Write::write_all(&mut sink, &buf[..n]);
        }
    });
    let mut timed_out = false;
    let status = loop {
        if let Some(st) = child.try_wait().map_err(QemuError::Wait)? {
            break Some(st);
        }
        if start.elapsed() >= timeout {
            let _ = child.kill();
            let _ = child.wait();
            timed_out = true;
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let _ = reader.join();
    let exit = match status {
        Some(st) if st.success() => GuestExit::Reset,
        Some(_) => GuestExit::RunFailed(0),
        None => GuestExit::Stopped,
    };
    Ok(RunReport {
        exit,
        timed_out,
        interrupted: false,
        wall: start.elapsed(),
        console,
        peak_rss_kib: None,
        guest_rss_kib: None,
        xstate: None,
    })
}
