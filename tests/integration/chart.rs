//! The Helm chart (`charts/gpufleet`) and `install.yaml`: they come from the
//! one CRD renderer, pass `helm lint --strict`, reject bad values, install,
//! upgrade and uninstall on the real API server, and grant the operator only
//! what it uses. Each test that installs uses a namespace and release of its
//! own, with the chart's CRDs off, except the one that owns the CRDs.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use serde::Deserialize;
use serde_json::{Value, json};

use crate::support::audit::{self, Access};
use crate::support::{Testbed, helm, repo, testbed};

const REGENERATE: &str = "run charts/render.sh and commit the result";

fn chart() -> PathBuf {
    repo().join("charts/gpufleet")
}

/// Every document of a YAML stream, empty ones left out.
fn documents(yaml: &str) -> Vec<Value> {
    serde_norway::Deserializer::from_str(yaml)
        .map(|doc| Value::deserialize(doc).expect("a YAML document"))
        .filter(|doc| !doc.is_null())
        .collect()
}

/// `helm template RELEASE charts/gpufleet --namespace NAMESPACE ARGS...`.
fn template(release: &str, namespace: &str, args: &[&str]) -> Vec<Value> {
    let ran = helm(&["template", release])
        .arg(chart())
        .args(["--namespace", namespace])
        .args(args)
        .succeeds();
    documents(&ran.stdout)
}

/// The one object of this kind and name.
fn find<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    let found: Vec<_> = docs
        .iter()
        .filter(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .collect();
    assert_eq!(found.len(), 1, "expected one {kind} {name}");
    found[0]
}

fn kinds(docs: &[Value]) -> Vec<String> {
    docs.iter()
        .map(|d| format!("{}/{}", d["kind"].as_str().unwrap(), d["metadata"]["name"]))
        .collect()
}

fn container(docs: &[Value], deployment: &str) -> Value {
    find(docs, "Deployment", deployment)["spec"]["template"]["spec"]["containers"][0].clone()
}

fn run_args(container: &Value) -> Vec<String> {
    serde_json::from_value(container["args"].clone()).expect("args are strings")
}

/// Makes a fresh namespace (with no controller manager, tests never delete one).
fn namespace(tb: &Testbed, name: &str) {
    tb.kubectl(&["create", "namespace", name]).succeeds();
}

/// Makes a fresh namespace as `kubectl apply` would, so that applying the
/// chart's Namespace over it later updates it without a warning.
fn applied_namespace(tb: &Testbed, name: &str) {
    tb.kubectl(&["create", "namespace", name, "--save-config"])
        .succeeds();
}

/// `helm install` into a fresh namespace, the CRDs left to the test bed.
fn install(tb: &Testbed, release: &str, args: &[&str]) {
    namespace(tb, release);
    tb.helm(&["install", release])
        .arg(chart())
        .args(["--namespace", release, "--set", "crds.enabled=false"])
        .args(args)
        .succeeds();
}

// ------------------------------------------------------------ generated files

/// `files/crds/` holds exactly what the renderer prints.
#[test]
fn chart_crds_are_the_renderers_output() {
    let dir = chart().join("files/crds");
    let rendered = gpufleet::crds::render().expect("CRDs render");
    for crd in &rendered {
        let path = dir.join(&crd.file_name);
        let committed = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("{} is missing ({e}): {REGENERATE}", path.display()));
        assert!(
            committed == crd.yaml,
            "{} differs from `gpufleet crds`: {REGENERATE}",
            path.display()
        );
    }
    let mut extra: Vec<_> = std::fs::read_dir(&dir)
        .expect("files/crds exists")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|name| !rendered.iter().any(|crd| &crd.file_name == name))
        .collect();
    extra.sort();
    assert!(
        extra.is_empty(),
        "{} holds files the renderer does not make: {extra:?}: {REGENERATE}",
        dir.display()
    );
}

/// The CRD template passes the files through unchanged, adding only labels
/// and, unless `crds.keep` is off, the keep policy.
#[test]
fn chart_renders_the_crds_unchanged_with_the_keep_policy() {
    let strip = |mut crd: Value| {
        let meta = crd["metadata"].as_object_mut().expect("metadata");
        meta.remove("labels");
        meta.remove("annotations");
        crd
    };
    let expected: Vec<Value> = gpufleet::crds::render()
        .expect("CRDs render")
        .iter()
        .map(|crd| strip(documents(&crd.yaml).remove(0)))
        .collect();
    let docs = template("gpufleet", "gpufleet-system", &[]);
    let crds: Vec<&Value> = docs
        .iter()
        .filter(|d| d["kind"] == "CustomResourceDefinition")
        .collect();
    assert_eq!(crds.len(), expected.len(), "{:?}", kinds(&docs));
    for want in &expected {
        let name = &want["metadata"]["name"];
        let got = crds
            .iter()
            .find(|crd| &crd["metadata"]["name"] == name)
            .unwrap_or_else(|| panic!("the chart lacks CRD {name}"));
        assert_eq!(
            got["metadata"]["annotations"]["helm.sh/resource-policy"], "keep",
            "{name}"
        );
        assert_eq!(
            got["metadata"]["labels"]["app.kubernetes.io/part-of"],
            "gpufleet"
        );
        assert!(
            &strip((*got).clone()) == want,
            "the chart's CRD {name} differs from the renderer's"
        );
    }

    let docs = template("gpufleet", "gpufleet-system", &["--set", "crds.keep=false"]);
    let crd = find(&docs, "CustomResourceDefinition", "gpupools.gpufleet.io");
    assert!(crd["metadata"]["annotations"].is_null(), "{crd}");

    let docs = template(
        "gpufleet",
        "gpufleet-system",
        &["--set", "crds.enabled=false"],
    );
    assert!(
        docs.iter().all(|d| d["kind"] != "CustomResourceDefinition"),
        "{:?}",
        kinds(&docs)
    );
}

/// install.yaml is a Namespace followed by exactly `helm template` of the
/// chart's defaults into it.
#[test]
fn install_yaml_is_the_charts_defaults() {
    let path = repo().join("install.yaml");
    let committed = std::fs::read_to_string(&path).expect("install.yaml exists");
    let rendered = helm(&["template", "gpufleet"])
        .arg(chart())
        .args(["--namespace", "gpufleet-system"])
        .succeeds()
        .stdout;
    let Some(head) = committed.strip_suffix(rendered.as_str()) else {
        panic!("install.yaml is stale: {REGENERATE}");
    };
    let head = documents(head);
    assert_eq!(
        head,
        [json!({"apiVersion": "v1", "kind": "Namespace",
                "metadata": {"name": "gpufleet-system", "labels": {
                    "pod-security.kubernetes.io/enforce": "restricted",
                    "pod-security.kubernetes.io/enforce-version": "latest"}}})],
        "install.yaml must start with the gpufleet-system Namespace, enforcing \
         the restricted Pod Security standard: {REGENERATE}"
    );
    // Namespaced objects name their namespace, so `kubectl apply -f` puts
    // them there whatever the current context's namespace is: gpufleet's,
    // the probes', or `default` for the events Role.
    for doc in documents(&rendered) {
        let cluster_scoped = [
            "CustomResourceDefinition",
            "ClusterRole",
            "ClusterRoleBinding",
            "Namespace",
        ];
        let kind = doc["kind"].as_str().unwrap();
        if cluster_scoped.contains(&kind) {
            continue;
        }
        let namespace = doc["metadata"]["namespace"].as_str().unwrap_or_default();
        let expected = match (kind, doc["metadata"]["name"].as_str().unwrap()) {
            ("ServiceAccount", "gpufleet-probe") | ("Role" | "RoleBinding", "gpufleet-probes") => {
                "gpufleet-system-probes"
            }
            ("Role" | "RoleBinding", "gpufleet-events") => "default",
            _ => "gpufleet-system",
        };
        assert_eq!(namespace, expected, "{kind} {}", doc["metadata"]["name"]);
    }
}

/// The chart's README lists every value of values.yaml with its default,
/// and nothing that values.yaml lacks.
#[test]
fn chart_readme_lists_every_value_with_its_default() {
    let values_text = std::fs::read_to_string(chart().join("values.yaml")).expect("values.yaml");
    let values: Value = serde_norway::from_str(&values_text).expect("values.yaml parses");
    let readme = std::fs::read_to_string(chart().join("README.md")).expect("README.md");
    // Rows of the values table: | `key` | `default` | description |
    let rows: Vec<(String, Value)> = readme
        .lines()
        .filter_map(|line| {
            let cells: Vec<&str> = line.split(" | ").collect();
            let key = cells.first()?.strip_prefix("| `")?.strip_suffix('`')?;
            let default = cells.get(1)?.strip_prefix('`')?.strip_suffix('`')?;
            let default = serde_json::from_str(default)
                .unwrap_or_else(|e| panic!("README default of {key} is not JSON ({e})"));
            Some((key.to_string(), default))
        })
        .collect();
    assert!(!rows.is_empty(), "README.md has no values table");
    let lookup = |key: &str| {
        key.split('.')
            .try_fold(&values, |at, part| at.get(part))
            .cloned()
    };
    for (key, default) in &rows {
        let value = lookup(key)
            .unwrap_or_else(|| panic!("README.md lists `{key}`, which values.yaml lacks"));
        assert_eq!(&value, default, "README.md's default of `{key}`");
    }
    // Every value is in a row: itself, or an object above it documented whole.
    fn leaves(prefix: &str, value: &Value, out: &mut Vec<String>) {
        match value {
            Value::Object(map) if !map.is_empty() => {
                for (key, inner) in map {
                    let path = if prefix.is_empty() {
                        key.clone()
                    } else {
                        format!("{prefix}.{key}")
                    };
                    leaves(&path, inner, out);
                }
            }
            _ => out.push(prefix.to_string()),
        }
    }
    let mut all = Vec::new();
    leaves("", &values, &mut all);
    for leaf in all {
        let covered = rows
            .iter()
            .any(|(key, _)| leaf == *key || leaf.starts_with(&format!("{key}.")));
        assert!(covered, "README.md does not list `{leaf}` of values.yaml");
    }
}

// -------------------------------------------------------------- helm itself

#[test]
fn helm_lint_strict_passes() {
    let ran = helm(&["lint", "--strict"]).arg(chart()).succeeds();
    assert!(ran.stdout.contains("0 chart(s) failed"), "{}", ran.stdout);
    // With every optional part on, too.
    helm(&["lint", "--strict"])
        .arg(chart())
        .args([
            "--set",
            "metrics.serviceMonitor.enabled=true,replicaCount=1,leaderElection.enabled=false",
        ])
        .succeeds();
}

