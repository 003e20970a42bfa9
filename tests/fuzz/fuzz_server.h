/* Shared by the HTTP-level fuzz harnesses (http_fuzz.c, rest_fuzz.c, http_tls_fuzz.c):
 * the server of `tms serve` in this process (server/server.h: the same assembly, every
 * role, on an in-memory SQLite store), listening on a free port of 127.0.0.1 and
 * nowhere else, and a client that sends bytes on a fresh connection and reads the
 * answer to the end. With fuzz_tls_cert and fuzz_tls_key set before the first input
 * the server's listener speaks TLS (http.tls_cert, http.tls_key), and with
 * fuzz_tls_client the client does a TLS handshake (io/tls's client engine) and sends
 * the bytes as application data, then close_notify; with fuzz_raw_tls it sends them as
 * they are (TLS records straight at the server's handshake). Header-only (static
 * functions) so that each harness stays one file. */
#ifndef TMS_FUZZ_SERVER_H
#define TMS_FUZZ_SERVER_H

#define _GNU_SOURCE /* memmem */
#include <ftw.h>
#include <signal.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <jansson.h>
#include <sodium.h>
#include <uv.h>

#include "core/config.h"
#include "core/log.h"
#include "io/tls/tls.h"
#include "server/server.h"

static uv_loop_t *loop;
static tms_server_t *fuzz_srv;
static tms_http_server_t *http;
static tms_rest_t *rest;
static int port;
static char token[1024];
static unsigned users_made;
static int need_token = 1;
static const char *fuzz_tls_cert, *fuzz_tls_key; /* the server's, when set */
static tms_tls_ctx_t *fuzz_tls_client;
static int fuzz_raw_tls;

/* One client connection: writes out, half-closes, reads everything into in. */
typedef struct client {
    uv_tcp_t tcp;
    uv_connect_t connect;
    uv_write_t write;
    uv_shutdown_t shutdown;
    uv_buf_t out;
    char *in;
    size_t in_len, in_cap;
    int closed;
    tms_tls_t *tls; /* TLS mode: the client's engine */
    int sent;
} client_t;

static void on_client_close(uv_handle_t *h)
{
    client_t *c = h->data;
    tms_tls_free(&c->tls);
    c->closed = 1;
}

static void client_close(client_t *c)
{
    if (!uv_is_closing((uv_handle_t *)&c->tcp))
        uv_close((uv_handle_t *)&c->tcp, on_client_close);
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    client_t *c = h->data;
    if (c->in_cap - c->in_len < 65536) {
        c->in_cap = c->in_cap * 2 + 65536;
        c->in = realloc(c->in, c->in_cap);
    }
    *buf = uv_buf_init(c->in + c->in_len, (unsigned)(c->in_cap - c->in_len));
}

static void on_read(uv_stream_t *st, ssize_t n, const uv_buf_t *buf)
{
    client_t *c = st->data;
    if (n < 0)
        client_close(c);
    else
        c->in_len += (size_t)n;
}

static void on_shutdown(uv_shutdown_t *req, int status)
{
}

static void on_write(uv_write_t *w, int status)
{
    client_t *c = w->data;
    if (status < 0) {
        client_close(c); /* the server closed first (after an error answer) */
        return;
    }
    if (uv_shutdown(&c->shutdown, (uv_stream_t *)&c->tcp, on_shutdown) < 0)
        client_close(c);
}

/* ---- TLS mode: ciphertext through the client engine ---- */

typedef struct tls_write {
    uv_write_t req;
    char *buf;
} tls_write_t;

static void on_tls_write(uv_write_t *w, int status)
{
    tls_write_t *t = (tls_write_t *)w;
    free(t->buf);
    free(t);
}

static void tls_send(client_t *c)
{
    size_t n;
    char *out = tms_tls_take(c->tls, &n);
    tls_write_t *t;
    uv_buf_t b;
    if (!out)
        return;
    t = malloc(sizeof *t);
    t->buf = out;
    b = uv_buf_init(out, (unsigned)n);
    if (uv_write(&t->req, (uv_stream_t *)&c->tcp, &b, 1, on_tls_write) < 0) {
        free(out);
        free(t);
        client_close(c);
    }
}

static void on_tls_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    static char rbuf[65536];
    *buf = uv_buf_init(rbuf, sizeof rbuf);
}

