//! The job the host hands the guest agent, and the result it hands back,
//! as JSON (`job.json`, `result.json`) through the job [`mailbox`], with
//! the files a job needs (its script, [`Job::files`]); the files it makes
//! (a listing) go through the exchange share.
//!
//! The host decides everything and writes it down once; the agent only
//! executes. Both the host crate (as `rootlayer::protocol`) and the agent depend
//! on this crate, so every type and literal they share is written once; it
//! depends on nothing but serde and holds no unsafe code.

#![forbid(unsafe_code)]

use serde::{Deserialize, Serialize};

pub mod listing;
pub mod mailbox;

/// The version of this protocol (job.json, result.json and the console
/// lines below). Each side refuses the other's files of another version:
/// an initramfs built by another rootlayer says so instead of failing to
/// parse. Bump it with any change to the types in this file.
pub const PROTOCOL_VERSION: u32 = 9;
/// The agent's first line: `rootlayer-agent VERSION ready (uptime ...)`.
pub const AGENT_READY_PREFIX: &str = "rootlayer-agent ";
pub const AGENT_READY_WORD: &str = " ready";
/// The agent's last line: `rootlayer-agent: exit status N`.
pub const AGENT_STATUS_PREFIX: &str = "rootlayer-agent: exit status ";
/// The agent's status for a failure of its own (not of a job's script).
pub const STATUS_INTERNAL: i32 = 70;
/// The agent's status when job.json is of another protocol version.
pub const STATUS_PROTOCOL: i32 = 71;

/// Environment variable (set on the kernel command line, handed to PID 1 by
/// the kernel) naming the virtio-fs tag of the exchange share.
pub const XCHG_TAG_ENV: &str = "ROOTLAYER_XCHG";
/// Where the agent mounts the exchange share.
pub const XCHG_MOUNT: &str = "/run/rootlayer/xchg";
/// Where the agent writes the job's files ([`Job::files`]).
pub const JOB_FILES_DIR: &str = "/run/rootlayer/job";
/// Where the agent mounts the scratch disk (ext4 made by the host).
pub const SCRATCH_MOUNT: &str = "/run/rootlayer/scratch";
/// The overlay's upper and work dirs: empty directories (0:0, 0755) in the
/// scratch disk's root, made by the host's formatter, so a job makes
/// nothing there before it mounts the overlay.
pub const SCRATCH_UPPER: &str = "upper";
pub const SCRATCH_WORK: &str = "work";
/// Environment variable (kernel command line) naming the scratch disk's
/// device: the agent mounts it read-only at [`SCRATCH_MOUNT`] before the
/// snapshot point, so that a restored job whose disk is the same
/// [`MountSource::Disk::fresh`] file system only remounts it read-write.
pub const SCRATCH_DEVICE_ENV: &str = "ROOTLAYER_SCRATCH";
/// Environment variable (kernel command line) naming the virtio-fs tag of
/// a read-only share the agent mounts at [`SHARE_AHEAD_MOUNT`] before the
/// snapshot point (the mount's one round trip, FUSE_INIT, is the same for
/// every job); a job that mounts that share read-only gets a bind mount of
/// it instead of a mount of its own (about 25 ms of emulated guest kernel).
pub const SHARE_AHEAD_ENV: &str = "ROOTLAYER_SHARE_AHEAD";
/// Where the agent mounts the share [`SHARE_AHEAD_ENV`] names.
pub const SHARE_AHEAD_MOUNT: &str = "/run/rootlayer/share-ahead";
/// Where the agent mounts the base image disk (EROFS made by the host; the
/// agent reads the path from job.json).
pub const BASE_MOUNT: &str = "/run/rootlayer/base";
/// Where the agent mounts the contents disk (EROFS of the merged
/// `--contents`, made by the host): the overlay's topmost lower dir.
pub const CONTENTS_MOUNT: &str = "/run/rootlayer/contents";
/// What the agent mounts in the script's root besides the stores (as
/// vmTools does): the guest's /dev and /sys, bound, and a fresh /proc. The
/// host refuses an image where one of them, or a store's path, is not a
/// directory (the mount would land elsewhere).
pub const SCRIPT_MOUNTS: [&str; 3] = ["/dev", "/proc", "/sys"];
/// The guest kernel's doorbell to the VMM (kernel patch 0005): the agent
/// writes an event number to it, the kernel passes it on to the VMM's port.
pub const VMM_EVENT_PATH: &str = "/sys/module/rootlayer_vmm/parameters/event";
/// Event: the agent has mounted its own file systems and waits for a job,
/// of which nothing is in the guest yet; the VMM may take its snapshot here.
pub const VMM_EVENT_READY: u32 = 1;
/// Event: the agent has read its job and mounted what it lists, before
/// anything of the job runs (for `rootlayer boot`, which has none: it is
/// past its ready line): a restored guest works.
pub const VMM_EVENT_STARTED: u32 = 2;
/// Event: the agent is done and everything it made has left the guest (its
/// result on the exchange share, its console drained, its disks written
/// out): the VMM ends the run as the i8042 reset would, a clean exit,
/// without the guest kernel's reboot path.
pub const VMM_EVENT_POWER_OFF: u32 = 3;
/// Bytes of fresh host entropy in every job.
pub const ENTROPY_BYTES: usize = 64;
/// What the agent says once it has added them and reseeded the RNG.
pub const ENTROPY_LINE: &str = "host entropy added, RNG reseeded";

