//! OCI image layout reading (image-spec `image-layout.md`): `oci-layout`,
//! `index.json` and content-addressed `blobs/<alg>/<hex>`. Every blob read is
//! checked against the digest and size of the descriptor that names it.

use oci_spec::image::{Descriptor, ImageIndex, ImageManifest, MediaType, OciLayout};

use super::archive::Archive;
use super::compression::Compression;
use super::digest::Sha256Digest;
use super::select::{select, split_reference, Candidate, Selector};
use super::types::{parse_config, LayerRef, Parsed, SourceFormat};
use super::ImageError;

/// The annotation that names a manifest in `index.json` (the tag, or a full
/// reference).
pub(crate) const REF_NAME: &str = "org.opencontainers.image.ref.name";
/// containerd's (and `docker save`'s) full image name annotation.
const CONTAINERD_NAME: &str = "io.containerd.image.name";

const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";

pub(crate) fn blob_path(digest: &Sha256Digest) -> String {
    format!("blobs/sha256/{}", digest.hex())
}

/// Reads the blob a descriptor names, verified.
fn read_blob(archive: &Archive, d: &Descriptor, what: &str) -> Result<Vec<u8>, ImageError> {
    let digest = Sha256Digest::try_from(d.digest())?;
    let bytes = archive.read_small(&blob_path(&digest))?;
    let actual = Sha256Digest::of(&bytes);
    if actual != digest {
        return Err(ImageError::DigestMismatch {
            what: what.to_string(),
            expected: digest.to_string(),
            actual: actual.to_string(),
        });
    }
    if bytes.len() as u64 != d.size() {
        return Err(ImageError::SizeMismatch {
            what: what.to_string(),
            expected: d.size(),
            actual: bytes.len() as u64,
        });
    }
    Ok(bytes)
}

fn is_index(mt: &MediaType) -> bool {
    matches!(mt, MediaType::ImageIndex) || mt.to_string() == DOCKER_LIST
}

fn is_manifest(mt: &MediaType) -> bool {
    matches!(mt, MediaType::ImageManifest) || mt.to_string() == DOCKER_MANIFEST
}

/// The Go architecture name of this host, as image platforms spell it.
fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        other => other,
    }
}

/// Reads descriptor `d`, descending through nested indexes to the manifest
/// for this host's platform.
fn resolve_manifest(archive: &Archive, d: &Descriptor, depth: u32) -> Result<ImageManifest, ImageError> {
    if depth > 4 {
        return Err(ImageError::Invalid("image indexes nested too deep".into()));
    }
    let what = format!("manifest {}", d.digest());
    let bytes = read_blob(archive, d, &what)?;
    if is_index(d.media_type()) {
        let index: ImageIndex = serde_json::from_slice(&bytes).map_err(ImageError::json(&what))?;
        let fits = |m: &&Descriptor| platform_fits(m.platform().as_ref());
        let chosen = index.manifests().iter().find(fits).ok_or_else(|| {
            ImageError::Invalid(format!("image index {} has no manifest for linux/{}", d.digest(), host_arch()))
        })?;
        return resolve_manifest(archive, chosen, depth + 1);
    }
    if !is_manifest(d.media_type()) {
        return Err(ImageError::UnsupportedMediaType(d.media_type().to_string()));
    }
    serde_json::from_slice(&bytes).map_err(ImageError::json(&what))
}

/// Whether a manifest for `platform` runs here (no platform: assume so).
fn platform_fits(platform: Option<&oci_spec::image::Platform>) -> bool {
    platform.map_or(true, |p| p.os().to_string() == "linux" && p.architecture().to_string() == host_arch())
}

pub(crate) fn read_layout(archive: &Archive, sel: &Selector) -> Result<Parsed, ImageError> {
    if !archive.exists("oci-layout") {
        return Err(ImageError::Invalid("index.json without oci-layout".into()));
    }
    let layout: OciLayout =
        serde_json::from_slice(&archive.read_small("oci-layout")?).map_err(ImageError::json("oci-layout"))?;
    if !layout.image_layout_version().starts_with("1.") {
        return Err(ImageError::Invalid(format!("unsupported image layout version {}", layout.image_layout_version())));
    }
    let index: ImageIndex =
        serde_json::from_slice(&archive.read_small("index.json")?).map_err(ImageError::json("index.json"))?;
    let mut candidates = Vec::new();
    for (i, d) in index.manifests().iter().enumerate() {
        let ann = d.annotations().as_ref();
        let full = ann.and_then(|a| a.get(CONTAINERD_NAME)).map(|n| split_reference(n));
        let ref_name = ann.and_then(|a| a.get(REF_NAME));
        let (name, tag) = match (full, ref_name) {
            // A ref.name with `:` or `/` is a whole reference, else a tag.
            (_, Some(r)) if r.contains(':') || r.contains('/') => {
                let (n, t) = split_reference(r);
                (Some(n), t)
            }
            (Some((n, _)), Some(r)) => (Some(n), Some(r.clone())),
            (None, Some(r)) => (None, Some(r.clone())),
            (Some((n, t)), None) => (Some(n), t),
            (None, None) => (None, None),
        };
        candidates.push(Candidate { name, tag, item: i });
    }
    let (i, selected) = select(&candidates, sel)?;
    let manifest = resolve_manifest(archive, &index.manifests()[i], 0)?;

    let config_d = manifest.config();
    let config_bytes = read_blob(archive, config_d, "image config")?;
    let value: serde_json::Value = serde_json::from_slice(&config_bytes).map_err(ImageError::json("image config"))?;
    let config = parse_config(value, "image config")?;
    let diff_ids = config.rootfs().diff_ids();
    if diff_ids.len() != manifest.layers().len() {
        return Err(ImageError::Invalid(format!(
            "manifest lists {} layers but the config has {} diff_ids",
            manifest.layers().len(),
            diff_ids.len()
        )));
    }
    let mut layers = Vec::new();
    for (d, diff_id) in manifest.layers().iter().zip(diff_ids) {
        let digest = Sha256Digest::try_from(d.digest())?;
        let path = blob_path(&digest);
        archive.open_file(&path)?;
        layers.push(LayerRef {
            path,
            compression: Some(Compression::of_layer_media_type(d.media_type())?),
            blob: Some((digest, Some(d.size()))),
            diff_id: Some(diff_id.parse()?),
        });
    }
    Ok(Parsed { format: SourceFormat::OciLayout, selected, config, layers })
}
