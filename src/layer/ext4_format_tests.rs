//! The formatter against e2fsprogs (Debian's, the tests' peers): e2fsck
//! finds nothing to fix, dumpe2fs shows the layout mke2fs makes for the
//! same options, debugfs (a writer other than the kernel) can fill it and
//! our reader reads back what it wrote.

use super::*;
use crate::layer::ext4::Ext4;
use crate::layer::test_util::{assert_upper_fixture, read_layer};
use crate::layer::upper::upper_tar;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;
const GROUP_BYTES: u64 = BLOCKS_PER_GROUP * BLOCK_U64;

/// The sizes every check runs on: the smallest, one group, whole groups,
/// one block more (a one-block tail, left out), a size in the middle of a
/// block, the shortest last group that is kept and the longest left out,
/// the same for a last group holding a backup (group 9 = 3^2), and 40
/// groups.
fn sizes() -> Vec<u64> {
    vec![
        MIN_SIZE,
        100 * MIB,
        GIB,
        GIB + 4096,
        100 * MIB + 1000,
        8 * GROUP_BYTES + 508 * BLOCK_U64,
        8 * GROUP_BYTES + 507 * BLOCK_U64,
        9 * GROUP_BYTES + 516 * BLOCK_U64,
        9 * GROUP_BYTES + 515 * BLOCK_U64,
        5 * GIB,
    ]
}

fn image(dir: &Path, size: u64) -> PathBuf {
    let img = dir.join(format!("fs-{size}.img"));
    let f = std::fs::File::create(&img).unwrap();
    f.set_len(size).unwrap();
    format(&f, size).unwrap();
    img
}

/// Run an e2fsprogs tool; its status and stdout + stderr.
fn tool(name: &str, args: &[&str], img: &Path) -> (bool, String) {
    let out = Command::new(name).args(args).arg(img).output().unwrap_or_else(|e| panic!("{name} (e2fsprogs): {e}"));
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

fn assert_fsck_clean(img: &Path) {
    let (ok, out) = tool("e2fsck", &["-fn"], img);
    assert!(ok, "e2fsck -fn {}:\n{out}", img.display());
    for bad in ["Fix", "Clear", "?", "wrong", "WARNING", "invalid"] {
        assert!(!out.contains(bad), "e2fsck -fn {} says {bad:?}:\n{out}", img.display());
    }
}

/// `dumpe2fs` output without what differs between any two formattings
/// (UUID, hash seed, times, bytes written).
fn dumpe2fs(img: &Path, header_only: bool) -> String {
    let (ok, out) = tool("dumpe2fs", if header_only { &["-h"] } else { &[] }, img);
    assert!(ok, "{out}");
    const VARYING: [&str; 8] = [
        "dumpe2fs ",
        "Filesystem UUID:",
        "Directory Hash Seed:",
        "Filesystem created:",
        "Last mount time:",
        "Last write time:",
        "Last checked:",
        "Lifetime writes:",
    ];
    out.lines().filter(|l| !VARYING.iter().any(|v| l.starts_with(v))).collect::<Vec<_>>().join("\n")
}

/// A header field of `dumpe2fs -h`.
fn field(header: &str, name: &str) -> String {
    let line = header.lines().find(|l| l.starts_with(&format!("{name}:"))).unwrap_or_else(|| panic!("{name}"));
    line[name.len() + 1..].trim().to_string()
}

/// What mke2fs makes with the options this formatter stands for (and
/// `extra` ones), its times 1 (not now) with `fixed_time`.
fn mke2fs(dir: &Path, size: u64, extra: &[&str], fixed_time: bool) -> PathBuf {
    let img = dir.join(format!("mkfs-{size}.img"));
    std::fs::File::create(&img).unwrap().set_len(size).unwrap();
    let features =
        "none,ext_attr,dir_index,filetype,extent,64bit,sparse_super,large_file,huge_file,dir_nlink,extra_isize";
    let mut cmd = Command::new("mkfs.ext4");
    if fixed_time {
        cmd.env("E2FSPROGS_FAKE_TIME", "1");
    }
    let out = cmd
        .args(["-F", "-q", "-b", "4096", "-I", "256", "-i", "16384", "-m", "0", "-O", features])
        .args(extra)
        .arg(&img)
        .output()
        .expect("mkfs.ext4 (e2fsprogs)");
    assert!(out.status.success(), "mkfs.ext4: {}", String::from_utf8_lossy(&out.stderr));
    img
}

fn mkfs_reference(dir: &Path, size: u64) -> PathBuf {
    with_overlay_dirs(mke2fs(dir, size, &["-E", "root_owner=0:0"], false))
}

/// mke2fs's image with the overlay's upper and work dirs made by debugfs,
/// as the formatter makes them (times 1 where `E2FSPROGS_FAKE_TIME` is).
fn with_overlay_dirs(img: PathBuf) -> PathBuf {
    for dir in [SCRATCH_UPPER, SCRATCH_WORK] {
        let out = Command::new("debugfs")
            .env("E2FSPROGS_FAKE_TIME", "1")
            .args(["-w", "-R", &format!("mkdir {dir}")])
            .arg(&img)
            .output()
            .expect("debugfs (e2fsprogs)");
        let text = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success() && !text.contains(dir), "debugfs mkdir {dir}: {text}");
    }
    img
}

