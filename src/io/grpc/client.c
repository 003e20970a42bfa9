/* The gRPC client (nghttp2 client sessions on libuv).
 *
 * A call is one unary request that may take several attempts. Each attempt asks
 * the breaker, picks the least busy connection of the pool (or opens one in an
 * empty slot), and is either queued on a connection still connecting or submitted
 * as a stream. Its outcome feeds the breaker once, and decides: done, or another
 * attempt after a back-off on the call's wake timer. Attempts never start and done
 * callbacks never run inside nghttp2 callbacks or the caller's frame: both go
 * through the call's wake timer, so no callback can re-enter a session or free
 * what a caller still holds.
 *
 * Per connection: bytes read go to nghttp2_session_mem_recv; whatever the session
 * wants to send is pulled with nghttp2_session_mem_send after each read and each
 * submit, and written with one uv_write (h2_io, shared with server.c, the server).
 *
 * "Sent" means nghttp2 serialized the HEADERS of the attempt's stream: from then on
 * the peer may have run the call, so only idempotent calls are tried again, except
 * where the peer said it did not (REFUSED_STREAM, GOAWAY below the stream id). */
#include "io/grpc/client.h"

#include <inttypes.h>
#include <nghttp2/nghttp2.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/alloc.h"
#include "core/breaker.h"
#include "core/log.h"
#include "core/metrics.h"
#include "core/status.h"
#include "io/grpc/wire.h"
#include "io/grpc/h2_io.h"

#define POOL_MAX 64

typedef struct conn conn_t;
typedef tms_grpc_client_call_t call_t;

/* The numbers behind a peer's gauges. They live as long as the process, so a
 * scrape after a client was freed (or while a new one for the same peer starts)
 * never reads freed memory. */
typedef struct peer_stats {
    struct peer_stats *next;
    char *peer;
    atomic_int breaker_state;
    atomic_int conns_up;
} peer_stats_t;

static peer_stats_t *g_stats;
static pthread_mutex_t g_stats_lock = PTHREAD_MUTEX_INITIALIZER;

typedef enum call_state {
    CALL_IDLE = 0,  /* between attempts (back-off) or not started */
    CALL_QUEUED,    /* on a connection that is still connecting */
    CALL_STREAM,    /* submitted as a stream */
    CALL_FINISHING, /* outcome known; done runs from the wake timer */
} call_state_t;

struct tms_grpc_client_call {
    call_t *prev, *next;   /* the client's calls */
    call_t *cprev, *cnext; /* the connection's calls */
    tms_grpc_client_t *c;
    conn_t *conn;
    int32_t stream_id;
    call_state_t state;
    char *path;
    uint8_t *body; /* length prefix + message */
    size_t body_len, body_off;
    uint64_t deadline_ms;
    bool idempotent;
    tms_grpc_client_done_fn done;
    void *ctx;
    int attempts;
    bool allowed; /* this attempt passed the breaker and owes it an outcome */
    bool sent;    /* this attempt's HEADERS left nghttp2 */
    /* the attempt's response */
    int http_status;
    int grpc_status; /* -1: none yet */
    char *grpc_message;
    uint8_t *in;
    size_t in_len, in_cap;
    int local_status; /* set when we reset the stream ourselves (too large) */
    /* outcome */
    int status;
    char *message;
    size_t resp_off, resp_len;
    uint64_t start_ns;
    uv_timer_t deadline, wake;
    int handles;
};

struct conn {
    tms_h2_io_t io; /* socket, connect timeout timer, session */
    conn_t *prev, *next;
    tms_grpc_client_t *c;
    int slot; /* index in c->slots, -1 once replaced (GOAWAY) or closing */
    uv_connect_t creq;
    uv_getaddrinfo_t gai;
    bool resolving, up, goaway;
    int32_t goaway_last_id;
    call_t *calls; /* queued and streaming */
    int ncalls;
};

struct tms_grpc_client {
    uv_loop_t *loop;
    tms_grpc_client_options_t opt; /* strings below are our copies */
    char *peer, *addr, *credential, *host;
    char port[8];
    bool numeric;
    struct sockaddr_storage ss;
    conn_t **slots;
    conn_t *conns; /* every connection not yet freed, in a slot or not */
    call_t *calls;
    size_t busy;
    size_t live; /* calls and connections not yet freed, + 1 for our own timer */
    uv_timer_t timer;
    tms_flush_later_t flusher; /* connections with new calls to write before the loop waits */
    tms_breaker_t breaker;
    int connect_fails;
    uint64_t reconnect_at;
    bool last_connect_ok;
    bool closing;
    void (*on_closed)(void *arg);
    void *close_arg;
    uint64_t rng[2];
    nghttp2_session_callbacks *cb;
    peer_stats_t *stats;
    tms_counter_t *by_code[17];
    tms_counter_t *retries, *to_open, *to_half_open, *to_closed, *connects, *connect_failures;
    tms_histogram_t *latency;
    char rbuf[TMS_H2_READ_CHUNK];
};

/* ---- helpers, metrics, logs ---- */

static uint64_t rng_next(tms_grpc_client_t *c)
{
    uint64_t a = c->rng[0], b = c->rng[1]; /* xorshift128+: jitter needs no more */
    c->rng[0] = b;
    a ^= a << 23;
    c->rng[1] = a ^ b ^ (a >> 17) ^ (b >> 26);
    return c->rng[1] + b;
}

static peer_stats_t *stats_for(const char *peer)
{
    peer_stats_t *s;
    pthread_mutex_lock(&g_stats_lock);
    for (s = g_stats; s; s = s->next) {
        if (strcmp(s->peer, peer) == 0)
            break;
    }
    if (!s) {
        s = tms_new(peer_stats_t);
        s->peer = tms_strdup(peer);
        s->next = g_stats;
        g_stats = s;
    }
    pthread_mutex_unlock(&g_stats_lock);
    return s;
}

