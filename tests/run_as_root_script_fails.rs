//! e2e: a runAsRoot script that exits 7. rootlayer exits 1 (script failed),
//! reports the script's code in its message and in `--json`, writes nothing
//! at `--out` and leaves nothing in its temp dir.

mod common;

use common::runas::FailingJob;

#[test]
fn run_as_root_failing_script_reports_its_code_and_writes_nothing() {
    let Some(g) = common::guest("run_as_root_failing_script_reports_its_code_and_writes_nothing") else { return };
    let job = FailingJob::new("echo 'partial work' > /etc/partial\necho 'about to fail'\nexit 7\n");
    let f = job.run(&g, 256, 64, 600, &[]);
    assert!(f.stderr.contains("about to fail"), "the script's output streams to stderr");
    let json = job.assert_failed(&f, 1);
    assert_eq!(json["script_status"], 7, "{json}");
    assert_eq!(f.message(), "rootlayer: the script failed with exit status 7; nothing written");
    assert!(json["error"].as_str().unwrap().contains("exit status 7"), "{json}");
}
