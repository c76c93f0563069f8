//! `exchange_fs`: the read-write exchange share, the one directory the
//! guest writes on the host (its `result.json` and output tar), built as
//! `job::run_job` builds it: [`Fs::new`] over the work directory's
//! `xchg/`, not read-only, with an [`OutputLimit`] (`--max-output`).
//!
//! Input: the `fs` target's (a sequence of FUSE requests, each served as
//! one descriptor chain; see [`super::fs`]), on a fresh work directory per
//! input: `xchg/` holding `job.json` and the script, and beside it what a
//! work directory holds (the scratch disk image, the empty slots) and a
//! neighbour the guest must not reach, with a symlink to it in the share.
//!
//! Invariants: no panic; the used length fits the reply buffer; nothing
//! outside `xchg/` is created, removed or changed (content, modes, owners,
//! times, xattrs, links); the budget holds: it never charges past its
//! limit, and the disk space the share's files took (allocated blocks,
//! not apparent sizes) grew by at most what was charged, plus one block
//! per inode (a partly written block, an xattr block); no device node but
//! a whiteout (0/0) is made in the share (as root the passthrough would make one, and the guest
//! could open the host's device through it).
//!
//! As root, the passthrough would create the device nodes a guest asks
//! for: the work directory is then a `nodev` tmpfs in the thread's own
//! mount namespace where nothing else is writable (the `layer_unpack`
//! sandbox), so a node made by the fuzzer opens nothing of the host.

use super::fs::{next_message, serve, MEM_SIZE};
use super::snapshot::{snapshot_without, Snapshot};
use crate::devices::virtio::fs::{Fs, OutputLimit};
use std::collections::BTreeMap;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use vm_memory::{GuestAddress, GuestMemoryMmap};

/// The budget of the share (`--max-output`): small, so the fuzzer reaches it.
pub(super) const LIMIT: u64 = 256 << 10;
/// A block of the host file system (and the page of a tmpfs).
const BLOCK: u64 = 4096;

/// Where work directories are made: as root, a sandboxed `nodev` tmpfs.
struct Scratch {
    dir: tempfile::TempDir,
}

thread_local! {
    static SCRATCH: Scratch = {
        let dir = tempfile::tempdir().expect("temporary directory");
        if rustix::process::geteuid().is_root() {
            if let Err(e) = super::layer::sandbox(dir.path()) {
                panic!("exchange_fs runs as root only in its sandbox: {e}");
            }
        }
        Scratch { dir }
    };
}

