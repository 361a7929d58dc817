//! Membership and domains: which nodes a batch holds, grouped into domains
//! in a stable order, each domain placed in a wave. One pass, shared by the
//! planner and the preview, so the two cannot disagree on who is a member or
//! which wave takes a domain.
//!
//! Rules (docs/architecture.md, "Membership"):
//! - a member matches the batch's selector AND the pool's, is not being
//!   deleted, and is claimed by no other pool and no other batch of its pool;
//!   a node claimed twice is left alone and reported;
//! - members are grouped by the pool's domain label (a node without a domain
//!   label in use is its own domain) and ordered by (domain key, node name);
//! - a domain this batch already started stays in the wave it was started
//!   in; the others take the wave [`super::waves::assign`] gives them.

use std::borrow::{Borrow, Cow};
use std::ops::Range;

use rustc_hash::FxHashMap;
use serde::Serialize;

use crate::api::{GpuPool, RolloutBatch, Topology};

use super::selector::matches;
use super::snapshot::{Claim, NodeState, NodeView};
use super::waves::{self, domain_key_ref};

/// Healthy nodes a domain needs to be admitted: 1 for a node that is its own
/// domain, else `minHealthyNodesPerDomain` (default `nodesPerDomain`).
pub fn needed_healthy(topology: &Topology, domain_key: &str) -> u32 {
    if waves::is_solo(domain_key) {
        1
    } else {
        topology
            .min_healthy_nodes_per_domain
            .unwrap_or(topology.nodes_per_domain)
    }
}

/// Who else claims a node of `pool`: other pools whose selector matches its
/// labels, and other batches of the same pool whose selector matches, as
/// "pool NAME" / "batch NAME", sorted. Empty: the node is not contested.
pub fn claimants<'c>(
    pool: &str,
    labels: &(impl super::labels::LabelSource + ?Sized),
    other_pools: impl IntoIterator<Item = &'c Claim>,
    other_batches: impl IntoIterator<Item = &'c Claim>,
) -> Vec<String> {
    let mut claimants: Vec<String> = other_pools
        .into_iter()
        .filter(|c| matches(&c.selector, labels))
        .map(|c| format!("pool {}", c.name))
        .collect();
    claimants.extend(
        other_batches
            .into_iter()
            .filter(|c| c.pool.as_deref() == Some(pool) && matches(&c.selector, labels))
            .map(|c| format!("batch {}", c.name)),
    );
    claimants.sort();
    claimants
}

/// Did this batch write the node's state? Its UID beside the state says so.
/// The batch's name alone is not enough: anyone who can write the node can
/// write a name, so a node started before gpufleet recorded UIDs is
/// validated again. Only a batch without a UID (built by hand, in
/// simulations; never one from the API server) goes by its name.
fn wrote(node: &NodeView, batch_name: &str, batch_uid: Option<&str>) -> bool {
    let named = node.batch.as_deref() == Some(batch_name);
    match (node.batch_uid.as_deref(), batch_uid) {
        (Some(recorded), Some(uid)) => named && recorded == uid,
        (None, None) => named,
        (None, Some(_)) | (Some(_), None) => false,
    }
}

/// Why a node of the input is not a member of the batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum Mismatch {
    /// Matches the batch's selector but not the pool's: the operator ignores
    /// it, which is usually a labelling mistake.
    BatchOnly,
    /// Matches the pool's selector but not the batch's: another batch's node.
    PoolOnly,
    /// Matches neither selector.
    Neither,
    /// Being deleted: the planner ignores it.
    Deleting,
    /// Admitted once, then its `ready` label was removed or changed by
    /// someone else: left alone in service (see `Membership::lost`).
    LostState,
}

impl Mismatch {
    /// Why, in words.
    pub fn reason(self) -> &'static str {
        match self {
            Mismatch::BatchOnly => {
                "matches the batch's selector but not the pool's: gpufleet ignores it; label it for the pool"
            }
            Mismatch::PoolOnly => "matches the pool's selector but not the batch's",
            Mismatch::Neither => "matches neither the pool's nor the batch's selector",
            Mismatch::Deleting => "is being deleted",
            Mismatch::LostState => {
                "was admitted, then lost its ready label: left alone in service; label it gpufleet.io/state=ready, or annotate gpufleet.io/retry to validate it again"
            }
        }
    }
}

