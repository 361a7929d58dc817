//! The words gpufleet's status speaks, in one place: condition types, their
//! reasons, event reasons and the gate a rollout waits on. The planner
//! decides them; the operator, the metrics and every human view read them as
//! these enums. Nothing matches on a reason string to find out what happened:
//! a new word is a new variant here, and the compiler finds every reader.
//!
//! This module depends on nothing else of gpufleet (`docs/architecture.md`,
//! "One status vocabulary").

use std::fmt;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Writes `as_str()` for `Display`, for each enum below.
macro_rules! display_as_str {
    ($($t:ty),*) => {$(
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    )*};
}

/// Condition types on a RolloutBatch and a GpuPool.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ConditionType {
    /// Batch: every wave is done. Pool: observed.
    Ready,
    /// Batch: work is in progress.
    Reconciling,
    /// Batch: waiting on a person; the reason says why.
    Stalled,
    /// Batch: some nodes are claimed by two batches or two pools.
    NodeConflicts,
    /// Pool: too many of its nodes failed recently; every rollout halts.
    CircuitBreakerTripped,
    /// Batch: some domains have nodes in another batch too; they are held.
    SplitDomains,
    /// Batch: some nodes gpufleet admitted lost their ready label since;
    /// they are left alone in service.
    LostState,
}

impl ConditionType {
    pub const fn as_str(self) -> &'static str {
        match self {
            ConditionType::Ready => "Ready",
            ConditionType::Reconciling => "Reconciling",
            ConditionType::Stalled => "Stalled",
            ConditionType::NodeConflicts => "NodeConflicts",
            ConditionType::CircuitBreakerTripped => "CircuitBreakerTripped",
            ConditionType::SplitDomains => "SplitDomains",
            ConditionType::LostState => "LostState",
        }
    }
}

/// The one-word CamelCase reasons of every condition gpufleet writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Reason {
    /// A wave's nodes are validating or soaking.
    WaveInProgress,
    /// Stalled=False.
    NotStalled,
    /// No node matches both the batch's and the pool's selectors.
    NoNodes,
    /// Every wave is done.
    RolloutComplete,
    /// `spec.paused`.
    Paused,
    /// The next wave is past `approvedWaves`.
    WaitingForApproval,
    /// A wave failed more nodes than `maxFailuresPerWave`.
    FailureBudgetExceeded,
    /// The pool's circuit breaker is tripped.
    CircuitBreakerTripped,
    /// Some nodes are claimed by two batches or pools.
    NodesClaimedTwice,
    /// No node is claimed twice.
    NoConflicts,
    /// The batch cannot be read (it slipped past admission).
    InvalidSpec,
    /// The batch's `poolRef` names no GpuPool.
    PoolNotFound,
    /// The batch's pool cannot be read.
    PoolInvalid,
    /// Pool Ready: observed.
    Observed,
    /// Pool breaker: too many failures in the window.
    TooManyFailures,
    /// Pool breaker: within the limit.
    WithinLimit,
    /// Some domains span this batch and another.
    DomainsSplit,
    /// No domain spans two batches.
    NoSplitDomains,
    /// Some admitted nodes lost their ready label.
    StateLabelLost,
    /// No admitted node lost its ready label.
    NoLostState,
    /// Many in-flight nodes failed the same way at once.
    SuspectedMisconfiguration,
    /// A bug panicked while reconciling the object.
    InternalError,
    /// The API server refuses the batch's probe pods.
    ProbeRejected,
    /// The API server refused another write (a node patch): a person must
    /// change the pool, the batch or the policy.
    WriteRejected,
    /// Probes of the batch do not run (never started, evicted).
    ProbesNotRunning,
    /// A rack test needs more trays at once than the caps allow.
    RackTestTooBig,
    /// A rack test's result cannot be read (an NVCRE Certification that
    /// failed naming no node of its group, or whose failed nodes cannot be
    /// read).
    RackTestUnreadable,
    /// Nodes wait for the pool's power budget or ramp (`spec.power`).
    WaitingForPower,
    /// Nodes wait for the pool's next maintenance window (`spec.windows`).
    OutsideMaintenanceWindow,
    /// FleetRollout: a stage's member clusters are rolling.
    StageInProgress,
    /// FleetRollout: a member cluster did not answer; the fleet waits.
    MemberUnreachable,
    /// FleetRollout: a member cluster has no usable credentials.
    NoCredentials,
    /// FleetRollout: a member cluster has no batch of that name.
    BatchMissing,
    /// FleetRollout: more member clusters failed than allowed.
    FleetHalted,
}

