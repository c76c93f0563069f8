//! The bodies of the fuzz targets in `fuzz/` (see `fuzz/README.md`), one
//! function per parser that the guest or input data reaches. Each takes the
//! fuzzer's bytes, runs them through the real code and panics on a broken
//! invariant (a panic of the code under test is a finding too); errors the
//! code reports are fine.
//!
//! The same functions replay, in the unit tests, every committed seed
//! (`fuzz/corpus-seeds/NAME/`) and every input a fuzzer found a bug with
//! (`fuzz/regressions/NAME/`), so a fixed bug stays fixed without a fuzzer.
//!
//! Built for the fuzz binaries (feature `fuzz`) and the unit tests only.

mod base;
mod base_bounds;
mod blk;
mod console;
mod exchange;
mod fs;
mod image;
mod job;
mod layer;
mod mmio;
mod scratch;
#[cfg(test)]
pub(crate) mod seeds;
mod snapshot;
mod snapshot_file;
mod tree_tar;
mod xstate;

pub use base::base_image;
pub use base_bounds::base_bounds;
pub use blk::blk;
pub use console::console;
pub use exchange::exchange_fs;
pub use fs::fs;
pub use image::{image, image_json};
pub use job::job;
pub use layer::{layer_convert, layer_unpack};
pub use mmio::mmio;
pub use scratch::scratch_ext4;
pub use snapshot_file::snapshot_file;
pub use tree_tar::tree_tar;
pub use xstate::xstate;

/// A fuzz target's body.
pub type Target = fn(&[u8]);

/// Every target, by the name of its fuzz binary and corpus directories.
pub const TARGETS: &[(&str, Target)] = &[
    ("mmio", mmio),
    ("blk", blk),
    ("fs", fs),
    ("exchange_fs", exchange_fs),
    ("job", job),
    ("layer_convert", layer_convert),
    ("layer_unpack", layer_unpack),
    ("image", image),
    ("image_json", image_json),
    ("xstate", xstate),
    ("base_image", base_image),
    ("scratch_ext4", scratch_ext4),
    ("console", console),
    ("snapshot_file", snapshot_file),
    ("tree_tar", tree_tar),
    ("base_bounds", base_bounds),
];

/// Cut `data` into the next `n` bytes (fewer at the end).
fn take<'a>(data: &mut &'a [u8], n: usize) -> &'a [u8] {
    let (head, tail) = data.split_at(n.min(data.len()));
    *data = tail;
    head
}

fn take_u8(data: &mut &[u8]) -> Option<u8> {
    take(data, 1).first().copied()
}

fn take_u16(data: &mut &[u8]) -> Option<u16> {
    match *take(data, 2) {
        [a, b] => Some(u16::from_le_bytes([a, b])),
        _ => None,
    }
}

fn take_u32(data: &mut &[u8]) -> Option<u32> {
    let b = take(data, 4);
    Some(u32::from_le_bytes(b.try_into().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::{Path, PathBuf};

    fn fuzz_dir() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz")
    }

    fn inputs(kind: &str, name: &str) -> Vec<PathBuf> {
        let dir = fuzz_dir().join(kind).join(name);
        let mut files: Vec<PathBuf> = match std::fs::read_dir(&dir) {
            Ok(rd) => rd.map(|e| e.unwrap().path()).collect(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => panic!("{}: {e}", dir.display()),
        };
        files.sort();
        files
    }

    /// Every target has seeds, every seed and regression input replays
    /// without a panic, and no corpus directory names an unknown target.
    #[test]
    fn seeds_and_regressions_replay() {
        for kind in ["corpus-seeds", "regressions"] {
            for entry in std::fs::read_dir(fuzz_dir().join(kind)).unwrap() {
                let name = entry.unwrap().file_name();
                let name = name.to_str().unwrap();
                assert!(TARGETS.iter().any(|(t, _)| *t == name), "{kind}/{name} names no fuzz target");
            }
        }
        for (name, target) in TARGETS {
            let seeds = inputs("corpus-seeds", name);
            assert!(!seeds.is_empty(), "fuzz target {name} has no seeds");
            for path in seeds.iter().chain(&inputs("regressions", name)) {
                eprintln!("replaying {}", path.display());
                let data = std::fs::read(path).unwrap();
                // A thread per input, as layer_unpack sandboxes its thread.
                let target = *target;
                if let Err(e) = std::thread::spawn(move || target(&data)).join() {
                    std::panic::resume_unwind(e);
                }
            }
        }
    }

    #[test]
    fn every_target_has_a_fuzz_binary() {
        let cargo = std::fs::read_to_string(fuzz_dir().join("Cargo.toml")).unwrap();
        for (name, _) in TARGETS {
            let bin = std::fs::read_to_string(fuzz_dir().join(format!("fuzz_targets/{name}.rs"))).unwrap();
            assert!(bin.contains(&format!("rootlayer::fuzz::{name}(data)")), "{name}.rs calls another target");
            assert!(cargo.contains(&format!("name = \"{name}\"")), "fuzz/Cargo.toml lacks {name}");
        }
    }

    #[test]
    fn take_cuts_at_the_end() {
        let mut d: &[u8] = &[1, 2, 3];
        assert_eq!(take_u16(&mut d), Some(0x0201));
        assert_eq!(take_u16(&mut d), None);
        assert_eq!(d, &[] as &[u8]);
        assert_eq!(take_u8(&mut d), None);
    }
}
