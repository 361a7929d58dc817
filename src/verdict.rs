//! The structured verdict a probe may leave in its termination message
//! (`/dev/termination-log`, at most 4 KiB): what it saw of each GPU (fabric,
//! firmware, ECC, NVLink) and which checks it ran with their results.
//!
//! The schema is versioned: a verdict names it in `schema`
//! ([`SCHEMA_V1`]); its JSON Schema is generated from these types and kept
//! in `docs/verdict-v1.schema.json` (a test fails when the two drift), and
//! `docs/verdict.md` documents every field. A termination message that does
//! not start with `{` is no verdict (the exit code alone decides, as
//! before); one that does must be a valid verdict of this schema, or the
//! node fails with a reason that says what is wrong with it.

use std::collections::BTreeSet;
use std::fmt;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The schema this gpufleet reads and writes.
pub const SCHEMA_V1: &str = "gpufleet.io/verdict/v1";

/// The most a termination message holds (the kubelet cuts it there).
pub const MAX_BYTES: usize = 4096;

/// A probe's verdict on its node, `gpufleet.io/verdict/v1`.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schemars(title = "gpufleet probe verdict, v1")]
pub struct Verdict {
    /// Always `gpufleet.io/verdict/v1`.
    #[schemars(length(max = 64))]
    pub schema: String,
    /// What wrote it, such as `gpufleet-probe 0.1.0`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    pub by: Option<String>,
    /// The NVIDIA driver version, such as `570.133.20`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    pub driver: Option<String>,
    /// The CUDA version the driver supports, such as `12.8`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32))]
    pub cuda: Option<String>,
    /// Every GPU the probe saw, in index order.
    #[serde(default)]
    #[schemars(length(max = 64))]
    pub gpus: Vec<Gpu>,
    /// The checks the probe ran, each with its result.
    #[serde(default)]
    #[schemars(length(max = 64))]
    pub checks: Vec<Check>,
    /// A rack test pod's result (`healthChecks.domainTest`): what it
    /// measured over its group, and the trays it blames.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rack_test: Option<RackTestResult>,
}

/// What one rack test pod measured over its group.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RackTestResult {
    /// The bus bandwidth measured, in GB/s, rounded down (NCCL's `busbw`,
    /// the largest over the message sizes tried).
    #[serde(
        default,
        rename = "busBandwidthGBps",
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(range(max = 1000000))]
    pub bus_bandwidth_gbps: Option<u32>,
    /// The floor it was held to, in GB/s.
    #[serde(default, rename = "floorGBps", skip_serializing_if = "Option::is_none")]
    #[schemars(range(max = 1000000))]
    pub floor_gbps: Option<u32>,
    /// The trays (node names) the test found at fault, if it can tell; a
    /// failed group that names some of its trays fails exactly those, and
    /// the rest is tested again without them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 72), inner(length(max = 253)))]
    pub blame: Vec<String>,
}

/// One GPU as the probe saw it.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Gpu {
    /// The GPU's index on its node (`nvidia-smi -i`).
    pub index: u32,
    /// The GPU's UUID, `GPU-…`.
    #[schemars(length(max = 64))]
    pub uuid: String,
    /// The product name, such as `NVIDIA GB200`.
    #[schemars(length(max = 64))]
    pub product: String,
    /// The VBIOS version, such as `97.00.82.00.5F`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    pub vbios: Option<String>,
    /// The InfoROM image version, such as `G548.0201.00.06`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    pub inforom: Option<String>,
    /// The GSP firmware version, such as `570.133.20`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    pub gsp: Option<String>,
    /// The GPU's NVLink fabric, as the driver reports it. A GB200/GB300
    /// tray's GPUs are in a clique of a multi-node NVLink domain; an HGX
    /// H100/H200/B200 reports a fabric too, `Completed` in clique 0 (no
    /// multi-node domain). Absent: not reported (a PCIe card, an older
    /// driver), and the fabric checks do not apply to it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fabric: Option<Fabric>,
    /// ECC and row-remapping counters. Absent: not reported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ecc: Option<Ecc>,
    /// NVLink links. Absent: not reported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nvlink: Option<NvLink>,
}

