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

/** Create a bus on loop; the event bus port, closed through its vtable
 * (core/port.h): publish and subscribe refused, then, once every publish is done
 * (every copy acknowledged, nacked, or freed with its mailbox), the bus is freed and
 * cb runs. Never NULL. */
tms_event_bus_t *tms_local_bus_new(uv_loop_t *loop);

#endif
