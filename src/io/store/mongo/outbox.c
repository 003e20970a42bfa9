/* The outbox and inbox port on MongoDB. An event is a document of `Outbox`:
 * {_id: event_id, seq, topic, key, payload, createdAt, state}, state
 * one of "prepared" (its change may not have happened yet: see delete in
 * users.c), "pending" (to publish), "aborted"; a sent event is deleted ("sent",
 * with sentAt, is what versions before that left). Handled events are
 * documents of `Inbox` keyed "<consumer>/<event_id>". Runs on a worker. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/alloc.h"
#include "core/clock.h"
#include "core/log.h"
#include "io/store/mongo/internal.h"

/* Seq order is the order seqs were handed out, which two concurrent writers may
 * commit the other way round; events of different users have no order to keep.
 */
int64_t tms__mongo_next_seq(tms_mongo_t *m, mongoc_client_t *client, tms_error_t *e)
{
    mongoc_collection_t *c = tms__mongo_coll(m, client, TMS_MONGO_COUNTERS);
    mongoc_find_and_modify_opts_t *opts = mongoc_find_and_modify_opts_new();
    bson_t *filter = BCON_NEW("_id", BCON_UTF8("outbox"));
    bson_t *update = BCON_NEW("$inc", "{", "seq", BCON_INT64(1), "}");
    bson_t reply;
    bson_error_t error;
    bson_iter_t it;
    int64_t seq = -1;
    mongoc_find_and_modify_opts_set_update(opts, update);
    mongoc_find_and_modify_opts_set_flags(opts, MONGOC_FIND_AND_MODIFY_RETURN_NEW |
                                                    MONGOC_FIND_AND_MODIFY_UPSERT);
    /* Two first-ever upserts may race on the counter's _id: the loser retries
     * once. */
    for (int attempt = 0; attempt < 2 && seq < 0; attempt++) {
        bool ok = mongoc_collection_find_and_modify_with_opts(c, filter, opts, &reply, &error);
        if (ok && bson_iter_init_find(&it, &reply, "value") && BSON_ITER_HOLDS_DOCUMENT(&it) &&
            bson_iter_recurse(&it, &it) && bson_iter_find(&it, "seq"))
            seq = bson_iter_as_int64(&it);
        else if (ok)
            tms_error_set(e, TMS_INTERNAL, "internal error");
        else if (!tms__mongo_duplicate(&error) || attempt == 1)
            tms__mongo_fail(e, &error, "outbox_seq");
        bson_destroy(&reply);
        if (ok || !tms__mongo_duplicate(&error))
            break;
    }
    bson_destroy(filter);
    bson_destroy(update);
    mongoc_find_and_modify_opts_destroy(opts);
    mongoc_collection_destroy(c);
    return seq;
}

static bool user_exists(tms_mongo_t *m, mongoc_client_t *client, const char *id, bool *exists,
                        bson_error_t *error)
{
    mongoc_collection_t *c = tms__mongo_coll(m, client, TMS_MONGO_USERS);
    bson_oid_t oid;
    bson_t *filter, *opts = BCON_NEW("limit", BCON_INT64(1));
    mongoc_cursor_t *cur;
    const bson_t *doc;
    bool ok = true;
    *exists = false;
    if (!bson_oid_is_valid(id, strlen(id))) {
        bson_destroy(opts);
        mongoc_collection_destroy(c);
        return true; /* no such user can exist */
    }
    bson_oid_init_from_string(&oid, id);
    filter = BCON_NEW("_id", BCON_OID(&oid));
    cur = mongoc_collection_find_with_opts(c, filter, opts, NULL);
    if (mongoc_cursor_next(cur, &doc))
        *exists = true;
    else if (mongoc_cursor_error(cur, error))
        ok = false;
    mongoc_cursor_destroy(cur);
    bson_destroy(filter);
    bson_destroy(opts);
    mongoc_collection_destroy(c);
    return ok;
}

/* Settles events a delete left "prepared" long ago: the user is gone, so the
 * delete happened and the event is due ("pending"); or the user is there, so it
 * did not
 * ("aborted"). Idempotent; runs before every fetch, at start and after.
 * O(prepared events past the grace), normally none: one indexed query. */
