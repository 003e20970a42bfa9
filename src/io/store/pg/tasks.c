/* The task store port on PostgreSQL: each operation is one prepared statement (a
 * create with an Idempotency-Key two). A create is a statement with data-modifying
 * CTEs; update and delete call the functions of the migrations, which check the
 * version, change the task and write its outbox event in one statement, exactly as
 * sqlite/tasks.c does in its savepoint. Writes commit in groups (pg.c): the group's
 * transaction holds their row and advisory locks until it commits. Runs on the pool's
 * loop thread. */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/alloc.h"
#include "core/clock.h"
#include "core/log.h"
#include "io/store/pg/internal.h"

#define COLS                                                                                       \
    "id, title, description, status, assigned_to, created_by, created_at_ms, updated_at_ms,"       \
    " version"
#define OUT_COLS                                                                                   \
    "o_st, o_id, o_title, o_description, o_status, o_assigned_to, o_created_by, o_created_at_ms,"  \
    " o_updated_at_ms, o_version"

#define T_COLS                                                                                     \
    "t.id, t.title, t.description, t.status, t.assigned_to, t.created_by, t.created_at_ms,"        \
    " t.updated_at_ms, t.version"

/* A create is one statement, planned once per connection: the task, its idempotency
 * record and its outbox event (the JSON of tms_event_notification_json) written by
 * data-modifying CTEs, so they commit together. An Idempotency-Key used by the same
 * user within the TTL ($9 ms) answers instead: the first task ('replayed'), 'gone'
 * when it was deleted since, 'conflict' when the request differs. With a key, the
 * statement runs after task_create_lock in the same transaction: concurrent requests
 * with one key wait there for each other, and the statement's snapshot, taken after
 * the wait, sees the record the first one committed (or, in the same group of writes,
 * wrote earlier in the same transaction: the lock is the transaction's own). */
#define CREATE_SQL                                                                                 \
    "WITH prev AS (SELECT i.request_hash, i.task_id FROM idempotency i"                            \
    "  WHERE $7::text <> '' AND i.user_id = $5::text AND i.key = $7::text"                         \
    "  AND $6::bigint - i.created_at_ms <= $9::bigint),"                                           \
    " t AS (INSERT INTO tasks AS t (title, description, status, assigned_to, created_by,"          \
    "  created_at_ms, updated_at_ms, version)"                                                     \
    "  SELECT $1::text, $2::text, $3::text, NULLIF($4::text, ''), $5::text, $6::bigint,"           \
    "  $6::bigint, 1 WHERE NOT EXISTS (SELECT 1 FROM prev)"                                        \
    "  RETURNING " T_COLS "),"                                                                     \
    " i AS (INSERT INTO idempotency AS i (user_id, key, request_hash, task_id, created_at_ms)"     \
    "  SELECT $5::text, $7::text, $8::text, t.id, $6::bigint FROM t WHERE $7::text <> ''"          \
    "  ON CONFLICT (user_id, key) DO UPDATE SET request_hash = EXCLUDED.request_hash,"             \
    "  task_id = EXCLUDED.task_id, created_at_ms = EXCLUDED.created_at_ms),"                       \
    " o AS (INSERT INTO outbox (event_id, topic, key, payload, created_at_ms)"                     \
    "  SELECT $11::text, 'notifications', t.id::text, json_build_object('type', $10::text,"        \
    "  'user_id', coalesce(t.assigned_to, ''), 'task_id', t.id::text, 'event_id', $11::text,"      \
    "  'title', t.title, 'occurred_at', $12::text, 'assigned_by', t.created_by)::text,"            \
    "  t.updated_at_ms FROM t WHERE $10::text <> '')"                                              \
    " SELECT 'ok'::text, " T_COLS " FROM t"                                                        \
    " UNION ALL"                                                                                   \
    " SELECT CASE WHEN p.request_hash <> $8::text THEN 'conflict' WHEN t.id IS NULL THEN 'gone'"   \
    "  ELSE 'replayed' END, " T_COLS                                                               \
    " FROM prev p LEFT JOIN tasks t ON t.id = p.task_id AND p.request_hash = $8::text"

