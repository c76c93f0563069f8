//! e2e: a `$ROOTLAYER_CACHE` that another user could write (world-writable,
//! or owned by someone else) is refused before anything is read from it or
//! written to it: exit 2 and one line naming it, as ssh refuses such a key
//! file. The same job with a cache of the user's own succeeds, and so do
//! two jobs on a cache rootlayer makes itself under a umask of 002: nothing
//! it makes there is writable by others (its next run would refuse such a
//! directory; a group member could rewrite such a file).

mod common;

use common::runas::FailingJob;
use std::os::unix::fs::PermissionsExt;

#[test]
fn run_as_root_refuses_a_cache_others_can_write() {
    let Some(g) = common::guest("run_as_root_refuses_a_cache_others_can_write") else { return };
    let job = FailingJob::new("echo ok > /etc/ok\n");
    let cache = common::tempdir();
    let dir = cache.path().to_str().unwrap();
    std::fs::set_permissions(cache.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let f = job.run_with(&g, &[], &[("ROOTLAYER_CACHE", dir)]);
    assert_eq!(f.code, 2, "{}", f.stderr);
    assert!(
        f.message().contains("refusing the cache directory") && f.message().contains("mode 777"),
        "{}",
        f.message()
    );
    assert!(std::fs::read_dir(cache.path()).unwrap().next().is_none(), "nothing written to it");
    job.assert_nothing_left();

    if common::image::is_root() {
        // A cache of another user's (the snapshots directory, say).
        std::fs::set_permissions(cache.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::create_dir(cache.path().join("snapshots")).unwrap();
        std::os::unix::fs::chown(cache.path().join("snapshots"), Some(65534), Some(65534)).unwrap();
        let f = job.run_with(&g, &[], &[("ROOTLAYER_CACHE", dir)]);
        assert_eq!(f.code, 2, "{}", f.stderr);
        assert!(f.message().contains("owned by uid 65534"), "{}", f.message());
        std::fs::remove_dir(cache.path().join("snapshots")).unwrap();
    }

    std::fs::set_permissions(cache.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    let f = job.run_with(&g, &[], &[("ROOTLAYER_CACHE", dir)]);
    assert_eq!(f.code, 0, "{}", f.stderr);

    // A cache that does not exist yet, made by rootlayer under umask 002
    // (common where every user has a group of their own). The umask is
    // the process's, inherited by rootlayer: this binary has this one test.
    let fresh = cache.path().join("fresh");
    let old = rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o002));
    let env = [("ROOTLAYER_CACHE", fresh.to_str().unwrap())];
    let runs: Vec<_> =
        (0..2).map(|i| job.run_cmd(&g, &job.out_dir.join(format!("umask-{i}")), &["--timeout", "600"], &env)).collect();
    rustix::process::umask(old);
    for f in &runs {
        assert_eq!(f.code, 0, "{}", f.stderr);
    }
    // Nothing in it (directory, base disk, snapshot, memo) others can write.
    let mut paths = vec![fresh];
    while let Some(p) = paths.pop() {
        let meta = std::fs::symlink_metadata(&p).unwrap();
        let mode = meta.permissions().mode();
        assert_eq!(mode & 0o022, 0, "{} is mode {:o}", p.display(), mode & 0o7777);
        if meta.is_dir() {
            paths.extend(std::fs::read_dir(&p).unwrap().map(|e| e.unwrap().path()));
        }
    }
}
