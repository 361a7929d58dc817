//! The operator against the real control plane: `gpufleet run` processes
//! rolling out kwok nodes, one scenario per test (see `support::scenario`).

use std::time::{Duration, Instant};

use crate::support::scenario::Scenario;

const ROLLOUT: Duration = Duration::from_secs(120);

/// 1. A healthy rollout of three domains in three waves: every node ready,
///    taints gone, probes gone, at most three node writes per node.
#[test]
fn a_healthy_fleet_rolls_out_in_waves() {
    let mut s = Scenario::new("ro-happy");
    let batch = "ro-happy-b";
    let nodes = s.fleet(batch, 3, 18);
    s.create_nodes(&nodes);
    s.apply(&s.pool_yaml(""));
    s.start_operator();
    let start = Instant::now();
    s.apply(&s.batch_yaml(batch, ""));
    s.wait_ready(batch, ROLLOUT);
    let wall = start.elapsed();

    let seen = s.seen();
    assert_eq!(seen.len(), 54);
    for (name, node) in &seen {
        assert_eq!(node.state.as_deref(), Some("ready"), "{name}: {node:?}");
        assert!(!node.tainted, "{name} kept the onboarding taint");
    }
    // Waves: one domain, then half (rounded up to whole domains), then the rest.
    let wave_of = |d: usize| seen[&format!("ro-happy-d{d}-n00")].wave.clone();
    assert_eq!(
        [wave_of(0), wave_of(1), wave_of(2)],
        [Some("1".into()), Some("2".into()), Some("3".into())]
    );
    let status = s.batch(batch).status.expect("status");
    assert_eq!(status.wave_progress.as_deref(), Some("3/3"));
    assert_eq!(
        status
            .waves
            .iter()
            .map(|w| w.target_nodes)
            .collect::<Vec<_>>(),
        [18, 36, 54]
    );
    assert!(status.waves.iter().all(|w| w.completed_at.is_some()));
    s.wait_until(
        "probe pods are deleted once read",
        Duration::from_secs(10),
        |s| s.probe_pods().is_empty(),
    );
    // The pool reports the capacity online.
    s.wait_until(
        "the pool counts 216 GPUs ready",
        Duration::from_secs(10),
        |s| {
            s.pool()
                .status
                .is_some_and(|st| st.gpus.ready == 216 && st.domains.complete == 3)
        },
    );

    if let Some(writes) = s.node_writes() {
        let total: u32 = writes.values().sum();
        let max = writes.values().copied().max().unwrap_or(0);
        println!(
            "ro-happy: {} nodes, {total} node writes ({:.2} per admitted node, max {max}); wall {:.1}s for 3 waves with 0.5 s probes and 1 s soaks",
            seen.len(),
            f64::from(total) / seen.len() as f64,
            wall.as_secs_f64()
        );
        assert!(max <= 3, "a node took {max} writes: {writes:?}");
        assert_eq!(writes.len(), 54, "every node was written");
    }
}

/// 2. A node whose probe fails in wave 2 (budget 1): failed with the probe's
///    message, keeps its taint; its domain (17 of 18 healthy, 16 needed) is
///    admitted; the rollout completes.
#[test]
fn a_failed_probe_fails_its_node_and_the_rollout_goes_on() {
    let mut s = Scenario::new("ro-probe");
    let batch = "ro-probe-b";
    let mut nodes = s.fleet(batch, 3, 18);
    let bad = "ro-probe-d1-n05";
    nodes
        .iter_mut()
        .find(|n| n.name == bad)
        .unwrap()
        .probe_failure = Some("dcgmi diag: NVLink CRC errors on GPU 2\nlevel 3 failed".into());
    s.create_nodes(&nodes);
    s.apply(&s.pool_yaml(""));
    s.start_operator();
    s.apply(&s.batch_yaml(batch, "spec: {maxFailuresPerWave: 1}"));
    s.wait_ready(batch, ROLLOUT);
    let seen = s.seen();
    let node = &seen[bad];
    assert_eq!(node.state.as_deref(), Some("failed"));
    assert_eq!(
        node.reason.as_deref(),
        Some("probe failed (exit 1): dcgmi diag: NVLink CRC errors on GPU 2 / level 3 failed")
    );
    assert!(node.tainted, "a failed node keeps its taint");
    assert_eq!(s.count("ready"), 53);
    assert_eq!(seen[bad].wave.as_deref(), Some("2"));
}

/// 3. Two failures in a wave with a budget of one halt the batch; raising the
///    budget resumes it.
#[test]
fn too_many_failures_halt_the_batch_until_the_budget_is_raised() {
    let mut s = Scenario::new("ro-budget");
    let batch = "ro-budget-b";
    let mut nodes = s.fleet(batch, 3, 18);
    for bad in ["ro-budget-d1-n01", "ro-budget-d1-n02"] {
        nodes
            .iter_mut()
            .find(|n| n.name == bad)
            .unwrap()
            .probe_failure = Some("ECC errors".into());
    }
    s.create_nodes(&nodes);
    s.apply(&s.pool_yaml(""));
    s.start_operator();
    s.apply(&s.batch_yaml(batch, "spec: {maxFailuresPerWave: 1}"));
    s.wait_until("the batch stalls", ROLLOUT, |s| {
        s.condition(batch, "Stalled")
            .is_some_and(|(status, _, _)| status == "True")
    });
    let (_, reason, message) = s.condition(batch, "Stalled").unwrap();
    assert_eq!(reason, "FailureBudgetExceeded");
    assert!(
        message.contains("ro-budget-d1-n01") && message.contains("ro-budget-d1-n02"),
        "{message}"
    );
    // Nothing of wave 3 starts while halted.
    std::thread::sleep(Duration::from_secs(3));
    let seen = s.seen();
    assert!(
        seen.iter()
            .filter(|(n, _)| n.starts_with("ro-budget-d2"))
            .all(|(_, node)| node.state.is_none()),
        "wave 3 started while halted: {seen:?}"
    );
    assert_eq!(s.condition(batch, "Ready").unwrap().0, "False");
    // A person raises the budget; the rollout resumes.
    s.apply(&s.batch_yaml(batch, "spec: {maxFailuresPerWave: 2}"));
    s.wait_ready(batch, ROLLOUT);
    assert_eq!(s.count("ready"), 52);
    assert_eq!(s.count("failed"), 2);
    assert_eq!(s.condition(batch, "Stalled").unwrap().0, "False");
}

