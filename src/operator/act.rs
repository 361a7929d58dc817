//! Act: turns a plan's actions into API calls, and nothing clever. Every
//! write is idempotent, so a restart at any instant repeats nothing harmful:
//! patches set absolute values, a probe that exists is not made twice, a
//! probe that is gone is not an error. Every node patch is conditional on
//! the version the plan read: a node that changed since is left alone and
//! the batch is planned again.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt, stream};
use k8s_openapi::api::core::v1::{Node, Pod, Taint};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use serde_json::{Map, Value, json};
use tracing::{debug, warn};

use crate::api::{GpuPool, RolloutBatch, TaintSpec};
use crate::keys;
use crate::planner::{Action, NodePatch, NodeView, Plan, TaintChange};

use super::Context;
use super::deliveries::{self, Written};
use super::error::{Error, is_conflict, is_not_found};
use super::probe::probe_pod;

/// Node patches and probe calls in flight at once.
const PARALLEL_WRITES: usize = 16;

/// How long a probe write is expected to show in the cache.
const EXPECT_WITHIN: Duration = Duration::from_secs(10);

/// How long a reconcile waits for the node watch to deliver its node writes.
const DELIVER_WITHIN: Duration = Duration::from_secs(10);

/// Probe pods this replica made or deleted that the probe watch has not
/// shown yet. A plan made from a cache that lags behind those writes asks
/// for them again; without this, every such plan sent a create (answered
/// AlreadyExists) or a delete (answered NotFound): 440 needless deletes in
/// a 1,000-node rollout. An expectation ends when the watch shows the write,
/// or after [`EXPECT_WITHIN`] in case it never does.
#[derive(Debug, Default)]
pub struct Expectations {
    creates: std::sync::Mutex<HashMap<String, Instant>>,
    deletes: std::sync::Mutex<HashMap<String, Instant>>,
}

impl Expectations {
    /// The probe watch showed `pod`: its creation, or its deletion.
    pub fn observed(&self, pod: &Pod) {
        let Some(name) = pod.metadata.name.as_deref() else {
            return;
        };
        if pod.metadata.deletion_timestamp.is_some() {
            self.deletes.lock().expect("expectations").remove(name);
        } else {
            self.creates.lock().expect("expectations").remove(name);
        }
    }

    /// The watch reported `name` deleted.
    pub fn observed_gone(&self, name: &str) {
        self.deletes.lock().expect("expectations").remove(name);
    }

    fn expected(map: &std::sync::Mutex<HashMap<String, Instant>>, name: &str) -> bool {
        let mut map = map.lock().expect("expectations");
        map.retain(|_, at| at.elapsed() < EXPECT_WITHIN);
        map.contains_key(name)
    }

    fn expect(map: &std::sync::Mutex<HashMap<String, Instant>>, name: &str) {
        map.lock()
            .expect("expectations")
            .insert(name.to_string(), Instant::now());
    }
}

/// What acting did, for the reconcile's log line.
#[derive(Debug, Default)]
pub struct Report {
    pub node_patches: usize,
    pub probes_created: usize,
    pub probes_deleted: usize,
    pub events: usize,
    /// Nodes whose patch was refused because they changed since the plan
    /// read them (sorted): the plan is stale for them, plan again.
    pub conflicts: Vec<String>,
    /// The API server refused a probe pod (admission, validation, quota,
    /// a missing namespace), in its words. Nodes the plan meant to start
    /// were not started: the plan's status is untrue, plan again.
    pub probe_rejected: Option<String>,
    /// Nodes the plan meant to start that were left pending because the
    /// probe's dry run was refused.
    pub starts_withheld: usize,
}

/// Is this a refusal of the request itself (admission, validation, RBAC,
/// a missing namespace), which asking again will not change? Not a
/// conflict, a rate limit or a server error.
pub fn is_rejection(err: &kube::Error) -> bool {
    matches!(err, kube::Error::Api(s) if matches!(s.code, 400 | 403 | 404 | 422))
}

/// The API server's words for a refusal, one line, at most 500 characters.
fn refusal(err: &kube::Error) -> String {
    let text = match err {
        kube::Error::Api(s) if !s.message.is_empty() => s.message.clone(),
        other => other.to_string(),
    };
    let line = text.split_whitespace().collect::<Vec<_>>().join(" ");
    match line.char_indices().nth(500) {
        Some((i, _)) => format!("{}…", &line[..i]),
        None => line,
    }
}

