//! Observe: the caches the watches fill, and the planner's snapshot built
//! from them (no client required).

use std::collections::BTreeSet;
use std::sync::{Arc, PoisonError, RwLock};

use k8s_openapi::api::core::v1::{
    Container, ContainerState, ContainerStatus, Node, Pod, PodSpec, PodStatus,
};
use kube::core::DeserializeGuard;
use kube::runtime::reflector::Store;
use kube::runtime::watcher;

use crate::api::{GpuPool, RolloutBatch};
use crate::keys;
use crate::planner::{Claim, NodeState, NodeView, ProbeView, Snapshot, awaited_probe, matches};

/// The watched objects: pools, batches and probe pods as the reflectors keep
/// them, nodes as [`NodeView`]s.
#[derive(Clone)]
pub struct Stores {
    pub pools: Store<DeserializeGuard<GpuPool>>,
    pub batches: Store<DeserializeGuard<RolloutBatch>>,
    pub nodes: NodeCache,
    pub probes: Store<Pod>,
    /// NVCRE's Certifications in the probe namespace (empty without
    /// `--nvcre`), and what was read of their failed nodes.
    pub certifications: Store<kube::api::DynamicObject>,
    pub cert_results: Arc<super::nvcre::Results>,
    /// How many of the four watches have listed once; the watch loops count
    /// up as they see their first `InitDone`.
    pub synced: tokio::sync::watch::Receiver<usize>,
    /// Pools with a node that turned failed since their last reconcile:
    /// reconciled without waiting for their pace, so that the breaker's
    /// ledger records the failure before anyone can erase it from the node.
    pub urgent_pools: Arc<std::sync::Mutex<std::collections::HashSet<String>>>,
}

/// The number of watches [`Stores::ready`] waits for.
pub const WATCHES: usize = 4;

impl Stores {
    /// Waits until every watch has listed once.
    pub async fn ready(&self) -> Result<(), String> {
        let mut synced = self.synced.clone();
        synced
            .wait_for(|n| *n >= WATCHES)
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    /// Every valid pool.
    pub fn pools(&self) -> Vec<GpuPool> {
        self.pools
            .state()
            .iter()
            .filter_map(|p| p.0.as_ref().ok().cloned())
            .collect()
    }

    /// Every valid batch.
    pub fn batches(&self) -> Vec<RolloutBatch> {
        self.batches
            .state()
            .iter()
            .filter_map(|b| b.0.as_ref().ok().cloned())
            .collect()
    }

    /// The pool of this name, if it exists: `Ok(None)` if absent,
    /// `Err(message)` if it exists but is invalid.
    pub fn pool(&self, name: &str) -> Result<Option<GpuPool>, String> {
        let found = self.pools.state().into_iter().find(|p| match &p.0 {
            Ok(pool) => pool.metadata.name.as_deref() == Some(name),
            Err(invalid) => invalid.metadata.name.as_deref() == Some(name),
        });
        match found.as_deref().map(|g| &g.0) {
            None => Ok(None),
            Some(Ok(pool)) => Ok(Some(pool.clone())),
            Some(Err(invalid)) => Err(invalid.error.clone()),
        }
    }
}

/// The node cache: one [`NodeView`] per watched node, by name. A view is
/// built once per watch event and shared, never copied: snapshots and pool
/// plans hold `Arc`s to the cached views. At 137,500 nodes a whole Node
/// (even stripped) per node, plus a fresh copy per reconcile, cost several
/// times what the views do.
#[derive(Clone, Default)]
pub struct NodeCache {
    /// By name: snapshots then list nodes in name order, which after a
    /// list is also the order their views were allocated in, so the
    /// planner's pass over them reads memory mostly in sequence. Keyed by
    /// the view's own name (no second copy of it).
    nodes: Arc<RwLock<BTreeSet<ByName>>>,
}

/// A cached view, ordered and found by its node's name.
#[derive(Clone)]
struct ByName(Arc<NodeView>);

impl std::borrow::Borrow<str> for ByName {
    fn borrow(&self) -> &str {
        &self.0.name
    }
}

impl PartialEq for ByName {
    fn eq(&self, other: &Self) -> bool {
        self.0.name == other.0.name
    }
}

impl Eq for ByName {}

impl PartialOrd for ByName {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for ByName {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.name.cmp(&other.0.name)
    }
}

impl NodeCache {
    /// The view of the node of this name, if it is cached.
    pub fn get(&self, name: &str) -> Option<Arc<NodeView>> {
        self.read().get(name).map(|n| n.0.clone())
    }

