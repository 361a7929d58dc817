#!/usr/bin/env python3
"""Starts and stops a real, local Kubernetes control plane for gpufleet's tests.

    controlplane.py up [--dir DIR] [--kwok] [--watch-pid PID] [--json]
                       [--tools TOOL,...]
    controlplane.py down --dir DIR

`up` runs tests/testbed/build.sh for the binaries (all it builds, or with
--tools only those, plus what the control plane itself runs), then starts etcd and
kube-apiserver (and, with --kwok, kwok) on free ports of 127.0.0.1, each in its
own session, with a fresh CA and admin client certificate, and writes
DIR/kubeconfig. Without --watch-pid it returns and leaves them running; `down`
stops them. With --watch-pid it stays in the foreground and, once process PID is
gone (or on SIGTERM, SIGINT, SIGHUP), stops everything it started, removes DIR
and exits 0.

State dir layout:
    DIR/pids             "<name> <pid>" per line, every process `up` started
    DIR/logs/<name>.log  stdout+stderr of etcd, kube-apiserver, kwok
    DIR/kubeconfig       admin (system:masters) kubeconfig, context gpufleet-testbed
    DIR/audit.log        kube-apiserver audit log (JSON lines, level Metadata)
    DIR/pki/             CA, serving and client certificates, service-account keys
    DIR/etcd/            etcd data
    DIR/watcher          with --watch-pid: "<pid> <start time>" of this script, the
                         watcher; lets a later `up` remove the dir if it was SIGKILLed
    DIR/.gpufleet-controlplane   marker: `down` only ever removes such dirs

Python 3.11 standard library and the openssl CLI only. See README.md.
"""

from __future__ import annotations

import argparse
import base64
import ctypes
import http.client
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
BUILD_SH = os.path.join(HERE, "build.sh")
KWOK_STAGES = os.path.join(HERE, "kwok-stages.yaml")

MARKER = ".gpufleet-controlplane"  # only directories holding this are ever removed
CONTEXT = "gpufleet-testbed"
ADMIN_USER = "gpufleet-admin"
LOOPBACK = "127.0.0.1"

ETCD_TIMEOUT_S = 60.0
APISERVER_TIMEOUT_S = 120.0
KWOK_TIMEOUT_S = 60.0
STOP_GRACE_S = 10.0
WATCH_INTERVAL_S = 0.5
PORT_ATTEMPTS = 4  # a freshly picked port can be taken before we bind it

AUDIT_POLICY = """\
apiVersion: audit.k8s.io/v1
kind: Policy
omitStages:
- RequestReceived
rules:
# Every request of a ServiceAccount (gpufleet run as the chart's account):
# the RBAC test derives the roles from all of them, lease reads included.
- level: Metadata
  userGroups: ["system:serviceaccounts"]
# Reads of leases and events are the bulk of the noise and never interesting.
- level: None
  verbs: ["get", "list", "watch"]
  resources:
  - group: "coordination.k8s.io"
    resources: ["leases"]
  - group: ""
    resources: ["events"]
  - group: "events.k8s.io"
    resources: ["events"]
- level: Metadata
"""

OPENSSL_CNF = """\
[req]
distinguished_name = dn
prompt = no
[dn]
CN = unused
[ca]
basicConstraints = critical,CA:TRUE
keyUsage = critical,keyCertSign,cRLSign,digitalSignature
subjectKeyIdentifier = hash
[server]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature,keyEncipherment
extendedKeyUsage = serverAuth
subjectAltName = IP:127.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default.svc
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
[client]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature,keyEncipherment
extendedKeyUsage = clientAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
"""


class Failure(Exception):
    """An error to report to the user, without a traceback."""


class Interrupted(Exception):
    def __init__(self, signum: int):
        super().__init__(f"interrupted by signal {signal.Signals(signum).name}")
        self.signum = signum


def log(msg: str) -> None:
    try:
        print(f"controlplane: {msg}", file=sys.stderr, flush=True)
    except (BrokenPipeError, OSError):
        pass


