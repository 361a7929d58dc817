//! The planner's view of the cluster: small, owned copies of what it needs
//! from Nodes and probe pods. The operator builds a node's view once per
//! watch event and caches it behind an `Arc`; snapshots share those views.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{ContainerStatus, Node, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::jiff::{self as jiff, Timestamp};

use compact_str::CompactString;

use super::labels::{Labels, Stamp, Stamps, Sym, sym};
use crate::keys;

/// A node's place in the rollout, as the `gpufleet.io/state` label says.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum NodeState {
    /// Waiting for its wave; also every node without the label.
    Pending,
    /// Running the burn-in probe.
    Validating,
    /// Passed the probe; staying healthy for `soakSeconds`, then waiting for
    /// the rest of its domain.
    Soaking,
    /// Admitted: the onboarding taint is gone. Never demoted by gpufleet.
    Ready,
    /// Failed a check; waits for a person (`gpufleet.io/retry`).
    Failed,
    /// Healthy, but its domain has too few healthy nodes to be admitted.
    Held,
}

impl NodeState {
    /// Every state, in lifecycle order.
    pub const ALL: [NodeState; 6] = [
        NodeState::Pending,
        NodeState::Validating,
        NodeState::Soaking,
        NodeState::Ready,
        NodeState::Failed,
        NodeState::Held,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            NodeState::Pending => "pending",
            NodeState::Validating => "validating",
            NodeState::Soaking => "soaking",
            NodeState::Ready => "ready",
            NodeState::Failed => "failed",
            NodeState::Held => "held",
        }
    }

    /// A final verdict for wave progress: ready, failed or held.
    pub fn is_verdict(self) -> bool {
        matches!(self, NodeState::Ready | NodeState::Failed | NodeState::Held)
    }

    /// Started and not yet decided: validating or soaking.
    pub fn in_progress(self) -> bool {
        matches!(self, NodeState::Validating | NodeState::Soaking)
    }
}

impl fmt::Display for NodeState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for NodeState {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        NodeState::ALL
            .into_iter()
            .find(|state| state.as_str() == s)
            .ok_or_else(|| format!("unknown gpufleet state {s:?}"))
    }
}

/// A taint as it sits on a node: every field of the API's taint, so that
/// the operator can write a node's taint list back exactly as it found it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TaintView {
    pub key: String,
    pub value: Option<String>,
    pub effect: String,
    /// `timeAdded` (set on `NoExecute` taints).
    pub time_added: Option<Timestamp>,
}

/// What gpufleet knows of one Node: what the planner reads, and what the
/// operator needs to patch it (its taints and resourceVersion). The
/// operator's node cache holds one per node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeView {
    /// The node's name (held inline up to 24 bytes).
    pub name: CompactString,
    /// `metadata.resourceVersion`: the version this view was built from
    /// (held inline: etcd's are a number of up to 20 digits).
    pub resource_version: Option<CompactString>,
    /// Every label (selectors need them all), interned.
    pub labels: Labels,
    /// Parsed `gpufleet.io/state`; `None` when absent or unknown.
    pub state: Option<NodeState>,
    /// `gpufleet.io/batch`.
    pub batch: Option<Sym>,
    /// `gpufleet.io/batch-uid`.
    pub batch_uid: Option<Sym>,
    /// `gpufleet.io/wave`.
    pub wave: Option<u32>,
    /// `gpufleet.io/since`.
    pub since: Stamp,
    /// `gpufleet.io/started`.
    pub started: Stamp,
    /// `gpufleet.io/reason`.
    pub reason: Option<Sym>,
    /// `gpufleet.io/attempt` (0 when absent).
    pub attempt: u32,
    /// `gpufleet.io/taint`: the onboarding taints gpufleet added, as
    /// (key, effect); `None` when the annotation is absent (a node never
    /// started, or started before gpufleet recorded its taints).
    pub taints_added: Option<Vec<(String, String)>>,
    /// A person asked for a retry (`gpufleet.io/retry` is present).
    pub retry: bool,
    /// The Ready condition's status: `Some(true)` only for "True".
    pub ready: Option<bool>,
    /// Every condition type with its status ("True", "False", "Unknown"),
    /// interned as labels are.
    pub conditions: Labels,
    /// `gpufleet.io/admitted`: when gpufleet admitted the node.
    pub admitted: Stamp,
    /// `gpufleet.io/recorded-state`: the state gpufleet last wrote.
    pub recorded_state: Option<NodeState>,
    /// `gpufleet.io/suspect`: the pool generation of a short-circuit.
    pub suspect: Option<i64>,
    /// `gpufleet.io/probe-misses`: runs of its probe that never ran.
    pub probe_misses: u32,
    /// `gpufleet.io/verdict`: what its probe's verdict said, as recorded
    /// (JSON of `planner::VerdictRecord`).
    pub verdict: Option<Sym>,
    /// When each condition last changed status (its lastTransitionTime),
    /// where the reporter said.
    pub condition_since: Stamps,
    /// `status.allocatable["nvidia.com/gpu"]`, when it parses as a count.
    pub allocatable_gpus: Option<u32>,
    /// The raw allocatable value, for messages when it does not parse.
    pub allocatable_gpus_raw: Option<Sym>,
    /// Every taint, in the node's order.
    pub taints: Vec<TaintView>,
    /// `spec.unschedulable`: cordoned (gpufleet never cordons).
    pub unschedulable: bool,
    /// When the Node registered (`metadata.creationTimestamp`).
    pub created: Stamp,
    /// The Node is being deleted.
    pub deleting: bool,
}

