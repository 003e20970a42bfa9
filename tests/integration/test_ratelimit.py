"""Rate limits: token buckets answering 429 with Retry-After and RateLimit-* headers."""
import re

from conftest import DEFAULT_PASSWORD, assert_error, unique_email


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
