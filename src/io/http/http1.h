/* Strict HTTP/1.1 server on libuv + llhttp: keep-alive, in-order pipelining (one request
 * with the handler at a time per connection), chunked request bodies, head/body limits,
 * slowloris defences (a deadline for the whole head and for the whole body, a send
 * timeout, idle timeouts, a cap of connections per client address), graceful stop. Everything runs
 * on the loop thread of the loop given to tms_http_server_new; no function here is thread-safe. */
#ifndef TMS_IO_HTTP1_H
#define TMS_IO_HTTP1_H

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "core/cidr.h"
#include "core/status.h"
#include "io/tls/tls.h"

typedef struct tms_http_server tms_http_server_t;

/* One header; both strings NUL-terminated. */
typedef struct tms_http_header {
    const char *name;
    const char *value;
} tms_http_header_t;

typedef struct tms_http_limits {
    size_t max_head_bytes;    /* request line + headers (default 16384) -> 431 */
    size_t max_body_bytes;    /* de-chunked body (default 1 MiB) -> 413 */
    uint64_t head_timeout_ms; /* whole head after its first byte (default 10000) -> 408 */
    uint64_t idle_timeout_ms; /* keep-alive idle, and body inactivity (default 60000) */
    uint64_t body_timeout_ms; /* whole body after the head (default 30000) -> 408 */
    uint64_t send_timeout_ms; /* a response written out (default 30000), else closed */
    size_t max_connections;   /* default 10000; beyond it accept and close at once */
    /* Open connections per client address on this server's address, counted over
     * every server of the process listening there (the workers'); beyond it accept
     * and close at once. 0 (default): no cap. */
    size_t max_connections_per_address;
    unsigned ipv6_prefix; /* IPv6 clients count per prefix of this many bits (default 64) */
    const char *listener; /* label in metrics and logs (default "http"); static */
    /* TLS (NULL: cleartext): every connection speaks TLS only, on this context
     * (shared, not owned; it outlives the server). A handshake not done within
     * tls_handshake_timeout_ms (default 10000) closes the connection. */
    tms_tls_ctx_t *tls;
    uint64_t tls_handshake_timeout_ms;
    /* Reverse proxies (borrowed, outlives the server; NULL: none): a request from one
     * gets its client_addr from X-Forwarded-For / Forwarded (io/http/forwarded.h). The
     * connection caps still count the peer. */
    const tms_cidr_list_t *trusted_proxies;
    /* http.cors_origins as written (borrowed, outlives the server; NULL or "": no CORS):
     * preflights are answered here, and responses to a listed Origin carry the CORS
     * headers (io/http/cors.h). */
    const char *cors_origins;
} tms_http_limits_t;

/** Fill *l with the defaults of API.md "Limits". */
void tms_http_limits_default(tms_http_limits_t *l);

typedef struct tms_http_request {
    const char *method;         /* "GET", ... */
    const char *path;           /* raw (not decoded) path without the query string */
    const char *query;          /* raw query string without '?', "" if none */
    tms_http_header_t *headers; /* names as received; trailers are dropped */
    size_t nheaders;
    const char *body; /* de-chunked body, NUL-terminated; "" when empty */
    size_t body_len;
    char request_id[65];  /* client's X-Request-Id if sane, else 32 hex chars */
    char client_addr[64]; /* client IP, no port: the peer's, or behind a trusted proxy
                           * the one its X-Forwarded-For names */
    char proxy_addr[64];  /* the trusted proxy's IP when client_addr came from it, or "" */
    const char *route;    /* set by the handler (static string); default "unmatched" */
    uint64_t start_ns;    /* uv_hrtime() at head complete */
    void *user;           /* free for the handler */
} tms_http_request_t;

/* Called once per request on the loop thread; the handler must eventually call
 * tms_http_respond (or tms_http_respond_error) exactly once, now or later. */
typedef void (*tms_http_handler_fn)(void *ctx, tms_http_request_t *req);

/** Find a header value by case-insensitive name (first match), or NULL. O(nheaders). */
const char *tms_http_header_get(const tms_http_request_t *req, const char *name);

