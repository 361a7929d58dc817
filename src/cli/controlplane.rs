//! The local control plane of `gpufleet demo` and `gpufleet bench`: etcd,
//! kube-apiserver and kwok, started and stopped by the test bed's
//! `controlplane.py` (see tests/testbed/README.md), which builds them from
//! source on first use with `build.sh`.
//!
//! The binary carries those scripts and the Go modules that pin the tools'
//! versions, and writes them on first use to a folder of the cache named by
//! their hash, so an installed `gpufleet` needs no clone (only Python 3, the
//! openssl command and, to build the tools once, Go).

use std::collections::BTreeMap;
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};

/// The test bed's files the control plane needs, as in tests/testbed/.
macro_rules! testbed_files {
    ($($path:literal),* $(,)?) => {
        &[$(($path, include_str!(concat!("../../tests/testbed/", $path)))),*]
    };
}
const FILES: &[(&str, &str)] = testbed_files![
    "controlplane.py",
    "build.sh",
    "kwok-stages.yaml",
    "go/etcd/go.mod",
    "go/etcd/go.sum",
    "go/etcd/main.go",
    "go/helm/go.mod",
    "go/helm/go.sum",
    "go/helm/tools.go",
    "go/kcm/go.mod",
    "go/kcm/go.sum",
    "go/kcm/tools.go",
    "go/kstatus/go.mod",
    "go/kstatus/go.sum",
    "go/kstatus/main.go",
    "go/kube/go.mod",
    "go/kube/go.sum",
    "go/kube/tools.go",
    "go/kwok/go.mod",
    "go/kwok/go.sum",
    "go/kwok/tools.go",
];

/// The folder holding the test bed's scripts, written there on first use:
/// `<cache>/testbed/scripts-<hash of the files>`.
fn scripts() -> anyhow::Result<PathBuf> {
    scripts_in(&super::cache_root().join("testbed"))
}

fn scripts_in(root: &Path) -> anyhow::Result<PathBuf> {
    // A stable name for this set of files: a hash of names and contents.
    let mut bytes = Vec::new();
    for (name, text) in FILES {
        for part in [name.as_bytes(), text.as_bytes()] {
            bytes.extend_from_slice(part);
            bytes.push(0);
        }
    }
    let hash = gpufleet::keys::stable_hash(&bytes);
    let dir = root.join(format!("scripts-{hash:016x}"));
    if dir.join("controlplane.py").exists() {
        return Ok(dir);
    }
    // Written to a folder of its own first, then renamed into place, so a
    // folder that is there is whole.
    let tmp = root.join(format!(".scripts-{hash:016x}-{}", std::process::id()));
    write_files(&tmp)
        .with_context(|| format!("writing the test bed's scripts to {}", tmp.display()))?;
    if let Err(err) = std::fs::rename(&tmp, &dir) {
        let _ = std::fs::remove_dir_all(&tmp);
        // Another process may have put the same files there meanwhile.
        if !dir.join("controlplane.py").exists() {
            return Err(err).with_context(|| format!("creating {}", dir.display()));
        }
    }
    Ok(dir)
}

fn write_files(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let _ = std::fs::remove_dir_all(dir);
    for (name, text) in FILES {
        let path = dir.join(name);
        std::fs::create_dir_all(path.parent().expect("a file in a folder"))?;
        std::fs::write(&path, text)?;
        if name.ends_with(".py") || name.ends_with(".sh") {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))?;
        }
    }
    Ok(())
}

/// A running control plane.
pub struct ControlPlane {
    /// controlplane.py, as written to the cache.
    script: PathBuf,
    /// Its state folder.
    pub dir: PathBuf,
    pub kubeconfig: PathBuf,
    pub server: String,
    /// The API server's audit log (JSON lines).
    pub audit_log: PathBuf,
    /// The test bed's processes by name (etcd, kube-apiserver, kwok).
    pub pids: BTreeMap<String, u32>,
    /// What `up --scale` changed of kube-apiserver (flags, environment).
    pub tuning: Option<serde_json::Value>,
    /// The folders build.sh printed: k8s, etcd, kwok, helm, kstatus, kcm.
    bins: Vec<PathBuf>,
    /// kubectl, when it was built.
    kubectl: Option<PathBuf>,
    /// `up --watch-pid`, which stops the control plane once this process
    /// exits; `None` with `keep`.
    watcher: Option<Child>,
}

