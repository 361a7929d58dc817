//! The public API: group `gpufleet.io`, version `v1alpha1`, both kinds
//! cluster-scoped. Doc comments here become `kubectl explain` text.

mod batch;
mod common;
mod pool;
mod validate;

pub use batch::{
    EnergyStatus, GateStatus, RackTestStatus, RolloutBatch, RolloutBatchSpec, RolloutBatchStatus,
    Wave, WaveStatus,
};
pub use common::{
    ConditionMatch, ConditionStatus, DomainCounts, GROUP, GpuCounts, NodeCounts, TaintEffect,
    TaintSpec, VERSION,
};
pub use pool::{
    BreakerFailure, BreakerStatus, CircuitBreaker, DomainTest, FabricGate, FirmwareGate,
    GB200_NODE_WATTS, GB300_NODE_WATTS, GpuPool, GpuPoolSpec, GpuPoolStatus, Hardware,
    HealthChecks, NvcreTest, Onboarding, Power, Probe, Topology, Weekday, Window, node_watts,
};
pub use validate::FieldError;
