//! Bad input: a file that is no archive. One clear line, nothing at the output path.

#[path = "common/image.rs"]
mod common;

use std::fs;

use common::*;
use rootlayer::image::{ImageError, OutputFormat, Selector};

#[test]
fn not_an_archive_is_refused() {
    let d = tempfile::tempdir().unwrap();
    let base = d.path().join("notes.txt");
    fs::write(&base, "just some text, not a tar\n".repeat(100)).unwrap();
    let layer = new_layer(d.path(), "upper.tar", &layer_tar(&[("a", b"1")]));
    let out = d.path().join("out");
    let err = open_and_write(&base, &Selector::default(), OutputFormat::Layer, &out, &layer).unwrap_err();
    assert!(matches!(err, ImageError::NotAnArchive { .. }), "{err}");
    assert!(err.to_string().contains("notes.txt is not a tar archive"), "{err}");
    assert_clean_failure(&err, &out);
}
