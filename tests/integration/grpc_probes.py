"""Hostile gRPC clients over raw HTTP/2 (the `h2` package), shared by
test_grpc_limits.py and bench/grpc_hold.py (issue 17, item 1): each probe opens its
own connection, does what the audit did, and returns what the server answered.

- reflection_window0: SETTINGS_INITIAL_WINDOW_SIZE = 0 (the server may send no DATA),
  one reflection stream, many requests; the replies can only pile up on the server.
- unfinished_unary: several unary streams, each sending most of a large message and
  never END_STREAM; nothing ends them but the server.
"""
import socket
import time

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings

REFLECTION = "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"
GET_TASK = "/TaskService/GetTask"
ENHANCE_YOUR_CALM = 11


def varint(n):
    out = b""
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out += bytes([b | 0x80])
        else:
            return out + bytes([b])


def pb_string(field, value):
    return varint(field << 3 | 2) + varint(len(value)) + value


def grpc_frame(message, declared=None):
    """The 5-byte prefix (declaring `declared` bytes, default the message's length)
    followed by the message."""
    n = len(message) if declared is None else declared
    return b"\x00" + n.to_bytes(4, "big") + message


def reflection_request(host_bytes=0, symbol=None):
    """A ServerReflectionRequest: host padded to host_bytes, and either
    file_containing_symbol (field 4) or list_services (field 7)."""
    msg = pb_string(1, b"h" * host_bytes) if host_bytes else b""
    return msg + (pb_string(4, symbol.encode()) if symbol else pb_string(7, b""))


class Conn:
    """One HTTP/2 client connection; events are collected as they are read."""

    def __init__(self, port, window=None, timeout=10):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        cfg = h2.config.H2Configuration(client_side=True, header_encoding="utf-8")
        self.h2 = h2.connection.H2Connection(config=cfg)
        if window is not None:
            self.h2.local_settings = h2.settings.Settings(
                client=True, initial_values={h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: window})
        self.h2.initiate_connection()
        self.events = []
        self.closed = False
        self.flush()

    def flush(self):
        data = self.h2.data_to_send()
        if data and not self.closed:
            try:
                self.sock.sendall(data)
            except OSError:
                self.closed = True

    def pump(self, wait=0.05):
        """Read what is there (waiting up to wait seconds for the first bytes)."""
        if self.closed:
            return
        self.sock.settimeout(wait)
        try:
            data = self.sock.recv(1 << 20)
        except (socket.timeout, BlockingIOError):
            return
        except OSError:
            self.closed = True
            return
        if not data:
            self.closed = True
            return
        try:
            self.events += self.h2.receive_data(data)
        except h2.exceptions.ProtocolError:
            self.closed = True
            return
        self.flush()

    def headers(self, sid, path, extra=(), end=False):
        self.h2.send_headers(sid, [(":method", "POST"), (":scheme", "http"), (":path", path),
                                   (":authority", "localhost"),
                                   ("content-type", "application/grpc"), ("te", "trailers"),
                                   *extra], end_stream=end)
        self.flush()

    def send(self, sid, data, end=False, timeout=30):
        """Send data on sid as the server's windows allow; False if the stream or the
        connection ended first (the server answered or reset it)."""
        deadline = time.monotonic() + timeout
        while data:
            if self.closed or self.stream_done(sid):
                return False
            try:
                room = min(self.h2.local_flow_control_window(sid), self.h2.max_outbound_frame_size)
            except h2.exceptions.StreamClosedError:
                return False
            if room <= 0:
                if time.monotonic() > deadline:
                    return False
                self.pump(0.05)
                continue
            chunk, data = data[:room], data[room:]
            try:
                self.h2.send_data(sid, chunk, end_stream=end and not data)
            except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
                return False
            self.flush()
            self.pump(0)
        return True

    def stream_done(self, sid):
        return any(isinstance(e, (h2.events.StreamEnded, h2.events.StreamReset)) and
                   e.stream_id == sid for e in self.events)

    def status(self, sid):
        """(grpc-status or None, RST_STREAM code or None) of stream sid so far."""
        status = reset = None
        for e in self.events:
            if getattr(e, "stream_id", None) != sid:
                continue
            if isinstance(e, (h2.events.ResponseReceived, h2.events.TrailersReceived)):
                status = dict(e.headers).get("grpc-status", status)
            elif isinstance(e, h2.events.StreamReset):
                reset = e.error_code
        return status, reset

    def wait(self, until, timeout):
        deadline = time.monotonic() + timeout
        while not until() and not self.closed and time.monotonic() < deadline:
            self.pump(0.05)
        return until()

    def close(self):
        self.closed = True
        try:
            self.sock.close()
        except OSError:
            pass


def reflection_window0(port, messages=48, host_bytes=1 << 20, symbol=None, batch=1):
    """The audit's first probe: window 0, then `messages` sends of `batch` reflection
    requests each on one stream (host padded to host_bytes). Returns the open Conn
    (stream 1)."""
    c = Conn(port, window=0)
    c.headers(1, REFLECTION)
    body = grpc_frame(reflection_request(host_bytes, symbol)) * batch
    for _ in range(messages):
        if not c.send(1, body):
            break
    return c


def unfinished_unary(port, streams=8, size=4 << 20, token=None, path=GET_TASK):
    """The audit's second probe: `streams` unary streams that each declare a message of
    size bytes, send all but its last byte, and never end. Returns the open Conn;
    stream ids are 1, 3, 5, ..."""
    c = Conn(port)
    extra = [("authorization", f"Bearer {token}")] if token else []
    body = grpc_frame(b"x" * (size - 1), declared=size)
    for i in range(streams):
        c.headers(1 + 2 * i, path, extra)
    for i in range(streams):
        c.send(1 + 2 * i, body)
    return c


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0