/// Applies a plan's node and probe actions (see [`apply_actions`]).
pub async fn apply(
    ctx: &Context,
    pool: &GpuPool,
    batch: &RolloutBatch,
    plan: &Plan,
) -> Result<Report, Error> {
    apply_actions(ctx, Some(pool), batch, &plan.actions).await
}

/// Applies node and probe actions, in a plan's order: node patches first (a
/// node carries its taint before its probe exists), then probe creations,
/// then deletions; events are only counted. Waits until the node watch has
/// delivered the patched nodes' written versions to the cache, so the next
/// plan never works from older state than this one wrote.
///
/// `pool` is `None` when the batch's pool is gone or unreadable (a batch
/// being deleted): node patches then leave taints as they are, and no probe
/// is made.
pub async fn apply_actions(
    ctx: &Context,
    pool: Option<&GpuPool>,
    batch: &RolloutBatch,
    actions: &[Action],
) -> Result<Report, Error> {
    let mut report = Report::default();
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &ctx.config.probes.namespace);
    let batch_uid = batch.metadata.uid.clone().unwrap_or_default();
    // Nodes are started (tainted, labelled validating) only when their
    // probe can be made: one dry run of a starting node's probe asks the
    // API server's admission (Pod Security, validation, quota) first. A
    // refusal starts nothing, and says why on the batch.
    let starting: Vec<&str> = actions
        .iter()
        .filter_map(|a| match a {
            // Entering validation from pending: a start writes the wave.
            Action::PatchNode(p)
                if p.state == Some(crate::planner::NodeState::Validating)
                    && p.annotations.contains_key(keys::WAVE) =>
            {
                Some(p.node.as_str())
            }
            _ => None,
        })
        .collect();
    let trial = actions.iter().find_map(|a| match a {
        Action::CreateProbe(req) if starting.contains(&req.node.as_str()) => Some(req),
        _ => None,
    });
    let mut withheld: Vec<String> = Vec::new();
    if let (Some(pool), Some(req)) = (pool, trial)
        && let Some(pod) = probe_pod(pool, batch, req, &ctx.config.probes)
    {
        may_write(ctx, &format!("trying probe pod {}", req.pod_name)).await?;
        let params = PostParams {
            dry_run: true,
            field_manager: Some(keys::FIELD_MANAGER.into()),
        };
        match pods.create(&params, &pod).await {
            Ok(_) => {}
            Err(err) if is_conflict(&err) => {}
            Err(err) if is_rejection(&err) => {
                let message = refusal(&err);
                warn!(batch = %batch_uid, %message, "the API server refuses probe pods; starting no node");
                ctx.note_probe_rejection(&batch_uid, Some(message.clone()));
                report.probe_rejected = Some(message);
                withheld = starting.iter().map(|n| n.to_string()).collect();
            }
            Err(err) => {
                return Err(Error::kube(format!(
                    "trying probe pod {}/{}",
                    ctx.config.probes.namespace, req.pod_name
                ))(err));
            }
        }
    }
    withheld.sort();
    report.starts_withheld = withheld.len();
    let patches: Vec<NodePatch> = actions
        .iter()
        .filter_map(|a| match a {
            Action::PatchNode(p) if withheld.binary_search(&p.node).is_err() => Some(p.clone()),
            _ => None,
        })
        .collect();
    report.node_patches = patches.len();
    // Nodes leaving validation are written before nodes entering it, so the
    // cluster never shows more nodes validating than the caps allow, not
    // even between two writes of one plan.
    let (entering, others): (Vec<NodePatch>, Vec<NodePatch>) = patches
        .into_iter()
        .partition(|p| p.state == Some(crate::planner::NodeState::Validating));
    let mut written: Vec<Written> = Vec::new();
    for group in [others, entering] {
        let results: Vec<(String, Patched)> = stream::iter(group)
            .map(|p| async move { Ok((p.node.clone(), patch_node(ctx, pool, &p).await?)) })
            .buffer_unordered(PARALLEL_WRITES)
            .try_collect()
            .await?;
        for (node, result) in results {
            match result {
                Patched::Written(w) => written.push(w),
                Patched::Gone => {}
                Patched::Conflict => report.conflicts.push(node),
            }
        }
    }
    wait_for_cache(ctx, &written).await;
    drop(written);
    report.conflicts.sort();

    // Each pod is built from the template as its request goes out, not all
    // up front: a wave start creates a probe for every node it takes.
    let mut creates: Vec<_> = actions
        .iter()
        .filter_map(|a| match a {
            // A node whose patch met a conflict, or that was not started,
            // has no probe to make.
            Action::CreateProbe(req)
                if pool.is_some()
                    && report.conflicts.binary_search(&req.node).is_err()
                    && withheld.binary_search(&req.node).is_err()
                    && !Expectations::expected(&ctx.expectations.creates, &req.pod_name) =>
            {
                Some(req.clone())
            }
            _ => None,
        })
        .collect();
    // While the API server refuses this batch's probes, one pod asks first;
    // the rest follow once it is made.
    let mut rest = Vec::new();
    if ctx.probe_rejection(&batch_uid).is_some() && creates.len() > 1 {
        rest = creates.split_off(1);
    }
    for round in [creates, rest] {
        if round.is_empty() || report.probe_rejected.is_some() {
            continue;
        }
        report.probes_created += round.len();
        let refused: Vec<Option<String>> = stream::iter(round)
            .map(|req| create_probe(ctx, &pods, pool, batch, req))
            .buffer_unordered(PARALLEL_WRITES)
            .try_collect()
            .await?;
        match refused.into_iter().flatten().next() {
            Some(message) => {
                ctx.note_probe_rejection(&batch_uid, Some(message.clone()));
                report.probe_rejected = Some(message);
            }
            None => ctx.note_probe_rejection(&batch_uid, None),
        }
    }

    let deletes: Vec<(String, Option<Timestamp>)> = actions
        .iter()
        .filter_map(|a| match a {
            Action::DeleteProbe { pod_name, run }
                if !Expectations::expected(&ctx.expectations.deletes, pod_name) =>
            {
                Some((pod_name.clone(), *run))
            }
            _ => None,
        })
        .collect();
    report.probes_deleted = deletes.len();
    delete_probes(ctx, &pods, &deletes).await?;
    if let Some(message) = certifications(ctx, pool, batch, actions).await? {
        ctx.note_probe_rejection(&batch_uid, Some(message.clone()));
        report.probe_rejected = Some(message);
    }
    report.events = actions
        .iter()
        .filter(|a| matches!(a, Action::Event(_)))
        .count();
    Ok(report)
}

