/* The listener of a server (http1.c, grpc/server.c) and its graceful stop: parse the
 * address, bind our own socket with SO_REUSEPORT, hand it to libuv; on stop close
 * it, give the connections a grace period, then have the owner close the rest.
 *
 * Only this process's own listeners share a port: the first listener of the process
 * on an address first checks, with a socket bound without SO_REUSEPORT, that nothing
 * else listens there (another tms would otherwise join the SO_REUSEPORT group and get
 * half the connections); the listeners of the other workers then join it. The
 * listeners on one address also share one count of open connections per client
 * address (the cap of limit_conn), kept for the whole process under one mutex (taken
 * once per accept and once per close). */
#ifndef TMS_IO_LISTEN_H
#define TMS_IO_LISTEN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

typedef struct tms_listener tms_listener_t;
typedef struct tms_listen_group tms_listen_group_t;
typedef struct tms_listen_slot tms_listen_slot_t;
typedef struct tms_counter tms_counter_t;

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
    tms_listen_group_t *group; /* the process's listeners on this address */
    const char *kind;          /* "http", "grpc", "metrics": metric label, log lines */
    size_t per_address;        /* open connections per client address; 0: no cap */
    unsigned v6_prefix;        /* IPv6 clients are one address per prefix */
    tms_counter_t *refused_addr, *refused_max;
    char error[192]; /* why the last tms_listener_open failed, for the owner to print */
};

/** Sets up l for owner, whose open connections are counted in *nconns and which
 * close_all closes when a stop's grace period is over. Allocates nothing. */
void tms_listener_init(tms_listener_t *l, void *owner, const size_t *nconns,
                       void (*close_all)(void *owner));

/** Before tms_listener_open: kind names the listener in metrics and logs (static
 * string); per_address caps open connections per client address (0: no cap), IPv6
 * clients counted per v6_prefix bits (0: 64). */
void tms_listener_limit(tms_listener_t *l, const char *kind, size_t per_address,
                        unsigned v6_prefix);

/** Parses addr (host:port, :port for 0.0.0.0, or [v6]:port), binds a socket with
 * SO_REUSEADDR and SO_REUSEPORT and accepts on it with cb; event names the log lines.
 * The first listener of the process on addr fails when anything else listens there;
 * the next ones (other workers, same kind) join it. Returns 0, -TMS_EINVAL (bad
 * address, already listening or stopping, the address of another kind of listener of
 * this process) or -TMS_EIO (address in use, bind or listen failed); l->error then
 * says why in one phrase. The handle needs a stop once it exists (l->listening),
 * whatever the outcome. */
int tms_listener_open(tms_listener_t *l, uv_loop_t *loop, const char *addr, uv_connection_cb cb,
                      const char *event);

/** Admits a connection just accepted from client address ip (text, no port) under
 * the per-address cap: 0 with *slot set (NULL without a cap), to be released once the
 * connection is gone; -TMS_EFULL when the address has per_address connections open
 * already (counted in tms_connections_refused_total, logged once a minute per
 * address): the owner closes the connection at once. */
int tms_listener_admit(tms_listener_t *l, const char *ip, tms_listen_slot_t **slot);

/** Gives back what tms_listener_admit took; sets *slot NULL; NULL is a no-op. */
void tms_listener_release(tms_listener_t *l, tms_listen_slot_t **slot);

/** Counts a connection refused because the owner had max connections open. */
void tms_listener_refused_max(tms_listener_t *l);

/** Start-up check before anything else runs: 0 when nothing listens on addr (or its
 * port is 0), else -TMS_EINVAL (bad address) or -TMS_EIO (in use, or the address
 * cannot be bound) with why set. tms_listener_open checks again when it binds. */
int tms_listener_check(const char *addr, char *why, size_t why_len);

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
