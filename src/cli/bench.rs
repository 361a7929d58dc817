//! `gpufleet bench`: the operator measured on a real control plane.
//!
//! It starts its own test bed (`tests/testbed/controlplane.py up --kwok`),
//! creates N kwok nodes in GB200/GB300 NVL72 domains of 18, applies the CRDs,
//! a pool (probe on, soak of a few seconds) and a three-wave batch, runs
//! `gpufleet run` as a separate process and measures until the batch is
//! Ready: wall time, the operator's peak RSS and CPU seconds (from /proc),
//! its API requests by verb and resource (from the API server's audit log,
//! entries whose user agent starts with `gpufleet/`), node writes per
//! admitted node, and the time of one plan at that size.
//!
//! With `--peer` it then runs the minimal job (remove an onboarding taint
//! once a node is Ready: one wave of 100%, no probe, no soak) twice on a
//! fresh fleet of the same size: once by gpufleet, once by the peer,
//! kube-controller-manager's node lifecycle controller (which removes
//! `node.kubernetes.io/not-ready:NoSchedule` once a node's Ready condition
//! is True), and compares them.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, Read, Seek, Write};
use std::path::PathBuf;
use std::process::{Child, ExitCode, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures::{StreamExt, TryStreamExt};
use gpufleet::api::{GpuPool, RolloutBatch};
use gpufleet::crds;
use gpufleet::planner::{self, NodeState, NodeView, Snapshot};
use gpufleet::simulate::{self, SimNode};
use gpufleet::view;
use gpufleet::vocabulary::Gate;
use k8s_openapi::api::core::v1::{Node, Taint};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};

use serde::Serialize;
use serde_json::json;

use super::controlplane::ControlPlane;

