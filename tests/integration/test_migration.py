"""Migration role by role (issue 21): the original Node.js system's own services work
unchanged beside TMS roles.

- Trusted legacy callers (grpc.trusted_peers): legacy_clients.js makes exactly the
  original gateway's calls with @grpc/grpc-js and no metadata. From a trusted source
  address (127.0.0.2) an auth role and a task role, each a process of its own on a
  real Kafka, serve them with the original's semantics; the original notifier's
  consume -> GetUserInfo -> mail flow (OriginalNotifier: a confluent-kafka consumer in
  group notification-group calling GetUserInfo through legacy_clients.js) mails the
  assignee. The same calls from 127.0.0.1 (untrusted) get UNAUTHENTICATED, a call with a
  token follows TMS's rules, and the original's error texts come back where its callers
  match on them.
- Events without event_id: a TMS notifier consuming notifications in the original's
  shape (no key, no event_id, no title), published twice, mails once; a TMS task role
  consuming the original's user_deleted unassigns the user's tasks.
- grpc.trusted_peers is checked at start (one line naming the key); one warning while
  set; the per-address rate limit does not hold a trusted peer.

The Kafka tests need TMS_TEST_KAFKA_BROKERS (scripts/service-kafka); the grpc-js ones
node and @grpc/grpc-js (scripts/setup-grpc-tools).
"""
import json
import os
import re
import secrets
import shutil
import subprocess
import threading
import time
import urllib.request
from datetime import datetime, timezone

import pytest

from conftest import (JWT_SECRET, REPO, SPLIT, TASKS_URL, TMS_BIN, USERS_URL, mongo_users_url,
                      pg_tasks_url, run_cli, unique_email, wait_mails)
from tms_split import SplitDeployment

BROKERS = os.environ.get("TMS_TEST_KAFKA_BROKERS", "")
PROTO_DIR = REPO / "src" / "proto"
NODE_MODULES = REPO / "build-tools" / "node_modules"
SCRIPT = REPO / "tests" / "integration" / "legacy_clients.js"
TRUSTED = "127.0.0.2"  # the source address of the original's services in these tests
UNTRUSTED = None       # the kernel's choice for 127.0.0.1: 127.0.0.1
UNKNOWN_ID = "0123456789abcdef01234567"
SKIP = "3 INVALID_ARGUMENT: Invalid userId provided"  # the original notifier's only skip

needs_kafka = pytest.mark.skipif(not BROKERS, reason="TMS_TEST_KAFKA_BROKERS is not set")


def node():
    path = shutil.which("node")
    if not path or not (NODE_MODULES / "@grpc" / "grpc-js").exists():
        pytest.skip("node or @grpc/grpc-js not installed (scripts/setup-grpc-tools)")
    return path


def legacy(*args, source=TRUSTED, timeout=90):
    """Run legacy_clients.js; its JSON output."""
    cmd = [node(), str(SCRIPT)] + (["--from", source] if source else []) + [str(a) for a in args]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                       env=dict(os.environ, NODE_PATH=str(NODE_MODULES)))
    assert r.returncode == 0, r.stdout + r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1])


def call(addr, service, method, request, source=TRUSTED, token=None):
    args = ["call", addr, PROTO_DIR, service, method, json.dumps(request)]
    return legacy(*args, *([token] if token else []), source=source)


def gateway_flow(auth_addr, task_addr, email, source=TRUSTED):
    return legacy("gateway", auth_addr, task_addr, PROTO_DIR, email, "Sup3r-S3cret-Passw0rd!",
                  source=source)


def error_of(r):
    assert "error" in r, f"expected an error, got {r}"
    return r["error"]


