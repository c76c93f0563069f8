//! Marks the agent's build with cfg `agent`, so that the layer files it
//! shares with the host crate leave out the host's tests.
fn main() {
    println!("cargo::rustc-cfg=agent");
    println!("cargo::rustc-check-cfg=cfg(agent)");
}
