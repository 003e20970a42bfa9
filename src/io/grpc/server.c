/* The gRPC server transport (server.h): HTTP/2 sessions, streams and their bounds,
 * abuse defences and timeouts; no method means anything here.
 *
 * Per connection, h2_io moves the bytes (shared with the client): reads go to
 * nghttp2_session_mem_recv; whatever the session wants to send is pulled after each
 * read and after each asynchronous answer, and written with one uv_write. A request
 * stream collects its length-prefixed messages; a unary route's request goes to the
 * handler when the client ends the stream, a bidi route's messages as they arrive.
 * Responses are written through a data provider over the stream's output buffer,
 * which defers while empty and ends with the trailers (grpc-status, grpc-message). An
 * error before any message is a trailers-only response.
 *
 * What the handler attached to a stream outlives it: a RST_STREAM from the client or
 * a closed connection hands it back (detach) for the handler to drop its answer when
 * it comes (as http/rest.c does with a request whose connection closed). */
#include "io/grpc/server.h"

#include <netinet/in.h>
#include <nghttp2/nghttp2.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>

#include <sodium.h>

#include "core/alloc.h"
#include "core/log.h"
#include "core/metrics.h"
#include "core/status.h"
#include "io/grpc/h2_io.h"
#include "io/grpc/wire.h"
#include "io/http/listen.h"

#define DEFAULT_STREAMS 100
#define DEFAULT_MESSAGE (4 * 1024 * 1024)
#define DEFAULT_HEADER_LIST 16384
#define DEFAULT_IDLE_MS 60000
#define DEFAULT_MAX_CONNECTIONS 10000
/* What a client can make the server hold (server.h, docs/OPERATIONS.md "gRPC limits"). */
#define DEFAULT_UNAUTH_MESSAGE 8192
#define DEFAULT_CONN_REQUEST (8 * 1024 * 1024)
#define DEFAULT_STREAM_OUTPUT (4 * 1024 * 1024)
#define DEFAULT_CONN_OUTPUT (8 * 1024 * 1024)
#define DEFAULT_BUFFERED (128 * 1024 * 1024)
#define DEFAULT_RECEIVE_MS 10000
#define DEFAULT_SEND_MS 10000
/* An open stream counted against max_buffered_bytes: our gstream_t and nghttp2's
 * stream (about 800 bytes measured) rounded up. */
#define STREAM_COST 1024
/* The connection timer's period: idle, receive and send deadlines are checked this
 * often (a quarter of the shortest of them, at most a second). */
#define MAX_TICK_MS 1000
#define MIN_TICK_MS 50
/* Rapid reset (CVE-2023-44487): a token bucket of RST_STREAM frames per connection,
 * our own so the defence does not depend on the installed nghttp2; nghttp2's
 * limiter (when built in) is set as a second line. */
#define RST_BURST 500
#define RST_PER_SEC 100
/* CONTINUATION flood (CVE-2024-28182): frames after one HEADERS. */
#define MAX_CONTINUATIONS 8
#define NOT_GRPC_BODY "this is a gRPC server: use content-type application/grpc\n"

typedef struct conn conn_t;
typedef struct tms_grpc_stream gstream_t;

struct tms_grpc_stream {
    gstream_t *prev, *next;
    conn_t *conn;
    int32_t id;
    const tms_grpc_route_t *route; /* NULL until the headers named a known one */
    size_t route_index;            /* metrics row; nroutes = unknown */
    /* request head */
    char path[256];
    bool path_long, is_post, grpc_ctype, bad_encoding, has_timeout, bad_timeout;
    uint64_t timeout_ms;
    char *meta[TMS_GRPC_MAX_METADATA]; /* the handler's metadata headers */
    size_t header_bytes;
    bool too_large;
    const char *no_room; /* a bound met while copying the headers */
    /* Request body: each message's 5-byte prefix, then its bytes in a buffer that
     * grows as they arrive (never past the declared length), so what is held is what
     * the client sent. */
    uint8_t prefix[TMS_GRPC_FRAME_HEADER];
    size_t prefix_len, need;
    uint8_t *in;
    size_t in_len, in_cap;
    uint8_t *msg; /* a unary call's request, until it is dispatched */
    size_t msg_len, msg_cap;
    size_t req_held; /* in_cap + msg_cap + the copied headers */
    int nmsgs;
    bool remote_closed;
    bool small_only;           /* caller not checked before the call: small messages only */
    tms_status_t small_code;   /* the answer to a larger one */
    const char *small_message; /* NULL: say how large it may be */
    uint64_t recv_deadline_ms; /* uv_now by which the request must have ended */
    /* response */
    bool headers_sent, finished, plain, eof, deferred, watching, reset;
    bool not_grpc;                    /* answered 415 once the client has sent its whole request */
    uint8_t *out;                     /* out_len - out_off bytes queued from out_off */
    size_t out_len, out_off, out_cap; /* out_cap is what is held */
    uint64_t out_since_ms;            /* queued output last moved (or started waiting) */
    tms_status_t status;
    char *status_msg;
    void *attached; /* the handler's, until it answers */
    uint64_t start_ns;
    char request_id[33];
};

struct conn {
    tms_h2_io_t io; /* socket, idle timer, session */
    tms_grpc_server_t *srv;
    conn_t *prev, *next;
    gstream_t *streams;
    size_t nstreams;
    size_t req_held, out_held; /* sums over its streams (socket writes: io.unwritten) */
    uint64_t idle_since_ms;    /* when nstreams last became 0 */
    double rst_tokens;
    uint64_t rst_last_ms;
    int continuations;
    const char *abuse;       /* reason once the connection was found abusing */
    tms_listen_slot_t *slot; /* this connection's place in its address's count */
    char client_addr[64];
};

struct tms_grpc_server {
    uv_loop_t *loop;
    tms_grpc_config_t cfg;
    tms_grpc_handler_t h; /* cfg.handler */
    tms_listener_t lis;
    conn_t *conns;
    size_t nconns;
    tms_flush_later_t flusher; /* connections with replies to write before the loop waits */
    size_t held;               /* every byte counted against cfg.max_buffered_bytes */
    uint64_t tick_ms;          /* period of each connection's timer */
    uint64_t rng[2];
    nghttp2_session_callbacks *callbacks;
    nghttp2_option *option;
    tms_counter_t **requests;    /* [(nroutes + 1) * 17], created on first use */
    tms_histogram_t **durations; /* [nroutes + 1] */
    char rbuf[TMS_H2_READ_CHUNK];
};

/* ---- metrics and logs ---- */

