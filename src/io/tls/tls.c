/* One TLS connection without a socket (see tls.h): a BIO of our own between OpenSSL
 * and the owner's buffers. Reading, it hands OpenSSL the bytes of the read being
 * handled (no copy into a BIO of OpenSSL's, nothing kept between reads but a partial
 * record inside OpenSSL); writing, it appends to an output buffer that the owner
 * takes whole and gives to uv_write, so nothing is copied twice and an idle
 * connection holds no buffer (SSL_MODE_RELEASE_BUFFERS does the same for OpenSSL's). */
#include <arpa/inet.h>
#include <limits.h>
#include <openssl/err.h>
#include <openssl/x509v3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#include "core/alloc.h"
#include "core/status.h"
#include "io/tls/internal.h"

/* The largest plaintext of one record. */
#define RECORD_MAX 16384

struct tms_tls {
    SSL *ssl;
    tms_tls_ctx_t *ctx;
    const char *in; /* the ciphertext of the input being handled */
    size_t in_len;
    char *out; /* ciphertext to send, for the owner to take */
    size_t out_len, out_cap;
    bool client, established, failed, shut, plain_http;
    char error[160];
};

static BIO_METHOD *bio_method;
static uv_once_t bio_once = UV_ONCE_INIT;

static int bio_write(BIO *b, const char *data, int len)
{
    tms_tls_t *t = BIO_get_data(b);
    BIO_clear_retry_flags(b);
    if (len <= 0)
        return 0;
    if (t->out_len + (size_t)len > t->out_cap) {
        size_t cap = t->out_cap ? t->out_cap : 4096;
        while (cap < t->out_len + (size_t)len)
            cap *= 2;
        t->out = tms_realloc(t->out, cap);
        t->out_cap = cap;
    }
    memcpy(t->out + t->out_len, data, (size_t)len);
    t->out_len += (size_t)len;
    return len;
}

static int bio_read(BIO *b, char *buf, int len)
{
    tms_tls_t *t = BIO_get_data(b);
    size_t n;
    BIO_clear_retry_flags(b);
    if (t->in_len == 0) {
        BIO_set_retry_read(b); /* all of this read is consumed: wait for the next */
        return -1;
    }
    n = t->in_len < (size_t)len ? t->in_len : (size_t)len;
    memcpy(buf, t->in, n);
    t->in += n;
    t->in_len -= n;
    return (int)n;
}

static long bio_ctrl(BIO *b, int cmd, long num, void *ptr)
{
    (void)b, (void)num, (void)ptr;
    return cmd == BIO_CTRL_FLUSH ? 1 : 0;
}

static int bio_create(BIO *b)
{
    BIO_set_init(b, 1);
    return 1;
}

static void make_bio_method(void)
{
    bio_method = BIO_meth_new(BIO_get_new_index() | BIO_TYPE_SOURCE_SINK, "tms");
    if (!bio_method || !BIO_meth_set_write(bio_method, bio_write) ||
        !BIO_meth_set_read(bio_method, bio_read) || !BIO_meth_set_ctrl(bio_method, bio_ctrl) ||
        !BIO_meth_set_create(bio_method, bio_create))
        tms_oom(__FILE__, __LINE__);
}

/* Why the handshake or a record failed, from OpenSSL's error queue (then cleared). */
static void failed(tms_tls_t *t, int rc)
{
    int e = SSL_get_error(t->ssl, rc);
    unsigned long code = ERR_peek_last_error();
    long verify = SSL_get_verify_result(t->ssl);
    const char *reason = code ? ERR_reason_error_string(code) : NULL;
    if (!t->established)
        tms_counter_add(t->ctx->failed, 1);
    t->failed = true;
    t->plain_http = code && ERR_GET_REASON(code) == SSL_R_HTTP_REQUEST;
    if (verify != X509_V_OK && t->client)
        snprintf(t->error, sizeof(t->error), "certificate verify failed: %s",
                 X509_verify_cert_error_string(verify));
    else if (reason)
        snprintf(t->error, sizeof(t->error), "%s", reason);
    else
        snprintf(t->error, sizeof(t->error), "%s",
                 e == SSL_ERROR_SYSCALL ? "unexpected end of the TLS stream" : "TLS error");
    ERR_clear_error();
}

tms_tls_t *tms_tls_new(tms_tls_ctx_t *ctx, const char *host)
{
    tms_tls_t *t = tms_new(tms_tls_t);
    BIO *bio;
    int rc;
    uv_once(&bio_once, make_bio_method);
    t->ctx = ctx;
    t->client = ctx->opt.client;
    pthread_mutex_lock(&ctx->lock);
    t->ssl = SSL_new(ctx->ssl);
    pthread_mutex_unlock(&ctx->lock);
    bio = BIO_new(bio_method);
    if (!t->ssl || !bio)
        tms_oom(__FILE__, __LINE__);
    BIO_set_data(bio, t);
    SSL_set_bio(t->ssl, bio, bio);
    if (!t->client) {
        SSL_set_accept_state(t->ssl);
        return t;
    }
    SSL_set_connect_state(t->ssl);
    if (host && host[0]) {
        unsigned char ip[16];
        if (inet_pton(AF_INET, host, ip) == 1 ||
            inet_pton(AF_INET6, host, ip) == 1) { /* an address: the certificate's IP SAN */
            X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(t->ssl), host);
        } else {
            SSL_set_tlsext_host_name(t->ssl, host);
            SSL_set1_host(t->ssl, host);
        }
    }
    ERR_clear_error();
    rc = SSL_do_handshake(t->ssl); /* the ClientHello, into the output */
    if (rc != 1 && SSL_get_error(t->ssl, rc) != SSL_ERROR_WANT_READ)
        failed(t, rc);
    return t;
}

