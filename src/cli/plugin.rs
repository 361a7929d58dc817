//! The commands a person runs against a rollout: `approve`, `pause`,
//! `resume`, `retry` and `why`, with `status` next door. The same binary is
//! the kubectl plugin: installed (or linked) as `kubectl-gpufleet` on the
//! PATH, `kubectl gpufleet approve row12` runs `approve` here. kubectl hands
//! its plugins the environment and the arguments after the plugin's name,
//! so `--kubeconfig` and `--context` go after the subcommand, and
//! `KUBECONFIG` works as it does for kubectl.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, anyhow, bail};
use gpufleet::api::{GpuPool, RolloutBatch};
use gpufleet::keys;
use gpufleet::planner::{Claim, NodeState, NodeView, claimants, matches};
use gpufleet::view::{self, EventLine};
use gpufleet::vocabulary::Gate;
use k8s_openapi::api::core::v1::{Event, Node};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ListParams, Patch, PatchParams};
use serde_json::json;

/// The field manager of the plugin's writes.
const FIELD_MANAGER: &str = "kubectl-gpufleet";

/// How to reach the cluster.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct ClusterArgs {
    /// Kubeconfig file (default: $KUBECONFIG, then ~/.kube/config, then the
    /// in-cluster service account).
    #[arg(long, value_name = "FILE")]
    pub kubeconfig: Option<PathBuf>,
    /// Kubeconfig context (default: its current context).
    #[arg(long)]
    pub context: Option<String>,
}

impl ClusterArgs {
    /// A client, as kubectl would pick the cluster.
    pub async fn client(&self) -> anyhow::Result<kube::Client> {
        super::client::builder(super::client::PLUGIN_AGENT)
            .kubeconfig(self.kubeconfig.as_deref())
            .context(self.context.as_deref())
            .build()
            .await
    }
}

