//! rootlayer command line: parse, run, map the outcome to an exit code.

use clap::{Parser, Subcommand};
use rootlayer::devices::console::{Echo, EchoLimit};
use rootlayer::exit::Exit;
use rootlayer::image::{ImageMeta, OutputFormat, Selector};
use rootlayer::outcome;
use rootlayer::runas::{self, RunAsRootError, RunAsRootRequest, Summary};
use rootlayer::runner::{GuestSpec, Store};
use rootlayer::vmm::{self, RunReport, VmmError};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

#[derive(Parser, Debug)]
#[command(name = "rootlayer", version, about = "Run privileged image build steps in a throwaway microVM, without root")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Boot the guest kernel and agent, wait for the agent's ready line and
    /// the guest's clean exit (a smoke test of KVM, kernel and agent).
    Boot(BootArgs),
    /// dockerTools' runAsRoot: run SCRIPT as root in a chroot of the base
    /// image with an overlay on top, and write the changes as a new layer.
    RunAsRoot(Box<RunAsRootArgs>),
    /// dockerTools' exportImage: flatten an image into one root-filesystem tar.
    Export(ExportArgs),
    /// nixpkgs' closureInfo: registration, store-paths and total-nar-size
    /// of the paths in Nix exportReferencesGraph files, in a new directory
    /// (nix/default.nix's buildImageWithNixDb loads the registration).
    ClosureInfo(ClosureInfoArgs),
    /// Device throughput inside the guest (scripts/bench-devices).
    #[command(hide = true)]
    BenchIo(BenchIoArgs),
}

#[derive(clap::Args, Debug)]
struct BenchIoArgs {
    /// A file inside one of the --store directories, read sequentially.
    #[arg(long)]
    read_file: PathBuf,
    /// MiB written sequentially (and fsynced) to the scratch disk.
    #[arg(long, default_value_t = 64)]
    write_mib: u64,
    #[command(flatten)]
    guest: GuestArgs,
}

/// The guest: kernel, initramfs, memory, time.
#[derive(clap::Args, Debug)]
struct GuestArgs {
    /// Guest kernel (vmlinux or bzImage). Default: the installed one (../share/rootlayer/vmlinux), else the one scripts/build-kernel cached.
    #[arg(long, env = "ROOTLAYER_KERNEL")]
    kernel: Option<PathBuf>,
    /// Initramfs holding the agent. Default: the installed one (../share/rootlayer/initramfs.cpio), else the one scripts/build-initramfs cached.
    #[arg(long, env = "ROOTLAYER_INITRD")]
    initrd: Option<PathBuf>,
    /// Guest memory in MiB.
    #[arg(long, default_value_t = 512)]
    mem_size: u64,
    /// Scratch disk in MiB (holds the overlay upper dir: the new layer).
    #[arg(long, default_value_t = 1024)]
    disk_size: u64,
    /// Virtual CPUs (the guest kernel is uniprocessor: 1).
    #[arg(long, default_value_t = 1)]
    cpus: u32,
    /// Wall-clock limit for the whole job, in seconds.
    #[arg(long, default_value_t = 3600)]
    timeout: u64,
    /// Most the guest may write back to the host (the new layer, before
    /// conversion), in MiB; beyond it the job fails with exit code 7.
    #[arg(long, default_value_t = 4096)]
    max_output: u64,
    /// Most guest output echoed on stderr, in KiB/s after a 16 s burst
    /// (lines beyond it are dropped and counted); 0 for no limit.
    #[arg(long, default_value_t = 64)]
    max_log_rate: u64,
    /// Share this directory read-only at the same path in the guest
    /// (repeatable; e.g. /nix/store).
    #[arg(long = "store")]
    stores: Vec<PathBuf>,
    /// Do not echo the guest console (the script's output) on stderr.
    #[arg(long)]
    quiet: bool,
    /// Extra kernel command-line parameters.
    #[arg(long, default_value = "")]
    cmdline: String,
    /// Do not filter the VMM's vCPU and device threads with seccomp (debugging).
    #[arg(long)]
    no_seccomp: bool,
    /// Boot the guest cold: neither restore it from the snapshot of the
    /// booted guest ($ROOTLAYER_CACHE/snapshots) nor take one.
    #[arg(long, env = "ROOTLAYER_NO_SNAPSHOT", value_parser = clap::builder::FalseyValueParser::new())]
    no_snapshot: bool,
}

