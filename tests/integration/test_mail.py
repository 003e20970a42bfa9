"""Assignment emails on the embedded default (outbox -> in-process bus -> notifier ->
Maildir under <data.dir>/mail/new), and crash consistency of the outbox."""
import datetime as dt
import os
import re
import secrets
import signal
import sqlite3
import time
import threading
import types
from email.utils import parsedate_to_datetime

import pytest
import requests

from conftest import TASKS_URL, mails_to, read_mails, unique_email, wait_mails

SUBJECT = "New Task Assigned"
MSGID_RE = re.compile(r"^<[^<>@\s]+@[^<>@\s]+>$")
SETTLE = 1.0  # seconds to wait for a second (wrong) email after the first one


@pytest.fixture
def team(server):
    t = types.SimpleNamespace()
    t.creator_email = unique_email("creator")
    t.creator_token, t.creator = server.register(t.creator_email)
    t.a_email = unique_email("assignee-a")
    t.a_token, t.a = server.register(t.a_email)
    t.b_email = unique_email("assignee-b")
    t.b_token, t.b = server.register(t.b_email)
    return t


def assert_crlf(raw):
    assert raw.count(b"\n") == raw.count(b"\r\n"), "bare LF in the message"
    assert raw.count(b"\r") == raw.count(b"\r\n"), "bare CR in the message"


def assert_well_formed(mail, to_email, task):
    """RFC 5322 + MIME shape of one assignment email."""
    raw = mail.raw
    assert_crlf(raw)
    head, sep, _ = raw.partition(b"\r\n\r\n")
    assert sep, "no blank line between header and body"
    try:
        raw.decode("ascii")
    except UnicodeDecodeError:
        pytest.fail("message is not 7-bit ASCII (quoted-printable expected)")
    assert max(len(l) for l in raw.split(b"\r\n")) <= 998, "line over 998 octets"
    msg = mail.msg
    for h in ("From", "To", "Subject", "Date", "Message-ID", "MIME-Version", "Content-Type"):
        assert len(msg.get_all(h, [])) == 1, f"{h} appears {len(msg.get_all(h, []))} times"
    assert mail.to_addrs == [to_email.lower()], msg.get_all("To")
    assert str(msg["Subject"]) == SUBJECT
    assert MSGID_RE.match(str(msg["Message-ID"]).strip()), msg["Message-ID"]
    assert str(msg["MIME-Version"]).strip() == "1.0"
    date = parsedate_to_datetime(str(msg["Date"]))
    if date.tzinfo is None:  # "-0000": UTC without a claim about the local zone
        date = date.replace(tzinfo=dt.timezone.utc)
    now = dt.datetime.now(dt.timezone.utc)
    assert abs((now - date).total_seconds()) < 300, msg["Date"]
    assert msg.get_content_type() == "multipart/alternative"
    parts = list(msg.iter_parts())
    types_ = [p.get_content_type() for p in parts]
    assert "text/plain" in types_ and "text/html" in types_, types_
    for p in parts:
        assert p["Content-Transfer-Encoding"].lower() == "quoted-printable", \
            p["Content-Transfer-Encoding"]
        assert (p.get_content_charset() or "").lower() == "utf-8", p["Content-Type"]
    assert mail.mentions_task(task["id"]), f"task id {task['id']} not in body:\n{mail.text}"
    assert task["title"] in mail.text, f"title not in text part:\n{mail.text}"


def one_mail(maildir, to_email, task_id, timeout=10.0):
    got = wait_mails(maildir, to_email, 1, task_id=task_id, timeout=timeout, settle=SETTLE)
    assert len(got) == 1, f"expected exactly one email to {to_email} about task {task_id}, got {got}"
    return got[0]


def no_mail(maildir, to_email, task_id=None, wait=SETTLE):
    time.sleep(wait)
    got = mails_to(maildir, to_email, task_id)
    assert got == [], f"unexpected email(s) to {to_email}: {got}"


# -- create ---------------------------------------------------------------------------

