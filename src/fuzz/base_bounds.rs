//! `base_bounds`: the base image's path to the base disk with its bounds
//! set small, so that the fuzzer reaches them: [`BaseImage::open_within`]
//! (at most so many layers; production: [`crate::image::MAX_LAYERS`]) and
//! [`crate::job::base::flatten_within`] (the layers staged decompressed in a
//! work directory within a room; production: its free space less a
//! reserve), each layer read through the tar guard with small
//! [`Limits`] (production: 1 MiB per PAX header or long name, 10M
//! entries).
//!
//! Input: `flags: u8` (bits 0-1: one to four layers; bits 2-3: the layers
//! stored plain, gzip, zstd, or the input's bytes taken as a gzip stream,
//! a decompression bomb perhaps, as they are), `max_layers: u8` (1 + it % 4),
//! `room: u8` (in 512-byte units), `max_meta: u8` (64 + 16 × it), `max_entries:
//! u8` (1 + it), then per layer `len: u16` and its bytes (the last: the rest).
//! They make a docker-archive whose config names the layers' true diff_ids,
//! so the image's own checks pass and the bounds are what refuses.
//!
//! Invariants: no panic; an image opens only with at most `max_layers`
//! layers; the staged files never take more than the room (plus the one
//! byte that shows it is exceeded), flattening fails with
//! [`BaseError::TooLarge`] only when the layers decompress to more than the
//! room and never when they fit; and flattening that succeeds read no PAX
//! header or long name or link above `max_meta`, no more than
//! `max_entries` entries and no sparse entry (each checked by reading the
//! layer again, unguarded: the inputs are small).

use super::image::tar;
use super::{take, take_u16, take_u8};
use crate::image::{BaseImage, Selector, Sha256Digest};
use crate::job::base::{flatten_within, BaseError};
use crate::layer::tar_guard::Limits;
use std::io::{Read, Write};
use std::path::Path;

/// Most bytes a layer given as a compressed stream may decompress to here.
const MAX_DECOMPRESSED: u64 = 16 << 20;
/// The longest name a plain ustar header holds (prefix, `/`, name).
const USTAR_PATH: usize = 256;

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(data).expect("gzip");
    gz.finish().expect("gzip")
}

/// The uncompressed layer behind a stored blob, as the image reader reads
/// it (None: not a stream that ends well within the bound).
fn gunzip(blob: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    flate2::bufread::MultiGzDecoder::new(blob).take(MAX_DECOMPRESSED + 1).read_to_end(&mut out).ok()?;
    (out.len() as u64 <= MAX_DECOMPRESSED).then_some(out)
}

/// A docker-archive of `blobs` (each stored as given, with the diff_id of
/// its uncompressed tar), written to `path`.
fn write_image(path: &Path, layers: &[(Vec<u8>, Vec<u8>)]) {
    let diff_ids: Vec<String> = layers.iter().map(|(tar, _)| Sha256Digest::of(tar).to_string()).collect();
    let config = serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "rootfs": { "type": "layers", "diff_ids": diff_ids },
    });
    let names: Vec<String> = (0..layers.len()).map(|i| format!("l{i}/layer.tar")).collect();
    let manifest = serde_json::json!([{ "Config": "c.json", "RepoTags": ["x:1"], "Layers": names }]);
    let mut files = vec![
        ("manifest.json".to_string(), serde_json::to_vec(&manifest).expect("json")),
        ("c.json".to_string(), serde_json::to_vec(&config).expect("json")),
    ];
    files.extend(names.into_iter().zip(layers.iter().map(|(_, blob)| blob.clone())));
    std::fs::write(path, tar(&files)).expect("write the image");
}

/// Bytes of the files under `dir`.
fn staged_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir).into_iter().flatten().flatten().filter_map(|e| e.metadata().ok()).map(|m| m.len()).sum()
}