#[test]
fn e2fsck_finds_nothing_to_fix() {
    let t = tempfile::tempdir().unwrap();
    for size in sizes() {
        let img = image(t.path(), size);
        assert_fsck_clean(&img);
        std::fs::remove_file(img).unwrap();
    }
}

#[test]
fn dumpe2fs_shows_the_features_counts_and_mke2fs_layout() {
    let t = tempfile::tempdir().unwrap();
    for size in sizes() {
        let img = image(t.path(), size);
        let geo = Geometry::new(size).unwrap();
        let h = dumpe2fs(&img, true);
        assert_eq!(
            field(&h, "Filesystem features"),
            "ext_attr dir_index filetype extent 64bit sparse_super large_file huge_file dir_nlink extra_isize",
            "{size}"
        );
        assert_eq!(field(&h, "Filesystem state"), "clean");
        assert_eq!(field(&h, "Block size"), "4096");
        assert_eq!(field(&h, "Inode size"), "256");
        assert_eq!(field(&h, "Reserved block count"), "0");
        assert_eq!(field(&h, "Block count"), geo.blocks.to_string());
        assert_eq!(field(&h, "Inode count"), geo.inodes_count().to_string());
        assert_eq!(field(&h, "Free blocks"), geo.free_blocks().to_string());
        assert_eq!(field(&h, "Free inodes"), (geo.inodes_count() - 13).to_string());
        // One inode per 16 KiB of the device, a whole number of inode
        // table blocks per group; nothing but metadata, the root's block,
        // lost+found's 4, upper's and work's in use.
        assert!(geo.inodes_count() >= size / 16384 && geo.inodes_count() < size / 16384 + 16 * geo.groups);
        assert_eq!(geo.blocks - geo.free_blocks(), geo.overhead() + 7);
        assert!(geo.blocks <= size / 4096 && size / 4096 - geo.blocks < 32768);

        // The same layout, group by group, as mke2fs's for these options.
        let reference = mkfs_reference(t.path(), size);
        let ours = dumpe2fs(&img, false);
        let theirs = dumpe2fs(&reference, false);
        assert!(ours == theirs, "size {size}: dumpe2fs differs from mke2fs's:\n--- ours\n{ours}\n--- mke2fs\n{theirs}");
        for what in ["stat <2>", "stat <11>", "stat <12>", "stat <13>", "ls -l /", "ls -l /lost+found", "ls -l /upper"]
        {
            let show = |img: &Path| {
                let (ok, out) = tool("debugfs", &["-R", what], img);
                assert!(ok, "{out}");
                // Times (ours are 0) are the only difference.
                out.lines()
                    .filter(|l| !l.contains("time:") && !l.starts_with("debugfs "))
                    .map(strip_dates)
                    .collect::<Vec<_>>()
            };
            assert_eq!(show(&img), show(&reference), "size {size}: {what}");
        }
        std::fs::remove_file(img).unwrap();
        std::fs::remove_file(reference).unwrap();
    }
}

/// An `ls -l` line without its date and time columns.
fn strip_dates(line: &str) -> String {
    let mut cols: Vec<&str> = line.split_whitespace().collect();
    if cols.len() == 9 {
        cols.drain(6..8);
    }
    cols.join(" ")
}

