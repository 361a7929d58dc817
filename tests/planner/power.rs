//! The pool's power budget (`spec.power`), as properties: two batches of
//! one pool plan in any order over a GB200/GB300 fleet while probes end and
//! time passes, and the budget may be lowered mid-rollout. After every write:
//!
//! - a write that adds load never takes the pool's nodes under test past
//!   the budget in force;
//! - the nodes started within any minute never draw more than the ramp;
//! - lowering the budget never stops a check that runs (no node leaves
//!   validation backwards for it).
//!
//! Also: two batches that would each fit the budget alone are held
//! together, and the gate says so in words; and with maintenance windows
//! (`spec.windows`), no node ever starts outside one.

use std::collections::BTreeMap;

use gpufleet::api::{GpuPool, Power, RolloutBatch, Weekday, Window};
use gpufleet::keys;
use gpufleet::planner::sim::{Cluster, Outcome, Write, healthy_node};
use gpufleet::planner::windows::{Standing, standing};
use gpufleet::planner::{Action, NodeState, NodeView, Plan, Snapshot};
use gpufleet::vocabulary::Gate;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use proptest::prelude::*;

use crate::fixtures::{t0, with_batch, with_pool};

/// Two batches of the fixture pool over `domains` domains of 4 each
/// (alternately GB200 and GB300), rows `row1` and `row2`.
fn cluster(power: Power, domains: usize) -> Cluster {
    let mut pool: GpuPool = with_pool("spec: {healthChecks: {soakSeconds: 30}}");
    pool.spec.power = Some(power);
    let batch = |name: &str, uid: &str| -> RolloutBatch {
        let mut b = with_batch(&format!(
            "metadata: {{name: {name}, uid: {uid}}}\nspec: {{nodeSelector: {{matchLabels: {{gpufleet.io/batch: {name}}}}}, waves: [{{percent: 100}}], maxConcurrent: 100, maxFailuresPerWave: 100}}"
        ));
        b.metadata.name = Some(name.into());
        b
    };
    let nodes: Vec<NodeView> = (0..domains)
        .flat_map(|d| {
            (0..4).map(move |n| {
                let row = if d % 2 == 0 { "row1" } else { "row2" };
                let mut node = healthy_node(
                    &format!("n-d{d:03}-n{n:02}"),
                    &format!("clique-{d:03}"),
                    "east",
                    row,
                );
                if d % 4 >= 2 {
                    node.labels
                        .insert(keys::GPU_PRODUCT.into(), "NVIDIA-GB300".into());
                }
                node
            })
        })
        .collect();
    Cluster::new(
        vec![pool],
        vec![batch("row1", "uid-row1"), batch("row2", "uid-row2")],
        nodes,
        t0(),
    )
}

/// A budget of `kw` kilowatts, no ramp, the default node figures.
fn budget(kw: u32) -> Power {
    Power {
        budget_kilowatts: kw,
        ramp_kilowatts_per_minute: None,
        product_watts: BTreeMap::new(),
        node_watts: None,
        soak_at_load: false,
    }
}

/// Batch `b`'s plan over an up-to-date cache, a millisecond after the last
/// (a real clock moves between two plans), with the snapshot it read.
fn plan_of(c: &mut Cluster, b: usize) -> Option<(Snapshot, Plan)> {
    let cache = c.cache(0, 0);
    let snapshot = c.snapshot(b, &cache)?;
    c.now += SignedDuration::from_millis(1);
    let plan = c.plan(b, &snapshot)?;
    Some((snapshot, plan))
}

/// Watts the pool's nodes under test draw in the live cluster: validating,
/// or soaking at load while the soak runs (a soak that is over waits for
/// its domain idle).
fn in_use(cluster: &Cluster) -> u64 {
    let spec = &cluster.pools[0].spec;
    let power = spec.power.as_ref().expect("a power budget");
    let soak = SignedDuration::from_secs(i64::from(spec.health_checks.soak_seconds));
    cluster
        .nodes()
        .values()
        .filter(|n| {
            n.state == Some(NodeState::Validating)
                || (power.soak_at_load
                    && n.state == Some(NodeState::Soaking)
                    && n.since.get().is_none_or(|s| cluster.now < s + soak))
        })
        .map(|n| u64::from(power.node_watts(n.labels.get(keys::GPU_PRODUCT))))
        .sum()
}

#[derive(Clone, Debug)]
enum Step {
    Plan(usize),
    Finish,
    Wait(i64),
    /// The budget becomes this many kW.
    Lower(u32),
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        6 => (0..2usize).prop_map(Step::Plan),
        2 => Just(Step::Finish),
        2 => (1..45i64).prop_map(Step::Wait),
        1 => (5..60u32).prop_map(Step::Lower),
    ]
}

