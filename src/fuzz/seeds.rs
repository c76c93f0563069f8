//! The seeds of the targets whose input is a guest's register accesses,
//! memory or FUSE messages, or the host/agent messages: written by this
//! code in the exact wire format (what Linux's virtio-mmio and virtio-blk
//! drivers and the FUSE client send; what the host and agent write), since
//! they cannot be captured from files. The seeds of the other targets are
//! real files made by real tools (GNU tar on an overlayfs upper dir,
//! umoci, skopeo); see `fuzz/README.md`.
//!
//! `generated_seeds_are_current` fails when the committed files differ from
//! what this writes; `ROOTLAYER_WRITE_SEEDS=1 cargo test --lib generated_seeds`
//! rewrites them.

use crate::job::{Job, JobResult, Mount, MountSource, RunAsRoot, Task};
use crate::layer::{convert, ConvertOptions};
use std::path::{Path, PathBuf};

fn u16le(v: u16) -> Vec<u8> {
    v.to_le_bytes().to_vec()
}
fn u32le(v: u32) -> Vec<u8> {
    v.to_le_bytes().to_vec()
}
fn u64le(v: u64) -> Vec<u8> {
    v.to_le_bytes().to_vec()
}

/// mmio: 4-byte read / write, 8-byte read, 1-byte read.
fn r4(off: u16) -> Vec<u8> {
    [vec![8], u16le(off)].concat()
}
fn w4(off: u16, v: u32) -> Vec<u8> {
    [vec![9], u16le(off), u32le(v)].concat()
}

/// Linux's virtio_mmio probe and virtio_blk setup, then a notification, an
/// interrupt acknowledgement and a reset.
fn mmio_driver_init(queue_size: u32) -> Vec<u8> {
    let mut s = Vec::new();
    for off in [0x00, 0x04, 0x08, 0x0c] {
        s.extend(r4(off));
    }
    s.extend(w4(0x70, 0));
    s.extend(r4(0x70));
    s.extend(w4(0x70, 1));
    s.extend(w4(0x70, 3));
    s.extend(w4(0x14, 1));
    s.extend(r4(0x10));
    s.extend(w4(0x14, 0));
    s.extend(r4(0x10));
    s.extend(w4(0x24, 1));
    s.extend(w4(0x20, 1));
    s.extend(w4(0x24, 0));
    s.extend(w4(0x20, 1 << 9 | 1 << 6 | 1 << 2));
    s.extend(w4(0x70, 11));
    s.extend(r4(0x70));
    // Config space: capacity (two halves, and one 8-byte read), seg_max, blk_size.
    s.extend(r4(0x100));
    s.extend(r4(0x104));
    s.extend([vec![12], u16le(0x100)].concat());
    s.extend(r4(0x10c));
    s.extend(r4(0x114));
    s.extend([vec![0], u16le(0x114)].concat());
    s.extend(w4(0x30, 0));
    s.extend(r4(0x44));
    s.extend(r4(0x34));
    s.extend(w4(0x38, queue_size));
    for (off, v) in [(0x80, 0x1000), (0x84, 0), (0x90, 0x5000), (0x94, 0), (0xa0, 0x6000), (0xa4, 0)] {
        s.extend(w4(off, v));
    }
    s.extend(w4(0x44, 1));
    s.extend(w4(0x70, 15));
    s.extend(r4(0x70));
    s.extend(w4(0x50, 0));
    s.extend(r4(0x60));
    s.extend(w4(0x64, 1));
    s.extend(w4(0x70, 0));
    s.extend(r4(0x70));
    s
}

const NEXT: u16 = 1;
const WRITE: u16 = 2;
const INDIRECT: u16 = 4;

/// Guest memory of the blk target: queue of 16 at the fixed rings, the
/// given descriptors, the given available heads, and `extra` (addr, bytes).
fn blk_memory(descs: &[(u64, u32, u16, u16)], heads: &[u16], extra: &[(usize, Vec<u8>)]) -> Vec<u8> {
    let mut mem = vec![0u8; 0x1000 + 4 + 2 * 16];
    let mut put = |at: usize, b: &[u8]| mem[at..at + b.len()].copy_from_slice(b);
    for (i, &(addr, len, flags, next)) in descs.iter().enumerate() {
        put(16 * i, &[u64le(addr), u32le(len), u16le(flags), u16le(next)].concat());
    }
    put(0x1002, &u16le(u16::try_from(heads.len()).expect("few heads")));
    for (i, &h) in heads.iter().enumerate() {
        put(0x1004 + 2 * i, &u16le(h));
    }
    for (at, b) in extra {
        put(*at, b);
    }
    [vec![4, 0], mem].concat()
}

