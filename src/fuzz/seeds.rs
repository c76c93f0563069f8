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

use crate::layer::{convert, ConvertOptions};
use crate::protocol::{Job, JobResult, Mount, MountSource, RunAsRoot, Task};
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

/// FUSE_WRITE's arguments and data.
fn write_in(fh: u64, offset: u64, data: &[u8]) -> Vec<u8> {
    let size = u32::try_from(data.len()).expect("small write");
    [u64le(fh), u64le(offset), u32le(size), u32le(0), u64le(0), u32le(0x8002), u32le(0), data.to_vec()].concat()
}

/// FUSE_CREATE's arguments (flags, mode, umask) and name.
fn create_in(name: &str, flags: u32) -> Vec<u8> {
    [u32le(flags), u32le(0o100644), u32le(0o022), u32le(0), cstr(name)].concat()
}

/// One-byte writes a block apart into a new file of the exchange share.
pub(super) fn exchange_sparse_writes() -> Vec<u8> {
    let mut s = [fuse_init(1), fuse(35, 1, 2, &[create_in("big", 0x8242)], BIG)].concat();
    for i in 0..48u64 {
        s.extend(fuse(16, 2, 3 + i, &[write_in(1, i * 4096, b"x")], BIG));
    }
    s
}

/// What the agent does in the exchange share (writes result.json, the
/// output), and what a hostile guest tries there: links out of it, device
/// nodes, renames over the host's files, xattrs, growth past the budget.
fn exchange_seeds() -> Vec<(&'static str, Vec<u8>)> {
    let getattr = [u32le(0), u32le(0), u64le(0)].concat();
    let result =
        br#"{"protocol":1,"status":0,"error":null,"phases":[],"observations":[],"script_status":0,"disk_full":false}"#;
    let agent = [
        fuse_init(1),
        fuse(3, 1, 2, std::slice::from_ref(&getattr), BIG),
        fuse(1, 1, 3, &[cstr("job.json")], BIG),
        fuse(14, 2, 4, &[[u32le(0x8000), u32le(0)].concat()], BIG),
        fuse(15, 2, 5, &[[u64le(1), u64le(0), u32le(4096), u32le(0), u64le(0), u32le(0x8000), u32le(0)].concat()], BIG),
        fuse(35, 1, 6, &[create_in("result.json.tmp", 0x8241)], BIG),
        fuse(16, 3, 7, &[write_in(2, 0, result)], BIG),
        fuse(25, 3, 8, &[[u64le(2), u64le(0)].concat()], BIG),
        fuse(18, 3, 9, &[[u64le(2), u32le(0x8001), u32le(0), u64le(0)].concat()], BIG),
        fuse(12, 1, 10, &[u64le(1), cstr("result.json.tmp"), cstr("result.json")], BIG),
        fuse(9, 1, 11, &[u32le(0o755), u32le(0o022), cstr("out")], BIG),
        fuse(35, 4, 12, &[create_in("upper.tar", 0x8241)], BIG),
        fuse(16, 5, 13, &[write_in(3, 0, &[0x61; 3000])], BIG),
        fuse(43, 5, 14, &[u64le(3), u64le(4096), u64le(8192), u32le(0), u32le(0)], BIG),
        fuse(20, 1, 15, &[], BIG),
    ]
    .concat();
    let setattr_size = |size: u64| {
        [u32le(8), u32le(0), u64le(0), u64le(size), u64le(0), u64le(0), u64le(0), u64le(0), vec![0; 40]].concat()
    };
    let hostile = [
        fuse_init(1),
        fuse(1, 1, 2, &[cstr("up")], BIG),
        fuse(5, 2, 3, &[], BIG),
        fuse(1, 1, 4, &[cstr("updir")], BIG),
        fuse(1, 3, 5, &[cstr("secret.txt")], BIG),
        fuse(1, 1, 6, &[cstr("..")], BIG),
        fuse(14, 2, 7, &[[u32le(0x8002), u32le(0)].concat()], BIG),
        fuse(16, 2, 8, &[write_in(1, 0, b"overwritten")], BIG),
        fuse(4, 2, 9, &[setattr_size(0)], BIG),
        fuse(12, 1, 10, &[u64le(1), cstr("job.json"), cstr("up")], BIG),
        fuse(45, 1, 11, &[[u64le(1), u32le(2), u32le(0)].concat(), cstr("script"), cstr("updir")], BIG),
        fuse(8, 1, 12, &[u32le(0o60600), u32le(0x0800), u32le(0o022), u32le(0), cstr("sda")], BIG),
        fuse(8, 1, 13, &[u32le(0o20666), u32le(0x0103), u32le(0o022), u32le(0), cstr("null")], BIG),
        fuse(6, 1, 14, &[cstr("../../../../etc/passwd"), cstr("passwd")], BIG),
        fuse(13, 2, 15, &[u64le(2), cstr("hardlink-out")], BIG),
        fuse(21, 1, 16, &[u32le(1), u32le(0), u32le(0), u32le(0), cstr("user.x"), b"v".to_vec()], BIG),
        fuse(21, 1, 17, &[u32le(1), u32le(0), u32le(0), u32le(0), cstr("trusted.overlay.opaque"), b"y".to_vec()], BIG),
        fuse(35, 1, 18, &[create_in("grow", 0x8242)], BIG),
        fuse(4, 7, 19, &[setattr_size(1 << 40)], BIG),
        fuse(43, 7, 20, &[u64le(2), u64le(0), u64le(1 << 20), u32le(0), u32le(0)], BIG),
        fuse(11, 1, 21, &[cstr("none")], BIG),
        fuse(10, 1, 22, &[cstr("script")], BIG),
    ]
    .concat();
    vec![("agent-writes-result", agent), ("hostile-guest", hostile), ("sparse-writes", exchange_sparse_writes())]
}

