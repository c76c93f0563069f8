//! Bad input: a manifest naming a layer the archive lacks. One clear line, nothing at the output path.

#[path = "common/image.rs"]
mod common;

use common::*;
use rootlayer::image::{ImageError, OutputFormat, Selector};

#[test]
fn manifest_naming_a_missing_layer_is_refused() {
    let d = tempfile::tempdir().unwrap();
    let base = d.path().join("img.tar");
    let l = layer_tar(&[("a", b"1")]);
    let mut files = docker_archive_files(&[(&["a:1"], std::slice::from_ref(&l))]);
    files.retain(|(n, _)| !n.ends_with("layer.tar"));
    tar_files(&base, &files);
    let layer = new_layer(d.path(), "upper.tar", &l);
    let out = d.path().join("out");
    let err = open_and_write(&base, &Selector::default(), OutputFormat::Layer, &out, &layer).unwrap_err();
    assert!(matches!(err, ImageError::MissingEntry { .. }), "{err}");
    assert_eq!(
        err.to_string(),
        format!("The base image has no \"{}/layer.tar\", but its manifest names it", sha256_hex(&l))
    );
    assert_clean_failure(&err, &out);
}
