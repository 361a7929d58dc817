//! What every reconcile shares: the operator's [`Config`] and the
//! [`Context`] built from it once the watches and the election exist.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kube::Client;
use kube::runtime::events::{Recorder, Reporter};

use super::deliveries::Deliveries;
use super::observe::Stores;
use super::pace::Pacer;
use super::{act, events, leader, metrics};

/// Where probe pods run, and as whom.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Probes {
    /// The namespace of the probe pods: one of their own, so that the
    /// operator's namespace can enforce the `restricted` Pod Security
    /// standard while a burn-in runs privileged here.
    pub namespace: String,
    /// The ServiceAccount every probe pod runs as, whatever its template
    /// says: an account of the probe namespace with no permissions of its
    /// own, never gpufleet's.
    pub service_account: String,
}

/// The probe ServiceAccount's default name (the chart's, too).
pub const PROBE_SERVICE_ACCOUNT: &str = "gpufleet-probe";

impl Probes {
    /// Probes in `namespace`, as [`PROBE_SERVICE_ACCOUNT`].
    pub fn in_namespace(namespace: &str) -> Self {
        Probes {
            namespace: namespace.into(),
            service_account: PROBE_SERVICE_ACCOUNT.into(),
        }
    }
}

/// How `gpufleet run` behaves.
#[derive(Clone, Debug)]
pub struct Config {
    /// gpufleet's own namespace: the leader-election Lease's.
    pub namespace: String,
    /// Where probe pods run, and as whom.
    pub probes: Probes,
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
    /// Watch NVCRE's Certifications in the probe namespace and run rack
    /// tests through them (`healthChecks.domainTest.nvcre`): needs NVCRE's
    /// CRD and the rights on it (the chart's `nvcre.enabled`).
    pub nvcre: bool,
    /// A batch is planned again at the soonest this long per node of its
    /// pool after its last plan (at most [`super::pace::MAX_PLAN_PACE`]): a plan reads
    /// the whole pool, so without a pace a busy batch planned back to back
    /// and its CPU grew with the square of the fleet. Zero: back to back.
    pub plan_pace_per_node: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            namespace: "gpufleet-system".into(),
            probes: Probes::in_namespace("gpufleet-system"),
            concurrency: 4,
            node_selector: None,
            events_per_second: 5.0,
            selector: None,
            lease: None,
            metrics_addr: None,
            health_addr: None,
            qps: 200.0,
            nvcre: false,
            burst: 300.0,
            metrics: Arc::new(metrics::Metrics::new()),
            plan_pace_per_node: super::pace::PLAN_PACE_PER_NODE,
        }
    }
}

/// What every reconcile shares.
pub struct Context {
    pub client: Client,
    pub config: Config,
    pub(super) stores: Stores,
    pub(super) recorder: Recorder,
    pub(super) event_limiter: events::Limiter,
    /// Client-side rate limit on writes.
    pub(super) write_limiter: events::Limiter,
    /// Whether this replica may write.
    pub(super) leadership: leader::Leadership,
    pub(super) metrics: Arc<metrics::Metrics>,
    pool_locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Probe writes the probe watch has not shown yet.
    pub(super) expectations: Arc<act::Expectations>,
    /// Node writes the node watch has not delivered yet.
    pub(super) deliveries: Arc<Deliveries>,
    /// When each pool may be reconciled again (see [`super::pool::EVERY`]).
    pool_pace: Pacer,
    /// Batches (by UID) whose probe pods the API server refused, with its
    /// message and when it last did (see [`Context::probe_rejection`]).
    probe_rejections: Mutex<HashMap<String, (String, std::time::Instant)>>,
    /// When each batch (by UID) may be planned again.
    plan_pace: Pacer,
}

/// How long a refused probe pod stops new starts without a new refusal:
/// then a start is tried again (behind a dry run, see `act`).
pub const REJECTION_HOLDS: Duration = Duration::from_secs(15);

