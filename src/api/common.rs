//! Types shared by both kinds: taints, condition matchers, counts and the
//! schema helpers that keep the CRDs structural and small.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Serialize};

/// The API group of every gpufleet kind.
pub const GROUP: &str = "gpufleet.io";
/// The served and stored version.
pub const VERSION: &str = "v1alpha1";

/// What a taint does to pods that do not tolerate it.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
pub enum TaintEffect {
    /// New pods that do not tolerate the taint are not scheduled on the node.
    NoSchedule,
    /// The scheduler avoids the node for pods that do not tolerate the taint.
    PreferNoSchedule,
    /// Pods that do not tolerate the taint are evicted, and new ones are not scheduled.
    NoExecute,
}

impl TaintEffect {
    /// The spelling Kubernetes uses in `Node.spec.taints[].effect`.
    pub fn as_str(self) -> &'static str {
        match self {
            TaintEffect::NoSchedule => "NoSchedule",
            TaintEffect::PreferNoSchedule => "PreferNoSchedule",
            TaintEffect::NoExecute => "NoExecute",
        }
    }
}

/// A node taint, as gpufleet places and removes it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TaintSpec {
    /// The taint key, a qualified name such as `gpufleet.io/onboarding`.
    #[schemars(length(min = 1, max = 316), regex(pattern = QUALIFIED_NAME))]
    pub key: String,
    /// The taint value; empty by default. The API's rules for a label
    /// value: at most 63 letters, digits, `-`, `_` and `.`, starting and
    /// ending with a letter or digit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 63), regex(pattern = LABEL_VALUE))]
    pub value: Option<String>,
    /// NoSchedule, PreferNoSchedule or NoExecute.
    pub effect: TaintEffect,
}

/// A node condition that marks a node unhealthy when it matches, such as
/// `{type: GpuXidError, status: "True"}` reported by Node Problem Detector,
/// NVSentinel or DCGM.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ConditionMatch {
    /// The node condition type, for example `GpuXidError` or `NVLinkDown`.
    #[serde(rename = "type")]
    #[schemars(length(min = 1, max = 316))]
    pub type_: String,
    /// The condition status that means unhealthy: "True" (the default), "False" or "Unknown".
    #[serde(default = "default_condition_status")]
    pub status: ConditionStatus,
    /// Seconds this condition must stay unhealthy before it fails a node in
    /// progress; overrides `healthChecks.conditionTimeoutSeconds`. 0 fails
    /// at once (for conditions that never clear by themselves).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 86400))]
    pub timeout_seconds: Option<u32>,
}

fn default_condition_status() -> ConditionStatus {
    ConditionStatus::True
}

/// The status of a Kubernetes condition.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
pub enum ConditionStatus {
    /// The condition holds.
    True,
    /// The condition does not hold.
    False,
    /// The reporter does not know.
    Unknown,
}

impl ConditionStatus {
    /// The spelling used in `status.conditions[].status`.
    pub fn as_str(self) -> &'static str {
        match self {
            ConditionStatus::True => "True",
            ConditionStatus::False => "False",
            ConditionStatus::Unknown => "Unknown",
        }
    }
}

/// How many nodes are in each gpufleet state.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodeCounts {
    /// Every node counted here.
    #[serde(default)]
    pub total: u32,
    /// Waiting for their wave to open.
    #[serde(default)]
    pub pending: u32,
    /// Running the burn-in probe.
    #[serde(default)]
    pub validating: u32,
    /// Passed the probe and staying healthy for `soakSeconds`.
    #[serde(default)]
    pub soaking: u32,
    /// Admitted: the onboarding taint is gone and workloads may land.
    #[serde(default)]
    pub ready: u32,
    /// Failed a check; the reason is in the node's `gpufleet.io/reason` annotation.
    #[serde(default)]
    pub failed: u32,
    /// Healthy, but their domain has too few healthy nodes to be admitted.
    #[serde(default)]
    pub held: u32,
}

/// GPUs on admitted nodes against GPUs on all nodes.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GpuCounts {
    /// GPUs on `ready` nodes.
    #[serde(default)]
    pub ready: u32,
    /// GPUs on every node counted.
    #[serde(default)]
    pub total: u32,
}

/// Whole NVLink domains admitted against all domains.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DomainCounts {
    /// Domains whose healthy nodes are all admitted.
    #[serde(default)]
    pub complete: u32,
    /// Every domain seen.
    #[serde(default)]
    pub total: u32,
}

/// A Kubernetes qualified name with an optional DNS prefix (label keys, taint keys).
pub const QUALIFIED_NAME: &str = r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$";

