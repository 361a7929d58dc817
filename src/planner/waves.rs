//! Domains and waves: which node goes in which wave.
//!
//! Members are grouped into domains by the pool's domain label and ordered by
//! domain label value, then node name, so two planners given the same nodes
//! agree. Wave targets are cumulative and rounded up to whole domains; the
//! last wave covers every member; a domain is never split.

use std::borrow::Cow;

use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::labels::LabelSource;
use crate::api::Wave;

/// A domain's key. Solo nodes (no domain label in use) are their own domain;
/// their key cannot collide with a label value, which has no `/`.
pub fn domain_key(
    domain_label: &str,
    node_name: &str,
    labels: &(impl LabelSource + ?Sized),
) -> String {
    domain_key_ref(domain_label, node_name, labels).into_owned()
}

/// [`domain_key`], borrowing the label's value instead of copying it.
pub fn domain_key_ref<'a>(
    domain_label: &str,
    node_name: &str,
    labels: &'a (impl LabelSource + ?Sized),
) -> Cow<'a, str> {
    match (domain_label.is_empty(), labels.label(domain_label)) {
        (false, Some(value)) => Cow::Borrowed(value),
        _ => Cow::Owned(format!("/{node_name}")),
    }
}

/// True for the key of a one-node domain.
pub fn is_solo(key: &str) -> bool {
    key.starts_with('/')
}

/// The cumulative node target of each wave before rounding to domains.
pub fn raw_targets(waves: &[Wave], members: u32) -> Vec<u32> {
    let last = waves.len().saturating_sub(1);
    waves
        .iter()
        .enumerate()
        .map(|(i, w)| {
            if i == last {
                return members;
            }
            let target = match (w.nodes, w.percent) {
                (Some(n), _) => n,
                (None, Some(p)) => (u64::from(p) * u64::from(members)).div_ceil(100) as u32,
                (None, None) => members,
            };
            target.min(members)
        })
        .collect()
}

/// Assigns each domain (given in order, by size) to a wave (0-based): a
/// domain goes to the first wave whose target the domains before it have not
/// yet met. Returns the wave of each domain.
pub fn assign(domain_sizes: &[u32], targets: &[u32]) -> Vec<usize> {
    let mut assigned = 0u32;
    let mut wave = 0usize;
    domain_sizes
        .iter()
        .map(|&size| {
            while wave + 1 < targets.len() && assigned >= targets[wave] {
                wave += 1;
            }
            assigned += size;
            wave
        })
        .collect()
}

/// The failure budget of a wave of `wave_nodes` nodes: a count, or a percent
/// of the wave rounded down.
pub fn failure_budget(budget: Option<&IntOrString>, wave_nodes: u32) -> u32 {
    match budget {
        None => 0,
        Some(IntOrString::Int(n)) => (*n).max(0) as u32,
        Some(IntOrString::String(s)) => {
            let pct: u64 = s.trim_end_matches('%').trim().parse().unwrap_or(0);
            (pct.min(100) * u64::from(wave_nodes) / 100) as u32
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn waves(spec: &[(&str, u32)]) -> Vec<Wave> {
        spec.iter()
            .map(|(kind, v)| match *kind {
                "nodes" => Wave {
                    nodes: Some(*v),
                    percent: None,
                },
                _ => Wave {
                    nodes: None,
                    percent: Some(*v),
                },
            })
            .collect()
    }

    #[test]
    fn targets_are_cumulative_and_the_last_covers_all() {
        let w = waves(&[("nodes", 18), ("percent", 25), ("percent", 100)]);
        assert_eq!(raw_targets(&w, 216), [18, 54, 216]);
        // A last wave below 100% still covers every member.
        let w = waves(&[("percent", 10), ("percent", 50)]);
        assert_eq!(raw_targets(&w, 100), [10, 100]);
        // Percent rounds up: 25% of 10 is 3 nodes, not 2.
        let w = waves(&[("percent", 25), ("percent", 100)]);
        assert_eq!(raw_targets(&w, 10), [3, 10]);
        // A node target beyond the members is capped.
        let w = waves(&[("nodes", 500), ("percent", 100)]);
        assert_eq!(raw_targets(&w, 36), [36, 36]);
    }

    #[test]
    fn domains_are_never_split_and_targets_round_up() {
        // 12 domains of 18: wave 1 wants 18 (one domain), wave 2 wants 25%
        // of 216 = 54 (three domains), wave 3 the rest.
        let sizes = [18; 12];
        let wave_of = assign(&sizes, &[18, 54, 216]);
        assert_eq!(wave_of, [0, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2, 2]);
        // A target of 20 rounds up to two whole domains.
        assert_eq!(assign(&sizes, &[20, 216])[..3], [0, 0, 1]);
        // Uneven domains: the target is met by the first domain that crosses it.
        assert_eq!(assign(&[10, 10, 10], &[15, 30]), [0, 0, 1]);
    }

    #[test]
    fn a_wave_whose_target_is_already_met_is_empty() {
        // Wave 2's target (18) is met by wave 1's rounding (one domain of 36).
        assert_eq!(assign(&[36, 36], &[18, 18, 72]), [0, 2]);
    }

    #[test]
    fn budgets() {
        assert_eq!(failure_budget(None, 100), 0);
        assert_eq!(failure_budget(Some(&IntOrString::Int(1)), 100), 1);
        assert_eq!(
            failure_budget(Some(&IntOrString::String("5%".into())), 100),
            5
        );
        assert_eq!(
            failure_budget(Some(&IntOrString::String("5%".into())), 18),
            0
        );
        assert_eq!(
            failure_budget(Some(&IntOrString::String("100%".into())), 18),
            18
        );
    }
}
