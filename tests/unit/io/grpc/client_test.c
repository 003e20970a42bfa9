/* Tests of the gRPC client (src/io/grpc/client.c) against the real TMS gRPC server
 * (src/io/grpc/server.c) on the same loop, with a fake gateway mailbox that answers,
 * fails or holds the calls the server forwards to it. */
#include <arpa/inet.h>
#include <inttypes.h>
#include <netdb.h>
#include <nghttp2/nghttp2.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#include "core/api.h"
#include "core/mailbox.h"
#include "core/metrics.h"
#include "core/status.h"
#include "io/grpc/client.h"
#include "io/grpc/server.h"
#include "io/grpc/service.h"
#include "io/grpc/wire.h"
#include "task.pb-c.h"
#include "test.h"
#include "test_loop.h"

#define HELD_MAX 64

static uv_loop_t *loop;

/* ---- the fake gateway ---- */

typedef enum gw_mode {
    GW_ANSWER = 0,       /* a task with the requested id */
    GW_FAIL,             /* fail_code / fail_msg */
    GW_FAIL_THEN_ANSWER, /* fail the first fail_times arrivals, then answer */
    GW_HOLD,             /* keep the call until the test replies */
} gw_mode_t;

typedef struct gateway {
    tms_mailbox_t *mb;
    gw_mode_t mode;
    int arrivals;
    tms_status_t fail_code;
    const char *fail_msg;
    int fail_times;
    size_t desc_len; /* answer with a description this long */
    tms_api_call_t *held[HELD_MAX];
    int nheld;
    int64_t last_task_id;
} gateway_t;

static void answer(gateway_t *gw, tms_api_call_t *call)
{
    call->task.id = call->task_id;
    call->task.title = tms_api_call_strdup(call, "hello");
    call->task.description = tms_arena_alloc(&call->arena, gw->desc_len + 1);
    memset(call->task.description, 'd', gw->desc_len);
    call->task.description[gw->desc_len] = '\0';
    snprintf(call->task.status, sizeof(call->task.status), "open");
    call->task.version = 1;
    tms_mailbox_reply(&call->msg);
}

static void on_gateway(void *owner, tms_msg_t *msg)
{
    gateway_t *gw = owner;
    tms_api_call_t *call = (tms_api_call_t *)msg;
    if (msg->kind != TMS_MSG_REQUEST)
        return;
    gw->arrivals++;
    gw->last_task_id = call->task_id;
    switch (gw->mode) {
    case GW_ANSWER:
        answer(gw, call);
        break;
    case GW_FAIL:
        tms_api_fail(call, gw->fail_code, "%s", gw->fail_msg);
        break;
    case GW_FAIL_THEN_ANSWER:
        if (gw->arrivals <= gw->fail_times)
            tms_api_fail(call, gw->fail_code, "%s", gw->fail_msg);
        else
            answer(gw, call);
        break;
    case GW_HOLD:
        if (gw->nheld < HELD_MAX)
            gw->held[gw->nheld++] = call;
        else
            tms_api_fail(call, TMS_INTERNAL, "test holds too many");
        break;
    }
}

/* Answer every held call (the server drops answers nobody waits for). */
static void release_held(gateway_t *gw)
{
    for (int i = 0; i < gw->nheld; i++)
        answer(gw, gw->held[i]);
    gw->nheld = 0;
}

/* ---- the loop ---- */

typedef bool (*pred_fn)(void *arg);

/* The test's loop (tests/unit/test_loop.h): until pred(arg) holds or timeout_ms passed;
 * returns pred(arg). */
static bool run_until(pred_fn pred, void *arg, int timeout_ms)
{
    return tms_test_run_until(loop, pred, arg, timeout_ms);
}

static void run_for(int ms)
{
    tms_test_spin(loop, ms);
}

/* ---- one call's result ---- */

typedef struct result {
    int n; /* done calls: must end at 1 */
    int status;
    char message[256];
    uint8_t resp[256];
    size_t resp_len;
    uint64_t at_ms;
    bool client_closed_first; /* on_closed had run before done: wrong */
} result_t;

static bool g_closed;

static void on_done(void *ctx, int status, const char *message, const uint8_t *resp,
                    size_t resp_len)
{
    result_t *r = ctx;
    r->n++;
    r->status = status;
    snprintf(r->message, sizeof(r->message), "%s", message ? message : "(null)");
    r->resp_len = resp_len;
    if (resp && resp_len <= sizeof(r->resp))
        memcpy(r->resp, resp, resp_len);
    r->at_ms = uv_now(loop);
    r->client_closed_first = g_closed;
}

static bool is_done(void *arg)
{
    return ((result_t *)arg)->n > 0;
}

typedef struct many {
    result_t *r;
    int n;
} many_t;

static bool all_done(void *arg)
{
    many_t *m = arg;
    for (int i = 0; i < m->n; i++) {
        if (m->r[i].n == 0)
            return false;
    }
    return true;
}

static bool held_at_least(void *arg)
{
    gateway_t *gw = arg;
    return gw->nheld >= gw->fail_times; /* fail_times doubles as "wanted" in HOLD tests */
}

/* ---- fixtures ---- */

typedef struct server {
    gateway_t gw;
    tms_grpc_server_t *srv;
    tms_grpc_service_t *api;
    int port;
    bool stopped;
} server_t;

static void server_start(server_t *s, const char *addr, uint32_t max_streams)
{
    tms_grpc_config_t cfg = {0};
    memset(s, 0, sizeof(*s));
    s->gw.mb = tms_mailbox_new(loop, "gateway", 256, on_gateway, &s->gw);
    s->api = tms_grpc_service_new(
        loop, &(tms_grpc_service_config_t){.gateway = s->gw.mb, .call_timeout_ms = 10000});
    cfg.handler = tms_grpc_service_handler(s->api);
    cfg.max_concurrent_streams = max_streams;
    s->srv = tms_grpc_server_new(loop, &cfg);
    CHECK_EQ_INT(tms_grpc_server_listen(s->srv, addr), 0);
    s->port = tms_grpc_server_port(s->srv);
}

static void on_server_stopped(void *arg)
{
    ((server_t *)arg)->stopped = true;
}

static bool server_stopped(void *arg)
{
    return ((server_t *)arg)->stopped;
}

static bool server_idle(void *arg)
{
    return tms_grpc_server_busy(arg) == 0;
}

static void server_finish(server_t *s)
{
    release_held(&s->gw);
    if (!s->stopped) {
        tms_grpc_server_stop(s->srv, 100, on_server_stopped, s);
        CHECK(run_until(server_stopped, s, 3000));
    }
    CHECK(run_until(server_idle, s->srv, 3000));
    tms_grpc_server_free(&s->srv);
    tms_grpc_service_free(&s->api);
    tms_mailbox_close(s->gw.mb);
    tms_mailbox_free(&s->gw.mb);
    uv_run(loop, UV_RUN_NOWAIT);
}