/// One member, in its place.
#[derive(Clone, Copy)]
pub struct Placed<'a> {
    pub view: &'a NodeView,
    /// Its state as the node says it, when this batch wrote it; pending
    /// when the state is foreign (see `foreign`).
    pub state: NodeState,
    /// The node's state label says it is in progress, failed or held, but
    /// not for this batch (another batch's UID, none, or another batch's
    /// name): it was moved here mid-rollout, re-registered, or someone else
    /// wrote the label. Its validation starts again under this batch.
    pub foreign: Option<NodeState>,
    /// Its domain, by place in [`Membership::domains`].
    pub domain: u32,
}

/// One domain of the batch.
pub struct Domain {
    /// The domain label's value; `/NAME` for a node that is its own domain.
    pub key: String,
    /// Its members, by place in [`Membership::members`].
    pub members: Range<usize>,
    /// Ready nodes of this domain in the whole pool (any batch).
    pub ready_in_pool: u32,
    /// Nodes of this domain, not ready, that another batch of the pool
    /// selects: the domain is split, and is never admitted piecemeal.
    pub split: u32,
    /// The wave that takes it, from 0.
    pub wave: usize,
}

/// The batch's members, domains and waves.
pub struct Membership<'a> {
    /// Every node of the pool that is not being deleted.
    pub pool_nodes: Vec<&'a NodeView>,
    /// By place in the input: is that node a member?
    pub is_member: Vec<bool>,
    /// Nodes claimed twice: name, and who else claims them ("batch b2").
    pub conflicts: Vec<(String, String)>,
    /// Nodes of the batch that gpufleet admitted and whose state label
    /// someone has since removed or changed (`gpufleet.io/admitted` with a
    /// state other than ready), by place in the input: they are in service,
    /// so they are left alone (never re-tainted, never re-probed) until a
    /// person labels them ready again or asks for a retry.
    pub lost: Vec<usize>,
    /// Members, ordered by (domain key, name).
    pub members: Vec<Placed<'a>>,
    /// Domains, ordered by key.
    pub domains: Vec<Domain>,
    /// Waves of the batch (at least 1).
    pub wave_count: usize,
    /// Each wave's cumulative node target before rounding to domains.
    pub targets: Vec<u32>,
    /// With `report`: nodes of the input that are not members, and why.
    pub outsiders: Vec<(usize, Mismatch)>,
}

/// A domain's facts, gathered in the one pass over the nodes.
#[derive(Default)]
struct Group {
    members: u32,
    ready_in_pool: u32,
    /// See [`Domain::split`].
    elsewhere: u32,
    /// The lowest `gpufleet.io/wave` of its members this batch started.
    started_in: Option<u32>,
}

/// Groups by domain key. Keys are copied once per domain: looking one up
/// then compares it with a key in the map's own (small, cached) memory
/// rather than with a label of some node far away in memory.
#[derive(Default)]
struct Groups {
    /// Keyed with FxHash: the planner hashes one key per node, and SipHash,
    /// the standard map's default, took about 10 ms of a 137,500-node plan
    /// (BENCHMARKS.md). Its defence against crafted keys is not needed:
    /// domain keys are node labels, set by the cluster's own components.
    index: FxHashMap<String, usize>,
    list: Vec<Group>,
}

impl Groups {
    /// The index of the group of `key`, made if new.
    fn get(&mut self, key: Cow<str>) -> usize {
        match self.index.get(key.as_ref()) {
            Some(&g) => g,
            None => {
                self.index.insert(key.into_owned(), self.list.len());
                self.list.push(Group::default());
                self.list.len() - 1
            }
        }
    }
}

/// A member before it takes its place.
#[derive(Clone, Copy)]
struct Candidate<'a> {
    group: u32,
    name: [u8; 32],
    view: &'a NodeView,
    state: NodeState,
    foreign: Option<NodeState>,
}