fn power() -> impl Strategy<Value = Power> {
    (
        8..80u32,
        prop::option::of(8..60u32),
        any::<bool>(),
        prop::option::of(1_000..9_000u32),
    )
        .prop_map(|(budget, ramp, soak_at_load, node_watts)| Power {
            budget_kilowatts: budget,
            ramp_kilowatts_per_minute: ramp,
            product_watts: BTreeMap::new(),
            node_watts,
            soak_at_load,
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn power_stays_within_the_budget_and_the_ramp(
        power in power(),
        steps in prop::collection::vec(step(), 1..80),
    ) {
        let mut c = cluster(power, 8);
        // When each node entered a state under test, and what it draws.
        let mut starts: Vec<(Timestamp, u64)> = Vec::new();
        for step in steps {
            match step {
                Step::Plan(b) => {
                    let Some((snapshot, plan)) = plan_of(&mut c, b) else { continue };
                    let writes: Vec<Action> =
                        Cluster::writes_in_order(&plan).into_iter().cloned().collect();
                    for action in &writes {
                        let before = in_use(&c);
                        let validating_before: Vec<String> = c
                            .nodes()
                            .values()
                            .filter(|n| n.state == Some(NodeState::Validating))
                            .map(|n| n.name.to_string())
                            .collect();
                        c.apply(b, action, Write::Merge, &snapshot);
                        let after = in_use(&c);
                        let p = c.pools[0].spec.power.clone().expect("power");
                        if after > before {
                            let budget = u64::from(p.budget_kilowatts) * 1000;
                            prop_assert!(
                                after <= budget,
                                "{action:?} took the load to {after} W, budget {budget} W"
                            );
                            starts.push((c.now, after - before));
                            if let Some(ramp) = p.ramp_kilowatts_per_minute {
                                let since = c.now - SignedDuration::from_secs(60);
                                let ramped: u64 = starts
                                    .iter()
                                    .filter(|(t, _)| *t > since)
                                    .map(|(_, w)| w)
                                    .sum();
                                prop_assert!(
                                    ramped <= u64::from(ramp) * 1000,
                                    "{ramped} W started within a minute, ramp {ramp} kW"
                                );
                            }
                        }
                        // A running check is never stopped: a node leaves
                        // validation only forward (soaking, ready, failed).
                        for name in validating_before {
                            if let Some(n) = c.node(&name) {
                                prop_assert!(
                                    n.state != Some(NodeState::Pending),
                                    "{name} was sent back to pending"
                                );
                            }
                        }
                    }
                    c.set_status(b, &plan);
                }
                Step::Finish => {
                    c.finish_probes(|_| Outcome::Pass);
                }
                Step::Wait(s) => c.advance(s),
                Step::Lower(kw) => {
                    if let Some(p) = c.pools[0].spec.power.as_mut() {
                        p.budget_kilowatts = kw;
                    }
                }
            }
        }
    }
}

/// Two batches of one pool share one budget: each alone fits (4 GB200
/// trays, 29.2 kW, under 35 kW), together they do not, and the second is
/// held with the gate saying why.
#[test]
fn two_batches_share_one_budget() {
    let mut c = cluster(budget(35), 2);
    for b in 0..2 {
        let (snapshot, plan) = plan_of(&mut c, b).expect("a plan");
        for action in Cluster::writes_in_order(&plan) {
            c.apply(b, action, Write::Merge, &snapshot);
        }
        c.set_status(b, &plan);
    }
    assert_eq!(in_use(&c), 4 * 7_300, "row1's four GB200 trays run");
    let row2 = c.batches[1].status.clone().expect("row2's status");
    let validating = c
        .nodes()
        .values()
        .filter(|n| n.state == Some(NodeState::Validating))
        .count();
    assert_eq!(validating, 4, "row2 waits");
    let ready = row2
        .conditions
        .iter()
        .find(|c| c.type_ == "Ready")
        .expect("a Ready condition");
    assert_eq!(ready.reason, Gate::PowerBudget.reason().as_str());
    assert!(
        ready.message.contains("power budget: 29.2 of 35 kW in use"),
        "{}",
        ready.message
    );
}

fn windows() -> impl Strategy<Value = Vec<Window>> {
    let day = prop_oneof![
        Just(Weekday::Mon),
        Just(Weekday::Tue),
        Just(Weekday::Wed),
        Just(Weekday::Thu),
        Just(Weekday::Fri),
        Just(Weekday::Sat),
        Just(Weekday::Sun),
    ];
    let window = (
        prop::collection::vec(day, 1..4),
        0..24u32,
        prop_oneof![Just(0u32), Just(30)],
        prop_oneof![Just("20m"), Just("2h"), Just("9h"), Just("30h")],
        prop_oneof![
            Just("UTC"),
            Just("America/Chicago"),
            Just("Asia/Tokyo"),
            Just("Europe/London")
        ],
    )
        .prop_map(|(days, h, m, duration, zone)| Window {
            days,
            start: format!("{h:02}:{m:02}"),
            duration: duration.into(),
            time_zone: zone.into(),
        });
    prop::collection::vec(window, 1..3)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn nothing_starts_outside_a_maintenance_window(
        windows in windows(),
        steps in prop::collection::vec(
            prop_oneof![
                4 => (0..2usize).prop_map(Step::Plan),
                2 => Just(Step::Finish),
                // Up to about 14 hours at a time.
                2 => (1..50_000i64).prop_map(Step::Wait),
            ],
            1..60,
        ),
    ) {
        let mut c = cluster(
            budget(1_000),
            4,
        );
        c.pools[0].spec.windows = windows.clone();
        for step in steps {
            match step {
                Step::Plan(b) => {
                    let Some((snapshot, plan)) = plan_of(&mut c, b) else { continue };
                    let open = standing(&windows, c.now) == Standing::Open;
                    for action in Cluster::writes_in_order(&plan) {
                        if let Action::PatchNode(p) = action {
                            let was = c.node(&p.node).map(|n| n.state());
                            let starts = was == Some(NodeState::Pending)
                                && p.state.is_some_and(|s| s != NodeState::Pending);
                            prop_assert!(
                                open || !starts,
                                "{} started at {} outside the windows {windows:?}",
                                p.node,
                                c.now
                            );
                        }
                        c.apply(b, action, Write::Merge, &snapshot);
                    }
                    let reason = plan
                        .status
                        .conditions
                        .iter()
                        .find(|c| c.type_ == "Ready")
                        .map(|c| c.reason.clone());
                    if reason.as_deref() == Some("OutsideMaintenanceWindow") {
                        prop_assert!(!open, "said outside a window while inside one");
                    }
                    c.set_status(b, &plan);
                }
                Step::Finish => {
                    c.finish_probes(|_| Outcome::Pass);
                }
                Step::Wait(s) => c.advance(s),
                Step::Lower(_) => {}
            }
        }
    }
}

/// Energy accounting: four GB200 trays (7.3 kW each) under test for a
/// minute cost 486.7 Wh, counted to the wave and the batch; counting
/// pauses while nothing is under test, and admitted GPUs count online.
#[test]
fn energy_is_the_load_under_test_times_its_time() {
    let mut c = cluster(budget(1_000), 1);
    let plan_once = |c: &mut Cluster| {
        let (snapshot, plan) = plan_of(c, 0).expect("a plan");
        for action in Cluster::writes_in_order(&plan) {
            c.apply(0, action, Write::Merge, &snapshot);
        }
        c.set_status(0, &plan);
        plan.status
    };
    let status = plan_once(&mut c);
    let energy = status.energy.expect("energy");
    assert_eq!(energy.watt_hours, 0, "nothing ran yet");
    assert!(energy.accounted_at.is_some(), "four trays started");
    c.advance(60);
    let status = plan_once(&mut c);
    let energy = status.energy.expect("energy");
    assert_eq!(energy.watt_hours, 487, "4 x 7.3 kW for a minute");
    assert_eq!(status.waves[0].energy_watt_hours, 487);
    // The probes pass: nothing is under test during the soak (not at
    // load), so the soak's half hour costs nothing.
    c.finish_probes(|_| Outcome::Pass);
    let status = plan_once(&mut c);
    assert_eq!(status.energy.as_ref().expect("energy").watt_hours, 487);
    assert_eq!(status.energy.as_ref().expect("energy").accounted_at, None);
    c.advance(1800);
    let status = plan_once(&mut c);
    let energy = status.energy.expect("energy");
    assert_eq!(energy.watt_hours, 487, "the soak drew nothing from checks");
    assert_eq!(energy.gpus_online, 16, "four trays of 4 GPUs admitted");
}

#[test]
fn a_soak_at_load_that_is_over_does_not_hold_its_domain_back() {
    // The budget fits one tray; the soak runs at load for 30 s. A domain of
    // four needs three healthy trays admitted together: the first tray's
    // soak ends long before the others have run, and it then waits for its
    // domain idle. Counted as under test it would hold the other three
    // back for ever.
    let mut c = cluster(
        Power {
            soak_at_load: true,
            ..budget(8)
        },
        1,
    );
    let mut done = false;
    for _ in 0..200 {
        let (snapshot, plan) = plan_of(&mut c, 0).expect("a plan");
        for action in Cluster::writes_in_order(&plan) {
            c.apply(0, action, Write::Merge, &snapshot);
        }
        c.set_status(0, &plan);
        assert!(in_use(&c) <= 8_000, "{} W under test", in_use(&c));
        if plan.status.nodes.ready == 4 {
            done = true;
            break;
        }
        c.finish_probes(|_| Outcome::Pass);
        c.advance(10);
    }
    assert!(
        done,
        "the domain was never admitted: {:?}",
        c.batches[0].status
    );
}
