//! The snapshot file: written to a temporary name and renamed (two jobs
//! taking the same snapshot at once each rename a whole file), mode 0600,
//! and checked whole before use.
//!
//! ```text
//! 0        "RLSNAP\0\1", format version (u32 LE), header length (u32 LE)
//! 16       header (JSON): the key, the state's length and sha256, where
//!          guest memory starts, its length and digest
//! 64 KiB   machine state (JSON, [`MachineState`])
//! mem_off  guest memory, page-aligned, as a sparse image: pages that are
//!          all zeros are holes, never written
//! ```
//!
//! The memory digest is sha256 over (page number, page) of every page that
//! is not all zeros, in order: the writer computes it from guest memory,
//! the reader from the file's data extents (SEEK_DATA/SEEK_HOLE), so a flipped
//! byte anywhere, in a hole too, or a page zeroed by a crash, is caught. A
//! truncated file fails on its length. The memory is read and hashed once
//! while the file keeps its fingerprint (`digests`): a write moves it.

use super::{Key, MachineState, FORMAT_VERSION};
use sha2::{Digest, Sha256};
use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use vm_memory::{Bytes, GuestAddress, GuestMemory, GuestMemoryMmap, GuestMemoryRegion};

const MAGIC: [u8; 8] = *b"RLSNAP\x00\x01";
const PREFIX: usize = 16;
/// Where the state starts: the header must fit before it.
pub(crate) const STATE_OFFSET: u64 = 64 << 10;
/// Room for the header after the prefix.
pub(crate) const HEADER_MAX: usize = (64 << 10) - PREFIX;
pub(crate) const PAGE: usize = 4096;
/// Snapshots no job restored from for this long are removed when another
/// is taken (a new kernel, initramfs or rootlayer leaves the old ones
/// unused for good).
pub(super) const UNUSED_FOR: std::time::Duration = std::time::Duration::from_secs(14 * 24 * 3600);
/// A loaded snapshot is marked used (its mtime) when its mark is older than
/// this: a snapshot is removed at the earliest `UNUSED_FOR - MARK_EVERY`
/// after its last use.
const MARK_EVERY: std::time::Duration = std::time::Duration::from_secs(24 * 3600);
/// A temporary file this old is from a writer that died.
const ABANDONED: std::time::Duration = std::time::Duration::from_secs(3600);
/// Largest machine state read: a few hundred KiB in practice (the keeper's
/// per-task state is bounded by [`crate::vmm::xstate::MAX_BYTES`]).
pub(crate) const MAX_STATE: u64 = 128 << 20;

/// Errors reading or writing a snapshot file; on load, each is a reason to
/// boot cold.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("no snapshot for this guest yet")]
    Missing,
    #[error("{what}")]
    Io {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("not a rootlayer snapshot")]
    Magic,
    #[error("snapshot format {found}, this rootlayer reads {FORMAT_VERSION}")]
    Format { found: u32 },
    #[error("the snapshot is of another guest (its key differs)")]
    Stale,
    #[error("truncated: {len} bytes, the header says {want}")]
    Truncated { len: u64, want: u64 },
    #[error("corrupt: {0}")]
    Corrupt(&'static str),
    #[error("unreadable {what}")]
    Json {
        what: &'static str,
        #[source]
        source: serde_json::Error,
    },
    #[error("the machine state does not fit before guest memory")]
    TooLarge,
}

fn io(what: &'static str) -> impl FnOnce(std::io::Error) -> FileError {
    move |source| FileError::Io { what, source }
}

#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct Header {
    key: Key,
    state_len: u64,
    state_sha256: String,
    mem_offset: u64,
    mem_len: u64,
    mem_digest: String,
}

/// Whether `text` is a header exactly as [`write`] writes it (for the fuzz
/// target: a header with extra fields or spaces can change and mean the
/// same).
#[cfg(any(test, feature = "fuzz"))]
pub(crate) fn canonical_header(text: &[u8]) -> bool {
    serde_json::from_slice::<Header>(text).is_ok_and(|h| serde_json::to_vec(&h).is_ok_and(|t| t == text))
}

