"""The split deployment (issue 11): gateway, auth, task and notifier as separate
processes of one binary talking gRPC (scripts/tms_split.py), on real PostgreSQL,
MongoDB (wire protocol), Kafka and SMTP.

  (a) the task process killed during a mixed load: task calls answer 503 at once while
      login and /me keep working; after a restart task calls work again
  (b) two gateways and two notifiers: every assignment email is sent exactly once
  (c) the internal method without or with a wrong service credential: UNAUTHENTICATED
      and nothing done; reflection does not list it
  (d) a short grpc-timeout at the gateway travels with the hop to the task process
  (e) with mutual TLS between the roles (TMS_TEST_SPLIT_TLS=1, as scripts/test runs the
      split pass): the internal listener refuses cleartext and a client certificate that
      is missing, expired or from another CA; a good certificate still needs the service
      credential

Runs in the split pass of scripts/test (TMS_TEST_SPLIT=1), which has every service."""
import hashlib
import os
import re
import secrets
import signal
import subprocess
import threading
import time

import grpc
import pytest
import requests

from conftest import (DEFAULT_PASSWORD, JWT_SECRET, SPLIT, SPLIT_TLS, TMS_BIN, unique_email)
from tms_split import SplitDeployment

PG = os.environ.get("TMS_TEST_PG_URL", "")
MONGO = os.environ.get("TMS_TEST_MONGO_URL", "")
BROKERS = os.environ.get("TMS_TEST_KAFKA_BROKERS", "")
SMTP = os.environ.get("TMS_TEST_SMTP_URL", "")

pytestmark = [
    pytest.mark.skipif(not SPLIT, reason="runs in the split pass (TMS_TEST_SPLIT=1)"),
    pytest.mark.skipif(not (PG and MONGO and BROKERS),
                       reason="needs TMS_TEST_PG_URL, TMS_TEST_MONGO_URL, TMS_TEST_KAFKA_BROKERS"),
]

INTERNAL = "/tms.internal.Actors/Call"


def _db_name(path):
    return "tms_split_" + hashlib.sha1(str(path).encode()).hexdigest()[:16]


