//! The probe's truth table: when a probe pod is a verdict, and which.
//!
//! Each case builds the probe pod as the API server would return it (JSON),
//! reads it the way the operator does (`ProbeView::from(&Pod)`) and plans.
//! A probe passes only when its pod Succeeded and every container (init
//! containers included) ended with exit 0; any container that exited
//! non-zero fails it at once; and a pod this batch did not make is no
//! verdict at all, whatever it says.

use gpufleet::planner::sim::{Outcome, Sim};
use gpufleet::planner::{Action, NodeState::*, Plan, ProbeView, probe_pod_name};
use k8s_openapi::api::core::v1::Pod;
use serde_json::{Value, json};

use crate::fixtures::*;

const NODE: &str = "n-d000-n00";

/// A pool whose probe template runs a quick inventory beside a long burn-in.
fn two_container_pool() -> gpufleet::api::GpuPool {
    with_pool(
        "spec: {healthChecks: {probe: {template: {spec: {containers: [\
         {name: inventory, image: cuda, command: [nvidia-smi, -q]}, \
         {name: burn-in, image: dcgm, command: [dcgmi, diag, -r, '3']}]}}}}}",
    )
}

/// Started: every node of the domain validating, its attempt-1 probe made.
fn started(pool: gpufleet::api::GpuPool) -> Sim {
    let mut s = sim_with(
        pool,
        with_batch("spec: {maxFailuresPerWave: 4}"),
        nodes(1),
        |_, _| Outcome::Hang,
    );
    s.step();
    assert_eq!(s.state(NODE), Some(Validating));
    s
}

/// A container status: `running`, or terminated with this exit code.
fn status(name: &str, exit: Option<i32>, message: &str) -> Value {
    let state = match exit {
        None => json!({"running": {"startedAt": "2026-11-27T00:00:01Z"}}),
        Some(code) => json!({"terminated": {
            "exitCode": code,
            "reason": if code == 0 { "Completed" } else { "Error" },
            "message": message,
        }}),
    };
    json!({"name": name, "image": "x", "imageID": "", "ready": false, "restartCount": 0, "state": state})
}

/// The probe pod at `NODE`'s attempt-1 name, as the API server returns it.
/// `uid`: its `gpufleet.io/batch-uid` label (and controller owner), if any.
fn pod(uid: Option<&str>, phase: &str, init: Vec<Value>, containers: Vec<Value>) -> Pod {
    let mut labels = json!({"app.kubernetes.io/managed-by": "gpufleet"});
    let mut owners = json!([]);
    if let Some(uid) = uid {
        labels["gpufleet.io/batch-uid"] = json!(uid);
        owners = json!([{"apiVersion": "gpufleet.io/v1alpha1", "kind": "RolloutBatch",
                          "name": "row1", "uid": uid, "controller": true}]);
    }
    let names = |statuses: &[Value]| -> Vec<Value> {
        statuses
            .iter()
            .map(|c| json!({"name": c["name"], "image": "x"}))
            .collect()
    };
    serde_json::from_value(json!({
        "metadata": {
            "name": probe_pod_name(NODE, 1),
            "namespace": "gpufleet-system",
            "labels": labels,
            "ownerReferences": owners,
            "annotations": {"gpufleet.io/batch": "row1", "gpufleet.io/attempt": "1", "gpufleet.io/started": t0().to_string()},
            "creationTimestamp": t0().to_string(),
        },
        "spec": {
            "nodeName": NODE,
            "restartPolicy": "Never",
            "initContainers": names(&init),
            "containers": names(&containers),
        },
        "status": {
            "phase": phase,
            "initContainerStatuses": init,
            "containerStatuses": containers,
        },
    }))
    .expect("a pod")
}

/// Puts `pod` in the snapshot in place of `NODE`'s probe and plans.
fn plan_with(s: &mut Sim, pod: &Pod) -> Plan {
    s.snapshot.probes.retain(|p| p.node != NODE);
    s.snapshot.probes.push(ProbeView::from(pod));
    s.step()
}

