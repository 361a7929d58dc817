//! What the operator offers outside its reconciles: the metrics and health
//! endpoints (see [`super::http`]), and leader election (see
//! [`super::leader`]) with its gauge.

use std::time::Duration;

use futures::future;
use kube::Client;

use super::context::Config;
use super::observe::{self, Stores};
use super::{http, leader};

/// Serves `/metrics`, `/healthz` and `/readyz` where configured, for as long
/// as the operator runs; with none configured, this never resolves. An
/// error: the endpoints could not be served.
pub async fn serve(config: &Config, stores: &Stores) -> anyhow::Result<()> {
    let probes = http::Probes {
        metrics: config.metrics.clone(),
        synced: stores.synced.clone(),
        watches: observe::WATCHES,
    };
    http::serve(config.metrics_addr, config.health_addr, probes).await?;
    future::pending::<anyhow::Result<()>>().await
}

/// Leader election, when configured: every replica watches; only the leader
/// writes.
pub struct Election {
    /// Whether this replica leads (always, without election).
    pub leadership: leader::Leadership,
    /// The election loop; `None` without election.
    task: Option<tokio::task::JoinHandle<()>>,
    releaser: Option<leader::Releaser>,
}

impl Election {
    /// Starts the election loop, if `config` asks for one.
    pub fn start(client: &Client, config: &Config) -> Self {
        match &config.lease {
            Some(lease) => {
                let (leadership, task, releaser) = leader::elect(client.clone(), lease.clone());
                Election {
                    leadership,
                    task: Some(task),
                    releaser: Some(releaser),
                }
            }
            None => Election {
                leadership: leader::Leadership::always(),
                task: None,
                releaser: None,
            },
        }
    }

    /// Resolves when the election loop ends; without election, never.
    pub fn ended(&mut self) -> impl Future<Output = ()> + Send + 'static {
        let task = self.task.take();
        async move {
            match task {
                Some(task) => {
                    let _ = task.await;
                }
                None => future::pending::<()>().await,
            }
        }
    }

    /// Keeps the leader gauge up to date; never resolves.
    pub fn gauge(&self, config: &Config) -> impl Future<Output = ()> + Send + 'static {
        let leadership = self.leadership.clone();
        let metrics = config.metrics.clone();
        async move {
            loop {
                metrics.leader.set(i64::from(leadership.is_leader()));
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }

    /// Gives the lease up, if held, so a standby takes over at once.
    pub async fn release(&self) {
        if let Some(releaser) = &self.releaser {
            releaser.release().await;
        }
    }
}
