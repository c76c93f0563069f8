//! e2e: a script that names a file `.wh.something` (which an OCI layer
//! would read as a whiteout) made a change no layer can hold: rootlayer
//! exits 8, names the path, and writes nothing.

mod common;

use common::runas::FailingJob;

#[test]
fn run_as_root_a_user_whiteout_name_is_the_scripts_doing() {
    let Some(g) = common::guest("run_as_root_a_user_whiteout_name_is_the_scripts_doing") else { return };
    let job = FailingJob::new("echo 'not a whiteout' > /etc/.wh.hosts\n");
    let f = job.run(&g, 256, 64, 600, &[]);
    job.assert_failed(&f, 8);
    let m = f.message();
    assert!(m.contains("cannot be written as an OCI layer") && m.contains("etc/.wh.hosts"), "{m}");
}
