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

/// The peak resident set of this process, in KiB (`VmHWM`).
fn max_rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let line = status.lines().find_map(|l| l.strip_prefix("VmHWM:")).unwrap_or("0 kB");
    line.trim().trim_end_matches("kB").trim().parse().unwrap_or(0)
}

#[test]
#[ignore = "benchmark; run by scripts/bench-layer"]
fn bench_upper_image_to_layer() {
    use super::changeset::{self, Changeset};
    use super::ext4::Ext4;
    use super::upper::{self, Bounds, Ext4Files};
    let (Ok(image), Ok(output)) = (std::env::var("ROOTLAYER_BENCH_IMAGE"), std::env::var("ROOTLAYER_BENCH_OUTPUT"))
    else {
        eprintln!("skipping bench_upper_image_to_layer: ROOTLAYER_BENCH_IMAGE/OUTPUT not set");
        return;
    };
    // As the job opens it (read_upper).
    let open = || Ext4::open(std::io::BufReader::with_capacity(4096, File::open(&image).unwrap())).unwrap();
    let opts = ConvertOptions { source_date_epoch: Some(1), gzip: None };
    let t = Instant::now();
    let mut cs = Changeset::default();
    upper::changes(&mut open(), "upper", Bounds::limit(u64::MAX), &mut |_| false, &mut cs).unwrap();
    let walk = t.elapsed().as_secs_f64();
    let entries = cs.len();
    let t = Instant::now();
    let info = changeset::write(cs, &mut Ext4Files(open()), File::create(&output).unwrap(), &opts).unwrap();
    let write = t.elapsed().as_secs_f64();
    println!("BENCH image_entries={entries}");
    println!("BENCH image_walk_seconds={walk:.3}");
    println!("BENCH image_write_seconds={write:.3}");
    println!("BENCH image_layer_bytes={}", info.size);
    println!("BENCH image_diff_id={}", info.diff_id);
    println!("BENCH image_max_rss_kib={}", max_rss_kib());
}
