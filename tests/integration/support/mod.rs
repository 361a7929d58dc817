//! The shared control plane of the integration tests, and a kubectl runner.
//!
//! One control plane serves every test of this binary: the first test to ask
//! starts it through `tests/testbed/controlplane.py up --watch-pid`, which
//! stops it and removes its folder when this process exits, however it exits.
//! Set `GPUFLEET_TEST_KUBECONFIG` to run against an existing (disposable)
//! cluster instead; `GPUFLEET_TEST_KUBECTL` then names the kubectl to use
//! (default: the test bed's, else `kubectl` on the PATH).
//!
//! Tests share the cluster, so each uses its own object names.

pub mod audit;
pub mod scenario;

use std::ffi::OsStr;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// A running cluster the tests may use.
pub struct Testbed {
    pub kubeconfig: PathBuf,
    pub kubectl: PathBuf,
    /// The API server's audit log (JSON lines), when the test bed runs it.
    pub audit_log: Option<PathBuf>,
    /// etcd's client address (`127.0.0.1:PORT`), when the test bed runs it:
    /// to write what admission would refuse, as an older CRD or a direct
    /// etcd write leaves behind.
    pub etcd: Option<String>,
    /// The watcher that owns the control plane; never waited on, it exits
    /// after this process does.
    _watcher: Mutex<Option<Child>>,
}

static TESTBED: OnceLock<Testbed> = OnceLock::new();

/// The repository root.
pub fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The shared cluster, with gpufleet's CRDs installed and Established.
pub fn testbed() -> &'static Testbed {
    TESTBED.get_or_init(|| {
        let testbed = match std::env::var_os("GPUFLEET_TEST_KUBECONFIG") {
            Some(kubeconfig) => Testbed {
                kubeconfig: kubeconfig.into(),
                kubectl: std::env::var_os("GPUFLEET_TEST_KUBECTL")
                    .map(PathBuf::from)
                    .unwrap_or_else(cached_kubectl),
                audit_log: None,
                etcd: None,
                _watcher: Mutex::new(None),
            },
            None => start_control_plane(),
        };
        testbed.install_crds();
        testbed
    })
}

fn cached_kubectl() -> PathBuf {
    let out = Command::new(repo().join("tests/testbed/build.sh"))
        .arg("--print")
        .output()
        .expect("running tests/testbed/build.sh --print");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|dir| Path::new(dir).join("kubectl"))
        .find(|p| p.exists())
        .unwrap_or_else(|| PathBuf::from("kubectl"))
}

/// `controlplane.py up --kwok --json --watch-pid <this process>`: the
/// watcher (which stops the control plane once this process exits) and
/// the JSON line it printed.
fn spawn_control_plane() -> (Child, serde_json::Value) {
    let script = repo().join("tests/testbed/controlplane.py");
    let mut child = Command::new("python3")
        .arg(&script)
        .args(["up", "--kwok", "--json", "--watch-pid"])
        .arg(std::process::id().to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap_or_else(|e| panic!("starting {}: {e}", script.display()));
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("piped stdout"))
        .read_line(&mut line)
        .expect("reading the control plane's JSON line");
    let info: serde_json::Value = serde_json::from_str(&line).unwrap_or_else(|e| {
        panic!(
            "{} up did not print its JSON line ({e}); got {line:?}. \
             Its diagnostics are above; run it by hand to see more.",
            script.display()
        )
    });
    (child, info)
}

fn start_control_plane() -> Testbed {
    let (child, info) = spawn_control_plane();
    let field = |name: &str| -> PathBuf {
        info[name]
            .as_str()
            .unwrap_or_else(|| panic!("control plane JSON lacks {name}: {info}"))
            .into()
    };
    Testbed {
        kubeconfig: field("kubeconfig"),
        kubectl: field("kubectl"),
        audit_log: info["audit_log"].as_str().map(PathBuf::from),
        etcd: info["ports"]["etcd_client"]
            .as_u64()
            .map(|port| format!("127.0.0.1:{port}")),
        _watcher: Mutex::new(Some(child)),
    }
}

