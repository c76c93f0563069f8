//! Bad input: a name and tag the archive does not have. One clear line, nothing at the output path.

#[path = "common/image.rs"]
mod common;

use common::*;
use rootlayer::image::{ImageError, OutputFormat, Selector};

#[test]
fn unknown_name_or_tag_lists_those_present() {
    let d = tempfile::tempdir().unwrap();
    let base = d.path().join("img.tar");
    let l = layer_tar(&[("a", b"1")]);
    docker_archive(
        &base,
        &[(&["one:1", "one:2"], std::slice::from_ref(&l)), (&["two:latest"], std::slice::from_ref(&l))],
        false,
    );
    let layer = new_layer(d.path(), "upper.tar", &l);
    let out = d.path().join("out");
    for (name, tag) in [("one", "3"), ("three", "latest")] {
        let sel = Selector { name: Some(name.into()), tag: Some(tag.into()) };
        let err = open_and_write(&base, &sel, OutputFormat::Layer, &out, &layer).unwrap_err();
        assert!(matches!(err, ImageError::ImageNotFound { .. }), "{err}");
        assert_eq!(
            err.to_string(),
            format!("No image {name}:{tag} in the base image; present: one:1, one:2, two:latest")
        );
        assert_clean_failure(&err, &out);
    }
}
