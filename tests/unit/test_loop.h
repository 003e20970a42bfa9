/* Running a test's libuv loop until something happened or a time passed: one copy for
 * the unit tests (static inline: a test that uses none of these gets no unused-function
 * warning).
 *
 * The wait runs the loop with UV_RUN_ONCE and a 1 ms ticking timer of its own: the tick is
 * there so UV_RUN_ONCE never blocks on a long timer (a 10 s poll) or on nothing at all,
 * so the condition and the deadline are looked at every millisecond at least. */
#ifndef TMS_TEST_LOOP_H
#define TMS_TEST_LOOP_H

#include <stdbool.h>
#include <stdint.h>
#include <uv.h>

static inline void tms_test_on_tick(uv_timer_t *t)
{
    (void)t;
}

/* Run the loop until pred(arg) holds or ms pass (counted from now); returns pred(arg). */
static inline bool tms_test_run_until(uv_loop_t *loop, bool (*pred)(void *arg), void *arg, int ms)
{
    uv_timer_t tick;
    uint64_t deadline;
    bool ok;
    uv_update_time(loop);
    deadline = uv_now(loop) + (uint64_t)ms;
    uv_timer_init(loop, &tick);
    uv_timer_start(&tick, tms_test_on_tick, 1, 1);
    while (!(ok = pred(arg)) && uv_now(loop) < deadline)
        uv_run(loop, UV_RUN_ONCE);
    uv_close((uv_handle_t *)&tick, NULL);
    uv_run(loop, UV_RUN_NOWAIT); /* the tick's close completes: it lives on this stack */
    return ok;
}

typedef struct tms_test_at_least {
    const int *flag;
    int want;
} tms_test_at_least_t;

static inline bool tms_test_reached(void *arg)
{
    const tms_test_at_least_t *a = arg;
    return a->flag && *a->flag >= a->want;
}

/* Run the loop until *flag >= want or ms pass; returns whether it got there. flag may be
 * NULL: then it runs for ms and returns false. */
static inline bool tms_test_spin_until(uv_loop_t *loop, const int *flag, int want, int ms)
{
    tms_test_at_least_t a = {flag, want};
    return tms_test_run_until(loop, tms_test_reached, &a, ms);
}

/* Run the loop for ms (timers included). */
static inline void tms_test_spin(uv_loop_t *loop, int ms)
{
    tms_test_spin_until(loop, NULL, 0, ms);
}

#endif
