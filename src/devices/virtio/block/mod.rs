//! virtio-blk (virtio 1.2, section 5.2): the scratch disk, backed by a raw
//! (sparse) file on the host.
//!
//! - [`device`]: the [`Block`] device: features, the `virtio_blk_config`
//!   space, activation, and the queue handler that executes requests against
//!   the file.
//! - [`request`]: turns one descriptor chain into a typed request, checking
//!   every address, length and direction the guest supplied; no I/O.
//!
//! The guest is untrusted: a malformed request is answered with an error
//! status, or returned with used length 0 when it has no usable status byte,
//! and the next request is served as usual.

pub mod device;
pub mod request;

pub use device::{Block, BlockError};

/// The virtio-blk sector: offsets and capacity are counted in 512 bytes,
/// whatever the block size.
pub const SECTOR_SIZE: u64 = 512;
/// Maximum size of the one request queue.
pub const QUEUE_SIZE: u16 = 256;
/// Length of the device ID returned by `VIRTIO_BLK_T_GET_ID`.
pub const ID_BYTES: usize = 20;

/// Request status bytes (virtio 1.2, 5.2.6), as written to the guest.
pub const STATUS_OK: u8 = 0;
pub const STATUS_IOERR: u8 = 1;
pub const STATUS_UNSUPP: u8 = 2;

#[cfg(test)]
mod tests {
    use super::*;
    use virtio_bindings::virtio_blk::{VIRTIO_BLK_ID_BYTES, VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP};

    #[test]
    fn status_and_id_constants_match_the_spec_headers() {
        assert_eq!(u32::from(STATUS_OK), VIRTIO_BLK_S_OK);
        assert_eq!(u32::from(STATUS_IOERR), VIRTIO_BLK_S_IOERR);
        assert_eq!(u32::from(STATUS_UNSUPP), VIRTIO_BLK_S_UNSUPP);
        assert_eq!(u32::try_from(ID_BYTES).unwrap(), VIRTIO_BLK_ID_BYTES);
    }
}
