//! Builds a probe pod from the pool's template: bound to its node, tolerating
//! the onboarding taint, owned by the batch, named deterministically, in the
//! probe namespace as the probe ServiceAccount, with no API token unless the
//! pool asks for one.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    EnvVar, Pod, PodResourceClaim, PodSpec, ResourceClaim, Toleration,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use k8s_openapi::jiff::Timestamp;
use kube::Resource;

use crate::api::{GpuPool, RolloutBatch};
use crate::keys;
use crate::planner::ProbeRequest;

use super::context::Probes;

/// Label on probe pods naming their batch (a hash when the name is too long
/// for a label value).
pub const BATCH_LABEL: &str = "gpufleet.io/batch";

/// The value of [`BATCH_LABEL`] for a batch name.
pub fn batch_label_value(batch: &str) -> String {
    if batch.len() <= 63 {
        return batch.to_string();
    }
    let hash = keys::stable_hash(batch.as_bytes());
    format!("{}-{hash:016x}", &batch[..40])
}

/// The claim on a group's ComputeDomain channel in its pods.
pub const CHANNEL_CLAIM: &str = "compute-domain-channel";

/// The ComputeDomain of a rack test group's run: its pods' names without
/// the rank.
pub fn compute_domain_name(group: &crate::planner::GroupMember) -> String {
    let first = group.peers.first().map(String::as_str).unwrap_or_default();
    first
        .rsplit_once('-')
        .map_or(first, |(run, _rank)| run)
        .to_string()
}

/// An owner reference to a group's first pod: what it owns goes with it.
fn owned_by(owner: &Pod) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "name": owner.metadata.name,
        "uid": owner.metadata.uid,
        "blockOwnerDeletion": false,
    })
}

/// The ComputeDomain of a rack test group (NVIDIA's DRA driver), owned by
/// the group's first pod so that it goes with the pods.
pub fn compute_domain(
    group: &crate::planner::GroupMember,
    namespace: &str,
    owner: &Pod,
) -> serde_json::Value {
    let name = compute_domain_name(group);
    serde_json::json!({
        "apiVersion": "resource.nvidia.com/v1beta1",
        "kind": "ComputeDomain",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {keys::MANAGED_BY: keys::MANAGER, keys::GROUP: group.group},
            "ownerReferences": [owned_by(owner)],
        },
        "spec": {
            "numNodes": group.peers.len(),
            "channel": {"resourceClaimTemplate": {"name": format!("{name}-channel")}},
        },
    })
}

/// Label on every probe and rack test pod: a hash of its name (names may
/// be longer than a label value), so that finished pods are deleted many
/// at once by a label selector.
pub const PROBE_LABEL: &str = "gpufleet.io/probe";

/// The value of [`PROBE_LABEL`] for a pod name and the node's run it was
/// made for: a delete by this label never takes a later run's pod at the
/// same name (which a lagging pod cache may not show yet). Without a run,
/// the name alone (as gpufleet labelled its pods before runs were in it).
pub fn probe_label_value(pod_name: &str, run: Option<Timestamp>) -> String {
    let hash = match run {
        Some(run) => keys::stable_hash(format!("{pod_name}\n{run}").as_bytes()),
        None => keys::stable_hash(pod_name.as_bytes()),
    };
    format!("{hash:016x}")
}

/// Label on a rack test group's pods naming their run (the group's
/// ComputeDomain and headless Service are named the same).
pub const GROUP_RUN_LABEL: &str = "gpufleet.io/group-run";

/// The headless Service of a rack test group's run: its pods resolve as
/// `<pod>.<service>` in the probe namespace, ready or not (a rank waits for
/// its peers before it is ready). Owned by the group's first pod.
pub fn group_service(
    group: &crate::planner::GroupMember,
    namespace: &str,
    owner: &Pod,
) -> serde_json::Value {
    let name = compute_domain_name(group);
    serde_json::json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {keys::MANAGED_BY: keys::MANAGER, keys::GROUP: group.group},
            "ownerReferences": [owned_by(owner)],
        },
        "spec": {
            "clusterIP": "None",
            "publishNotReadyAddresses": true,
            "selector": {GROUP_RUN_LABEL: name},
        },
    })
}

