//! The soak: a node whose probe passed must stay healthy (its static checks
//! keep passing) for `soakSeconds`; then it has passed and waits for its
//! domain. A held node is re-checked the same way on every plan.

use k8s_openapi::jiff::SignedDuration;

use super::snapshot::NodeState;
use super::state::Planner;

impl Planner<'_> {
    pub(super) fn check_soaking_or_held(&mut self, m: usize) {
        if let Some(failure) = self.static_check(m) {
            return self.fail(m, failure);
        }
        if self.members[m].state == NodeState::Held {
            self.members[m].passed = true;
            return;
        }
        let soak = SignedDuration::from_secs(i64::from(self.pool.spec.health_checks.soak_seconds));
        let since = if self.members[m].patch.is_some() {
            self.now
        } else {
            self.members[m].view.since.unwrap_or(self.now)
        };
        let done_at = since + soak;
        if self.now >= done_at {
            self.members[m].passed = true;
        } else {
            self.wake_at(done_at);
        }
    }
}
