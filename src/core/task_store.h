/* The task store port: what the task actor needs from wherever tasks live (SQLite
 * or PostgreSQL). As with the user store, an operation is a message that
 * comes back to op->msg.reply_to with err set; the adapter never calls back on its
 * own thread.
 *
 * Writes that cause an event (create or update with notify set, and the user store's
 * delete) write the event into the store's outbox in the same transaction, so an
 * event exists if and only if its change was committed (core/outbox.h). */
#ifndef TMS_CORE_TASK_STORE_H
#define TMS_CORE_TASK_STORE_H

#include <stdbool.h>
#include <stdint.h>
#include <uv.h>

#include "core/arena.h"
#include "core/mailbox.h"
#include "core/port.h"
#include "core/status.h"
#include "core/task.h"
#include "core/task_event.h"

#define TMS_EVENT_ID_LEN 36 /* UUID text */
#define TMS_IDEMPOTENCY_KEY_MAX 128
#define TMS_IDEMPOTENCY_TTL_MS (24LL * 3600 * 1000)

typedef enum tms_task_op_kind {
    TMS_TASK_CREATE = 1,    /* in: task (all but id/version), idem_* (optional), notify.
                             * out: task with id and version 1. With an idempotency key
                             * already used by the same user within 24 h: the first task
                             * and replayed = true if idem_hash matches, else err
                             * ALREADY_EXISTS (IDEMPOTENCY_REUSED, or _GONE when that
                             * task was deleted since). */
    TMS_TASK_GET,           /* in: id. out: task, or NOT_FOUND (NO_SUCH_TASK) */
    TMS_TASK_LIST,          /* in: filter_assigned_to, filter_status ("" = any), after_id,
                             * limit. out: tasks[0..ntasks) ordered by id ascending with
                             * id > after_id, has_more */
    TMS_TASK_UPDATE,        /* in: id, expected_version (0 = any), set_* flags with the new
                             * values in task, updated_at_ms, notify. out: task after the
                             * change (version + 1), or NOT_FOUND, or FAILED_PRECONDITION
                             * (VERSION_MISMATCH, current_version) when the version
                             * differs */
    TMS_TASK_DELETE,        /* in: id, expected_version (0 = any). out: task as it was,
                             * NOT_FOUND or FAILED_PRECONDITION */
    TMS_TASK_UNASSIGN_USER, /* in: user_id, task.updated_at_ms (0: the store's clock).
                             * Every task assigned to user_id gets no assignee
                             * (version + 1). out: count */
    TMS_TASK_PING,          /* readiness probe */
    TMS_TASK_EVENTS,        /* the push log (issue 23). in: after_id (seq), upto_seq (0: no
                             * bound), limit (0: bounds only), filter_assigned_to and
                             * filter_status (matching before or after the change; "" =
                             * any), id (0 = any task). out: events[0..nevents) with
                             * after_id < seq <= upto_seq by seq, first_seq and last_seq
                             * of the whole log (0 when empty) */
    TMS_TASK_EVENTS_PURGE,  /* in: before_ms, keep_events: drop events older than before_ms
                             * or beyond the newest keep_events, at most limit of them,
                             * never the newest. out: count dropped */
} tms_task_op_kind_t;

/* Why an operation failed, beside err.code: the task actor words what clients see
 * (adapters write no client-facing text; err.message is for logs). */
typedef enum tms_task_reason {
    TMS_TASK_REASON_NONE = 0,
    TMS_TASK_NO_SUCH_TASK,       /* NOT_FOUND: no task with that id */
    TMS_TASK_VERSION_MISMATCH,   /* FAILED_PRECONDITION: current_version differs */
    TMS_TASK_IDEMPOTENCY_REUSED, /* ALREADY_EXISTS: the key came with another request */
    TMS_TASK_IDEMPOTENCY_GONE,   /* ALREADY_EXISTS: the key's task was deleted since */
} tms_task_reason_t;

/* The event a write must also record (in the same transaction). */
typedef struct tms_task_notify {
    bool enabled;
    char type[16]; /* "task_created" | "task_assigned" */
    char event_id[TMS_EVENT_ID_LEN + 1];
    char by[TMS_USER_ID_LEN + 1]; /* who created or reassigned the task: assigned_by */
} tms_task_notify_t;

/* An operation and everything it points to live in an arena: the one of the call it
 * serves (the op is then allocated in it too, and the call outlives it), or its own.
 * The store allocates the strings of task and the tasks array of its answer there,
 * on the thread that runs the op: from an accepted submit until the reply the arena
 * is the store's, and the op's sender allocates nothing from it. */