/// A GPU's place in its NVLink fabric, as NVML's fabric info and
/// `nvidia-smi -q` report it.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Fabric {
    /// Registration with the fabric: `Completed` when done; else
    /// `In Progress`, `Not Started` or `Not Supported`.
    #[schemars(length(max = 64))]
    pub state: String,
    /// How registration ended (meaningful once `Completed`): `Success`, or
    /// the error, such as `Insufficient Resources`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    pub status: Option<String>,
    /// The fabric's cluster UUID; all zeros when unassigned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    pub cluster_uuid: Option<String>,
    /// The NVLink partition (clique) the GPU belongs to; 0 when unassigned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clique_id: Option<u32>,
    /// The fabric health summary: `Healthy`, or what is wrong (`Unhealthy`,
    /// `Limited Capacity`, a degraded-bandwidth or route note).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    pub health: Option<String>,
    /// The fabric's incorrect-configuration flag: `None` when the GPU is
    /// configured right; else why not (`Incorrect SysGuid`,
    /// `Incompatible GPU Firmware`, `Insufficient NVLinks`, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    pub incorrect_configuration: Option<String>,
}

/// ECC error and row-remapping counters of one GPU.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Ecc {
    /// Uncorrectable (double-bit) errors since the driver loaded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dbe_volatile: Option<u64>,
    /// Uncorrectable errors over the GPU's life.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dbe_aggregate: Option<u64>,
    /// Rows remapped for correctable errors.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remapped_correctable: Option<u64>,
    /// Rows remapped for uncorrectable errors.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remapped_uncorrectable: Option<u64>,
    /// A remap waits for the GPU to be reset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remap_pending: Option<bool>,
    /// A remap failed: the GPU ran out of spare rows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remap_failure: Option<bool>,
}

/// A GPU's NVLink links.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NvLink {
    /// Links up.
    pub active: u32,
    /// Links the GPU should have up (18 on GB200/GB300); 0 when the probe
    /// does not know.
    pub expected: u32,
}

/// One check the probe ran.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Check {
    /// The check's name, such as `fabric`, `nvlink`, `ecc`, `gpu-count`.
    #[schemars(length(max = 32))]
    pub name: String,
    /// What it came to.
    pub result: CheckResult,
    /// Why, in a few words; for a failure, what failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 256))]
    pub reason: Option<String>,
}

/// The result of one check.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum CheckResult {
    /// It passed.
    Pass,
    /// It failed: the node is not healthy.
    Fail,
    /// It does not apply here (say, fabric checks on an H200), or could
    /// not run (say, no `dcgmi`): neither pass nor fail.
    Skip,
}

impl fmt::Display for CheckResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CheckResult::Pass => "pass",
            CheckResult::Fail => "fail",
            CheckResult::Skip => "skip",
        })
    }
}

/// What a termination message holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Read {
    /// No verdict: the message does not start with `{`.
    Absent,
    /// A valid verdict.
    Valid(Box<Verdict>),
    /// A message that starts like one but is not a valid verdict, in words.
    Invalid(String),
}

/// Reads a termination message: [`Read::Absent`] unless it starts with
/// `{` (after white space); then it must be at most [`MAX_BYTES`], parse,
/// and [`Verdict::validate`].
pub fn read(message: &str) -> Read {
    let text = message.trim();
    if !text.starts_with('{') {
        return Read::Absent;
    }
    if message.len() > MAX_BYTES {
        return Read::Invalid(format!(
            "its verdict is {} bytes, more than the {MAX_BYTES} a termination message holds",
            message.len()
        ));
    }
    let deserializer = &mut serde_json::Deserializer::from_str(text);
    let verdict: Verdict = match serde_path_to_error::deserialize(deserializer) {
        Ok(v) => v,
        Err(err) => {
            let path = err.path().to_string();
            let inner = err.into_inner();
            let at = if path == "." || path.is_empty() {
                String::new()
            } else {
                format!(" at {path}")
            };
            return Read::Invalid(format!(
                "its verdict is not valid JSON of {SCHEMA_V1}{at}: {inner}"
            ));
        }
    };
    match verdict.validate() {
        Ok(()) => Read::Valid(Box::new(verdict)),
        Err(why) => Read::Invalid(format!("its verdict is invalid: {why}")),
    }
}

