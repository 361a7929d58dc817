//! A simulated GB200/GB300 fleet for the test bed, the demo and the
//! benchmarks: kwok Nodes labelled as GPU Feature Discovery labels real
//! ones, and a stand-in for the burn-in that decides each probe's outcome.
//!
//! kwok plays the kubelet: it makes the Nodes Ready and runs pods bound to
//! them. A probe pod ends when it carries `gpufleet.io/probe-result`
//! (`pass` or `fail`; see `tests/testbed/kwok-stages.yaml`). [`burn_in`]
//! gives every new probe pod that annotation, taken from its node: a node
//! annotated `sim.gpufleet.io/probe-result: fail` fails its probes, with the
//! message in `sim.gpufleet.io/probe-message`.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{Node, NodeSpec, NodeStatus, Pod};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::json;
use tracing::debug;

use crate::keys;

/// Node annotation: the outcome of this node's probes, `pass` (default) or `fail`.
pub const SIM_PROBE_RESULT: &str = "sim.gpufleet.io/probe-result";
/// Node annotation: the termination message of this node's probes.
pub const SIM_PROBE_MESSAGE: &str = "sim.gpufleet.io/probe-message";
/// Node annotation: the VBIOS version its probe's verdict reports.
pub const SIM_VBIOS: &str = "sim.gpufleet.io/vbios";
/// Node annotation: a fabric fault its probe's verdict reports on every
/// GPU, as `field=value` pairs separated by `;` (`cliqueId=9`,
/// `clusterUuid=…`, `state=In Progress`, `status=Insufficient Resources`,
/// `health=Unhealthy`).
pub const SIM_FABRIC: &str = "sim.gpufleet.io/fabric";
/// Node annotation (any value): a tray with a bad NVLink port. Its own
/// probe passes; every rack test group it is in fails.
pub const SIM_NVLINK_FAULT: &str = "sim.gpufleet.io/nvlink-fault";
/// Node annotation (any value): the tray's rack has a bad switch tray:
/// every rack test group with a tray of that rack fails.
pub const SIM_RACK_FAULT: &str = "sim.gpufleet.io/rack-fault";
/// Node annotation: what NVCRE's stand-in reports for this tray in every
/// Certification it is in, as `Reason: message` (`HardwareFailureDetected:
/// …`, `ThresholdViolation: …`): the tray alone is named failed.
pub const SIM_NVCRE_FAILURE: &str = "sim.gpufleet.io/nvcre-failure";
/// Node annotation (any value): its passing probes leave plain words, no
/// verdict (the benchmark's fleets: a verdict is 2.5 KB a pod).
pub const SIM_NO_VERDICT: &str = "sim.gpufleet.io/no-verdict";
/// The VBIOS a simulated tray reports unless told otherwise.
pub const SIM_DEFAULT_VBIOS: &str = "97.00.82.00.5F";
/// Node label on every simulated node, so a real cluster's nodes are never
/// mistaken for simulated ones.
pub const SIMULATED: &str = "sim.gpufleet.io/simulated";

/// Pod annotations kwok's stages read.
pub const PROBE_RESULT: &str = "gpufleet.io/probe-result";
pub const PROBE_DELAY: &str = "gpufleet.io/probe-delay";
pub const PROBE_MESSAGE: &str = "gpufleet.io/probe-message";

/// One simulated compute tray.
#[derive(Clone, Debug)]
pub struct SimNode {
    pub name: String,
    /// The NVLink domain (clique) it belongs to.
    pub clique: String,
    /// `NVIDIA-GB200` or `NVIDIA-GB300`.
    pub product: String,
    /// GPUs the device plugin reports (4 on a healthy tray).
    pub gpus: u32,
    pub driver: String,
    /// Extra labels (pool and batch selectors).
    pub labels: BTreeMap<String, String>,
    /// The probe fails with this message.
    pub probe_failure: Option<String>,
    /// The VBIOS its probe's verdict reports.
    pub vbios: String,
    /// A fabric fault its verdict reports on every GPU, `field=value` (see
    /// [`SIM_FABRIC`]).
    pub fabric_fault: Option<String>,
    /// A bad NVLink port: rack tests with this tray fail ([`SIM_NVLINK_FAULT`]).
    pub nvlink_fault: bool,
    /// Its rack's switch tray is bad ([`SIM_RACK_FAULT`]).
    pub rack_fault: bool,
    /// Its passing probes leave a verdict (default), as `gpufleet probe`.
    pub verdict: bool,
    /// NVCRE names this tray failed, `Reason: message`
    /// ([`SIM_NVCRE_FAILURE`]).
    pub nvcre_failure: Option<String>,
}

