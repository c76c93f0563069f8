//! The device driven like a guest driver would: queues laid out by
//! virtio-queue's `MockSplitQueue` in real guest memory, FUSE requests built
//! byte by byte, the real passthrough file system on temporary directories.

use super::policy::resting_umask;
use super::*;
use crate::devices::virtio::{ActivateContext, Interrupt, VirtioDevice, TYPE_FS, VIRTIO_F_VERSION_1};
use fuse_backend_rs::abi::fuse_abi::{
    AccessIn, Attr, CreateIn, EntryOut, FallocateIn, FlushIn, ForgetIn, GetattrIn, InHeader, InitIn, LinkIn, MkdirIn,
    MknodIn, Opcode, OpenIn, OpenOut, OutHeader, ReadIn, ReleaseIn, Rename2In, RenameIn, SetattrIn, SetxattrIn,
    WriteIn,
};
use std::collections::BTreeMap;
use std::mem::size_of;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::{Duration, Instant};
use virtio_bindings::bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::Queue;
use vm_memory::{Address, ByteValued, Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

const MEM_SIZE: usize = 16 << 20;
const QUEUE_ADDRS: [u64; 2] = [0x0, 0x1_0000];
const BUFFERS: u64 = 0x10_0000;
const ROOT: u64 = 1;
const FAR_AWAY: u64 = 0xffff_0000_0000;

/// A guest driver for one activated [`Fs`].
struct Driver {
    mem: GuestMemoryMmap,
    irq: Interrupt,
    kicks: Vec<EventFd>,
    /// Descriptor table, available ring and used ring of each queue, as
    /// `MockSplitQueue` laid them out.
    rings: [[GuestAddress; 3]; 2],
    next_desc: [u16; 2],
    used_seen: [u16; 2],
    next_buf: u64,
    next_unique: u64,
    _fs: Fs,
}

/// One descriptor of a hand-built chain.
enum Buf<'a> {
    /// Device-readable, holding these bytes.
    In(&'a [u8]),
    /// Device-writable, this long.
    Out(u32),
    /// Any descriptor, placed by hand.
    Raw { addr: u64, len: u32, write: bool },
}

/// What came back on the used ring.
#[derive(Debug)]
struct Used {
    len: u32,
    /// The writable buffers, concatenated and cut to `len`.
    data: Vec<u8>,
}

impl Used {
    fn header(&self) -> OutHeader {
        assert!(self.data.len() >= 16, "no reply in {self:?}");
        *OutHeader::from_slice(&self.data[..16]).unwrap()
    }
    fn errno(&self) -> i32 {
        -self.header().error
    }
    fn body<T: ByteValued + Default>(&self) -> T {
        assert_eq!(self.errno(), 0, "request failed");
        read_obj(&self.data[16..])
    }
}

impl Driver {
    fn new(dir: &Path, read_only: bool) -> Self {
        let mut fs = Fs::new("share", dir, read_only).unwrap();
        fs.start(&crate::devices::virtio::StartContext::unwatched(&crate::seccomp::Policy::disabled())).unwrap();
        Self::activate(fs)
    }

    fn activate(mut fs: Fs) -> Self {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap();
        let mut queues: Vec<Queue> = Vec::new();
        let mut rings = [[GuestAddress(0); 3]; 2];
        for (i, &a) in QUEUE_ADDRS.iter().enumerate() {
            let mock = MockSplitQueue::create(&mem, GuestAddress(a), QUEUE_SIZE);
            queues.push(mock.create_queue().unwrap());
            rings[i] = [mock.desc_table_addr(), mock.avail_addr(), mock.used_addr()];
        }
        let evts: Vec<EventFd> = (0..2).map(|_| EventFd::new(libc::EFD_NONBLOCK).unwrap()).collect();
        let kicks = evts.iter().map(|e| e.try_clone().unwrap()).collect();
        let irq = Interrupt::new(EventFd::new(libc::EFD_NONBLOCK).unwrap());
        fs.activate(ActivateContext {
            mem: mem.clone(),
            interrupt: irq.clone(),
            queues,
            queue_evts: evts,
            acked_features: VIRTIO_F_VERSION_1,
        })
        .unwrap();
        Self {
            mem,
            irq,
            kicks,
            rings,
            next_desc: [0; 2],
            used_seen: [0; 2],
            next_buf: BUFFERS,
            next_unique: 1,
            _fs: fs,
        }
    }

    fn alloc(&mut self, len: u32) -> u64 {
        if self.next_buf + u64::from(len) > MEM_SIZE as u64 {
            self.next_buf = BUFFERS;
        }
        let a = self.next_buf;
        self.next_buf = (a + u64::from(len) + 15) & !15;
        a
    }

    /// Put one chain on `queue`, notify, and wait for its used entry.
    fn submit(&mut self, queue: usize, bufs: &[Buf]) -> Used {
        let n = u16::try_from(bufs.len()).unwrap();
        if self.next_desc[queue] + n > QUEUE_SIZE {
            self.next_desc[queue] = 0;
        }
        let first = self.next_desc[queue];
        let mut descs = Vec::new();
        let mut outs = Vec::new();
        for (i, b) in bufs.iter().enumerate() {
            let (addr, len, write) = match b {
                Buf::In(bytes) => {
                    let len = u32::try_from(bytes.len()).unwrap();
                    let a = self.alloc(len);
                    self.mem.write_slice(bytes, GuestAddress(a)).unwrap();
                    (a, len, false)
                }
                Buf::Out(len) => {
                    let a = self.alloc(*len);
                    let zeros = vec![0u8; *len as usize];
                    self.mem.write_slice(&zeros, GuestAddress(a)).unwrap();
                    outs.push((a, *len));
                    (a, *len, true)
                }
                Buf::Raw { addr, len, write } => (*addr, *len, *write),
            };
            let idx = first + u16::try_from(i).unwrap();
            let last = i + 1 == bufs.len();
            let mut flags = if write { VRING_DESC_F_WRITE } else { 0 };
            if !last {
                flags |= VRING_DESC_F_NEXT;
            }
            descs.push(RawDescriptor::from(SplitDescriptor::new(
                addr,
                len,
                u16::try_from(flags).unwrap(),
                if last { 0 } else { idx + 1 },
            )));
        }
        self.next_desc[queue] = first + n;
        let [table, avail, used_addr] = self.rings[queue];
        for (i, desc) in (first..).zip(&descs) {
            let at = table.unchecked_add(16 * u64::from(i));
            self.mem.write_obj(*desc, at).unwrap();
        }
        let avail_idx: u16 = self.mem.read_obj(avail.unchecked_add(2)).unwrap();
        let slot = avail.unchecked_add(4 + 2 * u64::from(avail_idx % QUEUE_SIZE));
        self.mem.write_obj(first, slot).unwrap();
        self.mem.write_obj(avail_idx.wrapping_add(1), avail.unchecked_add(2)).unwrap();
        self.kicks[queue].write(1).unwrap();

        let deadline = Instant::now() + Duration::from_secs(10);
        let seen = self.used_seen[queue];
        loop {
            let idx: u16 = self.mem.read_obj(used_addr.unchecked_add(2)).unwrap();
            if idx != seen {
                assert_eq!(idx, seen.wrapping_add(1), "one used entry per chain");
                break;
            }
            assert!(Instant::now() < deadline, "device did not answer");
            std::thread::sleep(Duration::from_millis(1));
        }
        self.used_seen[queue] = seen.wrapping_add(1);
        let elem = used_addr.unchecked_add(4 + 8 * u64::from(seen % QUEUE_SIZE));
        let id: u32 = self.mem.read_obj(elem).unwrap();
        let len: u32 = self.mem.read_obj(elem.unchecked_add(4)).unwrap();
        assert_eq!(id, u32::from(first), "used entry names the chain head");
        assert!(self.irq.status() & crate::devices::virtio::INT_USED_RING != 0);

        let mut data = Vec::new();
        for (a, l) in outs {
            let mut v = vec![0u8; l as usize];
            self.mem.read_slice(&mut v, GuestAddress(a)).unwrap();
            data.extend_from_slice(&v);
        }
        data.truncate(len as usize);
        Used { len, data }
    }

    /// A FUSE request from guest uid/gid 0 on the request queue, with a
    /// 64 KiB reply buffer.
    fn call(&mut self, opcode: u32, nodeid: u64, args: &[&[u8]]) -> Used {
        self.call_as(opcode, nodeid, 0, args)
    }

    fn call_as(&mut self, opcode: u32, nodeid: u64, uid: u32, args: &[&[u8]]) -> Used {
        let msg = self.message(opcode, nodeid, uid, args);
        let unique = self.next_unique - 1;
        let used = self.submit(1, &[Buf::In(&msg), Buf::Out(65536)]);
        assert_eq!(used.header().unique, unique);
        assert_eq!(used.header().len, used.len, "reply length is the used length");
        used
    }

    fn message(&mut self, opcode: u32, nodeid: u64, uid: u32, args: &[&[u8]]) -> Vec<u8> {
        let body: Vec<u8> = args.concat();
        let unique = self.next_unique;
        self.next_unique += 1;
        let h = InHeader {
            len: u32::try_from(size_of::<InHeader>() + body.len()).unwrap(),
            opcode,
            unique,
            nodeid,
            uid,
            gid: uid,
            pid: 1,
            padding: 0,
        };
        [h.as_slice(), &body].concat()
    }

    fn init(&mut self) {
        let init = InitIn { major: 7, minor: 31, max_readahead: 0x2_0000, flags: 0 };
        let r = self.call(Opcode::Init as u32, 0, &[init.as_slice()]);
        assert_eq!(r.errno(), 0, "FUSE_INIT");
    }

    fn lookup(&mut self, parent: u64, name: &str) -> Result<EntryOut, i32> {
        let r = self.call(Opcode::Lookup as u32, parent, &[&cstr(name)]);
        match r.errno() {
            0 => Ok(r.body()),
            e => Err(e),
        }
    }

    fn open(&mut self, nodeid: u64, flags: i32) -> Result<u64, i32> {
        let o = OpenIn { flags: u32::try_from(flags).unwrap(), fuse_flags: 0 };
        let r = self.call(Opcode::Open as u32, nodeid, &[o.as_slice()]);
        match r.errno() {
            0 => Ok(r.body::<OpenOut>().fh),
            e => Err(e),
        }
    }

    fn read(&mut self, nodeid: u64, fh: u64, size: u32) -> Vec<u8> {
        let rd = ReadIn { fh, size, ..Default::default() };
        let r = self.call(Opcode::Read as u32, nodeid, &[rd.as_slice()]);
        assert_eq!(r.errno(), 0, "FUSE_READ");
        r.data[16..].to_vec()
    }
}

/// A reply structure from the start of `bytes` (copied: guest buffers
/// carry no alignment).
fn read_obj<T: ByteValued + Default>(bytes: &[u8]) -> T {
    let mut v = T::default();
    v.as_mut_slice().copy_from_slice(&bytes[..size_of::<T>()]);
    v
}

fn cstr(s: &str) -> Vec<u8> {
    [s.as_bytes(), b"\0"].concat()
}

/// Every path under `dir` with its type, mode, owner and content.
fn snapshot(dir: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            let m = std::fs::symlink_metadata(&p).unwrap();
            let what = if m.file_type().is_symlink() {
                format!("link {:?}", std::fs::read_link(&p).unwrap())
            } else if m.is_dir() {
                stack.push(p.clone());
                "dir".to_string()
            } else {
                format!("file {:?}", std::fs::read(&p).unwrap())
            };
            let key = p.strip_prefix(dir).unwrap().display().to_string();
            out.insert(key, format!("{what} {:o} {}:{} {}", m.mode(), m.uid(), m.gid(), m.mtime()));
        }
    }
    out
}

