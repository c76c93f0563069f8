//! The `layer` output: what nixpkgs mkRootLayer leaves in `$out`, plus the
//! diff_id in `layer.sha256`; staged and renamed, so a bad input leaves
//! nothing behind.

#[path = "common/image.rs"]
mod common;

use std::fs;

use common::*;
use rootlayer::image::{write_output, ImageError, OutputFormat};

#[test]
fn layer_output_has_mkrootlayer_files_and_the_diff_id() {
    let d = tempfile::tempdir().unwrap();
    let tar = layer_tar(&[("etc/", b""), ("etc/passwd", b"root:x:0:0::/root:/bin/sh\n")]);
    let layer = new_layer(d.path(), "upper.tar", &tar);
    let out = d.path().join("out");
    write_output(OutputFormat::Layer, &out, None, &layer, &meta()).unwrap();

    let mut names: Vec<String> =
        fs::read_dir(&out).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    assert_eq!(names, ["VERSION", "json", "layer.sha256", "layer.tar"]);
    assert_eq!(fs::read(out.join("layer.tar")).unwrap(), tar);
    assert_eq!(fs::read_to_string(out.join("VERSION")).unwrap(), "1.0");
    assert_eq!(fs::read_to_string(out.join("layer.sha256")).unwrap(), diff_id(&tar));
    let json: serde_json::Value = serde_json::from_slice(&fs::read(out.join("json")).unwrap()).unwrap();
    // The base json's fields, plus the checksum, as jshon -i checksum does.
    assert_eq!(json["config"]["Env"][0], "A=1");
    assert_eq!(json["architecture"], "amd64");
    assert_eq!(json["checksum"], diff_id(&tar));
    // GNU tar reads the layer.
    let listing = run(std::process::Command::new("tar").arg("-tf").arg(out.join("layer.tar")));
    assert_eq!(listing, "etc/\netc/passwd\n");

    // Writing again refuses to replace the output.
    let err = write_output(OutputFormat::Layer, &out, None, &layer, &meta()).unwrap_err();
    assert!(matches!(err, ImageError::OutputExists(_)), "{err}");
}

#[test]
fn layer_whose_digest_does_not_match_leaves_nothing() {
    let d = tempfile::tempdir().unwrap();
    let tar = layer_tar(&[("a", b"1")]);
    let mut layer = new_layer(d.path(), "upper.tar", &tar);
    layer.diff_id = diff_id(b"something else").parse().unwrap();
    let out = d.path().join("out");
    let err = write_output(OutputFormat::Layer, &out, None, &layer, &meta()).unwrap_err();
    assert!(matches!(err, ImageError::DigestMismatch { .. }), "{err}");
    assert_clean_failure(&err, &out);
}
