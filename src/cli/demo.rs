//! `gpufleet demo`: the operator doing its job on a simulated fleet, with no
//! cluster of your own. It starts the test bed's control plane (etcd,
//! kube-apiserver and kwok, built from source on first use), installs the
//! CRDs, creates GB200 and GB300 NVL72 domains with a few faults, applies a
//! pool and a three-wave batch, runs the operator and the burn-in stand-in in
//! this process, shows the rollout live and sums it up.
//!
//! Everything it starts stops when it exits, Ctrl-C included: the control
//! plane runs under `controlplane.py up --watch-pid`, which tears it down
//! once this process is gone, however it went. With `--kubeconfig` it uses
//! a disposable cluster instead and removes what it created there.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use gpufleet::api::{GpuPool, RolloutBatch};
use gpufleet::crds;
use gpufleet::planner::NodeView;
use gpufleet::simulate::{self, SIMULATED, SimNode};
use gpufleet::view;
use gpufleet::vocabulary::Gate;
use gpufleet::{keys, operator};
use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use serde_json::json;

use super::controlplane::ControlPlane;
use super::status::{Follow, Screen};

/// Label on every object the demo makes; its operator handles only those.
const DEMO_LABEL: &str = "gpufleet.io/demo";
/// Field manager of the demo's writes.
const FIELD_MANAGER: &str = "gpufleet-demo";
/// Trays of an NVL72 domain.
const NODES_PER_DOMAIN: u32 = 18;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// GB200 NVL72 domains (racks of 18 nodes, 72 GPUs).
    #[arg(long, default_value_t = 8, value_name = "N")]
    domains: u32,
    /// GB300 NVL72 domains.
    #[arg(long, default_value_t = 4, value_name = "N")]
    gb300_domains: u32,
    /// Share of nodes (0 to 1) whose burn-in fails, on top of the three
    /// injected faults (a failing burn-in, a node with 3 GPUs, an XID error).
    #[arg(long, default_value_t = 0.0, value_name = "SHARE")]
    fault_rate: f64,
    /// How long each burn-in probe runs.
    #[arg(long, default_value_t = 3.0, value_name = "SECONDS")]
    probe_seconds: f64,
    /// How long a node must stay healthy after its probe passed.
    #[arg(long, default_value_t = 5, value_name = "SECONDS")]
    soak_seconds: u32,
    /// Leave the control plane (or, with --kubeconfig, the demo's objects)
    /// in place and print how to explore it with kubectl.
    #[arg(long)]
    keep: bool,
    /// Use this existing, disposable cluster instead of starting one.
    #[arg(long, value_name = "FILE")]
    kubeconfig: Option<PathBuf>,
    /// Kubeconfig context (with --kubeconfig).
    #[arg(long, requires = "kubeconfig")]
    context: Option<String>,
    /// Go ahead on a cluster that has nodes the demo did not simulate.
    #[arg(long)]
    yes: bool,
    /// Name of the demo's pool and batch, prefix of its nodes: run several
    /// demos on one cluster under different names.
    #[arg(long, default_value = "demo")]
    name: String,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    validate(&args)?;
    let log = init_log(&args.name)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let code = runtime.block_on(demo(args, log))?;
    // The operator's tasks may still be winding down: do not wait for them.
    runtime.shutdown_timeout(Duration::from_secs(1));
    Ok(code)
}

fn validate(args: &Args) -> anyhow::Result<()> {
    let dns = |s: &str| {
        !s.is_empty()
            && s.len() <= 40
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !s.starts_with('-')
            && !s.ends_with('-')
    };
    if !dns(&args.name) {
        bail!(
            "--name {:?}: use up to 40 lowercase letters, digits and '-'",
            args.name
        );
    }
    if args.domains + args.gb300_domains == 0 {
        bail!("--domains and --gb300-domains are both 0: nothing to roll out");
    }
    if args.domains + args.gb300_domains > 1000 {
        bail!("at most 1000 domains (18,000 nodes) in the demo");
    }
    if !(0.0..=1.0).contains(&args.fault_rate) {
        bail!(
            "--fault-rate {} is not a share between 0 and 1",
            args.fault_rate
        );
    }
    if !(0.0..=3600.0).contains(&args.probe_seconds) {
        bail!("--probe-seconds must be between 0 and 3600");
    }
    Ok(())
}

