//! Static health verdicts: what a node's own labels, conditions and resources
//! say about it, before and while it is validated.

use std::cmp::Ordering;
use std::fmt;

use crate::api::GpuPoolSpec;
use crate::keys;

use k8s_openapi::jiff::{SignedDuration, Timestamp};

use super::snapshot::NodeView;

/// Why a node failed or is held, in a small fixed set: metric and event
/// labels stay bounded, while the message carries the details.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FailureCategory {
    NotReady,
    UnhealthyCondition,
    WrongProduct,
    WrongGpuCount,
    DriverTooOld,
    MissingDomainLabel,
    Cordoned,
    ProbeFailed,
    ProbeTimeout,
    DomainIncomplete,
    VerdictInvalid,
    FabricIncomplete,
    FirmwareMismatch,
    RackTestFailed,
}

impl FailureCategory {
    /// Every category.
    pub const ALL: [FailureCategory; 14] = [
        FailureCategory::NotReady,
        FailureCategory::UnhealthyCondition,
        FailureCategory::WrongProduct,
        FailureCategory::WrongGpuCount,
        FailureCategory::DriverTooOld,
        FailureCategory::MissingDomainLabel,
        FailureCategory::Cordoned,
        FailureCategory::ProbeFailed,
        FailureCategory::ProbeTimeout,
        FailureCategory::DomainIncomplete,
        FailureCategory::VerdictInvalid,
        FailureCategory::FabricIncomplete,
        FailureCategory::FirmwareMismatch,
        FailureCategory::RackTestFailed,
    ];

    /// The snake_case label value used in metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            FailureCategory::NotReady => "not_ready",
            FailureCategory::UnhealthyCondition => "unhealthy_condition",
            FailureCategory::WrongProduct => "wrong_product",
            FailureCategory::WrongGpuCount => "wrong_gpu_count",
            FailureCategory::DriverTooOld => "driver_too_old",
            FailureCategory::MissingDomainLabel => "missing_domain_label",
            FailureCategory::Cordoned => "cordoned",
            FailureCategory::ProbeFailed => "probe_failed",
            FailureCategory::ProbeTimeout => "probe_timeout",
            FailureCategory::DomainIncomplete => "domain_incomplete",
            FailureCategory::VerdictInvalid => "verdict_invalid",
            FailureCategory::FabricIncomplete => "fabric_incomplete",
            FailureCategory::FirmwareMismatch => "firmware_mismatch",
            FailureCategory::RackTestFailed => "rack_test_failed",
        }
    }
}

/// A failed check: its category and a message a person can act on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    pub category: FailureCategory,
    pub message: String,
    /// The node may still be starting: not Ready yet, or not yet labelled
    /// by GPU Feature Discovery or the device plugin. A node that has not
    /// started its rollout waits for this (`startupTimeoutSeconds`).
    pub booting: bool,
}

impl Failure {
    pub fn new(category: FailureCategory, message: impl Into<String>) -> Self {
        Failure {
            category,
            message: message.into(),
            booting: false,
        }
    }