impl Reason {
    pub const fn as_str(self) -> &'static str {
        match self {
            Reason::WaveInProgress => "WaveInProgress",
            Reason::NotStalled => "NotStalled",
            Reason::NoNodes => "NoNodes",
            Reason::RolloutComplete => "RolloutComplete",
            Reason::Paused => "Paused",
            Reason::WaitingForApproval => "WaitingForApproval",
            Reason::FailureBudgetExceeded => "FailureBudgetExceeded",
            Reason::CircuitBreakerTripped => "CircuitBreakerTripped",
            Reason::NodesClaimedTwice => "NodesClaimedTwice",
            Reason::NoConflicts => "NoConflicts",
            Reason::InvalidSpec => "InvalidSpec",
            Reason::PoolNotFound => "PoolNotFound",
            Reason::PoolInvalid => "PoolInvalid",
            Reason::Observed => "Observed",
            Reason::TooManyFailures => "TooManyFailures",
            Reason::WithinLimit => "WithinLimit",
            Reason::DomainsSplit => "DomainsSplit",
            Reason::NoSplitDomains => "NoSplitDomains",
            Reason::StateLabelLost => "StateLabelLost",
            Reason::NoLostState => "NoLostState",
            Reason::SuspectedMisconfiguration => "SuspectedMisconfiguration",
            Reason::InternalError => "InternalError",
            Reason::ProbeRejected => "ProbeRejected",
            Reason::WriteRejected => "WriteRejected",
            Reason::ProbesNotRunning => "ProbesNotRunning",
            Reason::RackTestTooBig => "RackTestTooBig",
            Reason::RackTestUnreadable => "RackTestUnreadable",
            Reason::WaitingForPower => "WaitingForPower",
            Reason::OutsideMaintenanceWindow => "OutsideMaintenanceWindow",
            Reason::StageInProgress => "StageInProgress",
            Reason::MemberUnreachable => "MemberUnreachable",
            Reason::NoCredentials => "NoCredentials",
            Reason::BatchMissing => "BatchMissing",
            Reason::FleetHalted => "FleetHalted",
        }
    }
}

/// Reasons of the Kubernetes Events gpufleet records.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EventReason {
    WaveStarted,
    WaveCompleted,
    NodeFailed,
    NodeHeld,
    NodeRetried,
    TaintRestored,
    RolloutHalted,
    RolloutResumed,
    RolloutComplete,
    CircuitBreakerTripped,
    CircuitBreakerCleared,
    /// Several events of one kind folded into one (rate limiting).
    NodeEventsFolded,
    /// A node's state label was not written by its batch: validated again.
    ForeignState,
    /// A node gpufleet admitted lost its ready label: left alone.
    StateLost,
    /// Many nodes failed the same way at once: halted, none failed.
    SuspectedMisconfiguration,
    /// A node's probe never ran (not created, not started, evicted): it is
    /// made again, and the node is not failed.
    ProbeNotRun,
    /// A domain's rack test passed: its trays proven good.
    RackTestPassed,
    /// A domain's rack test found faulty trays (the rest proven good).
    RackTestFailed,
    /// A domain's rack test failed in every group: the rack as a whole.
    RackFailed,
}

impl EventReason {
    pub const fn as_str(self) -> &'static str {
        match self {
            EventReason::WaveStarted => "WaveStarted",
            EventReason::WaveCompleted => "WaveCompleted",
            EventReason::NodeFailed => "NodeFailed",
            EventReason::NodeHeld => "NodeHeld",
            EventReason::NodeRetried => "NodeRetried",
            EventReason::TaintRestored => "TaintRestored",
            EventReason::RolloutHalted => "RolloutHalted",
            EventReason::RolloutResumed => "RolloutResumed",
            EventReason::RolloutComplete => "RolloutComplete",
            EventReason::CircuitBreakerTripped => "CircuitBreakerTripped",
            EventReason::CircuitBreakerCleared => "CircuitBreakerCleared",
            EventReason::NodeEventsFolded => "NodeEventsFolded",
            EventReason::ForeignState => "ForeignState",
            EventReason::RackTestPassed => "RackTestPassed",
            EventReason::RackTestFailed => "RackTestFailed",
            EventReason::RackFailed => "RackFailed",
            EventReason::StateLost => "StateLost",
            EventReason::SuspectedMisconfiguration => "SuspectedMisconfiguration",
            EventReason::ProbeNotRun => "ProbeNotRun",
        }
    }
}

