//! An in-memory cluster that applies plans the way `act` applies them to the
//! API server: for tests, property tests and benchmarks of the planner, and
//! for previews. Probe pods get their outcome from a callback, as kwok gives
//! them from annotations.
//!
//! [`Sim`] holds one pool and one batch and applies whole plans. [`Cluster`]
//! holds several pools and batches sharing one set of nodes and probe pods:
//! plans are made on caches that may lag behind it, applied one action at a
//! time (or cut short), between writes of other actors.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;

use k8s_openapi::jiff::{SignedDuration, Timestamp};

use crate::api::{GpuPool, RolloutBatch};
use crate::keys;

use super::{
    Action, Claim, NodePatch, NodeView, Plan, ProbePhase, ProbeView, Snapshot, TaintChange,
    TaintView, Termination, plan,
};

/// What a probe pod reports once it has run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Pass,
    Fail {
        exit_code: i32,
        message: String,
    },
    /// Never finishes: the probe times out.
    Hang,
    /// Its pod never starts running (unschedulable, image never pulled):
    /// the run does not count against the node.
    NeverStarts,
    /// Ends with this exit code, every container leaving `message` (a
    /// structured verdict, see `crate::verdict`) as its termination message.
    Verdict {
        exit_code: i32,
        message: String,
    },
}

/// Decides how the probe of a node ends, by node name and attempt.
pub type OutcomeFn = Box<dyn Fn(&str, u32) -> Outcome>;

/// The phase of a pod whose containers all ended with `exit_code`.
fn ended_phase(exit_code: i32) -> ProbePhase {
    if exit_code == 0 {
        ProbePhase::Succeeded
    } else {
        ProbePhase::Failed
    }
}

/// Decides whether a rack test group passes, by its nodes.
pub type GroupFn = Box<dyn Fn(&[String]) -> bool>;
/// Plays NVCRE: the nodes a Certification over these nodes fails.
pub type CertFn = Box<dyn Fn(&[String]) -> Vec<super::FailedNode>>;

/// A simulated cluster holding one pool and one batch.
pub struct Sim {
    pub pool: GpuPool,
    pub batch: RolloutBatch,
    pub snapshot: Snapshot,
    pub now: Timestamp,
    /// Node writes so far, by node.
    pub node_writes: BTreeMap<String, u32>,
    /// Probe pods created so far.
    pub probes_created: u32,
    /// Every action applied, in order.
    pub log: Vec<Action>,
    pub outcome: OutcomeFn,
    /// How a rack test group ends, by its nodes: passes unless this says
    /// false (unset: every group passes).
    pub group_passes: Option<GroupFn>,
    /// Each rack test pod's group, by pod name: its nodes.
    pub group_nodes: BTreeMap<String, Vec<String>>,
    /// Rack test pods never start running (unschedulable, no image).
    pub groups_never_start: bool,
    /// Each Certification's target nodes, by name.
    pub cert_nodes: BTreeMap<String, Vec<String>>,
    /// The nodes NVCRE fails in a Certification over these nodes (unset:
    /// by `group_passes`, a failing group naming all its nodes
    /// `WorkloadFailed`, as NVCRE's intra-rack scale does).
    pub cert_failed: Option<CertFn>,
}

impl Sim {
    /// A cluster where every probe of node `n` attempt `a` ends as `outcome(n, a)`.
    pub fn new(
        pool: GpuPool,
        batch: RolloutBatch,
        snapshot: Snapshot,
        now: Timestamp,
        outcome: impl Fn(&str, u32) -> Outcome + 'static,
    ) -> Self {
        Sim {
            pool,
            batch,
            snapshot,
            now,
            node_writes: BTreeMap::new(),
            probes_created: 0,
            log: Vec::new(),
            outcome: Box::new(outcome),
            group_passes: None,
            group_nodes: BTreeMap::new(),
            groups_never_start: false,
            cert_nodes: BTreeMap::new(),
            cert_failed: None,
        }
    }

    /// Plans at the current time without applying anything.
    pub fn plan(&self) -> Plan {
        plan(&self.pool, &self.batch, &self.snapshot, self.now)
    }

    /// Plans and applies the plan; returns it.
    pub fn step(&mut self) -> Plan {
        let plan = self.plan();
        self.apply(&plan);
        plan
    }

