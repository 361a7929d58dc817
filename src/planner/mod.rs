//! The rollout planner: a pure function from (pool, batch, observed snapshot,
//! now) to the actions to take, the batch's new status and when to look
//! again. No client, no clock, no randomness, no I/O: every rollout rule
//! lives here, in a file named for it, and is tested here
//! (docs/architecture.md has the map and how to add a rule).
//!
//! | rule | file |
//! |---|---|
//! | membership, domains, claims, domain size needed | `membership.rs` |
//! | wave targets and assignment, failure budget size | `waves.rs` |
//! | provenance: a state this batch did not write starts over | `provenance.rs` |
//! | retries asked for by a person | `retry.rs` |
//! | the onboarding taint | `taints.rs` |
//! | probes: create, verdict, timeout, retries, strays | `probes.rs` |
//! | the soak | `soak.rs` |
//! | gates: failure budget, breaker, pause, approval, concurrency | `gates.rs` |
//! | short-circuit: many failing the same way at once | `shortcircuit.rs` |
//! | admission of whole domains, holding | `admission.rs` |
//! | the rack test and its attribution | `racktest.rs` |
//! | verdict gates: fabric, firmware tuple, domain agreement | `verdicts.rs` |
//! | releasing nodes that left the batch | `release.rs` |
//! | status, conditions, events | `status.rs` (words: `crate::vocabulary`) |
//! | static health checks | `health.rs` |
//! | the pool's status and circuit breaker | `pool.rs` |
//! | the power budget and ramp across the pool's batches | `power.rs` |
//! | maintenance windows: when new nodes may start | `windows.rs` |
//! | the projected schedule: this planner in simulated time | `schedule.rs` |
//!
//! A node's way through a rollout is `pending → validating → soaking → ready`,
//! or `failed`, or `held` when its domain has too few healthy nodes. Writes
//! per node from pending to ready: one to start it (state label, onboarding
//! taint, batch/wave/since annotations), one when its probe passed (its
//! soak counted from the probe's finish), one to admit it (taint removed).
//! Without a probe, two; with a soak of at most 30 s, two when the domain
//! is admitted within 30 s of the probe's finish (the pass is written with
//! the admission: `state::PASS_IN_POD`).

mod admission;
mod conditions;
mod gates;
mod health;
pub mod labels;
mod membership;
mod pool;
mod power;
pub mod preview;
mod probes;
mod provenance;
mod racktest;
mod release;
mod retry;
pub mod schedule;
mod selector;
mod shortcircuit;
pub mod sim;
mod snapshot;
mod soak;
mod state;
mod status;
mod taints;
mod verdicts;
mod waves;
pub mod windows;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use k8s_openapi::jiff::Timestamp;

use crate::api::{GpuPool, RolloutBatch, RolloutBatchStatus};
use crate::vocabulary::EventReason;

pub use conditions::{condition, is_true};
pub use health::{Failure, FailureCategory, compare_versions, static_failure};
pub use labels::{LabelSource, Labels, Stamp, Stamps, Sym, sym};
pub use membership::{Mismatch, claimants, needed_healthy};
pub use pool::{
    Breaker, LEDGER_MAX, PoolPlan, breaker, invalid_pool_status, parse_window, plan_pool,
};
pub use probes::{awaited_probe, probe_pod_name, probe_run_pod_name};
pub use racktest::{GROUP_POD_PREFIX, group_pod_name};
pub use release::release;
pub use selector::{matches, to_query};
pub use snapshot::{
    CertOutcome, CertView, Claim, FailedNode, NodeState, NodeView, ProbePhase, ProbeView, Snapshot,
    TaintView, Termination,
};
pub use status::{stalled_status, tally};
pub use verdicts::{GateFailure, VerdictRecord, gated, judge};
pub use waves::{domain_key, failure_budget};

use state::Planner;

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
    /// Delete a probe pod (read, stale or orphaned): the one of this run
    /// (`gpufleet.io/started` on the pod; `None`: a pod without one), never
    /// a later run's pod at the same name that a lagging cache did not show.
    DeleteProbe {
        pod_name: String,
        run: Option<Timestamp>,
    },
    /// Create an NVCRE Certification for a rack test group.
    CreateCertification(CertRequest),
    /// Delete a rack test's Certification (its domain is decided).
    DeleteCertification { name: String },
    /// Record an event.
    Event(Event),
}

/// A change to one node, applied as one patch.
#[derive(Clone, Debug, PartialEq)]
pub struct NodePatch {
    pub node: String,
    /// The new `gpufleet.io/state` label; `None` removes it (pending).
    pub state: Option<NodeState>,
    /// Leave the state label as it is (`state` is then what the plan saw):
    /// a patch that only says something on the node.
    pub leave_state: bool,
    /// Annotations to set (`Some`) or remove (`None`).
    pub annotations: BTreeMap<&'static str, Option<String>>,
    /// What to do with the pool's onboarding taint.
    pub taint: TaintChange,
    /// With `TaintChange::Remove`: the taints to remove, as (key, effect):
    /// those gpufleet recorded adding (`gpufleet.io/taint`). Empty: the
    /// pool's taint (a node started before gpufleet recorded its taints).
    pub taint_removals: Vec<(String, String)>,
    /// Set when this patch fails or holds the node: why, for metrics.
    pub failure: Option<FailureCategory>,
    /// The node's `resourceVersion` the decision was made from: the write
    /// is conditional on it, and a node changed since means plan again.
    pub resource_version: Option<String>,
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
    /// When the node's run started (`gpufleet.io/started`): the pod carries
    /// it, and is a verdict for that run only.
    pub run: Option<Timestamp>,
    /// For a rack test pod (`healthChecks.domainTest`): its group.
    pub group: Option<GroupMember>,
}

