//! The rack test: one group test over a domain's healthy trays before it is
//! admitted, and attribution when it fails.

use gpufleet::api::GpuPool;
use gpufleet::planner::NodeState::*;
use gpufleet::planner::sim::Sim;
use gpufleet::planner::{CertOutcome, FailedNode};

use crate::fixtures::*;

const N0: &str = "n-d000-n00";
const N1: &str = "n-d000-n01";
const N2: &str = "n-d000-n02";
const N3: &str = "n-d000-n03";

fn tested(extra: &str) -> GpuPool {
    with_pool(&format!(
        "spec: {{healthChecks: {{soakSeconds: 0, domainTest: {{template: {{spec: {{containers: [{{name: nccl, image: nccl-tests}}]}}}}{extra}}}}}}}"
    ))
}

/// One domain of four trays (three healthy needed), groups ending as
/// `passes` says.
fn rack(pool: GpuPool, passes: impl Fn(&[String]) -> bool + 'static) -> Sim {
    let mut s = sim(pool, with_batch("spec: {maxFailuresPerWave: 4}"), nodes(1));
    s.group_passes = Some(Box::new(passes));
    s
}

/// Steps and finishes pods until nothing changes; returns the largest
/// number of trays in validation or under a rack test at once.
fn settle(s: &mut Sim) -> usize {
    let mut most = 0;
    for _ in 0..40 {
        s.step();
        s.finish_probes();
        let busy = s
            .snapshot
            .nodes
            .iter()
            .filter(|n| n.state() == Validating)
            .count()
            + s.snapshot
                .probes
                .iter()
                .filter(|p| p.group.is_some())
                .map(|p| p.node.clone())
                .collect::<std::collections::BTreeSet<_>>()
                .len();
        most = most.max(busy);
    }
    most
}

fn groups_run(s: &Sim) -> Vec<Vec<String>> {
    let mut seen: Vec<Vec<String>> = s
        .group_nodes
        .iter()
        .filter(|(pod, _)| pod.ends_with("-0"))
        .map(|(_, nodes)| nodes.clone())
        .collect();
    seen.sort();
    seen
}

#[test]
fn a_rack_is_admitted_only_after_its_group_passes() {
    let mut s = rack(tested(""), |_| true);
    s.step();
    s.finish_probes();
    s.step();
    assert_eq!(
        in_state(&s, Soaking).len(),
        4,
        "passed, waiting for the rack test"
    );
    let pods: Vec<_> = s
        .snapshot
        .probes
        .iter()
        .filter(|p| p.group.is_some())
        .collect();
    assert_eq!(pods.len(), 4, "one pod per tray");
    let status = s.plan().status;
    assert_eq!(status.rack_tests.len(), 1, "{status:?}");
    assert_eq!(
        (status.rack_tests[0].round, status.rack_tests[0].trays),
        (0, 4)
    );
    let gate = status.gate.clone().unwrap();
    assert_eq!(gate.name, gpufleet::vocabulary::Gate::RackTest);
    assert_eq!(
        gate.message,
        "wave 1 of 3: 1 domains under a rack test (4 trays; attribution rounds 0), 0 pending"
    );
    let mut batch = s.batch.clone();
    batch.status = Some(status);
    let lines = gpufleet::view::rack_tests(&batch);
    assert_eq!(lines[0], "Rack tests in progress (1):");
    assert!(
        lines[2].ends_with("0      4  -      testing the whole domain"),
        "{lines:?}"
    );
    settle(&mut s);
    assert_eq!(in_state(&s, Ready).len(), 4);
    assert_eq!(groups_run(&s), [vec![N0, N1, N2, N3]]);
    assert!(
        s.snapshot.probes.is_empty(),
        "its pods go once it is decided"
    );
}

#[test]
fn attribution_finds_the_faulty_tray_and_admits_the_rest() {
    let mut s = rack(tested(""), |nodes| !nodes.iter().any(|n| n == N2));
    settle(&mut s);
    assert_eq!(in_state(&s, Failed), [N2]);
    assert_eq!(in_state(&s, Ready), [N0, N1, N3]);
    assert!(
        reason_of(&s, N2).starts_with(
            "rack test: this tray failed beside known-good tray n-d000-n00 (attribution round 2)"
        ),
        "{}",
        reason_of(&s, N2)
    );
    // Whole rack, then halves, then each suspect beside a good tray.
    assert_eq!(
        groups_run(&s),
        [
            vec![N0, N1],
            vec![N0, N1, N2, N3],
            vec![N2, N0],
            vec![N2, N3],
            vec![N3, N1],
        ]
    );
}