impl Verdict {
    /// A verdict of this schema with nothing in it yet.
    pub fn new() -> Self {
        Verdict {
            schema: SCHEMA_V1.into(),
            by: None,
            driver: None,
            cuda: None,
            gpus: Vec::new(),
            checks: Vec::new(),
            rack_test: None,
        }
    }

    /// The rules the JSON Schema cannot say: the schema's name, bounds,
    /// one entry per GPU index and per check name.
    pub fn validate(&self) -> Result<(), String> {
        if self.schema != SCHEMA_V1 {
            return Err(format!(
                "schema is {:?}; this gpufleet reads {SCHEMA_V1}",
                clip(&self.schema, 64)
            ));
        }
        if self.gpus.len() > 64 || self.checks.len() > 64 {
            return Err("more than 64 GPUs or checks".into());
        }
        let mut indexes = BTreeSet::new();
        for gpu in &self.gpus {
            if !indexes.insert(gpu.index) {
                return Err(format!("GPU index {} appears twice", gpu.index));
            }
        }
        let mut names = BTreeSet::new();
        for check in &self.checks {
            if check.name.trim().is_empty() {
                return Err("a check has an empty name".into());
            }
            if !names.insert(check.name.as_str()) {
                return Err(format!("check {:?} appears twice", clip(&check.name, 32)));
            }
        }
        Ok(())
    }

    /// The checks that failed.
    pub fn failed(&self) -> impl Iterator<Item = &Check> {
        self.checks.iter().filter(|c| c.result == CheckResult::Fail)
    }

    /// The compact JSON a probe writes: at most [`MAX_BYTES`]. When the
    /// whole verdict does not fit (many GPUs, long reasons), it sheds in
    /// this order until it does: the ECC and NVLink counters of GPUs no
    /// check blames, reasons cut to 80 characters, then every counter. The
    /// fabric and firmware facts the gates read are never shed. `None`
    /// only if even that does not fit.
    pub fn encode(&self) -> Option<String> {
        let fits = |v: &Verdict| {
            serde_json::to_string(v)
                .ok()
                .filter(|s| s.len() <= MAX_BYTES)
        };
        if let Some(s) = fits(self) {
            return Some(s);
        }
        let mut v = self.clone();
        let blamed: BTreeSet<u32> = v
            .failed()
            .filter_map(|c| c.reason.as_deref())
            .flat_map(gpus_named)
            .collect();
        for gpu in &mut v.gpus {
            if !blamed.contains(&gpu.index) {
                gpu.ecc = None;
                gpu.nvlink = None;
            }
        }
        if let Some(s) = fits(&v) {
            return Some(s);
        }
        for check in &mut v.checks {
            if let Some(r) = check.reason.as_mut() {
                *r = clip(r, 80);
            }
        }
        if let Some(s) = fits(&v) {
            return Some(s);
        }
        for gpu in &mut v.gpus {
            gpu.ecc = None;
            gpu.nvlink = None;
        }
        fits(&v)
    }
}

/// A clique label as GPU Feature Discovery writes it,
/// `<clusterUuid>.<cliqueId>`, split; `None` when it is not one.
pub fn split_clique(label: &str) -> Option<(&str, u32)> {
    let (uuid, id) = label.rsplit_once('.')?;
    Some((uuid, id.parse().ok()?))
}

