//! What a FleetRollout does next, as a pure function of its spec, the
//! member clusters in the inventory and what was seen of each: which member
//! batches to approve, and the status to write. The controller reads and
//! writes; this decides, so every rule is tested without a cluster.
//!
//! The rules, in order (the first that applies decides):
//! 1. the stages must resolve: every cluster named has a ClusterProfile,
//!    every stage has a cluster, no cluster is in two stages;
//! 2. every member has usable credentials;
//! 3. every member reached has the batch;
//! 4. no more than `maxFailedClusters` members failed (batch Stalled, or its
//!    pool's breaker tripped), else the fleet halts naming them;
//! 5. every member answered this look, else the fleet waits for it;
//! 6. not paused;
//! 7. the first stage not done (every member Ready, or failed within the
//!    tolerance) gets approvals, at most `maxClustersInFlight` members
//!    rolling at once.
//!
//! Rules 1 to 6 approve nothing anywhere: a bad spec, a missing batch or an
//! unreachable member never lets a later stage start.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector, Time};
use k8s_openapi::jiff::Timestamp;

use crate::api::{
    FleetApproval, FleetClusterStatus, FleetMode, FleetRolloutSpec, FleetRolloutStatus,
};
use crate::planner::{condition, matches as selects};
use crate::vocabulary::{ConditionType, Reason};

/// A member cluster of the inventory: its ClusterProfile's name and labels.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    pub name: String,
    pub labels: BTreeMap<String, String>,
}

/// What one look at a member found.
#[derive(Clone, Debug, PartialEq)]
pub enum Seen {
    /// The member answered; its batch as read.
    Batch(MemberBatch),
    /// The member answered; it has no batch of that name.
    NoBatch,
    /// The member did not answer within the deadline (or refused).
    Unreachable(String),
    /// No usable credentials: no access provider gpufleet is configured
    /// with, or the provider's plugin failed.
    NoCredentials(String),
}

/// The member batch, as the fleet reads it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct MemberBatch {
    /// `spec.approvedWaves` (None: every wave may start).
    pub approved_waves: Option<u32>,
    /// `spec.waves`' length.
    pub total_waves: u32,
    /// `status.currentWave`.
    pub current_wave: u32,
    /// Ready=True.
    pub ready: bool,
    /// Stalled=True, with its reason and message; `Paused` and
    /// `WaitingForApproval` are not failures and are left out.
    pub stalled: Option<String>,
    /// The pool's circuit breaker is tripped.
    pub breaker_tripped: bool,
    /// `status.gate.name`.
    pub gate: Option<String>,
}

impl MemberBatch {
    fn failure(&self) -> Option<String> {
        if self.breaker_tripped {
            Some("its pool's circuit breaker tripped".into())
        } else {
            self.stalled.clone()
        }
    }

    /// May start every wave.
    fn fully_approved(&self) -> bool {
        self.approved_waves.is_none_or(|n| n >= self.total_waves)
    }
}

/// The decision: approvals to make (or to report) and the status.
#[derive(Clone, Debug, PartialEq)]
pub struct Decision {
    pub approvals: Vec<FleetApproval>,
    pub status: FleetRolloutStatus,
}

