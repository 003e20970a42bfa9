/* A proxy for an actor that runs in another process (split deployment, issue 11):
 * a local mailbox that takes the same tms_api_call_t as the real auth or task actor
 * mailbox, sends each call over the internal gRPC service to the peer, and replies
 * to the call's own reply route with the peer's results. Whoever posts to it cannot
 * tell it from the real actor: a full mailbox still fails the post (UNAVAILABLE),
 * the call's deadline travels as grpc-timeout, and a cancelled call resets its
 * stream. A hop that fails (peer down, breaker open, bad credential) answers
 * UNAVAILABLE; a passed deadline DEADLINE_EXCEEDED. */
#ifndef TMS_IO_REMOTE_ACTOR_H
#define TMS_IO_REMOTE_ACTOR_H

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "core/mailbox.h"
#include "io/grpc/client.h"

typedef struct tms_remote_actor tms_remote_actor_t;

typedef struct tms_remote_actor_config {
    const char *name;            /* the role: "auth" or "task" (mailbox name, logs) */
    size_t mailbox_capacity;     /* queued calls before posts fail */
    uint64_t default_timeout_ms; /* deadline of a call that has none (0: 5000) */
    tms_grpc_client_t *client;   /* borrowed; outlives the proxy */
} tms_remote_actor_config_t;

/** Start the proxy on loop; it takes calls at its mailbox at once. Never NULL. */
tms_remote_actor_t *tms_remote_actor_start(uv_loop_t *loop, const tms_remote_actor_config_t *cfg);

/** Where callers post tms_api_call_t (msg.op = TMS_STAGE_*), as to the real actor. */
tms_mailbox_t *tms_remote_actor_mailbox(tms_remote_actor_t *r);

/* The proxy stops on a stop message (tms_stop_send, core/mailbox.h): the calls it
 * sent are answered first; tms_remote_actor_free once it replied. */

/** Calls sent to the peer and not yet answered. */
size_t tms_remote_actor_inflight(tms_remote_actor_t *r);

/** Free once nothing is in flight (its timer closes on the loop). Sets *r NULL. */
void tms_remote_actor_free(tms_remote_actor_t **r);

#endif
