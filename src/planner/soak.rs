//! The soak: a node whose probe passed must stay healthy (its static checks
//! keep passing) for `soakSeconds` on end; then it has passed and waits for
//! its domain. A watched condition that went bad and recovered restarts the
//! soak from its recovery; one that is bad fails the node after its timeout
//! (`conditionTimeoutSeconds`) and meanwhile keeps it from passing. A held
//! node is re-checked the same way on every plan.

use k8s_openapi::jiff::SignedDuration;

use crate::keys;

use super::snapshot::{NodeState, later};
use super::state::Planner;

impl Planner<'_> {
    pub(super) fn check_soaking_or_held(&mut self, m: usize) {
        self.restamp_since(m);
        let recovered = match self.check_standing(m) {
            Ok(Some(recovered)) => recovered,
            // Failed, or a condition is bad for now: not passed.
            Ok(None) | Err(()) => {
                self.members[m].passed = false;
                return;
            }
        };
        if self.members[m].state == NodeState::Held {
            self.members[m].passed = true;
            return;
        }
        let view = self.members[m].view;
        if self.members[m].patch.is_none() && view.reason.is_some() {
            // A condition that was bad has recovered: the soak's words go.
            self.patch_of(m).annotations.insert(keys::REASON, None);
        }
        let soak = SignedDuration::from_secs(i64::from(self.pool.spec.health_checks.soak_seconds));
        let since = self.since(m);
        let start = recovered.map_or(since, |r| r.max(since));
        let done_at = later(start, soak);
        if self.now >= done_at {
            self.members[m].passed = true;
        } else {
            self.wake_at(done_at);
        }
    }
}