/// A real snapshot of a 1 MiB guest, written by the snapshot writer, as
/// the `snapshot_file` target's input describes it.
pub(super) fn snapshot_seed() -> Vec<u8> {
    use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).expect("memory");
    mem.write_slice(b"\x0f\x01\xd9kernel text", GuestAddress(0x1000)).expect("write");
    mem.write_slice(&[0xab; 5000], GuestAddress(0x8_0000)).expect("write");
    mem.write_slice(&[1], GuestAddress((1 << 20) - 1)).expect("write");
    let dir = tempfile::tempdir().expect("temporary directory");
    let key = super::snapshot_file::key();
    let (path, _) =
        crate::vmm::snapshot::file::write(dir.path(), &key, &super::snapshot_file::state(), &mem).expect("a snapshot");
    super::snapshot_file::describe(&std::fs::read(path).expect("the snapshot"))
}

/// Console output: a boot as the guest prints it, a failed job, a kernel
/// panic, and the hostile kind (overlong lines, invalid UTF-8, NULs, CRs,
/// status lines that do not parse); then the same through the UART, as
/// Linux's 8250 driver programs and writes it.
fn console_seeds() -> Vec<(&'static str, Vec<u8>)> {
    let chunks = |text: &[u8], n: usize| -> Vec<u8> {
        let mut out = vec![0];
        for c in text.chunks(n) {
            out.push(u8::try_from(c.len()).expect("short chunk"));
            out.extend(c);
        }
        out
    };
    let boot = b"[    0.000000] Linux version 6.1.0 (rootlayer)\r\n[    0.120000] virtio_blk virtio0: [vda] 2097152 512-byte logical blocks\r\nrootlayer-agent 0.1.0 ready (uptime 0.35s)\r\n+ echo hello\r\nhello\r\nrootlayer-agent: exit status 0\r\n";
    let failed = b"rootlayer-agent 0.1.0 ready (uptime 0.35s)\nrootlayer-agent: error: script exited with status 3\nrootlayer-agent: exit status 3\n";
    let panic = b"[    1.5] Out of memory: Killed process 123 (sh) total-vm:1000kB\n[    1.6] Kernel panic - not syncing: Attempted to kill init! exitcode=0x00000009\n";
    let mut hostile =
        b"rootlayer-agent: exit status 99999999999\nrootlayer-agent: exit status  -1 \r\n\xff\xfe\x00\xc3(\n".to_vec();
    hostile.extend(vec![b'x'; 5000]);
    hostile.extend(b"\nrootlayer-agent ready\nrootlayer-agent x ready\r\r\n");
    // The UART: DLAB on, divisor 1, 8N1, FIFO, DTR/RTS/OUT2, interrupts;
    // then the boot's text, a loopback stretch, and the divisor latch again.
    let reg = |r: u8, v: u8| vec![r, v];
    let mut uart = vec![1];
    for (r, v) in [(3, 0x80), (0, 1), (1, 0), (3, 0x03), (2, 0xc7), (4, 0x0b), (1, 0x0f)] {
        uart.extend(reg(r, v));
    }
    for &b in boot.iter() {
        uart.extend([0x85, 0]);
        uart.extend(reg(0, b));
    }
    uart.extend(reg(4, 0x1b));
    uart.extend(reg(0, b'L'));
    uart.extend([0x80, 0]);
    uart.extend(reg(4, 0x0b));
    uart.extend(reg(3, 0x83));
    uart.extend(reg(0, b'D'));
    uart.extend(reg(3, 0x03));
    uart.extend(reg(0, b'\n'));
    vec![
        ("boot-ok", chunks(boot, 16)),
        ("job-failed", chunks(failed, 255)),
        ("oom-panic", chunks(panic, 7)),
        ("hostile-lines", chunks(&hostile, 200)),
        ("uart-linux-8250", uart),
    ]
}