static double breaker_gauge(void *arg)
{
    return (double)atomic_load(&((peer_stats_t *)arg)->breaker_state);
}

static double conns_gauge(void *arg)
{
    return (double)atomic_load(&((peer_stats_t *)arg)->conns_up);
}

static void register_metrics(tms_grpc_client_t *c)
{
    char labels[160];
    snprintf(labels, sizeof(labels), "peer=\"%s\"", c->peer);
    c->retries = tms_metrics_counter("tms_grpc_client_retries_total",
                                     "gRPC client attempts started again after a failure", labels);
    c->connects = tms_metrics_counter("tms_grpc_client_connections_total",
                                      "gRPC client connections opened", labels);
    c->connect_failures =
        tms_metrics_counter("tms_grpc_client_connect_failures_total",
                            "gRPC client connections that failed to open", labels);
    c->latency = tms_metrics_histogram("tms_grpc_client_call_duration_seconds",
                                       "gRPC client call, start to done, retries included", labels);
    tms_metrics_gauge_fn("tms_grpc_client_breaker_state",
                         "gRPC client circuit breaker: 0 closed, 1 open, 2 half-open", labels,
                         breaker_gauge, c->stats);
    tms_metrics_gauge_fn("tms_grpc_client_connections_up", "gRPC client connections up", labels,
                         conns_gauge, c->stats);
#define MOVES(to)                                                                                  \
    (snprintf(labels, sizeof(labels), "peer=\"%s\",to=\"%s\"", c->peer, to),                       \
     tms_metrics_counter("tms_grpc_client_breaker_transitions_total",                              \
                         "gRPC client circuit breaker state changes", labels))
    c->to_open = MOVES("open");
    c->to_half_open = MOVES("half_open");
    c->to_closed = MOVES("closed");
#undef MOVES
}

static void count_call(tms_grpc_client_t *c, int status, double secs)
{
    size_t i = status >= 0 && status <= 16 ? (size_t)status : TMS_UNKNOWN;
    if (!c->by_code[i]) {
        char labels[160];
        snprintf(labels, sizeof(labels), "peer=\"%s\",code=\"%s\"", c->peer,
                 tms_status_name((tms_status_t)i));
        c->by_code[i] =
            tms_metrics_counter("tms_grpc_client_calls_total", "gRPC client calls done", labels);
    }
    tms_counter_add(c->by_code[i], 1);
    tms_histogram_observe(c->latency, secs);
}

/* Logs and counts a breaker transition once, whatever caused it. */
static void breaker_moved(tms_grpc_client_t *c, tms_breaker_state_t from)
{
    tms_breaker_state_t to = c->breaker.state;
    atomic_store(&c->stats->breaker_state, (int)to);
    if (to == from)
        return;
    tms_counter_add(to == TMS_BREAKER_OPEN        ? c->to_open
                    : to == TMS_BREAKER_HALF_OPEN ? c->to_half_open
                                                  : c->to_closed,
                    1);
    if (to == TMS_BREAKER_OPEN)
        tms_log_warn("grpc_client_breaker",
                     "peer=%s from=%s to=open window=%d cooldown_ms=%" PRId64, c->peer,
                     tms_breaker_state_name(from), c->breaker.window, c->breaker.cooldown_ms);
    else
        tms_log_info("grpc_client_breaker", "peer=%s from=%s to=%s", c->peer,
                     tms_breaker_state_name(from), tms_breaker_state_name(to));
}

/* The attempt's one outcome for the breaker. */
static void breaker_record(tms_grpc_client_t *c, call_t *call, bool failed)
{
    tms_breaker_state_t before = c->breaker.state;
    if (!call->allowed)
        return;
    call->allowed = false;
    tms_breaker_record(&c->breaker, failed, (int64_t)uv_now(c->loop));
    breaker_moved(c, before);
}

/* The caller gave up on the attempt, which says nothing about the peer. Only a
 * half-open probe must still be answered, or the breaker would wait for it forever:
 * it counts as failed, so the next probe comes after another cool-down. */
static void breaker_forget(tms_grpc_client_t *c, call_t *call)
{
    if (call->allowed && c->breaker.state == TMS_BREAKER_HALF_OPEN)
        breaker_record(c, call, true);
    call->allowed = false;
}

/* ---- calls: finishing and retrying ---- */

static void maybe_closed(tms_grpc_client_t *c);
static void start_attempt(call_t *call);
static void conn_flush(conn_t *conn);

static void call_attach(conn_t *conn, call_t *call)
{
    call->conn = conn;
    call->cprev = NULL;
    call->cnext = conn->calls;
    if (conn->calls)
        conn->calls->cprev = call;
    conn->calls = call;
    conn->ncalls++;
}

static void call_detach(call_t *call)
{
    conn_t *conn = call->conn;
    if (!conn)
        return;
    if (call->state == CALL_STREAM && call->stream_id > 0)
        nghttp2_session_set_stream_user_data(conn->io.h2, call->stream_id, NULL);
    if (call->cprev)
        call->cprev->cnext = call->cnext;
    else
        conn->calls = call->cnext;
    if (call->cnext)
        call->cnext->cprev = call->cprev;
    conn->ncalls--;
    call->conn = NULL;
    call->cprev = call->cnext = NULL;
    call->stream_id = 0;
}

static void on_call_closed(uv_handle_t *h)
{
    call_t *call = h->data;
    tms_grpc_client_t *c = call->c;
    if (--call->handles > 0)
        return;
    free(call->path);
    free(call->body);
    free(call->grpc_message);
    free(call->in);
    free(call->message);
    free(call);
    c->live--;
    maybe_closed(c);
}

