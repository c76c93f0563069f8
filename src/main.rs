//! rootlayer command line: parse, run, map the outcome to an exit code.

use clap::{Parser, Subcommand};
use rootlayer::devices::console::Echo;
use rootlayer::exit::Exit;
use rootlayer::vmm::{self, GuestExit, RunReport, VmConfig, VmmError};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

#[derive(Parser, Debug)]
#[command(
    name = "rootlayer",
    version,
    about = "Run privileged image build steps in a throwaway microVM, without root"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Boot the guest kernel and agent, wait for the agent's ready line and
    /// the guest's clean exit (a smoke test of KVM, kernel and agent).
    Boot(BootArgs),
}

#[derive(clap::Args, Debug)]
struct BootArgs {
    /// Guest kernel: vmlinux (PVH) or bzImage. Default: the one
    /// scripts/build-kernel cached.
    #[arg(long, env = "ROOTLAYER_KERNEL")]
    kernel: Option<PathBuf>,
    /// Initramfs (uncompressed cpio) holding the agent as /init. Default: the
    /// one scripts/build-initramfs cached.
    #[arg(long, env = "ROOTLAYER_INITRD")]
    initrd: Option<PathBuf>,
    /// Extra kernel command-line parameters, appended to the built-in ones.
    #[arg(long, default_value = "")]
    cmdline: String,
    /// Guest memory in MiB.
    #[arg(long, default_value_t = 512)]
    mem_size: u64,
    /// Wall-clock limit in seconds.
    #[arg(long, default_value_t = 120)]
    timeout: u64,
    /// Do not echo the guest console on stderr.
    #[arg(long)]
    quiet: bool,
    /// Print the full kernel command line and exit (for booting the same
    /// guest elsewhere, e.g. under QEMU in scripts/bench-boot).
    #[arg(long)]
    print_cmdline: bool,
}

/// $ROOTLAYER_CACHE, or ~/.cache/rootlayer: where the scripts put what they build.
fn cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("ROOTLAYER_CACHE") {
        return dir.into();
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| "/nonexistent".into());
    home.join(".cache/rootlayer")
}

fn default_file(given: Option<PathBuf>, rel: &str, script: &str) -> Result<PathBuf, VmmError> {
    if let Some(p) = given {
        return Ok(p);
    }
    let p = cache_dir().join(rel);
    if p.exists() {
        Ok(p)
    } else {
        Err(VmmError::MissingFile {
            path: p,
            hint: format!("run scripts/{script} first, or pass the path"),
        })
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Boot(args) => boot(args).into(),
    }
}

fn boot(args: BootArgs) -> Exit {
    let cmdline = format!("{} {}", vmm::builder::BASE_CMDLINE, args.cmdline)
        .trim()
        .to_string();
    if args.print_cmdline {
        println!("{cmdline}");
        return Exit::Ok;
    }
    let result = (|| {
        let config = VmConfig {
            kernel: default_file(args.kernel, "kernel/current/vmlinux", "build-kernel")?,
            initrd: Some(default_file(
                args.initrd,
                "initramfs/current.cpio",
                "build-initramfs",
            )?),
            cmdline,
            mem_mib: args.mem_size,
            timeout: Duration::from_secs(args.timeout),
            echo: if args.quiet { Echo::Off } else { Echo::Stderr },
            virtio: Vec::new(),
        };
        vmm::run(config)
    })();
    match result {
        Ok(report) => boot_outcome(&report, args.timeout),
        Err(e) => {
            eprintln!("rootlayer: {e}");
            vmm_error_exit(&e)
        }
    }
}

fn vmm_error_exit(e: &VmmError) -> Exit {
    use rootlayer::vmm::arch::boot::BootError;
    match e {
        VmmError::KvmUnavailable(_) => Exit::KvmUnavailable,
        VmmError::MemSize { .. } | VmmError::MissingFile { .. } => Exit::BadInput,
        VmmError::Boot(BootError::Memory(_)) => Exit::Internal,
        VmmError::Boot(_) => Exit::BadInput,
        _ => Exit::Internal,
    }
}

fn print_tail(report: &RunReport) {
    eprintln!("rootlayer: last guest console lines:");
    for line in report.console_tail().iter().rev().take(15).rev() {
        eprintln!("  | {line}");
    }
}

/// Judge a finished boot: clean only if the agent said it was ready, then
/// reported status 0 and reset the guest.
fn boot_outcome(report: &RunReport, timeout: u64) -> Exit {
    let log = report.console.lock().expect("console log poisoned");
    let ready = log.ready_at();
    let panic = log.panic_line().map(str::to_string);
    let status = log.agent_status();
    drop(log);
    let wall = report.wall.as_secs_f64();
    if report.timed_out {
        let stage = if ready.is_some() {
            "after the agent started"
        } else {
            "before the agent's ready line"
        };
        eprintln!("rootlayer: timeout: the guest did not finish within {timeout}s ({stage})");
        print_tail(report);
        return Exit::Timeout;
    }
    if let Some(line) = panic {
        eprintln!("rootlayer: the guest kernel panicked: {line}");
        print_tail(report);
        return Exit::GuestPanic;
    }
    match (&report.exit, ready, status) {
        (GuestExit::Reset, Some(at), Some(0)) => {
            eprintln!(
                "rootlayer: agent ready after {:.3}s, guest exited cleanly after {wall:.3}s",
                at.as_secs_f64()
            );
            if let (Some(peak), Some(guest)) = (report.peak_rss_kib, report.guest_rss_kib) {
                eprintln!(
                    "rootlayer: peak RSS {peak} KiB, of which guest RAM {guest} KiB: VMM overhead {} KiB",
                    peak.saturating_sub(guest)
                );
            }
            Exit::Ok
        }
        (exit, _, _) => {
            eprintln!("rootlayer: guest ended badly: {exit}; agent status {status:?}");
            print_tail(report);
            Exit::Internal
        }
    }
}
