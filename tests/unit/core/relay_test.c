/* Outbox relay with an in-memory outbox and bus (fakes are fine in unit tests):
 * events go out in seq order, only accepted ones are marked sent, refused ones are
 * retried on the next poll, a refused event holds its key only (its later events
 * follow it in order), and a kick runs a batch at once. */
#include <pthread.h>
#include <uv.h>

#include "core/alloc.h"
#include "core/relay.h"
#include "core/status.h"
#include "test.h"
#include "test_loop.h"

#define N 5
#define MAX_EVENTS 16

typedef struct fake_outbox {
    tms_outbox_t port;
    int sent[MAX_EVENTS + 1]; /* by seq */
    int fetches;
    int n;                      /* events written (seq 1..n); 0: N */
    int key_of[MAX_EVENTS + 1]; /* the key of seq (0: the seq itself) */
    int uncommitted;            /* this seq is not visible yet (0: none) */
    int hold_marks;             /* mark ops wait in held_mark until release_mark */
    tms_outbox_op_t *held_mark;
    int full_reads_while_marking; /* fetches from the first pending event, a mark out */
    int hold_fetches;             /* fetch ops wait in held_fetch until fail_fetch */
    tms_outbox_op_t *held_fetch;
} fake_outbox_t;

static int outbox_submit(tms_outbox_t *self, tms_outbox_op_t **pop)
{
    fake_outbox_t *o = (fake_outbox_t *)self;
    tms_outbox_op_t *op = *pop;
    *pop = NULL;
    if (op->msg.op == TMS_OUTBOX_FETCH) {
        o->fetches++;
        o->full_reads_while_marking += o->held_mark && op->after_seq == 0;
        int n = o->n ? o->n : N;
        op->events = tms_calloc((size_t)n, sizeof(tms_outbox_event_t));
        for (int seq = 1; seq <= n && (int)op->nevents < op->limit; seq++) {
            if (o->sent[seq] || seq <= op->after_seq || seq == o->uncommitted)
                continue;
            tms_outbox_event_t *e = &op->events[op->nevents++];
            e->seq = seq;
            snprintf(e->topic, sizeof(e->topic), "t");
            snprintf(e->key, sizeof(e->key), "%d", o->key_of[seq] ? o->key_of[seq] : seq);
            e->payload = tms_malloc(16);
            snprintf(e->payload, 16, "%d", seq);
        }
        if (o->hold_fetches) { /* answered by release_fetch or fail_fetch */
            o->held_fetch = op;
            return 0;
        }
    } else if (op->msg.op == TMS_OUTBOX_MARK_SENT && o->hold_marks) {
        CHECK(o->held_mark == NULL); /* one mark out at a time */
        o->held_mark = op;
        return 0;
    } else if (op->msg.op == TMS_OUTBOX_MARK_SENT) {
        for (size_t i = 0; i < op->nseqs; i++)
            o->sent[op->seqs[i]]++;
    }
    tms_mailbox_reply(&op->msg);
    return 0;
}

/* The held mark commits: its events are sent, and the reply goes back. */
static void release_mark(fake_outbox_t *o)
{
    tms_outbox_op_t *op = o->held_mark;
    o->held_mark = NULL;
    for (size_t i = 0; i < op->nseqs; i++)
        o->sent[op->seqs[i]]++;
    tms_mailbox_reply(&op->msg);
}

/* The held fetch fails (the database went away). */
static void fail_fetch(fake_outbox_t *o)
{
    tms_outbox_op_t *op = o->held_fetch;
    o->held_fetch = NULL;
    tms_error_set(&op->err, TMS_UNAVAILABLE, "database gone");
    tms_mailbox_reply(&op->msg);
}

/* The held fetch answers with what was committed when it was sent. */
static void release_fetch(fake_outbox_t *o)
{
    tms_outbox_op_t *op = o->held_fetch;
    o->held_fetch = NULL;
    tms_mailbox_reply(&op->msg);
}

typedef struct fake_bus {
    tms_event_bus_t port;
    int refuse_key;   /* publish of this key fails (async) */
    int refuse_seq;   /* publish of this seq fails (async) ... */
    int refuse_times; /* ... this many times */
    int hold_key;     /* publish of this key is done only when released (a mail backing off) */
    tms_publish_done_fn held_done;
    void *held_ctx;
    int order[64]; /* seqs published (again when retried) */
    int ok[64];    /* 1: that publish was accepted */
    int n;
} fake_bus_t;