static bool settle_prepared(tms_mongo_t *m, mongoc_client_t *client, mongoc_collection_t *outbox,
                            bson_error_t *error)
{
    bson_t *filter = BCON_NEW("state", BCON_UTF8("prepared"), "createdAt", "{", "$lt",
                              BCON_INT64(tms_now_ms() - TMS_MONGO_PREPARED_GRACE_MS), "}");
    bson_t *opts = BCON_NEW("limit", BCON_INT64(100));
    mongoc_cursor_t *cur = mongoc_collection_find_with_opts(outbox, filter, opts, NULL);
    const bson_t *doc;
    bool ok = true;
    while (ok && mongoc_cursor_next(cur, &doc)) {
        bson_iter_t id, key;
        bool exists;
        bson_t *sel, *set;
        if (!bson_iter_init_find(&id, doc, "_id") || !BSON_ITER_HOLDS_UTF8(&id) ||
            !bson_iter_init_find(&key, doc, "key") || !BSON_ITER_HOLDS_UTF8(&key))
            continue;
        if (!user_exists(m, client, bson_iter_utf8(&key, NULL), &exists, error)) {
            ok = false;
            break;
        }
        sel = BCON_NEW("_id", BCON_UTF8(bson_iter_utf8(&id, NULL)), "state", BCON_UTF8("prepared"));
        set = BCON_NEW("$set", "{", "state", BCON_UTF8(exists ? "aborted" : "pending"), "}");
        ok = mongoc_collection_update_one(outbox, sel, set, NULL, NULL, error);
        tms_log_warn("mongo_outbox_settled", "event_id=%s state=%s", bson_iter_utf8(&id, NULL),
                     exists ? "aborted" : "pending");
        bson_destroy(sel);
        bson_destroy(set);
    }
    if (ok && mongoc_cursor_error(cur, error))
        ok = false;
    mongoc_cursor_destroy(cur);
    bson_destroy(filter);
    bson_destroy(opts);
    return ok;
}

static char *dup_utf8(const bson_t *doc, const char *key)
{
    bson_iter_t it;
    if (bson_iter_init_find(&it, doc, key) && BSON_ITER_HOLDS_UTF8(&it))
        return tms_strdup(bson_iter_utf8(&it, NULL));
    return tms_strdup("");
}

static void copy_field(char *dst, size_t cap, const bson_t *doc, const char *key)
{
    char *s = dup_utf8(doc, key);
    snprintf(dst, cap, "%s", s);
    free(s);
}

static int64_t int_field(const bson_t *doc, const char *key)
{
    bson_iter_t it;
    if (bson_iter_init_find(&it, doc, key) && BSON_ITER_HOLDS_NUMBER(&it))
        return bson_iter_as_int64(&it);
    return 0;
}

static bool fetch(tms_mongo_t *m, mongoc_client_t *client, mongoc_collection_t *outbox,
                  tms_outbox_op_t *op, bson_error_t *error)
{
    size_t cap = op->limit > 0 ? (size_t)op->limit : 1;
    bson_t *filter =
        BCON_NEW("state", BCON_UTF8("pending"), "seq", "{", "$gt", BCON_INT64(op->after_seq), "}");
    bson_t *opts = BCON_NEW("sort", "{", "seq", BCON_INT32(1), "}", "limit", BCON_INT64(cap));
    mongoc_cursor_t *cur;
    const bson_t *doc;
    bool ok;
    if (!settle_prepared(m, client, outbox, error)) {
        bson_destroy(filter);
        bson_destroy(opts);
        return false;
    }
    op->events = tms_calloc(cap, sizeof(tms_outbox_event_t));
    cur = mongoc_collection_find_with_opts(outbox, filter, opts, NULL);
    while (op->nevents < cap && mongoc_cursor_next(cur, &doc)) {
        tms_outbox_event_t *e = &op->events[op->nevents++];
        e->seq = int_field(doc, "seq");
        copy_field(e->event_id, sizeof(e->event_id), doc, "_id");
        copy_field(e->topic, sizeof(e->topic), doc, "topic");
        copy_field(e->key, sizeof(e->key), doc, "key");
        e->payload = dup_utf8(doc, "payload");
        e->created_at_ms = int_field(doc, "createdAt");
    }
    ok = !mongoc_cursor_error(cur, error);
    mongoc_cursor_destroy(cur);
    bson_destroy(filter);
    bson_destroy(opts);
    return ok;
}

/* One deleteMany for the batch: a sent event is gone, as on the SQL stores (pg/outbox.c
 * says why); again, it finds nothing. */
