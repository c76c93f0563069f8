//! Writing the result: the new layer as nixpkgs `mkRootLayer` outputs it, or
//! the base image with the new layer appended, as a docker-archive or an OCI
//! image layout. Everything is staged under a hidden temporary name in the
//! output's directory and renamed into place only once complete, so a
//! failure leaves nothing at the output path; what does not depend on the
//! new layer is written when the output is begun ([`OutputDraft`]), which
//! `run-as-root` does while the guest runs.

use std::collections::HashSet;
use std::fs::{self, File};
use std::io::{self, BufWriter, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use oci_spec::image::{
    Descriptor, History, HistoryBuilder, ImageConfiguration, ImageIndexBuilder, ImageManifestBuilder, MediaType,
    OciLayoutBuilder,
};

use super::compression::Compression;
use super::digest::{HashingWriter, Sha256Digest};
use super::docker::ManifestEntry;
use super::oci::{blob_path, REF_NAME};
use super::read::BaseImage;
use super::types::parse_config;
use super::ImageError;
use crate::layer::Stoppable;

/// The output form (`--format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OutputFormat {
    /// A directory as `mkRootLayer` makes: `layer.tar`, `json`, `VERSION`,
    /// plus `layer.sha256` holding the layer's diff_id.
    #[default]
    Layer,
    /// A docker-archive tar (compressed as a whole when the output name
    /// ends in `.gz` or `.zst`, as dockerTools' `compressor` does) of the
    /// base image with the new layer on top.
    DockerArchive,
    /// An OCI image layout directory of the base image with the new layer
    /// on top.
    Oci,
}

impl FromStr for OutputFormat {
    type Err = ImageError;

    fn from_str(s: &str) -> Result<Self, ImageError> {
        match s {
            "layer" => Ok(OutputFormat::Layer),
            "docker-archive" => Ok(OutputFormat::DockerArchive),
            "oci" => Ok(OutputFormat::Oci),
            _ => {
                Err(ImageError::Invalid(format!("unknown output format {s:?}; expected layer, docker-archive or oci")))
            }
        }
    }
}

/// The new layer, as the layer engine produced it: an uncompressed tar and
/// its sha256 (the diff_id) and size, which are checked while copying.
#[derive(Debug, Clone)]
pub struct NewLayer {
    pub tar: PathBuf,
    pub diff_id: Sha256Digest,
    pub size: u64,
}

/// What the output says about itself.
#[derive(Debug, Clone)]
pub struct ImageMeta {
    /// Name and tag of the output image (docker-archive `RepoTags` and
    /// `repositories`; OCI `index.json` annotations).
    pub name: String,
    pub tag: String,
    /// RFC 3339 time for the new history entry and the config (`--created`).
    pub created: String,
    pub created_by: Option<String>,
    pub comment: Option<String>,
    /// `mkRootLayer`'s `baseJson`: the `json` of the `layer` output gets its
    /// fields plus `checksum`; without a base image it seeds the config of
    /// the docker-archive and OCI outputs, with one it is merged into the
    /// base's config as dockerTools' buildImage merges its `config`.
    pub base_json: Option<serde_json::Value>,
}

/// Writes the output at `out`, which must not exist yet.
pub fn write_output(
    format: OutputFormat,
    out: &Path,
    base: Option<&BaseImage>,
    layer: &NewLayer,
    meta: &ImageMeta,
) -> Result<(), ImageError> {
    OutputDraft::begin(format, out, base, meta, &|| false)?.finish(base, layer, meta)
}

/// An output begun before its new layer exists, in a hidden temporary
/// beside it: what does not depend on the new layer (the base image's
/// layers, in an OCI layout or a docker-archive, compressed or not) is
/// written at once, so that `run-as-root` does it on a thread of its own
/// while the guest runs. [`OutputDraft::finish`] adds the new layer and
/// what names it and moves the output into place; a draft dropped
/// unfinished is removed.
#[derive(Debug)]
pub enum OutputDraft {
    Layer { tmp: tempfile::TempDir, out: PathBuf },
    Oci(OciDraft),
    DockerArchive(ArchiveDraft),
}

