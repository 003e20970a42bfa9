/* Tests for src/io/store/sqlite/ of what only this adapter has: the schema and its
 * migrations, a bounded queue in front of one owner thread, the file's constraints
 * and ids across a restart, on a temporary database file. The user store, task store
 * and outbox ports themselves are tested on every adapter by tests/unit/ports/. */
#include <sqlite3.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <uv.h>

#include "core/alloc.h"
#include "core/metrics.h"
#include "core/task_store.h"
#include "io/store/sqlite/sqlite.h"
#include "io/store/sqlite/internal.h"
#include "test.h"

static uv_loop_t loop;
static tms_mailbox_t *replies;
static char dir[64];
static char path[128];
static int answered;

typedef struct waiter {
    int done;
    int keep; /* leave the op to the test instead of freeing it */
    tms_user_op_t result;
} waiter_t;

static void on_request(void *owner, tms_msg_t *msg)
{
    (void)owner;
    free(msg);
}

static void free_op(tms_msg_t *msg)
{
    free(msg);
}

static void on_reply(tms_msg_t *msg)
{
    tms_user_op_t *op = (tms_user_op_t *)msg;
    waiter_t *w = msg->ctx;
    answered++;
    if (w) {
        w->result = *op;
        w->done = 1;
        if (w->keep)
            return;
    }
    free(op);
}

static tms_user_op_t *new_op(int kind, const char *key)
{
    tms_user_op_t *op = tms_new(tms_user_op_t);
    op->msg.op = kind;
    op->msg.reply_to = replies;
    op->msg.cont = on_reply;
    op->msg.free_fn = free_op;
    if (key)
        snprintf(op->key, sizeof(op->key), "%s", key);
    op->err.code = TMS_UNKNOWN; /* the store must overwrite it */
    return op;
}

static void fill_user(tms_user_t *u, const char *id, const char *email)
{
    snprintf(u->id, sizeof(u->id), "%s", id);
    snprintf(u->email, sizeof(u->email), "%s", email);
    snprintf(u->role, sizeof(u->role), "user");
    snprintf(u->password_hash, sizeof(u->password_hash), "$argon2id$v=19$m=65536,t=2,p=1$x$y");
    u->token_version = 0;
    u->created_at_ms = 1764338400000;
}

/* Submits op and runs the loop until its reply arrives; returns the reply. */
static tms_user_op_t call(tms_user_store_t *s, tms_user_op_t *op)
{
    waiter_t w = {0};
    int rc;
    op->msg.ctx = &w;
    rc = tms_user_store_submit(s, &op);
    CHECK_EQ_INT(rc, 0);
    CHECK(op == NULL);
    if (rc != 0) {
        free(op);
        w.result.err.code = TMS_UNKNOWN;
        return w.result;
    }
    while (!w.done)
        uv_run(&loop, UV_RUN_ONCE);
    return w.result;
}

static tms_user_op_t call_key(tms_user_store_t *s, int kind, const char *key)
{
    return call(s, new_op(kind, key));
}

static tms_sqlite_t *open_db(size_t capacity)
{
    char err[256] = "";
    tms_sqlite_t *db = tms_sqlite_open(&loop, path, capacity, err, sizeof(err));
    CHECK(db != NULL);
    if (!db)
        fprintf(stderr, "open: %s\n", err);
    return db;
}

static void on_closed(void *arg)
{
    (*(int *)arg)++;
}

/* Close every port of db through its vtable; db goes with the last. */
static void close_db(tms_sqlite_t **db)
{
    int closed = 0;
    tms_user_store_t *users = tms_sqlite_user_store(*db);
    tms_task_store_t *tasks = tms_sqlite_task_store(*db);
    tms_outbox_t *outbox = tms_sqlite_outbox(*db);
    *db = NULL;
    users->close(users, on_closed, &closed);
    tasks->close(tasks, on_closed, &closed);
    outbox->close(outbox, on_closed, &closed);
    while (closed < 3)
        uv_run(&loop, UV_RUN_ONCE);
}

