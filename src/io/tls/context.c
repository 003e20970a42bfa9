/* TLS contexts: SSL_CTX from the settings, their checks, reload, session tickets
 * (see tls.h). */
#include <errno.h>
#include <openssl/core_names.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/x509v3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "core/alloc.h"
#include "core/log.h"
#include "core/status.h"
#include "io/tls/internal.h"

/* A ticket key encrypts for an hour and decrypts for one more; a ticket lives an
 * hour (its lifetime hint and OpenSSL's session timeout), so every ticket still
 * valid can be decrypted, and none outlives two hours of one key. */
#define TICKET_ROTATE_S 3600

static char *dup_or_null(const char *s)
{
    return s && s[0] ? tms_strdup(s) : NULL;
}

static const char *ca_setting(const tms_tls_options_t *o)
{
    return strcmp(o->section, "peers") == 0 ? "tls_ca" : "tls_client_ca";
}

/* The reason of OpenSSL's first error (the cause; later ones only say where it
 * surfaced), in a few words; clears the queue. */
static const char *ssl_reason(char *buf, size_t size)
{
    unsigned long e = ERR_peek_error();
    const char *r = e ? ERR_reason_error_string(e) : NULL;
    snprintf(buf, size, "%s", r ? r : "unknown error");
    ERR_clear_error();
    return buf;
}

static void asn1_time_text(const ASN1_TIME *t, char *out, size_t size)
{
    struct tm tm;
    if (t && ASN1_TIME_to_tm(t, &tm) == 1)
        strftime(out, size, "%Y-%m-%dT%H:%M:%SZ", &tm);
    else
        snprintf(out, size, "an unreadable date");
}

/* A file the process can read; the line names the setting. */
static int check_readable(const tms_tls_options_t *o, const char *setting, const char *path,
                          struct stat *st, char *err, size_t err_len)
{
    if (stat(path, st) != 0) {
        snprintf(err, err_len, "config: %s.%s: cannot read %.900s: %s", o->section, setting, path,
                 strerror(errno));
        return -TMS_EINVAL;
    }
    if (!S_ISREG(st->st_mode)) {
        snprintf(err, err_len, "config: %s.%s: %.900s is not a regular file", o->section, setting,
                 path);
        return -TMS_EINVAL;
    }
    return 0;
}

/* An encrypted key would make OpenSSL prompt on the terminal: refuse instead. */
static int no_password(char *buf, int size, int rwflag, void *u)
{
    (void)buf, (void)size, (void)rwflag, (void)u;
    return 0;
}

