#define _GNU_SOURCE /* pthread_setname_np */
/* The generic SQLite owner thread: opens the database, serves the ports' messages
 * from its mailbox, and closes the database when the mailbox is closed and drained.
 * It takes every message queued at once and commits their writes together (group
 * commit): one transaction and one fsync for all, a savepoint per write so that one
 * failing write fails alone, and no write answered before the COMMIT. Ports
 * (users.c, ...) know the SQL; this file knows the thread, the mailbox and the
 * transactions. */
#include "io/store/sqlite/sqlite.h"

#include <pthread.h>
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

/* Once per process, before the first connection: SQLite's memory statistics take a
 * global mutex around every malloc and free it makes (two per read statement, 1.5 %
 * of a GET in the profile of issue 19); nothing here reads them. */
static void configure_once(void)
{
    (void)sqlite3_config(SQLITE_CONFIG_MEMSTATUS, 0); /* MISUSE if already initialized */
}

void tms__sqlite_configure(void)
{
    static pthread_once_t once = PTHREAD_ONCE_INIT;
    pthread_once(&once, configure_once);
}

int tms__sqlite_open_db(const char *path, sqlite3 **out, char *err, size_t err_len)
{
    sqlite3 *db = NULL;
    /* NOMUTEX: one thread owns the handle, so SQLite's own locking is wasted. */
    int flags = SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX;
    int rc;
    tms__sqlite_configure();
    rc = sqlite3_open_v2(path, &db, flags, NULL);
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

/* The port a queued message was tagged with by sqlite_submit; the tag is removed. */
static tms_store_port_t untag(tms_msg_t *msg)
{
    int tag = (int)((unsigned)msg->op >> TMS_SQLITE_PORT_SHIFT);
    msg->op &= (1 << TMS_SQLITE_PORT_SHIFT) - 1;
    if (tag <= 0 || tag > TMS_STORE_NPORTS) { /* only submit posts here */
        tms_log_error("sqlite_bad_message", "port=%d op=%d", tag, msg->op);
        abort();
    }
    return (tms_store_port_t)(tag - 1);
}

/* Transaction control, prepared once. */
enum { TX_BEGIN, TX_COMMIT, TX_ROLLBACK, TX_SAVEPOINT, TX_ROLLBACK_TO, TX_RELEASE, TX_COUNT };

static const char *const tx_sql[TX_COUNT] = {
    "BEGIN IMMEDIATE", "COMMIT", "ROLLBACK", "SAVEPOINT op", "ROLLBACK TO op", "RELEASE op",
};

typedef struct group {
    sqlite3_stmt *tx[TX_COUNT];
    tms_msg_t *msg[TMS_SQLITE_GROUP_MAX]; /* the writes of the group */
    tms_store_port_t port[TMS_SQLITE_GROUP_MAX];
    uint64_t began[TMS_SQLITE_GROUP_MAX];
    size_t n;
    tms_counter_t *commits, *writes;
} group_t;

static int tx(group_t *g, sqlite3 *db, int which)
{
    sqlite3_stmt *st = tms__sqlite_stmt(db, &g->tx[which], tx_sql[which]);
    int rc;
    if (!st)
        return SQLITE_ERROR;
    rc = sqlite3_step(st);
    sqlite3_reset(st);
    return rc == SQLITE_DONE ? SQLITE_OK : rc;
}

/* Every write of the group that has no error of its own fails with err. */
static void fail_group(group_t *g, size_t from, const tms_error_t *err)
{
    for (size_t i = from; i < g->n; i++) {
        tms_error_t *e = tms_store_op_err(g->port[i], g->msg[i]);
        if (e->code == TMS_OK)
            *e = *err;
    }
}

/* The group's writes in one transaction, each in a savepoint of its own (a failing
 * write rolls back only itself), one COMMIT (one fsync with synchronous=FULL) for all,
 * and only then the answers: no write is acknowledged before it is durable. */
static void commit_group(tms_sqlite_t *s, group_t *g, sqlite3 *db)
{
    tms_error_t err = {0};
    size_t i;
    int rc = tx(g, db, TX_BEGIN);
    if (rc != SQLITE_OK) {
        tms__sqlite_fail(&err, db, rc, "begin");
        fail_group(g, 0, &err);
        goto reply;
    }
    for (i = 0; i < g->n; i++) {
        tms_msg_t *msg = g->msg[i];
        tms_store_port_t port = g->port[i];
        if ((rc = tx(g, db, TX_SAVEPOINT)) != SQLITE_OK)
            break;
        ports[port]->run(s->port_state[port], db, msg);
        if (tms_store_op_err(port, msg)->code != TMS_OK && !sqlite3_get_autocommit(db) &&
            (rc = tx(g, db, TX_ROLLBACK_TO)) != SQLITE_OK)
            break;
        /* An I/O error or a full disk may have rolled back the whole transaction,
         * and with it the writes before this one. */
        if (sqlite3_get_autocommit(db)) {
            rc = SQLITE_ABORT;
            break;
        }
        if ((rc = tx(g, db, TX_RELEASE)) != SQLITE_OK)
            break;
    }
    if (rc == SQLITE_OK) {
        rc = tx(g, db, TX_COMMIT);
        if (rc == SQLITE_OK) {
            tms_counter_add(g->commits, 1);
            tms_counter_add(g->writes, (uint64_t)g->n);
            goto reply;
        }
    }
    /* The transaction is lost: every write in it fails, those that had succeeded too
     * (nothing of them is durable) and those not run yet; a refusal stays as it was. */
    tms__sqlite_fail(&err, db, rc, rc == SQLITE_ABORT ? "group" : "commit");
    fail_group(g, 0, &err);
    if (!sqlite3_get_autocommit(db))
        tx(g, db, TX_ROLLBACK);
reply:
    /* before the replies: whoever sees one reads it (the loop's readers, reader.c) */
    atomic_fetch_add(&s->writes->n, (unsigned long)g->n);
    for (i = 0; i < g->n; i++)
        tms_store_reply(&s->st, g->port[i], g->msg[i], g->began[i]);
    g->n = 0;
}

/* A batch taken from the queue: reads run and are answered at once, on committed
 * data; the writes then commit together. Concurrent requests have no order among
 * themselves, so answering the reads first keeps every answer consistent. */
static void run_batch(tms_sqlite_t *s, group_t *g, sqlite3 *db, tms_msg_t **msgs, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        tms_msg_t *msg = msgs[i];
        tms_store_port_t port = untag(msg);
        uint64_t t0 = tms_store_begin(&s->st);
        if (ports[port]->writes(msg->op)) {
            g->msg[g->n] = msg;
            g->port[g->n] = port;
            g->began[g->n++] = t0;
            continue;
        }
        ports[port]->run(s->port_state[port], db, msg);
        if (!read_only(port, msg->op)) /* before the reply: whoever sees it reads it */
            atomic_fetch_add(&s->writes->n, 1);
        tms_store_reply(&s->st, port, msg, t0);
    }
    if (g->n)
        commit_group(s, g, db);
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
    tms_msg_t *msgs[TMS_SQLITE_GROUP_MAX];
    group_t *g = tms_new(group_t);
    size_t n;
    int i, rc;

    rc = tms__sqlite_open_db(s->path, &db, s->start_err, sizeof(s->start_err));
    if (rc == 0) {
        for (i = 0; i < TMS_STORE_NPORTS; i++)
            s->port_state[i] = ports[i]->start(db);
    }
    report_start(s, rc);
    if (rc != 0) {
        free(g);
        return NULL;
    }
    g->commits = s->commits;
    g->writes = s->group_writes;
    /* Everything queued is taken at once: while one group commits (waits for its
     * fsync), the next one queues. take_many returns 0 only once the mailbox is closed
     * and drained, so every accepted op is answered before the database closes. */
    while ((n = tms_mailbox_take_many(s->mb, -1, msgs, TMS_SQLITE_GROUP_MAX)) > 0)
        run_batch(s, g, db, msgs, n);
    for (i = 0; i < TX_COUNT; i++)
        sqlite3_finalize(g->tx[i]);
    free(g);
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
    .user_reader_open = tms__sqlite_user_reader_open,
};

tms_sqlite_t *tms_sqlite_open(uv_loop_t *loop, const char *path, size_t queue_capacity, char *err,
                              size_t err_len)
{
    tms_sqlite_t *s = tms_new(tms_sqlite_t);
    int rc;

    s->path = tms_strdup(path);
    s->commits = tms_metrics_counter("tms_sqlite_commits_total",
                                     "Group commits of the SQLite writer (one fsync each).", "");
    s->group_writes =
        tms_metrics_counter("tms_sqlite_group_writes_total",
                            "Writes committed by the SQLite writer's group commits.", "");

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
    /* No snprintf: three of these per task row were 2 % of a GET (issue 19). */
    const unsigned char *s = sqlite3_column_text(st, i);
    size_t n = s ? (size_t)sqlite3_column_bytes(st, i) : 0;
    if (cap == 0)
        return;
    if (n >= cap)
        n = cap - 1;
    if (n)
        memcpy(dst, s, n);
    dst[n] = '\0';
}

int tms__sqlite_exec(sqlite3 *db, const char *sql)
{
    return sqlite3_exec(db, sql, NULL, NULL, NULL);
}
