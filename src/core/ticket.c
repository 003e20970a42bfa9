/* Stream tickets (ticket.h). Layout before base64url: version (1 byte), user id (12
 * bytes, the 24 hex characters), token version, token exp, ticket exp (8 bytes each,
 * big-endian), nonce (16), HMAC-SHA256 of all that (32): 85 bytes, 114 characters. */
#include "core/ticket.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include <sodium.h>

#include "core/alloc.h"
#include "core/objectid.h"
#include "core/status.h"

#define VERSION 1
#define BODY (1 + 12 + 8 + 8 + 8 + TMS_TICKET_NONCE_BYTES)
#define RAW (BODY + crypto_auth_hmacsha256_BYTES)

static const char label[] = "tms stream ticket v1";

/* A key of our own, so that a ticket can never pass for anything else signed with
 * the JWT key. */
static void subkey(const unsigned char *key, size_t key_len,
                   unsigned char out[crypto_auth_hmacsha256_KEYBYTES])
{
    crypto_auth_hmacsha256_state st;
    crypto_auth_hmacsha256_init(&st, key, key_len);
    crypto_auth_hmacsha256_update(&st, (const unsigned char *)label, sizeof(label) - 1);
    crypto_auth_hmacsha256_final(&st, out);
    sodium_memzero(&st, sizeof(st));
}

static void put64(unsigned char *p, int64_t v)
{
    for (int i = 7; i >= 0; i--, v = (int64_t)((uint64_t)v >> 8))
        p[i] = (unsigned char)(v & 0xff);
}

static int64_t get64(const unsigned char *p)
{
    uint64_t v = 0;
    for (int i = 0; i < 8; i++)
        v = v << 8 | p[i];
    return (int64_t)v;
}

int tms_ticket_mint(const unsigned char *key, size_t key_len, const tms_ticket_claims_t *c,
                    char out[TMS_TICKET_MAX])
{
    unsigned char raw[RAW], k[crypto_auth_hmacsha256_KEYBYTES];
    size_t bin_len = 0;
    if (!tms_objectid_valid(c->sub))
        return -TMS_EINVAL;
    raw[0] = VERSION;
    if (sodium_hex2bin(raw + 1, 12, c->sub, TMS_USER_ID_LEN, NULL, &bin_len, NULL) != 0 ||
        bin_len != 12)
        return -TMS_EINVAL;
    put64(raw + 13, c->token_version);
    put64(raw + 21, c->token_exp_s);
    put64(raw + 29, c->exp_ms);
    memcpy(raw + 37, c->nonce, TMS_TICKET_NONCE_BYTES);
    subkey(key, key_len, k);
    crypto_auth_hmacsha256(raw + BODY, raw, BODY, k);
    sodium_memzero(k, sizeof(k));
    sodium_bin2base64(out, TMS_TICKET_MAX, raw, RAW, sodium_base64_VARIANT_URLSAFE_NO_PADDING);
    return 0;
}

int tms_ticket_verify(const unsigned char *key, size_t key_len, const char *ticket, int64_t now_ms,
                      tms_ticket_claims_t *c)
{
    unsigned char raw[RAW], k[crypto_auth_hmacsha256_KEYBYTES];
    size_t n = 0, len = ticket ? strnlen(ticket, TMS_TICKET_MAX) : TMS_TICKET_MAX;
    int ok;
    if (len >= TMS_TICKET_MAX ||
        sodium_base642bin(raw, sizeof(raw), ticket, len, NULL, &n, NULL,
                          sodium_base64_VARIANT_URLSAFE_NO_PADDING) != 0 ||
        n != RAW || raw[0] != VERSION)
        return -TMS_EINVAL;
    subkey(key, key_len, k);
    ok = crypto_auth_hmacsha256_verify(raw + BODY, raw, BODY, k) == 0;
    sodium_memzero(k, sizeof(k));
    if (!ok)
        return -TMS_EINVAL;
    sodium_bin2hex(c->sub, sizeof(c->sub), raw + 1, 12);
    c->token_version = get64(raw + 13);
    c->token_exp_s = get64(raw + 21);
    c->exp_ms = get64(raw + 29);
    memcpy(c->nonce, raw + 37, TMS_TICKET_NONCE_BYTES);
    return now_ms < c->exp_ms ? 0 : -TMS_ERANGE;
}

/* ---- the book of used tickets ---------------------------------------------- */

typedef struct used {
    uint8_t nonce[TMS_TICKET_NONCE_BYTES];
    int64_t exp_ms; /* 0: free slot */
} used_t;

struct tms_ticket_book {
    pthread_mutex_t mu;
    used_t *slots; /* open addressing, 2 * max slots, linear probing */
    size_t nslots, count, max;
};

tms_ticket_book_t *tms_ticket_book_new(size_t max)
{
    tms_ticket_book_t *b = tms_new(tms_ticket_book_t);
    pthread_mutex_init(&b->mu, NULL);
    b->max = max ? max : 1;
    b->nslots = b->max * 2;
    b->slots = tms_calloc(b->nslots, sizeof(used_t));
    return b;
}

void tms_ticket_book_free(tms_ticket_book_t **pb)
{
    tms_ticket_book_t *b = *pb;
    if (!b)
        return;
    *pb = NULL;
    pthread_mutex_destroy(&b->mu);
    free(b->slots);
    free(b);
}

static size_t slot_of(const tms_ticket_book_t *b, const uint8_t *nonce)
{
    uint64_t h;
    memcpy(&h, nonce, sizeof(h)); /* the nonce is random: its bytes are a fine hash */
    return (size_t)(h % b->nslots);
}

/* Rebuild without the expired entries (probing needs no holes in a chain). */
static void forget_expired(tms_ticket_book_t *b, int64_t now_ms)
{
    used_t *old = b->slots;
    b->slots = tms_calloc(b->nslots, sizeof(used_t));
    b->count = 0;
    for (size_t i = 0; i < b->nslots; i++) {
        if (old[i].exp_ms > now_ms) {
            size_t j = slot_of(b, old[i].nonce);
            while (b->slots[j].exp_ms)
                j = (j + 1) % b->nslots;
            b->slots[j] = old[i];
            b->count++;
        }
    }
    free(old);
}

int tms_ticket_book_use(tms_ticket_book_t *b, const tms_ticket_claims_t *c, int64_t now_ms)
{
    int rc = 0;
    size_t i;
    pthread_mutex_lock(&b->mu);
    if (b->count >= b->max)
        forget_expired(b, now_ms);
    for (i = slot_of(b, c->nonce); b->slots[i].exp_ms; i = (i + 1) % b->nslots) {
        if (memcmp(b->slots[i].nonce, c->nonce, TMS_TICKET_NONCE_BYTES) == 0) {
            rc = -TMS_EINVAL;
            goto out;
        }
    }
    if (b->count >= b->max) {
        rc = -TMS_EFULL;
        goto out;
    }
    memcpy(b->slots[i].nonce, c->nonce, TMS_TICKET_NONCE_BYTES);
    b->slots[i].exp_ms = c->exp_ms > 0 ? c->exp_ms : 1;
    b->count++;
out:
    pthread_mutex_unlock(&b->mu);
    return rc;
}