/// What a rollout waits on, as the planner decided it. Written to
/// `status.gate.name` of a RolloutBatch, read by `gpufleet status`, the
/// plugin, the demo and the metrics.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Gate {
    /// Nodes of the open wave are running their probes (or about to).
    Probes,
    /// Every started node passed its probe; the soak runs.
    Soak,
    /// The next wave is past `approvedWaves`.
    Approval,
    /// `spec.paused`.
    Paused,
    /// A wave failed more nodes than its budget: halted until a person acts.
    FailureBudget,
    /// The pool's circuit breaker tripped: every rollout of the pool halts.
    CircuitBreaker,
    /// No node matches both the batch's and the pool's selectors yet.
    NoNodes,
    /// Every wave is done.
    Complete,
    /// The batch or its pool cannot be read or found: fix the object.
    InvalidSpec,
    /// Many nodes failed the same way at once: a suspected configuration
    /// error; halted until the pool changes.
    SuspectedMisconfiguration,
    /// The API server refuses the probe pods (admission, validation,
    /// quota): no node starts until one can be created.
    ProbeRejected,
    /// A node's probe did not run `notStartedLimit` times: no node starts
    /// until probes run again.
    ProbesNotRunning,
    /// Every started node passed its own checks; rack tests run over whole
    /// domains (`healthChecks.domainTest`).
    RackTest,
    /// A rack test needs more trays at once than the pool's or the batch's
    /// `maxConcurrent`: it can never run until a cap is raised.
    RackTestTooBig,
    /// A rack test finished with a result gpufleet cannot read or trust
    /// (see `Reason::RackTestUnreadable`): nobody is blamed, nothing starts.
    RackTestUnreadable,
    /// Pending nodes wait for the pool's power budget or ramp to allow them
    /// (`spec.power`); what runs goes on.
    PowerBudget,
    /// Pending nodes wait for the pool's next maintenance window
    /// (`spec.windows`); what runs goes on.
    MaintenanceWindow,
}

impl Gate {
    /// The reason of the batch's Ready condition (and of Stalled, when
    /// the gate stalls the rollout).
    pub const fn reason(self) -> Reason {
        match self {
            Gate::Probes | Gate::Soak | Gate::RackTest => Reason::WaveInProgress,
            Gate::RackTestTooBig => Reason::RackTestTooBig,
            Gate::RackTestUnreadable => Reason::RackTestUnreadable,
            Gate::Approval => Reason::WaitingForApproval,
            Gate::Paused => Reason::Paused,
            Gate::FailureBudget => Reason::FailureBudgetExceeded,
            Gate::CircuitBreaker => Reason::CircuitBreakerTripped,
            Gate::NoNodes => Reason::NoNodes,
            Gate::Complete => Reason::RolloutComplete,
            Gate::InvalidSpec => Reason::InvalidSpec,
            Gate::SuspectedMisconfiguration => Reason::SuspectedMisconfiguration,
            Gate::ProbeRejected => Reason::ProbeRejected,
            Gate::ProbesNotRunning => Reason::ProbesNotRunning,
            Gate::PowerBudget => Reason::WaitingForPower,
            Gate::MaintenanceWindow => Reason::OutsideMaintenanceWindow,
        }
    }

    /// Halted until a person acts: the batch is Stalled.
    pub const fn stalls(self) -> bool {
        matches!(
            self,
            Gate::FailureBudget
                | Gate::CircuitBreaker
                | Gate::InvalidSpec
                | Gate::SuspectedMisconfiguration
                | Gate::ProbeRejected
                | Gate::ProbesNotRunning
                | Gate::RackTestTooBig
                | Gate::RackTestUnreadable
        )
    }

    /// The rollout is over: complete, or halted until a person acts.
    pub const fn is_final(self) -> bool {
        matches!(self, Gate::Complete) || self.stalls()
    }

