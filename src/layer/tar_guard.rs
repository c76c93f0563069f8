//! A bound on what a hostile tar can make the `tar` crate hold in memory.
//!
//! The `tar` crate reads a PAX extended header (`x`, `g`) or a GNU long
//! name or link (`L`, `K`) whole into memory before the entry it belongs
//! to, whatever size its header claims: a 1 MiB gzip layer holding one
//! 512 MiB PAX record costs 512 MiB of host memory. [`TarGuard`] sits
//! between the decompressed layer and the `tar` crate and follows the
//! archive's structure (POSIX `ustar`/`pax`, GNU): it fails the read as soon
//! as such a header claims more than [`MAX_META`] bytes, or the archive
//! holds more than its entry bound, before anything is buffered. It reads
//! PAX `size` records (which override the next header's size) to keep its
//! place, and refuses GNU sparse entries, which no layer here may hold.

use std::io::{self, Read};

/// Most bytes one PAX header or GNU long name/link may hold (Linux paths
/// are at most 4 KiB; xattrs at most 64 KiB each).
pub const MAX_META: u64 = 1 << 20;
/// Most entries one layer may hold.
pub const MAX_ENTRIES: u64 = 10_000_000;

const BLOCK: usize = 512;

/// The guard's bounds: production uses [`Limits::DEFAULT`]; tests and the
/// `base_bounds` fuzz target pass small ones to reach them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Most bytes one PAX header or GNU long name/link may hold.
    pub max_meta: u64,
    /// Most header blocks (entries, PAX headers, long names) one layer may hold.
    pub max_entries: u64,
}

impl Limits {
    pub const DEFAULT: Limits = Limits { max_meta: MAX_META, max_entries: MAX_ENTRIES };
}

impl Default for Limits {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// What the guard refused (inside the `io::Error` its reads fail with).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Refused(pub String);

fn bad(what: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, Refused(what))
}

/// The guard's refusal inside `e`, if that is what `e` is.
pub fn refused(e: &io::Error) -> Option<&Refused> {
    e.get_ref().and_then(|inner| inner.downcast_ref::<Refused>())
}

/// See the module documentation.
#[derive(Debug)]
pub struct TarGuard<R> {
    inner: R,
    /// The header block being gathered, and how much of it.
    header: [u8; BLOCK],
    filled: usize,
    /// Bytes of the current entry's data (and padding) still to pass.
    data_left: u64,
    /// The current entry is a PAX header whose records are gathered here,
    /// and how many of its bytes are still to come.
    pax: Option<Vec<u8>>,
    pax_left: u64,
    /// A size the last PAX header set for the next entry.
    next_size: Option<u64>,
    entries: u64,
    limits: Limits,
    /// Two zero blocks end the archive: pass the rest through.
    zero_blocks: u8,
}

impl<R: Read> TarGuard<R> {
    pub fn new(inner: R) -> Self {
        Self::with_limits(inner, Limits::DEFAULT)
    }

    pub fn with_max_entries(inner: R, max_entries: u64) -> Self {
        Self::with_limits(inner, Limits { max_entries, ..Limits::DEFAULT })
    }

    pub fn with_limits(inner: R, limits: Limits) -> Self {
        TarGuard {
            inner,
            header: [0; BLOCK],
            filled: 0,
            data_left: 0,
            pax: None,
            pax_left: 0,
            next_size: None,
            entries: 0,
            limits,
            zero_blocks: 0,
        }
    }

    /// A whole header block arrived: check it and set up its data.
    fn on_header(&mut self) -> io::Result<()> {
        let h = &self.header;
        if h.iter().all(|&b| b == 0) {
            self.zero_blocks += 1;
            return Ok(());
        }
        self.zero_blocks = 0;
        self.entries += 1;
        if self.entries > self.limits.max_entries {
            return Err(bad(format!("more than {} entries in a layer", self.limits.max_entries)));
        }
        let kind = h[156];
        let size = header_size(&h[124..136]).ok_or_else(|| bad("a tar header with a malformed size".into()))?;
        let size = match kind {
            b'x' | b'g' | b'L' | b'K' => {
                if size > self.limits.max_meta {
                    return Err(bad(format!(
                        "a tar {} header of {size} bytes (at most {})",
                        match kind {
                            b'x' | b'g' => "PAX",
                            _ => "GNU long name",
                        },
                        self.limits.max_meta
                    )));
                }
                size
            }
            b'S' => return Err(bad("a GNU sparse entry (not supported in a layer)".into())),
            // The entry's own size: a PAX `size` record before it wins.
            _ => self.next_size.take().unwrap_or(size),
        };
        // A global header or a long name keeps a PAX size pending for the
        // entry after it; anything else has used it (or, a PAX header, is
        // about to set its own).
        if !matches!(kind, b'g' | b'L' | b'K') {
            self.next_size = None;
        }
        // Entries with no data in the archive whatever their size field.
        let stored = match kind {
            b'1' | b'2' | b'3' | b'4' | b'5' | b'6' => 0,
            _ => size,
        };
        // Padded to whole blocks: a size field (or PAX `size` record) near
        // 2^64 has no such length; refused, never wrapped.
        self.data_left = stored
            .div_ceil(BLOCK as u64)
            .checked_mul(BLOCK as u64)
            .ok_or_else(|| bad(format!("a tar entry of {size} bytes")))?;
        self.pax = (kind == b'x').then(|| Vec::with_capacity(usize::try_from(size).unwrap_or(0)));
        self.pax_left = if kind == b'x' { size } else { 0 };
        if self.data_left == 0 {
            self.finish_data()?;
        }
        Ok(())
    }

