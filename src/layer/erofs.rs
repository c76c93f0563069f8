//! A merged tree ([`super::flatten::Tree`]) -> an uncompressed EROFS image,
//! the read-only file system the guest mounts in place as the overlay's
//! lower dir (`Documentation/filesystems/erofs.rst`, on-disk format of
//! `fs/erofs/erofs_fs.h` as Linux 6.1 reads it).
//!
//! Layout, 4 KiB blocks:
//!
//! ```text
//! block 0          superblock at byte 1024 (meta_blkaddr = 0)
//! blocks 1..m      inodes: extended (64 bytes) + inline xattrs, 32-byte
//!                  slots (nid = byte offset / 32), none across a block end;
//!                  the root first (nid 128: root_nid is 16 bits)
//! blocks m..       data, FLAT_PLAIN: each directory's, file's and symlink's
//!                  bytes from a block of its own, in inode order
//! ```
//!
//! Directories hold `.` and `..` and their entries sorted by name bytes,
//! packed into blocks of dirents (12 bytes each) followed by the names.
//! Owners, modes, mtimes (seconds), `security.*`/`user.*` xattrs, device
//! numbers, symlink targets and hardlinks (one inode, its nlink) are kept.
//! The image is a pure function of the tree and the file bytes: the same
//! layers give the same image.

use std::collections::HashMap;
use std::io::{self, Read, Seek, SeekFrom, Write};

use super::changeset::{copy_exact, Data, Source};
use super::flatten::{Kind, Tree, NAME_MAX};
use super::{show, LayerError};

/// Bump when the bytes written for the same tree change (the host's cache of
/// base images is keyed by it).
pub const WRITER_VERSION: u32 = 1;

pub const BLOCK_SIZE: u64 = 4096;
const BLOCK: usize = 4096;
const SUPER_OFFSET: usize = 1024;
const MAGIC: u32 = 0xE0F5_E1E2;
const INODE_EXTENDED: usize = 64;
const SLOT: u64 = 32;
const DIRENT: usize = 12;
const XATTR_IBODY_HEADER: usize = 12;
/// First inode: block 1.
const META_START: u64 = BLOCK_SIZE;

const S_IFMT: u32 = 0o170_000;
const S_IFSOCK: u32 = 0o140_000;
const S_IFLNK: u32 = 0o120_000;
const S_IFREG: u32 = 0o100_000;
const S_IFBLK: u32 = 0o060_000;
const S_IFDIR: u32 = 0o040_000;
const S_IFCHR: u32 = 0o020_000;
const S_IFIFO: u32 = 0o010_000;
const _: u32 = S_IFSOCK;

// EROFS_FT_*.
const FT_REG: u8 = 1;
const FT_DIR: u8 = 2;
const FT_CHR: u8 = 3;
const FT_BLK: u8 = 4;
const FT_FIFO: u8 = 5;
const FT_SYMLINK: u8 = 7;

/// Seekable readers of the layers' tars, in layer order.
#[derive(Debug)]
pub struct Layers<R>(pub Vec<R>);

impl<R: Read + Seek> Source for Layers<R> {
    fn open(&mut self, data: &Data) -> io::Result<Box<dyn Read + '_>> {
        let Data::Layer(r) = data else {
            return Err(io::Error::other(format!("not a layer's data: {data:?}")));
        };
        let src = self.0.get_mut(r.layer).ok_or_else(|| io::Error::other("no such layer"))?;
        src.seek(SeekFrom::Start(r.offset))?;
        Ok(Box::new(src.take(r.len)))
    }
}

/// What was written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageInfo {
    pub bytes: u64,
    pub inodes: u64,
}

/// One inode as laid out.
struct Placed {
    /// Index into `tree.inodes`.
    ino: usize,
    nid: u64,
    parent_nid: u64,
    nlink: u32,
    xattrs: Vec<u8>,
    /// Data size and first block (0 when empty).
    size: u64,
    blkaddr: u64,
}