static void on_client_closed(void *arg)
{
    *(bool *)arg = true;
    g_closed = true;
}

static bool flag_set(void *arg)
{
    return *(bool *)arg;
}

static void client_close(tms_grpc_client_t **c)
{
    bool closed = false;
    g_closed = false;
    tms_grpc_client_close(c, on_client_closed, &closed);
    CHECK(*c == NULL);
    CHECK(run_until(flag_set, &closed, 3000));
    g_closed = false;
}

static tms_grpc_client_t *client_new(const char *peer, int port, tms_grpc_client_options_t *o)
{
    char addr[64], err[256] = "";
    tms_grpc_client_options_t opt = o ? *o : (tms_grpc_client_options_t){0};
    tms_grpc_client_t *c;
    snprintf(addr, sizeof(addr), "127.0.0.1:%d", port);
    opt.peer = peer;
    opt.addr = addr; /* the client copies it */
    if (!opt.retry_base_ms)
        opt.retry_base_ms = 5;
    if (!opt.retry_max_ms)
        opt.retry_max_ms = 20;
    c = tms_grpc_client_new(loop, &opt, err, sizeof(err));
    if (!c)
        fprintf(stderr, "client_new: %s\n", err);
    CHECK(c != NULL);
    return c;
}

/* A GetTaskRequest{id} message. */
static size_t get_task_req(uint8_t *buf, const char *id)
{
    GetTaskRequest r = GET_TASK_REQUEST__INIT;
    r.id = (char *)id;
    return get_task_request__pack(&r, buf);
}

static uint64_t counter(const char *name, const char *labels)
{
    return tms_counter_value(tms_metrics_counter(name, "", labels));
}

static bool metrics_has(const char *line)
{
    size_t len;
    char *text = tms_metrics_render(&len);
    bool found = strstr(text, line) != NULL;
    if (!found)
        fprintf(stderr, "metrics lack: %s", line);
    free(text);
    return found;
}

static uint64_t deadline_in(uint64_t ms)
{
    uv_update_time(loop);
    return uv_now(loop) + ms;
}

/* ---- a raw HTTP/2 server: sees the request headers and answers what the real
 * server never would (HTTP errors, no grpc-status, REFUSED_STREAM) ---- */

typedef enum raw_mode {
    RAW_OK = 0,         /* one message, grpc-status 0 in trailers */
    RAW_HTTP_503,       /* :status 503, nothing else */
    RAW_NO_GRPC_STATUS, /* 200 and a message, then the end without trailers */
    RAW_REFUSE_FIRST,   /* RST_STREAM REFUSED_STREAM on the first stream, then RAW_OK */
} raw_mode_t;

typedef struct raw_server {
    uv_tcp_t listener;
    int port;
    raw_mode_t mode;
    int streams; /* requests seen */
    int conns;   /* connections open */
    /* the listener, until its close callback (it lives in this struct) */
    bool listening;
    char method[16], scheme[16], path[64], authority[64], ctype[64], te[16], timeout[16], token[64];
} raw_server_t;

typedef struct raw_conn {
    uv_tcp_t tcp;
    raw_server_t *srv;
    nghttp2_session *h2;
    bool closing;
    char rbuf[16384];
} raw_conn_t;

static void raw_flush(raw_conn_t *rc);

static void on_raw_closed(uv_handle_t *h)
{
    raw_conn_t *rc = h->data;
    rc->srv->conns--;
    nghttp2_session_del(rc->h2);
    free(rc);
}

static void raw_close(raw_conn_t *rc)
{
    if (rc->closing)
        return;
    rc->closing = true;
    uv_close((uv_handle_t *)&rc->tcp, on_raw_closed);
}

static void on_raw_write(uv_write_t *w, int status)
{
    free(w);
}

static void raw_flush(raw_conn_t *rc)
{
    const uint8_t *data;
    ssize_t n;
    while (!rc->closing && (n = nghttp2_session_mem_send(rc->h2, &data)) > 0) {
        uv_write_t *w = malloc(sizeof(*w) + (size_t)n);
        uv_buf_t b = uv_buf_init((char *)(w + 1), (unsigned)n);
        memcpy(w + 1, data, (size_t)n);
        if (uv_write(w, (uv_stream_t *)&rc->tcp, &b, 1, on_raw_write) < 0) {
            free(w);
            raw_close(rc);
        }
    }
}

static void copy_value(char *dst, size_t size, const uint8_t *v, size_t len)
{
    snprintf(dst, size, "%.*s", (int)len, (const char *)v);
}

static int on_raw_header(nghttp2_session *h2, const nghttp2_frame *frame, const uint8_t *name,
                         size_t namelen, const uint8_t *value, size_t valuelen, uint8_t flags,
                         void *user)
{
    raw_server_t *srv = ((raw_conn_t *)user)->srv;
    const char *n = (const char *)name;
#define RAW_IS(lit) (namelen == strlen(lit) && memcmp(n, lit, namelen) == 0)
    if (RAW_IS(":method"))
        copy_value(srv->method, sizeof(srv->method), value, valuelen);
    else if (RAW_IS(":scheme"))
        copy_value(srv->scheme, sizeof(srv->scheme), value, valuelen);
    else if (RAW_IS(":path"))
        copy_value(srv->path, sizeof(srv->path), value, valuelen);
    else if (RAW_IS(":authority"))
        copy_value(srv->authority, sizeof(srv->authority), value, valuelen);
    else if (RAW_IS("content-type"))
        copy_value(srv->ctype, sizeof(srv->ctype), value, valuelen);
    else if (RAW_IS("te"))
        copy_value(srv->te, sizeof(srv->te), value, valuelen);
    else if (RAW_IS("grpc-timeout"))
        copy_value(srv->timeout, sizeof(srv->timeout), value, valuelen);
    else if (RAW_IS("x-tms-service-token"))
        copy_value(srv->token, sizeof(srv->token), value, valuelen);
#undef RAW_IS
    return 0;
}

static const uint8_t raw_msg[] = {0, 0, 0, 0, 2, 0x08, 0x01};

static ssize_t on_raw_body(nghttp2_session *h2, int32_t id, uint8_t *buf, size_t length,
                           uint32_t *flags, nghttp2_data_source *source, void *user)
{
    raw_server_t *srv = ((raw_conn_t *)user)->srv;
    memcpy(buf, raw_msg, sizeof(raw_msg));
    *flags |= NGHTTP2_DATA_FLAG_EOF;
    if (srv->mode != RAW_NO_GRPC_STATUS) {
        nghttp2_nv t[] = {{(uint8_t *)"grpc-status", (uint8_t *)"0", 11, 1, 0}};
        *flags |= NGHTTP2_DATA_FLAG_NO_END_STREAM;
        nghttp2_submit_trailer(h2, id, t, 1);
    }
    return sizeof(raw_msg);
}