def metric_sum(text, name, labels=""):
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{" + labels) or (not labels and line.startswith(name + " ")):
            total += float(line.rsplit(" ", 1)[1])
    return total


def grpc_port(log_text):
    m = re.search(r"event=grpc_listen addr=\S+ port=(\d+)", log_text)
    assert m, "no grpc_listen line in the log"
    return int(m.group(1))


# -- the original's services against TMS roles, each in a process of its own ---------

def role_settings(workdir, ns, **extra):
    s = {"events.brokers": BROKERS, "events.namespace": ns, "auth.jwt_secret": JWT_SECRET,
         "mail.url": f"maildir://{workdir}/mail", "ratelimit.api_per_minute": "0",
         "ratelimit.login_per_15min": "0", "ratelimit.task_create_per_hour": "0",
         "auth.hash_per_address": "0", "http.max_connections_per_address": "0"}
    if TASKS_URL:
        s["tasks.url"] = pg_tasks_url(workdir)
    if USERS_URL:
        s["users.url"] = mongo_users_url(workdir)
    s.update(extra)
    return s


def start_roles(workdir, settings, roles=("auth", "task")):
    """`tms serve --roles auth` and `--roles task` (no gateway, no TMS notifier: the
    original's take their places), cleartext between them."""
    dep = SplitDeployment(TMS_BIN, workdir, settings, gateways=0, notifiers=0, tls=False)
    for role in ("auth", "task"):
        if role not in roles:
            dep.procs[role] = []
    try:
        dep.start(timeout=30)
    except RuntimeError as e:
        dep.stop()
        pytest.fail(f"roles did not start: {e}")
    if "task" in roles:  # the task role's auth peer (assignee checks, tokens) is up
        deadline = time.monotonic() + 30
        while 'tms_peer_up{peer="auth"} 1' not in metrics_of(dep.task):
            if time.monotonic() > deadline:
                dep.stop()
                pytest.fail("the task role never reached the auth role:\n" +
                            dep.task.log_text()[-3000:])
            time.sleep(0.1)
    return dep


def metrics_of(proc):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{proc.metrics_port}/metrics",
                                    timeout=5) as r:
            return r.read().decode()
    except OSError:
        return ""


class OriginalNotifier(threading.Thread):
    """The original notification-service's eachMessage, against TMS: consume
    notifications from the beginning in group notification-group; for
    {type: task_created, user_id} call GetUserInfo {userId} with no metadata and mail
    response.email (here: record it with task_id); "3 INVALID_ARGUMENT: Invalid userId
    provided" skips the message, any other error is rethrown and Kafka gives the
    message again (here: retried after a pause, its offset not committed). Topic and
    group carry the deployment's events.namespace, which is how TMS names them."""

    def __init__(self, ns, auth_addr):
        super().__init__(daemon=True)
        self.topic = f"{ns}.notifications"
        self.group = f"notification-group.{ns}"
        self.auth_addr = auth_addr
        self.mails, self.skipped, self.errors = [], [], []
        self.assigned = threading.Event()
        self.halt = threading.Event()

    def handle(self, value):
        data = json.loads(value)
        if data.get("type") != "task_created" or not data.get("user_id"):
            return True
        r = call(self.auth_addr, "AuthService", "GetUserInfo", {"userId": data["user_id"]})
        if "ok" in r:
            if r["ok"].get("email") and data.get("task_id"):
                self.mails.append((r["ok"]["email"], data["task_id"]))
            return True
        if r["error"]["message"] == SKIP:
            self.skipped.append(data)
            return True
        self.errors.append(r["error"])
        return False

    def run(self):
        from confluent_kafka import Consumer
        c = Consumer({"bootstrap.servers": BROKERS, "group.id": self.group,
                      "auto.offset.reset": "earliest", "enable.auto.commit": False})
        c.subscribe([self.topic], on_assign=lambda consumer, parts: self.assigned.set())
        try:
            while not self.halt.is_set():
                m = c.poll(0.2)
                if m is None or m.error():
                    continue
                while not self.handle(m.value()) and not self.halt.wait(0.5):
                    pass
                c.commit(message=m, asynchronous=False)
        finally:
            c.close()


