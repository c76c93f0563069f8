//! buildImage with `created = "now"` on a base whose config records no
//! history: one time, resolved once per build, in the config and every
//! history entry (the base layers' and the new one's; the base's are its
//! own time, not the literal "now"), RFC 3339 so that skopeo and umoci
//! read it.

mod common;

use std::process::Command;

#[test]
fn created_now_is_one_rfc3339_time_skopeo_and_umoci_read() {
    let Some(nix) = common::nix::setup("nix_created_now") else { return };
    // A two-layer base without history.
    let layers = [
        common::image::layer_tar(&[("etc/", b""), ("etc/one", b"1")]),
        common::image::layer_tar(&[("etc/", b""), ("etc/two", b"2")]),
    ];
    let mut files = common::image::docker_archive_files(&[(&["bare:1"], &layers)]);
    for (name, data) in &mut files {
        if name.ends_with(".json") && name != "manifest.json" {
            let mut cfg: serde_json::Value = serde_json::from_slice(data).unwrap();
            cfg.as_object_mut().unwrap().remove("history");
            *data = serde_json::to_vec(&cfg).unwrap();
        }
    }
    // The config's name is its digest.
    let cfg = files.iter().position(|(n, _)| n.ends_with(".json") && n != "manifest.json").unwrap();
    let new_name = format!("{}.json", common::image::sha256_hex(&files[cfg].1));
    let old_name = std::mem::replace(&mut files[cfg].0, new_name.clone());
    let manifest = files.iter_mut().find(|(n, _)| n == "manifest.json").unwrap();
    manifest.1 = String::from_utf8(manifest.1.clone()).unwrap().replace(&old_name, &new_name).into_bytes();
    let bare = nix.work.path().join("bare.tar");
    common::image::tar_files(&bare, &files);

    let before = std::time::SystemTime::now();
    let b = nix.build("createdNow", &["--arg", "noHistoryImage", bare.to_str().unwrap()]);
    assert_eq!(b.code, 0, "nix-build failed");
    let (rootfs, plain) = common::nix::unpack_image(nix.work.path(), &b.out, "now");
    assert!(rootfs.join("built").is_file());

    let archive = format!("docker-archive:{}", plain.display());
    let cfg: serde_json::Value =
        serde_json::from_str(&common::image::skopeo(&["inspect", "--config", &archive])).unwrap();
    let created = cfg["created"].as_str().unwrap().to_string();
    let want = rootlayer::image::created::format_utc(before.duration_since(std::time::UNIX_EPOCH).unwrap().as_secs());
    assert!(created.len() == 20 && created.ends_with('Z') && *created >= want[..19], "{created} before {want}");
    let history = cfg["history"].as_array().unwrap();
    let times: Vec<&str> = history.iter().map(|h| h["created"].as_str().unwrap_or("none")).collect();
    assert_eq!(times, ["2024-01-01T00:00:00Z", "2024-01-01T00:00:00Z", created.as_str()], "{history:?}");
    let inspect: serde_json::Value = serde_json::from_str(&common::image::skopeo(&["inspect", &archive])).unwrap();
    assert_eq!(inspect["Created"], created);

    // umoci reads the same config (its stat parses every history time).
    let layout = nix.work.path().join("now.oci");
    let stat = common::image::run(
        Command::new("umoci").args(["stat", "--json", "--image"]).arg(format!("{}:t", layout.display())),
    );
    let stat: serde_json::Value = serde_json::from_str(&stat).unwrap();
    let times: Vec<&str> =
        stat["history"].as_array().unwrap().iter().map(|h| h["created"].as_str().unwrap_or("none")).collect();
    assert_eq!(times.len(), 3, "{stat}");
    assert_eq!(times[2], created, "{stat}");
    nix.delete(&[&b.out]);
}
