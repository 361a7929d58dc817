//! Label selectors, evaluated as the API server does.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

use super::labels::LabelSource;

/// Does `selector` select a node with these labels? An empty selector
/// selects everything; an unknown operator selects nothing.
pub fn matches(selector: &LabelSelector, labels: &(impl LabelSource + ?Sized)) -> bool {
    let labels_match = selector
        .match_labels
        .iter()
        .flatten()
        .all(|(k, v)| labels.label(k) == Some(v.as_str()));
    labels_match
        && selector.match_expressions.iter().flatten().all(|req| {
            let value = labels.label(&req.key);
            let values = req.values.as_deref().unwrap_or_default();
            match req.operator.as_str() {
                "In" => value.is_some_and(|v| values.iter().any(|x| x == v)),
                "NotIn" => value.is_none_or(|v| !values.iter().any(|x| x == v)),
                "Exists" => value.is_some(),
                "DoesNotExist" => value.is_none(),
                _ => false,
            }
        })
}

/// The selector as `kubectl get -l` and the API's `labelSelector` spell it;
/// `None` if it cannot be written so (an unknown operator).
pub fn to_query(selector: &LabelSelector) -> Option<String> {
    let mut parts: Vec<String> = selector
        .match_labels
        .iter()
        .flatten()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    for req in selector.match_expressions.iter().flatten() {
        let values = req.values.as_deref().unwrap_or_default().join(",");
        parts.push(match req.operator.as_str() {
            "In" => format!("{} in ({values})", req.key),
            "NotIn" => format!("{} notin ({values})", req.key),
            "Exists" => req.key.clone(),
            "DoesNotExist" => format!("!{}", req.key),
            _ => return None,
        });
    }
    Some(parts.join(","))
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;
    use std::collections::BTreeMap;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn expr(key: &str, op: &str, values: &[&str]) -> LabelSelector {
        LabelSelector {
            match_expressions: Some(vec![LabelSelectorRequirement {
                key: key.into(),
                operator: op.into(),
                values: Some(values.iter().map(|v| v.to_string()).collect()),
            }]),
            ..Default::default()
        }
    }

    #[test]
    fn match_labels_and_expressions() {
        let node = labels(&[("pool", "east"), ("row", "12")]);
        let by_label = LabelSelector {
            match_labels: Some(labels(&[("pool", "east")])),
            ..Default::default()
        };
        assert!(matches(&by_label, &node));
        assert!(!matches(&by_label, &labels(&[("pool", "west")])));
        assert!(matches(&LabelSelector::default(), &node));
        assert!(matches(&expr("row", "In", &["11", "12"]), &node));
        assert!(!matches(&expr("row", "NotIn", &["12"]), &node));
        assert!(matches(&expr("rack", "NotIn", &["1"]), &node));
        assert!(matches(&expr("row", "Exists", &[]), &node));
        assert!(matches(&expr("rack", "DoesNotExist", &[]), &node));
        assert!(!matches(&expr("row", "Gt", &["1"]), &node));
    }

    #[test]
    fn query_strings() {
        let sel = LabelSelector {
            match_labels: Some(labels(&[("gpufleet.io/pool", "east")])),
            match_expressions: Some(vec![LabelSelectorRequirement {
                key: "row".into(),
                operator: "In".into(),
                values: Some(vec!["11".into(), "12".into()]),
            }]),
        };
        assert_eq!(
            to_query(&sel).as_deref(),
            Some("gpufleet.io/pool=east,row in (11,12)")
        );
    }
}