    /// Every cached view that `keep` accepts, by name.
    pub fn select(&self, mut keep: impl FnMut(&NodeView) -> bool) -> Vec<Arc<NodeView>> {
        self.read()
            .iter()
            .filter(|n| keep(&n.0))
            .map(|n| n.0.clone())
            .collect()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, BTreeSet<ByName>> {
        // A panic while holding the lock leaves the map whole (every write
        // is a single insert, remove or swap): keep using it.
        self.nodes.read().unwrap_or_else(PoisonError::into_inner)
    }

    /// Applies one watch event, as a reflector would: a relist fills a
    /// buffer that replaces the cache when it is complete, so readers see
    /// the old nodes until then; changes and deletions apply at once.
    pub fn writer(&self) -> impl FnMut(&watcher::Event<Arc<NodeView>>) + Send + 'static {
        let nodes = self.nodes.clone();
        let mut buffer: Option<BTreeSet<ByName>> = None;
        move |event| {
            let write = || nodes.write().unwrap_or_else(PoisonError::into_inner);
            match event {
                watcher::Event::Init => buffer = Some(BTreeSet::new()),
                watcher::Event::InitApply(node) => {
                    buffer.get_or_insert_default().replace(ByName(node.clone()));
                }
                watcher::Event::InitDone => {
                    if let Some(fresh) = buffer.take() {
                        *write() = fresh;
                    }
                }
                watcher::Event::Apply(node) => {
                    write().replace(ByName(node.clone()));
                }
                watcher::Event::Delete(node) => {
                    write().remove(node.name.as_str());
                }
            }
        }
    }
}

/// A node watch event as the cache keeps it: the Node's view, built once
/// here; the Node itself is dropped.
pub fn view_event(event: watcher::Event<Node>) -> watcher::Event<Arc<NodeView>> {
    let view = |node: Node| Arc::new(NodeView::from(&node));
    match event {
        watcher::Event::Init => watcher::Event::Init,
        watcher::Event::InitApply(node) => watcher::Event::InitApply(view(node)),
        watcher::Event::InitDone => watcher::Event::InitDone,
        watcher::Event::Apply(node) => watcher::Event::Apply(view(node)),
        watcher::Event::Delete(node) => watcher::Event::Delete(view(node)),
    }
}

/// Shrinks a probe pod before it is cached to what a `ProbeView` and the
/// finalizer read: its name, labels, annotations and times, its controller
/// owner reference (older probes' batch UID), the node it runs on, its
/// containers' names, its phase, reason and message, and how each container
/// ended. A whole Pod as the API server returns it (the template's
/// containers, default tolerations, the projected service-account volume,
/// conditions, IPs) is several kilobytes in memory, and a wave keeps one
/// probe per validating node.
pub fn strip_pod(pod: &mut Pod) {
    let meta = &mut pod.metadata;
    meta.managed_fields = None;
    meta.owner_references = meta
        .owner_references
        .take()
        .map(|refs| {
            refs.into_iter()
                .filter(|o| o.controller == Some(true))
                .collect::<Vec<_>>()
        })
        .filter(|refs| !refs.is_empty());
    meta.generate_name = None;
    meta.finalizers = None;
    let names = |containers: Vec<Container>| -> Vec<Container> {
        containers
            .into_iter()
            .map(|c| Container {
                name: c.name,
                ..Default::default()
            })
            .collect()
    };
    pod.spec = pod.spec.take().map(|spec| PodSpec {
        node_name: spec.node_name,
        containers: names(spec.containers),
        init_containers: spec.init_containers.map(names),
        ..Default::default()
    });
    if let Some(status) = pod.status.take() {
        let ended = |statuses: Option<Vec<ContainerStatus>>| {
            statuses.map(|statuses| {
                statuses
                    .into_iter()
                    .map(|c| ContainerStatus {
                        name: c.name,
                        state: c.state.map(|state| ContainerState {
                            terminated: state.terminated,
                            ..Default::default()
                        }),
                        ..Default::default()
                    })
                    .collect()
            })
        };
        pod.status = Some(PodStatus {
            phase: status.phase,
            reason: status.reason,
            message: status.message,
            container_statuses: ended(status.container_statuses),
            init_container_statuses: ended(status.init_container_statuses),
            ..Default::default()
        });
    }
}

/// The planner's snapshot for one batch: every node of the pool (and any node
/// this batch started that has since left it), the batch's probes, and the
/// other pools and batches that may claim the same nodes.
pub fn snapshot(stores: &Stores, pool: &GpuPool, batch: &RolloutBatch) -> Snapshot {
    let batch_name = batch.metadata.name.as_deref().unwrap_or_default();
    let pool_name = pool.metadata.name.as_deref().unwrap_or_default();
    let nodes = stores.nodes.select(|n| {
        matches(&pool.spec.node_selector, &n.labels) || n.batch.as_deref() == Some(batch_name)
    });
    // The batch's probes, and any other pod at the name of a probe one of
    // its validating nodes waits for: the planner decides whether such a
    // pod is the batch's (by its batch UID) or a squatter to remove.
    let awaited: BTreeSet<String> = nodes
        .iter()
        .filter(|n| {
            n.batch.as_deref() == Some(batch_name) && n.state == Some(NodeState::Validating)
        })
        .map(|n| awaited_probe(n))
        .collect();
    let probes = stores
        .probes
        .state()
        .iter()
        .filter(|p| {
            p.metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(keys::BATCH))
                .map(String::as_str)
                == Some(batch_name)
                || p.metadata
                    .name
                    .as_ref()
                    .is_some_and(|n| awaited.contains(n))
        })
        .map(|p| ProbeView::from(p.as_ref()))
        .collect();
    let other_pools = stores
        .pools()
        .into_iter()
        .filter(|p| p.metadata.name.as_deref() != Some(pool_name))
        .map(|p| Claim {
            name: p.metadata.name.unwrap_or_default(),
            pool: None,
            selector: p.spec.node_selector,
        })
        .collect();
    let other_batches = stores
        .batches()
        .into_iter()
        .filter(|b| {
            b.metadata.name.as_deref() != Some(batch_name)
                && b.metadata.deletion_timestamp.is_none()
        })
        .map(|b| Claim {
            name: b.metadata.name.unwrap_or_default(),
            pool: Some(b.spec.pool_ref),
            selector: b.spec.node_selector,
        })
        .collect();
    let certifications =
        super::nvcre::of_batch(&stores.certifications, batch.metadata.uid.as_deref())
            .iter()
            .map(|c| super::nvcre::view(c, &stores.cert_results))
            .collect();
    Snapshot {
        nodes,
        probes,
        certifications,
        other_pools,
        other_batches,
        probe_rejection: None,
    }
}

