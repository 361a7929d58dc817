//! Gates: what lets the open wave's pending nodes start, and what holds them.
//! In order: the wave's failure budget, the pool's circuit breaker, a pause,
//! approval (`approvedWaves`), then the concurrency cap (nodes validating
//! across every batch of the pool, at most the batch's `maxConcurrent` and
//! the pool's, when set). A node that
//! fails its static checks at start joins its wave as failed.
//!
//! To add a gate: a variant in `crate::vocabulary::Gate` (its words), and a
//! check in [`Planner::gate`] (or a cap in [`Planner::start_nodes`]);
//! docs/architecture.md walks through one.

use k8s_openapi::jiff::{SignedDuration, Timestamp};

use crate::keys;
use crate::vocabulary::Gate;

use super::ProbeRequest;
use super::health::Failure;
use super::probes::probe_pod_name;
use super::snapshot::{NodeState, later};
use super::state::Planner;
use super::waves;

impl Planner<'_> {
    /// Keeps pending member `m`, which shows a `booting` failure, while it
    /// is within its startup grace: says why on the node (once) and plans
    /// again at the grace's end. False once the grace is over.
    fn wait_for_startup(&mut self, m: usize, failure: &Failure) -> bool {
        let view = self.members[m].view;
        let grace =
            SignedDuration::from_secs(i64::from(self.pool.spec.health_checks.startup_timeout()));
        // A node without a creation time (a view built by hand, never one
        // from the API server) gets no grace.
        let Some(deadline) = view.created.get().map(|c| later(c, grace)) else {
            return false;
        };
        if self.now >= deadline {
            return false;
        }
        let reason = format!(
            "waiting for the node to start (until {deadline}): {}",
            failure.message
        );
        if view.reason.as_deref() != Some(reason.as_str()) {
            self.patch_of(m)
                .annotations
                .insert(keys::REASON, Some(reason));
        }
        self.wake_at(deadline);
        true
    }
}

/// What stops new starts, and at which wave (from 0).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Stop {
    pub gate: Gate,
    pub wave: usize,
}

/// One wave's failures against its budget.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct WaveFailures {
    pub failed: u32,
    pub budget: u32,
    pub size: u32,
}

impl WaveFailures {
    pub fn exceeded(&self) -> bool {
        self.failed > self.budget
    }
}

