//! The pool's view: capacity online, domains complete, and the circuit
//! breaker that halts every rollout of the pool when too many nodes fail.

use std::borrow::Borrow;
use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use k8s_openapi::jiff::{SignedDuration, Timestamp};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use crate::api::{
    BreakerFailure, BreakerStatus, CircuitBreaker, DomainCounts, GpuCounts, GpuPool, GpuPoolStatus,
};

use crate::vocabulary::{ConditionType, EventReason, Reason};

use super::conditions::{condition, is_true};
use super::membership::needed_healthy;
use super::snapshot::{NodeState, NodeView, earlier, later, requeue_until};
use super::status::tally;
use super::{Event, EventTarget, matches, waves};

/// The circuit breaker's verdict.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Breaker {
    pub tripped: bool,
    /// Failed nodes of the pool whose failure is within the window.
    pub failed_in_window: u32,
    /// Failures the window tolerates.
    pub limit: u32,
    /// When the oldest counted failure leaves the window.
    pub next_change: Option<Timestamp>,
}

/// The longest breaker window: 366 days.
const MAX_WINDOW_SECONDS: f64 = 366.0 * 86_400.0;

/// Parses a duration such as `90s`, `30m`, `1h30m` or `1.5h`; longer than
/// 366 days counts as 366 days.
pub fn parse_window(window: &str) -> Option<SignedDuration> {
    let mut total = 0f64;
    let mut number = String::new();
    let mut chars = window.trim().chars().peekable();
    let mut any = false;
    while let Some(c) = chars.next() {
        if c.is_ascii_digit() || c == '.' {
            number.push(c);
            continue;
        }
        let unit = if c == 'm' && chars.peek() == Some(&'s') {
            chars.next();
            0.001
        } else {
            match c {
                's' => 1.0,
                'm' => 60.0,
                'h' => 3600.0,
                _ => return None,
            }
        };
        total += number.parse::<f64>().ok()? * unit;
        number.clear();
        any = true;
    }
    // A window longer than a year counts as a year: the pattern the CRD
    // checks takes any number of digits, and no value may panic.
    let total = total.min(MAX_WINDOW_SECONDS);
    (any && number.is_empty() && total.is_finite()).then(|| SignedDuration::from_secs_f64(total))
}

/// Most failures the breaker remembers (`status.breaker.failures`): the most
/// recent ones. Bounded so that the pool's status stays small (a failure
/// takes about 100 bytes of it). Deciding whether the breaker is tripped,
/// and when it clears, needs only the `limit + 1` most recent failures, so
/// the ledger is exact for a limit under this (a pool under 40,960 nodes at
/// 10%); above it, failed nodes that lost their labels count only as far as
/// the ledger holds them.
pub const LEDGER_MAX: usize = 4096;

/// A failure as the breaker counts it: when, to the second (as the status
/// stores it), and which node.
type Counted<'a> = (Timestamp, &'a str);

/// `t` to the whole second, as a `Time` in the status keeps it: a ledger
/// entry read back must equal the failure it was written from.
fn to_second(t: Timestamp) -> Timestamp {
    Timestamp::from_second(t.as_second()).unwrap_or(t)
}

/// The failures the breaker counts at `now`: those of the ledger in the
/// pool's status and those of the pool's nodes failed now, each (node, time)
/// once, within the window (after `start`), oldest first, at most
/// [`LEDGER_MAX`] (the most recent). A node failed without
/// `gpufleet.io/since` is the ledger's failure of that node if it has one,
/// else a failure at `now` (which the pool's status then remembers).
fn counted_failures<'a>(
    ledger: &'a [BreakerFailure],
    pool_nodes: &[&'a NodeView],
    start: Timestamp,
    now: Timestamp,
) -> Vec<Counted<'a>> {
    let mut failures: Vec<Counted<'a>> = ledger
        .iter()
        .map(|f| (to_second(f.at.0), f.node.as_str()))
        .filter(|(at, _)| *at > start)
        .collect();
    let remembered = failures.len();
    let mut sinceless: Vec<&str> = Vec::new();
    for node in pool_nodes.iter().filter(|n| n.state() == NodeState::Failed) {
        match node.since.get() {
            Some(since) => {
                let at = to_second(since);
                if at > start {
                    failures.push((at, node.name.as_str()));
                }
            }
            None => sinceless.push(node.name.as_str()),
        }
    }
    let now = to_second(now);
    if !sinceless.is_empty() && now > start {
        let known: HashSet<&str> = failures[..remembered].iter().map(|f| f.1).collect();
        failures.extend(
            sinceless
                .into_iter()
                .filter(|name| !known.contains(name))
                .map(|name| (now, name)),
        );
    }
    failures.sort_unstable();
    failures.dedup();
    let excess = failures.len().saturating_sub(LEDGER_MAX);
    failures.drain(..excess);
    failures
}