static int on_raw_frame(nghttp2_session *h2, const nghttp2_frame *frame, void *user)
{
    raw_server_t *srv = ((raw_conn_t *)user)->srv;
    nghttp2_nv ok[] = {{(uint8_t *)":status", (uint8_t *)"200", 7, 3, 0},
                       {(uint8_t *)"content-type", (uint8_t *)"application/grpc", 12, 16, 0}};
    nghttp2_nv unavailable[] = {{(uint8_t *)":status", (uint8_t *)"503", 7, 3, 0}};
    nghttp2_data_provider prd = {.read_callback = on_raw_body};
    if ((frame->hd.type != NGHTTP2_HEADERS && frame->hd.type != NGHTTP2_DATA) ||
        !(frame->hd.flags & NGHTTP2_FLAG_END_STREAM))
        return 0;
    srv->streams++;
    switch (srv->mode) {
    case RAW_HTTP_503:
        nghttp2_submit_response(h2, frame->hd.stream_id, unavailable, 1, NULL);
        break;
    case RAW_REFUSE_FIRST:
        if (srv->streams == 1) {
            nghttp2_submit_rst_stream(h2, NGHTTP2_FLAG_NONE, frame->hd.stream_id,
                                      NGHTTP2_REFUSED_STREAM);
            break;
        }
        /* fall through */
    case RAW_OK:
    case RAW_NO_GRPC_STATUS:
        nghttp2_submit_response(h2, frame->hd.stream_id, ok, 2, &prd);
        break;
    }
    return 0;
}

static void on_raw_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    raw_conn_t *rc = h->data;
    *buf = uv_buf_init(rc->rbuf, sizeof(rc->rbuf));
}

static void on_raw_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    raw_conn_t *rc = s->data;
    if (nread < 0) {
        raw_close(rc);
        return;
    }
    if (nread > 0 && nghttp2_session_mem_recv(rc->h2, (uint8_t *)buf->base, (size_t)nread) < 0) {
        raw_close(rc);
        return;
    }
    raw_flush(rc);
}

static void on_raw_connection(uv_stream_t *l, int status)
{
    raw_server_t *srv = l->data;
    raw_conn_t *rc = calloc(1, sizeof(*rc));
    nghttp2_session_callbacks *cb;
    rc->srv = srv;
    srv->conns++;
    uv_tcp_init(loop, &rc->tcp);
    rc->tcp.data = rc;
    nghttp2_session_callbacks_new(&cb);
    nghttp2_session_callbacks_set_on_header_callback(cb, on_raw_header);
    nghttp2_session_callbacks_set_on_frame_recv_callback(cb, on_raw_frame);
    nghttp2_session_server_new(&rc->h2, cb, rc);
    nghttp2_session_callbacks_del(cb);
    if (uv_accept(l, (uv_stream_t *)&rc->tcp) < 0) {
        raw_close(rc);
        return;
    }
    nghttp2_submit_settings(rc->h2, NGHTTP2_FLAG_NONE, NULL, 0);
    uv_read_start((uv_stream_t *)&rc->tcp, on_raw_alloc, on_raw_read);
    raw_flush(rc);
}

static void raw_start(raw_server_t *srv, raw_mode_t mode)
{
    struct sockaddr_in sa;
    struct sockaddr_storage ss;
    int len = sizeof(ss);
    memset(srv, 0, sizeof(*srv));
    srv->mode = mode;
    uv_ip4_addr("127.0.0.1", 0, &sa);
    uv_tcp_init(loop, &srv->listener);
    srv->listener.data = srv;
    srv->listening = true;
    CHECK_EQ_INT(uv_tcp_bind(&srv->listener, (struct sockaddr *)&sa, 0), 0);
    CHECK_EQ_INT(uv_listen((uv_stream_t *)&srv->listener, 16, on_raw_connection), 0);
    uv_tcp_getsockname(&srv->listener, (struct sockaddr *)&ss, &len);
    srv->port = ntohs(((struct sockaddr_in *)&ss)->sin_port);
}

static void on_listener_closed(uv_handle_t *h)
{
    ((raw_server_t *)h->data)->listening = false;
}

static bool raw_closed(void *arg)
{
    const raw_server_t *srv = arg;
    return srv->conns == 0 && !srv->listening;
}

/* Call after the client closed: its connections end, then ours, and the listener's
 * close completes (the struct is on the test's stack, reused by the next test). */
static void raw_finish(raw_server_t *srv)
{
    uv_close((uv_handle_t *)&srv->listener, on_listener_closed);
    CHECK(run_until(raw_closed, srv, 3000));
}

/* ---- tests ---- */

static void test_bad_options(void)
{
    char err[128];
    tms_grpc_client_options_t o = {.peer = "x", .addr = "nohostport"};
    CHECK(tms_grpc_client_new(loop, &o, err, sizeof(err)) == NULL);
    o.addr = "127.0.0.1:0";
    CHECK(tms_grpc_client_new(loop, &o, err, sizeof(err)) == NULL);
    o.addr = "::1:80"; /* a v6 address needs brackets */
    CHECK(tms_grpc_client_new(loop, &o, err, sizeof(err)) == NULL);
    o.addr = "[::1]:80";
    o.pool_size = -1;
    CHECK(tms_grpc_client_new(loop, &o, err, sizeof(err)) == NULL);
}

static void test_resolve_name(void)
{
    struct addrinfo hints = {.ai_socktype = SOCK_STREAM}, *res = NULL;
    char addr[64], err[128];
    server_t s;
    result_t r = {0};
    tms_grpc_client_options_t o = {.peer = "named"};
    tms_grpc_client_t *c;
    /* The client connects to the first address of the name: listen there. */
    CHECK_EQ_INT(getaddrinfo("localhost", "1", &hints, &res), 0);
    if (!res)
        return;
    server_start(&s, res->ai_family == AF_INET6 ? "[::1]:0" : "127.0.0.1:0", 0);
    freeaddrinfo(res);
    snprintf(addr, sizeof(addr), "localhost:%d", s.port);
    o.addr = addr;
    c = tms_grpc_client_new(loop, &o, err, sizeof(err));
    CHECK(c != NULL);
    tms_grpc_client_call(c, "/grpc.health.v1.Health/Check", NULL, 0, deadline_in(2000), true,
                         on_done, &r);
    CHECK(run_until(is_done, &r, 3000));
    CHECK_EQ_INT(r.status, TMS_OK);
    client_close(&c);
    server_finish(&s);
}

