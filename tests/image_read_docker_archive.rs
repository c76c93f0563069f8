//! Reading a `manifest.json` docker-archive (gzip-compressed, two images):
//! selection by name and tag, the default choice, layers bottom first with
//! their diff_ids, and each layer streamed back uncompressed.

#[path = "common/image.rs"]
mod common;

use std::io::Read;

use common::*;
use rootlayer::image::{BaseImage, Selector, SourceFormat};

fn read_all(img: &BaseImage, i: usize) -> Vec<u8> {
    let mut v = Vec::new();
    img.open_layer(i).unwrap().read_to_end(&mut v).unwrap();
    v
}

#[test]
fn docker_archive_with_manifest_json_selects_and_streams_layers() {
    let d = tempfile::tempdir().unwrap();
    let base = layer_tar(&[("etc/", b""), ("etc/os-release", b"base")]);
    let mid = layer_tar(&[("bin/", b""), ("bin/sh", b"#!shell")]);
    let other = layer_tar(&[("other", b"o")]);
    let path = d.path().join("img.tar.gz");
    docker_archive(
        &path,
        &[
            (&["first/image:one", "first/image:two"], &[base.clone(), mid.clone()]),
            (&["localhost:5000/second:latest"], std::slice::from_ref(&other)),
        ],
        true,
    );

    // Nothing given: the first name and tag, and it says so.
    let img = BaseImage::open(&path, &Selector::default()).unwrap();
    assert_eq!(img.format(), SourceFormat::DockerArchive);
    assert_eq!(img.selected().to_string(), "first/image:one");
    assert!(img.selected().message().unwrap().contains("first/image:one"));
    let ids: Vec<String> = img.layers().iter().map(|l| l.diff_id.to_string()).collect();
    assert_eq!(ids, [diff_id(&base), diff_id(&mid)]);
    assert_eq!(read_all(&img, 0), base);
    assert_eq!(read_all(&img, 1), mid);
    assert_eq!(img.config().rootfs().diff_ids(), &ids);

    // Name and tag given, with a registry port in the name.
    let sel = Selector { name: Some("localhost:5000/second".into()), tag: Some("latest".into()) };
    let img = BaseImage::open(&path, &sel).unwrap();
    assert!(img.selected().message().is_none());
    assert_eq!(img.layers().len(), 1);
    assert_eq!(img.layers()[0].diff_id.to_string(), diff_id(&other));
    assert_eq!(read_all(&img, 0), other);
}

#[test]
fn docker_archive_made_by_gnu_tar_with_gzip_layers_is_read() {
    // Layers may be stored compressed; the diff_id is of the uncompressed tar.
    let d = tempfile::tempdir().unwrap();
    let l = layer_tar(&[("a", b"alpha")]);
    let tree = d.path().join("tree");
    std::fs::create_dir(&tree).unwrap();
    let hex = sha256_hex(&l);
    std::fs::create_dir(tree.join(&hex)).unwrap();
    std::fs::write(tree.join(&hex).join("layer.tar"), gzip(&l)).unwrap();
    let config = config_json(&[diff_id(&l)]);
    let cname = format!("{}.json", sha256_hex(&config));
    std::fs::write(tree.join(&cname), &config).unwrap();
    let manifest = serde_json::json!([{"Config": cname, "RepoTags": null, "Layers": [format!("./{hex}/layer.tar")]}]);
    std::fs::write(tree.join("manifest.json"), manifest.to_string()).unwrap();
    let path = d.path().join("gnu.tar");
    gnu_tar(&tree, &path);

    let img = BaseImage::open(&path, &Selector::default()).unwrap();
    assert_eq!(img.selected().to_string(), "(untagged)");
    assert!(img.layers()[0].is_compressed());
    assert_eq!(img.layers()[0].diff_id.to_string(), diff_id(&l));
    assert_eq!(read_all(&img, 0), l);
}
