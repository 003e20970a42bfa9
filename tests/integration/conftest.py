"""Black-box harness: starts the real `tms` binary and talks to it over real sockets.

Environment:
  TMS_BIN  path of the binary (default <repo>/build/tms)
  TMS_TEST_TASKS_URL  when set (postgres://.../db), every server keeps its tasks in
           PostgreSQL: a fresh database per data dir on that server (see pg_tasks_url)
  TMS_TEST_USERS_URL  when set (mongodb://host:port/db), every server keeps its users
           in MongoDB (FerretDB from scripts/service-mongo): a fresh database per data
           dir (see mongo_users_url)
  TMS_TEST_SPLIT=1  every server is a split deployment (issue 11): auth, task, notifier
           and gateway as four processes (scripts/tms_split.py) on the stores above and
           Kafka (TMS_TEST_KAFKA_BROKERS); the TmsServer API stays the same: port and
           pid are the gateway's, log_text() is every process's log (the gateway's
           first), GET /metrics concatenates every process's metrics, stop() and kill()
           act on all four (a kill -9 test crashes the whole deployment).
  TMS_TEST_SPLIT_TLS=1  with TMS_TEST_SPLIT: the roles talk mutual TLS (issue 22:
           peers.tls_* from a throwaway CA made with openssl, scripts/tms_split.py)

/metrics is served on metrics.addr, not on http.addr (issue 17): every test server gets
a free metrics port, and srv.get("/metrics") reads it there (srv.metrics_url()).
"""
import itertools
import json
import os
import re
import secrets
import select
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import sys

import pytest
import requests

REPO = Path(__file__).resolve().parents[2]
TMS_BIN = os.environ.get("TMS_BIN", str(REPO / "build" / "tms"))
# Debian's libmongoc initialises itself when the binary loads and keeps counters in
# /dev/shm/mongoc-<pid>; a tms killed with -9 (the crash tests) leaves its file, and a
# later process given the same pid prints a warning line of mongoc's own before main
# runs. TMS does not use those counters (they are for mongoc's stat tool).
os.environ.setdefault("MONGOC_DISABLE_SHM", "1")

sys.path.insert(0, str(REPO / "scripts"))
from tms_split import (PORT_TAKEN, LoggedProcess, SplitDeployment, free_port,  # noqa: E402
                       tms_env)

SPLIT = os.environ.get("TMS_TEST_SPLIT", "") not in ("", "0")
SPLIT_TLS = SPLIT and os.environ.get("TMS_TEST_SPLIT_TLS", "") not in ("", "0")
SPLIT_BROKERS = os.environ.get("TMS_TEST_KAFKA_BROKERS", "")

# Random per session: a literal would be published in the repository, and the server
# refuses every secret that is (issue 17).
JWT_SECRET = secrets.token_hex(24)  # 48 bytes
assert len(JWT_SECRET.encode()) == 48
DEFAULT_PASSWORD = "Sup3r-S3cret-Passw0rd!"

START_TIMEOUT = 20.0
STOP_TIMEOUT = 10.0

ID_RE = re.compile(r"^[0-9a-f]{24}$")
TS_RE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")

# API.md error table: gRPC status name -> HTTP status.
STATUS_HTTP = {
    "INVALID_ARGUMENT": 400,
    "UNAUTHENTICATED": 401,
    "PERMISSION_DENIED": 403,
    "NOT_FOUND": 404,
    "ALREADY_EXISTS": 409,
    "FAILED_PRECONDITION": 412,
    "RESOURCE_EXHAUSTED": 429,
    "INTERNAL": 500,
    "UNAVAILABLE": 503,
    "DEADLINE_EXCEEDED": 504,
}


def unique_email(prefix="user"):
    return f"{prefix}-{secrets.token_hex(6)}@example.com"


def run_cli(args, env=None, timeout=30, **kw):
    """Run `tms <args>` to completion; returns CompletedProcess (text mode). The
    environment is this one's without the harness's TMS_* variables (tms_env), plus
    env."""
    if "input" not in kw:
        kw["stdin"] = subprocess.DEVNULL
    return subprocess.run([TMS_BIN, *args], capture_output=True, text=True,
                          timeout=timeout, env=tms_env(env), **kw)


# -- tasks on PostgreSQL (TMS_TEST_TASKS_URL) -----------------------------------

TASKS_URL = os.environ.get("TMS_TEST_TASKS_URL", "")
_PG_DATABASES = set()


