/* Strict HTTP/1.1 server: libuv for I/O, llhttp (no lenient flags) for parsing.
 *
 * Per connection the parser is fed only while no request is with the handler: when
 * on_message_complete fires the parser pauses, unread bytes stay in conn->in, and
 * parsing resumes after the response has been written. Responses are thus in order
 * and at most one request per connection is in flight. */
#include "io/http/http1.h"

#include <llhttp.h>
#include <netinet/in.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>

#include "core/alloc.h"
#include "core/flush_later.h"
#include "core/jsonw.h"
#include "core/log.h"
#include "core/metrics.h"
#include "core/text.h"
#include "io/http/cors.h"
#include "io/http/forwarded.h"
#include "io/http/listen.h"

#define READ_CHUNK 65536
#define LINGER_MS 2000
/* Bytes buffered while a request is with the handler before reading pauses. */
#define PENDING_MAX (256 * 1024)
/* Responses to pipelined requests are gathered per connection and sent in one write
 * per loop iteration, up to this many bytes (then written at once). */
#define CORK_MAX (64 * 1024)
#define DETACHED_STATUS 499

typedef enum phase {
    PH_HANDSHAKE, /* TLS handshake: handshake timer */
    PH_IDLE,      /* between requests: idle timer */
    PH_HEAD,      /* request line and headers arriving: head timer */
    PH_BODY,      /* body arriving: inactivity timer, capped by the body deadline */
    PH_HANDLER,   /* request with the handler: no timer, parser paused */
    PH_WRITING,   /* response queued, waiting for its write callback: send timer */
    PH_LINGER,    /* final response written, shutdown sent, discarding input */
    PH_STREAM,    /* a streamed response (tms_http_stream_begin): send timer while
                   * bytes wait, input discarded, ends with the connection */
} phase_t;

typedef struct conn conn_t;

typedef struct hoff {
    size_t name, value;
} hoff_t;

typedef struct hreq {
    tms_http_request_t pub; /* first: the handler sees &pub */
    conn_t *conn;           /* NULL once the connection is gone */
    char *buf;              /* request line and header strings, NUL-separated */
    size_t len, cap;
    size_t url_off; /* SIZE_MAX until the URL started */
    bool url_done;
    hoff_t *hoff;
    size_t nh, hcap;
    bool in_field, in_value;
    char *body;
    size_t body_len, body_cap;
    char method[24];
    bool is_head, keep_alive, dispatched;
    tms_http_header_t *hdrs; /* pub.headers' storage, hdr_cap entries */
    size_t hdr_cap;
    struct hreq *next_spare; /* in the server's spare list */
} hreq_t;

struct conn {
    uv_tcp_t tcp;
    uv_timer_t timer;
    uv_shutdown_t shutdown;
    tms_http_server_t *srv;
    conn_t *prev, *next;
    llhttp_t parser;
    phase_t phase;
    int handles; /* open uv handles; freed when 0 */
    bool closing, reading, peer_eof, ready, in_trailers;
    hreq_t *req;
    size_t head_bytes;
    int err_status; /* set by a callback that rejects: 413, 431 or 400 */
    const char *err_reason;
    char *in;       /* unparsed input */
    char prev_byte; /* last byte but SP/HT parsed before in[0] (obs-fold check) */
    size_t in_len, in_cap;
    uint64_t body_deadline; /* uv_now() by which the body must be complete */
    char *out;              /* corked responses (pipelined), at most CORK_MAX bytes */
    size_t out_len, out_cap;
    tms_flush_item_t cork;  /* on the server's uncork list while out_len > 0 */
    unsigned writes_queued; /* uv_write requests not yet called back */
    bool in_process;        /* process() is on the stack */
    uint64_t due;           /* uv_now() at which due_cb runs; 0: no deadline */
    uint64_t armed;         /* when the uv timer fires (it may fire before due) */
    uv_timer_cb due_cb;
    tms_listen_slot_t *slot;   /* this connection's place in its address's count */
    tms_tls_t *tls;            /* NULL: cleartext */
    tms_http_stream_t *stream; /* PH_STREAM: told when the connection is gone */
    char client_addr[64];
};

struct tms_http_stream {
    conn_t *conn; /* NULL once the connection is gone or the stream ended */
    void (*closed)(void *arg);
    void *arg;
    size_t queued; /* bytes handed to uv_write and not yet written */
};

typedef struct metric_entry {
    struct metric_entry *next;
    char *route, *method;
    int status;
    tms_counter_t *counter;
    tms_histogram_t *hist;
} metric_entry_t;

struct tms_http_server {
    uv_loop_t *loop;
    tms_http_limits_t limits;
    tms_http_handler_fn handler;
    void *ctx;
    llhttp_settings_t settings;
    tms_listener_t lis;
    conn_t *conns;
    size_t nconns, inflight;
    uint64_t rng[2];
    char rbuf[READ_CHUNK]; /* shared: every read is consumed in its read callback */
    time_t date_sec;
    char date[40];
    metric_entry_t *metrics;
    atomic_long open_connections; /* nconns, readable from the thread that renders metrics */
    char gauge_labels[48];
    tms_counter_t *timeouts[4]; /* head, body, send, handshake */
    hreq_t *spare; /* finished requests kept with their buffers (at most MAX_SPARE_REQS) */
    tms_flush_later_t uncork; /* connections with corked output, written before the loop waits */
    size_t nspare;
};

enum { TO_HEAD, TO_BODY, TO_SEND, TO_HANDSHAKE };

static double connections_gauge(void *arg)
{
    return (double)atomic_load(&((tms_http_server_t *)arg)->open_connections);
}

static double zero_gauge(void *arg)
{
    (void)arg;
    return 0;
}

void tms_http_limits_default(tms_http_limits_t *l)
{
    l->max_head_bytes = 16384;
    l->max_body_bytes = 1024 * 1024;
    l->head_timeout_ms = 10000;
    l->idle_timeout_ms = 60000;
    l->body_timeout_ms = 30000;
    l->send_timeout_ms = 30000;
    l->max_connections = 10000;
    l->max_connections_per_address = 0;
    l->ipv6_prefix = 64;
    l->listener = "http";
    l->tls = NULL;
    l->tls_handshake_timeout_ms = 10000;
    l->trusted_proxies = NULL;
    l->cors_origins = NULL;
}

const char *tms_http_header_get(const tms_http_request_t *req, const char *name)
{
    for (size_t i = 0; i < req->nheaders; i++) {
        if (strcasecmp(req->headers[i].name, name) == 0)
            return req->headers[i].value;
    }
    return NULL;
}

/* ---- small helpers ---- */

static void buf_append(char **buf, size_t *len, size_t *cap, const char *p, size_t n)
{
    if (*len + n + 1 > *cap) {
        size_t c = *cap ? *cap : 256;
        while (c < *len + n + 1)
            c *= 2;
        *buf = tms_realloc(*buf, c);
        *cap = c;
    }
    memcpy(*buf + *len, p, n);
    *len += n;
    (*buf)[*len] = '\0';
}

static uint64_t rng_next(tms_http_server_t *s)
{
    /* xorshift128+: request ids need uniqueness, not secrecy. */
    uint64_t a = s->rng[0], b = s->rng[1];
    s->rng[0] = b;
    a ^= a << 23;
    s->rng[1] = a ^ b ^ (a >> 17) ^ (b >> 26);
    return s->rng[1] + b;
}

