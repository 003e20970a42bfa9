"""Abuse (issue 10, part 4): 1,000 slowloris connections (request heads trickled a few
bytes at a time) and 1,000 idle connections held open while normal clients run: the
normal clients see no error and a p99 latency under 50 ms. (HTTP/2 rapid reset and
CONTINUATION floods are in test_grpc.py; request smuggling in test_smuggling.py.)"""
import subprocess
import sys
import time

import requests

SLOW = 1000
IDLE = 1000
HEAD = (b"GET /api/task HTTP/1.1\r\nHost: x\r\nUser-Agent: slowloris\r\n"
        b"X-Padding: " + b"a" * 200 + b"\r\n")


def percentile(values, p):
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * p))]


# The abusers run in a process of their own, so that the measuring client does not
# share an interpreter lock with 2,000 sockets. It prints "ready" once every connection
# is open, then trickles the slow heads two bytes per connection every 50 ms until its
# stdin closes.
ABUSER = r"""
import socket, sys, threading, time
port, n_slow, n_idle, head = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4].encode()
def conn():
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    return s
idle = [conn() for _ in range(n_idle)]
slow = [conn() for _ in range(n_slow)]
for s in slow:
    s.setblocking(False)
print("ready", flush=True)
stop = threading.Event()
threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
pos = 0
while not stop.is_set():
    if pos < len(head):
        for s in slow:
            try:
                s.send(head[pos:pos + 2])
            except OSError:
                pass
        pos += 2
        print("trickled", pos, flush=True)
    stop.wait(0.05)
for s in idle + slow:
    s.close()
"""


def test_slowloris_and_idle_connections_do_not_hurt_normal_clients(make_server):
    # Head timeout long enough that the slow heads stay open for the whole test.
    srv = make_server(http__head_timeout=30, http__idle_timeout=60)
    token, _ = srv.register()
    srv.create_task(token)
    abuser = subprocess.Popen([sys.executable, "-c", ABUSER, str(srv.port), str(SLOW), str(IDLE),
                               HEAD.decode()], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True)
    try:
        assert abuser.stdout.readline().strip() == "ready"
        time.sleep(0.5)
        session = requests.Session()
        lat, errors = [], []
        deadline = time.monotonic() + 8
        while time.monotonic() < deadline:
            for path in ("/api/task?limit=5", "/healthz"):
                t0 = time.monotonic()
                try:
                    r = session.get(srv.url(path), timeout=5,
                                    headers={"Authorization": f"Bearer {token}"})
                    if r.status_code != 200:
                        errors.append(r.status_code)
                except requests.RequestException as e:
                    errors.append(repr(e))
                lat.append(time.monotonic() - t0)
        assert abuser.poll() is None, "the abuser died"
        p99 = percentile(lat, 0.99)
        print(f"normal clients: {len(lat)} requests, p50 {percentile(lat, 0.5) * 1000:.1f} ms, "
              f"p99 {p99 * 1000:.1f} ms, with {SLOW} slowloris and {IDLE} idle connections")
        assert not errors, f"normal clients saw errors: {errors[:5]}"
        assert len(lat) > 200, f"only {len(lat)} normal requests in 8 s"
        assert p99 < 0.050, f"p99 {p99 * 1000:.1f} ms over {len(lat)} requests"
        # The abusive connections are still open (nobody was dropped to make room), and
        # the server counts them all (one series per worker with server.workers > 1).
        metrics = srv.get("/metrics").text
        open_conns = [float(line.split()[-1]) for line in metrics.splitlines()
                      if line.startswith("tms_http_connections")]
        assert open_conns and sum(open_conns) >= SLOW + IDLE, open_conns
    finally:
        abuser.stdin.close()
        out = abuser.stdout.read()
        abuser.wait(10)
    assert "trickled 20" in out, "the slow heads were not trickled"