/// A store-like tree: a file, a subdirectory with a file, and a secret
/// outside the share next to it, reachable only by escaping.
fn store_tree() -> (tempfile::TempDir, std::path::PathBuf) {
    let top = tempfile::tempdir().unwrap();
    let share = top.path().join("share");
    std::fs::create_dir_all(share.join("sub")).unwrap();
    std::fs::write(share.join("hello.txt"), b"hello from the store\n").unwrap();
    std::fs::write(share.join("sub/inner.txt"), b"inner").unwrap();
    std::fs::create_dir(top.path().join("outside")).unwrap();
    std::fs::write(top.path().join("outside/secret.txt"), b"secret").unwrap();
    std::fs::write(top.path().join("secret.txt"), b"secret").unwrap();
    (top, share)
}

#[test]
fn config_space_carries_the_tag_and_one_request_queue() {
    let dir = tempfile::tempdir().unwrap();
    let fs = Fs::new("nix-store", dir.path(), true).unwrap();
    assert_eq!(fs.device_type(), TYPE_FS);
    assert_eq!(fs.features(), VIRTIO_F_VERSION_1);
    assert_eq!(fs.queue_max_sizes(), &[256, 256]);
    let mut cfg = [0xaau8; 44];
    fs.read_config(0, &mut cfg);
    assert_eq!(&cfg[..9], b"nix-store");
    assert!(cfg[9..36].iter().all(|&b| b == 0), "tag is NUL padded");
    assert_eq!(&cfg[36..40], &1u32.to_le_bytes());
    assert_eq!(&cfg[40..], &[0xaa; 4], "nothing beyond the config space");
    let mut n = [0u8; 4];
    fs.read_config(36, &mut n);
    assert_eq!(u32::from_le_bytes(n), 1);
}

