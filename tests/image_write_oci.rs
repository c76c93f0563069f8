//! The `oci` output: an OCI layout with the new layer appended to the base,
//! unpacked by umoci into the expected tree, and inspected by skopeo.

#[path = "common/image.rs"]
mod common;

use std::collections::BTreeMap;

use common::*;
use rootlayer::image::{write_output, BaseImage, OutputFormat, Selector};

#[test]
fn oci_output_unpacks_with_umoci_to_the_expected_tree() {
    if !is_root() {
        println!("skipping: umoci unpack needs root");
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let src = d.path().join("src");
    let l1 = layer_tar(&[("usr/", b""), ("usr/keep", b"k"), ("usr/drop", b"d")]);
    let l2 = layer_tar(&[("var/", b""), ("var/log", b"l")]);
    oci_layout(&src, "base", &[(l1.clone(), "gzip"), (l2.clone(), "none")]);
    let new = layer_tar(&[("usr/", b""), ("usr/.wh.drop", b""), ("root/", b""), ("root/x", b"new")]);
    let layer = new_layer(d.path(), "upper.tar", &new);
    let out = d.path().join("out.oci");
    open_and_write(&src, &Selector::default(), OutputFormat::Oci, &out, &layer).unwrap();

    let rootfs = umoci_unpack(&out, "v1", &d.path().join("bundle"));
    let expected: BTreeMap<String, String> = [
        ("root", "dir 755"),
        ("root/x", "file new"),
        ("usr", "dir 755"),
        ("usr/keep", "file k"),
        ("var", "dir 755"),
        ("var/log", "file l"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    assert_eq!(tree(&rootfs), expected);

    let v: serde_json::Value =
        serde_json::from_str(&skopeo(&["inspect", &format!("oci:{}:v1", out.display())])).unwrap();
    assert_eq!(v["Layers"].as_array().unwrap().len(), 3);
    // Our reader reads it back with every digest checked.
    let img = BaseImage::open(&out, &Selector::default()).unwrap();
    let got: Vec<String> = img.layers().iter().map(|l| l.diff_id.to_string()).collect();
    assert_eq!(got, [diff_id(&l1), diff_id(&l2), diff_id(&new)]);
    assert_eq!(img.selected().to_string(), "rootlayer/test:v1");
}

#[test]
fn oci_output_without_base_image_is_one_layer() {
    let d = tempfile::tempdir().unwrap();
    let new = layer_tar(&[("only", b"1")]);
    let layer = new_layer(d.path(), "upper.tar", &new);
    let out = d.path().join("out.oci");
    write_output(OutputFormat::Oci, &out, None, &layer, &meta()).unwrap();
    let v: serde_json::Value =
        serde_json::from_str(&skopeo(&["inspect", &format!("oci:{}:v1", out.display())])).unwrap();
    assert_eq!(v["Layers"], serde_json::json!([diff_id(&new)]));
    assert_eq!(v["Env"], serde_json::json!(["A=1"]));
}
