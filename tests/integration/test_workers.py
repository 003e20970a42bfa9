"""server.workers = N: N loops on one port (SO_REUSEPORT), one process.

Which worker serves a keep-alive connection is found by one request on it between two
reads of /metrics (on metrics.addr, whose requests are not counted per worker):
tms_worker_http_requests_total{worker="i"} of the serving worker rises by exactly one
(the tests send nothing else meanwhile)."""
import http.client
import json
import re
import secrets
import statistics
import time

import pytest
import requests

from conftest import (DEFAULT_PASSWORD, SPLIT, TASKS_URL, accepted_raw_conns, run_cli,
                      sigterm_with_logins_in_flight, unique_email, wait_mails)

# Several loops run in a process that has every role (config.c refuses workers > 1 in a
# split deployment, whose roles scale out as more processes instead).
pytestmark = pytest.mark.skipif(SPLIT, reason="server.workers > 1 needs every role in one process")

REQ_RE = re.compile(r'^tms_worker_http_requests_total\{worker="(\d+)"\} (\d+)$', re.M)


def start(make_server, workers=2, **settings):
    srv = make_server(settings={"server__workers": workers, **settings})
    # /healthz answers once worker 0 listens; "listening" is logged once all have started
    deadline = time.monotonic() + 20
    while f"workers={workers} " not in srv.log_text():
        assert time.monotonic() < deadline, srv.log_text()[-2000:]
        time.sleep(0.05)
    # each worker's dependencies answer (a PostgreSQL pool per worker connects after
    # start): 16 new connections in a row get 200 from /readyz
    ok = 0
    while ok < 16:
        r = requests.get(srv.url("/readyz"), headers={"Connection": "close"}, timeout=10)
        ok = ok + 1 if r.status_code == 200 else 0
        assert time.monotonic() < deadline, r.text
        if not ok:
            time.sleep(0.05)
    return srv


def per_worker(text):
    return {int(w): int(n) for w, n in REQ_RE.findall(text)}


class Conn:
    """One keep-alive connection, and the worker that serves it."""

    def __init__(self, srv):
        self.c = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=15)
        first = per_worker(srv.get("/metrics").text)
        status, body = self.get("/healthz")
        assert status == 200, (status, body)
        second = per_worker(srv.get("/metrics").text)
        rose = [w for w in second if second[w] - first.get(w, 0) == 1]
        assert len(rose) == 1, (first, second)
        self.worker = rose[0]

    def request(self, method, path, token=None, body=None):
        headers = {}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        if body is not None:
            headers["Content-Type"] = "application/json"
            body = json.dumps(body)
        self.c.request(method, path, body=body, headers=headers)
        r = self.c.getresponse()
        return r.status, r.read().decode()

    def get(self, path, token=None):
        return self.request("GET", path, token)

    def close(self):
        self.c.close()


def conns_on_each_worker(srv, workers=2, tries=64):
    """A keep-alive connection served by each worker (opening more until each has one)."""
    found, extra = {}, []
    for _ in range(tries):
        c = Conn(srv)
        if c.worker in found:
            extra.append(c)
        else:
            found[c.worker] = c
        if len(found) == workers:
            break
    for c in extra:
        c.close()
    assert sorted(found) == list(range(workers)), f"workers seen: {sorted(found)}"
    return [found[w] for w in range(workers)]


def test_new_connections_are_spread_over_every_worker(make_server):
    srv = start(make_server, workers=2)
    before = per_worker(srv.get("/metrics").text)
    for i in range(40):  # a new connection (new source port) each time
        path = ("/healthz", "/readyz")[i % 2]
        r = requests.get(srv.url(path), headers={"Connection": "close"}, timeout=10)
        assert r.status_code == 200, (path, r.status_code, r.text)
    after = per_worker(srv.get("/metrics").text)
    served = {w: after[w] - before.get(w, 0) for w in after}
    assert set(served) == {0, 1}, served
    assert all(n > 0 for n in served.values()), f"requests per worker: {served}"
    assert sum(served.values()) >= 40
    # one /metrics for the process: the per-worker gauges carry the worker label
    text = srv.get("/metrics").text
    for w in (0, 1):
        assert f'tms_loop_lag_seconds{{worker="{w}"}}' in text
        assert f'tms_mailbox_depth{{actor="auth",worker="{w}"}}' in text
    srv.stop_ok()


