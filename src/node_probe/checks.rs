//! The checks of `gpufleet probe`, each a [`Check`] named as in
//! `docs/verdict.md`: `gpu-count`, `product`, `fabric`, `nvlink`, `ecc`,
//! `row-remap` ([`checks`]) and `dcgm` ([`dcgm`]).

use std::path::Path;
use std::time::Duration;

use super::{Report, check, exec, gpus};
use crate::verdict::{Check, CheckResult, Gpu};

/// What the node should have, from the probe's flags.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Expect {
    /// `--gpus N`: the GPUs the node must have.
    pub gpus: Option<u32>,
    /// `--product NAME`, repeatable: each GPU must be one of these.
    pub products: Vec<String>,
    /// `--nvlinks N`: the NVLinks each GPU must have up.
    pub nvlinks: Option<u32>,
}

/// The checks that need nothing but the report, in this order:
/// `gpu-count`, `product`, `fabric`, `nvlink`, `ecc`, `row-remap`.
pub fn checks(report: &Report, expect: &Expect) -> Vec<Check> {
    vec![
        gpu_count(report, expect),
        product(report, expect),
        fabric(report),
        nvlink(report, expect),
        ecc(report),
        row_remap(report),
    ]
}

/// Whether two product names are the same, case, spaces, hyphens and
/// underscores aside: `NVIDIA GB200` is `nvidia-gb200`.
pub fn same_product(a: &str, b: &str) -> bool {
    words(a) == words(b)
}

fn words(name: &str) -> Vec<String> {
    name.split(|c: char| c.is_whitespace() || c == '-' || c == '_')
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
        .collect()
}

/// A GB200 or GB300: a GPU of a multi-node NVLink domain (an NVL72 rack),
/// 18 NVLinks each.
fn rack_scale(product: &str) -> bool {
    words(product)
        .iter()
        .any(|w| w.starts_with("gb200") || w.starts_with("gb300"))
}

/// The NVLinks a GPU should have up: `--nvlinks`, else 18 on a GB200 or
/// GB300; `None` when not known.
pub fn expected_links(gpu: &Gpu, expect: &Expect) -> Option<u32> {
    expect
        .nvlinks
        .or_else(|| rack_scale(&gpu.product).then_some(18))
}

/// Failures, each naming its GPUs: GPUs that fail the same way share one
/// entry, `GPU 0, GPU 2: fabric state is In Progress, not Completed`.
#[derive(Default)]
struct Blame(Vec<(String, Vec<u32>)>);

