//! A short soak's pass is written with the node's admission (issue #17):
//! with `soakSeconds` no longer than `PASS_IN_POD` (30 s), a probe's pass
//! may stay in its pod, the node labelled validating and holding its slot,
//! until the write that admits (or holds, or fails) it; at most 30 s after
//! the probe's finish it is written as soaking. Longer soaks are written
//! when read, as before.

use gpufleet::planner::sim::{Outcome, Sim};
use gpufleet::planner::{Action, NodeState::*, Plan, probe_pod_name};

use crate::fixtures::*;

const NODE: &str = "n-d000-n00";

/// One domain of 4 nodes, a probe with no retries, this soak.
fn sim_soaking(soak: u32, batch: &str, hang: &'static [&'static str]) -> Sim {
    sim_with(
        with_pool(&format!(
            "spec: {{healthChecks: {{soakSeconds: {soak}, probe: {{retries: 0}}}}}}"
        )),
        with_batch(batch),
        nodes(1),
        move |node, _| {
            if hang.contains(&node) {
                Outcome::Hang
            } else {
                Outcome::Pass
            }
        },
    )
}

fn patched(plan: &Plan) -> Vec<&str> {
    plan.node_patches().map(|p| p.node.as_str()).collect()
}

fn deleted(plan: &Plan) -> usize {
    plan.actions
        .iter()
        .filter(|a| matches!(a, Action::DeleteProbe { .. }))
        .count()
}

#[test]
fn a_short_soak_is_written_once_with_the_admission() {
    let mut s = sim_soaking(10, "spec: {}", &[]);
    s.step();
    assert_eq!(s.state(NODE), Some(Validating));
    s.finish_probes();
    // The plan that reads the four passes writes nothing: the passed pods
    // stay, the nodes stay validating, a plan comes when the soak ends.
    let read = s.step();
    assert_eq!(patched(&read), Vec::<&str>::new(), "{:?}", read.actions);
    assert_eq!(deleted(&read), 0, "{:?}", read.actions);
    assert_eq!(s.state(NODE), Some(Validating));
    assert_eq!(s.snapshot.probes.len(), 4);
    let after = read.requeue_after.expect("a plan when the soak ends");
    assert!(after.as_secs() <= 10, "{after:?}");
    // Soaked: each node admitted in one write, its pod deleted.
    s.advance(10);
    let admit = s.step();
    assert_eq!(patched(&admit).len(), 4, "{:?}", admit.actions);
    assert!(admit.node_patches().all(|p| p.state == Some(Ready)));
    assert_eq!(deleted(&admit), 4);
    assert_eq!(s.state(NODE), Some(Ready));
    // Two writes a node: started, admitted.
    assert_eq!(s.node_writes.get(NODE), Some(&2), "{:?}", s.node_writes);
}

#[test]
fn a_long_soak_is_written_when_its_pass_is_read() {
    let mut s = sim_soaking(31, "spec: {}", &[]);
    s.step();
    s.finish_probes();
    let read = s.step();
    assert_eq!(patched(&read).len(), 4, "{:?}", read.actions);
    assert_eq!(s.state(NODE), Some(Soaking));
    assert_eq!(deleted(&read), 4);
}

#[test]
fn a_pass_its_domain_does_not_admit_within_thirty_seconds_is_written_soaking() {
    // One node's probe hangs (600 s timeout): the domain waits for it.
    let mut s = sim_soaking(5, "spec: {}", &["n-d000-n03"]);
    s.step();
    s.finish_probes();
    let read = s.step();
    assert_eq!(patched(&read), Vec::<&str>::new(), "{:?}", read.actions);
    // Soaked at 5 s, not admitted: still only in the pod until 30 s.
    s.advance(5);
    let soaked = s.step();
    assert_eq!(patched(&soaked), Vec::<&str>::new(), "{:?}", soaked.actions);
    let after = soaked.requeue_after.expect("a plan when the time is up");
    assert!(after.as_secs() <= 25, "{after:?}");
    s.advance(25);
    let written = s.step();
    assert_eq!(patched(&written).len(), 3, "{:?}", written.actions);
    assert!(written.node_patches().all(|p| p.state == Some(Soaking)));
    assert_eq!(deleted(&written), 3);
    assert_eq!(s.state(NODE), Some(Soaking));
    assert_eq!(s.state("n-d000-n03"), Some(Validating));
}