# ---------------------------------------------------------------- processes


def proc_stat(pid: int) -> tuple[str, int] | None:
    """(state, start time in clock ticks) of a process, None if there is none."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read().decode("utf-8", "replace")
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # comm is in parentheses and may itself hold spaces or parentheses.
    rest = data[data.rindex(")") + 2 :].split()
    return rest[0], int(rest[19])


def alive(pid: int) -> bool:
    st = proc_stat(pid)
    return st is not None and st[0] not in ("Z", "X")


def cmdline(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            raw = f.read()
    except OSError:
        return []
    return [a.decode("utf-8", "replace") for a in raw.split(b"\0") if a]


def is_ours(pid: int, binary: str, state_dir: str) -> bool:
    """True if pid is still the `binary` process that `up` started for state_dir."""
    if not alive(pid):
        return False
    argv = cmdline(pid)
    if not argv or os.path.basename(argv[0]) != binary:
        return False
    return any(state_dir + os.sep in a for a in argv[1:])


def read_pids(state_dir: str) -> list[tuple[str, int]]:
    entries = []
    try:
        with open(os.path.join(state_dir, "pids")) as f:
            for line in f:
                parts = line.split()
                if len(parts) == 2 and parts[1].isdigit():
                    entries.append((parts[0], int(parts[1])))
    except FileNotFoundError:
        pass
    return entries


def stop_processes(state_dir: str, children: dict[int, subprocess.Popen] | None = None) -> None:
    """Stops, newest first, the processes listed in state_dir/pids that are still ours:
    SIGTERM, up to STOP_GRACE_S seconds, then SIGKILL. Reaps our own children."""
    children = children or {}
    for name, pid in reversed(read_pids(state_dir)):
        if not is_ours(pid, name, state_dir):
            child = children.get(pid)
            if child is not None:
                child.poll()
            continue
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            continue
        if not wait_gone(pid, children.get(pid), STOP_GRACE_S):
            log(f"{name} (pid {pid}) ignored SIGTERM for {STOP_GRACE_S:.0f}s; sending SIGKILL")
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            wait_gone(pid, children.get(pid), STOP_GRACE_S)


def wait_gone(pid: int, child: subprocess.Popen | None, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        if child is not None:
            if child.poll() is not None:
                return True
        elif not alive(pid):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)


def remove_dir(state_dir: str) -> None:
    if not os.path.isdir(state_dir):
        return
    if not os.path.exists(os.path.join(state_dir, MARKER)):
        raise Failure(f"{state_dir} was not made by controlplane.py (no {MARKER}); not removing it")
    shutil.rmtree(state_dir, ignore_errors=True)
    if os.path.exists(state_dir):
        shutil.rmtree(state_dir)  # once more, and this time report what is left


def set_pdeathsig() -> None:
    """In the child, before exec: get SIGKILL when the watcher dies, even by SIGKILL."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
    except Exception:
        pass


