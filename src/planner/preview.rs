//! Plan preview: the waves a batch would run over a set of nodes, which
//! nodes would fail the static checks and why, and which domains would be
//! held — without a cluster. `gpufleet plan` prints it.
//!
//! The preview calls the planner's own rules: membership, domains and waves
//! from the one pass both use ([`Membership::gather`]), the static checks of
//! [`static_failure`], and the domain size needed for admission
//! ([`needed_healthy`], counting the domain's nodes already ready in the pool). It assumes every probe
//! passes: what it reports is what the nodes' own labels, conditions and
//! resources already decide.

use std::borrow::Borrow;

use serde::Serialize;

use crate::api::{GpuPool, GpuPoolSpec, RolloutBatch};

use super::health::static_failure;
pub use super::membership::Mismatch;
use super::membership::{Domain, Membership, needed_healthy};
use super::snapshot::{NodeState, NodeView};
use super::waves::failure_budget;

/// What a batch would do over a set of nodes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Preview {
    /// The pool's name.
    pub pool: String,
    /// The batch's name.
    pub batch: String,
    /// Every wave of the batch, in order, empty ones included.
    pub waves: Vec<WavePreview>,
    /// Every domain of the batch, in the order the waves take them.
    pub domains: Vec<DomainPreview>,
    /// Member nodes that would fail, with the reason.
    pub rejected: Vec<Rejected>,
    /// Domains whose healthy nodes would be held: too few of their nodes can
    /// pass.
    pub held: Vec<HeldDomain>,
    /// Nodes of the input that are not members of the batch (a member matches
    /// both the pool's and the batch's selector), with why.
    pub unmatched: Vec<Unmatched>,
    /// Things a person should know before applying the batch.
    pub notes: Vec<String>,
    pub summary: Summary,
}

/// One wave.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct WavePreview {
    /// From 1.
    pub index: u32,
    /// Nodes admitted by the end of this wave, cumulative and in whole
    /// domains, as `status.waves[].targetNodes` will say.
    pub target_nodes: u32,
    /// The cumulative target the batch asks for, before rounding up to whole
    /// domains.
    pub requested_nodes: u32,
    /// Within `approvedWaves` (or no limit set).
    pub approved: bool,
    /// The wave's domains, in order.
    pub domains: Vec<String>,
    /// The wave's nodes, by domain and name.
    pub nodes: Vec<String>,
    /// GPUs the wave brings online if every probe passes: those of its nodes
    /// that are neither rejected nor held.
    pub gpus: u32,
    /// Nodes of the wave that would fail the static checks.
    pub rejected: u32,
    /// Healthy nodes of the wave held with their domain.
    pub held: u32,
    /// Failures the wave tolerates (`maxFailuresPerWave`).
    pub failure_budget: u32,
}

/// One domain.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DomainPreview {
    /// The domain label's value; for a node without a domain (no domain
    /// label in use), the node's name.
    pub name: String,
    /// The wave that takes it, from 1.
    pub wave: u32,
    /// Its nodes in the batch.
    pub nodes: u32,
    /// GPUs it brings online if every probe passes.
    pub gpus: u32,
    /// Its nodes that would fail the static checks.
    pub rejected: u32,
    /// Its healthy nodes would be held.
    pub held: bool,
}

/// A member node that would fail.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Rejected {
    pub node: String,
    pub domain: String,
    /// The wave it belongs to, from 1.
    pub wave: u32,
    /// The failure's category, as metrics label it (`previously_failed` for a
    /// node already failed and not marked for retry).
    pub category: &'static str,
    /// Why, in words a person can act on.
    pub reason: String,
}

/// A domain whose healthy nodes would be held.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HeldDomain {
    pub domain: String,
    /// The wave that takes it, from 1.
    pub wave: u32,
    /// Nodes of the domain that can be healthy: ready in the pool already, or
    /// members that pass the static checks.
    pub healthy: u32,
    /// Healthy nodes needed to admit the domain.
    pub needed: u32,
    /// The healthy member nodes that would be held.
    pub nodes: Vec<String>,
    pub reason: String,
}

