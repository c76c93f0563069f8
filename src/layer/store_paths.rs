//! Store paths added to the new layer whole, as dockerTools adds a layer's
//! Nix store closure (`--store-paths FILE`): each listed path (a directory
//! tree, file or symlink on the host) becomes entries at the same path in
//! the layer, owned 0:0, modes and symlink targets kept, hardlinks written
//! as separate files (tar's `--hard-dereference`), and mtimes left to the
//! converter's clamp.
//!
//! dockerTools leaves out what the base image already has; so does this, a
//! whole store path at a time: [`present_in_layers`] applies the base
//! layers' entries and whiteouts to the listed paths and their parents.
//! A parent missing from both the base and the script's upper dir (`nix`,
//! `nix/store`) is added as a root-owned 0755 directory, so that every
//! unpacker, strict or not, makes it the same way.
//!
//! The paths are the builder's own inputs, trusted as `--contents` is, but
//! checked all the same: absolute, normalized, and only directories, regular
//! files and symlinks inside (what a store holds).

use std::collections::{BTreeSet, HashSet};
use std::ffi::OsStr;
use std::fs;
use std::io::{self, Read};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::changeset::{Changeset, Data, HostFiles, Kind, Node};
use super::references::{ReferenceGraph, Scanner};
use super::rules;
use super::{show, LayerError};

/// Directories nested deeper than this in a store path are refused (a
/// bound on the walk, far beyond any package).
const MAX_DEPTH: usize = 512;

/// A listed store path: where it is on the host, and its path in the layer
/// (the host path without the leading `/`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StorePath {
    pub host: PathBuf,
    pub layer: Vec<u8>,
}

impl StorePath {
    /// `path` as listed: absolute and normalized (no `.`, `..` or `//`).
    pub fn parse(path: &Path) -> Result<StorePath, LayerError> {
        let raw = path.as_os_str().as_bytes();
        let bad = |reason| LayerError::InvalidPath { path: show(raw), reason };
        let rel = raw.strip_prefix(b"/").ok_or_else(|| bad("not absolute"))?;
        let layer = rules::normalize(rel)?;
        if layer.is_empty() {
            return Err(bad("the root itself"));
        }
        if layer != rel {
            return Err(bad("not normalized"));
        }
        Ok(StorePath { host: path.to_path_buf(), layer })
    }

    /// The path's parents in the layer, outermost first (`nix`, `nix/store`).
    fn parents(&self) -> impl Iterator<Item = &[u8]> {
        self.layer.iter().enumerate().filter(|(_, &b)| b == b'/').map(|(i, _)| &self.layer[..i])
    }
}

/// Read a `--store-paths` list: one absolute path per line (blank lines
/// skipped), as `writeReferencesToFile` / `closureInfo`'s `store-paths`
/// write it; duplicates and paths inside another listed path are dropped.
pub fn parse_list(text: &[u8]) -> Result<Vec<StorePath>, LayerError> {
    let mut paths: Vec<StorePath> = Vec::new();
    for line in text.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        paths.push(StorePath::parse(Path::new(OsStr::from_bytes(line)))?);
    }
    Ok(outermost(paths))
}

/// `listed` and `more` as one list, as [`parse_list`] gives it: what
/// `--store-paths` lists and the closure of what the layer references.
pub fn with_paths<P: AsRef<[u8]>>(
    listed: &[StorePath],
    more: impl IntoIterator<Item = P>,
) -> Result<Vec<StorePath>, LayerError> {
    let mut paths = listed.to_vec();
    for p in more {
        paths.push(StorePath::parse(Path::new(OsStr::from_bytes(p.as_ref())))?);
    }
    Ok(outermost(paths))
}

