//! The API server itself rejects invalid pools and batches, with messages
//! that name the field. Each case starts from a valid object and breaks one
//! thing; the valid objects are accepted, so each rejection is that thing's.

use serde_json::{Value, json};

use crate::support::testbed;

/// A valid pool named `name`.
pub fn pool(name: &str) -> Value {
    json!({
        "apiVersion": "gpufleet.io/v1alpha1", "kind": "GpuPool",
        "metadata": {"name": name},
        "spec": {
            "nodeSelector": {"matchLabels": {"gpufleet.io/pool": name}},
            "hardware": {"gpuProduct": ["NVIDIA-GB200"], "gpusPerNode": 4, "minDriverVersion": "570.133.20"},
            "topology": {"domainLabel": "nvidia.com/gpu.clique", "nodesPerDomain": 18, "minHealthyNodesPerDomain": 16},
            "onboarding": {"taint": {"key": "gpufleet.io/onboarding", "effect": "NoSchedule"}},
            "healthChecks": {
                "unhealthyConditions": [{"type": "GpuXidError", "status": "True"}],
                "probe": {
                    "timeoutSeconds": 900, "retries": 1,
                    "template": {"spec": {"restartPolicy": "Never",
                        "containers": [{"name": "burn-in", "image": "busybox"}]}}
                },
                "soakSeconds": 60
            },
            "circuitBreaker": {"maxFailedPercent": 10, "window": "1h"}
        }
    })
}

/// A valid batch named `name` of pool `pool`.
pub fn batch(name: &str, pool: &str) -> Value {
    json!({
        "apiVersion": "gpufleet.io/v1alpha1", "kind": "RolloutBatch",
        "metadata": {"name": name},
        "spec": {
            "poolRef": pool,
            "nodeSelector": {"matchLabels": {"gpufleet.io/batch": name}},
            "waves": [{"nodes": 18}, {"percent": 25}, {"percent": 100}],
            "maxConcurrent": 36, "maxFailuresPerWave": 1, "approvedWaves": 1
        }
    })
}

/// Sets the value at a `/`-separated path (numbers index arrays).
fn set(mut obj: Value, path: &str, value: Value) -> Value {
    let mut at = &mut obj;
    let parts: Vec<_> = path.split('/').collect();
    for part in &parts[..parts.len() - 1] {
        at = match part.parse::<usize>() {
            Ok(i) => &mut at[i],
            Err(_) => &mut at[*part],
        };
    }
    let last = parts[parts.len() - 1];
    match last.parse::<usize>() {
        Ok(i) => at[i] = value,
        Err(_) => at[last] = value,
    }
    obj
}

/// Asks the API server to create `obj` (server-side dry run: full admission,
/// nothing stored) and returns kubectl's error output, failing if accepted.
fn rejected(obj: &Value) -> String {
    let ran = testbed()
        .kubectl(&["create", "--dry-run=server", "-f", "-"])
        .stdin(obj.to_string())
        .fails();
    ran.stderr
}

fn accepted(obj: &Value) {
    testbed()
        .kubectl(&["create", "--dry-run=server", "-f", "-"])
        .stdin(obj.to_string())
        .succeeds();
}

