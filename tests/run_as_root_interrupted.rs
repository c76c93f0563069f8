//! e2e: SIGTERM while a run-as-root job runs stops the guest and exits 130,
//! promptly, with nothing at --out and no temporary files left: not even
//! the output begun beside --out while the guest ran (an OCI layout).

mod common;

use common::runas::{make_store, write_script};
use std::io::{BufRead, BufReader};
use std::time::{Duration, Instant};

#[test]
fn sigterm_stops_the_job_and_cleans_up() {
    let Some(g) = common::guest("sigterm_stops_the_job_and_cleans_up") else { return };
    let tmp = common::tempdir();
    let private_tmp = common::tempdir();
    let store = make_store(tmp.path());
    let script = tmp.path().join("script.sh");
    write_script(
        &script,
        &format!("#!{0}/bb/bin/sh\necho sleeping\n{0}/bb/bin/busybox sleep 100000\n", store.display()),
    );
    let out = tmp.path().join("out");
    let mut child = common::rootlayer()
        .arg("run-as-root")
        .arg("--script")
        .arg(&script)
        .arg("--store")
        .arg(&store)
        .args(["--mem-size", "128", "--disk-size", "32", "--timeout", "900", "--format", "oci", "--out"])
        .arg(&out)
        .arg("--kernel")
        .arg(&g.kernel)
        .arg("--initrd")
        .arg(&g.initrd)
        .env("TMPDIR", private_tmp.path())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let mut lines = BufReader::new(stderr).lines();
    let mut seen = Vec::new();
    for line in lines.by_ref() {
        let line = line.unwrap();
        seen.push(line.clone());
        if line == "sleeping" {
            break;
        }
    }
    assert!(seen.last().is_some_and(|l| l == "sleeping"), "the script never started: {seen:#?}");
    let sent = Instant::now();
    // SAFETY: kill(2) on our own child's pid.
    assert_eq!(unsafe { libc::kill(i32::try_from(child.id()).unwrap(), libc::SIGTERM) }, 0);
    let rest: Vec<String> = lines.map(|l| l.unwrap()).collect();
    let status = child.wait().unwrap();
    eprintln!("{}", rest.join("\n"));
    assert_eq!(status.code(), Some(130), "interrupted exit code");
    assert!(rest.iter().any(|l| l.contains("interrupted")), "says it was interrupted");
    assert!(sent.elapsed() < Duration::from_secs(15), "stopping took {:?}", sent.elapsed());
    assert!(out.symlink_metadata().is_err(), "nothing at --out");
    let drafts: Vec<_> = std::fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|n| n.to_string_lossy().starts_with(".out."))
        .collect();
    assert!(drafts.is_empty(), "the output begun beside --out is left: {drafts:?}");
    let left: Vec<_> = std::fs::read_dir(private_tmp.path()).unwrap().collect();
    assert!(left.is_empty(), "temporary files left: {left:?}");
}
