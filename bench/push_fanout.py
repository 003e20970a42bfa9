#!/usr/bin/env python3
"""Push fan-out (issue 23): N Server-Sent Events subscribers of GET /api/task/events
and task changes at a fixed rate; prints `key value` lines:

  subs, rate, duration_s, events, created   what ran
  idle_rss_kib, subs_rss_kib    server RSS before and with the N idle subscribers
  rss_per_sub_kib               (subs_rss_kib - idle_rss_kib) / N
  p50_ms, p99_ms, max_ms        commit -> delivery at the last subscriber of each event:
                                from the event's `time` (set with the change, on the
                                server's clock) to when the later of the first-connected
                                subscriber (the hub serves newest first: it is served
                                last) and the newest one read it; same host, same clock.
                                The other N-2 are drained every 200 ms and only counted.
  missing                       (event, subscriber) pairs never received (should be 0)

Usage: push_fanout.py URL TOKEN PID [--subs 1000] [--rate 100] [--seconds 10]
[--latencies FILE] (one latency in ms per line, for the chart)."""
import argparse
import calendar
import http.client
import json
import re
import selectors
import socket
import threading
import time
import urllib.parse

ID = re.compile(rb"^id: (\d+)$", re.M)
DATA = re.compile(rb"^data: (.*)$", re.M)


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


class Sub:
    """One subscriber on a plain non-blocking socket."""

    def __init__(self, host, port, token):
        self.sock = socket.create_connection((host, port), timeout=10)
        self.sock.sendall((f"GET /api/task/events HTTP/1.1\r\nHost: {host}:{port}\r\n"
                           f"Authorization: Bearer {token}\r\n"
                           "Accept: text/event-stream\r\n\r\n").encode())
        self.sock.setblocking(False)
        self.buf = b""
        self.head = False
        self.ids = set()

    def read(self):
        """Whole events read now: [(id, data bytes)]."""
        try:
            while True:
                chunk = self.sock.recv(1 << 20)
                if not chunk:
                    break
                self.buf += chunk
                if len(chunk) < (1 << 20):
                    break
        except BlockingIOError:
            pass
        if not self.head:
            i = self.buf.find(b"\r\n\r\n")
            if i < 0:
                return []
            if not self.buf.startswith(b"HTTP/1.1 200"):
                raise SystemExit("subscribe refused: " + self.buf[:200].decode(errors="replace"))
            self.head = True
            self.buf = self.buf[i + 4:]
        cut = self.buf.rfind(b"\n\n")
        if cut < 0:
            return []
        block, self.buf = self.buf[:cut + 2], self.buf[cut + 2:]
        ids = [int(x) for x in ID.findall(block)]
        self.ids.update(ids)
        return ids, block


def parse_time(s):
    """2026-12-06T05:52:08.023Z -> seconds since the epoch."""
    return calendar.timegm(time.strptime(s[:19], "%Y-%m-%dT%H:%M:%S")) + int(s[20:23]) / 1000.0


def creator(url, token, rate, seconds, stop):
    u = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=10)
    body = json.dumps({"title": "push bench", "description": "x" * 100})
    hdr = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    n, t0 = 0, time.monotonic()
    while n < rate * seconds and not stop.is_set():
        due = t0 + n / rate
        wait = due - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        conn.request("POST", "/api/task", body, hdr)
        r = conn.getresponse()
        r.read()
        if r.status != 201:
            raise SystemExit(f"create: {r.status}")
        n += 1
    return n


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("url")
    ap.add_argument("token")
    ap.add_argument("pid", type=int)
    ap.add_argument("--subs", type=int, default=1000)
    ap.add_argument("--rate", type=int, default=100)
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--latencies")
    ap.add_argument("--chart", help="PNG: the latencies' distribution (matplotlib)")
    a = ap.parse_args()
    u = urllib.parse.urlsplit(a.url)
    idle = rss_kib(a.pid)
    # the bearer header (a ticket each would measure the ticket endpoint too)
    subs = [Sub(u.hostname, u.port, a.token) for _ in range(a.subs)]
    deadline = time.monotonic() + 60
    while not all(s.head for s in subs) and time.monotonic() < deadline:
        for s in subs:
            if not s.head:
                s.read()
        time.sleep(0.05)
    time.sleep(2)
    with_subs = rss_kib(a.pid)
    # The hub serves its subscribers newest first: the first one connected is the last
    # served. It and the newest are read at once (their arrival times are the
    # measurement); the others are drained every 200 ms so that nothing piles up, and
    # only counted.
    watched = [subs[0], subs[-1]]
    arrival, times = {}, {}
    sel = selectors.DefaultSelector()
    for s in watched:
        sel.register(s.sock, selectors.EVENT_READ, s)
    stop = threading.Event()
    made = [0]
    th = threading.Thread(target=lambda: made.__setitem__(
        0, creator(a.url, a.token, a.rate, a.seconds, stop)))
    th.start()
    end = None
    last_drain = 0.0
    while True:
        for key, _ in sel.select(timeout=0.05):
            got = key.data.read()
            now = time.time()
            if not got:
                continue
            ids, block = got
            for seq in ids:
                arrival[seq] = max(arrival.get(seq, 0.0), now)
            for m in DATA.finditer(block):
                d = json.loads(m.group(1))
                if "task" in d:
                    times[int(d["id"])] = d["time"]
        if time.monotonic() - last_drain > 0.2:
            last_drain = time.monotonic()
            for s in subs[1:-1]:
                s.read()
        if not th.is_alive():
            end = end or time.monotonic() + 3  # the last ones
            if time.monotonic() > end:
                break
    for s in subs:
        s.read()
        s.sock.close()
    lat = sorted((arrival[seq] - parse_time(times[seq])) * 1000 for seq in arrival
                 if seq in times)
    every = set(times)
    missing = sum(len(every - s.ids) for s in subs)

    def pct(p):
        return lat[min(len(lat) - 1, int(p / 100 * len(lat)))] if lat else float("nan")
    out = {"subs": len(subs), "rate": a.rate, "duration_s": a.seconds, "events": len(lat),
           "created": made[0], "idle_rss_kib": idle, "subs_rss_kib": with_subs,
           "rss_per_sub_kib": round((with_subs - idle) / max(1, len(subs)), 2),
           "p50_ms": round(pct(50), 1), "p99_ms": round(pct(99), 1),
           "max_ms": round(lat[-1], 1) if lat else float("nan"), "missing": missing}
    for k, v in out.items():
        print(k, v)
    if a.latencies:
        with open(a.latencies, "w") as f:
            f.write("\n".join("%.2f" % x for x in lat) + "\n")
    if a.chart and lat:
        chart(a.chart, lat, out)


def chart(path, lat, out):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(8, 4.5))
    ax.plot(lat, [100.0 * (i + 1) / len(lat) for i in range(len(lat))], color="#1f77b4")
    for p in ("p50_ms", "p99_ms"):
        ax.axvline(out[p], color="#aaaaaa", linestyle="--")
        ax.text(out[p], 2, " %s %.0f ms" % (p[:3], out[p]), fontsize=8)
    ax.set_xlabel("commit -> delivery at the last of %d subscribers (ms)" % out["subs"])
    ax.set_ylabel("events (%)")
    ax.set_title("SSE push: %d subscribers, %d changes/s for %d s; RSS %.2f KiB per idle "
                 "subscriber" % (out["subs"], out["rate"], out["duration_s"], out["rss_per_sub_kib"]),
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