/// tree_tar: a tree as flattening makes it (every kind, hardlinks, xattrs,
/// a long path, big owners) and a contents directory on disk.
fn tree_tar_seeds() -> Vec<(&'static str, Vec<u8>)> {
    let lv = |b: &[u8]| [vec![u8::try_from(b.len()).expect("short")], b.to_vec()].concat();
    // op, parent, name, mode, uid, gid, mtime, then the kind's data.
    let node = |op: u8, parent: u8, name: &str, mode: u16, owner: u32, extra: Vec<u8>| {
        [vec![op, parent], lv(name.as_bytes()), u16le(mode), u32le(owner), u32le(owner), u32le(1_700_000_000), extra]
            .concat()
    };
    let long = "n".repeat(120);
    let direct = [
        vec![0],
        node(0, 0, "etc", 0o755, 0, vec![]),
        node(1, 1, "passwd", 0o644, 0, lv(b"root:x:0:0::/root:/bin/sh\n")),
        node(1, 0, "setuid", 0o4755, 0, lv(b"\x7fELF")),
        [vec![7, 0], lv(b"x"), lv(b"test"), lv(b"value")].concat(),
        node(2, 1, "localtime", 0o777, 0, lv(b"/usr/share/zoneinfo/UTC")),
        [vec![6, 0], lv(b"hardlink"), vec![0]].concat(),
        node(3, 0, "null", 0o666, 0, [u32le(1), u32le(3)].concat()),
        node(4, 0, "vda", 0o660, 6, [u32le(254), u32le(0)].concat()),
        node(5, 0, "fifo", 0o600, 1000, vec![]),
        node(0, 1, &long, 0o700, 4_000_000, vec![]),
        node(1, 2, &long, 0o600, 65534, lv(&[0xab; 200])),
        node(2, 2, "link", 0o777, 0, lv(long.as_bytes())),
    ]
    .concat();
    // op, parent, name, mode, then the kind's data.
    let disk_node = |op: u8, parent: u8, name: &str, mode: u16, extra: Vec<u8>| {
        [vec![op, parent], lv(name.as_bytes()), u16le(mode), extra].concat()
    };
    let disk = [
        vec![1],
        disk_node(0, 0, "bin", 0o755, vec![]),
        disk_node(1, 1, "sh", 0o755, lv(b"#!/bin/sh\n")),
        disk_node(2, 0, "usr", 0o777, lv(b"\x01.")),
        disk_node(2, 1, "up", 0o777, lv(b"../bin/sh")),
        disk_node(6, 0, "sh-again", 0o644, vec![0]),
        disk_node(5, 0, "fifo", 0o644, vec![]),
        disk_node(0, 0, "private", 0o700, vec![]),
        disk_node(1, 2, "key", 0o400, lv(b"secret")),
    ]
    .concat();
    let mut keep = disk.clone();
    keep[0] = 3;
    vec![("flattened-tree", direct), ("contents-dir", disk), ("contents-dir-keep-dirlinks", keep)]
}

