//! e2e: the product as a user that can open /dev/kvm and nothing more (no
//! root, no capabilities, no kvm group): a freshly created system user,
//! granted /dev/kvm by an ACL entry for the test's duration, runs the main
//! job (a user, a chown, a setuid binary, a device node) from a private
//! directory. The layer is exact, the host files are the user's own, and
//! the store (writable by that user on the host) is untouched by the guest.

mod common;

use common::runas::{listing_with_times, make_base_image, make_store, read_layer, script_header, write_script};
use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;

const USER: &str = "rootlayer-e2e";
const KVM: &str = "/dev/kvm";

fn id(flag: &str) -> Option<u32> {
    let out = Command::new("id").arg(flag).arg(USER).output().unwrap();
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().parse().unwrap())
}

fn ensure_user() -> (u32, u32) {
    if id("-u").is_none() {
        let st = Command::new("useradd").args(["--system", "--no-create-home", USER]).status().unwrap();
        assert!(st.success(), "useradd {USER}");
    }
    (id("-u").unwrap(), id("-g").unwrap())
}

fn ensure_setfacl() {
    if Command::new("setfacl").arg("--version").output().is_ok() {
        return;
    }
    let st =
        Command::new("apt-get").args(["install", "-y", "-qq", "acl"]).env("DEBIAN_FRONTEND", "noninteractive").status();
    assert!(st.unwrap().success(), "apt-get install acl");
}

fn setfacl(args: &[&str]) {
    let st = Command::new("setfacl").args(args).arg(KVM).status().unwrap();
    assert!(st.success(), "setfacl {args:?} {KVM}");
}

/// The user's ACL entry on /dev/kvm for as long as this lives; on drop
/// (also when the test fails) /dev/kvm's ACL is as it was.
struct KvmAccess {
    had_extended_acl: bool,
}

impl KvmAccess {
    fn grant() -> Self {
        let out = Command::new("getfacl").args(["--skip-base", "--absolute-names", KVM]).output().unwrap();
        assert!(out.status.success(), "getfacl {KVM}");
        let had_extended_acl = !out.stdout.is_empty();
        setfacl(&["-m", &format!("u:{USER}:rw")]);
        Self { had_extended_acl }
    }
}

impl Drop for KvmAccess {
    fn drop(&mut self) {
        let _ = Command::new("setfacl").args(["-x", &format!("u:{USER}")]).arg(KVM).status();
        if !self.had_extended_acl {
            // Removing the entry leaves a mask entry behind: drop it too.
            let _ = Command::new("setfacl").arg("-b").arg(KVM).status();
        }
    }
}

fn chown_tree(root: &Path, uid: u32, gid: u32) {
    let st = Command::new("chown").arg("-R").arg(format!("{uid}:{gid}")).arg(root).status().unwrap();
    assert!(st.success());
}

/// Every file under `root` (and `root` itself), with its owner.
fn owners(root: &Path) -> Vec<(String, u32, u32)> {
    let m = std::fs::symlink_metadata(root).unwrap();
    let mut v = vec![(root.display().to_string(), m.uid(), m.gid())];
    if m.is_dir() {
        for e in std::fs::read_dir(root).unwrap() {
            v.extend(owners(&e.unwrap().path()));
        }
    }
    v
}

fn script(store: &Path) -> String {
    script_header(store)
        + r#"echo 'app:x:1234:1234:app:/home/app:/bin/sh' >> /etc/passwd
echo 'app:x:1234:' >> /etc/group
busybox mkdir -p /home/app
busybox chown 1234:1234 /home/app /data/owned
busybox cp /bin/busybox /usr/local/bin/suid-tool
busybox chmod 4755 /usr/local/bin/suid-tool
busybox mknod /etc/null-dev c 1 3
echo "script ran as uid $(busybox id -u)"
"#
}