impl OutputDraft {
    /// Begin `format`'s output at `out` (which must not exist) on `base`.
    /// Streaming a base layer (compressing it, or one that cannot be
    /// copied in the kernel) fails at its next read once `abandon` says so:
    /// a job that ends early does not wait for its output.
    pub fn begin(
        format: OutputFormat,
        out: &Path,
        base: Option<&BaseImage>,
        meta: &ImageMeta,
        abandon: &(dyn Fn() -> bool + Sync),
    ) -> Result<OutputDraft, ImageError> {
        refuse_existing(out)?;
        Ok(match format {
            OutputFormat::Layer => OutputDraft::Layer { tmp: temp_dir_beside(out)?, out: out.to_path_buf() },
            OutputFormat::Oci => OutputDraft::Oci(OciDraft::begin(out, base, abandon)?),
            OutputFormat::DockerArchive => OutputDraft::DockerArchive(ArchiveDraft::begin(out, base, meta, abandon)?),
        })
    }

    /// Add the new layer (on `base`, the one the draft began with) and move
    /// the output into place.
    pub fn finish(self, base: Option<&BaseImage>, layer: &NewLayer, meta: &ImageMeta) -> Result<(), ImageError> {
        match self {
            OutputDraft::Layer { tmp, out } => {
                write_layer_dir(tmp.path(), layer, meta)?;
                move_into_place(tmp, &out)
            }
            OutputDraft::Oci(d) => d.finish(base, layer, meta),
            OutputDraft::DockerArchive(d) => d.finish(base, layer, meta),
        }
    }
}

/// The blob digests of `base`'s layers, in order.
fn base_blobs(base: Option<&BaseImage>) -> Vec<Sha256Digest> {
    base.map_or_else(Vec::new, |b| b.layers().iter().map(|l| l.blob_digest).collect())
}

/// The base layers a draft was begun with must be the finishing base's.
fn same_base(drafted: &[Sha256Digest], base: Option<&BaseImage>) -> Result<(), ImageError> {
    if drafted != base_blobs(base) {
        return Err(ImageError::Invalid("the output was begun with another base image".into()));
    }
    Ok(())
}

fn refuse_existing(out: &Path) -> Result<(), ImageError> {
    match out.symlink_metadata() {
        Ok(_) => Err(ImageError::OutputExists(out.to_path_buf())),
        Err(_) => Ok(()),
    }
}

/// The directory `out` goes in, and the hidden prefix of its temporary.
fn beside(out: &Path) -> (&Path, String) {
    let parent = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let name = out.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "out".into());
    (parent, format!(".{name}."))
}

/// A hidden temporary directory beside `out`: a directory output's draft.
fn temp_dir_beside(out: &Path) -> Result<tempfile::TempDir, ImageError> {
    let (parent, prefix) = beside(out);
    tempfile::Builder::new().prefix(&prefix).suffix(".tmp").tempdir_in(parent).map_err(ImageError::io(parent))
}

/// A finished temporary directory becomes `out` (world-readable, as an
/// output directory is), unless something took `out` meanwhile.
fn move_into_place(tmp: tempfile::TempDir, out: &Path) -> Result<(), ImageError> {
    fs::set_permissions(tmp.path(), fs::Permissions::from_mode(0o755)).map_err(ImageError::io(tmp.path()))?;
    refuse_existing(out)?;
    fs::rename(tmp.path(), out).map_err(ImageError::io(out))?;
    let _ = tmp.keep();
    Ok(())
}

/// An OCI image layout begun ([`OutputDraft`]): a temporary directory
/// beside the output holding the base image's blobs.
#[derive(Debug)]
pub struct OciDraft {
    tmp: tempfile::TempDir,
    out: PathBuf,
    /// The blobs written (a blob two layers share, once).
    written: HashSet<Sha256Digest>,
    /// The base's layers, in order.
    descriptors: Vec<Descriptor>,
    /// Their blobs' digests.
    base: Vec<Sha256Digest>,
}

