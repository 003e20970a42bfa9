/* Tests for src/io/store/pg/ against a real PostgreSQL (TMS_TEST_PG_URL; skipped with
 * exit code 77 when unset): every task store and outbox op, idempotency, version
 * checks, a full queue, a killed connection and the start-up checks. Each run uses a
 * fresh database, dropped at the end. */
#include <libpq-fe.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <uv.h>

#include "core/alloc.h"
#include "core/events.h"
#include "core/metrics.h"
#include "core/outbox.h"
#include "core/task_store.h"
#include "io/store/pg/pg.h"
#include "test.h"

static uv_loop_t loop;
static tms_mailbox_t *replies;
static char base_url[512], url[600], dbname[64];

static void on_request(void *owner, tms_msg_t *msg)
{
    (void)owner;
    free(msg);
}

static void on_reply(tms_msg_t *msg)
{
    *(tms_msg_t **)msg->ctx = msg;
}

static void free_task_op(tms_msg_t *msg)
{
    tms_task_op_t *op = (tms_task_op_t *)msg;
    tms_task_op_free(&op);
}

static tms_task_op_t *task_op(int kind)
{
    tms_task_op_t *op = tms_new(tms_task_op_t);
    op->msg.op = kind;
    op->msg.reply_to = replies;
    op->msg.cont = on_reply;
    op->msg.free_fn = free_task_op;
    op->err.code = TMS_UNKNOWN; /* the store must overwrite it */
    return op;
}

static tms_outbox_op_t *box_op(int kind)
{
    tms_outbox_op_t *op = tms_outbox_op_new(kind);
    op->msg.reply_to = replies;
    op->msg.cont = on_reply;
    op->err.code = TMS_UNKNOWN;
    return op;
}

/* Submits and runs the loop until the reply; returns the op (caller frees). */
static tms_task_op_t *run_task(tms_pg_t *pg, tms_task_op_t *op)
{
    tms_msg_t *got = NULL;
    op->msg.ctx = &got;
    CHECK_EQ_INT(tms_task_store_submit(tms_pg_task_store(pg), &op), 0);
    while (!got)
        uv_run(&loop, UV_RUN_ONCE);
    return (tms_task_op_t *)got;
}

static tms_outbox_op_t *run_box(tms_pg_t *pg, tms_outbox_op_t *op)
{
    tms_msg_t *got = NULL;
    op->msg.ctx = &got;
    CHECK_EQ_INT(tms_outbox_submit(tms_pg_outbox(pg), &op), 0);
    while (!got)
        uv_run(&loop, UV_RUN_ONCE);
    return (tms_outbox_op_t *)got;
}

static const char *U1 = "aaaaaaaaaaaaaaaaaaaaaaaa", *U2 = "bbbbbbbbbbbbbbbbbbbbbbbb";

static tms_task_op_t *create_op(const char *title, const char *assignee)
{
    tms_task_op_t *op = task_op(TMS_TASK_CREATE);
    op->task.title = tms_strdup(title);
    op->task.description = tms_strdup("desc");
    snprintf(op->task.status, sizeof(op->task.status), "open");
    snprintf(op->task.assigned_to, sizeof(op->task.assigned_to), "%s", assignee);
    snprintf(op->task.created_by, sizeof(op->task.created_by), "%s", U1);
    op->task.created_at_ms = op->task.updated_at_ms = 1764338400000;
    if (assignee[0]) {
        op->notify.enabled = true;
        snprintf(op->notify.type, sizeof(op->notify.type), "task_created");
        tms_event_id_new(op->notify.event_id);
    }
    return op;
}

static int64_t create(tms_pg_t *pg, const char *title, const char *assignee)
{
    tms_task_op_t *op = run_task(pg, create_op(title, assignee));
    int64_t id = op->task.id;
    CHECK_EQ_INT(op->err.code, TMS_OK);
    CHECK_EQ_INT(op->task.version, 1);
    tms_task_op_free(&op);
    return id;
}

