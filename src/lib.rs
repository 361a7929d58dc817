//! gpufleet brings new NVIDIA GB200/GB300 nodes online in staged waves while
//! health-checking them: a Kubernetes operator for AI factories.
//!
//! The crate is a library with a thin binary on top: [`api`] holds the custom
//! resources, [`crds`] renders their definitions.

pub mod api;
pub mod crds;
pub mod fleet;
pub mod keys;
pub mod node_probe;
pub mod operator;
pub mod planner;
// The simulated fleet of the demo, the benchmark and the integration tests:
// the `dev` feature, on by default; the production image leaves it out.
#[cfg(feature = "dev")]
pub mod simulate;
pub mod verdict;
pub mod view;
pub mod vocabulary;
