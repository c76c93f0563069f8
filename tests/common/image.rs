//! Fixtures for the `image_*` tests: layer tars, docker-archives and OCI
//! layouts built here (with the `tar` crate and GNU tar, independently of
//! `rootlayer::image`), plus helpers to run skopeo and umoci and to compare
//! trees. Each `image_*.rs` test includes this file with `#[path]`;
//! `image_fixtures.rs` checks that the reference tools accept the fixtures.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use rootlayer::image::{BaseImage, ImageError, ImageMeta, NewLayer, OutputFormat, Selector};
use sha2::{Digest, Sha256};

pub fn sha256_hex(data: &[u8]) -> String {
    Sha256::digest(data).iter().map(|b| format!("{b:02x}")).collect()
}

pub fn diff_id(data: &[u8]) -> String {
    format!("sha256:{}", sha256_hex(data))
}

/// A file in a layer: a path and its content; a path ending in `/` is a
/// directory.
pub type Entry<'a> = (&'a str, &'a [u8]);

/// A layer tar made with the `tar` crate, in the given order.
pub fn layer_tar(entries: &[Entry<'_>]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (name, data) in entries {
        let mut h = tar::Header::new_gnu();
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1);
        if name.ends_with('/') {
            h.set_entry_type(tar::EntryType::Directory);
            h.set_mode(0o755);
            h.set_size(0);
            b.append_data(&mut h, name, std::io::empty()).unwrap();
        } else {
            h.set_entry_type(tar::EntryType::Regular);
            h.set_mode(0o644);
            h.set_size(data.len() as u64);
            b.append_data(&mut h, name, *data).unwrap();
        }
    }
    b.into_inner().unwrap()
}

pub fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

pub fn zstd(data: &[u8]) -> Vec<u8> {
    zstd::encode_all(data, 3).unwrap()
}

/// Writes `files` (relative name -> content) into a tar at `out`, with the
/// `tar` crate.
pub fn tar_files(out: &Path, files: &[(String, Vec<u8>)]) {
    let mut b = tar::Builder::new(Vec::new());
    for (name, data) in files {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_mode(0o644);
        h.set_size(data.len() as u64);
        b.append_data(&mut h, name, &data[..]).unwrap();
    }
    fs::write(out, b.into_inner().unwrap()).unwrap();
}

pub fn config_json(diff_ids: &[String]) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "created": "2024-01-01T00:00:00Z",
        "config": { "Env": ["PATH=/bin"], "Cmd": ["/bin/sh"] },
        "rootfs": { "type": "layers", "diff_ids": diff_ids },
        "history": diff_ids.iter().map(|_| serde_json::json!({"created": "2024-01-01T00:00:00Z"})).collect::<Vec<_>>(),
    }))
    .unwrap()
}

/// The members of a `manifest.json` docker-archive with one image per
/// `(repo_tags, layers)`, layers stored as `<diff hex>/layer.tar`.
pub fn docker_archive_files(images: &[(&[&str], &[Vec<u8>])]) -> Vec<(String, Vec<u8>)> {
    let mut files = Vec::new();
    let mut manifest = Vec::new();
    for (tags, layers) in images {
        let diff_ids: Vec<String> = layers.iter().map(|l| diff_id(l)).collect();
        let mut paths = Vec::new();
        for l in layers.iter() {
            let p = format!("{}/layer.tar", sha256_hex(l));
            if !files.iter().any(|(n, _)| n == &p) {
                files.push((p.clone(), l.clone()));
            }
            paths.push(p);
        }
        let config = config_json(&diff_ids);
        let config_name = format!("{}.json", sha256_hex(&config));
        files.push((config_name.clone(), config));
        manifest.push(serde_json::json!({
            "Config": config_name, "RepoTags": tags, "Layers": paths,
        }));
    }
    files.push(("manifest.json".into(), serde_json::to_vec(&manifest).unwrap()));
    files
}

/// A docker-archive at `out` (gzip-compressed if `gz`).
pub fn docker_archive(out: &Path, images: &[(&[&str], &[Vec<u8>])], gz: bool) {
    tar_files(out, &docker_archive_files(images));
    if gz {
        let raw = fs::read(out).unwrap();
        fs::write(out, gzip(&raw)).unwrap();
    }
}

