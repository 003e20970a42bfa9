/* The outbox port (and its inbox twin): durable event hand-off between a store and
 * the event bus. Stores write events into their outbox in the transaction of the
 * change that caused them; the relay (core/relay.h) reads pending events in order,
 * publishes them and marks them sent once the bus accepted them. Consumers record
 * what they handled in the inbox (keyed by consumer and event_id) to drop
 * redeliveries; core/inbox_trim.h deletes records older than events.inbox_retention. */
#ifndef TMS_CORE_OUTBOX_H
#define TMS_CORE_OUTBOX_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/mailbox.h"
#include "core/port.h"
#include "core/status.h"

typedef struct tms_outbox_event {
    int64_t seq; /* outbox order: publish in ascending seq */
    char event_id[37];
    char topic[64];
    char key[64];
    char *payload; /* JSON text, heap */
    int64_t created_at_ms;
} tms_outbox_event_t;

typedef enum tms_outbox_op_kind {
    TMS_OUTBOX_FETCH = 1, /* in: limit, after_seq. out: events[0..nevents) not yet sent, by seq */
    TMS_OUTBOX_MARK_SENT, /* in: seqs[0..nseqs). Deletes those events: a sent event
                           * leaves the outbox. Idempotent; unknown seqs are ignored */
    TMS_OUTBOX_ADD,       /* in: event (topic, key, payload, event_id): a standalone event;
                           * the same event_id again while it is pending is a retry
                           * (OK, nothing added); after it was sent (deleted), it goes
                           * out again, and consumers drop it by event_id */
    TMS_INBOX_SEEN,       /* in: consumer, ids. out: ids_seen */
    TMS_INBOX_RECORD,     /* in: consumer, ids. Idempotent per id */
    TMS_OUTBOX_PENDING,   /* out: count of unsent events */
    TMS_INBOX_TRIM,       /* in: before_ms, limit, resume. A step: deletes inbox records
                           * (any consumer) handled before before_ms, limit at most. out:
                           * count deleted; more: a next step may find more; resume: where
                           * the next step of the round starts */
} tms_outbox_op_kind_t;

typedef struct tms_outbox_op {
    tms_msg_t msg; /* first member; msg.op is a tms_outbox_op_kind_t */
    /* in */
    int limit;
    int64_t after_seq; /* FETCH: only events with seq > after_seq (0: from the first) */
    int64_t before_ms; /* INBOX_TRIM: records handled before this (wall clock, ms) */
    char resume[32];   /* INBOX_TRIM: in and out, "" at a round's start (PostgreSQL: a ctid) */
    int64_t *seqs;     /* heap */
    size_t nseqs;
    tms_outbox_event_t event; /* ADD */
    char consumer[32];
    /* SEEN and RECORD: the events ids[0..nids), nids >= 1 (one event, or a batch of
     * the notifier's: one statement on PostgreSQL); SEEN answers in ids_seen[0..nids),
     * allocated by the caller (NULL for RECORD). tms_inbox_op_new allocates ids and,
     * for SEEN, ids_seen; a store refuses an op without them (-TMS_EINVAL). */
    char (*ids)[37]; /* heap */
    size_t nids;
    bool *ids_seen; /* heap */
    /* out */
    tms_error_t err;
    tms_outbox_event_t *events; /* heap array; payloads heap */
    size_t nevents;
    int64_t count;
    bool more; /* INBOX_TRIM */
} tms_outbox_op_t;

/** Free everything an op owns and the op. Sets *op NULL. */
void tms_outbox_op_free(tms_outbox_op_t **op);

/** Allocate a zeroed op whose msg.free_fn frees it (for undeliverable replies). */
tms_outbox_op_t *tms_outbox_op_new(tms_outbox_op_kind_t kind);

/** As tms_outbox_op_new for SEEN or RECORD by consumer, with room for nids (>= 1)
 * event ids for the caller to fill in ids and, for SEEN, their answers (all false). */
tms_outbox_op_t *tms_inbox_op_new(tms_outbox_op_kind_t kind, const char *consumer, size_t nids);

/** As tms_inbox_op_new for the one event event_id (the task and auth actors' ops). */
tms_outbox_op_t *tms_inbox_op_one(tms_outbox_op_kind_t kind, const char *consumer,
                                  const char *event_id);

/* Several processes on one database (tms_outbox_t.lead): which of their relays
 * publishes. One does; the others stand aside and wake it after their writes, so an
 * event is published once and at once, whichever process wrote it. */
typedef enum tms_outbox_lead {
    TMS_LEAD_UNKNOWN = 0, /* not known (no lead connection): relay, as a lone process does */
    TMS_LEAD_HELD,        /* this process relays the outbox */
    TMS_LEAD_OTHER,       /* another process holds the lead: stand aside */
    TMS_LEAD_WOKEN,       /* not a state: another process wrote events */
} tms_outbox_lead_t;

typedef void (*tms_outbox_lead_fn)(void *arg, tms_outbox_lead_t what);

typedef struct tms_outbox tms_outbox_t;
struct tms_outbox {
    const char *name; /* for logs only, never to dispatch on */
    /** Queue op; as tms_task_store_t.submit. */
    int (*submit)(tms_outbox_t *self, tms_outbox_op_t **op);
    /** Operations accepted and not yet answered (core/port.h). */
    size_t (*busy)(tms_outbox_t *self);
    /** Refuse new ops, answer those accepted, then cb(ctx) on the store's loop
     * (core/port.h); self is invalid when cb runs. */
    void (*close)(tms_outbox_t *self, tms_port_closed_fn cb, void *ctx);
    /** Optional (NULL where one process relays the outbox: SQLite, MongoDB). Contend
     * for the lead among the processes sharing the outbox: fn(arg, what) runs on the
     * store's loop when the lead changes (HELD, OTHER, UNKNOWN) and when another
     * process wrote events (WOKEN). fn NULL: stop calling (before arg goes). */
    void (*lead)(tms_outbox_t *self, tms_outbox_lead_fn fn, void *arg);
    /** Optional, with lead: tell the process holding the lead that events were
     * written here (coalesced; dropped while the lead connection is down: the
     * leader's poll finds them). */
    void (*wake_leader)(tms_outbox_t *self);
};

static inline int tms_outbox_submit(tms_outbox_t *o, tms_outbox_op_t **op)
{
    return o->submit(o, op);
}

#endif
