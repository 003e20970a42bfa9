/* Running a test's libuv loop until something happened or a time passed: one copy for
 * the unit tests (static inline: a test that uses none of these gets no unused-function
 * warning).
 *
 * A wait is a series of UV_RUN_NOWAIT turns, each after blocking (outside the loop) until
 * the loop has something to do, 1 ms at most: so it never blocks on a long timer (a 10 s
 * poll) or on nothing at all, and the condition and the deadline are looked at every
 * millisecond at least. It adds no handle to the loop, so nothing is left to close: the
 * last turn it runs is the one after which the condition held, and the loop can be closed
 * right after. (A ticking timer of its own needed one more turn to close, and that turn
 * ran whatever else was due, timers, I/O, mailboxes: a test could see more than it waited
 * for.) Like uv_run, it runs turns only while the loop is alive (a referenced handle or
 * request, or a handle closing); otherwise it only lets the time pass. A wait whose
 * condition holds already runs no turn at all: a handle closed just before it needs a
 * turn to finish its close, so wait for its close callback instead. */
#ifndef TMS_TEST_LOOP_H
#define TMS_TEST_LOOP_H

#include <poll.h>
#include <stdbool.h>
#include <stdint.h>
#include <uv.h>

/* Block until the loop has something to do, 1 ms at most: its backend (epoll) fd is
 * readable once one of its watchers is, and uv_backend_timeout is 0 while callbacks are
 * pending or a handle is closing, else the time to its next timer (-1: none). Watchers
 * started since the last turn are not in the backend yet: the 1 ms bound covers them. */
static inline void tms_test_wait_for_work(uv_loop_t *loop)
{
    struct pollfd p = {.fd = uv_backend_fd(loop), .events = POLLIN};
    int ms = uv_loop_alive(loop) ? uv_backend_timeout(loop) : 1;
    (void)poll(&p, 1, ms < 0 || ms > 1 ? 1 : ms);
}

/* Run the loop until pred(arg) holds or ms pass (counted from now); returns pred(arg).
 * Nothing runs after pred(arg) is seen to hold. */
static inline bool tms_test_run_until(uv_loop_t *loop, bool (*pred)(void *arg), void *arg, int ms)
{
    uint64_t deadline;
    bool ok;
    uv_update_time(loop);
    deadline = uv_now(loop) + (uint64_t)ms;
    while (!(ok = pred(arg)) && uv_now(loop) < deadline) {
        tms_test_wait_for_work(loop);
        uv_run(loop, UV_RUN_NOWAIT); /* updates uv_now, alive or not */
    }
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
