//! e2e: a runAsRoot script that exhausts guest memory. The kernel's OOM
//! killer kills it and the script goes on to exit non-zero; rootlayer still
//! exits 5 (guest out of memory) with a message saying to raise --mem-size,
//! writes nothing at `--out` and leaves nothing in its temp dir.

mod common;

use common::runas::FailingJob;

#[test]
fn run_as_root_guest_out_of_memory_is_reported() {
    let Some(g) = common::guest("run_as_root_guest_out_of_memory_is_reported") else { return };
    // dd fills one buffer of all the guest's memory but 1 MiB: small enough
    // for the overcommit heuristic (MemTotal), so malloc succeeds, but more
    // than is free, so filling it gets dd OOM-killed. The script then goes
    // on and fails with its own code. The smallest guest keeps it short:
    // each page is a guest page fault, slow on emulated KVM.
    let job = FailingJob::new(
        "mib=$(busybox awk '/^MemTotal:/ { print int($2 / 1024) - 1 }' /proc/meminfo)\n\
         echo \"allocating $mib MiB\"\n\
         busybox dd if=/dev/zero of=/dev/null bs=${mib}M count=1 || echo \"dd ended with $?\"\n\
         exit 3\n",
    );
    let f = job.run(&g, 64, 64, 600, &[]);
    assert!(f.stderr.contains("allocating"), "the script ran");
    let oom = f.stderr.lines().find(|l| l.contains("Out of memory: Killed process")).expect("the OOM killer ran");
    assert!(oom.contains("(busybox)"), "the OOM killer chose the script's dd: {oom}");
    assert!(f.stderr.contains("dd ended with 137"), "the OOM killer killed dd and the script went on");
    job.assert_failed(&f, 5);
    assert_eq!(f.message(), "rootlayer: the guest ran out of memory (raise --mem-size)");
}