def test_readyz_and_healthz_on_each_worker(make_server):
    srv = start(make_server, workers=2)
    for c in conns_on_each_worker(srv):
        for path in ("/healthz", "/readyz"):
            status, body = c.get(path)
            assert status == 200, (c.worker, path, status, body)
        c.close()
    srv.stop_ok()


def test_a_write_on_one_worker_is_read_on_the_other_at_once(make_server):
    """Each worker reads tasks on its own loop (issue 19): a write answered by one
    worker is seen by the other's very next GET and list."""
    srv = start(make_server, workers=2)
    token, _ = srv.register(unique_email("w"))
    conns = conns_on_each_worker(srv)
    for i in range(30):
        w, r = conns[i % 2], conns[(i + 1) % 2]
        status, body = w.request("POST", "/api/task", token,
                                 {"title": f"t{i}", "description": "d"})
        assert status == 201, body
        task = json.loads(body)
        status, body = r.get(f"/api/task/{task['id']}", token)
        assert status == 200 and json.loads(body) == task, (r.worker, status, body)
        status, body = w.request("PATCH", f"/api/task/{task['id']}", token, {"status": "closed"})
        assert status == 200, body
        status, body = r.get(f"/api/task/{task['id']}", token)
        assert status == 200 and json.loads(body)["version"] == 2, (r.worker, body)
        status, body = r.get("/api/task?status=closed&limit=200", token)
        assert task["id"] in [t["id"] for t in json.loads(body)["tasks"]], body
    for c in conns:
        c.close()
    srv.stop_ok()


def test_logout_on_one_worker_revokes_on_the_other_at_once(make_server):
    srv = start(make_server, workers=2)
    email = unique_email("w")
    token, _ = srv.register(email)
    a, b = conns_on_each_worker(srv)
    # both workers have verified the token (and cached the user) ...
    assert a.get("/api/auth/me", token)[0] == 200
    assert b.get("/api/auth/me", token)[0] == 200
    # ... logout on worker 0; worker 1 refuses the token on the very next request
    status, body = a.request("POST", "/api/auth/logout", token)
    assert status == 200, body
    status, body = b.get("/api/auth/me", token)
    assert status == 401, f"worker {b.worker} still accepts a logged-out token: {body}"
    assert "revoked" in body
    # a login on worker 1 kills the token a login on worker 0 gave
    t1 = json.loads(a.request("POST", "/api/auth/login",
                              body={"email": email, "password": DEFAULT_PASSWORD})[1])["token"]
    assert a.get("/api/auth/me", t1)[0] == 200
    assert b.get("/api/auth/me", t1)[0] == 200
    status, body = b.request("POST", "/api/auth/login",
                             body={"email": email, "password": DEFAULT_PASSWORD})
    assert status == 200, body
    assert a.get("/api/auth/me", t1)[0] == 401
    # a deleted user is gone on both
    t2 = json.loads(body)["token"]
    assert a.get("/api/auth/me", t2)[0] == 200
    uid = json.loads(b.get("/api/auth/me", t2)[1])["id"]
    assert b.request("DELETE", f"/api/auth/delete/{uid}", t2)[0] == 200
    assert a.get("/api/auth/me", t2)[0] == 401
    a.close()
    b.close()
    srv.stop_ok()


