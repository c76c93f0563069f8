//! Container images in and out, on the host, without a VM.
//!
//! In: the base image a runAsRoot step starts from ([`BaseImage::open`]):
//! - a docker-archive (`docker save`, `skopeo copy docker-archive:`, nixpkgs
//!   `buildImage`), plain, gzip or zstd, described by `manifest.json`
//!   ([Docker image spec v1.2, "Combined Image JSON + Filesystem Changeset
//!   Format"](https://github.com/moby/moby/blob/v20.10.0/image/spec/v1.2.md)),
//!   or in the older layout with only `repositories` and `<id>/json` parent
//!   chains;
//! - an OCI image layout, as a directory or a tar (`oci-layout`,
//!   `index.json`, `blobs/`; [image-spec
//!   `image-layout.md`](https://github.com/opencontainers/image-spec/blob/v1.1.0/image-layout.md)),
//!   with uncompressed, gzip or zstd layers.
//!
//! Every digest the archive states is verified when it is opened, and again
//! when a layer is streamed ([`BaseImage::open_layer`]).
//!
//! Out ([`write_output`]): the new layer as nixpkgs `mkRootLayer` writes it
//! (`layer.tar`, `json`, `VERSION`, plus `layer.sha256`), or the base image
//! with the new layer appended as a docker-archive or an OCI image layout.
//! Outputs are staged under a temporary name next to the output path and
//! renamed into place only when complete.

mod archive;
mod compression;
pub mod created;
pub(crate) mod digest;
mod docker;
mod error;
mod oci;
mod read;
mod select;
mod types;
mod write;

pub use digest::{fingerprint, settled_fingerprint, Sha256Digest};
pub use error::ImageError;
pub use read::{BaseImage, BaseLayer, MAX_LAYERS};
pub use select::{Selected, Selector};
pub use types::SourceFormat;
pub use write::{write_output, ArchiveDraft, ImageMeta, NewLayer, OciDraft, OutputDraft, OutputFormat};