@pytest.fixture
def deploy(tmp_path):
    """deploy(gateways=1, notifiers=1, env=None, **settings) -> a started deployment;
    every process must exit 0 at teardown."""
    made = []

    def factory(gateways=1, notifiers=1, env=None, **settings):
        name = _db_name(tmp_path / str(len(made)))
        subprocess.run(["psql", "-qAt", "-v", "ON_ERROR_STOP=1", PG, "-c",
                        f"CREATE DATABASE {name}"], check=True, capture_output=True)
        base = PG.partition("?")[0].rsplit("/", 1)[0]
        mhost = MONGO.split("://", 1)[1].split("/", 1)[0]
        s = {"tasks.url": f"{base}/{name}", "users.url": f"mongodb://{mhost}/{name}",
             "events.brokers": BROKERS, "auth.jwt_secret": JWT_SECRET,
             "mail.url": SMTP or f"maildir://{tmp_path}/mail",
             "ratelimit.api_per_minute": "0", "ratelimit.login_per_15min": "0",
             "ratelimit.task_create_per_hour": "0", "notify.per_assigner_per_hour": "0",
             "notify.per_recipient_per_hour": "0"}
        s.update({k.replace("__", "."): str(v) for k, v in settings.items()})
        dep = SplitDeployment(TMS_BIN, tmp_path / f"dep{len(made)}", s, gateways=gateways,
                              notifiers=notifiers, env=env, tls=SPLIT_TLS)
        made.append((dep, name))
        try:
            dep.start()
        except RuntimeError as e:
            pytest.fail(str(e))
        assert dep.wait_subscribed(45), "Kafka consumers never got partitions"
        assert dep.wait_ready(30), "a gateway's /readyz never turned 200"
        return dep

    yield factory
    errors = []
    for dep, name in made:
        codes = dep.stop()
        bad = {k: v for k, v in codes.items() if v != 0}
        if bad:
            errors.append(f"unclean exit {bad}: " + "".join(
                p.log_text()[-1500:] for p in dep.all() if p.name in bad))
        subprocess.run(["psql", "-qAt", PG, "-c", f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"],
                       capture_output=True)
    assert not errors, "\n".join(errors)


def api(proc, method, path, token=None, **kw):
    h = {"Authorization": f"Bearer {token}"} if token else {}
    kw.setdefault("timeout", 10)
    return requests.request(method, f"http://127.0.0.1:{proc.port}{path}", headers=h, **kw)


def register(gw, email=None):
    email = email or unique_email()
    r = api(gw, "POST", "/api/auth/register", json={"email": email, "password": DEFAULT_PASSWORD})
    assert r.status_code == 201, r.text
    return r.json()["token"], r.json()["user"], email


# -- protobuf by hand for the internal method (its .proto is not public) -----------

def _varint(n):
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _field(num, value):
    if isinstance(value, bool) or isinstance(value, int):
        return _varint(num << 3) + _varint(int(value))
    data = value.encode() if isinstance(value, str) else value
    return _varint(num << 3 | 2) + _varint(len(data)) + data


def actor_call_create(user_id, title):
    """ActorCall{op=TASK_CREATE, stage=EXECUTE, principal{authenticated, user_id, role},
    present=TITLE|DESCRIPTION, title, description}."""
    principal = _field(1, True) + _field(2, user_id) + _field(3, "user")
    return (_field(1, 9) + _field(2, 2) + _field(3, "rid-" + secrets.token_hex(4)) +
            _field(5, principal) + _field(6, 8 | 16) + _field(12, title) +
            _field(13, "made through the internal method"))


def peer_credentials(dep, cert=None):
    """grpcio credentials of a peer of dep's mutual TLS: the CA, and cert (cert, key)
    or the gateway's; None without TLS."""
    if not dep.tls:
        return None
    cert = cert or dep.tls["gateway"]
    with open(dep.tls["ca"], "rb") as ca, open(cert[0], "rb") as c, open(cert[1], "rb") as k:
        return grpc.ssl_channel_credentials(root_certificates=ca.read(), private_key=k.read(),
                                            certificate_chain=c.read())


def internal_call(port, payload, token=None, timeout=5, creds=None):
    """The internal method on port: cleartext, or TLS with creds (peer_credentials)."""
    md = [("x-tms-service-token", token)] if token is not None else []
    target = f"127.0.0.1:{port}"
    with (grpc.secure_channel(target, creds) if creds else grpc.insecure_channel(target)) as ch:
        fn = ch.unary_unary(INTERNAL, request_serializer=None, response_deserializer=None)
        return fn(payload, metadata=md, timeout=timeout)


def titles(gw, token):
    r = api(gw, "GET", "/api/task?limit=200", token)
    assert r.status_code == 200, r.text
    return [t["title"] for t in r.json()["tasks"]]


# -- (a) the task process dies under load -------------------------------------------

def test_task_process_killed_during_load_503_fast_auth_keeps_working(deploy):
    dep = deploy()
    gw = dep.gateway
    token, user, email = register(gw)
    r = api(gw, "POST", "/api/task", token, json={"title": "t", "description": "d"})
    assert r.status_code == 201, r.text
    task_id = r.json()["id"]

    samples = []  # (t, kind, status, seconds)
    stop = threading.Event()

    def load(kind):
        s = requests.Session()
        h = {"Authorization": f"Bearer {token}"}
        while not stop.is_set():
            t0 = time.monotonic()
            try:
                if kind == "task":
                    st = s.get(f"http://127.0.0.1:{gw.port}/api/task/{task_id}", headers=h,
                               timeout=10).status_code
                elif kind == "me":
                    st = s.get(f"http://127.0.0.1:{gw.port}/api/auth/me", headers=h,
                               timeout=10).status_code
                else:
                    st = s.post(f"http://127.0.0.1:{gw.port}/api/task", headers=h, timeout=10,
                                json={"title": "load", "description": "d"}).status_code
            except requests.RequestException:
                st = -1
            samples.append((t0, kind, st, time.monotonic() - t0))
            time.sleep(0.02)

    threads = [threading.Thread(target=load, args=(k,)) for k in ("task", "me", "create")]
    for t in threads:
        t.start()
    try:
        time.sleep(1.0)
        killed_at = time.monotonic()
        os.kill(dep.task.proc.pid, signal.SIGKILL)
        dep.task.proc.wait(timeout=10)
        time.sleep(3.0)
        # sequential probes while it is down
        down = []
        for _ in range(5):
            t0 = time.monotonic()
            r = api(gw, "GET", f"/api/task/{task_id}", token)
            down.append((r.status_code, time.monotonic() - t0))
            assert r.json()["error"]["code"] == "UNAVAILABLE", r.text
        login_at = time.monotonic()
        login = api(gw, "POST", "/api/auth/login", json={"email": email,
                                                        "password": DEFAULT_PASSWORD})
        assert login.status_code == 200, login.text
        token2 = login.json()["token"]
        assert api(gw, "GET", "/api/auth/me", token2).status_code == 200
        ready = api(gw, "GET", "/readyz")
        assert ready.status_code == 503 and ready.json()["checks"]["peer_task"] == "unavailable", \
            ready.text
        assert ready.json()["checks"]["peer_auth"] == "ok", ready.text
        token = token2  # the load threads' token died with the login: new calls use it
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert all(st == 503 for st, _ in down), down
    worst = max(d for _, d in down)
    print(f"\ntask down: 503 in max {worst * 1000:.1f} ms over {len(down)} sequential calls")
    assert worst < 1.0, down
    # from half a second after the kill to the login (which ends the load's token)
    after = [s for s in samples if killed_at + 0.5 < s[0] < login_at - 0.05]
    task_after = [s for s in after if s[1] in ("task", "create")]
    assert task_after and all(s[2] == 503 for s in task_after), task_after[:10]
    assert max(s[3] for s in task_after) < 1.0, max(s[3] for s in task_after)
    me_after = [s for s in after if s[1] == "me"]
    assert me_after and all(s[2] == 200 for s in me_after), me_after[:10]
    print(f"during the outage: {len(task_after)} task calls all 503 (max "
          f"{max(s[3] for s in task_after) * 1000:.1f} ms), {len(me_after)} /me calls all 200")

    dep.task.start()
    deadline = time.monotonic() + 20
    while True:
        r = api(gw, "GET", f"/api/task/{task_id}", token)
        if r.status_code == 200 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert r.status_code == 200, r.text
    r = api(gw, "POST", "/api/task", token, json={"title": "after", "description": "d"})
    assert r.status_code == 201, r.text


# -- (b) two gateways, two notifiers: every email once --------------------------------

def test_two_gateways_two_notifiers_every_email_once(deploy):
    if not SMTP:
        pytest.skip("TMS_TEST_SMTP_URL not set")
    from test_smtp import Mailbox, smtp_api
    box = Mailbox(smtp_api())
    dep = deploy(gateways=2, notifiers=2)
    g1, g2 = dep.gateways
    token, _, _ = register(g1)
    assignees = []
    for i in range(12):
        _, user, email = register(g2 if i % 2 else g1)
        assignees.append((user["id"], email))
    created = []
    for i, (uid, email) in enumerate(assignees):
        gw = g1 if i % 2 else g2
        r = api(gw, "POST", "/api/task", token,
                json={"title": f"split {i}", "description": "d", "assignedTo": uid})
        assert r.status_code == 201, r.text
        created.append((r.json()["id"], email))
        # a reassignment through the other gateway: a second event, a second email
        other_uid, other_email = assignees[(i + 1) % len(assignees)]
        r = api(g2 if gw is g1 else g1, "PATCH", f"/api/task/{r.json()['id']}", token,
                json={"assignedTo": other_uid})
        assert r.status_code == 200, r.text
    deadline = time.monotonic() + 30
    want = {email: 2 for _, email in assignees}  # one create + one reassignment each
    while time.monotonic() < deadline:
        got = {e: len(box.to(e)) for e in want}
        if got == want:
            break
        time.sleep(0.3)
    time.sleep(2.0)  # a duplicate would come within the relay's retry period
    got = {e: len(box.to(e)) for e in want}
    assert got == want, {e: (got[e], want[e]) for e in want if got[e] != want[e]}
    ids = [m["MessageID"] for e in want for m in box.to(e)]
    assert len(ids) == len(set(ids)), "a Message-ID twice"
    # both notifiers took part (three partitions shared by two consumers)
    sent = [len(re.findall(r"event=email_sent", n.log_text())) for n in dep.notifiers]
    assert sum(sent) >= 2 * len(assignees) and all(sent), sent


# -- (c) the internal method needs the service credential ------------------------------

def test_internal_method_needs_service_credential(deploy):
    dep = deploy()
    gw = dep.gateway
    token, user, _ = register(gw)
    peer = peer_credentials(dep)  # the roles' internal listeners speak TLS when set
    for port, cred in [(dep.task.grpc_port, None), (dep.task.grpc_port, "wrong-" + dep.secret),
                       (dep.task.grpc_port, ""), (dep.auth.grpc_port, None),
                       (gw.grpc_port, None), (gw.grpc_port, "x" * 48)]:
        with pytest.raises(grpc.RpcError) as e:
            internal_call(port, actor_call_create(user["id"], "forged"), cred,
                          creds=None if port == gw.grpc_port else peer)
        assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED, (port, cred, e.value)
    assert "forged" not in titles(gw, token)
    # the same message with the credential is a valid call (so the refusals above were
    # about the credential alone)
    out = internal_call(dep.task.grpc_port, actor_call_create(user["id"], "trusted"), dep.secret,
                        creds=peer)
    assert b"trusted" in out
    assert titles(gw, token) == ["trusted"]
    # a gateway runs no task actor: even with the credential it performs nothing itself
    with pytest.raises(grpc.RpcError) as e:
        internal_call(gw.grpc_port, actor_call_create(user["id"], "via-gw"), dep.secret)
    assert e.value.code() == grpc.StatusCode.UNIMPLEMENTED
    # reflection on the public listener does not advertise the internal service
    with grpc.insecure_channel(f"127.0.0.1:{gw.grpc_port}") as ch:
        fn = ch.stream_stream("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
                              request_serializer=None, response_deserializer=None)
        answers = b"".join(fn(iter([_field(7, "")]), timeout=5))
    assert b"TaskService" in answers and b"tms.internal" not in answers, answers


# -- (d) the deadline travels with the hop -------------------------------------------

def test_grpc_timeout_at_gateway_travels_to_task_process(deploy):
    if "asan" not in TMS_BIN:
        pytest.skip("TMS_FAULT_TASK_DELAY_MS is compiled out of this build")
    dep = deploy(env={"TMS_FAULT_TASK_DELAY_MS": "800"})
    gw = dep.gateway
    token, user, _ = register(gw)
    create = _field(1, "expired") + _field(2, "deadline passed")
    with grpc.insecure_channel(f"127.0.0.1:{gw.grpc_port}") as ch:
        fn = ch.unary_unary("/TaskService/CreateTask", request_serializer=None,
                            response_deserializer=None)
        t0 = time.monotonic()
        with pytest.raises(grpc.RpcError) as e:
            fn(create, metadata=[("authorization", f"Bearer {token}")], timeout=0.3)
        took = time.monotonic() - t0
    assert e.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert took < 1.0, took
    # The task process got the call with the gateway's remaining budget (grpc-timeout),
    # not its own 30 s default: it ended that call within the 300 ms, and never wrote it.
    deadline = time.monotonic() + 5
    line = None
    while time.monotonic() < deadline and not line:
        m = re.findall(r'method="/tms.internal.Actors/Call" code=(\w+) dur_ms=([\d.]+)',
                       dep.task.log_text())
        line = [x for x in m if x[0] in ("DEADLINE_EXCEEDED", "CANCELLED")]
        time.sleep(0.1)
    assert line, dep.task.log_text()[-3000:]
    assert float(line[0][1]) < 400, line
    time.sleep(1.2)  # the actor's delay has passed: a write would have happened by now
    assert "expired" not in titles(gw, token)


# -- (e) mutual TLS between the roles --------------------------------------------------

def _signed_by(ca_pem, ca_key, directory, name, days):
    """A client certificate for name signed by the CA in ca_pem/ca_key, valid from now +
    days[0] to now + days[1] days (cryptography); returns (cert path, key path)."""
    import datetime
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID
    ca_cert = x509.load_pem_x509_certificate(open(ca_pem, "rb").read())
    signer = serialization.load_pem_private_key(open(ca_key, "rb").read(), None)
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(ca_cert.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now + datetime.timedelta(days=days[0]))
            .not_valid_after(now + datetime.timedelta(days=days[1]))
            .sign(signer, hashes.SHA256()))
    cp, kp = directory / f"{name}.pem", directory / f"{name}.key"
    cp.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    kp.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                     serialization.NoEncryption()))
    return str(cp), str(kp)


