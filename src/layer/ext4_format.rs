//! A formatter of an empty ext4 filesystem for the scratch disk, so that
//! the host needs no `mkfs.ext4` (`Documentation/filesystems/ext4/`; the
//! group layout is the one e2fsprogs' `ext2fs_initialize` picks for the
//! same options, `mkfs.ext4 -b 4096 -I 256 -i 16384 -m 0 -O
//! ^has_journal,^resize_inode,^flex_bg,^metadata_csum,64bit`).
//!
//! The filesystem: 4 KiB blocks, 32768 blocks per group, 256-byte inodes,
//! one inode per 16 KiB of disk (rounded up so that each group's inode
//! table fills whole blocks); compat `ext_attr`, `dir_index`; incompat
//! `filetype`, `extents`, `64bit` (64-byte group descriptors); ro_compat
//! `sparse_super`, `large_file`, `huge_file`, `dir_nlink`, `extra_isize`.
//! Its root holds lost+found and the overlay's empty upper and work dirs
//! (`SCRATCH_UPPER`, `SCRATCH_WORK`; inodes 12 and 13, a block each after
//! lost+found's: where debugfs' `mkdir` puts them), so that a job's guest
//! makes nothing before it mounts the overlay.
//! No journal, no reserved GDT blocks, no flex_bg: each group has its own
//! block bitmap, inode bitmap and inode table, after its super block and
//! descriptor backup if it has one (groups 0, 1 and powers of 3, 5, 7). No
//! checksums of any kind (no `metadata_csum`, no `uninit_bg`): every
//! bitmap is written in full, and the inode tables, all zeros but for the
//! root's, lost+found's and the two dirs' inodes, are left as holes. No reserved blocks.
//! A last group too small to hold its own metadata and 50 blocks is left
//! out, as mke2fs does.
//!
//! Only metadata is written (the super block and its backups, the group
//! descriptors and theirs, the bitmaps, the first block of the first inode
//! table, the four directories' blocks: about 16 KiB per
//! 128 MiB group), so a sparse file stays sparse. The same size gives the
//! same bytes: timestamps are 0 and the UUID and directory hash seed are
//! derived from the size.

use std::io::{self, Seek, SeekFrom, Write};

use sha2::{Digest, Sha256};

use crate::protocol::{SCRATCH_UPPER, SCRATCH_WORK};

/// The smallest filesystem [`format`] makes (`job::run_as_root::MIN_DISK_MIB` is
/// derived from it).
pub const MIN_SIZE: u64 = 8 << 20;
/// The largest (inode counts and descriptor tables stay far from their
/// limits).
pub const MAX_SIZE: u64 = 16 << 40;

/// Why the disk cannot be formatted.
#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    #[error("a scratch disk of {size} bytes is too small for ext4: at least {} MiB", MIN_SIZE >> 20)]
    TooSmall { size: u64 },
    #[error("a scratch disk of {size} bytes is too large: at most {} TiB", MAX_SIZE >> 40)]
    TooLarge { size: u64 },
    #[error("the scratch disk image is {len} bytes, not the {size} to format")]
    Length { len: u64, size: u64 },
    #[error("writing the scratch disk's ext4 metadata")]
    Io(#[source] io::Error),
}

const BLOCK: usize = 4096;
const BLOCK_U64: u64 = BLOCK as u64;
const LOG_BLOCK: u32 = 2; // 1024 << 2
const BLOCKS_PER_GROUP: u64 = 8 * BLOCK_U64; // one bitmap block
const INODE_SIZE: usize = 256;
const INODES_PER_BLOCK: u64 = (BLOCK / INODE_SIZE) as u64;
const INODE_RATIO: u64 = 16384;
const DESC_SIZE: usize = 64;
const DESCS_PER_BLOCK: u64 = (BLOCK / DESC_SIZE) as u64;
/// The blocks a last group holds beyond its own metadata, or it is left
/// out (mke2fs's rule).
const MIN_LAST_GROUP_SLACK: u64 = 50;
const FIRST_INO: u32 = 11;
const ROOT_INO: u32 = 2;
const LPF_INO: u32 = 11;
/// The upper dir's inode; the work dir's is the next.
const UPPER_INO: u32 = 12;
const WORK_INO: u32 = 13;
/// Inodes in use: the reserved ones, lost+found, upper and work.
const USED_INODES: u32 = WORK_INO;
/// lost+found is 16 KiB, as mke2fs makes it (room for e2fsck to reconnect
/// files without allocating).
const LPF_BLOCKS: u64 = 4;
/// i_extra_isize of the inodes we write, and s_{min,want}_extra_isize:
/// the fields up to i_projid.
const EXTRA_ISIZE: u16 = 32;

