"""What a gRPC client can make the server hold (issue 17, item 1), through raw HTTP/2
(grpc_probes.py): each probe of the audit, with the answer the server must give within
its bound or deadline, the server's RSS (VmRSS) staying far below what the probe
would make it hold without the bounds, and a normal client served afterwards.
Bounds and defaults: docs/OPERATIONS.md "gRPC limits", config/tms.conf [grpc]."""
import re
import time

import pytest

pytest.importorskip("h2.connection")

import grpc_probes as gp  # noqa: E402
from conftest import SPLIT  # noqa: E402

MiB = 1 << 20
UNAUTHENTICATED, DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED = "16", "4", "8"
CANCEL, REFUSED_STREAM = 8, 7  # RST_STREAM codes
HEALTH = "/grpc.health.v1.Health/Check"


def grpc_port(srv):
    m = re.search(r"event=grpc_listen addr=\S+ port=(\d+)", srv.log_text())
    assert m, "no grpc_listen line in the server log"
    return int(m.group(1))


def health_ok(port):
    """A normal client: one Health/Check on a fresh connection answers SERVING."""
    c = gp.Conn(port)
    try:
        c.headers(1, HEALTH)
        c.send(1, gp.grpc_frame(b""), end=True)
        assert c.wait(lambda: c.stream_done(1), 10), c.events[-5:]
        return c.status(1)[0] == "0"
    finally:
        c.close()


def rss_mib(srv):
    return gp.rss_kib(srv.proc.pid) / 1024


def settle(srv):
    """RSS once the server is warm (a first call and its allocations done)."""
    assert health_ok(grpc_port(srv))
    time.sleep(0.2)
    return rss_mib(srv)


def limited(srv, limit):
    text = srv.get("/metrics").text
    m = re.search(r'tms_grpc_limited_total\{limit="%s"\} (\d+)' % limit, text)
    return int(m.group(1)) if m else 0


def test_window0_and_1mib_reflection_requests_hold_nothing(server):
    """The audit: window 0 and 48 reflection requests of 1 MiB on one stream held
    +100 MiB until the client left (each reply echoed its request and waited).
    Reflection needs no token, so a message over 8 KiB is refused from its prefix."""
    port = grpc_port(server)
    base = settle(server)
    conns = [gp.reflection_window0(port, messages=48, host_bytes=MiB) for _ in range(2)]
    try:
        for c in conns:
            assert c.wait(lambda c=c: c.stream_done(1), 10), c.events[-5:]
            assert c.status(1)[0] == RESOURCE_EXHAUSTED, c.events[-5:]
        grown = rss_mib(server) - base
        assert grown < 24, f"server RSS grew {grown:.0f} MiB"
        assert health_ok(port)
    finally:
        for c in conns:
            c.close()


def test_window0_reflection_replies_stop_at_the_stream_output_bound(server):
    """Small requests whose replies (about 1.2 KiB each) the client never takes: the
    stream is reset with ENHANCE_YOUR_CALM once 4 MiB of replies wait, instead of
    queueing without end."""
    port = grpc_port(server)
    base = settle(server)
    c = gp.Conn(port, window=0)
    try:
        c.headers(1, gp.REFLECTION)
        batch = gp.grpc_frame(gp.reflection_request(0, "TaskService")) * 100
        for _ in range(100):  # 10,000 requests: 12 MiB of replies without the bound
            if not c.send(1, batch):
                break
        assert c.wait(lambda: c.stream_done(1), 10), c.events[-5:]
        assert c.status(1) == (None, gp.ENHANCE_YOUR_CALM), c.events[-5:]
        grown = rss_mib(server) - base
        assert grown < 24, f"server RSS grew {grown:.0f} MiB"
        assert health_ok(port)
    finally:
        c.close()


def test_reply_that_is_never_taken_is_reset_after_send_timeout(make_server):
    srv = make_server(grpc__send_timeout=2)
    port = grpc_port(srv)
    c = gp.Conn(port, window=0)
    try:
        c.headers(1, HEALTH)
        t0 = time.monotonic()
        c.send(1, gp.grpc_frame(b""), end=True)
        assert c.wait(lambda: c.stream_done(1), 10), c.events[-5:]
        took = time.monotonic() - t0
        assert c.status(1) == (None, CANCEL), c.events[-5:]
        assert 1.5 < took < 6, took
        assert limited(srv, "send_timeout") >= 1
        assert health_ok(port)
    finally:
        c.close()


