//! Verdict gates. What a probe's structured verdict ([`crate::verdict`])
//! must say before its node passes: its own checks, the pool's GPU count and
//! product, the fabric-completeness gate (`healthChecks.fabric`) and the
//! golden firmware tuple (`healthChecks.firmware`). What passes is kept on
//! the node (`gpufleet.io/verdict`, a [`VerdictRecord`]); at admission the
//! trays of one domain are compared by those records: one fabric clique,
//! and with `uniformDomains` one firmware tuple. A tray that disagrees with
//! the most of its domain fails, naming the field and both values; a domain
//! with no majority is held.
//!
//! A probe that writes no verdict is judged by its exit code alone, unless
//! the pool has a gate: then it fails, as does a verdict that is not valid.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::api::{FabricGate, FirmwareGate, GpuPoolSpec};
use crate::keys;
use crate::verdict::{Read, Verdict, clip};

use super::health::{Failure, FailureCategory};
use super::snapshot::{NodeState, NodeView};
use super::state::Planner;

/// What gpufleet keeps of a node's verdict, as `gpufleet.io/verdict`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct VerdictRecord {
    /// `<clusterUuid>.<cliqueId>`, when every GPU reported the same one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clique: Option<String>,
    /// The pool's fabric gate passed.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub fabric: bool,
    /// Versions by component (`driver`, `vbios`, `inforom`, `gsp`): the
    /// distinct values of the node's GPUs, joined by commas.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub firmware: BTreeMap<String, String>,
    /// The checks and gates that failed, as `[check, reason]`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failed: Vec<(String, String)>,
}

impl VerdictRecord {
    /// The record of a node's annotation; `None` when absent or unreadable.
    pub fn of(view: &NodeView) -> Option<VerdictRecord> {
        view.verdict
            .as_deref()
            .and_then(|v| serde_json::from_str(v).ok())
    }