/// EROFS's name index and the rest of the name (empty for the ACLs, which
/// are whole names: EROFS_XATTR_INDEX_POSIX_ACL_{ACCESS,DEFAULT}).
fn xattr_index(name: &str) -> Option<(u8, &str)> {
    match name {
        "system.posix_acl_access" => return Some((2, "")),
        "system.posix_acl_default" => return Some((3, "")),
        _ => {}
    }
    [("user.", 1), ("trusted.", 4), ("security.", 6)]
        .into_iter()
        .find_map(|(prefix, index)| name.strip_prefix(prefix).map(|rest| (index, rest)))
}

/// The inline xattr body of an inode (header + entries), empty without
/// xattrs.
fn xattr_body(tree: &Tree, ino: usize, path: &[u8]) -> Result<Vec<u8>, LayerError> {
    let x = &tree.inodes[ino].xattrs;
    if x.is_empty() {
        return Ok(Vec::new());
    }
    let mut entries: Vec<(u8, &str, &[u8])> = Vec::new();
    for (k, v) in x {
        let (index, name) = xattr_index(k).ok_or_else(|| LayerError::BadXattr { path: show(path), key: k.clone() })?;
        if (name.is_empty() && index != 2 && index != 3) || name.len() > 255 || v.len() > usize::from(u16::MAX) {
            return Err(LayerError::BadXattr { path: show(path), key: k.clone() });
        }
        entries.push((index, name, v));
    }
    entries.sort();
    let mut body = vec![0u8; XATTR_IBODY_HEADER];
    for (index, name, value) in entries {
        body.push(u8::try_from(name.len()).expect("checked"));
        body.push(index);
        body.extend_from_slice(&u16::try_from(value.len()).expect("checked").to_le_bytes());
        body.extend_from_slice(name.as_bytes());
        body.extend_from_slice(value);
        while body.len() % 4 != 0 {
            body.push(0);
        }
    }
    Ok(body)
}

/// A directory's data: its entries (with `.` and `..`) in name order,
/// packed into blocks.
fn dir_blocks(entries: &[(&[u8], u64, u8)]) -> Vec<Vec<u8>> {
    let mut blocks = Vec::new();
    let mut i = 0;
    while i < entries.len() {
        // As many entries as fit this block.
        let mut n = 0;
        let mut used = 0;
        while i + n < entries.len() {
            let need = DIRENT + entries[i + n].0.len();
            if used + need > BLOCK {
                break;
            }
            used += need;
            n += 1;
        }
        let group = &entries[i..i + n];
        let mut block = Vec::with_capacity(used);
        let mut nameoff = DIRENT * n;
        for (name, nid, ft) in group {
            block.extend_from_slice(&nid.to_le_bytes());
            block.extend_from_slice(&u16::try_from(nameoff).expect("within a block").to_le_bytes());
            block.push(*ft);
            block.push(0);
            nameoff += name.len();
        }
        for (name, _, _) in group {
            block.extend_from_slice(name);
        }
        blocks.push(block);
        i += n;
    }
    blocks
}

fn file_type(kind: &Kind) -> u8 {
    match kind {
        Kind::Dir(_) => FT_DIR,
        Kind::File(_) => FT_REG,
        Kind::Symlink(_) => FT_SYMLINK,
        Kind::Char(..) => FT_CHR,
        Kind::Block(..) => FT_BLK,
        Kind::Fifo => FT_FIFO,
    }
}

fn mode_bits(kind: &Kind) -> u32 {
    match kind {
        Kind::Dir(_) => S_IFDIR,
        Kind::File(_) => S_IFREG,
        Kind::Symlink(_) => S_IFLNK,
        Kind::Char(..) => S_IFCHR,
        Kind::Block(..) => S_IFBLK,
        Kind::Fifo => S_IFIFO,
    }
}

/// Linux's `new_encode_dev`, as EROFS stores `i_u.rdev`.
fn encode_dev(major: u32, minor: u32) -> u32 {
    (minor & 0xff) | (major << 8) | ((minor & !0xff) << 12)
}

fn blocks_for(size: u64) -> u64 {
    size.div_ceil(BLOCK_SIZE)
}