/// base_bounds: real layers (GNU tar's, our converter's) under roomy and
/// tight bounds, a decompression bomb, a long name and a PAX header over a
/// small cap, too many entries, too many layers.
fn base_bounds_seeds() -> Vec<(&'static str, Vec<u8>)> {
    let read = |name: &str| std::fs::read(seeds_dir().join("layer_unpack").join(name)).expect("layer seed");
    let gnu = read("gnu-whiteouts-hardlink-symlink.tar");
    let ours = read("rootlayer-converted-overlay-upper.tar");
    let head =
        |flags: u8, max_layers: u8, room: u8, meta: u8, entries: u8| vec![flags, max_layers, room, meta, entries];
    let len = |l: &[u8]| u16le(u16::try_from(l.len()).expect("small layer"));
    let tar_of = |entries: &[(String, usize)], pax: bool| {
        let mut b = tar::Builder::new(Vec::new());
        if pax {
            b.append_pax_extensions([("SCHILY.xattr.user.big", &[b'v'; 300][..])]).expect("pax");
        }
        for (name, size) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_size(*size as u64);
            h.set_mode(0o644);
            h.set_mtime(1);
            b.append_data(&mut h, name, std::io::Read::take(std::io::repeat(0), *size as u64)).expect("append");
        }
        b.into_inner().expect("tar")
    };
    let bomb = {
        let layer = tar_of(&[("zeros".to_string(), 1 << 20)], false);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        std::io::Write::write_all(&mut gz, &layer).expect("gzip");
        gz.finish().expect("gzip")
    };
    let long = tar_of(&[(format!("d/{}", "n".repeat(300)), 3)], true);
    let many = tar_of(&(0..20).map(|i| (format!("f{i}"), 1)).collect::<Vec<_>>(), false);
    vec![
        ("gnu-layer-roomy", [head(0, 0, 255, 255, 255), gnu.clone()].concat()),
        ("two-layers-gzip", [head(5, 1, 255, 255, 255), len(&gnu), gnu.clone(), ours.clone()].concat()),
        ("zstd-tight-room", [head(8, 0, 10, 255, 255), ours.clone()].concat()),
        ("gzip-bomb", [head(12, 0, 255, 255, 255), bomb].concat()),
        ("long-name-and-pax-over-a-small-cap", [head(0, 0, 255, 0, 255), long].concat()),
        ("too-many-entries", [head(0, 0, 255, 255, 4), many].concat()),
        (
            "too-many-layers",
            [
                head(3, 0, 255, 255, 255),
                len(&ours),
                ours.clone(),
                len(&ours),
                ours.clone(),
                len(&ours),
                ours.clone(),
                ours,
            ]
            .concat(),
        ),
    ]
}

fn job_seeds() -> Vec<(&'static str, Vec<u8>)> {
    let job = Job {
        protocol: crate::protocol::PROTOCOL_VERSION,
        mounts: vec![
            Mount {
                source: MountSource::VirtioFs { tag: "share0".into() },
                target: "/nix/store".into(),
                read_only: true,
            },
            Mount {
                source: MountSource::Disk {
                    device: "/dev/vda".into(),
                    fstype: "ext4".into(),
                    size: 1 << 30,
                    fresh: true,
                },
                target: "/run/rootlayer/scratch".into(),
                read_only: false,
            },
        ],
        task: Task::RunAsRoot(RunAsRoot {
            base: crate::protocol::BASE_MOUNT.into(),
            contents: Some("/run/rootlayer/contents".into()),
            script: "/run/rootlayer/job/script".into(),
            extra_commands: Some("/run/rootlayer/job/extra-commands".into()),
            store_paths: vec!["/nix/store".into()],
            path: "/bin:/usr/bin:/sbin:/usr/sbin".into(),
            merged_listing: None,
        }),
        entropy: "5a".repeat(crate::protocol::ENTROPY_BYTES),
        host_time_ns: 1_764_633_600_000_000_000,
        files: vec![
            crate::protocol::JobFile { path: "/run/rootlayer/job/script".into(), offset: 0, len: 120 },
            crate::protocol::JobFile { path: "/run/rootlayer/job/extra-commands".into(), offset: 120, len: 40 },
        ],
    };
    let ok = JobResult {
        protocol: crate::protocol::PROTOCOL_VERSION,
        oom_kills: 0,
        cpus_online: 1,
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
    for (name, bytes) in exchange_seeds() {
        out.push(("exchange_fs", name.to_string(), bytes));
    }
    out.push(("snapshot_file", "written-by-the-snapshot-writer".to_string(), snapshot_seed()));
    for (name, bytes) in base_bounds_seeds() {
        out.push(("base_bounds", name.to_string(), bytes));
    }
    for (name, bytes) in tree_tar_seeds() {
        out.push(("tree_tar", name.to_string(), bytes));
    }
    for (name, bytes) in console_seeds() {
        out.push(("console", name.to_string(), bytes));
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
