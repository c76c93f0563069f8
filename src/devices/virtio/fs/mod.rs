//! virtio-fs (virtio spec 5.11): host directories shared with the guest,
//! served in-process by fuse-backend-rs's FUSE server and passthrough file
//! system, without privileges.
//!
//! - [`device`]: config space (tag, one request queue), activation, and the
//!   queue loop that hands each descriptor chain to the FUSE server.
//! - [`request`]: checks of a chain before the server reads it.
//! - [`read_only`]: the wrapper that makes a share read-only (EROFS for every
//!   mutating request, ENOSYS for anything unknown).
//! - [`host_user`]: every request runs as the host process's user, so the
//!   device works unprivileged and guest-created files belong to that user;
//!   it also charges what the guest adds to a read-write share against the
//!   share's [`limit`].

mod device;
mod host_user;
pub mod limit;
mod read_only;
mod request;
#[cfg(test)]
mod tests;

pub use device::{Fs, FsError, QUEUE_SIZE, TAG_LEN};
pub use limit::OutputLimit;
