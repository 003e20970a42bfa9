"""The command line as a user meets it (issue 25): help and version, unknown commands,
options and arguments, unknown TMS_* variables, `tms config` in effect, admin commands
that find the data dir as serve does, listen address forms, an unreadable jwt.secret,
`tms user create`."""
import os
import socket
import subprocess
import time

import pytest
import requests

from conftest import (DEFAULT_PASSWORD, JWT_SECRET, REPO, SPLIT, TMS_BIN, free_port, run_cli,
                      tms_env, unique_email)

COMMANDS = [["serve"], ["migrate"], ["user", "set-role"], ["user", "create"],
            ["mail", "dlq", "list"], ["mail", "dlq", "replay"], ["config"], ["version"]]


@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_top_level_help_on_stdout(tms_bin, flag):
    p = run_cli([flag])
    assert p.returncode == 0, p.stderr
    assert p.stderr == ""
    assert p.stdout.startswith("usage: tms <command>")
    for words in COMMANDS:
        assert " ".join(words) in p.stdout, words


@pytest.mark.parametrize("words", COMMANDS, ids=lambda w: "-".join(w))
@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_every_command_has_its_help(tms_bin, words, flag):
    p = run_cli([*words, flag])
    assert p.returncode == 0, p.stderr
    assert p.stderr == ""
    assert p.stdout.startswith(f"usage: tms {' '.join(words)}"), p.stdout[:200]


@pytest.mark.parametrize("group", [["user"], ["mail"], ["mail", "dlq"]])
def test_group_help_lists_its_commands(tms_bin, group):
    p = run_cli([*group, "--help"])
    assert p.returncode == 0 and p.stderr == ""
    assert f"usage: tms {' '.join(group)} <command>" in p.stdout
    p = run_cli(group)
    assert p.returncode == 2
    assert f"tms: {' '.join(group)}: needs a command" in p.stderr


def test_version(tms_bin):
    a = run_cli(["--version"])
    b = run_cli(["version"])
    assert a.returncode == 0 and b.returncode == 0
    assert a.stdout == b.stdout
    assert a.stdout.startswith("tms 0.") and "commit " in a.stdout, a.stdout


@pytest.mark.parametrize("args,message", [
    (["frobnicate"], "tms: unknown command 'frobnicate'"),
    (["--frob"], "tms: unknown option '--frob'"),
    (["serve", "--frob"], "tms: serve: unknown option '--frob'"),
    (["config", "--roles", "auth"], "tms: config: unknown option '--roles'"),
    (["user", "frob"], "tms: unknown command 'user frob'"),
    (["migrate", "extra"], "tms: migrate: unexpected argument 'extra'"),
    (["serve", "now"], "tms: serve: unexpected argument 'now'"),
    (["user", "set-role", "a@b.c", "admin", "again"],
     "tms: user set-role: unexpected argument 'again'"),
    (["user", "set-role", "a@b.c"], "tms: user set-role: missing arguments"),
    (["serve", "--set"], "tms: serve: option '--set' needs a value"),
    (["version", "--set", "x.y=1"], "tms: version: unknown option '--set'"),
])
def test_usage_errors_name_the_culprit_and_exit_2(tms_bin, args, message):
    p = run_cli(args)
    assert p.returncode == 2, (p.returncode, p.stderr)
    assert p.stdout == ""
    lines = p.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(message), lines


def test_no_command_prints_usage_to_stderr(tms_bin):
    p = run_cli([])
    assert p.returncode == 2 and p.stdout == ""
    assert p.stderr.startswith("usage: tms <command>")


def test_options_before_the_command(tms_bin):
    p = run_cli(["--set", "auth.token_ttl=77", "config"])
    assert p.returncode == 0, p.stderr
    assert "\ntoken_ttl = 77\n" in p.stdout


# -- environment --------------------------------------------------------------

def test_unknown_tms_variable_warned_with_the_closest_key(tms_bin):
    p = run_cli(["config"], env={"TMS_HTTP_ADR": "127.0.0.1:1"})
    assert p.returncode == 0, p.stderr
    lines = p.stderr.splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("tms: warning: TMS_HTTP_ADR is not a setting; did you mean "
                               "TMS_HTTP_ADDR (http.addr)?"), lines
    assert "\naddr = 0.0.0.0:3000\n" in p.stdout  # ignored, as said


def test_known_variables_and_fault_hooks_are_not_warned(tms_bin):
    p = run_cli(["config"], env={"TMS_AUTH_TOKEN_TTL": "120", "TMS_FAULT_UNASSIGN": "1"})
    assert p.returncode == 0 and p.stderr == "", p.stderr
    assert "# (from TMS_AUTH_TOKEN_TTL; default 3600)\ntoken_ttl = 120\n" in p.stdout