/// values.schema.json turns typos and wrong types into errors that name them.
#[test]
fn values_schema_rejects_typos_and_wrong_types() {
    let cases: &[(&[&str], &str)] = &[
        (&["--set", "replicaCount=abc"], "replicaCount"),
        (&["--set", "logLevl=debug"], "logLevl"),
        (&["--set", "image.tagg=v1"], "tagg"),
        (&["--set", "logFormat=xml"], "logFormat"),
        (&["--set", "metrics.port=70000"], "metrics/port"),
        (&["--set", "crds.enabled=yes"], "crds/enabled"),
        (
            &["--set", "securityContext.capabilites.drop={ALL}"],
            "capabilites",
        ),
        (&["--set-json", r#"tolerations=[{"keyy":"a"}]"#], "keyy"),
        (&["--set", "image.digest=latest"], "digest"),
    ];
    for (args, named) in cases {
        let ran = helm(&["template", "typo"]).arg(chart()).args(*args).fails();
        assert!(
            ran.stderr.contains(named),
            "helm template {args:?} failed without naming {named}:\n{}",
            ran.stderr
        );
    }
    // Replicas without a leader would all act at once.
    let ran = helm(&["template", "typo"])
        .arg(chart())
        .args(["--set", "leaderElection.enabled=false"])
        .fails();
    assert!(ran.stderr.contains("leaderElection"), "{}", ran.stderr);
}

/// Every value lands where it belongs in the rendered objects.
#[test]
fn chart_renders_values_into_the_deployment() {
    let docs = template("gpufleet", "gpufleet-system", &[]);
    let pod = &find(&docs, "Deployment", "gpufleet")["spec"]["template"]["spec"];
    let c = container(&docs, "gpufleet");
    assert_eq!(find(&docs, "Deployment", "gpufleet")["spec"]["replicas"], 2);
    assert_eq!(c["image"], "ghcr.io/gpufleet/gpufleet:0.1.0");
    assert_eq!(
        run_args(&c),
        [
            "run",
            "--log-level=info",
            "--log-format=json",
            "--metrics-addr=0.0.0.0:8080",
            "--health-addr=0.0.0.0:8081",
            "--probe-namespace=gpufleet-system-probes",
            "--probe-service-account=gpufleet-probe",
            "--leader-elect",
            "--lease-name=gpufleet"
        ]
    );
    assert_eq!(
        c["env"][0],
        json!({"name": "POD_NAMESPACE",
               "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}})
    );
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(c["livenessProbe"]["httpGet"]["port"], "http-health");
    assert_eq!(
        c["ports"][1],
        json!({"name": "http-health", "containerPort": 8081, "protocol": "TCP"})
    );
    // Pod Security "restricted".
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(
        pod["securityContext"]["seccompProfile"]["type"],
        "RuntimeDefault"
    );
    assert_eq!(c["securityContext"]["allowPrivilegeEscalation"], false);
    assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(c["securityContext"]["capabilities"]["drop"], json!(["ALL"]));
    assert_eq!(pod["serviceAccountName"], "gpufleet");
    let service = find(&docs, "Service", "gpufleet-metrics");
    assert_eq!(service["spec"]["ports"][0]["targetPort"], "http-metrics");
    assert!(docs.iter().all(|d| d["kind"] != "ServiceMonitor"));
    find(&docs, "PodDisruptionBudget", "gpufleet");

    let docs = template(
        "fleet",
        "ops",
        &[
            "--set",
            "logLevel=debug,logFormat=text,image.tag=v9,priorityClassName=system-cluster-critical",
            "--set",
            "kubeClient.qps=50,kubeClient.burst=100,concurrency=8,metrics.port=9090,health.port=9091",
            "--set",
            "nodeSelector.role=control,replicaCount=1,leaderElection.enabled=false",
            "--set",
            "metrics.serviceMonitor.enabled=true,metrics.serviceMonitor.labels.release=prom",
            "--set",
            "resources.limits.memory=2Gi,podAnnotations.a=b,podLabels.c=d,commonLabels.team=gpu",
            "--set-json",
            r#"tolerations=[{"key":"ops","operator":"Exists","effect":"NoSchedule"}]"#,
            "--set-json",
            r#"affinity={"nodeAffinity":{"requiredDuringSchedulingIgnoredDuringExecution":{"nodeSelectorTerms":[{"matchExpressions":[{"key":"k","operator":"Exists"}]}]}}}"#,
            "--set-json",
            r#"extraArgs=["--extra"]"#,
            "--set-json",
            r#"extraEnv=[{"name":"RUST_BACKTRACE","value":"1"}]"#,
        ],
    );
    let deployment = find(&docs, "Deployment", "fleet-gpufleet");
    let pod = &deployment["spec"]["template"];
    let c = container(&docs, "fleet-gpufleet");
    assert_eq!(deployment["metadata"]["namespace"], "ops");
    assert_eq!(deployment["spec"]["replicas"], 1);
    assert_eq!(c["image"], "ghcr.io/gpufleet/gpufleet:v9");
    assert_eq!(
        run_args(&c),
        [
            "run",
            "--log-level=debug",
            "--log-format=text",
            "--metrics-addr=0.0.0.0:9090",
            "--health-addr=0.0.0.0:9091",
            "--probe-namespace=ops-probes",
            "--probe-service-account=gpufleet-probe",
            "--qps=50",
            "--burst=100",
            "--concurrency=8",
            "--extra"
        ]
    );
    // extraEnv comes after the chart's own (POD_NAMESPACE, POD_NAME).
    assert_eq!(c["env"][2], json!({"name": "RUST_BACKTRACE", "value": "1"}));
    assert_eq!(c["ports"][0]["containerPort"], 9090);
    assert_eq!(c["resources"]["limits"]["memory"], "2Gi");
    assert_eq!(pod["spec"]["priorityClassName"], "system-cluster-critical");
    assert_eq!(pod["spec"]["nodeSelector"], json!({"role": "control"}));
    assert_eq!(pod["spec"]["tolerations"][0]["key"], "ops");
    assert!(pod["spec"]["affinity"]["nodeAffinity"].is_object());
    assert_eq!(pod["metadata"]["annotations"]["a"], "b");
    assert_eq!(pod["metadata"]["labels"]["c"], "d");
    assert_eq!(deployment["metadata"]["labels"]["team"], "gpu");
    // One replica: no disruption budget, no leader election.
    assert!(docs.iter().all(|d| d["kind"] != "PodDisruptionBudget"));
    let monitor = find(&docs, "ServiceMonitor", "fleet-gpufleet");
    assert_eq!(monitor["metadata"]["labels"]["release"], "prom");
    assert_eq!(monitor["spec"]["endpoints"][0]["port"], "http-metrics");
    assert_eq!(
        monitor["spec"]["selector"]["matchLabels"],
        find(&docs, "Service", "fleet-gpufleet-metrics")["metadata"]["labels"]
            .as_object()
            .map(|labels| {
                let keys = [
                    "app.kubernetes.io/name",
                    "app.kubernetes.io/instance",
                    "app.kubernetes.io/component",
                ];
                Value::Object(
                    labels
                        .iter()
                        .filter(|(k, _)| keys.contains(&k.as_str()))
                        .map(|(k, v)| (k.clone(), v.clone()))
                        .collect(),
                )
            })
            .expect("service labels")
    );

    // A digest wins over the tag.
    let digest = format!("sha256:{}", "ab".repeat(32));
    let docs = template(
        "gpufleet",
        "gpufleet-system",
        &["--set", &format!("image.tag=v9,image.digest={digest}")],
    );
    assert_eq!(
        container(&docs, "gpufleet")["image"],
        format!("ghcr.io/gpufleet/gpufleet@{digest}")
    );
}

/// The roles hold no wildcards and nothing on secrets; pods only in the
/// probe namespace, the Lease only in the release namespace, events only in
/// `default`; no write to pools but their status. (Which verbs exactly:
/// [`gpufleet_uses_exactly_what_the_chart_grants`].) Pools are written only
/// through the `-pool-admin` role, which nothing aggregates.
#[test]
fn chart_rbac_rules_are_least_privilege() {
    let docs = template("gpufleet", "gpufleet-system", &[]);
    for doc in &docs {
        if !["ClusterRole", "Role"].contains(&doc["kind"].as_str().unwrap()) {
            continue;
        }
        for rule in doc["rules"].as_array().expect("rules") {
            for field in ["apiGroups", "resources", "verbs"] {
                let items = rule[field].as_array().expect(field);
                assert!(
                    items.iter().all(|i| !i.as_str().unwrap().contains('*')),
                    "wildcard in {}: {rule}",
                    doc["metadata"]["name"]
                );
            }
            let resources = rule["resources"].as_array().unwrap();
            assert!(
                !resources.iter().any(|r| r == "secrets"),
                "{}: {rule}",
                doc["metadata"]["name"]
            );
            if doc["kind"] == "ClusterRole" {
                assert!(
                    !resources
                        .iter()
                        .any(|r| r == "pods" || r == "leases" || r == "events"),
                    "pods, leases and events belong in namespaced Roles: {rule}"
                );
            }
        }
    }
    let rules = |kind: &str, name: &str, namespace: Option<&str>| -> Value {
        let role = find(&docs, kind, name);
        assert_eq!(role["metadata"]["namespace"].as_str(), namespace, "{name}");
        role["rules"].clone()
    };
    let operator = rules("ClusterRole", "gpufleet", None);
    for rule in operator.as_array().unwrap() {
        let writes = rule["verbs"]
            .as_array()
            .unwrap()
            .iter()
            .any(|v| v != "get" && v != "list" && v != "watch");
        assert!(
            !(writes
                && rule["resources"]
                    .as_array()
                    .unwrap()
                    .contains(&json!("gpupools"))),
            "gpufleet never writes a pool, only its status: {rule}"
        );
    }
    let probes = rules("Role", "gpufleet-probes", Some("gpufleet-system-probes"));
    assert_eq!(probes[0]["resources"], json!(["pods"]), "{probes}");
    let events = rules("Role", "gpufleet-events", Some("default"));
    assert_eq!(events[0]["resources"], json!(["events"]), "{events}");
    let lease = rules("Role", "gpufleet", Some("gpufleet-system"));
    assert!(
        lease
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["resources"] == json!(["leases"])),
        "only the Lease in the release namespace: {lease}"
    );
    let pool_admin = find(&docs, "ClusterRole", "gpufleet-pool-admin");
    assert_eq!(
        pool_admin["rules"],
        json!([{"apiGroups": ["gpufleet.io"], "resources": ["gpupools"],
                "verbs": ["get", "list", "watch", "create", "update", "patch", "delete"]}])
    );
    assert!(
        pool_admin["metadata"]["labels"]
            .as_object()
            .unwrap()
            .keys()
            .all(|k| !k.starts_with("rbac.authorization.k8s.io/aggregate-to")),
        "pool writes are aggregated into no built-in role: {pool_admin}"
    );
    // Without leader election there is no Lease, and no Role for it.
    let docs = template(
        "gpufleet",
        "gpufleet-system",
        &["--set", "leaderElection.enabled=false,replicaCount=1"],
    );
    assert!(
        docs.iter()
            .all(|d| !(d["kind"] == "Role" && d["metadata"]["name"] == "gpufleet")),
        "{:?}",
        kinds(&docs)
    );
    let view = find(&docs, "ClusterRole", "gpufleet-view");
    assert_eq!(
        view["metadata"]["labels"]["rbac.authorization.k8s.io/aggregate-to-view"],
        "true"
    );
    let edit = find(&docs, "ClusterRole", "gpufleet-edit");
    assert_eq!(
        edit["metadata"]["labels"]["rbac.authorization.k8s.io/aggregate-to-edit"],
        "true"
    );
    assert_eq!(
        edit["rules"],
        json!([{"apiGroups": ["gpufleet.io"], "resources": ["rolloutbatches"],
                "verbs": ["create", "update", "patch", "delete"]}]),
        "edit writes batches only; pools are for cluster admins"
    );
    let docs = template(
        "gpufleet",
        "gpufleet-system",
        &[
            "--set",
            "rbac.aggregateToDefaultRoles=false,rbac.poolAdminRole=false",
        ],
    );
    assert!(docs.iter().all(|d| d["metadata"]["name"] != "gpufleet-view"
        && d["metadata"]["name"] != "gpufleet-edit"
        && d["metadata"]["name"] != "gpufleet-pool-admin"));
}

/// Probe pods get a namespace of their own (`<release namespace>-probes`
/// unless `probes.namespace` names one), created with the release and
/// enforcing `probes.podSecurity`, and a ServiceAccount there without a
/// token; the operator is told both. The release namespace cannot double
/// as the probe namespace the chart creates.
#[test]
fn chart_puts_probes_in_a_namespace_of_their_own() {
    let docs = template("gpufleet", "gpufleet-system", &[]);
    let namespace = find(&docs, "Namespace", "gpufleet-system-probes");
    let labels = &namespace["metadata"]["labels"];
    assert_eq!(labels["pod-security.kubernetes.io/enforce"], "privileged");
    assert_eq!(
        labels["pod-security.kubernetes.io/enforce-version"],
        "latest"
    );
    let account = find(&docs, "ServiceAccount", "gpufleet-probe");
    assert_eq!(account["metadata"]["namespace"], "gpufleet-system-probes");
    assert_eq!(account["automountServiceAccountToken"], false);
    let args = run_args(&container(&docs, "gpufleet"));
    for arg in [
        "--probe-namespace=gpufleet-system-probes",
        "--probe-service-account=gpufleet-probe",
    ] {
        assert!(args.contains(&arg.to_string()), "{args:?}");
    }

    let docs = template(
        "gpufleet",
        "gpufleet-system",
        &[
            "--set",
            "probes.namespace=burn-in,probes.podSecurity=baseline",
            "--set",
            "probes.serviceAccount.name=dcgm,probes.serviceAccount.annotations.team=gpu",
        ],
    );
    let labels = &find(&docs, "Namespace", "burn-in")["metadata"]["labels"];
    assert_eq!(labels["pod-security.kubernetes.io/enforce"], "baseline");
    let account = find(&docs, "ServiceAccount", "dcgm");
    assert_eq!(account["metadata"]["namespace"], "burn-in");
    assert_eq!(account["metadata"]["annotations"]["team"], "gpu");
    assert_eq!(
        find(&docs, "RoleBinding", "gpufleet-probes")["metadata"]["namespace"],
        "burn-in"
    );
    let args = run_args(&container(&docs, "gpufleet"));
    assert!(args.contains(&"--probe-namespace=burn-in".to_string()));
    assert!(args.contains(&"--probe-service-account=dcgm".to_string()));

    // A namespace made elsewhere: no Namespace object, the rest the same.
    let docs = template(
        "gpufleet",
        "gpufleet-system",
        &[
            "--set",
            "probes.namespace=burn-in,probes.createNamespace=false",
        ],
    );
    assert!(
        docs.iter().all(|d| d["kind"] != "Namespace"),
        "{:?}",
        kinds(&docs)
    );
    find(&docs, "ServiceAccount", "gpufleet-probe");

    let ran = helm(&["template", "gpufleet"])
        .arg(chart())
        .args([
            "--namespace",
            "gpufleet-system",
            "--set",
            "probes.namespace=gpufleet-system",
        ])
        .fails();
    assert!(
        ran.stderr
            .contains("probes.namespace is the release namespace"),
        "{}",
        ran.stderr
    );
    let ran = helm(&["template", "gpufleet"])
        .arg(chart())
        .args(["--set", "probes.podSecurity=none"])
        .fails();
    assert!(ran.stderr.contains("/probes/podSecurity"), "{}", ran.stderr);
}

// ------------------------------------------ the default probe tpl, pools

/// The values that render pools in these tests: `east` minimal, `north`
/// with probe fields but no template and the fabric gate, `west` with
/// `probe: null`, `south` with a template of its own.
const POOLS: &str = r#"pools={
    "east": {"nodeSelector": {"matchLabels": {"gpufleet.io/pool": "east"}},
             "hardware": {"gpuProduct": ["NVIDIA-GB200", "NVIDIA-GB300"], "gpusPerNode": 4}},
    "north": {"nodeSelector": {}, "hardware": {"gpuProduct": ["NVIDIA-GB300"], "gpusPerNode": 4},
              "healthChecks": {"probe": {"timeoutSeconds": 600, "retries": 0}, "fabric": {}}},
    "west": {"nodeSelector": {}, "hardware": {"gpuProduct": ["NVIDIA-H100-80GB-HBM3"], "gpusPerNode": 8},
             "healthChecks": {"probe": null, "soakSeconds": 60}},
    "south": {"nodeSelector": {}, "hardware": {"gpuProduct": ["NVIDIA-GB200"], "gpusPerNode": 4},
              "healthChecks": {"probe": {"template": {"spec": {"containers": [
                  {"name": "dcgm", "image": "nvcr.io/nvidia/cloud-native/dcgm:4.2.3-1-ubuntu22.04",
                   "command": ["dcgmi", "diag", "--run", "3"]}]}}}}}
}"#;

/// A rendered GpuPool, read as gpufleet reads it, and valid by its rules.
fn rendered_pool(docs: &[Value], name: &str) -> gpufleet::api::GpuPool {
    let doc = find(docs, "GpuPool", name);
    assert_eq!(doc["apiVersion"], "gpufleet.io/v1alpha1");
    let pool: gpufleet::api::GpuPool =
        serde_json::from_value(doc.clone()).unwrap_or_else(|e| panic!("GpuPool {name}: {e}"));
    pool.validate()
        .unwrap_or_else(|e| panic!("GpuPool {name} is invalid: {e}"));
    pool
}

/// The probe container of a default template, as JSON.
fn probe_container(tpl: &Value) -> &Value {
    let containers = tpl["spec"]["containers"].as_array().expect("containers");
    assert_eq!(containers.len(), 1, "{tpl}");
    &containers[0]
}

/// The ConfigMap's copy of the template, parsed.
fn configmap_template(docs: &[Value], name: &str) -> Value {
    let map = find(docs, "ConfigMap", name);
    let text = map["data"]["template.yaml"]
        .as_str()
        .expect("data template.yaml");
    // It reads as a PodTemplateSpec, as a pool's template must.
    serde_norway::from_str::<k8s_openapi::api::core::v1::PodTemplateSpec>(text)
        .expect("template.yaml is a PodTemplateSpec");
    serde_norway::from_str(text).expect("template.yaml is YAML")
}

/// The ConfigMap `<name>-probe-template` holds the default probe template:
/// `gpufleet probe` from the operator's image, the flags from
/// `probeTemplate`, all the GPUs requested, the verdict in a `File`
/// termination message; default values render no GpuPool.
#[test]
fn chart_ships_the_default_probe_template_in_a_configmap() {
    let docs = template("gpufleet", "gpufleet-system", &[]);
    assert!(
        docs.iter().all(|d| d["kind"] != "GpuPool"),
        "{:?}",
        kinds(&docs)
    );
    let map = find(&docs, "ConfigMap", "gpufleet-probe-template");
    assert_eq!(map["metadata"]["namespace"], "gpufleet-system");
    let tpl = configmap_template(&docs, "gpufleet-probe-template");
    assert_eq!(
        tpl["metadata"]["labels"],
        json!({"app.kubernetes.io/name": "gpufleet-probe",
               "app.kubernetes.io/part-of": "gpufleet"})
    );
    let spec = &tpl["spec"];
    assert_eq!(spec["restartPolicy"], "Never");
    for field in [
        "runtimeClassName",
        "serviceAccountName",
        "nodeName",
        "tolerations",
    ] {
        assert!(spec.get(field).is_none(), "{field}: {spec}");
    }
    assert_eq!(spec["securityContext"]["runAsNonRoot"], true);
    let c = probe_container(&tpl);
    assert_eq!(c["image"], "ghcr.io/gpufleet/gpufleet:0.1.0");
    assert_eq!(c["imagePullPolicy"], "IfNotPresent");
    assert!(
        c.get("command").is_none(),
        "the image's entrypoint is gpufleet"
    );
    assert_eq!(
        run_args(c),
        [
            "probe",
            "--gpus=4",
            "--termination-log=/dev/termination-log"
        ]
    );
    assert_eq!(
        c["resources"],
        json!({"requests": {"cpu": "100m", "memory": "64Mi"},
               "limits": {"memory": "256Mi", "nvidia.com/gpu": 4}})
    );
    assert_eq!(c["terminationMessagePath"], "/dev/termination-log");
    assert_eq!(c["terminationMessagePolicy"], "File");
    assert_eq!(c["securityContext"]["allowPrivilegeEscalation"], false);
    assert_eq!(c["securityContext"]["capabilities"]["drop"], json!(["ALL"]));

    // The operator's digest carries over; every flag comes from values.
    let digest = format!("sha256:{}", "ab".repeat(32));
    let docs = template(
        "fleet",
        "ops",
        &[
            "--set",
            &format!("image.digest={digest},image.pullPolicy=Always"),
            "--set",
            "probeTemplate.gpus=8,probeTemplate.nvlinks=12,probeTemplate.dcgmLevel=2",
            "--set",
            "probeTemplate.terminationMessagePath=/tmp/verdict,probeTemplate.runtimeClassName=nvidia",
            "--set-json",
            r#"probeTemplate.products=["NVIDIA H100 80GB HBM3"]"#,
            "--set-json",
            r#"probeTemplate.extraArgs=["--nvidia-smi-timeout=300"]"#,
            "--set-json",
            r#"probeTemplate.imagePullSecrets=[{"name":"regcred"}]"#,
        ],
    );
    let tpl = configmap_template(&docs, "fleet-gpufleet-probe-template");
    assert_eq!(tpl["spec"]["runtimeClassName"], "nvidia");
    assert_eq!(
        tpl["spec"]["imagePullSecrets"],
        json!([{"name": "regcred"}])
    );
    let c = probe_container(&tpl);
    assert_eq!(c["image"], format!("ghcr.io/gpufleet/gpufleet@{digest}"));
    assert_eq!(c["imagePullPolicy"], "Always");
    assert_eq!(
        run_args(c),
        [
            "probe",
            "--gpus=8",
            "--product=NVIDIA H100 80GB HBM3",
            "--nvlinks=12",
            "--dcgm-level=2",
            "--termination-log=/tmp/verdict",
            "--nvidia-smi-timeout=300"
        ]
    );
    assert_eq!(c["resources"]["limits"]["nvidia.com/gpu"], 8);
    assert_eq!(c["terminationMessagePath"], "/tmp/verdict");
    assert_eq!(c["terminationMessagePolicy"], "File");

    // An image of its own, and privileged.
    let docs = template(
        "gpufleet",
        "gpufleet-system",
        &[
            "--set",
            "probeTemplate.image.repository=registry.example/probe,probeTemplate.image.tag=v2",
            "--set",
            "probeTemplate.image.pullPolicy=Never,probeTemplate.privileged=true",
        ],
    );
    let tpl = configmap_template(&docs, "gpufleet-probe-template");
    assert!(tpl["spec"].get("securityContext").is_none());
    let c = probe_container(&tpl);
    assert_eq!(c["image"], "registry.example/probe:v2");
    assert_eq!(c["imagePullPolicy"], "Never");
    assert_eq!(
        c["securityContext"],
        json!({"privileged": true, "runAsUser": 0})
    );
    // A privileged probe in a namespace that would refuse it.
    let ran = helm(&["template", "gpufleet"])
        .arg(chart())
        .args([
            "--set",
            "probeTemplate.privileged=true,probes.podSecurity=baseline",
        ])
        .fails();
    assert!(
        ran.stderr.contains("probeTemplate.privileged"),
        "{}",
        ran.stderr
    );
}

/// Each entry of `pools` renders a GpuPool of that name whose spec is the
/// entry's, with the chart's probe template where the entry brings none:
/// the flags from `probeTemplate`, `--gpus` and `--product` from the pool's
/// hardware unless `probeTemplate` sets them. `probe: null` means no probe.
#[test]
fn chart_renders_pools_with_the_default_probe_template() {
    let docs = template(
        "gpufleet",
        "gpufleet-system",
        &[
            "--set-json",
            POOLS,
            "--set",
            "probeTemplate.nvlinks=18,probeTemplate.dcgmLevel=1",
        ],
    );
    let pools: Vec<_> = docs.iter().filter(|d| d["kind"] == "GpuPool").collect();
    assert_eq!(pools.len(), 4, "{:?}", kinds(&docs));
    for pool in &pools {
        assert!(pool["metadata"].get("namespace").is_none(), "{pool}");
        assert_eq!(
            pool["metadata"]["labels"]["app.kubernetes.io/part-of"],
            "gpufleet"
        );
    }

    // east: the spec as given, and the chart's template.
    let east = rendered_pool(&docs, "east");
    let doc = find(&docs, "GpuPool", "east");
    assert_eq!(
        doc["spec"]["nodeSelector"],
        json!({"matchLabels": {"gpufleet.io/pool": "east"}})
    );
    let probe = east
        .spec
        .health_checks
        .probe
        .as_ref()
        .expect("east has a probe");
    assert_eq!(
        (probe.timeout_seconds, probe.retries),
        (900, 1),
        "CRD defaults"
    );
    let tpl = &doc["spec"]["healthChecks"]["probe"]["template"];
    let c = probe_container(tpl);
    assert_eq!(c["name"], "probe");
    assert_eq!(c["image"], "ghcr.io/gpufleet/gpufleet:0.1.0");
    assert_eq!(
        run_args(c),
        [
            "probe",
            "--gpus=4",
            "--product=NVIDIA-GB200",
            "--product=NVIDIA-GB300",
            "--nvlinks=18",
            "--dcgm-level=1",
            "--termination-log=/dev/termination-log"
        ]
    );
    assert_eq!(c["resources"]["limits"]["nvidia.com/gpu"], 4);
    assert_eq!(c["terminationMessagePolicy"], "File");
    // Those are flags `gpufleet probe` takes: on a GB200 tray's nvidia-smi
    // output it writes a verdict whose GPU count and product checks pass.
    let log = crate::support::scratch_dir().join("chart-probe-termination-log");
    let _ = std::fs::remove_file(&log);
    let args: Vec<String> = run_args(c)
        .into_iter()
        .map(|arg| match arg.strip_prefix("--termination-log=") {
            Some(_) => format!("--termination-log={}", log.display()),
            None => arg,
        })
        .collect();
    let fixture = repo().join("tests/fixtures/nvidia-smi/gb200-x4-k8s-test-infra.xml");
    let ran = std::process::Command::new(env!("CARGO_BIN_EXE_gpufleet"))
        .args(&args)
        .arg("--from-file")
        .arg(&fixture)
        .output()
        .expect("gpufleet runs");
    let text = std::fs::read_to_string(&log)
        .unwrap_or_else(|e| panic!("gpufleet {args:?} wrote no verdict ({e}): {ran:?}"));
    let gpufleet::verdict::Read::Valid(verdict) = gpufleet::verdict::read(&text) else {
        panic!("not a valid verdict: {text}");
    };
    for check in ["gpu-count", "product"] {
        let found = verdict
            .checks
            .iter()
            .find(|c| c.name == check)
            .unwrap_or_else(|| panic!("no {check} check: {text}"));
        assert_eq!(
            found.result,
            gpufleet::verdict::CheckResult::Pass,
            "{check}: {text}"
        );
    }
    // The pool's template is the ConfigMap's, but for the pool's hardware.
    let mut copy = configmap_template(&docs, "gpufleet-probe-template");
    copy["spec"]["containers"][0]["args"] = c["args"].clone();
    assert_eq!(tpl, &copy);

    // The probe pod gpufleet makes of it: bound, tolerating the taint.
    let batch: gpufleet::api::RolloutBatch = serde_json::from_value(json!({
        "apiVersion": "gpufleet.io/v1alpha1", "kind": "RolloutBatch",
        "metadata": {"name": "row1", "uid": "0b0e8c5a-1111-2222-3333-444455556666"},
        "spec": {"poolRef": "east", "nodeSelector": {}, "waves": [{"percent": 100}]}
    }))
    .unwrap();
    let request = gpufleet::planner::ProbeRequest {
        pod_name: "gpufleet-probe-n1-1".into(),
        node: "n1".into(),
        attempt: 1,
        run: None,
        group: None,
    };
    let probes = gpufleet::operator::Probes::in_namespace("gpufleet-system-probes");
    let pod = gpufleet::operator::probe::probe_pod(&east, &batch, &request, &probes).unwrap();
    let spec = pod.spec.unwrap();
    assert_eq!(spec.node_name.as_deref(), Some("n1"));
    assert!(
        spec.tolerations
            .unwrap()
            .iter()
            .any(|t| t.key.as_deref() == Some("gpufleet.io/onboarding"))
    );

    // north: its probe fields kept, the template added; the fabric gate.
    let north = rendered_pool(&docs, "north");
    let probe = north.spec.health_checks.probe.as_ref().unwrap();
    assert_eq!((probe.timeout_seconds, probe.retries), (600, 0));
    assert!(north.spec.health_checks.fabric.is_some());
    let doc = find(&docs, "GpuPool", "north");
    let args = run_args(probe_container(
        &doc["spec"]["healthChecks"]["probe"]["template"],
    ));
    assert_eq!(args[1..3], ["--gpus=4", "--product=NVIDIA-GB300"]);

    // west: no probe, the rest of its checks kept.
    let west = rendered_pool(&docs, "west");
    assert!(west.spec.health_checks.probe.is_none());
    assert_eq!(west.spec.health_checks.soak_seconds, 60);
    let doc = find(&docs, "GpuPool", "west");
    assert!(doc["spec"]["healthChecks"].get("probe").is_none(), "{doc}");

    // south: its own template, unchanged.
    rendered_pool(&docs, "south");
    let doc = find(&docs, "GpuPool", "south");
    assert_eq!(
        doc["spec"]["healthChecks"]["probe"],
        json!({"template": {"spec": {"containers": [
            {"name": "dcgm", "image": "nvcr.io/nvidia/cloud-native/dcgm:4.2.3-1-ubuntu22.04",
             "command": ["dcgmi", "diag", "--run", "3"]}]}}})
    );

    // probeTemplate.gpus and .products win over the pool's hardware.
    let docs = template(
        "gpufleet",
        "gpufleet-system",
        &[
            "--set-json",
            POOLS,
            "--set",
            "probeTemplate.gpus=2",
            "--set-json",
            r#"probeTemplate.products=["NVIDIA GB200"]"#,
        ],
    );
    let doc = find(&docs, "GpuPool", "east");
    let c = probe_container(&doc["spec"]["healthChecks"]["probe"]["template"]);
    assert_eq!(
        run_args(c),
        [
            "probe",
            "--gpus=2",
            "--product=NVIDIA GB200",
            "--termination-log=/dev/termination-log"
        ]
    );
    assert_eq!(c["resources"]["limits"]["nvidia.com/gpu"], 2);
}

/// values.schema.json checks the probe template's values and the pools'
/// names and spec keys, and knows every key of a GpuPool's spec.
#[test]
fn values_schema_checks_the_probe_template_and_pools() {
    let cases: &[(&[&str], &str)] = &[
        (&["--set", "probeTemplate.dcgmLevel=5"], "dcgmLevel"),
        (&["--set", "probeTemplate.gpu=4"], "'gpu'"),
        (&["--set", "probeTemplate.privileged=yes"], "privileged"),
        (
            &["--set", "probeTemplate.image.pullPolicy=Sometimes"],
            "pullPolicy",
        ),
        (
            &["--set", "probeTemplate.terminationMessagePath=verdict"],
            "terminationMessagePath",
        ),
        (
            &[
                "--set-json",
                r#"pools={"East_1":{"nodeSelector":{},"hardware":{}}}"#,
            ],
            "East_1",
        ),
        (
            &[
                "--set-json",
                r#"pools={"east":{"nodeSelector":{},"hardware":{},"healtChecks":{}}}"#,
            ],
            "healtChecks",
        ),
        (
            &["--set-json", r#"pools={"east":{"nodeSelector":{}}}"#],
            "hardware",
        ),
    ];
    for (args, named) in cases {
        let ran = helm(&["template", "typo"]).arg(chart()).args(*args).fails();
        assert!(
            ran.stderr.contains(named),
            "helm template {args:?} failed without naming {named}:\n{}",
            ran.stderr
        );
    }
    // The keys a pool entry may have are exactly the CRD's spec fields.
    let schema: Value =
        serde_json::from_str(&std::fs::read_to_string(chart().join("values.schema.json")).unwrap())
            .unwrap();
    let entry = &schema["properties"]["pools"]["additionalProperties"];
    let keys = |v: &Value| -> BTreeSet<String> {
        v.as_object().expect("properties").keys().cloned().collect()
    };
    let crd: Value = serde_norway::from_str(
        &std::fs::read_to_string(chart().join("files/crds/gpupools.gpufleet.io.yaml")).unwrap(),
    )
    .unwrap();
    let spec = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"];
    let required = |v: &Value| -> BTreeSet<String> {
        serde_json::from_value(v["required"].clone()).expect("required")
    };
    assert_eq!(keys(&entry["properties"]), keys(&spec["properties"]));
    assert_eq!(required(entry), required(spec));
}

// ---------------------------------------------------- against the API server

/// `helm template` output, defaults and with options, passes the API
/// server's own validation (`kubectl apply --dry-run=server`).
#[test]
fn chart_output_is_accepted_by_the_api_server() {
    let tb = testbed();
    namespace(tb, "chart-dry-run");
    // A server-side dry run makes no namespace: the probe namespace must be
    // there for the objects in it (applying the Namespace updates it).
    applied_namespace(tb, "chart-dry-run-probes");
    for options in [
        &[][..],
        &[
            "--set",
            "replicaCount=3,priorityClassName=system-cluster-critical,logFormat=text",
            "--set-json",
            r#"tolerations=[{"key":"ops","operator":"Exists","effect":"NoSchedule"}]"#,
            "--set-json",
            r#"topologySpreadConstraints=[{"maxSkew":1,"topologyKey":"kubernetes.io/hostname","whenUnsatisfiable":"ScheduleAnyway"}]"#,
        ][..],
    ] {
        let rendered = helm(&["template", "chart-dry-run"])
            .arg(chart())
            .args(["--namespace", "chart-dry-run"])
            .args(options)
            .succeeds()
            .stdout;
        let ran = tb
            .kubectl(&["apply", "--dry-run=server", "-f", "-"])
            .stdin(rendered)
            .succeeds();
        assert!(
            ran.stdout
                .contains("deployment.apps/chart-dry-run-gpufleet"),
            "{}",
            ran.stdout
        );
        assert!(
            !ran.stderr.contains("Warning"),
            "the API server warned: {}",
            ran.stderr
        );
    }
}

/// The chart's pools pass the API server's validation, the CRD's schema
/// and rules included (`kubectl apply --dry-run=server`), and the probe pod
/// gpufleet makes of the default template meets the `restricted` Pod
/// Security standard: admitted into a namespace enforcing it.
#[test]
fn chart_pools_and_probe_pods_are_accepted_by_the_api_server() {
    let tb = testbed();
    let ns = "chart-pools";
    namespace(tb, ns);
    applied_namespace(tb, "chart-pools-probes");
    let options = ["--set-json", POOLS, "--set", "crds.enabled=false"];
    let docs = template(ns, ns, &options);
    let list = json!({"apiVersion": "v1", "kind": "List", "items": docs});
    let ran = tb
        .kubectl(&["apply", "--dry-run=server", "-f", "-"])
        .stdin(list.to_string())
        .succeeds();
    for object in [
        "gpupool.gpufleet.io/east",
        "gpupool.gpufleet.io/north",
        "gpupool.gpufleet.io/west",
        "gpupool.gpufleet.io/south",
        "configmap/chart-pools-gpufleet-probe-template",
    ] {
        assert!(ran.stdout.contains(object), "{object}: {}", ran.stdout);
    }
    assert!(
        !ran.stderr.contains("Warning"),
        "the API server warned: {}",
        ran.stderr
    );
    // The CRD refuses the fabric gate on a pool left without a probe.
    let ran = helm(&["template", ns])
        .arg(chart())
        .args(["--namespace", ns, "--set", "crds.enabled=false", "--set-json"])
        .arg(
            r#"pools={"bare":{"nodeSelector":{},"hardware":{"gpuProduct":["NVIDIA-GB200"],"gpusPerNode":4},"healthChecks":{"probe":null,"fabric":{}}}}"#,
        )
        .args(["--show-only", "templates/pools.yaml"])
        .succeeds();
    let refused = tb
        .kubectl(&["apply", "--dry-run=server", "-f", "-"])
        .stdin(ran.stdout)
        .fails();
    assert!(
        refused
            .stderr
            .contains("the fabric and firmware gates read the probe's verdict"),
        "{}",
        refused.stderr
    );

    // The probe pod of pool east, in a namespace enforcing `restricted`.
    let restricted = "chart-pools-restricted";
    namespace(tb, restricted);
    tb.kubectl(&[
        "label",
        "namespace",
        restricted,
        "pod-security.kubernetes.io/enforce=restricted",
    ])
    .succeeds();
    tb.kubectl(&[
        "create",
        "serviceaccount",
        "gpufleet-probe",
        "-n",
        restricted,
    ])
    .succeeds();
    let pod = |docs: &[Value]| -> String {
        let east = rendered_pool(docs, "east");
        let batch: gpufleet::api::RolloutBatch = serde_json::from_value(json!({
            "apiVersion": "gpufleet.io/v1alpha1", "kind": "RolloutBatch",
            "metadata": {"name": "row1", "uid": "0b0e8c5a-1111-2222-3333-444455556666"},
            "spec": {"poolRef": "east", "nodeSelector": {}, "waves": [{"percent": 100}]}
        }))
        .unwrap();
        let request = gpufleet::planner::ProbeRequest {
            pod_name: "gpufleet-probe-n1-1".into(),
            node: "n1".into(),
            attempt: 1,
            run: None,
            group: None,
        };
        let probes = gpufleet::operator::Probes::in_namespace(restricted);
        let mut pod =
            gpufleet::operator::probe::probe_pod(&east, &batch, &request, &probes).unwrap();
        // No batch exists to own it in a dry run.
        pod.metadata.owner_references = None;
        serde_json::to_string(&pod).unwrap()
    };
    let ran = tb
        .kubectl(&["create", "--dry-run=server", "-f", "-"])
        .stdin(pod(&docs))
        .succeeds();
    assert!(!ran.stderr.contains("Warning"), "{}", ran.stderr);
    let privileged = template(
        ns,
        ns,
        &[
            "--set-json",
            POOLS,
            "--set",
            "crds.enabled=false,probeTemplate.privileged=true",
        ],
    );
    let ran = tb
        .kubectl(&["create", "--dry-run=server", "-f", "-"])
        .stdin(pod(&privileged))
        .fails();
    assert!(
        ran.stderr.contains("violates PodSecurity"),
        "{}",
        ran.stderr
    );
}

/// install, upgrade with a changed value, uninstall: the whole life of a
/// release, CRDs included. The test bed installed the CRDs already, so the
/// release takes them over (`--take-ownership`), as it would a cluster's
/// CRDs kept from an earlier release.
#[test]
fn helm_install_upgrade_and_uninstall() {
    let tb = testbed();
    let release = "chart-lifecycle";
    let deployment = "chart-lifecycle-gpufleet";
    namespace(tb, release);
    let ran = tb
        .helm(&["install", release])
        .arg(chart())
        .args(["--namespace", release, "--take-ownership"])
        .succeeds();
    assert!(ran.stdout.contains("STATUS: deployed"), "{}", ran.stdout);
    // The notes say where probes run, and that the release namespace (made
    // bare here) should enforce the restricted standard.
    for note in [
        "Probe pods run in namespace chart-lifecycle-probes (Pod Security: privileged)",
        "kubectl label namespace chart-lifecycle pod-security.kubernetes.io/enforce=restricted",
        "ClusterRole chart-lifecycle-gpufleet-pool-admin writes pools",
    ] {
        assert!(
            ran.stdout.contains(note),
            "{note:?} not in:\n{}",
            ran.stdout
        );
    }
    let get = |what: &[&str]| -> Value {
        let ran = tb
            .kubectl(&["get", "--namespace", release, "-o", "json"])
            .args(what)
            .succeeds();
        serde_json::from_str(&ran.stdout).expect("json")
    };
    let installed = get(&["deployment", deployment]);
    let c = &installed["spec"]["template"]["spec"]["containers"][0];
    assert!(run_args(c).contains(&"--log-level=info".to_string()), "{c}");
    for what in [
        ["serviceaccount", deployment],
        ["role", deployment],
        ["rolebinding", deployment],
        ["service", "chart-lifecycle-gpufleet-metrics"],
        ["poddisruptionbudget", deployment],
        ["clusterrole", deployment],
        ["clusterrolebinding", deployment],
        ["clusterrole", "chart-lifecycle-gpufleet-view"],
    ] {
        get(&what);
    }
    let probes = get(&["namespace", "chart-lifecycle-probes"]);
    assert_eq!(
        probes["metadata"]["labels"]["pod-security.kubernetes.io/enforce"],
        "privileged"
    );
    for (namespace, what) in [
        (
            "chart-lifecycle-probes",
            ["serviceaccount", "gpufleet-probe"],
        ),
        (
            "chart-lifecycle-probes",
            ["role", "chart-lifecycle-gpufleet-probes"],
        ),
        (
            "default",
            ["rolebinding", "chart-lifecycle-gpufleet-events"],
        ),
    ] {
        tb.kubectl(&["get", "--namespace", namespace])
            .args(what)
            .succeeds();
    }
    let crd = get(&["crd", "rolloutbatches.gpufleet.io"]);
    assert_eq!(
        crd["metadata"]["annotations"]["meta.helm.sh/release-name"],
        release
    );
    assert_eq!(
        crd["metadata"]["annotations"]["helm.sh/resource-policy"],
        "keep"
    );

    // Upgrade: the changed value reaches the Deployment, and the CRDs are
    // upgraded with the release (here: a label added to every object).
    tb.helm(&["upgrade", release])
        .arg(chart())
        .args([
            "--namespace",
            release,
            "--reuse-values",
            "--set",
            "logLevel=debug,commonLabels.gpufleet-test=upgraded",
        ])
        .succeeds();
    let upgraded = get(&["deployment", deployment]);
    let c = &upgraded["spec"]["template"]["spec"]["containers"][0];
    assert!(
        run_args(c).contains(&"--log-level=debug".to_string()),
        "{c}"
    );
    assert!(
        !run_args(c).contains(&"--log-level=info".to_string()),
        "{c}"
    );
    assert_eq!(
        get(&["crd", "gpupools.gpufleet.io"])["metadata"]["labels"]["gpufleet-test"],
        "upgraded"
    );
    let history = tb
        .helm(&["history", release, "--namespace", release, "-o", "json"])
        .succeeds();
    let history: Value = serde_json::from_str(&history.stdout).expect("json");
    assert_eq!(history.as_array().map(Vec::len), Some(2), "{history}");

    // Uninstall: everything goes but the CRDs (and every pool and batch).
    let ran = tb
        .helm(&["uninstall", release, "--namespace", release])
        .succeeds();
    assert!(
        ran.stdout.contains("kept due to the resource policy"),
        "{}",
        ran.stdout
    );
    for what in [
        vec!["deployment", deployment],
        vec!["serviceaccount", deployment],
        vec!["clusterrole", deployment],
        vec!["clusterrolebinding", deployment],
        vec!["clusterrole", "chart-lifecycle-gpufleet-edit"],
    ] {
        let ran = tb
            .kubectl(&["get", "--namespace", release])
            .args(&what)
            .fails();
        assert!(ran.stderr.contains("NotFound"), "{what:?}: {}", ran.stderr);
    }
    for crd in ["gpupools.gpufleet.io", "rolloutbatches.gpufleet.io"] {
        let ran = tb
            .kubectl(&["get", "crd", crd, "-o"])
            .arg("jsonpath={.status.conditions[?(@.type==\"Established\")].status}")
            .succeeds();
        assert_eq!(ran.stdout, "True", "{crd} after uninstall");
    }
}

/// `kubectl auth can-i` as the chart's service account (impersonated):
/// everything of `rbac-used.txt` (what gpufleet used), and none of what it
/// does not: no writes to pools, no pods outside the probe namespace, no
/// events outside `default`, no other Lease.
#[test]
fn chart_service_account_can_do_what_gpufleet_does_and_no_more() {
    let tb = testbed();
    let ns = "chart-rbac";
    let probes = "chart-rbac-probes";
    install(tb, ns, &[]);
    let account = format!("system:serviceaccount:{ns}:chart-rbac-gpufleet");
    let can = |args: &[&str]| -> bool {
        let ran = tb
            .kubectl(&["auth", "can-i"])
            .args(args)
            .arg(format!("--as={account}"))
            .run();
        match ran.stdout.trim() {
            "yes" => true,
            "no" => false,
            other => panic!("{}: {other}{}", ran.what, ran.stderr),
        }
    };
    for access in rbac_used(ns, probes) {
        let (resource, subresource) = match access.resource.split_once('/') {
            Some((r, sub)) => (r.to_string(), Some(sub.to_string())),
            None => (access.resource.clone(), None),
        };
        let mut target = match access.group.as_str() {
            "" => resource.clone(),
            group => format!("{resource}.{group}"),
        };
        // The Lease's rights are its own name's.
        if resource == "leases" {
            target = format!("{target}/chart-rbac-gpufleet");
        }
        let mut args = vec![access.verb.clone(), target];
        if let Some(sub) = subresource {
            args.push(format!("--subresource={sub}"));
        }
        if access.scope != audit::CLUSTER {
            args.extend(["-n".to_string(), access.scope.clone()]);
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        assert!(can(&args), "{account} cannot {args:?}");
    }
    let may_not = [
        &["get", "secrets", "--all-namespaces"][..],
        &["list", "secrets", "-n", ns],
        &["list", "secrets", "-n", probes],
        &["get", "secrets", "-n", "kube-system"],
        &["get", "configmaps", "-n", ns],
        // Pods: only in the probe namespace, and no exec.
        &["create", "pods", "-n", ns],
        &["list", "pods", "-n", ns],
        &["create", "pods", "-n", "default"],
        &["delete", "pods", "-n", "default"],
        &["list", "pods", "--all-namespaces"],
        &["create", "pods", "--subresource=exec", "-n", probes],
        &["update", "pods", "-n", probes],
        &["patch", "pods", "-n", probes],
        &[
            "create",
            "serviceaccounts",
            "--subresource=token",
            "-n",
            probes,
        ],
        // Nodes: labels, annotations and taints through patch only.
        &["update", "nodes"],
        &["delete", "nodes"],
        &["create", "nodes"],
        &["patch", "nodes", "--subresource=status"],
        // Pools: read only; a pool's probe template is root on its nodes.
        &["create", "gpupools.gpufleet.io"],
        &["patch", "gpupools.gpufleet.io"],
        &["update", "gpupools.gpufleet.io"],
        &["delete", "gpupools.gpufleet.io"],
        &["update", "gpupools.gpufleet.io", "--subresource=status"],
        // Batches: the finalizer (a patch) and status only.
        &["create", "rolloutbatches.gpufleet.io"],
        &["update", "rolloutbatches.gpufleet.io"],
        &["delete", "rolloutbatches.gpufleet.io"],
        &[
            "update",
            "rolloutbatches.gpufleet.io",
            "--subresource=status",
        ],
        &[
            "update",
            "rolloutbatches.gpufleet.io",
            "--subresource=finalizers",
        ],
        // Events: only in `default`, only the events.k8s.io API.
        &["create", "events", "-n", "default"],
        &["create", "events.events.k8s.io", "-n", ns],
        &["create", "events.events.k8s.io", "-n", "kube-system"],
        &["delete", "events.events.k8s.io", "-n", "default"],
        // The Lease: its own, in its own namespace.
        &["get", "leases.coordination.k8s.io", "-n", "default"],
        &["create", "leases.coordination.k8s.io", "-n", probes],
        &[
            "update",
            "leases.coordination.k8s.io/someone-else",
            "-n",
            ns,
        ],
        &["create", "clusterrolebindings"],
        &["*", "*"],
    ];
    for args in may_not {
        assert!(!can(args), "{account} can {args:?}");
    }

    // The aggregated roles, bound to a user of their own (the test bed has no
    // controller manager to aggregate them into `view` and `edit`).
    let user = "chart-rbac-batch-operator";
    let bindings: Vec<Value> = ["view", "edit"]
        .iter()
        .map(|role| {
            json!({
                "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
                "metadata": {"name": format!("{user}-{role}")},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                            "name": format!("chart-rbac-gpufleet-{role}")},
                "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": user}]
            })
        })
        .collect();
    let binding = json!({"apiVersion": "v1", "kind": "List", "items": bindings});
    tb.kubectl(&["apply", "-f", "-"])
        .stdin(binding.to_string())
        .succeeds();
    let user_can = |args: &[&str]| -> bool {
        let ran = tb
            .kubectl(&["auth", "can-i"])
            .args(args)
            .arg(format!("--as={user}"))
            .run();
        ran.stdout.trim() == "yes"
    };
    for args in [
        &["get", "gpupools.gpufleet.io"][..],
        &["list", "rolloutbatches.gpufleet.io"],
        &["create", "rolloutbatches.gpufleet.io"],
        &["patch", "rolloutbatches.gpufleet.io"],
        &["delete", "rolloutbatches.gpufleet.io"],
    ] {
        assert!(user_can(args), "view+edit cannot {args:?}");
    }
    for args in [
        &["create", "gpupools.gpufleet.io"][..],
        &["patch", "gpupools.gpufleet.io"],
        &["update", "gpupools.gpufleet.io"],
        &["delete", "gpupools.gpufleet.io"],
        &["patch", "gpupools.gpufleet.io", "--subresource=status"],
        &[
            "patch",
            "rolloutbatches.gpufleet.io",
            "--subresource=status",
        ],
    ] {
        assert!(!user_can(args), "view+edit can {args:?}");
    }
    tb.kubectl(&["delete", "-f", "-"])
        .stdin(binding.to_string())
        .succeeds();

    // Writing pools takes the pool-admin role, bound on purpose.
    let admin = "chart-rbac-pool-admin";
    let binding = json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
        "metadata": {"name": admin},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                    "name": "chart-rbac-gpufleet-pool-admin"},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": admin}]
    });
    tb.kubectl(&["apply", "-f", "-"])
        .stdin(binding.to_string())
        .succeeds();
    let admin_can = |args: &[&str]| -> bool {
        let ran = tb
            .kubectl(&["auth", "can-i"])
            .args(args)
            .arg(format!("--as={admin}"))
            .run();
        ran.stdout.trim() == "yes"
    };
    for verb in ["get", "create", "patch", "update", "delete"] {
        assert!(
            admin_can(&[verb, "gpupools.gpufleet.io"]),
            "pool admin cannot {verb}"
        );
    }
    for args in [
        &["patch", "gpupools.gpufleet.io", "--subresource=status"][..],
        &["create", "rolloutbatches.gpufleet.io"],
        &["create", "pods", "-n", probes],
    ] {
        assert!(!admin_can(args), "pool admin can {args:?}");
    }
    tb.kubectl(&["delete", "-f", "-"])
        .stdin(binding.to_string())
        .succeeds();
}

