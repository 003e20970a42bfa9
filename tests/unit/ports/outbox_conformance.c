/* The outbox and inbox port (core/outbox.h, core/port.h) on every adapter: SQLite, and
 * PostgreSQL and MongoDB when TMS_TEST_PG_URL / TMS_TEST_MONGO_URL are set. Standalone
 * events, fetching in order, marking sent (idempotent), the consumers' handled-event
 * log and its trim, and the lifecycle. */
#include "core/clock.h"
#include "core/events.h"
#include "stores.h"

#define T0 1764338400000LL

static const char *backend;

/* The op answers to this test's mailbox. */
static tms_outbox_op_t *box_reply(tms_outbox_op_t *op)
{
    op->msg.reply_to = replies;
    op->msg.cont = on_reply;
    op->err.code = TMS_UNKNOWN; /* the store must overwrite it */
    return op;
}

static tms_outbox_op_t *box_op(int kind)
{
    return box_reply(tms_outbox_op_new(kind));
}

static tms_outbox_op_t *run_box(store_t *s, tms_outbox_op_t *op)
{
    tms_msg_t *got = NULL;
    op->msg.ctx = &got;
    CHECK_EQ_INT(tms_outbox_submit(s->outbox, &op), 0);
    CHECK(op == NULL);
    CHECK(got == NULL); /* never answered on the caller's stack */
    return (tms_outbox_op_t *)wait_reply(&got);
}