/// A node of the input that is not a member of the batch.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Unmatched {
    pub node: String,
    pub matches: Mismatch,
    pub reason: &'static str,
}

/// Totals.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Summary {
    /// Nodes in the input.
    pub nodes: u32,
    /// Nodes of the batch: both selectors match.
    pub members: u32,
    pub domains: u32,
    pub waves: u32,
    /// GPUs of the batch online at the end if every probe passes.
    pub gpus: u32,
    /// GPUs of the batch's nodes if all were healthy: members × `gpusPerNode`.
    pub gpus_requested: u32,
    pub rejected: u32,
    pub held_domains: u32,
    pub held_nodes: u32,
    /// Nodes matching the batch's selector but not the pool's.
    pub batch_only: u32,
    /// Nodes of the input that are not members, for any reason.
    pub unmatched: u32,
}

/// A member and what the preview decided for it.
struct Member<'a> {
    view: &'a NodeView,
    failure: Option<(&'static str, String)>,
    held: bool,
}

/// Previews `batch` of `pool` over `nodes` (every node the pool may hold;
/// nodes of other pools and batches are reported, not planned).
pub fn preview(pool: &GpuPool, batch: &RolloutBatch, nodes: &[impl Borrow<NodeView>]) -> Preview {
    let spec = &pool.spec;
    let pool_name = pool.metadata.name.clone().unwrap_or_default();
    let batch_name = batch.metadata.name.clone().unwrap_or_default();

    // Membership, domains and waves exactly as the planner decides them.
    let membership = Membership::gather(pool, batch, nodes, &[], &[], true);
    let unmatched: Vec<Unmatched> = membership
        .outsiders
        .iter()
        .map(|&(i, m)| Unmatched {
            node: nodes[i].borrow().name.to_string(),
            matches: m,
            reason: m.reason(),
        })
        .collect();
    let wave_count = membership.wave_count;
    let member_count = membership.members.len() as u32;
    let targets = &membership.targets;

    // Each member's static verdict.
    let mut groups: Vec<(String, Vec<Member>)> = membership
        .domains
        .iter()
        .map(|d| {
            let members = membership.members[d.members.clone()]
                .iter()
                .map(|p| Member {
                    view: p.view,
                    failure: predicted_failure(spec, p.view),
                    held: false,
                })
                .collect();
            (d.key.clone(), members)
        })
        .collect();
    let wave_of: Vec<usize> = membership.domains.iter().map(|d| d.wave).collect();

    let held = held_domains(spec, &mut groups, &membership.domains);

    // Per domain, per wave, rejected.
    let budget = batch.spec.max_failures_per_wave.as_ref();
    let mut wave_previews: Vec<WavePreview> = (0..wave_count)
        .map(|w| WavePreview {
            index: w as u32 + 1,
            target_nodes: 0,
            requested_nodes: targets.get(w).copied().unwrap_or(member_count),
            approved: batch.spec.approved_waves.is_none_or(|a| w < a as usize),
            domains: Vec::new(),
            nodes: Vec::new(),
            gpus: 0,
            rejected: 0,
            held: 0,
            failure_budget: 0,
        })
        .collect();
    let mut domains = Vec::with_capacity(groups.len());
    let mut rejected = Vec::new();
    for ((key, members), &w) in groups.iter().zip(&wave_of) {
        let name = display_name(key);
        let wave = &mut wave_previews[w];
        let mut domain = DomainPreview {
            name: name.clone(),
            wave: w as u32 + 1,
            nodes: members.len() as u32,
            gpus: 0,
            rejected: 0,
            held: false,
        };
        for m in members {
            wave.nodes.push(m.view.name.to_string());
            if let Some((category, reason)) = &m.failure {
                domain.rejected += 1;
                rejected.push(Rejected {
                    node: m.view.name.to_string(),
                    domain: name.clone(),
                    wave: w as u32 + 1,
                    category,
                    reason: reason.clone(),
                });
            } else if m.held {
                domain.held = true;
                wave.held += 1;
            } else {
                // Saturating: an admitted node is never checked again, and
                // its allocatable may say anything up to u32::MAX.
                domain.gpus = domain.gpus.saturating_add(m.view.gpus());
            }
        }
        wave.domains.push(name);
        wave.gpus = wave.gpus.saturating_add(domain.gpus);
        wave.rejected += domain.rejected;
        domains.push(domain);
    }
    let mut cumulative = 0;
    for wave in &mut wave_previews {
        cumulative += wave.nodes.len() as u32;
        wave.target_nodes = cumulative;
        wave.failure_budget = failure_budget(budget, wave.nodes.len() as u32);
    }

    let notes = notes(pool, batch, &wave_previews, member_count);
    let held_nodes = held.iter().map(|h| h.nodes.len() as u32).sum();
    let summary = Summary {
        nodes: nodes.len() as u32,
        members: member_count,
        domains: domains.len() as u32,
        waves: wave_count as u32,
        gpus: wave_previews
            .iter()
            .fold(0u32, |sum, w| sum.saturating_add(w.gpus)),
        gpus_requested: member_count * spec.hardware.gpus_per_node,
        rejected: rejected.len() as u32,
        held_domains: held.len() as u32,
        held_nodes,
        batch_only: unmatched
            .iter()
            .filter(|u| u.matches == Mismatch::BatchOnly)
            .count() as u32,
        unmatched: unmatched.len() as u32,
    };
    Preview {
        pool: pool_name,
        batch: batch_name,
        waves: wave_previews,
        domains,
        rejected,
        held,
        unmatched,
        notes,
        summary,
    }
}

