//! A tree as one line per entry, sorted: path, type, mode, uid, gid, size,
//! link target (or device number), FNV-1a of the contents. The e2e tests'
//! witness of a tree: the host writes it of the image's tree after the new
//! layer (`--merged-listing`), the test agent of the merged tree it saw
//! (`--guest-merged-listing`), the tests of an independent unpack of the
//! layer (umoci), and compare them. `of_tree` (the listing of a directory)
//! is in feature `listing`: test builds only.

/// One entry of a listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry<'a> {
    /// Relative to the tree's root.
    pub path: &'a [u8],
    /// `d`, `l`, `f`, or `o` (a device or FIFO).
    pub kind: char,
    /// Permission bits (07777; a symlink's are 0777).
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    /// Bytes of a regular file, else 0.
    pub size: u64,
    /// A symlink's target, a device's number (`st_rdev`, hex), else empty.
    pub link: String,
    /// FNV-1a of a regular file's bytes, else 0.
    pub hash: u64,
}

impl Entry<'_> {
    /// The entry's line (no newline).
    pub fn line(&self) -> String {
        let Entry { path, kind, mode, uid, gid, size, link, hash } = self;
        format!("{}\t{kind}\t{mode:o}\t{uid}\t{gid}\t{size}\t{link}\t{hash:016x}", String::from_utf8_lossy(path))
    }
}

/// FNV-1a, 64-bit, fed in pieces.
#[derive(Debug, Clone, Copy)]
pub struct Fnv1a(pub u64);

impl Default for Fnv1a {
    fn default() -> Self {
        Fnv1a(0xcbf2_9ce4_8422_2325)
    }
}

impl Fnv1a {
    pub fn update(&mut self, data: &[u8]) {
        for b in data {
            self.0 = (self.0 ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3);
        }
    }

    /// The hash of everything `r` gives.
    pub fn of(mut r: impl std::io::Read) -> std::io::Result<u64> {
        let mut h = Fnv1a::default();
        let mut buf = vec![0u8; 1 << 16];
        loop {
            let n = r.read(&mut buf)?;
            if n == 0 {
                return Ok(h.0);
            }
            h.update(&buf[..n]);
        }
    }
}

/// `st_rdev` of a device (glibc's `makedev`).
pub fn makedev(major: u32, minor: u32) -> u64 {
    let (ma, mi) = (u64::from(major), u64::from(minor));
    ((ma & 0xffff_f000) << 32) | ((ma & 0xfff) << 8) | ((mi & 0xffff_ff00) << 12) | (mi & 0xff)
}

/// The listing of `lines` (sorted, one per line).
pub fn join(mut lines: Vec<String>) -> String {
    lines.sort();
    lines.join("\n") + "\n"
}

#[cfg(feature = "listing")]
pub use dir::of_tree;

#[cfg(feature = "listing")]
mod dir {
    use super::{join, Entry, Fnv1a};
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::MetadataExt;
    use std::path::Path;

    /// The listing of the tree under `root` (itself left out).
    pub fn of_tree(root: &Path) -> std::io::Result<String> {
        let mut lines = Vec::new();
        let mut stack = vec![root.to_path_buf()];
        while let Some(dir) = stack.pop() {
            for e in std::fs::read_dir(&dir)? {
                let p = e?.path();
                let m = std::fs::symlink_metadata(&p)?;
                let rel = p.strip_prefix(root).expect("under root");
                let ft = m.file_type();
                let (kind, link, hash) = if ft.is_dir() {
                    stack.push(p.clone());
                    ('d', String::new(), 0)
                } else if ft.is_symlink() {
                    ('l', std::fs::read_link(&p)?.display().to_string(), 0)
                } else if ft.is_file() {
                    ('f', String::new(), Fnv1a::of(std::fs::File::open(&p)?)?)
                } else {
                    ('o', format!("{:x}", m.rdev()), 0)
                };
                let size = if ft.is_file() { m.len() } else { 0 };
                let path = rel.as_os_str().as_bytes();
                let (mode, uid, gid) = (m.mode() & 0o7777, u64::from(m.uid()), u64::from(m.gid()));
                lines.push(Entry { path, kind, mode, uid, gid, size, link, hash }.line());
            }
        }
        Ok(join(lines))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    #[cfg(feature = "listing")]
    fn one_sorted_line_per_entry_with_type_mode_owner_size_link_and_hash() {
        let t = std::env::temp_dir().join(format!("listing-{}", std::process::id()));
        std::fs::create_dir_all(t.join("d")).unwrap();
        std::fs::write(t.join("d/f"), b"a").unwrap();
        std::os::unix::fs::symlink("d/f", t.join("l")).unwrap();
        let text = super::dir::of_tree(&t).unwrap();
        std::fs::remove_dir_all(&t).unwrap();
        let lines: Vec<Vec<&str>> = text.lines().map(|l| l.split('\t').collect()).collect();
        assert_eq!(lines.iter().map(|l| (l[0], l[1])).collect::<Vec<_>>(), [("d", "d"), ("d/f", "f"), ("l", "l")]);
        // FNV-1a of "a", and the link target.
        assert_eq!((lines[1][5], lines[1][7]), ("1", "af63dc4c8601ec8c"));
        assert_eq!(lines[2][6], "d/f");
    }
}
