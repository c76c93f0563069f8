//! Why a job failed, with the exit code each cause maps to: the one map
//! from a job's errors (the VMM's included) to the process exit code.

use super::base::BaseError;
use super::contents::ContentsError;
use super::GuestError;
use crate::exit::Exit;
use crate::image::ImageError;
use crate::layer::LayerError;
use crate::vmm::arch::boot::BootError;
use crate::vmm::VmmError;

/// Why a job failed, with the exit code it maps to.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    #[error("{0}")]
    BadInput(String),
    #[error(transparent)]
    Image(#[from] ImageError),
    #[error(transparent)]
    Run(#[from] GuestError),
    #[error("the script failed with exit status {0}; nothing written")]
    ScriptFailed(i32),
    #[error("the guest kernel panicked: {0}")]
    GuestPanic(String),
    #[error("the guest ran out of memory (raise --mem-size)")]
    GuestOutOfMemory,
    #[error("the scratch disk is full (raise --disk-size)")]
    DiskFull,
    #[error("the guest wrote more than --max-output ({} MiB) back to the host (raise it); nothing written", .0 >> 20)]
    OutputTooLarge(u64),
    #[error("timeout: the job did not finish within {0}s")]
    Timeout(u64),
    #[error("interrupted: the guest was stopped and temporary files removed")]
    Interrupted,
    #[error("the guest failed: {0}")]
    Guest(String),
    #[error("converting the upper directory into a layer: {0}")]
    Layer(#[from] LayerError),
    /// A base layer that cannot be flattened (hostile paths and the like).
    #[error("flattening the base image: {0}")]
    BaseLayer(#[source] LayerError),
    #[error(transparent)]
    Base(BaseError),
    #[error(transparent)]
    Contents(ContentsError),
    /// The scratch disk the guest left cannot be read as the upper dir.
    #[error("reading the new layer off the scratch disk: {0}")]
    Scratch(#[source] crate::layer::ext4::Ext4Error),
    /// A `--store-paths` entry that cannot be added to the layer.
    #[error("adding --store-paths to the layer: {0}")]
    StorePaths(#[source] LayerError),
    /// What the script left that a layer cannot hold: its doing, not ours.
    #[error("the script's changes cannot be written as an OCI layer: {0}; nothing written")]
    Unrepresentable(#[source] LayerError),
}

impl JobError {
    pub fn exit(&self) -> Exit {
        match self {
            JobError::BadInput(_) => Exit::BadInput,
            JobError::Image(ImageError::OutputExists(_)) => Exit::BadInput,
            JobError::Image(ImageError::Io { .. }) => Exit::Internal,
            JobError::Image(_) => Exit::BadInput,
            JobError::Run(GuestError::Vmm(e)) => vmm_exit(e),
            JobError::Run(GuestError::Store { .. } | GuestError::Protocol { .. } | GuestError::AgentProtocol(_)) => {
                Exit::BadInput
            }
            JobError::Run(_) => Exit::Internal,
            JobError::ScriptFailed(_) => Exit::ScriptFailed,
            JobError::GuestPanic(_) => Exit::GuestPanic,
            JobError::GuestOutOfMemory => Exit::GuestOutOfMemory,
            JobError::DiskFull => Exit::DiskFull,
            JobError::OutputTooLarge(_) => Exit::OutputTooLarge,
            JobError::Timeout(_) => Exit::Timeout,
            JobError::Interrupted => Exit::Interrupted,
            JobError::Unrepresentable(_) => Exit::Unrepresentable,
            JobError::BaseLayer(LayerError::Read(_) | LayerError::Write(_) | LayerError::Spool(_)) => Exit::Internal,
            JobError::BaseLayer(_) => Exit::BadInput,
            JobError::Base(BaseError::TooLarge { .. }) => Exit::BadInput,
            JobError::Base(_) => Exit::Internal,
            JobError::Contents(ContentsError::Disk(LayerError::Write(_))) => Exit::Internal,
            JobError::Contents(_) => Exit::BadInput,
            JobError::StorePaths(LayerError::Write(_)) => Exit::Internal,
            JobError::StorePaths(_) => Exit::BadInput,
            JobError::Scratch(crate::layer::ext4::Ext4Error::Socket(_)) => Exit::Unrepresentable,
            JobError::Scratch(_) => Exit::Internal,
            JobError::Guest(_) | JobError::Layer(_) => Exit::Internal,
        }
    }
}

impl From<BaseError> for JobError {
    fn from(e: BaseError) -> Self {
        match e {
            BaseError::Image(e) => JobError::Image(e),
            BaseError::Layer(e) => JobError::BaseLayer(e),
            other => JobError::Base(other),
        }
    }
}

/// The exit code of a VMM error, the same for every command: what the user
/// gave (memory size, kernel, initramfs) is bad input, KVM out of reach its
/// own code; writing the boot information into guest memory that was just
/// allocated, and the rest, is ours.
fn vmm_exit(e: &VmmError) -> Exit {
    match e {
        VmmError::KvmUnavailable(_) => Exit::KvmUnavailable,
        VmmError::MemSize { .. } | VmmError::MissingFile { .. } => Exit::BadInput,
        VmmError::Boot(BootError::Memory(_)) => Exit::Internal,
        VmmError::Boot(_) => Exit::BadInput,
        _ => Exit::Internal,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_the_script_left_that_no_layer_holds_is_its_exit_8_by_type() {
        use crate::layer::ext4::Ext4Error;
        let socket = JobError::Scratch(Ext4Error::Socket("run/daemon.sock".into()));
        assert_eq!(socket.exit(), Exit::Unrepresentable);
        // A disk rootlayer does not format so is ours, whatever it names.
        let other = JobError::Scratch(Ext4Error::Unsupported("a socket of a feature".into()));
        assert_eq!(other.exit(), Exit::Internal);
    }
}