impl NodeView {
    /// Does `other` say the same as this view in everything a plan reads?
    /// Only the resourceVersion may differ: a kubelet's heartbeat, or any
    /// write to fields gpufleet does not read, changes nothing here, and
    /// the operator does not plan again for it. Every field is named (a
    /// field added to the view must be placed on one side or the other).
    pub fn same_for_planner(&self, other: &NodeView) -> bool {
        let NodeView {
            name,
            resource_version: _,
            labels,
            state,
            batch,
            batch_uid,
            wave,
            since,
            started,
            reason,
            attempt,
            taints_added,
            retry,
            ready,
            conditions,
            admitted,
            recorded_state,
            suspect,
            probe_misses,
            verdict,
            condition_since,
            allocatable_gpus,
            allocatable_gpus_raw,
            taints,
            unschedulable,
            created,
            deleting,
        } = self;
        *name == other.name
            && *labels == other.labels
            && *state == other.state
            && *batch == other.batch
            && *batch_uid == other.batch_uid
            && *wave == other.wave
            && *since == other.since
            && *started == other.started
            && *reason == other.reason
            && *attempt == other.attempt
            && *taints_added == other.taints_added
            && *retry == other.retry
            && *ready == other.ready
            && *conditions == other.conditions
            && *admitted == other.admitted
            && *recorded_state == other.recorded_state
            && *suspect == other.suspect
            && *probe_misses == other.probe_misses
            && *verdict == other.verdict
            && *condition_since == other.condition_since
            && *allocatable_gpus == other.allocatable_gpus
            && *allocatable_gpus_raw == other.allocatable_gpus_raw
            && *taints == other.taints
            && *unschedulable == other.unschedulable
            && *created == other.created
            && *deleting == other.deleting
    }

    /// A node with just a name and labels; the rest is empty. For tests and
    /// tools that build views by hand.
    pub fn named(name: impl Into<String>) -> Self {
        NodeView {
            name: CompactString::new(name.into()),
            resource_version: None,
            labels: Labels::default(),
            state: None,
            batch: None,
            batch_uid: None,
            wave: None,
            since: Stamp::NONE,
            started: Stamp::NONE,
            reason: None,
            attempt: 0,
            taints_added: None,
            retry: false,
            ready: None,
            conditions: Labels::default(),
            admitted: Stamp::NONE,
            recorded_state: None,
            suspect: None,
            probe_misses: 0,
            verdict: None,
            condition_since: Stamps::default(),
            allocatable_gpus: None,
            allocatable_gpus_raw: None,
            taints: Vec::new(),
            unschedulable: false,
            created: Stamp::NONE,
            deleting: false,
        }
    }

    /// The gpufleet state; a node without one is pending.
    pub fn state(&self) -> NodeState {
        self.state.unwrap_or(NodeState::Pending)
    }