static void count_abuse(const char *reason)
{
    char labels[64];
    snprintf(labels, sizeof(labels), "reason=\"%s\"", reason);
    tms_counter_add(
        tms_metrics_counter("tms_grpc_abuse_total", "HTTP/2 connections closed for abuse", labels),
        1);
}

/* A bound of server.h met by a stream (or a connection): counted and logged. */
static void count_limit(const char *limit, const char *client)
{
    char labels[64];
    snprintf(labels, sizeof(labels), "limit=\"%s\"", limit);
    tms_counter_add(tms_metrics_counter("tms_grpc_limited_total",
                                        "gRPC streams or connections ended by a bound", labels),
                    1);
    tms_log_info("grpc_limit", "limit=%s client=%s", limit, client);
}

static void observe(tms_grpc_server_t *s, gstream_t *st, tms_status_t code)
{
    size_t row = st->route_index;
    const char *name = row < s->h.nroutes ? s->h.routes[row].path : "unknown";
    uint64_t ns = uv_hrtime() - st->start_ns;
    size_t cell = row * 17 + ((unsigned)code <= 16 ? (size_t)code : TMS_UNKNOWN);
    char labels[160];
    tms_log_line_t l;
    if (!s->requests[cell]) {
        snprintf(labels, sizeof(labels), "method=\"%s\",code=\"%s\"", name, tms_status_name(code));
        s->requests[cell] =
            tms_metrics_counter("tms_grpc_requests_total", "gRPC calls completed", labels);
    }
    if (!s->durations[row]) {
        snprintf(labels, sizeof(labels), "method=\"%s\"", name);
        s->durations[row] =
            tms_metrics_histogram("tms_grpc_request_duration_seconds",
                                  "gRPC call duration from headers to status", labels);
    }
    tms_counter_add(s->requests[cell], 1);
    tms_histogram_observe(s->durations[row], (double)ns / 1e9);
    /* The access line, built without printf (core/log.h): one per call. */
    if (tms_log_begin(&l, TMS_LOG_INFO, "grpc_request")) {
        tms_log_add(&l, " method=", 8);
        tms_log_add_quoted(&l, st->path, strlen(st->path), 95);
        tms_log_add(&l, " code=", 6);
        tms_log_add_str(&l, tms_status_name(code));
        tms_log_add(&l, " dur_ms=", 8);
        tms_log_add_ms(&l, ns);
        tms_log_add(&l, " rid=", 5);
        tms_log_add_str(&l, st->request_id);
        tms_log_add(&l, " client=", 8);
        tms_log_add_str(&l, st->conn ? st->conn->client_addr : "-");
        tms_log_end(&l);
    }
}

static uint64_t rng_next(tms_grpc_server_t *s)
{
    uint64_t a = s->rng[0], b = s->rng[1]; /* xorshift128+: ids need uniqueness only */
    s->rng[0] = b;
    a ^= a << 23;
    s->rng[1] = a ^ b ^ (a >> 17) ^ (b >> 26);
    return s->rng[1] + b;
}

/* ---- what a stream holds ---- */

/* Request bytes: n more for st, within its connection's and the server's bounds;
 * returns NULL, or the bound that would be passed (nothing charged). */
static const char *charge_request(gstream_t *st, size_t n)
{
    conn_t *c = st->conn;
    tms_grpc_server_t *s = c->srv;
    if (c->req_held + n > s->cfg.max_connection_request_bytes)
        return "connection_request";
    if (s->held + n > s->cfg.max_buffered_bytes)
        return "server_buffers";
    st->req_held += n;
    c->req_held += n;
    s->held += n;
    return NULL;
}

static void release_request(gstream_t *st)
{
    conn_t *c = st->conn;
    size_t n = st->in_cap + st->msg_cap;
    free(st->in);
    free(st->msg);
    st->in = st->msg = NULL;
    st->in_len = st->in_cap = st->msg_len = st->msg_cap = 0;
    st->req_held -= n;
    c->req_held -= n;
    c->srv->held -= n;
}

static void release_output(gstream_t *st)
{
    st->conn->out_held -= st->out_cap;
    st->conn->srv->held -= st->out_cap;
    free(st->out);
    st->out = NULL;
    st->out_len = st->out_off = st->out_cap = 0;
}

/* Room for n more queued output bytes: within the stream's, its connection's (socket
 * writes included) and the server's bounds; returns NULL, or the bound that would be
 * passed. Queued bytes move to the front first, so out_cap is all that is held. */
static const char *out_reserve(gstream_t *st, size_t n)
{
    conn_t *c = st->conn;
    tms_grpc_server_t *s = c->srv;
    size_t queued = st->out_len - st->out_off, cap, more;
    if (queued + n > s->cfg.max_stream_output_bytes)
        return "stream_output";
    if (st->out_off) {
        memmove(st->out, st->out + st->out_off, queued);
        st->out_len = queued;
        st->out_off = 0;
    }
    if (!queued)
        st->out_since_ms = uv_now(s->loop);
    if (queued + n <= st->out_cap)
        return NULL;
    cap = st->out_cap ? st->out_cap * 2 : 256;
    if (cap > s->cfg.max_stream_output_bytes)
        cap = s->cfg.max_stream_output_bytes;
    if (cap < queued + n)
        cap = queued + n;
    more = cap - st->out_cap;
    if (c->out_held + c->io.unwritten + more > s->cfg.max_connection_output_bytes)
        return "connection_output";
    if (s->held + more > s->cfg.max_buffered_bytes)
        return "server_buffers";
    st->out = tms_realloc(st->out, cap);
    st->out_cap = cap;
    c->out_held += more;
    s->held += more;
    return NULL;
}

/* After out_reserve. */
static void out_put(gstream_t *st, const void *data, size_t len)
{
    memcpy(st->out + st->out_len, data, len);
    st->out_len += len;
}

/* Takes strlen(v) where it stands: v must be written before the array is built. */
#define NV(n, v)                                                                                   \
    {                                                                                              \
        (uint8_t *)(n), (uint8_t *)(v), sizeof(n) - 1, strlen(v), NGHTTP2_NV_FLAG_NONE             \
    }