fn ours() -> Option<&'static str> {
    Some(BATCH_UID)
}

fn deletes(plan: &Plan, name: &str) -> bool {
    plan.actions
        .iter()
        .any(|a| matches!(a, Action::DeleteProbe { pod_name, .. } if pod_name == name))
}

fn creates(plan: &Plan, node: &str) -> bool {
    plan.actions
        .iter()
        .any(|a| matches!(a, Action::CreateProbe(r) if r.node == node))
}

#[test]
fn one_container_that_exited_zero_with_the_pod_succeeded_passes() {
    let mut s = started(pool());
    plan_with(
        &mut s,
        &pod(
            ours(),
            "Succeeded",
            vec![],
            vec![status("burn-in", Some(0), "")],
        ),
    );
    assert_eq!(s.state(NODE), Some(Soaking));
}

#[test]
fn one_container_that_exited_non_zero_fails_with_its_message() {
    let mut s = started(pool());
    plan_with(
        &mut s,
        &pod(
            ours(),
            "Failed",
            vec![],
            vec![status("burn-in", Some(1), "dcgmi diag: NVLink CRC errors")],
        ),
    );
    assert_eq!(s.state(NODE), Some(Validating), "its one retry");
    assert_eq!(
        reason_of(&s, NODE),
        "attempt 1 failed: probe failed (exit 1): dcgmi diag: NVLink CRC errors; retrying"
    );
}

/// Issue 13, scenario 1: the inventory ended at once, the burn-in runs on.
#[test]
fn one_container_done_while_another_still_runs_is_not_a_pass() {
    let mut s = started(two_container_pool());
    let running = pod(
        ours(),
        "Running",
        vec![],
        vec![
            status("inventory", Some(0), ""),
            status("burn-in", None, ""),
        ],
    );
    let plan = plan_with(&mut s, &running);
    assert_eq!(
        s.state(NODE),
        Some(Validating),
        "the burn-in has not spoken"
    );
    assert!(
        !deletes(&plan, &probe_pod_name(NODE, 1)),
        "the running burn-in is left alone"
    );
    assert_eq!(
        plan.requeue_after,
        Some(std::time::Duration::from_secs(600)),
        "it waits for the probe's deadline"
    );
    // Still running near the deadline: still waiting.
    s.advance(599);
    plan_with(&mut s, &running);
    assert_eq!(s.state(NODE), Some(Validating));
    // Then the burn-in ends well: now it passes.
    plan_with(
        &mut s,
        &pod(
            ours(),
            "Succeeded",
            vec![],
            vec![
                status("inventory", Some(0), ""),
                status("burn-in", Some(0), ""),
            ],
        ),
    );
    assert_eq!(s.state(NODE), Some(Soaking));
}

#[test]
fn every_container_exited_zero_with_the_pod_succeeded_passes() {
    let mut s = started(two_container_pool());
    let plan = plan_with(
        &mut s,
        &pod(
            ours(),
            "Succeeded",
            vec![status("setup", Some(0), "")],
            vec![
                status("inventory", Some(0), ""),
                status("burn-in", Some(0), ""),
            ],
        ),
    );
    assert_eq!(s.state(NODE), Some(Soaking));
    assert!(
        deletes(&plan, &probe_pod_name(NODE, 1)),
        "read, then deleted"
    );
}

#[test]
fn a_container_that_exited_non_zero_fails_at_once_and_is_named() {
    let mut s = started(two_container_pool());
    plan_with(
        &mut s,
        &pod(
            ours(),
            "Running",
            vec![],
            vec![
                status("inventory", Some(0), ""),
                status("burn-in", Some(3), "level 3 failed\nGPU 2: memory errors"),
            ],
        ),
    );
    assert_eq!(s.state(NODE), Some(Validating), "its one retry");
    assert_eq!(
        reason_of(&s, NODE),
        "attempt 1 failed: probe failed (exit 3, container burn-in): level 3 failed / GPU 2: memory errors; retrying"
    );
}