    /// The current entry's data has all passed.
    fn finish_data(&mut self) -> io::Result<()> {
        if let Some(records) = self.pax.take() {
            self.next_size = pax_size(&records)?;
        }
        Ok(())
    }
}

/// A header's size field: octal (NUL or space ended) or GNU base-256.
fn header_size(field: &[u8]) -> Option<u64> {
    if field[0] & 0x80 != 0 {
        // Base-256: the rest big-endian; more than 8 bytes' worth is too big.
        let digits = &field[1..];
        if digits[..digits.len() - 8].iter().any(|&b| b != 0) || field[0] != 0x80 {
            return None;
        }
        return Some(u64::from_be_bytes(digits[digits.len() - 8..].try_into().ok()?));
    }
    let text: Vec<u8> = field.iter().copied().take_while(|&b| b != 0).filter(|&b| b != b' ').collect();
    if text.is_empty() {
        return Some(0);
    }
    u64::from_str_radix(std::str::from_utf8(&text).ok()?, 8).ok()
}

/// The `size` record of PAX records, if any.
fn pax_size(records: &[u8]) -> io::Result<Option<u64>> {
    let mut rest = records;
    let mut size = None;
    while !rest.is_empty() {
        let sp = rest.iter().position(|&b| b == b' ').ok_or_else(|| bad("a malformed PAX record".into()))?;
        let len: usize = std::str::from_utf8(&rest[..sp])
            .ok()
            .and_then(|l| l.parse().ok())
            .filter(|&l| l > sp && l <= rest.len())
            .ok_or_else(|| bad("a malformed PAX record length".into()))?;
        let record = &rest[sp + 1..len];
        if let Some(v) = record.strip_prefix(b"size=") {
            let v = v.strip_suffix(b"\n").unwrap_or(v);
            size = Some(
                std::str::from_utf8(v)
                    .ok()
                    .and_then(|v| v.parse().ok())
                    .ok_or_else(|| bad("a malformed PAX size".into()))?,
            );
        }
        rest = &rest[len..];
    }
    Ok(size)
}

