/* Tests for src/io/store/sqlite/tasks.c and outbox.c (and the user_deleted
 * event of users.c): every task store and outbox op on a temporary database
 * file, driven from a loop mailbox as the actors would. Each test opens a fresh
 * database and removes it. */
#include <inttypes.h>
#include <sqlite3.h>
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
#include "io/store/sqlite/sqlite.h"
#include "test.h"

static uv_loop_t loop;
static tms_mailbox_t *replies;
static char dir[64];
static char path[128];

static const char *U1 = "aaaaaaaaaaaaaaaaaaaaaaaa", *U2 = "bbbbbbbbbbbbbbbbbbbbbbbb",
                  *U3 = "cccccccccccccccccccccccc";
#define T0 1764338400000LL

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

static void free_user_op(tms_msg_t *msg)
{
    free(msg);
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

static tms_user_op_t *user_op(int kind, const char *key)
{
    tms_user_op_t *op = tms_new(tms_user_op_t);
    op->msg.op = kind;
    op->msg.reply_to = replies;
    op->msg.cont = on_reply;
    op->msg.free_fn = free_user_op;
    if (key)
        snprintf(op->key, sizeof(op->key), "%s", key);
    op->err.code = TMS_UNKNOWN;
    return op;
}

static tms_msg_t *wait_reply(tms_msg_t **got)
{
    while (!*got)
        uv_run(&loop, UV_RUN_ONCE);
    return *got;
}

/* Submits op and runs the loop until its reply; returns the op (caller frees). */
static tms_task_op_t *run_task(tms_sqlite_t *db, tms_task_op_t *op)
{
    tms_msg_t *got = NULL;
    op->msg.ctx = &got;
    CHECK_EQ_INT(tms_task_store_submit(tms_sqlite_task_store(db), &op), 0);
    CHECK(op == NULL);
    return (tms_task_op_t *)wait_reply(&got);
}

static tms_outbox_op_t *run_box(tms_sqlite_t *db, tms_outbox_op_t *op)
{
    tms_msg_t *got = NULL;
    op->msg.ctx = &got;
    CHECK_EQ_INT(tms_outbox_submit(tms_sqlite_outbox(db), &op), 0);
    CHECK(op == NULL);
    return (tms_outbox_op_t *)wait_reply(&got);
}

static tms_user_op_t *run_user(tms_sqlite_t *db, tms_user_op_t *op)
{
    tms_msg_t *got = NULL;
    op->msg.ctx = &got;
    CHECK_EQ_INT(tms_user_store_submit(tms_sqlite_user_store(db), &op), 0);
    CHECK(op == NULL);
    return (tms_user_op_t *)wait_reply(&got);
}

static tms_task_op_t *create_op(const char *title, const char *status, const char *assignee,
                                int notify)
{
    tms_task_op_t *op = task_op(TMS_TASK_CREATE);
    op->task.title = tms_strdup(title);
    op->task.description = tms_strdup("desc");
    snprintf(op->task.status, sizeof(op->task.status), "%s", status);
    snprintf(op->task.assigned_to, sizeof(op->task.assigned_to), "%s", assignee);
    snprintf(op->task.created_by, sizeof(op->task.created_by), "%s", U1);
    op->task.created_at_ms = op->task.updated_at_ms = T0;
    if (notify) {
        op->notify.enabled = true;
        snprintf(op->notify.type, sizeof(op->notify.type), "task_created");
        snprintf(op->notify.by, sizeof(op->notify.by), "%s", U1);
        tms_event_id_new(op->notify.event_id);
    }
    return op;
}

static int64_t create(tms_sqlite_t *db, const char *title, const char *status, const char *assignee)
{
    tms_task_op_t *op = run_task(db, create_op(title, status, assignee, 0));
    int64_t id = op->task.id;
    CHECK_EQ_INT(op->err.code, TMS_OK);
    CHECK_EQ_INT(op->task.version, 1);
    tms_task_op_free(&op);
    return id;
}

static tms_task_op_t *get(tms_sqlite_t *db, int64_t id)
{
    tms_task_op_t *op = task_op(TMS_TASK_GET);
    op->id = id;
    return run_task(db, op);
}

static long long pending(tms_sqlite_t *db)
{
    tms_outbox_op_t *op = run_box(db, box_op(TMS_OUTBOX_PENDING));
    long long n = op->err.code == TMS_OK ? op->count : -1;
    tms_outbox_op_free(&op);
    return n;
}

/* Runs sql on a connection of the test's own and returns the first column of the
 * first row as an integer (0 with no row, -1 on error). */
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
    } else {
        fprintf(stderr, "raw_query: %s: %s\n", sql, sqlite3_errmsg(db));
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

static tms_sqlite_t *open_db(void)
{
    char err[256] = "";
    tms_sqlite_t *db;
    remove_db();
    db = tms_sqlite_open(path, 64, err, sizeof(err));
    CHECK(db != NULL);
    if (!db)
        fprintf(stderr, "open: %s\n", err);
    return db;
}

static void close_db(tms_sqlite_t **db)
{
    tms_sqlite_close(db);
    CHECK(*db == NULL);
    remove_db();
}

static void test_create_get(void)
{
    tms_sqlite_t *db = open_db();
    tms_task_op_t *op;
    tms_outbox_op_t *box;
    char type[16], user[25], event_id[37], key[24], by[25], *title = NULL;
    int64_t id1, id2, task_id = 0;
    if (!db)
        return;
    CHECK_EQ_STR(tms_sqlite_task_store(db)->name, "sqlite");
    CHECK_EQ_STR(tms_sqlite_outbox(db)->name, "sqlite");

    /* no notify: no event, even with an assignee */
    op = run_task(db, create_op("first", "open", U2, 0));
    CHECK_EQ_INT(op->err.code, TMS_OK);
    CHECK(!op->replayed);
    id1 = op->task.id;
    CHECK(id1 > 0);
    tms_task_op_free(&op);
    CHECK_EQ_INT(pending(db), 0);

    op = create_op("second, with 'quotes'", "in progress", U2, 1);
    snprintf(event_id, sizeof(event_id), "%s", op->notify.event_id);
    op = run_task(db, op);
    CHECK_EQ_INT(op->err.code, TMS_OK);
    id2 = op->task.id;
    CHECK(id2 > id1);
    CHECK_EQ_STR(op->task.title, "second, with 'quotes'");
    CHECK_EQ_STR(op->task.description, "desc");
    CHECK_EQ_STR(op->task.status, "in progress");
    CHECK_EQ_STR(op->task.assigned_to, U2);
    CHECK_EQ_STR(op->task.created_by, U1);
    CHECK_EQ_INT(op->task.created_at_ms, T0);
    CHECK_EQ_INT(op->task.updated_at_ms, T0);
    CHECK_EQ_INT(op->task.version, 1);
    tms_task_op_free(&op);
    CHECK_EQ_INT(pending(db), 1);

    box = box_op(TMS_OUTBOX_FETCH);
    box->limit = 10;
    box = run_box(db, box);
    CHECK_EQ_INT(box->err.code, TMS_OK);
    CHECK_EQ_INT(box->nevents, 1);
    if (box->nevents == 1) {
        snprintf(key, sizeof(key), "%" PRId64, id2);
        CHECK_EQ_STR(box->events[0].topic, TMS_TOPIC_NOTIFICATIONS);
        CHECK_EQ_STR(box->events[0].key, key);
        CHECK_EQ_STR(box->events[0].event_id, event_id);
        CHECK_EQ_INT(box->events[0].created_at_ms, T0);
        CHECK_EQ_INT(tms_event_notification_parse(box->events[0].payload, type, user, &task_id,
                                                  event_id, &title, by),
                     0);
        CHECK_EQ_STR(by, U1);
        CHECK_EQ_STR(type, "task_created");
        CHECK_EQ_STR(user, U2);
        CHECK_EQ_INT(task_id, id2);
        CHECK_EQ_STR(title, "second, with 'quotes'");
        CHECK_EQ_STR(event_id, box->events[0].event_id);
        free(title);
    }
    tms_outbox_op_free(&box);

    /* no assignee is stored as NULL and read back as "" */
    id1 = create(db, "third", "open", "");
    CHECK_EQ_INT(raw_query("SELECT count(*) FROM tasks WHERE assigned_to IS NULL"), 1);

    op = get(db, id2);
    CHECK_EQ_INT(op->err.code, TMS_OK);
    CHECK_EQ_INT(op->task.id, id2);
    CHECK_EQ_STR(op->task.title, "second, with 'quotes'");
    CHECK_EQ_STR(op->task.status, "in progress");
    CHECK_EQ_STR(op->task.assigned_to, U2);
    CHECK_EQ_INT(op->task.version, 1);
    tms_task_op_free(&op);
    op = get(db, id1);
    CHECK_EQ_INT(op->err.code, TMS_OK);
    CHECK_EQ_STR(op->task.assigned_to, "");
    tms_task_op_free(&op);
    op = get(db, 999);
    CHECK_EQ_INT(op->err.code, TMS_NOT_FOUND);
    CHECK_EQ_INT(op->reason, TMS_TASK_NO_SUCH_TASK);
    tms_task_op_free(&op);

    op = run_task(db, task_op(TMS_TASK_PING));
    CHECK_EQ_INT(op->err.code, TMS_OK);
    tms_task_op_free(&op);
    close_db(&db);
}

/* Pages through the list with filter (a, s) and checks every matching task is seen
 * exactly once, in ascending id order. */
static void walk(tms_sqlite_t *db, const char *a, const char *s, int limit, int expected,
                 const unsigned char *match, int64_t *ids, int n)
{
    unsigned char *seen = tms_calloc((size_t)n, 1);
    int64_t after = 0, last = 0;
    int total = 0, pages = 0;
    for (;;) {
        tms_task_op_t *op = task_op(TMS_TASK_LIST);
        bool more;
        snprintf(op->filter_assigned_to, sizeof(op->filter_assigned_to), "%s", a);
        snprintf(op->filter_status, sizeof(op->filter_status), "%s", s);
        op->after_id = after;
        op->limit = limit;
        op = run_task(db, op);
        CHECK_EQ_INT(op->err.code, TMS_OK);
        CHECK(op->ntasks <= (size_t)limit);
        for (size_t i = 0; i < op->ntasks; i++) {
            tms_task_t *t = &op->tasks[i];
            int idx = -1;
            CHECK(t->id > last);
            last = t->id;
            for (int j = 0; j < n; j++)
                if (ids[j] == t->id)
                    idx = j;
            CHECK(idx >= 0);
            if (idx >= 0) {
                CHECK(match[idx]);
                CHECK(!seen[idx]);
                seen[idx] = 1;
            }
            if (a[0])
                CHECK_EQ_STR(t->assigned_to, a);
            if (s[0])
                CHECK_EQ_STR(t->status, s);
            CHECK(t->title != NULL && t->description != NULL);
            total++;
        }
        more = op->has_more;
        if (more)
            CHECK_EQ_INT(op->ntasks, limit);
        if (op->ntasks)
            after = op->tasks[op->ntasks - 1].id;
        tms_task_op_free(&op);
        pages++;
        if (!more || pages > n + 1)
            break;
    }
    CHECK_EQ_INT(total, expected);
    for (int j = 0; j < n; j++)
        CHECK_EQ_INT(seen[j], match[j]);
    free(seen);
}

static void test_list(void)
{
    enum { N = 300 };
    static const char *statuses[] = {"open", "in progress", "closed"};
    const char *assignees[] = {U1, U2, ""};
    const char *filters_a[] = {"", U1, U2};
    const char *filters_s[] = {"", "open", "in progress", "closed"};
    tms_sqlite_t *db = open_db();
    int64_t ids[N];
    unsigned char match[N];
    tms_task_op_t *op;
    char title[32];
    if (!db)
        return;
    for (int i = 0; i < N; i++) {
        snprintf(title, sizeof(title), "task %d", i);
        /* 3 and 7 are coprime, so every (assignee, status) pair occurs */
        ids[i] = create(db, title, statuses[i % 3], assignees[(i / 3) % 3]);
    }
    for (size_t fa = 0; fa < 3; fa++) {
        for (size_t fs = 0; fs < 4; fs++) {
            int expected = 0;
            for (int i = 0; i < N; i++) {
                match[i] =
                    (!filters_a[fa][0] || strcmp(assignees[(i / 3) % 3], filters_a[fa]) == 0) &&
                    (!filters_s[fs][0] || strcmp(statuses[i % 3], filters_s[fs]) == 0);
                expected += match[i];
            }
            CHECK(expected > 0);
            walk(db, filters_a[fa], filters_s[fs], 7, expected, match, ids, N);
            walk(db, filters_a[fa], filters_s[fs], 200, expected, match, ids, N);
        }
    }

    /* an exact fit: has_more is false when the page ends on the last task */
    op = task_op(TMS_TASK_LIST);
    op->after_id = ids[N - 11];
    op->limit = 10;
    op = run_task(db, op);
    CHECK_EQ_INT(op->err.code, TMS_OK);
    CHECK_EQ_INT(op->ntasks, 10);
    CHECK(!op->has_more);
    if (op->ntasks == 10) {
        CHECK_EQ_INT(op->tasks[0].id, ids[N - 10]);
        CHECK_EQ_STR(op->tasks[9].title, "task 299");
    }
    /* the op can be submitted again; its old page is dropped, not leaked */
    op->after_id = ids[N - 12];
    op = run_task(db, op);
    CHECK_EQ_INT(op->ntasks, 10);
    CHECK(op->has_more);
    tms_task_op_free(&op);

    /* filters are bound, never spliced into SQL */
    op = task_op(TMS_TASK_LIST);
    snprintf(op->filter_status, sizeof(op->filter_status), "x' OR '1'='1");
    op->limit = 10;
    op = run_task(db, op);
    CHECK_EQ_INT(op->err.code, TMS_OK);
    CHECK_EQ_INT(op->ntasks, 0);
    CHECK(!op->has_more);
    tms_task_op_free(&op);
    close_db(&db);
}

static tms_task_op_t *update_op(int64_t id, int64_t expected)
{
    tms_task_op_t *op = task_op(TMS_TASK_UPDATE);
    op->id = id;
    op->expected_version = expected;
    op->task.updated_at_ms = T0 + 1000;
    return op;
}

static void test_update(void)
{
    tms_sqlite_t *db = open_db();
    tms_task_op_t *op;
    tms_outbox_op_t *box;
    char type[16], user[25], event_id[37], eid[37], by[25], *title = NULL;
    int64_t id, task_id = 0;
    if (!db)
        return;
    id = create(db, "before", "open", U1);

    /* title only: everything else stays */
    op = update_op(id, 1);
    op->set_title = true;
    op->task.title = tms_strdup("after");
    op = run_task(db, op);
    CHECK_EQ_INT(op->err.code, TMS_OK);
    CHECK_EQ_STR(op->task.title, "after");
    CHECK_EQ_STR(op->task.description, "desc");
    CHECK_EQ_STR(op->task.status, "open");
    CHECK_EQ_STR(op->task.assigned_to, U1);
    CHECK_EQ_STR(op->task.created_by, U1);
    CHECK_EQ_INT(op->task.created_at_ms, T0);
    CHECK_EQ_INT(op->task.updated_at_ms, T0 + 1000);
    CHECK_EQ_INT(op->task.version, 2);
    tms_task_op_free(&op);
    CHECK_EQ_INT(pending(db), 0);

    /* a stale version changes nothing */
    op = update_op(id, 1);
    op->set_status = true;
    snprintf(op->task.status, sizeof(op->task.status), "closed");
    op = run_task(db, op);
    CHECK_EQ_INT(op->err.code, TMS_FAILED_PRECONDITION);
    CHECK_EQ_INT(op->reason, TMS_TASK_VERSION_MISMATCH);
    CHECK_EQ_INT(op->current_version, 2);
    tms_task_op_free(&op);
    op = get(db, id);
    CHECK_EQ_STR(op->task.status, "open");
    CHECK_EQ_INT(op->task.version, 2);
    tms_task_op_free(&op);

    /* description, status and a new assignee with notify; version 0 = any */
    op = update_op(id, 0);
    op->set_description = true;
    op->task.description = tms_strdup("new desc");
    op->set_status = true;
    snprintf(op->task.status, sizeof(op->task.status), "in progress");
    op->set_assigned_to = true;
    snprintf(op->task.assigned_to, sizeof(op->task.assigned_to), "%s", U2);
    op->notify.enabled = true;
    snprintf(op->notify.type, sizeof(op->notify.type), "task_assigned");
    snprintf(op->notify.by, sizeof(op->notify.by), "%s", U2);
    tms_event_id_new(op->notify.event_id);
    snprintf(eid, sizeof(eid), "%s", op->notify.event_id);
    op = run_task(db, op);
    CHECK_EQ_INT(op->err.code, TMS_OK);
    CHECK_EQ_STR(op->task.title, "after");
    CHECK_EQ_STR(op->task.description, "new desc");
    CHECK_EQ_STR(op->task.status, "in progress");
    CHECK_EQ_STR(op->task.assigned_to, U2);
    CHECK_EQ_INT(op->task.version, 3);
    tms_task_op_free(&op);
    CHECK_EQ_INT(pending(db), 1);
    box = box_op(TMS_OUTBOX_FETCH);
    box->limit = 10;
    box = run_box(db, box);
    CHECK_EQ_INT(box->nevents, 1);
    if (box->nevents == 1) {
        CHECK_EQ_STR(box->events[0].event_id, eid);
        CHECK_EQ_STR(box->events[0].topic, TMS_TOPIC_NOTIFICATIONS);
        CHECK_EQ_INT(tms_event_notification_parse(box->events[0].payload, type, user, &task_id,
                                                  event_id, &title, by),
                     0);
        CHECK_EQ_STR(by, U2); /* the caller of the update, not the creator */
        CHECK_EQ_STR(type, "task_assigned");
        CHECK_EQ_STR(user, U2);
        CHECK_EQ_INT(task_id, id);
        CHECK_EQ_STR(title, "after");
        free(title);
    }
    tms_outbox_op_free(&box);

    /* "" unassigns: stored as NULL */
    op = update_op(id, 3);
    op->set_assigned_to = true;
    op = run_task(db, op);
    CHECK_EQ_INT(op->err.code, TMS_OK);
    CHECK_EQ_STR(op->task.assigned_to, "");
    CHECK_EQ_INT(op->task.version, 4);
    tms_task_op_free(&op);
    CHECK_EQ_INT(raw_query("SELECT count(*) FROM tasks WHERE assigned_to IS NULL"), 1);

    /* a failed update with notify leaves no event */
    op = update_op(id, 99);
    op->set_assigned_to = true;
    snprintf(op->task.assigned_to, sizeof(op->task.assigned_to), "%s", U1);
    op->notify.enabled = true;
    snprintf(op->notify.type, sizeof(op->notify.type), "task_assigned");
    tms_event_id_new(op->notify.event_id);
    op = run_task(db, op);
    CHECK_EQ_INT(op->err.code, TMS_FAILED_PRECONDITION);
    tms_task_op_free(&op);
    CHECK_EQ_INT(pending(db), 1);

    op = update_op(12345, 0);
    op->set_title = true;
    op->task.title = tms_strdup("x");
    op = run_task(db, op);
    CHECK_EQ_INT(op->err.code, TMS_NOT_FOUND);
    tms_task_op_free(&op);
    close_db(&db);
}

static void test_delete(void)
{
    tms_sqlite_t *db = open_db();
    tms_task_op_t *op;
    int64_t id1, id2, id3;
    if (!db)
        return;
    id1 = create(db, "one", "open", "");
    id2 = create(db, "two", "closed", U2);

    op = task_op(TMS_TASK_DELETE);
    op->id = id2;
    op->expected_version = 2;
    op = run_task(db, op);
    CHECK_EQ_INT(op->err.code, TMS_FAILED_PRECONDITION);
    CHECK_EQ_INT(op->reason, TMS_TASK_VERSION_MISMATCH);
    CHECK_EQ_INT(op->current_version, 1);
    tms_task_op_free(&op);
    op = get(db, id2);
    CHECK_EQ_INT(op->err.code, TMS_OK);
    tms_task_op_free(&op);

    /* the newest task goes: its id must not come back */
    op = task_op(TMS_TASK_DELETE);
    op->id = id2;
    op->expected_version = 1;
    op = run_task(db, op);
    CHECK_EQ_INT(op->err.code, TMS_OK);
    CHECK_EQ_INT(op->task.id, id2);
    CHECK_EQ_STR(op->task.title, "two");
    CHECK_EQ_STR(op->task.status, "closed");
    CHECK_EQ_STR(op->task.assigned_to, U2);
    CHECK_EQ_INT(op->task.version, 1);
    tms_task_op_free(&op);
    op = get(db, id2);
    CHECK_EQ_INT(op->err.code, TMS_NOT_FOUND);
    tms_task_op_free(&op);

    op = task_op(TMS_TASK_DELETE);
    op->id = id2;
    op = run_task(db, op);
    CHECK_EQ_INT(op->err.code, TMS_NOT_FOUND);
    tms_task_op_free(&op);

    id3 = create(db, "three", "open", "");
    CHECK(id3 > id2);

    /* version 0 deletes whatever the version */
    op = task_op(TMS_TASK_DELETE);
    op->id = id1;
    op = run_task(db, op);
    CHECK_EQ_INT(op->err.code, TMS_OK);
    CHECK_EQ_STR(op->task.title, "one");
    tms_task_op_free(&op);
    CHECK_EQ_INT(raw_query("SELECT count(*) FROM tasks"), 1);
    CHECK_EQ_INT(pending(db), 0);

    /* not even after a restart */
    tms_sqlite_close(&db);
    {
        char err[256] = "";
        db = tms_sqlite_open(path, 8, err, sizeof(err));
        CHECK(db != NULL);
        if (!db)
            return;
    }
    op = task_op(TMS_TASK_DELETE);
    op->id = id3;
    op = run_task(db, op);
    CHECK_EQ_INT(op->err.code, TMS_OK);
    tms_task_op_free(&op);
    CHECK(create(db, "four", "open", "") > id3);
    close_db(&db);
}

static void test_unassign_user(void)
{
    tms_sqlite_t *db = open_db();
    tms_task_op_t *op;
    int64_t ids[5];
    if (!db)
        return;
    ids[0] = create(db, "a", "open", U2);
    ids[1] = create(db, "b", "closed", U2);
    ids[2] = create(db, "c", "open", U1);
    ids[3] = create(db, "d", "open", U2);
    ids[4] = create(db, "e", "open", "");

    op = task_op(TMS_TASK_UNASSIGN_USER);
    snprintf(op->user_id, sizeof(op->user_id), "%s", U2);
    op->task.updated_at_ms = T0 + 5000;
    op = run_task(db, op);
    CHECK_EQ_INT(op->err.code, TMS_OK);
    CHECK_EQ_INT(op->count, 3);
    tms_task_op_free(&op);

    for (int i = 0; i < 5; i++) {
        int was_u2 = i == 0 || i == 1 || i == 3;
        op = get(db, ids[i]);
        CHECK_EQ_INT(op->err.code, TMS_OK);
        CHECK_EQ_INT(op->task.version, was_u2 ? 2 : 1);
        CHECK_EQ_INT(op->task.updated_at_ms, was_u2 ? T0 + 5000 : T0);
        CHECK_EQ_STR(op->task.assigned_to, i == 2 ? U1 : "");
        tms_task_op_free(&op);
    }
    CHECK_EQ_INT(raw_query("SELECT count(*) FROM tasks WHERE assigned_to IS NULL"), 4);

    /* again: nothing left to change; and a user with no tasks */
    op = task_op(TMS_TASK_UNASSIGN_USER);
    snprintf(op->user_id, sizeof(op->user_id), "%s", U2);
    op = run_task(db, op);
    CHECK_EQ_INT(op->err.code, TMS_OK);
    CHECK_EQ_INT(op->count, 0);
    tms_task_op_free(&op);
    op = task_op(TMS_TASK_UNASSIGN_USER);
    snprintf(op->user_id, sizeof(op->user_id), "%s", U3);
    op = run_task(db, op);
    CHECK_EQ_INT(op->count, 0);
    tms_task_op_free(&op);
    /* without a time from the caller the store's clock is used, never 0 */
    op = task_op(TMS_TASK_UNASSIGN_USER);
    snprintf(op->user_id, sizeof(op->user_id), "%s", U1);
    op = run_task(db, op);
    CHECK_EQ_INT(op->count, 1);
    tms_task_op_free(&op);
    op = get(db, ids[2]);
    CHECK(op->task.updated_at_ms > T0);
    CHECK_EQ_INT(op->task.version, 2);
    tms_task_op_free(&op);
    CHECK_EQ_INT(pending(db), 0);
    close_db(&db);
}

static tms_task_op_t *idem_op(const char *user, const char *key, const char *hash, int64_t at)
{
    tms_task_op_t *op = create_op("idem", "open", U2, 1);
    snprintf(op->task.created_by, sizeof(op->task.created_by), "%s", user);
    snprintf(op->idem_key, sizeof(op->idem_key), "%s", key);
    snprintf(op->idem_hash, sizeof(op->idem_hash), "%s", hash);
    op->task.created_at_ms = op->task.updated_at_ms = at;
    return op;
}

static void test_idempotency(void)
{
    tms_sqlite_t *db = open_db();
    tms_task_op_t *op;
    int64_t id, id_other, id_late;
    const char *h1 = "1111111111111111111111111111111111111111111111111111111111111111";
    const char *h2 = "2222222222222222222222222222222222222222222222222222222222222222";
    if (!db)
        return;
    op = run_task(db, idem_op(U1, "key-1", h1, T0));
    CHECK_EQ_INT(op->err.code, TMS_OK);
    CHECK(!op->replayed);
    id = op->task.id;
    tms_task_op_free(&op);
    CHECK_EQ_INT(pending(db), 1);

    /* same user, key and request: the first task, nothing new written */
    op = run_task(db, idem_op(U1, "key-1", h1, T0 + 60000));
    CHECK_EQ_INT(op->err.code, TMS_OK);
    CHECK(op->replayed);
    CHECK_EQ_INT(op->task.id, id);
    CHECK_EQ_STR(op->task.title, "idem");
    CHECK_EQ_INT(op->task.created_at_ms, T0);
    CHECK_EQ_INT(op->task.version, 1);
    tms_task_op_free(&op);
    CHECK_EQ_INT(raw_query("SELECT count(*) FROM tasks"), 1);
    CHECK_EQ_INT(pending(db), 1);

    /* same key, different request */
    op = run_task(db, idem_op(U1, "key-1", h2, T0 + 60000));
    CHECK_EQ_INT(op->err.code, TMS_ALREADY_EXISTS);
    CHECK_EQ_INT(op->reason, TMS_TASK_IDEMPOTENCY_REUSED);
    CHECK(!op->replayed);
    tms_task_op_free(&op);
    CHECK_EQ_INT(raw_query("SELECT count(*) FROM tasks"), 1);
    CHECK_EQ_INT(pending(db), 1);

    /* keys are per user */
    op = run_task(db, idem_op(U2, "key-1", h2, T0 + 60000));
    CHECK_EQ_INT(op->err.code, TMS_OK);
    CHECK(!op->replayed);
    id_other = op->task.id;
    CHECK(id_other != id);
    tms_task_op_free(&op);

    /* after the TTL the key is free again, whatever the request */
    op = run_task(db, idem_op(U1, "key-1", h2, T0 + TMS_IDEMPOTENCY_TTL_MS + 1));
    CHECK_EQ_INT(op->err.code, TMS_OK);
    CHECK(!op->replayed);
    id_late = op->task.id;
    CHECK(id_late > id_other);
    tms_task_op_free(&op);
    CHECK_EQ_INT(raw_query("SELECT count(*) FROM idempotency"), 2);
    CHECK_EQ_INT(pending(db), 3);
    op = run_task(db, idem_op(U1, "key-1", h2, T0 + TMS_IDEMPOTENCY_TTL_MS + 2));
    CHECK(op->replayed);
    CHECK_EQ_INT(op->task.id, id_late);
    tms_task_op_free(&op);

    /* the task the key made is gone */
    op = task_op(TMS_TASK_DELETE);
    op->id = id_late;
    op = run_task(db, op);
    CHECK_EQ_INT(op->err.code, TMS_OK);
    tms_task_op_free(&op);
    op = run_task(db, idem_op(U1, "key-1", h2, T0 + TMS_IDEMPOTENCY_TTL_MS + 3));
    CHECK_EQ_INT(op->err.code, TMS_ALREADY_EXISTS);
    CHECK_EQ_INT(op->reason, TMS_TASK_IDEMPOTENCY_GONE);
    tms_task_op_free(&op);
    CHECK_EQ_INT(raw_query("SELECT count(*) FROM tasks"), 2);
    CHECK_EQ_INT(pending(db), 3);
    close_db(&db);
}

/* Copies a test string into a fixed field; a string that does not fit fails the test. */
#define SET_FIELD(dst, src) CHECK(snprintf((dst), sizeof(dst), "%s", (src)) < (int)sizeof(dst))

static tms_outbox_op_t *add_op(const char *event_id, const char *topic, const char *key,
                               const char *payload)
{
    tms_outbox_op_t *op = box_op(TMS_OUTBOX_ADD);
    SET_FIELD(op->event.event_id, event_id);
    SET_FIELD(op->event.topic, topic);
    SET_FIELD(op->event.key, key);
    op->event.payload = tms_strdup(payload);
    return op;
}

static void test_outbox(void)
{
    tms_sqlite_t *db = open_db();
    tms_outbox_op_t *op;
    char ids[4][37];
    int64_t seqs[4] = {0};
    if (!db)
        return;
    CHECK_EQ_INT(pending(db), 0);
    for (int i = 0; i < 4; i++) {
        char payload[32];
        tms_event_id_new(ids[i]);
        snprintf(payload, sizeof(payload), "{\"n\":%d}", i);
        op = run_box(db, add_op(ids[i], TMS_TOPIC_COMPENSATE, U1, payload));
        CHECK_EQ_INT(op->err.code, TMS_OK);
        tms_outbox_op_free(&op);
    }
    CHECK_EQ_INT(pending(db), 4);
    /* the same event again is a retry, not a second event */
    op = run_box(db, add_op(ids[1], TMS_TOPIC_COMPENSATE, U1, "{\"n\":9}"));
    CHECK_EQ_INT(op->err.code, TMS_OK);
    tms_outbox_op_free(&op);
    CHECK_EQ_INT(pending(db), 4);

    op = box_op(TMS_OUTBOX_FETCH);
    op->limit = 3;
    op = run_box(db, op);
    CHECK_EQ_INT(op->err.code, TMS_OK);
    CHECK_EQ_INT(op->nevents, 3);
    for (size_t i = 0; i < op->nevents && i < 3; i++) {
        char payload[32];
        snprintf(payload, sizeof(payload), "{\"n\":%zu}", i);
        CHECK_EQ_STR(op->events[i].event_id, ids[i]);
        CHECK_EQ_STR(op->events[i].topic, TMS_TOPIC_COMPENSATE);
        CHECK_EQ_STR(op->events[i].key, U1);
        CHECK_EQ_STR(op->events[i].payload, payload);
        CHECK(op->events[i].created_at_ms > T0);
        if (i > 0)
            CHECK(op->events[i].seq > op->events[i - 1].seq);
        seqs[i] = op->events[i].seq;
    }
    tms_outbox_op_free(&op);

    /* mark the first two sent (and one that does not exist) */
    op = box_op(TMS_OUTBOX_MARK_SENT);
    op->seqs = tms_calloc(3, sizeof(int64_t));
    op->seqs[0] = seqs[0];
    op->seqs[1] = seqs[1];
    op->seqs[2] = 999999;
    op->nseqs = 3;
    op = run_box(db, op);
    CHECK_EQ_INT(op->err.code, TMS_OK);
    CHECK_EQ_INT(pending(db), 2);
    /* again: idempotent, and the first send time stays */
    raw_query("UPDATE outbox SET sent_at_ms = 42 WHERE sent_at_ms IS NOT NULL");
    op = run_box(db, op);
    CHECK_EQ_INT(op->err.code, TMS_OK);
    tms_outbox_op_free(&op);
    CHECK_EQ_INT(pending(db), 2);
    CHECK_EQ_INT(raw_query("SELECT count(*) FROM outbox WHERE sent_at_ms = 42"), 2);

    op = box_op(TMS_OUTBOX_FETCH);
    op->limit = 10;
    op = run_box(db, op);
    CHECK_EQ_INT(op->nevents, 2);
    if (op->nevents == 2) {
        CHECK_EQ_STR(op->events[0].event_id, ids[2]);
        CHECK_EQ_STR(op->events[1].event_id, ids[3]);
        seqs[3] = op->events[1].seq;
    }
    /* resubmitted: the old events are dropped, not leaked */
    op = run_box(db, op);
    CHECK_EQ_INT(op->nevents, 2);
    tms_outbox_op_free(&op);

    op = box_op(TMS_OUTBOX_MARK_SENT);
    op->seqs = tms_calloc(2, sizeof(int64_t));
    op->seqs[0] = seqs[2];
    op->seqs[1] = seqs[3];
    op->nseqs = 2;
    op = run_box(db, op);
    CHECK_EQ_INT(op->err.code, TMS_OK);
    tms_outbox_op_free(&op);
    CHECK_EQ_INT(pending(db), 0);
    op = box_op(TMS_OUTBOX_FETCH);
    op->limit = 10;
    op = run_box(db, op);
    CHECK_EQ_INT(op->err.code, TMS_OK);
    CHECK_EQ_INT(op->nevents, 0);
    tms_outbox_op_free(&op);

    /* an empty mark is fine */
    op = run_box(db, box_op(TMS_OUTBOX_MARK_SENT));
    CHECK_EQ_INT(op->err.code, TMS_OK);
    tms_outbox_op_free(&op);
    close_db(&db);
}

static tms_outbox_op_t *inbox_op(int kind, const char *consumer, const char *event_id)
{
    tms_outbox_op_t *op = box_op(kind);
    snprintf(op->consumer, sizeof(op->consumer), "%s", consumer);
    snprintf(op->event_id, sizeof(op->event_id), "%s", event_id);
    return op;
}

static void test_inbox(void)
{
    tms_sqlite_t *db = open_db();
    tms_outbox_op_t *op;
    char e1[37], e2[37];
    if (!db)
        return;
    tms_event_id_new(e1);
    tms_event_id_new(e2);
    op = run_box(db, inbox_op(TMS_INBOX_SEEN, "task", e1));
    CHECK_EQ_INT(op->err.code, TMS_OK);
    CHECK(!op->seen);
    tms_outbox_op_free(&op);
    for (int i = 0; i < 2; i++) {
        op = run_box(db, inbox_op(TMS_INBOX_RECORD, "task", e1));
        CHECK_EQ_INT(op->err.code, TMS_OK);
        tms_outbox_op_free(&op);
    }
    CHECK_EQ_INT(raw_query("SELECT count(*) FROM inbox"), 1);
    op = run_box(db, inbox_op(TMS_INBOX_SEEN, "task", e1));
    CHECK_EQ_INT(op->err.code, TMS_OK);
    CHECK(op->seen);
    /* reused for another question: the old answer does not stick */
    snprintf(op->event_id, sizeof(op->event_id), "%s", e2);
    op = run_box(db, op);
    CHECK(!op->seen);
    tms_outbox_op_free(&op);
    op = run_box(db, inbox_op(TMS_INBOX_SEEN, "notifier", e1));
    CHECK(!op->seen);
    tms_outbox_op_free(&op);
    CHECK_EQ_INT(pending(db), 0); /* the inbox is not the outbox */
    close_db(&db);
}

static void test_user_deleted_event(void)
{
    tms_sqlite_t *db = open_db();
    tms_user_op_t *op;
    tms_outbox_op_t *box;
    tms_user_t parsed, deleted;
    char event_id[37];
    if (!db)
        return;
    memset(&parsed, 0, sizeof(parsed));
    op = user_op(TMS_USER_CREATE, NULL);
    snprintf(op->user.id, sizeof(op->user.id), "%s", U1);
    snprintf(op->user.email, sizeof(op->user.email), "alice@example.com");
    snprintf(op->user.role, sizeof(op->user.role), "admin");
    snprintf(op->user.password_hash, sizeof(op->user.password_hash),
             "$argon2id$v=19$m=65536,t=2,p=1$c2FsdA$secrethash");
    op->user.token_version = 3;
    op->user.created_at_ms = T0;
    op = run_user(db, op);
    CHECK_EQ_INT(op->err.code, TMS_OK);
    free(op);
    CHECK_EQ_INT(pending(db), 0);

    op = run_user(db, user_op(TMS_USER_DELETE, U1));
    CHECK_EQ_INT(op->err.code, TMS_OK);
    CHECK_EQ_STR(op->user.email, "alice@example.com");
    deleted = op->user;
    free(op);
    op = run_user(db, user_op(TMS_USER_DELETE, U1));
    CHECK_EQ_INT(op->err.code, TMS_NOT_FOUND);
    free(op);
    CHECK_EQ_INT(pending(db), 1);
    CHECK_EQ_INT(raw_query("SELECT count(*) FROM outbox"), 1);

    box = box_op(TMS_OUTBOX_FETCH);
    box->limit = 10;
    box = run_box(db, box);
    CHECK_EQ_INT(box->nevents, 1);
    if (box->nevents == 1) {
        tms_outbox_event_t *e = &box->events[0];
        CHECK_EQ_STR(e->topic, TMS_TOPIC_USER_DELETED);
        CHECK_EQ_STR(e->key, U1);
        CHECK_EQ_INT(strlen(e->event_id), 36);
        CHECK(strstr(e->payload, "argon2id") == NULL);
        CHECK(strstr(e->payload, "secrethash") == NULL);
        CHECK_EQ_INT(tms_event_user_parse(e->payload, &parsed, event_id), 0);
        CHECK_EQ_STR(event_id, e->event_id);
        CHECK_EQ_STR(parsed.id, U1);
        CHECK_EQ_STR(parsed.email, "alice@example.com");
        CHECK_EQ_STR(parsed.role, "admin");
        CHECK_EQ_INT(parsed.token_version, 3);
        CHECK_EQ_INT(parsed.created_at_ms, T0);
        CHECK_EQ_STR(parsed.password_hash, "");
    }
    tms_outbox_op_free(&box);

    /* compensation: the saga restores the user its event names (no hash) from the
     * tombstone: the hash, and a token version past the deleted one */
    op = user_op(TMS_USER_RESTORE, NULL);
    op->user = parsed;
    op->user.token_version = 10;
    op = run_user(db, op);
    CHECK_EQ_INT(op->err.code, TMS_OK);
    free(op);
    op = run_user(db, user_op(TMS_USER_GET_BY_ID, U1));
    CHECK_EQ_INT(op->err.code, TMS_OK);
    CHECK_EQ_STR(op->user.password_hash, deleted.password_hash);
    CHECK_EQ_INT(op->user.token_version, 4);
    CHECK_EQ_STR(op->user.role, "admin");
    free(op);
    CHECK_EQ_INT(pending(db), 1); /* restoring writes no event */
    CHECK_EQ_INT(raw_query("SELECT count(*) FROM deleted_users"), 0);
    close_db(&db);
}

static void test_metrics(void)
{
    tms_sqlite_t *db = open_db();
    char *text;
    size_t len;
    if (!db)
        return;
    create(db, "m", "open", "");
    CHECK(pending(db) == 0);
    text = tms_metrics_render(&len);
    CHECK(strstr(text, "tms_store_duration_seconds_count{store=\"sqlite\",op=\"task_create\"}") !=
          NULL);
    CHECK(
        strstr(text, "tms_store_duration_seconds_count{store=\"sqlite\",op=\"outbox_pending\"}") !=
        NULL);
    CHECK(strstr(text, "tms_store_errors_total{store=\"sqlite\",op=\"task_update\"} 0") != NULL);
    free(text);
    close_db(&db);
}

int main(void)
{
    snprintf(dir, sizeof(dir), "/tmp/tms_sqlite_tasks_XXXXXX");
    if (!mkdtemp(dir)) {
        perror("mkdtemp");
        return EXIT_FAILURE;
    }
    snprintf(path, sizeof(path), "%s/tms.db", dir);
    uv_loop_init(&loop);
    replies = tms_mailbox_new(&loop, "test", 64, on_request, NULL);

    RUN_TEST(test_create_get);
    RUN_TEST(test_list);
    RUN_TEST(test_update);
    RUN_TEST(test_delete);
    RUN_TEST(test_unassign_user);
    RUN_TEST(test_idempotency);
    RUN_TEST(test_outbox);
    RUN_TEST(test_inbox);
    RUN_TEST(test_user_deleted_event);
    RUN_TEST(test_metrics);

    tms_mailbox_free(&replies);
    uv_run(&loop, UV_RUN_DEFAULT);
    CHECK_EQ_INT(uv_loop_close(&loop), 0);
    tms_metrics_reset();
    remove_db();
    rmdir(dir);
    TEST_EXIT();
}
