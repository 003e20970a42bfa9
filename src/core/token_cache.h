/* Verified tokens by their exact text, so a client that sends the same token on
 * every request pays for the JSON parsing and the HMAC once. Only the signature and
 * claim checks are skipped: expiry is checked on every hit, and the token version
 * is still compared with the user's. One loop thread only; O(token length) per
 * operation (a key from the last 32 bytes); at most max_entries tokens (emptied when full). */
#ifndef TMS_CORE_TOKEN_CACHE_H
#define TMS_CORE_TOKEN_CACHE_H

#include <stddef.h>
#include <stdint.h>

#include "core/jwt.h"

typedef struct tms_token_cache tms_token_cache_t;

/** A cache of at most max_entries tokens; 0 disables it. Never NULL. */
tms_token_cache_t *tms_token_cache_new(size_t max_entries);

/** Free the cache. Sets *c NULL. */
void tms_token_cache_free(tms_token_cache_t **c);

/** 1 and *out when token was verified before and its exp is still after now_s. */
int tms_token_cache_get(tms_token_cache_t *c, const char *token, int64_t now_s,
                        tms_jwt_claims_t *out);

/** Remember a token that tms_jwt_verify accepted with these claims. */
void tms_token_cache_put(tms_token_cache_t *c, const char *token, const tms_jwt_claims_t *claims);

#endif
