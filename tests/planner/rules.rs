//! One test per rollout rule.

use gpufleet::keys;
use gpufleet::planner::sim::{Outcome, healthy_node};
use gpufleet::planner::{
    Action, Claim, NodeState::*, ProbePhase, TaintChange, TaintView, plan, plan_pool,
    probe_pod_name, release,
};
use gpufleet::vocabulary::EventReason;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

use crate::fixtures::*;

// ---- Membership -------------------------------------------------------

#[test]
fn members_match_both_the_batch_and_the_pool_selector() {
    let mut nodes = nodes(1);
    nodes.push(healthy_node("other-batch", "c9", "east", "row2"));
    nodes.push(healthy_node("other-pool", "c9", "west", "row1"));
    let plan = plan(
        &pool(),
        &batch(),
        &gpufleet::planner::Snapshot {
            nodes: nodes.into_iter().map(std::sync::Arc::new).collect(),
            ..Default::default()
        },
        t0(),
    );
    assert_eq!(plan.status.nodes.total, 4);
    let touched: Vec<_> = plan.node_patches().map(|p| p.node.as_str()).collect();
    assert!(
        !touched.iter().any(|n| n.starts_with("other")),
        "{touched:?}"
    );
}

#[test]
fn a_node_claimed_by_two_batches_or_two_pools_is_reported_and_left_alone() {
    let mut s = sim(pool(), batch(), nodes(2));
    let selector = |k: &str, v: &str| LabelSelector {
        match_labels: Some([(k.to_string(), v.to_string())].into()),
        ..Default::default()
    };
    s.snapshot.other_batches.push(Claim {
        name: "row1-again".into(),
        pool: Some("east".into()),
        selector: selector("nvidia.com/gpu.clique", "n-clique-000"),
    });
    s.snapshot.other_pools.push(Claim {
        name: "west".into(),
        pool: None,
        selector: selector("kubernetes.io/hostname", "n-d001-n03"),
    });
    // A node labelled for the same batch but in another pool's batch is fine:
    s.snapshot.other_batches.push(Claim {
        name: "elsewhere".into(),
        pool: Some("west".into()),
        selector: selector("gpufleet.io/batch", "row1"),
    });
    node_mut(&mut s.snapshot.nodes, "n-d001-n03")
        .labels
        .insert("kubernetes.io/hostname".into(), "n-d001-n03".into());
    let plan = s.step();
    let conflicts = condition(&plan, "NodeConflicts");
    assert_eq!(conflicts.status, "True");
    assert_eq!(conflicts.reason, "NodesClaimedTwice");
    assert!(
        conflicts
            .message
            .contains("n-d000-n00 (also batch row1-again)"),
        "{}",
        conflicts.message
    );
    assert!(
        conflicts.message.contains("n-d001-n03 (also pool west)"),
        "{}",
        conflicts.message
    );
    assert!(
        !conflicts.message.contains("elsewhere"),
        "{}",
        conflicts.message
    );
    assert_eq!(plan.status.nodes.total, 3);
    s.run(100);
    assert_eq!(s.state("n-d000-n00"), Some(Pending));
    assert_eq!(s.state("n-d001-n03"), Some(Pending));
    assert!(!s.log.iter().any(
        |a| matches!(a, Action::PatchNode(p) if p.node == "n-d000-n00" || p.node == "n-d001-n03")
    ));
}

// ---- Static health verdicts -------------------------------------------

#[test]
fn static_checks_fail_nodes_with_actionable_reasons() {
    type Fault = Box<dyn Fn(&mut gpufleet::planner::NodeView)>;
    let cases: Vec<(&str, Fault, &str)> = vec![
        (
            "not ready",
            Box::new(|n| {
                n.conditions.insert("Ready".into(), "False".into());
            }),
            "node is not Ready (Ready=False)",
        ),
        (
            "xid",
            Box::new(|n| {
                n.conditions.insert("GpuXidError".into(), "True".into());
            }),
            "condition GpuXidError is True",
        ),
        (
            "nvlink",
            Box::new(|n| {
                n.conditions.insert("NVLinkDown".into(), "True".into());
            }),
            "condition NVLinkDown is True",
        ),
        (
            "product",
            Box::new(|n| {
                n.labels
                    .insert(keys::GPU_PRODUCT.into(), "NVIDIA-H100".into());
            }),
            "nvidia.com/gpu.product is NVIDIA-H100, pool accepts NVIDIA-GB200, NVIDIA-GB300",
        ),
        (
            "count label",
            Box::new(|n| {
                n.labels.insert(keys::GPU_COUNT.into(), "3".into());
            }),
            "label nvidia.com/gpu.count is 3, pool expects 4",
        ),
        (
            "allocatable",
            Box::new(|n| {
                n.allocatable_gpus = Some(3);
                n.allocatable_gpus_raw = Some("3".into());
            }),
            "allocatable nvidia.com/gpu is 3, pool expects 4",
        ),
        (
            "no allocatable",
            Box::new(|n| {
                n.allocatable_gpus = None;
                n.allocatable_gpus_raw = None;
            }),
            "allocatable nvidia.com/gpu is absent, pool expects 4",
        ),
        (
            "old driver",
            Box::new(|n| {
                n.labels
                    .insert(keys::DRIVER_VERSION.into(), "570.86.15".into());
            }),
            "driver 570.86.15 is older than 570.133.20",
        ),
        (
            "no domain",
            Box::new(|n| {
                n.labels.remove("nvidia.com/gpu.clique");
            }),
            "label nvidia.com/gpu.clique is missing",
        ),
        (
            "cordoned",
            Box::new(|n| n.unschedulable = true),
            "node is cordoned (spec.unschedulable) by someone else",
        ),
    ];
    for (what, fault, expected) in cases {
        let mut nodes = nodes(1);
        fault(&mut nodes[0]);
        let mut s = sim(pool(), with_batch("spec: {maxFailuresPerWave: 4}"), nodes);
        let plan = s.step();
        assert_eq!(s.state("n-d000-n00"), Some(Failed), "{what}");
        let reason = reason_of(&s, "n-d000-n00");
        assert!(
            reason.contains(expected),
            "{what}: reason {reason:?} lacks {expected:?}"
        );
        let patch = plan
            .node_patches()
            .find(|p| p.node == "n-d000-n00")
            .unwrap();
        assert!(patch.failure.is_some(), "{what}: no failure category");
        // It is held back by the onboarding taint and joins its wave, in the
        // same single write.
        assert_eq!(patch.taint, TaintChange::Add, "{what}");
        assert_eq!(
            patch.annotations.get(keys::WAVE),
            Some(&Some("1".into())),
            "{what}"
        );
        assert_eq!(s.node_writes["n-d000-n00"], 1, "{what}");
    }
}