    /// Applies a plan: node patches, probe creations and deletions, status.
    pub fn apply(&mut self, plan: &Plan) {
        let taint = self.pool.spec.onboarding.taint.clone();
        for action in &plan.actions {
            match action {
                Action::PatchNode(patch) => {
                    *self.node_writes.entry(patch.node.clone()).or_default() += 1;
                    if let Some(node) = self
                        .snapshot
                        .nodes
                        .iter_mut()
                        .find(|n| n.name == patch.node)
                    {
                        // Copy-on-write, as the operator's cache replaces a
                        // node's view on every change.
                        apply_patch(
                            Arc::make_mut(node),
                            patch,
                            &taint.key,
                            taint.effect.as_str(),
                        );
                    }
                }
                Action::CreateProbe(req) => {
                    if self.snapshot.probes.iter().all(|p| p.name != req.pod_name) {
                        self.probes_created += 1;
                        if let Some(g) = &req.group {
                            self.group_nodes
                                .insert(req.pod_name.clone(), g.peer_nodes.clone());
                        }
                        let (containers, init_containers) = self.template_containers();
                        self.snapshot.probes.push(new_probe(
                            req,
                            self.batch.metadata.uid.clone(),
                            (containers.len() as u32, init_containers.len() as u32),
                            self.now,
                        ));
                    }
                }
                Action::DeleteProbe { pod_name, run } => self
                    .snapshot
                    .probes
                    .retain(|p| &p.name != pod_name || p.run != *run),
                Action::CreateCertification(req) => {
                    if self
                        .snapshot
                        .certifications
                        .iter()
                        .all(|c| c.name != req.name)
                    {
                        self.cert_nodes.insert(req.name.clone(), req.nodes.clone());
                        self.snapshot.certifications.push(new_certification(
                            req,
                            self.batch.metadata.uid.clone(),
                            self.now,
                        ));
                    }
                }
                Action::DeleteCertification { name } => {
                    self.snapshot.certifications.retain(|c| &c.name != name)
                }
                Action::Event(_) => {}
            }
            self.log.push(action.clone());
        }
        self.batch.status = Some(plan.status.clone());
    }

    /// The names of the pool's probe template's containers and init
    /// containers (see [`template_containers`]).
    pub fn template_containers(&self) -> (Vec<String>, Vec<String>) {
        template_containers(&self.pool)
    }

    /// Runs every probe that has not finished to its outcome, as a kubelet
    /// ends a pod: on a pass every container (init ones first) terminated
    /// with 0 and the pod Succeeded; on a failure the first regular
    /// container exited with the code and the pod Failed.
    pub fn finish_probes(&mut self) {
        let (containers, init_containers) = self.template_containers();
        let ended =
            |name: &String, init: bool, exit_code: i32, message: Option<String>| Termination {
                container: name.clone(),
                init,
                exit_code,
                message,
            };
        for probe in &mut self.snapshot.probes {
            if matches!(probe.phase, ProbePhase::Succeeded | ProbePhase::Failed)
                || probe.batch_uid != self.batch.metadata.uid
            {
                continue;
            }
            let inits = init_containers.iter().map(|c| ended(c, true, 0, None));
            if probe.group.is_some() && self.groups_never_start {
                probe.not_running = Some("ErrImagePull: nccl-tests not found".into());
                continue;
            }
            let outcome = match (&probe.group, &self.group_passes) {
                (Some(_), Some(passes)) => {
                    let nodes = self
                        .group_nodes
                        .get(&probe.name)
                        .cloned()
                        .unwrap_or_default();
                    if passes(&nodes) {
                        Outcome::Pass
                    } else {
                        Outcome::Fail {
                            exit_code: 1,
                            message: "all_reduce_perf: bus bandwidth 190 GB/s, below the floor"
                                .into(),
                        }
                    }
                }
                (Some(_), None) => Outcome::Pass,
                (None, _) => (self.outcome)(&probe.node, probe.attempt),
            };
            if outcome == Outcome::NeverStarts {
                probe.not_running = Some("Unschedulable: 0/1 nodes are available".into());
                continue;
            }
            probe.started_at.get_or_insert(self.now);
            match outcome {
                Outcome::Pass => pass(probe, &containers, &init_containers, self.now),
                Outcome::Fail { exit_code, message } => {
                    probe.phase = ProbePhase::Failed;
                    probe.finished_at = Some(self.now);
                    probe.terminated = inits
                        .chain(std::iter::once(ended(
                            &containers[0],
                            false,
                            exit_code,
                            Some(message),
                        )))
                        .collect();
                }
                Outcome::Verdict { exit_code, message } => {
                    probe.verdict = crate::verdict::read(&message);
                    probe.phase = ended_phase(exit_code);
                    probe.finished_at = Some(self.now);
                    let words = (exit_code != 0).then_some(message);
                    probe.terminated = inits
                        .chain(
                            containers
                                .iter()
                                .map(|c| ended(c, false, exit_code, words.clone())),
                        )
                        .collect();
                }
                Outcome::Hang => probe.phase = ProbePhase::Running,
                Outcome::NeverStarts => {}
            }
        }
    }