/* Runs sql on a connection of the test's own (another process, as far as the store
 * can tell) and returns the first column of the first row as an integer. */
static long long raw_query(const char *sql)
{
    sqlite3 *db = NULL;
    sqlite3_stmt *st = NULL;
    long long v = -1;
    CHECK_EQ_INT(sqlite3_open(path, &db), SQLITE_OK);
    if (sqlite3_prepare_v2(db, sql, -1, &st, NULL) == SQLITE_OK) {
        int rc = sqlite3_step(st);
        if (rc == SQLITE_ROW)
            v = sqlite3_column_int64(st, 0);
        else if (rc == SQLITE_DONE)
            v = 0;
    }
    sqlite3_finalize(st);
    sqlite3_close(db);
    return v;
}

static bool metric_line(const char *what)
{
    size_t len;
    char *text = tms_metrics_render(&len);
    bool found = strstr(text, what) != NULL;
    free(text);
    return found;
}

static void remove_db(void)
{
    char p[160];
    const char *suffix[] = {"", "-wal", "-shm", "-journal"};
    for (size_t i = 0; i < sizeof(suffix) / sizeof(suffix[0]); i++) {
        snprintf(p, sizeof(p), "%s%s", path, suffix[i]);
        unlink(p);
    }
}

/* The CHECK constraints of the schema hold: a bug, reported without internals. */
static void test_constraints(void)
{
    tms_sqlite_t *db = open_db(8);
    tms_user_op_t *op, r;
    if (!db)
        return;
    op = new_op(TMS_USER_CREATE, NULL);
    fill_user(&op->user, "aaaaaaaaaaaaaaaaaaaaaaaa", "alice@example.com");
    CHECK_EQ_INT(call(tms_sqlite_user_store(db), op).err.code, TMS_OK);
    op = new_op(TMS_USER_SET_ROLE, "alice@example.com");
    snprintf(op->user.role, sizeof(op->user.role), "root");
    r = call(tms_sqlite_user_store(db), op);
    CHECK_EQ_INT(r.err.code, TMS_INTERNAL);
    CHECK_EQ_STR(r.err.message, "internal error");
    CHECK(metric_line("tms_store_errors_total{store=\"sqlite\",op=\"set_role\"} 1"));
    close_db(&db);
    remove_db();
}

static void on_task(tms_msg_t *msg)
{
    *(tms_task_op_t **)msg->ctx = (tms_task_op_t *)msg;
}

/* A task op through db's task store; the reply (caller frees). */
static tms_task_op_t *run_task(tms_sqlite_t *db, int kind, int64_t id)
{
    tms_task_op_t *op = tms_task_op_new(kind, NULL), *got = NULL;
    op->msg.reply_to = replies;
    op->msg.cont = on_task;
    op->msg.ctx = &got;
    op->id = id;
    if (kind == TMS_TASK_CREATE) {
        op->task.title = tms_arena_strdup(op->arena, "t");
        op->task.description = tms_arena_strdup(op->arena, "");
        snprintf(op->task.status, sizeof(op->task.status), "open");
        snprintf(op->task.created_by, sizeof(op->task.created_by), "aaaaaaaaaaaaaaaaaaaaaaaa");
        op->task.created_at_ms = op->task.updated_at_ms = 1764338400000;
    }
    CHECK_EQ_INT(tms_task_store_submit(tms_sqlite_task_store(db), &op), 0);
    while (!got)
        uv_run(&loop, UV_RUN_ONCE);
    return got;
}

/* The id of the newest task, once deleted, never comes back, not even after a restart
 * (AUTOINCREMENT). */
static void test_ids_not_reused(void)
{
    tms_sqlite_t *db = open_db(8);
    tms_task_op_t *op;
    int64_t id;
    if (!db)
        return;
    op = run_task(db, TMS_TASK_CREATE, 0);
    id = op->task.id;
    tms_task_op_free(&op);
    op = run_task(db, TMS_TASK_DELETE, id);
    CHECK_EQ_INT(op->err.code, TMS_OK);
    tms_task_op_free(&op);
    close_db(&db);
    db = open_db(8);
    if (!db)
        return;
    op = run_task(db, TMS_TASK_CREATE, 0);
    CHECK(op->task.id > id);
    tms_task_op_free(&op);
    close_db(&db);
    remove_db();
}

