//! Running the host's job: read job.json and its files (the script) from
//! the mailbox, mount what the job lists (and the exchange share named on
//! the command line, for a task that leaves files there), run its task,
//! put result.json in the mailbox.

use rootlayer_protocol::{
    Job, JobResult, Mount, MountSource, Task, PROTOCOL_VERSION, STATUS_PROTOCOL, XCHG_MOUNT, XCHG_TAG_ENV,
};

use crate::mailbox::Mailbox;
use crate::mounts::{mount_new, ScratchAhead, ShareAhead};
use crate::sandbox::Sandbox;
use anyhow::Context;
use nix::mount::MsFlags;
use std::time::Instant;

/// Run the job if the host gave one (ROOTLAYER_XCHG set); returns the
/// status to power off with. `guard` is the vector guard's phase, which
/// ran before; `ahead` the scratch disk and the share mounted ahead, if
/// they were;
/// `sandbox` the script's, made before the snapshot point; `mailbox` where
/// the job is.
pub fn run_if_requested(
    guard: (String, f64),
    ahead: (Option<ScratchAhead>, Option<ShareAhead>),
    sandbox: Sandbox,
    mailbox: anyhow::Result<Mailbox>,
) -> anyhow::Result<Option<i32>> {
    let Ok(tag) = std::env::var(XCHG_TAG_ENV) else {
        return Ok(None);
    };
    let t = Instant::now();
    let mut mailbox = mailbox?;
    let (text, files) = mailbox.job()?.context("no job in the mailbox")?;
    let text = String::from_utf8(text).context("job.json is not UTF-8")?;
    let mut result = JobResult { protocol: PROTOCOL_VERSION, ..JobResult::default() };
    if let Err(e) = check_protocol(&text) {
        result.status = STATUS_PROTOCOL;
        result.error = Some(e);
    } else {
        let job: Job = serde_json::from_str(&text).context("parse job.json")?;
        // Before anything of the job runs: this guest's own randomness and
        // the host's time (a restored guest has the snapshot's). First of
        // all: the kernel's first draw of randomness after a restore
        // (creating a file draws one) finds its key older than its reseed
        // interval and reseeds it from the snapshot's pool, a second
        // reseed (each about 10 ms of BLAKE2s in an emulated guest kernel)
        // that this one, coming first, makes unneeded.
        crate::resume::add_entropy(&job.entropy)?;
        println!("rootlayer-agent: {}", rootlayer_protocol::ENTROPY_LINE);
        crate::resume::set_clock(job.host_time_ns)?;
        write_files(&job.files, &files)?;
        // The exchange share, for a task that leaves files there (a
        // listing, the device check's file).
        if uses_xchg(&job.task) {
            mount_new(&tag, XCHG_MOUNT, "virtiofs", MsFlags::empty(), None)?;
        }
        result.phases.push(guard);
        result.phases.push(("job".into(), t.elapsed().as_secs_f64()));
        if let Err(e) = execute(&job, ahead, sandbox, &mut result) {
            result.status = crate::power::STATUS_INTERNAL;
            // A full disk is the cause the host names: said by type, not
            // left for the host to find in the text.
            result.disk_full |= out_of_space(&e);
            result.error = Some(format!("{e:#}"));
        }
    }
    let json = serde_json::to_vec(&result).context("serialise result")?;
    if let Err(e) = mailbox.put_result(&json) {
        // Said as the agent's own failure, in a result that fits.
        let short = JobResult {
            protocol: PROTOCOL_VERSION,
            status: crate::power::STATUS_INTERNAL,
            error: Some(format!("{e:#}")),
            ..JobResult::default()
        };
        mailbox.put_result(&serde_json::to_vec(&short).context("serialise result")?)?;
        return Ok(Some(short.status));
    }
    Ok(Some(result.status))
}

/// Make the directory the job's files go to: before the snapshot point,
/// as the same for every job.
pub fn make_files_dir() -> anyhow::Result<()> {
    std::fs::create_dir_all(rootlayer_protocol::JOB_FILES_DIR).context("mkdir the job's files")
}

/// Write the job's files (its script), executable, from `files`, the
/// mailbox's files part, into the directory [`make_files_dir`] made: each
/// created, written and made executable through one descriptor (path walks
/// are what an emulated guest kernel is slow at).
fn write_files(listed: &[rootlayer_protocol::JobFile], files: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    for f in listed {
        let path = std::path::Path::new(&f.path);
        anyhow::ensure!(
            path.parent() == Some(std::path::Path::new(rootlayer_protocol::JOB_FILES_DIR))
                && path.components().all(|c| c != std::path::Component::ParentDir),
            "job file {} is not in {}",
            f.path,
            rootlayer_protocol::JOB_FILES_DIR
        );
        let bytes = f.bytes(files).with_context(|| format!("job file {} lies outside the mailbox's files", f.path))?;
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o755)
            .open(path)
            .with_context(|| format!("create {}", f.path))?;
        file.write_all(bytes).with_context(|| format!("write {}", f.path))?;
        // Whatever the umask took off at creation.
        file.set_permissions(std::fs::Permissions::from_mode(0o755)).with_context(|| format!("chmod {}", f.path))?;
    }
    Ok(())
}