def test_unfinished_unary_streams_without_token_answered_at_once(server):
    """The audit: 8 GetTask streams of 4 MiB, no END_STREAM, no token held +64 MiB past
    every timeout. A token method called without a token buffers at most 8 KiB: the
    declared 4 MiB is answered UNAUTHENTICATED before it is read."""
    port = grpc_port(server)
    base = settle(server)
    conns = [gp.unfinished_unary(port) for _ in range(2)]
    try:
        for c in conns:
            for sid in range(1, 17, 2):
                assert c.wait(lambda c=c, sid=sid: c.stream_done(sid), 10), c.events[-5:]
                assert c.status(sid)[0] == UNAUTHENTICATED, (sid, c.events[-5:])
        grown = rss_mib(server) - base
        assert grown < 24, f"server RSS grew {grown:.0f} MiB"
        assert health_ok(port)
    finally:
        for c in conns:
            c.close()


def test_receive_deadline_starts_at_the_headers(make_server):
    """With a token (not checked before the call) a stream may buffer a large message,
    but only until its receive deadline, counted from its headers, even while the
    connection stays busy; before, nothing ended such a stream."""
    srv = make_server(grpc__receive_timeout=2)
    port = grpc_port(srv)
    t0 = time.monotonic()
    c = gp.unfinished_unary(port, streams=2, size=3 * MiB, token="x")
    try:
        c.headers(5, gp.GET_TASK, [("authorization", "Bearer x")])  # headers only
        assert c.wait(lambda: all(c.stream_done(s) for s in (1, 3, 5)), 10), c.events[-5:]
        took = time.monotonic() - t0
        for sid in (1, 3, 5):
            assert c.status(sid)[0] == DEADLINE_EXCEEDED, (sid, c.events[-5:])
        assert 1.5 < took < 6, took
        assert limited(srv, "receive_timeout") >= 3
        assert health_ok(port)
    finally:
        c.close()


def test_request_bytes_per_connection_are_bounded(server):
    """Three 3 MiB messages on one connection (token present, not yet checked): the
    third would pass 8 MiB buffered and is answered RESOURCE_EXHAUSTED at once."""
    port = grpc_port(server)
    c = gp.unfinished_unary(port, streams=3, size=3 * MiB, token="x")
    try:
        assert c.wait(lambda: c.stream_done(5), 10), c.events[-5:]
        assert c.status(5)[0] == RESOURCE_EXHAUSTED, c.events[-5:]
        assert c.status(1) == (None, None) and c.status(3) == (None, None)
        assert health_ok(port)
    finally:
        c.close()


def test_request_bytes_per_server_are_bounded(make_server):
    """Over every connection: with grpc.max_buffered_bytes at 8 MiB, the third
    connection holding 3 MiB is refused; small calls still fit."""
    srv = make_server(grpc__max_buffered_bytes=8 * MiB)
    port = grpc_port(srv)
    conns = []
    try:
        for _ in range(2):
            conns.append(gp.unfinished_unary(port, streams=1, size=3 * MiB, token="x"))
        c = gp.unfinished_unary(port, streams=1, size=3 * MiB, token="x")
        conns.append(c)
        assert c.wait(lambda: c.stream_done(1), 10), c.events[-5:]
        assert c.status(1)[0] == RESOURCE_EXHAUSTED, c.events[-5:]
        assert all(x.status(1) == (None, None) for x in conns[:2])
        assert health_ok(port)
        assert limited(srv, "server_buffers") >= 1
    finally:
        for x in conns:
            x.close()


def test_reflection_reply_does_not_echo_the_request(server):
    """original_request and valid_host echo strings of at most 256 bytes: a reply never
    grows with its request."""
    import h2.events
    c = gp.Conn(grpc_port(server))
    try:
        c.headers(1, gp.REFLECTION)
        c.send(1, gp.grpc_frame(gp.reflection_request(6000)), end=True)
        assert c.wait(lambda: c.stream_done(1), 10), c.events[-5:]
        assert c.status(1)[0] == "0", c.events[-5:]
        got = sum(len(e.data) for e in c.events if isinstance(e, h2.events.DataReceived))
        assert 0 < got < 1024, got
    finally:
        c.close()


