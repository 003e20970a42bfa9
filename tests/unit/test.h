/* Minimal unit-test harness: assertions that still work with NDEBUG, one line per
 * failure with file and line, and a summary line. */
#ifndef TMS_TEST_H
#define TMS_TEST_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int tms_test_failures;
static int tms_test_checks;

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        tms_test_checks++;                                                                         \
        if (!(cond)) {                                                                             \
            tms_test_failures++;                                                                   \
            fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond);               \
        }                                                                                          \
    } while (0)

#define CHECK_EQ_INT(a, b)                                                                         \
    do {                                                                                           \
        long long va_ = (long long)(a), vb_ = (long long)(b);                                      \
        tms_test_checks++;                                                                         \
        if (va_ != vb_) {                                                                          \
            tms_test_failures++;                                                                   \
            fprintf(stderr, "%s:%d: CHECK_EQ_INT failed: %s = %lld, %s = %lld\n", __FILE__,        \
                    __LINE__, #a, va_, #b, vb_);                                                   \
        }                                                                                          \
    } while (0)

#define CHECK_EQ_STR(a, b)                                                                         \
    do {                                                                                           \
        const char *sa_ = (a), *sb_ = (b);                                                         \
        tms_test_checks++;                                                                         \
        if (!sa_ || !sb_ || strcmp(sa_, sb_) != 0) {                                               \
            tms_test_failures++;                                                                   \
            fprintf(stderr, "%s:%d: CHECK_EQ_STR failed: %s = \"%s\", %s = \"%s\"\n", __FILE__,    \
                    __LINE__, #a, sa_ ? sa_ : "(null)", #b, sb_ ? sb_ : "(null)");                 \
        }                                                                                          \
    } while (0)

#define RUN_TEST(fn)                                                                               \
    do {                                                                                           \
        int before_ = tms_test_failures;                                                           \
        fn();                                                                                      \
        fprintf(stderr, "%s %s\n", tms_test_failures == before_ ? "ok  " : "FAIL", #fn);           \
    } while (0)

#define TEST_EXIT()                                                                                \
    do {                                                                                           \
        fprintf(stderr, "%d checks, %d failed\n", tms_test_checks, tms_test_failures);             \
        return tms_test_failures ? EXIT_FAILURE : EXIT_SUCCESS;                                    \
    } while (0)

#endif