/* A GET or LIST through the reader (on the caller's thread); the op (caller frees). */
static tms_task_op_t *read_now(tms_task_reader_t *r, int kind, int64_t id)
{
    tms_task_op_t *op = tms_task_op_new(kind, NULL);
    op->id = id;
    op->after_id = id; /* LIST: the tasks after id */
    op->limit = 10;
    CHECK_EQ_INT(r->read(r, op), 0);
    return op;
}

/* An in-memory database has no reader: a second connection to ":memory:" is a new,
 * empty database ("no such table: tasks", a 500 the HTTP fuzzer found), so reads stay
 * on the owner thread. */
static void test_no_reader_on_memory(void)
{
    char err[256] = "";
    tms_sqlite_t *db = tms_sqlite_open(&loop, ":memory:", 8, err, sizeof(err));
    tms_task_store_t *tasks;
    CHECK(db != NULL);
    if (!db)
        return;
    tasks = tms_sqlite_task_store(db);
    CHECK(tasks->reader_open(tasks, &loop) == NULL);
    close_db(&db);
}

/* The reader answers on the calling thread and sees every write whose reply came back
 * before (issue 19: read-your-writes with reads off the owner thread). */
static void test_reader_sees_acknowledged_writes(void)
{
    tms_sqlite_t *db = open_db(8);
    tms_task_store_t *tasks;
    tms_task_reader_t *r;
    tms_task_op_t *op;
    int64_t id;
    if (!db)
        return;
    tasks = tms_sqlite_task_store(db);
    r = tasks->reader_open(tasks, &loop);
    CHECK(r != NULL);
    if (!r) {
        close_db(&db);
        return;
    }
    op = read_now(r, TMS_TASK_LIST, 0);
    CHECK_EQ_INT(op->err.code, TMS_OK);
    CHECK_EQ_INT((int)op->ntasks, 0);
    tms_task_op_free(&op);
    for (int i = 0; i < 20; i++) {
        op = run_task(db, TMS_TASK_CREATE, 0);
        id = op->task.id;
        tms_task_op_free(&op);
        op = read_now(r, TMS_TASK_GET, id);
        CHECK_EQ_INT(op->err.code, TMS_OK);
        CHECK(op->task.id == id && op->task.version == 1);
        CHECK_EQ_STR(op->task.title, "t");
        tms_task_op_free(&op);
        op = read_now(r, TMS_TASK_LIST, 0);
        CHECK_EQ_INT((int)op->ntasks, i < 10 ? i + 1 : 10);
        CHECK(op->has_more == (i >= 10));
        tms_task_op_free(&op);
        op = run_task(db, TMS_TASK_DELETE, id);
        CHECK_EQ_INT(op->err.code, TMS_OK);
        tms_task_op_free(&op);
        op = read_now(r, TMS_TASK_GET, id);
        CHECK_EQ_INT(op->err.code, TMS_NOT_FOUND);
        CHECK_EQ_INT(op->reason, TMS_TASK_NO_SUCH_TASK);
        tms_task_op_free(&op);
        op = run_task(db, TMS_TASK_CREATE, 0); /* kept: the list grows */
        tms_task_op_free(&op);
    }
    /* A read transaction open (the loop has not turned since the last read) when a
     * write is answered: the next read sees the write all the same. */
    {
        tms_task_op_t *w = tms_task_op_new(TMS_TASK_CREATE, NULL), *got = NULL;
        op = read_now(r, TMS_TASK_LIST, id + 1); /* after the newest task */
        CHECK_EQ_INT((int)op->ntasks, 0);
        tms_task_op_free(&op);
        w->msg.reply_to = replies;
        w->msg.cont = on_task;
        w->msg.ctx = &got;
        w->task.title = tms_arena_strdup(w->arena, "late");
        w->task.description = tms_arena_strdup(w->arena, "");
        snprintf(w->task.status, sizeof(w->task.status), "open");
        snprintf(w->task.created_by, sizeof(w->task.created_by), "aaaaaaaaaaaaaaaaaaaaaaaa");
        w->task.created_at_ms = w->task.updated_at_ms = 1764338400000;
        CHECK_EQ_INT(tms_task_store_submit(tasks, &w), 0);
        while (tasks->busy(tasks) > 0) /* answered (posted), the loop not run */
            usleep(1000);
        op = read_now(r, TMS_TASK_LIST, id + 1);
        CHECK_EQ_INT((int)op->ntasks, 1);
        if (op->ntasks == 1)
            CHECK_EQ_STR(op->tasks[0].title, "late");
        tms_task_op_free(&op);
        while (!got)
            uv_run(&loop, UV_RUN_ONCE);
        tms_task_op_free(&got);
    }
    /* Writes only go to the owner thread: the reader refuses them. */
    op = tms_task_op_new(TMS_TASK_DELETE, NULL);
    op->id = 1;
    CHECK_EQ_INT(r->read(r, op), -TMS_EINVAL);
    tms_task_op_free(&op);
    close_db(&db);
    /* The reader may outlive the store's ports: it has its own connection. */
    op = read_now(r, TMS_TASK_LIST, 0);
    CHECK_EQ_INT((int)op->ntasks, 10);
    tms_task_op_free(&op);
    r->close(r);
    uv_run(&loop, UV_RUN_NOWAIT); /* the reader's handle closes */
    remove_db();
}

