//! nix/'s exportImage (rootlayer export) of a two-layer image with an
//! opaque directory: the root filesystem tar holds the tree umoci unpacks
//! from the same image (paths, types, modes, owners, contents, links).

mod common;

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;

/// Every path under `root` with its type, mode, owner and content.
fn tree(root: &Path) -> BTreeMap<String, String> {
    let mut out = common::image::tree(root);
    for (path, v) in out.iter_mut() {
        let m = std::fs::symlink_metadata(root.join(path)).unwrap();
        v.push_str(&format!(" {}:{} {:o}", m.uid(), m.gid(), m.mode() & 0o7777));
    }
    out
}

#[test]
fn export_image_is_the_tree_umoci_unpacks() {
    let Some(nix) = common::nix::setup("nix_export_image") else { return };
    let b = nix.build("exported", &["--arg", "twoLayerImage", nix.two_layer.to_str().unwrap()]);
    assert_eq!(b.code, 0, "nix-build failed");
    let exported = nix.work.path().join("exported");
    std::fs::create_dir(&exported).unwrap();
    common::image::run(Command::new("tar").arg("-C").arg(&exported).args(["--numeric-owner", "-xpf", &b.out]));

    let layout = nix.work.path().join("two.oci");
    common::image::skopeo(&[
        "copy",
        &format!("docker-archive:{}", nix.two_layer.display()),
        &format!("oci:{}:t", layout.display()),
    ]);
    let rootfs = common::image::umoci_unpack(&layout, "t", &nix.work.path().join("two.bundle"));

    let (got, want) = (tree(&exported), tree(&rootfs));
    assert!(want.contains_key("keep/from-layer-2") && !want.contains_key("keep/opaque-base"), "{want:?}");
    assert_eq!(got, want);
    nix.delete(&[&b.out]);
}