static bool mark_sent(mongoc_collection_t *outbox, tms_outbox_op_t *op, bson_error_t *error)
{
    bson_t filter = BSON_INITIALIZER, in, seqs;
    bool ok;
    BSON_APPEND_DOCUMENT_BEGIN(&filter, "seq", &in);
    BSON_APPEND_ARRAY_BEGIN(&in, "$in", &seqs);
    for (size_t i = 0; i < op->nseqs; i++) {
        char idx[16];
        const char *k;
        bson_uint32_to_string((uint32_t)i, &k, idx, sizeof(idx));
        BSON_APPEND_INT64(&seqs, k, op->seqs[i]);
    }
    bson_append_array_end(&in, &seqs);
    bson_append_document_end(&filter, &in);
    BSON_APPEND_UTF8(&filter, "state", "pending");
    ok = op->nseqs == 0 || mongoc_collection_delete_many(outbox, &filter, NULL, NULL, error);
    bson_destroy(&filter);
    return ok;
}

/* Adding a pending event_id again is a retry of the same event, not a second one. */
static void add(tms_mongo_t *m, mongoc_client_t *client, mongoc_collection_t *outbox,
                tms_outbox_op_t *op)
{
    tms_outbox_event_t *e = &op->event;
    bson_error_t error;
    bson_t *doc;
    int64_t seq = tms__mongo_next_seq(m, client, &op->err);
    if (seq < 0)
        return;
    doc = BCON_NEW("_id", BCON_UTF8(e->event_id), "seq", BCON_INT64(seq), "topic",
                   BCON_UTF8(e->topic), "key", BCON_UTF8(e->key), "payload",
                   BCON_UTF8(e->payload ? e->payload : "{}"), "createdAt", BCON_INT64(tms_now_ms()),
                   "state", BCON_UTF8("pending"));
    if (!mongoc_collection_insert_one(outbox, doc, NULL, NULL, &error) &&
        !tms__mongo_duplicate(&error))
        tms__mongo_fail(&op->err, &error, "outbox_add");
    bson_destroy(doc);
}

/* The record or lookup of the op's ids[i] (SEEN: answered in ids_seen[i]). false on
 * an error. */
static bool inbox_one(mongoc_collection_t *c, tms_outbox_op_t *op, size_t i)
{
    const char *event_id = op->ids[i];
    char id[sizeof(op->consumer) + sizeof(op->ids[i]) + 1];
    bson_error_t error;
    bson_t *doc;
    bool ok = true;
    snprintf(id, sizeof(id), "%s/%s", op->consumer, event_id);
    if (op->msg.op == TMS_INBOX_RECORD) {
        doc = BCON_NEW("_id", BCON_UTF8(id), "consumer", BCON_UTF8(op->consumer), "eventId",
                       BCON_UTF8(event_id), "handledAt", BCON_INT64(tms_now_ms()));
        if (!mongoc_collection_insert_one(c, doc, NULL, NULL, &error) &&
            !tms__mongo_duplicate(&error)) {
            tms__mongo_fail(&op->err, &error, "inbox_record");
            ok = false;
        }
    } else {
        bson_t *opts = BCON_NEW("limit", BCON_INT64(1));
        mongoc_cursor_t *cur;
        const bson_t *found;
        doc = BCON_NEW("_id", BCON_UTF8(id));
        cur = mongoc_collection_find_with_opts(c, doc, opts, NULL);
        op->ids_seen[i] = mongoc_cursor_next(cur, &found);
        if (!op->ids_seen[i] && mongoc_cursor_error(cur, &error)) {
            tms__mongo_fail(&op->err, &error, "inbox_seen");
            ok = false;
        }
        mongoc_cursor_destroy(cur);
        bson_destroy(opts);
    }
    bson_destroy(doc);
    return ok;
}

/* The op's ids one after the other: the first error ends the op (a record is
 * idempotent, so the batch can be sent again whole). */
static void inbox(tms_mongo_t *m, mongoc_client_t *client, tms_outbox_op_t *op)
{
    mongoc_collection_t *c = tms__mongo_coll(m, client, TMS_MONGO_INBOX);
    for (size_t i = 0; i < op->nids; i++)
        if (!inbox_one(c, op, i))
            break;
    mongoc_collection_destroy(c);
}