/* Whether this process maps `file` (a line of /proc/self/maps ending in its path). */
static bool file_mapped(const char *file)
{
    char line[4096];
    size_t n = strlen(file);
    bool found = false;
    FILE *f = fopen("/proc/self/maps", "r");
    CHECK(f != NULL);
    while (f && fgets(line, sizeof(line), f)) {
        size_t len = strcspn(line, "\n");
        if (len >= n && memcmp(line + len - n, file, n) == 0)
            found = true;
    }
    if (f)
        fclose(f);
    return found;
}

/* The reader reads the database file with pread, never through a mapping: with
 * mmap_size, SQLite unmaps the whole file at the first read after any write and maps it
 * again, and each of those takes the process's memory-map lock for writing. Behind a
 * password hash's munmap of its 64 MiB (on the hash threads, same process) the loop
 * waited 15-20 ms there: GET p99 12-15 ms during the bench's login storm (2-4 ms
 * without the mapping). */
static void test_reader_does_not_map_the_file(void)
{
    tms_sqlite_t *db = open_db(8);
    tms_task_store_t *tasks;
    tms_task_reader_t *r;
    tms_task_op_t *op;
    if (!db)
        return;
    tasks = tms_sqlite_task_store(db);
    r = tasks->reader_open(tasks, &loop);
    CHECK(r != NULL);
    for (int i = 0; r && i < 5; i++) {
        int64_t id;
        sqlite3 *side = NULL;
        op = run_task(db, TMS_TASK_CREATE, 0);
        id = op->task.id;
        tms_task_op_free(&op);
        /* Pages in the database file, not only in the WAL: a file of 0 bytes (nothing
         * checkpointed yet) is never mapped. */
        CHECK_EQ_INT(sqlite3_open(path, &side), SQLITE_OK);
        CHECK_EQ_INT(sqlite3_exec(side, "PRAGMA wal_checkpoint", NULL, NULL, NULL), SQLITE_OK);
        sqlite3_close(side);
        op = read_now(r, TMS_TASK_GET, id);
        CHECK_EQ_INT(op->err.code, TMS_OK);
        tms_task_op_free(&op);
        op = read_now(r, TMS_TASK_LIST, 0);
        CHECK_EQ_INT((int)op->ntasks, i + 1);
        tms_task_op_free(&op);
        CHECK(!file_mapped(path));
    }
    if (r) {
        r->close(r);
        uv_run(&loop, UV_RUN_NOWAIT);
    }
    close_db(&db);
    remove_db();
}

