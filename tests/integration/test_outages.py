"""Issue 24: a dependency that is down for a while dead-letters nothing. Consumers pause
while what they need is down (the notifier's SMTP server, the task group's PostgreSQL)
and resume when it answers; only events that can never succeed (malformed, a recipient
refused for good) reach the dead letters, with their reason; and recovery after a Kafka
broker restart has a stated bound.

Real services only: Kafka (TMS_TEST_KAFKA_BROKERS; the restart test needs the broker of
scripts/service-kafka, which it stops and starts), Mailpit (private instances, as
test_smtp.py starts them), PostgreSQL 15 (a private cluster, as test_pg_faults.py).
Each server gets a Kafka namespace of its own, so its topics and dead letters are its
own. Times are compressed by configuration (events.retry_ms, events.dlq_after,
mail.breaker_cooldown_ms)."""
import json
import os
import re
import secrets
import subprocess
import time
import uuid

import pytest

from conftest import SPLIT, TASKS_URL, USERS_URL, read_mails, run_cli, unique_email, wait_mails
from test_kafka import BROKERS, SCRIPT, script_broker
from test_pg_faults import pg  # noqa: F401  (fixture)
from test_smtp import SMTP_URL, Mailbox, mailpit, smtp_api  # noqa: F401  (fixture)

pytestmark = [
    pytest.mark.skipif(not BROKERS, reason="TMS_TEST_KAFKA_BROKERS is not set"),
    # The services of these tests are private: once (embedded stores) is enough.
    pytest.mark.skipif(bool(SPLIT or TASKS_URL or USERS_URL),
                       reason="runs once, on the embedded default stores"),
]

if BROKERS:
    from confluent_kafka import Consumer, Producer

# An outage must last longer than events.dlq_after x events.retry_ms (doubled per
# attempt) would take to dead-letter an event on the old code: 3 attempts, 100 ms
# first back-off -> 0.3 s. The outages below last several seconds.
FAST = {"events.dlq_after": "3", "events.retry_ms": "100"}
# Log events that an outage may cause; the test counts them.
OUTAGE_EVENTS = ("email_failed", "event_dead_lettered", "consumer_paused", "consumer_resumed",
                 "mail_send_failed", "mail_breaker", "email_dead_letter", "kafka_consume_error")


def kafka_server(make_server, **settings):
    ns = "o" + secrets.token_hex(4)
    s = {"events.brokers": BROKERS, "events.namespace": ns,
         "events.client_id": "tms-out-" + secrets.token_hex(3)}
    s.update(FAST)
    s.update(settings)
    srv = make_server(settings=s)
    srv.ns = ns
    deadline = time.monotonic() + 45
    while time.monotonic() < deadline:
        log = srv.log_text()
        if all(f"event=kafka_assigned topic={ns}.{t}" in log
               for t in ("notifications", "user_deleted")):
            return srv
        time.sleep(0.1)
    pytest.fail("consumers never got partitions:\n" + srv.log_text()[-3000:])


def metrics(srv):
    """/metrics as {'name{labels}': value}."""
    out = {}
    for line in srv.get("/metrics").text.splitlines():
        if line and not line.startswith("#"):
            key, _, val = line.rpartition(" ")
            out[key] = float(val)
    return out


def family(m, name, **labels):
    """Sum of the series of one family whose labels include these."""
    total = 0.0
    for key, val in m.items():
        if key == name or key.startswith(name + "{"):
            if all(f'{k}="{v}"' in key for k, v in labels.items()):
                total += val
    return total


def poll(fn, timeout, interval=0.1):
    deadline = time.monotonic() + timeout
    while True:
        v = fn()
        if v or time.monotonic() > deadline:
            return v
        time.sleep(interval)


def read_topic(topic, want, timeout):
    """(key, value, headers) of every message of topic, read from the start until
    want(msgs) or timeout."""
    c = Consumer({"bootstrap.servers": BROKERS, "group.id": "it-" + uuid.uuid4().hex,
                  "auto.offset.reset": "earliest", "enable.auto.commit": False})
    c.subscribe([topic])
    got = []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline and not want(got):
            m = c.poll(0.2)
            if m is None or m.error():
                continue
            got.append(((m.key() or b"").decode(), m.value().decode(errors="replace"),
                        {k: v.decode() for k, v in (m.headers() or [])}))
    finally:
        c.close()
    return got


