//! Each command: its arguments made into a request, the job layer run,
//! the verdict printed, the exit code given.

use super::args::{BenchIoArgs, BootArgs, ClosureInfoArgs, ExportArgs, GuestArgs, RunAsRootArgs};
use rootlayer::devices::console::{Echo, EchoLimit};
use rootlayer::exit::Exit;
use rootlayer::image::{ImageMeta, OutputFormat, Selector};
use rootlayer::job::run_as_root::{self, RunAsRootRequest};
use rootlayer::job::verdict::{self, Summary};
use rootlayer::job::{default_initrd, default_kernel, GuestSpec, JobError, Store};
use rootlayer::vmm;
use std::time::Duration;

pub(crate) fn bench_io(args: BenchIoArgs) -> Exit {
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
    let task = rootlayer::protocol::Task::IoBench(rootlayer::protocol::IoBench {
        read_file,
        write_file: format!("{}/bench.dat", rootlayer::protocol::SCRATCH_MOUNT),
        write_mib: args.write_mib,
    });
    let workdir = match rootlayer::job::Workdir::new() {
        Ok(w) => w,
        Err(e) => {
            eprintln!("rootlayer: {}", rootlayer::exit::error_line(&e));
            return Exit::Internal;
        }
    };
    match rootlayer::job::run_job(&spec, workdir, task) {
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

/// `--cpus N`: 1 to the host's cores, and no more than the guest kernel
/// and the MP table take.
fn cpus(n: u32) -> Result<u8, String> {
    let host = std::thread::available_parallelism().map_or(1, |n| u32::try_from(n.get()).unwrap_or(u32::MAX));
    let max = host.min(u32::from(vmm::arch::mptable::MAX_CPUS));
    match u8::try_from(n) {
        Ok(cpus) if (1..=max).contains(&n) => Ok(cpus),
        _ => Err(format!("--cpus {n}: from 1 to {max} (this host's cores, at most {})", vmm::arch::mptable::MAX_CPUS)),
    }
}

/// The guest described by the common arguments; a problem is printed and
/// turned into its exit code.
fn guest_spec(g: &GuestArgs) -> Result<GuestSpec, Exit> {
    let bad = |msg: String| {
        eprintln!("rootlayer: {msg}");
        Exit::BadInput
    };
    let cpus = cpus(g.cpus).map_err(bad)?;
    let kernel = default_kernel(g.kernel.clone(), cpus).map_err(|e| bad(e.to_string()))?;
    let initrd = default_initrd(g.initrd.clone()).map_err(|e| bad(e.to_string()))?;
    Ok(GuestSpec {
        kernel,
        initrd,
        mem_mib: g.mem_size,
        cpus,
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
        files: Vec::new(),
    })
}

/// Print a run-as-root or export outcome (the summary or error line on
/// stderr, the `--json` result on stdout) and give its exit code.
fn report(result: Result<Summary, JobError>, json: bool, what: &str) -> Exit {
    let verdict = verdict::job(&result, what);
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

pub(crate) fn run_as_root(args: RunAsRootArgs) -> Exit {
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
        guest_merged_listing: args.guest_merged_listing,
    };
    report(run_as_root::run_as_root(&spec, &req), args.json, "layer")
}

pub(crate) fn export(args: ExportArgs) -> Exit {
    let selector = Selector { name: args.from_image_name, tag: args.from_image_tag };
    report(rootlayer::job::export::export(&args.from_image, &selector, &args.out), args.json, "root filesystem")
}

pub(crate) fn closure_info(args: ClosureInfoArgs) -> Exit {
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
/// powers off; judged as any job is ([`verdict::boot`]).
pub(crate) fn boot(args: BootArgs) -> Exit {
    if args.print_cmdline {
        // The guest without a job (no exchange share), for booting it
        // elsewhere, e.g. under QEMU in scripts/bench-boot.
        let cmdline = format!("{} {}", vmm::BASE_CMDLINE, args.cmdline).trim().to_string();
        println!("{}", vmm::kernel_cmdline(vmm::kvm::kind(), &cmdline));
        return Exit::Ok;
    }
    let timeout = args.timeout;
    let run = || -> Result<rootlayer::job::JobOutcome, JobError> {
        let cpus = cpus(args.cpus).map_err(JobError::BadInput)?;
        let kernel = default_kernel(args.kernel, cpus).map_err(rootlayer::job::GuestError::from)?;
        let initrd = default_initrd(args.initrd).map_err(rootlayer::job::GuestError::from)?;
        let spec = GuestSpec {
            kernel,
            initrd,
            mem_mib: args.mem_size,
            cpus,
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
            files: Vec::new(),
        };
        let workdir = rootlayer::job::Workdir::new()?;
        Ok(rootlayer::job::run_job(&spec, workdir, rootlayer::protocol::Task::None)?)
    };
    match run() {
        Ok(outcome) => {
            eprintln!("rootlayer: boot: {}", outcome.report.boot.describe());
            let host = verdict::HostFacts { timeout, output_exceeded: outcome.output_exceeded() };
            let verdict = verdict::boot(&outcome.report, outcome.result.clone(), host);
            for line in &verdict.lines {
                eprintln!("rootlayer: {line}");
            }
            if verdict.show_tail {
                verdict::print_console_tail(&outcome.report);
            }
            verdict.exit
        }
        Err(e) => {
            eprintln!("rootlayer: {}", rootlayer::exit::error_line(&e));
            e.exit()
        }
    }
}
