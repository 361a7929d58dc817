//! What `gpufleet probe` does on a GPU node: read what `nvidia-smi` says of
//! the node's GPUs, check it, and put it in a [`Verdict`].
//!
//! The primary input is `nvidia-smi -q -x` (XML: its tags change little
//! from driver to driver); the text of `nvidia-smi -q` reads the same
//! (captures pasted in tickets are text). Both become one [`Report`]:
//! the driver, the CUDA version and each GPU as a [`verdict::Gpu`].
//! NVLink link states come from `nvidia-smi nvlink -s`, which `-q` does
//! not cover ([`parse_nvlink_status`]). [`checks`] then runs the checks
//! that need no other tool, [`dcgm`] the one that does, and [`verdict`]
//! puts it all together. Nothing here panics on any input.

mod checks;
pub mod exec;
mod tree;

use std::fmt;

pub use checks::{Expect, checks, dcgm, expected_links, same_product};

use crate::verdict::{self, Check, CheckResult, Ecc, Fabric, Gpu, NvLink, Verdict};
use tree::Node;

/// What one `nvidia-smi -q` (or `-q -x`) report says of its node.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Report {
    /// The driver version, such as `580.173.02`.
    pub driver: Option<String>,
    /// The CUDA version the driver supports, such as `13.0`.
    pub cuda: Option<String>,
    /// `Attached GPUs` as nvidia-smi counts them (a trimmed capture may
    /// list fewer).
    pub attached: Option<u32>,
    /// Each GPU the report lists, in its order; `index` is the position,
    /// as `nvidia-smi -i` counts.
    pub gpus: Vec<Gpu>,
}

/// Why a text is no `nvidia-smi -q` report.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ParseError {
    /// Nothing at all.
    Empty,
    /// It starts like XML but does not parse.
    Xml(String),
    /// XML, but not nvidia-smi's (the root element is named).
    NotNvidiaSmi(String),
    /// A report without a single GPU; the first line of the text, which
    /// is often nvidia-smi's own error.
    NoGpu(String),
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ParseError::Empty => f.write_str("nvidia-smi printed nothing"),
            ParseError::Xml(e) => write!(
                f,
                "nvidia-smi XML does not parse: {}",
                verdict::clip(e, 120)
            ),
            ParseError::NotNvidiaSmi(root) => write!(
                f,
                "XML root is <{}>, not nvidia-smi's <nvidia_smi_log>",
                verdict::clip(root, 40)
            ),
            ParseError::NoGpu(first) if first.is_empty() => f.write_str("nvidia-smi lists no GPU"),
            ParseError::NoGpu(first) => {
                write!(f, "nvidia-smi lists no GPU: {}", verdict::clip(first, 120))
            }
        }
    }
}

impl std::error::Error for ParseError {}

/// Reads `nvidia-smi -q -x` or `nvidia-smi -q`, told apart by content: XML
/// starts with `<`.
pub fn parse(text: &str) -> Result<Report, ParseError> {
    let body = text.trim_start_matches('\u{feff}').trim_start();
    if body.is_empty() {
        return Err(ParseError::Empty);
    }
    if body.starts_with('<') {
        parse_xml(body)
    } else {
        parse_text(body)
    }
}

/// Reads `nvidia-smi -q -x`.
pub fn parse_xml(text: &str) -> Result<Report, ParseError> {
    let root = tree::from_xml(text).map_err(ParseError::Xml)?;
    if root.key != "nvidiasmilog" {
        return Err(ParseError::NotNvidiaSmi(root.label));
    }
    let sections: Vec<&Node> = root.children.iter().filter(|c| c.key == "gpu").collect();
    report(&root, &sections).ok_or_else(|| ParseError::NoGpu(String::new()))
}

