"""Configuration: --set, environment overrides, validation, generated secret, CLI."""
import os
import secrets
import subprocess
import time

import jwt
import pytest

from conftest import JWT_SECRET, TMS_BIN, free_port, run_cli, tms_env


def serve_fails(tmp_path, sets=(), env=None, with_secret=True, timeout=10):
    """Run `tms serve` expected to refuse; returns (returncode, stderr lines)."""
    data = tmp_path / "data"
    data.mkdir(exist_ok=True)
    args = ["serve", "--set", f"http.addr=127.0.0.1:{free_port()}",
            "--set", "grpc.addr=127.0.0.1:0", "--set", f"data.dir={data}"]
    if with_secret:
        args += ["--set", f"auth.jwt_secret={JWT_SECRET}"]
    for s in sets:
        args += ["--set", s]
    full_env = tms_env(env)
    t0 = time.monotonic()
    try:
        p = subprocess.run([TMS_BIN, *args], capture_output=True, text=True, timeout=timeout,
                           env=full_env, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"tms serve with {sets} {env} did not exit within {timeout}s "
                    f"(stderr: {e.stderr!r})")
    assert time.monotonic() - t0 < timeout
    lines = [l for l in p.stderr.splitlines() if l.strip()]
    return p.returncode, lines


@pytest.mark.parametrize("setting,key", [
    ("auth.token_ttl=abc", "auth.token_ttl"),
    ("auth.token_ttl=-5", "auth.token_ttl"),
    ("auth.token_ttl=12abc", "auth.token_ttl"),
    ("ratelimit.api_per_minute=lots", "ratelimit.api_per_minute"),
    ("ratelimit.login_per_15min=-1", "ratelimit.login_per_15min"),
    ("http.max_body_bytes=big", "http.max_body_bytes"),
    ("http.max_head_bytes=", "http.max_head_bytes"),
    ("http.head_timeout=soon", "http.head_timeout"),
    ("server.workers=many", "server.workers"),
    ("http.addr=not-an-address", "http.addr"),
    ("log.level=chatty", "log.level"),
    ("tasks.migrate=sometimes", "tasks.migrate"),
])
def test_bad_value_refused_with_one_line(tms_bin, tmp_path, setting, key):
    rc, lines = serve_fails(tmp_path, [setting])
    assert rc != 0
    assert len(lines) == 1, f"expected one stderr line, got: {lines}"
    assert key in lines[0], lines


def test_bad_env_value_refused(tms_bin, tmp_path):
    rc, lines = serve_fails(tmp_path, env={"TMS_AUTH_TOKEN_TTL": "abc"})
    assert rc != 0
    assert len(lines) == 1, lines
    assert "auth.token_ttl" in lines[0] or "TMS_AUTH_TOKEN_TTL" in lines[0], lines


def test_short_secret_refused(tms_bin, tmp_path):
    rc, lines = serve_fails(tmp_path, ["auth.jwt_secret=" + "s" * 31], with_secret=False)
    assert rc != 0
    assert len(lines) == 1, lines
    assert "auth.jwt_secret" in lines[0]
    assert "s" * 31 not in lines[0], "secret echoed to stderr"


def test_unknown_key_refused(tms_bin, tmp_path):
    rc, lines = serve_fails(tmp_path, ["foo.bar=1"])
    assert rc != 0
    assert len(lines) == 1, lines
    assert "foo.bar" in lines[0]


def test_malformed_set_refused(tms_bin, tmp_path):
    rc, lines = serve_fails(tmp_path, ["no-equals-sign"])
    assert rc != 0
    assert lines


def test_secret_of_32_bytes_accepted(make_server):
    secret = secrets.token_hex(16)
    srv = make_server(secret=secret)
    token, _ = srv.register()
    jwt.decode(token, secret, algorithms=["HS256"])


def test_env_token_ttl(make_server):
    srv = make_server(env={"TMS_AUTH_TOKEN_TTL": "120"})
    token, _ = srv.register()
    c = jwt.decode(token, JWT_SECRET, algorithms=["HS256"])
    assert c["exp"] - c["iat"] == 120


def test_set_token_ttl(make_server):
    srv = make_server(auth__token_ttl=77)
    token, _ = srv.register()
    c = jwt.decode(token, JWT_SECRET, algorithms=["HS256"])
    assert c["exp"] - c["iat"] == 77


def test_env_secret(make_server):
    secret = "env-provided-secret-" + "e" * 30
    srv = make_server(secret=None, env={"TMS_AUTH_JWT_SECRET": secret})
    token, _ = srv.register()
    jwt.decode(token, secret, algorithms=["HS256"])


def test_generated_secret_persists_across_restart(make_server, tmp_path):
    data = tmp_path / "persist-data"
    srv = make_server(secret=None, data_dir=data)
    email = "persist-" + os.urandom(4).hex() + "@example.com"
    token, user = srv.register(email)
    header = jwt.get_unverified_header(token)
    assert header["alg"] == "HS256"
    with pytest.raises(jwt.InvalidSignatureError):
        jwt.decode(token, JWT_SECRET, algorithms=["HS256"])
    srv.stop_ok()
    assert any(data.iterdir()), "nothing kept in data.dir"

    srv2 = make_server(secret=None, data_dir=data)
    r = srv2.me(token)
    assert r.status_code == 200, f"token from the first run refused after restart: {r.text}"
    assert r.json()["id"] == user["id"]
    srv2.login_ok(email)


def test_users_persist_across_restart(make_server, tmp_path):
    data = tmp_path / "persist-users"
    srv = make_server(data_dir=data)
    email = "restart-" + os.urandom(4).hex() + "@example.com"
    token, user = srv.register(email)
    srv.stop_ok()
    srv2 = make_server(data_dir=data)
    assert srv2.me(token).json()["id"] == user["id"]
    _, again = srv2.login_ok(email)
    assert again["id"] == user["id"]


def test_version_command(tms_bin):
    p = run_cli(["version"], timeout=10)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip()


def test_migrate_command(tms_bin, tmp_path):
    # no database there yet: refused unless asked to make one (issue 25)
    p = run_cli(["migrate", "--set", f"data.dir={tmp_path}"], timeout=20)
    assert p.returncode == 1 and "no database at" in p.stderr, p.stderr
    p = run_cli(["migrate", "--create", "--set", f"data.dir={tmp_path}"], timeout=20)
    assert p.returncode == 0, p.stderr
    # idempotent
    p = run_cli(["migrate", "--set", f"data.dir={tmp_path}"], timeout=20)
    assert p.returncode == 0, p.stderr


def test_port_in_use_refused_cleanly(tms_bin, tmp_path):
    """A taken http.addr stops start-up with one line naming the key; the stores and
    workers started before it are shut down without a leak (ASan fails the exit)."""
    import socket
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    try:
        port = taken.getsockname()[1]
        rc, lines = serve_fails(tmp_path, [f"http.addr=127.0.0.1:{port}"])
        text = "\n".join(lines)
        assert "LeakSanitizer" not in text and "AddressSanitizer" not in text, text
        assert rc == 1, text
        assert any(l.startswith("tms: http.addr:") for l in lines), text
    finally:
        taken.close()


def test_config_file_is_what_tms_config_prints(tms_bin):
    """config/tms.conf documents every key with its default: exactly `tms config
    --defaults`."""
    from conftest import REPO
    p = run_cli(["config", "--defaults"], timeout=10)
    assert p.returncode == 0, p.stderr
    assert p.stdout == (REPO / "config" / "tms.conf").read_text(), \
        "config/tms.conf is stale: regenerate it with `build/tms config --defaults > config/tms.conf`"
