/* libFuzzer: protobuf request messages of every gRPC method (tms_grpc_decode_call for
 * the API methods, the health and reflection decoders, and the split deployment's
 * internal ActorCall / ActorResult codec). The first byte picks the method, the rest
 * is the message. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

#include "core/api.h"
#include "io/grpc/codec.h"
#include "io/grpc/internal.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    size_t n;
    const tms_grpc_method_t *methods = tms_grpc_methods(&n), *m;
    tms_error_t err;
    if (size < 1)
        return 0;
    m = &methods[data[0] % n];
    data++;
    size--;
    switch (m->kind) {
    case TMS_GRPC_API: {
        tms_api_call_t *call = tms_grpc_decode_call(m, data, size, &err);
        if (call) {
            uint8_t *out = NULL;
            size_t len = 0;
            /* A decoded call answered as is must encode (or fail cleanly). */
            if (tms_grpc_encode_reply(m, call, &out, &len, &err) == TMS_OK)
                free(out);
            tms_api_call_free(&call);
        }
        break;
    }
    case TMS_GRPC_HEALTH_CHECK:
    case TMS_GRPC_HEALTH_WATCH: {
        char service[64];
        (void)tms_grpc_health_decode(data, size, service, sizeof service);
        break;
    }
    case TMS_GRPC_REFLECTION: {
        uint8_t *out = NULL;
        size_t len = 0;
        if (tms_grpc_reflection_answer(data, size, &out, &len) == 0)
            free(out);
        break;
    }
    case TMS_GRPC_INTERNAL: {
        /* The same bytes as an ActorCall (what a role serves) and as an ActorResult
         * (what the calling role reads back); what decodes must encode again. */
        tms_api_call_t *call = tms_internal_decode_call(data, size);
        uint8_t *out = NULL;
        size_t len = 0;
        if (call) {
            tms_internal_encode_call(call, &out, &len);
            free(out);
            if (tms_internal_decode_result(call, data, size) == 0) {
                tms_internal_encode_result(call, &out, &len);
                free(out);
            }
            tms_api_call_free(&call);
        }
        break;
    }
    }
    return 0;
}
