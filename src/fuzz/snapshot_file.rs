//! `snapshot_file`: the snapshot loader ([`file::load`]), which reads a
//! file from the cache directory that anything of the user's may have
//! written or damaged; a snapshot it accepts becomes the guest's memory
//! and registers.
//!
//! Input: a compact description of a snapshot file, since a real one is
//! more than 1 MiB: `len: u16` and that many bytes written at offset 0 (the
//! prefix and the header), `len: u16` and that many bytes written at the
//! state's offset (64 KiB), `size: u32` the file's length (sparse, at most
//! [`MAX_FILE`]), then records `at: u32`, `len: u16` and the bytes written at
//! `at` (guest memory; past the end: dropped). The seed is a real snapshot
//! the code's own writer made, its memory's non-zero bytes as records.
//!
//! Invariants: no panic; the loader's bounds hold for whatever the header
//! claims: a header is at most [`file::HEADER_MAX`] bytes, a state at most
//! [`file::MAX_STATE`] (so the loader allocates no more than these and its
//! 1 MiB buffer); a file it accepts is whole (its key, its length, the
//! state's sha256 and the memory digest all recomputed here, the memory
//! read plainly rather than by extents); and one flipped byte of such a file
//! in the prefix, header, state or memory (a hole too) is refused, while
//! one in the padding between them loads the same state or is refused.

use super::{take, take_u16, take_u32};
use crate::vmm::snapshot::file::{self, HEADER_MAX, MAX_STATE, PAGE, STATE_OFFSET};
#[cfg(test)]
use crate::vmm::snapshot::state::{VcpuState, VmState};
#[cfg(test)]
use crate::vmm::snapshot::MachineState;
use crate::vmm::snapshot::{DeviceKey, HostKey, Key, FORMAT_VERSION};
use sha2::{Digest, Sha256};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;

/// Longest file made from an input: room for a state near [`MAX_STATE`]
/// and a memory of 1 MiB, as sparse files.
pub(super) const MAX_FILE: u64 = 160 << 20;

/// The key of the guest the fuzzed snapshots are loaded for: 1 MiB of memory.
pub(super) fn key() -> Key {
    Key {
        format: FORMAT_VERSION,
        rootlayer: "0.1.0 /fuzz/rootlayer 1 2".into(),
        kernel_sha256: "aa".repeat(32),
        initrd_sha256: "bb".repeat(32),
        cmdline: "console=ttyS0 reboot=k panic=1".into(),
        mem_mib: 1,
        vcpus: 1,
        devices: vec![
            DeviceKey { device_type: 2, features: 1 << 32, queues: vec![256] },
            DeviceKey { device_type: 26, features: 1 << 32, queues: vec![128, 128] },
        ],
        host: HostKey {
            kind: "emulated".into(),
            cpuid_sha256: "cc".repeat(32),
            tsc_khz: 2_000_000,
            kept_mask: 0xe7,
            xsave_bytes: 4096,
        },
    }
}

