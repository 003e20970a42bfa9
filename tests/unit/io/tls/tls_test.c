/* TLS engine and contexts (src/io/tls): a client and a server engine pumped into each
 * other in memory (no socket, no loop), on certificates made by tls_certs.h in a
 * temporary directory. */
#define _GNU_SOURCE /* nftw */
#include "io/tls/tls.h"

#include <ftw.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/metrics.h"
#include "core/status.h"
#include "io/tls/internal.h" /* to give a client an expired certificate */
#include "test.h"
#include "tls_certs.h"

static char dir[] = "/tmp/tms-tls-test.XXXXXX";
static test_cert_t ca, other_ca, server_cert, client_cert, expired_client, other_client;

static const char *path(const char *name)
{
    static char bufs[64][256]; /* a table of cases holds many at once */
    static int i;
    char *b = bufs[i++ % 64];
    snprintf(b, 256, "%s/%s", dir, name);
    return b;
}

/* What each side decrypted. */
typedef struct sink {
    char *data;
    size_t len;
} sink_t;

static int on_plain(void *arg, const char *data, size_t len)
{
    sink_t *s = arg;
    s->data = realloc(s->data, s->len + len + 1);
    memcpy(s->data + s->len, data, len);
    s->len += len;
    s->data[s->len] = '\0';
    return 0;
}

/* Moves ciphertext both ways until neither side has anything to send; the results of
 * the last input on each side are left in *crc and *src (0, TMS_TLS_EOF, -TMS_EIO). */
static void pump(tms_tls_t *c, tms_tls_t *s, sink_t *cs, sink_t *ss, int *crc, int *src)
{
    *crc = *src = 0;
    for (int round = 0; round < 20; round++) {
        size_t n;
        char *out;
        bool moved = false;
        if ((out = tms_tls_take(c, &n)) != NULL) {
            *src = tms_tls_input(s, out, n, on_plain, ss);
            free(out);
            moved = true;
        }
        if ((out = tms_tls_take(s, &n)) != NULL) {
            *crc = tms_tls_input(c, out, n, on_plain, cs);
            free(out);
            moved = true;
        }
        if (!moved)
            return;
    }
}

static tms_tls_ctx_t *server_ctx(const char *alpn, const char *ca_file)
{
    char err[1200];
    tms_tls_ctx_t *ctx = tms_tls_ctx_new(&(tms_tls_options_t){.section = "grpc",
                                                              .cert = path("server.pem"),
                                                              .key = path("server.key"),
                                                              .ca = ca_file,
                                                              .alpn = alpn},
                                         err, sizeof(err));
    if (!ctx)
        fprintf(stderr, "server_ctx: %s\n", err);
    return ctx;
}

static tms_tls_ctx_t *client_ctx(const char *alpn, const char *cert, const char *key,
                                 const char *protocols)
{
    char err[1200];
    tms_tls_ctx_t *ctx = tms_tls_ctx_new(&(tms_tls_options_t){.section = "peers",
                                                              .client = true,
                                                              .cert = cert,
                                                              .key = key,
                                                              .ca = path("ca.pem"),
                                                              .protocols = protocols,
                                                              .alpn = alpn},
                                         err, sizeof(err));
    if (!ctx)
        fprintf(stderr, "client_ctx: %s\n", err);
    return ctx;
}