static void test_migrations_idempotent(void)
{
    char err[256] = "";
    tms_sqlite_t *db = open_db(8);
    tms_user_op_t *op, r;
    if (!db)
        return;
    op = new_op(TMS_USER_CREATE, NULL);
    fill_user(&op->user, "aaaaaaaaaaaaaaaaaaaaaaaa", "alice@example.com");
    r = call(tms_sqlite_user_store(db), op);
    CHECK_EQ_INT(r.err.code, TMS_OK);
    close_db(&db);
    CHECK_EQ_INT(raw_query("SELECT max(version) FROM schema_migrations"),
                 tms__sqlite_schema_version());

    db = open_db(8);
    if (!db)
        return;
    r = call_key(tms_sqlite_user_store(db), TMS_USER_GET_BY_EMAIL, "alice@example.com");
    CHECK_EQ_INT(r.err.code, TMS_OK);
    close_db(&db);
    CHECK_EQ_INT(tms_sqlite_migrate(path, err, sizeof(err)), 0);
    CHECK_EQ_INT(raw_query("SELECT count(*) FROM schema_migrations"), tms__sqlite_schema_version());
    CHECK_EQ_INT(raw_query("SELECT max(version) FROM schema_migrations"),
                 tms__sqlite_schema_version());
    {
        sqlite3 *raw = NULL;
        sqlite3_stmt *st = NULL;
        CHECK_EQ_INT(sqlite3_open(path, &raw), SQLITE_OK);
        CHECK_EQ_INT(sqlite3_prepare_v2(raw, "PRAGMA journal_mode", -1, &st, NULL), SQLITE_OK);
        CHECK_EQ_INT(sqlite3_step(st), SQLITE_ROW);
        CHECK_EQ_STR((const char *)sqlite3_column_text(st, 0), "wal"); /* persistent */
        sqlite3_finalize(st);
        sqlite3_close(raw);
    }
    remove_db();
}

/* A start (migrate) deletes the rows an earlier version marked sent and kept; pending
 * ones stay (the relay now deletes what it sent; nothing else would purge the marks),
 * and the schema version stays, so an earlier binary still opens the file. */
static void test_marked_outbox_rows_purged(void)
{
    char err[256] = "";
    CHECK_EQ_INT(tms_sqlite_migrate(path, err, sizeof(err)), 0);
    raw_query("INSERT INTO outbox (event_id, topic, key, payload, created_at_ms, sent_at_ms)"
              " VALUES ('old-sent', 'notifications', '1', '{}', 1, 2),"
              " ('old-pending', 'notifications', '2', '{}', 1, NULL)");
    /* more than two batches of the purge (10,000) */
    raw_query("WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 25000)"
              " INSERT INTO outbox (event_id, topic, key, payload, created_at_ms, sent_at_ms)"
              " SELECT 'old-' || i, 'notifications', '1', '{}', 1, 2 FROM n");
    CHECK_EQ_INT(raw_query("SELECT count(*) FROM outbox"), 25002);
    CHECK_EQ_INT(tms_sqlite_migrate(path, err, sizeof(err)), 0);
    CHECK_EQ_INT(raw_query("SELECT count(*) FROM outbox"), 1);
    CHECK_EQ_INT(raw_query("SELECT count(*) FROM outbox WHERE event_id = 'old-pending'"), 1);
    CHECK_EQ_INT(raw_query("SELECT max(version) FROM schema_migrations"),
                 tms__sqlite_schema_version());
    remove_db();
}

static void test_future_version_refused(void)
{
    char err[256] = "";
    tms_sqlite_t *db;
    CHECK_EQ_INT(tms_sqlite_migrate(path, err, sizeof(err)), 0);
    raw_query("INSERT INTO schema_migrations (version, applied_at) VALUES (999, 'later')");
    CHECK_EQ_INT(raw_query("SELECT max(version) FROM schema_migrations"), 999);
    db = tms_sqlite_open(&loop, path, 8, err, sizeof(err));
    CHECK(db == NULL);
    CHECK(strstr(err, "newer") != NULL);
    CHECK(strchr(err, '\n') == NULL);
    err[0] = '\0';
    CHECK_EQ_INT(tms_sqlite_migrate(path, err, sizeof(err)), -TMS_EIO);
    CHECK(strstr(err, "999") != NULL);
    remove_db();
}

