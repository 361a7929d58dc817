//! `GpuPool`: what a healthy node of a pool looks like, and how to prove it.

// Each `printcolumn(...)` repeats `type_`, which clippy reads as a duplicated attribute.
#![allow(clippy::duplicated_attributes)]

use k8s_openapi::api::core::v1::PodTemplateSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::common::{
    ConditionMatch, DOTTED_VERSION, DURATION, DomainCounts, GpuCounts, NodeCounts, TaintEffect,
    TaintSpec, VERSION_STRING, conditions_schema, pod_template_schema,
};

/// A pool of GPU nodes that share one definition of healthy: the hardware they
/// must report, how they group into NVLink domains, the taint that holds them
/// back until admitted, the checks that prove them, and the circuit breaker
/// that halts every rollout of the pool when too many fail.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "gpufleet.io",
    version = "v1alpha1",
    kind = "GpuPool",
    plural = "gpupools",
    shortname = "gpool",
    category = "gpufleet",
    status = "GpuPoolStatus",
    derive = "PartialEq",
    doc = "GpuPool says what a healthy node of a pool looks like and how to prove it. RolloutBatches bring nodes of the pool online in waves.",
    printcolumn(
        name = "GPUs-Ready",
        type_ = "integer",
        json_path = ".status.gpus.ready"
    ),
    printcolumn(name = "GPUs", type_ = "integer", json_path = ".status.gpus.total"),
    printcolumn(
        name = "Domains-Ready",
        type_ = "integer",
        json_path = ".status.domains.complete"
    ),
    printcolumn(
        name = "Domains",
        type_ = "integer",
        json_path = ".status.domains.total"
    ),
    printcolumn(name = "Failed", type_ = "integer", json_path = ".status.nodes.failed"),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct GpuPoolSpec {
    /// Selects the nodes of this pool by label. A node selected by two pools is
    /// never touched; gpufleet reports it instead.
    pub node_selector: LabelSelector,
    /// The hardware every node of the pool must report.
    pub hardware: Hardware,
    /// How nodes group into NVLink domains (racks), which are admitted whole.
    #[serde(default)]
    pub topology: Topology,
    /// The taint that keeps workloads off a node until gpufleet admits it.
    #[serde(default)]
    pub onboarding: Onboarding,
    /// The checks a node must pass before it is admitted.
    #[serde(default)]
    pub health_checks: HealthChecks,
    /// Halts every rollout of the pool when too many of its nodes fail.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub circuit_breaker: Option<CircuitBreaker>,
    /// Nodes of the pool in validation at once, across all its batches: the
    /// site's limit of power, cooling and test infrastructure. Each batch's
    /// own `maxConcurrent` applies as well; the lower wins. Unset: only the
    /// batches' limits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000000))]
    pub max_concurrent: Option<u32>,
    /// The power the pool's nodes draw while gpufleet tests them, and what
    /// the site can give: a node starts its checks only within the budget
    /// and the ramp, counted across all the pool's batches (trays under a
    /// rack test count too). Unset: no power limit (only `maxConcurrent`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub power: Option<Power>,
    /// When new nodes may start their checks (maintenance windows): outside
    /// every window nothing new starts, and what runs finishes. Empty: any
    /// time.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub windows: Vec<Window>,
}

/// A day of the week.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum Weekday {
    Mon,
    Tue,
    Wed,
    Thu,
    Fri,
    Sat,
    Sun,
}

/// A weekly window in which new nodes may start validation.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("duration(self.duration) > duration('0s') && duration(self.duration) <= duration('168h')").message("duration must be more than 0 and at most 168h (a week)").field_path(".duration"))]
pub struct Window {
    /// The days it opens, in its time zone.
    #[schemars(length(min = 1, max = 7))]
    pub days: Vec<Weekday>,
    /// When it opens, local time, `HH:MM` (24-hour).
    #[schemars(regex(pattern = r"^([01][0-9]|2[0-3]):[0-5][0-9]$"))]
    pub start: String,
    /// How long it stays open, such as `8h` or `90m` (at most 168h).
    #[schemars(regex(pattern = DURATION), length(max = 32))]
    pub duration: String,
    /// An IANA time zone, such as `America/Chicago` (default `UTC`); local
    /// times follow its daylight saving rules.
    #[serde(default = "default_time_zone")]
    #[schemars(length(min = 1, max = 64))]
    pub time_zone: String,
}

