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
#include "core/metrics.h"
#include "io/store/sqlite/internal.h"

/* How long a write waits for another connection (another process, `tms migrate`)
 * to release the database before the op fails UNAVAILABLE. */
#define BUSY_TIMEOUT_MS 5000

static const tms_sqlite_port_t *const ports[TMS_SQLITE_NPORTS] = {
    [TMS_SQLITE_PORT_USERS] = &tms__sqlite_users_port,
    [TMS_SQLITE_PORT_TASKS] = &tms__sqlite_tasks_port,
    [TMS_SQLITE_PORT_OUTBOX] = &tms__sqlite_outbox_port,
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

int tms__sqlite_post(tms_sqlite_t *db, int port, tms_msg_t **msg)
{
    tms_msg_t *m = *msg;
    int op = m->op, rc;
    if (op < 0 || op >= (1 << TMS_SQLITE_PORT_SHIFT))
        return -TMS_EINVAL;
    /* A caller may reuse an op that came back as a reply. */
    m->kind = TMS_MSG_REQUEST;
    m->op = op | (port << TMS_SQLITE_PORT_SHIFT);
    rc = tms_mailbox_post(db->mb, msg);
    if (rc != 0)
        m->op = op;
    return rc;
}

static void dispatch(tms_sqlite_t *s, sqlite3 *db, tms_msg_t *msg)
{
    int port = (int)((unsigned)msg->op >> TMS_SQLITE_PORT_SHIFT);
    if (msg->kind == TMS_MSG_STOP) {
        /* Nobody sends one today; honour it the way close does. */
        tms_mailbox_close(s->mb);
        tms_mailbox_reply(msg);
        return;
    }
    msg->op &= (1 << TMS_SQLITE_PORT_SHIFT) - 1;
    if (port <= 0 || port >= TMS_SQLITE_NPORTS || !ports[port]) {
        tms_log_error("sqlite_bad_message", "port=%d op=%d", port, msg->op);
    } else {
        ports[port]->run(s->port_state[port], db, msg);
    }
    tms_mailbox_reply(msg);
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
        for (i = 1; i < TMS_SQLITE_NPORTS; i++)
            s->port_state[i] = ports[i]->start(db);
    }
    report_start(s, rc);
    if (rc != 0)
        return NULL;
    /* take returns NULL only once the mailbox is closed and drained, so every
     * accepted op is answered before the database closes. */
    while ((msg = tms_mailbox_take(s->mb, -1)) != NULL)
        dispatch(s, db, msg);
    for (i = 1; i < TMS_SQLITE_NPORTS; i++)
        ports[i]->stop(s->port_state[i]);
    rc = sqlite3_close(db);
    if (rc != SQLITE_OK) /* a statement left unfinalized: a bug in a port */
        tms_log_error("sqlite_close", "rc=%d", rc);
    return NULL;
}

static void destroy(tms_sqlite_t *s)
{
    tms_mailbox_free(&s->mb);
    pthread_cond_destroy(&s->cond);
    pthread_mutex_destroy(&s->lock);
    free(s->path);
    free(s);
}

tms_sqlite_t *tms_sqlite_open(const char *path, size_t queue_capacity, char *err, size_t err_len)
{
    tms_sqlite_t *s = tms_new(tms_sqlite_t);
    int rc;

    s->user_store.name = "sqlite";
    s->user_store.submit = tms__sqlite_users_submit;
    s->task_store.name = "sqlite";
    s->task_store.submit = tms__sqlite_tasks_submit;
    s->outbox.name = "sqlite";
    s->outbox.submit = tms__sqlite_outbox_submit;
    s->path = tms_strdup(path);
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
    return s;
fail:
    destroy(s);
    return NULL;
}

tms_user_store_t *tms_sqlite_user_store(tms_sqlite_t *db)
{
    return &db->user_store;
}

tms_task_store_t *tms_sqlite_task_store(tms_sqlite_t *db)
{
    return &db->task_store;
}

tms_outbox_t *tms_sqlite_outbox(tms_sqlite_t *db)
{
    return &db->outbox;
}

void tms_sqlite_close(tms_sqlite_t **pdb)
{
    tms_sqlite_t *s = *pdb;
    if (!s)
        return;
    *pdb = NULL;
    tms_mailbox_close(s->mb);
    pthread_join(s->thread, NULL);
    destroy(s);
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

void tms__sqlite_port_metrics(const char *const *names, int nops, tms_histogram_t **duration,
                              tms_counter_t **errors)
{
    char labels[64];
    for (int i = 1; i < nops; i++) {
        snprintf(labels, sizeof(labels), "store=\"sqlite\",op=\"%s\"", names[i]);
        duration[i] = tms_metrics_histogram("tms_store_duration_seconds",
                                            "Time to run one store operation.", labels);
        errors[i] = tms_metrics_counter("tms_store_errors_total",
                                        "Store operations that failed (UNAVAILABLE or "
                                        "INTERNAL; not found and conflicts excluded).",
                                        labels);
    }
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
