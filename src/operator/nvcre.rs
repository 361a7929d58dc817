//! The rack test run by NVIDIA's Cluster Readiness Engine
//! (`healthChecks.domainTest.nvcre`): per group, a Certification
//! (`nvcre.nvidia.com/v1alpha1`) in the probe namespace whose target is the
//! group's nodes, at the intra-rack scale; its result read back as the
//! planner's [`CertView`].
//!
//! NVCRE keeps no per-node lists on the Certification (an object is at most
//! about 1 MiB): each category's status names a ConfigMap whose
//! `failed-nodes.json.gz` holds the failed nodes, gzipped JSON
//! `[{name, reason, message}]`. gpufleet reads it once per finished
//! Certification (a GET, before planning) and keeps what it read; a
//! ConfigMap that is missing or does not decode is said on the batch
//! (`RackTestUnreadable`), never taken as a pass.

use std::collections::{BTreeMap, HashMap};
use std::io::Read;
use std::sync::Mutex;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind};
use kube::runtime::reflector::Store;
use kube::{Resource, ResourceExt};
use serde_json::{Value, json};

use crate::api::{DomainTest, RolloutBatch};
use crate::keys;
use crate::planner::{CertOutcome, CertRequest, CertView, FailedNode};

use super::probe::{BATCH_LABEL, batch_label_value};

/// NVCRE's API group and version.
pub const GROUP_VERSION: (&str, &str) = ("nvcre.nvidia.com", "v1alpha1");
/// The ConfigMap key NVCRE writes the failed nodes under.
pub const FAILED_NODES_KEY: &str = "failed-nodes.json.gz";
/// The most a failed-nodes list may take once unzipped: 72 trays with
/// long messages is well under 1 MiB; anything past this is refused.
const MAX_UNZIPPED: u64 = 4 << 20;

/// The Certification kind.
pub fn resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk(GROUP_VERSION.0, GROUP_VERSION.1, "Certification"),
        "certifications",
    )
}

/// The Certification for a group: NVCRE's NCCL test over exactly the
/// group's nodes, one job at the intra-rack scale, owned by the batch.
pub fn certification(
    batch: &RolloutBatch,
    request: &CertRequest,
    namespace: &str,
    test: &DomainTest,
) -> Option<DynamicObject> {
    let nvcre = test.nvcre.as_ref()?;
    let batch_name = batch.metadata.name.clone().unwrap_or_default();
    let mut labels = BTreeMap::from([
        (keys::MANAGED_BY.to_string(), keys::MANAGER.to_string()),
        (BATCH_LABEL.to_string(), batch_label_value(&batch_name)),
        (keys::GROUP.to_string(), request.group.clone()),
    ]);
    if let Some(uid) = &batch.metadata.uid {
        labels.insert(keys::BATCH_UID.into(), uid.clone());
    }
    let mut options = json!({
        "testScale": "intra-rack",
        "nodesPerJob": request.nodes.len(),
    });
    if let Some(floor) = nvcre.min_bus_bandwidth_gbps {
        options["thresholds"] = json!({"busBandwidthGBps": format!("value >= {floor}")});
    }
    let body = json!({
        "apiVersion": format!("{}/{}", GROUP_VERSION.0, GROUP_VERSION.1),
        "kind": "Certification",
        "metadata": {
            "name": request.name,
            "namespace": namespace,
            "labels": labels,
            "annotations": {keys::BATCH: batch_name},
            "ownerReferences": batch.controller_owner_ref(&()).map(|mut owner| {
                owner.block_owner_deletion = Some(false);
                vec![owner]
            }),
        },
        "spec": {
            "target": {"nodeNames": request.nodes},
            "enableMNNVL": nvcre.mnnvl.unwrap_or(true),
            "categories": [{
                "domain": "communication",
                "variant": nvcre.variant(),
                "options": options,
            }],
        },
    });
    serde_json::from_value(body).ok()
}

/// What gpufleet read of finished Certifications' failed nodes, by the
/// Certification's UID and the ConfigMap's name.
#[derive(Default)]
pub struct Results(Mutex<HashMap<(String, String), Outcome>>);

/// What was read of one ConfigMap: the failed nodes, or why not.
type Outcome = Result<Vec<FailedNode>, String>;

impl Results {
    fn get(&self, key: &(String, String)) -> Option<Outcome> {
        self.0.lock().expect("results").get(key).cloned()
    }

    /// Forgets what was read of Certifications no longer in `store`.
    fn retain(&self, store: &Store<DynamicObject>) {
        let live: std::collections::HashSet<String> =
            store.state().iter().filter_map(|c| c.uid()).collect();
        self.0
            .lock()
            .expect("results")
            .retain(|(uid, _), _| live.contains(uid));
    }
}

