//! `gpufleet run`: the operator, in or out of a cluster.

use std::path::PathBuf;
use std::process::ExitCode;

use std::net::SocketAddr;
use std::sync::Arc;

use gpufleet::operator;
use gpufleet::operator::leader::LeaseConfig;
use gpufleet::operator::metrics::Metrics;

use super::client;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Kubeconfig to use out of cluster; in a cluster the service account is used.
    #[arg(long, env = "KUBECONFIG", value_name = "FILE")]
    kubeconfig: Option<PathBuf>,
    /// Kubeconfig context (default: its current context).
    #[arg(long, env = "GPUFLEET_CONTEXT")]
    context: Option<String>,
    /// gpufleet's own namespace: where the leader-election Lease lives (and
    /// the probe pods, unless --probe-namespace says otherwise).
    #[arg(long, env = "POD_NAMESPACE", default_value = "gpufleet-system")]
    namespace: String,
    /// Namespace of the probe pods (default: --namespace). Give them one of
    /// their own, labelled for what a burn-in needs, so that gpufleet's
    /// namespace can enforce the `restricted` Pod Security standard; the
    /// chart does.
    #[arg(long, env = "GPUFLEET_PROBE_NAMESPACE")]
    probe_namespace: Option<String>,
    /// The ServiceAccount of the probe namespace that every probe pod runs
    /// as, whatever its template says. It must exist; grant it nothing
    /// unless a probe calls the API (and then the pool sets
    /// `healthChecks.probe.serviceAccountToken`).
    #[arg(long, env = "GPUFLEET_PROBE_SERVICE_ACCOUNT", default_value = operator::PROBE_SERVICE_ACCOUNT)]
    probe_service_account: String,
    /// Reconciles in flight at once, per kind.
    #[arg(long, env = "GPUFLEET_CONCURRENCY", default_value_t = 4)]
    concurrency: u16,
    /// Watch only nodes with these labels (`kubectl -l` syntax), to save
    /// memory when every pool selects by a common label.
    #[arg(long, env = "GPUFLEET_NODE_SELECTOR")]
    node_selector: Option<String>,
    /// Handle only pools and batches with these labels (`kubectl -l`
    /// syntax), to run several operators side by side, each on its shard.
    #[arg(long, env = "GPUFLEET_SELECTOR")]
    selector: Option<String>,
    /// Elect a leader among replicas on a Lease in --namespace; only the
    /// leader writes.
    #[arg(long, env = "GPUFLEET_LEADER_ELECT")]
    leader_elect: bool,
    /// Name of the leader-election Lease.
    #[arg(long, env = "GPUFLEET_LEASE_NAME", default_value = "gpufleet")]
    lease_name: String,
    /// Seconds a lease holds without renewal: a standby takes over after it.
    #[arg(long, env = "GPUFLEET_LEASE_SECONDS", default_value_t = 15)]
    lease_seconds: u64,
    /// This replica's identity in the election (default: POD_NAME, else the
    /// host name and process id).
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    /// Serve /metrics here (empty: nowhere).
    #[arg(long, env = "GPUFLEET_METRICS_ADDR", default_value = "0.0.0.0:8080")]
    metrics_addr: String,
    /// Serve /healthz and /readyz here (empty: nowhere).
    #[arg(long, env = "GPUFLEET_HEALTH_ADDR", default_value = "0.0.0.0:8081")]
    health_addr: String,
    /// Write requests per second to the API server (client-side limit; the
    /// API server's priority and fairness protects it too). A node costs
    /// three writes (four when its soak is over 30 s), so a 1,000-node wave
    /// takes at least 3,000 to 4,000 / this many seconds of writing.
    #[arg(long, env = "GPUFLEET_QPS", default_value_t = 200.0)]
    qps: f64,
    /// Writes allowed in a burst above --qps.
    #[arg(long, env = "GPUFLEET_BURST", default_value_t = 300.0)]
    burst: f64,
    /// Run rack tests through NVIDIA's Cluster Readiness Engine for pools
    /// that ask for it (healthChecks.domainTest.nvcre): watches its
    /// Certifications in the probe namespace. Needs NVCRE installed.
    #[arg(long, env = "GPUFLEET_NVCRE")]
    nvcre: bool,
    /// A batch is planned at most once per this many seconds per 1,000
    /// nodes of its pool (5 s at most): a plan reads the whole pool, and
    /// changes in between are planned together. 0: plan back to back.
    #[arg(
        long,
        env = "GPUFLEET_PLAN_PACE",
        default_value_t = 0.4,
        value_name = "SECONDS"
    )]
    plan_pace: f64,
    /// Events recorded per second at most (bursts of five times that).
    #[arg(long, env = "GPUFLEET_EVENTS_PER_SECOND", default_value_t = 5.0)]
    events_per_second: f64,
    #[command(flatten)]
    log: super::logging::LogArgs,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    args.log.init()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let metrics = Arc::new(Metrics::new());
        let identity = args.identity.clone().unwrap_or_else(|| {
            let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
                .unwrap_or_else(|_| "gpufleet".into());
            format!("{}-{}", host.trim(), std::process::id())
        });
        let client = operator_client(
            args.kubeconfig.as_deref(),
            args.context.as_deref(),
            Some(&identity),
            Some(metrics.clone()),
        )
        .await?;
        let probes = operator::Probes {
            namespace: args
                .probe_namespace
                .clone()
                .unwrap_or_else(|| args.namespace.clone()),
            service_account: args.probe_service_account.clone(),
        };
        if probes.namespace == args.namespace {
            tracing::warn!(
                namespace = %args.namespace,
                "probe pods run in gpufleet's own namespace (no --probe-namespace): it must admit what the probes need instead of enforcing the restricted Pod Security standard"
            );
        }
        let config = operator::Config {
            lease: args.leader_elect.then(|| {
                let mut lease = LeaseConfig::new(&args.namespace, &args.lease_name, &identity);
                lease.duration = std::time::Duration::from_secs(args.lease_seconds.max(3));
                lease.retry = lease.duration / 5;
                lease
            }),
            namespace: args.namespace,
            probes,
            concurrency: args.concurrency.max(1),
            node_selector: args.node_selector,
            events_per_second: args.events_per_second,
            selector: args.selector,
            metrics_addr: address("--metrics-addr", &args.metrics_addr)?,
            health_addr: address("--health-addr", &args.health_addr)?,
            qps: args.qps.max(0.1),
            burst: args.burst.max(1.0),
            nvcre: args.nvcre,
            metrics,
            plan_pace_per_node: std::time::Duration::try_from_secs_f64(
                args.plan_pace.clamp(0.0, 60.0) / 1000.0,
            )
            .unwrap_or_default(),
        };
        operator::run(client, config, shutdown_signal()).await
    })?;
    Ok(ExitCode::SUCCESS)
}

