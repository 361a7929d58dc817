//! Prometheus metrics. Labels are bounded: pool, batch, wave, state, a small
//! fixed set of failure categories, verbs and resources — never a node.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::api::{GpuPoolStatus, RolloutBatchStatus};
use crate::planner::NodeState;
use crate::vocabulary::ConditionType;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PoolLabels {
    pub pool: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PoolStateLabels {
    pub pool: String,
    pub state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BatchLabels {
    pub pool: String,
    pub batch: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WaveLabels {
    pub pool: String,
    pub batch: String,
    pub wave: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FailureLabels {
    pub pool: String,
    pub batch: String,
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct NewsLabels {
    pub planned: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ControllerLabels {
    pub controller: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    pub pool: String,
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    pub kind: String,
    pub category: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub verb: String,
    pub resource: String,
}

/// Every metric gpufleet exports.
pub struct Metrics {
    registry: Registry,
    pub pool_nodes: Family<PoolStateLabels, Gauge>,
    pub pool_gpus_ready: Family<PoolLabels, Gauge>,
    pub pool_gpus_total: Family<PoolLabels, Gauge>,
    pub pool_domains_complete: Family<PoolLabels, Gauge>,
    pub pool_domains_total: Family<PoolLabels, Gauge>,
    pub pool_breaker_tripped: Family<PoolLabels, Gauge>,
    pub batch_current_wave: Family<BatchLabels, Gauge>,
    pub batch_total_waves: Family<BatchLabels, Gauge>,
    pub batch_stalled: Family<BatchLabels, Gauge>,
    pub batch_ready: Family<BatchLabels, Gauge>,
    pub batch_energy: Family<BatchLabels, Gauge>,
    pub batch_gpus_online: Family<BatchLabels, Gauge>,
    pub batch_gpu_hours: Family<BatchLabels, Gauge>,
    pub wave_nodes_admitted: Family<WaveLabels, Gauge>,
    pub wave_nodes_failed: Family<WaveLabels, Gauge>,
    pub admissions: Family<BatchLabels, Counter>,
    pub failures: Family<FailureLabels, Counter>,
    pub rack_tests: Family<ResultLabels, Counter>,
    pub onboarding_seconds: Family<PoolLabels, Histogram>,
    pub reconcile_seconds: Family<KindLabels, Histogram>,
    pub reconcile_errors: Family<ErrorLabels, Counter>,
    pub api_requests: Family<RequestLabels, Counter>,
    pub leader: Gauge,
    pub last_progress: Family<BatchLabels, Gauge>,
    pub write_conflicts: Counter,
    /// Node events by whether a plan had news in them.
    pub node_events: Family<NewsLabels, Counter>,
    /// Node records the plans visited (the operator's own work counter),
    /// by controller (`rolloutbatch`, `gpupool`).
    pub plan_node_visits: Family<ControllerLabels, Counter>,
    /// Batch reconciles put off to keep a plan's pace.
    pub plans_paced: Counter,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// Node writes refused as stale (the batch is planned again).
    pub fn record_conflicts(&self, count: usize) {
        self.write_conflicts.inc_by(count as u64);
    }

    /// Counts the node records a plan of `controller` read.
    pub fn record_visits(&self, controller: &str, nodes: usize) {
        self.plan_node_visits
            .get_or_create(&ControllerLabels {
                controller: controller.into(),
            })
            .inc_by(nodes as u64);
    }

    /// One changed node from the watch: `news` when a plan reads something
    /// new in it (else it plans nothing).
    pub fn record_node_event(&self, news: bool) {
        self.node_events
            .get_or_create(&NewsLabels {
                planned: if news { "yes" } else { "no" }.into(),
            })
            .inc();
    }

    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("gpufleet");
        let m = Metrics {
            pool_nodes: Family::default(),
            pool_gpus_ready: Family::default(),
            pool_gpus_total: Family::default(),
            pool_domains_complete: Family::default(),
            pool_domains_total: Family::default(),
            pool_breaker_tripped: Family::default(),
            batch_current_wave: Family::default(),
            batch_energy: Family::default(),
            batch_gpus_online: Family::default(),
            batch_gpu_hours: Family::default(),
            batch_total_waves: Family::default(),
            batch_stalled: Family::default(),
            batch_ready: Family::default(),
            wave_nodes_admitted: Family::default(),
            wave_nodes_failed: Family::default(),
            admissions: Family::default(),
            failures: Family::default(),
            rack_tests: Family::default(),
            onboarding_seconds: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(15.0, 2.0, 14))
            }),
            reconcile_seconds: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.001, 2.0, 16))
            }),
            reconcile_errors: Family::default(),
            api_requests: Family::default(),
            leader: Gauge::default(),
            last_progress: Family::default(),
            write_conflicts: Counter::default(),
            node_events: Family::default(),
            plan_node_visits: Family::default(),
            plans_paced: Counter::default(),
            registry: Registry::default(),
        };
        let r = &mut registry;
        r.register(
            "pool_nodes",
            "Nodes of a pool by gpufleet state",
            m.pool_nodes.clone(),
        );
        r.register(
            "pool_gpus_ready",
            "GPUs on admitted nodes of a pool",
            m.pool_gpus_ready.clone(),
        );
        r.register(
            "pool_gpus",
            "GPUs on all nodes of a pool",
            m.pool_gpus_total.clone(),
        );
        r.register(
            "pool_domains_complete",
            "Domains of a pool with enough admitted nodes",
            m.pool_domains_complete.clone(),
        );
        r.register(
            "pool_domains",
            "Domains of a pool",
            m.pool_domains_total.clone(),
        );
        r.register(
            "node_events",
            "Changed nodes the watch delivered, by whether a plan read anything new in them (planned=no: a heartbeat or a field gpufleet ignores; nothing is planned)",
            m.node_events.clone(),
        );
        r.register(
            "plan_node_visits",
            "Node records read by plans, by controller (rolloutbatch, gpupool): the operator's own work, in counts",
            m.plan_node_visits.clone(),
        );
        r.register(
            "plans_paced",
            "Batch reconciles put off because the batch was planned less than its pace ago (0.4 s per 1,000 nodes of its pool by default): what changed meanwhile is planned together",
            m.plans_paced.clone(),
        );
        r.register(
            "node_write_conflicts",
            "Node writes refused because the node changed since the plan read it",
            m.write_conflicts.clone(),
        );
        r.register(
            "pool_breaker_tripped",
            "1 while the pool's circuit breaker halts its rollouts",
            m.pool_breaker_tripped.clone(),
        );
        r.register(
            "batch_energy_watt_hours",
            "Energy a batch's nodes drew under test so far (watt-hours)",
            m.batch_energy.clone(),
        );
        r.register(
            "batch_gpus_online",
            "GPUs of a batch admitted",
            m.batch_gpus_online.clone(),
        );
        r.register(
            "batch_gpu_hours",
            "GPU-hours of a batch's admitted capacity while its rollout ran",
            m.batch_gpu_hours.clone(),
        );
        r.register(
            "batch_current_wave",
            "The wave a batch is in (0 before it starts)",
            m.batch_current_wave.clone(),
        );
        r.register(
            "batch_waves",
            "Waves of a batch",
            m.batch_total_waves.clone(),
        );
        r.register(
            "batch_stalled",
            "1 while a batch waits on a person (Stalled=True)",
            m.batch_stalled.clone(),
        );
        r.register(
            "batch_ready",
            "1 once every wave of a batch is done",
            m.batch_ready.clone(),
        );
        r.register(
            "wave_nodes_admitted",
            "Admitted nodes of a wave",
            m.wave_nodes_admitted.clone(),
        );
        r.register(
            "wave_nodes_failed",
            "Failed nodes of a wave",
            m.wave_nodes_failed.clone(),
        );
        r.register(
            "node_admissions",
            "Nodes admitted (onboarding taint removed)",
            m.admissions.clone(),
        );
        r.register(
            "node_failures",
            "Nodes failed or held, by reason category",
            m.failures.clone(),
        );
        r.register(
            "rack_tests",
            "Domains whose rack test was decided, by result: passed, trays_failed (faulty trays found, the rest proven good), rack_failed (the rack as a whole)",
            m.rack_tests.clone(),
        );
        r.register(
            "node_onboarding_seconds",
            "Time from a node's start to its admission",
            m.onboarding_seconds.clone(),
        );
        r.register(
            "reconcile_duration_seconds",
            "Time of one reconcile",
            m.reconcile_seconds.clone(),
        );
        r.register(
            "reconcile_errors",
            "Failed reconciles by error category",
            m.reconcile_errors.clone(),
        );
        r.register(
            "api_requests",
            "Requests gpufleet sent to the API server",
            m.api_requests.clone(),
        );
        r.register(
            "leader",
            "1 while this replica holds the lease and writes",
            m.leader.clone(),
        );
        r.register(
            "batch_last_progress_timestamp_seconds",
            "When a batch last moved a node (Unix time), for no-progress alerts",
            m.last_progress.clone(),
        );
        Metrics { registry, ..m }
    }

    /// The text exposition format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("encoding into a String");
        out
    }

    /// Records a pool's status.
    pub fn observe_pool(&self, pool: &str, status: &GpuPoolStatus) {
        let p = || PoolLabels { pool: pool.into() };
        let counts = &status.nodes;
        for state in NodeState::ALL {
            let n = match state {
                NodeState::Pending => counts.pending,
                NodeState::Validating => counts.validating,
                NodeState::Soaking => counts.soaking,
                NodeState::Ready => counts.ready,
                NodeState::Failed => counts.failed,
                NodeState::Held => counts.held,
            };
            self.pool_nodes
                .get_or_create(&PoolStateLabels {
                    pool: pool.into(),
                    state: state.as_str().into(),
                })
                .set(i64::from(n));
        }
        self.pool_gpus_ready
            .get_or_create(&p())
            .set(i64::from(status.gpus.ready));
        self.pool_gpus_total
            .get_or_create(&p())
            .set(i64::from(status.gpus.total));
        self.pool_domains_complete
            .get_or_create(&p())
            .set(i64::from(status.domains.complete));
        self.pool_domains_total
            .get_or_create(&p())
            .set(i64::from(status.domains.total));
        let tripped = status.breaker.as_ref().is_some_and(|b| b.tripped);
        self.pool_breaker_tripped
            .get_or_create(&p())
            .set(i64::from(tripped));
    }

    /// Records a batch's status.
    pub fn observe_batch(&self, pool: &str, batch: &str, status: &RolloutBatchStatus) {
        let b = || BatchLabels {
            pool: pool.into(),
            batch: batch.into(),
        };
        self.batch_current_wave
            .get_or_create(&b())
            .set(i64::from(status.current_wave));
        self.batch_total_waves
            .get_or_create(&b())
            .set(i64::from(status.total_waves));
        let is_true = |t| crate::planner::is_true(&status.conditions, t);
        self.batch_stalled
            .get_or_create(&b())
            .set(i64::from(is_true(ConditionType::Stalled)));
        self.batch_ready
            .get_or_create(&b())
            .set(i64::from(is_true(ConditionType::Ready)));
        if let Some(energy) = &status.energy {
            self.batch_energy
                .get_or_create(&b())
                .set(i64::try_from(energy.watt_hours).unwrap_or(i64::MAX));
            self.batch_gpus_online
                .get_or_create(&b())
                .set(i64::from(energy.gpus_online));
            self.batch_gpu_hours
                .get_or_create(&b())
                .set(i64::try_from(energy.gpu_hours).unwrap_or(i64::MAX));
        }
        for wave in &status.waves {
            let w = WaveLabels {
                pool: pool.into(),
                batch: batch.into(),
                wave: wave.index.to_string(),
            };
            self.wave_nodes_admitted
                .get_or_create(&w)
                .set(i64::from(wave.admitted));
            self.wave_nodes_failed
                .get_or_create(&w)
                .set(i64::from(wave.failed));
        }
    }

    /// Forgets a deleted pool's series.
    pub fn forget_pool(&self, pool: &str) {
        let p = PoolLabels { pool: pool.into() };
        for state in NodeState::ALL {
            self.pool_nodes.remove(&PoolStateLabels {
                pool: pool.into(),
                state: state.as_str().into(),
            });
        }
        for family in [
            &self.pool_gpus_ready,
            &self.pool_gpus_total,
            &self.pool_domains_complete,
            &self.pool_domains_total,
            &self.pool_breaker_tripped,
        ] {
            family.remove(&p);
        }
        self.onboarding_seconds.remove(&p);
        for result in ["passed", "trays_failed", "rack_failed"] {
            self.rack_tests.remove(&ResultLabels {
                pool: pool.into(),
                result: result.into(),
            });
        }
    }

    /// Forgets a deleted batch's series.
    pub fn forget_batch(&self, pool: &str, batch: &str, waves: u32) {
        let b = BatchLabels {
            pool: pool.into(),
            batch: batch.into(),
        };
        for family in [
            &self.batch_current_wave,
            &self.batch_total_waves,
            &self.batch_stalled,
            &self.batch_ready,
            &self.batch_energy,
            &self.batch_gpus_online,
            &self.batch_gpu_hours,
            &self.last_progress,
        ] {
            family.remove(&b);
        }
        for wave in 1..=waves {
            let w = WaveLabels {
                pool: pool.into(),
                batch: batch.into(),
                wave: wave.to_string(),
            };
            self.wave_nodes_admitted.remove(&w);
            self.wave_nodes_failed.remove(&w);
        }
    }

    /// Counts one request to the API server.
    pub fn observe_request(&self, method: &http::Method, uri: &http::Uri) {
        let (verb, resource) = classify(method, uri);
        self.api_requests
            .get_or_create(&RequestLabels {
                verb: verb.into(),
                resource,
            })
            .inc();
    }
}