#[test]
fn a_rack_wide_fault_fails_every_tray_and_says_so() {
    let mut s = rack(tested(""), |_| false);
    settle(&mut s);
    assert_eq!(in_state(&s, Failed).len(), 4);
    assert!(
        reason_of(&s, N0).starts_with("rack test failed in every group tried (2 rounds, no tray passed in any group): a fault of the rack itself"),
        "{}",
        reason_of(&s, N0)
    );
}

#[test]
fn the_round_cap_fails_the_trays_still_suspect() {
    let mut s = rack(tested(", maxRounds: 1"), |nodes| {
        !nodes.iter().any(|n| n == N2)
    });
    settle(&mut s);
    assert_eq!(in_state(&s, Failed), [N2, N3]);
    assert!(
        reason_of(&s, N3).contains("stopped at its cap of 1 rounds"),
        "{}",
        reason_of(&s, N3)
    );
    assert_eq!(
        in_state(&s, Held),
        [N0, N1],
        "two good trays of three needed"
    );
}

#[test]
fn rack_tests_count_against_the_concurrency_cap() {
    // Two domains, a cap of 4: a rack test of four trays never runs
    // beside a tray in validation.
    let mut s = sim(
        tested(""),
        with_batch("spec: {maxConcurrent: 4, maxFailuresPerWave: 4, waves: [{percent: 100}]}"),
        nodes(2),
    );
    s.group_passes = Some(Box::new(|_| true));
    let most = settle(&mut s);
    assert!(most <= 4, "{most} trays busy under a cap of 4");
    assert_eq!(in_state(&s, Ready).len(), 8);
}

#[test]
fn rack_test_pods_that_never_start_blame_nobody_and_halt_the_batch() {
    let mut s = rack(tested(""), |_| false);
    s.groups_never_start = true;
    settle(&mut s);
    // Made again after each start deadline; the third time halts the batch
    // (notStartedLimit, as for probes).
    for _ in 0..3 {
        s.advance(601);
        settle(&mut s);
    }
    assert_eq!(
        in_state(&s, Failed),
        Vec::<String>::new(),
        "no evidence against a tray"
    );
    let plan = s.plan();
    let stalled = condition(&plan, "Stalled");
    assert_eq!(stalled.reason, "ProbesNotRunning");
    assert!(
        stalled
            .message
            .contains("its rack test pods did not run 3 times; now: ErrImagePull"),
        "{}",
        stalled.message
    );
    // Once its pods run, the test goes on (and here finds the rack bad).
    s.groups_never_start = false;
    settle(&mut s);
    assert_eq!(in_state(&s, Failed).len(), 4);
}

fn by_nvcre(extra: &str) -> GpuPool {
    with_pool(&format!(
        "spec: {{healthChecks: {{soakSeconds: 0, domainTest: {{nvcre: {{minBusBandwidthGBps: 800}}{extra}}}}}}}"
    ))
}

fn settle_certs(s: &mut Sim) {
    for _ in 0..40 {
        s.step();
        s.finish_probes();
        s.finish_certifications();
    }
}

fn failed(name: &str, reason: &str) -> FailedNode {
    FailedNode {
        name: name.into(),
        reason: reason.into(),
        message: "measured 412.0000, expression: value >= 800".into(),
    }
}

fn certs_run(s: &Sim) -> Vec<Vec<String>> {
    let mut seen: Vec<Vec<String>> = s.cert_nodes.values().cloned().collect();
    seen.sort();
    seen
}