    /// The annotation's value.
    pub fn to_annotation(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// The firmware components a record and the firmware gate name, with how
/// people write them.
const COMPONENTS: [(&str, &str); 4] = [
    ("driver", "driver"),
    ("vbios", "VBIOS"),
    ("inforom", "InfoROM"),
    ("gsp", "GSP firmware"),
];

/// One gate a verdict failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GateFailure {
    pub check: String,
    pub category: FailureCategory,
    pub reason: String,
}

impl GateFailure {
    fn new(check: &str, category: FailureCategory, reason: impl Into<String>) -> Self {
        GateFailure {
            check: check.into(),
            category,
            reason: reason.into(),
        }
    }
}

/// Does the pool gate on verdicts?
pub fn gated(pool: &GpuPoolSpec) -> bool {
    pool.health_checks.fabric.is_some() || pool.health_checks.firmware.is_some()
}

/// Judges a probe's verdict for `node` under the pool: what it failed
/// (nothing: it passes) and what to keep of it (`None` without a verdict).
pub fn judge(
    pool: &GpuPoolSpec,
    node: &NodeView,
    read: &Read,
) -> (Vec<GateFailure>, Option<VerdictRecord>) {
    use FailureCategory::*;
    let verdict = match read {
        Read::Absent if gated(pool) => {
            return (
                vec![GateFailure::new(
                    "verdict",
                    VerdictInvalid,
                    "its probe wrote no verdict (gpufleet.io/verdict/v1 JSON in its termination message), and the pool's fabric or firmware gate reads one: run `gpufleet probe` in the probe",
                )],
                None,
            );
        }
        Read::Absent => return (Vec::new(), None),
        Read::Invalid(why) => {
            return (
                vec![GateFailure::new("verdict", VerdictInvalid, clip(why, 300))],
                None,
            );
        }
        Read::Valid(v) => v,
    };
    let mut failures: Vec<GateFailure> = verdict
        .failed()
        .map(|c| {
            GateFailure::new(
                &c.name,
                ProbeFailed,
                format!(
                    "check {} failed: {}",
                    clip(&c.name, 32),
                    c.reason.as_deref().unwrap_or("no reason given")
                ),
            )
        })
        .collect();
    let hw = &pool.hardware;
    let seen = verdict.gpus.len();
    if seen != hw.gpus_per_node as usize {
        failures.push(GateFailure::new(
            "gpu-count",
            WrongGpuCount,
            format!(
                "verdict lists {seen} GPUs, pool expects {}",
                hw.gpus_per_node
            ),
        ));
    }
    let wrong: BTreeSet<&str> = verdict
        .gpus
        .iter()
        .map(|g| g.product.as_str())
        .filter(|p| !hw.gpu_product.iter().any(|a| same_product(a, p)))
        .collect();
    if !wrong.is_empty() {
        failures.push(GateFailure::new(
            "product",
            WrongProduct,
            format!(
                "verdict reports {}, pool accepts {}",
                wrong.into_iter().collect::<Vec<_>>().join(", "),
                hw.gpu_product.join(", ")
            ),
        ));
    }
    let fabric_before = failures.len();
    if let Some(gate) = &pool.health_checks.fabric {
        failures.extend(fabric_failures(gate, node, verdict));
    }
    let fabric_ok = pool.health_checks.fabric.is_some() && failures.len() == fabric_before;
    let mut record = VerdictRecord {
        clique: clique_of(verdict),
        fabric: fabric_ok,
        firmware: firmware_of(verdict),
        failed: Vec::new(),
    };
    if let Some(gate) = &pool.health_checks.firmware {
        failures.extend(tuple_failures(gate, &record.firmware));
    }
    record.failed = failures
        .iter()
        .map(|f| (f.check.clone(), clip(&f.reason, 200)))
        .collect();
    (failures, Some(record))
}

/// The failures as one node failure: the first one's category, every
/// reason after `prefix`, in one line.
pub fn as_failure(prefix: &str, failures: &[GateFailure]) -> Option<Failure> {
    let first = failures.first()?;
    let words = failures
        .iter()
        .map(|f| f.reason.as_str())
        .collect::<Vec<_>>()
        .join("; ");
    Some(Failure::new(
        first.category,
        clip(&format!("{prefix}{words}"), 600),
    ))
}

/// Products compare as GPU Feature Discovery writes them: `NVIDIA GB200`
/// is `NVIDIA-GB200`.
fn same_product(accepted: &str, reported: &str) -> bool {
    let norm = |s: &str| s.trim().replace(' ', "-").to_ascii_lowercase();
    norm(accepted) == norm(reported)
}

/// All zeros (an unassigned cluster UUID).
fn all_zeros(uuid: &str) -> bool {
    uuid.chars().all(|c| c == '0' || c == '-')
}

/// `<clusterUuid>.<cliqueId>` of the verdict when all its GPUs report the
/// same, registered one.
fn clique_of(verdict: &Verdict) -> Option<String> {
    let mut cliques = verdict.gpus.iter().map(|g| {
        let f = g.fabric.as_ref()?;
        Some(format!("{}.{}", f.cluster_uuid.as_deref()?, f.clique_id?))
    });
    let first = cliques.next()??;
    cliques
        .all(|c| c.as_deref() == Some(first.as_str()))
        .then_some(first)
}

/// The node's versions by component: distinct values, joined by commas.
fn firmware_of(verdict: &Verdict) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    if let Some(d) = &verdict.driver {
        out.insert("driver".to_string(), d.clone());
    }
    for (key, get) in [
        (
            "vbios",
            (|g: &crate::verdict::Gpu| g.vbios.clone()) as fn(&_) -> _,
        ),
        ("inforom", |g| g.inforom.clone()),
        ("gsp", |g| g.gsp.clone()),
    ] {
        let values: BTreeSet<String> = verdict.gpus.iter().filter_map(get).collect();
        if !values.is_empty() {
            out.insert(
                key.to_string(),
                values.into_iter().collect::<Vec<_>>().join(","),
            );
        }
    }
    out
}

