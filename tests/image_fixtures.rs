//! The fixtures of `image_common.rs` are what the reference tools accept:
//! skopeo reads the docker-archive and the OCI layout they build.

#[path = "common/image.rs"]
mod common;

use common::*;

#[test]
fn skopeo_reads_the_docker_archive_fixture() {
    let d = tempfile::tempdir().unwrap();
    let a = d.path().join("a.tar");
    let l = layer_tar(&[("etc/", b""), ("etc/x", b"1")]);
    docker_archive(&a, &[(&["x/y:1"], std::slice::from_ref(&l))], false);
    let out = skopeo(&["inspect", &format!("docker-archive:{}", a.display())]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["Layers"][0], diff_id(&l));
}

#[test]
fn skopeo_reads_the_oci_fixture() {
    let d = tempfile::tempdir().unwrap();
    let l = layer_tar(&[("a", b"1")]);
    oci_layout(d.path(), "t", &[(l.clone(), "gzip")]);
    let out = skopeo(&["inspect", &format!("oci:{}:t", d.path().display())]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["Layers"][0], format!("sha256:{}", sha256_hex(&gzip(&l))));
}