/// The operator's log goes to a file, so it does not garble the live view.
fn init_log(name: &str) -> anyhow::Result<PathBuf> {
    let path = std::env::temp_dir().join(format!("gpufleet-{name}.log"));
    let file =
        std::fs::File::create(&path).with_context(|| format!("creating {}", path.display()))?;
    let filter = std::env::var("GPUFLEET_LOG_LEVEL").unwrap_or_else(|_| "info".into());
    let filter = tracing_subscriber::EnvFilter::try_new(&filter)
        .map_err(|e| anyhow!("GPUFLEET_LOG_LEVEL {filter:?}: {e}"))?;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(false)
        .with_writer(Mutex::new(file))
        .init();
    Ok(path)
}

/// How a demo ended.
enum Outcome {
    Complete,
    Halted,
    Interrupted,
}

async fn demo(args: Args, log: PathBuf) -> anyhow::Result<ExitCode> {
    let fleet = Fleet::new(&args);
    println!(
        "gpufleet demo: {} simulated nodes ({} GPUs) in {} NVL72 domains",
        fleet.nodes.len(),
        fleet.nodes.iter().map(|n| n.gpus).sum::<u32>(),
        args.domains + args.gb300_domains,
    );
    println!();
    let mut plane = None;
    let client = match &args.kubeconfig {
        Some(path) => {
            let client = connect(path, args.context.as_deref()).await?;
            refuse_real_cluster(&client, &args).await?;
            step("cluster", &format!("{} (--kubeconfig)", path.display()));
            client
        }
        None => {
            let started = Instant::now();
            let up = tokio::select! {
                up = start_plane(args.keep) => up?,
                _ = tokio::signal::ctrl_c() => {
                    // controlplane.py got the same SIGINT and stops what it started.
                    println!("interrupted");
                    return Ok(ExitCode::from(130));
                }
            };
            step(
                "control plane",
                &format!(
                    "etcd, kube-apiserver, kwok at {} ({:.1}s)",
                    up.server,
                    started.elapsed().as_secs_f64()
                ),
            );
            let client = connect(&up.kubeconfig, None).await;
            plane = Some(up);
            match client {
                Ok(client) => client,
                Err(err) => {
                    plane.as_mut().expect("just set").stop().await;
                    return Err(err);
                }
            }
        }
    };

    let mut session = Session {
        client,
        args,
        fleet,
        log,
        operator: None,
        burn_in: None,
    };
    let outcome = tokio::select! {
        outcome = session.run() => outcome,
        _ = tokio::signal::ctrl_c() => Ok(Outcome::Interrupted),
    };
    if let Ok(Outcome::Interrupted) = outcome {
        println!("\ninterrupted: stopping what the demo started");
    }
    let cleanup = session.finish(plane.is_some()).await;
    match plane.as_mut() {
        Some(plane) if session.args.keep => explain(plane, &session.args.name),
        Some(plane) => {
            let t = Instant::now();
            plane.stop().await;
            println!(
                "Stopped the operator and the control plane ({:.1}s).",
                t.elapsed().as_secs_f64()
            );
        }
        None => {}
    }
    cleanup?;
    match outcome? {
        Outcome::Complete => Ok(ExitCode::SUCCESS),
        Outcome::Halted => Ok(ExitCode::FAILURE),
        Outcome::Interrupted => Ok(ExitCode::from(130)),
    }
}

/// The local control plane: etcd, kube-apiserver and kwok, and kubectl to
/// explore it with --keep; nothing else of the test bed.
async fn start_plane(keep: bool) -> anyhow::Result<ControlPlane> {
    let tools: &[&str] = if keep { &["kubectl"] } else { &[] };
    println!("Starting a local control plane (etcd, kube-apiserver, kwok).");
    println!("The first run on a machine builds them from source: minutes.");
    ControlPlane::start(tools, keep).await
}

/// One line of the set-up list.
fn step(what: &str, text: &str) {
    let lines = view::wrap(&format!("  {what:<15}{text}"), view::WIDTH, 17);
    for line in lines {
        println!("{line}");
    }
}

/// The demo's client, the operator's in this process too.
async fn connect(kubeconfig: &Path, context: Option<&str>) -> anyhow::Result<kube::Client> {
    super::run::operator_client(Some(kubeconfig), context, None, None).await
}

