/* Stream tickets (core/ticket.h, issue 23): what verify accepts and refuses, and the
 * book that makes a ticket single-use. */
#include <stdint.h>
#include <string.h>

#include <sodium.h>

#include "core/status.h"
#include "core/ticket.h"
#include "test.h"

static const unsigned char KEY[] = "0123456789abcdef0123456789abcdef-test-key";
#define KEY_LEN (sizeof KEY - 1)
static const char UID[] = "5f1d7c2e9a3b4c5d6e7f8091";
static const int64_t NOW_MS = 1800000000000;

static tms_ticket_claims_t claims(void)
{
    tms_ticket_claims_t c = {0};
    memcpy(c.sub, UID, sizeof(UID));
    c.token_version = 7;
    c.token_exp_s = NOW_MS / 1000 + 3600;
    c.exp_ms = NOW_MS + TMS_TICKET_TTL_MS;
    randombytes_buf(c.nonce, sizeof(c.nonce));
    return c;
}

static void test_round_trip(void)
{
    tms_ticket_claims_t c = claims(), got;
    char t[TMS_TICKET_MAX];
    CHECK_EQ_INT(tms_ticket_mint(KEY, KEY_LEN, &c, t), 0);
    CHECK(strlen(t) < TMS_TICKET_MAX);
    CHECK(strspn(t, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_") ==
          strlen(t)); /* URL-safe as it is */
    CHECK_EQ_INT(tms_ticket_verify(KEY, KEY_LEN, t, NOW_MS, &got), 0);
    CHECK_EQ_STR(got.sub, UID);
    CHECK_EQ_INT(got.token_version, 7);
    CHECK_EQ_INT(got.token_exp_s, c.token_exp_s);
    CHECK_EQ_INT(got.exp_ms, c.exp_ms);
    CHECK(memcmp(got.nonce, c.nonce, sizeof(c.nonce)) == 0);
}

static void test_refused(void)
{
    tms_ticket_claims_t c = claims(), got;
    char t[TMS_TICKET_MAX], bad[TMS_TICKET_MAX];
    static const unsigned char OTHER[] = "another-key-of-the-same-length-0123456789";
    CHECK_EQ_INT(tms_ticket_mint(KEY, KEY_LEN, &c, t), 0);
    /* expired: at its end and after */
    CHECK_EQ_INT(tms_ticket_verify(KEY, KEY_LEN, t, c.exp_ms + 1, &got), -TMS_ERANGE);
    /* another key */
    CHECK_EQ_INT(tms_ticket_verify(OTHER, sizeof OTHER - 1, t, NOW_MS, &got), -TMS_EINVAL);
    /* any character changed */
    for (size_t i = 0; i < strlen(t); i++) {
        memcpy(bad, t, sizeof(bad));
        bad[i] = bad[i] == 'A' ? 'B' : 'A';
        CHECK_EQ_INT(tms_ticket_verify(KEY, KEY_LEN, bad, NOW_MS, &got), -TMS_EINVAL);
    }
    /* cut short, empty, garbage */
    memcpy(bad, t, sizeof(bad));
    bad[strlen(bad) - 1] = '\0';
    CHECK_EQ_INT(tms_ticket_verify(KEY, KEY_LEN, bad, NOW_MS, &got), -TMS_EINVAL);
    CHECK_EQ_INT(tms_ticket_verify(KEY, KEY_LEN, "", NOW_MS, &got), -TMS_EINVAL);
    CHECK_EQ_INT(tms_ticket_verify(KEY, KEY_LEN, "a.b.c", NOW_MS, &got), -TMS_EINVAL);
    /* a sub that is not a user id is never minted */
    memcpy(c.sub, "not-a-user-id", 14);
    CHECK_EQ_INT(tms_ticket_mint(KEY, KEY_LEN, &c, t), -TMS_EINVAL);
}

static void test_book_single_use_and_bound(void)
{
    tms_ticket_book_t *b = tms_ticket_book_new(2);
    tms_ticket_claims_t a = claims(), c2 = claims(), c3 = claims();
    CHECK_EQ_INT(tms_ticket_book_use(b, &a, NOW_MS), 0);
    CHECK_EQ_INT(tms_ticket_book_use(b, &a, NOW_MS), -TMS_EINVAL); /* used */
    CHECK_EQ_INT(tms_ticket_book_use(b, &c2, NOW_MS), 0);
    CHECK_EQ_INT(tms_ticket_book_use(b, &c3, NOW_MS), -TMS_EFULL); /* two unexpired */
    /* once they expired, their places are free (and they could not verify anyway) */
    CHECK_EQ_INT(tms_ticket_book_use(b, &c3, a.exp_ms + 1), 0);
    tms_ticket_book_free(&b);
    CHECK(b == NULL);
}

int main(void)
{
    if (sodium_init() < 0)
        return 1;
    RUN_TEST(test_round_trip);
    RUN_TEST(test_refused);
    RUN_TEST(test_book_single_use_and_bound);
    TEST_EXIT();
}
