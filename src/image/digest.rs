//! sha256 digests (the only algorithm docker-archives and, in practice, OCI
//! layouts use) and readers that compute them on the way through.

use std::cell::RefCell;
use std::fmt;
use std::io::{self, Read, Write};
use std::rc::Rc;
use std::str::FromStr;

use sha2::{Digest as _, Sha256};

use super::ImageError;

/// A sha256 digest, written `sha256:<64 lowercase hex>`.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Sha256Digest([u8; 32]);

impl Sha256Digest {
    /// The digest of `data`.
    pub fn of(data: &[u8]) -> Self {
        Sha256Digest(Sha256::digest(data).into())
    }

    /// The digest a finished hasher holds.
    pub fn of_hasher(hasher: Sha256) -> Self {
        Sha256Digest(hasher.finalize().into())
    }

    /// The 64 hex digits without the algorithm prefix.
    pub fn hex(&self) -> String {
        rootlayer_protocol::hex::encode(&self.0)
    }

    /// Parses 64 hex digits without the algorithm prefix.
    pub fn from_hex(hex: &str) -> Option<Self> {
        let bytes = rootlayer_protocol::hex::decode(hex)?;
        Some(Sha256Digest(bytes.try_into().ok()?))
    }
}

impl fmt::Display for Sha256Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.hex())
    }
}

impl fmt::Debug for Sha256Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for Sha256Digest {
    type Err = ImageError;

    fn from_str(s: &str) -> Result<Self, ImageError> {
        let hex = s
            .strip_prefix("sha256:")
            .ok_or_else(|| ImageError::Invalid(format!("digest {s:?} is not a sha256 digest")))?;
        Sha256Digest::from_hex(hex).ok_or_else(|| ImageError::Invalid(format!("digest {s:?} is malformed")))
    }
}

impl From<Sha256Digest> for oci_spec::image::Digest {
    fn from(d: Sha256Digest) -> Self {
        // A well-formed sha256 digest always parses.
        oci_spec::image::Digest::from_str(&d.to_string())
            .unwrap_or_else(|_| unreachable!("sha256 digests are valid OCI digests"))
    }
}

impl TryFrom<&oci_spec::image::Digest> for Sha256Digest {
    type Error = ImageError;

    fn try_from(d: &oci_spec::image::Digest) -> Result<Self, ImageError> {
        d.as_ref().parse()
    }
}

/// Running sha256 and byte count, shared between a reader and its owner.
#[derive(Debug, Default)]
pub(crate) struct Tally {
    hasher: Sha256,
    pub(crate) len: u64,
}

impl Tally {
    pub(crate) fn update(&mut self, data: &[u8]) {
        self.hasher.update(data);
        self.len += data.len() as u64;
    }

    pub(crate) fn digest(&self) -> Sha256Digest {
        Sha256Digest::of_hasher(self.hasher.clone())
    }
}

pub(crate) type SharedTally = Rc<RefCell<Tally>>;

/// A reader that feeds everything it reads into a [`Tally`].
#[derive(Debug)]
pub(crate) struct HashingReader<R> {
    inner: R,
    tally: SharedTally,
    /// False for a reader whose bytes another reader already hashes into
    /// the same tally ([`HashingReader::same_as`]).
    hashes: bool,
}

impl<R: Read> HashingReader<R> {
    pub(crate) fn new(inner: R) -> (Self, SharedTally) {
        let tally = SharedTally::default();
        (HashingReader { inner, tally: tally.clone(), hashes: true }, tally)
    }

    /// A reader of bytes that `tally` already counts (the same bytes, read
    /// through a reader below this one): hashing them twice would give the
    /// same digest at twice the cost.
    pub(crate) fn same_as(inner: R, tally: &SharedTally) -> (Self, SharedTally) {
        (HashingReader { inner, tally: tally.clone(), hashes: false }, tally.clone())
    }
}

impl<R> HashingReader<R> {
    pub(crate) fn get_mut(&mut self) -> &mut R {
        &mut self.inner
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if self.hashes {
            self.tally.borrow_mut().update(&buf[..n]);
        }
        Ok(n)
    }
}

