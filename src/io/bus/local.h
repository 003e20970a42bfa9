/* The in-process event bus: every subscription (consumer group) of a topic gets its
 * own copy of each event in its mailbox. A publish completes only when every copy is
 * acknowledged, so the relay keeps the outbox row until its consumers are done: the
 * outbox, not the bus, carries events across a crash.
 *
 * Single loop: publish, subscribe, ack and close must all run on the loop given to
 * tms_local_bus_new, and subscriber mailboxes must be consumed on that loop too.
 * Completions run on a later iteration of that loop, never inside publish or ack. */
#ifndef TMS_IO_BUS_LOCAL_H
#define TMS_IO_BUS_LOCAL_H

#include <uv.h>

#include "core/event_bus.h"

typedef struct tms_local_bus_options {
    int dlq_after; /* attempts (permanent failures) before a copy is dead-lettered; 0: 5 */
    int retry_ms;  /* first redelivery back-off after a permanent failure, doubled per
                    * attempt; also the first probe back-off of a paused subscription;
                    * 0: 200 */
} tms_local_bus_options_t;

/** Create a bus on loop; the event bus port, closed through its vtable
 * (core/port.h): publish and subscribe refused, then, once every publish is done
 * (every copy acknowledged, nacked, or freed with its mailbox; copies waiting for a
 * redelivery fail at once), the bus is freed and cb runs. Never NULL.
 *
 * Failures (core/event_bus.h): a permanent one is redelivered by the bus itself
 * (the publish stays open meanwhile, attempt + 1) and after dlq_after attempts
 * dead-lettered: logged (event=event_dead_lettered, with the reason), counted
 * (tms_bus_dead_lettered_total) and treated as handled, so the relay marks it sent.
 * A transient one pauses the subscription: its copy fails (the relay keeps the event
 * pending and publishes it again on its next round), and so does every copy for that
 * subscription published while it is paused, without reaching its mailbox, except
 * one probe once the back-off is over; the probe handled, it resumes. */
tms_event_bus_t *tms_local_bus_new_with(uv_loop_t *loop, const tms_local_bus_options_t *opt);

/** tms_local_bus_new_with with the default options. */
tms_event_bus_t *tms_local_bus_new(uv_loop_t *loop);

#endif
