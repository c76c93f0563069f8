//! The listing ([`crate::protocol::listing`]) of a merged tree, made on the
//! host: the image's tree after the new layer (`--merged-listing`), from the
//! base tree and the very changeset the layer was written from, in the form
//! a directory gives it once unpacked (a symlink's mode 0777, a device's
//! `st_rdev`), so that it compares line for line with an unpack by umoci.

use std::collections::HashMap;
use std::io::{self, Read};

use super::changeset::Source;
use super::flatten::{Kind, Tree};
use super::show;
use crate::protocol::listing::{join, makedev, Entry, Fnv1a};

/// `tree`'s listing (the root left out), file bytes read from `src` (once
/// per inode).
pub fn of_tree(tree: &Tree, src: &mut dyn Source) -> io::Result<String> {
    let mut lines = Vec::new();
    let mut hashes: HashMap<usize, u64> = HashMap::new();
    let mut stack = vec![(0usize, Vec::new())];
    while let Some((dir, path)) = stack.pop() {
        let Kind::Dir(children) = &tree.inodes[dir].kind else { unreachable!("only directories are stacked") };
        for (name, &ino) in children {
            let p = super::rules::join(&path, name);
            let inode = &tree.inodes[ino];
            let (kind, mode, size, link, hash) = match &inode.kind {
                Kind::Dir(_) => {
                    stack.push((ino, p.clone()));
                    ('d', inode.mode, 0, String::new(), 0)
                }
                Kind::Symlink(t) => ('l', 0o777, 0, String::from_utf8_lossy(t).into_owned(), 0),
                Kind::File(d) => {
                    let hash = match hashes.get(&ino) {
                        Some(&h) => h,
                        None => {
                            let err = |e: io::Error| io::Error::new(e.kind(), format!("{}: {e}", show(&p)));
                            let h = Fnv1a::of(src.open(d).map_err(err)?.take(d.len())).map_err(err)?;
                            *hashes.entry(ino).or_insert(h)
                        }
                    };
                    ('f', inode.mode, d.len(), String::new(), hash)
                }
                Kind::Char(ma, mi) | Kind::Block(ma, mi) => ('o', inode.mode, 0, format!("{:x}", makedev(*ma, *mi)), 0),
                Kind::Fifo => ('o', inode.mode, 0, "0".into(), 0),
            };
            let (uid, gid) = (inode.uid.into(), inode.gid.into());
            lines.push(Entry { path: &p, kind, mode, uid, gid, size, link, hash }.line());
        }
    }
    Ok(join(lines))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layer::changeset::{Changeset, Data, HostFiles, Node};
    use std::os::unix::fs::symlink;

    /// The listing of a tree made on disk, and the host's of the same tree
    /// applied as a changeset: equal.
    #[test]
    fn the_hosts_listing_of_a_tree_is_the_listing_of_the_same_tree_on_disk() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("root");
        std::fs::create_dir_all(root.join("d/e")).unwrap();
        std::fs::write(root.join("d/f"), b"data").unwrap();
        std::fs::hard_link(root.join("d/f"), root.join("g")).unwrap();
        symlink("d//./f", root.join("l")).unwrap();
        rustix::fs::mknodat(rustix::fs::CWD, root.join("p"), rustix::fs::FileType::Fifo, 0o640.into(), 0).unwrap();
        let mut files = HostFiles::default();
        let f = files.push(root.join("d/f"));
        let meta = |p: &str| std::fs::symlink_metadata(root.join(p)).unwrap();
        let node = |p: &str, kind| {
            use std::os::unix::fs::MetadataExt;
            let m = meta(p);
            Node::new(p.as_bytes().to_vec(), kind, m.mode() & 0o7777, m.uid().into(), m.gid().into(), 0)
        };
        let mut cs = Changeset::default();
        for (p, kind) in [
            ("d", crate::layer::changeset::Kind::Dir),
            ("d/e", crate::layer::changeset::Kind::Dir),
            ("d/f", crate::layer::changeset::Kind::File(Data::Host { file: f, len: 4 })),
            ("g", crate::layer::changeset::Kind::Link(b"d/f".to_vec())),
            ("l", crate::layer::changeset::Kind::Symlink(b"d//./f".to_vec())),
            ("p", crate::layer::changeset::Kind::Fifo),
        ] {
            cs.push(node(p, kind), p.as_bytes()).unwrap();
        }
        let mut tree = Tree::default();
        tree.apply(&cs).unwrap();
        let ours = of_tree(&tree, &mut files).unwrap();
        assert_eq!(ours, crate::protocol::listing::of_tree(&root).unwrap());
    }
}
