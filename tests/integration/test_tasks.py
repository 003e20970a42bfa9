"""Task routes of API.md: create, get, list, update, delete; validation, permissions,
versions and If-Match, filters and cursor pagination, Idempotency-Key, rate limit."""
import re
import secrets
import types

import pytest
import requests

from conftest import (assert_error, assert_task_shape, make_admin, unique_email)

from test_ratelimit import assert_429


def new_team(server):
    """creator, assignee, other: plain users, each with token and user."""
    t = types.SimpleNamespace()
    t.creator_token, t.creator = server.register(unique_email("creator"))
    t.assignee_token, t.assignee = server.register(unique_email("assignee"))
    t.other_token, t.other = server.register(unique_email("other"))
    return t


@pytest.fixture(scope="module")
def team(server):
    """Shared by the tests of this module (registering costs a password hash); tests
    that count tasks per assignee use fresh_team."""
    return new_team(server)


@pytest.fixture
def fresh_team(server):
    return new_team(server)


@pytest.fixture(scope="module")
def admin_token(server):
    return make_admin(server)[0]


def etag_version(resp):
    etag = resp.headers.get("ETag")
    assert etag is not None, f"no ETag header: {dict(resp.headers)}"
    assert etag == f'"{resp.json()["version"]}"', f"ETag {etag!r} vs body {resp.json()}"
    return resp.json()["version"]


# -- create -----------------------------------------------------------------------

def test_create_minimal(server, team):
    r = server.post("/api/task", token=team.creator_token,
                    json={"title": "Write tests", "description": "for the task routes"})
    assert r.status_code == 201, r.text
    assert r.headers.get("Content-Type", "").startswith("application/json")
    t = assert_task_shape(r.json())
    assert t["title"] == "Write tests"
    assert t["description"] == "for the task routes"
    assert t["status"] == "open"
    assert t["assignedTo"] is None
    assert t["createdBy"] == team.creator["id"]
    assert t["version"] == 1
    assert t["createdAt"] == t["updatedAt"]


def test_create_full(server, team):
    t = server.create_task(team.creator_token, title="Full", description="All fields",
                           status="in progress", assignedTo=team.assignee["id"])
    assert_task_shape(t)
    assert t["status"] == "in progress"
    assert t["assignedTo"] == team.assignee["id"]
    assert t["createdBy"] == team.creator["id"]
    assert t["version"] == 1
    got = server.task_ok(team.other_token, t["id"])
    assert got == t


def test_create_ids_increase(server, team):
    ids = [int(server.create_task(team.creator_token)["id"]) for _ in range(3)]
    assert ids == sorted(ids) and len(set(ids)) == 3, ids


def test_create_trims_title_and_description(server, team):
    t = server.create_task(team.creator_token, title="  \t padded title \n ",
                           description="\n  padded description  ")
    assert t["title"] == "padded title"
    assert t["description"] == "padded description"


@pytest.mark.parametrize("status", ["open", "in progress", "closed"])
def test_create_each_status(server, team, status):
    assert server.create_task(team.creator_token, status=status)["status"] == status


def test_create_null_assignee_means_none(server, team):
    r = server.post("/api/task", token=team.creator_token,
                    json={"title": "t", "description": "d", "assignedTo": None})
    # null is how a task says "no assignee"; it may be accepted or rejected, never 5xx
    if r.status_code == 201:
        assert r.json()["assignedTo"] is None
    else:
        assert_error(r, 400, "INVALID_ARGUMENT")


@pytest.mark.parametrize("title,description", [
    ("t" * 200, "d" * 10000),
    ("\u00e9" * 200, "\u00e9" * 10000),          # characters, not bytes
    ("\U0001F600" * 200, "\u4e2d" * 10000),        # 4-byte and 3-byte UTF-8
    ("  " + "x" * 200 + "  ", "  " + "y" * 10000 + "  "),  # length after trim
], ids=["ascii-max", "latin1-max", "emoji-cjk-max", "padded-max"])
def test_create_length_boundaries_ok(server, team, title, description):
    t = server.create_task(team.creator_token, title=title, description=description)
    assert t["title"] == title.strip()
    assert t["description"] == description.strip()
    assert server.task_ok(team.creator_token, t["id"])["title"] == title.strip()