/// mke2fs's image for the same options, UUID and hash seed, with its
/// times (1 here, 0 in ours) and its count of bytes written zeroed.
fn mkfs_same_bytes(dir: &Path, size: u64, ours: &Path) -> PathBuf {
    let h = tool("dumpe2fs", &["-h"], ours).1;
    let (uuid, seed) = (field(&h, "Filesystem UUID"), field(&h, "Directory Hash Seed"));
    let hash_seed = format!("root_owner=0:0,hash_seed={seed}");
    let img = with_overlay_dirs(mke2fs(dir, size, &["-U", &uuid, "-E", &hash_seed], true));
    let f = std::fs::OpenOptions::new().read(true).write(true).open(&img).unwrap();
    let zero = |at: u64, len: usize| std::os::unix::fs::FileExt::write_all_at(&f, &vec![0; len], at).unwrap();
    let geo = Geometry::new(size).unwrap();
    // debugfs, like the kernel, updates the primary super block and
    // descriptors only; the formatter writes its backups with the counts
    // the dirs leave, so copy those to mke2fs's backups.
    let read = |at: u64, len: usize| {
        let mut b = vec![0; len];
        std::os::unix::fs::FileExt::read_exact_at(&f, &mut b, at).unwrap();
        b
    };
    let put = |at: u64, b: &[u8]| std::os::unix::fs::FileExt::write_all_at(&f, b, at).unwrap();
    let gdt_len = usize::try_from(geo.gdt_blocks).unwrap() * BLOCK;
    let (counts, counts_hi, gdt) = (read(1024 + 0xC, 8), read(1024 + 0x158, 4), read(BLOCK_U64, gdt_len));
    for g in (1..geo.groups).filter(|&g| Geometry::has_super(g)) {
        put(g * GROUP_BYTES + 0xC, &counts);
        put(g * GROUP_BYTES + 0x158, &counts_hi);
        put(g * GROUP_BYTES + BLOCK_U64, &gdt);
    }
    for g in (0..geo.groups).filter(|&g| Geometry::has_super(g)) {
        let sb = if g == 0 { 1024 } else { g * GROUP_BYTES };
        for field in [0x30, 0x40, 0x108] {
            zero(sb + field, 4); // s_wtime, s_lastcheck, s_mkfs_time
        }
        zero(sb + 0x178, 8); // s_kbytes_written
    }
    for ino in [1, 2, 11, 12, 13] {
        let inode = geo.inode_table(0) * BLOCK_U64 + (ino - 1) * 256;
        for field in [0x8, 0xC, 0x10, 0x90] {
            zero(inode + field, 4); // a, c, m and crtime
        }
    }
    img
}

#[test]
fn the_bytes_are_mke2fs_s_but_for_times() {
    let t = tempfile::tempdir().unwrap();
    for size in [MIN_SIZE, 9 * GROUP_BYTES + 516 * BLOCK_U64] {
        let img = image(t.path(), size);
        let theirs = mkfs_same_bytes(t.path(), size, &img);
        if let Some(at) = first_difference(&img, &theirs) {
            panic!(
                "size {size}: the first byte that differs from mke2fs's is {at} (block {} + {:#x})",
                at / 4096,
                at % 4096
            );
        }
        std::fs::remove_file(img).unwrap();
        std::fs::remove_file(theirs).unwrap();
    }
}