static void on_finish(uv_timer_t *t)
{
    call_t *call = t->data;
    tms_grpc_client_t *c = call->c;
    const uint8_t *resp = call->status == TMS_OK && call->in ? call->in + call->resp_off : NULL;
    count_call(c, call->status, (double)(uv_hrtime() - call->start_ns) / 1e9);
    if (call->prev)
        call->prev->next = call->next;
    else
        c->calls = call->next;
    if (call->next)
        call->next->prev = call->prev;
    c->busy--;
    call->done(call->ctx, call->status, call->message ? call->message : "", resp,
               resp ? call->resp_len : 0);
    uv_close((uv_handle_t *)&call->deadline, on_call_closed);
    uv_close((uv_handle_t *)&call->wake, on_call_closed);
}

/* The call's outcome is known: done runs from the wake timer, never in this frame.
 * The call must already be off its connection. */
static void call_finish(call_t *call, int status, const char *message)
{
    call->state = CALL_FINISHING;
    call->status = status;
    free(call->message);
    call->message = tms_strdup(message ? message : "");
    uv_timer_stop(&call->deadline);
    uv_timer_start(&call->wake, on_finish, 0, 0);
}

static void on_retry(uv_timer_t *t)
{
    start_attempt(t->data);
}

/* The attempt failed. unsent: the peer cannot have run it (any call may try again);
 * otherwise only an idempotent call does, and only on UNAVAILABLE. */
static void attempt_failed(call_t *call, int status, const char *message, bool unsent,
                           bool peer_failed)
{
    tms_grpc_client_t *c = call->c;
    bool may = unsent || (call->idempotent && status == TMS_UNAVAILABLE);
    breaker_record(c, call, peer_failed);
    call->state = CALL_IDLE;
    if (c->closing) {
        call_finish(call, TMS_UNAVAILABLE, "shutting down");
        return;
    }
    if (may && call->attempts < c->opt.retry_attempts) {
        uint64_t now = uv_now(c->loop);
        uint64_t delay =
            (uint64_t)tms_backoff_ms(call->attempts, (int64_t)c->opt.retry_base_ms,
                                     (int64_t)c->opt.retry_max_ms, (uint32_t)rng_next(c));
        if (!call->deadline_ms || now + delay < call->deadline_ms) {
            tms_counter_add(c->retries, 1);
            uv_timer_start(&call->wake, on_retry, delay, 0);
            return;
        }
    }
    call_finish(call, status, message);
}

/* The call ends now whatever its attempt was doing (deadline, cancel, close). */
static void call_abort(call_t *call, int status, const char *message, bool peer_failed)
{
    tms_grpc_client_t *c = call->c;
    conn_t *conn = call->conn;
    if (call->state == CALL_FINISHING)
        return;
    if (call->state == CALL_STREAM && conn) {
        nghttp2_submit_rst_stream(conn->io.h2, NGHTTP2_FLAG_NONE, call->stream_id, NGHTTP2_CANCEL);
    }
    call_detach(call);
    uv_timer_stop(&call->wake);
    if (peer_failed)
        breaker_record(c, call, true);
    else
        breaker_forget(c, call);
    call_finish(call, status, message);
    if (conn)
        conn_flush(conn);
}

static void on_deadline(uv_timer_t *t)
{
    call_t *call = t->data;
    /* A deadline met while the peer held the call counts against the peer; one met
     * while we waited for a back-off says nothing new about it. */
    call_abort(call, TMS_DEADLINE_EXCEEDED, "deadline exceeded", call->state != CALL_IDLE);
}

/* ---- the request ---- */

#define NV(n, v, vlen)                                                                             \
    {                                                                                              \
        (uint8_t *)(n), (uint8_t *)(v), sizeof(n) - 1, (vlen), NGHTTP2_NV_FLAG_NONE                \
    }

static ssize_t on_body_read(nghttp2_session *h2, int32_t id, uint8_t *buf, size_t length,
                            uint32_t *flags, nghttp2_data_source *source, void *user)
{
    call_t *call = nghttp2_session_get_stream_user_data(h2, id);
    size_t n;
    if (!call)
        return NGHTTP2_ERR_DEFERRED; /* given up: our RST_STREAM closes the stream */
    n = call->body_len - call->body_off;
    if (n > length)
        n = length;
    memcpy(buf, call->body + call->body_off, n);
    call->body_off += n;
    if (call->body_off == call->body_len)
        *flags |= NGHTTP2_DATA_FLAG_EOF;
    return (ssize_t)n;
}

/* Submit the attempt as a stream on an up connection; false if nghttp2 refused. */
static bool submit_stream(conn_t *conn, call_t *call)
{
    tms_grpc_client_t *c = conn->c;
    char timeout[16];
    nghttp2_nv h[8] = {
        NV(":method", "POST", 4),
        NV(":scheme", c->opt.tls ? "https" : "http", c->opt.tls ? 5 : 4),
        NV(":path", call->path, strlen(call->path)),
        NV(":authority", c->addr, strlen(c->addr)),
        NV("content-type", "application/grpc", 16),
        NV("te", "trailers", 8),
    };
    size_t n = 6;
    nghttp2_data_provider prd = {.read_callback = on_body_read};
    int32_t id;
    if (call->deadline_ms) {
        uint64_t now = uv_now(c->loop);
        tms_grpc_timeout_format(call->deadline_ms > now ? call->deadline_ms - now : 0, timeout);
        h[n++] = (nghttp2_nv)NV("grpc-timeout", timeout, strlen(timeout));
    }
    if (c->credential)
        h[n++] = (nghttp2_nv)NV("x-tms-service-token", c->credential, strlen(c->credential));
    call->body_off = 0;
    id = nghttp2_submit_request(conn->io.h2, NULL, h, n, &prd, call);
    if (id < 0)
        return false;
    call->stream_id = id;
    call->state = CALL_STREAM;
    return true;
}

/* ---- connections ---- */