def test_create_with_assignee_sends_one_email(server, team):
    title = f"Review the Q3 plan {secrets.token_hex(3)}"
    t = server.create_task(team.creator_token, title=title, description="details",
                           assignedTo=team.a["id"])
    m = one_mail(server.maildir, team.a_email, t["id"])
    assert_well_formed(m, team.a_email, t)
    assert title in m.html
    assert m.path.parent == server.maildir / "new"
    # nothing to the creator or anybody else
    assert mails_to(server.maildir, team.creator_email) == []
    assert mails_to(server.maildir, team.b_email) == []


def test_create_without_assignee_sends_nothing(server, team):
    title = f"unassigned {secrets.token_hex(6)}"
    server.create_task(team.creator_token, title=title)
    time.sleep(SETTLE)
    assert [m for m in read_mails(server.maildir) if title in m.text] == []


def test_message_ids_unique_and_stable_files(server, team):
    ts = [server.create_task(team.creator_token, assignedTo=team.a["id"]) for _ in range(3)]
    got = wait_mails(server.maildir, team.a_email, 3, timeout=10)
    assert len(got) == 3, got
    ids = {str(m.msg["Message-ID"]) for m in got}
    assert len(ids) == 3, ids
    for t in ts:
        assert len([m for m in got if m.mentions_task(t["id"])]) == 1, t["id"]


def test_non_ascii_title_round_trips(server, team):
    title = "Überprüfung ✓ 日本語 — " + "é" * 150 + " " + secrets.token_hex(3)
    assert len(title) <= 200
    t = server.create_task(team.creator_token, title=title, assignedTo=team.a["id"])
    m = one_mail(server.maildir, team.a_email, t["id"])
    assert_well_formed(m, team.a_email, t)
    assert str(m.msg["Subject"]) == SUBJECT


def test_html_in_title_is_escaped(server, team):
    title = f'<script>alert("x")</script> & <b>bold</b> {secrets.token_hex(3)}'
    t = server.create_task(team.creator_token, title=title, assignedTo=team.a["id"])
    m = one_mail(server.maildir, team.a_email, t["id"])
    assert_well_formed(m, team.a_email, t)
    html = m.html
    assert "<script>" not in html and "<b>bold</b>" not in html, html
    assert "&lt;script&gt;" in html, html
    assert "&amp;" in html


@pytest.mark.parametrize("title", [
    "Hello\r\nBcc: evil@example.com\r\nSubject: pwned",
    "Hello\nTo: evil@example.com",
    "Hello\r\n\r\n<html>injected body</html>",
    "Hello\rX-Injected: 1",
], ids=["crlf-bcc", "lf-to", "blank-line", "cr"])
def test_title_cannot_inject_headers(server, team, title):
    r = server.post("/api/task", token=team.creator_token,
                    json={"title": title, "description": "d", "assignedTo": team.a["id"]})
    if r.status_code == 400:
        return  # rejecting control characters is also safe
    assert r.status_code == 201, r.text
    t = r.json()
    m = one_mail(server.maildir, team.a_email, t["id"])
    msg = m.msg
    assert_crlf(m.raw)
    assert m.to_addrs == [team.a_email.lower()]
    assert msg.get_all("Bcc") is None and msg.get_all("Cc") is None
    assert msg.get_all("X-Injected") is None
    assert len(msg.get_all("Subject")) == 1 and str(msg["Subject"]) == SUBJECT
    head = m.raw.partition(b"\r\n\r\n")[0]
    assert b"evil@" not in head and b"pwned" not in head and b"Injected" not in head, head
    assert msg.get_content_type() == "multipart/alternative"
    assert len(list(msg.iter_parts())) >= 2
    assert mails_to(server.maildir, "evil@example.com") == []
    assert "<html>injected" not in m.html


# -- idempotent create -----------------------------------------------------------------

