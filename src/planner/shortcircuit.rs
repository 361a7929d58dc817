//! The short-circuit, after Cluster API's MachineHealthCheck `maxUnhealthy`:
//! when more than `shortCircuitPercent` of the nodes a wave has started fail
//! in one pass for the very same reason (category and words), the likelier
//! cause is the configuration (a typo in
//! the probe's image or command, a wrong driver floor) rather than that many
//! trays. Those nodes are not failed, so no failure budget or circuit
//! breaker is spent on them: they go back to pending, their probes deleted,
//! marked with the pool's generation (`gpufleet.io/suspect`), and the batch
//! halts (`Gate::SuspectedMisconfiguration`) until the pool changes. Then
//! they start again under the new configuration. A person who knows the
//! nodes are at fault raises `shortCircuitPercent` (a pool change too).

use std::collections::BTreeMap;

use crate::keys;
use crate::vocabulary::EventReason;

use super::EventTarget;
use super::health::{Failure, FailureCategory};
use super::snapshot::NodeState;
use super::state::Planner;

impl Planner<'_> {
    /// The pool's generation, as the short-circuit marks nodes with it.
    pub(super) fn pool_generation(&self) -> i64 {
        self.pool.metadata.generation.unwrap_or(0)
    }

    /// Notes a short-circuit still in force: a pending member marked under
    /// the pool's current generation.
    pub(super) fn find_suspected(&mut self) {
        let generation = self.pool_generation();
        self.suspected = self
            .members
            .iter()
            .find(|m| m.state == NodeState::Pending && m.view.suspect == Some(generation))
            .map(|m| m.view.reason.as_deref().unwrap_or_default().to_string());
    }

    /// Settles the failures of nodes in flight recorded while deferring:
    /// fails them, unless one reason is shared by too many.
    pub(super) fn settle_failures(&mut self) {
        self.deferring = false;
        let deferred = std::mem::take(&mut self.deferred);
        if deferred.is_empty() {
            return self.find_suspected();
        }
        // Per wave, the nodes it has started so far (in flight or decided):
        // a typo fails every node started under it, while at a wave's tail
        // a few real faults alike stay a small share of the wave.
        let mut started = vec![0u64; self.wave_count];
        for m in &self.members {
            if m.state != NodeState::Pending {
                started[m.wave] += 1;
            }
        }
        let mut by_reason: BTreeMap<(usize, FailureCategory, &str), u64> = BTreeMap::new();
        for (m, f) in &deferred {
            let key = (self.members[*m].wave, f.category, f.message.as_str());
            *by_reason.entry(key).or_default() += 1;
        }
        let (percent, min_nodes) = self.pool.spec.health_checks.short_circuit();
        let suspicious: Vec<(usize, FailureCategory, String, u64)> = by_reason
            .into_iter()
            .filter(|((wave, _, _), n)| {
                *n >= u64::from(min_nodes) && *n * 100 > u64::from(percent) * started[*wave]
            })
            .map(|((wave, c, message), n)| (wave, c, message.to_string(), n))
            .collect();
        for (m, failure) in deferred {
            let wave = self.members[m].wave;
            match suspicious.iter().find(|(w, c, message, _)| {
                *w == wave && *c == failure.category && *message == failure.message
            }) {
                Some((_, _, _, n)) => self.suspect(m, &failure, *n, started[wave]),
                None => self.fail(m, failure),
            }
        }
        for (wave, _, message, n) in &suspicious {
            let message = format!(
                "{n} of the {} nodes wave {} started failed the same way at once: {message}; none is failed: suspected misconfiguration; fix the pool (its probe or checks), or raise healthChecks.shortCircuitPercent if the nodes are at fault",
                started[*wave],
                wave + 1
            );
            self.event(
                EventTarget::Batch,
                true,
                EventReason::SuspectedMisconfiguration,
                message,
            );
        }
        if self.suspected.is_none() {
            self.find_suspected();
        }
    }

    /// Sends member `m` back to pending as part of a short-circuit.
    fn suspect(&mut self, m: usize, failure: &Failure, n: u64, started: u64) {
        let reason = format!(
            "{n} of the {started} nodes its wave started failed the same way at once ({failure}); sent back to pending, not failed: suspected misconfiguration; the batch resumes when the pool changes"
        );
        let generation = self.pool_generation().to_string();
        self.transition(
            m,
            NodeState::Pending,
            &[
                (keys::SUSPECT, Some(generation)),
                (keys::REASON, Some(reason.clone())),
                (keys::ATTEMPT, None),
            ],
        );
        self.members[m].passed = false;
        let name = self.members[m].view.name.to_string();
        for probe in self.probes.get(name.as_str()).into_iter().flatten() {
            self.deletes.insert(probe.name.clone(), probe.run);
        }
        if self.suspected.is_none() {
            self.suspected = Some(reason);
        }
    }
}
