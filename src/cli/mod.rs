//! The command line: [`args`] as clap reads it, [`commands`] run each
//! command through the job layer and print its verdict.

pub mod args;
pub mod commands;