@pytest.mark.skipif(not SPLIT_TLS, reason="mutual TLS between roles (TMS_TEST_SPLIT_TLS=1)")
def test_mutual_tls_between_roles(deploy, tmp_path):
    from tms_split import make_tls
    dep = deploy()
    gw = dep.gateway
    token, user, _ = register(gw)
    # The hops the whole suite made went over TLS: the gateway's peers are up, and
    # each role counted handshakes with its client certificate.
    assert api(gw, "GET", "/api/auth/me", token).status_code == 200
    text = requests.get(f"http://127.0.0.1:{dep.task.metrics_port}/metrics", timeout=10).text
    assert re.search(r'tms_tls_handshakes_total\{context="grpc",version="TLSv1.3",'
                     r'resumed="false"\} [1-9]', text), text[-2000:]
    other = make_tls(tmp_path / "other-ca", names=("intruder",))
    ca_key = os.path.join(os.path.dirname(dep.tls["ca"]), "ca.key")
    expired = _signed_by(dep.tls["ca"], ca_key, tmp_path, "expired-peer", (-10, -1))
    payload = actor_call_create(user["id"], "intruded")
    with open(dep.tls["ca"], "rb") as f:
        ca = f.read()
    refused = {
        "cleartext": None,
        "no certificate": grpc.ssl_channel_credentials(root_certificates=ca),
        "expired": peer_credentials(dep, expired),
        "other CA": peer_credentials(dep, other["intruder"]),
    }
    for port in (dep.task.grpc_port, dep.auth.grpc_port):
        for why, creds in refused.items():
            with pytest.raises(grpc.RpcError) as e:
                internal_call(port, payload, dep.secret, creds=creds,
                              timeout=5) if creds else internal_call(port, payload, dep.secret)
            assert e.value.code() == grpc.StatusCode.UNAVAILABLE, (port, why, e.value)
    # A certificate from the CA is not enough: the service credential is still checked.
    with pytest.raises(grpc.RpcError) as e:
        internal_call(dep.task.grpc_port, payload, None, creds=peer_credentials(dep))
    assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "intruded" not in titles(gw, token)
    for p in (dep.task, dep.auth):
        text = requests.get(f"http://127.0.0.1:{p.metrics_port}/metrics", timeout=10).text
        m = re.search(r'tms_tls_handshake_failures_total\{context="grpc",reason="error"\} (\d+)',
                      text)
        assert m and int(m.group(1)) >= 3, (p.name, text[-1500:])
