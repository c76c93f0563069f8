//! e2e: the product's agent (the initramfs users get) has no test code: a
//! boot that names a self-test is refused by name, never booted as if the
//! test had run; the test initramfs's agent is a separate build
//! (`scripts/build-initramfs --test`).

mod common;

#[test]
fn the_product_agent_refuses_a_self_test_by_name() {
    let Some(g) = common::guest("the_product_agent_refuses_a_self_test_by_name") else {
        return;
    };
    let test = common::test_guest("the_product_agent_refuses_a_self_test_by_name").expect("the test initramfs");
    assert_ne!(
        std::fs::read(&g.initrd).unwrap(),
        std::fs::read(&test.initrd).unwrap(),
        "the product and test initramfs are two builds"
    );
    let (code, stderr) = common::run(
        common::rootlayer()
            .args(["boot", "--quiet", "--no-snapshot", "--timeout", "300", "--mem-size", "128"])
            .args(["--cmdline", "ROOTLAYER_SELFTEST=avx", "--kernel"])
            .arg(&g.kernel)
            .arg("--initrd")
            .arg(&g.initrd),
    );
    assert_eq!(code, 70, "an internal error, not a boot: {stderr}");
    assert!(
        stderr.contains("self-test avx: not in this agent: the test initramfs's has it"),
        "the refusal names what is missing and where it is: {stderr}"
    );
    assert!(!stderr.contains("guest exited cleanly"), "{stderr}");
}
