//! A tree as one line per entry, sorted: path, type, mode, uid, gid, size,
//! link target (or device number), FNV-1a of the contents. The e2e tests'
//! witness of a tree: the test agent writes it of the merged tree it saw
//! (`--merged-listing`), the tests of an independent unpack of the layer
//! (umoci), and compare the two. Feature `listing`: test builds only.

use std::io::Read;
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
                ("d", String::new(), 0)
            } else if ft.is_symlink() {
                ("l", std::fs::read_link(&p)?.display().to_string(), 0)
            } else if ft.is_file() {
                ("f", String::new(), fnv1a_file(&p)?)
            } else {
                ("o", format!("{:x}", m.rdev()), 0)
            };
            let size = if ft.is_file() { m.len() } else { 0 };
            lines.push(format!(
                "{}\t{kind}\t{:o}\t{}\t{}\t{size}\t{link}\t{hash:016x}",
                String::from_utf8_lossy(rel.as_os_str().as_bytes()),
                m.mode() & 0o7777,
                m.uid(),
                m.gid()
            ));
        }
    }
    lines.sort();
    Ok(lines.join("\n") + "\n")
}

fn fnv1a_file(p: &Path) -> std::io::Result<u64> {
    let mut f = std::fs::File::open(p)?;
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            return Ok(h);
        }
        for b in &buf[..n] {
            h = (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3);
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn one_sorted_line_per_entry_with_type_mode_owner_size_link_and_hash() {
        let t = std::env::temp_dir().join(format!("listing-{}", std::process::id()));
        std::fs::create_dir_all(t.join("d")).unwrap();
        std::fs::write(t.join("d/f"), b"a").unwrap();
        std::os::unix::fs::symlink("d/f", t.join("l")).unwrap();
        let text = super::of_tree(&t).unwrap();
        std::fs::remove_dir_all(&t).unwrap();
        let lines: Vec<Vec<&str>> = text.lines().map(|l| l.split('\t').collect()).collect();
        assert_eq!(lines.iter().map(|l| (l[0], l[1])).collect::<Vec<_>>(), [("d", "d"), ("d/f", "f"), ("l", "l")]);
        // FNV-1a of "a", and the link target.
        assert_eq!((lines[1][5], lines[1][7]), ("1", "af63dc4c8601ec8c"));
        assert_eq!(lines[2][6], "d/f");
    }
}