fn default_time_zone() -> String {
    "UTC".into()
}

/// Watts a GB200 tray draws under a burn-in: an NVL72 rack draws about 120
/// to 132 kW at load, shared by its 18 compute trays (switch trays and
/// losses included).
pub const GB200_NODE_WATTS: u32 = 7_300;
/// Watts a GB300 tray draws under a burn-in: about 120 to 140 kW a rack.
pub const GB300_NODE_WATTS: u32 = 7_800;

/// A pool's power budget for nodes under test.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct Power {
    /// Kilowatts the pool's nodes under test may draw at once, across all
    /// its batches (1 kW to 2 GW): nodes validating (probes and rack
    /// tests), and soaking when `soakAtLoad`. Lowering it never stops a
    /// running check; it holds new starts until the load is under it.
    #[schemars(range(min = 1, max = 2000000))]
    pub budget_kilowatts: u32,
    /// Kilowatts a minute by which the load under test may grow (generators
    /// and feeds follow a ramp): the nodes started in any minute draw at most
    /// this much. Unset: no ramp limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 2000000))]
    pub ramp_kilowatts_per_minute: Option<u32>,
    /// Watts one node draws under test, by its `nvidia.com/gpu.product`
    /// label. Products not listed draw `nodeWatts`.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    #[schemars(extend(
        "maxProperties" = 32,
        "additionalProperties" = {"type": "integer", "format": "uint32", "minimum": 1, "maximum": 100000}
    ))]
    pub product_watts: std::collections::BTreeMap<String, u32>,
    /// Watts one node of a product not in `productWatts` draws under test.
    /// Unset: 7,300 for `NVIDIA-GB200`, 7,800 for `NVIDIA-GB300` and any
    /// other product (an NVL72 rack of 18 trays draws 120 to 140 kW).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100000))]
    pub node_watts: Option<u32>,
    /// The soak runs at load (a burn-in through the soak): soaking nodes
    /// count against the budget too.
    #[serde(default)]
    pub soak_at_load: bool,
}

/// Watts a node of `product` draws under test, by the pool's `power` if
/// set, else the defaults.
pub fn node_watts(power: Option<&Power>, product: Option<&str>) -> u32 {
    power.map_or_else(|| default_node_watts(product), |p| p.node_watts(product))
}

/// Watts a node of `product` draws under test when the pool does not say.
fn default_node_watts(product: Option<&str>) -> u32 {
    match product {
        Some("NVIDIA-GB200") => GB200_NODE_WATTS,
        _ => GB300_NODE_WATTS,
    }
}

impl Power {
    /// Watts a node of `product` draws under test.
    pub fn node_watts(&self, product: Option<&str>) -> u32 {
        if let Some(w) = product.and_then(|p| self.product_watts.get(p)) {
            return *w;
        }
        self.node_watts
            .unwrap_or_else(|| default_node_watts(product))
    }
}

/// The hardware facts a node must report, read from the labels of GPU Feature
/// Discovery and the device plugin's allocatable resources.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct Hardware {
    /// Accepted values of the node label `nvidia.com/gpu.product`, for example
    /// `NVIDIA-GB200` and `NVIDIA-GB300`.
    #[schemars(length(min = 1, max = 32))]
    pub gpu_product: Vec<String>,
    /// GPUs each node must have: both the label `nvidia.com/gpu.count` and the
    /// allocatable resource `nvidia.com/gpu` must equal it (4 on a GB200 tray).
    #[schemars(range(min = 1, max = 1024))]
    pub gpus_per_node: u32,
    /// The lowest accepted driver, from the label
    /// `nvidia.com/cuda.driver-version.full`, compared as a dotted version
    /// (570.133.20 is newer than 570.86.15). Unset: any driver.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DOTTED_VERSION))]
    pub min_driver_version: Option<String>,
}

