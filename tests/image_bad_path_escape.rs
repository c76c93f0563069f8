//! Bad input: a manifest naming a layer outside the archive. One clear line, nothing at the output path.

#[path = "common/image.rs"]
mod common;

use common::*;
use rootlayer::image::{ImageError, OutputFormat, Selector};

#[test]
fn layer_path_escaping_the_archive_is_refused() {
    let d = tempfile::tempdir().unwrap();
    let l = layer_tar(&[("a", b"1")]);
    let layer = new_layer(d.path(), "upper.tar", &l);
    let out = d.path().join("out");
    for evil in ["../upper.tar", "/etc/passwd", "x/../../upper.tar"] {
        let base = d.path().join("img.tar");
        let mut files = docker_archive_files(&[(&["a:1"], std::slice::from_ref(&l))]);
        let manifest = serde_json::json!([{
            "Config": files.iter().find(|(n, _)| n.ends_with(".json") && n != "manifest.json").unwrap().0,
            "RepoTags": ["a:1"],
            "Layers": [evil],
        }]);
        files.retain(|(n, _)| n != "manifest.json");
        files.push(("manifest.json".into(), serde_json::to_vec(&manifest).unwrap()));
        tar_files(&base, &files);
        let err = open_and_write(&base, &Selector::default(), OutputFormat::Layer, &out, &layer).unwrap_err();
        assert!(matches!(err, ImageError::PathEscape { .. }), "{evil}: {err}");
        assert!(err.to_string().contains("escapes the archive"), "{err}");
        assert_clean_failure(&err, &out);
    }
}
