//! Benchmark driver for `scripts/bench-layer` (ignored in normal runs): time
//! the conversion of a given upper-dir tar, seekable and streaming.

use std::fs::File;
use std::time::Instant;

use super::{convert, convert_seekable, ConvertOptions};

#[test]
#[ignore = "benchmark; run by scripts/bench-layer"]
fn bench_convert_upper_tar() {
    let (Ok(input), Ok(output)) = (std::env::var("ROOTLAYER_BENCH_INPUT"), std::env::var("ROOTLAYER_BENCH_OUTPUT"))
    else {
        eprintln!("skipping bench_convert_upper_tar: ROOTLAYER_BENCH_INPUT/OUTPUT not set");
        return;
    };
    let opts = ConvertOptions { source_date_epoch: Some(1), gzip: None };
    let t = Instant::now();
    let a = convert_seekable(File::open(&input).unwrap(), File::create(&output).unwrap(), &opts).unwrap();
    let seekable = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let b = convert(File::open(&input).unwrap(), File::create(&output).unwrap(), &opts).unwrap();
    let streaming = t.elapsed().as_secs_f64();
    assert_eq!(a, b);
    println!("BENCH seekable_seconds={seekable:.3}");
    println!("BENCH streaming_seconds={streaming:.3}");
    println!("BENCH layer_bytes={}", a.size);
    println!("BENCH diff_id={}", a.diff_id);
}
