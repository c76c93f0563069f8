//! A small ext4 reader for the scratch disk the guest wrote: the host reads
//! the overlay's upper dir straight off the image after the guest powered
//! off, instead of the guest kernel tarring it (`Documentation/filesystems/
//! ext4/`: super block, group descriptors, inode table, extent tree, linear
//! and hashed directories, in-inode and block xattrs).
//!
//! What the host formats ([`super::ext4_format`]: no journal, extents,
//! 64bit, no flex_bg, no checksums) is what this reads, and what mkfs.ext4
//! makes without a journal (flex_bg, metadata_csum: the tests' images);
//! anything else (inline data, encryption, block-mapped files, a journal to
//! recover, meta_bg, ea_inode) is refused. The image was written by an
//! untrusted guest: every block number, offset, length, extent depth,
//! directory size and entry count is bounded, and an image that was not
//! marked clean (unmounted, or remounted read-only) is refused. Errors name the inode. Checksums are not
//! needed for safety and not checked.
//!
//! [`super::upper`] reads the overlay's upper dir off it into the new
//! layer's changeset.

use std::io::{self, Read, Seek, SeekFrom};

use super::LayerError;

/// Why the image cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum Ext4Error {
    #[error("reading the scratch disk image")]
    Io(#[source] io::Error),
    #[error("the scratch disk is not ext4 as rootlayer formats it: {0}")]
    Unsupported(String),
    #[error("the scratch disk was not marked clean (unmounted or remounted read-only)")]
    NotClean,
    #[error("the scratch disk is corrupt at inode {ino}: {what}")]
    Corrupt { ino: u64, what: String },
    /// A socket the script left: a layer cannot hold one.
    #[error("a socket at {0} in the upper dir: a layer cannot hold sockets")]
    Socket(String),
    #[error("{0} not found on the scratch disk")]
    NotFound(String),
    #[error("the upper dir holds more than the output limit of {0} bytes (file data, headers, names and xattrs)")]
    TooLarge(u64),
    #[error("directory inode {ino} holds more than {max} entries")]
    TooManyEntries { ino: u64, max: usize },
    #[error("writing the upper dir's tar")]
    Write(#[source] io::Error),
    /// What a layer cannot hold, or a check of the layer's model.
    #[error("the upper dir's entry cannot be in the layer")]
    Entry(#[source] LayerError),
}

impl Ext4Error {
    /// The reader's own error back out of an `io::Error` that carries it
    /// (what [`super::upper::Ext4Files`] gives the layer writer), else a read error.
    pub fn from_io(e: io::Error) -> Ext4Error {
        match e.get_ref().is_some_and(|inner| inner.is::<Ext4Error>()) {
            true => *e.into_inner().and_then(|inner| inner.downcast().ok()).expect("checked above"),
            false => Ext4Error::Io(e),
        }
    }
}

const MAGIC: u16 = 0xEF53;
const ROOT_INO: u64 = 2;
const EXTENT_MAGIC: u16 = 0xF30A;
const XATTR_MAGIC: u32 = 0xEA02_0000;
const EXTENTS_FL: u32 = 0x0008_0000;
const INLINE_DATA_FL: u32 = 0x1000_0000;
/// Deepest extent tree ext4 makes.
const MAX_DEPTH: u16 = 5;
/// Directory entries a directory may hold, and its size (bounds, not
/// format limits).
pub(crate) const MAX_DIR_ENTRIES: usize = 10_000_000;
const MAX_DIR_BYTES: u64 = 256 << 20;

// Incompatible features we read.
const INCOMPAT_FILETYPE: u32 = 0x2;
const INCOMPAT_EXTENTS: u32 = 0x40;
const INCOMPAT_64BIT: u32 = 0x80;
const INCOMPAT_FLEX_BG: u32 = 0x200;
const INCOMPAT_CSUM_SEED: u32 = 0x2000;
const INCOMPAT_LARGEDIR: u32 = 0x4000;
const INCOMPAT_KNOWN: u32 =
    INCOMPAT_FILETYPE | INCOMPAT_EXTENTS | INCOMPAT_64BIT | INCOMPAT_FLEX_BG | INCOMPAT_CSUM_SEED | INCOMPAT_LARGEDIR;

fn le16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}
fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// One inode as the reader needs it.
#[derive(Debug, Clone)]
pub struct Inode {
    pub ino: u64,
    pub mode: u16,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub mtime: i64,
    pub links: u16,
    flags: u32,
    block: [u8; 60],
    file_acl: u64,
    /// The in-inode xattr area (after the extra fields), if any.
    ibody_xattrs: Vec<u8>,
}

impl Inode {
    pub(crate) fn kind(&self) -> u16 {
        self.mode & 0o170_000
    }
    pub fn is_dir(&self) -> bool {
        self.kind() == 0o040_000
    }
}

/// An opened image.
#[derive(Debug)]
pub struct Ext4<R> {
    dev: R,
    /// Size of the image in bytes.
    len: u64,
    block_size: u64,
    inodes_count: u64,
    inodes_per_group: u64,
    inode_size: u64,
    desc_size: u64,
    /// First block of the group descriptor table.
    gdt_block: u64,
    groups: u64,
    /// Extent tree nodes visited and extents read, over the whole read,
    /// still allowed: an honest file system's extents and extent nodes
    /// each take a block of their own, so their count is bounded by the
    /// image's blocks; a crafted one reusing nodes is stopped there, however
    /// many inodes share them.
    extent_budget: u64,
    /// Bytes of directories still to be read, likewise bounded by the
    /// image's size.
    dir_budget: u64,
}

impl<R: Read + Seek> Ext4<R> {
    /// Open an image, checking its super block.
    pub fn open(mut dev: R) -> Result<Self, Ext4Error> {
        let len = dev.seek(SeekFrom::End(0)).map_err(Ext4Error::Io)?;
        let mut sb = [0u8; 1024];
        dev.seek(SeekFrom::Start(1024)).map_err(Ext4Error::Io)?;
        dev.read_exact(&mut sb).map_err(Ext4Error::Io)?;
        let unsupported = |what: String| Err(Ext4Error::Unsupported(what));
        if le16(&sb, 56) != MAGIC {
            return unsupported("no ext4 super block".into());
        }
        let log = le32(&sb, 24);
        if log > 6 {
            return unsupported(format!("block size 2^{}", 10 + u64::from(log)));
        }
        let block_size = 1024u64 << log;
        let incompat = le32(&sb, 96);
        if incompat & !INCOMPAT_KNOWN != 0 {
            return unsupported(format!("incompatible features {:#x}", incompat & !INCOMPAT_KNOWN));
        }
        if incompat & INCOMPAT_EXTENTS == 0 {
            return unsupported("no extents".into());
        }
        if le16(&sb, 58) & 1 == 0 || le16(&sb, 58) & 2 != 0 {
            return Err(Ext4Error::NotClean);
        }
        let inodes_count = u64::from(le32(&sb, 0));
        let inodes_per_group = u64::from(le32(&sb, 40));
        let blocks_per_group = u64::from(le32(&sb, 32));
        let first_data_block = u64::from(le32(&sb, 20));
        let rev = le32(&sb, 76);
        let inode_size = if rev == 0 { 128 } else { u64::from(le16(&sb, 88)) };
        let desc_size = if incompat & INCOMPAT_64BIT != 0 { u64::from(le16(&sb, 254)) } else { 32 };
        let blocks = u64::from(le32(&sb, 4))
            | if incompat & INCOMPAT_64BIT != 0 { u64::from(le32(&sb, 0x150)) << 32 } else { 0 };
        if inodes_per_group == 0 || blocks_per_group == 0 || !(128..=block_size).contains(&inode_size) {
            return unsupported("bad geometry".into());
        }
        if !inode_size.is_power_of_two() || !(32..=1024).contains(&desc_size) || blocks.saturating_mul(block_size) > len
        {
            return unsupported("bad geometry".into());
        }
        let groups = blocks.saturating_sub(first_data_block).div_ceil(blocks_per_group);
        if groups == 0 || groups.saturating_mul(inodes_per_group) < inodes_count {
            return unsupported("bad geometry".into());
        }
        Ok(Ext4 {
            dev,
            len,
            block_size,
            inodes_count,
            inodes_per_group,
            inode_size,
            desc_size,
            gdt_block: first_data_block + 1,
            groups,
            extent_budget: 2 * (len / block_size) + 4096,
            dir_budget: len + (1 << 20),
        })
    }

    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), Ext4Error> {
        if offset.checked_add(buf.len() as u64).map_or(true, |end| end > self.len) {
            return Err(Ext4Error::Io(io::Error::new(io::ErrorKind::UnexpectedEof, "past the end of the image")));
        }
        self.dev.seek(SeekFrom::Start(offset)).map_err(Ext4Error::Io)?;
        self.dev.read_exact(buf).map_err(Ext4Error::Io)
    }

    fn block(&mut self, ino: u64, block: u64) -> Result<Vec<u8>, Ext4Error> {
        let mut buf = vec![0u8; usize::try_from(self.block_size).expect("at most 64 KiB")];
        let off = block
            .checked_mul(self.block_size)
            .filter(|o| o.checked_add(self.block_size).is_some_and(|end| end <= self.len))
            .ok_or(Ext4Error::Corrupt { ino, what: format!("block {block} is past the end of the image") })?;
        self.read_at(off, &mut buf)?;
        Ok(buf)
    }

    /// Where inode `ino` (at most `inodes_count`) is in the image.
    fn inode_offset(&mut self, ino: u64) -> Result<u64, Ext4Error> {
        let corrupt = |what: &str| Ext4Error::Corrupt { ino, what: what.into() };
        let group = (ino - 1) / self.inodes_per_group;
        let index = (ino - 1) % self.inodes_per_group;
        if group >= self.groups {
            return Err(corrupt("no such group"));
        }
        let mut desc = vec![0u8; usize::try_from(self.desc_size).expect("bounded")];
        self.read_at(self.gdt_block * self.block_size + group * self.desc_size, &mut desc)?;
        let table =
            u64::from(le32(&desc, 8)) | if self.desc_size >= 64 { u64::from(le32(&desc, 0x28)) << 32 } else { 0 };
        table
            .checked_mul(self.block_size)
            .and_then(|t| t.checked_add(index * self.inode_size))
            .ok_or_else(|| corrupt("inode table address overflows"))
    }

    /// Inode `ino`.
    pub fn inode(&mut self, ino: u64) -> Result<Inode, Ext4Error> {
        let corrupt = |what: &str| Ext4Error::Corrupt { ino, what: what.into() };
        if ino == 0 || ino > self.inodes_count {
            return Err(corrupt("no such inode"));
        }
        let off = self.inode_offset(ino)?;
        let mut raw = vec![0u8; usize::try_from(self.inode_size).expect("bounded")];
        self.read_at(off, &mut raw).map_err(|_| corrupt("inode table past the end of the image"))?;
        let mut block = [0u8; 60];
        block.copy_from_slice(&raw[0x28..0x28 + 60]);
        let extra = if raw.len() > 128 { usize::from(le16(&raw, 0x80)) } else { 0 };
        if raw.len() > 128 && 128 + extra > raw.len() {
            return Err(corrupt("extra inode size past the inode"));
        }
        let ibody_xattrs = if raw.len() > 128 + extra + 4 && le32(&raw, 128 + extra) == XATTR_MAGIC {
            raw[128 + extra + 4..].to_vec()
        } else {
            Vec::new()
        };
        Ok(Inode {
            ino,
            mode: le16(&raw, 0),
            uid: u32::from(le16(&raw, 2)) | u32::from(le16(&raw, 0x78)) << 16,
            gid: u32::from(le16(&raw, 0x18)) | u32::from(le16(&raw, 0x7A)) << 16,
            size: u64::from(le32(&raw, 4)) | u64::from(le32(&raw, 0x6C)) << 32,
            mtime: mtime(&raw, extra),
            links: le16(&raw, 0x1A),
            flags: le32(&raw, 0x20),
            block,
            file_acl: u64::from(le32(&raw, 0x68)) | u64::from(le16(&raw, 0x76)) << 32,
            ibody_xattrs,
        })
    }

    /// The extents of a file or directory: (logical block, physical block,
    /// length, initialized), sorted by logical block.
    fn extents(&mut self, inode: &Inode) -> Result<Vec<(u64, u64, u64, bool)>, Ext4Error> {
        let ino = inode.ino;
        if inode.flags & INLINE_DATA_FL != 0 {
            return Err(Ext4Error::Unsupported(format!("inline data (inode {ino})")));
        }
        if inode.flags & EXTENTS_FL == 0 {
            if inode.size == 0 {
                return Ok(Vec::new());
            }
            return Err(Ext4Error::Unsupported(format!("a block-mapped file (inode {ino})")));
        }
        let mut out = Vec::new();
        let mut nodes = std::collections::HashSet::new();
        self.walk_extents(ino, &inode.block, MAX_DEPTH + 1, &mut out, &mut nodes)?;
        out.sort_by_key(|e| e.0);
        for w in out.windows(2) {
            if w[0].0 + w[0].2 > w[1].0 {
                return Err(Ext4Error::Corrupt { ino, what: "overlapping extents".into() });
            }
        }
        Ok(out)
    }

    /// Take one from the extent budget (see `extent_budget`).
    fn spend_extent(&mut self, ino: u64) -> Result<(), Ext4Error> {
        self.extent_budget = self.extent_budget.checked_sub(1).ok_or_else(|| Ext4Error::Corrupt {
            ino,
            what: "more extents and extent nodes than the image has blocks".into(),
        })?;
        Ok(())
    }

    /// `nodes`: the blocks of the extent nodes below the inode seen so far
    /// (a node reached twice is a crafted tree).
    fn walk_extents(
        &mut self,
        ino: u64,
        node: &[u8],
        depth_left: u16,
        out: &mut Vec<(u64, u64, u64, bool)>,
        nodes: &mut std::collections::HashSet<u64>,
    ) -> Result<(), Ext4Error> {
        let corrupt = |what: &str| Ext4Error::Corrupt { ino, what: what.into() };
        self.spend_extent(ino)?;
        if node.len() < 12 || le16(node, 0) != EXTENT_MAGIC {
            return Err(corrupt("bad extent header"));
        }
        let entries = usize::from(le16(node, 2));
        let depth = le16(node, 6);
        if depth >= depth_left || 12 + entries * 12 > node.len() {
            return Err(corrupt("bad extent tree"));
        }
        for i in 0..entries {
            let e = &node[12 + i * 12..24 + i * 12];
            if depth == 0 {
                self.spend_extent(ino)?;
                let logical = u64::from(le32(e, 0));
                let raw_len = u64::from(le16(e, 4));
                let (len, init) = if raw_len > 32768 { (raw_len - 32768, false) } else { (raw_len, true) };
                let start = u64::from(le16(e, 6)) << 32 | u64::from(le32(e, 8));
                let end = start.checked_add(len).and_then(|e| e.checked_mul(self.block_size));
                if len == 0 || end.map_or(true, |end| end > self.len) {
                    return Err(corrupt("extent past the end of the image"));
                }
                out.push((logical, start, len, init));
                if out.len() > 1 << 22 {
                    return Err(corrupt("too many extents"));
                }
            } else {
                let leaf = u64::from(le32(e, 4)) | u64::from(le16(e, 8)) << 32;
                if !nodes.insert(leaf) {
                    return Err(corrupt("an extent node reached twice"));
                }
                let child = self.block(ino, leaf)?;
                self.walk_extents(ino, &child, depth, out, nodes)?;
            }
        }
        Ok(())
    }

    /// A reader of the first `inode.size` bytes of a file (holes and
    /// unwritten extents read as zeros).
    pub(crate) fn contents<'a>(&'a mut self, inode: &Inode) -> Result<impl Read + 'a, Ext4Error> {
        let extents = self.extents(inode)?;
        Ok(FileReader { fs: self, ino: inode.ino, extents, pos: 0, size: inode.size, next: 0 })
    }

    /// A symlink's target.
    pub(crate) fn symlink(&mut self, inode: &Inode) -> Result<Vec<u8>, Ext4Error> {
        let corrupt = |what: &str| Ext4Error::Corrupt { ino: inode.ino, what: what.into() };
        if inode.size > 4096 {
            return Err(corrupt("symlink target too long"));
        }
        let len = usize::try_from(inode.size).expect("bounded");
        if inode.flags & EXTENTS_FL == 0 && len < 60 {
            return Ok(inode.block[..len].to_vec());
        }
        let mut out = Vec::new();
        self.contents(inode)?.read_to_end(&mut out).map_err(Ext4Error::Io)?;
        Ok(out)
    }

    /// A directory's entries: (name, inode), "." and ".." left out.
    pub fn dir(&mut self, inode: &Inode) -> Result<Vec<(Vec<u8>, u64)>, Ext4Error> {
        self.dir_limited(inode, MAX_DIR_ENTRIES).map_err(|e| match e {
            Ext4Error::TooManyEntries { ino, .. } => {
                Ext4Error::Corrupt { ino, what: "too many directory entries".into() }
            }
            other => other,
        })
    }

    /// [`Ext4::dir`], at most `max_entries` entries (more is an error).
    /// The directory is parsed a block at a time: memory grows with the
    /// entries, not with the directory's size.
    pub fn dir_limited(&mut self, inode: &Inode, max_entries: usize) -> Result<Vec<(Vec<u8>, u64)>, Ext4Error> {
        let ino = inode.ino;
        let corrupt = |what: &str| Ext4Error::Corrupt { ino, what: what.into() };
        if inode.size > MAX_DIR_BYTES {
            return Err(corrupt("directory too large"));
        }
        self.dir_budget = self
            .dir_budget
            .checked_sub(inode.size)
            .ok_or_else(|| corrupt("more directory bytes read than the image holds"))?;
        let bs = usize::try_from(self.block_size).expect("bounded");
        let mut block = vec![0u8; bs];
        let mut out = Vec::new();
        let mut reader = self.contents(inode)?;
        loop {
            let mut got = 0;
            while got < bs {
                let n = reader.read(&mut block[got..]).map_err(Ext4Error::Io)?;
                if n == 0 {
                    break;
                }
                got += n;
            }
            if got == 0 {
                break;
            }
            let block = &block[..got];
            let mut at = 0;
            while at + 8 <= block.len() {
                let child = u64::from(le32(block, at));
                let rec_len = usize::from(le16(block, at + 4));
                let name_len = usize::from(block[at + 6]);
                if rec_len < 8 || at + rec_len > block.len() || name_len + 8 > rec_len {
                    return Err(corrupt("bad directory entry"));
                }
                let name = &block[at + 8..at + 8 + name_len];
                if child != 0 && name != b"." && name != b".." {
                    if name.is_empty() || name.contains(&b'/') || name.contains(&0) {
                        return Err(corrupt("bad name in a directory"));
                    }
                    out.push((name.to_vec(), child));
                    if out.len() > max_entries {
                        return Err(Ext4Error::TooManyEntries { ino, max: max_entries });
                    }
                }
                at += rec_len;
            }
        }
        out.sort();
        if out.windows(2).any(|w| w[0].0 == w[1].0) {
            return Err(corrupt("duplicate names in a directory"));
        }
        Ok(out)
    }

    /// The inode at `path` (components separated by `/`) from the root.
    /// A second reader of the same image, with bounds of its own (a pass
    /// over file data after a walk over the directories).
    pub fn reopen(&mut self) -> Result<Ext4<&mut R>, Ext4Error> {
        Ext4::open(&mut self.dev)
    }

    pub fn lookup(&mut self, path: &str) -> Result<Inode, Ext4Error> {
        let mut cur = self.inode(ROOT_INO)?;
        for comp in path.split('/').filter(|c| !c.is_empty()) {
            if !cur.is_dir() {
                return Err(Ext4Error::NotFound(path.into()));
            }
            let entries = self.dir(&cur)?;
            let next = entries.iter().find(|(n, _)| n == comp.as_bytes()).map(|(_, i)| *i);
            cur = self.inode(next.ok_or_else(|| Ext4Error::NotFound(path.into()))?)?;
        }
        Ok(cur)
    }

    /// Every xattr of an inode, by full name, in-inode ones first.
    pub fn xattrs(&mut self, inode: &Inode) -> Result<Vec<(String, Vec<u8>)>, Ext4Error> {
        let ino = inode.ino;
        let mut out = Vec::new();
        if !inode.ibody_xattrs.is_empty() {
            parse_xattrs(ino, &inode.ibody_xattrs, 0, &mut out)?;
        }
        if inode.file_acl != 0 {
            let b = self.block(ino, inode.file_acl)?;
            if le32(&b, 0) != XATTR_MAGIC {
                return Err(Ext4Error::Corrupt { ino, what: "bad xattr block".into() });
            }
            parse_xattrs(ino, &b, 32, &mut out)?;
        }
        Ok(out)
    }
}

