"""One instance per address and per data dir (issue 17, item 9). SO_REUSEPORT let a
second `tms serve` bind the port of a running one: the kernel then split new
connections between the two, and both ran relays over one SQLite file. Only a
process's own workers may share a port now, and a second instance on the same address
or data dir stops with one line and status 1, leaving the first alone."""
import os
import re
import signal
import subprocess
import time

import pytest
import requests

from conftest import JWT_SECRET, SPLIT, TASKS_URL, TMS_BIN, free_port, tms_env

pytestmark = pytest.mark.skipif(SPLIT, reason="starts single processes next to the test server")


def second_instance(data_dir, http_port=None, grpc_port=None, metrics_port=None, timeout=15):
    """Run another `tms serve`, expected to refuse; returns (exit code or None, stderr lines).
    None: it was still running after timeout (then it is killed)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    cmd = [TMS_BIN, "serve",
           "--set", f"http.addr=127.0.0.1:{http_port or free_port()}",
           "--set", f"grpc.addr=127.0.0.1:{grpc_port or 0}",
           "--set", f"metrics.addr=127.0.0.1:{metrics_port or free_port()}",
           "--set", f"data.dir={data_dir}",
           "--set", f"auth.jwt_secret={JWT_SECRET}"]
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         stdin=subprocess.DEVNULL, env=tms_env())
    try:
        _, err = p.communicate(timeout=timeout)
        rc = p.returncode
    except subprocess.TimeoutExpired:
        p.kill()
        _, err = p.communicate()
        rc = None
    return rc, [l for l in err.splitlines() if l.strip()]


def grpc_port_of(srv):
    m = re.search(r"event=grpc_listen addr=\S+ port=(\d+)", srv.log_text())
    assert m, "no grpc_listen line in the server log"
    return int(m.group(1))


def served_by_first(srv, n=40):
    """n new connections to srv's port: how many the first instance logged."""
    before = srv.log_text().count("route=/healthz")
    for _ in range(n):
        r = requests.get(srv.url("/healthz"), headers={"Connection": "close"}, timeout=5)
        assert r.status_code == 200
    time.sleep(0.2)
    return srv.log_text().count("route=/healthz") - before


def test_second_instance_on_the_same_http_addr_exits(make_server, tmp_path):
    first = make_server(settings={"server.workers": 2})
    rc, lines = second_instance(tmp_path / "other", http_port=first.port)
    assert rc == 1, (rc, lines)
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"tms: http.addr: cannot listen on 127.0.0.1:{first.port}: "
                               "address already in use"), lines
    # the first (with its own two workers) still gets every connection
    assert served_by_first(first) == 40
    first.stop_ok()


def test_second_instance_on_the_same_grpc_addr_exits(make_server, tmp_path):
    first = make_server()
    rc, lines = second_instance(tmp_path / "other", grpc_port=grpc_port_of(first))
    assert rc == 1, (rc, lines)
    assert len(lines) == 1 and lines[0].startswith("tms: grpc.addr: cannot listen on"), lines
    first.stop_ok()


def test_second_instance_on_the_same_metrics_addr_exits(make_server, tmp_path):
    first = make_server()
    rc, lines = second_instance(tmp_path / "other", metrics_port=first.metrics_port)
    assert rc == 1, (rc, lines)
    assert len(lines) == 1 and lines[0].startswith("tms: metrics.addr: cannot listen on"), lines
    first.stop_ok()


def test_second_instance_on_the_same_data_dir_exits(make_server):
    first = make_server()
    rc, lines = second_instance(first.data_dir)
    assert rc == 1, (rc, lines)
    assert len(lines) == 1, lines
    assert lines[0] == (f"tms: data.dir: {first.data_dir} is in use by another tms serve "
                        f"(pid {first.proc.pid}); each instance needs its own data.dir"), lines
    # the first is untouched: its store still works
    token, _ = first.register()
    first.create_task(token)
    # The lock is the kernel's (flock): kill -9 leaves nothing that blocks a restart.
    first.kill()
    first.start()
    assert first.me(token).status_code == 200
    first.stop_ok()


# ---- instances sharing one PostgreSQL database: one relays (issue 20) -----------------

def _series(srv, name, **labels):
    """Sum of the series of one family whose labels include these."""
    total = 0.0
    for line in requests.get(srv.metrics_url(), timeout=5).text.splitlines():
        key, _, val = line.rpartition(" ")
        if (key == name or key.startswith(name + "{")) and all(
                f'{k}="{v}"' in key for k, v in labels.items()):
            total += float(val)
    return total


def _poll(fn, timeout=15.0):
    deadline = time.monotonic() + timeout
    while not fn():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def _psql(url, sql):
    return subprocess.run(["psql", "-qAt", "-v", "ON_ERROR_STOP=1", url, "-c", sql], check=True,
                          capture_output=True, text=True).stdout