    /// Ends every running Certification as NVCRE would (see `cert_failed`).
    pub fn finish_certifications(&mut self) {
        for cert in &mut self.snapshot.certifications {
            if cert.outcome != super::CertOutcome::Running || self.groups_never_start {
                continue;
            }
            let nodes = self.cert_nodes.get(&cert.name).cloned().unwrap_or_default();
            let failed = match (&self.cert_failed, &self.group_passes) {
                (Some(f), _) => f(&nodes),
                (None, Some(passes)) if !passes(&nodes) => nodes
                    .iter()
                    .map(|n| super::FailedNode {
                        name: n.clone(),
                        reason: "WorkloadFailed".into(),
                        message: "all_reduce_perf exited 1".into(),
                    })
                    .collect(),
                (None, _) => Vec::new(),
            };
            cert.outcome = super::CertOutcome::Finished {
                passed: failed.is_empty(),
                message: if failed.is_empty() {
                    "all categories succeeded".into()
                } else {
                    "category communication/nccl-all-reduce failed".into()
                },
                failed,
            };
        }
    }

    /// Moves the clock.
    pub fn advance(&mut self, seconds: i64) {
        self.now += SignedDuration::from_secs(seconds);
    }

    /// Steps until nothing changes and nothing is waiting, finishing probes
    /// and moving the clock to the next requeue between steps. Returns the
    /// number of steps, or `None` if it did not settle within `max_steps`.
    pub fn run(&mut self, max_steps: usize) -> Option<usize> {
        for step in 1..=max_steps {
            let plan = self.step();
            self.finish_probes();
            self.finish_certifications();
            let changed = plan.changes().next().is_some();
            if !changed {
                match plan.requeue_after {
                    Some(after) => self.advance((after.as_secs_f64().ceil() as i64).max(1)),
                    None => return Some(step),
                }
            }
        }
        None
    }

    /// The current state of a node.
    pub fn state(&self, node: &str) -> Option<super::NodeState> {
        self.snapshot
            .nodes
            .iter()
            .find(|n| n.name == node)
            .map(|n| n.state())
    }
}

/// The names of `pool`'s probe template's containers and init containers
/// (one `burn-in` container when the template names none).
pub fn template_containers(pool: &GpuPool) -> (Vec<String>, Vec<String>) {
    let spec = pool
        .spec
        .health_checks
        .probe
        .as_ref()
        .and_then(|p| p.template.spec.as_ref());
    let mut containers: Vec<String> = spec
        .map(|s| s.containers.iter().map(|c| c.name.clone()).collect())
        .unwrap_or_default();
    if containers.is_empty() {
        containers.push("burn-in".into());
    }
    let init = spec
        .and_then(|s| s.init_containers.as_ref())
        .map(|cs| cs.iter().map(|c| c.name.clone()).collect())
        .unwrap_or_default();
    (containers, init)
}

/// A probe pod just after `req` created it, before it runs: of the batch
/// `batch_uid`, with (containers, init containers) from the template.
pub fn new_probe(
    req: &super::ProbeRequest,
    batch_uid: Option<String>,
    (containers, init_containers): (u32, u32),
    now: Timestamp,
) -> ProbeView {
    ProbeView {
        name: req.pod_name.clone(),
        node: req.node.clone(),
        attempt: req.attempt,
        phase: ProbePhase::Pending,
        batch_uid,
        containers,
        init_containers,
        terminated: Vec::new(),
        message: None,
        created: Some(now),
        run: req.run,
        started_at: None,
        finished_at: None,
        not_running: None,
        evicted: false,
        deleting: false,
        verdict: crate::verdict::Read::Absent,
        group: req.group.as_ref().map(|g| g.group.clone()),
    }
}

/// An NVCRE Certification just after `req` created it, running.
pub fn new_certification(
    req: &super::CertRequest,
    batch_uid: Option<String>,
    now: Timestamp,
) -> super::CertView {
    super::CertView {
        name: req.name.clone(),
        group: Some(req.group.clone()),
        batch_uid,
        created: Some(now),
        size: req.nodes.len() as u32,
        deleting: false,
        outcome: super::CertOutcome::Running,
    }
}