/// How nodes group into NVLink domains. A domain (an NVL72 rack: 18 trays of
/// 4 GPUs) is only useful whole, so waves never split one and its nodes are
/// admitted together.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.minHealthyNodesPerDomain) || self.minHealthyNodesPerDomain <= self.nodesPerDomain").message("minHealthyNodesPerDomain must not exceed nodesPerDomain").field_path(".minHealthyNodesPerDomain"))]
pub struct Topology {
    /// The node label whose value names the domain; nodes sharing a value form
    /// one domain. Empty: every node is a domain of its own.
    #[serde(default = "default_domain_label")]
    #[schemars(length(max = 316))]
    pub domain_label: String,
    /// Nodes in a complete domain (18 for GB200/GB300 NVL72).
    #[serde(default = "default_nodes_per_domain")]
    #[schemars(range(min = 1, max = 1024))]
    pub nodes_per_domain: u32,
    /// Admit a domain once at least this many of its nodes passed; the healthy
    /// nodes of a domain below it are `held`. Unset: `nodesPerDomain`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1024))]
    pub min_healthy_nodes_per_domain: Option<u32>,
}

impl Default for Topology {
    fn default() -> Self {
        Topology {
            domain_label: default_domain_label(),
            nodes_per_domain: default_nodes_per_domain(),
            min_healthy_nodes_per_domain: None,
        }
    }
}

fn default_domain_label() -> String {
    "nvidia.com/gpu.clique".into()
}

fn default_nodes_per_domain() -> u32 {
    18
}

/// How gpufleet holds a node back until it is admitted.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct Onboarding {
    /// The taint held on a node until it is admitted. gpufleet adds it when a
    /// node enters validation and removes only this taint, only when admitting.
    #[serde(default = "default_onboarding_taint")]
    pub taint: TaintSpec,
}

impl Default for Onboarding {
    fn default() -> Self {
        Onboarding {
            taint: default_onboarding_taint(),
        }
    }
}

fn default_onboarding_taint() -> TaintSpec {
    TaintSpec {
        key: "gpufleet.io/onboarding".into(),
        value: None,
        effect: TaintEffect::NoSchedule,
    }
}