#[test]
fn tags_must_fit_the_config_space() {
    let dir = tempfile::tempdir().unwrap();
    for bad in ["", "a\0b", &"x".repeat(37)] {
        assert!(matches!(Fs::new(bad, dir.path(), true), Err(FsError::Tag(_))), "{bad:?}");
    }
    let long = "y".repeat(36);
    let fs = Fs::new(&long, dir.path(), false).unwrap();
    let mut cfg = [0u8; 40];
    fs.read_config(0, &mut cfg);
    assert_eq!(&cfg[..36], long.as_bytes());
}

#[test]
fn shared_dir_must_be_a_readable_directory() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("f");
    std::fs::write(&file, b"").unwrap();
    assert!(matches!(Fs::new("t", &file, true), Err(FsError::NotADirectory(_))));
    assert!(matches!(Fs::new("t", &dir.path().join("missing"), true), Err(FsError::SharedDir { .. })));
}

#[test]
fn read_only_share_serves_lookup_open_read_and_readdir() {
    let (_top, share) = store_tree();
    let mut d = Driver::new(&share, true);
    d.init();
    let e = d.lookup(ROOT, "hello.txt").unwrap();
    assert_eq!(e.attr.size, 21);
    assert_eq!(e.attr.mode & libc::S_IFMT, libc::S_IFREG);
    // A file needs no OPEN (FUSE's ENOSYS: the kernel stops asking and
    // sends no RELEASE), and reads need no handle.
    assert_eq!(d.open(e.nodeid, libc::O_RDONLY), Err(libc::ENOSYS));
    assert_eq!(d.read(e.nodeid, 0, 4096), b"hello from the store\n");
    // Offsets are honoured.
    let rd = ReadIn { fh: 0, offset: 6, size: 4, ..Default::default() };
    let r = d.call(Opcode::Read as u32, e.nodeid, &[rd.as_slice()]);
    assert_eq!(&r.data[16..], b"from");
    // Nor a FLUSH: the kernel takes ENOSYS as done and stops sending it.
    let fl = FlushIn { fh: 0, ..Default::default() };
    assert_eq!(d.call(Opcode::Flush as u32, e.nodeid, &[fl.as_slice()]).errno(), libc::ENOSYS);
    let rel = ReleaseIn { fh: 0, ..Default::default() };
    assert_eq!(d.call(Opcode::Release as u32, e.nodeid, &[rel.as_slice()]).errno(), 0);

    let sub = d.lookup(ROOT, "sub").unwrap();
    assert_eq!(sub.attr.mode & libc::S_IFMT, libc::S_IFDIR);
    let inner = d.lookup(sub.nodeid, "inner.txt").unwrap();
    assert_eq!(d.read(inner.nodeid, 0, 100), b"inner");

    // readdir of the root lists the entries.
    let o = OpenIn { flags: u32::try_from(libc::O_RDONLY | libc::O_DIRECTORY).unwrap(), fuse_flags: 0 };
    let r = d.call(Opcode::Opendir as u32, ROOT, &[o.as_slice()]);
    let dfh = r.body::<OpenOut>().fh;
    let rd = ReadIn { fh: dfh, size: 4096, ..Default::default() };
    let r = d.call(Opcode::Readdir as u32, ROOT, &[rd.as_slice()]);
    assert_eq!(r.errno(), 0);
    let listing = String::from_utf8_lossy(&r.data[16..]).to_string();
    assert!(listing.contains("hello.txt") && listing.contains("sub"), "{listing:?}");

    // statfs says read-only; getattr works.
    let r = d.call(Opcode::Statfs as u32, ROOT, &[]);
    assert_eq!(r.errno(), 0);
    let g = GetattrIn::default();
    let r = d.call(Opcode::Getattr as u32, e.nodeid, &[g.as_slice()]);
    assert_eq!(r.errno(), 0);
    let attr: Attr = read_obj(&r.data[32..]);
    assert_eq!(attr.size, 21);
}

