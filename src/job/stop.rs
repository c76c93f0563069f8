//! When the host's work on a job stops, and where `--out` may go.

use super::JobError;
use std::path::Path;
use std::time::Instant;

/// When the host's work on a job stops: at SIGINT/SIGTERM, and past the
/// job's `--timeout` (a wall-clock limit for the whole job, host phases
/// included: a crafted scratch disk cannot keep the host busy past it).
#[derive(Debug, Clone, Copy)]
pub(super) struct Stop {
    deadline: Option<Instant>,
    timeout: u64,
}

impl Stop {
    pub(super) fn interrupts_only() -> Self {
        Stop { deadline: None, timeout: 0 }
    }

    pub(super) fn within(start: Instant, timeout: std::time::Duration) -> Self {
        Stop { deadline: start.checked_add(timeout), timeout: timeout.as_secs() }
    }

    /// Whether to stop now.
    pub(super) fn now(&self) -> bool {
        crate::signals::interrupted() || self.deadline.is_some_and(|d| Instant::now() > d)
    }

    /// A host phase's outcome: once the signal came (or the time ran out),
    /// its failure (its writers stop at the next write) is the interruption
    /// (or the timeout), and so is a phase that got done.
    pub(super) fn judge<T>(&self, r: Result<T, JobError>) -> Result<T, JobError> {
        if crate::signals::interrupted() {
            Err(JobError::Interrupted)
        } else if self.deadline.is_some_and(|d| Instant::now() > d) {
            Err(JobError::Timeout(self.timeout))
        } else {
            r
        }
    }

    /// A checkpoint between phases: the interruption or the timeout, if
    /// either came.
    pub(super) fn check(&self) -> Result<(), JobError> {
        self.judge(Ok(()))
    }

    /// An output file writer that stops when this says so.
    pub(super) fn file(self, path: &Path) -> std::io::Result<impl std::io::Write> {
        let file = std::fs::File::create(path)?;
        let inner = std::io::BufWriter::with_capacity(1 << 20, file);
        Ok(crate::layer::Stoppable { inner, stop: move || self.now() })
    }
}

/// `--out`: free, in an existing directory this process may write to.
pub(super) fn check_out(out: &Path) -> Result<(), JobError> {
    let bad = |m: String| Err(JobError::BadInput(m));
    if out.symlink_metadata().is_ok() {
        return bad(format!("output {} already exists", out.display()));
    }
    let parent = out.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    match std::fs::metadata(parent) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => return bad(format!("--out {}: {} is not a directory", out.display(), parent.display())),
        Err(e) => return bad(format!("--out {}: directory {}: {e}", out.display(), parent.display())),
    }
    if rustix::fs::access(parent, rustix::fs::Access::WRITE_OK | rustix::fs::Access::EXEC_OK).is_err() {
        return bad(format!("--out {}: directory {} is not writable", out.display(), parent.display()));
    }
    Ok(())
}
