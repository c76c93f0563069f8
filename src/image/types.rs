//! What every format reader produces, whatever the format: the leaf the
//! readers (`docker`, `oci`), the verifier (`read`) and the writer (`write`)
//! share, so that none of them depends on another for its types.

use oci_spec::image::ImageConfiguration;

use super::compression::Compression;
use super::digest::Sha256Digest;
use super::select::Selected;
use super::ImageError;

/// The format the base image was found in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceFormat {
    /// `manifest.json` with configs and layer paths.
    DockerArchive,
    /// Only `repositories` and `<id>/json` parent chains.
    DockerArchiveLegacy,
    /// `oci-layout`, `index.json` and `blobs/`.
    OciLayout,
}

/// What a format reader found, before layers are verified.
#[derive(Debug)]
pub(crate) struct Parsed {
    pub(crate) format: SourceFormat,
    pub(crate) selected: Selected,
    pub(crate) config: ImageConfiguration,
    pub(crate) layers: Vec<LayerRef>,
}

/// A layer as the image states it.
#[derive(Debug)]
pub(crate) struct LayerRef {
    pub(crate) path: String,
    /// Known from the media type; `None` means sniff the blob.
    pub(crate) compression: Option<Compression>,
    pub(crate) blob: Option<(Sha256Digest, Option<u64>)>,
    /// `None` when the format states no diff_id (legacy layout).
    pub(crate) diff_id: Option<Sha256Digest>,
}

/// Parses an image config, tolerating the fields old writers leave out.
pub(crate) fn parse_config(mut value: serde_json::Value, what: &str) -> Result<ImageConfiguration, ImageError> {
    let obj = value.as_object_mut().ok_or_else(|| ImageError::Invalid(format!("{what} is not a JSON object")))?;
    obj.entry("architecture").or_insert_with(|| "amd64".into());
    obj.entry("os").or_insert_with(|| "linux".into());
    obj.entry("rootfs").or_insert_with(|| serde_json::json!({"type": "layers", "diff_ids": []}));
    serde_json::from_value(value).map_err(ImageError::json(what))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_without_architecture_or_rootfs_still_parses() {
        let c = parse_config(serde_json::json!({"config": {"Env": ["A=1"]}}), "t").unwrap();
        assert_eq!(c.os().to_string(), "linux");
        assert!(c.rootfs().diff_ids().is_empty());
    }
}