/// The nodes of a pool, shared with the cache.
pub fn pool_nodes(stores: &Stores, pool: &GpuPool) -> Vec<Arc<NodeView>> {
    stores
        .nodes
        .select(|n| matches(&pool.spec.node_selector, &n.labels))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::planner::ProbeView;

    /// A probe pod as the API server returns it once kwok ended it.
    fn finished_pod() -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {
                "name": "gpufleet-probe-n1-1", "namespace": "gpufleet-system",
                "labels": {"app.kubernetes.io/managed-by": "gpufleet", "gpufleet.io/batch-uid": "uid-b"},
                "annotations": {"gpufleet.io/batch": "b", "gpufleet.io/attempt": "1"},
                "creationTimestamp": "2026-01-01T00:00:00Z",
                "managedFields": [{"manager": "gpufleet", "operation": "Apply"}],
                "ownerReferences": [
                    {"apiVersion": "gpufleet.io/v1alpha1", "kind": "RolloutBatch", "name": "b", "uid": "uid-b", "controller": true},
                    {"apiVersion": "v1", "kind": "ConfigMap", "name": "x", "uid": "uid-x"},
                ],
            },
            "spec": {
                "nodeName": "n1",
                "initContainers": [{"name": "setup", "image": "busybox"}],
                "containers": [
                    {"name": "inventory", "image": "cuda", "command": ["nvidia-smi", "-q"]},
                    {"name": "burn-in", "image": "dcgm", "command": ["dcgmi", "diag", "-r", "3"]},
                ],
                "tolerations": [{"key": "gpufleet.io/onboarding", "operator": "Exists"}],
                "volumes": [{"name": "kube-api-access", "projected": {"sources": [{"serviceAccountToken": {"path": "token"}}]}}],
            },
            "status": {
                "phase": "Failed",
                "hostIP": "10.0.0.1",
                "conditions": [{"type": "Ready", "status": "False"}],
                "initContainerStatuses": [{
                    "name": "setup", "image": "busybox", "imageID": "", "ready": false, "restartCount": 0,
                    "state": {"terminated": {"exitCode": 0, "reason": "Completed"}},
                }],
                "containerStatuses": [
                    {
                        "name": "inventory", "image": "cuda", "imageID": "", "ready": false, "restartCount": 0,
                        "state": {"terminated": {"exitCode": 0, "reason": "Completed"}},
                    },
                    {
                        "name": "burn-in", "image": "dcgm", "imageID": "", "ready": false, "restartCount": 0,
                        "state": {"terminated": {"exitCode": 1, "message": "NVLink CRC errors", "reason": "Error"}},
                        "lastState": {},
                    },
                ],
            },
        }))
        .unwrap()
    }

    #[test]
    fn a_stripped_probe_reads_as_the_whole_pod_does() {
        let whole = finished_pod();
        let mut stripped = whole.clone();
        strip_pod(&mut stripped);
        assert_eq!(ProbeView::from(&stripped), ProbeView::from(&whole));
        let view = ProbeView::from(&stripped);
        let failed = view.failed_container().unwrap();
        assert_eq!(
            (failed.container.as_str(), failed.exit_code),
            ("burn-in", 1)
        );
        assert_eq!(failed.message.as_deref(), Some("NVLink CRC errors"));
        assert_eq!(view.terminated.len(), 3, "init and regular containers");
        assert!(view.terminated[0].init && view.terminated[0].message.is_none());
        assert_eq!((view.containers, view.init_containers), (2, 1));
        assert_eq!(view.batch_uid.as_deref(), Some("uid-b"));
        let owners = stripped.metadata.owner_references.as_ref().unwrap();
        assert_eq!(owners.len(), 1, "only the controller reference is kept");
        let spec = stripped.spec.as_ref().unwrap();
        assert!(
            spec.containers
                .iter()
                .all(|c| c.image.is_none() && c.command.is_none())
        );
        assert!(spec.volumes.is_none() && spec.tolerations.is_none());
        assert!(stripped.metadata.managed_fields.is_none());
        assert!(stripped.status.as_ref().unwrap().conditions.is_none());
        assert_eq!(stripped.metadata.annotations, whole.metadata.annotations);
    }

    #[test]
    fn a_probes_batch_uid_comes_from_its_label_else_its_controller() {
        let mut pod = finished_pod();
        pod.metadata
            .labels
            .as_mut()
            .unwrap()
            .remove(keys::BATCH_UID);
        assert_eq!(
            ProbeView::from(&pod).batch_uid.as_deref(),
            Some("uid-b"),
            "older probes carry the UID in their owner reference"
        );
        pod.metadata
            .labels
            .as_mut()
            .unwrap()
            .insert(keys::BATCH_UID.into(), "uid-other".into());
        assert_eq!(
            ProbeView::from(&pod).batch_uid,
            None,
            "label and owner disagree"
        );
        pod.metadata.owner_references = None;
        pod.metadata
            .labels
            .as_mut()
            .unwrap()
            .remove(keys::BATCH_UID);
        assert_eq!(ProbeView::from(&pod).batch_uid, None);
    }
}
