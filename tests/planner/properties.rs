//! The planner's invariants over random fleets, batches and event orders.

use std::collections::{BTreeMap, BTreeSet};

use gpufleet::api::{GpuPool, RolloutBatch};
use gpufleet::keys;
use gpufleet::planner::sim::{Outcome, Sim, healthy_node};
use gpufleet::planner::{
    Action, EventTarget, GROUP_POD_PREFIX, NodeState, NodeView, ProbePhase, ProbeView, Snapshot,
    Termination, plan, probe_pod_name,
};
use gpufleet::vocabulary::EventReason;
use proptest::prelude::*;

use crate::fixtures::{t0, with_batch, with_pool};

/// A node's fate in a generated fleet.
#[derive(Clone, Debug)]
enum Fault {
    None,
    Static(u8),
    ProbeFails,
    ProbeHangs,
    FirstProbeFails,
    /// The probe exits 0 but its verdict is off (see [`verdict_outcome`]).
    Verdict(u8),
    /// A bad NVLink port: its own checks pass, every rack test group with
    /// it fails.
    NvlinkPort,
}

#[derive(Clone, Debug)]
struct Case {
    domains: Vec<Vec<Fault>>,
    per_domain: u32,
    min_healthy: u32,
    waves: Vec<(bool, u32)>,
    max_concurrent: u32,
    budget: u32,
    probe: bool,
    soak: u32,
    approved: Option<u32>,
    paused: bool,
    ops: Vec<Op>,
    order_seed: u64,
}

#[derive(Clone, Debug)]
enum Op {
    Step,
    FinishProbes,
    Advance(i64),
}

fn fault() -> impl Strategy<Value = Fault> {
    prop_oneof![
        6 => Just(Fault::None),
        1 => (0u8..6).prop_map(Fault::Static),
        1 => Just(Fault::ProbeFails),
        1 => Just(Fault::ProbeHangs),
        1 => Just(Fault::FirstProbeFails),
        2 => (0u8..8).prop_map(Fault::Verdict),
        1 => Just(Fault::NvlinkPort),
    ]
}

fn case() -> impl Strategy<Value = Case> {
    (1u32..6)
        .prop_flat_map(|per_domain| {
            (
                prop::collection::vec(
                    prop::collection::vec(fault(), 1..=per_domain as usize),
                    1..7,
                ),
                Just(per_domain),
                1..=per_domain,
                prop::collection::vec((any::<bool>(), 1u32..100), 1..4),
                1u32..12,
                0u32..3,
                any::<bool>(),
                prop_oneof![Just(0u32), 1u32..120],
                prop::option::of(0u32..4),
                prop::bool::weighted(0.15),
                prop::collection::vec(
                    prop_oneof![
                        3 => Just(Op::Step),
                        2 => Just(Op::FinishProbes),
                        1 => (1i64..700).prop_map(Op::Advance),
                    ],
                    1..40,
                ),
                any::<u64>(),
            )
        })
        .prop_map(
            |(
                domains,
                per_domain,
                min_healthy,
                waves,
                max_concurrent,
                budget,
                probe,
                soak,
                approved,
                paused,
                ops,
                order_seed,
            )| Case {
                domains,
                per_domain,
                min_healthy,
                waves,
                max_concurrent,
                budget,
                probe,
                soak,
                approved,
                paused,
                ops,
                order_seed,
            },
        )
}

/// Increasing wave targets from the random draws: node targets first, then
/// percents, as the CRD's rules require.
pub(crate) fn waves_yaml(draws: &[(bool, u32)]) -> String {
    let mut nodes: Vec<u32> = draws.iter().filter(|(n, _)| *n).map(|(_, v)| *v).collect();
    let mut pct: Vec<u32> = draws.iter().filter(|(n, _)| !*n).map(|(_, v)| *v).collect();
    nodes.sort();
    nodes.dedup();
    pct.sort();
    pct.dedup();
    let items: Vec<String> = nodes
        .iter()
        .map(|n| format!("{{nodes: {n}}}"))
        .chain(pct.iter().map(|p| format!("{{percent: {p}}}")))
        .collect();
    format!("[{}]", items.join(", "))
}

