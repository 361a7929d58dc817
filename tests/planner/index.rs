//! The node cache against the plain data it stands for, differentially:
//!
//! - a node's interned labels read exactly as the map they were made from,
//!   and any selector matches them exactly as it matches the map;
//! - the cache updated event by event (changes, deletions, relists, in any
//!   order) holds exactly what a cache built once from the final nodes
//!   holds, and the planner plans the same from either.

use std::collections::BTreeMap;

use gpufleet::operator::{NodeCache, view_event};
use gpufleet::planner::{Labels, Snapshot, matches, plan};
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement};
use kube::runtime::watcher::Event;
use proptest::prelude::*;

use crate::fixtures::{batch, pool, t0};

/// Keys and values from small sets, so that maps share pairs, selectors
/// name keys that are present and absent, and values collide.
fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("gpufleet.io/pool".to_string()),
        Just("nvidia.com/gpu.clique".to_string()),
        Just("nvidia.com/gpu.product".to_string()),
        Just("a".to_string()),
        Just("b/c".to_string()),
        "[a-z.]{1,6}(/[a-z]{1,3})?",
    ]
}

fn value() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("p".to_string()),
        Just("".to_string()),
        Just("NVIDIA-GB200".to_string()),
        "[a-z0-9]{0,4}",
    ]
}

fn labels() -> impl Strategy<Value = BTreeMap<String, String>> {
    prop::collection::btree_map(key(), value(), 0..8)
}

fn selector() -> impl Strategy<Value = LabelSelector> {
    let requirement = (
        key(),
        prop_oneof![
            Just("In"),
            Just("NotIn"),
            Just("Exists"),
            Just("DoesNotExist"),
            Just("Gt")
        ],
        prop::collection::vec(value(), 0..3),
    )
        .prop_map(|(key, op, values)| LabelSelectorRequirement {
            key,
            operator: op.into(),
            values: Some(values),
        });
    (
        prop::option::of(prop::collection::btree_map(key(), value(), 0..3)),
        prop::option::of(prop::collection::vec(requirement, 0..3)),
    )
        .prop_map(|(match_labels, match_expressions)| LabelSelector {
            match_labels,
            match_expressions,
        })
}

/// A node of the fixtures' pool and batch with these extra labels (a
/// random clique among them) and its Ready condition.
fn node(name: &str, extra: &BTreeMap<String, String>, ready: bool) -> Node {
    let mut labels = extra.clone();
    labels.insert("gpufleet.io/pool".into(), "east".into());
    labels.insert("gpufleet.io/batch".into(), "row1".into());
    labels
        .entry("nvidia.com/gpu.clique".into())
        .or_insert_with(|| "c0".into());
    labels.insert("nvidia.com/gpu.product".into(), "NVIDIA-GB200".into());
    labels.insert("nvidia.com/gpu.count".into(), "4".into());
    serde_json::from_value(serde_json::json!({
        "metadata": {"name": name, "labels": labels},
        "status": {
            "allocatable": {"nvidia.com/gpu": "4"},
            "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" },
                            "lastTransitionTime": "2026-01-01T00:00:00Z"}],
        },
    }))
    .expect("a node")
}

/// What happens to the node watch.
#[derive(Clone, Debug)]
enum Step {
    /// Node `n` added or changed.
    Apply(usize, BTreeMap<String, String>, bool),
    /// Node `n` deleted.
    Delete(usize),
    /// The watch lists again: every node the model holds, then done.
    Relist,
    /// A relist cut off before its end (the watch restarts): the cache
    /// keeps what it had.
    BrokenRelist,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        6 => (0..12usize, labels(), any::<bool>()).prop_map(|(n, l, r)| Step::Apply(n, l, r)),
        2 => (0..12usize).prop_map(Step::Delete),
        1 => Just(Step::Relist),
        1 => Just(Step::BrokenRelist),
    ]
}

fn name(n: usize) -> String {
    format!("n{n:02}")
}

fn snapshot(cache: &NodeCache) -> Snapshot {
    Snapshot {
        nodes: cache.select(|_| true),
        ..Default::default()
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn interned_labels_read_as_the_map_they_came_from(
        map in labels(),
        probe in key(),
        selector in selector(),
    ) {
        let interned = Labels::from(&map);
        prop_assert_eq!(interned.len(), map.len());
        prop_assert_eq!(interned.get(&probe), map.get(&probe).map(String::as_str));
        let mut pairs: Vec<_> = interned.iter().collect();
        pairs.sort();
        prop_assert!(pairs.into_iter().eq(map.iter().map(|(k, v)| (k.as_str(), v.as_str()))));
        prop_assert_eq!(interned.to_map(), map.clone());
        prop_assert_eq!(matches(&selector, &interned), matches(&selector, &map));
        let rebuilt: Labels = map.iter().rev().collect();
        prop_assert_eq!(&rebuilt, &interned);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn the_cache_updated_event_by_event_equals_the_cache_rebuilt(
        steps in prop::collection::vec(step(), 1..40),
    ) {
        let cache = NodeCache::default();
        let mut write = cache.writer();
        // The nodes as the API server holds them after each step.
        let mut model: BTreeMap<String, Node> = BTreeMap::new();
        // The cache is empty until the first complete list.
        let mut listed = false;
        for step in &steps {
            match step {
                Step::Apply(n, labels, ready) => {
                    let node = node(&name(*n), labels, *ready);
                    model.insert(name(*n), node.clone());
                    write(&view_event(Event::Apply(node)));
                }
                Step::Delete(n) => {
                    if let Some(node) = model.remove(&name(*n)) {
                        write(&view_event(Event::Delete(node)));
                    }
                }
                Step::Relist => {
                    write(&view_event(Event::Init));
                    for node in model.values() {
                        write(&view_event(Event::InitApply(node.clone())));
                    }
                    write(&view_event(Event::InitDone));
                    listed = true;
                }
                Step::BrokenRelist => {
                    write(&view_event(Event::Init));
                    for node in model.values().take(1) {
                        write(&view_event(Event::InitApply(node.clone())));
                    }
                }
            }
        }
        // A cut-off relist leaves its buffer; the next list starts over.
        // Finish with a list if the last one broke, as the watch would.
        if matches!(steps.last(), Some(Step::BrokenRelist)) || !listed {
            write(&view_event(Event::Init));
            for node in model.values() {
                write(&view_event(Event::InitApply(node.clone())));
            }
            write(&view_event(Event::InitDone));
        }

        let rebuilt = NodeCache::default();
        let mut fill = rebuilt.writer();
        fill(&view_event(Event::Init));
        for node in model.values() {
            fill(&view_event(Event::InitApply(node.clone())));
        }
        fill(&view_event(Event::InitDone));

        let updated = snapshot(&cache);
        let fresh = snapshot(&rebuilt);
        let names = |s: &Snapshot| s.nodes.iter().map(|n| n.name.clone()).collect::<Vec<_>>();
        prop_assert_eq!(names(&updated), names(&fresh));
        for (a, b) in updated.nodes.iter().zip(&fresh.nodes) {
            prop_assert_eq!(&**a, &**b);
        }
        let (pool, batch) = (pool(), batch());
        prop_assert_eq!(
            format!("{:?}", plan(&pool, &batch, &updated, t0())),
            format!("{:?}", plan(&pool, &batch, &fresh, t0()))
        );
    }
}
