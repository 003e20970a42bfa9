/* The in-process event bus: every subscription (consumer group) of a topic gets its
 * own copy of each event in its mailbox. A publish completes only when every copy is
 * acknowledged, so the relay keeps the outbox row until its consumers are done: the
 * outbox, not the bus, carries events across a crash.
 *
 * Single loop: publish, subscribe, ack and free must all run on the loop given to
 * tms_bus_local_new, and subscriber mailboxes must be consumed on that loop too.
 * Completions run on a later iteration of that loop, never inside publish or ack. */
#ifndef TMS_IO_BUS_LOCAL_H
#define TMS_IO_BUS_LOCAL_H

#include <uv.h>

#include "core/event_bus.h"

/** Create a bus on loop. Never NULL. */
tms_event_bus_t *tms_bus_local_new(uv_loop_t *loop);

/** Free the bus after its publishers and consumers have stopped. Publishes still
 * outstanding are dropped and their done is never called. Copies still queued or held
 * by a consumer remain valid: free them through msg.free_fn, because ack is gone with
 * the bus. The memory is released in a close callback, so run the loop once more
 * afterwards. Sets *bus NULL. */
void tms_bus_local_free(tms_event_bus_t **bus);

#endif
