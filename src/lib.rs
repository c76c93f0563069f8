//! rootlayer: run privileged container-image build steps (nixpkgs
//! dockerTools' `runAsRoot`) in a throwaway microVM, without root.
//!
//! - [`vmm`]: our KVM-based VMM (the only module that touches KVM);
//! - [`devices`]: what the guest sees (serial, i8042 reset, virtio), no KVM;
//! - [`exit`]: the process exit codes, a documented contract.

pub mod devices;
pub mod exit;
pub mod image;
pub mod layer;
pub mod vmm;
