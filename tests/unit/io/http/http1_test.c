/* HTTP/1.1 server tests: the server runs on a libuv loop in the main thread, a blocking
 * socket client runs the scenarios in a second thread. */
#include "io/http/http1.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include "core/metrics.h"
#include "test.h"

static uv_loop_t loop;
static tms_http_server_t *server;
static int port;
static uv_timer_t check_timer;

/* Loop-thread state. */
static tms_http_request_t *held_never, *held_stop;
static atomic_int never_done, stop_requested, stopped_flag;
static int stop_respond_ticks = -1;
static atomic_int inflight_at_stop = -1;

/* ---- handler (loop thread) ---- */

typedef struct delayed {
    uv_timer_t t;
    tms_http_request_t *req;
} delayed_t;

static void respond_echo(tms_http_request_t *req, const char *prefix)
{
    char *out = malloc(256 + req->body_len);
    int n = snprintf(out, 256, "%s%s %s %s body=", prefix, req->method, req->path, req->query);
    memcpy(out + n, req->body, req->body_len);
    tms_http_header_t h[] = {{"X-Test", "yes"}, {"X-Bad", "a\r\nInjected: 1"}};
    req->route = "/echo";
    tms_http_respond(req, 200, h, 2, "text/plain", out, (size_t)n + req->body_len);
    free(out);
}

static void on_delayed_close(uv_handle_t *h)
{
    free(h->data);
}

static void on_delayed(uv_timer_t *t)
{
    delayed_t *d = t->data;
    respond_echo(d->req, "slow ");
    uv_close((uv_handle_t *)&d->t, on_delayed_close);
}

static void handler(void *ctx, tms_http_request_t *req)
{
    (void)ctx;
    if (strcmp(req->path, "/slow") == 0) {
        delayed_t *d = calloc(1, sizeof *d);
        d->req = req;
        uv_timer_init(&loop, &d->t);
        d->t.data = d;
        uv_timer_start(&d->t, on_delayed, 150, 0);
    } else if (strcmp(req->path, "/never") == 0) {
        held_never = req;
    } else if (strcmp(req->path, "/hold") == 0) {
        held_stop = req;
    } else if (strcmp(req->path, "/rid") == 0) {
        tms_http_respond(req, 200, NULL, 0, "text/plain", req->request_id, strlen(req->request_id));
    } else if (strcmp(req->path, "/missing") == 0) {
        tms_http_respond_error(req, TMS_NOT_FOUND, "no \"such\" thing", NULL, 0);
    } else {
        respond_echo(req, "");
    }
}

static void on_stopped(void *arg)
{
    (void)arg;
    atomic_store(&stopped_flag, 1);
    uv_close((uv_handle_t *)&check_timer, NULL);
}

static void on_check(uv_timer_t *t)
{
    (void)t;
    /* The client reset the connection: the request is detached, answering only frees. */
    if (held_never && tms_http_server_inflight(server) == 0) {
        tms_http_respond(held_never, 200, NULL, 0, "text/plain", "late", 4);
        held_never = NULL;
        atomic_store(&never_done, 1);
    }
    if (held_stop && atomic_load(&stop_requested) && stop_respond_ticks < 0) {
        tms_http_server_stop(server, 3000, on_stopped, NULL);
        stop_respond_ticks = 10;
    }
    if (stop_respond_ticks > 0 && --stop_respond_ticks == 0) {
        atomic_store(&inflight_at_stop, (int)tms_http_server_inflight(server));
        tms_http_respond(held_stop, 200, NULL, 0, "text/plain", "bye", 3);
        held_stop = NULL;
    }
}

/* ---- client (its own thread) ---- */

typedef struct client {
    int fd;
    char buf[131072];
    size_t len;
} client_t;

typedef struct resp {
    int status;
    char head[8192];
    char body[8192];
    size_t body_len;
} resp_t;