/* A create without an Idempotency-Key (most of them): the task and its outbox event
 * only, without the idempotency lookup and the UNION, which cost the database about a
 * third of pgbench's INSERT rate (bench pair pg_post). */
#define CREATE_PLAIN_SQL                                                                           \
    "WITH t AS (INSERT INTO tasks AS t (title, description, status, assigned_to, created_by,"      \
    "  created_at_ms, updated_at_ms, version)"                                                     \
    "  VALUES ($1::text, $2::text, $3::text, NULLIF($4::text, ''), $5::text, $6::bigint,"          \
    "  $6::bigint, 1) RETURNING " T_COLS "),"                                                      \
    " o AS (INSERT INTO outbox (event_id, topic, key, payload, created_at_ms)"                     \
    "  SELECT $8::text, 'notifications', t.id::text, json_build_object('type', $7::text,"          \
    "  'user_id', coalesce(t.assigned_to, ''), 'task_id', t.id::text, 'event_id', $8::text,"       \
    "  'title', t.title, 'occurred_at', $9::text, 'assigned_by', t.created_by)::text,"             \
    "  t.updated_at_ms FROM t WHERE $7::text <> '')"                                               \
    " SELECT 'ok'::text, " T_COLS " FROM t"

static const tms_pg_stmt_t stmts[] = {
    {"task_create", CREATE_SQL},
    {"task_create_plain", CREATE_PLAIN_SQL},
    /* the same lock as tms_task_create (migration 1) takes, so that an older instance
     * still calling it and this one exclude each other too */
    {"task_create_lock",
     "SELECT pg_advisory_xact_lock(hashtextextended($1::text || '/' || $2::text, 0))"},
    {"task_get", "SELECT " COLS " FROM tasks WHERE id = $1"},
    {"task_list0", "SELECT " COLS " FROM tasks WHERE id > $1 ORDER BY id LIMIT $2"},
    {"task_list1", "SELECT " COLS " FROM tasks WHERE id > $1 AND assigned_to = $3"
                   " ORDER BY id LIMIT $2"},
    {"task_list2", "SELECT " COLS " FROM tasks WHERE id > $1 AND status = $3"
                   " ORDER BY id LIMIT $2"},
    {"task_list3", "SELECT " COLS " FROM tasks WHERE id > $1 AND assigned_to = $3"
                   " AND status = $4 ORDER BY id LIMIT $2"},
    {"task_update", "SELECT " OUT_COLS " FROM tms_task_update($1, $2, $3, $4, $5, $6, $7, $8,"
                    " $9, $10, $11, $12, $13, $14)"},
    {"task_delete", "SELECT " OUT_COLS " FROM tms_task_delete($1, $2)"},
    {"task_unassign", "UPDATE tasks SET assigned_to = NULL, version = version + 1,"
                      " updated_at_ms = $2 WHERE assigned_to = $1"},
    {"task_ping", "SELECT count(*) FROM schema_migrations"},
    /* the push log (migration 3): its bounds with every read, so they agree */
    {"task_events",
     "SELECT b.first, b.last, e.seq, e.type, e.at_ms, e.task_id, e.title, e.description,"
     " e.status, e.assigned_to, e.created_by, e.created_at_ms, e.updated_at_ms, e.version,"
     " e.prev_assigned_to, e.prev_status"
     " FROM (SELECT (SELECT min(seq) FROM task_events) AS first,"
     " (SELECT max(seq) FROM task_events) AS last) b"
     " LEFT JOIN LATERAL (SELECT * FROM task_events WHERE seq > $1 AND seq <= $2"
     " AND ($3 = '' OR assigned_to = $3 OR prev_assigned_to = $3)"
     " AND ($4 = '' OR status = $4 OR prev_status = $4)"
     " AND ($5 = 0 OR task_id = $5) ORDER BY seq LIMIT $6) e ON true ORDER BY e.seq"},
    {"task_events_purge",
     "DELETE FROM task_events WHERE seq < LEAST("
     " GREATEST(coalesce((SELECT seq FROM task_events WHERE at_ms >= $1 ORDER BY seq LIMIT 1),"
     "   (SELECT max(seq) FROM task_events)),"
     "  (SELECT max(seq) FROM task_events) - $2 + 1),"
     " (SELECT min(seq) FROM task_events) + $3)"},
};

