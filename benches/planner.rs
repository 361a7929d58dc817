//! How long one plan takes over a pool of 1,000, 10,000 and 137,500 nodes
//! (Colossus 2) in the middle of a rollout. DESIGN.md's target: under 50 ms
//! per plan at 137,500 nodes. BENCHMARKS.md has the figures.
//!
//! Nodes are GB200 trays as `sim::healthy_node` makes them, in NVL72 domains
//! of 18; 18 divides none of the sizes, so the last domain is smaller:
//! 1,000 = 55 × 18 + 10, 10,000 = 555 × 18 + 10, and 137,500 = 7,638 × 18 +
//! 16 (7,639 domains).
//!
//! The scenario, built once outside the timed loop: one batch covering the
//! whole pool, three waves (10 %, 40 %, 100 %), wave 2 in flight. Wave 1 is
//! ready but for three failed nodes; of wave 2's domains, the first 40 % are
//! ready, the next 20 % soaking, the next 10 % validating with a running
//! probe pod each (2 % of those probes just passed), the rest pending, with
//! one domain's worth of free validation slots; wave 3 is pending. So each
//! plan checks every probe and soak, moves the passed probes on, starts a
//! domain and writes the status, as a reconcile in the middle of a big
//! rollout does. The snapshot points to the node views in name order, as
//! the operator's cache (a map by name) hands them over; the views were
//! allocated in a fixed shuffled order, as a long-running cache's are after
//! many watch events.

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use gpufleet::api::{GpuPool, RolloutBatch};
use gpufleet::planner::preview::preview;
use gpufleet::planner::sim::healthy_node;
use gpufleet::planner::{
    NodeState, NodeView, ProbePhase, ProbeView, Snapshot, TaintView, Termination, plan,
    probe_pod_name,
};
use k8s_openapi::jiff::{SignedDuration, Timestamp};

const NODES_PER_DOMAIN: usize = 18;

const POOL: &str = r#"
apiVersion: gpufleet.io/v1alpha1
kind: GpuPool
metadata: {name: colossus, generation: 1}
spec:
  nodeSelector: {matchLabels: {gpufleet.io/pool: colossus}}
  hardware: {gpuProduct: [NVIDIA-GB200, NVIDIA-GB300], gpusPerNode: 4, minDriverVersion: "570.133.20"}
  topology: {domainLabel: nvidia.com/gpu.clique, nodesPerDomain: 18, minHealthyNodesPerDomain: 16}
  onboarding: {taint: {key: gpufleet.io/onboarding, effect: NoSchedule}}
  healthChecks:
    unhealthyConditions: [{type: GpuXidError, status: "True"}, {type: NVLinkDown, status: "True"}]
    probe:
      timeoutSeconds: 900
      retries: 1
      template: {spec: {containers: [{name: burn-in, image: dcgm}]}}
    soakSeconds: 600
  circuitBreaker: {maxFailedPercent: 10, window: 1h}
"#;

const BATCH: &str = r#"
apiVersion: gpufleet.io/v1alpha1
kind: RolloutBatch
metadata: {name: delivery, generation: 1}
spec:
  poolRef: colossus
  nodeSelector: {matchLabels: {gpufleet.io/batch: delivery}}
  waves: [{percent: 10}, {percent: 40}, {percent: 100}]
  maxFailuresPerWave: "5%"
"#;

struct Scenario {
    pool: GpuPool,
    batch: RolloutBatch,
    snapshot: Snapshot,
    now: Timestamp,
}

/// Marks a node as started by the batch in `wave`, in `state`, since `ago`.
fn start(node: &mut NodeView, state: NodeState, wave: u32, now: Timestamp, ago: i64) {
    node.state = Some(state);
    node.labels
        .insert("gpufleet.io/state".into(), state.as_str().into());
    node.batch = Some("delivery".into());
    node.wave = Some(wave);
    node.since = Some(now - SignedDuration::from_secs(ago)).into();
    if state != NodeState::Ready {
        node.taints.push(TaintView {
            key: "gpufleet.io/onboarding".into(),
            value: None,
            effect: "NoSchedule".into(),
            time_added: None,
        });
    }
}

