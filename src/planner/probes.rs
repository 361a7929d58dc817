//! The burn-in probe: one pod per node and attempt, created when the node
//! starts; its verdict moves the node to soaking or, after the pool's
//! retries, to failed. A probe that ran but never finished fails the node
//! at its deadline (`timeoutSeconds`, counted from when its pod began to
//! run). A probe that never ran (never created, not started within
//! `startTimeoutSeconds`, evicted, refused by the kubelet) is no evidence
//! against the node: it is made again, fails nothing, and halts the batch
//! once a node has counted `notStartedLimit` of them. Probes no node waits
//! on are deleted.

use std::collections::BTreeSet;

use k8s_openapi::jiff::{SignedDuration, Timestamp};

use crate::keys;
use crate::vocabulary::EventReason;

use super::health::{Failure, FailureCategory};
use super::snapshot::{NodeState, ProbePhase, ProbeView, Termination, later};
use super::state::{PASS_IN_POD, Planner};
use super::verdicts::{as_failure, judge};
use super::{EventTarget, ProbeRequest};
use crate::verdict::Read;

/// The name of a node's probe pod for an attempt: deterministic, so a
/// restarted operator finds the pod it made instead of making a second one.
pub fn probe_pod_name(node: &str, attempt: u32) -> String {
    let name = format!("gpufleet-probe-{node}-{attempt}");
    if name.len() <= 253 {
        return name;
    }
    let hash = keys::stable_hash(node.as_bytes());
    format!("gpufleet-probe-{}-{hash:016x}-{attempt}", prefix(node, 200))
}

