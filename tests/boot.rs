//! e2e: our VMM boots the built guest kernel into the agent and gets a clean
//! exit back; the ready line and the guest's own boot time are reported.
//! The agent leaves through the VMM's POWER_OFF doorbell, and through the
//! i8042 reset where the guest has no doorbell.

mod common;

#[test]
fn boots_to_the_agent_and_exits_cleanly() {
    let Some(g) = common::guest("boots_to_the_agent_and_exits_cleanly") else {
        return;
    };
    let (code, stderr) = common::run(
        common::rootlayer()
            .args(["boot", "--timeout", "300", "--mem-size", "256", "--kernel"])
            .arg(&g.kernel)
            .arg("--initrd")
            .arg(&g.initrd),
    );
    assert_eq!(code, 0, "boot failed");
    let ready = stderr
        .lines()
        .find(|l| l.starts_with("rootlayer-agent ") && l.contains(" ready (uptime "))
        .expect("agent ready line on the console");
    assert!(ready.contains(env!("CARGO_PKG_VERSION")), "ready line names the agent version: {ready}");
    assert!(stderr.contains("rootlayer-agent: exit status 0"));
    // The doorbell ended the run before the kernel's reboot path.
    assert!(!stderr.contains("reboot: Restarting system"), "the guest left through the i8042 reset: {stderr}");
    assert!(stderr.lines().any(|l| l.starts_with("rootlayer: agent ready after ")), "summary line");
    let path = stderr.lines().find(|l| l.starts_with("rootlayer: boot: ")).expect("which way the guest came up");
    assert!(path.contains("cold boot") || path.contains("restored from snapshot"), "{path}");
}

/// `rootlayer_vmm.port=0` (a caller's parameters come after the built-in
/// ones): the kernel takes the agent's POWER_OFF and drops it, and the
/// agent leaves through the i8042 reset, still a clean exit.
#[test]
fn without_the_doorbell_the_guest_leaves_through_the_reset() {
    let Some(g) = common::guest("without_the_doorbell_the_guest_leaves_through_the_reset") else {
        return;
    };
    let (code, stderr) = common::run(
        common::rootlayer()
            .args(["boot", "--no-snapshot", "--timeout", "300", "--mem-size", "256"])
            .args(["--cmdline", "rootlayer_vmm.port=0", "--kernel"])
            .arg(&g.kernel)
            .arg("--initrd")
            .arg(&g.initrd),
    );
    assert_eq!(code, 0, "boot failed: {stderr}");
    assert!(stderr.contains("rootlayer-agent: exit status 0"), "{stderr}");
    assert!(stderr.contains("reboot: Restarting system"), "the guest left another way: {stderr}");
}
