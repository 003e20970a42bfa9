/* The JSON writer (issue 19) writes what jansson's json_dumps writes for the same
 * values, within the bound it promises; RFC 3339 times by hand equal strftime's. */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/clock.h"
#include "core/jsonw.h"
#include "test.h"

static void check_string(const char *s, size_t n)
{
    char *buf = malloc(tms_jsonw_string_bound(n) + 1);
    char *end = tms_jsonw_string(buf, s, n);
    json_t *j = json_stringn(s, n);
    char *want = json_dumps(j, JSON_COMPACT | JSON_ENCODE_ANY);
    *end = '\0';
    CHECK((size_t)(end - buf) <= tms_jsonw_string_bound(n));
    CHECK_EQ_STR(buf, want);
    free(want);
    json_decref(j);
    free(buf);
}

static void test_strings(void)
{
    char all[256];
    check_string("", 0);
    check_string("plain text", 10);
    check_string("quote \" backslash \\ slash /", 27);
    check_string("\b\f\n\r\t", 5);
    check_string("\x01\x1f\x7f", 3);
    check_string("\xc3\xa9t\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80", 14);
    check_string("\xe2\x80\xa8 \xe2\x80\xa9", 7); /* U+2028, U+2029: valid JSON as is */
    for (int i = 1; i < 128; i++)
        all[i - 1] = (char)i;
    check_string(all, 127);
    memset(all, 0x01, sizeof(all)); /* the worst case: every byte \u0001 */
    check_string(all, sizeof(all));
}

/* The writer copies 8 clean bytes at a time and escapes within a word byte by byte:
 * every position of a byte to escape, in strings of every length around a word, and
 * random mixes of plain, special and UTF-8 bytes. */
static void test_strings_by_word(void)
{
    static const char specials[] = {'"', '\\', '\n', '\x01', '\x1f', ' ', '\x7f', (char)0xc3};
    char s[64];
    unsigned seed = 12345;
    for (size_t n = 1; n <= 33; n++) {
        for (size_t at = 0; at < n; at++) {
            for (size_t k = 0; k < sizeof(specials); k++) {
                memset(s, 'a', n);
                s[at] = specials[k];
                if ((unsigned char)specials[k] == 0xc3) {
                    if (at + 1 >= n)
                        continue; /* keep the UTF-8 whole */
                    s[at + 1] = (char)0xa9;
                }
                check_string(s, n);
            }
        }
    }
    for (int round = 0; round < 2000; round++) {
        size_t n = (size_t)(rand_r(&seed) % 48);
        for (size_t i = 0; i < n; i++) {
            int r = rand_r(&seed) % 10;
            s[i] = r < 7 ? (char)('a' + r) : specials[rand_r(&seed) % 7];
        }
        check_string(s, n);
    }
}

static void test_ints(void)
{
    const int64_t v[] = {0, 1, -1, 9, 10, 123456789, INT64_MAX, INT64_MIN, -42};
    for (size_t i = 0; i < sizeof(v) / sizeof(v[0]); i++) {
        char buf[TMS_JSONW_INT_MAX + 2], want[32];
        *tms_jsonw_int(buf, v[i]) = '\0';
        snprintf(want, sizeof(want), "%lld", (long long)v[i]);
        CHECK_EQ_STR(buf, want);
    }
    {
        char buf[16];
        *tms_jsonw_string_or_null(buf, NULL) = '\0';
        CHECK_EQ_STR(buf, "null");
    }
}

static void test_times(void)
{
    const int64_t v[] = {0,
                         999,
                         1764338400000,   /* 2025-11-28T14:00:00.000Z */
                         951782400123,    /* 2000-02-29 */
                         4107542399999,   /* 2100-02-28T23:59:59.999Z */
                         4107542400000,   /* 2100-03-01 */
                         253402300799999, /* 9999-12-31T23:59:59.999Z */
                         1709251199000};  /* 2024-02-29T23:59:59 */
    for (size_t i = 0; i < sizeof(v) / sizeof(v[0]) + 2000; i++) {
        int64_t ms = i < sizeof(v) / sizeof(v[0]) ? v[i] : (int64_t)i * 86399999 * 37 + 7;
        char got[32], want[32];
        time_t secs = (time_t)(ms / 1000);
        struct tm tm;
        size_t n;
        gmtime_r(&secs, &tm);
        n = strftime(want, sizeof(want), "%Y-%m-%dT%H:%M:%S", &tm);
        snprintf(want + n, sizeof(want) - n, ".%03dZ", (int)(ms % 1000));
        tms_format_time(ms, got, sizeof(got));
        CHECK_EQ_STR(got, want);
    }
}

int main(void)
{
    RUN_TEST(test_strings);
    RUN_TEST(test_strings_by_word);
    RUN_TEST(test_ints);
    RUN_TEST(test_times);
    TEST_EXIT();
}