static ssize_t on_data_read(nghttp2_session *h2, int32_t id, uint8_t *buf, size_t length,
                            uint32_t *flags, nghttp2_data_source *source, void *user)
{
    gstream_t *st = source->ptr;
    size_t avail = st->out_len - st->out_off;
    if (avail) {
        size_t n = avail < length ? avail : length;
        memcpy(buf, st->out + st->out_off, n);
        st->out_off += n;
        st->out_since_ms = uv_now(st->conn->srv->loop);
        if (st->out_off == st->out_len)
            release_output(st); /* a drained stream holds nothing */
        return (ssize_t)n;
    }
    if (st->reset)
        return NGHTTP2_ERR_DEFERRED; /* our RST_STREAM is on its way */
    if (!st->eof) {
        st->deferred = true;
        return NGHTTP2_ERR_DEFERRED;
    }
    *flags |= NGHTTP2_DATA_FLAG_EOF;
    if (!st->plain) {
        char code[8];
        char *msg = tms_grpc_percent_encode(st->status_msg ? st->status_msg : "");
        snprintf(code, sizeof(code), "%d", (int)st->status); /* before NV takes its length */
        nghttp2_nv trailers[2] = {NV("grpc-status", code), NV("grpc-message", msg)};
        *flags |= NGHTTP2_DATA_FLAG_NO_END_STREAM;
        nghttp2_submit_trailer(h2, id, trailers, st->status_msg && st->status_msg[0] ? 2 : 1);
        free(msg);
    }
    return 0;
}

static void resume(gstream_t *st)
{
    if (st->deferred) {
        st->deferred = false;
        nghttp2_session_resume_data(st->conn->io.h2, st->id);
    }
}

/* Response headers with the data provider; later output is appended to st->out. */
static void start_response(gstream_t *st)
{
    nghttp2_nv h[] = {NV(":status", "200"), NV("content-type", "application/grpc"),
                      NV("grpc-accept-encoding", "identity")};
    nghttp2_data_provider prd = {.source.ptr = st, .read_callback = on_data_read};
    st->headers_sent = true;
    nghttp2_submit_response(st->conn->io.h2, st->id, h, sizeof(h) / sizeof(h[0]), &prd);
}

static void finish(gstream_t *st, tms_status_t code, const char *message);

/* Ends the stream with RST_STREAM (code) where trailers cannot be sent: a reply
 * already started, or one that does not move. Frees what it holds. */
static void reset_stream(gstream_t *st, uint32_t code, tms_status_t status)
{
    if (!st->finished) {
        st->finished = true;
        observe(st->conn->srv, st, status);
    }
    st->watching = false;
    st->reset = true;
    release_request(st);
    release_output(st);
    nghttp2_submit_rst_stream(st->conn->io.h2, NGHTTP2_FLAG_NONE, st->id, code);
}

static const char *limit_message(const char *limit)
{
    if (strcmp(limit, "stream_output") == 0)
        return "reply larger than grpc.max_stream_output_bytes";
    if (strcmp(limit, "connection_output") == 0)
        return "too many replies wait for this connection to read them "
               "(grpc.max_connection_output_bytes)";
    if (strcmp(limit, "connection_request") == 0)
        return "too many request bytes buffered on this connection "
               "(grpc.max_connection_request_bytes)";
    return "server buffers full (grpc.max_buffered_bytes), retry later";
}

/* A bound met: the call ends with RESOURCE_EXHAUSTED, in trailers-only when no
 * reply was started, else with RST_STREAM ENHANCE_YOUR_CALM (which gRPC clients
 * read as RESOURCE_EXHAUSTED): trailers cannot overtake queued messages. */
static void over_bound(gstream_t *st, const char *limit)
{
    count_limit(limit, st->conn->client_addr);
    if (!st->headers_sent)
        finish(st, TMS_RESOURCE_EXHAUSTED, limit_message(limit));
    else
        reset_stream(st, NGHTTP2_ENHANCE_YOUR_CALM, TMS_RESOURCE_EXHAUSTED);
}

/* Queue one response message (copied); false when a bound ended the call instead. */
static bool send_message(gstream_t *st, const uint8_t *data, size_t len)
{
    uint8_t prefix[TMS_GRPC_FRAME_HEADER];
    const char *limit = out_reserve(st, sizeof(prefix) + len);
    if (limit) {
        over_bound(st, limit);
        return false;
    }
    tms_grpc_frame_header(prefix, (uint32_t)len);
    out_put(st, prefix, sizeof(prefix));
    if (len)
        out_put(st, data, len);
    if (!st->headers_sent)
        start_response(st);
    else
        resume(st);
    return true;
}

/* End the call with a status: trailers after the messages, or trailers-only. */
static void finish(gstream_t *st, tms_status_t code, const char *message)
{
    tms_grpc_server_t *s = st->conn->srv;
    if (st->finished)
        return;
    st->finished = true;
    st->watching = false;
    release_request(st); /* whatever still comes is discarded */
    observe(s, st, code);
    if (st->headers_sent) {
        st->status = code;
        free(st->status_msg);
        st->status_msg = tms_strdup(code == TMS_OK ? "" : (message ? message : ""));
        st->eof = true;
        resume(st);
        return;
    }
    {
        char num[8];
        char *msg = tms_grpc_percent_encode(message ? message : "");
        snprintf(num, sizeof(num), "%d", (int)code); /* before NV takes its length */
        nghttp2_nv h[] = {NV(":status", "200"), NV("content-type", "application/grpc"),
                          NV("grpc-accept-encoding", "identity"), NV("grpc-status", num),
                          NV("grpc-message", msg)};
        st->headers_sent = true;
        nghttp2_submit_response(st->conn->io.h2, st->id, h, code != TMS_OK && msg[0] ? 5 : 4, NULL);
        free(msg);
    }
}

/* A request that is not gRPC (browsers, h2spec): a plain HTTP/2 answer, sent only
 * after the whole request arrived, like any HTTP server, so a malformed frame later
 * in that request still meets the open-stream rules of RFC 9113. */
static void respond_plain(gstream_t *st, const char *status)
{
    nghttp2_nv h[] = {NV(":status", status), NV("content-type", "text/plain")};
    nghttp2_data_provider prd = {.source.ptr = st, .read_callback = on_data_read};
    const char *limit = out_reserve(st, sizeof(NOT_GRPC_BODY) - 1);
    if (limit) {
        count_limit(limit, st->conn->client_addr);
        reset_stream(st, NGHTTP2_ENHANCE_YOUR_CALM, TMS_RESOURCE_EXHAUSTED);
        return;
    }
    st->finished = st->plain = st->eof = st->headers_sent = true;
    out_put(st, NOT_GRPC_BODY, sizeof(NOT_GRPC_BODY) - 1);
    nghttp2_submit_response(st->conn->io.h2, st->id, h, 2, &prd);
}

/* ---- requests ---- */

/* A unary request's message: never NULL, also when empty. */
static const uint8_t *msg_of(const gstream_t *st)
{
    return st->msg ? st->msg : (const uint8_t *)"";
}