#[test]
fn a_failed_init_container_fails_the_probe() {
    let mut s = started(pool());
    plan_with(
        &mut s,
        &pod(
            ours(),
            "Pending",
            vec![status("driver-check", Some(2), "no driver")],
            vec![
                json!({"name": "burn-in", "image": "x", "imageID": "", "ready": false,
                        "restartCount": 0, "state": {"waiting": {"reason": "PodInitializing"}}}),
            ],
        ),
    );
    assert!(
        reason_of(&s, NODE)
            .contains("probe failed (exit 2, init container driver-check): no driver"),
        "{}",
        reason_of(&s, NODE)
    );
}

#[test]
fn a_succeeded_pod_with_a_non_zero_container_fails() {
    let mut s = started(two_container_pool());
    plan_with(
        &mut s,
        &pod(
            ours(),
            "Succeeded",
            vec![],
            vec![
                status("inventory", Some(0), ""),
                status("burn-in", Some(1), "diag failed"),
            ],
        ),
    );
    assert_ne!(s.state(NODE), Some(Soaking));
    assert!(
        reason_of(&s, NODE).contains("probe failed (exit 1, container burn-in): diag failed"),
        "{}",
        reason_of(&s, NODE)
    );
}

#[test]
fn a_succeeded_pod_with_a_container_not_yet_terminated_is_not_a_pass() {
    let mut s = started(two_container_pool());
    plan_with(
        &mut s,
        &pod(
            ours(),
            "Succeeded",
            vec![],
            vec![
                status("inventory", Some(0), ""),
                status("burn-in", None, ""),
            ],
        ),
    );
    assert_eq!(s.state(NODE), Some(Validating));
}

/// Pending past `startTimeoutSeconds` (600 by default): the pod never ran,
/// which says nothing about the node. The run is counted on the node and
/// made again under a new name; nothing fails.
#[test]
fn a_pod_that_never_starts_is_made_again_and_fails_nothing() {
    let mut s = started(with_pool(
        "spec: {healthChecks: {probe: {retries: 0}, shortCircuitPercent: 100}}",
    ));
    let mut pending = pod(ours(), "Pending", vec![], vec![]);
    pending.status.as_mut().unwrap().conditions = Some(vec![
        serde_json::from_value(json!({
            "type": "PodScheduled", "status": "False", "reason": "Unschedulable",
            "message": "0/1 nodes are available: 1 Insufficient nvidia.com/gpu."
        }))
        .unwrap(),
    ]);
    s.advance(599);
    plan_with(&mut s, &pending);
    assert_eq!(s.state(NODE), Some(Validating));
    s.advance(1);
    let plan = plan_with(&mut s, &pending);
    assert_eq!(s.state(NODE), Some(Validating), "not failed");
    assert_eq!(
        reason_of(&s, NODE),
        "probe attempt 1 did not run (1 of 3 allowed): its pod did not start within 600s: \
         Unschedulable: 0/1 nodes are available: 1 Insufficient nvidia.com/gpu.; \
         not a failure of the node; trying again"
    );
    assert!(deletes(&plan, &probe_pod_name(NODE, 1)));
    assert!(plan.actions.iter().any(
        |a| matches!(a, Action::CreateProbe(r) if r.pod_name == format!("{}r1", probe_pod_name(NODE, 1)))
    ));
    let node = s.snapshot.nodes.iter().find(|n| n.name == NODE).unwrap();
    assert_eq!(node.probe_misses, 1);
    assert_eq!(node.attempt, 1, "no attempt spent");
    assert_eq!(plan.status.nodes.failed, 0);
}

