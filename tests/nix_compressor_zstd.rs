//! buildImage's `compressor = "zstd"` (dockerTools' compressors): a
//! `.tar.zst` docker-archive that zstd decompresses and skopeo loads.

mod common;

#[test]
fn compressor_zstd_gives_an_archive_skopeo_loads() {
    let Some(nix) = common::nix::setup("nix_compressor_zstd") else { return };
    let b = nix.build("zstd", &[]);
    assert_eq!(b.code, 0, "nix-build failed");
    assert!(b.out.ends_with(".tar.zst"), "{}", b.out);
    assert_eq!(std::fs::read(&b.out).unwrap()[..4], [0x28, 0xb5, 0x2f, 0xfd], "not zstd");
    let (rootfs, plain) = common::nix::unpack_image(nix.work.path(), &b.out, "zstd");
    let inspect: serde_json::Value =
        serde_json::from_str(&common::image::skopeo(&["inspect", &format!("docker-archive:{}", plain.display())]))
            .unwrap();
    assert_eq!(inspect["Layers"].as_array().unwrap().len(), 4, "{inspect}");
    assert_eq!(std::fs::read_to_string(rootfs.join("zstd")).unwrap(), "zstd\n");
    assert_eq!(std::fs::read_to_string(rootfs.join("keep/from-layer-2")).unwrap(), "visible\n");
    nix.delete(&[&b.out]);
}
