#!/usr/bin/env python3
"""Helpers of the benchmark harness (standard library only, except `report`, which
needs matplotlib). Parsers print `key value` lines that bench/lib.sh records.

  tools.py wrk FILE                 rps, p50/p90/p99 in ms, errors of `wrk --latency`
  tools.py h2load FILE LOG          rps from h2load's summary, percentiles from --log-file
  tools.py pgbench FILE LOG...      tps from pgbench's summary, percentiles from -l logs
  tools.py ghz FILE                 the same from `ghz -O json`
  tools.py seed URL OUT --users N --tasks N [--tasks-only]   through the API
  tools.py seed-sql sqlite|pg DB|URL SEED N                 --quick: straight into the store
  tools.py conns HOST PORT N PID    opens N keep-alive connections, prints RSS (KiB)
  tools.py report WORK OUTDIR STAMP writes STAMP.json, STAMP.md, STAMP-*.png, latest.*
  tools.py kafka-e2e URL TOKEN ASSIGNEE BROKERS N RATE   create response -> event consumed
"""
import json
import os
import re
import sys
import threading
import time


def pct(values, p):
    if not values:
        return float("nan")
    values = sorted(values)
    k = min(len(values) - 1, max(0, int(round(p / 100.0 * len(values) + 0.5)) - 1))
    return values[k]


def dur_ms(text):
    m = re.match(r"([\d.]+)(us|ms|s|m)$", text)
    if not m:
        return float("nan")
    v, u = float(m.group(1)), m.group(2)
    return v * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}[u]


def out(d):
    for k, v in d.items():
        print(k, v)


def cmd_wrk(path):
    t = open(path).read()
    d = {"rps": float(re.search(r"Requests/sec:\s+([\d.]+)", t).group(1))}
    for p in ("50", "90", "99"):
        m = re.search(r"^\s+%s%%\s+(\S+)" % p, t, re.M)
        if m:
            d["p%s_ms" % p] = round(dur_ms(m.group(1)), 3)
    m = re.search(r"Latency\s+(\S+)", t)
    if m:
        d["mean_ms"] = round(dur_ms(m.group(1)), 3)
    m = re.search(r"(\d+) requests in", t)
    d["requests"] = int(m.group(1)) if m else 0
    errs = 0
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", t)
    if m:
        errs += int(m.group(1))
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", t)
    if m:
        errs += sum(int(x) for x in m.groups())
    d["errors"] = errs
    out(d)


def cmd_stime(*paths):
    """Parallel `openssl s_time -new` runs: handshakes per second of wall time, summed."""
    total, rate = 0, 0.0
    for p in paths:
        m = re.search(r"(\d+) connections in (\d+) real seconds", open(p).read())
        if m and int(m.group(2)) > 0:
            total += int(m.group(1))
            rate += int(m.group(1)) / int(m.group(2))
    out({"hs_per_s": round(rate, 1), "connections": total, "clients": len(paths)})


