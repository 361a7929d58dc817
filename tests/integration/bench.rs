//! The benchmark harness as a CI smoke test: `gpufleet bench` at 1,000
//! nodes (probes on, short delays) on its own control plane. It checks that
//! the rollout completes, that gpufleet's node writes per admitted node
//! stay within the target of 3 and its requests of every kind within 3.1
//! (from the API server's audit log), and that the operator's own work per
//! admitted node does not grow from 1,000 to 3,000 nodes (its counter):
//! counts, never timings (BENCHMARKS.md).

use std::process::Command;

#[test]
fn a_thousand_node_rollout_completes_within_three_node_writes_a_node() {
    let (report, status, stderr) = bench(1000, 150, &[]);
    let rollout = &report["rollout"];
    let nodes = report["nodes"].as_u64().expect("nodes");
    assert_eq!(nodes, 1008, "1,000 rounded up to whole domains of 18");
    assert_eq!(
        rollout["admitted"].as_u64(),
        Some(nodes),
        "every node admitted: {rollout}"
    );
    let writes = rollout["requests"]["node_writes"]
        .as_u64()
        .expect("node writes");
    assert!(
        writes > 0,
        "no node writes counted: is the audit log read? {rollout}"
    );
    let per_node = rollout["node_writes_per_admitted"]
        .as_f64()
        .expect("writes per node");
    assert!(
        per_node <= 3.0,
        "{per_node:.2} node writes per admitted node ({writes} writes), over the target of 3"
    );
    // All of gpufleet's requests, every kind: a node write to start a node,
    // its probe's create, and one write that records its pass and admits
    // it (a soak of 30 s or less: the pass waits in its pod for the
    // admission, `PASS_IN_POD`); finished probe pods many at once
    // (deletecollection); the batch's status, events and watches besides.
    // About 3.08 a node here (3.25 when each pass was written on its own,
    // 5.1 when each pod was deleted on its own). Long soaks still cost a
    // write of their own: docs/notes/soak-without-a-write.md.
    let requests = rollout["requests"]["total"].as_u64().expect("requests");
    let per_node = requests as f64 / nodes as f64;
    assert!(
        per_node <= 3.1,
        "{per_node:.2} API requests per admitted node ({requests}), over 3.1: {}",
        rollout["requests"]
    );
    // Every node got its probe. (Create requests can exceed the nodes: a
    // plan made from a cache that has not seen a new pod yet asks again and
    // gets AlreadyExists; BENCHMARKS.md counts them.)
    assert!(
        rollout["probe_creates"].as_u64() >= Some(nodes),
        "{rollout}"
    );
    assert!(
        status.success(),
        "gpufleet bench exited {status}\nstderr:\n{stderr}"
    );
}

/// Runs `gpufleet bench` at `nodes` (probes on, 1 s probes and soak, with
/// `flags` such as `--no-kwok`) and returns its report, its exit status and
/// what it said on stderr, after checking that the rollout completed and
/// decided every node: admitted, or (with `--faults`) failed exactly where a
/// fault was injected, or held with its domain.
fn bench(
    nodes: u32,
    timeout: u32,
    flags: &[&str],
) -> (serde_json::Value, std::process::ExitStatus, String) {
    let (nodes, timeout) = (nodes.to_string(), timeout.to_string());
    let mut args = vec![
        "bench",
        "--nodes",
        &nodes,
        "--probe-seconds",
        "1",
        "--soak-seconds",
        "1",
        "--timeout",
        &timeout,
        "--json",
    ];
    args.extend(flags);
    let out = Command::new(env!("CARGO_BIN_EXE_gpufleet"))
        .args(&args)
        .env_remove("KUBECONFIG")
        .output()
        .expect("running gpufleet bench");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap_or_else(|e| {
        panic!(
            "gpufleet bench printed no report ({e}); status {}\nstdout:\n{stdout}\nstderr:\n{stderr}",
            out.status
        )
    });
    let rollout = &report["rollout"];
    assert_eq!(
        rollout["complete"], true,
        "the {nodes}-node rollout did not complete: {}\nstderr:\n{stderr}",
        rollout["outcome"]
    );
    let count = |key: &str| rollout[key].as_u64().unwrap_or_default();
    assert_eq!(
        count("admitted") + count("failed") + count("held"),
        report["nodes"].as_u64().unwrap_or_default(),
        "every node decided: {rollout}"
    );
    assert_eq!(
        count("failed"),
        count("faults_injected"),
        "failed exactly where a fault was injected: {rollout}"
    );
    // Held: the domain that lost three trays (15 healthy of the 16 it
    // needs), and a partial last domain smaller than 16.
    let partial = report["nodes"].as_u64().unwrap_or_default() % 18;
    let expected = if flags.contains(&"--faults") { 15 } else { 0 }
        + if (1..16).contains(&partial) {
            partial
        } else {
            0
        };
    assert_eq!(count("held"), expected, "held nodes: {rollout}");
    (report, out.status, stderr)
}

/// The operator's own work counter (node records read by its plans, batch
/// and pool alike) per admitted node, at 1,000 and at 3,000 nodes: a plan
/// reads the whole pool, so without the plan pace a busy batch planned back
/// to back and the work per node grew with the pool (37 and 57 before the
/// pace, 1.54 times). Counts, not timings. Both fleets are exact (the last
/// domain partial: 1,000 = 55 x 18 + 10) and carry faults (failed trays, a
/// held domain), as the Colossus runs in BENCHMARKS.md do.
#[test]
fn work_per_admitted_node_stays_flat_from_1000_to_3000_nodes() {
    let flags = ["--no-kwok", "--exact", "--faults"];
    let (small, _, _) = bench(1000, 300, &flags);
    let (large, _, _) = bench(3000, 300, &flags);
    assert_eq!(small["nodes"], 1000, "exactly 1,000 nodes");
    let per_node = |r: &serde_json::Value| {
        let visits = r["rollout"]["reconciles"]["node_visits"]
            .as_f64()
            .expect("the work counter");
        let admitted = r["rollout"]["admitted"].as_f64().expect("admitted");
        assert!(
            visits > 0.0,
            "no work counted: {}",
            r["rollout"]["reconciles"]
        );
        visits / admitted
    };
    let (a, b) = (per_node(&small), per_node(&large));
    assert!(
        b / a < 1.5,
        "node records read per admitted node: {a:.1} at 1,008 nodes, {b:.1} at 3,006 ({:.2} times)",
        b / a
    );
    for r in [&small, &large] {
        let writes = r["rollout"]["node_writes_per_admitted"]
            .as_f64()
            .expect("node writes");
        assert!(writes <= 3.0, "{writes:.2} node writes a node");
    }
}
