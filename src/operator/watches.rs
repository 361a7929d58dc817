//! The watches: they feed the caches that plans are built from, and turn
//! each change into reconcile requests for the controllers.

use std::collections::HashMap;
use std::sync::Arc;

use futures::future::{self, BoxFuture};
use futures::{FutureExt, StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, DynamicObject};
use kube::core::DeserializeGuard;
use kube::runtime::reflector::{self, ObjectRef};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use tracing::{error, info, warn};

use crate::api::{GpuPool, RolloutBatch};
use crate::keys;
use crate::planner::{NodeState, NodeView, matches};

use super::act;
use super::context::Config;
use super::deliveries::Deliveries;
use super::observe::{self, Stores};

/// Reconcile requests for batches, from the other watches.
pub type BatchRequests =
    tokio::sync::mpsc::UnboundedReceiver<ObjectRef<DeserializeGuard<RolloutBatch>>>;
/// Reconcile requests for pools, from the node watch.
pub type PoolRequests = tokio::sync::mpsc::UnboundedReceiver<ObjectRef<DeserializeGuard<GpuPool>>>;

/// The four watches, not yet running, and what they fill.
pub struct Watches {
    /// The caches.
    pub stores: Stores,
    /// Probe writes the probe watch has not shown yet.
    pub expectations: Arc<act::Expectations>,
    /// Node writes the node watch has not delivered yet.
    pub deliveries: Arc<Deliveries>,
    /// How the controllers watch pools and batches themselves.
    pub objects: watcher::Config,
    pub batch_requests: BatchRequests,
    pub pool_requests: PoolRequests,
    /// Runs every watch; resolves (after logging which) when one ends.
    pub run: BoxFuture<'static, ()>,
}

