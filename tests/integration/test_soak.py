"""Soak (issue 10, part 6): minutes of mixed load on the sanitizer build, then a clean
stop: LeakSanitizer finds nothing (tms exits 0) and, after the warm-up, the peak resident
set of the second half is within 10 % of the first half's. Long, so only when asked:

    TMS_SOAK_SECONDS=600 TMS_BIN=build-asan/tms build-venv/bin/python -m pytest -q \
        -p no:cacheprovider -s tests/integration/test_soak.py

The mix is the bench's: mostly reads and lists, creates with and without an assignee,
updates and reassignments, deletes, logins, over REST by several clients at once."""
import os
import random
import threading
import time

import pytest
import requests

from conftest import unique_email

SECONDS = int(os.environ.get("TMS_SOAK_SECONDS", "0"))
WARMUP = min(60, SECONDS // 5)
CLIENTS = 6

pytestmark = pytest.mark.skipif(SECONDS <= 0, reason="set TMS_SOAK_SECONDS to soak")


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


def worker(srv, stop, stats, seed):
    rng = random.Random(seed)
    s = requests.Session()
    email = unique_email("soak")
    password = "Soak-Passw0rd-" + str(seed)
    r = s.post(srv.url("/api/auth/register"), json={"email": email, "password": password})
    token, me = r.json()["token"], r.json()["user"]
    mine = []
    while not stop.is_set():
        h = {"Authorization": f"Bearer {token}"}
        roll = rng.random()
        try:
            if roll < 0.45 and mine:
                r = s.get(srv.url(f"/api/task/{rng.choice(mine)}"), headers=h)
            elif roll < 0.65:
                r = s.get(srv.url("/api/task"), headers=h, params={"limit": 20})
            elif roll < 0.8 or not mine:
                body = {"title": f"soak {rng.random()}", "description": "soak load"}
                if rng.random() < 0.5:
                    body["assignedTo"] = me["id"]
                r = s.post(srv.url("/api/task"), headers=h, json=body)
                if r.status_code == 201:
                    mine.append(r.json()["id"])
            elif roll < 0.93:
                r = s.patch(srv.url(f"/api/task/{rng.choice(mine)}"), headers=h,
                            json={"status": rng.choice(["open", "in progress", "closed"]),
                                  "assignedTo": rng.choice([me["id"], None])})
            elif roll < 0.98:
                tid = mine.pop(rng.randrange(len(mine)))
                r = s.delete(srv.url(f"/api/task/{tid}"), headers=h)
            else:
                r = s.post(srv.url("/api/auth/login"), json={"email": email,
                                                             "password": password})
                if r.status_code == 200:
                    token = r.json()["token"]
            key = r.status_code // 100
            stats[key] = stats.get(key, 0) + 1
        except requests.RequestException as e:
            stats["exc"] = stats.get("exc", 0) + 1
            stats["last_exc"] = repr(e)


def test_soak_no_leak_and_flat_rss(make_server):
    # A small ASan quarantine fills during warm-up, so that it does not read as growth.
    env = {"ASAN_OPTIONS": "detect_leaks=1:halt_on_error=1:quarantine_size_mb=16"}
    srv = make_server(env=env)
    stop = threading.Event()
    stats = [dict() for _ in range(CLIENTS)]
    threads = [threading.Thread(target=worker, args=(srv, stop, stats[i], i), daemon=True)
               for i in range(CLIENTS)]
    for t in threads:
        t.start()
    time.sleep(WARMUP)
    samples = []  # RSS every 5 s after the warm-up
    end = time.monotonic() + SECONDS - WARMUP
    while time.monotonic() < end:
        samples.append(rss_kib(srv.proc.pid))
        time.sleep(min(5, max(0.1, end - time.monotonic())))
    samples.append(rss_kib(srv.proc.pid))
    stop.set()
    for t in threads:
        t.join(30)
    # Peaks of the first and the second half: under ASan the resident set swings by
    # 100 MiB from sample to sample (its allocator returns memory to the system and takes
    # it back), so single samples say nothing; a leak raises the peak.
    half = max(1, len(samples) // 2)
    base = max(samples[:half])
    final = max(samples[half:] or samples)
    total = {}
    for st in stats:
        for k, v in st.items():
            if k != "last_exc":
                total[k] = total.get(k, 0) + v
    print(f"soak {SECONDS} s: requests by class {total}; peak RSS first half {base} KiB, "
          f"second half {final} KiB ({(final - base) * 100 / base:+.1f} %), samples (MiB) "
          f"{[x // 1024 for x in samples]}")
    assert total.get(5, 0) == 0 and total.get("exc", 0) == 0, stats
    assert total.get(2, 0) > SECONDS * 10, "too little load"
    assert final < base * 1.10, f"RSS grew from {base} to {final} KiB"
    srv.stop_ok()  # LeakSanitizer runs at exit: a leak makes the exit code non-zero
    assert "LeakSanitizer" not in srv.log_text()
