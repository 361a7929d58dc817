//! `gpufleet run`: the controller. It watches pools, batches, nodes and its
//! probe pods, asks the planner what to do, and does it. Thin and
//! idempotent: every decision stays in the planner.
//!
//! Each reconcile is a pipeline: dereference the pool and observe the caches
//! (no client required), plan (pure), act and write status (client required).
//!
//! [`run`] wires the pieces: the watches ([`watches`]), the controllers
//! ([`controllers`]) and the endpoints and election ([`endpoints`]), around
//! the [`Context`] every reconcile shares.

mod act;
mod batch;
mod context;
mod controllers;
mod deliveries;
mod endpoints;
mod error;
mod events;
mod fence;
mod http;
pub mod leader;
pub mod metrics;
pub mod nvcre;
mod observe;
/// The node cache, for tools and tests that measure it.
pub use observe::{NodeCache, view_event};
pub mod pace;
mod pool;
pub mod probe;
mod status;
mod watches;

use std::sync::Arc;

use kube::Client;
use tracing::{error, info};

pub use batch::FINALIZER;
pub use context::{Config, Context, PROBE_SERVICE_ACCOUNT, Probes};
pub use error::Error;

/// Runs the controllers until `shutdown` resolves.
pub async fn run(
    client: Client,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    // The lease is renewed through the client as given; everything else
    // goes through the fence, which sends no write once this replica
    // stopped leading.
    let mut election = endpoints::Election::start(&client, &config);
    let client = fence::client(client, election.leadership.clone());
    let watches = watches::watches(&client, &config);
    let ctx = Arc::new(Context::new(
        client.clone(),
        config.clone(),
        watches.stores.clone(),
        watches.expectations.clone(),
        watches.deliveries.clone(),
        election.leadership.clone(),
    ));
    let batch_controller = controllers::batches(
        client.clone(),
        watches.objects.clone(),
        watches.batch_requests,
        ctx.clone(),
    );
    let pool_controller =
        controllers::pools(client, watches.objects, watches.pool_requests, ctx.clone());
    let endpoints = endpoints::serve(&config, &watches.stores);

    info!(namespace = %config.namespace, probe_namespace = %config.probes.namespace, probe_service_account = %config.probes.service_account, concurrency = config.concurrency, node_selector = ?config.node_selector, selector = ?config.selector, election = config.lease.is_some(), "gpufleet is running");
    tokio::select! {
        result = endpoints => {
            let err = result.err().unwrap_or_else(|| anyhow::anyhow!("the HTTP endpoints stopped"));
            error!(%err, "the HTTP endpoints stopped");
            return Err(err);
        }
        _ = election.ended() => error!("the leader election ended"),
        _ = election.gauge(&config) => {},
        _ = watches.run => {},
        _ = batch_controller => error!("the batch controller ended"),
        _ = pool_controller => error!("the pool controller ended"),
        _ = shutdown => info!("shutting down"),
    }
    election.release().await;
    Ok(())
}