/// 4. `approvedWaves: 1` stops after wave 1; raising it with `kubectl apply`
///    (the GitOps path) finishes the rollout.
#[test]
fn approved_waves_gate_promotion_through_kubectl_apply() {
    let mut s = Scenario::new("ro-approve");
    let batch = "ro-approve-b";
    s.create_nodes(&s.fleet(batch, 3, 18));
    s.apply(&s.pool_yaml(""));
    s.start_operator();
    s.apply(&s.batch_yaml(batch, "spec: {approvedWaves: 1}"));
    s.wait_until(
        "wave 1 is admitted and wave 2 waits for approval",
        ROLLOUT,
        |s| {
            s.condition(batch, "Ready")
                .is_some_and(|(_, reason, _)| reason == "WaitingForApproval")
        },
    );
    assert_eq!(s.count("ready"), 18);
    let (_, _, message) = s.condition(batch, "Ready").unwrap();
    assert!(
        message.contains("wave 2 of 3 waits for approval"),
        "{message}"
    );
    s.apply(&s.batch_yaml(batch, "spec: {approvedWaves: 3}"));
    s.wait_ready(batch, ROLLOUT);
    assert_eq!(s.count("ready"), 54);
}

/// 5. SIGKILL mid-wave and a restart: the same final state, no duplicate
///    probes, no node without its taint before its verdict.
#[test]
fn the_operator_survives_being_killed_mid_wave() {
    let mut s = Scenario::new("ro-kill");
    let batch = "ro-kill-b";
    s.create_nodes(&s.fleet(batch, 3, 18));
    // Longer probes and soak so the kill lands mid-wave.
    s.apply(&s.pool_yaml("spec: {healthChecks: {soakSeconds: 3}}"));
    s.start_operator();
    s.apply(&s.batch_yaml(batch, ""));
    s.wait_until("wave 2 is in flight", ROLLOUT, |s| {
        s.seen()
            .values()
            .any(|n| n.wave.as_deref() == Some("2") && n.state.as_deref() == Some("validating"))
    });
    s.kill_operator();
    // While no operator runs, every node between start and verdict keeps its taint.
    let check_taints = |s: &Scenario| {
        for (name, node) in s.seen() {
            if matches!(
                node.state.as_deref(),
                Some("validating" | "soaking" | "held")
            ) {
                assert!(node.tainted, "{name} is {:?} without its taint", node.state);
            }
        }
    };
    check_taints(&s);
    std::thread::sleep(Duration::from_secs(2));
    s.start_operator();
    let start = Instant::now();
    while start.elapsed() < ROLLOUT {
        check_taints(&s);
        if s.condition(batch, "Ready")
            .is_some_and(|(status, _, _)| status == "True")
        {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    s.wait_ready(batch, Duration::from_secs(1));
    assert_eq!(s.count("ready"), 54);
    if let Some(creates) = s.probe_creates() {
        let twice: Vec<_> = creates.iter().filter(|(_, n)| **n > 1).collect();
        assert!(twice.is_empty(), "probe pods created twice: {twice:?}");
        if creates.len() != 54 {
            let text = s.audit_text().unwrap_or_default();
            let missing: Vec<String> = s
                .seen()
                .keys()
                .map(|n| format!("gpufleet-probe-{n}-1"))
                .filter(|p| !creates.contains_key(p))
                .collect();
            let lines: Vec<&str> = text
                .lines()
                .filter(|l| missing.iter().any(|m| l.contains(m.as_str())))
                .collect();
            panic!(
                "one probe per node: {} created; no create for {missing:?}; the audit log on them:\n{}",
                creates.len(),
                lines.join("\n")
            );
        }
    }
    if let Some(writes) = s.node_writes() {
        let max = writes.values().copied().max().unwrap_or(0);
        assert!(
            max <= 3,
            "a node was written {max} times across the restart: {writes:?}"
        );
    }
}

/// 6. A node with a wrong GPU count, one with GpuXidError=True and one that
///    someone else cordoned are not admitted, each with the right reason.
#[test]
fn unhealthy_nodes_are_not_admitted() {
    let mut s = Scenario::new("ro-faults");
    let batch = "ro-faults-b";
    let mut nodes = s.fleet(batch, 1, 18);
    nodes[3].gpus = 3;
    s.create_nodes(&nodes);
    s.rt.block_on(gpufleet::simulate::set_condition(
        &s.client,
        "ro-faults-d0-n07",
        "GpuXidError",
        "True",
        "Xid79",
    ))
    .expect("setting the XID condition");
    crate::support::testbed()
        .kubectl(&["cordon", "ro-faults-d0-n11"])
        .succeeds();
    s.apply(&s.pool_yaml("spec: {topology: {minHealthyNodesPerDomain: 15}}"));
    s.start_operator();
    s.apply(&s.batch_yaml(
        batch,
        "spec: {waves: [{percent: 100}], maxFailuresPerWave: 3}",
    ));
    s.wait_ready(batch, ROLLOUT);
    let seen = s.seen();
    let reason = |n: &str| seen[n].reason.clone().unwrap_or_default();
    assert_eq!(seen["ro-faults-d0-n03"].state.as_deref(), Some("failed"));
    assert!(
        reason("ro-faults-d0-n03").contains("nvidia.com/gpu.count is 3, pool expects 4"),
        "{}",
        reason("ro-faults-d0-n03")
    );
    assert_eq!(seen["ro-faults-d0-n07"].state.as_deref(), Some("failed"));
    assert_eq!(reason("ro-faults-d0-n07"), "condition GpuXidError is True");
    assert_eq!(seen["ro-faults-d0-n11"].state.as_deref(), Some("failed"));
    assert!(
        reason("ro-faults-d0-n11").contains("cordoned"),
        "{}",
        reason("ro-faults-d0-n11")
    );
    assert_eq!(s.count("ready"), 15);
    // The cordon is someone else's: gpufleet leaves it.
    let cordoned = crate::support::testbed()
        .kubectl(&[
            "get",
            "node",
            "ro-faults-d0-n11",
            "-o",
            "jsonpath={.spec.unschedulable}",
        ])
        .succeeds();
    assert_eq!(cordoned.stdout.trim(), "true");
}

/// 7. Deleting a batch mid-rollout: its probes go, ready nodes stay ready,
///    nodes in progress keep the taint and lose the state label.
#[test]
fn deleting_a_batch_leaves_its_nodes_safe() {
    let mut s = Scenario::new("ro-delete");
    let batch = "ro-delete-b";
    s.create_nodes(&s.fleet(batch, 2, 18));
    // Wave 1 alone, with a short soak, is admitted; then a long soak keeps
    // wave 2 in flight. Wave 2 is approved only once the operator has seen
    // the long soak (the pool's observedGeneration), so no timing decides
    // whether wave 2 finishes before the batch is deleted.
    s.apply(&s.pool_yaml("spec: {healthChecks: {soakSeconds: 1}}"));
    s.start_operator();
    let waves = "spec: {waves: [{nodes: 18}, {percent: 100}], approvedWaves: 1}";
    s.apply(&s.batch_yaml(batch, waves));
    s.wait_until("wave 1 is admitted", ROLLOUT, |s| s.count("ready") == 18);
    s.apply(&s.pool_yaml("spec: {healthChecks: {soakSeconds: 600}}"));
    s.wait_until("the operator sees the long soak", ROLLOUT, |s| {
        let pool = s.pool();
        pool.metadata.generation.is_some()
            && pool.status.and_then(|st| st.observed_generation) == pool.metadata.generation
    });
    let waves = "spec: {waves: [{nodes: 18}, {percent: 100}], approvedWaves: 2}";
    s.apply(&s.batch_yaml(batch, waves));
    s.wait_until("wave 2 is in flight", ROLLOUT, |s| {
        s.count("validating") + s.count("soaking") > 0
    });
    crate::support::testbed()
        .kubectl(&[
            "delete",
            "rolloutbatch",
            batch,
            "--wait=true",
            "--timeout=60s",
        ])
        .succeeds();
    let seen = s.seen();
    let ready = seen
        .values()
        .filter(|n| n.state.as_deref() == Some("ready"))
        .count();
    assert_eq!(ready, 18, "ready nodes stay ready");
    for (name, node) in seen.iter().filter(|(n, _)| n.starts_with("ro-delete-d1")) {
        assert_eq!(node.state, None, "{name} keeps a gpufleet state");
        if node.wave.is_some() {
            panic!("{name} keeps its rollout annotations: {node:?}");
        }
    }
    // Wave 2 started all 18 at once (maxConcurrent 18): all keep the taint.
    assert!(
        seen.iter()
            .filter(|(n, _)| n.starts_with("ro-delete-d1"))
            .all(|(_, n)| n.tainted),
        "{seen:?}"
    );
    s.wait_until("no probe pods are left", Duration::from_secs(20), |s| {
        s.probe_pods().is_empty()
    });
}

/// Issue 13, scenario 1: a probe of two containers, a quick inventory beside
/// a long burn-in. The inventory ends (exit 0) while the burn-in still runs:
/// the node stays validating and its probe pod is left running; only once
/// the pod Succeeded with both containers 0 is the node admitted.
#[test]
fn a_probe_with_one_container_done_and_one_running_is_not_a_pass() {
    let name = "ro-twoc";
    let mut s = Scenario::with_probe_delay(
        name,
        &crate::support::testbed().kubeconfig,
        Duration::from_secs(15),
    );
    let batch = "ro-twoc-b";
    let nodes = s.fleet(batch, 1, 2);
    s.create_nodes(&nodes);
    s.apply(&s.pool_yaml(
        "spec: {topology: {nodesPerDomain: 2, minHealthyNodesPerDomain: 2}, healthChecks: {probe: {timeoutSeconds: 90, template: {spec: {containers: [{name: inventory, image: cuda}, {name: burn-in, image: dcgm}]}}}}}",
    ));
    s.start_operator();
    s.apply(&s.batch_yaml(batch, "spec: {waves: [{percent: 100}], maxConcurrent: 2}"));
    s.wait_until("both probe pods run", Duration::from_secs(30), |s| {
        let pods = s.probe_pods();
        pods.len() == 2
            && pods
                .iter()
                .all(|p| p.status.as_ref().and_then(|st| st.phase.as_deref()) == Some("Running"))
    });
    // The inventory ends at once; the burn-in runs on.
    let status = r#"{"status": {"phase": "Running", "containerStatuses": [
        {"name": "inventory", "image": "cuda", "imageID": "", "ready": false, "restartCount": 0,
         "state": {"terminated": {"exitCode": 0, "reason": "Completed"}}},
        {"name": "burn-in", "image": "dcgm", "imageID": "", "ready": true, "restartCount": 0,
         "state": {"running": {"startedAt": "2026-01-01T00:00:00Z"}}}]}}"#;
    for pod in s.probe_pods() {
        let pod = pod.metadata.name.unwrap();
        s.kubectl(&[
            "-n",
            name,
            "patch",
            "pod",
            &pod,
            "--subresource=status",
            "--type=merge",
            "-p",
            status,
        ])
        .succeeds();
    }
    // Several reconciles (the operator looks every 5 s while probes run,
    // and at once on each pod change): nothing moves on.
    let until = Instant::now() + Duration::from_secs(7);
    while Instant::now() < until {
        assert_eq!(
            s.count("validating"),
            2,
            "a node left validating on its inventory alone: {:?}",
            s.by_state()
        );
        assert_eq!(s.probe_pods().len(), 2, "a running burn-in was deleted");
        std::thread::sleep(Duration::from_millis(250));
    }
    // The burn-in ends well (the stand-in ends the pod: Succeeded, every
    // container 0): now the nodes are admitted.
    s.wait_ready(batch, ROLLOUT);
    assert_eq!(s.count("ready"), 2);
}

