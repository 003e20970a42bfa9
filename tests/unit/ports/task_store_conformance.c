/* The task store port (core/task_store.h, core/port.h) on every adapter: SQLite, and
 * PostgreSQL when TMS_TEST_PG_URL is set. Every op of the port, the events a write
 * records in the same store's outbox, idempotent creation, versions, paging, and the
 * lifecycle (busy, close, unknown ops, replies never on the caller's stack). */
#include <inttypes.h>

#include "core/events.h"
#include "core/ops.h"
#include "stores.h"

static const char *U1 = "aaaaaaaaaaaaaaaaaaaaaaaa", *U2 = "bbbbbbbbbbbbbbbbbbbbbbbb",
                  *U3 = "cccccccccccccccccccccccc";
#define T0 1764338400000LL

static const char *backend; /* the adapter under test */

static tms_task_op_t *task_op(int kind)
{
    tms_task_op_t *op = tms_task_op_new(kind, NULL);
    op->msg.reply_to = replies;
    op->msg.cont = on_reply;
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

/* Submits op and runs the loop until its reply; returns the op (caller frees). */
static tms_task_op_t *run_task(store_t *s, tms_task_op_t *op)
{
    tms_msg_t *got = NULL;
    op->msg.ctx = &got;
    CHECK_EQ_INT(tms_task_store_submit(s->tasks, &op), 0);
    CHECK(op == NULL);
    CHECK(got == NULL); /* never answered on the caller's stack */
    return (tms_task_op_t *)wait_reply(&got);
}

static tms_outbox_op_t *run_box(store_t *s, tms_outbox_op_t *op)
{
    tms_msg_t *got = NULL;
    op->msg.ctx = &got;
    CHECK_EQ_INT(tms_outbox_submit(s->outbox, &op), 0);
    CHECK(op == NULL);
    return (tms_outbox_op_t *)wait_reply(&got);
}

static tms_task_op_t *create_op(const char *title, const char *status, const char *assignee,
                                int notify)
{
    tms_task_op_t *op = task_op(TMS_TASK_CREATE);
    op->task.title = tms_arena_strdup(op->arena, title);
    op->task.description = tms_arena_strdup(op->arena, "desc");
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

static int64_t create(store_t *s, const char *title, const char *status, const char *assignee)
{
    tms_task_op_t *op = run_task(s, create_op(title, status, assignee, 0));
    int64_t id = op->task.id;
    CHECK_EQ_INT(op->err.code, TMS_OK);
    CHECK_EQ_INT(op->task.version, 1);
    tms_task_op_free(&op);
    return id;
}

static tms_task_op_t *get(store_t *s, int64_t id)
{
    tms_task_op_t *op = task_op(TMS_TASK_GET);
    op->id = id;
    return run_task(s, op);
}

/* Tasks in the store, counted through the port. */
static long long count_tasks(store_t *s)
{
    tms_task_op_t *op = task_op(TMS_TASK_LIST);
    long long n = 0;
    op->limit = tms_op_get(TMS_API_TASK_LIST)->list.max;
    for (;;) {
        op = run_task(s, op);
        CHECK_EQ_INT(op->err.code, TMS_OK);
        n += (long long)op->ntasks;
        if (!op->has_more || op->ntasks == 0)
            break;
        op->after_id = op->tasks[op->ntasks - 1].id;
    }
    tms_task_op_free(&op);
    return n;
}

static long long pending(store_t *s)
{
    tms_outbox_op_t *op = run_box(s, box_op(TMS_OUTBOX_PENDING));
    long long n = op->err.code == TMS_OK ? op->count : -1;
    tms_outbox_op_free(&op);
    return n;
}

/* Tasks stored without an assignee (NULL, not ""), where the backend has SQL. */
static void check_unassigned_stored_null(store_t *s, long long want)
{
    long long n = sql_query(s, "SELECT count(*) FROM tasks WHERE assigned_to IS NULL");
    if (n != -2)
        CHECK_EQ_INT(n, want);
}

static void test_create_get(void)
{
    store_t s = open_store(backend);
    tms_task_op_t *op;
    tms_outbox_op_t *box;
    char type[16], user[25], event_id[37], key[24], by[25], *title = NULL;
    int64_t id1, id2, task_id = 0;
    CHECK_EQ_STR(s.tasks->name, backend);

    /* no notify: no event, even with an assignee */
    op = run_task(&s, create_op("first", "open", U2, 0));
    CHECK_EQ_INT(op->err.code, TMS_OK);
    CHECK(!op->replayed);
    id1 = op->task.id;
    CHECK(id1 > 0);
    tms_task_op_free(&op);
    CHECK_EQ_INT(pending(&s), 0);

    op = create_op("second, with 'quotes'", "in progress", U2, 1);
    snprintf(event_id, sizeof(event_id), "%s", op->notify.event_id);
    op = run_task(&s, op);
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
    CHECK_EQ_INT(pending(&s), 1);

    /* the event was written with the task, in the same store's outbox */
    box = box_op(TMS_OUTBOX_FETCH);
    box->limit = 10;
    box = run_box(&s, box);
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

    /* no assignee reads back as "" */
    id1 = create(&s, "third", "open", "");
    check_unassigned_stored_null(&s, 1);

    op = get(&s, id2);
    CHECK_EQ_INT(op->err.code, TMS_OK);
    CHECK_EQ_INT(op->task.id, id2);
    CHECK_EQ_STR(op->task.title, "second, with 'quotes'");
    CHECK_EQ_STR(op->task.status, "in progress");
    CHECK_EQ_STR(op->task.assigned_to, U2);
    CHECK_EQ_INT(op->task.version, 1);
    tms_task_op_free(&op);
    op = get(&s, id1);
    CHECK_EQ_INT(op->err.code, TMS_OK);
    CHECK_EQ_STR(op->task.assigned_to, "");
    tms_task_op_free(&op);
    op = get(&s, 999);
    CHECK_EQ_INT(op->err.code, TMS_NOT_FOUND);
    CHECK_EQ_INT(op->reason, TMS_TASK_NO_SUCH_TASK);
    tms_task_op_free(&op);

    op = run_task(&s, task_op(TMS_TASK_PING));
    CHECK_EQ_INT(op->err.code, TMS_OK);
    tms_task_op_free(&op);
    close_store(&s);
}

/* Pages through the list with filter (a, st) and checks every matching task is seen
 * exactly once, in ascending id order. */
static void walk(store_t *s, const char *a, const char *st, int limit, int expected,
                 const unsigned char *match, int64_t *ids, int n)
{
    unsigned char *seen = tms_calloc((size_t)n, 1);
    int64_t after = 0, last = 0;
    int total = 0, pages = 0;
    for (;;) {
        tms_task_op_t *op = task_op(TMS_TASK_LIST);
        bool more;
        snprintf(op->filter_assigned_to, sizeof(op->filter_assigned_to), "%s", a);
        snprintf(op->filter_status, sizeof(op->filter_status), "%s", st);
        op->after_id = after;
        op->limit = limit;
        op = run_task(s, op);
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
            if (st[0])
                CHECK_EQ_STR(t->status, st);
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
    enum { N = 150 };
    static const char *statuses[] = {"open", "in progress", "closed"};
    const char *assignees[] = {U1, U2, ""};
    const char *filters_a[] = {"", U1, U2};
    const char *filters_s[] = {"", "open", "in progress", "closed"};
    store_t s = open_store(backend);
    int64_t ids[N];
    unsigned char match[N];
    tms_task_op_t *op;
    char title[32];
    for (int i = 0; i < N; i++) {
        snprintf(title, sizeof(title), "task %d", i);
        /* every (assignee, status) pair occurs */
        ids[i] = create(&s, title, statuses[i % 3], assignees[(i / 3) % 3]);
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
            walk(&s, filters_a[fa], filters_s[fs], 7, expected, match, ids, N);
            walk(&s, filters_a[fa], filters_s[fs], tms_op_get(TMS_API_TASK_LIST)->list.max,
                 expected, match, ids, N);
        }
    }

    /* an exact fit: has_more is false when the page ends on the last task */
    op = task_op(TMS_TASK_LIST);
    op->after_id = ids[N - 11];
    op->limit = 10;
    op = run_task(&s, op);
    CHECK_EQ_INT(op->err.code, TMS_OK);
    CHECK_EQ_INT(op->ntasks, 10);
    CHECK(!op->has_more);
    if (op->ntasks == 10) {
        CHECK_EQ_INT(op->tasks[0].id, ids[N - 10]);
        snprintf(title, sizeof(title), "task %d", N - 1);
        CHECK_EQ_STR(op->tasks[9].title, title);
    }
    /* the op can be submitted again; its old page is dropped, not leaked */
    op->after_id = ids[N - 12];
    op = run_task(&s, op);
    CHECK_EQ_INT(op->ntasks, 10);
    CHECK(op->has_more);
    tms_task_op_free(&op);

    /* filters are bound, never spliced into a query */
    op = task_op(TMS_TASK_LIST);
    snprintf(op->filter_status, sizeof(op->filter_status), "x' OR '1'='1");
    op->limit = 10;
    op = run_task(&s, op);
    CHECK_EQ_INT(op->err.code, TMS_OK);
    CHECK_EQ_INT(op->ntasks, 0);
    CHECK(!op->has_more);
    tms_task_op_free(&op);
    close_store(&s);
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
    store_t s = open_store(backend);
    tms_task_op_t *op;
    tms_outbox_op_t *box;
    char type[16], user[25], event_id[37], eid[37], by[25], *title = NULL;
    int64_t id, task_id = 0;
    id = create(&s, "before", "open", U1);

    /* title only: everything else stays */
    op = update_op(id, 1);
    op->set_title = true;
    op->task.title = tms_arena_strdup(op->arena, "after");
    op = run_task(&s, op);
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
    CHECK_EQ_INT(pending(&s), 0);

    /* a stale version changes nothing */
    op = update_op(id, 1);
    op->set_status = true;
    snprintf(op->task.status, sizeof(op->task.status), "closed");
    op = run_task(&s, op);
    CHECK_EQ_INT(op->err.code, TMS_FAILED_PRECONDITION);
    /* a reason and the version, no text: the task actor words it */
    CHECK_EQ_INT(op->reason, TMS_TASK_VERSION_MISMATCH);
    CHECK_EQ_INT(op->current_version, 2);
    CHECK_EQ_STR(op->err.message, "");
    tms_task_op_free(&op);
    op = get(&s, id);
    CHECK_EQ_STR(op->task.status, "open");
    CHECK_EQ_INT(op->task.version, 2);
    tms_task_op_free(&op);

    /* description, status and a new assignee with notify; version 0 = any */
    op = update_op(id, 0);
    op->set_description = true;
    op->task.description = tms_arena_strdup(op->arena, "new desc");
    op->set_status = true;
    snprintf(op->task.status, sizeof(op->task.status), "in progress");
    op->set_assigned_to = true;
    snprintf(op->task.assigned_to, sizeof(op->task.assigned_to), "%s", U2);
    op->notify.enabled = true;
    snprintf(op->notify.type, sizeof(op->notify.type), "task_assigned");
    snprintf(op->notify.by, sizeof(op->notify.by), "%s", U2);
    tms_event_id_new(op->notify.event_id);
    snprintf(eid, sizeof(eid), "%s", op->notify.event_id);
    op = run_task(&s, op);
    CHECK_EQ_INT(op->err.code, TMS_OK);
    CHECK_EQ_STR(op->task.title, "after");
    CHECK_EQ_STR(op->task.description, "new desc");
    CHECK_EQ_STR(op->task.status, "in progress");
    CHECK_EQ_STR(op->task.assigned_to, U2);
    CHECK_EQ_INT(op->task.version, 3);
    tms_task_op_free(&op);
    CHECK_EQ_INT(pending(&s), 1);
    box = box_op(TMS_OUTBOX_FETCH);
    box->limit = 10;
    box = run_box(&s, box);
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

    /* "" unassigns */
    op = update_op(id, 3);
    op->set_assigned_to = true;
    op = run_task(&s, op);
    CHECK_EQ_INT(op->err.code, TMS_OK);
    CHECK_EQ_STR(op->task.assigned_to, "");
    CHECK_EQ_INT(op->task.version, 4);
    tms_task_op_free(&op);
    check_unassigned_stored_null(&s, 1);

    /* a failed update with notify leaves no event */
    op = update_op(id, 99);
    op->set_assigned_to = true;
    snprintf(op->task.assigned_to, sizeof(op->task.assigned_to), "%s", U1);
    op->notify.enabled = true;
    snprintf(op->notify.type, sizeof(op->notify.type), "task_assigned");
    tms_event_id_new(op->notify.event_id);
    op = run_task(&s, op);
    CHECK_EQ_INT(op->err.code, TMS_FAILED_PRECONDITION);
    tms_task_op_free(&op);
    CHECK_EQ_INT(pending(&s), 1);

    op = update_op(12345, 0);
    op->set_title = true;
    op->task.title = tms_arena_strdup(op->arena, "x");
    op = run_task(&s, op);
    CHECK_EQ_INT(op->err.code, TMS_NOT_FOUND);
    CHECK_EQ_INT(op->reason, TMS_TASK_NO_SUCH_TASK);
    tms_task_op_free(&op);
    close_store(&s);
}

static void test_delete(void)
{
    store_t s = open_store(backend);
    tms_task_op_t *op;
    int64_t id1, id2, id3;
    id1 = create(&s, "one", "open", "");
    id2 = create(&s, "two", "closed", U2);

    op = task_op(TMS_TASK_DELETE);
    op->id = id2;
    op->expected_version = 2;
    op = run_task(&s, op);
    CHECK_EQ_INT(op->err.code, TMS_FAILED_PRECONDITION);
    CHECK_EQ_INT(op->reason, TMS_TASK_VERSION_MISMATCH);
    CHECK_EQ_INT(op->current_version, 1);
    tms_task_op_free(&op);
    op = get(&s, id2);
    CHECK_EQ_INT(op->err.code, TMS_OK);
    tms_task_op_free(&op);

    /* the newest task goes: its id must not come back */
    op = task_op(TMS_TASK_DELETE);
    op->id = id2;
    op->expected_version = 1;
    op = run_task(&s, op);
    CHECK_EQ_INT(op->err.code, TMS_OK);
    CHECK_EQ_INT(op->task.id, id2);
    CHECK_EQ_STR(op->task.title, "two");
    CHECK_EQ_STR(op->task.status, "closed");
    CHECK_EQ_STR(op->task.assigned_to, U2);
    CHECK_EQ_INT(op->task.version, 1);
    tms_task_op_free(&op);
    op = get(&s, id2);
    CHECK_EQ_INT(op->err.code, TMS_NOT_FOUND);
    tms_task_op_free(&op);

    op = task_op(TMS_TASK_DELETE);
    op->id = id2;
    op = run_task(&s, op);
    CHECK_EQ_INT(op->err.code, TMS_NOT_FOUND);
    tms_task_op_free(&op);

    id3 = create(&s, "three", "open", "");
    CHECK(id3 > id2);

    /* version 0 deletes whatever the version */
    op = task_op(TMS_TASK_DELETE);
    op->id = id1;
    op = run_task(&s, op);
    CHECK_EQ_INT(op->err.code, TMS_OK);
    CHECK_EQ_STR(op->task.title, "one");
    tms_task_op_free(&op);
    CHECK_EQ_INT(count_tasks(&s), 1);
    CHECK_EQ_INT(pending(&s), 0);
    close_store(&s);
}

static void test_unassign_user(void)
{
    store_t s = open_store(backend);
    tms_task_op_t *op;
    int64_t ids[5];
    ids[0] = create(&s, "a", "open", U2);
    ids[1] = create(&s, "b", "closed", U2);
    ids[2] = create(&s, "c", "open", U1);
    ids[3] = create(&s, "d", "open", U2);
    ids[4] = create(&s, "e", "open", "");

    op = task_op(TMS_TASK_UNASSIGN_USER);
    snprintf(op->user_id, sizeof(op->user_id), "%s", U2);
    op->task.updated_at_ms = T0 + 5000;
    op = run_task(&s, op);
    CHECK_EQ_INT(op->err.code, TMS_OK);
    CHECK_EQ_INT(op->count, 3);
    tms_task_op_free(&op);

    for (int i = 0; i < 5; i++) {
        int was_u2 = i == 0 || i == 1 || i == 3;
        op = get(&s, ids[i]);
        CHECK_EQ_INT(op->err.code, TMS_OK);
        CHECK_EQ_INT(op->task.version, was_u2 ? 2 : 1);
        CHECK_EQ_INT(op->task.updated_at_ms, was_u2 ? T0 + 5000 : T0);
        CHECK_EQ_STR(op->task.assigned_to, i == 2 ? U1 : "");
        tms_task_op_free(&op);
    }
    check_unassigned_stored_null(&s, 4);

    /* again: nothing left to change; and a user with no tasks */
    op = task_op(TMS_TASK_UNASSIGN_USER);
    snprintf(op->user_id, sizeof(op->user_id), "%s", U2);
    op = run_task(&s, op);
    CHECK_EQ_INT(op->err.code, TMS_OK);
    CHECK_EQ_INT(op->count, 0);
    tms_task_op_free(&op);
    op = task_op(TMS_TASK_UNASSIGN_USER);
    snprintf(op->user_id, sizeof(op->user_id), "%s", U3);
    op = run_task(&s, op);
    CHECK_EQ_INT(op->count, 0);
    tms_task_op_free(&op);
    /* without a time from the caller the store's clock is used, never 0 */
    op = task_op(TMS_TASK_UNASSIGN_USER);
    snprintf(op->user_id, sizeof(op->user_id), "%s", U1);
    op = run_task(&s, op);
    CHECK_EQ_INT(op->count, 1);
    tms_task_op_free(&op);
    op = get(&s, ids[2]);
    CHECK(op->task.updated_at_ms > T0);
    CHECK_EQ_INT(op->task.version, 2);
    tms_task_op_free(&op);
    CHECK_EQ_INT(pending(&s), 0);
    close_store(&s);
}

/* The push log (issue 23): one event per change, in the change's transaction, read
 * in seq order with filters matching before or after the change, and trimmed by age
 * and count without ever dropping the newest. */
static tms_task_op_t *events(store_t *s, int64_t after, const char *assignee, int64_t task_id)
{
    tms_task_op_t *op = task_op(TMS_TASK_EVENTS);
    op->after_id = after;
    op->limit = 100;
    op->id = task_id;
    snprintf(op->filter_assigned_to, sizeof(op->filter_assigned_to), "%s", assignee);
    op = run_task(s, op);
    CHECK_EQ_INT(op->err.code, TMS_OK);
    return op;
}

static void test_push_log(void)
{
    store_t s = open_store(backend);
    tms_task_op_t *op;
    int64_t a, b, first, last, base;
    /* a backend shared with other tests (PostgreSQL) has their events: after base */
    op = task_op(TMS_TASK_EVENTS);
    op->limit = 0; /* the bounds only */
    op = run_task(&s, op);
    CHECK_EQ_INT(op->err.code, TMS_OK);
    base = op->last_seq;
    tms_task_op_free(&op);
    a = create(&s, "a", "open", U1);
    b = create(&s, "b", "open", "");
    op = update_op(a, 1);
    op->set_assigned_to = true;
    snprintf(op->task.assigned_to, sizeof(op->task.assigned_to), "%s", U2);
    op = run_task(&s, op);
    CHECK_EQ_INT(op->err.code, TMS_OK);
    tms_task_op_free(&op);
    op = update_op(b, 1);
    op->set_title = true;
    op->task.title = tms_arena_strdup(op->arena, "b2");
    op = run_task(&s, op);
    tms_task_op_free(&op);
    op = task_op(TMS_TASK_DELETE);
    op->id = b;
    op = run_task(&s, op);
    CHECK_EQ_INT(op->err.code, TMS_OK);
    tms_task_op_free(&op);

    op = events(&s, base, "", 0);
    CHECK_EQ_INT(op->nevents, 5);
    if (op->nevents == 5) {
        static const tms_task_event_type_t want[] = {
            TMS_TASK_EVENT_CREATED, TMS_TASK_EVENT_CREATED, TMS_TASK_EVENT_ASSIGNED,
            TMS_TASK_EVENT_UPDATED, TMS_TASK_EVENT_DELETED};
        for (size_t i = 0; i < 5; i++) {
            CHECK_EQ_INT(op->events[i].type, want[i]);
            if (i)
                CHECK(op->events[i].seq > op->events[i - 1].seq);
        }
        CHECK_EQ_STR(op->events[2].task.assigned_to, U2);
        CHECK_EQ_STR(op->events[2].prev_assigned_to, U1);
        CHECK_EQ_STR(op->events[3].task.title, "b2");
        CHECK_EQ_INT(op->events[3].task.version, 2);
        CHECK_EQ_INT(op->events[4].task.id, b);
        CHECK(op->first_seq <= op->events[0].seq);
        CHECK_EQ_INT(op->last_seq, op->events[4].seq);
    }
    first = op->nevents ? op->events[0].seq : 0;
    last = op->last_seq;
    tms_task_op_free(&op);

    /* after an event; filters: U1 before the change counts, one task only */
    op = events(&s, first, "", 0);
    CHECK_EQ_INT(op->nevents, 4);
    tms_task_op_free(&op);
    op = events(&s, base, U1, 0);
    CHECK_EQ_INT(op->nevents, 2); /* a created for U1, a assigned away from U1 */
    tms_task_op_free(&op);
    op = events(&s, base, "", b);
    CHECK_EQ_INT(op->nevents, 3);
    tms_task_op_free(&op);

    /* keep the newest 2: the rest goes, the bounds say so, seq never comes back */
    op = task_op(TMS_TASK_EVENTS_PURGE);
    op->before_ms = 0;
    op->keep_events = 2;
    op->limit = 1000;
    op = run_task(&s, op);
    CHECK_EQ_INT(op->err.code, TMS_OK);
    CHECK(op->count >= 3);
    tms_task_op_free(&op);
    op = events(&s, 0, "", 0);
    CHECK_EQ_INT(op->nevents, 2);
    CHECK_EQ_INT(op->last_seq, last);
    CHECK(op->first_seq > first);
    tms_task_op_free(&op);
    /* by age: everything older than now, but never the newest */
    op = task_op(TMS_TASK_EVENTS_PURGE);
    op->before_ms = INT64_MAX / 2;
    op->keep_events = 1000;
    op->limit = 1000;
    op = run_task(&s, op);
    CHECK_EQ_INT(op->err.code, TMS_OK);
    CHECK_EQ_INT(op->count, 1);
    tms_task_op_free(&op);
    op = events(&s, 0, "", 0);
    CHECK_EQ_INT(op->nevents, 1);
    CHECK_EQ_INT(op->first_seq, last);
    tms_task_op_free(&op);
    create(&s, "c", "open", "");
    op = events(&s, last, "", 0);
    CHECK_EQ_INT(op->nevents, 1);
    if (op->nevents == 1)
        CHECK(op->events[0].seq > last);
    tms_task_op_free(&op);
    close_store(&s);
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
    store_t s = open_store(backend);
    tms_task_op_t *op;
    int64_t id, id_other, id_late;
    const char *h1 = "1111111111111111111111111111111111111111111111111111111111111111";
    const char *h2 = "2222222222222222222222222222222222222222222222222222222222222222";
    op = run_task(&s, idem_op(U1, "key-1", h1, T0));
    CHECK_EQ_INT(op->err.code, TMS_OK);
    CHECK(!op->replayed);
    id = op->task.id;
    tms_task_op_free(&op);
    CHECK_EQ_INT(pending(&s), 1);

    /* same user, key and request: the first task, nothing new written */
    op = run_task(&s, idem_op(U1, "key-1", h1, T0 + 60000));
    CHECK_EQ_INT(op->err.code, TMS_OK);
    CHECK(op->replayed);
    CHECK_EQ_INT(op->task.id, id);
    CHECK_EQ_STR(op->task.title, "idem");
    CHECK_EQ_INT(op->task.created_at_ms, T0);
    CHECK_EQ_INT(op->task.version, 1);
    tms_task_op_free(&op);
    CHECK_EQ_INT(count_tasks(&s), 1);
    CHECK_EQ_INT(pending(&s), 1); /* one event: no second email */

    /* same key, different request */
    op = run_task(&s, idem_op(U1, "key-1", h2, T0 + 60000));
    CHECK_EQ_INT(op->err.code, TMS_ALREADY_EXISTS);
    CHECK_EQ_INT(op->reason, TMS_TASK_IDEMPOTENCY_REUSED);
    CHECK_EQ_STR(op->err.message, "");
    CHECK(!op->replayed);
    tms_task_op_free(&op);
    CHECK_EQ_INT(count_tasks(&s), 1);
    CHECK_EQ_INT(pending(&s), 1);

    /* keys are per user */
    op = run_task(&s, idem_op(U2, "key-1", h2, T0 + 60000));
    CHECK_EQ_INT(op->err.code, TMS_OK);
    CHECK(!op->replayed);
    id_other = op->task.id;
    CHECK(id_other != id);
    tms_task_op_free(&op);

    /* after the TTL the key is free again, whatever the request */
    op = run_task(&s, idem_op(U1, "key-1", h2, T0 + TMS_IDEMPOTENCY_TTL_MS + 1));
    CHECK_EQ_INT(op->err.code, TMS_OK);
    CHECK(!op->replayed);
    id_late = op->task.id;
    CHECK(id_late > id_other);
    tms_task_op_free(&op);
    CHECK_EQ_INT(pending(&s), 3);
    op = run_task(&s, idem_op(U1, "key-1", h2, T0 + TMS_IDEMPOTENCY_TTL_MS + 2));
    CHECK(op->replayed);
    CHECK_EQ_INT(op->task.id, id_late);
    tms_task_op_free(&op);

    /* the task the key made is gone */
    op = task_op(TMS_TASK_DELETE);
    op->id = id_late;
    op = run_task(&s, op);
    CHECK_EQ_INT(op->err.code, TMS_OK);
    tms_task_op_free(&op);
    op = run_task(&s, idem_op(U1, "key-1", h2, T0 + TMS_IDEMPOTENCY_TTL_MS + 3));
    CHECK_EQ_INT(op->err.code, TMS_ALREADY_EXISTS);
    CHECK_EQ_INT(op->reason, TMS_TASK_IDEMPOTENCY_GONE);
    tms_task_op_free(&op);
    CHECK_EQ_INT(count_tasks(&s), 2);
    CHECK_EQ_INT(pending(&s), 3);
    close_store(&s);
}

#define SAME_KEY 8

static tms_task_op_t *same_key[SAME_KEY];
static int nsame_key;

static void on_same_key(tms_msg_t *msg)
{
    same_key[nsame_key++] = (tms_task_op_t *)msg;
}

/* Creates with one key sent at once (on PostgreSQL they go out on several
 * connections): one writes the task and its event, every other replays it. */
static void test_idempotency_concurrent(void)
{
    store_t s = open_store(backend);
    const char *h = "3333333333333333333333333333333333333333333333333333333333333333";
    int fresh = 0;
    int64_t id;
    nsame_key = 0;
    for (int i = 0; i < SAME_KEY; i++) {
        tms_task_op_t *op = idem_op(U1, "key-c", h, T0 + i);
        op->msg.cont = on_same_key;
        CHECK_EQ_INT(tms_task_store_submit(s.tasks, &op), 0);
    }
    while (nsame_key < SAME_KEY)
        uv_run(&loop, UV_RUN_ONCE);
    id = same_key[0]->task.id;
    for (int i = 0; i < SAME_KEY; i++) {
        CHECK_EQ_INT(same_key[i]->err.code, TMS_OK);
        CHECK_EQ_INT(same_key[i]->task.id, id);
        fresh += !same_key[i]->replayed;
        tms_task_op_free(&same_key[i]);
    }
    CHECK_EQ_INT(fresh, 1);
    CHECK_EQ_INT(count_tasks(&s), 1);
    CHECK_EQ_INT(pending(&s), 1);
    close_store(&s);
}

static int nanswered;

static void count_reply(tms_msg_t *msg)
{
    tms_task_op_t *op = (tms_task_op_t *)msg;
    CHECK(op->err.code == TMS_OK || op->err.code == TMS_NOT_FOUND);
    nanswered++;
    tms_task_op_free(&op);
}

/* The lifecycle of core/port.h: unknown ops refused at once, busy counts what is in
 * flight, close refuses new ops, answers those accepted, calls back once after them
 * (never inside close), and leaves the backend's other ports serving. */
static void test_lifecycle(void)
{
    store_t s = open_store(backend);
    tms_task_op_t *op;
    int accepted = 0, closed = 0;

    op = task_op(0);
    CHECK_EQ_INT(tms_task_store_submit(s.tasks, &op), -TMS_EINVAL);
    CHECK(op != NULL);                      /* left with the caller */
    op->msg.op = TMS_TASK_EVENTS_PURGE + 1; /* past the last op */
    CHECK_EQ_INT(tms_task_store_submit(s.tasks, &op), -TMS_EINVAL);
    tms_task_op_free(&op);
    CHECK_EQ_INT(s.tasks->busy(s.tasks), 0);

    nanswered = 0;
    for (int i = 0; i < 20; i++) {
        op = task_op(i % 2 ? TMS_TASK_PING : TMS_TASK_GET);
        op->id = 1 + i;
        op->msg.cont = count_reply;
        if (tms_task_store_submit(s.tasks, &op) == 0)
            accepted++;
        else
            tms_task_op_free(&op);
    }
    CHECK_EQ_INT(accepted, 20);
    CHECK_EQ_INT(nanswered, 0); /* never on the caller's stack */
    /* At most what was accepted; not "> 0": the store's thread may have answered all
     * 20 already (it settles them when it posts the replies), which failed a CI run
     * on a loaded machine. */
    CHECK(s.tasks->busy(s.tasks) <= 20);
    s.tasks->close(s.tasks, on_closed, &closed);
    CHECK_EQ_INT(closed, 0); /* never inside close */
    op = task_op(TMS_TASK_PING);
    CHECK_EQ_INT(tms_task_store_submit(s.tasks, &op), -TMS_ECLOSED);
    CHECK(op != NULL);
    tms_task_op_free(&op);
    CHECK(spin_until(&closed, 1, 30000));
    CHECK_EQ_INT(nanswered, 20); /* every op accepted was answered before the callback */
    s.tasks = NULL;

    /* the same backend's outbox still serves; closing it releases the backend */
    CHECK(pending(&s) >= 0);
    close_store(&s);
    spin(20);
    CHECK_EQ_INT(closed, 1);
}

static void test_metrics(void)
{
    store_t s = open_store(backend);
    char line[160];
    create(&s, "m", "open", "");
    CHECK_EQ_INT(pending(&s), 0);
    snprintf(line, sizeof(line),
             "tms_store_duration_seconds_count{store=\"%s\",op=\"task_create\"}", backend);
    CHECK(metric_has(line));
    snprintf(line, sizeof(line), "tms_store_errors_total{store=\"%s\",op=\"task_update\"} 0",
             backend);
    CHECK(metric_has(line));
    snprintf(line, sizeof(line), "tms_store_inflight{store=\"%s\"} 0", backend);
    CHECK(metric_has(line));
    snprintf(line, sizeof(line), "tms_store_queue_depth{store=\"%s\"} 0", backend);
    CHECK(metric_has(line));
    close_store(&s);
    /* the gauges go with the store; the counters stay */
    snprintf(line, sizeof(line), "tms_store_inflight{store=\"%s\"}", backend);
    CHECK(!metric_has(line));
}

static void tests(const adapter_t *a)
{
    backend = a->name;
    RUN_TEST(test_create_get);
    RUN_TEST(test_list);
    RUN_TEST(test_update);
    RUN_TEST(test_delete);
    RUN_TEST(test_unassign_user);
    RUN_TEST(test_push_log);
    RUN_TEST(test_idempotency);
    RUN_TEST(test_idempotency_concurrent);
    RUN_TEST(test_lifecycle);
    RUN_TEST(test_metrics);
}

static const adapter_t adapters[] = {
    {"sqlite", sqlite_setup, sqlite_teardown},
    {"postgres", pg_setup, pg_teardown},
};

int main(int argc, char **argv)
{
    return run_suite("task_store", adapters, sizeof(adapters) / sizeof(adapters[0]), argc, argv,
                     tests);
}
