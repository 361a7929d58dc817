//! Small YAML fixtures a reader can follow, and builders on top of them.

use std::sync::Arc;

use gpufleet::api::{GpuPool, RolloutBatch};
use gpufleet::planner::sim::{Outcome, Sim, fleet};
use gpufleet::planner::{NodeState, NodeView, Plan, Snapshot};
use k8s_openapi::jiff::Timestamp;

/// Domains of 4 nodes (small, so tables stay readable), 3 healthy needed,
/// a probe with one retry, a 60 s soak, and a breaker.
pub const POOL: &str = r#"
apiVersion: gpufleet.io/v1alpha1
kind: GpuPool
metadata: {name: east, generation: 1}
spec:
  nodeSelector: {matchLabels: {gpufleet.io/pool: east}}
  hardware: {gpuProduct: [NVIDIA-GB200, NVIDIA-GB300], gpusPerNode: 4, minDriverVersion: "570.133.20"}
  topology: {domainLabel: nvidia.com/gpu.clique, nodesPerDomain: 4, minHealthyNodesPerDomain: 3}
  onboarding: {taint: {key: gpufleet.io/onboarding, effect: NoSchedule}}
  healthChecks:
    unhealthyConditions: [{type: GpuXidError}, {type: NVLinkDown}]
    probe:
      timeoutSeconds: 600
      retries: 1
      template: {spec: {containers: [{name: burn-in, image: busybox}]}}
    soakSeconds: 60
"#;

/// Three waves: one domain, half, all; one failure allowed per wave.
pub const BATCH: &str = r#"
apiVersion: gpufleet.io/v1alpha1
kind: RolloutBatch
metadata: {name: row1, generation: 1, uid: 6f1c2a7e-0000-4000-8000-000000000001}
spec:
  poolRef: east
  nodeSelector: {matchLabels: {gpufleet.io/batch: row1}}
  waves: [{nodes: 4}, {percent: 50}, {percent: 100}]
  maxConcurrent: 8
  maxFailuresPerWave: 1
"#;

/// The fixture batch's UID: its probe pods carry it.
pub const BATCH_UID: &str = "6f1c2a7e-0000-4000-8000-000000000001";

pub fn pool() -> GpuPool {
    serde_norway::from_str(POOL).expect("pool fixture parses")
}

pub fn batch() -> RolloutBatch {
    serde_norway::from_str(BATCH).expect("batch fixture parses")
}

/// Parses a YAML fragment and merges it over the fixture's spec.
pub fn with_pool(yaml: &str) -> GpuPool {
    merge(POOL, yaml)
}

pub fn with_batch(yaml: &str) -> RolloutBatch {
    merge(BATCH, yaml)
}

fn merge<T: serde::de::DeserializeOwned>(base: &str, overlay: &str) -> T {
    fn deep(into: &mut serde_json::Value, from: serde_json::Value) {
        match (into, from) {
            (serde_json::Value::Object(a), serde_json::Value::Object(b)) => {
                for (k, v) in b {
                    if v.is_null() {
                        a.remove(&k);
                    } else {
                        deep(a.entry(k).or_insert(serde_json::Value::Null), v);
                    }
                }
            }
            (slot, v) => *slot = v,
        }
    }
    let mut base: serde_json::Value = serde_norway::from_str(base).expect("fixture parses");
    let overlay: serde_json::Value = serde_norway::from_str(overlay).expect("overlay parses");
    deep(&mut base, overlay);
    serde_json::from_value(base).expect("merged fixture deserializes")
}

pub fn t0() -> Timestamp {
    "2026-11-27T00:00:00Z".parse().unwrap()
}

/// `domains` domains of 4 nodes in pool `east`, batch `row1`: nodes
/// `n-d000-n00` .. and cliques `n-clique-000` ...
pub fn nodes(domains: usize) -> Vec<NodeView> {
    fleet("n", domains, 4, "east", "row1")
}

/// A simulation where every probe passes unless `outcome` says otherwise.
pub fn sim(
    pool: GpuPool,
    batch: RolloutBatch,
    nodes: impl IntoIterator<Item = impl Into<Arc<NodeView>>>,
) -> Sim {
    Sim::new(
        pool,
        batch,
        Snapshot {
            nodes: nodes.into_iter().map(Into::into).collect(),
            ..Default::default()
        },
        t0(),
        |_, _| Outcome::Pass,
    )
}

pub fn sim_with(
    pool: GpuPool,
    batch: RolloutBatch,
    nodes: impl IntoIterator<Item = impl Into<Arc<NodeView>>>,
    outcome: impl Fn(&str, u32) -> Outcome + 'static,
) -> Sim {
    Sim::new(
        pool,
        batch,
        Snapshot {
            nodes: nodes.into_iter().map(Into::into).collect(),
            ..Default::default()
        },
        t0(),
        outcome,
    )
}

/// A node of a snapshot, to change (copied on write, as the operator's
/// cache replaces a node's view when it changes).
pub fn node_mut<'a>(nodes: &'a mut [Arc<NodeView>], name: &str) -> &'a mut NodeView {
    nodes
        .iter_mut()
        .find(|n| n.name == name)
        .map(Arc::make_mut)
        .unwrap_or_else(|| panic!("no node {name}"))
}

/// A node of a list not yet in a snapshot, to change.
pub fn view_mut<'a>(nodes: &'a mut [NodeView], name: &str) -> &'a mut NodeView {
    nodes
        .iter_mut()
        .find(|n| n.name == name)
        .unwrap_or_else(|| panic!("no node {name}"))
}

/// Node names in a state, sorted.
pub fn in_state(sim: &Sim, state: NodeState) -> Vec<String> {
    let mut names: Vec<String> = sim
        .snapshot
        .nodes
        .iter()
        .filter(|n| n.state() == state)
        .map(|n| n.name.to_string())
        .collect();
    names.sort();
    names
}

pub fn reason_of(sim: &Sim, node: &str) -> String {
    sim.snapshot
        .nodes
        .iter()
        .find(|n| n.name == node)
        .and_then(|n| n.reason.as_deref().map(String::from))
        .unwrap_or_default()
}

pub fn condition<'a>(
    plan: &'a Plan,
    type_: &str,
) -> &'a k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition {
    plan.status
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .unwrap_or_else(|| panic!("no {type_} condition in {:?}", plan.status.conditions))
}