def test_idempotent_create_one_email(server, team):
    key = secrets.token_hex(8)
    body = {"title": f"idem {key}", "description": "d", "assignedTo": team.a["id"]}
    h = {"Idempotency-Key": key}
    r1 = server.post("/api/task", token=team.creator_token, json=body, headers=h)
    assert r1.status_code == 201, r1.text
    wait_mails(server.maildir, team.a_email, 1, task_id=r1.json()["id"])
    r2 = server.post("/api/task", token=team.creator_token, json=body, headers=h)
    assert r2.status_code == 201, r2.text
    assert r2.json()["id"] == r1.json()["id"]
    time.sleep(SETTLE)
    assert len(mails_to(server.maildir, team.a_email)) == 1


def test_concurrent_idempotent_creates_one_task_one_email(server, team):
    key = secrets.token_hex(8)
    body = {"title": f"race {key}", "description": "d", "assignedTo": team.a["id"]}
    results = []

    def go():
        results.append(server.post("/api/task", token=team.creator_token, json=body,
                                   headers={"Idempotency-Key": key}))

    threads = [threading.Thread(target=go) for _ in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    codes = sorted(r.status_code for r in results)
    assert set(codes) <= {201, 409}, [(r.status_code, r.text[:200]) for r in results]
    ids = {r.json()["id"] for r in results if r.status_code == 201}
    assert len(ids) == 1, f"one key gave several tasks: {ids} ({codes})"
    r = server.list_tasks(team.creator_token, assignedTo=team.a["id"])
    assert [t["id"] for t in r.json()["tasks"]] == list(ids)
    got = wait_mails(server.maildir, team.a_email, 1, timeout=10, settle=SETTLE)
    assert len(got) == 1, got


# -- update -------------------------------------------------------------------------------

def test_reassignment_mails_new_assignee(server, team):
    t = server.create_task(team.creator_token, assignedTo=team.a["id"])
    one_mail(server.maildir, team.a_email, t["id"])
    path = f"/api/task/{t['id']}"
    r = server.patch(path, token=team.creator_token, json={"assignedTo": team.b["id"]})
    assert r.status_code == 200, r.text
    m = one_mail(server.maildir, team.b_email, t["id"])
    assert_well_formed(m, team.b_email, r.json())
    assert len(mails_to(server.maildir, team.a_email)) == 1
    # same assignee again, and other changes: nothing new
    r = server.patch(path, token=team.creator_token,
                     json={"assignedTo": team.b["id"], "status": "in progress"})
    assert r.status_code == 200, r.text
    r = server.patch(path, token=team.b_token, json={"title": "renamed by b"})
    assert r.status_code == 200, r.text
    time.sleep(SETTLE)
    assert len(mails_to(server.maildir, team.b_email)) == 1
    assert len(mails_to(server.maildir, team.a_email)) == 1
    # unassigning mails nobody; assigning again mails the new assignee
    r = server.patch(path, token=team.creator_token, json={"assignedTo": None})
    assert r.status_code == 200, r.text
    r = server.patch(path, token=team.creator_token, json={"assignedTo": team.a["id"]})
    assert r.status_code == 200, r.text
    got = wait_mails(server.maildir, team.a_email, 2, timeout=10, settle=SETTLE)
    assert len(got) == 2, got
    assert len(mails_to(server.maildir, team.b_email)) == 1
    assert any("renamed by b" in m.text for m in got), [m.text for m in got]
    ids = {str(m.msg["Message-ID"]) for m in got + mails_to(server.maildir, team.b_email)}
    assert len(ids) == 3, ids


def test_assigning_unassigned_task_mails(server, team):
    t = server.create_task(team.creator_token)
    r = server.patch(f"/api/task/{t['id']}", token=team.creator_token,
                     json={"assignedTo": team.b["id"]})
    assert r.status_code == 200, r.text
    m = one_mail(server.maildir, team.b_email, t["id"])
    assert_well_formed(m, team.b_email, r.json())


def test_failed_update_sends_nothing(server, team):
    t = server.create_task(team.creator_token, assignedTo=team.a["id"])
    path = f"/api/task/{t['id']}"
    # 412 and 403 must not commit the change nor its event
    r = server.patch(path, token=team.creator_token, json={"assignedTo": team.b["id"]},
                     headers={"If-Match": '"9"'})
    assert r.status_code == 412, r.text
    r = server.patch(path, token=team.b_token, json={"assignedTo": team.b["id"]})
    assert r.status_code == 403, r.text
    no_mail(server.maildir, team.b_email)


def test_email_metrics(make_server):
    srv = make_server()
    email = unique_email("m")
    tok, u = srv.register(email)
    t = srv.create_task(tok, assignedTo=u["id"])
    one_mail(srv.maildir, email, t["id"])
    text = srv.get("/metrics").text

    def total(name):
        vals = [float(l.rsplit(" ", 1)[1]) for l in text.splitlines()
                if l.startswith(name + "{") or l.startswith(name + " ")]
        assert vals, f"no {name} samples"
        return sum(vals)

    assert total("tms_emails_total") >= 1
    assert re.search(r'^tms_emails_total\{[^}]*outcome="', text, re.M), "no outcome label"
    assert total("tms_outbox_published_total") >= 1
    # how long events waited between their write and the bus accepting them
    assert total("tms_outbox_publish_delay_seconds_count") >= 1
    assert re.search(r'^tms_outbox_publish_delay_seconds_bucket\{le="10"\} [1-9]', text, re.M), \
        [l for l in text.splitlines() if "publish_delay" in l]


def _processes(srv):
    """(metrics URL, data dir) of each process of srv: one, or each of a split
    deployment's (there the notifier process trims its own inbox)."""
    if srv.split is None:
        return [(srv.metrics_url(), srv.data_dir)]
    return [(f"http://127.0.0.1:{p.metrics_port}/metrics", p.data_dir)
            for procs in srv.split.procs.values() for p in procs]


def _trimmed(srv):
    total = 0.0
    for url, _ in _processes(srv):
        text = requests.get(url, timeout=5).text
        total += sum(float(l.rsplit(" ", 1)[1]) for l in text.splitlines()
                     if l.startswith("tms_inbox_trimmed_total{"))
    return total


def _inbox_rows(srv):
    """Records in the inboxes of srv's embedded stores (None on PostgreSQL)."""
    if TASKS_URL:
        return None
    n = 0
    for _, data_dir in _processes(srv):
        if not (data_dir / "tms.db").exists():
            continue
        db = sqlite3.connect(f"file:{data_dir / 'tms.db'}?mode=ro", uri=True)
        try:
            n += db.execute("SELECT count(*) FROM inbox").fetchone()[0]
        finally:
            db.close()
    return n


def test_inbox_records_go_after_their_retention(make_server):
    """events.inbox_retention: the notifier's records of handled events (kept to drop
    redeliveries) are deleted once older than the retention, 5 s after a start and then
    hourly; with the default (14 days) they stay. Before, the inbox grew without bound;
    in a split deployment the notifier process trims its own."""
    kept = make_server()
    short = make_server()
    for srv in (kept, short):
        email = unique_email("inbox")
        tok, u = srv.register(email)
        t = srv.create_task(tok, assignedTo=u["id"])
        one_mail(srv.maildir, email, t["id"])
    assert _inbox_rows(short) in (1, None)
    # restarted with a retention of 1 s: the record is older than that at the trim 5 s
    # after this start, however slow the mail was (a first start with it could trim the
    # record before it is seen)
    short.stop_ok()
    short.settings["events.inbox_retention"] = "1"
    short.start()
    # the round's line comes when it ends (a step after the one that deleted)
    deadline = time.monotonic() + 20
    while "event=inbox_trimmed" not in short.log_text() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert "event=inbox_trimmed" in short.log_text()
    assert _trimmed(short) >= 1
    assert _inbox_rows(short) in (0, None)
    # the default keeps it (its first trim, 5 s after its start, has run by now)
    assert _trimmed(kept) == 0
    assert _inbox_rows(kept) in (1, None)
    assert "event=inbox_trim" not in kept.log_text()


# -- crash consistency -------------------------------------------------------------------------

def test_kill9_right_after_201(make_server):
    """SIGKILL just after the 201 of an assigning create: after a restart on the same data
    dir the task exists with its content and exactly one email is written for it."""
    srv = make_server()
    creator_tok, _ = srv.register()
    email = unique_email("crash")
    _, assignee = srv.register(email)
    made = []
    for round_ in range(3):
        title = f"crash round {'ABC'[round_]} {secrets.token_urlsafe(6)}"
        body = {"title": title, "description": f"desc {round_}",
                "assignedTo": assignee["id"], "status": "in progress"}
        key = f"crash-{round_}-{secrets.token_hex(4)}"
        r = srv.post("/api/task", token=creator_tok, json=body, headers={"Idempotency-Key": key})
        os.kill(srv.proc.pid, signal.SIGKILL)
        assert r.status_code == 201, r.text
        srv.proc.wait(timeout=10)
        srv.kill()
        made.append(r.json())
        srv.start()
        got = srv.task_ok(creator_tok, r.json()["id"])
        assert got == r.json()
        # the Idempotency-Key outlives the crash (24 h): the replay gives the same task
        again = srv.post("/api/task", token=creator_tok, json=body,
                         headers={"Idempotency-Key": key})
        assert again.status_code == 201, again.text
        assert again.json()["id"] == r.json()["id"], (again.json(), r.json())
    for t in made:
        got = wait_mails(srv.maildir, email, 1, task_id=t["id"], timeout=10)
        assert got, f"no email for task {t['id']} after restart"
    time.sleep(SETTLE)
    for t in made:
        got = mails_to(srv.maildir, email, t["id"])
        assert len(got) == 1, f"task {t['id']}: {len(got)} emails {got}"
        assert t["title"] in got[0].text
    assert len(mails_to(srv.maildir, email)) == 3
    # one more restart (clean this time) sends nothing again
    srv.stop_ok()
    srv.start()
    time.sleep(SETTLE)
    assert len(mails_to(srv.maildir, email)) == 3
    r = srv.list_tasks(creator_tok)
    assert [x["id"] for x in r.json()["tasks"]] == [t["id"] for t in made]


def test_one_failing_mail_delays_no_other_on_the_embedded_bus(make_server):
    """Issue 20, no head-of-line blocking: a mail that fails (here every attempt, until it
    is dead-lettered: attempts 0.5, 1, 2 and 4 s apart) does not hold the mails created
    after it. Each later create's mail is in the Maildir within 1 s (p99). The relay used
    to mark a batch sent only once every event of it was done, so the poison's back-offs
    held every event fetched after it for about 7.5 s."""
    from conftest import TMS_BIN

    title = "poison-" + secrets.token_hex(4)
    srv = make_server(env={"TMS_FAULT_NOTIFY_FAIL_TITLE": title},
                      settings={"events.retry_ms": 500, "events.dlq_after": 5})
    c_tok, _ = srv.register(unique_email("creator"))
    _, stuck = srv.register(unique_email("stuck"))
    _, other = srv.register(unique_email("other"))
    srv.create_task(c_tok, title=title, assignedTo=stuck["id"])
    latencies = []
    for i in range(20):
        task = srv.create_task(c_tok, title=f"ordinary {i}", assignedTo=other["id"])
        t0 = time.monotonic()
        got = wait_mails(srv.maildir, other["email"], 1, task_id=task["id"], timeout=15)
        latencies.append(time.monotonic() - t0)
        assert len(got) == 1, f"mail {i} never came"
    if not any("TMS_FAULT_NOTIFY_FAIL_TITLE" in line for line in srv.log_text().splitlines()) \
            and "asan" not in TMS_BIN:
        pytest.skip("TMS_FAULT_NOTIFY_FAIL_TITLE needs the TMS_FAULTS (ASan) build")
    latencies.sort()
    p99 = latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))]
    print(f"mail latencies behind a failing mail: p50 {latencies[len(latencies) // 2]:.3f} s, "
          f"p99 {p99:.3f} s")
    assert p99 < 1.0, latencies
    assert mails_to(srv.maildir, stuck["email"]) == []
