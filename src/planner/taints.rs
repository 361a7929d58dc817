//! The onboarding taint: put on when a node starts, kept while it is between
//! start and verdict (put back if someone removed it), taken off when the
//! node is admitted.

use crate::keys;
use crate::vocabulary::EventReason;

use super::snapshot::{format_taints, parse_taints};

use super::state::Planner;
use super::{EventTarget, TaintChange};

impl Planner<'_> {
    /// Whether member `m` should carry the pool's onboarding taint; the
    /// member must already have a patch (a transition made it). gpufleet
    /// records on the node (`gpufleet.io/taint`) each taint it adds and,
    /// when the node already carried the pool's taint, that it added none;
    /// it removes only what it recorded adding. Without a record (someone
    /// removed it, or an older gpufleet started the node) it removes
    /// nothing: a taint it cannot show it added stays. The record this plan
    /// made counts over the node's (started and admitted in one plan).
    pub(super) fn set_taint(&mut self, m: usize, present: bool) {
        let taint = &self.pool.spec.onboarding.taint;
        let (key, effect) = (taint.key.clone(), taint.effect.as_str().to_string());
        let view = self.members[m].view;
        let has = view.has_taint(&key, &effect);
        let Some(patch) = self.members[m].patch.as_mut() else {
            return;
        };
        let recorded = match patch.annotations.get(keys::TAINT) {
            Some(planned) => planned.as_deref().map(parse_taints),
            None => view.taints_added.clone(),
        };
        if present {
            patch.taint = if has {
                TaintChange::Keep
            } else {
                TaintChange::Add
            };
            let mut added = recorded.clone().unwrap_or_default();
            if !has && !added.contains(&(key.clone(), effect.clone())) {
                added.push((key, effect));
            }
            if recorded.as_ref() != Some(&added) {
                patch
                    .annotations
                    .insert(keys::TAINT, Some(format_taints(&added)));
            }
            return;
        }
        let removals = recorded.unwrap_or_default();
        let present_ones: Vec<(String, String)> = removals
            .into_iter()
            .filter(|(k, e)| view.has_taint(k, e))
            .collect();
        patch.taint = if present_ones.is_empty() {
            TaintChange::Keep
        } else {
            TaintChange::Remove
        };
        patch.taint_removals = present_ones;
        // Also drops a record this same plan made (started and admitted at
        // once: the taint was never written).
        if view.taints_added.is_some() || patch.annotations.contains_key(keys::TAINT) {
            patch.annotations.insert(keys::TAINT, None);
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
                EventTarget::Node(view.name.to_string()),
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