/// How the user runs these commands: `kubectl gpufleet` when this binary was
/// started as the kubectl plugin, else `gpufleet`. Hints name it so.
pub fn cmd() -> &'static str {
    let plugin = std::env::args_os()
        .next()
        .map(PathBuf::from)
        .and_then(|p| {
            p.file_name()
                .map(|f| f.to_string_lossy().starts_with("kubectl-"))
        })
        .unwrap_or(false);
    if plugin {
        "kubectl gpufleet"
    } else {
        "gpufleet"
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

/// The batch, or an error that says it does not exist.
pub async fn get_batch(client: &kube::Client, name: &str) -> anyhow::Result<RolloutBatch> {
    let api: Api<RolloutBatch> = Api::all(client.clone());
    api.get_opt(name)
        .await
        .with_context(|| format!("reading RolloutBatch {name}"))?
        .ok_or_else(|| {
            anyhow!(
                "there is no RolloutBatch named {name:?}; `{} status` lists them",
                cmd()
            )
        })
}

/// Refuses to act on a batch whose every wave is done.
fn refuse_complete(batch: &RolloutBatch, verb: &str) -> anyhow::Result<()> {
    let waiting = view::waiting(batch);
    if waiting.gate == Some(Gate::Complete) {
        let message = waiting.message;
        bail!(
            "batch {} is already complete ({message}): there is nothing to {verb}",
            batch.metadata.name.as_deref().unwrap_or_default()
        );
    }
    Ok(())
}

/// A merge patch of the batch's spec, conditional on the version read, so a
/// change made meanwhile is not overwritten: on a conflict, read again.
async fn patch_batch(
    client: &kube::Client,
    name: &str,
    mut change: impl FnMut(&RolloutBatch) -> anyhow::Result<Option<serde_json::Value>>,
) -> anyhow::Result<Option<(RolloutBatch, RolloutBatch)>> {
    let api: Api<RolloutBatch> = Api::all(client.clone());
    for _ in 0..5 {
        let before = get_batch(client, name).await?;
        let Some(spec) = change(&before)? else {
            return Ok(None);
        };
        let body = json!({"metadata": {"resourceVersion": before.metadata.resource_version}, "spec": spec});
        let params = PatchParams {
            field_manager: Some(FIELD_MANAGER.into()),
            ..Default::default()
        };
        match api.patch(name, &params, &Patch::Merge(&body)).await {
            Ok(after) => return Ok(Some((before, after))),
            Err(kube::Error::Api(s)) if s.code == 409 => continue,
            Err(err) => return Err(err).with_context(|| format!("updating RolloutBatch {name}")),
        }
    }
    bail!("RolloutBatch {name} kept changing while being updated; try again")
}

/// A note when the batch is kept in Git: a change here is undone by the next
/// sync unless it is made there too.
fn gitops_note(batch: &RolloutBatch, field: &str) {
    let labels = batch.metadata.labels.clone().unwrap_or_default();
    let annotations = batch.metadata.annotations.clone().unwrap_or_default();
    let tool = if annotations.contains_key("argocd.argoproj.io/tracking-id")
        || labels.contains_key("argocd.argoproj.io/instance")
    {
        Some("Argo CD")
    } else if labels
        .keys()
        .any(|k| k.starts_with("kustomize.toolkit.fluxcd.io/"))
    {
        Some("Flux")
    } else {
        None
    };
    if let Some(tool) = tool {
        eprintln!(
            "note: {tool} manages this batch: change {field} in Git too, or its next sync undoes this"
        );
    }
}

#[derive(clap::Args, Debug)]
pub struct ApproveArgs {
    /// The RolloutBatch.
    batch: String,
    /// Approve every wave up to this one (from 1); default: one more wave
    /// than is approved now. Approval only ever goes up.
    #[arg(long, value_name = "N")]
    wave: Option<u32>,
    #[command(flatten)]
    cluster: ClusterArgs,
}

/// `approve BATCH [--wave N]`: raises `spec.approvedWaves`.
pub fn approve(args: ApproveArgs) -> anyhow::Result<ExitCode> {
    runtime()?.block_on(async {
        let client = args.cluster.client().await?;
        let name = &args.batch;
        let mut note = None;
        let changed = patch_batch(&client, name, |batch| {
            refuse_complete(batch, "approve")?;
            let total = batch.spec.waves.len() as u32;
            let Some(current) = batch.spec.approved_waves else {
                bail!("batch {name} has no spec.approvedWaves: every wave is approved already");
            };
            let target = args.wave.unwrap_or(current + 1);
            if target == 0 || target > total {
                bail!("batch {name} has {total} waves: --wave must be 1 to {total}");
            }
            if target < current {
                bail!(
                    "batch {name} has {current} waves approved already; approve only raises it (to stop new waves, `{} pause {name}`)",
                    cmd()
                );
            }
            if target == current {
                note = Some(if current >= total {
                    format!("every wave of batch {name} is approved already ({current} of {total})")
                } else {
                    format!("waves 1 to {current} of batch {name} are approved already")
                });
                return Ok(None);
            }
            Ok(Some(json!({"approvedWaves": target})))
        })
        .await?;
        match changed {
            Some((before, after)) => {
                let total = after.spec.waves.len();
                let now = after.spec.approved_waves.unwrap_or_default();
                println!(
                    "batch {name}: waves 1 to {now} of {total} approved (spec.approvedWaves {} → {now})",
                    before.spec.approved_waves.unwrap_or_default()
                );
                gitops_note(&after, "spec.approvedWaves");
            }
            None => println!("{}", note.unwrap_or_default()),
        }
        Ok(ExitCode::SUCCESS)
    })
}

#[derive(clap::Args, Debug)]
pub struct BatchArgs {
    /// The RolloutBatch.
    batch: String,
    #[command(flatten)]
    cluster: ClusterArgs,
}

/// `pause BATCH`: no node starts; probes in flight finish.
pub fn pause(args: BatchArgs) -> anyhow::Result<ExitCode> {
    set_paused(args, true)
}

/// `resume BATCH`: undoes `pause`.
pub fn resume(args: BatchArgs) -> anyhow::Result<ExitCode> {
    set_paused(args, false)
}

fn set_paused(args: BatchArgs, paused: bool) -> anyhow::Result<ExitCode> {
    runtime()?.block_on(async {
        let client = args.cluster.client().await?;
        let name = &args.batch;
        let changed = patch_batch(&client, name, |batch| {
            if paused {
                refuse_complete(batch, "pause")?;
            }
            Ok((batch.spec.paused != paused).then(|| json!({"paused": paused})))
        })
        .await?;
        match (changed, paused) {
            (Some((_, after)), true) => {
                println!(
                    "batch {name} paused: no node starts until it resumes; probes in flight finish. `{} resume {name}` continues.",
                    cmd()
                );
                gitops_note(&after, "spec.paused");
            }
            (Some((_, after)), false) => {
                println!("batch {name} resumed");
                gitops_note(&after, "spec.paused");
            }
            (None, true) => println!("batch {name} is paused already"),
            (None, false) => println!("batch {name} is not paused"),
        }
        Ok(ExitCode::SUCCESS)
    })
}

#[derive(clap::Args, Debug)]
pub struct RetryArgs {
    /// Failed or held nodes to send through validation again (fix their
    /// cause first).
    #[arg(required = true, value_name = "NODE")]
    nodes: Vec<String>,
    #[command(flatten)]
    cluster: ClusterArgs,
}

/// `retry NODE...`: sets `gpufleet.io/retry` on failed or held nodes. Every
/// node is checked before any is touched.
pub fn retry(args: RetryArgs) -> anyhow::Result<ExitCode> {
    runtime()?.block_on(async {
        let client = args.cluster.client().await?;
        let api: Api<Node> = Api::all(client.clone());
        let mut problems = Vec::new();
        let mut targets = Vec::new();
        for name in &args.nodes {
            let Some(node) = api
                .get_opt(name)
                .await
                .with_context(|| format!("reading node {name}"))?
            else {
                problems.push(format!("there is no node named {name:?}"));
                continue;
            };
            let view = NodeView::from(&node);
            match view.state {
                None => problems.push(unmanaged(name)),
                Some(state) if !matches!(state, NodeState::Failed | NodeState::Held) => problems
                    .push(format!(
                        "node {name} is {}: only failed or held nodes can be retried",
                        state.as_str()
                    )),
                Some(_) => targets.push(view),
            }
        }
        if !problems.is_empty() {
            bail!(
                "{}{}",
                problems.join("\n"),
                if targets.is_empty() {
                    ""
                } else {
                    "\n(no node was changed)"
                }
            );
        }
        let stamp = Timestamp::now().to_string();
        for view in &targets {
            let body = json!({"metadata": {"annotations": {keys::RETRY: stamp}}});
            let params = PatchParams {
                field_manager: Some(FIELD_MANAGER.into()),
                ..Default::default()
            };
            api.patch(&view.name, &params, &Patch::Merge(&body))
                .await
                .with_context(|| format!("annotating node {}", view.name))?;
            let line = format!(
                "node {}: retry requested (it was {}: {})",
                view.name,
                view.state().as_str(),
                view.reason.as_deref().unwrap_or("no reason recorded")
            );
            println!("{}", gpufleet::view::safe(&line));
        }
        Ok(ExitCode::SUCCESS)
    })
}

fn unmanaged(name: &str) -> String {
    format!(
        "node {name} is not managed by gpufleet: it has no {} label (no rollout has started it)",
        keys::STATE
    )
}

#[derive(clap::Args, Debug)]
pub struct WhyArgs {
    /// The node.
    node: String,
    /// Recent events to show, newest last.
    #[arg(long, default_value_t = 10)]
    events: usize,
    #[command(flatten)]
    cluster: ClusterArgs,
}

/// `why NODE`: the node's state, reason, batch, wave and recent events.
pub fn why(args: WhyArgs) -> anyhow::Result<ExitCode> {
    runtime()?.block_on(async {
        let client = args.cluster.client().await?;
        let name = &args.node;
        let nodes: Api<Node> = Api::all(client.clone());
        let node = nodes
            .get_opt(name)
            .await
            .with_context(|| format!("reading node {name}"))?
            .ok_or_else(|| anyhow!("there is no node named {name:?}"))?;
        let view = NodeView::from(&node);
        // A pending node, or one that failed a static check, has no batch annotation.
        let membership = if view.batch.is_none() { Some(membership(&client, &view).await?) } else { None };
        let events = node_events(&client, name, args.events).await?;
        let mut lines = view::why(&view, membership.as_deref(), &events, Timestamp::now());
        // A tray whose domain is under a rack test: where the test stands.
        if let Some(line) = rack_test_line(&client, &view).await {
            lines.insert(1, line);
        }
        for line in lines {
            println!("{}", gpufleet::view::safe(&line));
        }
        let hint = match view.state {
            Some(NodeState::Failed) => Some(format!("Fix the cause, then `{} retry {name}` sends it through validation again.", cmd())),
            Some(NodeState::Held) => Some(format!(
                "Its domain has too few healthy nodes; once they are fixed and retried it is admitted, or `{} retry {name}`.",
                cmd()
            )),
            _ => None,
        };
        if let Some(hint) = hint {
            println!();
            for line in view::wrap(&hint, view::WIDTH, 0) {
                println!("{}", gpufleet::view::safe(&line));
            }
        }
        Ok(ExitCode::SUCCESS)
    })
}

/// `  rack test   round R, T trays under test` when the node's domain is
/// under a rack test of its batch; `None` otherwise or when the batch or
/// its pool cannot be read (the rest of `why` still helps).
async fn rack_test_line(client: &kube::Client, node: &NodeView) -> Option<String> {
    let batch = Api::<RolloutBatch>::all(client.clone())
        .get_opt(node.batch.as_deref()?)
        .await
        .ok()??;
    let tests = &batch.status.as_ref()?.rack_tests;
    if tests.is_empty() {
        return None;
    }
    let pool = Api::<GpuPool>::all(client.clone())
        .get_opt(&batch.spec.pool_ref)
        .await
        .ok()??;
    let label = &pool.spec.topology.domain_label;
    let domain = node.labels.get(label)?;
    let test = tests.iter().find(|t| t.domain == domain)?;
    let line = match (test.round, test.trays) {
        (_, 0) => "  rack test   its domain's waits for room under maxConcurrent".into(),
        (0, trays) => format!("  rack test   running over its domain's {trays} trays"),
        (round, trays) => {
            format!("  rack test   failed; finding faulty trays: round {round}, {trays} trays")
        }
    };
    Some(match test.bus_bandwidth_gbps {
        Some(bw) => format!("{line}; {bw} GB/s"),
        None => line,
    })
}

/// For a node without a batch annotation: the batch that selects it, or an
/// error when no pool does.
async fn membership(client: &kube::Client, node: &NodeView) -> anyhow::Result<String> {
    // Objects that do not decode are left out: one broken batch must not
    // hide why a node waits.
    let (pools, _) = super::client::list_lenient::<GpuPool>(client).await?;
    let (batches, _) = super::client::list_lenient::<RolloutBatch>(client).await?;
    let pools: Vec<&GpuPool> = pools
        .iter()
        .filter(|p| matches(&p.spec.node_selector, &node.labels))
        .collect();
    if pools.is_empty() && node.state.is_some() {
        return Ok("none: no GpuPool selects it any more".into());
    }
    if pools.is_empty() {
        bail!(
            "node {} is not managed by gpufleet: no GpuPool selects it (no pool's nodeSelector matches its labels)",
            node.name
        );
    }
    // Who claims it, by the planner's own rule: a batch of a pool that
    // selects it, and nobody else (no other pool, no other batch of that
    // pool).
    let claims = |b: &RolloutBatch| Claim {
        name: b.metadata.name.clone().unwrap_or_default(),
        pool: Some(b.spec.pool_ref.clone()),
        selector: b.spec.node_selector.clone(),
    };
    let pool_claims: Vec<Claim> = pools
        .iter()
        .map(|p| Claim {
            name: p.metadata.name.clone().unwrap_or_default(),
            pool: None,
            selector: p.spec.node_selector.clone(),
        })
        .collect();
    let in_batch: Vec<&RolloutBatch> = batches
        .iter()
        .filter(|b| {
            pools
                .iter()
                .any(|p| p.metadata.name.as_deref() == Some(b.spec.pool_ref.as_str()))
        })
        .filter(|b| matches(&b.spec.node_selector, &node.labels))
        .collect();
    let pool_names: Vec<&str> = pools
        .iter()
        .filter_map(|p| p.metadata.name.as_deref())
        .collect();
    let Some(first) = in_batch.first() else {
        return Ok(format!(
            "none: pool {} selects it, but no RolloutBatch does",
            pool_names.join(", ")
        ));
    };
    let name = first.metadata.name.clone().unwrap_or_default();
    let others: Vec<Claim> = in_batch[1..].iter().map(|b| claims(b)).collect();
    let other_pools = pool_claims.iter().filter(|c| c.name != first.spec.pool_ref);
    let rivals = claimants(&first.spec.pool_ref, &node.labels, other_pools, &others);
    Ok(match (rivals.is_empty(), node.state.is_none()) {
        (true, true) => format!("{name} (pending: its wave has not reached it)"),
        (true, false) => name,
        (false, _) => format!(
            "claimed by batch {name} and {}: gpufleet leaves it alone until only one does",
            rivals.join(", ")
        ),
    })
}

/// The newest `limit` events about a node, oldest first.
async fn node_events(
    client: &kube::Client,
    node: &str,
    limit: usize,
) -> anyhow::Result<Vec<EventLine>> {
    let api: Api<Event> = Api::all(client.clone());
    let params = ListParams::default().fields(&format!(
        "involvedObject.kind=Node,involvedObject.name={node}"
    ));
    let events = api
        .list(&params)
        .await
        .context("listing the node's events")?
        .items;
    // Only what gpufleet reported: anyone who can create an Event could
    // otherwise put "NodeAdmitted" lines in `why`.
    let mut lines: Vec<EventLine> = events
        .into_iter()
        .filter(|e| {
            let gpufleet = Some(gpufleet::keys::FIELD_MANAGER);
            e.reporting_component.as_deref() == gpufleet
                || e.source.as_ref().and_then(|s| s.component.as_deref()) == gpufleet
        })
        .map(|e| EventLine {
            at: e
                .series
                .as_ref()
                .and_then(|s| s.last_observed_time.as_ref().map(|t| t.0))
                .or(e.last_timestamp.as_ref().map(|t| t.0))
                .or(e.event_time.as_ref().map(|t| t.0))
                .or(e.first_timestamp.as_ref().map(|t| t.0))
                .or(e.metadata.creation_timestamp.as_ref().map(|t| t.0)),
            type_: e.type_.unwrap_or_default(),
            reason: e.reason.unwrap_or_default(),
            message: e.message.unwrap_or_default().replace('\n', " / "),
        })
        .collect();
    lines.sort_by_key(|e| e.at);
    let skip = lines.len().saturating_sub(limit);
    Ok(lines.split_off(skip))
}

/// Nodes of a batch: those it started, and the others its selector (and
/// its pool's) match.
pub async fn batch_nodes(
    client: &kube::Client,
    batch: &RolloutBatch,
    pool: Option<&GpuPool>,
) -> anyhow::Result<Vec<NodeView>> {
    let name = batch.metadata.name.as_deref().unwrap_or_default();
    let api: Api<Node> = Api::all(client.clone());
    let mut params = ListParams::default();
    if let Some(query) = gpufleet::planner::to_query(&batch.spec.node_selector) {
        params = params.labels(&query);
    }
    let mut seen: BTreeMap<String, NodeView> = BTreeMap::new();
    for node in api
        .list(&params)
        .await
        .context("listing the batch's nodes")?
        .items
    {
        let view = NodeView::from(&node);
        // A node that failed a static check carries no batch annotation.
        let ours = match &view.batch {
            Some(b) => b == name,
            None => pool.is_none_or(|p| matches(&p.spec.node_selector, &view.labels)),
        };
        if ours {
            seen.insert(view.name.to_string(), view);
        }
    }
    Ok(seen.into_values().collect())
}
