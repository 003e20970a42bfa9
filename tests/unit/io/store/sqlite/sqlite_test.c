/* Tests for src/io/store/sqlite/: the user store port on a temporary database file,
 * driven from a loop mailbox as the auth actor would. */
#include <sqlite3.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <uv.h>

#include "core/alloc.h"
#include "core/metrics.h"
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
    tms_sqlite_t *db = tms_sqlite_open(path, capacity, err, sizeof(err));
    CHECK(db != NULL);
    if (!db)
        fprintf(stderr, "open: %s\n", err);
    return db;
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

static void remove_db(void)
{
    char p[160];
    const char *suffix[] = {"", "-wal", "-shm", "-journal"};
    for (size_t i = 0; i < sizeof(suffix) / sizeof(suffix[0]); i++) {
        snprintf(p, sizeof(p), "%s%s", path, suffix[i]);
        unlink(p);
    }
}

static void test_user_ops(void)
{
    tms_sqlite_t *db = open_db(64);
    tms_user_store_t *s;
    tms_user_op_t *op, r;
    tms_user_t deleted;
    char *text;
    size_t len;
    if (!db)
        return;
    s = tms_sqlite_user_store(db);
    CHECK_EQ_STR(s->name, "sqlite");

    op = new_op(TMS_USER_CREATE, NULL);
    fill_user(&op->user, "aaaaaaaaaaaaaaaaaaaaaaaa", "alice@example.com");
    r = call(s, op);
    CHECK_EQ_INT(r.err.code, TMS_OK);

    op = new_op(TMS_USER_CREATE, NULL);
    fill_user(&op->user, "bbbbbbbbbbbbbbbbbbbbbbbb", "alice@example.com");
    r = call(s, op);
    CHECK_EQ_INT(r.err.code, TMS_ALREADY_EXISTS);
    CHECK_EQ_STR(r.err.message, "email already registered");

    r = call_key(s, TMS_USER_GET_BY_EMAIL, "alice@example.com");
    CHECK_EQ_INT(r.err.code, TMS_OK);
    CHECK_EQ_STR(r.user.id, "aaaaaaaaaaaaaaaaaaaaaaaa");
    CHECK_EQ_STR(r.user.role, "user");
    CHECK_EQ_INT(r.user.token_version, 0);
    CHECK_EQ_INT(r.user.created_at_ms, 1764338400000);

    r = call_key(s, TMS_USER_GET_BY_ID, "aaaaaaaaaaaaaaaaaaaaaaaa");
    CHECK_EQ_INT(r.err.code, TMS_OK);
    CHECK_EQ_STR(r.user.email, "alice@example.com");
    CHECK_EQ_STR(r.user.password_hash, "$argon2id$v=19$m=65536,t=2,p=1$x$y");

    r = call_key(s, TMS_USER_GET_BY_EMAIL, "nobody@example.com");
    CHECK_EQ_INT(r.err.code, TMS_NOT_FOUND);
    r = call_key(s, TMS_USER_GET_BY_ID, "cccccccccccccccccccccccc");
    CHECK_EQ_INT(r.err.code, TMS_NOT_FOUND);
    /* user data is bound, never spliced into SQL */
    r = call_key(s, TMS_USER_GET_BY_EMAIL, "x' OR '1'='1");
    CHECK_EQ_INT(r.err.code, TMS_NOT_FOUND);

    r = call_key(s, TMS_USER_BUMP_VERSION, "aaaaaaaaaaaaaaaaaaaaaaaa");
    CHECK_EQ_INT(r.err.code, TMS_OK);
    CHECK_EQ_INT(r.user.token_version, 1);
    CHECK_EQ_STR(r.user.password_hash, "$argon2id$v=19$m=65536,t=2,p=1$x$y");
    op = new_op(TMS_USER_BUMP_VERSION, "aaaaaaaaaaaaaaaaaaaaaaaa");
    snprintf(op->new_hash, sizeof(op->new_hash), "$argon2id$new");
    r = call(s, op);
    CHECK_EQ_INT(r.err.code, TMS_OK);
    CHECK_EQ_INT(r.user.token_version, 2);
    CHECK_EQ_STR(r.user.password_hash, "$argon2id$new");
    r = call_key(s, TMS_USER_BUMP_VERSION, "cccccccccccccccccccccccc");
    CHECK_EQ_INT(r.err.code, TMS_NOT_FOUND);

    op = new_op(TMS_USER_SET_ROLE, "alice@example.com");
    snprintf(op->user.role, sizeof(op->user.role), "admin");
    r = call(s, op);
    CHECK_EQ_INT(r.err.code, TMS_OK);
    CHECK_EQ_STR(r.user.role, "admin");
    CHECK_EQ_STR(r.user.id, "aaaaaaaaaaaaaaaaaaaaaaaa");
    op = new_op(TMS_USER_SET_ROLE, "nobody@example.com");
    snprintf(op->user.role, sizeof(op->user.role), "admin");
    r = call(s, op);
    CHECK_EQ_INT(r.err.code, TMS_NOT_FOUND);
    /* the CHECK constraint holds: a bug, reported without internals */
    op = new_op(TMS_USER_SET_ROLE, "alice@example.com");
    snprintf(op->user.role, sizeof(op->user.role), "root");
    r = call(s, op);
    CHECK_EQ_INT(r.err.code, TMS_INTERNAL);
    CHECK_EQ_STR(r.err.message, "internal error");

    r = call_key(s, TMS_USER_DELETE, "aaaaaaaaaaaaaaaaaaaaaaaa");
    CHECK_EQ_INT(r.err.code, TMS_OK);
    CHECK_EQ_STR(r.user.email, "alice@example.com");
    CHECK_EQ_STR(r.user.role, "admin");
    CHECK_EQ_INT(r.user.token_version, 2);
    CHECK_EQ_STR(r.user.password_hash, "$argon2id$new");
    deleted = r.user;
    r = call_key(s, TMS_USER_DELETE, "aaaaaaaaaaaaaaaaaaaaaaaa");
    CHECK_EQ_INT(r.err.code, TMS_NOT_FOUND);
    r = call_key(s, TMS_USER_GET_BY_EMAIL, "alice@example.com");
    CHECK_EQ_INT(r.err.code, TMS_NOT_FOUND);

    /* an event that names another email or role restores nothing (issue 17: the
     * payload chose what came back) */
    op = new_op(TMS_USER_RESTORE, NULL);
    op->user = deleted;
    snprintf(op->user.email, sizeof(op->user.email), "attacker@example.com");
    r = call(s, op);
    CHECK_EQ_INT(r.err.code, TMS_FAILED_PRECONDITION);
    CHECK(strstr(r.err.message, "email") != NULL);
    op = new_op(TMS_USER_RESTORE, NULL);
    op->user = deleted;
    snprintf(op->user.role, sizeof(op->user.role), "user");
    r = call(s, op);
    CHECK_EQ_INT(r.err.code, TMS_FAILED_PRECONDITION);
    CHECK(strstr(r.err.message, "role") != NULL);
    r = call_key(s, TMS_USER_GET_BY_ID, "aaaaaaaaaaaaaaaaaaaaaaaa");
    CHECK_EQ_INT(r.err.code, TMS_NOT_FOUND);
    /* no tombstone, nothing to restore */
    op = new_op(TMS_USER_RESTORE, NULL);
    fill_user(&op->user, "dddddddddddddddddddddddd", "dave@example.com");
    r = call(s, op);
    CHECK_EQ_INT(r.err.code, TMS_NOT_FOUND);
    r = call_key(s, TMS_USER_GET_BY_ID, "dddddddddddddddddddddddd");
    CHECK_EQ_INT(r.err.code, TMS_NOT_FOUND);

    /* the matching event restores the tombstone's user, whatever else it says: hash,
     * creation time and a token version past the deleted one come from the tombstone */
    op = new_op(TMS_USER_RESTORE, NULL);
    op->user = deleted;
    op->user.token_version = 99;
    op->user.created_at_ms = 1;
    snprintf(op->user.password_hash, sizeof(op->user.password_hash), "$argon2id$forged");
    r = call(s, op);
    CHECK_EQ_INT(r.err.code, TMS_OK);
    r = call_key(s, TMS_USER_GET_BY_ID, "aaaaaaaaaaaaaaaaaaaaaaaa");
    CHECK_EQ_INT(r.err.code, TMS_OK);
    CHECK_EQ_STR(r.user.email, "alice@example.com");
    CHECK_EQ_STR(r.user.role, "admin");
    CHECK_EQ_INT(r.user.token_version, 3);
    CHECK_EQ_INT(r.user.created_at_ms, 1764338400000);
    CHECK_EQ_STR(r.user.password_hash, "$argon2id$new");
    /* restored once: the tombstone is gone with it */
    op = new_op(TMS_USER_RESTORE, NULL);
    op->user = deleted;
    r = call(s, op);
    CHECK_EQ_INT(r.err.code, TMS_NOT_FOUND);

    /* the email was registered again since the delete */
    r = call_key(s, TMS_USER_DELETE, "aaaaaaaaaaaaaaaaaaaaaaaa");
    CHECK_EQ_INT(r.err.code, TMS_OK);
    deleted = r.user;
    op = new_op(TMS_USER_CREATE, NULL);
    fill_user(&op->user, "eeeeeeeeeeeeeeeeeeeeeeee", "alice@example.com");
    r = call(s, op);
    CHECK_EQ_INT(r.err.code, TMS_OK);
    op = new_op(TMS_USER_RESTORE, NULL);
    op->user = deleted;
    r = call(s, op);
    CHECK_EQ_INT(r.err.code, TMS_ALREADY_EXISTS);
    CHECK_EQ_STR(r.err.message, "email already registered");
    /* the failed restore kept the tombstone: once the address is free, it works */
    r = call_key(s, TMS_USER_DELETE, "eeeeeeeeeeeeeeeeeeeeeeee");
    CHECK_EQ_INT(r.err.code, TMS_OK);
    op = new_op(TMS_USER_RESTORE, NULL);
    op->user = deleted;
    r = call(s, op);
    CHECK_EQ_INT(r.err.code, TMS_OK);
    CHECK_EQ_INT(r.user.token_version, 4);

    r = call_key(s, TMS_USER_PING, NULL);
    CHECK_EQ_INT(r.err.code, TMS_OK);

    /* an op that came back as a reply can be submitted again */
    {
        waiter_t w = {0};
        w.keep = 1;
        op = new_op(TMS_USER_GET_BY_ID, "aaaaaaaaaaaaaaaaaaaaaaaa");
        op->msg.ctx = &w;
        tms_user_op_t *again = op;
        CHECK_EQ_INT(tms_user_store_submit(s, &op), 0);
        while (!w.done)
            uv_run(&loop, UV_RUN_ONCE);
        CHECK_EQ_INT(w.result.err.code, TMS_OK);
        w.done = 0;
        w.keep = 0;
        again->msg.op = TMS_USER_GET_BY_EMAIL;
        snprintf(again->key, sizeof(again->key), "alice@example.com");
        CHECK_EQ_INT(tms_user_store_submit(s, &again), 0);
        while (!w.done)
            uv_run(&loop, UV_RUN_ONCE);
        CHECK_EQ_INT(w.result.err.code, TMS_OK);
        CHECK_EQ_STR(w.result.user.id, "aaaaaaaaaaaaaaaaaaaaaaaa");
    }

    text = tms_metrics_render(&len);
    CHECK(strstr(text, "tms_store_duration_seconds_count{store=\"sqlite\",op=\"get_by_email\"}") !=
          NULL);
    CHECK(strstr(text, "tms_store_errors_total{store=\"sqlite\",op=\"set_role\"} 1") != NULL);
    CHECK(strstr(text, "tms_store_errors_total{store=\"sqlite\",op=\"create\"} 0") != NULL);
    free(text);

    tms_sqlite_close(&db);
    CHECK(db == NULL);
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
    tms_sqlite_close(&db);
    CHECK_EQ_INT(raw_query("SELECT max(version) FROM schema_migrations"),
                 tms__sqlite_schema_version());

    db = open_db(8);
    if (!db)
        return;
    r = call_key(tms_sqlite_user_store(db), TMS_USER_GET_BY_EMAIL, "alice@example.com");
    CHECK_EQ_INT(r.err.code, TMS_OK);
    tms_sqlite_close(&db);
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

static void test_future_version_refused(void)
{
    char err[256] = "";
    tms_sqlite_t *db;
    CHECK_EQ_INT(tms_sqlite_migrate(path, err, sizeof(err)), 0);
    raw_query("INSERT INTO schema_migrations (version, applied_at) VALUES (999, 'later')");
    CHECK_EQ_INT(raw_query("SELECT max(version) FROM schema_migrations"), 999);
    db = tms_sqlite_open(path, 8, err, sizeof(err));
    CHECK(db == NULL);
    CHECK(strstr(err, "newer") != NULL);
    CHECK(strchr(err, '\n') == NULL);
    tms_sqlite_close(&db);
    err[0] = '\0';
    CHECK_EQ_INT(tms_sqlite_migrate(path, err, sizeof(err)), -TMS_EIO);
    CHECK(strstr(err, "999") != NULL);
    remove_db();
}

static void test_open_fails(void)
{
    char err[256] = "";
    tms_sqlite_t *db = tms_sqlite_open("/nonexistent-dir/x/tms.db", 8, err, sizeof(err));
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
    tms_sqlite_close(&db);
    CHECK_EQ_INT(answered, accepted);
    remove_db();
}

/* Close answers every op already queued before the thread goes. */
static void test_close_drains(void)
{
    tms_sqlite_t *db = open_db(64);
    tms_user_store_t *s;
    tms_user_op_t *op;
    int accepted = 0;
    if (!db)
        return;
    s = tms_sqlite_user_store(db);
    answered = 0;
    for (int i = 0; i < 20; i++) {
        op = new_op(i % 2 ? TMS_USER_PING : TMS_USER_GET_BY_EMAIL, "nobody@example.com");
        if (tms_user_store_submit(s, &op) == 0)
            accepted++;
        else
            free(op);
    }
    CHECK_EQ_INT(accepted, 20);
    tms_sqlite_close(&db);
    while (answered < accepted)
        uv_run(&loop, UV_RUN_ONCE);
    CHECK_EQ_INT(answered, 20);
    remove_db();
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

    RUN_TEST(test_user_ops);
    RUN_TEST(test_migrations_idempotent);
    RUN_TEST(test_future_version_refused);
    RUN_TEST(test_open_fails);
    RUN_TEST(test_full_queue);
    RUN_TEST(test_close_drains);

    tms_mailbox_free(&replies);
    uv_run(&loop, UV_RUN_DEFAULT);
    CHECK_EQ_INT(uv_loop_close(&loop), 0);
    tms_metrics_reset();
    remove_db();
    rmdir(dir);
    TEST_EXIT();
}
