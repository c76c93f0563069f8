//! A buildImage layer holds the store paths its files reference and their
//! closure, as dockerTools' (`writeReferencesToFile layer`): not the
//! runAsRoot script, its interpreter or what it names. nixpkgs'
//! layersUnpackOrder first image (no base, a script that names no store
//! path in the layer) gets no store path at all; a symlink the script makes
//! into a store path brings that path and what it references, copyToRoot's
//! symlink brings its target, the config's Cmd (in the layer's json) brings
//! what it names, and nothing else comes along.

mod common;

#[test]
fn a_layer_holds_the_closure_of_what_its_files_reference() {
    let Some(nix) = common::nix::setup("nix_layer_references") else { return };

    let b = nix.build("refsNone", &[]);
    assert_eq!(b.code, 0, "nix-build failed");
    let (rootfs, _) = common::nix::unpack_image(nix.work.path(), &b.out, "none");
    assert_eq!(std::fs::read_to_string(rootfs.join("layer-order")).unwrap(), "a");
    assert!(
        !rootfs.join("nix").exists(),
        "store paths the layer does not reference: {:?}",
        common::nix::store_names(&rootfs)
    );
    let tar = String::from_utf8(
        std::process::Command::new("sh")
            .arg("-c")
            .arg(format!("tar -xzOf '{}' --wildcards '*/layer.tar' | tar -t", b.out))
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    assert_eq!(tar.lines().collect::<Vec<_>>(), ["layer-order"], "the layer holds more than the script's file");
    nix.delete(&[&b.out]);

    let b = nix.build("refsLink", &[]);
    assert_eq!(b.code, 0, "nix-build failed");
    assert!(b.log.contains("rootlayer: the layer references 3 of"), "no reference count in the log");
    let (rootfs, _) = common::nix::unpack_image(nix.work.path(), &b.out, "link");
    let store = common::nix::store_names(&rootfs);
    let nonce = &nix.nonce;
    let mut kinds: Vec<String> =
        store.iter().map(|s| s.split_once('-').unwrap().1.trim_end_matches(&format!("-{nonce}")).to_string()).collect();
    kinds.sort();
    // linked (the symlink's target) with dep (which linked names in a
    // file), tool (copyToRoot's bin/tool points at it) and cmd (the
    // config's Cmd); not env itself, not busybox, not the script, not
    // `unused` (only the script names it), not the config file.
    assert_eq!(kinds, ["cmd", "dep", "linked", "tool"], "{store:?}");
    let link = std::fs::read_link(rootfs.join("share-link")).unwrap();
    assert!(link.to_string_lossy().contains(&format!("-linked-{nonce}/share")), "{link:?}");
    let dep_path = std::fs::read_to_string(rootfs.join("share-link/dep-path")).unwrap();
    assert!(rootfs.join(dep_path.trim().trim_start_matches('/')).join("file").is_file(), "dep is not in the image");
    assert_eq!(std::fs::read_to_string(rootfs.join("bin/tool")).unwrap(), "tool\n", "copyToRoot's link is broken");
    nix.delete(&[&b.out]);
}
