#define _GNU_SOURCE /* pthread_setname_np */
/* The generic SQLite owner thread: opens the database, serves the ports' messages
 * one at a time from its mailbox, and closes the database when the mailbox is
 * closed and drained. Ports (users.c, ...) know the SQL; this file knows the
 * thread and the mailbox. */
#include "io/store/sqlite/sqlite.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/alloc.h"
#include "core/log.h"
#include "io/store/sqlite/internal.h"

/* How long a write waits for another connection (another process, `tms migrate`)
 * to release the database before the op fails UNAVAILABLE. */
#define BUSY_TIMEOUT_MS 5000

static const tms_sqlite_port_t *const ports[TMS_STORE_NPORTS] = {
    [TMS_STORE_USERS] = &tms__sqlite_users_port,
    [TMS_STORE_TASKS] = &tms__sqlite_tasks_port,
    [TMS_STORE_OUTBOX] = &tms__sqlite_outbox_port,
};

static int exec_pragma(sqlite3 *db, const char *sql, char *err, size_t err_len)
{
    int rc = sqlite3_exec(db, sql, NULL, NULL, NULL);
    if (rc != SQLITE_OK) {
        snprintf(err, err_len, "sqlite: %s: %s", sql, sqlite3_errmsg(db));
        return -TMS_EIO;
    }
    return 0;
}

static int set_wal(sqlite3 *db, char *err, size_t err_len)
{
    sqlite3_stmt *st = NULL;
    int rc = sqlite3_prepare_v2(db, "PRAGMA journal_mode=WAL", -1, &st, NULL);
    if (rc == SQLITE_OK)
        rc = sqlite3_step(st);
    if (rc != SQLITE_ROW) {
        snprintf(err, err_len, "sqlite: cannot set WAL mode: %s", sqlite3_errmsg(db));
        sqlite3_finalize(st);
        return -TMS_EIO;
    }
    /* Some file systems cannot do WAL; SQLite then keeps the rollback journal,
     * which is still durable with synchronous=FULL, only slower. */
    if (strcmp((const char *)sqlite3_column_text(st, 0), "wal") != 0)
        tms_log_warn("sqlite_no_wal", "journal_mode=%s", sqlite3_column_text(st, 0));
    sqlite3_finalize(st);
    return 0;
}

int tms__sqlite_open_db(const char *path, sqlite3 **out, char *err, size_t err_len)
{
    sqlite3 *db = NULL;
    /* NOMUTEX: one thread owns the handle, so SQLite's own locking is wasted. */
    int flags = SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX;
    int rc = sqlite3_open_v2(path, &db, flags, NULL);
    if (rc != SQLITE_OK) {
        snprintf(err, err_len, "sqlite: cannot open %s: %s", path,
                 db ? sqlite3_errmsg(db) : sqlite3_errstr(rc));
        goto fail;
    }
    sqlite3_extended_result_codes(db, 1);
    sqlite3_busy_timeout(db, BUSY_TIMEOUT_MS);
    /* synchronous=FULL: an acknowledged write survives power loss, not only a
     * process crash (NORMAL in WAL mode may lose the last commits). */
    if (set_wal(db, err, err_len) != 0 ||
        exec_pragma(db, "PRAGMA synchronous=FULL", err, err_len) != 0 ||
        exec_pragma(db, "PRAGMA foreign_keys=ON", err, err_len) != 0 ||
        tms__sqlite_apply_migrations(db, err, err_len) != 0)
        goto fail;
    *out = db;
    return 0;
fail:
    sqlite3_close(db);
    *out = NULL;
    return -TMS_EIO;
}

sqlite3_stmt *tms__sqlite_stmt(sqlite3 *db, sqlite3_stmt **slot, const char *sql)
{
    int rc;
    if (*slot)
        return *slot;
    rc = sqlite3_prepare_v3(db, sql, -1, SQLITE_PREPARE_PERSISTENT, slot, NULL);
    if (rc != SQLITE_OK) {
        char msg[256];
        const char *m = sqlite3_errmsg(db);
        tms_log_error("sqlite_prepare", "rc=%d msg=%s", rc,
                      tms_log_quote(msg, sizeof(msg), m, strlen(m)));
        *slot = NULL;
    }
    return *slot;
}