static const char *const list_stmt[4] = {"task_list0", "task_list1", "task_list2", "task_list3"};

static const char *b(bool v)
{
    return v ? "t" : "f";
}

static int prepare(tms_msg_t *msg, tms_pg_call_t *c)
{
    tms_task_op_t *op = (tms_task_op_t *)msg;
    const char **v = c->values;
    switch (msg->op) {
    case TMS_TASK_CREATE:
        v[0] = op->task.title ? op->task.title : "";
        v[1] = op->task.description ? op->task.description : "";
        v[2] = op->task.status;
        v[3] = op->task.assigned_to;
        v[4] = op->task.created_by;
        v[5] = tms__pg_i64(c->num[0], sizeof(c->num[0]), op->task.created_at_ms);
        if (!op->idem_key[0]) {
            c->stmt = "task_create_plain";
            c->nparams = 9;
            v[6] = op->notify.enabled ? op->notify.type : "";
            v[7] = op->notify.event_id;
            v[8] = tms_format_time(op->task.created_at_ms, c->num[2], sizeof(c->num[2]));
            return 0;
        }
        c->stmt = "task_create";
        c->nparams = 12;
        c->first_stmt = "task_create_lock";
        c->first_nparams = 2;
        c->first_values[0] = op->task.created_by;
        c->first_values[1] = op->idem_key;
        v[6] = op->idem_key;
        v[7] = op->idem_hash;
        v[8] = tms__pg_i64(c->num[1], sizeof(c->num[1]), TMS_IDEMPOTENCY_TTL_MS);
        v[9] = op->notify.enabled ? op->notify.type : "";
        v[10] = op->notify.event_id;
        v[11] = tms_format_time(op->task.created_at_ms, c->num[2], sizeof(c->num[2]));
        return 0;
    case TMS_TASK_GET:
        c->stmt = "task_get";
        c->nparams = 1;
        c->read_only = true;
        v[0] = tms__pg_i64(c->num[0], sizeof(c->num[0]), op->id);
        return 0;
    case TMS_TASK_LIST: {
        int which = (op->filter_assigned_to[0] ? 1 : 0) | (op->filter_status[0] ? 2 : 0);
        int n = 2;
        c->stmt = list_stmt[which];
        c->read_only = true;
        v[0] = tms__pg_i64(c->num[0], sizeof(c->num[0]), op->after_id);
        /* one more row tells whether a next page exists */
        v[1] = tms__pg_i64(c->num[1], sizeof(c->num[1]), (long long)op->limit + 1);
        if (which & 1)
            v[n++] = op->filter_assigned_to;
        if (which & 2)
            v[n++] = op->filter_status;
        c->nparams = n;
        return 0;
    }
    case TMS_TASK_UPDATE:
        c->stmt = "task_update";
        c->nparams = 14;
        v[0] = tms__pg_i64(c->num[0], sizeof(c->num[0]), op->id);
        v[1] = tms__pg_i64(c->num[1], sizeof(c->num[1]), op->expected_version);
        v[2] = b(op->set_title);
        v[3] = op->task.title ? op->task.title : "";
        v[4] = b(op->set_description);
        v[5] = op->task.description ? op->task.description : "";
        v[6] = b(op->set_status);
        v[7] = op->task.status;
        v[8] = b(op->set_assigned_to);
        v[9] = op->task.assigned_to;
        v[10] = tms__pg_i64(c->num[2], sizeof(c->num[2]), op->task.updated_at_ms);
        v[11] = op->notify.enabled ? op->notify.type : "";
        v[12] = op->notify.event_id;
        v[13] = op->notify.by;
        return 0;
    case TMS_TASK_DELETE:
        c->stmt = "task_delete";
        c->nparams = 2;
        v[0] = tms__pg_i64(c->num[0], sizeof(c->num[0]), op->id);
        v[1] = tms__pg_i64(c->num[1], sizeof(c->num[1]), op->expected_version);
        return 0;
    case TMS_TASK_UNASSIGN_USER:
        c->solo = true;
        c->stmt = "task_unassign";
        c->nparams = 2;
        v[0] = op->user_id;
        /* As on SQLite: without a time from the caller, the store's clock. */
        v[1] = tms__pg_i64(c->num[0], sizeof(c->num[0]),
                           op->task.updated_at_ms ? op->task.updated_at_ms : tms_now_ms());
        return 0;
    case TMS_TASK_PING:
        c->read_only = true;
        c->stmt = "task_ping";
        c->nparams = 0;
        return 0;
    case TMS_TASK_EVENTS:
        c->read_only = true;
        c->stmt = "task_events";
        c->nparams = 6;
        v[0] = tms__pg_i64(c->num[0], sizeof(c->num[0]), op->after_id);
        v[1] =
            tms__pg_i64(c->num[1], sizeof(c->num[1]), op->upto_seq > 0 ? op->upto_seq : INT64_MAX);
        v[2] = op->filter_assigned_to;
        v[3] = op->filter_status;
        v[4] = tms__pg_i64(c->num[2], sizeof(c->num[2]), op->id);
        v[5] = tms__pg_i64(c->num[3], sizeof(c->num[3]), op->limit > 0 ? op->limit : 0);
        return 0;
    case TMS_TASK_EVENTS_PURGE:
        c->solo = true;
        c->stmt = "task_events_purge";
        c->nparams = 3;
        v[0] = tms__pg_i64(c->num[0], sizeof(c->num[0]), op->before_ms);
        v[1] = tms__pg_i64(c->num[1], sizeof(c->num[1]), op->keep_events > 0 ? op->keep_events : 1);
        v[2] = tms__pg_i64(c->num[2], sizeof(c->num[2]), op->limit > 0 ? op->limit : 10000);
        return 0;
    }
    tms_log_error("pg_bad_op", "port=tasks op=%d", msg->op);
    tms_error_set(&op->err, TMS_INTERNAL, "internal error");
    return -1;
}

