/* HS256 JSON Web Tokens over libjwt 1.10, with the checks that libjwt 1.10 leaves to
 * the caller: it takes the algorithm from the token header (an HS512 token verifies
 * against an HS256 key, and a token decoded without a key is not verified at all)
 * and validates no claim. Pure functions: no loop, no I/O; thread-safe. */
#ifndef TMS_CORE_JWT_H
#define TMS_CORE_JWT_H

#include <stddef.h>
#include <stdint.h>

#include "core/status.h"

/* Longest token tms_jwt_verify looks at; longer ones are rejected unread. */
#define TMS_JWT_MAX_LEN 4096

typedef struct tms_jwt_claims {
    char sub[25]; /* user id: 24 lowercase hex + NUL */
    char role[8]; /* "user" or "admin" */
    int64_t token_version;
    int64_t iat;
    int64_t exp;
} tms_jwt_claims_t;

/** Sign an HS256 token with claims sub, userId (same as sub), tokenVersion, role,
 * iat=now, exp=now+ttl_seconds and iss=issuer; returns a malloc'd string the caller
 * frees with free(), or NULL on a bad argument (empty key, user_id not 24 lowercase hex,
 * role not "user"/"admin", ttl_seconds <= 0) or a libjwt failure. */
char *tms_jwt_sign(const unsigned char *key, size_t key_len, const char *issuer,
                   const char *user_id, const char *role, int64_t token_version, int64_t now,
                   int64_t ttl_seconds);

/** Verify an HS256 token at time now (Unix seconds): returns TMS_OK and fills *out, or
 * TMS_UNAUTHENTICATED with a short client-safe reason in why ("missing token",
 * "invalid token", "token expired") for a malformed, oversized, non-HS256, badly signed,
 * expired, future-issued (iat > now + 60 s), wrong-issuer token or one whose sub, role,
 * tokenVersion, iat or exp claim is missing or malformed; why may be NULL. */
tms_status_t tms_jwt_verify(const unsigned char *key, size_t key_len, const char *issuer,
                            const char *token, int64_t now, tms_jwt_claims_t *out, char *why,
                            size_t why_len);

#endif