static void test_handshake_data_close(void)
{
    tms_tls_ctx_t *sc = server_ctx("h2", NULL), *cc = client_ctx("h2", NULL, NULL, NULL);
    tms_tls_t *c = tms_tls_new(cc, "localhost"), *s = tms_tls_new(sc, NULL);
    sink_t cs = {0}, ss = {0};
    int crc, src;
    char big[100000], subject[128];
    pump(c, s, &cs, &ss, &crc, &src);
    CHECK(tms_tls_established(c));
    CHECK(tms_tls_established(s));
    CHECK_EQ_STR(tms_tls_alpn(s), "h2");
    CHECK_EQ_STR(tms_tls_alpn(c), "h2");
    tms_tls_peer_subject(c, subject, sizeof(subject));
    CHECK_EQ_STR(subject, "/CN=localhost");
    CHECK_EQ_INT(tms_tls_write(c, "hello", 5), 0);
    pump(c, s, &cs, &ss, &crc, &src);
    CHECK_EQ_INT(ss.len, 5);
    CHECK(ss.data && memcmp(ss.data, "hello", 5) == 0);
    memset(big, 'x', sizeof(big));
    big[sizeof(big) - 1] = 'y';
    CHECK_EQ_INT(tms_tls_write(s, big, sizeof(big)), 0);
    pump(c, s, &cs, &ss, &crc, &src);
    CHECK_EQ_INT(cs.len, sizeof(big));
    CHECK(cs.len == sizeof(big) && cs.data[sizeof(big) - 1] == 'y');
    /* close_notify: the peer's input ends with TMS_TLS_EOF. */
    tms_tls_shutdown(s);
    pump(c, s, &cs, &ss, &crc, &src);
    CHECK_EQ_INT(crc, TMS_TLS_EOF);
    tms_tls_free(&c);
    tms_tls_free(&s);
    CHECK(c == NULL && s == NULL);
    tms_tls_ctx_free(&sc);
    tms_tls_ctx_free(&cc);
    free(cs.data);
    free(ss.data);
}

/* A client whose ALPN list lacks the listener's protocol gets no_application_protocol. */
static void test_alpn_refused(void)
{
    tms_tls_ctx_t *sc = server_ctx("h2", NULL), *cc = client_ctx("http/1.1", NULL, NULL, NULL);
    tms_tls_t *c = tms_tls_new(cc, "localhost"), *s = tms_tls_new(sc, NULL);
    sink_t cs = {0}, ss = {0};
    int crc, src;
    pump(c, s, &cs, &ss, &crc, &src);
    CHECK(!tms_tls_established(s));
    CHECK(!tms_tls_established(c));
    CHECK_EQ_INT(src, -TMS_EIO);
    CHECK_EQ_INT(crc, -TMS_EIO);
    CHECK(strstr(tms_tls_error(c), "no application protocol") != NULL);
    tms_tls_free(&c);
    tms_tls_free(&s);
    tms_tls_ctx_free(&sc);
    tms_tls_ctx_free(&cc);
}

/* The server's certificate must carry the name (or address) the client dialled. */
static void test_server_name_checked(void)
{
    tms_tls_ctx_t *sc = server_ctx("h2", NULL), *cc = client_ctx("h2", NULL, NULL, NULL);
    const char *hosts[] = {"other.example", "10.1.2.3", "127.0.0.1"};
    for (int i = 0; i < 3; i++) {
        tms_tls_t *c = tms_tls_new(cc, hosts[i]), *s = tms_tls_new(sc, NULL);
        sink_t cs = {0}, ss = {0};
        int crc, src;
        pump(c, s, &cs, &ss, &crc, &src);
        CHECK_EQ_INT(tms_tls_established(c), i == 2);
        if (i < 2)
            CHECK(strstr(tms_tls_error(c), "certificate verify failed") != NULL);
        tms_tls_free(&c);
        tms_tls_free(&s);
    }
    tms_tls_ctx_free(&sc);
    tms_tls_ctx_free(&cc);
}

/* Mutual TLS: a client certificate from the CA passes; none, an expired one or one from
 * another CA is refused by the server. */
