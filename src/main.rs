//! The `gpufleet` command.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// gpufleet brings new NVIDIA GB200/GB300 nodes online in staged waves while
/// health-checking them.
#[derive(Parser, Debug)]
#[command(name = "gpufleet", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Print the CustomResourceDefinitions as YAML (what `crds/` holds).
    Crds {
        /// Write one file per CRD into this folder instead of printing.
        #[arg(long, value_name = "DIR")]
        out_dir: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Crds { out_dir } => crds(out_dir),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("gpufleet: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn crds(out_dir: Option<PathBuf>) -> anyhow::Result<()> {
    match out_dir {
        None => {
            let mut stdout = std::io::stdout().lock();
            stdout.write_all(gpufleet::crds::render_all()?.as_bytes())?;
        }
        Some(dir) => {
            std::fs::create_dir_all(&dir)?;
            for crd in gpufleet::crds::render()? {
                let path = dir.join(&crd.file_name);
                std::fs::write(&path, crd.yaml)
                    .map_err(|e| anyhow::anyhow!("writing {}: {e}", path.display()))?;
            }
        }
    }
    Ok(())
}
