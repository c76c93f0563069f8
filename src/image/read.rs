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
    /// The fingerprint of the blob's file when its digests were found to
    /// hold (see [`BaseImage::copy_layer_blob`]); None where it has none or
    /// changed during the check.
    pub(crate) verified_as: Option<String>,
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
        Self::load(path, sel, MAX_LAYERS, None)
    }

    /// [`BaseImage::open`], refusing more than `max_layers` layers (tests
    /// and the `base_bounds` fuzz target pass fewer than [`MAX_LAYERS`]).
    pub fn open_within(path: &Path, sel: &Selector, max_layers: usize) -> Result<BaseImage, ImageError> {
        Self::load(path, sel, max_layers, None)
    }

    /// [`BaseImage::open`], remembering in the directory `memo` (the user's
    /// cache) each layer verified, by the fingerprint of the file holding
    /// it ([`Archive::fingerprint`]) and all the image states about it: a
    /// layer whose file has not changed since is not read again. (Streaming
    /// a layer still checks its digests as it goes.)
    pub fn open_remembering(path: &Path, sel: &Selector, memo: Option<&Path>) -> Result<BaseImage, ImageError> {
        Self::load(path, sel, MAX_LAYERS, memo)
    }

    fn load(path: &Path, sel: &Selector, max_layers: usize, memo: Option<&Path>) -> Result<BaseImage, ImageError> {
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
            let seen = archive.fingerprint(&l.path);
            let memo = memo.zip(seen.as_deref()).map(|(dir, seen)| dir.join(memo_name(seen, &l)));
            match memo.as_deref().and_then(|m| remembered(m, &l)) {
                Some(layer) => layers.push(BaseLayer { verified_as: seen, ..layer }),
                None => {
                    let mut layer = verify_layer(&archive, i, l)?;
                    // Unchanged while it was read: these bytes hold.
                    layer.verified_as = seen.filter(|s| archive.fingerprint(&layer.path).as_ref() == Some(s));
                    if let Some(m) = memo.filter(|_| layer.verified_as.is_some()) {
                        remember(&m, &layer);
                    }
                    layers.push(layer);
                }
            }
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

    /// Copy layer `index`'s blob as stored to `out` (at its position) in the
    /// kernel (`copy_file_range`: no pass through this process, a reflink
    /// where the file system shares extents), if its file still has the
    /// fingerprint it had when its digests were found to hold, before and
    /// after the copy; the bytes copied are then those bytes. Returns false,
    /// copying nothing, where it cannot tell (stream the blob with
    /// [`BaseImage::open_layer_blob`] instead, which checks as it goes).
    /// Fails (between two chunks) once `abandon` says so.
    pub fn copy_layer_blob(
        &self,
        index: usize,
        out: &std::fs::File,
        abandon: &(dyn Fn() -> bool + Sync),
    ) -> Result<bool, ImageError> {
        let layer = self.layer(index)?;
        let Some(verified) = &layer.verified_as else { return Ok(false) };
        if self.archive.fingerprint(&layer.path).as_ref() != Some(verified) {
            return Ok(false);
        }
        let copied = self.archive.copy_member(&layer.path, out, abandon)?;
        if copied != layer.blob_size || self.archive.fingerprint(&layer.path).as_ref() != Some(verified) {
            return Err(ImageError::Invalid(format!("layer {} changed while it was copied", layer.path)));
        }
        Ok(true)
    }

    fn layer(&self, index: usize) -> Result<&BaseLayer, ImageError> {
        self.layers.get(index).ok_or_else(|| ImageError::Invalid(format!("no layer {index}")))
    }

    /// The path of the archive, for messages.
    pub fn path(&self) -> &Path {
        self.archive.path()
    }
}

/// A memo whose file nothing has used for this long is removed when
/// another is written.
const MEMO_MAX_AGE: std::time::Duration = std::time::Duration::from_secs(30 * 24 * 3600);

/// The memo file's name: a digest of the layer's bytes' fingerprint and
/// everything the image states about it.
fn memo_name(fingerprint: &str, l: &LayerRef) -> String {
    let claims = format!(
        "rootlayer verified layer 1\n{fingerprint}\n{}\n{:?}\n{:?}\n{:?}",
        l.path, l.compression, l.blob, l.diff_id
    );
    Sha256Digest::of(claims.as_bytes()).hex()
}

fn compression_name(c: Compression) -> &'static str {
    match c {
        Compression::None => "none",
        Compression::Gzip => "gzip",
        Compression::Zstd => "zstd",
    }
}

