/* The gRPC client: unary calls to one peer TMS process (split deployment, issue 11)
 * over HTTP/2 cleartext with prior knowledge, on nghttp2 client sessions driven by
 * the libuv loop. A pool of connections per peer (streams spread over them), the
 * caller's deadline sent as grpc-timeout, retries with exponential back-off and full
 * jitter only where a retry cannot apply a call twice (idempotent calls, or the
 * request never left this process), a circuit breaker per peer (core/breaker.h),
 * and a service credential on every call. Everything runs on the loop thread. */
#ifndef TMS_IO_GRPC_CLIENT_H
#define TMS_IO_GRPC_CLIENT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "io/tls/tls.h"

typedef struct tms_grpc_client tms_grpc_client_t;
typedef struct tms_grpc_client_call tms_grpc_client_call_t;

typedef struct tms_grpc_client_options {
    const char *peer;            /* role name for logs and metrics: "auth", "task" */
    const char *addr;            /* "host:port" or "[v6]:port"; a name is resolved off the loop */
    const char *credential;      /* sent as metadata x-tms-service-token; NULL: none */
    int pool_size;               /* connections; 0: 2 */
    int connect_timeout_ms;      /* 0: 2000 */
    int retry_attempts;          /* attempts in all, first included; 0: 3 */
    uint64_t retry_base_ms;      /* 0: 25 */
    uint64_t retry_max_ms;       /* 0: 1000 */
    int breaker_window;          /* 0: 10 */
    int breaker_threshold_pct;   /* 0: 50 */
    int64_t breaker_cooldown_ms; /* 0: 2000 */
    size_t max_message_bytes;    /* 0: 4 MiB; a larger answer fails with RESOURCE_EXHAUSTED */
    /* TLS (NULL: cleartext h2c): a client context (shared, not owned); the server's
     * certificate must carry the host of addr (a name, also sent as SNI, or an IP
     * address), and the handshake counts in connect_timeout_ms. */
    tms_tls_ctx_t *tls;
} tms_grpc_client_options_t;

/* Called exactly once per call, on the loop thread and never from inside
 * tms_grpc_client_call itself. status is a gRPC status code (0 = OK); message is the
 * decoded grpc-message (never NULL, "" when none); resp/resp_len the one response
 * message (NULL/0 unless OK). The buffers are valid only during the callback. */
typedef void (*tms_grpc_client_done_fn)(void *ctx, int status, const char *message,
                                        const uint8_t *resp, size_t resp_len);

/** Create a client for one peer; connects lazily on the first call and reconnects
 * with back-off. NULL with err filled on a bad address or options. */
tms_grpc_client_t *tms_grpc_client_new(uv_loop_t *loop, const tms_grpc_client_options_t *opt,
                                       char *err, size_t errlen);

/** Start a unary call of path ("/Service/Method") with one serialized request
 * message. deadline_ms is an absolute uv_now(loop) time (0: none) sent as
 * grpc-timeout and enforced here too (DEADLINE_EXCEEDED). idempotent allows retries
 * after the request was sent (on UNAVAILABLE); otherwise only failures before any
 * byte of it left (connect refused, GOAWAY before the stream started, REFUSED_STREAM)
 * are retried. The breaker open -> UNAVAILABLE at once ("peer <name> unavailable:
 * circuit open"), with no retry and no connection attempt. Returns a handle valid
 * until done runs (for tms_grpc_client_cancel). */
tms_grpc_client_call_t *tms_grpc_client_call(tms_grpc_client_t *c, const char *path,
                                             const uint8_t *req, size_t req_len,
                                             uint64_t deadline_ms, bool idempotent,
                                             tms_grpc_client_done_fn done, void *ctx);

/** The caller gave up: reset the stream (RST_STREAM CANCEL); done runs later with
 * CANCELLED. */
void tms_grpc_client_cancel(tms_grpc_client_call_t *call);

/** For /readyz: a connection is up (or the last attempt succeeded) and the breaker
 * is not open. */
bool tms_grpc_client_healthy(const tms_grpc_client_t *c);

/** Calls started and not yet done. */
size_t tms_grpc_client_busy(const tms_grpc_client_t *c);

/** Fail every pending call with UNAVAILABLE ("shutting down"), close the
 * connections, then call on_closed(arg) (may be NULL) once every handle is closed
 * and free the client. Sets *c NULL. */
void tms_grpc_client_close(tms_grpc_client_t **c, void (*on_closed)(void *arg), void *arg);

#endif
