/* Real-time push of task events (issue 23): the hub that streams the push log
 * (core/task_event.h) to subscribers of every protocol (REST Server-Sent Events in
 * io/http/sse.c, the gRPC server stream tms.v1.TaskEvents/Watch in io/grpc/watch.c).
 *
 * Where events come from. The task store writes one row per change of a task in the
 * change's transaction; its seq is the event id. A hub never takes an event from
 * anywhere else: it reads the log after the last event it delivered (the
 * TMS_API_TASK_EVENTS operation of the task actor, local or over the internal
 * service), so every subscriber sees committed events only, in seq order, and the
 * same ids whether live or resumed. What makes a hub read:
 *   - a poke (tms_push_poke): a write committed in this process (the task actor),
 *     or a doorbell from another process: each process publishes one on the topic
 *     TMS_PUSH_TOPIC after its writes (coalesced, not durable) when told to
 *     (cross-process buses) and while another process is known to have streams
 *     (each process with streams announces that on the same topic), and every
 *     process takes that topic outside the consumer groups (event_bus
 *     subscribe_all: each instance gets every doorbell);
 *   - a poll every poll_ms, which covers a doorbell lost with a crash.
 * seq grows in commit order on SQLite (one writer). On PostgreSQL a sequence hands
 * out seq before commit, so a later seq may commit first: a hub that finds a hole
 * after its last event delivers nothing past it until the hole fills, or for
 * TMS_PUSH_GAP_WAIT_MS, after which it counts the hole (a transaction that rolled
 * back) in tms_push_gaps_total and goes on.
 *
 * Subscribers. tms_push_subscribe takes a caller the gateway and the auth actor
 * already authenticated (operation TMS_API_TASK_WATCH) and its filters, and holds
 * it to the bounds: subscribers in the process and per user (RESOURCE_EXHAUSTED).
 * A subscriber that asked to resume after an event inside the log's window gets
 * exactly the events after it that match its filters, in order, read page by page
 * as its queue drains, then the live ones; one outside the window (purged, or an id
 * the log never had) gets a first event of type reset and the live ones. The
 * protocol's sink (below) queues what a client has not taken; past queue_bytes the
 * hub ends the subscriber (RESOURCE_EXHAUSTED "slow consumer"), so a slow client
 * never makes the server hold more. Every recheck_ms the hub asks the auth actor
 * whether each subscriber's user still has the token version it authenticated with
 * (tms_push_revoked asks at once: a logout or delete seen by this process); a
 * deleted user or a revoked token ends the stream with UNAUTHENTICATED, and so does
 * the end of the token it authenticated with.
 *
 * Threads: one shared part per process (counts, the doorbell feed on the bus's
 * loop); one hub per worker loop, whose subscribers and sinks live on that loop. */
#ifndef TMS_CORE_PUSH_H
#define TMS_CORE_PUSH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "core/api.h"
#include "core/event_bus.h"
#include "core/mailbox.h"
#include "core/status.h"
#include "core/task_event.h"

#define TMS_PUSH_TOPIC "tms.task_events" /* the doorbells between processes (internal) */
#define TMS_PUSH_GAP_WAIT_MS 2000
#define TMS_PUSH_PAGE 64 /* events per read of the log (one internal message, < 4 MiB) */

typedef struct tms_push_limits {
    size_t max_subscribers;          /* in the process; 0: 10000 */
    size_t max_subscribers_per_user; /* in the process; 0: 16 */
    size_t queue_bytes;              /* per subscriber, not yet taken by its client; 0: 256 KiB */
    uint64_t heartbeat_ms;           /* sink heartbeats; 0: 15 s */
    uint64_t recheck_ms;             /* token re-checks; 0: 30 s */
    uint64_t poll_ms;                /* reads of the log without a poke; 0: 1 s */
    uint64_t retention_ms;           /* how long the log keeps events (the task actor's) */
} tms_push_limits_t;

/* ---- events as the hub hands them to sinks ---------------------------------- */

/* The encodings a sink may cache on an event (each protocol's bytes are made once
 * for all its subscribers). */
enum { TMS_PUSH_ENC_SSE, TMS_PUSH_ENC_GRPC, TMS_PUSH_ENC_N };

/* One event, shared by the subscribers of one hub (one loop: plain reference counts).
 * ev's strings live in the same allocation. */
