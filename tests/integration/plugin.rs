//! The kubectl plugin through the real kubectl: a `kubectl-gpufleet` link to
//! this build, first on the PATH of each kubectl run, and `kubectl gpufleet
//! ...` against scenarios that a real `gpufleet run` rolls out.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use gpufleet::simulate::{self, SimNode};
use kube::api::Api;

use crate::support::scenario::Scenario;
use crate::support::{scratch_dir, testbed};

const ROLLOUT: Duration = Duration::from_secs(120);

/// A folder holding `kubectl-gpufleet`, a link to the `gpufleet` binary
/// under test.
fn plugin_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = scratch_dir().join("plugin-bin");
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        let link = dir.join("kubectl-gpufleet");
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_gpufleet"), &link)
            .unwrap_or_else(|e| panic!("linking {}: {e}", link.display()));
        dir
    })
}

/// What `kubectl gpufleet ...` did.
struct Ran {
    ok: bool,
    stdout: String,
    stderr: String,
}

/// `kubectl gpufleet ARGS`, the plugin found on the PATH, the cluster from
/// `KUBECONFIG` (kubectl passes its environment to plugins, and takes no
/// flags before a plugin's name).
fn kubectl_gpufleet(args: &[&str]) -> Ran {
    let tb = testbed();
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut dirs = vec![plugin_dir().to_path_buf()];
    dirs.extend(std::env::split_paths(&path));
    let out = Command::new(&tb.kubectl)
        .arg("gpufleet")
        .args(args)
        .env("PATH", std::env::join_paths(dirs).expect("PATH"))
        .env("KUBECONFIG", &tb.kubeconfig)
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .output()
        .expect("running kubectl");
    let ran = Ran {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    };
    println!(
        "$ kubectl gpufleet {}\n{}{}",
        args.join(" "),
        ran.stdout,
        ran.stderr
    );
    ran
}

fn succeeds(args: &[&str]) -> String {
    let ran = kubectl_gpufleet(args);
    assert!(
        ran.ok,
        "kubectl gpufleet {args:?} failed:\n{}{}",
        ran.stdout, ran.stderr
    );
    ran.stdout
}

fn fails(args: &[&str]) -> String {
    let ran = kubectl_gpufleet(args);
    assert!(
        !ran.ok,
        "kubectl gpufleet {args:?} succeeded but should have failed:\n{}",
        ran.stdout
    );
    ran.stderr
}

fn approved_waves(s: &Scenario, batch: &str) -> Option<u32> {
    s.batch(batch).spec.approved_waves
}