/* One whole request message arrived. */
static void on_message(gstream_t *st, const uint8_t *data, size_t len)
{
    tms_grpc_server_t *s = st->conn->srv;
    if (st->route->shape == TMS_GRPC_BIDI) {
        s->h.message(s->h.ctx, st, data, len);
        return;
    }
    if (st->nmsgs++ > 0) {
        finish(st, TMS_INVALID_ARGUMENT, "a unary call takes exactly one request message");
        return;
    }
    /* The request buffer becomes the message (it stays counted until dispatch). */
    st->msg = st->in;
    st->msg_len = len;
    st->msg_cap = st->in_cap;
    st->in = NULL;
    st->in_len = st->in_cap = 0;
}

/* The client ended its side of the stream. */
static void on_request_end(gstream_t *st)
{
    tms_grpc_server_t *s = st->conn->srv;
    if (!st->finished && st->not_grpc) {
        respond_plain(st, "415");
        return;
    }
    if (st->finished || !st->route)
        return;
    if (st->route->shape == TMS_GRPC_BIDI) {
        finish(st, TMS_OK, NULL);
        return;
    }
    if (st->nmsgs != 1) {
        finish(st, TMS_INVALID_ARGUMENT, "a unary call takes exactly one request message");
        return;
    }
    if (st->attached)
        return;
    s->h.call(s->h.ctx, st, msg_of(st), st->msg_len);
    release_request(st); /* decoded: the handler holds its own copy */
}

static const tms_grpc_route_t *find_route(tms_grpc_server_t *s, const char *path, size_t len)
{
    for (size_t i = 0; i < s->h.nroutes; i++) {
        if (strlen(s->h.routes[i].path) == len && memcmp(s->h.routes[i].path, path, len) == 0)
            return &s->h.routes[i];
    }
    return NULL;
}

static void on_headers_done(gstream_t *st)
{
    tms_grpc_server_t *s = st->conn->srv;
    if (!st->grpc_ctype) {
        st->not_grpc = true; /* its body is discarded (no method) */
        return;
    }
    if (st->too_large) {
        finish(st, TMS_RESOURCE_EXHAUSTED, "header list too large");
        return;
    }
    if (!st->is_post) {
        finish(st, TMS_UNIMPLEMENTED, "gRPC needs POST");
        return;
    }
    if (st->bad_encoding) {
        finish(st, TMS_UNIMPLEMENTED, "grpc-encoding not supported; use identity");
        return;
    }
    if (st->bad_timeout) {
        finish(st, TMS_INVALID_ARGUMENT, "malformed grpc-timeout");
        return;
    }
    st->route = st->path_long ? NULL : find_route(s, st->path, strlen(st->path));
    if (!st->route) {
        finish(st, TMS_UNIMPLEMENTED, "unknown method");
        return;
    }
    st->route_index = (size_t)(st->route - s->h.routes);
    if (s->h.begin)
        s->h.begin(s->h.ctx, st); /* credentials, shutdown, small messages */
    if (st->finished)
        return;
    if (st->no_room) {
        over_bound(st, st->no_room);
        return;
    }
    /* The call's own deadline counts from the headers as well. */
    if (st->has_timeout && st->timeout_ms < s->cfg.receive_timeout_ms)
        st->recv_deadline_ms = uv_now(s->loop) + st->timeout_ms;
}

static void stream_free(gstream_t *st)
{
    tms_grpc_server_t *s = st->conn->srv;
    if (st->attached) {
        /* Reset or closed before the answer: the handler drops it when it comes. */
        void *attached = st->attached;
        st->attached = NULL;
        s->h.detach(s->h.ctx, st, attached);
    }
    if (!st->finished && st->route)
        observe(s, st, TMS_CANCELLED);
    if (st->prev)
        st->prev->next = st->next;
    else
        st->conn->streams = st->next;
    if (st->next)
        st->next->prev = st->prev;
    release_request(st);
    release_output(st);
    /* what remains: the copied headers and the stream itself */
    st->conn->req_held -= st->req_held;
    st->conn->srv->held -= st->req_held + STREAM_COST;
    if (--st->conn->nstreams == 0)
        st->conn->idle_since_ms = uv_now(st->conn->srv->loop);
    for (size_t i = 0; i < TMS_GRPC_MAX_METADATA; i++) {
        if (st->meta[i]) { /* tokens and credentials: wiped */
            sodium_memzero(st->meta[i], strlen(st->meta[i]));
            free(st->meta[i]);
        }
    }
    free(st->status_msg);
    free(st);
}

/* ---- nghttp2 callbacks ---- */

static int on_begin_frame(nghttp2_session *h2, const nghttp2_frame_hd *hd, void *user)
{
    conn_t *c = user;
    if (hd->type == NGHTTP2_CONTINUATION) {
        if (++c->continuations > MAX_CONTINUATIONS) {
            c->abuse = "continuation_flood";
            return NGHTTP2_ERR_CALLBACK_FAILURE;
        }
    } else if (hd->type == NGHTTP2_HEADERS) {
        c->continuations = 0;
    }
    return 0;
}

static int on_begin_headers(nghttp2_session *h2, const nghttp2_frame *frame, void *user)
{
    conn_t *c = user;
    gstream_t *st;
    tms_grpc_server_t *s = c->srv;
    if (frame->hd.type != NGHTTP2_HEADERS || frame->headers.cat != NGHTTP2_HCAT_REQUEST)
        return 0;
    if (s->held + STREAM_COST > s->cfg.max_buffered_bytes) {
        count_limit("server_buffers", c->client_addr);
        nghttp2_submit_rst_stream(h2, NGHTTP2_FLAG_NONE, frame->hd.stream_id,
                                  NGHTTP2_REFUSED_STREAM);
        return 0; /* no stream data: the rest of the request is ignored */
    }
    s->held += STREAM_COST;
    st = tms_new(gstream_t);
    st->conn = c;
    st->id = frame->hd.stream_id;
    st->route_index = c->srv->h.nroutes;
    st->start_ns = uv_hrtime();
    st->recv_deadline_ms = uv_now(s->loop) + s->cfg.receive_timeout_ms;
    snprintf(st->request_id, sizeof(st->request_id), "%016llx%016llx",
             (unsigned long long)rng_next(c->srv), (unsigned long long)rng_next(c->srv));
    st->next = c->streams;
    if (c->streams)
        c->streams->prev = st;
    c->streams = st;
    c->nstreams++;
    nghttp2_session_set_stream_user_data(h2, st->id, st);
    return 0;
}

#define IS(lit) (namelen == sizeof(lit) - 1 && memcmp(name, lit, namelen) == 0)