impl Testbed {
    /// `kubectl apply -f crds/` and wait until both CRDs are Established.
    fn install_crds(&self) {
        self.kubectl(&["apply", "-f"])
            .arg(repo().join("crds"))
            .succeeds();
        // What other operators' objects gpufleet makes (a ComputeDomain per
        // rack test group) need: their CRDs, as the test bed's stand-ins.
        self.kubectl(&["apply", "-f"])
            .arg(repo().join("tests/integration/crds"))
            .succeeds();
        self.kubectl(&[
            "wait",
            "--for=condition=Established",
            "--timeout=60s",
            "crd/gpupools.gpufleet.io",
            "crd/rolloutbatches.gpufleet.io",
            "crd/computedomains.resource.nvidia.com",
            "crd/certifications.nvcre.nvidia.com",
            "crd/clusterprofiles.multicluster.x-k8s.io",
            "crd/fleetrollouts.gpufleet.io",
        ])
        .succeeds();
    }

    /// A kubectl command against this cluster.
    pub fn kubectl(&self, args: &[&str]) -> Kubectl {
        let mut cmd = Command::new(&self.kubectl);
        cmd.arg("--kubeconfig").arg(&self.kubeconfig).args(args);
        Kubectl { cmd, stdin: None }
    }
}

impl Testbed {
    /// kubectl against this cluster with another kubeconfig, such as one
    /// from [`Testbed::service_account_kubeconfig`].
    pub fn kubectl_with(&self, kubeconfig: &Path, args: &[&str]) -> Kubectl {
        let mut cmd = Command::new(&self.kubectl);
        cmd.arg("--kubeconfig").arg(kubeconfig).args(args);
        Kubectl { cmd, stdin: None }
    }

    /// The test bed's helm against this cluster (see [`helm`]).
    pub fn helm(&self, args: &[&str]) -> Kubectl {
        helm(args).arg("--kubeconfig").arg(&self.kubeconfig)
    }

    /// Writes a kubeconfig that signs in as the ServiceAccount `name` of
    /// `namespace`, with a token from `kubectl create token` (valid for an
    /// hour), and returns its path. Whatever runs with it (kubectl, or
    /// `gpufleet run --kubeconfig`) has exactly the rights RBAC grants that
    /// account, as a pod running under it would.
    pub fn service_account_kubeconfig(&self, namespace: &str, name: &str) -> PathBuf {
        let token = self
            .kubectl(&["create", "token", name, "--namespace", namespace])
            .arg("--duration=1h")
            .succeeds()
            .stdout
            .trim()
            .to_string();
        assert!(!token.is_empty(), "kubectl create token printed no token");
        // The admin kubeconfig's cluster: server address and CA, no credentials.
        let admin = self
            .kubectl(&[
                "config",
                "view",
                "--raw",
                "--minify",
                "--flatten",
                "-o",
                "json",
            ])
            .succeeds();
        let admin: serde_json::Value =
            serde_json::from_str(&admin.stdout).expect("kubectl config view prints JSON");
        let cluster = admin["clusters"][0]["cluster"].clone();
        assert!(cluster["server"].is_string(), "no server in {admin}");
        let user = format!("system:serviceaccount:{namespace}:{name}");
        let config = serde_json::json!({
            "apiVersion": "v1", "kind": "Config",
            "clusters": [{"name": "testbed", "cluster": cluster}],
            "users": [{"name": user, "user": {"token": token}}],
            "contexts": [{"name": user, "context": {
                "cluster": "testbed", "user": user, "namespace": namespace}}],
            "current-context": user,
        });
        let path = scratch_dir().join(format!("{namespace}.{name}.kubeconfig"));
        // It holds a token: readable by its owner only.
        std::fs::write(&path, config.to_string())
            .and_then(|()| {
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
            })
            .unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
        path
    }
}

/// A folder under the target directory for files that tests write
/// (kubeconfigs, helm's config and cache); each run overwrites the last's.
pub fn scratch_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("integration");
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        dir
    })
}

/// A binary the test bed builds (`helm`, `kstatus`): the first of the
/// folders `tests/testbed/build.sh --print` names that holds it.
pub fn testbed_tool(name: &str) -> PathBuf {
    static BINS: OnceLock<Vec<PathBuf>> = OnceLock::new();
    let bins = BINS.get_or_init(|| {
        let out = Command::new(repo().join("tests/testbed/build.sh"))
            .arg("--print")
            .output()
            .expect("running tests/testbed/build.sh --print");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(PathBuf::from)
            .collect()
    });
    bins.iter()
        .map(|dir| dir.join(name))
        .find(|p| p.exists())
        .unwrap_or_else(|| {
            panic!("{name} is in none of {bins:?}: run tests/testbed/build.sh to build it")
        })
}