void tms_tls_free(tms_tls_t **tp)
{
    tms_tls_t *t = tp ? *tp : NULL;
    if (!t)
        return;
    *tp = NULL;
    SSL_free(t->ssl);
    free(t->out);
    free(t);
}

/* The handshake is done: count it; a client also checks ALPN. */
static int on_established(tms_tls_t *t)
{
    const unsigned char *p = NULL;
    unsigned int n = 0;
    if (t->client) {
        const tms_tls_ctx_t *c = t->ctx;
        SSL_get0_alpn_selected(t->ssl, &p, &n);
        if (n != c->alpn_len - 1 || memcmp(p, c->alpn_wire + 1, n) != 0) {
            snprintf(t->error, sizeof(t->error), "the server did not select ALPN %s", c->opt.alpn);
            t->failed = true;
            tms_counter_add(t->ctx->failed, 1);
            return -TMS_EIO;
        }
    }
    t->established = true;
    tms_counter_add(t->ctx->handshakes[SSL_version(t->ssl) == TLS1_3_VERSION]
                                      [SSL_session_reused(t->ssl) ? 1 : 0],
                    1);
    return 0;
}

int tms_tls_input(tms_tls_t *t, const char *data, size_t len, tms_tls_plain_fn plain, void *arg)
{
    char buf[RECORD_MAX];
    int rc = 0;
    if (t->failed)
        return -TMS_EIO;
    t->in = data;
    t->in_len = len;
    ERR_clear_error();
    if (!t->established) {
        int r = SSL_do_handshake(t->ssl);
        if (r != 1) {
            int e = SSL_get_error(t->ssl, r);
            if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE)
                goto out; /* every byte was taken: the next read goes on */
            failed(t, r);
            rc = -TMS_EIO;
            goto out;
        }
        if (on_established(t) != 0) {
            rc = -TMS_EIO;
            goto out;
        }
    }
    for (;;) {
        int n = SSL_read(t->ssl, buf, sizeof(buf));
        int e;
        if (n > 0) {
            if (plain(arg, buf, (size_t)n) != 0)
                break;
            continue;
        }
        e = SSL_get_error(t->ssl, n);
        if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE)
            break;
        if (e == SSL_ERROR_ZERO_RETURN) {
            rc = TMS_TLS_EOF;
            break;
        }
        failed(t, n);
        rc = -TMS_EIO;
        break;
    }
out:
    t->in = NULL;
    t->in_len = 0;
    return rc;
}

int tms_tls_write(tms_tls_t *t, const void *data, size_t len)
{
    const char *p = data;
    size_t need;
    if (t->failed || !t->established)
        return -TMS_EIO;
    /* Room for the records' headers and tags at once (29 bytes each at most). */
    need = t->out_len + len + (len / RECORD_MAX + 1) * 64;
    if (need > t->out_cap) {
        t->out = tms_realloc(t->out, need);
        t->out_cap = need;
    }
    while (len) {
        int chunk = len > INT_MAX ? INT_MAX : (int)len;
        int n;
        ERR_clear_error();
        n = SSL_write(t->ssl, p, chunk);
        if (n <= 0) {
            failed(t, n);
            return -TMS_EIO;
        }
        p += n;
        len -= (size_t)n;
    }
    return 0;
}

void tms_tls_shutdown(tms_tls_t *t)
{
    if (!t->established || t->failed || t->shut)
        return;
    t->shut = true;
    ERR_clear_error();
    (void)SSL_shutdown(t->ssl); /* 0: our close_notify is out; we do not wait for theirs */
    ERR_clear_error();
}

char *tms_tls_take(tms_tls_t *t, size_t *len)
{
    char *p = t->out_len ? t->out : NULL;
    *len = t->out_len;
    if (!p)
        return NULL;
    t->out = NULL;
    t->out_len = t->out_cap = 0;
    return p;
}

bool tms_tls_established(const tms_tls_t *t)
{
    return t->established && !t->failed;
}

const char *tms_tls_error(const tms_tls_t *t)
{
    return t->error;
}

bool tms_tls_plain_http(const tms_tls_t *t)
{
    return t->plain_http;
}

const char *tms_tls_alpn(const tms_tls_t *t)
{
    static __thread char name[32];
    const unsigned char *p = NULL;
    unsigned int n = 0;
    SSL_get0_alpn_selected(t->ssl, &p, &n);
    if (n >= sizeof(name))
        n = 0;
    memcpy(name, p ? (const char *)p : "", n);
    name[n] = '\0';
    return name;
}

void tms_tls_peer_subject(const tms_tls_t *t, char *out, size_t size)
{
    X509 *x = SSL_get0_peer_certificate(t->ssl);
    if (size)
        out[0] = '\0';
    if (x && size)
        X509_NAME_oneline(X509_get_subject_name(x), out, (int)size);
}

void tms_tls_timed_out(tms_tls_t *t)
{
    tms_counter_add(t->ctx->timeouts, 1);
}