    /// Does the node carry a taint with this key and effect?
    pub fn has_taint(&self, key: &str, effect: &str) -> bool {
        self.taints
            .iter()
            .any(|t| t.key == key && t.effect == effect)
    }

    /// GPUs this node reports: allocatable, else the GFD count label.
    pub fn gpus(&self) -> u32 {
        self.allocatable_gpus
            .or_else(|| {
                self.labels
                    .get(keys::GPU_COUNT)
                    .and_then(|c| c.parse().ok())
            })
            .unwrap_or(0)
    }
}

impl From<&Node> for NodeView {
    fn from(node: &Node) -> Self {
        let meta = &node.metadata;
        let annotations = meta.annotations.as_ref();
        let annotation = |key: &str| annotations.and_then(|a| a.get(key)).cloned();
        let status = node.status.as_ref();
        let conditions: Labels = status
            .and_then(|s| s.conditions.as_ref())
            .map(|cs| {
                cs.iter()
                    .map(|c| (c.type_.clone(), c.status.clone()))
                    .collect()
            })
            .unwrap_or_default();
        let condition_since: Stamps = status
            .and_then(|s| s.conditions.as_ref())
            .map(|cs| {
                cs.iter()
                    .filter_map(|c| Some((c.type_.clone(), c.last_transition_time.as_ref()?.0)))
                    .collect()
            })
            .unwrap_or_default();
        let allocatable_gpus_raw = status
            .and_then(|s| s.allocatable.as_ref())
            .and_then(|a| a.get(keys::GPU_RESOURCE))
            .map(|q| sym(&q.0));
        let spec = node.spec.as_ref();
        NodeView {
            name: meta
                .name
                .as_deref()
                .map(CompactString::new)
                .unwrap_or_default(),
            resource_version: meta.resource_version.as_deref().map(CompactString::new),
            labels: meta.labels.as_ref().map(Labels::from).unwrap_or_default(),
            state: meta
                .labels
                .as_ref()
                .and_then(|l| l.get(keys::STATE))
                .and_then(|s| s.parse().ok()),
            batch: annotations.and_then(|a| a.get(keys::BATCH)).map(|v| sym(v)),
            batch_uid: annotations
                .and_then(|a| a.get(keys::BATCH_UID))
                .map(|v| sym(v)),
            wave: annotation(keys::WAVE).and_then(|w| w.parse().ok()),
            since: annotation(keys::SINCE).and_then(|s| s.parse().ok()).into(),
            started: annotation(keys::STARTED)
                .and_then(|s| s.parse().ok())
                .into(),
            reason: annotations
                .and_then(|a| a.get(keys::REASON))
                .map(|v| sym(v)),
            attempt: annotation(keys::ATTEMPT)
                .and_then(|a| a.parse().ok())
                .unwrap_or(0),
            taints_added: annotation(keys::TAINT).map(|v| parse_taints(&v)),
            retry: annotation(keys::RETRY).is_some(),
            ready: conditions.get("Ready").map(|s| s == "True"),
            conditions,
            admitted: annotation(keys::ADMITTED)
                .and_then(|s| s.parse().ok())
                .into(),
            recorded_state: annotation(keys::RECORDED_STATE).and_then(|s| s.parse().ok()),
            suspect: annotation(keys::SUSPECT).and_then(|s| s.parse().ok()),
            probe_misses: annotation(keys::PROBE_MISSES)
                .and_then(|n| n.parse().ok())
                .unwrap_or(0),
            verdict: annotations
                .and_then(|a| a.get(keys::VERDICT))
                .map(|v| sym(v)),
            condition_since,
            allocatable_gpus: allocatable_gpus_raw.as_deref().and_then(|q| q.parse().ok()),
            allocatable_gpus_raw,
            taints: spec
                .and_then(|s| s.taints.as_ref())
                .map(|ts| {
                    ts.iter()
                        .map(|t| TaintView {
                            key: t.key.clone(),
                            value: t.value.clone(),
                            effect: t.effect.clone(),
                            time_added: t.time_added.as_ref().map(|t| t.0),
                        })
                        .collect()
                })
                .unwrap_or_default(),
            unschedulable: spec.and_then(|s| s.unschedulable).unwrap_or(false),
            created: meta.creation_timestamp.as_ref().map(|t| t.0).into(),
            deleting: meta.deletion_timestamp.is_some(),
        }
    }
}