#[test]
fn read_only_share_refuses_every_mutation_with_erofs() {
    let (top, share) = store_tree();
    let before = snapshot(top.path());
    let mut d = Driver::new(&share, true);
    d.init();
    let file = d.lookup(ROOT, "hello.txt").unwrap().nodeid;
    let sub = d.lookup(ROOT, "sub").unwrap().nodeid;
    let fh = 0;

    let name = cstr("new");
    let create = CreateIn {
        flags: u32::try_from(libc::O_WRONLY | libc::O_CREAT).unwrap(),
        mode: 0o644 | libc::S_IFREG,
        umask: 0o022,
        fuse_flags: 0,
    };
    let mkdir = MkdirIn { mode: 0o755, umask: 0 };
    let mknod = MknodIn { mode: libc::S_IFIFO | 0o644, ..Default::default() };
    let rename = RenameIn { newdir: ROOT };
    let rename2 = Rename2In { newdir: ROOT, flags: 0, padding: 0 };
    let link = LinkIn { oldnodeid: file };
    let chmod = SetattrIn {
        valid: 1, // FATTR_MODE
        mode: 0o777,
        ..Default::default()
    };
    let truncate = SetattrIn {
        valid: 1 << 3, // FATTR_SIZE
        size: 0,
        ..Default::default()
    };
    let write = WriteIn { fh, size: 4, ..Default::default() };
    let fallocate = FallocateIn { fh, length: 4096, ..Default::default() };
    let value = b"v";
    let setxattr = SetxattrIn { size: 1, flags: 0 };
    let access_w = AccessIn { mask: u32::try_from(libc::W_OK).unwrap(), padding: 0 };
    let rename_args: Vec<u8> = [cstr("hello.txt"), cstr("moved")].concat();
    let symlink_args: Vec<u8> = [cstr("link"), cstr("/etc/passwd")].concat();
    let cases: Vec<(&str, u32, u64, Vec<Vec<u8>>)> = vec![
        ("create", Opcode::Create as u32, ROOT, vec![create.as_slice().to_vec(), name.clone()]),
        ("mkdir", Opcode::Mkdir as u32, ROOT, vec![mkdir.as_slice().to_vec(), name.clone()]),
        ("mknod", Opcode::Mknod as u32, ROOT, vec![mknod.as_slice().to_vec(), name.clone()]),
        ("symlink", Opcode::Symlink as u32, ROOT, vec![symlink_args]),
        ("link", Opcode::Link as u32, sub, vec![link.as_slice().to_vec(), name.clone()]),
        ("unlink", Opcode::Unlink as u32, ROOT, vec![cstr("hello.txt")]),
        ("rmdir", Opcode::Rmdir as u32, ROOT, vec![cstr("sub")]),
        ("rename", Opcode::Rename as u32, ROOT, vec![rename.as_slice().to_vec(), rename_args.clone()]),
        ("rename2", Opcode::Rename2 as u32, ROOT, vec![rename2.as_slice().to_vec(), rename_args]),
        ("chmod", Opcode::Setattr as u32, file, vec![chmod.as_slice().to_vec()]),
        ("truncate", Opcode::Setattr as u32, file, vec![truncate.as_slice().to_vec()]),
        ("write", Opcode::Write as u32, file, vec![write.as_slice().to_vec(), b"evil".to_vec()]),
        ("fallocate", Opcode::Fallocate as u32, file, vec![fallocate.as_slice().to_vec()]),
        ("setxattr", Opcode::Setxattr as u32, file, vec![setxattr.as_slice().to_vec(), cstr("user.x"), value.to_vec()]),
        ("removexattr", Opcode::Removexattr as u32, file, vec![cstr("user.x")]),
        ("access W_OK", Opcode::Access as u32, file, vec![access_w.as_slice().to_vec()]),
    ];
    for (what, opcode, node, args) in cases {
        let args: Vec<&[u8]> = args.iter().map(Vec::as_slice).collect();
        assert_eq!(d.call(opcode, node, &args).errno(), libc::EROFS, "{what}");
    }
    for flags in [libc::O_WRONLY, libc::O_RDWR, libc::O_RDONLY | libc::O_TRUNC, libc::O_RDONLY | libc::O_APPEND] {
        assert_eq!(d.open(file, flags), Err(libc::EROFS), "open {flags:#o}");
    }
    // Reading is still fine, and nothing changed on the host.
    assert_eq!(d.read(file, fh, 100), b"hello from the store\n");
    let access_r = AccessIn { mask: u32::try_from(libc::R_OK).unwrap(), padding: 0 };
    assert_eq!(d.call(Opcode::Access as u32, file, &[access_r.as_slice()]).errno(), 0);
    assert_eq!(snapshot(top.path()), before);
}