impl SimNode {
    /// A healthy GB200 tray in `clique`.
    pub fn gb200(name: impl Into<String>, clique: impl Into<String>) -> Self {
        SimNode {
            name: name.into(),
            clique: clique.into(),
            product: "NVIDIA-GB200".into(),
            gpus: 4,
            driver: "570.133.20".into(),
            labels: BTreeMap::new(),
            probe_failure: None,
            vbios: SIM_DEFAULT_VBIOS.into(),
            fabric_fault: None,
            nvlink_fault: false,
            rack_fault: false,
            verdict: true,
            nvcre_failure: None,
        }
    }

    /// The same tray as a GB300.
    pub fn gb300(name: impl Into<String>, clique: impl Into<String>) -> Self {
        SimNode {
            product: "NVIDIA-GB300".into(),
            ..SimNode::gb200(name, clique)
        }
    }

    pub fn label(mut self, key: &str, value: &str) -> Self {
        self.labels.insert(key.into(), value.into());
        self
    }

    /// The Node object, for kwok to manage.
    pub fn to_node(&self) -> Node {
        let mut labels = self.labels.clone();
        for (k, v) in [
            (keys::GPU_PRODUCT, self.product.as_str()),
            (keys::DRIVER_VERSION, self.driver.as_str()),
            ("nvidia.com/gpu.clique", self.clique.as_str()),
            (
                "nvidia.com/gpu.memory",
                if self.product == "NVIDIA-GB300" {
                    "288000"
                } else {
                    "192000"
                },
            ),
            ("kubernetes.io/hostname", self.name.as_str()),
            ("kubernetes.io/os", "linux"),
            ("kubernetes.io/arch", "arm64"),
            ("type", "kwok"),
            (SIMULATED, "true"),
        ] {
            labels.insert(k.into(), v.into());
        }
        labels.insert(keys::GPU_COUNT.into(), self.gpus.to_string());
        let mut annotations =
            BTreeMap::from([("kwok.x-k8s.io/node".to_string(), "fake".to_string())]);
        if let Some(message) = &self.probe_failure {
            annotations.insert(SIM_PROBE_RESULT.into(), "fail".into());
            annotations.insert(SIM_PROBE_MESSAGE.into(), message.clone());
        }
        if self.vbios != SIM_DEFAULT_VBIOS {
            annotations.insert(SIM_VBIOS.into(), self.vbios.clone());
        }
        if let Some(fault) = &self.fabric_fault {
            annotations.insert(SIM_FABRIC.into(), fault.clone());
        }
        if self.nvlink_fault {
            annotations.insert(SIM_NVLINK_FAULT.into(), "true".into());
        }
        if self.rack_fault {
            annotations.insert(SIM_RACK_FAULT.into(), "true".into());
        }
        if !self.verdict {
            annotations.insert(SIM_NO_VERDICT.into(), "true".into());
        }
        if let Some(failure) = &self.nvcre_failure {
            annotations.insert(SIM_NVCRE_FAILURE.into(), failure.clone());
        }
        let resources: BTreeMap<String, Quantity> = [
            ("cpu", "72".to_string()),
            ("memory", "480Gi".to_string()),
            ("pods", "110".to_string()),
            (keys::GPU_RESOURCE, self.gpus.to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), Quantity(v)))
        .collect();
        Node {
            metadata: ObjectMeta {
                name: Some(self.name.clone()),
                labels: Some(labels),
                annotations: Some(annotations),
                ..Default::default()
            },
            spec: Some(NodeSpec::default()),
            status: Some(NodeStatus {
                allocatable: Some(resources.clone()),
                capacity: Some(resources),
                ..Default::default()
            }),
        }
    }
}

