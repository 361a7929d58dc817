//! The burn-in probe: one pod per node and attempt, created when the node
//! starts; its verdict moves the node to soaking or, after the pool's
//! retries, to failed. A probe that never appears or never finishes fails
//! the node at its deadline. Probes no node waits on are deleted.

use std::collections::BTreeSet;

use k8s_openapi::jiff::SignedDuration;

use crate::keys;

use super::ProbeRequest;
use super::health::{Failure, FailureCategory};
use super::snapshot::{NodeState, ProbePhase};
use super::state::Planner;

/// The name of a node's probe pod for an attempt: deterministic, so a
/// restarted operator finds the pod it made instead of making a second one.
pub fn probe_pod_name(node: &str, attempt: u32) -> String {
    let name = format!("gpufleet-probe-{node}-{attempt}");
    if name.len() <= 253 {
        return name;
    }
    let hash = keys::stable_hash(node.as_bytes());
    format!("gpufleet-probe-{}-{hash:016x}-{attempt}", &node[..200])
}

impl Planner<'_> {
    /// A validating member: its static checks, then its probe's verdict.
    pub(super) fn check_validating(&mut self, m: usize) {
        if let Some(failure) = self.static_check(m) {
            return self.fail(m, failure);
        }
        let Some(probe_spec) = self.pool.spec.health_checks.probe.as_ref() else {
            // The probe was removed from the pool: nothing left to wait for.
            self.transition(m, NodeState::Soaking, &[]);
            return self.check_soaking_or_held(m);
        };
        let timeout = SignedDuration::from_secs(i64::from(probe_spec.timeout_seconds));
        let (timeout_seconds, retries) = (probe_spec.timeout_seconds, probe_spec.retries);
        let view = self.members[m].view;
        let attempt = view.attempt.max(1);
        let name = probe_pod_name(&view.name, attempt);
        let since = view.since.unwrap_or(self.now);
        let current = self
            .probes
            .get(view.name.as_str())
            .into_iter()
            .flatten()
            .find(|p| p.name == name && !p.deleting)
            .copied();
        let outcome = match current {
            None => {
                let deadline = since + timeout;
                if self.now >= deadline {
                    Some(Err(Failure::new(
                        FailureCategory::ProbeTimeout,
                        format!("probe did not run within {timeout_seconds}s"),
                    )))
                } else {
                    self.creates.push(ProbeRequest {
                        pod_name: name,
                        node: view.name.clone(),
                        attempt,
                    });
                    self.wake_at(deadline);
                    None
                }
            }
            Some(probe) => match (probe.phase, probe.exit_code) {
                (ProbePhase::Succeeded, _) | (_, Some(0)) if probe.phase != ProbePhase::Failed => {
                    Some(Ok(()))
                }
                (ProbePhase::Failed, code) => Some(Err(Failure::new(
                    FailureCategory::ProbeFailed,
                    probe_failure_message(code, probe.message.as_deref()),
                ))),
                _ => {
                    let deadline = probe.created.unwrap_or(since).max(since) + timeout;
                    if self.now >= deadline {
                        Some(Err(Failure::new(
                            FailureCategory::ProbeTimeout,
                            format!("probe timed out after {timeout_seconds}s"),
                        )))
                    } else {
                        self.wake_at(deadline);
                        None
                    }
                }
            },
        };
        let Some(outcome) = outcome else {
            return;
        };
        if let Some(p) = current {
            self.deletes.insert(p.name.clone());
        }
        match outcome {
            Ok(()) => {
                self.transition(m, NodeState::Soaking, &[(keys::REASON, None)]);
                self.check_soaking_or_held(m);
            }
            Err(failure) if attempt <= retries => {
                let next = attempt + 1;
                let reason = format!("attempt {attempt} failed: {failure}; retrying");
                self.transition(
                    m,
                    NodeState::Validating,
                    &[
                        (keys::ATTEMPT, Some(next.to_string())),
                        (keys::REASON, Some(reason)),
                    ],
                );
                let node = view.name.clone();
                self.creates.push(ProbeRequest {
                    pod_name: probe_pod_name(&node, next),
                    node,
                    attempt: next,
                });
                self.wake_at(self.now + timeout);
            }
            Err(failure) => self.fail(m, failure),
        }
    }

    /// Probes that belong to no node in validation: read already, stale
    /// attempts, or nodes that left the batch.
    pub(super) fn delete_stray_probes(&mut self) {
        let wanted: BTreeSet<String> = self
            .members
            .iter()
            .filter(|m| m.state == NodeState::Validating)
            .map(|m| probe_pod_name(&m.view.name, m.view.attempt.max(1)))
            .chain(self.creates.iter().map(|c| c.pod_name.clone()))
            .collect();
        for probe in &self.snapshot.probes {
            if !probe.deleting && !wanted.contains(&probe.name) {
                self.deletes.insert(probe.name.clone());
            }
        }
    }
}

/// A probe's failure in words: the exit code and the first lines of its
/// termination message.
fn probe_failure_message(exit_code: Option<i32>, message: Option<&str>) -> String {
    let code = exit_code.map_or_else(
        || "probe failed".to_string(),
        |c| format!("probe failed (exit {c})"),
    );
    match message.map(first_lines) {
        Some(text) if !text.is_empty() => format!("{code}: {text}"),
        _ => code,
    }
}

/// The first three non-empty lines, joined, at most 300 characters.
fn first_lines(text: &str) -> String {
    let joined = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .take(3)
        .collect::<Vec<_>>()
        .join(" / ");
    match joined.char_indices().nth(300) {
        Some((i, _)) => format!("{}…", &joined[..i]),
        None => joined,
    }
}
