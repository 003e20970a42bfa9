/* Private to src/io/store/sqlite/: the owner thread's view of the database and the
 * contract between the generic db thread (sqlite.c) and the ports it serves
 * (users.c, tasks.c, outbox.c). Every function here runs on the owner
 * thread unless its comment says otherwise. */
#ifndef TMS_IO_SQLITE_INTERNAL_H
#define TMS_IO_SQLITE_INTERNAL_H

#include <pthread.h>
#include <stdbool.h>
#include <stdatomic.h>
#include <sqlite3.h>
#include <stddef.h>

#include "core/mailbox.h"
#include "core/status.h"
#include "core/outbox.h"
#include "core/task_store.h"
#include "core/user_store.h"
#include "io/store/sqlite/sqlite.h"
#include "io/store/store.h"

/* The port index (tms_store_port_t + 1) travels in the high bits of msg->op while
 * the message is queued (ports number their own ops from 1, so they would collide
 * otherwise) and is removed before the port sees the message. 0 is unused so that an
 * untagged message is caught. */
#define TMS_SQLITE_PORT_SHIFT 16

/* Ops the db thread takes from its queue at once; their writes share one commit. */
#define TMS_SQLITE_GROUP_MAX 256

/* What the db thread needs from a port's SQL (users.c, tasks.c, outbox.c). */
typedef struct tms_sqlite_port {
    const char *name;
    /** After the database is open: allocate the port's state (statement cache).
     * Never NULL. */
    void *(*start)(sqlite3 *db);
    /** True when op writes. A write runs inside the db thread's group transaction, in
     * a savepoint of its own that is rolled back when run leaves an error in the op
     * (so run opens no transaction and leaves nothing half done that an error would
     * keep); it is answered after the group's COMMIT. Other ops run outside any
     * transaction, on committed data, and are answered at once. */
    bool (*writes)(int op);
    /** Run one operation (op code in range, outputs reset) and store its outcome in
     * msg; the db thread replies. */
    void (*run)(void *state, sqlite3 *db, tms_msg_t *msg);
    /** Before the database closes: finalize statements and free state. */
    void (*stop)(void *state);
} tms_sqlite_port_t;

extern const tms_sqlite_port_t tms__sqlite_users_port;
extern const tms_sqlite_port_t tms__sqlite_tasks_port;
extern const tms_sqlite_port_t tms__sqlite_outbox_port;

/* Ops the owner thread ran that may have written, counted before each one's reply:
 * a reader whose open read transaction began at another count ends it, so that it
 * sees every write answered before (reader.c). Shared with the readers, which may
 * outlive the store: freed by the last reference. */
typedef struct tms_sqlite_writes {
    atomic_ulong n;
    atomic_int refs;
} tms_sqlite_writes_t;

/** Drop a reference to w; the last frees it. */
void tms__sqlite_writes_unref(tms_sqlite_writes_t *w);

struct tms_sqlite {
    tms_store_t st;    /* first member: the ports, their lifecycle and metrics */
    tms_mailbox_t *mb; /* threaded; consumed only by the owner thread */
    pthread_t thread;
    char *path;
    tms_counter_t *commits, *group_writes; /* group commits and the writes in them */
    tms_sqlite_writes_t *writes;
    void *port_state[TMS_STORE_NPORTS]; /* owner thread only */
    /* start-up handshake: the owner thread reports whether open and migrate worked */
    pthread_mutex_t lock;
    pthread_cond_t cond;
    int started; /* 0 while starting, 1 when start_rc is set */
    int start_rc;
    char start_err[256];
};

/** Loop thread (any thread but the owner's): the task (or user) store's reader on a read-only
 * connection of the caller's (reader.c), NULL when it cannot be opened (logged). */
tms_task_reader_t *tms__sqlite_reader_open(tms_store_t *st, uv_loop_t *loop);
tms_user_reader_t *tms__sqlite_user_reader_open(tms_store_t *st, uv_loop_t *loop);

/** Column i of the current row as a heap string ("" for NULL). */
char *tms__sqlite_column_dup(sqlite3_stmt *st, int i);

/** Column i of the current row copied into dst (truncated to cap, "" for NULL). */
/** Process-wide SQLite settings (memory statistics off); call before opening. */
void tms__sqlite_configure(void);

void tms__sqlite_column_str(char *dst, size_t cap, sqlite3_stmt *st, int i);

/** Run sql (no parameters, no rows) on db; returns the SQLite result code. */
int tms__sqlite_exec(sqlite3 *db, const char *sql);

/** Insert one outbox row (in the caller's transaction). Returns the result code. */
int tms__sqlite_outbox_insert(sqlite3 *db, sqlite3_stmt **slot, const char *event_id,
                              const char *topic, const char *key, const char *payload,
                              int64_t now_ms);

/** Open path, set the pragmas and apply migrations; *out is the handle for the
 * calling thread. Returns 0 or -TMS_EIO with a one-line reason in err. */
int tms__sqlite_open_db(const char *path, sqlite3 **out, char *err, size_t err_len);

/** The schema version this binary migrates to (the number of migrations). */
int tms__sqlite_schema_version(void);

/** Apply pending migrations, each in its own transaction. Returns 0 or -TMS_EIO
 * with err (failed migration, or a schema newer than this binary). */
int tms__sqlite_apply_migrations(sqlite3 *db, char *err, size_t err_len);

/** The statement cached in *slot, prepared from sql on first use. NULL on failure
 * (logged). Call tms__sqlite_done after each use. */
sqlite3_stmt *tms__sqlite_stmt(sqlite3 *db, sqlite3_stmt **slot, const char *sql);

/** Reset st and clear its bindings so it holds no lock or snapshot between ops. */
void tms__sqlite_done(sqlite3_stmt *st);

/** Turn a failed result code into a client-safe error: busy, locked, I/O, full ->
 * UNAVAILABLE, anything else -> INTERNAL. Logs the SQLite message, never SQL text. */
void tms__sqlite_fail(tms_error_t *err, sqlite3 *db, int rc, const char *op);

#endif
