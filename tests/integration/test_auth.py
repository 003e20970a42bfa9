"""Account routes of API.md: register, login, logout, me, delete."""
import datetime as dt
import secrets

import pytest

from conftest import (DEFAULT_PASSWORD, assert_error, assert_no_secrets, assert_user_shape,
                      unique_email)


# -- register --------------------------------------------------------------------

def test_register_returns_201_token_and_user(server):
    email = unique_email()
    r = server.post("/api/auth/register", json={"email": email, "password": DEFAULT_PASSWORD})
    assert r.status_code == 201, r.text
    assert r.headers.get("Content-Type", "").startswith("application/json")
    assert r.headers.get("X-Request-Id")
    body = r.json()
    assert isinstance(body.get("token"), str) and body["token"].count(".") == 2
    assert_user_shape(body["user"], email=email, role="user")
    assert DEFAULT_PASSWORD not in r.text
    assert_no_secrets(body, DEFAULT_PASSWORD)
    created = dt.datetime.strptime(body["user"]["createdAt"], "%Y-%m-%dT%H:%M:%S.%fZ")
    now = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
    assert abs((now - created).total_seconds()) < 120, body["user"]["createdAt"]


def test_register_ids_are_unique(server):
    ids = {server.register()[1]["id"] for _ in range(3)}
    assert len(ids) == 3


def test_register_trims_and_lowercases_email(server):
    local = "MiXeD." + secrets.token_hex(4)
    raw = f"  {local}@Example.COM \t"
    r = server.post("/api/auth/register", json={"email": raw, "password": DEFAULT_PASSWORD})
    assert r.status_code == 201, r.text
    want = f"{local.lower()}@example.com"
    assert r.json()["user"]["email"] == want
    # login normalises the same way
    token, user = server.login_ok(f" {local.upper()}@EXAMPLE.com ")
    assert user["email"] == want
    token2, _ = server.login_ok(want)
    assert server.me(token2).json()["email"] == want


def test_register_duplicate_email_409(server):
    email = unique_email()
    server.register(email)
    r = server.post("/api/auth/register", json={"email": email, "password": "another-password"})
    assert_error(r, 409, "ALREADY_EXISTS")
    # differently cased/padded is the same address
    r = server.post("/api/auth/register",
                    json={"email": "  " + email.upper(), "password": DEFAULT_PASSWORD})
    assert_error(r, 409, "ALREADY_EXISTS")


def _long_email(total):
    domain = "@example.com"
    return "a" * (total - len(domain)) + domain


INVALID_BODIES = {
    "empty-object": {},
    "missing-password": {"email": "x@example.com"},
    "missing-email": {"password": DEFAULT_PASSWORD},
    "email-number": {"email": 12345, "password": DEFAULT_PASSWORD},
    "email-null": {"email": None, "password": DEFAULT_PASSWORD},
    "email-array": {"email": ["a@b.c"], "password": DEFAULT_PASSWORD},
    "password-number": {"email": "num@example.com", "password": 12345678},
    "password-bool": {"email": "bool@example.com", "password": True},
    "password-object": {"email": "obj@example.com", "password": {"p": "12345678"}},
    "email-no-at": {"email": "no-at-sign.example.com", "password": DEFAULT_PASSWORD},
    "email-two-at": {"email": "a@b@example.com", "password": DEFAULT_PASSWORD},
    "email-empty": {"email": "", "password": DEFAULT_PASSWORD},
    "email-blank": {"email": "   ", "password": DEFAULT_PASSWORD},
    "email-too-short": {"email": "a@", "password": DEFAULT_PASSWORD},
    "email-255": {"email": _long_email(255), "password": DEFAULT_PASSWORD},
    "password-7-bytes": {"email": "short@example.com", "password": "1234567"},
    "password-empty": {"email": "empty@example.com", "password": ""},
    "password-257-bytes": {"email": "long@example.com", "password": "p" * 257},
    # byte lengths, not characters: 3 x 2-byte + 1 = 7 bytes; 129 x 2 bytes = 258 bytes
    "password-7-utf8-bytes": {"email": "u7@example.com", "password": "\u00e9\u00e9\u00e9a"},
    "password-258-utf8-bytes": {"email": "u258@example.com", "password": "\u00e9" * 129},
}


@pytest.mark.parametrize("body", list(INVALID_BODIES.values()), ids=list(INVALID_BODIES))
def test_register_validation_400(server, body):
    r = server.post("/api/auth/register", json=body)
    assert_error(r, 400, "INVALID_ARGUMENT")