#[test]
fn run_as_root_works_as_a_user_with_only_dev_kvm() {
    let Some(g) = common::guest("run_as_root_works_as_a_user_with_only_dev_kvm") else { return };
    if !common::image::is_root() {
        eprintln!(
            "SKIP run_as_root_works_as_a_user_with_only_dev_kvm: creating the user and granting it /dev/kvm needs root"
        );
        return;
    }
    let (uid, gid) = ensure_user();
    ensure_setfacl();

    // Everything the user needs, in a directory of its own.
    let home = tempfile::Builder::new().prefix("rootlayer-e2e-").tempdir_in("/tmp").unwrap();
    let dir = home.path();
    let bin = dir.join("rootlayer");
    std::fs::copy(env!("CARGO_BIN_EXE_rootlayer"), &bin).unwrap();
    let kernel = dir.join("vmlinux");
    let initrd = dir.join("initrd.cpio");
    std::fs::copy(&g.kernel, &kernel).unwrap();
    std::fs::copy(&g.initrd, &initrd).unwrap();
    let store = make_store(dir);
    let base = make_base_image(dir);
    let script_path = dir.join("script.sh");
    write_script(&script_path, &script(&store));
    let tmpdir = dir.join("tmp");
    std::fs::create_dir(&tmpdir).unwrap();
    let out = dir.join("out");
    chown_tree(dir, uid, gid);
    let store_before = listing_with_times(&store);

    let run = || {
        let out = Command::new("setpriv")
            .args(["--reuid", &uid.to_string(), "--regid", &gid.to_string(), "--clear-groups", "--"])
            .arg(&bin)
            .arg("run-as-root")
            .arg("--script")
            .arg(&script_path)
            .arg("--from-image")
            .arg(&base)
            .arg("--store")
            .arg(&store)
            .args(["--mem-size", "256", "--disk-size", "64", "--timeout", "600", "--json", "--out"])
            .arg(&out)
            .arg("--kernel")
            .arg(&kernel)
            .arg("--initrd")
            .arg(&initrd)
            .env_clear()
            .env("PATH", "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin")
            .env("HOME", dir)
            .env("TMPDIR", &tmpdir)
            .current_dir(dir)
            .output()
            .expect("running rootlayer through setpriv");
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        eprintln!("--- rootlayer stderr ---\n{stderr}--- end ---");
        (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).into_owned(), stderr)
    };

    // Without the ACL entry the user has no KVM at all.
    let (code, _, stderr) = run();
    assert_eq!(code, 3, "no /dev/kvm access: {stderr}");

    let access = KvmAccess::grant();
    let (code, stdout, stderr) = run();
    drop(access);
    assert_eq!(code, 0, "run-as-root as {USER} failed");
    assert!(stderr.contains("script ran as uid 0"), "the script is root in the guest");
    let json: serde_json::Value = serde_json::from_str(stdout.trim()).expect("--json result");
    assert_eq!(json["status"], "ok");

    let layer = std::fs::read(out.join("layer.tar")).unwrap();
    assert_eq!(format!("sha256:{}", common::image::sha256_hex(&layer)), json["diff_id"].as_str().unwrap());
    let e: BTreeMap<String, _> =
        read_layer(&layer).into_iter().map(|(p, e)| (p.trim_end_matches('/').to_string(), e)).collect();
    assert!(String::from_utf8_lossy(&e["etc/passwd"].data).contains("app:x:1234:1234:app:/home/app:/bin/sh"));
    assert!(String::from_utf8_lossy(&e["etc/group"].data).contains("app:x:1234:"));
    assert_eq!((e["home/app"].kind, e["home/app"].uid, e["home/app"].gid), ('d', 1234, 1234));
    assert_eq!((e["data/owned"].uid, e["data/owned"].gid), (1234, 1234));
    let suid = &e["usr/local/bin/suid-tool"];
    assert_eq!((suid.mode & 0o7777, suid.uid, suid.gid), (0o4755, 0, 0));
    assert_eq!((e["etc/null-dev"].kind, e["etc/null-dev"].dev, e["etc/null-dev"].uid), ('c', Some((1, 3)), 0));

    let foreign: Vec<_> = owners(&out).into_iter().filter(|(_, u, g)| (*u, *g) != (uid, gid)).collect();
    assert!(foreign.is_empty(), "output files not owned by {uid}:{gid}: {foreign:?}");
    assert_eq!(common::runas::dir_entries(&tmpdir), Vec::<String>::new(), "left in rootlayer's TMPDIR");
    assert_eq!(listing_with_times(&store), store_before, "the store changed");
}