#[derive(clap::Args, Debug)]
struct RunAsRootArgs {
    /// The script to run as root (a #! line picks its interpreter inside the image or a store).
    #[arg(long)]
    script: PathBuf,
    /// Base image: docker-archive (.tar, .tar.gz) or OCI layout (directory or tar).
    #[arg(long)]
    from_image: Option<PathBuf>,
    #[arg(long)]
    from_image_name: Option<String>,
    #[arg(long)]
    from_image_tag: Option<String>,
    /// Copy this directory's contents into the layer as root:root first (repeatable).
    #[arg(long)]
    contents: Vec<PathBuf>,
    /// Keep symlinks to directories in --contents as links (rsync -K) instead of following them.
    #[arg(long)]
    keep_contents_dirlinks: bool,
    /// Run this (with a #! line) in the new layer's directory after the script, not chrooted.
    #[arg(long)]
    extra_commands: Option<PathBuf>,
    /// A file listing host paths (one per line: a Nix closure, as
    /// writeReferencesToFile writes it) to add to the layer whole, owned by
    /// root, leaving out those the base image already has (as dockerTools does).
    #[arg(long)]
    store_paths: Option<PathBuf>,
    /// A Nix exportReferencesGraph file (repeatable): the store paths the
    /// layer may reference. Those whose hash occurs in the layer's files,
    /// names or symlink targets are added with their closure, as
    /// dockerTools adds the layer's references (leaving out what the base
    /// image already has).
    #[arg(long)]
    references_graph: Vec<PathBuf>,
    /// mkRootLayer's baseJson: the JSON object `--format layer` writes as
    /// `json` (with the layer checksum added), and the config of an image
    /// without --from-image.
    #[arg(long)]
    base_json: Option<PathBuf>,
    /// Creation time for the image config and history: RFC 3339, or "now" (as dockerTools allows).
    #[arg(long, default_value = "1970-01-01T00:00:01Z")]
    created: String,
    /// Clamp every mtime in the layer to this (seconds since the epoch).
    #[arg(long, env = "SOURCE_DATE_EPOCH")]
    source_date_epoch: Option<u64>,
    /// Output form: layer (mkRootLayer's directory), docker-archive or oci.
    #[arg(long, default_value = "layer")]
    format: String,
    /// Name and tag of the output image (docker-archive, oci).
    #[arg(long, default_value = "rootlayer")]
    name: String,
    #[arg(long, default_value = "latest")]
    tag: String,
    /// Print a JSON result on stdout.
    #[arg(long)]
    json: bool,
    /// Where to write the result (must not exist).
    #[arg(long)]
    out: PathBuf,
    /// Write the agent's listing of the merged tree here (for tests).
    #[arg(long, hide = true)]
    merged_listing: Option<PathBuf>,
    #[command(flatten)]
    guest: GuestArgs,
}

#[derive(clap::Args, Debug)]
struct ExportArgs {
    #[arg(long)]
    from_image: PathBuf,
    #[arg(long)]
    from_image_name: Option<String>,
    #[arg(long)]
    from_image_tag: Option<String>,
    /// The root-filesystem tar to write (must not exist).
    #[arg(long)]
    out: PathBuf,
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args, Debug)]
struct ClosureInfoArgs {
    /// The directory to write (must not exist).
    #[arg(long)]
    out: PathBuf,
    /// exportReferencesGraph files.
    graphs: Vec<PathBuf>,
}

