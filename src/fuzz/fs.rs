//! `fs`: the virtio-fs front of a read-only share (a `--store`): FUSE
//! requests through the chain checks, fuse-backend-rs's server, the
//! read-only wrapper and the host-user wrapper, over the passthrough file
//! system of a small directory tree, as `Fs::new` builds it.
//!
//! Input: a sequence of requests, each `len: u16` (LE, the bytes of the
//! FUSE message that follow), `reply: u16` (LE, the device-writable buffer,
//! none if 0), `shape: u8` (bits 0-6: split the message into two readable
//! descriptors after `shape & 0x7f` bytes, if inside it; bit 7: set the
//! header's `len` to the message length, so mutations keep the framing), and
//! the message (`fuse_in_header` + arguments, as the kernel sends it). Each
//! is served as one descriptor chain on a fresh share per input.
//!
//! Invariants: no panic; the used length fits the reply buffer; neither the
//! share nor its neighbours outside it change (content, modes, owners,
//! times, xattrs, links).

use super::blk::{queue, DESC_TABLE};
use super::snapshot::{snapshot, Snapshot};
use super::{take, take_u16, take_u8};
use crate::devices::virtio::fs::Fs;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::split::Descriptor;
use virtio_queue::desc::RawDescriptor;
use virtio_queue::QueueT;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

pub(super) const MEM_SIZE: usize = 0x8_0000;
const READ_A: u64 = 0x1_0000;
const READ_B: u64 = 0x3_0000;
pub(super) const WRITE: u64 = 0x5_0000;
const QUEUE_SIZE: u16 = 8;

struct Tree {
    _top: tempfile::TempDir,
    top: PathBuf,
    share: PathBuf,
    before: Snapshot,
}

/// The share (a file, a subdirectory, symlinks out of it, a FIFO, an
/// unreadable directory, xattrs) and, beside it, what must stay out of reach.
fn tree() -> &'static Tree {
    static TREE: OnceLock<Tree> = OnceLock::new();
    TREE.get_or_init(|| {
        let top_dir = tempfile::tempdir().expect("temporary directory");
        let top = top_dir.path().to_path_buf();
        let share = top.join("share");
        let mk = |p: &Path| std::fs::create_dir_all(p).expect("mkdir");
        mk(&share.join("sub/deeper"));
        mk(&share.join("closed"));
        mk(&top.join("outside"));
        std::fs::write(share.join("hello.txt"), b"hello from the store\n").expect("write");
        std::fs::write(share.join("sub/inner.txt"), vec![b'x'; 5000]).expect("write");
        std::fs::write(share.join("closed/c"), b"c").expect("write");
        std::fs::write(top.join("outside/secret.txt"), b"secret").expect("write");
        std::os::unix::fs::symlink("../outside/secret.txt", share.join("up")).expect("symlink");
        std::os::unix::fs::symlink(top.join("outside"), share.join("abs")).expect("symlink");
        std::fs::hard_link(share.join("hello.txt"), share.join("sub/hardlink")).expect("link");
        rustix::fs::mknodat(rustix::fs::CWD, share.join("fifo"), rustix::fs::FileType::Fifo, 0o644.into(), 0)
            .expect("mkfifo");
        let _ = rustix::fs::setxattr(share.join("hello.txt"), "user.test", b"v", rustix::fs::XattrFlags::empty());
        std::fs::set_permissions(share.join("closed"), std::os::unix::fs::PermissionsExt::from_mode(0o700))
            .expect("chmod");
        let before = snapshot(&top);
        Tree { _top: top_dir, top, share, before }
    })
}

pub fn fs(mut data: &[u8]) {
    let t = tree();
    let fs = Fs::new("fuzz", &t.share, true).expect("share");
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).expect("guest memory");
    let mut requests = 0;
    while let Some((msg, split, reply)) = next_message(&mut data) {
        let used = serve(&fs, &mem, &msg, split, u32::from(reply));
        assert!(used <= u32::from(reply), "used length {used} exceeds the {reply}-byte reply buffer");
        requests += 1;
        if requests == 64 {
            break;
        }
    }
    drop(fs);
    let after = snapshot(&t.top);
    if after != t.before {
        let changed: Vec<_> = after.iter().filter(|(k, v)| t.before.get(*k) != Some(v)).collect();
        let gone: Vec<_> = t.before.keys().filter(|k| !after.contains_key(*k)).collect();
        panic!("the read-only share or its surroundings changed: {changed:?}, removed {gone:?}");
    }
}