/// The store paths a new layer gets (dockerTools' `writeReferencesToFile
/// layer`): the `listed` ones, and the closure in `graph` of the
/// candidates `scanner` found in the layer's bytes or finds in `json` (the
/// layer's json, whose references dockerTools' layer output has too).
pub fn layer_closure(
    listed: &[StorePath],
    graph: &ReferenceGraph,
    scanner: &mut Scanner,
    json: &[u8],
) -> Result<LayerClosure, LayerError> {
    scanner.break_stream();
    scanner.scan_name(json);
    let referenced = scanner.found().len();
    let closure = graph.closure(scanner.found().iter().map(Vec::as_slice));
    let closure_len = closure.len();
    Ok(LayerClosure {
        paths: with_paths(listed, closure)?,
        candidates: graph.paths().count(),
        referenced,
        closure: closure_len,
    })
}

/// What [`layer_closure`] found: the paths to add and how it came to them.
#[derive(Debug, Clone)]
pub struct LayerClosure {
    pub paths: Vec<StorePath>,
    /// Store paths the layer could reference (the graph's).
    pub candidates: usize,
    /// Those whose hash occurs in the layer.
    pub referenced: usize,
    /// Those and their references.
    pub closure: usize,
}

impl std::fmt::Display for LayerClosure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the layer references {} of {} candidate store paths; with their references, {} store paths",
            self.referenced, self.candidates, self.closure
        )
    }
}

/// `paths` in layer order, without duplicates or paths inside another.
fn outermost(mut paths: Vec<StorePath>) -> Vec<StorePath> {
    paths.sort_by(|a, b| rules::cmp_paths(&a.layer, &b.layer));
    paths.dedup_by(|b, a| a.layer == b.layer);
    let mut kept: Vec<StorePath> = Vec::new();
    for p in paths {
        if !kept.iter().any(|k| under(&p.layer, &k.layer)) {
            kept.push(p);
        }
    }
    kept
}

/// `path` is `dir` or inside it.
fn under(path: &[u8], dir: &[u8]) -> bool {
    path == dir || (path.starts_with(dir) && path.get(dir.len()) == Some(&b'/'))
}

/// Which of `paths` and their parents the merged `layers` (bottom first,
/// uncompressed tars) hold, after their whiteouts and opaque directories.
pub fn present_in_layers<R: Read>(
    paths: &[StorePath],
    layers: impl IntoIterator<Item = R>,
) -> Result<HashSet<Vec<u8>>, LayerError> {
    let wanted: HashSet<&[u8]> = paths.iter().flat_map(|p| p.parents().chain([p.layer.as_slice()])).collect();
    let mut present: HashSet<Vec<u8>> = HashSet::new();
    for (i, layer) in layers.into_iter().enumerate() {
        // A layer's opaque marks and whiteouts first, to the layers below.
        let changes = super::flatten::layer_changes(i, layer, super::tar_guard::Limits::DEFAULT)?;
        for n in changes.nodes() {
            match n.kind {
                Kind::OpaqueMarker => present.retain(|p| !(under(p, &n.path) && *p != n.path)),
                Kind::Whiteout => present.retain(|p| !under(p, &n.path)),
                _ => {}
            }
        }
        let added = changes.nodes().iter().filter(|n| !matches!(n.kind, Kind::OpaqueMarker | Kind::Whiteout));
        present.extend(added.filter(|n| wanted.contains(n.path.as_slice())).map(|n| n.path.clone()));
    }
    Ok(present)
}

/// Add `paths` to the new layer's changeset `out`, leaving out every path
/// in `skip` (what the upper dir or the base already has); the missing
/// parents come first. File bytes are read when the layer is written, from
/// `files` ([`Data::Host`]). Returns how many store paths were added.
pub fn add(
    out: &mut Changeset,
    paths: &[StorePath],
    skip: &HashSet<Vec<u8>>,
    files: &mut HostFiles,
) -> Result<usize, LayerError> {
    let mut parents = BTreeSet::new();
    let todo: Vec<&StorePath> = paths.iter().filter(|p| !skip.contains(&p.layer)).collect();
    for p in &todo {
        parents.extend(p.parents().filter(|d| !skip.contains(*d)).map(<[u8]>::to_vec));
    }
    for dir in parents {
        out.push(Node::new(dir.clone(), Kind::Dir, 0o755, 0, 0, 0), &dir)?;
    }
    for p in &todo {
        walk(out, files, &p.host, &p.layer, 0)?;
    }
    Ok(todo.len())
}