static int bus_publish(tms_event_bus_t *self, const char *topic, const char *key,
                       const char *payload, size_t len, tms_publish_done_fn done, void *ctx)
{
    fake_bus_t *b = (fake_bus_t *)self;
    int k = atoi(key), seq = atoi(payload), refuse = k == b->refuse_key;
    (void)topic, (void)len;
    if (seq == b->refuse_seq && b->refuse_times > 0) {
        b->refuse_times--;
        refuse = 1;
    }
    if (b->n < 64) {
        b->ok[b->n] = !refuse && k != b->hold_key;
        b->order[b->n++] = seq;
    }
    if (k == b->hold_key) {
        b->held_done = done;
        b->held_ctx = ctx;
        return 0;
    }
    done(ctx, refuse ? -TMS_EIO : 0);
    return 0;
}

/* Stops r, frees it and closes the loop (every handle gone). */
static void stop_relay(uv_loop_t *loop, tms_relay_t **r)
{
    tms_relay_stop(*r, NULL, NULL);
    while (tms_relay_busy(*r))
        uv_run(loop, UV_RUN_ONCE);
    tms_relay_free(r);
    uv_run(loop, UV_RUN_DEFAULT);
    CHECK_EQ_INT(uv_loop_close(loop), 0);
}

/* Issue 20: no head-of-line blocking. An event the bus holds (a mail backing off on
 * the embedded bus) delays no other: the events after it, and those written while it
 * is held, are published and marked sent; it is not published twice while held, and
 * it is marked once it is done. */
static void test_held_event_delays_no_other(void)
{
    uv_loop_t loop;
    fake_outbox_t o = {.port = {.name = "fake", .submit = outbox_submit}};
    fake_bus_t b = {.port = {.name = "fake", .publish = bus_publish}, .hold_key = 2};
    tms_relay_t *r;
    int published2 = 0;
    uv_loop_init(&loop);
    r = tms_relay_new(&loop, &o.port, &b.port, 10000, "test"); /* only kicks run it */
    tms_test_spin_until(&loop, &o.sent[5], 1, 2000);
    CHECK_EQ_INT(o.sent[1] + o.sent[3] + o.sent[4] + o.sent[5], 4);
    CHECK_EQ_INT(o.sent[2], 0);
    CHECK(b.held_done != NULL);
    /* Written while 2 is held: out at the kick, without waiting for 2. */
    o.n = 8;
    tms_relay_kick(r);
    tms_test_spin_until(&loop, &o.sent[8], 1, 2000);
    CHECK_EQ_INT(o.sent[6] + o.sent[7] + o.sent[8], 3);
    CHECK_EQ_INT(o.sent[2], 0);
    tms_relay_kick(r); /* another fetch while 2 is still held: 2 is not published again */
    tms_test_spin(&loop, 50);
    for (int i = 0; i < b.n; i++)
        published2 += b.order[i] == 2;
    CHECK_EQ_INT(published2, 1);
    /* 2 is done at last: marked sent. */
    b.held_done(b.held_ctx, 0);
    tms_test_spin_until(&loop, &o.sent[2], 1, 2000);
    CHECK_EQ_INT(o.sent[2], 1);
    for (int seq = 1; seq <= 8; seq++)
        CHECK_EQ_INT(o.sent[seq], 1);
    stop_relay(&loop, &r);
}

/* PostgreSQL: a transaction that took seq 3 commits after the one that took 4 and 5.
 * The read after the highest seq handed (2) returns 4 and 5; 3 commits later, and its
 * kick reads after 5. The hole seen makes a read from the first pending event follow
 * within milliseconds, not at the next poll (10 s here; it was the 1.5 s p99 of the
 * Kafka pair at 100 creates/s with the 1 s poll). */