/// Two batches of one pool share the pool's cap on nodes in validation,
/// though each batch alone would allow three times as many.
#[test]
fn two_batches_of_a_pool_share_the_pools_cap() {
    let name = "ro-poolcap";
    let mut s = Scenario::with_probe_delay(
        name,
        &crate::support::testbed().kubeconfig,
        Duration::from_secs(3),
    );
    let (a, b) = ("ro-poolcap-a", "ro-poolcap-b");
    let mut nodes = s.fleet(a, 1, 18);
    nodes.extend((0..18).map(|n| {
        let node =
            gpufleet::simulate::SimNode::gb200(format!("{name}-e0-n{n:02}"), format!("{name}-c9"));
        s.labelled(node, b)
    }));
    s.create_nodes(&nodes);
    s.apply(&s.pool_yaml("spec: {maxConcurrent: 6}"));
    s.start_operator();
    for batch in [a, b] {
        s.apply(&s.batch_yaml(batch, "spec: {waves: [{percent: 100}], maxConcurrent: 18}"));
    }
    let mut peak = 0;
    s.wait_until("both batches are admitted", ROLLOUT * 2, |s| {
        peak = peak.max(s.count("validating"));
        s.count("ready") == 36
    });
    assert!(
        (1..=6).contains(&peak),
        "{peak} nodes validated at once; the pool allows 6"
    );
}

/// Two batches of one pool share the pool's power budget: each alone (a
/// rack of 4 GB200 trays, 29.2 kW under test) fits the 44 kW budget;
/// together (58.4 kW) they do not, so at most six trays (43.8 kW) validate
/// at once and the batch held back says it waits for power.
#[test]
fn two_batches_of_a_pool_share_the_power_budget() {
    let name = "ro-power";
    let mut s = Scenario::with_probe_delay(
        name,
        &crate::support::testbed().kubeconfig,
        Duration::from_secs(3),
    );
    let (a, b) = ("ro-power-a", "ro-power-b");
    let mut nodes = s.fleet(a, 1, 4);
    nodes.extend((0..4).map(|n| {
        let node =
            gpufleet::simulate::SimNode::gb200(format!("{name}-e0-n{n:02}"), format!("{name}-c9"));
        s.labelled(node, b)
    }));
    s.create_nodes(&nodes);
    s.apply(&s.pool_yaml(
        "spec: {topology: {nodesPerDomain: 4, minHealthyNodesPerDomain: 4}, power: {budgetKilowatts: 44}}",
    ));
    s.start_operator();
    for batch in [a, b] {
        s.apply(&s.batch_yaml(batch, "spec: {waves: [{percent: 100}], maxConcurrent: 18}"));
    }
    let mut peak = 0;
    let mut said = None;
    s.wait_until("both batches are admitted", ROLLOUT * 2, |s| {
        peak = peak.max(s.count("validating"));
        for batch in [a, b] {
            if let Some((_, reason, message)) = s.condition(batch, "Ready")
                && reason == "WaitingForPower"
            {
                said = Some(message);
            }
        }
        s.count("ready") == 8
    });
    assert!(
        (5..=6).contains(&peak),
        "{peak} trays validated at once; the budget allows 6 (each batch alone 4)"
    );
    let said = said.expect("a batch said it waits for power");
    assert!(
        said.contains("waits for power: power budget: ") && said.contains(" of 44 kW in use"),
        "{said}"
    );
}

