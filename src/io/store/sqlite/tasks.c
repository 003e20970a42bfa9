/* The task store port on SQLite. A write and the event or idempotency record it
 * writes run in one savepoint of the db thread's group transaction (sqlite.c), so a
 * task change, its outbox event and its idempotency record commit together or not at
 * all: every failure leaves an error in the op, which rolls the savepoint back. Runs
 * on the db owner thread. */
#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/alloc.h"
#include "core/clock.h"
#include "core/events.h"
#include "core/log.h"
#include "io/store/sqlite/internal.h"

#define COLS                                                                                       \
    "id, title, description, status, assigned_to, created_by, created_at_ms, updated_at_ms,"       \
    " version"

enum stmt_id {
    ST_INSERT,
    ST_GET,
    ST_LIST, /* + 0..3: with assignee filter (1) and/or status filter (2) */
    ST_UPDATE = ST_LIST + 4,
    ST_DELETE,
    ST_UNASSIGN,
    ST_IDEM_GET,
    ST_IDEM_PUT,
    ST_OUTBOX,
    ST_PING,
    ST_EVENTS,
    ST_EVENT_BOUNDS,
    ST_EVENTS_PURGE,
    ST_COUNT,
};

static const char *const list_sql[4] = {
    "SELECT " COLS " FROM tasks WHERE id > ?1 ORDER BY id LIMIT ?4",
    "SELECT " COLS " FROM tasks WHERE id > ?1 AND assigned_to = ?2 ORDER BY id LIMIT ?4",
    "SELECT " COLS " FROM tasks WHERE id > ?1 AND status = ?3 ORDER BY id LIMIT ?4",
    "SELECT " COLS " FROM tasks WHERE id > ?1 AND assigned_to = ?2 AND status = ?3"
    " ORDER BY id LIMIT ?4",
};

typedef struct tasks {
    sqlite3_stmt *stmt[ST_COUNT];
} tasks_t;

static void *tasks_start(sqlite3 *db)
{
    tasks_t *t = tms_new(tasks_t);
    (void)db; /* statements are prepared on first use */
    return t;
}

static void tasks_stop(void *state)
{
    tasks_t *t = state;
    for (int i = 0; i < ST_COUNT; i++)
        sqlite3_finalize(t->stmt[i]);
    free(t);
}

static sqlite3_stmt *stmt(tasks_t *t, sqlite3 *db, enum stmt_id id, const char *sql)
{
    return tms__sqlite_stmt(db, &t->stmt[id], sql);
}

/* A text column copied into arena ("" for NULL). */
static char *column_dup(tms_arena_t *arena, sqlite3_stmt *st, int i)
{
    const unsigned char *s = sqlite3_column_text(st, i);
    return tms_arena_strndup(arena, s ? (const char *)s : "", (size_t)sqlite3_column_bytes(st, i));
}

/* The row's task into t, its strings into arena; with arena NULL, all but the
 * strings (a check that needs the version only copies no text). */
static void read_task(sqlite3_stmt *st, tms_arena_t *arena, tms_task_t *t)
{
    t->id = sqlite3_column_int64(st, 0);
    t->title = arena ? column_dup(arena, st, 1) : NULL;
    t->description = arena ? column_dup(arena, st, 2) : NULL;
    tms__sqlite_column_str(t->status, sizeof(t->status), st, 3);
    tms__sqlite_column_str(t->assigned_to, sizeof(t->assigned_to), st, 4);
    tms__sqlite_column_str(t->created_by, sizeof(t->created_by), st, 5);
    t->created_at_ms = sqlite3_column_int64(st, 6);
    t->updated_at_ms = sqlite3_column_int64(st, 7);
    t->version = sqlite3_column_int64(st, 8);
}

static void bind_text(sqlite3_stmt *st, int i, const char *s)
{
    sqlite3_bind_text(st, i, s ? s : "", -1, SQLITE_STATIC);
}

/* "" is stored as NULL: nobody. */
static void bind_assignee(sqlite3_stmt *st, int i, const char *s)
{
    if (s[0])
        sqlite3_bind_text(st, i, s, -1, SQLITE_STATIC);
    else
        sqlite3_bind_null(st, i);
}

/* Steps a statement that returns at most one task row, read into out (strings in
 * arena; NULL: none); 1 row, 0 none, <0 error. */