/// Creates and deletes rack test Certifications (NVCRE). `Ok(Some(why))`:
/// refused (NVCRE not installed, no rights, a spec it refuses, or this
/// operator not run with `--nvcre`), a condition on the batch.
async fn certifications(
    ctx: &Context,
    pool: Option<&GpuPool>,
    batch: &RolloutBatch,
    actions: &[Action],
) -> Result<Option<String>, Error> {
    use kube::api::DynamicObject;
    let namespace = &ctx.config.probes.namespace;
    let api: Api<DynamicObject> =
        Api::namespaced_with(ctx.client.clone(), namespace, &super::nvcre::resource());
    let test = pool.and_then(|p| p.spec.health_checks.domain_test.as_ref());
    for action in actions {
        match action {
            Action::CreateCertification(req) => {
                if !ctx.config.nvcre {
                    return Ok(Some(format!(
                        "the pool's rack test runs through NVCRE (healthChecks.domainTest.nvcre) but this operator runs without --nvcre (chart: nvcre.enabled=true); Certification {} not made",
                        req.name
                    )));
                }
                let Some(object) =
                    test.and_then(|t| super::nvcre::certification(batch, req, namespace, t))
                else {
                    continue;
                };
                may_write(ctx, &format!("creating Certification {}", req.name)).await?;
                let params = PostParams {
                    field_manager: Some(keys::FIELD_MANAGER.into()),
                    ..Default::default()
                };
                match api.create(&params, &object).await {
                    Ok(_) => {}
                    Err(err) if is_conflict(&err) => {}
                    Err(err) if is_rejection(&err) => {
                        let message = format!("Certification {}: {}", req.name, refusal(&err));
                        warn!(%message, "the API server refused a rack test's Certification");
                        return Ok(Some(message));
                    }
                    Err(err) => {
                        return Err(Error::kube(format!(
                            "creating Certification {namespace}/{}",
                            req.name
                        ))(err));
                    }
                }
            }
            Action::DeleteCertification { name } => {
                may_write(ctx, &format!("deleting Certification {name}")).await?;
                match api.delete(name, &DeleteParams::background()).await {
                    Ok(_) => {}
                    Err(err) if is_not_found(&err) => {}
                    Err(err) => {
                        return Err(Error::kube(format!(
                            "deleting Certification {namespace}/{name}"
                        ))(err));
                    }
                }
            }
            _ => {}
        }
    }
    Ok(None)
}