static void test_unary_ok(void)
{
    server_t s;
    result_t health = {0}, task = {0};
    uint8_t req[64];
    tms_grpc_client_options_t o = {.credential = "svc-secret"};
    tms_grpc_client_t *c;
    server_start(&s, "127.0.0.1:0", 0);
    c = client_new("ok", s.port, &o);
    CHECK(tms_grpc_client_healthy(c));
    /* HealthCheckRequest{} is the empty message. */
    tms_grpc_client_call(c, "/grpc.health.v1.Health/Check", NULL, 0, deadline_in(2000), true,
                         on_done, &health);
    CHECK_EQ_INT(health.n, 0); /* never inside the call */
    CHECK_EQ_INT(tms_grpc_client_busy(c), 1);
    CHECK(run_until(is_done, &health, 3000));
    CHECK_EQ_INT(health.status, TMS_OK);
    CHECK_EQ_INT(health.resp_len, 2);
    CHECK(health.resp[0] == 0x08 && health.resp[1] == 1); /* status SERVING */

    tms_grpc_client_call(c, "/TaskService/GetTask", req, get_task_req(req, "42"), deadline_in(2000),
                         true, on_done, &task);
    CHECK(run_until(is_done, &task, 3000));
    CHECK_EQ_INT(task.status, TMS_OK);
    CHECK_EQ_STR(task.message, "");
    CHECK_EQ_INT(s.gw.arrivals, 1);
    CHECK_EQ_INT(s.gw.last_task_id, 42);
    Task *t = task__unpack(NULL, task.resp_len, task.resp);
    CHECK(t != NULL);
    if (t) {
        CHECK_EQ_STR(t->id, "42");
        CHECK_EQ_STR(t->title, "hello");
        task__free_unpacked(t, NULL);
    }
    run_for(20);
    CHECK_EQ_INT(health.n, 1);
    CHECK_EQ_INT(task.n, 1);
    CHECK_EQ_INT(tms_grpc_client_busy(c), 0);
    CHECK(tms_grpc_client_healthy(c));
    CHECK(counter("tms_grpc_client_calls_total", "peer=\"ok\",code=\"OK\"") == 2);
    client_close(&c);
    server_finish(&s);
}

static void test_status_and_message(void)
{
    server_t s;
    result_t r = {0};
    uint8_t req[64];
    tms_grpc_client_t *c;
    server_start(&s, "127.0.0.1:0", 0);
    s.gw.mode = GW_FAIL;
    s.gw.fail_code = TMS_NOT_FOUND;
    s.gw.fail_msg = "task 42: 100% caf\xc3\xa9\nnot found";
    c = client_new("status", s.port, NULL);
    tms_grpc_client_call(c, "/TaskService/GetTask", req, get_task_req(req, "42"), deadline_in(2000),
                         true, on_done, &r);
    CHECK(run_until(is_done, &r, 3000));
    CHECK_EQ_INT(r.status, TMS_NOT_FOUND);
    CHECK_EQ_STR(r.message, "task 42: 100% caf\xc3\xa9\nnot found");
    CHECK_EQ_INT(r.resp_len, 0);
    CHECK_EQ_INT(s.gw.arrivals, 1); /* an answer, not a failure: never retried */
    /* A method the server does not know: its status comes through as well. */
    memset(&r, 0, sizeof(r));
    tms_grpc_client_call(c, "/TaskService/Nope", req, 0, deadline_in(2000), true, on_done, &r);
    CHECK(run_until(is_done, &r, 3000));
    CHECK_EQ_INT(r.status, TMS_UNIMPLEMENTED);
    client_close(&c);
    server_finish(&s);
}

static void test_deadline(void)
{
    server_t s;
    result_t r = {0}, w = {0};
    uint8_t req[64];
    uint64_t start;
    char labels[128];
    tms_grpc_client_t *c;
    server_start(&s, "127.0.0.1:0", 0);
    s.gw.mode = GW_HOLD;
    c = client_new("deadline", s.port, NULL);
    start = deadline_in(0);
    tms_grpc_client_call(c, "/TaskService/GetTask", req, get_task_req(req, "7"), start + 150, true,
                         on_done, &r);
    s.gw.fail_times = 1;
    CHECK(run_until(held_at_least, &s.gw, 3000));
    /* grpc-timeout carried the deadline: the server's copy is within a few ms. */
    CHECK(s.gw.nheld == 1 && s.gw.held[0]->deadline_ms + 20 >= start + 150 &&
          s.gw.held[0]->deadline_ms <= start + 150 + 20);
    CHECK(run_until(is_done, &r, 3000));
    CHECK_EQ_INT(r.status, TMS_DEADLINE_EXCEEDED);
    CHECK(r.at_ms >= start + 150 && r.at_ms < start + 1000);
    CHECK_EQ_INT(s.gw.arrivals, 1); /* a deadline is not retried */
    /* The server must see the stream reset: Watch has no deadline of its own there, so
     * only our RST_STREAM ends it (the server counts it CANCELLED). */
    snprintf(labels, sizeof(labels), "method=\"%s\",code=\"CANCELLED\"",
             "/grpc.health.v1.Health/Watch");
    uint64_t before = counter("tms_grpc_requests_total", labels);
    tms_grpc_client_call(c, "/grpc.health.v1.Health/Watch", NULL, 0, deadline_in(100), true,
                         on_done, &w);
    CHECK(run_until(is_done, &w, 3000));
    CHECK_EQ_INT(w.status, TMS_DEADLINE_EXCEEDED);
    run_for(50);
    CHECK_EQ_INT(counter("tms_grpc_requests_total", labels), before + 1);
    CHECK_EQ_INT(r.n, 1);
    CHECK_EQ_INT(w.n, 1);
    client_close(&c);
    server_finish(&s);
}

static bool held_cancelled(void *arg)
{
    gateway_t *gw = arg;
    return gw->nheld > 0 && gw->held[0]->cancel && gw->held[0]->cancel->cancelled;
}