def outage_lines(log, since=0):
    counts = {}
    for line in log[since:].splitlines():
        m = re.search(r" event=(\w+)", line)
        if m and m.group(1) in OUTAGE_EVENTS:
            counts[m.group(1)] = counts.get(m.group(1), 0) + 1
    return counts


def mailpit_settings(mp, **extra):
    s = {"mail.url": mp.url, "mail.breaker_cooldown_ms": "1000", "mail.retry_attempts": "2",
         "mail.retry_base_ms": "50", "mail.retry_max_ms": "100", "mail.timeout_ms": "2000"}
    s.update(extra)
    return s


# -- the SMTP server down for longer than the dead-letter path takes -----------------

def smtp_outage(srv, mp, n):
    """Stop Mailpit, assign n tasks, keep it down a while, start it again; returns the
    assignee's address, the log offset at the stop and the metrics seen while down."""
    c_tok, _ = srv.register(unique_email("out-creator"))
    email = unique_email("out-victim")
    _, user = srv.register(email)
    mp.stop()
    since = len(srv.log_text())
    t0 = time.monotonic()
    for i in range(n):
        r = srv.post("/api/task", token=c_tok, json={"title": f"held {i}", "description": "d",
                                                     "assignedTo": user["id"]})
        assert r.status_code == 201, r.text
    # Down for at least 8 s: many times what dead-lettering took on the old code.
    time.sleep(max(0.0, 8.0 - (time.monotonic() - t0)))
    down = metrics(srv)
    mp.start()
    return email, since, down


def assert_each_mailed_once(mp, email, n, timeout=60):
    got = mp.wait_to(email, count=n, timeout=timeout, settle=1.5)
    ids = [g["MessageID"] for g in got]
    titles = sorted(int(re.search(r"\bheld (\d+)\b", g["Snippet"]).group(1)) for g in got)
    assert len(got) == n and len(set(ids)) == n, (len(got), len(set(ids)), n)
    assert titles == list(range(n))


def test_smtp_outage_on_kafka_pauses_and_dead_letters_nothing(make_server, mailpit):
    mp = mailpit()
    srv = kafka_server(make_server, **mailpit_settings(mp))
    ns, n = srv.ns, 200
    email, since, down = smtp_outage(srv, mp, n)
    notif = {"topic": f"{ns}.notifications", "group": f"notification-group.{ns}"}
    dlq = read_topic(f"{ns}.notifications.dlq", lambda g: False, timeout=4)
    assert dlq == [], f"{len(dlq)} events dead-lettered by an outage"
    assert family(metrics(srv), "tms_kafka_dead_lettered_total", **notif) == 0
    assert_each_mailed_once(mp, email, n)
    # A handful of state changes, not a line per event and redelivery.
    lines = outage_lines(srv.log_text(), since)
    print(f"\noutage log lines: {lines}")
    assert lines.get("email_failed", 0) == 0 and lines.get("event_dead_lettered", 0) == 0
    assert 1 <= lines.get("consumer_paused", 0) <= 3, lines
    assert lines.get("consumer_resumed", 0) == lines["consumer_paused"], lines
    assert sum(lines.values()) <= 30, lines
    # While it was down: paused partitions, time paused, and the backlog in the lag.
    assert family(down, "tms_kafka_paused_partitions", **notif) == 3, \
        {k: v for k, v in down.items() if "paused" in k}
    assert family(down, "tms_kafka_paused_seconds", **notif) > 2
    lag = family(down, "tms_kafka_consumer_lag", **notif)
    assert lag >= n * 0.9, f"lag {lag} while {n} events waited"
    assert family(metrics(srv), "tms_kafka_paused_partitions", **notif) == 0
    assert poll(lambda: family(metrics(srv), "tms_kafka_consumer_lag", **notif) == 0, 15)


