//! Leader election on a `coordination.k8s.io/v1` Lease: only the leader
//! writes. A standby takes over once the lease has gone unrenewed for its
//! duration, counted from when it saw the last renewal; a leader stops
//! writing at two thirds of the duration after it *sent* its last
//! successful renewal (a renewal's answer may arrive late, and the standby
//! counts from the renewal it read, never later than the send), well
//! before anyone else may take over. Every renewal has its own deadline: a
//! request that hangs is abandoned, not waited on. A process paused (say by
//! SIGSTOP, or a stalled VM) past its lease finds its deadline gone on the
//! monotonic clock when it resumes, and writes nothing more.
//!
//! Why not kube-lease-manager: its `watch()` keeps reporting leadership while
//! renewals fail (it logs and backs off), so it cannot give the guarantee
//! above. This is the client-go algorithm in a hundred lines: expiry is judged
//! on the local monotonic clock from when a renewal was *observed*, so clock
//! skew between nodes does not matter.

use std::sync::Mutex;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, PostParams};
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::{info, warn};

use crate::keys;

/// Lease timings.
#[derive(Clone, Debug)]
pub struct LeaseConfig {
    pub namespace: String,
    pub name: String,
    /// This replica's identity (the pod name in a cluster).
    pub identity: String,
    /// How long a lease holds without renewal.
    pub duration: Duration,
    /// How often the leader renews and a standby looks.
    pub retry: Duration,
}

impl LeaseConfig {
    pub fn new(namespace: &str, name: &str, identity: &str) -> Self {
        LeaseConfig {
            namespace: namespace.into(),
            name: name.into(),
            identity: identity.into(),
            duration: Duration::from_secs(15),
            retry: Duration::from_secs(2),
        }
    }
}

/// Whether this replica may write, now. Cheap to clone and to ask.
#[derive(Clone)]
pub struct Leadership {
    /// `Some(deadline)` while leading: writes are allowed until then unless
    /// a renewal moves it on. No channel: no election, always leading.
    state: Option<watch::Receiver<Option<Instant>>>,
}

impl Leadership {
    /// A leadership that always leads (no election: one replica).
    pub fn always() -> Self {
        Leadership { state: None }
    }

    /// A leadership driven by hand: `Some(deadline)` leads until then.
    #[cfg(test)]
    pub fn manual() -> (Self, watch::Sender<Option<Instant>>) {
        let (tx, rx) = watch::channel(None);
        (Leadership { state: Some(rx) }, tx)
    }

    /// May this replica write right now?
    pub fn is_leader(&self) -> bool {
        match &self.state {
            None => true,
            Some(rx) => rx
                .borrow()
                .is_some_and(|deadline| Instant::now() < deadline),
        }
    }

    /// Resolves each time this replica becomes leader (never without an
    /// election: it leads from the start).
    pub async fn acquired(&mut self) {
        let Some(rx) = self.state.as_mut() else {
            return std::future::pending().await;
        };
        loop {
            let leading = rx.borrow().is_some();
            if rx.changed().await.is_err() {
                return std::future::pending().await;
            }
            if !leading && rx.borrow().is_some() {
                return;
            }
        }
    }
}

/// What was last seen of the lease, and when (local clock).
struct Observed {
    holder: Option<String>,
    renew: Option<MicroTime>,
    at: Instant,
}

/// Runs the election until `shutdown` resolves, then releases the lease if
/// held. Returns the leadership handle at once; the loop runs as a task.
pub fn elect(
    client: kube::Client,
    config: LeaseConfig,
) -> (Leadership, tokio::task::JoinHandle<()>, Releaser) {
    let (tx, rx) = watch::channel(None::<Instant>);
    let api: Api<Lease> = Api::namespaced(client, &config.namespace);
    let releaser = Releaser {
        api: api.clone(),
        config: config.clone(),
        tx: Mutex::new(None),
    };
    let tx = std::sync::Arc::new(tx);
    *releaser.tx.lock().expect("releaser") = Some(tx.clone());
    let task = tokio::spawn(async move {
        let mut observed: Option<Observed> = None;
        let mut last_renewal: Option<Instant> = None;
        // Stop writing at two thirds of the lease after the last renewal.
        let valid_for = config.duration * 2 / 3;
        // A renewal that has not answered by then is abandoned.
        let renew_within = valid_for / 2;
        loop {
            let sent = Instant::now();
            let attempt = tokio::time::timeout(
                renew_within,
                try_acquire_or_renew(&api, &config, &mut observed),
            )
            .await
            .unwrap_or_else(|_| {
                Err(kube::Error::Service(
                    format!("no answer within {renew_within:?}").into(),
                ))
            });
            match attempt {
                // Valid for two thirds of the lease from when the renewal
                // was sent: the API server wrote its renewTime after that.
                Ok(true) if sent.elapsed() < valid_for => {
                    if last_renewal.is_none() {
                        info!(lease = %config.name, identity = %config.identity, "became the leader");
                    }
                    last_renewal = Some(sent);
                    tx.send_replace(Some(sent + valid_for));
                }
                Ok(true) => {
                    warn!(lease = %config.name, "a renewal answered too late to lead on; stopped writing");
                    last_renewal = None;
                    tx.send_replace(None);
                }
                Ok(false) => {
                    if last_renewal.take().is_some() {
                        warn!(lease = %config.name, "lost the lease to another replica; standing by");
                    }
                    tx.send_replace(None);
                }
                Err(err) => {
                    warn!(lease = %config.name, %err, "could not reach the lease; will retry");
                    if last_renewal.is_some_and(|at| at.elapsed() >= valid_for) {
                        warn!(lease = %config.name, "lease not renewed in time; stopped writing");
                        last_renewal = None;
                        tx.send_replace(None);
                    }
                }
            }
            tokio::time::sleep(config.retry).await;
        }
    });
    (Leadership { state: Some(rx) }, task, releaser)
}