/// Whether `task` leaves files on the exchange share.
fn uses_xchg(task: &Task) -> bool {
    match task {
        Task::None => false,
        Task::RunAsRoot(r) => r.merged_listing.is_some(),
        Task::DeviceCheck(_) | Task::IoBench(_) => true,
    }
}

/// Whether any cause of `e` is ENOSPC.
fn out_of_space(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        let io = c.downcast_ref::<std::io::Error>().and_then(std::io::Error::raw_os_error);
        let errno = c.downcast_ref::<nix::errno::Errno>().map(|e| *e as i32);
        io.or(errno) == Some(libc::ENOSPC)
    })
}

/// The version first: a host of another version gets told so, not a parse
/// error of whatever changed.
fn check_protocol(job_json: &str) -> Result<(), String> {
    let version = serde_json::from_str::<serde_json::Value>(job_json)
        .ok()
        .and_then(|v| v.get("protocol").and_then(serde_json::Value::as_u64));
    if version == Some(u64::from(PROTOCOL_VERSION)) {
        return Ok(());
    }
    Err(format!(
        "job.json is of protocol {}, this agent speaks {PROTOCOL_VERSION}: the initramfs is from another rootlayer version",
        version.map_or("none".to_string(), |v| v.to_string())
    ))
}

fn execute(
    job: &Job,
    (mut scratch, mut share): (Option<ScratchAhead>, Option<ShareAhead>),
    sandbox: Sandbox,
    result: &mut JobResult,
) -> anyhow::Result<()> {
    result.cpus_online = crate::online_cpus().unwrap_or(0);
    let t = Instant::now();
    // The disk mounted ahead is let go of first unless the job mounts that
    // very file system there (a disk of another size, or none).
    if !scratch.as_ref().is_some_and(|s| job.mounts.iter().any(|m| s.serves(m))) {
        if let Some(s) = scratch.take() {
            s.unmount()?;
        }
    }
    // The share mounted ahead (read-only) is let go of if the job mounts
    // it read-write; a job that does not mount it never reaches it.
    if share.as_ref().is_some_and(|s| job.mounts.iter().any(|m| s.wanted(m) && !s.serves(m))) {
        if let Some(s) = share.take() {
            s.unmount()?;
        }
    }
    for m in &job.mounts {
        mount(m, &mut scratch, share.as_ref())?;
    }
    // Its disks show their sizes and its shares answer: a restored guest
    // works (before this, the host may still boot the job cold instead).
    crate::resume::ring(rootlayer_protocol::VMM_EVENT_STARTED);
    result.phases.push(("mount".into(), t.elapsed().as_secs_f64()));
    let t = Instant::now();
    match &job.task {
        Task::None => {}
        Task::RunAsRoot(job) => crate::run_as_root::run(job, sandbox, result)?,
        #[cfg(feature = "test-tasks")]
        Task::DeviceCheck(check) => crate::test_tasks::device_check::run(check, result)?,
        #[cfg(feature = "test-tasks")]
        Task::IoBench(b) => crate::test_tasks::device_check::io_bench(b, result)?,
        #[cfg(not(feature = "test-tasks"))]
        Task::DeviceCheck(_) | Task::IoBench(_) => {
            anyhow::bail!("the device check and I/O benchmark: {}", crate::NO_TEST_TASKS)
        }
    }
    result.phases.push(("task".into(), t.elapsed().as_secs_f64()));
    Ok(())
}

fn mount(m: &Mount, scratch: &mut Option<ScratchAhead>, share: Option<&ShareAhead>) -> anyhow::Result<()> {
    let flags = if m.read_only { MsFlags::MS_RDONLY } else { MsFlags::empty() };
    match &m.source {
        MountSource::VirtioFs { tag } => match share.filter(|s| s.serves(m)) {
            Some(ahead) => ahead.bind(&m.target),
            None => mount_new(tag, &m.target, "virtiofs", flags, None),
        },
        MountSource::Disk { device, fstype, size, .. } => match scratch.take_if(|s| s.serves(m)) {
            // What the kernel cached of the disk mounted ahead is what this
            // one holds (the same bytes): kept, not dropped.
            Some(ahead) => {
                crate::resume::wait_for_size(device, *size)?;
                ahead.remount(flags)
            }
            None => {
                crate::resume::settle_disk(device, *size)?;
                mount_new(device, &m.target, fstype, flags, None)
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_job_of_another_protocol_is_named_as_such() {
        assert!(check_protocol(&format!(r#"{{"protocol":{PROTOCOL_VERSION},"mounts":[]}}"#)).is_ok());
        let e = check_protocol(r#"{"mounts":[],"task":"none"}"#).unwrap_err();
        assert!(e.contains("protocol none") && e.contains("another rootlayer version"), "{e}");
        let e = check_protocol(&format!(r#"{{"protocol":{}}}"#, PROTOCOL_VERSION + 1)).unwrap_err();
        assert!(e.contains(&format!("protocol {}", PROTOCOL_VERSION + 1)), "{e}");
        assert!(check_protocol("not json").is_err());
    }
}
