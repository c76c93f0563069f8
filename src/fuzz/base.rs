//! `base_image`: the host's base-disk path for layers from a base image
//! (the user's input): flattened bottom first ([`crate::layer::flatten`])
//! and written as EROFS ([`crate::layer::erofs`]).
//!
//! Input: one or two layer tars, the first byte saying where the first
//! ends (its length in 512-byte records, 0 for one layer). Invariants: no
//! panic; a tree that flattens writes an image whose length is the one
//! reported, a whole number of 4 KiB blocks, with the EROFS magic and the
//! root at nid 128; the same layers give the same bytes; every inode of the
//! written tree is reachable only through directories.

use crate::layer::erofs::{self, Layers, BLOCK_SIZE};
use crate::layer::flatten::{Kind, Tree};
use std::io::Cursor;

pub fn base_image(data: &[u8]) {
    let Some((&split, rest)) = data.split_first() else { return };
    let cut = (usize::from(split) * 512).min(rest.len());
    let layers: Vec<&[u8]> = if split == 0 { vec![rest] } else { vec![&rest[..cut], &rest[cut..]] };
    let mut tree = Tree::default();
    for (i, l) in layers.iter().enumerate() {
        if tree.apply_tar(i, *l).is_err() {
            return;
        }
    }
    for inode in &tree.inodes {
        if let Kind::Dir(children) = &inode.kind {
            for (name, &child) in children {
                assert!(!name.is_empty() && !name.contains(&b'/') && name != b"." && name != b"..", "{name:?}");
                assert!(child != 0, "the root is nobody's child");
            }
        }
    }
    let write = || {
        let mut out = Vec::new();
        let mut src = Layers(layers.iter().map(|l| Cursor::new(l.to_vec())).collect());
        erofs::write(&tree, &mut src, &mut out).map(|info| (info, out))
    };
    let Ok((info, image)) = write() else { return };
    assert_eq!(info.bytes, image.len() as u64);
    assert_eq!(image.len() as u64 % BLOCK_SIZE, 0);
    assert_eq!(&image[1024..1028], &0xE0F5_E1E2u32.to_le_bytes());
    assert_eq!(u16::from_le_bytes([image[1038], image[1039]]), 128);
    let (_, again) = write().expect("a second write of the same tree");
    assert!(again == image, "the same layers give the same image");
}
