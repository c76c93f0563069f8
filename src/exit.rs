//! Process exit codes: a contract with scripts and builders, documented in
//! the README ("Exit codes") from this one enum.

/// Every way a rootlayer command ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// The job (or boot) completed.
    Ok,
    /// The runAsRoot script exited non-zero; its own code is reported.
    ScriptFailed,
    /// Bad input: arguments, files, images (clap's usage errors are 2 too).
    BadInput,
    /// No usable /dev/kvm.
    KvmUnavailable,
    /// The guest kernel panicked.
    GuestPanic,
    /// The guest ran out of memory.
    GuestOutOfMemory,
    /// The scratch disk filled up.
    DiskFull,
    /// The guest wrote more than --max-output back to the host.
    OutputTooLarge,
    /// The script left something an OCI layer cannot hold (a file named
    /// `.wh.*`, a socket, ...); the message names the path.
    Unrepresentable,
    /// The wall-clock timeout expired.
    Timeout,
    /// SIGINT or SIGTERM: the guest was stopped and temporary files removed.
    Interrupted,
    /// A bug or an unexpected failure of rootlayer itself.
    Internal,
}

impl Exit {
    /// All variants, in README order.
    pub const ALL: [Exit; 12] = [
        Exit::Ok,
        Exit::ScriptFailed,
        Exit::BadInput,
        Exit::KvmUnavailable,
        Exit::GuestPanic,
        Exit::GuestOutOfMemory,
        Exit::DiskFull,
        Exit::OutputTooLarge,
        Exit::Unrepresentable,
        Exit::Timeout,
        Exit::Interrupted,
        Exit::Internal,
    ];

    pub const fn code(self) -> u8 {
        match self {
            Exit::Ok => 0,
            Exit::ScriptFailed => 1,
            Exit::BadInput => 2,
            Exit::KvmUnavailable => 3,
            Exit::GuestPanic => 4,
            Exit::GuestOutOfMemory => 5,
            Exit::DiskFull => 6,
            Exit::OutputTooLarge => 7,
            Exit::Unrepresentable => 8,
            Exit::Timeout => 124,
            Exit::Interrupted => 130,
            Exit::Internal => 70,
        }
    }

    pub const fn meaning(self) -> &'static str {
        match self {
            Exit::Ok => "success",
            Exit::ScriptFailed => "the script failed (its exit code is in the summary and --json)",
            Exit::BadInput => "bad input: arguments, kernel, initramfs or image",
            Exit::KvmUnavailable => "/dev/kvm missing, not accessible, or lacking a capability",
            Exit::GuestPanic => "the guest kernel panicked",
            Exit::GuestOutOfMemory => "the guest ran out of memory (raise --mem-size)",
            Exit::DiskFull => "the scratch disk is full (raise --disk-size)",
            Exit::OutputTooLarge => "the guest wrote more than --max-output back to the host (raise it)",
            Exit::Unrepresentable => "the script left a file an OCI layer cannot hold (the path is named)",
            Exit::Timeout => "--timeout expired; the last guest lines are printed",
            Exit::Interrupted => "interrupted by SIGINT/SIGTERM; guest stopped, temporary files removed",
            Exit::Internal => "internal error (a bug, or an emulation failure of the guest CPU)",
        }
    }
}

/// An error and every cause under it, on one line: each `source()` is
/// appended (after ": ") unless the message above already says it.
pub fn error_line(e: &(dyn std::error::Error + 'static)) -> String {
    let mut line = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let text = c.to_string();
        if !text.is_empty() && !line.contains(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
        cause = c.source();
    }
    line
}

impl From<Exit> for std::process::ExitCode {
    fn from(e: Exit) -> Self {
        std::process::ExitCode::from(e.code())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    enum Outer {
        #[error("creating the exchange directory")]
        Plain(#[source] std::io::Error),
        #[error("reading it: {0}")]
        Said(#[source] std::io::Error),
    }

    #[test]
    fn error_line_keeps_every_cause_once() {
        let io = || std::io::Error::new(std::io::ErrorKind::PermissionDenied, "permission denied");
        assert_eq!(error_line(&Outer::Plain(io())), "creating the exchange directory: permission denied");
        assert_eq!(error_line(&Outer::Said(io())), "reading it: permission denied");
    }

    #[test]
    fn codes_are_distinct() {
        let mut codes: Vec<u8> = Exit::ALL.iter().map(|e| e.code()).collect();
        codes.sort_unstable();
        codes.dedup();
        assert_eq!(codes.len(), Exit::ALL.len());
    }

    #[test]
    fn readme_documents_every_code() {
        let readme = include_str!("../README.md");
        for e in Exit::ALL {
            let row = format!("| {} | {} |", e.code(), e.meaning());
            assert!(readme.contains(&row), "README lacks exit code row: {row}");
        }
    }
}