#[test]
fn a_node_still_starting_waits_pending_until_its_startup_grace_ends() {
    // Registered at t0, not Ready and not yet labelled by GFD: it waits with
    // a reason, spending no budget, then fails once the grace (600 s) is
    // over, unless it came up in time.
    let mut nodes = nodes(1);
    for n in nodes.iter_mut() {
        n.created = (Some(t0())).into();
    }
    let slow = "n-d000-n00";
    let late = "n-d000-n01";
    for name in [slow, late] {
        let n = view_mut(&mut nodes, name);
        n.conditions.insert("Ready".into(), "False".into());
        n.labels.remove(keys::GPU_PRODUCT);
    }
    let mut s = sim(pool(), batch(), nodes);
    s.step();
    assert_eq!(in_state(&s, Failed), Vec::<String>::new());
    let waiting = node_mut(&mut s.snapshot.nodes, slow).clone();
    assert_eq!(waiting.state, None);
    let reason = waiting.reason.unwrap_or_default();
    assert!(
        reason.starts_with(
            "waiting for the node to start (until 2026-11-27T00:10:00Z): node is not Ready"
        ),
        "{reason}"
    );
    // Planning again writes nothing new to the waiting nodes.
    let again = s.plan();
    assert!(
        again
            .node_patches()
            .all(|p| p.node != slow && p.node != late)
    );
    // `slow` comes up within its grace; `late` never does.
    s.advance(300);
    let n = node_mut(&mut s.snapshot.nodes, slow);
    n.conditions.insert("Ready".into(), "True".into());
    n.labels
        .insert(keys::GPU_PRODUCT.into(), "NVIDIA-GB200".into());
    s.step();
    assert_eq!(in_state(&s, Failed), Vec::<String>::new());
    assert!(in_state(&s, Validating).contains(&slow.to_string()));
    s.advance(301);
    s.step();
    assert_eq!(in_state(&s, Failed), vec![late.to_string()]);
    let failed = node_mut(&mut s.snapshot.nodes, late).clone();
    assert!(failed.reason.unwrap_or_default().starts_with(
        "never became ready and labelled within 600s of registering: node is not Ready"
    ),);
}

#[test]
fn a_node_that_is_wrong_rather_than_starting_fails_at_once() {
    // Three GPUs reported is a fault, not a node still starting.
    let mut nodes = nodes(1);
    for n in nodes.iter_mut() {
        n.created = (Some(t0())).into();
    }
    let n = view_mut(&mut nodes, "n-d000-n00");
    n.allocatable_gpus = Some(3);
    n.allocatable_gpus_raw = Some("3".into());
    let mut s = sim(pool(), batch(), nodes);
    s.step();
    assert_eq!(in_state(&s, Failed), vec!["n-d000-n00".to_string()]);
}

// ---- Lifecycle ----------------------------------------------------------

#[test]
fn a_healthy_node_goes_pending_validating_soaking_ready_in_three_writes() {
    let mut s = sim(pool(), batch(), nodes(1));
    let plan = s.step();
    assert_eq!(in_state(&s, Validating).len(), 4);
    let patch = plan.node_patches().next().unwrap();
    assert_eq!(
        patch.taint,
        TaintChange::Add,
        "the onboarding taint comes with the state label"
    );
    assert_eq!(
        patch.annotations.get(keys::BATCH),
        Some(&Some("row1".into()))
    );
    assert_eq!(patch.annotations.get(keys::WAVE), Some(&Some("1".into())));
    let creates: Vec<_> = plan
        .actions
        .iter()
        .filter(|a| matches!(a, Action::CreateProbe(_)))
        .collect();
    assert_eq!(creates.len(), 4);
    // Nothing more until the probes report.
    assert_eq!(s.step().changes().count(), 0);
    s.finish_probes();
    // Read 10 s after the probes finished: the soak counts from their finish.
    s.advance(10);
    let plan = s.step();
    assert_eq!(in_state(&s, Soaking).len(), 4);
    assert_eq!(
        plan.actions
            .iter()
            .filter(|a| matches!(a, Action::DeleteProbe { .. }))
            .count(),
        4,
        "probes are deleted once read"
    );
    // Soak: nothing until 60 s after the probes finished, and the plan says
    // when to look again.
    assert_eq!(plan.requeue_after, Some(std::time::Duration::from_secs(50)));
    s.advance(49);
    assert_eq!(s.step().changes().count(), 0);
    s.advance(1);
    let plan = s.step();
    assert_eq!(in_state(&s, Ready).len(), 4);
    assert!(plan.node_patches().all(|p| p.taint == TaintChange::Remove));
    assert!(s.snapshot.nodes.iter().all(|n| n.taints.is_empty()));
    assert!(
        s.node_writes.values().all(|&w| w == 3),
        "{:?}",
        s.node_writes
    );
    assert_eq!(condition(&plan, "Ready").status, "True");
}

#[test]
fn gpufleet_removes_only_the_onboarding_taint_it_added() {
    // n00 already carried the pool's taint (another controller's) when
    // the rollout started: gpufleet records that it added none, and leaves
    // it at admission. The others get gpufleet's taint, removed at admission.
    let pool = with_pool("spec: {healthChecks: {probe: null, soakSeconds: 60}}");
    let mut nodes = nodes(1);
    view_mut(&mut nodes, "n-d000-n00").taints.push(TaintView {
        key: "gpufleet.io/onboarding".into(),
        value: Some("someone-else".into()),
        effect: "NoSchedule".into(),
        time_added: None,
    });
    let mut s = sim(pool, batch(), nodes);
    s.step();
    let n00 = node_mut(&mut s.snapshot.nodes, "n-d000-n00").clone();
    assert_eq!(n00.taints_added, Some(vec![]));
    let n01 = node_mut(&mut s.snapshot.nodes, "n-d000-n01").clone();
    assert_eq!(
        n01.taints_added,
        Some(vec![("gpufleet.io/onboarding".into(), "NoSchedule".into())])
    );
    s.advance(60);
    s.step();
    assert_eq!(in_state(&s, Ready).len(), 4);
    let n00 = node_mut(&mut s.snapshot.nodes, "n-d000-n00").clone();
    assert_eq!(n00.taints.len(), 1, "the other controller's taint stays");
    assert_eq!(n00.taints_added, None, "the record goes at admission");
    let n01 = node_mut(&mut s.snapshot.nodes, "n-d000-n01").clone();
    assert!(n01.taints.is_empty());
}

#[test]
fn a_taint_changed_in_the_pool_mid_rollout_is_not_stranded() {
    // Nodes start under taint A; the pool switches to taint B while they
    // soak: gpufleet puts B on (the node must stay held back) and removes
    // both A and B at admission.
    let pool = with_pool("spec: {healthChecks: {probe: null, soakSeconds: 60}}");
    let mut s = sim(pool, batch(), nodes(1));
    s.step();
    s.pool.spec.onboarding.taint.key = "example.com/burn-in".into();
    s.advance(10);
    s.step();
    for n in s.snapshot.nodes.iter() {
        assert!(
            n.has_taint("example.com/burn-in", "NoSchedule"),
            "{}",
            n.name
        );
    }
    s.advance(60);
    s.step();
    assert_eq!(in_state(&s, Ready).len(), 4);
    for n in s.snapshot.nodes.iter() {
        assert!(n.taints.is_empty(), "{} keeps {:?}", n.name, n.taints);
    }
}

