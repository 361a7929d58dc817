//! The verdict gates: a probe's structured verdict judged per node (its own
//! checks, the fabric-completeness gate, the golden firmware tuple), and
//! the trays of a domain compared with each other before it is admitted.

use gpufleet::api::GpuPool;
use gpufleet::planner::sim::{Outcome, Sim};
use gpufleet::planner::{NodeState::*, NodeView, VerdictRecord};
use gpufleet::verdict::{Check, CheckResult, Verdict, healthy_tray};

use crate::fixtures::*;

const UUID: &str = "3183419e-9edc-4f0e-86e8-d895a9fb06be";
const VBIOS: &str = "97.00.82.00.5F";

/// Four trays in one domain labelled as GPU Feature Discovery labels an
/// NVL72's trays (`<clusterUuid>.<cliqueId>`), two healthy needed.
fn trays() -> Vec<NodeView> {
    let mut nodes = nodes(1);
    for n in &mut nodes {
        n.labels
            .insert("nvidia.com/gpu.clique".into(), format!("{UUID}.7"));
    }
    nodes
}

fn gated(extra: &str) -> GpuPool {
    with_pool(&format!(
        "spec: {{topology: {{minHealthyNodesPerDomain: 2}}, healthChecks: {{soakSeconds: 0, probe: {{retries: 0}}, {extra}}}}}"
    ))
}

fn healthy(node: &str) -> Verdict {
    healthy_tray(node, "NVIDIA-GB200", 4, (UUID, 7), "570.133.20", VBIOS)
}

fn wrote(v: &Verdict) -> Outcome {
    Outcome::Verdict {
        exit_code: 0,
        message: v.encode().unwrap(),
    }
}

/// Runs the domain to its end: start, probes finish, plan.
fn run(pool: GpuPool, nodes: Vec<NodeView>, verdict: impl Fn(&str) -> Outcome + 'static) -> Sim {
    let mut s = sim_with(
        pool,
        with_batch("spec: {maxFailuresPerWave: 4}"),
        nodes,
        move |n, _| verdict(n),
    );
    s.step();
    s.finish_probes();
    s.step();
    s.step();
    s
}

const N0: &str = "n-d000-n00";
const N1: &str = "n-d000-n01";
const N2: &str = "n-d000-n02";
const N3: &str = "n-d000-n03";

#[test]
fn a_tray_in_another_clique_and_one_off_the_firmware_tuple_fail_and_the_rest_is_admitted() {
    let pool = gated(&format!(
        "fabric: {{}}, firmware: {{vbios: ['{VBIOS}'], driver: ['570.133.20']}}"
    ));
    let s = run(pool, trays(), |n| {
        let mut v = healthy(n);
        match n {
            N0 => {
                for g in &mut v.gpus {
                    g.fabric.as_mut().unwrap().clique_id = Some(9);
                }
            }
            N1 => {
                for g in &mut v.gpus {
                    g.vbios = Some("97.00.11.00.01".into());
                }
            }
            _ => {}
        }
        wrote(&v)
    });
    assert_eq!(in_state(&s, Failed), [N0, N1]);
    assert_eq!(in_state(&s, Ready), [N2, N3]);
    assert_eq!(
        reason_of(&s, N0),
        "probe verdict: fabric cliqueId is 9, its label nvidia.com/gpu.clique says 7"
    );
    assert_eq!(
        reason_of(&s, N1),
        format!("probe verdict: VBIOS 97.00.11.00.01 is not in the pool's accepted set ({VBIOS})")
    );
    // The admitted trays carry their record; the failed one its failure.
    let record = |name: &str| {
        VerdictRecord::of(s.snapshot.nodes.iter().find(|n| n.name == name).unwrap()).unwrap()
    };
    assert_eq!(
        record(N2).clique.as_deref(),
        Some(format!("{UUID}.7").as_str())
    );
    assert!(record(N2).fabric);
    assert_eq!(record(N1).failed[0].0, "firmware");
}