/// The verdict a simulated tray's probe writes: a healthy tray's as its
/// labels describe it (product, GPU count, driver, and its clique when the
/// clique label is GPU Feature Discovery's `<clusterUuid>.<cliqueId>`; else
/// one made up from the label), with the VBIOS and fabric fault its
/// annotations give ([`SIM_VBIOS`], [`SIM_FABRIC`]).
pub fn verdict_for(node: &Node) -> crate::verdict::Verdict {
    let empty = BTreeMap::new();
    let labels = node.metadata.labels.as_ref().unwrap_or(&empty);
    let annotations = node.metadata.annotations.as_ref().unwrap_or(&empty);
    let name = node.metadata.name.as_deref().unwrap_or_default();
    let label = |k: &str| labels.get(k).map(String::as_str).unwrap_or_default();
    let clique_label = label("nvidia.com/gpu.clique");
    let made_up;
    let clique = match crate::verdict::split_clique(clique_label) {
        Some(c) => c,
        None => {
            let h = keys::stable_hash(clique_label.as_bytes());
            made_up = format!(
                "{:08x}-0000-4000-8000-{:012x}",
                h >> 32,
                h & 0xffff_ffff_ffff
            );
            (made_up.as_str(), 1 + (h % 32_766) as u32)
        }
    };
    let mut v = crate::verdict::healthy_tray(
        name,
        label(keys::GPU_PRODUCT),
        label(keys::GPU_COUNT).parse().unwrap_or(0).min(64),
        clique,
        label(keys::DRIVER_VERSION),
        annotations
            .get(SIM_VBIOS)
            .map(String::as_str)
            .unwrap_or(SIM_DEFAULT_VBIOS),
    );
    let faults = annotations
        .get(SIM_FABRIC)
        .map(String::as_str)
        .unwrap_or_default();
    for (field, value) in faults.split(';').filter_map(|f| f.split_once('=')) {
        for gpu in &mut v.gpus {
            let Some(f) = gpu.fabric.as_mut() else {
                continue;
            };
            match field {
                "cliqueId" => f.clique_id = value.parse().ok(),
                "clusterUuid" => f.cluster_uuid = Some(value.into()),
                "state" => f.state = value.into(),
                "status" => f.status = Some(value.into()),
                "health" => f.health = Some(value.into()),
                _ => {}
            }
        }
    }
    v
}

/// Creates the nodes, `parallel` requests at a time.
pub async fn create_nodes(
    client: &kube::Client,
    nodes: &[SimNode],
    parallel: usize,
) -> kube::Result<()> {
    let api: Api<Node> = Api::all(client.clone());
    futures::stream::iter(nodes.iter().map(|n| n.to_node()))
        .map(|node| {
            let api = api.clone();
            async move { api.create(&Default::default(), &node).await.map(|_| ()) }
        })
        .buffer_unordered(parallel.max(1))
        .try_collect::<Vec<()>>()
        .await?;
    Ok(())
}

/// Sets a condition on a node's status (as a fault detector would), e.g.
/// `GpuXidError=True`. Other conditions stay.
pub async fn set_condition(
    client: &kube::Client,
    node: &str,
    type_: &str,
    status: &str,
    reason: &str,
) -> kube::Result<()> {
    let api: Api<Node> = Api::all(client.clone());
    let now = k8s_openapi::jiff::Timestamp::now().to_string();
    let body = json!({"status": {"conditions": [{
        "type": type_, "status": status, "reason": reason,
        "message": format!("simulated {type_}"),
        "lastHeartbeatTime": now, "lastTransitionTime": now,
    }]}});
    api.patch_status(node, &PatchParams::default(), &Patch::Strategic(body))
        .await?;
    Ok(())
}

/// The burn-in stand-in: until the returned future is dropped, every probe
/// pod gpufleet makes in `namespace` gets its outcome from its node after
/// `delay`, as a fleet of real burn-ins would: many at once (up to
/// [`BURN_INS_AT_ONCE`]), riding out an API server that goes away. Its watch
/// is renewed every minute, and a probe it could not annotate is tried
/// again a few seconds later until it is annotated or gone.
pub async fn burn_in(client: kube::Client, namespace: String, delay: Duration) {
    let pods: Api<Pod> = Api::namespaced(client.clone(), &namespace);
    let nodes: Api<Node> = Api::all(client.clone());
    let delay = format!("{}ms", delay.as_millis());
    work_through_probes(pods.clone(), unfinished, BURN_INS_AT_ONCE, |pod| {
        let (pods, nodes, delay) = (pods.clone(), nodes.clone(), delay.clone());
        async move { finish(&pods, &nodes, &pod, &delay).await }
    })
    .await;
}

