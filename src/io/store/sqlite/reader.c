/* The task and user stores' readers on SQLite (core/task_store.h, core/user_store.h): a
 * read-only connection of the calling thread (a worker's loop) that answers a task's
 * GET and LIST, or a user's GET_BY_ID, at once, with no mailbox and no wake-up of the
 * owner thread. WAL lets it read beside the owner thread's writes. The user reader
 * serves the lookups of the auth actor's common paths (the assignee of every create or
 * reassignment, USER_EXISTS; a token whose user is not cached): each was two context
 * switches on the loop's core, and the SQLite thread's switches were 19 % of TMS's CPU
 * under the pg_post load (35,806 lookups for 32,838 creates).
 *
 * One read transaction serves the reads of a loop iteration: it begins at the first
 * read and ends before the loop next waits for I/O (a prepare handle), so the WAL
 * read-mark lock (an fcntl on the -shm file each way) is taken once per iteration,
 * not per read, and no snapshot is held while the loop is idle. It also ends as soon
 * as the owner thread has run a write since it began (tms_sqlite_writes_t, counted
 * before the write's reply): a read sees every write answered before it started.
 *
 * The loop must not wait on I/O: the connection's page cache keeps what was read since
 * the last write, the pages it reads are those the writer thread has just written or
 * read (in the OS page cache: a pread copies them), and it never waits for a lock
 * (busy_timeout 0): a busy database (a WAL recovery) sends the op to the owner thread
 * instead.
 *
 * The file is not memory-mapped (mmap_size 0): with a mapping, SQLite unmaps the whole
 * file at the first read after any write and maps it again, and munmap and mmap take
 * the process's memory-map lock for writing. A password hash maps and unmaps its 64 MiB
 * on the hash threads of this process: behind one, the loop waited 15-20 ms (GET p99
 * 12-15 ms during the bench's login storm; 2-4 ms without the mapping). Without it a GET
 * also costs less CPU (8.3 against 8.8 us, LIST 23.8 against 26.5 us: bench/cost). */
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/alloc.h"
#include "core/log.h"
#include "io/store/sqlite/internal.h"

typedef struct reader {
    union {
        tms_task_reader_t tasks;
        tms_user_reader_t users;
    } base; /* first member */
    sqlite3 *db;
    const tms_sqlite_port_t *port; /* the tasks' or the users' */
    void *state;                   /* the port's statement cache on this connection */
    sqlite3_stmt *begin, *commit;
    tms_sqlite_writes_t *writes; /* the owner thread's write count (shared) */
    unsigned long seen;          /* writes->n when the open transaction began */
    bool in_txn;
    uv_prepare_t prepare; /* ends the transaction before the loop waits */
    tms_histogram_t *duration[TMS_STORE_MAX_OPS];
    tms_counter_t *errors[TMS_STORE_MAX_OPS];
} reader_t;

static void end_txn(reader_t *r)
{
    int rc;
    if (!r->in_txn)
        return;
    r->in_txn = false;
    uv_prepare_stop(&r->prepare);
    rc = sqlite3_step(r->commit);
    sqlite3_reset(r->commit);
    if (rc != SQLITE_DONE)
        tms_log_warn("sqlite_reader", "end rc=%d msg=%s", rc, sqlite3_errmsg(r->db));
}

static void on_prepare(uv_prepare_t *h)
{
    end_txn(h->data);
}

/* BEGIN (deferred: the snapshot is taken by the first read, after the count is read). */
static void begin_txn(reader_t *r)
{
    int rc;
    r->seen = atomic_load(&r->writes->n);
    rc = sqlite3_step(r->begin);
    sqlite3_reset(r->begin);
    if (rc != SQLITE_DONE) /* the op then runs in a transaction of its own */
        return;
    r->in_txn = true;
    uv_prepare_start(&r->prepare, on_prepare);
}

/* Runs msg's op on this connection: 0, or -TMS_EAGAIN when the database is busy (err
 * is then reset; the owner thread waits for it). */
static int run(reader_t *r, tms_msg_t *msg, tms_error_t *err)
{
    int kind = msg->op;
    uint64_t t0 = uv_hrtime();
    if (r->in_txn && atomic_load(&r->writes->n) != r->seen)
        end_txn(r); /* a write ran since the snapshot: take a new one */
    if (!r->in_txn)
        begin_txn(r);
    tms_error_set(err, TMS_OK, "%s", ""); /* the port sets only what went wrong */
    r->port->run(r->state, r->db, msg);
    if (err->code == TMS_UNAVAILABLE) {
        end_txn(r);
        tms_error_set(err, TMS_OK, "%s", "");
        return -TMS_EAGAIN;
    }
    if (err->code == TMS_INTERNAL)
        tms_counter_add(r->errors[kind], 1);
    tms_histogram_observe(r->duration[kind], (double)(uv_hrtime() - t0) / 1e9);
    return 0;
}

static int task_read(tms_task_reader_t *self, tms_task_op_t *op)
{
    if (op->msg.op != TMS_TASK_GET && op->msg.op != TMS_TASK_LIST)
        return -TMS_EINVAL;
    if (run((reader_t *)self, &op->msg, &op->err) == 0)
        return 0;
    op->tasks = NULL; /* in op->arena */
    op->ntasks = 0;
    op->has_more = false;
    return -TMS_EAGAIN;
}