/// `GPU 2` or `GPUs 0, 1, 3`.
fn gpus_words(indexes: &[u32]) -> String {
    match indexes {
        [one] => format!("GPU {one}"),
        many => format!(
            "GPUs {}",
            many.iter()
                .map(u32::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// What the fabric gate finds wrong with one node's verdict.
fn fabric_failures(gate: &FabricGate, node: &NodeView, verdict: &Verdict) -> Vec<GateFailure> {
    use FailureCategory::FabricIncomplete;
    // Problem → the GPUs that have it, so four GPUs alike make one reason.
    let mut problems: BTreeMap<String, Vec<u32>> = BTreeMap::new();
    let mut note = |gpu: u32, problem: String| problems.entry(problem).or_default().push(gpu);
    for gpu in &verdict.gpus {
        let Some(f) = &gpu.fabric else {
            note(
                gpu.index,
                format!(
                    "no NVLink fabric reported ({}); the pool's fabric gate needs one",
                    clip(&gpu.product, 40)
                ),
            );
            continue;
        };
        if f.state != "Completed" {
            note(
                gpu.index,
                format!("fabric state is {}, not Completed", clip(&f.state, 40)),
            );
        } else if f.status.as_deref() != Some("Success") {
            note(
                gpu.index,
                format!(
                    "fabric status is {}, not Success",
                    clip(f.status.as_deref().unwrap_or("absent"), 40)
                ),
            );
        }
        match f.clique_id {
            None | Some(0) => note(gpu.index, "fabric cliqueId is 0 (unassigned)".into()),
            Some(_) => {}
        }
        match f.cluster_uuid.as_deref() {
            None => note(gpu.index, "fabric clusterUuid is absent".into()),
            Some(u) if all_zeros(u) => note(
                gpu.index,
                "fabric clusterUuid is all zeros (unassigned)".into(),
            ),
            Some(_) => {}
        }
        if let Some(h) = f.health.as_deref().filter(|h| *h != "Healthy") {
            note(gpu.index, format!("fabric health is {}", clip(h, 40)));
        }
        if let Some(c) = f
            .incorrect_configuration
            .as_deref()
            .filter(|c| *c != "None")
        {
            note(
                gpu.index,
                format!("fabric incorrect configuration: {}", clip(c, 40)),
            );
        }
        let expected = gate
            .min_nvlinks_per_gpu
            .or_else(|| gpu.nvlink.as_ref().map(|l| l.expected).filter(|e| *e > 0));
        match (&gpu.nvlink, expected) {
            (Some(links), Some(min)) if links.active < min => note(
                gpu.index,
                format!("{} of {min} NVLink links active", links.active),
            ),
            (None, Some(min)) => note(
                gpu.index,
                format!("no NVLink links reported; the pool needs {min}"),
            ),
            _ => {}
        }
    }
    // The problems of one set of GPUs in one reason: "all 4 GPUs: …".
    let mut by_gpus: BTreeMap<Vec<u32>, Vec<String>> = BTreeMap::new();
    for (problem, gpus) in problems {
        by_gpus.entry(gpus).or_default().push(problem);
    }
    let every = verdict.gpus.len();
    let noted = !by_gpus.is_empty();
    let mut failures: Vec<GateFailure> = by_gpus
        .into_iter()
        .map(|(gpus, problems)| {
            let whose = if gpus.len() == every && every > 1 {
                format!("all {every} GPUs")
            } else {
                gpus_words(&gpus)
            };
            GateFailure::new(
                "fabric",
                FabricIncomplete,
                format!("{whose}: {}", problems.join("; ")),
            )
        })
        .collect();
    // One clique for the node's GPUs.
    let cliques: BTreeMap<String, Vec<u32>> = verdict
        .gpus
        .iter()
        .filter_map(|g| {
            let f = g.fabric.as_ref()?;
            let c = format!(
                "{}.{}",
                f.cluster_uuid.as_deref().unwrap_or("?"),
                f.clique_id.unwrap_or(0)
            );
            Some((c, g.index))
        })
        .fold(BTreeMap::new(), |mut map, (c, i)| {
            map.entry(c).or_insert_with(Vec::new).push(i);
            map
        });
    if cliques.len() > 1 {
        failures.push(GateFailure::new(
            "fabric",
            FabricIncomplete,
            format!(
                "the node's GPUs are in different cliques: {}",
                cliques
                    .iter()
                    .map(|(c, gpus)| format!("{} in {c}", gpus_words(gpus)))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ));
    } else if let (Some(clique), false, false) =
        (clique_of(verdict), gate.clique_label.is_empty(), noted)
    {
        match node.labels.get(&gate.clique_label) {
            None => failures.push(GateFailure::new(
                "fabric",
                FabricIncomplete,
                format!(
                    "label {} is missing: the fabric gate compares the verdict's clique with it",
                    gate.clique_label
                ),
            )),
            Some(label) => {
                if let Some(why) =
                    clique_disagreement(&clique, label, &format!("its label {}", gate.clique_label))
                {
                    failures.push(GateFailure::new("fabric", FabricIncomplete, why));
                }
            }
        }
    }
    failures
}

/// How clique `have` (`<clusterUuid>.<cliqueId>`) differs from `want`,
/// naming the field and both values; `None` when they agree.
fn clique_disagreement(have: &str, want: &str, whose: &str) -> Option<String> {
    if have == want {
        return None;
    }
    let split = |c: &str| {
        c.rsplit_once('.')
            .map(|(u, id)| (u.to_string(), id.to_string()))
            .unwrap_or_else(|| (c.to_string(), String::new()))
    };
    let ((hu, hid), (wu, wid)) = (split(have), split(want));
    Some(if hu != wu {
        format!(
            "fabric clusterUuid is {}, {whose} says {}",
            clip(&hu, 40),
            clip(&wu, 40)
        )
    } else {
        format!(
            "fabric cliqueId is {}, {whose} says {}",
            clip(&hid, 12),
            clip(&wid, 12)
        )
    })
}

/// What the firmware tuple finds wrong with a node's versions.
fn tuple_failures(gate: &FirmwareGate, firmware: &BTreeMap<String, String>) -> Vec<GateFailure> {
    let mut failures = Vec::new();
    for (key, word) in COMPONENTS {
        let accepted = match key {
            "driver" => &gate.driver,
            "vbios" => &gate.vbios,
            "inforom" => &gate.inforom,
            _ => &gate.gsp,
        };
        if accepted.is_empty() {
            continue;
        }
        let set = accepted_words(accepted);
        match firmware.get(key) {
            None => failures.push(GateFailure::new(
                "firmware",
                FailureCategory::FirmwareMismatch,
                format!("verdict reports no {word} version; the pool accepts {set}"),
            )),
            Some(values) => {
                for v in values
                    .split(',')
                    .filter(|v| !accepted.iter().any(|a| a == v))
                {
                    failures.push(GateFailure::new(
                        "firmware",
                        FailureCategory::FirmwareMismatch,
                        format!(
                            "{word} {} is not in the pool's accepted set ({set})",
                            clip(v, 64)
                        ),
                    ));
                }
            }
        }
    }
    failures
}

fn accepted_words(accepted: &[String]) -> String {
    let mut words: Vec<&str> = accepted.iter().take(3).map(String::as_str).collect();
    if accepted.len() > 3 {
        words.push("…");
    }
    words.join(", ")
}

/// The value held by more than half of `votes`, with its count.
fn majority<'v>(votes: &[&'v str]) -> Option<(&'v str, usize)> {
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for v in votes {
        *counts.entry(v).or_default() += 1;
    }
    counts.into_iter().find(|(_, n)| *n * 2 > votes.len())
}

impl Planner<'_> {
    /// The record member `m` carries: the one this plan wrote, else its
    /// annotation's.
    fn record(&self, m: usize) -> Option<VerdictRecord> {
        if let Some(patch) = &self.members[m].patch
            && let Some(value) = patch.annotations.get(keys::VERDICT)
        {
            return value.as_deref().and_then(|v| serde_json::from_str(v).ok());
        }
        VerdictRecord::of(self.members[m].view)
    }

    /// The domain gates over domain `d`'s passed members, before it is
    /// admitted: each record read again under the pool as it is now (its
    /// firmware tuple, the node's clique label), then the trays compared
    /// with each other. Fails the trays that disagree; holds the passed
    /// trays (returns false) when there is no majority to agree with.
    pub(super) fn domain_gates(&mut self, d: usize) -> bool {
        let checks = &self.pool.spec.health_checks;
        if !gated(&self.pool.spec) {
            return true;
        }
        let (fabric, firmware) = (checks.fabric.clone(), checks.firmware.clone());
        let members: Vec<usize> = self.domains[d].members.clone().collect();
        let mut records: Vec<(usize, VerdictRecord)> = Vec::new();
        for &m in &members {
            let passed = self.members[m].passed;
            let ready = self.members[m].state == NodeState::Ready;
            if !passed && !ready {
                continue;
            }
            let Some(record) = self.record(m) else {
                if passed {
                    self.fail(
                        m,
                        Failure::new(
                            FailureCategory::VerdictInvalid,
                            "passed its probe without a verdict on record (before the pool's fabric or firmware gate was set, or its gpufleet.io/verdict annotation was removed); retry it to check it against the gates",
                        ),
                    );
                }
                continue;
            };
            if passed {
                let mut again = Vec::new();
                if let Some(gate) = &firmware {
                    again.extend(tuple_failures(gate, &record.firmware));
                }
                if let Some(gate) = &fabric {
                    let view = self.members[m].view;
                    match (&record.clique, record.fabric) {
                        (Some(clique), true) if !gate.clique_label.is_empty() => {
                            let label = view.labels.get(&gate.clique_label);
                            let why = match label {
                                None => Some(format!("label {} is missing", gate.clique_label)),
                                Some(l) => clique_disagreement(clique, l, &format!("its label {}", gate.clique_label)),
                            };
                            again.extend(why.map(|w| {
                                GateFailure::new("fabric", FailureCategory::FabricIncomplete, w)
                            }));
                        }
                        (Some(_), true) => {}
                        _ => again.push(GateFailure::new(
                            "fabric",
                            FailureCategory::FabricIncomplete,
                            "passed its probe before the pool's fabric gate was set; retry it to check its fabric",
                        )),
                    }
                }
                if let Some(failure) = as_failure("", &again) {
                    self.fail(m, failure);
                    continue;
                }
            }
            records.push((m, record));
        }
        let mut hold: Option<String> = None;
        let mut outliers: BTreeMap<usize, Vec<GateFailure>> = BTreeMap::new();
        let mut compare = |field: &str, word: &str, category, votes: Vec<(usize, String)>| {
            if votes.len() < 2 {
                return;
            }
            let values: Vec<&str> = votes.iter().map(|(_, v)| v.as_str()).collect();
            match majority(&values) {
                Some((most, n)) => {
                    for (m, v) in &votes {
                        if v != most {
                            let why = if field == "clique" {
                                clique_disagreement(v, most, "its domain's").unwrap_or_default()
                            } else {
                                format!(
                                    "{word} {} differs from its domain's {}",
                                    clip(v, 64),
                                    clip(most, 64)
                                )
                            };
                            outliers.entry(*m).or_default().push(GateFailure::new(
                                if field == "clique" {
                                    "fabric"
                                } else {
                                    "firmware"
                                },
                                category,
                                format!("{why} (held by {n} of {} trays)", votes.len()),
                            ));
                        }
                    }
                }
                None => {
                    hold.get_or_insert_with(|| {
                        format!(
                            "the domain's trays disagree on their {word} and no value is held by more than half of them ({}); bring them in line, then retry",
                            values.iter().collect::<BTreeSet<_>>().into_iter().take(3).map(|v| clip(v, 48)).collect::<Vec<_>>().join(", ")
                        )
                    });
                }
            }
        };
        if fabric.is_some() {
            let votes = records
                .iter()
                .filter_map(|(m, r)| Some((*m, r.clique.clone()?)))
                .collect();
            compare(
                "clique",
                "fabric clique",
                FailureCategory::FabricIncomplete,
                votes,
            );
        }
        if firmware.as_ref().is_some_and(|f| f.uniform_domains) {
            for (key, word) in COMPONENTS {
                let votes = records
                    .iter()
                    .filter_map(|(m, r)| Some((*m, r.firmware.get(key)?.clone())))
                    .collect();
                compare(key, word, FailureCategory::FirmwareMismatch, votes);
            }
        }
        for (m, failures) in outliers {
            if self.members[m].passed
                && let Some(failure) = as_failure("", &failures)
            {
                self.fail(m, failure);
            }
        }
        match hold {
            None => true,
            Some(reason) => {
                for &m in &members {
                    if self.members[m].passed {
                        self.hold(m, &reason);
                    }
                }
                false
            }
        }
    }
}