#[derive(clap::Args, Debug)]
struct BootArgs {
    /// Guest kernel: vmlinux (PVH) or bzImage. Default: the installed one
    /// (../share/rootlayer/vmlinux), else the one scripts/build-kernel cached.
    #[arg(long, env = "ROOTLAYER_KERNEL")]
    kernel: Option<PathBuf>,
    /// Initramfs (uncompressed cpio) holding the agent as /init. Default:
    /// the installed one (../share/rootlayer/initramfs.cpio), else the one
    /// scripts/build-initramfs cached.
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
    /// Do not filter the VMM's vCPU thread with seccomp (debugging).
    #[arg(long)]
    no_seccomp: bool,
    /// Print the full kernel command line and exit (for booting the same
    /// guest elsewhere, e.g. under QEMU in scripts/bench-boot).
    #[arg(long)]
    print_cmdline: bool,
    /// Boot cold: neither restore from the snapshot of this guest nor take one.
    #[arg(long, env = "ROOTLAYER_NO_SNAPSHOT", value_parser = clap::builder::FalseyValueParser::new())]
    no_snapshot: bool,
}

use rootlayer::runner::cache_dir;

/// The guest kernel or initramfs: given, else the installed one
/// (`PREFIX/share/rootlayer/NAME` beside `PREFIX/bin/rootlayer`, as
/// scripts/install lays it out), else the one the build scripts cached.
fn default_file(given: Option<PathBuf>, installed: &str, rel: &str, script: &str) -> Result<PathBuf, VmmError> {
    if let Some(p) = given {
        return Ok(p);
    }
    let share = std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.parent()?.join("share/rootlayer").join(installed)));
    if let Some(p) = share.filter(|p| p.is_file()) {
        return Ok(p);
    }
    let p = cache_dir().join(rel);
    if p.exists() {
        Ok(p)
    } else {
        Err(VmmError::MissingFile { path: p, hint: format!("run scripts/{script} first, or pass the path") })
    }
}

/// The default guest kernel.
fn default_kernel(given: Option<PathBuf>) -> Result<PathBuf, VmmError> {
    default_file(given, "vmlinux", "kernel/current/vmlinux", "build-kernel")
}

/// The default initramfs.
fn default_initrd(given: Option<PathBuf>) -> Result<PathBuf, VmmError> {
    default_file(given, "initramfs.cpio", "initramfs/current.cpio", "build-initramfs")
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    vmm::install_interrupt_handlers();
    rootlayer::runner::raise_nofile_limit();
    rootlayer::runner::restrict_umask();
    if let Err(e) = rootlayer::runner::check_cache_dir(&cache_dir()) {
        eprintln!("rootlayer: {e}");
        return Exit::BadInput.into();
    }
    match cli.command {
        Command::Boot(args) => boot(args).into(),
        Command::RunAsRoot(args) => run_as_root(*args).into(),
        Command::Export(args) => export(args).into(),
        Command::ClosureInfo(args) => closure_info(args).into(),
        Command::BenchIo(args) => bench_io(args).into(),
    }
}

fn bench_io(args: BenchIoArgs) -> Exit {
    let spec = match guest_spec(&args.guest) {
        Ok(s) => s,
        Err(exit) => return exit,
    };
    let read_file = match std::fs::canonicalize(&args.read_file) {
        Ok(p) => p.display().to_string(),
        Err(e) => {
            eprintln!("rootlayer: --read-file {}: {e}", args.read_file.display());
            return Exit::BadInput;
        }
    };
    let task = rootlayer::job::Task::IoBench(rootlayer::job::IoBench {
        read_file,
        write_file: format!("{}/bench.dat", rootlayer::job::SCRATCH_MOUNT),
        write_mib: args.write_mib,
    });
    let workdir = match rootlayer::runner::Workdir::new() {
        Ok(w) => w,
        Err(e) => {
            eprintln!("rootlayer: {}", rootlayer::exit::error_line(&e));
            return Exit::Internal;
        }
    };
    match rootlayer::runner::run_job(&spec, workdir, task) {
        Ok(outcome) => match outcome.result {
            Some(r) if r.status == 0 => {
                let obs: serde_json::Map<String, serde_json::Value> =
                    r.observations.into_iter().map(|(k, v)| (k, serde_json::Value::String(v))).collect();
                println!("{}", serde_json::Value::Object(obs));
                Exit::Ok
            }
            other => {
                eprintln!("rootlayer: benchmark failed: {:?}", other.and_then(|r| r.error));
                Exit::Internal
            }
        },
        Err(e) => {
            eprintln!("rootlayer: {}", rootlayer::exit::error_line(&e));
            Exit::Internal
        }
    }
}

