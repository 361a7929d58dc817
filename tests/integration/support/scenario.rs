//! A rollout scenario on the shared control plane: its own namespace, nodes,
//! pool and batches (all labelled `gpufleet.io/test=<name>`), the burn-in
//! stand-in, and a `gpufleet run` process of its own that handles only this
//! scenario's objects (`--selector`), so scenarios run side by side.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use gpufleet::api::{GpuPool, RolloutBatch};
use gpufleet::simulate::{self, SimNode};
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::ResourceExt;
use kube::api::{Api, ListParams};

use super::{repo, scratch_dir, testbed};

/// The label every object of a scenario carries.
pub const TEST_LABEL: &str = "gpufleet.io/test";

pub struct Scenario {
    pub name: String,
    /// Where the probe pods run: the scenario's namespace unless
    /// [`Scenario::probes_in`] moved them.
    pub probe_namespace: String,
    /// The cluster: the shared test bed's, or a scenario's own.
    pub kubeconfig: PathBuf,
    pub rt: tokio::runtime::Runtime,
    pub client: kube::Client,
    operator: Option<Child>,
    burn_in: Option<tokio::task::JoinHandle<()>>,
    pub log: PathBuf,
}

/// A node as the scenario sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Seen {
    pub state: Option<String>,
    pub reason: Option<String>,
    pub tainted: bool,
    pub wave: Option<String>,
}

impl Scenario {
    /// A scenario named `name` (short, DNS-safe, unique among the tests).
    pub fn new(name: &str) -> Scenario {
        Scenario::on(name, &testbed().kubeconfig)
    }

    /// A scenario on another cluster (with gpufleet's CRDs installed).
    pub fn on(name: &str, kubeconfig: &std::path::Path) -> Scenario {
        Scenario::with_probe_delay(name, kubeconfig, Duration::from_millis(500))
    }

    /// A scenario whose probes run for `delay` before they report.
    pub fn with_probe_delay(name: &str, kubeconfig: &std::path::Path, delay: Duration) -> Scenario {
        let tb = testbed();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let kubeconfig = kubeconfig.to_path_buf();
        let path = kubeconfig.clone();
        let client = rt.block_on(async move {
            let file = kube::config::Kubeconfig::read_from(&path).expect("kubeconfig");
            let config = kube::Config::from_custom_kubeconfig(file, &Default::default())
                .await
                .expect("config");
            kube::Client::try_from(config).expect("client")
        });
        tb.kubectl_with(&kubeconfig, &["create", "namespace", name])
            .run();
        // Probe pods run as the probe ServiceAccount; the test bed makes
        // no account by itself.
        for account in ["default", gpufleet::operator::PROBE_SERVICE_ACCOUNT] {
            tb.kubectl_with(
                &kubeconfig,
                &["-n", name, "create", "serviceaccount", account],
            )
            .run();
        }
        let burn_in = rt.spawn(simulate::burn_in(client.clone(), name.to_string(), delay));
        Scenario {
            name: name.to_string(),
            probe_namespace: name.to_string(),
            kubeconfig,
            rt,
            client,
            operator: None,
            burn_in: Some(burn_in),
            log: scratch_dir().join(format!("operator-{name}.log")),
        }
    }

    /// Moves the probe pods to `namespace` (which must exist, with the
    /// probe ServiceAccount): the operators this scenario starts get
    /// `--probe-namespace`, and the burn-in stand-in answers there.
    pub fn probes_in(mut self, namespace: &str, delay: Duration) -> Scenario {
        if let Some(task) = self.burn_in.take() {
            task.abort();
        }
        self.burn_in = Some(self.rt.spawn(simulate::burn_in(
            self.client.clone(),
            namespace.to_string(),
            delay,
        )));
        self.probe_namespace = namespace.to_string();
        self
    }

    /// `domains` healthy GB200 domains of `per_domain` nodes for `batch`:
    /// nodes `{name}-d{d}-n{n}` in cliques `{name}-c{d}`.
    pub fn fleet(&self, batch: &str, domains: usize, per_domain: usize) -> Vec<SimNode> {
        (0..domains)
            .flat_map(|d| {
                (0..per_domain).map(move |n| {
                    SimNode::gb200(
                        format!("{}-d{d}-n{n:02}", self.name),
                        format!("{}-c{d}", self.name),
                    )
                })
            })
            .map(|node| self.labelled(node, batch))
            .collect()
    }