static void test_late_commit_below_handed_is_published_soon(void)
{
    uv_loop_t loop;
    fake_outbox_t o = {.port = {.name = "fake", .submit = outbox_submit}, .n = 2};
    fake_bus_t b = {.port = {.name = "fake", .publish = bus_publish}};
    tms_relay_t *r;
    uint64_t t0;
    uv_loop_init(&loop);
    r = tms_relay_new(&loop, &o.port, &b.port, 10000, "test"); /* the poll never comes */
    tms_test_spin_until(&loop, &o.sent[2], 1, 2000);
    CHECK_EQ_INT(o.sent[1] + o.sent[2], 2);
    o.n = 5;
    o.uncommitted = 3;
    tms_relay_kick(r);
    tms_test_spin_until(&loop, &o.sent[5], 1, 2000);
    CHECK_EQ_INT(o.sent[4] + o.sent[5], 2);
    CHECK_EQ_INT(o.sent[3], 0);
    o.uncommitted = 0; /* 3 commits, and kicks */
    tms_relay_kick(r);
    t0 = uv_now(&loop);
    tms_test_spin_until(&loop, &o.sent[3], 1, 3000);
    CHECK_EQ_INT(o.sent[3], 1);
    CHECK(uv_now(&loop) - t0 < 2000); /* not the 10 s poll (a generous bound) */
    stop_relay(&loop, &r);
}

/* How often seq was published before index at of the bus's order. */
static int pubs_before(const fake_bus_t *b, int seq, int at)
{
    int n = 0;
    for (int i = 0; i < at && i < b->n; i++)
        n += b->order[i] == seq;
    return n;
}

/* How often seq was published. */
static int published_count(const fake_bus_t *b, int seq)
{
    return pubs_before(b, seq, b->n);
}

/* An event committed while the relay's mark op is out (a PostgreSQL UPDATE waiting for
 * its commit on a busy server) is published at its kick, not after the mark: the read
 * after the highest seq handed does not touch the events being marked. A read from the
 * first pending event (the poll's) still waits for the mark, which would otherwise
 * return the events being marked, and they would go out twice. */
static void test_new_events_do_not_wait_for_a_mark(void)
{
    uv_loop_t loop;
    fake_outbox_t o = {.port = {.name = "fake", .submit = outbox_submit}, .hold_marks = 1};
    fake_bus_t b = {.port = {.name = "fake", .publish = bus_publish}};
    tms_relay_t *r;
    uv_loop_init(&loop);
    r = tms_relay_new(&loop, &o.port, &b.port, 1000, "test");
    tms_test_spin(&loop, 50);
    CHECK(o.held_mark != NULL); /* 1..5 published, their mark out */
    CHECK_EQ_INT(b.n, N);
    o.n = 8; /* committed meanwhile */
    tms_relay_kick(r);
    tms_test_spin(&loop, 50); /* below the 1 s poll */
    CHECK_EQ_INT(b.n, 8);
    for (int seq = 6; seq <= 8; seq++)
        CHECK_EQ_INT(published_count(&b, seq), 1);
    tms_test_spin(&loop, 1100); /* the poll comes due: its full read waits for the mark */
    CHECK_EQ_INT(o.full_reads_while_marking, 0);
    CHECK_EQ_INT(b.n, 8);
    while (o.held_mark) { /* the marks commit: 1..5, then 6..8 */
        release_mark(&o);
        tms_test_spin(&loop, 50);
    }
    for (int seq = 1; seq <= 8; seq++) {
        CHECK_EQ_INT(o.sent[seq], 1);
        CHECK_EQ_INT(published_count(&b, seq), 1); /* none went out twice */
    }
    CHECK_EQ_INT(o.full_reads_while_marking, 0);
    o.hold_marks = 0;
    stop_relay(&loop, &r);
}

/* A kick during a read (an event committed after the read's snapshot) is not lost when
 * a mark's reply comes before the read's, in one turn of the loop: the next read comes
 * at once, not at the poll (1 s here). The mark had taken the kick as its own and
 * cleared it, and the read's reply then planned the poll. */
static void test_kick_during_a_read_survives_a_mark(void)
{
    uv_loop_t loop;
    fake_outbox_t o = {.port = {.name = "fake", .submit = outbox_submit}, .n = 2, .hold_marks = 1};
    fake_bus_t b = {.port = {.name = "fake", .publish = bus_publish}};
    tms_relay_t *r;
    uv_loop_init(&loop);
    r = tms_relay_new(&loop, &o.port, &b.port, 1000, "test");
    tms_test_spin(&loop, 50);
    CHECK_EQ_INT(b.n, 2);
    CHECK(o.held_mark != NULL); /* 1 (or 1 and 2) being marked */
    o.hold_fetches = 1;
    o.n = 3;
    tms_relay_kick(r); /* a read beside the mark: it will return 3 */
    tms_test_spin(&loop, 20);
    CHECK(o.held_fetch != NULL);
    o.n = 4;
    tms_relay_kick(r); /* 4 committed after the read was sent */
    o.hold_fetches = 0;
    o.hold_marks = 0;
    release_mark(&o); /* both replies are taken in one turn, the mark's first */
    release_fetch(&o);
    tms_test_spin(&loop, 200); /* well below the poll */
    CHECK_EQ_INT(published_count(&b, 3), 1);
    CHECK_EQ_INT(published_count(&b, 4), 1);
    stop_relay(&loop, &r);
}