static int step_task(tms_task_op_t *op, sqlite3 *db, sqlite3_stmt *st, tms_arena_t *arena,
                     tms_task_t *out)
{
    int rc, rows = 0;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        if (rows++ == 0 && out)
            read_task(st, arena, out);
    }
    tms__sqlite_done(st);
    if (rc != SQLITE_DONE) {
        tms__sqlite_fail(&op->err, db, rc, tms_store_op_name(TMS_STORE_TASKS, op->msg.op));
        return -1;
    }
    return rows > 0;
}

static int get_task(tasks_t *t, tms_task_op_t *op, sqlite3 *db, int64_t id, tms_arena_t *arena,
                    tms_task_t *out)
{
    sqlite3_stmt *st = stmt(t, db, ST_GET, "SELECT " COLS " FROM tasks WHERE id = ?1");
    if (!st) {
        tms_error_set(&op->err, TMS_INTERNAL, "internal error");
        return -1;
    }
    sqlite3_bind_int64(st, 1, id);
    return step_task(op, db, st, arena, out);
}

static int write_event(tasks_t *t, tms_task_op_t *op, sqlite3 *db, const tms_task_t *task)
{
    char key[24];
    char *payload;
    int rc;
    snprintf(key, sizeof(key), "%" PRId64, task->id);
    payload = tms_event_notification_json(op->notify.type, task->assigned_to, task->id,
                                          op->notify.event_id, task->title, task->updated_at_ms,
                                          op->notify.by);
    rc = tms__sqlite_outbox_insert(db, &t->stmt[ST_OUTBOX], op->notify.event_id,
                                   TMS_TOPIC_NOTIFICATIONS, key, payload, task->updated_at_ms);
    free(payload);
    if (rc != SQLITE_OK) {
        tms__sqlite_fail(&op->err, db, rc, "outbox_insert");
        return -1;
    }
    return 0;
}

/* An idempotency key already used by this user within the TTL decides the answer:
 * 1 = replayed (op->task filled), 0 = go on, -1 = error set. */
static int check_idempotency(tasks_t *t, tms_task_op_t *op, sqlite3 *db)
{
    sqlite3_stmt *st = stmt(t, db, ST_IDEM_GET,
                            "SELECT request_hash, task_id, created_at_ms FROM idempotency"
                            " WHERE user_id = ?1 AND key = ?2");
    int rc, found = 0, same = 0;
    int64_t task_id = 0, created = 0;
    if (!st) {
        tms_error_set(&op->err, TMS_INTERNAL, "internal error");
        return -1;
    }
    bind_text(st, 1, op->task.created_by);
    bind_text(st, 2, op->idem_key);
    if ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        const unsigned char *h = sqlite3_column_text(st, 0);
        found = 1;
        same = h && strcmp((const char *)h, op->idem_hash) == 0;
        task_id = sqlite3_column_int64(st, 1);
        created = sqlite3_column_int64(st, 2);
        rc = SQLITE_DONE;
    }
    tms__sqlite_done(st);
    if (rc != SQLITE_DONE) {
        tms__sqlite_fail(&op->err, db, rc, "idempotency_get");
        return -1;
    }
    if (!found || op->task.created_at_ms - created > TMS_IDEMPOTENCY_TTL_MS)
        return 0; /* unused, or expired: the new request takes the key */
    if (!same) {
        tms_task_op_refuse(op, TMS_ALREADY_EXISTS, TMS_TASK_IDEMPOTENCY_REUSED);
        return -1;
    }
    rc = get_task(t, op, db, task_id, op->arena, &op->task);
    if (rc < 0)
        return -1;
    if (rc == 0) {
        tms_task_op_refuse(op, TMS_ALREADY_EXISTS, TMS_TASK_IDEMPOTENCY_GONE);
        return -1;
    }
    op->replayed = true;
    return 1;
}

static int do_create(tasks_t *t, tms_task_op_t *op, sqlite3 *db)
{
    sqlite3_stmt *st;
    int rc;
    if (op->idem_key[0] && (rc = check_idempotency(t, op, db)) != 0)
        return rc < 0 ? -1 : 0;
    st = stmt(t, db, ST_INSERT,
              "INSERT INTO tasks (title, description, status, assigned_to, created_by,"
              " created_at_ms, updated_at_ms, version) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6, 1)"
              " RETURNING " COLS);
    if (!st)
        goto internal;
    bind_text(st, 1, op->task.title);
    bind_text(st, 2, op->task.description);
    bind_text(st, 3, op->task.status);
    bind_assignee(st, 4, op->task.assigned_to);
    bind_text(st, 5, op->task.created_by);
    sqlite3_bind_int64(st, 6, op->task.created_at_ms);
    if (step_task(op, db, st, op->arena, &op->task) != 1)
        return -1;
    if (op->idem_key[0]) {
        st = stmt(t, db, ST_IDEM_PUT,
                  "INSERT OR REPLACE INTO idempotency (user_id, key, request_hash, task_id,"
                  " created_at_ms) VALUES (?1, ?2, ?3, ?4, ?5)");
        if (!st)
            goto internal;
        bind_text(st, 1, op->task.created_by);
        bind_text(st, 2, op->idem_key);
        bind_text(st, 3, op->idem_hash);
        sqlite3_bind_int64(st, 4, op->task.id);
        sqlite3_bind_int64(st, 5, op->task.created_at_ms);
        if (step_task(op, db, st, NULL, NULL) < 0)
            return -1;
    }
    if (op->notify.enabled && write_event(t, op, db, &op->task) != 0)
        return -1;
    return 0;
internal:
    tms_error_set(&op->err, TMS_INTERNAL, "internal error");
    return -1;
}

