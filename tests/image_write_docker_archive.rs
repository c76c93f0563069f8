//! The `docker-archive` output: a base image plus the new layer, checked by
//! skopeo (inspect, and copy into an OCI layout that umoci unpacks) and read
//! back by our own reader through both `manifest.json` and `repositories`.

#[path = "common/image.rs"]
mod common;

use std::collections::BTreeMap;
use std::fs;

use common::*;
use rootlayer::image::{write_output, BaseImage, OutputFormat, Selector};

#[test]
fn docker_archive_output_loads_in_skopeo_and_unpacks() {
    let d = tempfile::tempdir().unwrap();
    let l1 = layer_tar(&[("etc/", b""), ("etc/base", b"from base")]);
    let l2 = layer_tar(&[("etc/", b""), ("etc/gone", b"to be deleted")]);
    let base = d.path().join("base.tar.gz");
    docker_archive(&base, &[(&["base/img:1"], &[l1.clone(), l2.clone()])], true);
    let new = layer_tar(&[("etc/", b""), ("etc/.wh.gone", b""), ("etc/new", b"from run")]);
    let layer = new_layer(d.path(), "upper.tar", &new);

    for out_name in ["out.tar", "out.tar.gz", "out.tar.zst"] {
        let out = d.path().join(out_name);
        open_and_write(&base, &Selector::default(), OutputFormat::DockerArchive, &out, &layer).unwrap();
        // Our reader, by manifest.json.
        let img = BaseImage::open(&out, &Selector::default()).unwrap();
        assert_eq!(img.selected().to_string(), "rootlayer/test:v1");
        let got: Vec<String> = img.layers().iter().map(|l| l.diff_id.to_string()).collect();
        let want = [diff_id(&l1), diff_id(&l2), diff_id(&new)];
        assert_eq!(got, want);

        // skopeo 1.9 cannot read gzip-compressed docker-archives at all (it
        // fails on one that GNU gzip made too): give it GNU gzip's output.
        let out = if out_name.ends_with(".gz") {
            let copy = d.path().join("gunzipped.tar.gz");
            fs::copy(&out, &copy).unwrap();
            run(std::process::Command::new("gzip").arg("-d").arg(&copy));
            d.path().join("gunzipped.tar")
        } else if out_name.ends_with(".zst") {
            // dockerTools' compressor = "zstd": the whole archive, as the
            // zstd tool reads it.
            assert_eq!(fs::read(&out).unwrap()[..4], [0x28, 0xb5, 0x2f, 0xfd], "not zstd");
            let plain = d.path().join("unzstd.tar");
            run(std::process::Command::new("zstd").arg("-qd").arg(&out).arg("-o").arg(&plain));
            plain
        } else {
            out
        };
        let v: serde_json::Value =
            serde_json::from_str(&skopeo(&["inspect", &format!("docker-archive:{}", out.display())])).unwrap();
        assert_eq!(v["Layers"], serde_json::json!(want));
        // The base json's config is merged into the base's, as dockerTools'
        // buildImage merges its config: Env appended.
        assert_eq!(v["Env"], serde_json::json!(["PATH=/bin", "A=1"]));
        assert_eq!(v["Created"], "2025-02-03T04:05:06Z");
        let cfg: serde_json::Value =
            serde_json::from_str(&skopeo(&["inspect", "--config", &format!("docker-archive:{}", out.display())]))
                .unwrap();
        let history = cfg["history"].as_array().unwrap();
        assert_eq!(history.len(), 3);
        assert_eq!(history[2]["created"], "2025-02-03T04:05:06Z");
        assert_eq!(history[2]["created_by"], "rootlayer runAsRoot");

        // skopeo copies it into an OCI layout; umoci unpacks that.
        let layout = d.path().join(format!("{out_name}.oci"));
        skopeo(&["copy", &format!("docker-archive:{}", out.display()), &format!("oci:{}:t", layout.display())]);
        if !is_root() {
            println!("skipping umoci unpack: needs root");
            continue;
        }
        let rootfs = umoci_unpack(&layout, "t", &d.path().join(format!("{out_name}.bundle")));
        let expected: BTreeMap<String, String> =
            [("etc", "dir 755"), ("etc/base", "file from base"), ("etc/new", "file from run")]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
        assert_eq!(tree(&rootfs), expected);
    }
}

#[test]
fn docker_archive_output_repositories_walk_matches_manifest() {
    // Strip manifest.json: the legacy reader must find the same layers via
    // repositories and <id>/json parents.
    let d = tempfile::tempdir().unwrap();
    let l1 = layer_tar(&[("a", b"1")]);
    let base = d.path().join("base.tar");
    docker_archive(&base, &[(&["b:1"], std::slice::from_ref(&l1))], false);
    let new = layer_tar(&[("b", b"2")]);
    let layer = new_layer(d.path(), "upper.tar", &new);
    let out = d.path().join("out.tar");
    open_and_write(&base, &Selector::default(), OutputFormat::DockerArchive, &out, &layer).unwrap();

    let x = d.path().join("x");
    fs::create_dir(&x).unwrap();
    run(std::process::Command::new("tar").arg("-C").arg(&x).arg("-xf").arg(&out));
    fs::remove_file(x.join("manifest.json")).unwrap();
    let legacy = d.path().join("legacy.tar");
    gnu_tar(&x, &legacy);
    let img = BaseImage::open(&legacy, &Selector::default()).unwrap();
    assert_eq!(img.format(), rootlayer::image::SourceFormat::DockerArchiveLegacy);
    let got: Vec<String> = img.layers().iter().map(|l| l.diff_id.to_string()).collect();
    assert_eq!(got, [diff_id(&l1), diff_id(&new)]);
    let _ = write_output; // the same entry point open_and_write uses
}