fn blk_header(ty: u32, sector: u64) -> Vec<u8> {
    [u32le(ty), u32le(0), u64le(sector)].concat()
}

fn blk_seeds() -> Vec<(&'static str, Vec<u8>)> {
    let hdr = |ty, sector| vec![(0x200, blk_header(ty, sector))];
    let req = |data_flags: Option<u16>| {
        let mut d = vec![(0x200u64, 16u32, NEXT, 1u16)];
        if let Some(f) = data_flags {
            d.push((0x400, 512, f | NEXT, 2));
        }
        d.push((0x800, 1, WRITE, 0));
        d
    };
    vec![
        ("read-sector-3", blk_memory(&req(Some(WRITE)), &[0], &hdr(0, 3))),
        ("write-sector-15", blk_memory(&req(Some(0)), &[0], &[(0x200, blk_header(1, 15)), (0x400, vec![0xab; 512])])),
        ("flush", blk_memory(&req(None), &[0], &hdr(4, 0))),
        (
            "get-id",
            blk_memory(&[(0x200, 16, NEXT, 1), (0x400, 20, WRITE | NEXT, 2), (0x800, 1, WRITE, 0)], &[0], &hdr(8, 0)),
        ),
        (
            "read-then-write",
            blk_memory(
                &[
                    (0x200, 16, NEXT, 1),
                    (0x400, 512, WRITE | NEXT, 2),
                    (0x800, 1, WRITE, 0),
                    (0x300, 16, NEXT, 4),
                    (0x600, 512, NEXT, 5),
                    (0x900, 1, WRITE, 0),
                ],
                &[0, 3],
                &[(0x200, blk_header(0, 0)), (0x300, blk_header(1, 1))],
            ),
        ),
        (
            "indirect-read",
            blk_memory(
                &[(0xa00, 48, INDIRECT, 0)],
                &[0],
                &[
                    (0x200, blk_header(0, 2)),
                    (
                        0xa00,
                        [
                            u64le(0x200),
                            u32le(16),
                            u16le(NEXT),
                            u16le(1),
                            u64le(0x400),
                            u32le(512),
                            u16le(WRITE | NEXT),
                            u16le(2),
                            u64le(0x800),
                            u32le(1),
                            u16le(WRITE),
                            u16le(0),
                        ]
                        .concat(),
                    ),
                ],
            ),
        ),
        ("loop", blk_memory(&[(0x200, 16, NEXT, 1), (0x800, 1, WRITE | NEXT, 0)], &[0], &hdr(0, 0))),
        ("past-the-end", blk_memory(&req(Some(WRITE)), &[0], &hdr(0, 16))),
        ("unsupported-type", blk_memory(&req(None), &[0], &hdr(11, 0))),
    ]
}

/// One FUSE request record of the fs target.
fn fuse(opcode: u32, nodeid: u64, unique: u64, args: &[Vec<u8>], reply: u16) -> Vec<u8> {
    let body = args.concat();
    let len = u32::try_from(40 + body.len()).expect("small message");
    let msg = [u32le(len), u32le(opcode), u64le(unique), u64le(nodeid), u32le(0), u32le(0), u32le(1), u32le(0), body]
        .concat();
    [u16le(u16::try_from(msg.len()).expect("small message")), u16le(reply), vec![0], msg].concat()
}

fn cstr(s: &str) -> Vec<u8> {
    [s.as_bytes(), b"\0"].concat()
}

/// FUSE_INIT as Linux 6.1's virtio-fs client sends it (with `flags2`).
fn fuse_init(unique: u64) -> Vec<u8> {
    let flags: u32 = 0x73ff_fffb;
    let init = [u32le(7), u32le(36), u32le(0x2_0000), u32le(flags), u32le(0), vec![0; 44]].concat();
    fuse(26, 0, unique, &[init], 4096)
}

const BIG: u16 = 8192;

