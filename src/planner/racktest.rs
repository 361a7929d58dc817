//! The rack test (`healthChecks.domainTest`): before a domain whose trays
//! all passed their own checks is admitted, one test runs over its healthy
//! trays at once (a group: one pod per tray). A domain is admitted only when
//! its group passes.
//!
//! When it fails, attribution finds the faulty trays: a failed group of four
//! or more is tested again as two halves; the trays of a failed group of
//! three or fewer are suspects, each tested beside a known-good tray (a tray
//! of a group that passed); a suspect whose pair fails is faulty. Each round
//! runs its groups at once (never two on one tray). Exactly the faulty trays
//! fail; the rest are admitted if the domain keeps enough healthy trays.
//! When no group ever passes (no tray is known good), the fault is the rack
//! itself: every tray fails with that reason. After `maxRounds` rounds the
//! trays still suspect fail, and the reason says the cap was hit.
//!
//! Nothing is stored but the pods: every plan replays the rounds from the
//! groups' pods, named after a hash of their members (each with when its
//! run began), so a restarted operator picks up where it was, and a
//! change of the domain's trays starts a new test. A domain's pods go once
//! it is decided.

use k8s_openapi::jiff::SignedDuration;

use crate::api::DomainTest;
use crate::keys;

use k8s_openapi::jiff::Timestamp;

use super::health::{Failure, FailureCategory};
use super::snapshot::{CertOutcome, ProbePhase, later};
use super::state::Planner;
use super::{GroupMember, ProbeRequest};

/// The name prefix of rack test pods.
pub const GROUP_POD_PREFIX: &str = "gpufleet-group-";

/// The pod of rank `rank` of run `run` of group `key` (a group whose pods
/// never ran is made again as the next run).
pub fn group_pod_name(key: &str, run: u32, rank: usize) -> String {
    format!("{GROUP_POD_PREFIX}{key}-{run}-{rank}")
}

/// The run a rack test pod's name says, if it is one.
fn run_of(name: &str) -> Option<u32> {
    let rest = name.strip_prefix(GROUP_POD_PREFIX)?;
    let mut parts = rest.split('-');
    let (_key, run) = (parts.next()?, parts.next()?);
    run.parse().ok()
}

/// The Certification of run `run` of group `key` (NVCRE provider).
pub fn group_cert_name(key: &str, run: u32) -> String {
    format!("{GROUP_POD_PREFIX}{key}-{run}")
}

/// What one group's test came to.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Result {
    Running,
    Passed,
    /// Failed: why, and the trays the test itself blamed with its words
    /// (none: the group as a whole failed).
    Failed {
        why: String,
        blamed: Vec<(usize, String)>,
    },
}

impl Result {
    fn failed(why: String) -> Self {
        Result::Failed {
            why,
            blamed: Vec::new(),
        }
    }
}

/// One test of a round.
#[derive(Clone, Debug)]
enum Test {
    /// A group of suspects (the whole domain in round 0).
    Group(Vec<usize>),
    /// A suspect beside a known-good tray.
    Confirm { suspect: usize, beside: usize },
}

impl Test {
    fn members(&self) -> Vec<usize> {
        match self {
            Test::Group(g) => g.clone(),
            Test::Confirm { suspect, beside } => vec![*suspect, *beside],
        }
    }
}

/// Where a domain's rack test stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum RackTest {
    /// Groups are running (or waiting for room under the caps): `round`
    /// (0 the whole domain), trays under test.
    Running { round: u32, testing: u32 },
    /// Decided: the faulty trays with why, and the trays proven good.
    Done {
        faulty: Vec<(usize, String)>,
        good: Vec<usize>,
    },
    /// Every group failed: the rack itself.
    RackFailed(String),
}

