//! e2e: a Debian bookworm minbase base (`scripts/debian-base`, debootstrap,
//! cached outside the repo) and the things real runAsRoot scripts do there:
//! groupadd/useradd with the flags collected scripts use, chpasswd,
//! chown -R, chmod 1777 /tmp, rm -rf of base content, a symlink into the
//! store, a heredoc into /etc. The shadow tools need the socket layer (their
//! audit socket), which the guest has. The layer holds exactly the account
//! lines, owners and modes, and only the whiteout the deletion needs.

mod common;

use common::runas::{read_layer, FailingJob};
use std::collections::BTreeMap;

const SCRIPT: &str = r#"#!/bin/sh
set -e
groupadd -r app
groupadd -g 2000 staff2
useradd -r -g app -d /var/lib/app -s /usr/sbin/nologin -M app
useradd -m -U -u 1500 -s /bin/bash alice
useradd -u 1600 -g staff2 -d /home/bob -m bob
echo 'alice:secret' | chpasswd
mkdir -p /srv/data/sub
echo x > /srv/data/sub/f
chown -R alice:alice /srv/data
chmod 1777 /tmp
mkdir /scratch
chmod 1777 /scratch
rm -rf /usr/share/doc/apt
ln -s /nix/store/0000-hello/bin/hello /usr/local/bin/hello
cat > /etc/app.conf <<END
key=value
END
echo "users made"
"#;

#[test]
fn run_as_root_debian_base_users_and_groups() {
    let Some(g) = common::guest("run_as_root_debian_base_users_and_groups") else { return };
    let Some(base) = std::env::var_os("ROOTLAYER_DEBIAN_BASE") else {
        assert!(std::env::var_os("ROOTLAYER_REQUIRE_VM").is_none(), "scripts/test sets ROOTLAYER_DEBIAN_BASE");
        eprintln!("SKIP run_as_root_debian_base_users_and_groups: no ROOTLAYER_DEBIAN_BASE (scripts/debian-base)");
        return;
    };
    let mut job = FailingJob::new("");
    std::fs::write(&job.script, SCRIPT).unwrap();
    job.base = base.into();
    let f = job.run(&g, 512, 256, 1200, &[]);
    assert_eq!(f.code, 0, "{}", f.message());
    assert!(f.stderr.contains("users made"), "the script ran to its end");
    let layer = std::fs::read(job.out.join("layer.tar")).unwrap();
    let entries: BTreeMap<String, _> = read_layer(&layer)
        .into_iter()
        .map(|(p, e)| (p.trim_start_matches("./").trim_end_matches('/').to_string(), e))
        .collect();
    let text =
        |p: &str| String::from_utf8(entries.get(p).unwrap_or_else(|| panic!("{p} in the layer")).data.clone()).unwrap();
    let lines = |p: &str| text(p).lines().map(str::to_string).collect::<Vec<_>>();

    let group = lines("etc/group");
    let app_gid: u32 = group
        .iter()
        .find_map(|l| l.strip_prefix("app:x:").and_then(|r| r.trim_end_matches(':').parse().ok()))
        .expect("group app");
    assert!(app_gid < 1000, "a system group: {app_gid}");
    for want in ["staff2:x:2000:", "alice:x:1500:"] {
        assert!(group.iter().any(|l| l == want), "{want} in /etc/group: {group:?}");
    }
    let passwd = lines("etc/passwd");
    let app = passwd.iter().find(|l| l.starts_with("app:x:")).expect("user app");
    assert!(app.ends_with(&format!(":{app_gid}::/var/lib/app:/usr/sbin/nologin")), "{app}");
    assert!(passwd.contains(&"alice:x:1500:1500::/home/alice:/bin/bash".to_string()), "{passwd:?}");
    assert!(passwd.contains(&"bob:x:1600:2000::/home/bob:/bin/sh".to_string()), "{passwd:?}");
    let shadow = lines("etc/shadow");
    let alice = shadow.iter().find(|l| l.starts_with("alice:")).expect("alice in /etc/shadow");
    assert!(alice.starts_with("alice:$"), "chpasswd set a hashed password: {alice}");
    assert!(shadow.iter().any(|l| l.starts_with("bob:!")), "bob is locked: {shadow:?}");
    assert!(shadow.iter().any(|l| l.starts_with("app:")), "{shadow:?}");
    let gshadow = lines("etc/gshadow");
    for g in ["app:", "staff2:", "alice:"] {
        assert!(gshadow.iter().any(|l| l.starts_with(g)), "{g} in /etc/gshadow: {gshadow:?}");
    }
    assert_eq!(entries["etc/shadow"].mode & 0o7777, 0o640);
    assert_eq!(entries["etc/shadow"].gid, 42, "group shadow");

    let home = entries.get("home/alice").expect("alice's home");
    assert_eq!((home.uid, home.gid), (1500, 1500));
    assert!(entries.contains_key("home/alice/.bashrc"), "skeleton copied");
    let bob = entries.get("home/bob").expect("bob's home");
    assert_eq!((bob.uid, bob.gid), (1600, 2000));
    assert!(!entries.contains_key("var/lib/app"), "-M: no home made");
    for p in ["srv/data", "srv/data/sub", "srv/data/sub/f"] {
        let e = entries.get(p).unwrap_or_else(|| panic!("{p}"));
        assert_eq!((e.uid, e.gid), (1500, 1500), "chown -R {p}");
    }
    // Debian's /tmp is 1777 already: chmod changes nothing, so no copy-up.
    assert!(entries.get("tmp").map_or(true, |e| e.mode & 0o7777 == 0o1777));
    assert_eq!(entries.get("scratch").expect("/scratch").mode & 0o7777, 0o1777);
    assert_eq!(
        entries.get("usr/local/bin/hello").and_then(|e| e.link.clone()).as_deref(),
        Some("/nix/store/0000-hello/bin/hello")
    );
    assert_eq!(text("etc/app.conf"), "key=value\n");
    let whiteouts: Vec<&String> =
        entries.keys().filter(|p| p.rsplit('/').next().unwrap().starts_with(".wh.")).collect();
    assert_eq!(whiteouts, ["usr/share/doc/.wh.apt"], "only the deletion's whiteout");
    assert!(!entries.keys().any(|p| p.starts_with("usr/share/doc/apt/")), "nothing of the deleted dir");
    assert!(
        !entries.keys().any(|p| p == "run" || p.starts_with("run/") || p.starts_with("dev/")),
        "mounts left nothing"
    );
}