#[test]
fn debugfs_fills_it_e2fsck_agrees_and_our_reader_reads_it_back() {
    let t = tempfile::tempdir().unwrap();
    let img = image(t.path(), 64 * MIB);
    let src = t.path().join("src");
    std::fs::create_dir(&src).unwrap();
    std::fs::write(src.join("passwd"), b"root:x:0:0::/root:/bin/sh\n").unwrap();
    let big: Vec<u8> = (0..300_000u32).flat_map(|i| i.to_le_bytes()).collect();
    std::fs::write(src.join("big"), &big).unwrap();
    let sparse = std::fs::File::create(src.join("sparse")).unwrap();
    sparse.set_len(10 * MIB).unwrap();
    drop(sparse);
    std::fs::write(src.join("tail"), b"x").unwrap();
    std::fs::write(src.join("xattr"), [7u8; 3000]).unwrap();
    let long_target = format!("/nix/store/{}/bin/hello", "x".repeat(100));
    let s = |name: &str| src.join(name).display().to_string();
    let mut cmds = vec![
        "cd upper".to_string(),
        "mkdir etc".into(),
        "cd etc".into(),
        format!("write {} passwd", s("passwd")),
        "sif passwd mode 0100640".into(),
        "sif passwd uid 100000".into(),
        "sif passwd gid 42".into(),
        "sif passwd mtime 1700000000".into(),
        "symlink short passwd".into(),
        format!("symlink long {long_target}"),
        "cd /upper".into(),
        format!("write {} big", s("big")),
        "ln big big2".into(),
        "sif big links_count 2".into(),
        format!("write {} sparse", s("sparse")),
        "mknod gone c 0 0".into(),
        "mknod null c 1 3".into(),
        "mkdir opaque".into(),
        "ea_set opaque trusted.overlay.opaque y".into(),
        format!("ea_set -f {} big user.big", s("xattr")),
        "mkdir many".into(),
        "cd many".into(),
    ];
    for i in 0..600 {
        cmds.push(format!("write {} file-with-a-longish-name-{i:05}", s("tail")));
    }
    let script = t.path().join("cmds");
    std::fs::write(&script, cmds.join("\n") + "\n").unwrap();
    let (ok, out) = tool("debugfs", &["-w", "-f", &script.display().to_string()], &img);
    assert!(ok && !out.contains("rror") && !out.contains("not found"), "debugfs:\n{out}");
    assert_fsck_clean(&img);

    let mut fs = Ext4::open(std::fs::File::open(&img).unwrap()).unwrap();
    let mut tar = Vec::new();
    upper_tar(&mut fs, "upper", &mut tar, u64::MAX).unwrap();
    let entries = read_layer(&tar);
    let get = |p: &str| entries.iter().find(|g| g.path.trim_end_matches('/') == p).unwrap_or_else(|| panic!("{p}"));
    let passwd = get("etc/passwd");
    assert_eq!(passwd.data, b"root:x:0:0::/root:/bin/sh\n");
    assert_eq!((passwd.mode & 0o7777, passwd.uid, passwd.gid, passwd.mtime), (0o640, 100_000, 42, 1_700_000_000));
    assert_upper_fixture(&entries, &big, &long_target);
    assert_eq!((get("gone").ty, get("gone").dev), (b'3', (0, 0)));
    assert_eq!(get("null").dev, (1, 3));
    let x = |p: &str, k: &str| get(p).xattrs.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    assert_eq!(x("opaque", "trusted.overlay.opaque"), Some(b"y".to_vec()));
    assert_eq!(x("big", "user.big"), Some(vec![7u8; 3000]), "a block xattr");
    let many: Vec<_> = entries.iter().filter(|g| g.path.starts_with("many/")).collect();
    assert_eq!(many.len(), 600);
    assert!(many.iter().all(|g| g.data == b"x"));

    // And the fresh filesystem's root: lost+found and the overlay's empty
    // upper and work dirs, 0:0, 0755.
    let fresh = image(&t.path().join("src"), MIN_SIZE);
    let mut fs = Ext4::open(std::fs::File::open(&fresh).unwrap()).unwrap();
    let root = fs.lookup("/").unwrap();
    assert_eq!((root.mode, root.uid, root.gid, root.links), (0o040_755, 0, 0, 5));
    assert_eq!(
        fs.dir(&root).unwrap(),
        vec![(b"lost+found".to_vec(), 11), (b"upper".to_vec(), 12), (b"work".to_vec(), 13)]
    );
    let lpf = fs.lookup("lost+found").unwrap();
    assert_eq!((lpf.mode, lpf.links, lpf.size), (0o040_700, 2, 16384));
    assert!(fs.dir(&lpf).unwrap().is_empty());
    for dir in [SCRATCH_UPPER, SCRATCH_WORK] {
        let d = fs.lookup(dir).unwrap();
        assert_eq!((d.mode, d.uid, d.gid, d.links, d.size), (0o040_755, 0, 0, 2, 4096), "{dir}");
        assert!(fs.dir(&d).unwrap().is_empty(), "{dir}");
    }
    let mut tar = Vec::new();
    upper_tar(&mut fs, "upper", &mut tar, u64::MAX).unwrap();
    assert!(read_layer(&tar).is_empty(), "an empty upper dir is an empty layer");
}

#[test]
fn the_image_stays_sparse_and_the_same_size_gives_the_same_bytes() {
    let t = tempfile::tempdir().unwrap();
    let a = image(t.path(), GIB);
    let b_dir = t.path().join("b");
    std::fs::create_dir(&b_dir).unwrap();
    let b = image(&b_dir, GIB);
    let on_disk = std::fs::metadata(&a).unwrap().blocks() * 512;
    eprintln!("1 GiB image: {on_disk} bytes on disk");
    assert!(on_disk <= 256 << 10, "1 GiB image uses {on_disk} bytes");
    assert_eq!(std::fs::metadata(&a).unwrap().len(), GIB);
    assert_eq!(first_difference(&a, &b), None, "two 1 GiB images differ");
    let big = image(t.path(), 5 * GIB);
    let on_disk = std::fs::metadata(&big).unwrap().blocks() * 512;
    assert!(on_disk <= 1 << 20, "5 GiB image uses {on_disk} bytes");
    // Another size, another UUID.
    let other = image(t.path(), GIB + 64 * MIB);
    let uuid = |img: &Path| field(&tool("dumpe2fs", &["-h"], img).1, "Filesystem UUID");
    assert_ne!(uuid(&a), uuid(&other));
}

