/* Bounded mailboxes and messages: the only way actors (and the worker threads that
 * serve them) talk to each other.
 *
 * A message embeds its list link as its first member; a mailbox is a list, a mutex
 * for cross-thread posts and either a uv_async_t (the consumer is a loop) or a
 * condition variable (the consumer is a dedicated thread, e.g. the SQLite owner).
 * Requests count against the bound; replies do not, since every reply answers a
 * request its receiver itself sent, so they are bounded by the receiver's own
 * in-flight limit. */
#ifndef TMS_CORE_MAILBOX_H
#define TMS_CORE_MAILBOX_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

typedef struct tms_msg tms_msg_t;
typedef struct tms_mailbox tms_mailbox_t;

/* Continuation: runs on the thread of msg->reply_to when the reply arrives. */
typedef void (*tms_cont_fn)(tms_msg_t *msg);
/* A mailbox owner's handler for requests and stop messages. */
typedef void (*tms_msg_handler_fn)(void *owner, tms_msg_t *msg);

typedef enum tms_msg_kind {
    TMS_MSG_REQUEST = 0, /* delivered to the owner's handler */
    TMS_MSG_REPLY = 1,   /* delivered by calling msg->cont(msg) */
    TMS_MSG_STOP = 2,    /* delivered to the owner's handler; finish and stop */
} tms_msg_kind_t;

struct tms_msg {
    tms_msg_t *next; /* list link: first member */
    tms_msg_kind_t kind;
    int op;                          /* operation code of the receiver's protocol */
    tms_mailbox_t *reply_to;         /* where the reply goes; NULL for one-way messages */
    tms_cont_fn cont;                /* continuation for the reply */
    void *ctx;                       /* requester's context, untouched by the receiver */
    void (*free_fn)(tms_msg_t *msg); /* frees an undeliverable message; may be NULL */
};

/** Create a mailbox consumed on `loop` by on_message(owner, msg); capacity bounds
 * queued requests. Must be called on the loop's thread. Never NULL. */
tms_mailbox_t *tms_mailbox_new(uv_loop_t *loop, const char *name, size_t capacity,
                               tms_msg_handler_fn on_message, void *owner);

/** Create a mailbox consumed by a dedicated thread through tms_mailbox_take. */
tms_mailbox_t *tms_mailbox_new_threaded(const char *name, size_t capacity);

/** Post a request (or stop) message. Takes ownership and clears *msg on success.
 * Returns 0, -TMS_EFULL when the bound is reached (caller keeps *msg and answers
 * UNAVAILABLE), or -TMS_ECLOSED after close. Safe from any thread. */
int tms_mailbox_post(tms_mailbox_t *mb, tms_msg_t **msg);

/** Loop thread, in a libuv callback that is not a mailbox drain: until
 * tms_mailbox_batch_end, posts and replies to mailboxes of this thread's loop join the
 * same-thread ready list (as posts made while draining do) and are delivered by
 * batch_end, within the callback, instead of waking the loop through the mailbox's
 * async handle (an eventfd write, and a loop iteration later). Returns false when a
 * drain or batch is already running; give batch_end what begin returned. */
bool tms_mailbox_batch_begin(void);
void tms_mailbox_batch_end(bool began);

/** Send msg back to msg->reply_to as a reply; never fails for lack of room. If the
 * reply mailbox is closed or absent, the message is freed through msg->free_fn. */
void tms_mailbox_reply(tms_msg_t *msg);

/** Threaded consumer: wait up to timeout_ms (-1 forever) for the next message.
 * Returns NULL on timeout or when the mailbox is closed and drained. */
tms_msg_t *tms_mailbox_take(tms_mailbox_t *mb, int timeout_ms);

/** Threaded consumer: as tms_mailbox_take, but takes up to max messages at once (in
 * order) into out[]; returns how many (0 on timeout, or closed and drained). */
size_t tms_mailbox_take_many(tms_mailbox_t *mb, int timeout_ms, tms_msg_t **out, size_t max);

/** Number of messages waiting (requests and replies). Safe from any thread. */
size_t tms_mailbox_depth(tms_mailbox_t *mb);

/** High-water mark of queued messages since creation. */
size_t tms_mailbox_peak(tms_mailbox_t *mb);

/** Requests refused because the mailbox was full, since creation. */
uint64_t tms_mailbox_rejected(tms_mailbox_t *mb);

/** Export this mailbox's depth as the gauge tms_mailbox_depth{actor="<name>"}. */
void tms_mailbox_export_depth(tms_mailbox_t *mb);

/** The name given at creation. */
const char *tms_mailbox_name(tms_mailbox_t *mb);

/** Refuse new posts; messages still queued are delivered (loop mode) or returned by
 * take (threaded mode) until empty. */
void tms_mailbox_close(tms_mailbox_t *mb);

/* Stopping an actor (STYLE.md; CZMQ's actor contract). Whoever owns the actor posts
 * a stop message (tms_stop_send); everything posted before it is handled as usual.
 * The actor keeps the message (tms_stopper_hold) and from then on refuses new work:
 * a call that arrives after it is answered UNAVAILABLE, a bus delivery is
 * acknowledged as not handled (it comes again after a restart). It finishes what
 * it holds (calls, deliveries, their store operations and mails), and once nothing
 * is in flight (tms_stopper_check after each completion) it closes its mailbox,
 * so later posts fail with -TMS_ECLOSED, and replies to the stop message. The owner
 * may free the actor once that reply has arrived. */
typedef struct tms_stopper {
    tms_msg_t *held; /* stop messages received, answered together when idle */
    int state;       /* 0 running, 1 stopping, 2 stopped */
} tms_stopper_t;

/** Post a stop message to an actor's mailbox mb: when the actor has stopped,
 * cont(msg) runs on reply_to's loop with msg->ctx == ctx, and frees msg with
 * msg->free_fn(msg). Returns 0, or -TMS_ECLOSED when mb no longer takes messages
 * (the actor has stopped; cont does not run). A stop is never refused for room. */
int tms_stop_send(tms_mailbox_t *mb, tms_mailbox_t *reply_to, tms_cont_fn cont, void *ctx);

/** Actor side: the stop message arrived; keep it until idle. */
void tms_stopper_hold(tms_stopper_t *s, tms_msg_t *msg);

/** Actor side: true once a stop message arrived (new work is refused). */
static inline int tms_stopping(const tms_stopper_t *s)
{
    return s->state != 0;
}

/** Actor side, after a completion (and right after tms_stopper_hold): when stopping
 * and inflight is 0, close mb and reply to the stop messages held. */
void tms_stopper_check(tms_stopper_t *s, tms_mailbox_t *mb, size_t inflight);

/** Free the mailbox. Loop mode: closes the async handle, frees in its close
 * callback; any message still queued is freed through its free_fn. Sets *mb NULL. */
void tms_mailbox_free(tms_mailbox_t **mb);

#endif
