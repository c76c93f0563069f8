//! The verdict on a finished guest, and what the CLI says about a finished
//! command with which exit code: [`judge`] is the one judgement of a guest's
//! run (how it ended, the agent's result.json, what the host saw), for a
//! `run-as-root` and a `boot` alike; then the one-line summary or error and
//! the `--json` result. Pure: `main.rs` only prints what this decides.

use super::JobError;
use crate::exit::{error_line, Exit};
use crate::image::OutputFormat;
use crate::job::{GuestError, JobOutcome};
use crate::protocol::JobResult;
use crate::vmm::{RunEnd, RunReport};
use std::path::PathBuf;

/// What a successful job produced.
#[derive(Debug, Clone)]
pub struct Summary {
    pub diff_id: String,
    pub size: u64,
    pub out: PathBuf,
    pub format: OutputFormat,
    /// (phase, seconds): host phases and the agent's.
    pub phases: Vec<(String, f64)>,
    pub script_status: i32,
    /// How the guest came up ([`crate::vmm::BootPath::word`]); None
    /// without a guest (`export`).
    pub boot: Option<&'static str>,
}

/// Print the guest's last console lines (when they were not echoed live,
/// with a failure of the guest itself).
pub fn print_console_tail(report: &RunReport) {
    eprintln!("rootlayer: last guest console lines:");
    for line in report.console_tail().iter().rev().take(15).rev() {
        eprintln!("  | {line}");
    }
}

/// What the host knows of a job besides how its run ended and its console.
#[derive(Debug, Clone, Copy)]
pub struct HostFacts {
    /// The job's time limit, in seconds.
    pub timeout: u64,
    /// The `--max-output` bound the guest ran into, if it did.
    pub output_exceeded: Option<u64>,
}

impl JobOutcome {
    /// This job's verdict ([`judge`]), its time limit `timeout` seconds.
    pub fn judge(&self, timeout: u64) -> Result<JobResult, JobError> {
        judge(&self.report, self.result.clone(), HostFacts { timeout, output_exceeded: self.output_exceeded() })
    }
}

/// Judge a guest's job: how its run ended, the agent's result and what the
/// host saw. What the host saw itself comes first (interrupt, timeout, the
/// output bound), then the agent's result: the console carries the
/// script's output, which can say anything, so its text (a panic or OOM
/// line) counts only when the agent could not report at all.
pub fn judge(report: &RunReport, result: Option<JobResult>, host: HostFacts) -> Result<JobResult, JobError> {
    if report.end == RunEnd::Interrupted {
        return Err(JobError::Interrupted);
    }
    if report.end == RunEnd::TimedOut {
        return Err(JobError::Timeout(host.timeout));
    }
    if let Some(limit) = host.output_exceeded {
        return Err(JobError::OutputTooLarge(limit));
    }
    if let Some(result) = result {
        return judge_result(result, &report.end);
    }
    let log = report.console.lock().expect("console log poisoned");
    if let Some(line) = log.panic_line() {
        return Err(JobError::GuestPanic(line.to_string()));
    }
    if log.oom_seen() {
        return Err(JobError::GuestOutOfMemory);
    }
    Err(JobError::Guest(format!("no result from the agent ({})", report.end)))
}

/// Judge the agent's result (the guest's word) once the VM ended cleanly
/// enough to have one; `end` is how the VM's run ended.
pub(crate) fn judge_result(result: JobResult, end: &RunEnd) -> Result<JobResult, JobError> {
    // An agent that cannot read this host's job.json.
    if result.status == crate::protocol::STATUS_PROTOCOL {
        return Err(JobError::Run(GuestError::AgentProtocol(result.error.unwrap_or_default())));
    }
    // A full disk explains a failure (the agent says so: the scratch disk's
    // free blocks, or ENOSPC in its error's causes); a job that succeeded
    // with (nearly) no room left is still a success.
    let failed = result.error.is_some() || result.script_status.is_some_and(|s| s != 0);
    // The OOM killer explains a failure (the agent counted the kernel's own
    // log records); a script that survived it succeeded.
    if result.oom_kills > 0 && failed {
        return Err(JobError::GuestOutOfMemory);
    }
    if result.disk_full && failed {
        return Err(JobError::DiskFull);
    }
    if let Some(err) = &result.error {
        return Err(JobError::Guest(err.clone()));
    }
    if !end.is_clean() {
        return Err(JobError::Guest(end.to_string()));
    }
    Ok(result)
}

