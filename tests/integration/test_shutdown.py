"""Graceful stop on SIGTERM/SIGINT."""
import signal
import socket
import time

import pytest

from conftest import (SPLIT, RawReader, accepted_raw_conns, login_request, raw_connect,
                      sigterm_with_logins_in_flight, unique_email)


@pytest.fixture(params=[1, 2], ids=["workers1", "workers2"])
def make_server(request, make_server):
    """Every stop test with one loop and with two (server.workers; a process of a split
    deployment runs one loop, and scales out as more processes instead)."""
    if SPLIT and request.param > 1:
        pytest.skip("server.workers > 1 needs every role in one process")

    def factory(**kw):
        kw.setdefault("server__workers", request.param)
        return make_server(**kw)
    return factory


def test_sigterm_finishes_in_flight_requests(make_server):
    srv = make_server()
    emails = [unique_email("drain") for _ in range(8)]
    for e in emails:
        srv.register(e)
    socks, readers = accepted_raw_conns(srv.port, len(emails))
    results, t0 = sigterm_with_logins_in_flight(srv, socks, readers, emails)
    for s in socks:
        s.close()
    assert results == [200] * len(emails), f"in-flight logins during SIGTERM: {results}"
    rc = srv.wait_exit(10 - (time.monotonic() - t0))
    took = time.monotonic() - t0
    assert rc == 0, f"exit code {rc}; stderr:\n{srv.log_text()[-2000:]}"
    assert took < 10
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", srv.port), timeout=2).close()


def test_no_new_connections_after_sigterm(make_server):
    srv = make_server()
    email = unique_email("drain2")
    srv.register(email)
    # keep the server busy draining one slow request
    busy = raw_connect(srv.port, timeout=10)
    busy.sendall(login_request(email))
    time.sleep(0.01)
    srv.proc.send_signal(signal.SIGTERM)
    time.sleep(0.3)
    served = False
    try:
        s = socket.create_connection(("127.0.0.1", srv.port), timeout=2)
        try:
            s.settimeout(2)
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            data = s.recv(100)
            served = data.startswith(b"HTTP/1.1 200")
        except OSError:
            pass
        finally:
            s.close()
    except OSError:
        pass
    try:
        status = RawReader(busy).read_response().status
    except (ConnectionError, OSError) as ex:
        status = repr(ex)
    busy.close()
    assert status == 200, f"in-flight login: {status}"
    assert not served, "a connection opened 300 ms after SIGTERM was still served"
    rc = srv.wait_exit()
    assert rc == 0, f"exit code {rc}; stderr:\n{srv.log_text()[-2000:]}"


def test_idle_and_partial_connections_do_not_block_stop(make_server):
    srv = make_server()
    idle = raw_connect(srv.port)
    idle.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    assert RawReader(idle).read_response().status == 200
    partial = raw_connect(srv.port)
    partial.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
    time.sleep(0.1)
    took = srv.stop_ok()
    assert took < 10
    idle.close()
    partial.close()


def test_sigint_exits_zero(make_server):
    srv = make_server()
    srv.register()
    srv.stop_ok(signal.SIGINT)


def test_stop_logs_and_exit_fast_when_idle(make_server):
    srv = make_server()
    took = srv.stop_ok()
    assert took < 5, f"idle server took {took:.1f}s to stop"


def test_sigterm_writes_out_every_buffered_log_line(make_server):
    """Access lines are buffered and written by a log thread (core/log.h): a stop right
    after a burst still writes every one of them before the process exits."""
    srv = make_server()
    n = 3000
    line = "route=/healthz path=\"/healthz\" status=200"
    time.sleep(0.1)
    before = srv.log_text().count(line)  # the fixture's own probes
    s = raw_connect(srv.port, timeout=10)
    s.sendall(b"GET /healthz?burst=1 HTTP/1.1\r\nHost: x\r\n\r\n" * n)
    reader = RawReader(s)
    for _ in range(n):
        assert reader.read_response().status == 200
    srv.proc.send_signal(signal.SIGTERM)
    rc = srv.wait_exit()
    s.close()
    assert rc == 0, f"exit code {rc}; stderr:\n{srv.log_text()[-2000:]}"
    log = srv.log_text()
    assert log.count(line) == before + n
    assert "event=stopped worker=0 clean=1" in log
