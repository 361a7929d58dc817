//! The CRDs install, become Established, and read well in kubectl.

use serde_json::json;

use crate::support::testbed;

#[test]
fn crds_install_and_are_established() {
    let tb = testbed();
    for crd in ["gpupools.gpufleet.io", "rolloutbatches.gpufleet.io"] {
        let ran = tb
            .kubectl(&["get", "crd", crd, "-o"])
            .arg("jsonpath={.status.conditions[?(@.type==\"Established\")].status}")
            .succeeds();
        assert_eq!(ran.stdout.trim(), "True", "{crd} is not Established");
    }
    // Re-applying the committed manifests is a no-op, as GitOps tools do it.
    let ran = tb
        .kubectl(&["apply", "-f"])
        .arg(crate::support::repo().join("crds"))
        .succeeds();
    assert!(
        ran.stdout.contains("unchanged"),
        "re-apply changed the CRDs: {}",
        ran.stdout
    );
}

#[test]
fn every_example_is_accepted() {
    let tb = testbed();
    let examples = crate::support::repo().join("examples");
    let mut files: Vec<_> = std::fs::read_dir(&examples)
        .expect("examples/ exists")
        .map(|e| e.expect("readable entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    assert!(files.len() >= 4, "expected the examples, found {files:?}");
    for file in files {
        // A real create, not a dry run: the examples' names belong to this test.
        let ran = tb.kubectl(&["apply", "-f"]).arg(&file).succeeds();
        assert!(
            ran.stdout.contains("created") || ran.stdout.contains("unchanged"),
            "{}",
            ran.stdout
        );
    }
    // Defaults are filled in by the API server from the schema.
    let ran = tb
        .kubectl(&["get", "gpupool", "gb300-minimal", "-o", "json"])
        .succeeds();
    let pool: serde_json::Value = serde_json::from_str(&ran.stdout).expect("json");
    assert_eq!(pool["spec"]["topology"]["nodesPerDomain"], json!(18));
    assert_eq!(
        pool["spec"]["topology"]["domainLabel"],
        json!("nvidia.com/gpu.clique")
    );
    assert_eq!(
        pool["spec"]["onboarding"]["taint"]["key"],
        json!("gpufleet.io/onboarding")
    );
    // ...and the objects read back into gpufleet's own types.
    let _: gpufleet::api::GpuPool = serde_json::from_value(pool).expect("GpuPool deserializes");
    let ran = tb
        .kubectl(&["get", "rolloutbatch", "gb300-delivery-7", "-o", "json"])
        .succeeds();
    let batch: gpufleet::api::RolloutBatch =
        serde_json::from_str(&ran.stdout).expect("RolloutBatch deserializes");
    assert_eq!(batch.spec.max_concurrent, 72);
}

#[test]
fn kubectl_get_gpufleet_lists_both_kinds() {
    let tb = testbed();
    tb.kubectl(&["apply", "-f", "-"])
        .stdin(
            json!({"apiVersion": "v1", "kind": "List", "items": [
                crate::validation::pool("category-pool"),
                crate::validation::batch("category-batch", "category-pool"),
            ]})
            .to_string(),
        )
        .succeeds();
    let ran = tb.kubectl(&["get", "gpufleet"]).succeeds();
    assert!(
        ran.stdout.contains("gpupool.gpufleet.io/category-pool"),
        "{}",
        ran.stdout
    );
    assert!(
        ran.stdout
            .contains("rolloutbatch.gpufleet.io/category-batch"),
        "{}",
        ran.stdout
    );
    // Short names work too.
    tb.kubectl(&["get", "gpool", "category-pool"]).succeeds();
    tb.kubectl(&["get", "rbatch", "category-batch"]).succeeds();
}

#[test]
fn printer_columns_show_progress() {
    let tb = testbed();
    tb.kubectl(&["apply", "-f", "-"])
        .stdin(
            json!({"apiVersion": "v1", "kind": "List", "items": [
                crate::validation::pool("columns-pool"),
                crate::validation::batch("columns-batch", "columns-pool"),
            ]})
            .to_string(),
        )
        .succeeds();
    let status = json!({"status": {
        "currentWave": 2, "totalWaves": 3, "waveProgress": "2/3",
        "nodes": {"total": 216, "ready": 40, "failed": 2, "validating": 36, "pending": 138},
        "conditions": [{
            "type": "Ready", "status": "False", "reason": "WaveInProgress",
            "message": "wave 2 of 3: 36 nodes validating",
            "lastTransitionTime": "2026-11-27T00:00:00Z", "observedGeneration": 1
        }]
    }});
    tb.kubectl(&[
        "patch",
        "rbatch",
        "columns-batch",
        "--subresource=status",
        "--type=merge",
        "-p",
    ])
    .arg(status.to_string())
    .succeeds();
    let ran = tb.kubectl(&["get", "rbatch", "columns-batch"]).succeeds();
    let mut lines = ran.stdout.lines();
    let header: Vec<_> = lines.next().expect("header").split_whitespace().collect();
    assert_eq!(
        header,
        ["NAME", "POOL", "WAVE", "ADMITTED", "FAILED", "READY", "AGE"],
        "{}",
        ran.stdout
    );
    let row: Vec<_> = lines.next().expect("row").split_whitespace().collect();
    assert_eq!(
        &row[..6],
        ["columns-batch", "columns-pool", "2/3", "40", "2", "False"],
        "{}",
        ran.stdout
    );
    let wide = tb
        .kubectl(&["get", "rbatch", "columns-batch", "-o", "wide"])
        .succeeds();
    assert!(wide.stdout.contains("WaveInProgress"), "{}", wide.stdout);

    let pool_status = json!({"status": {
        "gpus": {"ready": 160, "total": 864}, "domains": {"complete": 2, "total": 12},
        "nodes": {"total": 216, "failed": 2, "ready": 40}
    }});
    tb.kubectl(&[
        "patch",
        "gpool",
        "columns-pool",
        "--subresource=status",
        "--type=merge",
        "-p",
    ])
    .arg(pool_status.to_string())
    .succeeds();
    let ran = tb.kubectl(&["get", "gpool", "columns-pool"]).succeeds();
    let mut lines = ran.stdout.lines();
    let header: Vec<_> = lines.next().expect("header").split_whitespace().collect();
    assert_eq!(
        header,
        [
            "NAME",
            "GPUS-READY",
            "GPUS",
            "DOMAINS-READY",
            "DOMAINS",
            "FAILED",
            "READY",
            "AGE"
        ],
        "{}",
        ran.stdout
    );
    let row: Vec<_> = lines.next().expect("row").split_whitespace().collect();
    assert_eq!(
        &row[..6],
        ["columns-pool", "160", "864", "2", "12", "2"],
        "{}",
        ran.stdout
    );
}

/// The pool's status as the operator writes it (a merge patch of the whole
/// status) reads back as written: the breaker's ledger is replaced, not
/// merged, and a cleared `trippedAt` or breaker is gone.
#[test]
fn a_pool_status_written_as_a_merge_patch_reads_back_as_written() {
    use gpufleet::api::{BreakerFailure, BreakerStatus, GpuPool, GpuPoolStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    let tb = testbed();
    tb.kubectl(&["apply", "-f", "-"])
        .stdin(crate::validation::pool("ledger-pool").to_string())
        .succeeds();
    let at = |s: &str| Time(s.parse().unwrap());
    let failure = |node: &str, t: &str| BreakerFailure {
        node: node.into(),
        at: at(t),
    };
    let tripped = GpuPoolStatus {
        breaker: Some(BreakerStatus {
            tripped: true,
            failed_in_window: 3,
            limit: 2,
            tripped_at: Some(at("2026-11-27T00:20:00Z")),
            failures: vec![
                failure("n-a", "2026-11-27T00:00:00Z"),
                failure("n-b", "2026-11-27T00:10:00Z"),
                failure("n-c", "2026-11-27T00:20:00Z"),
            ],
        }),
        ..Default::default()
    };
    let cleared = GpuPoolStatus {
        breaker: Some(BreakerStatus {
            failed_in_window: 0,
            limit: 2,
            ..Default::default()
        }),
        ..Default::default()
    };
    let unset = GpuPoolStatus::default();
    for status in [tripped, cleared, unset] {
        tb.kubectl(&[
            "patch",
            "gpool",
            "ledger-pool",
            "--subresource=status",
            "--type=merge",
            "-p",
        ])
        .arg(json!({ "status": status }).to_string())
        .succeeds();
        let ran = tb
            .kubectl(&["get", "gpool", "ledger-pool", "-o", "json"])
            .succeeds();
        let pool: GpuPool = serde_json::from_str(&ran.stdout).expect("GpuPool deserializes");
        assert_eq!(pool.status, Some(status));
    }
}