/// The breaker's verdict over the counted failures.
fn verdict(
    cb: &CircuitBreaker,
    failures: &[Counted],
    pool_size: usize,
    window: SignedDuration,
) -> Breaker {
    let limit = (u64::from(cb.max_failed_percent) * pool_size as u64 / 100) as u32;
    let failed_in_window = failures.len() as u32;
    let tripped = failed_in_window > limit;
    Breaker {
        tripped,
        failed_in_window,
        limit,
        next_change: failures
            .first()
            .filter(|_| tripped)
            .map(|(at, _)| later(*at, window)),
    }
}

fn window_of(cb: &CircuitBreaker) -> SignedDuration {
    parse_window(&cb.window).unwrap_or(SignedDuration::from_hours(1))
}

/// The breaker of a pool over its nodes at `now`: the failures remembered
/// in the pool's status together with its nodes failed now. Without a
/// configured breaker it never trips.
pub fn breaker(pool: &GpuPool, pool_nodes: &[&NodeView], now: Timestamp) -> Breaker {
    let Some(cb) = &pool.spec.circuit_breaker else {
        return Breaker::default();
    };
    let window = window_of(cb);
    let failures = counted_failures(ledger(pool), pool_nodes, earlier(now, window), now);
    verdict(cb, &failures, pool_nodes.len(), window)
}

/// The failures remembered in the pool's status.
fn ledger(pool: &GpuPool) -> &[BreakerFailure] {
    pool.status
        .as_ref()
        .and_then(|s| s.breaker.as_ref())
        .map_or(&[], |b| b.failures.as_slice())
}

/// What the pool's reconcile decided.
#[derive(Clone, Debug, PartialEq)]
pub struct PoolPlan {
    pub status: GpuPoolStatus,
    pub events: Vec<Event>,
    pub requeue_after: Option<Duration>,
    pub breaker: Breaker,
}

