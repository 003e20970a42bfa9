/* Tests for src/io/store/mongo/ against a real MongoDB-wire server
 * (TMS_TEST_MONGO_URL, e.g. from scripts/service-mongo; skipped with exit code
 * 77 when unset) of what only this adapter has: token bumps under concurrency
 * (FerretDB's version claims), a document as the Node original wrote it, the
 * tombstone of a delete and its recovery, and a server that is not there. The user
 * store and outbox ports themselves are tested on every adapter by
 * tests/unit/ports/. Each run uses a fresh database, dropped at the end. */
#include <mongoc/mongoc.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <uv.h>

#include "core/alloc.h"
#include "core/clock.h"
#include "core/events.h"
#include "core/outbox.h"
#include "core/user_store.h"
#include "io/store/mongo/mongo.h"
#include "test.h"

static uv_loop_t loop;
static tms_mailbox_t *replies;
static char url[600], dbname[64];
static tms_mongo_t *mongo;

static void on_request(void *owner, tms_msg_t *msg)
{
    (void)owner;
    free(msg);
}

static void on_reply(tms_msg_t *msg)
{
    *(tms_msg_t **)msg->ctx = msg;
}

static void free_user_op(tms_msg_t *msg)
{
    free(msg);
}

static tms_user_op_t *user_op(int kind, const char *key)
{
    tms_user_op_t *op = tms_new(tms_user_op_t);
    op->msg.op = kind;
    op->msg.reply_to = replies;
    op->msg.cont = on_reply;
    op->msg.free_fn = free_user_op;
    op->err.code = TMS_UNKNOWN; /* the store must overwrite it */
    if (key)
        snprintf(op->key, sizeof(op->key), "%s", key);
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
static tms_user_op_t *run_user(tms_user_op_t *op)
{
    tms_msg_t *got = NULL;
    op->msg.ctx = &got;
    CHECK_EQ_INT(tms_user_store_submit(tms_mongo_user_store(mongo), &op), 0);
    while (!got)
        uv_run(&loop, UV_RUN_ONCE);
    return (tms_user_op_t *)got;
}

static tms_outbox_op_t *run_box(tms_outbox_op_t *op)
{
    tms_msg_t *got = NULL;
    op->msg.ctx = &got;
    CHECK_EQ_INT(tms_outbox_submit(tms_mongo_outbox(mongo), &op), 0);
    while (!got)
        uv_run(&loop, UV_RUN_ONCE);
    return (tms_outbox_op_t *)got;
}

static void new_user(tms_user_t *u, const char *email)
{
    bson_oid_t oid;
    memset(u, 0, sizeof(*u));
    bson_oid_init(&oid, NULL);
    bson_oid_to_string(&oid, u->id);
    snprintf(u->email, sizeof(u->email), "%s", email);
    snprintf(u->role, sizeof(u->role), "user");
    snprintf(u->password_hash, sizeof(u->password_hash), "$argon2id$v=19$m=8,t=1,p=1$x$y");
    u->created_at_ms = 1764338400123;
}

static void create(const tms_user_t *u, tms_status_t want)
{
    tms_user_op_t *op = user_op(TMS_USER_CREATE, NULL);
    op->user = *u;
    op = run_user(op);
    CHECK_EQ_INT(op->err.code, want);
    free(op);
}

/* A driver client of our own, to seed and inspect documents behind the adapter.
 */
static mongoc_collection_t *raw_coll(mongoc_client_t **client, const char *name)
{
    *client = mongoc_client_new(url);
    return mongoc_client_get_collection(*client, dbname, name);
}

/* Concurrent bumps never hand out one version twice (on FerretDB, whose
 * findAndModify is not atomic, thanks to the version claims). */
static void test_bump_is_atomic(void)
{
    enum { N = 32 };
    tms_user_t u;
    tms_msg_t *got[N] = {0};
    int64_t versions[N];
    new_user(&u, "bumps@example.com");
    create(&u, TMS_OK);
    for (int i = 0; i < N; i++) {
        tms_user_op_t *op = user_op(TMS_USER_BUMP_VERSION, u.id);
        op->msg.ctx = &got[i];
        CHECK_EQ_INT(tms_user_store_submit(tms_mongo_user_store(mongo), &op), 0);
    }
    for (int i = 0; i < N; i++) {
        tms_user_op_t *op;
        while (!got[i])
            uv_run(&loop, UV_RUN_ONCE);
        op = (tms_user_op_t *)got[i];
        CHECK_EQ_INT(op->err.code, TMS_OK);
        versions[i] = op->err.code == TMS_OK ? op->user.token_version : -1 - i;
        CHECK(versions[i] != 0);
        free(op);
    }
    for (int i = 0; i < N; i++) {
        for (int j = i + 1; j < N; j++)
            CHECK(versions[i] != versions[j]);
    }
}

static void test_bump_with_hash_and_set_role(void)
{
    tms_user_t u;
    tms_user_op_t *op;
    new_user(&u, "rehash@example.com");
    create(&u, TMS_OK);
    op = user_op(TMS_USER_BUMP_VERSION, u.id);
    snprintf(op->new_hash, sizeof(op->new_hash), "$argon2id$new");
    op = run_user(op);
    CHECK_EQ_INT(op->err.code, TMS_OK);
    CHECK_EQ_INT(op->user.token_version, 1);
    CHECK_EQ_STR(op->user.password_hash, "$argon2id$new");
    free(op);
    op = user_op(TMS_USER_SET_ROLE, "rehash@example.com");
    snprintf(op->user.role, sizeof(op->user.role), "admin");
    op = run_user(op);
    CHECK_EQ_INT(op->err.code, TMS_OK);
    CHECK_EQ_STR(op->user.role, "admin");
    CHECK_EQ_STR(op->user.id, u.id);
    free(op);
    op = user_op(TMS_USER_SET_ROLE, "ghost@example.com");
    snprintf(op->user.role, sizeof(op->user.role), "admin");
    op = run_user(op);
    CHECK_EQ_INT(op->err.code, TMS_NOT_FOUND);
    free(op);
    op = run_user(user_op(TMS_USER_BUMP_VERSION, "0123456789abcdef01234567"));
    CHECK_EQ_INT(op->err.code, TMS_NOT_FOUND);
    free(op);
}

/* The shape the Node original (Mongoose) wrote: int32 tokenVersion, Date
 * createdAt,
 * __v, a bcrypt hash. */
static void test_original_document(void)
{
    mongoc_client_t *client;
    mongoc_collection_t *c = raw_coll(&client, "User");
    bson_oid_t oid;
    char id[25];
    tms_user_op_t *op;
    bson_t *doc;
    bson_oid_init(&oid, NULL);
    bson_oid_to_string(&oid, id);
    doc = BCON_NEW("_id", BCON_OID(&oid), "email", BCON_UTF8("node@example.com"), "password",
                   BCON_UTF8("$2b$10$abcdefghijklmnopqrstuuABCDEFGHIJKLMNOPQRSTUVWXYZ01234"),
                   "role", BCON_UTF8("admin"), "tokenVersion", BCON_INT32(7), "createdAt",
                   BCON_DATE_TIME(1700000000000), "__v", BCON_INT32(0));
    CHECK(mongoc_collection_insert_one(c, doc, NULL, NULL, NULL));
    op = run_user(user_op(TMS_USER_GET_BY_EMAIL, "node@example.com"));
    CHECK_EQ_INT(op->err.code, TMS_OK);
    CHECK_EQ_STR(op->user.id, id);
    CHECK_EQ_STR(op->user.role, "admin");
    CHECK_EQ_INT(op->user.token_version, 7);
    CHECK_EQ_INT(op->user.created_at_ms, 1700000000000);
    CHECK(strncmp(op->user.password_hash, "$2b$10$", 7) == 0);
    free(op);
    op = run_user(user_op(TMS_USER_BUMP_VERSION, id));
    CHECK_EQ_INT(op->user.token_version, 8);
    free(op);
    bson_destroy(doc);
    mongoc_collection_destroy(c);
    mongoc_client_destroy(client);
}

static void mark_all_sent(void)
{
    tms_outbox_op_t *f = box_op(TMS_OUTBOX_FETCH), *mk;
    f->limit = 100;
    f = run_box(f);
    CHECK_EQ_INT(f->err.code, TMS_OK);
    mk = box_op(TMS_OUTBOX_MARK_SENT);
    mk->seqs = tms_calloc(f->nevents + 1, sizeof(int64_t));
    for (size_t i = 0; i < f->nevents; i++)
        mk->seqs[mk->nseqs++] = f->events[i].seq;
    mk = run_box(mk);
    CHECK_EQ_INT(mk->err.code, TMS_OK);
    tms_outbox_op_free(&mk);
    tms_outbox_op_free(&f);
}

static void test_delete_outbox_and_restore(void)
{
    tms_user_t u, parsed;
    tms_user_op_t *op;
    tms_outbox_op_t *box;
    char event_id[37];
    int64_t seq;
    mark_all_sent();
    new_user(&u, "gone@example.com");
    u.token_version = 3;
    create(&u, TMS_OK);
    op = run_user(user_op(TMS_USER_DELETE, u.id));
    CHECK_EQ_INT(op->err.code, TMS_OK);
    CHECK_EQ_STR(op->user.email, "gone@example.com");
    free(op);
    op = run_user(user_op(TMS_USER_DELETE, u.id));
    CHECK_EQ_INT(op->err.code, TMS_NOT_FOUND);
    free(op);
    op = run_user(user_op(TMS_USER_GET_BY_ID, u.id));
    CHECK_EQ_INT(op->err.code, TMS_NOT_FOUND);
    free(op);

    box = run_box(box_op(TMS_OUTBOX_PENDING));
    CHECK_EQ_INT(box->count, 1);
    tms_outbox_op_free(&box);
    box = box_op(TMS_OUTBOX_FETCH);
    box->limit = 10;
    box = run_box(box);
    CHECK_EQ_INT(box->err.code, TMS_OK);
    CHECK_EQ_INT(box->nevents, 1);
    if (box->nevents == 1) {
        CHECK_EQ_STR(box->events[0].topic, TMS_TOPIC_USER_DELETED);
        CHECK_EQ_STR(box->events[0].key, u.id);
        CHECK_EQ_INT(tms_event_user_parse(box->events[0].payload, &parsed, event_id), 0);
        CHECK_EQ_STR(event_id, box->events[0].event_id);
        CHECK_EQ_INT(parsed.token_version, 3);
        CHECK(strstr(box->events[0].payload, "argon2") == NULL);
    }
    seq = box->nevents ? box->events[0].seq : 0;
    tms_outbox_op_free(&box);
    box = box_op(TMS_OUTBOX_MARK_SENT);
    box->seqs = tms_calloc(2, sizeof(int64_t));
    box->seqs[0] = box->seqs[1] = seq;
    box->nseqs = 2;
    box = run_box(box);
    CHECK_EQ_INT(box->err.code, TMS_OK);
    tms_outbox_op_free(&box);
    box = run_box(box_op(TMS_OUTBOX_PENDING));
    CHECK_EQ_INT(box->count, 0);
    tms_outbox_op_free(&box);
    { /* sent: the document is gone, not kept in state "sent" */
        mongoc_client_t *client;
        mongoc_collection_t *c = raw_coll(&client, "Outbox");
        bson_t *mine = BCON_NEW("seq", BCON_INT64(seq));
        CHECK_EQ_INT(mongoc_collection_count_documents(c, mine, NULL, NULL, NULL, NULL), 0);
        bson_destroy(mine);
        mongoc_collection_destroy(c);
        mongoc_client_destroy(client);
    }

    /* Compensation restores from the tombstone; an event that names another role or
     * email restores nothing (issue 17). */
    op = user_op(TMS_USER_RESTORE, NULL);
    op->user = parsed;
    snprintf(op->user.role, sizeof(op->user.role), "admin");
    op = run_user(op);
    CHECK_EQ_INT(op->err.code, TMS_FAILED_PRECONDITION);
    free(op);
    op = user_op(TMS_USER_RESTORE, NULL);
    op->user = parsed;
    snprintf(op->user.email, sizeof(op->user.email), "attacker@example.com");
    op = run_user(op);
    CHECK_EQ_INT(op->err.code, TMS_FAILED_PRECONDITION);
    free(op);
    op = run_user(user_op(TMS_USER_GET_BY_ID, u.id));
    CHECK_EQ_INT(op->err.code, TMS_NOT_FOUND);
    free(op);
    /* the event's own email and role: the hash, creation time and a token version past
     * the deleted one come from the tombstone (old tokens stay dead) */
    op = user_op(TMS_USER_RESTORE, NULL);
    op->user = parsed;
    op->user.token_version = 99;
    op = run_user(op);
    CHECK_EQ_INT(op->err.code, TMS_OK);
    free(op);
    op = run_user(user_op(TMS_USER_GET_BY_ID, u.id));
    CHECK_EQ_INT(op->err.code, TMS_OK);
    CHECK_EQ_STR(op->user.password_hash, u.password_hash);
    CHECK_EQ_STR(op->user.email, u.email);
    CHECK_EQ_STR(op->user.role, u.role);
    CHECK_EQ_INT(op->user.created_at_ms, u.created_at_ms);
    CHECK_EQ_INT(op->user.token_version, 4);
    free(op);
    /* restored once: its tombstone went with it */
    op = user_op(TMS_USER_RESTORE, NULL);
    op->user = parsed;
    op = run_user(op);
    CHECK_EQ_INT(op->err.code, TMS_NOT_FOUND);
    free(op);
}

/* A delete that stopped after writing its event: recovery settles it by whether
 * the user is still there, and doing it twice changes nothing. */
static void test_prepared_recovery(void)
{
    mongoc_client_t *client;
    mongoc_collection_t *c = raw_coll(&client, "Outbox");
    tms_user_t alive;
    tms_outbox_op_t *box;
    int64_t old = tms_now_ms() - 3600 * 1000;
    bson_t *a, *b, *young;
    mark_all_sent();
    new_user(&alive, "alive@example.com");
    create(&alive, TMS_OK);
    a = BCON_NEW("_id", BCON_UTF8("11111111-1111-4111-8111-111111111111"), "seq",
                 BCON_INT64(900001), "topic", BCON_UTF8("user_deleted"), "key",
                 BCON_UTF8("0123456789abcdef01234567"), "payload", BCON_UTF8("{}"), "createdAt",
                 BCON_INT64(old), "state", BCON_UTF8("prepared"));
    b = BCON_NEW("_id", BCON_UTF8("22222222-2222-4222-8222-222222222222"), "seq",
                 BCON_INT64(900002), "topic", BCON_UTF8("user_deleted"), "key", BCON_UTF8(alive.id),
                 "payload", BCON_UTF8("{}"), "createdAt", BCON_INT64(old), "state",
                 BCON_UTF8("prepared"));
    young = BCON_NEW("_id", BCON_UTF8("33333333-3333-4333-8333-333333333333"), "seq",
                     BCON_INT64(900003), "topic", BCON_UTF8("user_deleted"), "key",
                     BCON_UTF8("0123456789abcdef01234568"), "payload", BCON_UTF8("{}"), "createdAt",
                     BCON_INT64(tms_now_ms()), "state", BCON_UTF8("prepared"));
    CHECK(mongoc_collection_insert_one(c, a, NULL, NULL, NULL));
    CHECK(mongoc_collection_insert_one(c, b, NULL, NULL, NULL));
    CHECK(mongoc_collection_insert_one(c, young, NULL, NULL, NULL));
    for (int round = 0; round < 2; round++) {
        box = box_op(TMS_OUTBOX_FETCH);
        box->limit = 10;
        box = run_box(box);
        CHECK_EQ_INT(box->err.code, TMS_OK);
        CHECK_EQ_INT(box->nevents, 1); /* only the one whose user is gone */
        if (box->nevents == 1)
            CHECK_EQ_STR(box->events[0].event_id, "11111111-1111-4111-8111-111111111111");
        tms_outbox_op_free(&box);
    }
    mark_all_sent();
    bson_destroy(a);
    bson_destroy(b);
    bson_destroy(young);
    mongoc_collection_destroy(c);
    mongoc_client_destroy(client);
}

/* Nobody listens on the port: start-up fails within the selection timeout. */
static void test_unreachable(void)
{
    char err[256] = "";
    uint64_t t0 = uv_hrtime();
    tms_mongo_t *m = tms_mongo_open(&loop, "mongodb://127.0.0.1:1/x",
                                    &(tms_mongo_options_t){.server_selection_timeout_ms = 300}, err,
                                    sizeof(err));
    CHECK(m == NULL);
    CHECK(strstr(err, "MongoDB") != NULL);
    CHECK((uv_hrtime() - t0) / 1000000 < 3000);
    CHECK(!tms_mongo_url("postgres://x") && tms_mongo_url("mongodb://h/db"));
}

static void on_closed(void *arg)
{
    (*(int *)arg)++;
}

static void close_mongo(void);

/* Earlier versions kept sent events as documents in state "sent"; a start deletes
 * them (nothing else ever would) and keeps the pending ones. */
static void test_start_purges_sent_events(void)
{
    char err[512] = "";
    mongoc_client_t *client;
    mongoc_collection_t *c = raw_coll(&client, "Outbox");
    bson_t *sent =
        BCON_NEW("_id", BCON_UTF8("44444444-4444-4444-8444-444444444444"), "seq",
                 BCON_INT64(900004), "topic", BCON_UTF8("user_deleted"), "key",
                 BCON_UTF8("0123456789abcdef01234569"), "payload", BCON_UTF8("{}"), "createdAt",
                 BCON_INT64(1), "state", BCON_UTF8("sent"), "sentAt", BCON_INT64(2));
    bson_t *pending = BCON_NEW("_id", BCON_UTF8("55555555-5555-4555-8555-555555555555"), "seq",
                               BCON_INT64(900005), "topic", BCON_UTF8("user_deleted"), "key",
                               BCON_UTF8("0123456789abcdef01234569"), "payload", BCON_UTF8("{}"),
                               "createdAt", BCON_INT64(1), "state", BCON_UTF8("pending"));
    bson_t *all = BCON_NEW("key", BCON_UTF8("0123456789abcdef01234569")); /* these two */
    mark_all_sent();
    CHECK(mongoc_collection_insert_one(c, sent, NULL, NULL, NULL));
    CHECK(mongoc_collection_insert_one(c, pending, NULL, NULL, NULL));
    CHECK_EQ_INT(mongoc_collection_count_documents(c, all, NULL, NULL, NULL, NULL), 2);
    close_mongo();
    mongo = tms_mongo_open(&loop, url, &(tms_mongo_options_t){.pool_size = 4}, err, sizeof(err));
    CHECK(mongo != NULL);
    CHECK_EQ_INT(mongoc_collection_count_documents(c, all, NULL, NULL, NULL, NULL), 1);
    CHECK_EQ_INT(mongoc_collection_count_documents(c, pending, NULL, NULL, NULL, NULL), 1);
    if (mongo)
        mark_all_sent();
    bson_destroy(all);
    bson_destroy(pending);
    bson_destroy(sent);
    mongoc_collection_destroy(c);
    mongoc_client_destroy(client);
}

/* Close both ports; the adapter goes with the last. */
static void close_mongo(void)
{
    int closed = 0;
    tms_user_store_t *users = tms_mongo_user_store(mongo);
    tms_outbox_t *outbox = tms_mongo_outbox(mongo);
    mongo = NULL;
    users->close(users, on_closed, &closed);
    outbox->close(outbox, on_closed, &closed);
    while (closed < 2)
        uv_run(&loop, UV_RUN_ONCE);
}

static void drop_database(void)
{
    mongoc_client_t *client = mongoc_client_new(url);
    mongoc_database_t *db = mongoc_client_get_database(client, dbname);
    mongoc_database_drop(db, NULL);
    mongoc_database_destroy(db);
    mongoc_client_destroy(client);
}

int main(void)
{
    const char *base = getenv("TMS_TEST_MONGO_URL");
    char err[512] = "";
    const char *slash, *query;
    if (!base || !*base) {
        fprintf(stderr, "TMS_TEST_MONGO_URL not set: skipped\n");
        return 77;
    }
    /* Same server, a database of our own: mongodb://host:port/<dbname>[?query].
     */
    snprintf(dbname, sizeof(dbname), "tms_unit_%d_%u", (int)getpid(),
             (unsigned)uv_hrtime() % 100000);
    slash = strchr(base + strlen("mongodb://"), '/');
    query = strchr(base, '?');
    snprintf(url, sizeof(url), "%.*s/%s%s", (int)(slash ? slash - base : (long)strlen(base)), base,
             dbname, query ? query : "");
    uv_loop_init(&loop);
    replies = tms_mailbox_new(&loop, "test", 64, on_request, NULL);
    mongo = tms_mongo_open(&loop, url, &(tms_mongo_options_t){.pool_size = 4}, err, sizeof(err));
    if (!mongo) {
        fprintf(stderr, "cannot open %s: %s\n", url, err);
        return 1;
    }
    RUN_TEST(test_bump_is_atomic);
    RUN_TEST(test_bump_with_hash_and_set_role);
    RUN_TEST(test_original_document);
    RUN_TEST(test_delete_outbox_and_restore);
    RUN_TEST(test_prepared_recovery);
    RUN_TEST(test_start_purges_sent_events);
    RUN_TEST(test_unreachable);
    if (mongo)
        close_mongo();
    drop_database();
    tms_mailbox_free(&replies);
    uv_run(&loop, UV_RUN_DEFAULT);
    uv_loop_close(&loop);
    TEST_EXIT();
}