BAD_CREATE = {
    "empty-object": {},
    "missing-title": {"description": "d"},
    "missing-description": {"title": "t"},
    "title-empty": {"title": "", "description": "d"},
    "title-blank": {"title": "  \t\n ", "description": "d"},
    "description-empty": {"title": "t", "description": ""},
    "description-blank": {"title": "t", "description": "   "},
    "title-201": {"title": "t" * 201, "description": "d"},
    "title-201-utf8": {"title": "\u00e9" * 201, "description": "d"},
    "title-201-emoji": {"title": "\U0001F600" * 201, "description": "d"},
    "description-10001": {"title": "t", "description": "d" * 10001},
    "description-10001-utf8": {"title": "t", "description": "\u00e9" * 10001},
    "title-number": {"title": 1, "description": "d"},
    "title-null": {"title": None, "description": "d"},
    "title-array": {"title": ["t"], "description": "d"},
    "title-object": {"title": {"t": 1}, "description": "d"},
    "title-bool": {"title": True, "description": "d"},
    "description-number": {"title": "t", "description": 5},
    "description-null": {"title": "t", "description": None},
    "status-unknown": {"title": "t", "description": "d", "status": "done"},
    "status-case": {"title": "t", "description": "d", "status": "Open"},
    "status-underscore": {"title": "t", "description": "d", "status": "in_progress"},
    "status-empty": {"title": "t", "description": "d", "status": ""},
    "status-number": {"title": "t", "description": "d", "status": 1},
    "assignee-number": {"title": "t", "description": "d", "assignedTo": 123},
    "assignee-malformed": {"title": "t", "description": "d", "assignedTo": "not-a-user-id"},
    "assignee-object": {"title": "t", "description": "d", "assignedTo": {"id": "x"}},
    "unknown-field": {"title": "t", "description": "d", "priority": "high"},
    "id-field": {"title": "t", "description": "d", "id": "7"},
    "version-field": {"title": "t", "description": "d", "version": 1},
    "createdBy-field": {"title": "t", "description": "d", "createdBy": "a" * 24},
}


@pytest.mark.parametrize("body", list(BAD_CREATE.values()), ids=list(BAD_CREATE))
def test_create_validation_400(server, team, body):
    r = server.post("/api/task", token=team.creator_token, json=body)
    assert_error(r, 400, "INVALID_ARGUMENT")


def test_create_unknown_assignee_400(server, team):
    r = server.post("/api/task", token=team.creator_token,
                    json={"title": "t", "description": "d", "assignedTo": secrets.token_hex(12)})
    err = assert_error(r, 400, "INVALID_ARGUMENT")
    assert err["message"] == "Assigned user does not exist", err


def test_create_deleted_assignee_400(server, team):
    tok, gone = server.register()
    assert server.delete(f"/api/auth/delete/{gone['id']}", token=tok).status_code == 200
    r = server.post("/api/task", token=team.creator_token,
                    json={"title": "t", "description": "d", "assignedTo": gone["id"]})
    err = assert_error(r, 400, "INVALID_ARGUMENT")
    assert err["message"] == "Assigned user does not exist", err


RAW_BAD = {
    "malformed": b'{"title": "t", "description": ',
    "trailing-garbage": b'{"title": "t", "description": "d"} x',
    "array": b'[{"title": "t", "description": "d"}]',
    "string": b'"t"',
    "null": b"null",
    "empty": b"",
    "duplicate-nonsense": b'{"title": "t", "description": "d",}',
    "bad-utf8": b'{"title": "\xff\xfe", "description": "d"}',
}


@pytest.mark.parametrize("raw", list(RAW_BAD.values()), ids=list(RAW_BAD))
def test_create_malformed_body_400(server, team, raw):
    r = server.post("/api/task", token=team.creator_token, data=raw,
                    headers={"Content-Type": "application/json"})
    assert_error(r, 400, "INVALID_ARGUMENT")


# -- auth on every route ------------------------------------------------------------

@pytest.mark.parametrize("method,path", [
    ("POST", "/api/task"), ("GET", "/api/task"), ("GET", "/api/task/1"),
    ("PATCH", "/api/task/1"), ("DELETE", "/api/task/1")])
@pytest.mark.parametrize("token", [None, "garbage", "a.b.c"], ids=["none", "garbage", "abc"])
def test_task_routes_need_token(server, method, path, token):
    body = {"title": "t", "description": "d"} if method in ("POST", "PATCH") else None
    r = server.request(method, path, token=token, json=body)
    assert_error(r, 401, "UNAUTHENTICATED")


def test_logged_out_token_401_on_tasks(server, team):
    t = server.create_task(team.creator_token)
    tok, _ = server.register()
    assert server.post("/api/auth/logout", token=tok).status_code == 200
    assert_error(server.get_task(tok, t["id"]), 401, "UNAUTHENTICATED")
    assert_error(server.post("/api/task", token=tok, json={"title": "t", "description": "d"}),
                 401, "UNAUTHENTICATED")


# -- get ---------------------------------------------------------------------------