/* A text column copied into arena ("" for NULL). */
static char *text_dup(tms_arena_t *arena, const PGresult *res, int r, int c)
{
    if (PQgetisnull(res, r, c))
        return tms_arena_strdup(arena, "");
    return tms_arena_strndup(arena, PQgetvalue(res, r, c), (size_t)PQgetlength(res, r, c));
}

/* Row r from column c0 on: the nine task columns, strings into arena. */
static void read_task(const PGresult *res, int r, int c0, tms_arena_t *arena, tms_task_t *t)
{
    t->id = tms__pg_int(res, r, c0);
    t->title = text_dup(arena, res, r, c0 + 1);
    t->description = text_dup(arena, res, r, c0 + 2);
    tms__pg_str(t->status, sizeof(t->status), res, r, c0 + 3);
    tms__pg_str(t->assigned_to, sizeof(t->assigned_to), res, r, c0 + 4);
    tms__pg_str(t->created_by, sizeof(t->created_by), res, r, c0 + 5);
    t->created_at_ms = tms__pg_int(res, r, c0 + 6);
    t->updated_at_ms = tms__pg_int(res, r, c0 + 7);
    t->version = tms__pg_int(res, r, c0 + 8);
}

/* The outcome of a write function: its o_st column decides. */
static void finish_write(tms_task_op_t *op, const PGresult *res)
{
    const char *st = PQntuples(res) == 1 ? PQgetvalue(res, 0, 0) : "";
    if (strcmp(st, "ok") == 0 || strcmp(st, "replayed") == 0) {
        read_task(res, 0, 1, op->arena, &op->task);
        op->replayed = st[0] == 'r';
    } else if (strcmp(st, "not_found") == 0) {
        tms_task_op_refuse(op, TMS_NOT_FOUND, TMS_TASK_NO_SUCH_TASK);
    } else if (strcmp(st, "conflict") == 0 && op->msg.op == TMS_TASK_CREATE) {
        tms_task_op_refuse(op, TMS_ALREADY_EXISTS, TMS_TASK_IDEMPOTENCY_REUSED);
    } else if (strcmp(st, "conflict") == 0) {
        if (op->msg.op == TMS_TASK_DELETE)
            read_task(res, 0, 1, op->arena, &op->task);
        tms_task_op_refuse(op, TMS_FAILED_PRECONDITION, TMS_TASK_VERSION_MISMATCH);
        op->current_version = tms__pg_int(res, 0, 9);
    } else if (strcmp(st, "gone") == 0) {
        tms_task_op_refuse(op, TMS_ALREADY_EXISTS, TMS_TASK_IDEMPOTENCY_GONE);
    } else {
        tms_log_error("pg_bad_result", "op=%s st=%s",
                      tms_store_op_name(TMS_STORE_TASKS, op->msg.op), st);
        tms_error_set(&op->err, TMS_INTERNAL, "internal error");
    }
}

