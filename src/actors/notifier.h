/* The notifier actor: consumes `notifications` (group notification-group) and sends
 * the assignee one email per event through the mailer port. Redeliveries are
 * dropped by event_id through the inbox; the mail's Message-ID comes from the
 * event_id, so even a resend after a crash is recognisable. */
#ifndef TMS_ACTORS_NOTIFIER_H
#define TMS_ACTORS_NOTIFIER_H

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "core/event_bus.h"
#include "core/mailbox.h"
#include "core/mailer.h"
#include "core/outbox.h"

typedef struct tms_notifier tms_notifier_t;

typedef struct tms_notifier_config {
    size_t mailbox_capacity;
    tms_mailer_t *mailer; /* borrowed */
    tms_outbox_t *inbox;  /* handled-event log; borrowed */
    tms_mailbox_t *auth;  /* assignee email lookups */
    tms_event_bus_t *bus; /* borrowed */
    /* emails per hour from one assigner to one recipient, and to one recipient in all;
     * over that an event is suppressed (logged, counted, recorded as handled); 0: no
     * limit. Kept in this actor's memory: per process, forgotten on restart. */
    uint32_t per_assigner_per_hour, per_recipient_per_hour;
} tms_notifier_config_t;

/** Start the actor on loop and subscribe it to notifications. Never NULL. */
tms_notifier_t *tms_notifier_start(uv_loop_t *loop, const tms_notifier_config_t *cfg);

/* The actor stops on a stop message (tms_stop_send, core/mailbox.h): deliveries it
 * holds finish first; tms_notifier_free once it replied. */

/** The actor's mailbox (deliveries arrive through the bus; stop messages here). */
tms_mailbox_t *tms_notifier_mailbox(tms_notifier_t *n);

/** The mailer is closing (and will be freed): from now on a delivery that needs it
 * fails transiently (its event stays pending) instead of reaching it. Loop thread. */
void tms_notifier_mailer_closed(tms_notifier_t *n);

/** Deliveries being worked on. */
size_t tms_notifier_inflight(tms_notifier_t *n);

/** Free once stopped, or once nothing is in flight. Sets *n NULL. */
void tms_notifier_free(tms_notifier_t **n);

#endif