class Plane:
    """The processes of one `up`, and what they need."""

    def __init__(self, state_dir: str, bins: list[str], watch: bool, scale: bool = False):
        self.dir = state_dir
        self.scale = scale
        self.k8s_bin, self.etcd_bin, self.kwok_bin = bins[:3]
        self.bins = bins
        self.watch = watch
        self.children: dict[int, subprocess.Popen] = {}
        self.pids: dict[str, int] = {}
        self.ports: dict[str, int] = {}
        self.log_starts: dict[str, int] = {}
        self.pki = os.path.join(state_dir, "pki")
        self.logs = os.path.join(state_dir, "logs")
        self.kubeconfig = os.path.join(state_dir, "kubeconfig")
        self.audit_log = os.path.join(state_dir, "audit.log")
        self.server = ""

    # -- helpers

    def path(self, *parts: str) -> str:
        return os.path.join(self.dir, *parts)

    def start(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> subprocess.Popen:
        log_path = os.path.join(self.logs, f"{name}.log")
        with open(log_path, "ab") as out:
            self.log_starts[name] = out.tell()
            out.write(f"### {time.strftime('%Y-%m-%dT%H:%M:%S')} {' '.join(argv)}\n".encode())
            out.flush()
            child = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=self.dir,
                env=env if env is not None else os.environ.copy(),
                start_new_session=True,
                close_fds=True,
                preexec_fn=set_pdeathsig if self.watch else None,
            )
        self.children[child.pid] = child
        self.pids[name] = child.pid
        with open(self.path("pids"), "a") as f:
            f.write(f"{name} {child.pid}\n")
            f.flush()
            os.fsync(f.fileno())
        return child

    def stop(self) -> None:
        """Stops what this `up` started: what DIR/pids lists, then any child of ours
        that it doesn't (not yet written, or the file is gone)."""
        stop_processes(self.dir, self.children)
        for pid, child in self.children.items():
            if child.poll() is None:
                child.terminate()
                if not wait_gone(pid, child, STOP_GRACE_S):
                    child.kill()
                    child.wait()

    def forget(self, name: str) -> None:
        """Drops a process that has exited (a failed attempt) from the pids file."""
        pid = self.pids.pop(name)
        child = self.children.pop(pid)
        child.wait()
        entries = [(n, p) for n, p in read_pids(self.dir) if p != pid]
        with open(self.path("pids"), "w") as f:
            f.writelines(f"{n} {p}\n" for n, p in entries)

    def log_tail(self, name: str, lines: int = 40, since_start: bool = False) -> str:
        try:
            with open(os.path.join(self.logs, f"{name}.log"), "rb") as f:
                f.seek(0, os.SEEK_END)
                start = max(0, f.tell() - 64 * 1024)
                if since_start:
                    start = max(start, self.log_starts.get(name, 0))
                f.seek(start)
                text = f.read().decode("utf-8", "replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def port_clash(self, name: str) -> bool:
        """Whether the last start of `name` failed for a port someone else held."""
        return "address already in use" in self.log_tail(name, 200, since_start=True)

    def wait_ready(self, name: str, child: subprocess.Popen, probe, timeout: float) -> None:
        """Polls probe() until it returns None (ready); it returns a reason otherwise."""
        deadline = time.monotonic() + timeout
        reason = "not probed yet"
        while True:
            rc = child.poll()
            if rc is not None:
                raise ExitedEarly(name, rc)
            reason = probe()
            if reason is None:
                return
            if time.monotonic() >= deadline:
                raise Failure(
                    f"{name} not ready after {timeout:.0f}s (last check: {reason}); "
                    f"tail of {self.logs}/{name}.log:\n{self.log_tail(name)}"
                )
            time.sleep(0.1)

    def start_retrying(self, name: str, port_names: list[str], launch) -> None:
        """launch() starts `name` on fresh ports and waits for it; a port taken in
        between by someone else makes it exit, and then we try other ports."""
        for attempt in range(1, PORT_ATTEMPTS + 1):
            for port_name, port in zip(port_names, free_ports(len(port_names))):
                self.ports[port_name] = port
            try:
                launch()
                return
            except ExitedEarly as e:
                clash = self.port_clash(name)
                self.forget(name)
                if clash and attempt < PORT_ATTEMPTS:
                    log(f"{name}: a port was taken meanwhile; retrying on other ports")
                    continue
                raise Failure(
                    f"{name} exited with status {e.rc} while starting; "
                    f"tail of {self.logs}/{name}.log:\n{self.log_tail(name)}"
                ) from None

    # -- components

    def launch_etcd(self) -> None:
        client = f"http://{LOOPBACK}:{self.ports['etcd_client']}"
        peer = f"http://{LOOPBACK}:{self.ports['etcd_peer']}"
        data = self.path("etcd")
        shutil.rmtree(data, ignore_errors=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith("ETCD_")}
        child = self.start(
            "etcd",
            [
                os.path.join(self.etcd_bin, "etcd"),
                "--name=default",
                f"--data-dir={data}",
                f"--listen-client-urls={client}",
                f"--advertise-client-urls={client}",
                f"--listen-peer-urls={peer}",
                f"--initial-advertise-peer-urls={peer}",
                f"--initial-cluster=default={peer}",
                "--initial-cluster-state=new",
                "--unsafe-no-fsync",
                "--quota-backend-bytes=8589934592",
            ],
            env,
        )

        def probe():
            status, body = http_get(LOOPBACK, self.ports["etcd_client"], "/health")
            if status == 200:
                try:
                    if json.loads(body).get("health") == "true":
                        return None
                except (ValueError, AttributeError):
                    pass
            return f"/health: {status} {body[:200]!r}"

        self.wait_ready("etcd", child, probe, ETCD_TIMEOUT_S)

    def launch_apiserver(self) -> None:
        pki = self.pki
        port = self.ports["apiserver"]
        child = self.start(
            "kube-apiserver",
            [
                os.path.join(self.k8s_bin, "kube-apiserver"),
                f"--etcd-servers=http://{LOOPBACK}:{self.ports['etcd_client']}",
                f"--bind-address={LOOPBACK}",
                f"--advertise-address={LOOPBACK}",
                f"--secure-port={port}",
                f"--cert-dir={pki}",
                f"--tls-cert-file={pki}/apiserver.crt",
                f"--tls-private-key-file={pki}/apiserver.key",
                f"--client-ca-file={pki}/ca.crt",
                f"--service-account-key-file={pki}/sa.pub",
                f"--service-account-signing-key-file={pki}/sa.key",
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                "--api-audiences=https://kubernetes.default.svc.cluster.local",
                "--authorization-mode=RBAC",
                "--disable-admission-plugins=TaintNodesByCondition",
                "--endpoint-reconciler-type=none",
                "--service-cluster-ip-range=10.96.0.0/16",
                "--allow-privileged=true",
                f"--audit-policy-file={self.path('audit-policy.yaml')}",
                f"--audit-log-path={self.audit_log}",
                "--audit-log-format=json",
                "--audit-log-maxsize=512",
            ] + (SCALE_APISERVER_FLAGS if self.scale else []),
            apiserver_env(self.scale),
        )
        ctx = ssl.create_default_context(cafile=f"{pki}/ca.crt")
        ctx.load_cert_chain(f"{pki}/admin.crt", f"{pki}/admin.key")

        def probe():
            status, body = http_get(LOOPBACK, port, "/readyz?verbose", ctx)
            if status == 200:
                return None
            failing = [l for l in body.splitlines() if "failed" in l or l.startswith("[-]")]
            return f"/readyz: {status} {'; '.join(failing)[:500] or body[:200]!r}"

        self.wait_ready("kube-apiserver", child, probe, APISERVER_TIMEOUT_S)
        self.server = f"https://{LOOPBACK}:{port}"

    def launch_kwok(self) -> None:
        port = self.ports["kwok"]
        workdir = self.path("kwok")
        os.makedirs(workdir, exist_ok=True)
        env = os.environ.copy()
        env["KWOK_WORKDIR"] = workdir  # so that ~/.kwok/kwok.yaml is never read
        env.pop("KUBECONFIG", None)
        child = self.start(
            "kwok",
            [
                os.path.join(self.kwok_bin, "kwok"),
                f"--kubeconfig={self.kubeconfig}",
                f"--config={KWOK_STAGES}",
                "--manage-all-nodes=false",
                "--manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake",
                "--cidr=10.0.0.1/24",
                "--node-ip=10.0.0.1",
                "--node-lease-duration-seconds=0",
                f"--server-address={LOOPBACK}:{port}",
            ],
            env,
        )

        def probe():
            status, body = http_get(LOOPBACK, port, "/healthz")
            return None if status == 200 else f"/healthz: {status} {body[:200]!r}"

        self.wait_ready("kwok", child, probe, KWOK_TIMEOUT_S)

    # -- files

    def write_pki(self) -> None:
        os.makedirs(self.pki, exist_ok=True)
        cnf = os.path.join(self.pki, "openssl.cnf")
        with open(cnf, "w") as f:
            f.write(OPENSSL_CNF)
        p = lambda n: os.path.join(self.pki, n)  # noqa: E731

        # The service-account key must be RSA and takes the longest: start it first.
        sa = subprocess.Popen(
            ["openssl", "genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", p("sa.key")],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        for key in ("ca", "apiserver", "admin"):
            openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", p(f"{key}.key"))
        openssl(
            "req", "-x509", "-new", "-config", cnf, "-key", p("ca.key"), "-subj", "/CN=gpufleet-testbed-ca",
            "-days", "3650", "-sha256", "-extensions", "ca", "-out", p("ca.crt"),
        )
        for name, subj, ext in (
            ("apiserver", "/CN=kube-apiserver", "server"),
            ("admin", f"/O=system:masters/CN={ADMIN_USER}", "client"),
        ):
            openssl("req", "-new", "-config", cnf, "-key", p(f"{name}.key"), "-subj", subj, "-out", p(f"{name}.csr"))
            openssl(
                "x509", "-req", "-in", p(f"{name}.csr"), "-CA", p("ca.crt"), "-CAkey", p("ca.key"),
                "-set_serial", str(int.from_bytes(os.urandom(16), "big") >> 1), "-days", "3650", "-sha256",
                "-extfile", cnf, "-extensions", ext, "-out", p(f"{name}.crt"),
            )
        _, err = sa.communicate()
        if sa.returncode != 0:
            raise Failure(f"openssl genpkey (service-account key) failed: {err.decode(errors='replace')}")
        openssl("pkey", "-in", p("sa.key"), "-pubout", "-out", p("sa.pub"))
        for n in os.listdir(self.pki):
            if n.endswith(".key"):
                os.chmod(p(n), 0o600)

    def write_kubeconfig(self) -> None:
        def b64(name: str) -> str:
            with open(os.path.join(self.pki, name), "rb") as f:
                return base64.b64encode(f.read()).decode()

        text = f"""\
apiVersion: v1
kind: Config
clusters:
- name: {CONTEXT}
  cluster:
    server: {self.server}
    certificate-authority-data: {b64("ca.crt")}
users:
- name: {ADMIN_USER}
  user:
    client-certificate-data: {b64("admin.crt")}
    client-key-data: {b64("admin.key")}
contexts:
- name: {CONTEXT}
  context:
    cluster: {CONTEXT}
    user: {ADMIN_USER}
current-context: {CONTEXT}
preferences: {{}}
"""
        tmp = self.kubeconfig + ".tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, self.kubeconfig)

    def result(self) -> dict:
        kubectl = os.path.join(self.k8s_bin, "kubectl")
        return {
            "dir": self.dir,
            "kubeconfig": self.kubeconfig,
            "server": self.server,
            # None when it was not built (up --tools without kubectl).
            "kubectl": kubectl if os.access(kubectl, os.X_OK) else None,
            "bin": self.bins,
            "pids": dict(self.pids),
            "ports": dict(self.ports),
            "audit_log": self.audit_log,
            "logs": self.logs,
            # What `up --scale` changed of kube-apiserver, for reports.
            "scale": {"flags": SCALE_APISERVER_FLAGS, "env": SCALE_APISERVER_ENV}
            if self.scale else None,
        }


class ExitedEarly(Exception):
    def __init__(self, name: str, rc: int):
        super().__init__(f"{name} exited with status {rc}")
        self.rc = rc


def openssl(*args: str) -> None:
    r = subprocess.run(["openssl", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    if r.returncode != 0:
        raise Failure(f"openssl {args[0]} failed: {(r.stderr or r.stdout).decode(errors='replace')}")


def free_ports(n: int) -> list[int]:
    """n distinct ports that were free on 127.0.0.1 a moment ago."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((LOOPBACK, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def http_get(host: str, port: int, path: str, ctx: ssl.SSLContext | None = None) -> tuple[int, str]:
    """(status, body) of a GET; (0, why) if there was no answer."""
    try:
        if ctx is None:
            conn = http.client.HTTPConnection(host, port, timeout=5)
        else:
            conn = http.client.HTTPSConnection(host, port, timeout=5, context=ctx)
        try:
            conn.request("GET", path)
            resp = conn.getresponse()
            return resp.status, resp.read().decode("utf-8", "replace")
        finally:
            conn.close()
    except (OSError, http.client.HTTPException) as e:
        return 0, f"{type(e).__name__}: {e}"


# ---------------------------------------------------------------- commands


def cache_root() -> str:
    if os.environ.get("GPUFLEET_CACHE"):
        return os.environ["GPUFLEET_CACHE"]
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(xdg, "gpufleet")


def build_bins(tools: list[str] | None, kwok: bool) -> list[str]:
    """Runs build.sh for `tools` (None: everything it builds) and what the
    control plane runs (kube-apiserver, etcd and, for --kwok, kwok)."""
    needed = ["kube-apiserver", "etcd"] + (["kwok"] if kwok else [])
    if tools is not None:
        tools = list(dict.fromkeys(needed + tools))
    r = subprocess.run([BUILD_SH, *(tools or [])], stdout=subprocess.PIPE, stdin=subprocess.DEVNULL)
    if r.returncode != 0:
        raise Failure(f"{BUILD_SH} failed with status {r.returncode}")
    bins = r.stdout.decode().split()
    # k8s, etcd, kwok first; the tools only tests use (helm, kstatus) follow.
    if len(bins) < 3:
        raise Failure(f"{BUILD_SH} printed {len(bins)} folders, expected at least 3: {bins}")
    folder_of = {"kube-apiserver": bins[0], "kubectl": bins[0], "etcd": bins[1], "kwok": bins[2]}
    for exe in tools if tools is not None else folder_of:
        folder = folder_of.get(exe)
        if folder is not None and not os.access(os.path.join(folder, exe), os.X_OK):
            raise Failure(f"{BUILD_SH} did not produce {os.path.join(folder, exe)}")
    return bins


def prune_stale_runs(run_root: str) -> None:
    """Removes run dirs of --watch-pid runs whose watcher died without cleaning up
    (SIGKILL), once none of their processes is left. Best effort."""
    try:
        names = os.listdir(run_root)
    except OSError:
        return
    for n in names:
        d = os.path.join(run_root, n)
        try:
            with open(os.path.join(d, "watcher")) as f:
                pid, start = (int(x) for x in f.read().split())
        except (OSError, ValueError):
            continue
        st = proc_stat(pid)
        if st is not None and st[1] == start and st[0] not in ("Z", "X"):
            continue  # its watcher is alive
        if any(is_ours(p, name, d) for name, p in read_pids(d)):
            continue
        if os.path.exists(os.path.join(d, MARKER)):
            shutil.rmtree(d, ignore_errors=True)


def prepare_dir(requested: str | None, watch: bool) -> str:
    if requested:
        d = os.path.realpath(requested)
        if os.path.isdir(d) and os.listdir(d):
            if not os.path.exists(os.path.join(d, MARKER)):
                raise Failure(f"{d} exists, is not empty and was not made by controlplane.py")
            live = [f"{n} {p}" for n, p in read_pids(d) if is_ours(p, n, d)]
            if live:
                raise Failure(f"{d} has a control plane running ({', '.join(live)}); run `down --dir {d}` first")
            shutil.rmtree(d)
        os.makedirs(d, exist_ok=True)
    else:
        run_root = os.path.join(cache_root(), "run")
        os.makedirs(run_root, exist_ok=True)
        prune_stale_runs(run_root)
        d = os.path.realpath(tempfile.mkdtemp(prefix="cp-", dir=run_root))
    with open(os.path.join(d, MARKER), "w") as f:
        f.write("made by tests/testbed/controlplane.py; `controlplane.py down --dir` removes it\n")
    if watch:
        st = proc_stat(os.getpid())
        with open(os.path.join(d, "watcher"), "w") as f:
            f.write(f"{os.getpid()} {st[1] if st else 0}\n")
    os.makedirs(os.path.join(d, "logs"), exist_ok=True)
    return d


def install_signal_handlers(handler) -> None:
    for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(s, handler)


def cmd_up(args: argparse.Namespace) -> int:
    started = time.monotonic()

    def raise_interrupted(signum, _frame):
        raise Interrupted(signum)

    install_signal_handlers(raise_interrupted)

    watch_pid = args.watch_pid
    watch_start = None
    if watch_pid is not None:
        st = proc_stat(watch_pid)
        if st is None or st[0] in ("Z", "X"):
            raise Failure(f"--watch-pid {watch_pid}: no such process")
        watch_start = st[1]

    tools = [t for t in args.tools.split(",") if t] if args.tools is not None else None
    bins = build_bins(tools, args.kwok)
    state_dir = prepare_dir(args.dir, watch_pid is not None)
    plane = Plane(state_dir, bins, watch_pid is not None, args.scale)
    try:
        with open(plane.path("audit-policy.yaml"), "w") as f:
            f.write(AUDIT_POLICY)
        plane.start_retrying("etcd", ["etcd_client", "etcd_peer"], plane.launch_etcd)
        plane.write_pki()
        plane.start_retrying("kube-apiserver", ["apiserver"], plane.launch_apiserver)
        plane.write_kubeconfig()
        if args.kwok:
            plane.start_retrying("kwok", ["kwok"], plane.launch_kwok)
    except BaseException as e:
        install_signal_handlers(signal.SIG_IGN)
        plane.stop()
        shutil.rmtree(plane.path("etcd"), ignore_errors=True)
        if isinstance(e, (Failure, Interrupted)):
            log(f"up failed: {e}")
            log(f"stopped what had started; logs are kept in {plane.logs}")
            return 1
        raise

    elapsed = time.monotonic() - started
    result = plane.result()
    stop = {"why": None}
    if watch_pid is not None:
        # From here on a signal only asks the watch loop to stop and clean up.
        def on_signal(signum, _frame):
            stop["why"] = f"signal {signal.Signals(signum).name}"

        install_signal_handlers(on_signal)
    try:
        if args.json:
            print(json.dumps(result), flush=True)
        else:
            print(
                f"control plane up in {elapsed:.1f}s{' (with kwok)' if args.kwok else ''}\n"
                f"  dir:        {state_dir}\n"
                f"  server:     {plane.server}\n"
                f"  kubeconfig: {plane.kubeconfig}\n"
                f"  logs:       {plane.logs}/\n"
                f"  audit log:  {plane.audit_log}\n"
                f"  pids:       {' '.join(f'{n}={p}' for n, p in plane.pids.items())}\n"
                f"export KUBECONFIG={plane.kubeconfig}\n"
                f"export PATH={bins[0]}:$PATH\n"
                + (
                    f"# stops when process {watch_pid} exits\n"
                    if watch_pid is not None
                    else f"# stop it with: {os.path.abspath(__file__)} down --dir {state_dir}\n"
                ),
                end="",
                flush=True,
            )
    except BrokenPipeError:
        pass

    if watch_pid is None:
        return 0
    return watch(plane, watch_pid, watch_start, stop)


def watch(plane: Plane, watch_pid: int, watch_start: int, stop: dict) -> int:
    reported: set[int] = set()
    try:
        while stop["why"] is None:
            st = proc_stat(watch_pid)
            if st is None or st[0] in ("Z", "X") or st[1] != watch_start:
                stop["why"] = f"process {watch_pid} exited"
                break
            if not os.path.exists(plane.path("pids")):
                stop["why"] = "state dir removed"
                break
            for name, pid in plane.pids.items():
                rc = plane.children[pid].poll()
                if rc is not None and pid not in reported:
                    reported.add(pid)
                    log(f"{name} (pid {pid}) exited unexpectedly with status {rc}; see {plane.logs}/{name}.log")
            time.sleep(WATCH_INTERVAL_S)
    finally:
        install_signal_handlers(signal.SIG_IGN)
        plane.stop()
        try:
            remove_dir(plane.dir)
        except Failure as e:
            log(str(e))
    return 0


def cmd_down(args: argparse.Namespace) -> int:
    state_dir = os.path.realpath(args.dir)
    if not os.path.isdir(state_dir):
        return 0
    if not os.path.exists(os.path.join(state_dir, MARKER)):
        raise Failure(f"{state_dir} was not made by controlplane.py (no {MARKER}); refusing to touch it")
    stop_processes(state_dir)
    remove_dir(state_dir)
    return 0


# `up --scale` (`gpufleet bench --no-kwok`): the API server for a fleet of
# 10^4 to 10^5 nodes on a small machine. No admission plugin the benchmark
# does not use (each one is work on every write; CRD schemas and CEL still
# run: they are not admission plugins); room for the operator's and the
# harness's bursts (APF's total concurrency); and a Go heap kept closer to
# what is live (GOGC=50: about a third less heap than the default, for some
# CPU), capped softly by GOMEMLIMIT.
SCALE_APISERVER_FLAGS = [
    "--disable-admission-plugins=TaintNodesByCondition,ServiceAccount,"
    "LimitRanger,DefaultStorageClass,DefaultTolerationSeconds,"
    "StorageObjectInUseProtection,PersistentVolumeClaimResize,RuntimeClass,"
    "CertificateApproval,CertificateSigning,ClusterTrustBundleAttest,"
    "CertificateSubjectRestriction,DefaultIngressClass,PodSecurity,Priority,"
    "ResourceQuota,MutatingAdmissionWebhook,ValidatingAdmissionWebhook,"
    "ValidatingAdmissionPolicy,MutatingAdmissionPolicy",
    "--max-requests-inflight=1600",
    "--max-mutating-requests-inflight=800",
    # The benchmark counts requests from the audit log by offset: a
    # 137,500-node rollout writes about 1 GiB of it, past the default
    # rotation at 512 MB (the count was then of the last file only).
    "--audit-log-maxsize=65536",
]
SCALE_APISERVER_ENV = {"GOGC": "50", "GOMEMLIMIT": "12GiB"}


def apiserver_env(scale: bool) -> dict[str, str]:
    env = os.environ.copy()
    if scale:
        env.update(SCALE_APISERVER_ENV)
    return env


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="controlplane.py",
        description="Start and stop a local etcd + kube-apiserver (+ kwok) for gpufleet's tests.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="start a control plane")
    up.add_argument("--dir", help="state dir (default: a fresh one under $GPUFLEET_CACHE/run)")
    up.add_argument("--kwok", action="store_true", help="also run kwok with tests/testbed/kwok-stages.yaml")
    up.add_argument(
        "--watch-pid", type=int, metavar="PID",
        help="stay in the foreground; stop everything and remove the dir once PID is gone",
    )
    up.add_argument("--json", action="store_true", help="print one JSON line instead of text")
    up.add_argument(
        "--scale", action="store_true",
        help="tune kube-apiserver for a large fleet (see SCALE_APISERVER_FLAGS and _ENV)",
    )
    up.add_argument(
        "--tools", metavar="TOOL,...",
        help="build only these test bed tools if missing (default: all that build.sh builds); "
        "kube-apiserver, etcd and, with --kwok, kwok are always built",
    )
    down = sub.add_parser("down", help="stop a control plane and remove its dir")
    down.add_argument("--dir", required=True, help="the state dir that `up` printed")
    args = parser.parse_args(argv)
    try:
        return cmd_up(args) if args.command == "up" else cmd_down(args)
    except Failure as e:
        log(f"error: {e}")
        return 1
    except Interrupted as e:
        log(str(e))
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