impl OciDraft {
    /// Start the layout for `out` and write `base`'s layer blobs as stored.
    fn begin(
        out: &Path,
        base: Option<&BaseImage>,
        abandon: &(dyn Fn() -> bool + Sync),
    ) -> Result<OciDraft, ImageError> {
        let tmp = temp_dir_beside(out)?;
        let dir = tmp.path();
        let blobs = dir.join("blobs/sha256");
        fs::create_dir_all(&blobs).map_err(ImageError::io(&blobs))?;
        let mut written = HashSet::new();
        let mut descriptors = Vec::new();
        if let Some(base) = base {
            for (i, l) in base.layers().iter().enumerate() {
                if written.insert(l.blob_digest) {
                    let path = dir.join(blob_path(&l.blob_digest));
                    let file = File::create(&path).map_err(ImageError::io(&path))?;
                    if !base.copy_layer_blob(i, &file, abandon)? {
                        let blob = Stoppable { inner: base.open_layer_blob(i)?, stop: abandon };
                        put_blob_stream(dir, &l.blob_digest, blob)?;
                    }
                }
                descriptors.push(Descriptor::new(l.oci_media_type(), l.blob_size, l.blob_digest));
            }
        }
        Ok(OciDraft { tmp, out: out.to_path_buf(), written, descriptors, base: base_blobs(base) })
    }

    /// The new layer uncompressed on top of the base's, a new config,
    /// manifest and `index.json`; then the layout becomes the output.
    /// `base` must be the one the draft began with.
    fn finish(self, base: Option<&BaseImage>, layer: &NewLayer, meta: &ImageMeta) -> Result<(), ImageError> {
        let OciDraft { tmp, out, written, descriptors, base: drafted } = self;
        same_base(&drafted, base)?;
        write_oci_rest(tmp.path(), written, descriptors, base, layer, meta)?;
        move_into_place(tmp, &out)
    }
}

/// Copies the new layer's tar into `w`, checking its digest and size.
fn copy_new_layer(layer: &NewLayer, w: &mut dyn Write) -> Result<(), ImageError> {
    let mut f = File::open(&layer.tar).map_err(ImageError::io(&layer.tar))?;
    let mut hw = HashingWriter::new(w);
    io::copy(&mut f, &mut hw).map_err(ImageError::io(&layer.tar))?;
    let (_, tally) = hw.into_inner();
    super::digest::check(&format!("new layer {}", layer.tar.display()), &layer.diff_id, Some(layer.size), &tally)
}

fn write_file(path: &Path, data: &[u8]) -> Result<(), ImageError> {
    fs::write(path, data).map_err(ImageError::io(path))
}

/// `mkRootLayer`'s output, plus `layer.sha256`.
fn write_layer_dir(dir: &Path, layer: &NewLayer, meta: &ImageMeta) -> Result<(), ImageError> {
    let tar_path = dir.join("layer.tar");
    let mut f = BufWriter::new(File::create(&tar_path).map_err(ImageError::io(&tar_path))?);
    copy_new_layer(layer, &mut f)?;
    f.into_inner()
        .map_err(|e| ImageError::io(&tar_path)(e.into_error()))?
        .sync_all()
        .map_err(ImageError::io(&tar_path))?;

    let mut json = match &meta.base_json {
        Some(serde_json::Value::Object(m)) => m.clone(),
        Some(_) => return Err(ImageError::Invalid("base json is not a JSON object".into())),
        None => serde_json::Map::new(),
    };
    json.insert("checksum".into(), layer.diff_id.to_string().into());
    let json = serde_json::to_vec(&json).map_err(ImageError::json("layer json"))?;
    write_file(&dir.join("json"), &json)?;
    write_file(&dir.join("VERSION"), b"1.0")?;
    write_file(&dir.join("layer.sha256"), layer.diff_id.to_string().as_bytes())?;
    Ok(())
}

/// The config of the output image: the base's (or one seeded from the base
/// json), with the new layer's diff_id and history entry appended.
fn output_config(
    base: Option<&BaseImage>,
    layer: &NewLayer,
    meta: &ImageMeta,
) -> Result<ImageConfiguration, ImageError> {
    let mut config = match base {
        Some(b) => match &meta.base_json {
            Some(json) => merge_config(b.config(), json)?,
            None => b.config().clone(),
        },
        None => {
            let mut seed = meta.base_json.clone().unwrap_or_else(|| serde_json::json!({}));
            if let Some(o) = seed.as_object_mut() {
                o.remove("checksum");
                o.remove("rootfs");
                o.remove("history");
            }
            parse_config(seed, "base json")?
        }
    };
    let base_layers = base.map_or(0, |b| b.layers().len());
    let mut history: Vec<History> = config.history().clone().unwrap_or_default();
    // Every time the image carries is RFC 3339 (skopeo refuses the config
    // otherwise): a base's entry without one is left without.
    let rfc3339 = |c: &Option<String>| c.clone().filter(|c| super::created::is_rfc3339(c));
    for h in &mut history {
        h.set_created(rfc3339(h.created()));
    }
    if history.is_empty() && base_layers > 0 {
        // Keep one history entry per layer when the base recorded none,
        // with the base's own time (not the one merged from the base json).
        let base_created = rfc3339(&base.and_then(|b| b.config().created().clone()));
        for _ in 0..base_layers {
            let mut h = History::default();
            h.set_created(base_created.clone());
            history.push(h);
        }
    }
    let mut entry = HistoryBuilder::default().created(meta.created.clone());
    if let Some(by) = &meta.created_by {
        entry = entry.created_by(by.clone());
    }
    if let Some(c) = &meta.comment {
        entry = entry.comment(c.clone());
    }
    history.push(entry.build().map_err(|e| ImageError::Invalid(e.to_string()))?);
    config.set_history(Some(history));
    config.rootfs_mut().diff_ids_mut().push(layer.diff_id.to_string());
    config.set_created(Some(meta.created.clone()));
    Ok(config)
}

