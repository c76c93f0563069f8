//! `rootlayer closure-info`: nixpkgs' `closureInfo` without jq or Nix's
//! structured attrs, for nix/default.nix's `buildImageWithNixDb`.
//!
//! From the `exportReferencesGraph` files of the roots it writes, as
//! closureInfo does, `registration` (what `nix-store --load-db` reads: for
//! each path its path, `sha256:` NAR hash in nix-base32, NAR size, deriver
//! (empty), reference count and references), `store-paths` and
//! `total-nar-size`. The NAR hash and size are computed here, by
//! serializing each path as a Nix archive (Nix's `archive.cc`: `nix-archive-1`,
//! then `(type regular [executable ""] contents ...)`, `(type symlink target
//! ...)` or `(type directory entry (name ... node ...) ...)`, every string
//! length-prefixed as a little-endian u64 and zero-padded to 8 bytes,
//! directory entries in byte order of their names).

use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::layer::references::{ReferenceGraph, ReferencesError};

/// Directories nested deeper than this are refused (a bound on the walk).
const MAX_DEPTH: usize = 512;

/// Why closure-info failed.
#[derive(Debug, thiserror::Error)]
pub enum NarError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path}: neither a regular file, a directory nor a symlink")]
    Unsupported { path: PathBuf },
    #[error("{path}: directories nested too deep")]
    TooDeep { path: PathBuf },
    #[error("references graph {path}: {source}")]
    Graph {
        path: PathBuf,
        #[source]
        source: ReferencesError,
    },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> NarError + '_ {
    move |source| NarError::Io { path: path.to_path_buf(), source }
}

/// A writer that hashes and counts what it is given.
struct HashCount {
    hash: Sha256,
    size: u64,
}