def test_every_probe_leaves_nothing_counted(make_server):
    """What the bounds count returns to zero once the connections are gone (a drift
    would refuse streams for good; the server logs grpc_accounting if it finds one)."""
    srv = make_server(grpc__receive_timeout=1, grpc__send_timeout=1)
    port = grpc_port(srv)
    conns = [gp.reflection_window0(port, messages=4, host_bytes=MiB),
             gp.reflection_window0(port, messages=40, host_bytes=0, symbol="TaskService",
                                   batch=100),
             gp.unfinished_unary(port, streams=3),
             gp.unfinished_unary(port, streams=3, size=3 * MiB, token="x")]
    w0 = gp.Conn(port, window=0)
    w0.headers(1, HEALTH)
    w0.send(1, gp.grpc_frame(b""), end=True)
    conns.append(w0)
    time.sleep(2.5)  # receive and send deadlines pass
    for c in conns:
        c.close()
    time.sleep(1.5)  # the lingering closes end
    assert health_ok(port)
    time.sleep(1.0)
    assert "grpc_accounting" not in srv.log_text(), srv.log_text()[-3000:]


def test_streams_over_the_server_budget_are_refused(make_server):
    """Open streams count 1 KiB each against grpc.max_buffered_bytes: with 1 MiB, the
    streams past about 1,000 are refused with REFUSED_STREAM (safe to retry), and
    once their connections are gone a normal client is served again."""
    srv = make_server(grpc__max_buffered_bytes=MiB)
    port = grpc_port(srv)
    conns = []
    try:
        for _ in range(11):  # 1,100 streams, headers only
            c = gp.Conn(port)
            c.wait(lambda c=c: c.h2.remote_settings.max_concurrent_streams == 100, 5)
            for i in range(100):
                c.headers(1 + 2 * i, gp.GET_TASK, [("authorization", "Bearer x")])
            conns.append(c)
        last = conns[-1]
        assert last.wait(lambda: last.status(199)[1] is not None, 10), last.events[-5:]
        assert last.status(199) == (None, REFUSED_STREAM), last.events[-5:]
        assert conns[0].status(1) == (None, None)
        assert limited(srv, "server_buffers") >= 1
    finally:
        for c in conns:
            c.close()
    time.sleep(1.0)
    assert health_ok(port)


def write_syscalls(pid):
    """Write-family system calls the process has made (/proc/<pid>/io syscw)."""
    with open(f"/proc/{pid}/io") as f:
        for line in f:
            if line.startswith("syscw:"):
                return int(line.split()[1])
    return 0


@pytest.mark.skipif(SPLIT, reason="the gateway's own calls to the task role are "
                    "writes of the same process")
def test_replies_answered_in_one_turn_go_out_in_one_write(server):
    """50 GetTask calls sent in one TCP write on one connection: their replies come back
    from the actors in the same turn of the loop and go out together (issue 19). Before,
    each reply was written on its own: 50 writes where a handful do (the access log's
    writes are counted too)."""
    token, _ = server.register()
    task = server.create_task(token)
    port = grpc_port(server)
    c = gp.Conn(port)
    try:
        assert health_ok(port)  # warm: the first call's allocations and log lines
        req = gp.grpc_frame(gp.pb_string(1, str(task["id"]).encode()))
        auth = [("authorization", f"Bearer {token}")]
        sids = [1 + 2 * i for i in range(50)]
        # warm the token cache: one call first, alone
        c.headers(sids[0], gp.GET_TASK, auth)
        c.send(sids[0], req, end=True)
        assert c.wait(lambda: c.stream_done(sids[0]), 10)
        time.sleep(0.3)  # the log thread's writes of that call are done
        for sid in sids[1:]:
            c.h2.send_headers(sid, [(":method", "POST"), (":scheme", "http"),
                                    (":path", gp.GET_TASK), (":authority", "localhost"),
                                    ("content-type", "application/grpc"), ("te", "trailers"),
                                    *auth])
            c.h2.send_data(sid, req, end_stream=True)
        before = write_syscalls(server.proc.pid)
        c.flush()  # every stream in one sendall
        assert c.wait(lambda: all(c.stream_done(s) for s in sids[1:]), 20), c.events[-5:]
        writes = write_syscalls(server.proc.pid) - before
        assert all(c.status(s)[0] == "0" for s in sids[1:]), [c.status(s) for s in sids[1:]]
    finally:
        c.close()
    assert writes <= 15, f"{writes} write calls for 49 replies on one connection"
