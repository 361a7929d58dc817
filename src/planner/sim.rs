//! An in-memory cluster that applies plans the way `act` applies them to the
//! API server: for tests, property tests and benchmarks of the planner, and
//! for previews. Probe pods get their outcome from a callback, as kwok gives
//! them from annotations.

use std::collections::BTreeMap;

use k8s_openapi::jiff::{SignedDuration, Timestamp};

use crate::api::{GpuPool, RolloutBatch};
use crate::keys;

use super::{
    Action, NodePatch, Plan, ProbePhase, ProbeView, Snapshot, TaintChange, TaintView, Termination,
    plan,
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
}

/// Decides how the probe of a node ends, by node name and attempt.
type OutcomeFn = Box<dyn Fn(&str, u32) -> Outcome>;

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
    outcome: OutcomeFn,
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
                            std::sync::Arc::make_mut(node),
                            patch,
                            &taint.key,
                            taint.effect.as_str(),
                        );
                    }
                }
                Action::CreateProbe(req) => {
                    if self.snapshot.probes.iter().all(|p| p.name != req.pod_name) {
                        self.probes_created += 1;
                        let (containers, init_containers) = self.template_containers();
                        self.snapshot.probes.push(ProbeView {
                            name: req.pod_name.clone(),
                            node: req.node.clone(),
                            attempt: req.attempt,
                            phase: ProbePhase::Pending,
                            batch_uid: self.batch.metadata.uid.clone(),
                            containers: containers.len() as u32,
                            init_containers: init_containers.len() as u32,
                            terminated: Vec::new(),
                            message: None,
                            created: Some(self.now),
                            deleting: false,
                        });
                    }
                }
                Action::DeleteProbe { pod_name } => {
                    self.snapshot.probes.retain(|p| &p.name != pod_name)
                }
                Action::Event(_) => {}
            }
            self.log.push(action.clone());
        }
        self.batch.status = Some(plan.status.clone());
    }

    /// The names of the pool's probe template's containers and init
    /// containers (one `burn-in` container when the template names none).
    pub fn template_containers(&self) -> (Vec<String>, Vec<String>) {
        let spec = self
            .pool
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
            match (self.outcome)(&probe.node, probe.attempt) {
                Outcome::Pass => {
                    probe.phase = ProbePhase::Succeeded;
                    probe.terminated = inits
                        .chain(containers.iter().map(|c| ended(c, false, 0, None)))
                        .collect();
                }
                Outcome::Fail { exit_code, message } => {
                    probe.phase = ProbePhase::Failed;
                    probe.terminated = inits
                        .chain(std::iter::once(ended(
                            &containers[0],
                            false,
                            exit_code,
                            Some(message),
                        )))
                        .collect();
                }
                Outcome::Hang => probe.phase = ProbePhase::Running,
            }
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

/// Applies one patch to a node view, as the API server would.
pub fn apply_patch(
    node: &mut super::NodeView,
    patch: &NodePatch,
    taint_key: &str,
    taint_effect: &str,
) {
    node.state = patch.state;
    match patch.state {
        Some(state) => {
            node.labels
                .insert(keys::STATE.into(), state.as_str().into());
        }
        None => {
            node.labels.remove(keys::STATE);
        }
    }
    for (key, value) in &patch.annotations {
        let value = value.as_deref();
        match *key {
            keys::BATCH => node.batch = value.map(String::from),
            keys::BATCH_UID => node.batch_uid = value.map(String::from),
            keys::WAVE => node.wave = value.and_then(|v| v.parse().ok()),
            keys::SINCE => node.since = value.and_then(|v| v.parse().ok()),
            keys::STARTED => node.started = value.and_then(|v| v.parse().ok()),
            keys::REASON => node.reason = value.map(String::from),
            keys::ATTEMPT => node.attempt = value.and_then(|v| v.parse().ok()).unwrap_or(0),
            keys::RETRY => node.retry = value.is_some(),
            keys::ADMITTED => node.admitted = value.and_then(|v| v.parse().ok()),
            keys::SUSPECT => node.suspect = value.and_then(|v| v.parse().ok()),
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
