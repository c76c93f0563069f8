//! docker-archive reading: `manifest.json` (Docker image spec v1.2,
//! "Combined Image JSON + Filesystem Changeset Format"), or, without it, the
//! older layout of `repositories` plus `<id>/json` files whose `parent`
//! fields chain the layers from the top down.

use std::collections::HashSet;
use std::fmt;
use std::marker::PhantomData;

use serde::de::{Deserializer, MapAccess, Visitor};
use serde::{Deserialize, Serialize};

use super::archive::{normalize, Archive};
use super::digest::Sha256Digest;
use super::select::{select, split_reference, Candidate, Selector};
use super::types::{parse_config, LayerRef, Parsed, SourceFormat};
use super::ImageError;

/// One entry of `manifest.json`. Not covered by oci-spec: it is Docker's.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct ManifestEntry {
    pub(crate) config: String,
    #[serde(default)]
    pub(crate) repo_tags: Option<Vec<String>>,
    pub(crate) layers: Vec<String>,
}

/// A JSON object read with its keys in file order: dockerTools takes "the
/// first" name and tag of `repositories`, which only means something in order.
#[derive(Debug)]
pub(crate) struct OrderedMap<V>(pub(crate) Vec<(String, V)>);

impl<'de, V: Deserialize<'de>> Deserialize<'de> for OrderedMap<V> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V_<V>(PhantomData<V>);
        impl<'de, V: Deserialize<'de>> Visitor<'de> for V_<V> {
            type Value = OrderedMap<V>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<Self::Value, A::Error> {
                let mut v = Vec::new();
                while let Some((k, val)) = m.next_entry()? {
                    v.push((k, val));
                }
                Ok(OrderedMap(v))
            }
        }
        d.deserialize_map(V_(PhantomData))
    }
}

/// The digest a config's file name states, if it is content-addressed
/// (`<hex>.json` as Docker and skopeo write, or `blobs/sha256/<hex>`).
fn named_digest(path: &str) -> Option<Sha256Digest> {
    let base = path.rsplit('/').next()?;
    if let Some(hex) = base.strip_suffix(".json") {
        return Sha256Digest::from_hex(hex);
    }
    path.strip_prefix("blobs/sha256/").and_then(Sha256Digest::from_hex)
}

pub(crate) fn read_manifest(archive: &Archive, sel: &Selector) -> Result<Parsed, ImageError> {
    let bytes = archive.read_small("manifest.json")?;
    let entries: Vec<ManifestEntry> = serde_json::from_slice(&bytes).map_err(ImageError::json("manifest.json"))?;
    let mut candidates = Vec::new();
    for (i, e) in entries.iter().enumerate() {
        match e.repo_tags.as_deref() {
            Some(tags) if !tags.is_empty() => {
                for t in tags {
                    let (name, tag) = split_reference(t);
                    candidates.push(Candidate { name: Some(name), tag, item: i });
                }
            }
            _ => candidates.push(Candidate { name: None, tag: None, item: i }),
        }
    }
    let (index, selected) = select(&candidates, sel)?;
    let entry = &entries[index];

    let config_path = normalize(&entry.config)?;
    let config_bytes = archive.read_small(&config_path)?;
    if let Some(stated) = named_digest(&config_path) {
        let actual = Sha256Digest::of(&config_bytes);
        if actual != stated {
            return Err(ImageError::DigestMismatch {
                what: format!("config {config_path}"),
                expected: stated.to_string(),
                actual: actual.to_string(),
            });
        }
    }
    let value: serde_json::Value = serde_json::from_slice(&config_bytes).map_err(ImageError::json(&config_path))?;
    let config = parse_config(value, &config_path)?;
    let diff_ids = config.rootfs().diff_ids();
    if diff_ids.len() != entry.layers.len() {
        return Err(ImageError::Invalid(format!(
            "manifest.json lists {} layers but config {config_path} has {} diff_ids",
            entry.layers.len(),
            diff_ids.len()
        )));
    }
    let mut layers = Vec::new();
    for (path, diff_id) in entry.layers.iter().zip(diff_ids) {
        let path = normalize(path)?;
        if !archive.exists(&path) {
            // Tells a missing member from an escaping link.
            archive.open_file(&path)?;
        }
        layers.push(LayerRef { blob: named_blob(&path), path, compression: None, diff_id: Some(diff_id.parse()?) });
    }
    Ok(Parsed { format: SourceFormat::DockerArchive, selected, config, layers })
}