/// A writer that hashes what passes through it.
#[derive(Debug)]
pub(crate) struct HashingWriter<W> {
    inner: W,
    pub(crate) tally: Tally,
}

impl<W: Write> HashingWriter<W> {
    pub(crate) fn new(inner: W) -> Self {
        HashingWriter { inner, tally: Tally::default() }
    }

    pub(crate) fn into_inner(self) -> (W, Tally) {
        (self.inner, self.tally)
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.tally.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Checks a computed digest and size against what the image states.
pub(crate) fn check(
    what: &str,
    expected: &Sha256Digest,
    expected_size: Option<u64>,
    tally: &Tally,
) -> Result<(), ImageError> {
    let actual = tally.digest();
    if &actual != expected {
        return Err(ImageError::DigestMismatch {
            what: what.to_string(),
            expected: expected.to_string(),
            actual: actual.to_string(),
        });
    }
    match expected_size {
        Some(size) if size != tally.len => {
            Err(ImageError::SizeMismatch { what: what.to_string(), expected: size, actual: tally.len })
        }
        _ => Ok(()),
    }
}

/// What identifies a file's bytes without reading them: its device, inode,
/// size, mtime and ctime (every write moves the ctime, which no user can
/// set). Equal fingerprints of the same path mean unchanged content, as git
/// and ccache assume.
pub fn fingerprint(meta: &std::fs::Metadata) -> String {
    use std::os::unix::fs::MetadataExt;
    format!(
        "dev {} ino {} size {} mtime {}.{} ctime {}.{}",
        meta.dev(),
        meta.ino(),
        meta.size(),
        meta.mtime(),
        meta.mtime_nsec(),
        meta.ctime(),
        meta.ctime_nsec()
    )
}

/// [`fingerprint`] of a file whose last change is at least a second old: a
/// file changed again within the same tick of the kernel's coarse clock
/// would keep its ctime (git's "racy" entries), so a younger file's
/// fingerprint is not recorded (it is checked by content once more).
pub fn settled_fingerprint(meta: &std::fs::Metadata) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).ok()?;
    let changed = std::time::Duration::new(u64::try_from(meta.ctime()).ok()?, u32::try_from(meta.ctime_nsec()).ok()?);
    (now.saturating_sub(changed) >= std::time::Duration::from_secs(1)).then(|| fingerprint(meta))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_input_has_the_well_known_digest() {
        assert_eq!(
            Sha256Digest::of(b"").to_string(),
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    #[test]
    fn parse_round_trips_and_rejects_malformed() {
        let d = Sha256Digest::of(b"abc");
        assert_eq!(d.to_string().parse::<Sha256Digest>().unwrap(), d);
        assert!("sha512:00".parse::<Sha256Digest>().is_err());
        assert!("sha256:ABC".parse::<Sha256Digest>().is_err());
        let upper = d.hex().to_uppercase();
        assert!(format!("sha256:{upper}").parse::<Sha256Digest>().is_err());
    }

    #[test]
    fn hashing_reader_and_writer_agree_with_one_shot_digest() {
        let data = vec![7u8; 100_000];
        let (mut r, tally) = HashingReader::new(&data[..]);
        let mut w = HashingWriter::new(Vec::new());
        io::copy(&mut r, &mut w).unwrap();
        let (out, wt) = w.into_inner();
        assert_eq!(out, data);
        assert_eq!(tally.borrow().digest(), Sha256Digest::of(&data));
        assert_eq!(wt.digest(), Sha256Digest::of(&data));
        assert_eq!(wt.len, 100_000);
    }

    #[test]
    fn check_reports_digest_then_size() {
        let mut t = Tally::default();
        t.update(b"abc");
        let good = Sha256Digest::of(b"abc");
        assert!(check("x", &good, Some(3), &t).is_ok());
        assert!(matches!(check("x", &good, Some(4), &t), Err(ImageError::SizeMismatch { .. })));
        assert!(matches!(check("x", &Sha256Digest::of(b"abd"), Some(3), &t), Err(ImageError::DigestMismatch { .. })));
    }
}