/// A kubeconfig with a token of the chart's service account signs in as
/// that account: what a later test needs to run `gpufleet run` with the
/// chart's rights and no more.
#[test]
fn service_account_kubeconfig_signs_in_as_the_chart_account() {
    let tb = testbed();
    let ns = "chart-token";
    install(tb, ns, &[]);
    let kubeconfig = tb.service_account_kubeconfig(ns, "chart-token-gpufleet");
    let whoami = tb
        .kubectl_with(&kubeconfig, &["auth", "whoami", "-o"])
        .arg("jsonpath={.status.userInfo.username}")
        .succeeds();
    assert_eq!(
        whoami.stdout,
        "system:serviceaccount:chart-token:chart-token-gpufleet"
    );
    tb.kubectl_with(&kubeconfig, &["get", "nodes"]).succeeds();
    tb.kubectl_with(&kubeconfig, &["get", "rolloutbatches"])
        .succeeds();
    tb.kubectl_with(&kubeconfig, &["get", "pods", "-n", "chart-token-probes"])
        .succeeds();
    // The context's namespace is the account's, where it runs no pods.
    for forbidden in [
        &["get", "secrets"][..],
        &["get", "pods"],
        &["get", "pods", "-n", "default"],
        &["get", "configmaps"],
    ] {
        let ran = tb.kubectl_with(&kubeconfig, forbidden).fails();
        assert!(
            ran.stderr.contains("Forbidden"),
            "{forbidden:?}: {}",
            ran.stderr
        );
    }
}