static void test_cancel(void)
{
    server_t s;
    result_t r = {0};
    uint8_t req[64];
    tms_grpc_client_t *c;
    tms_grpc_client_call_t *call;
    server_start(&s, "127.0.0.1:0", 0);
    s.gw.mode = GW_HOLD;
    s.gw.fail_times = 1;
    c = client_new("cancel", s.port, NULL);
    call = tms_grpc_client_call(c, "/TaskService/GetTask", req, get_task_req(req, "9"), 0, false,
                                on_done, &r);
    CHECK(run_until(held_at_least, &s.gw, 3000));
    tms_grpc_client_cancel(call);
    CHECK_EQ_INT(r.n, 0); /* later, not in the caller's frame */
    CHECK(run_until(is_done, &r, 3000));
    CHECK_EQ_INT(r.status, TMS_CANCELLED);
    /* The server saw RST_STREAM: it flagged the call it gave the gateway. */
    CHECK(run_until(held_cancelled, &s.gw, 3000));
    run_for(20);
    CHECK_EQ_INT(r.n, 1);
    CHECK_EQ_INT(tms_grpc_client_busy(c), 0);
    client_close(&c);
    server_finish(&s);
}

static int free_port(void)
{
    uv_tcp_t t;
    struct sockaddr_in sa;
    struct sockaddr_storage ss;
    int len = sizeof(ss), port = -1;
    uv_ip4_addr("127.0.0.1", 0, &sa);
    uv_tcp_init(loop, &t);
    if (uv_tcp_bind(&t, (struct sockaddr *)&sa, 0) == 0 &&
        uv_tcp_getsockname(&t, (struct sockaddr *)&ss, &len) == 0)
        port = ntohs(((struct sockaddr_in *)&ss)->sin_port);
    uv_close((uv_handle_t *)&t, NULL);
    uv_run(loop, UV_RUN_NOWAIT);
    return port;
}

static void test_refused_and_breaker(void)
{
    tms_grpc_client_options_t o = {.retry_attempts = 3,
                                   .breaker_window = 4,
                                   .breaker_threshold_pct = 50,
                                   .breaker_cooldown_ms = 300};
    result_t r1 = {0}, r2 = {0}, r3 = {0}, r4 = {0}, r5 = {0};
    const char *fails = "peer=\"refused\"";
    int port = free_port();
    uint64_t retries0, fails0, t0;
    char addr[64];
    server_t s;
    tms_grpc_client_t *c;
    CHECK(port > 0);
    c = client_new("refused", port, &o);
    retries0 = counter("tms_grpc_client_retries_total", fails);
    fails0 = counter("tms_grpc_client_connect_failures_total", fails);
    tms_grpc_client_call(c, "/grpc.health.v1.Health/Check", NULL, 0, 0, false, on_done, &r1);
    CHECK(run_until(is_done, &r1, 3000));
    CHECK_EQ_INT(r1.status, TMS_UNAVAILABLE);
    CHECK(strstr(r1.message, "refused") != NULL);
    /* Three attempts in all, each a new connection: retried although not
     * idempotent, since no byte of it left. */
    CHECK_EQ_INT(counter("tms_grpc_client_retries_total", fails) - retries0, 2);
    CHECK_EQ_INT(counter("tms_grpc_client_connect_failures_total", fails) - fails0, 3);
    CHECK(tms_grpc_client_healthy(c) == false);
    /* The fourth failure fills the window: the breaker opens, the retry is refused. */
    tms_grpc_client_call(c, "/grpc.health.v1.Health/Check", NULL, 0, 0, true, on_done, &r2);
    CHECK(run_until(is_done, &r2, 3000));
    CHECK_EQ_INT(r2.status, TMS_UNAVAILABLE);
    CHECK_EQ_STR(r2.message, "peer refused unavailable: circuit open");
    CHECK_EQ_INT(counter("tms_grpc_client_connect_failures_total", fails) - fails0, 4);
    CHECK_EQ_INT(
        counter("tms_grpc_client_breaker_transitions_total", "peer=\"refused\",to=\"open\""), 1);
    /* Open: fails fast (next loop turn), with no connection attempt. */
    t0 = deadline_in(0);
    tms_grpc_client_call(c, "/grpc.health.v1.Health/Check", NULL, 0, 0, true, on_done, &r3);
    CHECK_EQ_INT(r3.n, 0);
    CHECK(run_until(is_done, &r3, 3000));
    CHECK_EQ_INT(r3.status, TMS_UNAVAILABLE);
    CHECK_EQ_STR(r3.message, "peer refused unavailable: circuit open");
    CHECK(r3.at_ms - t0 < 50);
    CHECK_EQ_INT(counter("tms_grpc_client_connect_failures_total", fails) - fails0, 4);
    CHECK(!tms_grpc_client_healthy(c));
    CHECK(metrics_has("tms_grpc_client_breaker_state{peer=\"refused\"} 1\n"));
    /* The peer comes back; after the cool-down one probe goes through and closes the
     * breaker, while a second call at the same time is still refused. */
    snprintf(addr, sizeof(addr), "127.0.0.1:%d", port);
    server_start(&s, addr, 0);
    run_for(350);
    tms_grpc_client_call(c, "/grpc.health.v1.Health/Check", NULL, 0, deadline_in(2000), true,
                         on_done, &r4);
    tms_grpc_client_call(c, "/grpc.health.v1.Health/Check", NULL, 0, deadline_in(2000), true,
                         on_done, &r5);
    CHECK(run_until(is_done, &r4, 3000));
    CHECK(run_until(is_done, &r5, 3000));
    CHECK_EQ_INT(r4.status, TMS_OK);
    CHECK_EQ_INT(r5.status, TMS_UNAVAILABLE);
    CHECK_EQ_STR(r5.message, "peer refused unavailable: circuit open");
    CHECK(tms_grpc_client_healthy(c));
    CHECK_EQ_INT(
        counter("tms_grpc_client_breaker_transitions_total", "peer=\"refused\",to=\"closed\""), 1);
    memset(&r4, 0, sizeof(r4));
    tms_grpc_client_call(c, "/grpc.health.v1.Health/Check", NULL, 0, deadline_in(2000), true,
                         on_done, &r4);
    CHECK(run_until(is_done, &r4, 3000));
    CHECK_EQ_INT(r4.status, TMS_OK);
    CHECK(r1.n == 1 && r2.n == 1 && r3.n == 1 && r5.n == 1);
    client_close(&c);
    CHECK(metrics_has("tms_grpc_client_connections_up{peer=\"refused\"} 0\n"));
    server_finish(&s);
}

