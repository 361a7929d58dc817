//! Reconciling one RolloutBatch: dereference its pool, observe, plan, act,
//! write status. The finalizer leaves every node it touched in a safe state.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::jiff::Timestamp;
use kube::api::Api;
use kube::core::DeserializeGuard;
use kube::runtime::controller::Action;
use kube::runtime::finalizer::{Event as Finalizer, finalizer};
use kube::{Resource, ResourceExt};
use tracing::{info, warn};

use crate::api::RolloutBatch;
use crate::keys;
use crate::planner;
use crate::vocabulary::{ConditionType, Reason};

use super::error::Error;
use super::status::write_status;
use super::{Context, act, events, observe};

/// The finalizer gpufleet puts on every batch.
pub const FINALIZER: &str = "gpufleet.io/cleanup";

/// Look again at least this often, even when nothing seems to change.
const RESYNC: Duration = Duration::from_secs(300);

/// ...and this often while probes run.
const IN_FLIGHT_RESYNC: Duration = Duration::from_secs(5);

/// How soon a batch whose pool's lock another batch holds tries again.
const POOL_BUSY_REQUEUE: Duration = Duration::from_millis(250);

/// How soon a write the API server refused is tried again: a person has to
/// change something first.
const REJECTED_REQUEUE: Duration = Duration::from_secs(60);

/// How often a batch whose probe pods are refused tries again.
const PROBE_REJECTED_REQUEUE: Duration = Duration::from_secs(15);

/// How soon a batch is planned again after some of its node writes met a
/// conflict: at once, but not in a hot loop should a node change all the
/// time.
const CONFLICT_REQUEUE: Duration = Duration::from_millis(200);

pub async fn reconcile(
    guard: Arc<DeserializeGuard<RolloutBatch>>,
    ctx: Arc<Context>,
) -> Result<Action, Error> {
    ctx.stores.ready().await.map_err(Error::Cache)?;
    let batch = match &guard.0 {
        Ok(batch) => Arc::new(batch.clone()),
        Err(invalid) if invalid.metadata.deletion_timestamp.is_some() => {
            // Deleted while unreadable: clean up what it started (its spec
            // is unknown, so taints stay) and let it go.
            if !ctx.leadership.is_leader() {
                return Ok(Action::requeue(Duration::from_secs(30)));
            }
            return delete_invalid(&ctx, &invalid.metadata).await;
        }
        Err(invalid) => {
            // It slipped past admission (an older CRD, or a direct etcd write):
            // say so on the object and wait for it to change.
            let name = invalid.metadata.name.clone().unwrap_or_default();
            warn!(batch = %name, error = %invalid.error, "batch is invalid");
            if !ctx.leadership.is_leader() {
                return Ok(Action::requeue(Duration::from_secs(30)));
            }
            stall(
                &ctx,
                &name,
                invalid.metadata.generation,
                Reason::InvalidSpec,
                &format!("the batch cannot be read: {}", invalid.error),
            )
            .await?;
            return Ok(Action::await_change());
        }
    };
    if !ctx.leadership.is_leader() {
        // A standby watches but writes nothing; the new leader reconciles
        // everything when it takes over.
        return Ok(Action::requeue(Duration::from_secs(30)));
    }
    let _timer = ReconcileTimer::start(&ctx, "rolloutbatch");
    let api: Api<RolloutBatch> = Api::all(ctx.client.clone());
    let name = batch.name_any();
    finalizer(&api, FINALIZER, batch, |event| async {
        match event {
            Finalizer::Apply(batch) => apply(&batch, &ctx).await,
            Finalizer::Cleanup(batch) => cleanup(&batch, &ctx).await,
        }
    })
    .await
    .map_err(|e| Error::Finalizer {
        what: format!("batch {name}"),
        source: Box::new(e),
    })
}