/// The first 32 bytes of a name, zero-padded. Wherever two prefixes
/// differ, they order as the names do; where they are equal, the names
/// decide. (Bytes, not numbers: a record aligned to 8 bytes is smaller.)
fn name_prefix(name: &str) -> [u8; 32] {
    let mut prefix = [0u8; 32];
    let n = name.len().min(32);
    prefix[..n].copy_from_slice(&name.as_bytes()[..n]);
    prefix
}

impl<'a> Membership<'a> {
    /// Gathers the members of `batch` of `pool` among `nodes`, with the
    /// claims of other pools and batches. With `report`, non-members are
    /// listed with why (the preview shows them; the planner does not ask).
    ///
    /// One pass over the nodes reads everything needed from each node's
    /// labels, name and annotations while they are in the CPU's cache: over
    /// a large pool they do not all fit, and every further pass over them
    /// would cost a trip to memory per node.
    pub fn gather<N: Borrow<NodeView>>(
        pool: &GpuPool,
        batch: &RolloutBatch,
        nodes: &'a [N],
        other_pools: &[Claim],
        other_batches: &[Claim],
        report: bool,
    ) -> Self {
        let pool_name = pool.metadata.name.as_deref().unwrap_or_default();
        let batch_name = batch.metadata.name.as_deref().unwrap_or_default();
        let batch_uid = batch.metadata.uid.as_deref();
        let domain_label = &pool.spec.topology.domain_label;
        let mut pool_nodes = Vec::with_capacity(nodes.len());
        let mut is_member = vec![false; nodes.len()];
        let mut conflicts = Vec::new();
        let mut lost = Vec::new();
        let mut outsiders = Vec::new();
        let mut groups = Groups::default();
        // At most one candidate a node: reserved once, not grown by
        // doubling (a grown vector of a 137,500-node pool held room for
        // 262,144 and copied itself on the way).
        let mut candidates: Vec<Candidate> = Vec::with_capacity(nodes.len());
        for (i, node) in nodes.iter().enumerate() {
            let node: &'a NodeView = node.borrow();
            let in_pool = !node.deleting && matches(&pool.spec.node_selector, &node.labels);
            if !in_pool {
                if report {
                    let in_batch = matches(&batch.spec.node_selector, &node.labels);
                    outsiders.push((
                        i,
                        match (node.deleting, in_batch) {
                            (true, _) => Mismatch::Deleting,
                            (false, true) => Mismatch::BatchOnly,
                            (false, false) => Mismatch::Neither,
                        },
                    ));
                }
                continue;
            }
            pool_nodes.push(node);
            let recorded = node.state();
            let in_batch = matches(&batch.spec.node_selector, &node.labels);
            let admitted_once = node.admitted.is_some() && recorded != NodeState::Ready;
            // Ready nodes are never demoted, whoever admitted them.
            // One that lost its label in service and that a person asked to
            // retry starts again from pending (`retry.rs`).
            // A label rewritten alone (the state gpufleet recorded beside
            // it differs) is foreign too.
            let foreign = (in_batch
                && !admitted_once
                && !matches!(recorded, NodeState::Pending | NodeState::Ready)
                && (!wrote(node, batch_name, batch_uid) || node.recorded_state != Some(recorded)))
            .then_some(recorded);
            let state = if foreign.is_some() || (in_batch && admitted_once) {
                NodeState::Pending
            } else {
                recorded
            };
            if !in_batch && report {
                outsiders.push((i, Mismatch::PoolOnly));
            }
            if !in_batch && state != NodeState::Ready {
                // Another batch's node: its domain is split if this batch
                // holds part of it (a group with no member of this batch
                // becomes no domain).
                let other_batch = other_batches.iter().any(|c| {
                    c.pool.as_deref() == Some(pool_name) && matches(&c.selector, &node.labels)
                });
                if other_batch {
                    let g = groups.get(domain_key_ref(domain_label, &node.name, &node.labels));
                    groups.list[g].elsewhere += 1;
                }
                continue;
            }
            let g = groups.get(domain_key_ref(domain_label, &node.name, &node.labels));
            let group = &mut groups.list[g];
            if state == NodeState::Ready {
                group.ready_in_pool += 1;
            }
            if !in_batch {
                continue;
            }
            let claimed_by = claimants(pool_name, &node.labels, other_pools, other_batches);
            if !claimed_by.is_empty() {
                conflicts.push((node.name.to_string(), claimed_by.join(", ")));
                continue;
            }
            if admitted_once && !node.retry {
                lost.push(i);
                if report {
                    outsiders.push((i, Mismatch::LostState));
                }
                continue;
            }
            is_member[i] = true;
            group.members += 1;
            if let (true, Some(wave)) = (
                state != NodeState::Pending && node.batch.as_deref() == Some(batch_name),
                node.wave,
            ) {
                group.started_in = Some(group.started_in.map_or(wave, |w| w.min(wave)));
            }
            candidates.push(Candidate {
                group: g as u32,
                name: name_prefix(&node.name),
                view: node,
                state,
                foreign,
            });
        }
        conflicts.sort();
        let (members, domains, started_in) = place(groups, candidates);

        // Waves: natural assignment, then domains already started stay put.
        let wave_count = batch.spec.waves.len().max(1);
        let sizes: Vec<u32> = domains.iter().map(|d| d.members.len() as u32).collect();
        let targets = waves::raw_targets(&batch.spec.waves, members.len() as u32);
        let natural = waves::assign(
            &sizes,
            if targets.is_empty() {
                &[u32::MAX]
            } else {
                &targets
            },
        );
        let mut domains = domains;
        for (d, domain) in domains.iter_mut().enumerate() {
            domain.wave = started_in[d]
                .map(|w| (w.max(1) as usize - 1).min(wave_count - 1))
                .unwrap_or(natural[d]);
        }
        Membership {
            pool_nodes,
            is_member,
            conflicts,
            lost,
            members,
            domains,
            wave_count,
            targets,
            outsiders,
        }
    }
}

