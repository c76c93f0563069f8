//! The seed's own recipe, run for real as root on the host: nixpkgs'
//! mkRootLayer (the base unpacked, `--contents` rsynced into the upper dir,
//! overlayfs mounted, the script run under `unshare -imnpuf --mount-proc`
//! in a chroot), and a path-by-path listing to compare its tree with the
//! image rootlayer made, unpacked by umoci.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Every path under `root` (`skip`ped subtrees left out) -> type, mode,
/// owner, content hash, link target, device, xattrs; regular files with
/// more than one name also list the other names of their inode.
pub fn full_listing(root: &Path, skip: &[&str]) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut inodes: BTreeMap<(u64, u64), Vec<String>> = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            let rel = String::from_utf8_lossy(p.strip_prefix(root).unwrap().as_os_str().as_bytes()).into_owned();
            if skip.iter().any(|s| rel.starts_with(&format!("{s}/"))) {
                continue;
            }
            let m = std::fs::symlink_metadata(&p).unwrap();
            let ft = m.file_type();
            let what = if ft.is_dir() {
                stack.push(p.clone());
                "dir".to_string()
            } else if ft.is_symlink() {
                format!("link {}", std::fs::read_link(&p).unwrap().display())
            } else if ft.is_file() {
                if m.nlink() > 1 {
                    inodes.entry((m.dev(), m.ino())).or_default().push(rel.clone());
                }
                format!("file {:016x} ({} bytes)", super::fnv1a(&std::fs::read(&p).unwrap()), m.len())
            } else if ft.is_char_device() || ft.is_block_device() {
                format!("dev {:x}", m.rdev())
            } else {
                "fifo".to_string()
            };
            let mut xattrs = Vec::new();
            if !ft.is_symlink() {
                let names = xattr_names(&p);
                for n in names {
                    xattrs.push(format!("{n}={:?}", xattr_value(&p, &n)));
                }
            }
            out.insert(rel, format!("{what} {:o} {}:{} [{}]", m.mode() & 0o7777, m.uid(), m.gid(), xattrs.join(",")));
        }
    }
    for names in inodes.values().filter(|n| n.len() > 1) {
        for n in names {
            let others: Vec<&String> = names.iter().filter(|o| *o != n).collect();
            out.get_mut(n).unwrap().push_str(&format!(" hardlinked with {others:?}"));
        }
    }
    out
}

fn xattr_names(p: &Path) -> Vec<String> {
    let mut buf = vec![0u8; 64 << 10];
    let n = rustix::fs::llistxattr(p, &mut buf).unwrap_or(0);
    let mut names: Vec<String> = buf[..n]
        .split(|&b| b == 0)
        .filter(|s| !s.is_empty())
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .collect();
    names.sort();
    names
}

fn xattr_value(p: &Path, name: &str) -> Vec<u8> {
    let mut buf = vec![0u8; 64 << 10];
    let n = rustix::fs::lgetxattr(p, name, &mut buf).unwrap_or(0);
    buf.truncate(n);
    buf
}

/// The seed's recipe in `work`: `base_layers` (tars, bottom first, without
/// whiteouts) unpacked as the lower dir, each of `contents` rsynced into
/// the upper dir as root (`-ak`, or `-aK` with `keep_dirlinks`), the
/// overlay mounted, `script` (a shell script for the image's /bin/sh) run
/// in a chroot of it as vmTools runs it. Returns the merged dir, still
/// mounted ([`Seed::drop`] unmounts it).
pub struct Seed {
    pub merged: PathBuf,
}

impl Seed {
    pub fn run(work: &Path, base_layers: &[PathBuf], contents: &[PathBuf], keep_dirlinks: bool, script: &str) -> Seed {
        Self::run_with_extra(work, base_layers, contents, keep_dirlinks, script, None)
    }

    /// [`Seed::run`], then `extra` (extraCommands, a host shell script) run
    /// in the upper dir once the overlay is unmounted, and the overlay
    /// mounted again.
    pub fn run_with_extra(
        work: &Path,
        base_layers: &[PathBuf],
        contents: &[PathBuf],
        keep_dirlinks: bool,
        script: &str,
        extra: Option<&str>,
    ) -> Seed {
        let (lower, upper, wd, merged) = (work.join("lower"), work.join("upper"), work.join("work"), work.join("mnt"));
        for d in [&lower, &upper, &wd, &merged] {
            std::fs::create_dir_all(d).unwrap();
        }
        for l in base_layers {
            sh(Command::new("tar").args(["--same-owner", "--numeric-owner", "-xpf"]).arg(l).arg("-C").arg(&lower));
        }
        let flags = if keep_dirlinks { "-aK" } else { "-ak" };
        for c in contents {
            let mut src = c.as_os_str().to_owned();
            src.push("/");
            sh(Command::new("rsync").args([flags, "--chown=0:0"]).arg(src).arg(format!("{}/", upper.display())));
        }
        let opts = format!("lowerdir={},upperdir={},workdir={}", lower.display(), upper.display(), wd.display());
        sh(Command::new("mount").args(["-t", "overlay", "overlay", "-o", &opts]).arg(&merged));
        let seed = Seed { merged: merged.clone() };
        // vmTools' runAsRoot: /dev and /sys bound in, a fresh /proc in new
        // ipc, mount, net, pid, uts namespaces, the script in a chroot.
        let m = merged.display();
        let run = format!(
            "mount --rbind /dev {m}/dev && mount --rbind /sys {m}/sys && mount --rbind /proc {m}/proc && \
             chroot {m} /bin/sh -c \"export PATH=/bin; $SCRIPT\""
        );
        sh(Command::new("unshare").args(["-imnpuf", "--mount-proc", "sh", "-c", &run]).env("SCRIPT", script));
        if let Some(extra) = extra {
            sh(Command::new("umount").arg(&merged));
            sh(Command::new("sh").args(["-c", extra]).current_dir(&upper));
            sh(Command::new("mount").args(["-t", "overlay", "overlay", "-o", &opts]).arg(&merged));
        }
        seed
    }
}

impl Drop for Seed {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.merged).status();
    }
}

/// Run `cmd`, failing the test with its output unless it succeeds.
pub fn sh(cmd: &mut Command) {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
