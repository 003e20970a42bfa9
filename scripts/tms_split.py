"""Start TMS as a split deployment: gateway, auth, task and notifier roles as separate
`tms serve --roles X` processes of one binary, talking gRPC to each other (issue 11).

Used by scripts/split (command line) and by tests/integration/conftest.py in split mode
(TMS_TEST_SPLIT=1). Standard library only.

Every process gets free ports (http.addr for /healthz, /readyz and, on a gateway, the
API; metrics.addr for /metrics; grpc.addr for the public services on a gateway and the
internal one on auth and task), a data dir of its own, and the same generated service credential
(peers.secret), JWT secret and Kafka namespace (events.namespace: topics and consumer
groups of its own, so deployments sharing one cluster stay apart). Stores, Kafka and SMTP come
from the settings given (tasks.url, users.url, events.brokers, mail.url).

With tls=True the roles talk mutual TLS (issue 22): make_tls() makes a throwaway CA and a
certificate per role with the openssl command, and every role gets peers.tls_cert,
peers.tls_key and peers.tls_ca (the service credential stays required as well).
"""
import collections
import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

ROLES = ("auth", "task", "notifier", "gateway")  # start order: callees first


# What tms prints when an address it should listen on is taken (by anything).
PORT_TAKEN = "address already in use"


def tms_env(extra=None):
    """The environment for a tms process: this one's without its TMS_* variables (the
    test harness's own, TMS_BIN, TMS_TEST_*, which tms would report as unknown
    settings), plus extra (the settings or fault hooks a caller means to give)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TMS_")}
    env.update(extra or {})
    return env


_RECENT_PORTS = collections.deque(maxlen=1024)


def free_port():
    """A port that was free a moment ago (bind to 0, read it, release it), and not one of
    the last 1,024 this process handed out: the kernel picks a port at random, so two
    picks for one server can be the same port (a split role's metrics and HTTP addresses
    were, once, and the role refused to start)."""
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in _RECENT_PORTS:
            _RECENT_PORTS.append(port)
            return port
    raise RuntimeError("no free port that was not handed out just before")


def make_tls(directory, names=ROLES):
    """A throwaway CA (valid 2 days) and, for each name, a key and a certificate it signs
    for localhost and 127.0.0.1, for server and client use, made with the openssl command
    in directory. Returns {"ca": path, name: (cert path, key path), ...}."""
    if not shutil.which("openssl"):
        raise RuntimeError("openssl not found (scripts/setup --test installs it)")
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)

    def openssl(*args):
        r = subprocess.run(["openssl", *args], capture_output=True, text=True, cwd=d)
        if r.returncode != 0:
            raise RuntimeError(f"openssl {args[0]}: {r.stderr.strip()}")

    newkey = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]
    openssl("req", "-x509", *newkey, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
            "-subj", "/CN=tms throwaway CA", "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    (d / "leaf.ext").write_text("basicConstraints=CA:FALSE\n"
                                "subjectAltName=DNS:localhost,IP:127.0.0.1\n"
                                "extendedKeyUsage=serverAuth,clientAuth\n")
    out = {"ca": str(d / "ca.pem")}
    for name in names:
        openssl("req", *newkey, "-keyout", f"{name}.key", "-out", f"{name}.csr",
                "-subj", f"/CN={name}")
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
                "-set_serial", str(int.from_bytes(secrets.token_bytes(8), "big") >> 1),
                "-days", "2", "-extfile", "leaf.ext", "-out", f"{name}.pem")
        os.chmod(d / f"{name}.key", 0o600)
        out[name] = (str(d / f"{name}.pem"), str(d / f"{name}.key"))
    os.chmod(d / "ca.key", 0o600)
    return out


class LoggedProcess:
    """A child process whose output goes to one log file: RoleProcess here, and the
    test harness's TmsServer (tests/integration/conftest.py) in one process."""

    proc = None
    log_path = None
    _log_file = None

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def kill(self):
        if self.alive():
            self.proc.kill()
            self.proc.wait()
        self._close_log()

    def _close_log(self):
        if self._log_file and not self._log_file.closed:
            self._log_file.close()

    def log_text(self):
        if self.log_path is None or not self.log_path.exists():
            return ""
        text = self.log_path.read_text(errors="replace")
        # A running server writes its lines from a log thread in batches (every 2 ms
        # while lines come, issue 19): the line of the request just answered may
        # follow the response by a moment. Read until the file stops growing.
        deadline = time.monotonic() + 0.5
        while self.alive() and time.monotonic() < deadline:
            time.sleep(0.01)
            again = self.log_path.read_text(errors="replace")
            if again == text:
                break
            text = again
        return text


