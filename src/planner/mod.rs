//! The rollout planner: a pure function from (pool, batch, observed snapshot,
//! now) to the actions to take, the batch's new status and when to look
//! again. No client, no clock, no randomness, no I/O: every rollout rule
//! lives here and is tested here.
//!
//! A node's way through a rollout is `pending → validating → soaking → ready`,
//! or `failed`, or `held` when its domain has too few healthy nodes. Writes
//! per node from pending to ready: one to start it (state label, onboarding
//! taint, batch/wave/since annotations), one when its probe passed, one to
//! admit it (taint removed). Without a probe, two.

mod conditions;
mod health;
mod pool;
pub mod preview;
mod selector;
pub mod sim;
mod snapshot;
mod waves;

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use rustc_hash::FxHashMap;

use crate::api::{GpuPool, NodeCounts, RolloutBatch, RolloutBatchStatus, WaveStatus};
use crate::keys;

pub use conditions::{condition, is_true};
pub use health::{Failure, FailureCategory, compare_versions, static_failure};
pub use pool::{Breaker, PoolPlan, breaker, plan_pool};
pub use selector::{matches, to_query};
pub use snapshot::{Claim, NodeState, NodeView, ProbePhase, ProbeView, Snapshot, TaintView};
use waves::domain_key_ref;
pub use waves::{domain_key, failure_budget};

/// Condition types on a RolloutBatch.
pub mod condition_types {
    /// Every wave is done.
    pub const READY: &str = "Ready";
    /// Work is in progress.
    pub const RECONCILING: &str = "Reconciling";
    /// Waiting on a person; the reason says why.
    pub const STALLED: &str = "Stalled";
    /// Some nodes are claimed by two batches or two pools and left alone.
    pub const NODE_CONFLICTS: &str = "NodeConflicts";
}
use condition_types::*;

/// At most this many node names go into one condition message.
const MAX_NAMED_NODES: usize = 10;

/// What the planner decided.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    /// The actions, in the order to apply them: node patches first, then
    /// probe creations, then probe deletions, then events.
    pub actions: Vec<Action>,
    /// The batch's new status.
    pub status: RolloutBatchStatus,
    /// When to plan again at the latest, if something will change by itself
    /// (a soak ending, a probe deadline, the breaker window).
    pub requeue_after: Option<Duration>,
}

impl Plan {
    /// The node patches of this plan.
    pub fn node_patches(&self) -> impl Iterator<Item = &NodePatch> {
        self.actions.iter().filter_map(|a| match a {
            Action::PatchNode(p) => Some(p),
            _ => None,
        })
    }

    /// Actions other than events: what changes the cluster.
    pub fn changes(&self) -> impl Iterator<Item = &Action> {
        self.actions
            .iter()
            .filter(|a| !matches!(a, Action::Event(_)))
    }
}

/// One thing to do.
#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    /// Patch one node's state label, annotations and onboarding taint.
    PatchNode(NodePatch),
    /// Create the probe pod of a node for an attempt.
    CreateProbe(ProbeRequest),
    /// Delete a probe pod (read, stale or orphaned).
    DeleteProbe { pod_name: String },
    /// Record an event.
    Event(Event),
}

/// A change to one node, applied as one patch.
#[derive(Clone, Debug, PartialEq)]
pub struct NodePatch {
    pub node: String,
    /// The new `gpufleet.io/state` label; `None` removes it (pending).
    pub state: Option<NodeState>,
    /// Annotations to set (`Some`) or remove (`None`).
    pub annotations: BTreeMap<&'static str, Option<String>>,
    /// What to do with the pool's onboarding taint.
    pub taint: TaintChange,
    /// Set when this patch fails or holds the node: why, for metrics.
    pub failure: Option<FailureCategory>,
}

/// What a patch does to the onboarding taint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TaintChange {
    Keep,
    Add,
    Remove,
}

/// A probe pod to create.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProbeRequest {
    pub pod_name: String,
    pub node: String,
    pub attempt: u32,
}

/// Where an event goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EventTarget {
    Batch,
    Pool,
    Node(String),
}

/// An event to record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    pub target: EventTarget,
    pub warning: bool,
    /// One CamelCase word.
    pub reason: &'static str,
    pub message: String,
}

/// The name of a node's probe pod for an attempt: deterministic, so a
/// restarted operator finds the pod it made instead of making a second one.
pub fn probe_pod_name(node: &str, attempt: u32) -> String {
    let name = format!("gpufleet-probe-{node}-{attempt}");
    if name.len() <= 253 {
        return name;
    }
    // FNV-1a keeps long names unique without a dependency.
    let hash = node.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    format!("gpufleet-probe-{}-{hash:016x}-{attempt}", &node[..200])
}

/// Plans one batch of one pool.
pub fn plan(pool: &GpuPool, batch: &RolloutBatch, snapshot: &Snapshot, now: Timestamp) -> Plan {
    Planner::new(pool, batch, snapshot, now).run()
}

/// One member node of the batch, and what this plan does to it.
struct Member<'a> {
    view: &'a NodeView,
    wave: usize,
    /// The state after this plan's decisions so far.
    state: NodeState,
    /// `gpufleet.io/retry` is on the node.
    retry: bool,
    /// Between start and verdict, and the onboarding taint is missing.
    untainted: bool,
    /// Known to pass the static checks (they depend on the node alone,
    /// which a plan does not change); checked up front for nodes in
    /// progress, whose checks every plan repeats.
    healthy: bool,
    /// Soaking and its soak is over (or held): passed, waiting for its domain.
    passed: bool,
    /// Boxed: most members have none, and the planner makes several passes
    /// over all members, which a small `Member` keeps fast.
    patch: Option<Box<NodePatch>>,
}