/// A cluster with nodes the demo did not simulate is somebody's: refuse it
/// unless told to go ahead.
async fn refuse_real_cluster(client: &kube::Client, args: &Args) -> anyhow::Result<()> {
    let nodes: Api<Node> = Api::all(client.clone());
    let real = nodes
        .list_metadata(
            &ListParams::default()
                .labels(&format!("{SIMULATED}!=true"))
                .limit(5),
        )
        .await
        .context("listing the cluster's nodes")?;
    if real.items.is_empty() || args.yes {
        return Ok(());
    }
    let names: Vec<String> = real
        .items
        .iter()
        .filter_map(|n| n.metadata.name.clone())
        .collect();
    bail!(
        "this cluster has nodes the demo did not simulate ({}{}): the demo adds {} fake nodes \
         and runs an operator; use a disposable cluster, or pass --yes to go ahead",
        names.join(", "),
        if real
            .metadata
            .continue_
            .as_deref()
            .is_some_and(|c| !c.is_empty())
        {
            ", ..."
        } else {
            ""
        },
        Fleet::new(args).nodes.len()
    )
}

/// The simulated nodes and their faults.
struct Fleet {
    nodes: Vec<SimNode>,
    /// Nodes to give a `GpuXidError=True` condition once Ready.
    xid: Vec<String>,
    /// What was injected, for people.
    faults: Vec<String>,
}

impl Fleet {
    fn new(args: &Args) -> Fleet {
        let name = &args.name;
        let seed = fnv(name.as_bytes()) as u32;
        let total = args.domains + args.gb300_domains;
        let mut nodes = Vec::new();
        for d in 0..total {
            let gb300 = d >= args.domains;
            let rack = if gb300 { d - args.domains + 1 } else { d + 1 };
            let product = if gb300 { "gb300" } else { "gb200" };
            // GFD's clique label is <ClusterUUID>.<CliqueID>; the UUIDs sort
            // in rack order, so waves take the GB200 racks first.
            let clique = format!(
                "{seed:08x}-{d:04x}-4{:03x}-8{:03x}-{:012x}.32766",
                rack & 0xfff,
                d & 0xfff,
                fnv(&d.to_le_bytes()) & 0xffff_ffff_ffff
            );
            for n in 1..=NODES_PER_DOMAIN {
                let node_name = format!("{name}-{product}-r{rack:02}-n{n:02}");
                let node = if gb300 {
                    SimNode::gb300(node_name, clique.clone())
                } else {
                    SimNode::gb200(node_name, clique.clone())
                };
                nodes.push(
                    node.label(DEMO_LABEL, name)
                        .label("gpufleet.io/pool", name)
                        .label("gpufleet.io/batch", name)
                        .label("topology.kubernetes.io/zone", "demo-hall-1"),
                );
            }
        }
        let mut faults = Vec::new();
        let node_of = |d: u32, n: u32| (d * NODES_PER_DOMAIN + n - 1) as usize;
        // The three faults of every demo: in the second rack (wave 2 by
        // default), a rack in the middle and the first GB300 rack (wave 3).
        let probe_node = node_of(1.min(total - 1), 5);
        nodes[probe_node].probe_failure =
            Some("dcgmi diag -r 3: NVLink CRC errors above threshold on GPU 2, link 7".into());
        faults.push(format!(
            "{}: its burn-in fails (NVLink CRC errors)",
            nodes[probe_node].name
        ));
        let gpu_node = node_of(
            if args.gb300_domains > 0 {
                args.domains
            } else {
                total - 1
            },
            3,
        );
        nodes[gpu_node].gpus = 3;
        faults.push(format!("{}: reports 3 GPUs of 4", nodes[gpu_node].name));
        // Two the verdict gates catch: a tray whose fabric registration
        // ended without a clique (as reported on public GB200 systems), and
        // one flashed with a VBIOS off the pool's firmware tuple.
        let fabric_node = node_of(0, 9);
        nodes[fabric_node].fabric_fault = Some("status=Insufficient Resources;cliqueId=0".into());
        faults.push(format!(
            "{}: fabric Insufficient Resources, clique 0",
            nodes[fabric_node].name
        ));
        let firmware_node = node_of(
            if args.gb300_domains > 0 {
                args.domains
            } else {
                total - 1
            },
            14,
        );
        nodes[firmware_node].vbios = "96.00.AF.00.01".into();
        faults.push(format!(
            "{}: VBIOS 96.00.AF.00.01, off the pool's tuple",
            nodes[firmware_node].name
        ));
        // Two the rack test catches, in a fleet big enough to carry them
        // (18 failed trays halt a small one): a tray with a bad NVLink port
        // (its own checks pass; attribution finds it), and a rack whose
        // switch tray is bad (every group fails: the rack is failed whole).
        if total >= 6 {
            let port_node = node_of(3, 7);
            nodes[port_node].nvlink_fault = true;
            faults.push(format!(
                "{}: a bad NVLink port (its own checks pass)",
                nodes[port_node].name
            ));
            for n in 1..=NODES_PER_DOMAIN {
                nodes[node_of(4, n)].rack_fault = true;
            }
            faults.push(format!(
                "{}: a bad NVLink switch tray",
                nodes[node_of(4, 1)].name.trim_end_matches("-n01")
            ));
        }
        let xid_node = node_of(total / 2, 11);
        let xid = vec![nodes[xid_node].name.clone()];
        faults.push(format!(
            "{}: GpuXidError=True (Xid 79, fell off the bus)",
            nodes[xid_node].name
        ));
        let mut random = 0;
        for node in nodes.iter_mut() {
            let roll = mix(fnv(node.name.as_bytes())) as f64 / u64::MAX as f64;
            if roll < args.fault_rate
                && node.probe_failure.is_none()
                && node.gpus == 4
                && !xid.contains(&node.name)
            {
                node.probe_failure = Some(format!(
                    "dcgmi diag -r 3: HBM ECC errors on GPU {}",
                    fnv(node.name.as_bytes()) % 4
                ));
                random += 1;
            }
        }
        if random > 0 {
            faults.push(format!(
                "{random} more nodes whose burn-in fails (--fault-rate {})",
                args.fault_rate
            ));
        }
        Fleet { nodes, xid, faults }
    }
}