/// Orders domains by key and members by (domain key, name): the domains with
/// members sorted by key, their members placed in that order (keeping input
/// order), then each domain's few members sorted by name. The same order as
/// one stable sort of all members by (key, name), with far fewer string
/// comparisons. Returns the members, the domains (wave 0 for now) and the
/// wave each domain was started in by this batch, if any.
fn place<'a>(
    groups: Groups,
    candidates: Vec<Candidate<'a>>,
) -> (Vec<Placed<'a>>, Vec<Domain>, Vec<Option<u32>>) {
    let Groups { index, list } = groups;
    let mut keys: Vec<(String, usize)> = index
        .into_iter()
        .filter(|&(_, g)| list[g].members > 0)
        .collect();
    keys.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    let mut start = vec![0usize; list.len()];
    let mut domain_of_group = vec![0u32; list.len()];
    let mut next = 0;
    for (d, &(_, g)) in keys.iter().enumerate() {
        start[g] = next;
        domain_of_group[g] = d as u32;
        next += list[g].members as usize;
    }
    let mut placed: Vec<Option<Candidate>> = vec![None; candidates.len()];
    for c in candidates {
        let at = &mut start[c.group as usize];
        placed[*at] = Some(c);
        *at += 1;
    }
    let mut placed: Vec<Candidate> = placed.into_iter().flatten().collect();
    let mut domains = Vec::with_capacity(keys.len());
    let mut started_in = Vec::with_capacity(keys.len());
    let mut at = 0;
    for (key, g) in keys {
        let size = list[g].members as usize;
        // Stable: nodes of the same name keep their input order.
        placed[at..at + size].sort_by(|a, b| {
            a.name
                .cmp(&b.name)
                .then_with(|| a.view.name.cmp(&b.view.name))
        });
        domains.push(Domain {
            key,
            members: at..at + size,
            ready_in_pool: list[g].ready_in_pool,
            split: list[g].elsewhere,
            wave: 0,
        });
        started_in.push(list[g].started_in);
        at += size;
    }
    let members = placed
        .into_iter()
        .map(|c| Placed {
            view: c.view,
            state: c.state,
            foreign: c.foreign,
            domain: domain_of_group[c.group as usize],
        })
        .collect();
    (members, domains, started_in)
}
