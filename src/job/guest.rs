//! Host side of one job: prepare the exchange directory and the scratch
//! disk, describe the job, boot the guest with its devices, collect the
//! result.

use super::{snapshot_mode, Workdir};
use crate::devices::console::{Echo, EchoLimit};
use crate::devices::virtio::block::Block;
use crate::devices::virtio::fs::{Fs, OutputLimit};
use crate::devices::virtio::VirtioDevice;
use crate::protocol::{
    mailbox::Part, Job, JobFile, JobResult, Mount, MountSource, Task, BASE_MOUNT, CONTENTS_MOUNT, PROTOCOL_VERSION,
    SCRATCH_DEVICE_ENV, SHARE_AHEAD_ENV, XCHG_TAG_ENV,
};
use crate::vmm::{self, BootPath, MailboxJob, RunReport, SnapshotMode, VmConfig, VmmError, BASE_CMDLINE};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// virtio-fs tag of the exchange share.
pub const XCHG_TAG: &str = "xchg";
pub use crate::protocol::SCRATCH_MOUNT;
/// Guest device of the scratch disk (the first virtio-blk device).
pub const SCRATCH_DEVICE: &str = "/dev/vda";
/// The base image disk, read-only, always the second (after the scratch
/// disk), so that the device layout is the same for every job.
pub const BASE_DEVICE: &str = "/dev/vdb";
/// The contents disk, read-only, always the third.
pub const CONTENTS_DEVICE: &str = "/dev/vdc";

/// Errors preparing or collecting a job.
#[derive(Debug, thiserror::Error)]
pub enum GuestError {
    #[error("creating the exchange directory")]
    Xchg(#[source] std::io::Error),
    #[error("creating the {mib} MiB scratch disk {path}")]
    Disk { path: PathBuf, mib: u64, source: std::io::Error },
    #[error("formatting the scratch disk {path}")]
    Format {
        path: PathBuf,
        #[source]
        source: crate::layer::ext4_format::FormatError,
    },
    #[error("store directory {path}: {reason}")]
    Store { path: PathBuf, reason: String },
    #[error("refusing the cache directory {path}: {reason} (set ROOTLAYER_CACHE to a directory of your own)")]
    Cache { path: PathBuf, reason: String },
    #[error("making the job: {0}")]
    WriteJob(String),
    #[error("the guest's result is unreadable: {0}")]
    BadResult(String),
    #[error(
        "the initramfs speaks job protocol {guest}, this rootlayer {ours}: rebuild it for this version (scripts/build-initramfs)",
        ours = PROTOCOL_VERSION
    )]
    Protocol { guest: u32 },
    #[error("{0}: rebuild it for this version (scripts/build-initramfs)")]
    AgentProtocol(String),
    #[error("setting up {what}")]
    Device {
        what: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error(transparent)]
    Vmm(#[from] VmmError),
}

/// A host directory shared read-only at the same absolute path in the guest
/// (a Nix store, typically).
#[derive(Debug, Clone)]
pub struct Store {
    pub dir: PathBuf,
}

/// Everything about the guest that is not the task.
#[derive(Debug, Clone)]
pub struct GuestSpec {
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    pub mem_mib: u64,
    /// Virtual CPUs.
    pub cpus: u8,
    pub timeout: Duration,
    pub echo: Echo,
    /// Appended to [`BASE_CMDLINE`].
    pub extra_cmdline: String,
    /// Scratch disk size in MiB; no disk when None.
    pub disk_mib: Option<u64>,
    /// The base image disk (read-only EROFS, [`crate::job::base`]), attached
    /// after the scratch disk and mounted at [`BASE_MOUNT`].
    pub base_disk: Option<PathBuf>,
    /// The contents disk (read-only EROFS, [`crate::job::contents`]), attached
    /// after the base disk and mounted at [`CONTENTS_MOUNT`].
    pub contents_disk: Option<PathBuf>,
    pub stores: Vec<Store>,
    /// Further read-only shares: (host directory, guest mount point).
    pub shares: Vec<(PathBuf, String)>,
    /// Most bytes the guest may add to the exchange share (its results:
    /// the layer tar); None for no bound. Only our VMM enforces it.
    pub max_output: Option<u64>,
    /// Rate limit of the console echo.
    pub echo_limit: Option<EchoLimit>,
    /// seccomp filters on the VMM's vCPU and device threads (off:
    /// `--no-seccomp`).
    pub seccomp: bool,
    /// Restore the guest from its snapshot, taking one if there is none
    /// (off: `--no-snapshot`).
    pub snapshot: bool,
    /// Files the agent writes before the job runs (guest path, bytes), in
    /// the mailbox with the job: its script and extra commands.
    pub files: Vec<(String, Vec<u8>)>,
}