/// The base image's config with `json`'s on top, as dockerTools'
/// buildImage merges its `config` into `fromImage`'s: `config.Env` and
/// `config.Volumes` are added to the base's, every other `config` key and
/// the top-level `architecture`, `os` and `created` replace the base's.
fn merge_config(base: &ImageConfiguration, json: &serde_json::Value) -> Result<ImageConfiguration, ImageError> {
    use serde_json::Value;
    let mut merged = serde_json::to_value(base).map_err(ImageError::json("base image config"))?;
    let (Value::Object(out), Value::Object(over)) = (&mut merged, json) else {
        return Err(ImageError::Invalid("base json is not a JSON object".into()));
    };
    for key in ["architecture", "os", "created"] {
        if let Some(v) = over.get(key).filter(|v| !v.is_null()) {
            out.insert(key.into(), v.clone());
        }
    }
    if let Some(Value::Object(new)) = over.get("config") {
        let cfg = out.entry("config").or_insert_with(|| Value::Object(Default::default()));
        if !cfg.is_object() {
            *cfg = Value::Object(Default::default());
        }
        let cfg = cfg.as_object_mut().expect("an object");
        for (k, v) in new {
            match (k.as_str(), cfg.get_mut(k), v) {
                ("Env", Some(Value::Array(have)), Value::Array(add)) => have.extend(add.iter().cloned()),
                ("Volumes", Some(Value::Object(have)), Value::Object(add)) => {
                    have.extend(add.iter().map(|(k, v)| (k.clone(), v.clone())))
                }
                (_, _, v) if v.is_null() => {}
                _ => {
                    cfg.insert(k.clone(), v.clone());
                }
            }
        }
    }
    parse_config(merged, "merged config")
}

fn tar_header(size: u64, mode: u32, kind: tar::EntryType) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_size(size);
    h.set_mode(mode);
    h.set_entry_type(kind);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h
}

fn append_bytes<W: Write>(b: &mut tar::Builder<W>, name: &str, data: &[u8], out: &Path) -> Result<(), ImageError> {
    let mut h = tar_header(data.len() as u64, 0o644, tar::EntryType::Regular);
    b.append_data(&mut h, name, data).map_err(|e| ImageError::from_io(e, out))
}

fn append_dir<W: Write>(b: &mut tar::Builder<W>, name: &str, out: &Path) -> Result<(), ImageError> {
    let mut h = tar_header(0, 0o755, tar::EntryType::Directory);
    b.append_data(&mut h, name, io::empty()).map_err(|e| ImageError::from_io(e, out))
}

/// A `Read` over the new layer that checks its digest and size at the end.
struct CheckedNewLayer<'a> {
    file: File,
    tally: super::digest::Tally,
    layer: &'a NewLayer,
}

impl Read for CheckedNewLayer<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.file.read(buf)?;
        self.tally.update(&buf[..n]);
        if n == 0 && !buf.is_empty() {
            super::digest::check(
                &format!("new layer {}", self.layer.tar.display()),
                &self.layer.diff_id,
                Some(self.layer.size),
                &self.tally,
            )
            .map_err(ImageError::into_io)?;
        }
        Ok(n)
    }
}

fn open_new_layer(layer: &NewLayer) -> Result<CheckedNewLayer<'_>, ImageError> {
    Ok(CheckedNewLayer {
        file: File::open(&layer.tar).map_err(ImageError::io(&layer.tar))?,
        tally: Default::default(),
        layer,
    })
}

