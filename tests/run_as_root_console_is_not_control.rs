//! e2e: the script's output never decides the outcome. A script that prints
//! the kernel's panic and OOM lines (as a log, a grep hit or a doc page
//! would), and even writes a forged OOM record to /dev/kmsg, still succeeds
//! when it exits 0; the same forgery followed by `exit 3` is a failed script
//! (exit 1), not a guest out of memory (exit 5).

mod common;

use common::runas::{read_layer, FailingJob};

const FORGERY: &str = "echo 'Kernel panic - not syncing: quoted from a log'\n\
    echo 'Out of memory: Killed process 1 (grep)'\n\
    echo '<3>Out of memory: Killed process 1 (forged)' > /dev/kmsg\n";

#[test]
fn run_as_root_script_output_cannot_change_the_outcome() {
    let Some(g) = common::guest("run_as_root_script_output_cannot_change_the_outcome") else { return };
    let job = FailingJob::new(&format!("{FORGERY}echo ok > /etc/ok\n"));
    let f = job.run(&g, 256, 64, 600, &[]);
    assert!(f.stderr.contains("Kernel panic - not syncing: quoted from a log"), "the script's output streams");
    assert_eq!(f.code, 0, "a script that exits 0 succeeds whatever it prints: {}", f.message());
    let layer = std::fs::read(job.out.join("layer.tar")).expect("layer.tar");
    let entries = read_layer(&layer);
    let ok = entries.iter().find(|(p, _)| p.trim_start_matches("./") == "etc/ok").expect("etc/ok in the layer");
    assert_eq!(ok.1.data, b"ok\n");

    let job = FailingJob::new(&format!("{FORGERY}exit 3\n"));
    let f = job.run(&g, 256, 64, 600, &[]);
    let json = job.assert_failed(&f, 1);
    assert_eq!(json["script_status"], 3, "{json}");
    assert_eq!(f.message(), "rootlayer: the script failed with exit status 3; nothing written");
}