def cmd_h2load(path, logf):
    t = open(path).read()
    d = {"rps": float(re.search(r"finished in [^,]+, ([\d.]+) req/s", t).group(1))}
    m = re.search(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, (\d+) errored", t)
    d["requests"] = int(m.group(3))
    d["errors"] = int(m.group(5)) + int(m.group(6))
    lat = []
    for line in open(logf):
        f = line.split("\t")
        if len(f) >= 3:
            lat.append(int(f[2]) / 1000.0)
    for p in (50, 90, 99):
        d["p%d_ms" % p] = round(pct(lat, p), 3)
    out(d)


def cmd_pgbench(path, *logs):
    t = open(path).read()
    m = re.search(r"^tps = ([\d.]+)", t, re.M)
    d = {"rps": float(m.group(1)) if m else 0.0}
    m = re.search(r"number of failed transactions: (\d+)", t)
    d["errors"] = int(m.group(1)) if m else 0
    lat = []
    for lf in logs:
        for line in open(lf):
            f = line.split()
            if len(f) >= 3:
                lat.append(int(f[2]) / 1000.0)
    d["requests"] = len(lat)
    for p in (50, 90, 99):
        d["p%d_ms" % p] = round(pct(lat, p), 3)
    out(d)


def cmd_ghz(path):
    r = json.load(open(path))
    d = {"rps": round(r["rps"], 1), "requests": r["count"]}
    for e in r.get("latencyDistribution") or []:
        if e["percentage"] in (50, 90, 99):
            d["p%d_ms" % e["percentage"]] = round(e["latency"] / 1e6, 3)
    codes = r.get("statusCodeDistribution") or {}
    d["errors"] = sum(v for k, v in codes.items() if k != "OK")
    out(d)


# --- seeding through the API -----------------------------------------------------------
def _client(url):
    import http.client
    import urllib.parse
    u = urllib.parse.urlparse(url)
    return http.client.HTTPConnection(u.hostname, u.port, timeout=60)


def _call(conn, method, path, body=None, token=None):
    h = {"Content-Type": "application/json"}
    if token:
        h["Authorization"] = "Bearer " + token
    for attempt in range(50):  # 503 "server busy": back off and retry
        conn.request(method, path, body=json.dumps(body) if body is not None else None, headers=h)
        r = conn.getresponse()
        data = r.read()
        if r.status != 503:
            break
        time.sleep(0.05 * (attempt + 1))
    if r.status >= 300:
        raise RuntimeError("%s %s: %d %s" % (method, path, r.status, data[:200]))
    return json.loads(data)


def _parallel(n_items, workers, url, fn):
    """Runs fn(conn, i) for i in range(n_items) on `workers` keep-alive connections."""
    lock = threading.Lock()
    nxt = [0]
    errors = []

    def run():
        conn = _client(url)
        while True:
            with lock:
                i = nxt[0]
                nxt[0] += 1
            if i >= n_items or errors:
                return
            try:
                fn(conn, i)
            except Exception as e:  # noqa: BLE001 - reported below
                errors.append(e)
                return

    ts = [threading.Thread(target=run) for _ in range(workers)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    if errors:
        raise errors[0]


def cmd_seed(url, outp, *args):
    users = int(args[args.index("--users") + 1]) if "--users" in args else 100
    tasks = int(args[args.index("--tasks") + 1]) if "--tasks" in args else 10000
    t0 = time.time()
    if "--tasks-only" in args:
        seed = json.load(open(outp))
    else:
        seed = {"users": [None] * users, "password": "benchmark-password"}

        def reg(conn, i):
            r = _call(conn, "POST", "/api/auth/register",
                      {"email": "bench%03d@example.com" % i, "password": seed["password"]})
            seed["users"][i] = {"email": "bench%03d@example.com" % i, "id": r["user"]["id"],
                                "token": r["token"]}

        _parallel(users, 8, url, reg)
    t1 = time.time()
    us = seed["users"]
    ids = [None] * tasks

    def create(conn, i):
        body = _task(us, i)
        creator = body.pop("createdBy")
        ids[i] = _call(conn, "POST", "/api/task", body, us[creator]["token"])["id"]

    if tasks:
        _parallel(tasks, 32, url, create)
    seed["task_ids"] = ids
    seed["seconds_users"] = round(t1 - t0, 2)
    seed["seconds_tasks"] = round(time.time() - t1, 2)
    json.dump(seed, open(outp, "w"))
    print("seeded %d users in %.1fs, %d tasks in %.1fs" % (
        len(us), t1 - t0, tasks, time.time() - t1), file=sys.stderr)


def _task(us, i):
    """The i-th seeded task (the same through the API or SQL)."""
    body = {"title": "Task %d" % i,
            "description": "Seeded task %d, %s" % (i, ("lorem ipsum " * (1 + i % 8)).strip()),
            "createdBy": i % len(us)}
    if i % 2:
        body["assignedTo"] = us[(i * 7) % len(us)]["id"]
    if i % 3 == 1:
        body["status"] = "in progress"
    return body


def _rows(seed, n):
    now = int(time.time() * 1000)
    us = seed["users"]
    for i in range(n):
        t = _task(us, i)
        yield (t["title"], t["description"], t.get("status", "open"), t.get("assignedTo"),
               us[t["createdBy"]]["id"], now, now, 1)


def cmd_seed_sql(kind, target, seedp, n):
    """--quick: the same tasks straight into the store (TMS stopped). kind sqlite: target
    is the database file; kind pg: target is a psql URL, rows go through COPY."""
    n = int(n)
    seed = json.load(open(seedp))
    t0 = time.time()
    cols = ("title, description, status, assigned_to, created_by, created_at_ms,"
            " updated_at_ms, version")
    if kind == "sqlite":
        import sqlite3
        db = sqlite3.connect(target)
        db.executemany("INSERT INTO tasks (%s) VALUES (?, ?, ?, ?, ?, ?, ?, ?)" % cols,
                       _rows(seed, n))
        db.commit()
        ids = [str(r[0]) for r in db.execute("SELECT id FROM tasks ORDER BY id")]
        db.close()
    else:
        import subprocess
        data = "".join("\t".join("\\N" if v is None else str(v) for v in r) + "\n"
                       for r in _rows(seed, n))
        subprocess.run(["psql", "-q", target, "-c", "COPY tasks (%s) FROM STDIN" % cols],
                       input=data, text=True, check=True, stdout=subprocess.DEVNULL)
        ids = subprocess.run(["psql", "-qAt", target, "-c", "SELECT id FROM tasks ORDER BY id"],
                             capture_output=True, text=True, check=True).stdout.split()
    seed["task_ids"] = ids[-n:]
    seed["seconds_tasks"] = round(time.time() - t0, 2)
    json.dump(seed, open(seedp, "w"))
    print("seeded %d tasks with SQL in %.1fs" % (n, time.time() - t0), file=sys.stderr)


# --- idle keep-alive connections ------------------------------------------------------
def cmd_conns(host, port, n, pid):
    import asyncio
    import resource
    n, port = int(n), int(port)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, n + 1000)), hard))
    req = b"GET /healthz HTTP/1.1\r\nHost: bench\r\n\r\n"
    sem = asyncio.Semaphore(500)
    conns = []

    async def one():
        async with sem:
            r, w = await asyncio.open_connection(host, port)
            w.write(req)
            await w.drain()
            head = await r.readuntil(b"\r\n\r\n")
            m = re.search(rb"content-length:\s*(\d+)", head, re.I)
            if m:
                await r.readexactly(int(m.group(1)))
            conns.append(w)

    async def main():
        t0 = time.time()
        res = await asyncio.gather(*(one() for _ in range(n)), return_exceptions=True)
        fails = [x for x in res if isinstance(x, Exception)]
        await asyncio.sleep(1.0)
        rss = int(re.search(r"VmRSS:\s+(\d+)", open("/proc/%s/status" % pid).read()).group(1))
        print("open", len(conns))
        print("failed", len(fails))
        print("open_seconds", round(time.time() - t0, 2))
        print("rss_kib", rss)
        if fails:
            print("first_error", repr(fails[0]).replace(" ", "_")[:120])
        for w in conns:
            w.close()

    asyncio.run(main())