static void on_stopped(void *arg)
{
    *(int *)arg = 1;
}

/* Stopping while a full read is out, an event accepted meanwhile (its mark waits for the
 * read), and the read fails: the accepted event is still marked, and the stop completes
 * (before, the failed read's path never marked it, and the relay stayed busy forever: a
 * shutdown that never ended). */
static void test_stop_completes_after_a_failed_full_read(void)
{
    uv_loop_t loop;
    fake_outbox_t o = {.port = {.name = "fake", .submit = outbox_submit}, .n = 1};
    fake_bus_t b = {.port = {.name = "fake", .publish = bus_publish}, .hold_key = 1};
    tms_relay_t *r;
    int stopped = 0;
    uv_loop_init(&loop);
    r = tms_relay_new(&loop, &o.port, &b.port, 100, "test");
    tms_test_spin(&loop, 50);
    CHECK(b.held_done != NULL); /* 1 published, not yet done */
    o.hold_fetches = 1;
    tms_test_spin(&loop, 200); /* the poll's full read is out */
    CHECK(o.held_fetch != NULL);
    tms_relay_stop(r, on_stopped, &stopped);
    b.held_done(b.held_ctx, 0); /* 1 accepted: its mark waits for the full read */
    CHECK_EQ_INT(o.sent[1], 0);
    fail_fetch(&o);
    tms_test_spin_until(&loop, &stopped, 1, 500);
    CHECK_EQ_INT(o.sent[1], 1);
    CHECK_EQ_INT(stopped, 1);
    CHECK_EQ_INT(tms_relay_busy(r), 0);
    tms_relay_free(&r);
    uv_run(&loop, UV_RUN_DEFAULT);
    CHECK_EQ_INT(uv_loop_close(&loop), 0);
}

/* Where seq's first / last publish is in the bus's order (-1: never). */
static int first_pub(const fake_bus_t *b, int seq)
{
    for (int i = 0; i < b->n; i++) {
        if (b->order[i] == seq)
            return i;
    }
    return -1;
}

static int last_pub(const fake_bus_t *b, int seq)
{
    int at = -1;
    for (int i = 0; i < b->n; i++) {
        if (b->order[i] == seq)
            at = i;
    }
    return at;
}

/* Issue 20, the per-key order rule: a refused event holds its key only. Key 1's first
 * event (seq 1) is refused twice; its later events (3, then 6 written meanwhile) are
 * not published until the retry of 1 is accepted, and then follow it in order. Key 2
 * (seqs 2, 4, and 5 written after the refusal) is not held: all of it is accepted
 * before 1 is even published again. */