/// Write `tree` as an EROFS image to `out`, taking file bytes from `data`.
pub fn write<W: Write, S: Source + ?Sized>(tree: &Tree, data: &mut S, out: &mut W) -> Result<ImageInfo, LayerError> {
    let order = inode_order(tree);
    let (mut placed, inodes_end) = place_inodes(tree, &order)?;
    let (dirs, total_blocks) = place_data(tree, &mut placed, inodes_end)?;
    let too_big = |field| LayerError::TooLarge { path: "the base image".into(), field };
    let blocks32 = u32::try_from(total_blocks).map_err(|_| too_big("blocks"))?;
    out.write_all(&superblock(placed[0].nid, placed.len() as u64, blocks32)).map_err(LayerError::Write)?;
    let data_start = write_inodes(tree, &placed, out)?;
    let mut counter = Counter { inner: out, n: 0 };
    for (i, p) in placed.iter().enumerate() {
        debug_assert!(p.size == 0 || data_start + counter.n == p.blkaddr * BLOCK_SIZE);
        write_data(tree, p, &dirs, data, &mut counter).map_err(|e| match e {
            DataError::Source(source) => LayerError::Entry { path: show(&order[i].2), source },
            DataError::Write(e) => LayerError::Write(e),
        })?;
    }
    let bytes = data_start + counter.n;
    debug_assert_eq!(bytes, total_blocks * BLOCK_SIZE);
    Ok(ImageInfo { bytes, inodes: placed.len() as u64 })
}

/// Every reachable inode once, breadth first from the root, children in
/// name order: (inode, its parent's, its first path).
fn inode_order(tree: &Tree) -> Vec<(usize, usize, Vec<u8>)> {
    let mut order: Vec<(usize, usize, Vec<u8>)> = vec![(0, 0, Vec::new())];
    let mut seen: HashMap<usize, usize> = HashMap::from([(0, 0)]);
    let mut at = 0;
    while at < order.len() {
        let (ino, _, path) = order[at].clone();
        at += 1;
        if let Kind::Dir(children) = &tree.inodes[ino].kind {
            for (name, &child) in children {
                if let std::collections::hash_map::Entry::Vacant(v) = seen.entry(child) {
                    v.insert(order.len());
                    order.push((child, ino, super::rules::join(&path, name)));
                }
            }
        }
    }
    order
}

/// Inode slots, in `order`: 64 bytes + xattrs, 32-byte aligned, within a
/// block; link counts (a directory's from its subdirectories, anything
/// else's from its names). Returns them and where the inodes end.
fn place_inodes(tree: &Tree, order: &[(usize, usize, Vec<u8>)]) -> Result<(Vec<Placed>, u64), LayerError> {
    let mut names: HashMap<usize, u32> = HashMap::new();
    for (ino, _, _) in order {
        if let Kind::Dir(children) = &tree.inodes[*ino].kind {
            for child in children.values() {
                *names.entry(*child).or_default() += 1;
            }
        }
    }
    let mut placed: Vec<Placed> = Vec::with_capacity(order.len());
    let mut offset = META_START;
    for (ino, _, path) in order {
        let xattrs = xattr_body(tree, *ino, path)?;
        let len = (INODE_EXTENDED + xattrs.len()) as u64;
        if len > BLOCK_SIZE {
            return Err(LayerError::TooLarge { path: show(path), field: "xattrs" });
        }
        if offset / BLOCK_SIZE != (offset + len - 1) / BLOCK_SIZE {
            offset = offset.div_ceil(BLOCK_SIZE) * BLOCK_SIZE;
        }
        let nlink = match &tree.inodes[*ino].kind {
            Kind::Dir(c) => {
                let subdirs = c.values().filter(|&&i| matches!(tree.inodes[i].kind, Kind::Dir(_))).count();
                2 + u32::try_from(subdirs).map_err(|_| LayerError::TooLarge { path: show(path), field: "nlink" })?
            }
            _ => names.get(ino).copied().unwrap_or(1),
        };
        placed.push(Placed { ino: *ino, nid: offset / SLOT, parent_nid: 0, nlink, xattrs, size: 0, blkaddr: 0 });
        offset += len.div_ceil(SLOT) * SLOT;
    }
    if placed[0].nid > u64::from(u16::MAX) {
        unreachable!("the root is the first inode");
    }
    let nid_of: HashMap<usize, u64> = placed.iter().map(|p| (p.ino, p.nid)).collect();
    for (i, (_, parent, _)) in order.iter().enumerate() {
        placed[i].parent_nid = nid_of[parent];
    }
    Ok((placed, offset))
}

