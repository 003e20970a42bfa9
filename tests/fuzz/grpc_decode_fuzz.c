/* libFuzzer: protobuf request messages of every gRPC method (tms_grpc_decode_call for
 * the operations of the table with a gRPC method, the health and reflection decoders,
 * and the split deployment's internal ActorCall / ActorResult codec). The first byte
 * picks the method, the rest is the message. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

#include "core/api.h"
#include "core/ops.h"
#include "io/grpc/codec.h"
#include "io/grpc/internal.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    size_t nops, n = 0, pick;
    const tms_op_t *ops = tms_ops(&nops), *grpc_ops[TMS_API_OP_COUNT];
    tms_error_t err;
    if (size < 1)
        return 0;
    for (size_t i = 0; i < nops && n < TMS_API_OP_COUNT; i++) {
        if (ops[i].grpc_method)
            grpc_ops[n++] = &ops[i];
    }
    pick = data[0] % (n + 3); /* the operations, then health, reflection, internal */
    data++;
    size--;
    if (pick < n) {
        tms_api_call_t *call = tms_grpc_decode_call(grpc_ops[pick], data, size, &err);
        if (call) {
            uint8_t *out = NULL;
            size_t len = 0;
            /* A decoded call answered as is must encode (or fail cleanly); out is
             * in the call's arena. */
            (void)tms_grpc_encode_reply(grpc_ops[pick], call, &out, &len, &err);
            tms_api_call_free(&call);
        }
    } else if (pick == n) {
        char service[64];
        (void)tms_grpc_health_decode(data, size, service, sizeof service);
    } else if (pick == n + 1) {
        uint8_t *out = NULL;
        size_t len = 0;
        if (tms_grpc_reflection_answer(data, size, &out, &len) == 0)
            free(out);
    } else {
        /* The same bytes as an ActorCall (what a role serves) and as an ActorResult
         * (what the calling role reads back); what decodes must encode again. */
        tms_api_call_t *call = tms_internal_decode_call(data, size);
        uint8_t *out = NULL;
        size_t len = 0;
        if (call) { /* the encodings are in the call's arena */
            tms_internal_encode_call(call, &out, &len);
            if (tms_internal_decode_result(call, data, size) == 0)
                tms_internal_encode_result(call, &out, &len);
            tms_api_call_free(&call);
        }
    }
    return 0;
}