/// An NVCRE Certification to create for a rack test group
/// (`healthChecks.domainTest.nvcre`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertRequest {
    pub name: String,
    /// The group's name (`gpufleet.io/group`).
    pub group: String,
    /// The group's nodes: the Certification's target.
    pub nodes: Vec<String>,
}

/// A rack test pod's place in its group.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupMember {
    /// The group's name (`gpufleet.io/group`).
    pub group: String,
    /// 0 to size - 1.
    pub rank: u32,
    /// The group's pod names, by rank.
    pub peers: Vec<String>,
    /// The group's nodes, by rank.
    pub peer_nodes: Vec<String>,
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
    /// One CamelCase word, from the vocabulary.
    pub reason: EventReason,
    pub message: String,
}

/// Plans one batch of one pool.
pub fn plan(pool: &GpuPool, batch: &RolloutBatch, snapshot: &Snapshot, now: Timestamp) -> Plan {
    let mut planner = Planner::new(pool, batch, snapshot, now);
    let mut departed = planner.departed();
    departed.extend(planner.left_in_service());
    planner.reset_foreign_states();
    planner.handle_retries();
    planner.restore_taints();
    planner.deferring = true;
    for m in 0..planner.members.len() {
        match planner.members[m].state {
            NodeState::Validating => planner.check_validating(m),
            NodeState::Soaking | NodeState::Held => planner.check_soaking_or_held(m),
            _ => {}
        }
    }
    planner.settle_failures();
    planner.delete_stray_probes();
    // Admitting a domain can complete a wave and open the next, whose
    // nodes may then start (and, without probe or soak, be admitted) in
    // the same plan: repeat until nothing moves.
    let mut stop;
    loop {
        let before = planner.progress();
        stop = planner.start_nodes();
        planner.admit_domains();
        if planner.progress() == before {
            break;
        }
    }
    planner.delete_stray_groups();
    // Rack tests that cannot run halt the batch, as probes that cannot.
    let rack_stop = if planner.rack_too_big.is_some() {
        Some(crate::vocabulary::Gate::RackTestTooBig)
    } else if planner.rack_unreadable.is_some() {
        Some(crate::vocabulary::Gate::RackTestUnreadable)
    } else if planner.rack_not_run.is_some() {
        Some(crate::vocabulary::Gate::ProbesNotRunning)
    } else {
        None
    };
    if let (None, Some(gate)) = (&stop, rack_stop) {
        stop = planner.open_wave().map(|wave| gates::Stop { gate, wave });
    }
    let status = planner.status(stop);
    finish(planner, status, departed)
}

/// The plan's actions in order: node patches (members', then released ones),
/// probe creations, probe deletions, events.
fn finish(mut planner: Planner, status: RolloutBatchStatus, departed: Vec<NodePatch>) -> Plan {
    // A pass this plan read and did nothing else with (the node neither
    // admitted, held nor failed) stays in its pod for now: no node write,
    // the pod kept, a plan when its time is up (`state::PASS_IN_POD`).
    for (m, until) in std::mem::take(&mut planner.passes_in_pod) {
        let member = &mut planner.members[m];
        if member.state == NodeState::Soaking {
            member.patch = None;
            planner.deletes.remove(&probes::awaited_probe(member.view));
            planner.wake_at(until);
        }
    }
    if let (true, Some(at)) = (planner.breaker.tripped, planner.breaker.next_change) {
        planner.wake_at(at);
    }
    let now = planner.now;
    let requeue_after = planner.wake.map(|at| snapshot::requeue_until(now, at));
    let mut actions: Vec<Action> = planner
        .members
        .iter_mut()
        .filter_map(|m| m.patch.take().map(|p| *p))
        .filter(|p| !patch_is_noop(p))
        .map(Action::PatchNode)
        .collect();
    actions.extend(departed.into_iter().map(Action::PatchNode));
    let mut creates = std::mem::take(&mut planner.creates);
    creates.retain(|c| !planner.deletes.contains_key(&c.pod_name));
    creates.sort_by(|a, b| a.pod_name.cmp(&b.pod_name));
    creates.dedup();
    // A probe that already exists is not created again.
    let existing: BTreeSet<&str> = planner
        .snapshot
        .probes
        .iter()
        .map(|p| p.name.as_str())
        .collect();
    creates.retain(|c| !existing.contains(c.pod_name.as_str()));
    actions.extend(creates.into_iter().map(Action::CreateProbe));
    actions.extend(
        std::mem::take(&mut planner.deletes)
            .into_iter()
            .map(|(pod_name, run)| Action::DeleteProbe { pod_name, run }),
    );
    let mut certs = std::mem::take(&mut planner.cert_creates);
    certs.retain(|c| !planner.cert_deletes.contains(&c.name));
    certs.sort_by(|a, b| a.name.cmp(&b.name));
    certs.dedup();
    certs.retain(|c| {
        !planner
            .snapshot
            .certifications
            .iter()
            .any(|x| x.name == c.name)
    });
    actions.extend(certs.into_iter().map(Action::CreateCertification));
    actions.extend(
        std::mem::take(&mut planner.cert_deletes)
            .into_iter()
            .map(|name| Action::DeleteCertification { name }),
    );
    actions.extend(planner.events.into_iter().map(Action::Event));
    Plan {
        actions,
        status,
        requeue_after,
    }
}

fn patch_is_noop(patch: &NodePatch) -> bool {
    patch.annotations.is_empty() && patch.taint == TaintChange::Keep
}
