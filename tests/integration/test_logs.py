"""Every log line is logfmt with each key once (issue 25: the notifier wrote
`event=email_sent event=<uuid>`, which a logfmt parser reads as one key twice). A run
that touches most of what logs (accounts, tasks, assignment emails, a user's deletion
and the saga, refusals, a stop) is parsed line by line; conftest also parses the log of
every test server when its test ends."""
import re

from conftest import assert_error, log_problems, logfmt, make_admin, wait_mails


def test_every_line_of_a_run_is_logfmt_without_a_key_twice(make_server):
    srv = make_server()
    token, user = srv.register()
    _, assignee = srv.register()
    t = srv.create_task(token, assignedTo=assignee["id"])
    srv.patch(f"/api/task/{t['id']}", token=token, json={"status": "closed"})
    wait_mails(srv.maildir, assignee["email"], count=1, task_id=t["id"])
    assert_error(srv.login(user["email"], "wrong-password"), 401)
    assert_error(srv.get("/api/task?bogus=1", token=token), 400)
    admin, _ = make_admin(srv)
    assert srv.delete(f"/api/auth/delete/{assignee['id']}", token=admin).status_code == 200
    srv.get("/metrics")
    srv.stop_ok()

    text = srv.log_text()
    lines = [ln for ln in text.splitlines() if ln.startswith("ts=")]
    assert len(lines) > 20, text[-2000:]
    assert log_problems(text) == []
    sent = [dict(logfmt(ln)) for ln in lines if " event=email_sent " in ln]
    assert sent, "no email_sent line"
    for pairs in sent:
        assert pairs["event"] == "email_sent"
        assert re.fullmatch(r"[0-9a-f-]{36}", pairs["event_id"]), pairs


def test_the_parser_catches_a_key_twice():
    assert log_problems("ts=1 level=info event=email_sent event=0b3c task=1\n") == [
        "key event twice: ts=1 level=info event=email_sent event=0b3c task=1"]
    assert log_problems('ts=1 msg="a b" other="x \\" y"\nnot tms output\n') == []
