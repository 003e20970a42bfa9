"""http.trusted_proxies (issue 25): behind a reverse proxy every client has the proxy's
address, so every user shared one API budget and one attacker could lock any account's
logins. From a listed proxy the client is the rightmost X-Forwarded-For (or Forwarded)
hop that is not a listed proxy; from anyone else those headers are ignored."""
import re

from conftest import DEFAULT_PASSWORD, assert_error, unique_email


def xff(addr):
    return {"X-Forwarded-For": addr}


def test_each_client_behind_the_proxy_has_its_own_budget(make_server):
    srv = make_server(http__trusted_proxies="127.0.0.0/8, ::1", ratelimit__api_per_minute=3)
    for client in ("203.0.113.1", "203.0.113.2"):
        for _ in range(3):
            assert srv.get("/api/auth/me", headers=xff(client)).status_code == 401
        assert_error(srv.get("/api/auth/me", headers=xff(client)), 429)
    # a client cannot pick its address: what it wrote left of the proxy's hop is ignored
    assert_error(srv.get("/api/auth/me", headers=xff("198.51.100.9, 203.0.113.1")), 429)
    # Forwarded (RFC 7239) when there is no X-Forwarded-For
    assert srv.get("/api/auth/me",
                   headers={"Forwarded": 'for="[2001:db8::5]:1234";proto=https'}).status_code \
        == 401
    log = srv.log_text()
    assert re.search(r"event=request .*client=203\.0\.113\.2 via=127\.0\.0\.1", log), log[-2000:]
    assert re.search(r"event=request .*client=2001:db8::5 via=127\.0\.0\.1", log)


def test_headers_from_an_untrusted_peer_are_ignored(make_server):
    srv = make_server(ratelimit__api_per_minute=3)  # no trusted proxies
    for i in range(3):
        assert srv.get("/api/auth/me", headers=xff(f"203.0.113.{i}")).status_code == 401
    assert_error(srv.get("/api/auth/me", headers=xff("203.0.113.99")), 429)
    assert "via=" not in srv.log_text()
    srv2 = make_server(http__trusted_proxies="10.0.0.0/8", ratelimit__api_per_minute=2)
    for i in range(2):  # 127.0.0.1 is not in the list
        assert srv2.get("/api/auth/me", headers=xff(f"203.0.113.{i}")).status_code == 401
    assert_error(srv2.get("/api/auth/me", headers=xff("203.0.113.50")), 429)


def test_an_attacker_behind_the_proxy_cannot_lock_a_users_logins(make_server):
    srv = make_server(http__trusted_proxies="127.0.0.1", ratelimit__login_per_15min=3)
    email = unique_email("victim")
    srv.register(email)
    attacker = xff("203.0.113.66")
    for _ in range(3):
        r = srv.post("/api/auth/login", json={"email": email, "password": "wrong-password"},
                     headers=attacker)
        assert_error(r, 401)
    assert_error(srv.post("/api/auth/login", json={"email": email, "password": DEFAULT_PASSWORD},
                          headers=attacker), 429)
    r = srv.post("/api/auth/login", json={"email": email, "password": DEFAULT_PASSWORD},
                 headers=xff("198.51.100.7"))
    assert r.status_code == 200, r.text