@pytest.fixture(scope="module")
def roles(tmp_path_factory):
    if not BROKERS:
        pytest.skip("TMS_TEST_KAFKA_BROKERS is not set")
    node()
    workdir = tmp_path_factory.mktemp("migration-roles")
    ns = "mig" + secrets.token_hex(4)
    dep = start_roles(workdir, role_settings(workdir, ns, **{"grpc.trusted_peers": TRUSTED}))
    dep.ns = ns
    dep.auth_addr = f"127.0.0.1:{dep.auth.grpc_port}"
    dep.task_addr = f"127.0.0.1:{dep.task.grpc_port}"
    yield dep
    codes = dep.stop()
    assert all(c == 0 for c in codes.values()), codes


@needs_kafka
def test_original_gateway_and_notifier_against_auth_and_task_roles(roles):
    """The acceptance flow: the original gateway's calls from a trusted address, with no
    metadata, against `--roles auth` and `--roles task`; the original notifier mails
    the assignee of the created task."""
    notifier = OriginalNotifier(roles.ns, roles.auth_addr)
    notifier.start()
    try:
        email = unique_email("legacy")
        out = gateway_flow(roles.auth_addr, roles.task_addr, email)
        for step in ("register", "login", "verify", "create", "list", "get", "update", "delete",
                     "logout"):
            assert "ok" in out[step], f"{step}: {out[step]}"
        assert out["register"]["ok"]["token"] and out["login"]["ok"]["token"]
        user_id = out["verify"]["ok"]["userId"]
        assert out["verify"]["ok"]["valid"] is True and re.fullmatch(r"[0-9a-f]{24}", user_id)
        task = out["create"]["ok"]
        # as the original task-service: no caller, so no creator
        assert task["title"] == "from the original gateway" and task["status"] == "open"
        assert task["assignedTo"] == user_id and not task.get("createdBy")
        assert task["id"] in [t["id"] for t in out["list"]["ok"]["tasks"]]
        assert out["get"]["ok"]["id"] == task["id"]
        assert out["update"]["ok"]["status"] == "in progress"
        assert out["update"]["ok"]["title"] == "renamed"
        assert out["delete"]["ok"]["message"] == "Task deleted"
        assert error_of(out["get_deleted"])["code"] == 5
        assert out["logout"]["ok"]["success"] is True
        # every token died: valid false (the original gateway's verifyToken middleware
        # answers 401 on that as on an error)
        assert out["verify_after_logout"] == {"ok": {}}, out["verify_after_logout"]

        # consume -> GetUserInfo -> mail, against the auth role
        deadline = time.monotonic() + 60
        while not notifier.mails and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(1)
        assert notifier.mails == [(email, task["id"])], (notifier.mails, notifier.errors)
        assert not notifier.errors, notifier.errors
    finally:
        notifier.halt.set()
        notifier.join(timeout=15)

    # each trusted call logged with the peer, and counted where it was served
    assert re.search(r"event=grpc_trusted_call rid=\S+ op=task_create trusted_peer=127\.0\.0\.2",
                     roles.task.log_text())
    assert re.search(r"event=grpc_trusted_call rid=\S+ op=logout trusted_peer=127\.0\.0\.2",
                     roles.auth.log_text())
    assert metric_sum(metrics_of(roles.task), "tms_grpc_trusted_calls_total",
                      'op="task_create"') >= 1
    assert metric_sum(metrics_of(roles.auth), "tms_grpc_trusted_calls_total",
                      'op="user_info"') >= 1
    for p in (roles.auth, roles.task):  # one warning at start, per process
        assert p.log_text().count("event=trusted_peers ") == 1