/// Reads `nvidia-smi -q` (or `-a`) text. A GPU section pasted on its own,
/// without the `GPU 0000…` line above it, reads as one GPU.
pub fn parse_text(text: &str) -> Result<Report, ParseError> {
    let root = tree::from_text(text);
    let sections: Vec<&Node> = root
        .children
        .iter()
        .filter(|c| c.value.is_none() && c.label.starts_with("GPU ") && !c.children.is_empty())
        .collect();
    let sections = if sections.is_empty() && is_gpu_section(&root) {
        vec![&root]
    } else {
        sections
    };
    report(&root, &sections).ok_or_else(|| {
        let first = text
            .lines()
            .map(str::trim)
            .find(|l| !l.is_empty())
            .unwrap_or_default();
        ParseError::NoGpu(crate::view::safe(first).into_owned())
    })
}

/// Whether a node holds what a GPU section holds.
fn is_gpu_section(node: &Node) -> bool {
    const KEYS: &str = "product_name|gpu_uuid|uuid|minor_number|fabric|ecc_errors|remapped_rows";
    node.child(KEYS).is_some()
}

fn report(root: &Node, sections: &[&Node]) -> Option<Report> {
    if sections.is_empty() {
        return None;
    }
    Some(Report {
        driver: root.text("driver_version"),
        cuda: root.text("cuda_version"),
        attached: root
            .count("attached_gpus")
            .and_then(|n| u32::try_from(n).ok()),
        gpus: sections
            .iter()
            .zip(0u32..)
            .map(|(section, index)| gpu(index, section))
            .collect(),
    })
}

fn gpu(index: u32, n: &Node) -> Gpu {
    Gpu {
        index,
        uuid: n.text("uuid|gpu_uuid").unwrap_or_default(),
        product: n.text("product_name").unwrap_or_default(),
        vbios: n.text("vbios_version"),
        inforom: n.text("inforom_version/img_version|image_version"),
        gsp: n.text("gsp_firmware_version"),
        fabric: n.child("fabric").and_then(fabric),
        ecc: ecc(n),
        nvlink: None,
    }
}

/// A GPU's fabric; `None` when the state is not available (a GPU with no
/// fabric to join).
fn fabric(n: &Node) -> Option<Fabric> {
    let state = n.text("state")?;
    if state.eq_ignore_ascii_case("Not Supported") {
        return None;
    }
    Some(Fabric {
        state,
        status: n.text("status"),
        cluster_uuid: n.text("clusteruuid|cluster_uuid"),
        clique_id: n.text("cliqueid|clique_id").and_then(|v| v.parse().ok()),
        health: n.text("health/summary"),
        incorrect_configuration: n
            .text("health/incorrect_configuration")
            .or_else(|| n.text("incorrect_configuration")),
    })
}

fn ecc(n: &Node) -> Option<Ecc> {
    let errors = n.child("ecc_errors");
    let rows = n.child("remapped_rows");
    let ecc = Ecc {
        dbe_volatile: errors
            .and_then(|e| e.child("volatile"))
            .and_then(uncorrectable),
        dbe_aggregate: errors
            .and_then(|e| e.child("aggregate"))
            .and_then(uncorrectable),
        remapped_correctable: rows.and_then(|r| r.count("remapped_row_corr|correctable_error")),
        remapped_uncorrectable: rows.and_then(|r| r.count("remapped_row_unc|uncorrectable_error")),
        remap_pending: rows.and_then(|r| r.flag("remapped_row_pending|pending")),
        remap_failure: rows.and_then(|r| r.flag("remapped_row_failure|remapping_failure_occurred")),
    };
    (ecc != Ecc::default()).then_some(ecc)
}

/// Uncorrectable errors in one ECC counter group: `double_bit/total` in
/// the old layout; else the sum of the `…uncorrectable…` counters (DRAM,
/// SRAM, or SRAM parity and SEC-DED, as the driver splits them). `None`
/// when none is available.
fn uncorrectable(group: &Node) -> Option<u64> {
    if let Some(double) = group.child("double_bit") {
        return double.count("total");
    }
    group
        .children
        .iter()
        .filter(|c| c.key.contains("uncorrectable"))
        .filter_map(|c| c.value.as_deref().and_then(clean)?.parse::<u64>().ok())
        .reduce(u64::saturating_add)
}

