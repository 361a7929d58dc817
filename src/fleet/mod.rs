//! Beyond one cluster: member clusters listed as SIG-Multicluster
//! ClusterProfiles on a hub (or kubeconfig contexts), a fleet-wide view of
//! them (`gpufleet fleet status`) and FleetRollout, which promotes one
//! RolloutBatch across them stage by stage (`gpufleet fleet run`).

pub mod access;
pub mod controller;
pub mod decide;
pub mod observe;
pub mod summary;
