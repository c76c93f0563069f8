//! Bad input: a tar with neither manifest.json nor repositories. One clear line, nothing at the output path.

#[path = "common/image.rs"]
mod common;

use common::*;
use rootlayer::image::{ImageError, OutputFormat, Selector};

#[test]
fn archive_without_manifest_or_repositories_is_refused() {
    let d = tempfile::tempdir().unwrap();
    let base = d.path().join("img.tar");
    let l = layer_tar(&[("a", b"1")]);
    tar_files(&base, &[(format!("{}/layer.tar", sha256_hex(&l)), l.clone())]);
    let layer = new_layer(d.path(), "upper.tar", &l);
    let out = d.path().join("out");
    let err = open_and_write(&base, &Selector::default(), OutputFormat::Oci, &out, &layer).unwrap_err();
    assert!(matches!(err, ImageError::NoManifest { .. }), "{err}");
    assert!(err.to_string().contains("no manifest.json, repositories or index.json"), "{err}");
    assert_clean_failure(&err, &out);
}
