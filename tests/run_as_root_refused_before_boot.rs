//! e2e (no guest boots): inputs that cannot succeed are refused before the
//! VM starts, each with exit 2 and one line naming the input: an `--out` in
//! a missing or unwritable directory, a `--created` that is not RFC 3339, a
//! scratch disk too small, a `--store` or `--contents` that is not a
//! directory, an image (contents over the base) with a file or a symlink
//! where the script's /dev or a store is mounted. Nothing is left at
//! `--out` or in the temp dir.

mod common;

use common::runas::FailingJob;

fn refused(g: &common::Guest, job: &FailingJob, extra: &[&str], out: Option<&std::path::Path>, says: &str) {
    let f = job.run_to(g, out.unwrap_or(&job.out), &[&["--timeout", "60"][..], extra].concat());
    assert_eq!(f.code, 2, "{extra:?}: exit code; stderr:\n{}", f.stderr);
    assert!(!f.stderr.contains("rootlayer-agent"), "{extra:?}: the guest booted:\n{}", f.stderr);
    // The notice about which image of the archive was taken is not an error.
    let lines: Vec<&str> =
        f.stderr.lines().filter(|l| !l.starts_with("--- ") && !l.contains("took the first one")).collect();
    assert_eq!(lines.len(), 1, "{extra:?}: one line:\n{}", f.stderr);
    assert!(lines[0].starts_with("rootlayer: ") && lines[0].contains(says), "{extra:?}: {}", lines[0]);
    job.assert_nothing_left();
}

#[test]
fn run_as_root_refuses_what_cannot_succeed_before_boot() {
    let Some(g) = common::guest("run_as_root_refuses_what_cannot_succeed_before_boot") else { return };
    let job = FailingJob::new("echo never\n");
    let missing = job.tmp.path().join("no-such-dir/out");
    refused(&g, &job, &[], Some(&missing), "no-such-dir");
    refused(&g, &job, &["--created", "yesterday"], None, "--created \"yesterday\" is not an RFC 3339");
    refused(&g, &job, &["--created", "2024-02-30T00:00:00Z"], None, "no such day");
    refused(&g, &job, &["--disk-size", "0"], None, "--disk-size 0 MiB is too small");
    refused(&g, &job, &["--disk-size", "99999999"], None, "--disk-size 99999999 MiB is too large");
    let list = job.tmp.path().join("store-paths");
    std::fs::write(&list, "relative/path\n").unwrap();
    refused(&g, &job, &["--store-paths", list.to_str().unwrap()], None, "not absolute");
    std::fs::write(&list, "/nonexistent/store/path\n").unwrap();
    refused(&g, &job, &["--store-paths", list.to_str().unwrap()], None, "/nonexistent/store/path does not exist");
    std::fs::write(&list, "[1]").unwrap();
    refused(&g, &job, &["--base-json", list.to_str().unwrap()], None, "not a JSON object");
    let file = job.tmp.path().join("a-file");
    std::fs::write(&file, "x").unwrap();
    refused(&g, &job, &["--store", file.to_str().unwrap()], None, "is not a directory");
    refused(&g, &job, &["--contents", "/nonexistent/contents"], None, "--contents /nonexistent/contents");
    // The script's mounts would land elsewhere: refused, naming the path.
    let contents = job.tmp.path().join("contents");
    std::fs::create_dir(&contents).unwrap();
    std::fs::write(contents.join("dev"), "not a directory").unwrap();
    let c = contents.to_str().unwrap();
    refused(&g, &job, &["--contents", c], None, "/dev is not a directory in the image (contents over the base)");
    std::fs::remove_file(contents.join("dev")).unwrap();
    // A symlink on the store's path (kept as a link), however deep.
    let store = std::fs::canonicalize(&job.store).unwrap();
    let top = store.components().nth(1).unwrap().as_os_str().to_str().unwrap().to_string();
    std::os::unix::fs::symlink("/etc", contents.join(&top)).unwrap();
    let says =
        format!("/{top} is not a directory in the image (contents over the base): cannot mount {}", store.display());
    refused(&g, &job, &["--contents", c, "--keep-contents-dirlinks"], None, &says);
    if common::test_user().is_some() {
        // Root may write anywhere; the unprivileged test user may not
        // write a directory root owns.
        let locked = job.tmp.path().join("locked");
        std::fs::create_dir(&locked).unwrap();
        refused(&g, &job, &[], Some(&locked.join("out")), "is not writable");
    }
}