/// Data blocks, in inode order from the first block after `inodes_end`:
/// each inode's size and first block, and every directory's blocks.
/// Returns those and the image's size in blocks.
fn place_data(tree: &Tree, placed: &mut [Placed], inodes_end: u64) -> Result<(DirBlocks, u64), LayerError> {
    let nid_of: HashMap<usize, u64> = placed.iter().map(|p| (p.ino, p.nid)).collect();
    let mut next_block = inodes_end.div_ceil(BLOCK_SIZE);
    let mut dirs = DirBlocks::new();
    for p in placed.iter_mut() {
        p.size = match &tree.inodes[p.ino].kind {
            Kind::Dir(children) => {
                let mut entries: Vec<(&[u8], u64, u8)> = vec![(b".", p.nid, FT_DIR), (b"..", p.parent_nid, FT_DIR)];
                for (name, &child) in children {
                    if name.is_empty() || name.len() > NAME_MAX {
                        return Err(LayerError::TooLarge { path: show(name), field: "name" });
                    }
                    entries.push((name.as_slice(), nid_of[&child], file_type(&tree.inodes[child].kind)));
                }
                entries.sort_by(|a, b| a.0.cmp(b.0));
                let blocks = dir_blocks(&entries);
                let size = (blocks.len() as u64 - 1) * BLOCK_SIZE + blocks.last().map_or(0, |b| b.len() as u64);
                dirs.insert(p.ino, blocks);
                size
            }
            Kind::File(d) => d.len(),
            Kind::Symlink(target) => target.len() as u64,
            Kind::Char(..) | Kind::Block(..) | Kind::Fifo => 0,
        };
        if p.size > 0 {
            p.blkaddr = next_block;
            next_block += blocks_for(p.size);
        }
    }
    Ok((dirs, next_block))
}

/// Each directory's data blocks (the last one short), by inode.
type DirBlocks = HashMap<usize, Vec<Vec<u8>>>;

/// Block 0: the superblock at byte 1024.
fn superblock(root_nid: u64, inodes: u64, blocks: u32) -> Vec<u8> {
    let mut head = vec![0u8; BLOCK];
    let sb = &mut head[SUPER_OFFSET..SUPER_OFFSET + 128];
    sb[0..4].copy_from_slice(&MAGIC.to_le_bytes());
    sb[12] = 12; // blkszbits
    sb[14..16].copy_from_slice(&u16::try_from(root_nid).expect("root nid fits").to_le_bytes());
    sb[16..24].copy_from_slice(&inodes.to_le_bytes());
    sb[36..40].copy_from_slice(&blocks.to_le_bytes());
    sb[64..78].copy_from_slice(b"rootlayer-base");
    head
}

