/* The user store port (core/user_store.h, core/port.h) on every adapter: SQLite, and
 * MongoDB when TMS_TEST_MONGO_URL is set. Every op of the port, atomic token
 * versions under concurrency, the user_deleted event a delete writes into the same
 * store's outbox, restoring a deleted user, and the lifecycle (busy, close, unknown
 * ops, replies never on the caller's stack). */
#include "core/events.h"
#include "stores.h"

#define T0 1764338400000LL
#define ID_A "aaaaaaaaaaaaaaaaaaaaaaaa"
#define ID_B "bbbbbbbbbbbbbbbbbbbbbbbb"
#define ID_C "cccccccccccccccccccccccc"
#define ID_D "dddddddddddddddddddddddd"
#define HASH "$argon2id$v=19$m=65536,t=2,p=1$c2FsdA$secrethash"

static const char *backend;

static void free_user_msg(tms_msg_t *msg)
{
    free(msg);
}

static tms_user_op_t *user_op(int kind, const char *key)
{
    tms_user_op_t *op = tms_new(tms_user_op_t);
    op->msg.op = kind;
    op->msg.reply_to = replies;
    op->msg.cont = on_reply;
    op->msg.free_fn = free_user_msg;
    if (key)
        snprintf(op->key, sizeof(op->key), "%s", key);
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

/* Submits op and runs the loop until its reply; returns a copy of the reply. */
static tms_user_op_t call(store_t *s, tms_user_op_t *op)
{
    tms_msg_t *got = NULL;
    tms_user_op_t r;
    op->msg.ctx = &got;
    CHECK_EQ_INT(tms_user_store_submit(s->users, &op), 0);
    CHECK(op == NULL);
    CHECK(got == NULL); /* never answered on the caller's stack */
    r = *(tms_user_op_t *)wait_reply(&got);
    free(got);
    return r;
}

static tms_user_op_t call_key(store_t *s, int kind, const char *key)
{
    return call(s, user_op(kind, key));
}

static tms_outbox_op_t *run_box(store_t *s, tms_outbox_op_t *op)
{
    tms_msg_t *got = NULL;
    op->msg.ctx = &got;
    CHECK_EQ_INT(tms_outbox_submit(s->outbox, &op), 0);
    return (tms_outbox_op_t *)wait_reply(&got);
}

static long long pending(store_t *s)
{
    tms_outbox_op_t *op = run_box(s, box_op(TMS_OUTBOX_PENDING));
    long long n = op->err.code == TMS_OK ? op->count : -1;
    tms_outbox_op_free(&op);
    return n;
}

static void fill_user(tms_user_t *u, const char *id, const char *email)
{
    memset(u, 0, sizeof(*u));
    snprintf(u->id, sizeof(u->id), "%s", id);
    snprintf(u->email, sizeof(u->email), "%s", email);
    snprintf(u->role, sizeof(u->role), "user");
    snprintf(u->password_hash, sizeof(u->password_hash), "%s", HASH);
    u->token_version = 0;
    u->created_at_ms = T0;
}

static tms_status_t create(store_t *s, const char *id, const char *email)
{
    tms_user_op_t *op = user_op(TMS_USER_CREATE, NULL);
    fill_user(&op->user, id, email);
    return call(s, op).err.code;
}

static void test_user_ops(void)
{
    store_t s = open_store(backend);
    tms_user_op_t *op, r;
    CHECK_EQ_STR(s.users->name, backend);

    CHECK_EQ_INT(create(&s, ID_A, "alice@example.com"), TMS_OK);
    CHECK_EQ_INT(create(&s, ID_B, "alice@example.com"), TMS_ALREADY_EXISTS);

    r = call_key(&s, TMS_USER_GET_BY_EMAIL, "alice@example.com");
    CHECK_EQ_INT(r.err.code, TMS_OK);
    CHECK_EQ_STR(r.user.id, ID_A);
    CHECK_EQ_STR(r.user.role, "user");
    CHECK_EQ_INT(r.user.token_version, 0);
    CHECK_EQ_INT(r.user.created_at_ms, T0);
    CHECK_EQ_STR(r.user.password_hash, HASH);

    r = call_key(&s, TMS_USER_GET_BY_ID, ID_A);
    CHECK_EQ_INT(r.err.code, TMS_OK);
    CHECK_EQ_STR(r.user.email, "alice@example.com");
    CHECK_EQ_STR(r.user.password_hash, HASH);

    r = call_key(&s, TMS_USER_GET_BY_EMAIL, "nobody@example.com");
    CHECK_EQ_INT(r.err.code, TMS_NOT_FOUND);
    r = call_key(&s, TMS_USER_GET_BY_ID, ID_C);
    CHECK_EQ_INT(r.err.code, TMS_NOT_FOUND);
    r = call_key(&s, TMS_USER_GET_BY_ID, "not-an-id");
    CHECK_EQ_INT(r.err.code, TMS_NOT_FOUND);
    /* user data is bound, never spliced into a query */
    r = call_key(&s, TMS_USER_GET_BY_EMAIL, "x' OR '1'='1");
    CHECK_EQ_INT(r.err.code, TMS_NOT_FOUND);

    r = call_key(&s, TMS_USER_BUMP_VERSION, ID_A);
    CHECK_EQ_INT(r.err.code, TMS_OK);
    CHECK_EQ_INT(r.user.token_version, 1);
    CHECK_EQ_STR(r.user.password_hash, HASH);
    op = user_op(TMS_USER_BUMP_VERSION, ID_A);
    snprintf(op->new_hash, sizeof(op->new_hash), "$argon2id$new");
    r = call(&s, op);
    CHECK_EQ_INT(r.err.code, TMS_OK);
    CHECK_EQ_INT(r.user.token_version, 2);
    CHECK_EQ_STR(r.user.password_hash, "$argon2id$new");
    r = call_key(&s, TMS_USER_GET_BY_ID, ID_A);
    CHECK_EQ_STR(r.user.password_hash, "$argon2id$new");
    r = call_key(&s, TMS_USER_BUMP_VERSION, ID_C);
    CHECK_EQ_INT(r.err.code, TMS_NOT_FOUND);

    op = user_op(TMS_USER_SET_ROLE, "alice@example.com");
    snprintf(op->user.role, sizeof(op->user.role), "admin");
    r = call(&s, op);
    CHECK_EQ_INT(r.err.code, TMS_OK);
    CHECK_EQ_STR(r.user.role, "admin");
    CHECK_EQ_STR(r.user.id, ID_A);
    op = user_op(TMS_USER_SET_ROLE, "nobody@example.com");
    snprintf(op->user.role, sizeof(op->user.role), "admin");
    r = call(&s, op);
    CHECK_EQ_INT(r.err.code, TMS_NOT_FOUND);

    r = call_key(&s, TMS_USER_PING, NULL);
    CHECK_EQ_INT(r.err.code, TMS_OK);

    /* an op that came back as a reply can be submitted again */
    {
        tms_msg_t *got = NULL;
        op = user_op(TMS_USER_GET_BY_ID, ID_A);
        op->msg.ctx = &got;
        CHECK_EQ_INT(tms_user_store_submit(s.users, &op), 0);
        op = (tms_user_op_t *)wait_reply(&got);
        CHECK_EQ_INT(op->err.code, TMS_OK);
        got = NULL;
        op->msg.op = TMS_USER_GET_BY_EMAIL;
        snprintf(op->key, sizeof(op->key), "nobody@example.com");
        CHECK_EQ_INT(tms_user_store_submit(s.users, &op), 0);
        op = (tms_user_op_t *)wait_reply(&got);
        CHECK_EQ_INT(op->err.code, TMS_NOT_FOUND); /* the old answer does not stick */
        free(op);
    }
    close_store(&s);
}

static int nbumped;
static int64_t bumped[64];

static void on_bumped(tms_msg_t *msg)
{
    tms_user_op_t *op = (tms_user_op_t *)msg;
    CHECK_EQ_INT(op->err.code, TMS_OK);
    if (nbumped < 64)
        bumped[nbumped] = op->user.token_version;
    nbumped++;
    free(op);
}

/* Concurrent bumps never hand out one version twice. */
static void test_bump_is_atomic(void)
{
    enum { N = 24 };
    store_t s = open_store(backend);
    tms_user_op_t r;
    CHECK_EQ_INT(create(&s, ID_A, "bump@example.com"), TMS_OK);
    nbumped = 0;
    for (int i = 0; i < N; i++) {
        tms_user_op_t *op = user_op(TMS_USER_BUMP_VERSION, ID_A);
        op->msg.cont = on_bumped;
        CHECK_EQ_INT(tms_user_store_submit(s.users, &op), 0);
    }
    CHECK(spin_until(&nbumped, N, 30000));
    for (int i = 0; i < N && i < nbumped; i++) {
        CHECK(bumped[i] >= 1 && bumped[i] <= N);
        for (int j = 0; j < i; j++)
            CHECK(bumped[i] != bumped[j]);
    }
    r = call_key(&s, TMS_USER_GET_BY_ID, ID_A);
    CHECK_EQ_INT(r.user.token_version, N);
    close_store(&s);
}

/* A delete writes user_deleted into the same store's outbox, with the user as it was
 * but no password hash, and keeps a tombstone; restoring (the saga's compensation)
 * brings back the tombstone's user when the event's email and role match it. */
static void test_delete_and_restore(void)
{
    store_t s = open_store(backend);
    tms_user_op_t *op, r;
    tms_outbox_op_t *box;
    tms_user_t deleted, parsed;
    char event_id[37];
    memset(&parsed, 0, sizeof(parsed));
    op = user_op(TMS_USER_CREATE, NULL);
    fill_user(&op->user, ID_A, "gone@example.com");
    snprintf(op->user.role, sizeof(op->user.role), "admin");
    op->user.token_version = 3;
    CHECK_EQ_INT(call(&s, op).err.code, TMS_OK);
    CHECK_EQ_INT(pending(&s), 0);

    r = call_key(&s, TMS_USER_DELETE, ID_A);
    CHECK_EQ_INT(r.err.code, TMS_OK);
    CHECK_EQ_STR(r.user.email, "gone@example.com");
    CHECK_EQ_STR(r.user.role, "admin");
    CHECK_EQ_INT(r.user.token_version, 3);
    deleted = r.user;
    r = call_key(&s, TMS_USER_DELETE, ID_A);
    CHECK_EQ_INT(r.err.code, TMS_NOT_FOUND);
    r = call_key(&s, TMS_USER_GET_BY_ID, ID_A);
    CHECK_EQ_INT(r.err.code, TMS_NOT_FOUND);
    r = call_key(&s, TMS_USER_GET_BY_EMAIL, "gone@example.com");
    CHECK_EQ_INT(r.err.code, TMS_NOT_FOUND);
    CHECK_EQ_INT(pending(&s), 1);

    box = box_op(TMS_OUTBOX_FETCH);
    box->limit = 10;
    box = run_box(&s, box);
    CHECK_EQ_INT(box->err.code, TMS_OK);
    CHECK_EQ_INT(box->nevents, 1);
    if (box->nevents == 1) {
        tms_outbox_event_t *e = &box->events[0];
        CHECK_EQ_STR(e->topic, TMS_TOPIC_USER_DELETED);
        CHECK_EQ_STR(e->key, ID_A);
        CHECK_EQ_INT(strlen(e->event_id), 36);
        CHECK(strstr(e->payload, "argon2id") == NULL);
        CHECK(strstr(e->payload, "secrethash") == NULL);
        CHECK_EQ_INT(tms_event_user_parse(e->payload, &parsed, event_id), 0);
        CHECK_EQ_STR(event_id, e->event_id);
        CHECK_EQ_STR(parsed.id, ID_A);
        CHECK_EQ_STR(parsed.email, "gone@example.com");
        CHECK_EQ_STR(parsed.role, "admin");
        CHECK_EQ_INT(parsed.token_version, 3);
        CHECK_EQ_INT(parsed.created_at_ms, T0);
        CHECK_EQ_STR(parsed.password_hash, "");
    }
    tms_outbox_op_free(&box);

    /* an event that names another email or role restores nothing */
    op = user_op(TMS_USER_RESTORE, NULL);
    op->user = parsed;
    snprintf(op->user.email, sizeof(op->user.email), "attacker@example.com");
    CHECK_EQ_INT(call(&s, op).err.code, TMS_FAILED_PRECONDITION);
    op = user_op(TMS_USER_RESTORE, NULL);
    op->user = parsed;
    snprintf(op->user.role, sizeof(op->user.role), "user");
    CHECK_EQ_INT(call(&s, op).err.code, TMS_FAILED_PRECONDITION);
    r = call_key(&s, TMS_USER_GET_BY_ID, ID_A);
    CHECK_EQ_INT(r.err.code, TMS_NOT_FOUND);
    /* no tombstone, nothing to restore */
    op = user_op(TMS_USER_RESTORE, NULL);
    fill_user(&op->user, ID_D, "dave@example.com");
    CHECK_EQ_INT(call(&s, op).err.code, TMS_NOT_FOUND);
    r = call_key(&s, TMS_USER_GET_BY_ID, ID_D);
    CHECK_EQ_INT(r.err.code, TMS_NOT_FOUND);

    /* the saga's compensation: the user its event names comes back from the
     * tombstone, whatever else the input says (hash, creation time, and a token
     * version past the deleted one, so older tokens stay dead) */
    op = user_op(TMS_USER_RESTORE, NULL);
    op->user = parsed;
    op->user.token_version = 99;
    op->user.created_at_ms = 1;
    snprintf(op->user.password_hash, sizeof(op->user.password_hash), "$argon2id$forged");
    CHECK_EQ_INT(call(&s, op).err.code, TMS_OK);
    r = call_key(&s, TMS_USER_GET_BY_ID, ID_A);
    CHECK_EQ_INT(r.err.code, TMS_OK);
    CHECK_EQ_STR(r.user.email, "gone@example.com");
    CHECK_EQ_STR(r.user.role, "admin");
    CHECK_EQ_STR(r.user.password_hash, deleted.password_hash);
    CHECK_EQ_INT(r.user.created_at_ms, T0);
    CHECK_EQ_INT(r.user.token_version, 4);
    CHECK_EQ_INT(pending(&s), 1); /* restoring writes no event */
    /* restored once: the tombstone went with it */
    op = user_op(TMS_USER_RESTORE, NULL);
    op->user = parsed;
    CHECK_EQ_INT(call(&s, op).err.code, TMS_NOT_FOUND);

    /* the email was registered again since the delete: refused, tombstone kept */
    r = call_key(&s, TMS_USER_DELETE, ID_A);
    CHECK_EQ_INT(r.err.code, TMS_OK);
    CHECK_EQ_INT(create(&s, ID_B, "gone@example.com"), TMS_OK);
    op = user_op(TMS_USER_RESTORE, NULL);
    op->user = parsed;
    CHECK_EQ_INT(call(&s, op).err.code, TMS_ALREADY_EXISTS);
    r = call_key(&s, TMS_USER_DELETE, ID_B);
    CHECK_EQ_INT(r.err.code, TMS_OK);
    op = user_op(TMS_USER_RESTORE, NULL);
    op->user = parsed;
    r = call(&s, op);
    CHECK_EQ_INT(r.err.code, TMS_OK);
    CHECK_EQ_INT(r.user.token_version, 5);
    close_store(&s);
}

static int nanswered;

static void count_reply(tms_msg_t *msg)
{
    nanswered++;
    free(msg);
}

static void test_lifecycle(void)
{
    store_t s = open_store(backend);
    tms_user_op_t *op;
    int accepted = 0, closed = 0;

    op = user_op(0, NULL);
    CHECK_EQ_INT(tms_user_store_submit(s.users, &op), -TMS_EINVAL);
    CHECK(op != NULL);
    op->msg.op = TMS_USER_PING + 1;
    CHECK_EQ_INT(tms_user_store_submit(s.users, &op), -TMS_EINVAL);
    free(op);
    CHECK_EQ_INT(s.users->busy(s.users), 0);

    nanswered = 0;
    for (int i = 0; i < 20; i++) {
        op = user_op(i % 2 ? TMS_USER_PING : TMS_USER_GET_BY_EMAIL, "nobody@example.com");
        op->msg.cont = count_reply;
        if (tms_user_store_submit(s.users, &op) == 0)
            accepted++;
        else
            free(op);
    }
    CHECK_EQ_INT(accepted, 20);
    CHECK(s.users->busy(s.users) <= 20);
    s.users->close(s.users, on_closed, &closed);
    CHECK_EQ_INT(closed, 0); /* never inside close */
    op = user_op(TMS_USER_PING, NULL);
    CHECK_EQ_INT(tms_user_store_submit(s.users, &op), -TMS_ECLOSED);
    CHECK(op != NULL);
    free(op);
    CHECK(spin_until(&closed, 1, 30000));
    CHECK_EQ_INT(nanswered, 20); /* every op accepted was answered before the callback */
    s.users = NULL;

    /* the same backend's outbox still serves; closing it releases the backend */
    CHECK(pending(&s) >= 0);
    close_store(&s);
    CHECK_EQ_INT(closed, 1);
}

static void test_metrics(void)
{
    store_t s = open_store(backend);
    char line[160];
    CHECK_EQ_INT(call_key(&s, TMS_USER_GET_BY_EMAIL, "m@example.com").err.code, TMS_NOT_FOUND);
    snprintf(line, sizeof(line),
             "tms_store_duration_seconds_count{store=\"%s\",op=\"get_by_email\"}", backend);
    CHECK(metric_has(line));
    snprintf(line, sizeof(line), "tms_store_errors_total{store=\"%s\",op=\"create\"} 0", backend);
    CHECK(metric_has(line));
    snprintf(line, sizeof(line), "tms_store_inflight{store=\"%s\"} 0", backend);
    CHECK(metric_has(line));
    close_store(&s);
}

static void tests(const adapter_t *a)
{
    backend = a->name;
    RUN_TEST(test_user_ops);
    RUN_TEST(test_bump_is_atomic);
    RUN_TEST(test_delete_and_restore);
    RUN_TEST(test_lifecycle);
    RUN_TEST(test_metrics);
}

static const adapter_t adapters[] = {
    {"sqlite", sqlite_setup, sqlite_teardown},
    {"mongodb", mongo_setup, mongo_teardown},
};

int main(int argc, char **argv)
{
    return run_suite("user_store", adapters, sizeof(adapters) / sizeof(adapters[0]), argc, argv,
                     tests);
}
