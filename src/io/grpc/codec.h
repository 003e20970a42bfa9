/* The mapping between protobuf messages (src/proto) and tms_api_call_t for each
 * operation with a gRPC method (core/ops.h): the gRPC twin of the JSON parsing and
 * rendering in http/rest.c; grpc/service.c serves them. No domain rule lives here;
 * validation beyond "is it a well-formed message" is the actors'. */
#ifndef TMS_IO_GRPC_CODEC_H
#define TMS_IO_GRPC_CODEC_H

#include <stddef.h>
#include <stdint.h>

#include "core/api.h"
#include "core/ops.h"
#include "core/status.h"

/** Decode the request message of op's gRPC method into a new call (owned by the
 * caller; the message is unpacked into the call's arena and its strings used in
 * place). On a malformed message returns NULL with *err set (INVALID_ARGUMENT;
 * UNIMPLEMENTED for an op without a gRPC method). VerifyToken puts the request's
 * token in call->bearer; the caller fills bearer from metadata for the other
 * methods. */
tms_api_call_t *tms_grpc_decode_call(const tms_op_t *op, const uint8_t *msg, size_t len,
                                     tms_error_t *err);

/** Encode the response message of op's gRPC method for a finished call into *out
 * (in the call's arena: valid until the call is freed; *len may be 0). Returns
 * TMS_OK, or the call's error status with *err filled and nothing allocated. A call
 * whose result is a token check (VerifyToken) answers UNAUTHENTICATED as OK
 * {valid: false}, as the original did. */
tms_status_t tms_grpc_encode_reply(const tms_op_t *op, tms_api_call_t *call, uint8_t **out,
                                   size_t *len, tms_error_t *err);

/** A TaskEvent (tms.v1, src/proto/task_events.proto) of e into *out (heap). */
void tms_grpc_encode_event(const tms_task_event_t *e, uint8_t **out, size_t *len);

/** Health Check/Watch: decode HealthCheckRequest.service into buf (truncated);
 * returns 0 or -TMS_EINVAL on a malformed message. */
int tms_grpc_health_decode(const uint8_t *msg, size_t len, char *service, size_t size);

/** Health: encode HealthCheckResponse{status} (1 SERVING, 2 NOT_SERVING, 3
 * SERVICE_UNKNOWN) into *out (heap). */
void tms_grpc_health_encode(int status, uint8_t **out, size_t *len);

/** Reflection (v1 and v1alpha share the wire format): answer one
 * ServerReflectionRequest from the embedded descriptor set. Returns 0 with the
 * serialized ServerReflectionResponse in *out (heap), or -TMS_EINVAL when the
 * request does not parse. */
int tms_grpc_reflection_answer(const uint8_t *msg, size_t len, uint8_t **out, size_t *out_len);

#endif
