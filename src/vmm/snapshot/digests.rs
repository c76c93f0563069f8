//! Digests remembered in the snapshot directory by the file's fingerprint
//! (device, inode, size, mtime, ctime: `crate::image::fingerprint`): the
//! sha256 of the kernel and initramfs a [`Key`](super::Key) names, and the
//! memory digest of a snapshot file ([`super::file::load`]). Reading and
//! hashing a 15 MB kernel and its initramfs took 17 ms of every restored
//! job here, and the snapshot's memory 10 ms more, most of what the host
//! spends on a restore; while a file keeps its fingerprint, its bytes are
//! not read again (as the base disk's checksum file does, `job::base`). Any
//! write to the file moves its mtime and ctime, and so its fingerprint: the
//! bytes are read and checked again.
//!
//! A record is one small file per input path and kind of digest,
//! `digests/<sha256 of the kind and path>`: the path, the fingerprint, the
//! digest. It is written only when the file's fingerprint did not move
//! while it was read and its last change is a second old (a file changed
//! again within one tick of the kernel's clock would keep its ctime).
//! Records unused for [`super::file::UNUSED_FOR`] go when a new one is
//! written. A record that cannot be read or written only costs a read of
//! the file.

use crate::image::{fingerprint, settled_fingerprint};
use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// The records' directory inside the snapshot directory.
const DIR: &str = "digests";

/// The sha256 (hex) of the file at `path`, from its record in `dir` (the
/// snapshot directory) while the file keeps the fingerprint recorded,
/// else read and recorded.
pub fn sha256_of_file(dir: &Path, path: &Path) -> io::Result<String> {
    let file = File::open(path)?;
    remembered(dir, "sha256", path, &file, |mut f| {
        let mut bytes = Vec::new();
        f.read_to_end(&mut bytes)?;
        Ok(super::sha256_hex(&bytes))
    })
}

/// The digest (64 lowercase hex digits) of kind `what` that `compute` gives
/// for `file`, open at `path`: from its record in `dir` (the snapshot
/// directory) while the file keeps the fingerprint recorded, else computed
/// and recorded. A file whose metadata cannot be read is computed each time.
pub fn remembered<E>(
    dir: &Path,
    what: &str,
    path: &Path,
    file: &File,
    compute: impl FnOnce(&File) -> Result<String, E>,
) -> Result<String, E> {
    let Ok(before) = file.metadata() else { return compute(file) };
    let record = record_path(dir, what, path);
    let seen = fingerprint(&before);
    if let Some(digest) = recorded(&record, path, &seen) {
        return Ok(digest);
    }
    let digest = compute(file)?;
    if file.metadata().ok().and_then(|m| settled_fingerprint(&m)).as_ref() == Some(&seen) {
        write_record(&record, path, &seen, &digest);
    }
    Ok(digest)
}

fn record_path(dir: &Path, what: &str, path: &Path) -> PathBuf {
    let mut key = what.as_bytes().to_vec();
    key.push(0);
    key.extend_from_slice(path.as_os_str().as_encoded_bytes());
    let name = super::sha256_hex(&key);
    dir.join(DIR).join(&name[..32])
}

/// The digest `record` holds for `path` at fingerprint `seen`, if it does
/// (touched: it is in use).
fn recorded(record: &Path, path: &Path, seen: &str) -> Option<String> {
    let text = std::fs::read_to_string(record).ok()?;
    let mut lines = text.lines();
    let (p, f, digest) = (lines.next()?, lines.next()?, lines.next()?);
    let valid = p.as_bytes() == path.as_os_str().as_encoded_bytes()
        && f == seen
        && digest.len() == 64
        && digest.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        && lines.next().is_none();
    if !valid {
        return None;
    }
    let _ = std::fs::File::options().append(true).open(record).and_then(|f| f.set_modified(SystemTime::now()));
    Some(digest.to_string())
}

/// Write `record` atomically, after dropping records unused for long.
fn write_record(record: &Path, path: &Path, seen: &str, digest: &str) {
    let Some(dir) = record.parent() else { return };
    let Some(path_text) = path.to_str().filter(|p| !p.contains('\n')) else { return };
    if super::make_dir(dir).is_err() {
        return;
    }
    prune(dir, SystemTime::now());
    let tmp = record.with_extension(format!("tmp-{}", std::process::id()));
    let text = format!("{path_text}\n{seen}\n{digest}\n");
    if std::fs::write(&tmp, text).is_err() || std::fs::rename(&tmp, record).is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
}

