//! Letting go: nodes this batch started that are no longer its members
//! (their labels changed) and that nobody else claims are released in the
//! safe state, as a deleted batch leaves them. Ready nodes stay ready; the
//! others keep the onboarding taint and lose the state label, so a new batch
//! can pick them up.

use std::collections::BTreeSet;

use crate::keys;

use super::snapshot::{NodeState, NodeView};
use super::state::Planner;
use super::{NodePatch, TaintChange};

/// The patch that leaves a node safe when its batch lets go of it: the state
/// label and rollout annotations go, the onboarding taint stays. The write
/// is conditional on the version of `node` seen.
pub fn release(node: &NodeView) -> NodePatch {
    NodePatch {
        node: node.name.to_string(),
        state: None,
        annotations: [
            keys::BATCH,
            keys::BATCH_UID,
            keys::WAVE,
            keys::SINCE,
            keys::STARTED,
            keys::ATTEMPT,
            keys::REASON,
            keys::RECORDED_STATE,
        ]
        .into_iter()
        .map(|k| (k, None))
        .collect(),
        taint: TaintChange::Keep,
        taint_removals: Vec::new(),
        failure: None,
        leave_state: false,
        resource_version: node.resource_version.as_deref().map(str::to_owned),
    }
}

impl Planner<'_> {
    /// The release patches of the nodes this batch let go of.
    pub(super) fn departed(&self) -> Vec<NodePatch> {
        let batch_name = self.batch_name();
        let conflicted: BTreeSet<&str> = self
            .conflicts
            .iter()
            .map(|(name, _)| name.as_str())
            .collect();
        self.snapshot
            .nodes
            .iter()
            .zip(&self.is_member)
            .filter(|(_, member)| !**member)
            .map(|(n, _)| n)
            .filter(|n| n.state.is_some() && n.state() != NodeState::Ready && !n.deleting)
            // Admitted once: in service, left alone (`provenance.rs`).
            .filter(|n| n.admitted.is_none())
            .filter(|n| n.batch.as_deref() == Some(batch_name))
            .filter(|n| !conflicted.contains(n.name.as_str()))
            .map(|n| release(n))
            .collect()
    }
}