/// The offset of the first byte where two files differ (or one ends).
fn first_difference(a: &Path, b: &Path) -> Option<u64> {
    use std::io::Read;
    let (mut a, mut b) = (std::fs::File::open(a).unwrap(), std::fs::File::open(b).unwrap());
    let (mut x, mut y) = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
    let mut at = 0u64;
    loop {
        // Whole chunks (short only at the end), so that the two line up.
        let fill = |r: &mut dyn Read, buf: &mut [u8]| {
            let mut n = 0;
            while n < buf.len() {
                match r.read(&mut buf[n..]).unwrap() {
                    0 => break,
                    k => n += k,
                }
            }
            n
        };
        let (n, m) = (fill(&mut a, &mut x), fill(&mut b, &mut y));
        if x[..n.min(m)] != y[..n.min(m)] {
            return (0..n.min(m)).find(|&i| x[i] != y[i]).map(|i| at + i as u64);
        }
        if n != m {
            return Some(at + n.min(m) as u64);
        }
        if n == 0 {
            return None;
        }
        at += n as u64;
    }
}

#[test]
fn too_small_too_large_and_wrong_length_are_refused() {
    assert_eq!(MIN_SIZE, crate::job::run_as_root::MIN_DISK_MIB << 20, "one smallest disk");
    for size in [0, 4096, 1 << 20, MIN_SIZE - 1] {
        let mut out = std::io::Cursor::new(Vec::new());
        let err = format_to(&mut out, size).unwrap_err();
        assert!(matches!(err, FormatError::TooSmall { size: s } if s == size), "{err}");
        assert!(err.to_string().contains("at least 8 MiB"), "{err}");
        assert!(out.get_ref().is_empty(), "nothing written");
    }
    let err = format_to(&mut std::io::Cursor::new(Vec::new()), MAX_SIZE + 1).unwrap_err();
    assert!(matches!(err, FormatError::TooLarge { .. }), "{err}");
    assert!(Geometry::new(MAX_SIZE).is_ok());
    let t = tempfile::tempdir().unwrap();
    let f = std::fs::File::create(t.path().join("short")).unwrap();
    f.set_len(MIN_SIZE - 4096).unwrap();
    assert!(matches!(format(&f, MIN_SIZE), Err(FormatError::Length { .. })));
    assert_eq!(f.metadata().unwrap().blocks(), 0, "nothing written");
}

#[test]
fn geometry_follows_mke2fs_rules() {
    // 8 MiB: one group of 2048 blocks, 512 inodes (32 table blocks).
    let g = Geometry::new(MIN_SIZE).unwrap();
    assert_eq!((g.blocks, g.groups, g.inodes_per_group, g.inode_table_blocks, g.gdt_blocks), (2048, 1, 512, 32, 1));
    // A one-block tail is left out; the inodes still count it.
    let g = Geometry::new(GIB + 4096).unwrap();
    assert_eq!((g.blocks, g.groups, g.inodes_per_group), (262_144, 8, 8192));
    // A tail that holds its metadata and 50 blocks is a group (the
    // boundaries are mke2fs 1.47's for these sizes): after 8 groups the
    // tail's table is 456 blocks, after 9 (group 9 has a backup) 462.
    assert_eq!(Geometry::new(8 * GROUP_BYTES + 508 * 4096).unwrap().groups, 9);
    assert_eq!(Geometry::new(8 * GROUP_BYTES + 507 * 4096).unwrap().groups, 8);
    assert_eq!(Geometry::new(9 * GROUP_BYTES + 516 * 4096).unwrap().groups, 10);
    assert_eq!(Geometry::new(9 * GROUP_BYTES + 515 * 4096).unwrap().groups, 9);
    let backups: Vec<u64> = (0..100).filter(|&g| Geometry::has_super(g)).collect();
    assert_eq!(backups, [0, 1, 3, 5, 7, 9, 25, 27, 49, 81]);
    // 16 TiB: 131072 groups, 2048 descriptor blocks, 2^30 inodes.
    let g = Geometry::new(MAX_SIZE).unwrap();
    assert_eq!((g.groups, g.gdt_blocks, g.inodes_count()), (131_072, 2048, 1 << 30));
}