RAW_BAD = {
    "malformed-json": b'{"email": "x@example.com", "password": ',
    "trailing-garbage": b'{"email": "tg@example.com", "password": "12345678"} x',
    "not-json": b"email=x@example.com&password=12345678",
    "array": b'["x@example.com", "12345678"]',
    "string": b'"x@example.com"',
    "number": b"42",
    "null": b"null",
    "empty": b"",
}


@pytest.mark.parametrize("path", ["/api/auth/register", "/api/auth/login"])
@pytest.mark.parametrize("raw", list(RAW_BAD.values()), ids=list(RAW_BAD))
def test_malformed_body_400(server, path, raw):
    r = server.post(path, data=raw, headers={"Content-Type": "application/json"})
    assert_error(r, 400, "INVALID_ARGUMENT")


@pytest.mark.parametrize("password", ["12345678", "p" * 256, "\u00e9" * 4, "\u00e9" * 128],
                         ids=["8-bytes", "256-bytes", "8-utf8-bytes", "256-utf8-bytes"])
def test_register_password_length_boundaries_ok(server, password):
    email = unique_email("pwlen")
    token, user = server.register(email, password)
    assert user["email"] == email
    server.login_ok(email, password)


def test_register_email_254_chars_ok(server):
    email = secrets.token_hex(4) + _long_email(246)
    assert len(email) == 254
    _, user = server.register(email)
    assert user["email"] == email


def test_register_email_3_chars_ok(server):
    email = "x@" + secrets.choice("bcdfghjkmnpqrstvwxz")
    r = server.post("/api/auth/register", json={"email": email, "password": DEFAULT_PASSWORD})
    # 409 only if this session already used the same random letter
    assert r.status_code in (201, 409), r.text


# -- login ------------------------------------------------------------------------

def test_login_200_token_and_user(server):
    email = unique_email()
    _, reg_user = server.register(email)
    r = server.login(email)
    assert r.status_code == 200, r.text
    body = r.json()
    assert isinstance(body["token"], str)
    assert_user_shape(body["user"], email=email)
    assert body["user"]["id"] == reg_user["id"]
    assert body["user"]["createdAt"] == reg_user["createdAt"]
    assert DEFAULT_PASSWORD not in r.text
    assert server.me(body["token"]).status_code == 200


def test_login_bad_credentials_same_401(server):
    email = unique_email()
    server.register(email)
    wrong = assert_error(server.login(email, "wrong-password-123"), 401, "UNAUTHENTICATED")
    unknown = assert_error(server.login(unique_email("nobody"), DEFAULT_PASSWORD), 401,
                           "UNAUTHENTICATED")
    assert wrong["message"] == unknown["message"], "message reveals whether the email exists"


def test_login_validation_400(server):
    assert_error(server.post("/api/auth/login", json={"email": unique_email()}), 400,
                 "INVALID_ARGUMENT")
    assert_error(server.post("/api/auth/login", json={"email": 1, "password": "12345678"}),
                 400, "INVALID_ARGUMENT")


def test_login_bumps_token_version(server):
    email = unique_email()
    t1, _ = server.register(email)
    assert server.me(t1).status_code == 200
    t2, _ = server.login_ok(email)
    assert t2 != t1
    assert_error(server.me(t1), 401, "UNAUTHENTICATED")
    assert server.me(t2).status_code == 200
    t3, _ = server.login_ok(email)
    assert_error(server.me(t2), 401, "UNAUTHENTICATED")
    assert server.me(t3).status_code == 200


def test_failed_login_does_not_revoke(server):
    email = unique_email()
    t1, _ = server.register(email)
    assert_error(server.login(email, "not-the-password"), 401, "UNAUTHENTICATED")
    assert server.me(t1).status_code == 200


# -- me -----------------------------------------------------------------------------

def test_me_returns_user(server):
    email = unique_email()
    token, user = server.register(email)
    r = server.me(token)
    assert r.status_code == 200, r.text
    assert r.headers.get("Content-Type", "").startswith("application/json")
    me = r.json()
    assert_user_shape(me, email=email)
    assert {k: me[k] for k in ("id", "email", "role", "createdAt")} == \
        {k: user[k] for k in ("id", "email", "role", "createdAt")}


def test_me_without_token_401(server):
    assert_error(server.get("/api/auth/me"), 401, "UNAUTHENTICATED")


# -- logout -------------------------------------------------------------------------

def test_logout_kills_tokens(server):
    email = unique_email()
    t1, _ = server.register(email)
    r = server.post("/api/auth/logout", token=t1)
    assert r.status_code == 200, r.text
    assert r.json() == {"success": True}
    assert_error(server.me(t1), 401, "UNAUTHENTICATED")
    # logging out again with the dead token is unauthenticated
    assert_error(server.post("/api/auth/logout", token=t1), 401, "UNAUTHENTICATED")
    # the account itself still works
    t2, _ = server.login_ok(email)
    assert server.me(t2).status_code == 200