/* Rows of task_events: the log's bounds in every row (one row of NULLs when nothing
 * matched), then an event from column 2 on. */
static void finish_events(tms_task_op_t *op, const PGresult *res)
{
    int n = PQntuples(res);
    if (n == 0)
        return;
    op->first_seq = PQgetisnull(res, 0, 0) ? 0 : tms__pg_int(res, 0, 0);
    op->last_seq = PQgetisnull(res, 0, 1) ? 0 : tms__pg_int(res, 0, 1);
    if (op->limit <= 0 || PQgetisnull(res, 0, 2))
        return;
    op->events = tms_arena_calloc(op->arena, (size_t)n, sizeof(tms_task_event_t));
    for (int r = 0; r < n && r < op->limit; r++) {
        tms_task_event_t *e = &op->events[op->nevents++];
        char type[16];
        e->seq = tms__pg_int(res, r, 2);
        tms__pg_str(type, sizeof(type), res, r, 3);
        e->type = tms_task_event_type_parse(type);
        e->at_ms = tms__pg_int(res, r, 4);
        read_task(res, r, 5, op->arena, &e->task);
        tms__pg_str(e->prev_assigned_to, sizeof(e->prev_assigned_to), res, r, 14);
        tms__pg_str(e->prev_status, sizeof(e->prev_status), res, r, 15);
    }
}

static void finish(tms_msg_t *msg, const PGresult *res)
{
    tms_task_op_t *op = (tms_task_op_t *)msg;
    int n = PQntuples(res);
    switch (msg->op) {
    case TMS_TASK_CREATE:
    case TMS_TASK_UPDATE:
    case TMS_TASK_DELETE:
        finish_write(op, res);
        break;
    case TMS_TASK_GET:
        if (n == 0)
            tms_task_op_refuse(op, TMS_NOT_FOUND, TMS_TASK_NO_SUCH_TASK);
        else
            read_task(res, 0, 0, op->arena, &op->task);
        break;
    case TMS_TASK_LIST: {
        size_t cap = op->limit > 0 ? (size_t)op->limit : 0;
        op->tasks = tms_arena_calloc(op->arena, cap ? cap : 1, sizeof(tms_task_t));
        op->ntasks = 0;
        for (int r = 0; r < n; r++) {
            if (op->ntasks == cap) {
                op->has_more = true;
                break;
            }
            read_task(res, r, 0, op->arena, &op->tasks[op->ntasks++]);
        }
        break;
    }
    case TMS_TASK_UNASSIGN_USER:
    case TMS_TASK_EVENTS_PURGE:
        op->count = atoll(PQcmdTuples((PGresult *)res));
        break;
    case TMS_TASK_EVENTS:
        finish_events(op, res);
        break;
    default: /* PING */
        break;
    }
}

const tms_pg_port_t tms__pg_tasks_port = {
    .name = "tasks",
    .stmts = stmts,
    .nstmts = sizeof(stmts) / sizeof(stmts[0]),
    .prepare = prepare,
    .finish = finish,
};