fn fs_seeds() -> Vec<(&'static str, Vec<u8>)> {
    let read_in =
        |fh: u64, size: u32| [u64le(fh), u64le(0), u32le(size), u32le(0), u64le(0), u32le(0x8000), u32le(0)].concat();
    let open_in = |flags: u32| [u32le(flags), u32le(0)].concat();
    let getattr = [u32le(0), u32le(0), u64le(0)].concat();
    let mount_and_read = [
        fuse_init(1),
        fuse(3, 1, 2, std::slice::from_ref(&getattr), BIG),
        fuse(1, 1, 3, &[cstr("hello.txt")], BIG),
        fuse(3, 2, 4, std::slice::from_ref(&getattr), BIG),
        fuse(14, 2, 5, &[open_in(0x8000)], BIG),
        fuse(15, 2, 6, &[read_in(0, 4096)], BIG),
        fuse(18, 2, 7, &[[u64le(0), u32le(0x8000), u32le(0), u64le(0)].concat()], BIG),
        fuse(27, 1, 8, &[open_in(0x18800)], BIG),
        fuse(44, 1, 9, &[read_in(0, 4096)], BIG),
        fuse(28, 1, 10, &[read_in(0, 4096)], BIG),
        fuse(29, 1, 11, &[[u64le(0), u32le(0), u32le(0), u64le(0)].concat()], BIG),
        fuse(1, 1, 12, &[cstr("up")], BIG),
        fuse(5, 3, 13, &[], BIG),
        fuse(22, 2, 14, &[u32le(256), u32le(0), cstr("user.test")], BIG),
        fuse(23, 2, 15, &[u32le(256), u32le(0)], BIG),
        fuse(17, 1, 16, &[], BIG),
        fuse(34, 2, 17, &[u32le(4), u32le(0)], BIG),
        fuse(1, 1, 18, &[cstr("sub")], BIG),
        fuse(1, 4, 19, &[cstr("..")], BIG),
        fuse(1, 1, 20, &[cstr("closed")], BIG),
        fuse(2, 2, 21, &[u64le(1)], 0),
        fuse(38, 0, 22, &[], BIG),
    ]
    .concat();
    let setattr =
        [u32le(8), u32le(0), u64le(0), u64le(0), u64le(0), u64le(0), u64le(0), u64le(0), vec![0; 40]].concat();
    let mutations = [
        fuse_init(1),
        fuse(1, 1, 2, &[cstr("hello.txt")], BIG),
        fuse(9, 1, 3, &[u32le(0o755), u32le(0o022), cstr("newdir")], BIG),
        fuse(35, 1, 4, &[[u32le(0x8241), u32le(0o644), u32le(0o022), u32le(0)].concat(), cstr("newfile")], BIG),
        fuse(14, 2, 5, &[open_in(0x8202)], BIG),
        fuse(4, 2, 6, &[setattr], BIG),
        fuse(10, 1, 7, &[cstr("hello.txt")], BIG),
        fuse(11, 1, 8, &[cstr("sub")], BIG),
        fuse(12, 1, 9, &[u64le(1), cstr("hello.txt"), cstr("moved")], BIG),
        fuse(6, 1, 10, &[cstr("target"), cstr("link")], BIG),
        fuse(13, 1, 11, &[u64le(2), cstr("hardlink")], BIG),
        fuse(21, 2, 12, &[u32le(1), u32le(0), u32le(0), u32le(0), cstr("user.x"), b"v".to_vec()], BIG),
        fuse(24, 2, 13, &[cstr("user.test")], BIG),
        fuse(
            16,
            2,
            14,
            &[[u64le(0), u64le(0), u32le(5), u32le(0), u64le(0), u32le(0x8002), u32le(0)].concat(), b"hello".to_vec()],
            BIG,
        ),
        fuse(43, 2, 15, &[u64le(0), u64le(0), u64le(1 << 20), u32le(0), u32le(0)], BIG),
        fuse(8, 1, 16, &[u32le(0o10644), u32le(0), u32le(0o022), u32le(0), cstr("fifo2")], BIG),
        fuse(45, 1, 17, &[[u64le(1), u32le(0), u32le(0)].concat(), cstr("hello.txt"), cstr("x")], BIG),
    ]
    .concat();
    // Odd shapes: a reply buffer too short for the reply, a header split
    // across descriptors, a length field that lies, no reply buffer.
    let mut split = fuse(1, 1, 3, &[cstr("hello.txt")], BIG);
    split[4] = 5;
    let mut lying = fuse(1, 1, 4, &[cstr("hello.txt")], BIG);
    lying[5] = 200;
    let odd =
        [fuse_init(1), fuse(1, 1, 2, &[cstr("hello.txt")], 24), split, lying, fuse(3, 1, 5, &[getattr], 0)].concat();
    vec![("mount-and-read", mount_and_read), ("mutations-get-erofs", mutations), ("odd-shapes", odd)]
}

