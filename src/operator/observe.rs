//! Observe: the caches the watches fill, and the planner's snapshot built
//! from them (no client required).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Node, Pod};
use kube::core::DeserializeGuard;
use kube::runtime::reflector::Store;

use crate::api::{GpuPool, RolloutBatch};
use crate::keys;
use crate::planner::{Claim, NodeView, ProbeView, Snapshot, matches};

/// The watched objects, as the reflectors keep them.
#[derive(Clone)]
pub struct Stores {
    pub pools: Store<DeserializeGuard<GpuPool>>,
    pub batches: Store<DeserializeGuard<RolloutBatch>>,
    pub nodes: Store<Node>,
    pub probes: Store<Pod>,
    /// How many of the four watches have listed once; the watch loops count
    /// up as they see their first `InitDone`.
    pub synced: tokio::sync::watch::Receiver<usize>,
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

/// Shrinks a Node before it is cached: gpufleet needs its labels, its own
/// annotations, taints, cordon, conditions and allocatable GPUs; images,
/// managed fields and the rest would cost memory at 137,500 nodes.
pub fn strip_node(node: &mut Node) {
    let meta = &mut node.metadata;
    meta.managed_fields = None;
    if let Some(annotations) = meta.annotations.as_mut() {
        annotations.retain(|k, _| k.starts_with("gpufleet.io/"));
    }
    if let Some(status) = node.status.as_mut() {
        status.images = None;
        status.volumes_attached = None;
        status.volumes_in_use = None;
        status.node_info = None;
        status.addresses = None;
        status.daemon_endpoints = None;
        status.config = None;
        status.capacity = None;
        status.features = None;
        status.runtime_handlers = None;
        if let Some(allocatable) = status.allocatable.as_mut() {
            allocatable.retain(|k, _| k == keys::GPU_RESOURCE);
        }
        if let Some(conditions) = status.conditions.as_mut() {
            for c in conditions {
                // Heartbeat times change every minute and are never read.
                c.last_heartbeat_time = None;
                c.message = None;
            }
        }
    }
}

/// Shrinks a probe pod before it is cached.
pub fn strip_pod(pod: &mut Pod) {
    pod.metadata.managed_fields = None;
}

/// The planner's snapshot for one batch: every node of the pool (and any node
/// this batch started that has since left it), the batch's probes, and the
/// other pools and batches that may claim the same nodes.
pub fn snapshot(stores: &Stores, pool: &GpuPool, batch: &RolloutBatch) -> Snapshot {
    let batch_name = batch.metadata.name.as_deref().unwrap_or_default();
    let pool_name = pool.metadata.name.as_deref().unwrap_or_default();
    let nodes = stores
        .nodes
        .state()
        .iter()
        .filter(|n| {
            matches(&pool.spec.node_selector, labels_of(n))
                || n.metadata
                    .annotations
                    .as_ref()
                    .and_then(|a| a.get(keys::BATCH))
                    .map(String::as_str)
                    == Some(batch_name)
        })
        .map(|n| NodeView::from(n.as_ref()))
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
    Snapshot {
        nodes,
        probes,
        other_pools,
        other_batches,
    }
}

/// A node's labels (empty when it has none).
pub fn labels_of(node: &Node) -> &BTreeMap<String, String> {
    static EMPTY: BTreeMap<String, String> = BTreeMap::new();
    node.metadata.labels.as_ref().unwrap_or(&EMPTY)
}

/// The nodes of a pool, as views.
pub fn pool_nodes(stores: &Stores, pool: &GpuPool) -> Vec<NodeView> {
    stores
        .nodes
        .state()
        .iter()
        .filter(|n| matches(&pool.spec.node_selector, labels_of(n)))
        .map(|n| NodeView::from(n.as_ref()))
        .collect()
}