/// The stand-ins' common loop: gpufleet's pods in `pods` that `wanted`
/// accepts are queued by a watch (renewed every minute) and handed to
/// `finish`, up to `at_once` at a time; one it could not finish is tried
/// again a few seconds later until it is done or gone. The watch only
/// queues, so a slow API server never holds it back until the server drops
/// it as a stalled consumer.
async fn work_through_probes<F, Fut>(
    pods: Api<Pod>,
    wanted: fn(&Pod) -> bool,
    at_once: usize,
    finish: F,
) where
    F: Fn(Pod) -> Fut,
    Fut: std::future::Future<Output = Result<(), kube::Error>>,
{
    let config = watcher::Config::default()
        .labels(&format!("{}={}", keys::MANAGED_BY, keys::MANAGER))
        .timeout(55);
    let (todo_tx, mut todo_rx) = tokio::sync::mpsc::unbounded_channel::<Pod>();
    let queue = todo_tx.clone();
    let watch = watcher(pods, config)
        .default_backoff()
        .applied_objects()
        .for_each(move |event| {
            match event {
                Ok(pod) if wanted(&pod) => {
                    let _ = queue.send(pod);
                }
                Ok(_) => {}
                Err(err) => debug!(%err, "stand-in watch error"),
            }
            futures::future::ready(())
        });
    let finish = &finish;
    let work = futures::stream::poll_fn(move |cx| todo_rx.poll_recv(cx))
        .map(|pod| {
            let retry = todo_tx.clone();
            async move {
                match finish(pod.clone()).await {
                    Ok(()) => {}
                    Err(kube::Error::Api(s)) if s.code == 404 => {}
                    Err(err) => {
                        debug!(pod = ?pod.metadata.name, %err, "stand-in could not finish a probe; retrying");
                        tokio::time::sleep(Duration::from_secs(2)).await;
                        let _ = retry.send(pod);
                    }
                }
            }
        })
        .buffer_unordered(at_once)
        .for_each(|()| futures::future::ready(()));
    futures::future::join(watch, work).await;
}

/// `node` as a kubelet that registered it would leave it: Ready, with its
/// allocatable resources (for a test bed without kwok).
pub fn ready(mut node: Node) -> Node {
    let now =
        k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(k8s_openapi::jiff::Timestamp::now());
    let status = node.status.get_or_insert_with(Default::default);
    status.conditions = Some(vec![k8s_openapi::api::core::v1::NodeCondition {
        type_: "Ready".into(),
        status: "True".into(),
        reason: Some("KubeletReady".into()),
        message: Some("simulated: no kubelet runs".into()),
        last_transition_time: Some(now.clone()),
        last_heartbeat_time: Some(now),
    }]);
    node
}

/// The burn-in stand-in for a test bed without kwok (`gpufleet bench
/// --no-kwok`): nothing runs pods, so each probe pod gpufleet makes in
/// `namespace` is finished by writing its status, as a kubelet would after
/// `delay`: started, then every container terminated with exit code 0 and
/// the pod Succeeded, or, on a node named in `failing`, exit code 1 and
/// Failed. (Node annotations are not read: that would be a request per
/// probe; the harness names its faulty trays instead.) Many at once,
/// riding out errors as [`burn_in`] does.
pub async fn kubelet_less_burn_in(
    client: kube::Client,
    namespace: String,
    delay: Duration,
    failing: Arc<BTreeSet<String>>,
) {
    let pods: Api<Pod> = Api::namespaced(client.clone(), &namespace);
    let pending = |pod: &Pod| {
        pod.metadata.deletion_timestamp.is_none()
            && pod
                .status
                .as_ref()
                .and_then(|s| s.phase.as_deref())
                .is_none_or(|p| p == "Pending")
    };
    work_through_probes(pods.clone(), pending, BURN_INS_AT_ONCE * 8, |pod| {
        let pods = pods.clone();
        let fails = pod
            .spec
            .as_ref()
            .and_then(|s| s.node_name.as_ref())
            .is_some_and(|n| failing.contains(n));
        async move {
            // Finished `delay` after it was created.
            let created = pod
                .metadata
                .creation_timestamp
                .as_ref()
                .map(|t| t.0)
                .unwrap_or_else(k8s_openapi::jiff::Timestamp::now);
            let age = k8s_openapi::jiff::Timestamp::now().duration_since(created);
            tokio::time::sleep(delay.saturating_sub(age.unsigned_abs())).await;
            finish_as_kubelet(&pods, &pod, delay, fails).await
        }
    })
    .await;
}