/// The inodes, each in its slot, then zeros to the first data block;
/// returns where the data starts.
fn write_inodes<W: Write>(tree: &Tree, placed: &[Placed], out: &mut W) -> Result<u64, LayerError> {
    let write_err = LayerError::Write;
    let too_big = |field| LayerError::TooLarge { path: "the base image".into(), field };
    let mut written = META_START;
    for (i, p) in placed.iter().enumerate() {
        let at = p.nid * SLOT;
        if at > written {
            out.write_all(&vec![0u8; usize::try_from(at - written).expect("within a block")]).map_err(write_err)?;
            written = at;
        }
        let inode = &tree.inodes[p.ino];
        let mut rec = vec![0u8; INODE_EXTENDED];
        rec[0..2].copy_from_slice(&1u16.to_le_bytes()); // extended, FLAT_PLAIN
        let icount = if p.xattrs.is_empty() { 0 } else { (p.xattrs.len() - XATTR_IBODY_HEADER) / 4 + 1 };
        rec[2..4].copy_from_slice(&u16::try_from(icount).expect("under a block").to_le_bytes());
        let mode = u16::try_from(mode_bits(&inode.kind) | (inode.mode & 0o7777)).expect("16-bit mode");
        rec[4..6].copy_from_slice(&mode.to_le_bytes());
        rec[8..16].copy_from_slice(&p.size.to_le_bytes());
        let i_u = match inode.kind {
            Kind::Char(ma, mi) | Kind::Block(ma, mi) => encode_dev(ma, mi),
            _ => u32::try_from(p.blkaddr).map_err(|_| too_big("block address"))?,
        };
        rec[16..20].copy_from_slice(&i_u.to_le_bytes());
        rec[20..24].copy_from_slice(&u32::try_from(i + 1).map_err(|_| too_big("inodes"))?.to_le_bytes());
        rec[24..28].copy_from_slice(&inode.uid.to_le_bytes());
        rec[28..32].copy_from_slice(&inode.gid.to_le_bytes());
        rec[32..40].copy_from_slice(&inode.mtime.to_le_bytes());
        rec[44..48].copy_from_slice(&p.nlink.to_le_bytes());
        rec.extend_from_slice(&p.xattrs);
        let padded = (rec.len() as u64).div_ceil(SLOT) * SLOT;
        rec.resize(usize::try_from(padded).expect("under a block"), 0);
        out.write_all(&rec).map_err(write_err)?;
        written += padded;
    }
    let data_start = written.div_ceil(BLOCK_SIZE) * BLOCK_SIZE;
    out.write_all(&vec![0u8; usize::try_from(data_start - written).expect("under a block")]).map_err(write_err)?;
    Ok(data_start)
}

/// Why an inode's data could not be written: its source, or the output.
enum DataError {
    Source(io::Error),
    Write(io::Error),
}

/// One inode's data blocks (a directory's entries, a file's bytes, a
/// symlink's target), padded to a whole block.
fn write_data<W: Write, S: Source + ?Sized>(
    tree: &Tree,
    p: &Placed,
    dirs: &DirBlocks,
    data: &mut S,
    out: &mut Counter<'_, W>,
) -> Result<(), DataError> {
    if p.size == 0 {
        return Ok(());
    }
    let start = out.n;
    match &tree.inodes[p.ino].kind {
        Kind::Dir(_) => {
            let blocks = &dirs[&p.ino];
            for (k, b) in blocks.iter().enumerate() {
                out.write_all(b).map_err(DataError::Write)?;
                if k + 1 < blocks.len() {
                    out.write_all(&vec![0u8; BLOCK - b.len()]).map_err(DataError::Write)?;
                }
            }
        }
        // The counter counts what reached the output: a short source is
        // the source's error, any other the output's.
        Kind::File(d) => copy_exact(data, d, out).map_err(DataError::Source)?,
        Kind::Symlink(target) => out.write_all(target).map_err(DataError::Write)?,
        _ => {}
    }
    let pad = blocks_for(p.size) * BLOCK_SIZE - (out.n - start);
    out.write_all(&vec![0u8; usize::try_from(pad).expect("under a block")]).map_err(DataError::Write)
}

/// Whether `path` (relative, `/`-separated, no `.` or `..`) names an
/// entry of the EROFS image `img`, and its type bits (`S_IFMT` of its mode).
///
/// A reader of what [`write`] writes (FLAT_PLAIN inodes, uncompressed
/// directories): the host asks its own base disk which paths the base
/// image has. Every offset and length read is checked against the image,
/// so a damaged image gives an error, never a panic or an endless walk.
pub fn lookup<R: Read + Seek>(img: &mut R, path: &[u8]) -> io::Result<Option<u32>> {
    let bad = |what: &str| io::Error::new(io::ErrorKind::InvalidData, format!("EROFS image: {what}"));
    let len = img.seek(SeekFrom::End(0))?;
    let mut sb = [0u8; 128];
    read_at(img, SUPER_OFFSET as u64, &mut sb)?;
    if u32::from_le_bytes(sb[0..4].try_into().expect("4 bytes")) != MAGIC || sb[12] != 12 {
        return Err(bad("not an image of 4 KiB blocks"));
    }
    let mut nid = u64::from(u16::from_le_bytes([sb[14], sb[15]]));
    if path.is_empty() {
        return Ok(Some(S_IFDIR));
    }
    let mut comps = path.split(|&b| b == b'/').peekable();
    while let Some(name) = comps.next() {
        let (mode, size, blkaddr) = read_inode(img, nid, len).map_err(|_| bad("inode out of range"))?;
        if mode & S_IFMT != S_IFDIR {
            return Ok(None);
        }
        let Some(child) = find_dirent(img, blkaddr, size, len, name)? else { return Ok(None) };
        if comps.peek().is_none() {
            let (mode, ..) = read_inode(img, child, len).map_err(|_| bad("inode out of range"))?;
            return Ok(Some(mode & S_IFMT));
        }
        nid = child;
    }
    Ok(None)
}