static int load_cert_and_key(SSL_CTX *ssl, const tms_tls_options_t *o, char *err, size_t err_len)
{
    struct stat st;
    char why[160], when[40];
    X509 *x;
    EVP_PKEY *pkey;
    FILE *f;
    int rc;
    if (check_readable(o, "tls_cert", o->cert, &st, err, err_len))
        return -TMS_EINVAL;
    if (SSL_CTX_use_certificate_chain_file(ssl, o->cert) != 1) {
        snprintf(err, err_len, "config: %s.tls_cert: no usable PEM certificate in %.900s (%s)",
                 o->section, o->cert, ssl_reason(why, sizeof(why)));
        return -TMS_EINVAL;
    }
    x = SSL_CTX_get0_certificate(ssl);
    if (X509_cmp_current_time(X509_get0_notAfter(x)) <= 0) {
        asn1_time_text(X509_get0_notAfter(x), when, sizeof(when));
        snprintf(err, err_len, "config: %s.tls_cert: the certificate in %.900s expired on %s",
                 o->section, o->cert, when);
        return -TMS_EINVAL;
    }
    if (X509_cmp_current_time(X509_get0_notBefore(x)) > 0) {
        asn1_time_text(X509_get0_notBefore(x), when, sizeof(when));
        snprintf(err, err_len,
                 "config: %s.tls_cert: the certificate in %.900s is not valid before %s",
                 o->section, o->cert, when);
        return -TMS_EINVAL;
    }
    if (check_readable(o, "tls_key", o->key, &st, err, err_len))
        return -TMS_EINVAL;
    if (st.st_mode & S_IRWXO) {
        snprintf(err, err_len,
                 "config: %s.tls_key: %.900s is accessible by others (mode %04o); chmod 600 it "
                 "(or 640 with a group of its own)",
                 o->section, o->key, (unsigned)(st.st_mode & 07777));
        return -TMS_EINVAL;
    }
    f = fopen(o->key, "r");
    pkey = f ? PEM_read_PrivateKey(f, NULL, no_password, NULL) : NULL;
    if (f)
        fclose(f);
    if (!pkey) {
        snprintf(err, err_len,
                 "config: %s.tls_key: no usable PEM private key in %.900s (%s; a key with a "
                 "passphrase cannot be used)",
                 o->section, o->key, ssl_reason(why, sizeof(why)));
        return -TMS_EINVAL;
    }
    if (X509_check_private_key(x, pkey) != 1) {
        ERR_clear_error();
        EVP_PKEY_free(pkey);
        snprintf(err, err_len,
                 "config: %s.tls_key: the key in %.400s does not match the certificate of "
                 "%s.tls_cert (%.400s)",
                 o->section, o->key, o->section, o->cert);
        return -TMS_EINVAL;
    }
    rc = SSL_CTX_use_PrivateKey(ssl, pkey);
    EVP_PKEY_free(pkey);
    if (rc != 1) {
        snprintf(err, err_len, "config: %s.tls_key: cannot use the key in %.900s (%s)", o->section,
                 o->key, ssl_reason(why, sizeof(why)));
        return -TMS_EINVAL;
    }
    return 0;
}

/* "TLSv1.2 TLSv1.3" (spaces, commas or colons between) -> min and max versions. */
static int parse_protocols(const tms_tls_options_t *o, int *min, int *max, char *err,
                           size_t err_len)
{
    const char *p = o->protocols ? o->protocols : TMS_TLS_PROTOCOLS;
    *min = *max = 0;
    while (*p) {
        size_t n = strcspn(p, " ,:\t");
        int v = 0;
        if (n == 7 && strncmp(p, "TLSv1.2", 7) == 0)
            v = TLS1_2_VERSION;
        else if (n == 7 && strncmp(p, "TLSv1.3", 7) == 0)
            v = TLS1_3_VERSION;
        else if (n) {
            snprintf(err, err_len,
                     "config: %s.tls_protocols: \"%.*s\" is not supported (TLSv1.2 and TLSv1.3 "
                     "only)",
                     o->section, (int)(n > 32 ? 32 : n), p);
            return -TMS_EINVAL;
        }
        if (v && (!*min || v < *min))
            *min = v;
        if (v > *max)
            *max = v;
        p += n;
        p += strspn(p, " ,:\t");
    }
    if (!*min) {
        snprintf(err, err_len, "config: %s.tls_protocols: names no protocol (TLSv1.2 TLSv1.3)",
                 o->section);
        return -TMS_EINVAL;
    }
    return 0;
}

/* Server: the client offered ALPN; take ours or refuse the handshake. */
static int on_alpn(SSL *ssl, const unsigned char **out, unsigned char *outlen,
                   const unsigned char *in, unsigned int inlen, void *arg)
{
    tms_tls_ctx_t *c = arg;
    (void)ssl;
    for (unsigned int i = 0; i < inlen;) {
        unsigned int n = in[i];
        const unsigned char *name = in + i + 1;
        if (i + 1 + n > inlen)
            break;
        if ((n == c->alpn_len - 1 && memcmp(name, c->alpn_wire + 1, n) == 0) ||
            (c->alpn_http1 && n == 8 && memcmp(name, "http/1.0", 8) == 0)) {
            *out = name;
            *outlen = (unsigned char)n;
            return SSL_TLSEXT_ERR_OK;
        }
        i += 1 + n;
    }
    /* A client that speaks none of what this listener serves: no_application_protocol. */
    return SSL_TLSEXT_ERR_ALERT_FATAL;
}