#[test]
fn unknown_and_unsupported_opcodes_get_enosys() {
    let (_top, share) = store_tree();
    let mut d = Driver::new(&share, true);
    d.init();
    let file = d.lookup(ROOT, "hello.txt").unwrap().nodeid;
    for opcode in [
        9999,
        Opcode::CopyFileRange as u32,
        Opcode::Ioctl as u32,
        Opcode::Getlk as u32,
        Opcode::Setlk as u32,
        Opcode::Bmap as u32,
    ] {
        assert_eq!(d.call(opcode, file, &[&[0u8; 64]]).errno(), libc::ENOSYS, "opcode {opcode}");
    }
    // DAX mappings are refused by the server itself: there is no window.
    let r = d.call(Opcode::SetupMapping as u32, file, &[&[0u8; 40]]);
    assert_ne!(r.errno(), 0);
    // The device is still serving.
    assert!(d.lookup(ROOT, "hello.txt").is_ok());
}

#[test]
fn header_length_disagreeing_with_the_buffers_gets_einval() {
    let (_top, share) = store_tree();
    let mut d = Driver::new(&share, true);
    d.init();
    for delta in [-1i64, 1, 4096, i64::from(u32::MAX)] {
        let mut msg = d.message(Opcode::Lookup as u32, ROOT, 0, &[&cstr("hello.txt")]);
        let unique = d.next_unique - 1;
        let len = i64::try_from(msg.len()).unwrap() + delta;
        let len = u32::try_from(len.clamp(0, i64::from(u32::MAX))).unwrap();
        msg[..4].copy_from_slice(&len.to_le_bytes());
        let r = d.submit(1, &[Buf::In(&msg), Buf::Out(4096)]);
        assert_eq!(r.len, 16, "len {len}: a bare error reply");
        assert_eq!(r.errno(), libc::EINVAL);
        assert_eq!(r.header().unique, unique);
    }
    // Split across descriptors, the header is still read correctly.
    let msg = d.message(Opcode::Lookup as u32, ROOT, 0, &[&cstr("hello.txt")]);
    let r = d.submit(1, &[Buf::In(&msg[..7]), Buf::In(&msg[7..]), Buf::Out(4096)]);
    assert_eq!(r.errno(), 0);
    assert!(d.lookup(ROOT, "hello.txt").is_ok());
}

#[test]
fn malformed_chains_are_returned_unanswered_and_the_device_keeps_going() {
    let (_top, share) = store_tree();
    let mut d = Driver::new(&share, true);
    d.init();
    let msg = d.message(Opcode::Lookup as u32, ROOT, 0, &[&cstr("hello.txt")]);
    let cases: Vec<(&str, Vec<Buf>)> = vec![
        ("readable outside memory", vec![Buf::Raw { addr: FAR_AWAY, len: 64, write: false }, Buf::Out(4096)]),
        (
            "readable straddling the end of memory",
            vec![Buf::Raw { addr: MEM_SIZE as u64 - 8, len: 64, write: false }, Buf::Out(4096)],
        ),
        ("writable outside memory", vec![Buf::In(&msg), Buf::Raw { addr: FAR_AWAY, len: 4096, write: true }]),
        ("readable after writable", vec![Buf::Out(4096), Buf::In(&msg)]),
        ("shorter than a header", vec![Buf::In(&msg[..20]), Buf::Out(4096)]),
        ("no room for a reply", vec![Buf::In(&msg), Buf::Out(8)]),
        ("no reply buffer", vec![Buf::In(&msg)]),
    ];
    for (what, bufs) in cases {
        let r = d.submit(1, &bufs);
        assert_eq!(r.len, 0, "{what}");
    }
    assert!(d.lookup(ROOT, "hello.txt").is_ok());
}

#[test]
fn a_reply_buffer_too_small_for_the_reply_does_not_stop_the_device() {
    let (_top, share) = store_tree();
    let mut d = Driver::new(&share, true);
    d.init();
    let file = d.lookup(ROOT, "hello.txt").unwrap().nodeid;
    let g = GetattrIn::default();
    let msg = d.message(Opcode::Getattr as u32, file, 0, &[g.as_slice()]);
    let r = d.submit(1, &[Buf::In(&msg), Buf::Out(24)]);
    assert!(r.len <= 24);
    let msg = d.message(Opcode::Lookup as u32, ROOT, 0, &[b"no-nul"]);
    let r = d.submit(1, &[Buf::In(&msg), Buf::Out(4096)]);
    assert_eq!(r.errno(), libc::EINVAL, "a name without NUL");
    assert!(d.lookup(ROOT, "hello.txt").is_ok());
}

