//! `gpufleet fleet status`: one line a member cluster and a total, from
//! each member's pools and batches, in 80 columns.

use std::collections::BTreeMap;

use k8s_openapi::jiff::Timestamp;
use serde::Serialize;

use super::observe::MemberReport;
use crate::planner::is_true;
use crate::view::{self, WIDTH};
use crate::vocabulary::ConditionType;

/// What `fleet status` says of one member.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterLine {
    pub name: String,
    /// Where it came from: `clusterprofile NAMESPACE/NAME` or `context NAME`.
    pub source: String,
    #[serde(flatten)]
    pub state: State,
}

/// Reached or not.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase", tag = "reached")]
pub enum State {
    #[serde(rename = "true")]
    Up(Summary),
    #[serde(rename = "false", rename_all = "camelCase")]
    Down {
        /// No usable credentials (else: no answer, or refused).
        no_credentials: bool,
        error: String,
        /// When this machine last reached it, if ever.
        last_seen: Option<Timestamp>,
        /// Seconds the look took before giving up.
        seconds: f64,
    },
}

/// One reached member, summed up.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Summary {
    pub pools: u32,
    pub gpus_ready: u64,
    pub gpus_total: u64,
    pub domains_complete: u64,
    pub domains_total: u64,
    /// Batches not Ready: name, `wave/total`, and the gate it waits on.
    pub in_flight: Vec<InFlight>,
    /// Pools whose circuit breaker is tripped.
    pub breakers_tripped: Vec<String>,
    /// GPUs online in H100-equivalents, when every product online has a
    /// factor; pools accepting several products count at the lowest.
    pub h100_equivalents: Option<f64>,
    /// Products online without a factor.
    pub unfactored: Vec<String>,
    /// Objects that did not decode.
    pub unreadable: usize,
    pub seconds: f64,
}

/// A batch in flight.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct InFlight {
    pub batch: String,
    pub wave: String,
    pub gate: Option<String>,
}

/// Sums a member's report up. `factors` gives H100-equivalents per GPU by
/// product (the `nvidia.com/gpu.product` value, `NVIDIA-GB200`).
pub fn summarize(report: &MemberReport, factors: &BTreeMap<String, f64>, seconds: f64) -> Summary {
    let mut s = Summary {
        pools: report.pools.len() as u32,
        unreadable: report.unreadable.len(),
        seconds,
        h100_equivalents: Some(0.0),
        ..Default::default()
    };
    for pool in &report.pools {
        let status = pool.status.clone().unwrap_or_default();
        s.gpus_ready += u64::from(status.gpus.ready);
        s.gpus_total += u64::from(status.gpus.total);
        s.domains_complete += u64::from(status.domains.complete);
        s.domains_total += u64::from(status.domains.total);
        if status.breaker.as_ref().is_some_and(|b| b.tripped) {
            s.breakers_tripped
                .push(pool.metadata.name.clone().unwrap_or_default());
        }
        if status.gpus.ready == 0 {
            continue;
        }
        let products = &pool.spec.hardware.gpu_product;
        let missing: Vec<&String> = products
            .iter()
            .filter(|p| !factors.contains_key(*p))
            .collect();
        if missing.is_empty() {
            let lowest = products
                .iter()
                .map(|p| factors[p])
                .fold(f64::INFINITY, f64::min);
            if let Some(total) = &mut s.h100_equivalents {
                *total += f64::from(status.gpus.ready) * lowest;
            }
        } else {
            s.h100_equivalents = None;
            for p in missing {
                if !s.unfactored.contains(p) {
                    s.unfactored.push(p.clone());
                }
            }
        }
    }
    for batch in &report.batches {
        let status = batch.status.clone().unwrap_or_default();
        if is_true(&status.conditions, ConditionType::Ready) {
            continue;
        }
        s.in_flight.push(InFlight {
            batch: batch.metadata.name.clone().unwrap_or_default(),
            wave: format!("{}/{}", status.current_wave, batch.spec.waves.len()),
            gate: status.gate.map(|g| g.name.as_str().to_string()),
        });
    }
    s
}