static long long pending(tms_pg_t *pg)
{
    tms_outbox_op_t *op = run_box(pg, box_op(TMS_OUTBOX_PENDING));
    long long n = op->err.code == TMS_OK ? op->count : -1;
    tms_outbox_op_free(&op);
    return n;
}

/* Blocking side connection: runs sql on `db` and returns the first value as int. */
static long long side(const char *u, const char *sql)
{
    PGconn *c = PQconnectdb(u);
    PGresult *r;
    long long v = -1;
    CHECK(PQstatus(c) == CONNECTION_OK);
    r = PQexec(c, sql);
    if (PQresultStatus(r) == PGRES_TUPLES_OK && PQntuples(r) > 0)
        v = atoll(PQgetvalue(r, 0, 0));
    else if (PQresultStatus(r) == PGRES_COMMAND_OK)
        v = 0;
    else
        fprintf(stderr, "side: %s: %s", sql, PQerrorMessage(c));
    PQclear(r);
    PQfinish(c);
    return v;
}

static tms_pg_t *open_pg(tms_pg_options_t o)
{
    char err[512] = "";
    tms_pg_t *pg;
    o.migrate = true;
    pg = tms_pg_open(&loop, url, &o, err, sizeof(err));
    CHECK(pg != NULL);
    if (!pg) {
        fprintf(stderr, "open: %s\n", err);
        return NULL;
    }
    for (int i = 0; i < 200 && tms_pg_connections_up(pg) < (o.pool_size ? o.pool_size : 4); i++) {
        uv_run(&loop, UV_RUN_NOWAIT);
        usleep(10000);
    }
    CHECK_EQ_INT(tms_pg_connections_up(pg), o.pool_size ? o.pool_size : 4);
    return pg;
}

static void close_pg(tms_pg_t **pg)
{
    tms_pg_close(pg);
    CHECK(*pg == NULL);
    uv_run(&loop, UV_RUN_NOWAIT);
}

