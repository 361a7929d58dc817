//! Events, rate-limited so a 10,000-node wave does not flood the API server:
//! per reconcile, node events beyond a few are folded into one summary on the
//! batch; across the process a token bucket caps the rate.

use std::sync::Mutex;
use std::time::Instant;

use k8s_openapi::api::core::v1::ObjectReference;
use kube::runtime::events::{Event as KubeEvent, EventType, Recorder};
use tracing::{debug, warn};

use crate::planner::{Event, EventTarget};
use crate::vocabulary::EventReason;

/// Node events per reconcile before the rest are summarised.
const NODE_EVENTS_PER_RECONCILE: usize = 20;

/// A token bucket: `rate` events per second, up to `burst` at once.
pub struct Limiter {
    rate: f64,
    burst: f64,
    state: Mutex<(f64, Instant)>,
}

impl Limiter {
    pub fn new(rate: f64, burst: f64) -> Self {
        Limiter {
            rate,
            burst,
            state: Mutex::new((burst, Instant::now())),
        }
    }

    /// Waits for a token.
    pub async fn acquire(&self) {
        while !self.try_take() {
            tokio::time::sleep(std::time::Duration::from_secs_f64(
                (1.0 / self.rate).min(0.1),
            ))
            .await;
        }
    }

    /// Takes a token if one is there.
    pub fn try_take(&self) -> bool {
        let mut state = self.state.lock().expect("limiter lock");
        let now = Instant::now();
        let (tokens, last) = *state;
        let tokens = (tokens + now.duration_since(last).as_secs_f64() * self.rate).min(self.burst);
        if tokens >= 1.0 {
            *state = (tokens - 1.0, now);
            true
        } else {
            *state = (tokens, now);
            false
        }
    }
}

/// Publishes a plan's events about `object` (the batch or pool).
pub async fn publish(
    recorder: &Recorder,
    limiter: &Limiter,
    leadership: &super::leader::Leadership,
    object: &ObjectReference,
    events: Vec<&Event>,
) {
    let (node_events, object_events): (Vec<&Event>, Vec<&Event>) = events
        .into_iter()
        .partition(|e| matches!(e.target, EventTarget::Node(_)));
    let mut to_send: Vec<(ObjectReference, &Event)> = object_events
        .into_iter()
        .map(|e| (object.clone(), e))
        .collect();
    let folded = node_events.len().saturating_sub(NODE_EVENTS_PER_RECONCILE);
    for event in node_events.iter().take(NODE_EVENTS_PER_RECONCILE) {
        if let EventTarget::Node(name) = &event.target {
            let node = ObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Node".into()),
                name: Some(name.clone()),
                ..Default::default()
            };
            to_send.push((node, event));
        }
    }
    let summary;
    if folded > 0 {
        summary = Event {
            target: EventTarget::Batch,
            warning: true,
            reason: EventReason::NodeEventsFolded,
            message: format!(
                "{folded} more node events in this reconcile; see the nodes' gpufleet.io/reason"
            ),
        };
        to_send.push((object.clone(), &summary));
    }
    for (reference, event) in to_send {
        // Events are writes too: a replica that lost the lease says nothing.
        if !leadership.is_leader() {
            debug!(
                reason = event.reason.as_str(),
                "not the leader; event not recorded"
            );
            return;
        }
        if !limiter.try_take() {
            debug!(
                reason = event.reason.as_str(),
                "event dropped by the rate limit"
            );
            continue;
        }
        let ev = KubeEvent {
            type_: if event.warning {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: event.reason.as_str().into(),
            note: Some(truncate(&event.message, 1000)),
            action: "Reconcile".into(),
            secondary: None,
        };
        if let Err(err) = recorder.publish(&ev, &reference).await {
            warn!(reason = event.reason.as_str(), object = ?reference.name, %err, "could not record an event");
        }
    }
}

fn truncate(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((i, _)) => format!("{}…", &text[..i]),
        None => text.to_string(),
    }
}