void tms__sqlite_done(sqlite3_stmt *st)
{
    if (!st)
        return;
    sqlite3_reset(st);
    sqlite3_clear_bindings(st);
}

void tms__sqlite_fail(tms_error_t *err, sqlite3 *db, int rc, const char *op)
{
    char msg[256];
    const char *m = sqlite3_errmsg(db);
    tms_log_quote(msg, sizeof(msg), m, strlen(m));
    switch (rc & 0xff) {
    case SQLITE_BUSY:
    case SQLITE_LOCKED:
    case SQLITE_IOERR:
    case SQLITE_FULL:
    case SQLITE_CANTOPEN:
    case SQLITE_READONLY:
    case SQLITE_PROTOCOL:
        tms_log_warn("sqlite_unavailable", "op=%s rc=%d msg=%s", op, rc, msg);
        tms_error_set(err, TMS_UNAVAILABLE, "store unavailable");
        break;
    default:
        tms_log_error("sqlite_error", "op=%s rc=%d msg=%s", op, rc, msg);
        tms_error_set(err, TMS_INTERNAL, "internal error");
        break;
    }
}

/* The backend's submit (any thread): tag msg with its port and post it to the db
 * thread. */
static int sqlite_submit(tms_store_t *st, tms_store_port_t port, tms_msg_t **msg)
{
    tms_sqlite_t *db = (tms_sqlite_t *)st;
    tms_msg_t *m = *msg;
    int op = m->op, rc;
    m->op = op | ((int)(port + 1) << TMS_SQLITE_PORT_SHIFT);
    rc = tms_mailbox_post(db->mb, msg);
    if (rc != 0)
        m->op = op;
    return rc;
}

/* Ops that never write: the rest are counted in s->writes. */
static bool read_only(tms_store_port_t port, int op)
{
    switch (port) {
    case TMS_STORE_TASKS:
        return op == TMS_TASK_GET || op == TMS_TASK_LIST || op == TMS_TASK_PING;
    case TMS_STORE_USERS:
        return op == TMS_USER_GET_BY_EMAIL || op == TMS_USER_GET_BY_ID || op == TMS_USER_PING;
    case TMS_STORE_OUTBOX:
        return op == TMS_OUTBOX_FETCH || op == TMS_OUTBOX_PENDING || op == TMS_INBOX_SEEN;
    default:
        return false;
    }
}

void tms__sqlite_writes_unref(tms_sqlite_writes_t *w)
{
    if (w && atomic_fetch_sub(&w->refs, 1) == 1)
        free(w);
}

static void dispatch(tms_sqlite_t *s, sqlite3 *db, tms_msg_t *msg)
{
    int tag = (int)((unsigned)msg->op >> TMS_SQLITE_PORT_SHIFT);
    tms_store_port_t port = (tms_store_port_t)(tag - 1);
    uint64_t t0 = tms_store_begin(&s->st);
    msg->op &= (1 << TMS_SQLITE_PORT_SHIFT) - 1;
    if (tag <= 0 || tag > TMS_STORE_NPORTS) { /* only submit posts here */
        tms_log_error("sqlite_bad_message", "port=%d op=%d", tag, msg->op);
        abort();
    }
    ports[port]->run(s->port_state[port], db, msg);
    if (!read_only(port, msg->op)) /* before the reply: whoever sees it reads it */
        atomic_fetch_add(&s->writes->n, 1);
    tms_store_reply(&s->st, port, msg, t0);
}

static void report_start(tms_sqlite_t *s, int rc)
{
    pthread_mutex_lock(&s->lock);
    s->start_rc = rc;
    s->started = 1;
    pthread_cond_signal(&s->cond);
    pthread_mutex_unlock(&s->lock);
}

static void *db_main(void *arg)
{
    tms_sqlite_t *s = arg;
    sqlite3 *db = NULL;
    tms_msg_t *msg;
    int i, rc;

    rc = tms__sqlite_open_db(s->path, &db, s->start_err, sizeof(s->start_err));
    if (rc == 0) {
        for (i = 0; i < TMS_STORE_NPORTS; i++)
            s->port_state[i] = ports[i]->start(db);
    }
    report_start(s, rc);
    if (rc != 0)
        return NULL;
    /* take returns NULL only once the mailbox is closed and drained, so every
     * accepted op is answered before the database closes. */
    while ((msg = tms_mailbox_take(s->mb, -1)) != NULL)
        dispatch(s, db, msg);
    for (i = 0; i < TMS_STORE_NPORTS; i++)
        ports[i]->stop(s->port_state[i]);
    rc = sqlite3_close(db);
    if (rc != SQLITE_OK) /* a statement left unfinalized: a bug in a port */
        tms_log_error("sqlite_close", "rc=%d", rc);
    return NULL;
}

