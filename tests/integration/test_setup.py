"""scripts/setup's preflight: with installing switched off (TMS_SETUP_NO_INSTALL=1) and
one item hidden from it, setup names that item and the Debian package that provides it
in one line, and exits non-zero before anything is built. Nothing is uninstalled: the
item is hidden by a PATH or a pkg-config directory made for the test."""
import hashlib
import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def setup(*args, env=None, script="scripts/setup", timeout=300):
    full = dict(os.environ, TMS_SETUP_NO_INSTALL="1")
    full.update(env or {})
    return subprocess.run([str(REPO / script), *args], cwd=REPO, env=full, text=True,
                          capture_output=True, timeout=timeout, stdin=subprocess.DEVNULL)


def missing_lines(p):
    return [l for l in p.stderr.splitlines() if l.startswith("setup: missing ")]


def path_without(tmp_path, name):
    """A PATH of one directory linking every command of the current PATH but `name`."""
    d = tmp_path / "bin"
    d.mkdir()
    for entry in os.environ["PATH"].split(os.pathsep):
        if not entry or not os.path.isdir(entry):
            continue
        for f in os.scandir(entry):
            if f.name == name or (d / f.name).exists() or (d / f.name).is_symlink():
                continue
            if os.access(f.path, os.X_OK) and not f.is_dir():
                (d / f.name).symlink_to(f.path)
    assert shutil.which(name, path=str(d)) is None
    return str(d)


def pc_dir_without(tmp_path, module):
    """A pkg-config directory holding every .pc file pkg-config sees but module's."""
    d = tmp_path / "pkgconfig"
    d.mkdir()
    pc_path = subprocess.run(["pkg-config", "--variable", "pc_path", "pkg-config"],
                             capture_output=True, text=True, check=True).stdout.strip()
    extra = os.environ.get("PKG_CONFIG_PATH", "")
    for entry in (extra + ":" + pc_path).split(":"):
        if not entry or not os.path.isdir(entry):
            continue
        for f in Path(entry).glob("*.pc"):
            if f.name != module + ".pc" and not (d / f.name).exists():
                (d / f.name).symlink_to(f)
    return str(d)


@pytest.fixture(scope="module")
def baseline():
    """The preflight passes as the machine is (scripts/test ran scripts/setup --test)."""
    p = setup("--test")
    if p.returncode != 0:
        pytest.fail("preflight fails without hiding anything:\n" + p.stderr)
    return p


def test_preflight_passes_on_this_machine(baseline):
    assert missing_lines(baseline) == []


def test_missing_clang_format_is_named_with_its_package(baseline, tmp_path):
    p = setup("--test", env={"PATH": path_without(tmp_path, "clang-format")})
    assert p.returncode == 1, p.stderr
    assert missing_lines(p) == ["setup: missing clang-format -> apt-get install clang-format"]


def test_missing_pkg_config_module_stops_scripts_run_before_the_build(baseline, tmp_path):
    env = {"PKG_CONFIG_LIBDIR": pc_dir_without(tmp_path, "libuv"), "PKG_CONFIG_PATH": ""}
    p = setup(env=env)
    assert p.returncode == 1, p.stderr
    assert missing_lines(p) == ["setup: missing pkg-config module libuv -> apt-get install libuv1-dev"]
    # scripts/run stops at the preflight: no cmake, no ninja, no server.
    p = setup(env=env, script="scripts/run", timeout=120)
    assert p.returncode == 1, p.stdout + p.stderr
    assert missing_lines(p) == ["setup: missing pkg-config module libuv -> apt-get install libuv1-dev"]
    assert "ninja" not in p.stdout + p.stderr and "Building C object" not in p.stdout


def test_missing_bench_tools_are_named(baseline, tmp_path):
    """--bench checks wrk, h2load, nginx and pgbench too: with none of the bench's
    commands on PATH, each is named with its package (build and test items pass)."""
    hidden = {"wrk", "h2load", "nghttp", "nginx", "pgbench"}
    d = tmp_path / "bin"
    d.mkdir()
    for entry in os.environ["PATH"].split(os.pathsep):
        if entry and os.path.isdir(entry):
            for f in os.scandir(entry):
                if (f.name not in hidden and os.access(f.path, os.X_OK) and not f.is_dir()
                        and not (d / f.name).exists() and not (d / f.name).is_symlink()):
                    (d / f.name).symlink_to(f.path)
    p = setup("--bench", env={"PATH": str(d)})
    assert p.returncode == 1, p.stderr
    lines = missing_lines(p)
    for want in ["setup: missing wrk -> apt-get install wrk",
                 "setup: missing h2load -> apt-get install nghttp2-client",
                 "setup: missing nginx -> apt-get install nginx-light",
                 "setup: missing pgbench -> apt-get install postgresql-client"]:
        assert want in lines, p.stderr


@pytest.mark.skipif(os.geteuid() != 0, reason="runs PostgreSQL as the postgres user (root only)")
def test_service_pg_works_from_a_clone_postgres_cannot_enter(tmp_path):
    """A clone in root's home (mode 0700), as a new user makes it: scripts/service-pg still
    starts the throwaway PostgreSQL (its cluster then lives in /var/tmp) and stops it."""
    if not Path("/usr/lib/postgresql/15/bin/initdb").exists():
        pytest.skip("PostgreSQL 15 is not installed (scripts/setup --test)")
    home = tmp_path / "home"
    (home / "tms" / "scripts").mkdir(parents=True)
    home.chmod(0o700)
    shutil.copy(REPO / "scripts" / "service-pg", home / "tms" / "scripts" / "service-pg")
    script = home / "tms" / "scripts" / "service-pg"
    try:
        p = subprocess.run([str(script)], capture_output=True, text=True, timeout=120,
                           stdin=subprocess.DEVNULL)
        assert p.returncode == 0, p.stderr
        url = p.stdout.strip().splitlines()[-1]
        assert url.startswith("postgres://postgres@127.0.0.1:") and url.endswith("/tms")
        q = subprocess.run(["psql", "-qAt", url, "-c", "SELECT 1"], capture_output=True,
                           text=True, timeout=30)
        assert q.stdout.strip() == "1", q.stderr
    finally:
        s = subprocess.run([str(script), "stop"], capture_output=True, text=True, timeout=120)
        shutil.rmtree(Path("/var/tmp") / ("tms-pg-" + hashlib.sha256(
            str(home / "tms").encode()).hexdigest()[:12]), ignore_errors=True)
    assert s.returncode == 0, s.stderr
    assert "Permission denied" not in p.stderr + s.stderr
    assert subprocess.run(["psql", "-qAt", url, "-c", "SELECT 1"], capture_output=True,
                          timeout=30).returncode != 0
