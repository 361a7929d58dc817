//! Act: turns a plan's actions into API calls, and nothing clever. Every
//! write is idempotent, so a restart at any instant repeats nothing harmful:
//! patches set absolute values, a probe that exists is not made twice, a
//! probe that is gone is not an error.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt, stream};
use k8s_openapi::api::core::v1::{Node, Pod, Taint};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use serde_json::{Map, Value, json};
use tracing::{debug, warn};

use crate::api::{GpuPool, RolloutBatch};
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
    let patches: Vec<NodePatch> = actions
        .iter()
        .filter_map(|a| match a {
            Action::PatchNode(p) => Some(p.clone()),
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
        let more: Vec<Written> = stream::iter(group)
            .map(|p| async move { patch_node(ctx, pool, &p).await })
            .buffer_unordered(PARALLEL_WRITES)
            .try_filter_map(|n| async move { Ok(n) })
            .try_collect()
            .await?;
        written.extend(more);
    }
    wait_for_cache(ctx, &written).await;
    drop(written);

    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &ctx.config.namespace);
    // Each pod is built from the template as its request goes out, not all
    // up front: a wave start creates a probe for every node it takes.
    let creates: Vec<_> = actions
        .iter()
        .filter_map(|a| match a {
            Action::CreateProbe(req)
                if pool.is_some()
                    && !Expectations::expected(&ctx.expectations.creates, &req.pod_name) =>
            {
                Some(req.clone())
            }
            _ => None,
        })
        .collect();
    report.probes_created = creates.len();
    stream::iter(creates)
        .map(|req| {
            let pods = pods.clone();
            async move {
                let Some(pod) =
                    pool.and_then(|pool| probe_pod(pool, batch, &req, &ctx.config.namespace))
                else {
                    return Ok(());
                };
                let name = pod.metadata.name.clone().unwrap_or_default();
                may_write(ctx, &format!("creating probe pod {name}")).await?;
                match pods
                    .create(
                        &PostParams {
                            field_manager: Some(keys::FIELD_MANAGER.into()),
                            ..Default::default()
                        },
                        &pod,
                    )
                    .await
                {
                    Ok(_) => {
                        Expectations::expect(&ctx.expectations.creates, &name);
                        Ok(())
                    }
                    Err(err) if is_conflict(&err) => {
                        debug!(pod = %name, "probe exists already");
                        Ok(())
                    }
                    Err(err) => Err(Error::kube(format!(
                        "creating probe pod {}/{name}",
                        ctx.config.namespace
                    ))(err)),
                }
            }
        })
        .buffer_unordered(PARALLEL_WRITES)
        .try_collect::<Vec<()>>()
        .await?;

    let deletes: Vec<String> = actions
        .iter()
        .filter_map(|a| match a {
            Action::DeleteProbe { pod_name }
                if !Expectations::expected(&ctx.expectations.deletes, pod_name) =>
            {
                Some(pod_name.clone())
            }
            _ => None,
        })
        .collect();
    report.probes_deleted = deletes.len();
    let pods = &pods;
    stream::iter(deletes)
        .map(|name| async move { delete_probe(ctx, pods, &name).await })
        .buffer_unordered(PARALLEL_WRITES)
        .try_collect::<Vec<()>>()
        .await?;
    report.events = actions
        .iter()
        .filter(|a| matches!(a, Action::Event(_)))
        .count();
    Ok(report)
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

/// Deletes a probe pod; one already gone is fine.
async fn delete_probe(ctx: &Context, pods: &Api<Pod>, name: &str) -> Result<(), Error> {
    may_write(ctx, &format!("deleting probe pod {name}")).await?;
    match pods.delete(name, &DeleteParams::background()).await {
        Ok(_) => {
            Expectations::expect(&ctx.expectations.deletes, name);
            Ok(())
        }
        Err(err) if is_not_found(&err) => Ok(()),
        Err(err) => Err(Error::kube(format!(
            "deleting probe pod {}/{name}",
            ctx.config.namespace
        ))(err)),
    }
}