/// Read-only share slots every guest has (stores first, then the further
/// shares; unused ones serve an empty directory and are never mounted), so
/// that the device set, and with it the snapshot, is the same whatever a
/// job shares. A job with more boots with as many as it needs, cold.
pub const SHARE_SLOTS: usize = 4;

/// [`crate::protocol::ENTROPY_BYTES`] fresh bytes from the host, hex.
fn fresh_entropy() -> Result<String, GuestError> {
    use std::io::Read;
    let mut bytes = [0u8; crate::protocol::ENTROPY_BYTES];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .map_err(|e| GuestError::WriteJob(format!("reading /dev/urandom: {e}")))?;
    Ok(crate::protocol::hex::encode(&bytes))
}

fn now_ns() -> u128 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos())
}

/// A finished job: the VM's report, the agent's result (None when the
/// guest did not get that far), and the work directory, removed when this
/// is dropped.
#[derive(Debug)]
pub struct JobOutcome {
    pub report: RunReport,
    pub result: Option<JobResult>,
    pub workdir: Workdir,
    /// The exchange share's budget, when it had one.
    pub output: Option<Arc<OutputLimit>>,
}

impl JobOutcome {
    /// The exchange directory as the guest left it.
    pub fn xchg(&self) -> PathBuf {
        self.workdir.xchg()
    }
    /// The scratch disk image.
    pub fn disk(&self) -> PathBuf {
        self.workdir.disk()
    }
    /// The limit the guest ran into writing the exchange share, if it did.
    pub fn output_exceeded(&self) -> Option<u64> {
        self.output.as_ref().filter(|l| l.exceeded()).map(|l| l.limit())
    }
}

/// Create a sparse `mib` MiB file and put the scratch ext4 on it
/// ([`crate::layer::ext4_format`]: no journal, the disk lives for one job;
/// root-owned root directory with the overlay's empty upper and work dirs;
/// only the metadata is written).
pub fn make_scratch_disk(path: &Path, mib: u64) -> Result<(), GuestError> {
    let disk_err = |source| GuestError::Disk { path: path.into(), mib, source };
    let f = std::fs::File::create(path).map_err(disk_err)?;
    f.set_len(mib << 20).map_err(disk_err)?;
    crate::layer::ext4_format::format(&f, mib << 20).map_err(|source| GuestError::Format { path: path.into(), source })
}

/// Boot a guest for `task`, with the exchange share, the stores and the
/// scratch disk from `spec`, and collect the agent's result. The caller
/// may have put input files in `workdir.xchg()` first.
///
/// Every guest has the same devices (scratch disk, base disk, contents
/// disk, exchange share, [`SHARE_SLOTS`] read-only shares; a slot the job leaves empty is
/// an empty file or directory), so that one snapshot serves every job.
pub fn run_job(spec: &GuestSpec, workdir: Workdir, task: Task) -> Result<JobOutcome, GuestError> {
    let (slots, mounts) = Slots::of(spec, &workdir)?;
    let xchg = workdir.xchg();
    // More shares than slots: a device set of another shape, cold.
    let snapshot = spec.snapshot && slots.shares.len() <= SHARE_SLOTS;
    if spec.snapshot && !snapshot {
        eprintln!(
            "rootlayer: {} shares are more than the snapshot's {SHARE_SLOTS} slots: booting cold",
            slots.shares.len()
        );
    }
    // The first store's slot is mounted ahead (a job's stores come first).
    let cmdline = format!(
        "{BASE_CMDLINE} {XCHG_TAG_ENV}={XCHG_TAG} {SCRATCH_DEVICE_ENV}={SCRATCH_DEVICE} {SHARE_AHEAD_ENV}={} {}",
        share_tag(0),
        spec.extra_cmdline
    )
    .trim()
    .to_string();
    let mut output = None;
    let config = |mode: SnapshotMode| -> Result<VmConfig, GuestError> {
        // A fresh scratch disk for every attempt: a restored guest that
        // failed before STARTED may have mounted the disk. (Every machine
        // has a mailbox of its own: no result of an earlier attempt.)
        if let Some(mib) = spec.disk_mib {
            make_scratch_disk(&slots.scratch, mib)?;
        }
        // Made last thing before the guest starts: its time is what a
        // restored guest's clock is set forward to.
        let (files, blob) = pack_files(&spec.files);
        let job = Job {
            protocol: PROTOCOL_VERSION,
            mounts: mounts.clone(),
            task: task.clone(),
            entropy: fresh_entropy()?,
            host_time_ns: now_ns(),
            files,
        };
        let json = serde_json::to_vec(&job).map_err(|e| GuestError::WriteJob(e.to_string()))?;
        if json.len() > Part::Job.max() {
            let max = Part::Job.max();
            return Err(GuestError::WriteJob(format!(
                "job.json is {} bytes, more than the mailbox's {max}",
                json.len()
            )));
        }
        let limit = spec.max_output.map(|bytes| Arc::new(OutputLimit::new(bytes)));
        output.clone_from(&limit);
        Ok(VmConfig {
            kernel: spec.kernel.clone(),
            initrd: Some(spec.initrd.clone()),
            cmdline: cmdline.clone(),
            mem_mib: spec.mem_mib,
            cpus: spec.cpus,
            timeout: spec.timeout,
            echo: spec.echo,
            echo_limit: spec.echo_limit,
            virtio: slots.devices(&xchg, limit)?,
            seccomp: spec.seccomp,
            snapshot: mode,
            job: Some(MailboxJob { json, files: blob }),
        })
    };
    let report = run_machine(snapshot_mode(snapshot), config)?;
    let result = match &report.result {
        Ok(Some(bytes)) => Some(parse_result(bytes)?),
        Ok(None) => None,
        Err(e) => return Err(GuestError::BadResult(e.to_string())),
    };
    if let Some(online) = result.as_ref().map(|r| r.cpus_online).filter(|n| (1..u32::from(spec.cpus)).contains(n)) {
        eprintln!(
            "rootlayer: the guest kernel brought up {online} of {} vCPUs (a uniprocessor kernel? --cpus 2 and more boot vmlinux-smp)",
            spec.cpus
        );
    }
    Ok(JobOutcome { report, result, workdir, output })
}