/// A maintenance window in a time zone that does not exist passes the
/// CRD (any name up to 64 characters) but cannot be read: the batch halts
/// with a condition naming the field, and no node starts.
#[test]
fn a_window_in_an_unknown_time_zone_halts_naming_the_field() {
    let name = "ro-tz";
    let mut s = Scenario::new(name);
    let batch = "ro-tz-b";
    s.create_nodes(&s.fleet(batch, 1, 4));
    s.apply(&s.pool_yaml(
        "spec: {topology: {nodesPerDomain: 4, minHealthyNodesPerDomain: 4}, windows: [{days: [Mon, Tue, Wed, Thu, Fri, Sat, Sun], start: \"00:00\", duration: 168h, timeZone: Mars/Olympus}]}",
    ));
    s.start_operator();
    s.apply(&s.batch_yaml(batch, "spec: {waves: [{percent: 100}]}"));
    let mut said = String::new();
    s.wait_until("the batch halts naming the field", ROLLOUT, |s| {
        match s.condition(batch, "Stalled") {
            Some((status, reason, message)) if status == "True" && reason == "InvalidSpec" => {
                said = message;
                true
            }
            _ => false,
        }
    });
    assert!(
        said.contains("spec.windows[0].timeZone: unknown time zone \"Mars/Olympus\""),
        "{said}"
    );
    assert_eq!(s.count("validating"), 0, "{:?}", s.by_state());
    assert_eq!(s.count("ready"), 0, "{:?}", s.by_state());
}

/// A new rack's nodes register before GPU Feature Discovery labels them:
/// they wait in `pending` with a reason, spend no failure budget, and go on
/// once labelled; one never labelled fails when its startup grace ends.
#[test]
fn nodes_still_starting_wait_for_their_labels() {
    let name = "ro-boot";
    let mut s = Scenario::new(name);
    let batch = "ro-boot-b";
    s.create_nodes(&s.fleet(batch, 1, 4));
    let nodes: Vec<String> = (0..4).map(|n| format!("{name}-d0-n{n:02}")).collect();
    for node in &nodes {
        s.kubectl(&["label", "node", node, "nvidia.com/gpu.product-"])
            .succeeds();
    }
    s.apply(&s.pool_yaml(
        "spec: {topology: {nodesPerDomain: 4, minHealthyNodesPerDomain: 3}, healthChecks: {startupTimeoutSeconds: 40}}",
    ));
    s.start_operator();
    s.apply(&s.batch_yaml(
        batch,
        "spec: {waves: [{percent: 100}], maxFailuresPerWave: 1}",
    ));
    s.wait_until("the nodes say they wait", ROLLOUT, |s| {
        s.seen()
            .values()
            .filter(|n| {
                n.reason
                    .as_deref()
                    .is_some_and(|r| r.starts_with("waiting for the node to start"))
            })
            .count()
            == 4
    });
    assert_eq!(s.count("failed"), 0, "{:?}", s.by_state());
    // GFD comes up on three of them.
    for node in &nodes[..3] {
        s.kubectl(&["label", "node", node, "nvidia.com/gpu.product=NVIDIA-GB200"])
            .succeeds();
    }
    s.wait_until("three admitted, one failed", ROLLOUT, |s| {
        s.count("ready") == 3 && s.count("failed") == 1
    });
    let seen = s.seen();
    let failed = &seen[&nodes[3]];
    let reason = failed.reason.as_deref().unwrap_or_default();
    assert!(
        reason.starts_with("never became ready and labelled within 40s of registering"),
        "{reason}"
    );
}

/// Another controller's taint with the pool's own key and effect, there
/// before the rollout, stays after admission: gpufleet removes only the
/// taints it recorded adding.
#[test]
fn a_taint_gpufleet_did_not_add_survives_admission() {
    let name = "ro-foreign";
    let mut s = Scenario::new(name);
    let batch = "ro-foreign-b";
    s.create_nodes(&s.fleet(batch, 1, 4));
    let theirs = format!("{name}-d0-n00");
    s.kubectl(&[
        "taint",
        "node",
        &theirs,
        "gpufleet.io/onboarding=driver-upgrade:NoSchedule",
    ])
    .succeeds();
    s.apply(&s.pool_yaml("spec: {topology: {nodesPerDomain: 4, minHealthyNodesPerDomain: 4}}"));
    s.start_operator();
    s.apply(&s.batch_yaml(batch, "spec: {waves: [{percent: 100}]}"));
    s.wait_until("the domain is admitted", ROLLOUT, |s| s.count("ready") == 4);
    let seen = s.seen();
    assert!(
        seen[&theirs].tainted,
        "the other controller's taint was removed"
    );
    for n in 1..4 {
        let node = format!("{name}-d0-n{n:02}");
        assert!(!seen[&node].tainted, "{node} keeps gpufleet's taint");
    }
}

/// `kubectl label node X gpufleet.io/state=held` (or a kubelet's
/// `--node-labels`) on the nodes of a paused batch admits nothing: a state
/// the batch did not write sends the node back to pending.
#[test]
fn a_forged_state_label_admits_nothing() {
    let name = "ro-forge";
    let mut s = Scenario::new(name);
    let batch = "ro-forge-b";
    s.create_nodes(&s.fleet(batch, 1, 4));
    s.apply(&s.pool_yaml("spec: {topology: {nodesPerDomain: 4, minHealthyNodesPerDomain: 4}}"));
    s.start_operator();
    s.apply(&s.batch_yaml(batch, "spec: {waves: [{percent: 100}], paused: true}"));
    s.wait_until("the operator reports on the batch", ROLLOUT, |s| {
        s.condition(batch, "Ready").is_some()
    });
    for n in 0..4 {
        let node = format!("{name}-d0-n{n:02}");
        s.kubectl(&[
            "label",
            "node",
            &node,
            "gpufleet.io/state=held",
            "--overwrite",
        ])
        .succeeds();
    }
    s.wait_until("gpufleet sends them back to pending", ROLLOUT, |s| {
        let seen = s.seen();
        seen.values().all(|n| {
            n.state.is_none()
                && n.reason
                    .as_deref()
                    .is_some_and(|r| r.starts_with("its state label said held"))
        })
    });
    assert_eq!(s.count("ready"), 0, "{:?}", s.by_state());
}

