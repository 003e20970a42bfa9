"""Rate limits: token buckets answering 429 with Retry-After and RateLimit-* headers."""
import json
import re
import secrets
import socket
import subprocess

import pytest

from conftest import SPLIT, DEFAULT_PASSWORD, RawReader, assert_error, unique_email


def leading_int(value):
    m = re.match(r"\s*(\d+)", value or "")
    assert m, f"not an integer header value: {value!r}"
    return int(m.group(1))


def assert_429(r, limit=None):
    assert_error(r, 429, "RESOURCE_EXHAUSTED")
    ra = r.headers.get("Retry-After")
    assert ra is not None and ra.strip().isdigit(), f"Retry-After {ra!r}"
    assert int(ra) >= 1
    for h in ("RateLimit-Limit", "RateLimit-Remaining", "RateLimit-Reset"):
        assert h in r.headers, f"429 lacks {h}: {dict(r.headers)}"
    if limit is not None:
        assert leading_int(r.headers["RateLimit-Limit"]) == limit, r.headers["RateLimit-Limit"]
    assert leading_int(r.headers["RateLimit-Remaining"]) == 0
    assert leading_int(r.headers["RateLimit-Reset"]) >= 1
    return int(ra)


def test_api_per_minute(make_server):
    srv = make_server(ratelimit__api_per_minute=5)
    statuses = [srv.get("/api/auth/me").status_code for _ in range(5)]
    assert statuses == [401] * 5, f"first 5 requests: {statuses}"
    r = srv.get("/api/auth/me")
    ra = assert_429(r, limit=5)
    assert ra <= 60
    # other API routes share the per-address bucket
    r = srv.post("/api/auth/login", json={"email": unique_email(), "password": DEFAULT_PASSWORD})
    assert_429(r, limit=5)


def test_login_per_15min_per_email(make_server):
    srv = make_server(ratelimit__login_per_15min=2)
    email_a = unique_email("rl-a")
    email_b = unique_email("rl-b")
    srv.register(email_a)
    srv.register(email_b)
    assert srv.login(email_a).status_code == 200
    assert srv.login(email_a).status_code == 200
    r = srv.login(email_a)  # right password, but over the limit
    ra = assert_429(r)
    assert ra <= 15 * 60
    # the same address written differently is the same key
    assert_429(srv.login("  " + email_a.upper()))
    # another email from the same client address is unaffected
    r = srv.login(email_b)
    assert r.status_code == 200, r.text


def test_login_limit_counts_failed_attempts(make_server):
    srv = make_server(ratelimit__login_per_15min=2)
    email = unique_email("rl-brute")
    srv.register(email)
    assert_error(srv.login(email, "wrong-password-1"), 401, "UNAUTHENTICATED")
    assert_error(srv.login(email, "wrong-password-2"), 401, "UNAUTHENTICATED")
    assert_429(srv.login(email))


def test_limits_off_when_zero(server):
    """The default test server has every limit at 0: many requests, no 429."""
    codes = {server.get("/api/auth/me").status_code for _ in range(150)}
    assert codes == {401}


# -- IPv6 clients (issue 17, item 11) -------------------------------------------------
# One IPv6 subscriber holds a whole /64: keyed by the full address, each of its 2^64
# addresses had a fresh budget. These tests route a /48 of the documentation prefix to
# the loopback device (root only) and send from addresses in it (IP_FREEBIND) to a
# dual-stack listener; the gateway and the connection cap see those addresses.

@pytest.fixture
def v6net():
    if SPLIT:
        pytest.skip("the split harness listens on 127.0.0.1 only")
    net = "2001:db8:%x" % secrets.randbelow(0xffff)
    add = subprocess.run(["ip", "-6", "route", "add", "local", f"{net}::/48", "dev", "lo"],
                         capture_output=True, text=True)
    if add.returncode != 0:
        pytest.skip(f"cannot route {net}::/48 to lo (needs root): {add.stderr.strip()}")
    try:
        yield net
    finally:
        subprocess.run(["ip", "-6", "route", "del", "local", f"{net}::/48", "dev", "lo"],
                       capture_output=True)


def v6_server(make_server, **settings):
    srv = make_server(start=False, settings=settings)
    srv.http_host = "[::]"
    return srv.start()


def v6_connect(port, src):
    s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_IP, 15, 1)  # IP_FREEBIND: bind an address lo only routes
    s.bind((src, 0))
    s.settimeout(10)
    s.connect(("::1", port))
    return s


def v6_get(port, src, path="/api/auth/me"):
    s = v6_connect(port, src)
    s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
    r = RawReader(s).read_response()
    s.close()
    return r.status


def test_ipv6_clients_share_the_api_limit_per_64(make_server, v6net):
    srv = v6_server(make_server, ratelimit__api_per_minute=3)
    assert [v6_get(srv.port, f"{v6net}:1::a") for _ in range(3)] == [401] * 3
    # another address of the same /64: the same budget, spent
    assert v6_get(srv.port, f"{v6net}:1::b") == 429
    assert v6_get(srv.port, f"{v6net}:1:ffff:ffff:ffff:ffff") == 429
    # the next /64 is someone else
    assert v6_get(srv.port, f"{v6net}:2::a") == 401
    # IPv4 clients (IPv4-mapped on the dual-stack listener) count alone
    assert srv.get("/api/auth/me").status_code == 401


def test_ipv6_prefix_is_configurable(make_server, v6net):
    srv = v6_server(make_server, ratelimit__api_per_minute=2, ratelimit__ipv6_prefix=56)
    assert [v6_get(srv.port, f"{v6net}:1::a") for _ in range(2)] == [401] * 2
    assert v6_get(srv.port, f"{v6net}:2::a") == 429  # same /56
    assert v6_get(srv.port, f"{v6net}:100::a") == 401  # next /56


def test_ipv6_login_limit_per_64(make_server, v6net):
    """The login limit (per email and address) does not restart for each address of
    the attacker's /64."""
    srv = v6_server(make_server, ratelimit__login_per_15min=2)
    email = unique_email("target")
    body = json.dumps({"email": email, "password": "guess-guess-guess"})
    statuses = []
    for host in range(1, 6):
        s = v6_connect(srv.port, f"{v6net}:7::{host}")
        s.sendall(("POST /api/auth/login HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                   "Content-Type: application/json\r\n"
                   f"Content-Length: {len(body)}\r\n\r\n{body}").encode())
        statuses.append(RawReader(s).read_response().status)
        s.close()
    assert statuses == [401, 401, 429, 429, 429], statuses


def test_ipv6_connection_cap_per_64(make_server, v6net):
    srv = v6_server(make_server, http__max_connections_per_address=3)
    held = [v6_connect(srv.port, f"{v6net}:9::{i}") for i in range(1, 4)]
    for s in held:  # accepted: each answers
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert RawReader(s).read_response().status == 200
    extra = v6_connect(srv.port, f"{v6net}:9::99")  # same /64: closed at accept
    extra.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    assert RawReader(extra).at_eof(3), "a 4th connection of the /64 was served"
    other = v6_connect(srv.port, f"{v6net}:a::1")  # another /64
    other.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    assert RawReader(other).read_response().status == 200
    for s in held + [extra, other]:
        s.close()
