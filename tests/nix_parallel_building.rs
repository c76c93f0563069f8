//! nix/default.nix gives the VM the build's cores as vCPUs where the
//! derivation enables parallel building, as vmTools gives its VM
//! `-smp $NIX_BUILD_CORES`, and one vCPU otherwise: the script counts the
//! processors it sees (`nix-build --cores 2`).

mod common;

fn cpus_seen(nix: &common::nix::Nix, attr: &str) -> String {
    let b = nix.build(attr, &["--cores", "2"]);
    assert_eq!(b.code, 0, "nix-build failed");
    let tar = std::fs::read(std::path::Path::new(&b.out).join("layer.tar")).unwrap();
    let entries = common::runas::read_layer(&tar);
    let seen = entries.iter().find(|(n, _)| n == "cpus").map(|(_, e)| String::from_utf8_lossy(&e.data).into_owned());
    nix.delete(&[&b.out]);
    seen.expect("the script's /cpus").trim().to_string()
}

#[test]
fn parallel_building_gives_the_vm_the_builds_cores() {
    let Some(nix) = common::nix::setup("nix_parallel_building") else { return };
    let host = std::thread::available_parallelism().map_or(1, |n| n.get());
    let want = host.min(2).to_string();
    assert_eq!(cpus_seen(&nix, "parallelLayer"), want, "enableParallelBuilding: --cores 2 on {host} host cores");
    assert_eq!(cpus_seen(&nix, "serialLayer"), "1", "without it: one vCPU");
}
