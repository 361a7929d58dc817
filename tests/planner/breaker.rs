//! The circuit breaker remembers failures for their whole window: the
//! ledger in the pool's status (`status.breaker.failures`), which the pool's
//! reconcile carries forward and every batch's plan counts.

use std::time::Duration;

use gpufleet::api::{BreakerFailure, GpuPool, GpuPoolStatus};
use gpufleet::planner::{Action, NodeState::*, NodeView, PoolPlan, Snapshot, plan, plan_pool};
use gpufleet::vocabulary::{EventReason, Gate};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::{SignedDuration, Timestamp};

use crate::fixtures::*;

/// The fixture pool with a breaker: 10% of the pool within an hour.
fn breaker_pool() -> GpuPool {
    with_pool("spec: {circuitBreaker: {maxFailedPercent: 10, window: 1h}}")
}

fn at(minutes: i64) -> Timestamp {
    t0() + SignedDuration::from_mins(minutes)
}

/// Fails `name` at `since`, as an earlier batch `older` left it.
fn fail(nodes: &mut [NodeView], name: &str, since: Option<Timestamp>) {
    let n = view_mut(nodes, name);
    n.state = Some(Failed);
    n.since = (since).into();
    n.batch = Some("older".into());
    n.labels.insert("gpufleet.io/batch".into(), "older".into());
}

/// The pool with `status` as given, the way the API server stores it
/// (through JSON, times to the second).
fn with_status(pool: &GpuPool, status: &GpuPoolStatus) -> GpuPool {
    let mut pool = pool.clone();
    let stored = serde_json::to_value(status).unwrap();
    pool.status = Some(serde_json::from_value(stored).unwrap());
    pool
}

/// A JSON merge patch (RFC 7386), as the API server applies one.
fn merge_patch(target: &mut serde_json::Value, patch: &serde_json::Value) {
    let serde_json::Value::Object(fields) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = serde_json::json!({});
    }
    let target = target.as_object_mut().unwrap();
    for (key, value) in fields {
        if value.is_null() {
            target.remove(key);
        } else {
            merge_patch(
                target.entry(key.clone()).or_insert(serde_json::Value::Null),
                value,
            );
        }
    }
}

/// The pool's reconcile at `now`, its status written as the operator writes
/// it: a merge patch of the status.
fn reconcile(pool: &mut GpuPool, nodes: &[NodeView], now: Timestamp) -> PoolPlan {
    let plan = plan_pool(pool, nodes, now);
    let mut stored = serde_json::to_value(&pool.status).unwrap();
    merge_patch(&mut stored, &serde_json::to_value(&plan.status).unwrap());
    pool.status = Some(serde_json::from_value(stored).unwrap());
    // Else the operator writes the status again on every reconcile.
    assert_eq!(
        pool.status.as_ref(),
        Some(&plan.status),
        "the stored status is the plan's"
    );
    plan
}

fn ledger(plan: &PoolPlan) -> Vec<(String, Timestamp)> {
    plan.status
        .breaker
        .as_ref()
        .unwrap()
        .failures
        .iter()
        .map(|f| (f.node.clone(), f.at.0))
        .collect()
}