/// The operator's pod meets the "restricted" Pod Security Standard: the
/// API server's PodSecurity admission admits it into a namespace that
/// enforces it (a server-side dry run: nothing runs), and refuses it once a
/// value weakens it.
#[test]
fn chart_pod_meets_the_restricted_pod_security_standard() {
    let tb = testbed();
    let ns = "chart-pss";
    namespace(tb, ns);
    tb.kubectl(&[
        "label",
        "namespace",
        ns,
        "pod-security.kubernetes.io/enforce=restricted",
    ])
    .succeeds();
    tb.kubectl(&["create", "serviceaccount", "chart-pss-gpufleet", "-n", ns])
        .succeeds();
    let pod = |options: &[&str]| -> String {
        let docs = template(ns, ns, options);
        let template = &find(&docs, "Deployment", "chart-pss-gpufleet")["spec"]["template"];
        json!({"apiVersion": "v1", "kind": "Pod",
               "metadata": {"name": "chart-pss", "namespace": ns,
                            "labels": template["metadata"]["labels"]},
               "spec": template["spec"]})
        .to_string()
    };
    let ran = tb
        .kubectl(&["create", "--dry-run=server", "-f", "-"])
        .stdin(pod(&[]))
        .succeeds();
    assert!(!ran.stderr.contains("Warning"), "{}", ran.stderr);
    let ran = tb
        .kubectl(&["create", "--dry-run=server", "-f", "-"])
        .stdin(pod(&[
            "--set",
            "securityContext.allowPrivilegeEscalation=true",
        ]))
        .fails();
    assert!(
        ran.stderr.contains("violates PodSecurity"),
        "{}",
        ran.stderr
    );
}

