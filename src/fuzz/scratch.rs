//! `scratch_ext4`: the scratch disk image as the guest leaves it (the guest
//! controls every byte), read by the host's ext4 reader
//! ([`crate::layer::ext4`]) into the upper dir's tar. Invariants: no panic
//! and no unbounded work; what it writes is a tar that reads back whole.
//! The seed is a real image made by `mkfs.ext4 -d` from an upper dir with
//! a whiteout, an opaque dir, a hardlink and a symlink.

use crate::layer::ext4::Ext4;
use crate::layer::upper::upper_tar;
use std::io::Cursor;

pub fn scratch_ext4(data: &[u8]) {
    let Ok(mut fs) = Ext4::open(Cursor::new(data.to_vec())) else { return };
    let mut out = Vec::new();
    if upper_tar(&mut fs, "upper", &mut out, 64 << 20).is_ok() {
        let mut archive = tar::Archive::new(&out[..]);
        for e in archive.entries().expect("a tar we wrote") {
            let mut e = e.expect("an entry we wrote");
            std::io::copy(&mut e, &mut std::io::sink()).expect("entry data we wrote");
        }
    }
}
