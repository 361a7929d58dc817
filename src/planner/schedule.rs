//! The projected schedule of a batch: the real planner run in simulated
//! time over the batch's nodes, every check passing and taking the time the
//! caller says, so a site planner sees when each wave would start and
//! finish, the power in use, the racks online and the energy, before a node
//! is touched. It plans exactly as the operator would (the same `plan`, the
//! same power budget, ramp, windows, waves and soak), only faster: the clock
//! jumps from one thing that happens to the next (a check finishing, a soak
//! ending, a window opening, the wake a plan asks for).
//!
//! What it assumes: every probe, rack test and Certification passes and
//! takes exactly its duration; pods start at once; nothing else writes the
//! nodes; each wave `approvedWaves` holds back is approved the moment it is
//! asked for (the approvals are listed).

use std::collections::HashMap;
use std::sync::Arc;

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::jiff;
use serde::Serialize;

use super::sim::{apply_patch, new_certification, new_probe, pass, template_containers};
use super::snapshot::later;
use super::{Action, CertOutcome, NodeState, NodeView, Plan, ProbePhase, Snapshot, plan};
use crate::api::{GpuPool, RolloutBatch};
use crate::vocabulary::{ConditionType, Gate};

/// How long each check takes.
#[derive(Clone, Copy, Debug)]
pub struct Timing {
    /// One probe (the burn-in) from start to pass.
    pub probe: SignedDuration,
    /// One rack test (group pods or an NVCRE Certification).
    pub rack_test: SignedDuration,
}

/// One point of the projection: after the plans at `at`.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Sample {
    pub at: String,
    /// Seconds since the projection's start.
    pub seconds: i64,
    /// Watts drawn by the pool's nodes under test, as the power rule counts.
    pub watts: u64,
    pub nodes_online: u32,
    pub racks_online: u32,
}

/// When one wave ran.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct WaveRun {
    pub index: u32,
    pub target_nodes: u32,
    pub started_at: Option<String>,
    pub completed_at: Option<String>,
    pub energy_watt_hours: u64,
}

/// The projection.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Schedule {
    pub pool: String,
    pub batch: String,
    pub start: String,
    /// When the batch was Ready, or when the projection stopped.
    pub end: String,
    pub seconds: i64,
    /// The batch became Ready.
    pub complete: bool,
    /// Why it did not: the gate it stopped at, in words.
    pub stopped: Option<String>,
    pub nodes: u32,
    pub racks: u32,
    pub admitted: u32,
    pub failed: u32,
    pub held: u32,
    pub waves: Vec<WaveRun>,
    /// The pool's power budget, if it has one.
    pub budget_watts: Option<u64>,
    pub peak_watts: u64,
    pub peak_at: Option<String>,
    /// Energy spent in checks, as the batch status counts it.
    pub energy_watt_hours: u64,
    /// GPU-hours of admitted capacity online between the start and the
    /// end, as the batch status counts them.
    pub gpu_hours: u64,
    /// Waves held by `approvedWaves` that the projection approved, and when.
    pub approvals: Vec<(u32, String)>,
    /// Plans made: the work of the projection.
    pub plans: u32,
    /// Plans made again at an instant (`Options::replan`) that changed
    /// something: 0 when each plan reaches its fixed point.
    pub replans_changing: u32,
    pub samples: Vec<Sample>,
}

/// Plans at one instant before the clock moves a second: a plan that kept
/// changing something at one instant would otherwise never let time pass.
const PLANS_AN_INSTANT: u32 = 16;

/// How to run a projection.
#[derive(Clone, Copy, Debug)]
pub struct Options {
    /// Give up after this many plans.
    pub max_plans: u32,
    /// Plan again at the same instant after every plan that changed
    /// something, as the operator does when its own writes come back
    /// (tests: such a plan never changes anything, because a plan repeats
    /// its rules until nothing moves). Off, the clock moves on at once:
    /// half the plans, the same schedule.
    pub replan: bool,
}

