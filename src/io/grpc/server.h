/* The gRPC server transport: HTTP/2 cleartext with prior knowledge (nghttp2, one
 * server session per connection, driven by libuv reads and writes). It frames
 * length-prefixed messages, holds every stream and connection to its bounds, defends
 * against rapid reset and CONTINUATION floods (GOAWAY, counted in
 * tms_grpc_abuse_total), applies grpc-timeout and the receive, send and idle
 * timeouts, and ends each call with its trailers. What a method means is not its
 * business: a handler (grpc/service.c, the twin of http/rest.c) names the routes it
 * serves and answers their streams through the tms_grpc_stream_* functions below.
 * Everything runs on the loop thread. */
#ifndef TMS_IO_GRPC_H
#define TMS_IO_GRPC_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "core/status.h"
#include "io/tls/tls.h"

typedef struct tms_grpc_server tms_grpc_server_t;
typedef struct tms_grpc_stream tms_grpc_stream_t;

/* How a route's requests arrive. */
typedef enum tms_grpc_shape {
    TMS_GRPC_UNARY = 1, /* one request message, handed to call() once the client ended
                         * its side; the answer may come later, and a route may keep
                         * the stream open after it (tms_grpc_stream_watch) */
    TMS_GRPC_BIDI,      /* each request message handed to message() as it arrives; the
                         * call ends OK when the client ends its side */
} tms_grpc_shape_t;

typedef struct tms_grpc_route {
    const char *path; /* "/AuthService/Login"; also the metrics label */
    tms_grpc_shape_t shape;
    int kind;         /* the handler's */
    const void *data; /* the handler's */
} tms_grpc_route_t;

#define TMS_GRPC_MAX_METADATA 4

/* What serves the routes; every function is called on the loop thread, with ctx. */
typedef struct tms_grpc_handler {
    void *ctx;
    const tms_grpc_route_t *routes; /* a path no route has is UNIMPLEMENTED */
    size_t nroutes;
    /* Request headers kept for tms_grpc_stream_metadata (lower case; at most
     * TMS_GRPC_MAX_METADATA), counted against the stream's bounds and wiped when it
     * is freed. */
    const char *const *metadata;
    size_t nmetadata;
    /* A stream's headers arrived, on a known route: may end it (tms_grpc_stream_finish)
     * or set tms_grpc_stream_limit_unchecked. */
    void (*begin)(void *ctx, tms_grpc_stream_t *st);
    /* TMS_GRPC_BIDI: one whole request message (borrowed for the call). */
    void (*message)(void *ctx, tms_grpc_stream_t *st, const uint8_t *msg, size_t len);
    /* TMS_GRPC_UNARY: the request (borrowed for the call; never NULL, len may be 0). */
    void (*call)(void *ctx, tms_grpc_stream_t *st, const uint8_t *msg, size_t len);
    /* A stream with something attached (tms_grpc_stream_attach) is going away before
     * the handler answered it (reset, connection closed): st is gone after this. */
    void (*detach)(void *ctx, tms_grpc_stream_t *st, void *attached);
    /* What the handler still waits for (calls with the actors); stop waits for it. */
    size_t (*busy)(void *ctx);
} tms_grpc_handler_t;

typedef struct tms_grpc_config {
    tms_grpc_handler_t handler;      /* copied; its ctx must outlive the server */
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
     * docs/OPERATIONS.md "gRPC limits". A request message on a stream whose caller is not checked
     * before the call (tms_grpc_stream_limit_unchecked: the service says which) over
     * max_unauthenticated_message_bytes (8 KiB) is answered at once with the code the
     * handler gave; request bytes buffered by one connection over
     * max_connection_request_bytes (8 MiB), or queued replies of one stream over
     * max_stream_output_bytes (4 MiB) or of one connection (socket writes included)
     * over max_connection_output_bytes (8 MiB), end the call that would pass the
     * bound with RESOURCE_EXHAUSTED (RST_STREAM ENHANCE_YOUR_CALM once a message was
     * sent); max_buffered_bytes (128 MiB) bounds all of it over every connection of
     * the server, open streams counted at 1 KiB each (a stream over it is refused with
     * RST_STREAM REFUSED_STREAM). A stream whose request has not ended
     * receive_timeout_ms (10 s) after its headers (or after its last whole message,
     * on a TMS_GRPC_BIDI stream) is answered DEADLINE_EXCEEDED; one whose queued reply
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
 * open finish; watched streams end UNAVAILABLE), close what is still open after grace_ms,
 * then call on_stopped(arg) (may be NULL) once every handle is closed. */