static void test_retry_rules(void)
{
    tms_grpc_client_options_t o = {.retry_attempts = 3, .breaker_window = 40};
    server_t s;
    result_t r = {0};
    uint8_t req[64];
    size_t n = get_task_req(req, "5");
    tms_grpc_client_t *c;
    server_start(&s, "127.0.0.1:0", 0);
    s.gw.mode = GW_FAIL;
    s.gw.fail_code = TMS_UNAVAILABLE;
    s.gw.fail_msg = "busy";
    c = client_new("retry", s.port, &o);
    /* Sent, not idempotent: the peer may have applied it, so once only. */
    tms_grpc_client_call(c, "/TaskService/GetTask", req, n, deadline_in(2000), false, on_done, &r);
    CHECK(run_until(is_done, &r, 3000));
    CHECK_EQ_INT(r.status, TMS_UNAVAILABLE);
    CHECK_EQ_STR(r.message, "busy");
    CHECK_EQ_INT(s.gw.arrivals, 1);
    /* Idempotent: every attempt. */
    s.gw.arrivals = 0;
    memset(&r, 0, sizeof(r));
    tms_grpc_client_call(c, "/TaskService/GetTask", req, n, deadline_in(2000), true, on_done, &r);
    CHECK(run_until(is_done, &r, 3000));
    CHECK_EQ_INT(r.status, TMS_UNAVAILABLE);
    CHECK_EQ_INT(s.gw.arrivals, 3);
    /* Idempotent, the peer recovers: the retry answers. */
    s.gw.arrivals = 0;
    s.gw.mode = GW_FAIL_THEN_ANSWER;
    s.gw.fail_times = 1;
    memset(&r, 0, sizeof(r));
    tms_grpc_client_call(c, "/TaskService/GetTask", req, n, deadline_in(2000), true, on_done, &r);
    CHECK(run_until(is_done, &r, 3000));
    CHECK_EQ_INT(r.status, TMS_OK);
    CHECK_EQ_INT(s.gw.arrivals, 2);
    /* Other errors are answers: not retried even when idempotent. */
    s.gw.arrivals = 0;
    s.gw.mode = GW_FAIL;
    s.gw.fail_code = TMS_INTERNAL;
    memset(&r, 0, sizeof(r));
    tms_grpc_client_call(c, "/TaskService/GetTask", req, n, deadline_in(2000), true, on_done, &r);
    CHECK(run_until(is_done, &r, 3000));
    CHECK_EQ_INT(r.status, TMS_INTERNAL);
    CHECK_EQ_INT(s.gw.arrivals, 1);
    /* Never past the deadline: the back-off would end after it. */
    s.gw.arrivals = 0;
    s.gw.fail_code = TMS_UNAVAILABLE;
    o.retry_base_ms = 10000;
    o.retry_max_ms = 10000;
    client_close(&c);
    c = client_new("retry", s.port, &o);
    memset(&r, 0, sizeof(r));
    uint64_t t0 = deadline_in(0);
    tms_grpc_client_call(c, "/TaskService/GetTask", req, n, t0 + 300, true, on_done, &r);
    CHECK(run_until(is_done, &r, 3000));
    /* Either no retry fits (UNAVAILABLE at once) or the few that do fit failed the
     * same way; waiting into the deadline would end DEADLINE_EXCEEDED. */
    CHECK_EQ_INT(r.status, TMS_UNAVAILABLE);
    CHECK(r.at_ms < t0 + 300);
    client_close(&c);
    server_finish(&s);
}

static void test_goaway(void)
{
    tms_grpc_client_options_t o = {.pool_size = 1, .breaker_window = 40};
    server_t a, b;
    result_t r[3] = {{0}};
    many_t all = {r, 3};
    uint8_t req[64];
    size_t n = get_task_req(req, "3");
    char addr[64];
    uint64_t retries0;
    tms_grpc_client_t *c;
    server_start(&a, "127.0.0.1:0", 0);
    a.gw.mode = GW_HOLD;
    a.gw.fail_times = 1;
    c = client_new("goaway", a.port, &o);
    retries0 = counter("tms_grpc_client_retries_total", "peer=\"goaway\"");
    tms_grpc_client_call(c, "/TaskService/GetTask", req, n, deadline_in(3000), false, on_done,
                         &r[0]);
    CHECK(run_until(held_at_least, &a.gw, 3000));
    /* The new process listens on the same port (SO_REUSEPORT) before the old one
     * stops: a graceful restart. */
    snprintf(addr, sizeof(addr), "127.0.0.1:%d", a.port);
    server_start(&b, addr, 0);
    /* Two more streams reach the old server's socket in this very turn, before it
     * reads them; its GOAWAY names stream 1 as the last it will process. */
    tms_grpc_client_call(c, "/TaskService/GetTask", req, n, deadline_in(3000), false, on_done,
                         &r[1]);
    tms_grpc_client_call(c, "/TaskService/GetTask", req, n, deadline_in(3000), false, on_done,
                         &r[2]);
    tms_grpc_server_stop(a.srv, 3000, on_server_stopped, &a);
    run_for(100);
    CHECK_EQ_INT(a.gw.arrivals, 1);
    release_held(&a.gw); /* the old server finishes the stream it took */
    CHECK(run_until(all_done, &all, 3000));
    for (int i = 0; i < 3; i++) {
        CHECK_EQ_INT(r[i].status, TMS_OK);
        CHECK_EQ_INT(r[i].n, 1);
    }
    CHECK_EQ_INT(a.gw.arrivals, 1); /* nothing applied twice */
    CHECK_EQ_INT(b.gw.arrivals, 2); /* the refused streams, on a new connection */
    CHECK_EQ_INT(counter("tms_grpc_client_retries_total", "peer=\"goaway\"") - retries0, 2);
    CHECK(run_until(server_stopped, &a, 3000));
    client_close(&c);
    server_finish(&a);
    server_finish(&b);
}

static void test_oversized(void)
{
    tms_grpc_client_options_t o = {.max_message_bytes = 200};
    server_t s;
    result_t r = {0};
    uint8_t req[64];
    tms_grpc_client_t *c;
    server_start(&s, "127.0.0.1:0", 0);
    s.gw.desc_len = 5000;
    c = client_new("big", s.port, &o);
    tms_grpc_client_call(c, "/TaskService/GetTask", req, get_task_req(req, "1"), deadline_in(2000),
                         true, on_done, &r);
    CHECK(run_until(is_done, &r, 3000));
    CHECK_EQ_INT(r.status, TMS_RESOURCE_EXHAUSTED);
    CHECK_EQ_INT(r.resp_len, 0);
    CHECK_EQ_INT(s.gw.arrivals, 1);
    /* Just below the limit passes, on the same connection. */
    s.gw.desc_len = 100;
    memset(&r, 0, sizeof(r));
    tms_grpc_client_call(c, "/TaskService/GetTask", req, get_task_req(req, "1"), deadline_in(2000),
                         true, on_done, &r);
    CHECK(run_until(is_done, &r, 3000));
    CHECK_EQ_INT(r.status, TMS_OK);
    client_close(&c);
    server_finish(&s);
}