# --- report ---------------------------------------------------------------------------
def _num(v):
    try:
        f = float(v)
        return int(f) if f.is_integer() and "." not in v else f
    except ValueError:
        return v


def _ratio(a, b):
    if a is None or b in (None, 0) or isinstance(a, str) or isinstance(b, str):
        return None
    return round(a / b, 3)


def load_records(work):
    pairs = {}
    path = os.path.join(work, "records.tsv")
    if os.path.exists(path):
        for line in open(path):
            p, k, v = line.rstrip("\n").split("\t", 2)
            pairs.setdefault(p, {})[k] = _num(v)
    return pairs


def evaluate(P):
    """Ratios and the issue's targets: list of (pair, what, value, target, met, note)."""
    rows = []

    def g(p, k):
        return P.get(p, {}).get(k)

    def row(pair, what, value, target, cmp, note=""):
        met = None if value is None else cmp(value)
        rows.append({"pair": pair, "what": what, "value": value, "target": target,
                     "met": met, "note": note})

    if "http" in P:
        row("http", "GET rps TMS / nginx", _ratio(g("http", "tms.rps"), g("http", "nginx.rps")),
            ">= 0.70", lambda v: v >= 0.7)
        rate, got = g("http", "tms_fixed.rate"), g("http", "tms_fixed.rps")
        got2 = g("http", "tms_fixed2.rps")
        kept = (rate is not None and got is not None and got >= 0.95 * rate and
                (got2 is None or got2 >= 0.95 * rate))

        def p99s(side):  # the rounds measured (two since session 10; one before)
            return [v for v in (g("http", side + ".p99_ms"), g("http", side + "2.p99_ms"))
                    if isinstance(v, (int, float))]
        tms_p, ngx_p = p99s("tms_fixed"), p99s("nginx_fixed")
        row("http", "p99 at half nginx peak, TMS / nginx",
            _ratio(sum(tms_p) / len(tms_p), sum(ngx_p) / len(ngx_p)) if tms_p and ngx_p else None,
            "<= 1.5", lambda v: v <= 1.5 and kept,
            "rate %s/s; achieved TMS %s/s, nginx %s/s; p99 per round (ms) TMS %s, nginx %s%s" % (
                rate, got, g("http", "nginx_fixed.rps"), " / ".join(map(str, tms_p)),
                " / ".join(map(str, ngx_p)),
                "" if kept else "; TMS could not keep the rate, so its queueing is not in its p99"))
    if "pg_get" in P:
        row("pg_get", "GET rps TMS (pipelined) / pgbench",
            _ratio(g("pg_get", "tms.rps"), g("pg_get", "pgbench.rps")), ">= 1.0",
            lambda v: v >= 1.0)
        row("pg_get", "GET rps TMS (pipeline_depth=1) / pgbench",
            _ratio(g("pg_get", "tms_unpipelined.rps"), g("pg_get", "pgbench.rps")), "info",
            lambda v: None)
    if "pg_post" in P:
        row("pg_post", "POST rps TMS / pgbench INSERT task+outbox",
            _ratio(g("pg_post", "tms.rps"), g("pg_post", "pgbench.rps")), ">= 0.80",
            lambda v: v >= 0.8)
        row("pg_post", "POST rps TMS / pgbench running TMS's create statement",
            _ratio(g("pg_post", "tms.rps"), g("pg_post", "pgbench_tms.rps")), "info",
            lambda v: None)
    if "kafka" in P:
        # Each side runs wrk twice (the measurement, then the run its CPU per create is
        # taken over); the ratio is of the two runs' mean. One run a side swung from 0.77
        # to 1.22 between quick runs of one build while the CPU per create of both sides
        # stayed within 5 %.
        def mean_rps(first, second):
            v = [x for x in (g("kafka", first), g("kafka", second))
                 if isinstance(x, (int, float)) and x > 0]
            return sum(v) / len(v) if v else None
        kafka = mean_rps("tms_kafka.rps", "on.cpu_run_rps")
        local = mean_rps("tms_local.rps", "off.cpu_run_rps")

        def cpu(side):
            v = [g("kafka", "%s.cpu_ms_per_1k_creates.%s" % (side, p))
                 for p in ("tms", "postgres", "broker")]
            return "%.0f" % sum(v) if all(isinstance(x, (int, float)) for x in v) else "?"
        row("kafka", "POST rps (PostgreSQL) with events on Kafka / in process",
            _ratio(kafka, local), ">= 0.90", lambda v: v >= 0.9,
            "not measured: %s" % g("kafka", "kafka_status") if kafka is None else
            "mean of two runs a side: on %s, %s; off %s, %s creates/s; server CPU per "
            "1,000 creates on %s, off %s ms" % (
                g("kafka", "tms_kafka.rps"), g("kafka", "on.cpu_run_rps"),
                g("kafka", "tms_local.rps"), g("kafka", "off.cpu_run_rps"), cpu("on"), cpu("off")))
        for rate, limit in ((100, 12), (1000, 30)):
            e = "e2e_%d." % rate
            row("kafka", "p99 create response -> event consumed at %d creates/s (ms)" % rate,
                g("kafka", e + "p99_ms"), "<= %d" % limit, lambda v, limit=limit: v <= limit,
                "p50 %s ms, %s of %s consumed, achieved %s creates/s, creates sent late "
                "p99 %s ms; p99 of the legs: relay %s ms, Kafka %s ms; linger.ms %s; the "
                "consumer's fetch.wait.max.ms %s" % (
                    g("kafka", e + "p50_ms"), g("kafka", e + "consumed"),
                    g("kafka", e + "created"), g("kafka", e + "achieved_rate"),
                    g("kafka", e + "late_starts_p99_ms"), g("kafka", e + "relay_p99_ms"),
                    g("kafka", e + "kafka_p99_ms"), g("kafka", "linger_ms"),
                    g("kafka", e + "consumer_fetch_wait_ms") or "1 (before it was recorded)"))
    if "sqlite_post" in P:
        c = P["sqlite_post"].get("conns") or "CONNS"
        row("sqlite_post", "POST rps TMS (group commit) / C reference, one transaction per "
            "create, %s connections" % c,
            _ratio(g("sqlite_post", "tms.rps"), g("sqlite_post", "ref_c%s.rps" % c)), ">= 2.0",
            lambda v: v >= 2.0, "reference %s creates/s, %s failed (busy)" % (
                g("sqlite_post", "ref_c%s.rps" % c), g("sqlite_post", "ref_c%s.failures" % c)))
        row("sqlite_post", "POST rps TMS / C reference, one transaction per create, 1 connection",
            _ratio(g("sqlite_post", "tms.rps"), g("sqlite_post", "ref_c1.rps")), "info",
            lambda v: None, "SQLite's one writer without contention: %s creates/s" %
            g("sqlite_post", "ref_c1.rps"))
        row("sqlite_post", "writes per group commit (TMS)", g("sqlite_post", "writes_per_commit"),
            "info", lambda v: None, "tasks, outbox deletes (sent) and inbox records share each fsync")
    if "grpc" in P:
        row("grpc", "gRPC GetTask (h2load) / REST GET (wrk, 100 conns)",
            _ratio(g("grpc", "tms_h2load.rps"), g("grpc", "rest.rps")), ">= 0.70",
            lambda v: v >= 0.7)
        row("grpc", "gRPC GetTask (h2load) / nginx h2 same bytes",
            _ratio(g("grpc", "tms_h2load.rps"), g("grpc", "nginx_h2load.rps")), ">= 1.0",
            lambda v: v >= 1.0)
        row("grpc", "ghz GetTask / nginx h2 same bytes (h2load)",
            _ratio(g("grpc", "tms_ghz.rps"), g("grpc", "nginx_h2load.rps")), "info",
            lambda v: None, "different clients: ghz is the heavier one")
    if "login" in P:
        row("login", "logins/s in storm / (hash threads running / hash time alone)",
            _ratio(g("login", "storm_login.rps"), g("login", "capacity_rps")), ">= 0.80",
            lambda v: v >= 0.8, "%s of auth.hash_threads %s running (capped at the server's "
            "CPUs less one); hash threads share SERVER_CPU with the loop" % (
                g("login", "hash_threads_running"), g("login", "hash_threads")))
        row("login", "logins/s in storm / (auth.hash_threads / hash time alone)",
            _ratio(g("login", "storm_login.rps"), g("login", "capacity_configured_rps")),
            "info", lambda v: None)
        row("login", "logins/s in storm / (min(hash_threads, server cores) / hash time)",
            _ratio(g("login", "storm_login.rps"), g("login", "capacity_cores_rps")), "info",
            lambda v: None, "what the layout allows")
        row("login", "GET rps in storm / alone",
            _ratio(g("login", "storm_get.rps"), g("login", "alone_get.rps")), ">= 0.60",
            lambda v: v >= 0.6)
        row("login", "GET p99 in storm (ms)", g("login", "storm_get.p99_ms"), "< 10",
            lambda v: v < 10)
        row("login", "GET p99 in storm / alone",
            _ratio(g("login", "storm_get.p99_ms"), g("login", "alone_get.p99_ms")), "info",
            lambda v: None)
    if "tls" in P:
        row("tls", "GET over TLS 1.3 (keep-alive) rps TMS / nginx",
            _ratio(g("tls", "tms.rps"), g("tls", "nginx.rps")), ">= 0.70", lambda v: v >= 0.70,
            "same RSA 2048 certificate; cipher %s / %s" % (g("tls", "tms.cipher"),
                                                           g("tls", "nginx.cipher")))
        row("tls", "new TLS handshakes/s TMS / nginx",
            _ratio(g("tls", "tms_hs.hs_per_s"), g("tls", "nginx_hs.hs_per_s")), ">= 0.80",
            lambda v: v >= 0.80, "%s vs %s per s, 8 x openssl s_time -new" % (
                g("tls", "tms_hs.hs_per_s"), g("tls", "nginx_hs.hs_per_s")))
    if "workers" in P:
        row("workers", "rps workers=2 / workers=1",
            _ratio(g("workers", "w2.rps"), g("workers", "w1.rps")), ">= 1.6",
            lambda v: v >= 1.6)
    if "push" in P:
        row("push", "SSE commit -> delivery at the last of %s subscribers, p99 (ms)" %
            g("push", "subs"), g("push", "p99_ms"), "info", lambda v: None,
            "%s changes/s; p50 %s ms; %s (event, subscriber) pairs missing" % (
                g("push", "rate"), g("push", "p50_ms"), g("push", "missing")))
        row("push", "server RSS per idle SSE subscriber (KiB)", g("push", "rss_per_sub_kib"),
            "info", lambda v: None)
    if "memory" in P:
        d = g("memory", "conns_rss_kib"), g("memory", "idle_rss_kib")
        row("memory", "RSS with %s idle keep-alive conns - idle (MiB)" % g("memory", "conns_open"),
            None if None in d else round((d[0] - d[1]) / 1024, 1), "<= 64",
            lambda v: v <= 64)
        d = g("memory", "after_rss_kib"), g("memory", "before_rss_kib")
        row("memory", "RSS growth over %s requests (MiB)" % g("memory", "requests"),
            None if None in d else round((d[0] - d[1]) / 1024, 1), "~0 (no growth)",
            lambda v: v <= 1.0, "after a warm-up; <= 1 MiB counted as no growth")
    return rows