/// The checks a node must pass: static facts (Ready, hardware, conditions),
/// then an optional burn-in probe, then a soak.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.probe) || (!has(self.fabric) && !has(self.firmware))").message("the fabric and firmware gates read the probe's verdict: set probe (for example one that runs `gpufleet probe`)").field_path(".probe"))]
pub struct HealthChecks {
    /// Node conditions that fail the node when any of them matches, such as
    /// `{type: GpuXidError, status: "True"}`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub unhealthy_conditions: Vec<ConditionMatch>,
    /// An active burn-in: one pod per node, bound to it. Unset: nodes go
    /// straight from the static checks to soaking.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probe: Option<Probe>,
    /// How long a node must stay healthy after its probe passed before it is
    /// admitted. 0 (the default) admits at once.
    #[serde(default)]
    #[schemars(range(min = 0, max = 604800))]
    pub soak_seconds: u32,
    /// How long a node that is not Ready yet, or not yet labelled by GPU
    /// Feature Discovery and the device plugin, may take from registration
    /// before its wave fails it. Until then it waits in `pending` with a
    /// reason. Default 600.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 86400))]
    pub startup_timeout_seconds: Option<u32>,
    /// Seconds a condition must stay bad (Ready not True, or an
    /// `unhealthyConditions` entry matching) before it fails a node that is
    /// validating, soaking or held, counted from the condition's
    /// lastTransitionTime, as Cluster API's MachineHealthCheck does; a
    /// condition's own `timeoutSeconds` overrides it. The node is not
    /// admitted meanwhile, and a soak counts only time the node spent
    /// healthy: a condition that recovers restarts it. Default 60; 0 fails
    /// at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 86400))]
    pub condition_timeout_seconds: Option<u32>,
    /// Short-circuit: when more than this percentage of the nodes a wave
    /// has started fail in one pass for the very same reason,
    /// and at least `shortCircuitMinNodes` of them, gpufleet does not fail
    /// them (no failure budget or circuit breaker spent): it suspects a
    /// configuration error, such as a typo in the probe, sends them back to
    /// pending and halts the batch (Stalled, SuspectedMisconfiguration)
    /// until the pool changes. Default 50; 100 turns it off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 100))]
    pub short_circuit_percent: Option<u32>,
    /// The fewest same-reason failures that can short-circuit. Default 3.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100000))]
    pub short_circuit_min_nodes: Option<u32>,
    /// The fabric-completeness gate, read from the probe's verdict (the
    /// JSON `gpufleet probe` leaves in its termination message): every GPU
    /// of a node registered with its NVLink fabric (state `Completed`,
    /// status `Success`, a clique other than 0, a cluster UUID other than
    /// zeros, health `Healthy`, no incorrect configuration, links up), all
    /// of a node's GPUs in one clique that agrees with the node's clique
    /// label, and the trays of one domain in one clique. A node whose probe
    /// wrote no verdict fails. Unset: no fabric gate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fabric: Option<FabricGate>,
    /// The rack test: once every tray of a domain has passed its own checks
    /// (and the domain has enough healthy trays), one test over the
    /// domain's healthy trays at once, such as NCCL `all_reduce_perf` over
    /// multi-node NVLink. The domain is admitted only when it passes. When
    /// it fails, gpufleet finds the faulty trays by testing halves of the
    /// suspects and confirming each suspect beside a known-good tray, fails
    /// exactly those, and admits the rest if enough remain; when every group
    /// fails, the whole rack fails. Unset: no rack test.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain_test: Option<DomainTest>,
    /// The golden firmware tuple, read from the probe's verdict: the
    /// versions a node's driver and GPUs may run. A node off the tuple
    /// fails; with `uniformDomains`, so do trays that disagree with the
    /// rest of their domain. Unset: any firmware.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub firmware: Option<FirmwareGate>,
}

/// The rack test (see `healthChecks.domainTest`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.template) != has(self.nvcre)").message("set exactly one provider: template (gpufleet runs the pods) or nvcre (NVIDIA's Cluster Readiness Engine runs the test)").field_path(".template"))]
pub struct DomainTest {
    /// The pod run on every tray of a group under test, bound to its tray,
    /// in the probe namespace as the probe ServiceAccount (the same rules
    /// as the probe's template). Each pod is told its group in environment
    /// variables: `GPUFLEET_GROUP` (the group's name, also the pods' label
    /// `gpufleet.io/group`), `GPUFLEET_GROUP_SIZE`, `GPUFLEET_RANK` (0 to
    /// size - 1), `GPUFLEET_PEERS` (the group's pod names by rank, comma
    /// separated) and `GPUFLEET_PEER_NODES` (their nodes). The group passes
    /// when every pod exits 0. Set this or `nvcre`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "pod_template_schema")]
    pub template: Option<PodTemplateSpec>,
    /// Lets NVIDIA's Cluster Readiness Engine run the test instead: per
    /// group, gpufleet creates a Certification (`nvcre.nvidia.com/v1alpha1`)
    /// in the probe namespace, its target the group's nodes, at the
    /// intra-rack scale, and reads back the nodes it failed and why
    /// (`HardwareFailureDetected`, `ThresholdViolation`, `WorkloadFailed`).
    /// Needs NVCRE in the cluster and the operator run with `--nvcre`.
    /// Set this or `template`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nvcre: Option<NvcreTest>,
    /// Seconds a group's test may take, from when its pods were created,
    /// before the group counts as failed (each pod's activeDeadlineSeconds
    /// too). Default 1800.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 10, max = 86400))]
    pub timeout_seconds: Option<u32>,
    /// Extra runs of a group after it failed or timed out before the
    /// failure counts (and attribution begins), as a probe's `retries`.
    /// Default 0: NCCL over a bad link fails every time, and each retry of
    /// an NVL72 costs a whole run; set 1 where jobs flake (say, an IMEX
    /// daemon slow to join).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 5))]
    pub retries: Option<u32>,
    /// Rounds of attribution after a failed rack test before gpufleet
    /// stops looking and fails the trays still suspect. Default 6
    /// (⌈log2 18⌉ + 1: enough to isolate one tray of an NVL72).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 32))]
    pub max_rounds: Option<u32>,
    /// Gives each group a ComputeDomain of its own (NVIDIA's DRA driver,
    /// `resource.nvidia.com/v1beta1`: the IMEX channel multi-node NVLink
    /// needs inside Kubernetes), `numNodes` the group's size, named after
    /// the group, owned by its first pod (it goes with the pods); every
    /// pod claims its channel (claim `compute-domain-channel`, from the
    /// ResourceClaimTemplate the driver makes, `<group>-channel`). Needs the
    /// DRA driver in the cluster.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub compute_domain: bool,
}