/// `status`, `approve`, `pause` and `resume` steer a real rollout, and say
/// clearly what they refuse.
#[test]
fn plugin_status_approve_pause_and_resume_steer_a_rollout() {
    let mut s = Scenario::new("ui-steer");
    let batch = "ui-steer-b";
    s.create_nodes(&s.fleet(batch, 3, 18));
    s.apply(&s.pool_yaml(""));
    s.start_operator();
    s.apply(&s.batch_yaml(batch, "spec: {approvedWaves: 1}"));
    s.wait_until("wave 2 waits for approval", ROLLOUT, |s| {
        s.condition(batch, "Ready")
            .is_some_and(|(_, reason, _)| reason == "WaitingForApproval")
    });
    // The pool's status reports capacity at most a second or so behind.
    s.wait_until("the pool counts wave 1", Duration::from_secs(20), |s| {
        s.pool()
            .status
            .is_some_and(|st| st.gpus.ready == 72 && st.domains.complete == 1)
    });

    // The overview: every pool and batch, this scenario's among them.
    let all = succeeds(&["status"]);
    assert!(
        all.contains("POOL") && all.contains("GPUS ONLINE") && all.contains("DOMAINS"),
        "{all}"
    );
    let pool_row = all
        .lines()
        .find(|l| l.starts_with("ui-steer "))
        .unwrap_or_else(|| panic!("no pool row:\n{all}"));
    assert!(
        pool_row.contains("72/216") && pool_row.contains("1/3"),
        "{pool_row}"
    );
    let batch_row = all
        .lines()
        .find(|l| l.starts_with("ui-steer-b "))
        .unwrap_or_else(|| panic!("no batch row:\n{all}"));
    assert!(
        batch_row.contains("1/3") && batch_row.ends_with("WaitingForApproval"),
        "{batch_row}"
    );

    // One batch, wave by wave, in plain text (stdout is not a terminal).
    let one = succeeds(&["status", batch]);
    assert!(!one.contains('\x1b'), "escape codes in a pipe:\n{one}");
    assert!(
        one.contains("wave 1    18 nodes [████████████████████] 18 ready"),
        "{one}"
    );
    assert!(
        one.contains("wave 2    18 nodes") && one.contains("needs approval"),
        "{one}"
    );
    assert!(one.contains("→ waits for approval: wave 2 of 3"), "{one}");
    assert!(
        one.contains("`kubectl gpufleet approve ui-steer-b` starts wave 2"),
        "{one}"
    );
    assert!(
        one.lines().all(|l| l.chars().count() <= 80),
        "wider than 80 columns:\n{one}"
    );

    // Refusals name the problem.
    let err = fails(&["approve", "ui-steer-nosuch"]);
    assert!(err.contains("there is no RolloutBatch named \"ui-steer-nosuch\"; `kubectl gpufleet status` lists them"), "{err}");
    let err = fails(&["approve", batch, "--wave", "4"]);
    assert!(
        err.contains("batch ui-steer-b has 3 waves: --wave must be 1 to 3"),
        "{err}"
    );
    let err = fails(&["pause", "ui-steer-nosuch"]);
    assert!(err.contains("there is no RolloutBatch named"), "{err}");

    // Pause, then approve: the approval is recorded but nothing starts.
    let out = succeeds(&["pause", batch]);
    assert!(out.contains("batch ui-steer-b paused"), "{out}");
    assert!(s.batch(batch).spec.paused);
    assert!(succeeds(&["pause", batch]).contains("paused already"));
    let out = succeeds(&["approve", batch]);
    assert!(
        out.contains("waves 1 to 2 of 3 approved (spec.approvedWaves 1 → 2)"),
        "{out}"
    );
    assert_eq!(approved_waves(&s, batch), Some(2));
    s.wait_until("the batch reports Paused", ROLLOUT, |s| {
        s.condition(batch, "Ready")
            .is_some_and(|(_, reason, _)| reason == "Paused")
    });
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(s.count("ready"), 18, "a paused batch started wave 2");
    assert!(
        s.count("validating") + s.count("soaking") == 0,
        "{:?}",
        s.by_state()
    );
    let err = fails(&["approve", batch, "--wave", "1"]);
    assert!(
        err.contains("has 2 waves approved already; approve only raises it"),
        "{err}"
    );

    // Resume: wave 2 runs and wave 3 waits again.
    assert!(succeeds(&["resume", batch]).contains("batch ui-steer-b resumed"));
    assert!(!s.batch(batch).spec.paused);
    s.wait_until("wave 3 waits for approval", ROLLOUT, |s| {
        s.count("ready") == 36
            && s.condition(batch, "Ready")
                .is_some_and(|(_, reason, _)| reason == "WaitingForApproval")
    });
    // Flags after the subcommand reach the plugin too.
    let kubeconfig = testbed().kubeconfig.to_string_lossy().into_owned();
    succeeds(&["approve", batch, "--wave", "3", "--kubeconfig", &kubeconfig]);
    s.wait_ready(batch, ROLLOUT);
    assert_eq!(s.count("ready"), 54);

    // A complete batch has nothing to approve or pause.
    let err = fails(&["approve", batch]);
    assert!(err.contains("batch ui-steer-b is already complete (54 nodes: 54 ready, 0 failed, 0 held): there is nothing to approve"), "{err}");
    let err = fails(&["pause", batch]);
    assert!(
        err.contains("is already complete") && err.contains("nothing to pause"),
        "{err}"
    );
    assert!(succeeds(&["resume", batch]).contains("batch ui-steer-b is not paused"));
    let done = succeeds(&["status", batch]);
    assert!(
        done.contains("→ complete: 54 nodes: 54 ready, 0 failed, 0 held"),
        "{done}"
    );
    assert!(
        done.contains("216 of 216 GPUs online: 54 of 54 nodes ready, 0 failed, 0 held"),
        "{done}"
    );
}