/// A work directory as `job::Workdir` lays it out, in `top`.
fn workdir(top: &Path) -> PathBuf {
    let xchg = top.join("xchg");
    let mk = |p: &Path| std::fs::create_dir_all(p).expect("mkdir");
    mk(&xchg);
    mk(&top.join("none"));
    mk(&top.join("outside/sub"));
    std::fs::write(xchg.join("job.json"), br#"{"protocol":1}"#).expect("write");
    std::fs::write(xchg.join("script"), b"#!/bin/sh\necho hi > /out\n").expect("write");
    std::fs::write(top.join("scratch.img"), vec![0u8; 8192]).expect("write");
    std::fs::File::create(top.join("none.img")).expect("create");
    std::fs::write(top.join("outside/secret.txt"), b"host file").expect("write");
    std::os::unix::fs::symlink("../outside/secret.txt", xchg.join("up")).expect("symlink");
    std::os::unix::fs::symlink("../outside", xchg.join("updir")).expect("symlink");
    std::os::unix::fs::symlink(top.join("scratch.img"), xchg.join("abs")).expect("symlink");
    xchg
}

/// What lies outside `xchg/` (its own entry changes too: the guest owns
/// it; below it, the snapshot does not look).
fn outside(s: &Snapshot) -> Snapshot {
    s.iter().filter(|(k, _)| *k != "xchg" && !k.starts_with("xchg/")).map(|(k, v)| (k.clone(), v.clone())).collect()
}

/// Allocated bytes of the distinct inodes under `dir` (not following
/// links), and how many inodes there are; panics at a device node (but a
/// whiteout).
fn usage(dir: &Path) -> (u64, u64) {
    fn walk(p: &Path, seen: &mut BTreeMap<(u64, u64), u64>) {
        let Ok(m) = std::fs::symlink_metadata(p) else { return };
        let t = m.file_type();
        // (A 0/0 character device is a whiteout, which RENAME_WHITEOUT makes
        // as root: it opens no device.)
        let whiteout = t.is_char_device() && m.rdev() == 0;
        assert!(whiteout || !t.is_char_device() && !t.is_block_device(), "a device node in the share: {}", p.display());
        seen.insert((m.dev(), m.ino()), m.blocks() * 512);
        if m.is_dir() {
            for e in std::fs::read_dir(p).into_iter().flatten().flatten() {
                walk(&e.path(), seen);
            }
        }
    }
    let mut seen = BTreeMap::new();
    walk(dir, &mut seen);
    (seen.values().sum(), seen.len() as u64)
}

pub fn exchange_fs(mut data: &[u8]) {
    SCRATCH.with(|scratch| {
        let top = tempfile::tempdir_in(scratch.dir.path()).expect("work directory");
        let xchg = workdir(top.path());
        let before = snapshot_without(top.path(), &["xchg"]);
        let (used_before, _) = usage(&xchg);
        let limit = Arc::new(OutputLimit::new(LIMIT));
        let fs = Fs::new(crate::job::XCHG_TAG, &xchg, false)
            .and_then(|fs| fs.with_output_limit(limit.clone()))
            .expect("exchange share");
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).expect("guest memory");
        let mut requests = 0;
        while let Some((msg, split, reply)) = next_message(&mut data) {
            let used = serve(&fs, &mem, &msg, split, u32::from(reply));
            assert!(used <= u32::from(reply), "used length {used} exceeds the {reply}-byte reply buffer");
            assert!(limit.used() <= LIMIT, "the budget charged {} of {LIMIT}", limit.used());
            requests += 1;
            if requests == 64 {
                break;
            }
        }
        drop(fs);
        let after = snapshot_without(top.path(), &["xchg"]);
        let (a, b) = (outside(&after), outside(&before));
        if a != b {
            let changed: Vec<_> = a.iter().filter(|(k, v)| b.get(*k) != Some(v)).collect();
            let gone: Vec<_> = b.keys().filter(|k| !a.contains_key(*k)).collect();
            panic!("the exchange share changed what lies beside it: {changed:?}, removed {gone:?}");
        }
        let (used_after, inodes) = usage(&xchg);
        let grown = used_after.saturating_sub(used_before);
        assert!(
            grown <= limit.used() + BLOCK * inodes,
            "the share's files took {grown} more bytes of disk, {} charged ({inodes} inodes)",
            limit.used()
        );
        crate::job::workdir::make_removable(top.path());
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fuzz::fs::WRITE;
    use vm_memory::Bytes;

    fn msg(opcode: u32, nodeid: u64, body: &[u8]) -> Vec<u8> {
        let len = u32::try_from(40 + body.len()).unwrap();
        let h: Vec<u8> =
            [&len.to_le_bytes()[..], &opcode.to_le_bytes(), &7u64.to_le_bytes(), &nodeid.to_le_bytes()].concat();
        [h, vec![0; 16], body.to_vec()].concat()
    }

    /// The harness reaches the read-write passthrough: the guest creates
    /// and writes a file, which the host sees in `xchg/`.
    #[test]
    fn requests_reach_the_read_write_passthrough() {
        let top = tempfile::tempdir().unwrap();
        let xchg = workdir(top.path());
        let limit = Arc::new(OutputLimit::new(LIMIT));
        let fs = Fs::new("xchg", &xchg, false).unwrap().with_output_limit(limit.clone()).unwrap();
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap();
        let errno = |mem: &GuestMemoryMmap| -> i32 { -mem.read_obj::<i32>(GuestAddress(WRITE + 4)).unwrap() };
        let init = [7u32.to_le_bytes(), 31u32.to_le_bytes(), 0u32.to_le_bytes(), 0u32.to_le_bytes()].concat();
        assert!(serve(&fs, &mem, &msg(26, 0, &init), 0, 4096) > 16);
        assert_eq!(errno(&mem), 0, "INIT");
        let create =
            [&0x8241u32.to_le_bytes()[..], &0o644u32.to_le_bytes(), &0u32.to_le_bytes(), &0u32.to_le_bytes()].concat();
        assert!(serve(&fs, &mem, &msg(35, 1, &[create, b"result.json\0".to_vec()].concat()), 0, 4096) > 16);
        assert_eq!(errno(&mem), 0, "CREATE");
        assert!(xchg.join("result.json").is_file());
        assert!(limit.used() >= crate::devices::virtio::fs::limit::NODE_COST);
    }

    /// One-byte writes a block apart: each takes a whole block of the
    /// host's disk, so each is charged one.
    #[test]
    fn sparse_writes_are_charged_the_blocks_they_take() {
        let seed = crate::fuzz::seeds::exchange_sparse_writes();
        exchange_fs(&seed);
    }
}