/// Nodes moved to another pool and batch mid-rollout (soaking for the
/// first) are validated again by the second: their probes run anew, they
/// are not adopted as soaking. The first pool no longer selects them, so it
/// cannot release them first: the second batch must see the foreign state.
#[test]
fn nodes_moved_to_another_pool_are_validated_again() {
    let kubeconfig = &crate::support::testbed().kubeconfig;
    // Probes of 10 s: a node validating again is seen doing so.
    let delay = Duration::from_secs(10);
    let mut from = Scenario::with_probe_delay("ro-move", kubeconfig, delay);
    let mut to = Scenario::with_probe_delay("ro-move2", kubeconfig, delay);
    from.create_nodes(&from.fleet("ro-move-a", 1, 4));
    let topology = "topology: {nodesPerDomain: 4, minHealthyNodesPerDomain: 4}";
    from.apply(&from.pool_yaml(&format!(
        "spec: {{{topology}, healthChecks: {{soakSeconds: 600}}}}"
    )));
    from.start_operator();
    from.apply(&from.batch_yaml("ro-move-a", "spec: {waves: [{percent: 100}]}"));
    from.wait_until("the nodes soak for the first pool", ROLLOUT, |s| {
        s.count("soaking") == 4
    });
    from.kill_operator();
    // A short soak in the new pool: a node adopted as soaking would be
    // admitted within seconds.
    to.apply(&to.pool_yaml(&format!(
        "spec: {{{topology}, healthChecks: {{soakSeconds: 2}}}}"
    )));
    to.apply(&to.batch_yaml("ro-move2-b", "spec: {waves: [{percent: 100}]}"));
    for n in 0..4 {
        let node = format!("ro-move-d0-n{n:02}");
        from.kubectl(&[
            "label",
            "node",
            &node,
            "gpufleet.io/test=ro-move2",
            "gpufleet.io/pool=ro-move2",
            "gpufleet.io/batch=ro-move2-b",
            "--overwrite",
        ])
        .succeeds();
    }
    to.start_operator();
    to.wait_until("the second pool validates them", ROLLOUT, |s| {
        s.count("validating") == 4 || s.count("ready") > 0
    });
    assert_eq!(to.count("ready"), 0, "{:?}", to.by_state());
}

/// 5. A condition that goes bad for a moment during the soak fails nobody:
///    the node waits, says why, and is admitted once it has soaked again.
#[test]
fn a_condition_blip_during_the_soak_fails_nobody() {
    let name = "ro-blip";
    let mut s = Scenario::new(name);
    let batch = "ro-blip-b";
    s.create_nodes(&s.fleet(batch, 1, 4));
    let blip = format!("{name}-d0-n01");
    s.apply(&s.pool_yaml(
        "spec: {topology: {nodesPerDomain: 4, minHealthyNodesPerDomain: 4}, healthChecks: {unhealthyConditions: [{type: GpuXidError}, {type: NVLinkDown}], soakSeconds: 31}}",
    ));
    // 31 s: a soak of 30 s or less may keep its pass in the probe pod and
    // be admitted without a soaking label ever written (PASS_IN_POD).
    s.start_operator();
    s.apply(&s.batch_yaml(
        batch,
        "spec: {waves: [{percent: 100}], maxFailuresPerWave: 0}",
    ));
    s.wait_until("the nodes soak", ROLLOUT, |s| s.count("soaking") == 4);
    s.rt.block_on(gpufleet::simulate::set_condition(
        &s.client,
        &blip,
        "NVLinkDown",
        "True",
        "LinkFlap",
    ))
    .expect("setting NVLinkDown");
    s.wait_until("the node says it waits", ROLLOUT, |s| {
        s.seen()[&blip]
            .reason
            .as_deref()
            .is_some_and(|r| r.contains("condition NVLinkDown is True since"))
    });
    assert_eq!(s.count("failed"), 0, "{:?}", s.by_state());
    s.rt.block_on(gpufleet::simulate::set_condition(
        &s.client,
        &blip,
        "NVLinkDown",
        "False",
        "LinkUp",
    ))
    .expect("clearing NVLinkDown");
    s.wait_ready(batch, ROLLOUT);
    assert_eq!(s.count("ready"), 4, "{:?}", s.by_state());
    assert_eq!(s.count("failed"), 0);
}

/// #14 scenario 1: a node's kubelet may write any annotation on its node. A
/// `gpufleet.io/since` in the year 9999 used to overflow the time
/// arithmetic and panic the operator (every pool with it), again at every
/// restart; now the node's clock starts again and the rollout completes.
#[test]
fn a_since_in_the_year_9999_stops_nothing() {
    let name = "ro-9999";
    let mut s = Scenario::new(name);
    let batch = "ro-9999-b";
    s.create_nodes(&s.fleet(batch, 1, 4));
    s.apply(&s.pool_yaml(
        "spec: {topology: {nodesPerDomain: 4, minHealthyNodesPerDomain: 4}, circuitBreaker: {maxFailedPercent: 50, window: 200000000h}}",
    ));
    s.start_operator();
    s.apply(&s.batch_yaml(
        batch,
        "spec: {waves: [{percent: 100}], maxFailuresPerWave: 0}",
    ));
    s.wait_until("a node validates", ROLLOUT, |s| s.count("validating") > 0);
    let node = format!("{name}-d0-n00");
    s.kubectl(&[
        "annotate",
        "node",
        &node,
        "--overwrite",
        "gpufleet.io/since=9999-12-30T21:59:00Z",
    ])
    .succeeds();
    s.wait_ready(batch, ROLLOUT);
    assert_eq!(s.count("ready"), 4, "{:?}", s.by_state());
}