/// A snapshot that passed every check: its state, and the open file whose
/// `mem_offset..` is guest memory (to be mapped private).
#[derive(Debug)]
pub struct Loaded {
    pub path: PathBuf,
    pub state: MachineState,
    pub file: File,
    pub mem_offset: u64,
    pub mem_len: u64,
}

/// Load and check the snapshot at `path` for `key`.
pub fn load(path: &Path, key: &Key) -> Result<Loaded, FileError> {
    let mut file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(FileError::Missing),
        Err(e) => return Err(io("opening the snapshot")(e)),
    };
    let len = file.metadata().map_err(io("reading the snapshot's size"))?.len();
    let mut prefix = [0u8; PREFIX];
    if len < STATE_OFFSET {
        return Err(FileError::Truncated { len, want: STATE_OFFSET });
    }
    file.read_exact(&mut prefix).map_err(io("reading the snapshot"))?;
    if prefix[..8] != MAGIC {
        return Err(FileError::Magic);
    }
    let format = u32::from_le_bytes(prefix[8..12].try_into().expect("4 bytes"));
    if format != FORMAT_VERSION {
        return Err(FileError::Format { found: format });
    }
    let header_len = u32::from_le_bytes(prefix[12..16].try_into().expect("4 bytes")) as usize;
    if header_len > HEADER_MAX {
        return Err(FileError::Corrupt("header length"));
    }
    let mut text = vec![0u8; header_len];
    file.read_exact(&mut text).map_err(io("reading the snapshot"))?;
    let header: Header =
        serde_json::from_slice(&text).map_err(|source| FileError::Json { what: "snapshot header", source })?;
    if header.key != *key {
        return Err(FileError::Stale);
    }
    let want_mem = key.mem_mib << 20;
    if header.mem_len != want_mem
        || header.state_len > MAX_STATE
        || header.mem_offset % PAGE as u64 != 0
        || header.mem_offset < STATE_OFFSET + header.state_len
    {
        return Err(FileError::Corrupt("layout"));
    }
    let want = header.mem_offset.checked_add(header.mem_len).ok_or(FileError::Corrupt("layout"))?;
    if len != want {
        return Err(FileError::Truncated { len, want });
    }
    let mut state = vec![0u8; usize::try_from(header.state_len).expect("bounded")];
    file.read_exact_at(&mut state, STATE_OFFSET).map_err(io("reading the snapshot"))?;
    if super::sha256_hex(&state) != header.state_sha256 {
        return Err(FileError::Corrupt("machine state checksum"));
    }
    // Read and hashed once while the file keeps its fingerprint (any write
    // moves it): `digests`.
    let dir = path.parent().unwrap_or(Path::new("."));
    let what = format!("memory {} {}", header.mem_offset, header.mem_len);
    let digest = super::digests::remembered(dir, &what, path, &file, |f| {
        memory_digest_of_file(f, header.mem_offset, header.mem_len)
    })?;
    if digest != header.mem_digest {
        return Err(FileError::Corrupt("guest memory checksum"));
    }
    let state: MachineState =
        serde_json::from_slice(&state).map_err(|source| FileError::Json { what: "machine state", source })?;
    mark_used(&file);
    Ok(Loaded { path: path.into(), state, file, mem_offset: header.mem_offset, mem_len: header.mem_len })
}

/// Mark a loaded snapshot used, for [`prune`]: its mtime set to now
/// (its contents are not touched) when it is older than [`MARK_EVERY`],
/// so that between marks the file keeps its fingerprint and its memory is
/// not read again (`digests`).
fn mark_used(file: &File) {
    let now = std::time::SystemTime::now();
    if age(file.metadata(), now).map_or(true, |age| age > MARK_EVERY) {
        let _ = file.set_modified(now);
    }
}

/// How long ago a file was last modified (marked used), from its
/// metadata; None when that is unknown or in the future.
pub(super) fn age(meta: std::io::Result<std::fs::Metadata>, now: std::time::SystemTime) -> Option<std::time::Duration> {
    meta.and_then(|m| m.modified()).ok().and_then(|t| now.duration_since(t).ok())
}