/// What backs every guest's fixed device slots for one job (an empty file
/// or directory where the job leaves a slot unused), so that the device
/// set, and with it the snapshot, is the same whatever a job uses: the
/// scratch disk, the base and contents disks, the exchange share, then the
/// read-only shares (at least [`SHARE_SLOTS`]).
#[derive(Debug)]
struct Slots {
    scratch: PathBuf,
    base: PathBuf,
    contents: PathBuf,
    /// (host directory, guest mount point), stores first.
    shares: Vec<(PathBuf, String)>,
    /// What an unused share slot serves.
    empty: PathBuf,
}

impl Slots {
    /// The slots `spec` fills in `workdir`, and what the guest mounts.
    fn of(spec: &GuestSpec, workdir: &Workdir) -> Result<(Slots, Vec<Mount>), GuestError> {
        let mut shares: Vec<(PathBuf, String)> = Vec::new();
        for store in &spec.stores {
            let dir = std::fs::canonicalize(&store.dir)
                .map_err(|e| GuestError::Store { path: store.dir.clone(), reason: e.to_string() })?;
            if !dir.is_dir() {
                return Err(GuestError::Store { path: dir, reason: "not a directory".into() });
            }
            let guest = dir.to_string_lossy().into_owned();
            shares.push((dir, guest));
        }
        shares.extend(spec.shares.iter().cloned());
        let mut mounts = Vec::new();
        let scratch = match spec.disk_mib {
            Some(mib) => {
                let source = MountSource::Disk {
                    device: SCRATCH_DEVICE.into(),
                    fstype: "ext4".into(),
                    size: mib << 20,
                    fresh: true,
                };
                mounts.push(Mount { source, target: SCRATCH_MOUNT.into(), read_only: false });
                workdir.disk()
            }
            None => workdir.no_disk()?,
        };
        let mut read_only_disk = |disk: &Option<PathBuf>, what: &str, device: &str, target: &str| {
            let Some(path) = disk else { return workdir.no_disk() };
            assert!(spec.disk_mib.is_some(), "the {what} is a lower dir of the scratch disk's overlay");
            let size = std::fs::metadata(path).map_err(device_err(what))?.len();
            let source = MountSource::Disk {
                device: device.into(),
                fstype: "erofs".into(),
                size: size / 512 * 512,
                fresh: false,
            };
            mounts.push(Mount { source, target: target.into(), read_only: true });
            Ok(path.clone())
        };
        let base = read_only_disk(&spec.base_disk, "the base image disk", BASE_DEVICE, BASE_MOUNT)?;
        let contents = read_only_disk(&spec.contents_disk, "the contents disk", CONTENTS_DEVICE, CONTENTS_MOUNT)?;
        for (i, (_, guest)) in shares.iter().enumerate() {
            let source = MountSource::VirtioFs { tag: share_tag(i) };
            mounts.push(Mount { source, target: guest.clone(), read_only: true });
        }
        let empty = workdir.no_share()?;
        Ok((Slots { scratch, base, contents, shares, empty }, mounts))
    }

