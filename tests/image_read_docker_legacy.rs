//! Reading the older docker-archive layout that has only `repositories` and
//! `<id>/json` files chaining layers through `parent`, packed by GNU tar.

#[path = "common/image.rs"]
mod common;

use std::fs;
use std::io::Read;

use common::*;
use rootlayer::image::{BaseImage, Selector, SourceFormat};

#[test]
fn legacy_layout_follows_parent_chain_bottom_first() {
    let d = tempfile::tempdir().unwrap();
    let tree = d.path().join("tree");
    let layers = [layer_tar(&[("bottom", b"1")]), layer_tar(&[("middle", b"2")]), layer_tar(&[("top", b"3")])];
    let ids = ["aaaa", "bbbb", "cccc"];
    for (i, (id, tar)) in ids.iter().zip(&layers).enumerate() {
        fs::create_dir_all(tree.join(id)).unwrap();
        fs::write(tree.join(id).join("layer.tar"), tar).unwrap();
        let mut json = serde_json::json!({
            "id": id, "created": format!("2020-01-0{}T00:00:00Z", i + 1),
            "architecture": "amd64", "os": "linux", "checksum": "tarsum.v1+sha256:00",
        });
        if i > 0 {
            json["parent"] = ids[i - 1].into();
        }
        if i == 2 {
            json["config"] = serde_json::json!({"Env": ["TOP=1"]});
        }
        fs::write(tree.join(id).join("json"), json.to_string()).unwrap();
        fs::write(tree.join(id).join("VERSION"), "1.0").unwrap();
    }
    // Two names; the first in file order (not alphabetical) is the default.
    fs::write(tree.join("repositories"), r#"{"zz/top": {"latest": "cccc", "old": "bbbb"}, "aa/mid": {"x": "bbbb"}}"#)
        .unwrap();
    let path = d.path().join("legacy.tar");
    gnu_tar(&tree, &path);

    let img = BaseImage::open(&path, &Selector::default()).unwrap();
    assert_eq!(img.format(), SourceFormat::DockerArchiveLegacy);
    assert_eq!(img.selected().to_string(), "zz/top:latest");
    let got: Vec<String> = img.layers().iter().map(|l| l.diff_id.to_string()).collect();
    let want: Vec<String> = layers.iter().map(|l| diff_id(l)).collect();
    assert_eq!(got, want);
    assert_eq!(img.config().rootfs().diff_ids(), &want);
    let env = img.config().config().as_ref().unwrap().env().clone().unwrap();
    assert_eq!(env, ["TOP=1"]);
    let mut top = Vec::new();
    img.open_layer(2).unwrap().read_to_end(&mut top).unwrap();
    assert_eq!(top, layers[2]);

    let sel = Selector { name: Some("zz/top".into()), tag: Some("old".into()) };
    let img = BaseImage::open(&path, &sel).unwrap();
    assert_eq!(img.layers().len(), 2);
    let sel = Selector { name: Some("aa/mid".into()), tag: None };
    assert_eq!(BaseImage::open(&path, &sel).unwrap().layers().len(), 2);
}
