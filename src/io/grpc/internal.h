/* The internal service of a split deployment (src/proto/internal.proto): one
 * method, /tms.internal.Actors/Call, that carries a tms_api_call_t to the process
 * running its auth or task actor and its results back. This file maps calls and
 * results to and from protobuf, and says which calls may be retried; server.c serves
 * the method and remote/actor.c calls it. */
#ifndef TMS_IO_GRPC_INTERNAL_H
#define TMS_IO_GRPC_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/api.h"

#define TMS_INTERNAL_CALL_PATH "/tms.internal.Actors/Call"
#define TMS_INTERNAL_TOKEN_HEADER "x-tms-service-token"

/** Serialize the arguments of call (op, stage = call->msg.op, principal, request
 * id, arguments) into *out, in the call's arena (valid until the call is freed). */
void tms_internal_encode_call(tms_api_call_t *call, uint8_t **out, size_t *len);

/** A new call (owned by the caller) from a serialized ActorCall, unpacked in the
 * call's arena, msg.op set to its stage; NULL when the message does not parse or names no known op
 * (the rows' internal_op) or stage. Only for calls that came with the service credential: one
 * without an authenticated user is the calling process's own (its task or notifier actor), so its
 * principal is the service (principal.service). */
tms_api_call_t *tms_internal_decode_call(const uint8_t *msg, size_t len);

/** Serialize the results of a finished call (error, principal, user, token, flag,
 * task(s), cursor, replayed, rate limit) into *out, in the call's arena (valid until
 * the call is freed). */
void tms_internal_encode_result(tms_api_call_t *call, uint8_t **out, size_t *len);

/** Fill call's results from a serialized ActorResult (replacing what it held;
 * unpacked in the call's arena, a replaced token wiped).
 * Returns 0, or -TMS_EINVAL when it does not parse (call->err untouched). */
int tms_internal_decode_result(tms_api_call_t *call, const uint8_t *msg, size_t len);

/** True when running the call twice cannot change anything: the authenticate stage
 * (a token check), and the execute stage of an operation whose row says idempotent
 * (core/ops.h). */
bool tms_internal_idempotent(const tms_api_call_t *call);

#endif
