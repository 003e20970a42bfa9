"""Error format, unknown routes and X-Request-Id."""
import re

import pytest

from conftest import assert_error, raw_connect, RawReader


@pytest.mark.parametrize("method,path", [
    ("GET", "/api/nope"),
    ("GET", "/nope"),
    ("POST", "/api/auth/nope"),
    ("GET", "/api/auth/me/extra"),
    ("GET", "/api/auth/delete"),
    ("GET", "/"),
])
def test_unknown_route_404_json(server, method, path):
    assert_error(server.request(method, path), 404, "NOT_FOUND")


@pytest.mark.parametrize("method,path,allow", [
    ("GET", "/api/auth/register", {"POST"}),
    ("PUT", "/api/auth/login", {"POST"}),
    ("DELETE", "/api/auth/me", {"GET"}),
    ("GET", "/api/auth/logout", {"POST"}),
    ("POST", "/api/auth/delete/0123456789abcdef01234567", {"DELETE"}),
    ("PUT", "/api/task", {"GET", "POST"}),
    ("DELETE", "/api/task/", {"GET", "POST"}),
    ("POST", "/api/task/42", {"GET", "PATCH", "DELETE"}),
    ("PUT", "/api/task/" + "9" * 40, {"GET", "PATCH", "DELETE"}),
    ("POST", "/healthz", {"GET", "HEAD"}),
    ("DELETE", "/openapi.json", {"GET", "HEAD"}),
])
def test_wrong_method_405_with_allow(server, method, path, allow):
    """API.md: a known path with a method it does not have answers 405 with Allow
    (it used to be 404), the JSON error body and nothing done."""
    r = server.request(method, path)
    assert_error(r, 405, "UNIMPLEMENTED")
    assert {m.strip() for m in r.headers.get("Allow", "").split(",")} == allow, r.headers


def test_every_response_has_request_id(server):
    token, user = server.register()
    responses = [
        server.get("/healthz"),
        server.get("/readyz"),
        server.get("/metrics"),
        server.get("/openapi.json"),
        server.me(token),
        server.get("/api/auth/me"),
        server.get("/nowhere"),
        server.post("/api/auth/login", data=b"{"),
    ]
    ids = []
    for r in responses:
        rid = r.headers.get("X-Request-Id")
        assert rid, f"{r.request.method} {r.request.url} -> {r.status_code} lacks X-Request-Id"
        assert len(rid) <= 128 and re.fullmatch(r"[\x21-\x7e]+", rid), rid
        ids.append(rid)
    assert len(set(ids)) == len(ids), f"generated request ids repeat: {ids}"


@pytest.mark.parametrize("rid", ["abc-123", "trace_0123456789abcdef.ZZ", "a" * 64])
def test_sane_request_id_echoed(server, rid):
    r = server.get("/api/auth/me", headers={"X-Request-Id": rid})
    assert r.headers.get("X-Request-Id") == rid
    r = server.get("/healthz", headers={"X-Request-Id": rid})
    assert r.headers.get("X-Request-Id") == rid


@pytest.mark.parametrize("rid", ["x" * 300, "has space", "semi;colon\"quote", "tab\there"],
                         ids=["300-chars", "space", "quote", "tab"])
def test_insane_request_id_replaced(server, rid):
    r = server.get("/api/auth/me", headers={"X-Request-Id": rid})
    assert r.status_code == 401
    got = r.headers.get("X-Request-Id")
    assert got and got != rid, f"unsafe request id echoed: {got!r}"
    assert " " not in got and len(got) <= 128


def test_request_id_in_error_not_in_body_shape(server):
    """The error body stays exactly {"error":{code,message}} (request id only in header)."""
    r = server.get("/api/auth/me", headers={"X-Request-Id": "shape-check-1"})
    assert_error(r, 401, "UNAUTHENTICATED")
    assert r.headers["X-Request-Id"] == "shape-check-1"


def test_raw_http_error_is_json(server):
    """Errors produced by the HTTP layer itself (bad request line) use the same body."""
    s = raw_connect(server.port)
    try:
        s.sendall(b"BLAH\r\n\r\n")
        reader = RawReader(s)
        resp = reader.read_response()
        assert resp.status == 400, resp
        body = resp.json()
        assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}, body
        assert body["error"]["code"] == "INVALID_ARGUMENT"
    finally:
        s.close()
