#define _GNU_SOURCE /* pthread_setname_np */
#include "core/workers.h"

#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/alloc.h"
#include "core/log.h"
#include "core/metrics.h"

typedef struct worker {
    tms_workers_t *w;
    int index;
    pthread_t thread;
    int created; /* the thread exists and is joined at the end */
    uv_loop_t loop;
    uv_async_t control;     /* the main thread's stop request; closed when acted on */
    uv_prepare_t log_flush; /* this thread's log lines out once per loop iteration */
    atomic_int stop_requested;
    int start_done, start_rc; /* under w->lock */
    atomic_int ended;         /* the loop ended */
    int clean;                /* the finished hook said 0; valid once ended */
} worker_t;

struct tms_workers {
    const tms_workers_hooks_t *hooks;
    int n;
    pthread_mutex_t lock;
    pthread_cond_t cond;
    atomic_int alive;
    uv_loop_t main_loop;
    uv_async_t wake; /* a worker's loop ended */
    uv_signal_t sigint, sigterm, sighup;
    int stopping; /* the workers were told to stop (signal or failure) */
    int failed;   /* exit status 1 whatever happens next */
    worker_t workers[TMS_WORKERS_MAX];
};

/* ---- on a worker's thread ---------------------------------------------- */

static void on_control(uv_async_t *a)
{
    worker_t *wk = a->data;
    if (!atomic_load(&wk->stop_requested) || uv_is_closing((uv_handle_t *)a))
        return;
    /* Closing the control handle lets the loop end once the parts have closed theirs. */
    uv_close((uv_handle_t *)a, NULL);
    wk->w->hooks->stop(wk->w->hooks->arg, wk->index);
}

/* Once per loop iteration, before the loop waits: this thread's log lines to the
 * log thread's buffer (core/log.h). */
static void on_log_flush(uv_prepare_t *h)
{
    (void)h;
    tms_log_stage_flush();
}

static void *worker_main(void *arg)
{
    worker_t *wk = arg;
    tms_workers_t *w = wk->w;
    char label[32];
    int rc;

    if (w->n > 1) {
        snprintf(label, sizeof(label), "worker=\"%d\"", wk->index);
        tms_metrics_thread_label(label);
    }
    uv_loop_init(&wk->loop);
    tms_log_stage_start();
    uv_prepare_init(&wk->loop, &wk->log_flush);
    uv_prepare_start(&wk->log_flush, on_log_flush);
    uv_unref((uv_handle_t *)&wk->log_flush); /* the loop ends when the parts have ended */
    uv_async_init(&wk->loop, &wk->control, on_control);
    wk->control.data = wk;
    rc = w->hooks->start(w->hooks->arg, w, wk->index, &wk->loop);
    if (rc != 0)
        uv_close((uv_handle_t *)&wk->control, NULL);
    pthread_mutex_lock(&w->lock);
    wk->start_rc = rc;
    wk->start_done = 1;
    pthread_cond_broadcast(&w->cond);
    pthread_mutex_unlock(&w->lock);

    uv_run(&wk->loop, UV_RUN_DEFAULT);
    uv_close((uv_handle_t *)&wk->log_flush, NULL);
    uv_run(&wk->loop, UV_RUN_DEFAULT); /* the close */
    tms_log_stage_stop();
    wk->clean =
        rc == 0 && (!w->hooks->finished || w->hooks->finished(w->hooks->arg, wk->index) == 0);
    tms_metrics_drop_thread_gauges();
    if (uv_loop_close(&wk->loop) != 0)
        tms_log_warn("worker_loop_busy", "worker=%d", wk->index);
    atomic_store(&wk->ended, 1);
    atomic_fetch_sub(&w->alive, 1);
    /* The last thing this thread does with w: the main thread joins before it closes
     * the handle. */
    uv_async_send(&w->wake);
    return NULL;
}

/* ---- on the main thread ------------------------------------------------ */

static void request_stop(worker_t *wk)
{
    if (!wk->created || wk->start_rc != 0 || atomic_exchange(&wk->stop_requested, 1))
        return;
    uv_async_send(&wk->control);
}

static void stop_all(tms_workers_t *w)
{
    w->stopping = 1;
    for (int i = 0; i < w->n; i++)
        request_stop(&w->workers[i]);
}

/* Joins the threads and closes the main handles once every loop has ended. */
static void check_ended(tms_workers_t *w)
{
    int all = 1;
    for (int i = 0; i < w->n; i++) {
        worker_t *wk = &w->workers[i];
        if (!wk->created)
            continue;
        if (!atomic_load(&wk->ended)) {
            all = 0;
        } else if (!w->stopping) {
            tms_log_error("worker_ended", "worker=%d error=\"loop ended unasked\"", i);
            w->failed = 1;
            stop_all(w);
        }
    }
    if (!all || uv_is_closing((uv_handle_t *)&w->wake))
        return;
    for (int i = 0; i < w->n; i++) {
        if (w->workers[i].created)
            pthread_join(w->workers[i].thread, NULL);
    }
    uv_close((uv_handle_t *)&w->wake, NULL);
    uv_close((uv_handle_t *)&w->sigint, NULL);
    uv_close((uv_handle_t *)&w->sigterm, NULL);
    uv_close((uv_handle_t *)&w->sighup, NULL);
}