/// A machine state as a restore needs it (registers at their defaults).
#[cfg(test)]
pub(super) fn state() -> MachineState {
    MachineState {
        vcpus: vec![VcpuState {
            regs: Default::default(),
            sregs: Default::default(),
            xsave: vec![0x5a; 4096],
            xcrs: Default::default(),
            debugregs: Default::default(),
            lapic: Default::default(),
            msrs: vec![(0x10, 12345), (0x1a0, 1)],
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

/// An offset into the file's bytes (all in memory, so it fits).
fn us(n: u64) -> usize {
    usize::try_from(n).expect("an offset into bytes in memory")
}

fn scratch() -> PathBuf {
    thread_local! {
        static DIR: tempfile::TempDir = tempfile::tempdir().expect("temporary directory");
    }
    DIR.with(|d| d.path().join("fuzz.snap"))
}

/// Build the file an input describes at `path`.
fn build(path: &std::path::Path, mut data: &[u8]) -> Option<()> {
    let n = usize::from(take_u16(&mut data)?);
    let head = take(&mut data, n).to_vec();
    let n = usize::from(take_u16(&mut data)?);
    let state = take(&mut data, n).to_vec();
    let size = u64::from(take_u32(&mut data)?).min(MAX_FILE);
    let f = std::fs::File::create(path).expect("snapshot file");
    f.set_len(size).expect("size");
    let put = |bytes: &[u8], at: u64| {
        let n = usize::try_from(size.saturating_sub(at)).unwrap_or(usize::MAX).min(bytes.len());
        f.write_all_at(&bytes[..n], at).expect("write");
    };
    put(&head, 0);
    put(&state, STATE_OFFSET);
    while let (Some(at), Some(n)) = (take_u32(&mut data), take_u16(&mut data)) {
        put(take(&mut data, usize::from(n)), u64::from(at));
    }
    Some(())
}

/// What an accepted file must be, recomputed from its bytes: returns the
/// regions that carry meaning (prefix and header, state, memory).
fn check_whole(bytes: &[u8], key: &Key) -> [(u64, u64); 3] {
    let header_len = u32::from_le_bytes(bytes[12..16].try_into().expect("4 bytes")) as usize;
    assert!(header_len <= HEADER_MAX, "a {header_len}-byte header accepted");
    assert_eq!(&bytes[..12], &[b"RLSNAP\0\x01".as_slice(), &FORMAT_VERSION.to_le_bytes()].concat()[..]);
    let header: serde_json::Value = serde_json::from_slice(&bytes[16..16 + header_len]).expect("an accepted header");
    let got: Key = serde_json::from_value(header["key"].clone()).expect("the header's key");
    assert_eq!(&got, key, "a snapshot of another guest accepted");
    let num = |k: &str| header[k].as_u64().unwrap_or_else(|| panic!("header field {k}"));
    let (state_len, mem_offset, mem_len) = (num("state_len"), num("mem_offset"), num("mem_len"));
    assert!(state_len <= MAX_STATE, "a {state_len}-byte state accepted");
    assert_eq!(mem_len, key.mem_mib << 20, "memory of another size accepted");
    assert_eq!(mem_offset + mem_len, bytes.len() as u64, "a file of the wrong length accepted");
    assert!(mem_offset >= STATE_OFFSET + state_len && mem_offset % PAGE as u64 == 0, "overlapping regions");
    let state = &bytes[us(STATE_OFFSET)..us(STATE_OFFSET + state_len)];
    assert_eq!(Some(format!("{:x}", Sha256::digest(state)).as_str()), header["state_sha256"].as_str());
    let mut hasher = Sha256::new();
    for (i, page) in bytes[us(mem_offset)..].chunks(PAGE).enumerate() {
        if page.iter().any(|&b| b != 0) {
            hasher.update((i as u64).to_le_bytes());
            hasher.update(page);
        }
    }
    assert_eq!(Some(format!("{:x}", hasher.finalize()).as_str()), header["mem_digest"].as_str(), "memory digest");
    [(0, 16 + header_len as u64), (STATE_OFFSET, state_len), (mem_offset, mem_len)]
}

pub fn snapshot_file(data: &[u8]) {
    let path = scratch();
    if build(&path, data).is_none() {
        return;
    }
    let key = key();
    let loaded = match file::load(&path, &key) {
        Ok(l) => l,
        Err(e) => {
            let _ = e.to_string();
            return;
        }
    };
    let state = serde_json::to_vec(&loaded.state).expect("state");
    drop(loaded);
    let bytes = std::fs::read(&path).expect("the snapshot");
    let regions = check_whole(&bytes, &key);
    // One byte of each region, and one of the padding after the header,
    // chosen by the input.
    let pick = Sha256::digest(data);
    let at = |i: usize, (start, len): (u64, u64)| {
        let r = u64::from_le_bytes(pick[4 * i..4 * i + 8].try_into().expect("8 bytes"));
        start + r % len.max(1)
    };
    let f = std::fs::OpenOptions::new().write(true).open(&path).expect("the snapshot");
    // Strict regions: any flip is refused. The header's length and the
    // padding may change without changing what loads (a longer header
    // taking in spaces after it), and so may a header the writer would not
    // have written (extra fields, spaces).
    let [head, state_region, memory] = regions;
    let text = (16, head.1 - 16);
    let canonical = file::canonical_header(&bytes[16..us(head.1)]);
    let checks = [
        ((0, 12), true),
        ((12, 4), false),
        (text, canonical),
        (state_region, true),
        (memory, true),
        ((head.1, STATE_OFFSET - head.1), false),
    ];
    for (i, (region, strict)) in checks.into_iter().enumerate() {
        if region.1 == 0 {
            continue;
        }
        let pos = at(i, region);
        let old = bytes[us(pos)];
        let flip = old ^ (1 << (pick[31 - i] % 8));
        f.write_all_at(&[flip], pos).expect("flip");
        let again = file::load(&path, &key);
        if strict {
            assert!(again.is_err(), "byte {pos:#x} ({old:#x} -> {flip:#x}) flipped, and the snapshot still loads");
        } else if let Ok(l) = again {
            assert!(serde_json::to_vec(&l.state).expect("state") == state, "a flip at {pos:#x} changed the state");
        }
        f.write_all_at(&[old], pos).expect("restore");
    }
}

/// The input that describes the snapshot file at `path` (the seed).
#[cfg(test)]
pub(super) fn describe(bytes: &[u8]) -> Vec<u8> {
    let header_len = u32::from_le_bytes(bytes[12..16].try_into().expect("4 bytes")) as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[16..16 + header_len]).expect("header");
    let state_len = usize::try_from(header["state_len"].as_u64().expect("state_len")).expect("small");
    let mem_offset = usize::try_from(header["mem_offset"].as_u64().expect("mem_offset")).expect("small");
    let u16le = |n: usize| u16::try_from(n).expect("fits").to_le_bytes().to_vec();
    let mut out = [u16le(16 + header_len), bytes[..16 + header_len].to_vec()].concat();
    out.extend(u16le(state_len));
    out.extend(&bytes[us(STATE_OFFSET)..us(STATE_OFFSET) + state_len]);
    out.extend(u32::try_from(bytes.len()).expect("small").to_le_bytes());
    // Runs of non-zero bytes of memory, each one record.
    let mut i = mem_offset;
    while i < bytes.len() {
        if bytes[i] == 0 {
            i += 1;
            continue;
        }
        let start = i;
        while i < bytes.len() && bytes[i] != 0 && i - start < u16::MAX as usize {
            i += 1;
        }
        out.extend(u32::try_from(start).expect("small").to_le_bytes());
        out.extend(u16le(i - start));
        out.extend(&bytes[start..i]);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The seed describes a snapshot the loader takes, and the target
    /// checks it (its flips included).
    #[test]
    fn the_seed_loads() {
        let seed = crate::fuzz::seeds::snapshot_seed();
        let path = scratch();
        build(&path, &seed).unwrap();
        file::load(&path, &key()).expect("the seed's snapshot loads");
        snapshot_file(&seed);
    }

    /// A header claiming a state past the bound is refused, whatever the
    /// file's length.
    #[test]
    fn a_state_past_the_bound_is_refused() {
        let seed = crate::fuzz::seeds::snapshot_seed();
        let path = scratch();
        build(&path, &seed).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        let header_len = u32::from_le_bytes(bytes[12..16].try_into().unwrap()) as usize;
        let mut header: serde_json::Value = serde_json::from_slice(&bytes[16..16 + header_len]).unwrap();
        let state_len = MAX_STATE + 1;
        let mem_offset = (STATE_OFFSET + state_len).div_ceil(PAGE as u64) * PAGE as u64;
        header["state_len"] = state_len.into();
        header["mem_offset"] = mem_offset.into();
        let text = serde_json::to_vec(&header).unwrap();
        let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        f.write_all_at(&u32::try_from(text.len()).unwrap().to_le_bytes(), 12).unwrap();
        f.write_all_at(&text, 16).unwrap();
        f.set_len(mem_offset + (1 << 20)).unwrap();
        assert!(matches!(file::load(&path, &key()), Err(file::FileError::Corrupt("layout"))));
    }
}