/// The layer a memo remembers (`diff_id blob_digest blob_size
/// compression`), if it is there, whole, and agrees with what the image
/// states.
fn remembered(memo: &Path, l: &LayerRef) -> Option<BaseLayer> {
    let text = std::fs::read_to_string(memo).ok()?;
    let mut f = text.split_whitespace();
    let diff_id: Sha256Digest = f.next()?.parse().ok()?;
    let blob_digest: Sha256Digest = f.next()?.parse().ok()?;
    let blob_size: u64 = f.next()?.parse().ok()?;
    let compression = [Compression::None, Compression::Gzip, Compression::Zstd]
        .into_iter()
        .find(|c| Some(compression_name(*c)) == f.next())?;
    let agrees = l.diff_id.map_or(true, |d| d == diff_id)
        && l.blob.map_or(true, |(d, size)| d == blob_digest && size.map_or(true, |s| s == blob_size))
        && l.compression.map_or(true, |c| c == compression);
    if !agrees {
        return None;
    }
    // Used: kept from the pruning of memos nothing uses.
    let _ = std::fs::File::options().write(true).open(memo).and_then(|f| f.set_modified(std::time::SystemTime::now()));
    Some(BaseLayer { diff_id, path: l.path.clone(), compression, blob_digest, blob_size, verified_as: None })
}

