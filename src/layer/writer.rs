//! A deterministic tar writer (POSIX ustar headers plus PAX `x` records when
//! a value does not fit).

use std::io::Write;

use super::rules::pax_record;
use super::{show, LayerError};

/// Tar type flags we write.
pub(crate) mod flag {
    pub const REGULAR: u8 = b'0';
    pub const LINK: u8 = b'1';
    pub const SYMLINK: u8 = b'2';
    pub const CHAR: u8 = b'3';
    pub const BLOCK: u8 = b'4';
    pub const DIR: u8 = b'5';
    pub const FIFO: u8 = b'6';
    pub const PAX: u8 = b'x';
}

/// One entry's header. Paths are written as given (directories should end in
/// `/`); user and group names are always empty.
#[derive(Debug)]
pub(crate) struct EntryHeader<'a> {
    pub path: &'a [u8],
    pub flag: u8,
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    pub size: u64,
    pub mtime: u64,
    pub link: &'a [u8],
    pub dev: (u32, u32),
    /// Sorted by name.
    pub xattrs: &'a [(String, Vec<u8>)],
}

const BLOCK: usize = 512;
const MAX_OCTAL_7: u64 = 0o777_7777;
const MAX_OCTAL_11: u64 = 0o777_7777_7777;

fn put_octal(field: &mut [u8], value: u64) {
    // width-1 digits and a NUL, as GNU tar and Go write them.
    let digits = field.len() - 1;
    let s = format!("{value:0digits$o}");
    field[..digits].copy_from_slice(s.as_bytes());
    field[digits] = 0;
}

/// The fields of one ustar header block.
struct Ustar<'a> {
    name: &'a [u8],
    flag: u8,
    mode: u32,
    uid: u64,
    gid: u64,
    size: u64,
    mtime: u64,
    link: &'a [u8],
    dev: (u32, u32),
}

fn ustar_block(u: &Ustar<'_>) -> [u8; BLOCK] {
    let Ustar { name, flag, mode, uid, gid, size, mtime, link, dev } = *u;
    let mut b = [0u8; BLOCK];
    b[..name.len()].copy_from_slice(name);
    put_octal(&mut b[100..108], u64::from(mode));
    put_octal(&mut b[108..116], uid);
    put_octal(&mut b[116..124], gid);
    put_octal(&mut b[124..136], size);
    put_octal(&mut b[136..148], mtime);
    b[156] = flag;
    b[157..157 + link.len()].copy_from_slice(link);
    b[257..263].copy_from_slice(b"ustar\0");
    b[263..265].copy_from_slice(b"00");
    put_octal(&mut b[329..337], u64::from(dev.0));
    put_octal(&mut b[337..345], u64::from(dev.1));
    b[148..156].fill(b' ');
    let sum: u64 = b.iter().map(|&x| u64::from(x)).sum();
    put_octal(&mut b[148..155], sum);
    b[155] = b' ';
    b
}

/// Write an entry's header (preceded by a PAX header when needed). The
/// caller writes `size` bytes of data and then [`write_padding`].
pub(crate) fn write_header<W: Write>(out: &mut W, h: &EntryHeader<'_>) -> Result<(), LayerError> {
    let too_large = |field| LayerError::TooLarge { path: show(h.path), field };
    if u64::from(h.dev.0) > MAX_OCTAL_7 || u64::from(h.dev.1) > MAX_OCTAL_7 {
        return Err(too_large("device number"));
    }
    let mut pax = Vec::new();
    let name: &[u8] = if h.path.len() > 100 {
        pax_record(&mut pax, b"path", h.path);
        &h.path[..100]
    } else {
        h.path
    };
    let link: &[u8] = if h.link.len() > 100 {
        pax_record(&mut pax, b"linkpath", h.link);
        &h.link[..100]
    } else {
        h.link
    };
    let mut field = |key: &[u8], v: u64, max: u64| {
        if v > max {
            pax_record(&mut pax, key, v.to_string().as_bytes());
            0
        } else {
            v
        }
    };
    let size = field(b"size", h.size, MAX_OCTAL_11);
    let uid = field(b"uid", h.uid, MAX_OCTAL_7);
    let gid = field(b"gid", h.gid, MAX_OCTAL_7);
    let mtime = field(b"mtime", h.mtime, MAX_OCTAL_11);
    for (k, v) in h.xattrs {
        let mut key = super::rules::PAX_XATTR_PREFIX.as_bytes().to_vec();
        key.extend_from_slice(k.as_bytes());
        pax_record(&mut pax, &key, v);
    }
    let w = |e| LayerError::Write(e);
    if !pax.is_empty() {
        let ph = ustar_block(&Ustar {
            name: b"PaxHeader",
            flag: flag::PAX,
            mode: 0o644,
            uid: 0,
            gid: 0,
            size: pax.len() as u64,
            mtime,
            link: b"",
            dev: (0, 0),
        });
        out.write_all(&ph).map_err(w)?;
        out.write_all(&pax).map_err(w)?;
        write_padding(out, pax.len() as u64)?;
    }
    let hb = ustar_block(&Ustar { name, flag: h.flag, mode: h.mode, uid, gid, size, mtime, link, dev: h.dev });
    out.write_all(&hb).map_err(w)
}

/// Zero-fill to the next 512-byte boundary after `size` bytes of data.
pub(crate) fn write_padding<W: Write>(out: &mut W, size: u64) -> Result<(), LayerError> {
    let rem = usize::try_from(size % BLOCK as u64).unwrap_or(0);
    if rem != 0 {
        out.write_all(&[0u8; BLOCK][rem..]).map_err(LayerError::Write)?;
    }
    Ok(())
}

/// The end-of-archive marker: two zero blocks.
pub(crate) fn write_trailer<W: Write>(out: &mut W) -> Result<(), LayerError> {
    out.write_all(&[0u8; 2 * BLOCK]).map_err(LayerError::Write)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pax_record_length_counts_its_own_digits() {
        let mut v = Vec::new();
        pax_record(&mut v, b"path", b"x");
        assert_eq!(v, b"9 path=x\n");
        let mut v = Vec::new();
        let long = vec![b'a'; 95];
        pax_record(&mut v, b"path", &long);
        // 95 + 4 + 3 = 102 bytes plus a 3-digit length field.
        assert_eq!(v.len(), 105);
        assert!(v.starts_with(b"105 path="));
        let mut v = Vec::new();
        pax_record(&mut v, b"path", &[b'a'; 91]);
        // 98 + 2 digits would be 100, which needs 3 digits: 101.
        assert!(v.starts_with(b"101 path="), "{}", String::from_utf8_lossy(&v));
        assert_eq!(v.len(), 101);
    }

    #[test]
    fn header_checksum_is_valid_for_tar_crate() {
        let mut out = Vec::new();
        let h = EntryHeader {
            path: b"a/b",
            flag: flag::REGULAR,
            mode: 0o755,
            uid: 1,
            gid: 2,
            size: 0,
            mtime: 3,
            link: b"",
            dev: (0, 0),
            xattrs: &[],
        };
        write_header(&mut out, &h).unwrap();
        let hdr = tar::Header::from_byte_slice(&out[..512]);
        assert_eq!(hdr.cksum().unwrap(), {
            let mut b = out[..512].to_vec();
            b[148..156].fill(b' ');
            b.iter().map(|&x| u32::from(x)).sum::<u32>()
        });
        assert_eq!(hdr.path_bytes().as_ref(), b"a/b");
        assert_eq!(hdr.mode().unwrap(), 0o755);
        assert_eq!(hdr.username_bytes(), Some(&b""[..]));
    }
}