/// Remove the records (and writers' leftovers) in `dir` unused since
/// `now - UNUSED_FOR`; returns how many.
fn prune(dir: &Path, now: SystemTime) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    let mut removed = 0;
    for entry in entries.flatten() {
        let old = super::file::age(entry.metadata(), now).is_some_and(|age| age > super::file::UNUSED_FOR);
        if old && std::fs::remove_file(entry.path()).is_ok() {
            removed += 1;
        }
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_is_read_until_its_settled_fingerprint_is_recorded() {
        let dir = tempfile::tempdir().unwrap();
        let kernel = dir.path().join("vmlinux");
        std::fs::write(&kernel, b"kernel bytes").unwrap();
        let want = crate::vmm::snapshot::sha256_hex(b"kernel bytes");
        let record = record_path(dir.path(), "sha256", &kernel);
        assert_eq!(sha256_of_file(dir.path(), &kernel).unwrap(), want);
        assert!(!record.exists(), "changed less than a second ago: not recorded");
        std::thread::sleep(std::time::Duration::from_millis(1100));
        assert_eq!(sha256_of_file(dir.path(), &kernel).unwrap(), want);
        let text = std::fs::read_to_string(&record).unwrap();
        let fp = fingerprint(&std::fs::metadata(&kernel).unwrap());
        assert_eq!(text, format!("{}\n{fp}\n{want}\n", kernel.display()));
        // Served from the record, not the bytes: a record of another digest
        // for this very fingerprint is what comes back.
        let other = "ab".repeat(32);
        std::fs::write(&record, format!("{}\n{fp}\n{other}\n", kernel.display())).unwrap();
        assert_eq!(sha256_of_file(dir.path(), &kernel).unwrap(), other);
        // Changed (same size): the fingerprint moved, the bytes are read.
        std::fs::write(&kernel, b"KERNEL bytes").unwrap();
        assert_eq!(sha256_of_file(dir.path(), &kernel).unwrap(), crate::vmm::snapshot::sha256_hex(b"KERNEL bytes"));
    }

    #[test]
    fn each_kind_of_digest_has_its_own_record() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("file");
        std::fs::write(&path, b"bytes").unwrap();
        std::thread::sleep(std::time::Duration::from_millis(1100));
        let file = File::open(&path).unwrap();
        let of = |what: &str, digest: &str| {
            remembered(dir.path(), what, &path, &file, |_| Ok::<_, io::Error>(digest.to_string())).unwrap()
        };
        let (a, b) = ("a".repeat(64), "b".repeat(64));
        assert_eq!(of("one", &a), a);
        assert_eq!(of("two", &b), b);
        // Recorded: what `compute` would give now is not asked.
        assert_eq!(of("one", &b), a);
        assert_eq!(of("two", &a), b);
        // A computation that fails records nothing.
        let failed = remembered(dir.path(), "three", &path, &file, |_| Err::<String, _>("no"));
        assert_eq!(failed, Err("no"));
        assert_eq!(of("three", &a), a);
    }

    #[test]
    fn a_damaged_or_foreign_record_is_never_taken() {
        let dir = tempfile::tempdir().unwrap();
        let kernel = dir.path().join("vmlinux");
        std::fs::write(&kernel, b"kernel bytes").unwrap();
        let want = crate::vmm::snapshot::sha256_hex(b"kernel bytes");
        let fp = fingerprint(&std::fs::metadata(&kernel).unwrap());
        let record = record_path(dir.path(), "sha256", &kernel);
        std::fs::create_dir_all(record.parent().unwrap()).unwrap();
        let k = kernel.display();
        for bad in [
            format!("{k}\n{fp}\n{}\n", "AB".repeat(32)),
            format!("{k}\n{fp}\n{}\n", "ab".repeat(31)),
            format!("{k}\n{fp}\n"),
            format!("/other/path\n{fp}\n{}\n", "ab".repeat(32)),
            format!("{k}\ndev 1 ino 2\n{}\n", "ab".repeat(32)),
            format!("{k}\n{fp}\n{}\nmore\n", "ab".repeat(32)),
        ] {
            std::fs::write(&record, &bad).unwrap();
            assert_eq!(sha256_of_file(dir.path(), &kernel).unwrap(), want, "{bad:?}");
        }
    }

    #[test]
    fn the_records_directory_is_the_users_alone() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let snapshots = dir.path().join("snapshots");
        let kernel = dir.path().join("vmlinux");
        std::fs::write(&kernel, b"kernel bytes").unwrap();
        std::thread::sleep(std::time::Duration::from_millis(1100));
        sha256_of_file(&snapshots, &kernel).unwrap();
        for d in [&snapshots, &snapshots.join(DIR)] {
            assert_eq!(std::fs::metadata(d).unwrap().permissions().mode() & 0o777, 0o700, "{}", d.display());
        }
    }

    #[test]
    fn records_unused_for_long_are_pruned() {
        let dir = tempfile::tempdir().unwrap();
        let (old, new) = (dir.path().join("old"), dir.path().join("new"));
        std::fs::write(&old, "x").unwrap();
        std::fs::write(&new, "x").unwrap();
        let long_ago = SystemTime::now() - crate::vmm::snapshot::file::UNUSED_FOR - std::time::Duration::from_secs(60);
        std::fs::File::options().append(true).open(&old).unwrap().set_modified(long_ago).unwrap();
        assert_eq!(prune(dir.path(), SystemTime::now()), 1);
        assert!(!old.exists() && new.exists());
    }
}
