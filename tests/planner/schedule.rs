//! The projected schedule (`gpufleet plan --schedule`): the planner run in
//! simulated time. As properties over fleets, budgets, ramps, soaks at load
//! and probe durations:
//!
//! - every node is admitted and the batch ends Ready;
//! - the power in use never exceeds the budget, and never grows by more
//!   than the ramp within a minute;
//! - each wave starts when the one before it ends, never before;
//! - the energy counted is what the nodes under test drew: each node's
//!   watts for its probe (and its soak, when the soak runs at load);
//! - with a maintenance window, the load only grows inside one.

use gpufleet::api::{GpuPool, Power, RolloutBatch, Weekday, Window};
use gpufleet::keys;
use gpufleet::planner::NodeView;
use gpufleet::planner::schedule::{Options, Schedule, Timing, WaveRun, project};
use gpufleet::planner::sim::fleet;
use gpufleet::planner::windows::{Standing, standing};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use proptest::prelude::*;

use crate::fixtures::{t0, with_batch, with_pool};

/// A schedule as its steps: the samples that change something, the waves'
/// times, the figures; energy and plans left out.
fn steps(s: &Schedule) -> Schedule {
    let mut samples = s.samples.clone();
    samples.dedup_by(|b, a| {
        (a.watts, a.nodes_online, a.racks_online) == (b.watts, b.nodes_online, b.racks_online)
    });
    Schedule {
        samples,
        plans: 0,
        energy_watt_hours: 0,
        gpu_hours: 0,
        waves: s
            .waves
            .iter()
            .map(|w| WaveRun {
                energy_watt_hours: 0,
                ..w.clone()
            })
            .collect(),
        ..s.clone()
    }
}

/// As the operator plans: again after each plan that changed something.
const REPLAN: Options = Options {
    max_plans: 100_000,
    replan: true,
};

fn pool(power: Option<Power>, soak_seconds: u32) -> GpuPool {
    let mut pool = with_pool(&format!(
        "spec: {{healthChecks: {{soakSeconds: {soak_seconds}, probe: {{timeoutSeconds: 3600}}}}}}"
    ));
    pool.spec.power = power;
    pool
}

/// With a rack test over each domain: group pods, or an NVCRE
/// Certification.
fn with_rack_test(mut pool: GpuPool, nvcre: bool) -> GpuPool {
    let test = if nvcre {
        "{nvcre: {minBusBandwidthGBps: 800}}"
    } else {
        "{template: {spec: {containers: [{name: nccl, image: nccl-tests}]}}}"
    };
    let overlay: GpuPool = with_pool(&format!("spec: {{healthChecks: {{domainTest: {test}}}}}"));
    pool.spec.health_checks.domain_test = overlay.spec.health_checks.domain_test;
    pool
}

fn batch(max_concurrent: u32) -> RolloutBatch {
    with_batch(&format!(
        "spec: {{waves: [{{nodes: 4}}, {{percent: 50}}, {{percent: 100}}], maxConcurrent: {max_concurrent}}}"
    ))
}

/// `domains` domains of 4, every third domain GB300.
fn nodes(domains: usize) -> Vec<NodeView> {
    let mut nodes = fleet("n", domains, 4, "east", "row1");
    for (i, node) in nodes.iter_mut().enumerate() {
        if (i / 4) % 3 == 2 {
            node.labels
                .insert(keys::GPU_PRODUCT.into(), "NVIDIA-GB300".into());
        }
    }
    nodes
}

fn power(budget_kw: u32, ramp_kw: Option<u32>, soak_at_load: bool) -> Power {
    Power {
        budget_kilowatts: budget_kw,
        ramp_kilowatts_per_minute: ramp_kw,
        product_watts: Default::default(),
        node_watts: None,
        soak_at_load,
    }
}

fn watts_of(node: &NodeView, power: &Power) -> u64 {
    u64::from(power.node_watts(node.labels.get(keys::GPU_PRODUCT)))
}

fn seconds(t: &Option<String>) -> i64 {
    let at: Timestamp = t.as_deref().expect("a time").parse().unwrap();
    at.duration_since(t0()).as_secs()
}

fn timing(probe_minutes: i64) -> Timing {
    Timing {
        probe: SignedDuration::from_mins(probe_minutes),
        rack_test: SignedDuration::from_mins(10),
    }
}