/// Write a memo (atomically; a memo that cannot be written is only a
/// verification more next time), and remove memos unused for
/// [`MEMO_MAX_AGE`].
fn remember(memo: &Path, layer: &BaseLayer) {
    let Some(dir) = memo.parent() else { return };
    if std::fs::create_dir_all(dir).is_err() {
        return;
    }
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let old = e.metadata().ok().and_then(|m| m.modified().ok()).and_then(|t| t.elapsed().ok());
            if old.is_some_and(|age| age > MEMO_MAX_AGE) {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
    let text = format!(
        "{} {} {} {}\n",
        layer.diff_id,
        layer.blob_digest,
        layer.blob_size,
        compression_name(layer.compression)
    );
    let tmp = memo.with_extension(format!("tmp-{}", std::process::id()));
    if std::fs::write(&tmp, text).is_err() || std::fs::rename(&tmp, memo).is_err() {
        let _ = std::fs::remove_file(&tmp);
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
    Ok(BaseLayer {
        diff_id: diff.digest(),
        path: l.path,
        compression,
        blob_digest: blob.digest(),
        blob_size: blob.len,
        verified_as: None,
    })
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
        let decoded = Decoder::new(raw, compression)?;
        // An uncompressed blob is its own diff: one hash serves both.
        let (inner, diff) = if compression == Compression::None {
            HashingReader::same_as(decoded, &blob)
        } else {
            HashingReader::new(decoded)
        };
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A docker-archive at `path` of one uncompressed layer holding a file
    /// with `marker` as its content.
    fn archive(path: &Path, marker: &[u8]) {
        let tar_of = |files: &[(&str, &[u8])]| {
            let mut b = tar::Builder::new(Vec::new());
            for (name, data) in files {
                let mut h = tar::Header::new_gnu();
                h.set_size(data.len() as u64);
                h.set_mode(0o644);
                h.set_mtime(1);
                b.append_data(&mut h, name, *data).unwrap();
            }
            b.into_inner().unwrap()
        };
        let layer = tar_of(&[("marked", marker)]);
        let config = format!(
            r#"{{"architecture":"amd64","os":"linux","rootfs":{{"type":"layers","diff_ids":["{}"]}}}}"#,
            Sha256Digest::of(&layer)
        );
        let manifest = r#"[{"Config":"c.json","RepoTags":["x:1"],"Layers":["l/layer.tar"]}]"#;
        let image =
            tar_of(&[("c.json", config.as_bytes()), ("l/layer.tar", &layer), ("manifest.json", manifest.as_bytes())]);
        std::fs::write(path, image).unwrap();
    }

    #[test]
    fn a_verified_layer_is_remembered_only_while_its_file_is_unchanged() {
        let dir = tempfile::tempdir().unwrap();
        let (path, memo) = (dir.path().join("image.tar"), dir.path().join("verified"));
        let marker = b"remember-me-0123456789";
        archive(&path, marker);
        let sel = Selector::default();
        let memos = || std::fs::read_dir(&memo).map(|d| d.count()).unwrap_or(0);
        // A file changed in the last second may change again unseen by its
        // ctime: not remembered yet.
        BaseImage::open_remembering(&path, &sel, Some(&memo)).unwrap();
        assert_eq!(memos(), 0);
        std::thread::sleep(std::time::Duration::from_millis(1100));
        let first = BaseImage::open_remembering(&path, &sel, Some(&memo)).unwrap();
        assert_eq!(memos(), 1, "the verified layer is remembered");
        let again = BaseImage::open_remembering(&path, &sel, Some(&memo)).unwrap();
        assert_eq!(memos(), 1, "and the memo used, not another written");
        assert_eq!(again.layers()[0].diff_id, first.layers()[0].diff_id);
        assert_eq!(again.layers()[0].blob_size, first.layers()[0].blob_size);

        // A memo that disagrees with what the image states is not used.
        let name = std::fs::read_dir(&memo).unwrap().next().unwrap().unwrap().path();
        let wrong = Sha256Digest::of(b"wrong");
        std::fs::write(&name, format!("{wrong} {wrong} 1 none\n")).unwrap();
        let checked = BaseImage::open_remembering(&path, &sel, Some(&memo)).unwrap();
        assert_eq!(checked.layers()[0].diff_id, first.layers()[0].diff_id, "verified again");
        assert!(std::fs::read_to_string(&name).unwrap().starts_with(&first.layers()[0].diff_id.to_string()));

        // The layer's bytes changed in place (same size): verified again,
        // and refused.
        let mut bytes = std::fs::read(&path).unwrap();
        let at = bytes.windows(marker.len()).position(|w| w == marker).unwrap();
        bytes[at] ^= 1;
        std::fs::write(&path, bytes).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(1100));
        let e = BaseImage::open_remembering(&path, &sel, Some(&memo)).unwrap_err().to_string();
        assert!(e.contains("digest") || e.contains("sha256"), "{e}");
    }

    #[test]
    fn outputs_copy_a_settled_verified_layer_in_the_kernel_and_stream_others() {
        use crate::image::{write_output, ImageMeta, NewLayer, OutputFormat};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("image.tar");
        archive(&path, b"copied whole");
        let sel = Selector::default();
        let young = BaseImage::open(&path, &sel).unwrap();
        assert!(young.layers()[0].verified_as.is_none(), "changed in the last second: no fingerprint");
        std::thread::sleep(std::time::Duration::from_millis(1100));
        let base = BaseImage::open(&path, &sel).unwrap();
        assert!(base.layers()[0].verified_as.is_some());
        let new = dir.path().join("new.tar");
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_size(3);
        h.set_mode(0o644);
        b.append_data(&mut h, "new", &b"new"[..]).unwrap();
        let bytes = b.into_inner().unwrap();
        std::fs::write(&new, &bytes).unwrap();
        let layer = NewLayer { tar: new, diff_id: Sha256Digest::of(&bytes), size: bytes.len() as u64 };
        let meta = ImageMeta {
            name: "out".into(),
            tag: "1".into(),
            created: "1970-01-01T00:00:01Z".into(),
            created_by: None,
            comment: None,
            base_json: None,
        };
        // Both ways give the same outputs, which read back with every digest
        // holding, the base layer's bytes unchanged.
        for (name, image) in [("young", &young), ("settled", &base)] {
            let archive_out = dir.path().join(format!("{name}.tar"));
            write_output(OutputFormat::DockerArchive, &archive_out, Some(image), &layer, &meta).unwrap();
            let back = BaseImage::open(&archive_out, &sel).unwrap();
            assert_eq!(back.layers().len(), 2);
            assert_eq!(back.layers()[0].diff_id, base.layers()[0].diff_id);
            let oci = dir.path().join(format!("{name}-oci"));
            write_output(OutputFormat::Oci, &oci, Some(image), &layer, &meta).unwrap();
            let back = BaseImage::open(&oci, &sel).unwrap();
            assert_eq!(back.layers()[0].blob_digest, base.layers()[0].blob_digest);
        }
        let read = |p: &str| std::fs::read(dir.path().join(p)).unwrap();
        assert_eq!(read("young.tar"), read("settled.tar"), "the same archive, byte for byte");

        // Outputs begun ahead of their new layer (run-as-root begins them
        // while the guest runs): an OCI layout's base blob in a hidden
        // temporary beside the output, nothing at the output until finished.
        // The hidden temporaries in the test's dir of the output `name`.
        let hidden = |name: &str| {
            std::fs::read_dir(dir.path())
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(&format!(".{name}.")))
                .collect::<Vec<_>>()
        };
        let ahead = dir.path().join("ahead");
        let draft = crate::image::OutputDraft::begin(OutputFormat::Oci, &ahead, Some(&base), &meta, &|| false).unwrap();
        assert!(!ahead.exists());
        let tmp = hidden("ahead");
        assert_eq!(tmp.len(), 1, "{tmp:?}");
        let blob = dir.path().join(&tmp[0]).join(oci::blob_path(&base.layers()[0].blob_digest));
        assert_eq!(std::fs::metadata(&blob).unwrap().len(), base.layers()[0].blob_size);
        draft.finish(Some(&base), &layer, &meta).unwrap();
        assert!(hidden("ahead").is_empty());
        for f in ["index.json", "oci-layout"] {
            assert_eq!(read(&format!("ahead/{f}")), read(&format!("settled-oci/{f}")), "{f}");
        }
        assert_eq!(
            BaseImage::open(&ahead, &sel).unwrap().layers().iter().map(|l| l.diff_id).collect::<Vec<_>>(),
            BaseImage::open(&dir.path().join("settled-oci"), &sel)
                .unwrap()
                .layers()
                .iter()
                .map(|l| l.diff_id)
                .collect::<Vec<_>>()
        );
        // Dropped unfinished (the job failed): nothing left. Finished after
        // something took the output's name: refused, the other kept.
        let dropped = dir.path().join("dropped");
        drop(crate::image::OutputDraft::begin(OutputFormat::Oci, &dropped, Some(&base), &meta, &|| false).unwrap());
        assert!(!dropped.exists() && hidden("dropped").is_empty());
        let taken = dir.path().join("taken");
        let draft = crate::image::OutputDraft::begin(OutputFormat::Oci, &taken, Some(&base), &meta, &|| false).unwrap();
        std::fs::write(&taken, b"someone else's").unwrap();
        assert!(matches!(draft.finish(Some(&base), &layer, &meta), Err(ImageError::OutputExists(_))));
        assert_eq!(std::fs::read(&taken).unwrap(), b"someone else's");
        // A docker-archive, compressed or not, likewise.
        for name in ["ahead.tar", "ahead.tar.gz"] {
            let path = dir.path().join(name);
            let draft =
                crate::image::OutputDraft::begin(OutputFormat::DockerArchive, &path, Some(&base), &meta, &|| false)
                    .unwrap();
            assert!(!path.exists());
            draft.finish(Some(&base), &layer, &meta).unwrap();
            let other = dir.path().join(format!("direct-{name}"));
            write_output(OutputFormat::DockerArchive, &other, Some(&base), &layer, &meta).unwrap();
            assert_eq!(std::fs::read(&path).unwrap(), std::fs::read(&other).unwrap(), "{name}");
            assert_eq!(BaseImage::open(&path, &sel).unwrap().layers().len(), 2);
        }
        assert_eq!(read("ahead.tar"), read("settled.tar"));
        let dropped = dir.path().join("dropped.tar.gz");
        drop(
            crate::image::OutputDraft::begin(OutputFormat::DockerArchive, &dropped, Some(&base), &meta, &|| false)
                .unwrap(),
        );
        assert!(hidden("dropped").is_empty());
        // Abandoned (the job ended early): a base layer being compressed
        // stops at its next read, and nothing is left.
        let abandoned = dir.path().join("abandoned.tar.gz");
        let r = crate::image::OutputDraft::begin(OutputFormat::DockerArchive, &abandoned, Some(&base), &meta, &|| true);
        assert!(r.is_err_and(|e| e.to_string().contains("stopped by a signal")));
        // And one copying a layer in the kernel, between two chunks.
        let r = crate::image::OutputDraft::begin(
            OutputFormat::Oci,
            &dir.path().join("abandoned"),
            Some(&base),
            &meta,
            &|| true,
        );
        assert!(r.is_err_and(|e| e.to_string().contains("stopped by a signal")));
        assert!(hidden("abandoned").is_empty());
        // A draft begun for another base is refused.
        let other = dir.path().join("other");
        let draft = crate::image::OutputDraft::begin(OutputFormat::Oci, &other, None, &meta, &|| false).unwrap();
        assert!(matches!(draft.finish(Some(&base), &layer, &meta), Err(ImageError::Invalid(_))));
        assert!(!other.exists());
    }
}