/// The Kubernetes verb and resource of a request, from its method and path.
pub fn classify(method: &http::Method, uri: &http::Uri) -> (&'static str, String) {
    let query = uri.query().unwrap_or_default();
    let segments: Vec<&str> = uri.path().split('/').filter(|s| !s.is_empty()).collect();
    let mut rest: &[&str] = match segments.first() {
        Some(&"api") => segments.get(2..).unwrap_or_default(),
        Some(&"apis") => segments.get(3..).unwrap_or_default(),
        _ => &[],
    };
    if rest.first() == Some(&"namespaces") && rest.len() > 2 {
        rest = &rest[2..];
    }
    let resource = match rest {
        [] => "other".to_string(),
        [r] | [r, _] => r.to_string(),
        [r, _, sub, ..] => format!("{r}/{sub}"),
    };
    let named = rest.len() >= 2;
    let verb = match *method {
        http::Method::GET if query.contains("watch=true") => "watch",
        http::Method::GET if named => "get",
        http::Method::GET => "list",
        http::Method::POST => "create",
        http::Method::PUT => "update",
        http::Method::PATCH => "patch",
        http::Method::DELETE => "delete",
        _ => "other",
    };
    (verb, resource)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(method: &str, uri: &str) -> (&'static str, String) {
        classify(&method.parse().unwrap(), &uri.parse().unwrap())
    }

    #[test]
    fn requests_are_classified_by_verb_and_resource() {
        assert_eq!(
            c("GET", "/api/v1/nodes?&watch=true&timeoutSeconds=290"),
            ("watch", "nodes".into())
        );
        assert_eq!(
            c("GET", "/api/v1/nodes?&limit=500"),
            ("list", "nodes".into())
        );
        assert_eq!(c("PATCH", "/api/v1/nodes/n1"), ("patch", "nodes".into()));
        assert_eq!(
            c("POST", "/api/v1/namespaces/gf/pods"),
            ("create", "pods".into())
        );
        assert_eq!(
            c("DELETE", "/api/v1/namespaces/gf/pods/p1"),
            ("delete", "pods".into())
        );
        assert_eq!(
            c(
                "PATCH",
                "/apis/gpufleet.io/v1alpha1/rolloutbatches/b/status"
            ),
            ("patch", "rolloutbatches/status".into())
        );
        assert_eq!(
            c(
                "PUT",
                "/apis/coordination.k8s.io/v1/namespaces/gf/leases/gpufleet"
            ),
            ("update", "leases".into())
        );
        assert_eq!(
            c(
                "GET",
                "/apis/coordination.k8s.io/v1/namespaces/gf/leases/gpufleet"
            ),
            ("get", "leases".into())
        );
    }

    #[test]
    fn a_deleted_pool_leaves_no_series() {
        let m = Metrics::new();
        m.observe_pool("east", &GpuPoolStatus::default());
        m.observe_pool("west", &GpuPoolStatus::default());
        assert!(m.encode().contains("pool=\"east\""));
        m.forget_pool("east");
        let text = m.encode();
        assert!(!text.contains("pool=\"east\""), "{text}");
        assert!(text.contains("pool=\"west\""), "{text}");
    }

    #[test]
    fn the_families_are_exported() {
        let m = Metrics::new();
        m.observe_pool("east", &GpuPoolStatus::default());
        m.observe_batch("east", "row1", &RolloutBatchStatus::default());
        m.admissions
            .get_or_create(&BatchLabels {
                pool: "east".into(),
                batch: "row1".into(),
            })
            .inc();
        let text = m.encode();
        for family in [
            "gpufleet_pool_nodes{",
            "gpufleet_pool_gpus_ready{",
            "gpufleet_batch_current_wave{",
            "gpufleet_node_admissions_total{",
            "gpufleet_leader ",
        ] {
            assert!(text.contains(family), "{family} missing from\n{text}");
        }
    }
}
