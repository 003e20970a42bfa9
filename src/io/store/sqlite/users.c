/* The user store port on SQLite: one prepared statement per operation (writes use
 * RETURNING, so the reply shows exactly the row that was written or deleted); delete
 * and restore are a few statements, kept whole by the savepoint the db thread puts
 * around every write (sqlite.c). Runs on the db owner thread. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/alloc.h"
#include "core/clock.h"
#include "core/events.h"
#include "core/log.h"
#include "io/store/sqlite/internal.h"

#define COLS "id, email, password_hash, role, token_version, created_at_ms"

enum { NOPS = TMS_USER_PING + 1 };

/* CREATE and RESTORE share the insert. */
static const char *const op_sql[NOPS] = {
    [TMS_USER_CREATE] = "INSERT INTO users (" COLS ") VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    [TMS_USER_GET_BY_EMAIL] = "SELECT " COLS " FROM users WHERE email = ?1",
    [TMS_USER_GET_BY_ID] = "SELECT " COLS " FROM users WHERE id = ?1",
    [TMS_USER_BUMP_VERSION] = "UPDATE users SET token_version = token_version + 1,"
                              " password_hash = coalesce(nullif(?2, ''), password_hash)"
                              " WHERE id = ?1 RETURNING " COLS,
    [TMS_USER_SET_ROLE] = "UPDATE users SET role = ?2 WHERE email = ?1 RETURNING " COLS,
    [TMS_USER_DELETE] = "DELETE FROM users WHERE id = ?1 RETURNING " COLS,
    [TMS_USER_RESTORE] = "INSERT INTO users (" COLS ") VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    [TMS_USER_PING] = "SELECT max(version) FROM schema_migrations",
};

enum { ST_TOMB_PUT, ST_TOMB_GET, ST_TOMB_DEL, ST_OUTBOX, NEXTRA };

typedef struct users {
    sqlite3_stmt *stmt[NOPS];
    sqlite3_stmt *extra[NEXTRA];
} users_t;

static void *users_start(sqlite3 *db)
{
    users_t *u = tms_new(users_t);
    (void)db; /* statements are prepared on first use */
    return u;
}

static void users_stop(void *state)
{
    users_t *u = state;
    for (int i = 0; i < NOPS; i++)
        sqlite3_finalize(u->stmt[i]);
    for (int i = 0; i < NEXTRA; i++)
        sqlite3_finalize(u->extra[i]);
    free(u);
}

/* Binds a fixed-size field without trusting it to be terminated. */
static void bind_str(sqlite3_stmt *st, int i, const char *s, size_t cap)
{
    sqlite3_bind_text(st, i, s, (int)strnlen(s, cap), SQLITE_STATIC);
}

static void bind_user(sqlite3_stmt *st, const tms_user_t *u)
{
    bind_str(st, 1, u->id, sizeof(u->id));
    bind_str(st, 2, u->email, sizeof(u->email));
    bind_str(st, 3, u->password_hash, sizeof(u->password_hash));
    bind_str(st, 4, u->role, sizeof(u->role));
    sqlite3_bind_int64(st, 5, u->token_version);
    sqlite3_bind_int64(st, 6, u->created_at_ms);
}

static void read_user(sqlite3_stmt *st, tms_user_t *u)
{
    tms__sqlite_column_str(u->id, sizeof(u->id), st, 0);
    tms__sqlite_column_str(u->email, sizeof(u->email), st, 1);
    tms__sqlite_column_str(u->password_hash, sizeof(u->password_hash), st, 2);
    tms__sqlite_column_str(u->role, sizeof(u->role), st, 3);
    u->token_version = sqlite3_column_int64(st, 4);
    u->created_at_ms = sqlite3_column_int64(st, 5);
}

static void constraint_error(tms_user_op_t *op, sqlite3 *db, int rc, const char *name)
{
    switch (rc) {
    case SQLITE_CONSTRAINT_UNIQUE:
        /* email is the only UNIQUE column besides the primary key */
        tms_error_set(&op->err, TMS_ALREADY_EXISTS, "email already registered");
        break;
    case SQLITE_CONSTRAINT_PRIMARYKEY:
        tms_error_set(&op->err, TMS_ALREADY_EXISTS, "user id already exists");
        break;
    default:
        tms__sqlite_fail(&op->err, db, rc, name);
        break;
    }
}

