//! The burn-in probe: one pod per node and attempt, created when the node
//! starts; its verdict moves the node to soaking or, after the pool's
//! retries, to failed. A probe that never appears or never finishes fails
//! the node at its deadline. Probes no node waits on are deleted.

use std::collections::BTreeSet;

use k8s_openapi::jiff::SignedDuration;

use crate::keys;

use super::ProbeRequest;
use super::health::{Failure, FailureCategory};
use super::snapshot::{NodeState, ProbePhase, ProbeView, Termination, later};
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
        self.restamp_since(m);
        // A condition bad for less than its timeout lets the probe go on:
        // the soak after it does not pass while one is bad.
        if self.check_standing(m).is_err() {
            return;
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
        let since = self.since(m);
        // The pod at the probe's name counts only if this batch made it for
        // this node: a pod someone else made at that name (the name is
        // deterministic) is no verdict. The probe namespace is gpufleet's
        // own, so such a pod is deleted, and the node waits for its own
        // probe within the same deadline. A pod with no batch UID at all is
        // refused too (gpufleet has always set its controller owner
        // reference, which stands in for the label on older probes): safer
        // than taking a verdict nobody can vouch for.
        let batch_uid = self.batch.metadata.uid.as_deref();
        let (current, squatter) = match self
            .probe_named
            .get(name.as_str())
            .copied()
            .filter(|p| !p.deleting)
        {
            // Made for this run of the node, too: a pod left from an earlier
            // run at the same name (a plan cut short before deleting it, or
            // a pod cache behind) is no verdict for this one. A pod without
            // a run (made by an older gpufleet) is made again.
            Some(p) if p.made_by(batch_uid) && p.node == view.name && p.run == view.started => {
                (Some(p), None)
            }
            Some(p) => (None, Some(p)),
            None => (None, None),
        };
        let outcome = match current {
            None => {
                let deadline = later(since, timeout);
                if self.now >= deadline {
                    let message = match squatter {
                        Some(_) => format!(
                            "probe did not run within {timeout_seconds}s: a pod this batch did not make held the probe's name {name}"
                        ),
                        None => format!("probe did not run within {timeout_seconds}s"),
                    };
                    Some(Err(Failure::new(FailureCategory::ProbeTimeout, message)))
                } else {
                    match squatter {
                        // Our probe is made once the foreign pod is gone.
                        Some(pod) => {
                            self.deletes.insert(pod.name.clone());
                        }
                        None => self.creates.push(ProbeRequest {
                            pod_name: name.clone(),
                            node: view.name.clone(),
                            attempt,
                            run: view.started,
                        }),
                    }
                    self.wake_at(deadline);
                    None
                }
            }
            Some(probe) => {
                if let Some(failed) = probe.failed_container() {
                    // Any container, init or regular, that exited non-zero
                    // fails the probe at once, even while others still run.
                    Some(Err(Failure::new(
                        FailureCategory::ProbeFailed,
                        container_failure_message(probe, failed),
                    )))
                } else if probe.phase == ProbePhase::Failed {
                    Some(Err(Failure::new(
                        FailureCategory::ProbeFailed,
                        probe_failure_message(probe.message.as_deref()),
                    )))
                } else if probe.phase == ProbePhase::Succeeded && probe.all_exited_zero() {
                    // Passed only when the pod is done and every container
                    // ended with 0: one container finishing early (a quick
                    // inventory beside a long burn-in) is not a verdict.
                    Some(Ok(()))
                } else {
                    let deadline = later(probe.created.unwrap_or(since).max(since), timeout);
                    if self.now >= deadline {
                        let message = if probe.phase == ProbePhase::Succeeded {
                            format!(
                                "probe timed out after {timeout_seconds}s: its pod succeeded, but not every container reported exit 0"
                            )
                        } else {
                            format!("probe timed out after {timeout_seconds}s")
                        };
                        Some(Err(Failure::new(FailureCategory::ProbeTimeout, message)))
                    } else {
                        self.wake_at(deadline);
                        None
                    }
                }
            }
        };
        if let (Some(_), Some(pod)) = (&outcome, squatter) {
            self.deletes.insert(pod.name.clone());
        }
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
                    run: view.started,
                });
                self.wake_at(later(self.now, timeout));
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

/// A container's failure in words: its exit code, its name (unless it is the
/// pod's only container) and the first lines of its termination message.
fn container_failure_message(probe: &ProbeView, failed: &Termination) -> String {
    let only = probe.containers == 1 && probe.init_containers == 0 && !failed.init;
    let code = if only {
        format!("probe failed (exit {})", failed.exit_code)
    } else {
        format!(
            "probe failed (exit {}, {}container {})",
            failed.exit_code,
            if failed.init { "init " } else { "" },
            failed.container
        )
    };
    match failed.message.as_deref().map(first_lines) {
        Some(text) if !text.is_empty() => format!("{code}: {text}"),
        _ => code,
    }
}

/// A failed pod none of whose containers exited non-zero, in words: the
/// pod's own reason and message (e.g. its deadline passed).
fn probe_failure_message(message: Option<&str>) -> String {
    match message.map(first_lines) {
        Some(text) if !text.is_empty() => format!("probe failed: {text}"),
        _ => "probe failed".to_string(),
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