/// Writes a probe pod's status as a kubelet that ran it for `ran` would.
async fn finish_as_kubelet(
    pods: &Api<Pod>,
    pod: &Pod,
    ran: Duration,
    fails: bool,
) -> Result<(), kube::Error> {
    let Some(name) = pod.metadata.name.as_deref() else {
        return Ok(());
    };
    let end = k8s_openapi::jiff::Timestamp::now();
    let start = end
        .checked_sub(k8s_openapi::jiff::SignedDuration::try_from(ran).unwrap_or_default())
        .unwrap_or(end);
    let containers: Vec<serde_json::Value> = pod
        .spec
        .iter()
        .flat_map(|s| s.containers.iter())
        .map(|c| {
            json!({
                "name": c.name, "image": c.image, "imageID": "", "ready": false,
                "restartCount": 0,
                "state": {"terminated": {"exitCode": i32::from(fails),
                    "reason": if fails { "Error" } else { "Completed" },
                    "message": if fails { "bench fault: burn-in failed" } else { "burn-in passed" },
                    "startedAt": start.to_string(), "finishedAt": end.to_string()}},
            })
        })
        .collect();
    let body = json!({"status": {
        "phase": if fails { "Failed" } else { "Succeeded" },
        "startTime": start.to_string(),
        "containerStatuses": containers,
    }});
    pods.patch_status(name, &PatchParams::default(), &Patch::Merge(&body))
        .await?;
    Ok(())
}

/// A probe pod that has no outcome yet and is not going away.
fn unfinished(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_none()
        && !pod
            .metadata
            .annotations
            .as_ref()
            .is_some_and(|a| a.contains_key(PROBE_RESULT))
}

/// Probe pods the burn-in stand-in annotates at once.
pub const BURN_INS_AT_ONCE: usize = 32;

/// Gives one probe pod its outcome, unless it has one or is going away.
async fn finish(
    pods: &Api<Pod>,
    nodes: &Api<Node>,
    pod: &Pod,
    delay: &str,
) -> Result<(), kube::Error> {
    if !unfinished(pod) {
        return Ok(());
    }
    let (Some(name), Some(node)) = (
        pod.metadata.name.as_deref(),
        pod.spec.as_ref().and_then(|s| s.node_name.as_deref()),
    ) else {
        return Ok(());
    };
    // A rack test pod: its group passes unless one of its trays has a bad
    // NVLink port or sits in a rack with a bad switch tray.
    if pod
        .metadata
        .labels
        .as_ref()
        .is_some_and(|l| l.contains_key(keys::GROUP))
    {
        let peers: Vec<String> = pod
            .spec
            .iter()
            .flat_map(|s| s.containers.iter())
            .flat_map(|c| c.env.iter().flatten())
            .find(|e| e.name == "GPUFLEET_PEER_NODES")
            .and_then(|e| e.value.clone())
            .map(|v| v.split(',').map(String::from).collect())
            .unwrap_or_default();
        let mut bad = None;
        for peer in &peers {
            let annotations = nodes
                .get_opt(peer)
                .await?
                .and_then(|n| n.metadata.annotations)
                .unwrap_or_default();
            if annotations.contains_key(SIM_NVLINK_FAULT)
                || annotations.contains_key(SIM_RACK_FAULT)
            {
                bad = Some(peer.clone());
                break;
            }
        }
        // Its verdict, as the documented NCCL template leaves it: the bus
        // bandwidth measured against the floor (NCCL names no tray).
        let (result, bw) = match bad {
            None => ("pass", 880),
            Some(_) => ("fail", 190),
        };
        let mut verdict = crate::verdict::Verdict::new();
        verdict.by = Some("all_reduce_perf".into());
        verdict.checks.push(crate::verdict::Check {
            name: "nccl-all-reduce".into(),
            result: if result == "pass" {
                crate::verdict::CheckResult::Pass
            } else {
                crate::verdict::CheckResult::Fail
            },
            reason: Some(format!(
                "all_reduce_perf over {} trays: bus bandwidth {bw} GB/s, floor 700 GB/s",
                peers.len()
            )),
        });
        verdict.rack_test = Some(crate::verdict::RackTestResult {
            bus_bandwidth_gbps: Some(bw),
            floor_gbps: Some(700),
            blame: Vec::new(),
        });
        let message = verdict.encode().unwrap_or_default();
        let body = json!({"metadata": {"annotations": {
            PROBE_RESULT: result, PROBE_MESSAGE: message, PROBE_DELAY: delay,
        }}});
        pods.patch(name, &PatchParams::default(), &Patch::Merge(&body))
            .await?;
        return Ok(());
    }
    let Some(node) = nodes.get_opt(node).await? else {
        return Ok(());
    };
    let node_annotations = node.metadata.annotations.clone().unwrap_or_default();
    let result = node_annotations
        .get(SIM_PROBE_RESULT)
        .cloned()
        .unwrap_or_else(|| "pass".into());
    // A passing probe leaves its verdict, as `gpufleet probe` would; a
    // failing one the words its node was given.
    let message = node_annotations
        .get(SIM_PROBE_MESSAGE)
        .cloned()
        .unwrap_or_else(|| {
            if result != "pass" {
                "burn-in failed".into()
            } else if node_annotations.contains_key(SIM_NO_VERDICT) {
                "burn-in passed".into()
            } else {
                verdict_for(&node)
                    .encode()
                    .unwrap_or_else(|| "burn-in passed".into())
            }
        });
    let body = json!({"metadata": {"annotations": {
        PROBE_RESULT: result, PROBE_MESSAGE: message, PROBE_DELAY: delay,
    }}});
    pods.patch(name, &PatchParams::default(), &Patch::Merge(&body))
        .await?;
    Ok(())
}

