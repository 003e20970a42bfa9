/* The gRPC API mapping, the twin of http/rest.c: the routes the transport (server.h)
 * serves and what they mean. Every operation of the table (core/ops.h) with a gRPC
 * method becomes a tms_api_call_t for the gateway actor (codec.c decodes and
 * encodes its messages) and its result a protobuf reply with the call's status;
 * /tms.internal.Actors/Call (internal.h) goes straight to the local auth or task
 * actor for the process of a split deployment that called it; grpc.health.v1.Health
 * and server reflection (v1alpha and v1) are answered here. Loop thread only. */
#ifndef TMS_IO_GRPC_SERVICE_H
#define TMS_IO_GRPC_SERVICE_H

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "core/mailbox.h"
#include "core/push.h"
#include "io/grpc/server.h"

typedef struct tms_grpc_service tms_grpc_service_t;

typedef struct tms_grpc_service_config {
    tms_mailbox_t *gateway; /* where API calls go; NULL: the public API is not served here */
    /* With a gateway: the services served, as a set of owners (1u << TMS_OWNER_AUTH:
     * AuthService, 1u << TMS_OWNER_TASK: TaskService); 0: all. A process without the
     * gateway role serves its own roles' original services only (migration mode);
     * the others answer UNIMPLEMENTED. */
    unsigned owners;
    /* grpc.trusted_peers (core/cidr.h syntax, checked by config): a call without an
     * authorization header from one of these addresses is marked trusted_peer for
     * the gateway (core/ops.h legacy rules), logged with trusted_peer=<addr> and
     * counted (tms_grpc_trusted_calls_total); NULL or "": none. Parsed at creation. */
    const char *trusted_peers;
    /* The internal service (/tms.internal.Actors/Call) of a split deployment: served
     * only when service_token is set, and only to callers presenting it in
     * x-tms-service-token (others get UNAUTHENTICATED). A call goes to the auth or
     * task mailbox of its stage and its operation's owner; NULL: that role does not
     * run here. */
    const char *service_token; /* copied */
    tms_mailbox_t *auth, *task;
    uint64_t call_timeout_ms; /* deadline of a call without (or above) grpc-timeout; 0: 30 s */
    /* tms.v1.TaskEvents/Watch: the worker's push hub (NULL: UNAVAILABLE here). */
    tms_push_hub_t *push;
} tms_grpc_service_config_t;

/** Create the mapping on loop. Never NULL. */
tms_grpc_service_t *tms_grpc_service_new(uv_loop_t *loop, const tms_grpc_service_config_t *cfg);

/** The handler to give the transport (tms_grpc_config_t.handler); svc must outlive
 * the server. */
tms_grpc_handler_t tms_grpc_service_handler(tms_grpc_service_t *svc);

/** Call drained(arg) once no call is with the actors any more (at once when none
 * is; later from the loop when the last answered and its timer closed). */
void tms_grpc_service_drain(tms_grpc_service_t *svc, void (*drained)(void *arg), void *arg);

/** Calls sent to the actors and not yet answered (the handler's busy count). */
size_t tms_grpc_service_pending(tms_grpc_service_t *svc);

/** Free once the server using it is freed and nothing is pending (otherwise it logs
 * and leaks rather than free live handles). Sets *svc NULL. */
void tms_grpc_service_free(tms_grpc_service_t **svc);

#endif