/// The pool's cap in a third of the cases, drawn from the order seed (the
/// case's tuple of draws is full): 1 to 8 nodes.
fn pool_cap(case: &Case) -> Option<u32> {
    case.order_seed
        .is_multiple_of(3)
        .then(|| 1 + (case.order_seed / 3 % 8) as u32)
}

/// The pool gates on verdicts (fabric and firmware) in two thirds of the
/// cases with a probe, drawn from the order seed; with `uniformDomains`
/// in half of those.
fn gates(case: &Case) -> Option<bool> {
    (case.probe && !(case.order_seed >> 8).is_multiple_of(3))
        .then_some((case.order_seed >> 11) & 1 == 1)
}

/// The pool runs a rack test in half the cases, drawn from the order seed.
fn rack_test(case: &Case) -> bool {
    (case.order_seed >> 13) & 1 == 1
}

/// Of those, half run it through NVCRE; and NVCRE names the bad trays
/// itself in half of those (else it fails every node of a failing group).
fn by_nvcre(case: &Case) -> Option<bool> {
    ((case.order_seed >> 14) & 1 == 1).then_some((case.order_seed >> 15) & 1 == 1)
}

const VBIOS: [&str; 2] = ["97.00.82.00.5F", "97.00.90.00.01"];

/// A clique label as GPU Feature Discovery writes it, for domain `d`.
fn clique_label(d: usize) -> String {
    format!("00000000-0000-4000-8000-0000000000{:02}.{}", d % 100, d + 1)
}

/// What the probe of `node` (in domain `d`) writes: a healthy tray's
/// verdict, or one broken as `fault` says.
fn verdict_outcome(node: &str, d: usize, fault: Option<u8>) -> Outcome {
    let label = clique_label(d);
    let (uuid, id) = gpufleet::verdict::split_clique(&label).unwrap();
    let mut v = gpufleet::verdict::healthy_tray(
        node,
        "NVIDIA-GB200",
        4,
        (uuid, id),
        "570.133.20",
        VBIOS[0],
    );
    let fabric = |v: &mut gpufleet::verdict::Verdict,
                  f: &dyn Fn(&mut gpufleet::verdict::Fabric)| {
        for g in &mut v.gpus {
            f(g.fabric.as_mut().unwrap());
        }
    };
    match fault {
        None => {}
        Some(0) => fabric(&mut v, &|f| f.clique_id = Some(0)),
        Some(1) => fabric(&mut v, &|f| f.clique_id = Some(id + 100)),
        Some(2) => fabric(&mut v, &|f| f.state = "In Progress".into()),
        Some(3) => v.gpus[1].vbios = Some("96.00.00.00.01".into()),
        Some(4) => return Outcome::Pass,
        Some(5) => {
            return Outcome::Verdict {
                exit_code: 0,
                message: "{\"schema\": \"gpufleet.io/verdict/v1\", \"gpus\": 3".into(),
            };
        }
        Some(6) => v.checks[2].result = gpufleet::verdict::CheckResult::Fail,
        Some(_) => {
            for g in &mut v.gpus {
                g.vbios = Some(VBIOS[1].into());
            }
        }
    }
    Outcome::Verdict {
        exit_code: 0,
        message: v.encode().unwrap(),
    }
}

/// Does this verdict fault fail its node under the case's pool, whatever
/// the rest of its domain says?
fn verdict_fails(case: &Case, kind: u8) -> bool {
    case.probe && (matches!(kind, 5 | 6) || (gates(case).is_some() && kind <= 4))
}