const MAGIC: u16 = 0xEF53;
const COMPAT_EXT_ATTR: u32 = 0x8;
const COMPAT_DIR_INDEX: u32 = 0x20;
const INCOMPAT_FILETYPE: u32 = 0x2;
const INCOMPAT_EXTENTS: u32 = 0x40;
const INCOMPAT_64BIT: u32 = 0x80;
const RO_COMPAT_SPARSE_SUPER: u32 = 0x1;
const RO_COMPAT_LARGE_FILE: u32 = 0x2;
const RO_COMPAT_HUGE_FILE: u32 = 0x8;
const RO_COMPAT_DIR_NLINK: u32 = 0x20;
const RO_COMPAT_EXTRA_ISIZE: u32 = 0x40;
/// s_default_mount_opts: user_xattr, acl (mke2fs's defaults).
const DEFM_XATTR_USER_ACL: u32 = 0x4 | 0x8;
/// s_flags: directory hashes use signed chars (what x86 mke2fs sets; the
/// flag makes it so on every architecture).
const FLAGS_SIGNED_HASH: u32 = 0x1;
const HASH_HALF_MD4: u8 = 1;
const EXTENTS_FL: u32 = 0x0008_0000;
const EXTENT_MAGIC: u16 = 0xF30A;
const FT_DIR: u8 = 2;
const BG_INODE_ZEROED: u16 = 0x4;

/// Where everything goes, for a given size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geometry {
    /// s_blocks_count: the blocks in groups (a tail that makes no group,
    /// and the bytes past the last whole block, are left unused).
    pub blocks: u64,
    pub groups: u64,
    pub inodes_per_group: u64,
    /// Blocks of each group's inode table.
    pub inode_table_blocks: u64,
    /// Blocks of the group descriptor table (and of each backup).
    pub gdt_blocks: u64,
}

impl Geometry {
    /// The layout of a filesystem on `size` bytes.
    pub fn new(size: u64) -> Result<Self, FormatError> {
        if size < MIN_SIZE {
            return Err(FormatError::TooSmall { size });
        }
        if size > MAX_SIZE {
            return Err(FormatError::TooLarge { size });
        }
        let device_blocks = size / BLOCK_U64;
        // The inodes asked for come from the whole device, also when the
        // last group is then left out (as in mke2fs).
        let inodes_wanted = device_blocks * BLOCK_U64 / INODE_RATIO;
        let mut blocks = device_blocks;
        loop {
            let groups = blocks.div_ceil(BLOCKS_PER_GROUP);
            // Round up so the table fills whole blocks (a multiple of 8
            // too: whole bytes of the bitmap).
            let inodes_per_group = inodes_wanted.div_ceil(groups).next_multiple_of(INODES_PER_BLOCK);
            let inode_table_blocks = inodes_per_group / INODES_PER_BLOCK;
            let gdt_blocks = groups.div_ceil(DESCS_PER_BLOCK);
            let geo = Geometry { blocks, groups, inodes_per_group, inode_table_blocks, gdt_blocks };
            let rem = blocks % BLOCKS_PER_GROUP;
            if rem != 0 && rem < geo.meta_blocks(groups - 1) + MIN_LAST_GROUP_SLACK {
                if groups == 1 {
                    return Err(FormatError::TooSmall { size });
                }
                blocks -= rem;
                continue;
            }
            // Far inside the limits for sizes up to MAX_SIZE; the kernel
            // refuses a group with more inodes than a bitmap block holds.
            assert!(inodes_per_group <= 8 * BLOCK_U64 && geo.inodes_count() <= u64::from(u32::MAX));
            assert!(geo.used_blocks(0) <= geo.group_len(0));
            return Ok(geo);
        }
    }