static void new_ticket_key(ticket_key_t *k)
{
    if (RAND_bytes((unsigned char *)k, sizeof(*k)) != 1)
        tms_oom(__FILE__, __LINE__); /* no randomness: nothing safe to do */
}

/* Session tickets under our own keys, rotated (see TICKET_ROTATE_S). Returns 1 (use
 * the ticket), 2 (use it and issue a new one: it was under the previous key), 0
 * (unknown key: a full handshake), -1 (failure). */
static int on_ticket_key(SSL *s, unsigned char name[16], unsigned char *iv, EVP_CIPHER_CTX *ectx,
                         EVP_MAC_CTX *hctx, int enc)
{
    static char sha256[] = "SHA256";
    tms_tls_ctx_t *c = SSL_CTX_get_app_data(SSL_get_SSL_CTX(s));
    ticket_key_t key;
    OSSL_PARAM params[3];
    int found = -1;
    time_t now = time(NULL);
    pthread_mutex_lock(&c->lock);
    if (now - c->keys_at >= TICKET_ROTATE_S) {
        c->keys[1] = c->keys[0];
        new_ticket_key(&c->keys[0]);
        c->keys_at = now;
    }
    if (enc) {
        found = 0;
    } else {
        for (int i = 0; i < 2 && found < 0; i++) {
            if (memcmp(c->keys[i].name, name, 16) == 0)
                found = i;
        }
    }
    if (found >= 0)
        key = c->keys[found];
    pthread_mutex_unlock(&c->lock);
    if (found < 0)
        return 0;
    params[0] = OSSL_PARAM_construct_octet_string(OSSL_MAC_PARAM_KEY, key.hmac, sizeof(key.hmac));
    params[1] = OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, sha256, 0);
    params[2] = OSSL_PARAM_construct_end();
    if (enc) {
        memcpy(name, key.name, 16);
        if (RAND_bytes(iv, EVP_CIPHER_get_iv_length(EVP_aes_256_cbc())) != 1 ||
            EVP_EncryptInit_ex(ectx, EVP_aes_256_cbc(), NULL, key.aes, iv) != 1 ||
            EVP_MAC_CTX_set_params(hctx, params) != 1)
            return -1;
        return 1;
    }
    if (EVP_MAC_CTX_set_params(hctx, params) != 1 ||
        EVP_DecryptInit_ex(ectx, EVP_aes_256_cbc(), NULL, key.aes, iv) != 1)
        return -1;
    return found == 0 ? 1 : 2;
}