#[test]
fn nvcre_names_a_tray_it_fails_and_the_rest_is_admitted_after_a_retest() {
    let mut s = rack(by_nvcre(""), |_| true);
    s.cert_failed = Some(Box::new(|nodes| {
        nodes
            .iter()
            .filter(|n| *n == N1)
            .map(|n| failed(n, "ThresholdViolation"))
            .collect()
    }));
    s.step();
    s.finish_probes();
    s.step();
    // A Certification over the domain, no pods.
    assert_eq!(certs_run(&s), [vec![N0, N1, N2, N3]]);
    assert!(s.snapshot.probes.iter().all(|p| p.group.is_none()));
    assert_eq!(in_state(&s, Ready), Vec::<String>::new());
    settle_certs(&mut s);
    assert_eq!(in_state(&s, Failed), [N1]);
    assert_eq!(in_state(&s, Ready), [N0, N2, N3]);
    let reason = reason_of(&s, N1);
    assert!(
        reason.starts_with("rack test (attribution round 0): NVCRE gpufleet-group-")
            && reason.contains(": ThresholdViolation: measured 412.0000"),
        "{reason}"
    );
    // The rest proved good without it; then the Certifications go.
    assert_eq!(certs_run(&s), [vec![N0, N1, N2, N3], vec![N0, N2, N3]]);
    assert!(s.snapshot.certifications.is_empty());
}

#[test]
fn nvcre_failing_every_node_of_a_group_is_bisected_by_gpufleet() {
    let mut s = rack(by_nvcre(""), |nodes| !nodes.iter().any(|n| n == N2));
    settle_certs(&mut s);
    assert_eq!(in_state(&s, Failed), [N2]);
    assert_eq!(in_state(&s, Ready), [N0, N1, N3]);
    let reason = reason_of(&s, N2);
    assert!(
        reason.starts_with("rack test: this tray failed beside known-good tray")
            && reason.contains("WorkloadFailed"),
        "{reason}"
    );
}

#[test]
fn nvcre_failing_without_naming_a_node_blames_nobody_and_halts() {
    let mut s = rack(by_nvcre(""), |_| true);
    s.cert_failed = Some(Box::new(|_| vec![failed("someone-else", "WorkloadFailed")]));
    settle_certs(&mut s);
    assert_eq!(in_state(&s, Failed), Vec::<String>::new());
    assert_eq!(in_state(&s, Ready), Vec::<String>::new());
    let plan = s.plan();
    let stalled = condition(&plan, "Stalled");
    assert_eq!(stalled.reason, "RackTestUnreadable");
    assert!(
        stalled
            .message
            .contains("failed without naming a node of its group"),
        "{}",
        stalled.message
    );
}

#[test]
fn an_unreadable_nvcre_result_blames_nobody_and_halts() {
    let mut s = rack(by_nvcre(""), |_| true);
    s.step();
    s.finish_probes();
    s.step();
    for cert in &mut s.snapshot.certifications {
        cert.outcome =
            CertOutcome::Unreadable("ConfigMap x: failed-nodes.json.gz is not gzip".into());
    }
    let plan = s.step();
    assert_eq!(in_state(&s, Failed), Vec::<String>::new());
    let stalled = condition(&plan, "Stalled");
    assert_eq!(stalled.reason, "RackTestUnreadable");
    assert!(
        stalled.message.contains("is not gzip"),
        "{}",
        stalled.message
    );
}

#[test]
fn an_nvcre_certification_that_never_finishes_times_out_as_a_failed_group() {
    let mut s = rack(by_nvcre(", timeoutSeconds: 60"), |_| true);
    s.step();
    s.finish_probes();
    s.step();
    assert_eq!(s.snapshot.certifications.len(), 1);
    s.advance(61);
    s.step();
    // The whole domain failed to finish: halves next, each a Certification.
    assert_eq!(
        s.snapshot.certifications.len(),
        3,
        "{:?}",
        s.snapshot.certifications
    );
}

