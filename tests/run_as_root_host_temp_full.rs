//! e2e: the host's temporary directory fills up under the sparse scratch
//! disk (a builder's small /tmp). The script's 16 MB stay in the guest's
//! page cache until the final remount writes them out, and those writes
//! fail on the host just before the guest powers off: the job fails, naming
//! the disk and the cause, and writes nothing, where it used to read the
//! layer off a scratch disk the guest kernel had failed to write back
//! without saying so. The test (root) mounts the small file system, an
//! 8 MiB tmpfs as rootlayer's TMPDIR; rootlayer runs as the test user.

mod common;

use common::runas::{dir_entries, FailingJob};
use std::path::{Path, PathBuf};
use std::process::Command;

/// A tmpfs of `size` mounted at `dir` for as long as it lives, owned by the
/// test user (or root).
struct SmallTmpfs(PathBuf);

impl SmallTmpfs {
    fn mount(dir: &Path, size: &str) -> Self {
        let (uid, gid) = common::test_user().map_or((0, 0), |u| (u.uid, u.gid));
        let opts = format!("size={size},mode=0700,uid={uid},gid={gid}");
        common::seed::sh(Command::new("mount").args(["-t", "tmpfs", "-o", &opts, "tmpfs"]).arg(dir));
        Self(dir.to_path_buf())
    }
}

impl Drop for SmallTmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn run_as_root_host_temp_full_fails_naming_the_disk() {
    let test = "run_as_root_host_temp_full_fails_naming_the_disk";
    let Some(g) = common::guest(test) else { return };
    if !common::image::is_root() {
        eprintln!("SKIP {test}: mounting the small file system needs root (scripts/test as root does)");
        return;
    }
    let job = FailingJob::new(
        "bb=$PATH/busybox\n\
         cat $bb $bb $bb $bb $bb $bb $bb $bb > /big\n\
         ls -l /big\n",
    );
    let tmpfs = SmallTmpfs::mount(&job.rootlayer_tmp, "8m");
    let f = job.run(&g, 256, 128, 600, &[]);
    let left = dir_entries(&job.rootlayer_tmp);
    drop(tmpfs);

    assert_eq!(f.code, 70, "an internal error, not a layer: {}", f.stderr);
    let m = f.message();
    assert!(m.contains("virtio-blk disk rootlayer-scratch:") && m.contains("No space left on device"), "{m}");
    assert!(m.contains("the guest was stopped"), "{m}");
    assert!(!f.stderr.contains("rootlayer: layer sha256:"), "no layer: {}", f.stderr);
    assert!(!job.out.exists(), "nothing at --out");
    assert!(left.is_empty(), "temporary files left in TMPDIR: {left:?}");
}