def test_logout_kills_every_token(server):
    """Tokens that differ only by iat/exp but share tokenVersion all die on logout."""
    import jwt
    import time
    email = unique_email()
    t1, _ = server.register(email)
    claims = jwt.decode(t1, server.secret, algorithms=["HS256"], options={"verify_aud": False})
    now = int(time.time())
    claims2 = dict(claims, iat=now, exp=now + 600)
    t_other = jwt.encode(claims2, server.secret, algorithm="HS256")
    assert server.me(t_other).status_code == 200
    assert server.post("/api/auth/logout", token=t1).status_code == 200
    assert_error(server.me(t1), 401, "UNAUTHENTICATED")
    assert_error(server.me(t_other), 401, "UNAUTHENTICATED")


def test_logout_without_token_401(server):
    assert_error(server.post("/api/auth/logout"), 401, "UNAUTHENTICATED")


# -- delete -------------------------------------------------------------------------

def test_delete_self(server):
    email = unique_email()
    token, user = server.register(email)
    r = server.delete(f"/api/auth/delete/{user['id']}", token=token)
    assert r.status_code == 200, r.text
    assert r.json() == {"success": True}
    assert_error(server.me(token), 401, "UNAUTHENTICATED")
    assert_error(server.login(email), 401, "UNAUTHENTICATED")
    # the address is free again
    _, again = server.register(email)
    assert again["id"] != user["id"]


def test_delete_without_token_401(server):
    _, user = server.register()
    assert_error(server.delete(f"/api/auth/delete/{user['id']}"), 401, "UNAUTHENTICATED")


def test_delete_other_as_user_403(server):
    attacker_token, _ = server.register()
    victim_email = unique_email("victim")
    victim_token, victim = server.register(victim_email)
    r = server.delete(f"/api/auth/delete/{victim['id']}", token=attacker_token)
    assert_error(r, 403, "PERMISSION_DENIED")
    assert server.me(victim_token).status_code == 200
    server.login_ok(victim_email)


@pytest.fixture
def admin(server):
    email = unique_email("admin")
    server.register(email)
    res = server.set_role(email, "admin")
    assert res.returncode == 0, f"set-role failed ({res.returncode}): {res.stderr}"
    token, user = server.login_ok(email)
    assert user["role"] == "admin", user
    return token, user


def test_set_role_admin_reflected(server, admin):
    token, user = admin
    me = server.me(token).json()
    assert me["role"] == "admin"
    import jwt
    claims = jwt.decode(token, server.secret, algorithms=["HS256"])
    assert claims["role"] == "admin"


def test_set_role_unknown_email_exit_1(server):
    res = server.set_role(unique_email("ghost"), "admin")
    assert res.returncode == 1, (res.returncode, res.stdout, res.stderr)
    assert (res.stderr + res.stdout).strip(), "no message for unknown email"


def test_delete_other_as_admin(server, admin):
    admin_token, admin_user = admin
    victim_email = unique_email("victim")
    victim_token, victim = server.register(victim_email)
    r = server.delete(f"/api/auth/delete/{victim['id']}", token=admin_token)
    assert r.status_code == 200, r.text
    assert r.json() == {"success": True}
    assert_error(server.me(victim_token), 401, "UNAUTHENTICATED")
    assert_error(server.login(victim_email), 401, "UNAUTHENTICATED")
    # deleting again: gone
    assert_error(server.delete(f"/api/auth/delete/{victim['id']}", token=admin_token), 404,
                 "NOT_FOUND")
    # admin unaffected
    assert server.me(admin_token).status_code == 200


def test_delete_nonexistent_as_admin_404(server, admin):
    admin_token, _ = admin
    r = server.delete(f"/api/auth/delete/{secrets.token_hex(12)}", token=admin_token)
    assert_error(r, 404, "NOT_FOUND")


@pytest.mark.parametrize("bad_id", ["xyz", "0" * 23, "0" * 25, "G" * 24, "ABCDEF" * 4,
                                    "%00", "..%2f..%2fetc", "1" * 300])
def test_delete_malformed_id_as_admin(server, admin, bad_id):
    admin_token, _ = admin
    r = server.delete(f"/api/auth/delete/{bad_id}", token=admin_token)
    assert r.status_code in (400, 404), f"{r.status_code}: {r.text[:300]}"
    assert_error(r, r.status_code)
    assert server.me(admin_token).status_code == 200