/* Reads the row into current (strings in arena, NULL: none) and checks the expected
 * version: 0 ok, -1 error set. */
static int check_version(tasks_t *t, tms_task_op_t *op, sqlite3 *db, tms_arena_t *arena,
                         tms_task_t *current)
{
    int rc = get_task(t, op, db, op->id, arena, current);
    if (rc < 0)
        return -1;
    if (rc == 0) {
        tms_task_op_refuse(op, TMS_NOT_FOUND, TMS_TASK_NO_SUCH_TASK);
        return -1;
    }
    if (op->expected_version && op->expected_version != current->version) {
        tms_task_op_refuse(op, TMS_FAILED_PRECONDITION, TMS_TASK_VERSION_MISMATCH);
        op->current_version = current->version;
        return -1;
    }
    return 0;
}

static int do_update(tasks_t *t, tms_task_op_t *op, sqlite3 *db)
{
    tms_task_t current = {0};
    sqlite3_stmt *st;
    int rc = check_version(t, op, db, NULL, &current);
    if (rc)
        return -1;
    st = stmt(t, db, ST_UPDATE,
              "UPDATE tasks SET"
              " title = CASE WHEN ?2 THEN ?3 ELSE title END,"
              " description = CASE WHEN ?4 THEN ?5 ELSE description END,"
              " status = CASE WHEN ?6 THEN ?7 ELSE status END,"
              " assigned_to = CASE WHEN ?8 THEN ?9 ELSE assigned_to END,"
              " version = version + 1, updated_at_ms = ?10"
              " WHERE id = ?1 RETURNING " COLS);
    if (!st) {
        tms_error_set(&op->err, TMS_INTERNAL, "internal error");
        return -1;
    }
    sqlite3_bind_int64(st, 1, op->id);
    sqlite3_bind_int(st, 2, op->set_title);
    bind_text(st, 3, op->task.title);
    sqlite3_bind_int(st, 4, op->set_description);
    bind_text(st, 5, op->task.description);
    sqlite3_bind_int(st, 6, op->set_status);
    bind_text(st, 7, op->task.status);
    sqlite3_bind_int(st, 8, op->set_assigned_to);
    bind_assignee(st, 9, op->task.assigned_to);
    sqlite3_bind_int64(st, 10, op->task.updated_at_ms);
    if (step_task(op, db, st, op->arena, &op->task) != 1)
        return -1;
    if (op->notify.enabled && write_event(t, op, db, &op->task) != 0)
        return -1;
    return 0;
}

static int do_delete(tasks_t *t, tms_task_op_t *op, sqlite3 *db)
{
    sqlite3_stmt *st;
    if (check_version(t, op, db, op->arena, &op->task))
        return -1;
    st = stmt(t, db, ST_DELETE, "DELETE FROM tasks WHERE id = ?1");
    if (!st) {
        tms_error_set(&op->err, TMS_INTERNAL, "internal error");
        return -1;
    }
    sqlite3_bind_int64(st, 1, op->id);
    return step_task(op, db, st, NULL, NULL) < 0 ? -1 : 0;
}

static void do_list(tasks_t *t, tms_task_op_t *op, sqlite3 *db)
{
    int which = (op->filter_assigned_to[0] ? 1 : 0) | (op->filter_status[0] ? 2 : 0);
    sqlite3_stmt *st = stmt(t, db, (enum stmt_id)(ST_LIST + which), list_sql[which]);
    size_t cap = (size_t)op->limit;
    int rc;
    if (!st) {
        tms_error_set(&op->err, TMS_INTERNAL, "internal error");
        return;
    }
    sqlite3_bind_int64(st, 1, op->after_id);
    bind_text(st, 2, op->filter_assigned_to);
    bind_text(st, 3, op->filter_status);
    sqlite3_bind_int(st, 4, op->limit + 1); /* one more tells whether a next page exists */
    op->tasks = tms_arena_calloc(op->arena, cap ? cap : 1, sizeof(tms_task_t));
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        if (op->ntasks == cap) {
            op->has_more = true;
            continue;
        }
        read_task(st, op->arena, &op->tasks[op->ntasks++]);
    }
    tms__sqlite_done(st);
    if (rc != SQLITE_DONE)
        tms__sqlite_fail(&op->err, db, rc, "task_list");
}