#[test]
fn without_a_probe_nodes_go_straight_to_soaking_then_ready() {
    let pool = with_pool("spec: {healthChecks: {probe: null, soakSeconds: 0}}");
    let mut s = sim(pool, batch(), nodes(1));
    let plan = s.step();
    assert_eq!(
        in_state(&s, Ready).len(),
        4,
        "soak 0 admits in the same plan"
    );
    assert!(
        !plan
            .actions
            .iter()
            .any(|a| matches!(a, Action::CreateProbe(_)))
    );
    assert!(
        s.node_writes.values().all(|&w| w == 1),
        "{:?}",
        s.node_writes
    );
    // The taint was never added, so there is nothing to remove.
    assert!(plan.node_patches().all(|p| p.taint == TaintChange::Keep));
}

#[test]
fn a_failed_probe_uses_a_retry_then_fails_the_node_with_its_message() {
    let mut s = sim_with(
        pool(),
        with_batch("spec: {maxFailuresPerWave: 4}"),
        nodes(1),
        |node, attempt| {
            if node == "n-d000-n02" {
                Outcome::Fail {
                    exit_code: 3,
                    message: format!(
                        "dcgmi diag: attempt {attempt}\nNVLink errors on GPU 2\nmore\nand more"
                    ),
                }
            } else {
                Outcome::Pass
            }
        },
    );
    s.step();
    s.finish_probes();
    let plan = s.step();
    assert_eq!(s.state("n-d000-n02"), Some(Validating));
    assert!(
        plan.actions
            .contains(&Action::CreateProbe(gpufleet::planner::ProbeRequest {
                pod_name: probe_pod_name("n-d000-n02", 2),
                node: "n-d000-n02".into(),
                attempt: 2,
                run: s
                    .snapshot
                    .nodes
                    .iter()
                    .find(|n| n.name == "n-d000-n02")
                    .unwrap()
                    .started
                    .get(),
                group: None,
            }))
    );
    assert!(reason_of(&s, "n-d000-n02").starts_with("attempt 1 failed: probe failed (exit 3)"));
    s.finish_probes();
    s.step();
    assert_eq!(s.state("n-d000-n02"), Some(Failed));
    assert_eq!(
        reason_of(&s, "n-d000-n02"),
        "probe failed (exit 3): dcgmi diag: attempt 2 / NVLink errors on GPU 2 / more"
    );
    // It keeps its taint: it was never admitted.
    let node = s
        .snapshot
        .nodes
        .iter()
        .find(|n| n.name == "n-d000-n02")
        .unwrap();
    assert!(node.has_taint("gpufleet.io/onboarding", "NoSchedule"));
}

#[test]
fn a_probe_that_times_out_fails_the_node_after_its_retries() {
    let mut s = sim_with(
        pool(),
        with_batch("spec: {maxFailuresPerWave: 4}"),
        nodes(1),
        |node, _| {
            if node == "n-d000-n00" {
                Outcome::Hang
            } else {
                Outcome::Pass
            }
        },
    );
    s.run(50);
    assert_eq!(s.state("n-d000-n00"), Some(Failed));
    assert_eq!(reason_of(&s, "n-d000-n00"), "probe timed out after 600s");
    // The other three pass and make the domain's minimum of 3.
    assert_eq!(in_state(&s, Ready).len(), 3);
}

#[test]
fn a_deleted_probe_is_recreated_without_counting_a_failure() {
    let mut s = sim(pool(), batch(), nodes(1));
    s.step();
    s.snapshot.probes.retain(|p| p.node != "n-d000-n01");
    let plan = s.step();
    assert!(
        plan.actions.iter().any(
            |a| matches!(a, Action::CreateProbe(r) if r.node == "n-d000-n01" && r.attempt == 1)
        )
    );
    assert_eq!(s.state("n-d000-n01"), Some(Validating));
}

#[test]
fn a_removed_onboarding_taint_is_put_back_while_the_node_is_in_progress() {
    let mut s = sim(pool(), batch(), nodes(1));
    s.step();
    node_mut(&mut s.snapshot.nodes, "n-d000-n02").taints.clear();
    let plan = s.step();
    let patch = plan
        .node_patches()
        .find(|p| p.node == "n-d000-n02")
        .expect("a patch");
    assert_eq!(patch.taint, TaintChange::Add);
    assert_eq!(patch.state, Some(Validating), "the state stays");
    assert!(
        plan.actions
            .iter()
            .any(|a| matches!(a, Action::Event(e) if e.reason == EventReason::TaintRestored))
    );
    assert_eq!(s.step().changes().count(), 0, "restored once");
    // A ready node's taint is gone on purpose: nothing to restore.
    s.run(50);
    assert!(s.snapshot.nodes.iter().all(|n| n.taints.is_empty()));
}

#[test]
fn a_node_that_turns_unhealthy_while_soaking_fails() {
    let mut s = sim(
        pool(),
        with_batch("spec: {maxFailuresPerWave: 4}"),
        nodes(1),
    );
    s.step();
    s.finish_probes();
    s.step();
    assert_eq!(in_state(&s, Soaking).len(), 4);
    node_mut(&mut s.snapshot.nodes, "n-d000-n01")
        .conditions
        .insert("GpuXidError".into(), "True".into());
    s.step();
    assert_eq!(s.state("n-d000-n01"), Some(Failed));
    assert_eq!(reason_of(&s, "n-d000-n01"), "condition GpuXidError is True");
}

/// Sets `condition` on `node` to `status`, changed at the sim's now.
fn flip(s: &mut gpufleet::planner::sim::Sim, node: &str, condition: &str, status: &str) {
    let now = s.now;
    let n = node_mut(&mut s.snapshot.nodes, node);
    n.conditions.insert(condition.into(), status.into());
    n.condition_since.insert(condition.into(), now);
}

