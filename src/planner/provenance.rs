//! Provenance of a node's state: a state label counts only when this batch
//! wrote it (its UID beside it, `gpufleet.io/batch-uid`). A node moved here
//! from another pool or batch mid-rollout, a node deleted and registered
//! again, or a label someone else wrote (`kubectl label`, a kubelet's
//! `--node-labels`) sends the node back to pending: it is validated again
//! under this batch, and never moves forward on such a label. Ready nodes
//! are left alone. docs/architecture.md has the threat model.

use crate::keys;
use crate::vocabulary::EventReason;

use super::EventTarget;
use super::snapshot::NodeState;
use super::state::Planner;

impl Planner<'_> {
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
                EventTarget::Node(view.name.clone()),
                true,
                EventReason::ForeignState,
                reason,
            );
        }
    }
}