static void test_pool_spread(void)
{
    enum { CALLS = 20, POOL = 4 };
    tms_grpc_client_options_t o = {.pool_size = POOL, .breaker_window = 40};
    server_t s;
    result_t r[CALLS];
    many_t all = {r, CALLS};
    uint8_t req[64];
    size_t n = get_task_req(req, "11");
    uint64_t retries0 = counter("tms_grpc_client_retries_total", "peer=\"pool\"");
    tms_grpc_client_t *c;
    memset(r, 0, sizeof(r));
    /* At most 5 streams per connection: 20 calls held at once need all 4. */
    server_start(&s, "127.0.0.1:0", CALLS / POOL);
    s.gw.mode = GW_HOLD;
    s.gw.fail_times = CALLS;
    c = client_new("pool", s.port, &o);
    for (int i = 0; i < CALLS; i++)
        tms_grpc_client_call(c, "/TaskService/GetTask", req, n, deadline_in(3000), false, on_done,
                             &r[i]);
    CHECK_EQ_INT(tms_grpc_client_busy(c), CALLS);
    CHECK(run_until(held_at_least, &s.gw, 3000));
    CHECK_EQ_INT(s.gw.nheld, CALLS);
    /* busy = calls with the gateway + connections: exactly the pool. */
    CHECK_EQ_INT(tms_grpc_server_busy(s.srv), CALLS + POOL);
    CHECK_EQ_INT(counter("tms_grpc_client_retries_total", "peer=\"pool\"") - retries0, 0);
    CHECK(metrics_has("tms_grpc_client_connections_up{peer=\"pool\"} 4\n"));
    CHECK(metrics_has("tms_grpc_client_breaker_state{peer=\"pool\"} 0\n"));
    release_held(&s.gw);
    CHECK(run_until(all_done, &all, 3000));
    for (int i = 0; i < CALLS; i++)
        CHECK(r[i].n == 1 && r[i].status == TMS_OK);
    CHECK_EQ_INT(tms_grpc_client_busy(c), 0);
    client_close(&c);
    server_finish(&s);
}

/* Write system calls this process has made (/proc/self/io syscw). */
static long write_calls(void)
{
    char line[128];
    long n = -1;
    FILE *f = fopen("/proc/self/io", "r");
    while (f && fgets(line, sizeof(line), f)) {
        if (strncmp(line, "syscw:", 6) == 0)
            n = atol(line + 6);
    }
    if (f)
        fclose(f);
    return n;
}

/* Calls started in one turn of the loop on one connection leave in one write, not one
 * each (a gateway answering many clients at once calls one role many times). */
static void test_calls_of_one_turn_share_a_write(void)
{
    enum { CALLS = 40 };
    tms_grpc_client_options_t o = {.pool_size = 1};
    server_t s;
    result_t first = {0}, r[CALLS];
    many_t all = {r, CALLS};
    uint8_t req[64];
    size_t n = get_task_req(req, "12");
    long w0, writes;
    tms_grpc_client_t *c;
    memset(r, 0, sizeof(r));
    server_start(&s, "127.0.0.1:0", CALLS + 1);
    c = client_new("turn", s.port, &o);
    /* the connection up first: its handshake is writes of its own */
    tms_grpc_client_call(c, "/TaskService/GetTask", req, n, deadline_in(3000), false, on_done,
                         &first);
    CHECK(run_until(is_done, &first, 3000));
    CHECK_EQ_INT(first.status, TMS_OK);
    run_for(20);
    s.gw.mode = GW_HOLD; /* the server's replies wait: what is written is the client's */
    s.gw.fail_times = CALLS;
    w0 = write_calls();
    for (int i = 0; i < CALLS; i++)
        tms_grpc_client_call(c, "/TaskService/GetTask", req, n, deadline_in(3000), false, on_done,
                             &r[i]);
    CHECK(run_until(held_at_least, &s.gw, 3000));
    writes = write_calls() - w0;
    CHECK(w0 >= 0);
    if (writes >= 10)
        fprintf(stderr, "%ld write calls for %d calls started in one turn\n", writes, CALLS);
    CHECK(writes < 10);
    release_held(&s.gw);
    CHECK(run_until(all_done, &all, 3000));
    for (int i = 0; i < CALLS; i++)
        CHECK(r[i].n == 1 && r[i].status == TMS_OK);
    client_close(&c);
    server_finish(&s);
}

static void test_request_headers(void)
{
    tms_grpc_client_options_t o = {.credential = "svc-secret"};
    raw_server_t raw;
    result_t r = {0};
    char authority[64];
    uint64_t ms = 0;
    tms_grpc_client_t *c;
    raw_start(&raw, RAW_OK);
    c = client_new("raw", raw.port, &o);
    tms_grpc_client_call(c, "/grpc.health.v1.Health/Check", NULL, 0, deadline_in(2000), false,
                         on_done, &r);
    CHECK(run_until(is_done, &r, 3000));
    CHECK_EQ_INT(r.status, TMS_OK);
    CHECK(r.resp_len == 2 && r.resp[0] == 0x08 && r.resp[1] == 1);
    snprintf(authority, sizeof(authority), "127.0.0.1:%d", raw.port);
    CHECK_EQ_STR(raw.method, "POST");
    CHECK_EQ_STR(raw.scheme, "http");
    CHECK_EQ_STR(raw.path, "/grpc.health.v1.Health/Check");
    CHECK_EQ_STR(raw.authority, authority);
    CHECK_EQ_STR(raw.ctype, "application/grpc");
    CHECK_EQ_STR(raw.te, "trailers");
    CHECK_EQ_STR(raw.token, "svc-secret");
    CHECK(raw.timeout[0] && raw.timeout[strlen(raw.timeout) - 1] == 'm');
    CHECK_EQ_INT(tms_grpc_timeout_parse(raw.timeout, &ms), 0);
    CHECK(ms > 1900 && ms <= 2000);
    client_close(&c);
    /* No credential, no deadline: neither header. */
    raw.token[0] = raw.timeout[0] = '\0';
    c = client_new("raw", raw.port, NULL);
    memset(&r, 0, sizeof(r));
    tms_grpc_client_call(c, "/x/y", NULL, 0, 0, false, on_done, &r);
    CHECK(run_until(is_done, &r, 3000));
    CHECK_EQ_INT(r.status, TMS_OK);
    CHECK_EQ_STR(raw.token, "");
    CHECK_EQ_STR(raw.timeout, "");
    client_close(&c);
    raw_finish(&raw);
}