#[test]
fn each_fabric_fault_fails_its_tray_naming_the_field() {
    type Break = fn(&mut Verdict);
    let cases: [(Break, &str); 7] = [
        (
            |v| v.gpus[2].fabric.as_mut().unwrap().state = "In Progress".into(),
            "GPU 2: fabric state is In Progress, not Completed",
        ),
        (
            |v| {
                for g in &mut v.gpus {
                    let f = g.fabric.as_mut().unwrap();
                    f.status = Some("Insufficient Resources".into());
                    f.clique_id = Some(0);
                }
            },
            "all 4 GPUs: fabric cliqueId is 0 (unassigned); fabric status is Insufficient Resources, not Success",
        ),
        (
            |v| {
                v.gpus[0].fabric.as_mut().unwrap().cluster_uuid =
                    Some("00000000-0000-0000-0000-000000000000".into())
            },
            "GPU 0: fabric clusterUuid is all zeros (unassigned); the node's GPUs are in different cliques",
        ),
        (
            |v| {
                v.gpus[1].fabric.as_mut().unwrap().incorrect_configuration =
                    Some("Incompatible GPU Firmware".into())
            },
            "GPU 1: fabric incorrect configuration: Incompatible GPU Firmware",
        ),
        (
            |v| v.gpus[3].nvlink.as_mut().unwrap().active = 16,
            "GPU 3: 16 of 18 NVLink links active",
        ),
        (
            |v| {
                for g in &mut v.gpus {
                    g.fabric = None;
                    g.product = "NVIDIA H200".into();
                }
            },
            "all 4 GPUs: no NVLink fabric reported (NVIDIA H200)",
        ),
        (
            |v| v.gpus[3].fabric.as_mut().unwrap().clique_id = Some(8),
            "the node's GPUs are in different cliques: GPUs 0, 1, 2 in",
        ),
    ];
    for (breaks, expected) in cases {
        let s = run(gated("fabric: {}"), trays(), move |n| {
            let mut v = healthy(n);
            if n == N0 {
                breaks(&mut v);
            }
            wrote(&v)
        });
        assert_eq!(in_state(&s, Failed), [N0], "{expected}");
        assert!(
            reason_of(&s, N0).contains(expected),
            "{expected:?} not in {:?}",
            reason_of(&s, N0)
        );
        assert_eq!(in_state(&s, Ready), [N1, N2, N3]);
    }
}

#[test]
fn a_probe_without_a_verdict_fails_a_gated_pool_and_passes_an_ungated_one() {
    let plain = |_: &str| Outcome::Pass;
    // Every tray failing the same way is a probe that does not fit the
    // pool, not four bad trays: the short-circuit halts the batch instead.
    let s = run(gated("fabric: {}"), trays(), plain);
    assert_eq!(in_state(&s, Failed), Vec::<String>::new());
    let stalled = condition(&s.plan(), "Stalled").clone();
    assert_eq!(stalled.reason, "SuspectedMisconfiguration");
    assert!(
        stalled.message.contains("wrote no verdict"),
        "{}",
        stalled.message
    );
    // One tray alone fails.
    let s = run(gated("fabric: {}"), trays(), |n| match n {
        N0 => Outcome::Pass,
        n => wrote(&healthy(n)),
    });
    assert_eq!(in_state(&s, Failed), [N0]);
    assert!(
        reason_of(&s, N0).contains("wrote no verdict"),
        "{}",
        reason_of(&s, N0)
    );
    let s = run(gated("unhealthyConditions: []"), trays(), plain);
    assert_eq!(in_state(&s, Ready).len(), 4, "exit code only, as before");
}

#[test]
fn a_malformed_or_oversized_verdict_fails_its_node_even_without_gates() {
    let s = run(gated("unhealthyConditions: []"), trays(), |n| match n {
        N0 => Outcome::Verdict {
            exit_code: 0,
            message: r#"{"schema":"gpufleet.io/verdict/v1","gpus":[{"index":0"#.into(),
        },
        N1 => Outcome::Verdict {
            exit_code: 0,
            message: format!(
                r#"{{"schema":"gpufleet.io/verdict/v1","by":"{}"}}"#,
                "x".repeat(5000)
            ),
        },
        n => wrote(&healthy(n)),
    });
    assert_eq!(in_state(&s, Failed), [N0, N1]);
    assert!(
        reason_of(&s, N0).contains("not valid JSON"),
        "{}",
        reason_of(&s, N0)
    );
    assert!(
        reason_of(&s, N1).contains("more than the 4096"),
        "{}",
        reason_of(&s, N1)
    );
    assert_eq!(in_state(&s, Ready), [N2, N3]);
}