static void do_unassign(tasks_t *t, tms_task_op_t *op, sqlite3 *db)
{
    sqlite3_stmt *st = stmt(t, db, ST_UNASSIGN,
                            "UPDATE tasks SET assigned_to = NULL, version = version + 1,"
                            " updated_at_ms = ?2 WHERE assigned_to = ?1");
    if (!st) {
        tms_error_set(&op->err, TMS_INTERNAL, "internal error");
        return;
    }
    bind_text(st, 1, op->user_id);
    /* The caller's clock when it gave one, so every write of a saga step agrees. */
    sqlite3_bind_int64(st, 2, op->task.updated_at_ms ? op->task.updated_at_ms : tms_now_ms());
    if (step_task(op, db, st, NULL, NULL) >= 0)
        op->count = sqlite3_changes(db);
}

/* ---- the push log (task_events, written by the triggers of migration 4) ---- */

#define EVENT_COLS                                                                                 \
    "seq, type, at_ms, task_id, title, description, status, assigned_to, created_by,"              \
    " created_at_ms, updated_at_ms, version, prev_assigned_to, prev_status"

static void read_event(sqlite3_stmt *st, tms_arena_t *arena, tms_task_event_t *e)
{
    const unsigned char *type = sqlite3_column_text(st, 1);
    e->seq = sqlite3_column_int64(st, 0);
    e->type = tms_task_event_type_parse(type ? (const char *)type : "");
    e->at_ms = sqlite3_column_int64(st, 2);
    e->task.id = sqlite3_column_int64(st, 3);
    e->task.title = column_dup(arena, st, 4);
    e->task.description = column_dup(arena, st, 5);
    tms__sqlite_column_str(e->task.status, sizeof(e->task.status), st, 6);
    tms__sqlite_column_str(e->task.assigned_to, sizeof(e->task.assigned_to), st, 7);
    tms__sqlite_column_str(e->task.created_by, sizeof(e->task.created_by), st, 8);
    e->task.created_at_ms = sqlite3_column_int64(st, 9);
    e->task.updated_at_ms = sqlite3_column_int64(st, 10);
    e->task.version = sqlite3_column_int64(st, 11);
    tms__sqlite_column_str(e->prev_assigned_to, sizeof(e->prev_assigned_to), st, 12);
    tms__sqlite_column_str(e->prev_status, sizeof(e->prev_status), st, 13);
}

/* Reads the log's bounds, then the events asked for; one read transaction, so the
 * bounds and the rows agree. */
static void do_events(tasks_t *t, tms_task_op_t *op, sqlite3 *db)
{
    sqlite3_stmt *st = stmt(t, db, ST_EVENT_BOUNDS,
                            "SELECT (SELECT min(seq) FROM task_events),"
                            " (SELECT max(seq) FROM task_events)");
    size_t cap = op->limit > 0 ? (size_t)op->limit : 0;
    int rc;
    if (!st)
        goto internal;
    if ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        op->first_seq = sqlite3_column_int64(st, 0);
        op->last_seq = sqlite3_column_int64(st, 1);
        rc = SQLITE_DONE;
    }
    tms__sqlite_done(st);
    if (rc != SQLITE_DONE) {
        tms__sqlite_fail(&op->err, db, rc, "task_events");
        return;
    }
    if (!cap)
        return;
    st = stmt(t, db, ST_EVENTS,
              "SELECT " EVENT_COLS " FROM task_events WHERE seq > ?1 AND seq <= ?2"
              " AND (?3 = '' OR assigned_to = ?3 OR prev_assigned_to = ?3)"
              " AND (?4 = '' OR status = ?4 OR prev_status = ?4)"
              " AND (?5 = 0 OR task_id = ?5) ORDER BY seq LIMIT ?6");
    if (!st)
        goto internal;
    sqlite3_bind_int64(st, 1, op->after_id);
    sqlite3_bind_int64(st, 2, op->upto_seq > 0 ? op->upto_seq : INT64_MAX);
    bind_text(st, 3, op->filter_assigned_to);
    bind_text(st, 4, op->filter_status);
    sqlite3_bind_int64(st, 5, op->id);
    sqlite3_bind_int64(st, 6, (sqlite3_int64)cap);
    op->events = tms_arena_calloc(op->arena, cap, sizeof(tms_task_event_t));
    while ((rc = sqlite3_step(st)) == SQLITE_ROW && op->nevents < cap)
        read_event(st, op->arena, &op->events[op->nevents++]);
    tms__sqlite_done(st);
    if (rc != SQLITE_DONE && rc != SQLITE_ROW)
        tms__sqlite_fail(&op->err, db, rc, "task_events");
    return;