/* A bounded step of the trim: the ids of op->limit records handled before
 * op->before_ms at most, then one deleteMany of those ids (deleteMany takes no limit).
 * No index on handledAt: a step with nothing to delete reads the collection (the users
 * store's inbox holds the auth actor's few compensation records). */
static void trim_inbox(tms_mongo_t *m, mongoc_client_t *client, tms_outbox_op_t *op)
{
    mongoc_collection_t *c = tms__mongo_coll(m, client, TMS_MONGO_INBOX);
    bson_t *filter = BCON_NEW("handledAt", "{", "$lt", BCON_INT64(op->before_ms), "}");
    bson_t *opts = BCON_NEW("limit", BCON_INT64(op->limit > 0 ? op->limit : 1), "projection", "{",
                            "_id", BCON_INT32(1), "}");
    bson_t del = BSON_INITIALIZER, in, ids, reply = BSON_INITIALIZER;
    mongoc_cursor_t *cur = mongoc_collection_find_with_opts(c, filter, opts, NULL);
    const bson_t *doc;
    bson_error_t error;
    bson_iter_t it;
    uint32_t n = 0;

    BSON_APPEND_DOCUMENT_BEGIN(&del, "_id", &in);
    BSON_APPEND_ARRAY_BEGIN(&in, "$in", &ids);
    while (mongoc_cursor_next(cur, &doc))
        if (bson_iter_init_find(&it, doc, "_id") && BSON_ITER_HOLDS_UTF8(&it)) {
            char idx[16];
            const char *k;
            bson_uint32_to_string(n++, &k, idx, sizeof(idx));
            BSON_APPEND_UTF8(&ids, k, bson_iter_utf8(&it, NULL));
        }
    bson_append_array_end(&in, &ids);
    bson_append_document_end(&del, &in);
    /* still old: one recorded again meanwhile (a redelivery after another process's
     * trim) stays */
    BCON_APPEND(&del, "handledAt", "{", "$lt", BCON_INT64(op->before_ms), "}");
    if (mongoc_cursor_error(cur, &error))
        tms__mongo_fail(&op->err, &error, "inbox_trim");
    else if (n > 0) {
        bson_destroy(&reply);
        if (!mongoc_collection_delete_many(c, &del, NULL, &reply, &error))
            tms__mongo_fail(&op->err, &error, "inbox_trim");
        else if (bson_iter_init_find(&it, &reply, "deletedCount"))
            op->count = bson_iter_as_int64(&it);
        op->more = n >= (uint32_t)(op->limit > 0 ? op->limit : 1);
    }
    bson_destroy(&reply);
    bson_destroy(&del);
    mongoc_cursor_destroy(cur);
    bson_destroy(opts);
    bson_destroy(filter);
    mongoc_collection_destroy(c);
}

void tms__mongo_outbox_run(tms_mongo_t *m, mongoc_client_t *client, tms_msg_t *msg)
{
    tms_outbox_op_t *op = (tms_outbox_op_t *)msg;
    mongoc_collection_t *outbox;
    bson_error_t error;
    bool ok = true;

    if (msg->op == TMS_INBOX_SEEN || msg->op == TMS_INBOX_RECORD) {
        inbox(m, client, op);
        return;
    }
    if (msg->op == TMS_INBOX_TRIM) {
        trim_inbox(m, client, op);
        return;
    }
    outbox = tms__mongo_coll(m, client, TMS_MONGO_OUTBOX);
    switch (msg->op) {
    case TMS_OUTBOX_FETCH:
        ok = fetch(m, client, outbox, op, &error);
        break;
    case TMS_OUTBOX_MARK_SENT:
        ok = mark_sent(outbox, op, &error);
        break;
    case TMS_OUTBOX_ADD:
        add(m, client, outbox, op);
        break;
    case TMS_OUTBOX_PENDING: {
        bson_t *filter = BCON_NEW("state", BCON_UTF8("pending"));
        int64_t n = mongoc_collection_count_documents(outbox, filter, NULL, NULL, NULL, &error);
        ok = n >= 0;
        op->count = n >= 0 ? n : 0;
        bson_destroy(filter);
        break;
    }
    default:
        tms_log_error("mongo_bad_op", "port=outbox op=%d", msg->op);
        tms_error_set(&op->err, TMS_INTERNAL, "internal error");
        break;
    }
    if (!ok)
        tms__mongo_fail(&op->err, &error, tms_store_op_name(TMS_STORE_OUTBOX, msg->op));
    mongoc_collection_destroy(outbox);
}
