//! e2e: a guest that leaves a directory of mode 000 in the exchange share
//! (here extraCommands, which run outside the chroot, next to the share)
//! does not make the host leave its work directory behind: the job ends
//! and TMPDIR is empty, as after any other job.

mod common;

use common::runas::FailingJob;

#[test]
fn run_as_root_cleans_up_an_exchange_share_the_guest_locked() {
    let Some(g) = common::guest("run_as_root_cleans_up_an_exchange_share_the_guest_locked") else { return };
    let job = FailingJob::new("echo ok > /etc/ok\n");
    let extra = job.tmp.path().join("extra.sh");
    let sh = job.store.join("bb/bin/sh");
    let body = format!(
        "#!{}\nset -e\nbb={}\n$bb mkdir -p /run/rootlayer/xchg/locked/deeper\n$bb touch /run/rootlayer/xchg/locked/deeper/f\n\
         $bb chmod 000 /run/rootlayer/xchg/locked/deeper /run/rootlayer/xchg/locked\n",
        sh.display(),
        job.store.join("bb/bin/busybox").display()
    );
    common::runas::write_script(&extra, &body);
    let f = job.run(&g, 256, 128, 600, &["--extra-commands", extra.to_str().unwrap()]);
    assert_eq!(f.code, 0, "{}", f.message());
    let left: Vec<_> = std::fs::read_dir(&job.rootlayer_tmp).unwrap().map(|e| e.unwrap().path()).collect();
    assert!(left.is_empty(), "left behind in TMPDIR: {left:?}");
}