impl ControlPlane {
    /// Starts etcd, kube-apiserver and kwok, building first those of them
    /// and of `tools` (build.sh's names) that are not built yet. With
    /// `keep`, they outlive this process until [`ControlPlane::stop_hint`]'s
    /// command stops them; else they stop with it, however it ends.
    pub async fn start(tools: &[&str], keep: bool) -> anyhow::Result<ControlPlane> {
        Self::start_with(tools, keep, true, false).await
    }

    /// [`ControlPlane::start`], with or without kwok running (it is built
    /// either way: the test bed's folders keep their order).
    pub async fn start_with(
        tools: &[&str],
        keep: bool,
        kwok: bool,
        scale: bool,
    ) -> anyhow::Result<ControlPlane> {
        let script = scripts()?.join("controlplane.py");
        let mut cmd = std::process::Command::new("python3");
        cmd.arg(&script).arg("up");
        if kwok {
            cmd.arg("--kwok");
        }
        if scale {
            cmd.arg("--scale");
        }
        cmd.args(["--json", "--tools"]);
        cmd.arg(
            ["kube-apiserver", "etcd", "kwok"]
                .iter()
                .chain(tools)
                .copied()
                .collect::<Vec<_>>()
                .join(","),
        );
        if !keep {
            cmd.arg("--watch-pid").arg(std::process::id().to_string());
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut child = cmd.spawn().map_err(|e| {
            anyhow!(
                "starting python3 {}: {e} (the local control plane needs \
                 Python 3.11 or later)",
                script.display()
            )
        })?;
        let stdout = child.stdout.take().expect("piped stdout");
        // Its one line on stdout; it prints nothing more there.
        let line = tokio::task::spawn_blocking(move || {
            let mut line = String::new();
            std::io::BufReader::new(stdout)
                .read_line(&mut line)
                .map(|_| line)
        })
        .await??;
        let Ok(info) = serde_json::from_str::<serde_json::Value>(&line) else {
            let _ = tokio::task::spawn_blocking(move || child.wait()).await;
            bail!("the control plane did not start (controlplane.py's messages are above)");
        };
        let path = |k: &str| info[k].as_str().map(PathBuf::from);
        let field =
            |k: &str| path(k).ok_or_else(|| anyhow!("controlplane.py printed no {k}: {info}"));
        let dir = field("dir")?;
        let pids = match &info["pids"] {
            serde_json::Value::Object(map) => map
                .iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_u64()? as u32)))
                .collect(),
            _ => BTreeMap::new(),
        };
        let bins = match &info["bin"] {
            serde_json::Value::Array(bins) => bins
                .iter()
                .filter_map(|b| b.as_str().map(PathBuf::from))
                .collect(),
            _ => Vec::new(),
        };
        let mut plane = ControlPlane {
            script,
            kubeconfig: field("kubeconfig")?,
            server: info["server"].as_str().unwrap_or_default().to_string(),
            audit_log: path("audit_log").unwrap_or_else(|| dir.join("audit.log")),
            dir,
            pids,
            tuning: Some(info["scale"].clone()).filter(|v| !v.is_null()),
            bins,
            kubectl: path("kubectl"),
            watcher: None,
        };
        if keep {
            // Without --watch-pid, `up` returns once the plane runs.
            tokio::task::spawn_blocking(move || child.wait()).await??;
        } else {
            plane.watcher = Some(child);
        }
        Ok(plane)
    }

    /// A test bed binary (build.sh's name), asked for at [`ControlPlane::start`].
    pub fn tool(&self, name: &str) -> anyhow::Result<PathBuf> {
        self.bins
            .iter()
            .map(|dir| dir.join(name))
            .find(|p| p.exists())
            .ok_or_else(|| anyhow!("{name} is not built (not in {:?})", self.bins))
    }

    /// The folder holding kubectl, when it was built.
    pub fn kubectl_dir(&self) -> Option<&Path> {
        self.kubectl.as_deref().and_then(Path::parent)
    }

    /// The command that stops a control plane started with `keep`.
    pub fn stop_hint(&self) -> String {
        format!(
            "python3 {} down --dir {}",
            self.script.display(),
            self.dir.display()
        )
    }

    /// Stops the control plane (unless started with `keep`) and waits until
    /// its watcher is gone.
    pub async fn stop(&mut self) {
        if let Some(watcher) = self.watcher.take() {
            let (script, dir) = (self.script.clone(), self.dir.clone());
            let _ = tokio::task::spawn_blocking(move || shut_down(watcher, &script, &dir)).await;
        }
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        if let Some(watcher) = self.watcher.take() {
            shut_down(watcher, &self.script, &self.dir);
        }
    }
}

