/* The listener of a server (http1.c, grpc/server.c) and its graceful stop: parse the
 * address, bind our own socket with SO_REUSEPORT, hand it to libuv; on stop close
 * it, give the connections a grace period, then have the owner close the rest. */
#ifndef TMS_IO_LISTEN_H
#define TMS_IO_LISTEN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

typedef struct tms_listener tms_listener_t;

/* Embedded in the server; the flags are read by the owner, written here. */
struct tms_listener {
    uv_tcp_t tcp; /* data: the owner, for its connection callback */
    uv_timer_t grace;
    void *owner;
    const size_t *nconns;           /* the owner's count of open connections */
    void (*close_all)(void *owner); /* the grace is over: close every connection */
    void (*on_stopped)(void *arg);
    void *stop_arg;
    bool listening, closed, stopping, grace_started, grace_closing, stopped;
};

/** Sets up l for owner, whose open connections are counted in *nconns and which
 * close_all closes when a stop's grace period is over. Allocates nothing. */
void tms_listener_init(tms_listener_t *l, void *owner, const size_t *nconns,
                       void (*close_all)(void *owner));

/** Parses addr (host:port, :port for 0.0.0.0, or [v6]:port), binds a socket with
 * SO_REUSEADDR and SO_REUSEPORT (each worker loop binds the same port) and accepts
 * on it with cb; event names the log lines. Returns 0, -TMS_EINVAL (bad address,
 * already listening or stopping) or -TMS_EIO; the handle needs a stop once it
 * exists (l->listening), whatever the outcome. */
int tms_listener_open(tms_listener_t *l, uv_loop_t *loop, const char *addr, uv_connection_cb cb,
                      const char *event);

/** The local port while listening, or -1. */
int tms_listener_port(tms_listener_t *l);

/** Starts a graceful stop: closes the listener and starts the grace timer. Returns
 * false when already stopping. The owner then winds down its connections and calls
 * tms_listener_maybe_stopped. */
bool tms_listener_stop(tms_listener_t *l, uv_loop_t *loop, uint64_t grace_ms,
                       void (*on_stopped)(void *arg), void *arg);

/** Call after a stop started and whenever a connection is gone: once the listener
 * is closed and no connection is left, on_stopped runs (from a close callback). */
void tms_listener_maybe_stopped(tms_listener_t *l);

#endif