/// Projects `batch` of `pool` over `nodes` from `start`.
pub fn project(
    pool: &GpuPool,
    batch: &RolloutBatch,
    nodes: Vec<NodeView>,
    start: Timestamp,
    timing: Timing,
    options: Options,
) -> Schedule {
    let mut run = Run::new(pool, batch, nodes, start, timing);
    let mut at_instant = 0;
    let mut stopped = None;
    loop {
        let plan = plan(pool, &run.batch, &run.snapshot, run.now);
        run.plans += 1;
        let changed = plan.changes().next().is_some();
        if changed && at_instant > 0 {
            run.replans_changing += 1;
        }
        run.apply(&plan);
        if super::is_true(&plan.status.conditions, ConditionType::Ready) {
            break;
        }
        if let Some(gate) = &plan.status.gate
            && gate.name == Gate::Approval
        {
            let wave = gate.wave.unwrap_or(1);
            run.batch.spec.approved_waves = Some(wave);
            run.approvals.push((wave, run.now.to_string()));
            continue;
        }
        if run.plans >= options.max_plans {
            stopped = Some(format!("gave up after {} plans", options.max_plans));
            break;
        }
        if changed && options.replan && at_instant < PLANS_AN_INSTANT {
            at_instant += 1;
            continue;
        }
        let wake = plan.requeue_after.map(|d| {
            later(
                run.now,
                SignedDuration::try_from(d).unwrap_or(SignedDuration::MAX),
            )
        });
        let next = match (run.next_finish(), wake) {
            (Some(a), Some(b)) => a.min(b),
            (a, b) => match a.or(b) {
                Some(t) => t,
                None => {
                    stopped = Some(plan.status.gate.as_ref().map_or_else(
                        || "nothing left to wait for".to_string(),
                        |g| g.message.clone(),
                    ));
                    break;
                }
            },
        };
        at_instant = 0;
        run.advance(next.max(later(run.now, SignedDuration::from_secs(1))));
    }
    run.finish(stopped)
}

/// The simulated cluster of one projection.
struct Run<'a> {
    pool: &'a GpuPool,
    batch: RolloutBatch,
    snapshot: Snapshot,
    start: Timestamp,
    now: Timestamp,
    timing: Timing,
    /// Node index by name.
    index: HashMap<String, usize>,
    /// Each node's domain, and each domain's nodes Ready.
    domain_of: Vec<usize>,
    ready_in: Vec<u32>,
    nodes_online: u32,
    racks_online: u32,
    containers: (Vec<String>, Vec<String>),
    /// When each Certification ends, by name.
    cert_ends: HashMap<String, Timestamp>,
    approvals: Vec<(u32, String)>,
    plans: u32,
    replans_changing: u32,
    samples: Vec<Sample>,
    peak: (u64, Option<Timestamp>),
}

impl<'a> Run<'a> {
    fn new(
        pool: &'a GpuPool,
        batch: &RolloutBatch,
        nodes: Vec<NodeView>,
        start: Timestamp,
        timing: Timing,
    ) -> Self {
        let mut batch = batch.clone();
        batch.status = None;
        if batch.metadata.uid.is_none() {
            batch.metadata.uid = Some("projection".into());
        }
        let label = &pool.spec.topology.domain_label;
        let mut domains: HashMap<String, usize> = HashMap::new();
        let domain_of = nodes
            .iter()
            .map(|n| {
                let key = super::domain_key(label, &n.name, &n.labels);
                let next = domains.len();
                *domains.entry(key).or_insert(next)
            })
            .collect();
        let index = nodes
            .iter()
            .enumerate()
            .map(|(i, n)| (n.name.to_string(), i))
            .collect();
        Run {
            pool,
            batch,
            snapshot: Snapshot {
                nodes: nodes.into_iter().map(Arc::new).collect(),
                probes: Vec::new(),
                certifications: Vec::new(),
                other_pools: Vec::new(),
                other_batches: Vec::new(),
                probe_rejection: None,
            },
            start,
            now: start,
            timing,
            index,
            domain_of,
            ready_in: vec![0; domains.len()],
            nodes_online: 0,
            racks_online: 0,
            containers: template_containers(pool),
            cert_ends: HashMap::new(),
            approvals: Vec::new(),
            plans: 0,
            replans_changing: 0,
            samples: Vec::new(),
            peak: (0, None),
        }
    }