async fn apply(batch: &RolloutBatch, ctx: &Context) -> Result<Action, Error> {
    let name = batch.name_any();
    let pool_name = &batch.spec.pool_ref;
    // One batch of a pool at a time: they share the concurrency budget. A
    // batch whose pool is busy comes back shortly rather than holding one
    // of the controller's reconcile slots while it waits: a busy pool's
    // batches never keep other pools' batches waiting.
    let lock = ctx.pool_lock(pool_name);
    let Ok(_guard) = lock.try_lock() else {
        return Ok(Action::requeue(POOL_BUSY_REQUEUE));
    };
    // Planned a moment ago over a large pool: wait for the pace (what
    // changed meanwhile is planned together).
    let uid = batch.metadata.uid.clone().unwrap_or_default();
    if let Some(wait) = ctx.plan_wait(&uid, batch.metadata.generation) {
        ctx.metrics.plans_paced.inc();
        return Ok(Action::requeue(wait));
    }
    let started = std::time::Instant::now();
    let pool = match ctx.stores.pool(pool_name) {
        Ok(Some(pool)) => pool,
        Ok(None) => {
            stall(
                ctx,
                &name,
                batch.metadata.generation,
                Reason::PoolNotFound,
                &format!("GpuPool {pool_name} does not exist"),
            )
            .await?;
            return Ok(Action::requeue(RESYNC));
        }
        Err(error) => {
            stall(
                ctx,
                &name,
                batch.metadata.generation,
                Reason::PoolInvalid,
                &format!("GpuPool {pool_name} cannot be read: {error}"),
            )
            .await?;
            return Ok(Action::requeue(RESYNC));
        }
    };
    // A finished NVCRE Certification's failed nodes are in a ConfigMap it
    // names: read once, before planning.
    if ctx.config.nvcre {
        super::nvcre::read_results(
            &ctx.client,
            &ctx.config.probes.namespace,
            &ctx.stores.certifications,
            &ctx.stores.cert_results,
            batch.metadata.uid.as_deref(),
        )
        .await
        .map_err(Error::kube(format!(
            "reading the rack tests of batch {name}"
        )))?;
    }
    let mut snapshot = observe::snapshot(&ctx.stores, &pool, batch);
    snapshot.probe_rejection = batch
        .metadata
        .uid
        .as_deref()
        .and_then(|uid| ctx.probe_rejection(uid));
    let now = Timestamp::now();
    let plan = planner::plan(&pool, batch, &snapshot, now);
    ctx.metrics
        .record_visits("rolloutbatch", snapshot.nodes.len());
    let report = match act::apply(ctx, &pool, batch, &plan).await {
        Ok(report) => report,
        // A write the API server refuses (an onboarding taint it finds
        // invalid, a policy that forbids it): asking again the same way
        // will not help, and the log is not where a person looks. Said on
        // the batch, and tried again now and then.
        Err(Error::Kube { what, source }) if act::is_rejection(&source) => {
            let message = match &source {
                kube::Error::Api(status) => status.message.clone(),
                other => other.to_string(),
            };
            stall(
                ctx,
                &name,
                batch.metadata.generation,
                Reason::WriteRejected,
                &format!(
                    "the API server refused {what}: {message}; fix the pool or batch (its onboarding taint, its selectors) or the policy that refuses it"
                ),
            )
            .await?;
            return Ok(Action::requeue(REJECTED_REQUEUE));
        }
        Err(err) => return Err(err),
    };
    if report.starts_withheld > 0 && snapshot.probe_rejection.is_none() {
        // The plan started nodes whose probes the API server refuses (its
        // dry run said so): none was started, and the plan's status would
        // say otherwise. Plan again at once, now knowing.
        info!(
            batch = %name,
            pool = %pool_name,
            withheld = report.starts_withheld,
            "probe pods are refused; starting no node"
        );
        return Ok(Action::requeue(CONFLICT_REQUEUE));
    }
    if !report.conflicts.is_empty() {
        // Some nodes changed after the plan read them, and their decisions
        // were not applied: the plan's status and their events would be
        // untrue. Plan again at once from the fresh cache; what was written
        // shows there.
        info!(
            batch = %name,
            pool = %pool_name,
            conflicts = report.conflicts.len(),
            first = %report.conflicts[0],
            "nodes changed since the plan read them; planning again"
        );
        ctx.metrics.record_conflicts(report.conflicts.len());
        return Ok(Action::requeue(CONFLICT_REQUEUE));
    }
    record(ctx, &pool, batch, &snapshot, &plan, now);
    ctx.planned(
        &uid,
        batch.metadata.generation,
        snapshot.nodes.len(),
        started,
    );
    let status_changed = batch.status.as_ref() != Some(&plan.status);
    if status_changed {
        write_status::<RolloutBatch>(ctx, &name, &plan.status, batch.status.as_ref()).await?;
    }
    let batch_ref = batch.object_ref(&());
    events::publish(
        &ctx.recorder,
        &ctx.event_limiter,
        &ctx.leadership,
        &batch_ref,
        plan.actions
            .iter()
            .filter_map(|a| match a {
                planner::Action::Event(e) => Some(e),
                _ => None,
            })
            .collect(),
    )
    .await;
    let ready = plan
        .status
        .conditions
        .iter()
        .find(|c| c.type_ == ConditionType::Ready.as_str());
    info!(
        batch = %name,
        pool = %pool_name,
        wave = %plan.status.wave_progress.as_deref().unwrap_or("-"),
        decision = ready.map_or("-", |c| c.reason.as_str()),
        nodes = plan.status.nodes.total,
        ready = plan.status.nodes.ready,
        failed = plan.status.nodes.failed,
        node_patches = report.node_patches,
        probes_created = report.probes_created,
        probes_deleted = report.probes_deleted,
        events = report.events,
        status_written = status_changed,
        requeue_s = plan.requeue_after.map(|d| d.as_secs_f64()),
        "reconciled batch"
    );
    tracing::debug!(batch = %name, nodes = snapshot.nodes.len(), probes = snapshot.probes.len(), "snapshot");
    // Probe results arrive by watch; should one be missed, look again soon
    // rather than at the probe's deadline.
    let ceiling = if plan.status.nodes.validating > 0 {
        IN_FLIGHT_RESYNC
    } else if snapshot.probe_rejection.is_some() || report.probe_rejected.is_some() {
        PROBE_REJECTED_REQUEUE
    } else {
        RESYNC
    };
    Ok(Action::requeue(plan.requeue_after.map_or(ceiling, |d| {
        d.min(ceiling) + Duration::from_millis(50)
    })))
}