fn walk(out: &mut Changeset, files: &mut HostFiles, host: &Path, layer: &[u8], depth: usize) -> Result<(), LayerError> {
    let err = |source: io::Error| LayerError::Entry { path: host.display().to_string(), source };
    if depth > MAX_DEPTH {
        return Err(err(io::Error::other("directories nested too deep")));
    }
    let meta = fs::symlink_metadata(host).map_err(err)?;
    let mode = meta.permissions().mode() & 0o7777;
    let mtime = u64::try_from(meta.mtime()).unwrap_or(0);
    let node = |kind| Node::new(layer.to_vec(), kind, mode, 0, 0, mtime);
    let ft = meta.file_type();
    if ft.is_dir() {
        out.push(node(Kind::Dir), layer)?;
        let mut names = fs::read_dir(host)
            .map_err(err)?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(err)?;
        names.sort();
        for name in names {
            walk(out, files, &host.join(&name), &rules::join(layer, name.as_bytes()), depth + 1)?;
        }
        Ok(())
    } else if ft.is_file() {
        // Read when the layer is written: a file that changes length by
        // then is an error, not a short entry.
        let file = files.push(host.to_path_buf());
        out.push(node(Kind::File(Data::Host { file, len: meta.len() })), layer)
    } else if ft.is_symlink() {
        let target = fs::read_link(host).map_err(err)?;
        out.push(node(Kind::Symlink(target.into_os_string().into_vec())), layer)
    } else {
        Err(LayerError::UnsupportedType { path: host.display().to_string(), kind: 'S' })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layer::changeset::{self, ConvertOptions};
    use std::os::unix::fs::symlink;
    use tar::EntryType;

    fn header(mode: u32, uid: u64, gid: u64, mtime: u64) -> tar::Header {
        let mut h = tar::Header::new_gnu();
        h.set_mode(mode);
        h.set_uid(uid);
        h.set_gid(gid);
        h.set_mtime(mtime);
        h.set_size(0);
        h
    }

    /// `paths` added to an empty changeset, written as a layer.
    fn append(paths: &[StorePath], skip: &HashSet<Vec<u8>>) -> Result<(usize, Vec<u8>), LayerError> {
        let (mut cs, mut files) = (Changeset::default(), HostFiles::default());
        let n = add(&mut cs, paths, skip, &mut files)?;
        let mut out = Vec::new();
        changeset::write(cs, &mut files, &mut out, &ConvertOptions::default())?;
        Ok((n, out))
    }

    fn sp(s: &str) -> StorePath {
        StorePath::parse(Path::new(s)).unwrap()
    }

    fn tar_of(entries: &[(&str, EntryType)]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (p, t) in entries {
            let mut h = header(0o755, 0, 0, 0);
            h.set_entry_type(*t);
            b.append_data(&mut h, p, io::empty()).unwrap();
        }
        b.into_inner().unwrap()
    }

    fn names(tar: &[u8]) -> Vec<(String, u64, u32, EntryType)> {
        let mut a = tar::Archive::new(tar);
        a.entries()
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                let h = e.header();
                (show(&e.path_bytes()), h.uid().unwrap(), h.mode().unwrap(), h.entry_type())
            })
            .collect()
    }

    #[test]
    fn lists_are_absolute_normalized_deduplicated_and_outermost() {
        let l = parse_list(b"/nix/store/b-y\n\n/nix/store/a-x\r\n/nix/store/a-x\n/nix/store/a-x/sub\n").unwrap();
        let got: Vec<_> = l.iter().map(|p| show(&p.layer)).collect();
        assert_eq!(got, ["nix/store/a-x", "nix/store/b-y"]);
        for bad in ["nix/store/x", "/nix/../etc", "/nix//store", "/", "/nix/store/./x"] {
            assert!(parse_list(bad.as_bytes()).is_err(), "{bad} accepted");
        }
        let parents: Vec<_> = sp("/nix/store/a-x").parents().map(show).collect();
        assert_eq!(parents, ["nix", "nix/store"]);
    }

    #[test]
    fn more_paths_join_the_listed_ones_in_order() {
        let listed = parse_list(b"/nix/store/b-y\n").unwrap();
        let all = with_paths(&listed, ["/nix/store/a-x", "/nix/store/b-y", "/nix/store/b-y/sub"]).unwrap();
        let got: Vec<_> = all.iter().map(|p| show(&p.layer)).collect();
        assert_eq!(got, ["nix/store/a-x", "nix/store/b-y"]);
        assert!(with_paths(&listed, ["relative"]).is_err());
    }

    #[test]
    fn the_layer_gets_the_closure_of_what_it_and_its_json_name() {
        let (a, b, c, d) = (
            "/nix/store/0c0bgmfxpw3g6fsm3vfhdqfxcaqwaxhl-a",
            "/nix/store/1zbg2ly3gpcbxmyh2p8ncysd8w6fi4jj-b",
            "/nix/store/2b4kqx4ral9hhmd3zzc0q3czdrxhw1bq-c",
            "/nix/store/3vcqxmg9irpz3nl7ap4lj5p6g1yk9d0s-d",
        );
        let mut g = ReferenceGraph::default();
        g.add_export(format!("{a}\n\n1\n{b}\n{b}\n\n0\n{c}\n\n0\n{d}\n\n0\n").as_bytes()).unwrap();
        let layer_names = |tar: &str, json: &str| {
            let mut s = g.scanner();
            s.scan(tar.as_bytes());
            let c = layer_closure(&[], &g, &mut s, json.as_bytes()).unwrap();
            c.paths.iter().map(|p| show(&p.layer)).collect::<Vec<_>>()
        };
        assert!(layer_names("nothing here", "{}").is_empty());
        assert_eq!(layer_names(&format!("bin/sh -> {a}/bin/sh"), "{}"), [&a[1..], &b[1..]]);
        assert_eq!(layer_names("", &format!(r#"{{"Cmd":["{d}/bin/d"]}}"#)), [&d[1..]]);
        // The json is not read as the stream's continuation.
        assert!(layer_names(&c[..30], &c[30..]).is_empty());
        let listed = parse_list(c.as_bytes()).unwrap();
        let mut s = g.scanner();
        let got = layer_closure(&listed, &g, &mut s, b"").unwrap();
        assert_eq!((got.paths.len(), got.referenced, got.candidates), (1, 0, 4));
    }

    #[test]
    fn the_base_layers_whiteouts_and_opaque_dirs_decide_what_is_present() {
        let paths = [sp("/nix/store/a-x"), sp("/nix/store/b-y"), sp("/nix/store/c-z")];
        let l1 = tar_of(&[
            ("nix", EntryType::Directory),
            ("./nix/store", EntryType::Directory),
            ("nix/store/a-x", EntryType::Directory),
            ("nix/store/b-y", EntryType::Regular),
            ("nix/store/c-z", EntryType::Directory),
            ("nix/store/other", EntryType::Directory),
        ]);
        let l2 = tar_of(&[("nix/store/.wh.b-y", EntryType::Regular)]);
        let present = present_in_layers(&paths, [l1.as_slice(), l2.as_slice()]).unwrap();
        let mut got: Vec<_> = present.iter().map(|p| show(p)).collect();
        got.sort();
        assert_eq!(got, ["nix", "nix/store", "nix/store/a-x", "nix/store/c-z"]);

        let l3 = tar_of(&[("nix/store/.wh..wh..opq", EntryType::Regular), ("nix/store/c-z", EntryType::Directory)]);
        let present = present_in_layers(&paths, [l1.as_slice(), l3.as_slice()]).unwrap();
        let mut got: Vec<_> = present.iter().map(|p| show(p)).collect();
        got.sort();
        assert_eq!(got, ["nix", "nix/store", "nix/store/c-z"]);

        let l4 = tar_of(&[(".wh.nix", EntryType::Regular)]);
        assert!(present_in_layers(&paths, [l1.as_slice(), l4.as_slice()]).unwrap().is_empty());
    }

    #[test]
    fn trees_are_added_as_root_with_modes_links_and_missing_parents() {
        let tmp = tempfile::tempdir().unwrap();
        let store = tmp.path().join("store");
        let pkg = store.join("abc-pkg");
        fs::create_dir_all(pkg.join("bin")).unwrap();
        fs::write(pkg.join("bin/tool"), b"#!/bin/sh\n").unwrap();
        fs::set_permissions(pkg.join("bin/tool"), fs::Permissions::from_mode(0o555)).unwrap();
        fs::hard_link(pkg.join("bin/tool"), pkg.join("bin/tool2")).unwrap();
        symlink("tool", pkg.join("bin/link")).unwrap();
        let single = store.join("def-file");
        fs::write(&single, b"data").unwrap();
        let have = store.join("ghi-have");
        fs::create_dir(&have).unwrap();

        let list = format!("{}\n{}\n{}\n", pkg.display(), single.display(), have.display());
        let paths = parse_list(list.as_bytes()).unwrap();
        let skip: HashSet<Vec<u8>> = [have.as_os_str().as_bytes()[1..].to_vec()].into();
        let (added, tar) = append(&paths, &skip).unwrap();
        assert_eq!(added, 2);
        let got = names(&tar);
        let rel = |p: &Path| show(&p.as_os_str().as_bytes()[1..]);
        // Every parent of the store dir first, then the trees in name order.
        let mut expect_parents = Vec::new();
        let mut cur = PathBuf::new();
        for c in store.components().skip(1) {
            cur.push(c);
            expect_parents.push(show(cur.as_os_str().as_bytes()));
        }
        let dirs: Vec<_> =
            got.iter().take(expect_parents.len()).map(|g| g.0.trim_end_matches('/').to_string()).collect();
        assert_eq!(dirs, expect_parents);
        let find = |p: &Path| {
            got.iter()
                .find(|g| g.0.trim_end_matches('/') == rel(p))
                .unwrap_or_else(|| panic!("{} missing: {got:?}", rel(p)))
                .clone()
        };
        assert_eq!(find(&pkg.join("bin/tool")), (rel(&pkg.join("bin/tool")), 0, 0o555, EntryType::Regular));
        assert_eq!(find(&pkg.join("bin/tool2")).3, EntryType::Regular, "hardlinks are dereferenced");
        assert_eq!(find(&pkg.join("bin/link")).3, EntryType::Symlink);
        assert_eq!(find(&single).3, EntryType::Regular);
        assert!(got.iter().all(|g| !g.0.contains("ghi-have")), "a path the base has is left out");
        assert!(got.iter().all(|g| g.1 == 0));

        // With the parents present nothing but the trees is written.
        let mut skip2 = skip.clone();
        skip2.extend(expect_parents.iter().map(|p| p.as_bytes().to_vec()));
        assert!(names(&append(&paths, &skip2).unwrap().1)[0].0.starts_with(&rel(&pkg)));
    }

    #[test]
    fn sockets_and_missing_paths_are_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let missing = parse_list(format!("{}/nope\n", tmp.path().display()).as_bytes()).unwrap();
        assert!(append(&missing, &HashSet::new()).is_err());
        let sock_path = tmp.path().join("s");
        let _sock = std::os::unix::net::UnixListener::bind(&sock_path).unwrap();
        let socket = parse_list(format!("{}\n", sock_path.display()).as_bytes()).unwrap();
        assert!(matches!(append(&socket, &HashSet::new()), Err(LayerError::UnsupportedType { .. })));
    }
}
