/* Text helpers: trimming, UTF-8 character counts (the title/description limits of
 * API.md count characters, not bytes) and strict id parsing. */
#include "core/text.h"
#include "test.h"

static void test_trim(void)
{
    char a[] = "  hello \t\n", b[] = "", c[] = "   ", d[] = "x";
    CHECK_EQ_STR(tms_text_trim(a), "hello");
    CHECK_EQ_STR(tms_text_trim(b), "");
    CHECK_EQ_STR(tms_text_trim(c), "");
    CHECK_EQ_STR(tms_text_trim(d), "x");
}

static void test_utf8(void)
{
    CHECK_EQ_INT(tms_utf8_length("abc", 3), 3);
    CHECK_EQ_INT(tms_utf8_length("\xc3\xa9t\xc3\xa9", 5), 3); /* été */
    CHECK_EQ_INT(tms_utf8_length("\xe2\x82\xac", 3), 1);      /* € */
    CHECK_EQ_INT(tms_utf8_length("\xf0\x9f\x98\x80", 4), 1);  /* emoji */
    CHECK_EQ_INT(tms_utf8_length("\xc3", 1), -1);             /* truncated */
    CHECK_EQ_INT(tms_utf8_length("\xc0\xaf", 2), -1);         /* overlong */
    CHECK_EQ_INT(tms_utf8_length("\xed\xa0\x80", 3), -1);     /* surrogate */
    CHECK_EQ_INT(tms_utf8_length("\xf4\x90\x80\x80", 4), -1); /* > U+10FFFF */
    CHECK_EQ_INT(tms_utf8_length("a\0b", 3), -1);             /* NUL */
    CHECK_EQ_INT(tms_utf8_length("\x80", 1), -1);             /* lone continuation */
}

static void test_parse_id(void)
{
    CHECK_EQ_INT(tms_parse_id("1", 1), 1);
    CHECK_EQ_INT(tms_parse_id("42", 2), 42);
    CHECK_EQ_INT(tms_parse_id("9223372036854775807", 19), INT64_MAX);
    CHECK_EQ_INT(tms_parse_id("9223372036854775808", 19), 0);
    CHECK_EQ_INT(tms_parse_id("0", 1), 0);
    CHECK_EQ_INT(tms_parse_id("01", 2), 0);
    CHECK_EQ_INT(tms_parse_id("-1", 2), 0);
    CHECK_EQ_INT(tms_parse_id("1a", 2), 0);
    CHECK_EQ_INT(tms_parse_id("", 0), 0);
    CHECK_EQ_INT(tms_parse_id(" 1", 2), 0);
}

static void test_copy(void)
{
    char small[4], big[16];
    CHECK_EQ_STR(tms_text_copy(small, sizeof(small), "abcdef"), "abc");
    CHECK_EQ_STR(tms_text_copy(small, sizeof(small), ""), "");
    CHECK_EQ_STR(tms_text_copy(big, sizeof(big), "abcdef"), "abcdef");
    CHECK_EQ_STR(tms_text_copy(small, 1, "x"), "");
}

int main(void)
{
    RUN_TEST(test_trim);
    RUN_TEST(test_utf8);
    RUN_TEST(test_parse_id);
    RUN_TEST(test_copy);
    TEST_EXIT();
}