@needs_kafka
def test_untrusted_caller_without_token_is_unauthenticated(roles):
    """The same calls from 127.0.0.1, which is not in grpc.trusted_peers: what needs no
    token works, everything else is UNAUTHENTICATED."""
    out = gateway_flow(roles.auth_addr, roles.task_addr, unique_email("untrusted"),
                       source=UNTRUSTED)
    for step in ("register", "login", "verify"):
        assert "ok" in out[step], f"{step}: {out[step]}"
    for step in ("create", "list", "get", "update", "delete", "logout"):
        assert error_of(out[step])["code"] == 16, f"{step}: {out[step]}"
    user_id = out["verify"]["ok"]["userId"]
    for method in ("GetUserInfo", "UserExists", "DeleteUser"):
        r = call(roles.auth_addr, "AuthService", method, {"userId": user_id}, source=UNTRUSTED)
        assert error_of(r)["code"] == 16, (method, r)
    for p in (roles.auth, roles.task):
        assert "trusted_peer=127.0.0.1" not in p.log_text()


@needs_kafka
def test_token_bearing_call_from_trusted_peer_follows_tms_rules(roles):
    a = call(roles.auth_addr, "AuthService", "Register",
             {"email": unique_email("a"), "password": "Sup3r-S3cret-Passw0rd!"})["ok"]["token"]
    b_email = unique_email("b")
    b = call(roles.auth_addr, "AuthService", "Register",
             {"email": b_email, "password": "Sup3r-S3cret-Passw0rd!"})["ok"]["token"]
    a_id = call(roles.auth_addr, "AuthService", "VerifyToken", {"token": a})["ok"]["userId"]
    task = call(roles.task_addr, "TaskService", "CreateTask",
                {"title": "a's", "description": "with a token"}, token=a)["ok"]
    assert task["createdBy"] == a_id
    for service, method, req, message in (
            ("TaskService", "DeleteTask", {"id": task["id"]},
             "only the creator or an admin may delete this task"),
            ("TaskService", "UpdateTask", {"id": task["id"], "status": "closed"},
             "only the creator, the assignee or an admin may update this task"),
            ("AuthService", "GetUserInfo", {"userId": a_id},
             "only the user, an admin or a TMS service may read a user's details"),
            ("AuthService", "Logout", {"userId": a_id}, "only the user or an admin may do this"),
            ("AuthService", "DeleteUser", {"userId": a_id},
             "only the user or an admin may do this")):
        addr = roles.task_addr if service == "TaskService" else roles.auth_addr
        err = error_of(call(addr, service, method, req, token=b))
        assert (err["code"], err["details"]) == (7, message), (method, err)
    bad = error_of(call(roles.task_addr, "TaskService", "ListTasks", {}, token="not-a-jwt"))
    assert bad["code"] == 16  # a bad token is not "no token"
    # the same delete without a token, from the trusted address: the original's semantics
    assert call(roles.task_addr, "TaskService", "DeleteTask", {"id": task["id"]})["ok"]


@needs_kafka
def test_original_error_texts_for_trusted_callers(roles):
    """Codes and messages of the original auth-service for the calls its gateway and
    notifier make, which they match on (the notifier skips a message on "Invalid userId
    provided" only and retries every other error forever)."""
    auth = roles.auth_addr
    email = unique_email("texts")
    call(auth, "AuthService", "Register", {"email": email, "password": "Sup3r-S3cret-Passw0rd!"})
    tok = call(auth, "AuthService", "Login",
               {"email": email, "password": "Sup3r-S3cret-Passw0rd!"})["ok"]["token"]
    uid = call(auth, "AuthService", "VerifyToken", {"token": tok})["ok"]["userId"]
    info = call(auth, "AuthService", "GetUserInfo", {"userId": uid})["ok"]
    assert info["email"] == email and info["role"] == "user"
    assert call(auth, "AuthService", "UserExists", {"userId": uid})["ok"]["exists"] is True
    assert not call(auth, "AuthService", "UserExists", {"userId": UNKNOWN_ID})["ok"].get("exists")
    for method in ("GetUserInfo", "UserExists", "Logout", "DeleteUser"):
        assert error_of(call(auth, "AuthService", method, {}))["message"] == \
            "3 INVALID_ARGUMENT: User ID is required", method
        assert error_of(call(auth, "AuthService", method, {"userId": "nope"}))["message"] == \
            SKIP, method
    for method in ("GetUserInfo", "Logout", "DeleteUser"):
        assert error_of(call(auth, "AuthService", method, {"userId": UNKNOWN_ID}))["message"] == \
            "5 NOT_FOUND: User not found", method
    # DeleteUser acts on the userId of the message
    assert "ok" in call(auth, "AuthService", "DeleteUser", {"userId": uid})
    assert error_of(call(auth, "AuthService", "GetUserInfo", {"userId": uid}))["code"] == 5


