//! `gpufleet probe` on real nvidia-smi output: every capture in
//! tests/fixtures/nvidia-smi/ (SOURCES.md says where each came from) reads
//! as expected and comes to the expected checks; faults derived from them
//! by editing one value each fail exactly the check they should, with a
//! reason that names the GPU; and the command, run as a probe pod runs it,
//! writes a valid verdict and exits with the right code.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};

use gpufleet::node_probe::{self, Expect, Report};
use gpufleet::verdict::{self, CheckResult, Read, Verdict};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/nvidia-smi")
}

fn fixture(name: &str) -> String {
    std::fs::read_to_string(fixtures().join(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

use CheckResult::{Fail, Pass, Skip};

/// What each full capture holds, read off the capture itself, and what the
/// checks come to with no flags.
struct Expected {
    file: &'static str,
    gpus: usize,
    product: &'static str,
    driver: &'static str,
    cuda: &'static str,
    fabric: CheckResult,
    ecc: CheckResult,
    row_remap: CheckResult,
}

const FULL: &[Expected] = &[
    Expected {
        file: "gb200-x4-k8s-test-infra.xml",
        gpus: 4,
        product: "NVIDIA GB200",
        driver: "580.173.02",
        cuda: "13.0",
        fabric: Pass,
        ecc: Pass,
        row_remap: Pass,
    },
    Expected {
        file: "gb300-x4-k8s-test-infra.xml",
        gpus: 4,
        product: "NVIDIA GB300",
        driver: "580.173.02",
        cuda: "13.0",
        fabric: Pass,
        ecc: Pass,
        row_remap: Pass,
    },
    // HGX: a fabric (NVSwitch, one node), clique 0, cluster all zeros.
    Expected {
        file: "b200-x8-k8s-test-infra.xml",
        gpus: 8,
        product: "NVIDIA B200",
        driver: "580.105.08",
        cuda: "13.0",
        fabric: Skip,
        ecc: Pass,
        row_remap: Pass,
    },
    Expected {
        file: "h100-80gb-hbm3-x8-k8s-test-infra.xml",
        gpus: 8,
        product: "NVIDIA H100 80GB HBM3",
        driver: "580.105.08",
        cuda: "13.0",
        fabric: Skip,
        ecc: Pass,
        row_remap: Pass,
    },
    Expected {
        file: "a100-sxm4-40gb-k8s-test-infra.xml",
        gpus: 1,
        product: "NVIDIA A100-SXM4-40GB",
        driver: "570.148.08",
        cuda: "12.8",
        fabric: Skip,
        ecc: Pass,
        row_remap: Pass,
    },
    Expected {
        file: "l40s-k8s-test-infra.xml",
        gpus: 1,
        product: "NVIDIA L40S",
        driver: "595.91.07",
        cuda: "13.2",
        fabric: Skip,
        ecc: Pass,
        row_remap: Pass,
    },
    Expected {
        file: "tesla-t4-k8s-test-infra.xml",
        gpus: 1,
        product: "Tesla T4",
        driver: "595.91.07",
        cuda: "13.2",
        fabric: Skip,
        ecc: Pass,
        row_remap: Skip,
    },
    // MIG on, trimmed to one of its 4 GPUs by its contributor; remapped rows N/A.
    Expected {
        file: "a100-sxm4-80gb-telegraf.xml",
        gpus: 1,
        product: "NVIDIA A100-SXM4-80GB",
        driver: "535.54.03",
        cuda: "12.2",
        fabric: Skip,
        ecc: Pass,
        row_remap: Skip,
    },
    Expected {
        file: "tesla-t4-telegraf.xml",
        gpus: 1,
        product: "Tesla T4",
        driver: "515.105.01",
        cuda: "11.7",
        fabric: Skip,
        ecc: Pass,
        row_remap: Skip,
    },
    Expected {
        file: "a10g-telegraf.xml",
        gpus: 1,
        product: "NVIDIA A10G",
        driver: "515.105.01",
        cuda: "11.7",
        fabric: Skip,
        ecc: Pass,
        row_remap: Pass,
    },
    // Pascal: the old ECC layout, all N/A.
    Expected {
        file: "quadro-p2000-telegraf.xml",
        gpus: 1,
        product: "Quadro P2000",
        driver: "525.125.06",
        cuda: "12.0",
        fabric: Skip,
        ecc: Skip,
        row_remap: Skip,
    },
    Expected {
        file: "rtx-3080-v13-telegraf.xml",
        gpus: 1,
        product: "NVIDIA GeForce RTX 3080",
        driver: "595.58.03",
        cuda: "13.2",
        fabric: Skip,
        ecc: Skip,
        row_remap: Skip,
    },
    Expected {
        file: "rtx-4000-sff-ada-telegraf.xml",
        gpus: 1,
        product: "NVIDIA RTX 4000 SFF Ada Generation",
        driver: "595.84",
        cuda: "13.2",
        fabric: Skip,
        ecc: Skip,
        row_remap: Pass,
    },
    // Text (`nvidia-smi -a`).
    Expected {
        file: "gh200-480gb-gls.txt",
        gpus: 1,
        product: "NVIDIA GH200 480GB",
        driver: "550.127.05",
        cuda: "12.4",
        fabric: Skip,
        ecc: Pass,
        row_remap: Pass,
    },
    Expected {
        file: "h200-gls.txt",
        gpus: 1,
        product: "NVIDIA H200",
        driver: "550.90.12",
        cuda: "12.4",
        fabric: Skip,
        ecc: Pass,
        row_remap: Pass,
    },
    Expected {
        file: "h100-sxm-80gb-hbm3-x8-gls.txt",
        gpus: 8,
        product: "NVIDIA H100 80GB HBM3",
        driver: "565.57.01",
        cuda: "12.7",
        fabric: Skip,
        ecc: Pass,
        row_remap: Pass,
    },
    // GPU 1 of this capture has a row remap pending: a real fault.
    Expected {
        file: "a100-sxm4-80gb-x4-gls.txt",
        gpus: 4,
        product: "NVIDIA A100-SXM4-80GB",
        driver: "555.42.02",
        cuda: "12.5",
        fabric: Skip,
        ecc: Pass,
        row_remap: Fail,
    },
    Expected {
        file: "h100-nvl-x2-gls.txt",
        gpus: 2,
        product: "NVIDIA H100 NVL",
        driver: "550.54.14",
        cuda: "12.4",
        fabric: Skip,
        ecc: Pass,
        row_remap: Pass,
    },
    Expected {
        file: "rtx-5090-gls.txt",
        gpus: 1,
        product: "NVIDIA GeForce RTX 5090",
        driver: "570.124.06",
        cuda: "12.8",
        fabric: Skip,
        ecc: Skip,
        row_remap: Skip,
    },
];

/// Fragments pasted in issues: a GPU section's Fabric block alone reads as
/// one unnamed GPU; the other subcommands' outputs are no `-q` report.
const FRAGMENTS: &[(&str, Option<(CheckResult, &str)>)] = &[
    (
        "mnnvl-fabric-unhealthy-partial-dra-driver-626.txt",
        Some((Fail, "GPU 0: fabric health is Unhealthy")),
    ),
    (
        "azure-fabric-insufficient-resources-partial-azhpc-images-506.txt",
        Some((
            Fail,
            "GPU 0: fabric status is Insufficient Resources, not Success",
        )),
    ),
    (
        "fabric-in-progress-580-partial-gpu-operator-2511.txt",
        Some((Fail, "GPU 0: fabric state is In Progress, not Completed")),
    ),
    ("gb300-platform-info-partial-k8s-test-infra-642.txt", None),
    ("gb200-nvlink-status-partial-k8s-test-infra-371.txt", None),
    ("gb200-nvlink-info-partial-k8s-test-infra-371.txt", None),
    ("gb200-topo-m-partial-k8s-test-infra-371.txt", None),
];

fn result(v: &[verdict::Check], name: &str) -> CheckResult {
    v.iter()
        .find(|c| c.name == name)
        .unwrap_or_else(|| panic!("no check {name}"))
        .result
}

fn run_checks(r: &Report, expect: &Expect) -> Vec<verdict::Check> {
    node_probe::checks(r, expect)
}

#[test]
fn every_fixture_is_in_a_table() {
    let mut files: Vec<String> = std::fs::read_dir(fixtures())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n != "SOURCES.md" && n != "faults")
        .collect();
    files.sort();
    for f in &files {
        assert!(
            FULL.iter().any(|e| e.file == f) || FRAGMENTS.iter().any(|(n, _)| n == f),
            "{f}: add what it holds to FULL or FRAGMENTS"
        );
    }
    assert!(files.len() >= FULL.len() + FRAGMENTS.len());
}

#[test]
fn every_full_capture_reads_as_expected() {
    for e in FULL {
        let r =
            node_probe::parse(&fixture(e.file)).unwrap_or_else(|err| panic!("{}: {err}", e.file));
        assert_eq!(r.gpus.len(), e.gpus, "{}", e.file);
        assert_eq!(r.driver.as_deref(), Some(e.driver), "{}", e.file);
        assert_eq!(r.cuda.as_deref(), Some(e.cuda), "{}", e.file);
        for (i, g) in r.gpus.iter().enumerate() {
            assert_eq!(g.index as usize, i, "{}", e.file);
            assert_eq!(g.product, e.product, "{}", e.file);
            assert!(g.uuid.starts_with("GPU-"), "{}: {}", e.file, g.uuid);
            assert!(g.vbios.is_some() && g.inforom.is_some(), "{}", e.file);
        }
        let checks = run_checks(&r, &Expect::default());
        assert_eq!(
            result(&checks, "fabric"),
            e.fabric,
            "{}: {checks:?}",
            e.file
        );
        assert_eq!(result(&checks, "ecc"), e.ecc, "{}: {checks:?}", e.file);
        assert_eq!(
            result(&checks, "row-remap"),
            e.row_remap,
            "{}: {checks:?}",
            e.file
        );
        assert_eq!(result(&checks, "gpu-count"), Skip);
        assert_eq!(result(&checks, "product"), Skip);
        // No link states in -q: skipped, whatever the GPU.
        assert_eq!(result(&checks, "nvlink"), Skip, "{}", e.file);
        let with_flags = run_checks(
            &r,
            &Expect {
                gpus: Some(e.gpus as u32),
                products: vec![e.product.replace(' ', "-").to_uppercase()],
                nvlinks: None,
            },
        );
        assert_eq!(result(&with_flags, "gpu-count"), Pass, "{}", e.file);
        assert_eq!(
            result(&with_flags, "product"),
            Pass,
            "{}: {with_flags:?}",
            e.file
        );
        for c in &checks {
            let reason = c.reason.as_deref().unwrap_or_default();
            assert!(reason.chars().count() < 200, "{}: {reason}", e.file);
        }
        let v = node_probe::verdict(Some(&r), checks, "gpufleet-probe test");
        let json = v.encode().expect("fits");
        assert!(matches!(verdict::read(&json), Read::Valid(_)), "{}", e.file);
    }
}

#[test]
fn fabric_facts_of_the_rack_scale_captures() {
    let gb300 = node_probe::parse(&fixture("gb300-x4-k8s-test-infra.xml")).unwrap();
    let f = gb300.gpus[3].fabric.clone().unwrap();
    assert_eq!(f.clique_id, Some(32766));
    assert_eq!(f.incorrect_configuration.as_deref(), Some("None"));
    assert_eq!(gb300.gpus[3].inforom.as_deref(), Some("G548.0301.00.03"));
    let checks = run_checks(&gb300, &Expect::default());
    let fabric = checks.iter().find(|c| c.name == "fabric").unwrap();
    assert_eq!(
        fabric.reason.as_deref(),
        Some(
            "4 GPUs in clique 32766 of cluster 00000001-0000-0000-0000-000000000001: Completed, Success, Healthy"
        )
    );
    // HGX H100: a single-node fabric, so the fabric checks skip, and say why.
    let h100 = node_probe::parse(&fixture("h100-80gb-hbm3-x8-k8s-test-infra.xml")).unwrap();
    assert_eq!(
        h100.gpus[0].fabric.as_ref().map(|f| f.state.as_str()),
        Some("Completed")
    );
    let checks = run_checks(&h100, &Expect::default());
    let fabric = checks.iter().find(|c| c.name == "fabric").unwrap();
    assert_eq!(
        fabric.reason.as_deref(),
        Some(
            "fabric checks do not apply: NVIDIA H100 80GB HBM3 is in no multi-node NVLink domain (clique 0)"
        )
    );
    let t4 = node_probe::parse(&fixture("tesla-t4-k8s-test-infra.xml")).unwrap();
    let checks = run_checks(&t4, &Expect::default());
    let fabric = checks.iter().find(|c| c.name == "fabric").unwrap();
    assert_eq!(
        fabric.reason.as_deref(),
        Some("fabric checks do not apply: Tesla T4 has no NVLink fabric")
    );
}

#[test]
fn fragments_read_as_far_as_they_go() {
    for (file, expected) in FRAGMENTS {
        let parsed = node_probe::parse(&fixture(file));
        match (expected, parsed) {
            (None, Err(_)) => {}
            (Some((want, reason)), Ok(r)) => {
                let checks = run_checks(&r, &Expect::default());
                let fabric = checks.iter().find(|c| c.name == "fabric").unwrap();
                assert_eq!(fabric.result, *want, "{file}");
                assert_eq!(fabric.reason.as_deref(), Some(*reason), "{file}");
                assert!(
                    checks.iter().filter(|c| c.result == Fail).count() == 1,
                    "{file}: {checks:?}"
                );
            }
            (want, got) => panic!("{file}: expected {want:?}, got {got:?}"),
        }
    }
}

/// Edits the `nth` occurrence of a GPU section's text: within GPU `gpu`
/// (its `<gpu ` element, or its `GPU 0000…` section of text), the first
/// `from` becomes `to`.
fn edit_gpu(text: &str, gpu: usize, from: &str, to: &str) -> String {
    let marker = if text.trim_start().starts_with('<') {
        "<gpu id="
    } else {
        "\nGPU 0"
    };
    let starts: Vec<usize> = text.match_indices(marker).map(|(i, _)| i).collect();
    let start = starts[gpu];
    let end = starts.get(gpu + 1).copied().unwrap_or(text.len());
    let section = &text[start..end];
    assert!(section.contains(from), "GPU {gpu} has no {from:?}");
    format!(
        "{}{}{}",
        &text[..start],
        section.replacen(from, to, 1),
        &text[end..]
    )
}

/// `nvidia-smi nvlink -s` for every GPU of a report, made of the real GB200
/// paste: GPU 0's 18 links, once per GPU, under that GPU's UUID.
fn links_for(r: &Report) -> String {
    let paste = fixture("gb200-nvlink-status-partial-k8s-test-infra-371.txt");
    let links: Vec<&str> = paste
        .lines()
        .skip(1)
        .take_while(|l| !l.starts_with("GPU"))
        .collect();
    assert_eq!(links.len(), 18);
    r.gpus
        .iter()
        .map(|g| {
            format!(
                "GPU {}: {} (UUID: {})\n{}\n",
                g.index,
                g.product,
                g.uuid,
                links.join("\n")
            )
        })
        .collect()
}

struct Fault {
    what: &'static str,
    source: &'static str,
    /// (GPU, from, to), applied in order.
    edits: &'static [(usize, &'static str, &'static str)],
    /// An edit to the derived `nvlink -s` output: (GPU, link line, to).
    link_edits: &'static [(usize, &'static str, &'static str)],
    /// Remove this GPU's section altogether.
    drop_gpu: Option<usize>,
    expect: fn() -> Expect,
    check: &'static str,
    reason: &'static str,
}

fn no_flags() -> Expect {
    Expect::default()
}

fn four_gpus() -> Expect {
    Expect {
        gpus: Some(4),
        ..Expect::default()
    }
}

fn gb300_product() -> Expect {
    Expect {
        products: vec!["NVIDIA GB300".into(), "nvidia-gb300-x".into()],
        ..Expect::default()
    }
}

const GB200: &str = "gb200-x4-k8s-test-infra.xml";
const GB300: &str = "gb300-x4-k8s-test-infra.xml";

const FAULTS: &[Fault] = &[
    Fault {
        what: "fabric registration still in progress",
        source: GB200,
        edits: &[(2, "<state>Completed</state>", "<state>In Progress</state>")],
        link_edits: &[],
        drop_gpu: None,
        expect: no_flags,
        check: "fabric",
        reason: "GPU 2: fabric state is In Progress, not Completed",
    },
    Fault {
        what: "fabric out of resources, no clique",
        source: GB200,
        edits: &[
            (
                1,
                "<status>Success</status>",
                "<status>Insufficient Resources</status>",
            ),
            (1, "<cliqueId>2</cliqueId>", "<cliqueId>0</cliqueId>"),
        ],
        link_edits: &[],
        drop_gpu: None,
        expect: no_flags,
        check: "fabric",
        reason: "GPU 1: fabric status is Insufficient Resources, not Success",
    },
    Fault {
        what: "clique unassigned",
        source: GB200,
        edits: &[(1, "<cliqueId>2</cliqueId>", "<cliqueId>0</cliqueId>")],
        link_edits: &[],
        drop_gpu: None,
        expect: no_flags,
        check: "fabric",
        reason: "GPU 1: clique 0 (unassigned)",
    },
    Fault {
        what: "cluster UUID zeros",
        source: GB200,
        edits: &[(
            3,
            "<clusterUuid>00000001-0000-0000-0000-000000000001",
            "<clusterUuid>00000000-0000-0000-0000-000000000000",
        )],
        link_edits: &[],
        drop_gpu: None,
        expect: no_flags,
        check: "fabric",
        reason: "GPU 3: cluster UUID all zeros (unassigned)",
    },
    Fault {
        what: "one GPU in another clique",
        source: GB200,
        edits: &[(3, "<cliqueId>2</cliqueId>", "<cliqueId>5</cliqueId>")],
        link_edits: &[],
        drop_gpu: None,
        expect: no_flags,
        check: "fabric",
        reason: "GPU 3: clique 5, not 2 as on GPU 0",
    },
    Fault {
        what: "one GPU in another cluster",
        source: GB300,
        edits: &[(
            0,
            "<clusterUuid>00000001-0000-0000-0000-000000000001",
            "<clusterUuid>00000002-0000-0000-0000-000000000002",
        )],
        link_edits: &[],
        drop_gpu: None,
        expect: no_flags,
        check: "fabric",
        reason: "GPU 0: cluster UUID 00000002-0000-0000-0000-000000000002, not 00000001-0000-0000-0000-000000000001 as on GPU 1",
    },
    Fault {
        what: "incompatible GPU firmware",
        source: GB300,
        edits: &[(
            2,
            "<incorrect_configuration>None",
            "<incorrect_configuration>Incompatible GPU Firmware",
        )],
        link_edits: &[],
        drop_gpu: None,
        expect: no_flags,
        check: "fabric",
        reason: "GPU 2: fabric incorrect configuration: Incompatible GPU Firmware",
    },
    Fault {
        what: "fabric unhealthy",
        source: GB200,
        edits: &[
            (
                0,
                "<summary>Healthy</summary>",
                "<summary>Unhealthy</summary>",
            ),
            (
                3,
                "<summary>Healthy</summary>",
                "<summary>Unhealthy</summary>",
            ),
        ],
        link_edits: &[],
        drop_gpu: None,
        expect: no_flags,
        check: "fabric",
        reason: "GPU 0, GPU 3: fabric health is Unhealthy",
    },
    Fault {
        what: "no fabric on a GB200",
        source: GB200,
        edits: &[(1, "<state>Completed</state>", "<state>N/A</state>")],
        link_edits: &[],
        drop_gpu: None,
        expect: no_flags,
        check: "fabric",
        reason: "GPU 1: fabric not reported (NVIDIA GB200 needs one)",
    },
    Fault {
        what: "row remap pending",
        source: GB200,
        edits: &[
            (2, "<remapped_row_pending>No", "<remapped_row_pending>Yes"),
            (2, "<remapped_row_unc>0", "<remapped_row_unc>1"),
        ],
        link_edits: &[],
        drop_gpu: None,
        expect: no_flags,
        check: "row-remap",
        reason: "GPU 2: row remap pending (reset the GPU); 0 correctable, 1 uncorrectable rows remapped",
    },
    Fault {
        what: "row remapping failed",
        source: GB300,
        edits: &[(0, "<remapped_row_failure>No", "<remapped_row_failure>Yes")],
        link_edits: &[],
        drop_gpu: None,
        expect: no_flags,
        check: "row-remap",
        reason: "GPU 0: row remapping failed (no spare rows); 0 correctable, 0 uncorrectable rows remapped",
    },
    Fault {
        what: "uncorrectable ECC errors",
        source: GB200,
        edits: &[(3, "<dram_uncorrectable>0", "<dram_uncorrectable>2")],
        link_edits: &[],
        drop_gpu: None,
        expect: no_flags,
        check: "ecc",
        reason: "GPU 3: 2 uncorrectable ECC errors since the driver loaded",
    },
    Fault {
        what: "two NVLinks down",
        source: GB200,
        edits: &[],
        link_edits: &[
            (1, "Link 7: 53.125 GB/s", "Link 7: <inactive>"),
            (1, "Link 12: 53.125 GB/s", "Link 12: <inactive>"),
        ],
        drop_gpu: None,
        expect: no_flags,
        check: "nvlink",
        reason: "GPU 1: 16 of 18 NVLinks active",
    },
    Fault {
        what: "a GPU missing",
        source: GB200,
        edits: &[],
        link_edits: &[],
        drop_gpu: Some(3),
        expect: four_gpus,
        check: "gpu-count",
        reason: "3 GPUs seen, 4 expected (nvidia-smi counts 4 attached)",
    },
    Fault {
        what: "the wrong product",
        source: GB200,
        edits: &[],
        link_edits: &[],
        drop_gpu: None,
        expect: gb300_product,
        check: "product",
        reason: "GPU 0, GPU 1, GPU 2, GPU 3: NVIDIA GB200, not NVIDIA GB300 or nvidia-gb300-x",
    },
    // Text captures.
    Fault {
        what: "uncorrectable ECC errors (text)",
        source: "h100-sxm-80gb-hbm3-x8-gls.txt",
        edits: &[(
            5,
            "DRAM Uncorrectable            : 0",
            "DRAM Uncorrectable            : 1",
        )],
        link_edits: &[],
        drop_gpu: None,
        expect: no_flags,
        check: "ecc",
        reason: "GPU 5: 1 uncorrectable ECC errors since the driver loaded",
    },
    Fault {
        what: "HGX fabric not registered (text)",
        source: "h200-gls.txt",
        edits: &[(
            0,
            "State                             : Completed",
            "State                             : Not Started",
        )],
        link_edits: &[],
        drop_gpu: None,
        expect: no_flags,
        check: "fabric",
        reason: "GPU 0: fabric state is Not Started, not Completed",
    },
];

fn derive(f: &Fault) -> (String, String) {
    let mut text = fixture(f.source);
    for (gpu, from, to) in f.edits {
        text = edit_gpu(&text, *gpu, from, to);
    }
    if let Some(gpu) = f.drop_gpu {
        let start = text.match_indices("<gpu id=").nth(gpu).unwrap().0;
        let end = start + text[start..].find("</gpu>").unwrap() + "</gpu>".len();
        text.replace_range(start..end, "");
    }
    let report = node_probe::parse(&text).unwrap();
    let mut links = links_for(&report);
    for (gpu, from, to) in f.link_edits {
        let marker = format!("GPU {gpu}:");
        let start = links.find(&marker).unwrap();
        let end = links[start + 1..]
            .find("GPU ")
            .map_or(links.len(), |e| e + start + 1);
        let section = links[start..end].replacen(from, to, 1);
        links.replace_range(start..end, &section);
    }
    (text, links)
}

#[test]
fn each_derived_fault_fails_exactly_its_check() {
    for f in FAULTS {
        let (text, links) = derive(f);
        let mut report = node_probe::parse(&text).unwrap_or_else(|e| panic!("{}: {e}", f.what));
        let expect = (f.expect)();
        report.attach_links(&node_probe::parse_nvlink_status(&links), &expect);
        let checks = run_checks(&report, &expect);
        let failed: Vec<_> = checks.iter().filter(|c| c.result == Fail).collect();
        assert_eq!(failed.len(), 1, "{}: {checks:#?}", f.what);
        assert_eq!(failed[0].name, f.check, "{}", f.what);
        assert_eq!(failed[0].reason.as_deref(), Some(f.reason), "{}", f.what);
        // Unchanged, the same source passes.
        let clean = node_probe::parse(&fixture(f.source)).unwrap();
        let mut clean_links = clean.clone();
        clean_links.attach_links(
            &node_probe::parse_nvlink_status(&links_for(&clean)),
            &Expect::default(),
        );
        let checks = run_checks(&clean_links, &Expect::default());
        assert!(
            checks.iter().all(|c| c.result != Fail),
            "{}: {checks:#?}",
            f.what
        );
    }
}

#[test]
fn the_unedited_links_of_a_gb200_pass() {
    let r = node_probe::parse(&fixture(GB200)).unwrap();
    let mut with = r.clone();
    with.attach_links(
        &node_probe::parse_nvlink_status(&links_for(&r)),
        &Expect::default(),
    );
    assert_eq!(
        with.gpus[2].nvlink,
        Some(verdict::NvLink {
            active: 18,
            expected: 18
        })
    );
    let checks = run_checks(&with, &Expect::default());
    assert_eq!(result(&checks, "nvlink"), Pass);
    // --nvlinks overrides the 18 of a GB200.
    let checks = run_checks(
        &with,
        &Expect {
            nvlinks: Some(20),
            ..Expect::default()
        },
    );
    assert_eq!(result(&checks, "nvlink"), Fail);
}

// The command itself, as a probe pod runs it.

static SCRATCH: AtomicUsize = AtomicUsize::new(0);

/// A fresh scratch folder.
fn scratch() -> PathBuf {
    let n = SCRATCH.fetch_add(1, Ordering::SeqCst);
    let dir = std::env::temp_dir().join(format!("gpufleet-probe-test-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn probe(args: &[&str], path: Option<&Path>) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_gpufleet"));
    cmd.arg("probe").args(args);
    if let Some(p) = path {
        cmd.env("PATH", p);
    }
    cmd.output().expect("gpufleet runs")
}

/// Runs the probe with a temporary termination log; its verdict, which
/// must be valid and fit.
fn probe_verdict(args: &[&str], path: Option<&Path>) -> (Output, Verdict) {
    let dir = scratch();
    let log = dir.join("termination-log");
    let mut all = args.to_vec();
    let log_arg = log.to_string_lossy().into_owned();
    all.extend(["--termination-log", &log_arg]);
    let out = probe(&all, path);
    let text = std::fs::read_to_string(&log)
        .unwrap_or_else(|e| panic!("no verdict written: {e}; {out:?}"));
    assert!(text.len() <= verdict::MAX_BYTES, "{} bytes", text.len());
    let Read::Valid(v) = verdict::read(&text) else {
        panic!("invalid verdict: {text}")
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        assert!(line.chars().count() <= 80, "{line}");
    }
    let _ = std::fs::remove_dir_all(&dir);
    (out, *v)
}

#[test]
fn a_healthy_gb200_tray_passes() {
    let file = fixtures().join(GB200);
    let (out, v) = probe_verdict(
        &[
            "--from-file",
            file.to_str().unwrap(),
            "--gpus",
            "4",
            "--product",
            "NVIDIA-GB200",
        ],
        None,
    );
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(v.gpus.len(), 4);
    assert_eq!(v.driver.as_deref(), Some("580.173.02"));
    assert!(v.by.as_deref().unwrap().starts_with("gpufleet-probe "));
    let names: Vec<&str> = v.checks.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "nvidia-smi",
            "gpu-count",
            "product",
            "fabric",
            "nvlink",
            "ecc",
            "row-remap"
        ]
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("pass  fabric"), "{stdout}");
    assert!(stdout.ends_with("verdict: pass\n"), "{stdout}");
}