/// The rack test run by NVCRE (see `healthChecks.domainTest.nvcre`).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct NvcreTest {
    /// The test of NVCRE's catalog, in its `communication` domain. Default
    /// `nccl-all-reduce`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 63),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    )]
    pub variant: Option<String>,
    /// Runs NCCL over multi-node NVLink (NVCRE's `enableMNNVL`). Default
    /// true: without it an NVL72's trays talk over the network, at about a
    /// fifth of the bandwidth.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mnnvl: Option<bool>,
    /// The bus bandwidth floor in GB/s (NVCRE's threshold
    /// `busBandwidthGBps`: `value >= N`); a group below it fails with
    /// `ThresholdViolation`. Unset: no floor (NVCRE ships none). Measured on
    /// GB200/GB300 NVL72 with MNNVL: about 880 to 930 GB/s at 16 GB.
    #[serde(
        default,
        rename = "minBusBandwidthGBps",
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(range(min = 1, max = 100000))]
    pub min_bus_bandwidth_gbps: Option<u32>,
}

impl NvcreTest {
    /// `variant`, defaulted.
    pub fn variant(&self) -> &str {
        self.variant.as_deref().unwrap_or("nccl-all-reduce")
    }
}

impl DomainTest {
    /// `timeoutSeconds`, defaulted.
    pub fn timeout(&self) -> u32 {
        self.timeout_seconds.unwrap_or(1800)
    }

    /// `retries`, defaulted.
    pub fn retries(&self) -> u32 {
        self.retries.unwrap_or(0)
    }

    /// `maxRounds`, defaulted.
    pub fn rounds(&self) -> u32 {
        self.max_rounds.unwrap_or(6).max(1)
    }
}

/// The fabric-completeness gate (see `healthChecks.fabric`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct FabricGate {
    /// The node label GPU Feature Discovery writes as
    /// `<clusterUuid>.<cliqueId>`: a node's verdict must name the same
    /// clique. Empty: not compared with a label (the trays of a domain must
    /// still agree with each other).
    #[serde(default = "default_clique_label")]
    #[schemars(length(max = 316))]
    pub clique_label: String,
    /// NVLink links each GPU must have up. Unset: as many as the verdict
    /// says the GPU should have (18 on GB200/GB300).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 64))]
    pub min_nvlinks_per_gpu: Option<u32>,
}

fn default_clique_label() -> String {
    "nvidia.com/gpu.clique".into()
}

