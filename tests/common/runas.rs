//! Fixtures for the run-as-root e2e tests: a store holding a static busybox
//! (and a tiny static setcap helper), a two-layer busybox base image as a
//! docker-archive, and a reader for the produced layer.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

pub const BUSYBOX: &str = "/bin/busybox";

/// A store directory (shared read-only into the guest at its own path):
/// `bb/bin/{busybox,sh}` and `tools/bin/setcap-raw`.
pub fn make_store(root: &Path) -> PathBuf {
    let store = root.join("store");
    let bin = store.join("bb/bin");
    std::fs::create_dir_all(&bin).unwrap();
    std::fs::copy(BUSYBOX, bin.join("busybox")).unwrap();
    std::os::unix::fs::symlink("busybox", bin.join("sh")).unwrap();
    let tools = store.join("tools/bin");
    std::fs::create_dir_all(&tools).unwrap();
    // A static helper that sets security.capability (cap_net_bind_service,
    // permitted + effective), as `setcap cap_net_bind_service+ep` would.
    let src = root.join("setcap-raw.c");
    std::fs::write(
        &src,
        r#"#include <sys/xattr.h>
#include <stdio.h>
int main(int argc, char **argv) {
    /* vfs_cap_data revision 2: magic_etc = 0x02000001 (effective), permitted[0] = 1 << 10 */
    unsigned char v[20] = {0x01,0x00,0x00,0x02, 0x00,0x04,0x00,0x00, 0,0,0,0, 0,0,0,0, 0,0,0,0};
    if (argc != 2) return 2;
    if (setxattr(argv[1], "security.capability", v, sizeof v, 0) != 0) { perror("setxattr"); return 1; }
    return 0;
}
"#,
    )
    .unwrap();
    let st =
        Command::new("gcc").args(["-static", "-O2", "-o"]).arg(tools.join("setcap-raw")).arg(&src).status().unwrap();
    assert!(st.success(), "building the static setcap helper");
    // And one that sets a POSIX ACL (user::rwx, user:1000:rwx, group::r-x,
    // mask::rwx, other::r-x), as `setfacl -m u:1000:rwx` would.
    let src = root.join("setacl-raw.c");
    std::fs::write(&src, format!("{}{}", SETACL_C, "")).unwrap();
    let st =
        Command::new("gcc").args(["-static", "-O2", "-o"]).arg(tools.join("setacl-raw")).arg(&src).status().unwrap();
    assert!(st.success(), "building the static setacl helper");
    std::fs::canonicalize(&store).unwrap()
}

/// The ACL `setacl-raw` sets, in the kernel's xattr form.
pub fn acl_1000_rwx() -> Vec<u8> {
    let mut acl = 2u32.to_le_bytes().to_vec();
    for (tag, perm, id) in
        [(1u16, 7u16, u32::MAX), (2, 7, 1000), (4, 5, u32::MAX), (0x10, 7, u32::MAX), (0x20, 5, u32::MAX)]
    {
        acl.extend_from_slice(&tag.to_le_bytes());
        acl.extend_from_slice(&perm.to_le_bytes());
        acl.extend_from_slice(&id.to_le_bytes());
    }
    acl
}

const SETACL_C: &str = r#"#include <sys/xattr.h>
#include <stdio.h>
#include <stdint.h>
#include <string.h>
int main(int argc, char **argv) {
    /* posix_acl_xattr: version 2, then (tag, perm, id) little-endian. */
    struct { uint16_t tag, perm; uint32_t id; } e[5] = {
        {0x01, 7, 0xffffffff}, {0x02, 7, 1000}, {0x04, 5, 0xffffffff}, {0x10, 7, 0xffffffff}, {0x20, 5, 0xffffffff}};
    unsigned char v[4 + sizeof e];
    uint32_t version = 2;
    memcpy(v, &version, 4);
    memcpy(v + 4, e, sizeof e);
    if (argc != 2) return 2;
    if (setxattr(argv[1], "system.posix_acl_access", v, sizeof v, 0) != 0) { perror("setxattr"); return 1; }
    return 0;
}
"#;