static int on_client_plain(void *arg, const char *data, size_t n)
{
    client_t *c = arg;
    if (c->in_cap - c->in_len < n + 1) {
        c->in_cap = c->in_cap * 2 + n + 1;
        c->in = realloc(c->in, c->in_cap);
    }
    memcpy(c->in + c->in_len, data, n);
    c->in_len += n;
    return 0;
}

static void on_tls_read(uv_stream_t *st, ssize_t n, const uv_buf_t *buf)
{
    client_t *c = st->data;
    int was, rc;
    if (n < 0) {
        client_close(c);
        return;
    }
    was = tms_tls_established(c->tls);
    rc = tms_tls_input(c->tls, buf->base, (size_t)n, on_client_plain, c);
    tls_send(c);
    if (rc != 0) { /* refused, broken, or the server's close_notify */
        client_close(c);
        return;
    }
    if (!was && tms_tls_established(c->tls) && !c->sent) {
        /* The fuzz bytes as application data (records of up to 16 KiB), then
         * close_notify and FIN. */
        c->sent = 1;
        if (c->out.len && tms_tls_write(c->tls, c->out.base, c->out.len) != 0) {
            client_close(c);
            return;
        }
        tms_tls_shutdown(c->tls);
        tls_send(c);
        if (uv_shutdown(&c->shutdown, (uv_stream_t *)&c->tcp, on_shutdown) < 0)
            client_close(c);
    }
}

static void on_connect(uv_connect_t *req, int status)
{
    client_t *c = req->data;
    if (status < 0) {
        client_close(c);
        return;
    }
    if (c->tls) {
        uv_read_start((uv_stream_t *)&c->tcp, on_tls_alloc, on_tls_read);
        tls_send(c); /* the ClientHello */
        return;
    }
    uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read);
    if (uv_write(&c->write, (uv_stream_t *)&c->tcp, &c->out, 1, on_write) < 0)
        client_close(c);
}

/* Send bytes on a new connection and return everything the server answered
 * (NUL-terminated, caller frees); *len gets its length. */
static char *exchange(const char *bytes, size_t n, size_t *len)
{
    client_t c;
    struct sockaddr_in addr;
    memset(&c, 0, sizeof c);
    c.tcp.data = c.connect.data = c.write.data = c.shutdown.data = &c;
    c.out = uv_buf_init((char *)bytes, (unsigned)n);
    c.in = malloc(65536);
    c.in_cap = 65536;
    uv_ip4_addr("127.0.0.1", port, &addr);
    uv_tcp_init(loop, &c.tcp);
    c.tcp.data = &c;
    if (fuzz_tls_client && !fuzz_raw_tls)
        c.tls = tms_tls_new(fuzz_tls_client, "localhost");
    if (uv_tcp_connect(&c.connect, &c.tcp, (const struct sockaddr *)&addr, on_connect) < 0)
        client_close(&c);
    /* Wait for our side and the server's side of the connection, and for every call
     * of this input to be answered, so that inputs do not overlap. */
    while (!c.closed || tms_http_server_connections(http) > 0 || tms_rest_pending(rest) > 0)
        uv_run(loop, UV_RUN_ONCE);
    c.in[c.in_len] = '\0';
    *len = c.in_len;
    return c.in;
}

/* Register a fresh user and keep its token in token[]. */
static void new_token(void)
{
    char req[512], body[128];
    char *resp, *json;
    size_t len;
    json_t *root;
    int n =
        snprintf(body, sizeof body, "{\"email\":\"fuzz%u.%ld@example.com\",\"password\":\"%s\"}",
                 users_made++, (long)getpid(), "fuzz-password");
    snprintf(req, sizeof req,
             "POST /api/auth/register HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
             "Content-Length: %d\r\n\r\n%s",
             n, body);
    resp = exchange(req, strlen(req), &len);
    json = strstr(resp, "\r\n\r\n");
    root = json ? json_loads(json + 4, 0, NULL) : NULL;
    if (!root || !json_is_string(json_object_get(root, "token"))) {
        fprintf(stderr, "http_fuzz: register failed: %s\n", resp);
        abort();
    }
    snprintf(token, sizeof token, "%s", json_string_value(json_object_get(root, "token")));
    json_decref(root);
    free(resp);
    need_token = 0;
}