/// A run-as-root or export outcome, as the CLI reports it.
#[derive(Debug, Clone, PartialEq)]
pub struct JobVerdict {
    pub exit: Exit,
    /// The stderr line (without the `rootlayer: ` prefix).
    pub line: String,
    /// The `--json` result.
    pub json: serde_json::Value,
}

/// The verdict on `result`; `what` names the output ("layer", "root filesystem").
pub fn job(result: &Result<Summary, JobError>, what: &str) -> JobVerdict {
    match result {
        Ok(sum) => {
            let phases: Vec<String> = sum.phases.iter().map(|(n, t)| format!("{n} {t:.2}s")).collect();
            JobVerdict {
                exit: Exit::Ok,
                line: format!(
                    "{what} {} ({} bytes) -> {} [{}]",
                    sum.diff_id,
                    sum.size,
                    sum.out.display(),
                    phases.join(", ")
                ),
                json: serde_json::json!({
                    "status": "ok",
                    "exit_code": 0,
                    "diff_id": sum.diff_id,
                    "size": sum.size,
                    "out": sum.out,
                    "format": format!("{:?}", sum.format).to_lowercase(),
                    "script_status": sum.script_status,
                    "boot": sum.boot,
                    "phases": sum.phases.iter().map(|(n, t)| serde_json::json!({"name": n, "seconds": t})).collect::<Vec<_>>(),
                }),
            }
        }
        Err(e) => {
            let exit = e.exit();
            let script_status = match e {
                JobError::ScriptFailed(c) => Some(*c),
                _ => None,
            };
            JobVerdict {
                exit,
                line: error_line(e),
                json: serde_json::json!({
                    "status": "error",
                    "exit_code": exit.code(),
                    "error": error_line(e),
                    "script_status": script_status,
                }),
            }
        }
    }
}

/// A `boot`'s verdict: the lines to print (without the prefix), whether the
/// guest's last console lines go with them, and the exit code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootVerdict {
    pub exit: Exit,
    pub lines: Vec<String>,
    pub show_tail: bool,
}

