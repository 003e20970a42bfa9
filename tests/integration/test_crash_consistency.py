"""Crash consistency (issue 10, part 3): kill -9 in the middle of a write load of creates,
updates, reassignments and deletes (on the embedded store, and on PostgreSQL when the
suite runs with TMS_TEST_TASKS_URL). After a restart on the same data:
- every write that got a 2xx is there with exactly the acknowledged content;
- a write that got an error is not applied, not even in part;
- the one write per client in flight at the kill is either wholly there or wholly not;
- every acknowledged assignment leads to exactly one email (the one in flight: 0 or 1).

Each client thread owns its tasks, so the writes to one task are sequential and the
expected state of each task is known."""
import collections
import os
import random
import re
import secrets
import signal
import threading
import time

import requests

from conftest import read_mails, unique_email

THREADS = 4
STATUSES = ["open", "in progress", "closed"]


class Client(threading.Thread):
    def __init__(self, srv, token, assignees, seed):
        super().__init__(daemon=True)
        self.srv = srv
        self.token = token
        self.assignees = assignees
        self.rng = random.Random(seed)
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"Bearer {token}"
        self.tasks = {}  # id -> list of (op, sent, outcome, reply)
        self.live = []
        self.unknown_create = 0
        self.unknown_bodies = []  # creates in flight at the kill: maybe committed
        self.ops = 0

    def call(self, method, path, body=None):
        try:
            r = self.session.request(method, self.srv.url(path), json=body, timeout=5)
        except requests.RequestException:
            return "unknown", None
        if 200 <= r.status_code < 300:
            return "ok", r.json()
        return "error", (r.status_code, r.text[:200])

    def run(self):
        while True:
            roll = self.rng.random()
            if len(self.live) < 2 or roll < 0.35:
                assignee = self.rng.choice([None] + self.assignees)
                body = {"title": f"crash-{secrets.token_hex(6)}", "description": "load",
                        "status": self.rng.choice(STATUSES)}
                if assignee:
                    body["assignedTo"] = assignee["id"]
                outcome, reply = self.call("POST", "/api/task", body)
                if outcome == "ok":
                    self.tasks[reply["id"]] = [("create", body, outcome, reply)]
                    self.live.append(reply["id"])
                elif outcome == "unknown":
                    self.unknown_create += 1
                    self.unknown_bodies.append(body)
            elif roll < 0.8:
                tid = self.rng.choice(self.live)
                assignee = self.rng.choice([None] + self.assignees)
                body = {"status": self.rng.choice(STATUSES),
                        "assignedTo": assignee["id"] if assignee else None}
                outcome, reply = self.call("PATCH", f"/api/task/{tid}", body)
                self.tasks[tid].append(("patch", body, outcome, reply))
            else:
                tid = self.rng.choice(self.live)
                outcome, reply = self.call("DELETE", f"/api/task/{tid}")
                self.tasks[tid].append(("delete", None, outcome, reply))
                if outcome == "ok":
                    self.live.remove(tid)
            self.ops += 1
            if outcome == "unknown":
                return  # the server is gone


def applied(state, op, body, reply):
    """The task after op, given the acknowledged state before it (None: deleted)."""
    if op == "delete":
        return None
    return reply


def test_kill9_under_mixed_write_load_loses_nothing(make_server):
    srv = make_server()
    token, _ = srv.register()
    assignees = [srv.register(unique_email("crashee"))[1] for _ in range(3)]
    clients = [Client(srv, token, assignees, seed) for seed in range(THREADS)]
    for c in clients:
        c.start()
    time.sleep(random.uniform(1.0, 2.0))
    os.kill(srv.proc.pid, signal.SIGKILL)
    srv.proc.wait(timeout=10)
    srv.kill()
    for c in clients:
        c.join(15)
        assert not c.is_alive()
    assert sum(c.ops for c in clients) > 40, "too little load before the kill"
    srv.start()

    expected_mails = {}  # (email, title) -> [min, max]
    checked = 0
    for c in clients:
        for body in c.unknown_bodies:  # a create in flight may have committed, email and all
            if body.get("assignedTo"):
                email = next(a["email"] for a in assignees if a["id"] == body["assignedTo"])
                expected_mails.setdefault((email, body["title"]), [0, 0])[1] += 1
        for tid, history in c.tasks.items():
            state, title = None, history[0][3]["title"]
            for i, (op, body, outcome, reply) in enumerate(history):
                last = i == len(history) - 1
                before = state
                if outcome == "ok":
                    state = applied(state, op, body, reply)
                elif outcome == "unknown":
                    assert last
                # assignment emails: created with an assignee, or reassigned to another user
                target = None
                if op == "create":
                    target = reply["assignedTo"]
                elif op == "patch" and before is not None and body["assignedTo"] and \
                        body["assignedTo"] != before["assignedTo"]:
                    target = body["assignedTo"]
                if target and outcome != "error":
                    email = next(a["email"] for a in assignees if a["id"] == target)
                    rng = expected_mails.setdefault((email, title), [0, 0])
                    rng[1] += 1
                    if outcome == "ok":
                        rng[0] += 1
            r = srv.get_task(token, tid)
            got = r.json() if r.status_code == 200 else None
            assert r.status_code in (200, 404), r.text
            op, body, outcome, reply = history[-1]
            if outcome == "unknown":
                # before the write, or wholly after it
                if op == "delete":
                    assert got in (None, state), (tid, got, state)
                else:
                    ok_after = got is not None and state is not None and \
                        got["version"] == state["version"] + 1 and \
                        got["status"] == body["status"] and \
                        got["assignedTo"] == body["assignedTo"] and \
                        {k: got[k] for k in ("title", "description", "createdBy", "createdAt")} \
                        == {k: state[k] for k in ("title", "description", "createdBy", "createdAt")}
                    assert got == state or ok_after, (tid, got, state, body)
            else:
                assert got == state, f"task {tid}: after restart {got}, acknowledged {state}"
            checked += 1
    assert checked > 10

    # No task beyond the acknowledged ones and the creates in flight.
    listed, cursor = [], None
    while True:
        params = {"limit": 200, **({"cursor": cursor} if cursor else {})}
        page = srv.list_tasks(token, **params).json()
        listed += [t["id"] for t in page["tasks"]]
        cursor = page["nextCursor"]
        if not cursor:
            break
    known = {tid for c in clients for tid in c.tasks}
    extra = set(listed) - known
    assert len(extra) <= sum(c.unknown_create for c in clients), extra

    # Exactly one email per acknowledged assignment, once the relay caught up.
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        counts = mail_counts(srv)
        if all(counts[key] >= lo for key, (lo, _) in expected_mails.items()):
            break
        time.sleep(0.2)
    time.sleep(1.0)
    counts = mail_counts(srv)
    for (email, title), (lo, hi) in expected_mails.items():
        n = counts[(email, title)]
        assert lo <= n <= hi, f"{email} about {title}: {n} emails, expected {lo}..{hi}"
    assert expected_mails, "no assignment in the load"
    assert sum(counts.values()) <= sum(hi for lo, hi in expected_mails.values())


def mail_counts(srv):
    """(recipient, task title) -> number of emails, over the whole Maildir."""
    counts = collections.Counter()
    for m in read_mails(srv.maildir):
        for title in set(re.findall(r"crash-[0-9a-f]{12}", m.text)):
            for addr in m.to_addrs:
                counts[(addr, title)] += 1
    return counts