static long long pending(store_t *s)
{
    tms_outbox_op_t *op = run_box(s, box_op(TMS_OUTBOX_PENDING));
    long long n = op->err.code == TMS_OK ? op->count : -1;
    tms_outbox_op_free(&op);
    return n;
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

static tms_outbox_op_t *mark_op(const int64_t *seqs, size_t n)
{
    tms_outbox_op_t *op = box_op(TMS_OUTBOX_MARK_SENT);
    if (n) {
        op->seqs = tms_calloc(n, sizeof(int64_t));
        memcpy(op->seqs, seqs, n * sizeof(int64_t));
    }
    op->nseqs = n;
    return op;
}

static void test_outbox(void)
{
    store_t s = open_store(backend);
    tms_outbox_op_t *op;
    char ids[4][37];
    int64_t seqs[4] = {0};
    CHECK_EQ_STR(s.outbox->name, backend);
    CHECK_EQ_INT(pending(&s), 0);
    for (int i = 0; i < 4; i++) {
        char payload[32];
        tms_event_id_new(ids[i]);
        snprintf(payload, sizeof(payload), "{\"n\":%d}", i);
        op = run_box(&s, add_op(ids[i], TMS_TOPIC_COMPENSATE, "k1", payload));
        CHECK_EQ_INT(op->err.code, TMS_OK);
        tms_outbox_op_free(&op);
    }
    CHECK_EQ_INT(pending(&s), 4);
    /* the same event again is a retry, not a second event */
    op = run_box(&s, add_op(ids[1], TMS_TOPIC_COMPENSATE, "k1", "{\"n\":9}"));
    CHECK_EQ_INT(op->err.code, TMS_OK);
    tms_outbox_op_free(&op);
    CHECK_EQ_INT(pending(&s), 4);

    op = box_op(TMS_OUTBOX_FETCH);
    op->limit = 3;
    op = run_box(&s, op);
    CHECK_EQ_INT(op->err.code, TMS_OK);
    CHECK_EQ_INT(op->nevents, 3);
    for (size_t i = 0; i < op->nevents && i < 3; i++) {
        char payload[32];
        snprintf(payload, sizeof(payload), "{\"n\":%zu}", i);
        CHECK_EQ_STR(op->events[i].event_id, ids[i]);
        CHECK_EQ_STR(op->events[i].topic, TMS_TOPIC_COMPENSATE);
        CHECK_EQ_STR(op->events[i].key, "k1");
        CHECK_EQ_STR(op->events[i].payload, payload);
        CHECK(op->events[i].created_at_ms > T0);
        if (i > 0)
            CHECK(op->events[i].seq > op->events[i - 1].seq);
        seqs[i] = op->events[i].seq;
    }
    tms_outbox_op_free(&op);

    /* after_seq: only the events after it (the relay's read past what it handed) */
    op = box_op(TMS_OUTBOX_FETCH);
    op->limit = 10;
    op->after_seq = seqs[1];
    op = run_box(&s, op);
    CHECK_EQ_INT(op->err.code, TMS_OK);
    CHECK_EQ_INT(op->nevents, 2);
    if (op->nevents == 2) {
        CHECK_EQ_STR(op->events[0].event_id, ids[2]);
        CHECK_EQ_STR(op->events[1].event_id, ids[3]);
    }
    tms_outbox_op_free(&op);

    /* mark the first two sent (and one that does not exist) */
    {
        int64_t mark[3] = {seqs[0], seqs[1], 999999};
        op = run_box(&s, mark_op(mark, 3));
    }
    CHECK_EQ_INT(op->err.code, TMS_OK);
    CHECK_EQ_INT(pending(&s), 2);
    /* sent events leave the table: the outbox holds only what is pending (marked rows
     * used to stay for good) */
    {
        long long n = sql_query(&s, "SELECT count(*) FROM outbox");
        if (n != -2)
            CHECK_EQ_INT(n, 2);
    }
    /* again: idempotent */
    op = run_box(&s, op);
    CHECK_EQ_INT(op->err.code, TMS_OK);
    tms_outbox_op_free(&op);
    CHECK_EQ_INT(pending(&s), 2);

    op = box_op(TMS_OUTBOX_FETCH);
    op->limit = 10;
    op = run_box(&s, op);
    CHECK_EQ_INT(op->nevents, 2);
    if (op->nevents == 2) {
        CHECK_EQ_STR(op->events[0].event_id, ids[2]);
        CHECK_EQ_STR(op->events[1].event_id, ids[3]);
        seqs[3] = op->events[1].seq;
    }
    /* resubmitted: the old events are dropped, not leaked */
    op = run_box(&s, op);
    CHECK_EQ_INT(op->nevents, 2);
    tms_outbox_op_free(&op);

    {
        int64_t mark[2] = {seqs[2], seqs[3]};
        op = run_box(&s, mark_op(mark, 2));
    }
    CHECK_EQ_INT(op->err.code, TMS_OK);
    tms_outbox_op_free(&op);
    CHECK_EQ_INT(pending(&s), 0);
    op = box_op(TMS_OUTBOX_FETCH);
    op->limit = 10;
    op = run_box(&s, op);
    CHECK_EQ_INT(op->err.code, TMS_OK);
    CHECK_EQ_INT(op->nevents, 0);
    tms_outbox_op_free(&op);

    /* an empty mark is fine */
    op = run_box(&s, mark_op(NULL, 0));
    CHECK_EQ_INT(op->err.code, TMS_OK);
    tms_outbox_op_free(&op);
    close_store(&s);
}

/* An inbox op for one event (the task and auth actors' ops). */
static tms_outbox_op_t *inbox_op(int kind, const char *consumer, const char *event_id)
{
    return box_reply(tms_inbox_op_one(kind, consumer, event_id));
}

static void test_inbox(void)
{
    store_t s = open_store(backend);
    tms_outbox_op_t *op;
    char e1[37], e2[37];
    tms_event_id_new(e1);
    tms_event_id_new(e2);
    op = run_box(&s, inbox_op(TMS_INBOX_SEEN, "task", e1));
    CHECK_EQ_INT(op->err.code, TMS_OK);
    CHECK(!op->ids_seen[0]);
    tms_outbox_op_free(&op);
    for (int i = 0; i < 2; i++) { /* idempotent */
        op = run_box(&s, inbox_op(TMS_INBOX_RECORD, "task", e1));
        CHECK_EQ_INT(op->err.code, TMS_OK);
        tms_outbox_op_free(&op);
    }
    {
        long long n = sql_query(&s, "SELECT count(*) FROM inbox");
        if (n != -2)
            CHECK_EQ_INT(n, 1);
    }
    /* an op naming no event is refused, not "recorded"; so is a question with no room
     * for its answers */
    for (int kind = TMS_INBOX_SEEN; kind <= TMS_INBOX_RECORD + 1; kind++) {
        if (kind <= TMS_INBOX_RECORD) {
            op = box_op(kind);
        } else {
            op = box_reply(tms_inbox_op_new(TMS_INBOX_RECORD, "task", 1)); /* no ids_seen */
            snprintf(op->ids[0], sizeof(op->ids[0]), "%s", e1);
            op->msg.op = TMS_INBOX_SEEN;
        }
        CHECK_EQ_INT(tms_outbox_submit(s.outbox, &op), -TMS_EINVAL);
        CHECK(op != NULL);
        tms_outbox_op_free(&op);
    }
    op = run_box(&s, inbox_op(TMS_INBOX_SEEN, "task", e1));
    CHECK_EQ_INT(op->err.code, TMS_OK);
    CHECK(op->ids_seen[0]);
    /* reused for another question: the old answer does not stick */
    snprintf(op->ids[0], sizeof(op->ids[0]), "%s", e2);
    op = run_box(&s, op);
    CHECK(!op->ids_seen[0]);
    tms_outbox_op_free(&op);
    /* per consumer */
    op = run_box(&s, inbox_op(TMS_INBOX_SEEN, "notifier", e1));
    CHECK(!op->ids_seen[0]);
    tms_outbox_op_free(&op);
    CHECK_EQ_INT(pending(&s), 0); /* the inbox is not the outbox */
    close_store(&s);
}

/* Several events in one op (the notifier's batches): each its own answer, records
 * idempotent per event; ids a producer chose, with a quote and a backslash in them,
 * are taken as they are. */
static tms_outbox_op_t *inbox_batch(int kind, char (*ids)[37], size_t n)
{
    tms_outbox_op_t *op = box_reply(tms_inbox_op_new(kind, "notifier", n));
    memcpy(op->ids, ids, n * sizeof(*ids));
    return op;
}

static void test_inbox_batch(void)
{
    store_t s = open_store(backend);
    tms_outbox_op_t *op;
    char ids[4][37] = {"", "odd \"id\" \\ {x,y}", "", ""};
    tms_event_id_new(ids[0]);
    tms_event_id_new(ids[2]);
    tms_event_id_new(ids[3]);
    /* two recorded, one of them alone before */
    op = run_box(&s, inbox_op(TMS_INBOX_RECORD, "notifier", ids[2]));
    CHECK_EQ_INT(op->err.code, TMS_OK);
    tms_outbox_op_free(&op);
    op = run_box(&s, inbox_batch(TMS_INBOX_RECORD, ids, 3)); /* ids[2] again: fine */
    CHECK_EQ_INT(op->err.code, TMS_OK);
    tms_outbox_op_free(&op);
    {
        long long n = sql_query(&s, "SELECT count(*) FROM inbox");
        if (n != -2)
            CHECK_EQ_INT(n, 3);
    }
    op = run_box(&s, inbox_batch(TMS_INBOX_SEEN, ids, 4));
    CHECK_EQ_INT(op->err.code, TMS_OK);
    CHECK(op->ids_seen[0] && op->ids_seen[1] && op->ids_seen[2]);
    CHECK(!op->ids_seen[3]);
    tms_outbox_op_free(&op);
    /* one by one, the odd id is the same event */
    op = run_box(&s, inbox_op(TMS_INBOX_SEEN, "notifier", ids[1]));
    CHECK(op->ids_seen[0]);
    tms_outbox_op_free(&op);
    op = run_box(&s, inbox_op(TMS_INBOX_SEEN, "task", ids[1])); /* per consumer */
    CHECK(!op->ids_seen[0]);
    tms_outbox_op_free(&op);
    close_store(&s);
}

static tms_outbox_op_t *trim_op(int64_t before_ms, int limit)
{
    tms_outbox_op_t *op = box_op(TMS_INBOX_TRIM);
    op->before_ms = before_ms;
    op->limit = limit;
    return op;
}

/* Retention: a trim deletes the records handled before its cutoff, of every consumer,
 * at most its limit a step; younger records stay, and a trimmed event reads as
 * unseen. Pending outbox events are not touched. */
static void test_inbox_trim(void)
{
    store_t s = open_store(backend);
    tms_outbox_op_t *op;
    char ids[5][37];
    int64_t t0 = tms_now_ms(), left = 5;
    for (int i = 0; i < 5; i++) {
        tms_event_id_new(ids[i]);
        op = run_box(&s, inbox_op(TMS_INBOX_RECORD, i < 4 ? "notifier" : "task", ids[i]));
        CHECK_EQ_INT(op->err.code, TMS_OK);
        tms_outbox_op_free(&op);
    }
    op = run_box(&s, add_op("0b7e1b8e-0000-4000-8000-000000000001", "notifications", "k", "{}"));
    CHECK_EQ_INT(op->err.code, TMS_OK);
    tms_outbox_op_free(&op);
    /* a cutoff before they were handled: nothing goes */
    op = run_box(&s, trim_op(t0 - 3600 * 1000, 100));
    CHECK_EQ_INT(op->err.code, TMS_OK);
    CHECK_EQ_INT(op->count, 0);
    tms_outbox_op_free(&op);
    /* after them: all go, two a step at most, each step from where the one before
     * stopped (as core/inbox_trim.c hands it on); a full step says more may come, the
     * last says none */
    {
        int64_t cutoff = tms_now_ms() + 1000;
        char resume[sizeof(op->resume)] = "";
        for (int step = 0; step < 4; step++) {
            op = trim_op(cutoff, 2);
            snprintf(op->resume, sizeof(op->resume), "%s", resume);
            op = run_box(&s, op);
            CHECK_EQ_INT(op->err.code, TMS_OK);
            CHECK_EQ_INT(op->count, left < 2 ? left : 2);
            if (op->count == 2)
                CHECK(op->more);
            if (step == 3)
                CHECK(!op->more);
            left -= op->count;
            snprintf(resume, sizeof(resume), "%s", op->resume);
            tms_outbox_op_free(&op);
        }
    }
    for (int i = 0; i < 5; i++) {
        op = run_box(&s, inbox_op(TMS_INBOX_SEEN, i < 4 ? "notifier" : "task", ids[i]));
        CHECK_EQ_INT(op->err.code, TMS_OK);
        CHECK(!op->ids_seen[0]);
        tms_outbox_op_free(&op);
    }
    {
        long long n = sql_query(&s, "SELECT count(*) FROM inbox");
        if (n != -2)
            CHECK_EQ_INT(n, 0);
    }
    CHECK_EQ_INT(pending(&s), 1); /* the outbox is not the inbox */
    close_store(&s);
}

static int nanswered;

static void count_reply(tms_msg_t *msg)
{
    tms_outbox_op_t *op = (tms_outbox_op_t *)msg;
    CHECK_EQ_INT(op->err.code, TMS_OK);
    nanswered++;
    tms_outbox_op_free(&op);
}

static void test_lifecycle(void)
{
    store_t s = open_store(backend);
    tms_outbox_op_t *op;
    int accepted = 0, closed = 0;

    op = box_op(0);
    CHECK_EQ_INT(tms_outbox_submit(s.outbox, &op), -TMS_EINVAL);
    CHECK(op != NULL);
    op->msg.op = TMS_INBOX_TRIM + 1;
    CHECK_EQ_INT(tms_outbox_submit(s.outbox, &op), -TMS_EINVAL);
    tms_outbox_op_free(&op);
    CHECK_EQ_INT(s.outbox->busy(s.outbox), 0);

    nanswered = 0;
    for (int i = 0; i < 20; i++) {
        char id[37];
        tms_event_id_new(id);
        op = i % 2 ? box_op(TMS_OUTBOX_PENDING) : add_op(id, TMS_TOPIC_COMPENSATE, "k", "{}");
        op->msg.cont = count_reply;
        if (tms_outbox_submit(s.outbox, &op) == 0)
            accepted++;
        else
            tms_outbox_op_free(&op);
    }
    CHECK_EQ_INT(accepted, 20);
    CHECK(s.outbox->busy(s.outbox) <= 20);
    s.outbox->close(s.outbox, on_closed, &closed);
    CHECK_EQ_INT(closed, 0); /* never inside close */
    op = box_op(TMS_OUTBOX_PENDING);
    CHECK_EQ_INT(tms_outbox_submit(s.outbox, &op), -TMS_ECLOSED);
    CHECK(op != NULL);
    tms_outbox_op_free(&op);
    CHECK(spin_until(&closed, 1, 30000));
    CHECK_EQ_INT(nanswered, 20); /* every op accepted was answered before the callback */
    s.outbox = NULL;
    close_store(&s); /* the backend's other ports; the last releases it */
    CHECK_EQ_INT(closed, 1);
}

static void test_metrics(void)
{
    store_t s = open_store(backend);
    char line[160];
    CHECK_EQ_INT(pending(&s), 0);
    snprintf(line, sizeof(line),
             "tms_store_duration_seconds_count{store=\"%s\",op=\"outbox_pending\"}", backend);
    CHECK(metric_has(line));
    snprintf(line, sizeof(line), "tms_store_errors_total{store=\"%s\",op=\"inbox_seen\"} 0",
             backend);
    CHECK(metric_has(line));
    close_store(&s);
}

/* Processes sharing one outbox (tms_outbox_t.lead): on PostgreSQL the first to ask
 * holds the lead; a second learns another holds it and keeps learning so at its tries,
 * its wake reaches the leader, and once the leader's pool closes (its session and lock
 * gone) the second takes the lead at its next try. A store one process relays (SQLite,
 * MongoDB) has no lead. Two pools on one loop stand for two processes. */
typedef struct lead_seen {
    int held, other, unknown, woken;
} lead_seen_t;

static void on_lead(void *arg, tms_outbox_lead_t what)
{
    lead_seen_t *l = arg;
    l->held += what == TMS_LEAD_HELD;
    l->other += what == TMS_LEAD_OTHER;
    l->unknown += what == TMS_LEAD_UNKNOWN;
    l->woken += what == TMS_LEAD_WOKEN;
}

/* Opens a and b on the backend: a holds the lead, b has learned another holds it. False
 * (nothing left open) when the backend has no lead. */
static bool contenders(store_t *a, store_t *b, lead_seen_t *la, lead_seen_t *lb)
{
    *a = open_store(backend);
    if (!a->outbox->lead) {
        CHECK(a->outbox->wake_leader == NULL);
        close_store(a);
        return false;
    }
    a->outbox->lead(a->outbox, on_lead, la);
    CHECK(spin_until(&la->held, 1, 10000));
    *b = open_store(backend);
    b->outbox->lead(b->outbox, on_lead, lb);
    CHECK(spin_until(&lb->other, 1, 10000));
    return true;
}

static void test_lead(void)
{
    store_t a, b;
    lead_seen_t la = {0}, lb = {0};
    if (!contenders(&a, &b, &la, &lb))
        return;
    b.outbox->wake_leader(b.outbox);
    CHECK(spin_until(&la.woken, 1, 10000));
    spin(1500); /* b tried again at least once, in vain */
    CHECK_EQ_INT(lb.held, 0);
    CHECK_EQ_INT(lb.other, 1); /* reported once, not per try */
    CHECK_EQ_INT(la.held, 1);
    a.outbox->lead(a.outbox, NULL, NULL);
    close_store(&a);
    CHECK(spin_until(&lb.held, 1, 5000));
    CHECK_EQ_INT(la.unknown, 0); /* nothing told after it unregistered */
    b.outbox->lead(b.outbox, NULL, NULL);
    close_store(&b);
}

/* A process standing aside that keeps writing (a wake every 2 ms, as under load)
 * still takes the lead once the leader's session is gone. */
static tms_outbox_t *busy_outbox;
static int nbusy;
static void on_busy_write(uv_check_t *t)
{
    (void)t;
    nbusy++;
    busy_outbox->wake_leader(busy_outbox);
}

static void test_lead_taken_while_writing(void)
{
    store_t a, b;
    lead_seen_t la = {0}, lb = {0};
    uv_check_t w;
    if (!contenders(&a, &b, &la, &lb))
        return;
    busy_outbox = b.outbox;
    uv_check_init(&loop, &w);
    uv_check_start(&w, on_busy_write);
    a.outbox->lead(a.outbox, NULL, NULL);
    close_store(&a);
    CHECK(spin_until(&lb.held, 1, 5000));
    uv_close((uv_handle_t *)&w, NULL);
    b.outbox->lead(b.outbox, NULL, NULL);
    close_store(&b);
}

/* A relay that stops (shutdown: the bus, the actors and the stores close after it)
 * gives the lead up at once: another process takes it at its next try, without
 * waiting for this one's pool to close. */
static void test_lead_given_up_on_unregister(void)
{
    store_t a, b;
    lead_seen_t la = {0}, lb = {0};
    if (!contenders(&a, &b, &la, &lb))
        return;
    a.outbox->lead(a.outbox, NULL, NULL); /* a's relay stopped; its pool stays open */
    CHECK(spin_until(&lb.held, 1, 3000));
    b.outbox->lead(b.outbox, NULL, NULL);
    close_store(&b);
    close_store(&a);
}

static void tests(const adapter_t *a)
{
    backend = a->name;
    RUN_TEST(test_outbox);
    RUN_TEST(test_inbox);
    RUN_TEST(test_inbox_batch);
    RUN_TEST(test_inbox_trim);
    RUN_TEST(test_lifecycle);
    RUN_TEST(test_metrics);
    RUN_TEST(test_lead);
    RUN_TEST(test_lead_taken_while_writing);
    RUN_TEST(test_lead_given_up_on_unregister);
}

static const adapter_t adapters[] = {
    {"sqlite", sqlite_setup, sqlite_teardown},
    {"postgres", pg_setup, pg_teardown},
    {"mongodb", mongo_setup, mongo_teardown},
};

int main(int argc, char **argv)
{
    return run_suite("outbox", adapters, sizeof(adapters) / sizeof(adapters[0]), argc, argv, tests);
}