/// Deleting a batch: its probes go; nodes it was still onboarding keep the
/// onboarding taint and lose the gpufleet state, so a new batch can pick them
/// up; ready nodes stay ready. Both are planner actions, applied by
/// [`act::apply_actions`] as a reconcile's are: probes first, then nodes.
async fn cleanup(batch: &RolloutBatch, ctx: &Context) -> Result<Action, Error> {
    let name = batch.name_any();
    let probes: Vec<planner::Action> = ctx
        .stores
        .probes
        .state()
        .iter()
        .filter(|p| {
            p.metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(keys::BATCH))
                == Some(&name)
        })
        .filter_map(|p| {
            let run = p
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(keys::STARTED))
                .and_then(|r| r.parse().ok());
            Some(planner::Action::DeleteProbe {
                pod_name: p.metadata.name.clone()?,
                run,
            })
        })
        .collect();
    // Without the pool (gone, or unreadable) there is no taint to touch:
    // releases leave taints as they are anyway.
    let pool = ctx.stores.pool(&batch.spec.pool_ref).ok().flatten();
    let deleted = act::apply_actions(ctx, pool.as_ref(), batch, &probes).await?;
    // The nodes this batch last touched that carry a state short of ready
    // (the label as written, known to the planner or not). A node that
    // changes between the read and the write is read again; should one
    // keep changing, the finalizer stays and the cleanup is tried again.
    let mut released = 0;
    for round in 0.. {
        let releases: Vec<planner::Action> = ctx
            .stores
            .nodes
            .select(|node| {
                let state = node.labels.get(keys::STATE);
                node.batch.as_deref() == Some(name.as_str())
                    && state.is_some_and(|s| s != planner::NodeState::Ready.as_str())
            })
            .iter()
            .map(|node| planner::Action::PatchNode(planner::release(node)))
            .collect();
        let report = act::apply_actions(ctx, pool.as_ref(), batch, &releases).await?;
        released += report.node_patches - report.conflicts.len();
        if report.conflicts.is_empty() {
            break;
        }
        if round == 4 {
            return Err(Error::kube(format!(
                "releasing node {} of deleted batch {name}",
                report.conflicts[0]
            ))(kube::Error::Api(
                kube::core::Status::failure("the node kept changing", "Conflict")
                    .with_code(409)
                    .boxed(),
            )));
        }
        tokio::time::sleep(CONFLICT_REQUEUE).await;
    }
    let waves = batch.status.as_ref().map_or(0, |s| s.total_waves);
    ctx.metrics.forget_batch(&batch.spec.pool_ref, &name, waves);
    if let Some(uid) = batch.metadata.uid.as_deref() {
        ctx.note_probe_rejection(uid, None);
    }
    info!(batch = %name, probes_deleted = deleted.probes_deleted, nodes_released = released, "cleaned up deleted batch");
    Ok(Action::await_change())
}