impl<R: Read> Read for TarGuard<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        if self.zero_blocks >= 2 {
            return self.inner.read(buf);
        }
        if self.data_left > 0 {
            let want = usize::try_from(self.data_left.min(buf.len() as u64)).expect("bounded by buf");
            let n = self.inner.read(&mut buf[..want])?;
            if let Some(records) = &mut self.pax {
                // The records, not the padding after them.
                let take = usize::try_from(self.pax_left.min(n as u64)).expect("bounded by n");
                records.extend_from_slice(&buf[..take]);
                self.pax_left -= take as u64;
            }
            self.data_left -= n as u64;
            if self.data_left == 0 && n > 0 {
                self.finish_data()?;
            }
            return Ok(n);
        }
        // A header block: gather it whole before passing any of it on.
        let want = BLOCK - self.filled;
        let n = self.inner.read(&mut self.header[self.filled..self.filled + want])?;
        if n == 0 {
            // The end of the stream: let the reader see what it got.
            let got = self.filled.min(buf.len());
            buf[..got].copy_from_slice(&self.header[..got]);
            self.filled = 0;
            return Ok(got);
        }
        self.filled += n;
        if self.filled < BLOCK {
            return self.read(buf);
        }
        self.on_header()?;
        self.filled = 0;
        // Hand the block on; what does not fit this call comes back as data.
        let out = buf.len().min(BLOCK);
        buf[..out].copy_from_slice(&self.header[..out]);
        if out < BLOCK {
            return Err(bad("a read buffer smaller than a tar block".into()));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guarded(tar: &[u8]) -> io::Result<Vec<(String, u64)>> {
        let mut a = tar::Archive::new(std::io::BufReader::new(TarGuard::new(tar)));
        let mut out = Vec::new();
        for e in a.entries()? {
            let mut e = e?;
            let path = String::from_utf8_lossy(&e.path_bytes()).into_owned();
            let mut data = Vec::new();
            e.read_to_end(&mut data)?;
            out.push((path, data.len() as u64));
        }
        Ok(out)
    }

    #[test]
    fn ordinary_archives_pass_unchanged() {
        let mut b = tar::Builder::new(Vec::new());
        let long = format!("d/{}", "n".repeat(300));
        for (name, len) in [("a", 0usize), ("b", 511), ("c", 512), ("e", 5000), (long.as_str(), 7)] {
            let mut h = tar::Header::new_gnu();
            h.set_size(len as u64);
            h.set_mode(0o644);
            b.append_data(&mut h, name, &vec![1u8; len][..]).unwrap();
        }
        b.append_pax_extensions([("SCHILY.xattr.user.x", &b"v"[..])]).unwrap();
        let mut h = tar::Header::new_ustar();
        h.set_size(3);
        b.append_data(&mut h, "pax", &b"abc"[..]).unwrap();
        let tar = b.into_inner().unwrap();
        let got = guarded(&tar).unwrap();
        assert_eq!(got.len(), 6);
        assert_eq!(got[4], (long, 7));
        assert_eq!(got[5], ("pax".to_string(), 3));
    }

    #[test]
    fn a_huge_pax_header_or_long_name_is_refused_before_it_is_read() {
        for kind in [b'x', b'L'] {
            let mut h = tar::Header::new_ustar();
            h.as_mut_bytes()[156] = kind;
            h.set_size(512 << 20);
            h.set_cksum();
            // Only the header: were the claim believed, 512 MiB would be read.
            let mut tar = h.as_bytes().to_vec();
            tar.extend_from_slice(&[0u8; 4096]);
            let e = guarded(&tar).unwrap_err();
            assert!(e.to_string().contains("at most 1048576"), "{e}");
        }
    }

    #[test]
    fn a_size_with_no_length_in_blocks_is_refused_not_wrapped() {
        // A PAX `size` record just under 2^64: padded to whole blocks it
        // would overflow (found by the base_image fuzz target).
        let mut b = tar::Builder::new(Vec::new());
        b.append_pax_extensions([("size", u64::MAX.to_string().as_bytes())]).unwrap();
        let mut h = tar::Header::new_ustar();
        h.set_path("huge").unwrap();
        h.set_size(0);
        h.set_cksum();
        b.append(&h, &[][..]).unwrap();
        let tar = b.into_inner().unwrap();
        let e = guarded(&tar).unwrap_err();
        assert!(e.to_string().contains(&format!("a tar entry of {} bytes", u64::MAX)), "{e}");
    }

    #[test]
    fn a_pax_size_record_keeps_the_guard_in_step() {
        // A PAX header sets the next entry's size to 1,000 (its header says 0).
        let mut b = tar::Builder::new(Vec::new());
        b.append_pax_extensions([("size", &b"1000"[..])]).unwrap();
        let mut h = tar::Header::new_ustar();
        h.set_path("big").unwrap();
        h.set_size(0);
        h.set_cksum();
        // (append copies all the data it is given, whatever the header says.)
        b.append(&h, &[7u8; 1000][..]).unwrap();
        let mut h = tar::Header::new_ustar();
        h.set_path("after").unwrap();
        h.set_size(1);
        h.set_cksum();
        b.append(&h, &[1u8][..]).unwrap();
        let tar = b.into_inner().unwrap();
        let got = guarded(&tar).unwrap();
        assert_eq!(got, [("big".to_string(), 1000), ("after".to_string(), 1)]);
    }

    #[test]
    fn the_entry_count_is_bounded() {
        let mut b = tar::Builder::new(Vec::new());
        for i in 0..20 {
            let mut h = tar::Header::new_gnu();
            h.set_size(0);
            b.append_data(&mut h, format!("f{i}"), &b""[..]).unwrap();
        }
        let tar = b.into_inner().unwrap();
        let mut a = tar::Archive::new(TarGuard::with_max_entries(&tar[..], 10));
        let err = a.entries().unwrap().map(|e| e.map(|_| ())).find(Result::is_err).expect("refused");
        assert!(err.unwrap_err().to_string().contains("more than 10 entries"));
    }
}
