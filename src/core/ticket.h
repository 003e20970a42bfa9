/* Stream tickets (issue 23): what a browser's EventSource, which cannot send an
 * Authorization header, puts in the stream's URL instead of the token. A ticket is
 * short-lived (TMS_TICKET_TTL_MS) and single-use, and never contains the token: it is
 * base64url of the user id, the token version and expiry of the token it was made
 * with, its own expiry and 16 random bytes, signed with HMAC-SHA256 under a key
 * derived from the JWT key (so any auth actor holding that key can check it). Being
 * used is recorded in a ticket book, which every auth actor of a process shares. */
#ifndef TMS_CORE_TICKET_H
#define TMS_CORE_TICKET_H

#include <stddef.h>
#include <stdint.h>

#include "core/user_store.h"

#define TMS_TICKET_TTL_MS 30000
#define TMS_TICKET_NONCE_BYTES 16
#define TMS_TICKET_MAX 128 /* text length, NUL included */

typedef struct tms_ticket_claims {
    char sub[TMS_USER_ID_LEN + 1]; /* user id */
    int64_t token_version;         /* of the token it was made with */
    int64_t token_exp_s;           /* that token's exp */
    int64_t exp_ms;                /* the ticket's own end */
    uint8_t nonce[TMS_TICKET_NONCE_BYTES];
} tms_ticket_claims_t;

/** Sign c (nonce included; see tms_ticket_claims_new) into out (TMS_TICKET_MAX bytes)
 * with key. Returns 0, or -TMS_EINVAL when sub is not a user id. */
int tms_ticket_mint(const unsigned char *key, size_t key_len, const tms_ticket_claims_t *c,
                    char out[TMS_TICKET_MAX]);

/** Check ticket's signature and expiry at now_ms and fill *c. Returns 0, -TMS_EINVAL
 * (malformed or forged) or -TMS_ERANGE (expired). Constant time over the MAC. */
int tms_ticket_verify(const unsigned char *key, size_t key_len, const char *ticket, int64_t now_ms,
                      tms_ticket_claims_t *c);

typedef struct tms_ticket_book tms_ticket_book_t;

/** A book of at most max used tickets (thread-safe). Never NULL. */
tms_ticket_book_t *tms_ticket_book_new(size_t max);

/** Free the book. Sets *b NULL. */
void tms_ticket_book_free(tms_ticket_book_t **b);

/** Record the ticket c as used at now_ms. Returns 0 the first time, -TMS_EINVAL when
 * it was used before, -TMS_EFULL when the book holds max unexpired tickets (expired
 * ones are forgotten first; O(max) then, O(1) otherwise). */
int tms_ticket_book_use(tms_ticket_book_t *b, const tms_ticket_claims_t *c, int64_t now_ms);

#endif
