/* Test certificates made with OpenSSL's API (for the TLS unit tests and the TLS fuzz
 * harness): P-256 keys, a CA, certificates it signs with chosen names and validity,
 * written as PEM files. Header-only (static functions). */
#ifndef TMS_TEST_TLS_CERTS_H
#define TMS_TEST_TLS_CERTS_H

#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>

typedef struct test_cert {
    EVP_PKEY *key;
    X509 *cert;
} test_cert_t;

static void certs_ext(X509 *x, X509 *issuer, int nid, const char *value)
{
    X509V3_CTX ctx;
    X509_EXTENSION *e;
    X509V3_set_ctx(&ctx, issuer ? issuer : x, x, NULL, NULL, 0);
    e = X509V3_EXT_conf_nid(NULL, &ctx, nid, value);
    if (!e || !X509_add_ext(x, e, -1))
        abort();
    X509_EXTENSION_free(e);
}

/* A certificate for cn valid from now + from_s to now + until_s, signed by ca (NULL:
 * self-signed, a CA); san like "DNS:localhost,IP:127.0.0.1" (NULL: none). */
static test_cert_t certs_make(const char *cn, const test_cert_t *ca, long from_s, long until_s,
                              const char *san)
{
    test_cert_t c;
    X509_NAME *name;
    unsigned char serial[8];
    BIGNUM *bn;
    c.key = EVP_EC_gen("P-256");
    c.cert = X509_new();
    if (!c.key || !c.cert || RAND_bytes(serial, sizeof(serial)) != 1)
        abort();
    serial[0] &= 0x7f;
    X509_set_version(c.cert, 2);
    bn = BN_bin2bn(serial, sizeof(serial), NULL);
    BN_to_ASN1_INTEGER(bn, X509_get_serialNumber(c.cert));
    BN_free(bn);
    X509_gmtime_adj(X509_getm_notBefore(c.cert), from_s);
    X509_gmtime_adj(X509_getm_notAfter(c.cert), until_s);
    X509_set_pubkey(c.cert, c.key);
    name = X509_get_subject_name(c.cert);
    X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC, (const unsigned char *)cn, -1, -1, 0);
    X509_set_issuer_name(c.cert, ca ? X509_get_subject_name(ca->cert) : name);
    if (!ca) {
        certs_ext(c.cert, NULL, NID_basic_constraints, "critical,CA:TRUE");
        certs_ext(c.cert, NULL, NID_key_usage, "critical,keyCertSign,cRLSign");
    } else {
        certs_ext(c.cert, ca->cert, NID_basic_constraints, "CA:FALSE");
        certs_ext(c.cert, ca->cert, NID_ext_key_usage, "serverAuth,clientAuth");
        if (san)
            certs_ext(c.cert, ca->cert, NID_subject_alt_name, san);
    }
    if (!X509_sign(c.cert, ca ? ca->key : c.key, EVP_sha256()))
        abort();
    return c;
}

static void certs_free(test_cert_t *c)
{
    EVP_PKEY_free(c->key);
    X509_free(c->cert);
    c->key = NULL;
    c->cert = NULL;
}

/* Writes the certificate (then, when chain, the CA's after it) to path. */
static void certs_write_cert(const char *path, const test_cert_t *c, const test_cert_t *chain)
{
    FILE *f = fopen(path, "w");
    if (!f || !PEM_write_X509(f, c->cert) || (chain && !PEM_write_X509(f, chain->cert)))
        abort();
    fclose(f);
}

static void certs_write_key(const char *path, const test_cert_t *c, mode_t mode)
{
    FILE *f = fopen(path, "w");
    if (!f || !PEM_write_PrivateKey(f, c->key, NULL, NULL, 0, NULL, NULL))
        abort();
    fclose(f);
    chmod(path, mode);
}

#endif