    pub fn inodes_count(&self) -> u64 {
        self.inodes_per_group * self.groups
    }

    /// Whether group `g` holds a super block and descriptor backup
    /// (sparse_super: 0, 1 and the powers of 3, 5 and 7).
    pub fn has_super(g: u64) -> bool {
        fn power_of(mut g: u64, base: u64) -> bool {
            while g % base == 0 {
                g /= base;
            }
            g == 1
        }
        g <= 1 || power_of(g, 3) || power_of(g, 5) || power_of(g, 7)
    }

    fn group_start(&self, g: u64) -> u64 {
        g * BLOCKS_PER_GROUP
    }

    fn group_len(&self, g: u64) -> u64 {
        BLOCKS_PER_GROUP.min(self.blocks - self.group_start(g))
    }

    /// The super block and descriptors, bitmaps and inode table at the
    /// start of group `g`.
    fn meta_blocks(&self, g: u64) -> u64 {
        let sb = if Self::has_super(g) { 1 + self.gdt_blocks } else { 0 };
        sb + 2 + self.inode_table_blocks
    }

    fn block_bitmap(&self, g: u64) -> u64 {
        self.group_start(g) + if Self::has_super(g) { 1 + self.gdt_blocks } else { 0 }
    }

    fn inode_bitmap(&self, g: u64) -> u64 {
        self.block_bitmap(g) + 1
    }

    fn inode_table(&self, g: u64) -> u64 {
        self.block_bitmap(g) + 2
    }

    /// The root directory's block: the first after group 0's metadata;
    /// lost+found's follow it, then upper's and work's.
    fn root_block(&self) -> u64 {
        self.meta_blocks(0)
    }

    fn lpf_block(&self) -> u64 {
        self.root_block() + 1
    }

    fn upper_block(&self) -> u64 {
        self.lpf_block() + LPF_BLOCKS
    }

    fn work_block(&self) -> u64 {
        self.upper_block() + 1
    }

    /// Blocks in use in group `g`.
    fn used_blocks(&self, g: u64) -> u64 {
        self.meta_blocks(g) + if g == 0 { self.work_block() + 1 - self.root_block() } else { 0 }
    }

    fn used_inodes(g: u64) -> u64 {
        if g == 0 {
            u64::from(USED_INODES)
        } else {
            0
        }
    }

    pub fn free_blocks(&self) -> u64 {
        (0..self.groups).map(|g| self.group_len(g) - self.used_blocks(g)).sum()
    }

    pub fn free_inodes(&self) -> u64 {
        self.inodes_count() - u64::from(USED_INODES)
    }

    /// Metadata blocks in the whole filesystem (s_overhead_clusters).
    fn overhead(&self) -> u64 {
        (0..self.groups).map(|g| self.meta_blocks(g)).sum()
    }
}

/// Format `file`, already `size` bytes long (and sparse), as an ext4
/// filesystem whose root, lost+found and empty upper and work dirs belong
/// to 0:0.
pub fn format(file: &std::fs::File, size: u64) -> Result<(), FormatError> {
    let len = file.metadata().map_err(FormatError::Io)?.len();
    if len != size {
        return Err(FormatError::Length { len, size });
    }
    let mut dev = file;
    format_to(&mut dev, size)?;
    dev.flush().map_err(FormatError::Io)
}