    /// Labels a node for this scenario's pool and `batch`.
    pub fn labelled(&self, node: SimNode, batch: &str) -> SimNode {
        node.label(TEST_LABEL, &self.name)
            .label("gpufleet.io/pool", &self.name)
            .label("gpufleet.io/batch", batch)
    }

    pub fn create_nodes(&self, nodes: &[SimNode]) {
        self.rt
            .block_on(simulate::create_nodes(&self.client, nodes, 16))
            .expect("creating nodes");
        // kwok makes them Ready.
        self.wait_until("kwok makes the nodes Ready", Duration::from_secs(60), |s| {
            let states = s.rt.block_on(s.nodes());
            nodes.iter().all(|n| {
                states.iter().any(|node| {
                    node.metadata.name.as_deref() == Some(n.name.as_str())
                        && node
                            .status
                            .as_ref()
                            .and_then(|st| st.conditions.as_ref())
                            .is_some_and(|cs| {
                                cs.iter().any(|c| c.type_ == "Ready" && c.status == "True")
                            })
                })
            })
        });
    }

    /// The pool of this scenario: GB200, domains of 18 (16 healthy needed),
    /// a probe (120 s timeout from its start: room for a busy test bed; no retry) and a 1 s soak. `extra` is YAML
    /// merged over the spec.
    pub fn pool_yaml(&self, extra: &str) -> String {
        let base = format!(
            r#"
apiVersion: gpufleet.io/v1alpha1
kind: GpuPool
metadata:
  name: {name}
  labels: {{{TEST_LABEL}: {name}}}
spec:
  nodeSelector: {{matchLabels: {{gpufleet.io/pool: {name}}}}}
  hardware: {{gpuProduct: [NVIDIA-GB200, NVIDIA-GB300], gpusPerNode: 4, minDriverVersion: "570.133.20"}}
  topology: {{nodesPerDomain: 18, minHealthyNodesPerDomain: 16}}
  healthChecks:
    unhealthyConditions: [{{type: GpuXidError}}]
    probe:
      timeoutSeconds: 120
      retries: 0
      template: {{spec: {{containers: [{{name: burn-in, image: busybox}}]}}}}
    soakSeconds: 1
"#,
            name = self.name
        );
        merge_yaml(&base, extra)
    }

    /// A batch of this scenario's pool; `extra` is YAML merged over it.
    pub fn batch_yaml(&self, batch: &str, extra: &str) -> String {
        let base = format!(
            r#"
apiVersion: gpufleet.io/v1alpha1
kind: RolloutBatch
metadata:
  name: {batch}
  labels: {{{TEST_LABEL}: {name}}}
spec:
  poolRef: {name}
  nodeSelector: {{matchLabels: {{gpufleet.io/batch: {batch}}}}}
  waves: [{{nodes: 18}}, {{percent: 50}}, {{percent: 100}}]
  maxConcurrent: 18
  maxFailuresPerWave: 0
"#,
            name = self.name
        );
        merge_yaml(&base, extra)
    }

    /// kubectl against this scenario's cluster.
    pub fn kubectl(&self, args: &[&str]) -> super::Kubectl {
        testbed().kubectl_with(&self.kubeconfig, args)
    }

    /// `kubectl apply -f -` of a YAML document.
    pub fn apply(&self, yaml: &str) {
        self.kubectl(&["apply", "-f", "-"])
            .stdin(yaml.to_string())
            .succeeds();
    }

    /// Starts this scenario's operator (a separate `gpufleet run` process).
    pub fn start_operator(&mut self) {
        self.start_operator_with(&[]);
    }

    /// Starts the scenario's operator with `extra` flags.
    pub fn start_operator_with(&mut self, extra: &[&str]) {
        let child = self.spawn_operator(extra);
        assert!(self.operator.is_none(), "operator already running");
        self.operator = Some(child);
    }

    /// A `gpufleet run` process for this scenario with `extra` flags; the
    /// caller owns it. Logs go to [`Scenario::log`].
    pub fn spawn_operator(&self, extra: &[&str]) -> Child {
        self.spawn_operator_as(&self.kubeconfig.clone(), extra)
    }