/// Decides one look. `previous` is the status written last (its
/// conditions keep their transition times, its members their `lastSeen`
/// while unreachable); `now` stamps this look.
pub fn decide(
    spec: &FleetRolloutSpec,
    generation: Option<i64>,
    previous: &FleetRolloutStatus,
    members: &[Member],
    seen: &BTreeMap<String, Seen>,
    now: Timestamp,
) -> Decision {
    let total = spec.stages.len() as u32;
    // The status with Ready, Reconciling and Stalled as (status, reason,
    // message) each.
    type Said = (bool, Reason, String);
    let status = |stage: u32,
                  clusters: Vec<FleetClusterStatus>,
                  next: Vec<FleetApproval>,
                  [ready, reconciling, stalled]: [Said; 3]| {
        let cond = |t: ConditionType, (status, reason, message): Said| {
            condition(
                &previous.conditions,
                t,
                status,
                reason,
                message,
                generation,
                now,
            )
        };
        FleetRolloutStatus {
            observed_generation: generation,
            current_stage: stage,
            stage_progress: Some(format!("{stage}/{total}")),
            clusters,
            next,
            conditions: vec![
                cond(ConditionType::Ready, ready),
                cond(ConditionType::Reconciling, reconciling),
                cond(ConditionType::Stalled, stalled),
            ],
        }
    };
    // Halted: nothing approved, waiting on a person.
    let stopped =
        |reason: Reason, message: String, stage: u32, clusters: Vec<FleetClusterStatus>| Decision {
            approvals: vec![],
            status: status(
                stage,
                clusters,
                vec![],
                [
                    (false, reason, message.clone()),
                    (false, reason, String::new()),
                    (true, reason, message),
                ],
            ),
        };

    // 1. The stages.
    let stages = match resolve(spec, members) {
        Ok(stages) => stages,
        Err(message) => return stopped(Reason::InvalidSpec, message, 0, vec![]),
    };
    let stage_of: BTreeMap<&str, u32> = stages
        .iter()
        .enumerate()
        .flat_map(|(i, names)| names.iter().map(move |n| (n.as_str(), i as u32 + 1)))
        .collect();
    let ordered: Vec<&str> = stages.iter().flatten().map(String::as_str).collect();
    let failed: BTreeMap<&str, String> = ordered
        .iter()
        .filter_map(|name| match seen.get(*name) {
            Some(Seen::Batch(b)) => b.failure().map(|f| (*name, f)),
            _ => None,
        })
        .collect();
    let done = |name: &str| match seen.get(name) {
        Some(Seen::Batch(b)) => b.ready || failed.contains_key(name),
        _ => false,
    };
    let current = stages
        .iter()
        .position(|names| !names.iter().all(|n| done(n)))
        .map(|i| i as u32 + 1);

    // Each cluster's line, whatever is decided below.
    let last_seen = |name: &str| {
        previous
            .clusters
            .iter()
            .find(|c| c.name == name)
            .and_then(|c| c.last_seen.clone())
    };
    let mut clusters: Vec<FleetClusterStatus> = ordered
        .iter()
        .map(|name| {
            let stage = stage_of[name];
            let mut line = FleetClusterStatus {
                name: name.to_string(),
                stage,
                ..Default::default()
            };
            match seen.get(*name) {
                Some(Seen::Batch(b)) => {
                    line.approved_waves = b.approved_waves;
                    line.total_waves = b.total_waves;
                    line.current_wave = b.current_wave;
                    line.gate = b.gate.clone();
                    line.last_seen = Some(Time(now));
                    (line.phase, line.message) = if let Some(why) = failed.get(name) {
                        ("Failed".into(), format!("batch {}: {why}", spec.batch))
                    } else if b.ready {
                        ("Ready".into(), format!("batch {} is Ready", spec.batch))
                    } else if b.approved_waves.is_none_or(|n| n > 0) {
                        let message = if current.is_some_and(|c| stage > c) {
                            format!(
                                "approved outside this rollout (approvedWaves {}) before \
                                 its stage {stage}",
                                b.approved_waves
                                    .map_or_else(|| "unset".to_string(), |n| n.to_string())
                            )
                        } else {
                            format!("wave {} of {}", b.current_wave, b.total_waves)
                        };
                        ("Rolling".into(), message)
                    } else {
                        ("Waiting".into(), format!("waits for stage {stage}"))
                    };
                }
                Some(Seen::NoBatch) => {
                    line.last_seen = Some(Time(now));
                    line.phase = "BatchMissing".into();
                    line.message = format!("has no RolloutBatch {}", spec.batch);
                }
                Some(Seen::Unreachable(e)) => {
                    line.last_seen = last_seen(name);
                    line.phase = "Unreachable".into();
                    line.message = e.clone();
                }
                Some(Seen::NoCredentials(e)) => {
                    line.phase = "NoCredentials".into();
                    line.message = e.clone();
                }
                None => {
                    line.last_seen = last_seen(name);
                    line.phase = "Unreachable".into();
                    line.message = "not looked at".into();
                }
            }
            line
        })
        .collect();
    let stage_now = current.unwrap_or(total);
    let named = |phase: &str, clusters: &[FleetClusterStatus]| -> Vec<String> {
        clusters
            .iter()
            .filter(|c| c.phase == phase)
            .map(|c| format!("{}: {}", c.name, c.message))
            .collect()
    };

    // 2. Credentials.
    let no_credentials = named("NoCredentials", &clusters);
    if !no_credentials.is_empty() {
        let message = format!(
            "no usable credentials for {}; nothing is approved anywhere until \
             every member can be reached",
            no_credentials.join("; ")
        );
        return stopped(Reason::NoCredentials, message, stage_now, clusters);
    }
    // 3. The batch in every member reached.
    let missing = named("BatchMissing", &clusters);
    if !missing.is_empty() {
        let message = format!(
            "{}; create it (with approvedWaves: 0) or fix spec.batch; nothing \
             is approved anywhere until every member has it",
            missing.join("; ")
        );
        return stopped(Reason::BatchMissing, message, stage_now, clusters);
    }
    // 4. Failures.
    if failed.len() as u32 > spec.max_failed_clusters {
        let message = format!(
            "halted: {} of {} member clusters failed (maxFailedClusters {}): {}; \
             fix them or raise maxFailedClusters",
            failed.len(),
            ordered.len(),
            spec.max_failed_clusters,
            named("Failed", &clusters).join("; ")
        );
        return stopped(Reason::FleetHalted, message, stage_now, clusters);
    }
    let reconciling = |reason: Reason, message: String, clusters, next| Decision {
        approvals: vec![],
        status: status(
            stage_now,
            clusters,
            next,
            [
                (false, reason, message.clone()),
                (true, reason, message),
                (false, Reason::NotStalled, String::new()),
            ],
        ),
    };
    // 5. Every member answered.
    let unreachable = named("Unreachable", &clusters);
    if !unreachable.is_empty() {
        let message = format!(
            "waiting for unreachable member clusters: {}",
            unreachable.join("; ")
        );
        return reconciling(Reason::MemberUnreachable, message, clusters, vec![]);
    }
    let Some(stage) = current else {
        let message = format!(
            "every stage is done: {} member clusters Ready{}",
            ordered.len() - failed.len(),
            if failed.is_empty() {
                String::new()
            } else {
                format!(", {} failed within maxFailedClusters", failed.len())
            }
        );
        return Decision {
            approvals: vec![],
            status: status(
                total,
                clusters,
                vec![],
                [
                    (true, Reason::RolloutComplete, message),
                    (false, Reason::RolloutComplete, String::new()),
                    (false, Reason::NotStalled, String::new()),
                ],
            ),
        };
    };
    // 6. Paused.
    if spec.paused {
        let message = format!("spec.paused: stage {stage} approves no more clusters");
        return stopped(Reason::Paused, message, stage, clusters);
    }
    // 7. Approvals in the current stage.
    let batch = |name: &str| match seen.get(name) {
        Some(Seen::Batch(b)) => Some(b),
        _ => None,
    };
    let in_flight = ordered
        .iter()
        .filter(|n| {
            batch(n).is_some_and(|b| {
                !b.ready && !failed.contains_key(**n) && b.approved_waves.is_none_or(|a| a > 0)
            })
        })
        .count() as u32;
    let mut room = spec.max_clusters_in_flight.saturating_sub(in_flight);
    let mut approvals = vec![];
    for name in &stages[stage as usize - 1] {
        let Some(b) = batch(name) else { continue };
        if b.ready || failed.contains_key(name.as_str()) || b.fully_approved() {
            continue;
        }
        // A member already rolling (approved for some waves) gets the rest
        // without taking more room.
        let rolling = b.approved_waves.is_some_and(|a| a > 0);
        if !rolling {
            if room == 0 {
                continue;
            }
            room -= 1;
        }
        approvals.push(FleetApproval {
            cluster: name.clone(),
            from: b.approved_waves,
            to: b.total_waves,
        });
    }
    let stage_name = &spec.stages[stage as usize - 1].name;
    let waiting_in_stage = stages[stage as usize - 1]
        .iter()
        .filter(|n| !done(n))
        .count();
    let message = match (spec.mode, approvals.is_empty()) {
        (FleetMode::Report, false) => format!(
            "stage {stage} ({stage_name}): approve {} (status.next); gpufleet \
             writes nothing to the members in mode Report",
            approvals
                .iter()
                .map(|a| format!("{} approvedWaves {}", a.cluster, a.to))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        _ => format!(
            "stage {stage} ({stage_name}): {waiting_in_stage} member clusters not Ready yet, \
             {} rolling (maxClustersInFlight {})",
            in_flight
                + approvals
                    .iter()
                    .filter(|a| a.from.is_none_or(|f| f == 0))
                    .count() as u32,
            spec.max_clusters_in_flight
        ),
    };
    let reason = match spec.mode {
        FleetMode::Report if !approvals.is_empty() => Reason::WaitingForApproval,
        _ => Reason::StageInProgress,
    };
    for approval in &approvals {
        if let Some(line) = clusters.iter_mut().find(|c| c.name == approval.cluster)
            && spec.mode == FleetMode::Approve
        {
            line.phase = "Rolling".into();
            line.approved_waves = Some(approval.to);
            line.message = format!("approved: approvedWaves {}", approval.to);
        }
    }
    let mut decision = reconciling(reason, message, clusters, approvals.clone());
    decision.approvals = approvals;
    decision
}

/// The clusters of each stage, in order: names as given, then the
/// selector's matches by name. An error names the stage and what is wrong.
pub fn resolve(spec: &FleetRolloutSpec, members: &[Member]) -> Result<Vec<Vec<String>>, String> {
    if spec.stages.is_empty() {
        return Err("spec.stages is empty: name at least one stage".into());
    }
    let known: BTreeSet<&str> = members.iter().map(|m| m.name.as_str()).collect();
    let mut placed: BTreeMap<String, usize> = BTreeMap::new();
    let mut out = vec![];
    for (i, stage) in spec.stages.iter().enumerate() {
        let field = format!("spec.stages[{i}]");
        let mut names: Vec<String> = vec![];
        for name in &stage.clusters {
            if !known.contains(name.as_str()) {
                return Err(format!(
                    "{field}.clusters names {name}, which has no ClusterProfile in \
                     this namespace"
                ));
            }
            if !names.contains(name) {
                names.push(name.clone());
            }
        }
        if let Some(sel) = &stage.cluster_selector {
            let matching =
                matches(sel, members).map_err(|e| format!("{field}.clusterSelector: {e}"))?;
            for name in matching {
                if !names.contains(&name) {
                    names.push(name);
                }
            }
        }
        if names.is_empty() {
            return Err(format!(
                "{field} ({}) names no cluster: no ClusterProfile matches it",
                stage.name
            ));
        }
        for name in &names {
            if let Some(other) = placed.insert(name.clone(), i) {
                return Err(format!(
                    "{name} is in spec.stages[{other}] and {field}: a cluster \
                     belongs to one stage"
                ));
            }
        }
        out.push(names);
    }
    Ok(out)
}

fn matches(sel: &LabelSelector, members: &[Member]) -> Result<Vec<String>, String> {
    for (i, req) in sel.match_expressions.iter().flatten().enumerate() {
        if !["In", "NotIn", "Exists", "DoesNotExist"].contains(&req.operator.as_str()) {
            return Err(format!(
                "matchExpressions[{i}].operator {:?} is not In, NotIn, Exists or DoesNotExist",
                req.operator
            ));
        }
    }
    Ok(members
        .iter()
        .filter(|m| selects(sel, &m.labels))
        .map(|m| m.name.clone())
        .collect())
}

/// A member batch's Stalled condition when it means a failure (not a
/// pause, not waiting for approval), in words.
pub fn stalled_failure(conditions: &[Condition]) -> Option<String> {
    conditions
        .iter()
        .find(|c| c.type_ == "Stalled" && c.status == "True")
        .filter(|c| c.reason != "Paused" && c.reason != "WaitingForApproval")
        .map(|c| format!("Stalled ({}): {}", c.reason, c.message))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::FleetStage;

    fn spec(stages: &[&[&str]]) -> FleetRolloutSpec {
        FleetRolloutSpec {
            batch: "b".into(),
            stages: stages
                .iter()
                .enumerate()
                .map(|(i, names)| FleetStage {
                    name: format!("s{i}"),
                    clusters: names.iter().map(|n| n.to_string()).collect(),
                    cluster_selector: None,
                })
                .collect(),
            max_clusters_in_flight: 1,
            max_failed_clusters: 0,
            mode: FleetMode::Approve,
            paused: false,
        }
    }

    fn members(names: &[&str]) -> Vec<Member> {
        names
            .iter()
            .map(|n| Member {
                name: n.to_string(),
                labels: [("region".to_string(), n[..1].to_string())].into(),
            })
            .collect()
    }

    fn batch(approved: Option<u32>, ready: bool) -> Seen {
        Seen::Batch(MemberBatch {
            approved_waves: approved,
            total_waves: 2,
            ready,
            ..Default::default()
        })
    }

    fn now() -> Timestamp {
        "2026-12-03T10:00:00Z".parse().unwrap()
    }

    fn run(spec: &FleetRolloutSpec, names: &[&str], seen: &[(&str, Seen)]) -> Decision {
        let seen = seen
            .iter()
            .map(|(n, s)| (n.to_string(), s.clone()))
            .collect();
        decide(
            spec,
            Some(1),
            &Default::default(),
            &members(names),
            &seen,
            now(),
        )
    }

    fn cond<'a>(d: &'a Decision, t: &str) -> &'a Condition {
        d.status.conditions.iter().find(|c| c.type_ == t).unwrap()
    }

    #[test]
    fn the_second_stage_waits_until_the_first_is_ready() {
        let s = spec(&[&["a"], &["b"]]);
        let d = run(
            &s,
            &["a", "b"],
            &[("a", batch(Some(0), false)), ("b", batch(Some(0), false))],
        );
        assert_eq!(
            d.approvals,
            vec![FleetApproval {
                cluster: "a".into(),
                from: Some(0),
                to: 2
            }]
        );
        assert_eq!(d.status.current_stage, 1);
        let d = run(
            &s,
            &["a", "b"],
            &[("a", batch(Some(2), false)), ("b", batch(Some(0), false))],
        );
        assert!(d.approvals.is_empty(), "{:?}", d.approvals);
        let d = run(
            &s,
            &["a", "b"],
            &[("a", batch(Some(2), true)), ("b", batch(Some(0), false))],
        );
        assert_eq!(d.approvals[0].cluster, "b");
        assert_eq!(d.status.current_stage, 2);
        let d = run(
            &s,
            &["a", "b"],
            &[("a", batch(Some(2), true)), ("b", batch(Some(2), true))],
        );
        assert_eq!(cond(&d, "Ready").status, "True");
    }

    #[test]
    fn clusters_in_flight_are_capped() {
        let mut s = spec(&[&["a", "b", "c"]]);
        s.max_clusters_in_flight = 2;
        let d = run(
            &s,
            &["a", "b", "c"],
            &[
                ("a", batch(Some(0), false)),
                ("b", batch(Some(0), false)),
                ("c", batch(Some(0), false)),
            ],
        );
        assert_eq!(d.approvals.len(), 2);
        let d = run(
            &s,
            &["a", "b", "c"],
            &[
                ("a", batch(Some(2), false)),
                ("b", batch(Some(2), true)),
                ("c", batch(Some(0), false)),
            ],
        );
        assert_eq!(
            d.approvals
                .iter()
                .map(|a| a.cluster.as_str())
                .collect::<Vec<_>>(),
            ["c"]
        );
    }

    #[test]
    fn an_unreachable_member_holds_every_approval() {
        let s = spec(&[&["a"], &["b"]]);
        let d = run(
            &s,
            &["a", "b"],
            &[
                ("a", batch(Some(2), true)),
                ("b", Seen::Unreachable("connection refused".into())),
            ],
        );
        assert!(d.approvals.is_empty());
        let r = cond(&d, "Reconciling");
        assert_eq!(
            (r.status.as_str(), r.reason.as_str()),
            ("True", "MemberUnreachable")
        );
        assert!(r.message.contains("b: connection refused"), "{}", r.message);
    }

    #[test]
    fn a_failed_member_halts_the_fleet_naming_it() {
        let s = spec(&[&["a"], &["b"]]);
        let tripped = Seen::Batch(MemberBatch {
            approved_waves: Some(2),
            total_waves: 2,
            breaker_tripped: true,
            ..Default::default()
        });
        let d = run(
            &s,
            &["a", "b"],
            &[("a", tripped.clone()), ("b", batch(Some(0), false))],
        );
        assert!(d.approvals.is_empty());
        let st = cond(&d, "Stalled");
        assert_eq!(
            (st.status.as_str(), st.reason.as_str()),
            ("True", "FleetHalted")
        );
        assert!(
            st.message
                .contains("a: batch b: its pool's circuit breaker tripped"),
            "{}",
            st.message
        );
        // Tolerated, the failed member counts as done and the next stage starts.
        let mut tolerant = s.clone();
        tolerant.max_failed_clusters = 1;
        let d = run(
            &tolerant,
            &["a", "b"],
            &[("a", tripped), ("b", batch(Some(0), false))],
        );
        assert_eq!(d.approvals[0].cluster, "b");
    }

    #[test]
    fn bad_input_approves_nothing_anywhere() {
        let s = spec(&[&["a"], &["b"]]);
        // A stage naming a cluster without a profile.
        let d = run(&s, &["a"], &[("a", batch(Some(0), false))]);
        assert!(d.approvals.is_empty());
        assert_eq!(cond(&d, "Stalled").reason, "InvalidSpec");
        assert!(
            cond(&d, "Stalled")
                .message
                .contains("spec.stages[1].clusters names b")
        );
        // A selector matching nothing.
        let mut sel = spec(&[&["a"]]);
        sel.stages.push(FleetStage {
            name: "west".into(),
            clusters: vec![],
            cluster_selector: Some(LabelSelector {
                match_labels: Some([("region".to_string(), "w".to_string())].into()),
                ..Default::default()
            }),
        });
        let d = run(&sel, &["a"], &[("a", batch(Some(0), false))]);
        assert!(
            cond(&d, "Stalled")
                .message
                .contains("spec.stages[1] (west) names no cluster")
        );
        // A cluster in two stages.
        let d = run(
            &spec(&[&["a"], &["a"]]),
            &["a"],
            &[("a", batch(Some(0), false))],
        );
        assert!(
            cond(&d, "Stalled")
                .message
                .contains("a is in spec.stages[0] and spec.stages[1]")
        );
        // No credentials for a later stage's member.
        let d = run(
            &s,
            &["a", "b"],
            &[
                ("a", batch(Some(0), false)),
                ("b", Seen::NoCredentials("x".into())),
            ],
        );
        assert!(d.approvals.is_empty());
        assert_eq!(cond(&d, "Stalled").reason, "NoCredentials");
        // The batch missing in a later stage's member.
        let d = run(
            &s,
            &["a", "b"],
            &[("a", batch(Some(0), false)), ("b", Seen::NoBatch)],
        );
        assert!(d.approvals.is_empty());
        let st = cond(&d, "Stalled");
        assert_eq!(st.reason, "BatchMissing");
        assert!(
            st.message.contains("b: has no RolloutBatch b"),
            "{}",
            st.message
        );
    }

    #[test]
    fn report_mode_lists_the_next_approval_and_a_selector_places_clusters() {
        let mut s = spec(&[&["a"]]);
        s.mode = FleetMode::Report;
        s.stages.push(FleetStage {
            name: "rest".into(),
            clusters: vec![],
            cluster_selector: Some(LabelSelector {
                match_labels: Some([("region".to_string(), "b".to_string())].into()),
                ..Default::default()
            }),
        });
        let d = run(
            &s,
            &["a", "b1", "b2"],
            &[
                ("a", batch(Some(2), true)),
                ("b1", batch(Some(0), false)),
                ("b2", batch(Some(0), false)),
            ],
        );
        assert_eq!(d.status.next, d.approvals);
        assert_eq!(d.approvals[0].cluster, "b1");
        let r = cond(&d, "Reconciling");
        assert_eq!(r.reason, "WaitingForApproval");
        assert!(
            r.message.contains("approve b1 approvedWaves 2"),
            "{}",
            r.message
        );
        // The status still says Waiting: nothing was written.
        let b1 = d.status.clusters.iter().find(|c| c.name == "b1").unwrap();
        assert_eq!(b1.phase, "Waiting");
    }

    #[test]
    fn a_member_approved_outside_the_rollout_is_reported_not_lowered() {
        let s = spec(&[&["a"], &["b"]]);
        let d = run(
            &s,
            &["a", "b"],
            &[("a", batch(Some(0), false)), ("b", batch(None, false))],
        );
        let b = d.status.clusters.iter().find(|c| c.name == "b").unwrap();
        assert!(
            b.message.contains("approved outside this rollout"),
            "{}",
            b.message
        );
        assert!(d.approvals.iter().all(|a| a.cluster != "b"));
    }

    #[test]
    fn last_seen_is_kept_while_a_member_is_unreachable() {
        let s = spec(&[&["a"]]);
        let first = run(&s, &["a"], &[("a", batch(Some(0), false))]);
        let seen = [("a".to_string(), Seen::Unreachable("timeout".into()))].into();
        let later: Timestamp = "2026-12-03T10:05:00Z".parse().unwrap();
        let d = decide(&s, Some(1), &first.status, &members(&["a"]), &seen, later);
        assert_eq!(d.status.clusters[0].last_seen, Some(Time(now())));
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        fn seen_strategy() -> impl Strategy<Value = Seen> {
            prop_oneof![
                6 => (prop::option::of(0u32..=2), any::<bool>(), 0u32..6).prop_map(|(approved, ready, f)| {
                    Seen::Batch(MemberBatch {
                        approved_waves: approved,
                        total_waves: 2,
                        ready: ready && approved.is_none_or(|a| a > 0),
                        breaker_tripped: f == 0,
                        ..Default::default()
                    })
                }),
                1 => Just(Seen::NoBatch),
                1 => Just(Seen::Unreachable("down".into())),
                1 => Just(Seen::NoCredentials("none".into())),
            ]
        }

        proptest! {
            /// Whatever the members say, an approval goes only to a member
            /// of the first stage not done, when every stage before is
            /// done, every member answered, has credentials and the batch,
            /// and the failures are within the limit; it only raises; and
            /// it never takes the members rolling past the cap.
            #[test]
            fn approvals_respect_stages_the_cap_and_bad_input(
                sizes in prop::collection::vec(1usize..4, 1..4),
                in_flight in 1u32..4,
                max_failed in 0u32..2,
                states in prop::collection::vec(seen_strategy(), 12),
                report in any::<bool>(),
            ) {
                let mut names = vec![];
                let stages: Vec<Vec<String>> = sizes
                    .iter()
                    .map(|n| (0..*n).map(|_| { names.push(format!("c{}", names.len())); names.last().unwrap().clone() }).collect())
                    .collect();
                let refs: Vec<Vec<&str>> = stages.iter().map(|s| s.iter().map(String::as_str).collect()).collect();
                let slices: Vec<&[&str]> = refs.iter().map(Vec::as_slice).collect();
                let mut s = spec(&slices);
                s.max_clusters_in_flight = in_flight;
                s.max_failed_clusters = max_failed;
                if report { s.mode = FleetMode::Report; }
                let all: Vec<&str> = names.iter().map(String::as_str).collect();
                let seen: BTreeMap<String, Seen> = names.iter().cloned().zip(states.iter().cloned()).collect();
                let d = decide(&s, Some(1), &Default::default(), &members(&all), &seen, now());
                if d.approvals.is_empty() { return Ok(()); }
                let batch = |n: &str| match &seen[n] { Seen::Batch(b) => b.clone(), other => panic!("approved {n} seen as {other:?}") };
                prop_assert!(seen.values().all(|v| matches!(v, Seen::Batch(_))), "every member answered with the batch");
                let failed = names.iter().filter(|n| batch(n).failure().is_some()).count() as u32;
                prop_assert!(failed <= max_failed);
                let stage_of = |n: &str| stages.iter().position(|st| st.iter().any(|x| x == n)).unwrap();
                for a in &d.approvals {
                    let st = stage_of(&a.cluster);
                    for earlier in stages[..st].iter().flatten() {
                        let b = batch(earlier);
                        prop_assert!(b.ready || b.failure().is_some(), "{} approved before {earlier} was done", a.cluster);
                    }
                    prop_assert!(a.to > a.from.unwrap_or(0) && a.from.is_some());
                    prop_assert!(batch(&a.cluster).failure().is_none() && !batch(&a.cluster).ready);
                }
                let rolling = |n: &str, approved: Option<u32>| {
                    let b = batch(n);
                    !b.ready && b.failure().is_none() && approved.is_none_or(|x| x > 0)
                };
                let before = names.iter().filter(|n| rolling(n, batch(n).approved_waves)).count() as u32;
                let after = names.iter().filter(|n| {
                    let approved = d.approvals.iter().find(|a| &a.cluster == *n).map(|a| Some(a.to)).unwrap_or(batch(n).approved_waves);
                    rolling(n, approved)
                }).count() as u32;
                prop_assert!(after <= before.max(in_flight), "{after} rolling after, {before} before, cap {in_flight}");
                if report { prop_assert_eq!(&d.status.next, &d.approvals); }
            }
        }
    }
}