/// Write the metadata of the scratch ext4 filesystem on `size` bytes to
/// `dev`, in ascending offsets; nothing else is written.
pub fn format_to<W: Write + Seek>(dev: &mut W, size: u64) -> Result<(), FormatError> {
    let geo = Geometry::new(size)?;
    let mut at = |offset: u64, bytes: &[u8]| -> Result<(), FormatError> {
        dev.seek(SeekFrom::Start(offset)).map_err(FormatError::Io)?;
        dev.write_all(bytes).map_err(FormatError::Io)
    };
    let gdt = descriptors(&geo);
    // Every group but the first has the same inode bitmap: only the
    // padding past the last inode set.
    let mut inode_bitmap = vec![0u8; BLOCK];
    set_bits(&mut inode_bitmap, geo.inodes_per_group, 8 * BLOCK_U64);
    for g in 0..geo.groups {
        if Geometry::has_super(g) {
            let sb = superblock(&geo, g);
            let offset = if g == 0 { 1024 } else { geo.group_start(g) * BLOCK_U64 };
            at(offset, &sb)?;
            at((geo.group_start(g) + 1) * BLOCK_U64, &gdt)?;
        }
        let mut block_bitmap = vec![0u8; BLOCK];
        set_bits(&mut block_bitmap, 0, geo.used_blocks(g));
        set_bits(&mut block_bitmap, geo.group_len(g), BLOCKS_PER_GROUP);
        at(geo.block_bitmap(g) * BLOCK_U64, &block_bitmap)?;
        if g == 0 {
            let mut first = inode_bitmap.clone();
            set_bits(&mut first, 0, Geometry::used_inodes(0));
            at(geo.inode_bitmap(0) * BLOCK_U64, &first)?;
            at(geo.inode_table(0) * BLOCK_U64, &first_inode_table_block(&geo))?;
            at(
                geo.root_block() * BLOCK_U64,
                &dir_block(&[
                    (ROOT_INO, b"."),
                    (ROOT_INO, b".."),
                    (LPF_INO, b"lost+found"),
                    (UPPER_INO, SCRATCH_UPPER.as_bytes()),
                    (WORK_INO, SCRATCH_WORK.as_bytes()),
                ]),
            )?;
            at(geo.lpf_block() * BLOCK_U64, &dir_block(&[(LPF_INO, b"."), (ROOT_INO, b"..")]))?;
            for i in 1..LPF_BLOCKS {
                at((geo.lpf_block() + i) * BLOCK_U64, &dir_block(&[]))?;
            }
            at(geo.upper_block() * BLOCK_U64, &dir_block(&[(UPPER_INO, b"."), (ROOT_INO, b"..")]))?;
            at(geo.work_block() * BLOCK_U64, &dir_block(&[(WORK_INO, b"."), (ROOT_INO, b"..")]))?;
        } else {
            at(geo.inode_bitmap(g) * BLOCK_U64, &inode_bitmap)?;
        }
    }
    Ok(())
}

fn put16(b: &mut [u8], at: usize, v: u16) {
    b[at..at + 2].copy_from_slice(&v.to_le_bytes());
}

fn put32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

/// A value of up to twice `width` bytes, split into a low field at `lo`
/// and a high one at `hi`.
fn put_split(b: &mut [u8], lo: usize, hi: usize, width: usize, v: u64) {
    let bytes = v.to_le_bytes();
    assert!(bytes[2 * width..].iter().all(|&x| x == 0), "{v} does not fit in two {width}-byte fields");
    b[lo..lo + width].copy_from_slice(&bytes[..width]);
    b[hi..hi + width].copy_from_slice(&bytes[width..2 * width]);
}

/// A value known to fit a 32-bit field.
fn u32_of(v: u64) -> u32 {
    u32::try_from(v).expect("bounded by the geometry")
}

/// Set bits `from..to` of a bitmap (whole bytes at a time where it can).
fn set_bits(bitmap: &mut [u8], from: u64, to: u64) {
    let (mut bit, to) = (usize::try_from(from).expect("in a block"), usize::try_from(to).expect("in a block"));
    while bit < to {
        if bit % 8 == 0 && to - bit >= 8 {
            bitmap[bit / 8] = 0xff;
            bit += 8;
        } else {
            bitmap[bit / 8] |= 1 << (bit % 8);
            bit += 1;
        }
    }
}

/// Bytes derived from the size: the same size gives the same filesystem,
/// different sizes different UUIDs.
fn derived(what: &str, geo: &Geometry) -> [u8; 16] {
    let mut h = Sha256::new();
    h.update(b"rootlayer scratch ext4\0");
    h.update(what.as_bytes());
    h.update(geo.blocks.to_le_bytes());
    let mut out = [0u8; 16];
    out.copy_from_slice(&h.finalize()[..16]);
    out
}

