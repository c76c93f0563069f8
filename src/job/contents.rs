//! `--contents` (dockerTools' `copyToRoot`) on the host: the directories
//! are merged here, in order, into one tree that becomes a read-only EROFS
//! disk the guest mounts as the overlay's topmost lower dir, and the host
//! writes the same tree into the new layer (less what the script changed).
//! No contents byte or inode passes through the guest kernel, and the guest
//! holds no host descriptor per contents file.
//!
//! The tree is what nixpkgs' mkRootLayer gets from
//! `rsync -a{k,K} --chown=0:0 contents/ layer/` for each directory in turn:
//! everything owned 0:0 with its permission bits and mtime kept; hardlinks
//! copied as separate files (no `-H`); no xattrs (no `-X`); devices and FIFOs
//! kept (`-D`); a directory over a directory merges (the later one's mode and
//! mtime win), anything else replaces what was there. Without
//! `keepContentsDirlinks` (`-k`) a symlink to a directory is copied as the
//! directory it points to, resolved on the host as the seed resolves it in a
//! VM that mounts the host's store; with it (`-K`) symlinks stay links, and a
//! later directory at a path where an earlier one left a link to a
//! directory of the tree is merged into that directory. A later directory
//! through a link that leaves the tree (the seed's rsync would write into
//! the store) is refused.

use crate::layer::changeset::Data;
use crate::layer::changeset::HostFiles;
use crate::layer::erofs;
use crate::layer::flatten::{Inode, Kind, Tree};
use crate::layer::LayerError;
use std::collections::BTreeMap;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

/// Why the contents cannot be gathered.
#[derive(Debug, thiserror::Error)]
pub enum ContentsError {
    #[error("--contents {}: {what}", path.display())]
    Read {
        path: PathBuf,
        what: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("--contents {}: a symlink to a directory that contains it (a loop)", .0.display())]
    Loop(PathBuf),
    #[error("--contents {}: nested deeper than {MAX_DEPTH} directories", .0.display())]
    TooDeep(PathBuf),
    #[error(
        "--contents {}: a directory would be written through the symlink {} (-> {}), which leads out of the contents (keepContentsDirlinks)",
        path.display(), show(link), show(target)
    )]
    ThroughLink { path: PathBuf, link: Vec<u8>, target: Vec<u8> },
    #[error("--contents {}: a 0/0 character device is an overlay whiteout and cannot be in a layer", .0.display())]
    ZeroDevice(PathBuf),
    #[error("writing the contents disk")]
    Disk(#[source] LayerError),
}