/// A docker-archive begun ([`OutputDraft`]), with `manifest.json`,
/// `repositories` and the older `<id>/{layer.tar,json,VERSION}`
/// directories, so that both kinds of reader (Docker/podman/skopeo and
/// nixpkgs' `repositories` walk) load it: the base's layers written (and
/// compressed, as the whole file is where the output's name ends in `.gz`
/// or `.zst`, as dockerTools' `compressor` does) into a temporary file
/// beside the output.
pub struct ArchiveDraft {
    tmp: tempfile::NamedTempFile,
    out: PathBuf,
    b: tar::Builder<Sink>,
    /// The v1 id of the topmost layer written.
    parent: Option<String>,
    /// The layers written: their diff_ids and their `layer.tar` members.
    diff_ids: Vec<String>,
    layer_paths: Vec<String>,
    /// The base's blob digests.
    base: Vec<Sha256Digest>,
}

impl std::fmt::Debug for ArchiveDraft {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ArchiveDraft").field("tmp", &self.tmp.path()).field("layers", &self.layer_paths).finish()
    }
}

const ARCHIVE_OUT: &str = "docker-archive output";

impl ArchiveDraft {
    fn begin(
        out: &Path,
        base: Option<&BaseImage>,
        meta: &ImageMeta,
        abandon: &(dyn Fn() -> bool + Sync),
    ) -> Result<ArchiveDraft, ImageError> {
        let (parent, prefix) = beside(out);
        let tmp = tempfile::Builder::new()
            .prefix(&prefix)
            .suffix(".tmp")
            .tempfile_in(parent)
            .map_err(ImageError::io(parent))?;
        let compression = match out.extension().and_then(|e| e.to_str()) {
            Some("gz") => Compression::Gzip,
            Some("zst") => Compression::Zstd,
            _ => Compression::None,
        };
        let file = tmp.as_file().try_clone().map_err(ImageError::io(tmp.path()))?;
        let sink = Sink::new(file, compression).map_err(|e| ImageError::from_io(e, Path::new(ARCHIVE_OUT)))?;
        let mut d = ArchiveDraft {
            tmp,
            out: out.to_path_buf(),
            b: tar::Builder::new(sink),
            parent: None,
            diff_ids: Vec::new(),
            layer_paths: Vec::new(),
            base: base_blobs(base),
        };
        if let Some(base) = base {
            let diff_ids = base.config().rootfs().diff_ids();
            if diff_ids.len() != base.layers().len() {
                return Err(ImageError::Invalid("the base's config and manifest name different layers".into()));
            }
            for (i, (diff_id, bl)) in diff_ids.iter().zip(base.layers()).enumerate() {
                let path = d.layer_dir(diff_id, meta, None)?;
                let mut h = tar_header(bl.blob_size, 0o644, tar::EntryType::Regular);
                if !append_layer_blob(&mut d.b, &mut h, &path, base, i, abandon)? {
                    let blob = Stoppable { inner: base.open_layer_blob(i)?, stop: abandon };
                    d.b.append_data(&mut h, &path, blob).map_err(|e| ImageError::from_io(e, base.path()))?;
                }
            }
        }
        Ok(d)
    }

    /// A layer's v1 directory (`VERSION`, `json`; the last layer's json
    /// carries `config`'s platform and config), on the last one's; the
    /// path its `layer.tar` goes at, which it records.
    fn layer_dir(
        &mut self,
        diff_id: &str,
        meta: &ImageMeta,
        config: Option<&ImageConfiguration>,
    ) -> Result<String, ImageError> {
        let out = Path::new(ARCHIVE_OUT);
        // A v1 layer id: unique for the layer and everything below it.
        let id = Sha256Digest::of(format!("{} {diff_id}", self.parent.as_deref().unwrap_or("")).as_bytes()).hex();
        append_dir(&mut self.b, &format!("{id}/"), out)?;
        append_bytes(&mut self.b, &format!("{id}/VERSION"), b"1.0", out)?;
        let mut v1 = serde_json::json!({ "id": id, "created": meta.created });
        if let Some(p) = &self.parent {
            v1["parent"] = p.clone().into();
        }
        if let Some(config) = config {
            v1["architecture"] = config.architecture().to_string().into();
            v1["os"] = config.os().to_string().into();
            if let Some(c) = config.config() {
                v1["config"] = serde_json::to_value(c).map_err(ImageError::json("config"))?;
            }
        }
        let v1 = serde_json::to_vec(&v1).map_err(ImageError::json("layer json"))?;
        append_bytes(&mut self.b, &format!("{id}/json"), &v1, out)?;
        let path = format!("{id}/layer.tar");
        self.diff_ids.push(diff_id.to_string());
        self.layer_paths.push(path.clone());
        self.parent = Some(id);
        Ok(path)
    }