    /// Like [`Scenario::spawn_operator`], signed in with another kubeconfig
    /// (a service account's, say).
    pub fn spawn_operator_as(&self, kubeconfig: &std::path::Path, extra: &[&str]) -> Child {
        let log = File::options()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("operator log");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_gpufleet"));
        cmd.args(["run", "--kubeconfig"])
            .arg(kubeconfig)
            .args(["--namespace", &self.name])
            .args(["--probe-namespace", &self.probe_namespace])
            .args(["--selector", &format!("{TEST_LABEL}={}", self.name)])
            .args(["--node-selector", &format!("{TEST_LABEL}={}", self.name)])
            // The watcher's own reconnects (idle timeouts, errors) show in the log.
            .args(["--log-level", "info,kube_runtime::watcher=debug"]);
        if !extra.contains(&"--metrics-addr") {
            cmd.args(["--metrics-addr", ""]);
        }
        if !extra.contains(&"--health-addr") {
            cmd.args(["--health-addr", ""]);
        }
        cmd.args(extra)
            .current_dir(repo())
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("starting gpufleet run")
    }

    /// Is this scenario's operator still running?
    pub fn operator_alive(&mut self) -> bool {
        self.operator
            .as_mut()
            .is_some_and(|c| c.try_wait().ok().flatten().is_none())
    }

    /// SIGKILL, as a node failure or OOM kill would.
    pub fn kill_operator(&mut self) {
        if let Some(mut child) = self.operator.take() {
            child.kill().expect("killing the operator");
            child.wait().expect("reaping the operator");
        }
    }

    pub fn batch(&self, name: &str) -> RolloutBatch {
        let api: Api<RolloutBatch> = Api::all(self.client.clone());
        self.rt
            .block_on(api.get(name))
            .unwrap_or_else(|e| panic!("getting batch {name}: {e}"))
    }

    pub fn pool(&self) -> GpuPool {
        let api: Api<GpuPool> = Api::all(self.client.clone());
        self.rt.block_on(api.get(&self.name)).expect("pool")
    }

    /// The condition of a batch, as (status, reason, message).
    /// Read as JSON, so a batch that does not decode has conditions too.
    pub fn condition(&self, batch: &str, type_: &str) -> Option<(String, String, String)> {
        let api: Api<kube::api::DynamicObject> = Api::all_with(
            self.client.clone(),
            &kube::api::ApiResource::erase::<RolloutBatch>(&()),
        );
        let object = self
            .rt
            .block_on(api.get(batch))
            .unwrap_or_else(|e| panic!("getting batch {batch}: {e}"));
        let conditions = object.data["status"]["conditions"].as_array()?.clone();
        let text = |c: &serde_json::Value, k: &str| c[k].as_str().unwrap_or_default().to_string();
        conditions
            .iter()
            .find(|c| c["type"] == type_)
            .map(|c| (text(c, "status"), text(c, "reason"), text(c, "message")))
    }

    /// Rack test pods of this scenario's nodes still running (or yet to
    /// run): the trays under a rack test.
    pub async fn group_pods(&self) -> usize {
        let api: Api<k8s_openapi::api::core::v1::Pod> =
            Api::namespaced(self.client.clone(), &self.probe_namespace);
        api.list(&ListParams::default().labels("gpufleet.io/group"))
            .await
            .expect("listing pods")
            .items
            .iter()
            .filter(|p| {
                p.spec
                    .as_ref()
                    .and_then(|s| s.node_name.as_deref())
                    .is_some_and(|n| n.starts_with(&format!("{}-", self.name)))
                    && !matches!(
                        p.status.as_ref().and_then(|s| s.phase.as_deref()),
                        Some("Succeeded" | "Failed")
                    )
            })
            .count()
    }

    pub async fn nodes(&self) -> Vec<Node> {
        let api: Api<Node> = Api::all(self.client.clone());
        api.list(&ListParams::default().labels(&format!("{TEST_LABEL}={}", self.name)))
            .await
            .expect("listing nodes")
            .items
    }

    /// Every node of this scenario: state, reason, taint, wave.
    pub fn seen(&self) -> BTreeMap<String, Seen> {
        self.rt
            .block_on(self.nodes())
            .into_iter()
            .map(|n| {
                let labels = n.metadata.labels.clone().unwrap_or_default();
                let annotations = n.metadata.annotations.clone().unwrap_or_default();
                let tainted = n
                    .spec
                    .as_ref()
                    .and_then(|s| s.taints.as_ref())
                    .is_some_and(|ts| ts.iter().any(|t| t.key == "gpufleet.io/onboarding"));
                (
                    n.metadata.name.clone().unwrap_or_default(),
                    Seen {
                        state: labels.get("gpufleet.io/state").cloned(),
                        reason: annotations.get("gpufleet.io/reason").cloned(),
                        tainted,
                        wave: annotations.get("gpufleet.io/wave").cloned(),
                    },
                )
            })
            .collect()
    }