/// Entries start at `first`; values are at offsets from the start of `area`
/// (the block) or, in the inode, from the first entry.
fn parse_xattrs(ino: u64, area: &[u8], first: usize, out: &mut Vec<(String, Vec<u8>)>) -> Result<(), Ext4Error> {
    let corrupt = |what: &str| Ext4Error::Corrupt { ino, what: what.into() };
    let mut at = first;
    let mut count = 0;
    while at + 4 <= area.len() && le32(area, at) != 0 {
        if at + 16 > area.len() {
            return Err(corrupt("xattr entry past its area"));
        }
        let name_len = usize::from(area[at]);
        let index = area[at + 1];
        let value_off = usize::from(le16(area, at + 2));
        let value_inum = le32(area, at + 4);
        let value_size = usize::try_from(le32(area, at + 8)).expect("u32");
        if value_inum != 0 {
            return Err(Ext4Error::Unsupported(format!("an xattr value in an inode (inode {ino})")));
        }
        let name = area.get(at + 16..at + 16 + name_len).ok_or_else(|| corrupt("xattr name past its area"))?;
        let value = area.get(value_off..value_off + value_size).ok_or_else(|| corrupt("xattr value past its area"))?;
        let prefix = match index {
            0 => "",
            1 => "user.",
            2 => "system.posix_acl_access",
            3 => "system.posix_acl_default",
            4 => "trusted.",
            6 => "security.",
            7 => "system.",
            8 => "system.richacl",
            _ => return Err(corrupt("unknown xattr name index")),
        };
        let name = std::str::from_utf8(name).map_err(|_| corrupt("xattr name not UTF-8"))?;
        let value = match index {
            // POSIX ACLs: ext4 keeps its own compact form on disk; a layer
            // carries the form the kernel's getxattr gives (and setxattr
            // takes), as docker and podman write and restore it.
            2 | 3 => acl_to_xattr(value).ok_or_else(|| corrupt("malformed POSIX ACL"))?,
            _ => value.to_vec(),
        };
        out.push((format!("{prefix}{name}"), value));
        count += 1;
        if count > 4096 {
            return Err(corrupt("too many xattrs"));
        }
        at += (16 + name_len).div_ceil(4) * 4;
    }
    Ok(())
}

