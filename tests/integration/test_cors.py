"""http.cors_origins (issue 25): a browser page on a listed origin may call the API. Its
preflight (OPTIONS with Origin and Access-Control-Request-Method) is answered 204 with
the methods and headers the API takes; every answer to that origin says it may read it
and which headers it may read (ETag, RateLimit-*, X-Request-Id, ...). Another origin
gets no CORS header, and its preflight 403. Without the setting nothing changes."""
import pytest

from conftest import assert_error, run_cli

APP = "https://app.example.com"


def preflight(srv, path, origin, method="POST", headers="authorization, content-type"):
    return srv.request("OPTIONS", path, headers={
        "Origin": origin, "Access-Control-Request-Method": method,
        "Access-Control-Request-Headers": headers})


def words(value):
    return {w.strip().lower() for w in (value or "").split(",")}


def test_preflight_and_responses_for_a_listed_origin(make_server):
    srv = make_server(http__cors_origins=f"http://localhost:8080, {APP}",
                      ratelimit__api_per_minute=50)
    for path, method in (("/api/task", "POST"), ("/api/task/1", "PATCH"),
                         ("/api/auth/login", "POST"), ("/api/task/1", "DELETE")):
        r = preflight(srv, path, APP, method)
        assert r.status_code == 204, (path, r.status_code, r.text)
        assert r.headers["Access-Control-Allow-Origin"] == APP
        assert "Origin" in r.headers["Vary"]
        assert method.lower() in words(r.headers["Access-Control-Allow-Methods"])
        assert words(r.headers["Access-Control-Allow-Headers"]) >= {
            "authorization", "content-type", "if-match", "if-none-match", "idempotency-key"}
        assert int(r.headers["Access-Control-Max-Age"]) > 0
        assert r.content == b""

    token, _ = srv.register()
    r = srv.post("/api/task", token=token, json={"title": "t", "description": "d"},
                 headers={"Origin": APP})
    assert r.status_code == 201
    assert r.headers["Access-Control-Allow-Origin"] == APP
    assert words(r.headers["Access-Control-Expose-Headers"]) >= {
        "etag", "location", "link", "retry-after", "ratelimit-limit", "ratelimit-remaining",
        "ratelimit-reset", "x-request-id"}
    # errors too: a page must be able to read why it was refused
    r = srv.get("/api/auth/me", headers={"Origin": APP})
    assert_error(r, 401)
    assert r.headers["Access-Control-Allow-Origin"] == APP
    # an origin compares without regard to case of scheme and host
    r = srv.get("/api/auth/me", headers={"Origin": "HTTP://LOCALHOST:8080"})
    assert r.headers["Access-Control-Allow-Origin"] == "HTTP://LOCALHOST:8080"


def test_other_origins_get_nothing(make_server):
    srv = make_server(http__cors_origins=APP)
    for origin in ("https://evil.example.com", "http://app.example.com",
                   "https://app.example.com:8443", "null"):
        r = preflight(srv, "/api/task", origin)
        assert_error(r, 403, "PERMISSION_DENIED")
        assert "Access-Control-Allow-Origin" not in r.headers
        r = srv.get("/api/auth/me", headers={"Origin": origin})
        assert r.status_code == 401
        assert "Access-Control-Allow-Origin" not in r.headers
        assert "Access-Control-Expose-Headers" not in r.headers
    # no Origin: no CORS header, and OPTIONS is an ordinary request
    r = srv.get("/api/auth/me")
    assert "Access-Control-Allow-Origin" not in r.headers
    assert srv.request("OPTIONS", "/api/task").status_code == 405


def test_any_origin_with_a_star(make_server):
    srv = make_server(http__cors_origins="*")
    r = preflight(srv, "/api/task", "https://anywhere.example")
    assert r.status_code == 204
    assert r.headers["Access-Control-Allow-Origin"] == "https://anywhere.example"
    assert "Access-Control-Allow-Credentials" not in r.headers  # no cookies, bearer only


def test_without_the_setting_there_is_no_cors(server):
    r = preflight(server, "/api/task", APP)
    assert r.status_code == 405, r.status_code
    assert "Access-Control-Allow-Origin" not in r.headers
    r = server.get("/healthz", headers={"Origin": APP})
    assert "Access-Control-Allow-Origin" not in r.headers


@pytest.mark.parametrize("value", ["app.example.com", "https://app.example.com/",
                                   "https://*.example.com", "ftp://x", "https://a, nope"])
def test_a_bad_origin_list_is_refused(tms_bin, value):
    p = run_cli(["config", "--set", f"http.cors_origins={value}"])
    assert p.returncode == 2, p.stderr
    assert "http.cors_origins" in p.stderr and "is not an origin" in p.stderr, p.stderr