#[test]
fn eight_gpus_and_text_input_fit_too() {
    for file in [
        "b200-x8-k8s-test-infra.xml",
        "h100-sxm-80gb-hbm3-x8-gls.txt",
    ] {
        let path = fixtures().join(file);
        let (out, v) = probe_verdict(
            &["--from-file", path.to_str().unwrap(), "--gpus", "8"],
            None,
        );
        assert_eq!(out.status.code(), Some(0), "{file}: {out:?}");
        assert_eq!(v.gpus.len(), 8);
    }
}

#[test]
fn a_derived_fault_fails_the_probe_with_exit_1() {
    let dir = scratch();
    let fault = FAULTS
        .iter()
        .find(|f| f.what == "clique unassigned")
        .unwrap();
    let (text, links) = derive(fault);
    let file = dir.join("nvidia-smi.xml");
    let links_file = dir.join("nvlink-s.txt");
    std::fs::write(&file, text).unwrap();
    std::fs::write(&links_file, links).unwrap();
    let (out, v) = probe_verdict(
        &[
            "--from-file",
            file.to_str().unwrap(),
            "--nvlink-from-file",
            links_file.to_str().unwrap(),
        ],
        None,
    );
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let failed: Vec<_> = v.failed().map(|c| c.name.as_str()).collect();
    assert_eq!(failed, ["fabric"]);
    assert_eq!(v.gpus[1].fabric.as_ref().unwrap().clique_id, Some(0));
    assert_eq!(
        v.gpus[1].nvlink,
        Some(verdict::NvLink {
            active: 18,
            expected: 18
        })
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("verdict: fail (fabric)"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn output_that_is_no_nvidia_smi_exits_2_with_a_verdict() {
    let dir = scratch();
    let file = dir.join("garbage");
    std::fs::write(
        &file,
        "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver.\n",
    )
    .unwrap();
    let (out, v) = probe_verdict(&["--from-file", file.to_str().unwrap()], None);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert_eq!(v.checks.len(), 1);
    assert_eq!(v.checks[0].name, "nvidia-smi");
    assert_eq!(v.checks[0].result, Fail);
    assert!(
        v.checks[0]
            .reason
            .as_deref()
            .unwrap()
            .contains("couldn't communicate")
    );
    // No nvidia-smi at all.
    let missing = dir.join("no-such-nvidia-smi");
    let (out, v) = probe_verdict(&["--nvidia-smi", missing.to_str().unwrap()], None);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(
        v.checks[0]
            .reason
            .as_deref()
            .unwrap()
            .starts_with("could not run"),
        "{v:?}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn an_unwritable_termination_log_is_reported_not_fatal() {
    let file = fixtures().join(GB200);
    let out = probe(
        &[
            "--from-file",
            file.to_str().unwrap(),
            "--termination-log",
            "/nonexistent-dir/termination-log",
        ],
        None,
    );
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("cannot write the verdict"),
        "{out:?}"
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("verdict: pass"));
}

#[test]
fn print_schema_still_prints_the_committed_schema() {
    let out = probe(&["--print-schema"], None);
    assert_eq!(out.status.code(), Some(0));
    let committed = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/verdict-v1.schema.json"),
    )
    .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), committed);
}

