//! `gpufleet probe`: the burn-in check that runs inside a probe pod.
//!
//! It reads `nvidia-smi -q -x` (and `nvidia-smi nvlink -s`), runs the
//! checks of [`gpufleet::node_probe`], writes the verdict to the
//! termination log, prints a summary and exits 0 (every check passed or
//! was skipped), 1 (a check failed) or 2 (nvidia-smi could not be run or
//! read). `docs/verdict.md` has the rules.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use gpufleet::node_probe::{self, Expect, Report, exec};
use gpufleet::verdict::{self, Verdict};

#[derive(clap::Args, Debug)]
#[command(
    after_help = "Exit codes: 0 no check failed; 1 a check failed; 2 nvidia-smi could not be run or read (the verdict still written). docs/verdict.md has the checks' rules."
)]
pub struct Args {
    /// Print the verdict's JSON Schema (docs/verdict-v1.schema.json) and exit.
    #[arg(long)]
    print_schema: bool,
    /// The nvidia-smi to run: a name looked up on PATH, or a path.
    #[arg(long, value_name = "PATH", default_value = "nvidia-smi")]
    nvidia_smi: PathBuf,
    /// Read this nvidia-smi output instead of running nvidia-smi: `-q -x`
    /// XML or `-q` text, told apart by content.
    #[arg(long, value_name = "FILE")]
    from_file: Option<PathBuf>,
    /// With --from-file: read NVLink link states from this
    /// `nvidia-smi nvlink -s` output (without it, none are read).
    #[arg(long, value_name = "FILE", requires = "from_file")]
    nvlink_from_file: Option<PathBuf>,
    /// Where to write the verdict (JSON, at most 4096 bytes), which the
    /// kubelet hands to gpufleet as the pod's termination message.
    #[arg(long, value_name = "PATH", default_value = "/dev/termination-log")]
    termination_log: PathBuf,
    /// The number of GPUs the node must have (check `gpu-count`).
    #[arg(long, value_name = "N")]
    gpus: Option<u32>,
    /// A product every GPU must be, such as "NVIDIA GB200" (check
    /// `product`). Repeat it to allow several; case, spaces and hyphens do
    /// not matter.
    #[arg(long, value_name = "NAME")]
    product: Vec<String>,
    /// The NVLinks each GPU must have active (check `nvlink`). Default: 18
    /// on a GB200 or GB300; on other GPUs the check is skipped.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    nvlinks: Option<u32>,
    /// Also run the DCGM diagnostic `dcgmi diag -r N`, 1 (quick) to 4
    /// (longest) (check `dcgm`); skipped when there is no dcgmi.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u8).range(1..=4))]
    dcgm_level: Option<u8>,
    /// The dcgmi to run with --dcgm-level. Default: the first on PATH.
    #[arg(long, value_name = "PATH", requires = "dcgm_level")]
    dcgmi: Option<PathBuf>,
    /// Seconds each nvidia-smi run may take before the probe gives up on it.
    #[arg(long, value_name = "SECONDS", default_value_t = 120)]
    nvidia_smi_timeout: u64,
    /// Seconds `dcgmi diag` may take before the probe stops it and fails
    /// the `dcgm` check.
    #[arg(long, value_name = "SECONDS", default_value_t = 7200)]
    dcgm_timeout: u64,
}

/// Exit codes.
const FAILED: u8 = 1;
const NO_NVIDIA_SMI: u8 = 2;

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    if args.print_schema {
        std::io::stdout()
            .lock()
            .write_all(gpufleet::verdict::json_schema().as_bytes())?;
        return Ok(ExitCode::SUCCESS);
    }
    let by = format!("gpufleet-probe {}", env!("CARGO_PKG_VERSION"));
    let expect = Expect {
        gpus: args.gpus,
        products: args.product.clone(),
        nvlinks: args.nvlinks,
    };
    let (verdict, code) = match read_report(&args) {
        Err(why) => {
            let check = node_probe::nvidia_smi_check(Err(&why));
            (node_probe::verdict(None, vec![check], &by), NO_NVIDIA_SMI)
        }
        Ok((mut report, trouble)) => {
            report.attach_links(&read_links(&args), &expect);
            let first = match &trouble {
                None => node_probe::nvidia_smi_check(Ok(&report)),
                Some(why) => node_probe::nvidia_smi_check(Err(why)),
            };
            let mut checks = vec![first];
            checks.extend(node_probe::checks(&report, &expect));
            if let Some(level) = args.dcgm_level {
                checks.push(node_probe::dcgm(
                    level,
                    args.dcgmi.as_deref(),
                    Duration::from_secs(args.dcgm_timeout),
                ));
            }
            let v = node_probe::verdict(Some(&report), checks, &by);
            let code = if v.failed().next().is_some() {
                FAILED
            } else {
                0
            };
            (v, code)
        }
    };
    write_verdict(&args.termination_log, &verdict);
    let mut out = std::io::stdout().lock();
    for line in node_probe::summary(&verdict) {
        writeln!(out, "{line}")?;
    }
    Ok(ExitCode::from(code))
}