#[test]
fn a_condition_that_blips_during_the_soak_restarts_it_and_fails_nobody() {
    // Soak 300 s. n01's kubelet reports Ready=False for 20 s mid-soak: it
    // is neither failed (the old rule failed it at once) nor admitted while
    // bad, and its soak counts again from its recovery.
    let pool = with_pool("spec: {healthChecks: {soakSeconds: 300}}");
    let mut s = sim(pool, batch(), nodes(1));
    s.step();
    s.finish_probes();
    s.step();
    assert_eq!(in_state(&s, Soaking).len(), 4);
    s.advance(100);
    flip(&mut s, "n-d000-n01", "Ready", "False");
    s.advance(10);
    s.step();
    assert_eq!(s.state("n-d000-n01"), Some(Soaking));
    let reason = reason_of(&s, "n-d000-n01");
    assert!(
        reason.starts_with("node is not Ready (Ready=False) since ")
            && reason.ends_with("unless it recovers"),
        "{reason}"
    );
    s.advance(10);
    flip(&mut s, "n-d000-n01", "Ready", "True");
    let recovered = s.now;
    s.step();
    assert_eq!(reason_of(&s, "n-d000-n01"), "", "the tolerance's words go");
    // The others' soak ends; n01's restarted at its recovery, and the
    // domain is admitted whole once n01 has soaked 300 s on end.
    s.advance(200);
    s.step();
    assert_eq!(in_state(&s, Ready).len(), 0);
    let plan = s.plan();
    let wake = plan.requeue_after.expect("a wake-up at n01's soak end");
    assert_eq!(
        recovered + k8s_openapi::jiff::SignedDuration::from_secs(300),
        s.now + k8s_openapi::jiff::SignedDuration::try_from(wake).expect("duration")
    );
    s.advance(100);
    s.step();
    assert_eq!(in_state(&s, Ready).len(), 4);
    assert_eq!(in_state(&s, Failed), Vec::<String>::new());
}

#[test]
fn a_condition_fails_a_node_in_progress_only_after_its_timeout() {
    // Default tolerance 60 s; GpuXidError tolerates none (timeoutSeconds 0).
    let pool = with_pool(
        "spec: {healthChecks: {unhealthyConditions: [{type: GpuXidError, status: 'True', timeoutSeconds: 0}]}}",
    );
    let mut s = sim(pool, with_batch("spec: {maxFailuresPerWave: 4}"), nodes(1));
    s.step();
    // Validating: n00 reports Ready=False while its probe runs; the probe
    // passes, and the node soaks instead of failing.
    flip(&mut s, "n-d000-n00", "Ready", "False");
    flip(&mut s, "n-d000-n01", "GpuXidError", "True");
    s.advance(5);
    s.finish_probes();
    s.step();
    assert_eq!(s.state("n-d000-n00"), Some(Soaking));
    assert_eq!(s.state("n-d000-n01"), Some(Failed));
    assert_eq!(reason_of(&s, "n-d000-n01"), "condition GpuXidError is True");
    // n00 stays bad past 60 s: it fails, saying for how long.
    s.advance(56);
    s.step();
    assert_eq!(s.state("n-d000-n00"), Some(Failed));
    let reason = reason_of(&s, "n-d000-n00");
    assert!(
        reason.starts_with("node is not Ready (Ready=False) since ")
            && reason.ends_with(", longer than the 60s tolerated"),
        "{reason}"
    );
}

#[test]
fn an_admitted_node_that_loses_its_label_is_left_in_service() {
    // Scenario 9: all four admitted; someone removes n01's state label and
    // sets n02's to held. Under the old rule both were started again:
    // re-tainted (a NoExecute taint evicts their jobs) and re-probed.
    let mut s = sim(pool(), batch(), nodes(1));
    s.run(20);
    assert_eq!(in_state(&s, Ready).len(), 4);
    let n = node_mut(&mut s.snapshot.nodes, "n-d000-n01");
    n.labels.remove(keys::STATE);
    n.state = None;
    let n = node_mut(&mut s.snapshot.nodes, "n-d000-n02");
    n.labels.insert(keys::STATE.into(), "held".into());
    n.state = Some(Held);
    let plan = s.step();
    assert!(
        plan.actions
            .iter()
            .all(|a| !matches!(a, Action::CreateProbe(_))),
        "{:?}",
        plan.actions
    );
    for p in plan.node_patches() {
        assert_eq!(p.taint, TaintChange::Keep, "{p:?}");
        assert_eq!(
            p.state,
            s.snapshot
                .nodes
                .iter()
                .find(|n| n.name == p.node)
                .unwrap()
                .state
        );
    }
    assert!(reason_of(&s, "n-d000-n01").contains("left in service"));
    assert!(reason_of(&s, "n-d000-n02").contains("state label became held"));
    let lost = condition(&plan, "LostState");
    assert_eq!(lost.status, "True");
    assert!(
        lost.message.contains("n-d000-n01, n-d000-n02"),
        "{}",
        lost.message
    );
    assert!(
        plan.actions
            .iter()
            .any(|a| matches!(a, Action::Event(e) if e.reason == EventReason::StateLost))
    );
    assert_eq!(s.step().changes().count(), 0, "told once");
    // A person asks for a retry of n01: it is validated again.
    node_mut(&mut s.snapshot.nodes, "n-d000-n01").retry = true;
    let plan = s.step();
    assert!(
        plan.actions
            .iter()
            .any(|a| matches!(a, Action::CreateProbe(r) if r.node == "n-d000-n01"))
    );
    assert_eq!(s.state("n-d000-n01"), Some(Validating));
    assert_eq!(s.state("n-d000-n02"), Some(Held), "n02 still left alone");
}

#[test]
fn many_nodes_failing_the_same_way_at_once_halt_as_a_suspected_misconfiguration() {
    // Scenario 10: a typo in the probe's command fails every probe alike.
    // Under the old rule all eight failed, spending the failure budget and
    // tripping the breaker; now none fails: they go back to pending, marked
    // with the pool's generation, and the batch halts until the pool changes.
    let pool = with_pool(
        "metadata: {generation: 1}\nspec: {healthChecks: {probe: {retries: 0}}, circuitBreaker: {maxFailedPercent: 10, window: 1h}}",
    );
    let typo = |_: &str, _: u32| Outcome::Fail {
        exit_code: 127,
        message: "exec: \"dcgmi-diag\": executable file not found in $PATH".into(),
    };
    let mut s = sim_with(
        pool,
        with_batch("spec: {maxConcurrent: 8, maxFailuresPerWave: 8}"),
        nodes(2),
        typo,
    );
    s.step();
    let started = in_state(&s, Validating);
    assert_eq!(started.len(), 4, "the first wave's domain");
    s.finish_probes();
    let plan = s.step();
    assert_eq!(in_state(&s, Failed), Vec::<String>::new());
    assert_eq!(in_state(&s, Pending).len(), 8);
    for node in &started {
        let view = s.snapshot.nodes.iter().find(|n| n.name == node).unwrap();
        assert_eq!(view.suspect, Some(1), "{node}");
    }
    assert_eq!(
        plan.status.gate.as_ref().map(|g| g.name),
        Some(gpufleet::vocabulary::Gate::SuspectedMisconfiguration)
    );
    let stalled = condition(&plan, "Stalled");
    assert_eq!(
        (stalled.status.as_str(), stalled.reason.as_str()),
        ("True", "SuspectedMisconfiguration")
    );
    assert!(
        stalled
            .message
            .contains("4 of the 4 nodes its wave started failed the same way"),
        "{}",
        stalled.message
    );
    assert!(plan.actions.iter().any(
        |a| matches!(a, Action::Event(e) if e.reason == EventReason::SuspectedMisconfiguration)
    ));
    let pool_plan = plan_pool(&s.pool, &s.snapshot.nodes, s.now);
    assert!(!pool_plan.breaker.tripped, "no failure reached the breaker");
    // Halted: nothing starts again under the same pool.
    assert_eq!(s.step().changes().count(), 0);
    // The pool is fixed (a new generation): they start again and pass.
    s.pool.metadata.generation = Some(2);
    s.pool.spec.health_checks.probe.as_mut().unwrap().retries = 1;
    let mut fixed = gpufleet::planner::sim::Sim::new(
        s.pool.clone(),
        s.batch.clone(),
        s.snapshot.clone(),
        s.now,
        |_, _| Outcome::Pass,
    );
    fixed.run(50);
    assert_eq!(in_state(&fixed, Ready).len(), 8);
    assert!(fixed.snapshot.nodes.iter().all(|n| n.suspect.is_none()));
}

