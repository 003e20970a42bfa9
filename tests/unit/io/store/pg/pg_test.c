/* Tests for src/io/store/pg/ against a real PostgreSQL (TMS_TEST_PG_URL; skipped with
 * exit code 77 when unset) of what only this adapter has: a bounded queue in front of
 * pipelined connections, a killed connection and reconnection, reads sharing a sync
 * (one aborted by another's error is sent again), writes sharing a transaction (group
 * commit: a failed group's other writes are sent again alone), and the start-up
 * checks. The task store and outbox ports themselves are tested on every adapter by
 * tests/unit/ports/. Each run uses a fresh database, dropped at the end. */
#include <libpq-fe.h>
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
#include "io/store/pg/pg.h"
#include "test.h"
#include "test_loop.h"

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

typedef struct pool_want {
    tms_pg_t *pg;
    int n;
} pool_want_t;

static bool pool_up(void *arg)
{
    const pool_want_t *w = arg;
    return tms_pg_connections_up(w->pg) >= w->n;
}

/* Runs the loop until n of pg's connections are up, ms at most. */
static void wait_connections(tms_pg_t *pg, int n, int ms)
{
    tms_test_run_until(&loop, pool_up, &(pool_want_t){pg, n}, ms);
}

static tms_pg_t *open_pg(tms_pg_options_t o)
{
    char err[512] = "";
    int want = o.pool_size ? o.pool_size : 4;
    tms_pg_t *pg;
    o.migrate = true;
    pg = tms_pg_open(&loop, url, &o, err, sizeof(err));
    CHECK(pg != NULL);
    if (!pg) {
        fprintf(stderr, "open: %s\n", err);
        return NULL;
    }
    wait_connections(pg, want, 2000);
    CHECK_EQ_INT(tms_pg_connections_up(pg), want);
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
    wait_connections(pg, 1, 3000);
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

static int nok, ninternal;
static void create_reply(tms_msg_t *msg)
{
    tms_task_op_t *op = (tms_task_op_t *)msg;
    nreplies++;
    nok += op->err.code == TMS_OK;
    nunavailable += op->err.code == TMS_UNAVAILABLE;
    ninternal += op->err.code == TMS_INTERNAL;
    tms_task_op_free(&op);
}

static void submit_create_for(tms_pg_t *pg, const char *title, const char *assignee)
{
    tms_task_op_t *op = task_op(TMS_TASK_CREATE);
    op->task.title = tms_arena_strdup(op->arena, title);
    snprintf(op->task.assigned_to, sizeof(op->task.assigned_to), "%s", assignee);
    op->task.description = tms_arena_strdup(op->arena, "d");
    snprintf(op->task.status, sizeof(op->task.status), "open");
    snprintf(op->task.created_by, sizeof(op->task.created_by), "u1");
    op->task.created_at_ms = op->task.updated_at_ms = 1700000000000;
    op->msg.cont = create_reply;
    CHECK_EQ_INT(tms_task_store_submit(tms_pg_task_store(pg), &op), 0);
}

static void submit_create(tms_pg_t *pg, const char *title)
{
    submit_create_for(pg, title, "");
}

/* Submits creates of these titles in one loop iteration (so one group, on a pool of
 * one connection) and runs the loop until every one is answered. */
static void create_together(tms_pg_t *pg, const char *const *titles, int n)
{
    nreplies = nok = nunavailable = ninternal = 0;
    for (int i = 0; i < n; i++)
        submit_create(pg, titles[i]);
    while (nreplies < n)
        uv_run(&loop, UV_RUN_ONCE);
}

static long long count_titled(const char *title)
{
    char sql[160];
    snprintf(sql, sizeof(sql), "SELECT count(*) FROM tasks WHERE title = '%s'", title);
    return side(url, sql);
}

/* Writes sent together on a connection are one transaction: one commit (and one WAL
 * flush) for all, the point of the group; before, each was its own. */
static void test_writes_sent_together_commit_together(void)
{
    static const char *const titles[] = {"g1", "g1", "g1", "g1", "g1", "g1"};
    tms_pg_t *pg = open_pg((tms_pg_options_t){.pool_size = 1});
    if (!pg)
        return;
    create_together(pg, titles, 6);
    CHECK_EQ_INT(nok, 6);
    CHECK_EQ_INT(count_titled("g1"), 6);
    CHECK_EQ_INT(side(url, "SELECT count(DISTINCT xmin::text) FROM tasks WHERE title = 'g1'"), 1);
    close_pg(&pg);
}

/* Writes submitted while a group is committing wait in the queue, each in a loop
 * iteration of its own here, and go out together as the next group when it is done. */
static void test_writes_wait_for_the_group_in_flight(void)
{
    tms_pg_t *pg = open_pg((tms_pg_options_t){.pool_size = 1});
    PGconn *locker;
    if (!pg)
        return;
    locker = lock_tasks(); /* keeps the first group in flight */
    nreplies = nok = 0;
    submit_create(pg, "first");
    for (int i = 0; i < 4; i++) {
        uv_run(&loop, UV_RUN_NOWAIT);
        usleep(5000);
        submit_create(pg, "next");
    }
    for (int i = 0; i < 4; i++) {
        uv_run(&loop, UV_RUN_NOWAIT);
        usleep(5000);
    }
    CHECK_EQ_INT(nreplies, 0);
    PQclear(PQexec(locker, "COMMIT"));
    PQfinish(locker);
    while (nreplies < 5)
        uv_run(&loop, UV_RUN_ONCE);
    CHECK_EQ_INT(nok, 5);
    CHECK_EQ_INT(count_titled("next"), 4);
    CHECK_EQ_INT(side(url, "SELECT count(DISTINCT xmin::text) FROM tasks WHERE title = 'next'"), 1);
    close_pg(&pg);
}

/* Reads are not held in the queue behind writes waiting for a group to commit: they
 * go out at once (pipelined), so they do not count against the queue's bound. Here one
 * create is in flight (held by a lock) and another waits for it in a queue of 2. */
static void test_reads_pass_writes_waiting_for_a_group(void)
{
    tms_pg_t *pg = open_pg((tms_pg_options_t){.pool_size = 1, .queue_capacity = 2});
    PGconn *locker;
    int accepted = 0;
    if (!pg)
        return;
    locker = lock_tasks();
    nreplies = nok = 0;
    submit_create(pg, "blocked");
    uv_run(&loop, UV_RUN_NOWAIT); /* sent: its group is in flight */
    submit_create(pg, "waiting");
    for (int i = 0; i < 3; i++) {
        tms_task_op_t *op = task_op(TMS_TASK_PING);
        op->msg.cont = count_reply;
        accepted += tms_task_store_submit(tms_pg_task_store(pg), &op) == 0;
        if (op)
            tms_task_op_free(&op);
    }
    CHECK_EQ_INT(accepted, 3);
    PQclear(PQexec(locker, "COMMIT"));
    PQfinish(locker);
    while (nreplies < 2 + accepted)
        uv_run(&loop, UV_RUN_ONCE);
    CHECK_EQ_INT(nok, 2);
    close_pg(&pg);
}

/* A write that may touch many rows (here unassigning a user's tasks) goes alone, in a
 * transaction of its own, not in the group of the creates sent with it. */
static void test_solo_writes_go_alone(void)
{
    tms_pg_t *pg = open_pg((tms_pg_options_t){.pool_size = 1});
    tms_task_op_t *op;
    if (!pg)
        return;
    nreplies = nok = 0;
    submit_create_for(pg, "assigned", "u9");
    while (nreplies < 1)
        uv_run(&loop, UV_RUN_ONCE);
    submit_create(pg, "s1");
    op = task_op(TMS_TASK_UNASSIGN_USER);
    snprintf(op->user_id, sizeof(op->user_id), "u9");
    op->msg.cont = count_reply;
    CHECK_EQ_INT(tms_task_store_submit(tms_pg_task_store(pg), &op), 0);
    submit_create(pg, "s2");
    while (nreplies < 4)
        uv_run(&loop, UV_RUN_ONCE);
    CHECK_EQ_INT(nok, 3);
    CHECK_EQ_INT(side(url, "SELECT count(*) FROM tasks WHERE title = 'assigned'"
                           " AND assigned_to IS NULL"),
                 1);
    CHECK_EQ_INT(side(url, "SELECT count(DISTINCT xmin::text) FROM tasks"
                           " WHERE title IN ('assigned', 's1', 's2')"),
                 3);
    close_pg(&pg);
}

/* A trigger failing the creates of some titles: 'fails' always (an error of the op's
 * own), 'deadlock-once' the first time with a deadlock's SQLSTATE (what the group's
 * longer transaction can cause, so it is tried again alone; a sequence counts, since
 * it is not rolled back with the group). */
static void add_failing_trigger(void)
{
    CHECK_EQ_INT(side(url, "CREATE SEQUENCE gc_deadlocks"), 0);
    CHECK_EQ_INT(side(url, "CREATE SEQUENCE gc_fail_tries"), 0);
    CHECK_EQ_INT(side(url, "CREATE FUNCTION gc_fail() RETURNS trigger LANGUAGE plpgsql AS $$"
                           " BEGIN"
                           " IF NEW.title = 'fails' THEN PERFORM nextval('gc_fail_tries');"
                           " RAISE EXCEPTION 'refused by a test'; END IF;"
                           " IF NEW.title = 'deadlock-once' AND nextval('gc_deadlocks') = 1 THEN"
                           "  RAISE EXCEPTION 'simulated deadlock' USING ERRCODE = '40P01'; END IF;"
                           " RETURN NEW; END $$"),
                 0);
    CHECK_EQ_INT(side(url, "CREATE TRIGGER gc_fail BEFORE INSERT ON tasks"
                           " FOR EACH ROW EXECUTE FUNCTION gc_fail()"),
                 0);
}

static void drop_failing_trigger(void)
{
    side(url, "DROP TRIGGER gc_fail ON tasks");
    side(url, "DROP FUNCTION gc_fail()");
    side(url, "DROP SEQUENCE gc_deadlocks");
    side(url, "DROP SEQUENCE gc_fail_tries");
}

/* One write of a group fails: the server rolls the whole group back, so the write
 * before it (whose statement had succeeded) and the one after it (aborted) are sent
 * again alone and committed once each; only the failing one is answered with its
 * error. */
static void test_failed_write_fails_alone(void)
{
    static const char *const titles[] = {"before", "fails", "after"};
    tms_counter_t *retried = tms_metrics_counter("tms_pg_write_groups_retried_total", "", "");
    uint64_t retried0 = tms_counter_value(retried);
    tms_pg_t *pg = open_pg((tms_pg_options_t){.pool_size = 1});
    if (!pg)
        return;
    add_failing_trigger();
    create_together(pg, titles, 3);
    CHECK_EQ_INT(nok, 2);
    CHECK_EQ_INT(ninternal, 1);
    CHECK_EQ_INT(count_titled("before"), 1);
    CHECK_EQ_INT(count_titled("fails"), 0);
    CHECK_EQ_INT(count_titled("after"), 1);
    /* the failing write ran once: its own error answered it, it was not sent again */
    CHECK_EQ_INT(side(url, "SELECT CASE WHEN is_called THEN last_value ELSE 0 END"
                           " FROM gc_fail_tries"),
                 1);
    CHECK_EQ_INT((int)(tms_counter_value(retried) - retried0), 1);
    drop_failing_trigger();
    close_pg(&pg);
}

/* A deadlock (or serialization failure) fails the group, not its op: every write of
 * the group is sent again alone, the one that met it included, and all commit; so is a
 * write that went out alone. */
static void test_deadlocked_group_is_sent_again(void)
{
    static const char *const titles[] = {"d-before", "deadlock-once", "d-after"};
    tms_pg_t *pg = open_pg((tms_pg_options_t){.pool_size = 1});
    if (!pg)
        return;
    add_failing_trigger();
    create_together(pg, titles, 3);
    CHECK_EQ_INT(nok, 3);
    CHECK_EQ_INT(count_titled("d-before"), 1);
    CHECK_EQ_INT(count_titled("deadlock-once"), 1);
    CHECK_EQ_INT(count_titled("d-after"), 1);
    /* a write alone (a group of one) is sent again too */
    CHECK_EQ_INT(side(url, "ALTER SEQUENCE gc_deadlocks RESTART"), 0);
    create_together(pg, titles + 1, 1);
    CHECK_EQ_INT(nok, 1);
    CHECK_EQ_INT(count_titled("deadlock-once"), 2);
    drop_failing_trigger();
    close_pg(&pg);
}

/* The results of a group can come back before its sync went out: libpq sends early
 * once its buffer fills (a failing create and 30 of 4 KiB here), and a failing write's error comes
 * back at once, aborting the rest of the group, its last op included. Submitted in a
 * poll callback (the I/O phase), the group's results are read in the same phase, before
 * the iteration's flush sends the sync. The group must then end there: before, its last
 * op waited for a sync that was never read, and every later op on the connection took
 * the results of the one before (a GET of task 2 answered with task 1, creates with
 * INTERNAL). Found by review. */
static int pipe_fds[2];
static tms_pg_t *early_pg;
static char big_description[4096];

static void on_pipe(uv_poll_t *h, int status, int events)
{
    char b;
    (void)status;
    (void)events;
    if (read(pipe_fds[0], &b, 1) != 1)
        return;
    uv_poll_stop(h);
    submit_create(early_pg, "fails");
    for (int i = 0; i < 30; i++) {
        tms_task_op_t *op = task_op(TMS_TASK_CREATE);
        op->task.title = tms_arena_strdup(op->arena, "big");
        op->task.description = tms_arena_strdup(op->arena, big_description);
        snprintf(op->task.status, sizeof(op->task.status), "open");
        snprintf(op->task.created_by, sizeof(op->task.created_by), "u1");
        op->task.created_at_ms = op->task.updated_at_ms = 1700000000000;
        op->msg.cont = create_reply;
        CHECK_EQ_INT(tms_task_store_submit(tms_pg_task_store(early_pg), &op), 0);
    }
    usleep(200000); /* the server runs what libpq sent early; 'fails' errors at once */
}

static int64_t get_id(tms_pg_t *pg, int64_t id)
{
    tms_task_op_t *op = task_op(TMS_TASK_GET);
    int64_t got;
    op->id = id;
    op = run_task(pg, op);
    got = op->err.code == TMS_OK ? op->task.id : -(int64_t)op->err.code;
    tms_task_op_free(&op);
    return got;
}

static void test_results_before_the_groups_sync(void)
{
    uv_poll_t ph;
    tms_task_op_t *op;
    tms_pg_t *pg = open_pg((tms_pg_options_t){.pool_size = 1, .statement_timeout_ms = 2000});
    if (!pg)
        return;
    early_pg = pg;
    memset(big_description, 'x', sizeof(big_description) - 1);
    add_failing_trigger();
    CHECK_EQ_INT(pipe(pipe_fds), 0);
    uv_poll_init(&loop, &ph, pipe_fds[0]);
    uv_poll_start(&ph, UV_READABLE, on_pipe);
    nreplies = nok = nunavailable = ninternal = 0;
    op = task_op(TMS_TASK_GET); /* task 1: a read in flight, answered in that phase */
    op->id = 1;
    op->msg.cont = create_reply;
    CHECK_EQ_INT(tms_task_store_submit(tms_pg_task_store(pg), &op), 0);
    uv_run(&loop, UV_RUN_NOWAIT);                     /* the GET goes out */
    CHECK_EQ_INT((int)write(pipe_fds[1], "x", 1), 1); /* the pipe ready first ... */
    usleep(100000);                                   /* ... then the GET's result */
    for (int k = 0; k < 10; k++) {
        uv_run(&loop, UV_RUN_NOWAIT);
        usleep(20000);
    }
    CHECK_EQ_INT(get_id(pg, 1), 1);
    CHECK_EQ_INT(get_id(pg, 2), 2);
    while (nreplies < 32)
        uv_run(&loop, UV_RUN_ONCE);
    CHECK_EQ_INT(nok, 31); /* the 30 creates and the first GET */
    CHECK_EQ_INT(ninternal, 1);
    CHECK_EQ_INT(count_titled("big"), 30);
    uv_close((uv_handle_t *)&ph, NULL);
    drop_failing_trigger();
    close_pg(&pg);
    close(pipe_fds[0]);
    close(pipe_fds[1]);
}

static void test_start_checks(void)
{
    char err[512] = "", sql[160];
    long long version;
    tms_pg_t *pg;
    /* migrating twice is a no-op */
    CHECK_EQ_INT(tms_pg_migrate_sync(url, err, sizeof(err)), 0);
    CHECK_EQ_INT(tms_pg_migrate_sync(url, err, sizeof(err)), 0);
    /* a schema newer than this binary is refused */
    side(url, "INSERT INTO schema_migrations (version) VALUES (99)");
    CHECK(tms_pg_migrate_sync(url, err, sizeof(err)) != 0);
    CHECK(strstr(err, "newer") != NULL);
    side(url, "DELETE FROM schema_migrations WHERE version = 99");
    /* a start deletes the rows an earlier version marked sent, keeps pending ones, and
     * leaves the schema version (an earlier binary still starts) */
    side(url, "INSERT INTO outbox (event_id, topic, key, payload, created_at_ms, sent_at_ms)"
              " VALUES ('old-sent', 'notifications', '1', '{}', 1, 2),"
              " ('old-pending', 'notifications', '2', '{}', 1, NULL)");
    side(url, "INSERT INTO outbox (event_id, topic, key, payload, created_at_ms, sent_at_ms)"
              " SELECT 'old-' || i, 'notifications', '1', '{}', 1, 2"
              " FROM generate_series(1, 25000) i"); /* more than two batches (10,000) */
    version = side(url, "SELECT max(version) FROM schema_migrations");
    CHECK_EQ_INT(tms_pg_migrate_sync(url, err, sizeof(err)), 0);
    CHECK_EQ_INT(side(url, "SELECT max(version) FROM schema_migrations"), version);
    CHECK_EQ_INT(side(url, "SELECT count(*) FROM outbox WHERE event_id LIKE 'old-%'"), 1);
    CHECK_EQ_INT(side(url, "SELECT count(*) FROM outbox WHERE event_id = 'old-pending'"), 1);
    /* and a start that does not migrate (tasks.migrate=off) still purges */
    side(url, "UPDATE outbox SET sent_at_ms = 3 WHERE event_id = 'old-pending'");
    pg = tms_pg_open(&loop, url, &(tms_pg_options_t){.pool_size = 1, .purge_sent = true}, err,
                     sizeof(err));
    CHECK(pg != NULL);
    if (pg)
        close_pg(&pg);
    CHECK_EQ_INT(side(url, "SELECT count(*) FROM outbox WHERE event_id LIKE 'old-%'"), 0);
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
    RUN_TEST(test_writes_sent_together_commit_together);
    RUN_TEST(test_writes_wait_for_the_group_in_flight);
    RUN_TEST(test_reads_pass_writes_waiting_for_a_group);
    RUN_TEST(test_solo_writes_go_alone);
    RUN_TEST(test_failed_write_fails_alone);
    RUN_TEST(test_deadlocked_group_is_sent_again);
    RUN_TEST(test_results_before_the_groups_sync);
    RUN_TEST(test_start_checks);

    tms_mailbox_free(&replies);
    uv_run(&loop, UV_RUN_DEFAULT);
    CHECK_EQ_INT(uv_loop_close(&loop), 0);
    tms_metrics_reset();
    snprintf(sql, sizeof(sql), "DROP DATABASE %s WITH (FORCE)", dbname);
    side(base_url, sql);
    TEST_EXIT();
}
