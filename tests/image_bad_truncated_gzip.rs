//! Bad input: a gzip-compressed archive cut short. One clear line, nothing at the output path.

#[path = "common/image.rs"]
mod common;

use std::fs;

use common::*;
use rootlayer::image::{ImageError, OutputFormat, Selector};

#[test]
fn truncated_gzip_is_refused() {
    let d = tempfile::tempdir().unwrap();
    let base = d.path().join("img.tar.gz");
    let big: Vec<u8> = (0..200_000u32).map(|i| (i * 7 % 251) as u8).collect();
    docker_archive(&base, &[(&["a:1"], &[layer_tar(&[("f", &big)])])], true);
    let full = fs::read(&base).unwrap();
    fs::write(&base, &full[..full.len() / 2]).unwrap();
    let layer = new_layer(d.path(), "upper.tar", &layer_tar(&[("a", b"1")]));
    let out = d.path().join("out.tar");
    let err = open_and_write(&base, &Selector::default(), OutputFormat::DockerArchive, &out, &layer).unwrap_err();
    assert!(matches!(err, ImageError::Decompress { .. }), "{err}");
    assert!(err.to_string().contains("corrupt or truncated"), "{err}");
    assert_clean_failure(&err, &out);
}