fn is_zero(page: &[u8]) -> bool {
    page.iter().all(|&b| b == 0)
}

/// Add a page that is not all zeros to the memory digest.
fn feed_page(hasher: &mut Sha256, index: u64, page: &[u8]) {
    hasher.update(index.to_le_bytes());
    hasher.update(page);
}

/// The memory digest from the file: only its data extents are read.
fn memory_digest_of_file(file: &File, offset: u64, len: u64) -> Result<String, FileError> {
    use rustix::fs::{seek, SeekFrom};
    let mut hasher = Sha256::new();
    let end = offset + len;
    let mut at = offset;
    let mut buf = vec![0u8; 1 << 20];
    while at < end {
        let data = match seek(file, SeekFrom::Data(at)) {
            Ok(d) => d,
            Err(rustix::io::Errno::NXIO) => break,
            Err(e) => return Err(io("finding data in the snapshot")(e.into())),
        };
        if data >= end {
            break;
        }
        let hole = seek(file, SeekFrom::Hole(data)).map_err(|e| io("finding holes in the snapshot")(e.into()))?;
        // Whole pages, from the page the extent starts in to the page its
        // end falls in; each page is hashed once (`at` only grows).
        let page = PAGE as u64;
        let mut page_at = offset + (data - offset) / page * page;
        let stop = offset + (hole.min(end) - offset).div_ceil(page) * page;
        while page_at < stop {
            let n = usize::try_from((stop - page_at).min(buf.len() as u64)).expect("1 MiB");
            file.read_exact_at(&mut buf[..n], page_at).map_err(io("reading the snapshot's memory"))?;
            for (i, chunk) in buf[..n].chunks(PAGE).enumerate() {
                if !is_zero(chunk) {
                    feed_page(&mut hasher, (page_at - offset) / page + i as u64, chunk);
                }
            }
            page_at += n as u64;
        }
        at = page_at;
    }
    Ok(crate::image::Sha256Digest::of_hasher(hasher).hex())
}

/// Write the snapshot of `state` and `mem` for `key` into `dir`; returns
/// its path and the bytes it occupies on disk.
pub fn write(dir: &Path, key: &Key, state: &MachineState, mem: &GuestMemoryMmap) -> Result<(PathBuf, u64), FileError> {
    super::make_dir(dir).map_err(io("creating the snapshot directory"))?;
    let path = dir.join(key.file_name());
    let tmp = tempfile::Builder::new()
        .prefix(".snap-")
        .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o600))
        .tempfile_in(dir)
        .map_err(io("creating the snapshot file"))?;
    let state_bytes = serde_json::to_vec(state).map_err(|source| FileError::Json { what: "machine state", source })?;
    let mem_len: u64 = mem.iter().map(GuestMemoryRegion::len).sum();
    let mem_offset = (STATE_OFFSET + state_bytes.len() as u64).div_ceil(PAGE as u64) * PAGE as u64;
    let file = tmp.as_file();
    file.set_len(mem_offset + mem_len).map_err(io("sizing the snapshot file"))?;
    file.write_all_at(&state_bytes, STATE_OFFSET).map_err(io("writing the snapshot"))?;
    let mem_digest = write_memory(file, mem_offset, mem, mem_len)?;
    let header = Header {
        key: key.clone(),
        state_len: state_bytes.len() as u64,
        state_sha256: super::sha256_hex(&state_bytes),
        mem_offset,
        mem_len,
        mem_digest,
    };
    let text = serde_json::to_vec(&header).map_err(|source| FileError::Json { what: "snapshot header", source })?;
    if text.len() > HEADER_MAX {
        return Err(FileError::TooLarge);
    }
    let mut prefix = Vec::with_capacity(PREFIX + text.len());
    prefix.extend_from_slice(&MAGIC);
    prefix.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    prefix.extend_from_slice(&u32::try_from(text.len()).expect("bounded").to_le_bytes());
    prefix.extend_from_slice(&text);
    file.write_all_at(&prefix, 0).map_err(io("writing the snapshot"))?;
    (&*file).flush().map_err(io("writing the snapshot"))?;
    let tmp = tmp.into_temp_path();
    tmp.persist(&path).map_err(|e| io("renaming the snapshot into place")(e.error))?;
    let disk_bytes = std::fs::metadata(&path)
        .map(|m| std::os::unix::fs::MetadataExt::blocks(&m) * 512)
        .map_err(io("reading the snapshot's size"))?;
    prune(dir, &path, std::time::SystemTime::now());
    Ok((path, disk_bytes))
}