/// The stand-in for NVIDIA's Cluster Readiness Engine, as kwok stands in for
/// the kubelets: every Certification in `namespace` (gpufleet's rack tests,
/// `healthChecks.domainTest.nvcre`) is marked in progress, then after
/// `delay` finished as NVCRE would finish it from its target's trays: a tray
/// annotated [`SIM_NVCRE_FAILURE`] is named failed alone with that reason;
/// otherwise a tray with a bad NVLink port or in a rack with a bad switch
/// tray fails the NCCL job, and every node of it is named `WorkloadFailed`
/// (the intra-rack scale does not bisect). Failed nodes go where NVCRE puts
/// them: a ConfigMap the category's status names, `failed-nodes.json.gz`.
pub async fn nvcre(client: kube::Client, namespace: String, delay: Duration) {
    use kube::api::DynamicObject;
    let certs: Api<DynamicObject> = Api::namespaced_with(
        client.clone(),
        &namespace,
        &crate::operator::nvcre::resource(),
    );
    let nodes: Api<Node> = Api::all(client.clone());
    let maps: Api<k8s_openapi::api::core::v1::ConfigMap> =
        Api::namespaced(client.clone(), &namespace);
    let seen = std::sync::Arc::new(std::sync::Mutex::new(std::collections::HashSet::new()));
    watcher(certs.clone(), watcher::Config::default().timeout(55))
        .default_backoff()
        .applied_objects()
        .for_each(|event| {
            let (certs, nodes, maps, seen) =
                (certs.clone(), nodes.clone(), maps.clone(), seen.clone());
            async move {
                let Ok(cert) = event else { return };
                let conditions = cert.data["status"]["conditions"].as_array().cloned();
                let done = conditions.iter().flatten().any(|c| {
                    (c["type"] == "Succeeded" || c["type"] == "Failed") && c["status"] == "True"
                });
                let uid = cert.metadata.uid.clone().unwrap_or_default();
                if done
                    || cert.metadata.deletion_timestamp.is_some()
                    || !seen.lock().expect("seen").insert(uid)
                {
                    return;
                }
                tokio::spawn(async move {
                    if let Err(err) = certify(&certs, &nodes, &maps, &cert, delay).await {
                        debug!(%err, "NVCRE stand-in could not finish a certification");
                    }
                });
            }
        })
        .await;
}