/// Sets up the watches of pools, batches, nodes and probe pods.
///
/// Nothing downstream can hold a watch back: requests go through unbounded
/// channels (a few object references; the controllers deduplicate them), so
/// a busy controller never stalls a watch into being closed by the API
/// server.
pub fn watches(client: &Client, config: &Config) -> Watches {
    // Watches end and are re-established every minute or so: one that a
    // restarted API server left hanging is replaced within that time.
    let watch = watcher::Config::default().timeout(55);
    let node_watch = match &config.node_selector {
        Some(selector) => watch.clone().labels(selector),
        None => watch.clone(),
    };
    // Every pod of the probe namespace, not only those
    // labelled as gpufleet's: a pod someone else made at a probe's name must
    // be seen to be refused and removed (see `observe::snapshot`).
    let probe_watch = watch.clone();
    let object_watch = match &config.selector {
        Some(selector) => watch.clone().labels(selector),
        None => watch.clone(),
    };
    let pools_api: Api<DeserializeGuard<GpuPool>> = Api::all(client.clone());
    let batches_api: Api<DeserializeGuard<RolloutBatch>> = Api::all(client.clone());
    let nodes_api: Api<Node> = Api::all(client.clone());
    let probes_api: Api<Pod> = Api::namespaced(client.clone(), &config.probes.namespace);

    let (pool_store, pool_writer) = reflector::store::<DeserializeGuard<GpuPool>>();
    let (batch_store, batch_writer) = reflector::store::<DeserializeGuard<RolloutBatch>>();
    let node_cache = observe::NodeCache::default();
    let mut node_writer = node_cache.writer();
    let (probe_store, probe_writer) = reflector::store::<Pod>();
    let cert_writer = reflector::store::Writer::<DynamicObject>::new(super::nvcre::resource());
    let cert_store = cert_writer.as_reader();
    let (synced_tx, synced) = tokio::sync::watch::channel(0usize);
    let synced_tx = Arc::new(synced_tx);
    let stores = Stores {
        pools: pool_store,
        batches: batch_store,
        nodes: node_cache,
        probes: probe_store,
        certifications: cert_store,
        cert_results: Default::default(),
        synced,
        urgent_pools: Default::default(),
    };
    let (batch_tx, batch_requests) = tokio::sync::mpsc::unbounded_channel();
    let (pool_tx, pool_requests) = tokio::sync::mpsc::unbounded_channel();

    let pool_watch = {
        let (s, tx) = (stores.clone(), batch_tx.clone());
        let metrics = config.metrics.clone();
        watcher(pools_api, object_watch.clone())
            .default_backoff()
            .reflect(pool_writer)
            .inspect_ok(move |event| {
                // A deleted pool leaves no series behind.
                if let watcher::Event::Delete(pool) = event {
                    let name = match &pool.0 {
                        Ok(p) => p.name_any(),
                        Err(invalid) => invalid.metadata.name.clone().unwrap_or_default(),
                    };
                    metrics.forget_pool(&name);
                }
            })
            .for_each(drive("gpupools", synced_tx.clone(), {
                // What of a pool its batches' plans read: its spec (the
                // generation), its labels (sharding) and the breaker's
                // ledger in its status. The pool's own status writes
                // (counts, GPUs online) change nothing there and plan
                // no batch.
                let mut read: HashMap<String, u64> = HashMap::new();
                move |pool: &DeserializeGuard<GpuPool>| {
                    let (name, fingerprint) = match &pool.0 {
                        Ok(p) => (p.name_any(), Some(pool_fingerprint(p))),
                        Err(invalid) => (invalid.metadata.name.clone().unwrap_or_default(), None),
                    };
                    // Deleted (gone from the store): its batches hear
                    // of it.
                    let deleted = matches!(s.pool(&name), Ok(None));
                    if deleted {
                        read.remove(&name);
                    } else if let Some(f) = fingerprint
                        && read.insert(name.clone(), f) == Some(f)
                    {
                        return;
                    }
                    for batch in batches_of_pool(&s, &name) {
                        let _ = tx.send(batch);
                    }
                }
            }))
    };
    let batch_watch = watcher(batches_api, object_watch.clone())
        .default_backoff()
        .reflect(batch_writer)
        .for_each(drive(
            "rolloutbatches",
            synced_tx.clone(),
            |_: &DeserializeGuard<RolloutBatch>| {},
        ));
    // Nodes are cached as views, each built once per event (see
    // `observe::NodeCache`), not as Node objects.
    // Each event reaches the cache before the deliveries note it, so a
    // write counted delivered is one the cache holds.
    let deliveries = Arc::new(Deliveries::default());
    let node_watch = {
        let (s, btx, ptx) = (stores.clone(), batch_tx.clone(), pool_tx);
        let deliveries = deliveries.clone();
        let cache = stores.nodes.clone();
        let metrics = config.metrics.clone();
        let urgent = stores.urgent_pools.clone();
        let urgent_stores = stores.clone();
        watcher(nodes_api, node_watch)
            .default_backoff()
            .map_ok(observe::view_event)
            .map_ok(move |event| {
                // Work proportional to change: an event that changes
                // nothing a plan reads (a kubelet's heartbeat, a write to
                // fields gpufleet ignores) updates the cache but plans
                // nothing.
                let old = match &event {
                    watcher::Event::Apply(node) => cache.get(&node.name),
                    _ => None,
                };
                let news = match &event {
                    watcher::Event::Apply(node) => {
                        old.as_ref().is_none_or(|old| !old.same_for_planner(node))
                    }
                    _ => true,
                };
                let failed_now = match &event {
                    watcher::Event::Apply(node) => {
                        node.state == Some(NodeState::Failed)
                            && old
                                .as_ref()
                                .is_none_or(|o| o.state != Some(NodeState::Failed))
                    }
                    _ => false,
                };
                if let watcher::Event::Apply(_) = &event {
                    metrics.record_node_event(news);
                }
                node_writer(&event);
                deliveries.observe(&event);
                if failed_now && let watcher::Event::Apply(node) = &event {
                    let mut urgent = urgent.lock().expect("urgent pools");
                    for pool in pools_of_node(&urgent_stores, node) {
                        urgent.insert(pool.name);
                    }
                }
                with_news(event, news)
            })
            .for_each(drive(
                "nodes",
                synced_tx.clone(),
                move |(node, news): &(Arc<NodeView>, bool)| {
                    if !news {
                        return;
                    }
                    for batch in batches_of_node(&s, node) {
                        let _ = btx.send(batch);
                    }
                    for pool in pools_of_node(&s, node) {
                        let _ = ptx.send(pool);
                    }
                },
            ))
    };
    let expectations = Arc::new(act::Expectations::default());
    let probe_watch = {
        let (tx, expectations) = (batch_tx.clone(), expectations.clone());
        watcher(probes_api, probe_watch)
            .default_backoff()
            .modify(observe::strip_pod)
            .reflect(probe_writer)
            .inspect_ok(move |event| {
                if let watcher::Event::Delete(pod) = event {
                    expectations.observed_gone(&pod.name_any());
                } else if let watcher::Event::Apply(pod) = event {
                    expectations.observed(pod);
                }
            })
            .for_each(drive("probe pods", synced_tx, move |pod: &Pod| {
                if let Some(batch) = pod.annotations().get(keys::BATCH) {
                    let _ = tx.send(ObjectRef::new(batch));
                }
            }))
    };
    // NVCRE's Certifications, only when asked for (`--nvcre`): not among
    // the watches readiness waits for, so a cluster without NVCRE, or an
    // NVCRE installed later, never holds the operator back; until it is
    // there the watch retries with backoff and says so.
    let cert_watch = {
        let tx = batch_tx.clone();
        let enabled = config.nvcre;
        let api: Api<DynamicObject> = Api::namespaced_with(
            client.clone(),
            &config.probes.namespace,
            &super::nvcre::resource(),
        );
        let watch = watch.clone();
        async move {
            if !enabled {
                return future::pending::<()>().await;
            }
            watcher(api, watch)
                .default_backoff()
                .reflect(cert_writer)
                .for_each(move |event| {
                    match event {
                        Ok(watcher::Event::Apply(c) | watcher::Event::Delete(c)) => {
                            if let Some(batch) = c.annotations().get(keys::BATCH) {
                                let _ = tx.send(ObjectRef::new(batch));
                            }
                        }
                        Ok(_) => {}
                        Err(err) => warn!(
                            watch = "certifications",
                            %err,
                            "cannot watch NVCRE's Certifications (is NVCRE installed, and may gpufleet read them?); retrying with backoff"
                        ),
                    }
                    future::ready(())
                })
                .await
        }
    };
    let run = async move {
        tokio::select! {
            _ = cert_watch => error!("the certification watch ended"),
            _ = pool_watch => error!("the pool watch ended"),
            _ = batch_watch => error!("the batch watch ended"),
            _ = node_watch => error!("the node watch ended"),
            _ = probe_watch => error!("the probe watch ended"),
        }
    }
    .boxed();
    Watches {
        stores,
        expectations,
        deliveries,
        objects: object_watch,
        batch_requests,
        pool_requests,
        run,
    }
}