static void test_open_fails(void)
{
    char err[256] = "";
    tms_sqlite_t *db = tms_sqlite_open(&loop, "/nonexistent-dir/x/tms.db", 8, err, sizeof(err));
    CHECK(db == NULL);
    CHECK(err[0] != '\0');
    CHECK_EQ_INT(tms_sqlite_migrate("/nonexistent-dir/x/tms.db", err, sizeof(err)), -TMS_EIO);
}

/* Capacity 1 and a writer blocked behind another connection's write lock: the db
 * thread holds the first op until the lock goes, so at most one more op can queue
 * and the rest must be refused at once. */
static void test_full_queue(void)
{
    tms_sqlite_t *db = open_db(1);
    tms_user_store_t *s;
    sqlite3 *other = NULL;
    tms_user_op_t *op;
    waiter_t w = {0};
    int accepted = 0, full = 0, rc;
    if (!db)
        return;
    s = tms_sqlite_user_store(db);
    CHECK_EQ_INT(sqlite3_open(path, &other), SQLITE_OK);
    CHECK_EQ_INT(sqlite3_exec(other, "BEGIN IMMEDIATE", NULL, NULL, NULL), SQLITE_OK);

    answered = 0;
    op = new_op(TMS_USER_CREATE, NULL);
    fill_user(&op->user, "aaaaaaaaaaaaaaaaaaaaaaaa", "alice@example.com");
    op->msg.ctx = &w;
    CHECK_EQ_INT(tms_user_store_submit(s, &op), 0);
    accepted++;
    for (int i = 0; i < 50; i++) {
        op = new_op(TMS_USER_PING, NULL);
        rc = tms_user_store_submit(s, &op);
        if (rc == 0) {
            accepted++;
        } else {
            CHECK_EQ_INT(rc, -TMS_EFULL);
            CHECK(op != NULL);
            CHECK_EQ_INT(op->msg.op, TMS_USER_PING); /* left as it was */
            full += rc == -TMS_EFULL;
            free(op);
        }
    }
    CHECK(full >= 1);
    CHECK(accepted <= 2);
    CHECK_EQ_INT(accepted + full, 51);

    CHECK_EQ_INT(sqlite3_exec(other, "COMMIT", NULL, NULL, NULL), SQLITE_OK);
    sqlite3_close(other);
    while (answered < accepted)
        uv_run(&loop, UV_RUN_ONCE);
    CHECK(w.done);
    CHECK_EQ_INT(w.result.err.code, TMS_OK);
    close_db(&db);
    CHECK_EQ_INT(answered, accepted);
    remove_db();
}

/* The value of a metric line that starts with name (-1 when absent). */
static double metric_value(const char *name)
{
    size_t len;
    char *text = tms_metrics_render(&len);
    const char *p = strstr(text, name);
    double v = -1;
    size_t n = strlen(name);
    while (p && !(p == text || p[-1] == '\n'))
        p = strstr(p + n, name);
    if (p && p[n] == ' ')
        v = atof(p + n + 1);
    free(text);
    return v;
}

/* A create with an event (event_id given), titled title. */
static tms_task_op_t *new_create(const char *title, const char *event_id, tms_task_op_t **got)
{
    tms_task_op_t *op = tms_task_op_new(TMS_TASK_CREATE, NULL);
    op->msg.reply_to = replies;
    op->msg.cont = on_task;
    op->msg.ctx = got;
    op->task.title = tms_arena_strdup(op->arena, title);
    op->task.description = tms_arena_strdup(op->arena, "d");
    snprintf(op->task.status, sizeof(op->task.status), "open");
    snprintf(op->task.created_by, sizeof(op->task.created_by), "aaaaaaaaaaaaaaaaaaaaaaaa");
    snprintf(op->task.assigned_to, sizeof(op->task.assigned_to), "bbbbbbbbbbbbbbbbbbbbbbbb");
    op->task.created_at_ms = op->task.updated_at_ms = 1764338400000;
    op->notify.enabled = true;
    snprintf(op->notify.type, sizeof(op->notify.type), "task_created");
    snprintf(op->notify.event_id, sizeof(op->notify.event_id), "%s", event_id);
    return op;
}

