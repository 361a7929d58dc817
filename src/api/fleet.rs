//! `FleetRollout`: one RolloutBatch promoted across member clusters, stage
//! by stage, from a hub cluster that lists its members as SIG-Multicluster
//! `ClusterProfile`s (KEP-4322); and the part of `ClusterProfile` gpufleet
//! reads.

// Each `printcolumn(...)` repeats `type_`, which clippy reads as a duplicated attribute.
#![allow(clippy::duplicated_attributes)]

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::common::conditions_schema;

/// Promotes one RolloutBatch across member clusters in stages: the clusters
/// of a stage may start their batch's waves only once every cluster of the
/// stages before has its batch Ready. gpufleet raises each member batch's
/// `spec.approvedWaves` (mode `Approve`), or says which cluster and wave is
/// next for a person or Git to approve (mode `Report`).
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "gpufleet.io",
    version = "v1alpha1",
    kind = "FleetRollout",
    plural = "fleetrollouts",
    shortname = "frollout",
    category = "gpufleet",
    namespaced,
    status = "FleetRolloutStatus",
    derive = "PartialEq",
    doc = "FleetRollout promotes one RolloutBatch across member clusters (ClusterProfiles in its namespace) stage by stage.",
    printcolumn(name = "Batch", type_ = "string", json_path = ".spec.batch"),
    printcolumn(name = "Stage", type_ = "string", json_path = ".status.stageProgress"),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(
        name = "Reason",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].reason"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.stages.all(s, self.stages.filter(t, t.name == s.name).size() == 1)").message("stages: each stage needs a name of its own").field_path(".stages"))]
pub struct FleetRolloutSpec {
    /// The RolloutBatch, by name, that every member cluster runs. Create it
    /// in each member with `approvedWaves: 0` so that it waits for its stage.
    #[schemars(length(min = 1, max = 253))]
    pub batch: String,
    /// The stages in order. A cluster belongs to one stage at most.
    #[schemars(length(min = 1, max = 32))]
    pub stages: Vec<FleetStage>,
    /// Member clusters rolling at once (approved, their batch not Ready yet).
    #[serde(default = "default_in_flight")]
    #[schemars(range(min = 1, max = 10000))]
    pub max_clusters_in_flight: u32,
    /// Member clusters that may fail (their batch Stalled, or its pool's
    /// circuit breaker tripped) before the fleet halts. 0, the default,
    /// halts on the first.
    #[serde(default)]
    #[schemars(range(min = 0, max = 10000))]
    pub max_failed_clusters: u32,
    /// `Approve`: gpufleet raises each member batch's `approvedWaves` when
    /// its stage comes. `Report`: gpufleet writes nothing to the members and
    /// lists in `status.next` what to approve, for batches kept in Git.
    #[serde(default)]
    pub mode: FleetMode,
    /// Approve nothing more; clusters already rolling finish.
    #[serde(default)]
    pub paused: bool,
}

fn default_in_flight() -> u32 {
    1
}

/// Who raises the member batches' `approvedWaves`.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum FleetMode {
    /// gpufleet does.
    #[default]
    Approve,
    /// A person or Git does; gpufleet says what, in `status.next`.
    Report,
}

/// One stage: the clusters named, and those whose ClusterProfile matches
/// the selector.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("size(self.clusters) > 0 || has(self.clusterSelector)").message("a stage names clusters or sets clusterSelector"))]
pub struct FleetStage {
    /// The stage's name, shown in the status (`canary`, `region-a`).
    #[schemars(
        length(min = 1, max = 63),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    )]
    pub name: String,
    /// ClusterProfile names, in the FleetRollout's namespace.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 1000))]
    pub clusters: Vec<String>,
    /// ClusterProfiles in the FleetRollout's namespace with these labels.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_selector: Option<LabelSelector>,
}

/// What gpufleet observed of the fleet rollout.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct FleetRolloutStatus {
    /// The `metadata.generation` this status was computed from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// The stage in progress, from 1; 0 before the first starts or when the
    /// stages cannot be read.
    #[serde(default)]
    pub current_stage: u32,
    /// `current/total`, for `kubectl get`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stage_progress: Option<String>,
    /// Each member cluster of the rollout, in stage order.
    #[serde(default)]
    #[schemars(length(max = 10000))]
    pub clusters: Vec<FleetClusterStatus>,
    /// What to approve next (mode `Report`), or what gpufleet approved at
    /// its last look (mode `Approve`).
    #[serde(default)]
    #[schemars(length(max = 10000))]
    pub next: Vec<FleetApproval>,
    /// `Ready` (every stage done), `Reconciling` (in progress or waiting on
    /// a cluster) and `Stalled` (halted or unreadable; the reason says why).
    #[serde(default)]
    #[schemars(schema_with = "conditions_schema")]
    pub conditions: Vec<Condition>,
}

