//! The host's pipeline of a job, from what the CLI asked to its verdict:
//!
//! - [`host`]: the process and its cache (trusted only if the user's own),
//!   where snapshots live;
//! - [`base`], [`contents`]: the base image and `--contents` as read-only
//!   EROFS disks, flattened and merged on the host;
//! - [`guest`]: one guest for one job: the exchange share, the scratch
//!   disk, job.json, the machine run (restored, or cold as a fallback),
//!   result.json;
//! - [`run_as_root`], [`export`]: the commands' pipelines (the new layer
//!   read off the scratch disk and written; a flattened image);
//! - [`verdict`]: the one judgement of a guest's run, and what the CLI
//!   says of a finished command;
//! - [`error`]: why a job failed, and the exit code of each cause.

pub mod base;
pub mod contents;
pub mod error;
pub mod export;
pub mod guest;
pub mod host;
pub mod run_as_root;
mod stop;
pub mod verdict;
pub mod workdir;

pub use error::JobError;
pub use guest::{
    make_scratch_disk, parse_result, run_job, run_machine, GuestError, GuestSpec, JobOutcome, Store, BASE_DEVICE,
    CONTENTS_DEVICE, SCRATCH_DEVICE, SCRATCH_MOUNT, SHARE_SLOTS, XCHG_TAG,
};
pub use host::{
    cache_dir, check_cache_dir, default_initrd, default_kernel, raise_nofile_limit, restrict_umask, snapshot_dir,
    snapshot_mode, VERIFIED_DIR,
};
pub use workdir::Workdir;