/// An OCI layout directory with one image tagged `tag`, layers stored with
/// the given compression ("none", "gzip" or "zstd").
pub fn oci_layout(dir: &Path, tag: &str, layers: &[(Vec<u8>, &str)]) {
    let blobs = dir.join("blobs/sha256");
    fs::create_dir_all(&blobs).unwrap();
    let put = |data: &[u8]| {
        let h = sha256_hex(data);
        fs::write(blobs.join(&h), data).unwrap();
        (format!("sha256:{h}"), data.len())
    };
    let mut descs = Vec::new();
    let mut diff_ids = Vec::new();
    for (tar, comp) in layers {
        diff_ids.push(diff_id(tar));
        let (blob, mt) = match *comp {
            "none" => (tar.clone(), "application/vnd.oci.image.layer.v1.tar"),
            "gzip" => (gzip(tar), "application/vnd.oci.image.layer.v1.tar+gzip"),
            "zstd" => (zstd(tar), "application/vnd.oci.image.layer.v1.tar+zstd"),
            other => panic!("unknown compression {other}"),
        };
        let (d, size) = put(&blob);
        descs.push(serde_json::json!({"mediaType": mt, "digest": d, "size": size}));
    }
    let (cd, csize) = put(&config_json(&diff_ids));
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd, "size": csize},
        "layers": descs,
    }))
    .unwrap();
    let (md, msize) = put(&manifest);
    let index = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": md, "size": msize,
            "annotations": {"org.opencontainers.image.ref.name": tag},
        }],
    });
    fs::write(dir.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
    fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
}

/// Packs directory `dir` into `out` with GNU tar, members named relative.
pub fn gnu_tar(dir: &Path, out: &Path) {
    run(Command::new("tar")
        .arg("-C")
        .arg(dir)
        .args(["--sort=name", "--owner=0", "--group=0", "--numeric-owner"])
        .arg("-cf")
        .arg(out)
        .arg("."));
}

/// Runs a command, panicking with its output if it fails; returns stdout.
pub fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Writes a layer tar to `dir/name` and describes it as the layer engine
/// would.
pub fn new_layer(dir: &Path, name: &str, tar: &[u8]) -> NewLayer {
    let path = dir.join(name);
    fs::write(&path, tar).unwrap();
    NewLayer { tar: path, diff_id: diff_id(tar).parse().unwrap(), size: tar.len() as u64 }
}

pub fn meta() -> ImageMeta {
    ImageMeta {
        name: "rootlayer/test".into(),
        tag: "v1".into(),
        created: "2025-02-03T04:05:06Z".into(),
        created_by: Some("rootlayer runAsRoot".into()),
        comment: None,
        base_json: Some(serde_json::json!({
            "architecture": "amd64", "os": "linux", "created": "2025-02-03T04:05:06Z",
            "config": {"Env": ["A=1"]},
        })),
    }
}

/// Opens `base` and writes `format` at `out`, as the CLI will.
pub fn open_and_write(
    base: &Path,
    sel: &Selector,
    format: OutputFormat,
    out: &Path,
    layer: &NewLayer,
) -> Result<(), ImageError> {
    let img = BaseImage::open(base, sel)?;
    rootlayer::image::write_output(format, out, Some(&img), layer, &meta())
}

/// Asserts the error is one line and that nothing was left at `out` nor any
/// staging file next to it.
pub fn assert_clean_failure(err: &ImageError, out: &Path) {
    let msg = err.to_string();
    assert!(!msg.contains('\n'), "multi-line error: {msg}");
    assert!(!out.exists(), "{} exists after a failure", out.display());
    let parent = out.parent().unwrap();
    let leftovers: Vec<_> = fs::read_dir(parent)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "staging left behind: {leftovers:?}");
}

/// A tree as `path -> kind and content`, for comparing unpacked images.
pub fn tree(root: &Path) -> BTreeMap<String, String> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, String>) {
        let mut entries: Vec<_> = fs::read_dir(dir).unwrap().map(|e| e.unwrap()).collect();
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let p = e.path();
            let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
            let md = fs::symlink_metadata(&p).unwrap();
            if md.file_type().is_symlink() {
                out.insert(rel, format!("link {}", fs::read_link(&p).unwrap().display()));
            } else if md.is_dir() {
                out.insert(rel, format!("dir {:o}", md.permissions().mode() & 0o7777));
                walk(root, &p, out);
            } else {
                out.insert(rel, format!("file {}", String::from_utf8_lossy(&fs::read(&p).unwrap())));
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// `umoci unpack`s `layout:tag` into a fresh bundle and returns its rootfs.
pub fn umoci_unpack(layout: &Path, tag: &str, bundle: &Path) -> PathBuf {
    run(Command::new("umoci").arg("unpack").arg("--image").arg(format!("{}:{tag}", layout.display())).arg(bundle));
    bundle.join("rootfs")
}

pub fn skopeo(args: &[&str]) -> String {
    run(Command::new("skopeo").arg("--insecure-policy").args(args))
}