/// A probe pod the API server refuses (here Pod Security: the probe
/// namespace enforces `baseline`, the template asks for a privileged
/// container) starts no node and fails none: the batch says
/// `ProbeRejected` with the API server's words, another pool of the same
/// operator rolls out meanwhile, and once the namespace allows the pod the
/// rollout goes on by itself.
#[test]
fn probe_pods_the_api_server_refuses_start_no_node_and_fail_none() {
    let name = "ro-refused";
    let mut s = Scenario::new(name);
    s.kubectl(&[
        "label",
        "namespace",
        name,
        "--overwrite",
        "pod-security.kubernetes.io/enforce=baseline",
    ])
    .succeeds();
    let batch = "ro-refused-b";
    s.create_nodes(&s.fleet(batch, 1, 4));
    s.apply(&s.pool_yaml(
        "spec: {topology: {nodesPerDomain: 4, minHealthyNodesPerDomain: 4}, healthChecks: {probe: {template: {spec: {containers: [{name: burn-in, image: busybox, securityContext: {privileged: true}}]}}}}}",
    ));
    // Another pool of the same operator, whose probe the namespace allows.
    let other = format!("{name}-ok");
    let other_batch = format!("{other}-b");
    let nodes: Vec<_> = (0..4)
        .map(|n| {
            gpufleet::simulate::SimNode::gb200(format!("{other}-n{n}"), format!("{other}-c0"))
                .label(crate::support::scenario::TEST_LABEL, name)
                .label("gpufleet.io/pool", &other)
                .label("gpufleet.io/batch", &other_batch)
        })
        .collect();
    s.create_nodes(&nodes);
    // The scenario's pool and batch, renamed (merge_yaml writes JSON).
    let retarget = |yaml: String, extra: &str| crate::support::scenario::merge_yaml(&yaml, extra);
    s.apply(&retarget(
        s.pool_yaml("spec: {topology: {nodesPerDomain: 4, minHealthyNodesPerDomain: 4}}"),
        &format!(
            "{{metadata: {{name: {other}}}, spec: {{nodeSelector: {{matchLabels: {{gpufleet.io/pool: {other}}}}}}}}}"
        ),
    ));
    s.start_operator();
    s.apply(&s.batch_yaml(
        batch,
        "spec: {waves: [{percent: 100}], maxFailuresPerWave: 0}",
    ));
    s.apply(&s.batch_yaml(
        &other_batch,
        &format!("spec: {{poolRef: {other}, waves: [{{percent: 100}}]}}"),
    ));
    s.wait_until("the batch says ProbeRejected", ROLLOUT, |s| {
        s.condition(batch, "Stalled")
            .is_some_and(|(status, reason, _)| status == "True" && reason == "ProbeRejected")
    });
    let (_, _, message) = s.condition(batch, "Stalled").unwrap();
    assert!(
        message.contains("privileged") && message.contains("baseline"),
        "the API server's own words: {message}"
    );
    s.wait_ready(&other_batch, ROLLOUT);
    let seen = s.seen();
    for n in 0..4 {
        let node = &seen[&format!("{name}-d0-n{n:02}")];
        assert_eq!(node.state, None, "not started: {node:?}");
        assert!(!node.tainted, "not tainted: {node:?}");
    }
    assert!(s.operator_alive(), "the operator keeps running");
    // The namespace now allows the probe: the rollout goes on by itself.
    s.kubectl(&[
        "label",
        "namespace",
        name,
        "--overwrite",
        "pod-security.kubernetes.io/enforce=privileged",
    ])
    .succeeds();
    s.wait_ready(batch, ROLLOUT);
    assert_eq!(s.count("ready"), 8, "{:?}", s.by_state());
    assert_eq!(s.count("failed"), 0, "{:?}", s.by_state());
}

/// Probe pods that never start (here kept Pending) are no verdict on
/// their nodes: each run is made again, nothing fails, and at the pool's
/// `notStartedLimit` the batch halts with `ProbesNotRunning`. Fixing the
/// template lets the rollout finish.
#[test]
fn probes_that_never_start_fail_no_node_and_halt_the_batch() {
    let name = "ro-unstarted";
    let mut s = Scenario::new(name);
    let batch = "ro-unstarted-b";
    s.create_nodes(&s.fleet(batch, 1, 4));
    let pending = "spec: {topology: {nodesPerDomain: 4, minHealthyNodesPerDomain: 4}, healthChecks: {probe: {startTimeoutSeconds: 10, notStartedLimit: 2, template: {metadata: {annotations: {gpufleet.io/probe-result: pending}}}}}}";
    s.apply(&s.pool_yaml(pending));
    s.start_operator();
    s.apply(&s.batch_yaml(
        batch,
        "spec: {waves: [{percent: 100}], maxConcurrent: 2, maxFailuresPerWave: 0}",
    ));
    s.wait_until("the batch says ProbesNotRunning", ROLLOUT, |s| {
        s.condition(batch, "Stalled")
            .is_some_and(|(status, reason, _)| status == "True" && reason == "ProbesNotRunning")
    });
    let (_, _, message) = s.condition(batch, "Stalled").unwrap();
    assert!(message.contains("did not start within 10s"), "{message}");
    assert_eq!(s.count("failed"), 0, "{:?}", s.by_state());
    assert_eq!(s.count("validating"), 2, "no new start: {:?}", s.by_state());
    // The template fixed: the next run starts, and the rollout finishes.
    s.apply(&s.pool_yaml(
        "spec: {topology: {nodesPerDomain: 4, minHealthyNodesPerDomain: 4}, healthChecks: {probe: {startTimeoutSeconds: 10, notStartedLimit: 2}}}",
    ));
    s.wait_ready(batch, ROLLOUT);
    assert_eq!(s.count("ready"), 4, "{:?}", s.by_state());
}

