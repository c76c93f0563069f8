//! rootlayer: run privileged container-image build steps (nixpkgs
//! dockerTools' `runAsRoot`) in a throwaway microVM, without root.
//!
//! - [`vmm`]: our KVM-based VMM (the only module that touches KVM);
//! - [`devices`]: what the guest sees (serial, i8042 reset, virtio), no KVM;
//! - [`exit`]: the process exit codes, a documented contract;
//! - [`job`]: the host/agent protocol (job.json, result.json), the
//!   `rootlayer-protocol` crate the agent shares;
//! - [`layer`], [`image`]: OCI layers and image formats, pure code;
//! - [`nar`]: Nix archives' hashes, for `closure-info` (buildImageWithNixDb).

pub mod devices;
pub mod exit;
#[cfg(any(test, feature = "fuzz"))]
pub mod fuzz;
pub mod image;
pub mod job;
pub mod layer;
pub mod nar;
pub mod persist;
pub mod seccomp;
pub mod signals;
pub mod vmm;

/// The host/agent protocol, shared with the agent as a crate of its own.
pub use rootlayer_protocol as protocol;
