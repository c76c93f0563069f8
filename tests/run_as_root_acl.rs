//! e2e: POSIX ACLs are kept, never dropped: a directory the script gives an
//! ACL (`setfacl -m u:1000:rwx`, here by a static helper) and a base file
//! with an ACL that the script changes (copied up) both carry their ACL in
//! the layer, as `SCHILY.xattr.system.posix_acl_access` in the kernel's
//! xattr form (as docker and podman write it), and umoci's unpack of the
//! image gives them back to the host kernel.

mod common;

use common::runas::{acl_1000_rwx, read_layer, FailingJob};

/// A layer holding `acl/` and `acl/file`, each with an ACL of user 2000.
fn acl_layer(acl: &[u8]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (name, dir) in [("acl/", true), ("acl/file", false)] {
        b.append_pax_extensions([("SCHILY.xattr.system.posix_acl_access", acl)]).unwrap();
        let mut h = tar::Header::new_gnu();
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1);
        h.set_entry_type(if dir { tar::EntryType::Directory } else { tar::EntryType::Regular });
        // The mode agrees with the ACL (owner rwx, mask rwx, other r-x).
        h.set_mode(0o775);
        let data: &[u8] = if dir { b"" } else { b"base\n" };
        h.set_size(data.len() as u64);
        b.append_data(&mut h, name, data).unwrap();
    }
    b.into_inner().unwrap()
}

#[test]
fn run_as_root_posix_acls_are_kept() {
    let Some(g) = common::guest("run_as_root_posix_acls_are_kept") else { return };
    let mut job = FailingJob::new("");
    let set = job.store.join("tools/bin/setacl-raw");
    let body = format!("mkdir /data2\n{} /data2\necho more >> /acl/file\n", set.display());
    common::runas::write_script(&job.script, &(common::runas::script_header(&job.store) + &body));
    // The base: the fixture's first layer and one with ACLs (user 2000:rwx).
    let mut base_acl = acl_1000_rwx();
    base_acl[16..20].copy_from_slice(&2000u32.to_le_bytes());
    let layers = vec![std::fs::read(job.tmp.path().join("l1.tar")).unwrap(), acl_layer(&base_acl)];
    let archive = job.tmp.path().join("acl-base.tar");
    common::image::docker_archive(&archive, &[(&["base:latest"], &layers)], false);
    job.base = archive;
    let f = job.run(&g, 256, 128, 600, &["--format", "oci", "--tag", "t"]);
    assert_eq!(f.code, 0, "{}", f.message());

    let layout = &job.out;
    let bundle = job.tmp.path().join("bundle");
    let rootfs = common::image::umoci_unpack(layout, "t", &bundle);
    let get = |p: &str| {
        let mut buf = vec![0u8; 4096];
        let n = rustix::fs::lgetxattr(rootfs.join(p), "system.posix_acl_access", &mut buf)
            .unwrap_or_else(|e| panic!("{p}: no ACL ({e})"));
        buf[..n].to_vec()
    };
    if common::image::is_root() {
        assert_eq!(get("data2"), acl_1000_rwx(), "the script's ACL");
        assert_eq!(get("acl/file"), base_acl, "a copied-up base file keeps its ACL");
        assert_eq!(std::fs::read(rootfs.join("acl/file")).unwrap(), b"base\nmore\n");
    }
    // And in the new layer itself (the manifest's last), whoever reads it.
    let json =
        |p: std::path::PathBuf| -> serde_json::Value { serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap() };
    let blob = |digest: &serde_json::Value| {
        layout.join("blobs/sha256").join(digest.as_str().unwrap().trim_start_matches("sha256:"))
    };
    let index = json(layout.join("index.json"));
    let manifest = json(blob(&index["manifests"][0]["digest"]));
    let layer = std::fs::read(blob(&manifest["layers"].as_array().unwrap().last().unwrap()["digest"])).unwrap();
    let entries = read_layer(&layer);
    let acl_of = |path: &str| {
        let e = entries.iter().find(|(p, _)| p.trim_start_matches("./").trim_end_matches('/') == path);
        e.unwrap_or_else(|| panic!("{path} in the layer")).1.xattrs.get("system.posix_acl_access").cloned()
    };
    assert_eq!(acl_of("data2"), Some(acl_1000_rwx()));
    assert_eq!(acl_of("acl/file"), Some(base_acl));
}