fn build(case: &Case) -> (Sim, BTreeMap<String, Fault>) {
    let probe = if case.probe {
        "{timeoutSeconds: 300, retries: 1, template: {spec: {containers: [{name: p, image: busybox}]}}}"
    } else {
        "null"
    };
    let gate = match gates(case) {
        None => String::new(),
        Some(uniform) => format!(
            ", fabric: {{}}, firmware: {{vbios: ['{}', '{}'], uniformDomains: {uniform}}}",
            VBIOS[0], VBIOS[1]
        ),
    };
    let rack = match (rack_test(case), by_nvcre(case)) {
        (false, _) => "",
        (true, None) => {
            ", domainTest: {maxRounds: 3, template: {spec: {containers: [{name: nccl, image: nccl}]}}}"
        }
        (true, Some(_)) => ", domainTest: {maxRounds: 3, nvcre: {}}",
    };
    let mut pool: GpuPool = with_pool(&format!(
        "spec: {{topology: {{nodesPerDomain: {}, minHealthyNodesPerDomain: {}}}, healthChecks: {{probe: {probe}, soakSeconds: {}{gate}{rack}}}}}",
        case.per_domain, case.min_healthy, case.soak
    ));
    pool.spec.max_concurrent = pool_cap(case);
    let approved = case.approved.map_or("null".to_string(), |a| a.to_string());
    let batch: RolloutBatch = with_batch(&format!(
        "spec: {{waves: {}, maxConcurrent: {}, maxFailuresPerWave: {}, approvedWaves: {approved}, paused: {}}}",
        waves_yaml(&case.waves),
        case.max_concurrent,
        case.budget,
        case.paused
    ));
    let mut nodes = Vec::new();
    let mut faults = BTreeMap::new();
    for (d, domain) in case.domains.iter().enumerate() {
        for (i, fault) in domain.iter().enumerate() {
            let name = format!("n{d}-{i}");
            let mut node = healthy_node(&name, &clique_label(d), "east", "row1");
            if let Fault::Static(kind) = fault {
                match kind {
                    0 => drop(node.conditions.insert("Ready".into(), "False".into())),
                    1 => drop(node.conditions.insert("GpuXidError".into(), "True".into())),
                    2 => node.allocatable_gpus = Some(3),
                    3 => drop(
                        node.labels
                            .insert(keys::DRIVER_VERSION.into(), "570.86.15".into()),
                    ),
                    4 => node.unschedulable = true,
                    _ => drop(
                        node.labels
                            .insert(keys::GPU_PRODUCT.into(), "NVIDIA-H100".into()),
                    ),
                }
            }
            faults.insert(name, fault.clone());
            nodes.push(node);
        }
    }
    shuffle(&mut nodes, case.order_seed);
    let outcomes = faults.clone();
    let gated = gates(case).is_some();
    let domain_of_node: BTreeMap<String, usize> = case
        .domains
        .iter()
        .enumerate()
        .flat_map(|(d, domain)| (0..domain.len()).map(move |i| (format!("n{d}-{i}"), d)))
        .collect();
    let sim = Sim::new(
        pool,
        batch,
        Snapshot {
            nodes: nodes.into_iter().map(std::sync::Arc::new).collect(),
            ..Default::default()
        },
        t0(),
        move |node, attempt| match outcomes.get(node) {
            Some(Fault::ProbeFails) => Outcome::Fail {
                exit_code: 1,
                message: "bad".into(),
            },
            Some(Fault::ProbeHangs) => Outcome::Hang,
            Some(Fault::FirstProbeFails) if attempt == 1 => Outcome::Fail {
                exit_code: 1,
                message: "flaky".into(),
            },
            Some(Fault::Verdict(kind)) => verdict_outcome(node, domain_of_node[node], Some(*kind)),
            _ if gated => verdict_outcome(node, domain_of_node[node], None),
            _ => Outcome::Pass,
        },
    );
    let ports: BTreeSet<String> = faults
        .iter()
        .filter(|(_, f)| matches!(f, Fault::NvlinkPort))
        .map(|(n, _)| n.clone())
        .collect();
    let mut sim = sim;
    if by_nvcre(case) == Some(true) {
        let ports = ports.clone();
        sim.cert_failed = Some(Box::new(move |nodes: &[String]| {
            nodes
                .iter()
                .filter(|n| ports.contains(*n))
                .map(|n| gpufleet::planner::FailedNode {
                    name: n.clone(),
                    reason: "HardwareFailureDetected".into(),
                    message: "NVLink port down".into(),
                })
                .collect()
        }));
    }
    sim.group_passes = Some(Box::new(move |nodes: &[String]| {
        !nodes.iter().any(|n| ports.contains(n))
    }));
    (sim, faults)
}

