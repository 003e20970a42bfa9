/* The embedded store: one SQLite database file owned by one dedicated thread that
 * takes operations from its own bounded mailbox, runs them and replies. Nothing
 * else touches the sqlite3 handle. It serves the user store, task store and outbox
 * ports of core/ (io/store/store.h: submit from any thread, replies to msg.reply_to,
 * close on the loop given to open; core/port.h). */
#ifndef TMS_IO_SQLITE_H
#define TMS_IO_SQLITE_H

#include <stddef.h>
#include <uv.h>

#include "core/outbox.h"
#include "core/task_store.h"
#include "core/user_store.h"

typedef struct tms_sqlite tms_sqlite_t;

/** Open (create) the database at path with WAL, synchronous=FULL, foreign keys and a
 * busy timeout, apply pending migrations and start the owner thread, which takes at
 * most queue_capacity queued operations. Call on loop's thread: the ports close on
 * that loop. Returns after the thread is ready, or NULL with a one-line reason in
 * err (unopenable file, failed migration, or a schema newer than this binary). */
tms_sqlite_t *tms_sqlite_open(uv_loop_t *loop, const char *path, size_t queue_capacity, char *err,
                              size_t err_len);

/** The user store port served by db (the same pointer on every call). Close it
 * through its vtable (core/port.h); db is released, its thread joined and its file
 * closed, with the last port it handed out. */
tms_user_store_t *tms_sqlite_user_store(tms_sqlite_t *db);

/** The task store port served by db; as tms_sqlite_user_store. */
tms_task_store_t *tms_sqlite_task_store(tms_sqlite_t *db);

/** The outbox and inbox of db; as tms_sqlite_user_store. */
tms_outbox_t *tms_sqlite_outbox(tms_sqlite_t *db);

/** Open the database at path, apply pending migrations and close it, on the calling
 * thread (for `tms migrate`). Returns 0, or -TMS_EIO with a one-line reason in err. */
int tms_sqlite_migrate(const char *path, char *err, size_t err_len);

#endif
