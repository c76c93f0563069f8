//! The one error type of the image module.

use std::io;
use std::path::PathBuf;

/// Everything that can go wrong reading a base image or writing an output.
///
/// Messages are one short sentence that names the file or entry at fault, so
/// that a builder's log says what to fix without the cause chain.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("Cannot read or write {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path} is not a tar archive, a compressed tar archive or an image layout directory")]
    NotAnArchive { path: PathBuf },
    #[error("{path}: compressed stream is corrupt or truncated: {source}")]
    Decompress {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path}: tar archive is corrupt or truncated: {reason}")]
    CorruptTar { path: PathBuf, reason: String },
    #[error("{path} has no manifest.json, repositories or index.json: not a docker-archive or OCI layout")]
    NoManifest { path: PathBuf },
    #[error("No image {wanted} in the base image; present: {present}")]
    ImageNotFound { wanted: String, present: String },
    #[error("Digest mismatch for {what}: the image states {expected}, the content is {actual}")]
    DigestMismatch { what: String, expected: String, actual: String },
    #[error("Size mismatch for {what}: the image states {expected} bytes, the content has {actual}")]
    SizeMismatch { what: String, expected: u64, actual: u64 },
    #[error("Path {path:?} escapes the archive")]
    PathEscape { path: String },
    #[error("The base image has no {path:?}, but its manifest names it")]
    MissingEntry { path: String },
    #[error("{what} is not valid JSON of the expected shape: {source}")]
    Json {
        what: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("Invalid image: {0}")]
    Invalid(String),
    #[error("Unsupported media type {0}")]
    UnsupportedMediaType(String),
    #[error("Output path {0} already exists")]
    OutputExists(PathBuf),
}

impl ImageError {
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(io::Error) -> ImageError {
        let path = path.into();
        move |source| ImageError::Io { path, source }
    }

    pub(crate) fn json(what: impl Into<String>) -> impl FnOnce(serde_json::Error) -> ImageError {
        let what = what.into();
        move |source| ImageError::Json { what, source }
    }

    /// Wraps this error in an `io::Error` so it can travel through `Read`.
    pub(crate) fn into_io(self) -> io::Error {
        io::Error::new(io::ErrorKind::InvalidData, self)
    }

    /// Recovers an `ImageError` carried by [`ImageError::into_io`], or wraps
    /// a plain I/O error with the path it happened on.
    pub(crate) fn from_io(err: io::Error, path: impl Into<PathBuf>) -> ImageError {
        if err.get_ref().is_some_and(|e| e.is::<ImageError>()) {
            if let Some(Ok(e)) = err.into_inner().map(|e| e.downcast::<ImageError>()) {
                return *e;
            }
            return ImageError::Invalid("an error was lost in transit".into());
        }
        ImageError::Io { path: path.into(), source: err }
    }
}
