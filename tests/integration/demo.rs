//! `gpufleet demo --kubeconfig` against the shared test bed: a small fleet
//! rolled out end to end by the demo's own operator, summed up, and removed.

use std::process::{Command, Stdio};

use gpufleet::simulate::SimNode;
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, ListParams};

use crate::support::testbed;

/// The demo under its own name, so it does not meet other tests' objects.
fn demo(name: &str, extra: &[&str]) -> (bool, String, String) {
    let tb = testbed();
    let out = Command::new(env!("CARGO_BIN_EXE_gpufleet"))
        .arg("demo")
        .arg("--kubeconfig")
        .arg(&tb.kubeconfig)
        .args([
            "--name",
            name,
            "--domains",
            "2",
            "--gb300-domains",
            "1",
            "--probe-seconds",
            "1",
            "--soak-seconds",
            "1",
        ])
        .args(extra)
        .stdin(Stdio::null())
        .output()
        .expect("running gpufleet demo");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    println!("{stdout}\n{stderr}");
    (out.status.success(), stdout, stderr)
}

fn client() -> (tokio::runtime::Runtime, kube::Client) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let kubeconfig = testbed().kubeconfig.clone();
    let client = rt.block_on(async move {
        let file = kube::config::Kubeconfig::read_from(&kubeconfig).expect("kubeconfig");
        let config = kube::Config::from_custom_kubeconfig(file, &Default::default())
            .await
            .expect("config");
        kube::Client::try_from(config).expect("client")
    });
    (rt, client)
}

/// 54 nodes in three domains with the five default faults: every node is
/// accounted for (49 ready, 5 failed with their reasons), the demo exits 0,
/// and it leaves nothing behind in the cluster.
#[test]
fn the_demo_rolls_out_a_small_fleet_on_an_existing_cluster() {
    let (ok, out, err) = demo("demo-it", &["--yes"]);
    assert!(ok, "the demo failed:\n{out}\n{err}");
    assert!(
        out.starts_with("gpufleet demo: 54 simulated nodes (215 GPUs) in 3 NVL72 domains\n"),
        "{out}"
    );
    // Plain progress lines in a pipe, ending complete.
    assert!(!out.contains('\x1b'), "escape codes in a pipe:\n{out}");
    assert!(
        out.contains("] wave 3/3: 49/54 ready, 5 failed; complete\n"),
        "{out}"
    );
    // The summary: every wave, every failure with its reason, every GPU.
    assert!(
        out.contains("wave  nodes  ready  failed  held  GPUs online  time"),
        "{out}"
    );
    assert!(
        out.contains("\nall      54     49       5     0   196 of 215"),
        "{out}"
    );
    assert!(out.contains("failed (5):"), "{out}");
    assert!(
        out.contains("demo-it-gb200-r02-n11 (wave 3)\n    condition GpuXidError is True"),
        "{out}"
    );
    assert!(
        out.contains(
            "demo-it-gb300-r01-n03 (wave 3)\n    label nvidia.com/gpu.count is 3, pool expects 4"
        ),
        "{out}"
    );
    assert!(out.contains("demo-it-gb200-r02-n05 (wave 3)\n    probe failed (exit 1): dcgmi diag -r 3: NVLink CRC errors"), "{out}");
    // The verdict gates: a fabric without a clique, a VBIOS off the tuple.
    assert!(
        out.contains("demo-it-gb200-r01-n09 (wave 1)\n    probe verdict: all 4 GPUs: fabric cliqueId is 0 (unassigned); fabric status\n    is Insufficient Resources, not Success"),
        "{out}"
    );
    assert!(
        out.contains("demo-it-gb300-r01-n14 (wave 3)\n    probe verdict: VBIOS 96.00.AF.00.01 is not in the pool's accepted set\n    (97.00.82.00.5F)"),
        "{out}"
    );
    assert!(
        out.contains("196 of 215 GPUs online: 49 of 54 nodes ready, 5 failed, 0 held, in"),
        "{out}"
    );
    // The energy the checks drew, counted by the operator as it planned.
    let energy = out
        .lines()
        .find(|l| l.starts_with("Energy spent in checks: "))
        .unwrap_or_else(|| panic!("no energy line:\n{out}"));
    assert!(
        energy.contains(" Wh") || energy.contains(" kWh"),
        "{energy}"
    );
    assert!(!energy.contains(": 0 Wh"), "no energy counted: {energy}");
    assert!(
        out.contains("Removed the demo's batch, pool, nodes and namespace from the cluster."),
        "{out}"
    );
    assert!(
        out.lines().all(|l| l.chars().count() <= 80),
        "wider than 80 columns:\n{out}"
    );

    let (rt, client) = client();
    let nodes: Api<Node> = Api::all(client);
    let left = rt
        .block_on(nodes.list(&ListParams::default().labels("gpufleet.io/demo=demo-it")))
        .expect("listing nodes");
    assert!(
        left.items.is_empty(),
        "the demo left {} nodes",
        left.items.len()
    );
    testbed()
        .kubectl(&["get", "rolloutbatch", "demo-it"])
        .fails();
    testbed().kubectl(&["get", "gpupool", "demo-it"]).fails();
}

/// A cluster with a node the demo did not simulate is refused without
/// `--yes`, before anything is created.
#[test]
fn the_demo_refuses_a_cluster_with_real_nodes() {
    let (rt, client) = client();
    let nodes: Api<Node> = Api::all(client);
    let mut real = SimNode::gb200("demo-real-node", "demo-real-clique").to_node();
    real.metadata
        .labels
        .as_mut()
        .expect("labels")
        .remove(gpufleet::simulate::SIMULATED);
    rt.block_on(nodes.create(&Default::default(), &real))
        .expect("creating a node that is not simulated");
    let (ok, out, err) = demo("demo-refused", &[]);
    rt.block_on(nodes.delete("demo-real-node", &Default::default()))
        .expect("deleting it");
    assert!(!ok, "the demo went ahead:\n{out}");
    assert!(
        err.contains("this cluster has nodes the demo did not simulate ("),
        "{err}"
    );
    assert!(
        err.contains("use a disposable cluster, or pass --yes to go ahead"),
        "{err}"
    );
    let made = rt
        .block_on(nodes.list(&ListParams::default().labels("gpufleet.io/demo=demo-refused")))
        .expect("listing");
    assert!(made.items.is_empty(), "the refused demo created nodes");
}