static int on_header(nghttp2_session *h2, const nghttp2_frame *frame, const uint8_t *name,
                     size_t namelen, const uint8_t *value, size_t valuelen, uint8_t flags,
                     void *user)
{
    conn_t *c = user;
    gstream_t *st;
    if (frame->hd.type != NGHTTP2_HEADERS || frame->headers.cat != NGHTTP2_HCAT_REQUEST)
        return 0; /* trailers from the client carry nothing we use */
    st = nghttp2_session_get_stream_user_data(h2, frame->hd.stream_id);
    if (!st)
        return 0;
    st->header_bytes += namelen + valuelen + 32; /* RFC 9113 6.5.2 accounting */
    if (st->header_bytes > c->srv->cfg.max_header_list_bytes) {
        st->too_large = true;
        return 0;
    }
    if (IS(":path")) {
        st->path_long = valuelen >= sizeof(st->path);
        if (!st->path_long) {
            memcpy(st->path, value, valuelen);
            st->path[valuelen] = '\0';
        }
    } else if (IS(":method")) {
        st->is_post = valuelen == 4 && memcmp(value, "POST", 4) == 0;
    } else if (IS("content-type")) {
        /* application/grpc, application/grpc+proto, application/grpc;... */
        st->grpc_ctype = valuelen >= 16 && memcmp(value, "application/grpc", 16) == 0 &&
                         (valuelen == 16 || value[16] == '+' || value[16] == ';');
    } else if (IS("grpc-encoding")) {
        st->bad_encoding = !(valuelen == 8 && memcmp(value, "identity", 8) == 0);
    } else if (IS("grpc-timeout")) {
        char tmp[16];
        st->has_timeout = true;
        if (valuelen >= sizeof(tmp)) {
            st->bad_timeout = true;
        } else {
            memcpy(tmp, value, valuelen);
            tmp[valuelen] = '\0';
            st->bad_timeout = tms_grpc_timeout_parse(tmp, &st->timeout_ms) != 0;
        }
    } else {
        const tms_grpc_handler_t *h = &c->srv->h;
        for (size_t i = 0; i < h->nmetadata && i < TMS_GRPC_MAX_METADATA; i++) {
            char **copy = &st->meta[i];
            size_t had;
            const char *limit;
            if (strlen(h->metadata[i]) != namelen || memcmp(h->metadata[i], name, namelen) != 0)
                continue;
            had = *copy ? strlen(*copy) + 1 : 0; /* repeated: the last one counts */
            limit = valuelen + 1 > had ? charge_request(st, valuelen + 1 - had) : NULL;
            if (limit) {
                st->no_room = limit;
                return 0;
            }
            if (*copy) {
                sodium_memzero(*copy, had - 1);
                free(*copy);
            }
            *copy = tms_strndup((const char *)value, valuelen);
            break;
        }
    }
    return 0;
}

#undef IS

/* A message prefix arrived: its declared length within the bounds, or the call
 * ends here (false). */
static bool message_begins(gstream_t *st)
{
    tms_grpc_server_t *s = st->conn->srv;
    tms_grpc_frame_t f;
    char m[128];
    int rc = tms_grpc_frame_parse(st->prefix, sizeof(st->prefix), s->cfg.max_message_bytes, &f);
    if (rc == -TMS_ERANGE) {
        snprintf(m, sizeof(m), "message larger than %zu bytes", s->cfg.max_message_bytes);
        finish(st, TMS_RESOURCE_EXHAUSTED, m);
        return false;
    }
    if (rc < 0 || st->prefix[0] == 1) {
        finish(st, TMS_INTERNAL,
               rc < 0 ? "malformed message prefix" : "compressed message without grpc-encoding");
        return false;
    }
    st->need = (size_t)st->prefix[1] << 24 | (size_t)st->prefix[2] << 16 |
               (size_t)st->prefix[3] << 8 | st->prefix[4];
    if (st->small_only && st->need > s->cfg.max_unauthenticated_message_bytes) {
        count_limit("unauthenticated_message", st->conn->client_addr);
        if (st->small_message) {
            finish(st, st->small_code, st->small_message);
        } else {
            snprintf(m, sizeof(m), "message larger than %zu bytes on a call without a token",
                     s->cfg.max_unauthenticated_message_bytes);
            finish(st, st->small_code, m);
        }
        return false;
    }
    return true;
}

/* Room for want bytes of the current message: the buffer doubles as bytes arrive,
 * never past the declared length; false when a bound ended the call. */
static bool in_grow(gstream_t *st, size_t want)
{
    size_t cap = st->in_cap ? st->in_cap * 2 : 16384;
    const char *limit;
    if (want <= st->in_cap)
        return true;
    if (cap > st->need)
        cap = st->need;
    if (cap < want)
        cap = want;
    limit = charge_request(st, cap - st->in_cap);
    if (limit) {
        over_bound(st, limit);
        return false;
    }
    st->in = tms_realloc(st->in, cap);
    st->in_cap = cap;
    return true;
}

static void message_done(gstream_t *st)
{
    tms_grpc_server_t *s = st->conn->srv;
    st->prefix_len = 0;
    on_message(st, st->in ? st->in : (const uint8_t *)"", st->need);
    if (st->in) /* not kept as a unary request: reflection answered it */
        release_request(st);
    if (!st->finished && st->route->shape == TMS_GRPC_BIDI)
        st->recv_deadline_ms = uv_now(s->loop) + s->cfg.receive_timeout_ms; /* anew per message */
}

static int on_data_chunk(nghttp2_session *h2, uint8_t flags, int32_t id, const uint8_t *data,
                         size_t len, void *user)
{
    gstream_t *st = nghttp2_session_get_stream_user_data(h2, id);
    if (!st || st->finished || !st->route)
        return 0; /* answered already: the rest of the body is discarded */
    while (len && !st->finished) {
        size_t n;
        if (st->prefix_len < sizeof(st->prefix)) {
            n = sizeof(st->prefix) - st->prefix_len;
            n = n < len ? n : len;
            memcpy(st->prefix + st->prefix_len, data, n);
            st->prefix_len += n;
            data += n;
            len -= n;
            if (st->prefix_len == sizeof(st->prefix) && message_begins(st) && !st->need)
                message_done(st);
            continue;
        }
        n = st->need - st->in_len;
        n = n < len ? n : len;
        if (!in_grow(st, st->in_len + n))
            break;
        memcpy(st->in + st->in_len, data, n);
        st->in_len += n;
        data += n;
        len -= n;
        if (st->in_len == st->need)
            message_done(st);
    }
    return 0;
}

/* Token bucket of RST_STREAM frames received. */
static int rst_allowed(conn_t *c)
{
    uint64_t now = uv_now(c->srv->loop);
    c->rst_tokens += (double)(now - c->rst_last_ms) * RST_PER_SEC / 1000.0;
    if (c->rst_tokens > RST_BURST)
        c->rst_tokens = RST_BURST;
    c->rst_last_ms = now;
    if (c->rst_tokens < 1)
        return 0;
    c->rst_tokens -= 1;
    return 1;
}

