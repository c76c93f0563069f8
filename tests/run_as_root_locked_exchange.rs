//! e2e: a guest that leaves a directory of mode 000 in the exchange share
//! (here extraCommands, which run outside the chroot as root of the guest:
//! they mount the share themselves, as a hostile guest could, since the
//! agent mounts it only for a task that leaves files there) does not make
//! the host leave its work directory behind: the job ends and TMPDIR is
//! empty, as after any other job.

mod common;

use common::runas::FailingJob;

#[test]
fn run_as_root_cleans_up_an_exchange_share_the_guest_locked() {
    let Some(g) = common::guest("run_as_root_cleans_up_an_exchange_share_the_guest_locked") else { return };
    let job = FailingJob::new("echo ok > /etc/ok\n");
    let extra = job.tmp.path().join("extra.sh");
    let sh = job.store.join("bb/bin/sh");
    let body = format!(
        "#!{}\nset -e\nbb={}\nx=/run/rootlayer/hostile\n$bb mkdir -p $x\n$bb mount -t virtiofs xchg $x\n\
         $bb mkdir -p $x/locked/deeper\n$bb touch $x/locked/deeper/f\n$bb chmod 000 $x/locked/deeper $x/locked\n\
         $bb ls -ld $x/locked\n",
        sh.display(),
        job.store.join("bb/bin/busybox").display()
    );
    common::runas::write_script(&extra, &body);
    let f = job.run(&g, 256, 128, 600, &["--extra-commands", extra.to_str().unwrap()]);
    assert_eq!(f.code, 0, "{}", f.message());
    assert!(f.stderr.contains("d---------"), "the guest locked a directory of the share");
    let left: Vec<_> = std::fs::read_dir(&job.rootlayer_tmp).unwrap().map(|e| e.unwrap().path()).collect();
    assert!(left.is_empty(), "left behind in TMPDIR: {left:?}");
}