impl Planner<'_> {
    /// Failures of each wave, with the budget of each (`maxFailuresPerWave`).
    pub(super) fn wave_failures(&self) -> Vec<WaveFailures> {
        let mut sizes = vec![0u32; self.wave_count];
        let mut failed = vec![0u32; self.wave_count];
        for m in &self.members {
            sizes[m.wave] += 1;
            if m.state == NodeState::Failed {
                failed[m.wave] += 1;
            }
        }
        let budget = self.batch.spec.max_failures_per_wave.as_ref();
        (0..self.wave_count)
            .map(|w| WaveFailures {
                failed: failed[w],
                budget: waves::failure_budget(budget, sizes[w]),
                size: sizes[w],
            })
            .collect()
    }

    /// The first wave over its failure budget.
    pub(super) fn over_budget(&self) -> Option<usize> {
        self.wave_failures().iter().position(WaveFailures::exceeded)
    }

    /// The first wave with a node that has no verdict yet.
    pub(super) fn open_wave(&self) -> Option<usize> {
        self.members
            .iter()
            .filter(|m| !m.state.is_verdict())
            .map(|m| m.wave)
            .min()
    }

    /// A node in validation whose probe did not run `notStartedLimit`
    /// times (as this plan leaves it), with its reason: probes cannot run,
    /// so no new node starts.
    pub(super) fn probes_not_running(&self) -> Option<(String, String)> {
        let limit = self
            .pool
            .spec
            .health_checks
            .probe
            .as_ref()?
            .not_started_limit();
        self.members.iter().find_map(|member| {
            if member.state != NodeState::Validating {
                return None;
            }
            let patched = member.patch.as_ref().map(|p| &p.annotations);
            let misses = match patched.and_then(|a| a.get(keys::PROBE_MISSES)) {
                Some(value) => value.as_deref().and_then(|v| v.parse().ok()).unwrap_or(0),
                None => member.view.probe_misses,
            };
            (misses >= limit).then(|| {
                let reason = match patched.and_then(|a| a.get(keys::REASON)) {
                    Some(value) => value.clone().unwrap_or_default(),
                    None => member
                        .view
                        .reason
                        .as_deref()
                        .unwrap_or_default()
                        .to_string(),
                };
                (member.view.name.to_string(), reason)
            })
        })
    }

    /// Trays a new rack test round may occupy under the caps: the lower
    /// of the pool's and the batch's, less every tray in validation or
    /// under a rack test.
    pub(super) fn rack_room(&self) -> u32 {
        let cap = self.concurrency_cap();
        let validating = self.members.iter().filter(|m| m.holds_a_slot()).count() as u32;
        cap.saturating_sub(self.validating_elsewhere + validating + self.rack_testing())
    }

    /// The lower of the pool's and the batch's `maxConcurrent`.
    pub(super) fn concurrency_cap(&self) -> u32 {
        self.pool
            .spec
            .max_concurrent
            .map_or(self.batch.spec.max_concurrent, |pool| {
                pool.min(self.batch.spec.max_concurrent)
            })
    }

    /// The gate that holds the open wave `wave` back, if any.
    fn gate(&self, wave: usize) -> Option<Stop> {
        let spec = &self.batch.spec;
        let stop = |gate, wave| Some(Stop { gate, wave });
        if let Some(w) = self.over_budget() {
            stop(Gate::FailureBudget, w)
        } else if self.breaker.tripped {
            stop(Gate::CircuitBreaker, wave)
        } else if self.suspected.is_some() {
            stop(Gate::SuspectedMisconfiguration, wave)
        } else if self.snapshot.probe_rejection.is_some() {
            stop(Gate::ProbeRejected, wave)
        } else if self.probes_not_running().is_some() {
            stop(Gate::ProbesNotRunning, wave)
        } else if spec.paused {
            stop(Gate::Paused, wave)
        } else if spec.approved_waves.is_some_and(|a| wave as u32 >= a) {
            stop(Gate::Approval, wave)
        } else {
            None
        }
    }

    /// Starts pending nodes of the open wave as far as the gates allow, and
    /// returns the gate that stops the rollout, if any.
    pub(super) fn start_nodes(&mut self) -> Option<Stop> {
        let wave = self.open_wave()?;
        if let Some(stop) = self.gate(wave) {
            return Some(stop);
        }
        // The pool's windows, then the batch's: both must be open.
        let pool_windows = &self.pool.spec.windows;
        let batch_windows = &self.batch.spec.windows;
        let kinds = [
            (pool_windows, "pool's", "pool"),
            (batch_windows, "batch's", "batch"),
        ];
        for (windows, whose, object) in kinds {
            match super::windows::standing(windows, self.now) {
                super::windows::Standing::Open => {}
                super::windows::Standing::Closed { opens, time_zone } => {
                    let waiting = self
                        .members
                        .iter()
                        .any(|m| m.state == NodeState::Pending && m.wave == wave);
                    if waiting {
                        self.window_held = Some(if opens < Timestamp::MAX {
                            format!(
                                "outside the {whose} maintenance windows; the next opens {}",
                                super::windows::describe_opening(&time_zone, opens, self.now)
                            )
                        } else {
                            format!("outside the {whose} maintenance windows, and none opens again")
                        });
                        if opens < Timestamp::MAX {
                            self.wake_at(opens);
                        }
                    }
                    return None;
                }
                super::windows::Standing::Invalid { field, problem } => {
                    self.spec_problem = Some(format!("{object}: {field}: {problem}"));
                    return Some(Stop {
                        gate: Gate::InvalidSpec,
                        wave,
                    });
                }
            }
        }
        let probe_timeout = self
            .pool
            .spec
            .health_checks
            .probe
            .as_ref()
            .map(|p| p.timeout_seconds);
        let mut validating_here = 0u32;
        let mut pending: Vec<usize> = Vec::new();
        for (m, member) in self.members.iter().enumerate() {
            if member.holds_a_slot() {
                validating_here += 1;
            } else if member.state == NodeState::Pending && member.wave == wave {
                pending.push(m);
            }
        }
        // Both caps count every node of the pool in validation; the pool's
        // (when set) and the batch's: the lower wins.
        let cap = self.concurrency_cap();
        // Trays under a rack test count as in validation.
        let mut slots =
            cap.saturating_sub(self.validating_elsewhere + validating_here + self.rack_testing());
        let batch_name = self.batch_name().to_string();
        let mut power = self.power_use();
        let soak_at_load = self
            .pool
            .spec
            .power
            .as_ref()
            .is_some_and(|p| p.soak_at_load);
        for m in pending {
            let joined = [
                (keys::BATCH, Some(batch_name.clone())),
                (keys::BATCH_UID, self.batch.metadata.uid.clone()),
                (keys::WAVE, Some((wave + 1).to_string())),
                (keys::STARTED, Some(self.stamp())),
                (keys::SUSPECT, None),
            ];
            let failure = self.static_check(m);
            if let Some(failure) = failure.as_ref().filter(|f| f.booting) {
                // Not Ready or not labelled yet: a new rack's nodes register
                // before the driver and GPU Feature Discovery are up. It
                // waits, pending, until `startupTimeoutSeconds` after it
                // registered, then fails.
                if self.wait_for_startup(m, failure) {
                    continue;
                }
            }
            if let Some(mut failure) = failure {
                // Its grace is over (a view without a creation time has none).
                if failure.booting && self.members[m].view.created.is_some() {
                    failure.message = format!(
                        "never became ready and labelled within {}s of registering: {}",
                        self.pool.spec.health_checks.startup_timeout(),
                        failure.message
                    );
                }
                // It joins its wave as failed, held back by the onboarding
                // taint like any node between start and admission: a node
                // that failed a check never takes workloads from gpufleet's
                // hands.
                self.fail(m, failure);
                self.transition(m, NodeState::Failed, &joined);
                self.set_taint(m, true);
                if let Some(w) = self.over_budget() {
                    return Some(Stop {
                        gate: Gate::FailureBudget,
                        wave: w,
                    });
                }
                continue;
            }
            if probe_timeout.is_some() && slots == 0 {
                break;
            }
            // Under test from its start: with a probe, or a soak at load.
            if let Some(power) = power.as_mut()
                && (probe_timeout.is_some() || soak_at_load)
                && !self.power_allows(power, m)
            {
                break;
            }
            let mut annotations = joined.to_vec();
            annotations.push((keys::REASON, None));
            annotations.push((keys::ATTEMPT, probe_timeout.map(|_| "1".to_string())));
            if let Some(timeout) = probe_timeout {
                slots -= 1;
                self.transition(m, NodeState::Validating, &annotations);
                let node = self.members[m].view.name.to_string();
                self.creates.push(ProbeRequest {
                    pod_name: probe_pod_name(&node, 1),
                    node,
                    attempt: 1,
                    run: Some(self.now),
                    group: None,
                });
                self.wake_at(later(
                    self.now,
                    SignedDuration::from_secs(i64::from(timeout)),
                ));
            } else {
                self.transition(m, NodeState::Soaking, &annotations);
                self.check_soaking_or_held(m);
            }
            self.set_taint(m, true);
        }
        None
    }
}
