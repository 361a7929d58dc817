//! No value in the cluster panics the planner: a node's own kubelet may
//! write its annotations, and a pool's window only has to match the CRD's
//! pattern. A panic in a reconcile took down the whole operator.

use std::sync::Arc;

use gpufleet::keys;
use gpufleet::planner::{NodeState, ProbePhase, ProbeView, plan, plan_pool, probe_pod_name};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use proptest::prelude::*;

use crate::fixtures::{batch, nodes, t0, with_pool};

/// A time anywhere jiff can hold, weighted to the edges.
fn any_time() -> impl Strategy<Value = Option<Timestamp>> {
    let edge = prop_oneof![
        Just(Timestamp::MAX),
        Just(Timestamp::MIN),
        Just("9999-12-30T21:59:00Z".parse::<Timestamp>().unwrap()),
        Just(t0()),
    ];
    let anywhere = (Timestamp::MIN.as_second()..=Timestamp::MAX.as_second())
        .prop_map(|s| Timestamp::from_second(s).unwrap());
    prop::option::of(prop_oneof![2 => edge, 1 => anywhere])
}

/// A window the CRD's pattern accepts, up to absurd sizes.
fn any_window() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("200000000h".to_string()),
        Just("99999999999999999999999h".to_string()),
        "[0-9]{1,25}(\\.[0-9]{1,3})?(ms|s|m|h)",
    ]
}

fn state() -> impl Strategy<Value = Option<NodeState>> {
    prop::option::of(prop_oneof![
        Just(NodeState::Validating),
        Just(NodeState::Soaking),
        Just(NodeState::Held),
        Just(NodeState::Failed),
        Just(NodeState::Ready),
    ])
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn no_time_or_window_panics_the_planner(
        times in prop::collection::vec((any_time(), any_time(), any_time(), any_time(), any_time(), state()), 4),
        window in any_window(),
        now in any_time(),
        soak in 0u32..=u32::MAX,
        timeout in 0u32..=u32::MAX,
    ) {
        let now = now.unwrap_or(t0());
        let mut pool = with_pool(&format!(
            "spec: {{circuitBreaker: {{maxFailedPercent: 10, window: \"{window}\"}}, healthChecks: {{soakSeconds: {soak}, conditionTimeoutSeconds: {timeout}, startupTimeoutSeconds: {timeout}}}}}"
        ));
        pool.spec.health_checks.probe.as_mut().unwrap().timeout_seconds = timeout;
        let batch = batch();
        let mut snapshot = gpufleet::planner::Snapshot::default();
        for (n, (mut node, (since, started, created, changed, probe_created, state))) in
            nodes(1).into_iter().zip(times).enumerate()
        {
            node.since = (since).into();
            node.started = (started).into();
            node.created = (created).into();
            node.admitted = (changed).into();
            if let Some(state) = state {
                node.state = Some(state);
                node.labels.insert(keys::STATE.into(), state.as_str().into());
                node.recorded_state = Some(state);
                node.batch = batch.metadata.name.clone().map(Into::into);
                node.batch_uid = batch.metadata.uid.clone().map(Into::into);
            }
            if let Some(changed) = changed {
                node.conditions.insert("Ready".into(), if n % 2 == 0 { "False" } else { "True" }.into());
                node.condition_since.insert("Ready".into(), changed);
            }
            snapshot.probes.push(ProbeView {
                name: probe_pod_name(&node.name, 1),
                node: node.name.to_string(),
                attempt: 1,
                phase: if n % 2 == 0 { ProbePhase::Running } else { ProbePhase::Pending },
                batch_uid: batch.metadata.uid.clone(),
                containers: 1,
                init_containers: 0,
                terminated: Vec::new(),
                message: None,
                created: probe_created,
                run: started,
                started_at: if n % 2 == 0 { probe_created } else { None },
                finished_at: None,
                not_running: None,
                evicted: n % 5 == 0,
                deleting: false,
                verdict: gpufleet::verdict::Read::Absent,
                group: None,
            });
            snapshot.nodes.push(Arc::new(node));
        }
        let planned = plan(&pool, &batch, &snapshot, now);
        if let Some(after) = planned.requeue_after {
            // A requeue must fit a timer: at most a day.
            prop_assert!(after <= std::time::Duration::from_secs(86_400), "{after:?}");
        }
        let pool_plan = plan_pool(&pool, &snapshot.nodes, now);
        if let Some(after) = pool_plan.requeue_after {
            prop_assert!(after <= std::time::Duration::from_secs(86_400), "{after:?}");
        }
        let _ = SignedDuration::ZERO;
    }
}
