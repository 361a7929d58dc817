//! A plan in the making: the batch's members with the state this plan has
//! moved each to so far and the one patch it will write for each, plus the
//! probes to create and delete, the events, and when to look again. Each
//! rule (its own file) reads and moves this state; `transition` is the only
//! way a member changes state.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use k8s_openapi::jiff::Timestamp;

use crate::api::{GpuPool, RolloutBatch};
use crate::keys;
use crate::vocabulary::EventReason;

use super::health::{Failure, Standing, standing, static_failure};
use super::membership::{Domain, Membership};
use super::pool::{Breaker, breaker};
use super::snapshot::{NodeState, NodeView, ProbeView, Snapshot};
use super::{Event, EventTarget, NodePatch, ProbeRequest, TaintChange, matches};

/// How far ahead of the planner's clock a time gpufleet wrote may be (its
/// replicas' clocks differ a little); further ahead, it was not gpufleet.
pub const FUTURE_SKEW: k8s_openapi::jiff::SignedDuration =
    k8s_openapi::jiff::SignedDuration::from_secs(600);

/// How long a probe's pass may go unwritten on its node, from the probe's
/// finish: a pool whose soak is no longer may admit the node in the same
/// write that records its pass (one node write fewer), the passed pod
/// being the record meanwhile. The node stays labelled `validating` and
/// counted in `maxConcurrent` and the power budget as in validation, so a
/// pod that goes meanwhile (deleted, garbage-collected) costs a probe run,
/// never a budget. Longer soaks are written when read: a pod is no record
/// to keep for hours (docs/notes/soak-without-a-write.md).
pub const PASS_IN_POD: k8s_openapi::jiff::SignedDuration =
    k8s_openapi::jiff::SignedDuration::from_secs(30);

impl Member<'_> {
    /// Holds a slot of the concurrency caps: in validation, or passed with
    /// its pass not yet written ([`PASS_IN_POD`]).
    pub fn holds_a_slot(&self) -> bool {
        self.state == NodeState::Validating
            || (self.pass_in_pod && self.state == NodeState::Soaking)
    }
}

/// One member node of the batch, and what this plan does to it.
pub(super) struct Member<'a> {
    pub view: &'a NodeView,
    /// Its wave, from 0.
    pub wave: usize,
    /// The state after this plan's decisions so far.
    pub state: NodeState,
    /// `gpufleet.io/retry` is on the node.
    pub retry: bool,
    /// The state the node's label claims, when this batch did not write it.
    pub foreign: Option<NodeState>,
    /// Between start and verdict, and the onboarding taint is missing.
    pub untainted: bool,
    /// How a node in progress (validating, soaking, held) stands against
    /// its static checks now (they depend on the node alone, which a plan
    /// does not change); checked up front, as every plan repeats them.
    pub standing: Option<Standing>,
    /// Soaking and its soak is over (or held): passed, waiting for its domain.
    pub passed: bool,
    /// Its probe's pass was read by this plan and may stay unwritten (the
    /// passed pod its only record, the node still labelled validating):
    /// counted in every cap and budget as in validation until written.
    /// See [`PASS_IN_POD`].
    pub pass_in_pod: bool,
    /// Boxed: most members have none, and the planner makes several passes
    /// over all members, which a small `Member` keeps fast.
    pub patch: Option<Box<NodePatch>>,
}