/// ext4's on-disk POSIX ACL (`fs/ext4/acl.h`: version 1, then entries of
/// (tag, perm) for the owner, group, mask and other classes and (tag, perm,
/// id) for named users and groups) in the kernel's xattr form
/// (`posix_acl_xattr`: version 2, then (tag, perm, id) entries, id
/// 0xffffffff where it has none). None when it does not parse.
pub fn acl_to_xattr(disk: &[u8]) -> Option<Vec<u8>> {
    const USER: u16 = 0x02;
    const GROUP: u16 = 0x08;
    const SHORT: [u16; 4] = [0x01, 0x04, 0x10, 0x20];
    if disk.len() < 4 || le32(disk, 0) != 1 {
        return None;
    }
    let mut entries = Vec::new();
    let mut at = 4;
    while at < disk.len() {
        let field = |from: usize, to: usize| disk.get(from..to);
        let tag = u16::from_le_bytes(field(at, at + 2)?.try_into().ok()?);
        let perm = u16::from_le_bytes(field(at + 2, at + 4)?.try_into().ok()?);
        let id = match tag {
            USER | GROUP => {
                at += 8;
                u32::from_le_bytes(field(at - 4, at)?.try_into().ok()?)
            }
            t if SHORT.contains(&t) => {
                at += 4;
                u32::MAX
            }
            _ => return None,
        };
        entries.push((tag, perm, id));
    }
    (at == disk.len()).then(|| acl_xattr(entries))
}

