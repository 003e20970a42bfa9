"""Mail bombing through reassignment (issue 17, item 7): one create and 20 PATCHes
alternating the assignee mailed the victim 11 times with a title the attacker chose.
Now the notifier sends at most notify.per_assigner_per_hour emails from one assigner to
one recipient and notify.per_recipient_per_hour to one recipient; the rest are
suppressed (a log line, tms_emails_total{outcome="suppressed"}, and the event recorded
as handled: not lost silently, not retried), and the mail shows the title as text a
user wrote."""
import re
import secrets
import time

from conftest import mails_to, read_mails, wait_mails


def email_totals(srv):
    """tms_emails_total by outcome (summed over processes in a split deployment)."""
    out = {}
    for line in srv.get("/metrics").text.splitlines():
        m = re.match(r'^tms_emails_total\{outcome="([a-z_]+)"\} (\S+)$', line)
        if m:
            out[m.group(1)] = out.get(m.group(1), 0) + float(m.group(2))
    return out


def pending_events(srv):
    total = 0.0
    for line in srv.get("/metrics").text.splitlines():
        if line.startswith("tms_outbox_pending_events"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def wait_handled(srv, count, timeout=30.0):
    """Until `count` notification events were sent or suppressed; returns the totals."""
    deadline = time.monotonic() + timeout
    while True:
        t = email_totals(srv)
        if t.get("sent", 0) + t.get("suppressed", 0) >= count or time.monotonic() > deadline:
            return t
        time.sleep(0.1)


def test_reassignment_bombing_is_limited(make_server):
    srv = make_server(settings={"notify.per_assigner_per_hour": "5",
                                "notify.per_recipient_per_hour": "20"})
    a_tok, attacker = srv.register()
    _, victim = srv.register()
    title = f"Your account is locked, call +1 555 {secrets.token_hex(3)}"
    task = srv.create_task(a_tok, title=title, assignedTo=victim["id"])
    for i in range(20):  # victim, attacker, victim, ... : 10 more to the victim
        who = attacker if i % 2 == 0 else victim
        r = srv.patch(f"/api/task/{task['id']}", token=a_tok, json={"assignedTo": who["id"]})
        assert r.status_code == 200, r.text
    # 21 events: 11 to the victim, 10 to the attacker (self-assignments count too)
    totals = wait_handled(srv, 21)
    assert totals.get("sent", 0) == 10, totals  # 5 + 5
    assert totals.get("suppressed", 0) == 11, totals
    time.sleep(0.5)  # nothing else trickles in
    got = mails_to(srv.maildir, victim["email"], task["id"])
    assert len(got) == 5, f"victim got {len(got)} emails"
    log = srv.log_text()
    lines = [l for l in log.splitlines() if "event=email_suppressed" in l]
    assert len(lines) == 11, lines
    assert all("limit=per_assigner" in l and f"by={attacker['id']}" in l for l in lines), lines
    assert sum(f"user={victim['id']}" in l for l in lines) == 6, lines
    # handled, not pending: nothing is retried or mailed later
    deadline = time.monotonic() + 10
    while pending_events(srv) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert pending_events(srv) == 0
    assert email_totals(srv).get("failed", 0) == 0

    # another user may still mail the victim (the recipient's own budget is not spent)
    b_tok, _ = srv.register()
    other = srv.create_task(b_tok, title="a real task", assignedTo=victim["id"])
    assert len(wait_mails(srv.maildir, victim["email"], 1, task_id=other["id"])) == 1


def test_per_recipient_limit_across_assigners(make_server):
    srv = make_server(settings={"notify.per_assigner_per_hour": "0",
                                "notify.per_recipient_per_hour": "3"})
    _, victim = srv.register()
    tokens = [srv.register()[0] for _ in range(3)]
    for tok in tokens:
        for _ in range(2):
            srv.create_task(tok, assignedTo=victim["id"])
    totals = wait_handled(srv, 6)
    assert (totals.get("sent", 0), totals.get("suppressed", 0)) == (3, 3), totals
    time.sleep(0.5)
    assert len(mails_to(srv.maildir, victim["email"])) == 3
    assert "limit=per_recipient" in srv.log_text()


def test_title_is_marked_as_user_content(server):
    a_tok, _ = server.register()
    _, victim = server.register()
    title = f"TMS security: your password expired {secrets.token_hex(3)}"
    task = server.create_task(a_tok, title=title, assignedTo=victim["id"])
    (m,) = wait_mails(server.maildir, victim["email"], 1, task_id=task["id"])
    # quoted under a line that says who wrote it
    assert re.search(r"as a TMS user wrote it \(not a message from TMS\):\r?\n> " +
                     re.escape(title), m.text), m.text
    assert re.search(r"<blockquote[^>]*>" + re.escape(title) + "</blockquote>", m.html), m.html
    assert "not a message from TMS" in m.html


def test_multiline_title_cannot_leave_the_quote(server):
    a_tok, _ = server.register()
    _, victim = server.register()
    marker = secrets.token_hex(4)
    title = f"x {marker}\n\n-- TMS\nPlease log in at http://evil.example/{marker}"
    r = server.post("/api/task", token=a_tok,
                    json={"title": title, "description": "d", "assignedTo": victim["id"]})
    if r.status_code == 400:
        return  # refusing newlines in titles is also safe
    assert r.status_code == 201, r.text
    (m,) = wait_mails(server.maildir, victim["email"], 1, task_id=r.json()["id"])
    text = m.text.replace("\r\n", "\n")
    for line in text.splitlines():
        if marker in line or "evil.example" in line:
            assert line.startswith("> "), text
    assert text.count("\n-- TMS\n") == 1 and "\n> -- TMS\n" in text, text
    assert read_mails(server.maildir)
