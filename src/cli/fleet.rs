//! `gpufleet fleet status` and `gpufleet fleet run`: many clusters at once.
//!
//! Members come from ClusterProfiles on a hub (`--kubeconfig`/`--context`
//! name the hub, `--access-providers` how to reach the members) and from
//! kubeconfig contexts (`--member-context`, for people without a hub).

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use futures::future::join_all;
use gpufleet::api::ClusterProfile;
use gpufleet::fleet::access::{self, Access, Providers};
use gpufleet::fleet::controller;
use gpufleet::fleet::observe::{self, Down};
use gpufleet::fleet::summary::{self, ClusterLine, State};
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::api::{Api, ListParams};
use kube::config::{KubeConfigOptions, Kubeconfig};

use super::client;

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Subcommand, Debug)]
enum Command {
    /// Every member cluster at a glance: pools, GPUs online, domains
    /// complete, batches in flight, breakers tripped, H100-equivalents.
    Status(StatusArgs),
    /// The hub controller of FleetRollouts: approves member batches stage
    /// by stage (runs until stopped).
    Run(RunArgs),
}

/// The hub: the cluster whose ClusterProfiles list the members, and where
/// FleetRollouts live.
#[derive(clap::Args, Debug, Clone)]
struct Hub {
    /// The hub's kubeconfig (default: $KUBECONFIG, then ~/.kube/config,
    /// then the in-cluster service account). `fleet status` with only
    /// --member-context reads no hub.
    #[arg(long, value_name = "FILE")]
    kubeconfig: Option<PathBuf>,
    /// The hub's kubeconfig context.
    #[arg(long)]
    context: Option<String>,
    /// Only ClusterProfiles and FleetRollouts of this namespace (default:
    /// every namespace).
    #[arg(long, short = 'n')]
    namespace: Option<String>,
}

/// Where the members are listed.
#[derive(clap::Args, Debug, Clone)]
struct Inventory {
    #[command(flatten)]
    hub: Hub,
    /// The access provider file (KEP-5339): which exec plugin gives
    /// credentials for each provider a ClusterProfile lists.
    #[arg(long, value_name = "FILE", env = "GPUFLEET_ACCESS_PROVIDERS")]
    access_providers: Option<PathBuf>,
    /// A member by kubeconfig context instead of a hub (repeat it).
    #[arg(long = "member-context", value_name = "CONTEXT")]
    member_contexts: Vec<String>,
    /// The kubeconfig of --member-context (default: $KUBECONFIG, then
    /// ~/.kube/config).
    #[arg(long, value_name = "FILE")]
    member_kubeconfig: Option<PathBuf>,
    /// Seconds a member has to answer before it shows as unreachable.
    #[arg(long, default_value_t = 1.5, value_name = "SECONDS")]
    deadline: f64,
}