static void conn_maybe_free(conn_t *conn)
{
    tms_grpc_client_t *c = conn->c;
    if (conn->io.handles > 0 || conn->resolving)
        return;
    nghttp2_session_del(conn->io.h2);
    if (conn->prev)
        conn->prev->next = conn->next;
    else
        c->conns = conn->next;
    if (conn->next)
        conn->next->prev = conn->prev;
    free(conn);
    c->live--;
    maybe_closed(c);
}

static void on_conn_closed(tms_h2_io_t *io)
{
    conn_maybe_free(io->owner);
}

/* Close the connection and fail the attempts on it: those the peer cannot have
 * seen may be tried again on another connection. */
static void conn_close(conn_t *conn, const char *why)
{
    tms_grpc_client_t *c = conn->c;
    char msg[192];
    if (conn->io.closing)
        return;
    conn->io.closing = true;
    if (conn->slot >= 0)
        c->slots[conn->slot] = NULL;
    conn->slot = -1;
    if (conn->up)
        atomic_fetch_sub(&c->stats->conns_up, 1);
    snprintf(msg, sizeof(msg), "peer %s: %s", c->peer, why);
    while (conn->calls) {
        call_t *call = conn->calls;
        bool unsent = !call->sent || call->state == CALL_QUEUED ||
                      (conn->goaway && call->stream_id > conn->goaway_last_id);
        call_detach(call);
        attempt_failed(call, TMS_UNAVAILABLE, msg, unsent, true);
    }
    tms_h2_io_close(&conn->io);
    if (conn->resolving)
        uv_cancel((uv_req_t *)&conn->gai); /* may be too late; on_resolved copes */
}

/* The connection could not be opened: later connections wait a back-off. */
static void conn_failed(conn_t *conn, const char *why)
{
    tms_grpc_client_t *c = conn->c;
    uint64_t now = uv_now(c->loop);
    c->connect_fails++;
    c->reconnect_at =
        now + (uint64_t)tms_backoff_ms(c->connect_fails, (int64_t)c->opt.retry_base_ms,
                                       (int64_t)c->opt.retry_max_ms, (uint32_t)rng_next(c));
    c->last_connect_ok = false;
    tms_counter_add(c->connect_failures, 1);
    /* One line per failure streak: a down peer would fill the log otherwise. */
    if (c->connect_fails == 1)
        tms_log_warn("grpc_client_connect_failed", "peer=%s addr=%s error=\"%s\"", c->peer, c->addr,
                     why);
    conn_close(conn, why);
}

static void on_io_fail(tms_h2_io_t *io, const char *why)
{
    conn_t *conn = io->owner;
    /* A TLS failure (a refused certificate, either way: with TLS 1.3 the server's
     * verdict on ours comes after our side is up) is a failed connect: logged, and
     * the next one waits a back-off. */
    if (!conn->up || (io->tls && tms_tls_error(io->tls)[0])) {
        char msg[200];
        snprintf(msg, sizeof(msg), "tls: %s", why);
        conn_failed(conn, msg);
        return;
    }
    conn_close(conn, why);
}

static void conn_up(conn_t *conn);

static void on_established(tms_h2_io_t *io)
{
    conn_up(io->owner);
}

static const tms_h2_io_ops_t conn_ops = {
    .fail = on_io_fail,
    .closed = on_conn_closed,
    .established = on_established,
};

/* Nothing is written before the connection is up: calls queue on it meanwhile. */
static void conn_flush(conn_t *conn)
{
    if (conn->up)
        tms_h2_io_flush(&conn->io);
}

/* A new call's frames go out before the loop waits, with those of every other call
 * started on the connection in this turn of the loop: one write for all (a gateway
 * answering many clients at once starts many calls to one role). */
static void conn_flush_later(conn_t *conn)
{
    if (conn->up)
        tms_h2_io_flush_later(&conn->io, &conn->c->flusher);
}

static void conn_up(conn_t *conn)
{
    tms_grpc_client_t *c = conn->c;
    nghttp2_settings_entry iv[] = {
        {NGHTTP2_SETTINGS_ENABLE_PUSH, 0},
        {NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, TMS_H2_STREAM_WINDOW},
    };
    call_t *call, *next;
    int rc;
    uv_timer_stop(&conn->io.timer);
    conn->up = true;
    atomic_fetch_add(&c->stats->conns_up, 1);
    tms_counter_add(c->connects, 1);
    if (c->connect_fails > 0)
        tms_log_info("grpc_client_connected", "peer=%s addr=%s after_failures=%d", c->peer, c->addr,
                     c->connect_fails);
    c->connect_fails = 0;
    c->reconnect_at = 0;
    c->last_connect_ok = true;
    rc = tms_h2_io_start(&conn->io, iv, sizeof(iv) / sizeof(iv[0]));
    if (rc < 0) {
        conn_close(conn, uv_strerror(rc));
        return;
    }
    for (call = conn->calls; call; call = next) {
        next = call->cnext;
        if (call->state == CALL_QUEUED && !submit_stream(conn, call)) {
            call_detach(call);
            attempt_failed(call, TMS_UNAVAILABLE, "no stream available", true, false);
        }
    }
    conn_flush(conn);
}

static void on_connect(uv_connect_t *req, int status)
{
    conn_t *conn = req->data;
    if (conn->io.closing)
        return;
    if (status < 0) {
        char why[128];
        snprintf(why, sizeof(why), "connect: %s", uv_strerror(status));
        conn_failed(conn, why);
        return;
    }
    if (conn->c->opt.tls) { /* up once the handshake is done (on_established) */
        int rc;
        conn->io.tls = tms_tls_new(conn->c->opt.tls, conn->c->host);
        if ((rc = tms_h2_io_handshake(&conn->io)) < 0) {
            char why[128];
            snprintf(why, sizeof(why), "tls: %s", uv_strerror(rc));
            conn_failed(conn, why);
        }
        return;
    }
    conn_up(conn);
}