impl Write for HashCount {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.hash.update(buf);
        self.size += buf.len() as u64;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn put_strs<W: Write + ?Sized>(w: &mut W, strs: &[&[u8]]) -> io::Result<()> {
    strs.iter().try_for_each(|s| put_str(w, s))
}

fn put_str<W: Write + ?Sized>(w: &mut W, s: &[u8]) -> io::Result<()> {
    w.write_all(&(s.len() as u64).to_le_bytes())?;
    w.write_all(s)?;
    let pad = (8 - s.len() % 8) % 8;
    w.write_all(&[0u8; 8][..pad])
}

/// Serialize `path` as a Nix archive into `w`.
pub fn dump(path: &Path, w: &mut impl Write) -> Result<(), NarError> {
    put_str(w, b"nix-archive-1").map_err(io_err(path))?;
    dump_node(path, w, 0)
}

fn dump_node(path: &Path, w: &mut impl Write, depth: usize) -> Result<(), NarError> {
    if depth > MAX_DEPTH {
        return Err(NarError::TooDeep { path: path.to_path_buf() });
    }
    let meta = fs::symlink_metadata(path).map_err(io_err(path))?;
    let ft = meta.file_type();
    let e = io_err(path);
    if ft.is_file() {
        (|| {
            put_strs(w, &[b"(", b"type", b"regular"])?;
            if meta.permissions().mode() & 0o100 != 0 {
                put_strs(w, &[b"executable", b""])?;
            }
            put_str(w, b"contents")?;
            let len = meta.len();
            w.write_all(&len.to_le_bytes())?;
            let mut f = fs::File::open(path)?.take(len);
            let copied = io::copy(&mut f, w)?;
            if copied != len {
                return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the file shrank while read"));
            }
            w.write_all(&[0u8; 8][..usize::try_from((8 - len % 8) % 8).expect("< 8")])?;
            put_str(w, b")")
        })()
        .map_err(e)
    } else if ft.is_symlink() {
        let target = fs::read_link(path).map_err(io_err(path))?;
        put_strs(w, &[b"(", b"type", b"symlink", b"target", target.as_os_str().as_bytes(), b")"]).map_err(e)
    } else if ft.is_dir() {
        put_strs(w, &[b"(", b"type", b"directory"]).map_err(io_err(path))?;
        let mut names = fs::read_dir(path)
            .map_err(io_err(path))?
            .map(|d| d.map(|d| d.file_name()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(io_err(path))?;
        names.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
        for name in names {
            put_strs(w, &[b"entry", b"(", b"name", name.as_bytes(), b"node"]).map_err(io_err(path))?;
            dump_node(&path.join(&name), w, depth + 1)?;
            put_str(w, b")").map_err(io_err(path))?;
        }
        put_str(w, b")").map_err(e)
    } else {
        Err(NarError::Unsupported { path: path.to_path_buf() })
    }
}

/// The SHA-256 and size of `path`'s Nix archive.
pub fn nar_hash(path: &Path) -> Result<([u8; 32], u64), NarError> {
    let mut w = io::BufWriter::with_capacity(1 << 16, HashCount { hash: Sha256::new(), size: 0 });
    dump(path, &mut w)?;
    let hc = w.into_inner().map_err(|e| NarError::Io { path: path.to_path_buf(), source: e.into_error() })?;
    Ok((hc.hash.finalize().into(), hc.size))
}

/// Nix's base-32 (`printHash32`): the last 5-bit group first.
pub fn base32(hash: &[u8]) -> String {
    const CHARS: &[u8; 32] = b"0123456789abcdfghijklmnpqrsvwxyz";
    let len = (hash.len() * 8).div_ceil(5);
    (0..len)
        .rev()
        .map(|n| {
            let b = n * 5;
            let (i, j) = (b / 8, b % 8);
            let lo = hash[i] >> j;
            let hi = if i + 1 < hash.len() { u16::from(hash[i + 1]) << (8 - j) } else { 0 };
            char::from(CHARS[usize::from((u16::from(lo) | hi) & 0x1f)])
        })
        .collect()
}

/// closureInfo's three files in `out` (made here) for the paths of
/// `graphs` (exportReferencesGraph files).
pub fn closure_info(graphs: &[PathBuf], out: &Path) -> Result<(), NarError> {
    let mut graph = ReferenceGraph::default();
    for g in graphs {
        let text = fs::read(g).map_err(io_err(g))?;
        graph.add_export(&text).map_err(|source| NarError::Graph { path: g.clone(), source })?;
    }
    let mut registration = Vec::new();
    let mut store_paths = Vec::new();
    let mut total: u64 = 0;
    for p in graph.paths() {
        let path = Path::new(std::ffi::OsStr::from_bytes(p));
        let (hash, size) = nar_hash(path)?;
        total += size;
        let refs = graph.references(p);
        registration.extend_from_slice(p);
        registration.extend_from_slice(format!("\nsha256:{}\n{size}\n\n{}\n", base32(&hash), refs.len()).as_bytes());
        for r in refs {
            registration.extend_from_slice(r);
            registration.push(b'\n');
        }
        store_paths.extend_from_slice(p);
        store_paths.push(b'\n');
    }
    fs::create_dir(out).map_err(io_err(out))?;
    for (name, data) in [
        ("registration", registration),
        ("store-paths", store_paths),
        ("total-nar-size", total.to_string().into_bytes()),
    ] {
        let file = out.join(name);
        fs::write(&file, data).map_err(io_err(&file))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nar(path: &Path) -> Vec<u8> {
        let mut v = Vec::new();
        dump(path, &mut v).unwrap();
        v
    }

    fn s(x: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        put_str(&mut v, x).unwrap();
        v
    }

    #[test]
    fn a_file_and_a_symlink_serialize_as_nix_archives() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("f");
        fs::write(&f, b"hello").unwrap();
        let want: Vec<u8> = [&b"nix-archive-1"[..], b"(", b"type", b"regular", b"contents", b"hello", b")"]
            .iter()
            .flat_map(|x| s(x))
            .collect();
        assert_eq!(nar(&f), want);
        assert_eq!(s(b"hello"), b"\x05\0\0\0\0\0\0\0hello\0\0\0");
        let l = d.path().join("l");
        std::os::unix::fs::symlink("f", &l).unwrap();
        let want: Vec<u8> = [&b"nix-archive-1"[..], b"(", b"type", b"symlink", b"target", b"f", b")"]
            .iter()
            .flat_map(|x| s(x))
            .collect();
        assert_eq!(nar(&l), want);
    }

    #[test]
    fn base32_is_nixs() {
        // `nix-hash --type sha256 --to-base32` of sha256("") (Nix's own test vector).
        let empty: [u8; 32] = Sha256::digest(b"").into();
        assert_eq!(base32(&empty), "0mdqa9w1p6cmli6976v4wi0sw9r4p5prkj7lzfd1877wk11c9c73");
    }

    #[test]
    fn nar_hashes_are_what_nix_hash_says() {
        // Checked against the nix tools where this machine has them.
        let Ok(out) = std::process::Command::new("nix-hash").arg("--version").output() else {
            eprintln!("SKIP nar_hashes_are_what_nix_hash_says: no nix-hash");
            return;
        };
        assert!(out.status.success());
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("tree");
        fs::create_dir_all(root.join("bin")).unwrap();
        fs::write(root.join("bin/tool"), b"#!/bin/sh\necho hi\n").unwrap();
        fs::set_permissions(root.join("bin/tool"), fs::Permissions::from_mode(0o755)).unwrap();
        fs::write(root.join("Z-data"), vec![7u8; 1000]).unwrap();
        fs::write(root.join("a-empty"), b"").unwrap();
        std::os::unix::fs::symlink("bin/tool", root.join("link")).unwrap();
        let nix =
            std::process::Command::new("nix-hash").args(["--type", "sha256", "--base32"]).arg(&root).output().unwrap();
        let want = String::from_utf8(nix.stdout).unwrap();
        let (hash, size) = nar_hash(&root).unwrap();
        assert_eq!(base32(&hash), want.trim());
        assert_eq!(size, nar(&root).len() as u64);
    }
}