/* Steps st to the end: a row (at most one) is read into op->user. */
static void run_stmt(tms_user_op_t *op, sqlite3 *db, sqlite3_stmt *st, const char *name)
{
    int rc, rows = 0;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        if (rows++ == 0 && op->msg.op != TMS_USER_PING)
            read_user(st, &op->user);
    }
    if (rc != SQLITE_DONE) {
        if ((rc & 0xff) == SQLITE_CONSTRAINT)
            constraint_error(op, db, rc, name);
        else
            tms__sqlite_fail(&op->err, db, rc, name);
        return;
    }
    switch (op->msg.op) {
    case TMS_USER_CREATE:
    case TMS_USER_RESTORE:
    case TMS_USER_PING:
        break;
    default:
        if (rows == 0)
            tms_error_set(&op->err, TMS_NOT_FOUND, "user not found");
        break;
    }
}

static void bind_op(tms_user_op_t *op, sqlite3_stmt *st)
{
    switch (op->msg.op) {
    case TMS_USER_CREATE:
    case TMS_USER_RESTORE:
        bind_user(st, &op->user);
        break;
    case TMS_USER_GET_BY_EMAIL:
    case TMS_USER_GET_BY_ID:
    case TMS_USER_DELETE:
        bind_str(st, 1, op->key, sizeof(op->key));
        break;
    case TMS_USER_BUMP_VERSION:
        bind_str(st, 1, op->key, sizeof(op->key));
        bind_str(st, 2, op->new_hash, sizeof(op->new_hash));
        break;
    case TMS_USER_SET_ROLE:
        bind_str(st, 1, op->key, sizeof(op->key));
        bind_str(st, 2, op->user.role, sizeof(op->user.role));
        break;
    default:
        break;
    }
}

/* Steps a statement with no rows wanted; returns the SQLite result (DONE is ok). */
static int step_done(sqlite3_stmt *st)
{
    int rc;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW)
        ;
    tms__sqlite_done(st);
    return rc;
}

/* Delete writes, in one transaction: the delete, a tombstone keeping what the
 * event may not carry (the password hash) so compensation can restore the user,
 * and the user_deleted event in the outbox. */
static int delete_user(users_t *u, tms_user_op_t *op, sqlite3 *db)
{
    sqlite3_stmt *st = tms__sqlite_stmt(db, &u->stmt[TMS_USER_DELETE], op_sql[TMS_USER_DELETE]);
    char event_id[37], *payload;
    int rc;
    if (!st)
        return SQLITE_ERROR;
    bind_op(op, st);
    run_stmt(op, db, st, "delete");
    tms__sqlite_done(st);
    if (op->err.code != TMS_OK)
        return SQLITE_OK; /* NOT_FOUND or a failure already set */
    st = tms__sqlite_stmt(db, &u->extra[ST_TOMB_PUT],
                          "INSERT OR REPLACE INTO deleted_users (id, password_hash,"
                          " token_version, deleted_at_ms, email, role, created_at_ms)"
                          " VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)");
    if (!st)
        return SQLITE_ERROR;
    bind_str(st, 1, op->user.id, sizeof(op->user.id));
    bind_str(st, 2, op->user.password_hash, sizeof(op->user.password_hash));
    sqlite3_bind_int64(st, 3, op->user.token_version);
    sqlite3_bind_int64(st, 4, tms_now_ms());
    bind_str(st, 5, op->user.email, sizeof(op->user.email));
    bind_str(st, 6, op->user.role, sizeof(op->user.role));
    sqlite3_bind_int64(st, 7, op->user.created_at_ms);
    if ((rc = step_done(st)) != SQLITE_DONE)
        return rc;
    tms_event_id_new(event_id);
    payload = tms_event_user_json(&op->user, event_id);
    rc = tms__sqlite_outbox_insert(db, &u->extra[ST_OUTBOX], event_id, TMS_TOPIC_USER_DELETED,
                                   op->user.id, payload, tms_now_ms());
    free(payload);
    return rc;
}

/* Restore re-inserts the user its tombstone keeps, with the token version one past
 * the deleted one (old tokens stay dead); the caller's email and role must match the
 * tombstone's, and are never what is written. */
