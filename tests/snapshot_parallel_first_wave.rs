//! e2e: four jobs started at once on a cache without a snapshot. One boots
//! cold and takes the snapshot; the other three wait for it (they say so)
//! and are restored from it, instead of all four booting cold. Every job
//! gives the same layer.

mod common;

use common::runas::FailingJob;
use common::snapshot::{boot_of, Cache};

#[test]
fn snapshot_first_wave_of_parallel_jobs_takes_one_and_restores_the_rest() {
    let Some(g) = common::guest("snapshot_first_wave_of_parallel_jobs_takes_one_and_restores_the_rest") else { return };
    let cache = Cache::new();
    let job = FailingJob::new("echo parallel > /etc/hello\n");
    let env = cache.env(&[("SOURCE_DATE_EPOCH", "1")]);
    let runs: Vec<_> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..4)
            .map(|i| {
                let (g, job, env) = (&g, &job, &env);
                s.spawn(move || job.run_cmd(g, &job.out_dir.join(format!("out{i}")), &["--timeout", "900"], env))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for f in &runs {
        assert_eq!(f.code, 0, "{}", f.message());
    }
    let mut boots: Vec<String> = runs.iter().map(boot_of).collect();
    boots.sort();
    assert_eq!(boots, ["restored", "restored", "restored", "snapshot-taken"], "one takes, the rest restore");
    let waited = runs.iter().filter(|f| f.stderr.contains("another job is taking the snapshot")).count();
    // (All three, unless one started only after the snapshot was written.)
    assert!(waited >= 1, "the others waited for it");
    assert_eq!(cache.snapshots().len(), 1);
    let layers: Vec<Vec<u8>> =
        (0..4).map(|i| std::fs::read(job.out_dir.join(format!("out{i}/layer.tar"))).unwrap()).collect();
    assert!(layers.iter().all(|l| *l == layers[0]), "every job gives the same layer");
    let slowest = runs.iter().map(|f| f.elapsed).max().unwrap();
    eprintln!(
        "first wave of 4: slowest job {slowest:?}; each: {:?}",
        runs.iter().map(|f| f.elapsed).collect::<Vec<_>>()
    );
}
