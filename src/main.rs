//! The `gpufleet` command: a thin shell over the library.

use std::process::ExitCode;

use clap::Parser;

mod cli;

fn main() -> ExitCode {
    let args = cli::Cli::parse();
    match cli::run(args) {
        Ok(code) => code,
        Err(err) => {
            // An error may quote the cluster (an API server's message).
            eprintln!("gpufleet: {}", gpufleet::view::safe(&format!("{err:#}")));
            ExitCode::FAILURE
        }
    }
}