/// Remove from `dir` the snapshots other than `keep` that no job used for
/// [`UNUSED_FOR`], and temporary files older than [`ABANDONED`]; returns
/// how many. Best effort: what cannot be read or removed stays.
pub fn prune(dir: &Path, keep: &Path, now: std::time::SystemTime) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    let mut removed = 0;
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let limit = if name.starts_with(".snap-") {
            ABANDONED
        } else if name.ends_with(".snap") && path != keep {
            UNUSED_FOR
        } else if name.ends_with(".snap.lock") && path != keep.with_extension("snap.lock") {
            // The take lock of a snapshot as long unused (lock.rs).
            UNUSED_FOR
        } else {
            continue;
        };
        if age(entry.metadata(), now).is_some_and(|a| a > limit) && std::fs::remove_file(&path).is_ok() {
            removed += 1;
        }
    }
    removed
}

/// Copy guest memory into the file, leaving all-zero pages as holes, and
/// return the digest.
fn write_memory(file: &File, offset: u64, mem: &GuestMemoryMmap, len: u64) -> Result<String, FileError> {
    const CHUNK: usize = 2 << 20;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; CHUNK];
    let mut addr = 0u64;
    while addr < len {
        let n = usize::try_from((len - addr).min(CHUNK as u64)).expect("2 MiB");
        mem.read_slice(&mut buf[..n], GuestAddress(addr)).map_err(|_| FileError::Corrupt("guest memory unreadable"))?;
        // Runs of non-zero pages, one write each.
        let mut run: Option<usize> = None;
        for (i, page) in buf[..n].chunks(PAGE).enumerate() {
            let index = addr / PAGE as u64 + i as u64;
            let zero = is_zero(page);
            if !zero {
                feed_page(&mut hasher, index, page);
            }
            match (zero, run) {
                (false, None) => run = Some(i),
                (true, Some(start)) => {
                    write_run(file, offset + addr, &buf, start, i)?;
                    run = None;
                }
                _ => {}
            }
        }
        if let Some(start) = run {
            write_run(file, offset + addr, &buf, start, n.div_ceil(PAGE))?;
        }
        addr += n as u64;
    }
    Ok(crate::image::Sha256Digest::of_hasher(hasher).hex())
}