static int restore_user(users_t *u, tms_user_op_t *op, sqlite3 *db)
{
    sqlite3_stmt *st;
    tms_user_t tomb;
    int rc;
    st = tms__sqlite_stmt(db, &u->extra[ST_TOMB_GET],
                          "SELECT password_hash, token_version, email, role, created_at_ms"
                          " FROM deleted_users WHERE id = ?1");
    if (!st)
        return SQLITE_ERROR;
    bind_str(st, 1, op->user.id, sizeof(op->user.id));
    memset(&tomb, 0, sizeof(tomb));
    rc = sqlite3_step(st);
    if (rc == SQLITE_ROW) {
        snprintf(tomb.id, sizeof(tomb.id), "%s", op->user.id);
        tms__sqlite_column_str(tomb.password_hash, sizeof(tomb.password_hash), st, 0);
        tomb.token_version = sqlite3_column_int64(st, 1) + 1;
        tms__sqlite_column_str(tomb.email, sizeof(tomb.email), st, 2);
        tms__sqlite_column_str(tomb.role, sizeof(tomb.role), st, 3);
        tomb.created_at_ms = sqlite3_column_int64(st, 4);
    }
    tms__sqlite_done(st);
    if (rc == SQLITE_DONE) {
        tms_error_set(&op->err, TMS_NOT_FOUND, "no tombstone for this user");
        return SQLITE_OK;
    }
    if (rc != SQLITE_ROW)
        return rc;
    if (!tomb.email[0] || !tomb.role[0]) {
        tms_error_set(&op->err, TMS_FAILED_PRECONDITION,
                      "the tombstone keeps no email and role (written by an older version)");
        return SQLITE_OK;
    }
    if (strcmp(tomb.email, op->user.email) != 0 || strcmp(tomb.role, op->user.role) != 0) {
        tms_error_set(&op->err, TMS_FAILED_PRECONDITION, "%s differs from the tombstone",
                      strcmp(tomb.email, op->user.email) != 0 ? "email" : "role");
        return SQLITE_OK;
    }
    op->user = tomb;
    st = tms__sqlite_stmt(db, &u->stmt[TMS_USER_RESTORE], op_sql[TMS_USER_RESTORE]);
    if (!st)
        return SQLITE_ERROR;
    bind_op(op, st);
    run_stmt(op, db, st, "restore");
    tms__sqlite_done(st);
    if (op->err.code != TMS_OK)
        return SQLITE_OK;
    st = tms__sqlite_stmt(db, &u->extra[ST_TOMB_DEL], "DELETE FROM deleted_users WHERE id = ?1");
    if (!st)
        return SQLITE_ERROR;
    bind_str(st, 1, op->user.id, sizeof(op->user.id));
    rc = step_done(st);
    return rc == SQLITE_DONE ? SQLITE_OK : rc;
}

/* Runs fn, a multi-statement write: the db thread's savepoint around it keeps all or
 * nothing of it, rolling back when an error is left in the op. */
static void run_write(users_t *u, tms_user_op_t *op, sqlite3 *db,
                      int (*fn)(users_t *, tms_user_op_t *, sqlite3 *), const char *name)
{
    int rc = fn(u, op, db);
    if (rc != SQLITE_OK && op->err.code == TMS_OK)
        tms__sqlite_fail(&op->err, db, rc, name);
}

static bool users_writes(int op)
{
    return op == TMS_USER_CREATE || op == TMS_USER_BUMP_VERSION || op == TMS_USER_SET_ROLE ||
           op == TMS_USER_DELETE || op == TMS_USER_RESTORE;
}

static void users_run(void *state, sqlite3 *db, tms_msg_t *msg)
{
    users_t *u = state;
    tms_user_op_t *op = (tms_user_op_t *)msg;
    int kind = msg->op;
    const char *name = tms_store_op_name(TMS_STORE_USERS, kind);
    sqlite3_stmt *st;

    if (kind == TMS_USER_DELETE || kind == TMS_USER_RESTORE) {
        run_write(u, op, db, kind == TMS_USER_DELETE ? delete_user : restore_user, name);
        return;
    }
    st = tms__sqlite_stmt(db, &u->stmt[kind], op_sql[kind]);
    if (!st) {
        tms_error_set(&op->err, TMS_INTERNAL, "internal error");
    } else {
        bind_op(op, st);
        run_stmt(op, db, st, name);
        tms__sqlite_done(st);
    }
}

const tms_sqlite_port_t tms__sqlite_users_port = {
    .name = "users",
    .start = users_start,
    .writes = users_writes,
    .run = users_run,
    .stop = users_stop,
};