static void test_task_ops(void)
{
    tms_pg_t *pg = open_pg((tms_pg_options_t){0});
    tms_task_op_t *op;
    tms_outbox_op_t *bo;
    int64_t id, ids[5];
    if (!pg)
        return;
    side(url, "TRUNCATE tasks, outbox, inbox, idempotency");

    id = create(pg, "first", U2);
    CHECK(id > 0);
    CHECK_EQ_INT(pending(pg), 1);
    bo = box_op(TMS_OUTBOX_FETCH);
    bo->limit = 10;
    bo = run_box(pg, bo);
    CHECK_EQ_INT(bo->err.code, TMS_OK);
    CHECK_EQ_INT(bo->nevents, 1);
    if (bo->nevents == 1) {
        char want[64];
        snprintf(want, sizeof(want), "\"%lld\"", (long long)id);
        CHECK_EQ_STR(bo->events[0].topic, "notifications");
        CHECK(strstr(bo->events[0].payload, "\"task_created\"") != NULL);
        CHECK(strstr(bo->events[0].payload, want) != NULL);
        CHECK(strstr(bo->events[0].payload, "2025-11-28T14:00:00.000Z") != NULL);
        {
            tms_outbox_op_t *m = box_op(TMS_OUTBOX_MARK_SENT);
            m->seqs = tms_calloc(1, sizeof(int64_t));
            m->seqs[0] = bo->events[0].seq;
            m->nseqs = 1;
            m = run_box(pg, m);
            CHECK_EQ_INT(m->err.code, TMS_OK);
            tms_outbox_op_free(&m);
        }
    }
    tms_outbox_op_free(&bo);
    CHECK_EQ_INT(pending(pg), 0);

    op = task_op(TMS_TASK_GET);
    op->id = id;
    op = run_task(pg, op);
    CHECK_EQ_INT(op->err.code, TMS_OK);
    CHECK_EQ_STR(op->task.title, "first");
    CHECK_EQ_STR(op->task.assigned_to, U2);
    CHECK_EQ_STR(op->task.status, "open");
    tms_task_op_free(&op);
    op = task_op(TMS_TASK_GET);
    op->id = id + 1000;
    op = run_task(pg, op);
    CHECK_EQ_INT(op->err.code, TMS_NOT_FOUND);
    tms_task_op_free(&op);

    /* update: wrong version, then right version with an event */
    op = task_op(TMS_TASK_UPDATE);
    op->id = id;
    op->expected_version = 7;
    op->set_status = true;
    snprintf(op->task.status, sizeof(op->task.status), "closed");
    op = run_task(pg, op);
    CHECK_EQ_INT(op->err.code, TMS_FAILED_PRECONDITION);
    tms_task_op_free(&op);
    op = task_op(TMS_TASK_UPDATE);
    op->id = id;
    op->expected_version = 1;
    op->set_status = op->set_assigned_to = true;
    snprintf(op->task.status, sizeof(op->task.status), "in progress");
    snprintf(op->task.assigned_to, sizeof(op->task.assigned_to), "%s", U1);
    op->task.updated_at_ms = 1764338500000;
    op->notify.enabled = true;
    snprintf(op->notify.type, sizeof(op->notify.type), "task_assigned");
    tms_event_id_new(op->notify.event_id);
    op = run_task(pg, op);
    CHECK_EQ_INT(op->err.code, TMS_OK);
    CHECK_EQ_INT(op->task.version, 2);
    CHECK_EQ_STR(op->task.title, "first");
    CHECK_EQ_STR(op->task.status, "in progress");
    CHECK_EQ_STR(op->task.assigned_to, U1);
    CHECK_EQ_INT(op->task.updated_at_ms, 1764338500000);
    tms_task_op_free(&op);
    CHECK_EQ_INT(pending(pg), 1);
    op = task_op(TMS_TASK_UPDATE);
    op->id = id + 1000;
    op->set_title = true;
    op->task.title = tms_strdup("x");
    op = run_task(pg, op);
    CHECK_EQ_INT(op->err.code, TMS_NOT_FOUND);
    tms_task_op_free(&op);

    /* list: pagination and filters */
    for (int i = 0; i < 5; i++)
        ids[i] = create(pg, "page", i % 2 ? U2 : "");
    op = task_op(TMS_TASK_LIST);
    op->limit = 2;
    op = run_task(pg, op);
    CHECK_EQ_INT(op->err.code, TMS_OK);
    CHECK_EQ_INT(op->ntasks, 2);
    CHECK(op->has_more);
    if (op->ntasks == 2) {
        CHECK_EQ_INT(op->tasks[0].id, id);
        CHECK_EQ_INT(op->tasks[1].id, ids[0]);
    }
    tms_task_op_free(&op);
    op = task_op(TMS_TASK_LIST);
    op->limit = 10;
    op->after_id = ids[2];
    op = run_task(pg, op);
    CHECK_EQ_INT(op->ntasks, 2);
    CHECK(!op->has_more);
    tms_task_op_free(&op);
    op = task_op(TMS_TASK_LIST);
    op->limit = 10;
    snprintf(op->filter_assigned_to, sizeof(op->filter_assigned_to), "%s", U2);
    op = run_task(pg, op);
    CHECK_EQ_INT(op->ntasks, 2);
    tms_task_op_free(&op);
    op = task_op(TMS_TASK_LIST);
    op->limit = 10;
    snprintf(op->filter_status, sizeof(op->filter_status), "in progress");
    snprintf(op->filter_assigned_to, sizeof(op->filter_assigned_to), "%s", U1);
    op = run_task(pg, op);
    CHECK_EQ_INT(op->ntasks, 1);
    tms_task_op_free(&op);

    /* unassign */
    op = task_op(TMS_TASK_UNASSIGN_USER);
    snprintf(op->user_id, sizeof(op->user_id), "%s", U2);
    op->task.updated_at_ms = 1764338600000;
    op = run_task(pg, op);
    CHECK_EQ_INT(op->err.code, TMS_OK);
    CHECK_EQ_INT(op->count, 2);
    tms_task_op_free(&op);
    op = task_op(TMS_TASK_GET);
    op->id = ids[1];
    op = run_task(pg, op);
    CHECK_EQ_STR(op->task.assigned_to, "");
    CHECK_EQ_INT(op->task.version, 2);
    tms_task_op_free(&op);

    /* delete: wrong version, right version, gone; ids are never reused */
    op = task_op(TMS_TASK_DELETE);
    op->id = ids[4];
    op->expected_version = 3;
    op = run_task(pg, op);
    CHECK_EQ_INT(op->err.code, TMS_FAILED_PRECONDITION);
    tms_task_op_free(&op);
    op = task_op(TMS_TASK_DELETE);
    op->id = ids[4];
    op = run_task(pg, op);
    CHECK_EQ_INT(op->err.code, TMS_OK);
    CHECK_EQ_INT(op->task.id, ids[4]);
    tms_task_op_free(&op);
    op = task_op(TMS_TASK_DELETE);
    op->id = ids[4];
    op = run_task(pg, op);
    CHECK_EQ_INT(op->err.code, TMS_NOT_FOUND);
    tms_task_op_free(&op);
    CHECK(create(pg, "after delete", "") > ids[4]);

    op = run_task(pg, task_op(TMS_TASK_PING));
    CHECK_EQ_INT(op->err.code, TMS_OK);
    tms_task_op_free(&op);
    close_pg(&pg);
}

