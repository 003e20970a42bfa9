/* Shared by the HTTP-level fuzz harnesses (http_fuzz.c, rest_fuzz.c, http_tls_fuzz.c):
 * the whole server in this process (llhttp and http1.c, the REST adapter, the gateway,
 * auth and task actors, notifier, relay, on an in-memory SQLite store), listening on
 * 127.0.0.1, and a client that sends bytes on a fresh connection and reads the answer
 * to the end. With fuzz_tls_server set before the first input the listener speaks TLS
 * and the client does a TLS handshake (io/tls's client engine) and sends the bytes as
 * application data, then close_notify; with fuzz_raw_tls it sends them as they are
 * (TLS records straight at the server's handshake). Header-only (static functions) so
 * that each harness stays one file. */
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

#include "actors/auth.h"
#include "actors/gateway.h"
#include "actors/notifier.h"
#include "actors/task.h"
#include "core/log.h"
#include "core/relay.h"
#include "core/workpool.h"
#include "io/bus/local.h"
#include "io/http/http1.h"
#include "io/mail/maildir.h"
#include "io/http/rest.h"
#include "io/store/sqlite/sqlite.h"
#include "io/tls/tls.h"

static const char KEY[] = "0123456789abcdef0123456789abcdef-fuzz-key";

static uv_loop_t *loop;
static tms_http_server_t *http;
static tms_rest_t *rest;
static int port;
static char token[1024];
static unsigned users_made;
static int need_token = 1;
static tms_tls_ctx_t *fuzz_tls_server, *fuzz_tls_client;
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

static char maildir[] = "/tmp/tms-http-fuzz.XXXXXX";

static int remove_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)remove(path); /* best effort */
    return 0;
}

/* The mails the notifier wrote during the run go with the process. */
static void remove_maildir(void)
{
    nftw(maildir, remove_entry, 16, FTW_DEPTH | FTW_PHYS);
}

static void start(void)
{
    char err[256];
    tms_sqlite_t *db;
    tms_event_bus_t *bus;
    tms_workpool_t *mail_pool, *hashers;
    tms_mailer_t *mailer;
    tms_relay_t *relay;
    tms_auth_t *auth;
    tms_task_actor_t *task;
    tms_gateway_t *gateway;
    tms_http_limits_t limits;

    signal(SIGPIPE, SIG_IGN);
    if (sodium_init() < 0 || !mkdtemp(maildir))
        abort();
    atexit(remove_maildir);
    tms_log_set_level(getenv("TMS_FUZZ_LOG") ? TMS_LOG_DEBUG : TMS_LOG_ERROR + 1);
    loop = uv_default_loop();
    db = tms_sqlite_open(loop, ":memory:", 1024, err, sizeof err);
    if (!db) {
        fprintf(stderr, "http_fuzz: %s\n", err);
        abort();
    }
    bus = tms_bus_local_new(loop);
    mail_pool = tms_workpool_new("mail", 1, 1024);
    mailer = tms_maildir_new(loop, maildir, "tms@example.com", "example.com", mail_pool, err,
                             sizeof err);
    if (!mailer)
        abort();
    relay = tms_relay_new(loop, tms_sqlite_outbox(db), bus, 1000);
    hashers = tms_workpool_new("hash", 1, 1024);
    auth = tms_auth_start(loop,
                          &(tms_auth_config_t){
                              .jwt_key = (const unsigned char *)KEY,
                              .jwt_key_len = strlen(KEY),
                              .issuer = "tms",
                              .token_ttl = 3600,
                              .argon2_opslimit = crypto_pwhash_OPSLIMIT_MIN,
                              .argon2_memlimit = crypto_pwhash_MEMLIMIT_MIN,
                              .mailbox_capacity = 1024,
                              .user_cache_ms = 1000,
                              .bus = bus,
                              .inbox = tms_sqlite_outbox(db),
                              .relay = relay,
                          },
                          tms_sqlite_user_store(db), hashers);
    task = tms_task_actor_start(loop, &(tms_task_actor_config_t){
                                          .mailbox_capacity = 1024,
                                          .tasks = tms_sqlite_task_store(db),
                                          .outbox = tms_sqlite_outbox(db),
                                          .auth = tms_auth_mailbox(auth),
                                          .bus = bus,
                                          .relay = relay,
                                      });
    tms_notifier_start(loop, &(tms_notifier_config_t){
                                 .mailbox_capacity = 1024,
                                 .mailer = mailer,
                                 .inbox = tms_sqlite_outbox(db),
                                 .auth = tms_auth_mailbox(auth),
                                 .bus = bus,
                             });
    gateway = tms_gateway_start(loop, &(tms_gateway_config_t){.mailbox_capacity = 1024},
                                tms_auth_mailbox(auth), tms_task_actor_mailbox(task));
    rest = tms_rest_new(loop, &(tms_rest_config_t){
                                  .gateway = tms_gateway_mailbox(gateway),
                                  .users = tms_sqlite_user_store(db),
                                  .tasks = tms_sqlite_task_store(db),
                                  .call_timeout_ms = 5000,
                              });
    tms_http_limits_default(&limits);
    limits.head_timeout_ms = 2000;
    limits.idle_timeout_ms = 2000;
    limits.tls = fuzz_tls_server;
    limits.tls_handshake_timeout_ms = 2000;
    http = tms_http_server_new(loop, &limits, tms_rest_handle, rest);
    if (tms_http_server_listen(http, "127.0.0.1:0") != 0)
        abort();
    port = tms_http_server_port(http);
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