static void conn_abuse(conn_t *c, const char *reason)
{
    if (c->abuse && strcmp(c->abuse, reason) != 0)
        return;
    c->abuse = reason;
    count_abuse(reason);
    tms_log_warn("grpc_abuse", "reason=%s client=%s", reason, c->client_addr);
    nghttp2_session_terminate_session(c->io.h2, NGHTTP2_ENHANCE_YOUR_CALM);
}

static int on_frame_recv(nghttp2_session *h2, const nghttp2_frame *frame, void *user)
{
    conn_t *c = user;
    gstream_t *st;
    if (frame->hd.type == NGHTTP2_RST_STREAM) {
        if (!rst_allowed(c)) {
            c->abuse = NULL;
            conn_abuse(c, "rapid_reset");
        }
        return 0;
    }
    if (frame->hd.type != NGHTTP2_HEADERS && frame->hd.type != NGHTTP2_DATA)
        return 0;
    st = nghttp2_session_get_stream_user_data(h2, frame->hd.stream_id);
    if (!st)
        return 0;
    if (frame->hd.type == NGHTTP2_HEADERS && frame->headers.cat == NGHTTP2_HCAT_REQUEST)
        on_headers_done(st);
    if (frame->hd.flags & NGHTTP2_FLAG_END_STREAM) {
        st->remote_closed = true;
        on_request_end(st);
    }
    return 0;
}

static int on_frame_send(nghttp2_session *h2, const nghttp2_frame *frame, void *user)
{
    conn_t *c = user;
    gstream_t *st;
    if (frame->hd.type == NGHTTP2_GOAWAY && frame->goaway.error_code == NGHTTP2_ENHANCE_YOUR_CALM &&
        !c->abuse) {
        c->abuse = "h2_limit"; /* nghttp2's own limiter (e.g. its reset rate limit) */
        count_abuse(c->abuse);
        tms_log_warn("grpc_abuse", "reason=%s client=%s", c->abuse, c->client_addr);
    }
    if ((frame->hd.type == NGHTTP2_HEADERS || frame->hd.type == NGHTTP2_DATA) &&
        (frame->hd.flags & NGHTTP2_FLAG_END_STREAM)) {
        /* Answered before the client finished sending: tell it to stop (gRPC's
         * RST_STREAM NO_ERROR after the trailers). */
        st = nghttp2_session_get_stream_user_data(h2, frame->hd.stream_id);
        if (st && !st->remote_closed)
            nghttp2_submit_rst_stream(h2, NGHTTP2_FLAG_NONE, st->id, NGHTTP2_NO_ERROR);
    }
    return 0;
}

static int on_stream_close(nghttp2_session *h2, int32_t id, uint32_t error_code, void *user)
{
    gstream_t *st = nghttp2_session_get_stream_user_data(h2, id);
    if (st) {
        nghttp2_session_set_stream_user_data(h2, id, NULL);
        stream_free(st);
    }
    return 0;
}

/* ---- connections ---- */

static void conn_close(conn_t *c)
{
    if (c->io.closing)
        return;
    tms_h2_io_close(&c->io);
}

static void on_conn_closed(tms_h2_io_t *io)
{
    conn_t *c = io->owner;
    tms_grpc_server_t *s = c->srv;
    while (c->streams) {
        nghttp2_session_set_stream_user_data(c->io.h2, c->streams->id, NULL);
        stream_free(c->streams);
    }
    nghttp2_session_del(c->io.h2);
    if (c->prev)
        c->prev->next = c->next;
    else
        s->conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    s->nconns--;
    tms_listener_release(&s->lis, &c->slot);
    free(c);
    if (s->nconns == 0 && s->held != 0) {
        /* A drift would refuse streams for good: say so, and start again from 0. */
        tms_log_error("grpc_accounting", "held=%zu error=\"bytes counted with no connection\"",
                      s->held);
        s->held = 0;
    }
    tms_listener_maybe_stopped(&s->lis);
}

static void on_io_fail(tms_h2_io_t *io, const char *why)
{
    conn_close(io->owner);
}

/* The session failed on what the client sent: count abuse, or answer a protocol
 * error, with a GOAWAY if it can still be sent. */
static void on_recv_failed(tms_h2_io_t *io, int rv)
{
    conn_t *c = io->owner;
    const char *reason = c->abuse                                   ? c->abuse
                         : rv == NGHTTP2_ERR_FLOODED                ? "flood"
                         : rv == NGHTTP2_ERR_TOO_MANY_CONTINUATIONS ? "continuation_flood"
                                                                    : NULL;
    if (reason) {
        c->abuse = NULL;
        conn_abuse(c, reason);
    } else {
        tms_log_info("grpc_conn_error", "client=%s error=\"%s\"", c->client_addr,
                     nghttp2_strerror(rv));
        nghttp2_session_terminate_session(c->io.h2, NGHTTP2_PROTOCOL_ERROR);
    }
    /* A fatal error leaves the session unusable for reading: send the GOAWAY
     * if it can still be sent, then close. */
    uv_read_stop((uv_stream_t *)&io->tcp);
    tms_h2_io_flush(io);
    if (!io->closing && io->writes == 0)
        conn_close(c);
}

static const tms_h2_io_ops_t conn_ops = {
    .fail = on_io_fail,
    .recv_failed = on_recv_failed,
    .closed = on_conn_closed,
};

/* The connection's periodic check (reads do not restart it): a stream whose request
 * has not ended by its receive deadline is answered DEADLINE_EXCEEDED; one whose
 * queued reply has not moved for send_timeout is reset; a connection whose socket
 * writes have not moved for as long is closed, and one without streams that read
 * nothing for idle_timeout gets GOAWAY. */
