//! Subcommands, one module each.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod crds;
mod plan;
mod logging;
mod run;

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
    /// Run the operator: watch pools and batches and roll nodes out.
    Run(run::Args),
    /// Print the CustomResourceDefinitions as YAML (what `crds/` holds).
    Crds(crds::Args),
    /// Preview, without a cluster, the waves a batch would run over a set of
    /// nodes, and which nodes would fail the static checks and why.
    Plan(plan::Args),
}

/// Runs the chosen subcommand.
pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Run(args) => run::run(args),
        Command::Crds(args) => crds::run(args),
        Command::Plan(args) => plan::run(args),
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_well_formed() {
        super::Cli::command().debug_assert();
    }
}
