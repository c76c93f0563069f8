//! Layer and archive compression: gzip and zstd, told apart by media type or
//! by magic number.

use std::io::{self, BufRead, BufReader, Read};

use oci_spec::image::MediaType;

use super::ImageError;

/// How a blob is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Compression {
    None,
    Gzip,
    Zstd,
}

const GZIP_MAGIC: &[u8] = &[0x1f, 0x8b];
const ZSTD_MAGIC: &[u8] = &[0x28, 0xb5, 0x2f, 0xfd];

impl Compression {
    /// Guesses from the first bytes of a stream.
    pub(crate) fn sniff(head: &[u8]) -> Compression {
        if head.starts_with(GZIP_MAGIC) {
            Compression::Gzip
        } else if head.starts_with(ZSTD_MAGIC) {
            Compression::Zstd
        } else {
            Compression::None
        }
    }

    /// The compression of an OCI or docker schema2 layer media type.
    pub(crate) fn of_layer_media_type(mt: &MediaType) -> Result<Compression, ImageError> {
        match mt {
            MediaType::ImageLayer | MediaType::ImageLayerNonDistributable => Ok(Compression::None),
            MediaType::ImageLayerGzip | MediaType::ImageLayerNonDistributableGzip => Ok(Compression::Gzip),
            MediaType::ImageLayerZstd | MediaType::ImageLayerNonDistributableZstd => Ok(Compression::Zstd),
            MediaType::Other(s) => match s.as_str() {
                "application/vnd.docker.image.rootfs.diff.tar" => Ok(Compression::None),
                "application/vnd.docker.image.rootfs.diff.tar.gzip"
                | "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip" => Ok(Compression::Gzip),
                "application/vnd.docker.image.rootfs.diff.tar.zstd" => Ok(Compression::Zstd),
                _ => Err(ImageError::UnsupportedMediaType(s.clone())),
            },
            other => Err(ImageError::UnsupportedMediaType(other.to_string())),
        }
    }

    /// The OCI layer media type for a blob compressed this way.
    pub(crate) fn oci_layer_media_type(self) -> MediaType {
        match self {
            Compression::None => MediaType::ImageLayer,
            Compression::Gzip => MediaType::ImageLayerGzip,
            Compression::Zstd => MediaType::ImageLayerZstd,
        }
    }
}

/// A decompressing reader that can hand back the compressed stream to be
/// drained once the decompressed data ends (so that trailing bytes are still
/// read, and hashed, by whoever is below).
pub(crate) enum Decoder<R: Read> {
    None(BufReader<R>),
    Gzip(flate2::bufread::MultiGzDecoder<BufReader<R>>),
    Zstd(zstd::stream::read::Decoder<'static, BufReader<R>>),
}

impl<R: Read> std::fmt::Debug for Decoder<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Decoder::None(_) => "Decoder::None",
            Decoder::Gzip(_) => "Decoder::Gzip",
            Decoder::Zstd(_) => "Decoder::Zstd",
        })
    }
}

impl<R: Read> Decoder<R> {
    pub(crate) fn new(inner: R, compression: Compression) -> io::Result<Self> {
        let buf = BufReader::with_capacity(128 * 1024, inner);
        Ok(match compression {
            Compression::None => Decoder::None(buf),
            Compression::Gzip => Decoder::Gzip(flate2::bufread::MultiGzDecoder::new(buf)),
            Compression::Zstd => Decoder::Zstd(zstd::stream::read::Decoder::with_buffer(buf)?),
        })
    }

    /// Reads whatever of the compressed stream the decoder left unread.
    pub(crate) fn drain(&mut self) -> io::Result<u64> {
        let inner: &mut BufReader<R> = match self {
            Decoder::None(b) => b,
            Decoder::Gzip(d) => d.get_mut(),
            Decoder::Zstd(d) => d.get_mut(),
        };
        let mut n = 0;
        loop {
            let len = inner.fill_buf()?.len();
            if len == 0 {
                return Ok(n);
            }
            inner.consume(len);
            n += len as u64;
        }
    }
}

impl<R: Read> Read for Decoder<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Decoder::None(r) => r.read(buf),
            Decoder::Gzip(r) => r.read(buf),
            Decoder::Zstd(r) => r.read(buf),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    #[test]
    fn sniff_tells_gzip_zstd_and_plain_apart() {
        assert_eq!(Compression::sniff(&gzip(b"x")), Compression::Gzip);
        let z = zstd::encode_all(&b"x"[..], 3).unwrap();
        assert_eq!(Compression::sniff(&z), Compression::Zstd);
        assert_eq!(Compression::sniff(b"ustar"), Compression::None);
        assert_eq!(Compression::sniff(b""), Compression::None);
    }

    #[test]
    fn decoders_round_trip() {
        let data: Vec<u8> = (0..50_000u32).map(|i| (i % 251) as u8).collect();
        for (c, blob) in [
            (Compression::None, data.clone()),
            (Compression::Gzip, gzip(&data)),
            (Compression::Zstd, zstd::encode_all(&data[..], 3).unwrap()),
        ] {
            let mut d = Decoder::new(&blob[..], c).unwrap();
            let mut out = Vec::new();
            d.read_to_end(&mut out).unwrap();
            assert_eq!(out, data, "{c:?}");
            assert_eq!(d.drain().unwrap(), 0);
        }
    }

    #[test]
    fn truncated_gzip_is_an_error() {
        let blob = gzip(&[1u8; 10_000]);
        let mut d = Decoder::new(&blob[..blob.len() - 5], Compression::Gzip).unwrap();
        let mut out = Vec::new();
        assert!(d.read_to_end(&mut out).is_err());
    }

    #[test]
    fn media_types_map_to_compression() {
        assert_eq!(Compression::of_layer_media_type(&MediaType::ImageLayerZstd).unwrap(), Compression::Zstd);
        assert_eq!(
            Compression::of_layer_media_type(&MediaType::from("application/vnd.docker.image.rootfs.diff.tar.gzip"))
                .unwrap(),
            Compression::Gzip
        );
        assert!(Compression::of_layer_media_type(&MediaType::ImageConfig).is_err());
    }
}