fn write_run(file: &File, chunk_at: u64, buf: &[u8], first: usize, end: usize) -> Result<(), FileError> {
    let bytes = &buf[first * PAGE..(end * PAGE).min(buf.len())];
    file.write_all_at(bytes, chunk_at + (first * PAGE) as u64).map_err(io("writing the snapshot's memory"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vmm::snapshot::state::{VcpuState, VmState};
    use crate::vmm::snapshot::{DeviceKey, HostKey};

    fn key(mem_mib: u64) -> Key {
        Key {
            format: FORMAT_VERSION,
            rootlayer: "test".into(),
            kernel_sha256: "k".into(),
            initrd_sha256: "i".into(),
            cmdline: "console=ttyS0".into(),
            mem_mib,
            vcpus: 1,
            devices: vec![DeviceKey { device_type: 2, features: 0, queues: vec![16] }],
            host: HostKey {
                kind: "test".into(),
                cpuid_sha256: "c".into(),
                tsc_khz: 1,
                kept_mask: 0,
                xsave_bytes: 4096,
            },
        }
    }

    fn state() -> MachineState {
        MachineState {
            vcpus: vec![VcpuState {
                regs: Default::default(),
                sregs: Default::default(),
                xsave: vec![7; 4096],
                xcrs: Default::default(),
                debugregs: Default::default(),
                lapic: Default::default(),
                msrs: vec![(0x10, 12345)],
                events: Default::default(),
                mp_state: Default::default(),
            }],
            vm: VmState {
                pic_master: Default::default(),
                pic_slave: Default::default(),
                ioapic: Default::default(),
                pit: Default::default(),
                clock: Default::default(),
            },
            serial: Default::default(),
            transports: Vec::new(),
            keeper: None,
        }
    }

    fn memory() -> GuestMemoryMmap {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        mem.write_slice(b"kernel text", GuestAddress(0x1000)).unwrap();
        mem.write_slice(&[0xab; 5000], GuestAddress(0x8_0000)).unwrap();
        mem.write_slice(&[1], GuestAddress((1 << 20) - 1)).unwrap();
        mem
    }

    fn written() -> (tempfile::TempDir, PathBuf, u64) {
        let dir = tempfile::tempdir().unwrap();
        let (path, disk) = write(dir.path(), &key(1), &state(), &memory()).unwrap();
        (dir, path, disk)
    }

    #[test]
    fn a_written_snapshot_loads_with_its_memory_sparse_and_private_to_its_owner() {
        use std::os::unix::fs::PermissionsExt;
        let (dir, path, disk) = written();
        assert_eq!(path, dir.path().join(key(1).file_name()));
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        assert!(disk < 256 << 10, "holes kept: {disk} bytes on disk for 1 MiB of memory");
        let loaded = load(&path, &key(1)).unwrap();
        assert_eq!(loaded.state.vcpus[0].msrs, vec![(0x10, 12345)]);
        assert_eq!(loaded.state.vcpus[0].xsave, vec![7; 4096]);
        assert_eq!(loaded.mem_len, 1 << 20);
        let mut page = [0u8; 11];
        loaded.file.read_exact_at(&mut page, loaded.mem_offset + 0x1000).unwrap();
        assert_eq!(&page, b"kernel text");
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names.len(), 1, "no temporary file left: {names:?}");
    }

    #[test]
    fn another_key_or_format_is_not_used() {
        let (_dir, path, _) = written();
        assert!(matches!(load(&path, &key(2)), Err(FileError::Stale)));
        let mut other = key(1);
        other.initrd_sha256 = "j".into();
        assert!(matches!(load(&path, &other), Err(FileError::Stale)));
        let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        f.write_all_at(&(FORMAT_VERSION + 1).to_le_bytes(), 8).unwrap();
        assert!(matches!(load(&path, &key(1)), Err(FileError::Format { .. })));
        f.write_all_at(b"X", 0).unwrap();
        assert!(matches!(load(&path, &key(1)), Err(FileError::Magic)));
        assert!(matches!(load(&path.with_extension("none"), &key(1)), Err(FileError::Missing)));
    }

    #[test]
    fn a_truncated_snapshot_is_refused() {
        let (_dir, path, _) = written();
        let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        let len = f.metadata().unwrap().len();
        f.set_len(len - 4096).unwrap();
        assert!(matches!(load(&path, &key(1)), Err(FileError::Truncated { .. })));
        f.set_len(100).unwrap();
        assert!(matches!(load(&path, &key(1)), Err(FileError::Truncated { .. })));
    }

    #[test]
    fn a_flipped_byte_anywhere_is_caught() {
        let (_dir, path, _) = written();
        let loaded = load(&path, &key(1)).unwrap();
        let mem_offset = loaded.mem_offset;
        drop(loaded);
        let original = std::fs::read(&path).unwrap();
        // In written memory, in a hole of memory, in the state, zeroing a
        // page, and in the header.
        let spots = [mem_offset + 0x1000, mem_offset + 0x4_0000, STATE_OFFSET + 10, mem_offset + 0x8_0000, 40];
        for (i, at) in spots.into_iter().enumerate() {
            std::fs::write(&path, &original).unwrap();
            let f = std::fs::OpenOptions::new().read(true).write(true).open(&path).unwrap();
            if i == 3 {
                f.write_all_at(&[0u8; 4096], at).unwrap();
            } else {
                let mut b = [0u8];
                f.read_exact_at(&mut b, at).unwrap();
                f.write_all_at(&[b[0] ^ 0x20], at).unwrap();
            }
            let got = load(&path, &key(1));
            assert!(got.is_err(), "a change at {at:#x} went unnoticed");
        }
        std::fs::write(&path, &original).unwrap();
        assert!(load(&path, &key(1)).is_ok(), "the original still loads");
    }

    #[test]
    fn snapshots_unused_for_weeks_and_abandoned_temporaries_are_pruned() {
        let dir = tempfile::tempdir().unwrap();
        let now = std::time::SystemTime::now();
        let day = std::time::Duration::from_secs(24 * 3600);
        let file = |name: &str, age: std::time::Duration| {
            let p = dir.path().join(name);
            std::fs::File::create(&p).unwrap().set_modified(now - age).unwrap();
            p
        };
        let keep = file("new.snap", 30 * day);
        let old = file("old.snap", 15 * day);
        let recent = file("recent.snap", 13 * day);
        let dead = file(".snap-dead", 2 * 3600 * std::time::Duration::from_secs(1));
        let writing = file(".snap-writing", std::time::Duration::from_secs(10));
        let other = file("notes.txt", 100 * day);
        assert_eq!(prune(dir.path(), &keep, now), 2);
        for (p, kept) in
            [(&keep, true), (&old, false), (&recent, true), (&dead, false), (&writing, true), (&other, true)]
        {
            assert_eq!(p.exists(), kept, "{}", p.display());
        }
    }

    #[test]
    fn loading_a_snapshot_marks_it_used() {
        let (_dir, path, _) = written();
        let f = std::fs::File::options().write(true).open(&path).unwrap();
        let long_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(30 * 24 * 3600);
        f.set_modified(long_ago).unwrap();
        load(&path, &key(1)).unwrap();
        let age = std::fs::metadata(&path).unwrap().modified().unwrap().elapsed().unwrap();
        assert!(age < std::time::Duration::from_secs(60), "{age:?}");
        // Marked within the day: the file keeps its fingerprint.
        let hour_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
        f.set_modified(hour_ago).unwrap();
        let before = crate::image::fingerprint(&std::fs::metadata(&path).unwrap());
        load(&path, &key(1)).unwrap();
        assert_eq!(crate::image::fingerprint(&std::fs::metadata(&path).unwrap()), before);
    }

    #[test]
    fn the_memory_is_read_once_while_the_file_keeps_its_fingerprint() {
        let (dir, path, _) = written();
        load(&path, &key(1)).unwrap();
        let records = dir.path().join("digests");
        assert!(!records.exists(), "written less than a second ago: not recorded");
        std::thread::sleep(std::time::Duration::from_millis(1100));
        load(&path, &key(1)).unwrap();
        let record = std::fs::read_dir(&records).unwrap().next().unwrap().unwrap().path();
        let text = std::fs::read_to_string(&record).unwrap();
        // Served from the record: another digest recorded for this very
        // fingerprint is what the header is checked against.
        let other = text.lines().take(2).map(|l| format!("{l}\n")).collect::<String>() + &"ab".repeat(32) + "\n";
        std::fs::write(&record, &other).unwrap();
        assert!(matches!(load(&path, &key(1)), Err(FileError::Corrupt("guest memory checksum"))));
        std::fs::write(&record, &text).unwrap();
        load(&path, &key(1)).unwrap();
        // A byte changed in place moves the fingerprint: read and caught.
        let f = std::fs::OpenOptions::new().read(true).write(true).open(&path).unwrap();
        let at = {
            let l = load(&path, &key(1)).unwrap();
            l.mem_offset + 0x1000
        };
        let mut b = [0u8];
        f.read_exact_at(&mut b, at).unwrap();
        f.write_all_at(&[b[0] ^ 0x20], at).unwrap();
        assert!(matches!(load(&path, &key(1)), Err(FileError::Corrupt("guest memory checksum"))));
    }

    #[test]
    fn writers_racing_for_one_snapshot_leave_a_whole_one() {
        let dir = tempfile::tempdir().unwrap();
        let mem = memory();
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| write(dir.path(), &key(1), &state(), &mem).unwrap());
            }
        });
        load(&dir.path().join(key(1).file_name()), &key(1)).unwrap();
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