/// A busybox root filesystem (layer 1) and a small second layer, as a
/// docker-archive named `base:latest`. Returns the archive path; the layer
/// tars stay beside it (`l1.tar`, `l2.tar`).
pub fn make_base_image(root: &Path) -> PathBuf {
    let l1 = root.join("l1");
    for d in ["bin", "etc", "data", "old", "d/sub", "keep", "usr/local/bin", "home", "tmp"] {
        std::fs::create_dir_all(l1.join(d)).unwrap();
    }
    std::fs::set_permissions(l1.join("tmp"), std::fs::Permissions::from_mode(0o1777)).unwrap();
    std::fs::copy(BUSYBOX, l1.join("bin/busybox")).unwrap();
    for applet in ["sh", "ls", "cat", "echo", "mkdir", "rm", "chown", "chmod", "ln", "mknod", "cp", "touch", "mv"] {
        std::os::unix::fs::symlink("busybox", l1.join("bin").join(applet)).unwrap();
    }
    std::fs::write(l1.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n").unwrap();
    std::fs::write(l1.join("etc/group"), "root:x:0:\n").unwrap();
    std::fs::write(l1.join("data/owned"), "owned by app after the script\n").unwrap();
    std::fs::write(l1.join("data/target"), "symlink target\n").unwrap();
    std::fs::write(l1.join("old/file"), "deleted by the script\n").unwrap();
    std::fs::write(l1.join("old/stays"), "kept\n").unwrap();
    std::fs::write(l1.join("d/base-file"), "gone after rm -rf d\n").unwrap();
    std::fs::write(l1.join("d/sub/deep"), "gone too\n").unwrap();
    std::fs::write(l1.join("keep/opaque-base"), "under an opaque dir in layer 2\n").unwrap();
    let l2 = root.join("l2");
    std::fs::create_dir_all(l2.join("etc")).unwrap();
    std::fs::write(l2.join("etc/motd"), "layer two\n").unwrap();
    // keep/ is opaque in layer 2: layer 1's keep/opaque-base is hidden.
    std::fs::create_dir_all(l2.join("keep")).unwrap();
    std::fs::write(l2.join("keep/.wh..wh..opq"), "").unwrap();
    std::fs::write(l2.join("keep/from-layer-2"), "visible\n").unwrap();
    let t1 = root.join("l1.tar");
    let t2 = root.join("l2.tar");
    for (dir, tar) in [(&l1, &t1), (&l2, &t2)] {
        layer_of_dir(dir, tar);
    }
    let layers = vec![std::fs::read(&t1).unwrap(), std::fs::read(&t2).unwrap()];
    let archive = root.join("base.tar");
    super::image::docker_archive(&archive, &[(&["base:latest"], &layers)], false);
    archive
}

/// `dir` as a layer tar at `tar` (GNU tar: sorted, root-owned, mtime 1000).
pub fn layer_of_dir(dir: &Path, tar: &Path) {
    let st = Command::new("tar")
        .args(["--sort=name", "--owner=0", "--group=0", "--numeric-owner", "--mtime=@1000", "-C"])
        .arg(dir)
        .args(["-cf"])
        .arg(tar)
        .arg(".")
        .status()
        .unwrap();
    assert!(st.success());
}

pub fn write_script(path: &Path, body: &str) {
    std::fs::write(path, body).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// One entry of a produced layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerEntry {
    pub kind: char,
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    pub link: Option<String>,
    pub dev: Option<(u32, u32)>,
    pub xattrs: BTreeMap<String, Vec<u8>>,
    pub data: Vec<u8>,
    pub mtime: u64,
}

/// Entries of a layer tar in order, by path.
pub fn read_layer(tar_bytes: &[u8]) -> Vec<(String, LayerEntry)> {
    let mut ar = tar::Archive::new(tar_bytes);
    let mut out = Vec::new();
    for e in ar.entries().unwrap() {
        let mut e = e.unwrap();
        let path = String::from_utf8_lossy(&e.path_bytes()).into_owned();
        let h = e.header().clone();
        let mut xattrs = BTreeMap::new();
        if let Some(ext) = e.pax_extensions().unwrap() {
            for x in ext {
                let x = x.unwrap();
                if let Some(name) = x.key().unwrap().strip_prefix("SCHILY.xattr.") {
                    xattrs.insert(name.to_string(), x.value_bytes().to_vec());
                }
            }
        }
        let mut data = Vec::new();
        e.read_to_end(&mut data).unwrap();
        let kind = match h.entry_type() {
            tar::EntryType::Regular => 'f',
            tar::EntryType::Directory => 'd',
            tar::EntryType::Symlink => 'l',
            tar::EntryType::Link => 'h',
            tar::EntryType::Char => 'c',
            tar::EntryType::Block => 'b',
            tar::EntryType::Fifo => 'p',
            other => panic!("unexpected entry type {other:?} at {path}"),
        };
        let link = e.link_name_bytes().map(|l| String::from_utf8_lossy(&l).into_owned());
        let dev =
            matches!(kind, 'c' | 'b').then(|| (h.device_major().unwrap().unwrap(), h.device_minor().unwrap().unwrap()));
        out.push((
            path,
            LayerEntry {
                kind,
                mode: h.mode().unwrap(),
                uid: h.uid().unwrap(),
                gid: h.gid().unwrap(),
                link,
                dev,
                xattrs,
                data,
                mtime: h.mtime().unwrap(),
            },
        ));
    }
    out
}

/// Run the rootlayer binary with the built guest; returns (exit code, stdout, stderr).
pub fn rootlayer(g: &super::Guest, args: &[&str]) -> (i32, String, String) {
    let out = super::rootlayer()
        .args(args)
        .arg("--kernel")
        .arg(&g.kernel)
        .arg("--initrd")
        .arg(&g.initrd)
        .output()
        .expect("running rootlayer");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    eprintln!("--- rootlayer stderr ---\n{stderr}--- end ---");
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).into_owned(), stderr)
}