static int cl_connect(client_t *c)
{
    struct sockaddr_in sa;
    struct timeval tv = {5, 0};
    memset(&sa, 0, sizeof sa);
    sa.sin_family = AF_INET;
    sa.sin_port = htons((uint16_t)port);
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    c->len = 0;
    c->fd = socket(AF_INET, SOCK_STREAM, 0);
    setsockopt(c->fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    return connect(c->fd, (struct sockaddr *)&sa, sizeof sa);
}

static void cl_send(client_t *c, const char *data, size_t len)
{
    while (len > 0) {
        ssize_t n = send(c->fd, data, len, MSG_NOSIGNAL);
        if (n <= 0)
            return;
        data += n;
        len -= (size_t)n;
    }
}

static void cl_sends(client_t *c, const char *s)
{
    cl_send(c, s, strlen(s));
}

static int cl_fill(client_t *c)
{
    ssize_t n;
    if (c->len == sizeof c->buf)
        return -1;
    n = recv(c->fd, c->buf + c->len, sizeof c->buf - c->len, 0);
    if (n <= 0)
        return -1;
    c->len += (size_t)n;
    return 0;
}

static const char *head_get(const resp_t *r, const char *name)
{
    static char val[256];
    size_t nl = strlen(name);
    const char *p = strstr(r->head, "\r\n");
    while (p && p[2]) {
        p += 2;
        if (strncasecmp(p, name, nl) == 0 && p[nl] == ':') {
            const char *v = p + nl + 1, *e = strstr(v, "\r\n");
            while (*v == ' ')
                v++;
            snprintf(val, sizeof val, "%.*s", (int)(e - v), v);
            return val;
        }
        p = strstr(p, "\r\n");
    }
    return NULL;
}

/* Read one response; returns 0 or -1 on EOF/timeout. Skips 100 Continue. */
static int cl_read_ex(client_t *c, resp_t *r, int no_body)
{
    for (;;) {
        char *end;
        size_t hl, cl = 0;
        const char *v;
        c->buf[c->len < sizeof c->buf ? c->len : sizeof c->buf - 1] = '\0';
        while (!(end = strstr(c->buf, "\r\n\r\n"))) {
            if (cl_fill(c) < 0)
                return -1;
            c->buf[c->len < sizeof c->buf ? c->len : sizeof c->buf - 1] = '\0';
        }
        hl = (size_t)(end - c->buf) + 4;
        memset(r, 0, sizeof *r);
        snprintf(r->head, sizeof r->head, "%.*s", (int)hl, c->buf);
        r->status = atoi(c->buf + 9);
        v = head_get(r, "Content-Length");
        if (v && !no_body)
            cl = (size_t)atol(v);
        while (c->len < hl + cl) {
            if (cl_fill(c) < 0)
                return -1;
        }
        r->body_len = cl < sizeof r->body - 1 ? cl : sizeof r->body - 1;
        memcpy(r->body, c->buf + hl, r->body_len);
        memmove(c->buf, c->buf + hl + cl, c->len - hl - cl);
        c->len -= hl + cl;
        if (r->status != 100)
            return 0;
    }
}

static int cl_read(client_t *c, resp_t *r)
{
    return cl_read_ex(c, r, 0);
}

/* True if the server closes the connection (EOF, no more data) within the timeout. */
static int cl_eof(client_t *c)
{
    char b[4096];
    for (;;) {
        ssize_t n = recv(c->fd, b, sizeof b, 0);
        if (n == 0)
            return 1;
        if (n < 0)
            return 0;
    }
}

static void cl_close(client_t *c)
{
    close(c->fd);
    c->fd = -1;
}

static client_t cl;

static void test_get_and_post(void)
{
    resp_t r;
    CHECK_EQ_INT(cl_connect(&cl), 0);
    cl_sends(&cl, "GET /echo?x=1 HTTP/1.1\r\nHost: t\r\nX-Request-Id: abc-123.Z:9_\r\n\r\n");
    CHECK_EQ_INT(cl_read(&cl, &r), 0);
    CHECK_EQ_INT(r.status, 200);
    CHECK_EQ_STR(r.body, "GET /echo x=1 body=");
    CHECK_EQ_STR(head_get(&r, "X-Request-Id"), "abc-123.Z:9_");
    CHECK_EQ_STR(head_get(&r, "Content-Type"), "text/plain");
    CHECK_EQ_STR(head_get(&r, "X-Test"), "yes");
    CHECK(head_get(&r, "X-Bad") == NULL && head_get(&r, "Injected") == NULL);
    CHECK(head_get(&r, "Date") != NULL);
    CHECK(head_get(&r, "Connection") == NULL);
    /* keep-alive: second request on the same connection */
    cl_sends(&cl, "POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nhello");
    CHECK_EQ_INT(cl_read(&cl, &r), 0);
    CHECK_EQ_STR(r.body, "POST /echo  body=hello");
    cl_sends(&cl, "GET /missing HTTP/1.1\r\n\r\n");
    CHECK_EQ_INT(cl_read(&cl, &r), 0);
    CHECK_EQ_INT(r.status, 404);
    CHECK_EQ_STR(r.body,
                 "{\"error\":{\"code\":\"NOT_FOUND\",\"message\":\"no \\\"such\\\" thing\"}}");
    cl_sends(&cl, "HEAD /echo HTTP/1.1\r\nConnection: close\r\n\r\n");
    CHECK_EQ_INT(cl_read_ex(&cl, &r, 1), 0); /* Content-Length given, no body sent */
    CHECK_EQ_STR(head_get(&r, "Content-Length"), "17");
    CHECK_EQ_STR(head_get(&r, "Connection"), "close");
    CHECK(cl.len == 0);
    CHECK(cl_eof(&cl));
    cl_close(&cl);
}

static void test_pipelining(void)
{
    resp_t r;
    CHECK_EQ_INT(cl_connect(&cl), 0);
    cl_sends(&cl, "GET /slow?n=1 HTTP/1.1\r\n\r\nGET /echo?n=2 HTTP/1.1\r\n\r\n"
                  "POST /echo?n=3 HTTP/1.1\r\nContent-Length: 2\r\n\r\nhi");
    CHECK_EQ_INT(cl_read(&cl, &r), 0);
    CHECK_EQ_STR(r.body, "slow GET /slow n=1 body=");
    CHECK_EQ_INT(cl_read(&cl, &r), 0);
    CHECK_EQ_STR(r.body, "GET /echo n=2 body=");
    CHECK_EQ_INT(cl_read(&cl, &r), 0);
    CHECK_EQ_STR(r.body, "POST /echo n=3 body=hi");
    cl_close(&cl);
}

static void test_many_pipelined(void)
{
    resp_t r;
    static char all[400 * 40];
    size_t len = 0;
    int ok = 1;
    for (int i = 0; i < 400; i++)
        len += (size_t)snprintf(all + len, sizeof all - len, "GET /echo?i=%d HTTP/1.1\r\n\r\n", i);
    CHECK_EQ_INT(cl_connect(&cl), 0);
    cl_send(&cl, all, len);
    for (int i = 0; i < 400 && ok; i++) {
        char want[64];
        snprintf(want, sizeof want, "GET /echo i=%d body=", i);
        ok = cl_read(&cl, &r) == 0 && strcmp(r.body, want) == 0;
    }
    CHECK(ok);
    cl_close(&cl);
}

static void test_chunked_and_continue(void)
{
    resp_t r;
    CHECK_EQ_INT(cl_connect(&cl), 0);
    cl_sends(&cl, "POST /echo HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
                  "5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n");
    CHECK_EQ_INT(cl_read(&cl, &r), 0);
    CHECK_EQ_INT(r.status, 200);
    CHECK_EQ_STR(r.body, "POST /echo  body=hello world");
    cl_sends(&cl, "PUT /echo HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n");
    CHECK(cl_fill(&cl) == 0 && strncmp(cl.buf, "HTTP/1.1 100 Continue\r\n\r\n", 25) == 0);
    cl_sends(&cl, "abc");
    CHECK_EQ_INT(cl_read(&cl, &r), 0);
    CHECK_EQ_STR(r.body, "PUT /echo  body=abc");
    cl_close(&cl);
}

static void expect_error_close(const char *req, size_t extra, int status, const char *needle)
{
    resp_t r;
    CHECK_EQ_INT(cl_connect(&cl), 0);
    cl_sends(&cl, req);
    if (extra) {
        char *pad = malloc(extra);
        memset(pad, 'a', extra);
        cl_send(&cl, pad, extra);
        free(pad);
    }
    CHECK_EQ_INT(cl_read(&cl, &r), 0);
    CHECK_EQ_INT(r.status, status);
    CHECK_EQ_STR(head_get(&r, "Connection"), "close");
    CHECK_EQ_STR(head_get(&r, "Content-Type"), "application/json");
    if (!strstr(r.body, needle))
        fprintf(stderr, "body: %s\n", r.body);
    CHECK(strstr(r.body, needle) != NULL);
    CHECK(cl_eof(&cl));
    cl_close(&cl);
}

static void test_limits_and_errors(void)
{
    expect_error_close("GET / HTTP/1.1\r\nX-Big: ", 17000, 431, "too large");
    expect_error_close("POST /echo HTTP/1.1\r\nContent-Length: 70000\r\n\r\n", 70000, 413,
                       "too large");
    expect_error_close("POST /echo HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
                       "10001\r\n",
                       65537, 413, "too large");
    expect_error_close("POST /echo HTTP/1.1\r\nContent-Length: 3\r\n"
                       "Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
                       0, 400,
                       "{\"error\":{\"code\":\"INVALID_ARGUMENT\",\"message\":\"malformed HTTP "
                       "request: ");
    expect_error_close("POST /echo HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n"
                       "abcd",
                       0, 400, "malformed HTTP request");
    expect_error_close("POST /echo HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", 0, 400,
                       "invalid chunk size");
    expect_error_close("GET / HTTP/1.1\r\nHost : x\r\n\r\n", 0, 400, "invalid header");
    expect_error_close("GET / HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n", 0,
                       400, "upgrade");
    expect_error_close("GET / HTTP/1.1\nHost: x\n\n", 0, 400, "malformed");
    expect_error_close("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 0, 400, "HTTP/2");
    /* slowloris: head not complete within head_timeout_ms */
    expect_error_close("GET / HTTP/1.1\r\nHost: x\r\n", 0, 408, "DEADLINE_EXCEEDED");
}

static void test_request_id(void)
{
    resp_t r;
    char req[512], big[201];
    memset(big, 'a', 200);
    big[200] = '\0';
    CHECK_EQ_INT(cl_connect(&cl), 0);
    snprintf(req, sizeof req, "GET /rid HTTP/1.1\r\nX-Request-Id: %s\r\n\r\n", big);
    cl_sends(&cl, req);
    CHECK_EQ_INT(cl_read(&cl, &r), 0);
    CHECK_EQ_INT(r.body_len, 32);
    CHECK(strcmp(r.body, big) != 0);
    CHECK_EQ_STR(head_get(&r, "X-Request-Id"), r.body);
    cl_sends(&cl, "GET /rid HTTP/1.1\r\nX-Request-Id: has space\r\n\r\n");
    CHECK_EQ_INT(cl_read(&cl, &r), 0);
    CHECK_EQ_INT(r.body_len, 32);
    cl_sends(&cl, "GET /rid HTTP/1.1\r\nx-request-id: ok-1\r\n\r\n");
    CHECK_EQ_INT(cl_read(&cl, &r), 0);
    CHECK_EQ_STR(r.body, "ok-1");
    cl_close(&cl);
}

static void test_http10_and_idle(void)
{
    resp_t r;
    CHECK_EQ_INT(cl_connect(&cl), 0);
    cl_sends(&cl, "GET /echo HTTP/1.0\r\n\r\n");
    CHECK_EQ_INT(cl_read(&cl, &r), 0);
    CHECK_EQ_STR(head_get(&r, "Connection"), "close");
    CHECK(cl_eof(&cl));
    cl_close(&cl);
    CHECK_EQ_INT(cl_connect(&cl), 0);
    cl_sends(&cl, "GET /echo HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
    CHECK_EQ_INT(cl_read(&cl, &r), 0);
    CHECK(head_get(&r, "Connection") == NULL);
    /* idle keep-alive timeout closes silently */
    CHECK(cl_eof(&cl));
    cl_close(&cl);
}

static void test_never_answered(void)
{
    struct linger lg = {1, 0};
    CHECK_EQ_INT(cl_connect(&cl), 0);
    cl_sends(&cl, "GET /never HTTP/1.1\r\n\r\n");
    usleep(100 * 1000);
    setsockopt(cl.fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg); /* close with RST */
    cl_close(&cl);
    for (int i = 0; i < 300 && !atomic_load(&never_done); i++)
        usleep(10 * 1000);
    CHECK(atomic_load(&never_done));
}

static void test_graceful_stop(void)
{
    resp_t r;
    client_t *idle = calloc(1, sizeof *idle);
    CHECK_EQ_INT(cl_connect(idle), 0);
    CHECK_EQ_INT(cl_connect(&cl), 0);
    cl_sends(&cl, "GET /hold HTTP/1.1\r\n\r\n");
    usleep(100 * 1000);
    atomic_store(&stop_requested, 1);
    CHECK(cl_eof(idle)); /* idle connection closed at once */
    CHECK_EQ_INT(cl_read(&cl, &r), 0);
    CHECK_EQ_INT(r.status, 200);
    CHECK_EQ_STR(r.body, "bye");
    CHECK_EQ_STR(head_get(&r, "Connection"), "close");
    CHECK(cl_eof(&cl));
    cl_close(&cl);
    cl_close(idle);
    free(idle);
}

static void *client_main(void *arg)
{
    (void)arg;
    RUN_TEST(test_get_and_post);
    RUN_TEST(test_pipelining);
    RUN_TEST(test_many_pipelined);
    RUN_TEST(test_chunked_and_continue);
    RUN_TEST(test_limits_and_errors);
    RUN_TEST(test_request_id);
    RUN_TEST(test_http10_and_idle);
    RUN_TEST(test_never_answered);
    RUN_TEST(test_graceful_stop);
    return NULL;
}

int main(void)
{
    tms_http_limits_t lim;
    pthread_t th;
    char *metrics;
    size_t mlen;
    tms_http_limits_default(&lim);
    lim.max_body_bytes = 65536;
    lim.head_timeout_ms = 300;
    lim.idle_timeout_ms = 500;
    uv_loop_init(&loop);
    server = tms_http_server_new(&loop, &lim, handler, NULL);
    CHECK_EQ_INT(tms_http_server_listen(server, "not-an-address"), -TMS_EINVAL);
    CHECK_EQ_INT(tms_http_server_listen(server, "127.0.0.1:0"), 0);
    port = tms_http_server_port(server);
    CHECK(port > 0);
    uv_timer_init(&loop, &check_timer);
    uv_timer_start(&check_timer, on_check, 10, 10);
    pthread_create(&th, NULL, client_main, NULL);
    uv_run(&loop, UV_RUN_DEFAULT);
    pthread_join(th, NULL);
    CHECK(atomic_load(&stopped_flag));
    CHECK_EQ_INT(atomic_load(&inflight_at_stop), 1);
    CHECK_EQ_INT(tms_http_server_connections(server), 0);
    tms_http_server_free(&server);
    CHECK(server == NULL);
    CHECK_EQ_INT(uv_loop_close(&loop), 0);
    metrics = tms_metrics_render(&mlen);
    CHECK(strstr(metrics,
                 "tms_http_requests_total{route=\"/echo\",method=\"GET\",status=\"200\"}") != NULL);
    CHECK(strstr(metrics, "status=\"431\"") != NULL);
    CHECK(strstr(metrics, "tms_http_request_duration_seconds") != NULL);
    CHECK(strstr(metrics, "tms_http_connections 0") != NULL);
    CHECK(strstr(metrics, "status=\"499\"") != NULL);
    free(metrics);
    tms_metrics_reset();
    TEST_EXIT();
}