/// A label value (also a taint's value), by the API's own rule.
pub const LABEL_VALUE: &str = r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$";

/// A dotted version such as `570.133.20`.
pub const DOTTED_VERSION: &str = r"^[0-9]+(\.[0-9]+){1,3}$";

/// A firmware or driver version as nvidia-smi prints it: letters, digits,
/// dots, dashes, underscores and plus signs.
pub const VERSION_STRING: &str = r"^[0-9A-Za-z][-0-9A-Za-z._+]*$";

/// A duration such as `90s`, `30m`, `1h` or `1h30m`.
pub const DURATION: &str = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$";

/// `status.conditions`: a list keyed by `type`, as the API conventions ask.
pub fn conditions_schema(generator: &mut SchemaGenerator) -> Schema {
    let mut schema = generator.subschema_for::<Vec<Condition>>();
    schema.insert("x-kubernetes-list-type".into(), "map".into());
    schema.insert(
        "x-kubernetes-list-map-keys".into(),
        serde_json::json!(["type"]),
    );
    schema
}

/// A pod template, kept small: the CRD checks that it has containers with a
/// name and an image and preserves the rest, which gpufleet reads as a
/// `PodTemplateSpec` and the API server validates when the probe pod is made.
/// Embedding the full PodSpec schema would push the CRD past the 256 KiB
/// that client-side `kubectl apply` can store.
pub fn pod_template_schema(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "object",
        "description": "A PodTemplateSpec for the burn-in probe: gpufleet binds it to the node (spec.nodeName), adds a toleration for the onboarding taint and owns it. The container's exit code decides the verdict; its termination message becomes the node's reason.",
        "required": ["spec"],
        "properties": {
            "metadata": {
                "type": "object",
                "x-kubernetes-preserve-unknown-fields": true
            },
            "spec": {
                "type": "object",
                "required": ["containers"],
                "x-kubernetes-preserve-unknown-fields": true,
                // Who the probe runs as is gpufleet's to say (the probe
                // ServiceAccount, a token only with `serviceAccountToken`):
                // a template naming another account is refused, not
                // silently changed.
                "x-kubernetes-validations": [
                    {
                        "rule": "!has(self.serviceAccountName) && !has(self.serviceAccount)",
                        "message": "probe pods run as gpufleet's probe ServiceAccount (gpufleet-probe by default, in the probe namespace): leave serviceAccountName out, and grant that account what the probe needs"
                    },
                    {
                        "rule": "!has(self.automountServiceAccountToken)",
                        "message": "set healthChecks.probe.serviceAccountToken instead: gpufleet decides whether the probe gets a token"
                    }
                ],
                "properties": {
                    "serviceAccountName": {"type": "string"},
                    "serviceAccount": {"type": "string"},
                    "automountServiceAccountToken": {"type": "boolean"},
                    // Declared as far as the rule on projected tokens reads
                    // them (see `Probe`), and bounded so that its cost is.
                    "volumes": {
                        "type": "array",
                        "maxItems": 128,
                        "items": {
                            "type": "object",
                            "x-kubernetes-preserve-unknown-fields": true,
                            "properties": {
                                "projected": {
                                    "type": "object",
                                    "x-kubernetes-preserve-unknown-fields": true,
                                    "properties": {
                                        "sources": {
                                            "type": "array",
                                            "maxItems": 32,
                                            "items": {
                                                "type": "object",
                                                "x-kubernetes-preserve-unknown-fields": true,
                                                "properties": {
                                                    "serviceAccountToken": {
                                                        "type": "object",
                                                        "x-kubernetes-preserve-unknown-fields": true
                                                    }
                                                }
                                            }
                                        }
                                    }
                                }
                            }
                        }
                    },
                    "containers": {
                        "type": "array",
                        "minItems": 1,
                        "items": {
                            "type": "object",
                            "required": ["name", "image"],
                            "x-kubernetes-preserve-unknown-fields": true,
                            "properties": {
                                "name": {"type": "string", "minLength": 1},
                                "image": {"type": "string", "minLength": 1}
                            }
                        }
                    }
                }
            }
        }
    })
}

/// An integer count (0 or more) or a percentage `"0%"`..`"100%"`. `minimum`
/// and `maximum` only apply to integers and `pattern` only to strings, so
/// all sit at the top level (an `anyOf` would let a malformed string through
/// the integer arm). The maximum is what an `IntOrString` holds (int32): a
/// larger count would be stored, then fail to read.
pub fn count_or_percent_schema(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "x-kubernetes-int-or-string": true,
        "minimum": 0,
        "maximum": i32::MAX,
        "pattern": "^(100|[1-9]?[0-9])%$"
    })
}