/// Each case: what is broken, the object, and the fragments the API server's
/// message must contain (the field path first).
fn cases() -> Vec<(&'static str, Value, Vec<&'static str>)> {
    let p = || pool("invalid-pool");
    let b = || batch("invalid-batch", "invalid-pool");
    let nccl = json!({"spec": {"containers": [{"name": "nccl", "image": "nccl"}]}});
    vec![
        (
            "a maintenance window that never opens",
            set(
                p(),
                "spec/windows",
                json!([{"days": ["Mon"], "start": "08:00", "duration": "0s"}]),
            ),
            vec!["spec.windows[0].duration", "more than 0"],
        ),
        (
            "a maintenance window on no day",
            set(
                p(),
                "spec/windows",
                json!([{"days": [], "start": "08:00", "duration": "8h"}]),
            ),
            vec!["spec.windows[0].days"],
        ),
        (
            "a maintenance window at 25:00",
            set(
                p(),
                "spec/windows",
                json!([{"days": ["Mon"], "start": "25:00", "duration": "8h"}]),
            ),
            vec!["spec.windows[0].start"],
        ),
        (
            "a negative power budget",
            set(p(), "spec/power", json!({"budgetKilowatts": -10})),
            vec!["spec.power.budgetKilowatts", "greater than or equal to 1"],
        ),
        (
            "an absurd power budget (10 TW)",
            set(
                p(),
                "spec/power",
                json!({"budgetKilowatts": 10_000_000_000u64}),
            ),
            vec!["spec.power.budgetKilowatts", "less than or equal to 2"],
        ),
        (
            "a product drawing no power",
            set(
                p(),
                "spec/power",
                json!({"budgetKilowatts": 10000, "productWatts": {"NVIDIA-GB300": 0}}),
            ),
            vec![
                "spec.power.productWatts.NVIDIA-GB300",
                "greater than or equal to 1",
            ],
        ),
        (
            "a rack test with both providers",
            set(
                p(),
                "spec/healthChecks/domainTest",
                json!({"template": nccl, "nvcre": {}}),
            ),
            vec![
                "spec.healthChecks.domainTest.template",
                "set exactly one provider",
            ],
        ),
        (
            "a rack test with no provider",
            set(p(), "spec/healthChecks/domainTest", json!({"maxRounds": 3})),
            vec![
                "spec.healthChecks.domainTest.template",
                "set exactly one provider",
            ],
        ),
        (
            "an NVCRE variant that is no name",
            set(
                p(),
                "spec/healthChecks/domainTest",
                json!({"nvcre": {"variant": "NCCL All Reduce"}}),
            ),
            vec!["spec.healthChecks.domainTest.nvcre.variant"],
        ),
        (
            "nodes targets that do not increase",
            set(
                b(),
                "spec/waves",
                json!([{"nodes": 36}, {"nodes": 18}, {"percent": 100}]),
            ),
            vec!["spec.waves", "nodes targets must increase"],
        ),
        (
            "equal nodes targets",
            set(b(), "spec/waves", json!([{"nodes": 18}, {"nodes": 18}])),
            vec!["spec.waves", "nodes targets must increase"],
        ),
        (
            "percent targets that do not increase",
            set(b(), "spec/waves", json!([{"percent": 50}, {"percent": 25}])),
            vec!["spec.waves", "percent targets must increase"],
        ),
        (
            "a nodes target after a percent target",
            set(b(), "spec/waves", json!([{"percent": 10}, {"nodes": 500}])),
            vec![
                "spec.waves",
                "a nodes target may not follow a percent target",
            ],
        ),
        (
            "a percent over 100",
            set(b(), "spec/waves/2", json!({"percent": 101})),
            vec!["spec.waves[2].percent", "less than or equal to 100"],
        ),
        (
            "a percent under 1",
            set(b(), "spec/waves/1", json!({"percent": 0})),
            vec!["spec.waves[1].percent", "greater than or equal to 1"],
        ),
        (
            "a wave with both nodes and percent",
            set(b(), "spec/waves/0", json!({"nodes": 18, "percent": 10})),
            vec![
                "spec.waves[0]",
                "a wave sets exactly one of nodes or percent",
            ],
        ),
        (
            "a wave with neither nodes nor percent",
            set(b(), "spec/waves/0", json!({})),
            vec![
                "spec.waves[0]",
                "a wave sets exactly one of nodes or percent",
            ],
        ),
        (
            "no waves",
            set(b(), "spec/waves", json!([])),
            vec!["spec.waves", "should have at least 1 items"],
        ),
        (
            "gpusPerNode < 1",
            set(p(), "spec/hardware/gpusPerNode", json!(0)),
            vec!["spec.hardware.gpusPerNode", "greater than or equal to 1"],
        ),
        (
            "nodesPerDomain < 1",
            set(p(), "spec/topology/nodesPerDomain", json!(0)),
            vec!["spec.topology.nodesPerDomain", "greater than or equal to 1"],
        ),
        (
            "minHealthyNodesPerDomain > nodesPerDomain",
            set(p(), "spec/topology/minHealthyNodesPerDomain", json!(19)),
            vec![
                "spec.topology.minHealthyNodesPerDomain",
                "must not exceed nodesPerDomain",
            ],
        ),
        (
            "maxConcurrent < 1",
            set(b(), "spec/maxConcurrent", json!(0)),
            vec!["spec.maxConcurrent", "greater than or equal to 1"],
        ),
        (
            "an empty poolRef",
            set(b(), "spec/poolRef", json!("")),
            vec!["spec.poolRef", "at least 1 chars long"],
        ),
        (
            "a malformed maxFailuresPerWave percent",
            set(b(), "spec/maxFailuresPerWave", json!("5 percent")),
            vec!["spec.maxFailuresPerWave", "should match"],
        ),
        (
            "a maxFailuresPerWave percent over 100",
            set(b(), "spec/maxFailuresPerWave", json!("150%")),
            vec!["spec.maxFailuresPerWave", "should match"],
        ),
        (
            "a negative maxFailuresPerWave",
            set(b(), "spec/maxFailuresPerWave", json!(-1)),
            vec!["spec.maxFailuresPerWave", "greater than or equal to 0"],
        ),
        (
            "a minDriverVersion that is a word",
            set(p(), "spec/hardware/minDriverVersion", json!("latest")),
            vec!["spec.hardware.minDriverVersion", "should match"],
        ),
        (
            "a minDriverVersion without a dot",
            set(p(), "spec/hardware/minDriverVersion", json!("570")),
            vec!["spec.hardware.minDriverVersion", "should match"],
        ),
        (
            "a probe timeoutSeconds of 0",
            set(p(), "spec/healthChecks/probe/timeoutSeconds", json!(0)),
            vec![
                "spec.healthChecks.probe.timeoutSeconds",
                "greater than or equal to 1",
            ],
        ),
        (
            "a probe template without containers",
            set(
                p(),
                "spec/healthChecks/probe/template/spec/containers",
                json!([]),
            ),
            vec![
                "spec.healthChecks.probe.template.spec.containers",
                "at least 1 items",
            ],
        ),
        (
            "a taint effect that is not a taint effect",
            set(p(), "spec/onboarding/taint/effect", json!("NoEvict")),
            vec![
                "spec.onboarding.taint.effect",
                "Unsupported value: \"NoEvict\"",
            ],
        ),
        (
            // The API server refuses such a taint on a node: refused here,
            // it never reaches a node patch that would loop.
            "a taint value the API refuses on a node",
            set(p(), "spec/onboarding/taint/value", json!("needs burn-in")),
            vec!["spec.onboarding.taint.value", "should match"],
        ),
        (
            "a probe start timeout under 10 seconds",
            set(p(), "spec/healthChecks/probe/startTimeoutSeconds", json!(0)),
            vec![
                "spec.healthChecks.probe.startTimeoutSeconds",
                "greater than or equal to 10",
            ],
        ),
        (
            "a circuit breaker percent over 100",
            set(p(), "spec/circuitBreaker/maxFailedPercent", json!(101)),
            vec![
                "spec.circuitBreaker.maxFailedPercent",
                "less than or equal to 100",
            ],
        ),
        (
            "a circuit breaker window that is not a duration",
            set(p(), "spec/circuitBreaker/window", json!("1 hour")),
            vec!["spec.circuitBreaker.window", "should match"],
        ),
        (
            "no accepted GPU product",
            set(p(), "spec/hardware/gpuProduct", json!([])),
            vec!["spec.hardware.gpuProduct", "at least 1 items"],
        ),
        (
            "a probe template that names its ServiceAccount",
            set(
                p(),
                "spec/healthChecks/probe/template/spec/serviceAccountName",
                json!("gpufleet"),
            ),
            vec![
                "spec.healthChecks.probe.template.spec",
                "probe pods run as gpufleet's probe ServiceAccount",
            ],
        ),
        (
            "a probe template that names its ServiceAccount by the old field",
            set(
                p(),
                "spec/healthChecks/probe/template/spec/serviceAccount",
                json!("gpufleet"),
            ),
            vec![
                "spec.healthChecks.probe.template.spec",
                "probe pods run as gpufleet's probe ServiceAccount",
            ],
        ),
        (
            "a probe template that asks for a token itself",
            set(
                p(),
                "spec/healthChecks/probe/template/spec/automountServiceAccountToken",
                json!(true),
            ),
            vec![
                "spec.healthChecks.probe.template.spec",
                "set healthChecks.probe.serviceAccountToken instead",
            ],
        ),
        (
            "a probe template that mounts a projected token without opting in",
            set(
                p(),
                "spec/healthChecks/probe/template/spec/volumes",
                projected_token(),
            ),
            vec![
                "spec.healthChecks.probe.template.spec.volumes",
                "a projected serviceAccountToken volume mounts an API token",
            ],
        ),
    ]
}

