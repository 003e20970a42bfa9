/* The REST adapter: maps HTTP requests on the routes of the operation table
 * (core/ops.h) to tms_api_call_t for the gateway actor and renders the replies as
 * JSON; also serves /healthz, /readyz, /metrics and /openapi.json. A known path with
 * a method it does not have answers 405 with Allow. JSON bodies and status codes
 * live here and nowhere else; domain rules live in the actors. */
#ifndef TMS_IO_REST_H
#define TMS_IO_REST_H

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "core/mailbox.h"
#include "core/push.h"
#include "core/task_store.h"
#include "core/user_store.h"
#include "io/http/http1.h"

typedef struct tms_rest tms_rest_t;

/* A dependency /readyz reports from its own state, as "peer_<name>". */
typedef struct tms_rest_peer_check {
    const char *name; /* static */
    int (*ready)(void *arg);
    void *arg;
} tms_rest_peer_check_t;

typedef struct tms_rest_config {
    tms_mailbox_t *gateway;   /* where calls go; NULL: API routes answer 404 here */
    tms_user_store_t *users;  /* pinged by /readyz; NULL: not in this process */
    tms_task_store_t *tasks;  /* pinged by /readyz; NULL: not in this process */
    uint64_t call_timeout_ms; /* deadline of each call: 504 after it */
    /* optional: /readyz also reports "events", ok when events_ready(events_arg) */
    int (*events_ready)(void *events_arg);
    void *events_arg;
    tms_rest_peer_check_t peers[4]; /* the peers this process calls (split deployment) */
    size_t npeers;
    /* GET /metrics here needs `Authorization: Bearer <metrics_token>`; NULL or "": not
     * served here (404), only on the metrics listener (tms_rest_handle_metrics). */
    const char *metrics_token;
    /* GET /api/task/events (Server-Sent Events): the worker's push hub (NULL: the route
     * answers 503 here) and the reconnection delay advised (retry:, ms). */
    tms_push_hub_t *push;
    uint64_t sse_retry_ms;
} tms_rest_config_t;

/** Create the adapter on loop. Never NULL. */
tms_rest_t *tms_rest_new(uv_loop_t *loop, const tms_rest_config_t *cfg);

/** The tms_http_handler_fn to give the HTTP server, with the adapter as ctx. */
void tms_rest_handle(void *rest, tms_http_request_t *req);

/** A tms_http_handler_fn (ctx unused) for the separate metrics listener: GET and HEAD
 * /metrics without a token; another method there 405; anything else 404. */
void tms_rest_handle_metrics(void *ctx, tms_http_request_t *req);

/** Every method and route tms_rest_handle serves (GET implies HEAD on the operations
 * endpoints): fn(arg, "GET", "/healthz"), ..., then the REST rows of the operation
 * table (core/ops.h) in table order. /openapi.json documents exactly these. */
void tms_rest_routes(void (*fn)(void *arg, const char *method, const char *route), void *arg);

/** Calls and probes sent and not yet answered by the actors. */
size_t tms_rest_pending(tms_rest_t *rest);

/** Call drained(arg) once tms_rest_pending() is 0 (at once when it is; later from the
 * loop when the last call or probe answered and its timer closed). */
void tms_rest_drain(tms_rest_t *rest, void (*drained)(void *arg), void *arg);

/** Free once tms_rest_pending() is 0. Sets *rest NULL. */
void tms_rest_free(tms_rest_t **rest);

#endif
