"""Tasks on PostgreSQL under faults, with a real PostgreSQL 15 of the test's own:
connections killed during a create load, and the server stopped and restarted.

Each test starts a private cluster (initdb in a temp dir, free port), so stopping
it cannot disturb the shared one of scripts/service-pg. Skipped when PostgreSQL 15
is not installed (scripts/setup --test installs it)."""
import concurrent.futures
import os
import shutil
import subprocess
import threading
import time
from pathlib import Path

import pytest
import requests

from conftest import TmsServer, free_port

PG_BIN = Path("/usr/lib/postgresql/15/bin")


def as_postgres(cmd):
    if os.geteuid() == 0:
        return ["runuser", "-u", "postgres", "--", *cmd]
    return cmd


class PrivatePg:
    def __init__(self, root):
        self.root = Path(root)
        self.data = self.root / "data"
        self.sock = self.root / "sock"
        self.port = free_port()

    def init(self):
        self.root.mkdir(parents=True, exist_ok=True)
        self.sock.mkdir(exist_ok=True)
        if os.geteuid() == 0:
            shutil.chown(self.root, "postgres")
            shutil.chown(self.sock, "postgres")
        subprocess.run(as_postgres([str(PG_BIN / "initdb"), "-D", str(self.data), "-U",
                                    "postgres", "-A", "trust", "-E", "UTF8", "--locale=C"]),
                       check=True, capture_output=True)
        return self

    def start(self):
        subprocess.run(as_postgres([
            str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-w", "-l", str(self.root / "log"),
            "-o", f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.sock} "
                  "-c synchronous_commit=on -c fsync=off", "start"]),
            check=True, capture_output=True)

    def stop(self):
        subprocess.run(as_postgres([str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-m",
                                    "immediate", "-w", "stop"]), capture_output=True)

    @property
    def url(self):
        return f"postgres://postgres@127.0.0.1:{self.port}/postgres"

    def sql(self, query):
        r = subprocess.run(["psql", "-qAt", "-v", "ON_ERROR_STOP=1", self.url, "-c", query],
                           capture_output=True, text=True, timeout=30)
        assert r.returncode == 0, r.stderr
        return r.stdout.strip()


@pytest.fixture
def pg(tmp_path):
    if not (PG_BIN / "initdb").exists():
        pytest.skip("PostgreSQL 15 is not installed (scripts/setup --test)")
    root = Path("/tmp") / f"tms-pg-{os.getpid()}-{free_port()}"  # short: socket path limit
    p = PrivatePg(root).init()
    p.start()
    yield p
    p.stop()
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def pg_server(tmp_path, pg):
    s = TmsServer(tmp_path / "tms", settings={"tasks.url": pg.url}).start()
    yield s
    s.kill()


def test_killed_connections_lose_no_acknowledged_create(pg, pg_server):
    token, _ = pg_server.register()
    stop = threading.Event()
    acked, others, hung = [], [], []
    lock = threading.Lock()

    def creator(n):
        i = 0
        while not stop.is_set():
            i += 1
            try:
                r = pg_server.post("/api/task", token=token, timeout=15,
                                   json={"title": f"load {n}-{i}", "description": "fault"})
            except requests.Timeout:
                with lock:
                    hung.append(i)
                continue
            with lock:
                (acked if r.status_code == 201 else others).append(
                    r.json()["id"] if r.status_code == 201 else (r.status_code, r.text))

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(creator, n) for n in range(8)]
        time.sleep(0.5)
        killed = 0
        for _ in range(5):
            killed += int(pg.sql(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE datname = 'postgres' AND pid <> pg_backend_pid() "
                "AND backend_type = 'client backend'"))
            time.sleep(0.4)
        time.sleep(1.5)  # let it reconnect and go on creating
        stop.set()
        for f in futures:
            f.result(timeout=60)

    print(f"killed={killed} acked={len(acked)} unavailable={len(others)}")
    assert killed >= 4, "the test did not kill TMS's connections"
    assert not hung, f"{len(hung)} requests hung past 15 s"
    assert all(code == 503 for code, _ in others), others[:5]
    assert len(acked) > 50, (len(acked), others[:5])
    # Every acknowledged create is in the database, each exactly once.
    ids = set(pg.sql("SELECT id FROM tasks").split())
    assert set(acked) <= ids, sorted(set(acked) - ids)[:10]
    assert len(acked) == len(set(acked))
    # It serves again without a restart.
    pg_server.create_task(token, title="after the kills")
    assert pg_server.get("/readyz").status_code == 200


def test_database_down_then_back(pg, pg_server):
    token, _ = pg_server.register()
    task = pg_server.create_task(token, title="before the outage")
    assert pg_server.get("/readyz").status_code == 200
    pg.stop()
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        r = pg_server.get("/readyz", timeout=10)
        if r.status_code == 503:
            break
        time.sleep(0.2)
    assert r.status_code == 503 and "tasks" in r.text, r.text
    t0 = time.monotonic()
    r = pg_server.get_task(token, task["id"])
    assert r.status_code == 503 and time.monotonic() - t0 < 10, (r.status_code, r.text)
    pg.start()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if pg_server.get("/readyz", timeout=10).status_code == 200:
            break
        time.sleep(0.2)
    assert pg_server.get("/readyz").status_code == 200, pg_server.log_text()[-2000:]
    assert pg_server.task_ok(token, task["id"])["title"] == "before the outage"
    pg_server.create_task(token, title="after the outage")
