//! GitOps: the Kustomize base and Argo CD files of `examples/gitops/` build
//! and apply, and the health that kstatus (Flux, kpt) and the Argo CD Lua
//! checks read from real pools and batches is the one their docs promise.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::{Value, json};

use crate::support::{Testbed, command, helm, repo, testbed, testbed_tool};
use crate::validation::{batch, pool};

fn gitops() -> PathBuf {
    repo().join("examples/gitops")
}

fn documents(yaml: &str) -> Vec<Value> {
    serde_norway::Deserializer::from_str(yaml)
        .map(|doc| Value::deserialize(doc).expect("a YAML document"))
        .filter(|doc| !doc.is_null())
        .collect()
}

/// A condition as gpufleet writes it.
fn condition(kind: &str, status: &str, reason: &str, message: &str) -> Value {
    json!({"type": kind, "status": status, "reason": reason, "message": message,
           "lastTransitionTime": "2026-11-27T00:00:00Z", "observedGeneration": 1})
}

/// The shapes a batch's status takes, as gpufleet reports them.
fn batch_status(shape: &str) -> Value {
    let conditions = match shape {
        "progressing" => vec![
            condition(
                "Ready",
                "False",
                "WaveInProgress",
                "wave 1 of 3: 18 nodes validating",
            ),
            condition(
                "Reconciling",
                "True",
                "WaveInProgress",
                "wave 1 of 3: 18 nodes validating",
            ),
            condition("Stalled", "False", "WaveInProgress", ""),
        ],
        "done" => vec![
            condition(
                "Ready",
                "True",
                "AllWavesComplete",
                "3 of 3 waves done: 216 nodes ready",
            ),
            condition("Reconciling", "False", "AllWavesComplete", ""),
            condition("Stalled", "False", "AllWavesComplete", ""),
        ],
        "stalled" => vec![
            condition("Ready", "False", "FailureBudgetExceeded", "wave 1 halted"),
            condition("Reconciling", "False", "FailureBudgetExceeded", ""),
            condition(
                "Stalled",
                "True",
                "FailureBudgetExceeded",
                "wave 1: 3 nodes failed, the budget is 1; fix or replace them, then raise maxFailuresPerWave or delete the failed nodes",
            ),
        ],
        "paused" => vec![
            condition("Ready", "False", "Paused", "paused in wave 2 of 3"),
            condition("Reconciling", "False", "Paused", ""),
            condition("Stalled", "False", "Paused", ""),
        ],
        other => panic!("no batch shape {other}"),
    };
    json!({"status": {"observedGeneration": 1, "currentWave": 1, "totalWaves": 3,
                      "conditions": conditions}})
}

/// Creates a batch, sets its status to `shape` through the status
/// subresource, as gpufleet would, and returns it as the API server has it.
fn batch_in(tb: &Testbed, name: &str, shape: &str) -> Value {
    let mut object = batch(name, "gitops-pool");
    if shape == "paused" {
        object["spec"]["paused"] = json!(true);
    }
    tb.kubectl(&["apply", "-f", "-"])
        .stdin(object.to_string())
        .succeeds();
    set_status(tb, "rolloutbatch", name, batch_status(shape))
}

fn set_status(tb: &Testbed, kind: &str, name: &str, status: Value) -> Value {
    tb.kubectl(&[
        "patch",
        kind,
        name,
        "--subresource=status",
        "--type=merge",
        "-p",
    ])
    .arg(status.to_string())
    .succeeds();
    get(tb, kind, name)
}

fn get(tb: &Testbed, kind: &str, name: &str) -> Value {
    let ran = tb.kubectl(&["get", kind, name, "-o", "json"]).succeeds();
    serde_json::from_str(&ran.stdout).expect("kubectl prints JSON")
}

/// A batch whose spec changed after gpufleet last reported on it.
fn stale_batch_in(tb: &Testbed, name: &str) -> Value {
    batch_in(tb, name, "done");
    tb.kubectl(&["patch", "rolloutbatch", name, "--type=merge", "-p"])
        .arg(json!({"spec": {"approvedWaves": 2}}).to_string())
        .succeeds();
    let object = get(tb, "rolloutbatch", name);
    assert_eq!(object["metadata"]["generation"], 2, "{object}");
    object
}

/// kstatus's verdict on an object: (status, message).
fn kstatus(object: &Value) -> (String, String) {
    let ran = command(testbed_tool("kstatus"), &[])
        .stdin(object.to_string())
        .succeeds();
    let verdict: Value = serde_json::from_str(&ran.stdout).expect("kstatus prints JSON");
    (
        verdict["status"].as_str().expect("status").to_string(),
        verdict["message"].as_str().unwrap_or_default().to_string(),
    )
}

