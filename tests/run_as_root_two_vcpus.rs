//! e2e: a job on two vCPUs (`--cpus 2`, the SMP kernel). The script sees
//! two processors and runs two CPU-bound processes at once; its layer is the
//! one the same job gives on one vCPU, byte for byte. The first 2-vCPU job
//! boots cold and takes a snapshot of two vCPUs, the next is restored from
//! it, and a 1-vCPU job never is: it boots cold and takes its own. Given the
//! uniprocessor kernel, a 2-vCPU job still gives the layer, and says the
//! kernel brought up one vCPU of two.

mod common;

use common::runas::FailingJob;
use common::snapshot::{boot_of, run_ok, Cache};

const SCRIPT: &str = r#"echo "processors seen: $(grep -c ^processor /proc/cpuinfo)"
work() { awk -v s="$1" 'BEGIN { x = s; for (i = 0; i < 1500000; i++) x = (x * 31 + i) % 1000003; print x }'; }
work 1 > /sum1 & work 2 > /sum2 & wait
cat /sum1 /sum2 > /etc/sums
rm /sum1 /sum2
"#;

#[test]
fn a_two_vcpu_job_gives_the_one_vcpu_layer_and_its_own_snapshot() {
    let Some(g) = common::guest("a_two_vcpu_job_gives_the_one_vcpu_layer_and_its_own_snapshot") else { return };
    let cache = Cache::new();
    let job = FailingJob::new(SCRIPT);
    let epoch = [("SOURCE_DATE_EPOCH", "1")];

    let smp =
        common::Guest { kernel: g.kernel_smp.clone(), kernel_smp: g.kernel_smp.clone(), initrd: g.initrd.clone() };
    let (first, two) = run_ok(&smp, &job, &cache, &["--cpus", "2"], &epoch);
    assert_eq!(boot_of(&first), "snapshot-taken", "{}", first.stderr);
    assert!(first.stderr.contains("processors seen: 2"), "{}", first.stderr);
    assert_eq!(cache.snapshots().len(), 1);

    let (second, two_restored) = run_ok(&smp, &job, &cache, &["--cpus", "2"], &epoch);
    assert_eq!(boot_of(&second), "restored", "{}", second.stderr);
    assert!(second.stderr.contains("processors seen: 2"), "{}", second.stderr);

    let (third, one) = run_ok(&g, &job, &cache, &["--cpus", "1"], &epoch);
    assert_eq!(boot_of(&third), "snapshot-taken", "a 2-vCPU snapshot never serves a 1-vCPU job: {}", third.stderr);
    assert!(third.stderr.contains("processors seen: 1"), "{}", third.stderr);
    assert_eq!(cache.snapshots().len(), 2, "one snapshot per vCPU count");

    let sums = common::runas::read_layer(&one)
        .into_iter()
        .find(|(path, _)| path == "etc/sums")
        .map(|(_, e)| String::from_utf8_lossy(&e.data).into_owned());
    assert_eq!(sums.as_deref().map(|s| s.lines().count()), Some(2), "both processes finished: {sums:?}");
    assert_eq!(two, one, "two vCPUs give the one-vCPU layer");
    assert_eq!(two_restored, one, "the restored 2-vCPU job gives it too");

    let (up, on_up) = run_ok(&g, &job, &cache, &["--cpus", "2"], &epoch);
    assert!(up.stderr.contains("processors seen: 1"), "{}", up.stderr);
    assert!(up.stderr.contains("the guest kernel brought up 1 of 2 vCPUs"), "{}", up.stderr);
    assert_eq!(on_up, one);
}