#[test]
fn a_few_nodes_failing_alike_fail_as_usual() {
    // Two of eight fail the same way: below the short-circuit (50%), so
    // they fail and count against the budget.
    let fail_two = |node: &str, _: u32| {
        if node.ends_with("n00") {
            Outcome::Fail {
                exit_code: 1,
                message: "dcgmi diag: GPU 2 failed the memory test".into(),
            }
        } else {
            Outcome::Pass
        }
    };
    let mut s = sim_with(
        with_pool("spec: {healthChecks: {probe: {retries: 0}}}"),
        with_batch("spec: {maxConcurrent: 8, maxFailuresPerWave: 8}"),
        nodes(2),
        fail_two,
    );
    s.run(50);
    assert_eq!(in_state(&s, Failed), vec!["n-d000-n00", "n-d001-n00"]);
    assert!(s.snapshot.nodes.iter().all(|n| n.suspect.is_none()));
}

#[test]
fn a_ready_node_is_never_demoted() {
    let mut s = sim(pool(), batch(), nodes(1));
    s.run(20);
    assert_eq!(in_state(&s, Ready).len(), 4);
    for node in &mut s.snapshot.nodes {
        let node = std::sync::Arc::make_mut(node);
        node.conditions.insert("GpuXidError".into(), "True".into());
        node.unschedulable = true;
    }
    let plan = s.step();
    assert_eq!(plan.changes().count(), 0);
    assert_eq!(in_state(&s, Ready).len(), 4);
}

#[test]
fn a_domain_split_across_batches_is_held_whole_and_reported() {
    // Clique 000's last two nodes belong to batch row2: row1 holds its two
    // (2 of 4 would do under minHealthyNodesPerDomain 2), never piecemeal.
    let mut nodes = nodes(2);
    for name in ["n-d000-n02", "n-d000-n03"] {
        view_mut(&mut nodes, name)
            .labels
            .insert("gpufleet.io/batch".into(), "row2".into());
    }
    let pool = with_pool("spec: {topology: {minHealthyNodesPerDomain: 2}}");
    let mut s = sim(pool, batch(), nodes);
    s.snapshot.other_batches.push(Claim {
        name: "row2".into(),
        pool: Some("east".into()),
        selector: LabelSelector {
            match_labels: Some([("gpufleet.io/batch".to_string(), "row2".to_string())].into()),
            ..Default::default()
        },
    });
    s.batch.spec.approved_waves = None;
    s.run(200);
    let held = in_state(&s, Held);
    assert_eq!(held, ["n-d000-n00", "n-d000-n01"]);
    let n = node_mut(&mut s.snapshot.nodes, "n-d000-n00").clone();
    assert!(
        n.reason
            .as_deref()
            .unwrap_or_default()
            .starts_with("domain n-clique-000 is split"),
        "{:?}",
        n.reason
    );
    assert_eq!(in_state(&s, Ready).len(), 4, "the other domain is whole");
    let split = condition(&s.plan(), "SplitDomains").clone();
    assert_eq!(
        (split.status.as_str(), split.reason.as_str()),
        ("True", "DomainsSplit")
    );
    assert!(
        split.message.contains("n-clique-000 (2 elsewhere)"),
        "{}",
        split.message
    );
}

// ---- Provenance -----------------------------------------------------------

#[test]
fn a_state_label_the_batch_did_not_write_moves_nothing_forward() {
    // Someone (a kubelet's --node-labels, a person) labels pending nodes
    // `held` and `soaking` while the batch is paused: under the old rule
    // they were admitted at once. Now they go back to pending and wait.
    let mut nodes = nodes(1);
    for n in nodes.iter_mut() {
        n.state = Some(if n.name.ends_with("0") { Held } else { Soaking });
    }
    let mut b = batch();
    b.metadata.uid = Some("uid-row1".into());
    b.spec.paused = true;
    let mut s = sim(pool(), b, nodes);
    let plan = s.step();
    assert_eq!(in_state(&s, Ready), Vec::<String>::new());
    assert_eq!(in_state(&s, Pending).len(), 4);
    let n = node_mut(&mut s.snapshot.nodes, "n-d000-n00").clone();
    assert_eq!(
        n.reason.as_deref(),
        Some("its state label said held, which batch row1 did not write; validating it again")
    );
    assert!(
        plan.actions
            .iter()
            .any(|a| matches!(a, Action::Event(e) if e.reason == EventReason::ForeignState))
    );
    // Unpaused, they are validated like any node: probes first.
    s.batch.spec.paused = false;
    s.step();
    assert_eq!(in_state(&s, Validating).len(), 4);
    let n = node_mut(&mut s.snapshot.nodes, "n-d000-n01").clone();
    assert_eq!(n.batch_uid.as_deref(), Some("uid-row1"));
}

#[test]
fn a_forged_label_with_the_batch_name_but_no_uid_moves_nothing_forward() {
    // The batch's name is easy to write beside a forged label; its UID is
    // what gpufleet checks.
    let mut nodes = nodes(1);
    for n in nodes.iter_mut() {
        n.state = Some(Held);
        n.batch = Some("row1".into());
    }
    let mut b = batch();
    b.metadata.uid = Some("uid-row1".into());
    b.spec.paused = true;
    let mut s = sim(pool(), b, nodes);
    s.step();
    assert_eq!(in_state(&s, Ready), Vec::<String>::new());
    assert_eq!(in_state(&s, Pending).len(), 4);
}

#[test]
fn a_node_moved_from_another_batch_is_validated_again() {
    // The node soaked for batch `row0` (another UID); it now matches row1.
    let mut nodes = nodes(1);
    for n in nodes.iter_mut() {
        n.state = Some(Soaking);
        n.batch = Some("row0".into());
        n.batch_uid = Some("uid-row0".into());
        n.since = (Some(t0())).into();
    }
    let mut b = batch();
    b.metadata.uid = Some("uid-row1".into());
    let mut s = sim(pool(), b, nodes);
    s.advance(3600);
    let plan = s.step();
    assert_eq!(in_state(&s, Ready), Vec::<String>::new());
    assert_eq!(in_state(&s, Validating).len(), 4);
    assert_eq!(
        plan.actions
            .iter()
            .filter(|a| matches!(a, Action::CreateProbe(_)))
            .count(),
        4
    );
    // A node this batch did start, with its UID, keeps its state.
    let mut s2 = sim(pool(), s.batch.clone(), s.snapshot.nodes.clone());
    s2.step();
    assert_eq!(in_state(&s2, Validating).len(), 4);
}