def pg_tasks_url(data_dir):
    """A database of its own for the server(s) of one data dir (pagination tests list
    every task), created on first use and dropped at the end of the session."""
    import hashlib
    name = "tms_it_" + hashlib.sha1(str(data_dir).encode()).hexdigest()[:16]
    if name not in _PG_DATABASES:
        subprocess.run(["psql", "-qAt", "-v", "ON_ERROR_STOP=1", TASKS_URL, "-c",
                        f"CREATE DATABASE {name}"], check=True, capture_output=True)
        _PG_DATABASES.add(name)
    base, _, query = TASKS_URL.partition("?")
    return base.rsplit("/", 1)[0] + "/" + name + (("?" + query) if query else "")


# -- users on MongoDB (TMS_TEST_USERS_URL) ---------------------------------------

USERS_URL = os.environ.get("TMS_TEST_USERS_URL", "")


def mongo_users_url(data_dir, base=None):
    """A database of its own for the server(s) of one data dir, on the server of base
    (default TMS_TEST_USERS_URL). MongoDB creates it on first write; it is dropped at the
    end of the session when pymongo is installed."""
    import hashlib
    base = base or USERS_URL
    name = "tms_it_" + hashlib.sha1(str(data_dir).encode()).hexdigest()[:16]
    prefix, _, query = base.partition("?")
    host = prefix.split("://", 1)[1].split("/", 1)[0]
    url = prefix.split("://", 1)[0] + "://" + host + "/" + name + (("?" + query) if query else "")
    _MONGO_DATABASES.add((url, name))
    return url


_MONGO_DATABASES = set()


@pytest.fixture(scope="session", autouse=True)
def _drop_mongo_databases():
    yield
    if not _MONGO_DATABASES:
        return
    try:
        import pymongo
    except ImportError:
        return
    for url, name in sorted(_MONGO_DATABASES):
        try:
            with pymongo.MongoClient(url, serverSelectionTimeoutMS=2000) as client:
                client.drop_database(name)
        except pymongo.errors.PyMongoError:
            pass