/// `KEY:EFFECT[,KEY:EFFECT]` as (key, effect) pairs; malformed entries are
/// skipped (nothing is removed for them).
pub fn parse_taints(value: &str) -> Vec<(String, String)> {
    value
        .split(',')
        .filter_map(|t| t.trim().rsplit_once(':'))
        .filter(|(k, e)| !k.is_empty() && !e.is_empty())
        .map(|(k, e)| (k.to_string(), e.to_string()))
        .collect()
}

/// The written form of [`parse_taints`].
pub fn format_taints(taints: &[(String, String)]) -> String {
    taints
        .iter()
        .map(|(k, e)| format!("{k}:{e}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// The phase of a probe pod.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProbePhase {
    Pending,
    Running,
    Succeeded,
    Failed,
    Unknown,
}

/// How one container of a probe pod ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Termination {
    /// The container's name.
    pub container: String,
    /// It is an init container.
    pub init: bool,
    pub exit_code: i32,
    /// Its termination message (else its reason), kept only for a non-zero
    /// exit: a passing container's words are never read.
    pub message: Option<String>,
}

/// What the planner knows of one probe pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProbeView {
    /// The pod's name.
    pub name: String,
    /// The node it is bound to.
    pub node: String,
    /// The attempt it runs (its `gpufleet.io/attempt` annotation).
    pub attempt: u32,
    pub phase: ProbePhase,
    /// The UID of the batch that made it: its `gpufleet.io/batch-uid` label,
    /// else the UID of its controller owner reference to a `RolloutBatch`
    /// (probes made before the label). `None` when it has neither, or when
    /// the two disagree: such a pod is nobody's probe.
    pub batch_uid: Option<String>,
    /// Regular containers in the pod's spec.
    pub containers: u32,
    /// Init containers in the pod's spec.
    pub init_containers: u32,
    /// The containers that terminated, init containers first, each in the
    /// pod's order.
    pub terminated: Vec<Termination>,
    /// The pod's own reason and message when it failed (e.g.
    /// `DeadlineExceeded`), if any.
    pub message: Option<String>,
    /// `gpufleet.io/started` on the pod: the run of the node it was made
    /// for (absent on pods made before runs were recorded).
    pub run: Option<Timestamp>,
    /// When the pod was created.
    pub created: Option<Timestamp>,
    /// When it began to run: the earliest start of any of its containers,
    /// else, for a pod past Pending, when the kubelet took it. `None`: it
    /// never ran (unscheduled, pulling its image, refused by the kubelet).
    pub started_at: Option<Timestamp>,
    /// When it finished: the latest `finishedAt` of its terminated
    /// containers, once the pod is done (Succeeded or Failed). A passed
    /// node's soak counts from here (`soak.rs`).
    pub finished_at: Option<Timestamp>,
    /// Why it is not running or why it ended without running, in the pod's
    /// own words: a waiting container's reason and message (such as
    /// `ErrImagePull`), the PodScheduled condition's, or the pod's reason.
    pub not_running: Option<String>,
    /// The kubelet or the scheduler removed it (`Evicted`, `Preempting`):
    /// whatever its containers did, it is no verdict on the node.
    pub evicted: bool,
    /// The pod is being deleted.
    pub deleting: bool,
    /// The structured verdict its containers left in their termination
    /// messages ([`crate::verdict`]): absent, valid, or not a valid one.
    pub verdict: crate::verdict::Read,
    /// For a rack test pod: its group (`gpufleet.io/group`).
    pub group: Option<String>,
}

impl ProbeView {
    /// Was this pod made by the batch of this UID? A batch without a UID
    /// (never one the API server returns; only simulations) owns the pods
    /// without one.
    pub fn made_by(&self, batch_uid: Option<&str>) -> bool {
        self.batch_uid.as_deref() == batch_uid
    }

    /// The first container, init or regular, that exited non-zero.
    pub fn failed_container(&self) -> Option<&Termination> {
        self.terminated.iter().find(|t| t.exit_code != 0)
    }