static void conn_connect(conn_t *conn, const struct sockaddr *sa)
{
    int rc;
    conn->creq.data = conn;
    rc = uv_tcp_connect(&conn->creq, &conn->io.tcp, sa, on_connect);
    if (rc < 0) {
        char why[128];
        snprintf(why, sizeof(why), "connect: %s", uv_strerror(rc));
        conn_failed(conn, why);
    }
}

static void on_resolved(uv_getaddrinfo_t *req, int status, struct addrinfo *res)
{
    conn_t *conn = req->data;
    conn->resolving = false;
    if (conn->io.closing) {
        if (res)
            uv_freeaddrinfo(res);
        conn_maybe_free(conn);
        return;
    }
    if (status < 0 || !res) {
        char why[160];
        snprintf(why, sizeof(why), "resolve %s: %s", conn->c->host, uv_strerror(status));
        if (res)
            uv_freeaddrinfo(res);
        conn_failed(conn, why);
        return;
    }
    conn_connect(conn, res->ai_addr);
    uv_freeaddrinfo(res);
}

static void on_connect_timeout(uv_timer_t *t)
{
    conn_failed(((tms_h2_io_t *)t->data)->owner, "connect timeout");
}

/* Open a connection in slot; it takes calls at once and sends them when up. */
static conn_t *conn_new(tms_grpc_client_t *c, int slot)
{
    conn_t *conn = tms_new(conn_t);
    conn->c = c;
    conn->slot = slot;
    c->slots[slot] = conn;
    tms_h2_io_init(&conn->io, c->loop, &conn_ops, conn, c->rbuf, sizeof(c->rbuf));
    if (nghttp2_session_client_new(&conn->io.h2, c->cb, conn) != 0)
        tms_oom(__FILE__, __LINE__);
    conn->next = c->conns;
    if (c->conns)
        c->conns->prev = conn;
    c->conns = conn;
    c->live++;
    uv_timer_start(&conn->io.timer, on_connect_timeout, (uint64_t)c->opt.connect_timeout_ms, 0);
    if (c->numeric) {
        conn_connect(conn, (const struct sockaddr *)&c->ss);
    } else {
        struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM};
        int rc;
        conn->gai.data = conn;
        /* Resolved on the thread pool: never a blocking lookup on the loop. */
        rc = uv_getaddrinfo(c->loop, &conn->gai, on_resolved, c->host, c->port, &hints);
        if (rc < 0) {
            char why[160];
            snprintf(why, sizeof(why), "resolve %s: %s", c->host, uv_strerror(rc));
            conn_failed(conn, why);
        } else {
            conn->resolving = true;
        }
    }
    return conn;
}

/* The least busy usable connection, or -(slot + 1) of an empty slot that should
 * get a new one (an empty slot counts as idle, so load opens the whole pool). */
static conn_t *pick_conn(tms_grpc_client_t *c, int *empty)
{
    conn_t *best = NULL;
    *empty = -1;
    for (int i = 0; i < c->opt.pool_size; i++) {
        conn_t *conn = c->slots[i];
        if (!conn) {
            if (*empty < 0)
                *empty = i;
            continue;
        }
        if (!best || conn->ncalls < best->ncalls)
            best = conn;
    }
    if (best && (best->ncalls == 0 || *empty < 0))
        *empty = -1;
    return *empty >= 0 ? NULL : best;
}

static void start_attempt(call_t *call)
{
    tms_grpc_client_t *c = call->c;
    uint64_t now = uv_now(c->loop);
    tms_breaker_state_t before = c->breaker.state;
    conn_t *conn;
    int empty;
    char msg[160];
    if (c->closing) {
        call_finish(call, TMS_UNAVAILABLE, "shutting down");
        return;
    }
    if (call->deadline_ms && now >= call->deadline_ms) {
        call_finish(call, TMS_DEADLINE_EXCEEDED, "deadline exceeded");
        return;
    }
    conn = pick_conn(c, &empty);
    if (!conn && now < c->reconnect_at) {
        /* Reconnect back-off: wait without spending an attempt (the deadline timer
         * still ends the call on time). */
        uv_timer_start(&call->wake, on_retry, c->reconnect_at - now, 0);
        return;
    }
    if (!tms_breaker_allow(&c->breaker, (int64_t)now)) {
        breaker_moved(c, before);
        snprintf(msg, sizeof(msg), "peer %s unavailable: circuit open", c->peer);
        call_finish(call, TMS_UNAVAILABLE, msg);
        return;
    }
    breaker_moved(c, before);
    call->allowed = true;
    call->attempts++;
    call->sent = false;
    call->http_status = 0;
    call->grpc_status = -1;
    call->local_status = 0;
    call->in_len = 0;
    free(call->grpc_message);
    call->grpc_message = NULL;
    if (!conn)
        conn = conn_new(c, empty);
    if (conn->io.closing) { /* failed at once (bad address family, no fds) */
        attempt_failed(call, TMS_UNAVAILABLE, "connect failed", true, true);
        return;
    }
    call->state = CALL_QUEUED;
    call_attach(conn, call);
    if (!conn->up)
        return;
    if (!submit_stream(conn, call)) {
        call_detach(call);
        attempt_failed(call, TMS_UNAVAILABLE, "no stream available", true, false);
        return;
    }
    conn_flush_later(conn);
}

/* ---- nghttp2 callbacks ---- */

static call_t *stream_call(conn_t *conn, int32_t id)
{
    call_t *call = nghttp2_session_get_stream_user_data(conn->io.h2, id);
    if (call)
        return call;
    /* Before its stream opens (HEADERS not yet sent) nghttp2 knows no user data. */
    for (call = conn->calls; call; call = call->cnext) {
        if (call->state == CALL_STREAM && call->stream_id == id)
            return call;
    }
    return NULL;
}

#define IS(lit) (namelen == sizeof(lit) - 1 && memcmp(name, lit, namelen) == 0)