static void test_http_mapping(void)
{
    tms_grpc_client_options_t o = {.retry_attempts = 3, .breaker_window = 40};
    raw_server_t raw;
    result_t r = {0};
    tms_grpc_client_t *c;
    /* HTTP 503 without grpc-status: UNAVAILABLE; sent, so once unless idempotent. */
    raw_start(&raw, RAW_HTTP_503);
    c = client_new("raw_http", raw.port, &o);
    tms_grpc_client_call(c, "/a/b", NULL, 0, deadline_in(2000), false, on_done, &r);
    CHECK(run_until(is_done, &r, 3000));
    CHECK_EQ_INT(r.status, TMS_UNAVAILABLE);
    CHECK(strstr(r.message, "HTTP 503") != NULL);
    CHECK_EQ_INT(raw.streams, 1);
    memset(&r, 0, sizeof(r));
    tms_grpc_client_call(c, "/a/b", NULL, 0, deadline_in(2000), true, on_done, &r);
    CHECK(run_until(is_done, &r, 3000));
    CHECK_EQ_INT(r.status, TMS_UNAVAILABLE);
    CHECK_EQ_INT(raw.streams, 4);
    /* 200 and a message but no grpc-status: INTERNAL, and no message handed out. */
    raw.mode = RAW_NO_GRPC_STATUS;
    memset(&r, 0, sizeof(r));
    tms_grpc_client_call(c, "/a/b", NULL, 0, deadline_in(2000), true, on_done, &r);
    CHECK(run_until(is_done, &r, 3000));
    CHECK_EQ_INT(r.status, TMS_INTERNAL);
    CHECK_EQ_INT(r.resp_len, 0);
    CHECK_EQ_INT(raw.streams, 5);
    /* REFUSED_STREAM: the peer did not process it, so even a non-idempotent call is
     * tried again. */
    raw.mode = RAW_REFUSE_FIRST;
    raw.streams = 0;
    memset(&r, 0, sizeof(r));
    tms_grpc_client_call(c, "/a/b", NULL, 0, deadline_in(2000), false, on_done, &r);
    CHECK(run_until(is_done, &r, 3000));
    CHECK_EQ_INT(r.status, TMS_OK);
    CHECK_EQ_INT(raw.streams, 2);
    client_close(&c);
    raw_finish(&raw);
}

/* Done callbacks that call back into the client: a chained call, then a close. */
typedef struct chain {
    tms_grpc_client_t *c;
    result_t first, second, third;
    bool closed;
} chain_t;

static void on_third(void *ctx, int status, const char *message, const uint8_t *resp,
                     size_t resp_len)
{
    chain_t *ch = ctx;
    on_done(&ch->third, status, message, resp, resp_len);
}

static void on_second(void *ctx, int status, const char *message, const uint8_t *resp,
                      size_t resp_len)
{
    chain_t *ch = ctx;
    on_done(&ch->second, status, message, resp, resp_len);
    /* Close from inside done; a call started after it still gets its answer. */
    tms_grpc_client_t *c = ch->c;
    tms_grpc_client_close(&ch->c, on_client_closed, &ch->closed);
    tms_grpc_client_call(c, "/grpc.health.v1.Health/Check", NULL, 0, 0, true, on_third, ch);
}

static void on_first(void *ctx, int status, const char *message, const uint8_t *resp,
                     size_t resp_len)
{
    chain_t *ch = ctx;
    on_done(&ch->first, status, message, resp, resp_len);
    tms_grpc_client_call(ch->c, "/grpc.health.v1.Health/Check", NULL, 0, deadline_in(2000), true,
                         on_second, ch);
}

static void test_reentrant_done(void)
{
    server_t s;
    chain_t ch;
    memset(&ch, 0, sizeof(ch));
    server_start(&s, "127.0.0.1:0", 0);
    ch.c = client_new("chain", s.port, NULL);
    tms_grpc_client_call(ch.c, "/grpc.health.v1.Health/Check", NULL, 0, deadline_in(2000), true,
                         on_first, &ch);
    g_closed = false;
    CHECK(run_until(flag_set, &ch.closed, 3000));
    CHECK(ch.first.n == 1 && ch.first.status == TMS_OK);
    CHECK(ch.second.n == 1 && ch.second.status == TMS_OK);
    CHECK(ch.third.n == 1 && ch.third.status == TMS_UNAVAILABLE);
    CHECK_EQ_STR(ch.third.message, "shutting down");
    CHECK(!ch.third.client_closed_first);
    CHECK(ch.c == NULL);
    g_closed = false;
    server_finish(&s);
}

static void test_close_pending(void)
{
    server_t s;
    result_t r[3] = {{0}};
    uint8_t req[64];
    size_t n = get_task_req(req, "13");
    bool closed = false;
    tms_grpc_client_t *c;
    server_start(&s, "127.0.0.1:0", 0);
    s.gw.mode = GW_HOLD;
    s.gw.fail_times = 2;
    c = client_new("close", s.port, NULL);
    for (int i = 0; i < 2; i++)
        tms_grpc_client_call(c, "/TaskService/GetTask", req, n, 0, true, on_done, &r[i]);
    CHECK(run_until(held_at_least, &s.gw, 3000));
    /* One more, which the server has not read yet when the client closes. */
    tms_grpc_client_call(c, "/TaskService/GetTask", req, n, 0, true, on_done, &r[2]);
    g_closed = false;
    tms_grpc_client_close(&c, on_client_closed, &closed);
    CHECK(c == NULL);
    CHECK(r[0].n == 0 && r[1].n == 0 && r[2].n == 0 && !closed);
    CHECK(run_until(flag_set, &closed, 3000));
    for (int i = 0; i < 3; i++) {
        CHECK_EQ_INT(r[i].n, 1);
        CHECK_EQ_INT(r[i].status, TMS_UNAVAILABLE);
        CHECK_EQ_STR(r[i].message, "shutting down");
        CHECK(!r[i].client_closed_first);
    }
    g_closed = false;
    server_finish(&s);
}

int main(void)
{
    signal(SIGPIPE, SIG_IGN);
    loop = malloc(sizeof(*loop));
    uv_loop_init(loop);
    RUN_TEST(test_bad_options);
    RUN_TEST(test_unary_ok);
    RUN_TEST(test_resolve_name);
    RUN_TEST(test_status_and_message);
    RUN_TEST(test_deadline);
    RUN_TEST(test_cancel);
    RUN_TEST(test_refused_and_breaker);
    RUN_TEST(test_retry_rules);
    RUN_TEST(test_goaway);
    RUN_TEST(test_oversized);
    RUN_TEST(test_pool_spread);
    RUN_TEST(test_calls_of_one_turn_share_a_write);
    RUN_TEST(test_request_headers);
    RUN_TEST(test_http_mapping);
    RUN_TEST(test_close_pending);
    RUN_TEST(test_reentrant_done);
    uv_run(loop, UV_RUN_NOWAIT);
    CHECK_EQ_INT(uv_loop_close(loop), 0);
    free(loop);
    tms_metrics_reset();
    TEST_EXIT();
}