    /// A failure a node that is still starting may show.
    fn booting(category: FailureCategory, message: impl Into<String>) -> Self {
        Failure {
            booting: true,
            ..Failure::new(category, message)
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

/// The first static check the node fails, or `None` if it passes them all.
/// Checked in order: Ready, unhealthy conditions, cordon, product, GPU count
/// (label and allocatable), driver version, domain label.
pub fn static_failure(pool: &GpuPoolSpec, node: &NodeView) -> Option<Failure> {
    bad_conditions(pool, node)
        .next()
        .map(|bad| bad.failure)
        .or_else(|| resource_failure(pool, node))
}

/// A watched condition that is bad now: Ready not True, or a match of
/// `unhealthyConditions`.
struct BadCondition<'a> {
    type_: &'a str,
    failure: Failure,
    /// Seconds it may stay bad before it fails a node in progress.
    timeout: u32,
}

/// The node's bad conditions, Ready first, then `unhealthyConditions` in
/// order.
fn bad_conditions<'a>(
    pool: &'a GpuPoolSpec,
    node: &'a NodeView,
) -> impl Iterator<Item = BadCondition<'a>> + 'a {
    use FailureCategory::*;
    let default = pool.health_checks.condition_timeout();
    let ready = match node.conditions.get("Ready") {
        Some("True") => None,
        Some(status) => Some(Failure::booting(
            NotReady,
            format!("node is not Ready (Ready={status})"),
        )),
        None => Some(Failure::booting(
            NotReady,
            "node has no Ready condition yet",
        )),
    }
    .map(|failure| BadCondition {
        type_: "Ready",
        failure,
        timeout: default,
    });
    let unhealthy = pool
        .health_checks
        .unhealthy_conditions
        .iter()
        .filter(|u| node.conditions.get(&u.type_) == Some(u.status.as_str()))
        .map(move |u| BadCondition {
            type_: &u.type_,
            failure: Failure::new(
                UnhealthyCondition,
                format!("condition {} is {}", u.type_, u.status.as_str()),
            ),
            timeout: u.timeout_seconds.unwrap_or(default),
        });
    ready.into_iter().chain(unhealthy)
}

/// How a node in validation, soak or hold stands against its static checks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Standing {
    /// Every check passes; `recovered` is when its last watched condition
    /// (Ready and `unhealthyConditions`) turned good, if the reporter said.
    Healthy { recovered: Option<Timestamp> },
    /// A watched condition is bad, but for less than its timeout: the node
    /// is not admitted, and fails at `until` unless it recovers.
    Tolerated { until: Timestamp, message: String },
    /// A check fails.
    Failed(Failure),
}

/// The node's standing at `now`: a bad condition fails it only once it has
/// been bad for its timeout (`conditionTimeoutSeconds`, or the condition's
/// own), counted from its lastTransitionTime; without one, at once. Every
/// other check fails at once.
/// The condition types whose changes restart a soak: Ready and the pool's
/// unhealthy conditions.
pub(super) fn watched_conditions(pool: &GpuPoolSpec) -> impl Iterator<Item = &str> {
    std::iter::once("Ready").chain(
        pool.health_checks
            .unhealthy_conditions
            .iter()
            .map(|u| u.type_.as_str()),
    )
}

pub fn standing(pool: &GpuPoolSpec, node: &NodeView, now: Timestamp) -> Standing {
    let mut tolerated: Option<(Timestamp, String)> = None;
    for bad in bad_conditions(pool, node) {
        // A transition in the future (the reporter's clock, or a forged
        // status) counts from now.
        let since = node.condition_since.get(bad.type_).map(|s| (*s).min(now));
        let until = since.map(|s| {
            s.checked_add(SignedDuration::from_secs(i64::from(bad.timeout)))
                .unwrap_or(Timestamp::MAX)
        });
        match (since, until) {
            (Some(since), Some(until)) if bad.timeout > 0 && now < until => {
                if tolerated.as_ref().is_none_or(|(t, _)| until < *t) {
                    let message = format!(
                        "{} since {since}; fails at {until} unless it recovers",
                        bad.failure.message
                    );
                    tolerated = Some((until, message));
                }
            }
            (Some(since), _) if bad.timeout > 0 => {
                let mut failure = bad.failure;
                failure.message = format!(
                    "{} since {since}, longer than the {}s tolerated",
                    failure.message, bad.timeout
                );
                return Standing::Failed(failure);
            }
            _ => return Standing::Failed(bad.failure),
        }
    }
    if let Some(failure) = resource_failure(pool, node) {
        return Standing::Failed(failure);
    }
    if let Some((until, message)) = tolerated {
        return Standing::Tolerated { until, message };
    }
    let recovered = watched_conditions(pool)
        .filter_map(|t| node.condition_since.get(t))
        .max()
        .copied();
    Standing::Healthy { recovered }
}