static void on_tick(uv_timer_t *t)
{
    conn_t *c = ((tms_h2_io_t *)t->data)->owner;
    tms_grpc_server_t *s = c->srv;
    uint64_t now = uv_now(s->loop), last;
    if (tms_h2_io_handshake_overdue(&c->io, now, s->cfg.tls_handshake_timeout_ms)) {
        conn_close(c);
        return;
    }
    if (c->io.unwritten && now - c->io.last_write_ms >= s->cfg.send_timeout_ms) {
        count_limit("send_timeout", c->client_addr);
        conn_close(c);
        return;
    }
    for (gstream_t *st = c->streams; st; st = st->next) {
        if (!st->remote_closed && !st->finished && now >= st->recv_deadline_ms) {
            count_limit("receive_timeout", c->client_addr);
            if (st->route)
                finish(st, TMS_DEADLINE_EXCEEDED, "request not received in time");
            else
                reset_stream(st, NGHTTP2_CANCEL, TMS_DEADLINE_EXCEEDED);
        } else if (!st->reset && st->out_len > st->out_off &&
                   now - st->out_since_ms >= s->cfg.send_timeout_ms) {
            count_limit("send_timeout", c->client_addr);
            reset_stream(st, NGHTTP2_CANCEL, TMS_CANCELLED);
        }
    }
    last = c->io.last_read_ms > c->idle_since_ms ? c->io.last_read_ms : c->idle_since_ms;
    if (c->nstreams == 0 && now - last >= s->cfg.idle_timeout_ms)
        nghttp2_session_terminate_session(c->io.h2, NGHTTP2_NO_ERROR);
    tms_h2_io_flush(&c->io);
}

static void on_connection(uv_stream_t *listener, int status)
{
    tms_grpc_server_t *s = listener->data;
    conn_t *c;
    struct sockaddr_storage ss;
    int len = sizeof(ss);
    nghttp2_settings_entry iv[] = {
        {NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS, s->cfg.max_concurrent_streams},
        {NGHTTP2_SETTINGS_MAX_HEADER_LIST_SIZE, (uint32_t)s->cfg.max_header_list_bytes},
        {NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, TMS_H2_STREAM_WINDOW},
        {NGHTTP2_SETTINGS_ENABLE_PUSH, 0},
    };
    if (status < 0)
        return;
    c = tms_new(conn_t);
    c->srv = s;
    tms_h2_io_init(&c->io, s->loop, &conn_ops, c, s->rbuf, sizeof(s->rbuf));
    c->io.held = &s->held; /* socket writes count against max_buffered_bytes */
    c->idle_since_ms = uv_now(s->loop);
    c->rst_tokens = RST_BURST;
    c->rst_last_ms = uv_now(s->loop);
    c->next = s->conns;
    if (s->conns)
        s->conns->prev = c;
    s->conns = c;
    s->nconns++;
    nghttp2_session_server_new2(&c->io.h2, s->callbacks, c, s->option);
    if (uv_accept(listener, (uv_stream_t *)&c->io.tcp) < 0 || s->lis.stopping) {
        conn_close(c);
        return;
    }
    if (uv_tcp_getpeername(&c->io.tcp, (struct sockaddr *)&ss, &len) == 0) {
        if (ss.ss_family == AF_INET)
            uv_ip4_name((struct sockaddr_in *)&ss, c->client_addr, sizeof(c->client_addr));
        else if (ss.ss_family == AF_INET6)
            uv_ip6_name((struct sockaddr_in6 *)&ss, c->client_addr, sizeof(c->client_addr));
    }
    /* One address may not take every slot (limit_conn): the excess goes at once. */
    if (tms_listener_admit(&s->lis, c->client_addr, &c->slot) != 0) {
        conn_close(c);
        return;
    }
    if (s->nconns > s->cfg.max_connections) {
        tms_listener_refused_max(&s->lis);
        conn_close(c);
        return;
    }
    uv_timer_start(&c->io.timer, on_tick, s->tick_ms, s->tick_ms);
    if (s->cfg.tls) /* the session's frames wait for the handshake (h2_io) */
        c->io.tls = tms_tls_new(s->cfg.tls, NULL);
    /* SETTINGS at once: nghttp2's own default for concurrent streams is unlimited. */
    if (tms_h2_io_start(&c->io, iv, sizeof(iv) / sizeof(iv[0])) < 0) {
        conn_close(c);
        return;
    }
    tms_h2_io_flush(&c->io);
}

/* The grace of a stop is over. */
static void close_all(void *arg)
{
    tms_grpc_server_t *s = arg;
    for (conn_t *c = s->conns; c; c = c->next)
        conn_close(c);
}

/* ---- server ---- */

tms_grpc_server_t *tms_grpc_server_new(uv_loop_t *loop, const tms_grpc_config_t *cfg)
{
    tms_grpc_server_t *s = tms_new(tms_grpc_server_t);
    nghttp2_session_callbacks *cb;
    s->loop = loop;
    s->cfg = *cfg;
    s->h = cfg->handler;
    tms_listener_init(&s->lis, s, &s->nconns, close_all);
    tms_listener_limit(&s->lis, "grpc", cfg->max_connections_per_address, cfg->ipv6_prefix);
    if (!s->cfg.max_concurrent_streams)
        s->cfg.max_concurrent_streams = DEFAULT_STREAMS;
    if (!s->cfg.max_message_bytes)
        s->cfg.max_message_bytes = DEFAULT_MESSAGE;
    if (!s->cfg.max_header_list_bytes)
        s->cfg.max_header_list_bytes = DEFAULT_HEADER_LIST;
    if (!s->cfg.idle_timeout_ms)
        s->cfg.idle_timeout_ms = DEFAULT_IDLE_MS;
    if (!s->cfg.max_connections)
        s->cfg.max_connections = DEFAULT_MAX_CONNECTIONS;
    if (!s->cfg.max_unauthenticated_message_bytes)
        s->cfg.max_unauthenticated_message_bytes = DEFAULT_UNAUTH_MESSAGE;
    if (!s->cfg.max_connection_request_bytes)
        s->cfg.max_connection_request_bytes = DEFAULT_CONN_REQUEST;
    if (!s->cfg.max_stream_output_bytes)
        s->cfg.max_stream_output_bytes = DEFAULT_STREAM_OUTPUT;
    if (!s->cfg.max_connection_output_bytes)
        s->cfg.max_connection_output_bytes = DEFAULT_CONN_OUTPUT;
    if (!s->cfg.max_buffered_bytes)
        s->cfg.max_buffered_bytes = DEFAULT_BUFFERED;
    if (!s->cfg.receive_timeout_ms)
        s->cfg.receive_timeout_ms = DEFAULT_RECEIVE_MS;
    if (!s->cfg.send_timeout_ms)
        s->cfg.send_timeout_ms = DEFAULT_SEND_MS;
    if (!s->cfg.tls_handshake_timeout_ms)
        s->cfg.tls_handshake_timeout_ms = 10000;
    s->tick_ms = MAX_TICK_MS;
    if (s->tick_ms > s->cfg.receive_timeout_ms / 4)
        s->tick_ms = s->cfg.receive_timeout_ms / 4;
    if (s->tick_ms > s->cfg.send_timeout_ms / 4)
        s->tick_ms = s->cfg.send_timeout_ms / 4;
    if (s->tick_ms > s->cfg.idle_timeout_ms / 4)
        s->tick_ms = s->cfg.idle_timeout_ms / 4;
    if (s->cfg.tls && s->tick_ms > s->cfg.tls_handshake_timeout_ms / 4)
        s->tick_ms = s->cfg.tls_handshake_timeout_ms / 4;
    if (s->tick_ms < MIN_TICK_MS)
        s->tick_ms = MIN_TICK_MS;
    tms_h2_flusher_init(&s->flusher, loop);
    s->requests = tms_calloc((s->h.nroutes + 1) * 17, sizeof(*s->requests));
    s->durations = tms_calloc(s->h.nroutes + 1, sizeof(*s->durations));
    if (nghttp2_session_callbacks_new(&cb) != 0 || nghttp2_option_new(&s->option) != 0)
        tms_oom(__FILE__, __LINE__);
    nghttp2_session_callbacks_set_on_begin_frame_callback(cb, on_begin_frame);
    nghttp2_session_callbacks_set_on_begin_headers_callback(cb, on_begin_headers);
    nghttp2_session_callbacks_set_on_header_callback(cb, on_header);
    nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cb, on_data_chunk);
    nghttp2_session_callbacks_set_on_frame_recv_callback(cb, on_frame_recv);
    nghttp2_session_callbacks_set_on_frame_send_callback(cb, on_frame_send);
    nghttp2_session_callbacks_set_on_stream_close_callback(cb, on_stream_close);
    s->callbacks = cb;
    nghttp2_option_set_stream_reset_rate_limit(s->option, 1000, 33);
    nghttp2_option_set_max_continuations(s->option, MAX_CONTINUATIONS);
    if (uv_random(NULL, NULL, s->rng, sizeof(s->rng), 0, NULL) < 0 || (!s->rng[0] && !s->rng[1])) {
        s->rng[0] = uv_hrtime() | 1;
        s->rng[1] = (uint64_t)(uintptr_t)s ^ 0x9e3779b97f4a7c15ull;
    }
    return s;
}