# Side-by-side bars: (pair, label, tms key, reference key, reference label)
CHART = [
    ("http", "GET /api/task/:id\nvs nginx", "tms", "nginx", "nginx"),
    ("http", "GET fixed rate\nvs nginx", "tms_fixed", "nginx_fixed", "nginx"),
    ("pg_get", "GET on PG\nvs pgbench", "tms", "pgbench", "pgbench"),
    ("pg_post", "POST on PG\nvs pgbench", "tms", "pgbench", "pgbench"),
    ("sqlite_post", "POST on SQLite\nvs C ref", "tms", "ref_c64", "C, 64 conns"),
    ("grpc", "gRPC GetTask\nvs nginx h2", "tms_h2load", "nginx_h2load", "nginx h2"),
    ("grpc", "gRPC GetTask\nvs REST", "tms_h2load", "rest", "REST"),
    ("login", "GET in login storm\nvs alone", "storm_get", "alone_get", "alone"),
    ("tls", "GET over TLS\nvs nginx TLS", "tms", "nginx", "nginx"),
]


def charts(P, outdir, stamp):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker
    rows = [c for c in CHART if P.get(c[0], {}).get(c[2] + ".rps") is not None]
    files = []
    if not rows:
        return files
    labels = [c[1] for c in rows]
    x = range(len(rows))
    w = 0.38
    fig, ax = plt.subplots(figsize=(max(8, 1.6 * len(rows)), 5))
    tv = [P[c[0]].get(c[2] + ".rps") or 0 for c in rows]
    rv = [P[c[0]].get(c[3] + ".rps") or 0 for c in rows]
    ax.bar([i - w / 2 for i in x], tv, w, label="TMS", color="#1f77b4")
    ax.bar([i + w / 2 for i in x], rv, w, label="reference", color="#aaaaaa")
    for i, c in enumerate(rows):
        ax.text(i + w / 2, rv[i], c[4], ha="center", va="bottom", fontsize=7)
        if rv[i]:
            ax.text(i - w / 2, tv[i], "%.2f" % (tv[i] / rv[i]), ha="center", va="bottom", fontsize=8)
    ax.set_xticks(list(x))
    ax.set_xticklabels(labels, fontsize=8)
    ax.set_ylabel("requests/s")
    ax.set_title("Throughput, TMS beside reference (label on TMS bar: ratio)")
    ax.legend()
    fig.tight_layout()
    f = os.path.join(outdir, "%s-throughput.png" % stamp)
    fig.savefig(f, dpi=110)
    files.append(f)
    plt.close(fig)

    fig, axes = plt.subplots(1, 2, figsize=(max(10, 2.4 * len(rows)), 5))
    for ax, p in zip(axes, ("p50", "p99")):
        tv = [P[c[0]].get(c[2] + ".%s_ms" % p) or 0 for c in rows]
        rv = [P[c[0]].get(c[3] + ".%s_ms" % p) or 0 for c in rows]
        ax.bar([i - w / 2 for i in x], tv, w, label="TMS", color="#1f77b4")
        ax.bar([i + w / 2 for i in x], rv, w, label="reference", color="#aaaaaa")
        ax.set_xticks(list(x))
        ax.set_xticklabels(labels, fontsize=7, rotation=30, ha="right")
        ax.set_ylabel("%s latency (ms)" % p)
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
        ax.set_title("%s latency, TMS beside reference" % p)
        ax.legend()
    fig.tight_layout()
    f = os.path.join(outdir, "%s-latency.png" % stamp)
    fig.savefig(f, dpi=110)
    files.append(f)
    plt.close(fig)
    return files


