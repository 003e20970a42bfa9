/* Drive one nghttp2 session over one uv_tcp_t: the byte plumbing that the gRPC
 * server (server.c) and the gRPC client (client.c) share. Bytes read go to
 * nghttp2_session_mem_recv; what the session wants to send is pulled with
 * nghttp2_session_mem_send and written with one uv_write, up to a cap of unwritten
 * bytes. With TLS (io->tls set by the owner before start) the bytes pass through
 * io/tls first, and the session sends nothing until the handshake is done.
 * Streams, settings policy and abuse defences stay with the owner. */
#ifndef TMS_IO_H2_IO_H
#define TMS_IO_H2_IO_H

#include <nghttp2/nghttp2.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "core/flush_later.h"
#include "io/tls/tls.h"

#define TMS_H2_READ_CHUNK 65536
#define TMS_H2_STREAM_WINDOW (1024 * 1024)
#define TMS_H2_CONN_WINDOW (16 * 1024 * 1024)

typedef struct tms_h2_io tms_h2_io_t;

typedef struct tms_h2_io_ops {
    /** The connection must close: a read, write or session error, the peer closed,
     * or the session has nothing left to do; why is for the logs. */
    void (*fail)(tms_h2_io_t *io, const char *why);
    /** Optional: nghttp2_session_mem_recv failed with rv and the owner decides what
     * to do (the session is unusable for reading); without it, fail is called. */
    void (*recv_failed)(tms_h2_io_t *io, int rv);
    /** Both handles are closed: the owner may free what embeds io. */
    void (*closed)(tms_h2_io_t *io);
    /** Optional: the TLS handshake is done (the client starts its session here). */
    void (*established)(tms_h2_io_t *io);
} tms_h2_io_ops_t;

/* Embedded in the owner's connection; the fields are read by the owner, written
 * here (closing also by the owner, who may mark it before tms_h2_io_close). */
struct tms_h2_io {
    uv_tcp_t tcp;
    uv_timer_t timer; /* the owner's (idle or connect timer); reads do not restart it */
    nghttp2_session *h2;
    const tms_h2_io_ops_t *ops;
    void *owner;
    char *rbuf; /* the owner's read buffer, shared by its connections */
    size_t rbuf_len;
    size_t unwritten; /* bytes handed to uv_write and not yet written */
    size_t *held;     /* the owner's: when set, unwritten bytes are added to it too */
    uint64_t last_read_ms, last_write_ms; /* uv_now of the last read; of the last write
                                           * done, or queued when nothing was unwritten */
    uint64_t started_ms;                  /* uv_now at init: the handshake's start */
    tms_tls_t *tls; /* the owner's to create (before start or handshake); freed here */
    int recv_rv;    /* TLS: nghttp2_session_mem_recv's failure within one read */
    int writes;
    int handles;
    bool closing;
    bool handles_closing;
    bool reading;
    uv_shutdown_t shutdown_req; /* the lingering close's FIN */
    tms_flush_item_t dirty;     /* on the owner's flusher until written */
};

/** Initialises io and its two handles on loop; h2 is the owner's to create (with
 * the owner as session user data) and to delete once ops->closed ran. */
void tms_h2_io_init(tms_h2_io_t *io, uv_loop_t *loop, const tms_h2_io_ops_t *ops, void *owner,
                    char *rbuf, size_t rbuf_len);

/** On a connected socket: no Nagle, our SETTINGS (iv) and connection window,
 * then reading. Returns 0 or the negative libuv error of uv_read_start. */
int tms_h2_io_start(tms_h2_io_t *io, const nghttp2_settings_entry *iv, size_t niv);

/** TLS client: sends the ClientHello of io->tls and starts reading; ops->established
 * runs once the handshake is done (then tms_h2_io_start). Returns 0 or the negative
 * libuv error of uv_read_start. */
int tms_h2_io_handshake(tms_h2_io_t *io);

/** TLS: the handshake has not completed within timeout_ms of init (the owner then
 * closes the connection; counted as a handshake timeout). */
bool tms_h2_io_handshake_overdue(tms_h2_io_t *io, uint64_t now, uint64_t timeout_ms);

/** Pulls what the session wants to send and writes it; calls ops->fail on an error
 * or once the session neither reads nor writes and nothing is left unwritten. */
void tms_h2_io_flush(tms_h2_io_t *io);

/** Starts f on loop as the list of one owner's (a server's, a client's) connections
 * with frames to write before the loop waits: each is written once however many of
 * its streams were answered or started in this turn of the loop (core/flush_later.h;
 * tms_flush_later_close stops it). It does not keep the loop alive. */
void tms_h2_flusher_init(tms_flush_later_t *f, uv_loop_t *loop);

/** tms_h2_io_flush, before the loop next waits (once, however often this is called
 * meanwhile); nothing on a closing io. io leaves f's list when its handles close. */
void tms_h2_io_flush_later(tms_h2_io_t *io, tms_flush_later_t *f);

/** Marks io closing and closes the connection gracefully: FIN after the pending
 * writes, then what the peer still sends is dropped until it closes too (500 ms at
 * most), so it never gets RST for bytes it sent before it saw our last frames; then
 * both handles close and ops->closed runs. Call once. */
void tms_h2_io_close(tms_h2_io_t *io);

#endif
