//! The pool's view: capacity online, domains complete, and the circuit
//! breaker that halts every rollout of the pool when too many nodes fail.

use std::borrow::Borrow;
use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::jiff::{SignedDuration, Timestamp};

use crate::api::{BreakerStatus, DomainCounts, GpuCounts, GpuPool, GpuPoolSpec, GpuPoolStatus};

use crate::vocabulary::{ConditionType, EventReason, Reason};

use super::conditions::{condition, is_true};
use super::membership::needed_healthy;
use super::snapshot::{NodeState, NodeView};
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

/// Parses a duration such as `90s`, `30m`, `1h30m` or `1.5h`.
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
    (any && number.is_empty()).then(|| SignedDuration::from_secs_f64(total))
}

/// The breaker of a pool over its nodes at `now`. Without a configured
/// breaker it never trips.
pub fn breaker(pool: &GpuPoolSpec, pool_nodes: &[&NodeView], now: Timestamp) -> Breaker {
    let Some(cb) = &pool.circuit_breaker else {
        return Breaker::default();
    };
    let window = parse_window(&cb.window).unwrap_or(SignedDuration::from_hours(1));
    let start = now - window;
    let failed: Vec<Option<Timestamp>> = pool_nodes
        .iter()
        .filter(|n| n.state() == NodeState::Failed)
        .map(|n| n.since)
        .filter(|since| since.is_none_or(|s| s > start))
        .collect();
    let total = pool_nodes.len() as u64;
    let limit = (u64::from(cb.max_failed_percent) * total / 100) as u32;
    let failed_in_window = failed.len() as u32;
    let tripped = failed_in_window > limit;
    let next_change = if tripped {
        failed.iter().flatten().min().map(|s| *s + window)
    } else {
        None
    };
    Breaker {
        tripped,
        failed_in_window,
        limit,
        next_change,
    }
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
        let node_gpus = node.gpus();
        gpus.total += node_gpus;
        let key = waves::domain_key(&spec.topology.domain_label, &node.name, &node.labels);
        let entry = domains.entry(key).or_default();
        entry.1 += 1;
        if node.state() == NodeState::Ready {
            gpus.ready += node_gpus;
            entry.0 += 1;
        }
    }
    let complete = domains
        .iter()
        .filter(|(key, (ready, _))| *ready >= needed_healthy(&spec.topology, key))
        .count() as u32;
    let breaker = breaker(spec, &members, now);

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
            .or(Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                now,
            )))
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
        }),
        conditions,
    };
    let requeue_after = breaker
        .next_change
        .map(|at| Duration::from_secs_f64(at.duration_since(now).as_secs_f64().max(0.0)));
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