/// Before every write: this replica must still lead, and the client-side
/// rate limit must allow it.
pub async fn may_write(ctx: &Context, what: &str) -> Result<(), Error> {
    ctx.write_limiter.acquire().await;
    if ctx.leadership.is_leader() {
        Ok(())
    } else {
        Err(Error::NotLeader(what.to_string()))
    }
}

/// Creates one probe pod. `Ok(Some(message))`: the API server refused it
/// (admission, validation, quota): not an error of the reconcile, but a
/// condition on the batch. A pod that exists already is fine.
async fn create_probe(
    ctx: &Context,
    pods: &Api<Pod>,
    pool: Option<&GpuPool>,
    batch: &RolloutBatch,
    req: crate::planner::ProbeRequest,
) -> Result<Option<String>, Error> {
    let Some(pod) = pool.and_then(|pool| probe_pod(pool, batch, &req, &ctx.config.probes)) else {
        return Ok(None);
    };
    let name = req.pod_name;
    may_write(ctx, &format!("creating probe pod {name}")).await?;
    let params = PostParams {
        field_manager: Some(keys::FIELD_MANAGER.into()),
        ..Default::default()
    };
    match pods.create(&params, &pod).await {
        Ok(created) => {
            Expectations::expect(&ctx.expectations.creates, &name);
            // A rack test group's first pod brings its headless Service
            // (its peers find each other through it) and its ComputeDomain.
            if let Some(group) = &req.group
                && group.rank == 0
                && let Some(refused) = create_group_service(ctx, group, &created).await?
            {
                let _ = delete_probes(ctx, pods, &[(name.clone(), req.run)]).await;
                return Ok(Some(refused));
            }
            let wants_domain = pool
                .and_then(|p| p.spec.health_checks.domain_test.as_ref())
                .is_some_and(|t| t.compute_domain);
            if let (Some(group), true) = (&req.group, wants_domain)
                && group.rank == 0
                && let Some(refused) = create_compute_domain(ctx, group, &created).await?
            {
                // Without its domain the group cannot run: its first pod
                // goes, so the next plan makes both again.
                let _ = delete_probes(ctx, pods, &[(name.clone(), req.run)]).await;
                return Ok(Some(refused));
            }
            Ok(None)
        }
        Err(err) if is_conflict(&err) => {
            debug!(pod = %name, "probe exists already");
            Ok(None)
        }
        Err(err) if is_rejection(&err) => {
            let message = refusal(&err);
            warn!(pod = %name, %message, "the API server refused a probe pod");
            Ok(Some(message))
        }
        Err(err) => Err(Error::kube(format!(
            "creating probe pod {}/{name}",
            ctx.config.probes.namespace
        ))(err)),
    }
}

/// Creates a rack test group's headless Service, owned by its first pod.
/// `Ok(Some(message))`: the API server refused it.
async fn create_group_service(
    ctx: &Context,
    group: &crate::planner::GroupMember,
    owner: &Pod,
) -> Result<Option<String>, Error> {
    let namespace = &ctx.config.probes.namespace;
    let resource = kube::api::ApiResource::erase::<k8s_openapi::api::core::v1::Service>(&());
    let body = super::probe::group_service(group, namespace, owner);
    create_for_group(ctx, "Service", &resource, body).await
}

/// Creates a rack test group's ComputeDomain, owned by its first pod.
/// `Ok(Some(message))`: the API server refused it (no DRA driver, no
/// rights), a condition on the batch as for a refused probe pod.
async fn create_compute_domain(
    ctx: &Context,
    group: &crate::planner::GroupMember,
    owner: &Pod,
) -> Result<Option<String>, Error> {
    use kube::api::{ApiResource, GroupVersionKind};
    let namespace = &ctx.config.probes.namespace;
    let resource = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("resource.nvidia.com", "v1beta1", "ComputeDomain"),
        "computedomains",
    );
    let body = super::probe::compute_domain(group, namespace, owner);
    create_for_group(ctx, "ComputeDomain", &resource, body).await
}

