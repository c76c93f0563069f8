//! Snapshots of the booted, idle guest: boot once, restore after.
//!
//! The guest that every job boots is the same up to the agent's READY
//! doorbell (kernel patch 0005): the kernel has probed the fixed set of
//! devices, the agent has mounted its own file systems and the scratch
//! disk read-only (a fresh scratch disk of the same size holds the same
//! bytes: the agent reuses the mount only then, and lets it go otherwise,
//! writing nothing), and nothing of any job is in the guest yet. The first job with no usable snapshot boots
//! cold; at READY the vCPU pauses, the VMM writes the machine down
//! ([`MachineState`]: vCPU, irqchips, PIT, clock, serial, every virtio-mmio
//! transport, the keeper of extended register state) and guest memory, and
//! the same guest goes on with its job. Later jobs map the memory file
//! private (copy on write: the file never changes), load the state, attach
//! their own backing files to the same devices, and go on from READY.
//!
//! A snapshot is a cache, never a source of truth ([`file`]): it is found
//! by a [`Key`] naming everything that shaped the guest, checked (format,
//! key, checksums) before use, and any doubt means a cold boot.
//!
//! Like Firecracker's (`vstate/vcpu.rs`, `vstate/vm.rs`), the pause happens
//! at an exit whose I/O KVM has completed (an `immediate_exit` KVM_RUN
//! after the doorbell's OUT), so the saved registers hold no half-done
//! instruction.

pub mod digests;
pub mod file;
pub mod lock;
pub mod state;

use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// Bump when anything in a snapshot file, or in how a restored guest is
/// put together, changes meaning.
pub const FORMAT_VERSION: u32 = 3;

/// What identifies the guest a snapshot holds. Two guests with equal keys
/// are the same machine at READY; the file name is a digest of it, and the
/// whole key is in the file and compared on load.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Key {
    pub format: u32,
    /// This rootlayer: its version and its executable (path, size, mtime),
    /// so that a rebuilt VMM never restores another build's state.
    pub rootlayer: String,
    pub kernel_sha256: String,
    pub initrd_sha256: String,
    /// The whole kernel command line, device announcements included.
    pub cmdline: String,
    pub mem_mib: u64,
    pub vcpus: u32,
    /// The virtio devices in bus order.
    pub devices: Vec<DeviceKey>,
    /// What the host's KVM gives the guest.
    pub host: HostKey,
}

/// One virtio device as the guest's driver saw it at probe.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceKey {
    pub device_type: u32,
    pub features: u64,
    pub queues: Vec<u16>,
}

/// The host side of the machine: a snapshot taken on another kind of host,
/// CPU or TSC frequency would restore wrong registers or a wrong clock.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostKey {
    pub kind: String,
    /// sha256 of the CPUID entries the vCPU gets.
    pub cpuid_sha256: String,
    pub tsc_khz: u32,
    /// XCR0 features the VMM keeps per guest task, and its XSAVE area size.
    pub kept_mask: u64,
    pub xsave_bytes: usize,
}

impl Key {
    /// The snapshot's file name in the cache directory.
    pub fn file_name(&self) -> String {
        let text = serde_json::to_vec(self).expect("a key serialises");
        format!("{}.snap", &sha256_hex(&text)[..32])
    }
}

/// Where snapshots live and whether to use them, for one run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SnapshotMode {
    /// Boot cold; take no snapshot (`--no-snapshot`).
    Off,
    /// Restore from the snapshot in this directory, else boot cold and
    /// take one there.
    Use(PathBuf),
    /// Boot cold and take a snapshot in this directory (after a restore
    /// from there failed: the file is gone, the next job retakes it).
    Take(PathBuf),
}

/// Which way a run's guest came up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BootPath {
    /// Cold boot, snapshots off.
    Cold,
    /// Cold boot; the snapshot was taken at READY (its size on disk in
    /// bytes and the pause it cost), or could not be (why).
    Took {
        file: PathBuf,
        disk_bytes: u64,
        pause: std::time::Duration,
    },
    TakeFailed(String),
    /// Cold boot because the guest never rang READY (a kernel without the
    /// doorbell) while a snapshot was wanted.
    NotReady,
    /// Restored from this snapshot, in this long (load, check, map, set).
    Restored {
        file: PathBuf,
        restore: std::time::Duration,
    },
}