/// The super block in group `g` (its number in s_block_group_nr).
fn superblock(geo: &Geometry, g: u64) -> Vec<u8> {
    let mut sb = vec![0u8; 1024];
    put32(&mut sb, 0x0, u32_of(geo.inodes_count()));
    put_split(&mut sb, 0x4, 0x150, 4, geo.blocks); // s_blocks_count
    put_split(&mut sb, 0xC, 0x158, 4, geo.free_blocks()); // s_free_blocks_count
    put32(&mut sb, 0x10, u32_of(geo.free_inodes()));
    put32(&mut sb, 0x14, 0); // s_first_data_block: 0 with 4 KiB blocks
    put32(&mut sb, 0x18, LOG_BLOCK);
    put32(&mut sb, 0x1C, LOG_BLOCK); // s_log_cluster_size (no bigalloc)
    put32(&mut sb, 0x20, u32_of(BLOCKS_PER_GROUP));
    put32(&mut sb, 0x24, u32_of(BLOCKS_PER_GROUP)); // s_clusters_per_group
    put32(&mut sb, 0x28, u32_of(geo.inodes_per_group));
    put16(&mut sb, 0x36, u16::MAX); // s_max_mnt_count: -1, no mount-count checks
    put16(&mut sb, 0x38, MAGIC);
    // s_state: clean; a backup not (as e2fsprogs writes them: e2fsck
    // started from a backup checks the filesystem).
    put16(&mut sb, 0x3A, u16::from(g == 0));
    put16(&mut sb, 0x3C, 1); // s_errors: continue
    put32(&mut sb, 0x4C, 1); // s_rev_level: dynamic
    put32(&mut sb, 0x54, FIRST_INO);
    put16(&mut sb, 0x58, u16::try_from(INODE_SIZE).expect("small"));
    // s_block_group_nr, 16 bits (truncated past 65535, as by e2fsprogs).
    sb[0x5A..0x5C].copy_from_slice(&g.to_le_bytes()[..2]);
    put32(&mut sb, 0x5C, COMPAT_EXT_ATTR | COMPAT_DIR_INDEX);
    put32(&mut sb, 0x60, INCOMPAT_FILETYPE | INCOMPAT_EXTENTS | INCOMPAT_64BIT);
    put32(
        &mut sb,
        0x64,
        RO_COMPAT_SPARSE_SUPER
            | RO_COMPAT_LARGE_FILE
            | RO_COMPAT_HUGE_FILE
            | RO_COMPAT_DIR_NLINK
            | RO_COMPAT_EXTRA_ISIZE,
    );
    let mut uuid = derived("uuid", geo);
    uuid[6] = (uuid[6] & 0x0f) | 0x40; // a version 4 (random) UUID
    uuid[8] = (uuid[8] & 0x3f) | 0x80;
    sb[0x68..0x78].copy_from_slice(&uuid);
    sb[0xEC..0xFC].copy_from_slice(&derived("hash seed", geo)); // s_hash_seed
    sb[0xFC] = HASH_HALF_MD4; // s_def_hash_version
    put16(&mut sb, 0xFE, u16::try_from(DESC_SIZE).expect("small"));
    put32(&mut sb, 0x100, DEFM_XATTR_USER_ACL);
    put16(&mut sb, 0x15C, EXTRA_ISIZE); // s_min_extra_isize
    put16(&mut sb, 0x15E, EXTRA_ISIZE); // s_want_extra_isize
    put32(&mut sb, 0x160, FLAGS_SIGNED_HASH);
    put32(&mut sb, 0x248, u32_of(geo.overhead())); // s_overhead_clusters
    sb
}

