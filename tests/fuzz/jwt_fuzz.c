/* libFuzzer: tms_jwt_verify on hostile tokens. An input whose first byte is even is
 * the token itself; otherwise the rest is "header JSON\npayload JSON" and the harness
 * signs it correctly (HMAC-SHA256 with the key), so the claim checks behind the
 * signature are reached too. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <sodium.h>

#include "core/jwt.h"

static const unsigned char KEY[] = "0123456789abcdef0123456789abcdef-fuzz-key";
#define KEY_LEN (sizeof KEY - 1)
static const int64_t NOW = 1800000000;

static char *b64url(const uint8_t *p, size_t n)
{
    size_t cap = sodium_base64_ENCODED_LEN(n, sodium_base64_VARIANT_URLSAFE_NO_PADDING);
    char *out = malloc(cap);
    sodium_bin2base64(out, cap, p, n, sodium_base64_VARIANT_URLSAFE_NO_PADDING);
    return out;
}

static char *sign(const uint8_t *data, size_t size)
{
    const uint8_t *nl = memchr(data, '\n', size);
    size_t hn = nl ? (size_t)(nl - data) : size;
    char *h = b64url(data, hn);
    char *p = nl ? b64url(nl + 1, size - hn - 1) : b64url((const uint8_t *)"", 0);
    unsigned char mac[crypto_auth_hmacsha256_BYTES];
    size_t n = strlen(h) + strlen(p) + 2;
    char *signing = malloc(n), *sig, *tok;
    memcpy(signing, h, strlen(h));
    signing[strlen(h)] = '.';
    memcpy(signing + strlen(h) + 1, p, strlen(p) + 1);
    crypto_auth_hmacsha256_state st;
    crypto_auth_hmacsha256_init(&st, KEY, KEY_LEN);
    crypto_auth_hmacsha256_update(&st, (const unsigned char *)signing, strlen(signing));
    crypto_auth_hmacsha256_final(&st, mac);
    sig = b64url(mac, sizeof mac);
    tok = malloc(strlen(signing) + strlen(sig) + 2);
    strcpy(tok, signing);
    strcat(tok, ".");
    strcat(tok, sig);
    free(h);
    free(p);
    free(signing);
    free(sig);
    return tok;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    tms_jwt_claims_t claims;
    char why[64], *tok;
    if (size < 1 || size > 8192)
        return 0;
    if (data[0] % 2 == 0) {
        tok = malloc(size);
        memcpy(tok, data + 1, size - 1);
        tok[size - 1] = '\0';
    } else {
        tok = sign(data + 1, size - 1);
    }
    if (tms_jwt_verify(KEY, KEY_LEN, "tms", tok, NOW, &claims, why, sizeof why) == TMS_OK) {
        /* Whatever verified must be a well-formed principal. */
        if (strlen(claims.sub) != 24 ||
            (strcmp(claims.role, "user") != 0 && strcmp(claims.role, "admin") != 0) ||
            claims.exp <= NOW)
            abort();
    }
    free(tok);
    return 0;
}