impl BootPath {
    /// One word for `--json`: `cold`, `snapshot-taken`, `restored`.
    pub fn word(&self) -> &'static str {
        match self {
            BootPath::Took { .. } => "snapshot-taken",
            BootPath::Restored { .. } => "restored",
            BootPath::Cold | BootPath::TakeFailed(_) | BootPath::NotReady => "cold",
        }
    }

    /// One line for `rootlayer boot` and the job summary.
    pub fn describe(&self) -> String {
        match self {
            BootPath::Cold => "cold boot (snapshots off)".into(),
            BootPath::Took { file, disk_bytes, pause } => format!(
                "cold boot; snapshot taken ({} MiB on disk, guest paused {:.2}s): {}",
                disk_bytes.div_ceil(1 << 20),
                pause.as_secs_f64(),
                file.display()
            ),
            BootPath::TakeFailed(why) => format!("cold boot; no snapshot taken: {why}"),
            BootPath::NotReady => "cold boot; the guest never offered a snapshot point".into(),
            BootPath::Restored { file, restore } => {
                format!("restored from snapshot in {:.3}s: {}", restore.as_secs_f64(), file.display())
            }
        }
    }
}

/// The whole machine at READY but for guest memory.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MachineState {
    /// Every vCPU, in index order (the boot processor first).
    pub vcpus: Vec<state::VcpuState>,
    pub vm: state::VmState,
    pub serial: crate::devices::serial::SerialState,
    pub transports: Vec<crate::devices::virtio::mmio::TransportState>,
    /// The per-task extended state the VMM keeps (emulated KVM only).
    pub keeper: Option<super::xstate::KeeperState>,
}

/// Errors taking or restoring a snapshot.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("KVM: {what}")]
    Kvm { what: &'static str, source: kvm_ioctls::Error },
    #[error("KVM set {got} of {want} MSRs (first refused: {first:#x})")]
    Msrs { got: usize, want: usize, first: u32 },
    #[error("device {index}: {source}")]
    Device { index: usize, source: crate::devices::virtio::mmio::MmioError },
    #[error("the snapshot has {snapshot} virtio devices, this guest {ours}")]
    DeviceCount { snapshot: usize, ours: usize },
    #[error("pausing the vCPUs: {0}")]
    Pause(String),
    #[error("the snapshot has {snapshot} vCPUs, this guest {ours}")]
    VcpuCount { snapshot: usize, ours: usize },
    #[error("the snapshot's extended-state keeper does not match this guest's (one on emulated KVM only)")]
    KeeperMismatch,
    #[error(transparent)]
    Xstate(#[from] super::xstate::XstateError),
    #[error("the snapshot's XSAVE area is {got} bytes, this vCPU's {want}")]
    XsaveSize { got: usize, want: usize },
    #[error("share {index} answered more than FUSE_INIT before the guest rang READY: not snapshotting a guest that saw a job")]
    ShareUsed { index: usize },
    #[error("the snapshot's serial port state is not one a UART can be in")]
    Serial,
    #[error("mapping guest memory from the snapshot")]
    Map(#[source] vm_memory::mmap::MmapRegionError),
    #[error(transparent)]
    File(#[from] file::FileError),
}

/// Make `dir` (the snapshot directory, or one inside it) and its missing
/// parents, mode 0700: what is in it is this user's alone.
pub(crate) fn make_dir(dir: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)
}

/// The sha256 of `bytes`, hex.
pub(crate) fn sha256_hex(bytes: &[u8]) -> String {
    crate::image::Sha256Digest::of(bytes).hex()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> Key {
        Key {
            format: FORMAT_VERSION,
            rootlayer: "0.1.0 /bin/rootlayer 1 2".into(),
            kernel_sha256: "aa".into(),
            initrd_sha256: "bb".into(),
            cmdline: "console=ttyS0".into(),
            mem_mib: 512,
            vcpus: 1,
            devices: vec![DeviceKey { device_type: 2, features: 1 << 32, queues: vec![256] }],
            host: HostKey {
                kind: "emulated".into(),
                cpuid_sha256: "cc".into(),
                tsc_khz: 2_000_000,
                kept_mask: 0xe4,
                xsave_bytes: 4096,
            },
        }
    }

    #[test]
    fn every_part_of_the_key_names_another_file() {
        let base = key().file_name();
        assert!(base.ends_with(".snap") && base.len() == 37, "{base}");
        type Change = Box<dyn Fn(&mut Key)>;
        let changes: Vec<Change> = vec![
            Box::new(|k| k.initrd_sha256 = "bc".into()),
            Box::new(|k| k.kernel_sha256 = "ab".into()),
            Box::new(|k| k.mem_mib = 1024),
            Box::new(|k| k.vcpus = 2),
            Box::new(|k| k.cmdline.push_str(" quiet")),
            Box::new(|k| k.devices[0].queues[0] = 128),
            Box::new(|k| k.host.tsc_khz += 1),
            Box::new(|k| k.rootlayer.push('x')),
        ];
        for change in changes {
            let mut k = key();
            change(&mut k);
            assert_ne!(k.file_name(), base, "{k:?}");
        }
        assert_eq!(key().file_name(), base, "stable");
    }
}