/// A value as the verdict keeps it: trimmed, without control characters,
/// at most 64 characters; `None` for empty and the not-available markers
/// nvidia-smi prints.
pub(crate) fn clean(raw: &str) -> Option<String> {
    let kept: String;
    let mut v = raw.trim();
    if v.chars().any(char::is_control) {
        kept = v.chars().filter(|c| !c.is_control()).collect();
        v = kept.trim();
    }
    let unavailable = [
        "n/a",
        "[n/a]",
        "not available",
        "not supported",
        "[not supported]",
    ];
    if v.is_empty() || unavailable.contains(&v.to_ascii_lowercase().as_str()) {
        return None;
    }
    Some(verdict::clip(v, 64))
}

/// The links of one GPU, from `nvidia-smi nvlink -s`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Links {
    /// The GPU's index (`GPU 0:`).
    pub index: u32,
    /// Its UUID, from `(UUID: GPU-…)`.
    pub uuid: Option<String>,
    /// Links listed.
    pub listed: u32,
    /// Links up: listed with a speed, not `<inactive>`.
    pub active: u32,
}

/// Reads `nvidia-smi nvlink -s`: per GPU a `GPU N: name (UUID: …)` line,
/// then `Link K: 53.125 GB/s` for each link up, `Link K: <inactive>` for
/// each down.
pub fn parse_nvlink_status(text: &str) -> Vec<Links> {
    let mut out: Vec<Links> = Vec::new();
    for line in text.lines().map(str::trim) {
        if let Some(rest) = line.strip_prefix("GPU ") {
            let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
            let Ok(index) = digits.parse() else { continue };
            if !rest[digits.len()..].starts_with(':') {
                continue;
            }
            let uuid = rest
                .split_once("(UUID: ")
                .map(|(_, u)| u.trim_end_matches(')').trim())
                .and_then(clean);
            out.push(Links {
                index,
                uuid,
                listed: 0,
                active: 0,
            });
        } else if let Some(rest) = line.strip_prefix("Link ")
            && let Some((number, state)) = rest.split_once(':')
            && number.trim().parse::<u32>().is_ok()
            && let Some(gpu) = out.last_mut()
        {
            let state = state.trim().to_ascii_lowercase();
            gpu.listed = gpu.listed.saturating_add(1);
            let down = state.is_empty() || state.contains("inactive") || state.contains("n/a");
            if !down {
                gpu.active = gpu.active.saturating_add(1);
            }
        }
    }
    out
}

impl Report {
    /// Puts `nvidia-smi nvlink -s` link states on the GPUs they belong to
    /// (by UUID; by index where the output names no UUID), each with the
    /// links it should have up ([`expected_links`], 0 when unknown).
    pub fn attach_links(&mut self, links: &[Links], expect: &Expect) {
        for gpu in &mut self.gpus {
            let found = links.iter().find(|l| match &l.uuid {
                Some(u) => u.eq_ignore_ascii_case(&gpu.uuid),
                None => l.index == gpu.index,
            });
            if let Some(l) = found {
                gpu.nvlink = Some(NvLink {
                    active: l.active,
                    expected: expected_links(gpu, expect).unwrap_or(0),
                });
            }
        }
    }
}

/// The verdict of a probe: what the report says of the GPUs (the first
/// 64) and the checks, as `by` ran them.
pub fn verdict(report: Option<&Report>, checks: Vec<Check>, by: &str) -> Verdict {
    let mut v = Verdict::new();
    v.by = Some(verdict::clip(by, 64));
    if let Some(r) = report {
        v.driver = r.driver.clone();
        v.cuda = r.cuda.as_deref().map(|c| verdict::clip(c, 32));
        v.gpus = r.gpus.iter().take(64).cloned().collect();
    }
    v.checks = checks.into_iter().take(64).collect();
    v
}