impl Planner<'_> {
    /// Trays this batch has under a rack test right now: the group pods
    /// not finished (counted against the concurrency caps like trays in
    /// validation), plus those this plan asks for.
    pub(super) fn rack_testing(&self) -> u32 {
        let running = self
            .snapshot
            .probes
            .iter()
            .filter(|p| {
                p.group.is_some()
                    && !p.deleting
                    && !matches!(p.phase, ProbePhase::Succeeded | ProbePhase::Failed)
            })
            .count();
        let asked = self.creates.iter().filter(|c| c.group.is_some()).count();
        let certs: usize = self
            .snapshot
            .certifications
            .iter()
            .filter(|c| !c.deleting && c.outcome == super::CertOutcome::Running)
            .map(|c| c.size as usize)
            .sum::<usize>()
            + self
                .cert_creates
                .iter()
                .map(|c| c.nodes.len())
                .sum::<usize>();
        (running + asked + certs) as u32
    }

    /// Trays whose rack test began after `since` (group pods and
    /// Certifications created then, and those this plan asks for), and
    /// the earliest such beginning: the power ramp counts them.
    pub(super) fn rack_started_since(&self, since: Timestamp) -> (u32, Option<Timestamp>) {
        let pods = self
            .snapshot
            .probes
            .iter()
            .filter(|p| p.group.is_some() && !p.deleting)
            .filter_map(|p| p.created.filter(|c| *c > since).map(|c| (1, c)));
        let certs = self
            .snapshot
            .certifications
            .iter()
            .filter(|c| !c.deleting)
            .filter_map(|c| c.created.filter(|t| *t > since).map(|t| (c.size, t)));
        let (mut trays, mut earliest) = (0u32, None);
        for (n, at) in pods.chain(certs) {
            trays = trays.saturating_add(n);
            earliest = Some(earliest.map_or(at, |e: Timestamp| e.min(at)));
        }
        let asked = self.creates.iter().filter(|c| c.group.is_some()).count()
            + self
                .cert_creates
                .iter()
                .map(|c| c.nodes.len())
                .sum::<usize>();
        if asked > 0 {
            trays = trays.saturating_add(asked as u32);
            earliest = Some(earliest.map_or(self.now, |e: Timestamp| e.min(self.now)));
        }
        (trays, earliest)
    }

    /// Tray-hours under a rack test between `from` and now, by the wave of
    /// the domain tested: each group pod from its start (or creation) to
    /// its end (or now); each of this batch's Certifications still there
    /// from its creation to now, all its trays (NVCRE does not say when it
    /// finished; the plan that reads it finished deletes it). A group this
    /// plan did not look at counts for `fallback`.
    pub(super) fn rack_test_hours(&self, from: Timestamp, fallback: usize) -> Vec<(usize, f64)> {
        let hours = |start: Option<Timestamp>, end: Timestamp| {
            let start = start.map_or(from, |s| s.max(from));
            end.min(self.now)
                .duration_since(start)
                .as_secs_f64()
                .max(0.0)
                / 3600.0
        };
        let wave = |group: &str| self.group_waves.get(group).copied().unwrap_or(fallback);
        let pods = self.snapshot.probes.iter().filter_map(|p| {
            let group = p.group.as_deref()?;
            Some((
                wave(group),
                hours(
                    p.started_at.or(p.created),
                    p.finished_at.unwrap_or(self.now),
                ),
            ))
        });
        let certs = self
            .snapshot
            .certifications
            .iter()
            .filter(|c| c.batch_uid == self.batch.metadata.uid)
            .map(|c| {
                (
                    c.group.as_deref().map_or(fallback, wave),
                    f64::from(c.size) * hours(c.created, self.now),
                )
            });
        pods.chain(certs).filter(|(_, h)| *h > 0.0).collect()
    }

    /// The rack test of a domain whose `passed` trays are ready for it.
    /// `room`: trays a new round may still occupy under the caps.
    pub(super) fn rack_test(&mut self, spec: &DomainTest, passed: &[usize], room: u32) -> RackTest {
        let mut sorted = passed.to_vec();
        sorted.sort_by(|a, b| self.members[*a].view.name.cmp(&self.members[*b].view.name));
        let cap = spec.rounds();
        let mut good: Vec<usize> = Vec::new();
        let mut faulty: Vec<(usize, String)> = Vec::new();
        let mut suspects: Vec<usize> = Vec::new();
        let mut frontier = vec![Test::Group(sorted.clone())];
        let mut first_failure = String::new();
        let mut keys_seen: Vec<String> = Vec::new();
        let mut round = 0u32;
        loop {
            // A round that has not begun waits for room for all its trays.
            let trays: u32 = frontier.iter().map(|t| t.members().len() as u32).sum();
            let begun = frontier
                .iter()
                .any(|t| self.group_began(&self.group_key(&t.members())));
            if !begun && trays > room {
                let cap = self.concurrency_cap();
                if trays > cap {
                    self.rack_too_big = Some(format!(
                        "a rack test round needs {trays} trays at once and maxConcurrent (the lower of the pool's and the batch's) is {cap}: raise it to at least the domain's size"
                    ));
                } else if trays > self.rack_power_room() {
                    self.rack_waits_for_power(trays);
                }
                self.groups_wanted.extend(keys_seen);
                return RackTest::Running { round, testing: 0 };
            }
            let mut results = Vec::new();
            for test in &frontier {
                let members = test.members();
                let key = self.group_key(&members);
                if let Some(&m) = members.first() {
                    self.group_waves.insert(key.clone(), self.members[m].wave);
                }
                keys_seen.push(key.clone());
                results.push(self.group_result(spec, &key, &members));
            }
            if results.contains(&Result::Running) {
                self.groups_wanted.extend(keys_seen);
                return RackTest::Running {
                    round,
                    testing: trays,
                };
            }
            let mut next: Vec<Test> = Vec::new();
            for (test, result) in frontier.iter().zip(results) {
                // The test named the trays at fault (an NVCRE failed node,
                // say): those fail with its words, never a tray proven good,
                // and the rest of the group is tested again without them.
                let result = match result {
                    Result::Failed { why, blamed } => {
                        let blamed: Vec<_> = blamed
                            .into_iter()
                            .filter(|(m, _)| !good.contains(m))
                            .collect();
                        let members = test.members();
                        let named_trays: Vec<usize> = blamed.iter().map(|(b, _)| *b).collect();
                        let named = |m: &usize| named_trays.contains(m);
                        let suspect = match test {
                            Test::Group(_) => None,
                            Test::Confirm { suspect, .. } => Some(*suspect),
                        };
                        let names_part = !blamed.is_empty()
                            && members.iter().any(|m| !named(m))
                            && suspect.is_none_or(|s| named(&s));
                        if names_part {
                            if first_failure.is_empty() {
                                first_failure = why;
                            }
                            for (m, words) in blamed {
                                faulty.push((
                                    m,
                                    format!("rack test (attribution round {round}): {words}"),
                                ));
                            }
                            let rest: Vec<usize> = match test {
                                Test::Group(g) => g.iter().copied().filter(|m| !named(m)).collect(),
                                Test::Confirm { .. } => Vec::new(),
                            };
                            if !rest.is_empty() {
                                next.push(Test::Group(rest));
                            }
                            continue;
                        }
                        Result::failed(why)
                    }
                    other => other,
                };
                match (test, result) {
                    (Test::Group(g), Result::Passed) => good.extend(g),
                    (Test::Confirm { suspect, .. }, Result::Passed) => good.push(*suspect),
                    (Test::Confirm { suspect, beside }, Result::Failed { why, .. }) => {
                        let name = &self.members[*beside].view.name;
                        faulty.push((
                            *suspect,
                            format!(
                                "rack test: this tray failed beside known-good tray {name} (attribution round {round}): {why}"
                            ),
                        ));
                    }
                    (Test::Group(g), Result::Failed { why, .. }) => {
                        if first_failure.is_empty() {
                            first_failure = why;
                        }
                        if g.len() >= 4 {
                            let (a, b) = g.split_at(g.len() / 2);
                            next.push(Test::Group(a.to_vec()));
                            next.push(Test::Group(b.to_vec()));
                        } else {
                            suspects.extend(g);
                        }
                    }
                    (_, Result::Running) => {}
                }
            }
            if round == 0 && suspects.is_empty() && next.is_empty() && faulty.is_empty() {
                return RackTest::Done {
                    faulty: Vec::new(),
                    good: sorted,
                };
            }
            if next.is_empty() && !suspects.is_empty() && good.is_empty() {
                return RackTest::RackFailed(format!(
                    "rack test failed in every group tried ({} rounds, no tray passed in any group): a fault of the rack itself (an NVLink switch tray, a cable cartridge), not of one tray; send the rack back. First failure: {first_failure}",
                    round + 1
                ));
            }
            // Each suspect beside its own known-good tray; more suspects
            // than good trays wait for the next round.
            let mut waiting = Vec::new();
            for (i, s) in suspects.drain(..).enumerate() {
                match good.get(i) {
                    Some(&beside) => next.push(Test::Confirm { suspect: s, beside }),
                    None => waiting.push(s),
                }
            }
            suspects = waiting;
            if next.is_empty() {
                return RackTest::Done { faulty, good };
            }
            round += 1;
            if round > cap {
                for test in &next {
                    let suspect = match test {
                        Test::Group(g) => g.clone(),
                        Test::Confirm { suspect, .. } => vec![*suspect],
                    };
                    for s in suspect {
                        faulty.push((
                            s,
                            format!(
                                "rack test failed and attribution stopped at its cap of {cap} rounds (healthChecks.domainTest.maxRounds) with this tray still suspect; raise the cap or test the rack by hand. First failure: {first_failure}"
                            ),
                        ));
                    }
                }
                for s in suspects.drain(..) {
                    faulty.push((
                        s,
                        format!(
                            "rack test failed and attribution stopped at its cap of {cap} rounds with this tray still suspect"
                        ),
                    ));
                }
                return RackTest::Done { faulty, good };
            }
            frontier = next;
        }
    }

    /// A group's name: a hash of the batch, its trays and when each began
    /// its run (`gpufleet.io/started`: a tray retried since is a new group).
    fn group_key(&self, members: &[usize]) -> String {
        let mut text = self.batch.metadata.uid.clone().unwrap_or_default();
        for &m in members {
            let view = self.members[m].view;
            text.push('\n');
            text.push_str(&view.name);
            text.push('@');
            // As this plan leaves it: a node started in this very plan.
            let written = self.members[m]
                .patch
                .as_ref()
                .and_then(|p| p.annotations.get(keys::STARTED).cloned());
            match written {
                Some(value) => text.push_str(value.as_deref().unwrap_or_default()),
                None => {
                    if let Some(started) = view.started.get() {
                        text.push_str(&started.to_string());
                    }
                }
            }
        }
        format!("{:016x}", keys::stable_hash(text.as_bytes()))
    }

    /// Has any pod or Certification of group `key` been made, or asked for
    /// by this plan?
    fn group_began(&self, key: &str) -> bool {
        self.snapshot
            .probes
            .iter()
            .any(|p| p.group.as_deref() == Some(key))
            || self
                .creates
                .iter()
                .any(|c| c.group.as_ref().is_some_and(|g| g.group == key))
            || self
                .snapshot
                .certifications
                .iter()
                .any(|c| c.group.as_deref() == Some(key))
            || self.cert_creates.iter().any(|c| c.group == key)
    }

    /// The runs of group `key` that have live pods or Certifications.
    fn group_runs(&self, key: &str) -> std::collections::BTreeSet<u32> {
        let pods = self
            .snapshot
            .probes
            .iter()
            .filter(|p| p.group.as_deref() == Some(key) && !p.deleting)
            .filter_map(|p| run_of(&p.name));
        let certs = self
            .snapshot
            .certifications
            .iter()
            .filter(|c| c.group.as_deref() == Some(key) && !c.deleting)
            .filter_map(|c| run_of(&c.name));
        pods.chain(certs).collect()
    }

    /// The run of group `key` its live pods (or Certification) are at (0
    /// before any).
    fn group_run(&self, key: &str) -> u32 {
        self.group_runs(key).last().copied().unwrap_or(0)
    }

    /// What group `key` of `members` came to when NVCRE runs the test: its
    /// Certification is asked for if missing; the nodes it failed are
    /// blamed with its reasons. A Certification that names every node of
    /// the group is a failure of the group (NVCRE's intra-rack scale does
    /// not bisect); one that failed naming none, or whose failed nodes
    /// cannot be read, blames nobody and halts the batch.
    fn nvcre_result(&mut self, spec: &DomainTest, key: &str, members: &[usize]) -> Result {
        let uid = self.batch.metadata.uid.as_deref();
        let name = group_cert_name(key, self.group_run(key));
        let timeout = SignedDuration::from_secs(i64::from(spec.timeout()));
        let cert = self
            .snapshot
            .certifications
            .iter()
            .find(|c| c.name == name && !c.deleting && c.made_by(uid));
        let Some(cert) = cert else {
            // Someone else's object at the name is never taken for ours.
            if !self.snapshot.certifications.iter().any(|c| c.name == name) {
                self.ask_certification(key, self.group_run(key), members);
            } else {
                self.rack_unreadable.get_or_insert(format!(
                    "a Certification named {name} that this batch did not make is in the way of a rack test; delete it"
                ));
            }
            self.wake_at(later(self.now, timeout));
            return Result::Running;
        };
        match &cert.outcome {
            CertOutcome::Running => {
                let deadline = later(cert.created.unwrap_or(self.now), timeout);
                if self.now >= deadline {
                    return Result::failed(format!(
                        "NVCRE's certification {name} did not finish within {}s",
                        spec.timeout()
                    ));
                }
                self.wake_at(deadline);
                Result::Running
            }
            CertOutcome::Unreadable(why) => {
                self.rack_unreadable.get_or_insert(format!(
                    "NVCRE's certification {name} finished but its failed nodes cannot be read: {}",
                    crate::verdict::clip(why, 200)
                ));
                Result::Running
            }
            CertOutcome::Finished {
                passed,
                failed,
                message,
            } => {
                let blamed: Vec<(usize, String)> = failed
                    .iter()
                    .filter_map(|f| {
                        let m = members
                            .iter()
                            .copied()
                            .find(|&m| self.members[m].view.name == f.name)?;
                        let reason = crate::verdict::clip(&f.reason, 64);
                        let words =
                            crate::verdict::clip(f.message.lines().next().unwrap_or(""), 200);
                        Some((m, format!("NVCRE {name}: {reason}: {words}")))
                    })
                    .collect();
                if *passed && blamed.is_empty() {
                    return Result::Passed;
                }
                if blamed.is_empty() {
                    self.rack_unreadable.get_or_insert(format!(
                        "NVCRE's certification {name} failed without naming a node of its group: {}",
                        crate::verdict::clip(message, 200)
                    ));
                    return Result::Running;
                }
                let why = blamed[0].1.clone();
                if blamed.len() == members.len() {
                    return Result::failed(why);
                }
                Result::Failed { why, blamed }
            }
        }
    }

    /// What group `key` of `members` (in rank order) came to; its missing
    /// pods are asked for.
    fn group_result(&mut self, spec: &DomainTest, key: &str, members: &[usize]) -> Result {
        let result = if spec.nvcre.is_some() {
            self.nvcre_result(spec, key, members)
        } else {
            self.pods_result(spec, key, members)
        };
        // A failed run is tried again (`retries`) before it counts: the
        // next run is asked for, the failed one kept (it counts the tries).
        if matches!(result, Result::Failed { .. }) && self.group_retried(key) < spec.retries() {
            let run = self.group_run(key) + 1;
            if spec.nvcre.is_some() {
                self.ask_certification(key, run, members);
            } else {
                let ranks: Vec<usize> = (0..members.len()).collect();
                self.ask_group_pods(key, run, members, &ranks);
            }
            return Result::Running;
        }
        result
    }

    /// What group `key` came to when gpufleet runs its pods.
    fn pods_result(&mut self, spec: &DomainTest, key: &str, members: &[usize]) -> Result {
        let uid = self.batch.metadata.uid.as_deref();
        let mut run = self.group_run(key);
        let pods: Vec<_> = (0..members.len())
            .map(|rank| {
                self.probe_named
                    .get(group_pod_name(key, run, rank).as_str())
                    .copied()
                    .filter(|p| !p.deleting && p.made_by(uid))
            })
            .collect();
        // A group whose pods never ran (evicted, refused by the kubelet, not
        // running by the start deadline) is no evidence against its trays:
        // its pods are made again, nobody is blamed, and the batch says why
        // (Stalled, ProbesNotRunning) until they run.
        let start_timeout = self
            .pool
            .spec
            .health_checks
            .probe
            .as_ref()
            .map_or(600, |p| p.start_timeout());
        let start_deadline = SignedDuration::from_secs(i64::from(start_timeout));
        let mut not_run = None;
        for (rank, pod) in pods.iter().enumerate() {
            let Some(pod) = pod else { continue };
            let node = &self.members[members[rank]].view.name;
            let never_ran =
                pod.evicted || (pod.phase == ProbePhase::Failed && pod.started_at.is_none());
            let late = pod.started_at.is_none()
                && pod
                    .created
                    .is_some_and(|c| self.now >= later(c, start_deadline));
            if never_ran || late {
                let why = pod
                    .not_running
                    .as_deref()
                    .or(pod.message.as_deref())
                    .unwrap_or("no reason given");
                not_run = Some((
                    node.to_string(),
                    format!(
                        "its rack test pod did not run (evicted, refused, or not running within {start_timeout}s): {}",
                        crate::verdict::clip(why, 200)
                    ),
                ));
                break;
            }
        }
        let limit = self
            .pool
            .spec
            .health_checks
            .probe
            .as_ref()
            .map_or(3, |p| p.not_started_limit());
        let mut pods = pods;
        // Runs that failed and were tried again are not runs that never ran.
        let kept = self.group_retried(key);
        if let Some((node, why)) = not_run {
            // Made again as the next run, at once.
            for pod in pods.iter().flatten() {
                self.deletes.insert(pod.name.clone(), pod.run);
            }
            run += 1;
            pods = vec![None; members.len()];
            if run.saturating_sub(kept) >= limit {
                self.rack_not_run
                    .get_or_insert((node, format!("{why} ({run} runs so far)")));
            }
        } else if run.saturating_sub(kept) >= limit
            && pods
                .iter()
                .any(|p| p.is_none_or(|p| p.started_at.is_none()))
        {
            // Still waiting for a run after too many never ran.
            let (node, why) = pods
                .iter()
                .enumerate()
                .find_map(|(rank, p)| {
                    let p = (*p)?;
                    Some((
                        self.members[members[rank]].view.name.to_string(),
                        p.not_running.clone()?,
                    ))
                })
                .unwrap_or_else(|| {
                    (
                        self.members[members[0]].view.name.to_string(),
                        "not running yet".into(),
                    )
                });
            self.rack_not_run.get_or_insert((
                node,
                format!(
                    "its rack test pods did not run {run} times; now: {}",
                    crate::verdict::clip(&why, 200)
                ),
            ));
        }
        // What the pods' verdicts say: the bandwidth measured, and the
        // trays they blame.
        let mut blamed: Vec<(usize, String)> = Vec::new();
        for pod in pods.iter().flatten() {
            let crate::verdict::Read::Valid(verdict) = &pod.verdict else {
                continue;
            };
            let Some(result) = &verdict.rack_test else {
                continue;
            };
            if let Some(bw) = result.bus_bandwidth_gbps {
                self.rack_figure = Some(self.rack_figure.map_or(bw, |f: u32| f.min(bw)));
            }
            for name in &result.blame {
                let Some(&m) = members.iter().find(|&&m| self.members[m].view.name == name) else {
                    continue;
                };
                if blamed.iter().all(|(b, _)| *b != m) {
                    let measured = match (result.bus_bandwidth_gbps, result.floor_gbps) {
                        (Some(bw), Some(floor)) => format!(": {bw} GB/s, floor {floor} GB/s"),
                        (Some(bw), None) => format!(": {bw} GB/s"),
                        _ => String::new(),
                    };
                    blamed.push((
                        m,
                        format!(
                            "the rack test's pod on {} blamed this tray{measured}",
                            pod.node
                        ),
                    ));
                }
            }
        }
        let failed_with =
            |why: String, blamed: Vec<(usize, String)>| Result::Failed { why, blamed };
        for (rank, pod) in pods.iter().enumerate() {
            let Some(pod) = pod else { continue };
            let node = &self.members[members[rank]].view.name;
            if let Some(failed) = pod.failed_container() {
                // A verdict's failed check says it in words; else the
                // message's first line.
                let checked = match &pod.verdict {
                    crate::verdict::Read::Valid(v) => v.failed().next().map(|c| {
                        format!("{}: {}", c.name, c.reason.as_deref().unwrap_or("failed"))
                    }),
                    _ => None,
                };
                let words = checked
                    .as_deref()
                    .or(failed.message.as_deref())
                    .unwrap_or("no message");
                return failed_with(
                    format!(
                        "its pod on {node} exited {}: {}",
                        failed.exit_code,
                        crate::verdict::clip(words.lines().next().unwrap_or(""), 200)
                    ),
                    blamed,
                );
            }
            if pod.phase == ProbePhase::Failed {
                return failed_with(
                    format!(
                        "its pod on {node} failed: {}",
                        pod.message.as_deref().unwrap_or("no reason given")
                    ),
                    blamed,
                );
            }
        }
        if pods
            .iter()
            .all(|p| p.is_some_and(|p| p.phase == ProbePhase::Succeeded && p.all_exited_zero()))
        {
            return Result::Passed;
        }
        // The run's deadline counts from when its last pod began to run: a
        // group waiting for its pods to start is not a slow rack.
        let timeout = SignedDuration::from_secs(i64::from(spec.timeout()));
        let all_started = pods
            .iter()
            .all(|p| p.is_some_and(|p| p.started_at.is_some()));
        let started = pods.iter().flatten().filter_map(|p| p.started_at).max();
        if let (true, Some(started)) = (all_started, started) {
            let deadline = later(started, timeout);
            if self.now >= deadline {
                return Result::failed(format!(
                    "the group's test did not finish within {}s",
                    spec.timeout()
                ));
            }
            self.wake_at(deadline);
        } else {
            self.wake_at(later(self.now, start_deadline));
        }
        let missing: Vec<usize> = (0..pods.len()).filter(|&r| pods[r].is_none()).collect();
        self.ask_group_pods(key, run, members, &missing);
        Result::Running
    }

    /// Asks for the Certification of run `run` of group `key`.
    fn ask_certification(&mut self, key: &str, run: u32, members: &[usize]) {
        self.cert_creates.push(super::CertRequest {
            name: group_cert_name(key, run),
            group: key.to_string(),
            nodes: members
                .iter()
                .map(|&m| self.members[m].view.name.to_string())
                .collect(),
        });
    }

    /// Asks for the pods of run `run` of group `key` at these ranks.
    fn ask_group_pods(&mut self, key: &str, run: u32, members: &[usize], ranks: &[usize]) {
        let peers: Vec<String> = (0..members.len())
            .map(|r| group_pod_name(key, run, r))
            .collect();
        let peer_nodes: Vec<String> = members
            .iter()
            .map(|&m| self.members[m].view.name.to_string())
            .collect();
        for &rank in ranks {
            self.creates.push(ProbeRequest {
                pod_name: peers[rank].clone(),
                node: peer_nodes[rank].clone(),
                attempt: 0,
                run: None,
                group: Some(GroupMember {
                    group: key.to_string(),
                    rank: rank as u32,
                    peers: peers.clone(),
                    peer_nodes: peer_nodes.clone(),
                }),
            });
        }
    }

    /// Runs of group `key` that failed and were tried again: their pods
    /// (or Certifications) are kept until the domain is decided, so they
    /// count the retries.
    fn group_retried(&self, key: &str) -> u32 {
        self.group_runs(key).len().saturating_sub(1) as u32
    }

    /// Fails a tray the rack test found faulty.
    pub(super) fn fail_faulty(&mut self, m: usize, why: String) {
        self.fail(m, Failure::new(FailureCategory::RackTestFailed, why));
    }

    /// Rack test pods and Certifications no domain's test wants any more:
    /// deleted (only this batch's).
    pub(super) fn delete_stray_groups(&mut self) {
        let uid = self.batch.metadata.uid.as_deref();
        for cert in &self.snapshot.certifications {
            let Some(group) = cert.group.as_deref() else {
                continue;
            };
            if !cert.deleting && cert.made_by(uid) && !self.groups_wanted.contains(group) {
                self.cert_deletes.insert(cert.name.clone());
            }
        }
        for probe in &self.snapshot.probes {
            let Some(group) = probe.group.as_deref() else {
                continue;
            };
            if !probe.deleting && !self.groups_wanted.contains(group) {
                self.deletes.insert(probe.name.clone(), probe.run);
            }
        }
    }
}
