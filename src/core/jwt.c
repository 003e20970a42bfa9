#include "core/jwt.h"

#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>
#include <jwt.h>
#include <sodium.h>

#define IAT_LEEWAY_S 60
/* HMAC-SHA256 is 32 bytes: 43 base64url characters without padding. */
#define HS256_SIG_CHARS 43

static int is_user_id(const char *s)
{
    size_t i;

    if (!s)
        return 0;
    for (i = 0; i < 24; i++) {
        char c = s[i];
        if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f')))
            return 0;
    }
    return s[24] == '\0';
}

static int is_role(const char *s)
{
    return s && (strcmp(s, "user") == 0 || strcmp(s, "admin") == 0);
}

static int is_b64url(char c)
{
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' ||
           c == '_';
}

char *tms_jwt_sign(const unsigned char *key, size_t key_len, const char *issuer,
                   const char *user_id, const char *role, int64_t token_version, int64_t now,
                   int64_t ttl_seconds)
{
    jwt_t *jwt = NULL;
    char *token = NULL;

    if (!key || key_len == 0 || key_len > INT_MAX || !issuer || !is_user_id(user_id) ||
        !is_role(role) || ttl_seconds <= 0 || now > INT64_MAX - ttl_seconds)
        return NULL;
    if (jwt_new(&jwt) != 0)
        goto fail;
    /* libjwt stores integers as long; LP64 makes that int64_t. */
    if (jwt_add_grant(jwt, "sub", user_id) != 0 || jwt_add_grant(jwt, "userId", user_id) != 0 ||
        jwt_add_grant(jwt, "role", role) != 0 || jwt_add_grant(jwt, "iss", issuer) != 0 ||
        jwt_add_grant_int(jwt, "tokenVersion", (long)token_version) != 0 ||
        jwt_add_grant_int(jwt, "iat", (long)now) != 0 ||
        jwt_add_grant_int(jwt, "exp", (long)(now + ttl_seconds)) != 0)
        goto fail;
    if (jwt_set_alg(jwt, JWT_ALG_HS256, key, (int)key_len) != 0)
        goto fail;
    token = jwt_encode_str(jwt);
fail:
    jwt_free(jwt);
    return token;
}

/* Decode one base64url part (no padding) and parse it as a JSON object, rejecting
 * duplicate keys so that what we check is what any other parser would read. */
static json_t *decode_part(const char *b64, size_t len)
{
    unsigned char buf[TMS_JWT_MAX_LEN];
    size_t n = 0;
    json_t *obj;

    if (sodium_base642bin(buf, sizeof buf, b64, len, NULL, &n, NULL,
                          sodium_base64_VARIANT_URLSAFE_NO_PADDING) != 0)
        return NULL;
    obj = json_loadb((const char *)buf, n, JSON_REJECT_DUPLICATES, NULL);
    if (obj && !json_is_object(obj)) {
        json_decref(obj);
        return NULL;
    }
    return obj;
}

static int get_int(json_t *obj, const char *name, int64_t *out)
{
    json_t *v = json_object_get(obj, name);

    if (!json_is_integer(v))
        return -1;
    *out = (int64_t)json_integer_value(v);
    return 0;
}

static tms_status_t reject(char *why, size_t why_len, const char *reason)
{
    if (why && why_len > 0)
        snprintf(why, why_len, "%s", reason);
    return TMS_UNAUTHENTICATED;
}

tms_status_t tms_jwt_verify(const unsigned char *key, size_t key_len, const char *issuer,
                            const char *token, int64_t now, tms_jwt_claims_t *out, char *why,
                            size_t why_len)
{
    const char *dot1, *dot2, *p;
    size_t len;
    json_t *head = NULL, *body = NULL;
    jwt_t *jwt = NULL;
    const char *s, *reason = "invalid token";
    int64_t iat, exp, version;
    tms_jwt_claims_t c;

    if (!token || !*token)
        return reject(why, why_len, "missing token");
    /* Without a key libjwt 1.10 skips verification: never call it that way. */
    if (!key || key_len == 0 || key_len > INT_MAX || !issuer || !out)
        return reject(why, why_len, reason);
    len = strnlen(token, TMS_JWT_MAX_LEN + 1);
    if (len > TMS_JWT_MAX_LEN)
        return reject(why, why_len, reason);

    /* Shape: header.payload.signature, each non-empty base64url without padding. */
    dot1 = dot2 = NULL;
    for (p = token; *p; p++) {
        if (*p == '.') {
            if (dot2)
                return reject(why, why_len, reason);
            if (dot1)
                dot2 = p;
            else
                dot1 = p;
        } else if (!is_b64url(*p)) {
            return reject(why, why_len, reason);
        }
    }
    if (!dot2 || dot1 == token || dot2 == dot1 + 1 ||
        (size_t)(token + len - (dot2 + 1)) != HS256_SIG_CHARS)
        return reject(why, why_len, reason);

    /* Pin the algorithm before libjwt sees the token: it would honour HS384/HS512. */
    head = decode_part(token, (size_t)(dot1 - token));
    if (!head)
        goto fail;
    s = json_string_value(json_object_get(head, "alg"));
    if (!s || strcmp(s, "HS256") != 0)
        goto fail;
    s = json_string_value(json_object_get(head, "typ"));
    if (json_object_get(head, "typ") && (!s || strcmp(s, "JWT") != 0))
        goto fail;

    if (jwt_decode(&jwt, token, key, (int)key_len) != 0 || !jwt)
        goto fail;
    if (jwt_get_alg(jwt) != JWT_ALG_HS256)
        goto fail;

    body = decode_part(dot1 + 1, (size_t)(dot2 - dot1 - 1));
    if (!body)
        goto fail;
    if (get_int(body, "exp", &exp) != 0 || get_int(body, "iat", &iat) != 0 ||
        get_int(body, "tokenVersion", &version) != 0 || version < 0)
        goto fail;
    if (exp <= now) {
        reason = "token expired";
        goto fail;
    }
    if (iat > now && iat - now > IAT_LEEWAY_S)
        goto fail;
    s = json_string_value(json_object_get(body, "iss"));
    if (!s || strcmp(s, issuer) != 0)
        goto fail;
    s = json_string_value(json_object_get(body, "sub"));
    if (!is_user_id(s))
        goto fail;
    memset(&c, 0, sizeof c);
    memcpy(c.sub, s, 24);
    /* userId is optional, but when present it must name the same user. */
    if (json_object_get(body, "userId")) {
        s = json_string_value(json_object_get(body, "userId"));
        if (!s || strcmp(s, c.sub) != 0)
            goto fail;
    }
    s = json_string_value(json_object_get(body, "role"));
    if (!is_role(s))
        goto fail;
    snprintf(c.role, sizeof c.role, "%s", s);
    c.token_version = version;
    c.iat = iat;
    c.exp = exp;

    *out = c;
    json_decref(head);
    json_decref(body);
    jwt_free(jwt);
    if (why && why_len > 0)
        why[0] = '\0';
    return TMS_OK;
fail:
    json_decref(head);
    json_decref(body);
    jwt_free(jwt);
    return reject(why, why_len, reason);
}
