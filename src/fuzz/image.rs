//! `image` and `image_json`: reading a base image (`--from-image`, the
//! user's input).
//!
//! `image`: input = the whole file (docker-archive or OCI layout tar, plain,
//! gzip or zstd). `image_json`: input = `sel: u8` then one JSON document
//! put into a fixed, otherwise valid image, with every digest that names it
//! recomputed so the parsers, not the digest checks, see it: `sel % 7`
//! picks docker `manifest.json`, docker config, legacy `repositories`,
//! legacy `<id>/json`, OCI `index.json`, OCI manifest or OCI config;
//! `sel >> 4 & 3` picks the selector (none, name `repo`, tag `t`, both).
//!
//! Both open the image, then stream every layer through its verification.
//! Invariants: no panic; an opened image's layers each have a diff_id and
//! a layer that reads to its end verifies.

use super::take_u8;
use crate::image::{BaseImage, Selector};
use sha2::{Digest, Sha256};
use std::io::Read;
use std::path::Path;
use std::sync::OnceLock;

/// Stop reading a layer after this much (a compressed layer can expand
/// without bound; the real reader streams it).
const MAX_LAYER_READ: u64 = 64 << 20;

fn scratch() -> &'static tempfile::TempDir {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| tempfile::tempdir().expect("temporary directory"))
}

fn open_and_read(bytes: &[u8], sel: &Selector) {
    let path = scratch().path().join(format!("image-{:?}", std::thread::current().id()));
    std::fs::write(&path, bytes).expect("write the image");
    check(&path, sel);
    let _ = std::fs::remove_file(&path);
}

fn check(path: &Path, sel: &Selector) {
    let image = match BaseImage::open(path, sel) {
        Ok(i) => i,
        Err(e) => {
            let _ = e.to_string();
            return;
        }
    };
    let _ = (image.format(), image.selected().message(), image.config().rootfs().diff_ids().len());
    for i in 0..image.layers().len() {
        let Ok(layer) = image.open_layer(i) else { continue };
        let mut sink = Vec::new();
        let _ = layer.take(MAX_LAYER_READ).read_to_end(&mut sink);
    }
}

pub fn image(data: &[u8]) {
    open_and_read(data, &Selector::default());
}

fn hex(data: &[u8]) -> String {
    format!("{:x}", Sha256::digest(data))
}

pub(super) fn tar(files: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (name, data) in files {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_mode(0o644);
        h.set_size(data.len() as u64);
        b.append_data(&mut h, name, &data[..]).expect("append");
    }
    b.into_inner().expect("tar")
}

fn layer() -> &'static Vec<u8> {
    static LAYER: OnceLock<Vec<u8>> = OnceLock::new();
    LAYER.get_or_init(|| tar(&[("etc/hostname".into(), b"fuzz\n".to_vec())]))
}

const LEGACY_ID: &str = "5d0da3dc976460b72c77d94c8a1ad043720b0416bfc16c52c45d4847e53fadb6";

pub fn image_json(mut data: &[u8]) {
    let Some(sel) = take_u8(&mut data) else { return };
    let (files, _) = image_files(sel % 7, Some(data.to_vec()));
    let selector = Selector {
        name: (sel & 0x10 != 0).then(|| "repo".to_string()),
        tag: (sel & 0x20 != 0).then(|| "t".to_string()),
    };
    open_and_read(&tar(&files), &selector);
}

