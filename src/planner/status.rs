//! The batch's status: per-wave progress, node counts, the gate the rollout
//! waits on, and kstatus conditions (`Ready`, `Reconciling`, `Stalled`,
//! `NodeConflicts`), with an event on each transition that matters to a
//! person. Words come from `crate::vocabulary`.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;

use crate::api::{GateStatus, NodeCounts, RolloutBatchStatus, WaveStatus};
use crate::keys;
use crate::vocabulary::{ConditionType, EventReason, Gate, Reason};

use super::EventTarget;
use super::conditions::{self, condition, is_true};
use super::gates::Stop;
use super::snapshot::NodeState;
use super::state::Planner;

/// At most this many node names go into one condition message.
const MAX_NAMED_NODES: usize = 10;

/// Nodes counted by state.
pub fn tally(states: impl IntoIterator<Item = NodeState>) -> NodeCounts {
    let mut counts = NodeCounts::default();
    for state in states {
        counts.total += 1;
        *match state {
            NodeState::Pending => &mut counts.pending,
            NodeState::Validating => &mut counts.validating,
            NodeState::Soaking => &mut counts.soaking,
            NodeState::Ready => &mut counts.ready,
            NodeState::Failed => &mut counts.failed,
            NodeState::Held => &mut counts.held,
        } += 1;
    }
    counts
}

/// Up to [`MAX_NAMED_NODES`] items, then how many more.
pub(super) fn bounded_list(items: &[String]) -> String {
    let shown = items
        .iter()
        .take(MAX_NAMED_NODES)
        .cloned()
        .collect::<Vec<_>>()
        .join(", ");
    match items.len().saturating_sub(MAX_NAMED_NODES) {
        0 => shown,
        more => format!("{shown} and {more} more"),
    }
}

/// Where the rollout stands, decided from the members and the stop.
struct Verdict {
    gate: Gate,
    /// From 1, where the gate concerns one wave.
    wave: Option<u32>,
    message: String,
    done: bool,
}

impl Verdict {
    fn stalled(&self) -> bool {
        self.gate.stalls()
    }
}

/// The Stalled=True conditions' words for a batch the planner cannot plan:
/// its spec or its pool cannot be read or found. Keeps the rest of the
/// previous status.
pub fn stalled_status(
    previous: &RolloutBatchStatus,
    reason: Reason,
    message: String,
    generation: Option<i64>,
    now: Timestamp,
) -> RolloutBatchStatus {
    let prev = &previous.conditions;
    let c = |t: ConditionType, status: bool, message: String| {
        condition(prev, t, status, reason, message, generation, now)
    };
    RolloutBatchStatus {
        observed_generation: generation,
        gate: Some(GateStatus {
            name: Gate::InvalidSpec,
            wave: None,
            message: message.clone(),
        }),
        conditions: vec![
            c(ConditionType::Ready, false, message.clone()),
            c(
                ConditionType::Reconciling,
                false,
                "no work in progress".into(),
            ),
            c(ConditionType::Stalled, true, message),
        ],
        ..previous.clone()
    }
}

