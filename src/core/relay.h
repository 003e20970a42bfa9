/* The outbox relay: moves committed events from a store's outbox to the event bus.
 * Pipelined, in outbox order: fetch the pending events not in flight, publish each,
 * and go on without waiting for the bus (an event it holds, a mail backing off,
 * delays no other); mark sent exactly those the bus accepted, as they are accepted.
 * A refused event holds its key only: its later events wait and follow it, in order,
 * once a retry (after the poll interval) is accepted; other keys go on (relay.c).
 * Runs when kicked after a write, and on a timer so that events left by a crash or a
 * refused publish go out too. Where processes share the outbox and it has a lead
 * (PostgreSQL: tms_outbox_t.lead), only the leader's relay publishes; the others stand
 * aside, and a kick after their write wakes the leader instead. */
#ifndef TMS_CORE_RELAY_H
#define TMS_CORE_RELAY_H

#include <stdint.h>
#include <uv.h>

#include "core/event_bus.h"
#include "core/outbox.h"

typedef struct tms_relay tms_relay_t;

/** Start relaying from outbox to bus on loop, polling every poll_ms. name tells this
 * outbox's series and log lines from another relay's ("tasks", "users"; static). Never
 * NULL. */
tms_relay_t *tms_relay_new(uv_loop_t *loop, tms_outbox_t *outbox, tms_event_bus_t *bus,
                           uint64_t poll_ms, const char *name);

/** A stand-in for relay, which runs on another worker's loop: kicking it wakes relay
 * through a uv_async (safe from any thread, coalesced), stopping it is immediate, and
 * it is never busy. relay must outlive it. Never NULL; free with tms_relay_free. */
tms_relay_t *tms_relay_remote_new(tms_relay_t *relay);

/** Something was written to the outbox: run a batch soon (coalesced). Call it on the
 * relay's loop thread (any thread for a remote relay). */
void tms_relay_kick(tms_relay_t *relay);

/** True while an outbox op or a publish is in flight. */
int tms_relay_busy(tms_relay_t *relay);

/** Stop polling; publishes in flight finish and are marked. on_stopped(arg) runs when
 * idle. */
void tms_relay_stop(tms_relay_t *relay, void (*on_stopped)(void *arg), void *arg);

/** Free a stopped relay (after on_stopped; handles close asynchronously). */
void tms_relay_free(tms_relay_t **relay);

#endif
