//! e2e: the base image is flattened on the host into one EROFS disk that
//! the guest mounts in place (no unpack phase), cached by chain id: the
//! second job on the same base converts nothing and gives the same layer;
//! a damaged cache entry is noticed (its sha256) and made again.

mod common;

use common::runas::FailingJob;

fn phases(stderr: &str) -> String {
    stderr.lines().rev().find(|l| l.starts_with("rootlayer: layer sha256:")).expect("summary line").to_string()
}

#[test]
fn run_as_root_base_disk_is_made_once_and_checked_before_use() {
    let Some(g) = common::guest("run_as_root_base_disk_is_made_once_and_checked_before_use") else { return };
    let cache = common::tempdir();
    common::give_to_test_user(cache.path());
    let cache_env = cache.path().to_str().unwrap().to_string();
    let run = |name: &str| {
        let job = FailingJob::new("echo changed > /etc/changed\ntest -f /etc/passwd\n");
        // Clamped mtimes: the layers of two runs are comparable byte for byte.
        let f = job.run_env(&g, &[("ROOTLAYER_CACHE", &cache_env), ("SOURCE_DATE_EPOCH", "1")]);
        assert_eq!(f.code, 0, "{name}: {}", f.message());
        assert!(!phases(&f.stderr).contains("unpack"), "{name}: no unpack phase: {}", phases(&f.stderr));
        (phases(&f.stderr), std::fs::read(job.out.join("layer.tar")).unwrap())
    };
    let (first, layer1) = run("first");
    assert!(first.contains("[base ") && !first.contains("base (cached)"), "{first}");
    let disks: Vec<_> = std::fs::read_dir(cache.path().join("base"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "erofs"))
        .collect();
    assert_eq!(disks.len(), 1, "one base disk: {disks:?}");
    let (second, layer2) = run("second");
    assert!(second.contains("base (cached)"), "{second}");
    assert_eq!(layer1, layer2, "the same layer from the cached disk");

    // One flipped byte in the cached disk: made again, never mounted.
    let mut bytes = std::fs::read(&disks[0]).unwrap();
    let at = bytes.len() - 1;
    bytes[at] ^= 0x5a;
    std::fs::write(&disks[0], &bytes).unwrap();
    let (third, layer3) = run("third");
    assert!(!third.contains("base (cached)"), "a damaged disk is not used: {third}");
    assert_eq!(layer3, layer1);
    assert_ne!(std::fs::read(&disks[0]).unwrap(), bytes, "the entry was made again");
}