/// The status's finishing condition: (passed, its message), if finished.
fn finished(cert: &DynamicObject) -> Option<(bool, String)> {
    let conditions = cert.data["status"]["conditions"].as_array()?;
    let is_true = |kind: &str| {
        conditions
            .iter()
            .find(|c| c["type"] == kind && c["status"] == "True")
    };
    let (passed, condition) = match (is_true("Failed"), is_true("Succeeded")) {
        (Some(c), _) => (false, c),
        (None, Some(c)) => (true, c),
        (None, None) => return None,
    };
    let words = |k: &str| condition[k].as_str().unwrap_or_default().to_string();
    let message = match (words("reason"), words("message")) {
        (r, m) if m.is_empty() => r,
        (r, m) if r.is_empty() => m,
        (r, m) => format!("{r}: {m}"),
    };
    Some((passed, plain(&message)))
}

/// The ConfigMaps a finished Certification names for its failed nodes.
fn failed_refs(cert: &DynamicObject) -> Vec<String> {
    cert.data["status"]["categoryStatuses"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| c["failedNodesRef"]["name"].as_str())
        .filter(|n| !n.is_empty())
        .map(String::from)
        .collect()
}

/// The planner's view of one Certification, with what was read of its
/// failed nodes (a finished one whose lists were not read yet is still
/// running to the planner: they are read before it plans).
pub fn view(cert: &DynamicObject, results: &Results) -> CertView {
    let labels = cert.labels();
    let size = cert.data["spec"]["target"]["nodeNames"]
        .as_array()
        .map_or(0, |n| n.len() as u32);
    let outcome = match finished(cert) {
        None => CertOutcome::Running,
        Some((passed, message)) => {
            let uid = cert.uid().unwrap_or_default();
            let mut failed = Vec::new();
            let mut outcome = None;
            for name in failed_refs(cert) {
                match results.get(&(uid.clone(), name)) {
                    None => outcome = Some(CertOutcome::Running),
                    Some(Err(why)) => outcome = Some(CertOutcome::Unreadable(why)),
                    Some(Ok(nodes)) => failed.extend(nodes),
                }
                if outcome.is_some() {
                    break;
                }
            }
            outcome.unwrap_or(CertOutcome::Finished {
                passed,
                failed,
                message,
            })
        }
    };
    CertView {
        name: cert.name_any(),
        group: labels.get(keys::GROUP).cloned(),
        batch_uid: labels.get(keys::BATCH_UID).cloned(),
        created: cert.metadata.creation_timestamp.as_ref().map(|t| t.0),
        size,
        deleting: cert.metadata.deletion_timestamp.is_some(),
        outcome,
    }
}

/// The Certifications of the batch with this UID.
pub fn of_batch(
    store: &Store<DynamicObject>,
    uid: Option<&str>,
) -> Vec<std::sync::Arc<DynamicObject>> {
    store
        .state()
        .into_iter()
        .filter(|c| c.labels().get(keys::BATCH_UID).map(String::as_str) == uid)
        .collect()
}

/// Reads the failed nodes of this batch's finished Certifications not read
/// yet. A ConfigMap that is gone or does not decode is remembered as
/// unreadable; an API server that does not answer is an error (the
/// reconcile is tried again).
pub async fn read_results(
    client: &kube::Client,
    namespace: &str,
    store: &Store<DynamicObject>,
    results: &Results,
    uid: Option<&str>,
) -> kube::Result<()> {
    results.retain(store);
    let maps: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
    for cert in of_batch(store, uid) {
        if finished(&cert).is_none() {
            continue;
        }
        let cert_uid = cert.uid().unwrap_or_default();
        for name in failed_refs(&cert) {
            let key = (cert_uid.clone(), name.clone());
            if results.get(&key).is_some() {
                continue;
            }
            let read = match maps.get_opt(&name).await? {
                None => Err(format!("ConfigMap {name} does not exist")),
                Some(map) => decode(&map).map_err(|e| format!("ConfigMap {name}: {e}")),
            };
            results.0.lock().expect("results").insert(key, read);
        }
    }
    Ok(())
}