/// A batch that cannot be read, being deleted: its probes go and the nodes
/// it was onboarding are released as [`cleanup`] does (without its pool,
/// taints stay), then gpufleet's finalizer is removed so the deletion
/// completes.
async fn delete_invalid(
    ctx: &Context,
    metadata: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
) -> Result<Action, Error> {
    let name = metadata.name.clone().unwrap_or_default();
    let has_ours = metadata.finalizers.iter().flatten().any(|f| f == FINALIZER);
    if has_ours {
        // What cleanup reads of a batch: its name, UID and pool; the pool
        // is unknown.
        let placeholder: RolloutBatch = serde_json::from_value(serde_json::json!({
            "apiVersion": "gpufleet.io/v1alpha1",
            "kind": "RolloutBatch",
            "metadata": metadata,
            "spec": {"poolRef": "", "nodeSelector": {}, "waves": [{"percent": 100}]},
        }))
        .map_err(|e| Error::Panic {
            what: format!("batch {name}"),
            message: format!("building the deleted batch's placeholder: {e}"),
        })?;
        cleanup(&placeholder, ctx).await?;
        let api: Api<DeserializeGuard<RolloutBatch>> = Api::all(ctx.client.clone());
        let finalizers: Vec<&String> = metadata
            .finalizers
            .iter()
            .flatten()
            .filter(|f| *f != FINALIZER)
            .collect();
        act::may_write(ctx, &format!("removing the finalizer of batch {name}")).await?;
        let patch = serde_json::json!({"metadata": {
            "finalizers": finalizers,
            "resourceVersion": metadata.resource_version,
        }});
        match api
            .patch(
                &name,
                &kube::api::PatchParams::default(),
                &kube::api::Patch::Merge(&patch),
            )
            .await
        {
            Ok(_) => {}
            Err(err) if super::error::is_not_found(&err) => {}
            Err(err) => {
                return Err(Error::kube(format!(
                    "removing the finalizer of batch {name}"
                ))(err));
            }
        }
        info!(batch = %name, "an unreadable batch was deleted; cleaned up after it");
    }
    Ok(Action::await_change())
}

/// Times a reconcile into the duration histogram when dropped.
pub struct ReconcileTimer<'a> {
    ctx: &'a Context,
    kind: &'static str,
    start: std::time::Instant,
}

impl<'a> ReconcileTimer<'a> {
    pub fn start(ctx: &'a Context, kind: &'static str) -> Self {
        ReconcileTimer {
            ctx,
            kind,
            start: std::time::Instant::now(),
        }
    }
}

impl Drop for ReconcileTimer<'_> {
    fn drop(&mut self) {
        self.ctx
            .metrics
            .reconcile_seconds
            .get_or_create(&super::metrics::KindLabels {
                kind: self.kind.into(),
            })
            .observe(self.start.elapsed().as_secs_f64());
    }
}