@needs_kafka
def test_each_role_serves_its_own_service_only(roles, tmp_path):
    err = error_of(call(roles.auth_addr, "TaskService", "ListTasks", {}))
    assert (err["code"], err["details"]) == (12, "this process does not serve TaskService")
    err = error_of(call(roles.task_addr, "AuthService", "GetUserInfo", {"userId": UNKNOWN_ID}))
    assert (err["code"], err["details"]) == (12, "this process does not serve AuthService")
    # without grpc.trusted_peers a role-only process keeps answering as before
    plain = start_roles(tmp_path, role_settings(tmp_path, "mig" + secrets.token_hex(4)),
                        roles=("auth",))
    try:
        err = error_of(call(f"127.0.0.1:{plain.auth.grpc_port}", "AuthService", "Register",
                            {"email": unique_email("x"), "password": "Sup3r-S3cret-Passw0rd!"}))
        assert (err["code"], err["details"]) == (12, "this process does not serve the public API")
        assert "event=trusted_peers" not in plain.auth.log_text()
    finally:
        plain.stop()


# -- one process (or the suite's split deployment) with trusted peers -----------------

def test_gateway_flow_from_trusted_peer_on_one_listener(make_server):
    """The original gateway's flow against a TMS gateway (every service on one port),
    beyond the per-address rate limit: a trusted peer speaks for all of its users."""
    node()
    srv = make_server(settings={"grpc.trusted_peers": f"10.0.0.0/8, {TRUSTED}, fd00::/8",
                                "ratelimit.api_per_minute": "5"})
    addr = f"127.0.0.1:{grpc_port(srv.log_text())}"
    out = gateway_flow(addr, addr, unique_email("onelistener"))
    for step in ("register", "login", "verify", "create", "list", "get", "update", "delete",
                 "logout"):
        assert "ok" in out[step], f"{step}: {out[step]}"
    assert not out["create"]["ok"].get("createdBy")
    # 127.0.0.1 is not trusted: its sixth call in the minute is refused
    codes = [error_of(call(addr, "TaskService", "ListTasks", {}, source=UNTRUSTED))["code"]
             for _ in range(6)]
    assert codes == [16] * 5 + [8], codes
    text = srv.get("/metrics").text
    assert metric_sum(text, "tms_grpc_trusted_calls_total", 'op="task_create"') == 1
    assert metric_sum(text, "tms_grpc_trusted_calls_total", 'op="register"') == 1


def test_trusted_peers_checked_at_start(make_server, tmp_path):
    for value, why in (("10.0.0.0/8,bogus", '"bogus" is not an IPv4 or IPv6 address'),
                       ("127.0.0.2/8", '"127.0.0.2/8" has bits set beyond its /8 prefix'),
                       ("fd00::/129", "the prefix length must be 0 to 128")):
        r = run_cli(["serve", "--set", f"data.dir={tmp_path / 'refused'}",
                     "--set", f"grpc.trusted_peers={value}"])
        assert r.returncode != 0
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("tms: config: grpc.trusted_peers: ") and \
            why in lines[0], r.stderr
    srv = make_server(settings={"grpc.trusted_peers": "192.0.2.0/24 2001:db8::/32"})
    assert srv.log_text().count("event=trusted_peers ") == (3 if SPLIT else 1)
    assert 'trusted_peers="192.0.2.0/24 2001:db8::/32"' in srv.log_text()
    plain = make_server()
    assert "event=trusted_peers" not in plain.log_text()