// ------------------------------------------- monitoring: dashboard and alerts

/// What the operator exports on `/metrics`, as Prometheus stores it.
struct Exported {
    /// Each series name (counters with `_total`, histograms as `_bucket`,
    /// `_sum` and `_count`) and the labels its samples carry.
    series: BTreeMap<String, BTreeSet<String>>,
    /// Each family of a `# TYPE` line and its series names.
    families: BTreeMap<String, Vec<String>>,
}

/// `Metrics::encode()` with every family given one sample, so that the
/// samples show each series' labels.
fn exported() -> Exported {
    use gpufleet::api::{GpuPoolStatus, RolloutBatchStatus, WaveStatus};
    use gpufleet::operator::metrics::{
        BatchLabels, ErrorLabels, FailureLabels, KindLabels, Metrics, PoolLabels,
    };
    let m = Metrics::new();
    m.observe_pool("p", &GpuPoolStatus::default());
    let status = RolloutBatchStatus {
        waves: vec![WaveStatus {
            index: 1,
            ..Default::default()
        }],
        energy: Some(Default::default()),
        ..Default::default()
    };
    m.observe_batch("p", "b", &status);
    let batch = BatchLabels {
        pool: "p".into(),
        batch: "b".into(),
    };
    m.admissions.get_or_create(&batch).inc();
    m.last_progress.get_or_create(&batch).set(1);
    m.failures
        .get_or_create(&FailureLabels {
            pool: "p".into(),
            batch: "b".into(),
            reason: "probe_failed".into(),
        })
        .inc();
    m.onboarding_seconds
        .get_or_create(&PoolLabels { pool: "p".into() })
        .observe(60.0);
    m.reconcile_seconds
        .get_or_create(&KindLabels {
            kind: "gpupool".into(),
        })
        .observe(0.01);
    m.reconcile_errors
        .get_or_create(&ErrorLabels {
            kind: "gpupool".into(),
            category: "api".into(),
        })
        .inc();
    m.observe_request(&http::Method::GET, &"/api/v1/nodes".parse().expect("a URI"));
    m.leader.set(1);
    m.rack_tests
        .get_or_create(&gpufleet::operator::metrics::ResultLabels {
            pool: "p".into(),
            result: "passed".into(),
        })
        .inc();
    m.record_node_event(true);
    m.record_visits("rolloutbatch", 3);
    m.plans_paced.inc();
    let text = m.encode();

    // The series of each family, from its TYPE line: prometheus-client names
    // a counter family without `_total` there and adds it to the samples.
    let mut families = BTreeMap::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("# TYPE ") else {
            continue;
        };
        let (family, kind) = rest.split_once(' ').expect("# TYPE NAME KIND");
        let names = match kind {
            "counter" if family.ends_with("_total") => vec![family.to_string()],
            "counter" => vec![format!("{family}_total")],
            "histogram" => ["_bucket", "_sum", "_count"]
                .iter()
                .map(|suffix| format!("{family}{suffix}"))
                .collect(),
            "gauge" => vec![family.to_string()],
            other => panic!("{family} is a {other}: teach this test its series names"),
        };
        families.insert(family.to_string(), names);
    }
    // The labels of each series, from its samples.
    let mut series: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for line in text
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        let end = line.find(['{', ' ']).expect("a sample line");
        let labels = series.entry(line[..end].to_string()).or_default();
        if line[end..].starts_with('{') {
            let close = line.rfind('}').expect("a closing brace");
            labels.extend(matchers(&line[end + 1..close]));
        }
    }
    let typed: BTreeSet<&String> = families.values().flatten().collect();
    let sampled: BTreeSet<&String> = series.keys().collect();
    assert_eq!(
        typed, sampled,
        "each family needs a sample above, named as its TYPE line says:\n{text}"
    );
    Exported { series, families }
}