static void test_idempotency(void)
{
    tms_pg_t *pg = open_pg((tms_pg_options_t){.pool_size = 2});
    tms_task_op_t *op;
    int64_t id;
    long long before;
    if (!pg)
        return;
    before = pending(pg);
    op = create_op("idem", U2);
    snprintf(op->idem_key, sizeof(op->idem_key), "key-1");
    snprintf(op->idem_hash, sizeof(op->idem_hash), "%064d", 1);
    op = run_task(pg, op);
    CHECK_EQ_INT(op->err.code, TMS_OK);
    CHECK(!op->replayed);
    id = op->task.id;
    tms_task_op_free(&op);
    op = create_op("idem", U2);
    snprintf(op->idem_key, sizeof(op->idem_key), "key-1");
    snprintf(op->idem_hash, sizeof(op->idem_hash), "%064d", 1);
    op = run_task(pg, op);
    CHECK_EQ_INT(op->err.code, TMS_OK);
    CHECK(op->replayed);
    CHECK_EQ_INT(op->task.id, id);
    tms_task_op_free(&op);
    op = create_op("other", U2);
    snprintf(op->idem_key, sizeof(op->idem_key), "key-1");
    snprintf(op->idem_hash, sizeof(op->idem_hash), "%064d", 2);
    op = run_task(pg, op);
    CHECK_EQ_INT(op->err.code, TMS_ALREADY_EXISTS);
    tms_task_op_free(&op);
    CHECK_EQ_INT(pending(pg), before + 1); /* one event: no second email */
    CHECK_EQ_INT(side(url, "SELECT count(*) FROM tasks WHERE title = 'idem'"), 1);
    close_pg(&pg);
}