    /// Applies a plan as the API server would, and samples the result.
    fn apply(&mut self, plan: &Plan) {
        let taint = &self.pool.spec.onboarding.taint;
        let mut deleted: Vec<(&str, Option<Timestamp>)> = Vec::new();
        let mut certs_deleted: Vec<&str> = Vec::new();
        for action in &plan.actions {
            match action {
                Action::PatchNode(patch) => {
                    let Some(&i) = self.index.get(&patch.node) else {
                        continue;
                    };
                    let node = Arc::make_mut(&mut self.snapshot.nodes[i]);
                    let was = node.state() == NodeState::Ready;
                    apply_patch(node, patch, &taint.key, taint.effect.as_str());
                    let is = node.state() == NodeState::Ready;
                    self.count_ready(i, was, is);
                }
                Action::CreateProbe(req) => {
                    let mut probe = new_probe(
                        req,
                        self.batch.metadata.uid.clone(),
                        (
                            self.containers.0.len() as u32,
                            self.containers.1.len() as u32,
                        ),
                        self.now,
                    );
                    probe.phase = ProbePhase::Running;
                    probe.started_at = Some(self.now);
                    self.snapshot.probes.push(probe);
                }
                Action::DeleteProbe { pod_name, run } => deleted.push((pod_name, *run)),
                Action::CreateCertification(req) => {
                    self.cert_ends
                        .insert(req.name.clone(), later(self.now, self.timing.rack_test));
                    self.snapshot.certifications.push(new_certification(
                        req,
                        self.batch.metadata.uid.clone(),
                        self.now,
                    ));
                }
                Action::DeleteCertification { name } => certs_deleted.push(name),
                Action::Event(_) => {}
            }
        }
        if !deleted.is_empty() {
            let deleted: std::collections::HashSet<(&str, Option<Timestamp>)> =
                deleted.into_iter().collect();
            self.snapshot
                .probes
                .retain(|p| !deleted.contains(&(p.name.as_str(), p.run)));
        }
        if !certs_deleted.is_empty() {
            self.snapshot
                .certifications
                .retain(|c| !certs_deleted.contains(&c.name.as_str()));
        }
        self.batch.status = Some(plan.status.clone());
        self.sample();
    }

    fn count_ready(&mut self, i: usize, was: bool, is: bool) {
        let d = self.domain_of[i];
        match (was, is) {
            (false, true) => {
                self.nodes_online += 1;
                self.ready_in[d] += 1;
                if self.ready_in[d] == 1 {
                    self.racks_online += 1;
                }
            }
            (true, false) => {
                self.nodes_online -= 1;
                self.ready_in[d] -= 1;
                if self.ready_in[d] == 0 {
                    self.racks_online -= 1;
                }
            }
            _ => {}
        }
    }

    /// Records the power in use and what is online now (one sample an
    /// instant: the last plan's).
    fn sample(&mut self) {
        let rack_testing = self
            .snapshot
            .probes
            .iter()
            .filter(|p| p.group.is_some() && p.phase == ProbePhase::Running)
            .count()
            + self
                .snapshot
                .certifications
                .iter()
                .filter(|c| c.outcome == CertOutcome::Running)
                .map(|c| c.size as usize)
                .sum::<usize>();
        let watts = super::power::load(
            &self.pool.spec,
            self.snapshot.nodes.iter().map(|n| &**n),
            rack_testing as u32,
            self.now,
        );
        if watts > self.peak.0 {
            self.peak = (watts, Some(self.now));
        }
        let sample = Sample {
            at: self.now.to_string(),
            seconds: self.now.duration_since(self.start).as_secs(),
            watts,
            nodes_online: self.nodes_online,
            racks_online: self.racks_online,
        };
        match self.samples.last_mut() {
            Some(last) if last.seconds == sample.seconds => *last = sample,
            _ => self.samples.push(sample),
        }
    }

