#include <crypt.h>
#include <string.h>

#include <sodium.h>

#include "core/password.h"
#include "core/status.h"
#include "test.h"

#define OPS crypto_pwhash_OPSLIMIT_MIN
#define MEM crypto_pwhash_MEMLIMIT_MIN

static int verify_str(const char *pw, const char *hash)
{
    return tms_password_verify(pw, strlen(pw), hash);
}

static void test_hash_verify(void)
{
    const char pw[] = "correct horse battery staple";
    char h1[TMS_PASSWORD_HASH_SIZE], h2[TMS_PASSWORD_HASH_SIZE];

    CHECK_EQ_INT(tms_password_hash(pw, strlen(pw), OPS, MEM, h1, sizeof h1), 0);
    CHECK(strncmp(h1, "$argon2id$", 10) == 0);
    CHECK_EQ_INT(verify_str(pw, h1), 1);
    CHECK_EQ_INT(verify_str("correct horse battery stapl", h1), 0);
    CHECK_EQ_INT(verify_str("correct horse battery staple!", h1), 0);
    CHECK_EQ_INT(verify_str("", h1), 0);
    /* Salted: same password, different hash, both verify. */
    CHECK_EQ_INT(tms_password_hash(pw, strlen(pw), OPS, MEM, h2, sizeof h2), 0);
    CHECK(strcmp(h1, h2) != 0);
    CHECK_EQ_INT(verify_str(pw, h2), 1);
    /* A tampered hash does not verify. */
    h2[strlen(h2) - 2] = h2[strlen(h2) - 2] == 'A' ? 'B' : 'A';
    CHECK_EQ_INT(verify_str(pw, h2), 0);
}

static void test_binary_password(void)
{
    /* argon2id takes the whole (ptr, len), NUL bytes included. */
    const char pw[] = "abc\0defghij";
    char h[TMS_PASSWORD_HASH_SIZE];

    CHECK_EQ_INT(tms_password_hash(pw, sizeof pw - 1, OPS, MEM, h, sizeof h), 0);
    CHECK_EQ_INT(tms_password_verify(pw, sizeof pw - 1, h), 1);
    CHECK_EQ_INT(tms_password_verify(pw, 3, h), 0);
    CHECK_EQ_INT(tms_password_verify("abc\0defghiX", sizeof pw - 1, h), 0);
}

static void test_hash_bad_args(void)
{
    char h[TMS_PASSWORD_HASH_SIZE];

    CHECK_EQ_INT(tms_password_hash("password", 8, OPS, MEM, h, sizeof h - 1), -TMS_EINVAL);
    CHECK_EQ_INT(tms_password_hash("password", 8, OPS, MEM, NULL, sizeof h), -TMS_EINVAL);
    CHECK_EQ_INT(tms_password_hash(NULL, 8, OPS, MEM, h, sizeof h), -TMS_EINVAL);
    CHECK_EQ_INT(tms_password_verify("password", 8, NULL), 0);
    CHECK_EQ_INT(tms_password_verify("password", 8, ""), 0);
    CHECK_EQ_INT(tms_password_verify("password", 8, "password"), 0);
    CHECK_EQ_INT(tms_password_verify("password", 8, "$1$abc$def"), 0);
    CHECK_EQ_INT(tms_password_verify("password", 8, "$argon2id$garbage"), 0);
    CHECK_EQ_INT(tms_password_verify("password", 8, "$2b$04$short"), 0);
}

/* Fixed vectors: the OpenBSD / jBCrypt test set ($2a$), and $2b$ hashes made once with
 * pyca/bcrypt 5.0.0 (bcrypt.hashpw), which is what Node's native bcrypt produces. */
static void test_bcrypt_fixed_vectors(void)
{
    CHECK_EQ_INT(verify_str("abc", "$2a$06$If6bvum7DFjUnE9p2uDeDu0YHzrHM6tf.iqN8.yx.jNN1ILEf7h0i"),
                 1);
    CHECK_EQ_INT(verify_str("abcdefghijklmnopqrstuvwxyz",
                            "$2a$06$.rCVZVOThsIa97pEDOxvGuRRgzG64bvtJ0938xuqzv18d3ZpQhstC"),
                 1);
    CHECK_EQ_INT(verify_str("~!@#$%^&*()      ~!@#$%^&*()PNBFRD",
                            "$2a$06$fPIsBO8qRqkjj273rfaOI.HtSV9jLDpTbZn782DC6/t7qT67P6FfO"),
                 1);
    CHECK_EQ_INT(verify_str("abd", "$2a$06$If6bvum7DFjUnE9p2uDeDu0YHzrHM6tf.iqN8.yx.jNN1ILEf7h0i"),
                 0);

    const char *b = "$2b$04$ktMZRdIuEkUONkG4D5OSuO6f7FqC4lzoyfSSQ09E6Q6/SVMLwufVG";
    CHECK_EQ_INT(verify_str("correct horse battery staple", b), 1);
    CHECK_EQ_INT(verify_str("correct horse battery stapler", b), 0);
    /* $2y$ (PHP's name for the same algorithm) with the same digest. */
    CHECK_EQ_INT(verify_str("correct horse battery staple",
                            "$2y$04$ktMZRdIuEkUONkG4D5OSuO6f7FqC4lzoyfSSQ09E6Q6/SVMLwufVG"),
                 1);
    CHECK_EQ_INT(verify_str("correct horse battery staple",
                            "$2a$04$1kAvSYTZpNcrmh/exqf3V.nIOjvjmPgM3Z7W12nCJ5yiKAnNMfJWS"),
                 1);
    /* 8-bit (UTF-8) password. */
    CHECK_EQ_INT(verify_str("P\xc3\xa4ssw\xc3\xb6rd-8bit",
                            "$2b$04$huLymDtJjonJsBdh4VYoe.rcJG5aEz07XkXpfFrd6BwEF2bH1YL36"),
                 1);
    CHECK_EQ_INT(verify_str("Passw\xc3\xb6rd-8bit",
                            "$2b$04$huLymDtJjonJsBdh4VYoe.rcJG5aEz07XkXpfFrd6BwEF2bH1YL36"),
                 0);
}