def _log_sends(url):
    """A sent event's outbox row is deleted: a trigger of the test's records, per row,
    its key and the time from its write to its delete (TMS's clock to PostgreSQL's: one
    host here)."""
    _psql(url, "CREATE TABLE sent_log (key text, delay_ms bigint);"
          " CREATE FUNCTION log_sent() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN"
          "  INSERT INTO sent_log VALUES (OLD.key,"
          "   (extract(epoch FROM clock_timestamp()) * 1000)::bigint - OLD.created_at_ms);"
          "  RETURN OLD; END $$;"
          " CREATE TRIGGER log_sent AFTER DELETE ON outbox FOR EACH ROW EXECUTE FUNCTION log_sent()")


def _send_delays_ms(url, title):
    """Commit -> sent (its row deleted), per outbox event of the tasks with this title."""
    out = _psql(url, "SELECT s.delay_ms FROM sent_log s JOIN tasks t ON s.key = t.id::text"
                f" WHERE t.title = '{title}'").split()
    return sorted(int(v) for v in out)


@pytest.mark.skipif(not TASKS_URL, reason="the relay's lead is PostgreSQL's (TMS_TEST_TASKS_URL)")
def test_instances_on_one_postgresql_database_relay_once_and_wake_the_relaying_one(
        make_server, tmp_path):
    """Two instances on one PostgreSQL database (each on its own data dir): one relay
    publishes the outbox (an advisory lock), the other stands aside and NOTIFYs it after
    its writes, so an event written there goes out at once, not at the leader's next poll
    (1 s: 20 creates spaced 50 ms took 552 ms from commit to sent at the median). Hung,
    the holder's idle lock session is ended by the server and the other takes over; killed,
    its lock goes with its session."""
    from test_kafka import shared_stores
    shared = shared_stores(tmp_path / "shared")
    a = make_server(settings=shared)
    assert _poll(lambda: "event=outbox_lead outbox=tasks store=postgres lead=held relaying=1"
                 in a.log_text()), a.log_text()[-2000:]
    b = make_server(settings=shared)
    assert _poll(lambda: "event=outbox_lead outbox=tasks store=postgres lead=other relaying=0"
                 in b.log_text()), b.log_text()[-2000:]
    assert _series(a, "tms_outbox_relaying", outbox="tasks") == 1
    assert _series(b, "tms_outbox_relaying", outbox="tasks") == 0
    for srv in (a, b):  # the users outbox's relay no longer replaces the tasks one's series
        text = requests.get(srv.metrics_url(), timeout=5).text
        assert re.search(r'^tms_outbox_pending_events\{outbox="tasks",store="postgres"', text, re.M), text
    url = shared["tasks.url"]
    _log_sends(url)
    token, user = a.register()
    n = 20
    for _ in range(n):
        b.create_task(token, title="written on b", assignedTo=user["id"])
        time.sleep(0.05)
    assert _poll(lambda: len(_send_delays_ms(url, "written on b")) == n)
    delays = _send_delays_ms(url, "written on b")
    assert delays[n // 2] < 200 and delays[-1] < 800, delays
    assert _series(b, "tms_outbox_lead_wakes_total", dir="out") >= 1
    assert _series(a, "tms_outbox_lead_wakes_total", dir="in") >= 1
    held = "event=outbox_lead outbox=tasks store=postgres lead=held relaying=1"
    # the holder hangs (SIGSTOP: its sockets stay open): the server ends its idle lock
    # session (5 s) and the other takes the lead and publishes what is written there
    a.proc.send_signal(signal.SIGSTOP)
    try:
        assert _poll(lambda: held in b.log_text(), timeout=20), b.log_text()[-2000:]
        assert _series(b, "tms_outbox_relaying", outbox="tasks") == 1
        b.create_task(token, title="while the holder hung", assignedTo=user["id"])
        assert _poll(lambda: len(_send_delays_ms(url, "while the holder hung")) == 1, timeout=5)
    finally:
        a.proc.send_signal(signal.SIGCONT)
    # back, it finds its session gone and stands aside
    assert _poll(lambda: a.log_text().count("lead=other relaying=0") == 1, timeout=20), \
        a.log_text()[-2000:]
    assert _series(a, "tms_outbox_relaying", outbox="tasks") == 0
    # the holder dies: its lock goes with its session, the first takes the lead again
    b.kill()
    assert _poll(lambda: a.log_text().count(held) == 2, timeout=10), a.log_text()[-2000:]
    a.create_task(token, title="after the holder died", assignedTo=user["id"])
    assert _poll(lambda: len(_send_delays_ms(url, "after the holder died")) == 1, timeout=5)
    a.stop_ok()