/// The guest described by the common arguments; a problem is printed and
/// turned into its exit code.
fn guest_spec(g: &GuestArgs) -> Result<GuestSpec, Exit> {
    let bad = |msg: String| {
        eprintln!("rootlayer: {msg}");
        Exit::BadInput
    };
    if g.cpus != 1 {
        return Err(bad(format!("--cpus {}: the guest kernel is uniprocessor; use 1", g.cpus)));
    }
    let kernel = default_kernel(g.kernel.clone()).map_err(|e| bad(e.to_string()))?;
    let initrd = default_initrd(g.initrd.clone()).map_err(|e| bad(e.to_string()))?;
    Ok(GuestSpec {
        kernel,
        initrd,
        mem_mib: g.mem_size,
        timeout: Duration::from_secs(g.timeout),
        echo: if g.quiet { Echo::Off } else { Echo::Stderr },
        extra_cmdline: g.cmdline.clone(),
        disk_mib: Some(g.disk_size),
        base_disk: None,
        contents_disk: None,
        stores: g.stores.iter().map(|d| Store { dir: d.clone() }).collect(),
        shares: Vec::new(),
        max_output: Some(g.max_output.saturating_mul(1 << 20)),
        echo_limit: (g.max_log_rate > 0).then(|| EchoLimit { bytes_per_sec: g.max_log_rate.saturating_mul(1 << 10) }),
        seccomp: !g.no_seccomp,
        snapshot: !g.no_snapshot,
    })
}

/// Print a run-as-root or export outcome (the summary or error line on
/// stderr, the `--json` result on stdout) and give its exit code.
fn report(result: Result<Summary, RunAsRootError>, json: bool, what: &str) -> Exit {
    let verdict = outcome::job(&result, what);
    eprintln!("rootlayer: {}", verdict.line);
    if json {
        println!("{}", verdict.json);
    }
    verdict.exit
}

/// The contents of the file a `flag` names, parsed; a problem is printed
/// as one line and is bad input.
fn read_input<T>(
    flag: &str,
    path: &std::path::Path,
    parse: impl FnOnce(&[u8]) -> Result<T, String>,
) -> Result<T, Exit> {
    std::fs::read(path).map_err(|e| e.to_string()).and_then(|t| parse(&t)).map_err(|e| {
        eprintln!("rootlayer: {flag} {}: {e}", path.display());
        Exit::BadInput
    })
}

fn run_as_root(args: RunAsRootArgs) -> Exit {
    let spec = match guest_spec(&args.guest) {
        Ok(s) => s,
        Err(exit) => return exit,
    };
    let format: OutputFormat = match args.format.parse() {
        Ok(f) => f,
        Err(e) => {
            eprintln!("rootlayer: {}", rootlayer::exit::error_line(&e));
            return Exit::BadInput;
        }
    };
    // "now", wherever it is given, is this one instant.
    let now = std::time::SystemTime::now();
    let created = match rootlayer::image::created::created(&args.created, now) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("rootlayer: --created {e}");
            return Exit::BadInput;
        }
    };
    let store_paths = match args.store_paths.as_deref().map(|f| {
        read_input("--store-paths", f, |t| {
            rootlayer::layer::store_paths::parse_list(t).map_err(|e| rootlayer::exit::error_line(&e))
        })
    }) {
        None => Vec::new(),
        Some(Ok(p)) => p,
        Some(Err(exit)) => return exit,
    };
    let mut references = rootlayer::layer::references::ReferenceGraph::default();
    for f in &args.references_graph {
        if let Err(exit) = read_input("--references-graph", f, |t| references.add_export(t).map_err(|e| e.to_string()))
        {
            return exit;
        }
    }
    let mut base_json = match args.base_json.as_deref().map(|f| {
        read_input("--base-json", f, |t| match serde_json::from_slice::<serde_json::Value>(t) {
            Ok(v) if v.is_object() => Ok(v),
            Ok(_) => Err("not a JSON object".into()),
            Err(e) => Err(e.to_string()),
        })
    }) {
        None => None,
        Some(Ok(v)) => Some(v),
        Some(Err(exit)) => return exit,
    };
    let now = rootlayer::image::created::created("now", now).unwrap_or_else(|_| created.clone());
    if let Some(Err(e)) = base_json.as_mut().map(|j| rootlayer::image::created::resolve_json(j, &now)) {
        eprintln!("rootlayer: --base-json: {e}");
        return Exit::BadInput;
    }
    let req = RunAsRootRequest {
        script: args.script,
        from_image: args.from_image,
        selector: Selector { name: args.from_image_name, tag: args.from_image_tag },
        contents: args.contents,
        keep_contents_dirlinks: args.keep_contents_dirlinks,
        extra_commands: args.extra_commands,
        store_paths,
        references,
        source_date_epoch: args.source_date_epoch,
        format,
        out: args.out,
        meta: ImageMeta {
            name: args.name,
            tag: args.tag,
            created,
            created_by: Some("rootlayer run-as-root".into()),
            comment: None,
            base_json,
        },
        merged_listing: args.merged_listing,
    };
    report(runas::run_as_root(&spec, &req), args.json, "layer")
}

