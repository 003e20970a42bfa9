/* The event bus port: in process or Kafka. Publishing is asynchronous and
 * reports acceptance through a completion on the publisher's loop; the relay marks
 * an outbox row sent only after it. Subscribers receive deliveries in their own
 * mailbox and acknowledge each one after its effect is durable; an unacknowledged
 * or failed delivery is redelivered (at least once), so consumers drop duplicates
 * by event_id.
 *
 * A failure is acknowledged with what kind it is, and both buses treat the kinds
 * alike:
 *   transient  a dependency is down (breaker open, connection refused, timeout, SMTP
 *              4xx, store unavailable); the event is fine. The subscription pauses:
 *              the bus stops handing it events (Kafka pauses its partitions; the
 *              in-process bus refuses its copies, so the relay keeps them pending),
 *              counts no attempt and commits nothing past the event. When the
 *              dependency may answer again (retry_after_ms, e.g. a breaker's
 *              cool-down, else the bus's back-off) one waiting event goes out as a
 *              probe; handled (or failed for good: the dependency answered), the
 *              subscription resumes. One log line per pause and per resume.
 *   permanent  the event itself can never succeed (malformed, recipient refused with
 *              a 5xx, user gone): counts an attempt; redelivered after a back-off
 *              until dlq_after attempts, then dead-lettered with the reason (Kafka:
 *              `<topic>.dlq`, header tms.reason; in process: a log line and a
 *              counter) and counted as handled, so it stalls nothing behind it. */
#ifndef TMS_CORE_EVENT_BUS_H
#define TMS_CORE_EVENT_BUS_H

#include <stddef.h>
#include <stdint.h>

#include "core/mailbox.h"
#include "core/port.h"

/* The op code a delivery carries in msg.op when it arrives in a subscriber's mailbox. */
#define TMS_EVENT_DELIVERY 0x7e00

typedef struct tms_event_bus tms_event_bus_t;

typedef struct tms_delivery {
    tms_msg_t msg; /* first member; msg.op == TMS_EVENT_DELIVERY */
    char topic[64];
    char key[64];
    char *payload; /* JSON text, owned by the delivery */
    size_t payload_len;
    int attempt;   /* 1 on first delivery; + 1 after each permanent failure (a
                    * transient one, or a probe, is not an attempt) */
    void *bus_ref; /* the bus's bookkeeping; do not touch */
} tms_delivery_t;

typedef enum tms_ack_kind {
    TMS_ACK_OK = 0,        /* handled, or a duplicate: not delivered again */
    TMS_ACK_TRANSIENT = 1, /* a dependency is down: pause, no attempt counted */
    TMS_ACK_PERMANENT = 2, /* the event is at fault: an attempt; dead letter at dlq_after */
} tms_ack_kind_t;

/* The outcome of a delivery. Strings are copied by the bus. */
typedef struct tms_ack {
    tms_ack_kind_t kind;
    const char *dependency;  /* transient: what is down, for the log ("smtp", "task store") */
    const char *reason;      /* one line; a permanent failure's goes into the dead letter */
    uint64_t retry_after_ms; /* transient: no probe before this (a breaker's remaining
                              * cool-down); 0: the bus's own back-off */
} tms_ack_t;

static inline tms_ack_t tms_ack_ok(void)
{
    return (tms_ack_t){.kind = TMS_ACK_OK};
}

static inline tms_ack_t tms_ack_transient(const char *dependency, const char *reason,
                                          uint64_t retry_after_ms)
{
    return (tms_ack_t){.kind = TMS_ACK_TRANSIENT,
                       .dependency = dependency,
                       .reason = reason,
                       .retry_after_ms = retry_after_ms};
}

static inline tms_ack_t tms_ack_permanent(const char *reason)
{
    return (tms_ack_t){.kind = TMS_ACK_PERMANENT, .reason = reason};
}

/* Completion of a publish: status 0 when the bus accepted the event durably, else a
 * negative tms_err (the publisher retries later). Runs on the publisher's loop. */
typedef void (*tms_publish_done_fn)(void *ctx, int status);

struct tms_event_bus {
    const char *name; /* "local", "kafka": for logs only, never to dispatch on */
    /** Publish a copy of payload under topic and key; done(ctx, status) follows
     * exactly once. Returns 0, or a negative tms_err when refused at once (then done
     * is not called). */
    int (*publish)(tms_event_bus_t *self, const char *topic, const char *key, const char *payload,
                   size_t len, tms_publish_done_fn done, void *ctx);
    /** Deliver events of topic to mailbox as consumer group `group`; one subscriber
     * per group per process. Returns 0 or a negative tms_err. */
    int (*subscribe)(tms_event_bus_t *self, const char *topic, const char *group,
                     tms_mailbox_t *mailbox);
    /** Deliver every event of topic published from now on to mailbox, outside every
     * consumer group: each process that subscribes so gets every event, whichever
     * instance published it (Kafka: a group of its own, starting at the end, never
     * committing). Deliveries are acknowledged as usual. NULL: not supported.
     * Returns 0 or a negative tms_err. */
    int (*subscribe_all)(tms_event_bus_t *self, const char *topic, tms_mailbox_t *mailbox);
    /** Acknowledge a delivery taken from the mailbox with its outcome (above).
     * Frees the delivery; clears *d. */
    void (*ack)(tms_event_bus_t *self, tms_delivery_t **d, tms_ack_t outcome);
    /** Publishes not yet done plus deliveries not yet acknowledged (and, while
     * closing, consumers not yet closed): core/port.h. Loop thread. */
    size_t (*busy)(tms_event_bus_t *self);
    /** Refuse publish and subscribe; consumers take no new events; wait until every
     * publish is done and every held delivery acknowledged; free; then cb(ctx) on
     * the bus's loop (core/port.h). Deliveries still queued in a mailbox freed
     * later are freed through msg.free_fn. */
    void (*close)(tms_event_bus_t *self, tms_port_closed_fn cb, void *ctx);
};

#endif