static void test_client_certificates(void)
{
    tms_tls_ctx_t *sc = server_ctx("h2", path("ca.pem"));
    struct {
        const char *cert, *key;
        bool ok;
    } cases[] = {
        {path("client.pem"), path("client.key"), true},
        {NULL, NULL, false},
        {"expired", NULL, false},
        {path("other.pem"), path("other.key"), false},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        bool expired = cases[i].cert && strcmp(cases[i].cert, "expired") == 0;
        tms_tls_ctx_t *cc = expired ? client_ctx("h2", path("client.pem"), path("client.key"), NULL)
                                    : client_ctx("h2", cases[i].cert, cases[i].key, NULL);
        tms_tls_t *c, *s;
        /* Our own contexts refuse an expired certificate: put one in behind its back. */
        if (expired && (SSL_CTX_use_certificate(cc->ssl, expired_client.cert) != 1 ||
                        SSL_CTX_use_PrivateKey(cc->ssl, expired_client.key) != 1))
            CHECK(0);
        c = tms_tls_new(cc, "localhost");
        s = tms_tls_new(sc, NULL);
        sink_t cs = {0}, ss = {0};
        int crc, src;
        char subject[128];
        CHECK(cc != NULL);
        pump(c, s, &cs, &ss, &crc, &src);
        /* The client sends something: with TLS 1.3 it hears the verdict on its
         * certificate only after its side of the handshake is done. */
        if (tms_tls_established(c) && tms_tls_write(c, "ping", 4) == 0)
            pump(c, s, &cs, &ss, &crc, &src);
        CHECK_EQ_INT(tms_tls_established(s), cases[i].ok);
        CHECK_EQ_INT(ss.len, cases[i].ok ? 4 : 0);
        if (cases[i].ok) {
            tms_tls_peer_subject(s, subject, sizeof(subject));
            CHECK_EQ_STR(subject, "/CN=client");
        } else {
            CHECK_EQ_INT(src, -TMS_EIO);
            CHECK(tms_tls_error(s)[0] != '\0');
        }
        tms_tls_free(&c);
        tms_tls_free(&s);
        tms_tls_ctx_free(&cc);
        free(cs.data);
        free(ss.data);
    }
    tms_tls_ctx_free(&sc);
}

/* TLS 1.2 only on one side, 1.3 only on the other: no handshake. */
static void test_protocols(void)
{
    char err[1200];
    tms_tls_ctx_t *sc = tms_tls_ctx_new(&(tms_tls_options_t){.section = "grpc",
                                                             .cert = path("server.pem"),
                                                             .key = path("server.key"),
                                                             .protocols = "TLSv1.3",
                                                             .alpn = "h2"},
                                        err, sizeof(err));
    tms_tls_ctx_t *cc = client_ctx("h2", NULL, NULL, "TLSv1.2");
    tms_tls_t *c = tms_tls_new(cc, "localhost"), *s = tms_tls_new(sc, NULL);
    sink_t cs = {0}, ss = {0};
    int crc, src;
    pump(c, s, &cs, &ss, &crc, &src);
    CHECK(!tms_tls_established(s));
    CHECK(strstr(tms_tls_error(s), "protocol") != NULL);
    tms_tls_free(&c);
    tms_tls_free(&s);
    tms_tls_ctx_free(&cc);
    tms_tls_ctx_free(&sc);
    /* Older versions cannot even be named. */
    CHECK(tms_tls_ctx_new(&(tms_tls_options_t){.section = "http",
                                               .cert = path("server.pem"),
                                               .key = path("server.key"),
                                               .protocols = "TLSv1.1 TLSv1.2"},
                          err, sizeof(err)) == NULL);
    CHECK(strstr(err, "http.tls_protocols") && strstr(err, "TLSv1.1"));
}

/* Bytes that are not TLS (an HTTP request on the TLS port) fail at once. */
static void test_not_tls(void)
{
    tms_tls_ctx_t *sc = server_ctx("http/1.1", NULL);
    tms_tls_t *s = tms_tls_new(sc, NULL);
    sink_t ss = {0};
    static const char req[] = "GET / HTTP/1.1\r\nHost: x\r\n\r\n";
    CHECK_EQ_INT(tms_tls_input(s, req, sizeof(req) - 1, on_plain, &ss), -TMS_EIO);
    CHECK(tms_tls_error(s)[0] != '\0');
    CHECK(tms_tls_plain_http(s)); /* http1.c answers it with a cleartext 400 */
    CHECK_EQ_INT(tms_tls_input(s, req, sizeof(req) - 1, on_plain, &ss), -TMS_EIO);
    CHECK_EQ_INT(ss.len, 0);
    tms_tls_free(&s);
    tms_tls_ctx_free(&sc);
}