static void test_bcrypt_72_bytes(void)
{
    const char *h72 = "$2b$04$cd1vjV6cOZdviEZkoZGsROXlNx5c3/SqoouY6ZhiUpk4.5PrYs0OK"; /* 'a' x 72 */
    char pw[257];

    memset(pw, 'a', sizeof pw - 1);
    pw[256] = '\0';
    CHECK_EQ_INT(tms_password_verify(pw, 72, h72), 1);
    /* Only the first 72 bytes count, as in Node's bcrypt. */
    CHECK_EQ_INT(tms_password_verify(pw, 73, h72), 1);
    CHECK_EQ_INT(tms_password_verify(pw, 256, h72), 1);
    pw[100] = 'b';
    CHECK_EQ_INT(tms_password_verify(pw, 256, h72), 1);
    CHECK_EQ_INT(tms_password_verify(pw, 71, h72), 0);
    pw[71] = 'b';
    CHECK_EQ_INT(tms_password_verify(pw, 72, h72), 0);
}

/* Hashes made here with libxcrypt for each prefix. */
static void test_bcrypt_generated(void)
{
    const char *prefixes[] = {"$2a$", "$2b$", "$2y$"};
    const char pw[] = "hunter2-but-longer";
    unsigned char rnd[16];
    size_t i;

    randombytes_buf(rnd, sizeof rnd);
    for (i = 0; i < 3; i++) {
        char setting[CRYPT_GENSALT_OUTPUT_SIZE];
        struct crypt_data *cd = calloc(1, sizeof *cd);
        char hash[128];
        const char *r;

        CHECK(crypt_gensalt_rn(prefixes[i], 4, (const char *)rnd, sizeof rnd, setting,
                               sizeof setting) != NULL);
        r = crypt_rn(pw, setting, cd, sizeof *cd);
        CHECK(r != NULL);
        snprintf(hash, sizeof hash, "%s", r ? r : "");
        free(cd);
        CHECK(strncmp(hash, prefixes[i], 4) == 0);
        CHECK_EQ_INT(strlen(hash), 60);
        CHECK_EQ_INT(verify_str(pw, hash), 1);
        CHECK_EQ_INT(verify_str("hunter2-but-longeR", hash), 0);
        CHECK_EQ_INT(tms_password_needs_rehash(hash, OPS, MEM), 1);
        /* Like Node's native bcrypt, a NUL ends the password. */
        CHECK_EQ_INT(tms_password_verify("hunter2-but-longer\0xyz", sizeof pw + 3, hash), 1);
    }
}

static void test_needs_rehash(void)
{
    char h[TMS_PASSWORD_HASH_SIZE];

    CHECK_EQ_INT(tms_password_hash("password1", 9, OPS, MEM, h, sizeof h), 0);
    CHECK_EQ_INT(tms_password_needs_rehash(h, OPS, MEM), 0);
    CHECK_EQ_INT(tms_password_needs_rehash(h, OPS + 1, MEM), 1);
    CHECK_EQ_INT(tms_password_needs_rehash(h, OPS, MEM * 2), 1);
    /* Weaker than the interactive defaults (0 = defaults). */
    CHECK_EQ_INT(tms_password_needs_rehash(h, 0, 0), 1);
    CHECK_EQ_INT(tms_password_needs_rehash(
                     "$2b$04$ktMZRdIuEkUONkG4D5OSuO6f7FqC4lzoyfSSQ09E6Q6/SVMLwufVG", 0, 0),
                 1);
    CHECK_EQ_INT(tms_password_needs_rehash("garbage", 0, 0), 1);
    CHECK_EQ_INT(tms_password_needs_rehash(NULL, 0, 0), 1);
}

/* One check at the production (INTERACTIVE) parameters. */
static void test_interactive(void)
{
    const char pw[] = "an interactive password";
    char h[TMS_PASSWORD_HASH_SIZE];

    CHECK_EQ_INT(tms_password_hash(pw, strlen(pw), 0, 0, h, sizeof h), 0);
    CHECK_EQ_INT(verify_str(pw, h), 1);
    CHECK_EQ_INT(verify_str("an interactive passworD", h), 0);
    CHECK_EQ_INT(tms_password_needs_rehash(h, 0, 0), 0);
    CHECK_EQ_INT(tms_password_needs_rehash(h, crypto_pwhash_OPSLIMIT_INTERACTIVE,
                                           crypto_pwhash_MEMLIMIT_INTERACTIVE),
                 0);
}

int main(void)
{
    RUN_TEST(test_hash_verify);
    RUN_TEST(test_binary_password);
    RUN_TEST(test_hash_bad_args);
    RUN_TEST(test_bcrypt_fixed_vectors);
    RUN_TEST(test_bcrypt_72_bytes);
    RUN_TEST(test_bcrypt_generated);
    RUN_TEST(test_needs_rehash);
    RUN_TEST(test_interactive);
    TEST_EXIT();
}