fn export(args: ExportArgs) -> Exit {
    let selector = Selector { name: args.from_image_name, tag: args.from_image_tag };
    report(runas::export(&args.from_image, &selector, &args.out), args.json, "root filesystem")
}

fn closure_info(args: ClosureInfoArgs) -> Exit {
    match rootlayer::nar::closure_info(&args.graphs, &args.out) {
        Ok(()) => Exit::Ok,
        Err(e) => {
            eprintln!("rootlayer: closure-info: {}", rootlayer::exit::error_line(&e));
            match e {
                rootlayer::nar::NarError::Graph { .. } => Exit::BadInput,
                _ => Exit::Internal,
            }
        }
    }
}

/// A job with no task: the guest comes up (restored from the snapshot
/// every job shares, or cold), mounts its exchange share, reports and
/// powers off; judged as any job is ([`outcome::boot`]).
fn boot(args: BootArgs) -> Exit {
    if args.print_cmdline {
        // The guest without a job (no exchange share), for booting it
        // elsewhere, e.g. under QEMU in scripts/bench-boot.
        let cmdline = format!("{} {}", vmm::BASE_CMDLINE, args.cmdline).trim().to_string();
        println!("{}", vmm::kernel_cmdline(vmm::kvm::kind(), &cmdline));
        return Exit::Ok;
    }
    let timeout = args.timeout;
    let run = || -> Result<rootlayer::runner::JobOutcome, RunAsRootError> {
        let kernel = default_kernel(args.kernel).map_err(rootlayer::runner::RunError::from)?;
        let initrd = default_initrd(args.initrd).map_err(rootlayer::runner::RunError::from)?;
        let spec = GuestSpec {
            kernel,
            initrd,
            mem_mib: args.mem_size,
            timeout: Duration::from_secs(timeout),
            echo: if args.quiet { Echo::Off } else { Echo::Stderr },
            extra_cmdline: args.cmdline,
            disk_mib: None,
            base_disk: None,
            contents_disk: None,
            stores: Vec::new(),
            shares: Vec::new(),
            max_output: Some(1 << 20),
            echo_limit: Some(EchoLimit::DEFAULT),
            seccomp: !args.no_seccomp,
            snapshot: !args.no_snapshot,
        };
        let workdir = rootlayer::runner::Workdir::new()?;
        Ok(rootlayer::runner::run_job(&spec, workdir, rootlayer::job::Task::None)?)
    };
    match run() {
        Ok(outcome) => {
            eprintln!("rootlayer: boot: {}", outcome.report.boot.describe());
            let host = outcome::HostFacts { timeout, output_exceeded: outcome.output_exceeded() };
            let verdict = outcome::boot(&outcome.report, outcome.result.clone(), host);
            for line in &verdict.lines {
                eprintln!("rootlayer: {line}");
            }
            if verdict.show_tail {
                print_tail(&outcome.report);
            }
            verdict.exit
        }
        Err(e) => {
            eprintln!("rootlayer: {}", rootlayer::exit::error_line(&e));
            e.exit()
        }
    }
}

fn print_tail(report: &RunReport) {
    eprintln!("rootlayer: last guest console lines:");
    for line in report.console_tail().iter().rev().take(15).rev() {
        eprintln!("  | {line}");
    }
}
