//! `rootlayer run-as-root` and `rootlayer export`: the host side of
//! dockerTools' runAsRoot (mkRootLayer) and exportImage.
//!
//! Read the base image and make (or take from the cache) its EROFS disk,
//! hand the script to the guest through the exchange share, boot, read the
//! upper dir off the scratch disk the guest left (plus any `--store-paths`),
//! and write it as the OCI layer, atomically, in the asked-for format.

use super::stop::{check_out, Stop};
use super::verdict::Summary;
use super::{cache_dir, run_job, GuestError, GuestSpec, JobError, JobOutcome, Workdir, VERIFIED_DIR};
use crate::devices::console::Echo;
use crate::image::{BaseImage, ImageMeta, NewLayer, OutputDraft, OutputFormat, Selector};
use crate::job::base::{BaseDisk, BaseError};
use crate::job::contents::Contents;
use crate::layer::changeset::{self, Changeset, Data, HostFiles, Source, Visit};
use crate::layer::ext4::Ext4Error;
use crate::layer::references::{scan_changeset, ReferenceGraph};
use crate::layer::store_paths::StorePath;
use crate::layer::upper::Ext4Files;
use crate::layer::{write_atomically, ConvertOptions, LayerError};
use crate::protocol::mailbox::Part;
use crate::protocol::{
    JobResult, RunAsRoot, Task, BASE_MOUNT, CONTENTS_MOUNT, JOB_FILES_DIR, SCRIPT_MOUNTS, XCHG_MOUNT,
};
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// PATH inside the chroot, as a Debian-like image expects; a Nix-built
/// script sets its own.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// PATH for the script: the image config's `Env` PATH, as a container of
/// the image would have it, else [`DEFAULT_PATH`].
pub fn script_path(base: Option<&BaseImage>) -> String {
    base.and_then(|b| {
        let env = b.config().config().as_ref()?.env().clone()?;
        env.iter().find_map(|e| e.strip_prefix("PATH=").map(str::to_string))
    })
    .unwrap_or_else(|| DEFAULT_PATH.to_string())
}

/// What `run-as-root` was asked to do (the CLI fills it in).
#[derive(Debug, Clone)]
pub struct RunAsRootRequest {
    pub script: PathBuf,
    pub from_image: Option<PathBuf>,
    pub selector: Selector,
    pub contents: Vec<PathBuf>,
    pub keep_contents_dirlinks: bool,
    pub extra_commands: Option<PathBuf>,
    /// Host paths added to the layer whole (`--store-paths`: a Nix closure).
    pub store_paths: Vec<StorePath>,
    /// The store paths the layer may reference and their references
    /// (`--references-graph`): the closure of those the layer's bytes name
    /// is added as `store_paths` are.
    pub references: ReferenceGraph,
    pub source_date_epoch: Option<u64>,
    pub format: OutputFormat,
    pub out: PathBuf,
    pub meta: ImageMeta,
    /// Write the listing of the image's tree with the new layer here.
    pub merged_listing: Option<PathBuf>,
    /// Write the test agent's listing of the merged tree it saw here.
    pub guest_merged_listing: Option<PathBuf>,
}

fn guest_path(name: &str) -> String {
    format!("{XCHG_MOUNT}/{name}")
}

/// A script for the guest, as a file of the job (it goes in the mailbox;
/// the agent writes it executable, and runs it through its `#!` line
/// whatever mode the builder's file had): its guest path and bytes.
fn read_in(src: &Path, name: &str) -> Result<(String, Vec<u8>), JobError> {
    let bytes = std::fs::read(src).map_err(|e| JobError::BadInput(format!("cannot read {}: {e}", src.display())))?;
    Ok((format!("{JOB_FILES_DIR}/{name}"), bytes))
}

/// Judge the VM's end and the agent's result ([`crate::job::verdict::judge`]).
fn check_outcome(outcome: &JobOutcome, timeout: u64, echo: Echo) -> Result<JobResult, JobError> {
    let result = outcome.judge(timeout);
    // When the console was not echoed live (--quiet), show the guest's last
    // lines with any failure of the guest itself.
    if echo == Echo::Off && matches!(&result, Err(e) if !matches!(e, JobError::ScriptFailed(_))) {
        super::verdict::print_console_tail(&outcome.report);
    }
    result
}

/// The smallest scratch disk a job can use (its ext4 metadata, the
/// overlay's work dir): the smallest `layer::ext4_format` makes.
pub const MIN_DISK_MIB: u64 = crate::layer::ext4_format::MIN_SIZE >> 20;

