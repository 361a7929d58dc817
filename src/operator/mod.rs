//! `gpufleet run`: the controller. It watches pools, batches, nodes and its
//! probe pods, asks the planner what to do, and does it. Thin and
//! idempotent: every decision stays in the planner.
//!
//! Each reconcile is a pipeline: dereference the pool and observe the caches
//! (no client required), plan (pure), act and write status (client required).

mod act;
mod batch;
mod error;
mod events;
mod http;
pub mod leader;
pub mod metrics;
mod observe;
mod pool;
pub mod probe;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{StreamExt, TryStreamExt, future};
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::Api;
use kube::core::DeserializeGuard;
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::{self, ObjectRef};
use kube::runtime::{Controller, WatchStreamExt, controller, watcher};
use kube::{Client, ResourceExt};
use tracing::{error, info, warn};

use crate::api::{GpuPool, RolloutBatch};
use crate::keys;
use crate::planner::{NodeView, matches};

pub use batch::FINALIZER;
pub use error::Error;
use observe::Stores;

/// How `gpufleet run` behaves.
#[derive(Clone, Debug)]
pub struct Config {
    /// Where probe pods live.
    pub namespace: String,
    /// Reconciles in flight at once, per kind.
    pub concurrency: u16,
    /// Only nodes with these labels are watched (`kubectl -l` syntax); none:
    /// every node. Narrow it where the pools allow, to save memory.
    pub node_selector: Option<String>,
    /// Events per second across the process (bursts of 5× that).
    pub events_per_second: f64,
    /// Only pools and batches with these labels are handled (`kubectl -l`
    /// syntax): to run several operators side by side, each on its shard.
    pub selector: Option<String>,
    /// Leader election; `None`: this replica always leads.
    pub lease: Option<leader::LeaseConfig>,
    /// Where to serve `/metrics`; `None`: nowhere.
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// Where to serve `/healthz` and `/readyz`; `None`: nowhere.
    pub health_addr: Option<std::net::SocketAddr>,
    /// Writes per second to the API server, and the burst above that.
    pub qps: f64,
    pub burst: f64,
    /// The metrics registry (shared with the client, which counts requests).
    pub metrics: Arc<metrics::Metrics>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            namespace: "gpufleet-system".into(),
            concurrency: 4,
            node_selector: None,
            events_per_second: 5.0,
            selector: None,
            lease: None,
            metrics_addr: None,
            health_addr: None,
            qps: 50.0,
            burst: 100.0,
            metrics: Arc::new(metrics::Metrics::new()),
        }
    }
}

/// What every reconcile shares.
pub struct Context {
    pub client: Client,
    pub config: Config,
    stores: Stores,
    recorder: Recorder,
    event_limiter: events::Limiter,
    /// Client-side rate limit on writes.
    write_limiter: events::Limiter,
    /// Whether this replica may write.
    leadership: leader::Leadership,
    metrics: Arc<metrics::Metrics>,
    pool_locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Probe writes the probe watch has not shown yet.
    expectations: Arc<act::Expectations>,
    /// When each pool was last reconciled (see [`pool::EVERY`]).
    pool_last_run: Mutex<HashMap<String, std::time::Instant>>,
}

impl Context {
    /// How long until `pool` may be reconciled again, when it ran less than
    /// `every` ago; otherwise `None`, and the run is recorded as now.
    fn pool_wait(&self, pool: &str, every: Duration) -> Option<Duration> {
        let mut runs = self.pool_last_run.lock().expect("pool run map");
        let now = std::time::Instant::now();
        if let Some(last) = runs.get(pool) {
            let since = now.duration_since(*last);
            if since < every {
                return Some(every - since);
            }
        }
        runs.insert(pool.to_string(), now);
        None
    }

    /// The lock that serialises the batches of one pool.
    fn pool_lock(&self, pool: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self.pool_locks.lock().expect("pool lock map");
        locks.entry(pool.to_string()).or_default().clone()
    }
}