def test_role_change_by_another_writer_within_user_cache_ms(make_server):
    """`tms user set-role` writes the database behind the server's back: every worker
    sees it within auth.user_cache_ms (the same bound as between two instances)."""
    cache_ms = 400
    srv = start(make_server, workers=2, auth__user_cache_ms=cache_ms)
    email = unique_email("role")
    token, _ = srv.register(email)
    conns = conns_on_each_worker(srv)
    for c in conns:
        assert json.loads(c.get("/api/auth/me", token)[1])["role"] == "user"
    p = srv.set_role(email, "admin")
    assert p.returncode == 0, p.stderr
    t0 = time.monotonic()
    pending = {c.worker: c for c in conns}
    while pending:
        for w, c in list(pending.items()):
            if json.loads(c.get("/api/auth/me", token)[1])["role"] == "admin":
                del pending[w]
        assert time.monotonic() - t0 < cache_ms / 1000 + 1.0, f"still 'user' on {list(pending)}"
        time.sleep(0.02)
    for c in conns:
        c.close()
    srv.stop_ok()


def test_each_assignment_gives_exactly_one_email(make_server):
    srv = start(make_server, workers=2)
    creator, _ = srv.register()
    email = unique_email("assignee")
    _, assignee = srv.register(email)
    n = 24
    ids = []
    for i in range(n):  # new connections: both workers write to the one outbox
        r = requests.post(srv.url("/api/task"), timeout=10,
                          headers={"Authorization": f"Bearer {creator}", "Connection": "close"},
                          json={"title": f"w{i}", "description": "d", "assignedTo": assignee["id"]})
        assert r.status_code == 201, r.text
        ids.append(r.json()["id"])
    served = per_worker(srv.get("/metrics").text)
    assert all(served.get(w, 0) > 0 for w in (0, 1)), served
    got = wait_mails(srv.maildir, email, n, timeout=15, settle=2.5)  # > the 1 s relay poll
    mentioned = sorted(t for m in got for t in ids if m.mentions_task(t))
    assert len(got) == n, f"{len(got)} mails for {n} assignments"
    assert mentioned == sorted(ids)
    srv.stop_ok()


def test_writes_on_another_worker_are_mailed_without_waiting_for_the_poll(make_server):
    """Worker 1's writes wake worker 0's relay at once (uv_async), not at its 1 s poll."""
    srv = start(make_server, workers=2)
    creator, _ = srv.register()
    email = unique_email("fast")
    _, assignee = srv.register(email)
    conns = conns_on_each_worker(srv)
    other = conns[1]
    delays = []
    for i in range(8):
        status, body = other.request("POST", "/api/task", creator,
                                     {"title": f"fast {i}", "description": "d",
                                      "assignedTo": assignee["id"]})
        assert status == 201, body
        t0 = time.monotonic()
        got = wait_mails(srv.maildir, email, i + 1, timeout=5)
        assert len(got) == i + 1
        delays.append(time.monotonic() - t0)
    for c in conns:
        c.close()
    assert statistics.median(delays) < 0.3, f"mail delays {delays}"
    srv.stop_ok()


def test_rate_limits_hold_for_the_process(make_server):
    """The per-address API limit is shared by the workers, not N times looser."""
    srv = start(make_server, workers=2, ratelimit__api_per_minute=12)
    statuses = []
    for _ in range(30):
        r = requests.get(srv.url("/api/task/1"), headers={"Connection": "close"}, timeout=10)
        statuses.append(r.status_code)
    served = per_worker(srv.get("/metrics").text)
    assert all(served.get(w, 0) > 0 for w in (0, 1)), served
    assert statuses.count(429) == 30 - 12, statuses
    srv.stop_ok()