static void test_outbox_inbox(void)
{
    tms_pg_t *pg = open_pg((tms_pg_options_t){.pool_size = 1});
    tms_outbox_op_t *op;
    long long before;
    if (!pg)
        return;
    before = pending(pg);
    op = box_op(TMS_OUTBOX_ADD);
    tms_event_id_new(op->event.event_id);
    snprintf(op->event.topic, sizeof(op->event.topic), "compensate_user_deletion");
    snprintf(op->event.key, sizeof(op->event.key), "%s", U1);
    op->event.payload = tms_strdup("{\"x\":1}");
    op = run_box(pg, op);
    CHECK_EQ_INT(op->err.code, TMS_OK);
    tms_outbox_op_free(&op);
    CHECK_EQ_INT(pending(pg), before + 1);

    op = box_op(TMS_INBOX_SEEN);
    snprintf(op->consumer, sizeof(op->consumer), "tasks");
    snprintf(op->event_id, sizeof(op->event_id), "e-1");
    op = run_box(pg, op);
    CHECK_EQ_INT(op->err.code, TMS_OK);
    CHECK(!op->seen);
    tms_outbox_op_free(&op);
    for (int i = 0; i < 2; i++) { /* idempotent */
        op = box_op(TMS_INBOX_RECORD);
        snprintf(op->consumer, sizeof(op->consumer), "tasks");
        snprintf(op->event_id, sizeof(op->event_id), "e-1");
        op = run_box(pg, op);
        CHECK_EQ_INT(op->err.code, TMS_OK);
        tms_outbox_op_free(&op);
    }
    op = box_op(TMS_INBOX_SEEN);
    snprintf(op->consumer, sizeof(op->consumer), "tasks");
    snprintf(op->event_id, sizeof(op->event_id), "e-1");
    op = run_box(pg, op);
    CHECK(op->seen);
    tms_outbox_op_free(&op);
    close_pg(&pg);
}

static int nreplies;
static void count_reply(tms_msg_t *msg)
{
    tms_task_op_t *op = (tms_task_op_t *)msg;
    nreplies++;
    tms_task_op_free(&op);
}

static void test_full_queue(void)
{
    tms_pg_t *pg =
        open_pg((tms_pg_options_t){.pool_size = 1, .pipeline_depth = 1, .queue_capacity = 2});
    int ok = 0, full = 0;
    if (!pg)
        return;
    nreplies = 0;
    for (int i = 0; i < 5; i++) {
        tms_task_op_t *op = task_op(TMS_TASK_PING);
        op->msg.cont = count_reply;
        int rc = tms_task_store_submit(tms_pg_task_store(pg), &op);
        if (rc == 0)
            ok++;
        else if (rc == -TMS_EFULL)
            full++;
        if (op)
            tms_task_op_free(&op);
    }
    CHECK_EQ_INT(ok, 3); /* one in flight, two queued */
    CHECK_EQ_INT(full, 2);
    while (nreplies < ok)
        uv_run(&loop, UV_RUN_ONCE);
    close_pg(&pg);
}

