/* The task store's reader on SQLite (core/task_store.h): a read-only connection of
 * the calling thread (a worker's loop) that answers GET and LIST at once, with no
 * mailbox and no wake-up of the owner thread. WAL lets it read beside the owner
 * thread's writes; each op is its own read transaction, begun after every reply the
 * caller has seen, so it sees every acknowledged write.
 *
 * The loop must not wait on I/O: the database file is memory-mapped (mmap_size), the
 * connection's page cache keeps what was read since the last write, and it never waits
 * for a lock (busy_timeout 0): a busy database (a WAL recovery) sends the op to the
 * owner thread instead. Pages changed since the last checkpoint are read from the WAL
 * file, which the writer has just written (in the OS page cache). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/alloc.h"
#include "core/log.h"
#include "io/store/sqlite/internal.h"

/* Covers any database this server is meant for; SQLite maps only the file's size. */
#define READER_MMAP_SIZE "268435456"

typedef struct reader {
    tms_task_reader_t base; /* first member */
    sqlite3 *db;
    void *tasks; /* the tasks port's statement cache on this connection */
    tms_histogram_t *duration[TMS_STORE_MAX_OPS];
    tms_counter_t *errors[TMS_STORE_MAX_OPS];
} reader_t;

static int reader_read(tms_task_reader_t *self, tms_task_op_t *op)
{
    reader_t *r = (reader_t *)self;
    int kind = op->msg.op;
    uint64_t t0;
    if (kind != TMS_TASK_GET && kind != TMS_TASK_LIST)
        return -TMS_EINVAL;
    t0 = uv_hrtime();
    tms__sqlite_tasks_port.run(r->tasks, r->db, &op->msg);
    if (op->err.code == TMS_UNAVAILABLE) { /* busy: the owner thread waits for it */
        tms_error_set(&op->err, TMS_OK, "%s", "");
        op->tasks = NULL; /* in op->arena */
        op->ntasks = 0;
        op->has_more = false;
        return -TMS_EAGAIN;
    }
    if (op->err.code == TMS_INTERNAL)
        tms_counter_add(r->errors[kind], 1);
    tms_histogram_observe(r->duration[kind], (double)(uv_hrtime() - t0) / 1e9);
    return 0;
}

static void reader_close(tms_task_reader_t *self)
{
    reader_t *r = (reader_t *)self;
    int rc;
    tms__sqlite_tasks_port.stop(r->tasks);
    rc = sqlite3_close(r->db);
    if (rc != SQLITE_OK) /* a statement left unfinalized: a bug in the port */
        tms_log_error("sqlite_close", "reader rc=%d", rc);
    free(r);
}

tms_task_reader_t *tms__sqlite_reader_open(tms_store_t *st)
{
    tms_sqlite_t *s = (tms_sqlite_t *)st;
    reader_t *r;
    sqlite3 *db = NULL;
    char *errmsg = NULL;
    int rc = sqlite3_open_v2(s->path, &db, SQLITE_OPEN_READONLY | SQLITE_OPEN_NOMUTEX, NULL);
    if (rc == SQLITE_OK)
        rc = sqlite3_exec(db,
                          "PRAGMA mmap_size=" READER_MMAP_SIZE ";"
                          "PRAGMA query_only=1;",
                          NULL, NULL, &errmsg);
    if (rc == SQLITE_OK && sqlite3_db_readonly(db, "main") != 1)
        rc = SQLITE_MISUSE;
    if (rc != SQLITE_OK) { /* every op then goes to the owner thread, as before */
        tms_log_warn("sqlite_reader", "path=%s rc=%d msg=%s", s->path, rc,
                     errmsg ? errmsg : (db ? sqlite3_errmsg(db) : sqlite3_errstr(rc)));
        sqlite3_free(errmsg);
        sqlite3_close(db);
        return NULL;
    }
    sqlite3_extended_result_codes(db, 1);
    sqlite3_busy_timeout(db, 0); /* never wait on the loop */
    r = tms_new(reader_t);
    r->base.read = reader_read;
    r->base.close = reader_close;
    r->db = db;
    r->tasks = tms__sqlite_tasks_port.start(db);
    memcpy(r->duration, st->port[TMS_STORE_TASKS].duration, sizeof(r->duration));
    memcpy(r->errors, st->port[TMS_STORE_TASKS].errors, sizeof(r->errors));
    return &r->base;
}
