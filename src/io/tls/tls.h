/* TLS on the libuv loop (OpenSSL 3), for the REST and gRPC listeners and the gRPC
 * client of a split deployment. Two halves:
 *
 * - A context (context.c) per listener or client, shared by every worker thread of the
 *   process: the SSL_CTX built from the settings (certificate chain and key, the CAs
 *   of client certificates, protocols, ciphers, ALPN), checked at start (one line
 *   naming the setting), swapped by tms_tls_ctx_reload (SIGHUP) for new connections
 *   while existing ones keep the one they started with, and session tickets under a
 *   key of the context's own that rotates every hour.
 * - A connection engine (tls.c) with no socket: ciphertext in -> plaintext out,
 *   plaintext in -> ciphertext out, through a BIO of our own that reads the bytes
 *   of the read being handled and appends what OpenSSL writes to a buffer the owner
 *   takes and hands to uv_write. No blocking call, no thread; the owner (http1.c,
 *   grpc/h2_io.c) moves the bytes and keeps its own timers and limits.
 *
 * TLS 1.2 and 1.3 only, renegotiation and compression off, Mozilla's "intermediate"
 * TLS 1.2 ciphers by default (ECDHE only; TLS 1.3 suites are OpenSSL's). */
#ifndef TMS_IO_TLS_H
#define TMS_IO_TLS_H

#include <stdbool.h>
#include <stddef.h>

/* Mozilla "intermediate" (v5.7) TLS 1.2 suites without the DHE ones (every client
 * that speaks TLS 1.2 has ECDHE, and DHE would need parameters of its own). */
#define TMS_TLS_CIPHERS                                                                            \
    "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES256-GCM-SHA384:"     \
    "ECDHE-RSA-AES256-GCM-SHA384:ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305"
#define TMS_TLS_PROTOCOLS "TLSv1.2 TLSv1.3"

/* tms_tls_input: the peer sent close_notify (after the plaintext before it). */
#define TMS_TLS_EOF 1

typedef struct tms_tls_ctx tms_tls_ctx_t;
typedef struct tms_tls tms_tls_t;

typedef struct tms_tls_options {
    /* The settings' section, which names them in errors: "http" (http.tls_cert,
     * http.tls_key, http.tls_client_ca, http.tls_protocols, http.tls_ciphers), "grpc",
     * or "peers" (peers.tls_cert, peers.tls_key, peers.tls_ca). Static string. */
    const char *section;
    const char *label; /* metric label and log name ("http", "grpc", "peers"); NULL: section */
    bool client;       /* a client context: verifies the server against ca */
    /* PEM files. Server: cert (a chain: leaf first) and key are required. Client:
     * both or neither (presented when the server asks). */
    const char *cert, *key;
    /* Server: client certificates are required, from these CAs (NULL: none asked).
     * Client: the CAs that verify the server's certificate (required). */
    const char *ca;
    const char *protocols; /* "TLSv1.2 TLSv1.3" or one of them; NULL: both */
    const char *ciphers;   /* OpenSSL list of TLS 1.2 ciphers; NULL: TMS_TLS_CIPHERS */
    /* ALPN: "h2" or "http/1.1". A server refuses a client whose ALPN list lacks it
     * (fatal alert no_application_protocol); a client without ALPN is served (gRPC
     * with prior knowledge, HTTP/1.1). A client offers it and fails the handshake
     * unless the server selected it. */
    const char *alpn;
} tms_tls_options_t;

/** Builds a context from opt (strings are copied): reads and checks the files now.
 * Refused, with one line naming the setting in err: a file that cannot be read or
 * holds no certificate or key, a key that others may read (mode o+r; 0600, or 0640
 * with a group of its own, is fine), a key that does not match the certificate, a
 * certificate that has expired or is not yet valid, an unusable protocol or cipher
 * list. Returns NULL then. Any thread; the context is then shared by all. */
tms_tls_ctx_t *tms_tls_ctx_new(const tms_tls_options_t *opt, char *err, size_t err_len);

/** Reads the files again and, when they pass the checks of tms_tls_ctx_new, uses
 * them for every connection started from now on (connections already open keep
 * theirs) with new session ticket keys (tickets issued before no longer resume).
 * Returns 0, or -TMS_EINVAL with why in err, keeping what it had. Any thread. */
int tms_tls_ctx_reload(tms_tls_ctx_t *ctx, char *err, size_t err_len);

/** The label of ctx ("http", ...). */
const char *tms_tls_ctx_label(const tms_tls_ctx_t *ctx);

/** One line about the certificate in use: subject, notAfter (for the logs). */
void tms_tls_ctx_describe(tms_tls_ctx_t *ctx, char *out, size_t size);

/** Frees ctx once no connection uses it; sets *ctx NULL; NULL is a no-op. */
void tms_tls_ctx_free(tms_tls_ctx_t **ctx);

/** A connection on ctx's current SSL_CTX. host (client only, may be NULL): the name
 * or IP address the server's certificate must carry, also sent as SNI when a name.
 * A client queues its ClientHello at once (take it with tms_tls_take). */
tms_tls_t *tms_tls_new(tms_tls_ctx_t *ctx, const char *host);

/** Frees t (NULL and *t == NULL are no-ops); sets *t NULL. */
void tms_tls_free(tms_tls_t **t);

/** Called with each piece of plaintext decrypted by tms_tls_input; non-zero stops
 * the input (the rest of it is dropped: only when the connection is closing). */
typedef int (*tms_tls_plain_fn)(void *arg, const char *data, size_t len);

/** Ciphertext read from the socket: the handshake goes on, application data is
 * decrypted and given to plain as it comes. Everything is consumed (a partial
 * record is kept inside). What TLS must send back (handshake, tickets, alerts)
 * waits in the output (tms_tls_take). Returns 0, TMS_TLS_EOF (close_notify), or
 * -TMS_EIO when the handshake or a record failed (tms_tls_error says why; the alert
 * for the peer, if any, is in the output: send it, then close). */
int tms_tls_input(tms_tls_t *t, const char *data, size_t len, tms_tls_plain_fn plain, void *arg);

/** Encrypts len bytes of plaintext into the output. Only once established. Returns
 * 0 or -TMS_EIO. */
int tms_tls_write(tms_tls_t *t, const void *data, size_t len);

/** Queues close_notify (once, and only on a healthy established connection). */
void tms_tls_shutdown(tms_tls_t *t);

/** Hands the ciphertext waiting to be sent to the caller (who frees it with free())
 * and empties the output; NULL with *len 0 when there is none. */
char *tms_tls_take(tms_tls_t *t, size_t *len);

/** The handshake has completed (and ALPN matched, on a client). */
bool tms_tls_established(const tms_tls_t *t);

/** Why the last failure happened, in a few words ("" if none). */
const char *tms_tls_error(const tms_tls_t *t);

/** The handshake failed on a cleartext HTTP request (someone sent http:// to the
 * TLS port): the owner may answer it in cleartext. */
bool tms_tls_plain_http(const tms_tls_t *t);

/** The protocol selected by ALPN ("h2", "http/1.1"), or "" when none. */
const char *tms_tls_alpn(const tms_tls_t *t);

/** The subject of the peer's certificate ("/CN=..."), or "" when it sent none. */
void tms_tls_peer_subject(const tms_tls_t *t, char *out, size_t size);

/** The owner gave up on a handshake that took too long: counted in
 * tms_tls_handshake_failures_total{reason="timeout"}. */
void tms_tls_timed_out(tms_tls_t *t);

#endif