static char data_dir[] = "/tmp/tms-http-fuzz.XXXXXX";

static int remove_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)remove(path); /* best effort */
    return 0;
}

/* The mails the notifier wrote during the run go with the process. */
static void remove_data_dir(void)
{
    nftw(data_dir, remove_entry, 16, FTW_DEPTH | FTW_PHYS);
}

static void set(tms_config_t *cfg, const char *assignment)
{
    char err[512];
    if (tms_config_set(cfg, assignment, err, sizeof err) != 0) {
        fprintf(stderr, "fuzz: %s\n", err);
        abort();
    }
}

/* Defaults but for what a fuzzer needs: stores in memory, a free port, a fresh key,
 * the cheapest password hash and no rate limits (every input comes from one
 * address), short timeouts. */
static void configure(tms_config_t *cfg)
{
    static const char *const sets[] = {
        "http.addr=127.0.0.1:0",
        "users.url=sqlite://:memory:",
        "tasks.url=sqlite://:memory:",
        "auth.argon2_opslimit=1",
        "auth.argon2_memlimit_kib=8",
        "auth.hash_threads=1",
        "auth.hash_queue=1024",
        "auth.hash_per_address=0",
        "ratelimit.api_per_minute=0",
        "ratelimit.login_per_15min=0",
        "ratelimit.task_create_per_hour=0",
        "notify.per_assigner_per_hour=0",
        "notify.per_recipient_per_hour=0",
        "http.head_timeout=2",
        "http.idle_timeout=2",
        "server.request_timeout=5",
        NULL,
    };
    char buf[1200], err[512];
    unsigned char raw[32];
    tms_config_defaults(cfg);
    for (int i = 0; sets[i]; i++)
        set(cfg, sets[i]);
    snprintf(buf, sizeof buf, "data.dir=%s", data_dir);
    set(cfg, buf);
    snprintf(buf, sizeof buf, "mail.url=maildir://%s/mail", data_dir);
    set(cfg, buf);
    if (fuzz_tls_cert) {
        snprintf(buf, sizeof buf, "http.tls_cert=%s", fuzz_tls_cert);
        set(cfg, buf);
        snprintf(buf, sizeof buf, "http.tls_key=%s", fuzz_tls_key);
        set(cfg, buf);
        set(cfg, "http.tls_handshake_timeout=2");
    }
    randombytes_buf(raw, sizeof raw);
    strcpy(buf, "auth.jwt_secret=");
    sodium_bin2hex(buf + strlen(buf), sizeof buf - strlen(buf), raw, sizeof raw);
    set(cfg, buf);
    if (tms_config_finish(cfg, err, sizeof err) != 0) {
        fprintf(stderr, "fuzz: %s\n", err);
        abort();
    }
}

static void start(void)
{
    static tms_config_t cfg;
    signal(SIGPIPE, SIG_IGN);
    if (sodium_init() < 0 || !mkdtemp(data_dir))
        abort();
    atexit(remove_data_dir);
    tms_log_set_level(getenv("TMS_FUZZ_LOG") ? TMS_LOG_DEBUG : TMS_LOG_ERROR + 1);
    configure(&cfg);
    loop = uv_default_loop();
    fuzz_srv = tms_server_start(loop, &cfg, &(tms_server_options_t){.http_only = true});
    if (!fuzz_srv)
        abort();
    http = tms_server_http(fuzz_srv);
    rest = tms_server_rest(fuzz_srv);
    port = tms_server_http_port(fuzz_srv);
}

/* Start the server once; then make sure token[] holds a live token (inputs that hit
 * /api/auth/ may have killed it: login, logout and delete-user all do). */
static void fuzz_server_ready(void)
{
    if (!loop)
        start();
    if (need_token)
        new_token();
}

/* The whole exchange of one input; aborts when the first answer is a 500. */
static void fuzz_server_send(const char *bytes, size_t n)
{
    size_t len;
    char *resp;
    if (memmem(bytes, n, "/api/auth/", 10))
        need_token = 1;
    resp = exchange(bytes, n, &len);
    if (len >= 12 && memcmp(resp, "HTTP/1.1 500", 12) == 0) {
        fprintf(stderr, "fuzz: the server answered 500:\n%s\n", resp);
        abort();
    }
    free(resp);
}

#endif