#[test]
fn a_rack_test_verdict_that_blames_a_tray_fails_it_and_shows_its_figure() {
    use gpufleet::planner::{ProbePhase, Termination};
    use gpufleet::verdict::{Check, CheckResult, RackTestResult, Verdict};
    let mut s = rack(tested(""), |_| true);
    s.step();
    s.finish_probes();
    s.step();
    // The whole domain's pods run; each ends as all_reduce_perf with a
    // verdict: 190 GB/s, and N2 blamed.
    let mut verdict = Verdict::new();
    verdict.checks.push(Check {
        name: "nccl-all-reduce".into(),
        result: CheckResult::Fail,
        reason: Some("bus bandwidth 190 GB/s, floor 700 GB/s".into()),
    });
    verdict.rack_test = Some(RackTestResult {
        bus_bandwidth_gbps: Some(190),
        floor_gbps: Some(700),
        blame: vec![N2.into(), "not-in-the-group".into()],
    });
    let message = verdict.encode().unwrap();
    let mut groups = 0;
    for pod in s.snapshot.probes.iter_mut().filter(|p| p.group.is_some()) {
        groups += 1;
        pod.started_at = Some(s.now);
        pod.phase = ProbePhase::Failed;
        pod.verdict = gpufleet::verdict::read(&message);
        pod.terminated = vec![Termination {
            container: "nccl".into(),
            init: false,
            exit_code: 1,
            message: Some(message.clone()),
        }];
    }
    assert_eq!(groups, 4);
    // The rest is tested again; meanwhile the domain shows the figure.
    let plan = s.step();
    let tests = &plan.status.rack_tests;
    assert_eq!(tests.len(), 1, "{tests:?}");
    assert_eq!(tests[0].bus_bandwidth_gbps, Some(190));
    assert_eq!(tests[0].round, 1);
    settle(&mut s);
    assert_eq!(in_state(&s, Failed), [N2]);
    let reason = reason_of(&s, N2);
    assert!(
        reason.starts_with("rack test (attribution round 0): the rack test's pod on ")
            && reason.ends_with("blamed this tray: 190 GB/s, floor 700 GB/s"),
        "{reason}"
    );
    assert_eq!(in_state(&s, Ready), [N0, N1, N3]);
    assert!(
        s.log
            .iter()
            .any(|a| matches!(a, gpufleet::planner::Action::Event(e)
            if e.message.contains("found 1 faulty tray (n-d000-n02); 3 trays proven good"))),
        "no RackTestFailed event"
    );
}

#[test]
fn a_flaky_rack_test_is_tried_again_before_attribution() {
    use std::cell::Cell;
    use std::rc::Rc;
    let calls = Rc::new(Cell::new(0));
    let seen = calls.clone();
    // The first run of the whole domain flakes; every later one passes.
    let mut s = rack(tested(", retries: 1"), move |_| {
        seen.set(seen.get() + 1);
        seen.get() > 4
    });
    settle(&mut s);
    assert_eq!(in_state(&s, Ready), [N0, N1, N2, N3]);
    assert_eq!(in_state(&s, Failed), Vec::<String>::new());
    // The same four trays twice (runs 0 and 1), no halves.
    assert_eq!(groups_run(&s), [vec![N0, N1, N2, N3], vec![N0, N1, N2, N3]]);
    assert!(calls.get() >= 8);
}

#[test]
fn retries_apply_to_every_group_before_it_counts() {
    let mut s = rack(tested(", retries: 1"), |nodes| {
        !nodes.iter().any(|n| n == N2)
    });
    settle(&mut s);
    assert_eq!(in_state(&s, Failed), [N2]);
    assert_eq!(in_state(&s, Ready), [N0, N1, N3]);
    // Every failing group ran twice: the domain, the half with N2, and N2
    // beside a good tray.
    let runs = groups_run(&s);
    let twice = |g: Vec<&str>| runs.iter().filter(|r| **r == g).count() == 2;
    assert!(twice(vec![N0, N1, N2, N3]), "{runs:?}");
    assert!(twice(vec![N2, N3]), "{runs:?}");
    assert!(twice(vec![N2, N0]), "{runs:?}");
}

#[test]
fn someone_elses_certification_at_a_groups_name_is_never_read() {
    // Another writer puts a Certification at the group's name, finished and
    // passed: it decides nothing, and the batch says it is in the way.
    let mut s = rack(by_nvcre(""), |_| true);
    s.step();
    s.finish_probes();
    s.step();
    assert_eq!(s.snapshot.certifications.len(), 1);
    for cert in &mut s.snapshot.certifications {
        cert.batch_uid = Some("someone-else".into());
        cert.outcome = CertOutcome::Finished {
            passed: true,
            failed: Vec::new(),
            message: "forged".into(),
        };
    }
    let plan = s.step();
    assert_eq!(
        in_state(&s, Ready),
        Vec::<String>::new(),
        "admitted on a forged pass"
    );
    let stalled = condition(&plan, "Stalled");
    assert_eq!(stalled.reason, "RackTestUnreadable");
    assert!(
        stalled
            .message
            .contains("that this batch did not make is in the way"),
        "{}",
        stalled.message
    );
}