static bool request_id_sane(const char *v)
{
    size_t n = 0;
    for (; v[n]; n++) {
        char c = v[n];
        if (!((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
              c == '.' || c == '_' || c == ':' || c == '-'))
            return false;
    }
    return n >= 1 && n <= 64;
}

static bool is_tchar(unsigned char c)
{
    if ((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9'))
        return true;
    return c && strchr("!#$%&'*+-.^_`|~", c) != NULL;
}

static const char *reason_phrase(int status)
{
    switch (status) {
    case 100:
        return "Continue";
    case 200:
        return "OK";
    case 201:
        return "Created";
    case 202:
        return "Accepted";
    case 204:
        return "No Content";
    case 301:
        return "Moved Permanently";
    case 302:
        return "Found";
    case 304:
        return "Not Modified";
    case 400:
        return "Bad Request";
    case 401:
        return "Unauthorized";
    case 403:
        return "Forbidden";
    case 404:
        return "Not Found";
    case 405:
        return "Method Not Allowed";
    case 408:
        return "Request Timeout";
    case 409:
        return "Conflict";
    case 412:
        return "Precondition Failed";
    case 413:
        return "Content Too Large";
    case 415:
        return "Unsupported Media Type";
    case 429:
        return "Too Many Requests";
    case 431:
        return "Request Header Fields Too Large";
    case 500:
        return "Internal Server Error";
    case 501:
        return "Not Implemented";
    case 503:
        return "Service Unavailable";
    case 504:
        return "Gateway Timeout";
    default:
        return "Unknown";
    }
}

static const char *http_date(tms_http_server_t *s)
{
    time_t now = time(NULL);
    if (now != s->date_sec) {
        struct tm tm;
        gmtime_r(&now, &tm);
        strftime(s->date, sizeof s->date, "%a, %d %b %Y %H:%M:%S GMT", &tm);
        s->date_sec = now;
    }
    return s->date;
}

static void json_escape(char **buf, size_t *len, size_t *cap, const char *s)
{
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        char tmp[8];
        if (c == '"' || c == '\\') {
            tmp[0] = '\\';
            tmp[1] = (char)c;
            buf_append(buf, len, cap, tmp, 2);
        } else if (c < 0x20) {
            snprintf(tmp, sizeof tmp, "\\u%04x", c);
            buf_append(buf, len, cap, tmp, 6);
        } else {
            buf_append(buf, len, cap, (const char *)&c, 1);
        }
    }
}

static char *error_body(tms_status_t code, const char *message, size_t *out_len)
{
    char *b = NULL;
    size_t len = 0, cap = 0;
    const char *name = tms_status_name(code);
    buf_append(&b, &len, &cap, "{\"error\":{\"code\":\"", 18);
    buf_append(&b, &len, &cap, name, strlen(name));
    buf_append(&b, &len, &cap, "\",\"message\":\"", 13);
    json_escape(&b, &len, &cap, message ? message : "");
    buf_append(&b, &len, &cap, "\"}}", 3);
    *out_len = len;
    return b;
}

/* ---- metrics and logs ---- */

static void observe(tms_http_server_t *s, const char *route, const char *method, int status,
                    double seconds)
{
    metric_entry_t *e = NULL;
    char labels[256];
    if (s) {
        /* O(distinct route x method x status); a few dozen in practice. */
        for (e = s->metrics; e; e = e->next) {
            if (e->status == status && strcmp(e->route, route) == 0 &&
                strcmp(e->method, method) == 0)
                break;
        }
    }
    if (!e) {
        tms_counter_t *c;
        tms_histogram_t *h;
        snprintf(labels, sizeof labels, "route=\"%s\",method=\"%s\",status=\"%d\"", route, method,
                 status);
        c = tms_metrics_counter("tms_http_requests_total", "HTTP requests completed", labels);
        snprintf(labels, sizeof labels, "route=\"%s\"", route);
        h = tms_metrics_histogram("tms_http_request_duration_seconds",
                                  "HTTP request duration from head complete to response", labels);
        if (!s) {
            tms_counter_add(c, 1);
            tms_histogram_observe(h, seconds);
            return;
        }
        e = tms_new(metric_entry_t);
        e->route = tms_strdup(route);
        e->method = tms_strdup(method);
        e->status = status;
        e->counter = c;
        e->hist = h;
        e->next = s->metrics;
        s->metrics = e;
    }
    tms_counter_add(e->counter, 1);
    tms_histogram_observe(e->hist, seconds);
}

/* The access line, built without printf (core/log.h): one per request. */
static void log_request(tms_http_server_t *s, const tms_http_request_t *r, int status)
{
    tms_log_line_t l;
    uint64_t now = uv_hrtime();
    uint64_t ns = r->start_ns && now >= r->start_ns ? now - r->start_ns : 0;
    const char *path = r->path ? r->path : "-";
    const char *route = r->route ? r->route : "unmatched";
    const char *method = r->method && r->method[0] ? r->method : "-";
    if (tms_log_begin(&l, TMS_LOG_INFO, "request")) {
        tms_log_add(&l, " method=", 8);
        tms_log_add_str(&l, method);
        tms_log_add(&l, " route=", 7);
        tms_log_add_str(&l, route);
        /* Never the query string: clients put tokens and passwords there. A request
         * that failed before its head was complete still has it attached here. */
        tms_log_add(&l, " path=", 6);
        tms_log_add_quoted(&l, path, strcspn(path, "?"), 255);
        tms_log_add(&l, " status=", 8);
        tms_log_add_int(&l, status);
        tms_log_add(&l, " dur_ms=", 8);
        tms_log_add_ms(&l, ns);
        tms_log_add(&l, " rid=", 5);
        tms_log_add_str(&l, r->request_id);
        tms_log_add(&l, " client=", 8);
        tms_log_add_str(&l, r->client_addr[0] ? r->client_addr : "-");
        if (r->proxy_addr[0]) {
            tms_log_add(&l, " via=", 5);
            tms_log_add_str(&l, r->proxy_addr);
        }
        tms_log_end(&l);
    }
    observe(s, route, method, status, (double)ns / 1e9);
}

/* ---- requests ---- */

/* A finished request goes back to its server with its buffers, so that the next one
 * on this loop costs no allocation (four per request before: the request, its head
 * buffer, header offsets, header array; issue 19). Bounded in count and in the bytes
 * kept: a request with a large head or body frees what it grew. */
#define MAX_SPARE_REQS 256
#define MAX_SPARE_BUF 8192
#define MAX_SPARE_HEADERS 64

static hreq_t *req_new(conn_t *c)
{
    tms_http_server_t *s = c->srv;
    hreq_t *r = s->spare;
    if (r) {
        hreq_t keep;
        TMS_UNPOISON(&r->pub, sizeof r->pub);
        keep = *r;
        TMS_UNPOISON(keep.buf, keep.cap);
        TMS_UNPOISON(keep.hoff, keep.hcap * sizeof *keep.hoff);
        TMS_UNPOISON(keep.hdrs, keep.hdr_cap * sizeof *keep.hdrs);
        s->spare = r->next_spare;
        s->nspare--;
        memset(r, 0, sizeof *r);
        r->buf = keep.buf;
        r->cap = keep.cap;
        r->hoff = keep.hoff;
        r->hcap = keep.hcap;
        r->hdrs = keep.hdrs;
        r->hdr_cap = keep.hdr_cap;
    } else {
        r = tms_new(hreq_t);
    }
    r->conn = c;
    r->url_off = SIZE_MAX;
    r->pub.route = "unmatched";
    r->pub.query = "";
    r->pub.body = "";
    tms_text_copy(r->pub.client_addr, sizeof r->pub.client_addr, c->client_addr);
    return r;
}

static void req_free(hreq_t *r)
{
    tms_http_server_t *s;
    if (!r)
        return;
    free(r->body);
    r->body = NULL;
    s = r->conn ? r->conn->srv : NULL; /* detached: the server may be gone before it */
    if (s && s->nspare < MAX_SPARE_REQS && r->cap <= MAX_SPARE_BUF &&
        r->hcap <= MAX_SPARE_HEADERS && r->hdr_cap <= MAX_SPARE_HEADERS) {
        r->next_spare = s->spare;
        s->spare = r;
        s->nspare++;
        /* Under ASan a use of the request after this is still reported: what a
         * handler sees (pub) and the buffers are poisoned. Not the pointers to the
         * buffers: LeakSanitizer does not look into poisoned memory. */
        TMS_POISON(r->buf, r->cap);
        TMS_POISON(r->hoff, r->hcap * sizeof *r->hoff);
        TMS_POISON(r->hdrs, r->hdr_cap * sizeof *r->hdrs);
        TMS_POISON(&r->pub, sizeof r->pub);
        return;
    }
    free(r->buf);
    free(r->hoff);
    free(r->hdrs);
    free(r);
}

/* Fill the public view of r once its head is complete (r->buf no longer moves). */
static void req_finish_head(tms_http_server_t *s, hreq_t *r)
{
    char *url;
    char *q;
    const char *rid;
    if (r->url_off == SIZE_MAX) {
        r->url_off = r->len;
        buf_append(&r->buf, &r->len, &r->cap, "", 1);
    }
    url = r->buf + r->url_off;
    q = strchr(url, '?');
    if (q) {
        *q = '\0';
        r->pub.query = q + 1;
    }
    r->pub.path = url;
    r->pub.method = r->method;
    if (r->hdr_cap < r->nh || !r->hdrs) {
        free(r->hdrs);
        r->hdr_cap = r->nh > 16 ? r->nh : 16;
        r->hdrs = tms_calloc(r->hdr_cap, sizeof(tms_http_header_t));
    }
    r->pub.headers = r->hdrs;
    for (size_t i = 0; i < r->nh; i++) {
        r->pub.headers[i].name = r->buf + r->hoff[i].name;
        r->pub.headers[i].value = r->hoff[i].value == SIZE_MAX ? "" : r->buf + r->hoff[i].value;
    }
    r->pub.nheaders = r->nh;
    if (s->limits.trusted_proxies &&
        tms_http_forwarded_client(&r->pub, r->conn->client_addr, s->limits.trusted_proxies,
                                  r->pub.client_addr, sizeof r->pub.client_addr))
        snprintf(r->pub.proxy_addr, sizeof r->pub.proxy_addr, "%s", r->conn->client_addr);
    rid = tms_http_header_get(&r->pub, "X-Request-Id");
    if (rid && request_id_sane(rid)) {
        tms_text_copy(r->pub.request_id, sizeof r->pub.request_id, rid);
    } else { /* 32 hex digits, as "%016llx%016llx" without printf */
        static const char hex[] = "0123456789abcdef";
        uint64_t v[2] = {rng_next(s), rng_next(s)};
        for (int i = 0; i < 32; i++)
            r->pub.request_id[i] = hex[(v[i / 16] >> (60 - 4 * (i % 16))) & 15];
        r->pub.request_id[32] = '\0';
    }
    r->pub.start_ns = uv_hrtime();
}

/* ---- connection lifecycle ---- */

static void on_handle_close(uv_handle_t *h);
static void process(conn_t *c);
static void begin_linger(conn_t *c);
static void on_conn_timeout(uv_timer_t *t);

static void read_start(conn_t *c);

static void cork_unlist(conn_t *c)
{
    tms_flush_item_remove(&c->cork);
    c->out_len = 0;
}

static void conn_close(conn_t *c)
{
    hreq_t *r = c->req;
    if (c->closing)
        return;
    c->closing = true;
    c->req = NULL;
    if (r) {
        if (r->dispatched) {
            /* The handler still owns it; tms_http_respond will only free it. */
            r->conn = NULL;
            c->srv->inflight--;
        } else {
            req_free(r);
        }
    }
    cork_unlist(c);
    uv_timer_stop(&c->timer);
    uv_close((uv_handle_t *)&c->timer, on_handle_close);
    uv_close((uv_handle_t *)&c->tcp, on_handle_close);
}

static void on_handle_close(uv_handle_t *h)
{
    conn_t *c = h->data;
    tms_http_server_t *s = c->srv;
    if (--c->handles > 0)
        return;
    if (c->stream) { /* the stream's owner learns it only now: never from inside a write */
        tms_http_stream_t *st = c->stream;
        c->stream = NULL;
        st->conn = NULL;
        if (st->closed)
            st->closed(st->arg);
        free(st);
    }
    if (c->prev)
        c->prev->next = c->next;
    else
        s->conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    s->nconns--;
    atomic_fetch_sub(&s->open_connections, 1);
    tms_listener_release(&s->lis, &c->slot);
    tms_tls_free(&c->tls);
    free(c->in);
    free(c->out);
    free(c);
    tms_listener_maybe_stopped(&s->lis);
}

/* The connection's one deadline, set lazily: every request moves it (head, idle,
 * send), and a uv_timer_stop + uv_timer_start per move was 3 % of a GET (issue 19).
 * Moving it only writes due; the uv timer is re-armed when a deadline comes sooner
 * than it fires, and when it fires before due it sleeps again for the rest. */
static void on_due(uv_timer_t *t)
{
    conn_t *c = t->data;
    uint64_t now = uv_now(c->srv->loop);
    if (!c->due)
        return;
    if (now < c->due) {
        c->armed = c->due;
        uv_timer_start(&c->timer, on_due, c->due - now, 0);
        return;
    }
    c->due = 0;
    c->due_cb(t);
}

static void timer_cancel(conn_t *c)
{
    c->due = 0; /* the uv timer, if armed, finds nothing to do */
}

static void timer_restart(conn_t *c, uint64_t ms, uv_timer_cb cb)
{
    uint64_t now = uv_now(c->srv->loop);
    if (ms == 0) {
        timer_cancel(c);
        return;
    }
    c->due = now + ms;
    c->due_cb = cb;
    if (!uv_is_active((uv_handle_t *)&c->timer) || c->armed > c->due) {
        c->armed = c->due;
        uv_timer_start(&c->timer, on_due, ms, 0);
    }
}

typedef struct wreq {
    uv_write_t w;
    conn_t *conn;
    size_t stream_bytes; /* counted in the stream's queued */
    bool close_after, final;
    char *heap; /* TLS: the ciphertext (ours to free); else the bytes are in data */
    char data[];
} wreq_t;

static void on_write(uv_write_t *w, int status)
{
    wreq_t *wr = (wreq_t *)w;
    conn_t *c = wr->conn;
    bool close_after = wr->close_after, final = wr->final;
    c->writes_queued--;
    if (c->stream && wr->stream_bytes) {
        c->stream->queued -= wr->stream_bytes;
        if (c->stream->queued == 0 && c->phase == PH_STREAM && !c->closing)
            timer_cancel(c); /* everything taken: no send deadline */
    }
    free(wr->heap);
    free(wr);
    if (c->closing)
        return;
    if (status < 0) {
        conn_close(c);
        return;
    }
    if (!final)
        return; /* 100 Continue */
    if (close_after || c->srv->lis.stopping) {
        begin_linger(c);
        return;
    }
    c->phase = PH_IDLE;
    process(c);
}

/* Queue len bytes (copied; on TLS, encrypted with whatever TLS has to send before
 * them) on c. final marks the response that ends a request; a write that is not
 * final with no bytes sends only what TLS has waiting (handshake, alerts). */
static void conn_write_ex(conn_t *c, const char *data, size_t len, bool final, bool close_after,
                          size_t stream_bytes);

static void conn_write(conn_t *c, const char *data, size_t len, bool final, bool close_after)
{
    conn_write_ex(c, data, len, final, close_after, 0);
}

static void conn_write_ex(conn_t *c, const char *data, size_t len, bool final, bool close_after,
                          size_t stream_bytes)
{
    wreq_t *wr;
    uv_buf_t b;
    int rc;
    if (c->tls) {
        char *out;
        size_t out_len = 0;
        if (len && tms_tls_write(c->tls, data, len) != 0) {
            conn_close(c);
            return;
        }
        out = tms_tls_take(c->tls, &out_len);
        if (!out && !final) {
            if (stream_bytes && c->stream)
                c->stream->queued -= stream_bytes;
            return;
        }
        size_t sent = 0;
        if (out && final && !close_after && c->in_len == 0 && !c->peer_eof) {
            /* As for cleartext below: the ciphertext sent at once, no write request. */
            int n =
                uv_try_write((uv_stream_t *)&c->tcp, &(uv_buf_t){.base = out, .len = out_len}, 1);
            if (n == (int)out_len) {
                free(out);
                c->phase = PH_IDLE;
                timer_restart(c, c->srv->limits.idle_timeout_ms, on_conn_timeout);
                return;
            }
            if (n > 0) {
                sent = (size_t)n;
            } else if (n != UV_EAGAIN) {
                free(out);
                conn_close(c);
                return;
            }
        }
        wr = tms_malloc(sizeof *wr);
        wr->heap = out;
        b = uv_buf_init(out ? out + sent : wr->data, (unsigned)(out_len - sent));
    } else {
        if (final && !close_after && c->in_len > 0 && !c->peer_eof && !c->writes_queued &&
            c->out_len + len <= CORK_MAX && tms_flush_later_add(&c->srv->uncork, &c->cork)) {
            /* More requests are pipelined behind this one: keep the response and go on
             * with the next request; what gathered goes out in one write, with the
             * last response or before the loop waits (on_uncork). */
            buf_append(&c->out, &c->out_len, &c->out_cap, data, len);
            c->phase = PH_IDLE;
            if (!c->in_process)
                process(c); /* called from a reply: on to the next request */
            return;
        }
        if (c->out_len) { /* corked responses go first, in the same write */
            size_t n = c->out_len;
            buf_append(&c->out, &n, &c->out_cap, data, len);
            cork_unlist(c);
            data = c->out;
            len = n;
        }
        if (final && !close_after && c->in_len == 0 && !c->peer_eof) {
            /* The common case, a response that ends a request with nothing pipelined
             * after it: try to send it at once. All sent, the connection is idle
             * again as on_write would make it, with no write request: no copy, no
             * allocation, and no epoll_ctl (libuv re-arms the socket's interest after
             * every queued write). uv_try_write refuses while writes are queued. */
            int n = uv_try_write((uv_stream_t *)&c->tcp,
                                 &(uv_buf_t){.base = (char *)data, .len = len}, 1);
            if (n == (int)len) {
                c->phase = PH_IDLE;
                timer_restart(c, c->srv->limits.idle_timeout_ms, on_conn_timeout);
                return;
            }
            if (n > 0) {
                data += n;
                len -= (size_t)n;
            } else if (n != UV_EAGAIN) {
                conn_close(c);
                return;
            }
        }
        wr = tms_malloc(sizeof *wr + len);
        wr->heap = NULL;
        memcpy(wr->data, data, len);
        b = uv_buf_init(wr->data, (unsigned)len);
    }
    wr->conn = c;
    wr->stream_bytes = stream_bytes;
    wr->final = final;
    wr->close_after = close_after;
    rc = uv_write(&wr->w, (uv_stream_t *)&c->tcp, &b, 1, on_write);
    if (rc < 0) {
        free(wr->heap);
        free(wr);
        conn_close(c);
        return;
    }
    c->writes_queued++;
    /* A client that does not read its response would hold the connection (and the
     * response's bytes) for as long as it liked. */
    if (final)
        timer_restart(c, c->srv->limits.send_timeout_ms, on_conn_timeout);
}

/* Write what c has corked (not a final write: the phase stays as it is). */
static void uncork(conn_t *c)
{
    size_t len = c->out_len;
    int n;
    cork_unlist(c);
    n = uv_try_write((uv_stream_t *)&c->tcp, &(uv_buf_t){.base = c->out, .len = len}, 1);
    if (n == (int)len)
        return;
    if (n < 0 && n != UV_EAGAIN) {
        conn_close(c);
        return;
    }
    if (n < 0)
        n = 0;
    conn_write_ex(c, c->out + n, len - (size_t)n, false, false, 0);
}

/* Before the loop waits: every connection's corked responses go out, one write each. */
static void on_uncork(tms_flush_item_t *item)
{
    uncork(TMS_FLUSH_OWNER(item, conn_t, cork));
}

/* Serialize status line, headers and body into one buffer owned by the caller. */
static char *build_response(tms_http_server_t *s, int status, const char *rid, bool close_after,
                            const tms_http_header_t *headers, size_t nheaders,
                            const char *content_type, const char *body, size_t body_len,
                            bool omit_body, size_t *out_len)
{
    char *b = NULL;
    size_t len = 0, cap = 512 + body_len;
    char line[256];
    int n;
    bool no_body_status = status == 204 || status == 304 || (status >= 100 && status < 200);
    const char *reason = reason_phrase(status), *date = http_date(s);
    b = tms_malloc(cap);
    /* Formatted by hand: no printf on the path of every response (issue 19). */
    buf_append(&b, &len, &cap, "HTTP/1.1 ", 9);
    n = (int)(tms_jsonw_int(line, status) - line);
    buf_append(&b, &len, &cap, line, (size_t)n);
    buf_append(&b, &len, &cap, " ", 1);
    buf_append(&b, &len, &cap, reason, strlen(reason));
    buf_append(&b, &len, &cap, "\r\nDate: ", 8);
    buf_append(&b, &len, &cap, date, strlen(date));
    buf_append(&b, &len, &cap, "\r\n", 2);
    if (content_type && !no_body_status) {
        buf_append(&b, &len, &cap, "Content-Type: ", 14);
        buf_append(&b, &len, &cap, content_type, strcspn(content_type, "\r\n"));
        buf_append(&b, &len, &cap, "\r\n", 2);
    }
    /* A 304 has no body, and a Content-Length there would have to be the 200's. */
    if (status != 204 && status != 304 && !(status >= 100 && status < 200)) {
        n = (int)(tms_jsonw_int(line, no_body_status ? 0 : (int64_t)body_len) - line);
        buf_append(&b, &len, &cap, "Content-Length: ", 16);
        buf_append(&b, &len, &cap, line, (size_t)n);
        buf_append(&b, &len, &cap, "\r\n", 2);
    }
    buf_append(&b, &len, &cap, "X-Request-Id: ", 14);
    buf_append(&b, &len, &cap, rid, strnlen(rid, 200));
    buf_append(&b, &len, &cap, "\r\n", 2);
    if (close_after)
        buf_append(&b, &len, &cap, "Connection: close\r\n", 19);
    for (size_t i = 0; i < nheaders; i++) {
        const char *hn = headers[i].name, *hv = headers[i].value;
        if (!hn || !hv || !hn[0] || strpbrk(hn, "\r\n: ") || strpbrk(hv, "\r\n")) {
            tms_log_warn("http_bad_header", "rid=%s dropped a response header with CR/LF", rid);
            continue;
        }
        buf_append(&b, &len, &cap, hn, strlen(hn));
        buf_append(&b, &len, &cap, ": ", 2);
        buf_append(&b, &len, &cap, hv, strlen(hv));
        buf_append(&b, &len, &cap, "\r\n", 2);
    }
    buf_append(&b, &len, &cap, "\r\n", 2);
    if (body_len && !omit_body && !no_body_status)
        buf_append(&b, &len, &cap, body, body_len);
    *out_len = len;
    return b;
}

/* Answer a request the server itself rejects (400, 408, 413, 431), then close. */
static void conn_fail(conn_t *c, int status, tms_status_t code, const char *message)
{
    tms_http_server_t *s = c->srv;
    hreq_t *r = c->req;
    tms_http_request_t view;
    char *body, *resp;
    size_t body_len, resp_len;
    memset(&view, 0, sizeof view);
    if (r) {
        view.method = r->method;
        view.path = r->url_off != SIZE_MAX && r->url_done ? r->buf + r->url_off : NULL;
        view.start_ns = r->pub.start_ns;
    }
    view.route = "unmatched";
    snprintf(view.client_addr, sizeof view.client_addr, "%s", c->client_addr);
    snprintf(view.request_id, sizeof view.request_id, "%016llx%016llx",
             (unsigned long long)rng_next(s), (unsigned long long)rng_next(s));
    body = error_body(code, message, &body_len);
    resp = build_response(s, status, view.request_id, true, NULL, 0, "application/json", body,
                          body_len, false, &resp_len);
    log_request(s, &view, status);
    free(body);
    req_free(r);
    c->req = NULL;
    c->phase = PH_WRITING;
    timer_cancel(c);
    conn_write(c, resp, resp_len, true, true);
    free(resp);
}

static void on_linger_timeout(uv_timer_t *t)
{
    conn_close(t->data);
}

static void on_shutdown(uv_shutdown_t *req, int status)
{
    conn_t *c = req->data;
    if (status < 0 && !c->closing)
        conn_close(c);
}

/* Half-close after the final response and drain input for a while, so that the client
 * reads the response instead of getting a reset for unread request bytes. */
static void begin_linger(conn_t *c)
{
    c->phase = PH_LINGER;
    c->in_len = 0;
    if (c->tls) { /* close_notify (or the alert of a failed handshake) before the FIN */
        tms_tls_shutdown(c->tls);
        conn_write(c, NULL, 0, false, false);
        if (c->closing)
            return;
    }
    c->shutdown.data = c;
    if (uv_shutdown(&c->shutdown, (uv_stream_t *)&c->tcp, on_shutdown) < 0) {
        conn_close(c);
        return;
    }
    timer_restart(c, c->srv->lis.stopping ? 200 : LINGER_MS, on_linger_timeout);
    if (c->peer_eof)
        conn_close(c);
    else
        read_start(c);
}

static void on_conn_timeout(uv_timer_t *t)
{
    conn_t *c = t->data;
    tms_http_server_t *s = c->srv;
    switch (c->phase) {
    case PH_HANDSHAKE:
        tms_counter_add(s->timeouts[TO_HANDSHAKE], 1);
        tms_tls_timed_out(c->tls);
        conn_close(c);
        break;
    case PH_HEAD:
    case PH_BODY:
        tms_counter_add(s->timeouts[c->phase == PH_HEAD ? TO_HEAD : TO_BODY], 1);
        conn_fail(c, 408, TMS_DEADLINE_EXCEEDED, "request not received in time");
        break;
    case PH_HANDLER:
        break; /* the handler owns deadlines */
    case PH_STREAM:
    case PH_WRITING:
        /* The response was not taken in time: nothing more can be said to this client. */
        tms_counter_add(s->timeouts[TO_SEND], 1);
        tms_log_info("http_send_timeout", "client=%s unsent_bytes=%zu timeout_ms=%llu",
                     c->client_addr[0] ? c->client_addr : "-",
                     uv_stream_get_write_queue_size((uv_stream_t *)&c->tcp),
                     (unsigned long long)s->limits.send_timeout_ms);
        conn_close(c);
        break;
    default:
        conn_close(c);
        break;
    }
}

/* ---- llhttp callbacks ---- */

static int reject(conn_t *c, int status, const char *reason)
{
    if (!c->err_status) {
        c->err_status = status;
        c->err_reason = reason;
    }
    return -1;
}

static int count_head(conn_t *c, size_t n)
{
    c->head_bytes += n;
    if (c->head_bytes > c->srv->limits.max_head_bytes)
        return reject(c, 431, "request head too large");
    return 0;
}

static int on_message_begin(llhttp_t *p)
{
    conn_t *c = p->data;
    c->head_bytes = 0;
    c->in_trailers = false;
    c->req = req_new(c);
    c->phase = PH_HEAD;
    timer_restart(c, c->srv->limits.head_timeout_ms, on_conn_timeout);
    return 0;
}

static int on_method(llhttp_t *p, const char *at, size_t n)
{
    return count_head(p->data, n + 1);
}

static int on_method_complete(llhttp_t *p)
{
    conn_t *c = p->data;
    tms_text_copy(c->req->method, sizeof c->req->method,
                  llhttp_method_name((llhttp_method_t)llhttp_get_method(p)));
    c->req->is_head = llhttp_get_method(p) == HTTP_HEAD;
    return 0;
}

static int on_url(llhttp_t *p, const char *at, size_t n)
{
    conn_t *c = p->data;
    hreq_t *r = c->req;
    if (count_head(c, n))
        return -1;
    if (r->url_off == SIZE_MAX)
        r->url_off = r->len;
    buf_append(&r->buf, &r->len, &r->cap, at, n);
    return 0;
}

static int on_url_complete(llhttp_t *p)
{
    conn_t *c = p->data;
    hreq_t *r = c->req;
    if (r->url_off == SIZE_MAX)
        r->url_off = r->len;
    buf_append(&r->buf, &r->len, &r->cap, "", 1);
    r->url_done = true;
    return count_head(c, 12); /* " HTTP/1.1\r\n" */
}

static int on_header_field(llhttp_t *p, const char *at, size_t n)
{
    conn_t *c = p->data;
    hreq_t *r = c->req;
    if (count_head(c, n))
        return -1;
    if (c->in_trailers)
        return 0;
    if (!r->in_field) {
        if (r->nh == r->hcap) {
            r->hcap = r->hcap ? r->hcap * 2 : 16;
            r->hoff = tms_realloc(r->hoff, r->hcap * sizeof *r->hoff);
        }
        r->hoff[r->nh].name = r->len;
        r->hoff[r->nh].value = SIZE_MAX;
        r->nh++;
        r->in_field = true;
    }
    buf_append(&r->buf, &r->len, &r->cap, at, n);
    return 0;
}

static int on_header_field_complete(llhttp_t *p)
{
    conn_t *c = p->data;
    hreq_t *r = c->req;
    if (count_head(c, 4)) /* ": " and CRLF */
        return -1;
    if (c->in_trailers)
        return 0;
    if (!r->in_field || !r->nh)
        return reject(c, 400, "empty header name");
    r->in_field = false;
    for (const char *q = r->buf + r->hoff[r->nh - 1].name; *q; q++) {
        if (!is_tchar((unsigned char)*q))
            return reject(c, 400, "invalid header name");
    }
    buf_append(&r->buf, &r->len, &r->cap, "", 1);
    r->in_value = false;
    return 0;
}

static int on_header_value(llhttp_t *p, const char *at, size_t n)
{
    conn_t *c = p->data;
    hreq_t *r = c->req;
    const char *q;
    if (count_head(c, n))
        return -1;
    /* llhttp 8 accepts obs-fold even in strict mode: the folded line comes as more of
     * the value, with only spaces between it and the LF. RFC 9112 5.2 lets a server
     * reject it, and a space-led line is how CVE-2024-27982 hides a Content-Length, so
     * reject. (Otherwise a value follows its colon, or more of itself after a read.) */
    for (q = at; q > c->in && (q[-1] == ' ' || q[-1] == '\t'); q--)
        ;
    if (n > 0 && (q > c->in ? q[-1] : c->prev_byte) == '\n') /* n == 0: an empty value */
        return reject(c, 400, "obsolete line folding");
    if (c->in_trailers || !r->nh)
        return 0;
    if (!r->in_value) {
        r->hoff[r->nh - 1].value = r->len;
        r->in_value = true;
    }
    buf_append(&r->buf, &r->len, &r->cap, at, n);
    return 0;
}

static int on_header_value_complete(llhttp_t *p)
{
    conn_t *c = p->data;
    hreq_t *r = c->req;
    size_t start;
    if (c->in_trailers || !r->nh)
        return 0;
    if (!r->in_value)
        r->hoff[r->nh - 1].value = r->len;
    start = r->hoff[r->nh - 1].value;
    while (r->len > start && (r->buf[r->len - 1] == ' ' || r->buf[r->len - 1] == '\t'))
        r->buf[--r->len] = '\0';
    buf_append(&r->buf, &r->len, &r->cap, "", 1);
    r->in_value = false;
    return 0;
}

/* The body's timer: a pause of idle_timeout_ms, or the body deadline, if sooner. */
static void body_timer(conn_t *c)
{
    uint64_t now = uv_now(c->srv->loop);
    uint64_t left = c->body_deadline > now ? c->body_deadline - now : 1;
    timer_restart(c, left < c->srv->limits.idle_timeout_ms ? left : c->srv->limits.idle_timeout_ms,
                  on_conn_timeout);
}

static int on_headers_complete(llhttp_t *p)
{
    conn_t *c = p->data;
    tms_http_server_t *s = c->srv;
    hreq_t *r = c->req;
    const char *expect;
    if (p->upgrade)
        return reject(c, 400, "upgrade not supported");
    if (p->http_major != 1) /* llhttp takes a request line without a version as HTTP/0.9 */
        return reject(c, 400, "unsupported HTTP version");
    if ((p->flags & F_CONTENT_LENGTH) && p->content_length > s->limits.max_body_bytes)
        return reject(c, 413, "request body too large");
    req_finish_head(s, r);
    c->in_trailers = true;
    c->phase = PH_BODY;
    /* However steadily the body trickles in, it has body_timeout_ms in all. */
    c->body_deadline = uv_now(s->loop) + s->limits.body_timeout_ms;
    body_timer(c);
    expect = tms_http_header_get(&r->pub, "Expect");
    if (expect && strcasecmp(expect, "100-continue") == 0 && p->http_major == 1 &&
        p->http_minor == 1 && ((p->flags & F_CHUNKED) || p->content_length > 0)) {
        static const char cont[] = "HTTP/1.1 100 Continue\r\n\r\n";
        conn_write(c, cont, sizeof cont - 1, false, false);
    }
    return 0;
}

static int on_body(llhttp_t *p, const char *at, size_t n)
{
    conn_t *c = p->data;
    hreq_t *r = c->req;
    if (r->body_len + n > c->srv->limits.max_body_bytes)
        return reject(c, 413, "request body too large");
    buf_append(&r->body, &r->body_len, &r->body_cap, at, n);
    return 0;
}

static int on_message_complete(llhttp_t *p)
{
    conn_t *c = p->data;
    hreq_t *r = c->req;
    r->keep_alive = llhttp_should_keep_alive(p) != 0;
    if (r->body)
        r->pub.body = r->body;
    r->pub.body_len = r->body_len;
    c->ready = true;
    return HPE_PAUSED;
}

static const char *parse_reason(llhttp_errno_t e)
{
    switch (e) {
    case HPE_UNEXPECTED_CONTENT_LENGTH:
        return "conflicting Content-Length";
    case HPE_INVALID_CONTENT_LENGTH:
        return "invalid Content-Length";
    case HPE_INVALID_CHUNK_SIZE:
        return "invalid chunk size";
    case HPE_INVALID_TRANSFER_ENCODING:
        return "invalid Transfer-Encoding";
    case HPE_INVALID_METHOD:
        return "invalid method";
    case HPE_INVALID_URL:
        return "invalid request target";
    case HPE_INVALID_VERSION:
        return "invalid HTTP version";
    case HPE_INVALID_HEADER_TOKEN:
        return "invalid header";
    case HPE_INVALID_CONSTANT:
        return "invalid request line";
    case HPE_CR_EXPECTED:
    case HPE_LF_EXPECTED:
    case HPE_STRICT:
        return "invalid line ending";
    case HPE_PAUSED_H2_UPGRADE:
        return "HTTP/2 not supported";
    default:
        return "parse error";
    }
}

/* ---- feeding the parser ---- */

static void dispatch(conn_t *c)
{
    tms_http_server_t *s = c->srv;
    hreq_t *r = c->req;
    r->dispatched = true;
    c->phase = PH_HANDLER;
    timer_cancel(c);
    s->inflight++;
    if (s->limits.cors_origins && tms_cors_is_preflight(&r->pub)) {
        /* Answered here, before any route or limit: the browser asks what it may send. */
        tms_http_header_t h[TMS_CORS_PREFLIGHT_HEADERS];
        r->pub.route = "preflight";
        if (tms_cors_allowed(s->limits.cors_origins, tms_http_header_get(&r->pub, "Origin")))
            tms_http_respond(&r->pub, 204, h, tms_cors_preflight(h), NULL, NULL, 0);
        else
            tms_http_respond_error_status(&r->pub, 403, TMS_PERMISSION_DENIED,
                                          "origin not allowed (http.cors_origins)", NULL, 0);
        return;
    }
    s->handler(s->ctx, &r->pub);
}

/* Parse buffered input until a request is complete, an error, or the input runs out. */
static void process(conn_t *c)
{
    c->in_process = true;
    while (!c->closing && (c->phase == PH_IDLE || c->phase == PH_HEAD || c->phase == PH_BODY)) {
        llhttp_errno_t e;
        size_t used;
        if (c->in_len == 0) {
            if (c->peer_eof) {
                c->in_process = false;
                conn_close(c); /* nothing more will come */
                return;
            }
            if (c->phase == PH_IDLE) {
                if (c->srv->lis.stopping) {
                    c->in_process = false;
                    conn_close(c);
                    return;
                }
                timer_restart(c, c->srv->limits.idle_timeout_ms, on_conn_timeout);
            }
            break;
        }
        e = llhttp_execute(&c->parser, c->in, c->in_len);
        if (e == HPE_OK) {
            used = c->in_len;
        } else if (e == HPE_PAUSED && c->ready) {
            used = (size_t)(llhttp_get_error_pos(&c->parser) - c->in);
            llhttp_resume(&c->parser);
        } else {
            int status = c->err_status ? c->err_status : 400;
            const char *why = c->err_status ? c->err_reason : parse_reason(e);
            char msg[128];
            tms_status_t code = TMS_INVALID_ARGUMENT;
            if (status == 413 || status == 431)
                code = TMS_RESOURCE_EXHAUSTED;
            snprintf(msg, sizeof msg, "%s%s", status == 400 ? "malformed HTTP request: " : "", why);
            c->in_len = 0;
            c->in_process = false;
            conn_fail(c, status, code, msg);
            return;
        }
        for (size_t i = used; i > 0; i--) { /* only trailing spaces are walked */
            if (c->in[i - 1] != ' ' && c->in[i - 1] != '\t') {
                c->prev_byte = c->in[i - 1];
                break;
            }
        }
        memmove(c->in, c->in + used, c->in_len - used);
        c->in_len -= used;
        if (c->ready) {
            c->ready = false;
            dispatch(c);
            if (c->phase != PH_IDLE)
                break; /* with the handler, or its response being written */
            /* answered at once and corked: on to the next pipelined request */
        }
    }
    c->in_process = false;
    if (c->in_len == 0 && c->in_cap > READ_CHUNK) {
        free(c->in);
        c->in = NULL;
        c->in_cap = 0;
    }
    if (!c->closing && !c->peer_eof && c->phase != PH_LINGER) {
        if (c->in_len < PENDING_MAX)
            read_start(c);
        else if (c->reading) {
            uv_read_stop((uv_stream_t *)&c->tcp);
            c->reading = false;
        }
    }
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    conn_t *c = h->data;
    (void)suggested;
    *buf = uv_buf_init(c->srv->rbuf, sizeof c->srv->rbuf);
}

/* The peer closed its side (nread < 0: EOF or an error). */
static void peer_gone(conn_t *c, ssize_t nread)
{
    if (nread == UV_EOF && c->phase == PH_STREAM) {
        conn_close(c); /* the client went away: the stream ends */
    } else if (nread == UV_EOF && (c->phase == PH_HANDLER || c->phase == PH_WRITING)) {
        /* Half-close: answer, then close. */
        c->peer_eof = true;
        uv_read_stop((uv_stream_t *)&c->tcp);
        c->reading = false;
    } else if (nread == UV_EOF && c->phase == PH_BODY) {
        /* The peer is done: close after the answer, without lingering for input. */
        c->peer_eof = true;
        conn_fail(c, 400, TMS_INVALID_ARGUMENT, "malformed HTTP request: truncated body");
    } else {
        conn_close(c);
    }
}

static int on_plaintext(void *arg, const char *data, size_t n)
{
    conn_t *c = arg;
    buf_append(&c->in, &c->in_len, &c->in_cap, data, n);
    return 0;
}

/* Ciphertext read: the handshake goes on, plaintext joins c->in, and what TLS must
 * send goes out. Returns 0 (go on with c->in), TMS_TLS_EOF (the same, then the
 * peer's close), or -1: nothing more to do with this read (still handshaking, or
 * the connection is going). */
static int tls_read(conn_t *c, const char *data, size_t n)
{
    bool was = tms_tls_established(c->tls);
    int rc = tms_tls_input(c->tls, data, n, on_plaintext, c);
    conn_write(c, NULL, 0, false, false); /* handshake, tickets, alerts */
    if (c->closing)
        return -1;
    if (rc < 0 && tms_tls_plain_http(c->tls)) {
        /* http:// to the TLS port: say so in its own language (as nginx does), then close. */
        tms_tls_free(&c->tls);
        c->in_len = 0;
        conn_fail(c, 400, TMS_INVALID_ARGUMENT,
                  "plain HTTP request sent to the TLS port; use https://");
        return -1;
    }
    if (rc < 0) {
        /* Refused or broken: the alert goes out, then the connection closes. */
        tms_log(TMS_LOG_DEBUG, "tls_failed", "listener=%s client=%s error=\"%s\"",
                c->srv->limits.listener, c->client_addr, tms_tls_error(c->tls));
        c->in_len = 0;
        begin_linger(c);
        return -1;
    }
    if (!was) {
        if (!tms_tls_established(c->tls))
            return -1;
        c->phase = PH_IDLE; /* process() starts the idle timer */
    }
    return rc;
}

static void on_read(uv_stream_t *st, ssize_t nread, const uv_buf_t *buf)
{
    conn_t *c = st->data;
    int tls_rc = 0;
    if (c->closing)
        return;
    if (nread < 0) {
        peer_gone(c, nread);
        return;
    }
    if (nread == 0)
        return;
    if (c->phase == PH_LINGER || c->phase == PH_STREAM)
        return; /* discard */
    if (c->tls) {
        tls_rc = tls_read(c, buf->base, (size_t)nread);
        if (tls_rc < 0)
            return;
    } else {
        buf_append(&c->in, &c->in_len, &c->in_cap, buf->base, (size_t)nread);
    }
    if (c->phase == PH_BODY)
        body_timer(c);
    if (c->phase == PH_IDLE || c->phase == PH_HEAD || c->phase == PH_BODY)
        process(c);
    else if (c->in_len >= PENDING_MAX) {
        uv_read_stop(st);
        c->reading = false;
    }
    if (tls_rc == TMS_TLS_EOF && !c->closing && c->phase != PH_LINGER && !c->peer_eof)
        peer_gone(c, UV_EOF);
}

static void read_start(conn_t *c)
{
    if (!c->reading && !c->closing) {
        if (uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read) == 0)
            c->reading = true;
    }
}

static void on_connection(uv_stream_t *server, int status)
{
    tms_http_server_t *s = server->data;
    conn_t *c;
    struct sockaddr_storage ss;
    int sslen = sizeof ss;
    if (status < 0) {
        tms_log_warn("http_accept", "error=\"%s\"", uv_strerror(status));
        return;
    }
    c = tms_new(conn_t);
    c->srv = s;
    uv_tcp_init(s->loop, &c->tcp);
    uv_timer_init(s->loop, &c->timer);
    c->tcp.data = c;
    c->timer.data = c;
    c->handles = 2;
    c->next = s->conns;
    if (s->conns)
        s->conns->prev = c;
    s->conns = c;
    s->nconns++;
    atomic_fetch_add(&s->open_connections, 1);
    if (uv_accept(server, (uv_stream_t *)&c->tcp) < 0 || s->lis.stopping) {
        conn_close(c);
        return;
    }
    if (uv_tcp_getpeername(&c->tcp, (struct sockaddr *)&ss, &sslen) == 0) {
        if (ss.ss_family == AF_INET)
            uv_ip4_name((struct sockaddr_in *)&ss, c->client_addr, sizeof c->client_addr);
        else if (ss.ss_family == AF_INET6)
            uv_ip6_name((struct sockaddr_in6 *)&ss, c->client_addr, sizeof c->client_addr);
    }
    /* One address may not take every slot (limit_conn): the excess goes at once. */
    if (tms_listener_admit(&s->lis, c->client_addr, &c->slot) != 0) {
        conn_close(c);
        return;
    }
    if (s->nconns > s->limits.max_connections) {
        tms_listener_refused_max(&s->lis);
        conn_close(c);
        return;
    }
    uv_tcp_nodelay(&c->tcp, 1);
    llhttp_init(&c->parser, HTTP_REQUEST, &s->settings);
    c->parser.data = c;
    c->phase = PH_IDLE;
    if (s->limits.tls) {
        /* The handshake is bounded like a request head: a client that starts one and
         * stalls holds its slot for tls_handshake_timeout_ms at most. */
        c->tls = tms_tls_new(s->limits.tls, NULL);
        c->phase = PH_HANDSHAKE;
        timer_restart(c, s->limits.tls_handshake_timeout_ms, on_conn_timeout);
        read_start(c);
        return;
    }
    process(c);
}

/* ---- server ---- */

/* The grace of a stop is over. */
static void close_all(void *arg)
{
    tms_http_server_t *s = arg;
    for (conn_t *c = s->conns; c; c = c->next)
        conn_close(c);
}

tms_http_server_t *tms_http_server_new(uv_loop_t *loop, const tms_http_limits_t *limits,
                                       tms_http_handler_fn handler, void *ctx)
{
    tms_http_server_t *s = tms_new(tms_http_server_t);
    s->loop = loop;
    if (limits)
        s->limits = *limits;
    else
        tms_http_limits_default(&s->limits);
    s->handler = handler;
    s->ctx = ctx;
    llhttp_settings_init(&s->settings);
    s->settings.on_message_begin = on_message_begin;
    s->settings.on_method = on_method;
    s->settings.on_method_complete = on_method_complete;
    s->settings.on_url = on_url;
    s->settings.on_url_complete = on_url_complete;
    s->settings.on_header_field = on_header_field;
    s->settings.on_header_field_complete = on_header_field_complete;
    s->settings.on_header_value = on_header_value;
    s->settings.on_header_value_complete = on_header_value_complete;
    s->settings.on_headers_complete = on_headers_complete;
    s->settings.on_body = on_body;
    s->settings.on_message_complete = on_message_complete;
    if (!s->limits.listener)
        s->limits.listener = "http";
    if (!s->limits.tls_handshake_timeout_ms)
        s->limits.tls_handshake_timeout_ms = 10000;
    tms_listener_init(&s->lis, s, &s->nconns, close_all);
    tms_flush_later_init(&s->uncork, loop, on_uncork);
    tms_listener_limit(&s->lis, s->limits.listener, s->limits.max_connections_per_address,
                       s->limits.ipv6_prefix);
    if (uv_random(NULL, NULL, s->rng, sizeof s->rng, 0, NULL) < 0 || (!s->rng[0] && !s->rng[1])) {
        s->rng[0] = uv_hrtime() | 1;
        s->rng[1] = (uint64_t)(uintptr_t)s ^ 0x9e3779b97f4a7c15ull;
    }
    {
        static const char *const phases[] = {"head", "body", "send", "handshake"};
        char labels[64];
        for (int i = 0; i < 4; i++) {
            snprintf(labels, sizeof labels, "listener=\"%s\",phase=\"%s\"", s->limits.listener,
                     phases[i]);
            s->timeouts[i] = tms_metrics_counter(
                "tms_http_timeouts_total",
                "HTTP/1.1 connections closed by a timeout: head or body not received in time "
                "(408), response not taken in time (send), TLS handshake not done in time "
                "(handshake)",
                labels);
        }
    }
    /* The public listener's gauge keeps its unlabelled name; others are told apart. */
    if (strcmp(s->limits.listener, "http") != 0)
        snprintf(s->gauge_labels, sizeof s->gauge_labels, "listener=\"%s\"", s->limits.listener);
    tms_metrics_gauge_fn("tms_http_connections", "Open HTTP/1.1 connections", s->gauge_labels,
                         connections_gauge, s);
    return s;
}

int tms_http_server_listen(tms_http_server_t *s, const char *addr)
{
    return tms_listener_open(&s->lis, s->loop, addr, on_connection, "http_listen");
}

int tms_http_server_port(tms_http_server_t *s)
{
    return tms_listener_port(&s->lis);
}

const char *tms_http_server_error(tms_http_server_t *s)
{
    return s->lis.error;
}

void tms_http_respond(tms_http_request_t *req, int status, const tms_http_header_t *headers,
                      size_t nheaders, const char *content_type, const char *body, size_t body_len)
{
    hreq_t *r = (hreq_t *)req;
    conn_t *c = r->conn;
    tms_http_server_t *s;
    bool close_after;
    char *resp;
    size_t resp_len;
    if (!c) {
        log_request(NULL, req, DETACHED_STATUS);
        req_free(r);
        return;
    }
    s = c->srv;
    close_after = !r->keep_alive || s->lis.stopping;
    if (s->limits.cors_origins) {
        tms_http_header_t *all = tms_malloc((nheaders + TMS_CORS_RESPONSE_HEADERS) * sizeof(*all));
        size_t n = tms_cors_response(s->limits.cors_origins, req, all);
        if (nheaders)
            memcpy(all + n, headers, nheaders * sizeof(*all));
        resp = build_response(s, status, req->request_id, close_after, all, n + nheaders,
                              content_type, body, body_len, r->is_head, &resp_len);
        free(all);
    } else {
        resp = build_response(s, status, req->request_id, close_after, headers, nheaders,
                              content_type, body, body_len, r->is_head, &resp_len);
    }
    c->req = NULL;
    c->phase = PH_WRITING;
    s->inflight--;
    log_request(s, req, status);
    req_free(r);
    conn_write(c, resp, resp_len, true, close_after);
    free(resp);
}

/* ---- streamed responses ---- */

tms_http_stream_t *tms_http_stream_begin(tms_http_request_t *req, int status,
                                         const tms_http_header_t *headers, size_t nheaders,
                                         const char *content_type, void (*closed)(void *arg),
                                         void *arg)
{
    hreq_t *r = (hreq_t *)req;
    conn_t *c = r->conn;
    tms_http_server_t *s;
    tms_http_stream_t *st;
    char *resp, *cl;
    size_t resp_len, n;
    tms_http_header_t *cors;
    if (!c) {
        log_request(NULL, req, DETACHED_STATUS);
        req_free(r);
        return NULL;
    }
    s = c->srv;
    /* The body ends with the connection: no Content-Length, Connection: close. */
    cors = tms_malloc((nheaders + TMS_CORS_RESPONSE_HEADERS) * sizeof(*cors));
    n = s->limits.cors_origins ? tms_cors_response(s->limits.cors_origins, req, cors) : 0;
    if (nheaders)
        memcpy(cors + n, headers, nheaders * sizeof(*cors));
    resp = build_response(s, status, req->request_id, true, cors, n + nheaders, content_type, "", 0,
                          true, &resp_len);
    free(cors);
    cl = strstr(resp, "Content-Length: 0\r\n");
    if (cl) {
        memmove(cl, cl + 19, resp_len - (size_t)(cl + 19 - resp));
        resp_len -= 19;
    }
    st = tms_new(tms_http_stream_t);
    st->conn = c;
    st->closed = closed;
    st->arg = arg;
    c->stream = st;
    c->req = NULL;
    c->phase = PH_STREAM;
    s->inflight--;
    log_request(s, req, status);
    req_free(r);
    conn_write(c, resp, resp_len, false, false);
    free(resp);
    if (!c->closing)
        read_start(c); /* to see the client go */
    return st;
}

int tms_http_stream_write(tms_http_stream_t *st, const char *data, size_t len)
{
    conn_t *c = st->conn;
    if (!c || c->closing)
        return -1;
    if (len == 0)
        return 0;
    st->queued += len; /* counted off in on_write */
    conn_write_ex(c, data, len, false, false, len);
    if (c->closing)
        return -1;
    /* A client that does not read would hold its bytes for as long as it liked. */
    if (!c->due)
        timer_restart(c, c->srv->limits.send_timeout_ms, on_conn_timeout);
    return 0;
}

size_t tms_http_stream_queued(const tms_http_stream_t *st)
{
    /* What the socket has not taken: a burst the kernel takes at once is not queued,
     * though its write callbacks come on the next turn of the loop. */
    return st->conn ? uv_stream_get_write_queue_size((const uv_stream_t *)&st->conn->tcp) : 0;
}

void tms_http_stream_end(tms_http_stream_t *st)
{
    conn_t *c = st->conn;
    if (!c) {
        free(st);
        return;
    }
    st->closed = NULL; /* the owner is done: freed with the connection */
    c->phase = PH_WRITING;
    if (!c->closing) /* the final (empty) write lingers once everything is out */
        conn_write(c, "", 0, true, true);
}

void tms_http_respond_error(tms_http_request_t *req, tms_status_t code, const char *message,
                            const tms_http_header_t *headers, size_t nheaders)
{
    tms_http_respond_error_status(req, tms_status_http(code), code, message, headers, nheaders);
}

void tms_http_respond_error_status(tms_http_request_t *req, int status, tms_status_t code,
                                   const char *message, const tms_http_header_t *headers,
                                   size_t nheaders)
{
    size_t len;
    char *body = error_body(code, message, &len);
    tms_http_respond(req, status, headers, nheaders, "application/json", body, len);
    free(body);
}

void tms_http_server_stop(tms_http_server_t *s, uint64_t grace_ms, void (*on_stopped)(void *arg),
                          void *arg)
{
    if (!tms_listener_stop(&s->lis, s->loop, grace_ms, on_stopped, arg))
        return;
    /* Gathered responses go out first; from now on every response closes its
     * connection, so none is gathered again and the handle can go. */
    tms_flush_later_run(&s->uncork);
    tms_flush_later_close(&s->uncork);
    for (conn_t *c = s->conns; c; c = c->next) {
        if (c->phase != PH_HANDLER && c->phase != PH_WRITING && c->phase != PH_LINGER)
            conn_close(c);
    }
    tms_listener_maybe_stopped(&s->lis);
}

void tms_http_server_free(tms_http_server_t **sp)
{
    tms_http_server_t *s;
    if (!sp || !*sp)
        return;
    s = *sp;
    if (!s->lis.stopped) {
        tms_log_error("http_free", "error=\"server freed before stop completed; leaking it\"");
        *sp = NULL;
        return;
    }
    tms_flush_later_close(&s->uncork); /* stopped without tms_http_server_stop */
    while (s->spare) {
        hreq_t *r = s->spare;
        s->spare = r->next_spare;
        free(r->buf);
        free(r->hoff);
        free(r->hdrs);
        free(r);
    }
    while (s->metrics) {
        metric_entry_t *e = s->metrics;
        s->metrics = e->next;
        free(e->route);
        free(e->method);
        free(e);
    }
    /* The gauge must not read freed memory; a stopped server has no connections. */
    tms_metrics_gauge_fn("tms_http_connections", "Open HTTP/1.1 connections", s->gauge_labels,
                         zero_gauge, NULL);
    free(s);
    *sp = NULL;
}

size_t tms_http_server_inflight(tms_http_server_t *s)
{
    return s->inflight;
}

size_t tms_http_server_connections(tms_http_server_t *s)
{
    return s->nconns;
}