/// Projects as the operator plans, and checks that planning again at an
/// instant never changed anything, so that `gpufleet plan` (which moves
/// the clock on at once) gives the same schedule with half the plans.
fn run(pool: &GpuPool, batch: &RolloutBatch, nodes: Vec<NodeView>, probe_minutes: i64) -> Schedule {
    let s = project(
        pool,
        batch,
        nodes.clone(),
        t0(),
        timing(probe_minutes),
        REPLAN,
    );
    assert_eq!(
        s.replans_changing, 0,
        "a plan again at an instant changed something"
    );
    let fast = Options {
        replan: false,
        ..REPLAN
    };
    let quick = project(pool, batch, nodes, t0(), timing(probe_minutes), fast);
    // The same schedule: the same steps of power and racks at the same
    // times, the same waves. (A second plan may ask to look again in a
    // minute and find nothing to do: a sample that repeats the one before;
    // and energy is rounded per plan.)
    let slack = u64::from(s.plans) * s.waves.len() as u64;
    assert!(
        s.energy_watt_hours.abs_diff(quick.energy_watt_hours) <= slack,
        "energy {} vs {}",
        s.energy_watt_hours,
        quick.energy_watt_hours
    );
    assert_eq!(
        steps(&quick),
        steps(&s),
        "moving the clock on at once gives another schedule"
    );
    s
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn a_projection_admits_every_node_within_budget_ramp_and_waves(
        domains in 1usize..10,
        budget_kw in 8u32..80,
        ramp_kw in proptest::option::of(8u32..40),
        soak_at_load in any::<bool>(),
        soak_seconds in 0u32..1800,
        probe_minutes in 1i64..50,
        max_concurrent in 1u32..12,
        rack_test in proptest::option::of(any::<bool>()),
    ) {
        let power = power(budget_kw, ramp_kw, soak_at_load);
        let mut pool = pool(Some(power.clone()), soak_seconds);
        // A rack test round is a domain of 4 at once: the budget and the
        // concurrency cap must hold one.
        let (budget_kw, max_concurrent) = match rack_test {
            Some(_) => (budget_kw.max(32), max_concurrent.max(4)),
            None => (budget_kw, max_concurrent),
        };
        pool.spec.power.as_mut().unwrap().budget_kilowatts = budget_kw;
        if let (Some(ramp), Some(_)) = (pool.spec.power.as_mut().unwrap().ramp_kilowatts_per_minute.as_mut(), rack_test) {
            *ramp = (*ramp).max(32);
        }
        let ramp_kw = pool.spec.power.as_ref().unwrap().ramp_kilowatts_per_minute;
        if let Some(nvcre) = rack_test {
            pool = with_rack_test(pool, nvcre);
        }
        let nodes = nodes(domains);
        let expected_wh: f64 = nodes
            .iter()
            .map(|n| {
                let hours = probe_minutes as f64 / 60.0
                    + if soak_at_load { f64::from(soak_seconds) / 3600.0 } else { 0.0 };
                watts_of(n, &power) as f64 * hours
            })
            .sum();
        // Each domain's rack test runs once (every check passes): its 4
        // trays for the test's 10 minutes at the pool's node power.
        let rack_wh = if rack_test.is_some() {
            domains as f64 * 4.0 * f64::from(power.node_watts(None)) * 10.0 / 60.0
        } else {
            0.0
        };
        let expected_wh = expected_wh + rack_wh;
        let s = run(&pool, &batch(max_concurrent), nodes, probe_minutes);

        prop_assert!(s.complete, "stopped: {:?}", s.stopped);
        prop_assert_eq!(s.admitted, s.nodes);
        prop_assert_eq!(s.racks, domains as u32);
        prop_assert_eq!(s.samples.last().map(|x| x.racks_online), Some(domains as u32));
        let budget = u64::from(budget_kw) * 1000;
        prop_assert_eq!(s.budget_watts, Some(budget));
        prop_assert!(s.peak_watts <= budget, "peak {} over budget {}", s.peak_watts, budget);
        for x in &s.samples {
            prop_assert!(x.watts <= budget, "{} W at {}", x.watts, x.at);
        }
        if let Some(ramp) = ramp_kw {
            let ramp = u64::from(ramp) * 1000;
            for (i, b) in s.samples.iter().enumerate() {
                for a in s.samples[..i].iter().rev().take_while(|a| b.seconds - a.seconds < 60) {
                    prop_assert!(
                        b.watts <= a.watts + ramp,
                        "{} W at {} after {} W at {}: more than the ramp",
                        b.watts, b.at, a.watts, a.at
                    );
                }
            }
        }
        for pair in s.waves.windows(2) {
            prop_assert!(
                seconds(&pair[1].started_at) >= seconds(&pair[0].completed_at),
                "wave {} started before wave {} ended", pair[1].index, pair[0].index
            );
        }
        // Energy is counted per plan and rounded to a watt-hour a wave.
        let slack = f64::from(s.plans) * s.waves.len() as f64;
        prop_assert!(
            (s.energy_watt_hours as f64 - expected_wh).abs() <= slack,
            "energy {} Wh, expected {:.0}", s.energy_watt_hours, expected_wh
        );
        let by_wave: u64 = s.waves.iter().map(|w| w.energy_watt_hours).sum();
        prop_assert_eq!(by_wave, s.energy_watt_hours);
    }
}