#[test]
fn forget_on_the_hiprio_queue_gets_an_empty_used_entry() {
    let (_top, share) = store_tree();
    let mut d = Driver::new(&share, true);
    d.init();
    let file = d.lookup(ROOT, "hello.txt").unwrap().nodeid;
    let f = ForgetIn { nlookup: 1 };
    let msg = d.message(Opcode::Forget as u32, file, 0, &[f.as_slice()]);
    let r = d.submit(0, &[Buf::In(&msg)]);
    assert_eq!(r.len, 0);
    // The inode is gone once its lookup count reached zero.
    let g = GetattrIn::default();
    assert_eq!(d.call(Opcode::Getattr as u32, file, &[g.as_slice()]).errno(), libc::EBADF);
}

#[test]
fn dotdot_never_leaves_the_share() {
    let (_top, share) = store_tree();
    let mut d = Driver::new(&share, true);
    d.init();
    let root_ino = std::fs::metadata(&share).unwrap().ino();
    // ".." of the root is the root.
    let up = d.lookup(ROOT, "..").unwrap();
    assert_eq!(up.nodeid, ROOT);
    assert_eq!(up.attr.ino, root_ino);
    assert_eq!(d.lookup(up.nodeid, "secret.txt").map(|_| ()), Err(libc::ENOENT));
    assert_eq!(d.lookup(up.nodeid, "outside").map(|_| ()), Err(libc::ENOENT));
    // Paths are not names.
    for name in ["../secret.txt", "sub/../../secret.txt", "/etc"] {
        assert_eq!(d.lookup(ROOT, name).map(|_| ()), Err(libc::EINVAL), "{name}");
    }
    // ".." of a subdirectory is the root again, and no further.
    let sub = d.lookup(ROOT, "sub").unwrap();
    let back = d.lookup(sub.nodeid, "..").unwrap();
    assert_eq!(back.nodeid, ROOT);
    let again = d.lookup(back.nodeid, "..").unwrap();
    assert_eq!(again.nodeid, ROOT);
}

#[test]
fn symlinks_never_lead_out_of_the_share() {
    let (top, share) = store_tree();
    std::os::unix::fs::symlink("../outside", share.join("to-dir")).unwrap();
    std::os::unix::fs::symlink(top.path().join("secret.txt"), share.join("to-file")).unwrap();
    let mut d = Driver::new(&share, true);
    d.init();
    // A symlink is its own inode: lookup does not follow it.
    let dir_link = d.lookup(ROOT, "to-dir").unwrap();
    assert_eq!(dir_link.attr.mode & libc::S_IFMT, libc::S_IFLNK);
    assert!(d.lookup(dir_link.nodeid, "secret.txt").is_err());
    let file_link = d.lookup(ROOT, "to-file").unwrap();
    assert_eq!(file_link.attr.mode & libc::S_IFMT, libc::S_IFLNK);
    // Opening the link inode does not open its target.
    assert!(d.open(file_link.nodeid, libc::O_RDONLY).is_err());
    let o = OpenIn { flags: u32::try_from(libc::O_RDONLY | libc::O_DIRECTORY).unwrap(), fuse_flags: 0 };
    assert_ne!(d.call(Opcode::Opendir as u32, dir_link.nodeid, &[o.as_slice()]).errno(), 0);
    // The target is only text for the guest to resolve in its own tree.
    let r = d.call(Opcode::Readlink as u32, file_link.nodeid, &[]);
    assert_eq!(r.errno(), 0);
    assert_eq!(&r.data[16..], top.path().join("secret.txt").as_os_str().as_encoded_bytes());
}

#[test]
fn symlinks_the_guest_makes_in_the_exchange_share_never_lead_out_of_it() {
    // The read-write share is the passthrough's: a link the guest makes
    // there (or finds) must stay text for the guest, never a way to the
    // host's files, whatever it is opened as.
    let (top, share) = store_tree();
    let mut d = Driver::new(&share, false);
    d.init();
    for (name, target) in [("to-file", top.path().join("secret.txt")), ("to-dir", top.path().join("outside"))] {
        let target = std::ffi::CString::new(target.as_os_str().as_encoded_bytes()).unwrap();
        let r = d.call(Opcode::Symlink as u32, ROOT, &[&cstr(name), target.as_bytes_with_nul()]);
        assert_eq!(r.errno(), 0, "symlink {name}");
    }
    let file_link = d.lookup(ROOT, "to-file").unwrap();
    assert_eq!(file_link.attr.mode & libc::S_IFMT, libc::S_IFLNK);
    for flags in [libc::O_RDONLY, libc::O_RDWR, libc::O_WRONLY | libc::O_TRUNC, libc::O_RDONLY | libc::O_NOFOLLOW] {
        assert!(d.open(file_link.nodeid, flags).is_err(), "open of the link with {flags:#o} reached its target");
    }
    let dir_link = d.lookup(ROOT, "to-dir").unwrap();
    assert!(d.lookup(dir_link.nodeid, "secret.txt").is_err());
    let o = OpenIn { flags: u32::try_from(libc::O_RDONLY | libc::O_DIRECTORY).unwrap(), fuse_flags: 0 };
    assert_ne!(d.call(Opcode::Opendir as u32, dir_link.nodeid, &[o.as_slice()]).errno(), 0);
    // A create through the link's name does not write the target.
    let create = CreateIn {
        flags: u32::try_from(libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC).unwrap(),
        mode: 0o644 | libc::S_IFREG,
        umask: 0,
        fuse_flags: 0,
    };
    let _ = d.call(Opcode::Create as u32, ROOT, &[create.as_slice(), &cstr("to-file")]);
    assert_eq!(std::fs::read(top.path().join("secret.txt")).unwrap(), b"secret");
}