/// What the tar crate reads of `layer` (unguarded): for a layer that
/// flattened within `limits`, nothing over them.
fn check_within(layer: &[u8], limits: Limits) {
    let mut archive = ::tar::Archive::new(layer);
    let Ok(entries) = archive.entries() else { return };
    let mut count = 0u64;
    for e in entries {
        let Ok(mut e) = e else { return };
        count += 1;
        assert!(count <= limits.max_entries, "more than {} entries read", limits.max_entries);
        assert!(e.header().entry_type() != ::tar::EntryType::GNUSparse, "a sparse entry read");
        let path = e.path_bytes().len();
        assert!(path <= USTAR_PATH || path as u64 <= limits.max_meta, "a {path}-byte name read ({limits:?})");
        if let Some(link) = e.link_name_bytes() {
            let n = link.len();
            assert!(n <= 100 || n as u64 <= limits.max_meta, "a {n}-byte link name read ({limits:?})");
        }
        if let Ok(Some(pax)) = e.pax_extensions() {
            let records: u64 = pax.flatten().map(|r| (r.key_bytes().len() + r.value_bytes().len() + 3) as u64).sum();
            assert!(records <= limits.max_meta, "PAX records of {records} bytes read ({limits:?})");
        }
    }
}

pub fn base_bounds(mut data: &[u8]) {
    let (Some(flags), Some(max_layers), Some(room), Some(meta), Some(entries)) =
        (take_u8(&mut data), take_u8(&mut data), take_u8(&mut data), take_u8(&mut data), take_u8(&mut data))
    else {
        return;
    };
    let n = usize::from(flags & 3) + 1;
    let max_layers = 1 + usize::from(max_layers % 4);
    let room = u64::from(room) * 512;
    let limits = Limits { max_meta: 64 + 16 * u64::from(meta), max_entries: 1 + u64::from(entries) };
    // (uncompressed tar, stored blob) per layer.
    let mut layers = Vec::new();
    for i in 0..n {
        let bytes = if i + 1 == n {
            std::mem::take(&mut data)
        } else {
            let len = usize::from(take_u16(&mut data).unwrap_or(0));
            take(&mut data, len)
        };
        let layer = match flags >> 2 & 3 {
            // (A plain layer that looks compressed would be read as such.)
            0 if !bytes.starts_with(&[0x1f, 0x8b]) && !bytes.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) => {
                (bytes.to_vec(), bytes.to_vec())
            }
            0 => return,
            1 => (bytes.to_vec(), gzip(bytes)),
            2 => (bytes.to_vec(), zstd::encode_all(bytes, 1).expect("zstd")),
            _ => match gunzip(bytes) {
                Some(tar) if bytes.starts_with(&[0x1f, 0x8b]) => (tar, bytes.to_vec()),
                _ => return,
            },
        };
        layers.push(layer);
    }
    let dir = tempfile::tempdir().expect("temporary directory");
    let path = dir.path().join("image.tar");
    write_image(&path, &layers);
    let image = match BaseImage::open_within(&path, &Selector::default(), max_layers) {
        Ok(image) => image,
        Err(e) => {
            let _ = e.to_string();
            return;
        }
    };
    assert!(image.layers().len() <= max_layers, "{} layers opened, at most {max_layers}", image.layers().len());
    assert_eq!(image.layers().len(), n);
    let work = dir.path().join("work");
    std::fs::create_dir(&work).expect("work directory");
    let result = flatten_within(Some(&image), &work, room, limits);
    let staged = staged_bytes(&work);
    assert!(staged <= room + 1, "{staged} bytes staged in a room of {room}");
    let sizes: Vec<u64> = layers.iter().map(|(tar, _)| tar.len() as u64).collect();
    let total: u64 = sizes.iter().sum();
    let overflows = sizes
        .iter()
        .scan(0, |sum, s| {
            *sum += s;
            Some(*sum)
        })
        .any(|sum| sum > room);
    match &result {
        Err(BaseError::TooLarge { .. }) => assert!(overflows, "refused as too large: {total} bytes in {room}"),
        Ok(_) => {
            assert!(total <= room, "{total} bytes flattened in a room of {room}");
            for (tar, _) in &layers {
                check_within(tar, limits);
            }
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
    if total <= room {
        assert!(!matches!(result, Err(BaseError::TooLarge { .. })), "{total} bytes refused in a room of {room}");
    }
}