/// The members of the fixed image with document `k` (see the module
/// documentation) replaced by `json`, or the default one if `None`; and
/// the index of document `k` among them.
fn image_files(k: u8, json: Option<Vec<u8>>) -> (Vec<(String, Vec<u8>)>, usize) {
    let doc = |i: u8, default: &dyn Fn() -> serde_json::Value| match &json {
        Some(j) if i == k => j.clone(),
        _ => serde_json::to_vec(&default()).expect("serialize"),
    };
    let layer = layer().clone();
    let diff_id = format!("sha256:{}", hex(&layer));
    let created = "2024-01-01T00:00:00Z";
    let config_default = || {
        serde_json::json!({
            "architecture": "amd64", "os": "linux", "created": created,
            "config": { "Env": ["PATH=/bin"], "Cmd": ["/bin/sh"] },
            "rootfs": { "type": "layers", "diff_ids": [diff_id] },
            "history": [{ "created": created }],
        })
    };
    match k {
        0 | 1 => {
            let config = doc(1, &config_default);
            let config_name = format!("{}.json", hex(&config));
            let manifest = doc(
                0,
                &|| serde_json::json!([{ "Config": config_name, "RepoTags": ["repo:t"], "Layers": ["l/layer.tar"] }]),
            );
            let files = vec![("manifest.json".into(), manifest), (config_name, config), ("l/layer.tar".into(), layer)];
            (files, usize::from(k))
        }
        2 | 3 => {
            let repos = doc(2, &|| serde_json::json!({ "repo": { "t": LEGACY_ID } }));
            let top = doc(3, &|| serde_json::json!({ "id": LEGACY_ID, "created": created }));
            let files = vec![
                ("repositories".into(), repos),
                (format!("{LEGACY_ID}/json"), top),
                (format!("{LEGACY_ID}/layer.tar"), layer),
            ];
            (files, usize::from(k - 2))
        }
        _ => {
            let config = doc(6, &config_default);
            let manifest = doc(5, &|| {
                serde_json::json!({
                    "schemaVersion": 2,
                    "mediaType": "application/vnd.oci.image.manifest.v1+json",
                    "config": { "mediaType": "application/vnd.oci.image.config.v1+json",
                                "digest": format!("sha256:{}", hex(&config)), "size": config.len() },
                    "layers": [{ "mediaType": "application/vnd.oci.image.layer.v1.tar",
                                 "digest": diff_id, "size": layer.len() }],
                })
            });
            let index = doc(4, &|| {
                serde_json::json!({
                    "schemaVersion": 2,
                    "manifests": [{ "mediaType": "application/vnd.oci.image.manifest.v1+json",
                                    "digest": format!("sha256:{}", hex(&manifest)), "size": manifest.len(),
                                    "annotations": { "org.opencontainers.image.ref.name": "t" } }],
                })
            });
            let files = vec![
                ("index.json".into(), index),
                (format!("blobs/sha256/{}", hex(&manifest)), manifest),
                (format!("blobs/sha256/{}", hex(&config)), config),
                (format!("blobs/sha256/{}", hex(&layer)), layer),
                ("oci-layout".into(), br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec()),
            ];
            (files, usize::from(6 - k))
        }
    }
}

#[cfg(test)]
pub(super) fn default_documents() -> Vec<(u8, Vec<u8>)> {
    (0..7)
        .map(|k| {
            let (files, i) = image_files(k, None);
            (k, files[i].1.clone())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The fixed image opens with every default document, and the real
    /// images of the `image` seeds open.
    #[test]
    fn fixed_and_seed_images_open() {
        let path = scratch().path().join("test-image");
        for k in 0..7 {
            for sel in [Selector::default(), Selector { name: Some("repo".into()), tag: Some("t".into()) }] {
                if k >= 4 && sel.name.is_some() {
                    continue; // an OCI layout names no repository
                }
                std::fs::write(&path, tar(&image_files(k, None).0)).unwrap();
                let image = BaseImage::open(&path, &sel).unwrap_or_else(|e| panic!("document {k}: {e}"));
                assert_eq!(image.layers().len(), 1);
            }
        }
        let seeds = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus-seeds/image");
        for e in std::fs::read_dir(seeds).unwrap() {
            let p = e.unwrap().path();
            let image = BaseImage::open(&p, &Selector::default()).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            assert_eq!(image.layers().len(), 1);
        }
    }
}