/// Lowercase hex, as job.json carries bytes (the entropy) and the host's
/// digests and snapshot files write them.
pub mod hex {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";

    pub fn encode(bytes: &[u8]) -> String {
        let mut s = String::with_capacity(bytes.len() * 2);
        for b in bytes {
            s.push(char::from(DIGITS[usize::from(b >> 4)]));
            s.push(char::from(DIGITS[usize::from(b & 0xf)]));
        }
        s
    }

    /// The bytes of an even number of lowercase hex digits; None for
    /// anything else.
    pub fn decode(text: &str) -> Option<Vec<u8>> {
        let digits = text.as_bytes();
        if digits.len() % 2 != 0 {
            return None;
        }
        digits.chunks(2).map(|pair| Some((nibble(pair[0])? << 4) | nibble(pair[1])?)).collect()
    }

    fn nibble(c: u8) -> Option<u8> {
        match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            _ => None,
        }
    }
}

/// One job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Job {
    /// [`PROTOCOL_VERSION`] of the host that wrote it.
    pub protocol: u32,
    /// Mounted in order before the task runs.
    pub mounts: Vec<Mount>,
    pub task: Task,
    /// [`ENTROPY_BYTES`] bytes from the host's getrandom, hex: the agent
    /// mixes them into the guest's pool and reseeds it before anything else
    /// runs, so that guests restored from one snapshot never share RNG state.
    pub entropy: String,
    /// The host's wall clock when it wrote the job, in nanoseconds since
    /// the epoch: the guest clock is set forward to it if it is behind (a
    /// guest restored from a snapshot wakes at the time it was taken).
    pub host_time_ns: u128,
    /// Files the agent writes (mode 0755) before anything of the job runs,
    /// from the mailbox's [`mailbox::Part::Files`]: the script and the
    /// extra commands.
    #[serde(default)]
    pub files: Vec<JobFile>,
}

/// A file of the job, its bytes a span of the mailbox's files part.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobFile {
    /// Absolute guest path, under [`JOB_FILES_DIR`].
    pub path: String,
    pub offset: u64,
    pub len: u64,
}

impl JobFile {
    /// Its bytes in `files` (the mailbox's files part), if the span lies
    /// within it.
    pub fn bytes<'f>(&self, files: &'f [u8]) -> Option<&'f [u8]> {
        let start = usize::try_from(self.offset).ok()?;
        let end = start.checked_add(usize::try_from(self.len).ok()?)?;
        files.get(start..end)
    }
}

/// A file system to mount in the guest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Mount {
    pub source: MountSource,
    /// Absolute guest path; created when missing.
    pub target: String,
    pub read_only: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MountSource {
    /// A virtio-fs share, by tag.
    VirtioFs { tag: String },
    /// A virtio-blk disk, by device node (e.g. `/dev/vda`), with its file
    /// system type and its size in bytes: a restored guest learns a size
    /// that differs from the snapshot's through a config-change interrupt,
    /// and the agent waits until the kernel shows this one before mounting.
    ///
    /// `fresh`: the host's empty ext4 of `size` (`layer::ext4_format`,
    /// where the same size gives the same bytes), nothing written since: a
    /// read-only mount of the snapshot's disk of that size has read nothing
    /// this one does not hold, and can be reused.
    Disk {
        device: String,
        fstype: String,
        size: u64,
        #[serde(default)]
        fresh: bool,
    },
}

/// What the agent does once everything is mounted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Task {
    /// Nothing: mount, report, power off.
    None,
    /// The device check of the e2e tests: exercise the shares and the disk
    /// and report what happened.
    DeviceCheck(DeviceCheck),
    /// dockerTools' runAsRoot: base layers, overlay, script, upper tar.
    RunAsRoot(RunAsRoot),
    /// Device throughput for the benchmarks: read a file sequentially,
    /// write and fsync a file sequentially; seconds as observations.
    IoBench(IoBench),
}

/// Inputs of [`Task::IoBench`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IoBench {
    pub read_file: String,
    pub write_file: String,
    pub write_mib: u64,
}

