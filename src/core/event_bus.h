/* The event bus port: in process or Kafka. Publishing is asynchronous and
 * reports acceptance through a completion on the publisher's loop; the relay marks
 * an outbox row sent only after it. Subscribers receive deliveries in their own
 * mailbox and acknowledge each one after its effect is durable; an unacknowledged
 * or failed delivery is redelivered (at least once), so consumers drop duplicates
 * by event_id. */
#ifndef TMS_CORE_EVENT_BUS_H
#define TMS_CORE_EVENT_BUS_H

#include <stddef.h>

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
    int attempt;   /* 1 on first delivery */
    void *bus_ref; /* the bus's bookkeeping; do not touch */
} tms_delivery_t;

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
    /** Acknowledge a delivery taken from the mailbox: ok != 0 when handled (or a
     * duplicate), 0 to have it redelivered later. Frees the delivery; clears *d. */
    void (*ack)(tms_event_bus_t *self, tms_delivery_t **d, int ok);
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
