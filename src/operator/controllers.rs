//! The controllers: one for batches, one for pools, each with its error
//! policy. The watches send them reconcile requests; a new leader
//! reconciles everything at once.

use std::sync::Arc;
use std::time::Duration;

use futures::{StreamExt, future};
use kube::Client;
use kube::Resource;
use kube::api::Api;
use kube::core::DeserializeGuard;
use kube::runtime::{
    Controller, Predicate, WatchStreamExt, controller, predicates, reflector, watcher,
};
use tracing::warn;

use crate::api::{GpuPool, RolloutBatch};

use super::context::Context;
use super::error::Error;
use super::watches::{BatchRequests, PoolRequests};
use super::{batch, leader, metrics, pool};

/// The batch controller: batches' own changes (the controller's own
/// watch), and the requests the other watches send: their pool's, nodes'
/// and probes'. Runs until its watch ends.
pub async fn batches(
    client: Client,
    watch: watcher::Config,
    requests: BatchRequests,
    ctx: Arc<Context>,
) {
    let config = controller::Config::default().concurrency(ctx.config.concurrency);
    // A batch's own changes trigger it only when they change what a plan
    // reads or what the finalizer needs: its spec (the generation), labels,
    // annotations, finalizers, deletion. Its status is gpufleet's own
    // writing: a status write never plans the batch again.
    let (reader, writer) = reflector::store();
    let own = watcher(Api::<DeserializeGuard<RolloutBatch>>::all(client), watch)
        .default_backoff()
        .reflect(writer)
        .applied_objects()
        .predicate_filter(not_status::<RolloutBatch>(), Default::default());
    Controller::for_stream(own, reader)
        .with_config(config)
        .reconcile_on(stream_of(requests))
        .reconcile_all_on(acquisitions(ctx.leadership.clone()))
        .run(reconcile_batch, error_policy_batch, ctx)
        .for_each(|result| {
            if let Err(err) = result {
                log_controller_error("rolloutbatch", &err);
            }
            future::ready(())
        })
        .await
}

/// What of an object its own watch triggers on: everything but its status
/// (spec through the generation, labels, annotations, finalizers,
/// deletion).
fn not_status<K: 'static>() -> impl Predicate<DeserializeGuard<K>> + Send + Sync + 'static
where
    DeserializeGuard<K>: Resource,
{
    fn deleting<K>(object: &DeserializeGuard<K>) -> Option<u64>
    where
        DeserializeGuard<K>: Resource,
    {
        Some(u64::from(object.meta().deletion_timestamp.is_some()))
    }
    predicates::generation
        .combine(predicates::labels)
        .combine(predicates::annotations)
        .combine(predicates::finalizers)
        .combine(deleting::<K>)
}

/// The pool controller: pools' own changes and their nodes'. Runs until its
/// watch ends.
pub async fn pools(
    client: Client,
    watch: watcher::Config,
    requests: PoolRequests,
    ctx: Arc<Context>,
) {
    let config = controller::Config::default().concurrency(ctx.config.concurrency);
    // As for batches: a pool's own status writes do not trigger it.
    let (reader, writer) = reflector::store();
    let own = watcher(Api::<DeserializeGuard<GpuPool>>::all(client), watch)
        .default_backoff()
        .reflect(writer)
        .applied_objects()
        .predicate_filter(not_status::<GpuPool>(), Default::default());
    Controller::for_stream(own, reader)
        .with_config(config)
        .reconcile_on(stream_of(requests))
        .reconcile_all_on(acquisitions(ctx.leadership.clone()))
        .run(reconcile_pool, error_policy_pool, ctx)
        .for_each(|result| {
            if let Err(err) = result {
                log_controller_error("gpupool", &err);
            }
            future::ready(())
        })
        .await
}

/// An unbounded receiver as a stream.
fn stream_of<T: Send + 'static>(
    mut rx: tokio::sync::mpsc::UnboundedReceiver<T>,
) -> impl futures::Stream<Item = T> + Send + 'static {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

/// A stream that yields each time this replica becomes leader, so that
/// everything is reconciled at once by the new leader.
fn acquisitions(
    leadership: leader::Leadership,
) -> impl futures::Stream<Item = ()> + Send + 'static {
    futures::stream::unfold(leadership, |mut l| async move {
        l.acquired().await;
        Some(((), l))
    })
}

