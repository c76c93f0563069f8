//! e2e: the same kernel as a bzImage, started through the Linux 64-bit boot
//! protocol (zero page, identity-mapped long mode) instead of PVH, reaches
//! the agent and exits cleanly.

mod common;

#[test]
fn bzimage_boots_through_the_64bit_protocol() {
    let Some(g) = common::guest("bzimage_boots_through_the_64bit_protocol") else { return };
    let bzimage = g.kernel.with_file_name("bzImage");
    if !bzimage.exists() {
        let msg = format!("{} not found next to the vmlinux", bzimage.display());
        assert!(std::env::var_os("ROOTLAYER_REQUIRE_VM").is_none(), "{msg}");
        eprintln!("SKIP bzimage_boots_through_the_64bit_protocol: {msg}");
        return;
    }
    let (code, stderr) = common::run(
        common::rootlayer()
            .args(["boot", "--timeout", "600", "--mem-size", "128", "--kernel"])
            .arg(&bzimage)
            .arg("--initrd")
            .arg(&g.initrd),
    );
    assert_eq!(code, 0, "bzImage boot failed");
    assert!(stderr.contains("rootlayer-agent: exit status 0"));
    assert!(stderr.lines().any(|l| l.starts_with("rootlayer: agent ready after ")));
}
