/* The listening socket of a server (http1.c, grpc.c): parse the address, bind our
 * own socket with SO_REUSEPORT, hand it to libuv. */
#ifndef TMS_IO_LISTEN_H
#define TMS_IO_LISTEN_H

#include <uv.h>

/** Parses addr (host:port, :port for 0.0.0.0, or [v6]:port), opens a socket with
 * SO_REUSEADDR and SO_REUSEPORT (each worker loop binds the same port), binds and
 * listens on it; a failure is logged as event. Returns the socket, which the caller
 * owns, or -TMS_EINVAL (bad address) or -TMS_EIO. */
int tms_listen_socket(const char *addr, const char *event);

/** Initialises listener on loop (handle data: data) over fd, which it takes and
 * closes on failure, and starts accepting with cb; a failure is logged as event.
 * The handle is initialised whatever the outcome, so the caller closes it.
 * Returns 0 or -TMS_EIO. */
int tms_listen_start(uv_loop_t *loop, uv_tcp_t *listener, void *data, int fd, uv_connection_cb cb,
                     const char *addr, const char *event);

/** The local port of a listening handle, or -1. */
int tms_listen_port(uv_tcp_t *listener);

#endif