fn show(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Deepest directory nesting followed (symlinks to directories included).
pub const MAX_DEPTH: usize = 1024;

/// The merged contents: the tree, and the host file behind each of its
/// files' [`Data::Host`] index.
#[derive(Debug, Default)]
pub struct Contents {
    pub tree: Tree,
    files: HostFiles,
}

impl Contents {
    /// Merge `dirs` in order, as the seed's rsync does.
    pub fn gather(dirs: &[PathBuf], keep_dirlinks: bool) -> Result<Self, ContentsError> {
        let mut c = Contents::default();
        for dir in dirs {
            let mut walk = Walk { keep_dirlinks, on_path: Vec::new() };
            let meta = std::fs::metadata(dir).map_err(read_err(dir, "stat"))?;
            walk.on_path.push((meta.dev(), meta.ino()));
            walk.merge(&mut c, dir, 0, Vec::new())?;
        }
        Ok(c)
    }

    /// Whether there is anything at all.
    pub fn is_empty(&self) -> bool {
        matches!(&self.tree.inodes[0].kind, Kind::Dir(c) if c.is_empty())
    }

    /// Regular files met in the contents dirs (one a later dir replaced too).
    pub fn files(&self) -> usize {
        self.files.0.len()
    }

    /// The files' bytes, read from the host.
    pub fn data(&self) -> &HostFiles {
        &self.files
    }

    /// Write the tree as an EROFS image to `out`; returns its size.
    pub fn write_disk(&self, out: &mut impl io::Write) -> Result<u64, ContentsError> {
        let info = erofs::write(&self.tree, &mut self.data(), out).map_err(ContentsError::Disk)?;
        Ok(info.bytes)
    }

    fn push(&mut self, inode: Inode) -> usize {
        self.tree.inodes.push(inode);
        self.tree.inodes.len() - 1
    }

    fn children(&mut self, dir: usize) -> &mut BTreeMap<Vec<u8>, usize> {
        match &mut self.tree.inodes[dir].kind {
            Kind::Dir(c) => c,
            _ => unreachable!("merged only into directories"),
        }
    }
}

fn read_err<'a>(path: &'a Path, what: &'static str) -> impl FnOnce(io::Error) -> ContentsError + 'a {
    move |source| ContentsError::Read { path: path.to_path_buf(), what, source }
}

/// One contents directory's walk.
struct Walk {
    keep_dirlinks: bool,
    /// (dev, ino) of the host directories being walked, outermost first.
    on_path: Vec<(u64, u64)>,
}

impl Walk {
    /// Merge the host directory `host` into the tree's directory `dir`
    /// (tree path `rel`).
    fn merge(&mut self, c: &mut Contents, host: &Path, dir: usize, rel: Vec<u8>) -> Result<(), ContentsError> {
        if self.on_path.len() > MAX_DEPTH {
            return Err(ContentsError::TooDeep(host.to_path_buf()));
        }
        let mut names = Vec::new();
        for e in std::fs::read_dir(host).map_err(read_err(host, "read directory"))? {
            names.push(e.map_err(read_err(host, "read directory"))?.file_name());
        }
        names.sort();
        for name in names {
            let from = host.join(&name);
            let name = name.as_bytes().to_vec();
            let mut meta = std::fs::symlink_metadata(&from).map_err(read_err(&from, "stat"))?;
            if meta.file_type().is_symlink() && !self.keep_dirlinks {
                // rsync -k: a link to a directory is that directory.
                if let Ok(target) = std::fs::metadata(&from) {
                    if target.is_dir() {
                        meta = target;
                    }
                }
            }
            let mut path = rel.clone();
            if !path.is_empty() {
                path.push(b'/');
            }
            path.extend_from_slice(&name);
            let attrs = |kind| Inode {
                kind,
                mode: meta.mode() & 0o7777,
                uid: 0,
                gid: 0,
                mtime: u64::try_from(meta.mtime()).unwrap_or(0),
                xattrs: BTreeMap::new(),
            };
            let ft = meta.file_type();
            if ft.is_dir() {
                let existing = c.children(dir).get(&name).copied();
                let into = match existing.map(|i| (i, &c.tree.inodes[i].kind)) {
                    Some((i, Kind::Dir(_))) => {
                        let fresh = attrs(Kind::Dir(BTreeMap::new()));
                        let old = &mut c.tree.inodes[i];
                        (old.mode, old.mtime) = (fresh.mode, fresh.mtime);
                        i
                    }
                    Some((_, link @ Kind::Symlink(target)))
                        if self.keep_dirlinks && self.link_to_dir(&c.tree, &rel, link) =>
                    {
                        resolve(&c.tree, &rel, link).ok_or_else(|| ContentsError::ThroughLink {
                            path: from.clone(),
                            link: path.clone(),
                            target: target.clone(),
                        })?
                    }
                    _ => {
                        let i = c.push(attrs(Kind::Dir(BTreeMap::new())));
                        c.children(dir).insert(name.clone(), i);
                        i
                    }
                };
                if self.on_path.contains(&(meta.dev(), meta.ino())) {
                    return Err(ContentsError::Loop(from));
                }
                self.on_path.push((meta.dev(), meta.ino()));
                self.merge(c, &from, into, path)?;
                self.on_path.pop();
                continue;
            }
            let kind = if ft.is_file() {
                let file = c.files.push(from.clone());
                Kind::File(Data::Host { file, len: meta.len() })
            } else if ft.is_symlink() {
                let target = std::fs::read_link(&from).map_err(read_err(&from, "read link"))?;
                Kind::Symlink(target.as_os_str().as_bytes().to_vec())
            } else if ft.is_char_device() || ft.is_block_device() {
                let (major, minor) = (rustix::fs::major(meta.rdev()), rustix::fs::minor(meta.rdev()));
                if ft.is_char_device() && (major, minor) == (0, 0) {
                    return Err(ContentsError::ZeroDevice(from));
                }
                if ft.is_char_device() {
                    Kind::Char(major, minor)
                } else {
                    Kind::Block(major, minor)
                }
            } else if ft.is_fifo() {
                Kind::Fifo
            } else {
                // A socket: rsync makes one, but no layer can hold it.
                eprintln!("rootlayer: --contents {}: a socket cannot be in a layer; left out", from.display());
                continue;
            };
            let i = c.push(attrs(kind));
            c.children(dir).insert(name, i);
        }
        Ok(())
    }
}

impl Walk {
    /// Whether a link of the tree leads to a directory, which rsync -K
    /// writes through: one of the tree, or (an absolute link) of the host.
    fn link_to_dir(&self, tree: &Tree, rel: &[u8], link: &Kind) -> bool {
        resolve(tree, rel, link).is_some()
            || matches!(link, Kind::Symlink(t) if t.starts_with(b"/") && Path::new(std::ffi::OsStr::from_bytes(t)).is_dir())
    }
}

/// The directory of `tree` a symlink in directory `rel` with `kind` leads
/// to, when it is a relative link that stays inside the tree and ends at a
/// directory (following at most 40 links, as Linux does).
fn resolve(tree: &Tree, rel: &[u8], kind: &Kind) -> Option<usize> {
    let Kind::Symlink(target) = kind else { return None };
    let split = |p: &[u8]| -> Vec<Vec<u8>> { p.split(|&b| b == b'/').map(<[u8]>::to_vec).collect() };
    let mut at: Vec<Vec<u8>> = split(rel).into_iter().filter(|c| !c.is_empty()).collect();
    let mut pending: Vec<Vec<u8>> = Vec::new();
    let mut links = 0;
    let mut follow = |target: &[u8], pending: &mut Vec<Vec<u8>>| -> Option<()> {
        links += 1;
        if target.starts_with(b"/") || links > 40 {
            return None;
        }
        pending.extend(split(target).into_iter().rev());
        Some(())
    };
    follow(target, &mut pending)?;
    while let Some(comp) = pending.pop() {
        match comp.as_slice() {
            b"" | b"." => {}
            b".." => {
                at.pop()?;
            }
            _ => {
                at.push(comp);
                let ino = tree.lookup(&at.join(&b'/'))?;
                match &tree.inodes[ino].kind {
                    Kind::Dir(_) => {}
                    Kind::Symlink(t) => {
                        at.pop();
                        follow(t, &mut pending)?;
                    }
                    _ => return None,
                }
            }
        }
    }
    tree.lookup(&at.join(&b'/')).filter(|&i| matches!(tree.inodes[i].kind, Kind::Dir(_)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{symlink, PermissionsExt};

    fn kind_at<'a>(c: &'a Contents, p: &str) -> Option<&'a Kind> {
        c.tree.lookup(p.as_bytes()).map(|i| &c.tree.inodes[i].kind)
    }

    fn inode_at<'a>(c: &'a Contents, p: &str) -> &'a Inode {
        &c.tree.inodes[c.tree.lookup(p.as_bytes()).unwrap_or_else(|| panic!("{p} in the tree"))]
    }

    fn data_at(c: &Contents, p: &str) -> Vec<u8> {
        let Some(Kind::File(r)) = kind_at(c, p) else { panic!("{p} is not a file") };
        let mut out = Vec::new();
        crate::layer::changeset::copy_exact(&mut c.data().clone(), r, &mut out).unwrap();
        out
    }

    /// Two contents dirs and a directory outside both that a link names.
    fn fixture() -> (tempfile::TempDir, Vec<PathBuf>) {
        let t = tempfile::tempdir().unwrap();
        let (a, b, store) = (t.path().join("a"), t.path().join("b"), t.path().join("store"));
        for d in ["a/bin", "a/etc", "a/share/doc", "b/bin", "b/etc", "store/pkg/lib"] {
            std::fs::create_dir_all(t.path().join(d)).unwrap();
        }
        std::fs::write(a.join("bin/tool"), "tool a").unwrap();
        std::fs::set_permissions(a.join("bin/tool"), std::fs::Permissions::from_mode(0o4755)).unwrap();
        std::fs::write(a.join("etc/conf"), "a").unwrap();
        std::fs::write(a.join("share/doc/readme"), "doc").unwrap();
        std::fs::set_permissions(a.join("share/doc"), std::fs::Permissions::from_mode(0o700)).unwrap();
        std::fs::hard_link(a.join("etc/conf"), a.join("etc/conf.hard")).unwrap();
        symlink("tool", a.join("bin/alias")).unwrap();
        symlink("share/doc", a.join("docs")).unwrap();
        symlink(store.join("pkg/lib"), a.join("lib")).unwrap();
        std::fs::write(store.join("pkg/lib/libx.so"), "elf").unwrap();
        std::fs::write(b.join("etc/conf"), "b wins").unwrap();
        std::fs::write(b.join("bin/tool2"), "tool b").unwrap();
        std::fs::create_dir_all(b.join("docs/extra")).unwrap();
        std::fs::write(b.join("docs/extra/more"), "more").unwrap();
        std::fs::create_dir(b.join("bin/alias")).unwrap();
        (t, vec![a, b])
    }

    #[test]
    fn contents_merge_in_order_as_root_with_modes_kept_and_dirlinks_followed() {
        let (_t, dirs) = fixture();
        let c = Contents::gather(&dirs, false).unwrap();
        assert_eq!(data_at(&c, "etc/conf"), b"b wins", "the later contents dir wins");
        assert_eq!(data_at(&c, "etc/conf.hard"), b"a", "hardlinks are copies (rsync without -H)");
        assert_eq!(data_at(&c, "bin/tool"), b"tool a");
        assert_eq!(data_at(&c, "bin/tool2"), b"tool b", "directories merge");
        let tool = inode_at(&c, "bin/tool");
        assert_eq!((tool.mode, tool.uid, tool.gid), (0o4755, 0, 0));
        assert!(matches!(kind_at(&c, "bin/alias"), Some(Kind::Dir(_))), "a directory replaces a link");
        // -k: both links to directories are the directories they name.
        assert_eq!(data_at(&c, "lib/libx.so"), b"elf", "a link out of the contents is followed on the host");
        assert_eq!(data_at(&c, "docs/readme"), b"doc");
        assert_eq!(data_at(&c, "docs/extra/more"), b"more");
        assert_eq!(inode_at(&c, "share/doc").mode, 0o700, "the directory's own mode");
        assert_eq!(inode_at(&c, "docs").mode, 0o755, "the later directory's mode wins");
        assert!(!c.is_empty());
        assert_eq!(c.files(), 9, "every regular file met, a replaced one too");
    }

    #[test]
    fn keep_dirlinks_keeps_links_and_writes_through_one_inside_the_contents() {
        let (t, dirs) = fixture();
        let c = Contents::gather(&dirs, true).unwrap();
        assert_eq!(
            kind_at(&c, "lib"),
            Some(&Kind::Symlink(t.path().join("store/pkg/lib").as_os_str().as_bytes().to_vec()))
        );
        assert_eq!(kind_at(&c, "docs"), Some(&Kind::Symlink(b"share/doc".to_vec())));
        // rsync -K: b's docs/ went through a's link into share/doc.
        assert_eq!(data_at(&c, "share/doc/extra/more"), b"more");
        assert!(matches!(kind_at(&c, "bin/alias"), Some(Kind::Dir(_))), "a link to a file is replaced");
        // A later directory through a link that leaves the contents is refused.
        let c3 = t.path().join("c");
        std::fs::create_dir_all(c3.join("lib/sub")).unwrap();
        let e = Contents::gather(&[dirs[0].clone(), c3], true).unwrap_err();
        assert!(matches!(&e, ContentsError::ThroughLink { link, .. } if link == b"lib"), "{e}");
    }

    #[test]
    fn a_link_loop_and_a_missing_dir_are_named() {
        let t = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(t.path().join("c/sub")).unwrap();
        symlink("..", t.path().join("c/sub/up")).unwrap();
        let e = Contents::gather(&[t.path().join("c")], false).unwrap_err();
        assert!(matches!(e, ContentsError::Loop(_)), "{e}");
        assert!(Contents::gather(&[t.path().join("c")], true).is_ok(), "kept links are not followed");
        let e = Contents::gather(&[t.path().join("nope")], false).unwrap_err();
        assert!(e.to_string().contains("nope"), "{e}");
    }

    #[test]
    fn the_contents_disk_reads_back_through_the_erofs_lookup() {
        let (_t, dirs) = fixture();
        let c = Contents::gather(&dirs, false).unwrap();
        let mut img = Vec::new();
        let bytes = c.write_disk(&mut img).unwrap();
        assert_eq!(bytes, img.len() as u64);
        let mut r = io::Cursor::new(img);
        assert_eq!(erofs::lookup(&mut r, b"docs/extra/more").unwrap(), Some(0o100_000));
        assert_eq!(erofs::lookup(&mut r, b"bin/alias").unwrap(), Some(0o040_000));
        assert_eq!(erofs::lookup(&mut r, b"nope").unwrap(), None);
    }
}
