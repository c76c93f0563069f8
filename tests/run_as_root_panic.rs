//! e2e: a runAsRoot script that crashes the guest kernel through
//! /proc/sysrq-trigger. rootlayer exits 4 (guest kernel panic) with the
//! kernel's panic line in its message, writes nothing at `--out` and leaves
//! nothing in its temp dir. Needs CONFIG_MAGIC_SYSRQ in the guest kernel.

mod common;

use common::runas::FailingJob;

#[test]
fn run_as_root_guest_kernel_panic_is_reported() {
    let Some(g) = common::guest("run_as_root_guest_kernel_panic_is_reported") else { return };
    let job = FailingJob::new("echo 'crashing the kernel'\necho c > /proc/sysrq-trigger\necho 'not reached'\n");
    let f = job.run(&g, 256, 64, 600, &[]);
    assert!(f.stderr.contains("crashing the kernel"), "the script ran");
    assert!(!f.stderr.contains("not reached"), "the kernel crashed under the script");
    job.assert_failed(&f, 4);
    let panic_line = f
        .stderr
        .lines()
        .find(|l| l.contains("Kernel panic - not syncing") && !l.starts_with("rootlayer: "))
        .expect("the guest console shows the panic");
    assert!(f.message().starts_with("rootlayer: the guest kernel panicked: "), "{}", f.message());
    assert!(f.message().contains("Kernel panic - not syncing: sysrq triggered crash"), "{}", f.message());
    assert!(f.message().ends_with(panic_line.trim()), "message {:?} has the panic line {panic_line:?}", f.message());
}