/// The first check other than conditions the node fails.
fn resource_failure(pool: &GpuPoolSpec, node: &NodeView) -> Option<Failure> {
    use FailureCategory::*;
    if node.unschedulable {
        return Some(Failure::new(
            Cordoned,
            "node is cordoned (spec.unschedulable) by someone else; uncordon it, then retry",
        ));
    }
    let hw = &pool.hardware;
    match node.labels.get(keys::GPU_PRODUCT) {
        None => {
            return Some(Failure::booting(
                WrongProduct,
                format!("label {} is missing", keys::GPU_PRODUCT),
            ));
        }
        Some(product) if !hw.gpu_product.iter().any(|p| p == product) => {
            return Some(Failure::new(
                WrongProduct,
                format!(
                    "{} is {product}, pool accepts {}",
                    keys::GPU_PRODUCT,
                    hw.gpu_product.join(", ")
                ),
            ));
        }
        Some(_) => {}
    }
    let expected = hw.gpus_per_node;
    match node.labels.get(keys::GPU_COUNT) {
        None => {
            return Some(Failure::booting(
                WrongGpuCount,
                format!("label {} is missing", keys::GPU_COUNT),
            ));
        }
        Some(count) if count.parse::<u32>().ok() != Some(expected) => {
            return Some(Failure::new(
                WrongGpuCount,
                format!(
                    "label {} is {count}, pool expects {expected}",
                    keys::GPU_COUNT
                ),
            ));
        }
        Some(_) => {}
    }
    if node.allocatable_gpus != Some(expected) {
        let have = node.allocatable_gpus_raw.as_deref().unwrap_or("absent");
        let make = if node.allocatable_gpus_raw.is_none() {
            Failure::booting
        } else {
            Failure::new
        };
        return Some(make(
            WrongGpuCount,
            format!(
                "allocatable {} is {have}, pool expects {expected}",
                keys::GPU_RESOURCE
            ),
        ));
    }
    if let Some(min) = &hw.min_driver_version {
        match node.labels.get(keys::DRIVER_VERSION) {
            None => {
                return Some(Failure::booting(
                    DriverTooOld,
                    format!(
                        "label {} is missing; pool needs driver {min} or newer",
                        keys::DRIVER_VERSION
                    ),
                ));
            }
            Some(have) => match compare_versions(have, min) {
                None => {
                    return Some(Failure::new(
                        DriverTooOld,
                        format!(
                            "driver version {have:?} is not a dotted version; pool needs {min} or newer"
                        ),
                    ));
                }
                Some(Ordering::Less) => {
                    return Some(Failure::new(
                        DriverTooOld,
                        format!("driver {have} is older than {min}"),
                    ));
                }
                Some(_) => {}
            },
        }
    }
    let domain_label = &pool.topology.domain_label;
    if !domain_label.is_empty() && !node.labels.contains_key(domain_label) {
        return Some(Failure::booting(
            MissingDomainLabel,
            format!("label {domain_label} is missing; the pool groups nodes into domains by it"),
        ));
    }
    None
}

/// Compares dotted versions part by part as numbers (570.133.20 > 570.86.15;
/// a missing part counts as 0). `None` if either is not a dotted version.
pub fn compare_versions(a: &str, b: &str) -> Option<Ordering> {
    fn parts(v: &str) -> Option<Vec<u64>> {
        v.trim().split('.').map(|p| p.parse().ok()).collect()
    }
    let (a, b) = (parts(a)?, parts(b)?);
    let len = a.len().max(b.len());
    let at = |v: &[u64], i: usize| v.get(i).copied().unwrap_or(0);
    Some(
        (0..len)
            .map(|i| at(&a, i).cmp(&at(&b, i)))
            .find(|o| o.is_ne())
            .unwrap_or(Ordering::Equal),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_compare_as_numbers() {
        assert_eq!(
            compare_versions("570.133.20", "570.86.15"),
            Some(Ordering::Greater)
        );
        assert_eq!(
            compare_versions("570.86.15", "570.133.20"),
            Some(Ordering::Less)
        );
        assert_eq!(
            compare_versions("570.133.20", "570.133.20"),
            Some(Ordering::Equal)
        );
        assert_eq!(
            compare_versions("580", "570.133.20"),
            Some(Ordering::Greater)
        );
        assert_eq!(
            compare_versions("570.133", "570.133.0"),
            Some(Ordering::Equal)
        );
        assert_eq!(compare_versions("570.x", "570.1"), None);
    }
}