    /// Fresh devices on the slots' files, in bus order; the exchange share
    /// `xchg` within `limit`.
    fn devices(&self, xchg: &Path, limit: Option<Arc<OutputLimit>>) -> Result<Vec<Box<dyn VirtioDevice>>, GuestError> {
        let mut devices: Vec<Box<dyn VirtioDevice>> = Vec::new();
        for (file, read_only, serial, what) in [
            (&self.scratch, false, "rootlayer-scratch", "the scratch disk"),
            (&self.base, true, "rootlayer-base", "the base image disk"),
            (&self.contents, true, "rootlayer-contents", "the contents disk"),
        ] {
            devices.push(Box::new(Block::new(file, read_only, serial).map_err(device_err(what))?));
        }
        let share = |host: &Path| format!("share {}", host.display());
        let mut fs = Fs::new(XCHG_TAG, xchg, false).map_err(device_err(share(xchg)))?;
        if let Some(limit) = limit {
            fs = fs.with_output_limit(limit).map_err(device_err(share(xchg)))?;
        }
        devices.push(Box::new(fs));
        for i in 0..self.shares.len().max(SHARE_SLOTS) {
            let host = self.shares.get(i).map_or(self.empty.as_path(), |(host, _)| host.as_path());
            devices.push(Box::new(Fs::new(&share_tag(i), host, true).map_err(device_err(share(host)))?));
        }
        Ok(devices)
    }
}

/// virtio-fs tag of read-only share slot `i`.
fn share_tag(i: usize) -> String {
    format!("share{i}")
}

/// Run the machine `config` builds for `mode`. When a restored guest fails
/// (its restore, or before its agent started the job), say so once, drop
/// the snapshot, and run the machine again cold from a fresh `config` (the
/// same device slots bound to fresh files), taking a new snapshot: the job
/// never fails because of a snapshot.
pub fn run_machine<E: From<VmmError>>(
    mode: SnapshotMode,
    mut config: impl FnMut(SnapshotMode) -> Result<VmConfig, E>,
) -> Result<RunReport, E> {
    let first = config(mode.clone())?;
    let SnapshotMode::Use(dir) = mode else { return Ok(vmm::run(first)?) };
    let why = match vmm::run(first) {
        Ok(report) if report.restore_failed() => {
            if let BootPath::Restored { file, .. } = &report.boot {
                let _ = std::fs::remove_file(file);
            }
            format!("the restored guest stopped before its job started ({})", report.end)
        }
        Err(e @ VmmError::Restore(_)) => crate::exit::error_line(&e),
        other => return other.map_err(E::from),
    };
    eprintln!("rootlayer: {why}; booting cold");
    Ok(vmm::run(config(SnapshotMode::Take(dir))?)?)
}

/// The job's files one after the other, and where each lies (their size
/// is the caller's to bound: run-as-root refuses scripts too large before
/// it gets here, and the mailbox refuses them in any case).
fn pack_files(files: &[(String, Vec<u8>)]) -> (Vec<JobFile>, Vec<u8>) {
    let mut blob = Vec::new();
    let mut listed = Vec::new();
    for (path, bytes) in files {
        listed.push(JobFile { path: path.clone(), offset: blob.len() as u64, len: bytes.len() as u64 });
        blob.extend_from_slice(bytes);
    }
    (listed, blob)
}

/// A device's setup error, naming the device.
fn device_err<E: std::error::Error + Send + Sync + 'static>(what: impl Into<String>) -> impl FnOnce(E) -> GuestError {
    let what = what.into();
    move |e| GuestError::Device { what, source: Box::new(e) }
}

/// Parse result.json as the guest wrote it: first its protocol version (an
/// agent of another version is named as such, whatever else it wrote),
/// then the whole.
pub fn parse_result(bytes: &[u8]) -> Result<JobResult, GuestError> {
    #[derive(serde::Deserialize)]
    struct Versioned {
        #[serde(default)]
        protocol: u32,
    }
    let version: Versioned = serde_json::from_slice(bytes).map_err(|e| GuestError::BadResult(e.to_string()))?;
    if version.protocol != PROTOCOL_VERSION {
        return Err(GuestError::Protocol { guest: version.protocol });
    }
    serde_json::from_slice(bytes).map_err(|e| GuestError::BadResult(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_result_of_another_protocol_says_to_rebuild_the_initramfs() {
        let ok = r#""status":0,"error":null,"phases":[],"observations":[],"script_status":0,"disk_full":false"#;
        let old = format!("{{{ok}}}");
        let e = parse_result(old.as_bytes()).unwrap_err();
        assert!(matches!(e, GuestError::Protocol { guest: 0 }), "{e}");
        assert!(e.to_string().contains("rebuild it") && e.to_string().contains("scripts/build-initramfs"), "{e}");
        let newer = format!(r#"{{"protocol":{},"status":"whatever"}}"#, PROTOCOL_VERSION + 1);
        assert!(matches!(parse_result(newer.as_bytes()), Err(GuestError::Protocol { .. })), "version before shape");
        assert!(matches!(parse_result(b"[1,2]"), Err(GuestError::BadResult(_))));
    }
}