#[derive(clap::Args, Debug)]
struct StatusArgs {
    #[command(flatten)]
    inventory: Inventory,
    /// H100-equivalents per GPU of a product, `PRODUCT=FACTOR` (the
    /// `nvidia.com/gpu.product` value): `NVIDIA-GB200=2.5` (repeat it).
    #[arg(long = "h100-factor", value_name = "PRODUCT=FACTOR", value_parser = parse_factor)]
    h100_factors: Vec<(String, f64)>,
    /// Output: a table for people, or JSON.
    #[arg(long, short = 'o', value_enum, default_value_t = Output::Table)]
    output: Output,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum Output {
    Table,
    Json,
}

#[derive(clap::Args, Debug)]
struct RunArgs {
    #[command(flatten)]
    hub: Hub,
    /// The access provider file (KEP-5339).
    #[arg(long, value_name = "FILE", env = "GPUFLEET_ACCESS_PROVIDERS")]
    access_providers: PathBuf,
    /// Seconds between looks at every FleetRollout.
    #[arg(long, default_value_t = 10.0, value_name = "SECONDS")]
    interval: f64,
    /// Seconds a member has to answer a look.
    #[arg(long, default_value_t = 5.0, value_name = "SECONDS")]
    deadline: f64,
    #[command(flatten)]
    log: super::logging::LogArgs,
}

fn parse_factor(text: &str) -> Result<(String, f64), String> {
    let (product, factor) = text
        .split_once('=')
        .ok_or_else(|| format!("{text:?} is not PRODUCT=FACTOR (NVIDIA-GB200=2.5)"))?;
    let factor: f64 = factor
        .parse()
        .map_err(|_| format!("{factor:?} is not a number (NVIDIA-GB200=2.5)"))?;
    if !(factor.is_finite() && factor > 0.0 && factor <= 1000.0) {
        return Err(format!("{factor} is not a factor between 0 and 1000"));
    }
    Ok((product.to_string(), factor))
}

fn seconds(value: f64, flag: &str) -> anyhow::Result<Duration> {
    if !(value.is_finite() && (0.05..=3600.0).contains(&value)) {
        bail!("{flag} {value}: give seconds between 0.05 and 3600");
    }
    Ok(Duration::from_secs_f64(value))
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    match args.command {
        Command::Status(a) => status(a),
        Command::Run(a) => run_hub(a),
    }
}

fn run_hub(args: RunArgs) -> anyhow::Result<ExitCode> {
    // A member that does not answer is said on the FleetRollout (and in
    // the log when a look fails); kube's client would add an error line per
    // request on top.
    args.log.init_quieting(&["kube_client::client::builder"])?;
    let interval = seconds(args.interval, "--interval")?;
    let deadline = seconds(args.deadline, "--deadline")?;
    let providers = Providers::read(&args.access_providers)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let hub = client::builder(client::OPERATOR_AGENT)
            .kubeconfig(args.hub.kubeconfig.as_deref())
            .context(args.hub.context.as_deref())
            .build()
            .await?;
        tracing::info!(
            namespace = args.hub.namespace.as_deref().unwrap_or("(all)"),
            providers = providers.providers.len(),
            "fleet: the hub controller is running"
        );
        let config = controller::Config {
            namespace: args.hub.namespace,
            providers,
            interval,
            deadline,
            user_agent: format!("{}-fleet", client::OPERATOR_AGENT),
        };
        tokio::select! {
            result = controller::run(hub, config) => result?,
            _ = tokio::signal::ctrl_c() => {}
        }
        Ok(ExitCode::SUCCESS)
    })
}

/// A member to look at.
struct Target {
    name: String,
    source: String,
    access: Access,
}

fn status(args: StatusArgs) -> anyhow::Result<ExitCode> {
    let deadline = seconds(args.inventory.deadline, "--deadline")?;
    let factors: BTreeMap<String, f64> = args.h100_factors.iter().cloned().collect();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let started = Instant::now();
    let lines = runtime.block_on(async {
        let targets = targets(&args.inventory, deadline).await?;
        if targets.is_empty() {
            bail!(
                "no member clusters: the hub has no ClusterProfile{} and no \
                 --member-context was given",
                args.inventory
                    .hub
                    .namespace
                    .as_deref()
                    .map(|n| format!(" in namespace {n}"))
                    .unwrap_or_default()
            );
        }
        let looks = targets.into_iter().map(|t| {
            let factors = &factors;
            async move {
                let begun = Instant::now();
                let client = access::client(&t.access, client::PLUGIN_AGENT, deadline);
                let result = observe::look(deadline, client).await;
                let took = begun.elapsed().as_secs_f64();
                let state = match result {
                    Ok((_, report)) => State::Up(summary::summarize(&report, factors, took)),
                    Err(down) => {
                        let (no_credentials, error) = match down {
                            Down::NoCredentials(e) => (true, e),
                            Down::Unreachable(e) => (false, e),
                        };
                        State::Down {
                            no_credentials,
                            error,
                            last_seen: None,
                            seconds: took,
                        }
                    }
                };
                ClusterLine {
                    name: t.name,
                    source: t.source,
                    state,
                }
            }
        });
        Ok(join_all(looks).await)
    })?;
    // A credential plugin that hangs holds a blocking thread no timeout
    // can stop; dropping the runtime would wait for it. Leave it behind.
    runtime.shutdown_background();
    let mut lines = lines;
    remember(&mut lines);
    let took = started.elapsed().as_secs_f64();
    let mut out = std::io::stdout().lock();
    match args.output {
        Output::Json => {
            let json = serde_json::json!({
                "clusters": lines,
                "seconds": took,
            });
            writeln!(out, "{}", serde_json::to_string_pretty(&json)?)?;
        }
        Output::Table => {
            for line in summary::render(&lines, Timestamp::now(), took) {
                writeln!(out, "{}", gpufleet::view::safe(&line))?;
            }
        }
    }
    let down = lines.iter().any(|l| matches!(l.state, State::Down { .. }));
    // 3: some member did not answer (the others are shown).
    Ok(if down {
        ExitCode::from(3)
    } else {
        ExitCode::SUCCESS
    })
}

