"""Request smuggling (issue 10, part 4): framing that a lenient parser or a proxy in
front could read differently must get 400 and a closed connection, so that no second
request hides in the bytes; llhttp runs with no lenient flag anywhere in the code.
Variants from llhttp's own request tests and CVE-2024-27982."""
import re
import socket
import time

import pytest

from conftest import REPO, RawReader, raw_connect

BODY = b'{"email":"x@example.com","password":"password123"}'
SMUGGLED = b"GET /api/auth/me HTTP/1.1\r\nHost: x\r\n\r\n"


def post(headers, body=BODY + SMUGGLED):
    return (b"POST /api/auth/login HTTP/1.1\r\nHost: x\r\n" + headers + b"\r\n" + body)


VARIANTS = {
    "cl_and_te": post(b"Content-Length: %d\r\nTransfer-Encoding: chunked\r\n" % len(BODY)),
    "te_and_cl": post(b"Transfer-Encoding: chunked\r\nContent-Length: %d\r\n" % len(BODY)),
    "duplicate_cl_differ": post(b"Content-Length: %d\r\nContent-Length: 0\r\n" % len(BODY)),
    "duplicate_cl_same": post(b"Content-Length: %d\r\nContent-Length: %d\r\n"
                              % (len(BODY), len(BODY))),
    "cl_list": post(b"Content-Length: %d, %d\r\n" % (len(BODY), len(BODY))),
    "cl_plus_sign": post(b"Content-Length: +%d\r\n" % len(BODY)),
    "te_xchunked": post(b"Transfer-Encoding: xchunked\r\n"),
    "te_chunked_then_identity": post(b"Transfer-Encoding: chunked, identity\r\n"),
    "te_twice_identity_last": post(b"Transfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n"),
    "te_vertical_tab": post(b"Transfer-Encoding:\x0bchunked\r\n"),
    "te_space_before_colon": post(b"Transfer-Encoding : chunked\r\n"),
    "cl_space_before_colon": post(b"Content-Length : %d\r\n" % len(BODY)),
    "cl_tab_before_colon": post(b"Content-Length\t: %d\r\n" % len(BODY)),
    # CVE-2024-27982: a space before the header name on its own line (read as obs-fold by
    # lenient parsers, as a Content-Length by others).
    "cve_2024_27982_leading_space": (b"POST /api/auth/login HTTP/1.1\r\nHost: x\r\n"
                                     b" Content-Length: %d\r\n\r\n" % len(BODY) + BODY + SMUGGLED),
    "obs_fold": post(b"X-Folded: a\r\n Content-Length: %d\r\nContent-Length: %d\r\n"
                     % (len(BODY), len(BODY))),
    "obs_fold_te": post(b"Transfer-Encoding: identity\r\n chunked\r\n"),
    "obs_fold_empty_value": (b"POST /api/auth/login HTTP/1.1\r\nHost: x\r\nX-A:\r\n"
                             b" Content-Length: %d\r\n\r\n" % len(BODY) + BODY + SMUGGLED),
    "obs_fold_tab": post(b"X-A: a\r\n\tb\r\nContent-Length: %d\r\n" % len(BODY)),
    "bare_cr_in_header": post(b"X-A: a\rContent-Length: %d\r\n" % len(BODY)),
    "bare_lf_line_end": (b"POST /api/auth/login HTTP/1.1\nHost: x\nContent-Length: %d\n\n"
                         % len(BODY) + BODY + SMUGGLED),
    "bare_cr_request_line": b"GET /healthz HTTP/1.1\rHost: x\r\n\r\n" + SMUGGLED,
    "nul_in_header": post(b"X-A: a\x00b\r\nContent-Length: %d\r\n" % len(BODY)),
    "chunk_size_hex_prefix": post(b"Transfer-Encoding: chunked\r\n",
                                  b"0x5\r\nhello\r\n0\r\n\r\n" + SMUGGLED),
    "chunk_size_negative": post(b"Transfer-Encoding: chunked\r\n",
                                b"-5\r\nhello\r\n0\r\n\r\n" + SMUGGLED),
    "chunk_size_overflow": post(b"Transfer-Encoding: chunked\r\n",
                                b"1ffffffffffffffff\r\nhello\r\n0\r\n\r\n" + SMUGGLED),
    "chunk_size_space": post(b"Transfer-Encoding: chunked\r\n",
                             b"5 \r\nhello\r\n0\r\n\r\n" + SMUGGLED),
    "chunk_size_bare_lf": post(b"Transfer-Encoding: chunked\r\n",
                               b"5\nhello\r\n0\r\n\r\n" + SMUGGLED),
    "chunk_data_too_long": post(b"Transfer-Encoding: chunked\r\n",
                                b"3\r\nhello\r\n0\r\n\r\n" + SMUGGLED),
    "chunk_missing_crlf": post(b"Transfer-Encoding: chunked\r\n",
                               b"5\r\nhelloXX0\r\n\r\n" + SMUGGLED),
    "chunk_ext_bare_cr": post(b"Transfer-Encoding: chunked\r\n",
                              b"5;a=b\rc\r\nhello\r\n0\r\n\r\n" + SMUGGLED),
    "chunked_http10": (b"POST /api/auth/login HTTP/1.0\r\nHost: x\r\n"
                       b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n" + SMUGGLED),
    "header_name_with_space": post(b"Content Length: 5\r\nContent-Length: %d\r\n" % len(BODY)),
    "http_09_style": b"GET /healthz\r\n\r\n" + SMUGGLED,
    "bad_version": b"GET /healthz HTTP/1.1.1\r\nHost: x\r\n\r\n" + SMUGGLED,
}


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_smuggling_variant_400_and_closed(server, name):
    s = raw_connect(server.port)
    try:
        s.sendall(VARIANTS[name])
        reader = RawReader(s)
        resp = reader.read_response()
        assert resp.status == 400, f"{name}: {resp!r}"
        assert resp.headers.get("connection", "").lower() == "close", resp.headers
        assert reader.at_eof(), f"{name}: the connection stayed open (buffered: {reader.buf!r})"
        assert b"HTTP/1.1" not in reader.buf, f"{name}: a second response: {reader.buf!r}"
    finally:
        s.close()


def test_no_lenient_llhttp_flag_in_the_code():
    hits = []
    for path in (REPO / "src").rglob("*.[ch]"):
        for i, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            if re.search(r"llhttp_set_lenient|LENIENT_|lenient_flags", line):
                hits.append(f"{path.relative_to(REPO)}:{i}: {line.strip()}")
    assert not hits, "\n".join(hits)


def test_truncated_body_then_eof_closes_at_once(server):
    """A client that sends less body than its Content-Length and half-closes gets its 400
    and the connection is closed at once (it was held for the 2 s linger before; found by
    the http fuzzer)."""
    s = raw_connect(server.port)
    try:
        s.sendall(b"POST /api/auth/login HTTP/1.1\r\nHost: x\r\nContent-Length: 53\r\n\r\n{\"em")
        s.shutdown(socket.SHUT_WR)
        t0 = time.monotonic()
        reader = RawReader(s)
        assert reader.read_response().status == 400
        assert reader.at_eof(timeout=3.0)
        assert time.monotonic() - t0 < 1.0, f"closed after {time.monotonic() - t0:.2f} s"
    finally:
        s.close()


def test_empty_header_values_are_not_folding(server):
    """The obs-fold check must not take an empty value for a fold."""
    s = raw_connect(server.port)
    try:
        s.sendall(b"GET /healthz HTTP/1.1\r\nX-Empty:\r\nX-Blank: \r\nX-Tab:\t\r\nHost: x\r\n\r\n")
        assert RawReader(s).read_response().status == 200
    finally:
        s.close()