def test_serve_warns_about_a_typo_in_the_environment(make_server):
    if SPLIT:
        pytest.skip("one process")
    srv = make_server(env={"TMS_RATELIMIT_API_PER_MINUT": "5"})
    assert "tms: warning: TMS_RATELIMIT_API_PER_MINUT is not a setting; did you mean " \
           "TMS_RATELIMIT_API_PER_MINUTE (ratelimit.api_per_minute)?" in srv.log_text()


# -- tms config -----------------------------------------------------------------

def test_config_prints_settings_in_effect_with_their_source(tms_bin, tmp_path):
    conf = tmp_path / "tms.conf"
    conf.write_text("[auth]\ntoken_ttl = 900\n[http]\naddr = 8080\n")
    p = run_cli(["config", "--config", str(conf), "--set", "log.level=warn"],
                env={"TMS_SERVER_WORKERS": "2"})
    assert p.returncode == 0, p.stderr
    out = p.stdout
    assert "# (from the config file; default 3600)\ntoken_ttl = 900\n" in out
    assert "# (from the config file; default 0.0.0.0:3000)\naddr = 0.0.0.0:8080\n" in out
    assert "# (from TMS_SERVER_WORKERS; default 1)\nworkers = 2\n" in out
    assert "# (from --set; default info)\nlevel = warn\n" in out
    assert "\nurl = sqlite://./data/tms.db\n" in out  # derived from data.dir


def test_config_masks_secrets(tms_bin, tmp_path):
    secret = "s3cret-" + os.urandom(16).hex()
    token = "m3trics-" + os.urandom(16).hex()
    p = run_cli(["config", "--set", f"auth.jwt_secret={secret}", "--set", f"metrics.token={token}",
                 "--set", "tasks.url=postgres://tms:pgpassw0rd@db.example.com/tms",
                 "--set", "mail.url=smtp://mailer:smtppassw0rd@mail.example.com:587"])
    assert p.returncode == 0, p.stderr
    for s in (secret, token, "pgpassw0rd", "smtppassw0rd"):
        assert s not in p.stdout
    assert "\njwt_secret = ********\n" in p.stdout
    assert "\ntoken = ********\n" in p.stdout
    assert "\nurl = postgres://tms:********@db.example.com/tms\n" in p.stdout
    assert "\nurl = smtp://mailer:********@mail.example.com:587\n" in p.stdout


@pytest.mark.parametrize("args,env,key", [
    (["--set", "auth.token_ttl=0"], None, "auth.token_ttl"),
    (["--set", "http.addr=example.com:80"], None, "http.addr"),
    ([], {"TMS_SERVER_WORKERS": "many"}, "server.workers"),
    (["--set", "http.trusted_proxies=10.0.0.1/8"], None, "http.trusted_proxies"),
])
def test_config_validates_like_serve(tms_bin, args, env, key):
    p = run_cli(["config", *args], env=env)
    assert p.returncode == 2, p.stdout[:200]
    assert p.stdout == ""
    lines = p.stderr.splitlines()
    assert len(lines) == 1 and key in lines[0], lines


def test_config_defaults_ignores_the_environment(tms_bin):
    p = run_cli(["config", "--defaults"], env={"TMS_AUTH_TOKEN_TTL": "5"})
    assert p.returncode == 0
    assert p.stdout == (REPO / "config" / "tms.conf").read_text()


# -- admin commands and the data dir ------------------------------------------------

def test_admin_commands_refuse_a_missing_database(tms_bin, tmp_path):
    """`cd /tmp && tms migrate` used to make /tmp/data/tms.db; set-role then said the
    user did not exist."""
    for args in (["migrate"], ["user", "set-role", "a@example.com", "admin"],
                 ["mail", "dlq", "list"]):
        p = run_cli(args, cwd=tmp_path)
        assert p.returncode == 1, (args, p.stderr)
        lines = p.stderr.splitlines()
        assert len(lines) >= 1
        assert "./data" in lines[0] and str(tmp_path) in lines[0], lines
        assert "--set data.dir=" in lines[0], lines
        assert not (tmp_path / "data").exists(), f"{args} made {tmp_path / 'data'}"