/* Group commit: writes queued while the writer waits commit in one transaction, and
 * one that fails half way (its task inserted, then its outbox row refused: a
 * duplicate event_id) rolls back alone, to its savepoint: the others of its group
 * are committed and answered OK, and nothing of it is left. */
static void test_group_commit_savepoints(void)
{
    static const char *const ev[] = {"00000000-0000-4000-8000-000000000000",
                                     "00000000-0000-4000-8000-000000000001",
                                     "00000000-0000-4000-8000-000000000002"};
    tms_sqlite_t *db = open_db(64);
    tms_task_store_t *s;
    sqlite3 *other = NULL;
    tms_task_op_t *op, *got[4] = {0};
    double commits0, commits1;
    int n = 0;
    if (!db)
        return;
    s = tms_sqlite_task_store(db);
    commits0 = metric_value("tms_sqlite_commits_total");
    /* Another connection holds the write lock: the writer takes the first create and
     * waits in BEGIN IMMEDIATE while the next three queue behind it. */
    CHECK_EQ_INT(sqlite3_open(path, &other), SQLITE_OK);
    CHECK_EQ_INT(sqlite3_exec(other, "BEGIN IMMEDIATE", NULL, NULL, NULL), SQLITE_OK);
    op = new_create("first", ev[0], &got[0]);
    CHECK_EQ_INT(tms_task_store_submit(s, &op), 0);
    for (int i = 0; i < 5000 && atomic_load(&db->st.queued) > 0; i++)
        usleep(1000); /* taken from the queue */
    op = new_create("second", ev[1], &got[1]);
    CHECK_EQ_INT(tms_task_store_submit(s, &op), 0);
    op = new_create("broken", ev[1], &got[2]); /* the same event_id: its outbox row fails */
    CHECK_EQ_INT(tms_task_store_submit(s, &op), 0);
    op = new_create("fourth", ev[2], &got[3]);
    CHECK_EQ_INT(tms_task_store_submit(s, &op), 0);
    CHECK_EQ_INT(sqlite3_exec(other, "COMMIT", NULL, NULL, NULL), SQLITE_OK);
    sqlite3_close(other);
    while (n < 4) {
        uv_run(&loop, UV_RUN_ONCE);
        n = (got[0] != NULL) + (got[1] != NULL) + (got[2] != NULL) + (got[3] != NULL);
    }
    CHECK_EQ_INT(got[0]->err.code, TMS_OK);
    CHECK_EQ_INT(got[1]->err.code, TMS_OK);
    CHECK_EQ_INT(got[2]->err.code, TMS_INTERNAL);
    CHECK_EQ_INT(got[3]->err.code, TMS_OK);
    CHECK(got[3]->task.id > got[1]->task.id);
    /* two transactions: the first create alone, then the other three together */
    commits1 = metric_value("tms_sqlite_commits_total");
    CHECK(commits0 >= 0);
    CHECK_EQ_INT((int)(commits1 - commits0), 2);
    for (int i = 0; i < 4; i++)
        tms_task_op_free(&got[i]);
    close_db(&db);
    CHECK_EQ_INT(raw_query("SELECT count(*) FROM tasks WHERE title IN"
                           " ('first', 'second', 'fourth')"),
                 3);
    CHECK_EQ_INT(raw_query("SELECT count(*) FROM tasks WHERE title = 'broken'"), 0);
    CHECK_EQ_INT(raw_query("SELECT count(*) FROM outbox"), 3);
    CHECK_EQ_INT(raw_query("SELECT count(*) FROM outbox o JOIN tasks t ON o.key = t.id"
                           " WHERE t.title = 'second' AND o.event_id LIKE '%0001'"),
                 1);
    remove_db();
}

/* The user store's reader answers a lookup by id on the loop's thread and sees every
 * write answered before it (created, bumped with a read transaction open, deleted);
 * it takes no other op. */