/// A stable hash for names, so a demo's faults are the same each run.
fn fnv(bytes: &[u8]) -> u64 {
    keys::stable_hash(bytes)
}

/// SplitMix64's finalizer: spreads similar names' hashes over the whole range.
fn mix(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// The demo's objects and tasks on one cluster.
struct Session {
    client: kube::Client,
    args: Args,
    fleet: Fleet,
    log: PathBuf,
    operator: Option<(
        tokio::sync::oneshot::Sender<()>,
        tokio::task::JoinHandle<anyhow::Result<()>>,
    )>,
    burn_in: Option<tokio::task::JoinHandle<()>>,
}

impl Session {
    fn namespace(&self) -> String {
        format!("gpufleet-{}", self.args.name)
    }

    async fn run(&mut self) -> anyhow::Result<Outcome> {
        let name = self.args.name.clone();
        crds::install(&self.client, FIELD_MANAGER).await?;
        step("CRDs", "GpuPool and RolloutBatch installed and Established");
        let batches: Api<RolloutBatch> = Api::all(self.client.clone());
        if batches.get_opt(&name).await?.is_some() {
            bail!(
                "a RolloutBatch named {name} exists already in this cluster: pick another --name"
            );
        }
        let ns = self.namespace();
        let labels =
            std::collections::BTreeMap::from([(DEMO_LABEL.to_string(), self.args.name.clone())]);
        simulate::probe_namespace(&self.client, &ns, &labels)
            .await
            .with_context(|| format!("creating namespace {ns} and its ServiceAccounts"))?;

        let t = Instant::now();
        simulate::create_nodes(&self.client, &self.fleet.nodes, 32).await.map_err(|err| match err {
            kube::Error::Api(s) if s.code == 409 => {
                anyhow!("nodes named {name}-... exist already in this cluster: pick another --name ({})", s.message)
            }
            other => anyhow!("creating the nodes: {other}"),
        })?;
        self.wait_nodes_ready().await?;
        for node in &self.fleet.xid {
            simulate::set_condition(&self.client, node, "GpuXidError", "True", "Xid79").await?;
        }
        step(
            "nodes",
            &format!(
                "{} created ({} GB200 and {} GB300 domains of 18), Ready in {:.1}s: kwok plays their kubelets",
                self.fleet.nodes.len(),
                self.args.domains,
                self.args.gb300_domains,
                t.elapsed().as_secs_f64()
            ),
        );
        for (i, fault) in self.fleet.faults.iter().enumerate() {
            step(if i == 0 { "faults" } else { "" }, fault);
        }

        self.apply_pool().await?;
        step(
            &format!("pool {name}"),
            &format!(
                "GB200 or GB300, 4 GPUs a node, driver 570.133.20 or later; a domain needs 16 of 18 healthy nodes; \
                 burn-in {}s, soak {}s, a rack test (NCCL) per domain; breaker at 15% failed",
                self.args.probe_seconds, self.args.soak_seconds
            ),
        );
        self.start_operator();
        self.apply_batch().await?;
        let rollout_start = Instant::now();
        step(
            &format!("batch {name}"),
            "waves: 1 domain, 25%, 100% (whole domains); 36 nodes validating at once; up to 15% of a wave may fail",
        );
        step(
            "operator",
            &format!("running in this process; its log: {}", self.log.display()),
        );
        println!();

        let mut screen = Screen::stdout();
        let follow = Follow {
            every: Duration::from_millis(if screen.tty { 250 } else { 500 }),
            until_final: true,
            stale_after: Some(Duration::from_secs_f64(
                (self.args.probe_seconds + f64::from(self.args.soak_seconds) + 60.0).max(120.0),
            )),
            started: Some(rollout_start),
        };
        let (client, log, operator) = (&self.client, &self.log, &mut self.operator);
        let watch_operator = async {
            match operator.as_mut() {
                Some((_, handle)) => match handle.await {
                    Ok(Ok(())) => anyhow!("the operator stopped"),
                    Ok(Err(err)) => anyhow!("the operator stopped: {err:#}"),
                    Err(err) => anyhow!("the operator crashed: {err}"),
                },
                None => anyhow!("the operator is not running"),
            }
        };
        let ended = tokio::select! {
            batch = follow.run(client, &name, &mut screen) => Ok(batch),
            err = watch_operator => Err(err),
        };
        let batch = match ended {
            Ok(batch) => batch.with_context(|| {
                format!(
                    "following the rollout (the operator's log: {})",
                    log.display()
                )
            })?,
            Err(err) => {
                // Its task is over: nothing to stop.
                self.operator = None;
                return Err(err);
            }
        };
        let wall = rollout_start.elapsed();
        screen.keep();

        let gate = view::waiting(&batch);
        let nodes: Vec<NodeView> = Api::<Node>::all(self.client.clone())
            .list(&ListParams::default().labels(&format!("{DEMO_LABEL}={name}")))
            .await?
            .items
            .iter()
            .map(NodeView::from)
            .collect();
        println!();
        for line in view::summary(&batch, &nodes, Some(wall)) {
            println!("{line}");
        }
        println!();
        match gate.gate {
            Some(Gate::Complete) => {
                self.show_status_view().await?;
                Ok(Outcome::Complete)
            }
            _ => {
                for line in view::wrap(&format!("The rollout {}", gate.describe()), view::WIDTH, 2)
                {
                    println!("{line}");
                }
                if let Some(hint) = gate.hint("kubectl gpufleet", &name) {
                    for line in
                        view::wrap(&format!("With --keep, explore it: {hint}."), view::WIDTH, 2)
                    {
                        println!("{line}");
                    }
                }
                Ok(Outcome::Halted)
            }
        }
    }

    /// The `gpufleet status` view of the finished rollout: what a person
    /// would see on a real cluster.
    async fn show_status_view(&self) -> anyhow::Result<()> {
        // The pool's status trails the batch's by a reconcile; give it a moment.
        let pools: Api<GpuPool> = Api::all(self.client.clone());
        let ready = self.fleet.nodes.len();
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut pool = pools.get(&self.args.name).await?;
        while Instant::now() < deadline
            && pool
                .status
                .as_ref()
                .is_none_or(|s| (s.nodes.ready + s.nodes.failed + s.nodes.held) as usize != ready)
        {
            tokio::time::sleep(Duration::from_millis(250)).await;
            pool = pools.get(&self.args.name).await?;
        }
        let batch = Api::<RolloutBatch>::all(self.client.clone())
            .get(&self.args.name)
            .await?;
        println!("$ gpufleet status");
        for line in view::overview(&[pool], &[batch]) {
            println!("{line}");
        }
        Ok(())
    }

    async fn wait_nodes_ready(&self) -> anyhow::Result<()> {
        let api: Api<Node> = Api::all(self.client.clone());
        let params = ListParams::default().labels(&format!("{DEMO_LABEL}={}", self.args.name));
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let nodes = api.list(&params).await?.items;
            let ready = nodes
                .iter()
                .filter(|n| NodeView::from(*n).ready == Some(true))
                .count();
            if ready == self.fleet.nodes.len() {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "{ready} of {} nodes Ready after 120s: is kwok running?",
                    self.fleet.nodes.len()
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn apply_pool(&self) -> anyhow::Result<()> {
        let name = &self.args.name;
        let pool = json!({
            "apiVersion": "gpufleet.io/v1alpha1",
            "kind": "GpuPool",
            "metadata": {"name": name, "labels": {DEMO_LABEL: name}},
            "spec": {
                "nodeSelector": {"matchLabels": {"gpufleet.io/pool": name}},
                "hardware": {"gpuProduct": ["NVIDIA-GB200", "NVIDIA-GB300"], "gpusPerNode": 4, "minDriverVersion": "570.133.20"},
                "topology": {"domainLabel": "nvidia.com/gpu.clique", "nodesPerDomain": NODES_PER_DOMAIN, "minHealthyNodesPerDomain": 16},
                "healthChecks": {
                    "unhealthyConditions": [{"type": "GpuXidError", "status": "True", "timeoutSeconds": 0}, {"type": "NVLinkDown", "status": "True", "timeoutSeconds": 0}],
                    "probe": {
                        "timeoutSeconds": self.args.probe_seconds.ceil() as u32 + 60,
                        "retries": 0,
                        "template": {"spec": {"containers": [{
                            "name": "burn-in",
                            "image": format!("ghcr.io/gpufleet/gpufleet:{}", env!("CARGO_PKG_VERSION")),
                            "command": ["gpufleet", "probe", "--gpus", "4", "--product", "NVIDIA-GB200", "--product", "NVIDIA-GB300", "--dcgm-level", "3"],
                            "resources": {"limits": {keys::GPU_RESOURCE: 4}},
                        }]}},
                    },
                    "soakSeconds": self.args.soak_seconds,
                    "domainTest": {
                        "timeoutSeconds": self.args.probe_seconds.ceil() as u32 + 60,
                        "template": {"spec": {"containers": [{
                            "name": "nccl",
                            "image": "ghcr.io/nvidia/nccl-tests:2.16.2",
                            "command": ["all_reduce_perf", "-b", "16G", "-e", "16G", "-g", "4"],
                            "env": [{"name": "NCCL_MNNVL_ENABLE", "value": "1"}],
                            "resources": {"limits": {keys::GPU_RESOURCE: 4}},
                        }]}},
                    },
                    "fabric": {},
                    "firmware": {"driver": ["570.133.20"], "vbios": [simulate::SIM_DEFAULT_VBIOS]},
                },
                "circuitBreaker": {"maxFailedPercent": 15, "window": "1h"},
                // Two GB200 racks under test draw 262.8 kW; two GB300 racks
                // would draw 280.8 kW: the GB300 trays of the last wave
                // wait a few seconds for power ("waits for power").
                "power": {"budgetKilowatts": 270},
            },
        });
        let api: Api<GpuPool> = Api::all(self.client.clone());
        api.patch(
            name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&pool),
        )
        .await
        .context("applying the GpuPool")?;
        Ok(())
    }

    async fn apply_batch(&self) -> anyhow::Result<()> {
        let name = &self.args.name;
        let batch = json!({
            "apiVersion": "gpufleet.io/v1alpha1",
            "kind": "RolloutBatch",
            "metadata": {"name": name, "labels": {DEMO_LABEL: name}},
            "spec": {
                "poolRef": name,
                "nodeSelector": {"matchLabels": {"gpufleet.io/batch": name}},
                "waves": [{"nodes": NODES_PER_DOMAIN}, {"percent": 25}, {"percent": 100}],
                "maxConcurrent": 36,
                "maxFailuresPerWave": "15%",
            },
        });
        let api: Api<RolloutBatch> = Api::all(self.client.clone());
        api.patch(
            name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&batch),
        )
        .await
        .context("applying the RolloutBatch")?;
        Ok(())
    }

    /// The operator and the burn-in stand-in, as tasks of this process,
    /// handling only the demo's objects.
    fn start_operator(&mut self) {
        let selector = format!("{DEMO_LABEL}={}", self.args.name);
        let config = operator::Config {
            namespace: self.namespace(),
            probes: operator::Probes::in_namespace(&self.namespace()),
            node_selector: Some(selector.clone()),
            selector: Some(selector),
            // A local control plane takes more than a shared cluster would.
            qps: 500.0,
            burst: 1000.0,
            ..Default::default()
        };
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let shutdown = async move {
            let _ = stopped.await;
        };
        let handle = tokio::spawn(operator::run(self.client.clone(), config, shutdown));
        self.operator = Some((stop, handle));
        let delay = Duration::from_secs_f64(self.args.probe_seconds);
        self.burn_in = Some(tokio::spawn(simulate::burn_in(
            self.client.clone(),
            self.namespace(),
            delay,
        )));
    }

    async fn stop_operator(&mut self) {
        if let Some(task) = self.burn_in.take() {
            task.abort();
        }
        if let Some((stop, handle)) = self.operator.take() {
            let _ = stop.send(());
            if tokio::time::timeout(Duration::from_secs(5), handle)
                .await
                .is_err()
            {
                tracing::warn!("the operator did not stop within 5s");
            }
        }
    }

    /// Stops the operator; on a cluster of the user's (without --keep),
    /// removes what the demo made there first.
    async fn finish(&mut self, own_plane: bool) -> anyhow::Result<()> {
        if own_plane || self.args.keep {
            self.stop_operator().await;
            if self.args.keep && !own_plane {
                println!("The demo's nodes, pool and batch stay in the cluster (--keep).");
            }
            return Ok(());
        }
        let result = self.remove_objects().await;
        self.stop_operator().await;
        result?;
        println!("Removed the demo's batch, pool, nodes and namespace from the cluster.");
        Ok(())
    }

    async fn remove_objects(&self) -> anyhow::Result<()> {
        {
            let name = &self.args.name;
            let labels = ListParams::default().labels(&format!("{DEMO_LABEL}={name}"));
            // The batch first, while the operator runs: its finalizer removes
            // the probes and leaves the nodes safe.
            let batches: Api<RolloutBatch> = Api::all(self.client.clone());
            if batches.get_opt(name).await?.is_some() {
                batches.delete(name, &DeleteParams::default()).await?;
                let deadline = Instant::now() + Duration::from_secs(30);
                while batches.get_opt(name).await?.is_some() {
                    if Instant::now() > deadline {
                        let body = json!({"metadata": {"finalizers": null}});
                        batches
                            .patch(name, &PatchParams::default(), &Patch::Merge(&body))
                            .await?;
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
            let pools: Api<GpuPool> = Api::all(self.client.clone());
            ignore_missing(
                pools
                    .delete(name, &DeleteParams::default())
                    .await
                    .map(|_| ()),
            )?;
            let nodes: Api<Node> = Api::all(self.client.clone());
            nodes
                .delete_collection(&DeleteParams::default(), &labels)
                .await?;
            let pods: Api<Pod> = Api::namespaced(self.client.clone(), &self.namespace());
            pods.delete_collection(
                &DeleteParams::default().grace_period(0),
                &ListParams::default(),
            )
            .await?;
            let namespaces: Api<Namespace> = Api::all(self.client.clone());
            ignore_missing(
                namespaces
                    .delete(&self.namespace(), &DeleteParams::default())
                    .await
                    .map(|_| ()),
            )?;
            Ok(())
        }
    }
}

fn ignore_missing(result: kube::Result<()>) -> kube::Result<()> {
    match result {
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        other => other,
    }
}

/// With --keep: how to use the control plane, and how to stop it.
fn explain(plane: &ControlPlane, name: &str) {
    println!();
    println!("The control plane keeps running (--keep); the operator stopped with the demo.");
    println!("Explore it:");
    println!("  export KUBECONFIG={}", plane.kubeconfig.display());
    if let Some(bin) = plane.kubectl_dir() {
        println!("  export PATH={}:$PATH", bin.display());
    }
    println!("  kubectl get gpufleet");
    println!("  gpufleet status {name}");
    println!("  gpufleet run --namespace gpufleet-{name}   # the operator again");
    println!("Stop it:");
    println!("  {}", plane.stop_hint());
}
