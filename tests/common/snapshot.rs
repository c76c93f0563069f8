//! A private snapshot cache for the snapshot tests, so that each decides
//! what is in it (the other e2e tests share the test user's).

#![allow(dead_code)]

use super::runas::{FailingJob, Finished};
use std::path::PathBuf;

/// `$ROOTLAYER_CACHE` of one test.
#[derive(Debug)]
pub struct Cache {
    dir: tempfile::TempDir,
    env: String,
}

impl Cache {
    pub fn new() -> Self {
        let dir = super::tempdir();
        let env = dir.path().to_str().unwrap().to_string();
        Cache { dir, env }
    }

    /// The environment that points rootlayer at it, with `extra`.
    pub fn env<'a>(&'a self, extra: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
        let mut env = vec![("ROOTLAYER_CACHE", self.env.as_str())];
        env.extend_from_slice(extra);
        env
    }

    /// The snapshot files in it (not their take locks).
    pub fn snapshots(&self) -> Vec<PathBuf> {
        let dir = self.dir.path().join("snapshots");
        let mut v: Vec<PathBuf> = std::fs::read_dir(&dir)
            .map(|d| d.map(|e| e.unwrap().path()).filter(|p| p.extension().is_some_and(|x| x == "snap")).collect())
            .unwrap_or_default();
        v.sort();
        v
    }
}

/// How the job's guest came up (`--json`'s `boot`): `cold`,
/// `snapshot-taken` or `restored`.
pub fn boot_of(f: &Finished) -> String {
    f.json()["boot"].as_str().unwrap_or_else(|| panic!("no boot in {}", f.stdout)).to_string()
}

/// Run `job` with `cache` and `extra` arguments (the previous run's
/// output removed first); it must succeed. Returns the run and its layer.
pub fn run_ok(
    g: &super::Guest,
    job: &FailingJob,
    cache: &Cache,
    extra: &[&str],
    env: &[(&str, &str)],
) -> (Finished, Vec<u8>) {
    let _ = std::fs::remove_dir_all(&job.out);
    let f = job.run_with(g, extra, &cache.env(env));
    assert_eq!(f.code, 0, "{}", f.message());
    let layer = std::fs::read(job.out.join("layer.tar")).unwrap();
    (f, layer)
}