/// Runs the controllers until `shutdown` resolves.
pub async fn run(
    client: Client,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    // Watches end and are re-established every minute or so: one that a
    // restarted API server left hanging is replaced within that time.
    let watch = watcher::Config::default().timeout(55);
    let node_watch = match &config.node_selector {
        Some(selector) => watch.clone().labels(selector),
        None => watch.clone(),
    };
    let probe_watch = watch
        .clone()
        .labels(&format!("{}={}", keys::MANAGED_BY, keys::MANAGER));
    let object_watch = match &config.selector {
        Some(selector) => watch.clone().labels(selector),
        None => watch.clone(),
    };
    let pools_api: Api<DeserializeGuard<GpuPool>> = Api::all(client.clone());
    let batches_api: Api<DeserializeGuard<RolloutBatch>> = Api::all(client.clone());
    let nodes_api: Api<Node> = Api::all(client.clone());
    let probes_api: Api<Pod> = Api::namespaced(client.clone(), &config.namespace);

    // The watches feed the caches that plans are built from, and turn each
    // change into reconcile requests for the controllers. Nothing downstream
    // can hold a watch back: requests go through unbounded channels (a few
    // object references; the controllers deduplicate them), so a busy
    // controller never stalls a watch into being closed by the API server.
    let (pool_store, pool_writer) = reflector::store::<DeserializeGuard<GpuPool>>();
    let (batch_store, batch_writer) = reflector::store::<DeserializeGuard<RolloutBatch>>();
    let node_cache = observe::NodeCache::default();
    let mut node_writer = node_cache.writer();
    let (probe_store, probe_writer) = reflector::store::<Pod>();
    let (synced_tx, synced) = tokio::sync::watch::channel(0usize);
    let synced_tx = Arc::new(synced_tx);
    let stores = Stores {
        pools: pool_store.clone(),
        batches: batch_store.clone(),
        nodes: node_cache,
        probes: probe_store.clone(),
        synced,
    };
    let (batch_tx, batch_rx) =
        tokio::sync::mpsc::unbounded_channel::<ObjectRef<DeserializeGuard<RolloutBatch>>>();
    let (pool_tx, pool_rx) =
        tokio::sync::mpsc::unbounded_channel::<ObjectRef<DeserializeGuard<GpuPool>>>();

    let pool_watch = {
        let (s, tx) = (stores.clone(), batch_tx.clone());
        watcher(pools_api, object_watch.clone())
            .default_backoff()
            .reflect(pool_writer)
            .for_each(drive(
                "gpupools",
                synced_tx.clone(),
                move |pool: &DeserializeGuard<GpuPool>| {
                    let name = match &pool.0 {
                        Ok(p) => p.name_any(),
                        Err(invalid) => invalid.metadata.name.clone().unwrap_or_default(),
                    };
                    for batch in batches_of_pool(&s, &name) {
                        let _ = tx.send(batch);
                    }
                },
            ))
    };
    let batch_watch = watcher(batches_api.clone(), object_watch.clone())
        .default_backoff()
        .reflect(batch_writer)
        .for_each(drive(
            "rolloutbatches",
            synced_tx.clone(),
            |_: &DeserializeGuard<RolloutBatch>| {},
        ));
    // Nodes are cached as views, each built once per event (see
    // `observe::NodeCache`), not as Node objects.
    let node_watcher = {
        let (s, btx, ptx) = (stores.clone(), batch_tx.clone(), pool_tx.clone());
        watcher(nodes_api, node_watch)
            .default_backoff()
            .map_ok(observe::view_event)
            .inspect_ok(move |event| node_writer(event))
            .for_each(drive(
                "nodes",
                synced_tx.clone(),
                move |node: &Arc<NodeView>| {
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
    let probe_watcher = {
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
            .for_each(drive("probe pods", synced_tx.clone(), move |pod: &Pod| {
                if let Some(batch) = pod.annotations().get(keys::BATCH) {
                    let _ = tx.send(ObjectRef::new(batch));
                }
            }))
    };

    // Leader election: every replica watches; only the leader writes.
    let (leadership, election, releaser) = match &config.lease {
        Some(lease) => {
            let (l, task, r) = leader::elect(client.clone(), lease.clone());
            (l, Some(task), Some(r))
        }
        None => (leader::Leadership::always(), None, None),
    };
    let reporter = Reporter {
        controller: "gpufleet".into(),
        instance: std::env::var("POD_NAME").ok(),
    };
    let ctx = Arc::new(Context {
        client: client.clone(),
        recorder: Recorder::new(client.clone(), reporter),
        event_limiter: events::Limiter::new(
            config.events_per_second,
            config.events_per_second * 5.0,
        ),
        write_limiter: events::Limiter::new(config.qps, config.burst),
        leadership: leadership.clone(),
        metrics: config.metrics.clone(),
        config: config.clone(),
        stores: stores.clone(),
        pool_locks: Mutex::new(HashMap::new()),
        pool_last_run: Mutex::new(HashMap::new()),
        expectations: expectations.clone(),
    });

    let controller_config = controller::Config::default().concurrency(config.concurrency);

    // Batches: their own changes (the controller's own watch), and the
    // requests the other watches send: their pool's, nodes' and probes'.
    let batch_controller = Controller::new(batches_api, object_watch.clone())
        .with_config(controller_config.clone())
        .reconcile_on(tokio_stream_of(batch_rx))
        .reconcile_all_on(acquisitions(leadership.clone()))
        .run(batch::reconcile, error_policy_batch, ctx.clone())
        .for_each(|result| {
            if let Err(err) = result {
                log_controller_error("rolloutbatch", &err);
            }
            future::ready(())
        });
    // Pools: their own changes and their nodes'.
    let pool_controller = Controller::new(
        Api::<DeserializeGuard<GpuPool>>::all(client.clone()),
        object_watch,
    )
    .with_config(controller_config)
    .reconcile_on(tokio_stream_of(pool_rx))
    .reconcile_all_on(acquisitions(leadership.clone()))
    .run(pool::reconcile, error_policy_pool, ctx.clone())
    .for_each(|result| {
        if let Err(err) = result {
            log_controller_error("gpupool", &err);
        }
        future::ready(())
    });
    drop((batch_tx, pool_tx));

    let probes = http::Probes {
        metrics: config.metrics.clone(),
        synced: stores.synced.clone(),
        watches: observe::WATCHES,
    };
    // The endpoints run for as long as the operator; with none configured,
    // this never resolves.
    let endpoints = async move {
        http::serve(config.metrics_addr, config.health_addr, probes).await?;
        future::pending::<anyhow::Result<()>>().await
    };
    let election = async move {
        match election {
            Some(task) => {
                let _ = task.await;
            }
            None => future::pending::<()>().await,
        }
    };
    let leader_gauge = {
        let l = leadership.clone();
        let metrics = config.metrics.clone();
        async move {
            loop {
                metrics.leader.set(i64::from(l.is_leader()));
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    };

    info!(namespace = %config.namespace, concurrency = config.concurrency, node_selector = ?config.node_selector, selector = ?config.selector, election = config.lease.is_some(), "gpufleet is running");
    tokio::select! {
        result = endpoints => {
            let err = result.err().unwrap_or_else(|| anyhow::anyhow!("the HTTP endpoints stopped"));
            error!(%err, "the HTTP endpoints stopped");
            return Err(err);
        }
        _ = election => error!("the leader election ended"),
        _ = leader_gauge => {},
        _ = pool_watch => error!("the pool watch ended"),
        _ = batch_watch => error!("the batch watch ended"),
        _ = node_watcher => error!("the node watch ended"),
        _ = probe_watcher => error!("the probe watch ended"),
        _ = batch_controller => error!("the batch controller ended"),
        _ = pool_controller => error!("the pool controller ended"),
        _ = shutdown => info!("shutting down"),
    }
    if let Some(releaser) = releaser {
        releaser.release().await;
    }
    Ok(())
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

/// An unbounded receiver as a stream.
fn tokio_stream_of<T: Send + 'static>(
    mut rx: tokio::sync::mpsc::UnboundedReceiver<T>,
) -> impl futures::Stream<Item = T> + Send + 'static {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

/// A stream that yields each time this replica becomes leader, so that
/// everything is reconciled at once by the new leader.
fn acquisitions(
    leadership: leader::Leadership,
) -> impl futures::Stream<Item = ()> + Send + 'static {
    futures::stream::unfold(leadership, |mut l| async move {
        l.acquired().await;
        Some(((), l))
    })
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

fn error_policy_batch(
    batch: Arc<DeserializeGuard<RolloutBatch>>,
    err: &Error,
    ctx: Arc<Context>,
) -> controller::Action {
    on_error("rolloutbatch", guarded_name(&batch), err, &ctx)
}

fn error_policy_pool(
    pool: Arc<DeserializeGuard<GpuPool>>,
    err: &Error,
    ctx: Arc<Context>,
) -> controller::Action {
    on_error("gpupool", guarded_name(&pool), err, &ctx)
}

/// The name of an object, read or not.
fn guarded_name<K: kube::Resource>(guard: &DeserializeGuard<K>) -> String {
    match &guard.0 {
        Ok(obj) => obj.name_any(),
        Err(invalid) => invalid.metadata.name.clone().unwrap_or_default(),
    }
}

/// A failed reconcile: counted by category, logged with the object, retried
/// after a backoff that suits the error.
fn on_error(kind: &'static str, name: String, err: &Error, ctx: &Context) -> controller::Action {
    ctx.metrics
        .reconcile_errors
        .get_or_create(&metrics::ErrorLabels {
            kind: kind.into(),
            category: err.category().into(),
        })
        .inc();
    warn!(kind, object = %name, category = err.category(), error = %err, "reconcile failed; retrying");
    controller::Action::requeue(backoff(err))
}

/// Conflicts retry at once with fresh caches; other errors back off.
fn backoff(err: &Error) -> Duration {
    match err.category() {
        "conflict" => Duration::from_millis(200),
        "not_leader" => Duration::from_secs(30),
        "transport" | "api" | "cache" => Duration::from_secs(5),
        _ => Duration::from_secs(15),
    }
}

fn log_controller_error<Q: std::error::Error + 'static>(
    kind: &str,
    err: &controller::Error<Error, Q>,
) {
    match err {
        // Already logged with the object by the error policy.
        controller::Error::ReconcilerFailed(..) => {}
        other => warn!(kind, error = %other, "controller error"),
    }
}
