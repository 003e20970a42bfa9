/* The server: configuration -> adapters -> actors -> roles -> listeners, and the stop
 * in steps. `tms serve` (main.c), the unit tests and the fuzz harnesses all start it
 * through this header, so there is one assembly. The files of src/server/ each do one
 * job of it (README.md there). */
#ifndef TMS_SERVER_H
#define TMS_SERVER_H

#include <stdbool.h>
#include <stddef.h>
#include <uv.h>

#include "core/config.h"
#include "io/http/http1.h"
#include "io/http/rest.h"

/* One worker: a loop's copy of the serving stack. */
typedef struct tms_server tms_server_t;

/** Run `tms serve` with cfg: create data.dir, take its lock, check that the listen
 * addresses are free, load or make the JWT secret, then run server.workers loops on
 * their own threads (core/workers.h) until SIGINT/SIGTERM has stopped them all.
 * Returns the exit status: 0 after a clean stop, 1 otherwise (one line on stderr says
 * why). Call from the main thread; cfg is borrowed until it returns. */
int tms_server_serve(tms_config_t *cfg);

/* Seams for running a server inside a test or fuzz process. */
typedef struct tms_server_options {
    /* Listen on http.addr only: no gRPC and no metrics listener, whatever the
     * configuration says (the HTTP fuzzers, tests that speak REST). */
    bool http_only;
} tms_server_options_t;

/* After tms_server_stop: clean is 1 when every step finished within the grace. */
typedef void (*tms_server_stopped_fn)(void *arg, int clean);

/** Start one worker on the caller's loop and thread, as worker 0 of a one-worker
 * `tms serve` but without data.dir's lock, the address check or signals: the roles
 * of server.roles on the stores of users.url and tasks.url ("sqlite://:memory:" is an
 * in-memory SQLite database, shared by both when both name it), listening on http.addr
 * (":0" takes a free port, tms_server_http_port). The JWT secret is auth.jwt_secret,
 * or the one kept in data.dir (made once, like serve). cfg and opt (NULL: defaults)
 * are borrowed until the server has stopped. Returns the server, or NULL after one
 * line on stderr; what had started then closes itself as the caller runs the loop. */
tms_server_t *tms_server_start(uv_loop_t *loop, tms_config_t *cfg, const tms_server_options_t *opt);

/** Stop s in the steps of `tms serve` (listeners, calls in flight, relays, bus,
 * actors, stores); once every handle it opened has closed, s is freed and
 * stopped(arg, clean) runs on the loop. stopped may be NULL. */
void tms_server_stop(tms_server_t *s, tms_server_stopped_fn stopped, void *arg);

/** The port http.addr got. */
int tms_server_http_port(tms_server_t *s);

/** The HTTP listener and the REST handler behind it (for their counters: open
 * connections, calls still with the actors). Borrowed from s. */
tms_http_server_t *tms_server_http(tms_server_t *s);
tms_rest_t *tms_server_rest(tms_server_t *s);

#endif