def test_get_any_user_with_etag(server, team):
    t = server.create_task(team.creator_token, assignedTo=team.assignee["id"])
    for tok in (team.creator_token, team.assignee_token, team.other_token):
        r = server.get_task(tok, t["id"])
        assert r.status_code == 200, r.text
        assert r.json() == t
        assert etag_version(r) == 1


@pytest.mark.parametrize("bad", ["abc", "1a", "1.5", "0x10", "%20", "1e3", "+1", "01"])
def test_malformed_task_id_400(server, team, bad):
    for method in ("GET", "PATCH", "DELETE"):
        r = server.request(method, f"/api/task/{bad}", token=team.creator_token,
                           json={"status": "closed"} if method == "PATCH" else None)
        assert_error(r, 400, "INVALID_ARGUMENT")


@pytest.mark.parametrize("odd", ["-1", "0", "99999999999999999999999"])
def test_odd_task_id_400_or_404(server, team, odd):
    r = server.get_task(team.creator_token, odd)
    assert r.status_code in (400, 404), r.text
    assert_error(r, r.status_code)


def test_missing_task_404(server, team):
    missing = "9000000000000000000"
    assert_error(server.get_task(team.creator_token, missing), 404, "NOT_FOUND")
    assert_error(server.patch(f"/api/task/{missing}", token=team.creator_token,
                              json={"status": "closed"}), 404, "NOT_FOUND")
    assert_error(server.delete(f"/api/task/{missing}", token=team.creator_token), 404,
                 "NOT_FOUND")


def test_reads_see_every_acknowledged_write(server, fresh_team):
    """Reads are served on the loop by a connection of their own (issue 19), writes by
    the store's writer: a GET or list right after a 201, 200 or delete answer shows it."""
    me, a = fresh_team.creator_token, fresh_team.assignee["id"]
    ids = []
    for i in range(40):
        t = server.create_task(me, title=f"ryw {i}", assignedTo=a)
        ids.append(t["id"])
        assert server.task_ok(fresh_team.other_token, t["id"]) == t
        r = server.list_tasks(me, assignedTo=a, limit=100)
        assert r.status_code == 200, r.text
        assert [x["id"] for x in r.json()["tasks"]] == ids
        r = server.patch(f"/api/task/{t['id']}", token=me, json={"status": "closed"})
        assert r.status_code == 200, r.text
        assert server.task_ok(me, t["id"]) == r.json()
        r = server.list_tasks(me, assignedTo=a, status="closed", limit=100)
        assert [x["id"] for x in r.json()["tasks"]] == ids
        if i % 2:
            assert server.delete(f"/api/task/{t['id']}", token=me).status_code in (200, 204)
            assert_error(server.get_task(me, t["id"]), 404, "NOT_FOUND")
            ids.pop()


# -- update --------------------------------------------------------------------------

def test_update_partial_and_version(server, team):
    t = server.create_task(team.creator_token, title="v1", description="desc")
    r = server.patch(f"/api/task/{t['id']}", token=team.creator_token,
                     json={"status": "in progress"})
    assert r.status_code == 200, r.text
    u = assert_task_shape(r.json())
    assert u["version"] == 2
    assert u["status"] == "in progress"
    assert (u["title"], u["description"], u["assignedTo"]) == ("v1", "desc", None)
    assert (u["id"], u["createdBy"], u["createdAt"]) == (t["id"], t["createdBy"], t["createdAt"])
    assert u["updatedAt"] >= t["updatedAt"]
    r = server.patch(f"/api/task/{t['id']}", token=team.creator_token,
                     json={"title": "  v3  ", "description": "new desc"})
    assert r.status_code == 200, r.text
    u = r.json()
    assert (u["title"], u["description"], u["status"], u["version"]) == \
        ("v3", "new desc", "in progress", 3)
    r = server.patch(f"/api/task/{t['id']}", token=team.creator_token,
                     json={"assignedTo": team.assignee["id"], "status": "closed"})
    assert r.status_code == 200, r.text
    u = r.json()
    assert (u["assignedTo"], u["status"], u["version"]) == (team.assignee["id"], "closed", 4)
    g = server.get_task(team.other_token, t["id"])
    assert g.json() == u
    assert etag_version(g) == 4


def test_update_unassign_with_null(server, team):
    t = server.create_task(team.creator_token, assignedTo=team.assignee["id"])
    r = server.patch(f"/api/task/{t['id']}", token=team.creator_token, json={"assignedTo": None})
    assert r.status_code == 200, r.text
    assert r.json()["assignedTo"] is None
    assert r.json()["version"] == 2
    assert server.task_ok(team.creator_token, t["id"])["assignedTo"] is None