class RoleProcess(LoggedProcess):
    """One `tms serve --roles <role>` process."""

    def __init__(self, deployment, role, index):
        self.dep = deployment
        self.role = role
        self.name = role if index == 0 else f"{role}{index + 1}"
        self.data_dir = deployment.data_root / self.name
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.new_ports()
        self.proc = None
        self.log_path = None
        self._log_file = None
        self._starts = 0

    def new_ports(self):
        self.port = free_port()  # http
        self.grpc_port = free_port()
        self.metrics_port = free_port()  # metrics.addr: /metrics is not on http.addr

    def command(self):
        cmd = [self.dep.tms_bin, "serve", "--roles", self.role,
               "--set", f"http.addr=127.0.0.1:{self.port}",
               "--set", f"grpc.addr=127.0.0.1:{self.grpc_port}",
               "--set", f"metrics.addr=127.0.0.1:{self.metrics_port}",
               "--set", f"data.dir={self.data_dir}"]
        for k, v in self.dep.role_settings(self.role).items():
            cmd += ["--set", f"{k}={v}"]
        return cmd

    def spawn(self):
        assert self.proc is None or self.proc.poll() is not None
        self._starts += 1
        self.log_path = self.dep.workdir / f"{self.name}-{self._starts}.log"
        self._log_file = open(self.log_path, "wb")
        env = tms_env(self.dep.env)
        self.proc = subprocess.Popen(self.command(), stdout=self._log_file,
                                     stderr=self._log_file, stdin=subprocess.DEVNULL, env=env)

    def wait_healthy(self, timeout):
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode} during "
                                   f"start:\n{self.log_text()[-3000:]}")
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"{self.name} did not answer /healthz within {timeout}s:\n"
                                   f"{self.log_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/healthz",
                                            timeout=1) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.05)

    def start(self, timeout=20.0):
        self.spawn()
        self.wait_healthy(timeout)
        return self

    def signal(self, sig):
        if self.alive():
            self.proc.send_signal(sig)

    def wait(self, timeout):
        """Exit code, or None when it did not exit in time."""
        if self.proc is None:
            return 0
        try:
            rc = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None
        self._close_log()
        return rc