/// A POSIX ACL in the kernel's xattr form (`posix_acl_xattr`, version 2)
/// of its (tag, perm, id) entries; id 0xffffffff for the owner, group,
/// mask and other entries.
pub fn acl_xattr(entries: impl IntoIterator<Item = (u16, u16, u32)>) -> Vec<u8> {
    let mut out = 2u32.to_le_bytes().to_vec();
    for (tag, perm, id) in entries {
        out.extend_from_slice(&tag.to_le_bytes());
        out.extend_from_slice(&perm.to_le_bytes());
        out.extend_from_slice(&id.to_le_bytes());
    }
    out
}

/// Reads a file's bytes through its extents.
struct FileReader<'a, R> {
    fs: &'a mut Ext4<R>,
    ino: u64,
    extents: Vec<(u64, u64, u64, bool)>,
    pos: u64,
    size: u64,
    next: usize,
}

impl<R: Read + Seek> Read for FileReader<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.pos >= self.size || buf.is_empty() {
            return Ok(0);
        }
        let bs = self.fs.block_size;
        let lblock = self.pos / bs;
        while self.next < self.extents.len() && self.extents[self.next].0 + self.extents[self.next].2 <= lblock {
            self.next += 1;
        }
        let left = self.size - self.pos;
        let n = match self.extents.get(self.next) {
            Some(&(start, phys, len, init)) if start <= lblock => {
                let end = ((start + len) * bs).min(self.size);
                let n = (end - self.pos).min(buf.len() as u64).min(left);
                let n = usize::try_from(n).expect("bounded by buf");
                if init {
                    let off = (phys + lblock - start) * bs + self.pos % bs;
                    self.fs
                        .read_at(off, &mut buf[..n])
                        .map_err(|e| io::Error::other(format!("inode {}: {e}", self.ino)))?;
                } else {
                    buf[..n].fill(0);
                }
                n
            }
            next => {
                // A hole up to the next extent or the end.
                let end = next.map_or(self.size, |&(s, ..)| (s * bs).min(self.size));
                let n = usize::try_from((end - self.pos).min(buf.len() as u64)).expect("bounded by buf");
                buf[..n].fill(0);
                n
            }
        };
        self.pos += n as u64;
        Ok(n)
    }
}

/// An inode's mtime in seconds: the signed 32-bit `i_mtime`, plus the two
/// epoch bits of `i_mtime_extra` where the inode has them (as the kernel's
/// `ext4_decode_extra_time` does): times from 2038-01-19 on need them.
fn mtime(raw: &[u8], extra_isize: usize) -> i64 {
    let base = i64::from(le32(raw, 0x10) as i32);
    // i_mtime_extra is the 4 bytes at 0x88, inside the extra fields.
    if extra_isize >= 0x0c && raw.len() >= 0x8c {
        base + (i64::from(le32(raw, 0x88) & 3) << 32)
    } else {
        base
    }
}

/// A device inode's (major, minor): the old (16-bit) encoding in
/// i_block[0], else the new one in i_block[1].
pub(crate) fn device(inode: &Inode) -> (u32, u32) {
    let old = le32(&inode.block, 0);
    if old != 0 {
        ((old >> 8) & 0xff, old & 0xff)
    } else {
        let new = le32(&inode.block, 4);
        ((new & 0xfff00) >> 8, (new & 0xff) | ((new >> 12) & 0xfff00))
    }
}

#[cfg(test)]
#[path = "ext4_tests.rs"]
mod tests;
