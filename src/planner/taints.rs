//! The onboarding taint: put on when a node starts, kept while it is between
//! start and verdict (put back if someone removed it), taken off when the
//! node is admitted.

use crate::vocabulary::EventReason;

use super::state::Planner;
use super::{EventTarget, TaintChange};

impl Planner<'_> {
    /// Whether member `m` should carry the pool's onboarding taint; the
    /// member must already have a patch (a transition made it).
    pub(super) fn set_taint(&mut self, m: usize, present: bool) {
        let taint = &self.pool.spec.onboarding.taint;
        let has = self.members[m]
            .view
            .has_taint(&taint.key, taint.effect.as_str());
        if let Some(patch) = self.members[m].patch.as_mut() {
            patch.taint = match (present, has) {
                (true, false) => TaintChange::Add,
                (false, true) => TaintChange::Remove,
                _ => TaintChange::Keep,
            };
        }
    }

    /// A node between start and verdict keeps the onboarding taint: if
    /// someone removed it, put it back and say so.
    pub(super) fn restore_taints(&mut self) {
        let taint = &self.pool.spec.onboarding.taint;
        let (key, effect) = (taint.key.clone(), taint.effect.as_str());
        for m in 0..self.members.len() {
            if !self.members[m].untainted || self.members[m].retry {
                continue;
            }
            let view = self.members[m].view;
            self.patch_of(m);
            self.set_taint(m, true);
            self.event(
                EventTarget::Node(view.name.clone()),
                true,
                EventReason::TaintRestored,
                format!(
                    "the onboarding taint {key}:{effect} was removed while the node was {}; gpufleet put it back: workloads may land only once the node is admitted",
                    view.state()
                ),
            );
        }
    }
}