BAD_PATCH = {
    "empty-object": {},
    "title-empty": {"title": ""},
    "title-blank": {"title": "   "},
    "title-null": {"title": None},
    "title-number": {"title": 3},
    "title-201": {"title": "t" * 201},
    "title-201-utf8": {"title": "\u00e9" * 201},
    "description-empty": {"description": ""},
    "description-null": {"description": None},
    "description-10001": {"description": "d" * 10001},
    "status-unknown": {"status": "done"},
    "status-null": {"status": None},
    "status-number": {"status": 2},
    "assignee-number": {"assignedTo": 42},
    "assignee-malformed": {"assignedTo": "xyz"},
    "unknown-field": {"priority": 1},
    "unknown-with-valid": {"status": "closed", "owner": "me"},
    "id-field": {"id": "1"},
    "version-field": {"version": 5},
    "createdBy-field": {"createdBy": "b" * 24},
}


@pytest.mark.parametrize("body", list(BAD_PATCH.values()), ids=list(BAD_PATCH))
def test_update_validation_400(server, team, body):
    t = server.create_task(team.creator_token, title="keep", description="keep too")
    r = server.patch(f"/api/task/{t['id']}", token=team.creator_token, json=body)
    assert_error(r, 400, "INVALID_ARGUMENT")
    assert server.task_ok(team.creator_token, t["id"]) == t


def test_update_unknown_assignee_400(server, team):
    t = server.create_task(team.creator_token)
    r = server.patch(f"/api/task/{t['id']}", token=team.creator_token,
                     json={"assignedTo": secrets.token_hex(12)})
    err = assert_error(r, 400, "INVALID_ARGUMENT")
    assert err["message"] == "Assigned user does not exist", err
    assert server.task_ok(team.creator_token, t["id"])["version"] == 1


@pytest.mark.parametrize("raw", [b"", b"{", b"[]", b"null", b'"x"', b'{"status": "closed"} 1'],
                         ids=["empty", "open-brace", "array", "null", "string", "trailing"])
def test_update_malformed_body_400(server, team, raw):
    t = server.create_task(team.creator_token)
    r = server.patch(f"/api/task/{t['id']}", token=team.creator_token, data=raw,
                     headers={"Content-Type": "application/json"})
    assert_error(r, 400, "INVALID_ARGUMENT")
    assert server.task_ok(team.creator_token, t["id"])["version"] == 1


def test_update_permissions(server, team, admin_token):
    t = server.create_task(team.creator_token, assignedTo=team.assignee["id"])
    path = f"/api/task/{t['id']}"
    assert_error(server.patch(path, token=team.other_token, json={"status": "closed"}), 403,
                 "PERMISSION_DENIED")
    assert server.task_ok(team.creator_token, t["id"])["version"] == 1
    r = server.patch(path, token=team.assignee_token, json={"status": "in progress"})
    assert r.status_code == 200, r.text
    assert r.json()["version"] == 2
    r = server.patch(path, token=team.creator_token, json={"title": "by creator"})
    assert r.status_code == 200, r.text
    r = server.patch(path, token=admin_token, json={"status": "closed"})
    assert r.status_code == 200, r.text
    assert r.json()["version"] == 4
    # the assignee may hand the task to someone else; then the old assignee is an outsider
    r = server.patch(path, token=team.assignee_token, json={"assignedTo": team.other["id"]})
    assert r.status_code == 200, r.text
    assert_error(server.patch(path, token=team.assignee_token, json={"status": "open"}), 403,
                 "PERMISSION_DENIED")
    r = server.patch(path, token=team.other_token, json={"status": "open"})
    assert r.status_code == 200, r.text
    assert r.json()["version"] == 6


def test_update_forbidden_beats_validation_or_not_leaky(server, team):
    """A 403 for an outsider never changes the task, whatever the body."""
    t = server.create_task(team.creator_token)
    r = server.patch(f"/api/task/{t['id']}", token=team.other_token, json={"title": "x" * 300})
    assert r.status_code in (400, 403), r.text
    assert server.task_ok(team.creator_token, t["id"]) == t


# -- If-Match / ETag -------------------------------------------------------------------

@pytest.mark.parametrize("fmt", ['"{}"', 'W/"{}"', "{}"], ids=["strong", "weak", "bare"])
def test_if_match_patch(server, team, fmt):
    t = server.create_task(team.creator_token)
    path = f"/api/task/{t['id']}"
    r = server.patch(path, token=team.creator_token, json={"status": "closed"},
                     headers={"If-Match": fmt.format(1)})
    assert r.status_code == 200, r.text
    assert r.json()["version"] == 2
    # stale version now
    r = server.patch(path, token=team.creator_token, json={"title": "lost update"},
                     headers={"If-Match": fmt.format(1)})
    assert_error(r, 412, "FAILED_PRECONDITION")
    got = server.get_task(team.creator_token, t["id"])
    assert got.json()["title"] == t["title"] and etag_version(got) == 2
    # a future version is a mismatch too
    r = server.patch(path, token=team.creator_token, json={"title": "x"},
                     headers={"If-Match": fmt.format(3)})
    assert_error(r, 412, "FAILED_PRECONDITION")
    r = server.patch(path, token=team.creator_token, json={"title": "right version"},
                     headers={"If-Match": got.headers["ETag"]})
    assert r.status_code == 200, r.text
    assert r.json()["version"] == 3


