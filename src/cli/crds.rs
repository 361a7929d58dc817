//! `gpufleet crds`: the CRDs, from the one renderer.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Write one file per CRD into this folder instead of printing.
    #[arg(long, value_name = "DIR")]
    out_dir: Option<PathBuf>,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    match args.out_dir {
        None => {
            let mut stdout = std::io::stdout().lock();
            stdout.write_all(gpufleet::crds::render_all()?.as_bytes())?;
        }
        Some(dir) => {
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            for crd in gpufleet::crds::render()? {
                let path = dir.join(&crd.file_name);
                std::fs::write(&path, crd.yaml)
                    .with_context(|| format!("writing {}", path.display()))?;
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
