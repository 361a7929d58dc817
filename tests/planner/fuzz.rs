//! Fuzzing the planner with what the cluster may hold: any GpuPool and
//! RolloutBatch the committed CRDs' schemas accept (generated from the
//! schemas' own bounds by `fuzz/schema.rs`; CEL rules are not applied, so
//! some of them the API server would refuse), over small fleets of Nodes
//! with arbitrary labels, conditions, taints and `gpufleet.io/*`
//! annotations, and probe Pods with arbitrary phases, container states,
//! reasons and times, at any time jiff can hold.
//!
//! Every such spec must deserialize (the schema accepting what gpufleet
//! cannot read is a bug of the schema), read the same with the schema's
//! defaults applied as without, and plan without panicking, with a status
//! that says where the rollout stands. Bounded for the suite;
//! `PROPTEST_CASES=5000` hunts longer.

mod schema;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, LazyLock};

use gpufleet::api::{GpuPool, RolloutBatch};
use gpufleet::keys;
use gpufleet::planner::preview::preview;
use gpufleet::planner::sim::{Outcome, Sim, healthy_node};
use gpufleet::planner::{
    Claim, NodeState, NodeView, ProbeView, Snapshot, awaited_probe, plan, plan_pool, probe_pod_name,
};
use k8s_openapi::api::core::v1::{
    Container, ContainerState, ContainerStateRunning, ContainerStateTerminated,
    ContainerStateWaiting, ContainerStatus, Node, NodeCondition, NodeSpec, NodeStatus, Pod,
    PodCondition, PodSpec, PodStatus, Taint,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{
    Condition, LabelSelector, ObjectMeta, OwnerReference, Time,
};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use proptest::prelude::*;
use proptest::sample::{Index, select};
use proptest::test_runner::{Config, TestRunner};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use crate::fixtures::{BATCH_UID, t0};
use schema::Options;

/// The longest a plan may ask to wait: a day.
const DAY: std::time::Duration = std::time::Duration::from_secs(86_400);

/// `default` cases, or `PROPTEST_CASES` when set (for a longer hunt).
fn cases(default: u32) -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Words free strings draw from: the fleet's labels and values, selector
/// operators, condition types, states.
const WORDS: &[&str] = &[
    "",
    "east",
    "west",
    "row1",
    "gpufleet.io/pool",
    "gpufleet.io/batch",
    "gpufleet.io/state",
    "gpufleet.io/onboarding",
    "nvidia.com/gpu.clique",
    "nvidia.com/gpu.product",
    "nvidia.com/gpu.count",
    "nvidia.com/gpu",
    "NVIDIA-GB200",
    "NVIDIA-GB300",
    "c0",
    "c1",
    "4",
    "570.133.20",
    "In",
    "NotIn",
    "Exists",
    "DoesNotExist",
    "Gt",
    "Lt",
    "Ready",
    "GpuXidError",
    "NVLinkDown",
    "True",
    "False",
    "busybox",
    "burn-in",
    "ready",
    "failed",
    "n-00",
];

/// Label pairs of the fleet, for generated `matchLabels`.
const PAIRS: &[(&str, &str)] = &[
    ("gpufleet.io/pool", "east"),
    ("gpufleet.io/batch", "row1"),
    ("nvidia.com/gpu.product", "NVIDIA-GB200"),
    ("nvidia.com/gpu.clique", "c0"),
    ("gpufleet.io/state", "ready"),
    ("gpufleet.io/pool", "west"),
];

/// Values that make a generated spec meet the fleet (two times in three
/// at their path): selectors that select it, its hardware, its domain
/// sizes, waves that CEL would accept.
const HINTS: &[(&str, &str)] = &[
    ("spec.nodeSelector", "{}"),
    (
        "spec.nodeSelector",
        r#"{"matchLabels": {"gpufleet.io/pool": "east"}}"#,
    ),
    (
        "spec.nodeSelector",
        r#"{"matchLabels": {"gpufleet.io/batch": "row1"}}"#,
    ),
    (
        "spec.nodeSelector",
        r#"{"matchExpressions": [{"key": "nvidia.com/gpu.clique", "operator": "In", "values": ["c0", "c1"]}]}"#,
    ),
    (
        "spec.nodeSelector",
        r#"{"matchExpressions": [{"key": "gpufleet.io/state", "operator": "DoesNotExist"}]}"#,
    ),
    ("spec.hardware.gpuProduct", r#"["NVIDIA-GB200"]"#),
    (
        "spec.hardware.gpuProduct",
        r#"["NVIDIA-GB300", "NVIDIA-GB200"]"#,
    ),
    ("spec.hardware.gpusPerNode", "4"),
    ("spec.hardware.minDriverVersion", r#""570.133.20""#),
    ("spec.hardware.minDriverVersion", r#""570.0""#),
    ("spec.topology.domainLabel", r#""nvidia.com/gpu.clique""#),
    ("spec.topology.domainLabel", r#""""#),
    ("spec.topology.nodesPerDomain", "1"),
    ("spec.topology.nodesPerDomain", "3"),
    ("spec.topology.nodesPerDomain", "4"),
    ("spec.topology.minHealthyNodesPerDomain", "1"),
    ("spec.topology.minHealthyNodesPerDomain", "2"),
    ("spec.poolRef", r#""east""#),
    ("spec.waves", r#"[{"percent": 100}]"#),
    (
        "spec.waves",
        r#"[{"nodes": 1}, {"percent": 50}, {"percent": 100}]"#,
    ),
    ("spec.waves", r#"[{"nodes": 2}, {"nodes": 5}]"#),
];

/// Specs: integers without a maximum go as far as the API server's int64.
const SPEC: Options = Options {
    unbounded_max: i64::MAX,
    words: WORDS,
    pairs: PAIRS,
    hints: HINTS,
};

/// Statuses are gpufleet's to write. Their counts have no maximum in the
/// schema and are `u32` in Rust: a status edited past u32::MAX through the
/// status subresource would not read (the object would turn InvalidSpec).
/// gpufleet never writes one, so here they stay within u32.
const STATUS: Options = Options {
    unbounded_max: u32::MAX as i64,
    ..SPEC
};

const POOL_CRD: &str = "gpupools.gpufleet.io.yaml";
const BATCH_CRD: &str = "rolloutbatches.gpufleet.io.yaml";

static POOL_SCHEMA: LazyLock<Value> = LazyLock::new(|| schema::crd_schema(POOL_CRD));
static BATCH_SCHEMA: LazyLock<Value> = LazyLock::new(|| schema::crd_schema(BATCH_CRD));

// Times.

/// Within a month of the fixtures' `t0`, where the fleet's times are.
pub fn near_t0() -> BoxedStrategy<Timestamp> {
    (-30 * 86_400i64..=30 * 86_400, 0..1_000_000_000i32)
        .prop_map(|(s, n)| t0() + SignedDuration::new(s, n))
        .boxed()
}

/// Any time jiff can hold, weighted to `t0` and the edges.
fn any_time() -> BoxedStrategy<Timestamp> {
    prop_oneof![
        2 => select(vec![
            Timestamp::MIN,
            Timestamp::MAX,
            Timestamp::MIN + SignedDuration::from_secs(1),
            Timestamp::MAX - SignedDuration::from_secs(1),
            "9999-12-30T21:59:00Z".parse().unwrap(),
            Timestamp::UNIX_EPOCH,
        ]),
        5 => near_t0(),
        2 => (Timestamp::MIN.as_second()..=Timestamp::MAX.as_second())
            .prop_map(|s| Timestamp::from_second(s).unwrap()),
    ]
    .boxed()
}

/// What a kubelet, a person or a script may write in an annotation or a
/// label gpufleet reads.
fn garbage() -> BoxedStrategy<String> {
    let words: Vec<String> = [
        "",
        " ",
        "0",
        "1",
        "2",
        "-1",
        "4294967295",
        "4294967296",
        "9223372036854775807",
        "-9223372036854775808",
        "18446744073709551616",
        "1e9",
        "NaN",
        "pending",
        "validating",
        "soaking",
        "ready",
        "failed",
        "held",
        "Ready",
        "row1",
        "east",
        BATCH_UID,
        "gpufleet.io/onboarding:NoSchedule",
        "gpufleet.io/onboarding:NoExecute,other:PreferNoSchedule",
        ":",
        ",,",
        ":NoSchedule",
        "k:",
        "\u{0}",
        "ü",
        "日本語",
        "2026-13-01T00:00:00Z",
        "-009999-01-02T01:59:59Z",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    prop_oneof![
        4 => select(words),
        2 => any_time().prop_map(|t| t.to_string()),
        1 => any::<u32>().prop_map(|n| n.to_string()),
        1 => schema::regex("(?s).{0,40}"),
        1 => Just("x".repeat(1000)),
    ]
    .boxed()
}

// Pools and batches.

/// A whole object of a kind: metadata, a spec and maybe a status, each as
/// the CRD's schema accepts.
fn object(kind: &'static str, name: &'static str, schema: &Value) -> BoxedStrategy<Value> {
    let spec = schema::value(&schema["properties"]["spec"], "spec", SPEC);
    let status = prop::option::of(schema::value(
        &schema["properties"]["status"],
        "status",
        STATUS,
    ));
    let generation = select(vec![1i64, 2, 7, i64::MAX]);
    (spec, status, generation)
        .prop_map(move |(spec, status, generation)| {
            let mut object = json!({
                "apiVersion": "gpufleet.io/v1alpha1",
                "kind": kind,
                "metadata": {"name": name, "uid": BATCH_UID, "generation": generation},
                "spec": spec,
            });
            if let Some(status) = status {
                object["status"] = status;
            }
            object
        })
        .boxed()
}

fn pools() -> BoxedStrategy<Value> {
    object("GpuPool", "east", &POOL_SCHEMA)
}

fn batches() -> BoxedStrategy<Value> {
    object("RolloutBatch", "row1", &BATCH_SCHEMA)
}

/// Reads what the schema accepted; a failure names the field and shows
/// the whole object.
fn read<T: DeserializeOwned>(object: &Value) -> Result<T, TestCaseError> {
    serde_path_to_error::deserialize(object.clone()).map_err(|e| {
        TestCaseError::fail(format!(
            "the CRD's schema accepts this object, but gpufleet cannot read it: {e}\n{}",
            serde_json::to_string_pretty(object).unwrap()
        ))
    })
}

/// Reads an object, and checks that the schema's defaults, which the API
/// server applies when it stores the object, read the same as gpufleet's
/// own (serde) defaults.
fn read_both<T: DeserializeOwned + PartialEq + std::fmt::Debug>(
    object: &Value,
    schema: &Value,
) -> Result<T, TestCaseError> {
    let read_as_is: T = read(object)?;
    let mut defaulted = object.clone();
    schema::with_defaults(schema, &mut defaulted);
    let read_defaulted: T = read(&defaulted)?;
    prop_assert_eq!(
        &read_as_is,
        &read_defaulted,
        "the schema's defaults read differently from serde's: {}",
        serde_json::to_string_pretty(object).unwrap()
    );
    Ok(read_defaulted)
}

// Nodes.

/// One change to a Node.
#[derive(Clone, Debug)]
enum NodeOp {
    Label(String, Option<String>),
    Annotation(String, Option<String>),
    Condition {
        type_: String,
        status: String,
        since: Option<Timestamp>,
    },
    Taint {
        key: String,
        value: Option<String>,
        effect: String,
        added: Option<Timestamp>,
    },
    Allocatable(Option<String>),
    Unschedulable(bool),
    Created(Timestamp),
    Deleting(Timestamp),
    ResourceVersion(String),
}

fn label_key() -> BoxedStrategy<String> {
    prop_oneof![
        3 => select(vec![
            keys::STATE,
            keys::GPU_PRODUCT,
            keys::GPU_COUNT,
            keys::DRIVER_VERSION,
            "nvidia.com/gpu.clique",
            "gpufleet.io/pool",
            "gpufleet.io/batch",
        ])
        .prop_map(String::from),
        1 => select(WORDS).prop_map(String::from),
    ]
    .boxed()
}

fn annotation_key() -> BoxedStrategy<String> {
    select(vec![
        keys::BATCH,
        keys::BATCH_UID,
        keys::WAVE,
        keys::SINCE,
        keys::STARTED,
        keys::REASON,
        keys::ATTEMPT,
        keys::TAINT,
        keys::RECORDED_STATE,
        keys::ADMITTED,
        keys::SUSPECT,
        keys::PROBE_MISSES,
        keys::RETRY,
        "gpufleet.io/other",
    ])
    .prop_map(String::from)
    .boxed()
}

fn word_or_garbage() -> BoxedStrategy<String> {
    prop_oneof![select(WORDS).prop_map(String::from), garbage()].boxed()
}

fn node_op() -> BoxedStrategy<NodeOp> {
    let condition_type = prop_oneof![
        2 => select(vec!["Ready", "GpuXidError", "NVLinkDown"]).prop_map(String::from),
        1 => word_or_garbage(),
    ];
    let condition_status = prop_oneof![
        3 => select(vec!["True", "False", "Unknown"]).prop_map(String::from),
        1 => word_or_garbage(),
    ];
    let effect = prop_oneof![
        3 => select(vec!["NoSchedule", "PreferNoSchedule", "NoExecute"]).prop_map(String::from),
        1 => word_or_garbage(),
    ];
    let taint_key = prop_oneof![
        2 => Just("gpufleet.io/onboarding".to_string()),
        1 => word_or_garbage(),
    ];
    prop_oneof![
        3 => (label_key(), prop::option::of(word_or_garbage()))
            .prop_map(|(k, v)| NodeOp::Label(k, v)),
        4 => (annotation_key(), prop::option::of(word_or_garbage()))
            .prop_map(|(k, v)| NodeOp::Annotation(k, v)),
        2 => (condition_type, condition_status, prop::option::of(any_time()))
            .prop_map(|(type_, status, since)| NodeOp::Condition { type_, status, since }),
        2 => (taint_key, prop::option::of(garbage()), effect, prop::option::of(any_time()))
            .prop_map(|(key, value, effect, added)| NodeOp::Taint { key, value, effect, added }),
        1 => prop::option::of(select(vec![
            "4", "0", "8", "-1", "4294967295", "4294967296", "1k", "4.5", "", "x",
        ]).prop_map(String::from))
            .prop_map(NodeOp::Allocatable),
        1 => any::<bool>().prop_map(NodeOp::Unschedulable),
        1 => any_time().prop_map(NodeOp::Created),
        1 => any_time().prop_map(NodeOp::Deleting),
        1 => garbage().prop_map(NodeOp::ResourceVersion),
    ]
    .boxed()
}

/// A node of the fleet: its name's form, its domain, the state gpufleet
/// left it in (with the annotations that go with it) and changes on top.
#[derive(Clone, Debug)]
struct NodeCase {
    name: u8,
    domain: u8,
    state: Option<NodeState>,
    since: Timestamp,
    ops: Vec<NodeOp>,
}

fn node_case() -> BoxedStrategy<NodeCase> {
    let name = prop_oneof![8 => Just(0u8), 1 => Just(1), 1 => Just(2)];
    // In progress most: nodes with probes to read or a soak to end are
    // the deepest.
    let state = prop_oneof![
        2 => Just(None),
        2 => Just(Some(NodeState::Validating)),
        1 => Just(Some(NodeState::Soaking)),
        1 => select(NodeState::ALL.to_vec()).prop_map(Some),
    ];
    (
        name,
        0..3u8,
        state,
        any_time(),
        prop::collection::vec(node_op(), 0..6),
    )
        .prop_map(|(name, domain, state, since, ops)| NodeCase {
            name,
            domain,
            state,
            since,
            ops,
        })
        .boxed()
}

/// A Node as the API server returns it, for a view built by hand: what
/// `NodeView::from` reads back as the same view.
fn node_object(view: &NodeView) -> Node {
    Node {
        metadata: ObjectMeta {
            name: Some(view.name.to_string()),
            labels: Some(view.labels.to_map()),
            ..Default::default()
        },
        spec: Some(NodeSpec::default()),
        status: Some(NodeStatus {
            conditions: Some(
                view.conditions
                    .iter()
                    .map(|(t, s)| NodeCondition {
                        type_: t.to_string(),
                        status: s.to_string(),
                        ..Default::default()
                    })
                    .collect(),
            ),
            allocatable: view.allocatable_gpus_raw.as_ref().map(|raw| {
                [(keys::GPU_RESOURCE.to_string(), Quantity(raw.to_string()))]
                    .into_iter()
                    .collect()
            }),
            ..Default::default()
        }),
    }
}

fn build_node(i: usize, case: &NodeCase) -> Node {
    let name = match case.name {
        0 => format!("n-{i:02}"),
        // The longest name a Node can have.
        1 => format!("{}-{i:02}", "n".repeat(250)),
        _ => format!("ñødé-{i}"),
    };
    let clique = format!("c{}", case.domain);
    let mut node = node_object(&healthy_node(&name, &clique, "east", "row1"));
    let meta = &mut node.metadata;
    let annotations = meta.annotations.get_or_insert_with(BTreeMap::new);
    if let Some(state) = case.state {
        // As gpufleet leaves a node it started in batch row1.
        let since = case.since.to_string();
        meta.labels
            .get_or_insert_with(BTreeMap::new)
            .insert(keys::STATE.into(), state.as_str().into());
        for (k, v) in [
            (keys::RECORDED_STATE, state.as_str()),
            (keys::BATCH, "row1"),
            (keys::BATCH_UID, BATCH_UID),
            (keys::WAVE, "1"),
            (keys::SINCE, &since),
            (keys::STARTED, &since),
            (keys::ATTEMPT, "1"),
            (keys::TAINT, "gpufleet.io/onboarding:NoSchedule"),
        ] {
            annotations.insert(k.into(), v.into());
        }
        match state {
            NodeState::Ready => {
                annotations.insert(keys::ADMITTED.into(), since.clone());
            }
            NodeState::Failed | NodeState::Held => {
                annotations.insert(keys::REASON.into(), "probe failed: exit 1".into());
            }
            _ => {}
        }
        if state != NodeState::Ready {
            node.spec.as_mut().unwrap().taints = Some(vec![Taint {
                key: "gpufleet.io/onboarding".into(),
                effect: "NoSchedule".into(),
                ..Default::default()
            }]);
        }
    }
    for op in &case.ops {
        apply(&mut node, op);
    }
    node
}

fn apply(node: &mut Node, op: &NodeOp) {
    let meta = &mut node.metadata;
    let spec = node.spec.get_or_insert_with(Default::default);
    let status = node.status.get_or_insert_with(Default::default);
    match op {
        NodeOp::Label(k, v) => {
            let labels = meta.labels.get_or_insert_with(BTreeMap::new);
            match v {
                Some(v) => labels.insert(k.clone(), v.clone()),
                None => labels.remove(k),
            };
        }
        NodeOp::Annotation(k, v) => {
            let annotations = meta.annotations.get_or_insert_with(BTreeMap::new);
            match v {
                Some(v) => annotations.insert(k.clone(), v.clone()),
                None => annotations.remove(k),
            };
        }
        NodeOp::Condition {
            type_,
            status: s,
            since,
        } => {
            let conditions = status.conditions.get_or_insert_with(Vec::new);
            conditions.retain(|c| &c.type_ != type_);
            conditions.push(NodeCondition {
                type_: type_.clone(),
                status: s.clone(),
                last_transition_time: since.map(Time),
                ..Default::default()
            });
        }
        NodeOp::Taint {
            key,
            value,
            effect,
            added,
        } => spec.taints.get_or_insert_with(Vec::new).push(Taint {
            key: key.clone(),
            value: value.clone(),
            effect: effect.clone(),
            time_added: added.map(Time),
        }),
        NodeOp::Allocatable(v) => {
            let allocatable = status.allocatable.get_or_insert_with(BTreeMap::new);
            match v {
                Some(v) => allocatable.insert(keys::GPU_RESOURCE.into(), Quantity(v.clone())),
                None => allocatable.remove(keys::GPU_RESOURCE),
            };
        }
        NodeOp::Unschedulable(u) => spec.unschedulable = Some(*u),
        NodeOp::Created(t) => meta.creation_timestamp = Some(Time(*t)),
        NodeOp::Deleting(t) => meta.deletion_timestamp = Some(Time(*t)),
        NodeOp::ResourceVersion(v) => meta.resource_version = Some(v.clone()),
    }
}

// Probe pods.

/// How a container of a probe pod stands.
#[derive(Clone, Debug)]
enum Stand {
    Unknown,
    Waiting(Option<String>, Option<String>),
    Running(Option<Timestamp>),
    Terminated {
        exit_code: i32,
        reason: Option<String>,
        message: Option<String>,
        started: Option<Timestamp>,
    },
}

fn stand() -> BoxedStrategy<Stand> {
    let exit_code = prop_oneof![
        3 => Just(0),
        2 => select(vec![1, 2, 137, 143, -1, i32::MIN, i32::MAX]),
        1 => any::<i32>(),
    ];
    let words = || prop::option::of(word_or_garbage());
    prop_oneof![
        1 => Just(Stand::Unknown),
        1 => (words(), words()).prop_map(|(r, m)| Stand::Waiting(r, m)),
        2 => prop::option::of(any_time()).prop_map(Stand::Running),
        3 => (exit_code, words(), words(), prop::option::of(any_time())).prop_map(
            |(exit_code, reason, message, started)| Stand::Terminated {
                exit_code,
                reason,
                message,
                started,
            },
        ),
    ]
    .boxed()
}

fn container_status(name: String, stand: Stand) -> ContainerStatus {
    let state = match stand {
        Stand::Unknown => None,
        Stand::Waiting(reason, message) => Some(ContainerState {
            waiting: Some(ContainerStateWaiting { reason, message }),
            ..Default::default()
        }),
        Stand::Running(started) => Some(ContainerState {
            running: Some(ContainerStateRunning {
                started_at: started.map(Time),
            }),
            ..Default::default()
        }),
        Stand::Terminated {
            exit_code,
            reason,
            message,
            started,
        } => Some(ContainerState {
            terminated: Some(ContainerStateTerminated {
                exit_code,
                reason,
                message,
                started_at: started.map(Time),
                ..Default::default()
            }),
            ..Default::default()
        }),
    };
    ContainerStatus {
        name,
        state,
        ..Default::default()
    }
}

/// A probe pod: whose, under which name, and how it stands.
#[derive(Clone, Debug)]
struct PodCase {
    /// Its node, among the validating ones (those that wait for a probe)
    /// when `validating` and there are any, else among all.
    node: Index,
    validating: bool,
    /// 0: the name the node awaits; 1: its attempt's name; 2: `other`.
    name: u8,
    other: String,
    attempt: Option<String>,
    /// `None`: the run of its node (`gpufleet.io/started`), as gpufleet
    /// makes it; else this annotation.
    run: Option<Option<String>>,
    uid_label: Option<String>,
    owner: Option<(String, String, Option<bool>)>,
    phase: Option<String>,
    containers: Vec<String>,
    init_containers: Vec<String>,
    statuses: Vec<(String, Stand)>,
    init_statuses: Vec<(String, Stand)>,
    scheduled: Option<(String, Option<String>, Option<String>)>,
    reason: Option<String>,
    message: Option<String>,
    times: (Option<Timestamp>, Option<Timestamp>, Option<Timestamp>),
}

fn pod_case() -> BoxedStrategy<PodCase> {
    let container_name = || select(vec!["burn-in", "init", "sidecar", ""]).prop_map(String::from);
    let statuses = move || prop::collection::vec((container_name(), stand()), 0..3);
    let uid = prop_oneof![
        3 => Just(BATCH_UID.to_string()),
        1 => select(vec!["", "6f1c2a7e-0000-4000-8000-000000000002"]).prop_map(String::from),
    ];
    let owner = (
        select(vec!["RolloutBatch", "GpuPool", "Job"]).prop_map(String::from),
        uid.clone(),
        prop::option::of(any::<bool>()),
    );
    let phase = prop_oneof![
        4 => select(vec!["Pending", "Running", "Succeeded", "Failed", "Unknown"]).prop_map(String::from),
        1 => word_or_garbage(),
    ];
    let reason = prop_oneof![
        2 => select(vec!["Evicted", "Preempting", "DeadlineExceeded", "UnexpectedAdmissionError"])
            .prop_map(String::from),
        1 => word_or_garbage(),
    ];
    let attempt = prop_oneof![
        3 => select(vec!["1", "2", "0", "11", "4294967295"]).prop_map(String::from),
        1 => garbage(),
    ];
    let time = || prop::option::of(any_time());
    let deleted = prop_oneof![7 => Just(None), 1 => any_time().prop_map(Some)];
    (
        (
            (
                any::<Index>(),
                prop_oneof![2 => Just(true), 1 => Just(false)],
            ),
            prop_oneof![2 => Just(0u8), 1 => Just(1), 1 => Just(2)],
            word_or_garbage(),
            prop::option::of(attempt),
            prop_oneof![2 => Just(None), 1 => prop::option::of(garbage()).prop_map(Some)],
            prop::option::of(uid),
        ),
        (
            prop::option::of(owner),
            prop::option::of(phase),
            prop::collection::vec(container_name(), 0..3),
            prop::collection::vec(container_name(), 0..2),
            statuses(),
            statuses(),
        ),
        (
            prop::option::of((
                select(vec!["False", "True"]).prop_map(String::from),
                prop::option::of(word_or_garbage()),
                prop::option::of(word_or_garbage()),
            )),
            prop::option::of(reason),
            prop::option::of(word_or_garbage()),
            (time(), time(), deleted),
        ),
    )
        .prop_map(
            |(
                ((node, validating), name, other, attempt, run, uid_label),
                (owner, phase, containers, init_containers, statuses, init_statuses),
                (scheduled, reason, message, times),
            )| PodCase {
                node,
                validating,
                name,
                other,
                attempt,
                run,
                uid_label,
                owner,
                phase,
                containers,
                init_containers,
                statuses,
                init_statuses,
                scheduled,
                reason,
                message,
                times,
            },
        )
        .boxed()
}

fn build_pod(case: &PodCase, nodes: &[Arc<NodeView>]) -> Pod {
    let validating: Vec<&Arc<NodeView>> = nodes
        .iter()
        .filter(|n| n.state == Some(NodeState::Validating))
        .collect();
    let view = match (case.validating && !validating.is_empty(), nodes.is_empty()) {
        (true, _) => Some(validating[case.node.index(validating.len())]),
        (false, false) => Some(&nodes[case.node.index(nodes.len())]),
        (false, true) => None,
    };
    let node_name = view.map_or("n-00".to_string(), |v| v.name.to_string());
    let attempt = case
        .attempt
        .as_deref()
        .and_then(|a| a.parse().ok())
        .unwrap_or(1);
    let name = match (case.name, view) {
        (0, Some(view)) => awaited_probe(view),
        (0 | 1, _) => probe_pod_name(&node_name, attempt),
        _ => case.other.clone(),
    };
    let mut annotations = BTreeMap::new();
    if let Some(a) = &case.attempt {
        annotations.insert(keys::ATTEMPT.to_string(), a.clone());
    }
    let run = match &case.run {
        None => view.and_then(|v| v.started.get()).map(|t| t.to_string()),
        Some(run) => run.clone(),
    };
    if let Some(run) = run {
        annotations.insert(keys::STARTED.to_string(), run);
    }
    let labels = case.uid_label.as_ref().map(|u| {
        [(keys::BATCH_UID.to_string(), u.clone())]
            .into_iter()
            .collect()
    });
    let owner_references = case.owner.as_ref().map(|(kind, uid, controller)| {
        vec![OwnerReference {
            api_version: "gpufleet.io/v1alpha1".into(),
            kind: kind.clone(),
            name: "row1".into(),
            uid: uid.clone(),
            controller: *controller,
            ..Default::default()
        }]
    });
    let container = |name: &String| Container {
        name: name.clone(),
        ..Default::default()
    };
    let (start, created, deleted) = case.times;
    Pod {
        metadata: ObjectMeta {
            name: Some(name),
            annotations: Some(annotations),
            labels,
            owner_references,
            creation_timestamp: created.map(Time),
            deletion_timestamp: deleted.map(Time),
            ..Default::default()
        },
        spec: Some(PodSpec {
            node_name: Some(node_name),
            containers: case.containers.iter().map(container).collect(),
            init_containers: (!case.init_containers.is_empty())
                .then(|| case.init_containers.iter().map(container).collect()),
            ..Default::default()
        }),
        status: Some(PodStatus {
            phase: case.phase.clone(),
            container_statuses: Some(
                case.statuses
                    .iter()
                    .map(|(n, s)| container_status(n.clone(), s.clone()))
                    .collect(),
            ),
            init_container_statuses: Some(
                case.init_statuses
                    .iter()
                    .map(|(n, s)| container_status(n.clone(), s.clone()))
                    .collect(),
            ),
            conditions: case.scheduled.as_ref().map(|(status, reason, message)| {
                vec![PodCondition {
                    type_: "PodScheduled".into(),
                    status: status.clone(),
                    reason: reason.clone(),
                    message: message.clone(),
                    ..Default::default()
                }]
            }),
            reason: case.reason.clone(),
            message: case.message.clone(),
            start_time: start.map(Time),
            ..Default::default()
        }),
    }
}

// Other pools and batches.

fn claims() -> BoxedStrategy<Vec<(String, Value)>> {
    let selector = schema::value(
        &POOL_SCHEMA["properties"]["spec"]["properties"]["nodeSelector"],
        "spec.nodeSelector",
        SPEC,
    );
    prop::collection::vec((select(WORDS).prop_map(String::from), selector), 0..3).boxed()
}

fn to_claims(claims: &[(String, Value)], pool: Option<&str>) -> Result<Vec<Claim>, TestCaseError> {
    claims
        .iter()
        .map(|(name, selector)| {
            Ok(Claim {
                name: name.clone(),
                pool: pool.map(String::from),
                selector: read::<LabelSelector>(selector)?,
            })
        })
        .collect()
}

// The checks.

/// Each condition type at most once, each with a status of True or False;
/// `want` present.
fn conditions_say(conditions: &[Condition], want: &[&str]) -> Result<(), TestCaseError> {
    let mut types = BTreeSet::new();
    for c in conditions {
        prop_assert!(
            types.insert(c.type_.as_str()),
            "{} twice: {conditions:?}",
            c.type_
        );
        prop_assert!(
            c.status == "True" || c.status == "False",
            "{} is {}",
            c.type_,
            c.status
        );
        prop_assert!(!c.reason.is_empty(), "{} has no reason", c.type_);
    }
    for w in want {
        prop_assert!(types.contains(w), "no {w} condition: {conditions:?}");
    }
    Ok(())
}

fn is_true(conditions: &[Condition], type_: &str) -> bool {
    conditions
        .iter()
        .any(|c| c.type_ == type_ && c.status == "True")
}

/// One case: the pool and batch read (with and without the schema's
/// defaults), the fleet and probes built, then a plan whose status says
/// where the rollout stands (Ready, Reconciling and Stalled, each once, a
/// gate), asks to look again within a day and patches only nodes it saw;
/// the pool's status with its conditions; a preview.
#[allow(clippy::too_many_arguments)]
fn plans_anything(
    pool: &Value,
    batch: &Value,
    nodes: &[NodeCase],
    pods: &[PodCase],
    other_pools: &[(String, Value)],
    other_batches: &[(String, Value)],
    probe_rejection: &Option<String>,
    now: Timestamp,
) -> Result<(), TestCaseError> {
    let pool: GpuPool = read_both(pool, &POOL_SCHEMA)?;
    let batch: RolloutBatch = read_both(batch, &BATCH_SCHEMA)?;
    let nodes: Vec<Arc<NodeView>> = nodes
        .iter()
        .enumerate()
        .map(|(i, n)| Arc::new(NodeView::from(&build_node(i, n))))
        .collect();
    let probes = pods
        .iter()
        .map(|p| ProbeView::from(&build_pod(p, &nodes)))
        .collect();
    let snapshot = Snapshot {
        nodes,
        probes,
        other_pools: to_claims(other_pools, None)?,
        other_batches: to_claims(other_batches, Some("east"))?,
        probe_rejection: probe_rejection.clone(),
        certifications: Vec::new(),
    };

    let planned = plan(&pool, &batch, &snapshot, now);
    let status = &planned.status;
    conditions_say(&status.conditions, &["Ready", "Reconciling", "Stalled"])?;
    prop_assert!(
        !(is_true(&status.conditions, "Ready") && is_true(&status.conditions, "Stalled")),
        "Ready and Stalled at once: {:?}",
        status.conditions
    );
    prop_assert!(status.gate.is_some(), "no gate: {status:?}");
    prop_assert_eq!(status.observed_generation, batch.metadata.generation);
    if let Some(after) = planned.requeue_after {
        prop_assert!(after <= DAY, "requeue after {after:?}");
    }
    let names: BTreeSet<&str> = snapshot.nodes.iter().map(|n| n.name.as_str()).collect();
    for patch in planned.node_patches() {
        prop_assert!(
            names.contains(patch.node.as_str()),
            "a patch of {}, not in the snapshot",
            patch.node
        );
    }

    let pool_plan = plan_pool(&pool, &snapshot.nodes, now);
    conditions_say(
        &pool_plan.status.conditions,
        &["Ready", "CircuitBreakerTripped"],
    )?;
    if let Some(after) = pool_plan.requeue_after {
        prop_assert!(after <= DAY, "pool requeue after {after:?}");
    }

    let _ = preview(&pool, &batch, &snapshot.nodes);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: cases(256),
        max_shrink_iters: 2048,
        ..ProptestConfig::default()
    })]

    /// Anything the CRDs accept, over any fleet, at any time: read, planned,
    /// the pool's status made and previewed without a panic.
    #[test]
    fn every_spec_the_crds_accept_reads_and_plans(
        pool in pools(),
        batch in batches(),
        nodes in prop::collection::vec(node_case(), 0..10),
        pods in prop::collection::vec(pod_case(), 0..6),
        (other_pools, other_batches) in (claims(), claims()),
        probe_rejection in prop::option::of(word_or_garbage()),
        now in any_time(),
    ) {
        plans_anything(&pool, &batch, &nodes, &pods, &other_pools, &other_batches, &probe_rejection, now)?;
    }
}

/// How the simulation's probes end: by node, attempt and a seed.
fn outcome(seed: u64) -> impl Fn(&str, u32) -> Outcome + 'static {
    move |node, attempt| {
        let roll = keys::stable_hash(format!("{seed}/{node}/{attempt}").as_bytes()) % 8;
        match roll {
            0 => Outcome::Fail {
                exit_code: 1,
                message: "XID 79".into(),
            },
            1 => Outcome::Hang,
            2 => Outcome::NeverStarts,
            _ => Outcome::Pass,
        }
    }
}

/// A simulation of a generated pool and batch over a healthy fleet: the
/// spec's hardware and selectors are the fleet's, the batch is neither
/// paused nor waiting for approval and no unhealthy condition matches
/// `Ready`, so that nodes get deep into the rollout; topology, probe, soak,
/// breaker, waves and budgets are as generated.
fn simulation(
    pool: &Value,
    batch: &Value,
    domains: usize,
    per_domain: usize,
    seed: u64,
) -> Result<Sim, TestCaseError> {
    let mut pool: GpuPool = read(pool)?;
    let mut batch: RolloutBatch = read(batch)?;
    pool.spec.hardware = crate::fixtures::pool().spec.hardware;
    pool.spec.node_selector = LabelSelector::default();
    pool.spec
        .health_checks
        .unhealthy_conditions
        .retain(|c| c.type_ != "Ready");
    batch.spec.node_selector = LabelSelector::default();
    batch.spec.paused = false;
    batch.spec.approved_waves = None;
    // The simulation starts from a fresh status and keeps its own.
    pool.status = None;
    batch.status = None;
    let nodes = gpufleet::planner::sim::fleet("n", domains, per_domain, "east", "row1");
    Ok(Sim::new(
        pool,
        batch,
        Snapshot {
            nodes: nodes.into_iter().map(Arc::new).collect(),
            ..Default::default()
        },
        t0(),
        outcome(seed),
    ))
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: cases(128),
        ..ProptestConfig::default()
    })]

    /// Rollouts of generated specs (see `simulation`) run to their end,
    /// or 60 steps, without a panic.
    #[test]
    fn rollouts_of_any_spec_run_without_panic(
        pool in pools(),
        batch in batches(),
        domains in 1..4usize,
        per_domain in 1..5usize,
        seed in any::<u64>(),
    ) {
        let mut sim = simulation(&pool, &batch, domains, per_domain, seed)?;
        for _ in 0..60 {
            let plan = sim.step();
            if let Some(after) = plan.requeue_after {
                prop_assert!(after <= DAY, "requeue after {after:?}");
            }
            let _ = plan_pool(&sim.pool, &sim.snapshot.nodes, sim.now);
            sim.finish_probes();
            if plan.changes().next().is_none() {
                match plan.requeue_after {
                    Some(after) => sim.advance((after.as_secs_f64().ceil() as i64).max(1)),
                    None => break,
                }
            }
        }
    }
}

/// The generator covers the schemas: over 512 specs and statuses of each
/// kind, from a fixed seed, every field is present at least once, every
/// integer at its minimum and (where the schema has one) its maximum, every
/// enum value, every null of a nullable field, both arms of an
/// int-or-string, and every string at its `maxLength`; and the checker,
/// replaying the schema's rules, finds nothing wrong with any of them.
#[test]
fn the_generator_covers_the_schemas() {
    for (file, schema) in [(POOL_CRD, &*POOL_SCHEMA), (BATCH_CRD, &*BATCH_SCHEMA)] {
        for (part, opts) in [("spec", SPEC), ("status", STATUS)] {
            let sub = &schema["properties"][part];
            let strategy = schema::value(sub, part, opts);
            let mut runner = TestRunner::new_with_rng(
                Config {
                    max_local_rejects: 1_000_000,
                    ..Config::default()
                },
                proptest::test_runner::TestRng::deterministic_rng(
                    proptest::test_runner::RngAlgorithm::ChaCha,
                ),
            );
            let mut seen = BTreeSet::new();
            for _ in 0..512 {
                let value = strategy.new_tree(&mut runner).unwrap().current();
                if let Err(e) = schema::check(sub, &value, part, opts, &mut seen) {
                    panic!(
                        "{file}: the generator made what the schema refuses: {e}\n{}",
                        serde_json::to_string_pretty(&value).unwrap()
                    );
                }
            }
            let mut expected = BTreeSet::new();
            schema::expectations(sub, part, &mut expected);
            let missed: Vec<&String> = expected.difference(&seen).collect();
            assert!(
                missed.is_empty(),
                "{file}: 512 generated {part}s never had {missed:#?}"
            );
        }
    }
}

/// The checker is not stricter than the API server: the fixtures and the
/// examples pass it (a checker that refused them would prove nothing).
#[test]
fn the_checker_accepts_the_fixtures_and_examples() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut objects: Vec<(String, Value)> = vec![
        (
            "fixtures::POOL".into(),
            serde_norway::from_str(crate::fixtures::POOL).unwrap(),
        ),
        (
            "fixtures::BATCH".into(),
            serde_norway::from_str(crate::fixtures::BATCH).unwrap(),
        ),
    ];
    for entry in std::fs::read_dir(root.join("examples")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "yaml") {
            let text = std::fs::read_to_string(&path).unwrap();
            for doc in serde_norway::Deserializer::from_str(&text) {
                let value = Value::deserialize(doc).unwrap();
                objects.push((path.display().to_string(), value));
            }
        }
    }
    let mut kinds = BTreeSet::new();
    for (name, object) in &objects {
        let schema = match object["kind"].as_str() {
            Some("GpuPool") => &*POOL_SCHEMA,
            Some("RolloutBatch") => &*BATCH_SCHEMA,
            _ => continue,
        };
        kinds.insert(object["kind"].as_str().unwrap().to_string());
        let mut seen = BTreeSet::new();
        let result = schema::check(
            &schema["properties"]["spec"],
            &object["spec"],
            "spec",
            SPEC,
            &mut seen,
        );
        assert_eq!(result, Ok(()), "{name}");
    }
    assert_eq!(kinds.len(), 2, "both kinds checked");
}

/// `node_object` loses nothing of a hand-built view.
#[test]
fn node_objects_read_back_as_their_views() {
    let view = healthy_node("n-00", "c0", "east", "row1");
    assert_eq!(NodeView::from(&node_object(&view)), view);
}

// What the fuzz found, kept as plain tests.

/// `maxFailuresPerWave` at the schema's maximum reads and plans, and the
/// schema refuses one more: it used to accept any count, and one past
/// int32 then failed to read as an `IntOrString`.
#[test]
fn the_largest_failure_count_the_schema_accepts_reads() {
    let field = &BATCH_SCHEMA["properties"]["spec"]["properties"]["maxFailuresPerWave"];
    let max = field["maximum"]
        .as_f64()
        .expect("maxFailuresPerWave has a maximum") as i64;
    let mut object: Value = serde_norway::from_str(crate::fixtures::BATCH).unwrap();
    object["spec"]["maxFailuresPerWave"] = max.into();
    let batch: RolloutBatch = serde_json::from_value(object).expect("the maximum reads");
    let snapshot = Snapshot {
        nodes: crate::fixtures::nodes(1)
            .into_iter()
            .map(Arc::new)
            .collect(),
        ..Default::default()
    };
    let _ = plan(&crate::fixtures::pool(), &batch, &snapshot, t0());
    let mut seen = BTreeSet::new();
    let past = schema::check(
        field,
        &Value::from(max + 1),
        "maxFailuresPerWave",
        SPEC,
        &mut seen,
    );
    assert!(past.is_err(), "the schema accepts {}", max + 1);
}

/// Admitted nodes are never checked against `gpusPerNode` again, and an
/// allocatable may say up to u32::MAX GPUs: the pool's and the preview's
/// GPU sums saturate (they overflowed).
#[test]
fn gpu_sums_saturate() {
    let mut nodes = crate::fixtures::nodes(1);
    for node in &mut nodes {
        node.state = Some(NodeState::Ready);
        node.labels.insert(keys::STATE.into(), "ready".into());
        node.allocatable_gpus = Some(u32::MAX);
        node.allocatable_gpus_raw = Some(u32::MAX.to_string().into());
    }
    let pool = crate::fixtures::pool();
    let status = plan_pool(&pool, &nodes, t0()).status;
    assert_eq!((status.gpus.ready, status.gpus.total), (u32::MAX, u32::MAX));
    let preview = preview(&pool, &crate::fixtures::batch(), &nodes);
    assert_eq!(preview.summary.gpus, u32::MAX);
}