/// Ends `probe` as a kubelet ends a pod that passed at `now`: every
/// container (init ones first) terminated with 0, the pod Succeeded.
pub fn pass(
    probe: &mut ProbeView,
    containers: &[String],
    init_containers: &[String],
    now: Timestamp,
) {
    let ended = |name: &String, init: bool| Termination {
        container: name.clone(),
        init,
        exit_code: 0,
        message: None,
    };
    probe.started_at.get_or_insert(now);
    probe.phase = ProbePhase::Succeeded;
    probe.finished_at = Some(now);
    probe.terminated = init_containers
        .iter()
        .map(|c| ended(c, true))
        .chain(containers.iter().map(|c| ended(c, false)))
        .collect();
}

/// Applies one patch to a node view, as the API server would.
pub fn apply_patch(
    node: &mut super::NodeView,
    patch: &NodePatch,
    taint_key: &str,
    taint_effect: &str,
) {
    match (patch.leave_state, patch.state) {
        (true, _) => {}
        (false, Some(state)) => {
            node.state = Some(state);
            node.labels
                .insert(keys::STATE.into(), state.as_str().into());
        }
        (false, None) => {
            node.state = None;
            node.labels.remove(keys::STATE);
        }
    }
    for (key, value) in &patch.annotations {
        let value = value.as_deref();
        match *key {
            keys::BATCH => node.batch = value.map(super::sym),
            keys::BATCH_UID => node.batch_uid = value.map(super::sym),
            keys::WAVE => node.wave = value.and_then(|v| v.parse().ok()),
            keys::SINCE => node.since = value.and_then(|v| v.parse().ok()).into(),
            keys::STARTED => node.started = value.and_then(|v| v.parse().ok()).into(),
            keys::REASON => node.reason = value.map(super::sym),
            keys::ATTEMPT => node.attempt = value.and_then(|v| v.parse().ok()).unwrap_or(0),
            keys::RETRY => node.retry = value.is_some(),
            keys::ADMITTED => node.admitted = value.and_then(|v| v.parse().ok()).into(),
            keys::RECORDED_STATE => node.recorded_state = value.and_then(|v| v.parse().ok()),
            keys::SUSPECT => node.suspect = value.and_then(|v| v.parse().ok()),
            keys::PROBE_MISSES => {
                node.probe_misses = value.and_then(|v| v.parse().ok()).unwrap_or(0)
            }
            keys::VERDICT => node.verdict = value.map(super::sym),
            keys::TAINT => node.taints_added = value.map(super::snapshot::parse_taints),
            _ => {}
        }
    }
    match patch.taint {
        TaintChange::Keep => {}
        TaintChange::Add => {
            if !node.has_taint(taint_key, taint_effect) {
                node.taints.push(TaintView {
                    key: taint_key.into(),
                    value: None,
                    effect: taint_effect.into(),
                    time_added: None,
                });
            }
        }
        TaintChange::Remove if patch.taint_removals.is_empty() => node
            .taints
            .retain(|t| !(t.key == taint_key && t.effect == taint_effect)),
        TaintChange::Remove => node.taints.retain(|t| {
            !patch
                .taint_removals
                .iter()
                .any(|(k, e)| t.key == *k && t.effect == *e)
        }),
    }
}

