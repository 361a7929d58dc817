//! Operating gpufleet while the cluster misbehaves: leader election and
//! takeover, an API server outage, someone undoing gpufleet's work, a node
//! that disappears, and the metrics and health endpoints.

use std::process::Command;
use std::time::{Duration, Instant};

use crate::support::scenario::{Scenario, free_addr, http_get};
use crate::support::{OwnControlPlane, testbed};

const ROLLOUT: Duration = Duration::from_secs(150);

/// A field of the scenario's Lease (a kubectl jsonpath), if set.
fn lease_field(s: &Scenario, lease: &str, path: &str) -> Option<String> {
    let ran = s
        .kubectl(&[
            "-n",
            &s.name,
            "get",
            "lease",
            lease,
            "-o",
            &format!("jsonpath={{{path}}}"),
        ])
        .run();
    (ran.ok && !ran.stdout.trim().is_empty()).then(|| ran.stdout.trim().to_string())
}

fn lease_holder(s: &Scenario, lease: &str) -> Option<String> {
    lease_field(s, lease, ".spec.holderIdentity")
}

/// Node writes from the audit log: (request time, user agent), in order.
fn node_writes_by_agent(s: &Scenario) -> Vec<(String, String)> {
    let prefix = format!("{}-", s.name);
    let mut out = Vec::new();
    for line in s.audit_text().unwrap_or_default().lines() {
        let Ok(e) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let agent = e["userAgent"].as_str().unwrap_or_default();
        if e["stage"] == "ResponseComplete"
            && e["verb"] == "patch"
            && e["objectRef"]["resource"] == "nodes"
            && e["objectRef"]["name"]
                .as_str()
                .is_some_and(|n| n.starts_with(&prefix))
            && agent.starts_with("gpufleet/")
        {
            out.push((
                e["requestReceivedTimestamp"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
                agent.to_string(),
            ));
        }
    }
    out.sort();
    out
}

/// 1. Two replicas: exactly one holds the Lease and writes; SIGKILL the
///    leader mid-wave and the other takes over within the lease duration and
///    finishes the rollout.
#[test]
fn a_standby_takes_over_when_the_leader_dies() {
    let s = Scenario::new("op-lead");
    let batch = "op-lead-b";
    s.create_nodes(&s.fleet(batch, 3, 18));
    s.apply(&s.pool_yaml("spec: {healthChecks: {soakSeconds: 3}}"));
    let elect = |id: &str| {
        s.spawn_operator(&[
            "--leader-elect",
            "--lease-name",
            "op-lead",
            "--lease-seconds",
            "6",
            "--identity",
            id,
        ])
    };
    let mut replicas = vec![("op-lead-a", elect("op-lead-a"))];
    s.wait_until("replica a holds the lease", Duration::from_secs(30), |s| {
        lease_holder(s, "op-lead").is_some()
    });
    replicas.push(("op-lead-b", elect("op-lead-b")));
    std::thread::sleep(Duration::from_secs(2));
    s.apply(&s.batch_yaml(batch, ""));
    s.wait_until("wave 2 is in flight", ROLLOUT, |s| {
        s.seen()
            .values()
            .any(|n| n.wave.as_deref() == Some("2") && n.state.as_deref() != Some("ready"))
    });
    let leader = lease_holder(&s, "op-lead").expect("a leader");
    let writes_before = node_writes_by_agent(&s);
    let writers: std::collections::BTreeSet<_> =
        writes_before.iter().map(|(_, a)| a.clone()).collect();
    assert_eq!(writers.len(), 1, "exactly one replica writes: {writers:?}");
    assert!(
        writers.iter().next().unwrap().contains(&leader),
        "the writer is the lease holder {leader}: {writers:?}"
    );

    let (_, child) = replicas
        .iter_mut()
        .find(|(id, _)| *id == leader)
        .expect("leader process");
    child.kill().expect("SIGKILL the leader");
    child.wait().expect("reap");
    let killed_at = Instant::now();
    s.wait_until(
        "the standby holds the lease",
        Duration::from_secs(30),
        |s| lease_holder(s, "op-lead").is_some_and(|h| h != leader),
    );
    let takeover = killed_at.elapsed();
    println!(
        "op-lead: takeover {:.1}s after SIGKILL (lease duration 6 s)",
        takeover.as_secs_f64()
    );
    assert!(
        takeover <= Duration::from_secs(6) + Duration::from_secs(4),
        "takeover took {takeover:?}"
    );
    s.wait_ready(batch, ROLLOUT);
    assert_eq!(s.count("ready"), 54);
    assert!(s.seen().values().all(|n| !n.tainted));
    let writers: std::collections::BTreeSet<_> = node_writes_by_agent(&s)
        .into_iter()
        .map(|(_, a)| a)
        .collect();
    assert_eq!(
        writers.len(),
        2,
        "the new leader wrote after the takeover: {writers:?}"
    );
    for (_, mut child) in replicas {
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// 2. The API server is stopped for 30 s mid-wave and started again: the
///    operator logs the outage, does not crash, resumes and finishes; the
///    node whose probe fails is failed, never admitted.
#[test]
fn the_operator_rides_out_an_api_server_outage() {
    let mut plane = OwnControlPlane::start();
    let mut s = Scenario::on("op-outage", &plane.kubeconfig);
    let batch = "op-outage-b";
    let mut nodes = s.fleet(batch, 2, 18);
    nodes
        .iter_mut()
        .find(|n| n.name == "op-outage-d1-n04")
        .unwrap()
        .probe_failure = Some("GPU fell off the bus".into());
    s.create_nodes(&nodes);
    // Probe timeouts are long against a 30 s outage, as burn-ins are: a
    // probe that cannot report while the API server is down is not failed.
    s.apply(&s.pool_yaml("spec: {healthChecks: {soakSeconds: 2, probe: {timeoutSeconds: 180}}}"));
    s.start_operator();
    s.apply(&s.batch_yaml(
        batch,
        "spec: {waves: [{nodes: 18}, {percent: 100}], maxFailuresPerWave: 1}",
    ));
    s.wait_until("wave 2 is in flight", ROLLOUT, |s| {
        s.seen()
            .values()
            .any(|n| n.wave.as_deref() == Some("2") && n.state.as_deref() != Some("ready"))
    });
    plane.outage(Duration::from_secs(30));
    s.wait_ready(batch, ROLLOUT);
    let seen = s.seen();
    assert_eq!(seen["op-outage-d1-n04"].state.as_deref(), Some("failed"));
    assert!(seen["op-outage-d1-n04"].tainted);
    assert_eq!(s.count("ready"), 35);
    let log = std::fs::read_to_string(&s.log).unwrap_or_default();
    assert!(log.contains("WARN"), "the outage is logged");
    assert!(!log.contains("panicked"), "no panic:\n{log}");
    assert!(s.operator_alive(), "the operator crashed:\n{log}");
}

/// 3. Someone removes the onboarding taint of a validating node and deletes
///    another's probe: gpufleet puts the taint back (with an event) and makes
///    the probe again, without counting a failure.
#[test]
fn gpufleet_restores_its_taint_and_its_probe() {
    let mut s =
        Scenario::with_probe_delay("op-undo", &testbed().kubeconfig, Duration::from_secs(15));
    let batch = "op-undo-b";
    s.create_nodes(&s.fleet(batch, 1, 18));
    s.apply(&s.pool_yaml(""));
    s.start_operator();
    s.apply(&s.batch_yaml(batch, "spec: {waves: [{percent: 100}]}"));
    s.wait_until("all 18 validate", ROLLOUT, |s| s.count("validating") == 18);
    s.kubectl(&[
        "taint",
        "nodes",
        "op-undo-d0-n03",
        "gpufleet.io/onboarding:NoSchedule-",
    ])
    .succeeds();
    s.kubectl(&[
        "-n",
        "op-undo",
        "delete",
        "pod",
        "gpufleet-probe-op-undo-d0-n07-1",
        "--wait=false",
    ])
    .succeeds();
    s.wait_until("the taint is back", Duration::from_secs(20), |s| {
        s.seen()["op-undo-d0-n03"].tainted
    });
    s.wait_until("the probe is made again", Duration::from_secs(20), |s| {
        s.probe_pods().iter().any(|p| {
            p.metadata.name.as_deref() == Some("gpufleet-probe-op-undo-d0-n07-1")
                && p.metadata.deletion_timestamp.is_none()
        })
    });
    let events = s
        .kubectl(&[
            "get",
            "events",
            "-A",
            "--field-selector",
            "involvedObject.name=op-undo-d0-n03",
            "-o",
            "json",
        ])
        .succeeds();
    assert!(events.stdout.contains("TaintRestored"), "{}", events.stdout);
    s.wait_ready(batch, ROLLOUT);
    assert_eq!(s.count("ready"), 18);
    let annotations = s
        .kubectl(&[
            "get",
            "node",
            "op-undo-d0-n07",
            "-o",
            "jsonpath={.metadata.annotations.gpufleet\\.io/attempt}",
        ])
        .succeeds();
    assert_eq!(
        annotations.stdout.trim(),
        "1",
        "a deleted probe is not a failed attempt"
    );
}

/// 4. A node deleted mid-validation is gone, not failed: its probe is removed
///    and the wave completes.
#[test]
fn a_node_deleted_mid_validation_is_gone_not_failed() {
    let mut s =
        Scenario::with_probe_delay("op-gone", &testbed().kubeconfig, Duration::from_secs(8));
    let batch = "op-gone-b";
    s.create_nodes(&s.fleet(batch, 1, 18));
    s.apply(&s.pool_yaml(""));
    s.start_operator();
    s.apply(&s.batch_yaml(batch, "spec: {waves: [{percent: 100}]}"));
    s.wait_until("all 18 validate", ROLLOUT, |s| s.count("validating") == 18);
    s.kubectl(&["delete", "node", "op-gone-d0-n05"]).succeeds();
    s.wait_until("its probe is removed", Duration::from_secs(20), |s| {
        s.probe_pods().iter().all(|p| {
            p.metadata.name.as_deref() != Some("gpufleet-probe-op-gone-d0-n05-1")
                || p.metadata.deletion_timestamp.is_some()
        })
    });
    s.wait_ready(batch, ROLLOUT);
    let status = s.batch(batch).status.unwrap();
    assert_eq!(
        (status.nodes.total, status.nodes.ready, status.nodes.failed),
        (17, 17, 0)
    );
}

/// 5. `/metrics` has the families with values matching the objects; the
///    health endpoints answer.
#[test]
fn metrics_and_health_endpoints_tell_the_truth() {
    let s = Scenario::new("op-metrics");
    let batch = "op-metrics-b";
    let mut nodes = s.fleet(batch, 2, 18);
    nodes
        .iter_mut()
        .find(|n| n.name == "op-metrics-d1-n02")
        .unwrap()
        .probe_failure = Some("ECC".into());
    s.create_nodes(&nodes);
    s.apply(&s.pool_yaml(""));
    let addr = free_addr();
    let mut operator = s.spawn_operator(&["--metrics-addr", &addr, "--health-addr", &addr]);
    s.wait_until("/readyz is 200", Duration::from_secs(30), |_| {
        http_get(&addr, "/readyz").is_ok_and(|(c, _)| c == 200)
    });
    assert_eq!(http_get(&addr, "/healthz").unwrap().0, 200);
    s.apply(&s.batch_yaml(
        batch,
        "spec: {waves: [{nodes: 18}, {percent: 100}], maxFailuresPerWave: 1}",
    ));
    s.wait_ready(batch, ROLLOUT);
    s.wait_until("the pool status is final", Duration::from_secs(20), |s| {
        s.pool().status.is_some_and(|st| st.nodes.ready == 35)
    });
    let pool = s.pool().status.unwrap();
    let (code, text) = http_get(&addr, "/metrics").unwrap();
    assert_eq!(code, 200);
    let value = |series: &str| -> f64 {
        text.lines()
            .find(|l| l.starts_with(series))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{series} missing from /metrics:\n{text}"))
    };
    let p = "pool=\"op-metrics\"";
    let b = "batch=\"op-metrics-b\"";
    assert_eq!(
        value(&format!("gpufleet_pool_nodes{{{p},state=\"ready\"}}")),
        f64::from(pool.nodes.ready)
    );
    assert_eq!(
        value(&format!("gpufleet_pool_nodes{{{p},state=\"failed\"}}")),
        1.0
    );
    assert_eq!(
        value(&format!("gpufleet_pool_gpus_ready{{{p}}}")),
        f64::from(pool.gpus.ready)
    );
    assert_eq!(
        value(&format!("gpufleet_pool_gpus{{{p}}}")),
        f64::from(pool.gpus.total)
    );
    assert_eq!(
        value(&format!("gpufleet_pool_domains_complete{{{p}}}")),
        f64::from(pool.domains.complete)
    );
    assert_eq!(value(&format!("gpufleet_pool_breaker_tripped{{{p}}}")), 0.0);
    assert_eq!(
        value(&format!("gpufleet_batch_current_wave{{{p},{b}}}")),
        2.0
    );
    assert_eq!(value(&format!("gpufleet_batch_waves{{{p},{b}}}")), 2.0);
    assert_eq!(value(&format!("gpufleet_batch_ready{{{p},{b}}}")), 1.0);
    assert_eq!(
        value(&format!("gpufleet_node_admissions_total{{{p},{b}}}")),
        35.0
    );
    assert_eq!(
        value(&format!(
            "gpufleet_node_failures_total{{{p},{b},reason=\"probe_failed\"}}"
        )),
        1.0
    );
    assert_eq!(
        value(&format!("gpufleet_node_onboarding_seconds_count{{{p}}}")),
        35.0
    );
    assert!(value("gpufleet_reconcile_duration_seconds_count{kind=\"rolloutbatch\"}") > 0.0);
    assert!(value("gpufleet_api_requests_total{verb=\"patch\",resource=\"nodes\"}") >= 35.0 * 2.0);
    assert_eq!(value("gpufleet_leader "), 1.0);
    assert!(
        !text.contains("op-metrics-d0-n00"),
        "no node names in metric labels"
    );
    let _ = operator.kill();
    let _ = operator.wait();
}

/// A TCP proxy to the API server that can hold back its answers (bytes
/// from the server to the client) while letting requests through: a
/// leader whose answers come late.
struct SlowLink {
    port: u16,
    hold: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl SlowLink {
    fn to(server: &str) -> SlowLink {
        use std::sync::atomic::Ordering;
        let upstream = server.trim_start_matches("https://").to_string();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().unwrap().port();
        let hold = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let held = hold.clone();
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let Ok(server) = std::net::TcpStream::connect(&upstream) else {
                    continue;
                };
                let (mut c_in, mut s_out) =
                    (client.try_clone().unwrap(), server.try_clone().unwrap());
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut c_in, &mut s_out);
                    let _ = s_out.shutdown(std::net::Shutdown::Write);
                });
                let (mut s_in, mut c_out) = (server, client);
                let held = held.clone();
                std::thread::spawn(move || {
                    use std::io::{Read, Write};
                    let mut buf = [0u8; 16384];
                    loop {
                        let n = match s_in.read(&mut buf) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => n,
                        };
                        while held.load(Ordering::SeqCst) {
                            std::thread::sleep(Duration::from_millis(20));
                        }
                        if c_out.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                    let _ = c_out.shutdown(std::net::Shutdown::Write);
                });
            }
        });
        SlowLink { port, hold }
    }

    fn set_hold(&self, hold: bool) {
        self.hold.store(hold, std::sync::atomic::Ordering::SeqCst);
    }
}

