//! Admission: a domain's nodes are admitted together once every member of
//! the domain in this batch has a verdict, if the domain then has enough
//! healthy nodes (its passed members plus its nodes already ready in the
//! pool, at least [`needed_healthy`]); else its passed nodes are held, and
//! admitted by a later plan once the domain recovers. A domain split across
//! batches is held whole, whatever its count: never admitted piecemeal.

use crate::keys;
use crate::vocabulary::EventReason;

use super::EventTarget;
use super::health::FailureCategory;
use super::membership::needed_healthy;
use super::racktest::RackTest;
use super::snapshot::NodeState;
use super::state::Planner;

impl Planner<'_> {
    pub(super) fn admit_domains(&mut self) {
        for d in 0..self.domains.len() {
            let members = self.domains[d].members.clone();
            let undecided = members.clone().any(|m| {
                let member = &self.members[m];
                !(member.passed || matches!(member.state, NodeState::Ready | NodeState::Failed))
            });
            if undecided {
                continue;
            }
            let passed_now = |planner: &Self| -> Vec<usize> {
                members
                    .clone()
                    .filter(|&m| planner.members[m].passed)
                    .collect()
            };
            // The trays are compared with each other (verdicts.rs): those
            // that disagree fail here; no majority holds the domain.
            if passed_now(self).is_empty() || !self.domain_gates(d) {
                continue;
            }
            let passed = passed_now(self);
            if passed.is_empty() {
                continue;
            }
            if self.domains[d].split > 0 {
                let reason = format!(
                    "domain {} is split: {} of its nodes belong to another batch of the pool; a domain is admitted whole, from one batch: select all its nodes in one batch",
                    self.domains[d].key, self.domains[d].split
                );
                for m in passed {
                    self.hold(m, &reason);
                }
                continue;
            }
            let needed = needed_healthy(&self.pool.spec.topology, &self.domains[d].key);
            let mut passed = passed;
            let mut healthy = self.domains[d].ready_in_pool + passed.len() as u32;
            // Enough healthy trays: with a rack test, the domain is admitted
            // only once its test passed (racktest.rs), and only the trays
            // it proved good.
            if healthy >= needed
                && let Some(spec) = self.pool.spec.health_checks.domain_test.clone()
            {
                // Room under the concurrency caps and the power budget.
                let room = self.rack_room().min(self.rack_power_room());
                self.rack_figure = None;
                let key = self.domains[d].key.clone();
                let measured = |figure: Option<u32>| {
                    figure.map_or(String::new(), |bw| {
                        format!(", lowest bus bandwidth {bw} GB/s")
                    })
                };
                match self.rack_test(&spec, &passed, room) {
                    RackTest::Running { round, testing } => {
                        self.rack_running.retain(|(k, _, _, _)| *k != key);
                        self.rack_running
                            .push((key, round, testing, self.rack_figure));
                        continue;
                    }
                    RackTest::RackFailed(why) => {
                        self.event(
                            EventTarget::Batch,
                            true,
                            EventReason::RackFailed,
                            format!(
                                "rack test of domain {key}: the rack failed as a whole; its {} trays fail{}",
                                passed.len(),
                                measured(self.rack_figure)
                            ),
                        );
                        for &m in &passed {
                            self.fail_faulty(m, why.clone());
                        }
                        continue;
                    }
                    RackTest::Done { faulty, good } => {
                        let names: Vec<String> = faulty
                            .iter()
                            .map(|(m, _)| self.members[*m].view.name.to_string())
                            .collect();
                        let (warning, reason, words) = if faulty.is_empty() {
                            (false, EventReason::RackTestPassed, "passed".to_string())
                        } else {
                            (
                                true,
                                EventReason::RackTestFailed,
                                format!(
                                    "found {} faulty tray{} ({})",
                                    names.len(),
                                    if names.len() == 1 { "" } else { "s" },
                                    crate::verdict::clip(&names.join(", "), 200)
                                ),
                            )
                        };
                        self.event(
                            EventTarget::Batch,
                            warning,
                            reason,
                            format!(
                                "rack test of domain {key}: {words}; {} trays proven good{}",
                                good.len(),
                                measured(self.rack_figure)
                            ),
                        );
                        for (m, why) in faulty {
                            self.fail_faulty(m, why);
                        }
                        passed = good;
                        healthy = self.domains[d].ready_in_pool + passed.len() as u32;
                    }
                }
            }
            if healthy >= needed {
                for m in passed {
                    let stamp = self.stamp();
                    self.transition(
                        m,
                        NodeState::Ready,
                        &[(keys::REASON, None), (keys::ADMITTED, Some(stamp))],
                    );
                    self.set_taint(m, false);
                    self.members[m].passed = false;
                }
                continue;
            }
            let ready_members = members
                .clone()
                .filter(|&m| self.members[m].view.state() == NodeState::Ready)
                .count() as u32;
            let reason = format!(
                "domain {}: {healthy} of {} nodes healthy, {needed} needed; retry the failed nodes or add nodes to the domain",
                self.domains[d].key,
                members.len() as u32 + self.domains[d].ready_in_pool - ready_members,
            );
            for m in passed {
                self.hold(m, &reason);
            }
        }
    }

    /// Holds passed member `m` with its domain's `reason`.
    pub(super) fn hold(&mut self, m: usize, reason: &str) {
        let member = &self.members[m];
        let unchanged = member.state == NodeState::Held
            && member.patch.is_none()
            && member.view.reason.as_deref() == Some(reason);
        if unchanged {
            return;
        }
        let since = member.view.since.get();
        let was_held = member.state == NodeState::Held;
        self.transition(m, NodeState::Held, &[(keys::REASON, Some(reason.into()))]);
        if was_held {
            // Only the reason changed: keep when it was first held.
            if let Some(since) = since {
                self.patch_of(m)
                    .annotations
                    .insert(keys::SINCE, Some(since.to_string()));
            }
        } else {
            self.patch_of(m).failure = Some(FailureCategory::DomainIncomplete);
            let node = self.members[m].view.name.to_string();
            self.event(
                EventTarget::Node(node),
                true,
                EventReason::NodeHeld,
                reason.into(),
            );
        }
        self.members[m].passed = true;
    }
}