/// Everything about the inputs that can be checked before the guest boots,
/// each a one-line bad-input error.
fn preflight(spec: &GuestSpec, req: &RunAsRootRequest) -> Result<(), JobError> {
    let bad = |m: String| Err(JobError::BadInput(m));
    check_out(&req.out)?;
    for (flag, file) in [("--script", Some(&req.script)), ("--extra-commands", req.extra_commands.as_ref())] {
        if let Some(f) = file {
            if !f.is_file() {
                return bad(format!("{flag} {}: not a readable file", f.display()));
            }
        }
    }
    for dir in &req.contents {
        if !dir.is_dir() {
            return bad(format!("--contents {} is not a directory", dir.display()));
        }
    }
    for p in &req.store_paths {
        if p.host.symlink_metadata().is_err() {
            return bad(format!("--store-paths: {} does not exist", p.host.display()));
        }
    }
    for store in &spec.stores {
        if !store.dir.is_dir() {
            return bad(format!("--store {} is not a directory", store.dir.display()));
        }
    }
    if let Some(mib) = spec.disk_mib {
        if mib < MIN_DISK_MIB {
            return bad(format!("--disk-size {mib} MiB is too small: at least {MIN_DISK_MIB} MiB"));
        }
        let max = crate::layer::ext4_format::MAX_SIZE >> 20;
        if mib > max {
            return bad(format!("--disk-size {mib} MiB is too large: at most {max} MiB"));
        }
    }
    Ok(())
}

/// The base image as the guest's read-only disk (cached, [`super::base`]).
fn base_disk(base: Option<&BaseImage>, workdir: &Workdir) -> Result<BaseDisk, JobError> {
    Ok(crate::job::base::prepare(base, &cache_dir(), workdir.path())?)
}

/// The new layer's tree: the scratch disk's `upper` dir (the untrusted
/// guest's image: [`crate::layer::ext4`] bounds every read; at most `limit`
/// bytes of layer) over the contents, as if the contents had been copied
/// into the upper dir before the overlay was mounted (the seed's way): a
/// contents path the script replaced, deleted or emptied is left out, and a
/// whiteout or opaque mark that only hid the contents' copy (the base disk
/// `base` has no such path) is dropped. `store_paths` and the closure of the
/// `references` the tree (contents included) and `base_json` (the layer's
/// json) name are added after it, leaving out what the layer or (`base_has`)
/// the base image holds. File bytes stay where they are until the layer is
/// written: returned is where to read them.
fn read_upper(
    disk: &Path,
    (stop, limit): (Stop, u64),
    (contents, base): (&Contents, &Path),
    (store_paths, references, base_json): (&[StorePath], &ReferenceGraph, Option<&serde_json::Value>),
    base_has: HashSet<Vec<u8>>,
) -> Result<(Changeset, LayerFiles), JobError> {
    use crate::layer::ext4::Ext4;
    use crate::layer::upper::{self, Bounds, Upper};
    let io = |e: std::io::Error| JobError::Scratch(Ext4Error::Io(e));
    // One block of buffer: the reader seeks before every read, and a
    // BufReader drops what it holds at every seek (with 64 KiB, a walk of
    // 10,000 small files took 3.7 times as long, and the layer's write 1.4).
    let image = || -> Result<_, JobError> {
        let file = std::io::BufReader::with_capacity(4096, std::fs::File::open(disk).map_err(io)?);
        Ext4::open(file).map_err(JobError::Scratch)
    };
    let mut fs = image()?;
    let base_io = |e: std::io::Error| JobError::Base(BaseError::Io { path: base.to_path_buf(), source: e });
    let mut base_disk = std::io::BufReader::with_capacity(1 << 14, std::fs::File::open(base).map_err(base_io)?);
    let mut lookup_err = None;
    let mut only_contents = |p: &[u8]| {
        contents.tree.lookup(p).is_some()
            && crate::layer::erofs::lookup(&mut base_disk, p).map_or_else(
                |e| {
                    lookup_err.get_or_insert(e);
                    false
                },
                |found| found.is_none(),
            )
    };
    let mut changes = Changeset::default();
    let bounds = Bounds { limit, stop: &|| stop.now() };
    let upper = upper::changes(&mut fs, crate::protocol::SCRATCH_UPPER, bounds, &mut only_contents, &mut changes)
        .map_err(|e| match e {
            Ext4Error::TooLarge(n) => JobError::OutputTooLarge(n),
            Ext4Error::Entry(e) => layer_error(e, &[]),
            other => JobError::Scratch(other),
        })?;
    if let Some(e) = lookup_err {
        return Err(base_io(e));
    }
    let mut skip: HashSet<Vec<u8>> = upper.keys().cloned().collect();
    let visit = |p: &[u8], inode: &crate::layer::flatten::Inode| {
        let visit = match upper.get(p) {
            None => Visit::Entry,
            Some(Upper::Dir) if matches!(inode.kind, crate::layer::flatten::Kind::Dir(_)) => Visit::Below,
            Some(_) => Visit::Skip,
        };
        if visit == Visit::Entry {
            skip.insert(p.to_vec());
        }
        visit
    };
    changes.add_tree(&contents.tree, visit).map_err(|e| layer_error(e, &[]))?;
    let mut files = LayerFiles { ext4: Ext4Files(image()?), host: contents.data().clone(), store: Vec::new() };
    let mut scanner = references.scanner();
    if !references.is_empty() {
        let scan = scan_changeset(&changes, &mut files, &mut scanner, &|| stop.now());
        scan.map_err(|e| layer_error(e, &[]))?;
        // The layer's write reads every file again: with bounds of its own
        // (the reader's extent budget is one pass over the image's blocks).
        files.ext4 = Ext4Files(image()?);
    }
    skip.extend(base_has);
    let json = base_json.map(|j| j.to_string()).unwrap_or_default();
    let closure = crate::layer::store_paths::layer_closure(store_paths, references, &mut scanner, json.as_bytes())
        .map_err(JobError::StorePaths)?;
    if !references.is_empty() {
        eprintln!("rootlayer: {closure}");
    }
    crate::layer::store_paths::add(&mut changes, &closure.paths, &skip, &mut files.host).map_err(|e| match e {
        LayerError::UserWhiteoutName { .. } => JobError::Unrepresentable(e),
        other => JobError::StorePaths(other),
    })?;
    files.store = closure.paths;
    Ok((changes, files))
}