@pytest.fixture(scope="session", autouse=True)
def _drop_pg_databases():
    yield
    for name in sorted(_PG_DATABASES):
        subprocess.run(["psql", "-qAt", TASKS_URL, "-c",
                        f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"], capture_output=True)


# -- Kafka: a namespace per test -------------------------------------------------

# Every server a test starts on Kafka runs in an events.namespace (topics "<ns>.<topic>",
# groups "<group>.<ns>") unless the test names one. With the plain names, two runs
# against one broker (two people, a helper and CI) joined one notification-group and
# took each other's events. pid and a random suffix make it the run's, the counter the
# test's: a test's servers share it (two instances sharing the work), later tests start
# clean.
KAFKA_RUN = f"it{os.getpid()}{secrets.token_hex(2)}"
_KAFKA_TESTS = itertools.count(1)
_KAFKA_NAMESPACES = set()  # (brokers, namespace) of every server started on Kafka


def kafka_namespace():
    """A namespace no other test (of this run or another) uses."""
    return f"{KAFKA_RUN}t{next(_KAFKA_TESTS)}"


def delete_kafka_namespaces(pairs):
    """Best effort: delete the topics of these (brokers, namespace) pairs. TMS creates
    eight topics per namespace (four and their .dlq), so a run would leave hundreds."""
    by_brokers = {}
    for brokers, ns in pairs:
        by_brokers.setdefault(brokers, set()).add(ns + ".")
    try:
        from confluent_kafka.admin import AdminClient
    except ImportError:
        return
    for brokers, prefixes in by_brokers.items():
        try:
            admin = AdminClient({"bootstrap.servers": brokers})
            topics = [t for t in admin.list_topics(timeout=5).topics
                      if t.startswith(tuple(prefixes))]
            if not topics:
                continue
            for f in admin.delete_topics(topics, operation_timeout=10,
                                         request_timeout=15).values():
                f.result()
        except Exception:  # noqa: BLE001 (a broker gone or slow must not fail a test)
            pass


@pytest.fixture(scope="session", autouse=True)
def _delete_kafka_topics():
    yield
    delete_kafka_namespaces(_KAFKA_NAMESPACES)


_SPLIT_TLS_FILES = []


def _split_tls():
    """One throwaway CA and role certificates for every split deployment of the session
    (TMS_TEST_SPLIT_TLS), or False."""
    if not SPLIT_TLS:
        return False
    if not _SPLIT_TLS_FILES:
        from tms_split import make_tls
        _SPLIT_TLS_FILES.append(make_tls(tempfile.mkdtemp(prefix="tms-split-tls-")))
    return _SPLIT_TLS_FILES[0]


def _norm_key(k):
    return k.replace("__", ".")


class TmsServer(LoggedProcess):
    """One `tms serve` process on a free port with its own data dir."""

    def __init__(self, workdir, settings=None, env=None, secret=JWT_SECRET,
                 data_dir=None, ratelimits_off=True, kafka_ns=None):
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.data_dir = Path(data_dir) if data_dir else self.workdir / "data"
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.secret = secret
        self.port = None
        self.metrics_port = None
        self.http_host = "127.0.0.1"  # "[::]" for a dual-stack listener (IPv6 tests)
        # A CA file when http.addr speaks TLS (http.tls_cert): url() is then
        # https://localhost:port and requests verify against it; tls_client_cert
        # (cert, key) is presented when set (http.tls_client_ca).
        self.tls_ca = None
        self.tls_client_cert = None
        self.proc = None
        self.returncode = None
        self.env = dict(env or {})
        base = {}
        if ratelimits_off:
            # and the per-address caps: every test client comes from 127.0.0.1
            base.update({
                "ratelimit.api_per_minute": "0",
                "ratelimit.login_per_15min": "0",
                "ratelimit.task_create_per_hour": "0",
                "http.max_connections_per_address": "0",
                "auth.hash_per_address": "0",
                # many tests mail one assignee dozens of times from one creator
                "notify.per_assigner_per_hour": "0",
                "notify.per_recipient_per_hour": "0",
            })
        if secret is not None:
            base["auth.jwt_secret"] = secret
        base.update({_norm_key(k): str(v) for k, v in (settings or {}).items()})
        if TASKS_URL and "tasks.url" not in base:
            base["tasks.url"] = pg_tasks_url(self.data_dir)
        if USERS_URL and "users.url" not in base:
            base["users.url"] = mongo_users_url(self.data_dir)
        if base.get("events.brokers") and kafka_ns:
            base.setdefault("events.namespace", kafka_ns)
        if SPLIT:
            # One Kafka cluster for the session: a namespace per server (kept across its
            # restarts), and mail into <data.dir>/mail as in one process.
            base.setdefault("events.brokers", SPLIT_BROKERS)
            base.setdefault("events.namespace", "it" + secrets.token_hex(4))
            base.setdefault("mail.url", f"maildir://{self.data_dir}/mail")
        if base.get("events.brokers") and base.get("events.namespace"):
            _KAFKA_NAMESPACES.add((base["events.brokers"], base["events.namespace"]))
        self.settings = base
        self.split = None
        self._split_secret = secrets.token_hex(24)
        self._log_index = 0
        self.log_path = None
        self._log_file = None

    # -- lifecycle -------------------------------------------------------
    def command(self):
        cmd = [TMS_BIN, "serve",
               "--set", f"http.addr={self.http_host}:{self.port}",
               "--set", "grpc.addr=127.0.0.1:0",
               "--set", f"metrics.addr=127.0.0.1:{self.metrics_port}",
               "--set", f"data.dir={self.data_dir}"]
        for k, v in self.settings.items():
            cmd += ["--set", f"{k}={v}"]
        return cmd

    def _start_split(self):
        self._log_index += 1
        dep = SplitDeployment(TMS_BIN, self.workdir / f"split-{self._log_index}", self.settings,
                              env=self.env, secret=self._split_secret,
                              data_root=self.data_dir / "roles", tls=_split_tls())
        self.split = dep
        try:
            dep.start(timeout=START_TIMEOUT)
        except RuntimeError as e:
            dep.stop(signal.SIGKILL, timeout=2)
            pytest.fail(f"split deployment did not start: {e}")
        self.port = dep.gateway.port
        self.metrics_port = dep.gateway.metrics_port
        self.proc = dep.gateway.proc
        self.returncode = None
        if not dep.wait_subscribed(timeout=45):
            pytest.fail("split deployment: Kafka consumers never got partitions:\n" +
                        self.log_text()[-4000:])
        if not dep.wait_peers_up(timeout=30):  # ready, as one process is at once
            pytest.fail("split deployment: the gateway's peers never came up:\n" +
                        self.log_text()[-4000:])
        return self

    def start(self, attempts=3):
        """Start on free ports. free_port() is a race with every other program on the
        machine: a port taken in between (tms refuses an address anything listens on)
        is retried on new ports."""
        assert self.proc is None or self.proc.poll() is not None
        if SPLIT:
            return self._start_split()
        for attempt in range(attempts):
            if self._start_once(last=attempt == attempts - 1):
                return self
        raise AssertionError("unreachable")

    def _start_once(self, last):
        self.port = free_port()
        self.metrics_port = free_port()
        self._log_index += 1
        self.log_path = self.workdir / f"stderr-{self._log_index}.log"
        self._log_file = open(self.log_path, "wb")
        env = tms_env(self.env)
        self.proc = subprocess.Popen(self.command(), stdout=self._log_file,
                                     stderr=self._log_file, stdin=subprocess.DEVNULL,
                                     env=env)
        self.returncode = None
        deadline = time.monotonic() + START_TIMEOUT
        # Wait for the listener with plain connects so readiness probing costs at
        # most one HTTP request (matters when rate limits are on).
        while True:
            if self.proc.poll() is not None:
                self._log_file.close()
                if not last and PORT_TAKEN in self.log_text():
                    return False
                pytest.fail(f"tms serve exited with {self.proc.returncode} during start; "
                            f"stderr:\n{self.log_text()[-4000:]}")
            if time.monotonic() > deadline:
                self.kill()
                pytest.fail(f"tms serve did not answer /healthz within {START_TIMEOUT}s; "
                            f"stderr:\n{self.log_text()[-4000:]}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    pass
            except OSError:
                time.sleep(0.05)
                continue
            try:
                r = requests.get(self.url("/healthz"), timeout=2, verify=self.tls_ca or True,
                                 cert=self.tls_client_cert)
                if r.status_code == 200:
                    return True
            except requests.RequestException:
                pass
            time.sleep(0.05)

    def stop(self, sig=signal.SIGTERM, timeout=STOP_TIMEOUT):
        """Send sig, wait; returns the exit code (None if it had to be killed)."""
        if self.proc is None:
            return self.returncode
        if self.split is not None:
            codes = self.split.stop(sig, timeout)
            bad = [c for c in codes.values() if c != 0]
            self.returncode = None if None in bad else (bad[0] if bad else 0)
            return self.returncode
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.kill()
                self.returncode = None
                self._close_log()
                return None
        self.returncode = self.proc.returncode
        self._close_log()
        return self.returncode

    def wait_exit(self, timeout=STOP_TIMEOUT):
        """Wait (sending nothing) for the process to exit; returns its code or None."""
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            return None
        self.returncode = self.proc.returncode
        self._close_log()
        return self.returncode

    def stop_ok(self, sig=signal.SIGTERM):
        """Stop and assert a clean exit (code 0 within 10 s)."""
        alive = self.proc is not None and self.proc.poll() is None
        t0 = time.monotonic()
        rc = self.stop(sig)
        took = time.monotonic() - t0
        assert rc is not None, (f"tms did not exit within {STOP_TIMEOUT}s after {sig!r}; "
                                f"stderr tail:\n{self.log_text()[-3000:]}")
        assert rc == 0, (f"tms exited with {rc} (alive before stop: {alive}, {took:.2f}s); "
                         f"stderr tail:\n{self.log_text()[-3000:]}")
        return took

    def kill(self):
        if self.split is not None:
            for p in self.split.all():
                p.kill()
            return
        super().kill()

    def log_text(self):
        if self.split is not None:  # the gateway first: tests read its ports from it
            return "".join(p.log_text() for p in
                           self.split.gateways + [self.split.auth, self.split.task] +
                           self.split.notifiers)
        return super().log_text()

    # -- Kafka names (events.namespace) -----------------------------------
    def kafka_topic(self, name):
        """The broker's name of TMS's topic `name`: "<ns>.<name>" in a namespace."""
        ns = self.settings.get("events.namespace", "")
        return f"{ns}.{name}" if ns else name

    def kafka_group(self, name):
        """The broker's name of TMS's consumer group `name`: "<name>.<ns>" in one."""
        ns = self.settings.get("events.namespace", "")
        return f"{name}.{ns}" if ns else name

    # -- HTTP helpers ----------------------------------------------------
    def url(self, path):
        if self.tls_ca:
            return f"https://localhost:{self.port}{path}"
        return f"http://127.0.0.1:{self.port}{path}"

    def metrics_url(self):
        """/metrics on the metrics listener (metrics.addr), where a scraper reads it."""
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    def request(self, method, path, token=None, headers=None, **kw):
        h = dict(headers or {})
        if token is not None:
            h["Authorization"] = f"Bearer {token}"
        kw.setdefault("timeout", 10)
        kw.setdefault("verify", self.tls_ca or True)
        if self.tls_client_cert:
            kw.setdefault("cert", self.tls_client_cert)
        # GET /metrics without a token goes where metrics are served: metrics.addr.
        url = (self.metrics_url() if method == "GET" and path == "/metrics" and token is None
               and "metrics.addr" not in self.settings else self.url(path))
        r = requests.request(method, url, headers=h, **kw)
        if self.split is not None and url == self.metrics_url() and r.ok:
            # What a Prometheus scraping every process of the deployment sees: counters
            # of the auth, task and notifier roles live in their own processes.
            texts = [r.text] + [requests.get(f"http://127.0.0.1:{p.metrics_port}/metrics",
                                             timeout=10).text
                                for p in self.split.all() if p is not self.split.gateway]
            r._content = "".join(texts).encode()
        return r

    def get(self, path, **kw):
        return self.request("GET", path, **kw)

    def post(self, path, **kw):
        return self.request("POST", path, **kw)

    def delete(self, path, **kw):
        return self.request("DELETE", path, **kw)

    def patch(self, path, **kw):
        return self.request("PATCH", path, **kw)

    # -- task helpers ----------------------------------------------------
    def create_task(self, token, title=None, description="some description", headers=None,
                    **fields):
        """POST /api/task expecting 201; returns the task dict."""
        body = {"title": title or f"task {secrets.token_hex(4)}", "description": description}
        body.update(fields)
        r = self.post("/api/task", token=token, json=body, headers=headers)
        assert r.status_code == 201, f"create task {body!r}: {r.status_code} {r.text[:500]}"
        return r.json()

    def get_task(self, token, task_id):
        return self.get(f"/api/task/{task_id}", token=token)

    def task_ok(self, token, task_id):
        r = self.get_task(token, task_id)
        assert r.status_code == 200, f"get task {task_id}: {r.status_code} {r.text[:500]}"
        return r.json()

    def list_tasks(self, token, **params):
        return self.get("/api/task", token=token, params=params)

    @property
    def maildir(self):
        """The default Maildir of the embedded setup: <data.dir>/mail."""
        return self.data_dir / "mail"

    def register(self, email=None, password=DEFAULT_PASSWORD):
        """Register a fresh user; returns (token, user)."""
        email = email or unique_email()
        r = self.post("/api/auth/register", json={"email": email, "password": password})
        assert r.status_code == 201, f"register {email}: {r.status_code} {r.text}"
        body = r.json()
        return body["token"], body["user"]

    def login(self, email, password=DEFAULT_PASSWORD):
        return self.post("/api/auth/login", json={"email": email, "password": password})

    def login_ok(self, email, password=DEFAULT_PASSWORD):
        r = self.login(email, password)
        assert r.status_code == 200, f"login {email}: {r.status_code} {r.text}"
        return r.json()["token"], r.json()["user"]

    def me(self, token):
        return self.get("/api/auth/me", token=token)

    def set_role(self, email, role="admin"):
        args = ["user", "set-role", email, role, "--set", f"data.dir={self.data_dir}"]
        if "users.url" in self.settings:  # the store the server uses, not the default
            args += ["--set", f"users.url={self.settings['users.url']}"]
        return run_cli(args)


# -- logs ----------------------------------------------------------------------

_LOGFMT_PAIR = re.compile(r'([^\s=]+)(?:=("(?:[^"\\]|\\.)*"|[^\s"]*))?(?=\s|$)')


def logfmt(line):
    """The key/value pairs of one logfmt line, in order (a bare word is a key without a
    value); raises ValueError where the line is not logfmt (an unbalanced quote)."""
    pairs, pos = [], 0
    while pos < len(line):
        if line[pos].isspace():
            pos += 1
            continue
        m = _LOGFMT_PAIR.match(line, pos)
        if not m:
            raise ValueError(f"not logfmt at column {pos}: {line[pos:pos + 40]!r}")
        value = m.group(2)
        if value and value.startswith('"'):
            value = value[1:-1].replace('\\"', '"').replace("\\\\", "\\")
        pairs.append((m.group(1), value))
        pos = m.end()
    return pairs


def log_problems(text):
    """The lines of a tms log (those that start with ts=, TMS's own) that are not
    logfmt or name a key twice (issue 25: `event=email_sent event=<uuid>`)."""
    problems = []
    for line in text.splitlines():
        if not line.startswith("ts="):
            continue
        try:
            keys = [k for k, _ in logfmt(line)]
        except ValueError as e:
            problems.append(f"{e}: {line}")
            continue
        dup = sorted({k for k in keys if keys.count(k) > 1})
        if dup:
            problems.append(f"key {', '.join(dup)} twice: {line}")
    return problems


# -- assertion helpers ---------------------------------------------------------

def assert_error(resp, http_status, code=None):
    """resp is an API error: exact {"error":{"code","message"}} body, code matching status."""
    assert resp.status_code == http_status, (
        f"expected HTTP {http_status}, got {resp.status_code}: {resp.text[:500]}")
    ctype = resp.headers.get("Content-Type", "")
    assert ctype.startswith("application/json"), f"error Content-Type {ctype!r}"
    try:
        body = resp.json()
    except ValueError:
        pytest.fail(f"error body is not JSON: {resp.text[:500]!r}")
    assert isinstance(body, dict) and set(body) == {"error"}, f"error body shape: {body!r}"
    err = body["error"]
    assert isinstance(err, dict) and set(err) == {"code", "message"}, f"error object: {err!r}"
    assert isinstance(err["code"], str) and isinstance(err["message"], str), err
    assert err["message"], "empty error message"
    if code is not None:
        assert err["code"] == code, f"expected code {code}, got {err['code']}"
    if err["code"] in STATUS_HTTP:
        assert STATUS_HTTP[err["code"]] == resp.status_code, (
            f"code {err['code']} does not match HTTP {resp.status_code}")
    assert resp.headers.get("X-Request-Id"), "error response without X-Request-Id"
    return err


def assert_user_shape(user, email=None, role="user"):
    assert isinstance(user, dict), user
    for k in ("id", "email", "role", "createdAt"):
        assert k in user, f"user lacks {k}: {user!r}"
    assert ID_RE.match(user["id"]), f"bad user id {user['id']!r}"
    assert TS_RE.match(user["createdAt"]), f"bad createdAt {user['createdAt']!r}"
    assert user["role"] == role
    if email is not None:
        assert user["email"] == email
    assert_no_secrets(user)


SECRET_KEY_RE = re.compile(r"pass|hash|salt|secret", re.I)


def assert_no_secrets(obj, password=None):
    """No key that looks like a password/hash, and no value equal to the password."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            assert not SECRET_KEY_RE.search(k), f"response carries {k!r}"
            assert_no_secrets(v, password)
    elif isinstance(obj, list):
        for v in obj:
            assert_no_secrets(v, password)
    elif isinstance(obj, str) and password is not None:
        assert password not in obj, "password echoed in response"


TASK_KEYS = {"id", "title", "description", "status", "assignedTo", "createdBy", "createdAt",
             "updatedAt", "version"}
TASK_ID_RE = re.compile(r"^[1-9][0-9]{0,18}$")


def assert_task_shape(task):
    assert isinstance(task, dict), task
    assert set(task) == TASK_KEYS, f"task keys {sorted(task)}"
    assert isinstance(task["id"], str) and TASK_ID_RE.match(task["id"]), task["id"]
    assert isinstance(task["title"], str) and task["title"]
    assert isinstance(task["description"], str) and task["description"]
    assert task["status"] in ("open", "in progress", "closed"), task["status"]
    assert task["assignedTo"] is None or (isinstance(task["assignedTo"], str)
                                          and ID_RE.match(task["assignedTo"])), task
    assert isinstance(task["createdBy"], str) and ID_RE.match(task["createdBy"]), task
    assert TS_RE.match(task["createdAt"]), task["createdAt"]
    assert TS_RE.match(task["updatedAt"]), task["updatedAt"]
    assert task["updatedAt"] >= task["createdAt"], task
    assert isinstance(task["version"], int) and not isinstance(task["version"], bool)
    assert task["version"] >= 1
    return task


def make_admin(srv, email=None):
    """Register a user, make it admin with the CLI, log in again; returns (token, user)."""
    email = email or unique_email("admin")
    srv.register(email)
    res = srv.set_role(email, "admin")
    assert res.returncode == 0, f"set-role failed ({res.returncode}): {res.stderr}"
    token, user = srv.login_ok(email)
    assert user["role"] == "admin", user
    return token, user


# -- Maildir ---------------------------------------------------------------------

class Mail:
    """One message file of a Maildir `new/` directory."""

    def __init__(self, path, raw):
        import email
        import email.policy
        self.path = path
        self.raw = raw
        self.msg = email.message_from_bytes(raw, policy=email.policy.default)

    @property
    def to_addrs(self):
        from email.utils import getaddresses
        return [a.lower() for _, a in getaddresses([str(v) for v in self.msg.get_all("To", [])])]

    def part(self, subtype):
        p = self.msg.get_body(preferencelist=(subtype,))
        assert p is not None, f"no text/{subtype} part in {self.path.name}"
        assert p.get_content_type() == f"text/{subtype}", p.get_content_type()
        return p

    @property
    def text(self):
        return self.part("plain").get_content()

    @property
    def html(self):
        return self.part("html").get_content()

    def mentions_task(self, task_id):
        return re.search(rf"\b{re.escape(str(task_id))}\b", self.text) is not None

    def __repr__(self):
        return f"<Mail {self.path.name} To={self.msg.get('To')!r} Subject={self.msg.get('Subject')!r}>"


_MAIL_CACHE = {}


def read_mails(maildir):
    """Every message in <maildir>/new (files there are complete: Maildir writes to tmp/ and
    renames), parsed once per path."""
    new = Path(maildir) / "new"
    out = []
    if not new.is_dir():
        return out
    for p in sorted(new.iterdir()):
        if p.name.startswith("."):
            continue
        try:
            st = p.stat()
            key = (str(p), st.st_ino, st.st_size)
            mail = _MAIL_CACHE.get(key)
            if mail is None:
                mail = _MAIL_CACHE[key] = Mail(p, p.read_bytes())
        except FileNotFoundError:
            continue
        out.append(mail)
    return out


def mails_to(maildir, address, task_id=None):
    address = address.lower()
    return [m for m in read_mails(maildir)
            if address in m.to_addrs and (task_id is None or m.mentions_task(task_id))]


def wait_mails(maildir, address, count=1, task_id=None, timeout=10.0, settle=0.0):
    """Poll until at least `count` messages to `address` (about task_id) exist; then wait
    `settle` seconds more and return every matching message (the caller checks the count)."""
    deadline = time.monotonic() + timeout
    while True:
        got = mails_to(maildir, address, task_id)
        if len(got) >= count or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    if settle:
        time.sleep(settle)
        got = mails_to(maildir, address, task_id)
    return got


# -- raw HTTP over sockets -------------------------------------------------------

def raw_connect(port, timeout=5.0):
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    s.settimeout(timeout)
    return s


class RawResponse:
    def __init__(self, status, reason, headers, body):
        self.status = status
        self.reason = reason
        self.headers = headers  # dict, lower-case names
        self.body = body

    def json(self):
        return json.loads(self.body)

    def __repr__(self):
        return f"<RawResponse {self.status} {self.headers} {self.body[:200]!r}>"


class RawReader:
    """Parses consecutive HTTP/1.1 responses from one socket."""

    def __init__(self, sock):
        self.sock = sock
        self.buf = b""
        self.eof = False

    def _fill(self):
        if self.eof:
            return False
        data = self.sock.recv(65536)
        if not data:
            self.eof = True
            return False
        self.buf += data
        return True

    def _read_until(self, marker):
        while marker not in self.buf:
            if not self._fill():
                raise ConnectionError(f"EOF before {marker!r}; got {self.buf[:300]!r}")
        i = self.buf.index(marker) + len(marker)
        out, self.buf = self.buf[:i], self.buf[i:]
        return out

    def _read_n(self, n):
        while len(self.buf) < n:
            if not self._fill():
                raise ConnectionError(f"EOF in body; wanted {n}, have {len(self.buf)}")
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def read_response(self, head_only=False):
        head = self._read_until(b"\r\n\r\n").decode("latin-1")
        lines = head.split("\r\n")
        parts = lines[0].split(" ", 2)
        assert parts[0].startswith("HTTP/1."), f"bad status line {lines[0]!r}"
        status = int(parts[1])
        headers = {}
        for line in lines[1:]:
            if not line:
                continue
            k, _, v = line.partition(":")
            headers[k.strip().lower()] = v.strip()
        body = b""
        if head_only or status in (204, 304) or 100 <= status < 200:
            return RawResponse(status, parts[2] if len(parts) > 2 else "", headers, body)
        if "chunked" in headers.get("transfer-encoding", "").lower():
            while True:
                size_line = self._read_until(b"\r\n")
                size = int(size_line.split(b";")[0].strip(), 16)
                if size == 0:
                    # trailers until empty line
                    while self._read_until(b"\r\n") != b"\r\n":
                        pass
                    break
                body += self._read_n(size)
                self._read_n(2)
        elif "content-length" in headers:
            body = self._read_n(int(headers["content-length"]))
        else:
            while self._fill():
                pass
            body, self.buf = self.buf, b""
        return RawResponse(status, parts[2] if len(parts) > 2 else "", headers, body)

    def at_eof(self, timeout=3.0):
        """True when the peer closes (EOF or reset) within timeout with no more data."""
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(65536)
        except (ConnectionResetError, BrokenPipeError):
            return True
        except socket.timeout:
            return False
        if data:
            self.buf += data
            return False
        self.eof = True
        return True


def readable(sock, timeout=0.0):
    r, _, _ = select.select([sock], [], [], timeout)
    return bool(r)


# -- fixtures -------------------------------------------------------------------

@pytest.fixture(scope="session")
def tms_bin():
    if not os.access(TMS_BIN, os.X_OK):
        pytest.fail(f"tms binary not found at {TMS_BIN} (set TMS_BIN)")
    return TMS_BIN


@pytest.fixture(scope="session")
def server(tms_bin, tmp_path_factory):
    """One shared server with default settings (rate limits off, known secret)."""
    srv = TmsServer(tmp_path_factory.mktemp("tms-session"))
    srv.start()
    yield srv
    srv.stop_ok()
    bad = log_problems(srv.log_text())
    assert not bad, "log lines that are not logfmt:\n" + "\n".join(bad[:10])


@pytest.fixture
def make_server(tms_bin, tmp_path):
    """Factory: make_server(settings={...}, env={...}, secret=..., data_dir=...,
    start=True, **kw) where kw keys use '__' for '.' (ratelimit__api_per_minute=5).
    Servers still running at teardown must stop cleanly."""
    servers = []
    counter = [0]
    kafka_ns = kafka_namespace()  # for servers on Kafka whose test names none

    def factory(settings=None, env=None, secret=JWT_SECRET, data_dir=None, start=True,
                ratelimits_off=True, **kw):
        counter[0] += 1
        s = dict(settings or {})
        s.update(kw)
        srv = TmsServer(tmp_path / f"srv{counter[0]}", settings=s, env=env, secret=secret,
                        data_dir=data_dir, ratelimits_off=ratelimits_off, kafka_ns=kafka_ns)
        servers.append(srv)
        if start:
            srv.start()
        return srv

    yield factory
    errors = []
    for srv in servers:
        alive = srv.proc is not None and srv.proc.poll() is None
        if srv.split is not None:  # a test that stopped its gateway alone left the roles
            alive = alive or any(p.alive() for p in srv.split.all())
        if alive:
            try:
                srv.stop_ok()
            except AssertionError as e:
                errors.append(str(e))
        if srv.proc is not None:  # every line of every run is logfmt, no key twice
            bad = log_problems(srv.log_text())
            if bad:
                errors.append("log lines that are not logfmt:\n" + "\n".join(bad[:10]))
    # every server has stopped: this test's topics go now, not at the end of the run
    mine = {(srv.settings["events.brokers"], srv.settings["events.namespace"])
            for srv in servers if srv.settings.get("events.brokers")
            and srv.settings.get("events.namespace")}
    delete_kafka_namespaces(mine)
    _KAFKA_NAMESPACES.difference_update(mine)
    if errors:
        pytest.fail("server teardown: " + "; ".join(errors))


@pytest.fixture
def scratch_dir():
    with tempfile.TemporaryDirectory(prefix="tms-it-") as d:
        yield Path(d)


def login_request(email, password=DEFAULT_PASSWORD):
    """The bytes of one POST /api/auth/login (argon2id: slow enough to be in flight)."""
    body = json.dumps({"email": email, "password": password}).encode()
    return (b"POST /api/auth/login HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n" % len(body) + body)


def accepted_raw_conns(port, n):
    """n raw connections, each known to be accepted (a /healthz answered on it), so a
    stop that follows finds them open. Returns (sockets, their readers)."""
    socks = [raw_connect(port, timeout=10) for _ in range(n)]
    for s in socks:
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    readers = [RawReader(s) for s in socks]
    for r in readers:
        assert r.read_response().status == 200
    return socks, readers


def sigterm_with_logins_in_flight(srv, socks, readers, emails):
    """A login on each socket, SIGTERM while they run, and what each connection got: a
    status, or the error met. Returns (results, monotonic time of the signal)."""
    for s, e in zip(socks, emails):
        s.sendall(login_request(e))
    time.sleep(0.02)
    t0 = time.monotonic()
    srv.proc.send_signal(signal.SIGTERM)
    results = []
    for r in readers:
        try:
            results.append(r.read_response().status)
        except (ConnectionError, OSError) as ex:
            results.append(repr(ex))
    return results, t0


# -- nothing left running ------------------------------------------------------------

def _left_running(basetemp):
    """pids of processes whose command line names a path under basetemp (every server
    a test starts has its data dir there), other than this one."""
    mark, found = str(basetemp).encode(), []
    for d in os.listdir("/proc"):
        if not d.isdigit() or int(d) == os.getpid():
            continue
        try:
            with open(f"/proc/{d}/cmdline", "rb") as f:
                if mark in f.read():
                    found.append(int(d))
        except OSError:
            pass
    return found


def pytest_sessionfinish(session, exitstatus):
    """A server a test left running (a split deployment whose gateway a test stopped
    alone left its three roles running after the run: 9 per CI run, found busy on the
    machine of the next benchmark) fails the run; it is killed here."""
    factory = getattr(session.config, "_tmp_path_factory", None)
    if factory is None:
        return
    pids = _left_running(factory.getbasetemp())
    if not pids:
        return
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    sys.stderr.write(f"\nprocesses left running by the tests, killed: {pids}\n")
    session.exitstatus = pytest.ExitCode.TESTS_FAILED
