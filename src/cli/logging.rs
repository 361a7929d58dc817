//! Log flags shared by the long-running subcommands.

use tracing_subscriber::EnvFilter;

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// Human-readable lines.
    Text,
    /// One JSON object per line, for log pipelines.
    Json,
}

#[derive(clap::Args, Debug)]
pub struct LogArgs {
    /// Log format.
    #[arg(long, env = "GPUFLEET_LOG_FORMAT", value_enum, default_value_t = Format::Text)]
    log_format: Format,
    /// Log filter: a level (`info`, `debug`) or tracing directives
    /// (`gpufleet=debug,kube=info`).
    #[arg(long, env = "GPUFLEET_LOG_LEVEL", default_value = "info")]
    log_level: String,
}

impl LogArgs {
    pub fn init(&self) -> anyhow::Result<()> {
        self.init_quieting(&[])
    }

    /// Like `init`, with these targets off unless the filter names them:
    /// libraries that log an error per failed request where the caller
    /// reports the failure itself.
    pub fn init_quieting(&self, quiet: &[&str]) -> anyhow::Result<()> {
        let mut directives = self.log_level.clone();
        for target in quiet {
            if !directives.contains(target) {
                directives.push_str(&format!(",{target}=off"));
            }
        }
        let filter = EnvFilter::try_new(&directives)
            .map_err(|e| anyhow::anyhow!("--log-level {:?}: {e}", self.log_level))?;
        let builder = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr);
        match self.log_format {
            Format::Text => builder.init(),
            Format::Json => builder.json().flatten_event(true).init(),
        }
        Ok(())
    }
}