/// The plan in the making.
pub(super) struct Planner<'a> {
    pub pool: &'a GpuPool,
    pub batch: &'a RolloutBatch,
    pub snapshot: &'a Snapshot,
    pub now: Timestamp,
    pub members: Vec<Member<'a>>,
    /// By place in `snapshot.nodes`: is that node a member?
    pub is_member: Vec<bool>,
    pub domains: Vec<Domain>,
    pub wave_count: usize,
    /// Nodes claimed twice: name, and who else claims them.
    pub conflicts: Vec<(String, String)>,
    /// Nodes admitted once that lost their ready label: left alone.
    pub lost: Vec<&'a NodeView>,
    /// The batch's probe pods by node.
    pub probes: HashMap<&'a str, Vec<&'a ProbeView>>,
    /// Every pod of the snapshot by name, whoever made it: a pod at a
    /// probe's name may be bound to another node, or to none.
    pub probe_named: HashMap<&'a str, &'a ProbeView>,
    /// Nodes of the pool in validation for other batches.
    pub validating_elsewhere: u32,
    /// The power other batches' nodes under test draw (W), the part of it
    /// started within the last minute, and the earliest such start
    /// (`power.rs`; zero without `spec.power`).
    pub power_elsewhere: (u64, u64, Option<Timestamp>),
    /// A start the power budget or ramp held back, in words.
    pub power_held: Option<String>,
    /// A rack test round the power budget or ramp held back, in words.
    pub rack_power_held: Option<String>,
    /// Starts held until the next maintenance window, in words.
    pub window_held: Option<String>,
    /// A field of the pool that cannot be read, and why (the batch halts).
    pub spec_problem: Option<String>,
    /// Watts this plan started (its starts carry no `started` yet in the
    /// views the ramp reads).
    pub power_started: u64,
    pub breaker: Breaker,
    /// While set, `fail` only records the failure here: the failures of
    /// nodes in flight are settled together (`shortcircuit.rs`).
    pub deferring: bool,
    pub deferred: Vec<(usize, Failure)>,
    /// Members whose pass this plan read and may leave unwritten, with
    /// when that time is up ([`PASS_IN_POD`]).
    pub passes_in_pod: Vec<(usize, Timestamp)>,
    /// Why the batch is halted as a suspected misconfiguration under the
    /// pool's current generation, if it is.
    pub suspected: Option<String>,
    pub creates: Vec<ProbeRequest>,
    /// Probe pods to delete: name, and the run of the pod this plan saw
    /// at that name (a pod of a later run at the same name is not it).
    pub deletes: BTreeMap<String, Option<Timestamp>>,
    /// NVCRE Certifications to create and to delete (`racktest.rs`).
    pub cert_creates: Vec<super::CertRequest>,
    pub cert_deletes: BTreeSet<String>,
    /// Rack test groups some domain's test still reads (`racktest.rs`).
    pub groups_wanted: BTreeSet<String>,
    /// The wave of each rack test group this plan looked at.
    pub group_waves: HashMap<String, usize>,
    /// Domains under a rack test: key, round, trays under test, the lowest
    /// bus bandwidth its groups reported so far (GB/s).
    pub rack_running: Vec<(String, u32, u32, Option<u32>)>,
    /// A rack test that can never run under the caps, in words.
    pub rack_too_big: Option<String>,
    /// A rack test group whose pods did not run: a node and why.
    pub rack_not_run: Option<(String, String)>,
    /// A rack test whose result cannot be read or trusted, in words.
    pub rack_unreadable: Option<String>,
    /// The lowest bus bandwidth (GB/s) the groups of the domain being
    /// planned reported in their verdicts (`racktest.rs`).
    pub rack_figure: Option<u32>,
    pub events: Vec<Event>,
    pub wake: Option<Timestamp>,
}

impl<'a> Planner<'a> {
    pub fn new(
        pool: &'a GpuPool,
        batch: &'a RolloutBatch,
        snapshot: &'a Snapshot,
        now: Timestamp,
    ) -> Self {
        let pool_spec = &pool.spec;
        let Membership {
            pool_nodes,
            is_member,
            conflicts,
            lost,
            members,
            domains,
            wave_count,
            ..
        } = Membership::gather(
            pool,
            batch,
            &snapshot.nodes,
            &snapshot.other_pools,
            &snapshot.other_batches,
            false,
        );
        let taint = &pool_spec.onboarding.taint;
        let members = members
            .into_iter()
            .map(|p| {
                let held_back = matches!(
                    p.state,
                    NodeState::Validating | NodeState::Soaking | NodeState::Held
                );
                Member {
                    view: p.view,
                    wave: domains[p.domain as usize].wave,
                    state: p.state,
                    retry: p.view.retry,
                    foreign: p.foreign,
                    untainted: held_back && !p.view.has_taint(&taint.key, taint.effect.as_str()),
                    standing: held_back.then(|| standing(pool_spec, p.view, now)),
                    passed: false,
                    pass_in_pod: false,
                    patch: None,
                }
            })
            .collect();

        let mut probes: HashMap<&str, Vec<&ProbeView>> = HashMap::new();
        let mut probe_named: HashMap<&str, &ProbeView> = HashMap::new();
        for probe in &snapshot.probes {
            probes.entry(probe.node.as_str()).or_default().push(probe);
            // Names are unique among live pods; one being deleted gives way
            // to the live one of its name.
            let slot = probe_named.entry(probe.name.as_str()).or_insert(probe);
            if slot.deleting && !probe.deleting {
                *slot = probe;
            }
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
        let power_elsewhere = super::power::elsewhere(
            pool_spec,
            snapshot
                .nodes
                .iter()
                .zip(&is_member)
                .filter(|(n, member)| {
                    !**member && !n.deleting && matches(&pool_spec.node_selector, &n.labels)
                })
                .map(|(n, _)| &**n),
            now,
        );
        let breaker = breaker(pool, &pool_nodes, now);
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
            lost: lost.into_iter().map(|i| &*snapshot.nodes[i]).collect(),
            probes,
            probe_named,
            validating_elsewhere,
            power_elsewhere,
            power_held: None,
            rack_power_held: None,
            window_held: None,
            spec_problem: None,
            power_started: 0,
            breaker,
            deferring: false,
            deferred: Vec::new(),
            passes_in_pod: Vec::new(),
            suspected: None,
            creates: Vec::new(),
            deletes: BTreeMap::new(),
            groups_wanted: BTreeSet::new(),
            group_waves: HashMap::new(),
            cert_creates: Vec::new(),
            cert_deletes: BTreeSet::new(),
            rack_running: Vec::new(),
            rack_too_big: None,
            rack_not_run: None,
            rack_unreadable: None,
            rack_figure: None,
            events: Vec::new(),
            wake: None,
        }
    }

