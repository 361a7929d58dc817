//! The hub controller of FleetRollouts (`gpufleet fleet run`): every
//! interval, for each FleetRollout, it reads the ClusterProfiles of its
//! namespace, looks at every member of the rollout at once (each within a
//! deadline, so a slow one never holds the others up), decides
//! ([`super::decide`]), raises the approved member batches'
//! `spec.approvedWaves` (mode `Approve`) and writes the status on the hub.
//!
//! It keeps nothing but member clients between looks: killed at any
//! instant, it decides the same again from what the clusters say. A member
//! write carries the batch's `resourceVersion` from this look, so a batch
//! changed since (by a person, Git or another hub controller) is not
//! overwritten; the next look decides again.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use futures::future::join_all;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::core::DeserializeGuard;
use tokio::sync::Mutex;
use tracing::{info, warn};

use super::access::{self, Providers};
use super::decide::{self, Member, Seen};
use super::observe::{self, Down};
use crate::api::{ClusterProfile, FleetMode, FleetRollout, RolloutBatch};

/// The field manager of every write the hub controller makes.
pub const FIELD_MANAGER: &str = "gpufleet-fleet";

/// How the hub controller runs.
#[derive(Clone, Debug)]
pub struct Config {
    /// Only FleetRollouts of this namespace; None: every namespace.
    pub namespace: Option<String>,
    pub providers: Providers,
    /// Time between looks.
    pub interval: Duration,
    /// How long a member has to answer a look.
    pub deadline: Duration,
    pub user_agent: String,
}

/// Member clients, kept while their ClusterProfile does not change.
#[derive(Default)]
struct Clients {
    by_profile: HashMap<(String, String), (String, kube::Client)>,
}

/// Runs until the process ends; a hub outage or a failing member is
/// logged and looked at again next interval.
pub async fn run(hub: kube::Client, config: Config) -> anyhow::Result<()> {
    let clients = Arc::new(Mutex::new(Clients::default()));
    loop {
        if let Err(e) = look_all(&hub, &config, &clients).await {
            warn!(error = %e, "fleet: the hub did not answer; trying again");
        }
        tokio::time::sleep(config.interval).await;
    }
}

async fn look_all(
    hub: &kube::Client,
    config: &Config,
    clients: &Arc<Mutex<Clients>>,
) -> anyhow::Result<()> {
    let api: Api<DeserializeGuard<FleetRollout>> = match &config.namespace {
        Some(ns) => Api::namespaced(hub.clone(), ns),
        None => Api::all(hub.clone()),
    };
    for item in api.list(&ListParams::default()).await?.items {
        match item.0 {
            Ok(rollout) => {
                if let Err(e) = reconcile(hub, config, clients, &rollout).await {
                    warn!(
                        fleetrollout = %rollout.name_any(),
                        error = %e,
                        "fleet: look failed; trying again"
                    );
                }
            }
            // The schema refuses what does not decode; one written around
            // it is left alone, with a line in the log.
            Err(e) => warn!(
                fleetrollout = %e.metadata.name.unwrap_or_default(),
                error = %e.error,
                "fleet: a FleetRollout does not decode; fix or delete it"
            ),
        }
    }
    Ok(())
}

/// One look at one FleetRollout.
async fn reconcile(
    hub: &kube::Client,
    config: &Config,
    clients: &Arc<Mutex<Clients>>,
    rollout: &FleetRollout,
) -> anyhow::Result<()> {
    let namespace = rollout.namespace().unwrap_or_default();
    let name = rollout.name_any();
    let profiles: Vec<ClusterProfile> =
        Api::<DeserializeGuard<ClusterProfile>>::namespaced(hub.clone(), &namespace)
            .list(&ListParams::default())
            .await?
            .items
            .into_iter()
            .filter_map(|p| p.0.ok())
            .collect();
    let members: Vec<Member> = profiles
        .iter()
        .map(|p| Member {
            name: p.name_any(),
            labels: p.labels().clone(),
        })
        .collect();
    let in_rollout: Vec<String> = decide::resolve(&rollout.spec, &members)
        .map(|stages| stages.into_iter().flatten().collect())
        .unwrap_or_default();
    let looks = in_rollout.iter().map(|member| {
        let profile = profiles.iter().find(|p| &p.name_any() == member).cloned();
        let namespace = namespace.clone();
        async move {
            let Some(profile) = profile else {
                return (
                    member.clone(),
                    Seen::Unreachable("no ClusterProfile".into()),
                    None,
                );
            };
            let (seen, version) =
                look_member(config, clients, &namespace, &profile, &rollout.spec.batch).await;
            (member.clone(), seen, version)
        }
    });
    let results = join_all(looks).await;
    let mut seen = BTreeMap::new();
    let mut versions = BTreeMap::new();
    for (member, s, version) in results {
        if let Some(v) = version {
            versions.insert(member.clone(), v);
        }
        seen.insert(member, s);
    }
    let previous = rollout.status.clone().unwrap_or_default();
    let decision = decide::decide(
        &rollout.spec,
        rollout.metadata.generation,
        &previous,
        &members,
        &seen,
        Timestamp::now(),
    );
    // A member's reachability in the log when it changes, not every look.
    for line in &decision.status.clusters {
        let before = previous
            .clusters
            .iter()
            .find(|c| c.name == line.name)
            .map(|c| c.phase.as_str());
        let down = |p: &str| p == "Unreachable" || p == "NoCredentials";
        match (before, line.phase.as_str()) {
            (b, now) if down(now) && b != Some(now) => warn!(
                fleetrollout = %name,
                cluster = %line.name,
                phase = now,
                error = %line.message,
                "fleet: a member cannot be read; nothing is approved until it can be"
            ),
            (Some(b), now) if down(b) && !down(now) => info!(
                fleetrollout = %name,
                cluster = %line.name,
                "fleet: the member answers again"
            ),
            _ => {}
        }
    }
    if rollout.spec.mode == FleetMode::Approve {
        for approval in &decision.approvals {
            let Some((client, rv)) = versions.get(&approval.cluster) else {
                continue;
            };
            let patch = serde_json::json!({
                "metadata": {"resourceVersion": rv},
                "spec": {"approvedWaves": approval.to},
            });
            let batches: Api<RolloutBatch> = Api::all(client.clone());
            match batches
                .patch(&rollout.spec.batch, &params(), &Patch::Merge(&patch))
                .await
            {
                Ok(_) => info!(
                    fleetrollout = %name,
                    cluster = %approval.cluster,
                    approved_waves = approval.to,
                    "fleet: approved the member batch's waves"
                ),
                Err(e) => warn!(
                    fleetrollout = %name,
                    cluster = %approval.cluster,
                    error = %observe::describe(&e),
                    "fleet: approving failed; deciding again next look"
                ),
            }
        }
    }
    if !worth_writing(&previous, &decision.status) {
        return Ok(());
    }
    let api: Api<FleetRollout> = Api::namespaced(hub.clone(), &namespace);
    api.patch_status(
        &name,
        &params(),
        &Patch::Merge(&serde_json::json!({ "status": decision.status })),
    )
    .await?;
    Ok(())
}