/// A healthy GB200 compute tray as GPU Feature Discovery and the device
/// plugin report it, in domain `clique`, labelled for pool and batch.
pub fn healthy_node(
    name: &str,
    clique: &str,
    pool_label: &str,
    batch_label: &str,
) -> super::NodeView {
    let mut node = super::NodeView::named(name);
    node.labels = [
        ("gpufleet.io/pool", pool_label),
        ("gpufleet.io/batch", batch_label),
        (keys::GPU_PRODUCT, "NVIDIA-GB200"),
        (keys::GPU_COUNT, "4"),
        (keys::DRIVER_VERSION, "570.133.20"),
        ("nvidia.com/gpu.clique", clique),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    node.conditions.insert("Ready".into(), "True".into());
    node.ready = Some(true);
    node.allocatable_gpus = Some(4);
    node.allocatable_gpus_raw = Some("4".into());
    node
}

/// `domains` NVL72 domains of `per_domain` healthy nodes each, named
/// `{prefix}-d{domain:03}-n{node:02}` in cliques `{prefix}-clique-{domain:03}`.
pub fn fleet(
    prefix: &str,
    domains: usize,
    per_domain: usize,
    pool_label: &str,
    batch_label: &str,
) -> Vec<super::NodeView> {
    (0..domains)
        .flat_map(|d| {
            (0..per_domain).map(move |n| {
                healthy_node(
                    &format!("{prefix}-d{d:03}-n{n:02}"),
                    &format!("{prefix}-clique-{d:03}"),
                    pool_label,
                    batch_label,
                )
            })
        })
        .collect()
}

/// Node views by name, as a node cache holds them.
pub type NodeMap = BTreeMap<String, Arc<NodeView>>;

/// Probe pods by name.
pub type PodMap = BTreeMap<String, PodRecord>;

/// A pod in a [`Cluster`]'s probe namespace: what the planner reads of it,
/// and the `gpufleet.io/batch` annotation the operator's snapshot selects a
/// batch's pods by.
#[derive(Clone, Debug, PartialEq)]
pub struct PodRecord {
    pub view: ProbeView,
    pub batch: Option<String>,
    /// The change that created it: tells apart two pods of one name.
    pub created_seq: u64,
    /// The change that ended it (Succeeded or Failed).
    pub ended_seq: Option<u64>,
}

/// How a node patch reaches the API server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Write {
    /// As `act` writes today: a merge patch of the state label and the
    /// annotations onto whatever node has the name now; a taint change is
    /// worked out against the node as it is at write time (a conflict on the
    /// cached `resourceVersion` makes `act` read the node afresh and retry).
    Merge,
    /// Only onto the node at the version the plan read, as a precondition on
    /// `resourceVersion` that nothing retries: a node changed since is a
    /// conflict, and nothing is written.
    Conditional,
}

/// What one action did to a [`Cluster`].
#[derive(Clone, Debug, PartialEq)]
pub enum Applied {
    /// A node was patched: how it was, and how it is.
    Node {
        before: Arc<NodeView>,
        after: Arc<NodeView>,
    },
    /// No node of that name.
    NodeGone,
    /// [`Write::Conditional`]: the node changed since the plan read it.
    Conflict,
    ProbeCreated,
    /// A pod of that name exists already (AlreadyExists).
    ProbeExists,
    ProbeDeleted,
    /// No pod of that name (NotFound).
    ProbeAbsent,
    /// An event: nothing in the cluster changes.
    Nothing,
}

/// What a reconcile reads: the node and pod caches as of some point of the
/// cluster's history.
#[derive(Clone, Debug, Default)]
pub struct Cache {
    pub nodes: NodeMap,
    pub pods: PodMap,
    /// The last node event the node cache holds.
    pub node_seq: u64,
    /// The last pod event the pod cache holds.
    pub pod_seq: u64,
}

/// How many past states of the caches a [`Cluster`] keeps, for plans made
/// on a lagging cache.
const HISTORY: usize = 16;

/// One simulated cluster shared by several pools and batches: live nodes and
/// probe pods, changed one action (or one foreign write) at a time, each
/// change numbered (the number is also the object's `resourceVersion`).
/// Caches that lag behind the live cluster are taken from its recent
/// history: a node cache never lags behind gpufleet's own node writes (the
/// operator waits until the watch delivers them, and the watch delivers in
/// order), a pod cache may lag behind anything (the operator only remembers
/// its own pod writes to avoid repeating them).
pub struct Cluster {
    pub pools: Vec<GpuPool>,
    pub batches: Vec<RolloutBatch>,
    pub now: Timestamp,
    nodes: NodeMap,
    pods: PodMap,
    seq: u64,
    node_history: VecDeque<(u64, NodeMap)>,
    pod_history: VecDeque<(u64, PodMap)>,
    /// The change number of gpufleet's last node write.
    own_node_write: u64,
}

impl Cluster {
    pub fn new(
        pools: Vec<GpuPool>,
        batches: Vec<RolloutBatch>,
        nodes: impl IntoIterator<Item = NodeView>,
        now: Timestamp,
    ) -> Self {
        let mut cluster = Cluster {
            pools,
            batches,
            now,
            nodes: BTreeMap::new(),
            pods: BTreeMap::new(),
            seq: 0,
            node_history: VecDeque::new(),
            pod_history: VecDeque::new(),
            own_node_write: 0,
        };
        for node in nodes {
            cluster.add_node(node);
        }
        // No cache starts before the nodes registered.
        cluster.node_history.clear();
        cluster
            .node_history
            .push_back((cluster.seq, cluster.nodes.clone()));
        cluster.pod_history.push_back((cluster.seq, PodMap::new()));
        cluster
    }