    fn finish(mut self, base: Option<&BaseImage>, layer: &NewLayer, meta: &ImageMeta) -> Result<(), ImageError> {
        let out = Path::new(ARCHIVE_OUT);
        same_base(&self.base, base)?;
        let config = output_config(base, layer, meta)?;
        let diff_ids = config.rootfs().diff_ids();
        if diff_ids.len() != self.diff_ids.len() + 1 || diff_ids[..self.diff_ids.len()] != self.diff_ids[..] {
            return Err(ImageError::Invalid("the output's config is not the drafted layers and the new one".into()));
        }
        let path = self.layer_dir(&diff_ids[diff_ids.len() - 1], meta, Some(&config))?;
        let mut h = tar_header(layer.size, 0o644, tar::EntryType::Regular);
        self.b.append_data(&mut h, &path, open_new_layer(layer)?).map_err(|e| ImageError::from_io(e, &layer.tar))?;

        let config_bytes = canonical_json(&config, "image config")?;
        let config_name = format!("{}.json", Sha256Digest::of(&config_bytes).hex());
        append_bytes(&mut self.b, &config_name, &config_bytes, out)?;
        let repo_tag = format!("{}:{}", meta.name, meta.tag);
        let layers = std::mem::take(&mut self.layer_paths);
        let manifest = vec![ManifestEntry { config: config_name, repo_tags: Some(vec![repo_tag]), layers }];
        let manifest = serde_json::to_vec(&manifest).map_err(ImageError::json("manifest.json"))?;
        append_bytes(&mut self.b, "manifest.json", &manifest, out)?;
        let top = self.parent.clone().unwrap_or_default();
        let repositories = serde_json::json!({ meta.name.clone(): { meta.tag.clone(): top } });
        let repositories = serde_json::to_vec(&repositories).map_err(ImageError::json("repositories"))?;
        append_bytes(&mut self.b, "repositories", &repositories, out)?;

        let ArchiveDraft { tmp, out: dest, b, .. } = self;
        let sink = b.into_inner().map_err(|e| ImageError::from_io(e, out))?;
        sink.finish().map_err(|e| ImageError::from_io(e, out))?;
        tmp.as_file().sync_all().map_err(|e| ImageError::from_io(e, out))?;
        tmp.as_file().set_permissions(fs::Permissions::from_mode(0o644)).map_err(ImageError::io(tmp.path()))?;
        tmp.persist_noclobber(&dest).map_err(|e| {
            if e.error.kind() == io::ErrorKind::AlreadyExists {
                ImageError::OutputExists(dest.clone())
            } else {
                ImageError::io(&dest)(e.error)
            }
        })?;
        Ok(())
    }
}

/// Append base layer `index`'s blob as the member `path` of a plain
/// archive, copied in the kernel ([`BaseImage::copy_layer_blob`]) between
/// the header and the padding the builder would write. False (nothing
/// written) where the archive is compressed or the blob cannot be copied so.
fn append_layer_blob(
    b: &mut tar::Builder<Sink>,
    h: &mut tar::Header,
    path: &str,
    base: &BaseImage,
    index: usize,
    abandon: &(dyn Fn() -> bool + Sync),
) -> Result<bool, ImageError> {
    let out = Path::new(ARCHIVE_OUT);
    let Sink::Plain(w) = b.get_mut() else { return Ok(false) };
    let layer = &base.layers()[index];
    if layer.verified_as.is_none() || path.len() >= 100 {
        return Ok(false);
    }
    h.set_path(path).map_err(|e| ImageError::from_io(e, out))?;
    h.set_cksum();
    w.write_all(h.as_bytes()).and_then(|()| w.flush()).map_err(|e| ImageError::from_io(e, out))?;
    if !base.copy_layer_blob(index, w.get_ref(), abandon)? {
        return Err(ImageError::Invalid(format!("layer {} changed while it was copied", index + 1)));
    }
    let pad = (512 - layer.blob_size % 512) % 512;
    w.write_all(&[0u8; 512][..usize::try_from(pad).unwrap_or(0)]).map_err(|e| ImageError::from_io(e, out))?;
    Ok(true)
}