/// Looks at one member: what it says of the batch, and a client with the
/// batch's resourceVersion for a write.
async fn look_member(
    config: &Config,
    clients: &Arc<Mutex<Clients>>,
    namespace: &str,
    profile: &ClusterProfile,
    batch: &str,
) -> (Seen, Option<(kube::Client, String)>) {
    let key = (namespace.to_string(), profile.name_any());
    let version = profile.resource_version().unwrap_or_default();
    let client = async {
        let cached = clients
            .lock()
            .await
            .by_profile
            .get(&key)
            .filter(|(v, _)| *v == version)
            .map(|(_, c)| c.clone());
        if let Some(c) = cached {
            return Ok(c);
        }
        let access = access::profile_access(profile, &config.providers);
        let c = access::client(&access, &config.user_agent, config.deadline).await?;
        clients
            .lock()
            .await
            .by_profile
            .insert(key.clone(), (version.clone(), c.clone()));
        Ok(c)
    };
    match observe::look(config.deadline, client).await {
        Ok((client, report)) => {
            let rv = report
                .batches
                .iter()
                .find(|b| b.name_any() == batch)
                .and_then(|b| b.resource_version());
            let seen = observe::seen_batch(&report, batch);
            (seen, rv.map(|rv| (client, rv)))
        }
        Err(Down::NoCredentials(e)) => (Seen::NoCredentials(e), None),
        Err(Down::Unreachable(e)) => {
            // Credentials may have expired or moved: make a new client next look.
            clients.lock().await.by_profile.remove(&key);
            (Seen::Unreachable(e), None)
        }
    }
}

/// Is the new status worth a write? Not when only the members' `lastSeen`
/// moved and the last write is under a minute old: a look every few
/// seconds would otherwise write every few seconds.
fn worth_writing(
    previous: &crate::api::FleetRolloutStatus,
    next: &crate::api::FleetRolloutStatus,
) -> bool {
    let strip = |s: &crate::api::FleetRolloutStatus| {
        let mut s = s.clone();
        for c in &mut s.clusters {
            c.last_seen = None;
        }
        s
    };
    if strip(previous) != strip(next) {
        return true;
    }
    let oldest = previous
        .clusters
        .iter()
        .zip(&next.clusters)
        .filter_map(|(p, n)| Some((p.last_seen.as_ref()?.0, n.last_seen.as_ref()?.0)))
        .map(|(p, n)| n.as_second() - p.as_second())
        .max();
    oldest.is_some_and(|age| age >= 60)
}

fn params() -> PatchParams {
    PatchParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{FleetClusterStatus, FleetRolloutStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    fn status(seen: &str, phase: &str) -> FleetRolloutStatus {
        FleetRolloutStatus {
            clusters: vec![FleetClusterStatus {
                name: "a".into(),
                phase: phase.into(),
                last_seen: Some(Time(seen.parse().unwrap())),
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    #[test]
    fn only_last_seen_moving_is_written_once_a_minute() {
        let t0 = status("2026-12-03T10:00:00Z", "Rolling");
        assert!(!worth_writing(
            &t0,
            &status("2026-12-03T10:00:30Z", "Rolling")
        ));
        assert!(worth_writing(
            &t0,
            &status("2026-12-03T10:01:00Z", "Rolling")
        ));
        assert!(worth_writing(&t0, &status("2026-12-03T10:00:05Z", "Ready")));
        assert!(worth_writing(&Default::default(), &t0));
    }
}
