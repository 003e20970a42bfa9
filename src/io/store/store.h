/* The one internal shape of the store backends (sqlite/, pg/, mongo/), shared by
 * them and by nothing else. A backend embeds a tms_store_t and gives it a
 * tms_store_backend_t; this file then serves the ports of core/ (user store, task
 * store, outbox) for it, so that every backend has:
 *
 * - the same ports: tms_store_users/tasks/outbox(st) hand out the port structs, whose
 *   submit, busy and close are implemented here once (core/port.h's lifecycle);
 * - the same submit: the port checks the op code (1..nops-1, else -TMS_EINVAL),
 *   drops the outputs of an op that came back as a reply and is submitted again,
 *   refuses ops once the port is closing (-TMS_ECLOSED), counts the op in flight and
 *   hands it to backend->submit(st, port, &msg), which queues it: 0 takes ownership
 *   (clears *msg), -TMS_EFULL leaves it with the caller;
 * - the same ownership: from an accepted submit until its reply the op is the
 *   backend's, and so is a task op's arena (op->arena: its own or its call's), where
 *   the backend puts the strings and list of the answer; the reply hands both back
 *   to msg.reply_to;
 * - the same threads: submit from any thread for SQLite and MongoDB (the embedded
 *   stores are shared by every worker), from the loop's thread for PostgreSQL (one
 *   pool per worker); an op runs on the backend's own thread (SQLite: its owner
 *   thread; MongoDB: its worker pool; PostgreSQL: the loop); close on the loop
 *   given to tms_store_init;
 * - the same reply: the backend calls tms_store_begin when an op leaves its queue and
 *   tms_store_reply when it has its outcome (on whatever thread ran it), which
 *   records the op's duration and error, posts it to msg.reply_to (never a direct
 *   call to the requester) and counts it done;
 * - the same metrics, registered here once per backend:
 *   tms_store_duration_seconds and tms_store_errors_total{store,op} per op, and the
 *   gauges tms_store_queue_depth{store} (accepted, not yet begun) and
 *   tms_store_inflight{store} (accepted, not yet answered);
 * - the same close: a port's close refuses new ops, waits for the port's ops in flight
 *   to be answered, then calls its cb on the loop; once every port the backend handed
 *   out is closed, backend->release(st) tears the backend down and calls
 *   tms_store_released(st) when done (at once or from a libuv close callback), after
 *   which the backend frees its memory; the last port's cb follows on the loop. */
#ifndef TMS_IO_STORE_STORE_H
#define TMS_IO_STORE_STORE_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <uv.h>

#include "core/mailbox.h"
#include "core/metrics.h"
#include "core/outbox.h"
#include "core/port.h"
#include "core/status.h"
#include "core/task_store.h"
#include "core/user_store.h"

/* The port families a backend may serve. */
typedef enum tms_store_port {
    TMS_STORE_USERS = 0,
    TMS_STORE_TASKS,
    TMS_STORE_OUTBOX,
    TMS_STORE_NPORTS,
} tms_store_port_t;

#define TMS_STORE_SERVES(p) (1u << (p))
#define TMS_STORE_MAX_OPS 16 /* op codes of every family are below this */

typedef struct tms_store tms_store_t;

/* What a backend gives the shared ports. */
typedef struct tms_store_backend {
    const char *name; /* "sqlite", "postgres", "mongodb": the port name, the store= label */
    /** Queue *msg (an op of port, counted in flight) to run. 0: ownership taken, *msg
     * cleared; or -TMS_EFULL (queue full) with *msg left as it was. */
    int (*submit)(tms_store_t *st, tms_store_port_t port, tms_msg_t **msg);
    /** Loop thread, once, when every port handed out is closed and idle: stop the
     * threads, close the connections and handles, and call tms_store_released(st)
     * when all is gone (now or later from a close callback on the loop), then free
     * the backend's memory right after that call returns. */
    void (*release)(tms_store_t *st);
    /** Optional: the task store port's reader_open (core/task_store.h). */
    tms_task_reader_t *(*task_reader_open)(tms_store_t *st, uv_loop_t *loop);
    /** Optional: the user store port's reader_open (core/user_store.h). */
    tms_user_reader_t *(*user_reader_open)(tms_store_t *st, uv_loop_t *loop);
} tms_store_backend_t;

typedef struct tms_store_port_state {
    atomic_long inflight; /* accepted and not yet answered */
    atomic_bool closed;   /* close was called: submit refuses */
    bool handed_out;      /* the accessor gave it out (loop thread) */
    bool done;            /* closed and drained, cb called or due (loop thread) */
    tms_port_closed_fn cb;
    void *ctx;
    tms_histogram_t *duration[TMS_STORE_MAX_OPS];
    tms_counter_t *errors[TMS_STORE_MAX_OPS];
} tms_store_port_state_t;

struct tms_store {
    tms_user_store_t users; /* the ports, handed out by tms_store_users/tasks/outbox */
    tms_task_store_t tasks;
    tms_outbox_t outbox;
    const tms_store_backend_t *backend;
    uv_loop_t *loop;
    unsigned serves; /* TMS_STORE_SERVES bits */
    tms_store_port_state_t port[TMS_STORE_NPORTS];
    atomic_long queued;            /* accepted, not yet begun */
    struct tms_store_waker *waker; /* on the loop: a closing port drained elsewhere */
    bool releasing;
};

/** Loop thread: set up st for backend on loop, serving the ports in `serves`, and
 * register its metrics. */
void tms_store_init(tms_store_t *st, const tms_store_backend_t *backend, uv_loop_t *loop,
                    unsigned serves);

/** The ports (owned by st; each valid until its close's cb). Handing a port out makes
 * its close part of the backend's release. NULL for a port the backend does not serve. */
tms_user_store_t *tms_store_users(tms_store_t *st);
tms_task_store_t *tms_store_tasks(tms_store_t *st);
tms_outbox_t *tms_store_outbox(tms_store_t *st);

/** Any thread: the op leaves the backend's queue and starts; returns the time (ns)
 * to give tms_store_reply. */
uint64_t tms_store_begin(tms_store_t *st);

/** Any thread: the op has its outcome: record its duration since began_ns (0: not
 * begun) and its error, post it to msg->reply_to, and count it done. */
void tms_store_reply(tms_store_t *st, tms_store_port_t port, tms_msg_t *msg, uint64_t began_ns);

/** The op's error slot. */
tms_error_t *tms_store_op_err(tms_store_port_t port, tms_msg_t *msg);

/** The op's name for logs and metrics ("create", "task_get", "outbox_fetch"), "?" when
 * out of range. */
const char *tms_store_op_name(tms_store_port_t port, int op);

/** Loop thread, from release: the backend has let go of everything but its memory. */
void tms_store_released(tms_store_t *st);

#endif