/// Creates one object a rack test group brings, in the probe namespace; one
/// that exists already is fine. `Ok(Some(message))`: the API server refused
/// it, in its words.
async fn create_for_group(
    ctx: &Context,
    kind: &str,
    resource: &kube::api::ApiResource,
    body: serde_json::Value,
) -> Result<Option<String>, Error> {
    use kube::api::DynamicObject;
    let namespace = &ctx.config.probes.namespace;
    let api: Api<DynamicObject> = Api::namespaced_with(ctx.client.clone(), namespace, resource);
    let object: DynamicObject = match serde_json::from_value(body) {
        Ok(object) => object,
        Err(err) => return Ok(Some(format!("a {kind} does not serialize: {err}"))),
    };
    let name = object.metadata.name.clone().unwrap_or_default();
    may_write(ctx, &format!("creating {kind} {name}")).await?;
    let params = PostParams {
        field_manager: Some(keys::FIELD_MANAGER.into()),
        ..Default::default()
    };
    match api.create(&params, &object).await {
        Ok(_) => Ok(None),
        Err(err) if is_conflict(&err) => Ok(None),
        Err(err) if is_rejection(&err) => {
            let message = format!("{kind} {name}: {}", refusal(&err));
            warn!(%message, "the API server refused an object of a rack test");
            Ok(Some(message))
        }
        Err(err) => Err(Error::kube(format!("creating {kind} {namespace}/{name}"))(
            err,
        )),
    }
}

/// Pods named in one collection delete at most (the selector's length).
const DELETE_AT_ONCE: usize = 100;

/// Deletes probe pods, in as few requests as it can: the pods gpufleet
/// made carry a hash of their name and run in [`super::probe::PROBE_LABEL`],
/// so up to
/// [`DELETE_AT_ONCE`] of them go in one `deletecollection` by that label
/// (`in (…)`); any other pod (someone else's at a probe's name, or one made
/// before the label) goes by its name (`metadata.name=…`), also a
/// collection delete, so gpufleet needs one verb on pods to delete them.
/// Pods already gone are fine.
async fn delete_probes(
    ctx: &Context,
    pods: &Api<Pod>,
    names: &[(String, Option<Timestamp>)],
) -> Result<(), Error> {
    use kube::runtime::reflector::ObjectRef;
    if names.is_empty() {
        return Ok(());
    }
    let namespace = &ctx.config.probes.namespace;
    let mut labelled: Vec<(&String, String)> = Vec::new();
    let mut by_name: Vec<&String> = Vec::new();
    for (name, run) in names {
        let hash = super::probe::probe_label_value(name, *run);
        let cached = ctx
            .stores
            .probes
            .get(&ObjectRef::new(name).within(namespace));
        let ours = cached.is_some_and(|pod| {
            pod.metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(super::probe::PROBE_LABEL))
                == Some(&hash)
        });
        if ours {
            labelled.push((name, hash));
        } else {
            by_name.push(name);
        }
    }
    let mut requests: Vec<(Vec<String>, ListParams)> = labelled
        .chunks(DELETE_AT_ONCE)
        .map(|chunk| {
            let hashes: Vec<&str> = chunk.iter().map(|(_, h)| h.as_str()).collect();
            (
                chunk.iter().map(|(n, _)| (*n).clone()).collect(),
                ListParams::default().labels(&format!(
                    "{} in ({})",
                    super::probe::PROBE_LABEL,
                    hashes.join(",")
                )),
            )
        })
        .collect();
    requests.extend(by_name.into_iter().map(|n| {
        (
            vec![n.clone()],
            ListParams::default().fields(&format!("metadata.name={n}")),
        )
    }));
    let namespace = namespace.clone();
    stream::iter(requests)
        .map(|(names, params)| {
            let namespace = namespace.clone();
            async move {
                let what = match names.as_slice() {
                    [one] => format!("deleting probe pod {one}"),
                    many => format!("deleting {} probe pods", many.len()),
                };
                may_write(ctx, &what).await?;
                match pods
                    .delete_collection(&DeleteParams::background(), &params)
                    .await
                {
                    Ok(_) => {
                        for name in &names {
                            Expectations::expect(&ctx.expectations.deletes, name);
                        }
                        Ok(())
                    }
                    Err(err) if is_not_found(&err) => Ok(()),
                    Err(err) => Err(Error::kube(format!("{what} in {namespace}"))(err)),
                }
            }
        })
        .buffer_unordered(PARALLEL_WRITES)
        .try_collect::<Vec<()>>()
        .await?;
    Ok(())
}