static void on_wake(uv_async_t *a)
{
    check_ended(a->data);
}

static void on_signal(uv_signal_t *h, int signum)
{
    tms_workers_t *w = h->data;
    if (w->stopping) {
        tms_log_warn("shutdown_forced", "signal=%d", signum);
        tms_log_flush_now();
        fflush(stderr);
        _exit(1);
    }
    if (w->hooks->stopping)
        w->hooks->stopping(w->hooks->arg, signum);
    stop_all(w);
}

static void on_sighup(uv_signal_t *h, int signum)
{
    tms_workers_t *w = h->data;
    (void)signum;
    if (!w->stopping && w->hooks->reload)
        w->hooks->reload(w->hooks->arg);
}

static int spawn(tms_workers_t *w, int i)
{
    worker_t *wk = &w->workers[i];
    char name[16];
    int rc;
    wk->w = w;
    wk->index = i;
    atomic_fetch_add(&w->alive, 1);
    rc = pthread_create(&wk->thread, NULL, worker_main, wk);
    if (rc != 0) {
        atomic_fetch_sub(&w->alive, 1);
        fprintf(stderr, "tms: server.workers: cannot start thread %d: %s\n", i, strerror(rc));
        return -1;
    }
    wk->created = 1;
    snprintf(name, sizeof(name), "tms-w%d", i);
    pthread_setname_np(wk->thread, name);
    return 0;
}

/* Waits until workers from..to-1 (created ones) have reported their start; returns
 * the index of the first that failed, or -1. */
static int wait_started(tms_workers_t *w, int from, int to)
{
    int failed = -1;
    pthread_mutex_lock(&w->lock);
    for (int i = from; i < to; i++) {
        worker_t *wk = &w->workers[i];
        while (wk->created && !wk->start_done)
            pthread_cond_wait(&w->cond, &w->lock);
        if (wk->created && wk->start_rc != 0 && failed < 0)
            failed = i;
    }
    pthread_mutex_unlock(&w->lock);
    return failed;
}

int tms_workers_run(int n, const tms_workers_hooks_t *hooks)
{
    tms_workers_t *w;
    sigset_t block, old;
    int failed = -1, spawned = 1, rc;

    if (n < 1 || n > TMS_WORKERS_MAX)
        return 2;
    w = tms_new(tms_workers_t);
    w->hooks = hooks;
    w->n = n;
    pthread_mutex_init(&w->lock, NULL);
    pthread_cond_init(&w->cond, NULL);
    uv_loop_init(&w->main_loop);
    uv_async_init(&w->main_loop, &w->wake, on_wake);
    w->wake.data = w;
    uv_signal_init(&w->main_loop, &w->sigint);
    uv_signal_init(&w->main_loop, &w->sigterm);
    uv_signal_init(&w->main_loop, &w->sighup);
    w->sigint.data = w->sigterm.data = w->sighup.data = w;
    uv_signal_start(&w->sigint, on_signal, SIGINT);
    uv_signal_start(&w->sigterm, on_signal, SIGTERM);
    uv_signal_start(&w->sighup, on_sighup, SIGHUP);

    /* Threads inherit the mask: only this thread takes the stop signals (a signal
     * arriving meanwhile waits until the mask is restored, then the loop sees it). */
    sigemptyset(&block);
    sigaddset(&block, SIGINT);
    sigaddset(&block, SIGTERM);
    sigaddset(&block, SIGHUP);
    pthread_sigmask(SIG_BLOCK, &block, &old);
    if (spawn(w, 0) != 0) {
        spawned = 0;
    } else if ((failed = wait_started(w, 0, 1)) < 0) {
        for (int i = 1; i < n && spawned; i++)
            spawned = spawn(w, i) == 0;
        failed = wait_started(w, 1, n);
    }
    pthread_sigmask(SIG_SETMASK, &old, NULL);

    if (failed >= 0 || !spawned) {
        /* Worker 0's reason is the whole story (no other had started); a later one's
         * line is followed by which worker it was. */
        if (failed > 0)
            fprintf(stderr, "tms: server.workers: worker %d of %d failed to start; stopping all\n",
                    failed, n);
        w->failed = 1;
        stop_all(w);
    } else {
        if (hooks->started)
            hooks->started(hooks->arg, n);
    }
    check_ended(w); /* the workers may all have ended already */
    uv_run(&w->main_loop, UV_RUN_DEFAULT);

    rc = w->failed ? 1 : 0;
    for (int i = 0; i < n; i++) {
        if (w->workers[i].created && !w->workers[i].clean)
            rc = 1;
    }
    uv_loop_close(&w->main_loop);
    pthread_cond_destroy(&w->cond);
    pthread_mutex_destroy(&w->lock);
    free(w);
    return rc;
}

int tms_workers_alive(tms_workers_t *w)
{
    return atomic_load(&w->alive);
}
