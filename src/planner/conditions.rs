//! Conditions as the Kubernetes API conventions describe them: keyed by
//! `type`, with a one-word CamelCase reason, and a `lastTransitionTime` that
//! only moves when the status flips.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;

use crate::vocabulary::{ConditionType, Reason};

/// Builds a condition, keeping the previous `lastTransitionTime` when the
/// status did not change.
pub fn condition(
    previous: &[Condition],
    type_: ConditionType,
    status: bool,
    reason: Reason,
    message: String,
    generation: Option<i64>,
    now: Timestamp,
) -> Condition {
    let status = if status { "True" } else { "False" };
    let type_ = type_.as_str();
    let last_transition_time = previous
        .iter()
        .find(|c| c.type_ == type_ && c.status == status)
        .map(|c| c.last_transition_time.clone())
        .unwrap_or(Time(now));
    Condition {
        type_: type_.into(),
        status: status.into(),
        reason: reason.as_str().into(),
        message,
        observed_generation: generation,
        last_transition_time,
    }
}

/// Is the condition of this type present and True?
pub fn is_true(conditions: &[Condition], type_: ConditionType) -> bool {
    conditions
        .iter()
        .any(|c| c.type_ == type_.as_str() && c.status == "True")
}

/// The reason of the condition of this type, if present.
pub fn reason(conditions: &[Condition], type_: ConditionType) -> Option<&str> {
    conditions
        .iter()
        .find(|c| c.type_ == type_.as_str())
        .map(|c| c.reason.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transition_time_moves_only_when_status_flips() {
        let t0: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        let t1: Timestamp = "2026-01-01T01:00:00Z".parse().unwrap();
        let first = condition(
            &[],
            ConditionType::Ready,
            false,
            Reason::WaveInProgress,
            "a".into(),
            Some(1),
            t0,
        );
        let same = condition(
            std::slice::from_ref(&first),
            ConditionType::Ready,
            false,
            Reason::WaitingForApproval,
            "b".into(),
            Some(2),
            t1,
        );
        assert_eq!(same.last_transition_time, Time(t0));
        assert_eq!(same.reason, "WaitingForApproval");
        let flipped = condition(
            &[same],
            ConditionType::Ready,
            true,
            Reason::RolloutComplete,
            "c".into(),
            Some(2),
            t1,
        );
        assert_eq!(flipped.last_transition_time, Time(t1));
    }
}
