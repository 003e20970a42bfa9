"""REST conventions a client expects (issue 25): 201 with Location, If-None-Match and
304, a Link to the next page, unknown fields and query parameters refused by name,
malformed JSON located, the task creation limit counting only creations, relative
servers in /openapi.json, the admin route and auth.registration, logins that coexist
(auth.login_revokes_others), /metrics' process series and the limit label."""
import re
import secrets

import pytest
import requests

from conftest import (DEFAULT_PASSWORD, SPLIT, assert_error, assert_user_shape, make_admin,
                      unique_email)


# -- Location, ETag, Link -------------------------------------------------------------

def test_created_answers_carry_location(server):
    email = unique_email("loc")
    r = server.post("/api/auth/register", json={"email": email, "password": DEFAULT_PASSWORD})
    assert r.status_code == 201
    user = r.json()["user"]
    assert r.headers["Location"] == f"/api/auth/users/{user['id']}"
    token = r.json()["token"]
    got = server.get(r.headers["Location"], token=token)  # it is where it says
    assert got.status_code == 200 and got.json() == user

    r = server.post("/api/task", token=token, json={"title": "t", "description": "d"})
    assert r.status_code == 201
    assert r.headers["Location"] == f"/api/task/{r.json()['id']}"
    got = server.get(r.headers["Location"], token=token)
    assert got.status_code == 200 and got.json() == r.json()


def test_user_details_for_self_or_admin_only(server):
    token, user = server.register()
    other_token, other = server.register()
    r = server.get(f"/api/auth/users/{other['id']}", token=token)
    assert_error(r, 403, "PERMISSION_DENIED")
    assert "@" not in r.text  # no email leaked in the refusal
    admin_token, _ = make_admin(server)
    r = server.get(f"/api/auth/users/{other['id']}", token=admin_token)
    assert r.status_code == 200 and r.json() == other
    assert_error(server.get("/api/auth/users/nope", token=admin_token), 400)
    assert_error(server.get("/api/auth/users/" + "0" * 24, token=admin_token), 404)
    assert_error(server.get(f"/api/auth/users/{user['id']}"), 401)


def test_if_none_match_gives_304(server):
    token, _ = server.register()
    t = server.create_task(token)
    first = server.get_task(token, t["id"])
    etag = first.headers["ETag"]
    r = server.get(f"/api/task/{t['id']}", token=token, headers={"If-None-Match": etag})
    assert r.status_code == 304, r.text
    assert r.content == b"" and r.headers["ETag"] == etag
    assert "Content-Length" not in r.headers or r.headers["Content-Length"] == str(
        len(first.content))
    for header in (f"W/{etag}", f'"999", {etag}', "*"):
        assert server.get(f"/api/task/{t['id']}", token=token,
                          headers={"If-None-Match": header}).status_code == 304, header
    # a change makes the ETag stale: the new version comes back in full
    server.patch(f"/api/task/{t['id']}", token=token, json={"title": "changed"})
    r = server.get(f"/api/task/{t['id']}", token=token, headers={"If-None-Match": etag})
    assert r.status_code == 200 and r.json()["title"] == "changed"
    assert r.headers["ETag"] != etag
    # 304 is for reads: If-None-Match means nothing to the auth of a request
    assert_error(server.get(f"/api/task/{t['id']}", headers={"If-None-Match": "*"}), 401)


def test_list_link_header_walks_every_page(make_server):
    srv = make_server()
    token, user = srv.register()
    ids = [srv.create_task(token, status="closed")["id"] for _ in range(5)]
    srv.create_task(token)  # open: filtered out
    url = srv.url("/api/task?status=closed&limit=2")
    seen, pages = [], 0
    while url:
        r = requests.get(url, headers={"Authorization": f"Bearer {token}"}, timeout=10)
        assert r.status_code == 200, r.text
        body = r.json()
        seen += [t["id"] for t in body["tasks"]]
        pages += 1
        link = r.headers.get("Link")
        if body["nextCursor"] is None:
            assert link is None
            url = None
        else:
            m = re.fullmatch(r'<([^>]+)>; rel="next"', link or "")
            assert m, link
            assert "status=closed" in m.group(1) and "limit=2" in m.group(1)
            assert f"cursor={body['nextCursor']}" in m.group(1)
            url = requests.compat.urljoin(r.url, m.group(1))
    assert seen == ids and pages == 3


# -- refusals that name what is wrong ------------------------------------------------------

def test_register_refuses_unknown_fields(server):
    r = server.post("/api/auth/register", json={"email": unique_email(), "password":
                                                DEFAULT_PASSWORD, "role": "admin"})
    assert_error(r, 400, "INVALID_ARGUMENT")
    assert "unknown field: role" in r.json()["error"]["message"]
    # login stays as lenient as the original's (old clients send extra fields)
    email = unique_email()
    server.register(email)
    r = server.post("/api/auth/login", json={"email": email, "password": DEFAULT_PASSWORD,
                                             "remember": True})
    assert r.status_code == 200


