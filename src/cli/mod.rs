//! Subcommands, one module each.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[cfg(feature = "dev")]
mod bench;
mod client;
#[cfg(feature = "dev")]
mod controlplane;
mod crds;
#[cfg(feature = "dev")]
mod demo;
mod fleet;
mod logging;
mod plan;
mod plugin;
mod probe;
mod run;
mod schedule;
mod status;

/// gpufleet brings new NVIDIA GB200/GB300 nodes online in staged waves while
/// health-checking them.
#[derive(Parser, Debug)]
#[command(name = "gpufleet", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

impl Cli {
    /// Is this a command a person reads from a pipe (`gpufleet why N |
    /// head`)? Everything but the long-running operator, the demo and the
    /// probe (which must write its verdict whatever happens to stdout).
    pub fn prints_for_people(&self) -> bool {
        #[cfg(feature = "dev")]
        if matches!(self.command, Command::Demo(_)) {
            return false;
        }
        !matches!(self.command, Command::Run(_) | Command::Probe(_))
    }
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the operator: watch pools and batches and roll nodes out.
    // Boxed: its flags make it the largest variant by far.
    Run(Box<run::Args>),
    /// Print the CustomResourceDefinitions as YAML (what `crds/` holds).
    Crds(crds::Args),
    /// Preview, without a cluster, the waves a batch would run over a set of
    /// nodes, and which nodes would fail the static checks and why.
    Plan(plan::Args),
    /// See it work: a simulated GB200/GB300 fleet rolled out on a local
    /// control plane, live, then summed up.
    #[cfg(feature = "dev")]
    Demo(demo::Args),
    /// Where rollouts stand: every pool and batch, or one batch wave by wave.
    Status(status::Args),
    /// Many clusters: `fleet status` over a hub's ClusterProfiles or
    /// kubeconfig contexts, and `fleet run`, the FleetRollout controller.
    Fleet(fleet::Args),
    /// Let a batch start more waves (raises spec.approvedWaves).
    Approve(plugin::ApproveArgs),
    /// Start no more nodes of a batch; probes in flight finish.
    Pause(plugin::BatchArgs),
    /// Undo `pause`.
    Resume(plugin::BatchArgs),
    /// Send failed or held nodes through validation again, once fixed.
    Retry(plugin::RetryArgs),
    /// Why a node is in its state: reason, batch, wave, since, events.
    Why(plugin::WhyArgs),
    /// Inside a probe pod: check this node's GPUs (nvidia-smi), write the
    /// verdict to the termination log, exit non-zero on failure.
    Probe(probe::Args),
    /// Measure the operator on a local control plane: N simulated nodes
    /// rolled out, wall time, memory, CPU and API requests (BENCHMARKS.md).
    #[cfg(feature = "dev")]
    Bench(bench::Args),
}

/// gpufleet's cache: $GPUFLEET_CACHE, else $XDG_CACHE_HOME/gpufleet, else
/// ~/.cache/gpufleet (where the test bed's scripts keep their builds too).
pub(crate) fn cache_root() -> std::path::PathBuf {
    let var = |name| std::env::var_os(name).filter(|v| !v.is_empty());
    if let Some(dir) = var("GPUFLEET_CACHE") {
        return dir.into();
    }
    let base = var("XDG_CACHE_HOME")
        .map(std::path::PathBuf::from)
        .or_else(|| var("HOME").map(|home| std::path::Path::new(&home).join(".cache")))
        .unwrap_or_else(std::env::temp_dir);
    base.join("gpufleet")
}

/// Runs the chosen subcommand.
pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Run(args) => run::run(*args),
        Command::Crds(args) => crds::run(args),
        Command::Plan(args) => plan::run(args),
        #[cfg(feature = "dev")]
        Command::Demo(args) => demo::run(args),
        Command::Status(args) => status::run(args),
        Command::Fleet(args) => fleet::run(args),
        Command::Approve(args) => plugin::approve(args),
        Command::Pause(args) => plugin::pause(args),
        Command::Resume(args) => plugin::resume(args),
        Command::Retry(args) => plugin::retry(args),
        Command::Why(args) => plugin::why(args),
        Command::Probe(args) => probe::run(args),
        #[cfg(feature = "dev")]
        Command::Bench(args) => bench::run(args),
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
