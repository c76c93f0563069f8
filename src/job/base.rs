//! The base image as one read-only EROFS disk, made on the host and cached.
//!
//! The layers are flattened bottom first ([`crate::layer::flatten`]) and the
//! merged tree written as an EROFS image ([`crate::layer::erofs`]) that the
//! guest mounts in place as the overlay's only lower dir: no base file's
//! bytes pass through the guest kernel. The image is cached under
//! `$ROOTLAYER_CACHE/base/`, keyed by the layers' chain id (OCI
//! `config.md`, "Layer ChainID") and the writer's version, written under a
//! temporary name and renamed, with a sha256 beside it that is checked
//! before every use: the second job on the same base converts nothing, and
//! a damaged entry is made again. Where the cache cannot be written the
//! image goes to the job's work directory.

use crate::image::digest::HashingWriter;
use crate::image::{fingerprint, settled_fingerprint, BaseImage, ImageError, Sha256Digest};
use crate::layer::erofs::{self, Layers};
use crate::layer::flatten::Tree;
use crate::layer::tar_guard::Limits as TarLimits;
use crate::layer::LayerError;
use std::fs::File;
use std::io::{BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};

/// Why the base disk could not be made.
#[derive(Debug, thiserror::Error)]
pub enum BaseError {
    #[error(transparent)]
    Image(#[from] ImageError),
    #[error("flattening the base image's layers")]
    Layer(#[from] LayerError),
    #[error(
        "the base image's layers decompress to more than the room in {} (its free space less {} MiB)",
        dir.display(),
        STAGING_RESERVE >> 20
    )]
    TooLarge { dir: PathBuf },
    #[error("writing the base image disk {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Where the base disk is and how it came to be.
#[derive(Debug, Clone)]
pub struct BaseDisk {
    pub path: PathBuf,
    /// True when it came from the cache (nothing converted).
    pub cached: bool,
    pub bytes: u64,
}

/// Free space left on the staging disk when the layers are staged.
pub const STAGING_RESERVE: u64 = 256 << 20;

/// Bytes the layers may take when staged in `work`: its file system's free
/// space less [`STAGING_RESERVE`] (no bound where that cannot be read).
fn staging_room(work: &Path) -> u64 {
    match rustix::fs::statvfs(work) {
        Ok(s) => s.f_bavail.saturating_mul(s.f_frsize).saturating_sub(STAGING_RESERVE),
        Err(_) => u64::MAX,
    }
}

/// `sha256(chain(n-1) + " " + diff_id(n))`, the first being its diff_id.
pub fn chain_id(diff_ids: &[Sha256Digest]) -> Option<String> {
    let mut chain: Option<String> = None;
    for d in diff_ids {
        chain = Some(match chain {
            None => d.to_string(),
            Some(c) => Sha256Digest::of(format!("{c} {d}").as_bytes()).to_string(),
        });
    }
    chain
}

/// The cache file name for `chain` (None: no layers at all).
fn cache_name(chain: Option<&str>) -> String {
    let key = chain.map_or("empty".to_string(), |c| c.trim_start_matches("sha256:").to_string());
    format!("{key}-w{}.erofs", erofs::WRITER_VERSION)
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> BaseError + '_ {
    move |source| BaseError::Io { path: path.to_path_buf(), source }
}

/// sha256 of a file, hex.
fn file_sha256(path: &Path) -> std::io::Result<String> {
    let mut hashed = HashingWriter::new(std::io::sink());
    std::io::copy(&mut BufReader::with_capacity(1 << 20, File::open(path)?), &mut hashed)?;
    Ok(hashed.into_inner().1.digest().hex())
}

/// A cached image whose recorded sha256 matches its bytes. The checksum
/// file's second line is the image's fingerprint when its bytes last
/// matched: while the file keeps it, the bytes are not read again (a base
/// disk of a few hundred MB took a sha256 pass per job).
fn cached(path: &Path) -> Option<u64> {
    let sums = path.with_extension("erofs.sha256");
    let text = std::fs::read_to_string(&sums).ok()?;
    let mut lines = text.lines();
    let want = lines.next()?.trim();
    let meta = std::fs::metadata(path).ok()?;
    let seen = fingerprint(&meta);
    if lines.next() == Some(seen.as_str()) {
        return Some(meta.len());
    }
    if file_sha256(path).ok()? != want {
        return None;
    }
    if settled_fingerprint(&meta).is_some() {
        write_sums(&sums, want, path);
    }
    Some(meta.len())
}

/// Write the checksum file of the image at `image`: its sha256 and its
/// settled fingerprint, if it has one (atomically; a file that cannot be written only costs a
/// check more next time).
fn write_sums(sums: &Path, sum: &str, image: &Path) {
    let seen = std::fs::metadata(image).ok().and_then(|m| settled_fingerprint(&m)).unwrap_or_default();
    let tmp = sums.with_extension(format!("sha256.tmp-{}", std::process::id()));
    if std::fs::write(&tmp, format!("{sum}\n{seen}\n")).is_err() || std::fs::rename(&tmp, sums).is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
}

/// The staged layer tars, opened as the trees' data source.
pub fn open_staged(staged: &[PathBuf]) -> Result<Layers<BufReader<File>>, BaseError> {
    let mut layers = Vec::new();
    for p in staged {
        layers.push(BufReader::with_capacity(1 << 16, File::open(p).map_err(io_err(p))?));
    }
    Ok(Layers(layers))
}

/// Stage `base`'s layers uncompressed under `work` (`layer-N.tar`) and
/// flatten them; returns the tree and the staged files (its data source).
pub fn flatten(base: Option<&BaseImage>, work: &Path) -> Result<(Tree, Vec<PathBuf>), BaseError> {
    flatten_within(base, work, staging_room(work), TarLimits::DEFAULT)
}

/// [`flatten`], the staged layers taking at most `room` bytes and each
/// layer's archive read within `limits` (tests and the `base_bounds` fuzz
/// target pass small ones).
pub(crate) fn flatten_within(
    base: Option<&BaseImage>,
    work: &Path,
    mut room: u64,
    limits: TarLimits,
) -> Result<(Tree, Vec<PathBuf>), BaseError> {
    let mut tree = Tree::default();
    let mut staged = Vec::new();
    // The layers decompressed must fit the disk they are staged on (less a
    // reserve): a few hundred KB of zstd must not fill it.
    if let Some(b) = base {
        for i in 0..b.layers().len() {
            let p = work.join(format!("layer-{i}.tar"));
            // Stopped by SIGINT/SIGTERM at its next write: a big base image
            // is not staged whole after the user asked to stop.
            let file = BufWriter::with_capacity(1 << 20, File::create(&p).map_err(io_err(&p))?);
            let mut out = crate::layer::Stoppable { inner: file, stop: crate::signals::interrupted };
            let copied = std::io::copy(&mut std::io::Read::take(b.open_layer(i)?, room.saturating_add(1)), &mut out)
                .map_err(|e| ImageError::from_io(e, b.path()))?;
            room = room.checked_sub(copied).ok_or_else(|| BaseError::TooLarge { dir: work.to_path_buf() })?;
            out.flush().map_err(io_err(&p))?;
            drop(out);
            let layer = BufReader::with_capacity(1 << 20, File::open(&p).map_err(io_err(&p))?);
            tree.apply(&crate::layer::flatten::layer_changes(i, layer, limits)?)?;
            staged.push(p);
        }
    }
    Ok((tree, staged))
}

/// The base disk for `base` (None: an empty root), from the cache under
/// `cache` when it holds a good one, else made now; `work` is a directory
/// of the job's for the uncompressed layers (and the image, where the cache
/// cannot be written).
pub fn prepare(base: Option<&BaseImage>, cache: &Path, work: &Path) -> Result<BaseDisk, BaseError> {
    let diff_ids: Vec<Sha256Digest> = base.map(|b| b.layers().iter().map(|l| l.diff_id).collect()).unwrap_or_default();
    let name = cache_name(chain_id(&diff_ids).as_deref());
    let dir = cache.join("base");
    let path = dir.join(&name);
    if let Some(bytes) = cached(&path) {
        return Ok(BaseDisk { path, cached: true, bytes });
    }
    let (tree, staged) = flatten(base, work)?;
    let mut layers = open_staged(&staged)?;
    // Into the cache where it can be written, else the work directory.
    let target = if std::fs::create_dir_all(&dir).is_ok() && writable(&dir) { path } else { work.join(&name) };
    let tmp = target.with_extension(format!("erofs.tmp-{}", std::process::id()));
    let file = File::create(&tmp).map_err(io_err(&tmp))?;
    let mut out = HashingWriter::new(BufWriter::with_capacity(1 << 20, file));
    let written = erofs::write(&tree, &mut layers, &mut out);
    let result = written.map_err(BaseError::from).and_then(|info| {
        out.flush().map_err(io_err(&tmp))?;
        let (buffered, tally) = out.into_inner();
        let sum = tally.digest().hex();
        let file = buffered.into_inner().map_err(|e| BaseError::Io { path: tmp.clone(), source: e.into_error() })?;
        file.sync_all().map_err(io_err(&tmp))?;
        // Image first, then the checksum that makes it valid.
        std::fs::rename(&tmp, &target).map_err(io_err(&target))?;
        write_sums(&target.with_extension("erofs.sha256"), &sum, &target);
        Ok(info.bytes)
    });
    for p in &staged {
        let _ = std::fs::remove_file(p);
    }
    match result {
        Ok(bytes) => Ok(BaseDisk { path: target, cached: false, bytes }),
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            Err(e)
        }
    }
}