internal:
    tms_error_set(&op->err, TMS_INTERNAL, "internal error");
}

/* Drops what is older than before_ms or beyond the newest keep_events, at most limit
 * rows per statement (a short write lock) and never the newest row. */
static void do_events_purge(tasks_t *t, tms_task_op_t *op, sqlite3 *db)
{
    sqlite3_stmt *st =
        stmt(t, db, ST_EVENTS_PURGE,
             "DELETE FROM task_events WHERE seq < min("
             " max(coalesce((SELECT seq FROM task_events WHERE at_ms >= ?1 ORDER BY seq LIMIT 1),"
             "   (SELECT max(seq) FROM task_events)),"
             "  (SELECT max(seq) FROM task_events) - ?2 + 1),"
             " (SELECT min(seq) FROM task_events) + ?3)");
    if (!st) {
        tms_error_set(&op->err, TMS_INTERNAL, "internal error");
        return;
    }
    sqlite3_bind_int64(st, 1, op->before_ms);
    sqlite3_bind_int64(st, 2, op->keep_events > 0 ? op->keep_events : 1);
    sqlite3_bind_int64(st, 3, op->limit > 0 ? op->limit : 10000);
    if (step_task(op, db, st, NULL, NULL) >= 0)
        op->count = sqlite3_changes(db);
}

/* A write that failed without saying why still fails (its savepoint rolls back). */
static void write_op(tasks_t *t, tms_task_op_t *op, sqlite3 *db,
                     int (*fn)(tasks_t *, tms_task_op_t *, sqlite3 *))
{
    if (fn(t, op, db) != 0 && op->err.code == TMS_OK)
        tms_error_set(&op->err, TMS_INTERNAL, "internal error");
}

static bool tasks_writes(int op)
{
    return op == TMS_TASK_CREATE || op == TMS_TASK_UPDATE || op == TMS_TASK_DELETE ||
           op == TMS_TASK_UNASSIGN_USER;
}

static void tasks_run(void *state, sqlite3 *db, tms_msg_t *msg)
{
    tasks_t *t = state;
    tms_task_op_t *op = (tms_task_op_t *)msg;
    sqlite3_stmt *st;

    switch (msg->op) {
    case TMS_TASK_CREATE:
        write_op(t, op, db, do_create);
        break;
    case TMS_TASK_GET: {
        int rc = get_task(t, op, db, op->id, op->arena, &op->task);
        if (rc == 0)
            tms_task_op_refuse(op, TMS_NOT_FOUND, TMS_TASK_NO_SUCH_TASK);
        break;
    }
    case TMS_TASK_LIST:
        do_list(t, op, db);
        break;
    case TMS_TASK_UPDATE:
        write_op(t, op, db, do_update);
        break;
    case TMS_TASK_DELETE:
        write_op(t, op, db, do_delete);
        break;
    case TMS_TASK_UNASSIGN_USER:
        do_unassign(t, op, db);
        break;
    case TMS_TASK_EVENTS:
        if (tms__sqlite_exec(db, "BEGIN") != SQLITE_OK) {
            tms__sqlite_fail(&op->err, db, SQLITE_ERROR, "begin");
            break;
        }
        do_events(t, op, db);
        tms__sqlite_exec(db, "COMMIT");
        break;
    case TMS_TASK_EVENTS_PURGE:
        do_events_purge(t, op, db);
        break;
    case TMS_TASK_PING:
        st = stmt(t, db, ST_PING, "SELECT count(*) FROM schema_migrations");
        if (!st)
            tms_error_set(&op->err, TMS_INTERNAL, "internal error");
        else
            step_task(op, db, st, NULL, NULL);
        break;
    }
}

const tms_sqlite_port_t tms__sqlite_tasks_port = {
    .name = "tasks",
    .start = tasks_start,
    .writes = tasks_writes,
    .run = tasks_run,
    .stop = tasks_stop,
};
