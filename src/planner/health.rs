//! Static health verdicts: what a node's own labels, conditions and resources
//! say about it, before and while it is validated.

use std::cmp::Ordering;
use std::fmt;

use crate::api::GpuPoolSpec;
use crate::keys;

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
}

impl FailureCategory {
    /// Every category.
    pub const ALL: [FailureCategory; 10] = [
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
    use FailureCategory::*;
    match node.conditions.get("Ready").map(String::as_str) {
        Some("True") => {}
        Some(status) => {
            return Some(Failure::booting(
                NotReady,
                format!("node is not Ready (Ready={status})"),
            ));
        }
        None => {
            return Some(Failure::booting(
                NotReady,
                "node has no Ready condition yet",
            ));
        }
    }
    for unhealthy in &pool.health_checks.unhealthy_conditions {
        if node.conditions.get(&unhealthy.type_).map(String::as_str)
            == Some(unhealthy.status.as_str())
        {
            return Some(Failure::new(
                UnhealthyCondition,
                format!(
                    "condition {} is {}",
                    unhealthy.type_,
                    unhealthy.status.as_str()
                ),
            ));
        }
    }
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