/// Has the watcher stop everything it started and remove its folder; failing
/// that, `controlplane.py down`.
fn shut_down(mut watcher: Child, script: &Path, dir: &Path) {
    // On Ctrl-C the watcher got SIGINT too and may be stopping already.
    if exited(&mut watcher, Duration::from_millis(200)) {
        return;
    }
    let term = std::process::Command::new("kill")
        .args(["-TERM", &watcher.id().to_string()])
        .stdin(Stdio::null())
        .status();
    if term.is_ok_and(|s| s.success()) && exited(&mut watcher, Duration::from_secs(20)) {
        return;
    }
    let down = std::process::Command::new("python3")
        .arg(script)
        .arg("down")
        .arg("--dir")
        .arg(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .status();
    if !down.is_ok_and(|s| s.success()) {
        eprintln!(
            "gpufleet: `controlplane.py down --dir {}` failed",
            dir.display()
        );
    }
    // The watcher exits once its folder is gone.
    if !exited(&mut watcher, Duration::from_secs(15)) {
        let _ = watcher.kill();
        let _ = watcher.wait();
    }
}

/// Waits up to `timeout` for a child to exit (and reaps it).
fn exited(child: &mut Child, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if !matches!(child.try_wait(), Ok(None)) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    /// The binary carries every file of tests/testbed/ but its README, as it
    /// is in the clone.
    #[test]
    fn the_embedded_test_bed_is_the_clones() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/testbed");
        let mut on_disk = Vec::new();
        let mut folders = vec![root.clone()];
        while let Some(folder) = folders.pop() {
            for entry in std::fs::read_dir(folder).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    folders.push(path);
                } else if !path.ends_with("README.md") {
                    let name = path.strip_prefix(&root).unwrap();
                    on_disk.push(name.to_string_lossy().into_owned());
                }
            }
        }
        on_disk.sort();
        let mut embedded: Vec<String> = super::FILES.iter().map(|(n, _)| n.to_string()).collect();
        embedded.sort();
        assert_eq!(embedded, on_disk, "update FILES in src/cli/controlplane.rs");
    }

    #[test]
    fn the_scripts_are_written_once_and_whole() {
        let cache = std::env::temp_dir().join(format!("gpufleet-cp-test-{}", std::process::id()));
        let dir = super::scripts_in(&cache).unwrap();
        assert!(dir.starts_with(&cache));
        for (name, text) in super::FILES {
            assert_eq!(std::fs::read_to_string(dir.join(name)).unwrap(), *text);
        }
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.join("build.sh"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o111, 0o111, "build.sh is executable");
        assert_eq!(super::scripts_in(&cache).unwrap(), dir);
        std::fs::remove_dir_all(&cache).unwrap();
    }
}
