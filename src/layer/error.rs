//! The layer engine's error type.

use std::io;

/// Everything that can go wrong converting or applying a layer. Messages name
/// the entry (its path as found in the archive).
#[derive(Debug, thiserror::Error)]
pub enum LayerError {
    #[error("Reading the input archive")]
    Read(#[source] io::Error),
    /// A bound of [`super::tar_guard`]: the archive is hostile or broken.
    #[error("The layer's archive was refused: {0}")]
    Refused(String),
    #[error("Writing the layer")]
    Write(#[source] io::Error),
    #[error("Spooling file contents to a temporary file")]
    Spool(#[source] io::Error),
    #[error("Entry {path}: reading it from the archive")]
    Entry {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("Entry {path}: invalid path ({reason})")]
    InvalidPath { path: String, reason: &'static str },
    #[error("Entry {path}: a user file named .wh.* cannot be represented in an OCI layer")]
    UserWhiteoutName { path: String },
    #[error(
        "Entry {path}: overlay xattr {xattr} is not supported (mount the overlay without redirect_dir and metacopy)"
    )]
    OverlayFeature { path: String, xattr: String },
    #[error("Entry {path}: duplicate path")]
    Duplicate { path: String },
    #[error("Entry {path}: parent {parent} is not a directory")]
    NotADirectory { path: String, parent: String },
    #[error("Entry {path}: parent {parent} is a symlink")]
    SymlinkParent { path: String, parent: String },
    #[error("Entry {path}: hardlink target {target} is not in the archive")]
    MissingLinkTarget { path: String, target: String },
    #[error("Entry {path}: hardlink target {target} is a directory")]
    LinkToDirectory { path: String, target: String },
    #[error("Entry {path}: unsupported entry type {kind:?}")]
    UnsupportedType { path: String, kind: char },
    #[error("Entry {path}: {field} does not fit in a tar header")]
    TooLarge { path: String, field: &'static str },
    #[error("Entry {path}: invalid xattr record {key}")]
    BadXattr { path: String, key: String },
    #[error("Entry {path}: malformed whiteout")]
    BadWhiteout { path: String },
    #[error("Entry {path}: a 0/0 character device would be a whiteout in an overlay lower dir")]
    ZeroDevice { path: String },
    #[error("Entry {path}: file data ends early")]
    Truncated { path: String },
    #[error("Entry {path}: {op}")]
    Apply {
        path: String,
        op: &'static str,
        #[source]
        source: io::Error,
    },
}

/// An error reading an archive through a [`super::tar_guard::TarGuard`]:
/// its refusal as such, anything else as a read error.
pub fn read_err(e: io::Error) -> LayerError {
    match super::tar_guard::refused(&e) {
        Some(r) => LayerError::Refused(r.0.clone()),
        None => LayerError::Read(e),
    }
}

/// Show archive path bytes in an error message.
pub fn show(path: &[u8]) -> String {
    String::from_utf8_lossy(path).into_owned()
}