/// A pod that started counts its run from its start, not its creation: a
/// probe kept waiting (image pull, a slow kubelet) is not a slow GPU.
#[test]
fn a_probe_runs_its_full_timeout_from_when_it_started() {
    let mut s = started(with_pool(
        "spec: {healthChecks: {probe: {retries: 0, timeoutSeconds: 300}, shortCircuitPercent: 100}}",
    ));
    // t0 + 250 s: it started running (the image took 250 s).
    let started_at = (t0() + k8s_openapi::jiff::SignedDuration::from_secs(250)).to_string();
    let running = pod(
        ours(),
        "Running",
        vec![],
        vec![
            json!({"name": "burn-in", "image": "x", "imageID": "", "ready": true,
                    "restartCount": 0, "state": {"running": {"startedAt": started_at}}}),
        ],
    );
    s.advance(540);
    plan_with(&mut s, &running);
    assert_eq!(
        s.state(NODE),
        Some(Validating),
        "300 s from its start is t0+550"
    );
    s.advance(10);
    plan_with(&mut s, &running);
    assert_eq!(s.state(NODE), Some(Failed));
    assert_eq!(reason_of(&s, NODE), "probe timed out after 300s");
}

/// Evicted (or preempted) by the kubelet: whatever its containers said,
/// no verdict; made again.
#[test]
fn an_evicted_probe_is_no_verdict() {
    let mut s = started(with_pool("spec: {healthChecks: {probe: {retries: 0}}}"));
    let mut evicted = pod(
        ours(),
        "Failed",
        vec![],
        vec![status("burn-in", Some(137), "")],
    );
    let st = evicted.status.as_mut().unwrap();
    st.reason = Some("Evicted".into());
    st.message = Some("The node was low on resource: ephemeral-storage.".into());
    let plan = plan_with(&mut s, &evicted);
    assert_eq!(s.state(NODE), Some(Validating));
    assert!(
        reason_of(&s, NODE).contains("its pod was evicted: Evicted: The node was low on resource"),
        "{}",
        reason_of(&s, NODE)
    );
    assert!(creates(&plan, NODE));
    assert_eq!(plan.status.nodes.failed, 0);
}

/// The kubelet refused the pod before any container ran (admission:
/// `UnexpectedAdmissionError`, `OutOfnvidia.com/gpu`): no verdict either.
#[test]
fn a_probe_refused_by_the_kubelet_before_it_ran_is_no_verdict() {
    let mut s = started(with_pool("spec: {healthChecks: {probe: {retries: 0}}}"));
    let mut refused = pod(ours(), "Failed", vec![], vec![]);
    let st = refused.status.as_mut().unwrap();
    st.reason = Some("UnexpectedAdmissionError".into());
    st.message = Some("Allocate failed due to no healthy devices present".into());
    plan_with(&mut s, &refused);
    assert_eq!(s.state(NODE), Some(Validating));
    assert!(reason_of(&s, NODE).contains("its pod failed before it ran"));
}

/// A node whose probe did not run `notStartedLimit` times halts the
/// batch: no new node starts, none is failed, and it keeps trying; once
/// its probe runs and passes, the batch goes on.
#[test]
fn probes_that_never_run_halt_the_batch_at_the_limit_and_it_resumes() {
    let mut s = sim_with(
        with_pool("spec: {healthChecks: {probe: {notStartedLimit: 2, startTimeoutSeconds: 60}}}"),
        with_batch("spec: {maxConcurrent: 1, maxFailuresPerWave: 0}"),
        nodes(1),
        |_, _| Outcome::NeverStarts,
    );
    for _ in 0..6 {
        s.step();
        s.finish_probes();
        s.advance(61);
    }
    let plan = s.plan();
    let gate = plan.status.gate.as_ref().unwrap();
    assert_eq!(gate.name, gpufleet::vocabulary::Gate::ProbesNotRunning);
    assert!(
        gate.message.contains("probes cannot run"),
        "{}",
        gate.message
    );
    let stalled = plan
        .status
        .conditions
        .iter()
        .find(|c| c.type_ == "Stalled")
        .unwrap();
    assert_eq!(
        (stalled.status.as_str(), stalled.reason.as_str()),
        ("True", "ProbesNotRunning")
    );
    assert_eq!(plan.status.nodes.failed, 0);
    assert_eq!(
        plan.status.nodes.validating, 1,
        "only the first node started"
    );
    // The probes run again: the batch completes, nothing failed.
    s.outcome = Box::new(|_, _| Outcome::Pass);
    s.run(200);
    let plan = s.plan();
    assert_eq!(plan.status.nodes.ready, 4, "{:?}", plan.status);
    assert!(s.snapshot.nodes.iter().all(|n| n.probe_misses == 0));
}