    /// When the next running check ends.
    fn next_finish(&self) -> Option<Timestamp> {
        let probes = self
            .snapshot
            .probes
            .iter()
            .filter(|p| p.phase == ProbePhase::Running)
            .filter_map(|p| Some(later(p.started_at?, self.duration(p.group.is_some()))));
        let certs = self
            .snapshot
            .certifications
            .iter()
            .filter(|c| c.outcome == CertOutcome::Running)
            .filter_map(|c| self.cert_ends.get(&c.name).copied());
        probes.chain(certs).min()
    }

    fn duration(&self, rack_test: bool) -> SignedDuration {
        if rack_test {
            self.timing.rack_test
        } else {
            self.timing.probe
        }
    }

    /// Moves the clock to `to` and ends every check due by then as passed.
    fn advance(&mut self, to: Timestamp) {
        self.now = to;
        let (probe_time, rack_time) = (self.timing.probe, self.timing.rack_test);
        for probe in &mut self.snapshot.probes {
            let took = if probe.group.is_some() {
                rack_time
            } else {
                probe_time
            };
            if probe.phase == ProbePhase::Running
                && probe.started_at.is_some_and(|s| later(s, took) <= to)
            {
                pass(probe, &self.containers.0, &self.containers.1, to);
            }
        }
        for cert in &mut self.snapshot.certifications {
            if cert.outcome == CertOutcome::Running
                && self.cert_ends.get(&cert.name).is_some_and(|t| *t <= to)
            {
                cert.outcome = CertOutcome::Finished {
                    passed: true,
                    message: "all categories succeeded".into(),
                    failed: Vec::new(),
                };
            }
        }
    }

    fn finish(self, stopped: Option<String>) -> Schedule {
        let status = self.batch.status.clone().unwrap_or_default();
        let ts = |t: &Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>| {
            t.as_ref().map(|t| t.0.to_string())
        };
        Schedule {
            pool: self.pool.metadata.name.clone().unwrap_or_default(),
            batch: self.batch.metadata.name.clone().unwrap_or_default(),
            start: self.start.to_string(),
            end: self.now.to_string(),
            seconds: self.now.duration_since(self.start).as_secs(),
            complete: stopped.is_none(),
            stopped,
            nodes: self.snapshot.nodes.len() as u32,
            racks: self.ready_in.len() as u32,
            admitted: status.nodes.ready,
            failed: status.nodes.failed,
            held: status.nodes.held,
            waves: status
                .waves
                .iter()
                .map(|w| WaveRun {
                    index: w.index,
                    target_nodes: w.target_nodes,
                    started_at: ts(&w.started_at),
                    completed_at: ts(&w.completed_at),
                    energy_watt_hours: w.energy_watt_hours,
                })
                .collect(),
            budget_watts: self
                .pool
                .spec
                .power
                .as_ref()
                .map(|p| u64::from(p.budget_kilowatts) * 1000),
            peak_watts: self.peak.0,
            peak_at: self.peak.1.map(|t| t.to_string()),
            energy_watt_hours: status.energy.as_ref().map_or(0, |e| e.watt_hours),
            gpu_hours: status.energy.as_ref().map_or(0, |e| e.gpu_hours),
            approvals: self.approvals,
            plans: self.plans,
            replans_changing: self.replans_changing,
            samples: self.samples,
        }
    }
}
