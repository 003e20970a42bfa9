/* Circuit breaker state machine and full-jitter back-off. */
#include "core/breaker.h"
#include "test.h"

static void fail_n(tms_breaker_t *b, int n, int64_t now)
{
    for (int i = 0; i < n; i++) {
        CHECK(tms_breaker_allow(b, now));
        tms_breaker_record(b, true, now);
    }
}

static void test_opens_at_threshold_of_full_window(void)
{
    tms_breaker_t b;
    tms_breaker_init(&b, 10, 50, 10000);
    /* 4 failures, 5 successes: window not full, stays closed. */
    fail_n(&b, 4, 0);
    for (int i = 0; i < 5; i++)
        CHECK_EQ_INT(tms_breaker_record(&b, false, 0), TMS_BREAKER_CLOSED);
    /* 10th outcome a failure: 5 of 10 failed = 50% -> open. */
    CHECK_EQ_INT(tms_breaker_record(&b, true, 5), TMS_BREAKER_OPEN);
    CHECK(!tms_breaker_allow(&b, 6));
    CHECK(!tms_breaker_allow(&b, 10004));
}

static void test_below_threshold_stays_closed(void)
{
    tms_breaker_t b;
    tms_breaker_init(&b, 10, 50, 10000);
    /* S S F S S F ...: any 10 consecutive calls hold at most 4 failures (< 50%). */
    for (int i = 0; i < 100; i++) {
        bool failed = (i % 3) == 2;
        CHECK(tms_breaker_allow(&b, i));
        CHECK_EQ_INT(tms_breaker_record(&b, failed, i), TMS_BREAKER_CLOSED);
    }
}

static void test_old_failures_slide_out(void)
{
    tms_breaker_t b;
    tms_breaker_init(&b, 4, 50, 1000);
    tms_breaker_record(&b, true, 0);
    tms_breaker_record(&b, false, 0);
    tms_breaker_record(&b, false, 0);
    tms_breaker_record(&b, false, 0); /* 1 of 4 */
    tms_breaker_record(&b, false, 0); /* the failure slides out: 0 of 4 */
    CHECK_EQ_INT(b.failures, 0);
    tms_breaker_record(&b, true, 0);
    CHECK_EQ_INT(tms_breaker_record(&b, true, 0), TMS_BREAKER_OPEN); /* 2 of 4 */
}

static void test_half_open_single_probe_then_close(void)
{
    tms_breaker_t b;
    tms_breaker_init(&b, 2, 50, 1000);
    fail_n(&b, 2, 100);
    CHECK_EQ_INT(b.state, TMS_BREAKER_OPEN);
    CHECK(!tms_breaker_allow(&b, 1099));
    CHECK(tms_breaker_allow(&b, 1100)); /* the probe */
    CHECK_EQ_INT(b.state, TMS_BREAKER_HALF_OPEN);
    CHECK(!tms_breaker_allow(&b, 1100)); /* only one */
    CHECK_EQ_INT(tms_breaker_record(&b, false, 1200), TMS_BREAKER_CLOSED);
    CHECK(tms_breaker_allow(&b, 1200));
    CHECK_EQ_INT(b.count, 0); /* a fresh window after recovery */
}

static void test_half_open_probe_fails_reopens(void)
{
    tms_breaker_t b;
    tms_breaker_init(&b, 1, 50, 1000);
    fail_n(&b, 1, 0);
    CHECK(tms_breaker_allow(&b, 1000));
    CHECK_EQ_INT(tms_breaker_record(&b, true, 1500), TMS_BREAKER_OPEN);
    CHECK(!tms_breaker_allow(&b, 2000)); /* cool-down restarts at 1500 */
    CHECK(tms_breaker_allow(&b, 2500));
}

static void test_late_outcome_while_open_ignored(void)
{
    tms_breaker_t b;
    tms_breaker_init(&b, 2, 50, 1000);
    fail_n(&b, 2, 0);
    CHECK_EQ_INT(tms_breaker_record(&b, false, 10), TMS_BREAKER_OPEN);
    CHECK_EQ_INT(tms_breaker_record(&b, true, 10), TMS_BREAKER_OPEN);
    CHECK_EQ_INT(b.opened_at_ms, 0);
}

static void test_clamps(void)
{
    tms_breaker_t b;
    tms_breaker_init(&b, 1000, 0, -5);
    CHECK_EQ_INT(b.window, TMS_BREAKER_WINDOW_MAX);
    CHECK_EQ_INT(b.threshold_pct, 1);
    CHECK_EQ_INT(b.cooldown_ms, 0);
    CHECK_EQ_STR(tms_breaker_state_name(TMS_BREAKER_HALF_OPEN), "half_open");
}

static void test_backoff_full_jitter(void)
{
    /* The cap doubles per attempt up to max; rnd picks within [0, cap]. */
    CHECK_EQ_INT(tms_backoff_ms(1, 100, 10000, 0xffffffffu), 0xffffffffu % 101);
    CHECK_EQ_INT(tms_backoff_ms(1, 100, 10000, 100), 100);
    CHECK_EQ_INT(tms_backoff_ms(2, 100, 10000, 200), 200);
    CHECK_EQ_INT(tms_backoff_ms(3, 100, 10000, 400), 400);
    CHECK_EQ_INT(tms_backoff_ms(3, 100, 10000, 401), 0);
    CHECK_EQ_INT(tms_backoff_ms(60, 100, 10000, 10000), 10000); /* capped, no overflow */
    CHECK_EQ_INT(tms_backoff_ms(60, 100, 10000, 10001), 0);
    for (uint32_t r = 0; r < 100000; r += 7) {
        int64_t v = tms_backoff_ms(4, 250, 1000, r * 2654435761u);
        CHECK(v >= 0 && v <= 1000);
    }
    CHECK_EQ_INT(tms_backoff_ms(1, 0, 0, 5), 0);
}

int main(void)
{
    RUN_TEST(test_opens_at_threshold_of_full_window);
    RUN_TEST(test_below_threshold_stays_closed);
    RUN_TEST(test_old_failures_slide_out);
    RUN_TEST(test_half_open_single_probe_then_close);
    RUN_TEST(test_half_open_probe_fails_reopens);
    RUN_TEST(test_late_outcome_while_open_ignored);
    RUN_TEST(test_clamps);
    RUN_TEST(test_backoff_full_jitter);
    TEST_EXIT();
}
