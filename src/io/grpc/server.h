/* The gRPC adapter: HTTP/2 cleartext with prior knowledge (nghttp2, one server
 * session per connection, driven by libuv reads and writes) serving AuthService and
 * TaskService of API.md by turning each call into a tms_api_call_t for the gateway
 * actor (the twin of http/rest.c), plus grpc.health.v1.Health and server reflection
 * (v1alpha and v1). Limits: SETTINGS sent at once with 100 concurrent streams,
 * messages over max_message_bytes answered RESOURCE_EXHAUSTED, a header list limit,
 * and rapid-reset and CONTINUATION-flood defences that close the connection with
 * GOAWAY (counted in tms_grpc_abuse_total). Everything runs on the loop thread. */
#ifndef TMS_IO_GRPC_H
#define TMS_IO_GRPC_H

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "core/mailbox.h"
#include "io/tls/tls.h"

typedef struct tms_grpc_server tms_grpc_server_t;

typedef struct tms_grpc_config {
    tms_mailbox_t *gateway; /* where calls go; NULL: public API not served here */
    /* The internal service (/tms.internal.Actors/Call) of a split deployment: served
     * only when service_token is set, and only to callers presenting it in
     * x-tms-service-token (others get UNAUTHENTICATED). A call goes to the auth or
     * task mailbox of its stage and op; NULL: that role does not run here. */
    const char *service_token; /* copied */
    tms_mailbox_t *auth, *task;
    uint64_t call_timeout_ms;        /* deadline of a call without (or above) grpc-timeout */
    uint32_t max_concurrent_streams; /* 0: 100 */
    size_t max_message_bytes;        /* 0: 4 MiB; larger -> RESOURCE_EXHAUSTED */
    size_t max_header_list_bytes;    /* 0: 16 KiB */
    uint64_t idle_timeout_ms;        /* 0: 60 s; a connection with no stream for so long */
    size_t max_connections;          /* 0: 10000; beyond it accept and close at once */
    /* Open connections per client address on this address, over every gRPC server of
     * the process listening there; beyond it accept and close at once. 0: no cap. */
    size_t max_connections_per_address;
    unsigned ipv6_prefix; /* IPv6 clients count per prefix of this many bits; 0: 64 */
    /* What a client can make the server hold (0: the default in parentheses); see
     * README "gRPC limits". A request message on a stream whose token is not checked
     * before the call (methods that need no token, and token methods called without
     * an authorization header) over max_unauthenticated_message_bytes (8 KiB) is
     * answered at once (UNAUTHENTICATED, or RESOURCE_EXHAUSTED on a method that needs
     * no token); request bytes buffered by one connection over
     * max_connection_request_bytes (8 MiB), or queued replies of one stream over
     * max_stream_output_bytes (4 MiB) or of one connection (socket writes included)
     * over max_connection_output_bytes (8 MiB), end the call that would pass the
     * bound with RESOURCE_EXHAUSTED (RST_STREAM ENHANCE_YOUR_CALM once a message was
     * sent); max_buffered_bytes (128 MiB) bounds all of it over every connection of
     * the server, open streams counted at 1 KiB each (a stream over it is refused with
     * RST_STREAM REFUSED_STREAM). A stream whose request has not ended
     * receive_timeout_ms (10 s) after its headers (or after its last whole message,
     * on a reflection stream) is answered DEADLINE_EXCEEDED; one whose queued reply
     * has not moved for send_timeout_ms (10 s) is reset (CANCEL), and a connection
     * whose socket writes have not moved for as long is closed. */
    size_t max_unauthenticated_message_bytes;
    size_t max_connection_request_bytes;
    size_t max_stream_output_bytes;
    size_t max_connection_output_bytes;
    size_t max_buffered_bytes;
    uint64_t receive_timeout_ms;
    uint64_t send_timeout_ms;
    /* TLS (NULL: cleartext h2c): every connection speaks TLS only (ALPN h2), on this
     * context (shared, not owned; it outlives the server); a handshake not done within
     * tls_handshake_timeout_ms (0: 10 s) closes the connection. */
    tms_tls_ctx_t *tls;
    uint64_t tls_handshake_timeout_ms;
} tms_grpc_config_t;

/** Create the server on loop. Never NULL. */
tms_grpc_server_t *tms_grpc_server_new(uv_loop_t *loop, const tms_grpc_config_t *cfg);

/** Bind and listen on "host:port" (IPv4 or [v6]:port, numeric; port 0 picks one)
 * with SO_REUSEPORT. Returns 0, -TMS_EINVAL (bad address, already listening) or
 * -TMS_EIO, with a log line. */
int tms_grpc_server_listen(tms_grpc_server_t *s, const char *addr);

/** The port actually bound, or -1 if not listening. */
int tms_grpc_server_port(tms_grpc_server_t *s);

/** Why the last tms_grpc_server_listen failed, in one phrase ("" before any). */
const char *tms_grpc_server_error(tms_grpc_server_t *s);

/** Graceful stop: stop accepting, send GOAWAY on every connection (streams already
 * open finish; health answers NOT_SERVING), close what is still open after grace_ms,
 * then call on_stopped(arg) (may be NULL) once every handle is closed. */
void tms_grpc_server_stop(tms_grpc_server_t *s, uint64_t grace_ms, void (*on_stopped)(void *arg),
                          void *arg);

/** Call drained(arg) once no call is with the actors any more (at once when none
 * is; later from the loop when the last answered and its timer closed). */
void tms_grpc_server_drain(tms_grpc_server_t *s, void (*drained)(void *arg), void *arg);

/** What stop still waits for: calls with the actors, open connections, and 1 while
 * a started stop has not completed. 0 before stop only when idle. */
size_t tms_grpc_server_busy(tms_grpc_server_t *s);

/** Free a server that never listened, or whose stop completed and whose busy count
 * is 0 (otherwise it logs and leaks rather than free live handles). Sets *s NULL. */
void tms_grpc_server_free(tms_grpc_server_t **s);

#endif