// ---- Waves ----------------------------------------------------------------

#[test]
fn waves_round_up_to_whole_domains_and_open_one_after_another() {
    // 6 domains of 4 = 24 nodes. Wave 1: 4 nodes (1 domain). Wave 2: 50% =
    // 12 nodes (3 domains in all). Wave 3: the rest.
    let mut s = sim(pool(), batch(), nodes(6));
    let plan = s.step();
    assert_eq!(
        plan.status
            .waves
            .iter()
            .map(|w| w.target_nodes)
            .collect::<Vec<_>>(),
        [4, 12, 24]
    );
    assert_eq!(
        in_state(&s, Validating),
        ["n-d000-n00", "n-d000-n01", "n-d000-n02", "n-d000-n03"]
    );
    assert_eq!(plan.status.current_wave, 1);
    assert_eq!(plan.status.wave_progress.as_deref(), Some("1/3"));
    // Wave 2 stays untouched while wave 1 is open.
    s.finish_probes();
    s.step();
    assert_eq!(in_state(&s, Validating).len(), 0);
    assert_eq!(in_state(&s, Pending).len(), 20);
    s.advance(60);
    s.step();
    // Wave 1 admitted; wave 2 (domains 1 and 2) starts in the same plan.
    assert_eq!(in_state(&s, Ready).len(), 4);
    assert_eq!(in_state(&s, Validating).len(), 8);
    assert!(
        in_state(&s, Validating)
            .iter()
            .all(|n| n.starts_with("n-d001") || n.starts_with("n-d002"))
    );
    s.run(100);
    assert_eq!(in_state(&s, Ready).len(), 24);
    let plan = s.plan();
    assert_eq!(plan.status.wave_progress.as_deref(), Some("3/3"));
    assert!(plan.status.waves.iter().all(|w| w.completed_at.is_some()));
    assert_eq!(condition(&plan, "Ready").reason, "RolloutComplete");
}

#[test]
fn domains_are_ordered_by_label_value_then_node_name() {
    // Cliques named out of order: zeta before alpha in the input.
    let mut nodes = Vec::new();
    for (clique, prefix) in [("zeta", "a"), ("alpha", "z")] {
        for i in 0..4 {
            nodes.push(healthy_node(
                &format!("{prefix}{i}"),
                clique,
                "east",
                "row1",
            ));
        }
    }
    let mut s = sim(pool(), batch(), nodes);
    s.step();
    assert_eq!(
        in_state(&s, Validating),
        ["z0", "z1", "z2", "z3"],
        "clique alpha goes first"
    );
}

#[test]
fn approved_waves_gate_promotion() {
    let mut s = sim(pool(), with_batch("spec: {approvedWaves: 1}"), nodes(6));
    s.run(100);
    assert_eq!(in_state(&s, Ready).len(), 4);
    let plan = s.plan();
    let ready = condition(&plan, "Ready");
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_str()),
        ("False", "WaitingForApproval")
    );
    assert!(
        ready.message.contains("wave 2 of 3 waits for approval"),
        "{}",
        ready.message
    );
    assert_eq!(condition(&plan, "Reconciling").status, "False");
    assert_eq!(condition(&plan, "Stalled").status, "False");
    // GitOps raises approvedWaves.
    s.batch.spec.approved_waves = Some(3);
    s.run(100);
    assert_eq!(in_state(&s, Ready).len(), 24);
}

#[test]
fn approved_waves_zero_starts_nothing() {
    let mut s = sim(pool(), with_batch("spec: {approvedWaves: 0}"), nodes(2));
    let plan = s.step();
    assert_eq!(plan.changes().count(), 0);
    assert_eq!(plan.status.current_wave, 0);
    assert_eq!(condition(&plan, "Ready").reason, "WaitingForApproval");
}

#[test]
fn paused_starts_nothing_new_but_in_flight_probes_finish() {
    let mut s = sim(pool(), batch(), nodes(6));
    s.step();
    s.batch.spec.paused = true;
    s.run(100);
    assert_eq!(in_state(&s, Ready).len(), 4, "wave 1 finishes");
    assert_eq!(in_state(&s, Pending).len(), 20, "wave 2 does not start");
    assert_eq!(condition(&s.plan(), "Ready").reason, "Paused");
    s.batch.spec.paused = false;
    s.run(100);
    assert_eq!(in_state(&s, Ready).len(), 24);
}

// ---- Domains --------------------------------------------------------------

#[test]
fn a_domain_below_its_minimum_is_held_and_admitted_once_it_recovers() {
    let failing = ["n-d000-n00", "n-d000-n01"];
    let mut s = sim_with(
        pool(),
        with_batch("spec: {maxFailuresPerWave: 2}"),
        nodes(2),
        move |node, _| {
            if failing.contains(&node) {
                Outcome::Fail {
                    exit_code: 1,
                    message: "bad NVLink".into(),
                }
            } else {
                Outcome::Pass
            }
        },
    );
    s.run(100);
    assert_eq!(in_state(&s, Failed), failing);
    assert_eq!(in_state(&s, Held), ["n-d000-n02", "n-d000-n03"]);
    assert!(
        reason_of(&s, "n-d000-n02")
            .starts_with("domain n-clique-000: 2 of 4 nodes healthy, 3 needed"),
        "{}",
        reason_of(&s, "n-d000-n02")
    );
    // Held is a verdict: the wave completes and the next one runs.
    assert_eq!(in_state(&s, Ready).len(), 4);
    let plan = s.plan();
    assert_eq!(condition(&plan, "Ready").status, "True");
    // A held node's taint stays.
    assert!(
        s.snapshot
            .nodes
            .iter()
            .filter(|n| n.state() == Held)
            .all(|n| !n.taints.is_empty())
    );

    // A person fixes one node and asks for a retry; the domain recovers.
    let mut s2 = sim(s.pool.clone(), s.batch.clone(), s.snapshot.nodes.clone());
    s2.snapshot.probes = s.snapshot.probes.clone();
    node_mut(&mut s2.snapshot.nodes, "n-d000-n00").retry = true;
    let plan = s2.step();
    assert!(
        plan.node_patches()
            .any(|p| p.node == "n-d000-n00" && p.annotations.get(keys::RETRY) == Some(&None))
    );
    s2.run(100);
    assert_eq!(s2.state("n-d000-n00"), Some(Ready));
    assert_eq!(s2.state("n-d000-n02"), Some(Ready));
    assert_eq!(s2.state("n-d000-n03"), Some(Ready));
    assert_eq!(s2.state("n-d000-n01"), Some(Failed));
}

