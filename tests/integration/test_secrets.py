"""Secrets (issue 17, items 4 and 5): deploy/compose.yaml has no fallback secrets; the
server refuses to start with a secret that appears in the repository, that is shorter
than 32 bytes once trimmed, or that comes from a file group or others may read, with
one line naming the key (and the file and its mode)."""
import os
import re
import secrets
import subprocess

import jwt
import pytest

from conftest import REPO, TMS_BIN
from test_config import serve_fails

# Lines that talk about a secret or assign a *KEY constant, and the literals on them
# long enough to pass the length rule.
SECRET_LINE = re.compile(r"(?i:secret)|\b[A-Z_]*KEY\b(\[\])?\s*=")
LITERAL = re.compile(r"""(?:["'=]|:-)\s*([A-Za-z0-9][A-Za-z0-9_+/.!\-]{31,})""")
IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def published_literals():
    """Every secret-like literal of the repository: what anyone who reads it knows."""
    files = subprocess.run(["git", "-C", str(REPO), "ls-files"], capture_output=True,
                           text=True, check=True).stdout.split()
    found = {}
    for name in files:
        if name.endswith(("go.sum", "go.mod", ".png", ".svg")) or name.startswith("bench/results"):
            continue
        try:
            text = (REPO / name).read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        for lineno, line in enumerate(text.splitlines(), 1):
            if not SECRET_LINE.search(line):
                continue
            for m in LITERAL.finditer(line):
                value = m.group(1)
                if not IDENTIFIER.fullmatch(value):  # function and test names are not secrets
                    found.setdefault(value, f"{name}:{lineno}")
    return found


def test_compose_requires_secrets():
    text = (REPO / "deploy" / "compose.yaml").read_text()
    for var in ("TMS_PEERS_SECRET", "TMS_AUTH_JWT_SECRET"):
        m = re.search(rf"^\s*{var}:\s*(.*)$", text, re.M)
        assert m, f"{var} not set in deploy/compose.yaml"
        assert re.fullmatch(rf'"?\$\{{{var}:\?[^}}]+\}}"?', m.group(1).strip()), \
            f"{var} must be required (${{{var}:?message}}), not defaulted: {m.group(1)}"
    assert "change-me" not in text


def test_repository_literals_are_found():
    """The scan sees the values that issue 17 reported and the test keys of the tree."""
    found = published_literals()
    assert "0123456789abcdef0123456789abcdef-test-key" in found, found
    assert "another-secret-key-that-is-not-the-server-one-0123456789" in found, found


@pytest.mark.parametrize("key", ["auth.jwt_secret", "peers.secret"])
def test_every_secret_in_the_repository_is_refused(tms_bin, tmp_path, key):
    found = published_literals()
    # the old deploy/compose.yaml fallbacks and the old fixed test secret stay published
    # (git history, copies of the file), even though the tree no longer has them
    for old in ("change-me-jwt-secret-0123456789abcdef0123",
                "change-me-service-credential-0123456789",
                "integration-test-secret-0123456789abcdefghijklmn"):
        found.setdefault(old, "history")
    for value, where in sorted(found.items()):
        rc, lines = serve_fails(tmp_path, [f"{key}={value}"])
        assert rc != 0, f"tms started with {key} = {value!r} (from {where})"
        assert len(lines) == 1, lines
        assert key in lines[0] and "example value" in lines[0], (where, lines)
        assert value not in lines[0], "secret echoed to stderr"


def test_short_secret_after_trimming_refused(tms_bin, tmp_path):
    padded = "  " + secrets.token_hex(15) + "\t "  # 34 bytes, 30 without the blanks
    rc, lines = serve_fails(tmp_path, env={"TMS_AUTH_JWT_SECRET": padded}, with_secret=False)
    assert rc != 0 and len(lines) == 1, lines
    assert "auth.jwt_secret" in lines[0] and "32 bytes" in lines[0], lines


def test_short_peers_secret_refused(tms_bin, tmp_path):
    rc, lines = serve_fails(tmp_path, ["server.roles=auth", "events.brokers=127.0.0.1:9",
                                       "peers.secret=" + secrets.token_hex(12)])
    assert rc != 0 and len(lines) == 1, lines
    assert "peers.secret" in lines[0] and "32 bytes" in lines[0], lines


# -- secret files ---------------------------------------------------------------------

def write_secret(path, text, mode):
    path.write_text(text)
    os.chmod(path, mode)
    return path


def test_generated_secret_file_cut_at_newline_is_too_short(tms_bin, tmp_path):
    """Issue 17: "abc\\n#comment..." passed the length check (on the whole file) and keyed
    the server with "abc"."""
    data = tmp_path / "data"
    data.mkdir()
    f = write_secret(data / "jwt.secret", "abc\n# written by hand; longer than 32 bytes\n", 0o600)
    rc, lines = serve_fails(tmp_path, with_secret=False)
    assert rc != 0 and len(lines) == 1, lines
    assert "auth.jwt_secret" in lines[0] and "32 bytes" in lines[0] and str(f) in lines[0], lines


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604])
def test_generated_secret_file_readable_by_others_refused(tms_bin, tmp_path, mode):
    data = tmp_path / "data"
    data.mkdir()
    f = write_secret(data / "jwt.secret", secrets.token_hex(48), mode)
    rc, lines = serve_fails(tmp_path, with_secret=False)
    assert rc != 0 and len(lines) == 1, lines
    assert str(f) in lines[0] and f"mode {mode:04o}" in lines[0], lines
    assert "auth.jwt_secret" in lines[0], lines


@pytest.mark.parametrize("key", ["auth.jwt_secret_file", "peers.secret_file"])
def test_configured_secret_file_readable_by_group_refused(tms_bin, tmp_path, key):
    f = write_secret(tmp_path / "secret", secrets.token_hex(32) + "\n", 0o640)
    rc, lines = serve_fails(tmp_path, [f"{key}={f}"], with_secret=False)
    assert rc != 0 and len(lines) == 1, lines
    assert key in lines[0] and str(f) in lines[0] and "mode 0640" in lines[0], lines


def test_configured_secret_file_first_line_trimmed_keys_tokens(make_server, tmp_path):
    secret = secrets.token_hex(24)
    f = write_secret(tmp_path / "jwt.key", f"  {secret}\r\n# rotated 2024-01-01\n", 0o400)
    srv = make_server(secret=None, settings={"auth.jwt_secret_file": str(f)})
    token, _ = srv.register()
    jwt.decode(token, secret, algorithms=["HS256"])  # the first line, blanks cut