/// The docker-archive's file, compressed as a whole or not.
enum Sink {
    Plain(BufWriter<File>),
    Gzip(flate2::write::GzEncoder<BufWriter<File>>),
    Zstd(zstd::stream::write::Encoder<'static, BufWriter<File>>),
}

impl Sink {
    fn new(file: File, compression: Compression) -> io::Result<Sink> {
        let w = BufWriter::new(file);
        Ok(match compression {
            Compression::None => Sink::Plain(w),
            Compression::Gzip => Sink::Gzip(flate2::write::GzEncoder::new(w, flate2::Compression::default())),
            Compression::Zstd => Sink::Zstd(zstd::stream::write::Encoder::new(w, zstd::DEFAULT_COMPRESSION_LEVEL)?),
        })
    }

    /// Write the compressor's end and flush.
    fn finish(self) -> io::Result<()> {
        let mut w = match self {
            Sink::Plain(w) => w,
            Sink::Gzip(z) => z.finish()?,
            Sink::Zstd(z) => z.finish()?,
        };
        w.flush()
    }
}

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Sink::Plain(w) => w.write(buf),
            Sink::Gzip(w) => w.write(buf),
            Sink::Zstd(w) => w.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Sink::Plain(w) => w.flush(),
            Sink::Gzip(w) => w.flush(),
            Sink::Zstd(w) => w.flush(),
        }
    }
}

/// `v` as JSON with every object's keys in sorted order: the same bytes
/// (and digest) for the same value in every run, whatever order the hash
/// maps of oci-spec's types (annotations, labels, exposed ports, volumes)
/// hold their keys in.
fn canonical_json<T: serde::Serialize>(v: &T, what: &'static str) -> Result<Vec<u8>, ImageError> {
    let value = serde_json::to_value(v).map_err(ImageError::json(what))?;
    serde_json::to_vec(&value).map_err(ImageError::json(what))
}

/// Writes `data` as a blob, returning its digest.
fn put_blob(dir: &Path, data: &[u8]) -> Result<Sha256Digest, ImageError> {
    let d = Sha256Digest::of(data);
    write_file(&dir.join(blob_path(&d)), data)?;
    Ok(d)
}

/// Streams `r` into a blob file that should have digest `d`.
fn put_blob_stream(dir: &Path, d: &Sha256Digest, mut r: impl Read) -> Result<(), ImageError> {
    let path = dir.join(blob_path(d));
    let mut f = BufWriter::new(File::create(&path).map_err(ImageError::io(&path))?);
    io::copy(&mut r, &mut f).map_err(|e| ImageError::from_io(e, &path))?;
    f.flush().map_err(ImageError::io(&path))?;
    Ok(())
}