/// What became of one node patch.
enum Patched {
    /// Written: the version, with the node registered to note the watch's
    /// deliveries until it is dropped (see [`deliveries`]).
    Written(Written),
    /// The node is gone.
    Gone,
    /// The node changed since the plan read it: nothing written; plan again.
    Conflict,
}

/// One patch to one node: the state label, the annotations, and when asked
/// the onboarding taint, as one merge patch conditional on the
/// `resourceVersion` the plan read (`NodePatch::resource_version`): a
/// decision is never applied to a node that changed since it was made. A
/// taint change replaces the taint list, computed from the cached node of
/// that very version (every field of every taint kept, so the list is
/// written back as it was read). Without a pool there is no taint to
/// touch: labels and annotations only.
async fn patch_node(
    ctx: &Context,
    pool: Option<&GpuPool>,
    patch: &NodePatch,
) -> Result<Patched, Error> {
    let nodes: Api<Node> = Api::all(ctx.client.clone());
    let what = || format!("patching node {}", patch.node);
    let params = PatchParams {
        field_manager: Some(keys::FIELD_MANAGER.into()),
        ..Default::default()
    };
    let taint = match (patch.taint, pool) {
        (TaintChange::Keep, _) => None,
        (_, Some(pool)) => Some(&pool.spec.onboarding.taint),
        (change, None) => {
            warn!(node = %patch.node, ?change, "no pool to take the taint from; leaving taints as they are");
            None
        }
    };
    let cached = ctx.stores.nodes.get(&patch.node);
    let Some(body) = patch_body(patch, taint, cached.as_deref()) else {
        debug!(node = %patch.node, "node changed since the plan; planning again");
        return Ok(Patched::Conflict);
    };
    may_write(ctx, &what()).await?;
    // Registered before the write goes out, so the watch cannot deliver it
    // unnoticed.
    let ticket = ctx.deliveries.register(&patch.node);
    match nodes
        .patch(&patch.node, &params, &Patch::Merge(&body))
        .await
    {
        // Only the version is kept: a wave patches thousands of nodes in
        // one reconcile, and whole Nodes held until the cache caught up
        // cost tens of kilobytes each.
        Ok(node) => Ok(Patched::Written(Written {
            ticket,
            resource_version: node.metadata.resource_version,
        })),
        Err(err) if is_not_found(&err) => Ok(Patched::Gone),
        Err(err) if is_conflict(&err) => {
            debug!(node = %patch.node, "node changed since the plan; planning again");
            Ok(Patched::Conflict)
        }
        Err(err) => Err(Error::kube(what())(err)),
    }
}

/// The merge patch that applies `patch` to its node, conditional on the
/// version the plan read (`NodePatch::resource_version`; without one, the
/// cached node's). A taint change writes the whole list, computed from the
/// cached node of that very version; `None` when the cache has moved past
/// it: the node changed since the plan, and the decision is stale.
fn patch_body(
    patch: &NodePatch,
    taint: Option<&TaintSpec>,
    cached: Option<&NodeView>,
) -> Option<Value> {
    let mut metadata = Map::new();
    if !patch.leave_state {
        metadata.insert(
            "labels".into(),
            json!({ keys::STATE: patch.state.map(|s| s.as_str()) }),
        );
    }
    let annotations: Map<String, Value> = patch
        .annotations
        .iter()
        .map(|(k, v)| {
            (
                k.to_string(),
                v.as_ref().map_or(Value::Null, |v| Value::String(v.clone())),
            )
        })
        .collect();
    metadata.insert("annotations".into(), Value::Object(annotations));
    let version = patch
        .resource_version
        .clone()
        .or_else(|| cached.and_then(|v| v.resource_version.as_deref().map(str::to_owned)));
    if let Some(version) = &version {
        metadata.insert("resourceVersion".into(), json!(version));
    }
    let mut body = json!({ "metadata": metadata });
    let Some(taint) = taint.filter(|_| patch.taint != TaintChange::Keep) else {
        return Some(body);
    };
    let view = cached.filter(|v| v.resource_version.as_deref() == version.as_deref())?;
    let mut taints = taints_of(view);
    let ours = |t: &Taint| t.key == taint.key && t.effect == taint.effect.as_str();
    match patch.taint {
        TaintChange::Add if !taints.iter().any(ours) => taints.push(Taint {
            key: taint.key.clone(),
            value: taint.value.clone(),
            effect: taint.effect.as_str().into(),
            time_added: None,
        }),
        TaintChange::Remove if patch.taint_removals.is_empty() => taints.retain(|t| !ours(t)),
        // Only the taints gpufleet recorded adding.
        TaintChange::Remove => taints.retain(|t| {
            !patch
                .taint_removals
                .iter()
                .any(|(k, e)| t.key == *k && t.effect == *e)
        }),
        _ => {}
    }
    body["spec"] = json!({ "taints": taints });
    Some(body)
}

