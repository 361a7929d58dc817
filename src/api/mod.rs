//! The public API: group `gpufleet.io`, version `v1alpha1`, RolloutBatch and
//! GpuPool cluster-scoped, FleetRollout namespaced (on a hub, beside the
//! ClusterProfiles it reads). Doc comments here become `kubectl explain` text.

mod batch;
mod common;
mod fleet;
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
pub use fleet::{
    AccessProvider, ClusterManager, ClusterProfile, ClusterProfileSpec, ClusterProfileStatus,
    FleetApproval, FleetClusterStatus, FleetMode, FleetRollout, FleetRolloutSpec,
    FleetRolloutStatus, FleetStage, NamedExtension, ProfileCluster,
};
pub use pool::{
    BreakerFailure, BreakerStatus, CircuitBreaker, DomainTest, FabricGate, FirmwareGate,
    GB200_NODE_WATTS, GB300_NODE_WATTS, GpuPool, GpuPoolSpec, GpuPoolStatus, Hardware,
    HealthChecks, NvcreTest, Onboarding, Power, Probe, Topology, Weekday, Window, node_watts,
};
pub use validate::FieldError;