def test_if_match_conflict_between_two_writers(server, team):
    t = server.create_task(team.creator_token, assignedTo=team.assignee["id"])
    path = f"/api/task/{t['id']}"
    etag_a = server.get_task(team.creator_token, t["id"]).headers["ETag"]
    etag_b = server.get_task(team.assignee_token, t["id"]).headers["ETag"]
    assert etag_a == etag_b == '"1"'
    ra = server.patch(path, token=team.creator_token, json={"title": "A"},
                      headers={"If-Match": etag_a})
    rb = server.patch(path, token=team.assignee_token, json={"title": "B"},
                      headers={"If-Match": etag_b})
    assert ra.status_code == 200, ra.text
    assert_error(rb, 412, "FAILED_PRECONDITION")
    assert server.task_ok(team.creator_token, t["id"])["title"] == "A"


def test_if_match_delete(server, team):
    t = server.create_task(team.creator_token)
    path = f"/api/task/{t['id']}"
    assert server.patch(path, token=team.creator_token, json={"status": "closed"}).status_code == 200
    for stale in ('"1"', "1", 'W/"1"', '"7"'):
        assert_error(server.delete(path, token=team.creator_token, headers={"If-Match": stale}),
                     412, "FAILED_PRECONDITION")
    assert server.get_task(team.creator_token, t["id"]).status_code == 200
    r = server.delete(path, token=team.creator_token, headers={"If-Match": '"2"'})
    assert r.status_code == 200, r.text
    assert r.json() == {"message": "Task deleted"}
    assert_error(server.get_task(team.creator_token, t["id"]), 404, "NOT_FOUND")