/// `why` tells a node's story and `retry` sends a fixed node through
/// validation again; both refuse nodes gpufleet does not manage.
#[test]
fn plugin_why_and_retry_bring_a_fixed_node_back() {
    let mut s = Scenario::new("ui-retry");
    let batch = "ui-retry-b";
    let bad = "ui-retry-d0-n07";
    s.create_nodes(&s.fleet(batch, 1, 18));
    set_xid(&s, bad, "True");
    // A node no pool selects.
    let stray = "ui-retry-stray";
    s.rt.block_on(simulate::create_nodes(
        &s.client,
        &[SimNode::gb200(stray, "ui-retry-stray-clique")],
        1,
    ))
    .expect("creating the stray node");
    s.apply(&s.pool_yaml(""));
    s.start_operator();
    s.apply(&s.batch_yaml(
        batch,
        "spec: {waves: [{percent: 100}], maxFailuresPerWave: 1}",
    ));
    s.wait_ready(batch, ROLLOUT);
    assert_eq!(s.count("failed"), 1);

    let why = succeeds(&["why", bad]);
    assert!(why.starts_with("node ui-retry-d0-n07: failed\n"), "{why}");
    assert!(
        why.contains("  reason      condition GpuXidError is True"),
        "{why}"
    );
    assert!(why.contains("ui-retry-b"), "the batch is named:\n{why}");
    assert!(why.contains("  conditions  GpuXidError=True"), "{why}");
    assert!(
        why.contains("Warning  NodeFailed"),
        "its events are shown:\n{why}"
    );
    assert!(
        why.contains("`kubectl gpufleet retry ui-retry-d0-n07`"),
        "{why}"
    );
    // #14 scenario 5: text from the cluster cannot drive the terminal, and
    // an Event someone else reported cannot pose as gpufleet's.
    s.kubectl(&[
        "annotate",
        "node",
        "ui-retry-d0-n01",
        "--overwrite",
        "gpufleet.io/reason=fine\u{1b}[2K\u{1b}[1Aforged\u{1b}]52;c;ZWNobw==\u{7}\u{1b}]8;;http://x\u{7}link",
    ])
    .succeeds();
    s.apply(
        "apiVersion: v1\nkind: Event\nmetadata: {name: ui-retry-forged, namespace: default}\ninvolvedObject: {kind: Node, name: ui-retry-d0-n01, apiVersion: v1}\nreason: NodeAdmittedForged\nmessage: admitted by gpufleet\ntype: Normal\nreportingComponent: intruder\nsource: {component: intruder}\n",
    );
    let injected = succeeds(&["why", "ui-retry-d0-n01"]);
    assert!(
        !injected.contains('\u{1b}') && !injected.contains('\u{7}'),
        "escape sequences reached the terminal: {injected:?}"
    );
    assert!(injected.contains("fine[2K[1Aforged"), "{injected:?}");
    assert!(
        !injected.contains("NodeAdmittedForged"),
        "an event gpufleet did not report is shown:\n{injected}"
    );
    let good = succeeds(&["why", "ui-retry-d0-n00"]);
    assert!(
        good.starts_with("node ui-retry-d0-n00: ready\n")
            && good.contains("batch       ui-retry-b, wave 1"),
        "{good}"
    );

    // Nodes gpufleet does not manage, and nodes that need no retry.
    let err = fails(&["why", stray]);
    assert!(
        err.contains("node ui-retry-stray is not managed by gpufleet: no GpuPool selects it"),
        "{err}"
    );
    let err = fails(&["retry", stray]);
    assert!(
        err.contains(
            "node ui-retry-stray is not managed by gpufleet: it has no gpufleet.io/state label"
        ),
        "{err}"
    );
    let err = fails(&["why", "ui-retry-nosuch"]);
    assert!(
        err.contains("there is no node named \"ui-retry-nosuch\""),
        "{err}"
    );
    let err = fails(&["retry", bad, "ui-retry-d0-n00"]);
    assert!(
        err.contains("node ui-retry-d0-n00 is ready: only failed or held nodes can be retried"),
        "{err}"
    );
    assert!(err.contains("(no node was changed)"), "{err}");
    assert!(
        s.seen()[bad].state.as_deref() == Some("failed"),
        "a refused retry changed nothing"
    );
    let nodes: Api<k8s_openapi::api::core::v1::Node> = Api::all(s.client.clone());
    let node = s.rt.block_on(nodes.get(bad)).expect("node");
    assert!(
        !node
            .metadata
            .annotations
            .unwrap_or_default()
            .contains_key("gpufleet.io/retry")
    );

    // Fixed: the detector clears the condition; a person retries the node.
    set_xid(&s, bad, "False");
    let out = succeeds(&["retry", bad]);
    assert!(
        out.contains(
            "node ui-retry-d0-n07: retry requested (it was failed: condition GpuXidError is True)"
        ),
        "{out}"
    );
    s.wait_until("the retried node is admitted", ROLLOUT, |s| {
        s.seen()[bad].state.as_deref() == Some("ready")
    });
    assert_eq!(s.count("ready"), 18);
    let why = succeeds(&["why", bad]);
    assert!(why.starts_with("node ui-retry-d0-n07: ready\n"), "{why}");
    let node = s.rt.block_on(nodes.get(bad)).expect("node");
    assert!(
        !node
            .metadata
            .annotations
            .unwrap_or_default()
            .contains_key("gpufleet.io/retry"),
        "gpufleet takes the request away"
    );

    s.rt.block_on(nodes.delete(stray, &Default::default()))
        .expect("deleting the stray node");
}

