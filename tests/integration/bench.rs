//! The benchmark harness as a CI smoke test: `gpufleet bench` at 1,000
//! nodes (probes on, short delays) on its own control plane. It checks that
//! the rollout completes, that gpufleet's node writes per admitted node
//! stay within the target of 3 and its requests of every kind within 4.5
//! (BENCHMARKS.md): counts from the API server's audit log, never timings.

use std::process::Command;

#[test]
fn a_thousand_node_rollout_completes_within_three_node_writes_a_node() {
    let out = Command::new(env!("CARGO_BIN_EXE_gpufleet"))
        .args([
            "bench",
            "--nodes",
            "1000",
            "--probe-seconds",
            "1",
            "--soak-seconds",
            "1",
            "--timeout",
            "150",
            "--json",
        ])
        .env_remove("KUBECONFIG")
        .output()
        .expect("running gpufleet bench");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let report: serde_json::Value = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("gpufleet bench printed no report ({e}); status {}\nstdout:\n{stdout}\nstderr:\n{stderr}", out.status));
    let rollout = &report["rollout"];
    assert_eq!(
        rollout["complete"], true,
        "the rollout did not complete: {}\nstderr:\n{stderr}",
        rollout["outcome"]
    );
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
    // All of gpufleet's requests, every kind: finished probe pods go many
    // at once (deletecollection), so about 4.1 a node; 5.1 when each went
    // on its own. The target is 3.1 (not reached yet).
    let requests = rollout["requests"]["total"].as_u64().expect("requests");
    let per_node = requests as f64 / nodes as f64;
    assert!(
        per_node <= 4.5,
        "{per_node:.2} API requests per admitted node ({requests}), over 4.5: {}",
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
        out.status.success(),
        "gpufleet bench exited {}\nstderr:\n{stderr}",
        out.status
    );
}
