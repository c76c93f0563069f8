//! Reading OCI image layouts: a directory and a tar of one, with plain, gzip
//! and zstd layers, and a layout made by umoci as the reference.

#[path = "common/image.rs"]
mod common;

use std::io::Read;
use std::process::Command;

use common::*;
use rootlayer::image::{BaseImage, Selector, SourceFormat};

#[test]
fn oci_layout_dir_and_tar_with_mixed_compression() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path().join("layout");
    let layers = [layer_tar(&[("a", b"plain")]), layer_tar(&[("b", b"gzip")]), layer_tar(&[("c", b"zstd")])];
    oci_layout(&dir, "t1", &[(layers[0].clone(), "none"), (layers[1].clone(), "gzip"), (layers[2].clone(), "zstd")]);
    let tar_path = d.path().join("layout.tar");
    gnu_tar(&dir, &tar_path);
    for path in [&dir, &tar_path] {
        let img = BaseImage::open(path, &Selector::default()).unwrap();
        assert_eq!(img.format(), SourceFormat::OciLayout);
        assert_eq!(img.selected().tag.as_deref(), Some("t1"));
        for (i, l) in layers.iter().enumerate() {
            assert_eq!(img.layers()[i].diff_id.to_string(), diff_id(l));
            let mut got = Vec::new();
            img.open_layer(i).unwrap().read_to_end(&mut got).unwrap();
            assert_eq!(&got, l);
        }
    }
}

#[test]
fn oci_layout_made_by_umoci_is_read() {
    let d = tempfile::tempdir().unwrap();
    let layout = d.path().join("umoci");
    let src = d.path().join("src");
    std::fs::create_dir_all(src.join("etc")).unwrap();
    std::fs::write(src.join("etc/hello"), "from umoci").unwrap();
    run(Command::new("umoci").args(["init", "--layout"]).arg(&layout));
    run(Command::new("umoci").args(["new", "--image"]).arg(format!("{}:base", layout.display())));
    run(Command::new("umoci")
        .args(["insert", "--image"])
        .arg(format!("{}:base", layout.display()))
        .arg(src.join("etc"))
        .arg("/etc"));

    let sel = Selector { name: None, tag: Some("base".into()) };
    let img = BaseImage::open(&layout, &sel).unwrap();
    assert_eq!(img.layers().len(), 1);
    assert!(img.layers()[0].is_compressed());
    let mut tar = Vec::new();
    img.open_layer(0).unwrap().read_to_end(&mut tar).unwrap();
    assert_eq!(img.layers()[0].diff_id.to_string(), diff_id(&tar));
    // umoci 0.4 leaves the last member unpadded: list what precedes that.
    let mut names = Vec::new();
    for e in tar::Archive::new(&tar[..]).entries().unwrap() {
        match e {
            Ok(e) => names.push(e.path().unwrap().to_string_lossy().into_owned()),
            Err(_) => break,
        }
    }
    assert!(names.iter().any(|n| n.trim_start_matches("./") == "etc/hello"), "{names:?}");
}

#[test]
fn docker_archive_written_by_skopeo_is_read() {
    // skopeo is the reference docker-archive writer: convert the OCI fixture.
    let d = tempfile::tempdir().unwrap();
    let dir = d.path().join("layout");
    let layers = [layer_tar(&[("x", b"1")]), layer_tar(&[("y", b"2")])];
    // (skopeo refuses zstd layers in docker-archives.)
    oci_layout(&dir, "t", &[(layers[0].clone(), "gzip"), (layers[1].clone(), "none")]);
    let archive = d.path().join("skopeo.tar");
    skopeo(&[
        "copy",
        &format!("oci:{}:t", dir.display()),
        &format!("docker-archive:{}:made/by-skopeo:7", archive.display()),
    ]);
    let sel = Selector { name: Some("made/by-skopeo".into()), tag: Some("7".into()) };
    let img = BaseImage::open(&archive, &sel).unwrap();
    assert_eq!(img.format(), SourceFormat::DockerArchive);
    let got: Vec<String> = img.layers().iter().map(|l| l.diff_id.to_string()).collect();
    assert_eq!(got, [diff_id(&layers[0]), diff_id(&layers[1])]);
}
