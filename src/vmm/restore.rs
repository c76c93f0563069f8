//! Coming back from a snapshot: which snapshot this guest is (its [`Key`]),
//! finding it (waiting, bounded, for another job that is taking it right
//! now), and guest memory mapped from it. The machine state goes back
//! through [`Machine::restore`](super::machine::Machine::restore).

use super::config::VmConfig;
use super::machine::Host;
use super::snapshot::{self, file::Loaded, lock::TakeLock, DeviceKey, Key, SnapshotError, SnapshotMode};
use kvm_ioctls::VcpuFd;
use std::path::PathBuf;
use std::time::Instant;
use vm_memory::{GuestAddress, GuestMemoryMmap};

/// What a run does about snapshots, decided before its memory exists.
#[derive(Debug, Default)]
pub(super) struct Plan {
    /// Where the snapshot lives and which one this guest is (None: no
    /// snapshot wanted, or the key could not be made).
    pub target: Option<(PathBuf, Key)>,
    /// The snapshot to restore from.
    pub loaded: Option<Loaded>,
    /// Why the guest boots cold although a snapshot was wanted: said once,
    /// when the cold boot is under way (not before an input error).
    pub cold_because: Option<String>,
    /// Held while this guest takes the snapshot no other job is taking.
    pub take_lock: Option<TakeLock>,
}

/// Decide how the guest comes up. The time spent waiting for another job's
/// snapshot is not this guest's: `start` moves forward by it.
pub(super) fn plan(config: &VmConfig, cmdline: &str, host: &Host, vcpu: &VcpuFd, start: &mut Instant) -> Plan {
    let (dir, try_restore) = match &config.snapshot {
        SnapshotMode::Off => return Plan::default(),
        SnapshotMode::Use(dir) => (dir.clone(), true),
        SnapshotMode::Take(dir) => (dir.clone(), false),
    };
    // A kernel or initramfs that cannot be read is the cold boot's to
    // report, in its words.
    let Ok(key) = key(config, cmdline, host.key(vcpu), &dir) else { return Plan::default() };
    let mut plan = Plan::default();
    if try_restore {
        let path = dir.join(key.file_name());
        let mut loaded = snapshot::file::load(&path, &key);
        let mut lock = None;
        if matches!(loaded, Err(snapshot::file::FileError::Missing)) {
            // Another job may be taking it right now: wait for that one
            // (its time is not this guest's), then look again.
            let claim = snapshot::lock::claim(&dir, &key.file_name(), snapshot::lock::TAKE_WAIT);
            *start += claim.waited();
            loaded = snapshot::file::load(&path, &key);
            lock = claim.into_lock();
        }
        match loaded {
            Ok(loaded) => plan.loaded = Some(loaded),
            Err(e) => {
                plan.cold_because = Some(e.to_string());
                plan.take_lock = lock;
            }
        }
    }
    plan.target = Some((dir, key));
    plan
}

/// The snapshot key of the guest `config` describes (its kernel's and
/// initramfs's digests remembered in the snapshot directory `dir`).
fn key(config: &VmConfig, cmdline: &str, host: snapshot::HostKey, dir: &std::path::Path) -> std::io::Result<Key> {
    let digest = |path: &std::path::Path| snapshot::digests::sha256_of_file(dir, path);
    let exe = std::env::current_exe().ok();
    let meta = exe.as_ref().and_then(|e| std::fs::metadata(e).ok());
    let rootlayer = format!(
        "{} {} {} {}",
        env!("CARGO_PKG_VERSION"),
        exe.as_ref().map_or_else(String::new, |e| e.display().to_string()),
        meta.as_ref().map_or(0, std::os::unix::fs::MetadataExt::size),
        meta.as_ref().map_or(0, |m| m
            .modified()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_nanos())),
    );
    Ok(Key {
        format: snapshot::FORMAT_VERSION,
        rootlayer,
        kernel_sha256: digest(&config.kernel)?,
        initrd_sha256: match &config.initrd {
            Some(p) => digest(p)?,
            None => String::new(),
        },
        cmdline: cmdline.to_string(),
        mem_mib: config.mem_mib,
        vcpus: u32::from(config.cpus),
        devices: config
            .virtio
            .iter()
            .map(|d| DeviceKey {
                device_type: d.device_type(),
                features: d.features(),
                queues: d.queue_max_sizes().to_vec(),
            })
            .collect(),
        host,
    })
}

/// Guest memory from a snapshot: the file's memory image mapped private,
/// so that the guest's writes are its own and the file never changes.
pub(super) fn memory(loaded: &Loaded, bytes: usize) -> Result<GuestMemoryMmap, SnapshotError> {
    use vm_memory::mmap::{GuestRegionMmap, MmapRegionBuilder};
    let file = loaded.file.try_clone().map_err(|e| {
        SnapshotError::File(snapshot::file::FileError::Io { what: "reopening the snapshot", source: e })
    })?;
    let region = MmapRegionBuilder::new(bytes)
        .with_file_offset(vm_memory::FileOffset::new(file, loaded.mem_offset))
        .with_mmap_prot(libc::PROT_READ | libc::PROT_WRITE)
        .with_mmap_flags(libc::MAP_PRIVATE | libc::MAP_NORESERVE)
        .build()
        .map_err(SnapshotError::Map)?;
    let region = GuestRegionMmap::new(region, GuestAddress(0)).expect("one region at 0 fits");
    Ok(GuestMemoryMmap::from_regions(vec![region]).expect("one region"))
}