fn read_at<R: Read + Seek>(img: &mut R, at: u64, buf: &mut [u8]) -> io::Result<()> {
    img.seek(SeekFrom::Start(at))?;
    img.read_exact(buf)
}

/// (mode, size, raw block address) of inode `nid`.
fn read_inode<R: Read + Seek>(img: &mut R, nid: u64, len: u64) -> io::Result<(u32, u64, u64)> {
    let at = nid.checked_mul(SLOT).filter(|&a| a >= META_START && a + INODE_EXTENDED as u64 <= len);
    let at = at.ok_or_else(|| io::Error::from(io::ErrorKind::InvalidData))?;
    let mut rec = [0u8; INODE_EXTENDED];
    read_at(img, at, &mut rec)?;
    let mode = u32::from(u16::from_le_bytes([rec[4], rec[5]]));
    let size = u64::from_le_bytes(rec[8..16].try_into().expect("8 bytes"));
    let blkaddr = u64::from(u32::from_le_bytes(rec[16..20].try_into().expect("4 bytes")));
    Ok((mode, size, blkaddr))
}

/// The entry `name` of the directory whose `size` bytes start at block
/// `blkaddr`: its nid.
fn find_dirent<R: Read + Seek>(img: &mut R, blkaddr: u64, size: u64, len: u64, name: &[u8]) -> io::Result<Option<u64>> {
    let bad = |what: &str| io::Error::new(io::ErrorKind::InvalidData, format!("EROFS directory: {what}"));
    let start = blkaddr.checked_mul(BLOCK_SIZE).filter(|s| s.checked_add(size).is_some_and(|e| e <= len));
    let start = start.ok_or_else(|| bad("beyond the image"))?;
    let mut block = vec![0u8; BLOCK];
    for b in 0..blocks_for(size) {
        let used = usize::try_from((size - b * BLOCK_SIZE).min(BLOCK_SIZE)).expect("at most a block");
        read_at(img, start + b * BLOCK_SIZE, &mut block[..used])?;
        let data = &block[..used];
        if data.len() < DIRENT {
            return Err(bad("block without entries"));
        }
        let first = usize::from(u16::from_le_bytes([data[8], data[9]]));
        if first % DIRENT != 0 || first == 0 || first > data.len() {
            return Err(bad("bad first name offset"));
        }
        let count = first / DIRENT;
        for i in 0..count {
            let d = &data[i * DIRENT..(i + 1) * DIRENT];
            let off = usize::from(u16::from_le_bytes([d[8], d[9]]));
            let end = if i + 1 < count {
                usize::from(u16::from_le_bytes([data[(i + 1) * DIRENT + 8], data[(i + 1) * DIRENT + 9]]))
            } else {
                // The last name ends at the block's end or at its first NUL.
                data[off.min(data.len())..].iter().position(|&c| c == 0).map_or(data.len(), |p| off + p)
            };
            let entry = data.get(off..end).ok_or_else(|| bad("name out of the block"))?;
            if entry == name {
                return Ok(Some(u64::from_le_bytes(d[0..8].try_into().expect("8 bytes"))));
            }
        }
    }
    Ok(None)
}

struct Counter<'a, W> {
    inner: &'a mut W,
    n: u64,
}

impl<W: Write> Write for Counter<'_, W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.n += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
#[path = "erofs_tests.rs"]
mod tests;