    /// A fingerprint of how far this plan has moved the members.
    pub fn progress(&self) -> (usize, usize, usize) {
        let (moved, decided) = self.members.iter().fold((0, 0), |(moved, decided), m| {
            (
                moved + usize::from(m.patch.is_some()),
                decided + usize::from(m.state.is_verdict()),
            )
        });
        // A rack test asked for is progress too: what it draws changes
        // what may start next. (Rules ask again for what they asked for
        // in an earlier pass: distinct names count.)
        let asked: HashSet<&str> = self
            .creates
            .iter()
            .map(|c| c.pod_name.as_str())
            .chain(self.cert_creates.iter().map(|c| c.name.as_str()))
            .collect();
        (moved, decided, asked.len())
    }

    pub fn batch_name(&self) -> &str {
        self.batch.metadata.name.as_deref().unwrap_or_default()
    }

    pub fn pool_name(&self) -> &str {
        self.pool.metadata.name.as_deref().unwrap_or_default()
    }

    /// Plan again at `at` at the latest.
    pub fn wake_at(&mut self, at: Timestamp) {
        if at > self.now {
            self.wake = Some(self.wake.map_or(at, |w| w.min(at)));
        }
    }

    pub fn stamp(&self) -> String {
        self.now.to_string()
    }

    /// The member's patch, made (changing nothing yet) if it has none.
    pub fn patch_of(&mut self, m: usize) -> &mut NodePatch {
        let member = &mut self.members[m];
        let view = member.view;
        member.patch.get_or_insert_with(|| {
            Box::new(NodePatch {
                node: view.name.to_string(),
                state: view.state,
                annotations: BTreeMap::new(),
                taint: TaintChange::Keep,
                taint_removals: Vec::new(),
                failure: None,
                leave_state: false,
                resource_version: view.resource_version.as_deref().map(str::to_owned),
            })
        })
    }

