/* Tests for src/io/store/pg/ against a real PostgreSQL (TMS_TEST_PG_URL; skipped with
 * exit code 77 when unset) of what only this adapter has: a bounded queue in front of
 * pipelined connections, a killed connection and reconnection, reads sharing a sync
 * (one aborted by another's error is sent again), and the start-up checks. The task store and
 * outbox ports themselves are tested on every adapter by tests/unit/ports/. Each run uses a fresh
 * database, dropped at the end. */
#include <libpq-fe.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <uv.h>

#include "core/alloc.h"
#include "core/metrics.h"
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

static tms_task_op_t *task_op(int kind)
{
    tms_task_op_t *op = tms_task_op_new(kind, NULL);
    op->msg.reply_to = replies;
    op->msg.cont = on_reply;
    op->err.code = TMS_UNKNOWN; /* the store must overwrite it */
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

static void on_closed(void *arg)
{
    (*(int *)arg)++;
}

/* Close both ports; pg goes with the last. */
static void close_pg(tms_pg_t **pg)
{
    int closed = 0;
    tms_task_store_t *tasks = tms_pg_task_store(*pg);
    tms_outbox_t *outbox = tms_pg_outbox(*pg);
    *pg = NULL;
    tasks->close(tasks, on_closed, &closed);
    outbox->close(outbox, on_closed, &closed);
    while (closed < 2)
        uv_run(&loop, UV_RUN_ONCE);
    uv_run(&loop, UV_RUN_NOWAIT);
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

/* Another session holding the tasks table locked (until it is finished), so that
 * TMS's operations on it stay in flight. */
static PGconn *lock_tasks(void)
{
    PGconn *locker = PQconnectdb(url);
    PGresult *r = PQexec(locker, "BEGIN; LOCK TABLE tasks IN ACCESS EXCLUSIVE MODE");
    CHECK(PQresultStatus(r) == PGRES_COMMAND_OK);
    PQclear(r);
    return locker;
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
    locker = lock_tasks();
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

static int nunavailable, nnotfound;
static void code_reply(tms_msg_t *msg)
{
    tms_task_op_t *op = (tms_task_op_t *)msg;
    nreplies++;
    nunavailable += op->err.code == TMS_UNAVAILABLE;
    nnotfound += op->err.code == TMS_NOT_FOUND;
    tms_task_op_free(&op);
}

/* Reads sent together on a connection share one sync (one implicit transaction): when
 * one of them fails (here its statement timeout, the table locked by another session),
 * the server aborts the others with it; they must be sent again, not failed. */
static void test_aborted_reads_are_sent_again(void)
{
    tms_pg_t *pg = open_pg((tms_pg_options_t){.pool_size = 1, .statement_timeout_ms = 2000});
    PGconn *locker;
    if (!pg)
        return;
    locker = lock_tasks();
    nreplies = nunavailable = nnotfound = 0;
    for (int i = 0; i < 4; i++) { /* one loop iteration: one group on the one connection */
        tms_task_op_t *op = task_op(TMS_TASK_GET);
        op->id = 1000 + i;
        op->msg.cont = code_reply;
        CHECK_EQ_INT(tms_task_store_submit(tms_pg_task_store(pg), &op), 0);
    }
    while (nreplies < 1)
        uv_run(&loop, UV_RUN_ONCE);
    CHECK_EQ_INT(nunavailable, 1); /* the first read's statement timeout */
    PQclear(PQexec(locker, "COMMIT"));
    PQfinish(locker);
    while (nreplies < 4)
        uv_run(&loop, UV_RUN_ONCE);
    CHECK_EQ_INT(nunavailable, 1);
    CHECK_EQ_INT(nnotfound, 3); /* the others were answered: no such task */
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

    RUN_TEST(test_full_queue);
    RUN_TEST(test_killed_connection);
    RUN_TEST(test_aborted_reads_are_sent_again);
    RUN_TEST(test_start_checks);

    tms_mailbox_free(&replies);
    uv_run(&loop, UV_RUN_DEFAULT);
    CHECK_EQ_INT(uv_loop_close(&loop), 0);
    tms_metrics_reset();
    snprintf(sql, sizeof(sql), "DROP DATABASE %s WITH (FORCE)", dbname);
    side(base_url, sql);
    TEST_EXIT();
}