fn remembered(failures: &[(&str, Timestamp)]) -> GpuPoolStatus {
    GpuPoolStatus {
        breaker: Some(gpufleet::api::BreakerStatus {
            failures: failures
                .iter()
                .map(|(node, at)| BreakerFailure {
                    node: node.to_string(),
                    at: Time(*at),
                })
                .collect(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn events(plan: &PoolPlan, reason: EventReason) -> usize {
    plan.events.iter().filter(|e| e.reason == reason).count()
}

fn gate(plan: &gpufleet::planner::Plan) -> Option<Gate> {
    plan.status.gate.as_ref().map(|g| g.name)
}

#[test]
fn a_tripped_breaker_stays_tripped_when_its_failed_nodes_are_relabelled_retried_or_deleted() {
    // 24 nodes, limit 2: three failures trip it.
    let mut pool = breaker_pool();
    let mut nodes = nodes(6);
    for name in ["n-d005-n00", "n-d005-n01", "n-d005-n02"] {
        fail(&mut nodes, name, Some(t0()));
    }
    let first = reconcile(&mut pool, &nodes, t0());
    assert!(first.breaker.tripped);
    assert_eq!(events(&first, EventReason::CircuitBreakerTripped), 1);

    // Ten minutes later every trace is gone from the nodes: one relabelled
    // by hand, one retried (pending, a new since), one deleted.
    let relabelled = view_mut(&mut nodes, "n-d005-n00");
    relabelled.state = None;
    relabelled.labels.remove("gpufleet.io/state");
    let retried = view_mut(&mut nodes, "n-d005-n01");
    retried.state = Some(Pending);
    retried.since = (Some(at(10))).into();
    nodes.retain(|n| n.name != "n-d005-n02");
    let later = reconcile(&mut pool, &nodes, at(10));
    let breaker = later.status.breaker.as_ref().unwrap();
    assert!(breaker.tripped, "the breaker forgot: {breaker:?}");
    assert_eq!((breaker.failed_in_window, breaker.limit), (3, 2));
    assert_eq!(events(&later, EventReason::CircuitBreakerCleared), 0);
    assert_eq!(
        later.requeue_after,
        Some(Duration::from_secs(50 * 60)),
        "look again when the failures leave the window"
    );
    assert_eq!(ledger(&later).len(), 3);
    assert_eq!(ledger(&later), ledger(&first));

    // Deleting the batch that failed them changes nothing either: every
    // batch of the pool stays halted.
    let mut s = sim(pool.clone(), batch(), nodes.clone());
    s.now = at(10);
    let plan = s.step();
    assert_eq!(gate(&plan), Some(Gate::CircuitBreaker));
    assert_eq!(plan.changes().count(), 0, "nothing starts while tripped");
}

#[test]
fn a_batch_counts_the_failures_the_pool_remembers() {
    let mut nodes = nodes(6);
    fail(&mut nodes, "n-d005-n00", Some(t0()));
    // The ledger holds n-d005-n00's failure too: it counts once. Two
    // failures, limit 2: not tripped.
    let pool = with_status(
        &breaker_pool(),
        &remembered(&[("gone-a", t0()), ("n-d005-n00", t0())]),
    );
    let plan = plan(
        &pool,
        &batch(),
        &Snapshot {
            nodes: nodes.iter().cloned().map(Into::into).collect(),
            ..Default::default()
        },
        at(10),
    );
    assert_ne!(gate(&plan), Some(Gate::CircuitBreaker), "{:?}", plan.status);
    assert!(plan.changes().count() > 0);

    // A third remembered failure, of a node no label shows failed any more
    // (and no batch exists for), trips it for every batch.
    let nodes = self::nodes(6);
    let pool = with_status(
        &breaker_pool(),
        &remembered(&[("gone-a", t0()), ("gone-b", at(5)), ("n-d005-n00", t0())]),
    );
    let mut s = sim(pool, batch(), nodes);
    s.now = at(10);
    let plan = s.step();
    assert_eq!(gate(&plan), Some(Gate::CircuitBreaker), "{:?}", plan.status);
    assert_eq!(condition(&plan, "Stalled").reason, "CircuitBreakerTripped");
    assert_eq!(
        plan.changes().count(),
        0,
        "no new validations while tripped"
    );
    assert_eq!(plan.requeue_after, Some(Duration::from_secs(50 * 60)));
    // When the oldest two leave the window it clears and the batch starts.
    s.advance(50 * 60);
    let plan = s.step();
    assert_ne!(gate(&plan), Some(Gate::CircuitBreaker), "{:?}", plan.status);
    assert!(
        plan.actions.iter().any(
            |a| matches!(a, Action::Event(e) if e.reason == EventReason::CircuitBreakerCleared)
        )
    );
    assert_eq!(in_state(&s, Validating).len(), 4);
}

#[test]
fn remembered_failures_leave_with_their_window() {
    let mut pool = with_status(
        &breaker_pool(),
        &remembered(&[("gone-a", t0()), ("gone-b", at(10)), ("gone-c", at(20))]),
    );
    let nodes = nodes(6);
    let tripped = reconcile(&mut pool, &nodes, at(30));
    assert!(tripped.breaker.tripped);
    assert_eq!(tripped.status.breaker.as_ref().unwrap().failed_in_window, 3);
    assert_eq!(
        tripped.requeue_after,
        Some(Duration::from_secs(30 * 60)),
        "gone-a leaves the window at 60 minutes"
    );
    // At 60 minutes gone-a is out: two failures, limit 2, cleared.
    let cleared = reconcile(&mut pool, &nodes, at(60));
    assert!(!cleared.breaker.tripped);
    assert_eq!(events(&cleared, EventReason::CircuitBreakerCleared), 1);
    assert_eq!(cleared.requeue_after, None);
    assert_eq!(
        ledger(&cleared),
        [
            ("gone-b".to_string(), at(10)),
            ("gone-c".to_string(), at(20))
        ]
    );
    let breaker = cleared.status.breaker.as_ref().unwrap();
    assert_eq!(
        (breaker.failed_in_window, breaker.tripped_at.clone()),
        (2, None)
    );
    // At 80 minutes the ledger is empty, and says so: a merge patch of the
    // status replaces the list only if the empty list is written.
    let empty = reconcile(&mut pool, &nodes, at(80));
    assert!(ledger(&empty).is_empty());
    let json = serde_json::to_value(&empty.status).unwrap();
    assert_eq!(json["breaker"]["failures"], serde_json::json!([]));
}

#[test]
fn the_ledger_stays_bounded_and_keeps_the_most_recent_failures() {
    // 4,400 nodes failed, two a second, all within the window.
    let mut pool = breaker_pool();
    let mut nodes = nodes(1100);
    for (i, n) in nodes.iter_mut().enumerate() {
        n.state = Some(Failed);
        n.since = (Some(t0() + SignedDuration::from_secs(i as i64 / 2))).into();
    }
    let names: Vec<String> = nodes.iter().map(|n| n.name.to_string()).collect();
    let plan = reconcile(&mut pool, &nodes, at(40));
    let kept = ledger(&plan);
    assert_eq!(kept.len(), gpufleet::planner::LEDGER_MAX);
    assert_eq!(kept.len(), 4096);
    // The oldest 304 went, the newest stayed, oldest first.
    assert_eq!(kept.first().unwrap().0, names[304]);
    assert_eq!(kept.last().unwrap().0, names[4399]);
    let breaker = plan.status.breaker.as_ref().unwrap();
    assert_eq!((breaker.failed_in_window, breaker.limit), (4096, 440));
    assert!(breaker.tripped);

    // Every node is retried; 200 of them fail again. Still 4,096: the
    // newest, all remembered though no other node is failed any more.
    for (i, n) in nodes.iter_mut().enumerate() {
        n.state = Some(if i < 200 { Failed } else { Pending });
        n.since = (Some(if i < 200 { at(45) } else { at(41) })).into();
    }
    let plan = reconcile(&mut pool, &nodes, at(45));
    let kept = ledger(&plan);
    assert_eq!(kept.len(), 4096);
    assert_eq!(kept.iter().filter(|(_, t)| *t == at(45)).count(), 200);
    assert_eq!(kept.last().unwrap().0, names[199]);
    assert!(plan.breaker.tripped);
}

#[test]
fn a_failure_without_since_counts_from_when_it_was_first_seen() {
    let mut pool = breaker_pool();
    let mut nodes = nodes(6);
    fail(&mut nodes, "n-d005-n00", None);
    let first = reconcile(&mut pool, &nodes, at(1));
    assert_eq!(ledger(&first), [("n-d005-n00".to_string(), at(1))]);
    // Still failed ten minutes later: the same failure, counted once.
    let later = reconcile(&mut pool, &nodes, at(11));
    assert_eq!(ledger(&later), ledger(&first));
    assert_eq!(later.status.breaker.as_ref().unwrap().failed_in_window, 1);
    // Relabelled: still remembered for its window.
    view_mut(&mut nodes, "n-d005-n00").state = None;
    let relabelled = reconcile(&mut pool, &nodes, at(30));
    assert_eq!(ledger(&relabelled), ledger(&first));
    let gone = reconcile(&mut pool, &nodes, at(61));
    assert!(ledger(&gone).is_empty());
}

#[test]
fn a_failure_time_is_kept_to_the_second_so_it_matches_the_node_again() {
    // `since` carries a fraction; the stored status keeps whole seconds.
    let mut pool = breaker_pool();
    let mut nodes = nodes(6);
    fail(
        &mut nodes,
        "n-d005-n00",
        Some(t0() + SignedDuration::from_millis(1500)),
    );
    let first = reconcile(&mut pool, &nodes, at(1));
    let second = plan_pool(&pool, &nodes, at(2));
    assert_eq!(second.status.breaker.as_ref().unwrap().failed_in_window, 1);
    assert_eq!(
        Some(&second.status),
        pool.status.as_ref(),
        "nothing changed: nothing to write"
    );
    assert_eq!(
        ledger(&first),
        [("n-d005-n00".into(), t0() + SignedDuration::from_secs(1))]
    );
}

#[test]
fn removing_the_breaker_forgets_its_failures() {
    let mut pool = breaker_pool();
    let mut nodes = nodes(6);
    for name in ["n-d005-n00", "n-d005-n01", "n-d005-n02"] {
        fail(&mut nodes, name, Some(t0()));
    }
    assert!(reconcile(&mut pool, &nodes, t0()).breaker.tripped);
    pool.spec.circuit_breaker = None;
    let plan = reconcile(&mut pool, &nodes, at(1));
    assert_eq!(plan.status.breaker, None);
    // Put back after the nodes were retried: nothing is remembered.
    pool.spec = breaker_pool().spec;
    for n in &mut nodes {
        n.state = Some(Pending);
    }
    let plan = reconcile(&mut pool, &nodes, at(2));
    assert!(!plan.breaker.tripped);
    assert!(ledger(&plan).is_empty());
}
