//! e2e: SIGINT during `rootlayer export` (all host work, no guest) stops it
//! at its next write: exit 130, nothing at `--out`, nothing left in TMPDIR.
//! (Before, the signal was only seen while a guest ran: export could not be
//! interrupted, and a job interrupted while the host read its layer still
//! wrote the output and exited 0.)

mod common;

use std::time::{Duration, Instant};

#[test]
fn export_is_interrupted_by_sigint_and_leaves_nothing() {
    let tmp = common::tempdir();
    // One layer with a 256 MiB file: seconds of host work for export.
    let big = vec![0u8; 256 << 20];
    let layer = common::image::layer_tar(&[("big", &big), ("etc/", b"")]);
    drop(big);
    let base = tmp.path().join("base.tar");
    common::image::docker_archive(&base, &[(&["big:latest"], &[layer])], false);
    let out = tmp.path().join("out").join("rootfs.tar");
    let scratch = tmp.path().join("tmp");
    for d in [out.parent().unwrap(), scratch.as_path()] {
        std::fs::create_dir(d).unwrap();
        common::give_to_test_user(d);
    }
    let started = Instant::now();
    let mut child = common::rootlayer()
        .args(["export", "--from-image"])
        .arg(&base)
        .arg("--out")
        .arg(&out)
        .env("TMPDIR", &scratch)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(700));
    assert!(child.try_wait().unwrap().is_none(), "export finished before the signal: make the image bigger");
    // SAFETY: kill(2) on our own child's pid, which has not been reaped.
    assert_eq!(unsafe { libc::kill(i32::try_from(child.id()).unwrap(), libc::SIGINT) }, 0);
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    eprintln!("--- rootlayer stderr ({:?}) ---\n{stderr}--- end ---", started.elapsed());
    assert_eq!(output.status.code(), Some(130), "{stderr}");
    assert!(stderr.contains("interrupted"), "{stderr}");
    assert!(!out.exists(), "nothing at --out");
    let left: Vec<_> = std::fs::read_dir(out.parent().unwrap()).unwrap().map(|e| e.unwrap().path()).collect();
    assert!(left.is_empty(), "nothing beside --out: {left:?}");
    let left: Vec<_> = std::fs::read_dir(&scratch).unwrap().map(|e| e.unwrap().path()).collect();
    assert!(left.is_empty(), "nothing left in TMPDIR: {left:?}");
}
