//! rootlayer-agent: PID 1 of the rootlayer build microVM.
//!
//! A small, boring init: mount the basics, say it is ready, do the job,
//! report, sync and power off. It never returns and never panics the guest
//! kernel: every failure is printed and followed by a power-off.

mod job_run;
mod kernel_log;
mod mailbox;
mod mounts;
mod power;
mod resume;
mod run_as_root;
mod sandbox;
#[cfg(feature = "test-tasks")]
mod test_tasks;
mod vector_guard;

use rootlayer_protocol::{AGENT_READY_PREFIX, AGENT_READY_WORD};

fn main() {
    // A self-test child re-executed by the agent: not PID 1.
    #[cfg(feature = "test-tasks")]
    if let Some(code) = test_tasks::selftest::child_main() {
        std::process::exit(code);
    }
    std::panic::set_hook(Box::new(|info| {
        eprintln!("rootlayer-agent: panic: {info}");
        power::off(power::STATUS_INTERNAL);
    }));
    let status = match run() {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("rootlayer-agent: error: {e:#}");
            power::STATUS_INTERNAL
        }
    };
    power::off(status);
}

fn run() -> anyhow::Result<()> {
    mounts::mount_basics()?;
    // What every job needs the same, done once before the snapshot.
    let scratch = mounts::mount_scratch_ahead();
    let share = mounts::mount_share_ahead();
    run_as_root::make_fixed_points()?;
    job_run::make_files_dir()?;
    let sandbox = sandbox::Sandbox::make()?;
    // Where a job comes in (a guest without it still boots, and says so
    // when a job cannot be read).
    let mailbox = mailbox::Mailbox::map();
    let kernel_vectors = vector_guard::KernelFacts::read()?;
    online_cpus();
    // The snapshot point: a restored guest goes on from here.
    resume::ready_for_snapshot();
    println!(
        "{AGENT_READY_PREFIX}{}{AGENT_READY_WORD} (uptime {})",
        env!("CARGO_PKG_VERSION"),
        mounts::uptime().unwrap_or_else(|| "unknown".into())
    );
    if std::env::var_os(rootlayer_protocol::XCHG_TAG_ENV).is_none() {
        // No job to read: being here is all a restored guest has to show.
        resume::ring(rootlayer_protocol::VMM_EVENT_STARTED);
    }
    if let Ok(name) = std::env::var("ROOTLAYER_SELFTEST") {
        self_test(&name)?;
    }
    // Every boot: no job where user code could lose vector state.
    let t = std::time::Instant::now();
    let vectors = vector_guard::check(&kernel_vectors)?;
    println!("rootlayer-agent: {}", vectors.line());
    vector_guard::require_safe(&vectors)?;
    let guard = ("vector_guard".to_string(), t.elapsed().as_secs_f64());
    // The task's own status travels in result.json; the agent's exit
    // status only says whether the agent itself worked.
    if let Some(status) = job_run::run_if_requested(guard, (scratch, share), sandbox, mailbox)? {
        println!("rootlayer-agent: job finished with status {status}");
    }
    Ok(())
}

/// Why this agent refuses a test task, a self-test or a merged listing.
pub const NO_TEST_TASKS: &str = "not in this agent: the test initramfs's has it (scripts/build-initramfs --test)";

/// The CPUs the kernel has online (None if it will not say): asked once,
/// before the snapshot point (glibc reads it from sysfs, about 5 ms of an
/// emulated guest kernel at each call): a snapshot is restored only with
/// its own number of vCPUs, and nothing brings one up or down before a
/// job's script runs (nothing asks after that).
pub fn online_cpus() -> Option<u32> {
    static ONLINE: std::sync::OnceLock<Option<u32>> = std::sync::OnceLock::new();
    // SAFETY: sysconf only reads a system value.
    *ONLINE.get_or_init(|| u32::try_from(unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) }).ok().filter(|&n| n > 0))
}

/// The self-test the command line names (test initramfs only): this agent
/// says it has none rather than boot as if one had run.
fn self_test(name: &str) -> anyhow::Result<()> {
    #[cfg(feature = "test-tasks")]
    return test_tasks::selftest::run(name);
    #[cfg(not(feature = "test-tasks"))]
    anyhow::bail!("self-test {name}: {NO_TEST_TASKS}")
}