@pytest.mark.parametrize("query,name", [
    ("statu=open", "statu"), ("assignedTo=x&sort=desc", "sort"), ("limit=2&offset=5", "offset"),
    ("a%20b=1", "a b"),
])
def test_unknown_list_parameters_refused_by_name(server, query, name):
    token, _ = server.register()
    r = server.get(f"/api/task?{query}", token=token)
    assert_error(r, 400, "INVALID_ARGUMENT")
    assert r.json()["error"]["message"].startswith(f"unknown query parameter: {name} "), r.text


def test_known_list_parameters_still_work(server):
    token, _ = server.register()
    assert server.get("/api/task?status=&limit=3", token=token).status_code == 200
    assert server.get("/api/task?status", token=token).status_code == 200  # no value: no filter


# the column is where the parser stopped: the last character of the offending token
@pytest.mark.parametrize("body,line,column", [
    ('{"title": "t",\n "description": }', 2, 17),
    ('{"title" "t"}', 1, 12),
    ('{"title": "t"', 1, 13),
])
def test_malformed_json_names_line_and_column(server, body, line, column):
    token, _ = server.register()
    for path in ("/api/task", "/api/auth/register"):
        r = server.post(path, token=token, data=body.encode(),
                        headers={"Content-Type": "application/json"})
        assert_error(r, 400, "INVALID_ARGUMENT")
        msg = r.json()["error"]["message"]
        assert msg.startswith(f"malformed JSON body at line {line}, column {column}"), msg


# -- the creation limit ---------------------------------------------------------------------

def test_creation_limit_counts_only_creations(make_server):
    srv = make_server(ratelimit__task_create_per_hour=3)
    token, _ = srv.register()
    for _ in range(5):  # refused creations use no slot
        r = srv.post("/api/task", token=token, json={"title": "", "description": "d"})
        assert_error(r, 400)
    first = srv.post("/api/task", token=token, json={"title": "a", "description": "d"},
                     headers={"Idempotency-Key": "k-1"})
    assert first.status_code == 201
    assert first.headers["RateLimit-Remaining"] == "2"
    for _ in range(7):  # replays answer the stored 201 and use no slot
        again = srv.post("/api/task", token=token, json={"title": "a", "description": "d"},
                         headers={"Idempotency-Key": "k-1"})
        assert again.status_code == 201 and again.json() == first.json()
        assert again.headers["RateLimit-Remaining"] == "2"
    assert srv.post("/api/task", token=token,
                    json={"title": "b", "description": "d"}).status_code == 201
    last = srv.post("/api/task", token=token, json={"title": "c", "description": "d"},
                    headers={"Idempotency-Key": "k-3"})
    assert last.status_code == 201
    assert last.headers["RateLimit-Remaining"] == "0"
    over = srv.post("/api/task", token=token, json={"title": "d", "description": "d"})
    assert_error(over, 429, "RESOURCE_EXHAUSTED")
    # used up: a replay of a key that created a task still gets its task back ...
    for key, made in (("k-1", first), ("k-3", last)):
        again = srv.post("/api/task", token=token, json=made.json() and
                         {"title": made.json()["title"], "description": "d"},
                         headers={"Idempotency-Key": key})
        assert again.status_code == 201 and again.json() == made.json(), again.text
    # ... but a new key, or a known key with another body, creates nothing
    assert_error(srv.post("/api/task", token=token, json={"title": "e", "description": "d"},
                          headers={"Idempotency-Key": "k-new"}), 429)
    assert_error(srv.post("/api/task", token=token, json={"title": "other", "description": "d"},
                          headers={"Idempotency-Key": "k-1"}), 409)
    tasks = srv.list_tasks(token).json()["tasks"]
    assert sorted(t["title"] for t in tasks) == ["a", "b", "c"]
    m = srv.get("/metrics").text
    assert re.search(r'^tms_ratelimited_total\{limit="task_create"\} [1-9]', m, re.M), m


# -- auth.registration and the admin route ------------------------------------------------------