/** Create a server on loop; limits NULL means defaults. Caller frees with
 * tms_http_server_free after tms_http_server_stop has completed. */
tms_http_server_t *tms_http_server_new(uv_loop_t *loop, const tms_http_limits_t *limits,
                                       tms_http_handler_fn handler, void *ctx);

/** Bind and listen on "host:port" (IPv4 or [v6]:port, numeric) with SO_REUSEPORT.
 * Returns 0, -TMS_EINVAL (bad address, already listening) or -TMS_EIO, with a log line. */
int tms_http_server_listen(tms_http_server_t *s, const char *addr);

/** The port actually bound, or -1 if not listening. */
int tms_http_server_port(tms_http_server_t *s);

/** Why the last tms_http_server_listen failed, in one phrase ("" before any). */
const char *tms_http_server_error(tms_http_server_t *s);

/** Respond to req exactly once (synchronously from the handler or later on the loop
 * thread). Adds Date, Content-Type (if given), Content-Length, X-Request-Id and
 * Connection: close when the connection will close; headers with CR/LF are dropped.
 * req is freed by this call; if its connection is already gone, it only logs and frees. */
void tms_http_respond(tms_http_request_t *req, int status, const tms_http_header_t *headers,
                      size_t nheaders, const char *content_type, const char *body, size_t body_len);

/** Respond {"error":{"code":CODE,"message":MSG}} with the HTTP status of API.md
 * (tms_status_http); message is JSON-escaped. Frees req like tms_http_respond. */
void tms_http_respond_error(tms_http_request_t *req, tms_status_t code, const char *message,
                            const tms_http_header_t *headers, size_t nheaders);

/** The same body with an HTTP status of its own (405 UNIMPLEMENTED: a known path
 * without that method). Frees req like tms_http_respond. */
void tms_http_respond_error_status(tms_http_request_t *req, int status, tms_status_t code,
                                   const char *message, const tms_http_header_t *headers,
                                   size_t nheaders);

/* A streamed response (Server-Sent Events): the head now, the body as it comes, ended
 * by closing the connection (no Content-Length; Connection: close). While it is open
 * the connection reads and discards input, and bytes not taken by the client within
 * send_timeout_ms close it; it counts against the connection limits as any other. */
typedef struct tms_http_stream tms_http_stream_t;

/** Answer req with status and headers and keep the connection for the body. req is
 * freed. closed(arg) runs once, from the loop, when the connection is gone (the
 * client left, a write failed, the send timeout, the server's stop) unless
 * tms_http_stream_end came first; the stream is freed after it. NULL when the
 * connection was already gone (closed is not called then). */
tms_http_stream_t *tms_http_stream_begin(tms_http_request_t *req, int status,
                                         const tms_http_header_t *headers, size_t nheaders,
                                         const char *content_type, void (*closed)(void *arg),
                                         void *arg);

/** Queue len bytes (copied). 0, or -1 when the connection is gone or closing. */
int tms_http_stream_write(tms_http_stream_t *st, const char *data, size_t len);

/** Bytes queued and not yet taken by the socket. */
size_t tms_http_stream_queued(const tms_http_stream_t *st);

/** End the stream: what is queued is sent, then the connection closes. closed is not
 * called; st must not be used again. */
void tms_http_stream_end(tms_http_stream_t *st);

/** Graceful stop: stop accepting, close idle connections now, let requests with the
 * handler finish (their responses carry Connection: close), close what is still open
 * after grace_ms, then call on_stopped(arg) from the loop once every handle is closed.
 * Requests whose connection was closed stay valid until the handler responds. */
void tms_http_server_stop(tms_http_server_t *s, uint64_t grace_ms, void (*on_stopped)(void *arg),
                          void *arg);

/** Free a server whose stop has completed (or that never listened and was stopped);
 * sets *s to NULL. NULL and *s == NULL are no-ops. */
void tms_http_server_free(tms_http_server_t **s);

/** Requests currently with the handler on live connections. */
size_t tms_http_server_inflight(tms_http_server_t *s);

/** Open connections of this server. */
size_t tms_http_server_connections(tms_http_server_t *s);

#endif
