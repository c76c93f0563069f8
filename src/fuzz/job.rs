//! `job`: the host/agent messages. The host parses and judges the
//! `result.json` an untrusted guest wrote; the agent parses `job.json`;
//! the host takes the result out of a mailbox the guest wrote.
//!
//! Input: the bytes of either file (both parsers see every input), and
//! the same bytes as the start of a mailbox window (its header first).
//!
//! Invariants: no panic; a judged success carries no agent error; what
//! parses serializes and parses back to the same message; what the mailbox
//! gives lies within the window's result part, and a result put in comes
//! out the same.

use crate::job::parse_result;
use crate::job::verdict::judge_result;
use crate::protocol::mailbox::{self, Part};
use crate::protocol::{Job, JobResult};
use crate::vmm::{GuestExit, RunEnd};

/// The result without its float timings, which serde_json parses back to
/// the nearest float only up to the last bit.
fn exact(r: &JobResult) -> JobResult {
    JobResult { phases: r.phases.iter().map(|(n, _)| (n.clone(), 0.0)).collect(), ..r.clone() }
}

pub fn job(data: &[u8]) {
    if let Ok(result) = parse_result(data) {
        let text = serde_json::to_vec(&result).expect("serialize a result");
        let again = parse_result(&text).expect("a serialized result parses");
        assert_eq!(exact(&again), exact(&result), "result round trip");
        for end in [RunEnd::Exited(GuestExit::Reset), RunEnd::Exited(GuestExit::Halted), RunEnd::TimedOut] {
            match judge_result(result.clone(), &end) {
                Ok(r) => {
                    assert!(r.error.is_none() && end.is_clean(), "success judged from {result:?}");
                }
                Err(e) => {
                    let _ = e.to_string();
                }
            }
        }
    }
    let mut window = vec![0u8; mailbox::MAILBOX_SIZE];
    let n = data.len().min(window.len());
    window[..n].copy_from_slice(&data[..n]);
    if let Ok(Some(bytes)) = mailbox::take(&window, Part::Result) {
        assert!(bytes.len() <= Part::Result.max(), "a result longer than its part");
        let _ = parse_result(bytes);
    }
    if data.len() <= Part::Result.max() {
        mailbox::put(&mut window, Part::Result, data).expect("a result that fits goes in");
        assert_eq!(mailbox::take(&window, Part::Result), Ok(Some(data)), "mailbox round trip");
    }
    if let Ok(job) = serde_json::from_slice::<Job>(data) {
        let text = serde_json::to_vec(&job).expect("serialize a job");
        let again: Job = serde_json::from_slice(&text).expect("a serialized job parses");
        assert_eq!(again, job, "job round trip");
        for f in &job.files {
            if let Some(bytes) = f.bytes(data) {
                assert_eq!(bytes.len() as u64, f.len, "a job file's span");
            }
        }
    }
}
