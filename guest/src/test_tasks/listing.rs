//! The merged tree as the guest sees it, one line per entry.

use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// One line per entry of the tree under `root`, sorted: path, type, mode,
/// uid, gid, size, link target, FNV-1a of the contents. Tests compare it
/// with the same listing of an independent unpack of the produced layer.
pub fn write(root: &Path, out: &Path) -> anyhow::Result<()> {
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
    std::fs::write(out, lines.join("\n") + "\n")?;
    Ok(())
}

fn fnv1a_file(p: &Path) -> anyhow::Result<u64> {
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