/// Gives the lease up on shutdown, so a standby takes over at once.
pub struct Releaser {
    api: Api<Lease>,
    config: LeaseConfig,
    tx: Mutex<Option<std::sync::Arc<watch::Sender<Option<Instant>>>>>,
}

impl Releaser {
    pub async fn release(&self) {
        let tx = self.tx.lock().expect("releaser").take();
        let Some(tx) = tx else { return };
        let was_leader = tx.borrow().is_some();
        tx.send_replace(None);
        if !was_leader {
            return;
        }
        if let Ok(Some(mut lease)) = self.api.get_opt(&self.config.name).await {
            let spec = lease.spec.get_or_insert_with(Default::default);
            if spec.holder_identity.as_deref() == Some(self.config.identity.as_str()) {
                spec.holder_identity = None;
                spec.renew_time = None;
                spec.acquire_time = None;
                let pp = PostParams {
                    field_manager: Some(keys::FIELD_MANAGER.into()),
                    ..Default::default()
                };
                match self.api.replace(&self.config.name, &pp, &lease).await {
                    Ok(_) => info!(lease = %self.config.name, "released the lease"),
                    Err(err) => {
                        warn!(lease = %self.config.name, %err, "could not release the lease")
                    }
                }
            }
        }
    }
}

async fn try_acquire_or_renew(
    api: &Api<Lease>,
    config: &LeaseConfig,
    observed: &mut Option<Observed>,
) -> kube::Result<bool> {
    let now = MicroTime(Timestamp::now());
    let pp = PostParams {
        field_manager: Some(keys::FIELD_MANAGER.into()),
        ..Default::default()
    };
    let seconds = i32::try_from(config.duration.as_secs()).unwrap_or(15);
    let Some(mut lease) = api.get_opt(&config.name).await? else {
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some(config.name.clone()),
                ..Default::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(config.identity.clone()),
                lease_duration_seconds: Some(seconds),
                acquire_time: Some(now.clone()),
                renew_time: Some(now),
                lease_transitions: Some(0),
                ..Default::default()
            }),
        };
        return match api.create(&pp, &lease).await {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
            Err(err) => Err(err),
        };
    };
    let spec = lease.spec.get_or_insert_with(Default::default);
    let holder = spec.holder_identity.clone().filter(|h| !h.is_empty());
    let ours = holder.as_deref() == Some(config.identity.as_str());
    // Note when the record last changed, on our own clock.
    let changed = observed
        .as_ref()
        .is_none_or(|o| o.holder != holder || o.renew != spec.renew_time);
    if changed {
        *observed = Some(Observed {
            holder: holder.clone(),
            renew: spec.renew_time.clone(),
            at: Instant::now(),
        });
    }
    let held_for =
        Duration::from_secs(spec.lease_duration_seconds.unwrap_or(seconds).max(1) as u64);
    let expired = holder.is_none() || observed.as_ref().is_some_and(|o| o.at.elapsed() > held_for);
    if !ours && !expired {
        return Ok(false);
    }
    if !ours {
        spec.acquire_time = Some(now.clone());
        spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
        info!(lease = %config.name, previous = ?holder, "taking over the lease");
    }
    spec.holder_identity = Some(config.identity.clone());
    spec.lease_duration_seconds = Some(seconds);
    spec.renew_time = Some(now);
    // replace carries the resourceVersion read above: a race loses with 409.
    match api.replace(&config.name, &pp, &lease).await {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
        Err(err) => Err(err),
    }
}
