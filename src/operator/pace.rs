//! The plan pace: one mechanism for batches and pools. A plan reads the
//! whole pool, O(pool) each, so an object planned back to back while its
//! nodes change cost O(pool) per change and its CPU grew with the square of
//! the fleet. A paced object is planned again at the soonest one pace after
//! its last plan began, the pace growing with the pool it read (per node,
//! times a factor, between a floor and [`MAX_PLAN_PACE`]); what changed in
//! between is planned together. A new generation (a person changed the
//! spec) or an urgent change is planned at once. The pace only delays
//! decisions: none is taken on older data.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The longest plans are paced apart, whatever the pool's size: nodes wait
/// at most this long for a decision, and with a fixed `maxConcurrent` the
/// pace bounds how fast waves turn over. At 5 s, a plan over 137,500 nodes
/// (about 0.1 s of CPU) takes 2 % of a core.
pub const MAX_PLAN_PACE: Duration = Duration::from_secs(5);

/// The default pace of a batch: 0.4 s per 1,000 nodes of its pool, up to
/// [`MAX_PLAN_PACE`] (from 12,500 nodes on).
pub const PLAN_PACE_PER_NODE: Duration = Duration::from_micros(400);

/// A pool's reconcile (its capacity report and breaker ledger) is paced
/// this many times a batch's plan: it changes no node, and a node that
/// fails makes it run at once.
pub const POOL_PACE_FACTOR: u32 = 5;

/// The last plan of one object.
struct Run {
    /// When it may be planned again.
    next: Instant,
    /// The generation it was planned at.
    generation: Option<i64>,
}

/// The pace of one kind of object (batches by UID, pools by name).
pub struct Pacer {
    per_node: Duration,
    factor: u32,
    floor: Duration,
    runs: Mutex<HashMap<String, Run>>,
}

impl Pacer {
    /// Plans paced `per_node` × `factor` per node of the pool they read, at
    /// least `floor` apart and at most [`MAX_PLAN_PACE`] (or `floor`, if
    /// longer). `per_node` zero: only the floor.
    pub fn new(per_node: Duration, factor: u32, floor: Duration) -> Self {
        Pacer {
            per_node,
            factor,
            floor,
            runs: Mutex::new(HashMap::new()),
        }
    }

    /// The pace after a plan over `nodes` nodes.
    pub fn pace(&self, nodes: usize) -> Duration {
        self.per_node
            .saturating_mul(u32::try_from(nodes).unwrap_or(u32::MAX))
            .saturating_mul(self.factor)
            .min(MAX_PLAN_PACE)
            .max(self.floor)
    }

    /// How long `key` must still wait, if it was planned less than its pace
    /// ago at this `generation` and nothing `urgent` came; `None`: plan now.
    pub fn wait(
        &self,
        key: &str,
        generation: Option<i64>,
        urgent: bool,
        now: Instant,
    ) -> Option<Duration> {
        if urgent {
            return None;
        }
        let runs = self.runs.lock().expect("pace map");
        let run = runs.get(key)?;
        if run.generation != generation {
            return None;
        }
        run.next
            .checked_duration_since(now)
            .filter(|d| !d.is_zero())
    }

    /// Records a plan of `key` at `generation` over `nodes` nodes, begun at
    /// `started`; forgets the objects `keep` says are gone.
    pub fn planned(
        &self,
        key: &str,
        generation: Option<i64>,
        nodes: usize,
        started: Instant,
        keep: impl Fn(&str) -> bool,
    ) {
        let next = started + self.pace(nodes);
        let mut runs = self.runs.lock().expect("pace map");
        runs.retain(|k, _| keep(k));
        runs.insert(key.to_string(), Run { next, generation });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batches() -> Pacer {
        Pacer::new(PLAN_PACE_PER_NODE, 1, Duration::ZERO)
    }

    #[test]
    fn the_pace_grows_with_the_pool_up_to_its_cap() {
        let p = batches();
        assert_eq!(p.pace(1_000), Duration::from_millis(400));
        assert_eq!(p.pace(10_000), Duration::from_secs(4));
        assert_eq!(p.pace(137_500), MAX_PLAN_PACE);
        assert_eq!(p.pace(usize::MAX), MAX_PLAN_PACE, "no overflow");
        let pools = Pacer::new(PLAN_PACE_PER_NODE, POOL_PACE_FACTOR, Duration::from_secs(1));
        assert_eq!(pools.pace(18), Duration::from_secs(1), "the floor");
        assert_eq!(pools.pace(1_000), Duration::from_secs(2));
        assert_eq!(pools.pace(30_000), MAX_PLAN_PACE);
        let unpaced = Pacer::new(Duration::ZERO, 1, Duration::ZERO);
        assert_eq!(unpaced.pace(137_500), Duration::ZERO);
    }

    #[test]
    fn a_planned_object_waits_unless_its_spec_changed_or_something_is_urgent() {
        let p = batches();
        let t0 = Instant::now();
        assert_eq!(p.wait("b", Some(1), false, t0), None, "never planned");
        p.planned("b", Some(1), 10_000, t0, |_| true);
        let later = t0 + Duration::from_secs(1);
        assert_eq!(
            p.wait("b", Some(1), false, later),
            Some(Duration::from_secs(3))
        );
        assert_eq!(p.wait("b", Some(2), false, later), None, "a new generation");
        assert_eq!(p.wait("b", Some(1), true, later), None, "urgent");
        assert_eq!(
            p.wait("b", Some(1), false, t0 + Duration::from_secs(4)),
            None,
            "paced out"
        );
        assert_eq!(p.wait("other", Some(1), false, later), None);
    }

    #[test]
    fn objects_that_are_gone_are_forgotten() {
        let p = batches();
        let t0 = Instant::now();
        p.planned("gone", None, 10_000, t0, |_| true);
        p.planned("b", None, 10_000, t0, |k| k != "gone");
        assert_eq!(p.wait("gone", None, false, t0), None);
        assert!(p.wait("b", None, false, t0).is_some());
    }
}
