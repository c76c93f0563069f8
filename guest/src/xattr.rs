//! Reading a path's xattrs (without following a symlink).

use anyhow::{bail, Context};
use rustix::io::Errno;
use std::ffi::OsStr;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// Every xattr of `path` (not following a symlink), sorted by name.
pub(crate) fn xattrs(path: &Path) -> anyhow::Result<Vec<(Vec<u8>, Vec<u8>)>> {
    let list = match read_sized(|buf| match buf {
        None => rustix::fs::llistxattr_query(path),
        Some(b) => rustix::fs::llistxattr(path, b),
    }) {
        Ok(l) => l,
        Err(Errno::OPNOTSUPP) => return Ok(Vec::new()),
        Err(e) => return Err(io::Error::from(e)).context("list xattrs"),
    };
    let mut out = Vec::new();
    for name in list.split(|&b| b == 0).filter(|n| !n.is_empty()) {
        if std::str::from_utf8(name).is_err() {
            bail!("xattr name {:?} is not UTF-8 (a PAX record cannot carry it)", String::from_utf8_lossy(name));
        }
        let n = OsStr::from_bytes(name);
        let value = match read_sized(|buf| match buf {
            None => rustix::fs::lgetxattr_query(path, n),
            Some(b) => rustix::fs::lgetxattr(path, n, b),
        }) {
            Ok(v) => v,
            // Removed since it was listed.
            Err(Errno::NODATA) => continue,
            Err(e) => {
                return Err(io::Error::from(e)).with_context(|| format!("get xattr {}", String::from_utf8_lossy(name)))
            }
        };
        out.push((name.to_vec(), value));
    }
    out.sort();
    Ok(out)
}

/// The size-query-then-read dance of listxattr/getxattr, retried while the
/// value grows between the two calls.
fn read_sized(mut call: impl FnMut(Option<&mut Vec<u8>>) -> rustix::io::Result<usize>) -> rustix::io::Result<Vec<u8>> {
    loop {
        let size = call(None)?;
        if size == 0 {
            return Ok(Vec::new());
        }
        let mut buf = vec![0u8; size];
        match call(Some(&mut buf)) {
            Ok(n) => {
                buf.truncate(n);
                return Ok(buf);
            }
            Err(Errno::RANGE) => {}
            Err(e) => return Err(e),
        }
    }
}
