//! Subcommands, one module each.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod crds;

/// gpufleet brings new NVIDIA GB200/GB300 nodes online in staged waves while
/// health-checking them.
#[derive(Parser, Debug)]
#[command(name = "gpufleet", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Print the CustomResourceDefinitions as YAML (what `crds/` holds).
    Crds(crds::Args),
}

/// Runs the chosen subcommand.
pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Crds(args) => crds::run(args),
    }
}