static int on_header(nghttp2_session *h2, const nghttp2_frame *frame, const uint8_t *name,
                     size_t namelen, const uint8_t *value, size_t valuelen, uint8_t flags,
                     void *user)
{
    call_t *call;
    char tmp[16];
    if (frame->hd.type != NGHTTP2_HEADERS)
        return 0;
    call = nghttp2_session_get_stream_user_data(h2, frame->hd.stream_id);
    if (!call)
        return 0;
    if (IS(":status") || IS("grpc-status")) {
        int v = 0;
        if (valuelen == 0 || valuelen >= sizeof(tmp))
            return 0;
        memcpy(tmp, value, valuelen);
        tmp[valuelen] = '\0';
        for (size_t i = 0; i < valuelen; i++) {
            if (tmp[i] < '0' || tmp[i] > '9')
                return 0;
            v = v * 10 + (tmp[i] - '0');
            if (v > 1000)
                return 0;
        }
        if (name[0] == ':')
            call->http_status = v;
        else
            call->grpc_status = v;
    } else if (IS("grpc-message")) {
        free(call->grpc_message);
        call->grpc_message = tms_grpc_percent_decode((const char *)value, valuelen);
    }
    return 0;
}

#undef IS

static int on_data_chunk(nghttp2_session *h2, uint8_t flags, int32_t id, const uint8_t *data,
                         size_t len, void *user)
{
    conn_t *conn = user;
    tms_grpc_client_t *c = conn->c;
    call_t *call = nghttp2_session_get_stream_user_data(h2, id);
    size_t limit = c->opt.max_message_bytes + TMS_GRPC_FRAME_HEADER;
    tms_grpc_frame_t f;
    if (!call || call->local_status)
        return 0;
    /* A unary answer is one message: more than one maximal message is too much,
     * and the prefix tells early, before the body comes. */
    if (call->in_len + len > limit) {
        call->local_status = TMS_RESOURCE_EXHAUSTED;
    } else {
        if (call->in_len + len > call->in_cap) {
            size_t cap = call->in_cap ? call->in_cap : 256;
            while (cap < call->in_len + len)
                cap *= 2;
            call->in = tms_realloc(call->in, cap);
            call->in_cap = cap;
        }
        memcpy(call->in + call->in_len, data, len);
        call->in_len += len;
        if (tms_grpc_frame_parse(call->in, call->in_len, c->opt.max_message_bytes, &f) ==
            -TMS_ERANGE)
            call->local_status = TMS_RESOURCE_EXHAUSTED;
    }
    if (call->local_status)
        nghttp2_submit_rst_stream(h2, NGHTTP2_FLAG_NONE, id, NGHTTP2_CANCEL);
    return 0;
}

static int on_frame_recv(nghttp2_session *h2, const nghttp2_frame *frame, void *user)
{
    conn_t *conn = user;
    tms_grpc_client_t *c = conn->c;
    if (frame->hd.type != NGHTTP2_GOAWAY)
        return 0;
    /* Graceful restart (or an error): no new stream here; a new connection takes
     * this slot, and nghttp2 closes the streams above last_stream_id with
     * REFUSED_STREAM, which on_stream_close retries. */
    if (!conn->goaway)
        tms_log_info("grpc_client_goaway", "peer=%s last_stream_id=%d error_code=%u", c->peer,
                     frame->goaway.last_stream_id, frame->goaway.error_code);
    conn->goaway = true;
    conn->goaway_last_id = frame->goaway.last_stream_id;
    if (conn->slot >= 0)
        c->slots[conn->slot] = NULL;
    conn->slot = -1;
    return 0;
}

static int on_frame_send(nghttp2_session *h2, const nghttp2_frame *frame, void *user)
{
    call_t *call;
    if (frame->hd.type != NGHTTP2_HEADERS || frame->headers.cat != NGHTTP2_HCAT_REQUEST)
        return 0;
    call = nghttp2_session_get_stream_user_data(h2, frame->hd.stream_id);
    if (call)
        call->sent = true;
    return 0;
}

static int on_frame_not_send(nghttp2_session *h2, const nghttp2_frame *frame, int lib_error,
                             void *user)
{
    conn_t *conn = user;
    call_t *call;
    if (frame->hd.type != NGHTTP2_HEADERS)
        return 0;
    /* Typically a request queued behind MAX_CONCURRENT_STREAMS when a GOAWAY came:
     * it never left, any call may try again. */
    call = stream_call(conn, frame->hd.stream_id);
    if (!call)
        return 0;
    call_detach(call);
    attempt_failed(call, TMS_UNAVAILABLE, "stream not started", true, false);
    return 0;
}

/* The gRPC spec's mapping of an HTTP status without grpc-status. */
static int http_to_grpc(int http)
{
    switch (http) {
    case 400:
        return TMS_INTERNAL;
    case 401:
        return TMS_UNAUTHENTICATED;
    case 403:
        return TMS_PERMISSION_DENIED;
    case 404:
        return TMS_UNIMPLEMENTED;
    case 429:
    case 502:
    case 503:
    case 504:
        return TMS_UNAVAILABLE;
    default:
        return TMS_UNKNOWN;
    }
}

/* The gRPC spec's mapping of a RST_STREAM error code before any status. */
static int rst_to_grpc(uint32_t code)
{
    switch (code) {
    case NGHTTP2_REFUSED_STREAM:
        return TMS_UNAVAILABLE;
    case NGHTTP2_CANCEL:
        return TMS_CANCELLED;
    case NGHTTP2_ENHANCE_YOUR_CALM:
        return TMS_RESOURCE_EXHAUSTED;
    case NGHTTP2_INADEQUATE_SECURITY:
        return TMS_PERMISSION_DENIED;
    default:
        return TMS_INTERNAL;
    }
}