/* A new SSL_CTX from c->opt, or NULL with err. */
static SSL_CTX *build(tms_tls_ctx_t *c, char *err, size_t err_len)
{
    const tms_tls_options_t *o = &c->opt;
    SSL_CTX *ssl;
    int min, max;
    char why[160];
    ERR_clear_error();
    if (parse_protocols(o, &min, &max, err, err_len))
        return NULL;
    ssl = SSL_CTX_new(o->client ? TLS_client_method() : TLS_server_method());
    if (!ssl) {
        snprintf(err, err_len, "config: %s: cannot create a TLS context (%s)", o->section,
                 ssl_reason(why, sizeof(why)));
        return NULL;
    }
    SSL_CTX_set_min_proto_version(ssl, min);
    SSL_CTX_set_max_proto_version(ssl, max);
    SSL_CTX_set_options(ssl, SSL_OP_NO_RENEGOTIATION | SSL_OP_NO_COMPRESSION);
    /* An idle connection gives its read and write buffers back (about 34 KiB). */
    SSL_CTX_set_mode(ssl, SSL_MODE_RELEASE_BUFFERS);
    if (SSL_CTX_set_cipher_list(ssl, o->ciphers ? o->ciphers : TMS_TLS_CIPHERS) != 1) {
        snprintf(err, err_len, "config: %s.tls_ciphers: no usable cipher in \"%.200s\" (%s)",
                 o->section, o->ciphers ? o->ciphers : TMS_TLS_CIPHERS,
                 ssl_reason(why, sizeof(why)));
        goto fail;
    }
    if ((o->cert || o->key) && load_cert_and_key(ssl, o, err, err_len))
        goto fail;
    if (o->client) {
        if (o->ca && SSL_CTX_load_verify_locations(ssl, o->ca, NULL) != 1) {
            snprintf(err, err_len, "config: %s.%s: no usable PEM certificate in %.900s (%s)",
                     o->section, ca_setting(o), o->ca, ssl_reason(why, sizeof(why)));
            goto fail;
        }
        SSL_CTX_set_verify(ssl, SSL_VERIFY_PEER, NULL);
        if (SSL_CTX_set_alpn_protos(ssl, c->alpn_wire, (unsigned)c->alpn_len) != 0) {
            snprintf(err, err_len, "config: %s: cannot set ALPN", o->section);
            goto fail;
        }
        return ssl;
    }
    if (o->ca) {
        STACK_OF(X509_NAME) *names = SSL_load_client_CA_file(o->ca);
        if (!names || SSL_CTX_load_verify_locations(ssl, o->ca, NULL) != 1) {
            if (names)
                sk_X509_NAME_pop_free(names, X509_NAME_free);
            snprintf(err, err_len, "config: %s.%s: no usable PEM certificate in %.900s (%s)",
                     o->section, ca_setting(o), o->ca, ssl_reason(why, sizeof(why)));
            goto fail;
        }
        SSL_CTX_set_client_CA_list(ssl, names);
        SSL_CTX_set_verify(ssl, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, NULL);
    }
    /* Resumption needs it as soon as client certificates are verified. */
    SSL_CTX_set_session_id_context(ssl, (const unsigned char *)c->label,
                                   (unsigned)strlen(c->label));
    /* Stateless tickets only: a session cache would be memory any client can fill. */
    SSL_CTX_set_session_cache_mode(ssl, SSL_SESS_CACHE_OFF);
    SSL_CTX_set_timeout(ssl, TICKET_ROTATE_S);
    SSL_CTX_set_app_data(ssl, c);
    SSL_CTX_set_tlsext_ticket_key_evp_cb(ssl, on_ticket_key);
    SSL_CTX_set_alpn_select_cb(ssl, on_alpn, c);
    return ssl;
fail:
    SSL_CTX_free(ssl);
    return NULL;
}