#[cfg(unix)]
fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join(name);
    // PATH is the test's own folder, so `cat` is named in full.
    let cat = node_probe::exec::on_path("cat").expect("cat on PATH");
    let body = body.replace("cat ", &format!("{} ", cat.display()));
    std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

/// The live path: a stand-in nvidia-smi that prints a real capture for
/// `-q -x` and derived link states for `nvlink -s`; dcgmi on PATH or not.
#[cfg(unix)]
#[test]
fn nvidia_smi_and_dcgmi_are_run() {
    let dir = scratch();
    let xml = fixtures().join(GB200);
    let report = node_probe::parse(&fixture(GB200)).unwrap();
    let links = links_for(&report).replacen("Link 0: 53.125 GB/s", "Link 0: <inactive>", 1);
    std::fs::write(dir.join("links"), links).unwrap();
    let smi = script(
        &dir,
        "nvidia-smi",
        &format!(
            "if [ \"$1\" = nvlink ]; then cat '{}'; else cat '{}'; fi",
            dir.join("links").display(),
            xml.display()
        ),
    );
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let smi_arg = smi.to_string_lossy().into_owned();
    // No dcgmi on PATH: the dcgm check skips; GPU 0 has a link down.
    let (out, v) = probe_verdict(&["--nvidia-smi", &smi_arg, "--dcgm-level", "1"], Some(&bin));
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let failed: Vec<_> = v
        .failed()
        .map(|c| (c.name.as_str(), c.reason.as_deref().unwrap()))
        .collect();
    assert_eq!(failed, [("nvlink", "GPU 0: 17 of 18 NVLinks active")]);
    let dcgm = v.checks.iter().find(|c| c.name == "dcgm").unwrap();
    assert_eq!(dcgm.result, Skip);
    assert_eq!(
        dcgm.reason.as_deref(),
        Some("dcgmi is not on PATH: DCGM diagnostics not run")
    );
    // A dcgmi that fails one test.
    script(
        &bin,
        "dcgmi",
        "[ \"$1 $2 $3\" = 'diag -r 2' ] || exit 9\necho '| Deployment | Pass |'\necho '| Memory     | Fail - GPU: 0 |'\nexit 226",
    );
    let (out, v) = probe_verdict(&["--nvidia-smi", &smi_arg, "--dcgm-level", "2"], Some(&bin));
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let dcgm = v.checks.iter().find(|c| c.name == "dcgm").unwrap();
    assert_eq!(dcgm.result, Fail);
    assert_eq!(
        dcgm.reason.as_deref(),
        Some("dcgmi diag -r 2 exited 226: Memory Fail - GPU: 0")
    );
    // A dcgmi that passes, named with --dcgmi.
    let good = script(&dir, "dcgmi-ok", "exit 0");
    let (_, v) = probe_verdict(
        &[
            "--nvidia-smi",
            &smi_arg,
            "--dcgm-level",
            "3",
            "--dcgmi",
            good.to_str().unwrap(),
        ],
        Some(&bin),
    );
    let dcgm = v.checks.iter().find(|c| c.name == "dcgm").unwrap();
    assert_eq!(
        (dcgm.result, dcgm.reason.as_deref()),
        (Pass, Some("dcgmi diag -r 3 passed"))
    );
    // An nvidia-smi that lists the GPUs but exits non-zero: read, and failed.
    let grumpy = script(
        &dir,
        "nvidia-smi-grumpy",
        &format!(
            "cat '{}'; echo 'GPU 0000:9C:00.0: Unknown Error' >&2; exit 15",
            xml.display()
        ),
    );
    let (out, v) = probe_verdict(&["--nvidia-smi", grumpy.to_str().unwrap()], Some(&bin));
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert_eq!(v.gpus.len(), 4);
    let smi_check = &v.checks[0];
    assert_eq!(smi_check.result, Fail);
    assert!(
        smi_check
            .reason
            .as_deref()
            .unwrap()
            .ends_with("-q -x exited 15: GPU 0000:9C:00.0: Unknown Error"),
        "{smi_check:?}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