#[test]
fn a_failed_check_in_the_verdict_says_what_failed() {
    let s = run(gated("unhealthyConditions: []"), trays(), |n| {
        let mut v = healthy(n);
        if n == N0 {
            v.checks[3] = Check {
                name: "nvlink".into(),
                result: CheckResult::Fail,
                reason: Some("GPU 1: 12 of 18 links active".into()),
            };
            return Outcome::Verdict {
                exit_code: 1,
                message: v.encode().unwrap(),
            };
        }
        wrote(&v)
    });
    assert_eq!(in_state(&s, Failed), [N0]);
    assert_eq!(
        reason_of(&s, N0),
        "probe failed (exit 1): check nvlink failed: GPU 1: 12 of 18 links active"
    );
}

#[test]
fn trays_that_disagree_with_their_domain_fail_without_a_clique_label() {
    // No label to compare with: the trays are compared with each other.
    let s = run(gated("fabric: {cliqueLabel: ''}"), trays(), |n| {
        let mut v = healthy(n);
        if n == N3 {
            for g in &mut v.gpus {
                g.fabric.as_mut().unwrap().cluster_uuid =
                    Some("0f0e0d0c-0000-4000-8000-000000000000".into());
            }
        }
        wrote(&v)
    });
    assert_eq!(in_state(&s, Failed), [N3]);
    assert_eq!(
        reason_of(&s, N3),
        format!(
            "fabric clusterUuid is 0f0e0d0c-0000-4000-8000-000000000000, its domain's says {UUID} (held by 3 of 4 trays)"
        )
    );
    assert_eq!(in_state(&s, Ready), [N0, N1, N2]);
}

#[test]
fn uniform_domains_fail_the_odd_tray_and_hold_a_split_one() {
    let pool =
        || gated("firmware: {vbios: ['97.00.82.00.5F', '97.00.90.00.01'], uniformDomains: true}");
    let s = run(pool(), trays(), |n| {
        let mut v = healthy(n);
        if n == N2 {
            for g in &mut v.gpus {
                g.vbios = Some("97.00.90.00.01".into());
            }
        }
        wrote(&v)
    });
    assert_eq!(in_state(&s, Failed), [N2]);
    assert_eq!(
        reason_of(&s, N2),
        format!("VBIOS 97.00.90.00.01 differs from its domain's {VBIOS} (held by 3 of 4 trays)")
    );
    assert_eq!(in_state(&s, Ready), [N0, N1, N3]);
    // Two against two: no majority to agree with, nobody is blamed.
    let s = run(pool(), trays(), |n| {
        let mut v = healthy(n);
        if n == N2 || n == N3 {
            for g in &mut v.gpus {
                g.vbios = Some("97.00.90.00.01".into());
            }
        }
        wrote(&v)
    });
    assert_eq!(in_state(&s, Held).len(), 4);
    assert!(
        reason_of(&s, N0).contains("disagree on their VBIOS"),
        "{}",
        reason_of(&s, N0)
    );
}

#[test]
fn a_gate_added_while_a_tray_soaks_is_checked_before_it_is_admitted() {
    let mut s = sim_with(
        with_pool(
            "spec: {topology: {minHealthyNodesPerDomain: 2}, healthChecks: {soakSeconds: 60, probe: {retries: 0}}}",
        ),
        with_batch("spec: {maxFailuresPerWave: 4}"),
        trays(),
        |n, _| Outcome::Verdict {
            exit_code: 0,
            message: healthy_tray(
                n,
                "NVIDIA-GB200",
                4,
                (UUID, 7),
                "570.133.20",
                "97.00.11.00.01",
            )
            .encode()
            .unwrap(),
        },
    );
    s.step();
    s.finish_probes();
    s.step();
    assert_eq!(in_state(&s, Soaking).len(), 4);
    s.pool = gated(&format!("firmware: {{vbios: ['{VBIOS}']}}"));
    s.pool.spec.health_checks.soak_seconds = 60;
    s.advance(61);
    s.step();
    assert_eq!(
        in_state(&s, Failed).len(),
        4,
        "nobody admitted off the tuple"
    );
    assert_eq!(
        reason_of(&s, N0),
        format!("VBIOS 97.00.11.00.01 is not in the pool's accepted set ({VBIOS})")
    );
    // A retry starts over: the old record goes with the old run.
    let nodes = &mut s.snapshot.nodes;
    crate::fixtures::node_mut(nodes, N0).retry = true;
    s.step();
    let n0 = s.snapshot.nodes.iter().find(|n| n.name == N0).unwrap();
    assert_eq!(n0.state(), Validating);
    assert_eq!(n0.verdict, None, "{:?}", n0.verdict);
}