/// Where the new layer's file bytes are: the scratch disk's files, and the
/// host's (the contents', then the store paths').
struct LayerFiles {
    ext4: Ext4Files<std::io::BufReader<std::fs::File>>,
    host: HostFiles,
    /// The store paths added, whose files a read error is blamed on
    /// (`--store-paths` names them: bad input).
    store: Vec<StorePath>,
}

impl Source for LayerFiles {
    fn open(&mut self, data: &Data) -> std::io::Result<Box<dyn std::io::Read + '_>> {
        match data {
            Data::Ext4 { .. } => self.ext4.open(data),
            _ => Source::open(&mut self.host, data),
        }
    }
}

/// Where the merged tree's file bytes are: the base image's staged layers,
/// and the new layer's files.
struct ListingFiles<'a> {
    layers: crate::layer::erofs::Layers<std::io::BufReader<std::fs::File>>,
    layer: &'a mut LayerFiles,
}

impl Source for ListingFiles<'_> {
    fn open(&mut self, data: &Data) -> std::io::Result<Box<dyn std::io::Read + '_>> {
        match data {
            Data::Layer(_) => self.layers.open(data),
            _ => self.layer.open(data),
        }
    }
}

/// The job's error for what the layer engine refused: what a layer cannot
/// hold (exit 8), a store path's file that could not be read as listed
/// (bad input), anything else internal.
fn layer_error(e: LayerError, store: &[StorePath]) -> JobError {
    let in_store = |path: &str| {
        store.iter().any(|p| {
            let p = &p.layer[..];
            path.as_bytes().starts_with(p) && matches!(path.as_bytes().get(p.len()), None | Some(b'/'))
        })
    };
    match e {
        LayerError::UserWhiteoutName { .. } | LayerError::UnsupportedType { .. } | LayerError::TooLarge { .. } => {
            JobError::Unrepresentable(e)
        }
        LayerError::Entry { ref path, .. } | LayerError::Truncated { ref path } if in_store(path) => {
            JobError::StorePaths(e)
        }
        // The scratch disk's own error, met when a file's bytes were read.
        LayerError::Entry { source, .. } if source.get_ref().is_some_and(|i| i.is::<Ext4Error>()) => {
            JobError::Scratch(Ext4Error::from_io(source))
        }
        other => JobError::Layer(other),
    }
}

