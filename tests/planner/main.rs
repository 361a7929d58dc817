//! The planner's rules, one table test each, and its invariants as property
//! tests. No cluster: the planner is pure, and `Sim` applies its plans the
//! way the operator applies them to the API server.

mod actors;
mod breaker;
mod fixtures;
mod fuzz;
mod index;
mod known_bugs;
mod no_panic;
mod pass_in_pod;
mod power;
mod probes;
mod properties;
mod purity;
mod racktest;
mod rules;
mod schedule;
mod verdicts;