static void destroy(tms_sqlite_t *s)
{
    tms_mailbox_free(&s->mb);
    tms__sqlite_writes_unref(s->writes);
    pthread_cond_destroy(&s->cond);
    pthread_mutex_destroy(&s->lock);
    free(s->path);
    free(s);
}

/* Every port handed out is closed and drained: stop the thread (it answers what is
 * left, which is nothing), close the database and free. */
static void sqlite_release(tms_store_t *st)
{
    tms_sqlite_t *s = (tms_sqlite_t *)st;
    tms_mailbox_close(s->mb);
    pthread_join(s->thread, NULL);
    tms_store_released(st);
    destroy(s);
}

static const tms_store_backend_t backend = {
    .name = "sqlite",
    .submit = sqlite_submit,
    .release = sqlite_release,
    .task_reader_open = tms__sqlite_reader_open,
};

tms_sqlite_t *tms_sqlite_open(uv_loop_t *loop, const char *path, size_t queue_capacity, char *err,
                              size_t err_len)
{
    tms_sqlite_t *s = tms_new(tms_sqlite_t);
    int rc;

    s->path = tms_strdup(path);
    s->writes = tms_new(tms_sqlite_writes_t);
    atomic_init(&s->writes->refs, 1);
    s->mb = tms_mailbox_new_threaded("sqlite", queue_capacity);
    pthread_mutex_init(&s->lock, NULL);
    pthread_cond_init(&s->cond, NULL);
    rc = pthread_create(&s->thread, NULL, db_main, s);
    if (rc != 0) {
        snprintf(err, err_len, "sqlite: cannot start thread: %s", strerror(rc));
        goto fail;
    }
    pthread_setname_np(s->thread, "tms-sqlite");
    pthread_mutex_lock(&s->lock);
    while (!s->started)
        pthread_cond_wait(&s->cond, &s->lock);
    pthread_mutex_unlock(&s->lock);
    if (s->start_rc != 0) {
        pthread_join(s->thread, NULL);
        snprintf(err, err_len, "%s", s->start_err);
        goto fail;
    }
    tms_store_init(&s->st, &backend, loop,
                   TMS_STORE_SERVES(TMS_STORE_USERS) | TMS_STORE_SERVES(TMS_STORE_TASKS) |
                       TMS_STORE_SERVES(TMS_STORE_OUTBOX));
    return s;
fail:
    destroy(s);
    return NULL;
}

tms_user_store_t *tms_sqlite_user_store(tms_sqlite_t *db)
{
    return tms_store_users(&db->st);
}

tms_task_store_t *tms_sqlite_task_store(tms_sqlite_t *db)
{
    return tms_store_tasks(&db->st);
}

tms_outbox_t *tms_sqlite_outbox(tms_sqlite_t *db)
{
    return tms_store_outbox(&db->st);
}

int tms_sqlite_migrate(const char *path, char *err, size_t err_len)
{
    sqlite3 *db;
    int rc = tms__sqlite_open_db(path, &db, err, err_len);
    if (rc != 0)
        return rc;
    sqlite3_close(db);
    return 0;
}

char *tms__sqlite_column_dup(sqlite3_stmt *st, int i)
{
    const unsigned char *s = sqlite3_column_text(st, i);
    return tms_strndup(s ? (const char *)s : "", (size_t)sqlite3_column_bytes(st, i));
}

void tms__sqlite_column_str(char *dst, size_t cap, sqlite3_stmt *st, int i)
{
    const unsigned char *s = sqlite3_column_text(st, i);
    snprintf(dst, cap, "%.*s", sqlite3_column_bytes(st, i), s ? (const char *)s : "");
}

int tms__sqlite_exec(sqlite3 *db, const char *sql)
{
    return sqlite3_exec(db, sql, NULL, NULL, NULL);
}