/// A domain's facts, gathered in the one pass over the snapshot.
#[derive(Default)]
struct Group {
    /// Its members in the batch.
    members: u32,
    /// Ready nodes of this domain in the whole pool (any batch).
    ready_in_pool: u32,
    /// The lowest `gpufleet.io/wave` of its members this batch started.
    started_in: Option<u32>,
}

/// Groups by domain key. Keys are copied once per domain: looking one up
/// then compares it with a key in the map's own (small, cached) memory
/// rather than with a label of some node far away in memory.
#[derive(Default)]
struct Groups {
    /// Keyed with FxHash: the planner hashes one key per node, and SipHash,
    /// the standard map's default, took about 10 ms of a 137,500-node plan
    /// (BENCHMARKS.md). Its defence against crafted keys is not needed:
    /// domain keys are node labels, set by the cluster's own components.
    index: FxHashMap<String, usize>,
    list: Vec<Group>,
}

impl Groups {
    /// The index of the group of `key`, made if new.
    fn get(&mut self, key: Cow<str>) -> usize {
        match self.index.get(key.as_ref()) {
            Some(&g) => g,
            None => {
                self.index.insert(key.into_owned(), self.list.len());
                self.list.push(Group::default());
                self.list.len() - 1
            }
        }
    }
}

/// A member before it takes its place: what later passes need of it,
/// copied while the node is in the cache.
#[derive(Clone, Copy)]
struct Candidate<'a> {
    /// Its group in [`Groups`].
    group: u32,
    name: (u128, u128),
    view: &'a NodeView,
    state: NodeState,
    retry: bool,
    untainted: bool,
    healthy: bool,
}

/// The first 32 bytes of a name, zero-padded, as two big-endian numbers.
/// Wherever two prefixes differ, they order as the names do; where they are
/// equal, the names decide.
fn name_prefix(name: &str) -> (u128, u128) {
    let mut prefix = [0u8; 32];
    let n = name.len().min(32);
    prefix[..n].copy_from_slice(&name.as_bytes()[..n]);
    let (high, low) = prefix.split_at(16);
    (
        u128::from_be_bytes(high.try_into().expect("16 bytes")),
        u128::from_be_bytes(low.try_into().expect("16 bytes")),
    )
}

struct Domain {
    key: String,
    members: Vec<usize>,
    /// Ready nodes of this domain in the whole pool (any batch).
    ready_in_pool: u32,
}

struct Planner<'a> {
    pool: &'a GpuPool,
    batch: &'a RolloutBatch,
    snapshot: &'a Snapshot,
    now: Timestamp,
    members: Vec<Member<'a>>,
    /// By place in `snapshot.nodes`: is that node a member?
    is_member: Vec<bool>,
    domains: Vec<Domain>,
    wave_count: usize,
    /// Nodes claimed twice: name, and who else claims them.
    conflicts: Vec<(String, String)>,
    probes: HashMap<&'a str, Vec<&'a ProbeView>>,
    /// Nodes of the pool in validation for other batches.
    validating_elsewhere: u32,
    breaker: Breaker,
    creates: Vec<ProbeRequest>,
    deletes: BTreeSet<String>,
    events: Vec<Event>,
    wake: Option<Timestamp>,
}