/// The same listing the test agent writes of the merged tree
/// ([`rootlayer_protocol::listing`]).
pub fn listing(root: &Path) -> String {
    rootlayer_protocol::listing::of_tree(root).unwrap()
}

/// The first lines of a test script: the store's busybox shell, `set -e`,
/// and a PATH of the store's busybox.
pub fn script_header(store: &Path) -> String {
    format!("#!{store}/bb/bin/sh\nset -e\nexport PATH={store}/bb/bin\n", store = store.display())
}

/// Names of the entries of `dir` (for "nothing left behind" messages).
pub fn dir_entries(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> =
        std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    v.sort();
    v
}

/// A run-as-root job that is meant to fail: its own directory with a store,
/// the busybox base image and the script, an `--out` path inside an
/// otherwise empty directory, and a private TMPDIR for rootlayer, so the test
/// can check that nothing is left behind in either.
#[derive(Debug)]
pub struct FailingJob {
    pub tmp: tempfile::TempDir,
    pub store: PathBuf,
    pub base: PathBuf,
    pub script: PathBuf,
    pub out_dir: PathBuf,
    pub out: PathBuf,
    /// rootlayer's TMPDIR.
    pub rootlayer_tmp: PathBuf,
}

/// How a rootlayer run ended.
#[derive(Debug)]
pub struct Finished {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: std::time::Duration,
}

impl Finished {
    /// The `--json` result on stdout.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(self.stdout.trim()).unwrap_or_else(|e| panic!("--json result {:?}: {e}", self.stdout))
    }
    /// The last line rootlayer itself printed (`rootlayer: ...`).
    pub fn message(&self) -> &str {
        self.stderr.lines().rev().find(|l| l.starts_with("rootlayer: ")).unwrap_or("")
    }
}

impl FailingJob {
    /// Fixtures for a job whose script is `script_header(store)` + `body`.
    pub fn new(body: &str) -> Self {
        let tmp = super::tempdir();
        let store = make_store(tmp.path());
        let base = make_base_image(tmp.path());
        let script = tmp.path().join("script.sh");
        write_script(&script, &(script_header(&store) + body));
        let out_dir = tmp.path().join("out-dir");
        let rootlayer_tmp = tmp.path().join("rootlayer-tmp");
        for d in [&out_dir, &rootlayer_tmp] {
            std::fs::create_dir(d).unwrap();
            super::give_to_test_user(d);
        }
        let out = out_dir.join("out");
        Self { tmp, store, base, script, out_dir, out, rootlayer_tmp }
    }

