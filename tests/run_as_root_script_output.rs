//! e2e: what a script prints reaches the host's stderr whole and in order,
//! through one pipe for its stdout and stderr as a Nix builder's log is
//! (the seed's recipe runs the script with the build's log pipe): 2,000
//! lines written one `echo` at a time, a line on stderr after them, a last
//! line without its newline (ended by the agent, so the agent's next line
//! stands on its own), and output a background process writes before the
//! script's end. The script sees a pipe, not a terminal.

mod common;

use common::runas::FailingJob;

const LINES: usize = 2000;

#[test]
fn run_as_root_script_output_arrives_whole_and_in_order() {
    let Some(g) = common::guest("run_as_root_script_output_arrives_whole_and_in_order") else { return };
    let body = format!(
        "i=1; while [ $i -le {LINES} ]; do echo \"line $i\"; i=$((i + 1)); done\n\
         echo to-stderr >&2\n\
         if [ -t 1 ]; then echo stdout-is-a-terminal; else echo stdout-is-a-pipe; fi\n\
         (echo from-the-background) &\n\
         wait\n\
         echo ok > /etc/ok\n\
         printf no-newline\n"
    );
    let job = FailingJob::new(&body);
    let f = job.run(&g, 256, 64, 600, &[]);
    assert_eq!(f.code, 0, "{}", f.message());
    let lines: Vec<&str> = f.stderr.lines().collect();
    let first = lines.iter().position(|l| *l == "line 1").expect("the script's first line");
    let numbered: Vec<&str> = lines[first..first + LINES].to_vec();
    let want: Vec<String> = (1..=LINES).map(|i| format!("line {i}")).collect();
    assert_eq!(numbered, want, "every line, in order, nothing between them");
    assert_eq!(
        &lines[first + LINES..first + LINES + 5],
        &[
            "to-stderr",
            "stdout-is-a-pipe",
            "from-the-background",
            "no-newline",
            "rootlayer-agent: script exited with status 0"
        ],
        "stderr in the order written, the unended last line ended"
    );
}