/// Volumes of a pod: one with a projected ServiceAccount token beside a
/// ConfigMap.
fn projected_token() -> Value {
    json!([{"name": "api", "projected": {"sources": [
        {"configMap": {"name": "ca"}},
        {"serviceAccountToken": {"path": "token", "expirationSeconds": 600}}
    ]}}])
}

#[test]
fn the_valid_bases_are_accepted() {
    accepted(&pool("invalid-pool"));
    // A probe that calls the API asks for its token here, and may then
    // mount it as it likes.
    let with_token = set(
        pool("invalid-pool"),
        "spec/healthChecks/probe/serviceAccountToken",
        json!(true),
    );
    accepted(&with_token);
    accepted(&set(
        with_token,
        "spec/healthChecks/probe/template/spec/volumes",
        projected_token(),
    ));
    // Projected volumes without a token need no opt-in.
    accepted(&set(
        pool("invalid-pool"),
        "spec/healthChecks/probe/template/spec/volumes",
        json!([{"name": "cfg", "projected": {"sources": [{"configMap": {"name": "ca"}}]}},
               {"name": "scratch", "emptyDir": {}}]),
    ));
    accepted(&batch("invalid-batch", "invalid-pool"));
    // Percents and counts both work as failure budgets, and 0% is allowed.
    for budget in [json!(0), json!(3), json!("0%"), json!("5%"), json!("100%")] {
        accepted(&set(
            batch("invalid-batch", "invalid-pool"),
            "spec/maxFailuresPerWave",
            budget,
        ));
    }
}

