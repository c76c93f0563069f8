//! rootlayer command line: parse, set up the process, dispatch, exit with
//! the command's code ([`rootlayer::exit`]).

mod cli;

use clap::Parser;
use cli::args::{Cli, Command};
use cli::commands;
use rootlayer::exit::Exit;
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = Cli::parse();
    rootlayer::signals::install_interrupt_handlers();
    rootlayer::job::raise_nofile_limit();
    rootlayer::job::restrict_umask();
    if let Err(e) = rootlayer::job::check_cache_dir(&rootlayer::job::cache_dir()) {
        eprintln!("rootlayer: {e}");
        return Exit::BadInput.into();
    }
    match cli.command {
        Command::Boot(args) => commands::boot(args).into(),
        Command::RunAsRoot(args) => commands::run_as_root(*args).into(),
        Command::Export(args) => commands::export(args).into(),
        Command::ClosureInfo(args) => commands::closure_info(args).into(),
        Command::BenchIo(args) => commands::bench_io(args).into(),
    }
}