/* One line naming the setting for each way the files can be wrong. */
static void test_context_checks(void)
{
    struct {
        const char *cert, *key, *ciphers, *want1, *want2;
    } cases[] = {
        {path("server.pem"), path("loose.key"), NULL, "http.tls_key", "accessible by others"},
        {path("server.pem"), path("client.key"), NULL, "http.tls_key", "does not match"},
        {path("expired.pem"), path("expired.key"), NULL, "http.tls_cert", "expired on"},
        {path("future.pem"), path("future.key"), NULL, "http.tls_cert", "not valid before"},
        {path("missing.pem"), path("server.key"), NULL, "http.tls_cert", "No such file"},
        {path("garbage.pem"), path("server.key"), NULL, "http.tls_cert", "no start line"},
        {path("server.pem"), path("garbage.pem"), NULL, "http.tls_key",
         "no usable PEM private key"},
        {path("server.pem"), path("server.key"), "NOT-A-CIPHER", "http.tls_ciphers", "no usable"},
        {path("server.pem"), NULL, NULL, "http.tls_key", "required with http.tls_cert"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char err[1200] = "";
        tms_tls_ctx_t *ctx = tms_tls_ctx_new(&(tms_tls_options_t){.section = "http",
                                                                  .cert = cases[i].cert,
                                                                  .key = cases[i].key,
                                                                  .ciphers = cases[i].ciphers},
                                             err, sizeof(err));
        CHECK(ctx == NULL);
        if (!strstr(err, cases[i].want1) || !strstr(err, cases[i].want2)) {
            fprintf(stderr, "case %zu: %s\n", i, err);
            CHECK(0);
        }
        CHECK(!strchr(err, '\n'));
        tms_tls_ctx_free(&ctx);
    }
    /* A chain file (leaf, then the CA) and a group-readable key are fine. */
    {
        char err[1200];
        tms_tls_ctx_t *ctx;
        certs_write_cert(path("chain.pem"), &server_cert, &ca);
        certs_write_key(path("group.key"), &server_cert, 0640);
        ctx = tms_tls_ctx_new(&(tms_tls_options_t){.section = "http",
                                                   .cert = path("chain.pem"),
                                                   .key = path("group.key")},
                              err, sizeof(err));
        CHECK(ctx != NULL);
        tms_tls_ctx_free(&ctx);
    }
}

/* Reload: new connections get the new certificate, an open one keeps working, and
 * broken files keep what was there. */
static void test_reload(void)
{
    char err[1200], subject[128];
    test_cert_t second = certs_make("second", &ca, -60, 3600, "DNS:localhost");
    tms_tls_ctx_t *sc, *cc = client_ctx("h2", NULL, NULL, NULL);
    tms_tls_t *c1, *s1, *c2, *s2, *c3, *s3;
    sink_t cs = {0}, ss = {0};
    int crc, src;
    certs_write_cert(path("reload.pem"), &server_cert, NULL);
    certs_write_key(path("reload.key"), &server_cert, 0600);
    sc = tms_tls_ctx_new(
        &(tms_tls_options_t){
            .section = "grpc", .cert = path("reload.pem"), .key = path("reload.key"), .alpn = "h2"},
        err, sizeof(err));
    c1 = tms_tls_new(cc, "localhost");
    s1 = tms_tls_new(sc, NULL);
    pump(c1, s1, &cs, &ss, &crc, &src);
    CHECK(tms_tls_established(c1));

    certs_write_cert(path("reload.pem"), &second, NULL);
    certs_write_key(path("reload.key"), &second, 0600);
    CHECK_EQ_INT(tms_tls_ctx_reload(sc, err, sizeof(err)), 0);
    c2 = tms_tls_new(cc, "localhost");
    s2 = tms_tls_new(sc, NULL);
    pump(c2, s2, &cs, &ss, &crc, &src);
    CHECK(tms_tls_established(c2));
    tms_tls_peer_subject(c2, subject, sizeof(subject));
    CHECK_EQ_STR(subject, "/CN=second");
    /* The first connection still carries data on what it started with. */
    CHECK_EQ_INT(tms_tls_write(c1, "old", 3), 0);
    pump(c1, s1, &cs, &ss, &crc, &src);
    CHECK(ss.len == 3 && memcmp(ss.data, "old", 3) == 0);
    tms_tls_peer_subject(c1, subject, sizeof(subject));
    CHECK_EQ_STR(subject, "/CN=localhost");

    /* A broken file: refused, the second certificate stays. */
    certs_write_cert(path("reload.pem"), &server_cert, NULL); /* does not match the key */
    CHECK_EQ_INT(tms_tls_ctx_reload(sc, err, sizeof(err)), -TMS_EINVAL);
    CHECK(strstr(err, "grpc.tls_key") && strstr(err, "does not match"));
    c3 = tms_tls_new(cc, "localhost");
    s3 = tms_tls_new(sc, NULL);
    pump(c3, s3, &cs, &ss, &crc, &src);
    tms_tls_peer_subject(c3, subject, sizeof(subject));
    CHECK_EQ_STR(subject, "/CN=second");

    tms_tls_free(&c1);
    tms_tls_free(&s1);
    tms_tls_free(&c2);
    tms_tls_free(&s2);
    tms_tls_free(&c3);
    tms_tls_free(&s3);
    tms_tls_ctx_free(&sc);
    tms_tls_ctx_free(&cc);
    certs_free(&second);
    free(cs.data);
    free(ss.data);
}

static int remove_entry(const char *p, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st, (void)flag, (void)ftw;
    return remove(p);
}

int main(void)
{
    test_cert_t loose, future;
    FILE *f;
    if (!mkdtemp(dir))
        return 1;
    ca = certs_make("tms-test-ca", NULL, -60, 86400, NULL);
    other_ca = certs_make("other-ca", NULL, -60, 86400, NULL);
    server_cert = certs_make("localhost", &ca, -60, 86400, "DNS:localhost,IP:127.0.0.1");
    client_cert = certs_make("client", &ca, -60, 86400, NULL);
    expired_client = certs_make("expired", &ca, -7200, -3600, NULL);
    other_client = certs_make("client", &other_ca, -60, 86400, NULL);
    future = certs_make("future", &ca, 3600, 7200, NULL);
    loose = certs_make("loose", &ca, -60, 86400, NULL);
    certs_write_cert(path("ca.pem"), &ca, NULL);
    certs_write_cert(path("server.pem"), &server_cert, NULL);
    certs_write_key(path("server.key"), &server_cert, 0600);
    certs_write_cert(path("client.pem"), &client_cert, NULL);
    certs_write_key(path("client.key"), &client_cert, 0600);
    certs_write_cert(path("expired.pem"), &expired_client, NULL);
    certs_write_key(path("expired.key"), &expired_client, 0600);
    certs_write_cert(path("other.pem"), &other_client, NULL);
    certs_write_key(path("other.key"), &other_client, 0600);
    certs_write_cert(path("future.pem"), &future, NULL);
    certs_write_key(path("future.key"), &future, 0600);
    certs_write_key(path("loose.key"), &server_cert, 0644);
    f = fopen(path("garbage.pem"), "w");
    fputs("not a certificate\n", f);
    fclose(f);
    chmod(path("garbage.pem"), 0600);

    RUN_TEST(test_handshake_data_close);
    RUN_TEST(test_alpn_refused);
    RUN_TEST(test_server_name_checked);
    RUN_TEST(test_client_certificates);
    RUN_TEST(test_protocols);
    RUN_TEST(test_not_tls);
    RUN_TEST(test_context_checks);
    RUN_TEST(test_reload);

    certs_free(&ca);
    certs_free(&other_ca);
    certs_free(&server_cert);
    certs_free(&client_cert);
    certs_free(&expired_client);
    certs_free(&other_client);
    certs_free(&future);
    certs_free(&loose);
    nftw(dir, remove_entry, 16, FTW_DEPTH | FTW_PHYS);
    tms_metrics_reset();
    TEST_EXIT();
}