def test_if_match_concurrent_writers_one_wins(server, team):
    import threading
    t = server.create_task(team.creator_token)
    results = []

    def go(i):
        results.append(server.patch(f"/api/task/{t['id']}", token=team.creator_token,
                                    json={"title": f"writer {i}"}, headers={"If-Match": '"1"'}))

    threads = [threading.Thread(target=go, args=(i,)) for i in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    codes = sorted(r.status_code for r in results)
    assert codes == [200] + [412] * 7, [(r.status_code, r.text[:200]) for r in results]
    for r in results:  # the actor's words, whether it or the store saw the conflict
        if r.status_code == 412:
            assert re.fullmatch(rf"version mismatch: task {t['id']} is at version 2",
                                r.json()["error"]["message"]), r.text
    winner = next(r.json() for r in results if r.status_code == 200)
    now = server.task_ok(team.creator_token, t["id"])
    assert now == winner and now["version"] == 2


def test_unconditional_concurrent_updates_count_versions(server, team):
    """PATCH without If-Match asks for no particular version: concurrent ones all apply,
    one after the other, each adding one to the version (no lost update, no refusal)."""
    import threading
    writers = 12
    for _ in range(5):
        t = server.create_task(team.creator_token)
        results = []

        def go(i):
            results.append(server.patch(f"/api/task/{t['id']}", token=team.creator_token,
                                        json={"description": f"writer {i}"}))

        threads = [threading.Thread(target=go, args=(i,)) for i in range(writers)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        bad = [(r.status_code, r.text[:200]) for r in results if r.status_code != 200]
        assert not bad, f"{len(bad)} of {writers} concurrent unconditional PATCHes failed: {bad}"
        assert sorted(r.json()["version"] for r in results) == list(range(2, writers + 2))
        assert server.task_ok(team.creator_token, t["id"])["version"] == writers + 1


def test_garbage_if_match(server, team):
    t = server.create_task(team.creator_token)
    r = server.patch(f"/api/task/{t['id']}", token=team.creator_token, json={"status": "closed"},
                     headers={"If-Match": '"abc"'})
    assert r.status_code in (400, 412), r.text
    assert_error(r, r.status_code)
    assert server.task_ok(team.creator_token, t["id"])["version"] == 1


# -- delete -----------------------------------------------------------------------------

def test_delete_by_creator(server, team):
    t = server.create_task(team.creator_token)
    r = server.delete(f"/api/task/{t['id']}", token=team.creator_token)
    assert r.status_code == 200, r.text
    assert r.headers.get("Content-Type", "").startswith("application/json")
    assert r.json() == {"message": "Task deleted"}
    assert_error(server.get_task(team.creator_token, t["id"]), 404, "NOT_FOUND")
    assert_error(server.delete(f"/api/task/{t['id']}", token=team.creator_token), 404,
                 "NOT_FOUND")
    assert_error(server.patch(f"/api/task/{t['id']}", token=team.creator_token,
                              json={"status": "closed"}), 404, "NOT_FOUND")
    # ids are not reused
    t2 = server.create_task(team.creator_token)
    assert int(t2["id"]) > int(t["id"])


def test_delete_permissions(server, team, admin_token):
    t = server.create_task(team.creator_token, assignedTo=team.assignee["id"])
    path = f"/api/task/{t['id']}"
    assert_error(server.delete(path, token=team.assignee_token), 403, "PERMISSION_DENIED")
    assert_error(server.delete(path, token=team.other_token), 403, "PERMISSION_DENIED")
    assert server.task_ok(team.other_token, t["id"]) == t
    r = server.delete(path, token=admin_token)
    assert r.status_code == 200, r.text
    assert r.json() == {"message": "Task deleted"}
    assert_error(server.get_task(team.creator_token, t["id"]), 404, "NOT_FOUND")


# -- list ----------------------------------------------------------------------------------

def test_list_shape_and_filters(server, fresh_team):
    a, b = fresh_team.assignee["id"], fresh_team.other["id"]
    made = [
        server.create_task(fresh_team.creator_token, assignedTo=a, status="open"),
        server.create_task(fresh_team.creator_token, assignedTo=a, status="closed"),
        server.create_task(fresh_team.creator_token, assignedTo=b, status="closed"),
        server.create_task(fresh_team.creator_token, assignedTo=a, status="in progress"),
        server.create_task(fresh_team.creator_token, assignedTo=a, status="closed"),
    ]
    r = server.list_tasks(fresh_team.other_token, assignedTo=a)
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) == {"tasks", "nextCursor"}, body.keys()
    assert body["nextCursor"] is None
    for t in body["tasks"]:
        assert_task_shape(t)
    assert [t["id"] for t in body["tasks"]] == [made[i]["id"] for i in (0, 1, 3, 4)]
    assert body["tasks"][0] == made[0]
    # combined filters: AND
    r = server.list_tasks(fresh_team.creator_token, assignedTo=a, status="closed")
    assert r.status_code == 200, r.text
    assert [t["id"] for t in r.json()["tasks"]] == [made[1]["id"], made[4]["id"]]
    # status with a space, percent-encoded
    r = server.get(f"/api/task?assignedTo={a}&status=in%20progress", token=fresh_team.creator_token)
    assert r.status_code == 200, r.text
    assert [t["id"] for t in r.json()["tasks"]] == [made[3]["id"]]
    r = server.list_tasks(fresh_team.creator_token, assignedTo=b, status="open")
    assert r.status_code == 200 and r.json() == {"tasks": [], "nextCursor": None}, r.text
    # status filter alone returns only that status, ascending ids
    r = server.list_tasks(fresh_team.creator_token, status="closed", limit=200)
    assert r.status_code == 200, r.text
    ts = r.json()["tasks"]
    assert ts and all(t["status"] == "closed" for t in ts)
    ids = [int(t["id"]) for t in ts]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)


def test_list_status_plus_encoding(server, fresh_team):
    """`+` is a space in a query string (application/x-www-form-urlencoded, as Express)."""
    a = fresh_team.assignee["id"]
    t = server.create_task(fresh_team.creator_token, assignedTo=a, status="in progress")
    server.create_task(fresh_team.creator_token, assignedTo=a, status="open")
    r = server.get(f"/api/task?assignedTo={a}&status=in+progress", token=fresh_team.creator_token)
    assert r.status_code == 200, r.text
    assert [x["id"] for x in r.json()["tasks"]] == [t["id"]]


def test_list_unknown_assignee_empty(server, team):
    r = server.list_tasks(team.creator_token, assignedTo=secrets.token_hex(12))
    assert r.status_code == 200, r.text
    assert r.json() == {"tasks": [], "nextCursor": None}


def test_list_status_filter_invalid_400(server, team):
    r = server.list_tasks(team.creator_token, status="done")
    assert_error(r, 400, "INVALID_ARGUMENT")


@pytest.mark.parametrize("limit", ["0", "201", "-1", "abc", "1.5", "10abc",
                                   "99999999999999999999"])
def test_list_limit_bounds_400(server, team, limit):
    r = server.get(f"/api/task?limit={limit}", token=team.creator_token)
    assert_error(r, 400, "INVALID_ARGUMENT")