/* The stream ended: turn what arrived into the attempt's outcome. */
static int on_stream_close(nghttp2_session *h2, int32_t id, uint32_t error_code, void *user)
{
    conn_t *conn = user;
    tms_grpc_client_t *c = conn->c;
    call_t *call = stream_call(conn, id);
    char msg[192];
    int status;
    if (!call)
        return 0;
    call_detach(call);
    if (call->local_status) {
        snprintf(msg, sizeof(msg), "response larger than %zu bytes", c->opt.max_message_bytes);
        breaker_record(c, call, false);
        call_finish(call, call->local_status, msg);
        return 0;
    }
    if (call->grpc_status < 0 &&
        (error_code == NGHTTP2_REFUSED_STREAM || (conn->goaway && id > conn->goaway_last_id))) {
        snprintf(msg, sizeof(msg), "peer %s refused the stream", c->peer);
        attempt_failed(call, TMS_UNAVAILABLE, msg, true, false);
        return 0;
    }
    if (call->grpc_status >= 0) {
        status = call->grpc_status > 16 ? TMS_UNKNOWN : call->grpc_status;
        snprintf(msg, sizeof(msg), "%s", call->grpc_message ? call->grpc_message : "");
        if (status == TMS_OK) {
            tms_grpc_frame_t f;
            int rc = tms_grpc_frame_parse(call->in, call->in_len, c->opt.max_message_bytes, &f);
            if (rc != 1 || f.compressed || f.consumed != call->in_len) {
                status = TMS_INTERNAL;
                snprintf(msg, sizeof(msg), "%s",
                         rc != 1 ? "no response message" : "malformed response message");
            } else {
                call->resp_off = TMS_GRPC_FRAME_HEADER;
                call->resp_len = f.len;
            }
        }
    } else if (call->http_status && call->http_status != 200) {
        status = http_to_grpc(call->http_status);
        snprintf(msg, sizeof(msg), "peer %s answered HTTP %d", c->peer, call->http_status);
    } else if (error_code != NGHTTP2_NO_ERROR) {
        status = rst_to_grpc(error_code);
        snprintf(msg, sizeof(msg), "peer %s reset the stream: %s", c->peer,
                 nghttp2_http2_strerror(error_code));
    } else {
        status = TMS_INTERNAL;
        snprintf(msg, sizeof(msg), "peer %s sent no grpc-status", c->peer);
    }
    if (status == TMS_UNAVAILABLE) {
        attempt_failed(call, status, msg, false, true);
        return 0;
    }
    breaker_record(c, call, status == TMS_DEADLINE_EXCEEDED);
    call_finish(call, status, msg);
    return 0;
}

/* ---- the client ---- */

static int parse_addr(tms_grpc_client_t *c, const char *addr)
{
    const char *port_s, *colon;
    char *end;
    long port;
    size_t hl;
    if (addr[0] == '[') {
        const char *rb = strchr(addr, ']');
        if (!rb || rb[1] != ':')
            return -TMS_EINVAL;
        hl = (size_t)(rb - addr - 1);
        c->host = tms_strndup(addr + 1, hl);
        port_s = rb + 2;
    } else {
        colon = strrchr(addr, ':');
        if (!colon || colon == addr || memchr(addr, ':', (size_t)(colon - addr)))
            return -TMS_EINVAL;
        c->host = tms_strndup(addr, (size_t)(colon - addr));
        port_s = colon + 1;
    }
    port = strtol(port_s, &end, 10);
    if (end == port_s || *end || port < 1 || port > 65535)
        return -TMS_EINVAL;
    snprintf(c->port, sizeof(c->port), "%ld", port);
    if (addr[0] == '[') {
        c->numeric = true;
        return uv_ip6_addr(c->host, (int)port, (struct sockaddr_in6 *)&c->ss) ? -TMS_EINVAL : 0;
    }
    if (uv_ip4_addr(c->host, (int)port, (struct sockaddr_in *)&c->ss) == 0) {
        c->numeric = true;
        return 0;
    }
    for (const char *p = c->host; *p; p++) {
        if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') ||
              *p == '.' || *p == '-' || *p == '_'))
            return -TMS_EINVAL;
    }
    return c->host[0] ? 0 : -TMS_EINVAL;
}

static void client_free(tms_grpc_client_t *c)
{
    nghttp2_session_callbacks_del(c->cb);
    free(c->slots);
    free(c->peer);
    free(c->addr);
    free(c->credential);
    free(c->host);
    free(c);
}