/// The table: a line a member, then the total and what to do next.
pub fn render(lines: &[ClusterLine], now: Timestamp, took: f64) -> Vec<String> {
    let mut out = vec![format!(
        "{:<14} {:>5} {:>17} {:>9} {:>9}  {}",
        "CLUSTER", "POOLS", "GPUS ONLINE", "DOMAINS", "H100-EQ", "IN FLIGHT / BREAKERS"
    )];
    let mut total = Summary {
        h100_equivalents: Some(0.0),
        ..Default::default()
    };
    let mut down = 0;
    for line in lines {
        let name = clip(&line.name, 14);
        match &line.state {
            State::Up(s) => {
                total.pools += s.pools;
                total.gpus_ready += s.gpus_ready;
                total.gpus_total += s.gpus_total;
                total.domains_complete += s.domains_complete;
                total.domains_total += s.domains_total;
                total.h100_equivalents = match (total.h100_equivalents, s.h100_equivalents) {
                    (Some(a), Some(b)) => Some(a + b),
                    _ => None,
                };
                for p in &s.unfactored {
                    if !total.unfactored.contains(p) {
                        total.unfactored.push(p.clone());
                    }
                }
                total.in_flight.extend(s.in_flight.iter().cloned());
                total
                    .breakers_tripped
                    .extend(s.breakers_tripped.iter().cloned());
                let mut what: Vec<String> = s
                    .breakers_tripped
                    .iter()
                    .map(|p| format!("BREAKER {p}"))
                    .collect();
                what.extend(s.in_flight.iter().map(|b| {
                    format!(
                        "{} {}{}",
                        b.batch,
                        b.wave,
                        b.gate
                            .as_deref()
                            .map(|g| format!(" {g}"))
                            .unwrap_or_default()
                    )
                }));
                if what.is_empty() {
                    what.push("-".into());
                }
                out.push(format!(
                    "{name:<14} {:>5} {:>17} {:>9} {:>9}  {}",
                    s.pools,
                    gpus(s.gpus_ready, s.gpus_total),
                    format!("{}/{}", s.domains_complete, s.domains_total),
                    h100(s.h100_equivalents),
                    clip(&what.join(", "), 20)
                ));
            }
            State::Down {
                no_credentials,
                error,
                last_seen,
                seconds,
            } => {
                down += 1;
                let seen = last_seen.map_or_else(
                    || "never reached from here".to_string(),
                    |t| format!("last seen {}", view::ago(now, t)),
                );
                let text = if *no_credentials {
                    format!("{name:<14} NO CREDENTIALS ({seen}): {error}")
                } else {
                    format!("{name:<14} UNREACHABLE after {seconds:.1} s ({seen}): {error}")
                };
                out.extend(view::wrap(&text, WIDTH, 15));
            }
        }
    }
    out.push(format!(
        "{:<14} {:>5} {:>17} {:>9} {:>9}  {}",
        "TOTAL",
        total.pools,
        gpus(total.gpus_ready, total.gpus_total),
        format!("{}/{}", total.domains_complete, total.domains_total),
        h100(total.h100_equivalents),
        clip(
            &match total.breakers_tripped.len() {
                0 => format!("{} in flight", total.in_flight.len()),
                n => format!("{} in flight, {n} TRIPPED", total.in_flight.len()),
            },
            20
        )
    ));
    let reached = lines.len() - down;
    let mut notes = vec![format!(
        "{reached} of {} clusters answered in {took:.1} s{}",
        lines.len(),
        if down > 0 {
            "; the totals leave out those that did not."
        } else {
            "."
        }
    )];
    if !total.unfactored.is_empty() {
        notes.push(format!(
            "Set --h100-factor for {} to see H100-equivalents (docs/fleet.md has \
             example factors).",
            total.unfactored.join(", ")
        ));
    }
    if down > 0 {
        notes.push(
            "Check the unreachable clusters' API servers and credentials; the \
             others are current."
                .into(),
        );
    } else if !total.in_flight.is_empty() {
        notes.push(
            "See one batch wave by wave: gpufleet status BATCH --context CLUSTER \
             (or the member's kubeconfig)."
                .into(),
        );
    }
    out.push(String::new());
    for note in notes {
        out.extend(view::wrap(&note, WIDTH, 0));
    }
    out
}

fn gpus(ready: u64, total: u64) -> String {
    if total == 0 {
        return "0/0".into();
    }
    let percent = ready * 100 / total;
    let text = format!(
        "{}/{} {percent}%",
        view::thousands(ready),
        view::thousands(total)
    );
    if text.len() <= 17 {
        text
    } else {
        format!("{}/{}", compact(ready), compact(total))
    }
}

