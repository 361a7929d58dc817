//! `gpufleet status [BATCH] [--watch]`: where rollouts stand on a real
//! cluster. Without a batch, every pool with its capacity online and every
//! batch with its wave and condition; with one, a bar per wave, the gate it
//! waits on, and the summary of its nodes. `--watch` redraws in place on a
//! terminal and prints a line per change otherwise (CI logs); the demo uses
//! the same view.

use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use gpufleet::api::{GpuPool, RolloutBatch};
use gpufleet::view::{self, Style};
use k8s_openapi::jiff::Timestamp;
use kube::api::Api;

use super::plugin::{ClusterArgs, batch_nodes, cmd, get_batch};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// A RolloutBatch to show wave by wave; without it, every pool and batch.
    batch: Option<String>,
    /// Keep watching until Ctrl-C: redrawn in place on a terminal, a line
    /// per change otherwise.
    #[arg(long, short = 'w')]
    watch: bool,
    /// Seconds between looks with --watch.
    #[arg(long, default_value_t = 2.0, value_name = "SECONDS")]
    interval: f64,
    #[command(flatten)]
    cluster: ClusterArgs,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let client = args.cluster.client().await?;
        let every = Duration::from_secs_f64(args.interval.max(0.2));
        let mut screen = Screen::stdout();
        match (&args.batch, args.watch) {
            (None, false) => print_lines(&overview(&client).await?),
            (None, true) => {
                let watch = async {
                    loop {
                        let lines = overview(&client).await?;
                        if screen.tty {
                            screen.draw(&lines);
                        } else {
                            let text = lines.join("\n");
                            screen.log(
                                &text,
                                &format!("-- {}\n{text}", Timestamp::now()),
                                &text,
                                true,
                            );
                        }
                        tokio::time::sleep(every).await;
                    }
                };
                tokio::select! {
                    result = watch => return result,
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            (Some(name), false) => {
                let batch = get_batch(&client, name).await?;
                let pool = get_pool(&client, &batch.spec.pool_ref).await?;
                let elapsed = view::rollout_time(&batch, Timestamp::now());
                print_lines(&view::frame(&batch, pool.as_ref(), elapsed, screen.style));
                if let Some(hint) = view::waiting(&batch).hint(cmd(), name) {
                    print_lines(&view::wrap(&format!("  {hint}"), view::WIDTH, 2));
                }
                let nodes = batch_nodes(&client, &batch, pool.as_ref()).await?;
                if !nodes.is_empty() {
                    println!();
                    print_lines(&view::summary(&batch, &nodes, elapsed));
                    let racks = view::rack_tests(&batch);
                    if !racks.is_empty() {
                        println!();
                        print_lines(&racks);
                    }
                    if let Some(pool) = &pool {
                        let gates = view::domain_gates(pool, &nodes, 20);
                        if !gates.is_empty() {
                            println!();
                            print_lines(&gates);
                        }
                    }
                }
            }
            (Some(name), true) => {
                get_batch(&client, name).await?;
                let follow = Follow {
                    every,
                    until_final: false,
                    stale_after: None,
                    started: None,
                };
                tokio::select! {
                    result = follow.run(&client, name, &mut screen) => { result?; }
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
        }
        Ok(ExitCode::SUCCESS)
    })
}

fn print_lines(lines: &[String]) {
    let mut out = std::io::stdout().lock();
    for line in lines {
        let _ = writeln!(out, "{}", gpufleet::view::safe(line));
    }
}

async fn get_pool(client: &kube::Client, name: &str) -> anyhow::Result<Option<GpuPool>> {
    Ok(Api::<GpuPool>::all(client.clone()).get_opt(name).await?)
}

async fn overview(client: &kube::Client) -> anyhow::Result<Vec<String>> {
    let (mut pools, broken_pools) = super::client::list_lenient::<GpuPool>(client).await?;
    let (mut batches, broken_batches) = super::client::list_lenient::<RolloutBatch>(client).await?;
    pools.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    batches.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    let mut lines = view::overview(&pools, &batches);
    lines.extend(view::broken_rows("gpupool", &broken_pools));
    lines.extend(view::broken_rows("rolloutbatch", &broken_batches));
    Ok(lines)
}

/// Where the views go: redrawn in place on a terminal, or appended as lines.
pub struct Screen {
    pub tty: bool,
    pub style: Style,
    /// Lines the last [`Screen::draw`] printed.
    drawn: usize,
    last_major: String,
    last_minor: String,
    last_print: Option<Instant>,
}

/// A line that only counts changed is printed at most this often.
const PLAIN_EVERY: Duration = Duration::from_secs(2);

impl Screen {
    pub fn stdout() -> Self {
        let tty = std::io::stdout().is_terminal();
        let color = tty && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
        Screen {
            tty,
            style: Style { color },
            drawn: 0,
            last_major: String::new(),
            last_minor: String::new(),
            last_print: None,
        }
    }

    /// Replaces what the last call drew.
    pub fn draw(&mut self, lines: &[String]) {
        let mut out = std::io::stdout().lock();
        if self.drawn > 0 {
            // Up to the first line drawn, then clear to the end of the screen.
            let _ = write!(out, "\x1b[{}A\r\x1b[J", self.drawn);
        }
        for line in lines {
            let _ = writeln!(out, "{}", gpufleet::view::safe(line));
        }
        let _ = out.flush();
        self.drawn = lines.len();
    }

    /// Keeps what was drawn: the next draw starts below it (the demo's).
    #[cfg(feature = "dev")]
    pub fn keep(&mut self) {
        self.drawn = 0;
    }

    /// Prints `line` when `major` changed, or when `minor` changed and a
    /// while passed since the last line; `force` prints any change.
    pub fn log(&mut self, major: &str, line: &str, minor: &str, force: bool) {
        let major_changed = major != self.last_major;
        let minor_changed = minor != self.last_minor;
        let due = self.last_print.is_none_or(|t| t.elapsed() >= PLAIN_EVERY);
        if major_changed || minor_changed && (due || force) {
            println!("{}", gpufleet::view::safe(line));
            self.last_major = major.to_string();
            self.last_minor = minor.to_string();
            self.last_print = Some(Instant::now());
        }
    }

    /// Shows a batch: its frame on a terminal, a progress line otherwise.
    pub fn batch(
        &mut self,
        batch: &RolloutBatch,
        pool: Option<&GpuPool>,
        elapsed: Option<Duration>,
        last: bool,
    ) {
        if self.tty {
            self.draw(&view::frame(batch, pool, elapsed, self.style));
        } else {
            let gate = view::waiting(batch);
            let status = batch.status.clone().unwrap_or_default();
            let major = format!("{} {}", status.current_wave, gate.short());
            self.log(
                &major,
                &view::plain_line(batch, elapsed),
                &view::plain_line(batch, None),
                last,
            );
        }
    }
}

/// Polls a batch and shows it.
pub struct Follow {
    pub every: Duration,
    /// Return once the rollout is complete or halted.
    pub until_final: bool,
    /// Give up when the status has not changed for this long.
    pub stale_after: Option<Duration>,
    /// The clock shown; `None`: the rollout's own time, from its status.
    pub started: Option<Instant>,
}

impl Follow {
    /// Shows the batch until the rollout is over (with `until_final`) or
    /// forever; returns the batch as last seen.
    pub async fn run(
        &self,
        client: &kube::Client,
        name: &str,
        screen: &mut Screen,
    ) -> anyhow::Result<RolloutBatch> {
        let batches: Api<RolloutBatch> = Api::all(client.clone());
        let pools: Api<GpuPool> = Api::all(client.clone());
        let mut last_change = Instant::now();
        let mut last_status = None;
        let mut failing_since: Option<Instant> = None;
        loop {
            let batch = match batches.get_opt(name).await {
                Ok(Some(batch)) => batch,
                Ok(None) => anyhow::bail!("RolloutBatch {name} was deleted"),
                Err(err) => {
                    // The API server may be busy a moment: tolerate it for a while.
                    let since = *failing_since.get_or_insert_with(Instant::now);
                    if since.elapsed() > Duration::from_secs(30) {
                        return Err(err.into());
                    }
                    tokio::time::sleep(self.every).await;
                    continue;
                }
            };
            failing_since = None;
            let pool = pools.get_opt(&batch.spec.pool_ref).await.ok().flatten();
            let elapsed = match self.started {
                Some(start) => Some(start.elapsed()),
                None => view::rollout_time(&batch, Timestamp::now()),
            };
            let done = self.until_final && view::waiting(&batch).is_final();
            screen.batch(&batch, pool.as_ref(), elapsed, done);
            if batch.status != last_status {
                last_status = batch.status.clone();
                last_change = Instant::now();
            }
            if done {
                return Ok(batch);
            }
            if let Some(stale) = self.stale_after
                && last_change.elapsed() > stale
            {
                anyhow::bail!("batch {name} made no progress for {}s", stale.as_secs());
            }
            tokio::time::sleep(self.every).await;
        }
    }
}
