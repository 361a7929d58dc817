//! `gpufleet probe`: the burn-in check that runs inside a probe pod.

use std::io::Write;
use std::process::ExitCode;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Print the verdict's JSON Schema (docs/verdict-v1.schema.json) and exit.
    #[arg(long)]
    print_schema: bool,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    if args.print_schema {
        std::io::stdout()
            .lock()
            .write_all(gpufleet::verdict::json_schema().as_bytes())?;
        return Ok(ExitCode::SUCCESS);
    }
    anyhow::bail!("not built yet")
}
