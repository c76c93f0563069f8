//! Bad input: a layer whose content does not match its stated digest. One clear line, nothing at the output path.

#[path = "common/image.rs"]
mod common;

use std::fs;

use common::*;
use rootlayer::image::{ImageError, OutputFormat, Selector};

#[test]
fn layer_not_matching_its_diff_id_is_refused() {
    let d = tempfile::tempdir().unwrap();
    let base = d.path().join("img.tar");
    let good = layer_tar(&[("etc/passwd", b"root")]);
    let mut files = docker_archive_files(&[(&["a:1"], std::slice::from_ref(&good))]);
    // Same path and size, different content: only the digest can tell.
    let evil = layer_tar(&[("etc/passwd", b"evil")]);
    for (name, data) in files.iter_mut() {
        if name.ends_with("layer.tar") {
            *data = evil.clone();
        }
    }
    tar_files(&base, &files);
    let layer = new_layer(d.path(), "upper.tar", &good);
    let out = d.path().join("out.tar");
    let err = open_and_write(&base, &Selector::default(), OutputFormat::DockerArchive, &out, &layer).unwrap_err();
    assert!(matches!(err, ImageError::DigestMismatch { .. }), "{err}");
    let msg = err.to_string();
    assert!(msg.contains(&diff_id(&good)) && msg.contains(&diff_id(&evil)), "{msg}");
    assert_clean_failure(&err, &out);
}

#[test]
fn oci_blob_not_matching_its_digest_is_refused() {
    let d = tempfile::tempdir().unwrap();
    let src = d.path().join("layout");
    let l = layer_tar(&[("a", b"1")]);
    oci_layout(&src, "t", &[(l.clone(), "gzip")]);
    // Corrupt the compressed blob: its digest no longer matches.
    let blob = src.join("blobs/sha256").join(sha256_hex(&gzip(&l)));
    let mut data = fs::read(&blob).unwrap();
    let last = data.len() - 1;
    data[last] ^= 0xff;
    fs::write(&blob, data).unwrap();
    let layer = new_layer(d.path(), "upper.tar", &l);
    let out = d.path().join("out");
    let err = open_and_write(&src, &Selector::default(), OutputFormat::Oci, &out, &layer).unwrap_err();
    assert!(matches!(err, ImageError::DigestMismatch { .. } | ImageError::Decompress { .. }), "{err}");
    assert_clean_failure(&err, &out);
}