static void test_refused_event_holds_its_key_only(void)
{
    uv_loop_t loop;
    fake_outbox_t o = {.port = {.name = "fake", .submit = outbox_submit}, .n = 4};
    fake_bus_t b = {
        .port = {.name = "fake", .publish = bus_publish}, .refuse_seq = 1, .refuse_times = 2};
    tms_relay_t *r;
    int retry_of_1, accepted_1 = -1, i;
    o.key_of[1] = o.key_of[3] = o.key_of[6] = 1;
    o.key_of[2] = o.key_of[4] = o.key_of[5] = 2;
    uv_loop_init(&loop);
    r = tms_relay_new(&loop, &o.port, &b.port, 300, "test"); /* the retry back-off */
    tms_test_spin_until(&loop, &o.sent[4], 1, 2000);
    CHECK_EQ_INT(o.sent[2] + o.sent[4], 2);
    CHECK_EQ_INT(o.sent[1] + o.sent[3], 0);
    CHECK_EQ_INT(first_pub(&b, 3), -1); /* held behind 1 */
    /* Written after the refusal: key 2's event goes out at the kick, key 1's waits. */
    o.n = 6;
    tms_relay_kick(r);
    tms_test_spin_until(&loop, &o.sent[5], 1, 2000);
    CHECK_EQ_INT(o.sent[5], 1);
    CHECK_EQ_INT(pubs_before(&b, 1, first_pub(&b, 5)), 1); /* not delayed by 1's back-off */
    CHECK_EQ_INT(first_pub(&b, 6), -1);
    /* The retries: refused once more, then accepted; 3 and 6 follow, in order. */
    tms_test_spin_until(&loop, &o.sent[6], 1, 5000);
    for (int seq = 1; seq <= 6; seq++)
        CHECK_EQ_INT(o.sent[seq], 1);
    for (i = 0; i < b.n; i++) {
        if (b.order[i] == 1 && b.ok[i])
            accepted_1 = i;
    }
    retry_of_1 = first_pub(&b, 1) < accepted_1;
    CHECK(retry_of_1);
    CHECK(accepted_1 >= 0 && accepted_1 < first_pub(&b, 3));
    CHECK(first_pub(&b, 3) < first_pub(&b, 6));
    CHECK_EQ_INT(first_pub(&b, 3), last_pub(&b, 3)); /* each published once */
    CHECK_EQ_INT(first_pub(&b, 6), last_pub(&b, 6));
    CHECK_EQ_INT(b.refuse_times, 0);
    stop_relay(&loop, &r);
}

static void test_relay(void)
{
    uv_loop_t loop;
    fake_outbox_t o = {.port = {.name = "fake", .submit = outbox_submit}};
    fake_bus_t b = {.port = {.name = "fake", .publish = bus_publish}, .refuse_key = 3};
    tms_relay_t *r;
    uint64_t until;
    uv_loop_init(&loop);
    r = tms_relay_new(&loop, &o.port, &b.port, 50, "test");
    /* The first batch runs at start: 1..5 published in order, 3 refused. */
    until = uv_now(&loop) + 30;
    while (uv_now(&loop) < until)
        uv_run(&loop, UV_RUN_ONCE);
    CHECK_EQ_INT(b.n, 5);
    for (int i = 0; i < 5; i++)
        CHECK_EQ_INT(b.order[i], i + 1);
    CHECK_EQ_INT(o.sent[1] + o.sent[2] + o.sent[4] + o.sent[5], 4);
    CHECK_EQ_INT(o.sent[3], 0);
    /* The bus recovers: the poll retries event 3 alone. */
    b.refuse_key = 0;
    until = uv_now(&loop) + 200;
    while (uv_now(&loop) < until && !o.sent[3])
        uv_run(&loop, UV_RUN_ONCE);
    CHECK_EQ_INT(o.sent[3], 1);
    CHECK_EQ_INT(b.order[5], 3);
    CHECK_EQ_INT(o.sent[1], 1); /* never marked twice */
    /* A kick runs a batch without waiting for the poll. */
    {
        int before = o.fetches;
        tms_relay_kick(r);
        until = uv_now(&loop) + 40; /* well below the 50 ms poll */
        while (uv_now(&loop) < until && o.fetches == before)
            uv_run(&loop, UV_RUN_ONCE);
        CHECK(o.fetches > before);
    }
    stop_relay(&loop, &r);
}

/* Another worker's thread kicks through a remote stand-in: the relay runs a batch at
 * once on its own loop; stopping and freeing the stand-in leaves the relay alone. */
static tms_relay_t *remote_of;

static void *kick_from_thread(void *arg)
{
    (void)arg;
    tms_relay_kick(remote_of);
    return NULL;
}

static void test_remote_kick(void)
{
    uv_loop_t loop;
    fake_outbox_t o = {.port = {.name = "fake", .submit = outbox_submit}};
    fake_bus_t b = {.port = {.name = "fake", .publish = bus_publish}};
    tms_relay_t *r;
    pthread_t th;
    uint64_t until;
    int before;
    uv_loop_init(&loop);
    r = tms_relay_new(&loop, &o.port, &b.port, 10000, "test"); /* the poll never comes */
    remote_of = tms_relay_remote_new(r);
    CHECK_EQ_INT(tms_relay_busy(remote_of), 0);
    while (o.fetches == 0 || tms_relay_busy(r)) /* the start batch */
        uv_run(&loop, UV_RUN_ONCE);
    before = o.fetches;
    pthread_create(&th, NULL, kick_from_thread, NULL);
    pthread_join(th, NULL);
    until = uv_now(&loop) + 1000;
    while (uv_now(&loop) < until && o.fetches == before)
        uv_run(&loop, UV_RUN_ONCE);
    CHECK(o.fetches > before);
    tms_relay_stop(remote_of, NULL, NULL);
    tms_relay_kick(remote_of); /* stopped: a no-op */
    tms_relay_free(&remote_of);
    CHECK(remote_of == NULL);
    stop_relay(&loop, &r);
}