/// What an OCI layout needs beyond the base's blobs ([`OciDraft::begin`]):
/// the new layer uncompressed, a new config, manifest and `index.json`.
fn write_oci_rest(
    dir: &Path,
    mut written: HashSet<Sha256Digest>,
    mut descriptors: Vec<Descriptor>,
    base: Option<&BaseImage>,
    layer: &NewLayer,
    meta: &ImageMeta,
) -> Result<(), ImageError> {
    let invalid = |e: oci_spec::OciSpecError| ImageError::Invalid(e.to_string());
    if written.insert(layer.diff_id) {
        put_blob_stream(dir, &layer.diff_id, open_new_layer(layer)?)?;
    }
    descriptors.push(Descriptor::new(MediaType::ImageLayer, layer.size, layer.diff_id));

    let config = output_config(base, layer, meta)?;
    let config_bytes = canonical_json(&config, "image config")?;
    let config_digest = put_blob(dir, &config_bytes)?;
    let manifest = ImageManifestBuilder::default()
        .schema_version(2u32)
        .media_type(MediaType::ImageManifest)
        .config(Descriptor::new(MediaType::ImageConfig, config_bytes.len() as u64, config_digest))
        .layers(descriptors)
        .build()
        .map_err(invalid)?;
    let manifest_bytes = canonical_json(&manifest, "manifest")?;
    let manifest_digest = put_blob(dir, &manifest_bytes)?;

    let mut md = Descriptor::new(MediaType::ImageManifest, manifest_bytes.len() as u64, manifest_digest);
    md.set_annotations(Some(
        [
            (REF_NAME.to_string(), meta.tag.clone()),
            ("io.containerd.image.name".to_string(), format!("{}:{}", meta.name, meta.tag)),
        ]
        .into_iter()
        .collect(),
    ));
    let index = ImageIndexBuilder::default()
        .schema_version(2u32)
        .media_type(MediaType::ImageIndex)
        .manifests(vec![md])
        .build()
        .map_err(invalid)?;
    let index = canonical_json(&index, "index.json")?;
    write_file(&dir.join("index.json"), &index)?;
    let layout = OciLayoutBuilder::default().image_layout_version("1.0.0").build().map_err(invalid)?;
    let layout = serde_json::to_vec(&layout).map_err(ImageError::json("oci-layout"))?;
    write_file(&dir.join("oci-layout"), &layout)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_written_has_its_keys_sorted_whatever_the_hash_maps_order() {
        // 32 labels: a hash map's iteration order differs from the sorted
        // one (and from run to run, as its seed does).
        let labels: std::collections::HashMap<String, String> =
            (0..32).map(|i| (format!("label{i:02}"), i.to_string())).collect();
        let sorted: std::collections::BTreeMap<_, _> = labels.iter().collect();
        let want = serde_json::to_vec(&serde_json::json!({ "config": { "Labels": sorted } })).unwrap();
        let got = canonical_json(&serde_json::json!({ "config": { "Labels": labels } }), "test").unwrap();
        assert_eq!(String::from_utf8(got).unwrap(), String::from_utf8(want).unwrap());
        let mut config = parse_config(
            serde_json::json!({"architecture": "amd64", "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": []}}),
            "c",
        )
        .unwrap();
        let mut c = oci_spec::image::Config::default();
        c.set_labels(Some(labels.clone()));
        config.set_config(Some(c));
        let bytes = canonical_json(&config, "config").unwrap();
        let text = String::from_utf8(bytes).unwrap();
        let positions: Vec<usize> = (0..32).map(|i| text.find(&format!("\"label{i:02}\"")).unwrap()).collect();
        assert!(positions.windows(2).all(|w| w[0] < w[1]), "labels in sorted order: {text}");
    }

    #[test]
    fn build_image_config_is_merged_into_the_base_config_as_docker_tools_does() {
        let base = parse_config(
            serde_json::json!({
                "architecture": "amd64", "os": "linux", "created": "2020-01-01T00:00:00Z",
                "config": { "Env": ["PATH=/bin"], "Cmd": ["/bin/sh"], "User": "root", "Volumes": { "/a": {} } },
                "rootfs": { "type": "layers", "diff_ids": ["sha256:0000000000000000000000000000000000000000000000000000000000000000"] },
                "history": [{ "created": "2020-01-01T00:00:00Z" }]
            }),
            "base",
        )
        .unwrap();
        let over = serde_json::json!({
            "architecture": "arm64", "os": "linux", "created": "1970-01-01T00:00:01Z",
            "config": { "Env": ["APP=1"], "User": "app", "Volumes": { "/b": {} }, "WorkingDir": null }
        });
        let merged = serde_json::to_value(merge_config(&base, &over).unwrap()).unwrap();
        assert_eq!(merged["config"]["Env"], serde_json::json!(["PATH=/bin", "APP=1"]));
        assert_eq!(merged["config"]["Cmd"], serde_json::json!(["/bin/sh"]), "a key not given is kept");
        assert_eq!(merged["config"]["User"], "app", "a key given replaces the base's");
        assert_eq!(merged["config"]["Volumes"], serde_json::json!({ "/a": {}, "/b": {} }));
        assert!(merged["config"]["WorkingDir"].is_null(), "a null is not written over the base");
        assert_eq!(merged["architecture"], "arm64");
        assert_eq!(merged["created"], "1970-01-01T00:00:01Z");
        assert_eq!(merged["rootfs"]["diff_ids"].as_array().unwrap().len(), 1, "the base's layers stay");
        assert_eq!(merged["history"].as_array().unwrap().len(), 1);
        assert!(merge_config(&base, &serde_json::json!([1])).is_err());
    }
}