static void test_killed_connection(void)
{
    tms_pg_t *pg = open_pg((tms_pg_options_t){.pool_size = 1});
    tms_task_op_t *op;
    tms_msg_t *got = NULL;
    PGconn *locker;
    PGresult *r;
    if (!pg)
        return;
    /* Hold a lock so that the op stays in flight, then kill TMS's backend. */
    locker = PQconnectdb(url);
    r = PQexec(locker, "BEGIN; LOCK TABLE tasks IN ACCESS EXCLUSIVE MODE");
    CHECK(PQresultStatus(r) == PGRES_COMMAND_OK);
    PQclear(r);
    op = task_op(TMS_TASK_GET);
    op->id = 1;
    op->msg.ctx = &got;
    CHECK_EQ_INT(tms_task_store_submit(tms_pg_task_store(pg), &op), 0);
    for (int i = 0; i < 20; i++) {
        uv_run(&loop, UV_RUN_NOWAIT);
        usleep(5000);
    }
    CHECK(got == NULL);
    r = PQexec(locker, "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                       " WHERE datname = current_database() AND pid <> pg_backend_pid()");
    CHECK(PQresultStatus(r) == PGRES_TUPLES_OK);
    PQclear(r);
    while (!got)
        uv_run(&loop, UV_RUN_ONCE);
    op = (tms_task_op_t *)got;
    CHECK_EQ_INT(op->err.code, TMS_UNAVAILABLE);
    tms_task_op_free(&op);
    PQclear(PQexec(locker, "ROLLBACK"));
    PQfinish(locker);
    /* reconnects with backoff; the next op succeeds */
    for (int i = 0; i < 300 && tms_pg_connections_up(pg) < 1; i++) {
        uv_run(&loop, UV_RUN_NOWAIT);
        usleep(10000);
    }
    CHECK_EQ_INT(tms_pg_connections_up(pg), 1);
    op = run_task(pg, task_op(TMS_TASK_PING));
    CHECK_EQ_INT(op->err.code, TMS_OK);
    tms_task_op_free(&op);
    close_pg(&pg);
}

static void test_start_checks(void)
{
    char err[512] = "", sql[160];
    tms_pg_t *pg;
    /* migrating twice is a no-op */
    CHECK_EQ_INT(tms_pg_migrate_sync(url, err, sizeof(err)), 0);
    CHECK_EQ_INT(tms_pg_migrate_sync(url, err, sizeof(err)), 0);
    /* a schema newer than this binary is refused */
    side(url, "INSERT INTO schema_migrations (version) VALUES (99)");
    CHECK(tms_pg_migrate_sync(url, err, sizeof(err)) != 0);
    CHECK(strstr(err, "newer") != NULL);
    side(url, "DELETE FROM schema_migrations WHERE version = 99");
    /* synchronous_commit off: refused unless accepted */
    snprintf(sql, sizeof(sql), "ALTER DATABASE %s SET synchronous_commit = off", dbname);
    side(base_url, sql);
    pg = tms_pg_open(&loop, url, &(tms_pg_options_t){.pool_size = 1}, err, sizeof(err));
    CHECK(pg == NULL);
    CHECK(strstr(err, "synchronous_commit") != NULL);
    pg = tms_pg_open(&loop, url, &(tms_pg_options_t){.pool_size = 1, .accept_async_commit = true},
                     err, sizeof(err));
    CHECK(pg != NULL);
    close_pg(&pg);
    snprintf(sql, sizeof(sql), "ALTER DATABASE %s RESET synchronous_commit", dbname);
    side(base_url, sql);
    /* an unreachable server fails open with a reason */
    pg = tms_pg_open(&loop, "postgres://127.0.0.1:1/x?connect_timeout=2", NULL, err, sizeof(err));
    CHECK(pg == NULL);
    CHECK(strstr(err, "cannot connect") != NULL);
}

int main(void)
{
    const char *env = getenv("TMS_TEST_PG_URL");
    char sql[128], *slash, *q;
    if (!env || !env[0]) {
        printf("pg_test: TMS_TEST_PG_URL not set; skipped\n");
        return 77;
    }
    snprintf(base_url, sizeof(base_url), "%s", env);
    /* same server, a fresh database: replace the path of the URL */
    snprintf(dbname, sizeof(dbname), "tms_unit_%d", (int)getpid());
    slash = strchr(strstr(base_url, "://") + 3, '/');
    q = strchr(base_url, '?');
    snprintf(url, sizeof(url), "%.*s/%s%s", slash ? (int)(slash - base_url) : (int)strlen(base_url),
             base_url, dbname, q ? q : "");
    snprintf(sql, sizeof(sql), "CREATE DATABASE %s", dbname);
    if (side(base_url, sql) != 0)
        return EXIT_FAILURE;
    uv_loop_init(&loop);
    replies = tms_mailbox_new(&loop, "test", 64, on_request, NULL);

    RUN_TEST(test_task_ops);
    RUN_TEST(test_idempotency);
    RUN_TEST(test_outbox_inbox);
    RUN_TEST(test_full_queue);
    RUN_TEST(test_killed_connection);
    RUN_TEST(test_start_checks);

    tms_mailbox_free(&replies);
    uv_run(&loop, UV_RUN_DEFAULT);
    CHECK_EQ_INT(uv_loop_close(&loop), 0);
    tms_metrics_reset();
    snprintf(sql, sizeof(sql), "DROP DATABASE %s WITH (FORCE)", dbname);
    side(base_url, sql);
    TEST_EXIT();
}