/// The report, and what went wrong on the way if nvidia-smi still said
/// enough (it exited non-zero but listed the GPUs); or why there is none.
fn read_report(args: &Args) -> Result<(Report, Option<String>), String> {
    if let Some(file) = &args.from_file {
        let text = read_file(file)?;
        return node_probe::parse(&text)
            .map(|r| (r, None))
            .map_err(|e| format!("{}: {e}", file.display()));
    }
    let smi = &args.nvidia_smi;
    let ran = exec::run(
        smi,
        &["-q", "-x"],
        Duration::from_secs(args.nvidia_smi_timeout),
    )
    .map_err(|e| format!("could not run {}: {e}", smi.display()))?;
    if ran.timed_out {
        return Err(format!(
            "{} -q -x ran past {}s and was stopped",
            smi.display(),
            args.nvidia_smi_timeout
        ));
    }
    let exit = match ran.status {
        Some(0) => None,
        Some(code) => Some(format!("{} -q -x exited {code}", smi.display())),
        None => Some(format!("{} -q -x was killed by a signal", smi.display())),
    };
    let with_stderr = |what: String| match ran.stderr.lines().find(|l| !l.trim().is_empty()) {
        Some(line) => format!("{what}: {}", line.trim()),
        None => what,
    };
    let text = String::from_utf8_lossy(&ran.stdout);
    match node_probe::parse(&text) {
        Ok(report) => Ok((report, exit.map(with_stderr))),
        Err(e) => Err(match exit {
            Some(what) => with_stderr(what),
            None => e.to_string(),
        }),
    }
}

/// NVLink link states: `--nvlink-from-file`, or with nvidia-smi,
/// `nvidia-smi nvlink -s`; none when that fails (the `nvlink` check then
/// says so).
fn read_links(args: &Args) -> Vec<node_probe::Links> {
    if args.from_file.is_some() {
        return match &args.nvlink_from_file {
            Some(file) => match read_file(file) {
                Ok(text) => node_probe::parse_nvlink_status(&text),
                Err(why) => {
                    eprintln!("gpufleet probe: {}", gpufleet::view::safe(&why));
                    Vec::new()
                }
            },
            None => Vec::new(),
        };
    }
    match exec::run(
        &args.nvidia_smi,
        &["nvlink", "-s"],
        Duration::from_secs(args.nvidia_smi_timeout),
    ) {
        Ok(ran) if ran.status == Some(0) => {
            node_probe::parse_nvlink_status(&String::from_utf8_lossy(&ran.stdout))
        }
        _ => Vec::new(),
    }
}

fn read_file(file: &Path) -> Result<String, String> {
    let bytes = std::fs::read(file).map_err(|e| format!("cannot read {}: {e}", file.display()))?;
    if bytes.len() > exec::MAX_OUTPUT {
        return Err(format!(
            "{} is larger than {} bytes: no nvidia-smi output",
            file.display(),
            exec::MAX_OUTPUT
        ));
    }
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

/// Writes the verdict, or when it cannot be, says so on stderr: the
/// summary and the exit code still tell.
fn write_verdict(path: &Path, v: &Verdict) {
    let text = v.encode().or_else(|| {
        // Too large even shed (some 64 GPUs): the checks alone.
        let mut bare = v.clone();
        bare.gpus.clear();
        for c in &mut bare.checks {
            c.reason = c.reason.as_deref().map(|r| verdict::clip(r, 80));
        }
        bare.encode()
    });
    let Some(text) = text else {
        eprintln!("gpufleet probe: the verdict does not fit in a termination message; not written");
        return;
    };
    if let Err(e) = std::fs::write(path, text.as_bytes()) {
        eprintln!(
            "gpufleet probe: cannot write the verdict to {}: {e}",
            gpufleet::view::safe(&path.display().to_string())
        );
    }
}
