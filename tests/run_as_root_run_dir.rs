//! e2e: /run is the image's own directory in the script's chroot, as in the
//! seed's recipe (vmTools mounts only /dev, /proc, /sys and the store) and
//! `docker build`: what a script or a package's postinst leaves under /run
//! is in the layer, not lost on a tmpfs; /dev, /proc and /sys leave nothing.

mod common;

use common::runas::{read_layer, FailingJob};

#[test]
fn run_as_root_keeps_what_the_script_writes_under_run() {
    let Some(g) = common::guest("run_as_root_keeps_what_the_script_writes_under_run") else { return };
    let job = FailingJob::new(
        "mkdir -p /run/app /etc/app\necho 42 > /run/app/state\nls -d /proc/self /sys/kernel /dev/null > /etc/app/seen\n",
    );
    let f = job.run(&g, 256, 128, 600, &[]);
    assert_eq!(f.code, 0, "{}", f.message());
    let layer = std::fs::read(job.out.join("layer.tar")).unwrap();
    let entries = read_layer(&layer);
    let paths: Vec<String> =
        entries.iter().map(|(p, _)| p.trim_start_matches("./").trim_end_matches('/').to_string()).collect();
    let state = entries.iter().find(|(p, _)| p.trim_start_matches("./") == "run/app/state").expect("run/app/state");
    assert_eq!(state.1.data, b"42\n");
    assert!(paths.contains(&"run".to_string()) && paths.contains(&"run/app".to_string()), "{paths:?}");
    assert!(!paths.iter().any(|p| p == "proc" || p == "sys" || p == "dev" || p.starts_with("proc/")), "{paths:?}");
    let seen = entries.iter().find(|(p, _)| p.trim_start_matches("./") == "etc/app/seen").expect("etc/app/seen");
    assert_eq!(String::from_utf8_lossy(&seen.1.data).lines().count(), 3, "the script saw /proc, /sys and /dev");
}
