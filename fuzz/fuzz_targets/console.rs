#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| rootlayer::fuzz::console(data));