/// The golden firmware tuple (see `healthChecks.firmware`). Each list names
/// the accepted versions, exactly as the verdict reports them; an empty or
/// absent list accepts any.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct FirmwareGate {
    /// Accepted NVIDIA driver versions, such as `570.133.20`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32), inner(length(min = 1, max = 64), regex(pattern = VERSION_STRING)))]
    pub driver: Vec<String>,
    /// Accepted VBIOS versions of every GPU, such as `97.00.82.00.5F`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32), inner(length(min = 1, max = 64), regex(pattern = VERSION_STRING)))]
    pub vbios: Vec<String>,
    /// Accepted InfoROM image versions of every GPU, such as
    /// `G548.0201.00.06`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32), inner(length(min = 1, max = 64), regex(pattern = VERSION_STRING)))]
    pub inforom: Vec<String>,
    /// Accepted GSP firmware versions of every GPU.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32), inner(length(min = 1, max = 64), regex(pattern = VERSION_STRING)))]
    pub gsp: Vec<String>,
    /// The trays of one domain must run the same versions (driver, VBIOS,
    /// InfoROM, GSP firmware), even when each is accepted: a tray that
    /// differs from most of its domain fails, and when no version is held
    /// by more than half of the domain, its trays are held until a person
    /// brings them in line.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub uniform_domains: bool,
}

impl HealthChecks {
    /// `startupTimeoutSeconds`, defaulted.
    pub fn startup_timeout(&self) -> u32 {
        self.startup_timeout_seconds.unwrap_or(600)
    }

    /// `shortCircuitPercent` and `shortCircuitMinNodes`, defaulted.
    pub fn short_circuit(&self) -> (u32, u32) {
        (
            self.short_circuit_percent.unwrap_or(50),
            self.short_circuit_min_nodes.unwrap_or(3).max(1),
        )
    }

    /// `conditionTimeoutSeconds`, defaulted.
    pub fn condition_timeout(&self) -> u32 {
        self.condition_timeout_seconds.unwrap_or(60)
    }
}

/// The burn-in probe run on each node.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("(has(self.serviceAccountToken) && self.serviceAccountToken) || !has(self.template.spec.volumes) || self.template.spec.volumes.all(v, !has(v.projected) || !has(v.projected.sources) || v.projected.sources.all(s, !has(s.serviceAccountToken)))").message("a projected serviceAccountToken volume mounts an API token: set serviceAccountToken: true if the probe needs one").field_path(".template.spec.volumes"))]
pub struct Probe {
    /// The probe pod. Exit code 0 passes the node; any other result fails it,
    /// with the container's termination message as the reason. gpufleet runs
    /// it in the probe namespace as the probe ServiceAccount, so the template
    /// may not set `serviceAccountName` or `automountServiceAccountToken`
    /// (see `serviceAccountToken`). It runs on every node the pool onboards,
    /// privileged if it says so: write access to a pool is root on its nodes.
    #[schemars(schema_with = "pod_template_schema")]
    pub template: PodTemplateSpec,
    /// Seconds a probe may run, from when its pod started running, before
    /// it counts as failed (the pod's activeDeadlineSeconds too).
    #[serde(default = "default_probe_timeout")]
    #[schemars(range(min = 1, max = 86400))]
    pub timeout_seconds: u32,
    /// Extra attempts after a failed or timed-out probe before the node fails.
    #[serde(default = "default_probe_retries")]
    #[schemars(range(min = 0, max = 10))]
    pub retries: u32,
    /// Seconds a probe pod may take to start running (be created, bound,
    /// admitted by the kubelet, pull its image) before that run counts as
    /// never run. A probe that never ran is no verdict on the node: it is
    /// tried again, and fails nothing. Default 600.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 10, max = 86400))]
    pub start_timeout_seconds: Option<u32>,
    /// How many runs of one node's probe may never run before the batch
    /// halts (Stalled, ProbesNotRunning): no new node starts while probes
    /// cannot run, and the nodes waiting keep trying. Default 3.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100))]
    pub not_started_limit: Option<u32>,
    /// Mounts an API token in the probe pod. Probe pods run as gpufleet's
    /// probe ServiceAccount (`gpufleet-probe` by default, in the probe
    /// namespace; the template may not name one), without a token unless
    /// this is true (a template's projected `serviceAccountToken` volume
    /// counts as one). That account has no permissions but those a cluster
    /// admin grants it: set this only for a probe that calls the API.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub service_account_token: bool,
}