/// Writes (anything but reads and the Lease itself) from the API
/// server's audit log, by the replica whose identity the user agent names,
/// received within [from, to): (time received, verb, resource).
fn writes_by(s: &Scenario, identity: &str, from: &str, to: &str) -> Vec<(String, String, String)> {
    use k8s_openapi::jiff::Timestamp;
    let time = |t: &str| t.parse::<Timestamp>().unwrap_or(Timestamp::MAX);
    let (from, to) = (time(from), time(to));
    let mut out = Vec::new();
    for line in s.audit_text().unwrap_or_default().lines() {
        let Ok(e) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let agent = e["userAgent"].as_str().unwrap_or_default();
        let at = e["requestReceivedTimestamp"].as_str().unwrap_or_default();
        let verb = e["verb"].as_str().unwrap_or_default();
        let resource = e["objectRef"]["resource"].as_str().unwrap_or_default();
        if e["stage"] == "ResponseComplete"
            && agent.contains(&format!("({identity})"))
            && matches!(verb, "create" | "update" | "patch" | "delete")
            && resource != "leases"
            && time(at) >= from
            && time(at) < to
        {
            out.push((at.to_string(), verb.to_string(), resource.to_string()));
        }
    }
    out
}

/// The lease's acquireTime, as the audit log spells times (RFC 3339, UTC).
fn acquired_at(s: &Scenario, lease: &str) -> String {
    lease_field(s, lease, ".spec.acquireTime").expect("the lease's acquireTime")
}