    /// The live nodes.
    pub fn nodes(&self) -> &NodeMap {
        &self.nodes
    }

    /// The live node of this name.
    pub fn node(&self, name: &str) -> Option<&Arc<NodeView>> {
        self.nodes.get(name)
    }

    /// The live pods.
    pub fn pods(&self) -> &PodMap {
        &self.pods
    }

    /// The number of the last change.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// The number of the last node change.
    pub fn node_seq(&self) -> u64 {
        self.node_history.back().map_or(0, |(seq, _)| *seq)
    }

    /// The number of the last pod change.
    pub fn pod_seq(&self) -> u64 {
        self.pod_history.back().map_or(0, |(seq, _)| *seq)
    }

    /// The pool of batch `b`.
    pub fn pool_of(&self, b: usize) -> Option<&GpuPool> {
        let name = &self.batches[b].spec.pool_ref;
        self.pools
            .iter()
            .find(|p| p.metadata.name.as_ref() == Some(name))
    }

    fn node_changed(&mut self) {
        self.seq += 1;
        self.node_history.push_back((self.seq, self.nodes.clone()));
        if self.node_history.len() > HISTORY {
            self.node_history.pop_front();
        }
    }

    fn pods_changed(&mut self) {
        self.seq += 1;
        self.pod_history.push_back((self.seq, self.pods.clone()));
        if self.pod_history.len() > HISTORY {
            self.pod_history.pop_front();
        }
    }

    /// Stores a changed node under the next change number.
    fn put_node(&mut self, mut node: NodeView) -> Arc<NodeView> {
        node.resource_version = Some(compact_str::format_compact!("{}", self.seq + 1));
        let node = Arc::new(node);
        self.nodes.insert(node.name.to_string(), node.clone());
        self.node_changed();
        node
    }

    /// Registers a node (replacing none: remove the old one first). A node
    /// without a creation time is created now.
    pub fn add_node(&mut self, mut node: NodeView) -> Arc<NodeView> {
        if node.created.is_none() {
            node.created = self.now.into();
        }
        node.state = node.labels.get(keys::STATE).and_then(|s| s.parse().ok());
        self.put_node(node)
    }

    /// Deletes a node; its pods stay, as they do until the pod garbage
    /// collector notices.
    pub fn remove_node(&mut self, name: &str) -> Option<Arc<NodeView>> {
        let node = self.nodes.remove(name)?;
        self.node_changed();
        Some(node)
    }

    /// Someone else writes a node: `edit` changes its view (the parsed state
    /// follows the `gpufleet.io/state` label). A write that changes nothing
    /// is no change, as with the API server. Returns the node before and
    /// after, if it exists.
    pub fn edit_node(
        &mut self,
        name: &str,
        edit: impl FnOnce(&mut NodeView),
    ) -> Option<(Arc<NodeView>, Arc<NodeView>)> {
        let before = self.nodes.get(name)?.clone();
        let mut node = (*before).clone();
        edit(&mut node);
        node.state = node.labels.get(keys::STATE).and_then(|s| s.parse().ok());
        if node == *before {
            return Some((before.clone(), before));
        }
        let after = self.put_node(node);
        Some((before, after))
    }

    /// The caches as they were `node_lag` node changes and `pod_lag` pod
    /// changes ago, as far back as the cluster remembers; the node cache
    /// never from before gpufleet's last node write.
    pub fn cache(&self, node_lag: usize, pod_lag: usize) -> Cache {
        let (node_seq, nodes) = self
            .node_history
            .iter()
            .rev()
            .take(node_lag + 1)
            .take_while(|(seq, _)| *seq >= self.own_node_write)
            .last()
            .or(self.node_history.back())
            .cloned()
            .unwrap_or_default();
        let back = pod_lag.min(self.pod_history.len().saturating_sub(1));
        let (pod_seq, pods) = self
            .pod_history
            .iter()
            .nth_back(back)
            .cloned()
            .unwrap_or_default();
        Cache {
            nodes,
            pods,
            node_seq,
            pod_seq,
        }
    }