/// Judge a finished `boot` (a job with no task): as any job ([`judge`]);
/// when clean, its lines give the agent's ready time, the run's wall time,
/// the VMM's memory overhead and what keeping vector state cost.
pub fn boot(report: &RunReport, result: Option<JobResult>, host: HostFacts) -> BootVerdict {
    match judge(report, result, host) {
        Ok(_) => {
            let ready = report.ready_at().map_or(f64::NAN, |at| at.as_secs_f64());
            let wall = report.wall.as_secs_f64();
            let mut lines = vec![format!("agent ready after {ready:.3}s, guest exited cleanly after {wall:.3}s")];
            if let (Some(peak), Some(guest)) = (report.peak_rss_kib, report.guest_rss_kib) {
                lines.push(format!(
                    "peak RSS {peak} KiB, of which guest RAM {guest} KiB: VMM overhead {} KiB",
                    peak.saturating_sub(guest)
                ));
            }
            if let Some(x) = report.xstate {
                let each = if x.ops == 0 { 0.0 } else { x.time.as_secs_f64() * 1e6 / x.ops as f64 };
                lines.push(format!(
                    "guest vector state kept by the VMM: {} operations, {each:.1} us each on the host",
                    x.ops
                ));
            }
            BootVerdict { exit: Exit::Ok, lines, show_tail: false }
        }
        Err(e) => {
            BootVerdict { exit: e.exit(), lines: vec![error_line(&e)], show_tail: !matches!(e, JobError::Interrupted) }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::console::{ConsoleSink, Echo};
    use crate::image::OutputFormat;
    use std::io::Write;
    use std::time::{Duration, Instant};

    fn report(console: &str, end: RunEnd) -> RunReport {
        let (mut sink, log) = ConsoleSink::new(Echo::Off, None, Instant::now());
        sink.write_all(console.as_bytes()).unwrap();
        RunReport {
            end,
            wall: Duration::from_secs(2),
            console: log,
            peak_rss_kib: Some(300_000),
            guest_rss_kib: Some(200_000),
            xstate: None,
            boot: crate::vmm::BootPath::Cold,
            started: true,
            result: Ok(None),
            teardown: crate::vmm::config::Teardown::default(),
        }
    }

    fn boot(console: &str, end: RunEnd, result: Option<JobResult>) -> BootVerdict {
        super::boot(&report(console, end), result, HostFacts { timeout: 60, output_exceeded: None })
    }

    const RESET: RunEnd = RunEnd::Exited(crate::vmm::GuestExit::Reset);

    fn ready() -> String {
        format!("{}0.1.0{} (uptime 1.00s)\n", crate::protocol::AGENT_READY_PREFIX, crate::protocol::AGENT_READY_WORD)
    }

    fn result(status: i32, error: Option<&str>) -> Option<JobResult> {
        Some(JobResult { status, error: error.map(str::to_string), ..JobResult::default() })
    }

    #[test]
    fn a_boot_is_judged_as_a_job_from_its_result_and_how_the_run_ended() {
        let v = boot(&ready(), RESET, result(0, None));
        assert_eq!(v.exit, Exit::Ok, "{v:?}");
        assert!(
            v.lines[0].starts_with("agent ready after 0.") && v.lines[1].contains("VMM overhead 100000 KiB"),
            "{v:?}"
        );
        assert!(!v.show_tail);
        // The console's text decides nothing the agent reported: a status
        // line says nothing, result.json does.
        let said_ok = format!("{}{}0\n", ready(), crate::protocol::AGENT_STATUS_PREFIX);
        let v = boot(&said_ok, RESET, None);
        assert_eq!(v.exit, Exit::Internal, "{v:?}");
        assert!(v.lines[0].contains("no result from the agent") && v.show_tail, "{v:?}");
        let failed = boot(&ready(), RESET, result(70, Some("mount: EIO")));
        assert_eq!((failed.exit, failed.lines[0].as_str()), (Exit::Internal, "the guest failed: mount: EIO"));
        let timed_out = boot(&ready(), RunEnd::TimedOut, result(0, None));
        assert_eq!(timed_out.exit, Exit::Timeout);
        assert!(timed_out.lines[0].contains("within 60s") && timed_out.show_tail, "{timed_out:?}");
        let panic = boot("Kernel panic - not syncing: oops\n", RESET, None);
        assert_eq!(panic.exit, Exit::GuestPanic, "{panic:?}");
        let stopped = boot(&ready(), RunEnd::Interrupted, None);
        assert_eq!((stopped.exit, stopped.show_tail), (Exit::Interrupted, false));
        let hung = boot(&ready(), RunEnd::VcpuPanicked("oops".into()), result(0, None));
        assert_eq!(hung.exit, Exit::Internal, "a result does not make a broken run clean: {hung:?}");
    }

    #[test]
    fn the_agents_causes_are_typed_not_found_in_its_text() {
        let mut r = result(70, Some("write upper tar: No space left on device (os error 28)")).unwrap();
        // Without the agent's word, the text is only text.
        assert!(matches!(judge_result(r.clone(), &RESET), Err(JobError::Guest(_))));
        r.disk_full = true;
        assert!(matches!(judge_result(r.clone(), &RESET), Err(JobError::DiskFull)));
        r.oom_kills = 1;
        assert!(matches!(judge_result(r, &RESET), Err(JobError::GuestOutOfMemory)));
        // A job that succeeded with the disk nearly full, or past an OOM
        // kill it survived, succeeded.
        let ok = JobResult { disk_full: true, oom_kills: 2, script_status: Some(0), ..JobResult::default() };
        assert!(judge_result(ok, &RESET).is_ok());
        let protocol = JobResult { status: crate::protocol::STATUS_PROTOCOL, ..JobResult::default() };
        assert_eq!(judge_result(protocol, &RESET).unwrap_err().exit(), Exit::BadInput);
    }

    #[test]
    fn job_results_give_the_summary_the_json_and_the_errors_exit_code() {
        let sum = Summary {
            diff_id: "sha256:ab".into(),
            size: 10,
            out: "/o".into(),
            format: OutputFormat::Layer,
            phases: vec![("boot".into(), 1.5)],
            script_status: 0,
            boot: Some("restored"),
        };
        let v = job(&Ok(sum), "layer");
        assert_eq!(v.exit, Exit::Ok);
        assert_eq!(v.line, "layer sha256:ab (10 bytes) -> /o [boot 1.50s]");
        assert_eq!(v.json["status"], "ok");
        assert_eq!(v.json["phases"][0]["name"], "boot");
        assert_eq!(v.json["format"], "layer");
        assert_eq!(v.json["boot"], "restored");

        let v = job(&Err(JobError::ScriptFailed(3)), "layer");
        assert_eq!(v.exit, Exit::ScriptFailed);
        assert_eq!(v.json["script_status"], 3);
        assert_eq!(v.json["exit_code"], Exit::ScriptFailed.code());
        let v = job(&Err(JobError::DiskFull), "layer");
        assert_eq!((v.exit, v.json["script_status"].is_null()), (Exit::DiskFull, true));
    }
}
