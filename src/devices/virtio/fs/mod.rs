//! virtio-fs (virtio spec 5.11): host directories shared with the guest,
//! served in-process by fuse-backend-rs's FUSE server and passthrough file
//! system, without privileges.
//!
//! - [`device`]: config space (tag, one request queue), activation, and the
//!   handler that gives each descriptor chain the queues are drained of
//!   ([`super::queue::drain`]) to the FUSE server.
//! - [`request`]: checks of a chain before the server reads it.
//! - [`policy`]: the one wrapper around the passthrough, serving a share as
//!   its [`policy::Policy`] says: read-only (EROFS for every mutating
//!   request, ENOSYS for anything unknown) or read-write (what the guest adds
//!   charged against the share's [`limit`]); either way every request runs
//!   as the host process's user, so the device works unprivileged and
//!   guest-created files belong to that user.
//! - [`store`]: the read-only shares' file system, which names inodes by
//!   path and holds no host descriptor between requests (any number of
//!   files under any descriptor limit); the exchange share keeps the
//!   passthrough.

mod device;
pub mod limit;
mod policy;
mod request;
pub mod store;
#[cfg(test)]
mod tests;

pub use device::{Fs, FsError, QUEUE_SIZE, TAG_LEN};
pub use limit::OutputLimit;