#[test]
fn a_pod_deleted_mid_run_is_made_again_without_a_failure() {
    let mut s = started(two_container_pool());
    plan_with(
        &mut s,
        &pod(
            ours(),
            "Running",
            vec![],
            vec![
                status("inventory", Some(0), ""),
                status("burn-in", None, ""),
            ],
        ),
    );
    s.snapshot.probes.retain(|p| p.node != NODE);
    s.advance(30);
    let plan = s.step();
    assert!(creates(&plan, NODE), "the same attempt's probe again");
    assert_eq!(s.state(NODE), Some(Validating));
    assert!(reason_of(&s, NODE).is_empty(), "no failure counted");
}

/// A pod at the probe's name that this batch did not make (no UID, or
/// another batch's) is no verdict: it is deleted and the node waits for its
/// own probe.
#[test]
fn a_squatter_at_the_probes_name_is_no_verdict_and_is_deleted() {
    for uid in [None, Some("0d0e0a0d-0000-4000-8000-00000000beef")] {
        let mut s = started(pool());
        let squatter = pod(
            uid,
            "Succeeded",
            vec![],
            vec![status("burn-in", Some(0), "")],
        );
        let plan = plan_with(&mut s, &squatter);
        assert_eq!(s.state(NODE), Some(Validating), "uid {uid:?}: not a pass");
        assert!(deletes(&plan, &probe_pod_name(NODE, 1)), "uid {uid:?}");
        // Gone: the node's own probe is made.
        let plan = s.step();
        assert!(creates(&plan, NODE), "uid {uid:?}");
        assert_eq!(s.state(NODE), Some(Validating));

        // A failing squatter fails nothing either.
        let mut s = started(pool());
        plan_with(
            &mut s,
            &pod(uid, "Failed", vec![], vec![status("burn-in", Some(1), "x")]),
        );
        assert_eq!(
            s.state(NODE),
            Some(Validating),
            "uid {uid:?}: not a failure"
        );
        assert!(reason_of(&s, NODE).is_empty());
    }
}

#[test]
fn a_squatter_that_keeps_the_name_until_the_start_deadline_is_a_run_that_never_ran() {
    let mut s = started(with_pool("spec: {healthChecks: {probe: {retries: 0}}}"));
    let squatter = pod(None, "Running", vec![], vec![status("burn-in", None, "")]);
    s.advance(300);
    plan_with(&mut s, &squatter);
    assert_eq!(s.state(NODE), Some(Validating));
    s.advance(300);
    let plan = plan_with(&mut s, &squatter);
    assert_eq!(s.state(NODE), Some(Validating), "no verdict on the node");
    assert_eq!(
        reason_of(&s, NODE),
        format!(
            "probe attempt 1 did not run (1 of 3 allowed): a pod this batch did not make held the probe's name {} for 600s; not a failure of the node; trying again",
            probe_pod_name(NODE, 1)
        )
    );
    assert!(deletes(&plan, &probe_pod_name(NODE, 1)));
}

/// Probes made before the `gpufleet.io/batch-uid` label carry the batch's
/// UID in their controller owner reference: still the batch's own.
#[test]
fn a_probe_owned_by_the_batch_without_the_label_is_taken() {
    let mut s = started(pool());
    let mut older = pod(
        ours(),
        "Succeeded",
        vec![],
        vec![status("burn-in", Some(0), "")],
    );
    older
        .metadata
        .labels
        .as_mut()
        .unwrap()
        .remove("gpufleet.io/batch-uid");
    plan_with(&mut s, &older);
    assert_eq!(s.state(NODE), Some(Soaking));
}