/// `total` nodes in domains of 18 (the last one smaller when 18 does not
/// divide `total`), mid-rollout as the module's doc says.
fn scenario(total: usize) -> Scenario {
    let now: Timestamp = "2026-11-27T12:00:00Z".parse().unwrap();
    let pool: GpuPool = serde_norway::from_str(POOL).unwrap();
    let mut batch: RolloutBatch = serde_norway::from_str(BATCH).unwrap();
    let mut nodes: Vec<NodeView> = (0..total)
        .map(|i| {
            let (d, n) = (i / NODES_PER_DOMAIN, i % NODES_PER_DOMAIN);
            healthy_node(
                &format!("gb200-r{d:05}-t{n:02}"),
                &format!("7f25f72c-175a-41c0-81be-{d:012x}.1"),
                "colossus",
                "delivery",
            )
        })
        .collect();

    // The planner's own wave assignment, by domain.
    let waves = preview(&pool, &batch, &nodes).waves;
    let index: std::collections::HashMap<String, usize> = nodes
        .iter()
        .enumerate()
        .map(|(i, n)| (n.name.to_string(), i))
        .collect();
    let domains_of = |wave: usize| -> Vec<Vec<usize>> {
        let mut domains: Vec<Vec<usize>> = Vec::new();
        let mut last = None;
        for name in &waves[wave].nodes {
            let i = index[name];
            let clique = nodes[i].labels["nvidia.com/gpu.clique"].to_owned();
            if last.as_ref() != Some(&clique) {
                domains.push(Vec::new());
                last = Some(clique);
            }
            domains.last_mut().unwrap().push(i);
        }
        domains
    };
    let (wave1, wave2) = (domains_of(0), domains_of(1));

    for (d, domain) in wave1.iter().enumerate() {
        for (k, &i) in domain.iter().enumerate() {
            if d < 3 && k == 0 {
                start(&mut nodes[i], NodeState::Failed, 1, now, 1800);
                nodes[i].reason = Some("probe failed (exit 1): dcgmi diag: GPU 2 failed".into());
            } else {
                start(&mut nodes[i], NodeState::Ready, 1, now, 7200);
            }
        }
    }
    let count = wave2.len();
    let ready_until = count * 4 / 10;
    let soaking_until = ready_until + count * 2 / 10;
    let validating_until = (soaking_until + (count / 10).max(1)).min(count.saturating_sub(1));
    let mut probes = Vec::new();
    let mut validating = 0u32;
    for (d, domain) in wave2.iter().enumerate() {
        for &i in domain {
            if d < ready_until {
                start(&mut nodes[i], NodeState::Ready, 2, now, 1800);
            } else if d < soaking_until {
                start(&mut nodes[i], NodeState::Soaking, 2, now, 300);
            } else if d < validating_until {
                start(&mut nodes[i], NodeState::Validating, 2, now, 120);
                nodes[i].attempt = 1;
                let passed = validating.is_multiple_of(50);
                probes.push(ProbeView {
                    name: probe_pod_name(&nodes[i].name, 1),
                    node: nodes[i].name.to_string(),
                    attempt: 1,
                    phase: if passed {
                        ProbePhase::Succeeded
                    } else {
                        ProbePhase::Running
                    },
                    batch_uid: batch.metadata.uid.clone(),
                    containers: 1,
                    init_containers: 0,
                    terminated: if passed {
                        vec![Termination {
                            container: "burn-in".into(),
                            init: false,
                            exit_code: 0,
                            message: None,
                        }]
                    } else {
                        Vec::new()
                    },
                    message: None,
                    created: Some(now - SignedDuration::from_secs(115)),
                    run: None,
                    started_at: Some(now - SignedDuration::from_secs(114)),
                    finished_at: None,
                    not_running: None,
                    evicted: false,
                    deleting: false,
                    verdict: gpufleet::verdict::Read::Absent,
                    group: None,
                });
                validating += 1;
            }
        }
    }
    batch.spec.max_concurrent = validating + NODES_PER_DOMAIN as u32;
    // The operator's cache (a map by name) hands its views over in name
    // order. A long-running cache has rebuilt most views since the list
    // (every watch event builds a new one), so they lie in memory in no
    // particular order: the views are allocated in a shuffled order, and the
    // snapshot points to them in name order.
    shuffle(&mut nodes);
    let mut nodes: Vec<Arc<NodeView>> = nodes.into_iter().map(Arc::new).collect();
    nodes.sort_by(|a, b| a.name.cmp(&b.name));
    let snapshot = Snapshot {
        nodes,
        probes,
        ..Default::default()
    };
    // The status the previous reconcile wrote.
    batch.status = Some(plan(&pool, &batch, &snapshot, now).status);
    Scenario {
        pool,
        batch,
        snapshot,
        now,
    }
}

/// A fixed shuffle (xorshift64, Fisher-Yates): the same order every run.
fn shuffle<T>(items: &mut [T]) {
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    for i in (1..items.len()).rev() {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        items.swap(i, (state % (i as u64 + 1)) as usize);
    }
}

fn bench_plan(c: &mut Criterion) {
    let mut group = c.benchmark_group("plan");
    for total in [1_000usize, 10_000, 137_500] {
        let s = scenario(total);
        let once = plan(&s.pool, &s.batch, &s.snapshot, s.now);
        let n = &once.status.nodes;
        eprintln!(
            "{total} nodes: {} pending, {} validating, {} soaking, {} ready, {} failed; {} probes; plan: {} actions, wave {}/{}",
            n.pending,
            n.validating,
            n.soaking,
            n.ready,
            n.failed,
            s.snapshot.probes.len(),
            once.actions.len(),
            once.status.current_wave,
            once.status.total_waves,
        );
        group.throughput(Throughput::Elements(total as u64));
        if total > 10_000 {
            group.sample_size(20);
            group.measurement_time(Duration::from_secs(20));
        } else {
            group.sample_size(50);
            group.measurement_time(Duration::from_secs(10));
        }
        group.bench_with_input(BenchmarkId::new("nodes", total), &s, |b, s| {
            b.iter(|| plan(&s.pool, &s.batch, black_box(&s.snapshot), s.now))
        });
    }
    group.finish();
}

criterion_group!(benches, bench_plan);
criterion_main!(benches);