def test_sigterm_answers_in_flight_requests_on_every_worker(make_server):
    srv = start(make_server, workers=2)
    conns = conns_on_each_worker(srv)
    port = srv.port
    emails = [unique_email("drain") for _ in range(8)]
    for e in emails:
        srv.register(e)
    socks, readers = accepted_raw_conns(port, len(emails))
    # a slow login (argon2id) in flight on each identified worker, and on the others
    for c, e in zip(conns, emails[:2]):
        c.c.request("POST", "/api/auth/login", body=json.dumps(
            {"email": e, "password": DEFAULT_PASSWORD}), headers={"Content-Type": "application/json"})
    results, t0 = sigterm_with_logins_in_flight(srv, socks, readers, emails)
    for c in conns:
        resp = c.c.getresponse()
        results.append(resp.status)
        resp.read()
        c.close()
    for s in socks:
        s.close()
    assert results == [200] * (len(emails) + 2), f"in-flight logins during SIGTERM: {results}"
    rc = srv.wait_exit(10 - (time.monotonic() - t0))
    assert rc == 0, f"exit code {rc}; stderr:\n{srv.log_text()[-2000:]}"
    assert time.monotonic() - t0 < 10
    log = srv.log_text()
    assert "event=stopped worker=0 clean=1" in log and "event=stopped worker=1 clean=1" in log


@pytest.mark.parametrize("value", ["0", "65", "-1", "two"])
def test_workers_out_of_range_refused(tmp_path, value):
    p = run_cli(["serve", "--set", f"server.workers={value}", "--set", f"data.dir={tmp_path}",
                 "--set", "http.addr=127.0.0.1:0", "--set", "grpc.addr=127.0.0.1:0"])
    lines = [l for l in p.stderr.splitlines() if l.strip()]
    assert p.returncode == 2, p.stderr
    assert len(lines) == 1 and "server.workers" in lines[0], lines
    if value in ("0", "65"):
        assert "1..64" in lines[0], lines


def test_a_worker_that_cannot_start_stops_all(tmp_path):
    """Worker 2 of 3 fails late in its start (TMS_FAULT_WORKER_START, test-only, after
    its listeners are up): every worker stops, one line says which, exit 1, no leak."""
    import os
    import socket
    import subprocess
    from conftest import TMS_BIN, free_port, tms_env
    port = free_port()
    proc = subprocess.Popen([TMS_BIN, "serve", "--set", "server.workers=3",
                             "--set", f"http.addr=127.0.0.1:{port}",
                             "--set", "grpc.addr=127.0.0.1:0", "--set", f"data.dir={tmp_path}",
                             "--set", "auth.jwt_secret=" + secrets.token_hex(20)],
                            stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
                            env=tms_env({"TMS_FAULT_WORKER_START": "2"}))
    try:
        _, err = proc.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail("tms did not stop after a worker failed to start")
    if "fault: worker 2" not in err:
        pytest.skip("TMS_FAULT_WORKER_START is compiled out of this build")
    assert proc.returncode == 1, err
    assert "worker 2 of 3 failed to start; stopping all" in err, err
    assert "LeakSanitizer" not in err and "AddressSanitizer" not in err, err
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()