void tms_grpc_server_stop(tms_grpc_server_t *s, uint64_t grace_ms, void (*on_stopped)(void *arg),
                          void *arg);

/** What stop still waits for: the handler's busy count (calls with the actors), open
 * connections, and 1 while a started stop has not completed. 0 before stop only
 * when idle. */
size_t tms_grpc_server_busy(tms_grpc_server_t *s);

/** Free a server that never listened, or whose stop completed and whose busy count
 * is 0 (otherwise it logs and leaks rather than free live handles). Sets *s NULL. */
void tms_grpc_server_free(tms_grpc_server_t **s);

/* ---- for the handler: one stream of a known route ---- */

/** The route the stream was opened on. */
const tms_grpc_route_t *tms_grpc_stream_route(const tms_grpc_stream_t *st);

/** The value of the handler's metadata[i] header, or NULL when not sent. */
const char *tms_grpc_stream_metadata(const tms_grpc_stream_t *st, size_t i);

/** The request id (logs): 32 hex chars, or what tms_grpc_stream_set_request_id set
 * (truncated to 32 chars). */
const char *tms_grpc_stream_request_id(const tms_grpc_stream_t *st);
void tms_grpc_stream_set_request_id(tms_grpc_stream_t *st, const char *id);

/** The client's IP address ("" when unknown). */
const char *tms_grpc_stream_client(const tms_grpc_stream_t *st);

/** True once the server is stopping. */
bool tms_grpc_stream_stopping(const tms_grpc_stream_t *st);

/** Milliseconds left of the call's deadline: the smaller of cap_ms and the client's
 * grpc-timeout, counted from the headers; 0 when passed. */
uint64_t tms_grpc_stream_time_left_ms(const tms_grpc_stream_t *st, uint64_t cap_ms);

/** Until the handler checks who calls, the stream may send one small message only
 * (at most max_unauthenticated_message_bytes); a larger one ends the call with code
 * and message (NULL: "message larger than N bytes on a call without a token"). */
void tms_grpc_stream_limit_unchecked(tms_grpc_stream_t *st, tms_status_t code, const char *message);

/** Queue one response message (copied). False when a bound ended the call instead. */
bool tms_grpc_stream_send(tms_grpc_stream_t *st, const uint8_t *msg, size_t len);

/** Reply bytes queued on the stream and not yet handed to the connection. */
size_t tms_grpc_stream_queued(const tms_grpc_stream_t *st);

/** End the call with a status (message for non-OK; may be NULL): trailers after the
 * messages, or trailers-only. A finished stream ignores further answers. */
void tms_grpc_stream_finish(tms_grpc_stream_t *st, tms_status_t code, const char *message);

/** Keep a unary stream open after its answer until the client cancels or the server
 * stops (then UNAVAILABLE "server shutting down"). */
void tms_grpc_stream_watch(tms_grpc_stream_t *st);

/** Attach the handler's state for an answer that comes later (NULL: detach); the
 * handler's detach() gets it back if the stream goes away first. */
void tms_grpc_stream_attach(tms_grpc_stream_t *st, void *attached);

/** Write what is queued: after answering outside of a handler function (a reply from
 * the actors, a timer). The write happens before the loop next waits, one for every
 * stream of the connection answered meanwhile. */
void tms_grpc_stream_flush(tms_grpc_stream_t *st);

#endif
