//! The layer engine: overlayfs upper dir <-> OCI image layer.
//!
//! Implements OCI image-spec `layer.md` ("Whiteouts", "Opaque Whiteout",
//! "Changeset over existing files", "Hardlinks", duplicate entries) against the
//! overlayfs on-disk format (`Documentation/filesystems/overlayfs.rst`:
//! whiteouts are 0/0 character devices or `overlay.whiteout` files, opaque
//! directories carry `overlay.opaque=y`).
//!
//! - [`changeset`]: the one model of a new layer (paths with their inode,
//!   whiteouts, opaque directories, hardlinks, file data by reference) and
//!   the one writer of OCI layers: deterministic, its diff_id computed while
//!   writing. Every source below decodes its own form into it.
//! - [`convert`]: the tar of an upper dir (as the guest agent used to stream
//!   it, with `trusted.overlay.*` xattrs, whiteout devices and hardlinks) ->
//!   a changeset -> the layer.
//! - [`flatten`] + [`erofs`]: a base image's layers -> one merged tree ->
//!   the read-only EROFS disk the guest mounts as its lower dir; the same
//!   tree as a changeset is `export`'s layer.
//! - [`upper`]: the overlay upper dir read off the scratch disk's image the
//!   guest left (through [`ext4`], a bounded reader), into a changeset;
//!   [`ext4_format`] makes that disk's ext4 (empty upper and work dirs)
//!   before the job.
//! - [`references`]: the Nix store paths the new layer's bytes name (Nix's
//!   reference scan) and their closure, from `exportReferencesGraph` files.
//! - [`store_paths`]: host store paths (a Nix closure) added to the new
//!   layer whole, as dockerTools adds them.
//! - [`unpack`]: an OCI layer -> a directory usable as an overlay lower dir
//!   (whiteouts become 0/0 devices, opaque markers an xattr); the tests'
//!   oracle for the converter, and fuzzed.
//!
//! One set of rules ([`rules`]) serves both directions: path normalization,
//! the whiteout names, which xattrs a layer carries, and the entry order.

#![forbid(unsafe_code)]

pub mod changeset;
pub mod convert;
pub mod erofs;
pub mod ext4;
pub mod ext4_format;
pub mod flatten;
pub mod listing;
pub mod references;
pub mod rules;
pub mod store_paths;
pub mod tar_guard;
/// Test support: the layer applied the overlayfs way, the independent
/// reader the crosscheck tests and the `layer_unpack` fuzz target hold the
/// converter's layers against (rootlayer itself flattens base images on
/// the host, [`flatten`]).
#[cfg(any(test, feature = "fuzz"))]
pub mod unpack;
pub mod upper;
mod writer;

#[cfg(test)]
mod bench_tests;
#[cfg(test)]
mod crosscheck_tests;
#[cfg(test)]
mod test_util;

pub use convert::{
    convert, convert_file_to_path, convert_seekable, stopped, write_atomically, ConvertOptions, LayerInfo, Stoppable,
};
#[cfg(any(test, feature = "fuzz"))]
pub use unpack::{unpack, UnpackOptions};

mod error;
pub(crate) use error::show;
pub use error::LayerError;