    /// A few words for a one-line progress.
    pub const fn short(self) -> &'static str {
        match self {
            Gate::Probes => "waits on probes",
            Gate::Soak => "waits on the soak",
            Gate::Approval => "waits for approval",
            Gate::Paused => "paused",
            Gate::FailureBudget => "halted: failure budget exceeded",
            Gate::CircuitBreaker => "halted: circuit breaker tripped",
            Gate::NoNodes => "no nodes yet",
            Gate::Complete => "complete",
            Gate::InvalidSpec => "halted: the batch or its pool is invalid",
            Gate::SuspectedMisconfiguration => "halted: suspected misconfiguration",
            Gate::ProbeRejected => "halted: probe pods refused",
            Gate::ProbesNotRunning => "halted: probes cannot run",
            Gate::RackTest => "waits on rack tests",
            Gate::RackTestTooBig => "halted: a rack test exceeds the caps",
            Gate::RackTestUnreadable => "halted: a rack test result is unreadable",
            Gate::PowerBudget => "waits for power",
            Gate::MaintenanceWindow => "waits for a maintenance window",
        }
    }

    /// The words before the planner's message in a one-line description
    /// ("paused: paused; 3 nodes still in flight").
    pub const fn headline(self) -> &'static str {
        match self {
            Gate::Probes => "waits on probes",
            Gate::Soak => "waits on the soak",
            Gate::Approval => "waits for approval",
            Gate::Paused => "paused",
            Gate::FailureBudget => "halted, failure budget exceeded",
            Gate::CircuitBreaker => "halted, circuit breaker tripped",
            Gate::NoNodes => "no nodes",
            Gate::Complete => "complete",
            Gate::InvalidSpec => "halted, the batch or its pool is invalid",
            Gate::SuspectedMisconfiguration => "halted, suspected misconfiguration",
            Gate::ProbeRejected => "halted, probe pods refused",
            Gate::ProbesNotRunning => "halted, probes cannot run",
            Gate::RackTest => "waits on rack tests",
            Gate::RackTestTooBig => "halted, a rack test exceeds the caps",
            Gate::RackTestUnreadable => "halted, a rack test result is unreadable",
            Gate::PowerBudget => "waits for power",
            Gate::MaintenanceWindow => "waits for a maintenance window",
        }
    }

    /// The gate as one bounded snake_case word (logs, `Display`).
    pub const fn as_str(self) -> &'static str {
        match self {
            Gate::Probes => "probes",
            Gate::Soak => "soak",
            Gate::Approval => "approval",
            Gate::Paused => "paused",
            Gate::FailureBudget => "failure_budget",
            Gate::CircuitBreaker => "circuit_breaker",
            Gate::NoNodes => "no_nodes",
            Gate::Complete => "complete",
            Gate::InvalidSpec => "invalid_spec",
            Gate::SuspectedMisconfiguration => "suspected_misconfiguration",
            Gate::ProbeRejected => "probe_rejected",
            Gate::ProbesNotRunning => "probes_not_running",
            Gate::RackTest => "rack_test",
            Gate::RackTestTooBig => "rack_test_too_big",
            Gate::RackTestUnreadable => "rack_test_unreadable",
            Gate::PowerBudget => "power_budget",
            Gate::MaintenanceWindow => "maintenance_window",
        }
    }

    /// Every gate.
    pub const ALL: [Gate; 17] = [
        Gate::Probes,
        Gate::Soak,
        Gate::Approval,
        Gate::Paused,
        Gate::FailureBudget,
        Gate::CircuitBreaker,
        Gate::NoNodes,
        Gate::Complete,
        Gate::InvalidSpec,
        Gate::SuspectedMisconfiguration,
        Gate::ProbeRejected,
        Gate::ProbesNotRunning,
        Gate::RackTest,
        Gate::RackTestTooBig,
        Gate::RackTestUnreadable,
        Gate::PowerBudget,
        Gate::MaintenanceWindow,
    ];
}

display_as_str!(ConditionType, Reason, EventReason, Gate);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gate_words_are_distinct_and_serialise_as_their_variant() {
        let mut seen = std::collections::BTreeSet::new();
        for gate in Gate::ALL {
            assert!(seen.insert(gate.as_str()), "{gate:?}");
            let json = serde_json::to_string(&gate).unwrap();
            assert_eq!(json, format!("\"{gate:?}\""));
            assert_eq!(serde_json::from_str::<Gate>(&json).unwrap(), gate);
            assert!(!gate.reason().as_str().is_empty());
        }
    }
}