/// Would a rack test group of these nodes pass?
fn group_passes(faults: &BTreeMap<String, Fault>, nodes: &[String]) -> bool {
    !nodes
        .iter()
        .any(|n| matches!(faults.get(n), Some(Fault::NvlinkPort)))
}

fn shuffle<T>(items: &mut [T], mut seed: u64) {
    for i in (1..items.len()).rev() {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let j = (seed >> 33) as usize % (i + 1);
        items.swap(i, j);
    }
}

fn domain_of(node: &NodeView) -> String {
    node.labels
        .get("nvidia.com/gpu.clique")
        .map(str::to_owned)
        .unwrap_or_default()
}

/// Checks every invariant on the simulated cluster after a step.
fn check(
    sim: &Sim,
    case: &Case,
    faults: &BTreeMap<String, Fault>,
    ever_failed: &BTreeSet<String>,
) -> Result<(), TestCaseError> {
    let nodes = &sim.snapshot.nodes;
    let validating = nodes
        .iter()
        .filter(|n| n.state() == NodeState::Validating)
        .count() as u32;
    prop_assert!(
        validating <= case.max_concurrent,
        "{validating} validating > maxConcurrent {}",
        case.max_concurrent
    );
    if let Some(cap) = pool_cap(case) {
        prop_assert!(
            validating <= cap,
            "{validating} validating > the pool's maxConcurrent {cap}"
        );
    }

    // Trays under a rack test count against the caps too.
    let mut testing: BTreeSet<&str> = sim
        .snapshot
        .probes
        .iter()
        .filter(|p| {
            p.group.is_some() && !matches!(p.phase, ProbePhase::Succeeded | ProbePhase::Failed)
        })
        .map(|p| p.node.as_str())
        .collect();
    for cert in &sim.snapshot.certifications {
        if cert.outcome == gpufleet::planner::CertOutcome::Running {
            testing.extend(sim.cert_nodes[&cert.name].iter().map(String::as_str));
        }
    }
    // Every group tested, by pods or by NVCRE.
    let groups: Vec<&Vec<String>> = sim
        .group_nodes
        .values()
        .chain(sim.cert_nodes.values())
        .collect();
    let cap = pool_cap(case).map_or(case.max_concurrent, |p| p.min(case.max_concurrent));
    prop_assert!(
        validating + testing.len() as u32 <= cap,
        "{validating} validating and {} under a rack test > the cap {cap}",
        testing.len()
    );
    if rack_test(case) {
        for node in nodes.iter().filter(|n| n.state() == NodeState::Ready) {
            // Admitted only after a group with it passed.
            let proven = groups
                .iter()
                .any(|g| g.iter().any(|n| *n == node.name) && group_passes(faults, g));
            prop_assert!(
                proven,
                "node {} admitted without a passed rack test",
                node.name
            );
        }
        for node in nodes.iter().filter(|n| n.state() == NodeState::Failed) {
            let reason = node.reason.as_deref().unwrap_or_default();
            if reason.starts_with("rack test: this tray failed beside")
                || reason.starts_with("rack test (attribution round")
            {
                prop_assert!(
                    matches!(faults.get(node.name.as_str()), Some(Fault::NvlinkPort)),
                    "healthy node {} blamed by attribution: {reason}",
                    node.name
                );
            }
            if reason.starts_with("rack test") {
                let passed_a_group = groups.iter().any(|g| {
                    g.iter().any(|n| *n == node.name) && group_passes(faults, g) && g.len() > 1
                });
                prop_assert!(
                    !passed_a_group || reason.contains("rack itself") || reason.contains("cap"),
                    "node {} passed in a group that passed, then failed: {reason}",
                    node.name
                );
            }
        }
    }
    for node in nodes.iter().filter(|n| n.state() == NodeState::Ready) {
        let fault = &faults[node.name.as_str()];
        let probe_fault = case.probe && matches!(fault, Fault::ProbeFails | Fault::ProbeHangs);
        prop_assert!(
            !matches!(fault, Fault::Static(_)) && !probe_fault,
            "node {} with {fault:?} was admitted",
            node.name
        );
        prop_assert!(
            !ever_failed.contains(node.name.as_str()),
            "failed node {} was admitted",
            node.name
        );
        // A node whose verdict fails a gate is never admitted; under gates,
        // none is admitted without a record that passed the fabric gate.
        if let Fault::Verdict(kind) = fault {
            prop_assert!(
                !verdict_fails(case, *kind),
                "node {} with verdict fault {kind} was admitted",
                node.name
            );
        }
        if gates(case).is_some() {
            let record = gpufleet::planner::VerdictRecord::of(node);
            prop_assert!(
                record
                    .as_ref()
                    .is_some_and(|r| r.fabric && r.failed.is_empty()),
                "node {} admitted under gates with record {record:?}",
                node.name
            );
        }
        prop_assert!(
            !node.has_taint("gpufleet.io/onboarding", "NoSchedule"),
            "ready node {} kept its taint",
            node.name
        );
    }
    for node in nodes
        .iter()
        .filter(|n| n.state().in_progress() || n.state() == NodeState::Held)
    {
        prop_assert!(
            node.has_taint("gpufleet.io/onboarding", "NoSchedule"),
            "{} is {} without the taint",
            node.name,
            node.state()
        );
    }

    let mut by_domain: BTreeMap<String, Vec<&NodeView>> = BTreeMap::new();
    for node in nodes {
        by_domain.entry(domain_of(node)).or_default().push(node);
    }
    for (domain, members) in &by_domain {
        let waves: BTreeSet<u32> = members
            .iter()
            .filter(|n| n.state() != NodeState::Pending)
            .filter_map(|n| n.wave)
            .collect();
        prop_assert!(
            waves.len() <= 1,
            "domain {domain} split across waves {waves:?}"
        );
        let ready = members
            .iter()
            .filter(|n| n.state() == NodeState::Ready)
            .count() as u32;
        prop_assert!(
            ready == 0 || ready >= case.min_healthy,
            "domain {domain} partly admitted: {ready} < {}",
            case.min_healthy
        );
        // The admitted trays of a gated domain agree: one clique, and one
        // firmware tuple when the pool asks for uniform domains.
        if let Some(uniform) = gates(case) {
            let records: Vec<_> = members
                .iter()
                .filter(|n| n.state() == NodeState::Ready)
                .filter_map(|n| gpufleet::planner::VerdictRecord::of(n))
                .collect();
            let cliques: BTreeSet<_> = records.iter().map(|r| r.clique.clone()).collect();
            prop_assert!(
                cliques.len() <= 1,
                "domain {domain} admitted in cliques {cliques:?}"
            );
            if uniform {
                let tuples: BTreeSet<_> = records.iter().map(|r| r.firmware.clone()).collect();
                prop_assert!(
                    tuples.len() <= 1,
                    "domain {domain} admitted with firmware {tuples:?}"
                );
            }
        }
    }

    // A started node's earlier waves are all decided.
    let plan = sim.plan();
    let wave_of: BTreeMap<&str, u32> = nodes
        .iter()
        .filter_map(|n| n.wave.map(|w| (n.name.as_str(), w)))
        .collect();
    for node in nodes
        .iter()
        .filter(|n| n.state() != NodeState::Pending && n.wave.is_some())
    {
        let w = node.wave.unwrap_or(0);
        for other in nodes
            .iter()
            .filter(|o| o.state() == NodeState::Pending || o.state().in_progress())
        {
            if let Some(&ow) = wave_of.get(other.name.as_str()) {
                prop_assert!(
                    ow >= w || other.state() == NodeState::Pending,
                    "{} (wave {w}) started while {} (wave {ow}) is {}",
                    node.name,
                    other.name,
                    other.state()
                );
            }
        }
    }
    // ...and the status agrees: every wave before a started node's wave is complete.
    if let Some(status) = &sim.batch.status {
        for node in nodes.iter().filter(|n| n.state() != NodeState::Pending) {
            let w = node.wave.unwrap_or(1) as usize;
            for earlier in status.waves.iter().take(w.saturating_sub(1)) {
                prop_assert!(
                    earlier.completed_at.is_some(),
                    "{} (wave {w}) started before wave {} completed",
                    node.name,
                    earlier.index
                );
            }
        }
    }
    if case.paused {
        prop_assert!(
            plan.node_patches().all(|p| {
                let before = nodes.iter().find(|n| n.name == p.node).map(|n| n.state());
                before != Some(NodeState::Pending)
                    || p.state.is_none_or(|s| s == NodeState::Pending)
            }),
            "paused, yet a pending node started"
        );
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn invariants_hold_under_any_event_order(case in case()) {
        let (mut sim, faults) = build(&case);
        let mut ever_failed = BTreeSet::new();
        for op in case.ops.iter().chain(std::iter::repeat_n(&Op::Step, 1)) {
            match op {
                Op::Step => { sim.step(); }
                Op::FinishProbes => {
                    sim.finish_probes();
                    sim.finish_certifications();
                }
                Op::Advance(s) => sim.advance(*s),
            }
            ever_failed.extend(sim.snapshot.nodes.iter().filter(|n| n.state() == NodeState::Failed).map(|n| n.name.to_string()));
            check(&sim, &case, &faults, &ever_failed)?;
        }
        // And to the end.
        sim.run(500);
        ever_failed.extend(sim.snapshot.nodes.iter().filter(|n| n.state() == NodeState::Failed).map(|n| n.name.to_string()));
        check(&sim, &case, &faults, &ever_failed)?;
        if !case.paused && case.approved.is_none() {
            // Unless halted by failures, every node reaches a verdict.
            let plan = sim.plan();
            let stalled = plan.status.conditions.iter().any(|c| c.type_ == "Stalled" && c.status == "True");
            if !stalled {
                prop_assert!(sim.snapshot.nodes.iter().all(|n| n.state().is_verdict()), "rollout did not finish: {:?}", plan.status.nodes);
            }
        }
        // At most three writes per node from pending to ready (probe retries
        // and holds are extra, and only on the failure path).
        for node in sim.snapshot.nodes.iter().filter(|n| n.state() == NodeState::Ready) {
            // (A probe may also time out when the clock jumps past it: a retry.)
            // So may a run that never started (the clock jumped past its
            // start deadline): one write each, to count it.
            let not_run = sim.log.iter().filter(|a| matches!(a, Action::Event(e) if e.reason == EventReason::ProbeNotRun && e.target == EventTarget::Node(node.name.to_string()))).count() as u32;
            if matches!(faults[node.name.as_str()], Fault::None) && node.attempt <= 1 {
                prop_assert!(sim.node_writes.get(node.name.as_str()).copied().unwrap_or(0) <= 3 + not_run, "{} took {:?} writes", node.name, sim.node_writes.get(node.name.as_str()));
            }
        }
    }

    #[test]
    fn planning_again_after_applying_yields_no_new_actions(case in case()) {
        let (mut sim, _) = build(&case);
        for op in &case.ops {
            match op {
                Op::Step => {
                    let first = sim.step();
                    let mut again = sim.plan();
                    // By design, a rack test a plan deletes (one that timed
                    // out, say) holds its room until it is gone: the next
                    // plan may then start another one. Only that may follow.
                    let deleted_rack_test = first.changes().any(|a| match a {
                        Action::DeleteCertification { .. } => true,
                        Action::DeleteProbe { pod_name, .. } => pod_name.starts_with(GROUP_POD_PREFIX),
                        _ => false,
                    });
                    if deleted_rack_test {
                        let starts_a_rack_test = |a: &Action| matches!(a, Action::CreateCertification(_))
                            || matches!(a, Action::CreateProbe(r) if r.group.is_some());
                        if again.changes().all(starts_a_rack_test) && again.changes().count() > 0 {
                            sim.apply(&again);
                            again = sim.plan();
                        }
                    }
                    prop_assert_eq!(again.changes().count(), 0, "after {:?}\nagain: {:?}", first.changes().collect::<Vec<_>>(), again.changes().collect::<Vec<_>>());
                    if !deleted_rack_test {
                        prop_assert_eq!(&again.status, &first.status);
                    }
                }
                Op::FinishProbes => {
                    sim.finish_probes();
                    sim.finish_certifications();
                }
                Op::Advance(s) => sim.advance(*s),
            }
        }
    }

    #[test]
    fn input_order_does_not_change_the_plan(case in case(), seed in any::<u64>()) {
        let (mut sim, _) = build(&case);
        for op in &case.ops {
            match op {
                Op::Step => {
                    let mut shuffled = sim.snapshot.clone();
                    shuffle(&mut shuffled.nodes, seed);
                    shuffle(&mut shuffled.probes, seed ^ 1);
                    let a = plan(&sim.pool, &sim.batch, &sim.snapshot, sim.now);
                    let b = plan(&sim.pool, &sim.batch, &shuffled, sim.now);
                    prop_assert_eq!(&a, &b);
                    sim.apply(&a);
                }
                Op::FinishProbes => {
                    sim.finish_probes();
                    sim.finish_certifications();
                }
                Op::Advance(s) => sim.advance(*s),
            }
        }
    }

    #[test]
    fn paused_starts_nothing(mut case in case()) {
        case.paused = true;
        let (mut sim, _) = build(&case);
        sim.run(300);
        prop_assert!(sim.snapshot.nodes.iter().all(|n| n.state() == NodeState::Pending));
        prop_assert_eq!(sim.probes_created, 0);
    }
}

/// What happens to a probe pod between two plans, in the two-container
/// probe property.
#[derive(Clone, Debug)]
enum ProbeOp {
    Step,
    /// A container of the probe of node `.0` ends with exit `.2`.
    ContainerEnds(usize, usize, i32),
    /// The pod of node `.0` reports a phase.
    Phase(usize, ProbePhase),
    /// Someone else's pod takes the probe's name of node `.0`: Succeeded,
    /// every container 0, without this batch's UID (`.1`: another batch's).
    Squat(usize, bool),
    /// Probes run to their outcome honestly.
    Finish,
    Advance(i64),
}

fn probe_op() -> impl Strategy<Value = ProbeOp> {
    prop_oneof![
        4 => Just(ProbeOp::Step),
        4 => (0usize..4, 0usize..2, prop_oneof![4 => Just(0), 1 => Just(3)])
            .prop_map(|(n, c, e)| ProbeOp::ContainerEnds(n, c, e)),
        2 => (0usize..4, prop_oneof![
            Just(ProbePhase::Running),
            Just(ProbePhase::Succeeded),
            Just(ProbePhase::Failed),
        ]).prop_map(|(n, p)| ProbeOp::Phase(n, p)),
        1 => (0usize..4, any::<bool>()).prop_map(|(n, o)| ProbeOp::Squat(n, o)),
        1 => Just(ProbeOp::Finish),
        1 => (1i64..400).prop_map(ProbeOp::Advance),
    ]
}

/// The probe pod a validating node's verdict may come from: its current
/// attempt's, made by this batch for it, Succeeded, every container 0.
fn a_passing_probe(sim: &Sim, node: &NodeView) -> bool {
    let name = gpufleet::planner::awaited_probe(node);
    sim.snapshot.probes.iter().any(|p| {
        p.name == name
            && !p.deleting
            && p.node == node.name
            && p.batch_uid == sim.batch.metadata.uid
            && p.phase == ProbePhase::Succeeded
            && p.terminated.iter().all(|t| t.exit_code == 0)
            && p.terminated.iter().filter(|t| !t.init).count() == 2
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// A node leaves validating forward (to soaking, or beyond) only on a
    /// probe pod this batch made for its current attempt that Succeeded
    /// with every container exited 0 — whatever order containers end in,
    /// whatever phase is reported, whoever squats on the name.
    #[test]
    fn a_node_passes_validation_only_on_its_own_succeeded_probe(
        ops in prop::collection::vec(probe_op(), 1..60),
    ) {
        let pool = with_pool(
            "spec: {topology: {nodesPerDomain: 4, minHealthyNodesPerDomain: 1}, healthChecks: {soakSeconds: 0, probe: {timeoutSeconds: 600, retries: 1, template: {spec: {containers: [{name: inventory, image: x}, {name: burn-in, image: x}]}}}}}",
        );
        let batch = with_batch("spec: {waves: [{percent: 100}], maxConcurrent: 4, maxFailuresPerWave: 4}");
        let nodes: Vec<NodeView> = (0..4)
            .map(|i| healthy_node(&format!("n{i}"), "clique-0", "east", "row1"))
            .collect();
        let mut sim = Sim::new(
            pool,
            batch,
            Snapshot {
                nodes: nodes.into_iter().map(std::sync::Arc::new).collect(),
                ..Default::default()
            },
            t0(),
            |_, _| Outcome::Pass,
        );
        let containers = ["inventory", "burn-in"];
        for op in ops.iter().chain(std::iter::once(&ProbeOp::Step)) {
            match op {
                ProbeOp::Step => {
                    let before: BTreeMap<String, (NodeState, bool)> = sim
                        .snapshot
                        .nodes
                        .iter()
                        .map(|n| (n.name.to_string(), (n.state(), a_passing_probe(&sim, n))))
                        .collect();
                    sim.step();
                    for node in sim.snapshot.nodes.iter() {
                        let (was, passing) = before[node.name.as_str()];
                        let forward = matches!(
                            node.state(),
                            NodeState::Soaking | NodeState::Ready | NodeState::Held
                        );
                        prop_assert!(
                            was != NodeState::Validating || !forward || passing,
                            "{} went from validating to {} without a passing probe of its own",
                            node.name,
                            node.state()
                        );
                    }
                }
                ProbeOp::ContainerEnds(n, c, exit) => {
                    let node = format!("n{n}");
                    if let Some(p) = sim.snapshot.probes.iter_mut().find(|p| p.node == node)
                        && !p.terminated.iter().any(|t| t.container == containers[*c])
                    {
                        p.terminated.push(Termination {
                            container: containers[*c].into(),
                            init: false,
                            exit_code: *exit,
                            message: (*exit != 0).then(|| "diag failed".into()),
                        });
                    }
                }
                ProbeOp::Phase(n, phase) => {
                    let node = format!("n{n}");
                    if let Some(p) = sim.snapshot.probes.iter_mut().find(|p| p.node == node) {
                        p.phase = *phase;
                    }
                }
                ProbeOp::Squat(n, other_batch) => {
                    let node = sim.snapshot.nodes[*n].clone();
                    let name = probe_pod_name(&node.name, node.attempt.max(1));
                    sim.snapshot.probes.retain(|p| p.name != name);
                    sim.snapshot.probes.push(ProbeView {
                        name,
                        node: node.name.to_string(),
                        attempt: node.attempt.max(1),
                        phase: ProbePhase::Succeeded,
                        batch_uid: other_batch.then(|| "0d0e0a0d-0000-4000-8000-00000000beef".into()),
                        containers: 2,
                        init_containers: 0,
                        terminated: containers
                            .iter()
                            .map(|c| Termination {
                                container: (*c).into(),
                                init: false,
                                exit_code: 0,
                                message: None,
                            })
                            .collect(),
                        message: None,
                        created: Some(sim.now),
                        run: None,
                        started_at: Some(sim.now),
                        finished_at: None,
                        not_running: None,
                        evicted: false,
                        deleting: false,
                        verdict: gpufleet::verdict::Read::Absent,
                        group: None,
                    });
                }
                ProbeOp::Finish => sim.finish_probes(),
                ProbeOp::Advance(s) => sim.advance(*s),
            }
        }
    }
}
