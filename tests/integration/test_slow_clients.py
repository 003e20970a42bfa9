"""Slow clients (issue 17, item 3): a body trickled in forever, a response never read,
and many connections from one address must not take the server's connection slots.

- the per-address cap (http.max_connections_per_address, also on grpc.addr): 100 slow
  body senders from 127.0.0.1 against http.max_connections=50 get 10 connections, the
  rest are closed at accept (counted, logged once); normal clients from 127.0.0.2 (the
  whole 127/8 is loopback) are served with p99 < 50 ms;
- the body deadline (http.body_timeout): a body that keeps trickling is answered 408
  and closed when the deadline passes, however often bytes arrive;
- the send timeout (http.send_timeout): a client that sends requests but never reads
  the responses is closed."""
import http.client
import re
import socket
import subprocess
import sys
import time

import pytest

from conftest import SPLIT, raw_connect, RawReader

NORMAL_SRC = "127.0.0.2"
ATTACK_SRC = "127.0.0.3"  # an address nobody else in the test uses


def percentile(values, p):
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * p))]


def metric(srv, name, labels):
    for line in srv.get("/metrics").text.splitlines():
        if line.startswith(f"{name}{{{labels}}} "):
            return float(line.split()[-1])
    return 0.0


def gauge_sum(srv, line_prefix):
    return sum(float(l.split()[-1]) for l in srv.get("/metrics").text.splitlines()
               if l.startswith(line_prefix))


def closed_soon(sock, timeout):
    """True when the peer closes (EOF or reset) within timeout; data before it is read."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            if not sock.recv(65536):
                return True
        except (ConnectionResetError, BrokenPipeError):
            return True
        except socket.timeout:
            return False
    return False


# The attackers run in a process of their own so that the measuring client does not
# share an interpreter lock with them. Each opens a connection, sends the head of a
# POST declaring a 1 MB body, then one body byte every 2 s, until stdin closes. It
# prints "ready <open> <closed>" once it knows which connections the server closed.
ATTACKER = r"""
import socket, sys, threading, time
port, n = int(sys.argv[1]), int(sys.argv[2])
head = (b"POST /api/auth/login HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: 1000000\r\n\r\n")
socks = []
for _ in range(n):
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    try:
        s.sendall(head)
    except OSError:
        pass
    socks.append(s)
time.sleep(1.0)
alive = []
for s in socks:
    s.setblocking(False)
    try:
        gone = s.recv(1) == b""
    except BlockingIOError:
        gone = False
    except OSError:
        gone = True
    if not gone:
        alive.append(s)
print("ready", len(alive), n - len(alive), flush=True)
stop = threading.Event()
threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
sent = 0
while not stop.wait(2.0):
    for s in alive:
        try:
            s.send(b"{")
        except OSError:
            pass
    sent += 1
    print("trickled", sent, flush=True)
for s in socks:
    s.close()