#[test]
fn invalid_objects_are_rejected_naming_the_field() {
    let mut failures = Vec::new();
    for (what, obj, fragments) in cases() {
        let message = rejected(&obj);
        let missing: Vec<_> = fragments
            .iter()
            .filter(|f| !message.contains(**f))
            .collect();
        if !missing.is_empty() {
            failures.push(format!(
                "{what}: message lacks {missing:?}:\n  {}",
                message.trim()
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} case(s) wrong:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn pool_ref_is_immutable() {
    let tb = testbed();
    let original = batch("immutable-batch", "immutable-pool-a");
    tb.kubectl(&["apply", "-f", "-"])
        .stdin(original.to_string())
        .succeeds();
    let moved = set(original.clone(), "spec/poolRef", json!("immutable-pool-b"));
    let ran = tb
        .kubectl(&["apply", "-f", "-"])
        .stdin(moved.to_string())
        .fails();
    assert!(
        ran.stderr.contains("spec.poolRef") && ran.stderr.contains("poolRef is immutable"),
        "{}",
        ran.stderr
    );
    // Other fields stay editable: this is how GitOps promotes a wave.
    let promoted = set(original, "spec/approvedWaves", json!(3));
    tb.kubectl(&["apply", "-f", "-"])
        .stdin(promoted.to_string())
        .succeeds();
}
