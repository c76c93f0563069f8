//! The job the host hands the guest agent, and the result it hands back,
//! as JSON files in the exchange share (`job.json`, `result.json`).
//!
//! The host decides everything and writes it down once; the agent only
//! executes. This file is compiled into both crates (the agent includes it
//! with `#[path]`), so it depends on nothing but serde.

use serde::{Deserialize, Serialize};

/// Environment variable (set on the kernel command line, handed to PID 1 by
/// the kernel) naming the virtio-fs tag of the exchange share.
pub const XCHG_TAG_ENV: &str = "ROOTLAYER_XCHG";
/// Where the agent mounts the exchange share.
pub const XCHG_MOUNT: &str = "/run/rootlayer/xchg";
pub const JOB_FILE: &str = "job.json";
pub const RESULT_FILE: &str = "result.json";

/// One job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Job {
    /// Mounted in order before the task runs.
    pub mounts: Vec<Mount>,
    pub task: Task,
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
    /// system type.
    Disk { device: String, fstype: String },
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
}

/// What the agent reports.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct JobResult {
    /// 0 when the task succeeded.
    pub status: i32,
    /// The agent's own error, when it failed.
    pub error: Option<String>,
    /// Named phases and their wall time in seconds, in order.
    pub phases: Vec<(String, f64)>,
    /// Named observations (for checks), in order.
    pub observations: Vec<(String, String)>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_round_trips_through_json() {
        let job = Job {
            mounts: vec![Mount {
                source: MountSource::VirtioFs {
                    tag: "store0".into(),
                },
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
            }),
        };
        let text = serde_json::to_string(&job).unwrap();
        assert!(text.contains("\"virtio_fs\""), "{text}");
        assert_eq!(serde_json::from_str::<Job>(&text).unwrap(), job);
    }
}