    /// The planner's snapshot for batch `b` from `cache`, built as the
    /// operator builds it (`operator::observe::snapshot`): every node of the
    /// pool and any node naming the batch, the batch's pods and any pod at
    /// the name of a probe one of its validating nodes waits for, and every
    /// other pool and batch as a claim. `None` when the batch's pool is gone.
    pub fn snapshot(&self, b: usize, cache: &Cache) -> Option<Snapshot> {
        let pool = self.pool_of(b)?;
        let batch = &self.batches[b];
        let batch_name = batch.metadata.name.as_deref().unwrap_or_default();
        let pool_name = pool.metadata.name.as_deref().unwrap_or_default();
        let nodes: Vec<Arc<NodeView>> = cache
            .nodes
            .values()
            .filter(|n| {
                super::matches(&pool.spec.node_selector, &n.labels)
                    || n.batch.as_deref() == Some(batch_name)
            })
            .cloned()
            .collect();
        let awaited: BTreeSet<String> = nodes
            .iter()
            .filter(|n| {
                n.batch.as_deref() == Some(batch_name)
                    && n.state == Some(super::NodeState::Validating)
            })
            .map(|n| super::awaited_probe(n))
            .collect();
        let probes = cache
            .pods
            .values()
            .filter(|p| p.batch.as_deref() == Some(batch_name) || awaited.contains(&p.view.name))
            .map(|p| p.view.clone())
            .collect();
        let other_pools = self
            .pools
            .iter()
            .filter(|p| p.metadata.name.as_deref() != Some(pool_name))
            .map(|p| Claim {
                name: p.metadata.name.clone().unwrap_or_default(),
                pool: None,
                selector: p.spec.node_selector.clone(),
            })
            .collect();
        let other_batches = self
            .batches
            .iter()
            .filter(|o| o.metadata.name.as_deref() != Some(batch_name))
            .map(|o| Claim {
                name: o.metadata.name.clone().unwrap_or_default(),
                pool: Some(o.spec.pool_ref.clone()),
                selector: o.spec.node_selector.clone(),
            })
            .collect();
        Some(Snapshot {
            nodes,
            probes,
            other_pools,
            other_batches,
            probe_rejection: None,
            certifications: Vec::new(),
        })
    }

    /// Plans batch `b` on `snapshot` at the cluster's time.
    pub fn plan(&self, b: usize, snapshot: &Snapshot) -> Option<Plan> {
        let pool = self.pool_of(b)?;
        Some(plan(pool, &self.batches[b], snapshot, self.now))
    }

    /// A plan's writes in the order `act` sends them: node patches that do
    /// not enter validation, then those that do (so the cluster never shows
    /// more nodes validating than the caps allow), then probe creations, then
    /// deletions. Events change nothing and are left out.
    pub fn writes_in_order(plan: &Plan) -> Vec<&Action> {
        let entering = |a: &Action| matches!(a, Action::PatchNode(p) if p.state == Some(super::NodeState::Validating));
        let mut writes: Vec<&Action> = plan
            .actions
            .iter()
            .filter(|a| matches!(a, Action::PatchNode(_)) && !entering(a))
            .collect();
        writes.extend(plan.actions.iter().filter(|a| entering(a)));
        writes.extend(
            plan.actions
                .iter()
                .filter(|a| matches!(a, Action::CreateProbe(_))),
        );
        writes.extend(
            plan.actions
                .iter()
                .filter(|a| matches!(a, Action::DeleteProbe { .. })),
        );
        writes
    }