/// Domains too few of whose nodes can be healthy to be admitted: their
/// passing members are marked held.
fn held_domains(
    spec: &GpuPoolSpec,
    groups: &mut [(String, Vec<Member>)],
    domains: &[Domain],
) -> Vec<HeldDomain> {
    let mut held = Vec::new();
    for ((key, members), domain) in groups.iter_mut().zip(domains) {
        let passing = members
            .iter()
            .filter(|m| m.failure.is_none() && m.view.state() != NodeState::Ready)
            .count() as u32;
        let ready_members = members
            .iter()
            .filter(|m| m.view.state() == NodeState::Ready)
            .count() as u32;
        let healthy = domain.ready_in_pool + passing;
        let needed = needed_healthy(&spec.topology, key);
        if passing == 0 || healthy >= needed {
            continue;
        }
        let total = members.len() as u32 + domain.ready_in_pool - ready_members;
        let rejected = members.iter().filter(|m| m.failure.is_some()).count();
        let hint = if rejected > 0 {
            format!("{rejected} rejected; fix them or lower topology.minHealthyNodesPerDomain")
        } else {
            "the domain's other nodes are missing from the batch".to_string()
        };
        let names = members
            .iter_mut()
            .filter(|m| m.failure.is_none() && m.view.state() != NodeState::Ready)
            .map(|m| {
                m.held = true;
                m.view.name.to_string()
            })
            .collect();
        held.push(HeldDomain {
            domain: display_name(key),
            wave: domain.wave as u32 + 1,
            healthy,
            needed,
            nodes: names,
            reason: format!("{healthy} of {total} nodes can be healthy, {needed} needed: {hint}"),
        });
    }
    held
}

/// What the node's own labels, conditions and resources already decide: a
/// ready node is never demoted; a failed one stays failed unless marked for
/// retry; any other must pass the static checks.
fn predicted_failure(spec: &GpuPoolSpec, view: &NodeView) -> Option<(&'static str, String)> {
    match view.state() {
        NodeState::Ready => None,
        NodeState::Failed if !view.retry => Some((
            "previously_failed",
            format!(
                "failed earlier: {}; mark it for retry (annotation {})",
                view.reason.as_deref().unwrap_or("no reason recorded"),
                crate::keys::RETRY
            ),
        )),
        _ => static_failure(spec, view).map(|f| (f.category.as_str(), f.message)),
    }
}

/// A domain key as a person reads it: a one-node domain by its node's name.
fn display_name(key: &str) -> String {
    key.strip_prefix('/').unwrap_or(key).to_string()
}