def test_admin_creates_users_when_registration_is_admin(make_server):
    srv = make_server(auth__registration="admin")
    r = srv.post("/api/auth/register", json={"email": unique_email(), "password":
                                             DEFAULT_PASSWORD})
    assert_error(r, 403, "PERMISSION_DENIED")
    assert "POST /api/auth/users" in r.json()["error"]["message"]
    email = unique_email("admin")
    admin_args = ["user", "create", email, "--role", "admin", "--set",
                  f"data.dir={srv.data_dir}"]
    if "users.url" in srv.settings:
        admin_args += ["--set", f"users.url={srv.settings['users.url']}"]
    from conftest import run_cli
    if SPLIT:
        pytest.skip("tms user create writes one process's database")
    p = run_cli(admin_args, input=DEFAULT_PASSWORD + "\n")
    assert p.returncode == 0, p.stderr
    admin_token, _ = srv.login_ok(email)

    new_email = unique_email("new")
    r = srv.post("/api/auth/users", token=admin_token,
                 json={"email": new_email, "password": DEFAULT_PASSWORD})
    assert r.status_code == 201, r.text
    user = r.json()
    assert_user_shape(user, email=new_email, role="user")
    assert r.headers["Location"] == f"/api/auth/users/{user['id']}"
    assert "token" not in r.text
    token, _ = srv.login_ok(new_email)
    # a user may not create users
    r = srv.post("/api/auth/users", token=token,
                 json={"email": unique_email(), "password": DEFAULT_PASSWORD})
    assert_error(r, 403, "PERMISSION_DENIED")
    assert_error(srv.post("/api/auth/users", token=admin_token,
                          json={"email": new_email, "password": DEFAULT_PASSWORD}), 409)
    assert_error(srv.post("/api/auth/users", token=admin_token,
                          json={"email": unique_email(), "password": DEFAULT_PASSWORD,
                                "role": "admin"}), 400)
    assert_error(srv.post("/api/auth/users",
                          json={"email": unique_email(), "password": DEFAULT_PASSWORD}), 401)


def test_closed_registration_refuses_both_routes(make_server):
    srv = make_server(auth__registration="closed")
    assert_error(srv.post("/api/auth/register", json={"email": unique_email(),
                                                      "password": DEFAULT_PASSWORD}), 403)
    if SPLIT:
        pytest.skip("tms user create writes one process's database")
    admin_token, _ = make_admin_closed(srv)
    r = srv.post("/api/auth/users", token=admin_token,
                 json={"email": unique_email(), "password": DEFAULT_PASSWORD})
    assert_error(r, 403, "PERMISSION_DENIED")
    assert "tms user create" in r.json()["error"]["message"]


def make_admin_closed(srv):
    from conftest import run_cli
    email = unique_email("admin")
    args = ["user", "create", email, "--role", "admin", "--set", f"data.dir={srv.data_dir}"]
    if "users.url" in srv.settings:
        args += ["--set", f"users.url={srv.settings['users.url']}"]
    p = run_cli(args, input=DEFAULT_PASSWORD + "\n")
    assert p.returncode == 0, p.stderr
    return srv.login_ok(email)


# -- auth.login_revokes_others ----------------------------------------------------------------

def test_login_revokes_others_by_default(server):
    email = unique_email()
    first, _ = server.register(email)
    second, _ = server.login_ok(email)
    assert_error(server.me(first), 401)
    assert server.me(second).status_code == 200


def test_logins_coexist_when_configured(make_server):
    srv = make_server(auth__login_revokes_others="false")
    email = unique_email()
    first, _ = srv.register(email)
    second, _ = srv.login_ok(email)
    third, _ = srv.login_ok(email)
    for t in (first, second, third):
        assert srv.me(t).status_code == 200
    assert srv.post("/api/auth/logout", token=second).status_code == 200
    for t in (first, second, third):  # logout still ends them all
        assert_error(srv.me(t), 401)


# -- /openapi.json and /metrics ----------------------------------------------------------------

@pytest.mark.parametrize("path", ["/", "/api/tasks", "/api"])
def test_a_wrong_path_says_where_the_routes_are(server, path):
    r = server.get(path)
    assert_error(r, 404, "NOT_FOUND")
    assert "GET /openapi.json lists the routes" in r.json()["error"]["message"]


def test_openapi_servers_is_relative(server):
    doc = server.get("/openapi.json").json()
    assert [s["url"] for s in doc["servers"]] == ["/"]


def test_metrics_process_series_and_build_info(server):
    server.get("/healthz")
    text = server.get("/metrics").text
    values = {}
    for name in ("process_cpu_seconds_total", "process_resident_memory_bytes",
                 "process_open_fds", "process_start_time_seconds", "process_max_fds"):
        m = re.search(rf"^{name} ([0-9.e+]+)$", text, re.M)
        assert m, f"{name} missing"
        values[name] = float(m.group(1))
    assert "# TYPE process_cpu_seconds_total counter" in text
    assert values["process_resident_memory_bytes"] > 1 << 20
    assert values["process_open_fds"] >= 3
    import time
    assert abs(values["process_start_time_seconds"] - time.time()) < 24 * 3600
    m = re.search(r'^tms_build_info\{version="([^"]+)",commit="([^"]+)"\} 1$', text, re.M)
    assert m, "tms_build_info missing"
    from conftest import run_cli
    assert run_cli(["version"]).stdout.strip() == f"tms {m.group(1)} (commit {m.group(2)})"
    for limit in ("api", "login", "task_create"):
        assert re.search(rf'^tms_ratelimited_total\{{limit="{limit}"\}} \d+$', text, re.M), limit