/* Processes sharing an outbox (tms_outbox_t.lead): while another holds the lead the
 * relay publishes nothing, not even at its poll, and a kick wakes the leader instead;
 * a wake from another process is ignored then. Once it holds the lead (or the lead is
 * unknown: its connection is down) it publishes what is pending, and a wake fetches at
 * once. Stopping unregisters. */
typedef struct fake_lead {
    fake_outbox_t o;
    tms_outbox_lead_fn fn;
    void *arg;
    int wakes; /* wake_leader calls */
} fake_lead_t;

static void lead_register(tms_outbox_t *self, tms_outbox_lead_fn fn, void *arg)
{
    fake_lead_t *l = (fake_lead_t *)self;
    l->fn = fn;
    l->arg = arg;
}

static void lead_wake(tms_outbox_t *self)
{
    ((fake_lead_t *)self)->wakes++;
}

static void test_stands_aside_while_another_leads(void)
{
    uv_loop_t loop;
    fake_lead_t l = {.o = {.port = {.name = "fake",
                                    .submit = outbox_submit,
                                    .lead = lead_register,
                                    .wake_leader = lead_wake}}};
    fake_bus_t b = {.port = {.name = "fake", .publish = bus_publish}};
    tms_relay_t *r;
    int before;
    uv_loop_init(&loop);
    r = tms_relay_new(&loop, &l.o.port, &b.port, 20, "test");
    CHECK(l.fn != NULL);
    l.fn(l.arg, TMS_LEAD_OTHER); /* before the start batch ran */
    tms_test_spin(&loop, 100);   /* five polls */
    CHECK_EQ_INT(b.n, 0);
    CHECK_EQ_INT(l.o.sent[1], 0);
    tms_relay_kick(r); /* a write here: the leader is woken */
    CHECK_EQ_INT(l.wakes, 1);
    l.fn(l.arg, TMS_LEAD_WOKEN); /* another's write: not ours to publish */
    tms_test_spin(&loop, 30);
    CHECK_EQ_INT(b.n, 0);
    l.fn(l.arg, TMS_LEAD_HELD); /* the leader went: what is pending goes out at once */
    tms_test_spin_until(&loop, &l.o.sent[N], 1, 15);
    CHECK_EQ_INT(b.n, N);
    for (int seq = 1; seq <= N; seq++)
        CHECK_EQ_INT(l.o.sent[seq], 1);
    before = l.o.fetches;
    l.fn(l.arg, TMS_LEAD_WOKEN);
    tms_test_spin(&loop, 10); /* below the 20 ms poll */
    CHECK(l.o.fetches > before);
    CHECK_EQ_INT(l.wakes, 1); /* the leader's kicks wake no one */
    tms_relay_kick(r);
    CHECK_EQ_INT(l.wakes, 1);
    l.o.n = N + 1; /* one more written; the lead connection drops: publish anyway */
    l.fn(l.arg, TMS_LEAD_UNKNOWN);
    tms_relay_kick(r);
    tms_test_spin_until(&loop, &l.o.sent[N + 1], 1, 15);
    CHECK_EQ_INT(l.o.sent[N + 1], 1);
    stop_relay(&loop, &r);
    CHECK(l.fn == NULL);
}

int main(void)
{
    RUN_TEST(test_relay);
    RUN_TEST(test_remote_kick);
    RUN_TEST(test_held_event_delays_no_other);
    RUN_TEST(test_refused_event_holds_its_key_only);
    RUN_TEST(test_late_commit_below_handed_is_published_soon);
    RUN_TEST(test_stands_aside_while_another_leads);
    RUN_TEST(test_new_events_do_not_wait_for_a_mark);
    RUN_TEST(test_stop_completes_after_a_failed_full_read);
    RUN_TEST(test_kick_during_a_read_survives_a_mark);
    TEST_EXIT();
}