impl Context {
    /// The context of one operator: the caches and trackers its watches
    /// fill, and whether it leads.
    pub(super) fn new(
        client: Client,
        config: Config,
        stores: Stores,
        expectations: Arc<act::Expectations>,
        deliveries: Arc<Deliveries>,
        leadership: leader::Leadership,
    ) -> Self {
        let reporter = Reporter {
            controller: "gpufleet".into(),
            instance: std::env::var("POD_NAME").ok(),
        };
        let pace = config.plan_pace_per_node;
        Context {
            recorder: Recorder::new(client.clone(), reporter),
            event_limiter: events::Limiter::new(
                config.events_per_second,
                config.events_per_second * 5.0,
            ),
            write_limiter: events::Limiter::new(config.qps, config.burst),
            leadership,
            metrics: config.metrics.clone(),
            client,
            config,
            stores,
            pool_locks: Mutex::new(HashMap::new()),
            pool_pace: Pacer::new(pace, super::pace::POOL_PACE_FACTOR, super::pool::EVERY),
            probe_rejections: Mutex::new(HashMap::new()),
            plan_pace: Pacer::new(pace, 1, Duration::ZERO),
            expectations,
            deliveries,
        }
    }

    /// How long until `pool` may be reconciled again ([`Pacer`]); a pool
    /// one of whose nodes turned failed since is reconciled at once, so that
    /// the breaker's ledger records the failure before anyone erases it.
    pub(super) fn pool_wait(&self, pool: &str, generation: Option<i64>) -> Option<Duration> {
        let urgent = self
            .stores
            .urgent_pools
            .lock()
            .expect("urgent pools")
            .remove(pool);
        self.pool_pace
            .wait(pool, generation, urgent, std::time::Instant::now())
    }

    /// Records a reconcile of `pool`, begun at `started`, over `nodes`.
    pub(super) fn pool_planned(
        &self,
        pool: &str,
        generation: Option<i64>,
        nodes: usize,
        started: std::time::Instant,
    ) {
        let pools = self.pool_names();
        self.pool_pace
            .planned(pool, generation, nodes, started, |p| pools.contains(p));
    }

    /// How long until the batch with this UID may be planned again
    /// ([`Pacer`]); `None`: plan now.
    pub(super) fn plan_wait(&self, batch_uid: &str, generation: Option<i64>) -> Option<Duration> {
        self.plan_pace
            .wait(batch_uid, generation, false, std::time::Instant::now())
    }

    /// Records a plan of the batch with this UID, begun at `started`, over
    /// a pool of `nodes`.
    pub(super) fn planned(
        &self,
        batch_uid: &str,
        generation: Option<i64>,
        nodes: usize,
        started: std::time::Instant,
    ) {
        let batches: std::collections::HashSet<String> = self
            .stores
            .batches()
            .into_iter()
            .filter_map(|b| b.metadata.uid)
            .collect();
        self.plan_pace
            .planned(batch_uid, generation, nodes, started, |uid| {
                batches.contains(uid)
            });
    }

    /// The API server's last refusal of a probe pod of the batch with this
    /// UID, if it came within [`REJECTION_HOLDS`].
    pub(super) fn probe_rejection(&self, batch_uid: &str) -> Option<String> {
        let mut map = self.probe_rejections.lock().expect("rejection map");
        map.retain(|_, (_, at)| at.elapsed() < REJECTION_HOLDS);
        map.get(batch_uid).map(|(message, _)| message.clone())
    }

    /// Notes a refusal (`Some`), or that a probe pod was created (`None`).
    pub(super) fn note_probe_rejection(&self, batch_uid: &str, message: Option<String>) {
        let mut map = self.probe_rejections.lock().expect("rejection map");
        match message {
            Some(message) => {
                map.insert(batch_uid.to_string(), (message, std::time::Instant::now()));
            }
            None => {
                map.remove(batch_uid);
            }
        }
    }

    /// The names of the pools in the cache: what this replica keeps per
    /// pool is dropped once its pool is gone.
    fn pool_names(&self) -> std::collections::BTreeSet<String> {
        self.stores
            .pools
            .state()
            .iter()
            .filter_map(|p| match &p.0 {
                Ok(pool) => pool.metadata.name.clone(),
                Err(invalid) => invalid.metadata.name.clone(),
            })
            .collect()
    }

    /// The lock that serialises the batches of one pool.
    pub(super) fn pool_lock(&self, pool: &str) -> Arc<tokio::sync::Mutex<()>> {
        let pools = self.pool_names();
        let mut locks = self.pool_locks.lock().expect("pool lock map");
        // A deleted pool's lock goes once no batch holds it.
        locks.retain(|name, lock| pools.contains(name) || Arc::strong_count(lock) > 1);
        locks.entry(pool.to_string()).or_default().clone()
    }
}