/// Runs one Certification to its end (see [`nvcre`]).
async fn certify(
    certs: &Api<kube::api::DynamicObject>,
    nodes: &Api<Node>,
    maps: &Api<k8s_openapi::api::core::v1::ConfigMap>,
    cert: &kube::api::DynamicObject,
    delay: Duration,
) -> Result<(), kube::Error> {
    let name = cert.metadata.name.clone().unwrap_or_default();
    let now = k8s_openapi::jiff::Timestamp::now().to_string();
    let condition = |kind: &str, reason: &str, message: &str| {
        json!({"type": kind, "status": "True", "reason": reason, "message": message,
            "lastTransitionTime": now})
    };
    let status = json!({"status": {"conditions": [condition("InProgress", "Running", "1 category running")]}});
    certs
        .patch_status(&name, &PatchParams::default(), &Patch::Merge(&status))
        .await?;
    tokio::time::sleep(delay).await;
    let targets: Vec<String> = cert.data["spec"]["target"]["nodeNames"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|n| n.as_str().map(String::from))
        .collect();
    let variant = cert.data["spec"]["categories"][0]["variant"]
        .as_str()
        .unwrap_or("nccl-all-reduce")
        .to_string();
    let mut named = Vec::new();
    let mut job_fails = false;
    for target in &targets {
        let annotations = nodes
            .get_opt(target)
            .await?
            .and_then(|n| n.metadata.annotations)
            .unwrap_or_default();
        if let Some(failure) = annotations.get(SIM_NVCRE_FAILURE) {
            let (reason, message) = failure.split_once(": ").unwrap_or((failure, ""));
            named.push(json!({"name": target, "reason": reason, "message": message}));
        }
        job_fails |=
            annotations.contains_key(SIM_NVLINK_FAULT) || annotations.contains_key(SIM_RACK_FAULT);
    }
    if named.is_empty() && job_fails {
        named = targets
            .iter()
            .map(|t| json!({"name": t, "reason": "WorkloadFailed",
                "message": format!("all_reduce_perf_mpi exited 1 over {} nodes: bus bandwidth 190 GB/s", targets.len())}))
            .collect();
    }
    let status = if named.is_empty() {
        json!({"status": {
            "conditions": [condition("Succeeded", "AllCategoriesSucceeded", "1 of 1 categories succeeded")],
            "categoryStatuses": [{"domain": "communication", "variant": variant, "status": "Succeeded"}],
        }})
    } else {
        let map_name = format!("{name}-failed-nodes");
        let map = json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": map_name, "ownerReferences": [{
                "apiVersion": "nvcre.nvidia.com/v1alpha1", "kind": "Certification",
                "name": name, "uid": cert.metadata.uid,
            }]},
            "binaryData": {crate::operator::nvcre::FAILED_NODES_KEY:
                k8s_openapi::ByteString(crate::operator::nvcre::encode(&named))},
        });
        let map: k8s_openapi::api::core::v1::ConfigMap =
            serde_json::from_value(map).map_err(kube::Error::SerdeError)?;
        match maps.create(&Default::default(), &map).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 409 => {}
            Err(err) => return Err(err),
        }
        json!({"status": {
            "conditions": [condition("Failed", "CategoryFailed",
                &format!("communication/{variant}: {} of {} nodes failed", named.len(), targets.len()))],
            "categoryStatuses": [{"domain": "communication", "variant": variant, "status": "Failed",
                "failedNodesRef": {"kind": "ConfigMap", "name": map_name}}],
        }})
    };
    certs
        .patch_status(&name, &PatchParams::default(), &Patch::Merge(&status))
        .await?;
    Ok(())
}

/// The probe pods' namespace, labelled with `labels`, its `default`
/// ServiceAccount (the test bed runs no controller that would make it) and
/// the probe ServiceAccount ([`crate::operator::PROBE_SERVICE_ACCOUNT`],
/// without a token, as the chart makes it); any may exist already.
pub async fn probe_namespace(
    client: &kube::Client,
    name: &str,
    labels: &BTreeMap<String, String>,
) -> Result<(), kube::Error> {
    use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
    use kube::api::PostParams;
    let exists = |r: Result<(), kube::Error>| match r {
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(()),
        other => other,
    };
    let mut namespace = Namespace::default();
    namespace.metadata.name = Some(name.to_string());
    namespace.metadata.labels = Some(labels.clone());
    exists(
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &namespace)
            .await
            .map(|_| ()),
    )?;
    let accounts = Api::<ServiceAccount>::namespaced(client.clone(), name);
    let mut account = ServiceAccount::default();
    account.metadata.name = Some("default".into());
    exists(
        accounts
            .create(&PostParams::default(), &account)
            .await
            .map(|_| ()),
    )?;
    account.metadata.name = Some(crate::operator::PROBE_SERVICE_ACCOUNT.into());
    account.automount_service_account_token = Some(false);
    exists(
        accounts
            .create(&PostParams::default(), &account)
            .await
            .map(|_| ()),
    )
}