#[test]
fn an_unwritten_pass_holds_its_slot_under_max_concurrent() {
    // Two domains of 4, four at once: the first domain's passes, not
    // written, keep the second from starting.
    let two = |soak: u32| {
        sim_with(
            with_pool(&format!(
                "spec: {{healthChecks: {{soakSeconds: {soak}, probe: {{retries: 0}}}}}}"
            )),
            with_batch("spec: {maxConcurrent: 4, waves: [{nodes: 8}]}"),
            nodes(2),
            |_, _| Outcome::Pass,
        )
    };
    let creates = |plan: &Plan| {
        plan.actions
            .iter()
            .filter(|a| matches!(a, Action::CreateProbe(_)))
            .count()
    };
    let validating = |s: &Sim| {
        s.snapshot
            .nodes
            .iter()
            .filter(|n| n.state() == Validating)
            .count()
    };
    let mut s = two(5);
    assert_eq!(creates(&s.step()), 4);
    s.finish_probes();
    let read = s.step();
    assert_eq!(creates(&read), 0, "{:?}", read.actions);
    assert_eq!(patched(&read), Vec::<&str>::new(), "{:?}", read.actions);
    // With a 60 s soak the same plan records the passes and starts four.
    let mut long = two(60);
    long.step();
    long.finish_probes();
    assert_eq!(creates(&long.step()), 4);
    // Run to the end: every node admitted, never more than four labelled
    // validating (the cap, counted as the cluster shows it).
    let mut most = 0;
    for _ in 0..40 {
        let plan = s.step();
        most = most.max(validating(&s));
        s.finish_probes();
        if plan.changes().next().is_none() {
            match plan.requeue_after {
                Some(after) => s.advance((after.as_secs_f64().ceil() as i64).max(1)),
                None => break,
            }
        }
    }
    assert!(
        most <= 4,
        "{most} nodes validating at once, over the cap of 4"
    );
    assert!(s.snapshot.nodes.iter().all(|n| n.state() == Ready));
    assert!(
        s.node_writes.values().all(|w| *w == 2),
        "{:?}",
        s.node_writes
    );
}

#[test]
fn a_pass_whose_domain_still_has_nodes_to_start_is_written_at_once() {
    // Two at once in a domain of 4: the passes free the slots the other
    // two need, so they are written when read (no wait of 30 s).
    let mut s = sim_soaking(5, "spec: {maxConcurrent: 2, waves: [{nodes: 4}]}", &[]);
    s.step();
    s.finish_probes();
    let read = s.step();
    assert_eq!(
        patched(&read).len(),
        4,
        "two soaking, two started: {:?}",
        read.actions
    );
    assert!(
        read.actions
            .iter()
            .any(|a| matches!(a, Action::CreateProbe(_))),
        "{:?}",
        read.actions
    );
}

#[test]
fn a_passed_pod_gone_before_its_pass_is_written_is_made_again_and_fails_nothing() {
    let mut s = sim_soaking(10, "spec: {}", &[]);
    s.step();
    s.finish_probes();
    let read = s.step();
    assert_eq!(patched(&read), Vec::<&str>::new());
    // The pod garbage collector (or anyone) takes NODE's passed pod.
    let name = probe_pod_name(NODE, 1);
    s.snapshot.probes.retain(|p| p.name != name);
    let again = s.step();
    assert!(
        again
            .actions
            .iter()
            .any(|a| matches!(a, Action::CreateProbe(r) if r.node == NODE)),
        "{:?}",
        again.actions
    );
    assert_eq!(s.state(NODE), Some(Validating));
    // The others soak on; NODE's new probe passes and the domain is
    // admitted whole, nothing failed.
    assert!(s.run(40).is_some(), "the batch settles");
    for n in 0..4 {
        assert_eq!(s.state(&format!("n-d000-n0{n}")), Some(Ready));
    }
}

#[test]
fn a_pass_whose_thirty_seconds_would_outlast_a_probe_deadline_is_written_at_once() {
    // A 60 s run deadline; a probe that ran `seconds` of it, then passed.
    let read_after = |seconds: i64| {
        let mut s = sim_with(
            with_pool(
                "spec: {healthChecks: {soakSeconds: 10, probe: {retries: 0, timeoutSeconds: 60}}}",
            ),
            with_batch("spec: {}"),
            nodes(1),
            |_, _| Outcome::Pass,
        );
        s.step();
        s.advance(seconds);
        for p in &mut s.snapshot.probes {
            p.started_at = Some(t0());
        }
        s.finish_probes();
        let plan = s.step();
        (s, plan)
    };
    // 40 s: 30 s more would end past the deadline, where a pod cache
    // behind this plan's (showing the pod still running) would time the
    // probe out. Written when read.
    let (s, read) = read_after(40);
    assert_eq!(patched(&read).len(), 4, "{:?}", read.actions);
    assert_eq!(s.state(NODE), Some(Soaking));
    // 25 s leaves room: nothing written.
    let (s, read) = read_after(25);
    assert_eq!(patched(&read), Vec::<&str>::new(), "{:?}", read.actions);
    assert_eq!(s.state(NODE), Some(Validating));
}