/// Sets `GpuXidError` on a node, as a fault detector would.
fn set_xid(s: &Scenario, node: &str, status: &str) {
    s.rt.block_on(simulate::set_condition(
        &s.client,
        node,
        "GpuXidError",
        status,
        "Xid79",
    ))
    .unwrap_or_else(|e| panic!("setting GpuXidError={status} on {node}: {e}"));
}

/// A batch that cannot be read (here a direct etcd write put a word where
/// a number goes, as an older CRD could) is a broken row in `status`, not
/// an error that hides the rest; and it can still be deleted: gpufleet
/// releases its nodes and removes its finalizer.
#[test]
fn an_unreadable_batch_is_a_broken_row_and_can_be_deleted() {
    let name = "pl-broken";
    let mut s = Scenario::new(name);
    let batch = "pl-broken-b";
    s.create_nodes(&s.fleet(batch, 1, 4));
    s.apply(&s.pool_yaml(
        "spec: {topology: {nodesPerDomain: 4, minHealthyNodesPerDomain: 4}, healthChecks: {probe: {template: {metadata: {annotations: {gpufleet.io/probe-result: pending}}}}}}",
    ));
    s.start_operator();
    s.apply(&s.batch_yaml(batch, "spec: {waves: [{percent: 100}]}"));
    s.wait_until("its nodes validate", ROLLOUT, |s| {
        s.count("validating") == 4
    });
    crate::support::etcd_edit(
        &format!("/registry/gpufleet.io/rolloutbatches/{batch}"),
        |b| b["spec"]["maxConcurrent"] = serde_json::json!("many"),
    );
    s.wait_until("the batch says it cannot be read", ROLLOUT, |s| {
        s.condition(batch, "Stalled")
            .is_some_and(|(status, reason, _)| status == "True" && reason == "InvalidSpec")
    });
    let ran = kubectl_gpufleet(&["status"]);
    assert!(ran.ok, "status fails on one broken batch: {}", ran.stderr);
    assert!(
        ran.stdout
            .contains(&format!("rolloutbatch {batch} cannot be read")),
        "{}",
        ran.stdout
    );
    assert!(ran.stdout.lines().all(|l| l.chars().count() <= 80));
    s.kubectl(&["delete", "rolloutbatch", batch, "--wait=false"])
        .succeeds();
    s.wait_until("the batch is gone", ROLLOUT, |s| {
        !s.kubectl(&["get", "rolloutbatch", batch]).run().ok
    });
    s.wait_until("its nodes are released", ROLLOUT, |s| {
        s.count("validating") == 0
    });
    assert!(s.probe_pods().is_empty(), "its probes are gone");
}
