//! Every time the written image carries is RFC 3339: a base whose config
//! records no history gets one entry per base layer with the base's own
//! `created` (not the time merged in from the base json), and a base
//! history entry whose time is not RFC 3339 (a literal "now") is written
//! without one. skopeo, which refuses such a time, reads the result.

#[path = "common/image.rs"]
mod common;

use common::*;
use rootlayer::image::{write_output, BaseImage, OutputFormat, Selector};

/// A docker-archive of two layers whose config's history is `history`
/// (None: no history at all).
fn base(dir: &std::path::Path, name: &str, history: Option<serde_json::Value>) -> std::path::PathBuf {
    let layers = [layer_tar(&[("a", b"1")]), layer_tar(&[("b", b"2")])];
    let mut files = docker_archive_files(&[(&["base:1"], &layers)]);
    let i = files.iter().position(|(n, _)| n.ends_with(".json") && n != "manifest.json").unwrap();
    let mut cfg: serde_json::Value = serde_json::from_slice(&files[i].1).unwrap();
    match history {
        Some(h) => cfg["history"] = h,
        None => {
            cfg.as_object_mut().unwrap().remove("history");
        }
    }
    let bytes = serde_json::to_vec(&cfg).unwrap();
    let new_name = format!("{}.json", sha256_hex(&bytes));
    let old_name = std::mem::replace(&mut files[i], (new_name.clone(), bytes)).0;
    let m = files.iter_mut().find(|(n, _)| n == "manifest.json").unwrap();
    m.1 = String::from_utf8(m.1.clone()).unwrap().replace(&old_name, &new_name).into_bytes();
    let path = dir.join(name);
    tar_files(&path, &files);
    path
}

#[test]
fn history_times_are_rfc3339_whatever_the_base_had() {
    let d = tempfile::tempdir().unwrap();
    let layer = new_layer(d.path(), "upper.tar", &layer_tar(&[("c", b"3")]));
    let cases = [
        ("bare.tar", None, ["2024-01-01T00:00:00Z", "2024-01-01T00:00:00Z"]),
        (
            "now.tar",
            Some(serde_json::json!([{ "created": "now" }, { "created": "2023-05-06T07:08:09Z" }])),
            ["none", "2023-05-06T07:08:09Z"],
        ),
    ];
    for (name, history, want) in cases {
        let base = base(d.path(), name, history);
        let img = BaseImage::open(&base, &Selector::default()).unwrap();
        let out = d.path().join(format!("out-{name}"));
        write_output(OutputFormat::DockerArchive, &out, Some(&img), &layer, &meta()).unwrap();
        let cfg: serde_json::Value =
            serde_json::from_str(&skopeo(&["inspect", "--config", &format!("docker-archive:{}", out.display())]))
                .unwrap();
        let times: Vec<&str> =
            cfg["history"].as_array().unwrap().iter().map(|h| h["created"].as_str().unwrap_or("none")).collect();
        assert_eq!(times, [want[0], want[1], "2025-02-03T04:05:06Z"], "{name}: {cfg}");
        assert_eq!(cfg["created"], "2025-02-03T04:05:06Z");
    }
}