fn job_seeds() -> Vec<(&'static str, Vec<u8>)> {
    let job = Job {
        protocol: crate::job::PROTOCOL_VERSION,
        mounts: vec![
            Mount {
                source: MountSource::VirtioFs { tag: "share0".into() },
                target: "/nix/store".into(),
                read_only: true,
            },
            Mount {
                source: MountSource::Disk { device: "/dev/vda".into(), fstype: "ext4".into(), size: 1 << 30 },
                target: "/run/rootlayer/scratch".into(),
                read_only: false,
            },
        ],
        task: Task::RunAsRoot(RunAsRoot {
            base: crate::job::BASE_MOUNT.into(),
            contents: Some("/run/rootlayer/contents".into()),
            script: "/run/rootlayer/xchg/script".into(),
            extra_commands: Some("/run/rootlayer/xchg/extra-commands".into()),
            store_paths: vec!["/nix/store".into()],
            path: "/bin:/usr/bin:/sbin:/usr/sbin".into(),
            merged_listing: None,
        }),
        entropy: "5a".repeat(crate::job::ENTROPY_BYTES),
        host_time_ns: 1_764_633_600_000_000_000,
    };
    let ok = JobResult {
        protocol: crate::job::PROTOCOL_VERSION,
        oom_kills: 0,
        status: 0,
        error: None,
        phases: vec![("mounts".into(), 0.012), ("unpack".into(), 0.25), ("script".into(), 1.5), ("task".into(), 2.0)],
        observations: vec![],
        script_status: Some(0),
        disk_full: false,
    };
    let full = JobResult {
        status: 1,
        error: Some("writing upper.tar: No space left on device (os error 28)".into()),
        script_status: Some(1),
        disk_full: true,
        ..ok.clone()
    };
    let json = |v: serde_json::Result<Vec<u8>>| v.expect("serialize");
    vec![
        ("job-run-as-root.json", json(serde_json::to_vec_pretty(&job))),
        ("result-ok.json", json(serde_json::to_vec(&ok))),
        ("result-disk-full.json", json(serde_json::to_vec(&full))),
    ]
}

/// xstate: what patch 0004's kernel writes for a fork, an exec, a signal
/// and switches between two tasks (op byte: port index, 0x80 = the task
/// wrote its AVX registers first).
fn xstate_seeds() -> Vec<(&'static str, Vec<u8>)> {
    let step = |op: u8, v: u32| [vec![op], u32le(v)].concat();
    let fork_exec = [step(0, 1), step(0x81, 2), step(0, 2), step(2, 2), step(0, 3), step(0x90, 1), step(2, 1)].concat();
    let switches = [step(0, 1), step(0x80 | 0x11, 2), step(0x80 | 0x22, 1), step(0, 2), step(0x80 | 0x33, 1)].concat();
    let signal = [step(0, 1), step(0x83, 0x7ffe_1000), step(0x80, 2), step(0, 1), step(4, 0x7ffe_1000)].concat();
    vec![("fork-exec", fork_exec), ("switches", switches), ("signal-frame", signal)]
}

fn seeds_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus-seeds")
}

/// Every generated seed: (target, file name, bytes).
fn generated() -> Vec<(&'static str, String, Vec<u8>)> {
    let mut out = Vec::new();
    out.push(("mmio", "linux-blk-probe-256".to_string(), mmio_driver_init(256)));
    out.push(("mmio", "linux-blk-probe-bad-queue-size".to_string(), mmio_driver_init(1000)));
    for (name, bytes) in blk_seeds() {
        out.push(("blk", name.to_string(), bytes));
    }
    for (name, bytes) in fs_seeds() {
        out.push(("fs", name.to_string(), bytes));
    }
    for (name, bytes) in job_seeds() {
        out.push(("job", name.to_string(), bytes));
    }
    for (k, doc) in super::image::default_documents() {
        out.push(("image_json", format!("fixed-image-document-{k}"), [vec![k], doc].concat()));
    }
    for (name, bytes) in xstate_seeds() {
        out.push(("xstate", name.to_string(), bytes));
    }
    // Our own layer writer's output for the real overlay upper dir: the
    // layers rootlayer itself produces, as a base for the next step.
    let upper = std::fs::read(seeds_dir().join("layer_convert/overlay-upper-gnu-pax.tar")).expect("upper seed");
    let mut layer = Vec::new();
    convert(&upper[..], &mut layer, &ConvertOptions { source_date_epoch: Some(1), gzip: None }).expect("convert");
    out.push(("layer_unpack", "rootlayer-converted-overlay-upper.tar".to_string(), layer));
    out
}

#[test]
fn generated_seeds_are_current() {
    let write = std::env::var_os("ROOTLAYER_WRITE_SEEDS").is_some();
    for (target, name, bytes) in generated() {
        let path = seeds_dir().join(target).join(&name);
        if write {
            std::fs::write(&path, &bytes).expect("write seed");
        }
        let committed = std::fs::read(&path).unwrap_or_default();
        assert!(committed == bytes, "{} differs from what seeds.rs writes (ROOTLAYER_WRITE_SEEDS=1)", path.display());
    }
}