typedef struct tms_push_event {
    int refs;
    tms_task_event_t ev;
    void *enc[TMS_PUSH_ENC_N]; /* heap; freed with the event */
    size_t enc_len[TMS_PUSH_ENC_N];
} tms_push_event_t;

/** Take a reference. */
tms_push_event_t *tms_push_event_ref(tms_push_event_t *e);

/** Drop a reference (the last frees the event and its encodings); clears *e. */
void tms_push_event_unref(tms_push_event_t **e);

/* ---- the protocol's side of one subscriber ----------------------------------- */

typedef struct tms_push_sink tms_push_sink_t;
struct tms_push_sink {
    /** Queue e for the client (reference it to keep it). 0, or -1 when the queue would
     * pass the bound: the hub then ends the subscriber. */
    int (*send)(tms_push_sink_t *self, tms_push_event_t *e);
    /** Bytes queued and not yet taken by the client. */
    size_t (*queued)(tms_push_sink_t *self);
    /** Keep intermediaries from closing a quiet stream (NULL: nothing to do). */
    void (*heartbeat)(tms_push_sink_t *self);
    /** The hub ends the stream with code and message; it has forgotten the
     * subscriber (the sink must not call tms_push_unsubscribe after this). */
    void (*end)(tms_push_sink_t *self, tms_status_t code, const char *message);
    size_t queue_bytes; /* set by tms_push_subscribe: the bound send holds to */
};

/* ---- the process's part --------------------------------------------------------- */

typedef struct tms_push_shared tms_push_shared_t;

/** The shared part, on loop (the bus's loop: worker 0's). With a bus, takes
 * TMS_PUSH_TOPIC outside the consumer groups (bus->subscribe_all) and, when
 * publish_doorbells, publishes a doorbell there after pokes while another process
 * has streams, and announces this process's own streams (a bus that reaches other
 * processes). Never NULL. */
tms_push_shared_t *tms_push_shared_new(uv_loop_t *loop, const tms_push_limits_t *limits,
                                       tms_event_bus_t *bus, bool publish_doorbells);

/** A write committed in this process: every hub reads the log soon, and other
 * processes are told (coalesced). Any thread. NULL: nothing. */
void tms_push_poke(tms_push_shared_t *s);

/** user_id's tokens may have been revoked (logout, delete): every hub re-checks that
 * user's subscribers now. Any thread. */
void tms_push_revoked(tms_push_shared_t *s, const char *user_id);

/** Subscribers in the process. Any thread. */
size_t tms_push_subscribers(tms_push_shared_t *s);

/** Stop taking and publishing doorbells (a publish in flight finishes) and call
 * cb(arg) on its loop once idle. The hubs are stopped first. */
void tms_push_shared_stop(tms_push_shared_t *s, void (*cb)(void *arg), void *arg);

/** Free once stopped (after cb) and once every hub is freed. Sets *s NULL. */
void tms_push_shared_free(tms_push_shared_t **s);

/* ---- one worker's hub ---------------------------------------------------------- */

typedef struct tms_push_hub tms_push_hub_t;
typedef struct tms_push_sub tms_push_sub_t;

/** A hub on loop reading the log through task (the task actor's mailbox, or its
 * proxy) and re-checking tokens through auth. Never NULL. */
tms_push_hub_t *tms_push_hub_start(uv_loop_t *loop, tms_push_shared_t *shared, tms_mailbox_t *task,
                                   tms_mailbox_t *auth);

/** A subscriber for the caller of call (a TMS_API_TASK_WATCH call answered OK: its
 * principal, user.token_version, filters assigned_to, status and task_id, and
 * has_since/since) whose events go to sink, which must outlive it. NULL with err
 * set (RESOURCE_EXHAUSTED: a bound; UNAVAILABLE: stopping) when refused. */
tms_push_sub_t *tms_push_subscribe(tms_push_hub_t *hub, const tms_api_call_t *call,
                                   tms_push_sink_t *sink, tms_error_t *err);

/** The client went away: the hub forgets the subscriber and never calls its sink
 * again. Clears *sub. */
void tms_push_unsubscribe(tms_push_sub_t **sub);

/** End every subscriber (UNAVAILABLE "server shutting down"), refuse new ones, and
 * call cb(arg) once no read or check is in flight and the hub's handles are closed;
 * then tms_push_hub_free. */
void tms_push_hub_stop(tms_push_hub_t *hub, void (*cb)(void *arg), void *arg);

/** Free a stopped hub. Sets *hub NULL. */
void tms_push_hub_free(tms_push_hub_t **hub);

#endif