/// One patch to one node: the state label, the annotations, and when asked
/// the onboarding taint. Labels and annotations are a merge patch; a taint
/// change replaces the taint list, so it carries the resourceVersion it was
/// computed from and is recomputed from a fresh read on conflict, leaving
/// every other taint as it is (the cached view keeps every field of every
/// taint, so the list is written back as it was read). Returns the version
/// written, with the node registered to note the watch's deliveries until
/// it is dropped (see [`deliveries`]), or `None` if the node is gone.
/// Without a pool there is no taint to touch: labels and annotations only.
async fn patch_node(
    ctx: &Context,
    pool: Option<&GpuPool>,
    patch: &NodePatch,
) -> Result<Option<Written>, Error> {
    let nodes: Api<Node> = Api::all(ctx.client.clone());
    let what = || format!("patching node {}", patch.node);
    let params = PatchParams {
        field_manager: Some(keys::FIELD_MANAGER.into()),
        ..Default::default()
    };
    let mut metadata = Map::new();
    metadata.insert(
        "labels".into(),
        json!({ keys::STATE: patch.state.map(|s| s.as_str()) }),
    );
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

    may_write(ctx, &what()).await?;
    // Registered before the write goes out, so the watch cannot deliver it
    // unnoticed.
    let ticket = ctx.deliveries.register(&patch.node);
    let taint = match (patch.taint, pool) {
        (TaintChange::Keep, _) => None,
        (_, Some(pool)) => Some(&pool.spec.onboarding.taint),
        (change, None) => {
            warn!(node = %patch.node, ?change, "no pool to take the taint from; leaving taints as they are");
            None
        }
    };
    let Some(taint) = taint else {
        let body = json!({ "metadata": metadata });
        return match nodes
            .patch(&patch.node, &params, &Patch::Merge(&body))
            .await
        {
            Ok(node) => Ok(Some(Written {
                ticket,
                resource_version: node.metadata.resource_version,
            })),
            Err(err) if is_not_found(&err) => Ok(None),
            Err(err) => Err(Error::kube(what())(err)),
        };
    };
    // The first attempt works from the cache; a conflict means the cache
    // was behind, so later ones read the node afresh.
    let mut current: Option<(Option<String>, Vec<Taint>)> = ctx
        .stores
        .nodes
        .get(&patch.node)
        .map(|view| (view.resource_version.clone(), taints_of(&view)));
    for attempt in 0..5 {
        let (resource_version, mut taints) = match current.take() {
            Some(current) => current,
            None => match nodes
                .get_opt(&patch.node)
                .await
                .map_err(Error::kube(what()))?
            {
                Some(node) => (
                    node.metadata.resource_version,
                    node.spec.and_then(|s| s.taints).unwrap_or_default(),
                ),
                None => return Ok(None),
            },
        };
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
        if attempt > 0 {
            may_write(ctx, &what()).await?;
        }
        let mut meta = metadata.clone();
        meta.insert("resourceVersion".into(), json!(resource_version));
        let body = json!({ "metadata": meta, "spec": { "taints": taints } });
        match nodes
            .patch(&patch.node, &params, &Patch::Merge(&body))
            .await
        {
            // Only the version is kept: a wave patches thousands of nodes
            // in one reconcile, and whole Nodes held until the cache caught
            // up cost tens of kilobytes each.
            Ok(node) => {
                return Ok(Some(Written {
                    ticket,
                    resource_version: node.metadata.resource_version,
                }));
            }
            Err(err) if is_not_found(&err) => return Ok(None),
            Err(err) if is_conflict(&err) => {
                debug!(node = %patch.node, attempt, "node changed under us; re-reading it");
            }
            Err(err) => return Err(Error::kube(what())(err)),
        }
    }
    Err(Error::kube(what())(kube::Error::Api(
        kube::core::Status::failure(
            "node kept changing during five attempts to patch it",
            "Conflict",
        )
        .with_code(409)
        .boxed(),
    )))
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