def test_migrate_create_makes_a_database_then_admin_commands_find_it(tms_bin, tmp_path):
    p = run_cli(["migrate", "--create"], cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert (tmp_path / "data" / "tms.db").exists()
    p = run_cli(["migrate"], cwd=tmp_path)  # exists now: fine, idempotent
    assert p.returncode == 0, p.stderr
    p = run_cli(["user", "set-role", "nobody@example.com", "admin"], cwd=tmp_path)
    assert p.returncode == 1
    assert p.stderr.strip() == "tms: no user with email nobody@example.com"


def test_admin_commands_use_the_servers_settings(make_server, tmp_path):
    """The same --config as the server's: the data dir is found from any directory."""
    if SPLIT:
        pytest.skip("one process")
    srv = make_server()
    _, user = srv.register()
    conf = tmp_path / "tms.conf"
    conf.write_text(f"[data]\ndir = {srv.data_dir}\n")
    extra = ["--set", f"users.url={srv.settings['users.url']}"] \
        if "users.url" in srv.settings else []
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    p = run_cli(["user", "set-role", user["email"], "admin", "--config", str(conf), *extra],
                cwd=elsewhere)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == f"{user['email']} is now admin"


# -- tms user create ----------------------------------------------------------------

def test_user_create_then_login(make_server):
    if SPLIT:
        pytest.skip("one process")
    srv = make_server(auth__registration="closed")
    email = unique_email("made")
    args = ["user", "create", email, "--role", "admin", "--set", f"data.dir={srv.data_dir}"]
    if "users.url" in srv.settings:
        args += ["--set", f"users.url={srv.settings['users.url']}"]
    p = run_cli(args, input=DEFAULT_PASSWORD + "\n")
    assert p.returncode == 0, p.stderr
    assert p.stdout.startswith(f"created {email} (admin) id "), p.stdout
    token, user = srv.login_ok(email)
    assert user["role"] == "admin"
    again = run_cli(args, input=DEFAULT_PASSWORD + "\n")
    assert again.returncode == 1 and "already registered" in again.stderr
    short = run_cli(args[:3] + args[5:], input="short\n")
    assert short.returncode == 2 and "password must be 8 to 256 bytes" in short.stderr
    bad = run_cli(["user", "create", "not-an-email", *args[5:]], input=DEFAULT_PASSWORD + "\n")
    assert bad.returncode == 2 and "@" in bad.stderr


# -- listen addresses -------------------------------------------------------------------

def _serve(tmp_path, addr, timeout=20):
    data = tmp_path / "data"
    return subprocess.Popen(
        [TMS_BIN, "serve", "--set", f"http.addr={addr}", "--set", "grpc.addr=127.0.0.1:0",
         "--set", "metrics.addr=", "--set", f"data.dir={data}",
         "--set", f"auth.jwt_secret={JWT_SECRET}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=tms_env(),
        stdin=subprocess.DEVNULL)


def _healthz(url, proc, timeout=20):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.stderr.read()
        try:
            if requests.get(url, timeout=1).status_code == 200:
                return True
        except requests.RequestException:
            time.sleep(0.1)
    return False


@pytest.mark.parametrize("form,host", [
    ("{port}", "127.0.0.1"), (":{port}", "127.0.0.1"), ("localhost:{port}", "127.0.0.1"),
    ("[::1]:{port}", "[::1]"),
])
def test_listen_address_forms(tms_bin, tmp_path, form, host):
    if SPLIT:
        pytest.skip("one process")
    if host == "[::1]":
        try:
            socket.socket(socket.AF_INET6).bind(("::1", 0))
        except OSError:
            pytest.skip("no IPv6 loopback")
    port = free_port()
    proc = _serve(tmp_path, form.format(port=port))
    try:
        assert _healthz(f"http://{host}:{port}/healthz", proc)
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err


@pytest.mark.parametrize("addr", ["example.com:3000", "::1:3000", "127.0.0.1:99999", "[::1]"])
def test_bad_listen_address_refused_before_anything_is_made(tms_bin, tmp_path, addr):
    proc = _serve(tmp_path, addr)
    _, err = proc.communicate(timeout=20)
    assert proc.returncode == 2, err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("tms: config: http.addr:"), lines
    assert not (tmp_path / "data").exists(), "the data dir was made before the check"


# -- jwt.secret -------------------------------------------------------------------------

def test_unreadable_kept_secret_is_reported_as_unreadable(tms_bin, tmp_path):
    """A <data.dir>/jwt.secret that cannot be read (here a link to nothing: root reads
    any mode) used to be reported as `cannot write ...: File exists`."""
    data = tmp_path / "data"
    data.mkdir()
    (data / "jwt.secret").symlink_to(tmp_path / "gone")
    p = subprocess.run([TMS_BIN, "serve", "--set", f"http.addr=127.0.0.1:{free_port()}",
                        "--set", "grpc.addr=127.0.0.1:0", "--set", "metrics.addr=",
                        "--set", f"data.dir={data}"],
                       capture_output=True, text=True, timeout=20, env=tms_env(),
                       stdin=subprocess.DEVNULL)
    assert p.returncode == 1, p.stderr
    lines = [ln for ln in p.stderr.splitlines() if ln.startswith("tms: ")]
    assert len(lines) == 1, p.stderr
    assert "jwt.secret is unreadable" in lines[0], lines
    assert "File exists" not in p.stderr
    assert not (tmp_path / "gone").exists(), "a new key was written through the link"
