/* Worker threads (server.workers = N): N threads, each with its own libuv loop that
 * runs one copy of the serving stack, and the calling (main) thread, which owns the
 * process signals and nothing else.
 *
 * Start-up runs worker 0 first, alone, so that it can create what the others borrow
 * (embedded stores, migrations, the port a ":0" address got), then the others at
 * once; a worker that fails to start stops every worker already started. The first
 * SIGINT or SIGTERM asks every worker to stop (each stops accepting, finishes what it
 * has in flight and closes its handles, which ends its loop); a second one ends the
 * process at once with status 1. A worker whose loop ends without being asked stops
 * the others too. SIGHUP runs the reload hook on the main thread (and nothing else:
 * it no longer ends the process). Worker threads block SIGINT, SIGTERM and SIGHUP
 * (so do the threads they create), so only the main thread takes them. */
#ifndef TMS_CORE_WORKERS_H
#define TMS_CORE_WORKERS_H

#include <uv.h>

#define TMS_WORKERS_MAX 64

typedef struct tms_workers tms_workers_t;

typedef struct tms_workers_hooks {
    /* On worker `index`'s thread with its new loop: start serving. Returns 0 once
     * serving, or non-zero after printing why and closing (or starting to close)
     * every handle it opened; the loop is then run until it ends. */
    int (*start)(void *arg, tms_workers_t *w, int index, uv_loop_t *loop);
    /* On worker `index`'s thread, once, only after its start returned 0: stop
     * accepting, finish in-flight work and close every handle. */
    void (*stop)(void *arg, int index);
    /* On worker `index`'s thread after its loop ended (started workers only): 0 for
     * a clean stop. May be NULL. */
    int (*finished)(void *arg, int index);
    /* On the main thread once every worker has started. May be NULL. */
    void (*started)(void *arg, int nworkers);
    /* On the main thread at the first SIGINT/SIGTERM, before the workers are told to
     * stop. May be NULL. */
    void (*stopping)(void *arg, int signum);
    /* On the main thread at each SIGHUP while serving: re-read what can be re-read
     * (TLS certificates); whatever it swaps must be safe for the workers to see.
     * May be NULL. */
    void (*reload)(void *arg);
    void *arg;
} tms_workers_hooks_t;

/** Run n workers (1..TMS_WORKERS_MAX) until they have all ended; blocks the calling
 * thread, which must be the main thread. Returns 0 when every worker started and
 * stopped cleanly after a signal, 1 otherwise (a start failed, a worker ended on its
 * own or did not stop cleanly), 2 when n is out of range or a thread could not be
 * created. */
int tms_workers_run(int n, const tms_workers_hooks_t *hooks);

/** Workers whose loop has not ended yet (worker 0 counts itself). Any thread. */
int tms_workers_alive(tms_workers_t *w);

#endif
