//! nix/default.nix's mkRootLayer on its own writes dockerTools' three
//! files: layer.tar, json (baseJson plus the layer checksum) and VERSION.

mod common;

#[test]
fn mk_root_layer_writes_docker_tools_three_files() {
    let Some(nix) = common::nix::setup("nix_mk_root_layer") else { return };
    let b = nix.build("layer", &[]);
    assert_eq!(b.code, 0, "nix-build failed");
    let out = std::path::PathBuf::from(&b.out);
    let mut names: Vec<String> =
        std::fs::read_dir(&out).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    assert_eq!(names, ["VERSION", "json", "layer.tar"]);
    assert_eq!(std::fs::read_to_string(out.join("VERSION")).unwrap(), "1.0");
    let tar = std::fs::read(out.join("layer.tar")).unwrap();
    let json: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join("json")).unwrap()).unwrap();
    assert_eq!(json["checksum"], common::image::diff_id(&tar));
    assert_eq!(json["config"]["Env"][0], "X=1");
    let entries = common::runas::read_layer(&tar);
    let find = |p: &str| entries.iter().find(|(n, _)| n == p).map(|(_, e)| e.clone());
    assert_eq!(find("root-layer-file").expect("the script's file").data, b"root-layer\n");
    let wh = find("old/.wh.stays").expect("the whiteout of the deleted base file");
    assert_eq!((wh.uid, wh.gid), (0, 0));
    // mkRootLayer adds no store paths (buildImage does).
    assert!(
        !entries.iter().any(|(n, _)| n.starts_with("nix")),
        "{:?}",
        entries.iter().map(|e| &e.0).collect::<Vec<_>>()
    );
    nix.delete(&[&b.out]);
}
