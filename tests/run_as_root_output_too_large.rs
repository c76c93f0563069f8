//! e2e: a runAsRoot script whose layer is larger than `--max-output`.
//! The exchange share refuses the guest's writes beyond the bound, rootlayer
//! exits 7 with a message saying to raise it, writes nothing at `--out` and
//! leaves nothing in its temp dir.

mod common;

use common::runas::FailingJob;

#[test]
fn run_as_root_output_over_max_output_is_refused() {
    let Some(g) = common::guest("run_as_root_output_over_max_output_is_refused") else { return };
    // 3 MiB in the new layer against a 1 MiB bound.
    let job = FailingJob::new("busybox dd if=/dev/zero of=/big bs=1M count=3\necho 'script done'\n");
    let f = job.run(&g, 256, 32, 600, &["--max-output", "1"]);
    assert!(f.stderr.contains("script done"), "the script itself succeeded");
    job.assert_failed(&f, 7);
    assert_eq!(
        f.message(),
        "rootlayer: the guest wrote more than --max-output (1 MiB) back to the host (raise it); nothing written"
    );
}