/// Label on every object the benchmark makes.
const BENCH_LABEL: &str = "gpufleet.io/bench";
const FIELD_MANAGER: &str = "gpufleet-bench";
const NODES_PER_DOMAIN: u32 = 18;
const NAMESPACE: &str = "gpufleet-bench";
/// The taint the peer removes.
const NOT_READY_TAINT: &str = "node.kubernetes.io/not-ready";
const ONBOARDING_TAINT: &str = "gpufleet.io/onboarding";

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Nodes to roll out (rounded up to whole domains of 18, unless
    /// --exact).
    #[arg(long, default_value_t = 1000, value_name = "N")]
    nodes: u32,
    /// Exactly --nodes nodes: the last domain is partial (137,500 trays are
    /// 7,638 domains of 18 and one of 16).
    #[arg(long)]
    exact: bool,
    /// Inject faults: one tray in 2,000 fails its burn-in, and one domain
    /// loses three trays, so that it has 15 healthy of the 16 it needs and
    /// is held. The report counts failed and held nodes.
    #[arg(long)]
    faults: bool,
    /// How long each burn-in probe runs (kwok completes it after this).
    #[arg(long, default_value_t = 2.0, value_name = "SECONDS")]
    probe_seconds: f64,
    /// How long a node must stay healthy after its probe passed.
    #[arg(long, default_value_t = 3, value_name = "SECONDS")]
    soak_seconds: u32,
    /// Nodes validating at once (the batch's maxConcurrent). With every node
    /// of a 10,000-node wave validating at once, this 2-core test bed (API
    /// server, etcd, kwok and the burn-in stand-in) cannot run the probes
    /// within their timeout, and the rollout halts on probe timeouts that
    /// say nothing about the operator.
    #[arg(long, default_value_t = 1000, value_name = "N")]
    max_concurrent: u32,
    /// Node creations in flight at once.
    #[arg(long, default_value_t = 48, value_name = "N")]
    parallel: usize,
    /// Client-side write limit given to the operator (and, with --peer, to
    /// the peer): the test bed's API server is local.
    #[arg(long, default_value_t = 500.0)]
    qps: f64,
    /// Burst above --qps (operator and peer alike).
    #[arg(long, default_value_t = 1000.0)]
    burst: f64,
    /// Give up when a rollout is not Ready after this long.
    #[arg(long, default_value_t = 900, value_name = "SECONDS")]
    timeout: u64,
    /// Skip the full rollout (probes, soak, three waves); with --peer, run
    /// only the side-by-side comparison.
    #[arg(long)]
    no_rollout: bool,
    /// Also run the minimal job (remove an onboarding taint) by gpufleet and
    /// by the peer (kube-controller-manager's node lifecycle controller) on
    /// a fresh fleet of the same size, and compare.
    #[arg(long)]
    peer: bool,
    /// Leave the control plane running and print how to reach it.
    #[arg(long)]
    keep: bool,
    /// Print one JSON object instead of tables.
    #[arg(long)]
    json: bool,
    /// Run without kwok: nodes are created Ready (nothing heartbeats, no
    /// node lifecycle controller runs) and a light stand-in finishes each
    /// probe pod by writing its status, as a kubelet would. For sizes kwok
    /// cannot simulate on this machine; not with --peer.
    #[arg(long, conflicts_with = "peer")]
    no_kwok: bool,
    /// With --no-kwok, leave kube-apiserver as the test bed starts it (to
    /// measure what the scale tuning does).
    #[arg(long, requires = "no_kwok")]
    untuned: bool,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    if args.nodes == 0 {
        bail!("--nodes must be at least 1");
    }
    if !(0.0..=3600.0).contains(&args.probe_seconds) {
        bail!("--probe-seconds must be between 0 and 3600");
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let report = runtime.block_on(bench(&args))?;
    runtime.shutdown_timeout(Duration::from_secs(1));
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.table());
    }
    let complete = report.rollout.as_ref().is_none_or(|r| r.complete)
        && report
            .peer
            .as_ref()
            .is_none_or(|p| p.gpufleet.complete && p.peer.complete);
    Ok(if complete {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Everything one `gpufleet bench` measured.
#[derive(Serialize, Debug)]
pub struct Report {
    pub machine: Machine,
    pub nodes: u32,
    pub domains: u32,
    pub control_plane_seconds: f64,
    pub rollout: Option<Rollout>,
    pub peer: Option<PeerComparison>,
    /// Peak RSS of the test bed's processes at the end (KiB).
    pub control_plane_peak_rss_kib: BTreeMap<String, u64>,
    /// What the scale test bed changed of kube-apiserver (`--no-kwok`).
    pub api_server_tuning: Option<serde_json::Value>,
}

#[derive(Serialize, Debug)]
pub struct Machine {
    pub nproc: usize,
    pub cpu: String,
    pub memory_kib: u64,
}

/// The full rollout: probes, soak, three waves.
#[derive(Serialize, Debug)]
pub struct Rollout {
    pub complete: bool,
    pub outcome: String,
    pub node_create_seconds: f64,
    pub waves: usize,
    /// Nodes validating at once (the batch's maxConcurrent).
    pub max_concurrent: u32,
    /// Probe pods when the rollout ended, by outcome annotation and phase.
    pub probes_at_end: std::collections::BTreeMap<String, u64>,
    pub probe_seconds: f64,
    pub soak_seconds: u32,
    /// From the batch's creation to its Ready condition.
    pub wall_seconds: f64,
    /// wall minus what probes and soak take by themselves (per wave, its
    /// rounds of probes at maxConcurrent, then one soak): the operator's
    /// own share.
    pub overhead_seconds: f64,
    pub overhead_per_wave_seconds: f64,
    pub admitted: u64,
    pub failed: u64,
    /// Healthy nodes of domains with too few healthy nodes to admit.
    pub held: u64,
    /// Trays whose probe was made to fail (--faults).
    pub faults_injected: u64,
    pub process: ProcessStats,
    pub requests: Requests,
    pub node_writes_per_admitted: f64,
    pub probe_creates: u64,
    pub probe_deletes: u64,
    /// gpufleet_reconcile_duration_seconds, from the operator's /metrics.
    pub reconciles: Option<Reconciles>,
    /// One `planner::plan` in this process over the batch's snapshot as the
    /// rollout starts (every node pending) and as it ends (every node ready).
    pub plan_ms_start: f64,
    pub plan_ms_end: f64,
}

#[derive(Serialize, Debug, Default, Clone)]
pub struct ProcessStats {
    pub peak_rss_kib: u64,
    pub cpu_seconds: f64,
    pub rss_bytes_per_node: f64,
}

#[derive(Serialize, Debug, Default, Clone)]
pub struct Requests {
    pub total: u64,
    /// "verb resource[/subresource]" → count.
    pub by_verb_resource: BTreeMap<String, u64>,
    pub node_writes: u64,
}

#[derive(Serialize, Debug)]
pub struct Reconciles {
    pub count: f64,
    pub mean_ms: f64,
    /// Node records plans read (`gpufleet_plan_node_visits_total`), in all
    /// and by the pool controller's plans.
    pub node_visits: f64,
    pub pool_node_visits: f64,
    /// Batch reconciles put off by the plan pace
    /// (`gpufleet_plans_paced_total`).
    pub plans_paced: f64,
    /// Changed nodes the watch delivered, planned and ignored
    /// (`gpufleet_node_events_total`).
    pub node_events_planned: f64,
    pub node_events_ignored: f64,
}

/// The minimal job, gpufleet and the peer on fleets of the same size.
#[derive(Serialize, Debug)]
pub struct PeerComparison {
    pub peer_name: String,
    pub gpufleet: Minimal,
    pub peer: Minimal,
}

#[derive(Serialize, Debug, Clone)]
pub struct Minimal {
    pub complete: bool,
    /// From the start (gpufleet: the batch's creation; peer: its process
    /// start) until no node carries the taint.
    pub wall_seconds: f64,
    pub process: ProcessStats,
    pub requests: Requests,
}

async fn bench(args: &Args) -> anyhow::Result<Report> {
    let domains = args.nodes.div_ceil(NODES_PER_DOMAIN);
    let nodes = if args.exact {
        args.nodes
    } else {
        domains * NODES_PER_DOMAIN
    };
    let started = Instant::now();
    // kube-controller-manager is the peer.
    let tools: &[&str] = if args.peer {
        &["kube-controller-manager"]
    } else {
        &[]
    };
    // The scale test bed: no kwok, and kube-apiserver tuned for the size.
    let plane = ControlPlane::start_with(
        tools,
        args.keep,
        !args.no_kwok,
        args.no_kwok && !args.untuned,
    )
    .await?;
    if let Some(tuning) = &plane.tuning {
        eprintln!("bench: kube-apiserver tuned for scale: {tuning}");
    }
    let control_plane_seconds = started.elapsed().as_secs_f64();
    eprintln!(
        "bench: control plane up in {control_plane_seconds:.1}s ({})",
        plane.dir.display()
    );
    let client = client(&plane).await?;
    crds::install(&client, FIELD_MANAGER).await?;
    simulate::probe_namespace(&client, NAMESPACE, &Default::default()).await?;

    let mut report = Report {
        machine: machine(),
        nodes,
        domains,
        control_plane_seconds,
        rollout: None,
        peer: None,
        control_plane_peak_rss_kib: BTreeMap::new(),
        api_server_tuning: plane.tuning.clone(),
    };
    if !args.no_rollout {
        report.rollout = Some(full_rollout(args, &plane, &client, nodes).await?);
    }
    if args.peer {
        report.peer = Some(peer_comparison(args, &plane, &client, nodes).await?);
    }
    for (name, pid) in &plane.pids {
        if let Some(stats) = process_stats(*pid) {
            report
                .control_plane_peak_rss_kib
                .insert(name.clone(), stats.peak_rss_kib);
        }
    }
    if args.keep {
        eprintln!("bench: the control plane keeps running (--keep):");
        eprintln!("  export KUBECONFIG={}", plane.kubeconfig.display());
        eprintln!("  {}", plane.stop_hint());
    }
    drop(plane);
    Ok(report)
}

/// The domain that loses three trays with --faults (when the fleet has it).
const HELD_DOMAIN: u32 = 7;

/// Is tray `n` (1-based) of domain `d`, the `i`th of the fleet, faulty?
/// One in 2,000 (never two in one domain), and trays 1 to 3 of
/// [`HELD_DOMAIN`].
fn faulty(i: u32, d: u32, n: u32) -> bool {
    i % 2000 == 1000 || (d == HELD_DOMAIN && n <= 3)
}

/// The fleet of `count` trays: domains of 18 (the last one partial when
/// `count` is not a multiple), alternating GB200 and GB300; with `faults`,
/// the [`faulty`] trays' probes fail.
fn fleet(prefix: &str, count: u32, faults: bool) -> Vec<SimNode> {
    (0..count)
        .map(|i| {
            let (d, n) = (i / NODES_PER_DOMAIN, i % NODES_PER_DOMAIN + 1);
            let clique = format!("{prefix}-{d:06}.32766");
            let name = format!("{prefix}-r{d:06}-n{n:02}");
            let mut node = if d % 2 == 0 {
                SimNode::gb200(name, clique)
            } else {
                SimNode::gb300(name, clique)
            };
            if faults && faulty(i, d, n) {
                node.probe_failure = Some("bench fault: burn-in failed".into());
            }
            // Exit codes only, as the benchmarks measured before verdicts.
            node.verdict = false;
            node.label(BENCH_LABEL, prefix)
                .label("gpufleet.io/pool", prefix)
                .label("gpufleet.io/batch", prefix)
        })
        .collect()
}

async fn create(
    client: &kube::Client,
    nodes: Vec<Node>,
    parallel: usize,
    with_status: bool,
) -> anyhow::Result<f64> {
    let t = Instant::now();
    let api: Api<Node> = Api::all(client.clone());
    futures::stream::iter(nodes)
        .map(|node| {
            let api = api.clone();
            async move {
                let status = node.status.clone();
                let made = api.create(&PostParams::default(), &node).await?;
                // The API server keeps a new node's status only through
                // its status subresource: written once, as a kubelet would.
                let ready = made
                    .status
                    .as_ref()
                    .and_then(|s| s.conditions.as_ref())
                    .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready"));
                if with_status && !ready {
                    let name = made.metadata.name.clone().unwrap_or_default();
                    let body = json!({"status": status});
                    api.patch_status(&name, &PatchParams::default(), &Patch::Merge(&body))
                        .await?;
                }
                Ok::<(), kube::Error>(())
            }
        })
        .buffer_unordered(parallel.max(1))
        .try_collect::<Vec<()>>()
        .await
        .context("creating the nodes")?;
    Ok(t.elapsed().as_secs_f64())
}

async fn wait_nodes_ready(client: &kube::Client, prefix: &str, count: usize) -> anyhow::Result<()> {
    let api: Api<Node> = Api::all(client.clone());
    let params = ListParams::default().labels(&format!("{BENCH_LABEL}={prefix}"));
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let ready = api
            .list(&params)
            .await?
            .items
            .iter()
            .filter(|n| NodeView::from(*n).ready == Some(true))
            .count();
        if ready >= count {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{ready} of {count} nodes Ready after 600s: is kwok keeping up?");
        }
        // A list of tens of thousands of nodes is itself a load: not too often.
        tokio::time::sleep(Duration::from_millis(500 + count as u64 / 10)).await;
    }
}

fn pool_json(name: &str, probe_seconds: Option<f64>, soak_seconds: u32) -> serde_json::Value {
    let mut checks = json!({
        "unhealthyConditions": [{"type": "GpuXidError", "status": "True"}],
        "soakSeconds": soak_seconds,
    });
    if let Some(seconds) = probe_seconds {
        checks["probe"] = json!({
            "timeoutSeconds": seconds.ceil() as u32 + 60,
            "retries": 0,
            "template": {"spec": {"containers": [{
                "name": "burn-in",
                "image": "nvcr.io/nvidia/cloud-native/dcgm:4.2.3-1-ubuntu22.04",
                "command": ["dcgmi", "diag", "-r", "3"],
                "resources": {"limits": {gpufleet::keys::GPU_RESOURCE: 4}},
            }]}},
        });
    }
    json!({
        "apiVersion": "gpufleet.io/v1alpha1",
        "kind": "GpuPool",
        "metadata": {"name": name, "labels": {BENCH_LABEL: name}},
        "spec": {
            "nodeSelector": {"matchLabels": {"gpufleet.io/pool": name}},
            "hardware": {"gpuProduct": ["NVIDIA-GB200", "NVIDIA-GB300"], "gpusPerNode": 4, "minDriverVersion": "570.133.20"},
            "topology": {"domainLabel": "nvidia.com/gpu.clique", "nodesPerDomain": NODES_PER_DOMAIN, "minHealthyNodesPerDomain": 16},
            "onboarding": {"taint": {"key": ONBOARDING_TAINT, "effect": "NoSchedule"}},
            "healthChecks": checks,
            "circuitBreaker": {"maxFailedPercent": 10, "window": "1h"},
        },
    })
}

fn batch_json(name: &str, waves: serde_json::Value, max_concurrent: u32) -> serde_json::Value {
    json!({
        "apiVersion": "gpufleet.io/v1alpha1",
        "kind": "RolloutBatch",
        "metadata": {"name": name, "labels": {BENCH_LABEL: name}},
        "spec": {
            "poolRef": name,
            "nodeSelector": {"matchLabels": {"gpufleet.io/batch": name}},
            "waves": waves,
            "maxConcurrent": max_concurrent,
            "maxFailuresPerWave": "10%",
        },
    })
}

async fn apply<K>(client: &kube::Client, body: &serde_json::Value) -> anyhow::Result<K>
where
    K: kube::Resource<Scope = kube::core::ClusterResourceScope> + Clone + std::fmt::Debug,
    K: serde::de::DeserializeOwned + Serialize,
    K::DynamicType: Default,
{
    let name = body["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let api: Api<K> = Api::all(client.clone());
    Ok(api
        .patch(
            &name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(body),
        )
        .await?)
}

async fn full_rollout(
    args: &Args,
    plane: &ControlPlane,
    client: &kube::Client,
    size: u32,
) -> anyhow::Result<Rollout> {
    let name = "bench";
    let nodes = fleet(name, size, args.faults);
    let count = nodes.len();
    let domains = size.div_ceil(NODES_PER_DOMAIN);
    let failing: Arc<BTreeSet<String>> = Arc::new(
        nodes
            .iter()
            .filter(|n| n.probe_failure.is_some())
            .map(|n| n.name.clone())
            .collect(),
    );
    eprintln!(
        "bench: creating {count} nodes ({domains} domains), {} at a time",
        args.parallel
    );
    let node_create_seconds = create(
        client,
        nodes
            .iter()
            .map(|n| {
                let node = n.to_node();
                if args.no_kwok {
                    simulate::ready(node)
                } else {
                    node
                }
            })
            .collect(),
        args.parallel,
        args.no_kwok,
    )
    .await?;
    // Without kwok the nodes are Ready as created: no list of them all.
    if !args.no_kwok {
        wait_nodes_ready(client, name, count).await?;
    }
    eprintln!("bench: {count} nodes created in {node_create_seconds:.1}s and Ready");

    let pool: GpuPool = apply(
        client,
        &pool_json(name, Some(args.probe_seconds), args.soak_seconds),
    )
    .await?;
    // Wave 1: the smallest whole number of domains that is about 1% of the fleet.
    let first = (domains.div_ceil(100)).max(1) * NODES_PER_DOMAIN;
    let waves = json!([{"nodes": first}, {"percent": 10}, {"percent": 100}]);
    let batch_body = batch_json(name, waves, args.max_concurrent.clamp(1, count as u32));

    let delay = Duration::from_secs_f64(args.probe_seconds);
    let burn_in = if args.no_kwok {
        tokio::spawn(simulate::kubelet_less_burn_in(
            client.clone(),
            NAMESPACE.to_string(),
            delay,
            failing.clone(),
        ))
    } else {
        tokio::spawn(simulate::burn_in(
            client.clone(),
            NAMESPACE.to_string(),
            delay,
        ))
    };
    let metrics_port = free_port()?;
    let mut operator = Operator::start(plane, name, metrics_port, args)?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let audit_from = plane.audit_len();

    let t = Instant::now();
    let batch: RolloutBatch = apply(client, &batch_body).await?;
    // The planner's time over the snapshot the first reconcile sees.
    let snapshot = snapshot(client, name).await?;
    let plan_ms_start = time_plan(&pool, &batch, &snapshot);
    let (outcome, complete) = wait_batch(
        client,
        name,
        &mut operator,
        Duration::from_secs(args.timeout),
    )
    .await?;
    let wall = t.elapsed().as_secs_f64();
    eprintln!("bench: rollout {outcome} after {wall:.1}s");
    // Where the probes stand: when a rollout halts on probe timeouts, this
    // tells the burn-in stand-in (no result), kwok (a result, still running)
    // and the operator (finished, not acted on) apart.
    let probes_at_end = probe_states(client).await?;
    if !complete {
        eprintln!("bench: probe pods at the end: {probes_at_end:?}");
    }

    let process = operator.stats(count);
    let reconciles = scrape_reconciles(metrics_port);
    operator.stop();
    burn_in.abort();
    // The audit log is written a moment after the response.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let requests = plane.requests_since(audit_from, "gpufleet/")?;
    let batch: RolloutBatch = Api::all(client.clone()).get(name).await?;
    let snapshot = self::snapshot(client, name).await?;
    let plan_ms_end = time_plan(&pool, &batch, &snapshot);
    let count_state =
        |state: NodeState| snapshot.nodes.iter().filter(|n| n.state() == state).count() as u64;
    let (admitted, failed, held) = (
        count_state(NodeState::Ready),
        count_state(NodeState::Failed),
        count_state(NodeState::Held),
    );
    let n_waves = batch.spec.waves.len();
    // What probes and soak take by themselves: a wave of more nodes than
    // may validate at once runs its probes in rounds; soaks overlap the
    // next round's probes, so each wave waits for one soak.
    let max_concurrent = batch.spec.max_concurrent.max(1);
    let mut previous = 0;
    let mut budget = 0.0;
    for wave in batch
        .status
        .as_ref()
        .map(|s| s.waves.as_slice())
        .unwrap_or_default()
    {
        let size = wave.target_nodes.saturating_sub(previous);
        previous = wave.target_nodes;
        budget += f64::from(size.div_ceil(max_concurrent).max(1)) * args.probe_seconds
            + f64::from(args.soak_seconds);
    }
    let get = |key: &str| requests.by_verb_resource.get(key).copied().unwrap_or(0);
    Ok(Rollout {
        complete,
        outcome,
        node_create_seconds,
        waves: n_waves,
        max_concurrent,
        probes_at_end,
        probe_seconds: args.probe_seconds,
        soak_seconds: args.soak_seconds,
        wall_seconds: wall,
        overhead_seconds: wall - budget,
        overhead_per_wave_seconds: (wall - budget) / n_waves as f64,
        admitted,
        failed,
        held,
        faults_injected: failing.len() as u64,
        node_writes_per_admitted: if admitted == 0 {
            f64::NAN
        } else {
            requests.node_writes as f64 / admitted as f64
        },
        probe_creates: get("create pods"),
        probe_deletes: get("delete pods") + get("deletecollection pods"),
        process,
        requests,
        reconciles,
        plan_ms_start,
        plan_ms_end,
    })
}

async fn snapshot(client: &kube::Client, prefix: &str) -> anyhow::Result<Snapshot> {
    let api: Api<Node> = Api::all(client.clone());
    let nodes = api
        .list(&ListParams::default().labels(&format!("gpufleet.io/pool={prefix}")))
        .await?
        .items;
    Ok(Snapshot {
        nodes: nodes
            .iter()
            .map(|n| std::sync::Arc::new(NodeView::from(n)))
            .collect(),
        ..Default::default()
    })
}

/// The best of five `planner::plan` calls, in milliseconds.
fn time_plan(pool: &GpuPool, batch: &RolloutBatch, snapshot: &Snapshot) -> f64 {
    let now = k8s_openapi::jiff::Timestamp::now();
    (0..5)
        .map(|_| {
            let t = Instant::now();
            let plan = planner::plan(pool, batch, snapshot, now);
            std::hint::black_box(&plan);
            t.elapsed().as_secs_f64() * 1000.0
        })
        .fold(f64::INFINITY, f64::min)
}

/// Polls the batch until Ready or a halt; returns (outcome, complete).
async fn wait_batch(
    client: &kube::Client,
    name: &str,
    operator: &mut Operator,
    timeout: Duration,
) -> anyhow::Result<(String, bool)> {
    let api: Api<RolloutBatch> = Api::all(client.clone());
    let deadline = Instant::now() + timeout;
    loop {
        let batch = api.get(name).await?;
        let waiting = view::waiting(&batch);
        match waiting.gate {
            Some(Gate::Complete) => return Ok(("complete".into(), true)),
            Some(g) if g.is_final() => return Ok((waiting.describe(), false)),
            _ => {}
        }
        if !operator.alive() {
            bail!("the operator exited; its log: {}", operator.log.display());
        }
        if Instant::now() > deadline {
            return Ok((format!("not Ready after {}s", timeout.as_secs()), false));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn peer_comparison(
    args: &Args,
    plane: &ControlPlane,
    client: &kube::Client,
    size: u32,
) -> anyhow::Result<PeerComparison> {
    let timeout = Duration::from_secs(args.timeout);
    // gpufleet, configured for the minimal job: one wave, no probe, no soak.
    let name = "minimal";
    let nodes: Vec<Node> = fleet(name, size, false)
        .iter()
        .map(|n| with_taint(n.to_node(), ONBOARDING_TAINT))
        .collect();
    let count = nodes.len();
    create(client, nodes, args.parallel, false).await?;
    wait_nodes_ready(client, name, count).await?;
    let _: GpuPool = apply(client, &pool_json(name, None, 0)).await?;
    let metrics_port = free_port()?;
    let mut operator = Operator::start(plane, name, metrics_port, args)?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let audit_from = plane.audit_len();
    let t = Instant::now();
    let _: RolloutBatch = apply(
        client,
        &batch_json(name, json!([{"percent": 100}]), count as u32),
    )
    .await?;
    let (_, batch_ready) = wait_batch(client, name, &mut operator, timeout).await?;
    let complete = batch_ready
        && wait_untainted(
            client,
            name,
            ONBOARDING_TAINT,
            Instant::now() + Duration::from_secs(30),
        )
        .await?;
    let wall = t.elapsed().as_secs_f64();
    let process = operator.stats(count);
    operator.stop();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let requests = plane.requests_since(audit_from, "gpufleet/")?;
    let gpufleet = Minimal {
        complete,
        wall_seconds: wall,
        process,
        requests,
    };
    eprintln!("bench: gpufleet minimal job done in {wall:.1}s");
    // Every node so far goes, so the peer (which watches all nodes) sees
    // a fleet of the same size.
    Api::<Node>::all(client.clone())
        .delete_collection(
            &DeleteParams::default(),
            &ListParams::default().labels(BENCH_LABEL),
        )
        .await?;

    // The peer on a fresh fleet, tainted as a not-yet-Ready node is.
    let name = "peer";
    let nodes: Vec<Node> = fleet(name, size, false)
        .iter()
        .map(|n| with_taint(n.to_node(), NOT_READY_TAINT))
        .collect();
    create(client, nodes, args.parallel, false).await?;
    wait_nodes_ready(client, name, count).await?;
    let audit_from = plane.audit_len();
    let t = Instant::now();
    let mut peer = Peer::start(plane, args)?;
    let mut complete = false;
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if !peer.alive() {
            bail!(
                "kube-controller-manager exited; its log: {}",
                peer.log.display()
            );
        }
        if wait_untainted(client, name, NOT_READY_TAINT, Instant::now()).await? {
            complete = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let wall = t.elapsed().as_secs_f64();
    let process = process_stats(peer.child.id())
        .map(|s| per_node(s, count))
        .unwrap_or_default();
    peer.stop();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let requests = plane.requests_since(audit_from, "kube-controller-manager/")?;
    eprintln!("bench: peer minimal job done in {wall:.1}s");
    Ok(PeerComparison {
        peer_name: "kube-controller-manager node-lifecycle-controller".into(),
        gpufleet,
        peer: Minimal {
            complete,
            wall_seconds: wall,
            process,
            requests,
        },
    })
}

fn with_taint(mut node: Node, key: &str) -> Node {
    let spec = node.spec.get_or_insert_with(Default::default);
    spec.taints = Some(vec![Taint {
        key: key.into(),
        effect: "NoSchedule".into(),
        ..Default::default()
    }]);
    node
}

/// True once no node of the fleet carries the taint; polls until `deadline`.
async fn wait_untainted(
    client: &kube::Client,
    prefix: &str,
    key: &str,
    deadline: Instant,
) -> anyhow::Result<bool> {
    let api: Api<Node> = Api::all(client.clone());
    let params = ListParams::default().labels(&format!("{BENCH_LABEL}={prefix}"));
    loop {
        let tainted = api
            .list(&params)
            .await?
            .items
            .iter()
            .filter(|n| {
                n.spec
                    .as_ref()
                    .and_then(|s| s.taints.as_ref())
                    .is_some_and(|t| t.iter().any(|t| t.key == key))
            })
            .count();
        if tainted == 0 {
            return Ok(true);
        }
        if Instant::now() >= deadline {
            return Ok(false);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// `gpufleet run`, this very binary, as a separate process.
struct Operator {
    child: Child,
    log: PathBuf,
}

impl Operator {
    fn start(
        plane: &ControlPlane,
        name: &str,
        metrics_port: u16,
        args: &Args,
    ) -> anyhow::Result<Operator> {
        let log =
            std::env::temp_dir().join(format!("gpufleet-bench-{name}-{}.log", std::process::id()));
        let file =
            std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let selector = format!("{BENCH_LABEL}={name}");
        let child = std::process::Command::new(std::env::current_exe()?)
            .arg("run")
            .arg("--kubeconfig")
            .arg(&plane.kubeconfig)
            .args([
                "--namespace",
                NAMESPACE,
                "--selector",
                &selector,
                "--node-selector",
                &selector,
            ])
            .args([
                "--metrics-addr",
                &format!("127.0.0.1:{metrics_port}"),
                "--health-addr",
                "127.0.0.1:0",
            ])
            .args([
                "--qps",
                &args.qps.to_string(),
                "--burst",
                &args.burst.to_string(),
            ])
            .args([
                "--identity",
                &format!("bench-{name}"),
                "--log-level",
                "info",
            ])
            .env_remove("KUBECONFIG")
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file)
            .spawn()
            .context("starting gpufleet run")?;
        Ok(Operator { child, log })
    }

    fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    fn stats(&self, nodes: usize) -> ProcessStats {
        process_stats(self.child.id())
            .map(|s| per_node(s, nodes))
            .unwrap_or_default()
    }

    fn stop(&mut self) {
        stop_child(&mut self.child);
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The peer: kube-controller-manager with only its node lifecycle controller.
struct Peer {
    child: Child,
    log: PathBuf,
}

impl Peer {
    fn start(plane: &ControlPlane, args: &Args) -> anyhow::Result<Peer> {
        let bin = plane.tool("kube-controller-manager")?;
        let log =
            std::env::temp_dir().join(format!("gpufleet-bench-peer-{}.log", std::process::id()));
        let file = std::fs::File::create(&log)?;
        let child = std::process::Command::new(bin)
            .arg(format!("--kubeconfig={}", plane.kubeconfig.display()))
            .args([
                "--controllers=node-lifecycle-controller",
                "--leader-elect=false",
                "--secure-port=0",
                "--use-service-account-credentials=false",
                "--node-monitor-grace-period=3600s",
            ])
            .arg(format!("--kube-api-qps={}", args.qps))
            .arg(format!("--kube-api-burst={}", args.burst as u64))
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file)
            .spawn()
            .context("starting kube-controller-manager")?;
        Ok(Peer { child, log })
    }

    fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    fn stop(&mut self) {
        stop_child(&mut self.child);
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn stop_child(child: &mut Child) {
    if matches!(child.try_wait(), Ok(None)) {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline && matches!(child.try_wait(), Ok(None)) {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
    }
    let _ = child.wait();
}

/// Peak RSS (VmHWM) and CPU seconds (utime + stime) of a live process.
fn process_stats(pid: u32) -> Option<ProcessStats> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let peak = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces) start at field 3.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    let hz = clock_ticks();
    Some(ProcessStats {
        peak_rss_kib: peak,
        cpu_seconds: ticks as f64 / hz,
        rss_bytes_per_node: 0.0,
    })
}

fn per_node(mut stats: ProcessStats, nodes: usize) -> ProcessStats {
    stats.rss_bytes_per_node = stats.peak_rss_kib as f64 * 1024.0 / nodes.max(1) as f64;
    stats
}

fn clock_ticks() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

/// gpufleet_reconcile_duration_seconds, summed over kinds.
fn scrape_reconciles(port: u16) -> Option<Reconciles> {
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    stream
        .write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .ok()?;
    let mut body = String::new();
    stream.read_to_string(&mut body).ok()?;
    let (mut sum, mut count) = (0.0, 0.0);
    let (mut visits, mut planned, mut ignored) = (0.0, 0.0, 0.0);
    let (mut pool_visits, mut paced) = (0.0, 0.0);
    for line in body.lines() {
        let value = |l: &str| {
            l.rsplit(' ')
                .next()
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        if line.starts_with("gpufleet_plan_node_visits_total") {
            visits += value(line);
            if line.contains("controller=\"gpupool\"") {
                pool_visits += value(line);
            }
        } else if line.starts_with("gpufleet_plans_paced_total") {
            paced += value(line);
        } else if line.starts_with("gpufleet_node_events_total{planned=\"yes\"}") {
            planned += value(line);
        } else if line.starts_with("gpufleet_node_events_total{planned=\"no\"}") {
            ignored += value(line);
        } else if line.starts_with("gpufleet_reconcile_duration_seconds_sum") {
            sum += value(line);
        } else if line.starts_with("gpufleet_reconcile_duration_seconds_count") {
            count += value(line);
        }
    }
    (count > 0.0).then(|| Reconciles {
        count,
        mean_ms: sum / count * 1000.0,
        node_visits: visits,
        pool_node_visits: pool_visits,
        plans_paced: paced,
        node_events_planned: planned,
        node_events_ignored: ignored,
    })
}

fn machine() -> Machine {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines().find_map(|l| {
                l.strip_prefix("model name")
                    .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
            })
        })
        .unwrap_or_default();
    let memory_kib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines().find_map(|l| {
                l.strip_prefix("MemTotal:")
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            })
        })
        .unwrap_or(0);
    Machine {
        nproc: std::thread::available_parallelism().map_or(1, |n| n.get()),
        cpu,
        memory_kib,
    }
}

/// A client whose user agent is not gpufleet's, so the bench's own requests
/// are not counted as the operator's. Node creation at scale: the test bed's
/// API server answers lists of 100k nodes slowly.
async fn client(plane: &ControlPlane) -> anyhow::Result<kube::Client> {
    super::client::builder("gpufleet-bench")
        .kubeconfig(Some(&plane.kubeconfig))
        .read_timeout(Duration::from_secs(300))
        .build()
        .await
}

/// The audit log, read for the requests of one client.
trait AuditLog {
    fn audit_len(&self) -> u64;
    fn requests_since(&self, from: u64, agent: &str) -> anyhow::Result<Requests>;
}

impl AuditLog for ControlPlane {
    fn audit_len(&self) -> u64 {
        std::fs::metadata(&self.audit_log)
            .map(|m| m.len())
            .unwrap_or(0)
    }

    /// Requests (stage ResponseComplete) from user agents starting with
    /// `agent`, in the audit log from byte `from` on.
    fn requests_since(&self, from: u64, agent: &str) -> anyhow::Result<Requests> {
        let mut file = std::fs::File::open(&self.audit_log)
            .with_context(|| format!("opening {}", self.audit_log.display()))?;
        file.seek(std::io::SeekFrom::Start(from))?;
        let needle = format!("\"userAgent\":\"{agent}");
        let mut requests = Requests::default();
        for line in std::io::BufReader::new(file).lines() {
            let line = line?;
            if !line.contains(&needle) || !line.contains("\"stage\":\"ResponseComplete\"") {
                continue;
            }
            let Ok(entry) = serde_json::from_str::<serde_json::Value>(&line) else {
                continue;
            };
            let mut verb = entry["verb"].as_str().unwrap_or("?");
            // A probe's dry run before its node starts is no pod made.
            if entry["requestURI"]
                .as_str()
                .is_some_and(|uri| uri.contains("dryRun="))
            {
                verb = "dry-run";
            }
            let object = &entry["objectRef"];
            let mut resource = object["resource"].as_str().unwrap_or("(none)").to_string();
            if let Some(sub) = object["subresource"].as_str() {
                resource = format!("{resource}/{sub}");
            }
            if object["resource"] == "nodes"
                && matches!(verb, "create" | "update" | "patch" | "delete")
            {
                requests.node_writes += 1;
            }
            requests.total += 1;
            *requests
                .by_verb_resource
                .entry(format!("{verb} {resource}"))
                .or_default() += 1;
        }
        Ok(requests)
    }
}

impl Report {
    /// The report as plain-text tables.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let m = &self.machine;
        out += &format!(
            "machine: {} cores, {}, {:.1} GiB\nfleet: {} nodes in {} NVL72 domains (GB200/GB300 alternating); control plane up in {:.1}s\n\n",
            m.nproc,
            m.cpu,
            m.memory_kib as f64 / 1048576.0,
            self.nodes,
            self.domains,
            self.control_plane_seconds
        );
        if let Some(r) = &self.rollout {
            let rows: Vec<(&str, String)> = vec![
                ("outcome", r.outcome.clone()),
                ("node creation", format!("{:.1} s", r.node_create_seconds)),
                (
                    "waves",
                    format!(
                        "{} (probe {} s, soak {} s each)",
                        r.waves, r.probe_seconds, r.soak_seconds
                    ),
                ),
                (
                    "wall, batch created → Ready",
                    format!("{:.2} s", r.wall_seconds),
                ),
                (
                    "  minus waves × (probe + soak)",
                    format!(
                        "{:.2} s ({:.2} s a wave)",
                        r.overhead_seconds, r.overhead_per_wave_seconds
                    ),
                ),
                (
                    "admitted / failed / held",
                    format!(
                        "{} / {} / {} ({} faults injected)",
                        r.admitted, r.failed, r.held, r.faults_injected
                    ),
                ),
                (
                    "operator peak RSS",
                    format!(
                        "{:.1} MiB ({:.0} B a node)",
                        r.process.peak_rss_kib as f64 / 1024.0,
                        r.process.rss_bytes_per_node
                    ),
                ),
                ("operator CPU", format!("{:.2} s", r.process.cpu_seconds)),
                ("API requests", r.requests.total.to_string()),
                (
                    "node writes / admitted node",
                    format!(
                        "{:.2} ({} writes)",
                        r.node_writes_per_admitted, r.requests.node_writes
                    ),
                ),
                (
                    "probe pods created / deleted",
                    format!("{} / {}", r.probe_creates, r.probe_deletes),
                ),
                (
                    "reconciles (from /metrics)",
                    r.reconciles.as_ref().map_or("-".into(), |c| {
                        format!("{:.0}, mean {:.1} ms", c.count, c.mean_ms)
                    }),
                ),
                (
                    "node records read by plans, a node",
                    r.reconciles.as_ref().map_or("-".into(), |c| {
                        format!("{:.0}", c.node_visits / r.admitted.max(1) as f64)
                    }),
                ),
                (
                    "node events planned / ignored",
                    r.reconciles.as_ref().map_or("-".into(), |c| {
                        format!(
                            "{:.0} / {:.0}",
                            c.node_events_planned, c.node_events_ignored
                        )
                    }),
                ),
                (
                    "one plan (all pending / all ready)",
                    format!("{:.2} ms / {:.2} ms", r.plan_ms_start, r.plan_ms_end),
                ),
            ];
            out += "full rollout\n";
            for (k, v) in rows {
                out += &format!("  {k:<36} {v}\n");
            }
            out += "  requests by verb and resource:\n";
            for (k, v) in &r.requests.by_verb_resource {
                out += &format!("    {k:<40} {v}\n");
            }
            out += "\n";
        }
        if let Some(p) = &self.peer {
            let ratio = |a: f64, b: f64| {
                if b > 0.0 {
                    format!("{:.2}", a / b)
                } else {
                    "-".into()
                }
            };
            out += &format!(
                "minimal job (remove an onboarding taint): gpufleet vs {}\n",
                p.peer_name
            );
            out += &format!(
                "  {:<22} {:>12} {:>12} {:>16}\n",
                "", "gpufleet", "peer", "gpufleet/peer"
            );
            let (g, q) = (&p.gpufleet, &p.peer);
            out += &format!(
                "  {:<22} {:>12} {:>12}\n",
                "complete", g.complete, q.complete
            );
            out += &format!(
                "  {:<22} {:>12.2} {:>12.2} {:>16}\n",
                "wall (s)",
                g.wall_seconds,
                q.wall_seconds,
                ratio(g.wall_seconds, q.wall_seconds)
            );
            let (gr, qr) = (
                g.process.peak_rss_kib as f64 / 1024.0,
                q.process.peak_rss_kib as f64 / 1024.0,
            );
            out += &format!(
                "  {:<22} {:>12.1} {:>12.1} {:>16}\n",
                "peak RSS (MiB)",
                gr,
                qr,
                ratio(gr, qr)
            );
            out += &format!(
                "  {:<22} {:>12.2} {:>12.2} {:>16}\n",
                "CPU (s)",
                g.process.cpu_seconds,
                q.process.cpu_seconds,
                ratio(g.process.cpu_seconds, q.process.cpu_seconds)
            );
            let (gt, qt) = (g.requests.total as f64, q.requests.total as f64);
            out += &format!(
                "  {:<22} {:>12} {:>12} {:>16}\n",
                "API requests",
                gt,
                qt,
                ratio(gt, qt)
            );
            let (gw, qw) = (g.requests.node_writes as f64, q.requests.node_writes as f64);
            out += &format!(
                "  {:<22} {:>12} {:>12} {:>16}\n",
                "node writes",
                gw,
                qw,
                ratio(gw, qw)
            );
            let keys: std::collections::BTreeSet<&String> = g
                .requests
                .by_verb_resource
                .keys()
                .chain(q.requests.by_verb_resource.keys())
                .collect();
            for k in keys {
                let a = g.requests.by_verb_resource.get(k).copied().unwrap_or(0);
                let b = q.requests.by_verb_resource.get(k).copied().unwrap_or(0);
                out += &format!("    {k:<20} {a:>12} {b:>12}\n");
            }
            out += "\n";
        }
        if !self.control_plane_peak_rss_kib.is_empty() {
            out += "test bed peak RSS:";
            for (k, v) in &self.control_plane_peak_rss_kib {
                out += &format!(" {k} {:.0} MiB;", *v as f64 / 1024.0);
            }
            out += "\n";
        }
        out
    }
}

/// Probe pods in the bench's namespace by (outcome annotation, phase).
async fn probe_states(
    client: &kube::Client,
) -> anyhow::Result<std::collections::BTreeMap<String, u64>> {
    let pods: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(client.clone(), NAMESPACE);
    let mut states = std::collections::BTreeMap::new();
    for pod in pods.list(&Default::default()).await?.items {
        let result = pod
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(simulate::PROBE_RESULT))
            .map_or("no result", |_| "result");
        let phase = pod
            .status
            .and_then(|s| s.phase)
            .unwrap_or_else(|| "no phase".into());
        *states.entry(format!("{result}, {phase}")).or_insert(0) += 1;
    }
    Ok(states)
}