/// The failed nodes in one of NVCRE's ConfigMaps.
pub fn decode(map: &ConfigMap) -> Result<Vec<FailedNode>, String> {
    let zipped = map
        .binary_data
        .as_ref()
        .and_then(|d| d.get(FAILED_NODES_KEY))
        .ok_or_else(|| format!("no binaryData {FAILED_NODES_KEY}"))?;
    let mut text = Vec::new();
    flate2::read::GzDecoder::new(zipped.0.as_slice())
        .take(MAX_UNZIPPED + 1)
        .read_to_end(&mut text)
        .map_err(|e| format!("{FAILED_NODES_KEY} is not gzip: {e}"))?;
    if text.len() as u64 > MAX_UNZIPPED {
        return Err(format!(
            "{FAILED_NODES_KEY} unzips to more than {} MiB",
            MAX_UNZIPPED >> 20
        ));
    }
    let nodes: Vec<FailedNode> = serde_json::from_slice(&text)
        .map_err(|e| format!("{FAILED_NODES_KEY} is not a list of failed nodes: {e}"))?;
    Ok(nodes
        .into_iter()
        .map(|n| FailedNode {
            name: n.name,
            reason: plain(&n.reason),
            message: plain(&n.message),
        })
        .collect())
}

/// Text from NVCRE on one line, without control characters (it ends up in
/// annotations, conditions and terminals).
fn plain(text: &str) -> String {
    text.chars()
        .map(|c| if c == '\n' || c == '\t' { ' ' } else { c })
        .filter(|c| !c.is_control())
        .collect()
}

/// Encodes failed nodes as NVCRE does (for its stand-in and tests).
pub fn encode(nodes: &[Value]) -> Vec<u8> {
    use std::io::Write;
    let mut zipped = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    let text = serde_json::to_vec(nodes).unwrap_or_default();
    let _ = zipped.write_all(&text);
    zipped.finish().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use k8s_openapi::ByteString;

    use super::*;

    fn map(bytes: Vec<u8>) -> ConfigMap {
        ConfigMap {
            binary_data: Some(BTreeMap::from([(
                FAILED_NODES_KEY.into(),
                ByteString(bytes),
            )])),
            ..Default::default()
        }
    }

    #[test]
    fn failed_nodes_round_trip_and_bad_ones_are_refused_with_why() {
        let nodes = vec![json!({"name": "r01-n07", "reason": "ThresholdViolation",
            "message": "Threshold \"busBandwidthGBps\" violated: measured 412.0000, expression: value >= 800\u{1b}[31m"})];
        let read = decode(&map(encode(&nodes))).expect("decodes");
        assert_eq!(read.len(), 1);
        assert_eq!(read[0].name, "r01-n07");
        assert_eq!(read[0].reason, "ThresholdViolation");
        assert!(!read[0].message.contains('\u{1b}'), "{:?}", read[0].message);
        let err = decode(&map(b"not gzip".to_vec())).unwrap_err();
        assert!(err.contains("not gzip"), "{err}");
        let err = decode(&map(encode(&[json!({"nom": 1})]))).unwrap_err();
        assert!(err.contains("not a list of failed nodes"), "{err}");
        let err = decode(&ConfigMap::default()).unwrap_err();
        assert!(err.contains("no binaryData"), "{err}");
        // A gzip bomb: 64 MiB of zeros in a few KB.
        let bomb = {
            use std::io::Write;
            let mut z = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
            z.write_all(&vec![b' '; 64 << 20]).unwrap();
            z.finish().unwrap()
        };
        let err = decode(&map(bomb)).unwrap_err();
        assert!(err.contains("more than 4 MiB"), "{err}");
    }

    #[test]
    fn a_certification_reads_as_running_until_its_failed_nodes_are_read() {
        let cert: DynamicObject = serde_json::from_value(json!({
            "apiVersion": "nvcre.nvidia.com/v1alpha1", "kind": "Certification",
            "metadata": {"name": "c", "uid": "u1", "labels": {keys::GROUP: "g", keys::BATCH_UID: "b"}},
            "spec": {"target": {"nodeNames": ["a", "b", "c"]}},
            "status": {
                "conditions": [{"type": "Failed", "status": "True", "reason": "CategoryFailed", "message": "1 node failed"}],
                "categoryStatuses": [{"domain": "communication", "variant": "nccl-all-reduce",
                    "status": "Failed", "failedNodesRef": {"kind": "ConfigMap", "name": "c-failed"}}]
            }
        }))
        .unwrap();
        let results = Results::default();
        let view1 = view(&cert, &results);
        assert_eq!(view1.outcome, CertOutcome::Running);
        assert_eq!(view1.size, 3);
        assert_eq!(view1.group.as_deref(), Some("g"));
        results.0.lock().unwrap().insert(
            ("u1".into(), "c-failed".into()),
            Ok(vec![FailedNode {
                name: "a".into(),
                reason: "HardwareFailureDetected".into(),
                message: "node cordoned".into(),
            }]),
        );
        match view(&cert, &results).outcome {
            CertOutcome::Finished {
                passed,
                failed,
                message,
            } => {
                assert!(!passed);
                assert_eq!(failed.len(), 1);
                assert_eq!(message, "CategoryFailed: 1 node failed");
            }
            other => panic!("{other:?}"),
        }
    }
}
