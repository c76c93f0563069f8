//! The manual's shadow example on an empty base: `shadowSetup` (nix/'s, as
//! dockerTools' text has it) then `groupadd -r` and `useradd -r` from a
//! store shadow. The layer has the files shadowSetup writes and the user
//! and group; of the store it has what /etc/passwd names (root's shell,
//! the runtimeShell), not shadow, which only the script names.

mod common;

#[test]
fn shadow_setup_then_useradd_on_an_empty_base() {
    let Some(nix) = common::nix::setup("nix_shadow_setup") else { return };
    let shadow = common::nix::host_binaries(
        &nix.work.path().join("shadow"),
        &[("groupadd", "/usr/sbin/groupadd"), ("useradd", "/usr/sbin/useradd")],
    );
    let b = nix.build("shadow", &["--arg", "shadowDir", shadow.to_str().unwrap()]);
    assert_eq!(b.code, 0, "nix-build failed");
    let (rootfs, _) = common::nix::unpack_image(nix.work.path(), &b.out, "shadow");
    let read = |p: &str| std::fs::read_to_string(rootfs.join(p)).unwrap_or_else(|e| panic!("{p}: {e}"));

    let passwd = read("etc/passwd");
    let root = passwd.lines().next().unwrap();
    assert!(root.starts_with("root:x:0:0::/root:/nix/store/") && root.ends_with("-busybox/bin/sh"), "{passwd}");
    let app: Vec<&str> = passwd.lines().find(|l| l.starts_with("app:")).expect("no app user").split(':').collect();
    let group = read("etc/group");
    assert!(group.lines().next() == Some("root:x:0:"), "{group}");
    let app_group: Vec<&str> =
        group.lines().find(|l| l.starts_with("app:")).expect("no app group").split(':').collect();
    assert_eq!(app[3], app_group[2], "the user is not in its group: {passwd}{group}");
    let uid: u32 = app[2].parse().unwrap();
    assert!(uid > 0 && uid < 1000, "not a system uid: {uid}");
    assert!(read("etc/shadow").lines().any(|l| l.starts_with("root:!x:")), "{}", read("etc/shadow"));
    assert!(read("etc/shadow").lines().any(|l| l.starts_with("app:")));
    assert!(read("etc/gshadow").lines().any(|l| l.starts_with("app:")));
    assert_eq!(
        read("etc/pam.d/other"),
        "account sufficient pam_unix.so\nauth sufficient pam_rootok.so\npassword requisite pam_unix.so nullok yescrypt\nsession required pam_unix.so\n"
    );
    assert!(rootfs.join("etc/login.defs").is_file());

    let store = common::nix::store_names(&rootfs);
    assert_eq!(store.len(), 1, "{store:?}");
    assert!(store[0].ends_with("-busybox"), "{store:?}");
    nix.delete(&[&b.out]);
}
