/* The task store and outbox on PostgreSQL, driven entirely by one libuv loop:
 * non-blocking libpq (PQconnectStartParams/PQconnectPoll with the host resolved by
 * uv_getaddrinfo, the socket on uv_poll), a small pool of connections in pipeline
 * mode, prepared statements, and one statement per operation (the transactional
 * writes are server-side functions installed by the migrations, so a task change,
 * its outbox event and its idempotency record commit together). Ports must be
 * submitted from the loop's thread; replies go to msg.reply_to like every store
 * (io/store/store.h; core/port.h). */
#ifndef TMS_IO_PG_H
#define TMS_IO_PG_H

#include <stdbool.h>
#include <stddef.h>
#include <uv.h>

#include "core/outbox.h"
#include "core/task_store.h"

typedef struct tms_pg tms_pg_t;

typedef struct tms_pg_options {
    int pool_size;            /* connections; 0 = 4 */
    int pipeline_depth;       /* ops in flight per connection; 0 = 32, 1 = no pipelining */
    int statement_timeout_ms; /* server statement_timeout; 0 = 5000 */
    size_t queue_capacity;    /* ops waiting for a connection; 0 = 1024 */
    bool accept_async_commit; /* accept a server with synchronous_commit off */
    bool migrate;             /* apply pending migrations at open (tasks.migrate=auto) */
    bool purge_sent;          /* delete outbox rows earlier versions marked sent */
} tms_pg_options_t;

/** Check the server (synchronous_commit), optionally migrate, then start the pool on
 * loop. The checks use a blocking connection before the loop serves anything; the
 * pool itself never blocks. opt may be NULL for defaults. Returns NULL with a
 * one-line reason in err (unreachable server, failed migration, schema newer than
 * this binary, synchronous_commit off). */
tms_pg_t *tms_pg_open(uv_loop_t *loop, const char *url, const tms_pg_options_t *opt, char *err,
                      size_t err_len);

/** The task store port served by pg (the same pointer on every call). Close it
 * through its vtable (core/port.h); pg is released, its connections closed, with the
 * last port it handed out. */
tms_task_store_t *tms_pg_task_store(tms_pg_t *pg);

/** The outbox and inbox port served by pg; as tms_pg_task_store. */
tms_outbox_t *tms_pg_outbox(tms_pg_t *pg);

/** Connections currently up (loop thread). */
int tms_pg_connections_up(tms_pg_t *pg);

/** Apply pending migrations on a blocking connection (for `tms migrate`; never on a
 * serving loop). Returns 0, or -TMS_EIO with a one-line reason in err. */
int tms_pg_migrate_sync(const char *url, char *err, size_t err_len);

/** True when url names PostgreSQL (postgres:// or postgresql://). */
bool tms_pg_url(const char *url);

#endif