/// The group descriptor table, `gdt_blocks` long.
fn descriptors(geo: &Geometry) -> Vec<u8> {
    let mut gdt = vec![0u8; usize::try_from(geo.gdt_blocks).expect("bounded") * BLOCK];
    for g in 0..geo.groups {
        let at = usize::try_from(g).expect("bounded") * DESC_SIZE;
        let d = &mut gdt[at..at + DESC_SIZE];
        put_split(d, 0x0, 0x20, 4, geo.block_bitmap(g));
        put_split(d, 0x4, 0x24, 4, geo.inode_bitmap(g));
        put_split(d, 0x8, 0x28, 4, geo.inode_table(g));
        put_split(d, 0xC, 0x2C, 2, geo.group_len(g) - geo.used_blocks(g)); // free blocks
        put_split(d, 0xE, 0x2E, 2, geo.inodes_per_group - Geometry::used_inodes(g)); // free inodes
        put_split(d, 0x10, 0x30, 2, if g == 0 { 4 } else { 0 }); // directories
                                                                 // Bitmaps and tables initialized (no uninit_bg), the table zeros.
        put16(d, 0x12, BG_INODE_ZEROED);
    }
    gdt
}

/// The first block of group 0's inode table: inodes 1 to 16, of which
/// the root (2), lost+found (11), upper (12) and work (13) are
/// directories; the rest are zero.
fn first_inode_table_block(geo: &Geometry) -> Vec<u8> {
    let mut b = vec![0u8; BLOCK];
    let slot = |ino: u32| usize::try_from(ino - 1).expect("small") * INODE_SIZE;
    let mut dir = |ino: u32, mode: u16, links: u16, start: u64, len: u64| {
        let at = slot(ino);
        dir_inode(&mut b[at..at + INODE_SIZE], mode, links, start, len);
    };
    // The root's links: its own "." and "..", and each subdirectory's "..".
    dir(ROOT_INO, 0o040_755, 5, geo.root_block(), 1);
    dir(LPF_INO, 0o040_700, 2, geo.lpf_block(), LPF_BLOCKS);
    dir(UPPER_INO, 0o040_755, 2, geo.upper_block(), 1);
    dir(WORK_INO, 0o040_755, 2, geo.work_block(), 1);
    b
}

/// A directory inode owned by 0:0, timestamps 0, its `len` blocks from
/// `start` in one extent.
fn dir_inode(raw: &mut [u8], mode: u16, links: u16, start: u64, len: u64) {
    put16(raw, 0x0, mode);
    put_split(raw, 0x4, 0x6C, 4, len * BLOCK_U64); // i_size
    put16(raw, 0x1A, links);
    put32(raw, 0x1C, u32_of(len * BLOCK_U64 / 512)); // i_blocks_lo, in sectors
    put32(raw, 0x20, EXTENTS_FL);
    // i_block: an extent header and one leaf extent.
    let eb = &mut raw[0x28..0x28 + 60];
    put16(eb, 0, EXTENT_MAGIC);
    put16(eb, 2, 1); // eh_entries
    put16(eb, 4, 4); // eh_max: (60 - 12) / 12
    put16(eb, 6, 0); // eh_depth: a leaf
    put32(eb, 12, 0); // ee_block
    put16(eb, 16, u16::try_from(len).expect("a short extent"));
    let start = start.to_le_bytes();
    eb[18..20].copy_from_slice(&start[4..6]); // ee_start_hi
    eb[20..24].copy_from_slice(&start[..4]); // ee_start_lo
    put16(raw, 0x80, EXTRA_ISIZE);
}

/// A directory block holding `entries` (linear, with file types), the last
/// entry's record reaching the end of the block; no entries: one empty
/// record spanning the block.
fn dir_block(entries: &[(u32, &[u8])]) -> Vec<u8> {
    let mut b = vec![0u8; BLOCK];
    if entries.is_empty() {
        put16(&mut b, 4, u16::try_from(BLOCK).expect("4 KiB"));
        return b;
    }
    let mut at = 0;
    for (i, (ino, name)) in entries.iter().enumerate() {
        let rec_len = if i + 1 == entries.len() { BLOCK - at } else { (8 + name.len()).next_multiple_of(4) };
        put32(&mut b, at, *ino);
        put16(&mut b, at + 4, u16::try_from(rec_len).expect("within a block"));
        b[at + 6] = u8::try_from(name.len()).expect("a short name");
        b[at + 7] = FT_DIR;
        b[at + 8..at + 8 + name.len()].copy_from_slice(name);
        at += rec_len;
    }
    b
}

#[cfg(test)]
#[path = "ext4_format_tests.rs"]
mod tests;