#[test]
fn read_write_share_creates_files_owned_by_the_host_user() {
    let dir = tempfile::tempdir().unwrap();
    let umask = resting_umask();
    let mut d = Driver::new(dir.path(), false);
    d.init();
    assert_eq!(resting_umask(), umask, "FUSE_INIT leaves the process umask alone");
    exchange_round_trip(&mut d, dir.path());
}

/// Create, write and mkdir as guest users 0 and 1234; the host sees files
/// owned by itself.
fn exchange_round_trip(d: &mut Driver, dir: &Path) {
    let create = CreateIn {
        flags: u32::try_from(libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL).unwrap(),
        mode: 0o644 | libc::S_IFREG,
        umask: 0o022,
        fuse_flags: 0,
    };
    for (uid, name) in [(0, "from-root.txt"), (1234, "from-user.txt")] {
        let r = d.call_as(Opcode::Create as u32, ROOT, uid, &[create.as_slice(), &cstr(name)]);
        assert_eq!(r.errno(), 0, "create as guest uid {uid}");
        let entry: EntryOut = r.body();
        let open: OpenOut = read_obj(&r.data[16 + size_of::<EntryOut>()..]);
        let w = WriteIn { fh: open.fh, size: 5, ..Default::default() };
        let r = d.call_as(Opcode::Write as u32, entry.nodeid, uid, &[w.as_slice(), b"hello"]);
        assert_eq!(r.errno(), 0, "write as guest uid {uid}");
        let rel = ReleaseIn { fh: open.fh, ..Default::default() };
        assert_eq!(d.call_as(Opcode::Release as u32, entry.nodeid, uid, &[rel.as_slice()]).errno(), 0);
    }
    let mkdir = MkdirIn { mode: 0o755, umask: 0 };
    assert_eq!(d.call_as(Opcode::Mkdir as u32, ROOT, 1234, &[mkdir.as_slice(), &cstr("d")]).errno(), 0);
    let (uid, gid) = (rustix::process::geteuid(), rustix::process::getegid());
    for name in ["from-root.txt", "from-user.txt", "d"] {
        let m = std::fs::metadata(dir.join(name)).unwrap();
        assert_eq!((m.uid(), m.gid()), (uid.as_raw(), gid.as_raw()), "{name} belongs to the host user");
    }
    assert_eq!(std::fs::read(dir.join("from-user.txt")).unwrap(), b"hello");
    assert!(std::fs::metadata(dir.join("d")).unwrap().is_dir());
}

/// The same round trip with the host process not root. Run as root, the
/// test re-runs itself under `setpriv` as nobody (65534).
#[test]
fn read_write_share_works_for_an_unprivileged_host_user() {
    const CHILD: &str = "ROOTLAYER_FS_TEST_UNPRIVILEGED";
    if rustix::process::geteuid().is_root() {
        if std::env::var_os(CHILD).is_some() {
            panic!("setpriv did not drop root");
        }
        let Ok(exe) = std::env::current_exe() else {
            eprintln!("skipped: cannot find the test binary");
            return;
        };
        let out = match std::process::Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
            .arg(&exe)
            .args([
                "--exact",
                "devices::virtio::fs::tests::read_write_share_works_for_an_unprivileged_host_user",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD, "1")
            .output()
        {
            Ok(out) => out,
            Err(e) => {
                eprintln!("skipped: cannot run setpriv: {e}");
                return;
            }
        };
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success() && stdout.contains("1 passed"), "unprivileged run failed:\n{stdout}\n{stderr}");
        return;
    }
    // Not root: no CAP_SETUID, no CAP_CHOWN, no CAP_DAC_OVERRIDE.
    let dir = tempfile::tempdir().unwrap();
    let mut d = Driver::new(dir.path(), false);
    d.init();
    exchange_round_trip(&mut d, dir.path());
    // And a read-only share works too.
    let (_top, share) = store_tree();
    let mut ro = Driver::new(&share, true);
    ro.init();
    let e = ro.lookup(ROOT, "hello.txt").unwrap();
    assert_eq!(ro.open(e.nodeid, libc::O_RDONLY), Err(libc::ENOSYS));
    assert_eq!(ro.read(e.nodeid, 0, 100), b"hello from the store\n");
}

#[test]
fn reset_and_reactivation_serve_a_fresh_session() {
    let (_top, share) = store_tree();
    let mut d = Driver::new(&share, true);
    d.init();
    assert!(d.lookup(ROOT, "hello.txt").is_ok());
    let mut fs = std::mem::replace(&mut d._fs, Fs::new("x", &share, true).unwrap());
    fs.reset();
    let mut d2 = Driver::activate(fs);
    d2.init();
    assert!(d2.lookup(ROOT, "sub").is_ok());
}