/// Runs `reconcile`, turning a panic inside it into an error: kube's
/// controller re-raises a reconcile's panic, which took the whole process
/// (every pool) down, and the restarted process panicked again.
pub async fn guard_panics<T>(
    what: &str,
    reconcile: impl std::future::Future<Output = Result<T, Error>>,
) -> Result<T, Error> {
    use futures::FutureExt;
    match std::panic::AssertUnwindSafe(reconcile).catch_unwind().await {
        Ok(result) => result,
        Err(payload) => {
            let message = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a panic without a message".into());
            tracing::error!(object = %what, %message, "reconcile panicked; the object is stalled, the rest carries on");
            Err(Error::Panic {
                what: what.to_string(),
                message,
            })
        }
    }
}

async fn reconcile_batch(
    guard: Arc<DeserializeGuard<RolloutBatch>>,
    ctx: Arc<Context>,
) -> Result<controller::Action, Error> {
    let name = guarded_name(&guard);
    let result = guard_panics(
        &format!("batch {name}"),
        batch::reconcile(guard, ctx.clone()),
    )
    .await;
    if let Err(Error::Panic { message, .. }) = &result {
        // Said on the object, so a person sees it without the log.
        if let Err(err) = batch::stall_internal(&ctx, &name, message).await {
            log_controller_error_msg("rolloutbatch", &err);
        }
    }
    result
}

async fn reconcile_pool(
    guard: Arc<DeserializeGuard<GpuPool>>,
    ctx: Arc<Context>,
) -> Result<controller::Action, Error> {
    let name = guarded_name(&guard);
    guard_panics(&format!("pool {name}"), pool::reconcile(guard, ctx)).await
}

fn log_controller_error_msg(kind: &str, err: &Error) {
    warn!(kind, error = %err, "could not write the internal error on the object");
}

fn error_policy_batch(
    batch: Arc<DeserializeGuard<RolloutBatch>>,
    err: &Error,
    ctx: Arc<Context>,
) -> controller::Action {
    on_error("rolloutbatch", guarded_name(&batch), err, &ctx)
}

fn error_policy_pool(
    pool: Arc<DeserializeGuard<GpuPool>>,
    err: &Error,
    ctx: Arc<Context>,
) -> controller::Action {
    on_error("gpupool", guarded_name(&pool), err, &ctx)
}

/// The name of an object, read or not.
fn guarded_name<K: kube::Resource>(guard: &DeserializeGuard<K>) -> String {
    match &guard.0 {
        Ok(obj) => kube::ResourceExt::name_any(obj),
        Err(invalid) => invalid.metadata.name.clone().unwrap_or_default(),
    }
}

/// A failed reconcile: counted by category, logged with the object, retried
/// after a backoff that suits the error.
fn on_error(kind: &'static str, name: String, err: &Error, ctx: &Context) -> controller::Action {
    ctx.metrics
        .reconcile_errors
        .get_or_create(&metrics::ErrorLabels {
            kind: kind.into(),
            category: err.category().into(),
        })
        .inc();
    warn!(kind, object = %name, category = err.category(), error = %err, "reconcile failed; retrying");
    controller::Action::requeue(backoff(err))
}

/// Conflicts retry at once with fresh caches; other errors back off.
fn backoff(err: &Error) -> Duration {
    match err.category() {
        "conflict" => Duration::from_millis(200),
        "not_leader" => Duration::from_secs(30),
        "transport" | "api" | "cache" => Duration::from_secs(5),
        _ => Duration::from_secs(15),
    }
}

fn log_controller_error<Q: std::error::Error + 'static>(
    kind: &str,
    err: &controller::Error<Error, Q>,
) {
    match err {
        // Already logged with the object by the error policy.
        controller::Error::ReconcilerFailed(..) => {}
        other => warn!(kind, error = %other, "controller error"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_panic_in_a_reconcile_is_an_error_not_the_end_of_the_process() {
        let result: Result<(), Error> = guard_panics("batch b", async {
            let times: Vec<u32> = Vec::new();
            if times.is_empty() {
                panic!("index out of bounds: the len is 0");
            }
            Ok(())
        })
        .await;
        match result {
            Err(Error::Panic { what, message }) => {
                assert_eq!(what, "batch b");
                assert!(message.contains("index out of bounds"), "{message}");
            }
            other => panic!("expected a Panic error, got {other:?}"),
        }
        let fine: Result<u32, Error> = guard_panics("pool p", async { Ok(7) }).await;
        assert_eq!(fine.unwrap(), 7);
    }
}
