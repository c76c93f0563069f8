//! What the CLI says about a finished command and which exit code it
//! gives: the one-line summary or error, the `--json` result, and the
//! judgement of a `boot`. Pure: `main.rs` only prints what this decides.

use crate::exit::{error_line, Exit};
use crate::runas::{RunAsRootError, Summary};
use crate::vmm::{RunEnd, RunReport};

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
pub fn job(result: &Result<Summary, RunAsRootError>, what: &str) -> JobVerdict {
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
                RunAsRootError::ScriptFailed(c) => Some(*c),
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

/// Judge a finished boot: clean only if the agent said it was ready, then
/// reported status 0 and reset the guest; `timeout` is the limit it had, in
/// seconds.
pub fn boot(report: &RunReport, timeout: u64) -> BootVerdict {
    let log = report.console.lock().expect("console log poisoned");
    let ready = log.ready_at();
    let panic = log.panic_line().map(str::to_string);
    let status = log.agent_status();
    drop(log);
    let bad = |exit, line: String| BootVerdict { exit, lines: vec![line], show_tail: true };
    if report.end == RunEnd::Interrupted {
        return BootVerdict {
            exit: Exit::Interrupted,
            lines: vec!["interrupted: the guest was stopped".into()],
            show_tail: false,
        };
    }
    if report.end == RunEnd::TimedOut {
        let stage = if ready.is_some() { "after the agent started" } else { "before the agent's ready line" };
        return bad(Exit::Timeout, format!("timeout: the guest did not finish within {timeout}s ({stage})"));
    }
    if let Some(line) = panic {
        return bad(Exit::GuestPanic, format!("the guest kernel panicked: {line}"));
    }
    match (&report.end, ready, status) {
        (end, Some(at), Some(0)) if end.is_clean() => {
            let wall = report.wall.as_secs_f64();
            let mut lines =
                vec![format!("agent ready after {:.3}s, guest exited cleanly after {wall:.3}s", at.as_secs_f64())];
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
        (end, _, _) => bad(Exit::Internal, format!("guest ended badly: {end}; agent status {status:?}")),
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
        }
    }

    const RESET: RunEnd = RunEnd::Exited(crate::vmm::GuestExit::Reset);

    fn ready() -> String {
        format!("{}0.1.0{} (uptime 1.00s)\n", crate::job::AGENT_READY_PREFIX, crate::job::AGENT_READY_WORD)
    }

    #[test]
    fn a_clean_boot_needs_the_ready_line_status_zero_and_a_reset() {
        let ok = format!("{}{}0\n", ready(), crate::job::AGENT_STATUS_PREFIX);
        let v = boot(&report(&ok, RESET), 60);
        assert_eq!(v.exit, Exit::Ok, "{v:?}");
        assert!(v.lines[0].starts_with("agent ready after") && v.lines[1].contains("VMM overhead 100000 KiB"), "{v:?}");
        assert!(!v.show_tail);

        let failed = format!("{}{}3\n", ready(), crate::job::AGENT_STATUS_PREFIX);
        assert_eq!(boot(&report(&failed, RESET), 60).exit, Exit::Internal);
        let no_ready = format!("{}0\n", crate::job::AGENT_STATUS_PREFIX);
        assert_eq!(boot(&report(&no_ready, RESET), 60).exit, Exit::Internal);
        let timed_out = boot(&report(&ready(), RunEnd::TimedOut), 60);
        assert_eq!(timed_out.exit, Exit::Timeout);
        assert!(timed_out.lines[0].contains("within 60s (after the agent started)") && timed_out.show_tail);
        let panic = boot(&report("Kernel panic - not syncing: oops\n", RESET), 60);
        assert_eq!(panic.exit, Exit::GuestPanic, "{panic:?}");
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

        let v = job(&Err(RunAsRootError::ScriptFailed(3)), "layer");
        assert_eq!(v.exit, Exit::ScriptFailed);
        assert_eq!(v.json["script_status"], 3);
        assert_eq!(v.json["exit_code"], Exit::ScriptFailed.code());
        let v = job(&Err(RunAsRootError::DiskFull), "layer");
        assert_eq!((v.exit, v.json["script_status"].is_null()), (Exit::DiskFull, true));
    }
}
