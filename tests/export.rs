//! e2e: `rootlayer export` (dockerTools' exportImage) flattens the two-layer
//! busybox base image, whose second layer makes a directory opaque, into
//! one root filesystem; it must equal what skopeo + umoci unpack.

mod common;

use common::runas::{listing, make_base_image};
use std::process::Command;

#[test]
fn export_flattens_the_image_like_umoci() {
    if !common::image::is_root() {
        eprintln!("SKIP export_flattens_the_image_like_umoci: unpacking with owners and devices needs root");
        return;
    }
    let tmp = common::tempdir();
    let base = make_base_image(tmp.path());
    let out = tmp.path().join("rootfs.tar");
    // No guest: export flattens on the host.
    let (code, _) = common::run(common::rootlayer().args([
        "export",
        "--from-image",
        base.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]));
    assert_eq!(code, 0, "export failed");
    let ours = tmp.path().join("ours");
    std::fs::create_dir(&ours).unwrap();
    let st = Command::new("tar").args(["--same-owner", "-xpf"]).arg(&out).arg("-C").arg(&ours).status().unwrap();
    assert!(st.success());

    let layout = tmp.path().join("layout");
    common::image::skopeo(&[
        "copy",
        &format!("docker-archive:{}", base.display()),
        &format!("oci:{}:latest", layout.display()),
    ]);
    let rootfs = common::image::umoci_unpack(&layout, "latest", &tmp.path().join("bundle"));
    let (a, b) = (listing(&ours), listing(&rootfs));
    assert!(a.contains("keep/from-layer-2\t"), "{a}");
    assert!(!a.contains("keep/opaque-base"), "the opaque directory hides layer 1's file");
    assert_eq!(a, b, "exported tree differs from umoci's");
}