impl Blame {
    fn add(&mut self, gpu: u32, what: String) {
        match self.0.iter_mut().find(|(w, _)| *w == what) {
            Some((_, gpus)) => gpus.push(gpu),
            None => self.0.push((what, vec![gpu])),
        }
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn reason(&self) -> String {
        self.0
            .iter()
            .map(|(what, gpus)| format!("{}: {what}", gpu_list(gpus)))
            .collect::<Vec<_>>()
            .join("; ")
    }
}

fn gpu_list(gpus: &[u32]) -> String {
    gpus.iter()
        .map(|i| format!("GPU {i}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn name(gpu: &Gpu) -> &str {
    if gpu.product.is_empty() {
        "an unnamed GPU"
    } else {
        &gpu.product
    }
}

/// The distinct values of a list, in first-seen order.
fn distinct(items: impl IntoIterator<Item = String>) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for item in items {
        if !out.contains(&item) {
            out.push(item);
        }
    }
    out
}

fn products(report: &Report) -> String {
    distinct(report.gpus.iter().map(|g| name(g).to_string())).join(", ")
}

fn same(a: &str, b: &str) -> bool {
    a.trim().eq_ignore_ascii_case(b)
}

/// A UUID of zeros only: no cluster assigned.
fn zeros(uuid: &str) -> bool {
    uuid.chars().all(|c| c == '0' || c == '-')
}

fn gpu_count(r: &Report, expect: &Expect) -> Check {
    let seen = r.gpus.len();
    let Some(want) = expect.gpus else {
        return check(
            "gpu-count",
            CheckResult::Skip,
            format!("{} seen; no --gpus to compare with", gpus(seen)),
        );
    };
    if seen == want as usize {
        return check(
            "gpu-count",
            CheckResult::Pass,
            format!("{}, as expected", gpus(seen)),
        );
    }
    let mut reason = format!("{} seen, {want} expected", gpus(seen));
    if let Some(attached) = r.attached.filter(|a| *a as usize != seen) {
        reason.push_str(&format!(" (nvidia-smi counts {attached} attached)"));
    }
    check("gpu-count", CheckResult::Fail, reason)
}

fn product(r: &Report, expect: &Expect) -> Check {
    if expect.products.is_empty() {
        return check(
            "product",
            CheckResult::Skip,
            format!("no --product to compare with; seen: {}", products(r)),
        );
    }
    let wanted = expect.products.join(" or ");
    let mut blame = Blame::default();
    for g in &r.gpus {
        if !expect.products.iter().any(|p| same_product(p, &g.product)) {
            blame.add(g.index, format!("{}, not {wanted}", name(g)));
        }
    }
    if blame.is_empty() {
        check(
            "product",
            CheckResult::Pass,
            match r.gpus.len() {
                1 => format!("the GPU is {}", products(r)),
                n => format!("all {n} GPUs are {}", products(r)),
            },
        )
    } else {
        check("product", CheckResult::Fail, blame.reason())
    }
}

/// The fabric rules. A GPU without a fabric has none to check, unless it
/// is a GB200/GB300, which cannot work without one. A GPU of a
/// multi-node NVLink domain (a GB200/GB300, or any GPU with a clique or
/// cluster assigned) must be registered (`Completed`, `Success`), in a
/// clique (not 0) of a cluster (not all zeros), healthy and rightly
/// configured, and in the same clique and cluster as the node's other
/// GPUs. A GPU on a single-node NVSwitch fabric (an HGX H100 or B200: clique
/// 0, cluster all zeros) must only be registered, healthy and rightly
/// configured; when it is, the fabric checks do not apply to it.
fn fabric(r: &Report) -> Check {
    let mut blame = Blame::default();
    let mut not_apply: Vec<String> = Vec::new();
    // The GPUs of a multi-node domain that joined one: (index, clique, cluster).
    let mut members: Vec<(u32, u32, &str)> = Vec::new();
    let mut domain_gpus = 0;
    let mut healthy = 0;
    for g in &r.gpus {
        let Some(f) = &g.fabric else {
            if rack_scale(&g.product) {
                blame.add(
                    g.index,
                    format!("fabric not reported ({} needs one)", name(g)),
                );
            } else {
                not_apply.push(format!("{} has no NVLink fabric", name(g)));
            }
            continue;
        };
        let assigned = f.clique_id.is_some_and(|c| c != 0)
            || f.cluster_uuid.as_deref().is_some_and(|u| !zeros(u));
        let domain = rack_scale(&g.product) || assigned;
        if !same(&f.state, "Completed") {
            blame.add(
                g.index,
                format!("fabric state is {}, not Completed", f.state),
            );
            continue;
        }
        match f.status.as_deref() {
            Some(s) if same(s, "Success") => {}
            Some(s) => {
                blame.add(g.index, format!("fabric status is {s}, not Success"));
                continue;
            }
            None if domain => {
                blame.add(g.index, "fabric status not reported".into());
                continue;
            }
            None => {}
        }
        if domain {
            domain_gpus += 1;
            match f.clique_id {
                None => blame.add(g.index, "clique not reported".into()),
                Some(0) => blame.add(g.index, "clique 0 (unassigned)".into()),
                Some(_) => {}
            }
            match f.cluster_uuid.as_deref() {
                None => blame.add(g.index, "cluster UUID not reported".into()),
                Some(u) if zeros(u) => {
                    blame.add(g.index, "cluster UUID all zeros (unassigned)".into())
                }
                Some(_) => {}
            }
            if let (Some(c), Some(u)) = (f.clique_id, f.cluster_uuid.as_deref())
                && c != 0
                && !zeros(u)
            {
                members.push((g.index, c, u));
            }
        }
        match f.health.as_deref() {
            Some(h) if same(h, "Healthy") => healthy += 1,
            Some(h) => blame.add(g.index, format!("fabric health is {h}")),
            None => {}
        }
        if let Some(c) = f.incorrect_configuration.as_deref()
            && !same(c, "None")
        {
            blame.add(g.index, format!("fabric incorrect configuration: {c}"));
        }
        if !domain {
            not_apply.push(format!(
                "{} is in no multi-node NVLink domain (clique 0)",
                name(g)
            ));
        }
    }
    // One node, one domain: every member in the clique and cluster most of
    // them are in (the first GPU's, on a tie).
    let reference = members
        .iter()
        .max_by_key(|(i, c, u)| {
            let n = members
                .iter()
                .filter(|(_, c2, u2)| c2 == c && u2 == u)
                .count();
            (n, std::cmp::Reverse(*i))
        })
        .copied();
    if let Some((ri, rc, ru)) = reference {
        for &(i, c, u) in &members {
            if u != ru {
                blame.add(i, format!("cluster UUID {u}, not {ru} as on GPU {ri}"));
            } else if c != rc {
                blame.add(i, format!("clique {c}, not {rc} as on GPU {ri}"));
            }
        }
    }
    if !blame.is_empty() {
        return check("fabric", CheckResult::Fail, blame.reason());
    }
    if domain_gpus > 0 {
        let (_, c, u) = reference.unwrap_or_default();
        let mut reason = format!(
            "{} in clique {c} of cluster {u}: Completed, Success",
            gpus(domain_gpus)
        );
        if healthy == domain_gpus {
            reason.push_str(", Healthy");
        }
        let rest = distinct(not_apply);
        if !rest.is_empty() {
            reason.push_str(&format!("; {}", rest.join(", ")));
        }
        return check("fabric", CheckResult::Pass, reason);
    }
    check(
        "fabric",
        CheckResult::Skip,
        format!(
            "fabric checks do not apply: {}",
            distinct(not_apply).join(", ")
        ),
    )
}

fn nvlink(r: &Report, expect: &Expect) -> Check {
    let reported = r.gpus.iter().any(|g| g.nvlink.is_some());
    let mut blame = Blame::default();
    let mut unknown: Vec<String> = Vec::new();
    let mut expected: Vec<u32> = Vec::new();
    for g in &r.gpus {
        let Some(want) = expected_links(g, expect) else {
            unknown.push(name(g).to_string());
            continue;
        };
        expected.push(want);
        match &g.nvlink {
            None if reported => blame.add(g.index, "NVLink states not reported".into()),
            None => {}
            Some(l) if l.active < want => {
                blame.add(g.index, format!("{} of {want} NVLinks active", l.active))
            }
            Some(_) => {}
        }
    }
    if !blame.is_empty() {
        return check("nvlink", CheckResult::Fail, blame.reason());
    }
    if expected.is_empty() {
        return check(
            "nvlink",
            CheckResult::Skip,
            format!(
                "NVLinks expected unknown for {}; give --nvlinks N",
                distinct(unknown).join(", ")
            ),
        );
    }
    if !reported {
        return check(
            "nvlink",
            CheckResult::Skip,
            "NVLink states not read (nvidia-smi nvlink -s gave none)".into(),
        );
    }
    let wants = distinct(expected.iter().map(u32::to_string));
    check(
        "nvlink",
        CheckResult::Pass,
        format!(
            "{} with all {} NVLinks active",
            gpus(expected.len()),
            wants.join("/")
        ),
    )
}

fn ecc(r: &Report) -> Check {
    let mut blame = Blame::default();
    let mut reported = 0;
    let mut lifetime: Vec<String> = Vec::new();
    for g in &r.gpus {
        let Some(e) = &g.ecc else { continue };
        match e.dbe_volatile {
            Some(0) => reported += 1,
            Some(n) => blame.add(
                g.index,
                format!("{n} uncorrectable ECC errors since the driver loaded"),
            ),
            None => {}
        }
        if let Some(n) = e.dbe_aggregate.filter(|n| *n > 0) {
            lifetime.push(format!("GPU {} has {n}", g.index));
        }
    }
    if !blame.is_empty() {
        return check("ecc", CheckResult::Fail, blame.reason());
    }
    if reported == 0 {
        return check(
            "ecc",
            CheckResult::Skip,
            "ECC counters not reported (ECC off or not supported)".into(),
        );
    }
    let mut reason = "no uncorrectable ECC errors since the driver loaded".to_string();
    if !lifetime.is_empty() {
        reason.push_str(&format!(" (over their life: {})", lifetime.join(", ")));
    }
    check("ecc", CheckResult::Pass, reason)
}

fn row_remap(r: &Report) -> Check {
    let mut blame = Blame::default();
    let mut reported = 0;
    let mut remapped: Vec<String> = Vec::new();
    for g in &r.gpus {
        let Some(e) = &g.ecc else { continue };
        if e.remap_pending.is_none() && e.remap_failure.is_none() {
            continue;
        }
        reported += 1;
        let corr = e.remapped_correctable.unwrap_or(0);
        let unc = e.remapped_uncorrectable.unwrap_or(0);
        let counts = format!("{corr} correctable, {unc} uncorrectable rows remapped");
        if e.remap_failure == Some(true) {
            blame.add(
                g.index,
                format!("row remapping failed (no spare rows); {counts}"),
            );
        } else if e.remap_pending == Some(true) {
            blame.add(
                g.index,
                format!("row remap pending (reset the GPU); {counts}"),
            );
        } else if corr > 0 || unc > 0 {
            remapped.push(format!(
                "GPU {}: {corr} correctable, {unc} uncorrectable",
                g.index
            ));
        }
    }
    if !blame.is_empty() {
        return check("row-remap", CheckResult::Fail, blame.reason());
    }
    if reported == 0 {
        return check(
            "row-remap",
            CheckResult::Skip,
            "row remapping not reported (not supported, or MIG on)".into(),
        );
    }
    let mut reason = "no remap pending or failed".to_string();
    if remapped.is_empty() {
        reason.push_str("; no rows remapped");
    } else {
        reason.push_str(&format!("; rows remapped: {}", remapped.join("; ")));
    }
    check("row-remap", CheckResult::Pass, reason)
}

/// `dcgm`: runs `dcgmi diag -r LEVEL` (the `dcgmi` given, else the first on
/// PATH) and passes when it exits 0. Skips when there is no `dcgmi`.
pub fn dcgm(level: u8, dcgmi: Option<&Path>, timeout: Duration) -> Check {
    let program = match dcgmi {
        Some(p) => p.to_path_buf(),
        None => match exec::on_path("dcgmi") {
            Some(p) => p,
            None => {
                return check(
                    "dcgm",
                    CheckResult::Skip,
                    "dcgmi is not on PATH: DCGM diagnostics not run".into(),
                );
            }
        },
    };
    let level = level.to_string();
    let what = format!("dcgmi diag -r {level}");
    match exec::run(&program, &["diag", "-r", &level], timeout) {
        Err(e) => check(
            "dcgm",
            CheckResult::Fail,
            format!("could not run {what}: {e}"),
        ),
        Ok(ran) if ran.timed_out => check(
            "dcgm",
            CheckResult::Fail,
            format!("{what} ran past {}s and was stopped", timeout.as_secs()),
        ),
        Ok(ran) if ran.status == Some(0) => {
            check("dcgm", CheckResult::Pass, format!("{what} passed"))
        }
        Ok(ran) => {
            let exit = match ran.status {
                Some(code) => format!("exited {code}"),
                None => "was killed by a signal".into(),
            };
            let out = String::from_utf8_lossy(&ran.stdout);
            let detail = out
                .lines()
                .find(|l| l.to_ascii_lowercase().contains("fail"))
                .or_else(|| ran.stderr.lines().rev().find(|l| !l.trim().is_empty()))
                .or_else(|| out.lines().rev().find(|l| !l.trim().is_empty()))
                .map(|l| {
                    l.replace('|', " ")
                        .split_whitespace()
                        .collect::<Vec<_>>()
                        .join(" ")
                })
                .unwrap_or_default();
            let reason = if detail.is_empty() {
                format!("{what} {exit}")
            } else {
                format!("{what} {exit}: {detail}")
            };
            check("dcgm", CheckResult::Fail, reason)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn product_names_compare_by_their_words() {
        assert!(same_product("NVIDIA GB200", "nvidia-gb200"));
        assert!(same_product("NVIDIA  GB200 ", "NVIDIA_GB200"));
        assert!(!same_product("NVIDIA GB200", "NVIDIA GB300"));
        assert!(!same_product("NVIDIA GB200", "GB200"));
        assert!(rack_scale("NVIDIA GB300"));
        assert!(!rack_scale("NVIDIA GH200 480GB"));
    }
}