    /// Every regular container terminated, each with exit code 0, and so
    /// did every init container that reported.
    pub fn all_exited_zero(&self) -> bool {
        let regular = self.terminated.iter().filter(|t| !t.init).count();
        self.containers > 0
            && regular >= self.containers as usize
            && self.terminated.iter().all(|t| t.exit_code == 0)
    }
}

impl From<&Pod> for ProbeView {
    fn from(pod: &Pod) -> Self {
        let meta = &pod.metadata;
        let status = pod.status.as_ref();
        let spec = pod.spec.as_ref();
        let phase = match status.and_then(|s| s.phase.as_deref()) {
            Some("Pending") | None => ProbePhase::Pending,
            Some("Running") => ProbePhase::Running,
            Some("Succeeded") => ProbePhase::Succeeded,
            Some("Failed") => ProbePhase::Failed,
            Some(_) => ProbePhase::Unknown,
        };
        let terminations = |statuses: Option<&Vec<ContainerStatus>>, init: bool| {
            statuses
                .into_iter()
                .flatten()
                .filter_map(move |c| {
                    let t = c.state.as_ref()?.terminated.as_ref()?;
                    Some(Termination {
                        container: c.name.clone(),
                        init,
                        exit_code: t.exit_code,
                        message: (t.exit_code != 0)
                            .then(|| t.message.clone().or_else(|| t.reason.clone()))
                            .flatten()
                            .filter(|m| !m.trim().is_empty()),
                    })
                })
                .collect::<Vec<_>>()
        };
        let mut terminated = terminations(
            status.and_then(|s| s.init_container_statuses.as_ref()),
            true,
        );
        terminated.extend(terminations(
            status.and_then(|s| s.container_statuses.as_ref()),
            false,
        ));
        let label_uid = meta
            .labels
            .as_ref()
            .and_then(|l| l.get(keys::BATCH_UID))
            .filter(|u| !u.is_empty());
        let owner_uid = meta
            .owner_references
            .iter()
            .flatten()
            .find(|o| o.controller == Some(true) && o.kind == "RolloutBatch")
            .map(|o| &o.uid)
            .filter(|u| !u.is_empty());
        let batch_uid = match (label_uid, owner_uid) {
            (Some(a), Some(b)) if a != b => None,
            (a, b) => a.or(b).cloned(),
        };
        // Every container's status, init containers first.
        let statuses = || {
            status.into_iter().flat_map(|s| {
                s.init_container_statuses
                    .iter()
                    .flatten()
                    .chain(s.container_statuses.iter().flatten())
            })
        };
        // The earliest start of any container, init or regular.
        let started_at = statuses()
            .filter_map(|c| {
                let state = c.state.as_ref()?;
                state
                    .running
                    .as_ref()
                    .and_then(|r| r.started_at.as_ref())
                    .or_else(|| state.terminated.as_ref()?.started_at.as_ref())
                    .map(|t| t.0)
            })
            .min()
            .or_else(|| {
                // A pod that failed shows its containers' starts, if any
                // ran; a running or finished one without them ran anyway.
                matches!(phase, ProbePhase::Running | ProbePhase::Succeeded).then(|| {
                    status
                        .and_then(|s| s.start_time.as_ref())
                        .map(|t| t.0)
                        .or(meta.creation_timestamp.as_ref().map(|t| t.0))
                })?
            });
        let words = |reason: Option<&str>, message: Option<&str>| -> Option<String> {
            let words: Vec<&str> = [reason, message]
                .into_iter()
                .flatten()
                .filter(|w| !w.trim().is_empty())
                .collect();
            (!words.is_empty()).then(|| words.join(": "))
        };
        let waiting = statuses().find_map(|c| {
            let w = c.state.as_ref()?.waiting.as_ref()?;
            words(w.reason.as_deref(), w.message.as_deref())
        });
        let unscheduled = status
            .and_then(|s| s.conditions.as_ref())
            .into_iter()
            .flatten()
            .find(|c| c.type_ == "PodScheduled" && c.status == "False")
            .and_then(|c| words(c.reason.as_deref(), c.message.as_deref()));
        let pod_message = status.and_then(|s| words(s.reason.as_deref(), s.message.as_deref()));
        let verdict = verdict_of(statuses());
        let finished_at = matches!(phase, ProbePhase::Succeeded | ProbePhase::Failed)
            .then(|| {
                statuses()
                    .filter_map(|c| c.state.as_ref()?.terminated.as_ref()?.finished_at.as_ref())
                    .map(|t| t.0)
                    .max()
            })
            .flatten();
        ProbeView {
            name: meta.name.clone().unwrap_or_default(),
            node: spec.and_then(|s| s.node_name.clone()).unwrap_or_default(),
            attempt: meta
                .annotations
                .as_ref()
                .and_then(|a| a.get(keys::ATTEMPT))
                .and_then(|a| a.parse().ok())
                .unwrap_or(0),
            phase,
            batch_uid,
            containers: spec.map_or(0, |s| s.containers.len() as u32),
            init_containers: spec
                .and_then(|s| s.init_containers.as_ref())
                .map_or(0, |c| c.len() as u32),
            run: meta
                .annotations
                .as_ref()
                .and_then(|a| a.get(keys::STARTED))
                .and_then(|r| r.parse().ok()),
            terminated,
            message: (phase == ProbePhase::Failed)
                .then_some(pod_message.clone())
                .flatten(),
            created: meta.creation_timestamp.as_ref().map(|t| t.0),
            started_at,
            finished_at,
            not_running: waiting.or(unscheduled).or(pod_message),
            evicted: status
                .and_then(|s| s.reason.as_deref())
                .is_some_and(|r| matches!(r, "Evicted" | "Preempting")),
            deleting: meta.deletion_timestamp.is_some(),
            verdict,
            group: meta
                .labels
                .as_ref()
                .and_then(|l| l.get(keys::GROUP))
                .filter(|g| !g.is_empty())
                .cloned(),
        }
    }
}