def test_smtp_outage_in_process_pauses_and_dead_letters_nothing(make_server, mailpit):
    """The embedded default (in-process bus, no Kafka): the same outage, the same
    outcome. The notifier's subscription pauses; the relay keeps the events pending."""
    mp = mailpit()
    srv = make_server(settings={**FAST, **mailpit_settings(mp)})
    n = 200
    email, since, down = smtp_outage(srv, mp, n)
    sub = {"topic": "notifications", "group": "notification-group"}
    assert_each_mailed_once(mp, email, n)
    lines = outage_lines(srv.log_text(), since)
    print(f"\noutage log lines: {lines}")
    assert lines.get("email_failed", 0) == 0 and lines.get("event_dead_lettered", 0) == 0
    assert 1 <= lines.get("consumer_paused", 0) <= 3, lines
    assert sum(lines.values()) <= 30, lines
    assert family(down, "tms_bus_paused", **sub) == 1
    assert family(down, "tms_outbox_pending_events") >= n * 0.9
    m = metrics(srv)
    assert family(m, "tms_bus_dead_lettered_total", **sub) == 0
    assert family(m, "tms_bus_paused", **sub) == 0
    assert family(m, "tms_bus_paused_seconds", **sub) > 2


# -- poison messages still reach the dead letters, with their reason ----------------

def test_poison_messages_reach_the_dlq_with_their_reason(make_server, mailpit, tmp_path):
    mp = mailpit("--smtp-allowed-recipients", "^out-ok-")
    dlq_dir = tmp_path / "mail-dlq"
    srv = kafka_server(make_server, **mailpit_settings(mp, **{"mail.dlq_dir": str(dlq_dir)}))
    ns = srv.ns
    c_tok, _ = srv.register(unique_email("out-creator"))
    ok_email, bad_email = unique_email("out-ok"), unique_email("out-bad")
    _, ok = srv.register(ok_email)
    _, bad = srv.register(bad_email)
    # 1. Not JSON at all, straight onto the topic.
    p = Producer({"bootstrap.servers": BROKERS})
    p.produce(f"{ns}.notifications", key="junk", value=b"{not json")
    p.flush(10)
    # 2. A recipient the server refuses for good (550), among one it accepts.
    bad_task = srv.create_task(c_tok, title="refused", assignedTo=bad["id"])
    srv.create_task(c_tok, title="accepted", assignedTo=ok["id"])
    assert len(mp.wait_to(ok_email)) == 1

    def both(g):
        return any(k == "junk" for k, _, _ in g) and any(k == str(bad_task["id"]) for k, _, _ in g)
    dead = read_topic(f"{ns}.notifications.dlq", both, timeout=30)
    junk = [h for k, v, h in dead if k == "junk"]
    refused = [(json.loads(v), h) for k, v, h in dead if k == str(bad_task["id"])]
    assert len(junk) == 1 and len(refused) == 1, dead
    assert junk[0]["tms.reason"] == "malformed event", junk
    assert junk[0]["tms.attempts"] == "3" and junk[0]["tms.group"] == f"notification-group.{ns}"
    event, headers = refused[0]
    assert event["user_id"] == bad["id"]
    assert headers["tms.attempts"] == "3", headers
    assert headers["tms.reason"].startswith("smtp 550"), headers
    m = metrics(srv)
    notif = {"topic": f"{ns}.notifications", "group": f"notification-group.{ns}"}
    assert family(m, "tms_kafka_dead_lettered_total", **notif) == 2
    assert family(m, "tms_kafka_consumer_pauses_total", **notif) == 0  # the server was up
    # The refused mail was sent once (its redeliveries are not mailed again), and kept
    # as a mail dead letter that `tms mail dlq replay` sends to a server that takes it.
    assert m['tms_mail_sends_total{result="permanent"}'] == 1
    letters = list(dlq_dir.glob("*.eml"))
    assert [x.name[:-4] for x in letters] == [event["event_id"]], letters
    base = ["--set", f"data.dir={srv.data_dir}", "--set", f"mail.dlq_dir={dlq_dir}"]
    if SMTP_URL:
        res = run_cli(["mail", "dlq", "replay", event["event_id"], *base,
                       "--set", f"mail.url={SMTP_URL}"])
        assert res.returncode == 0, res.stdout + res.stderr
        got = Mailbox(smtp_api()).wait_to(bad_email)
        assert len(got) == 1 and got[0]["MessageID"] == f"{event['event_id']}@tms.local", got
        assert (dlq_dir / "replayed" / f"{event['event_id']}.eml").exists()