typedef struct tms_task_op {
    tms_msg_t msg;      /* first member; msg.op is a tms_task_op_kind_t */
    tms_arena_t *arena; /* where task's strings and tasks live: own or the call's */
    tms_arena_t own;    /* the op's own arena (tms_task_op_new without one) */
    /* in */
    int64_t id;
    int64_t expected_version;
    tms_task_t task; /* create: the new task; update: new values of the set_* fields */
    bool set_title, set_description, set_status, set_assigned_to;
    tms_task_notify_t notify;
    char idem_key[TMS_IDEMPOTENCY_KEY_MAX + 1]; /* "" = none */
    char idem_hash[65];                         /* hex SHA-256 of the normalized request */
    char filter_assigned_to[TMS_USER_ID_LEN + 1];
    char filter_status[16];
    int64_t after_id;
    int limit;
    int64_t upto_seq, before_ms, keep_events; /* TMS_TASK_EVENTS(_PURGE) */
    char user_id[TMS_USER_ID_LEN + 1];
    /* out */
    tms_error_t err;
    tms_task_reason_t reason; /* with err: why */
    int64_t current_version;  /* VERSION_MISMATCH: the version the task is at */
    bool replayed;
    tms_task_t *tasks; /* list: array in arena */
    size_t ntasks;
    bool has_more;
    int64_t count;
    tms_task_event_t *events; /* TMS_TASK_EVENTS: array in arena */
    size_t nevents;
    int64_t first_seq, last_seq;
} tms_task_op_t;

/** An adapter's refusal: code and reason, no text (the actor words it). */
static inline void tms_task_op_refuse(tms_task_op_t *op, tms_status_t code,
                                      tms_task_reason_t reason)
{
    op->err.code = code;
    op->err.message[0] = '\0';
    op->reason = reason;
}

/** A zeroed op of kind, allocated in arena (it then lives and dies with the arena, and
 * so does everything the store answers in it), or with arena NULL on the heap with
 * an arena of its own. Sets msg.free_fn. Never NULL. */
tms_task_op_t *tms_task_op_new(tms_task_op_kind_t kind, tms_arena_t *arena);

/** Free an op made by tms_task_op_new: with its own arena, that arena and the op; in
 * another's arena, nothing (the arena's release frees it). Sets *op NULL. */
void tms_task_op_free(tms_task_op_t **op);

/* A reader that answers GET and LIST ops on the calling thread, without a queue or a
 * thread hop, when the backend can do so without waiting on I/O (SQLite: a read-only
 * connection of its own, with the database file mapped). It sees every write whose
 * reply was delivered before the read starts (read-your-writes). One thread uses it:
 * the one running the loop it was opened on; close it there, and run that loop once
 * more (it may close a handle). */
typedef struct tms_task_reader tms_task_reader_t;
struct tms_task_reader {
    /** Run a TMS_TASK_GET or TMS_TASK_LIST op now and fill its outputs (err, task,
     * tasks) as its reply would: 0. Or -TMS_EAGAIN when it cannot be answered now
     * without waiting (the database busy): the op is untouched, submit it instead. */
    int (*read)(tms_task_reader_t *self, tms_task_op_t *op);
    /** Close and free (on the thread that opened it). */
    void (*close)(tms_task_reader_t *self);
};

typedef struct tms_task_store tms_task_store_t;
struct tms_task_store {
    const char *name; /* "sqlite", "postgres": for logs only, never to dispatch on */
    /** Queue op; on success takes ownership (clears *op) and later replies to
     * (*op)->msg.reply_to. Returns 0, -TMS_EFULL or -TMS_ECLOSED. */
    int (*submit)(tms_task_store_t *self, tms_task_op_t **op);
    /** Operations accepted and not yet answered (core/port.h). */
    size_t (*busy)(tms_task_store_t *self);
    /** Refuse new ops, answer those accepted, then cb(ctx) on the store's loop
     * (core/port.h); self is invalid when cb runs. */
    void (*close)(tms_task_store_t *self, tms_port_closed_fn cb, void *ctx);
    /** Optional (NULL: the backend has none): a reader for the calling thread, or NULL
     * when it cannot open one (the caller then submits every op). The reader may
     * outlive the port. */
    tms_task_reader_t *(*reader_open)(tms_task_store_t *self, uv_loop_t *loop);
};

static inline int tms_task_store_submit(tms_task_store_t *s, tms_task_op_t **op)
{
    return s->submit(s, op);
}

#endif