/// The verdict a probe pod's containers wrote: the termination messages
/// that start with `{`. A probe writes one: several containers may carry
/// the same text (a stand-in that copies one message to all), but two
/// different ones are no verdict anyone can vouch for.
fn verdict_of<'a>(statuses: impl Iterator<Item = &'a ContainerStatus>) -> crate::verdict::Read {
    use crate::verdict::{Read, read};
    let mut found: Option<(&str, &str)> = None;
    for status in statuses {
        let Some(message) = status
            .state
            .as_ref()
            .and_then(|s| s.terminated.as_ref())
            .and_then(|t| t.message.as_deref())
            .filter(|m| m.trim_start().starts_with('{'))
        else {
            continue;
        };
        match found {
            None => found = Some((status.name.as_str(), message)),
            Some((_, first)) if first == message => {}
            Some((first_name, _)) => {
                return Read::Invalid(format!(
                    "containers {first_name} and {} wrote different verdicts; a probe writes one",
                    status.name
                ));
            }
        }
    }
    found.map_or(Read::Absent, |(_, message)| read(message))
}

/// Another pool or batch that may claim the same nodes.
#[derive(Clone, Debug, PartialEq)]
pub struct Claim {
    /// Its name.
    pub name: String,
    /// For a batch, the pool it belongs to; for a pool, `None`.
    pub pool: Option<String>,
    pub selector: LabelSelector,
}

/// An NVCRE Certification gpufleet made for a rack test group, as far as
/// the planner reads it (see `healthChecks.domainTest.nvcre`).
#[derive(Clone, Debug, PartialEq)]
pub struct CertView {
    pub name: String,
    /// Its group (`gpufleet.io/group`).
    pub group: Option<String>,
    /// The UID of the batch that made it (`gpufleet.io/batch-uid`).
    pub batch_uid: Option<String>,
    pub created: Option<Timestamp>,
    /// Nodes in its target (trays it keeps under test while it runs).
    pub size: u32,
    pub deleting: bool,
    pub outcome: CertOutcome,
}

/// What a Certification came to, in NVCRE's words.
#[derive(Clone, Debug, PartialEq)]
pub enum CertOutcome {
    /// Not finished (no `Succeeded` or `Failed` condition true).
    Running,
    /// Finished: `passed` when its `Succeeded` condition is true. `failed`:
    /// the nodes NVCRE failed, with its reason and message, read from the
    /// ConfigMap its status names; `message`: the finishing condition's.
    Finished {
        passed: bool,
        failed: Vec<FailedNode>,
        message: String,
    },
    /// Finished, but its failed nodes could not be read: why.
    Unreadable(String),
}