@pytest.mark.parametrize("cursor", ["garbage", "!!!", "%00", "a" * 300, "eyJ9"])
def test_list_invalid_cursor_400(server, team, cursor):
    r = server.get(f"/api/task?cursor={cursor}", token=team.creator_token)
    assert_error(r, 400, "INVALID_ARGUMENT")


def test_list_after_delete_and_update(server, fresh_team):
    a = fresh_team.assignee["id"]
    t1 = server.create_task(fresh_team.creator_token, assignedTo=a)
    t2 = server.create_task(fresh_team.creator_token, assignedTo=a)
    t3 = server.create_task(fresh_team.creator_token, assignedTo=a)
    server.delete(f"/api/task/{t2['id']}", token=fresh_team.creator_token)
    server.patch(f"/api/task/{t3['id']}", token=fresh_team.creator_token, json={"assignedTo": None})
    r = server.list_tasks(fresh_team.creator_token, assignedTo=a)
    assert [t["id"] for t in r.json()["tasks"]] == [t1["id"]]


def walk(srv, token, limit, **filters):
    """Follow nextCursor to the end; returns (ids, pages)."""
    ids, pages, cursor = [], 0, None
    sess = requests.Session()
    while True:
        params = dict(filters, limit=limit)
        if cursor is not None:
            params["cursor"] = cursor
        r = sess.get(srv.url("/api/task"), params=params,
                     headers={"Authorization": f"Bearer {token}"}, timeout=10)
        assert r.status_code == 200, f"page {pages}: {r.status_code} {r.text[:300]}"
        body = r.json()
        pages += 1
        assert len(body["tasks"]) <= limit
        ids += [t["id"] for t in body["tasks"]]
        cursor = body["nextCursor"]
        if cursor is None:
            return ids, pages
        assert isinstance(cursor, str) and cursor, body["nextCursor"]
        assert body["tasks"], "empty page with a non-null nextCursor"
        assert pages < 1000, "pagination does not end"