/// The probe pod for `request`, in the probe namespace. `None` when the pool
/// has no probe (the planner never asks for one then).
pub fn probe_pod(
    pool: &GpuPool,
    batch: &RolloutBatch,
    request: &ProbeRequest,
    probes: &Probes,
) -> Option<Pod> {
    // A rack test pod comes from the domain test's template; its account
    // and token follow the probe's rules.
    let token = pool
        .spec
        .health_checks
        .probe
        .as_ref()
        .is_some_and(|p| p.service_account_token);
    let (template, deadline) = match &request.group {
        None => {
            let probe = pool.spec.health_checks.probe.as_ref()?;
            (&probe.template, probe.timeout_seconds)
        }
        Some(_) => {
            let test = pool.spec.health_checks.domain_test.as_ref()?;
            (test.template.as_ref()?, test.timeout())
        }
    };
    let batch_name = batch.metadata.name.clone().unwrap_or_default();
    let mut meta: ObjectMeta = template.metadata.clone().unwrap_or_default();
    let labels = meta.labels.get_or_insert_with(BTreeMap::new);
    labels.insert(keys::MANAGED_BY.into(), keys::MANAGER.into());
    labels.insert(BATCH_LABEL.into(), batch_label_value(&batch_name));
    // The planner takes a pod at a probe's name as this batch's probe only
    // when it carries this batch's UID (a UID fits a label value).
    if let Some(uid) = batch.metadata.uid.as_ref() {
        labels.insert(keys::BATCH_UID.into(), uid.clone());
    }
    if let Some(group) = &request.group {
        labels.insert(keys::GROUP.into(), group.group.clone());
    }
    labels.insert(
        PROBE_LABEL.into(),
        probe_label_value(&request.pod_name, request.run),
    );
    let annotations = meta.annotations.get_or_insert_with(BTreeMap::new);
    annotations.insert(keys::ATTEMPT.into(), request.attempt.to_string());
    annotations.insert(keys::BATCH.into(), batch_name.clone());
    annotations.insert("gpufleet.io/node".into(), request.node.clone());
    if let Some(run) = request.run {
        annotations.insert(keys::STARTED.into(), run.to_string());
    }
    meta.name = Some(request.pod_name.clone());
    meta.generate_name = None;
    meta.namespace = Some(probes.namespace.clone());
    meta.owner_references = batch.controller_owner_ref(&()).map(|owner| {
        vec![OwnerReference {
            block_owner_deletion: Some(false),
            ..owner
        }]
    });

    let mut spec: PodSpec = template.spec.clone().unwrap_or_default();
    spec.node_name = Some(request.node.clone());
    // Who the probe runs as is gpufleet's to say, never the template's: the
    // CRD refuses a template that names an account or sets the token, and a
    // pool stored before that rule is overridden here. A probe in the
    // operator's namespace as its ServiceAccount would carry gpufleet's
    // rights to every node it onboards.
    spec.service_account_name = Some(probes.service_account.clone());
    spec.service_account = None;
    spec.automount_service_account_token = Some(token);
    // A probe runs once: its exit code is the verdict.
    spec.restart_policy = Some("Never".into());
    // The kubelet stops a probe that overruns; the planner times it out too.
    spec.active_deadline_seconds = Some(i64::from(deadline));
    // A rack test pod with a ComputeDomain claims its channel.
    if let (Some(group), true) = (
        &request.group,
        pool.spec
            .health_checks
            .domain_test
            .as_ref()
            .is_some_and(|t| t.compute_domain),
    ) {
        let domain = compute_domain_name(group);
        let claims = spec.resource_claims.get_or_insert_with(Vec::new);
        claims.retain(|c| c.name != CHANNEL_CLAIM);
        claims.push(PodResourceClaim {
            name: CHANNEL_CLAIM.into(),
            resource_claim_template_name: Some(format!("{domain}-channel")),
            resource_claim_name: None,
        });
        for container in spec.containers.iter_mut() {
            let resources = container.resources.get_or_insert_with(Default::default);
            let used = resources.claims.get_or_insert_with(Vec::new);
            if !used.iter().any(|c| c.name == CHANNEL_CLAIM) {
                used.push(ResourceClaim {
                    name: CHANNEL_CLAIM.into(),
                    request: None,
                });
            }
        }
    }
    // A rack test pod learns its group from its environment, and is found
    // by its peers at `<pod>.<service>` (the group's headless Service).
    if let Some(group) = &request.group {
        let service = compute_domain_name(group);
        spec.hostname = Some(request.pod_name.clone());
        spec.subdomain = Some(service.clone());
        if let Some(labels) = meta.labels.as_mut() {
            labels.insert(GROUP_RUN_LABEL.into(), service.clone());
        }
        let hosts: Vec<String> = group
            .peers
            .iter()
            .map(|pod| format!("{pod}.{service}"))
            .collect();
        let env = [
            ("GPUFLEET_GROUP", group.group.clone()),
            ("GPUFLEET_GROUP_SIZE", group.peers.len().to_string()),
            ("GPUFLEET_RANK", group.rank.to_string()),
            ("GPUFLEET_PEERS", group.peers.join(",")),
            ("GPUFLEET_PEER_NODES", group.peer_nodes.join(",")),
            ("GPUFLEET_PEER_HOSTS", hosts.join(",")),
        ];
        for container in spec
            .init_containers
            .iter_mut()
            .flatten()
            .chain(spec.containers.iter_mut())
        {
            let vars = container.env.get_or_insert_with(Vec::new);
            vars.retain(|v| !env.iter().any(|(k, _)| v.name == *k));
            vars.extend(env.iter().map(|(k, v)| EnvVar {
                name: k.to_string(),
                value: Some(v.clone()),
                value_from: None,
            }));
        }
    }
    let taint = &pool.spec.onboarding.taint;
    let tolerations = spec.tolerations.get_or_insert_with(Vec::new);
    let tolerated = tolerations.iter().any(|t| {
        t.operator.as_deref() == Some("Exists") && t.key.is_none() && t.effect.is_none()
            || t.key.as_deref() == Some(taint.key.as_str())
                && t.effect
                    .as_deref()
                    .is_none_or(|e| e == taint.effect.as_str())
    });
    if !tolerated {
        tolerations.push(Toleration {
            key: Some(taint.key.clone()),
            operator: Some("Exists".into()),
            effect: Some(taint.effect.as_str().into()),
            ..Default::default()
        });
    }
    Some(Pod {
        metadata: meta,
        spec: Some(spec),
        status: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_probes_delete_label_names_its_run() {
        let name = "gpufleet-probe-n1-1";
        let first: Timestamp = "2026-12-02T10:00:00Z".parse().unwrap();
        let second: Timestamp = "2026-12-02T11:00:00Z".parse().unwrap();
        // Two runs of a node at the same pod name: a delete by the first
        // run's label never takes the second run's pod.
        assert_ne!(
            probe_label_value(name, Some(first)),
            probe_label_value(name, Some(second))
        );
        // Without a run: the name alone, as pods were labelled before.
        assert_eq!(
            probe_label_value(name, None),
            format!("{:016x}", keys::stable_hash(name.as_bytes()))
        );
        assert_eq!(probe_label_value(name, Some(first)).len(), 16);
    }

    fn fixtures() -> (GpuPool, RolloutBatch) {
        let pool: GpuPool = serde_norway::from_str(
            r#"
apiVersion: gpufleet.io/v1alpha1
kind: GpuPool
metadata: {name: east}
spec:
  nodeSelector: {}
  hardware: {gpuProduct: [NVIDIA-GB200], gpusPerNode: 4}
  healthChecks:
    probe:
      timeoutSeconds: 120
      template:
        metadata: {labels: {app: burn-in}}
        spec:
          restartPolicy: Always
          tolerations: [{key: other, operator: Exists}]
          containers: [{name: burn-in, image: busybox, command: [sh, -c, "exit 0"]}]
"#,
        )
        .unwrap();
        let batch: RolloutBatch = serde_norway::from_str(
            r#"
apiVersion: gpufleet.io/v1alpha1
kind: RolloutBatch
metadata: {name: row12, uid: 0b0e8c5a-1111-2222-3333-444455556666}
spec: {poolRef: east, nodeSelector: {}, waves: [{percent: 100}]}
"#,
        )
        .unwrap();
        (pool, batch)
    }

    #[test]
    fn the_probe_is_bound_tolerant_owned_and_named() {
        let (pool, batch) = fixtures();
        let req = ProbeRequest {
            pod_name: "gpufleet-probe-n1-2".into(),
            node: "n1".into(),
            attempt: 2,
            run: None,
            group: None,
        };
        let pod = probe_pod(&pool, &batch, &req, &probes()).unwrap();
        let meta = &pod.metadata;
        assert_eq!(meta.name.as_deref(), Some("gpufleet-probe-n1-2"));
        assert_eq!(meta.namespace.as_deref(), Some("gpufleet-probes"));
        let labels = meta.labels.as_ref().unwrap();
        assert_eq!(labels["app"], "burn-in");
        assert_eq!(labels[keys::MANAGED_BY], "gpufleet");
        assert_eq!(labels[BATCH_LABEL], "row12");
        assert_eq!(
            labels[keys::BATCH_UID],
            "0b0e8c5a-1111-2222-3333-444455556666"
        );
        assert_eq!(meta.annotations.as_ref().unwrap()[keys::ATTEMPT], "2");
        let owner = &meta.owner_references.as_ref().unwrap()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.name.as_str()),
            ("RolloutBatch", "row12")
        );
        assert_eq!(owner.controller, Some(true));
        let view = crate::planner::ProbeView::from(&pod);
        assert!(view.made_by(Some("0b0e8c5a-1111-2222-3333-444455556666")));
        let spec = pod.spec.unwrap();
        assert_eq!(spec.node_name.as_deref(), Some("n1"));
        assert_eq!(spec.restart_policy.as_deref(), Some("Never"));
        assert_eq!(spec.active_deadline_seconds, Some(120));
        let tolerations = spec.tolerations.unwrap();
        assert_eq!(
            tolerations.len(),
            2,
            "the template's own toleration is kept"
        );
        assert!(
            tolerations
                .iter()
                .any(|t| t.key.as_deref() == Some("gpufleet.io/onboarding")
                    && t.effect.as_deref() == Some("NoSchedule"))
        );
    }

    fn probes() -> Probes {
        Probes::in_namespace("gpufleet-probes")
    }

    fn request() -> ProbeRequest {
        ProbeRequest {
            pod_name: "gpufleet-probe-n1-1".into(),
            node: "n1".into(),
            attempt: 1,
            run: None,
            group: None,
        }
    }

    #[test]
    fn the_probe_runs_as_the_probe_account_without_a_token() {
        let (pool, batch) = fixtures();
        let spec = probe_pod(&pool, &batch, &request(), &probes())
            .unwrap()
            .spec
            .unwrap();
        assert_eq!(spec.service_account_name.as_deref(), Some("gpufleet-probe"));
        assert_eq!(spec.automount_service_account_token, Some(false));
    }

    #[test]
    fn a_pool_that_opts_in_gets_a_token() {
        let (mut pool, batch) = fixtures();
        pool.spec
            .health_checks
            .probe
            .as_mut()
            .unwrap()
            .service_account_token = true;
        let spec = probe_pod(&pool, &batch, &request(), &probes())
            .unwrap()
            .spec
            .unwrap();
        assert_eq!(spec.service_account_name.as_deref(), Some("gpufleet-probe"));
        assert_eq!(spec.automount_service_account_token, Some(true));
    }

    /// A pool stored before the CRD refused it (or by a writer past the
    /// CRD) names gpufleet's own account: the probe does not run as it.
    #[test]
    fn the_templates_account_and_token_are_overridden() {
        let (mut pool, batch) = fixtures();
        let template = &mut pool.spec.health_checks.probe.as_mut().unwrap().template;
        let spec = template.spec.as_mut().unwrap();
        spec.service_account_name = Some("gpufleet".into());
        spec.service_account = Some("gpufleet".into());
        spec.automount_service_account_token = Some(true);
        assert!(pool.validate().is_err(), "the pool checks refuse it too");
        let spec = probe_pod(&pool, &batch, &request(), &probes())
            .unwrap()
            .spec
            .unwrap();
        assert_eq!(spec.service_account_name.as_deref(), Some("gpufleet-probe"));
        assert_eq!(spec.service_account, None);
        assert_eq!(spec.automount_service_account_token, Some(false));
    }

    /// A token mounted by hand counts as a token: the pool checks refuse
    /// it unless the pool opts in (the CRD has the same rule).
    #[test]
    fn a_projected_token_needs_the_opt_in() {
        let (mut pool, _) = fixtures();
        let probe = pool.spec.health_checks.probe.as_mut().unwrap();
        probe.template.spec.as_mut().unwrap().volumes = Some(
            serde_json::from_value(serde_json::json!([{"name": "api", "projected": {
                "sources": [{"serviceAccountToken": {"path": "token"}}]}}]))
            .unwrap(),
        );
        let err = pool.validate().unwrap_err();
        assert_eq!(err.field, "spec.healthChecks.probe.template.spec.volumes");
        pool.spec
            .health_checks
            .probe
            .as_mut()
            .unwrap()
            .service_account_token = true;
        assert_eq!(pool.validate(), Ok(()));
    }

    #[test]
    fn long_batch_names_fit_a_label() {
        let long = "b".repeat(200);
        let v = batch_label_value(&long);
        assert!(v.len() <= 63);
        assert_ne!(v, batch_label_value(&"c".repeat(200)));
    }
}