/// One member cluster as the fleet rollout last saw it.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct FleetClusterStatus {
    /// The ClusterProfile's name.
    #[schemars(length(max = 253))]
    pub name: String,
    /// Its stage, from 1.
    #[serde(default)]
    pub stage: u32,
    /// Waiting, Rolling, Ready, Failed, Unreachable, NoCredentials or
    /// BatchMissing.
    #[schemars(length(max = 32))]
    pub phase: String,
    /// The member batch's `approvedWaves` (absent: every wave).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approved_waves: Option<u32>,
    /// The member batch's waves.
    #[serde(default)]
    pub total_waves: u32,
    /// The member batch's wave in progress.
    #[serde(default)]
    pub current_wave: u32,
    /// What the member batch waits on (its `status.gate.name`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32))]
    pub gate: Option<String>,
    /// In words: why it is in this phase.
    #[serde(default)]
    #[schemars(length(max = 1024))]
    pub message: String,
    /// When gpufleet last reached the cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_seen: Option<Time>,
}

/// One approval: the member batch's `approvedWaves` raised to `to`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct FleetApproval {
    /// The ClusterProfile's name.
    #[schemars(length(max = 253))]
    pub cluster: String,
    /// `approvedWaves` now (absent: unset).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<u32>,
    /// `approvedWaves` to set.
    pub to: u32,
}

/// A member cluster in a SIG-Multicluster inventory (group
/// `multicluster.x-k8s.io`, KEP-4322), as gpufleet reads it: its labels,
/// and how to reach it (`status.accessProviders`, KEP-5339; the older
/// `status.credentialProviders` too). gpufleet never writes one; cluster
/// managers (Open Cluster Management, GKE Fleet, KubeFleet) do.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "multicluster.x-k8s.io",
    version = "v1alpha1",
    kind = "ClusterProfile",
    plural = "clusterprofiles",
    namespaced,
    status = "ClusterProfileStatus",
    derive = "PartialEq",
    doc = "ClusterProfile represents one cluster of a multi-cluster inventory (KEP-4322). The test bed's stand-in: gpufleet reads it and never installs it."
)]
#[serde(rename_all = "camelCase")]
pub struct ClusterProfileSpec {
    /// A name for people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display_name: Option<String>,
    /// The cluster manager that owns the profile.
    pub cluster_manager: ClusterManager,
}

/// The cluster manager that owns a ClusterProfile.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
pub struct ClusterManager {
    pub name: String,
}

/// What the cluster manager observed of the cluster.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClusterProfileStatus {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub access_providers: Vec<AccessProvider>,
    /// The older name of `accessProviders`; an entry there wins.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub credential_providers: Vec<AccessProvider>,
}

/// One way to reach the cluster: the consumer's access provider of this
/// name (an exec credential plugin it configured) and the cluster's
/// address.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
pub struct AccessProvider {
    pub name: String,
    #[serde(default)]
    pub cluster: ProfileCluster,
}

/// A kubeconfig `cluster` entry (client-go's clientcmd v1 `Cluster`), the
/// fields gpufleet uses.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
pub struct ProfileCluster {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server: Option<String>,
    #[serde(
        default,
        rename = "certificate-authority-data",
        skip_serializing_if = "Option::is_none"
    )]
    pub certificate_authority_data: Option<String>,
    #[serde(
        default,
        rename = "insecure-skip-tls-verify",
        skip_serializing_if = "Option::is_none"
    )]
    pub insecure_skip_tls_verify: Option<bool>,
    #[serde(
        default,
        rename = "tls-server-name",
        skip_serializing_if = "Option::is_none"
    )]
    pub tls_server_name: Option<String>,
    #[serde(default, rename = "proxy-url", skip_serializing_if = "Option::is_none")]
    pub proxy_url: Option<String>,
    /// Named extensions; `client.authentication.k8s.io/exec` is handed to
    /// the exec plugin as the cluster's `config`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub extensions: Vec<NamedExtension>,
}

/// A named extension of a kubeconfig cluster.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
pub struct NamedExtension {
    pub name: String,
    #[serde(default)]
    #[schemars(schema_with = "preserve_unknown")]
    pub extension: serde_json::Value,
}

fn preserve_unknown(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({"type": "object", "x-kubernetes-preserve-unknown-fields": true})
}

impl ClusterProfile {
    /// The profile's access providers by name, `accessProviders` winning
    /// over the older `credentialProviders`.
    pub fn providers(&self) -> BTreeMap<&str, &ProfileCluster> {
        let mut out = BTreeMap::new();
        if let Some(status) = &self.status {
            for p in status
                .credential_providers
                .iter()
                .chain(&status.access_providers)
            {
                out.insert(p.name.as_str(), &p.cluster);
            }
        }
        out
    }
}
