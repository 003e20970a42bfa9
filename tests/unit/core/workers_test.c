/* Worker threads: worker 0 starts alone before the others, each worker runs its own
 * loop on its own thread, SIGTERM stops every worker (worker 0 last here, the way
 * src/server/shutdown.c orders it), a failed start stops the started ones, and n is bounded. */
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <unistd.h>
#include <uv.h>

#include "core/workers.h"
#include "test.h"

#define N 4

typedef struct fixture {
    int fail_index; /* start of this worker fails; -1: none */
    atomic_int zero_started, bad_order, starts, stops, finishes, ended_before_zero;
    int started_hook, stopping_signal;
    tms_workers_t *w;
    uv_loop_t *loops[N];
    pthread_t threads[N];
    uv_timer_t timers[N]; /* one "part" per worker: a repeating timer */
} fixture_t;

static fixture_t fx;

static void on_tick(uv_timer_t *t)
{
    (void)t;
}

static int start(void *arg, tms_workers_t *w, int index, uv_loop_t *loop)
{
    fixture_t *f = arg;
    if (index == 0) /* the others start after worker 0's start returned */
        f->w = w;
    if (index > 0 && !atomic_load(&f->zero_started))
        atomic_fetch_add(&f->bad_order, 1);
    f->loops[index] = loop;
    f->threads[index] = pthread_self();
    atomic_fetch_add(&f->starts, 1);
    if (index == f->fail_index)
        return -1;
    uv_timer_init(loop, &f->timers[index]);
    uv_timer_start(&f->timers[index], on_tick, 5, 5);
    if (index == 0)
        atomic_store(&f->zero_started, 1);
    return 0;
}

/* Worker 0 closes its part only once the others have ended. */
static void on_zero_wait(uv_timer_t *t)
{
    if (tms_workers_alive(fx.w) > 1)
        return;
    uv_close((uv_handle_t *)t, NULL);
}

static void stop(void *arg, int index)
{
    fixture_t *f = arg;
    atomic_fetch_add(&f->stops, 1);
    if (!pthread_equal(pthread_self(), f->threads[index]))
        atomic_fetch_add(&f->bad_order, 1); /* CHECK is for the main thread only */
    if (index == 0) {
        uv_timer_start(&f->timers[0], on_zero_wait, 1, 1);
        return;
    }
    uv_close((uv_handle_t *)&f->timers[index], NULL);
}

static int finished(void *arg, int index)
{
    fixture_t *f = arg;
    atomic_fetch_add(&f->finishes, 1);
    if (index == 0)
        atomic_store(&f->ended_before_zero, N - tms_workers_alive(f->w));
    return 0;
}

static void started(void *arg, int n)
{
    fixture_t *f = arg;
    f->started_hook = n;
    kill(getpid(), SIGTERM); /* taken by this (main) thread's loop once it runs */
}

static void stopping(void *arg, int signum)
{
    ((fixture_t *)arg)->stopping_signal = signum;
}

static const tms_workers_hooks_t hooks = {
    .start = start,
    .stop = stop,
    .finished = finished,
    .started = started,
    .stopping = stopping,
    .arg = &fx,
};

static void reset(int fail_index)
{
    memset(&fx, 0, sizeof(fx));
    fx.fail_index = fail_index;
}

static void test_start_and_sigterm(void)
{
    reset(-1);
    CHECK_EQ_INT(tms_workers_run(N, &hooks), 0);
    CHECK_EQ_INT(atomic_load(&fx.starts), N);
    CHECK_EQ_INT(atomic_load(&fx.bad_order), 0);
    CHECK_EQ_INT(fx.started_hook, N);
    CHECK_EQ_INT(fx.stopping_signal, SIGTERM);
    CHECK_EQ_INT(atomic_load(&fx.stops), N);
    CHECK_EQ_INT(atomic_load(&fx.finishes), N);
    CHECK_EQ_INT(atomic_load(&fx.ended_before_zero), N - 1); /* worker 0 ended last */
    for (int i = 1; i < N; i++) {
        CHECK(fx.loops[i] != fx.loops[0]);
        CHECK(!pthread_equal(fx.threads[i], fx.threads[0]));
    }
}

static void test_failed_start_stops_all(void)
{
    reset(2);
    CHECK_EQ_INT(tms_workers_run(N, &hooks), 1);
    CHECK_EQ_INT(atomic_load(&fx.starts), N);
    CHECK_EQ_INT(fx.started_hook, 0);
    CHECK_EQ_INT(atomic_load(&fx.stops), N - 1);    /* not the failed one */
    CHECK_EQ_INT(atomic_load(&fx.finishes), N - 1); /* nor its finish */
}

static void test_worker_zero_fails_alone(void)
{
    reset(0);
    CHECK_EQ_INT(tms_workers_run(N, &hooks), 1);
    CHECK_EQ_INT(atomic_load(&fx.starts), 1); /* the others never started */
    CHECK_EQ_INT(atomic_load(&fx.stops), 0);
}

static void test_bounds(void)
{
    reset(-1);
    CHECK_EQ_INT(tms_workers_run(0, &hooks), 2);
    CHECK_EQ_INT(tms_workers_run(TMS_WORKERS_MAX + 1, &hooks), 2);
    CHECK_EQ_INT(atomic_load(&fx.starts), 0);
}

int main(void)
{
    RUN_TEST(test_start_and_sigterm);
    RUN_TEST(test_failed_start_stops_all);
    RUN_TEST(test_worker_zero_fails_alone);
    RUN_TEST(test_bounds);
    TEST_EXIT();
}