#[test]
fn healthy_nodes_wait_in_soaking_for_their_whole_domain() {
    let mut s = sim(pool(), with_batch("spec: {maxConcurrent: 2}"), nodes(1));
    s.step();
    assert_eq!(in_state(&s, Validating).len(), 2);
    s.finish_probes();
    s.step();
    s.advance(60);
    s.step();
    // Two nodes soaked, but the domain's other two are still validating.
    assert_eq!(in_state(&s, Ready).len(), 0);
    assert_eq!(in_state(&s, Soaking).len(), 2);
    s.run(100);
    assert_eq!(in_state(&s, Ready).len(), 4);
}

#[test]
fn without_a_domain_label_every_node_is_its_own_domain() {
    let pool = with_pool("spec: {topology: {domainLabel: ''}}");
    let mut nodes = nodes(1);
    for n in &mut nodes {
        n.labels.remove("nvidia.com/gpu.clique");
    }
    let mut s = sim_with(
        pool,
        with_batch("spec: {maxFailuresPerWave: 3, waves: [{percent: 100}]}"),
        nodes,
        |node, _| {
            if node == "n-d000-n00" {
                Outcome::Fail {
                    exit_code: 1,
                    message: "x".into(),
                }
            } else {
                Outcome::Pass
            }
        },
    );
    s.run(100);
    assert_eq!(
        in_state(&s, Ready).len(),
        3,
        "one-node domains need only themselves"
    );
}

// ---- Budgets -------------------------------------------------------------

#[test]
fn concurrency_counts_validating_nodes_across_batches_of_the_pool() {
    let mut nodes = nodes(2);
    // Another batch of the same pool already validates 6 nodes.
    for i in 0..6 {
        let mut n = healthy_node(&format!("busy-{i}"), "busy", "east", "row9");
        n.state = Some(Validating);
        nodes.push(n);
    }
    let mut s = sim(pool(), batch(), nodes);
    s.step();
    assert_eq!(
        in_state(&s, Validating)
            .iter()
            .filter(|n| n.starts_with("n-"))
            .count(),
        2,
        "8 - 6 = 2 slots"
    );
}

#[test]
fn the_pools_cap_holds_every_batch_of_the_pool_and_the_lower_cap_wins() {
    // Another batch of the pool validates 3 nodes; the batch allows 8, the
    // pool 5: 2 slots, not 5.
    let with_busy = |pool_cap: Option<u32>| {
        let mut nodes = nodes(2);
        for i in 0..3 {
            let mut n = healthy_node(&format!("busy-{i}"), "busy", "east", "row9");
            n.state = Some(Validating);
            nodes.push(n);
        }
        let mut pool = pool();
        pool.spec.max_concurrent = pool_cap;
        // One wave of all 8 nodes, so only the caps limit the starts.
        let mut batch = batch();
        batch.spec.waves = vec![gpufleet::api::Wave {
            nodes: None,
            percent: Some(100),
        }];
        let mut s = sim(pool, batch, nodes);
        s.step();
        in_state(&s, Validating)
            .iter()
            .filter(|n| n.starts_with("n-"))
            .count()
    };
    assert_eq!(with_busy(Some(5)), 2, "pool cap 5 - 3 busy");
    assert_eq!(
        with_busy(Some(50)),
        5,
        "batch cap 8 - 3 busy: the lower wins"
    );
    assert_eq!(with_busy(None), 5, "no pool cap: the batch's");
}

#[test]
fn too_many_failures_in_a_wave_halt_the_rollout_until_a_person_acts() {
    let failing = ["n-d001-n00", "n-d001-n01"];
    let mut s = sim_with(pool(), batch(), nodes(6), move |node, _| {
        if failing.contains(&node) {
            Outcome::Fail {
                exit_code: 1,
                message: "burn-in failed".into(),
            }
        } else {
            Outcome::Pass
        }
    });
    s.run(200);
    let plan = s.plan();
    let stalled = condition(&plan, "Stalled");
    assert_eq!(
        (stalled.status.as_str(), stalled.reason.as_str()),
        ("True", "FailureBudgetExceeded")
    );
    assert!(
        stalled
            .message
            .contains("wave 2 has 2 failed nodes of 8, budget 1: n-d001-n00, n-d001-n01"),
        "{}",
        stalled.message
    );
    assert_eq!(condition(&plan, "Ready").status, "False");
    // Wave 3 never started.
    assert!(
        s.snapshot
            .nodes
            .iter()
            .filter(|n| n.name.as_str() >= "n-d003")
            .all(|n| n.state() == Pending)
    );
    assert!(
        s.log
            .iter()
            .any(|a| matches!(a, Action::Event(e) if e.reason == EventReason::RolloutHalted))
    );
    // Raising the budget resumes it.
    s.batch.spec.max_failures_per_wave =
        Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(2));
    s.run(200);
    // The two failures leave their domain below its minimum of 3: held.
    assert_eq!(in_state(&s, Ready).len(), 20);
    assert_eq!(in_state(&s, Held), ["n-d001-n02", "n-d001-n03"]);
    let plan = s.plan();
    assert_eq!(condition(&plan, "Stalled").status, "False");
    assert_eq!(condition(&plan, "Ready").status, "True");
}

#[test]
fn a_percent_failure_budget_is_of_the_wave() {
    // 50% of a 4-node wave is 2 failures.
    let failing = ["n-d000-n00", "n-d000-n01"];
    let mut s = sim_with(
        with_pool("spec: {topology: {minHealthyNodesPerDomain: 2}}"),
        with_batch("spec: {maxFailuresPerWave: '50%'}"),
        nodes(2),
        move |node, _| {
            if failing.contains(&node) {
                Outcome::Fail {
                    exit_code: 1,
                    message: "x".into(),
                }
            } else {
                Outcome::Pass
            }
        },
    );
    s.run(200);
    assert_eq!(condition(&s.plan(), "Stalled").status, "False");
    assert_eq!(in_state(&s, Ready).len(), 6);
}

#[test]
fn the_circuit_breaker_halts_every_batch_of_the_pool_and_clears_with_time() {
    let pool = with_pool("spec: {circuitBreaker: {maxFailedPercent: 10, window: 1h}}");
    // 24 nodes in the pool; limit 10% = 2. Three recent failures trip it.
    let mut nodes = nodes(6);
    for name in ["n-d005-n00", "n-d005-n01", "n-d005-n02"] {
        let n = view_mut(&mut nodes, name);
        n.state = Some(Failed);
        n.since = (Some(t0())).into();
        n.batch = Some("older".into());
        n.labels.insert("gpufleet.io/batch".into(), "older".into());
    }
    let mut s = sim(pool.clone(), batch(), nodes);
    let plan = s.step();
    assert_eq!(
        plan.changes().count(),
        0,
        "no new validations while tripped"
    );
    let stalled = condition(&plan, "Stalled");
    assert_eq!(
        (stalled.status.as_str(), stalled.reason.as_str()),
        ("True", "CircuitBreakerTripped")
    );
    assert_eq!(
        plan.requeue_after,
        Some(std::time::Duration::from_secs(3600)),
        "look again when the window passes"
    );
    let pool_plan = plan_pool(&pool, &s.snapshot.nodes, s.now);
    let breaker = pool_plan.status.breaker.as_ref().unwrap();
    assert!(breaker.tripped);
    assert_eq!((breaker.failed_in_window, breaker.limit), (3, 2));
    // An hour later the failures are out of the window.
    s.advance(3600);
    let plan = s.step();
    assert_eq!(condition(&plan, "Stalled").status, "False");
    assert!(
        plan.actions.iter().any(
            |a| matches!(a, Action::Event(e) if e.reason == EventReason::CircuitBreakerCleared)
        )
    );
    assert_eq!(in_state(&s, Validating).len(), 4);
}

