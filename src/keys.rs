//! The labels and annotations gpufleet reads and writes on Nodes and pods.
//! Per-node state lives on the Node itself, never in a status list: 137,500
//! nodes do not fit in one etcd object.

/// Node label: `pending`, `validating`, `soaking`, `ready`, `failed` or `held`.
pub const STATE: &str = "gpufleet.io/state";
/// Node annotation: the RolloutBatch that owns the node's rollout.
pub const BATCH: &str = "gpufleet.io/batch";
/// Node annotation: the wave (from 1) the node belongs to.
pub const WAVE: &str = "gpufleet.io/wave";
/// Node annotation: when the node entered its current state (RFC 3339).
pub const SINCE: &str = "gpufleet.io/since";
/// Node annotation: when the node started its rollout (entered validation,
/// or soaking without a probe), for the time-to-admission metric.
pub const STARTED: &str = "gpufleet.io/started";
/// Node annotation: why the node failed or is held, in words a person can act on.
pub const REASON: &str = "gpufleet.io/reason";
/// Node and probe-pod annotation: the probe attempt, from 1.
pub const ATTEMPT: &str = "gpufleet.io/attempt";
/// Node annotation: the onboarding taints gpufleet added to the node, as
/// `KEY:EFFECT[,KEY:EFFECT]`; empty when the node already carried the
/// pool's taint when gpufleet started it. gpufleet removes only these.
pub const TAINT: &str = "gpufleet.io/taint";
/// Node annotation: the state gpufleet wrote in the state label, beside
/// it. A label that does not match it (rewritten alone, by `kubectl label`
/// or a kubelet's `--node-labels`) is foreign: the node is validated again.
pub const RECORDED_STATE: &str = "gpufleet.io/recorded-state";
/// Node annotation: when gpufleet admitted the node (RFC 3339). gpufleet
/// never moves a ready node, so a node that carries it with any state but
/// `ready` lost its label in service (someone removed or changed it): it is
/// left alone, never re-tainted or re-probed, until a person labels it
/// ready again or asks for a retry.
pub const ADMITTED: &str = "gpufleet.io/admitted";
/// Node annotation: the generation of the pool under which the node was
/// sent back to pending as part of a short-circuit (many nodes failing the
/// same way at once: a suspected configuration error). While it matches
/// the pool's generation, the batch is halted.
pub const SUSPECT: &str = "gpufleet.io/suspect";
/// Node annotation: how many runs of the node's current probe attempt never
/// ran (never created, never started, evicted). Such a run is not evidence
/// against the node: it is tried again, and the batch halts once a node
/// reaches the probe's `notStartedLimit`. Removed when the node leaves
/// validation.
pub const PROBE_MISSES: &str = "gpufleet.io/probe-misses";
/// Node annotation: what the node's probe verdict said, as far as the gates
/// read it (its fabric clique, its firmware, the checks that failed), in
/// compact JSON; written when the probe's verdict is read, removed when the
/// node starts again. Domain gates compare the trays of a domain by it.
pub const VERDICT: &str = "gpufleet.io/verdict";
/// Label on rack test pods: their group (`healthChecks.domainTest`).
pub const GROUP: &str = "gpufleet.io/group";
/// Node annotation set by a person (any value) to send a failed or held node
/// through validation again; gpufleet removes it.
pub const RETRY: &str = "gpufleet.io/retry";
/// The UID of the batch that wrote a thing: a label on a probe pod (a pod at
/// a probe's name without the current batch's UID is not its probe) and an
/// annotation on a node beside its state (a state label without the current
/// batch's UID is foreign: the node is validated again).
pub const BATCH_UID: &str = "gpufleet.io/batch-uid";

/// GPU Feature Discovery: the GPU product, such as `NVIDIA-GB200`.
pub const GPU_PRODUCT: &str = "nvidia.com/gpu.product";
/// GPU Feature Discovery: the number of GPUs.
pub const GPU_COUNT: &str = "nvidia.com/gpu.count";
/// GPU Feature Discovery: the full driver version, such as `570.133.20`.
pub const DRIVER_VERSION: &str = "nvidia.com/cuda.driver-version.full";
/// The device plugin's extended resource.
pub const GPU_RESOURCE: &str = "nvidia.com/gpu";

/// Label on probe pods: gpufleet made them.
pub const MANAGED_BY: &str = "app.kubernetes.io/managed-by";
/// Value of [`MANAGED_BY`] on gpufleet's probe pods.
pub const MANAGER: &str = "gpufleet";
/// Field manager and user agent of every write gpufleet makes.
pub const FIELD_MANAGER: &str = "gpufleet";

/// FNV-1a over `bytes`: a stable 64-bit hash, the same in every process and
/// release, for names that must be shortened (probe pod names, label values)
/// and for the demo's repeatable faults. Not for anything an attacker could
/// exploit by collision.
pub fn stable_hash(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}