impl Planner<'_> {
    fn failed_names(&self, wave: usize) -> String {
        let names: Vec<String> = self
            .members
            .iter()
            .filter(|m| m.wave == wave && m.state == NodeState::Failed)
            .map(|m| m.view.name.to_string())
            .collect();
        bounded_list(&names)
    }

    /// Per-wave progress, with an event when a wave starts or completes.
    fn wave_statuses(&mut self, previous: &RolloutBatchStatus) -> Vec<WaveStatus> {
        let now = self.now;
        let open = self.open_wave();
        let mut by_state = vec![[0u32; NodeState::ALL.len()]; self.wave_count];
        for m in &self.members {
            by_state[m.wave][m.state as usize] += 1;
        }
        let mut waves = Vec::with_capacity(self.wave_count);
        let mut cumulative = 0u32;
        for (w, in_state) in by_state.iter().enumerate() {
            let size: u32 = in_state.iter().sum();
            cumulative += size;
            let count = |s: NodeState| in_state[s as usize];
            let started = count(NodeState::Pending) < size;
            let complete = NodeState::ALL
                .iter()
                .all(|&s| s.is_verdict() || count(s) == 0);
            let prev = previous.waves.iter().find(|p| p.index == w as u32 + 1);
            let started_at = prev.and_then(|p| p.started_at.clone()).or_else(|| {
                (started || (complete && open.is_none_or(|o| o > w))).then_some(Time(now))
            });
            let completed_at = if complete && started_at.is_some() {
                prev.and_then(|p| p.completed_at.clone())
                    .or(Some(Time(now)))
            } else {
                None
            };
            let (index, of) = (w + 1, self.wave_count);
            if prev.and_then(|p| p.started_at.as_ref()).is_none() && started_at.is_some() {
                self.event(
                    EventTarget::Batch,
                    false,
                    EventReason::WaveStarted,
                    format!("wave {index} of {of} started: {size} nodes"),
                );
            }
            if prev.and_then(|p| p.completed_at.as_ref()).is_none() && completed_at.is_some() {
                self.event(
                    EventTarget::Batch,
                    false,
                    EventReason::WaveCompleted,
                    format!(
                        "wave {index} of {of} completed: {} ready, {} failed, {} held",
                        count(NodeState::Ready),
                        count(NodeState::Failed),
                        count(NodeState::Held)
                    ),
                );
            }
            waves.push(WaveStatus {
                index: index as u32,
                target_nodes: cumulative,
                admitted: count(NodeState::Ready),
                failed: count(NodeState::Failed),
                held: count(NodeState::Held),
                in_progress: count(NodeState::Validating) + count(NodeState::Soaking),
                started_at,
                completed_at,
                energy_watt_hours: 0,
            });
        }
        waves
    }

    /// The gate the rollout waits on once this plan is applied, in words.
    fn verdict(&self, stop: Option<Stop>, counts: &NodeCounts, current_wave: u32) -> Verdict {
        let done = !self.members.is_empty() && self.members.iter().all(|m| m.state.is_verdict());
        let budget_message = |w: usize, hint: bool| {
            let f = self.wave_failures()[w];
            let mut message = format!(
                "wave {} has {} failed nodes of {}, budget {}: {}",
                w + 1,
                f.failed,
                f.size,
                f.budget,
                self.failed_names(w)
            );
            if hint {
                message.push_str(&format!(
                    "; raise maxFailuresPerWave or retry nodes (annotation {})",
                    keys::RETRY
                ));
            }
            message
        };
        let verdict = |gate, wave: Option<usize>, message| Verdict {
            gate,
            wave: wave.map(|w| w as u32 + 1),
            message,
            done,
        };
        match stop {
            Some(Stop {
                gate: Gate::FailureBudget,
                wave,
            }) => return verdict(Gate::FailureBudget, Some(wave), budget_message(wave, true)),
            Some(Stop {
                gate: Gate::CircuitBreaker,
                ..
            }) => {
                let message = format!(
                    "pool {}: {} nodes failed within {}, limit {}; every rollout of the pool is halted",
                    self.pool_name(),
                    self.breaker.failed_in_window,
                    self.pool
                        .spec
                        .circuit_breaker
                        .as_ref()
                        .map_or("", |c| c.window.as_str()),
                    self.breaker.limit
                );
                return verdict(Gate::CircuitBreaker, None, message);
            }
            _ => {}
        }
        // The last wave may finish over budget with nothing left to start.
        if let (true, Some(w)) = (done, self.over_budget()) {
            return verdict(Gate::FailureBudget, Some(w), budget_message(w, false));
        }
        let in_flight = counts.validating + counts.soaking;
        if self.members.is_empty() {
            let message = "no node matches both the batch's and the pool's selectors yet";
            return verdict(Gate::NoNodes, None, message.into());
        }
        if done {
            let message = format!(
                "{} nodes: {} ready, {} failed, {} held",
                counts.total, counts.ready, counts.failed, counts.held
            );
            return verdict(Gate::Complete, None, message);
        }
        match stop {
            Some(Stop {
                gate: Gate::Paused,
                wave,
            }) => verdict(
                Gate::Paused,
                Some(wave),
                format!("paused; {in_flight} nodes still in flight"),
            ),
            Some(Stop {
                gate: Gate::Approval,
                wave,
            }) => verdict(
                Gate::Approval,
                Some(wave),
                format!(
                    "wave {} of {} waits for approval (approvedWaves is {}); raise spec.approvedWaves to continue",
                    wave + 1,
                    self.wave_count,
                    self.batch.spec.approved_waves.unwrap_or_default()
                ),
            ),
            Some(Stop {
                gate: Gate::SuspectedMisconfiguration,
                wave,
            }) => verdict(
                Gate::SuspectedMisconfiguration,
                Some(wave),
                format!(
                    "wave {} of {} halted: {}",
                    wave + 1,
                    self.wave_count,
                    self.suspected.as_deref().unwrap_or_default()
                ),
            ),
            Some(Stop {
                gate: Gate::ProbeRejected,
                wave,
            }) => verdict(
                Gate::ProbeRejected,
                Some(wave),
                format!(
                    "wave {} of {} halted: the API server refuses the probe pods: {}; no node starts and none is failed for it; fix the pool's probe template or what refuses it in the probe namespace (Pod Security, quota, RBAC)",
                    wave + 1,
                    self.wave_count,
                    self.snapshot.probe_rejection.as_deref().unwrap_or_default()
                ),
            ),
            Some(Stop {
                gate: Gate::ProbesNotRunning,
                wave,
            }) => {
                let (node, reason) = self
                    .probes_not_running()
                    .or_else(|| self.rack_not_run.clone())
                    .unwrap_or_default();
                verdict(
                    Gate::ProbesNotRunning,
                    Some(wave),
                    format!(
                        "wave {} of {} halted: probes cannot run: node {node}: {reason}; no node starts until they do; fix what keeps probe pods from running (scheduling, image, quota, admission)",
                        wave + 1,
                        self.wave_count,
                    ),
                )
            }
            Some(Stop {
                gate: Gate::RackTestTooBig,
                wave,
            }) => verdict(
                Gate::RackTestTooBig,
                Some(wave),
                format!(
                    "wave {} of {} halted: {}",
                    wave + 1,
                    self.wave_count,
                    self.rack_too_big.as_deref().unwrap_or_default()
                ),
            ),
            Some(Stop {
                gate: Gate::RackTestUnreadable,
                wave,
            }) => verdict(
                Gate::RackTestUnreadable,
                Some(wave),
                format!(
                    "wave {} of {} halted: {}; no tray is blamed and no node starts until the test is readable; look at the certification, then delete it to run the test again",
                    wave + 1,
                    self.wave_count,
                    self.rack_unreadable.as_deref().unwrap_or_default()
                ),
            ),
            Some(Stop {
                gate: Gate::InvalidSpec,
                wave,
            }) if self.spec_problem.is_some() => verdict(
                Gate::InvalidSpec,
                Some(wave),
                format!(
                    "wave {} of {} halted: cannot read the {}; no node starts until it is fixed",
                    wave + 1,
                    self.wave_count,
                    self.spec_problem.as_deref().unwrap_or_default()
                ),
            ),
            // Any other gate: its headline and where the wave stands.
            Some(Stop { gate, wave }) => verdict(
                gate,
                Some(wave),
                format!(
                    "wave {} of {} {}: {} validating, {} soaking, {} pending",
                    wave + 1,
                    self.wave_count,
                    gate.headline(),
                    counts.validating,
                    counts.soaking,
                    counts.pending
                ),
            ),
            None => {
                let message = format!(
                    "wave {} of {}: {} validating, {} soaking, {} pending",
                    current_wave.max(1),
                    self.wave_count,
                    counts.validating,
                    counts.soaking,
                    counts.pending
                );
                let wave = self
                    .open_wave()
                    .map_or(current_wave.max(1) as usize - 1, |w| w);
                let testing: u32 = self.rack_running.iter().map(|(_, _, t, _)| *t).sum();
                if counts.validating == 0 && !self.rack_running.is_empty() {
                    let rounds: std::collections::BTreeSet<u32> =
                        self.rack_running.iter().map(|(_, r, _, _)| *r).collect();
                    let power = self
                        .rack_power_held
                        .as_ref()
                        .map_or(String::new(), |held| format!("; waits for {held}"));
                    let message = format!(
                        "wave {} of {}: {} domains under a rack test ({testing} trays; attribution rounds {}), {} pending{power}",
                        current_wave.max(1),
                        self.wave_count,
                        self.rack_running.len(),
                        rounds
                            .iter()
                            .map(u32::to_string)
                            .collect::<Vec<_>>()
                            .join(", "),
                        counts.pending
                    );
                    return verdict(Gate::RackTest, Some(wave), message);
                }
                // Starts the facility holds back: a window first, then power.
                let facility = self
                    .window_held
                    .as_ref()
                    .map(|held| (Gate::MaintenanceWindow, "waits", held))
                    .or_else(|| {
                        self.power_held
                            .as_ref()
                            .map(|held| (Gate::PowerBudget, "waits for power", held))
                    });
                if let Some((gate, waits, held)) = facility {
                    let message = format!(
                        "wave {} of {} {waits}: {held} ({} validating, {} soaking, {} pending)",
                        current_wave.max(1),
                        self.wave_count,
                        counts.validating,
                        counts.soaking,
                        counts.pending
                    );
                    return verdict(gate, Some(wave), message);
                }
                let gate = if counts.validating > 0 || counts.soaking == 0 {
                    Gate::Probes
                } else {
                    Gate::Soak
                };
                verdict(gate, Some(wave), message)
            }
        }
    }

    /// The batch's conditions for a verdict.
    fn conditions(
        &self,
        previous: &RolloutBatchStatus,
        verdict: &Verdict,
        reconciling: bool,
    ) -> Vec<Condition> {
        let (generation, now) = (self.batch.metadata.generation, self.now);
        let prev = &previous.conditions;
        let stalled = verdict.stalled();
        let reason = verdict.gate.reason();
        let c = |t, status, reason, message| {
            condition(prev, t, status, reason, message, generation, now)
        };
        let mut conditions = vec![
            c(
                ConditionType::Ready,
                verdict.done && !stalled,
                reason,
                verdict.message.clone(),
            ),
            if reconciling {
                c(
                    ConditionType::Reconciling,
                    true,
                    Reason::WaveInProgress,
                    verdict.message.clone(),
                )
            } else {
                c(
                    ConditionType::Reconciling,
                    false,
                    reason,
                    "no work in progress".into(),
                )
            },
            if stalled {
                c(
                    ConditionType::Stalled,
                    true,
                    reason,
                    verdict.message.clone(),
                )
            } else {
                c(
                    ConditionType::Stalled,
                    false,
                    Reason::NotStalled,
                    "nothing needs a person".into(),
                )
            },
        ];
        let conflicted = !self.conflicts.is_empty();
        if conflicted || has(prev, ConditionType::NodeConflicts) {
            conditions.push(if conflicted {
                let named: Vec<String> = self
                    .conflicts
                    .iter()
                    .map(|(n, by)| format!("{n} (also {by})"))
                    .collect();
                c(
                    ConditionType::NodeConflicts,
                    true,
                    Reason::NodesClaimedTwice,
                    format!(
                        "{} nodes are claimed by another pool or batch and left alone: {}",
                        self.conflicts.len(),
                        bounded_list(&named)
                    ),
                )
            } else {
                c(
                    ConditionType::NodeConflicts,
                    false,
                    Reason::NoConflicts,
                    "no node is claimed twice".into(),
                )
            });
        }
        let split: Vec<String> = self
            .domains
            .iter()
            .filter(|d| d.split > 0)
            .map(|d| format!("{} ({} elsewhere)", d.key, d.split))
            .collect();
        if !split.is_empty() || has(prev, ConditionType::SplitDomains) {
            conditions.push(if split.is_empty() {
                c(
                    ConditionType::SplitDomains,
                    false,
                    Reason::NoSplitDomains,
                    "no domain spans two batches".into(),
                )
            } else {
                c(
                    ConditionType::SplitDomains,
                    true,
                    Reason::DomainsSplit,
                    format!(
                        "{} domains have nodes in another batch of the pool and are held whole: {}; select each domain's nodes in one batch",
                        split.len(),
                        bounded_list(&split)
                    ),
                )
            });
        }
        if !self.lost.is_empty() || has(prev, ConditionType::LostState) {
            conditions.push(if self.lost.is_empty() {
                c(
                    ConditionType::LostState,
                    false,
                    Reason::NoLostState,
                    "no admitted node lost its ready label".into(),
                )
            } else {
                let named: Vec<String> = self.lost.iter().map(|n| n.name.to_string()).collect();
                c(
                    ConditionType::LostState,
                    true,
                    Reason::StateLabelLost,
                    format!(
                        "{} nodes were admitted, then lost their ready label, and are left alone in service: {}; label them {}=ready, or annotate {} to validate them again",
                        named.len(),
                        bounded_list(&named),
                        crate::keys::STATE,
                        crate::keys::RETRY,
                    ),
                )
            });
        }
        conditions
    }

    /// Events on the transitions of the Stalled and Ready conditions.
    fn transition_events(&mut self, previous: &RolloutBatchStatus, verdict: &Verdict) {
        let prev = &previous.conditions;
        let stalled = verdict.stalled();
        let was_stalled = is_true(prev, ConditionType::Stalled);
        if stalled && !was_stalled {
            let reason = if verdict.gate == Gate::CircuitBreaker {
                EventReason::CircuitBreakerTripped
            } else {
                EventReason::RolloutHalted
            };
            self.event(EventTarget::Batch, true, reason, verdict.message.clone());
        }
        if !stalled && was_stalled {
            let breaker_cleared = conditions::reason(prev, ConditionType::Stalled)
                == Some(Reason::CircuitBreakerTripped.as_str());
            let reason = if breaker_cleared {
                EventReason::CircuitBreakerCleared
            } else {
                EventReason::RolloutResumed
            };
            self.event(
                EventTarget::Batch,
                false,
                reason,
                "the rollout may continue".into(),
            );
        }
        if verdict.done && !stalled && !is_true(prev, ConditionType::Ready) {
            self.event(
                EventTarget::Batch,
                false,
                EventReason::RolloutComplete,
                verdict.message.clone(),
            );
        }
    }

    /// The batch's new status, and events for what changed.
    pub(super) fn status(&mut self, stop: Option<Stop>) -> RolloutBatchStatus {
        let previous = self.batch.status.clone().unwrap_or_default();
        let mut waves = self.wave_statuses(&previous);
        let energy = self.energy(&previous, &mut waves);
        let current_wave = waves
            .iter()
            .filter(|w| w.started_at.is_some())
            .map(|w| w.index)
            .max()
            .unwrap_or(0);
        let counts = tally(self.members.iter().map(|m| m.state));
        let verdict = self.verdict(stop, &counts, current_wave);
        let in_flight = counts.validating + counts.soaking;
        let reconciling = !verdict.done
            && !verdict.stalled()
            && (in_flight > 0 || stop.is_none())
            && !self.members.is_empty();
        let conditions = self.conditions(&previous, &verdict, reconciling);
        self.transition_events(&previous, &verdict);
        RolloutBatchStatus {
            observed_generation: self.batch.metadata.generation,
            current_wave,
            total_waves: self.wave_count as u32,
            wave_progress: Some(format!("{current_wave}/{}", self.wave_count)),
            nodes: counts,
            waves,
            rack_tests: self
                .rack_running
                .iter()
                .take(64)
                .map(
                    |(domain, round, trays, figure)| crate::api::RackTestStatus {
                        domain: domain.clone(),
                        round: *round,
                        trays: *trays,
                        bus_bandwidth_gbps: *figure,
                    },
                )
                .collect(),
            gate: Some(GateStatus {
                name: verdict.gate,
                wave: verdict.wave,
                message: verdict.message,
            }),
            energy: Some(energy),
            conditions,
        }
    }
}

/// A condition of this type is present (it stays, False, once it was set).
fn has(prev: &[Condition], type_: ConditionType) -> bool {
    prev.iter().any(|c| c.type_ == type_.as_str())
}