def fmt(v):
    if v is None:
        return "-"
    if isinstance(v, float):
        return "%.3g" % v if abs(v) < 100 else "%.0f" % v
    return str(v)


def cmd_report(work, outdir, stamp):
    P = load_records(work)
    meta = json.load(open(os.path.join(work, "meta.json")))
    rawd = {}
    rdir = os.path.join(work, "raw")
    if os.path.isdir(rdir):
        for name in sorted(os.listdir(rdir)):
            rawd[name[:-4]] = open(os.path.join(rdir, name), errors="replace").read()
    rows = evaluate(P)
    pngs = []
    try:
        pngs = charts(P, outdir, stamp)
    except Exception as e:  # noqa: BLE001 - the table and JSON still count
        print("charts failed: %r" % e, file=sys.stderr)
    doc = {"meta": meta, "pairs": P, "ratios": rows, "raw": rawd,
           "charts": [os.path.basename(f) for f in pngs]}
    json.dump(doc, open(os.path.join(outdir, stamp + ".json"), "w"), indent=1, sort_keys=True)

    L = ["# TMS benchmark %s%s" % (stamp, " (--quick)" if meta.get("quick") else ""), "",
         "commit `%s`%s; %s, %s CPUs; layout: %s; load average at start %s, at end %s." % (
             meta.get("commit", "?")[:12], " (dirty tree)" if meta.get("dirty") else "",
             meta.get("cpu_model", "?"), meta.get("nproc", "?"), meta.get("layout", "?"),
             meta.get("loadavg_start", "?"), meta.get("loadavg_end", "?")),
         *(["The binary measured says it is not this commit's build: `%s`." % meta["binary"]]
           if meta.get("binary") and meta.get("commit", "?")[:12] not in meta["binary"] else []),
         *(["Note: %s." % meta["note"]] if meta.get("note") else []),
         "Each measurement: %ss after a %ss warm-up; HTTP/1.1 clients: %s connections, 1 thread; "
         "data: %s users, %s tasks; seeding: %s." % (
             meta.get("duration_s"), meta.get("warmup_s"), meta.get("connections"),
             meta.get("users"), meta.get("tasks"), meta.get("seeding")), "",
         *(["The previous run deleted its scratch %s s before this one started: on ext4 "
            "without a journal new files (the Maildir's) cost more for up to 5 min after "
            "a mass deletion ([perf-write-path.md](../../docs/perf-write-path.md), "
            "\"Session 13\"), so `pg_post` and `kafka` may read low." %
            meta["previous_cleanup_s_ago"], ""]
           if meta.get("previous_cleanup_s_ago") is not None
           and meta["previous_cleanup_s_ago"] < 300 else []),
         "## Ratios and targets", "",
         "| pair | ratio / figure | value | target | met |", "|---|---|---|---|---|"]
    for r in rows:
        met = {True: "yes", False: "**no**", None: "-"}[r["met"]]
        L.append("| %s | %s | %s | %s | %s%s |" % (
            r["pair"], r["what"], fmt(r["value"]), r["target"], met,
            " (%s)" % r["note"] if r["note"] else ""))
    L += ["", "## Raw figures", "", "| pair | side | rps | p50 ms | p99 ms | errors |",
          "|---|---|---|---|---|---|"]
    for p, d in P.items():
        sides = []
        for k in d:
            if k.endswith(".rps"):
                sides.append(k[:-4])
        for s in sides:
            L.append("| %s | %s | %s | %s | %s | %s |" % (
                p, s, fmt(d.get(s + ".rps")), fmt(d.get(s + ".p50_ms")),
                fmt(d.get(s + ".p99_ms")), fmt(d.get(s + ".errors"))))
    other = [(p, k, v) for p, d in P.items() for k, v in d.items()
             if not re.search(r"\.(rps|p50_ms|p90_ms|p99_ms|errors|requests|mean_ms|rate|max_ms)$", k)]
    if other:
        L += ["", "| pair | figure | value |", "|---|---|---|"]
        L += ["| %s | %s | %s |" % (p, k, fmt(v)) for p, k, v in other]
    for f in pngs:
        L += ["", "![%s](%s)" % (os.path.basename(f), os.path.basename(f))]
    md = "\n".join(L) + "\n"
    open(os.path.join(outdir, stamp + ".md"), "w").write(md)
    sys.stdout.write(md)
    if not meta.get("all_pairs"):
        return
    latest = md
    for f in pngs:
        b = os.path.basename(f)
        lb = b.replace(stamp, "latest")
        import shutil
        shutil.copyfile(f, os.path.join(outdir, lb))
        latest = latest.replace("(%s)" % b, "(%s)" % lb)
    open(os.path.join(outdir, "latest.md"), "w").write(latest)