    /// Run the job (with `--json`, the given guest sizes and any `extra`
    /// arguments), rootlayer's TMPDIR set to [`FailingJob::rootlayer_tmp`].
    pub fn run(&self, g: &super::Guest, mem_mib: u64, disk_mib: u64, timeout: u64, extra: &[&str]) -> Finished {
        let (mem, disk, timeout) = (mem_mib.to_string(), disk_mib.to_string(), timeout.to_string());
        let sizes: [&str; 6] = ["--mem-size", &mem, "--disk-size", &disk, "--timeout", &timeout];
        self.run_to(g, &self.out, &[&sizes[..], extra].concat())
    }

    /// [`FailingJob::run`] with default sizes and extra environment.
    pub fn run_env(&self, g: &super::Guest, env: &[(&str, &str)]) -> Finished {
        self.run_cmd(g, &self.out, &["--timeout", "600"], env)
    }

    /// [`FailingJob::run`] with the given options (defaults for the rest)
    /// and extra environment.
    pub fn run_with(&self, g: &super::Guest, extra: &[&str], env: &[(&str, &str)]) -> Finished {
        self.run_cmd(g, &self.out, &[&["--timeout", "600"], extra].concat(), env)
    }

    /// [`FailingJob::run`] with another `--out` and only the given
    /// options (defaults for the guest sizes and timeout).
    pub fn run_to(&self, g: &super::Guest, out: &Path, extra: &[&str]) -> Finished {
        self.run_cmd(g, out, extra, &[])
    }

    /// [`FailingJob::run`] to `out` with only the given options and extra
    /// environment.
    pub fn run_cmd(&self, g: &super::Guest, out: &Path, extra: &[&str], env: &[(&str, &str)]) -> Finished {
        let started = std::time::Instant::now();
        let out = super::rootlayer()
            .arg("run-as-root")
            .arg("--script")
            .arg(&self.script)
            .arg("--from-image")
            .arg(&self.base)
            .arg("--store")
            .arg(&self.store)
            .arg("--json")
            .args(extra)
            .arg("--out")
            .arg(out)
            .arg("--kernel")
            .arg(&g.kernel)
            .arg("--initrd")
            .arg(&g.initrd)
            .env("TMPDIR", &self.rootlayer_tmp)
            .envs(env.iter().copied())
            .output()
            .expect("running rootlayer");
        let elapsed = started.elapsed();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        eprintln!("--- rootlayer stderr ({elapsed:?}) ---\n{stderr}--- end ---");
        Finished {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr,
            elapsed,
        }
    }

    /// Nothing at `--out` (nor staged next to it), and rootlayer's TMPDIR empty.
    pub fn assert_nothing_left(&self) {
        assert!(self.out.symlink_metadata().is_err(), "{} exists after a failed job", self.out.display());
        assert_eq!(dir_entries(&self.out_dir), Vec::<String>::new(), "left next to --out");
        assert_eq!(dir_entries(&self.rootlayer_tmp), Vec::<String>::new(), "left in rootlayer's TMPDIR");
    }

    /// Common checks of a failed job's result: the exit code, the `--json`
    /// error with the same code, and nothing left behind. Returns the JSON.
    pub fn assert_failed(&self, f: &Finished, code: i32) -> serde_json::Value {
        assert_eq!(f.code, code, "exit code; message: {}", f.message());
        let json = f.json();
        assert_eq!(json["status"], "error", "{json}");
        assert_eq!(json["exit_code"], code, "{json}");
        self.assert_nothing_left();
        json
    }
}

/// [`listing`] with each entry's mtime (ns) and inode change time added: a
/// tree that lists the same before and after was not touched.
pub fn listing_with_times(root: &Path) -> String {
    use std::os::unix::fs::MetadataExt;
    listing(root)
        .lines()
        .map(|l| {
            let rel = l.split('\t').next().unwrap();
            let m = std::fs::symlink_metadata(root.join(rel)).unwrap();
            format!("{l}\t{}.{:09}\t{}.{:09}\n", m.mtime(), m.mtime_nsec(), m.ctime(), m.ctime_nsec())
        })
        .collect()
}
