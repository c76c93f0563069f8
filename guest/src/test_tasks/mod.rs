//! What only the test initramfs's agent does (feature `test-tasks`,
//! `scripts/build-initramfs --test`): the self-tests a boot's command line
//! names (`ROOTLAYER_SELFTEST`), the device check and I/O benchmark tasks,
//! and the merged tree's listing. The product's PID 1 has none of it and
//! refuses each by name ([`crate::NO_TEST_TASKS`]).

pub mod device_check;
pub mod listing;
pub mod selftest;