    /// Applies one action of batch `b`'s plan, made from `read`, to the live
    /// cluster.
    pub fn apply(&mut self, b: usize, action: &Action, write: Write, read: &Snapshot) -> Applied {
        match action {
            Action::PatchNode(patch) => {
                let Some(before) = self.nodes.get(&patch.node).cloned() else {
                    return Applied::NodeGone;
                };
                if write == Write::Conditional {
                    let read_version = read
                        .nodes
                        .iter()
                        .find(|n| n.name == patch.node)
                        .map(|n| n.resource_version.clone());
                    if read_version.is_some_and(|v| v != before.resource_version) {
                        return Applied::Conflict;
                    }
                }
                let Some(pool) = self.pool_of(b) else {
                    return Applied::Nothing;
                };
                let taint = pool.spec.onboarding.taint.clone();
                let mut node = (*before).clone();
                apply_patch(&mut node, patch, &taint.key, taint.effect.as_str());
                let after = self.put_node(node);
                self.own_node_write = self.seq;
                Applied::Node { before, after }
            }
            Action::CreateProbe(req) => {
                if self.pods.contains_key(&req.pod_name) {
                    return Applied::ProbeExists;
                }
                let containers = self
                    .pool_of(b)
                    .and_then(|p| p.spec.health_checks.probe.as_ref())
                    .and_then(|p| p.template.spec.as_ref())
                    .map(|s| {
                        (
                            s.containers.len().max(1) as u32,
                            s.init_containers.as_ref().map_or(0, |c| c.len() as u32),
                        )
                    })
                    .unwrap_or((1, 0));
                let batch = &self.batches[b];
                let record = PodRecord {
                    view: ProbeView {
                        // This cluster's kubelets start a pod at once.
                        started_at: Some(self.now),
                        ..new_probe(req, batch.metadata.uid.clone(), containers, self.now)
                    },
                    batch: batch.metadata.name.clone(),
                    created_seq: self.seq + 1,
                    ended_seq: None,
                };
                self.pods.insert(req.pod_name.clone(), record);
                self.pods_changed();
                Applied::ProbeCreated
            }
            Action::DeleteProbe { pod_name, run } => {
                // As the operator deletes: by a label naming the pod and its
                // run, so a later run's pod at the name stays.
                if self.pods.get(pod_name).is_none_or(|p| p.view.run != *run) {
                    return Applied::ProbeAbsent;
                }
                self.pods.remove(pod_name);
                self.pods_changed();
                Applied::ProbeDeleted
            }
            // This cluster runs no NVCRE: its pools use the built-in test.
            Action::Event(_)
            | Action::CreateCertification(_)
            | Action::DeleteCertification { .. } => Applied::Nothing,
        }
    }

    /// Writes batch `b`'s status, as the operator does after acting.
    pub fn set_status(&mut self, b: usize, plan: &Plan) {
        self.batches[b].status = Some(plan.status.clone());
    }

    /// Ends the pods that have not ended and whose node exists, each as
    /// `outcome` says (a pod that hangs keeps running, and is asked again
    /// next time), as a kubelet ends them: on a pass every container exited
    /// 0 and the pod Succeeded; on a failure its first container exited with
    /// the code and the pod Failed. Returns the pods that ended, as they
    /// ended, each ending a change of its own.
    pub fn finish_probes(
        &mut self,
        mut outcome: impl FnMut(&ProbeView) -> Outcome,
    ) -> Vec<ProbeView> {
        let names: Vec<String> = self
            .pods
            .values()
            .filter(|p| !matches!(p.view.phase, ProbePhase::Succeeded | ProbePhase::Failed))
            .filter(|p| self.nodes.contains_key(&p.view.node))
            .map(|p| p.view.name.to_string())
            .collect();
        let mut ended = Vec::new();
        for name in names {
            let Some(record) = self.pods.get_mut(&name) else {
                continue;
            };
            let probe = &mut record.view;
            let done = |container: u32, exit_code: i32| Termination {
                container: if container == 0 {
                    "burn-in".to_string()
                } else {
                    format!("c{container}")
                },
                init: false,
                exit_code,
                message: (exit_code != 0).then(|| "failed".to_string()),
            };
            match outcome(probe) {
                Outcome::Pass => {
                    probe.phase = ProbePhase::Succeeded;
                    probe.finished_at = Some(self.now);
                    probe.terminated = (0..probe.containers).map(|c| done(c, 0)).collect();
                }
                Outcome::Fail { exit_code, message } => {
                    probe.phase = ProbePhase::Failed;
                    probe.finished_at = Some(self.now);
                    let mut failed = done(0, exit_code);
                    failed.message = Some(message);
                    probe.terminated = vec![failed];
                }
                Outcome::Verdict { exit_code, message } => {
                    probe.verdict = crate::verdict::read(&message);
                    probe.phase = ended_phase(exit_code);
                    probe.finished_at = Some(self.now);
                    probe.terminated = (0..probe.containers).map(|c| done(c, exit_code)).collect();
                }
                Outcome::NeverStarts => {
                    if probe.started_at.take().is_some() {
                        self.pods_changed();
                    }
                    continue;
                }
                Outcome::Hang => {
                    if probe.phase != ProbePhase::Running {
                        probe.phase = ProbePhase::Running;
                        self.pods_changed();
                    }
                    continue;
                }
            }
            ended.push(probe.clone());
            record.ended_seq = Some(self.seq + 1);
            self.pods_changed();
        }
        ended
    }

    /// Moves the clock.
    pub fn advance(&mut self, seconds: i64) {
        self.now += SignedDuration::from_secs(seconds);
    }
}