/// Metrics from a plan that was carried out: admissions, failures by
/// category, time to admission, and the batch's gauges.
fn record(
    ctx: &Context,
    pool: &crate::api::GpuPool,
    batch: &RolloutBatch,
    snapshot: &planner::Snapshot,
    plan: &planner::Plan,
    now: Timestamp,
) {
    let pool_name = pool.name_any();
    let batch_name = batch.name_any();
    let labels = super::metrics::BatchLabels {
        pool: pool_name.clone(),
        batch: batch_name.clone(),
    };
    let mut moved = false;
    for patch in plan.node_patches() {
        moved = true;
        if patch.state == Some(planner::NodeState::Ready) {
            ctx.metrics.admissions.get_or_create(&labels).inc();
            // O(log n) an admission: the snapshot lists nodes in name
            // order (the cache's); a scan only if it ever did not.
            let found = match snapshot
                .nodes
                .binary_search_by(|n| n.name.as_str().cmp(patch.node.as_str()))
            {
                Ok(i) => Some(&snapshot.nodes[i]),
                Err(_) => snapshot.nodes.iter().find(|n| n.name == patch.node),
            };
            let started = found.and_then(|n| n.started.get());
            if let Some(started) = started {
                let seconds = now.duration_since(started).as_secs_f64().max(0.0);
                ctx.metrics
                    .onboarding_seconds
                    .get_or_create(&super::metrics::PoolLabels {
                        pool: pool_name.clone(),
                    })
                    .observe(seconds);
            }
        }
        if let Some(category) = patch.failure {
            ctx.metrics
                .failures
                .get_or_create(&super::metrics::FailureLabels {
                    pool: pool_name.clone(),
                    batch: batch_name.clone(),
                    reason: category.as_str().into(),
                })
                .inc();
        }
    }
    for action in &plan.actions {
        let planner::Action::Event(event) = action else {
            continue;
        };
        let result = match event.reason {
            crate::vocabulary::EventReason::RackTestPassed => "passed",
            crate::vocabulary::EventReason::RackTestFailed => "trays_failed",
            crate::vocabulary::EventReason::RackFailed => "rack_failed",
            _ => continue,
        };
        ctx.metrics
            .rack_tests
            .get_or_create(&super::metrics::ResultLabels {
                pool: pool_name.clone(),
                result: result.into(),
            })
            .inc();
    }
    if moved {
        ctx.metrics
            .last_progress
            .get_or_create(&labels)
            .set(now.as_second());
    }
    ctx.metrics
        .observe_batch(&pool_name, &batch_name, &plan.status);
}

/// Marks a batch Stalled with a reason, for problems planning cannot fix.
/// Stalls batch `name` with reason InternalError: a bug panicked while
/// reconciling it.
pub(super) async fn stall_internal(ctx: &Context, name: &str, message: &str) -> Result<(), Error> {
    stall(
        ctx,
        name,
        None,
        Reason::InternalError,
        &format!("gpufleet hit an internal error on this batch and stopped working on it: {message}; the rest of the fleet carries on. Report it with the operator's log"),
    )
    .await
}

async fn stall(
    ctx: &Context,
    name: &str,
    generation: Option<i64>,
    reason: Reason,
    message: &str,
) -> Result<(), Error> {
    let now = Timestamp::now();
    let previous = ctx
        .stores
        .batches
        .state()
        .into_iter()
        .find_map(|b| {
            b.0.as_ref()
                .ok()
                .filter(|b| b.metadata.name.as_deref() == Some(name))
                .and_then(|b| b.status.clone())
        })
        .unwrap_or_default();
    let status = planner::stalled_status(&previous, reason, message.to_string(), generation, now);
    if status == previous {
        return Ok(());
    }
    warn!(batch = %name, reason = reason.as_str(), message, "batch stalled");
    write_status::<RolloutBatch>(ctx, name, &status, Some(&previous)).await
}