"""


@pytest.mark.skipif(SPLIT, reason="counts one process's connections")
def test_slow_attackers_from_one_address_leave_other_clients_served(make_server):
    srv = make_server(settings={"http.max_connections": 50,
                                "http.max_connections_per_address": 10})
    attacker = subprocess.Popen([sys.executable, "-c", ATTACKER, str(srv.port), "100"],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        ready = attacker.stdout.readline().split()
        assert ready and ready[0] == "ready", ready
        held, closed = int(ready[1]), int(ready[2])
        # the cap: 10 connections held, the other 90 closed at once
        assert held == 10 and closed == 90, (held, closed)
        lat, errors = [], []
        deadline = time.monotonic() + 8  # the attackers trickle a byte every 2 s meanwhile
        while time.monotonic() < deadline:
            time.sleep(0.005)
            t0 = time.monotonic()
            try:  # a new connection each time: the accept path is what the attack hits
                c = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=5,
                                               source_address=(NORMAL_SRC, 0))
                c.request("GET", "/healthz")
                r = c.getresponse()
                r.read()
                c.close()
                if r.status != 200:
                    errors.append(r.status)
            except OSError as e:
                errors.append(repr(e))
            lat.append(time.monotonic() - t0)
        assert attacker.poll() is None, "the attacker died"
        p99 = percentile(lat, 0.99)
        print(f"normal clients from {NORMAL_SRC}: {len(lat)} requests, p50 "
              f"{percentile(lat, 0.5) * 1000:.2f} ms, p99 {p99 * 1000:.2f} ms, max "
              f"{max(lat) * 1000:.2f} ms, with 100 slow-body attackers from 127.0.0.1 "
              f"({held} held, {closed} closed at accept)")
        assert not errors, f"normal clients saw errors: {errors[:5]}"
        assert len(lat) > 200, f"only {len(lat)} normal requests in 8 s"
        assert p99 < 0.050, f"p99 {p99 * 1000:.1f} ms over {len(lat)} requests"
        refused = metric(srv, "tms_connections_refused_total",
                         'listener="http",reason="per_address"')
        assert refused >= 90, refused
        # logged once for the address, not once per connection
        lines = [l for l in srv.log_text().splitlines() if "event=conn_refused" in l]
        assert len(lines) == 1, lines
        assert "client=127.0.0.1 " in lines[0] and "limit=10" in lines[0], lines
    finally:
        attacker.stdin.close()
        out = attacker.stdout.read()
        attacker.wait(10)
    assert "trickled 3" in out, "the bodies were not trickled"


def test_body_deadline_closes_a_trickling_body(make_server):
    """One byte every 0.3 s keeps an inactivity timer happy forever; the whole body
    still has http.body_timeout seconds."""
    srv = make_server(settings={"http.body_timeout": 2})
    s = raw_connect(srv.port)
    s.sendall(b"POST /api/auth/login HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
              b"Content-Length: 1000\r\n\r\n")
    t0 = time.monotonic()
    s.setblocking(False)
    got = b""
    while time.monotonic() - t0 < 6:
        try:
            s.send(b" ")
        except OSError:
            break
        time.sleep(0.3)
        try:
            data = s.recv(65536)
        except BlockingIOError:
            continue
        except OSError:
            break
        if not data:
            break
        got += data
    took = time.monotonic() - t0
    s.setblocking(True)
    assert got.startswith(b"HTTP/1.1 408 "), (took, got[:200])
    assert b"Connection: close" in got
    assert closed_soon(s, 3), "still open after the 408"
    assert 1.5 < took < 5, f"closed after {took:.1f} s"
    s.close()
    if not SPLIT:
        assert metric(srv, "tms_http_timeouts_total", 'listener="http",phase="body"') >= 1


def test_send_timeout_closes_a_client_that_does_not_read(make_server):
    """500 pipelined GET /openapi.json (18 KB each, 9 MB in all) and nothing read: the
    server's writes stall once the socket buffers are full, and the connection is
    closed http.send_timeout later instead of being held for as long as the client
    likes."""
    srv = make_server(settings={"http.send_timeout": 2})
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.connect(("127.0.0.1", srv.port))
    s.sendall(b"GET /openapi.json HTTP/1.1\r\nHost: x\r\n\r\n" * 500)
    time.sleep(4)  # past the send timeout
    # Reading now gets what the kernel still holds for us, then the end: the server
    # closed the connection instead of going on once we read.
    got, closed = 0, False
    s.settimeout(3)
    try:
        while True:
            data = s.recv(1 << 20)
            if not data:
                closed = True
                break
            got += len(data)
    except ConnectionResetError:
        closed = True
    except socket.timeout:
        pass
    s.close()
    assert closed, f"still open after {got} bytes read"
    assert got < 500 * 18000, f"every response arrived ({got} bytes)"
    if not SPLIT:
        assert gauge_sum(srv, "tms_http_connections ") == 0
        assert metric(srv, "tms_http_timeouts_total", 'listener="http",phase="send"') == 1
        assert "event=http_send_timeout" in srv.log_text()
    # the server is fine
    assert srv.get("/healthz").status_code == 200


def test_reading_client_gets_big_pipelined_responses(make_server):
    """The send timeout is for a response that is not taken, not for a long exchange:
    the same 500 pipelined responses, read, all arrive with a 2 s send timeout."""
    srv = make_server(settings={"http.send_timeout": 2})
    s = raw_connect(srv.port, timeout=30)
    s.sendall(b"GET /openapi.json HTTP/1.1\r\nHost: x\r\n\r\n" * 500)
    reader = RawReader(s)
    for _ in range(500):
        assert reader.read_response().status == 200
    s.close()


def grpc_port(srv):
    m = re.search(r"event=grpc_listen addr=\S+ port=(\d+)", srv.log_text())
    assert m, "no grpc_listen line in the server log"
    return int(m.group(1))


@pytest.mark.skipif(SPLIT, reason="counts one process's connections")
def test_per_address_cap_on_grpc(make_server):
    """The same cap on grpc.addr: an address's excess connections are closed at once;
    another address still gets the server's SETTINGS."""
    srv = make_server(settings={"http.max_connections_per_address": 5})
    port = grpc_port(srv)
    socks = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(12)]
    time.sleep(0.3)
    closed = sum(1 for s in socks if closed_soon(s, 1.0))
    assert closed == 7, f"{closed} of 12 closed"
    other = socket.create_connection(("127.0.0.1", port), timeout=5,
                                     source_address=(NORMAL_SRC, 0))
    other.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes([0, 0, 0, 4, 0, 0, 0, 0, 0]))
    frame = other.recv(9)
    assert len(frame) == 9 and frame[3] == 4, frame  # a SETTINGS frame
    assert metric(srv, "tms_connections_refused_total",
                  'listener="grpc",reason="per_address"') == 7
    for s in socks + [other]:
        s.close()


@pytest.mark.skipif(SPLIT, reason="counts one process's connections")
def test_the_audit_probe_six_slow_bodies_against_six_slots(make_server):
    """The audit's probe, with the default per-address cap: http.max_connections=6 and
    six sockets trickling a 1 MB body denied /healthz to everyone. One address now gets
    at most half of the slots (3), so another address is still served."""
    srv = make_server(settings={"http.max_connections": 6,
                                "http.max_connections_per_address": 64})
    head = (b"POST /api/auth/login HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 1000000\r\n\r\n")
    socks = []
    # The attackers use an address of their own: the harness's own connections from
    # 127.0.0.1 (readiness polls) would otherwise count against the same cap.
    for _ in range(6):
        s = socket.create_connection(("127.0.0.1", srv.port), timeout=5,
                                     source_address=(ATTACK_SRC, 0))
        s.sendall(head + b"{")
        socks.append(s)
    time.sleep(0.5)
    held = sum(1 for s in socks if not closed_soon(s, 0.3))
    assert held == 3, f"{held} of 6 slow bodies held"
    for _ in range(20):
        c = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=5,
                                       source_address=(NORMAL_SRC, 0))
        c.request("GET", "/healthz")
        assert c.getresponse().status == 200
        c.close()
    for s in socks:
        s.close()