tms_grpc_client_t *tms_grpc_client_new(uv_loop_t *loop, const tms_grpc_client_options_t *opt,
                                       char *err, size_t errlen)
{
    tms_grpc_client_t *c = tms_new(tms_grpc_client_t);
    nghttp2_session_callbacks *cb;
    if (!opt->peer || !opt->peer[0] || !opt->addr) {
        snprintf(err, errlen, "peer and addr are required");
        goto fail;
    }
    c->loop = loop;
    c->opt = *opt;
    c->peer = tms_strdup(opt->peer);
    c->addr = tms_strdup(opt->addr);
    c->credential = opt->credential ? tms_strdup(opt->credential) : NULL;
    c->opt.peer = c->opt.addr = c->opt.credential = NULL;
    if (parse_addr(c, opt->addr) < 0) {
        snprintf(err, errlen, "peer %s: bad address \"%s\" (host:port or [v6]:port)", opt->peer,
                 opt->addr);
        goto fail;
    }
    if (opt->pool_size < 0 || opt->pool_size > POOL_MAX || opt->connect_timeout_ms < 0 ||
        opt->retry_attempts < 0 || opt->breaker_window < 0 || opt->breaker_threshold_pct < 0 ||
        opt->breaker_threshold_pct > 100 || opt->breaker_cooldown_ms < 0) {
        snprintf(err, errlen, "peer %s: option out of range", opt->peer);
        goto fail;
    }
    if (!c->opt.pool_size)
        c->opt.pool_size = 2;
    if (!c->opt.connect_timeout_ms)
        c->opt.connect_timeout_ms = 2000;
    if (!c->opt.retry_attempts)
        c->opt.retry_attempts = 3;
    if (!c->opt.retry_base_ms)
        c->opt.retry_base_ms = 25;
    if (!c->opt.retry_max_ms)
        c->opt.retry_max_ms = 1000;
    if (!c->opt.breaker_window)
        c->opt.breaker_window = 10;
    if (!c->opt.breaker_threshold_pct)
        c->opt.breaker_threshold_pct = 50;
    if (!c->opt.breaker_cooldown_ms)
        c->opt.breaker_cooldown_ms = 2000;
    if (!c->opt.max_message_bytes)
        c->opt.max_message_bytes = 4 * 1024 * 1024;
    c->slots = tms_calloc((size_t)c->opt.pool_size, sizeof(*c->slots));
    tms_breaker_init(&c->breaker, c->opt.breaker_window, c->opt.breaker_threshold_pct,
                     c->opt.breaker_cooldown_ms);
    /* Optimistic until a connection fails: connections open lazily, and /readyz
     * must not wait for the first call. */
    c->last_connect_ok = true;
    if (nghttp2_session_callbacks_new(&cb) != 0)
        tms_oom(__FILE__, __LINE__);
    nghttp2_session_callbacks_set_on_header_callback(cb, on_header);
    nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cb, on_data_chunk);
    nghttp2_session_callbacks_set_on_frame_recv_callback(cb, on_frame_recv);
    nghttp2_session_callbacks_set_on_frame_send_callback(cb, on_frame_send);
    nghttp2_session_callbacks_set_on_frame_not_send_callback(cb, on_frame_not_send);
    nghttp2_session_callbacks_set_on_stream_close_callback(cb, on_stream_close);
    c->cb = cb;
    if (uv_random(NULL, NULL, c->rng, sizeof(c->rng), 0, NULL) < 0 || (!c->rng[0] && !c->rng[1])) {
        c->rng[0] = uv_hrtime() | 1;
        c->rng[1] = (uint64_t)(uintptr_t)c ^ 0x9e3779b97f4a7c15ull;
    }
    c->stats = stats_for(c->peer);
    atomic_store(&c->stats->breaker_state, TMS_BREAKER_CLOSED);
    register_metrics(c);
    uv_timer_init(loop, &c->timer);
    c->timer.data = c;
    tms_h2_flusher_init(&c->flusher, loop);
    c->live = 1;
    return c;

fail:
    free(c->peer);
    free(c->addr);
    free(c->credential);
    free(c->host);
    free(c);
    return NULL;
}

tms_grpc_client_call_t *tms_grpc_client_call(tms_grpc_client_t *c, const char *path,
                                             const uint8_t *req, size_t req_len,
                                             uint64_t deadline_ms, bool idempotent,
                                             tms_grpc_client_done_fn done, void *ctx)
{
    call_t *call = tms_new(call_t);
    uint64_t now = uv_now(c->loop);
    call->c = c;
    call->path = tms_strdup(path && path[0] == '/' ? path : "/");
    call->body_len = TMS_GRPC_FRAME_HEADER + req_len;
    call->body = tms_malloc(call->body_len);
    tms_grpc_frame_header(call->body, (uint32_t)req_len);
    if (req_len)
        memcpy(call->body + TMS_GRPC_FRAME_HEADER, req, req_len);
    call->deadline_ms = deadline_ms;
    call->idempotent = idempotent;
    call->done = done;
    call->ctx = ctx;
    call->grpc_status = -1;
    call->start_ns = uv_hrtime();
    uv_timer_init(c->loop, &call->deadline);
    uv_timer_init(c->loop, &call->wake);
    call->deadline.data = call->wake.data = call;
    call->handles = 2;
    call->next = c->calls;
    if (c->calls)
        c->calls->prev = call;
    c->calls = call;
    c->busy++;
    c->live++;
    if (!path || path[0] != '/' || req_len > UINT32_MAX) {
        call_finish(call, TMS_INTERNAL, "bad path or request too large");
        return call;
    }
    if (deadline_ms)
        uv_timer_start(&call->deadline, on_deadline, deadline_ms > now ? deadline_ms - now : 0, 0);
    start_attempt(call);
    return call;
}

void tms_grpc_client_cancel(tms_grpc_client_call_t *call)
{
    call_abort(call, TMS_CANCELLED, "cancelled", false);
}

bool tms_grpc_client_healthy(const tms_grpc_client_t *c)
{
    if (c->closing || c->breaker.state == TMS_BREAKER_OPEN)
        return false;
    for (int i = 0; i < c->opt.pool_size; i++) {
        if (c->slots[i] && c->slots[i]->up)
            return true;
    }
    return c->last_connect_ok;
}

size_t tms_grpc_client_busy(const tms_grpc_client_t *c)
{
    return c->busy;
}

static void on_client_timer_closed(uv_handle_t *h)
{
    tms_grpc_client_t *c = h->data;
    c->live--;
    maybe_closed(c);
}

static void maybe_closed(tms_grpc_client_t *c)
{
    void (*cb)(void *arg) = c->on_closed;
    void *arg = c->close_arg;
    if (!c->closing || c->live > 0)
        return;
    client_free(c);
    if (cb)
        cb(arg);
}

void tms_grpc_client_close(tms_grpc_client_t **cp, void (*on_closed)(void *arg), void *arg)
{
    tms_grpc_client_t *c = cp ? *cp : NULL;
    if (!c || c->closing)
        return;
    *cp = NULL;
    c->closing = true;
    c->on_closed = on_closed;
    c->close_arg = arg;
    for (call_t *call = c->calls; call; call = call->next)
        call_abort(call, TMS_UNAVAILABLE, "shutting down", false);
    for (conn_t *conn = c->conns; conn; conn = conn->next)
        conn_close(conn, "shutting down");
    tms_flush_later_close(&c->flusher);
    uv_close((uv_handle_t *)&c->timer, on_client_timer_closed);
}
