//! One look at a member cluster: its pools and batches, read in two list
//! requests, leniently (an object that does not decode is counted, not an
//! error that hides the rest), within a deadline.

use std::time::Duration;

use kube::api::{Api, ListParams};
use kube::core::DeserializeGuard;

use super::access::ClientError;
use super::decide::{MemberBatch, Seen, stalled_failure};
use crate::api::{GpuPool, RolloutBatch};

/// A member's pools and batches.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct MemberReport {
    pub pools: Vec<GpuPool>,
    pub batches: Vec<RolloutBatch>,
    /// Objects that did not decode: (kind/name, why).
    pub unreadable: Vec<(String, String)>,
}

/// Why a look at a member found nothing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Down {
    /// No usable credentials: none configured, or the plugin failed or did
    /// not answer.
    NoCredentials(String),
    /// Credentials, but no answer within the deadline, or a refusal.
    Unreachable(String),
}

/// One look at a member within `deadline` as a whole: first its client
/// (`client`, which runs the credential plugin, bounded by the same
/// deadline), then its pools and batches in the time left. `fleet status`
/// and the FleetRollout controller both look this way.
pub async fn look(
    deadline: Duration,
    client: impl std::future::Future<Output = Result<kube::Client, ClientError>>,
) -> Result<(kube::Client, MemberReport), Down> {
    let begun = std::time::Instant::now();
    let client = client
        .await
        .map_err(|e| Down::NoCredentials(e.to_string()))?;
    let left = deadline.saturating_sub(begun.elapsed());
    match tokio::time::timeout(left, read(&client)).await {
        Err(_) => Err(Down::Unreachable(format!(
            "no answer within {}",
            seconds(deadline)
        ))),
        Ok(Err(e)) => Err(Down::Unreachable(describe(&e))),
        Ok(Ok(report)) => Ok((client, report)),
    }
}

/// Reads a member's pools and batches.
async fn read(client: &kube::Client) -> Result<MemberReport, kube::Error> {
    let pools = Api::<DeserializeGuard<GpuPool>>::all(client.clone());
    let batches = Api::<DeserializeGuard<RolloutBatch>>::all(client.clone());
    let lp = ListParams::default();
    let (pools, batches) = tokio::try_join!(pools.list(&lp), batches.list(&lp))?;
    let mut report = MemberReport::default();
    for item in pools.items {
        match item.0 {
            Ok(p) => report.pools.push(p),
            Err(e) => report.unreadable.push((
                format!("gpupool/{}", e.metadata.name.unwrap_or_default()),
                e.error,
            )),
        }
    }
    for item in batches.items {
        match item.0 {
            Ok(b) => report.batches.push(b),
            Err(e) => report.unreadable.push((
                format!("rolloutbatch/{}", e.metadata.name.unwrap_or_default()),
                e.error,
            )),
        }
    }
    Ok(report)
}

/// What the fleet decider needs of the batch `name` in this report.
pub fn seen_batch(report: &MemberReport, name: &str) -> Seen {
    if let Some((_, why)) = report
        .unreadable
        .iter()
        .find(|(n, _)| n == &format!("rolloutbatch/{name}"))
    {
        return Seen::Batch(MemberBatch {
            stalled: Some(format!("the batch does not decode: {why}")),
            ..Default::default()
        });
    }
    let Some(batch) = report
        .batches
        .iter()
        .find(|b| b.metadata.name.as_deref() == Some(name))
    else {
        return Seen::NoBatch;
    };
    let status = batch.status.clone().unwrap_or_default();
    let pool = report
        .pools
        .iter()
        .find(|p| p.metadata.name.as_deref() == Some(batch.spec.pool_ref.as_str()));
    let breaker_tripped = pool
        .and_then(|p| p.status.as_ref())
        .and_then(|s| s.breaker.as_ref())
        .is_some_and(|b| b.tripped);
    // A status from an older generation still says Ready about the old
    // spec: only the current one counts.
    let current = status.observed_generation == batch.metadata.generation;
    Seen::Batch(MemberBatch {
        approved_waves: batch.spec.approved_waves,
        total_waves: batch.spec.waves.len() as u32,
        current_wave: status.current_wave,
        ready: current
            && crate::planner::is_true(&status.conditions, crate::vocabulary::ConditionType::Ready),
        stalled: if current {
            stalled_failure(&status.conditions)
        } else {
            None
        },
        breaker_tripped,
        gate: status.gate.map(|g| g.name.as_str().to_string()),
    })
}

/// A kube error in one line a person can act on.
pub fn describe(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(s) => format!("the API server refused: {} ({})", s.message, s.code),
        other => {
            // The root cause says what to fix ("Connection refused"); the
            // outer layers ("ServiceError: client error (Connect)") do not.
            let mut root: &dyn std::error::Error = other;
            while let Some(next) = root.source() {
                root = next;
            }
            let outer = super::access::first_line(&format!("{other}"));
            let inner = super::access::first_line(&format!("{root}"));
            if inner == outer || outer.contains(&inner) {
                outer
            } else {
                format!("{inner} ({outer})")
            }
        }
    }
}

fn seconds(d: Duration) -> String {
    format!("{:.1} s", d.as_secs_f64())
}