fn compact(n: u64) -> String {
    match n {
        0..1_000 => n.to_string(),
        1_000..1_000_000 => format!("{:.1}k", n as f64 / 1e3),
        _ => format!("{:.2}M", n as f64 / 1e6),
    }
}

fn h100(value: Option<f64>) -> String {
    value.map_or_else(|| "-".into(), |v| compact(v.round() as u64))
}

fn clip(text: &str, width: usize) -> String {
    if text.chars().count() <= width {
        text.to_string()
    } else {
        let mut s: String = text.chars().take(width - 1).collect();
        s.push('…');
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{GpuPool, GpuPoolStatus};

    fn pool(name: &str, products: &[&str], ready: u32, total: u32, tripped: bool) -> GpuPool {
        let mut p: GpuPool = serde_json::from_value(serde_json::json!({
            "apiVersion": "gpufleet.io/v1alpha1", "kind": "GpuPool",
            "metadata": {"name": name},
            "spec": {
                "nodeSelector": {},
                "hardware": {"gpuProduct": products, "gpusPerNode": 4},
            }
        }))
        .expect("a pool");
        p.status = Some(GpuPoolStatus {
            gpus: crate::api::GpuCounts { ready, total },
            breaker: Some(crate::api::BreakerStatus {
                tripped,
                ..Default::default()
            }),
            ..Default::default()
        });
        p
    }

    #[test]
    fn h100_equivalents_take_the_lowest_factor_and_need_every_product() {
        let factors: BTreeMap<String, f64> = [
            ("NVIDIA-GB200".to_string(), 2.5),
            ("NVIDIA-GB300".to_string(), 3.0),
        ]
        .into();
        let report = MemberReport {
            pools: vec![
                pool("a", &["NVIDIA-GB200"], 72, 144, false),
                pool("b", &["NVIDIA-GB200", "NVIDIA-GB300"], 8, 8, true),
            ],
            ..Default::default()
        };
        let s = summarize(&report, &factors, 0.1);
        assert_eq!(s.h100_equivalents, Some(72.0 * 2.5 + 8.0 * 2.5));
        assert_eq!(s.breakers_tripped, vec!["b".to_string()]);
        assert_eq!((s.gpus_ready, s.gpus_total), (80, 152));
        let partial: BTreeMap<String, f64> = [("NVIDIA-GB200".to_string(), 2.5)].into();
        let s = summarize(&report, &partial, 0.1);
        assert_eq!(s.h100_equivalents, None);
        assert_eq!(s.unfactored, vec!["NVIDIA-GB300".to_string()]);
    }

    #[test]
    fn the_table_fits_80_columns_and_names_the_unreachable() {
        let now: Timestamp = "2026-12-03T10:00:00Z".parse().unwrap();
        let up = Summary {
            pools: 3,
            gpus_ready: 410_112,
            gpus_total: 550_000,
            domains_complete: 5_696,
            domains_total: 7_640,
            in_flight: vec![InFlight {
                batch: "delivery-2026-12-a-very-long-name".into(),
                wave: "3/4".into(),
                gate: Some("Probes".into()),
            }],
            h100_equivalents: Some(1_025_280.0),
            ..Default::default()
        };
        let lines = vec![
            ClusterLine {
                name: "colossus2-east-hall-b".into(),
                source: "context x".into(),
                state: State::Up(up),
            },
            ClusterLine {
                name: "member-b".into(),
                source: "context y".into(),
                state: State::Down {
                    no_credentials: false,
                    error: "connection refused".into(),
                    last_seen: Some("2026-12-03T09:59:19Z".parse().unwrap()),
                    seconds: 1.5,
                },
            },
        ];
        let out = render(&lines, now, 1.52);
        for line in &out {
            assert!(line.chars().count() <= WIDTH, "{line:?}");
        }
        let text = out.join("\n");
        assert!(
            text.contains("member-b       UNREACHABLE after 1.5 s (last seen 41s ago)"),
            "{text}"
        );
        assert!(text.contains("1 of 2 clusters answered in 1.5 s"), "{text}");
        assert!(text.contains("410.1k/550.0k"), "{text}");
        assert!(text.contains("1.03M"), "{text}");
    }
}