# -- TMS consumers of the original's events ---------------------------------------

def kafka_srv(make_server):
    if not BROKERS:
        pytest.skip("TMS_TEST_KAFKA_BROKERS is not set")
    srv = make_server(settings={"events.brokers": BROKERS,
                                "events.namespace": "mig" + secrets.token_hex(4)})
    return srv, srv.settings["events.namespace"]


def wait_log(srv, needle, timeout=45):
    deadline = time.monotonic() + timeout
    while needle not in srv.log_text():
        if time.monotonic() > deadline:
            pytest.fail(f"no {needle!r} in the log:\n" + srv.log_text()[-3000:])
        time.sleep(0.1)


def publish_original(topic, value, times=2):
    """As the original's kafkajs producers publish: a JSON value, no key, no headers;
    the same payload `times` times as separate messages."""
    from confluent_kafka import Producer
    p = Producer({"bootstrap.servers": BROKERS})
    for _ in range(times):
        p.produce(topic, value=json.dumps(value).encode())
        p.flush(10)
    assert p.flush(10) == 0


@needs_kafka
def test_tms_notifier_mails_an_original_notification_published_twice_once(make_server):
    srv, ns = kafka_srv(make_server)
    wait_log(srv, f"event=kafka_assigned topic={ns}.notifications ")
    _, user = srv.register(unique_email("orig-assignee"))
    # the original task-service's sendTaskCreatedMessage, twice (its retry, or a
    # second instance): no key, no event_id, no title
    publish_original(f"{ns}.notifications",
                     {"type": "task_created", "user_id": user["id"], "task_id": "4242"})
    # and one naming no user TMS knows: handled (dropped), not retried forever
    publish_original(f"{ns}.notifications",
                     {"type": "task_created", "user_id": UNKNOWN_ID, "task_id": "4243"}, times=1)
    mails = wait_mails(srv.maildir, user["email"], 1, task_id=4242, timeout=45, settle=3)
    assert len(mails) == 1, mails
    assert mails[0].msg["Subject"] == "New Task Assigned"
    assert "assigned task 4242 in TMS." in mails[0].text  # the id, as the original mailed
    text = srv.get("/metrics").text
    assert metric_sum(text, "tms_emails_total", 'outcome="duplicate"') >= 1
    wait_log(srv, f"reason=assignee_gone user={UNKNOWN_ID}")
    assert "event=event_malformed" not in srv.log_text()


@needs_kafka
def test_tms_task_role_unassigns_on_an_original_user_deleted(make_server):
    srv, ns = kafka_srv(make_server)
    wait_log(srv, f"event=kafka_assigned topic={ns}.user_deleted ")
    y_tok, _ = srv.register(unique_email("creator"))
    _, x = srv.register(unique_email("leaving"))
    tasks = [srv.create_task(y_tok, assignedTo=x["id"]) for _ in range(2)]
    # the original auth-service's publishUserDeleted: {user} as Prisma returned it
    # (its password hash included), no key, no event_id; published twice
    created = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.") + "123Z"
    publish_original(f"{ns}.user_deleted",
                     {"user": {"id": x["id"], "email": x["email"],
                               "password": "$2a$10$abcdefghijklmnopqrstuuQ0ZyZ0nSjzQ5p1Yqz3Y2J3bH7kz6",
                               "role": "user", "tokenVersion": 2, "createdAt": created}})
    deadline = time.monotonic() + 45
    while any(srv.task_ok(y_tok, t["id"])["assignedTo"] for t in tasks):
        if time.monotonic() > deadline:
            pytest.fail("tasks still assigned:\n" + srv.log_text()[-3000:])
        time.sleep(0.2)
    # The second publish is the same event: a duplicate, or (when both were taken at
    # once) a second unassign that finds nothing left: the tasks went once.
    time.sleep(3)
    assert srv.log_text().count(f"event=saga_unassigned user={x['id']} tasks=2") == 1
