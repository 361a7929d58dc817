//! `RolloutBatch`: a delivery of new nodes, brought online in waves.

// Each `printcolumn(...)` repeats `type_`, which clippy reads as a duplicated attribute.
#![allow(clippy::duplicated_attributes)]

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector, Time};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use super::common::{NodeCounts, conditions_schema, count_or_percent_schema};
use crate::vocabulary::Gate;

/// A delivery of new nodes of one pool, brought online in waves. Each wave
/// must finish (every node admitted, failed or held) within its failure budget
/// before the next starts; `approvedWaves` gates promotion from Git.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "gpufleet.io",
    version = "v1alpha1",
    kind = "RolloutBatch",
    plural = "rolloutbatches",
    shortname = "rbatch",
    category = "gpufleet",
    status = "RolloutBatchStatus",
    derive = "PartialEq",
    doc = "RolloutBatch brings a delivery of new nodes of one GpuPool online in staged waves, proving each node healthy before admitting it.",
    printcolumn(name = "Pool", type_ = "string", json_path = ".spec.poolRef"),
    printcolumn(name = "Wave", type_ = "string", json_path = ".status.waveProgress"),
    printcolumn(
        name = "Admitted",
        type_ = "integer",
        json_path = ".status.nodes.ready"
    ),
    printcolumn(name = "Failed", type_ = "integer", json_path = ".status.nodes.failed"),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(
        name = "Reason",
        type_ = "string",
        priority = 1,
        json_path = ".status.conditions[?(@.type==\"Ready\")].reason"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct RolloutBatchSpec {
    /// The name of the GpuPool these nodes join. Immutable: create a new batch
    /// to move nodes to another pool.
    #[x_kube(validation = Rule::new("self == oldSelf").message("poolRef is immutable"))]
    #[schemars(length(min = 1, max = 253))]
    pub pool_ref: String,
    /// Selects the nodes of this delivery by label; a node must match both
    /// this and the pool's selector. A node matched by two batches is never
    /// touched; gpufleet reports it instead.
    pub node_selector: LabelSelector,
    /// Cumulative wave targets, each `nodes: N` or `percent: P` of the batch's
    /// nodes, rounded up to whole domains; the last wave always covers every
    /// node. `nodes` waves come first, and targets of each kind increase.
    /// Example: `[{nodes: 18}, {percent: 25}, {percent: 100}]`.
    #[schemars(length(min = 1, max = 32))]
    #[x_kube(
        validation = Rule::new("self.filter(w, has(w.nodes)).map(w, w.nodes).isSorted() && self.filter(w, has(w.nodes)).all(w, self.filter(v, has(v.nodes) && v.nodes == w.nodes).size() == 1)").message("waves: nodes targets must increase from one wave to the next"),
        validation = Rule::new("self.filter(w, has(w.percent)).map(w, w.percent).isSorted() && self.filter(w, has(w.percent)).all(w, self.filter(v, has(v.percent) && v.percent == w.percent).size() == 1)").message("waves: percent targets must increase from one wave to the next"),
        validation = Rule::new("self.map(w, has(w.percent) ? 1 : 0).isSorted()").message("waves: a nodes target may not follow a percent target"),
    )]
    pub waves: Vec<Wave>,
    /// Nodes in validation at once while this batch starts nodes, counting
    /// every batch of the pool. The pool's `maxConcurrent`, when set, applies
    /// as well; the lower wins.
    #[serde(default = "default_max_concurrent")]
    #[schemars(range(min = 1, max = 100000))]
    pub max_concurrent: u32,
    /// Failures a wave may have before the rollout halts: a count such as `1`
    /// or a percent of the wave's nodes such as `"5%"`. 0 (the default) halts
    /// on the first failure.
    #[serde(default = "default_max_failures")]
    #[schemars(schema_with = "count_or_percent_schema")]
    pub max_failures_per_wave: Option<IntOrString>,
    /// Waves allowed to start; later waves wait. Raise it (in Git) to promote.
    /// Unset: every wave may start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 32))]
    pub approved_waves: Option<u32>,
    /// Start nothing new; probes already running finish.
    #[serde(default)]
    pub paused: bool,
    /// When this batch's nodes may start their checks, besides the pool's
    /// windows (both must be open): a crew's shifts for this delivery, say.
    /// Empty: whenever the pool allows.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub windows: Vec<super::Window>,
}

fn default_max_concurrent() -> u32 {
    36
}

fn default_max_failures() -> Option<IntOrString> {
    Some(IntOrString::Int(0))
}

/// One cumulative wave target: set exactly one of `nodes` or `percent`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.nodes) != has(self.percent)").message("a wave sets exactly one of nodes or percent"))]
pub struct Wave {
    /// Nodes admitted by the end of this wave, counted from the first wave.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000000))]
    pub nodes: Option<u32>,
    /// Percent (1-100) of the batch's nodes admitted by the end of this wave.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100))]
    pub percent: Option<u32>,
}