/// The verdict gates on the real API server: the burn-in stand-in writes
/// each tray's verdict as `gpufleet probe` would; in one domain one tray
/// reports another clique than its label and one a VBIOS off the pool's
/// tuple. Both fail with reasons that name the field and both values; the
/// rest of that domain is admitted (16 of 18 healthy suffice), the other
/// domain is admitted whole, and every admitted tray carries its record.
#[test]
fn a_tray_in_another_clique_and_one_off_the_firmware_tuple_fail_the_rest_is_admitted() {
    use gpufleet::simulate::SIM_DEFAULT_VBIOS;
    let mut s = Scenario::new("ro-gates");
    let batch = "ro-gates-b";
    let uuid = "3183419e-9edc-4f0e-86e8-d895a9fb06be";
    let mut nodes = s.fleet(batch, 2, 18);
    for n in &mut nodes {
        let d: u32 = if n.name.contains("-d0-") { 7 } else { 8 };
        n.clique = format!("{uuid}.{d}");
    }
    let (other_clique, off_tuple) = ("ro-gates-d0-n03", "ro-gates-d0-n11");
    for n in &mut nodes {
        if n.name == other_clique {
            n.fabric_fault = Some("cliqueId=9".into());
        }
        if n.name == off_tuple {
            n.vbios = "96.00.AF.00.01".into();
        }
    }
    s.create_nodes(&nodes);
    s.apply(&s.pool_yaml(&format!(
        "spec: {{healthChecks: {{fabric: {{}}, firmware: {{vbios: ['{SIM_DEFAULT_VBIOS}'], driver: ['570.133.20'], uniformDomains: true}}}}}}"
    )));
    s.start_operator();
    s.apply(&s.batch_yaml(batch, "spec: {maxFailuresPerWave: 2}"));
    s.wait_ready(batch, ROLLOUT);
    let seen = s.seen();
    assert_eq!(seen[other_clique].state.as_deref(), Some("failed"));
    assert_eq!(
        seen[other_clique].reason.as_deref(),
        Some("probe verdict: fabric cliqueId is 9, its label nvidia.com/gpu.clique says 7")
    );
    assert_eq!(seen[off_tuple].state.as_deref(), Some("failed"));
    assert_eq!(
        seen[off_tuple].reason.as_deref(),
        Some(
            format!(
                "probe verdict: VBIOS 96.00.AF.00.01 is not in the pool's accepted set ({SIM_DEFAULT_VBIOS})"
            )
            .as_str()
        )
    );
    assert_eq!(s.count("ready"), 34, "the rest of both domains is admitted");
    assert_eq!(s.count("failed"), 2, "nothing else fails");
    let records: Vec<gpufleet::planner::VerdictRecord> = s
        .rt
        .block_on(s.nodes())
        .iter()
        .filter(|n| {
            n.metadata
                .labels
                .as_ref()
                .and_then(|l| l.get("gpufleet.io/state"))
                .is_some_and(|st| st == "ready")
        })
        .map(|n| {
            let view = gpufleet::planner::NodeView::from(n);
            gpufleet::planner::VerdictRecord::of(&view).expect("an admitted tray has its record")
        })
        .collect();
    assert_eq!(records.len(), 34);
    assert!(records.iter().all(|r| r.fabric && r.failed.is_empty()));
    // Where people look: `why` lists the failed check, `status` the domains.
    let cli = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_gpufleet"))
            .args(args)
            .env("KUBECONFIG", &crate::support::testbed().kubeconfig)
            .env("NO_COLOR", "1")
            .output()
            .expect("running gpufleet");
        assert!(out.status.success(), "gpufleet {args:?}: {out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let why = cli(&["why", other_clique]);
    assert!(
        why.contains("Failed checks (its probe's verdict):\n  fabric      fabric cliqueId is 9, its label nvidia.com/gpu.clique says 7"),
        "{why}"
    );
    let status = cli(&["status", batch]);
    assert!(status.contains("Verdict gates by domain (ok:"), "{status}");
    assert!(status.lines().all(|l| l.chars().count() <= 80), "{status}");
    let row = |clique: &str| {
        status
            .lines()
            .find(|l| l.starts_with(clique))
            .map(|l| l.split_whitespace().skip(1).collect::<Vec<_>>().join(" "))
    };
    assert_eq!(
        row(&format!("{uuid}.7")).as_deref(),
        Some("18 17 1 1"),
        "{status}"
    );
    assert_eq!(
        row(&format!("{uuid}.8")).as_deref(),
        Some("18 18 0 0"),
        "{status}"
    );
}

/// The pool's rack test on the real API server, with the burn-in stand-in
/// playing NCCL: a group fails when one of its trays has a bad NVLink port
/// or its rack a bad switch tray. In one rack tray 7 has the bad port:
/// attribution finds exactly it within the round cap and the other 17 are
/// admitted (16 needed); the other rack's switch tray is bad: no tray of it
/// is admitted and the reason says the rack failed. Meanwhile trays in
/// validation plus trays under a rack test never exceed the pool's cap.
#[test]
fn the_rack_test_finds_a_bad_tray_and_fails_a_bad_rack() {
    let name = "ro-rack";
    let mut s = Scenario::new(name);
    let batch = "ro-rack-b";
    let mut nodes = s.fleet(batch, 2, 18);
    let bad_tray = "ro-rack-d0-n07";
    for n in &mut nodes {
        n.nvlink_fault = n.name == bad_tray;
        n.rack_fault = n.name.contains("-d1-");
    }
    s.create_nodes(&nodes);
    s.apply(&s.pool_yaml(
        "spec: {maxConcurrent: 18, healthChecks: {domainTest: {timeoutSeconds: 60, computeDomain: true, template: {spec: {containers: [{name: nccl, image: nccl-tests, command: [all_reduce_perf, -b, 16G]}]}}}}}",
    ));
    s.start_operator();
    s.apply(&s.batch_yaml(
        batch,
        "spec: {waves: [{percent: 100}], maxConcurrent: 36, maxFailuresPerWave: 20}",
    ));
    let mut peak = 0;
    // While a rack is under test, `gpufleet why` on one of its trays says so.
    let mut told = None;
    let mut domains = 0;
    let mut peers_checked = false;
    s.wait_until("both racks are decided", ROLLOUT * 2, |s| {
        let pods = s.rt.block_on(s.group_pods());
        peak = peak.max(s.count("validating") + pods);
        // Each group brings a ComputeDomain, owned by its first pod.
        if !peers_checked {
            let listed = s
                .kubectl(&[
                    "get",
                    "computedomains",
                    "-n",
                    &s.probe_namespace,
                    "-o",
                    "json",
                ])
                .succeeds()
                .stdout;
            let listed: serde_json::Value = serde_json::from_str(&listed).expect("a list");
            for cd in listed["items"].as_array().into_iter().flatten() {
                let size = cd["spec"]["numNodes"].as_u64().unwrap_or(0);
                let name = cd["metadata"]["name"].as_str().unwrap_or_default();
                let owner = &cd["metadata"]["ownerReferences"][0];
                assert_eq!(owner["kind"], "Pod", "{cd}");
                assert_eq!(
                    owner["name"].as_str(),
                    Some(format!("{name}-0").as_str()),
                    "{cd}"
                );
                assert_eq!(
                    cd["spec"]["channel"]["resourceClaimTemplate"]["name"].as_str(),
                    Some(format!("{name}-channel").as_str())
                );
                assert!(size >= 2, "{cd}");
                domains += 1;
                // ... and a headless Service of the same name, through which
                // its pods find each other as <pod>.<service>.
                let svc = s
                    .kubectl(&[
                        "get",
                        "service",
                        name,
                        "-n",
                        &s.probe_namespace,
                        "-o",
                        "json",
                    ])
                    .succeeds()
                    .stdout;
                let svc: serde_json::Value = serde_json::from_str(&svc).expect("a Service");
                assert_eq!(svc["spec"]["clusterIP"], "None", "{svc}");
                assert_eq!(svc["spec"]["publishNotReadyAddresses"], true, "{svc}");
                assert_eq!(
                    svc["spec"]["selector"]["gpufleet.io/group-run"], name,
                    "{svc}"
                );
                let pod = s
                    .kubectl(&[
                        "get",
                        "pod",
                        &format!("{name}-0"),
                        "-n",
                        &s.probe_namespace,
                        "-o",
                        "json",
                    ])
                    .run()
                    .stdout;
                // Its first pod, unless its group is done already.
                let Ok(pod) = serde_json::from_str::<serde_json::Value>(&pod) else {
                    continue;
                };
                assert_eq!(pod["spec"]["subdomain"], name, "{pod}");
                assert_eq!(
                    pod["metadata"]["labels"]["gpufleet.io/group-run"], name,
                    "{pod}"
                );
                let hosts = pod["spec"]["containers"][0]["env"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .find(|e| e["name"] == "GPUFLEET_PEER_HOSTS")
                    .map(|e| e["value"].as_str().unwrap().to_string())
                    .expect("GPUFLEET_PEER_HOSTS");
                assert!(
                    hosts.starts_with(&format!("{name}-0.{name},{name}-1.{name}")),
                    "{hosts}"
                );
                peers_checked = true;
            }
        }
        if told.is_none() {
            let batches: kube::Api<gpufleet::api::RolloutBatch> = kube::Api::all(s.client.clone());
            let status =
                s.rt.block_on(batches.get(batch))
                    .ok()
                    .and_then(|b| b.status);
            if let Some(test) = status.and_then(|st| st.rack_tests.first().cloned()) {
                let d = test.domain.trim_start_matches("ro-rack-c");
                let out = std::process::Command::new(env!("CARGO_BIN_EXE_gpufleet"))
                    .args(["why", &format!("ro-rack-d{d}-n00")])
                    .env("KUBECONFIG", &crate::support::testbed().kubeconfig)
                    .output()
                    .expect("running gpufleet why");
                let text = String::from_utf8_lossy(&out.stdout).into_owned();
                if text.contains("  rack test   ") {
                    told = Some(text);
                }
            }
        }
        s.count("ready") == 17 && s.count("failed") == 19
    });
    assert!(domains > 0, "no rack test group had a ComputeDomain");
    assert!(
        peers_checked,
        "no rack test pod was seen with its peers' hosts"
    );
    let told = told.expect("gpufleet why never showed a rack test in progress");
    assert!(
        told.lines()
            .nth(1)
            .is_some_and(|l| l.starts_with("  rack test   ")),
        "{told}"
    );
    assert!(peak <= 18, "{peak} trays busy at once; the pool allows 18");
    let seen = s.seen();
    assert_eq!(seen[bad_tray].state.as_deref(), Some("failed"));
    let reason = seen[bad_tray].reason.clone().unwrap_or_default();
    assert!(
        reason.starts_with("rack test: this tray failed beside known-good tray"),
        "{reason}"
    );
    for n in 0..18 {
        let tray = format!("ro-rack-d1-n{n:02}");
        let reason = seen[&tray].reason.clone().unwrap_or_default();
        assert!(
            reason.starts_with("rack test failed in every group tried"),
            "{tray}: {reason}"
        );
    }
    s.wait_until(
        "the rack test pods are gone",
        Duration::from_secs(30),
        |s| s.rt.block_on(s.group_pods()) == 0,
    );
}

/// The rack test run by NVCRE (`domainTest.nvcre`), with its stand-in
/// playing NVCRE's controller on the real API server: gpufleet makes one
/// Certification per group (the group's nodes its target, intra-rack, the
/// pool's bandwidth floor as NVCRE's threshold) and reads the failed nodes
/// from the ConfigMap NVCRE names. In one rack NVCRE names two trays
/// (`HardwareFailureDetected`, `ThresholdViolation`): exactly those fail,
/// with NVCRE's reasons, and the other 16 are admitted once a Certification
/// without them passed. In the other a tray's bad NVLink port fails the
/// whole job (every node `WorkloadFailed`): gpufleet's attribution finds it
/// with smaller Certifications. Decided, the Certifications go.
#[test]
fn the_nvcre_provider_fails_the_trays_its_certifications_name() {
    let name = "ro-nvcre";
    let mut s = Scenario::new(name);
    let batch = "ro-nvcre-b";
    let mut nodes = s.fleet(batch, 2, 18);
    let hardware = "ro-nvcre-d0-n03";
    let threshold = "ro-nvcre-d0-n11";
    let port = "ro-nvcre-d1-n07";
    for n in &mut nodes {
        if n.name == hardware {
            n.nvcre_failure = Some(
                "HardwareFailureDetected: node health monitor fired: GPU 2 XID 79 (fell off the bus)"
                    .into(),
            );
        }
        if n.name == threshold {
            n.nvcre_failure = Some(
                "ThresholdViolation: Threshold \"busBandwidthGBps\" violated: measured 412.0000, expression: value >= 800"
                    .into(),
            );
        }
        n.nvlink_fault = n.name == port;
    }
    s.create_nodes(&nodes);
    let stand_in = s.rt.spawn(gpufleet::simulate::nvcre(
        s.client.clone(),
        s.probe_namespace.clone(),
        Duration::from_secs(1),
    ));
    s.apply(&s.pool_yaml(
        "spec: {maxConcurrent: 36, healthChecks: {domainTest: {timeoutSeconds: 120, nvcre: {minBusBandwidthGBps: 800}}}}",
    ));
    s.start_operator_with(&["--nvcre"]);
    s.apply(&s.batch_yaml(
        batch,
        "spec: {waves: [{percent: 100}], maxConcurrent: 36, maxFailuresPerWave: 10}",
    ));
    let mut checked = false;
    s.wait_until("both racks are decided", ROLLOUT * 2, |s| {
        if !checked {
            let listed = s
                .kubectl(&[
                    "get",
                    "certifications",
                    "-n",
                    &s.probe_namespace,
                    "-o",
                    "json",
                ])
                .succeeds()
                .stdout;
            let listed: serde_json::Value = serde_json::from_str(&listed).expect("a list");
            for cert in listed["items"].as_array().into_iter().flatten() {
                let targets = cert["spec"]["target"]["nodeNames"]
                    .as_array()
                    .unwrap()
                    .len();
                if targets != 18 {
                    continue;
                }
                let category = &cert["spec"]["categories"][0];
                assert_eq!(category["domain"], "communication", "{cert}");
                assert_eq!(category["variant"], "nccl-all-reduce", "{cert}");
                assert_eq!(category["options"]["testScale"], "intra-rack", "{cert}");
                assert_eq!(category["options"]["nodesPerJob"], 18, "{cert}");
                assert_eq!(
                    category["options"]["thresholds"]["busBandwidthGBps"], "value >= 800",
                    "{cert}"
                );
                assert_eq!(cert["spec"]["enableMNNVL"], true, "{cert}");
                let owner = &cert["metadata"]["ownerReferences"][0];
                assert_eq!(owner["kind"], "RolloutBatch", "{cert}");
                assert_eq!(owner["name"], batch, "{cert}");
                checked = true;
            }
        }
        s.count("ready") == 33 && s.count("failed") == 3
    });
    assert!(checked, "no Certification over a whole rack was seen");
    let seen = s.seen();
    let reason = |n: &str| seen[n].reason.clone().unwrap_or_default();
    assert_eq!(seen[hardware].state.as_deref(), Some("failed"));
    assert!(
        reason(hardware).contains("HardwareFailureDetected: node health monitor fired"),
        "{}",
        reason(hardware)
    );
    assert!(
        reason(threshold).contains("ThresholdViolation: Threshold \"busBandwidthGBps\" violated"),
        "{}",
        reason(threshold)
    );
    assert!(
        reason(port).starts_with("rack test: this tray failed beside known-good tray"),
        "{}",
        reason(port)
    );
    assert!(reason(port).contains("WorkloadFailed"), "{}", reason(port));
    s.wait_until(
        "the Certifications are gone",
        Duration::from_secs(30),
        |s| {
            let left = s
                .kubectl(&[
                    "get",
                    "certifications",
                    "-n",
                    &s.probe_namespace,
                    "-o",
                    "name",
                ])
                .succeeds()
                .stdout;
            left.trim().is_empty()
        },
    );
    stand_in.abort();
}