/// Converts JSON to Lua values as Argo CD hands objects to its health
/// scripts: objects and arrays as tables, null as nil.
fn to_lua(lua: &mlua::Lua, value: &Value) -> mlua::Result<mlua::Value> {
    Ok(match value {
        Value::Null => mlua::Value::Nil,
        Value::Bool(b) => mlua::Value::Boolean(*b),
        Value::Number(n) => match n.as_i64() {
            Some(i) => mlua::Value::Integer(i),
            None => mlua::Value::Number(n.as_f64().expect("a JSON number")),
        },
        Value::String(s) => mlua::Value::String(lua.create_string(s)?),
        Value::Array(items) => {
            let table = lua.create_table()?;
            for (i, item) in items.iter().enumerate() {
                table.raw_set(i + 1, to_lua(lua, item)?)?;
            }
            mlua::Value::Table(table)
        }
        Value::Object(map) => {
            let table = lua.create_table()?;
            for (key, item) in map {
                table.raw_set(key.as_str(), to_lua(lua, item)?)?;
            }
            mlua::Value::Table(table)
        }
    })
}

/// Runs an Argo CD health script on an object: (status, message).
fn argocd_health(script: &Path, object: &Value) -> (String, String) {
    let source =
        std::fs::read_to_string(script).unwrap_or_else(|e| panic!("{}: {e}", script.display()));
    let lua = mlua::Lua::new();
    let run = || -> mlua::Result<(String, String)> {
        lua.globals().set("obj", to_lua(&lua, object)?)?;
        let hs: mlua::Table = lua
            .load(source.as_str())
            .set_name(script.display().to_string())
            .eval()?;
        Ok((
            hs.get("status")?,
            hs.get::<Option<String>>("message")?.unwrap_or_default(),
        ))
    };
    run().unwrap_or_else(|e| panic!("{}: {e}", script.display()))
}

fn rolloutbatch_lua() -> PathBuf {
    gitops().join("argocd/health-rolloutbatch.lua")
}

fn gpupool_lua() -> PathBuf {
    gitops().join("argocd/health-gpupool.lua")
}

const STALLED_MESSAGE: &str = "wave 1: 3 nodes failed, the budget is 1; fix or replace them, then raise maxFailuresPerWave or delete the failed nodes";

/// kstatus (what Flux and kpt use) reads a rolling batch as InProgress, a
/// finished one as Current and a stalled one as Failed.
#[test]
fn kstatus_reads_rolloutbatch_conditions() {
    let tb = testbed();
    let cases = [
        ("kstatus-progressing", "progressing", "InProgress"),
        ("kstatus-done", "done", "Current"),
        ("kstatus-stalled", "stalled", "Failed"),
    ];
    for (name, shape, expected) in cases {
        let object = batch_in(tb, name, shape);
        let (status, message) = kstatus(&object);
        assert_eq!(status, expected, "{shape}: {message}");
        if shape == "stalled" {
            assert_eq!(message, STALLED_MESSAGE);
        }
    }
    // A spec change gpufleet has not seen yet is still in progress, however
    // done the old status says it is.
    let (status, message) = kstatus(&stale_batch_in(tb, "kstatus-stale"));
    assert_eq!(status, "InProgress", "{message}");
    assert!(message.contains("generation"), "{message}");
    // Not checked: a batch gpufleet has never written a status to. kstatus
    // reads "no observedGeneration" as Current, so that needs the CRD to
    // default `status` to `{observedGeneration: 0}`, which the API does not
    // do yet (the Argo CD check already says Progressing).
}

/// The Argo CD health checks give the same verdicts on the same shapes.
#[test]
fn argocd_health_checks_read_rolloutbatch_conditions() {
    let tb = testbed();
    let cases = [
        (
            "argocd-progressing",
            "progressing",
            "Progressing",
            "wave 1 of 3: 18 nodes validating",
        ),
        (
            "argocd-done",
            "done",
            "Healthy",
            "3 of 3 waves done: 216 nodes ready",
        ),
        ("argocd-stalled", "stalled", "Degraded", STALLED_MESSAGE),
        (
            "argocd-paused",
            "paused",
            "Suspended",
            "Paused: set spec.paused to false to resume",
        ),
    ];
    for (name, shape, expected, expected_message) in cases {
        let object = batch_in(tb, name, shape);
        let (status, message) = argocd_health(&rolloutbatch_lua(), &object);
        assert_eq!(
            (status.as_str(), message.as_str()),
            (expected, expected_message),
            "{shape}"
        );
    }
    let (status, message) = argocd_health(&rolloutbatch_lua(), &stale_batch_in(tb, "argocd-stale"));
    assert_eq!(status, "Progressing");
    assert_eq!(message, "Waiting for gpufleet to observe generation 2");
    tb.kubectl(&["apply", "-f", "-"])
        .stdin(batch("argocd-new", "gitops-pool").to_string())
        .succeeds();
    let (status, _) = argocd_health(&rolloutbatch_lua(), &get(tb, "rolloutbatch", "argocd-new"));
    assert_eq!(status, "Progressing");
}