/// The check that reading nvidia-smi went well, or why not.
pub fn nvidia_smi_check(outcome: Result<&Report, &str>) -> Check {
    match outcome {
        Ok(r) => {
            let mut facts = vec![gpus(r.gpus.len())];
            if let Some(d) = &r.driver {
                facts.push(format!("driver {d}"));
            }
            if let Some(c) = &r.cuda {
                facts.push(format!("CUDA {c}"));
            }
            check("nvidia-smi", CheckResult::Pass, facts.join(", "))
        }
        Err(why) => check("nvidia-smi", CheckResult::Fail, why.to_string()),
    }
}

/// `1 GPU`, `4 GPUs`.
pub(crate) fn gpus(n: usize) -> String {
    if n == 1 {
        "1 GPU".into()
    } else {
        format!("{n} GPUs")
    }
}

/// A check with its reason kept short (under 200 characters).
pub(crate) fn check(name: &str, result: CheckResult, reason: String) -> Check {
    Check {
        name: name.into(),
        result,
        reason: Some(verdict::clip(&reason, 199)),
    }
}

/// The human summary of a verdict: a head line, one line per check, an
/// end line; each at most 80 columns, free of control characters.
pub fn summary(v: &Verdict) -> Vec<String> {
    let mut products: Vec<(String, usize)> = Vec::new();
    for g in &v.gpus {
        match products.iter_mut().find(|(p, _)| *p == g.product) {
            Some((_, n)) => *n += 1,
            None => products.push((g.product.clone(), 1)),
        }
    }
    let mut head = v.by.clone().unwrap_or_else(|| "gpufleet probe".into());
    let seen: Vec<String> = products
        .iter()
        .map(|(p, n)| format!("{n} x {}", if p.is_empty() { "unnamed GPU" } else { p }))
        .collect();
    if !seen.is_empty() {
        head.push_str(&format!(": {}", seen.join(", ")));
    }
    if let Some(d) = &v.driver {
        head.push_str(&format!(", driver {d}"));
    }
    let mut lines = vec![head];
    for c in &v.checks {
        lines.push(format!(
            "{:<4}  {:<10}  {}",
            c.result,
            c.name,
            c.reason.as_deref().unwrap_or_default()
        ));
    }
    let failed: Vec<&str> = v.failed().map(|c| c.name.as_str()).collect();
    lines.push(if failed.is_empty() {
        "verdict: pass".into()
    } else {
        format!("verdict: fail ({})", failed.join(", "))
    });
    lines
        .iter()
        .map(|l| {
            // view::safe keeps gpufleet's own colours; a summary has none,
            // so every control character goes.
            let flat = l.replace(['\n', '\t'], " ");
            let plain: String = crate::view::safe(&flat)
                .chars()
                .filter(|c| !c.is_control())
                .collect();
            verdict::clip(&plain, 80)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const GB200: &str = include_str!("../../tests/fixtures/nvidia-smi/gb200-x4-k8s-test-infra.xml");
    const GH200: &str = include_str!("../../tests/fixtures/nvidia-smi/gh200-480gb-gls.txt");
    const P2000: &str = include_str!("../../tests/fixtures/nvidia-smi/quadro-p2000-telegraf.xml");
    const LINKS: &str = include_str!(
        "../../tests/fixtures/nvidia-smi/gb200-nvlink-status-partial-k8s-test-infra-371.txt"
    );

    #[test]
    fn xml_reads_every_field_of_a_gb200() {
        let r = parse(GB200).unwrap();
        assert_eq!(r.driver.as_deref(), Some("580.173.02"));
        assert_eq!(r.cuda.as_deref(), Some("13.0"));
        assert_eq!(r.attached, Some(4));
        let g = &r.gpus[1];
        assert_eq!(g.index, 1);
        assert_eq!(g.uuid, "GPU-00000001-0000-0000-0000-000000000001");
        assert_eq!(g.product, "NVIDIA GB200");
        assert_eq!(g.vbios.as_deref(), Some("97.00.B9.00.69"));
        assert_eq!(g.inforom.as_deref(), Some("G548.0201.00.06"));
        assert_eq!(g.gsp.as_deref(), Some("580.173.02"));
        assert_eq!(
            g.fabric,
            Some(Fabric {
                state: "Completed".into(),
                status: Some("Success".into()),
                cluster_uuid: Some("00000001-0000-0000-0000-000000000001".into()),
                clique_id: Some(2),
                health: Some("Healthy".into()),
                // N/A in this capture.
                incorrect_configuration: None,
            })
        );
        assert_eq!(
            g.ecc,
            Some(Ecc {
                dbe_volatile: Some(0),
                dbe_aggregate: Some(0),
                remapped_correctable: Some(0),
                remapped_uncorrectable: Some(0),
                remap_pending: Some(false),
                remap_failure: Some(false),
            })
        );
        assert_eq!(g.nvlink, None);
    }

    #[test]
    fn text_reads_the_counters_of_a_gh200() {
        let r = parse(GH200).unwrap();
        assert_eq!(r.driver.as_deref(), Some("550.127.05"));
        assert_eq!(r.cuda.as_deref(), Some("12.4"));
        let g = &r.gpus[0];
        assert_eq!(g.uuid, "GPU-35d58415-1094-5ad1-64d1-b797587d33a7");
        assert_eq!(g.inforom.as_deref(), Some("G530.0206.00.02"));
        assert_eq!(g.gsp.as_deref(), Some("550.127.05"));
        // State N/A: a standalone GH200 has no fabric to join.
        assert_eq!(g.fabric, None);
        let e = g.ecc.clone().unwrap();
        assert_eq!((e.dbe_volatile, e.dbe_aggregate), (Some(0), Some(1)));
        assert_eq!(
            (e.remapped_correctable, e.remapped_uncorrectable),
            (Some(0), Some(1))
        );
        assert_eq!(
            (e.remap_pending, e.remap_failure),
            (Some(false), Some(false))
        );
    }

    #[test]
    fn the_old_ecc_layout_reads_its_double_bit_totals() {
        let g = &parse(P2000).unwrap().gpus[0];
        // Pascal: double_bit/total, N/A on this card; no remapping; no GSP.
        assert_eq!(g.ecc, None);
        assert_eq!(g.gsp, None);
        let edited = P2000.replacen(
            "<double_bit>\n\t\t\t\t\t<device_memory>N/A</device_memory>",
            "<double_bit>\n\t\t\t\t\t<device_memory>3</device_memory>",
            1,
        );
        let total = edited.replacen("<total>N/A</total>", "<total>9</total>", 2);
        let g = &parse(&total).unwrap().gpus[0];
        // The first total is volatile single-bit; the second volatile
        // double-bit.
        assert_eq!(g.ecc.as_ref().and_then(|e| e.dbe_volatile), Some(9));
    }

    #[test]
    fn nvlink_status_counts_links_up() {
        let links = parse_nvlink_status(LINKS);
        assert_eq!(links.len(), 2);
        assert_eq!(
            links[0],
            Links {
                index: 0,
                uuid: Some("GPU-d1b93026-6d5b-03bd-3a71-f85b47a61bde".into()),
                listed: 18,
                active: 18,
            }
        );
        // The paste stops after GPU 1's second link.
        assert_eq!(
            (links[1].index, links[1].listed, links[1].active),
            (1, 2, 2)
        );
        let down = LINKS.replacen("Link 3: 53.125 GB/s", "Link 3: <inactive>", 1);
        assert_eq!(parse_nvlink_status(&down)[0].active, 17);
    }

    #[test]
    fn not_nvidia_smi_says_why() {
        assert_eq!(parse("  \n"), Err(ParseError::Empty));
        assert!(
            matches!(parse("<html><body/></html>"), Err(ParseError::NotNvidiaSmi(r)) if r == "html")
        );
        assert!(matches!(
            parse("<nvidia_smi_log><gpu>"),
            Err(ParseError::Xml(_))
        ));
        let Err(e) = parse(
            "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver.\n",
        ) else {
            panic!()
        };
        assert!(e.to_string().contains("couldn't communicate"), "{e}");
    }

    #[test]
    fn the_summary_fits_80_columns_and_carries_no_control_characters() {
        let mut r = parse(GB200).unwrap();
        r.gpus[0].product =
            "NVIDIA \x1b[31mGB200\x07 with a very long name that goes on and on".into();
        let checks = checks(&r, &Expect::default());
        let v = verdict(Some(&r), checks, "gpufleet-probe test");
        for line in summary(&v) {
            assert!(line.chars().count() <= 80, "{line}");
            assert!(!line.chars().any(char::is_control), "{line:?}");
        }
    }

    /// Parses, checks, encodes and summarises: nothing may panic.
    fn everything(text: &str) {
        let links = parse_nvlink_status(text);
        if let Ok(mut r) = parse(text) {
            let expect = Expect {
                gpus: Some(4),
                products: vec!["NVIDIA GB200".into()],
                nvlinks: None,
            };
            r.attach_links(&links, &expect);
            let v = verdict(Some(&r), checks(&r, &expect), "t");
            if let Some(json) = v.encode() {
                assert!(json.len() <= crate::verdict::MAX_BYTES);
            }
            let _ = summary(&v);
        }
    }

    proptest! {
        #[test]
        fn any_text_parses_or_not_without_panic(text in "\\PC{0,600}") {
            everything(&text);
        }

        #[test]
        fn nvidia_smi_like_text_never_panics(
            text in "(GPU 0000:0[0-9]:00.0\n|    Fabric\n|        State +: (Completed|N/A)\n|        CliqueId +: [0-9x-]{0,12}\n| *Product Name *: [A-Z0-9 ]{0,12}\n| *(Pending|Remapped Rows|ECC Errors|Volatile|DRAM Uncorrectable) *(: (Yes|No|[0-9]{1,20}|N/A))?\n|Link [0-9]{1,2}: (53.125 GB/s|<inactive>)\n|\t| +|:|<|>)*"
        ) {
            everything(&text);
        }

        #[test]
        fn xml_like_text_never_panics(
            text in "<nvidia_smi_log>(<gpu>|</gpu>|<(fabric|state|cliqueId|ecc_errors|volatile|double_bit|total|remapped_rows|remapped_row_pending)>|</(fabric|state|cliqueId|ecc_errors|volatile|double_bit|total|remapped_rows|remapped_row_pending)>|N/A|Yes|[0-9]{1,22}|&amp;|&#x1;|<!-- x -->|<![CDATA[y]]>)*(</nvidia_smi_log>)?"
        ) {
            everything(&text);
        }

        #[test]
        fn garbled_real_output_never_panics(
            cuts in proptest::collection::vec((0usize..120_000, 0usize..64, "\\PC{0,8}"), 1..12),
        ) {
            for fixture in [GB200, GH200] {
                let mut text = fixture.to_string();
                for (at, len, with) in &cuts {
                    let mut start = (*at).min(text.len());
                    while !text.is_char_boundary(start) {
                        start -= 1;
                    }
                    let mut end = (start + len).min(text.len());
                    while !text.is_char_boundary(end) {
                        end -= 1;
                    }
                    text.replace_range(start..end, with);
                }
                everything(&text);
            }
        }
    }
}