/// What a healthy tray's probe reports, every check passed: for
/// simulations (the demo, the test bed's burn-in stand-in) and tests, which
/// then break what they need. Products are written as nvidia-smi prints
/// them (`NVIDIA GB200` for the label `NVIDIA-GB200`); GPU UUIDs derive
/// from `host`.
pub fn healthy_tray(
    host: &str,
    product: &str,
    gpus: u32,
    clique: (&str, u32),
    driver: &str,
    vbios: &str,
) -> Verdict {
    let product = product.replace('-', " ");
    let mut v = Verdict::new();
    v.by = Some(format!("gpufleet-probe {}", env!("CARGO_PKG_VERSION")));
    v.driver = Some(driver.to_string());
    v.gpus = (0..gpus)
        .map(|index| Gpu {
            index,
            uuid: format!(
                "GPU-{:08x}-0000-4000-8000-{index:012}",
                crate::keys::stable_hash(host.as_bytes()) as u32
            ),
            product: product.clone(),
            vbios: Some(vbios.to_string()),
            inforom: None,
            gsp: Some(driver.to_string()),
            fabric: Some(Fabric {
                state: "Completed".into(),
                status: Some("Success".into()),
                cluster_uuid: Some(clique.0.to_string()),
                clique_id: Some(clique.1),
                health: Some("Healthy".into()),
                incorrect_configuration: Some("None".into()),
            }),
            ecc: Some(Ecc {
                dbe_volatile: Some(0),
                remap_pending: Some(false),
                remap_failure: Some(false),
                ..Ecc::default()
            }),
            nvlink: Some(NvLink {
                active: 18,
                expected: 18,
            }),
        })
        .collect();
    for name in [
        "gpu-count",
        "product",
        "fabric",
        "nvlink",
        "ecc",
        "row-remap",
    ] {
        v.checks.push(Check {
            name: name.into(),
            result: CheckResult::Pass,
            reason: None,
        });
    }
    v
}

impl Default for Verdict {
    fn default() -> Self {
        Verdict::new()
    }
}

/// The GPU indexes a reason names as `GPU <n>`.
fn gpus_named(reason: &str) -> Vec<u32> {
    reason
        .split("GPU ")
        .skip(1)
        .filter_map(|rest| {
            let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
            digits.parse().ok()
        })
        .collect()
}

/// At most `chars` characters of `text`, with `…` when cut.
pub fn clip(text: &str, chars: usize) -> String {
    if text.chars().count() <= chars {
        return text.to_string();
    }
    let mut out: String = text.chars().take(chars.saturating_sub(1)).collect();
    out.push('…');
    out
}

