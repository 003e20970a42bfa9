#!/usr/bin/env python3
"""p50/p99 of GET /api/task/:id, one process vs the split deployment, in one run.

  bench/split_latency.py [--bin build/tms] [--seconds 15] [--conns 1,16]

Both setups use the same services (TMS_TEST_PG_URL tasks, TMS_TEST_MONGO_URL users,
TMS_TEST_KAFKA_BROKERS events; a fresh PostgreSQL database and MongoDB database each),
rate limits off, and the same load: wrk (closed loop, 1 thread) for --seconds per
connection count, --latency percentiles. The split hop is gateway -> auth (token check)
-> gateway -> task -> gateway, two gRPC calls per request. Prints a markdown table."""
import argparse
import os
import re
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))
from tms_split import RoleProcess, SplitDeployment, free_port  # noqa: E402

PG = os.environ["TMS_TEST_PG_URL"]
MONGO = os.environ["TMS_TEST_MONGO_URL"]
BROKERS = os.environ["TMS_TEST_KAFKA_BROKERS"]


def settings(tag):
    name = f"tms_bench_{tag}_{secrets.token_hex(4)}"
    subprocess.run(["psql", "-qAt", PG, "-c", f"CREATE DATABASE {name}"], check=True,
                   capture_output=True)
    base = PG.partition("?")[0].rsplit("/", 1)[0]
    mhost = MONGO.split("://", 1)[1].split("/", 1)[0]
    return name, {"tasks.url": f"{base}/{name}", "users.url": f"mongodb://{mhost}/{name}",
                  "events.brokers": BROKERS, "events.namespace": name.replace("_", ""),
                  "auth.jwt_secret": secrets.token_hex(24), "log.level": "warn",
                  "ratelimit.api_per_minute": "0", "ratelimit.login_per_15min": "0",
                  "ratelimit.task_create_per_hour": "0", "notify.per_assigner_per_hour": "0",
                  "notify.per_recipient_per_hour": "0"}


class OneProcess(SplitDeployment):
    """All four roles in one process, started the same way as the split roles."""

    def __init__(self, tms_bin, workdir, s):
        super().__init__(tms_bin, workdir, s)
        p = RoleProcess(self, "gateway,auth,task,notifier", 0)
        p.name = "one"
        self.procs = {"auth": [], "task": [], "notifier": [], "gateway": [p]}

    def role_settings(self, role):
        return dict(self.settings)


def wrk(url, token, conns, seconds):
    out = subprocess.run(["wrk", "-t1", f"-c{conns}", f"-d{seconds}s", "--latency",
                          "-H", f"Authorization: Bearer {token}", url],
                         capture_output=True, text=True, check=True).stdout

    def ms(label):
        m = re.search(rf"^\s+{label}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        v, unit = float(m.group(1)), m.group(2)
        return v / 1000 if unit == "us" else v * 1000 if unit == "s" else v
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return ms("50"), ms("99"), rps, int(non2xx.group(1)) if non2xx else 0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default=str(REPO / "build" / "tms"))
    ap.add_argument("--seconds", type=int, default=15)
    ap.add_argument("--conns", default="1,16")
    a = ap.parse_args()
    conns = [int(c) for c in a.conns.split(",")]
    work = Path(tempfile.mkdtemp(prefix="tms-split-bench-"))
    rows, dbs = [], []
    setups = [("one process", lambda s: OneProcess(a.bin, work / "one", s)),
              ("split (4 processes)", lambda s: SplitDeployment(a.bin, work / "split", s))]
    for label, make in setups:
        name, s = settings("one" if label.startswith("one") else "split")
        dbs.append(name)
        dep = make(s).start()
        try:
            dep.wait_ready(30)
            gw = f"http://127.0.0.1:{dep.gateway.port}"
            email = f"bench-{secrets.token_hex(4)}@example.com"
            r = requests.post(f"{gw}/api/auth/register",
                              json={"email": email, "password": "bench-password-1"})
            token = r.json()["token"]
            h = {"Authorization": f"Bearer {token}"}
            tid = requests.post(f"{gw}/api/task", headers=h,
                                json={"title": "bench", "description": "d"}).json()["id"]
            wrk(f"{gw}/api/task/{tid}", token, 4, 3)  # warm-up: connections, caches
            for c in conns:
                p50, p99, rps, bad = wrk(f"{gw}/api/task/{tid}", token, c, a.seconds)
                rows.append((label, c, p50, p99, rps, bad))
        finally:
            dep.stop()
    for name in dbs:
        subprocess.run(["psql", "-qAt", PG, "-c", f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"],
                       capture_output=True)
    print(f"GET /api/task/:id, wrk -t1 -d{a.seconds}s, binary {a.bin}")
    print("| setup | connections | p50 ms | p99 ms | req/s | non-2xx |")
    print("|---|---|---|---|---|---|")
    for label, c, p50, p99, rps, bad in rows:
        print(f"| {label} | {c} | {p50:.2f} | {p99:.2f} | {rps:.0f} | {bad} |")


if __name__ == "__main__":
    main()