/// A cached node's taints as the API spells them, every field kept.
fn taints_of(view: &NodeView) -> Vec<Taint> {
    view.taints
        .iter()
        .map(|t| Taint {
            key: t.key.clone(),
            value: t.value.clone(),
            effect: t.effect.clone(),
            time_added: t.time_added.map(Time),
        })
        .collect()
}

/// Waits (briefly) until the node watch has delivered what was written.
async fn wait_for_cache(ctx: &Context, written: &[Written]) {
    let lagging =
        deliveries::wait_delivered(&ctx.deliveries, &ctx.stores.nodes, written, DELIVER_WITHIN)
            .await;
    if let Some(node) = lagging {
        warn!(node = %node, "node cache lags behind our own write; planning on");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(name: &str, deleting: bool) -> Pod {
        let mut pod = Pod::default();
        pod.metadata.name = Some(name.into());
        if deleting {
            pod.metadata.deletion_timestamp =
                Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                    k8s_openapi::jiff::Timestamp::now(),
                ));
        }
        pod
    }

    fn admit(version: &str) -> NodePatch {
        NodePatch {
            node: "n1".into(),
            state: Some(crate::planner::NodeState::Ready),
            annotations: Default::default(),
            taint: TaintChange::Remove,
            taint_removals: Vec::new(),
            failure: None,
            leave_state: false,
            resource_version: Some(version.into()),
        }
    }

    fn tainted(version: &str) -> NodeView {
        let mut view = NodeView::named("n1");
        view.resource_version = Some(version.into());
        view.taints.push(crate::planner::TaintView {
            key: "gpufleet.io/onboarding".into(),
            value: None,
            effect: "NoSchedule".into(),
            time_added: None,
        });
        view
    }

    fn taint() -> TaintSpec {
        serde_json::from_value(json!({"key": "gpufleet.io/onboarding", "effect": "NoSchedule"}))
            .expect("taint")
    }

    #[test]
    fn a_decision_is_written_only_on_the_version_it_was_made_from() {
        // Made from version 5, and the cache still shows 5: written,
        // conditional on 5, taint removed.
        let body = patch_body(&admit("5"), Some(&taint()), Some(&tainted("5"))).expect("body");
        assert_eq!(body["metadata"]["resourceVersion"], "5");
        assert_eq!(body["spec"]["taints"], json!([]));
        // The node changed since (the cache shows 6): not written at all,
        // not recomputed from the newer node either.
        assert_eq!(
            patch_body(&admit("5"), Some(&taint()), Some(&tainted("6"))),
            None
        );
        // A state-only patch is conditional too, whatever the cache shows.
        let mut label = admit("5");
        label.taint = TaintChange::Keep;
        let body = patch_body(&label, Some(&taint()), Some(&tainted("6"))).expect("body");
        assert_eq!(body["metadata"]["resourceVersion"], "5");
        let body = patch_body(&label, None, None).expect("body");
        assert_eq!(body["metadata"]["resourceVersion"], "5");
        assert!(body.get("spec").is_none());
    }

    #[test]
    fn a_probe_write_is_expected_until_the_watch_shows_it() {
        let e = Expectations::default();
        assert!(!Expectations::expected(&e.creates, "p-1"));
        Expectations::expect(&e.creates, "p-1");
        Expectations::expect(&e.deletes, "p-0");
        assert!(Expectations::expected(&e.creates, "p-1"));
        assert!(Expectations::expected(&e.deletes, "p-0"));
        // A deletion seen does not end a creation's expectation, and back.
        e.observed(&pod("p-1", true));
        assert!(Expectations::expected(&e.creates, "p-1"));
        e.observed(&pod("p-1", false));
        assert!(!Expectations::expected(&e.creates, "p-1"));
        e.observed_gone("p-0");
        assert!(!Expectations::expected(&e.deletes, "p-0"));
    }
}