#[test]
fn with_a_window_the_load_grows_only_inside_it() {
    let mut pool = pool(Some(power(20, None, false)), 600);
    // Mondays 08:00 for two hours, in New York: t0 is a Friday.
    pool.spec.windows = vec![Window {
        days: vec![Weekday::Mon],
        start: "08:00".into(),
        duration: "2h".into(),
        time_zone: "America/New_York".into(),
    }];
    let s = run(&pool, &batch(8), nodes(6), 30);
    assert!(s.complete, "stopped: {:?}", s.stopped);
    let first: Timestamp = s.waves[0].started_at.as_deref().unwrap().parse().unwrap();
    assert_eq!(
        first.to_string(),
        "2026-11-30T13:00:00Z",
        "the first start is the window's opening"
    );
    let mut before = 0;
    for x in &s.samples {
        let at: Timestamp = x.at.parse().unwrap();
        if x.watts > before {
            assert_eq!(
                standing(&pool.spec.windows, at),
                Standing::Open,
                "the load grew at {} outside the window",
                x.at
            );
        }
        before = x.watts;
    }
}

#[test]
fn waves_held_for_approval_are_approved_as_asked_and_listed() {
    let mut batch = batch(8);
    batch.spec.approved_waves = Some(1);
    let s = run(&pool(None, 60), &batch, nodes(4), 5);
    assert!(s.complete, "stopped: {:?}", s.stopped);
    let waves: Vec<u32> = s.approvals.iter().map(|(w, _)| *w).collect();
    assert_eq!(waves, vec![2, 3]);
    assert_eq!(s.budget_watts, None);
    assert!(
        s.peak_watts > 0,
        "without a budget the load is still counted"
    );
}

#[test]
fn a_batch_that_cannot_finish_stops_with_its_gate() {
    // One domain of 4 and a minimum of 3 healthy, but the batch holds every
    // wave: paused.
    let mut batch = batch(8);
    batch.spec.paused = true;
    let s = run(&pool(None, 60), &batch, nodes(2), 5);
    assert!(!s.complete);
    let why = s.stopped.unwrap();
    assert!(why.contains("paused"), "{why}");
    assert_eq!(s.admitted, 0);
}

#[test]
fn gpu_hours_are_the_gpus_online_times_the_time_until_the_end() {
    // The status counts GPU-hours plan by plan; the samples say how many
    // nodes were online from each instant to the next.
    for (domains, soak, probe) in [(3, 0, 60), (6, 600, 25), (9, 1800, 7)] {
        let s = run(&pool(None, soak), &batch(8), nodes(domains), probe);
        assert!(s.complete);
        let integral: f64 = s
            .samples
            .windows(2)
            .map(|w| {
                4.0 * f64::from(w[0].nodes_online) * (w[1].seconds - w[0].seconds) as f64 / 3600.0
            })
            .sum();
        assert!(integral > 0.0);
        assert!(
            (s.gpu_hours as f64 - integral).abs() <= f64::from(s.plans) * 0.5 + 1.0,
            "{} GPU-hours counted, {integral:.1} online",
            s.gpu_hours
        );
    }
}

#[test]
fn a_batch_window_holds_its_nodes_until_both_windows_are_open() {
    // The pool allows weekdays 06:00-18:00 UTC; the batch's crew works
    // Mondays from 14:00 Tokyo (05:00 UTC). t0 is a Friday: the first start
    // is Monday 06:00 UTC, when both are open.
    let mut pool = pool(None, 60);
    pool.spec.windows = vec![Window {
        days: vec![
            Weekday::Mon,
            Weekday::Tue,
            Weekday::Wed,
            Weekday::Thu,
            Weekday::Fri,
        ],
        start: "06:00".into(),
        duration: "12h".into(),
        time_zone: "UTC".into(),
    }];
    let mut batch = batch(8);
    batch.spec.windows = vec![Window {
        days: vec![Weekday::Mon],
        start: "14:00".into(),
        duration: "8h".into(),
        time_zone: "Asia/Tokyo".into(),
    }];
    let s = run(&pool, &batch, nodes(3), 30);
    assert!(s.complete, "stopped: {:?}", s.stopped);
    assert_eq!(
        s.waves[0].started_at.as_deref(),
        Some("2026-11-30T06:00:00Z"),
        "the first start is when both are open"
    );
    // Every wave starts inside both.
    for w in &s.waves {
        let at: Timestamp = w.started_at.as_deref().unwrap().parse().unwrap();
        assert_eq!(standing(&pool.spec.windows, at), Standing::Open, "{w:?}");
        assert_eq!(standing(&batch.spec.windows, at), Standing::Open, "{w:?}");
    }
}
