//! What every reconcile shares: the operator's [`Config`] and the
//! [`Context`] built from it once the watches and the election exist.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kube::Client;
use kube::runtime::events::{Recorder, Reporter};

use super::deliveries::Deliveries;
use super::observe::Stores;
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
    /// pool after its last plan (at most [`MAX_PLAN_PACE`]): a plan reads
    /// the whole pool, so without a pace a busy batch planned back to back
    /// and its CPU grew with the square of the fleet. Zero: back to back.
    pub plan_pace_per_node: Duration,
}

/// A pool's last reconcile: when, its pace then, and the pool's generation.
type PoolRun = (std::time::Instant, Duration, Option<i64>);

/// A pool's reconcile (its capacity report and breaker ledger) is paced
/// this many times a batch's plan: it changes no node, and a node that
/// fails makes it run at once.
pub const POOL_PACE_FACTOR: u32 = 5;

/// The longest a batch's plans are paced apart, whatever its pool's size:
/// a batch's nodes wait at most this long for a decision, and with a fixed
/// `maxConcurrent` the pace bounds how fast waves turn over. At 5 s, a
/// plan over 137,500 nodes (about 0.15 s of CPU) takes 3 % of a core.
pub const MAX_PLAN_PACE: Duration = Duration::from_secs(5);

/// The default pace: 0.4 s per 1,000 nodes, up to [`MAX_PLAN_PACE`] (from
/// 12,500 nodes on).
pub const PLAN_PACE_PER_NODE: Duration = Duration::from_micros(400);

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
            plan_pace_per_node: PLAN_PACE_PER_NODE,
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
    /// When each pool was last reconciled, and its pace then (see
    /// [`super::pool::EVERY`]).
    pool_last_run: Mutex<HashMap<String, PoolRun>>,
    /// Batches (by UID) whose probe pods the API server refused, with its
    /// message and when it last did (see [`Context::probe_rejection`]).
    probe_rejections: Mutex<HashMap<String, (String, std::time::Instant)>>,
    /// Batches (by UID): when each may be planned next, and the generation
    /// it was last planned at (see [`Context::plan_wait`]).
    plan_pace: Mutex<HashMap<String, (std::time::Instant, Option<i64>)>>,
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
            pool_last_run: Mutex::new(HashMap::new()),
            probe_rejections: Mutex::new(HashMap::new()),
            plan_pace: Mutex::new(HashMap::new()),
            expectations,
            deliveries,
        }
    }

    /// How long until `pool` may be reconciled again, when it ran less than
    /// its pace ago (`every`, or [`POOL_PACE_FACTOR`] times the plan pace
    /// for its last size, whichever is longer), its spec is the same and no
    /// node of it turned failed since; otherwise `None`, and the run is
    /// recorded as now (call [`Self::pool_size`] after).
    pub(super) fn pool_wait(
        &self,
        pool: &str,
        generation: Option<i64>,
        every: Duration,
    ) -> Option<Duration> {
        let pools = self.pool_names();
        let urgent = self
            .stores
            .urgent_pools
            .lock()
            .expect("urgent pools")
            .remove(pool);
        let mut runs = self.pool_last_run.lock().expect("pool run map");
        runs.retain(|name, _| pools.contains(name));
        let now = std::time::Instant::now();
        if let (Some((last, pace, seen)), false) = (runs.get(pool), urgent)
            && *seen == generation
        {
            let since = now.duration_since(*last);
            let pace = (*pace).max(every);
            if since < pace {
                return Some(pace - since);
            }
        }
        let pace = runs.get(pool).map(|(_, p, _)| *p).unwrap_or_default();
        runs.insert(pool.to_string(), (now, pace, generation));
        None
    }

    /// Records the size of `pool` as its last reconcile found it: its
    /// next reconcile waits the plan pace for that many nodes.
    pub(super) fn pool_size(&self, pool: &str, nodes: usize) {
        let pace = self
            .config
            .plan_pace_per_node
            .saturating_mul(u32::try_from(nodes).unwrap_or(u32::MAX))
            .saturating_mul(POOL_PACE_FACTOR)
            .min(MAX_PLAN_PACE);
        if let Some(run) = self
            .pool_last_run
            .lock()
            .expect("pool run map")
            .get_mut(pool)
        {
            run.1 = pace;
        }
    }

    /// How long until the batch with this UID may be planned again, if it
    /// was planned too recently ([`Config::plan_pace_per_node`]); `None`:
    /// plan now. A batch whose spec changed (a person paused, approved or
    /// edited it) is planned at once.
    pub(super) fn plan_wait(&self, batch_uid: &str, generation: Option<i64>) -> Option<Duration> {
        let map = self.plan_pace.lock().expect("plan pace map");
        let (next, planned_at) = map.get(batch_uid)?;
        if *planned_at != generation {
            return None;
        }
        next.checked_duration_since(std::time::Instant::now())
            .filter(|d| !d.is_zero())
    }

    /// Records a plan of the batch with this UID over a pool of `nodes`,
    /// made at `started`: the next may come one pace later.
    pub(super) fn planned(
        &self,
        batch_uid: &str,
        generation: Option<i64>,
        nodes: usize,
        started: std::time::Instant,
    ) {
        let pace = self
            .config
            .plan_pace_per_node
            .saturating_mul(u32::try_from(nodes).unwrap_or(u32::MAX))
            .min(MAX_PLAN_PACE);
        let batches: std::collections::HashSet<String> = self
            .stores
            .batches()
            .into_iter()
            .filter_map(|b| b.metadata.uid)
            .collect();
        let mut map = self.plan_pace.lock().expect("plan pace map");
        map.retain(|uid, _| batches.contains(uid));
        map.insert(batch_uid.to_string(), (started + pace, generation));
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
