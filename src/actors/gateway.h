/* The gateway actor: the single entry for API calls from every protocol adapter
 * (REST and gRPC). It applies the rate limits of API.md, has the auth actor
 * authenticate calls that need a token, and routes each call to the actor that owns
 * its operation. Adapters only translate protocol to tms_api_call_t and back. */
#ifndef TMS_ACTORS_GATEWAY_H
#define TMS_ACTORS_GATEWAY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "core/api.h"
#include "core/mailbox.h"

typedef struct tms_gateway tms_gateway_t;
typedef struct tms_gateway_limits tms_gateway_limits_t;

typedef struct tms_gateway_config {
    uint32_t api_per_minute;       /* per client address; 0 disables */
    uint32_t login_per_15min;      /* per email and address; 0 disables */
    uint32_t task_create_per_hour; /* per user; 0 disables */
    unsigned ipv6_prefix;          /* IPv6 clients share per-address limits per prefix; 0: 64 */
    size_t mailbox_capacity;
    /* The rate limits shared by the gateways of every worker (borrowed, outlives the
     * gateway); NULL: the gateway makes its own from the three numbers above. */
    tms_gateway_limits_t *limits;
    /* Optional: the authenticate stage as a function call, where the auth actor runs
     * on the gateway's loop (tms_auth_authenticate_now): true when it authenticated the
     * call from memory; false (or NULL) posts the call to the auth mailbox. */
    bool (*authenticate_now)(void *ctx, tms_api_call_t *call);
    void *authenticate_ctx;
} tms_gateway_config_t;

/** The limiters of API.md's three rate limits (0 disables one), thread-safe, to be
 * shared by the gateways of all workers so that a limit holds for the process. Never
 * NULL. */
tms_gateway_limits_t *tms_gateway_limits_new(uint32_t api_per_minute, uint32_t login_per_15min,
                                             uint32_t task_create_per_hour);

/** Free limits no gateway uses any more. Sets *l NULL. */
void tms_gateway_limits_free(tms_gateway_limits_t **l);

/** Start the gateway on loop, routing account operations to auth and task
 * operations to task. Never NULL. */
tms_gateway_t *tms_gateway_start(uv_loop_t *loop, const tms_gateway_config_t *cfg,
                                 tms_mailbox_t *auth, tms_mailbox_t *task);

/** Where adapters post calls (tms_api_call_t with reply_to and cont set). */
tms_mailbox_t *tms_gateway_mailbox(tms_gateway_t *gw);

/* The gateway stops on a stop message (tms_stop_send, core/mailbox.h): calls it
 * took come back from the actors first; tms_gateway_free once it replied. */

/** Free once stopped, or once no call is in flight. Sets *gw NULL. */
void tms_gateway_free(tms_gateway_t **gw);

#endif