/// The label names of `a="x", b=~"y", c!="z"` (the inside of a selector).
fn matchers(body: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut current = String::new();
    let mut quoted = false;
    let mut escaped = false;
    for c in body.chars().chain([',']) {
        if quoted {
            match c {
                _ if escaped => escaped = false,
                '\\' => escaped = true,
                '"' => quoted = false,
                _ => {}
            }
            current.push(c);
        } else if c == '"' {
            quoted = true;
            current.push(c);
        } else if c == ',' {
            let name = current
                .split(['=', '!', '~'])
                .next()
                .unwrap_or_default()
                .trim();
            if !name.is_empty() {
                names.push(name.to_string());
            }
            current.clear();
        } else {
            current.push(c);
        }
    }
    names
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == ':'
}

/// The `gpufleet_*` selectors of a PromQL expression: each metric name and
/// the labels its matchers name.
fn selectors(expr: &str) -> Vec<(String, Vec<String>)> {
    let mut found = Vec::new();
    for (start, _) in expr.match_indices("gpufleet_") {
        if expr[..start].chars().next_back().is_some_and(is_ident) {
            continue;
        }
        let rest = &expr[start..];
        let end = rest.find(|c: char| !is_ident(c)).unwrap_or(rest.len());
        let after = rest[end..].trim_start();
        let labels = match after.strip_prefix('{') {
            Some(inner) => matchers(&inner[..inner.find('}').expect("a closing brace")]),
            None => Vec::new(),
        };
        found.push((rest[..end].to_string(), labels));
    }
    found
}

/// The label lists of every `by (...)` of a PromQL expression.
fn by_clauses(expr: &str) -> Vec<Vec<String>> {
    let mut found = Vec::new();
    for (start, _) in expr.match_indices("by") {
        if expr[..start].chars().next_back().is_some_and(is_ident) {
            continue;
        }
        let Some(inner) = expr[start + 2..].trim_start().strip_prefix('(') else {
            continue;
        };
        let inner = &inner[..inner.find(')').expect("a closing parenthesis")];
        found.push(
            inner
                .split(',')
                .map(|l| l.trim().to_string())
                .filter(|l| !l.is_empty())
                .collect(),
        );
    }
    found
}

/// The labels a text shows: `{{pool}}` (Grafana legends) or
/// `{{ $labels.pool }}` (Prometheus annotations).
fn shown_labels(text: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    for piece in text.split("{{").skip(1) {
        let inner = piece.split("}}").next().unwrap_or_default().trim();
        let inner = inner.strip_prefix("$labels.").unwrap_or(inner);
        if !inner.is_empty() && inner.chars().all(is_ident) {
            found.insert(inner.to_string());
        }
    }
    found
}

/// Checks one query: every `gpufleet_*` series it reads is exported, with
/// the labels its matchers and `by` clauses name, and the labels it shows
/// (`shown`) survive its aggregations. Returns the series it reads.
fn check_query(
    what: &str,
    expr: &str,
    shown: &BTreeSet<String>,
    exported: &Exported,
) -> BTreeSet<String> {
    let refs = selectors(expr);
    assert!(!refs.is_empty(), "{what} reads no gpufleet series: {expr}");
    // `instance`: the scrape target, which joins a gauge to its replica's
    // gpufleet_leader.
    let mut available = BTreeSet::from(["instance".to_string()]);
    for (name, labels) in &refs {
        let Some(has) = exported.series.get(name) else {
            panic!(
                "{what} reads {name}, which gpufleet does not export; it exports {:?}\n{expr}",
                exported.series.keys().collect::<Vec<_>>()
            );
        };
        for label in labels {
            assert!(
                has.contains(label),
                "{what}: {name} has no label {label:?} (it has {has:?})\n{expr}"
            );
        }
        available.extend(has.iter().cloned());
    }
    let clauses = by_clauses(expr);
    for clause in &clauses {
        for label in clause {
            assert!(
                available.contains(label),
                "{what} aggregates by {label:?}, a label none of its series has\n{expr}"
            );
        }
    }
    for label in shown {
        assert!(
            available.contains(label) && clauses.iter().all(|c| c.contains(label)),
            "{what} shows label {label:?}, which its query does not keep\n{expr}"
        );
    }
    refs.into_iter().map(|(name, _)| name).collect()
}

fn dashboard() -> Value {
    let path = chart().join("files/dashboards/gpufleet.json");
    let text = std::fs::read_to_string(&path).expect("the dashboard exists");
    serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("{} is not valid JSON: {e}", path.display()))
}

/// The dashboard is JSON that Grafana loads, with a data source variable
/// and pool and batch variables, and its queries read only series gpufleet
/// exports, with their labels; it shows every family.
#[test]
fn grafana_dashboard_reads_only_what_gpufleet_exports() {
    let exported = exported();
    let dashboard = dashboard();
    assert!(
        dashboard["schemaVersion"].as_u64().is_some_and(|v| v >= 39),
        "schemaVersion {}",
        dashboard["schemaVersion"]
    );
    assert_eq!(dashboard["uid"], "gpufleet");

    let variables = dashboard["templating"]["list"]
        .as_array()
        .expect("templating.list");
    let variable = |name: &str| -> &Value {
        variables
            .iter()
            .find(|v| v["name"] == name)
            .unwrap_or_else(|| panic!("the dashboard has no ${name} variable"))
    };
    let source = variable("datasource");
    assert_eq!(source["type"], "datasource");
    assert_eq!(source["query"], "prometheus");
    for name in ["pool", "batch"] {
        let v = variable(name);
        assert_eq!(v["type"], "query", "${name}");
        assert_eq!(v["datasource"]["uid"], "${datasource}", "${name}");
        let definition = v["definition"].as_str().expect("definition");
        assert_eq!(
            v["query"]["query"], definition,
            "${name}: query and definition"
        );
        let inner = definition
            .strip_prefix("label_values(")
            .and_then(|d| d.strip_suffix(')'))
            .unwrap_or_else(|| panic!("${name} is not label_values(...): {definition}"));
        let (selector, label) = inner.rsplit_once(',').expect("label_values(SERIES, LABEL)");
        assert_eq!(label.trim(), name);
        let used = check_query(
            &format!("variable ${name}"),
            selector,
            &BTreeSet::from([name.to_string()]),
            &exported,
        );
        assert_eq!(used.len(), 1, "${name}: {definition}");
    }

    let panels = dashboard["panels"].as_array().expect("panels");
    let mut ids = BTreeSet::new();
    let mut cells: Vec<(String, [u64; 4])> = Vec::new();
    let mut used = BTreeSet::new();
    for panel in panels {
        let title = panel["title"].as_str().expect("every panel has a title");
        assert!(
            ids.insert(panel["id"].as_u64().expect("a numeric id")),
            "panel {title:?}: its id is taken"
        );
        let grid = ["x", "y", "w", "h"].map(|k| {
            panel["gridPos"][k]
                .as_u64()
                .unwrap_or_else(|| panic!("panel {title:?}: gridPos.{k}"))
        });
        assert!(
            grid[0] + grid[2] <= 24,
            "panel {title:?} is wider than the grid"
        );
        for (other, cell) in &cells {
            let apart = grid[0] + grid[2] <= cell[0]
                || cell[0] + cell[2] <= grid[0]
                || grid[1] + grid[3] <= cell[1]
                || cell[1] + cell[3] <= grid[1];
            assert!(apart, "panels {title:?} and {other:?} overlap");
        }
        cells.push((title.to_string(), grid));
        if panel["type"] == "row" {
            continue;
        }
        assert_eq!(
            panel["datasource"]["uid"], "${datasource}",
            "panel {title:?}"
        );
        let targets = panel["targets"]
            .as_array()
            .filter(|t| !t.is_empty())
            .unwrap_or_else(|| panic!("panel {title:?} has no query"));
        for target in targets {
            assert_eq!(
                target["datasource"]["uid"], "${datasource}",
                "panel {title:?}"
            );
            let expr = target["expr"].as_str().expect("a PromQL expr");
            let legend = target["legendFormat"].as_str().unwrap_or_default();
            used.extend(check_query(
                &format!("panel {title:?}"),
                expr,
                &shown_labels(legend),
                &exported,
            ));
        }
    }
    for (family, names) in &exported.families {
        assert!(
            names.iter().any(|n| used.contains(n)),
            "the dashboard shows nothing of {family}: give it a panel"
        );
    }
    // Onboarding time p50/p95 and reconcile p99 come from the histograms.
    let exprs: Vec<&str> = panels
        .iter()
        .flat_map(|p| p["targets"].as_array().into_iter().flatten())
        .filter_map(|t| t["expr"].as_str())
        .collect();
    for (quantile, series) in [
        ("0.5", "gpufleet_node_onboarding_seconds_bucket"),
        ("0.95", "gpufleet_node_onboarding_seconds_bucket"),
        ("0.99", "gpufleet_reconcile_duration_seconds_bucket"),
    ] {
        assert!(
            exprs
                .iter()
                .any(|e| e.contains(&format!("histogram_quantile({quantile},"))
                    && e.contains(series)),
            "no histogram_quantile({quantile}) of {series}"
        );
    }
}