/// The next FUSE message of a fuzz input: its length, the reply buffer's
/// size and the chain's shape (bit 7: set the message's length field to its
/// real length; bits 0-6: where the readable part splits), then the bytes.
/// Returns (message, split, reply size).
pub(super) fn next_message(data: &mut &[u8]) -> Option<(Vec<u8>, usize, u16)> {
    let (len, reply, shape) = (take_u16(data)?, take_u16(data)?, take_u8(data)?);
    let mut msg = take(data, usize::from(len)).to_vec();
    if shape & 0x80 != 0 && msg.len() >= 4 {
        let n = u32::try_from(msg.len()).expect("u16 length");
        msg[..4].copy_from_slice(&n.to_le_bytes());
    }
    Some((msg, usize::from(shape & 0x7f), reply))
}

/// Lay `msg` out as one chain (readable part split at `split`, then the
/// writable reply buffer) and serve it.
pub(super) fn serve(fs: &Fs, mem: &GuestMemoryMmap, msg: &[u8], split: usize, reply: u32) -> u32 {
    let (a, b) = if split > 0 && split < msg.len() { msg.split_at(split) } else { (msg, &[][..]) };
    mem.write_slice(a, GuestAddress(READ_A)).expect("message");
    mem.write_slice(b, GuestAddress(READ_B)).expect("message");
    let len = |s: &[u8]| u32::try_from(s.len()).expect("u16 length");
    let mut descs = vec![(READ_A, len(a), 0)];
    if !b.is_empty() {
        descs.push((READ_B, len(b), 0));
    }
    if reply > 0 {
        mem.write_slice(&vec![0u8; reply as usize], GuestAddress(WRITE)).expect("reply buffer");
        descs.push((WRITE, reply, VRING_DESC_F_WRITE));
    }
    let last = descs.len() - 1;
    for (i, &(addr, len, flags)) in descs.iter().enumerate() {
        let (flags, next) = if i == last { (flags, 0) } else { (flags | VRING_DESC_F_NEXT, i + 1) };
        let flags = u16::try_from(flags).expect("descriptor flags");
        let next = u16::try_from(next).expect("descriptor index");
        let desc = RawDescriptor::from(Descriptor::new(addr, len, flags, next));
        mem.write_obj(desc, GuestAddress(u64::from(DESC_TABLE) + 16 * i as u64)).expect("descriptor");
    }
    // Available ring: one entry, head 0.
    mem.write_obj([0u16, 1, 0], GuestAddress(u64::from(super::blk::AVAIL_RING))).expect("available ring");
    let mut q = queue(QUEUE_SIZE, mem).expect("queue");
    let chain = q.pop_descriptor_chain(mem).expect("one chain");
    fs.serve_chain(mem, chain).expect("a server")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The harness reaches the file system: INIT and LOOKUP succeed, a
    /// mutation gets EROFS.
    #[test]
    fn requests_reach_the_read_only_passthrough() {
        let fs = Fs::new("fuzz", &tree().share, true).unwrap();
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap();
        let msg = |opcode: u32, nodeid: u64, body: &[u8]| {
            let len = u32::try_from(40 + body.len()).unwrap();
            let h: Vec<u8> =
                [&len.to_le_bytes()[..], &opcode.to_le_bytes(), &7u64.to_le_bytes(), &nodeid.to_le_bytes()].concat();
            [h, vec![0; 16], body.to_vec()].concat()
        };
        let errno = |mem: &GuestMemoryMmap| -> i32 { -mem.read_obj::<i32>(GuestAddress(WRITE + 4)).unwrap() };
        let init = [7u32.to_le_bytes(), 31u32.to_le_bytes(), 0u32.to_le_bytes(), 0u32.to_le_bytes()].concat();
        assert!(serve(&fs, &mem, &msg(26, 0, &init), 0, 4096) > 16);
        assert_eq!(errno(&mem), 0, "INIT");
        assert!(serve(&fs, &mem, &msg(1, 1, b"hello.txt\0"), 0, 4096) > 16);
        assert_eq!(errno(&mem), 0, "LOOKUP");
        assert_eq!(serve(&fs, &mem, &msg(9, 1, b"\xed\x01\0\0\x12\0\0\0new\0"), 41, 4096), 16);
        assert_eq!(errno(&mem), libc::EROFS, "MKDIR");
    }
}
