//! `gpufleet.io/retry`: a person sends a failed or held node through
//! validation again, or a node that lost its ready label in service (then
//! its admission is forgotten). On any other node the request is just
//! acknowledged (the annotation removed).

use crate::keys;
use crate::vocabulary::EventReason;

use super::EventTarget;
use super::snapshot::NodeState;
use super::state::Planner;

impl Planner<'_> {
    pub(super) fn handle_retries(&mut self) {
        for m in 0..self.members.len() {
            if !self.members[m].retry {
                continue;
            }
            let view = self.members[m].view;
            let lost = view.admitted.is_some() && view.state() != NodeState::Ready;
            if lost || matches!(view.state(), NodeState::Failed | NodeState::Held) {
                self.transition(
                    m,
                    NodeState::Pending,
                    &[
                        (keys::RETRY, None),
                        (keys::REASON, None),
                        (keys::ATTEMPT, None),
                        (keys::ADMITTED, None),
                    ],
                );
                self.event(
                    EventTarget::Batch,
                    false,
                    EventReason::NodeRetried,
                    format!("node {} goes through validation again", view.name),
                );
                self.event(
                    EventTarget::Node(view.name.to_string()),
                    false,
                    EventReason::NodeRetried,
                    "a person asked for a retry: the node goes through validation again".into(),
                );
            } else {
                self.patch_of(m).annotations.insert(keys::RETRY, None);
            }
        }
    }
}