/// One node NVCRE failed.
#[derive(Clone, Debug, PartialEq, Eq, serde::Deserialize)]
pub struct FailedNode {
    pub name: String,
    #[serde(default)]
    pub reason: String,
    #[serde(default)]
    pub message: String,
}

impl CertView {
    /// Was this Certification made by the batch of this UID?
    pub fn made_by(&self, batch_uid: Option<&str>) -> bool {
        self.batch_uid.as_deref() == batch_uid
    }
}

/// Everything the planner observes for one batch.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Snapshot {
    /// Every node the pool's selector matches (of any batch): the planner
    /// needs the whole pool for the concurrency budget, domains and breaker.
    /// Shared with the node cache: a snapshot copies pointers, not nodes.
    pub nodes: Vec<Arc<NodeView>>,
    /// The batch's probe pods.
    pub probes: Vec<ProbeView>,
    /// The NVCRE Certifications of the probe namespace made for rack tests
    /// (`healthChecks.domainTest.nvcre`); empty when none.
    pub certifications: Vec<CertView>,
    /// The other pools (their selectors), to find nodes two pools claim.
    pub other_pools: Vec<Claim>,
    /// The other batches of any pool, to find nodes two batches claim.
    pub other_batches: Vec<Claim>,
    /// The API server refused this batch's probe pods lately (admission:
    /// Pod Security, pod validation, quota, RBAC), in its own words: no
    /// node starts until a probe can be created again.
    pub probe_rejection: Option<String>,
}

/// `t + d`, saturating at the ends of time: a timestamp from the cluster may
/// be anything jiff can hold (a node's kubelet may write
/// `gpufleet.io/since: 9999-12-30T21:59:00Z`), and no value may panic.
pub fn later(t: Timestamp, d: jiff::SignedDuration) -> Timestamp {
    t.checked_add(d).unwrap_or(if d.is_negative() {
        Timestamp::MIN
    } else {
        Timestamp::MAX
    })
}

/// `t - d`, saturating at the ends of time.
pub fn earlier(t: Timestamp, d: jiff::SignedDuration) -> Timestamp {
    t.checked_sub(d).unwrap_or(if d.is_negative() {
        Timestamp::MAX
    } else {
        Timestamp::MIN
    })
}

/// The longest a plan asks to wait before planning again: a timer far in
/// the future (at the end of time) must still fit a tokio timer.
pub const MAX_REQUEUE: std::time::Duration = std::time::Duration::from_secs(86_400);

/// How long from `now` until `at`, for a requeue: never negative, at most
/// [`MAX_REQUEUE`].
pub fn requeue_until(now: Timestamp, at: Timestamp) -> std::time::Duration {
    let secs = at.duration_since(now).as_secs_f64();
    if secs.is_nan() || secs <= 0.0 {
        std::time::Duration::ZERO
    } else {
        std::time::Duration::from_secs_f64(secs.min(MAX_REQUEUE.as_secs_f64()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_resource_version_alone_is_no_news_to_a_plan() {
        let mut a = NodeView::named("n1");
        a.labels.insert("nvidia.com/gpu.clique".into(), "c1".into());
        a.conditions.insert("Ready".into(), "True".into());
        a.resource_version = Some("1".into());
        let mut b = a.clone();
        b.resource_version = Some("2".into());
        assert!(a.same_for_planner(&b), "a heartbeat");
        let mut c = b.clone();
        c.conditions.insert("GpuXidError".into(), "True".into());
        assert!(!a.same_for_planner(&c), "a condition is news");
        let mut d = b.clone();
        d.taints.push(TaintView {
            key: "x".into(),
            value: None,
            effect: "NoSchedule".into(),
            time_added: None,
        });
        assert!(!a.same_for_planner(&d), "a taint is news");
        let mut e = b;
        e.state = Some(NodeState::Ready);
        assert!(!a.same_for_planner(&e), "a state is news");
    }
}