/// Drives one watch: counts it synced at its first full list, calls
/// `changed` for every object added, changed or deleted after that, and logs
/// errors (the watcher retries by itself, with backoff).
fn drive<T>(
    name: &'static str,
    synced: Arc<tokio::sync::watch::Sender<usize>>,
    mut changed: impl FnMut(&T),
) -> impl FnMut(Result<watcher::Event<T>, watcher::Error>) -> future::Ready<()> {
    let mut listed = false;
    move |event| {
        match event {
            Ok(watcher::Event::InitDone) if !listed => {
                listed = true;
                synced.send_modify(|n| *n += 1);
                info!(watch = name, "watch synced");
            }
            Ok(watcher::Event::Apply(obj) | watcher::Event::Delete(obj)) => changed(&obj),
            Ok(_) => {}
            Err(err) => warn!(watch = name, %err, "watch error; retrying with backoff"),
        }
        future::ready(())
    }
}

/// A hash of what batches read of their pool (see the pool watch): its
/// generation, labels, deletion and breaker ledger.
fn pool_fingerprint(pool: &GpuPool) -> u64 {
    let ledger = pool.status.as_ref().and_then(|s| s.breaker.as_ref());
    let text = serde_json::to_string(&(
        pool.metadata.generation,
        &pool.metadata.labels,
        pool.metadata.deletion_timestamp.is_some(),
        pool.metadata.uid.as_deref(),
        ledger.map(|b| &b.failures),
    ))
    .unwrap_or_default();
    keys::stable_hash(text.as_bytes())
}

/// A node event, each node marked with whether a plan has news in it.
fn with_news(
    event: watcher::Event<Arc<NodeView>>,
    news: bool,
) -> watcher::Event<(Arc<NodeView>, bool)> {
    match event {
        watcher::Event::Init => watcher::Event::Init,
        watcher::Event::InitApply(node) => watcher::Event::InitApply((node, true)),
        watcher::Event::InitDone => watcher::Event::InitDone,
        watcher::Event::Apply(node) => watcher::Event::Apply((node, news)),
        watcher::Event::Delete(node) => watcher::Event::Delete((node, true)),
    }
}

/// Every batch of a pool.
fn batches_of_pool(stores: &Stores, pool: &str) -> Vec<ObjectRef<DeserializeGuard<RolloutBatch>>> {
    stores
        .batches()
        .into_iter()
        .filter(|b| b.spec.pool_ref == pool)
        .map(|b| ObjectRef::new(&b.name_any()))
        .collect()
}

/// A node concerns every batch of every pool that selects it (they share the
/// concurrency budget and the breaker), and the batch that last touched it.
fn batches_of_node(
    stores: &Stores,
    node: &NodeView,
) -> Vec<ObjectRef<DeserializeGuard<RolloutBatch>>> {
    let mut refs: Vec<_> = stores
        .pools()
        .into_iter()
        .filter(|p| matches(&p.spec.node_selector, &node.labels))
        .flat_map(|p| batches_of_pool(stores, &p.name_any()))
        .collect();
    if let Some(batch) = &node.batch {
        refs.push(ObjectRef::new(batch));
    }
    refs
}

fn pools_of_node(stores: &Stores, node: &NodeView) -> Vec<ObjectRef<DeserializeGuard<GpuPool>>> {
    stores
        .pools()
        .into_iter()
        .filter(|p| matches(&p.spec.node_selector, &node.labels))
        .map(|p| ObjectRef::new(&p.name_any()))
        .collect()
}