/// Any program, run like kubectl is: `.run()`, `.succeeds()`, `.fails()`.
pub fn command(program: impl AsRef<OsStr>, args: &[&str]) -> Kubectl {
    let mut cmd = Command::new(program);
    cmd.args(args);
    Kubectl { cmd, stdin: None }
}

/// The test bed's helm, with config, cache and data folders of the tests'
/// own (nothing read from or written to the home folder) and no cluster: for
/// `helm template` and `helm lint`. [`Testbed::helm`] adds the cluster.
pub fn helm(args: &[&str]) -> Kubectl {
    let home = scratch_dir().join("helm");
    let mut ran = command(testbed_tool("helm"), args);
    for (var, dir) in [
        ("HELM_CONFIG_HOME", "config"),
        ("HELM_CACHE_HOME", "cache"),
        ("HELM_DATA_HOME", "data"),
    ] {
        ran.cmd.env(var, home.join(dir));
    }
    ran
}

/// A kubectl invocation being built.
pub struct Kubectl {
    cmd: Command,
    stdin: Option<String>,
}

/// What a kubectl invocation did.
pub struct Ran {
    pub what: String,
    pub ok: bool,
    /// The exit code (None when a signal ended it).
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Kubectl {
    pub fn arg(mut self, arg: impl AsRef<std::ffi::OsStr>) -> Self {
        self.cmd.arg(arg);
        self
    }

    /// More arguments at once.
    pub fn args<S: AsRef<OsStr>>(mut self, args: impl IntoIterator<Item = S>) -> Self {
        self.cmd.args(args);
        self
    }

    /// Feed this text on stdin (for `-f -`).
    pub fn stdin(mut self, text: impl Into<String>) -> Self {
        self.stdin = Some(text.into());
        self
    }

    pub fn run(mut self) -> Ran {
        let what = format!("{:?}", self.cmd);
        self.cmd
            .stdin(if self.stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = self.cmd.spawn().unwrap_or_else(|e| panic!("{what}: {e}"));
        if let Some(text) = self.stdin {
            child
                .stdin
                .take()
                .expect("piped stdin")
                .write_all(text.as_bytes())
                .expect("writing kubectl stdin");
        }
        let Output {
            status,
            stdout,
            stderr,
        } = child
            .wait_with_output()
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        Ran {
            what,
            ok: status.success(),
            code: status.code(),
            stdout: String::from_utf8_lossy(&stdout).into_owned(),
            stderr: String::from_utf8_lossy(&stderr).into_owned(),
        }
    }

    /// Runs and panics with kubectl's output unless it succeeded.
    pub fn succeeds(self) -> Ran {
        let ran = self.run();
        assert!(ran.ok, "{} failed:\n{}{}", ran.what, ran.stdout, ran.stderr);
        ran
    }

    /// Runs and panics unless it failed; returns what it printed.
    pub fn fails(self) -> Ran {
        let ran = self.run();
        assert!(
            !ran.ok,
            "{} succeeded but should have failed:\n{}",
            ran.what, ran.stdout
        );
        ran
    }
}

/// One request to etcd's JSON gateway (`/v3/...`) at `addr`: the answer.
pub fn etcd_call(addr: &str, path: &str, body: &serde_json::Value) -> serde_json::Value {
    use std::io::{Read, Write};
    let body = body.to_string();
    let mut stream = std::net::TcpStream::connect(addr).expect("connecting to etcd");
    write!(
        stream,
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .expect("writing to etcd");
    let mut answer = String::new();
    stream
        .read_to_string(&mut answer)
        .expect("reading etcd's answer");
    let json = answer.split("\r\n\r\n").nth(1).unwrap_or_default();
    // A chunked answer: the JSON is the first chunk.
    let json = json.lines().find(|l| l.starts_with('{')).unwrap_or(json);
    serde_json::from_str(json).unwrap_or_else(|e| panic!("etcd answered {answer:?}: {e}"))
}

/// Rewrites a stored object in etcd, bypassing the API server's
/// validation: `edit` changes its JSON.
pub fn etcd_edit(key: &str, edit: impl FnOnce(&mut serde_json::Value)) {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD;
    let addr = testbed().etcd.clone().expect("the test bed's etcd");
    let got = etcd_call(
        &addr,
        "/v3/kv/range",
        &serde_json::json!({"key": b64.encode(key)}),
    );
    let value = got["kvs"][0]["value"]
        .as_str()
        .unwrap_or_else(|| panic!("no {key} in etcd: {got}"));
    let mut object: serde_json::Value =
        serde_json::from_slice(&b64.decode(value).expect("base64")).expect("stored JSON");
    edit(&mut object);
    etcd_call(
        &addr,
        "/v3/kv/put",
        &serde_json::json!({"key": b64.encode(key), "value": b64.encode(object.to_string())}),
    );
}

/// A control plane of a test's own, for faults the shared one must not see.
pub struct OwnControlPlane {
    pub kubeconfig: PathBuf,
    apiserver_pid: u32,
    argv: Vec<String>,
    restarted: Option<Child>,
    _watcher: Child,
}

impl OwnControlPlane {
    pub fn start() -> OwnControlPlane {
        let (watcher, info) = spawn_control_plane();
        let kubeconfig = PathBuf::from(info["kubeconfig"].as_str().unwrap());
        let apiserver_pid = info["pids"]["kube-apiserver"].as_u64().unwrap() as u32;
        testbed()
            .kubectl_with(&kubeconfig, &["apply", "-f"])
            .arg(repo().join("crds"))
            .succeeds();
        testbed()
            .kubectl_with(
                &kubeconfig,
                &[
                    "wait",
                    "--for=condition=Established",
                    "--timeout=60s",
                    "crd/rolloutbatches.gpufleet.io",
                    "crd/gpupools.gpufleet.io",
                ],
            )
            .succeeds();
        let argv: Vec<String> = std::fs::read(format!("/proc/{apiserver_pid}/cmdline"))
            .expect("apiserver command line")
            .split(|b| *b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        OwnControlPlane {
            kubeconfig,
            apiserver_pid,
            argv,
            restarted: None,
            _watcher: watcher,
        }
    }

    /// Stops kube-apiserver for `outage`, then starts it again with the same
    /// command line (same ports, certificates and etcd).
    pub fn outage(&mut self, outage: Duration) {
        self.stop_apiserver();
        std::thread::sleep(outage);
        self.start_apiserver();
    }

    /// Freezes kube-apiserver (SIGSTOP): connections open, nothing answers,
    /// as a hung or partitioned control plane. `thaw` undoes it.
    pub fn freeze_apiserver(&self) {
        Command::new("kill")
            .args(["-STOP", &self.apiserver_pid.to_string()])
            .status()
            .expect("kill -STOP");
    }

    pub fn thaw_apiserver(&self) {
        Command::new("kill")
            .args(["-CONT", &self.apiserver_pid.to_string()])
            .status()
            .expect("kill -CONT");
    }

    /// Stops kube-apiserver (SIGTERM) and waits until it is gone.
    pub fn stop_apiserver(&mut self) {
        Command::new("kill")
            .arg(self.apiserver_pid.to_string())
            .status()
            .expect("kill");
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::path::Path::new(&format!("/proc/{}", self.apiserver_pid)).exists()
            && Instant::now() < deadline
        {
            if let Some(child) = self.restarted.as_mut() {
                let _ = child.try_wait();
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Starts kube-apiserver again as it first ran and waits until ready.
    pub fn start_apiserver(&mut self) {
        let log = std::fs::File::options()
            .create(true)
            .append(true)
            .open(
                self.kubeconfig
                    .parent()
                    .unwrap()
                    .join("logs/kube-apiserver-restarted.log"),
            )
            .unwrap();
        let child = Command::new(&self.argv[0])
            .args(&self.argv[1..])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("restarting kube-apiserver");
        self.apiserver_pid = child.id();
        if let Some(mut old) = self.restarted.replace(child) {
            let _ = old.wait();
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if testbed()
                .kubectl_with(&self.kubeconfig, &["get", "--raw", "/readyz"])
                .run()
                .ok
            {
                return;
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        panic!("kube-apiserver did not come back");
    }
}

impl Drop for OwnControlPlane {
    fn drop(&mut self) {
        if let Some(mut child) = self.restarted.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
