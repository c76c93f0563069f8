//! e2e: no process outlives the script. The script and the extra commands
//! each leave a background process that writes a file a few seconds later;
//! both are killed when what started them ends (each runs as PID 1 of its
//! own pid namespace), so the layer never has those files.

mod common;

use common::runas::{read_layer, script_header, write_script, FailingJob};

#[test]
fn run_as_root_background_processes_cannot_change_the_layer() {
    let Some(g) = common::guest("run_as_root_background_processes_cannot_change_the_layer") else { return };
    let job = FailingJob::new(
        "( busybox sleep 4; echo late > /late ) &\n\
         ( busybox sleep 4; echo late > /late-nohup ) </dev/null >/dev/null 2>&1 &\n\
         echo 'left two sleepers behind'\n",
    );
    let extra = job.tmp.path().join("extra.sh");
    write_script(&extra, &(script_header(&job.store) + "( busybox sleep 4; echo late > late-extra ) &\necho extra\n"));
    let f = job.run(&g, 256, 64, 600, &["--extra-commands", extra.to_str().unwrap()]);
    assert_eq!(f.code, 0, "{}", f.message());
    assert!(f.stderr.contains("left two sleepers behind") && f.stderr.contains("extra"), "both ran");
    let layer = std::fs::read(job.out.join("layer.tar")).expect("layer.tar");
    let names: Vec<String> = read_layer(&layer)
        .into_iter()
        .map(|(p, _)| p.trim_start_matches("./").trim_end_matches('/').to_string())
        .collect();
    for late in ["late", "late-nohup", "late-extra"] {
        assert!(!names.contains(&late.to_string()), "{late} written after its parent ended: {names:?}");
    }
}