/// The pool's status over every node its selector matches.
pub fn plan_pool(pool: &GpuPool, nodes: &[impl Borrow<NodeView>], now: Timestamp) -> PoolPlan {
    let spec = &pool.spec;
    let members: Vec<&NodeView> = nodes
        .iter()
        .map(Borrow::borrow)
        .filter(|n| !n.deleting && matches(&spec.node_selector, &n.labels))
        .collect();
    let counts = tally(members.iter().map(|n| n.state()));
    let mut gpus = GpuCounts::default();
    let mut domains: BTreeMap<String, (u32, u32)> = BTreeMap::new();
    for node in &members {
        // Saturating: a node's allocatable may say anything up to u32::MAX.
        let node_gpus = node.gpus();
        gpus.total = gpus.total.saturating_add(node_gpus);
        let key = waves::domain_key(&spec.topology.domain_label, &node.name, &node.labels);
        let entry = domains.entry(key).or_default();
        entry.1 += 1;
        if node.state() == NodeState::Ready {
            gpus.ready = gpus.ready.saturating_add(node_gpus);
            entry.0 += 1;
        }
    }
    let complete = domains
        .iter()
        .filter(|(key, (ready, _))| *ready >= needed_healthy(&spec.topology, key))
        .count() as u32;
    let (breaker, failures) = match &spec.circuit_breaker {
        Some(cb) => {
            let window = window_of(cb);
            let failures = counted_failures(ledger(pool), &members, earlier(now, window), now);
            (verdict(cb, &failures, members.len(), window), failures)
        }
        None => (Breaker::default(), Vec::new()),
    };

    let previous = pool.status.clone().unwrap_or_default();
    let generation = pool.metadata.generation;
    let prev = &previous.conditions;
    let mut events = Vec::new();
    let breaker_message = format!(
        "{} nodes failed within {}, limit {} ({}% of {} nodes)",
        breaker.failed_in_window,
        spec.circuit_breaker
            .as_ref()
            .map_or("-", |c| c.window.as_str()),
        breaker.limit,
        spec.circuit_breaker
            .as_ref()
            .map_or(0, |c| c.max_failed_percent),
        counts.total
    );
    let was_tripped = is_true(prev, ConditionType::CircuitBreakerTripped);
    if breaker.tripped != was_tripped {
        events.push(Event {
            target: EventTarget::Pool,
            warning: breaker.tripped,
            reason: if breaker.tripped {
                EventReason::CircuitBreakerTripped
            } else {
                EventReason::CircuitBreakerCleared
            },
            message: breaker_message.clone(),
        });
    }
    let conditions = vec![
        condition(
            prev,
            ConditionType::Ready,
            true,
            Reason::Observed,
            format!(
                "{} of {} GPUs online, {} of {} domains complete",
                gpus.ready,
                gpus.total,
                complete,
                domains.len()
            ),
            generation,
            now,
        ),
        condition(
            prev,
            ConditionType::CircuitBreakerTripped,
            breaker.tripped,
            if breaker.tripped {
                Reason::TooManyFailures
            } else {
                Reason::WithinLimit
            },
            breaker_message,
            generation,
            now,
        ),
    ];
    let tripped_at = if breaker.tripped {
        previous
            .breaker
            .as_ref()
            .and_then(|b| b.tripped_at.clone())
            .or(Some(Time(now)))
    } else {
        None
    };
    let status = GpuPoolStatus {
        observed_generation: generation,
        nodes: counts,
        gpus,
        domains: DomainCounts {
            complete,
            total: domains.len() as u32,
        },
        breaker: spec.circuit_breaker.as_ref().map(|_| BreakerStatus {
            tripped: breaker.tripped,
            failed_in_window: breaker.failed_in_window,
            limit: breaker.limit,
            tripped_at,
            failures: failures
                .iter()
                .map(|&(at, node)| BreakerFailure {
                    node: node.to_string(),
                    at: Time(at),
                })
                .collect(),
        }),
        conditions,
    };
    let requeue_after = breaker.next_change.map(|at| requeue_until(now, at));
    PoolPlan {
        status,
        events,
        requeue_after,
        breaker,
    }
}

/// The status of a pool that cannot be read (it slipped past admission):
/// Ready=False and Stalled=True, reason InvalidSpec, with the error.
pub fn invalid_pool_status(generation: Option<i64>, error: &str, now: Timestamp) -> GpuPoolStatus {
    let message = format!("the pool cannot be read: {error}");
    let c = |t, status| {
        condition(
            &[],
            t,
            status,
            Reason::InvalidSpec,
            message.clone(),
            generation,
            now,
        )
    };
    GpuPoolStatus {
        observed_generation: generation,
        conditions: vec![
            c(ConditionType::Ready, false),
            c(ConditionType::Stalled, true),
        ],
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_parse() {
        assert_eq!(parse_window("1h"), Some(SignedDuration::from_hours(1)));
        assert_eq!(parse_window("1h30m"), Some(SignedDuration::from_mins(90)));
        assert_eq!(parse_window("90s"), Some(SignedDuration::from_secs(90)));
        assert_eq!(parse_window("1.5h"), Some(SignedDuration::from_mins(90)));
        assert_eq!(
            parse_window("500ms"),
            Some(SignedDuration::from_millis(500))
        );
        assert_eq!(parse_window("1 hour"), None);
        assert_eq!(parse_window("10"), None);
    }
}