    /// Moves member `m` to `state`, merging into its one patch.
    pub fn transition(
        &mut self,
        m: usize,
        state: NodeState,
        annotations: &[(&'static str, Option<String>)],
    ) {
        let since = self.stamp();
        let view_misses = self.members[m].view.probe_misses;
        let had_verdict = self.members[m].view.verdict.is_some();
        let from = self.members[m].state;
        self.members[m].state = state;
        let patch = self.patch_of(m);
        patch.state = (state != NodeState::Pending).then_some(state);
        patch.annotations.insert(keys::SINCE, Some(since));
        patch.annotations.insert(
            keys::RECORDED_STATE,
            patch.state.map(|s| s.as_str().to_string()),
        );
        // Runs of a probe that never ran count only while validating.
        if state != NodeState::Validating
            && (view_misses > 0 || patch.annotations.contains_key(keys::PROBE_MISSES))
        {
            patch.annotations.insert(keys::PROBE_MISSES, None);
        }
        // A verdict on record belongs to the run that wrote it: a node
        // that starts again, or goes back to pending, has none.
        let fresh = state == NodeState::Pending
            || (state == NodeState::Validating && from != NodeState::Validating);
        if fresh && (had_verdict || patch.annotations.contains_key(keys::VERDICT)) {
            patch.annotations.insert(keys::VERDICT, None);
        }
        for (key, value) in annotations {
            patch.annotations.insert(key, value.clone());
        }
    }

    /// A member in progress whose `gpufleet.io/since` someone removed, or
    /// set in the future (more than [`FUTURE_SKEW`] ahead: gpufleet writes
    /// it from its own clock): its clock starts again now, written back, so
    /// that its soak ends and its probe deadline comes (counting from `now`
    /// at every plan, or from 9999, neither ever did).
    pub fn restamp_since(&mut self, m: usize) {
        let skewed = self.members[m]
            .view
            .since
            .get()
            .is_some_and(|s| s > super::snapshot::later(self.now, FUTURE_SKEW));
        if (self.members[m].view.since.is_none() || skewed) && self.members[m].patch.is_none() {
            let stamp = self.stamp();
            self.patch_of(m)
                .annotations
                .insert(keys::SINCE, Some(stamp));
        }
    }

    /// When member `m` entered its state: the time this plan wrote (a
    /// transition: now, or its probe's finish for a soak; or
    /// [`Self::restamp_since`]), else its `since`.
    pub fn since(&self, m: usize) -> Timestamp {
        let written = self.members[m]
            .patch
            .as_ref()
            .and_then(|p| p.annotations.get(keys::SINCE));
        if let Some(Some(at)) = written
            && let Ok(at) = at.parse()
        {
            return at;
        }
        let written = written.is_some();
        match self.members[m].view.since.get() {
            Some(since) if !written => since,
            _ => self.now,
        }
    }

    /// The member's first static failure: what stops a node from starting.
    pub fn static_check(&self, m: usize) -> Option<Failure> {
        static_failure(&self.pool.spec, self.members[m].view)
    }

    /// Checks member `m`, in progress, against its static checks: fails it
    /// on a failed check (`Err`); while a bad condition is tolerated, says
    /// so on the node and plans again when its time is up (`Ok(None)`: not
    /// healthy, not failed); `Ok(Some(recovered))` when healthy, with when
    /// its last watched condition turned good.
    pub fn check_standing(&mut self, m: usize) -> Result<Option<Option<Timestamp>>, ()> {
        let standing = match self.members[m].standing.clone() {
            Some(standing) => standing,
            // Moved into progress by this plan: its checks passed at start.
            None => standing(&self.pool.spec, self.members[m].view, self.now),
        };
        match standing {
            Standing::Healthy { recovered } => Ok(Some(recovered)),
            Standing::Tolerated { until, message } => {
                if self.members[m].view.reason.as_deref() != Some(message.as_str()) {
                    self.patch_of(m)
                        .annotations
                        .insert(keys::REASON, Some(message));
                }
                self.wake_at(until);
                Ok(None)
            }
            Standing::Failed(failure) => {
                self.fail(m, failure);
                Err(())
            }
        }
    }

    /// Fails member `m`: state, reason, its probes deleted, events. While
    /// deferring, only records the failure.
    pub fn fail(&mut self, m: usize, failure: Failure) {
        if self.deferring {
            self.members[m].passed = false;
            self.deferred.push((m, failure));
            return;
        }
        let name = self.members[m].view.name.to_string();
        self.transition(
            m,
            NodeState::Failed,
            &[(keys::REASON, Some(failure.message.clone()))],
        );
        self.patch_of(m).failure = Some(failure.category);
        self.members[m].passed = false;
        for probe in self.probes.get(name.as_str()).into_iter().flatten() {
            self.deletes.insert(probe.name.clone(), probe.run);
        }
        self.event(
            EventTarget::Node(name.clone()),
            true,
            EventReason::NodeFailed,
            failure.message.clone(),
        );
        self.event(
            EventTarget::Batch,
            true,
            EventReason::NodeFailed,
            format!("node {name} failed: {}", failure.message),
        );
    }

    /// Records an event.
    pub fn event(
        &mut self,
        target: EventTarget,
        warning: bool,
        reason: EventReason,
        message: String,
    ) {
        self.events.push(Event {
            target,
            warning,
            reason,
            message,
        });
    }
}