    /// Node names per state (`-` for none).
    pub fn by_state(&self) -> BTreeMap<String, Vec<String>> {
        let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (name, seen) in self.seen() {
            out.entry(seen.state.unwrap_or_else(|| "-".into()))
                .or_default()
                .push(name);
        }
        out
    }

    pub fn count(&self, state: &str) -> usize {
        self.by_state().get(state).map_or(0, Vec::len)
    }

    /// The probe pods in this scenario's probe namespace.
    pub fn probe_pods(&self) -> Vec<Pod> {
        let api: Api<Pod> = Api::namespaced(self.client.clone(), &self.probe_namespace);
        self.rt
            .block_on(api.list(&ListParams::default()))
            .expect("listing pods")
            .items
    }

    /// Polls `check` every 250 ms until it holds; panics after `timeout`
    /// with what the batch and nodes looked like, and the operator's log.
    pub fn wait_until(
        &self,
        what: &str,
        timeout: Duration,
        mut check: impl FnMut(&Scenario) -> bool,
    ) {
        let start = Instant::now();
        while start.elapsed() < timeout {
            if check(self) {
                return;
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(30).collect();
        // Which part of the loop stood still: probes without a result (the
        // burn-in stand-in), with a result but still running (kwok), or
        // finished but not acted on (the operator).
        let mut probes = BTreeMap::<String, u32>::new();
        let api: Api<Pod> = Api::namespaced(self.client.clone(), &self.probe_namespace);
        if let Ok(list) = self.rt.block_on(api.list(&ListParams::default())) {
            for pod in list.items {
                let result = pod
                    .annotations()
                    .get(gpufleet::simulate::PROBE_RESULT)
                    .map_or("no result", |_| "result");
                let phase = pod
                    .status
                    .and_then(|s| s.phase)
                    .unwrap_or_else(|| "no phase".into());
                let gone = if pod.metadata.deletion_timestamp.is_some() {
                    ", deleting"
                } else {
                    ""
                };
                *probes
                    .entry(format!("{result}, {phase}{gone}"))
                    .or_default() += 1;
            }
        }
        panic!(
            "{}: timed out after {timeout:?} waiting until {what}\nnodes by state: {:?}\nprobe pods: {probes:?}\noperator log (last lines, newest first):\n{}",
            self.name,
            self.by_state()
                .iter()
                .map(|(k, v)| (k.clone(), v.len()))
                .collect::<BTreeMap<_, _>>(),
            tail.join("\n")
        );
    }

    /// Waits for the batch's Ready condition to be True.
    pub fn wait_ready(&self, batch: &str, timeout: Duration) {
        self.wait_until(&format!("batch {batch} is Ready"), timeout, |s| {
            s.condition(batch, "Ready")
                .is_some_and(|(status, _, _)| status == "True")
        });
    }

    /// The audit log of this scenario's cluster, when it has one.
    pub fn audit_text(&self) -> Option<String> {
        let path = if self.kubeconfig == testbed().kubeconfig {
            testbed().audit_log.clone()?
        } else {
            self.kubeconfig.parent()?.join("audit.log")
        };
        std::fs::read_to_string(path).ok()
    }

    /// Successful write requests to this scenario's nodes by gpufleet, per
    /// node, from the API server's audit log.
    pub fn node_writes(&self) -> Option<BTreeMap<String, u32>> {
        let text = self.audit_text()?;
        let prefix = format!("{}-", self.name);
        let mut writes = BTreeMap::new();
        for line in text.lines() {
            let Ok(entry) = serde_json::from_str::<serde_json::Value>(line) else {
                continue;
            };
            if entry["stage"] != "ResponseComplete" || entry["objectRef"]["resource"] != "nodes" {
                continue;
            }
            let verb = entry["verb"].as_str().unwrap_or_default();
            let agent = entry["userAgent"].as_str().unwrap_or_default();
            let ok = entry["responseStatus"]["code"]
                .as_u64()
                .is_some_and(|c| c < 300);
            let name = entry["objectRef"]["name"].as_str().unwrap_or_default();
            if matches!(verb, "patch" | "update")
                && agent.starts_with("gpufleet/")
                && ok
                && name.starts_with(&prefix)
            {
                *writes.entry(name.to_string()).or_insert(0) += 1;
            }
        }
        Some(writes)
    }

    /// Probe pod creates per pod name in this scenario's probe namespace, from
    /// the audit log: those that succeeded, and those cut short by their
    /// client going away (which may have made the pod; counted 0).
    pub fn probe_creates(&self) -> Option<BTreeMap<String, u32>> {
        let text = self.audit_text()?;
        let mut creates = BTreeMap::new();
        for line in text.lines() {
            let Ok(entry) = serde_json::from_str::<serde_json::Value>(line) else {
                continue;
            };
            // 504 is the API server's answer when the client went away
            // mid-request (an operator killed while creating): the pod may
            // well have been made, so it counts as made, not as made twice.
            let code = entry["responseStatus"]["code"].as_u64().unwrap_or(u64::MAX);
            let ok = code < 300 || code == 504;
            // A dry run (asked before a node starts) makes no pod.
            let dry_run = entry["requestURI"]
                .as_str()
                .is_some_and(|uri| uri.contains("dryRun="));
            if entry["stage"] == "ResponseComplete"
                && entry["verb"] == "create"
                && !dry_run
                && entry["objectRef"]["resource"] == "pods"
                && entry["objectRef"]["namespace"] == self.probe_namespace.as_str()
                && ok
            {
                let name = entry["objectRef"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string();
                *creates.entry(name).or_insert(0) += u32::from(code < 300);
            }
        }
        Some(creates)
    }

    /// The probe pods of this scenario that ran, from the audit log: those
    /// whose status the probe stand-in wrote (so the pod existed and its
    /// probe ran), however their create ended. A create can be cut short
    /// by its client being killed (504) or by the API server stopping, and
    /// still make the pod the next replica adopts.
    pub fn probes_that_ran(&self) -> Option<std::collections::BTreeSet<String>> {
        let text = self.audit_text()?;
        let mut ran = std::collections::BTreeSet::new();
        for line in text.lines() {
            let Ok(entry) = serde_json::from_str::<serde_json::Value>(line) else {
                continue;
            };
            let object = &entry["objectRef"];
            let code = entry["responseStatus"]["code"].as_u64().unwrap_or(u64::MAX);
            if entry["stage"] == "ResponseComplete"
                && object["resource"] == "pods"
                && object["subresource"] == "status"
                && object["namespace"] == self.probe_namespace.as_str()
                && matches!(entry["verb"].as_str(), Some("patch" | "update"))
                && code < 300
            {
                ran.insert(object["name"].as_str().unwrap_or_default().to_string());
            }
        }
        Some(ran)
    }
}

impl Drop for Scenario {
    fn drop(&mut self) {
        self.kill_operator();
        if let Some(task) = self.burn_in.take() {
            task.abort();
        }
    }
}

/// `GET path` on a local HTTP endpoint: (status code, body).
pub fn http_get(addr: &str, path: &str) -> std::io::Result<(u16, String)> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let code = response
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((code, body))
}

/// A free port on 127.0.0.1, as `127.0.0.1:PORT`.
pub fn free_addr() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("binding a free port");
    listener.local_addr().expect("local address").to_string()
}

/// Merges YAML `extra` (a mapping) over `base`; `null` removes a key.
pub fn merge_yaml(base: &str, extra: &str) -> String {
    fn deep(into: &mut serde_json::Value, from: serde_json::Value) {
        match (into, from) {
            (serde_json::Value::Object(a), serde_json::Value::Object(b)) => {
                for (k, v) in b {
                    if v.is_null() {
                        a.remove(&k);
                    } else {
                        deep(a.entry(k).or_insert(serde_json::Value::Null), v);
                    }
                }
            }
            (slot, v) => *slot = v,
        }
    }
    let mut doc: serde_json::Value = serde_norway::from_str(base).expect("base YAML");
    if !extra.trim().is_empty() {
        deep(&mut doc, serde_norway::from_str(extra).expect("extra YAML"));
    }
    serde_json::to_string(&doc).expect("JSON")
}