/// 6. Fencing. A leader whose answers come late (its renewal reached the
///    API server, the answer did not come back for 10 s) and a leader
///    paused with SIGSTOP past its lease, then resumed: neither writes
///    anything once the standby took over. Counted from the audit log.
#[test]
fn a_late_or_paused_leader_writes_nothing_after_the_takeover() {
    let s = Scenario::with_probe_delay("op-fence", &testbed().kubeconfig, Duration::from_secs(4));
    let batch = "op-fence-b";
    let lease = "op-fence";
    s.create_nodes(&s.fleet(batch, 2, 18));
    s.apply(&s.pool_yaml("spec: {healthChecks: {soakSeconds: 2}}"));
    // Replica a reaches the API server through a link that can hold back
    // its answers.
    let admin = std::fs::read_to_string(&s.kubeconfig).expect("kubeconfig");
    let server = admin
        .lines()
        .find_map(|l| l.trim().strip_prefix("server: "))
        .expect("a server in the kubeconfig")
        .trim()
        .to_string();
    let link = SlowLink::to(&server);
    let slow = crate::support::scratch_dir().join("op-fence-a.kubeconfig");
    std::fs::write(
        &slow,
        admin.replace(&server, &format!("https://127.0.0.1:{}", link.port)),
    )
    .expect("writing a kubeconfig");
    let elect = |id: &str| {
        vec![
            "--leader-elect".to_string(),
            "--lease-name".into(),
            lease.into(),
            "--lease-seconds".into(),
            "6".into(),
            "--identity".into(),
            id.into(),
        ]
    };
    fn args(v: &[String]) -> Vec<&str> {
        v.iter().map(String::as_str).collect()
    }
    let a_args = elect("op-fence-a");
    let mut a = s.spawn_operator_as(&slow, &args(&a_args));
    s.wait_until("replica a holds the lease", Duration::from_secs(30), |s| {
        lease_holder(s, lease).as_deref() == Some("op-fence-a")
    });
    let b_args = elect("op-fence-b");
    let mut b = s.spawn_operator(&args(&b_args));
    s.apply(&s.batch_yaml(
        batch,
        "spec: {waves: [{nodes: 4}, {percent: 50}, {percent: 100}], maxConcurrent: 4}",
    ));
    s.wait_until("nodes validate", ROLLOUT, |s| s.count("validating") > 0);

    // a's answers are held back: b takes over; then a gets them late.
    link.set_hold(true);
    s.wait_until("replica b holds the lease", Duration::from_secs(40), |s| {
        lease_holder(s, lease).as_deref() == Some("op-fence-b")
    });
    let b_took_over = acquired_at(&s, lease);
    std::thread::sleep(Duration::from_secs(3));
    link.set_hold(false);
    std::thread::sleep(Duration::from_secs(8));

    // b paused past its lease: a takes over; then b resumes.
    let pid = b.id().to_string();
    Command::new("kill")
        .args(["-STOP", &pid])
        .status()
        .expect("SIGSTOP");
    s.wait_until(
        "replica a holds the lease again",
        Duration::from_secs(40),
        |s| lease_holder(s, lease).as_deref() == Some("op-fence-a"),
    );
    let a_took_over = acquired_at(&s, lease);
    std::thread::sleep(Duration::from_secs(3));
    Command::new("kill")
        .args(["-CONT", &pid])
        .status()
        .expect("SIGCONT");
    std::thread::sleep(Duration::from_secs(8));
    s.wait_ready(batch, ROLLOUT);
    assert_eq!(s.count("ready"), 36, "{:?}", s.by_state());

    let late = writes_by(&s, "op-fence-a", &b_took_over, &a_took_over);
    assert!(
        late.is_empty(),
        "replica a wrote after b took over at {b_took_over}: {late:?}"
    );
    let paused = writes_by(&s, "op-fence-b", &a_took_over, "9999");
    assert!(
        paused.is_empty(),
        "replica b wrote after a took over at {a_took_over}: {paused:?}"
    );
    // Both led, and both wrote while they led.
    assert!(!writes_by(&s, "op-fence-b", &b_took_over, &a_took_over).is_empty());
    assert!(!writes_by(&s, "op-fence-a", &a_took_over, "9999").is_empty());
    for child in [&mut a, &mut b] {
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// A small random source for the chaos scenario (seeded from the clock,
/// printed, so a failing run can be replayed with GPUFLEET_CHAOS_SEED).
struct Dice(u64);

impl Dice {
    fn new() -> Dice {
        let seed = std::env::var("GPUFLEET_CHAOS_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_nanos() as u64
                    | 1
            });
        println!("chaos seed {seed} (GPUFLEET_CHAOS_SEED={seed} replays it)");
        Dice(seed)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n.max(1)
    }
}

/// Every taint key of every node of the scenario.
fn taint_keys(
    s: &Scenario,
) -> std::collections::BTreeMap<String, std::collections::BTreeSet<String>> {
    let ran = s
        .kubectl(&[
            "get",
            "nodes",
            "-l",
            &format!("gpufleet.io/test={}", s.name),
            "-o",
            "json",
        ])
        .succeeds();
    let list: serde_json::Value = serde_json::from_str(&ran.stdout).expect("node list");
    list["items"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|n| {
            let keys = n["spec"]["taints"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|t| t["key"].as_str().map(String::from))
                .collect();
            (
                n["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
                keys,
            )
        })
        .collect()
}

/// The chaos test's second controller: adds (or removes) its own taint
/// `chaos.example/flap` on `node`, writing only if the node is unchanged
/// since it was read. True when the write went through.
fn flip_taint(kubeconfig: &std::path::Path, node: &str, add: bool) -> bool {
    let got = testbed()
        .kubectl_with(kubeconfig, &["get", "node", node, "-o", "json"])
        .run();
    if !got.ok {
        return false;
    }
    let Ok(object) = serde_json::from_str::<serde_json::Value>(&got.stdout) else {
        return false;
    };
    let version = object["metadata"]["resourceVersion"].clone();
    let mut taints: Vec<serde_json::Value> = object["spec"]["taints"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    taints.retain(|t| t["key"] != "chaos.example/flap");
    if add {
        taints.push(
            serde_json::json!({"key": "chaos.example/flap", "value": "on", "effect": "NoSchedule"}),
        );
    }
    let patch = serde_json::json!([
        {"op": "test", "path": "/metadata/resourceVersion", "value": version},
        {"op": "add", "path": "/spec/taints", "value": taints},
    ]);
    testbed()
        .kubectl_with(
            kubeconfig,
            &[
                "patch",
                "node",
                node,
                "--type=json",
                "-p",
                &patch.to_string(),
            ],
        )
        .run()
        .ok
}

/// 7. Chaos. During a rollout, a second controller adds and removes taints
///    of its own on the same nodes, the API server is restarted twice, and
///    the operator is SIGKILLed at random moments five times: the rollout
///    completes, no taint gpufleet did not add is removed, and no node is
///    admitted without its probe (the one whose probe fails is failed).
#[test]
fn chaos_a_second_controller_api_restarts_and_kills_break_nothing() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};
    let started = Instant::now();
    let mut plane = OwnControlPlane::start();
    let mut s = Scenario::with_probe_delay("op-chaos", &plane.kubeconfig, Duration::from_secs(2));
    let batch = "op-chaos-b";
    let mut nodes = s.fleet(batch, 2, 18);
    let bad = "op-chaos-d1-n07";
    nodes
        .iter_mut()
        .find(|n| n.name == bad)
        .unwrap()
        .probe_failure = Some("GPU fell off the bus".into());
    s.create_nodes(&nodes);
    let names: Vec<String> = nodes.iter().map(|n| n.name.clone()).collect();
    // The other controller's own taint, on every node before the rollout:
    // gpufleet must never remove it.
    for node in &names {
        s.kubectl(&["taint", "node", node, "chaos.example/keep=yes:NoSchedule"])
            .succeeds();
    }
    s.apply(&s.pool_yaml("spec: {healthChecks: {soakSeconds: 1, probe: {timeoutSeconds: 120}}}"));
    let _ = std::fs::remove_file(&s.log);
    s.start_operator();
    s.apply(&s.batch_yaml(
        batch,
        "spec: {waves: [{nodes: 6}, {percent: 50}, {percent: 100}], maxConcurrent: 6, maxFailuresPerWave: 1}",
    ));
    s.wait_until("nodes validate", ROLLOUT, |s| s.count("validating") > 0);

    // The second controller: adds and removes a flapping taint of its own,
    // and records what it knows it left (a command that failed, say while
    // the API server was down, leaves that node uncertain). It writes as a
    // well-behaved controller does: read, change its own taint, write the
    // list back only if the node did not change meanwhile (a JSON patch
    // testing the resourceVersion). `kubectl taint` would not: it writes
    // back the whole list it read, and so can put back a taint gpufleet
    // removed a moment before (a lost update no other writer can prevent).
    let stop = Arc::new(AtomicBool::new(false));
    let record: Arc<Mutex<std::collections::BTreeMap<String, Option<bool>>>> = Arc::new(
        Mutex::new(names.iter().map(|n| (n.clone(), Some(false))).collect()),
    );
    let writes = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let other = {
        let (stop, record, names) = (stop.clone(), record.clone(), names.clone());
        let writes = writes.clone();
        let kubeconfig = plane.kubeconfig.clone();
        std::thread::spawn(move || {
            let mut dice = Dice(0x9e37_79b9_7f4a_7c15);
            while !stop.load(Ordering::SeqCst) {
                let node = &names[dice.below(names.len() as u64) as usize];
                let had = record.lock().unwrap()[node];
                let add = had != Some(true);
                let ok = flip_taint(&kubeconfig, node, add);
                if ok {
                    writes.fetch_add(1, Ordering::SeqCst);
                }
                record
                    .lock()
                    .unwrap()
                    .insert(node.clone(), if ok { Some(add) } else { None });
                std::thread::sleep(Duration::from_millis(150));
            }
        })
    };

    // Five kills at random moments, two API server restarts between them.
    let mut dice = Dice::new();
    for round in 0..5 {
        std::thread::sleep(Duration::from_millis(1500 + dice.below(4000)));
        s.kill_operator();
        s.start_operator();
        if round == 1 || round == 3 {
            std::thread::sleep(Duration::from_millis(dice.below(3000)));
            plane.outage(Duration::from_secs(3));
        }
    }
    s.wait_ready(batch, Duration::from_secs(150));
    stop.store(true, Ordering::SeqCst);
    other.join().expect("the other controller");
    assert!(
        writes.load(Ordering::SeqCst) > 10,
        "the other controller hardly wrote: {writes:?}"
    );
    println!("op-chaos: done in {:.0}s", started.elapsed().as_secs_f64());

    let seen = s.seen();
    assert_eq!(
        seen[bad].state.as_deref(),
        Some("failed"),
        "{:?}",
        seen[bad]
    );
    assert_eq!(s.count("ready"), 35, "{:?}", s.by_state());
    let taints = taint_keys(&s);
    let record = record.lock().unwrap();
    for node in &names {
        let keys = &taints[node];
        assert!(
            keys.contains("chaos.example/keep"),
            "{node} lost a taint gpufleet did not add: {keys:?}"
        );
        if let Some(flapping) = record[node] {
            assert_eq!(
                keys.contains("chaos.example/flap"),
                flapping,
                "{node}: the other controller's taint is not as it left it: {keys:?}"
            );
        }
        let admitted = seen[node].state.as_deref() == Some("ready");
        assert_eq!(
            keys.contains("gpufleet.io/onboarding"),
            !admitted,
            "{node}: gpufleet's taint on a node in state {:?}",
            seen[node].state
        );
    }
    // Every node admitted had a probe pod that ran: the stand-in wrote its
    // status. (Its create is not the evidence: one cut short by a kill or
    // by the API server stopping may still have made the pod, and the next
    // replica adopts it rather than making another.)
    let ran = s.probes_that_ran().expect("the audit log");
    let creates = s.probe_creates().expect("the audit log");
    let cut_short: Vec<&String> = creates
        .iter()
        .filter(|(_, n)| **n == 0)
        .map(|(p, _)| p)
        .collect();
    println!(
        "op-chaos: {} probes ran; creates cut short: {cut_short:?}",
        ran.len()
    );
    for node in names
        .iter()
        .filter(|n| seen[*n].state.as_deref() == Some("ready"))
    {
        let pod = format!("gpufleet-probe-{node}-");
        if !ran.iter().any(|p| p.starts_with(&pod)) {
            let text = s.audit_text().unwrap_or_default();
            let lines: Vec<&str> = text.lines().filter(|l| l.contains(&pod)).collect();
            panic!(
                "{node} was admitted without a probe that ran; the audit log on its pods:\n{}",
                lines.join("\n")
            );
        }
    }
    let log = std::fs::read_to_string(&s.log).unwrap_or_default();
    assert!(!log.contains("panicked"), "no panic");
}