impl<'a> Planner<'a> {
    fn new(
        pool: &'a GpuPool,
        batch: &'a RolloutBatch,
        snapshot: &'a Snapshot,
        now: Timestamp,
    ) -> Self {
        let pool_name = pool.metadata.name.as_deref().unwrap_or_default();
        let pool_spec = &pool.spec;
        let batch_name = batch.metadata.name.as_deref().unwrap_or_default();
        let domain_label = &pool_spec.topology.domain_label;

        // One pass over the snapshot reads all the plan needs from each
        // node's labels, name and annotations while they are in the CPU's
        // cache: over a large pool they do not all fit, and every further
        // pass over them would cost a trip to memory per node.
        //
        // Membership: batch selector AND pool selector, claimed by nobody
        // else. `is_member` marks members by their place in the snapshot;
        // node names are unique (the API server's key), so this is
        // membership by name without hashing every member's name.
        // Members are grouped by domain key, with their domain's ready nodes
        // (in the whole pool, any batch) and the lowest wave this batch
        // started any of them in.
        let mut pool_nodes: Vec<&NodeView> = Vec::new();
        let mut is_member = vec![false; snapshot.nodes.len()];
        let mut conflicts = Vec::new();
        let mut groups = Groups::default();
        let mut candidates: Vec<Candidate> = Vec::new();
        for (i, node) in snapshot.nodes.iter().enumerate() {
            if node.deleting || !matches(&pool_spec.node_selector, &node.labels) {
                continue;
            }
            pool_nodes.push(node);
            let state = node.state();
            let in_batch = matches(&batch.spec.node_selector, &node.labels);
            if !in_batch && state != NodeState::Ready {
                continue;
            }
            let g = groups.get(domain_key_ref(domain_label, &node.name, &node.labels));
            let group = &mut groups.list[g];
            if state == NodeState::Ready {
                group.ready_in_pool += 1;
            }
            if !in_batch {
                continue;
            }
            let mut claimants: Vec<String> = snapshot
                .other_pools
                .iter()
                .filter(|c| matches(&c.selector, &node.labels))
                .map(|c| format!("pool {}", c.name))
                .collect();
            claimants.extend(
                snapshot
                    .other_batches
                    .iter()
                    .filter(|c| {
                        c.pool.as_deref() == Some(pool_name) && matches(&c.selector, &node.labels)
                    })
                    .map(|c| format!("batch {}", c.name)),
            );
            if !claimants.is_empty() {
                claimants.sort();
                conflicts.push((node.name.clone(), claimants.join(", ")));
                continue;
            }
            is_member[i] = true;
            group.members += 1;
            if let (true, Some(wave)) = (
                state != NodeState::Pending && node.batch.as_deref() == Some(batch_name),
                node.wave,
            ) {
                group.started_in = Some(group.started_in.map_or(wave, |w| w.min(wave)));
            }
            let taint = &pool_spec.onboarding.taint;
            let held_back = matches!(
                state,
                NodeState::Validating | NodeState::Soaking | NodeState::Held
            );
            candidates.push(Candidate {
                group: g as u32,
                name: name_prefix(&node.name),
                view: node,
                state,
                retry: node.retry,
                untainted: held_back && !node.has_taint(&taint.key, taint.effect.as_str()),
                healthy: held_back && static_failure(pool_spec, node).is_none(),
            });
        }
        conflicts.sort();

        // Domains, ordered by key; members by (domain key, name): the
        // domains with members sorted by key, their members placed in that
        // order (keeping input order), then each domain's few members sorted
        // by name. The same order as one stable sort of all members by
        // (key, name), with far fewer string comparisons.
        let Groups { index, list } = groups;
        let mut keys: Vec<(String, usize)> = index
            .into_iter()
            .filter(|&(_, g)| list[g].members > 0)
            .collect();
        keys.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        let mut start = vec![0usize; list.len()];
        let mut next = 0;
        for &(_, g) in &keys {
            start[g] = next;
            next += list[g].members as usize;
        }
        let mut placed: Vec<Option<Candidate>> = vec![None; candidates.len()];
        for c in candidates {
            let at = &mut start[c.group as usize];
            placed[*at] = Some(c);
            *at += 1;
        }
        let mut placed: Vec<Candidate> = placed.into_iter().flatten().collect();
        let mut domains: Vec<Domain> = Vec::with_capacity(keys.len());
        let mut started_in: Vec<Option<u32>> = Vec::with_capacity(keys.len());
        let mut at = 0;
        for (key, g) in keys {
            let size = list[g].members as usize;
            // Stable: nodes of the same name keep their input order.
            placed[at..at + size].sort_by(|a, b| {
                a.name
                    .cmp(&b.name)
                    .then_with(|| a.view.name.cmp(&b.view.name))
            });
            domains.push(Domain {
                ready_in_pool: list[g].ready_in_pool,
                key,
                members: (at..at + size).collect(),
            });
            started_in.push(list[g].started_in);
            at += size;
        }
        let mut members: Vec<Member> = placed
            .into_iter()
            .map(|c| Member {
                view: c.view,
                wave: 0,
                state: c.state,
                retry: c.retry,
                untainted: c.untainted,
                healthy: c.healthy,
                passed: false,
                patch: None,
            })
            .collect();

        // Waves: natural assignment, then domains already started stay put.
        let wave_specs = &batch.spec.waves;
        let wave_count = wave_specs.len().max(1);
        let sizes: Vec<u32> = domains.iter().map(|d| d.members.len() as u32).collect();
        let targets = waves::raw_targets(wave_specs, members.len() as u32);
        let natural = waves::assign(
            &sizes,
            if targets.is_empty() {
                &[u32::MAX]
            } else {
                &targets
            },
        );
        for (d, domain) in domains.iter().enumerate() {
            let wave = started_in[d]
                .map(|w| (w.max(1) as usize - 1).min(wave_count - 1))
                .unwrap_or(natural[d]);
            for &m in &domain.members {
                members[m].wave = wave;
            }
        }

        let mut probes: HashMap<&str, Vec<&ProbeView>> = HashMap::new();
        for probe in &snapshot.probes {
            probes.entry(probe.node.as_str()).or_default().push(probe);
        }
        let validating_elsewhere = snapshot
            .nodes
            .iter()
            .zip(&is_member)
            .filter(|(n, member)| {
                !**member
                    && n.state() == NodeState::Validating
                    && !n.deleting
                    && matches(&pool_spec.node_selector, &n.labels)
            })
            .count() as u32;
        let breaker = breaker(pool_spec, &pool_nodes, now);

        Planner {
            pool,
            batch,
            snapshot,
            now,
            members,
            is_member,
            domains,
            wave_count,
            conflicts,
            probes,
            validating_elsewhere,
            breaker,
            creates: Vec::new(),
            deletes: BTreeSet::new(),
            events: Vec::new(),
            wake: None,
        }
    }

    fn run(mut self) -> Plan {
        let departed = self.departed();
        self.handle_retries();
        self.restore_taints();
        for m in 0..self.members.len() {
            match self.members[m].state {
                NodeState::Validating => self.check_validating(m),
                NodeState::Soaking | NodeState::Held => self.check_soaking_or_held(m),
                _ => {}
            }
        }
        self.delete_stray_probes();
        // Admitting a domain can complete a wave and open the next, whose
        // nodes may then start (and, without probe or soak, be admitted) in
        // the same plan: repeat until nothing moves.
        let mut gate;
        loop {
            let before = self.progress();
            gate = self.start_nodes();
            self.admit_domains();
            if self.progress() == before {
                break;
            }
        }
        let mut plan = self.finish(gate);
        // Released nodes go first, with the other node patches.
        let at = plan
            .actions
            .iter()
            .position(|a| !matches!(a, Action::PatchNode(_)))
            .unwrap_or(plan.actions.len());
        plan.actions
            .splice(at..at, departed.into_iter().map(Action::PatchNode));
        plan
    }

    /// A fingerprint of how far this plan has moved the members.
    fn progress(&self) -> (usize, usize) {
        self.members.iter().fold((0, 0), |(moved, decided), m| {
            (
                moved + usize::from(m.patch.is_some()),
                decided + usize::from(m.state.is_verdict()),
            )
        })
    }