def test_grpc_on_every_worker(make_server, tmp_path):
    """gRPC listens on every worker too: many separate connections all answer, and a
    logout over one of them revokes the token on all the others at once."""
    grpc = pytest.importorskip("grpc")
    protoc = pytest.importorskip("grpc_tools.protoc")
    import importlib
    import sys
    from conftest import REPO
    for name in ("auth.proto", "health.proto"):
        assert protoc.main(["protoc", f"-I{REPO / 'src' / 'proto'}", f"--python_out={tmp_path}",
                            f"--grpc_python_out={tmp_path}",
                            str(REPO / "src" / "proto" / name)]) == 0
    sys.path.insert(0, str(tmp_path))
    try:
        auth_pb2 = importlib.import_module("auth_pb2")
        auth_grpc = importlib.import_module("auth_pb2_grpc")
        health_pb2 = importlib.import_module("health_pb2")
        health_grpc = importlib.import_module("health_pb2_grpc")
    finally:
        sys.path.remove(str(tmp_path))
    srv = start(make_server, workers=2)
    port = int(re.search(r"event=listening .* grpc_port=(\d+)", srv.log_text()).group(1))
    token, _ = srv.register()
    channels = [grpc.insecure_channel(f"127.0.0.1:{port}",
                                      options=[("grpc.use_local_subchannel_pool", 1)])
                for _ in range(16)]  # one TCP connection each
    try:
        for ch in channels:
            h = health_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=10)
            assert h.status == health_pb2.HealthCheckResponse.SERVING
            v = auth_grpc.AuthServiceStub(ch).VerifyToken(
                auth_pb2.VerifyTokenRequest(token=token), timeout=10)
            assert v.valid
        auth_grpc.AuthServiceStub(channels[0]).Logout(
            auth_pb2.LogoutRequest(), metadata=[("authorization", f"Bearer {token}")], timeout=10)
        for ch in channels:
            v = auth_grpc.AuthServiceStub(ch).VerifyToken(
                auth_pb2.VerifyTokenRequest(token=token), timeout=10)
            assert not v.valid
    finally:
        for ch in channels:
            ch.close()
    srv.stop_ok()


@pytest.mark.skipif(not TASKS_URL, reason="tasks on PostgreSQL only (TMS_TEST_TASKS_URL)")
def test_postgres_pool_per_worker(make_server):
    """Each worker has its own pool of tasks.pool_size connections on its own loop."""
    srv = start(make_server, workers=2, tasks__pool_size=3)
    deadline = time.monotonic() + 15
    while True:
        text = srv.get("/metrics").text
        up = {w: float(v) for w, v in
              re.findall(r'^tms_pg_connections_up\{worker="(\d+)"\} (\S+)$', text, re.M)}
        if up == {"0": 3.0, "1": 3.0}:
            break
        assert time.monotonic() < deadline, f"connections up per worker: {up}"
        time.sleep(0.1)
    token, _ = srv.register()
    for c in conns_on_each_worker(srv):  # both pools serve
        status, body = c.request("POST", "/api/task", token, {"title": "pg", "description": "d"})
        assert status == 201, body
        c.close()
    srv.stop_ok()


KAFKA = __import__("os").environ.get("TMS_TEST_KAFKA_BROKERS", "")


@pytest.mark.skipif(not KAFKA, reason="TMS_TEST_KAFKA_BROKERS is not set")
def test_kafka_one_client_and_one_email_per_assignment(make_server):
    """With Kafka, only worker 0 produces and consumes: each assignment made on either
    worker is published once and mailed once; /readyz of every worker asks Kafka."""
    import secrets
    srv = start(make_server, workers=2, events__brokers=KAFKA,
                events__client_id="tms-it-w-" + secrets.token_hex(3))
    deadline = time.monotonic() + 30
    assigned = "event=kafka_assigned topic=" + srv.kafka_topic("notifications") + " "
    while assigned not in srv.log_text():
        assert time.monotonic() < deadline, srv.log_text()[-3000:]
        time.sleep(0.1)
    creator, _ = srv.register()
    email = unique_email("kafka")
    _, assignee = srv.register(email)
    n = 12
    for i in range(n):
        r = requests.post(srv.url("/api/task"), timeout=10,
                          headers={"Authorization": f"Bearer {creator}", "Connection": "close"},
                          json={"title": f"k{i}", "description": "d", "assignedTo": assignee["id"]})
        assert r.status_code == 201, r.text
    served = per_worker(srv.get("/metrics").text)
    assert all(served.get(w, 0) > 0 for w in (0, 1)), served
    got = wait_mails(srv.maildir, email, n, timeout=30, settle=3)
    assert len(got) == n, f"{len(got)} mails for {n} assignments"
    for c in conns_on_each_worker(srv):
        status, body = c.get("/readyz")
        assert status == 200 and '"events"' in body, body
        c.close()
    srv.stop_ok()
