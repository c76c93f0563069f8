//! e2e: a runAsRoot script that prints forever. The console echo on the
//! host's stderr is rate-limited (`--max-log-rate`): beyond the burst, lines
//! are dropped and counted, so the builder's log stays bounded; `--timeout`
//! ends the job.

mod common;

use common::runas::FailingJob;

#[test]
fn run_as_root_endless_output_is_rate_limited() {
    let Some(g) = common::guest("run_as_root_endless_output_is_rate_limited") else { return };
    let job = FailingJob::new("echo flood-start\nbusybox yes 'flood line'\n");
    let rate_kib = 1;
    let f = job.run(&g, 256, 32, 60, &["--max-log-rate", &rate_kib.to_string()]);
    job.assert_failed(&f, 124);
    let echoed: u64 = f.stderr.lines().filter(|l| *l == "flood line").map(|l| l.len() as u64 + 1).sum();
    let start = f.stderr.lines().position(|l| l == "flood-start").expect("the script started");
    assert!(
        f.stderr.contains(&format!("rootlayer: guest output over {rate_kib} KiB/s: dropping lines")),
        "says it drops lines"
    );
    let dropped_note =
        f.stderr.lines().rfind(|l| l.starts_with("rootlayer: dropped ")).expect("counts what it dropped");
    let dropped: u64 = dropped_note.split_whitespace().nth(2).unwrap().parse().unwrap();
    eprintln!("echoed {echoed} bytes of the flood, dropped {dropped} lines; console lines before it: {start}");
    assert!(dropped > 0);
    // Everything echoed since the VMM started, boot included, is within the
    // 16 s burst plus the rate over the run.
    let all: u64 = f.stderr.lines().map(|l| l.len() as u64 + 1).sum();
    let bound = (16 + f.elapsed.as_secs() + 1) * rate_kib * 1024 + 8 * 1024;
    assert!(echoed > 0 && all <= bound, "echoed {all} bytes in {:?}, bound {bound}", f.elapsed);
}