def test_pagination_walks_every_task_once(make_server):
    srv = make_server()
    tok, _ = srv.register()
    tok2, u2 = srv.register()
    sess = requests.Session()
    h = {"Authorization": f"Bearer {tok}"}
    created = []
    for i in range(300):
        body = {"title": f"task {i}", "description": "d",
                "status": ("open", "closed")[i % 2]}
        if i % 3 == 0:
            body["assignedTo"] = u2["id"]
        r = sess.post(srv.url("/api/task"), json=body, headers=h, timeout=10)
        assert r.status_code == 201, r.text
        created.append(r.json())
    all_ids = [t["id"] for t in created]
    assert [int(x) for x in all_ids] == sorted(int(x) for x in all_ids)

    # default limit is 50
    r = srv.list_tasks(tok2)
    assert r.status_code == 200
    assert [t["id"] for t in r.json()["tasks"]] == all_ids[:50]
    assert r.json()["nextCursor"] is not None
    r = srv.list_tasks(tok2, limit=200)
    assert len(r.json()["tasks"]) == 200 and r.json()["nextCursor"] is not None

    for limit in (7, 100, 200):
        ids, pages = walk(srv, tok2, limit)
        assert ids == all_ids, f"limit {limit}: {len(ids)} ids, dups/missing"
        assert pages in (-(-300 // limit), -(-300 // limit) + 1), (limit, pages)
    ids, _ = walk(srv, tok, 1, assignedTo=u2["id"], status="closed")
    want = [t["id"] for i, t in enumerate(created) if i % 3 == 0 and i % 2 == 1]
    assert ids == want
    ids, _ = walk(srv, tok, 13, status="open")
    assert ids == [t["id"] for i, t in enumerate(created) if i % 2 == 0]

    # a cursor stays valid while tasks change: delete the next tasks, create new ones
    r = srv.list_tasks(tok, limit=10)
    cursor = r.json()["nextCursor"]
    for x in all_ids[10:15]:
        assert srv.delete(f"/api/task/{x}", token=tok).status_code == 200
    newer = srv.create_task(tok)
    r = srv.list_tasks(tok, limit=10, cursor=cursor)
    assert r.status_code == 200, r.text
    assert [t["id"] for t in r.json()["tasks"]] == all_ids[15:25]
    ids, _ = walk(srv, tok, 200)
    assert ids == all_ids[:10] + all_ids[15:] + [newer["id"]]


# -- Idempotency-Key -------------------------------------------------------------------------

def test_idempotent_create_same_key_same_body(server, fresh_team):
    key = secrets.token_hex(8)
    body = {"title": "idem", "description": "once", "assignedTo": fresh_team.assignee["id"]}
    r1 = server.post("/api/task", token=fresh_team.creator_token, json=body,
                     headers={"Idempotency-Key": key})
    assert r1.status_code == 201, r1.text
    r2 = server.post("/api/task", token=fresh_team.creator_token, json=body,
                     headers={"Idempotency-Key": key})
    assert r2.status_code == 201, r2.text
    assert r2.json() == r1.json()
    r = server.list_tasks(fresh_team.creator_token, assignedTo=fresh_team.assignee["id"])
    assert [t["id"] for t in r.json()["tasks"]] == [r1.json()["id"]]
    # without a key, the same body makes a second task
    r3 = server.post("/api/task", token=fresh_team.creator_token, json=body)
    assert r3.status_code == 201 and r3.json()["id"] != r1.json()["id"]


def test_idempotent_key_different_body_409(server, team):
    key = secrets.token_hex(8)
    r1 = server.post("/api/task", token=team.creator_token,
                     json={"title": "first", "description": "d"}, headers={"Idempotency-Key": key})
    assert r1.status_code == 201, r1.text
    r2 = server.post("/api/task", token=team.creator_token,
                     json={"title": "second", "description": "d"}, headers={"Idempotency-Key": key})
    err = assert_error(r2, 409, "ALREADY_EXISTS")
    assert err["message"] == "Idempotency-Key reused with a different request", err
    # the first result is still what the key returns
    r3 = server.post("/api/task", token=team.creator_token,
                     json={"title": "first", "description": "d"}, headers={"Idempotency-Key": key})
    assert r3.status_code == 201 and r3.json()["id"] == r1.json()["id"], r3.text


def test_idempotency_key_of_a_deleted_task_409(server, team):
    """The stores give a reason, the task actor the words: the same text on every store."""
    key = secrets.token_hex(8)
    body = {"title": "short-lived", "description": "d"}
    r1 = server.post("/api/task", token=team.creator_token, json=body,
                     headers={"Idempotency-Key": key})
    assert r1.status_code == 201, r1.text
    assert server.delete(f"/api/task/{r1.json()['id']}", token=team.creator_token).status_code == 200
    r2 = server.post("/api/task", token=team.creator_token, json=body,
                     headers={"Idempotency-Key": key})
    err = assert_error(r2, 409, "ALREADY_EXISTS")
    assert err["message"] == "Idempotency-Key was used for a task that no longer exists", err


def test_idempotency_key_is_per_user(server, team):
    key = secrets.token_hex(8)
    body = {"title": "shared key", "description": "d"}
    r1 = server.post("/api/task", token=team.creator_token, json=body,
                     headers={"Idempotency-Key": key})
    r2 = server.post("/api/task", token=team.other_token, json=body,
                     headers={"Idempotency-Key": key})
    assert r1.status_code == 201 and r2.status_code == 201, (r1.text, r2.text)
    assert r1.json()["id"] != r2.json()["id"]
    assert r2.json()["createdBy"] == team.other["id"]


def test_idempotent_replay_after_update_returns_first_result(server, team):
    key = secrets.token_hex(8)
    body = {"title": "replay", "description": "d"}
    r1 = server.post("/api/task", token=team.creator_token, json=body,
                     headers={"Idempotency-Key": key})
    assert r1.status_code == 201
    server.patch(f"/api/task/{r1.json()['id']}", token=team.creator_token,
                 json={"status": "closed"})
    r2 = server.post("/api/task", token=team.creator_token, json=body,
                     headers={"Idempotency-Key": key})
    assert r2.status_code == 201, r2.text
    assert r2.json()["id"] == r1.json()["id"]


def test_failed_create_does_not_burn_key(server, team):
    key = secrets.token_hex(8)
    r = server.post("/api/task", token=team.creator_token, json={"title": "", "description": "d"},
                    headers={"Idempotency-Key": key})
    assert_error(r, 400, "INVALID_ARGUMENT")
    r = server.post("/api/task", token=team.creator_token,
                    json={"title": "ok now", "description": "d"}, headers={"Idempotency-Key": key})
    assert r.status_code == 201, r.text


# -- rate limit ------------------------------------------------------------------------------

def test_task_create_rate_limit_per_user(make_server):
    srv = make_server(ratelimit__task_create_per_hour=3)
    tok, _ = srv.register()
    tok2, _ = srv.register()
    for _ in range(3):
        srv.create_task(tok)
    r = srv.post("/api/task", token=tok, json={"title": "4th", "description": "d"})
    ra = assert_429(r, limit=3)
    assert ra <= 3600
    # reads and updates are not task creations
    assert srv.list_tasks(tok).status_code == 200
    # another user has their own bucket
    srv.create_task(tok2)
    r = srv.list_tasks(tok2, limit=200)
    assert len(r.json()["tasks"]) == 4
