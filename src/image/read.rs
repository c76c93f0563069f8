//! The base image: which format it is in, the chosen image's config and its
//! layers bottom first, each verified against every digest the image states.

use std::io::{self, Read};
use std::path::Path;

use oci_spec::image::{ImageConfiguration, MediaType};

use super::archive::Archive;
use super::compression::{Compression, Decoder};
use super::digest::{check, HashingReader, Sha256Digest, SharedTally};
use super::select::{Selected, Selector};
use super::types::{LayerRef, SourceFormat};
use super::{docker, oci, ImageError};

/// One layer of the base image.
#[derive(Debug, Clone)]
pub struct BaseLayer {
    /// The digest of the uncompressed layer tar.
    pub diff_id: Sha256Digest,
    /// Where the blob is in the archive.
    pub(crate) path: String,
    pub(crate) compression: Compression,
    /// The digest and size of the blob as stored (compressed or not).
    pub blob_digest: Sha256Digest,
    pub blob_size: u64,
}

impl BaseLayer {
    /// The OCI media type of the stored blob.
    pub fn oci_media_type(&self) -> MediaType {
        self.compression.oci_layer_media_type()
    }

    /// Whether the stored blob is compressed.
    pub fn is_compressed(&self) -> bool {
        self.compression != Compression::None
    }
}

/// An opened and verified base image.
#[derive(Debug)]
pub struct BaseImage {
    archive: Archive,
    format: SourceFormat,
    selected: Selected,
    config: ImageConfiguration,
    layers: Vec<BaseLayer>,
}

/// Most layers a base image may have: a bound on what a hostile manifest
/// makes the host stage and hold.
pub const MAX_LAYERS: usize = 500;

impl BaseImage {
    /// Opens a docker-archive or OCI layout (directory or tar, plain or
    /// compressed), chooses the image `sel` names and verifies all of it.
    pub fn open(path: &Path, sel: &Selector) -> Result<BaseImage, ImageError> {
        Self::open_within(path, sel, MAX_LAYERS)
    }

    /// [`BaseImage::open`], refusing more than `max_layers` layers (tests
    /// and the `base_bounds` fuzz target pass fewer than [`MAX_LAYERS`]).
    pub fn open_within(path: &Path, sel: &Selector, max_layers: usize) -> Result<BaseImage, ImageError> {
        let archive = Archive::open(path)?;
        let parsed = if archive.exists("manifest.json") {
            docker::read_manifest(&archive, sel)?
        } else if archive.exists("repositories") {
            docker::read_legacy(&archive, sel)?
        } else if archive.exists("index.json") {
            oci::read_layout(&archive, sel)?
        } else {
            return Err(ImageError::NoManifest { path: path.to_path_buf() });
        };
        if parsed.layers.len() > max_layers {
            return Err(ImageError::Invalid(format!(
                "{} layers: at most {max_layers} (docker itself stops at 125)",
                parsed.layers.len()
            )));
        }
        let mut layers = Vec::with_capacity(parsed.layers.len());
        let mut config = parsed.config;
        for (i, l) in parsed.layers.into_iter().enumerate() {
            layers.push(verify_layer(&archive, i, l)?);
        }
        if parsed.format == SourceFormat::DockerArchiveLegacy {
            config.rootfs_mut().set_diff_ids(layers.iter().map(|l| l.diff_id.to_string()).collect());
        }
        Ok(BaseImage { archive, format: parsed.format, selected: parsed.selected, config, layers })
    }

    pub fn format(&self) -> SourceFormat {
        self.format
    }

    /// The name and tag that were taken; see [`Selected::message`].
    pub fn selected(&self) -> &Selected {
        &self.selected
    }

    /// The image configuration (for the legacy layout: built from the top
    /// layer's `json`, with diff_ids computed).
    pub fn config(&self) -> &ImageConfiguration {
        &self.config
    }

    /// The layers, bottom first.
    pub fn layers(&self) -> &[BaseLayer] {
        &self.layers
    }