/// The contents disk for `contents`, written into the job's work dir.
fn contents_disk(contents: &Contents, workdir: &Workdir) -> Result<Option<PathBuf>, JobError> {
    if contents.is_empty() {
        return Ok(None);
    }
    let path = workdir.path().join("contents.erofs");
    let io = |e: std::io::Error| JobError::Run(GuestError::Xchg(e));
    let mut out = Stop::interrupts_only().file(&path).map_err(io)?;
    contents.write_disk(&mut out).map_err(JobError::Contents)?;
    std::io::Write::flush(&mut out).map_err(io)?;
    Ok(Some(path))
}

/// The first path, `path` itself or an ancestor, that the guest's overlay
/// shows as something other than a directory, given what the contents (the
/// topmost lower dir) and the base have at a relative path: `None`
/// (nothing), `Some(true)` (a directory), `Some(false)` (anything else).
/// The topmost layer holding a name decides what it is; a directory merges
/// with the directory below it only; where neither has the name, the
/// guest's empty layer of mount points below them gives a directory.
fn mount_point_blocked<E>(
    path: &str,
    mut contents: impl FnMut(&[u8]) -> Result<Option<bool>, E>,
    mut base: impl FnMut(&[u8]) -> Result<Option<bool>, E>,
) -> Result<Option<String>, E> {
    let (mut in_contents, mut in_base) = (true, true);
    let mut prefix = String::new();
    for comp in path.split('/').filter(|c| !c.is_empty()) {
        if !prefix.is_empty() {
            prefix.push('/');
        }
        prefix.push_str(comp);
        let top = if in_contents { contents(prefix.as_bytes())? } else { None };
        let below = if in_base { base(prefix.as_bytes())? } else { None };
        if top == Some(false) || (top.is_none() && below == Some(false)) {
            return Ok(Some(format!("/{prefix}")));
        }
        (in_contents, in_base) = (top == Some(true), below == Some(true));
        if !in_contents && !in_base {
            break;
        }
    }
    Ok(None)
}

/// Refuse, before boot, a job whose image (contents over base) has a file
/// or a symlink where the script's mounts go.
fn check_mount_points(contents: &Contents, base_disk: &Path, store_paths: &[String]) -> Result<(), JobError> {
    use crate::layer::flatten::Kind;
    let base_io = |e: std::io::Error| JobError::Base(BaseError::Io { path: base_disk.to_path_buf(), source: e });
    let mut disk = std::io::BufReader::with_capacity(1 << 14, std::fs::File::open(base_disk).map_err(base_io)?);
    for path in SCRIPT_MOUNTS.iter().copied().chain(store_paths.iter().map(String::as_str)) {
        let in_contents =
            |p: &[u8]| Ok(contents.tree.lookup(p).map(|i| matches!(contents.tree.inodes[i].kind, Kind::Dir(_))));
        let in_base = |p: &[u8]| crate::layer::erofs::lookup(&mut disk, p).map(|t| t.map(|t| t == libc::S_IFDIR));
        if let Some(at) = mount_point_blocked(path, in_contents, in_base).map_err(base_io)? {
            return Err(JobError::BadInput(format!(
                "{at} is not a directory in the image (contents over the base): cannot mount {path} there"
            )));
        }
    }
    Ok(())
}

/// Which of `paths` (and their parents) the base image already holds:
/// dockerTools leaves those out of the new layer.
fn base_store_paths(base: Option<&BaseImage>, paths: &[StorePath]) -> Result<HashSet<Vec<u8>>, JobError> {
    let Some(base) = base.filter(|_| !paths.is_empty()) else { return Ok(HashSet::new()) };
    let layers = (0..base.layers().len()).map(|i| base.open_layer(i)).collect::<Result<Vec<_>, _>>()?;
    crate::layer::store_paths::present_in_layers(paths, layers).map_err(JobError::BaseLayer)
}

/// The name of the base phase in the summary: whether the disk was made.
fn base_phase(disk: &BaseDisk) -> String {
    if disk.cached {
        "base (cached)".into()
    } else {
        "base".into()
    }
}