/// What would stop or surprise the rollout.
fn notes(pool: &GpuPool, batch: &RolloutBatch, waves: &[WavePreview], members: u32) -> Vec<String> {
    let mut notes = Vec::new();
    let pool_name = pool.metadata.name.as_deref().unwrap_or_default();
    if batch.spec.pool_ref != pool_name {
        notes.push(format!(
            "the batch's poolRef is {:?}, not {pool_name:?}: the operator plans it against pool {:?}",
            batch.spec.pool_ref, batch.spec.pool_ref
        ));
    }
    if members == 0 {
        notes.push("no node matches both the pool's and the batch's selectors".to_string());
    }
    if let Some(wave) = waves.iter().find(|w| w.rejected > w.failure_budget) {
        notes.push(format!(
            "wave {} halts the rollout: {} of its {} nodes fail the static checks, maxFailuresPerWave allows {}",
            wave.index,
            wave.rejected,
            wave.nodes.len(),
            wave.failure_budget
        ));
    }
    if let Some(approved) = batch.spec.approved_waves
        && (approved as usize) < waves.len()
    {
        notes.push(format!(
            "waves after {approved} wait for approval (approvedWaves is {approved})"
        ));
    }
    if batch.spec.paused {
        notes.push("the batch is paused: nothing starts until spec.paused is false".to_string());
    }
    notes
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::planner::sim::{Outcome, Sim, fleet, healthy_node};
    use crate::planner::{NodeState, Snapshot};
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
    use k8s_openapi::jiff::Timestamp;
    use proptest::prelude::*;
    use std::collections::HashMap;

    const POOL: &str = r#"
apiVersion: gpufleet.io/v1alpha1
kind: GpuPool
metadata: {name: east}
spec:
  nodeSelector: {matchLabels: {gpufleet.io/pool: east}}
  hardware: {gpuProduct: [NVIDIA-GB200], gpusPerNode: 4, minDriverVersion: "570.133.20"}
  topology: {domainLabel: nvidia.com/gpu.clique, nodesPerDomain: 4, minHealthyNodesPerDomain: 3}
  healthChecks:
    unhealthyConditions: [{type: GpuXidError, status: "True"}]
    probe:
      timeoutSeconds: 600
      retries: 0
      template: {spec: {containers: [{name: burn-in, image: busybox}]}}
    soakSeconds: 60
"#;

    const BATCH: &str = r#"
apiVersion: gpufleet.io/v1alpha1
kind: RolloutBatch
metadata: {name: row1}
spec:
  poolRef: east
  nodeSelector: {matchLabels: {gpufleet.io/batch: row1}}
  waves: [{nodes: 4}, {percent: 50}, {percent: 100}]
  maxConcurrent: 8
  maxFailuresPerWave: "100%"
"#;

    fn pool() -> GpuPool {
        serde_norway::from_str(POOL).unwrap()
    }

    fn batch() -> RolloutBatch {
        serde_norway::from_str(BATCH).unwrap()
    }

    fn t0() -> Timestamp {
        "2026-11-27T00:00:00Z".parse().unwrap()
    }

    fn set_gpus(node: &mut NodeView, n: u32) {
        node.allocatable_gpus = Some(n);
        node.allocatable_gpus_raw = Some(n.to_string().into());
    }

    fn find<'a>(nodes: &'a mut [NodeView], name: &str) -> &'a mut NodeView {
        nodes.iter_mut().find(|n| n.name == name).unwrap()
    }

    #[test]
    fn waves_take_whole_domains_in_order() {
        // 6 domains of 4: wave 1 wants 4 nodes (one domain), wave 2 half of
        // 24 = 12 (two more), wave 3 the rest.
        let p = preview(&pool(), &batch(), &fleet("n", 6, 4, "east", "row1"));
        let domains: Vec<Vec<&str>> = p
            .waves
            .iter()
            .map(|w| w.domains.iter().map(String::as_str).collect())
            .collect();
        assert_eq!(
            domains,
            [
                vec!["n-clique-000"],
                vec!["n-clique-001", "n-clique-002"],
                vec!["n-clique-003", "n-clique-004", "n-clique-005"],
            ]
        );
        let targets: Vec<u32> = p.waves.iter().map(|w| w.target_nodes).collect();
        assert_eq!(targets, [4, 12, 24]);
        assert_eq!(p.waves[0].nodes[..2], ["n-d000-n00", "n-d000-n01"]);
        assert_eq!(p.waves[1].gpus, 32);
        assert_eq!(p.summary.gpus, 96);
        assert!(p.rejected.is_empty() && p.held.is_empty() && p.notes.is_empty());
    }

    #[test]
    fn rejected_nodes_carry_the_static_reason_and_can_hold_their_domain() {
        let mut nodes = fleet("n", 3, 4, "east", "row1");
        set_gpus(find(&mut nodes, "n-d001-n02"), 3);
        find(&mut nodes, "n-d002-n00")
            .conditions
            .insert("GpuXidError".into(), "True".into());
        find(&mut nodes, "n-d002-n01")
            .labels
            .insert(crate::keys::DRIVER_VERSION.into(), "570.86.15".into());
        let p = preview(&pool(), &batch(), &nodes);
        let rejected: Vec<(&str, &str, &str)> = p
            .rejected
            .iter()
            .map(|r| (r.node.as_str(), r.category, r.reason.as_str()))
            .collect();
        assert_eq!(
            rejected,
            [
                (
                    "n-d001-n02",
                    "wrong_gpu_count",
                    "allocatable nvidia.com/gpu is 3, pool expects 4"
                ),
                (
                    "n-d002-n00",
                    "unhealthy_condition",
                    "condition GpuXidError is True"
                ),
                (
                    "n-d002-n01",
                    "driver_too_old",
                    "driver 570.86.15 is older than 570.133.20"
                ),
            ]
        );
        // Domain 1 keeps 3 of 4 (enough); domain 2 keeps 2 of 4: held.
        assert_eq!(p.held.len(), 1);
        let held = &p.held[0];
        assert_eq!(held.domain, "n-clique-002");
        assert_eq!((held.healthy, held.needed, held.wave), (2, 3, 3));
        assert_eq!(held.nodes, ["n-d002-n02", "n-d002-n03"]);
        assert!(
            held.reason
                .contains("2 of 4 nodes can be healthy, 3 needed")
        );
        assert_eq!(p.waves[1].gpus, 12);
        assert_eq!(p.waves[2].gpus, 0);
        assert_eq!((p.waves[2].rejected, p.waves[2].held), (2, 2));
        assert_eq!(p.summary.held_nodes, 2);
        assert_eq!(p.summary.gpus, 4 * 4 + 3 * 4);
    }

    #[test]
    fn nodes_outside_the_batch_are_reported() {
        let mut nodes = fleet("n", 1, 4, "east", "row1");
        nodes.push(healthy_node("other-batch", "c9", "east", "row2"));
        nodes.push(healthy_node("other-pool", "c9", "west", "row1"));
        nodes.push(healthy_node("stranger", "c9", "west", "row2"));
        let mut gone = healthy_node("gone", "c9", "east", "row1");
        gone.deleting = true;
        nodes.push(gone);
        let p = preview(&pool(), &batch(), &nodes);
        let unmatched: Vec<(&str, Mismatch)> = p
            .unmatched
            .iter()
            .map(|u| (u.node.as_str(), u.matches))
            .collect();
        assert_eq!(
            unmatched,
            [
                ("other-batch", Mismatch::PoolOnly),
                ("other-pool", Mismatch::BatchOnly),
                ("stranger", Mismatch::Neither),
                ("gone", Mismatch::Deleting),
            ]
        );
        assert_eq!((p.summary.members, p.summary.batch_only), (4, 1));
    }

    #[test]
    fn ready_nodes_of_the_pool_count_toward_a_domain() {
        // Two nodes of the domain are already ready through another batch:
        // one passing member is enough to reach 3.
        let mut nodes = fleet("n", 1, 4, "east", "row1");
        for name in ["n-d000-n00", "n-d000-n01"] {
            let node = find(&mut nodes, name);
            node.labels
                .insert("gpufleet.io/batch".into(), "row0".into());
            node.state = Some(NodeState::Ready);
        }
        set_gpus(find(&mut nodes, "n-d000-n03"), 0);
        let p = preview(&pool(), &batch(), &nodes);
        assert!(p.held.is_empty(), "{:?}", p.held);
        assert_eq!(p.summary.members, 2);
        assert_eq!(p.summary.gpus, 4);
    }

    #[test]
    fn notes_say_what_would_stop_the_rollout() {
        let mut nodes = fleet("n", 2, 4, "east", "row1");
        set_gpus(find(&mut nodes, "n-d000-n00"), 3);
        let mut b = batch();
        b.spec.max_failures_per_wave = Some(IntOrString::Int(0));
        b.spec.approved_waves = Some(1);
        b.spec.pool_ref = "west".into();
        let p = preview(&pool(), &b, &nodes);
        assert!(p.notes[0].contains("poolRef is \"west\""), "{:?}", p.notes);
        assert!(p.notes[1].starts_with("wave 1 halts the rollout: 1 of its 4 nodes"));
        assert!(p.notes[2].contains("waves after 1 wait for approval"));
        assert!(p.waves[0].approved && !p.waves[1].approved);
    }

    #[test]
    fn solo_nodes_without_a_domain_label_are_their_own_domain() {
        let mut pool = pool();
        pool.spec.topology.domain_label = String::new();
        let mut nodes = fleet("n", 1, 3, "east", "row1");
        set_gpus(find(&mut nodes, "n-d000-n01"), 2);
        let p = preview(&pool, &batch(), &nodes);
        let names: Vec<&str> = p.domains.iter().map(|d| d.name.as_str()).collect();
        assert_eq!(names, ["n-d000-n00", "n-d000-n01", "n-d000-n02"]);
        assert!(p.held.is_empty());
        assert_eq!(p.rejected.len(), 1);
    }

    /// Runs the rollout to the end with every wave approved and every probe
    /// passing, and checks each node ends where the preview said: in its
    /// wave, failed with the preview's reason, or held.
    fn assert_agrees(pool: GpuPool, batch: RolloutBatch, nodes: Vec<NodeView>) {
        let p = preview(&pool, &batch, &nodes);
        let mut sim = Sim::new(
            pool,
            batch,
            Snapshot {
                nodes: nodes.into_iter().map(std::sync::Arc::new).collect(),
                ..Default::default()
            },
            t0(),
            |_, _| Outcome::Pass,
        );
        sim.batch.spec.approved_waves = None;
        assert!(sim.run(10_000).is_some(), "the rollout settles");
        let plan = sim.plan();
        let wave_of: HashMap<&str, u32> = p
            .waves
            .iter()
            .flat_map(|w| w.nodes.iter().map(move |n| (n.as_str(), w.index)))
            .collect();
        let rejected: HashMap<&str, &Rejected> =
            p.rejected.iter().map(|r| (r.node.as_str(), r)).collect();
        let held: Vec<&str> = p
            .held
            .iter()
            .flat_map(|h| h.nodes.iter().map(String::as_str))
            .collect();
        for node in &sim.snapshot.nodes {
            let Some(&wave) = wave_of.get(node.name.as_str()) else {
                assert_eq!(node.state, None, "{} is no member", node.name);
                continue;
            };
            if let Some(r) = rejected.get(node.name.as_str()) {
                assert_eq!(node.state(), NodeState::Failed, "{}", node.name);
                assert_eq!(node.reason.as_deref(), Some(r.reason.as_str()));
            } else if held.contains(&node.name.as_str()) {
                assert_eq!(node.state(), NodeState::Held, "{}", node.name);
                assert_eq!(node.wave, Some(wave), "{}", node.name);
            } else {
                assert_eq!(node.state(), NodeState::Ready, "{}", node.name);
                assert_eq!(node.wave, Some(wave), "{}", node.name);
            }
        }
        // Per wave: the same targets, failures and held nodes.
        assert_eq!(plan.status.waves.len(), p.waves.len());
        for (status, wave) in plan.status.waves.iter().zip(&p.waves) {
            assert_eq!(status.index, wave.index);
            assert_eq!(status.target_nodes, wave.target_nodes);
            assert_eq!(status.failed, wave.rejected, "wave {}", wave.index);
            assert_eq!(status.held, wave.held, "wave {}", wave.index);
            let gpus: u32 = sim
                .snapshot
                .nodes
                .iter()
                .filter(|n| n.state() == NodeState::Ready && n.wave == Some(wave.index))
                .map(|n| n.gpus())
                .sum();
            assert_eq!(gpus, wave.gpus, "wave {}", wave.index);
        }
    }

    #[test]
    fn the_preview_agrees_with_the_planner() {
        let mut nodes = fleet("n", 6, 4, "east", "row1");
        set_gpus(find(&mut nodes, "n-d000-n01"), 3);
        find(&mut nodes, "n-d003-n00").ready = Some(false);
        find(&mut nodes, "n-d003-n00")
            .conditions
            .insert("Ready".into(), "False".into());
        find(&mut nodes, "n-d003-n01").unschedulable = true;
        find(&mut nodes, "n-d005-n02")
            .labels
            .remove("nvidia.com/gpu.clique");
        nodes.push(healthy_node("other", "n-clique-001", "east", "row2"));
        assert_agrees(pool(), batch(), nodes);
    }

    #[test]
    fn a_domain_started_earlier_stays_in_its_wave() {
        // Wave 1 ran on clique-001; then a domain that sorts first arrives.
        let mut s = Sim::new(
            pool(),
            batch(),
            Snapshot {
                nodes: fleet("n", 3, 4, "east", "row1")
                    .into_iter()
                    .filter(|n| !n.name.starts_with("n-d000"))
                    .map(std::sync::Arc::new)
                    .collect(),
                ..Default::default()
            },
            t0(),
            |_, _| Outcome::Pass,
        );
        s.batch.spec.approved_waves = Some(1);
        s.run(1_000).unwrap();
        let mut nodes: Vec<NodeView> = s.snapshot.nodes.iter().map(|n| (**n).clone()).collect();
        nodes.extend(fleet("n", 1, 4, "east", "row1"));
        let p = preview(&pool(), &s.batch, &nodes);
        assert_eq!(p.waves[0].domains, ["n-clique-000", "n-clique-001"]);
        assert_agrees(pool(), s.batch.clone(), nodes);
    }

    /// A node of a random fleet: healthy, or broken in one of the ways the
    /// static checks catch.
    fn broken(node: &mut NodeView, how: u8) {
        match how {
            0 => set_gpus(node, 2),
            1 => {
                node.conditions.insert("GpuXidError".into(), "True".into());
            }
            2 => {
                node.labels
                    .insert(crate::keys::GPU_PRODUCT.into(), "NVIDIA-H100".into());
            }
            3 => node.unschedulable = true,
            _ => {}
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]
        #[test]
        fn the_preview_agrees_with_the_planner_on_random_fleets(
            sizes in proptest::collection::vec(1usize..=5, 1..8),
            breakage in proptest::collection::vec(0u8..12, 40),
            waves in proptest::collection::vec((any::<bool>(), 1u32..=100), 1..4),
            min_healthy in 1u32..=4,
        ) {
            let mut nodes = Vec::new();
            for (d, &size) in sizes.iter().enumerate() {
                for n in 0..size {
                    nodes.push(healthy_node(
                        &format!("n-{d}-{n}"),
                        &format!("clique-{}", (d * 7) % 10),
                        "east",
                        "row1",
                    ));
                }
            }
            for (node, &how) in nodes.iter_mut().zip(&breakage) {
                broken(node, how);
            }
            let mut pool = pool();
            pool.spec.topology.min_healthy_nodes_per_domain = Some(min_healthy);
            let mut batch = batch();
            batch.spec.waves = waves
                .iter()
                .map(|&(by_nodes, v)| crate::api::Wave {
                    nodes: by_nodes.then_some(v % 12 + 1),
                    percent: (!by_nodes).then_some(v),
                })
                .collect();
            assert_agrees(pool, batch, nodes);
        }
    }
}