/// `grafanaDashboard.enabled` ships the dashboard file, unchanged, in a
/// ConfigMap the Grafana sidecar finds by its label; off by default.
#[test]
fn chart_ships_the_grafana_dashboard_in_a_configmap() {
    let docs = template("gpufleet", "gpufleet-system", &[]);
    // The one ConfigMap by default is the probe template's.
    assert!(
        docs.iter().all(|d| d["kind"] != "PrometheusRule"
            && (d["kind"] != "ConfigMap" || d["metadata"]["name"] == "gpufleet-probe-template")),
        "{:?}",
        kinds(&docs)
    );

    let docs = template(
        "gpufleet",
        "gpufleet-system",
        &["--set", "grafanaDashboard.enabled=true"],
    );
    let map = find(&docs, "ConfigMap", "gpufleet-dashboard");
    assert_eq!(map["metadata"]["namespace"], "gpufleet-system");
    assert_eq!(map["metadata"]["labels"]["grafana_dashboard"], "1");
    assert_eq!(
        map["metadata"]["labels"]["app.kubernetes.io/part-of"],
        "gpufleet"
    );
    let shipped: Value = serde_json::from_str(
        map["data"]["gpufleet.json"]
            .as_str()
            .expect("data gpufleet.json"),
    )
    .expect("the shipped dashboard is JSON");
    assert!(
        shipped == dashboard(),
        "the ConfigMap changes the dashboard"
    );

    let docs = template(
        "fleet",
        "ops",
        &[
            "--set",
            "grafanaDashboard.enabled=true,grafanaDashboard.namespace=monitoring",
            "--set",
            "grafanaDashboard.labels.team=gpu,grafanaDashboard.annotations.grafana_folder=GPU",
        ],
    );
    let map = find(&docs, "ConfigMap", "fleet-gpufleet-dashboard");
    assert_eq!(map["metadata"]["namespace"], "monitoring");
    assert_eq!(map["metadata"]["labels"]["team"], "gpu");
    assert_eq!(map["metadata"]["labels"]["grafana_dashboard"], "1");
    assert_eq!(map["metadata"]["annotations"]["grafana_folder"], "GPU");
}

/// The alerts: each reads only what gpufleet exports, carries a severity,
/// and tells the on-call person what to look at and what to do.
#[test]
fn prometheus_rule_alerts_read_what_gpufleet_exports_and_say_what_to_do() {
    let exported = exported();
    let docs = template(
        "gpufleet",
        "gpufleet-system",
        &[
            "--set",
            "prometheusRule.enabled=true,prometheusRule.labels.release=prom",
        ],
    );
    let rule = find(&docs, "PrometheusRule", "gpufleet");
    assert_eq!(rule["apiVersion"], "monitoring.coreos.com/v1");
    assert_eq!(rule["metadata"]["namespace"], "gpufleet-system");
    assert_eq!(rule["metadata"]["labels"]["release"], "prom");
    let rules = |rule: &Value| -> Vec<Value> {
        rule["spec"]["groups"]
            .as_array()
            .expect("groups")
            .iter()
            .flat_map(|g| g["rules"].as_array().expect("rules").clone())
            .collect()
    };
    let alerts = rules(rule);
    let names: Vec<&str> = alerts
        .iter()
        .map(|r| r["alert"].as_str().expect("alert rules only"))
        .collect();
    assert_eq!(
        names,
        [
            "GpufleetRolloutStalled",
            "GpufleetCircuitBreakerTripped",
            "GpufleetNoProgress",
            "GpufleetReconcileErrors",
            "GpufleetNoLeader"
        ]
    );
    let mut by_name = BTreeMap::new();
    for alert in &alerts {
        let name = alert["alert"].as_str().unwrap();
        let expr = alert["expr"].as_str().expect("expr");
        let severity = &alert["labels"]["severity"];
        assert!(
            severity == "warning" || severity == "critical",
            "{name}: severity {severity}"
        );
        let duration = alert["for"].as_str().expect("for");
        assert!(
            duration.ends_with('m') && duration[..duration.len() - 1].parse::<u32>().is_ok(),
            "{name}: for {duration}"
        );
        let summary = alert["annotations"]["summary"].as_str().expect("summary");
        let description = alert["annotations"]["description"]
            .as_str()
            .expect("description");
        assert!(!summary.is_empty(), "{name}");
        assert!(
            description.contains("kubectl "),
            "{name}'s description gives no command to run: {description}"
        );
        let mut shown = shown_labels(summary);
        shown.extend(shown_labels(description));
        check_query(&format!("alert {name}"), expr, &shown, &exported);
        by_name.insert(name, (expr, description));
    }
    let has = |name: &str, parts: &[&str], text: &str| {
        for part in parts {
            assert!(text.contains(part), "{name}: {part:?} missing from {text}");
        }
    };
    let (expr, description) = by_name["GpufleetRolloutStalled"];
    has(
        "GpufleetRolloutStalled",
        &["gpufleet_batch_stalled", "== 1"],
        expr,
    );
    has(
        "GpufleetRolloutStalled",
        &[
            "kubectl gpufleet why NODE",
            "kubectl get rbatch",
            "maxFailuresPerWave",
            "gpufleet.io/retry",
        ],
        description,
    );
    let (expr, _) = by_name["GpufleetCircuitBreakerTripped"];
    has(
        "GpufleetCircuitBreakerTripped",
        &["gpufleet_pool_breaker_tripped", "== 1"],
        expr,
    );
    let (expr, _) = by_name["GpufleetNoProgress"];
    has(
        "GpufleetNoProgress",
        &[
            "gpufleet_batch_ready",
            "== 0",
            "time() - ",
            "gpufleet_batch_last_progress_timestamp_seconds",
            "> 1800",
        ],
        expr,
    );
    let (expr, _) = by_name["GpufleetReconcileErrors"];
    has(
        "GpufleetReconcileErrors",
        &["rate(gpufleet_reconcile_errors_total"],
        expr,
    );
    let (expr, _) = by_name["GpufleetNoLeader"];
    has("GpufleetNoLeader", &["gpufleet_leader", "< 1"], expr);

    // noProgressMinutes sets the threshold, in seconds.
    let docs = template(
        "gpufleet",
        "gpufleet-system",
        &[
            "--set",
            "prometheusRule.enabled=true,prometheusRule.noProgressMinutes=45",
        ],
    );
    let alerts = rules(find(&docs, "PrometheusRule", "gpufleet"));
    let stalled = alerts
        .iter()
        .find(|r| r["alert"] == "GpufleetNoProgress")
        .expect("GpufleetNoProgress");
    let expr = stalled["expr"].as_str().unwrap();
    assert!(
        expr.contains("> 2700") && !expr.contains("> 1800"),
        "{expr}"
    );
    assert!(
        stalled["annotations"]["description"]
            .as_str()
            .unwrap()
            .contains("45 minutes")
    );

    // Without leader election the one replica always leads: no such alert.
    let docs = template(
        "gpufleet",
        "gpufleet-system",
        &[
            "--set",
            "prometheusRule.enabled=true,replicaCount=1,leaderElection.enabled=false",
        ],
    );
    let alerts = rules(find(&docs, "PrometheusRule", "gpufleet"));
    assert_eq!(alerts.len(), 4);
    assert!(alerts.iter().all(|r| r["alert"] != "GpufleetNoLeader"));
}