static int user_read(tms_user_reader_t *self, tms_user_op_t *op)
{
    if (op->msg.op != TMS_USER_GET_BY_ID)
        return -TMS_EINVAL;
    memset(&op->user, 0, sizeof op->user);
    if (run((reader_t *)self, &op->msg, &op->err) == 0)
        return 0;
    memset(&op->user, 0, sizeof op->user);
    return -TMS_EAGAIN;
}

static void free_reader(uv_handle_t *h)
{
    free(h->data);
}

static void reader_close(reader_t *r)
{
    int rc;
    end_txn(r);
    sqlite3_finalize(r->begin);
    sqlite3_finalize(r->commit);
    r->port->stop(r->state);
    rc = sqlite3_close(r->db);
    if (rc != SQLITE_OK) /* a statement left unfinalized: a bug in the port */
        tms_log_error("sqlite_close", "reader rc=%d", rc);
    tms__sqlite_writes_unref(r->writes);
    uv_close((uv_handle_t *)&r->prepare, free_reader);
}

static void task_reader_close(tms_task_reader_t *self)
{
    reader_close((reader_t *)self);
}

static void user_reader_close(tms_user_reader_t *self)
{
    reader_close((reader_t *)self);
}

static bool in_wal_mode(sqlite3 *db)
{
    sqlite3_stmt *st = NULL;
    bool wal = false;
    if (sqlite3_prepare_v2(db, "PRAGMA journal_mode", -1, &st, NULL) == SQLITE_OK &&
        sqlite3_step(st) == SQLITE_ROW)
        wal = strcmp((const char *)sqlite3_column_text(st, 0), "wal") == 0;
    sqlite3_finalize(st);
    return wal;
}

/* A reader of port (TMS_STORE_TASKS or TMS_STORE_USERS) on loop, its base (the port's
 * reader type) filled in, or NULL. */
static reader_t *open_reader(tms_store_t *st, uv_loop_t *loop, tms_store_port_t port)
{
    tms_sqlite_t *s = (tms_sqlite_t *)st;
    reader_t *r;
    sqlite3 *db = NULL;
    sqlite3_stmt *begin = NULL, *commit = NULL;
    char *errmsg = NULL;
    int rc;
    tms__sqlite_configure();
    rc = sqlite3_open_v2(s->path, &db, SQLITE_OPEN_READONLY | SQLITE_OPEN_NOMUTEX, NULL);
    if (rc == SQLITE_OK)
        rc = sqlite3_exec(db,
                          "PRAGMA mmap_size=0;"
                          "PRAGMA query_only=1;",
                          NULL, NULL, &errmsg);
    if (rc == SQLITE_OK && sqlite3_db_readonly(db, "main") != 1)
        rc = SQLITE_MISUSE;
    if (rc == SQLITE_OK && !in_wal_mode(db)) {
        /* An in-memory database (":memory:" opens a new, empty one per connection) or
         * a file system without WAL: nothing a second connection may read beside the
         * writer. Every op goes to the owner thread, as before. */
        tms_log_info("sqlite_reader_off", "path=%s reason=not_wal", s->path);
        sqlite3_close(db);
        return NULL;
    }
    if (rc == SQLITE_OK)
        rc = sqlite3_prepare_v3(db, "BEGIN", -1, SQLITE_PREPARE_PERSISTENT, &begin, NULL);
    if (rc == SQLITE_OK)
        rc = sqlite3_prepare_v3(db, "COMMIT", -1, SQLITE_PREPARE_PERSISTENT, &commit, NULL);
    if (rc != SQLITE_OK) { /* every op then goes to the owner thread, as before */
        tms_log_warn("sqlite_reader", "path=%s rc=%d msg=%s", s->path, rc,
                     errmsg ? errmsg : (db ? sqlite3_errmsg(db) : sqlite3_errstr(rc)));
        sqlite3_free(errmsg);
        sqlite3_finalize(begin);
        sqlite3_finalize(commit);
        sqlite3_close(db);
        return NULL;
    }
    sqlite3_extended_result_codes(db, 1);
    sqlite3_busy_timeout(db, 0); /* never wait on the loop */
    r = tms_new(reader_t);
    r->db = db;
    if (port == TMS_STORE_USERS) {
        r->port = &tms__sqlite_users_port;
        r->base.users.read = user_read;
        r->base.users.close = user_reader_close;
    } else {
        r->port = &tms__sqlite_tasks_port;
        r->base.tasks.read = task_read;
        r->base.tasks.close = task_reader_close;
    }
    r->state = r->port->start(db);
    r->begin = begin;
    r->commit = commit;
    r->writes = s->writes;
    atomic_fetch_add(&r->writes->refs, 1);
    uv_prepare_init(loop, &r->prepare);
    r->prepare.data = r;
    memcpy(r->duration, st->port[port].duration, sizeof(r->duration));
    memcpy(r->errors, st->port[port].errors, sizeof(r->errors));
    return r;
}

tms_task_reader_t *tms__sqlite_reader_open(tms_store_t *st, uv_loop_t *loop)
{
    reader_t *r = open_reader(st, loop, TMS_STORE_TASKS);
    return r ? &r->base.tasks : NULL;
}

tms_user_reader_t *tms__sqlite_user_reader_open(tms_store_t *st, uv_loop_t *loop)
{
    reader_t *r = open_reader(st, loop, TMS_STORE_USERS);
    return r ? &r->base.users : NULL;
}