# -- PostgreSQL down under the task group: the saga waits ----------------------------

def test_pg_down_under_task_group_saga_waits_then_completes(make_server, pg):  # noqa: F811
    srv = kafka_server(make_server, **{"tasks.url": pg.url})
    ns = srv.ns
    c_tok, _ = srv.register(unique_email("out-creator"))
    v_email = unique_email("out-deleted")
    v_tok, victim = srv.register(v_email)
    tasks = [srv.create_task(c_tok, title=f"v{i}", assignedTo=victim["id"]) for i in range(3)]
    assert len(wait_mails(srv.maildir, v_email, 3, timeout=20)) == 3  # nothing else pending
    pg.stop()
    since = len(srv.log_text())
    try:
        # The delete itself touches only the user store (SQLite here): it succeeds, and
        # user_deleted reaches the task group, whose store is down.
        r = srv.delete(f"/api/auth/delete/{victim['id']}", token=v_tok)
        assert r.status_code == 200, r.text
        tg = {"topic": f"{ns}.user_deleted", "group": f"task-group.{ns}"}
        time.sleep(8)  # many times what dead-lettering took on the old code
        down = metrics(srv)
        assert family(down, "tms_kafka_dead_lettered_total", **tg) == 0
    finally:
        pg.start()
    def unassigned():
        rs = [srv.get_task(c_tok, t["id"]) for t in tasks]  # 503 until the pool reconnects
        return all(r.status_code == 200 and r.json()["assignedTo"] is None for r in rs)
    assert poll(unassigned, timeout=30), srv.log_text()[since:][-3000:]
    m = metrics(srv)
    assert family(m, "tms_saga_total", outcome="unassigned") == 1
    assert family(m, "tms_saga_total", outcome="compensated") == 0
    assert srv.login(v_email).status_code == 401  # deleted for good, not brought back
    assert read_topic(f"{ns}.user_deleted.dlq", lambda g: False, timeout=4) == []
    lines = outage_lines(srv.log_text(), since)
    assert lines.get("consumer_paused", 0) >= 1 and lines.get("event_dead_lettered", 0) == 0
    assert family(down, "tms_kafka_paused_partitions", **tg) == 3
    assert family(down, "tms_kafka_paused_seconds", **tg) > 3


# -- a broker restart: every event delivered within a stated bound --------------------

RESTART_BOUND_S = 30.0  # after the broker answers again (docs/OPERATIONS.md, "Kafka")


def test_broker_restart_every_event_mailed_within_the_bound(make_server):
    if not script_broker():
        pytest.skip("the broker is not the one scripts/service-kafka runs")
    srv = kafka_server(make_server)
    c_tok, _ = srv.register(unique_email("out-creator"))
    email = unique_email("out-restart")
    _, user = srv.register(email)
    total, took = 0, []
    for run in range(3):
        subprocess.run([str(SCRIPT), "stop"], check=True, timeout=60)
        for i in range(20):
            srv.create_task(c_tok, title=f"run {run} #{i}", assignedTo=user["id"])
            total += 1
        subprocess.run([str(SCRIPT)], check=True, timeout=120, capture_output=True)
        back = time.monotonic()  # the script returns once the broker answers
        got = wait_mails(srv.maildir, email, total, timeout=RESTART_BOUND_S)
        took.append(time.monotonic() - back)
        assert len(got) == total, (f"run {run}: {len(got)} of {total} mailed "
                                   f"{took[-1]:.1f}s after the broker answered")
    print(f"\nmailed {[f'{t:.1f}s' for t in took]} after the broker answered (bound "
          f"{RESTART_BOUND_S:.0f}s)")
    time.sleep(1.5)
    assert len(read_mails(srv.maildir)) == total  # nothing twice
    m = metrics(srv)
    notif = {"topic": f"{srv.ns}.notifications", "group": f"notification-group.{srv.ns}"}
    assert family(m, "tms_kafka_dead_lettered_total", **notif) == 0