/// Each replica is named by its pod, in the Lease and its user agent.
#[test]
fn chart_names_each_replica_by_its_pod() {
    let docs = template("gpufleet", "gpufleet-system", &[]);
    let c = container(&docs, "gpufleet");
    assert_eq!(
        c["env"][1],
        json!({"name": "POD_NAME",
               "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}})
    );
}

#[test]
fn helm_lint_strict_passes_with_the_dashboard_and_alerts() {
    let ran = helm(&["lint", "--strict"])
        .arg(chart())
        .args([
            "--set",
            "grafanaDashboard.enabled=true,prometheusRule.enabled=true,metrics.serviceMonitor.enabled=true",
        ])
        .succeeds();
    assert!(ran.stdout.contains("0 chart(s) failed"), "{}", ran.stdout);
}

/// The schema checks the monitoring values too.
#[test]
fn values_schema_checks_the_monitoring_values() {
    let cases: &[(&[&str], &str)] = &[
        (
            &["--set", "prometheusRule.noProgressMinutes=0"],
            "noProgressMinutes",
        ),
        (
            &["--set", "prometheusRule.noProgressMinutes=abc"],
            "noProgressMinutes",
        ),
        (&["--set", "prometheusRule.enable=true"], "enable"),
        (
            &["--set", "grafanaDashboard.enabled=yes"],
            "grafanaDashboard/enabled",
        ),
        (
            &["--set", "grafanaDashboard.namespace=Not_A_Namespace"],
            "namespace",
        ),
        (
            &["--set-json", r#"grafanaDashboard.labels={"a":1}"#],
            "labels",
        ),
    ];
    for (args, named) in cases {
        let ran = helm(&["template", "typo"]).arg(chart()).args(*args).fails();
        assert!(
            ran.stderr.contains(named),
            "helm template {args:?} failed without naming {named}:\n{}",
            ran.stderr
        );
    }
}

/// With the dashboard and alerts on, the API server accepts the output
/// (`kubectl apply --dry-run=server`), all but the PrometheusRule: the test
/// bed has no Prometheus Operator CRDs, so that one is checked by the tests
/// above, from `helm template`.
#[test]
fn chart_monitoring_output_is_accepted_by_the_api_server() {
    let tb = testbed();
    let ns = "chart-monitoring";
    namespace(tb, ns);
    applied_namespace(tb, "chart-monitoring-probes");
    let docs = template(
        ns,
        ns,
        &[
            "--set",
            "grafanaDashboard.enabled=true,prometheusRule.enabled=true",
        ],
    );
    let (rules, rest): (Vec<Value>, Vec<Value>) = docs
        .into_iter()
        .partition(|d| d["kind"] == "PrometheusRule");
    assert_eq!(rules.len(), 1);
    let list = json!({"apiVersion": "v1", "kind": "List", "items": rest});
    let ran = tb
        .kubectl(&["apply", "--dry-run=server", "-f", "-"])
        .stdin(list.to_string())
        .succeeds();
    assert!(
        ran.stdout
            .contains("configmap/chart-monitoring-gpufleet-dashboard"),
        "{}",
        ran.stdout
    );
    assert!(
        ran.stdout
            .contains("deployment.apps/chart-monitoring-gpufleet"),
        "{}",
        ran.stdout
    );
    assert!(
        !ran.stderr.contains("Warning"),
        "the API server warned: {}",
        ran.stderr
    );
}

// ------------------------------------------------ least privilege, proven by use

/// The table of what gpufleet's ServiceAccount used, derived from the audit
/// log by [`gpufleet_uses_exactly_what_the_chart_grants`].
const RBAC_USED: &str = "charts/gpufleet/rbac-used.txt";

/// In [`RBAC_USED`], the release namespace and the probe namespace are
/// placeholders; everything else (`cluster`, `default`) is itself.
fn rbac_placeholder(release: &str, probes: &str) -> impl Fn(&str) -> String {
    let (release, probes) = (release.to_string(), probes.to_string());
    move |scope: &str| match scope {
        s if s == release => "<release>".into(),
        s if s == probes => "<probes>".into(),
        s => s.into(),
    }
}

fn rbac_namespace(release: &str, probes: &str) -> impl Fn(&str) -> String {
    let (release, probes) = (release.to_string(), probes.to_string());
    move |scope: &str| match scope {
        "<release>" => release.clone(),
        "<probes>" => probes.clone(),
        s => s.into(),
    }
}

/// The committed table, its placeholders filled in.
fn rbac_used(release: &str, probes: &str) -> BTreeSet<Access> {
    let text = std::fs::read_to_string(repo().join(RBAC_USED)).expect("rbac-used.txt");
    audit::parse_table(&text, rbac_namespace(release, probes))
}

/// One rule of a role bound to an account, for one access: the names it
/// is limited to (`resourceNames`), if any.
struct Grant {
    access: Access,
    names: Option<BTreeSet<String>>,
}

/// Everything the rendered roles grant the ServiceAccount `account` of
/// `namespace`: ClusterRoles through ClusterRoleBindings (cluster-wide),
/// Roles through RoleBindings (in their namespace).
fn grants_to(docs: &[Value], namespace: &str, account: &str) -> Vec<Grant> {
    let mut grants = Vec::new();
    for binding in docs {
        let (role_kind, scope) = match binding["kind"].as_str() {
            Some("ClusterRoleBinding") => ("ClusterRole", audit::CLUSTER.to_string()),
            Some("RoleBinding") => (
                "Role",
                binding["metadata"]["namespace"]
                    .as_str()
                    .expect("a RoleBinding names its namespace")
                    .to_string(),
            ),
            _ => continue,
        };
        let bound = binding["subjects"].as_array().is_some_and(|subjects| {
            subjects.iter().any(|s| {
                s["kind"] == "ServiceAccount" && s["name"] == account && s["namespace"] == namespace
            })
        });
        if !bound {
            continue;
        }
        assert_eq!(binding["roleRef"]["kind"], role_kind, "{binding}");
        let role = docs
            .iter()
            .find(|d| {
                d["kind"] == role_kind
                    && d["metadata"]["name"] == binding["roleRef"]["name"]
                    && (role_kind == "ClusterRole"
                        || d["metadata"]["namespace"] == binding["metadata"]["namespace"])
            })
            .unwrap_or_else(|| panic!("{binding} binds a role the chart lacks"));
        for rule in role["rules"].as_array().expect("rules") {
            let strings = |field: &str| -> Vec<String> {
                serde_json::from_value(rule[field].clone()).unwrap_or_default()
            };
            let names = rule
                .get("resourceNames")
                .map(|_| strings("resourceNames").into_iter().collect());
            for group in strings("apiGroups") {
                for resource in strings("resources") {
                    for verb in strings("verbs") {
                        grants.push(Grant {
                            access: Access {
                                scope: scope.clone(),
                                group: group.clone(),
                                resource: resource.clone(),
                                verb,
                            },
                            names: names.clone(),
                        });
                    }
                }
            }
        }
    }
    grants
}

/// Does a grant allow this request? A cluster-wide grant covers every
/// namespace; `resourceNames` limit it to requests on those objects.
fn allows(grant: &Grant, request: &audit::Request) -> bool {
    let (g, r) = (&grant.access, &request.access);
    (g.scope == r.scope || g.scope == audit::CLUSTER)
        && g.group == r.group
        && g.resource == r.resource
        && g.verb == r.verb
        && grant.names.as_ref().is_none_or(|names| {
            request
                .name
                .as_ref()
                .is_some_and(|name| names.contains(name))
        })
}

/// Least privilege, proven by use: `gpufleet run`, signed in as the chart's
/// ServiceAccount (a token from `kubectl create token`), rolls a batch out
/// in two waves (probe pods made and deleted in the probe namespace, node
/// patches, status of batch and pool, events, a repeated event patched, the
/// Lease created, read and renewed), then the batch is deleted (the
/// finalizer's cleanup and removal). The API server's audit log then lists
/// every request the account made, and those must be exactly what the
/// chart grants it, both ways: no request refused or outside the grants
/// (the code uses something the chart does not grant), and no grant unused
/// (the chart grants something gpufleet does not use). Each access counts
/// by (namespace or cluster-wide, API group, resource, verb): a
/// cluster-wide grant that was only used in one namespace counts as unused.
/// The accesses are also the committed table `charts/gpufleet/rbac-used.txt`.
///
/// Along the way: probe pods run in the probe namespace (privileged, as the
/// pool's template asks; the release namespace enforces `restricted` and
/// would refuse them) as the probe ServiceAccount, without a token.
#[test]
fn gpufleet_uses_exactly_what_the_chart_grants() {
    use crate::support::scenario::Scenario;
    use std::time::Duration;
    let tb = testbed();
    let release = "rbac-run";
    let probes = "rbac-run-probes";
    install(tb, release, &[]);
    tb.kubectl(&[
        "label",
        "namespace",
        release,
        "pod-security.kubernetes.io/enforce=restricted",
    ])
    .succeeds();
    let account = format!("{release}-gpufleet");
    let kubeconfig = tb.service_account_kubeconfig(release, &account);
    let s = Scenario::new(release).probes_in(probes, Duration::from_secs(2));
    // The log of this run only (an earlier run's would be appended to).
    let _ = std::fs::remove_file(&s.log);
    let batch = "rbac-run-b";
    s.create_nodes(&s.fleet(batch, 2, 18));
    // A burn-in that needs privileges, as DCGM's does.
    // A rack test with a ComputeDomain per group, as on an NVL72.
    s.apply(&s.pool_yaml(
        "spec: {healthChecks: {probe: {template: {spec: {containers: \
         [{name: burn-in, image: busybox, securityContext: {privileged: true}}]}}}, \
         domainTest: {computeDomain: true, template: {spec: {containers: [{name: nccl, image: busybox}]}}}}}",
    ));
    let mut operator = s.spawn_operator_as(
        &kubeconfig,
        &[
            "--leader-elect",
            "--lease-name",
            &account,
            "--lease-seconds",
            "6",
        ],
    );
    s.apply(&s.batch_yaml(batch, "spec: {waves: [{nodes: 18}, {percent: 100}]}"));
    s.wait_until("a probe pod runs", Duration::from_secs(60), |s| {
        !s.probe_pods().is_empty()
    });
    let probe = s.probe_pods().remove(0);
    let spec = probe.spec.clone().expect("a pod has a spec");
    assert_eq!(
        (
            spec.service_account_name.as_deref(),
            spec.automount_service_account_token
        ),
        (Some("gpufleet-probe"), Some(false)),
        "a probe runs as the probe account, without a token"
    );
    // The same pod in the release namespace: refused, so probes had to move.
    let mut elsewhere = serde_json::to_value(&probe).expect("a pod is JSON");
    elsewhere["metadata"] = json!({"name": "rbac-run-privileged", "namespace": release});
    elsewhere["spec"]["serviceAccountName"] = json!(account);
    elsewhere["status"] = Value::Null;
    let ran = tb
        .kubectl(&["create", "--dry-run=server", "-f", "-"])
        .stdin(elsewhere.to_string())
        .fails();
    assert!(
        ran.stderr.contains("violates PodSecurity"),
        "{}",
        ran.stderr
    );

    s.wait_ready(batch, Duration::from_secs(180));
    assert_eq!(s.count("ready"), 36);
    s.kubectl(&["delete", "rolloutbatch", batch, "--timeout=60s"])
        .succeeds();
    let _ = operator.kill();
    let _ = operator.wait();
    let log = std::fs::read_to_string(&s.log).unwrap_or_default();
    let Some(text) = s.audit_text() else {
        assert!(
            !log.contains("forbidden"),
            "the service account was refused something:\n{log}"
        );
        eprintln!("no audit log (GPUFLEET_TEST_KUBECONFIG): the uses are not checked");
        return;
    };
    let requests = audit::requests_of(&text, &format!("system:serviceaccount:{release}:{account}"));
    let docs = template(release, release, &[]);
    let grants = grants_to(&docs, release, &account);
    let refused: BTreeSet<String> = requests
        .iter()
        .filter(|r| r.code == 401 || r.code == 403)
        .map(|r| r.access.to_string())
        .collect();
    assert!(refused.is_empty(), "refused: {refused:#?}");
    let outside: BTreeSet<String> = requests
        .iter()
        .filter(|r| !grants.iter().any(|g| allows(g, r)))
        .map(|r| format!("{} ({:?})", r.access, r.name))
        .collect();
    assert!(
        outside.is_empty(),
        "gpufleet did what the chart does not grant: {outside:#?}"
    );
    let used: BTreeSet<Access> = requests.into_iter().map(|r| r.access).collect();
    let unused: BTreeSet<String> = grants
        .iter()
        .filter(|g| !used.contains(&g.access))
        .map(|g| g.access.to_string())
        .collect();
    assert!(
        unused.is_empty(),
        "the chart grants what gpufleet never used: {unused:#?}"
    );
    assert!(
        !log.contains("forbidden"),
        "the service account was refused something:\n{log}"
    );

    // The table a reviewer reads is the one the audit log gives.
    let derived = audit::table(&used, rbac_placeholder(release, probes));
    if rbac_used(release, probes) != used {
        let path = crate::support::scratch_dir().join("rbac-used.txt");
        std::fs::write(&path, &derived).expect("writing the derived table");
        panic!(
            "{RBAC_USED} is not what the audit log shows; if the change is meant, \
             copy {} over it (keeping its header). Derived:\n{derived}",
            path.display()
        );
    }
}

/// The rights `nvcre.enabled` adds, proven by use as above: `gpufleet run
/// --nvcre` as the chart's ServiceAccount runs a rack through NVCRE (its
/// stand-in plays NVCRE's controller; one tray it names failed, so the
/// ConfigMap of failed nodes is read). Every request is within the grants,
/// and what the NVCRE rules grant (Certifications and ConfigMaps in the
/// probe namespace) is exactly what was used of them; without
/// `nvcre.enabled` the chart grants none of it and passes no `--nvcre`.
#[test]
fn nvcre_rights_are_granted_only_when_enabled_and_all_used() {
    use crate::support::scenario::Scenario;
    use std::time::Duration;
    let nvcre_rule = |docs: &[Value]| -> Vec<Value> {
        let role = find(docs, "Role", &format!("{}-gpufleet-probes", "rbac-nvcre"));
        role["rules"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| {
                r["apiGroups"] == json!(["nvcre.nvidia.com"])
                    || r["resources"] == json!(["configmaps"])
            })
            .cloned()
            .collect()
    };
    let off = template("rbac-nvcre", "rbac-nvcre", &[]);
    assert!(nvcre_rule(&off).is_empty(), "granted without nvcre.enabled");
    assert!(!run_args(&container(&off, "rbac-nvcre-gpufleet")).contains(&"--nvcre".to_string()));
    let on_args = ["--set", "nvcre.enabled=true"];
    let on = template("rbac-nvcre", "rbac-nvcre", &on_args);
    assert_eq!(nvcre_rule(&on).len(), 2);
    assert!(run_args(&container(&on, "rbac-nvcre-gpufleet")).contains(&"--nvcre".to_string()));

    let tb = testbed();
    let release = "rbac-nvcre";
    let probes = "rbac-nvcre-probes";
    install(tb, release, &on_args);
    let account = format!("{release}-gpufleet");
    let kubeconfig = tb.service_account_kubeconfig(release, &account);
    let s = Scenario::new(release).probes_in(probes, Duration::from_secs(1));
    let _ = std::fs::remove_file(&s.log);
    let batch = "rbac-nvcre-b";
    let mut nodes = s.fleet(batch, 1, 18);
    nodes[5].nvcre_failure = Some("HardwareFailureDetected: XID 79".into());
    s.create_nodes(&nodes);
    let stand_in = s.rt.spawn(gpufleet::simulate::nvcre(
        s.client.clone(),
        probes.to_string(),
        Duration::from_secs(1),
    ));
    s.apply(&s.pool_yaml("spec: {healthChecks: {domainTest: {nvcre: {}}}}"));
    let mut operator = s.spawn_operator_as(&kubeconfig, &["--nvcre"]);
    s.apply(&s.batch_yaml(batch, "spec: {waves: [{percent: 100}]}"));
    s.wait_until("the rack is decided", Duration::from_secs(180), |s| {
        s.count("ready") == 17 && s.count("failed") == 1
    });
    s.wait_until(
        "the Certifications are gone",
        Duration::from_secs(30),
        |s| {
            s.kubectl(&["get", "certifications", "-n", probes, "-o", "name"])
                .succeeds()
                .stdout
                .trim()
                .is_empty()
        },
    );
    let _ = operator.kill();
    let _ = operator.wait();
    stand_in.abort();
    let log = std::fs::read_to_string(&s.log).unwrap_or_default();
    assert!(!log.contains("forbidden"), "refused something:\n{log}");
    let Some(text) = s.audit_text() else {
        eprintln!("no audit log (GPUFLEET_TEST_KUBECONFIG): the uses are not checked");
        return;
    };
    let requests = audit::requests_of(&text, &format!("system:serviceaccount:{release}:{account}"));
    let grants = grants_to(&on, release, &account);
    let outside: BTreeSet<String> = requests
        .iter()
        .filter(|r| r.code == 401 || r.code == 403 || !grants.iter().any(|g| allows(g, r)))
        .map(|r| format!("{} ({:?})", r.access, r.name))
        .collect();
    assert!(outside.is_empty(), "not granted: {outside:#?}");
    let nvcre = |a: &Access| a.group == "nvcre.nvidia.com" || a.resource == "configmaps";
    let used: BTreeSet<String> = requests
        .iter()
        .filter(|r| nvcre(&r.access))
        .map(|r| r.access.to_string())
        .collect();
    let granted: BTreeSet<String> = grants
        .iter()
        .filter(|g| nvcre(&g.access))
        .map(|g| g.access.to_string())
        .collect();
    assert_eq!(used, granted, "NVCRE rights used and granted differ");
}