/// Pools: Ready is Healthy (kstatus: Current), Stalled is Degraded (Failed),
/// anything else Progressing (InProgress).
#[test]
fn argocd_and_kstatus_read_gpupool_conditions() {
    let tb = testbed();
    let status = |conditions: Vec<Value>| json!({"status": {"observedGeneration": 1, "conditions": conditions}});
    let cases = [
        (
            "gitops-pool-ready",
            status(vec![
                condition("Ready", "True", "NodesReady", "216 of 216 nodes ready"),
                condition("Stalled", "False", "NodesReady", ""),
            ]),
            "Healthy",
            "Current",
        ),
        (
            "gitops-pool-tripped",
            status(vec![
                condition("Ready", "False", "CircuitBreakerTripped", "rollouts halted"),
                condition(
                    "Stalled",
                    "True",
                    "CircuitBreakerTripped",
                    "22 of 216 nodes failed within 1h (limit 21): every rollout of the pool is halted",
                ),
            ]),
            "Degraded",
            "Failed",
        ),
        (
            "gitops-pool-filling",
            status(vec![
                condition("Ready", "False", "NodesPending", "40 of 216 nodes ready"),
                condition("Stalled", "False", "NodesPending", ""),
            ]),
            "Progressing",
            "InProgress",
        ),
    ];
    for (name, status, argo, flux) in cases {
        tb.kubectl(&["apply", "-f", "-"])
            .stdin(pool(name).to_string())
            .succeeds();
        let object = set_status(tb, "gpupool", name, status);
        let (health, message) = argocd_health(&gpupool_lua(), &object);
        assert_eq!(health, argo, "{name}: {message}");
        assert_eq!(kstatus(&object).0, flux, "{name}");
        if argo == "Degraded" {
            assert!(
                message.contains("every rollout of the pool is halted"),
                "{message}"
            );
        }
    }
}

/// argocd-cm.yaml carries exactly the .lua files beside it.
#[test]
fn argocd_cm_snippet_holds_the_lua_files() {
    let dir = gitops().join("argocd");
    let text = std::fs::read_to_string(dir.join("argocd-cm.yaml")).expect("argocd-cm.yaml");
    let cm: Value = serde_norway::from_str(&text).expect("argocd-cm.yaml parses");
    assert_eq!(cm["kind"], "ConfigMap");
    assert_eq!(cm["metadata"]["name"], "argocd-cm");
    for (kind, file) in [
        ("GpuPool", "health-gpupool.lua"),
        ("RolloutBatch", "health-rolloutbatch.lua"),
    ] {
        let key = format!("resource.customizations.health.gpufleet.io_{kind}");
        let lua = std::fs::read_to_string(dir.join(file)).expect("lua file");
        assert!(
            cm["data"][&key].as_str() == Some(lua.as_str()),
            "argocd-cm.yaml's {key} differs from {file}: run examples/gitops/argocd/render-argocd-cm.sh"
        );
    }
}

/// The Kustomize base builds (with the load restrictor off, as its comment
/// says) into the CRDs and the examples, and the API server accepts them.
#[test]
fn kustomize_base_builds_and_the_api_server_accepts_it() {
    let tb = testbed();
    let built = tb
        .kubectl(&["kustomize", "--load-restrictor=LoadRestrictionsNone"])
        .arg(gitops())
        .succeeds()
        .stdout;
    let mut names: Vec<String> = documents(&built)
        .iter()
        .map(|d| {
            format!(
                "{}/{}",
                d["kind"].as_str().unwrap(),
                d["metadata"]["name"].as_str().unwrap()
            )
        })
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "CustomResourceDefinition/gpupools.gpufleet.io",
            "CustomResourceDefinition/rolloutbatches.gpufleet.io",
            "GpuPool/gb200-east",
            "GpuPool/gb300-minimal",
            "RolloutBatch/gb300-delivery-7",
            "RolloutBatch/row12",
        ]
    );
    tb.kubectl(&["apply", "--dry-run=server", "-f", "-"])
        .stdin(built)
        .succeeds();
}

/// The Argo CD Applications point at folders this repository has, and the
/// chart accepts the values the chart Application passes.
#[test]
fn argocd_applications_point_at_this_repository() {
    let text = std::fs::read_to_string(gitops().join("argocd/applications.yaml"))
        .expect("applications.yaml");
    let apps = documents(&text);
    assert_eq!(apps.len(), 2);
    for app in &apps {
        assert_eq!(app["apiVersion"], "argoproj.io/v1alpha1");
        assert_eq!(app["kind"], "Application");
        assert!(
            app["metadata"]["finalizers"].is_null(),
            "deleting the Application must not delete the CRDs"
        );
        let path = app["spec"]["source"]["path"].as_str().expect("source.path");
        assert!(
            repo().join(path).is_dir(),
            "{path} is not a folder of the repository"
        );
        if let Some(values) = app["spec"]["source"]["helm"]["valuesObject"].as_object() {
            assert_eq!(
                values["crds"]["enabled"], false,
                "the fleet Application owns the CRDs"
            );
            let file = crate::support::scratch_dir().join("argocd-values.json");
            std::fs::write(&file, Value::Object(values.clone()).to_string()).expect("write values");
            helm(&["template", "gpufleet"])
                .arg(repo().join(path))
                .arg("--values")
                .arg(&file)
                .succeeds();
        }
    }
}
