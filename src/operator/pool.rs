//! Reconciling one GpuPool: its capacity online and its circuit breaker.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::jiff::Timestamp;
use kube::core::DeserializeGuard;
use kube::runtime::controller::Action;
use kube::{Resource, ResourceExt};
use tracing::{info, warn};

use crate::api::GpuPool;
use crate::planner;

use super::error::Error;
use super::status::write_status;
use super::{Context, events, observe};

const RESYNC: Duration = Duration::from_secs(300);

/// A pool is reconciled at most this often (and, over a large pool, at most
/// once per [`super::pace::POOL_PACE_FACTOR`] times a batch's plan pace,
/// 2 s at 1,000 nodes, 5 s at most; at once when its spec changed or
/// one of its nodes turned failed). Its status and metrics report
/// capacity, which may lag that long. Each batch's plan counts the breaker's
/// ledger in the pool's status together with the nodes failed now, so the
/// lag matters only for a failure erased from its node within that second,
/// before this reconcile recorded it. Without this, every
/// node a rollout admits re-counted the whole pool and wrote its status: 214
/// pool status writes for a 1,000-node rollout.
pub const EVERY: Duration = Duration::from_secs(1);

pub async fn reconcile(
    guard: Arc<DeserializeGuard<GpuPool>>,
    ctx: Arc<Context>,
) -> Result<Action, Error> {
    ctx.stores.ready().await.map_err(Error::Cache)?;
    if !ctx.leadership.is_leader() {
        return Ok(Action::requeue(Duration::from_secs(30)));
    }
    if let Ok(pool) = &guard.0
        && let Some(wait) = ctx.pool_wait(&pool.name_any(), pool.metadata.generation)
    {
        return Ok(Action::requeue(wait));
    }
    let started = std::time::Instant::now();
    let _timer = super::batch::ReconcileTimer::start(&ctx, "gpupool");
    let pool = match &guard.0 {
        Ok(pool) => pool,
        Err(invalid) => {
            let name = invalid.metadata.name.clone().unwrap_or_default();
            warn!(pool = %name, error = %invalid.error, "pool is invalid");
            let status = planner::invalid_pool_status(
                invalid.metadata.generation,
                &invalid.error.to_string(),
                Timestamp::now(),
            );
            write_status::<GpuPool>(&ctx, &name, &status, None).await?;
            return Ok(Action::await_change());
        }
    };
    let name = pool.name_any();
    let nodes = observe::pool_nodes(&ctx.stores, pool);
    let plan = planner::plan_pool(pool, &nodes, Timestamp::now());
    ctx.pool_planned(&name, pool.metadata.generation, nodes.len(), started);
    ctx.metrics.record_visits("gpupool", nodes.len());
    ctx.metrics.observe_pool(&name, &plan.status);
    let changed = pool.status.as_ref() != Some(&plan.status);
    if changed {
        write_status::<GpuPool>(&ctx, &name, &plan.status, pool.status.as_ref()).await?;
    }
    events::publish(
        &ctx.recorder,
        &ctx.event_limiter,
        &ctx.leadership,
        &pool.object_ref(&()),
        plan.events.iter().collect(),
    )
    .await;
    if changed {
        info!(
            pool = %name,
            gpus_ready = plan.status.gpus.ready,
            gpus = plan.status.gpus.total,
            domains_complete = plan.status.domains.complete,
            domains = plan.status.domains.total,
            breaker_tripped = plan.breaker.tripped,
            "reconciled pool"
        );
    }
    Ok(Action::requeue(plan.requeue_after.map_or(RESYNC, |d| {
        d.min(RESYNC) + Duration::from_millis(50)
    })))
}