class SplitDeployment:
    """The four roles as processes; gateways and notifiers may be several."""

    def __init__(self, tms_bin, workdir, settings, gateways=1, notifiers=1, env=None,
                 secret=None, data_root=None, tls=False):
        self.tms_bin = str(tms_bin)
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.data_root = Path(data_root) if data_root else self.workdir
        self.settings = dict(settings)
        self.env = dict(env or {})
        # mongo-c-driver keeps counters in /dev/shm/mongoc-<pid>; a process killed with
        # SIGKILL leaves its segment behind, and a later process that gets the same pid
        # prints a (non-logfmt) warning and falls back to malloc. Many short-lived
        # processes make that likely: use malloc'd counters from the start.
        self.env.setdefault("MONGOC_DISABLE_SHM", "1")
        self.secret = secret or secrets.token_hex(24)
        self.settings.setdefault("events.namespace", "split" + secrets.token_hex(4))
        if not self.settings.get("events.brokers"):
            raise ValueError("a split deployment needs events.brokers (Kafka)")
        # tls: True (a CA and certificates of its own) or make_tls()'s result to share
        self.tls = tls if isinstance(tls, dict) else make_tls(self.workdir / "tls") if tls else None
        self.procs = {"auth": [RoleProcess(self, "auth", 0)],
                      "task": [RoleProcess(self, "task", 0)],
                      "notifier": [RoleProcess(self, "notifier", i) for i in range(notifiers)],
                      "gateway": [RoleProcess(self, "gateway", i) for i in range(gateways)]}

    @property
    def auth(self):
        return self.procs["auth"][0]

    @property
    def task(self):
        return self.procs["task"][0]

    @property
    def gateways(self):
        return self.procs["gateway"]

    @property
    def notifiers(self):
        return self.procs["notifier"]

    @property
    def gateway(self):
        return self.procs["gateway"][0]

    def all(self):
        return [p for role in ROLES for p in self.procs[role]]

    def role_settings(self, role):
        s = dict(self.settings)
        s["peers.secret"] = self.secret
        s["peers.auth"] = f"127.0.0.1:{self.auth.grpc_port}"
        if role == "gateway":
            s["peers.task"] = f"127.0.0.1:{self.task.grpc_port}"
        if self.tls:
            s["peers.tls_cert"], s["peers.tls_key"] = self.tls[role]
            s["peers.tls_ca"] = self.tls["ca"]
        return s

    def start(self, timeout=30.0, attempts=3):
        """Start every role. free_port() is a race with every other program on the
        machine: when a port was taken in between (tms refuses an address anything
        listens on), all the roles start again on new ports."""
        for attempt in range(attempts):
            for p in self.all():
                p.spawn()
            try:
                for p in self.all():
                    p.wait_healthy(timeout)
                return self
            except RuntimeError as e:
                if attempt == attempts - 1 or PORT_TAKEN not in str(e):
                    raise
                for p in self.all():
                    p.kill()
                    p.wait(5)
                    p.new_ports()
        return self

    def wait_subscribed(self, timeout=30.0):
        """Until the Kafka consumers of auth, task and notifiers hold partitions (a new
        consumer group takes a few seconds to form)."""
        want = [(self.auth, "compensate_user_deletion"), (self.task, "user_deleted")]
        want += [(n, "notifications") for n in self.notifiers]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ns = self.settings.get("events.namespace", "")
            full = (lambda t: f"{ns}.{t}") if ns else (lambda t: t)
            if all(f"event=kafka_assigned topic={full(t)} " in p.log_text() for p, t in want):
                return True
            time.sleep(0.1)
        return False

    def wait_peers_up(self, timeout=30.0):
        """Until every gateway reports its peers up (tms_peer_up in /metrics, which,
        unlike polling /readyz, leaves no 503 in the logs)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ok = True
            for g in self.gateways:
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{g.metrics_port}/metrics",
                                                timeout=2) as r:
                        text = r.read().decode()
                except OSError:
                    text = ""
                for peer in ("auth", "task"):
                    ok = ok and f'tms_peer_up{{peer="{peer}"}} 1' in text
            if ok:
                return True
            time.sleep(0.1)
        return False

    def wait_ready(self, timeout=30.0):
        """Until every gateway's /readyz is 200 (peers connected, stores answering)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ok = True
            for g in self.gateways:
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{g.port}/readyz",
                                                timeout=2) as r:
                        ok = ok and r.status == 200
                except OSError:
                    ok = False
            if ok:
                return True
            time.sleep(0.1)
        return False

    def stop(self, sig=signal.SIGTERM, timeout=10.0):
        """Stop gateways first, then the roles they call; {name: exit code or None}."""
        codes = {}
        for p in reversed(self.all()):
            p.signal(sig)
            rc = p.wait(timeout)
            if rc is None:
                p.kill()
            codes[p.name] = rc
        return codes

    def describe(self):
        lines = []
        for p in self.all():
            lines.append(f"{p.name:10s} pid={p.proc.pid if p.proc else '-'} "
                         f"http=http://127.0.0.1:{p.port} grpc=127.0.0.1:{p.grpc_port} "
                         f"metrics=http://127.0.0.1:{p.metrics_port}/metrics log={p.log_path}")
        return "\n".join(lines)