static void test_user_reader_sees_acknowledged_writes(void)
{
    tms_sqlite_t *db = open_db(8);
    tms_user_store_t *users;
    tms_user_reader_t *r;
    tms_user_op_t *op, got;
    const char *id = "aaaaaaaaaaaaaaaaaaaaaab1";
    if (!db)
        return;
    users = tms_sqlite_user_store(db);
    CHECK(users->reader_open != NULL);
    r = users->reader_open ? users->reader_open(users, &loop) : NULL;
    CHECK(r != NULL);
    if (!r) {
        close_db(&db);
        return;
    }
    op = new_op(TMS_USER_GET_BY_ID, id);
    CHECK_EQ_INT(r->read(r, op), 0);
    CHECK_EQ_INT(op->err.code, TMS_NOT_FOUND);
    free(op);
    op = new_op(TMS_USER_CREATE, NULL);
    fill_user(&op->user, id, "reader@example.com");
    CHECK_EQ_INT(call(users, op).err.code, TMS_OK);
    op = new_op(TMS_USER_GET_BY_ID, id); /* the transaction of the read above is open */
    CHECK_EQ_INT(r->read(r, op), 0);
    CHECK_EQ_INT(op->err.code, TMS_OK);
    CHECK_EQ_STR(op->user.email, "reader@example.com");
    CHECK_EQ_INT(op->user.token_version, 0);
    free(op);
    got = call_key(users, TMS_USER_BUMP_VERSION, id);
    CHECK_EQ_INT(got.err.code, TMS_OK);
    op = new_op(TMS_USER_GET_BY_ID, id);
    CHECK_EQ_INT(r->read(r, op), 0);
    CHECK_EQ_INT(op->user.token_version, 1);
    free(op);
    CHECK_EQ_INT(call_key(users, TMS_USER_DELETE, id).err.code, TMS_OK);
    op = new_op(TMS_USER_GET_BY_ID, id);
    CHECK_EQ_INT(r->read(r, op), 0);
    CHECK_EQ_INT(op->err.code, TMS_NOT_FOUND);
    free(op);
    op = new_op(TMS_USER_GET_BY_EMAIL, "reader@example.com"); /* not the reader's */
    CHECK_EQ_INT(r->read(r, op), -TMS_EINVAL);
    CHECK_EQ_INT(op->err.code, TMS_UNKNOWN); /* untouched */
    free(op);
    CHECK(metric_line("tms_store_duration_seconds_count{store=\"sqlite\",op=\"get_by_id\"} 4"));
    r->close(r);
    uv_run(&loop, UV_RUN_NOWAIT); /* the reader's handle */
    close_db(&db);
}

int main(void)
{
    snprintf(dir, sizeof(dir), "/tmp/tms_sqlite_XXXXXX");
    if (!mkdtemp(dir)) {
        perror("mkdtemp");
        return EXIT_FAILURE;
    }
    snprintf(path, sizeof(path), "%s/tms.db", dir);
    uv_loop_init(&loop);
    replies = tms_mailbox_new(&loop, "test", 64, on_request, NULL);

    RUN_TEST(test_constraints);
    RUN_TEST(test_ids_not_reused);
    RUN_TEST(test_reader_sees_acknowledged_writes);
    RUN_TEST(test_user_reader_sees_acknowledged_writes);
    RUN_TEST(test_no_reader_on_memory);
    RUN_TEST(test_reader_does_not_map_the_file);
    RUN_TEST(test_migrations_idempotent);
    RUN_TEST(test_marked_outbox_rows_purged);
    RUN_TEST(test_future_version_refused);
    RUN_TEST(test_open_fails);
    RUN_TEST(test_full_queue);
    RUN_TEST(test_group_commit_savepoints);

    tms_mailbox_free(&replies);
    uv_run(&loop, UV_RUN_DEFAULT);
    CHECK_EQ_INT(uv_loop_close(&loop), 0);
    tms_metrics_reset();
    remove_db();
    rmdir(dir);
    TEST_EXIT();
}