/// Run `req` in a guest described by `spec`.
pub fn run_as_root(spec: &GuestSpec, req: &RunAsRootRequest) -> Result<Summary, JobError> {
    let start = Instant::now();
    preflight(spec, req)?;
    let stop = Stop::within(start, spec.timeout);
    let workdir = Workdir::new()?;
    let prepared = prepare(spec, req, &workdir, stop)?;
    let mut phases = prepared.phases.clone();
    phases.push(("prepare".to_string(), start.elapsed().as_secs_f64()));
    stop.check()?;
    // The output's base layers do not depend on the new layer: they are
    // written while the guest runs, on a thread joined (and an unfinished
    // draft removed) whichever way this returns; abandoned, not waited
    // for, when the job ends early.
    let abandon = std::sync::atomic::AtomicBool::new(false);
    let abandoned = || abandon.load(std::sync::atomic::Ordering::SeqCst) || stop.now();
    let (outcome, result, info, host_phases) = std::thread::scope(|s| {
        let (base, abandoned) = (prepared.base.as_ref(), &abandoned);
        let begin = move || OutputDraft::begin(req.format, &req.out, base, &req.meta, abandoned);
        let draft = std::thread::Builder::new()
            .name("output-draft".into())
            .spawn_scoped(s, begin)
            .map_err(|e| JobError::Guest(format!("starting the output's thread: {e}")))?;
        // Abandoned once the job is over, however it ended (a panic too):
        // the scope then waits only for the draft's next read or chunk.
        let _abandon = AbandonOnDrop(&abandon);
        let outcome = run_job(&prepared.spec, workdir, prepared.task.clone())?;
        let result = check_outcome(&outcome, prepared.spec.timeout.as_secs(), prepared.spec.echo)?;
        let script_status = result.script_status.unwrap_or(-1);
        if script_status != 0 {
            return Err(JobError::ScriptFailed(script_status));
        }
        if let Some(dest) = &req.guest_merged_listing {
            std::fs::copy(outcome.xchg().join("merged.list"), dest)
                .map_err(|e| JobError::Guest(format!("merged listing: {e}")))?;
        }
        let (info, host_phases) = write_layer(&outcome, req, &prepared, stop, draft)?;
        Ok((outcome, result, info, host_phases))
    })?;
    let script_status = result.script_status.unwrap_or(-1);
    phases.extend(guest_phases(&outcome, &result));
    phases.extend(host_phases);
    phases.push(("total".into(), start.elapsed().as_secs_f64()));
    Ok(Summary {
        diff_id: info.diff_id.to_string(),
        size: info.size,
        out: req.out.clone(),
        format: req.format,
        phases,
        script_status,
        boot: Some(outcome.report.boot.word()),
    })
}

/// Sets its flag when dropped.
struct AbandonOnDrop<'a>(&'a std::sync::atomic::AtomicBool);

impl Drop for AbandonOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

/// What the guest gets for a run-as-root job, made on the host before it
/// boots.
#[derive(Debug)]
struct Prepared {
    base: Option<BaseImage>,
    disk: BaseDisk,
    /// The store paths the base image already has (left out of the layer).
    base_has: HashSet<Vec<u8>>,
    contents: Contents,
    /// The guest, with the base and contents disks.
    spec: GuestSpec,
    task: Task,
    /// The host phases so far (base disk, contents).
    phases: Vec<(String, f64)>,
}

