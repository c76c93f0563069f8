#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| rootlayer::fuzz::snapshot_file(data));