tms_tls_ctx_t *tms_tls_ctx_new(const tms_tls_options_t *opt, char *err, size_t err_len)
{
    tms_tls_ctx_t *c = tms_new(tms_tls_ctx_t);
    const char *alpn = opt->alpn ? opt->alpn : "http/1.1";
    char labels[96];
    pthread_mutex_init(&c->lock, NULL);
    c->opt = *opt;
    c->opt.cert = dup_or_null(opt->cert);
    c->opt.key = dup_or_null(opt->key);
    c->opt.ca = dup_or_null(opt->ca);
    c->opt.protocols = dup_or_null(opt->protocols);
    c->opt.ciphers = dup_or_null(opt->ciphers);
    c->opt.alpn = tms_strdup(alpn);
    snprintf(c->label, sizeof(c->label), "%s", opt->label ? opt->label : opt->section);
    c->alpn_len = strlen(alpn) + 1;
    if (c->alpn_len > sizeof(c->alpn_wire))
        c->alpn_len = sizeof(c->alpn_wire);
    c->alpn_wire[0] = (unsigned char)(c->alpn_len - 1);
    memcpy(c->alpn_wire + 1, alpn, c->alpn_len - 1);
    c->alpn_http1 = strcmp(alpn, "http/1.1") == 0;
    if (!opt->client && (!c->opt.cert || !c->opt.key)) {
        snprintf(err, err_len, "config: %s.%s: required with %s.%s", opt->section,
                 c->opt.cert ? "tls_key" : "tls_cert", opt->section,
                 c->opt.cert ? "tls_cert" : "tls_key");
        goto fail;
    }
    if (opt->client && (!c->opt.ca || !c->opt.cert != !c->opt.key)) {
        snprintf(err, err_len, "config: %s.%s: required with %s.tls_%s", opt->section,
                 !c->opt.ca    ? ca_setting(opt)
                 : c->opt.cert ? "tls_key"
                               : "tls_cert",
                 opt->section, c->opt.cert ? "cert" : "key");
        goto fail;
    }
    new_ticket_key(&c->keys[0]);
    new_ticket_key(&c->keys[1]);
    c->keys_at = time(NULL);
    c->ssl = build(c, err, err_len);
    if (!c->ssl)
        goto fail;
    for (int v = 0; v < 2; v++) {
        for (int r = 0; r < 2; r++) {
            snprintf(labels, sizeof(labels), "context=\"%s\",version=\"%s\",resumed=\"%s\"",
                     c->label, v ? "TLSv1.3" : "TLSv1.2", r ? "true" : "false");
            c->handshakes[v][r] =
                tms_metrics_counter("tms_tls_handshakes_total", "TLS handshakes completed", labels);
        }
    }
    snprintf(labels, sizeof(labels), "context=\"%s\",reason=\"error\"", c->label);
    c->failed = tms_metrics_counter("tms_tls_handshake_failures_total",
                                    "TLS handshakes that failed (error: refused by either side "
                                    "or malformed; timeout: not done in time)",
                                    labels);
    snprintf(labels, sizeof(labels), "context=\"%s\",reason=\"timeout\"", c->label);
    c->timeouts = tms_metrics_counter("tms_tls_handshake_failures_total",
                                      "TLS handshakes that failed (error: refused by either side "
                                      "or malformed; timeout: not done in time)",
                                      labels);
    return c;
fail:
    tms_tls_ctx_free(&c);
    return NULL;
}

int tms_tls_ctx_reload(tms_tls_ctx_t *c, char *err, size_t err_len)
{
    SSL_CTX *fresh = build(c, err, err_len), *old;
    if (!fresh)
        return -TMS_EINVAL;
    pthread_mutex_lock(&c->lock);
    old = c->ssl;
    c->ssl = fresh;
    /* A certificate is replaced for a reason (it expires, its key leaked): sessions
     * begun under the old one do not resume under the new one. */
    new_ticket_key(&c->keys[0]);
    new_ticket_key(&c->keys[1]);
    c->keys_at = time(NULL);
    pthread_mutex_unlock(&c->lock);
    SSL_CTX_free(old);
    return 0;
}

const char *tms_tls_ctx_label(const tms_tls_ctx_t *c)
{
    return c->label;
}

void tms_tls_ctx_describe(tms_tls_ctx_t *c, char *out, size_t size)
{
    char subject[256] = "-", until[40] = "-";
    X509 *x;
    pthread_mutex_lock(&c->lock);
    x = SSL_CTX_get0_certificate(c->ssl);
    if (x) {
        X509_NAME_oneline(X509_get_subject_name(x), subject, sizeof(subject));
        asn1_time_text(X509_get0_notAfter(x), until, sizeof(until));
    }
    pthread_mutex_unlock(&c->lock);
    snprintf(out, size, "subject=\"%s\" not_after=%s", subject, until);
}

void tms_tls_ctx_free(tms_tls_ctx_t **cp)
{
    tms_tls_ctx_t *c = cp ? *cp : NULL;
    if (!c)
        return;
    *cp = NULL;
    SSL_CTX_free(c->ssl);
    free((char *)c->opt.cert);
    free((char *)c->opt.key);
    free((char *)c->opt.ca);
    free((char *)c->opt.protocols);
    free((char *)c->opt.ciphers);
    free((char *)c->opt.alpn);
    OPENSSL_cleanse(c->keys, sizeof(c->keys));
    pthread_mutex_destroy(&c->lock);
    free(c);
}