int tms_grpc_server_listen(tms_grpc_server_t *s, const char *addr)
{
    return tms_listener_open(&s->lis, s->loop, addr, on_connection, "grpc_listen");
}

const char *tms_grpc_server_error(tms_grpc_server_t *s)
{
    return s->lis.error;
}

int tms_grpc_server_port(tms_grpc_server_t *s)
{
    return tms_listener_port(&s->lis);
}

void tms_grpc_server_stop(tms_grpc_server_t *s, uint64_t grace_ms, void (*on_stopped)(void *arg),
                          void *arg)
{
    if (!tms_listener_stop(&s->lis, s->loop, grace_ms, on_stopped, arg))
        return;
    for (conn_t *c = s->conns; c; c = c->next) {
        /* Watch streams end now (NOT_SERVING would be news to nobody after GOAWAY). */
        for (gstream_t *st = c->streams; st; st = st->next) {
            if (st->watching)
                finish(st, TMS_UNAVAILABLE, "server shutting down");
        }
        nghttp2_submit_goaway(c->io.h2, NGHTTP2_FLAG_NONE,
                              nghttp2_session_get_last_proc_stream_id(c->io.h2), NGHTTP2_NO_ERROR,
                              NULL, 0);
        tms_h2_io_flush(&c->io);
    }
    tms_listener_maybe_stopped(&s->lis);
}

static size_t handler_busy(tms_grpc_server_t *s)
{
    return s->h.busy ? s->h.busy(s->h.ctx) : 0;
}

size_t tms_grpc_server_busy(tms_grpc_server_t *s)
{
    if (!s)
        return 0;
    return handler_busy(s) + s->nconns + (s->lis.stopping && !s->lis.stopped ? 1 : 0);
}

void tms_grpc_server_free(tms_grpc_server_t **sp)
{
    tms_grpc_server_t *s = sp ? *sp : NULL;
    if (!s)
        return;
    *sp = NULL;
    if ((s->lis.listening || s->lis.grace_started) && (!s->lis.stopped || handler_busy(s))) {
        tms_log_error("grpc_free", "error=\"server freed before stop completed; leaking it\"");
        return;
    }
    tms_flush_later_close(&s->flusher);
    nghttp2_session_callbacks_del(s->callbacks);
    nghttp2_option_del(s->option);
    free(s->requests);
    free(s->durations);
    free(s);
}

/* ---- for the handler ---- */

const tms_grpc_route_t *tms_grpc_stream_route(const tms_grpc_stream_t *st)
{
    return st->route;
}

const char *tms_grpc_stream_metadata(const tms_grpc_stream_t *st, size_t i)
{
    return i < TMS_GRPC_MAX_METADATA ? st->meta[i] : NULL;
}

const char *tms_grpc_stream_request_id(const tms_grpc_stream_t *st)
{
    return st->request_id;
}

void tms_grpc_stream_set_request_id(tms_grpc_stream_t *st, const char *id)
{
    snprintf(st->request_id, sizeof(st->request_id), "%.32s", id);
}

const char *tms_grpc_stream_client(const tms_grpc_stream_t *st)
{
    return st->conn->client_addr;
}

bool tms_grpc_stream_stopping(const tms_grpc_stream_t *st)
{
    return st->conn->srv->lis.stopping;
}

uint64_t tms_grpc_stream_time_left_ms(const tms_grpc_stream_t *st, uint64_t cap_ms)
{
    uint64_t timeout = cap_ms, elapsed_ms = (uv_hrtime() - st->start_ns) / 1000000;
    if (st->has_timeout && st->timeout_ms < timeout)
        timeout = st->timeout_ms;
    return elapsed_ms >= timeout ? 0 : timeout - elapsed_ms;
}

void tms_grpc_stream_limit_unchecked(tms_grpc_stream_t *st, tms_status_t code, const char *message)
{
    st->small_only = true;
    st->small_code = code;
    st->small_message = message;
}

bool tms_grpc_stream_send(tms_grpc_stream_t *st, const uint8_t *msg, size_t len)
{
    return send_message(st, msg, len);
}

size_t tms_grpc_stream_queued(const tms_grpc_stream_t *st)
{
    return st->out_len - st->out_off;
}

void tms_grpc_stream_finish(tms_grpc_stream_t *st, tms_status_t code, const char *message)
{
    finish(st, code, message);
}

void tms_grpc_stream_watch(tms_grpc_stream_t *st)
{
    if (!st->finished)
        st->watching = true;
}

void tms_grpc_stream_attach(tms_grpc_stream_t *st, void *attached)
{
    st->attached = attached;
}

void tms_grpc_stream_flush(tms_grpc_stream_t *st)
{
    tms_h2_io_flush_later(&st->conn->io, &st->conn->srv->flusher);
}
