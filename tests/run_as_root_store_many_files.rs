//! e2e: a `--store` of more files than the process may hold descriptors
//! (5,000 under `ulimit -n 256`, soft and hard): the script looks up, lists
//! and reads every one of them through the read-only share, which holds no
//! descriptor per file (src/devices/virtio/fs/store.rs), and the job
//! succeeds with what it read.

mod common;

use common::runas::{make_store, read_layer, script_header, write_script};

const FILES: usize = 5000;

#[test]
fn run_as_root_store_of_many_files_under_a_small_descriptor_limit() {
    let Some(g) = common::guest("run_as_root_store_of_many_files_under_a_small_descriptor_limit") else { return };
    let tmp = common::tempdir();
    let store = make_store(tmp.path());
    for d in 0..FILES / 100 {
        let dir = store.join(format!("many/d{d:02}"));
        std::fs::create_dir_all(&dir).unwrap();
        for f in 0..100 {
            std::fs::write(dir.join(format!("f{f:02}")), "x").unwrap();
        }
    }
    let base = common::runas::make_base_image(tmp.path());
    let script = tmp.path().join("script.sh");
    let body = format!(
        "bb={s}/bb/bin/busybox\n$bb find {s}/many -type f | $bb wc -l > /etc/store-files\n\
         $bb find {s}/many -type f -exec $bb cat {{}} + | $bb wc -c > /etc/store-bytes\n",
        s = store.display()
    );
    write_script(&script, &(script_header(&store) + &body));
    let out = tmp.path().join("out");
    let mut cmd = common::rootlayer();
    cmd.args(["run-as-root", "--from-image"]).arg(&base).arg("--script").arg(&script).arg("--store").arg(&store);
    cmd.args(["--timeout", "900", "--out"]).arg(&out).arg("--kernel").arg(&g.kernel).arg("--initrd").arg(&g.initrd);
    common::limit_open_files(&mut cmd, 256);
    let (code, stderr) = common::run(&mut cmd);
    assert_eq!(code, 0, "{stderr}");
    let layer = std::fs::read(out.join("layer.tar")).unwrap();
    let entries = read_layer(&layer);
    let text = |p: &str| {
        let e = entries.iter().find(|(n, _)| n.trim_start_matches("./") == p).unwrap_or_else(|| panic!("{p}"));
        String::from_utf8(e.1.data.clone()).unwrap().trim().to_string()
    };
    assert_eq!(text("etc/store-files"), FILES.to_string(), "every file looked up");
    assert_eq!(text("etc/store-bytes"), FILES.to_string(), "every file read");
}
