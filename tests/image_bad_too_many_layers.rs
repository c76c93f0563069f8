//! Bad input: a manifest naming more layers than any base image needs (501;
//! docker itself stops at 125). Refused when the image is opened, before any
//! layer is staged: one clear line, nothing at the output path. 500 are
//! taken.

#[path = "common/image.rs"]
mod common;

use common::*;
use rootlayer::image::{ImageError, OutputFormat, Selector, MAX_LAYERS};

fn image_of(d: &std::path::Path, layers: usize) -> std::path::PathBuf {
    let l = layer_tar(&[("a", b"1")]);
    let base = d.join(format!("img-{layers}.tar"));
    // The same small layer, named again and again.
    let files = docker_archive_files(&[(&["a:1"], &vec![l; layers])]);
    tar_files(&base, &files);
    base
}

#[test]
fn a_manifest_of_too_many_layers_is_refused() {
    let d = tempfile::tempdir().unwrap();
    let layer = new_layer(d.path(), "upper.tar", &layer_tar(&[("b", b"2")]));
    let out = d.path().join("out");
    let err =
        open_and_write(&image_of(d.path(), MAX_LAYERS + 1), &Selector::default(), OutputFormat::Layer, &out, &layer)
            .unwrap_err();
    assert!(matches!(err, ImageError::Invalid(_)), "{err}");
    assert!(err.to_string().contains("501 layers: at most 500"), "{err}");
    assert_clean_failure(&err, &out);
    open_and_write(&image_of(d.path(), MAX_LAYERS), &Selector::default(), OutputFormat::Layer, &out, &layer).unwrap();
}