#[test]
fn only_fuse_init_leaves_a_share_without_content_served_whatever_resets_between() {
    use crate::devices::virtio::VirtioDevice;
    let (_top, share) = store_tree();
    let mut d = Driver::new(&share, true);
    d.init();
    assert!(!d._fs.served_content(), "FUSE_INIT is the same for every job: a snapshot may hold it");
    assert!(d.lookup(ROOT, "hello.txt").is_ok());
    assert!(d._fs.served_content(), "a lookup answered what the share holds");
    // A reset starts a fresh session, not a clean record.
    let mut fs = std::mem::replace(&mut d._fs, Fs::new("x", &share, true).unwrap());
    fs.reset();
    let d2 = Driver::activate(fs);
    assert!(d2._fs.served_content());
    // A request that does not parse counts as content too.
    let mut d3 = Driver::new(&share, true);
    d3.init();
    let used = d3.submit(1, &[Buf::In(&[0u8; 8]), Buf::Out(4096)]);
    assert_eq!(used.len, 0, "unanswered");
    assert!(d3._fs.served_content());
}

#[test]
fn output_limit_bounds_what_the_guest_adds_to_a_read_write_share() {
    let dir = tempfile::tempdir().unwrap();
    // Two nodes and the one block ten bytes take.
    let limit = std::sync::Arc::new(OutputLimit::new(2 * limit::NODE_COST + limit::BLOCK));
    let mut fs = Fs::new("share", dir.path(), false).unwrap().with_output_limit(limit.clone()).unwrap();
    fs.start(&crate::devices::virtio::StartContext::unwatched(&crate::seccomp::Policy::disabled())).unwrap();
    let mut d = Driver::activate(fs);
    d.init();
    let create = CreateIn {
        flags: u32::try_from(libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL).unwrap(),
        mode: 0o644 | libc::S_IFREG,
        umask: 0o022,
        fuse_flags: 0,
    };
    let r = d.call(Opcode::Create as u32, ROOT, &[create.as_slice(), &cstr("out.tar")]);
    assert_eq!(r.errno(), 0);
    let entry: EntryOut = r.body();
    let open: OpenOut = read_obj(&r.data[16 + size_of::<EntryOut>()..]);
    let write = |d: &mut Driver, offset: u64, data: &[u8]| {
        let w = WriteIn { fh: open.fh, offset, size: u32::try_from(data.len()).unwrap(), ..Default::default() };
        d.call(Opcode::Write as u32, entry.nodeid, &[w.as_slice(), data]).errno()
    };
    let mkdir = MkdirIn { mode: 0o755, umask: 0 };
    assert_eq!(d.call(Opcode::Mkdir as u32, ROOT, &[mkdir.as_slice(), &cstr("d")]).errno(), 0);
    assert_eq!(write(&mut d, 0, b"0123456789"), 0, "within the bound");
    assert!(!limit.exceeded());
    assert_eq!(limit.used(), limit.limit(), "the write took its block");
    assert_eq!(write(&mut d, 10, b"x"), libc::EFBIG, "one byte over");
    assert!(limit.exceeded());
    // Growing by truncate or fallocate, and new nodes, are charged too.
    let grow = SetattrIn { valid: 1 << 3, size: 1 << 30, ..Default::default() };
    assert_eq!(d.call(Opcode::Setattr as u32, entry.nodeid, &[grow.as_slice()]).errno(), libc::EFBIG);
    let fallocate = FallocateIn { fh: open.fh, length: 1 << 30, ..Default::default() };
    assert_eq!(d.call(Opcode::Fallocate as u32, entry.nodeid, &[fallocate.as_slice()]).errno(), libc::EFBIG);
    assert_eq!(d.call(Opcode::Mkdir as u32, ROOT, &[mkdir.as_slice(), &cstr("e")]).errno(), libc::EFBIG);
    assert_eq!(std::fs::metadata(dir.path().join("out.tar")).unwrap().len(), 10, "the file holds what was allowed");
    assert!(!dir.path().join("e").exists());
}

/// One-byte writes a block apart each take a block of the host's disk:
/// each is charged one, and the budget stops them.
#[test]
fn output_limit_charges_sparse_writes_their_blocks() {
    let dir = tempfile::tempdir().unwrap();
    let limit = std::sync::Arc::new(OutputLimit::new(limit::NODE_COST + 8 * limit::BLOCK));
    let mut fs = Fs::new("share", dir.path(), false).unwrap().with_output_limit(limit.clone()).unwrap();
    fs.start(&crate::devices::virtio::StartContext::unwatched(&crate::seccomp::Policy::disabled())).unwrap();
    let mut d = Driver::activate(fs);
    d.init();
    let create = CreateIn {
        flags: u32::try_from(libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL).unwrap(),
        mode: 0o644 | libc::S_IFREG,
        umask: 0o022,
        fuse_flags: 0,
    };
    let r = d.call(Opcode::Create as u32, ROOT, &[create.as_slice(), &cstr("sparse")]);
    assert_eq!(r.errno(), 0);
    let entry: EntryOut = r.body();
    let open: OpenOut = read_obj(&r.data[16 + size_of::<EntryOut>()..]);
    let mut written = 0;
    for i in 0..64u64 {
        let w = WriteIn { fh: open.fh, offset: i * limit::BLOCK, size: 1, ..Default::default() };
        if d.call(Opcode::Write as u32, entry.nodeid, &[w.as_slice(), b"x"]).errno() == 0 {
            written += 1;
        }
    }
    assert_eq!(written, 8, "eight blocks in the budget");
    assert!(limit.exceeded());
    let disk = std::os::unix::fs::MetadataExt::blocks(&std::fs::metadata(dir.path().join("sparse")).unwrap()) * 512;
    assert!(disk <= 8 * limit::BLOCK + limit::BLOCK, "{disk} bytes of disk");
}
