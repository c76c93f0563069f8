//! e2e: a `$ROOTLAYER_CACHE` that another user could write (world-writable,
//! or owned by someone else) is refused before anything is read from it or
//! written to it: exit 2 and one line naming it, as ssh refuses such a key
//! file. The same job with a cache of the user's own succeeds.

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
}