/// What gpufleet observed of the batch.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct RolloutBatchStatus {
    /// The `metadata.generation` this status was computed from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// The wave in progress, from 1; 0 before the first starts.
    #[serde(default)]
    pub current_wave: u32,
    /// How many waves the batch has.
    #[serde(default)]
    pub total_waves: u32,
    /// `current/total`, for `kubectl get`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wave_progress: Option<String>,
    /// The batch's nodes by gpufleet state.
    #[serde(default)]
    pub nodes: NodeCounts,
    /// One summary per wave.
    #[serde(default)]
    #[schemars(length(max = 32))]
    pub waves: Vec<WaveStatus>,
    /// Domains under a rack test now (`healthChecks.domainTest`), at most
    /// 64: where each test stands. Decided domains show in their nodes.
    // Always serialized, even empty: the status is written as a merge
    // patch, which keeps a list it omits.
    #[serde(default)]
    #[schemars(length(max = 64))]
    pub rack_tests: Vec<RackTestStatus>,
    /// What the rollout waits on now, as gpufleet decided it: one word
    /// (`name`), the wave it concerns and a sentence. Tools read this rather
    /// than the conditions' reasons.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gate: Option<GateStatus>,
    /// Energy spent in checks, and GPUs brought online.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub energy: Option<EnergyStatus>,
    /// `Ready` (every wave done), `Reconciling` (work in progress) and
    /// `Stalled` (waiting on a person), keyed by type.
    #[serde(default)]
    #[schemars(schema_with = "conditions_schema")]
    pub conditions: Vec<Condition>,
}

/// What a rollout waits on.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct GateStatus {
    /// Probes, Soak, Approval, Paused, FailureBudget, CircuitBreaker,
    /// NoNodes, Complete or InvalidSpec.
    pub name: Gate,
    /// The wave it concerns, from 1, where one does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wave: Option<u32>,
    /// What it means, in words a person can act on.
    #[serde(default)]
    pub message: String,
}

/// One domain's rack test in progress.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct RackTestStatus {
    /// The domain (its domain label's value).
    #[schemars(length(max = 316))]
    pub domain: String,
    /// The round: 0 tests the whole domain; later rounds look for the
    /// faulty trays after it failed.
    #[serde(default)]
    pub round: u32,
    /// Trays under test now; 0 while the round waits for room under the
    /// concurrency caps.
    #[serde(default)]
    pub trays: u32,
    /// The lowest bus bandwidth, in GB/s, its groups measured so far (from
    /// the rack test pods' verdicts, `rackTest.busBandwidthGBps`), if any
    /// said.
    #[serde(
        default,
        rename = "busBandwidthGBps",
        skip_serializing_if = "Option::is_none"
    )]
    pub bus_bandwidth_gbps: Option<u32>,
}

/// Progress of one wave.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct WaveStatus {
    /// The wave's number, from 1.
    pub index: u32,
    /// Nodes admitted by the end of this wave (cumulative, in whole domains).
    #[serde(default)]
    pub target_nodes: u32,
    /// Nodes of this wave admitted.
    #[serde(default)]
    pub admitted: u32,
    /// Nodes of this wave failed.
    #[serde(default)]
    pub failed: u32,
    /// Nodes of this wave held back with their incomplete domain.
    #[serde(default)]
    pub held: u32,
    /// Nodes of this wave still validating or soaking.
    #[serde(default)]
    pub in_progress: u32,
    /// When the wave started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<Time>,
    /// When every node of the wave reached a verdict.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completed_at: Option<Time>,
    /// Energy the wave's nodes drew under test so far, in watt-hours (at
    /// the pool's `spec.power` node figures, else 7,300 W a GB200 tray and
    /// 7,800 W any other).
    #[serde(default)]
    pub energy_watt_hours: u64,
}

/// What the rollout cost in energy and brought online.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct EnergyStatus {
    /// Energy the batch's nodes drew under test so far (all waves), in
    /// watt-hours.
    #[serde(default)]
    pub watt_hours: u64,
    /// Energy and GPU-hours are counted up to this time; unset while
    /// nothing is under test and no admitted GPU counts (each plan adds the
    /// load under test, and the GPUs online, times the time since).
    // Written as null when unset, so that the merge patch removes it.
    #[serde(default)]
    pub accounted_at: Option<Time>,
    /// GPUs of the batch admitted (capacity brought online).
    #[serde(default)]
    pub gpus_online: u32,
    /// GPU-hours of the batch's admitted capacity while its rollout ran:
    /// each GPU counts from its node's admission until every node of the
    /// batch is decided. What a staged rollout gives before it ends.
    #[serde(default)]
    pub gpu_hours: u64,
}