impl Probe {
    /// `startTimeoutSeconds`, defaulted.
    pub fn start_timeout(&self) -> u32 {
        self.start_timeout_seconds.unwrap_or(600)
    }

    /// `notStartedLimit`, defaulted.
    pub fn not_started_limit(&self) -> u32 {
        self.not_started_limit.unwrap_or(3).max(1)
    }
}

fn default_probe_timeout() -> u32 {
    900
}

fn default_probe_retries() -> u32 {
    1
}

/// Halts every rollout of the pool when more than `maxFailedPercent` of the
/// pool's nodes failed within `window`. It clears by itself once enough of
/// the failures are older than the window. A failure counts for its whole
/// window whatever later happens to its node: retrying, relabelling or
/// deleting the node, or deleting its batch, does not clear the breaker
/// (`status.breaker.failures` remembers it). Raising `maxFailedPercent`
/// does; removing `circuitBreaker` forgets the failures.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct CircuitBreaker {
    /// Percent of the pool's nodes that may fail within the window (0-100).
    #[schemars(range(min = 0, max = 100))]
    pub max_failed_percent: u32,
    /// How far back failures count, such as `30m` or `1h` (the default); a
    /// window longer than 366 days counts as 366 days.
    #[serde(default = "default_window")]
    #[schemars(regex(pattern = DURATION), length(max = 32))]
    pub window: String,
}

fn default_window() -> String {
    "1h".into()
}

/// What gpufleet observed of the pool.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct GpuPoolStatus {
    /// The `metadata.generation` this status was computed from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Nodes of the pool by gpufleet state.
    #[serde(default)]
    pub nodes: NodeCounts,
    /// GPUs online against GPUs in the pool.
    #[serde(default)]
    pub gpus: GpuCounts,
    /// Whole domains online against domains in the pool.
    #[serde(default)]
    pub domains: DomainCounts,
    /// The circuit breaker's state.
    // Serialized as null when unset: the status is written as a merge
    // patch, in which only a null removes what an earlier write left.
    #[serde(default)]
    pub breaker: Option<BreakerStatus>,
    /// `Ready`, `Stalled` and `CircuitBreakerTripped`, keyed by type.
    #[serde(default)]
    #[schemars(schema_with = "conditions_schema")]
    pub conditions: Vec<Condition>,
}

/// The circuit breaker's view of recent failures.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct BreakerStatus {
    /// True while every rollout of the pool is halted.
    #[serde(default)]
    pub tripped: bool,
    /// Failures within the window: the pool's nodes failed now and those
    /// remembered in `failures`, each counted once (at most 4096 remembered).
    #[serde(default)]
    pub failed_in_window: u32,
    /// Failures the window tolerates before tripping.
    #[serde(default)]
    pub limit: u32,
    /// When the breaker tripped, while it is tripped.
    // Null when unset, as `breaker`: else it outlives the trip.
    #[serde(default)]
    pub tripped_at: Option<Time>,
    /// The pool's failures within the window, oldest first: the breaker's
    /// memory. A failure stays here, and counts, for its whole window
    /// whatever later happens to its node (relabelled, retried, released
    /// with its batch, or deleted). At most the 4096 most recent are kept,
    /// so once failed nodes lose their labels `failedInWindow` counts at
    /// most 4096 of them.
    // Always serialized, even empty: the status is written as a merge patch,
    // which replaces a list it names and keeps one it omits.
    #[serde(default)]
    #[schemars(length(max = 4096))]
    pub failures: Vec<BreakerFailure>,
}

/// One failure the circuit breaker remembers, identified by its node and
/// the time it failed.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct BreakerFailure {
    /// The node that failed.
    #[schemars(length(max = 253))]
    pub node: String,
    /// When it failed: the node's `gpufleet.io/since` when it failed, to the
    /// second. A node labelled `failed` without `gpufleet.io/since` counts
    /// from when gpufleet first saw it failed.
    pub at: Time,
}