/// The members: the hub's ClusterProfiles, then the contexts given.
async fn targets(inv: &Inventory, deadline: Duration) -> anyhow::Result<Vec<Target>> {
    let mut out = vec![];
    let use_hub =
        inv.hub.kubeconfig.is_some() || inv.hub.context.is_some() || inv.member_contexts.is_empty();
    if use_hub {
        let providers = match &inv.access_providers {
            Some(path) => Providers::read(path)?,
            None => Providers::default(),
        };
        let hub = client::builder(client::PLUGIN_AGENT)
            .kubeconfig(inv.hub.kubeconfig.as_deref())
            .context(inv.hub.context.as_deref())
            .read_timeout(deadline.max(Duration::from_secs(5)))
            .build()
            .await
            .context("reaching the hub (--kubeconfig, --context)")?;
        let api: Api<ClusterProfile> = match &inv.hub.namespace {
            Some(ns) => Api::namespaced(hub, ns),
            None => Api::all(hub),
        };
        let profiles = api.list(&ListParams::default()).await.map_err(|e| {
            anyhow::anyhow!(
                "listing ClusterProfiles on the hub: {} (is the hub's \
                 multicluster.x-k8s.io API installed?)",
                observe::describe(&e)
            )
        })?;
        for p in profiles.items {
            out.push(Target {
                name: p.name_any(),
                source: format!(
                    "clusterprofile {}/{}",
                    p.namespace().unwrap_or_default(),
                    p.name_any()
                ),
                access: access::profile_access(&p, &providers),
            });
        }
    }
    if !inv.member_contexts.is_empty() {
        let kubeconfig = match &inv.member_kubeconfig {
            Some(path) => read_kubeconfig(path)?,
            None => Kubeconfig::read().context("reading $KUBECONFIG or ~/.kube/config")?,
        };
        for context in &inv.member_contexts {
            if !kubeconfig.contexts.iter().any(|c| &c.name == context) {
                bail!("--member-context {context}: the kubeconfig has no such context");
            }
            out.push(Target {
                name: context.clone(),
                source: format!("context {context}"),
                access: Access::Kubeconfig(
                    Box::new(kubeconfig.clone()),
                    KubeConfigOptions {
                        context: Some(context.clone()),
                        ..Default::default()
                    },
                ),
            });
        }
    }
    Ok(out)
}

fn read_kubeconfig(path: &Path) -> anyhow::Result<Kubeconfig> {
    Kubeconfig::read_from(path).with_context(|| format!("reading kubeconfig {}", path.display()))
}

/// Fills in when each unreachable member was last reached from this
/// machine, and records the members reached now, in gpufleet's cache
/// (`fleet-last-seen.json`). A cache that cannot be read or written only
/// loses the "last seen" figure.
fn remember(lines: &mut [ClusterLine]) {
    let path = super::cache_root().join("fleet-last-seen.json");
    let mut seen: BTreeMap<String, Timestamp> = std::fs::read(&path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default();
    let now = Timestamp::now();
    for line in lines.iter_mut() {
        match &mut line.state {
            State::Up(_) => {
                seen.insert(line.source.clone(), now);
            }
            State::Down { last_seen, .. } => *last_seen = seen.get(&line.source).copied(),
        }
    }
    if let Some(dir) = path.parent()
        && std::fs::create_dir_all(dir).is_ok()
        && let Ok(json) = serde_json::to_vec(&seen)
    {
        let tmp = path.with_extension("json.tmp");
        if std::fs::write(&tmp, json).is_ok() {
            let _ = std::fs::rename(&tmp, &path);
        }
    }
}
