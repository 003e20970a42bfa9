#!/usr/bin/env python3
"""Server memory under hostile gRPC clients (issue 17, item 1): starts one `tms serve`
(default build/tms, the release build), runs a probe on N connections at once and
prints the server's VmRSS before, at its peak while the probes run, and `hold`
seconds later with the hostile connections still open.

  bench/grpc_hold.py [--bin build/tms] [--conns 10] [--hold 15] reflection|unary|idle
    reflection  window 0, 48 reflection requests of 1 MiB on one stream
    replies     window 0, 10,000 small reflection requests (1.2 KiB replies each)
    unary       8 GetTask streams with 4 MiB messages, no END_STREAM, no token
                (--token x: with a bearer token that the call would reject)
    idle        --streams open streams per connection (headers only): fixed costs
    mass        as idle over raw sockets from one thread (for --conns 10000), each
                stream with an authorization header of --auth-bytes

Uses the test venv (h2): build-venv/bin/python bench/grpc_hold.py ...
"""
import argparse
import os
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "integration"))
import grpc_probes as gp  # noqa: E402


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def mass(port, nconns, nstreams, auth_bytes):
    """nconns raw connections, each with nstreams open streams (HEADERS without
    END_STREAM) of GetTask with an authorization header of auth_bytes; what the server
    answers is read and dropped."""
    import hpack
    block = hpack.Encoder().encode([(":method", "POST"), (":scheme", "http"),
                                    (":path", gp.GET_TASK), (":authority", "localhost"),
                                    ("content-type", "application/grpc"),
                                    ("authorization", "Bearer " + "x" * auth_bytes)])
    preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"
    socks = []
    for _ in range(nconns):
        sk = socket.create_connection(("127.0.0.1", port), timeout=10)
        out = [preface]
        for i in range(nstreams):
            out.append(len(block).to_bytes(3, "big") + b"\x01\x04" +
                       (1 + 2 * i).to_bytes(4, "big") + block)
        sk.sendall(b"".join(out))
        sk.setblocking(False)
        socks.append(sk)
        for x in socks[-50:]:  # keep their receive buffers from filling
            try:
                x.recv(1 << 16)
            except OSError:
                pass
    return socks


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("probe", choices=("reflection", "replies", "unary", "idle", "mass"))
    ap.add_argument("--bin", default=str(REPO / "build" / "tms"))
    ap.add_argument("--conns", type=int, default=10)
    ap.add_argument("--streams", type=int, default=100)
    ap.add_argument("--hold", type=float, default=15.0)
    ap.add_argument("--auth-bytes", type=int, default=8)
    ap.add_argument("--set", action="append", default=[], help="section.key=value")
    ap.add_argument("--token", default=None,
                    help="unary: send 'authorization: Bearer TOKEN' (not a valid one)")
    a = ap.parse_args()

    tmp = tempfile.TemporaryDirectory(prefix="tms-hold-")
    port = free_port()
    cmd = [a.bin, "serve", "--set", f"http.addr=127.0.0.1:{port}", "--set",
           "grpc.addr=127.0.0.1:0", "--set", f"data.dir={tmp.name}", "--set",
           "auth.jwt_secret=" + "b" * 48]
    for kv in a.set:
        cmd += ["--set", kv]
    log = open(Path(tmp.name) / "log", "w+")
    env = dict(os.environ, MONGOC_DISABLE_SHM="1")
    proc = subprocess.Popen(cmd, stdout=log, stderr=log, stdin=subprocess.DEVNULL, env=env)
    try:
        gport = None
        for _ in range(200):
            log.seek(0)
            m = re.search(r"event=grpc_listen addr=\S+ port=(\d+)", log.read())
            if m:
                gport = int(m.group(1))
                break
            time.sleep(0.05)
        assert gport, "no grpc_listen line"
        time.sleep(0.5)
        base = gp.rss_kib(proc.pid)
        peak = [base]
        stop = threading.Event()

        def sample():
            while not stop.is_set():
                peak[0] = max(peak[0], gp.rss_kib(proc.pid))
                time.sleep(0.05)

        threading.Thread(target=sample, daemon=True).start()
        conns = []
        lock = threading.Lock()

        def one():
            if a.probe == "reflection":
                c = gp.reflection_window0(gport)
            elif a.probe == "replies":
                c = gp.reflection_window0(gport, messages=100, host_bytes=0, symbol="TaskService",
                                          batch=100)
            elif a.probe == "unary":
                c = gp.unfinished_unary(gport, token=a.token)
            else:
                c = gp.Conn(gport)
                for i in range(a.streams):
                    c.headers(1 + 2 * i, gp.GET_TASK, [("authorization", "Bearer x")])
                c.pump(0.2)
            with lock:
                conns.append(c)

        t0 = time.monotonic()
        if a.probe == "mass":
            conns = mass(gport, a.conns, a.streams, a.auth_bytes)
            a.conns = 0
        threads = [threading.Thread(target=one) for _ in range(a.conns)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        sent = time.monotonic() - t0
        time.sleep(1.0)
        after_send = gp.rss_kib(proc.pid)
        time.sleep(max(0.0, a.hold - 1.0))
        held = gp.rss_kib(proc.pid)
        stop.set()
        if a.probe == "mass":
            print(f"probe=mass conns={len(conns)} streams={a.streams} auth_bytes={a.auth_bytes} "
                  f"sent_s={sent:.1f} rss_base_mib={base / 1024:.1f} "
                  f"rss_peak_mib={peak[0] / 1024:.1f} rss_after_{a.hold:g}s_mib={held / 1024:.1f}")
            for sk in conns:
                sk.close()
            return
        for c in conns:
            c.pump(0.01)
        answered = {}
        for c in conns:
            for sid in range(1, 16, 2):
                st = c.status(sid)
                if st != (None, None):
                    answered[st] = answered.get(st, 0) + 1
        print(f"probe={a.probe} conns={a.conns} sent_s={sent:.1f} rss_base_mib={base / 1024:.1f} "
              f"rss_peak_mib={peak[0] / 1024:.1f} rss_after_1s_mib={after_send / 1024:.1f} "
              f"rss_after_{a.hold:g}s_mib={held / 1024:.1f} "
              f"streams_answered(grpc-status,rst)={answered}")
        for c in conns:
            c.close()
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        tmp.cleanup()


if __name__ == "__main__":
    main()
