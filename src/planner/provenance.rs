//! Provenance of a node's state: a state label counts only when this batch
//! wrote it (its UID beside it, `gpufleet.io/batch-uid`). A node moved here
//! from another pool or batch mid-rollout, a node deleted and registered
//! again, or a label someone else wrote (`kubectl label`, a kubelet's
//! `--node-labels`) sends the node back to pending: it is validated again
//! under this batch, and never moves forward on such a label. Ready nodes
//! are left alone, and so are nodes gpufleet admitted that lost their ready
//! label since (`gpufleet.io/admitted`). docs/architecture.md has the
//! threat model.

use crate::keys;
use crate::vocabulary::EventReason;

use super::snapshot::NodeState;
use super::state::Planner;
use super::{EventTarget, NodePatch, TaintChange};

impl Planner<'_> {
    /// Nodes gpufleet admitted whose ready label someone removed or
    /// changed since: they are in service, and re-onboarding them would
    /// taint them (a NoExecute taint evicts their jobs) and probe them under
    /// load. They are left alone; each is told why once (its reason
    /// annotation, an event), and the batch's `LostState` condition lists
    /// them. Labelling one ready again, or a retry, ends it.
    pub(super) fn left_in_service(&mut self) -> Vec<NodePatch> {
        let mut patches = Vec::new();
        for view in self.lost.clone() {
            let reason = format!(
                "admitted at {}, then its state label became {}: left in service, untouched; label it {}=ready to keep it, or annotate {} to validate it again",
                view.admitted
                    .get()
                    .map(|t| t.to_string())
                    .unwrap_or_default(),
                view.state.map_or("absent", |s| s.as_str()),
                keys::STATE,
                keys::RETRY,
            );
            if view.reason.as_deref() == Some(reason.as_str()) {
                continue;
            }
            patches.push(NodePatch {
                node: view.name.to_string(),
                state: view.state,
                annotations: [(keys::REASON, Some(reason.clone()))].into_iter().collect(),
                taint: TaintChange::Keep,
                taint_removals: Vec::new(),
                failure: None,
                leave_state: true,
                resource_version: view.resource_version.as_deref().map(str::to_owned),
            });
            self.event(
                EventTarget::Node(view.name.to_string()),
                true,
                EventReason::StateLost,
                reason,
            );
        }
        patches
    }

    pub(super) fn reset_foreign_states(&mut self) {
        for m in 0..self.members.len() {
            let Some(claimed) = self.members[m].foreign else {
                continue;
            };
            let view = self.members[m].view;
            let reason = format!(
                "its state label said {claimed}, which batch {} did not write; validating it again",
                self.batch_name()
            );
            self.transition(
                m,
                NodeState::Pending,
                &[
                    (keys::REASON, Some(reason.clone())),
                    (keys::BATCH, None),
                    (keys::BATCH_UID, None),
                    (keys::WAVE, None),
                    (keys::ATTEMPT, None),
                    (keys::STARTED, None),
                ],
            );
            self.event(
                EventTarget::Node(view.name.to_string()),
                true,
                EventReason::ForeignState,
                reason,
            );
        }
    }
}