    /// Nodes this batch started that are no longer its members (their labels
    /// changed) and that nobody else claims: released in the safe state, as a
    /// deleted batch leaves them. Ready nodes stay ready; the others keep the
    /// onboarding taint and lose the state label, so a new batch can pick
    /// them up.
    fn departed(&self) -> Vec<NodePatch> {
        let batch_name = self.batch_name();
        let conflicted: BTreeSet<&str> = self
            .conflicts
            .iter()
            .map(|(name, _)| name.as_str())
            .collect();
        self.snapshot
            .nodes
            .iter()
            .zip(&self.is_member)
            .filter(|(_, member)| !**member)
            .map(|(n, _)| n)
            .filter(|n| n.state.is_some() && n.state() != NodeState::Ready && !n.deleting)
            .filter(|n| n.batch.as_deref() == Some(batch_name))
            .filter(|n| !conflicted.contains(n.name.as_str()))
            .map(|n| release(&n.name))
            .collect()
    }

    fn batch_name(&self) -> &str {
        self.batch.metadata.name.as_deref().unwrap_or_default()
    }

    fn wake_at(&mut self, at: Timestamp) {
        if at > self.now {
            self.wake = Some(self.wake.map_or(at, |w| w.min(at)));
        }
    }

    fn stamp(&self) -> String {
        self.now.to_string()
    }