/// The base image and its disk, the contents disk, the scripts as the
/// job's files (for the mailbox), the mount points checked, the task.
fn prepare(spec: &GuestSpec, req: &RunAsRootRequest, workdir: &Workdir, stop: Stop) -> Result<Prepared, JobError> {
    let base = match &req.from_image {
        Some(p) => {
            let img = BaseImage::open_remembering(p, &req.selector, Some(&cache_dir().join(VERIFIED_DIR)))?;
            if let Some(m) = img.selected().message() {
                eprintln!("rootlayer: {m}");
            }
            Some(img)
        }
        None => None,
    };
    let t = Instant::now();
    let disk = stop.judge(base_disk(base.as_ref(), workdir))?;
    let candidates = crate::layer::store_paths::with_paths(&req.store_paths, req.references.paths())
        .map_err(JobError::StorePaths)?;
    let base_has = base_store_paths(base.as_ref(), &candidates)?;
    let mut phases = vec![(base_phase(&disk), t.elapsed().as_secs_f64())];
    let mut files = vec![read_in(&req.script, "script")?];
    if let Some(p) = &req.extra_commands {
        files.push(read_in(p, "extra-commands")?);
    }
    let script = files[0].0.clone();
    let extra_commands = files.get(1).map(|(path, _)| path.clone());
    let bytes: usize = files.iter().map(|(_, b)| b.len()).sum();
    if bytes > Part::Files.max() {
        return Err(JobError::BadInput(format!(
            "--script and --extra-commands are {bytes} bytes together; at most {} MiB",
            Part::Files.max() >> 20
        )));
    }
    let t = Instant::now();
    let contents = Contents::gather(&req.contents, req.keep_contents_dirlinks).map_err(JobError::Contents)?;
    let mut spec = spec.clone();
    spec.files = files;
    spec.base_disk = Some(disk.path.clone());
    spec.contents_disk = stop.judge(contents_disk(&contents, workdir))?;
    if !contents.is_empty() {
        phases.push((format!("contents ({} files)", contents.files()), t.elapsed().as_secs_f64()));
    }
    let store_paths = spec
        .stores
        .iter()
        .map(|s| std::fs::canonicalize(&s.dir).map(|p| p.to_string_lossy().into_owned()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| JobError::BadInput(format!("--store: {e}")))?;
    check_mount_points(&contents, &disk.path, &store_paths)?;
    let task = Task::RunAsRoot(RunAsRoot {
        base: BASE_MOUNT.into(),
        contents: spec.contents_disk.as_ref().map(|_| CONTENTS_MOUNT.to_string()),
        script,
        extra_commands,
        store_paths,
        path: script_path(base.as_ref()),
        merged_listing: req.guest_merged_listing.as_ref().map(|_| guest_path("merged.list")),
    });
    Ok(Prepared { base, disk, base_has, contents, spec, task, phases })
}

/// The guest's phases: its boot (to the agent's ready line), the agent's
/// own, and what came after its last (its result, the kernel's sync and
/// power-off).
fn guest_phases(outcome: &JobOutcome, result: &JobResult) -> Vec<(String, f64)> {
    let boot = outcome.report.ready_at().map(|d| d.as_secs_f64()).unwrap_or(0.0);
    let boot_phase = match &outcome.report.boot {
        crate::vmm::BootPath::Restored { .. } => "boot (restored)",
        _ => "boot",
    };
    let mut phases = vec![(boot_phase.to_string(), boot)];
    let agent: Vec<(String, f64)> = result.phases.iter().filter(|(n, _)| n != "task").cloned().collect();
    let wall = outcome.report.wall.as_secs_f64();
    let finish = wall - boot - agent.iter().map(|(_, s)| s).sum::<f64>();
    phases.extend(agent);
    phases.push(("finish".into(), finish.max(0.0)));
    phases.push(("guest_total".into(), wall));
    phases
}

/// The new layer: the upper dir read straight off the scratch disk the
/// guest left (with the store paths), converted to the OCI layer, written
/// in the asked-for format (finishing `draft`, the output begun while the
/// guest ran); its digest and size, and the host phases ("write" includes
/// any wait for the draft).
fn write_layer(
    outcome: &JobOutcome,
    req: &RunAsRootRequest,
    p: &Prepared,
    stop: Stop,
    draft: std::thread::ScopedJoinHandle<'_, Result<OutputDraft, crate::image::ImageError>>,
) -> Result<(crate::layer::LayerInfo, Vec<(String, f64)>), JobError> {
    let t = Instant::now();
    let limit = p.spec.max_output.unwrap_or(u64::MAX);
    let store = (req.store_paths.as_slice(), &req.references, req.meta.base_json.as_ref());
    let read =
        read_upper(&outcome.workdir.disk(), (stop, limit), (&p.contents, &p.disk.path), store, p.base_has.clone());
    let (changes, mut files) = stop.judge(read)?;
    let mut phases = vec![("read_upper".to_string(), t.elapsed().as_secs_f64())];
    // The base tree with the layer's changes, for the listing (the changes
    // go into the layer next).
    let merged = match &req.merged_listing {
        Some(_) => {
            let (mut tree, staged) = crate::job::base::flatten(p.base.as_ref(), outcome.workdir.path())?;
            tree.apply(&changes).map_err(JobError::Layer)?;
            Some((tree, crate::job::base::open_staged(&staged)?))
        }
        None => None,
    };
    let t = Instant::now();
    let layer_tar = outcome.workdir.path().join("layer.tar");
    let opts = ConvertOptions { source_date_epoch: req.source_date_epoch, gzip: None };
    let write = |out: &mut dyn std::io::Write| changeset::write(changes, &mut files, out, &opts);
    let info = write_atomically(&layer_tar, &|| stop.now(), write);
    let info = stop.judge(info.map_err(|e| layer_error(e, &files.store)))?;
    phases.push(("convert".into(), t.elapsed().as_secs_f64()));
    if let (Some(dest), Some((tree, layers))) = (&req.merged_listing, merged) {
        let mut src = ListingFiles { layers, layer: &mut files };
        let listing =
            crate::layer::listing::of_tree(&tree, &mut src).map_err(|e| JobError::Layer(LayerError::Read(e)))?;
        std::fs::write(dest, listing)
            .map_err(|e| JobError::BadInput(format!("--merged-listing {}: {e}", dest.display())))?;
    }
    let t = Instant::now();
    let new_layer = NewLayer { tar: layer_tar, diff_id: info.diff_id, size: info.size };
    // A draft abandoned at the signal or the deadline failed of it: the
    // interruption or the timeout, not that failure.
    let draft = draft.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic));
    let draft = stop.judge(draft.map_err(JobError::from))?;
    draft.finish(p.base.as_ref(), &new_layer, &req.meta)?;
    phases.push(("write".into(), t.elapsed().as_secs_f64()));
    Ok((info, phases))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// What a layer has, for `mount_point_blocked`: `dirs` are
    /// directories, `others` anything else.
    fn layer<'a>(dirs: &'a [&str], others: &'a [&str]) -> impl FnMut(&[u8]) -> Result<Option<bool>, ()> + 'a {
        move |p: &[u8]| {
            let p = std::str::from_utf8(p).unwrap();
            Ok(if dirs.contains(&p) {
                Some(true)
            } else if others.contains(&p) {
                Some(false)
            } else {
                None
            })
        }
    }

    #[test]
    fn a_mount_point_is_blocked_by_the_topmost_non_directory() {
        let blocked = |path, c: (&[&str], &[&str]), b: (&[&str], &[&str])| {
            mount_point_blocked(path, layer(c.0, c.1), layer(b.0, b.1)).unwrap()
        };
        let none: &[&str] = &[];
        // Nothing there: the mount points' layer gives the directories.
        assert_eq!(blocked("/nix/store", (none, none), (none, none)), None);
        // The base's directories, and its symlink on the way.
        assert_eq!(blocked("/nix/store", (none, none), (&["nix"], none)), None);
        assert_eq!(blocked("/nix/store", (none, none), (none, &["nix"])), Some("/nix".into()));
        assert_eq!(blocked("/nix/store", (none, none), (&["nix"], &["nix/store"])), Some("/nix/store".into()));
        assert_eq!(blocked("/dev", (none, none), (none, &["dev"])), Some("/dev".into()));
        // The contents decide over the base: a directory hides a base file
        // (and what the base has below it), a file hides a base directory.
        assert_eq!(blocked("/nix/store", (&["nix"], none), (none, &["nix"])), None);
        assert_eq!(blocked("/nix/store", (&["nix"], none), (none, &["nix", "nix/store"])), None);
        assert_eq!(blocked("/nix/store", (none, &["nix"]), (&["nix", "nix/store"], none)), Some("/nix".into()));
        // Both directories: they merge, and the base's file below counts.
        assert_eq!(blocked("/nix/store", (&["nix"], none), (&["nix"], &["nix/store"])), Some("/nix/store".into()));
        // Where neither layer goes on, nothing below is asked.
        let mut asked = Vec::new();
        let r = mount_point_blocked::<()>(
            "/a/b/c",
            |_| Ok(None),
            |p| {
                asked.push(p.to_vec());
                Ok(None)
            },
        );
        assert_eq!((r, asked), (Ok(None), vec![b"a".to_vec()]));
    }

    #[test]
    fn host_phases_stop_at_the_jobs_timeout() {
        let long_ago = Instant::now() - Duration::from_secs(5);
        let stop = Stop::within(long_ago, Duration::from_secs(2));
        assert!(stop.now());
        assert!(matches!(stop.judge(Ok(())), Err(JobError::Timeout(2))));
        let dir = tempfile::tempdir().unwrap();
        let mut w = stop.file(&dir.path().join("out")).unwrap();
        assert!(std::io::Write::write_all(&mut w, b"x").is_err(), "the writer stops");
        let fresh = Stop::within(Instant::now(), Duration::from_secs(3600));
        assert!(!fresh.now() && fresh.judge(Ok(7)).is_ok_and(|v| v == 7));
    }
}