/// `docker save` from Docker 25 on stores layers as `blobs/sha256/<hex>`:
/// the name is a digest to check.
fn named_blob(path: &str) -> Option<(Sha256Digest, Option<u64>)> {
    path.strip_prefix("blobs/sha256/").and_then(Sha256Digest::from_hex).map(|d| (d, None))
}

pub(crate) fn read_legacy(archive: &Archive, sel: &Selector) -> Result<Parsed, ImageError> {
    let bytes = archive.read_small("repositories")?;
    let repos: OrderedMap<OrderedMap<String>> =
        serde_json::from_slice(&bytes).map_err(ImageError::json("repositories"))?;
    let mut candidates = Vec::new();
    for (name, tags) in &repos.0 {
        for (tag, id) in &tags.0 {
            candidates.push(Candidate { name: Some(name.clone()), tag: Some(tag.clone()), item: id.clone() });
        }
    }
    let (top, selected) = select(&candidates, sel)?;

    // Walk the parent chain from the top layer down.
    let mut chain = Vec::new();
    let mut seen = HashSet::new();
    let mut top_json = None;
    let mut next = Some(top);
    while let Some(id) = next {
        if id.contains('/') || id.is_empty() || id == "." || id == ".." {
            return Err(ImageError::PathEscape { path: id });
        }
        if !seen.insert(id.clone()) {
            return Err(ImageError::Invalid(format!("layer {id} is its own ancestor")));
        }
        let json_path = format!("{id}/json");
        let value: serde_json::Value =
            serde_json::from_slice(&archive.read_small(&json_path)?).map_err(ImageError::json(&json_path))?;
        next = value.get("parent").and_then(|p| p.as_str()).filter(|p| !p.is_empty()).map(str::to_string);
        let layer_path = format!("{id}/layer.tar");
        archive.open_file(&layer_path)?;
        chain.push((layer_path, value.get("created").cloned()));
        if top_json.is_none() {
            top_json = Some(value);
        }
    }
    chain.reverse();

    let mut value = top_json.unwrap_or_else(|| serde_json::json!({}));
    if let Some(obj) = value.as_object_mut() {
        for k in ["id", "parent", "Size", "checksum", "layer_id", "container"] {
            obj.remove(k);
        }
        let history: Vec<serde_json::Value> = chain
            .iter()
            .map(|(_, created)| match created {
                Some(c) => serde_json::json!({ "created": c }),
                None => serde_json::json!({}),
            })
            .collect();
        obj.insert("history".into(), history.into());
    }
    let config = parse_config(value, "the top layer's json")?;
    let layers =
        chain.into_iter().map(|(path, _)| LayerRef { path, compression: None, blob: None, diff_id: None }).collect();
    Ok(Parsed { format: SourceFormat::DockerArchiveLegacy, selected, config, layers })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordered_map_keeps_file_order() {
        let m: OrderedMap<OrderedMap<String>> =
            serde_json::from_str(r#"{"zeta": {"b": "1", "a": "2"}, "alpha": {"x": "3"}}"#).unwrap();
        let names: Vec<_> = m.0.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(names, ["zeta", "alpha"]);
        let tags: Vec<_> = m.0[0].1 .0.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(tags, ["b", "a"]);
    }

    #[test]
    fn config_file_names_state_digests() {
        let hex = Sha256Digest::of(b"x").hex();
        assert!(named_digest(&format!("{hex}.json")).is_some());
        assert!(named_digest(&format!("blobs/sha256/{hex}")).is_some());
        assert!(named_digest("config.json").is_none());
    }
}