    /// Moves member `m` to `state`, merging into its one patch.
    fn transition(
        &mut self,
        m: usize,
        state: NodeState,
        annotations: &[(&'static str, Option<String>)],
    ) {
        let since = self.stamp();
        let member = &mut self.members[m];
        member.state = state;
        let patch = member.patch.get_or_insert_with(|| {
            Box::new(NodePatch {
                node: member.view.name.clone(),
                state: None,
                annotations: BTreeMap::new(),
                taint: TaintChange::Keep,
                failure: None,
            })
        });
        patch.state = (state != NodeState::Pending).then_some(state);
        patch.annotations.insert(keys::SINCE, Some(since));
        for (key, value) in annotations {
            patch.annotations.insert(key, value.clone());
        }
    }

    fn set_taint(&mut self, m: usize, present: bool) {
        let taint = &self.pool.spec.onboarding.taint;
        let has = self.members[m]
            .view
            .has_taint(&taint.key, taint.effect.as_str());
        if let Some(patch) = self.members[m].patch.as_mut() {
            patch.taint = match (present, has) {
                (true, false) => TaintChange::Add,
                (false, true) => TaintChange::Remove,
                _ => TaintChange::Keep,
            };
        }
    }

    fn fail(&mut self, m: usize, failure: Failure) {
        let name = self.members[m].view.name.clone();
        self.transition(
            m,
            NodeState::Failed,
            &[(keys::REASON, Some(failure.message.clone()))],
        );
        if let Some(p) = self.members[m].patch.as_mut() {
            p.failure = Some(failure.category);
        }
        self.members[m].passed = false;
        for probe in self.probes.get(name.as_str()).into_iter().flatten() {
            self.deletes.insert(probe.name.clone());
        }
        self.events.push(Event {
            target: EventTarget::Node(name.clone()),
            warning: true,
            reason: "NodeFailed",
            message: failure.message.clone(),
        });
        self.events.push(Event {
            target: EventTarget::Batch,
            warning: true,
            reason: "NodeFailed",
            message: format!("node {name} failed: {}", failure.message),
        });
    }

    /// `gpufleet.io/retry`: a failed or held node goes back to pending.
    /// A node between start and verdict keeps the onboarding taint: if
    /// someone removed it, put it back and say so.
    fn restore_taints(&mut self) {
        let taint = &self.pool.spec.onboarding.taint;
        let (key, effect) = (taint.key.clone(), taint.effect.as_str());
        for m in 0..self.members.len() {
            if !self.members[m].untainted || self.members[m].retry {
                continue;
            }
            let view = self.members[m].view;
            self.members[m].patch.get_or_insert_with(|| {
                Box::new(NodePatch {
                    node: view.name.clone(),
                    state: view.state,
                    annotations: BTreeMap::new(),
                    taint: TaintChange::Keep,
                    failure: None,
                })
            });
            self.set_taint(m, true);
            self.events.push(Event {
                target: EventTarget::Node(view.name.clone()),
                warning: true,
                reason: "TaintRestored",
                message: format!(
                    "the onboarding taint {key}:{effect} was removed while the node was {}; gpufleet put it back: workloads may land only once the node is admitted",
                    view.state()
                ),
            });
        }
    }

    fn handle_retries(&mut self) {
        for m in 0..self.members.len() {
            if !self.members[m].retry {
                continue;
            }
            let view = self.members[m].view;
            if matches!(view.state(), NodeState::Failed | NodeState::Held) {
                self.transition(
                    m,
                    NodeState::Pending,
                    &[
                        (keys::RETRY, None),
                        (keys::REASON, None),
                        (keys::ATTEMPT, None),
                    ],
                );
                self.events.push(Event {
                    target: EventTarget::Batch,
                    warning: false,
                    reason: "NodeRetried",
                    message: format!("node {} goes through validation again", view.name),
                });
                self.events.push(Event {
                    target: EventTarget::Node(view.name.clone()),
                    warning: false,
                    reason: "NodeRetried",
                    message: "a person asked for a retry: the node goes through validation again"
                        .into(),
                });
            } else {
                // Nothing to retry; just acknowledge the request.
                let patch = NodePatch {
                    node: view.name.clone(),
                    state: view.state,
                    annotations: BTreeMap::from([(keys::RETRY, None)]),
                    taint: TaintChange::Keep,
                    failure: None,
                };
                self.members[m].patch = Some(Box::new(patch));
            }
        }
    }

    fn static_check(&self, m: usize) -> Option<Failure> {
        if self.members[m].healthy {
            return None;
        }
        static_failure(&self.pool.spec, self.members[m].view)
    }

    fn check_validating(&mut self, m: usize) {
        if let Some(failure) = self.static_check(m) {
            return self.fail(m, failure);
        }
        let Some(probe_spec) = self.pool.spec.health_checks.probe.as_ref() else {
            // The probe was removed from the pool: nothing left to wait for.
            self.transition(m, NodeState::Soaking, &[]);
            return self.check_soaking_or_held(m);
        };
        let timeout = SignedDuration::from_secs(i64::from(probe_spec.timeout_seconds));
        let view = self.members[m].view;
        let attempt = view.attempt.max(1);
        let name = probe_pod_name(&view.name, attempt);
        let since = view.since.unwrap_or(self.now);
        let current = self
            .probes
            .get(view.name.as_str())
            .into_iter()
            .flatten()
            .find(|p| p.name == name && !p.deleting)
            .copied();
        let outcome = match current {
            None => {
                let deadline = since + timeout;
                if self.now >= deadline {
                    Some(Err(Failure::new(
                        FailureCategory::ProbeTimeout,
                        format!("probe did not run within {}s", probe_spec.timeout_seconds),
                    )))
                } else {
                    self.creates.push(ProbeRequest {
                        pod_name: name,
                        node: view.name.clone(),
                        attempt,
                    });
                    self.wake_at(deadline);
                    None
                }
            }
            Some(probe) => match (probe.phase, probe.exit_code) {
                (ProbePhase::Succeeded, _) | (_, Some(0)) if probe.phase != ProbePhase::Failed => {
                    Some(Ok(()))
                }
                (ProbePhase::Failed, code) => Some(Err(Failure::new(
                    FailureCategory::ProbeFailed,
                    probe_failure_message(code, probe.message.as_deref()),
                ))),
                _ => {
                    let deadline = probe.created.unwrap_or(since).max(since) + timeout;
                    if self.now >= deadline {
                        Some(Err(Failure::new(
                            FailureCategory::ProbeTimeout,
                            format!("probe timed out after {}s", probe_spec.timeout_seconds),
                        )))
                    } else {
                        self.wake_at(deadline);
                        None
                    }
                }
            },
        };
        match outcome {
            None => {}
            Some(Ok(())) => {
                if let Some(p) = current {
                    self.deletes.insert(p.name.clone());
                }
                self.transition(m, NodeState::Soaking, &[(keys::REASON, None)]);
                self.check_soaking_or_held(m);
            }
            Some(Err(failure)) => {
                if let Some(p) = current {
                    self.deletes.insert(p.name.clone());
                }
                if attempt <= probe_spec.retries {
                    let next = attempt + 1;
                    let reason = format!("attempt {attempt} failed: {failure}; retrying");
                    self.transition(
                        m,
                        NodeState::Validating,
                        &[
                            (keys::ATTEMPT, Some(next.to_string())),
                            (keys::REASON, Some(reason)),
                        ],
                    );
                    let node = view.name.clone();
                    self.creates.push(ProbeRequest {
                        pod_name: probe_pod_name(&node, next),
                        node,
                        attempt: next,
                    });
                    self.wake_at(self.now + timeout);
                } else {
                    self.fail(m, failure);
                }
            }
        }
    }

    fn check_soaking_or_held(&mut self, m: usize) {
        if let Some(failure) = self.static_check(m) {
            return self.fail(m, failure);
        }
        if self.members[m].state == NodeState::Held {
            self.members[m].passed = true;
            return;
        }
        let soak = SignedDuration::from_secs(i64::from(self.pool.spec.health_checks.soak_seconds));
        let since = if self.members[m].patch.is_some() {
            self.now
        } else {
            self.members[m].view.since.unwrap_or(self.now)
        };
        let done_at = since + soak;
        if self.now >= done_at {
            self.members[m].passed = true;
        } else {
            self.wake_at(done_at);
        }
    }

    /// Probes that belong to no node in validation: read already, stale
    /// attempts, or nodes that left the batch.
    fn delete_stray_probes(&mut self) {
        let wanted: BTreeSet<String> = self
            .members
            .iter()
            .filter(|m| m.state == NodeState::Validating)
            .map(|m| probe_pod_name(&m.view.name, m.view.attempt.max(1)))
            .chain(self.creates.iter().map(|c| c.pod_name.clone()))
            .collect();
        for probe in &self.snapshot.probes {
            if !probe.deleting && !wanted.contains(&probe.name) {
                self.deletes.insert(probe.name.clone());
            }
        }
    }

    /// Failures of each wave, with the budget of each.
    fn wave_failures(&self) -> Vec<(u32, u32, u32)> {
        let mut sizes = vec![0u32; self.wave_count];
        let mut failed = vec![0u32; self.wave_count];
        for m in &self.members {
            sizes[m.wave] += 1;
            if m.state == NodeState::Failed {
                failed[m.wave] += 1;
            }
        }
        let budget = self.batch.spec.max_failures_per_wave.as_ref();
        (0..self.wave_count)
            .map(|w| (failed[w], waves::failure_budget(budget, sizes[w]), sizes[w]))
            .collect()
    }

    fn over_budget(&self) -> Option<usize> {
        self.wave_failures()
            .iter()
            .position(|(failed, budget, _)| failed > budget)
    }

    /// The first wave with a node that has no verdict yet.
    fn open_wave(&self) -> Option<usize> {
        self.members
            .iter()
            .filter(|m| !m.state.is_verdict())
            .map(|m| m.wave)
            .min()
    }

    /// Starts pending nodes of the open wave as far as the gates allow, and
    /// returns the gate that stops the rollout, if any.
    fn start_nodes(&mut self) -> Option<Gate> {
        let wave = self.open_wave()?;
        let spec = &self.batch.spec;
        let gate = if let Some(w) = self.over_budget() {
            Some(Gate::FailureBudget(w))
        } else if self.breaker.tripped {
            Some(Gate::Breaker)
        } else if spec.paused {
            Some(Gate::Paused)
        } else if spec.approved_waves.is_some_and(|a| wave as u32 >= a) {
            Some(Gate::Approval(wave))
        } else {
            None
        };
        if gate.is_some() {
            return gate;
        }
        let probe = self.pool.spec.health_checks.probe.is_some();
        let mut validating_here = 0u32;
        let mut pending: Vec<usize> = Vec::new();
        for (m, member) in self.members.iter().enumerate() {
            match member.state {
                NodeState::Validating => validating_here += 1,
                NodeState::Pending if member.wave == wave => pending.push(m),
                _ => {}
            }
        }
        let mut slots = spec
            .max_concurrent
            .saturating_sub(self.validating_elsewhere + validating_here);
        let batch_name = self.batch_name().to_string();
        for m in pending {
            if let Some(failure) = self.static_check(m) {
                // It joins its wave as failed, held back by the onboarding
                // taint like any node between start and admission: a node
                // that failed a check never takes workloads from gpufleet's
                // hands.
                self.fail(m, failure);
                self.transition(
                    m,
                    NodeState::Failed,
                    &[
                        (keys::BATCH, Some(batch_name.clone())),
                        (keys::WAVE, Some((wave + 1).to_string())),
                        (keys::STARTED, Some(self.stamp())),
                    ],
                );
                self.set_taint(m, true);
                if let Some(w) = self.over_budget() {
                    return Some(Gate::FailureBudget(w));
                }
                continue;
            }
            if probe && slots == 0 {
                break;
            }
            let annotations = [
                (keys::BATCH, Some(batch_name.clone())),
                (keys::WAVE, Some((wave + 1).to_string())),
                (keys::STARTED, Some(self.stamp())),
                (keys::REASON, None),
                (keys::ATTEMPT, probe.then(|| "1".to_string())),
            ];
            if probe {
                slots -= 1;
                self.transition(m, NodeState::Validating, &annotations);
                let node = self.members[m].view.name.clone();
                self.creates.push(ProbeRequest {
                    pod_name: probe_pod_name(&node, 1),
                    node,
                    attempt: 1,
                });
                let timeout = self
                    .pool
                    .spec
                    .health_checks
                    .probe
                    .as_ref()
                    .map_or(0, |p| p.timeout_seconds);
                self.wake_at(self.now + SignedDuration::from_secs(i64::from(timeout)));
            } else {
                self.transition(m, NodeState::Soaking, &annotations);
                self.check_soaking_or_held(m);
            }
            self.set_taint(m, true);
        }
        None
    }

    /// A domain's nodes are admitted together once every node of the domain
    /// in this batch has a verdict, if enough of them passed; else the
    /// healthy ones are held.
    fn admit_domains(&mut self) {
        let topology = &self.pool.spec.topology;
        for d in 0..self.domains.len() {
            let members = self.domains[d].members.clone();
            let undecided = members.iter().any(|&m| {
                let member = &self.members[m];
                !(member.passed || matches!(member.state, NodeState::Ready | NodeState::Failed))
            });
            if undecided {
                continue;
            }
            let passed: Vec<usize> = members
                .iter()
                .copied()
                .filter(|&m| self.members[m].passed)
                .collect();
            if passed.is_empty() {
                continue;
            }
            let needed = if waves::is_solo(&self.domains[d].key) {
                1
            } else {
                topology
                    .min_healthy_nodes_per_domain
                    .unwrap_or(topology.nodes_per_domain)
            };
            let healthy = self.domains[d].ready_in_pool + passed.len() as u32;
            if healthy >= needed {
                for m in passed {
                    self.transition(m, NodeState::Ready, &[(keys::REASON, None)]);
                    self.set_taint(m, false);
                    self.members[m].passed = false;
                }
            } else {
                let reason = format!(
                    "domain {}: {healthy} of {} nodes healthy, {needed} needed; retry the failed nodes or add nodes to the domain",
                    self.domains[d].key,
                    members.len() as u32 + self.domains[d].ready_in_pool
                        - members
                            .iter()
                            .filter(|&&m| self.members[m].view.state() == NodeState::Ready)
                            .count() as u32,
                );
                for m in passed {
                    let member = &self.members[m];
                    let unchanged = member.state == NodeState::Held
                        && member.patch.is_none()
                        && member.view.reason.as_deref() == Some(reason.as_str());
                    if unchanged {
                        continue;
                    }
                    let since = member.view.since;
                    let was_held = member.state == NodeState::Held;
                    self.transition(m, NodeState::Held, &[(keys::REASON, Some(reason.clone()))]);
                    if was_held {
                        // Only the reason changed: keep when it was first held.
                        if let (Some(patch), Some(since)) = (self.members[m].patch.as_mut(), since)
                        {
                            patch
                                .annotations
                                .insert(keys::SINCE, Some(since.to_string()));
                        }
                    } else {
                        if let Some(patch) = self.members[m].patch.as_mut() {
                            patch.failure = Some(FailureCategory::DomainIncomplete);
                        }
                        self.events.push(Event {
                            target: EventTarget::Node(self.members[m].view.name.clone()),
                            warning: true,
                            reason: "NodeHeld",
                            message: reason.clone(),
                        });
                    }
                    self.members[m].passed = true;
                }
            }
        }
    }

    fn finish(mut self, gate: Option<Gate>) -> Plan {
        let previous = self.batch.status.clone().unwrap_or_default();
        let generation = self.batch.metadata.generation;
        let now = self.now;

        // Per-wave summaries.
        let failures = self.wave_failures();
        let mut wave_status: Vec<WaveStatus> = Vec::with_capacity(self.wave_count);
        let mut cumulative = 0u32;
        // Members by wave and state, in one pass.
        let mut by_state = vec![[0u32; NodeState::ALL.len()]; self.wave_count];
        for m in &self.members {
            by_state[m.wave][m.state as usize] += 1;
        }
        for (w, in_state) in by_state.iter().enumerate() {
            let size: u32 = in_state.iter().sum();
            cumulative += size;
            let count = |s: NodeState| in_state[s as usize];
            let started = count(NodeState::Pending) < size;
            let complete = NodeState::ALL
                .iter()
                .all(|&s| s.is_verdict() || count(s) == 0);
            let prev = previous.waves.iter().find(|p| p.index == w as u32 + 1);
            let started_at = prev.and_then(|p| p.started_at.clone()).or_else(|| {
                (started || (complete && self.open_wave().is_none_or(|o| o > w)))
                    .then_some(Time(now))
            });
            let completed_at = if complete && started_at.is_some() {
                prev.and_then(|p| p.completed_at.clone())
                    .or(Some(Time(now)))
            } else {
                None
            };
            if prev.and_then(|p| p.started_at.as_ref()).is_none() && started_at.is_some() {
                self.events.push(Event {
                    target: EventTarget::Batch,
                    warning: false,
                    reason: "WaveStarted",
                    message: format!(
                        "wave {} of {} started: {} nodes",
                        w + 1,
                        self.wave_count,
                        size
                    ),
                });
            }
            if prev.and_then(|p| p.completed_at.as_ref()).is_none() && completed_at.is_some() {
                self.events.push(Event {
                    target: EventTarget::Batch,
                    warning: false,
                    reason: "WaveCompleted",
                    message: format!(
                        "wave {} of {} completed: {} ready, {} failed, {} held",
                        w + 1,
                        self.wave_count,
                        count(NodeState::Ready),
                        count(NodeState::Failed),
                        count(NodeState::Held)
                    ),
                });
            }
            wave_status.push(WaveStatus {
                index: w as u32 + 1,
                target_nodes: cumulative,
                admitted: count(NodeState::Ready),
                failed: count(NodeState::Failed),
                held: count(NodeState::Held),
                in_progress: count(NodeState::Validating) + count(NodeState::Soaking),
                started_at,
                completed_at,
            });
        }
        let current_wave = wave_status
            .iter()
            .filter(|w| w.started_at.is_some())
            .map(|w| w.index)
            .max()
            .unwrap_or(0);

        let mut counts = NodeCounts {
            total: self.members.len() as u32,
            ..Default::default()
        };
        for m in &self.members {
            match m.state {
                NodeState::Pending => counts.pending += 1,
                NodeState::Validating => counts.validating += 1,
                NodeState::Soaking => counts.soaking += 1,
                NodeState::Ready => counts.ready += 1,
                NodeState::Failed => counts.failed += 1,
                NodeState::Held => counts.held += 1,
            }
        }

        // Conditions.
        let done = !self.members.is_empty() && self.members.iter().all(|m| m.state.is_verdict());
        let in_flight = counts.validating + counts.soaking;
        let (stalled, stall_reason, stall_message) = match gate {
            Some(Gate::FailureBudget(w)) => {
                let (failed, budget, size) = failures[w];
                let names = self.failed_names(w);
                (
                    true,
                    "FailureBudgetExceeded",
                    format!(
                        "wave {} has {failed} failed nodes of {size}, budget {budget}: {names}; raise maxFailuresPerWave or retry nodes (annotation {})",
                        w + 1,
                        keys::RETRY
                    ),
                )
            }
            Some(Gate::Breaker) => (
                true,
                "CircuitBreakerTripped",
                format!(
                    "pool {}: {} nodes failed within {}, limit {}; every rollout of the pool is halted",
                    self.pool.metadata.name.as_deref().unwrap_or_default(),
                    self.breaker.failed_in_window,
                    self.pool
                        .spec
                        .circuit_breaker
                        .as_ref()
                        .map_or("", |c| c.window.as_str()),
                    self.breaker.limit
                ),
            ),
            _ => {
                // The last wave may finish over budget with nothing left to start.
                match (done, self.over_budget()) {
                    (true, Some(w)) => {
                        let (failed, budget, size) = failures[w];
                        (
                            true,
                            "FailureBudgetExceeded",
                            format!(
                                "wave {} has {failed} failed nodes of {size}, budget {budget}: {}",
                                w + 1,
                                self.failed_names(w)
                            ),
                        )
                    }
                    _ => (false, "NotStalled", "nothing needs a person".to_string()),
                }
            }
        };
        let (ready_reason, ready_message) = if stalled {
            (stall_reason, stall_message.clone())
        } else if self.members.is_empty() {
            (
                "NoNodes",
                "no node matches both the batch's and the pool's selectors yet".to_string(),
            )
        } else if done {
            (
                "RolloutComplete",
                format!(
                    "{} nodes: {} ready, {} failed, {} held",
                    counts.total, counts.ready, counts.failed, counts.held
                ),
            )
        } else {
            match gate {
                Some(Gate::Paused) => (
                    "Paused",
                    format!("paused; {in_flight} nodes still in flight"),
                ),
                Some(Gate::Approval(w)) => (
                    "WaitingForApproval",
                    format!(
                        "wave {} of {} waits for approval (approvedWaves is {}); raise spec.approvedWaves to continue",
                        w + 1,
                        self.wave_count,
                        self.batch.spec.approved_waves.unwrap_or_default()
                    ),
                ),
                _ => (
                    "WaveInProgress",
                    format!(
                        "wave {} of {}: {} validating, {} soaking, {} pending",
                        current_wave.max(1),
                        self.wave_count,
                        counts.validating,
                        counts.soaking,
                        counts.pending
                    ),
                ),
            }
        };
        let reconciling =
            !done && !stalled && (in_flight > 0 || gate.is_none()) && !self.members.is_empty();
        let prev = &previous.conditions;
        let mut conditions = vec![
            condition(
                prev,
                READY,
                done && !stalled,
                ready_reason,
                ready_message.clone(),
                generation,
                now,
            ),
            condition(
                prev,
                RECONCILING,
                reconciling,
                if reconciling {
                    "WaveInProgress"
                } else {
                    ready_reason
                },
                if reconciling {
                    ready_message.clone()
                } else {
                    "no work in progress".into()
                },
                generation,
                now,
            ),
            condition(
                prev,
                STALLED,
                stalled,
                stall_reason,
                stall_message.clone(),
                generation,
                now,
            ),
        ];
        if !self.conflicts.is_empty() || prev.iter().any(|c| c.type_ == NODE_CONFLICTS) {
            let conflicted = !self.conflicts.is_empty();
            conditions.push(condition(
                prev,
                NODE_CONFLICTS,
                conflicted,
                if conflicted {
                    "NodesClaimedTwice"
                } else {
                    "NoConflicts"
                },
                if conflicted {
                    format!(
                        "{} nodes are claimed by another pool or batch and left alone: {}",
                        self.conflicts.len(),
                        bounded_list(
                            &self
                                .conflicts
                                .iter()
                                .map(|(n, by)| format!("{n} (also {by})"))
                                .collect::<Vec<_>>()
                        )
                    )
                } else {
                    "no node is claimed twice".into()
                },
                generation,
                now,
            ));
        }

        // Events on condition transitions.
        let was_stalled = is_true(prev, STALLED);
        if stalled && !was_stalled {
            self.events.push(Event {
                target: EventTarget::Batch,
                warning: true,
                reason: if stall_reason == "CircuitBreakerTripped" {
                    "CircuitBreakerTripped"
                } else {
                    "RolloutHalted"
                },
                message: stall_message.clone(),
            });
        }
        if !stalled && was_stalled {
            let breaker_cleared =
                conditions::reason(prev, STALLED) == Some("CircuitBreakerTripped");
            self.events.push(Event {
                target: EventTarget::Batch,
                warning: false,
                reason: if breaker_cleared {
                    "CircuitBreakerCleared"
                } else {
                    "RolloutResumed"
                },
                message: "the rollout may continue".into(),
            });
        }
        if done && !stalled && !is_true(prev, READY) {
            self.events.push(Event {
                target: EventTarget::Batch,
                warning: false,
                reason: "RolloutComplete",
                message: ready_message,
            });
        }

        let status = RolloutBatchStatus {
            observed_generation: generation,
            current_wave,
            total_waves: self.wave_count as u32,
            wave_progress: Some(format!("{current_wave}/{}", self.wave_count)),
            nodes: counts,
            waves: wave_status,
            conditions,
        };

        if let (true, Some(at)) = (self.breaker.tripped, self.breaker.next_change) {
            self.wake_at(at);
        }
        let requeue_after = self.wake.map(|at| {
            let secs = at.duration_since(now).as_secs_f64().max(0.0);
            Duration::from_secs_f64(secs)
        });

        let mut actions: Vec<Action> = self
            .members
            .iter_mut()
            .filter_map(|m| m.patch.take().map(|p| *p))
            .filter(|p| !patch_is_noop(p))
            .map(Action::PatchNode)
            .collect();
        let mut creates = std::mem::take(&mut self.creates);
        creates.retain(|c| !self.deletes.contains(&c.pod_name));
        creates.sort_by(|a, b| a.pod_name.cmp(&b.pod_name));
        creates.dedup();
        // A probe that already exists is not created again.
        let existing: BTreeSet<&str> = self
            .snapshot
            .probes
            .iter()
            .map(|p| p.name.as_str())
            .collect();
        creates.retain(|c| !existing.contains(c.pod_name.as_str()));
        actions.extend(creates.into_iter().map(Action::CreateProbe));
        actions.extend(
            std::mem::take(&mut self.deletes)
                .into_iter()
                .map(|pod_name| Action::DeleteProbe { pod_name }),
        );
        actions.extend(self.events.into_iter().map(Action::Event));
        Plan {
            actions,
            status,
            requeue_after,
        }
    }

    fn failed_names(&self, wave: usize) -> String {
        let names: Vec<String> = self
            .members
            .iter()
            .filter(|m| m.wave == wave && m.state == NodeState::Failed)
            .map(|m| m.view.name.clone())
            .collect();
        bounded_list(&names)
    }
}

/// What holds the rollout back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Gate {
    FailureBudget(usize),
    Breaker,
    Paused,
    Approval(usize),
}

/// The patch that leaves a node safe when its batch lets go of it: the state
/// label and rollout annotations go, the onboarding taint stays.
pub fn release(node: &str) -> NodePatch {
    NodePatch {
        node: node.to_string(),
        state: None,
        annotations: [
            keys::BATCH,
            keys::WAVE,
            keys::SINCE,
            keys::STARTED,
            keys::ATTEMPT,
            keys::REASON,
        ]
        .into_iter()
        .map(|k| (k, None))
        .collect(),
        taint: TaintChange::Keep,
        failure: None,
    }
}

fn patch_is_noop(patch: &NodePatch) -> bool {
    patch.annotations.is_empty() && patch.taint == TaintChange::Keep
}

/// Up to [`MAX_NAMED_NODES`] items, then how many more.
fn bounded_list(items: &[String]) -> String {
    let shown = items
        .iter()
        .take(MAX_NAMED_NODES)
        .cloned()
        .collect::<Vec<_>>()
        .join(", ");
    match items.len().saturating_sub(MAX_NAMED_NODES) {
        0 => shown,
        more => format!("{shown} and {more} more"),
    }
}

/// A probe's failure in words: the exit code and the first lines of its
/// termination message.
fn probe_failure_message(exit_code: Option<i32>, message: Option<&str>) -> String {
    let code = exit_code.map_or_else(
        || "probe failed".to_string(),
        |c| format!("probe failed (exit {c})"),
    );
    match message.map(first_lines) {
        Some(text) if !text.is_empty() => format!("{code}: {text}"),
        _ => code,
    }
}

/// The first three non-empty lines, joined, at most 300 characters.
fn first_lines(text: &str) -> String {
    let joined = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .take(3)
        .collect::<Vec<_>>()
        .join(" / ");
    match joined.char_indices().nth(300) {
        Some((i, _)) => format!("{}…", &joined[..i]),
        None => joined,
    }
}