/// Inputs of [`Task::RunAsRoot`]. Paths are guest paths; files the host
/// provides live in the exchange share.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunAsRoot {
    /// Where the base image is mounted (read-only EROFS, the layers
    /// flattened on the host): the overlay's only lower dir.
    pub base: String,
    /// Where the contents (dockerTools' `copyToRoot`, merged on the host
    /// into one read-only EROFS disk) are mounted: the overlay's topmost
    /// lower dir, over `base`. None without contents.
    pub contents: Option<String>,
    /// The script, run as root in a chroot of the merged tree.
    pub script: String,
    /// Run in the upper dir after the script, not chrooted.
    pub extra_commands: Option<String>,
    /// Read-only directories (stores) bound into the chroot at their own path.
    pub store_paths: Vec<String>,
    /// PATH for the script and the extra commands.
    pub path: String,
    /// Where to write a listing of the merged tree as the script left it
    /// (for tests comparing with an independent unpacker), if wanted.
    pub merged_listing: Option<String>,
}

/// Inputs of [`Task::DeviceCheck`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeviceCheck {
    /// A file in a read-only share to read back.
    pub read_file: String,
    /// A directory in a read-only share where every mutation must fail.
    pub read_only_dir: String,
    /// A file to write in the exchange share (relative to it).
    pub xchg_file: String,
    pub xchg_contents: String,
    /// A file to write and sync on the mounted disk.
    pub disk_file: String,
    pub disk_contents: String,
    /// Paths in a read-only share that would lead out of it on the host
    /// (`..`, absolute and relative symlinks): each is read, and what
    /// happened is reported as `escape:<path>`.
    #[serde(default)]
    pub escapes: Vec<String>,
}

/// What the agent reports.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct JobResult {
    /// [`PROTOCOL_VERSION`] of the agent that wrote it (0: an agent from
    /// before versioning).
    #[serde(default)]
    pub protocol: u32,
    /// 0 when the task succeeded.
    pub status: i32,
    /// The agent's own error, when it failed.
    pub error: Option<String>,
    /// Named phases and their wall time in seconds, in order.
    pub phases: Vec<(String, f64)>,
    /// Named observations (for checks), in order.
    pub observations: Vec<(String, String)>,
    /// The runAsRoot script's exit status (or 128 + signal).
    pub script_status: Option<i32>,
    /// Set when the scratch disk ran full, or the agent's own error was
    /// ENOSPC.
    pub disk_full: bool,
    /// Processes the guest kernel's OOM killer killed during the task, as
    /// the agent read them from the kernel's own log records.
    #[serde(default)]
    pub oom_kills: u32,
    /// The CPUs the guest kernel brought up (0: not reported).
    #[serde(default)]
    pub cpus_online: u32,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trips_and_refuses_what_is_not_lowercase_hex() {
        assert_eq!(hex::encode(&[0, 1, 0xfe, 0xff]), "0001feff");
        assert_eq!(hex::decode("0001feff").unwrap(), vec![0, 1, 0xfe, 0xff]);
        assert_eq!(hex::decode("").unwrap(), Vec::<u8>::new());
        for bad in ["abc", "zz", "+1", "FF", "é0"] {
            assert!(hex::decode(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn job_round_trips_through_json() {
        let job = Job {
            protocol: PROTOCOL_VERSION,
            mounts: vec![Mount {
                source: MountSource::VirtioFs { tag: "store0".into() },
                target: "/nix/store".into(),
                read_only: true,
            }],
            task: Task::DeviceCheck(DeviceCheck {
                read_file: "/nix/store/a".into(),
                read_only_dir: "/nix/store".into(),
                xchg_file: "out".into(),
                xchg_contents: "x".into(),
                disk_file: "/mnt/f".into(),
                disk_contents: "y".into(),
                escapes: vec!["/nix/store/../etc".into()],
            }),
            entropy: "00".repeat(ENTROPY_BYTES),
            host_time_ns: 1_700_000_000_123_456_789,
            files: vec![JobFile { path: format!("{JOB_FILES_DIR}/script"), offset: 0, len: 12 }],
        };
        let text = serde_json::to_string(&job).unwrap();
        assert!(text.contains("\"virtio_fs\""), "{text}");
        assert_eq!(serde_json::from_str::<Job>(&text).unwrap(), job);
    }

    #[test]
    fn a_job_file_is_its_span_of_the_files_or_nothing() {
        let files = b"0123456789";
        let f = |offset, len| JobFile { path: "/p".into(), offset, len };
        assert_eq!(f(2, 3).bytes(files), Some(&b"234"[..]));
        assert_eq!(f(0, 10).bytes(files), Some(&files[..]));
        assert_eq!(f(10, 0).bytes(files), Some(&b""[..]));
        for (offset, len) in [(0, 11), (9, 2), (11, 0), (u64::MAX, 1), (1, u64::MAX)] {
            assert_eq!(f(offset, len).bytes(files), None, "{offset} {len}");
        }
    }
}