fn address(flag: &str, value: &str) -> anyhow::Result<Option<SocketAddr>> {
    if value.is_empty() {
        return Ok(None);
    }
    value
        .parse()
        .map(Some)
        .map_err(|e| anyhow::anyhow!("{flag} {value:?}: {e}"))
}

/// The operator's client: every request counted in `metrics`, the replica's
/// identity in the user agent (it tells replicas apart in the API server's
/// audit log), and no request waiting forever on an API server that went
/// away.
pub async fn operator_client(
    kubeconfig: Option<&std::path::Path>,
    context: Option<&str>,
    identity: Option<&str>,
    metrics: Option<Arc<Metrics>>,
) -> anyhow::Result<kube::Client> {
    let agent = match identity {
        Some(identity) => format!("{} ({identity})", client::OPERATOR_AGENT),
        None => client::OPERATOR_AGENT.to_string(),
    };
    let mut builder = client::builder(agent)
        .kubeconfig(kubeconfig)
        .context(context)
        .read_timeout(READ_TIMEOUT);
    if let Some(metrics) = metrics {
        builder = builder.count_requests(metrics);
    }
    builder.build().await
}

/// How long a response may send nothing before the request is given up and
/// retried. Watches end every 55 s on the server's side (see operator::run),
/// so a live one never comes near it.
const READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(75);

/// Resolves on SIGTERM or Ctrl-C.
async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