/// At most the first `bytes` bytes of `text`, cut at a character boundary
/// (node names are ASCII, but no value may panic).
fn prefix(text: &str, bytes: usize) -> &str {
    let mut end = bytes.min(text.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// The name of the pod a node in validation waits for: its attempt's
/// name ([`probe_pod_name`]), with `r` and the count of runs that never ran
/// when there were any (a new run gets a new pod, made while the old one
/// goes). The last segment tells the two forms apart: digits alone, or
/// digits, `r`, digits.
pub fn probe_run_pod_name(node: &str, attempt: u32, misses: u32) -> String {
    if misses == 0 {
        return probe_pod_name(node, attempt);
    }
    let name = format!("gpufleet-probe-{node}-{attempt}r{misses}");
    if name.len() <= 253 {
        return name;
    }
    let hash = keys::stable_hash(node.as_bytes());
    format!(
        "gpufleet-probe-{}-{hash:016x}-{attempt}r{misses}",
        prefix(node, 200)
    )
}

/// The probe pod `view`, a node in validation, waits for.
pub fn awaited_probe(view: &super::NodeView) -> String {
    probe_run_pod_name(&view.name, view.attempt.max(1), view.probe_misses)
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
        let name = awaited_probe(view);
        let since = self.since(m);
        // The pod at the probe's name counts only if this batch made it for
        // this node: a pod someone else made at that name (the name is
        // deterministic) is no verdict. The probe namespace is gpufleet's
        // own, so such a pod is deleted, and the node waits for its own
        // probe within the same deadline. A pod with no batch UID at all is
        // refused too (gpufleet has always set its controller owner
        // reference, which stands in for the label on older probes): safer
        // than taking a verdict nobody can vouch for.
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
            Some(p) if self.made_for_run(p, view) => (Some(p), None),
            Some(p) => (None, Some(p)),
            None => (None, None),
        };
        let start_timeout = SignedDuration::from_secs(i64::from(probe_spec.start_timeout()));
        let start_seconds = probe_spec.start_timeout();
        let outcome = match current {
            None => {
                let deadline = later(since, start_timeout);
                if self.now >= deadline {
                    Some(Verdict::NotRun(
                        match (squatter, &self.snapshot.probe_rejection) {
                            (Some(_), _) => format!(
                                "a pod this batch did not make held the probe's name {name} for {start_seconds}s"
                            ),
                            (None, Some(refused)) => {
                                format!("the API server refused its pod: {refused}")
                            }
                            (None, None) => {
                                format!("its pod was not created within {start_seconds}s")
                            }
                        },
                    ))
                } else {
                    match squatter {
                        // Our probe is made once the foreign pod is gone.
                        Some(pod) => {
                            self.deletes.insert(pod.name.clone(), pod.run);
                        }
                        None => self.creates.push(ProbeRequest {
                            pod_name: name.clone(),
                            node: view.name.to_string(),
                            attempt,
                            run: view.started.get(),
                            group: None,
                        }),
                    }
                    self.wake_at(deadline);
                    None
                }
            }
            Some(probe) => self.verdict_of(probe, since, timeout, start_timeout, timeout_seconds),
        };
        if let (Some(_), Some(pod)) = (&outcome, squatter) {
            self.deletes.insert(pod.name.clone(), pod.run);
        }
        let Some(outcome) = outcome else {
            return;
        };
        if let Some(p) = current {
            self.deletes.insert(p.name.clone(), p.run);
        }
        // The structured verdict, if the probe wrote one (or the pool's
        // gates need one): judged on a pass, kept on the node either way
        // (`gpufleet why` shows its failed checks).
        let (failures, record) = match (&outcome, current) {
            (Verdict::NotRun(_), _) | (_, None) => (Vec::new(), None),
            (Verdict::Pass, Some(p)) => judge(&self.pool.spec, view, &p.verdict),
            (Verdict::Fail(_), Some(p)) => match &p.verdict {
                Read::Absent => (Vec::new(), None),
                read => judge(&self.pool.spec, view, read),
            },
        };
        let outcome = match outcome {
            Verdict::Pass => match as_failure("probe verdict: ", &failures) {
                Some(failure) => Verdict::Fail(failure),
                None => Verdict::Pass,
            },
            other => other,
        };
        // Nothing else to write on the node: its pass may wait for the
        // write that admits it (`PASS_IN_POD`).
        let quiet = self.members[m].patch.is_none();
        if let Some(record) = record {
            self.patch_of(m)
                .annotations
                .insert(keys::VERDICT, Some(record.to_annotation()));
        }
        match outcome {
            Verdict::Pass => {
                // The soak counts from the probe's finish, not from this
                // plan: the node soaked while the result waited to be read.
                let mut annotations = vec![(keys::REASON, None)];
                if let Some(from) = current.and_then(|p| self.soak_start(m, p)) {
                    annotations.push((keys::SINCE, Some(from.to_string())));
                }
                self.transition(m, NodeState::Soaking, &annotations);
                if quiet
                    && let Some(until) =
                        current.and_then(|p| self.pass_in_pod_until(m, p, probe_spec))
                {
                    self.members[m].pass_in_pod = true;
                    self.passes_in_pod.push((m, until));
                }
                self.check_soaking_or_held(m);
            }
            Verdict::NotRun(why) => self.not_run(m, attempt, &why),
            Verdict::Fail(failure) if attempt <= retries => {
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
                let node = view.name.to_string();
                self.creates.push(ProbeRequest {
                    pod_name: probe_run_pod_name(&node, next, view.probe_misses),
                    node,
                    attempt: next,
                    run: view.started.get(),
                    group: None,
                });
                self.wake_at(later(self.now, start_timeout));
            }
            Verdict::Fail(failure) => self.fail(m, failure),
        }
    }

    /// What this batch's own probe pod for the node's current run says:
    /// nothing yet (`None`: its deadline is noted), a pass, a failure of
    /// the node, or that it never ran.
    fn verdict_of(
        &mut self,
        probe: &ProbeView,
        since: Timestamp,
        timeout: SignedDuration,
        start_timeout: SignedDuration,
        timeout_seconds: u32,
    ) -> Option<Verdict> {
        if probe.evicted {
            // Taken off the node by the kubelet or the scheduler: whatever
            // its containers did, no verdict on the hardware.
            return Some(Verdict::NotRun(format!(
                "its pod was evicted: {}",
                first_lines(probe.message.as_deref().unwrap_or("no reason given"))
            )));
        }
        if let Some(failed) = probe.failed_container() {
            // Any container, init or regular, that exited non-zero fails
            // the probe at once, even while others still run.
            return Some(Verdict::Fail(Failure::new(
                FailureCategory::ProbeFailed,
                container_failure_message(probe, failed),
            )));
        }
        if probe.phase == ProbePhase::Failed {
            return Some(match probe.started_at {
                // Refused by the kubelet (admission, resources) before any
                // container ran: the infrastructure, not the node's GPUs.
                None => Verdict::NotRun(format!(
                    "its pod failed before it ran: {}",
                    first_lines(probe.message.as_deref().unwrap_or("no reason given"))
                )),
                Some(_) => Verdict::Fail(Failure::new(
                    FailureCategory::ProbeFailed,
                    probe_failure_message(probe.message.as_deref()),
                )),
            });
        }
        if probe.phase == ProbePhase::Succeeded && probe.all_exited_zero() {
            // Passed only when the pod is done and every container ended
            // with 0: one container finishing early (a quick inventory
            // beside a long burn-in) is not a verdict.
            return Some(Verdict::Pass);
        }
        let Some(started) = probe.started_at else {
            // Not running yet: unscheduled, pulling its image, waiting on
            // the kubelet. Its start has a deadline of its own.
            let deadline = later(probe.created.unwrap_or(since).max(since), start_timeout);
            if self.now < deadline {
                self.wake_at(deadline);
                return None;
            }
            let seconds = start_timeout.as_secs();
            return Some(Verdict::NotRun(match probe.not_running.as_deref() {
                Some(why) => format!(
                    "its pod did not start within {seconds}s: {}",
                    first_lines(why)
                ),
                None => format!("its pod did not start within {seconds}s"),
            }));
        };
        // The run's deadline counts from when the pod began to run: a pod
        // kept waiting by a busy API server or kubelet is not a slow GPU.
        let deadline = later(started.max(since), timeout);
        if self.now < deadline {
            self.wake_at(deadline);
            return None;
        }
        let message = if probe.phase == ProbePhase::Succeeded {
            format!(
                "probe timed out after {timeout_seconds}s: its pod succeeded, but not every container reported exit 0"
            )
        } else {
            format!("probe timed out after {timeout_seconds}s")
        };
        Some(Verdict::Fail(Failure::new(
            FailureCategory::ProbeTimeout,
            message,
        )))
    }

    /// Member `m`'s probe run never ran: not a failure of the node. The
    /// run is counted on the node and made again (a new run, so a pod left
    /// from this one is no verdict for the next); once a node has counted
    /// the pool's `notStartedLimit`, the batch halts (see [`Self::gate`]).
    fn not_run(&mut self, m: usize, attempt: u32, why: &str) {
        let Some(probe) = self.pool.spec.health_checks.probe.as_ref() else {
            return;
        };
        let (limit, start_timeout) = (probe.not_started_limit(), probe.start_timeout());
        let misses = self.members[m].view.probe_misses.saturating_add(1);
        let mut reason = format!(
            "probe attempt {attempt} did not run ({misses} of {limit} allowed): {why}; not a failure of the node; trying again"
        );
        if misses >= limit {
            reason.push_str("; the batch starts no new node until probes run");
        }
        let node = self.members[m].view.name.to_string();
        self.transition(
            m,
            NodeState::Validating,
            &[
                (keys::PROBE_MISSES, Some(misses.to_string())),
                (keys::STARTED, Some(self.stamp())),
                (keys::REASON, Some(reason.clone())),
            ],
        );
        self.creates.push(ProbeRequest {
            pod_name: probe_run_pod_name(&node, attempt, misses),
            node: node.clone(),
            attempt,
            run: Some(self.now),
            group: None,
        });
        self.event(
            EventTarget::Node(node),
            true,
            EventReason::ProbeNotRun,
            reason,
        );
        self.wake_at(later(
            self.now,
            SignedDuration::from_secs(i64::from(start_timeout)),
        ));
    }

    /// When the soak of member `m`, whose probe `p` passed, starts: `p`'s
    /// finish (its containers' latest `finishedAt`), never before the node
    /// started validating; `None` (from now) when the pod says no finish,
    /// or one ahead of gpufleet's clock (a kubelet's clock may differ; a
    /// soak never counts from the future).
    fn soak_start(&self, m: usize, p: &ProbeView) -> Option<Timestamp> {
        let finished = p.finished_at.filter(|f| *f <= self.now)?;
        Some(finished.max(self.since(m)))
    }

    /// Did this batch make `p` for `view`'s current run (its node, its
    /// `gpufleet.io/started`)? Only such a pod is a verdict on the node.
    pub(super) fn made_for_run(&self, p: &ProbeView, view: &super::NodeView) -> bool {
        p.made_by(self.batch.metadata.uid.as_deref())
            && p.node == view.name
            && p.run == view.started.get()
    }

    /// Until when the pass of member `m`'s probe `p` may stay unwritten
    /// ([`PASS_IN_POD`] from its finish), if it may: the pool's soak is
    /// no longer than that (so that admission can record it), no rack test
    /// follows, no member of its domain waits to start, and the time is up
    /// before either of the probe's deadlines: its run's (from when the
    /// pod began to run) and its start's (from the node's start). A pod
    /// cache behind the last plan's may show the pod running, not started
    /// or missing; before a deadline, that fails nothing.
    fn pass_in_pod_until(
        &self,
        m: usize,
        p: &ProbeView,
        probe: &crate::api::Probe,
    ) -> Option<Timestamp> {
        let checks = &self.pool.spec.health_checks;
        let window = PASS_IN_POD;
        if i64::from(checks.soak_seconds) > window.as_secs() || checks.domain_test.is_some() {
            return None;
        }
        // Every other member of its domain already started: admission
        // waits only for checks that run. A member still pending may need
        // this node's slot to start, and would wait for the 30 s.
        let d = self.domains.partition_point(|d| d.members.end <= m);
        let domain = &self.domains.get(d)?.members;
        if domain
            .clone()
            .any(|o| self.members[o].state == NodeState::Pending)
        {
            return None;
        }
        let until = later(p.finished_at?, window);
        let since = self.members[m].view.since.get()?;
        let seconds = |s: u32| SignedDuration::from_secs(i64::from(s));
        // The run's deadline (from when the pod began to run), and the
        // deadline of a pod missing or not yet started (from the start).
        let run = later(p.started_at?.max(since), seconds(probe.timeout_seconds));
        let start = later(since, seconds(probe.start_timeout()));
        (self.now < until && until <= run.min(start)).then_some(until)
    }

    /// Probes that belong to no node in validation: read already, stale
    /// attempts, or nodes that left the batch.
    pub(super) fn delete_stray_probes(&mut self) {
        let wanted: BTreeSet<String> = self
            .members
            .iter()
            .filter(|m| m.state == NodeState::Validating)
            .map(|m| awaited_probe(m.view))
            .chain(self.creates.iter().map(|c| c.pod_name.clone()))
            .collect();
        for probe in &self.snapshot.probes {
            // Rack test pods are the rack test's own (`racktest.rs`).
            if !probe.deleting && probe.group.is_none() && !wanted.contains(&probe.name) {
                self.deletes.insert(probe.name.clone(), probe.run);
            }
        }
    }
}

/// What a probe run came to.
enum Verdict {
    /// It passed.
    Pass,
    /// It ran and failed, or overran: evidence against the node.
    Fail(Failure),
    /// It never ran (never created, never started, evicted), in words: no
    /// evidence either way.
    NotRun(String),
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
    // A verdict says what failed better than its JSON would.
    if let Read::Valid(verdict) = &probe.verdict {
        let failed: Vec<String> = verdict
            .failed()
            .map(|c| {
                format!(
                    "check {} failed: {}",
                    crate::verdict::clip(&c.name, 32),
                    c.reason.as_deref().unwrap_or("no reason given")
                )
            })
            .collect();
        if !failed.is_empty() {
            return crate::verdict::clip(&format!("{code}: {}", failed.join("; ")), 600);
        }
    }
    if let Read::Invalid(why) = &probe.verdict {
        return format!("{code}: {}", first_lines(why));
    }
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