/// The JSON Schema of [`Verdict`], as committed in
/// `docs/verdict-v1.schema.json`.
pub fn json_schema() -> String {
    let schema = schemars::schema_for!(Verdict);
    let mut text = serde_json::to_string_pretty(&schema).unwrap_or_default();
    text.push('\n');
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gb200_gpu(index: u32) -> Gpu {
        Gpu {
            index,
            uuid: format!("GPU-2b6b8c3e-5f0d-7a91-c2e4-8d1f0a9b3c{index:02}"),
            product: "NVIDIA GB200".into(),
            vbios: Some("97.00.82.00.5F".into()),
            inforom: Some("G548.0201.00.06".into()),
            gsp: Some("570.133.20".into()),
            fabric: Some(Fabric {
                state: "Completed".into(),
                status: Some("Success".into()),
                cluster_uuid: Some("3183419e-9edc-4f0e-86e8-d895a9fb06be".into()),
                clique_id: Some(17044),
                health: Some("Healthy".into()),
                incorrect_configuration: Some("None".into()),
            }),
            ecc: Some(Ecc {
                dbe_volatile: Some(0),
                dbe_aggregate: Some(0),
                remapped_correctable: Some(0),
                remapped_uncorrectable: Some(0),
                remap_pending: Some(false),
                remap_failure: Some(false),
            }),
            nvlink: Some(NvLink {
                active: 18,
                expected: 18,
            }),
        }
    }

    fn tray() -> Verdict {
        let mut v = Verdict::new();
        v.by = Some("gpufleet-probe 0.1.0".into());
        v.driver = Some("570.133.20".into());
        v.cuda = Some("12.8".into());
        v.gpus = (0..4).map(gb200_gpu).collect();
        for name in [
            "gpu-count",
            "product",
            "fabric",
            "nvlink",
            "ecc",
            "row-remap",
            "dcgm",
        ] {
            v.checks.push(Check {
                name: name.into(),
                result: CheckResult::Pass,
                reason: Some("all 4 GPUs as expected by the pool's probe".into()),
            });
        }
        v
    }

    #[test]
    fn a_gb200_tray_fits_with_room_to_spare() {
        let text = tray().encode().unwrap();
        assert!(text.len() < 3 * 1024, "{} bytes", text.len());
        assert_eq!(read(&text), Read::Valid(Box::new(tray())));
    }

    #[test]
    fn eight_gpus_fit_by_shedding_counters_of_gpus_nobody_blames() {
        let mut v = tray();
        v.gpus = (0..8).map(gb200_gpu).collect();
        v.checks[3] = Check {
            name: "nvlink".into(),
            result: CheckResult::Fail,
            reason: Some("GPU 5: 16 of 18 links active".into()),
        };
        let text = v.encode().unwrap();
        assert!(text.len() <= MAX_BYTES);
        let Read::Valid(back) = read(&text) else {
            panic!("{text}")
        };
        assert!(
            back.gpus[5].nvlink.is_some(),
            "the blamed GPU keeps its counters"
        );
        assert!(
            back.gpus
                .iter()
                .all(|g| g.fabric.is_some() && g.vbios.is_some())
        );
    }

    #[test]
    fn plain_text_is_no_verdict() {
        assert_eq!(read("burn-in failed: XID 79"), Read::Absent);
        assert_eq!(read(""), Read::Absent);
    }

    #[test]
    fn bad_verdicts_say_what_is_wrong() {
        let Read::Invalid(why) = read("{\"schema\": \"gpufleet.io/verdict/v1\", \"gpus\": [")
        else {
            panic!()
        };
        assert!(why.contains("not valid JSON"), "{why}");
        let Read::Invalid(why) = read(r#"{"schema":"gpufleet.io/verdict/v9"}"#) else {
            panic!()
        };
        assert!(why.contains("v9"), "{why}");
        let Read::Invalid(why) = read(
            r#"{"schema":"gpufleet.io/verdict/v1","gpus":[{"index":0,"uuid":"a","product":"p","fabric":{"state":"Completed","cliqueId":-1}}]}"#,
        ) else {
            panic!()
        };
        assert!(why.contains("gpus[0].fabric.cliqueId"), "{why}");
        let big = format!(
            r#"{{"schema":"gpufleet.io/verdict/v1","by":"{}"}}"#,
            "x".repeat(5000)
        );
        let Read::Invalid(why) = read(&big) else {
            panic!()
        };
        assert!(why.contains("more than the 4096"), "{why}");
        let Read::Invalid(why) = read(r#"{"schema":"gpufleet.io/verdict/v1","extra":1}"#) else {
            panic!()
        };
        assert!(why.contains("extra"), "{why}");
    }

    proptest::proptest! {
        /// No termination message panics the reader: any text, and any
        /// valid verdict cut short or with a byte changed.
        #[test]
        fn no_message_panics_the_reader(
            text in ".{0,600}",
            cut in 0usize..4000,
            at in 0usize..4000,
            byte in 0u8..128,
        ) {
            let _ = read(&text);
            let _ = read(&format!("{{{text}"));
            let whole = tray().encode().unwrap();
            let _ = read(&whole[..cut.min(whole.len())]);
            let mut bytes = whole.into_bytes();
            let i = at % bytes.len();
            bytes[i] = byte;
            if let Ok(edited) = String::from_utf8(bytes) {
                let _ = read(&edited);
            }
        }
    }

    #[test]
    fn the_committed_schema_is_the_types_schema() {
        let committed = include_str!("../docs/verdict-v1.schema.json");
        assert!(
            committed == json_schema(),
            "docs/verdict-v1.schema.json drifted from src/verdict.rs: run `cargo run -- probe --print-schema > docs/verdict-v1.schema.json` and review the diff"
        );
    }
}