// ---- Status ----------------------------------------------------------------

#[test]
fn conditions_keep_their_transition_time_while_status_holds() {
    let mut s = sim(pool(), batch(), nodes(6));
    let first = s.step();
    let t = condition(&first, "Ready").last_transition_time.clone();
    s.advance(30);
    let later = s.step();
    assert_eq!(condition(&later, "Ready").last_transition_time, t);
    assert_eq!(condition(&later, "Ready").observed_generation, Some(1));
    assert_eq!(later.status.observed_generation, Some(1));
}

#[test]
fn pool_status_counts_capacity_and_domains() {
    let mut s = sim(pool(), with_batch("spec: {approvedWaves: 1}"), nodes(3));
    s.run(100);
    let pool_plan = plan_pool(&s.pool, &s.snapshot.nodes, s.now);
    let st = &pool_plan.status;
    assert_eq!((st.gpus.ready, st.gpus.total), (16, 48));
    assert_eq!((st.domains.complete, st.domains.total), (1, 3));
    assert_eq!((st.nodes.ready, st.nodes.pending), (4, 8));
}

#[test]
fn events_mark_waves_failures_and_completion() {
    let mut s = sim_with(pool(), batch(), nodes(2), |node, _| {
        if node == "n-d001-n03" {
            Outcome::Fail {
                exit_code: 2,
                message: "ECC errors".into(),
            }
        } else {
            Outcome::Pass
        }
    });
    s.run(100);
    let reasons: Vec<EventReason> = s
        .log
        .iter()
        .filter_map(|a| match a {
            Action::Event(e) => Some(e.reason),
            _ => None,
        })
        .collect();
    for expected in [
        EventReason::WaveStarted,
        EventReason::WaveCompleted,
        EventReason::NodeFailed,
        EventReason::RolloutComplete,
    ] {
        assert!(
            reasons.contains(&expected),
            "{expected} missing from {reasons:?}"
        );
    }
    assert_eq!(
        reasons
            .iter()
            .filter(|r| **r == EventReason::RolloutComplete)
            .count(),
        1,
        "said once"
    );
}

// ---- Release ---------------------------------------------------------------

#[test]
fn a_node_that_leaves_the_batch_is_released_safely() {
    let mut s = sim(pool(), batch(), nodes(1));
    s.step();
    node_mut(&mut s.snapshot.nodes, "n-d000-n00")
        .labels
        .insert("gpufleet.io/batch".into(), "elsewhere".into());
    let plan = s.step();
    let patch = plan
        .node_patches()
        .find(|p| p.node == "n-d000-n00")
        .expect("released");
    let view = s
        .snapshot
        .nodes
        .iter()
        .find(|n| n.name == "n-d000-n00")
        .expect("node");
    assert_eq!(patch, &release(view));
    assert_eq!(
        patch.taint,
        TaintChange::Keep,
        "the taint stays until a batch admits it"
    );
    assert!(plan.actions.iter().any(|a| matches!(
        a,
        Action::DeleteProbe { pod_name, .. } if *pod_name == probe_pod_name("n-d000-n00", 1)
    )));
    let node = s
        .snapshot
        .nodes
        .iter()
        .find(|n| n.name == "n-d000-n00")
        .unwrap();
    assert_eq!(node.state, None);
    assert!(node.has_taint("gpufleet.io/onboarding", "NoSchedule"));
}

#[test]
fn probe_pod_names_are_deterministic_and_valid() {
    assert_eq!(
        probe_pod_name("gb200-r12-n07", 1),
        "gpufleet-probe-gb200-r12-n07-1"
    );
    let long = "a".repeat(253);
    let name = probe_pod_name(&long, 2);
    assert!(name.len() <= 253, "{}", name.len());
    assert_eq!(name, probe_pod_name(&long, 2));
    assert_ne!(name, probe_pod_name(&long, 3));
}

#[test]
fn a_probe_phase_unknown_waits_for_its_deadline() {
    let mut s = sim_with(
        pool(),
        with_batch("spec: {maxFailuresPerWave: 4}"),
        nodes(1),
        |_, _| Outcome::Pass,
    );
    s.step();
    for p in &mut s.snapshot.probes {
        p.phase = ProbePhase::Unknown;
    }
    let plan = s.step();
    assert_eq!(plan.changes().count(), 0);
    assert_eq!(
        plan.requeue_after,
        Some(std::time::Duration::from_secs(600))
    );
}

#[test]
fn a_since_in_the_far_future_is_written_again_and_the_rollout_goes_on() {
    // A node's own kubelet may write `gpufleet.io/since: 9999-12-30T21:59:00Z`.
    // It used to overflow the time arithmetic and panic the operator, every
    // pool with it; now the node's clock starts again from now.
    let mut s = sim(pool(), batch(), nodes(1));
    s.step();
    assert_eq!(in_state(&s, Validating).len(), 4);
    let forged: k8s_openapi::jiff::Timestamp = "9999-12-30T21:59:00Z".parse().unwrap();
    node_mut(&mut s.snapshot.nodes, "n-d000-n00").since = (Some(forged)).into();
    let plan = s.step();
    let patch = plan
        .node_patches()
        .find(|p| p.node == "n-d000-n00")
        .expect("since written again");
    assert_eq!(
        patch.annotations.get(keys::SINCE),
        Some(&Some(s.now.to_string()))
    );
    s.finish_probes();
    s.step();
    node_mut(&mut s.snapshot.nodes, "n-d000-n01").since = (Some(forged)).into();
    s.run(50);
    assert_eq!(in_state(&s, Ready).len(), 4);
}

#[test]
fn a_window_of_two_hundred_million_hours_plans_without_panicking() {
    let pool = with_pool("spec: {circuitBreaker: {maxFailedPercent: 10, window: 200000000h}}");
    let mut s = sim(pool, batch(), nodes(1));
    s.run(50);
    assert_eq!(in_state(&s, Ready).len(), 4);
    let pool_plan = plan_pool(&s.pool, &s.snapshot.nodes, s.now);
    assert!(!pool_plan.breaker.tripped);
}