# --- Kafka: create response -> event consumed -------------------------------------------
# The client is split into processes so that its own GIL does not show up in the figure:
# with the consumer and ~20 creator threads in one interpreter, a consumed message waited
# for whatever thread held the GIL before it was timestamped, and at 1,000/s the creators
# fell behind their schedule. Now the consumer has a process of its own (it only polls and
# timestamps) and at high rates the creators are two processes, each sending half of the
# schedule from the same absolute start. Every timestamp is time.monotonic()
# (CLOCK_MONOTONIC, one clock for every process on Linux), so a create's response time in
# one process and its event's arrival in another can be subtracted.
def cmd_kafka_e2e(url, token, assignee, brokers, n, rate):
    """Creates n assigned tasks at a fixed rate (open loop: create i is due at start +
    i / rate, whatever happened to the ones before) while a consumer of its own group
    reads `notifications`; prints the latency from each create's response to its event
    arriving at the consumer, and how late the creates were sent against their schedule."""
    import multiprocessing
    n, rate = int(n), float(rate)
    body = {"title": "e2e", "description": "kafka latency", "assignedTo": assignee}
    # "spawn": fresh interpreters, no threads or sockets of this one inherited
    ctx = multiprocessing.get_context("spawn")
    cons_pipe, child = ctx.Pipe()
    consumer = ctx.Process(target=_e2e_consume, args=(brokers, child), daemon=True)
    consumer.start()
    if not cons_pipe.poll(60) or cons_pipe.recv() != "ready":
        raise RuntimeError("the e2e consumer got no assignment in 60 s")

    # One keep-alive connection (and thread) per in-flight create, as before: 8 at
    # 100/s, 20 at 1,000/s; above 200/s they are spread over two processes.
    slots = max(8, int(rate) // 50)
    procs = 2 if rate > 200 else 1
    pipes, creators = [], []
    for p in range(procs):
        mine, child = ctx.Pipe()
        creators.append(ctx.Process(
            target=_e2e_create, daemon=True,
            args=(child, url, token, body, rate, list(range(p, n, procs)), slots // procs)))
        creators[-1].start()
        pipes.append(mine)
    for pp in pipes:  # every creator has its connections open
        if not pp.poll(60) or pp.recv() != "ready":
            raise RuntimeError("an e2e creator did not start in 60 s")
    start = time.monotonic() + 0.2
    for pp in pipes:
        pp.send(start)
    sent, late, errors, finished = {}, [], 0, start
    for pp in pipes:
        r = pp.recv()
        sent.update(r["sent"])
        late += r["late"]
        errors += r["errors"]
        finished = max(finished, r["finished"])
    for c in creators:
        c.join(10)
    took = finished - start
    cons_pipe.send(list(sent))  # the task ids to wait for (30 s at most)
    got = cons_pipe.recv()
    consumer.join(10)
    lat = sorted((got[k][0] - v) * 1000 for k, v in sent.items() if k in got)
    # The two legs, split at the event's Kafka CreateTime (when TMS handed it to
    # librdkafka; wall clock, 1 ms resolution): TMS's relay, then producer + broker +
    # consumer. Percentiles of each leg: they do not add up to the total's. The relay's
    # leg is negative when TMS hands the event over before its response reaches us.
    relay = [(got[k][1] - v) * 1000 for k, v in sent.items() if k in got and got[k][1] is not None]
    kafka = [(got[k][0] - got[k][1]) * 1000 for k in sent if k in got and got[k][1] is not None]
    out({"n": n, "rate": rate, "created": len(sent), "consumed": len(lat),
         "achieved_rate": round(len(sent) / took, 1) if took > 0 else None,
         "lost": len(sent) - len(lat), "errors": errors,
         "p50_ms": round(pct(lat, 50), 2) if lat else None,
         "p99_ms": round(pct(lat, 99), 2) if lat else None,
         "max_ms": round(lat[-1], 2) if lat else None,
         "late_starts_p99_ms": round(pct(late, 99) * 1000, 2) if late else None,
         "relay_p50_ms": round(pct(relay, 50), 1) if relay else None,
         "relay_p99_ms": round(pct(relay, 99), 1) if relay else None,
         "kafka_p50_ms": round(pct(kafka, 50), 1) if kafka else None,
         "kafka_p99_ms": round(pct(kafka, 99), 1) if kafka else None,
         # The worst of each leg: a relay that missed a commit showed here as ~1 s (the
         # periodic full read) while the p99 stayed at a few ms.
         "relay_max_ms": round(max(relay), 1) if relay else None,
         "kafka_max_ms": round(max(kafka), 1) if kafka else None,
         "consumer_fetch_wait_ms": _e2e_fetch_wait_ms()})


def cmd_kafka_skip(brokers, group, topic):
    """Commits GROUP's offsets on TOPIC at each partition's end and prints how many events
    that skipped: a backlog left on the shared broker (a run before that stopped before its
    notifier caught up, a developer's own runs) is otherwise consumed, and mailed, during
    the next measurement. The group must have no members (no TMS on Kafka running)."""
    from confluent_kafka import Consumer, TopicPartition
    c = Consumer({"bootstrap.servers": brokers, "group.id": group, "enable.auto.commit": False})
    try:
        md = c.list_topics(topic, timeout=10)
        if topic not in md.topics or md.topics[topic].error is not None:
            print(0)  # no topic yet: nothing to skip
            return
        parts = [TopicPartition(topic, p) for p in md.topics[topic].partitions]
        skipped, ends = 0, []
        for tp in c.committed(parts, timeout=10):
            lo, hi = c.get_watermark_offsets(tp, timeout=10)
            skipped += hi - (tp.offset if tp.offset >= 0 else lo)
            ends.append(TopicPartition(topic, tp.partition, hi))
        c.commit(offsets=ends, asynchronous=False)
        print(skipped)
    finally:
        c.close()


def _e2e_fetch_wait_ms():
    v = os.environ.get("TMS_BENCH_E2E_FETCH_WAIT_MS", "").strip()
    return int(v) if v.isdigit() else 10


def _e2e_consume(brokers, pipe):
    """The consumer process: sends "ready" once its partitions are assigned at the log's
    end, timestamps every event as it is polled, then, given the created task ids, waits
    (30 s at most) for the missing ones and sends back {task_id: (consumed_at,
    produced_at)}, produced_at the event's CreateTime on the monotonic clock."""
    from confluent_kafka import TIMESTAMP_CREATE_TIME, Consumer
    # The broker answers a waiting fetch as soon as an event is appended, so the wait
    # bounds only a missed wake-up. At 1 ms this client's empty fetches alone took 24 %
    # of the server core (the broker's CPU, idle topic: 1 %; 24 % at 1 ms, 7 % at 10 ms,
    # 3 % at 100 ms), a load no real consumer puts there (librdkafka's default is 500).
    c = Consumer({"bootstrap.servers": brokers, "group.id": "bench-e2e-%d" % os.getpid(),
                  "enable.auto.commit": False, "fetch.wait.max.ms": _e2e_fetch_wait_ms(),
                  "fetch.min.bytes": 1})
    assigned = []

    def on_assign(consumer, parts):
        # Start at each partition's end offset as it is now, explicitly: with
        # auto.offset.reset=latest the position is resolved later, in the background,
        # and events committed before that would be skipped (counted lost).
        for tp in parts:
            tp.offset = consumer.get_watermark_offsets(tp, timeout=10)[1]
        consumer.assign(parts)
        assigned.extend(parts)

    c.subscribe(["notifications"], on_assign=on_assign)
    deadline = time.monotonic() + 60
    while not assigned and time.monotonic() < deadline:
        c.poll(0.05)
    # A little polling before "ready" so the fetch requests are already going out when the
    # creates begin (the first events are then not timed with the fetcher's start-up).
    settle = time.monotonic() + 0.5
    while time.monotonic() < settle:
        c.poll(0.05)
    pipe.send("ready")
    wall_ahead = time.time() - time.monotonic()
    got, missing, until = {}, None, None
    while missing is None or (missing and time.monotonic() < until):
        m = c.poll(0.05)
        t = time.monotonic()  # at once: nothing else runs in this process to delay it
        if m is not None and not m.error():
            try:
                tid = str(json.loads(m.value())["task_id"])
            except (ValueError, KeyError, TypeError):
                continue
            kind, ms = m.timestamp()
            made = ms / 1000.0 - wall_ahead if kind == TIMESTAMP_CREATE_TIME else None
            got.setdefault(tid, (t, made))
            if missing is not None:
                missing.discard(tid)
        if missing is None and pipe.poll():  # the creates are done: their ids
            wanted = pipe.recv()
            missing = set(wanted) - got.keys()
            until = time.monotonic() + 30
    c.close()
    pipe.send({k: got[k] for k in wanted if k in got})


def _e2e_create(pipe, url, token, body, rate, indices, threads):
    """A creator process: one thread per keep-alive connection, thread k sending creates
    indices[k::threads], create i at start + i / rate; sends back {task_id: response
    time}, how late each create was sent (s) and the error count."""
    conns = [_client(url) for _ in range(threads)]
    for c in conns:
        c.connect()
    pipe.send("ready")
    start = pipe.recv()
    sent, late, errors, lock = {}, [], [0], threading.Lock()

    def slot(k):
        conn = conns[k]
        for i in indices[k::threads]:
            due = start + i / rate
            d = due - time.monotonic()
            if d > 0:
                time.sleep(d)
            began = time.monotonic()
            try:
                tid = str(_call(conn, "POST", "/api/task", body, token)["id"])
                t = time.monotonic()
                with lock:
                    sent[tid] = t
            except Exception:  # noqa: BLE001 - counted
                with lock:
                    errors[0] += 1
            # late: the thread slept too long or its previous create was still waiting
            # for its response (a slow server also shows here)
            late.append(began - due)

    ts = [threading.Thread(target=slot, args=(k,)) for k in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    pipe.send({"sent": sent, "late": late, "errors": errors[0], "finished": time.monotonic()})


if __name__ == "__main__":
    c, a = sys.argv[1], sys.argv[2:]
    {"wrk": cmd_wrk, "h2load": cmd_h2load, "pgbench": cmd_pgbench, "stime": cmd_stime,
     "ghz": cmd_ghz, "seed": cmd_seed, "seed-sql": cmd_seed_sql, "conns": cmd_conns, "kafka-e2e": cmd_kafka_e2e,
     "kafka-skip": cmd_kafka_skip,
     "report": cmd_report}[c](*a)