    /// Streams layer `index` as an uncompressed tar. The stream fails with an
    /// `InvalidData` error at its end if the content does not match the
    /// digests (it was verified when opened; this guards against the file
    /// changing since).
    pub fn open_layer(&self, index: usize) -> Result<impl Read + '_, ImageError> {
        let layer = self.layer(index)?;
        let raw = self.archive.open_file(&layer.path)?;
        LayerStream::new(
            raw,
            layer.compression,
            format!("layer {}", layer.path),
            Some((layer.blob_digest, Some(layer.blob_size))),
            Some(layer.diff_id),
        )
        .map_err(|e| ImageError::from_io(e, self.archive.path().join(&layer.path)))
    }

    /// Streams layer `index` as stored (possibly compressed), checked
    /// against its blob digest at the end.
    pub fn open_layer_blob(&self, index: usize) -> Result<impl Read + '_, ImageError> {
        let layer = self.layer(index)?;
        let raw = self.archive.open_file(&layer.path)?;
        LayerStream::new(
            raw,
            Compression::None,
            format!("layer {}", layer.path),
            Some((layer.blob_digest, Some(layer.blob_size))),
            None,
        )
        .map_err(|e| ImageError::from_io(e, self.archive.path().join(&layer.path)))
    }

    fn layer(&self, index: usize) -> Result<&BaseLayer, ImageError> {
        self.layers.get(index).ok_or_else(|| ImageError::Invalid(format!("no layer {index}")))
    }

    /// The path of the archive, for messages.
    pub fn path(&self) -> &Path {
        self.archive.path()
    }
}

fn verify_layer(archive: &Archive, index: usize, l: LayerRef) -> Result<BaseLayer, ImageError> {
    let what = format!("layer {} ({})", index + 1, l.path);
    let err_path = archive.path().join(&l.path);
    let compression = match l.compression {
        Some(c) => c,
        None => {
            let mut head = [0u8; 4];
            let mut r = archive.open_file(&l.path)?;
            let mut n = 0;
            while n < head.len() {
                match r.read(&mut head[n..]) {
                    Ok(0) => break,
                    Ok(k) => n += k,
                    Err(e) => return Err(ImageError::from_io(e, err_path)),
                }
            }
            Compression::sniff(&head[..n])
        }
    };
    let raw = archive.open_file(&l.path)?;
    let mut stream =
        LayerStream::new(raw, compression, what, l.blob, l.diff_id).map_err(|e| ImageError::from_io(e, &err_path))?;
    io::copy(&mut stream, &mut io::sink()).map_err(|e| match e.get_ref() {
        Some(inner) if inner.is::<ImageError>() => ImageError::from_io(e, &err_path),
        _ if compression != Compression::None => ImageError::Decompress { path: err_path.clone(), source: e },
        _ => ImageError::from_io(e, &err_path),
    })?;
    let blob = stream.blob.borrow();
    let diff = stream.diff.borrow();
    Ok(BaseLayer { diff_id: diff.digest(), path: l.path, compression, blob_digest: blob.digest(), blob_size: blob.len })
}

/// A layer blob decompressed, with both digests checked at its end.
struct LayerStream<R: Read> {
    inner: HashingReader<Decoder<HashingReader<R>>>,
    blob: SharedTally,
    diff: SharedTally,
    what: String,
    expected_blob: Option<(Sha256Digest, Option<u64>)>,
    expected_diff: Option<Sha256Digest>,
    done: bool,
}

impl<R: Read> LayerStream<R> {
    fn new(
        raw: R,
        compression: Compression,
        what: String,
        expected_blob: Option<(Sha256Digest, Option<u64>)>,
        expected_diff: Option<Sha256Digest>,
    ) -> io::Result<Self> {
        let (raw, blob) = HashingReader::new(raw);
        let (inner, diff) = HashingReader::new(Decoder::new(raw, compression)?);
        Ok(LayerStream { inner, blob, diff, what, expected_blob, expected_diff, done: false })
    }

    fn finish(&mut self) -> Result<(), ImageError> {
        self.inner.get_mut().drain().map_err(|e| ImageError::from_io(e, &self.what))?;
        if let Some((digest, size)) = &self.expected_blob {
            check(&self.what, digest, *size, &self.blob.borrow())?;
        }
        if let Some(digest) = &self.expected_diff {
            check(&format!("{} (uncompressed)", self.what), digest, None, &self.diff.borrow())?;
        }
        Ok(())
    }
}

impl<R: Read> Read for LayerStream<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.done {
            return Ok(0);
        }
        let n = self.inner.read(buf)?;
        if n == 0 && !buf.is_empty() {
            self.done = true;
            self.finish().map_err(ImageError::into_io)?;
        }
        Ok(n)
    }
}