fn writable(dir: &Path) -> bool {
    rustix::fs::access(dir, rustix::fs::Access::WRITE_OK | rustix::fs::Access::EXEC_OK).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_ids_follow_the_oci_definition() {
        let a = Sha256Digest::of(b"a");
        let b = Sha256Digest::of(b"b");
        assert_eq!(chain_id(&[]), None);
        assert_eq!(chain_id(&[a]), Some(a.to_string()));
        let ab = Sha256Digest::of(format!("{a} {b}").as_bytes()).to_string();
        assert_eq!(chain_id(&[a, b]), Some(ab.clone()));
        assert_ne!(chain_id(&[b, a]), Some(ab), "order matters");
    }

    #[test]
    fn a_cached_disk_is_hashed_until_its_fingerprint_is_recorded() {
        let dir = tempfile::tempdir().unwrap();
        let disk = dir.path().join("x.erofs");
        let sums = disk.with_extension("erofs.sha256");
        std::fs::write(&disk, b"disk image bytes").unwrap();
        std::fs::write(&sums, format!("{}\n", file_sha256(&disk).unwrap())).unwrap();
        assert_eq!(cached(&disk), Some(16), "checked by content");
        assert_eq!(std::fs::read_to_string(&sums).unwrap().lines().count(), 1, "too young to be fingerprinted");
        std::thread::sleep(std::time::Duration::from_millis(1100));
        assert_eq!(cached(&disk), Some(16));
        let recorded = std::fs::read_to_string(&sums).unwrap();
        assert_eq!(recorded.lines().nth(1), Some(fingerprint(&std::fs::metadata(&disk).unwrap()).as_str()));
        assert_eq!(cached(&disk), Some(16), "by fingerprint");
        // Changed (same size): the fingerprint no longer matches, the
        // bytes do not either.
        std::fs::write(&disk, b"DISK image bytes").unwrap();
        assert_eq!(cached(&disk), None);
        std::fs::write(&sums, "0000\n").unwrap();
        assert_eq!(cached(&disk), None, "a wrong sum is never taken");
    }

    #[test]
    fn layers_that_decompress_beyond_the_room_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        // A 1 MiB file of zeros: a few KB gzipped, 1 MiB staged.
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_size(1 << 20);
        h.set_mode(0o644);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1);
        b.append_data(&mut h, "zeros", std::io::Read::take(std::io::repeat(0), 1 << 20)).unwrap();
        let layer = b.into_inner().unwrap();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        std::io::Write::write_all(&mut gz, &layer).unwrap();
        let gz = gz.finish().unwrap();
        assert!(gz.len() < 8 << 10);
        let diff_id = Sha256Digest::of(&layer);
        let config =
            format!(r#"{{"architecture":"amd64","os":"linux","rootfs":{{"type":"layers","diff_ids":["{diff_id}"]}}}}"#);
        let archive = dir.path().join("image.tar");
        let mut t = tar::Builder::new(std::fs::File::create(&archive).unwrap());
        let manifest = r#"[{"Config":"c.json","RepoTags":["x:1"],"Layers":["l/layer.tar"]}]"#;
        for (name, data) in
            [("c.json", config.as_bytes()), ("l/layer.tar", &gz[..]), ("manifest.json", manifest.as_bytes())]
        {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            t.append_data(&mut h, name, data).unwrap();
        }
        t.finish().unwrap();
        let image = BaseImage::open(&archive, &crate::image::Selector::default()).unwrap();
        let work = tempfile::tempdir().unwrap();
        let e = flatten_within(Some(&image), work.path(), 100 << 10, TarLimits::DEFAULT).unwrap_err();
        assert!(matches!(e, BaseError::TooLarge { .. }), "{e}");
        flatten_within(Some(&image), work.path(), 2 << 20, TarLimits::DEFAULT).unwrap();
    }

    #[test]
    fn an_empty_base_is_cached_once_and_a_damaged_entry_is_made_again() {
        let cache = tempfile::tempdir().unwrap();
        let work = tempfile::tempdir().unwrap();
        let first = prepare(None, cache.path(), work.path()).unwrap();
        assert!(!first.cached && first.path.starts_with(cache.path()), "{first:?}");
        let again = prepare(None, cache.path(), work.path()).unwrap();
        assert!(again.cached && again.path == first.path);
        // A flipped byte: the checksum no longer matches, so it is rebuilt.
        let mut bytes = std::fs::read(&first.path).unwrap();
        bytes[4096] ^= 0xff;
        std::fs::write(&first.path, &bytes).unwrap();
        let rebuilt = prepare(None, cache.path(), work.path()).unwrap();
        assert!(!rebuilt.cached);
        assert_ne!(std::fs::read(&rebuilt.path).unwrap(), bytes);
        assert!(prepare(None, cache.path(), work.path()).unwrap().cached);
        let names: Vec<String> = std::fs::read_dir(cache.path().join("base"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(names.iter().all(|n| !n.contains(".tmp-")), "no temporary left: {names:?}");
    }
}
