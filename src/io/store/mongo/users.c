/* The user store port on MongoDB, in the original's document shape: collection
 * `User` with {_id: ObjectId, email, password, role, tokenVersion, createdAt:
 * Date}. Each op is one command except delete and restore (below). Only
 * commands MongoDB 4.4 has: find, insert, findAndModify, delete, update, ping.
 * Runs on a worker. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/clock.h"
#include "core/events.h"
#include "core/log.h"
#include "io/store/mongo/internal.h"

static void copy_utf8(char *dst, size_t cap, const bson_iter_t *it)
{
    uint32_t len = 0;
    const char *s = bson_iter_utf8(it, &len);
    if (len >= cap)
        len = (uint32_t)cap - 1;
    memcpy(dst, s, len);
    dst[len] = '\0';
}

/* Reads a User document, tolerant of what the original's Mongoose models wrote
 * (int32 or double tokenVersion, missing role or tokenVersion, extra fields).
 */
static void read_user(const bson_t *doc, tms_user_t *u)
{
    bson_iter_t it;
    memset(u, 0, sizeof(*u));
    snprintf(u->role, sizeof(u->role), "user");
    if (!bson_iter_init(&it, doc))
        return;
    while (bson_iter_next(&it)) {
        const char *k = bson_iter_key(&it);
        bson_type_t t = bson_iter_type(&it);
        if (strcmp(k, "_id") == 0 && t == BSON_TYPE_OID)
            bson_oid_to_string(bson_iter_oid(&it), u->id);
        else if (strcmp(k, "email") == 0 && t == BSON_TYPE_UTF8)
            copy_utf8(u->email, sizeof(u->email), &it);
        else if (strcmp(k, "password") == 0 && t == BSON_TYPE_UTF8)
            copy_utf8(u->password_hash, sizeof(u->password_hash), &it);
        else if (strcmp(k, "role") == 0 && t == BSON_TYPE_UTF8)
            copy_utf8(u->role, sizeof(u->role), &it);
        else if (strcmp(k, "tokenVersion") == 0 && BSON_ITER_HOLDS_NUMBER(&it))
            u->token_version = bson_iter_as_int64(&it);
        else if (strcmp(k, "createdAt") == 0 && t == BSON_TYPE_DATE_TIME)
            u->created_at_ms = bson_iter_date_time(&it);
        else if (strcmp(k, "createdAt") == 0 && BSON_ITER_HOLDS_NUMBER(&it))
            u->created_at_ms = bson_iter_as_int64(&it);
    }
}

/* tokenVersion as the original's driver wrote it: int32 while it fits. */
static void append_version(bson_t *doc, int64_t v)
{
    if (v >= INT32_MIN && v <= INT32_MAX)
        BSON_APPEND_INT32(doc, "tokenVersion", (int32_t)v);
    else
        BSON_APPEND_INT64(doc, "tokenVersion", v);
}

static void user_doc(bson_t *doc, const bson_oid_t *oid, const tms_user_t *u)
{
    bson_init(doc);
    BSON_APPEND_OID(doc, "_id", oid);
    BSON_APPEND_UTF8(doc, "email", u->email);
    BSON_APPEND_UTF8(doc, "password", u->password_hash);
    BSON_APPEND_UTF8(doc, "role", u->role);
    append_version(doc, u->token_version);
    BSON_APPEND_DATE_TIME(doc, "createdAt", u->created_at_ms);
}

static bool parse_id(const char *hex, bson_oid_t *oid)
{
    if (strlen(hex) != TMS_USER_ID_LEN || !bson_oid_is_valid(hex, TMS_USER_ID_LEN))
        return false;
    bson_oid_init_from_string(oid, hex);
    return true;
}

/* Finds one document; returns 1 found (copied into *out), 0 none, -1 error set.
 */
static int find_one(mongoc_collection_t *c, const bson_t *filter, bson_t *out, tms_error_t *e,
                    const char *what)
{
    bson_t *opts = BCON_NEW("limit", BCON_INT64(1));
    mongoc_cursor_t *cur = mongoc_collection_find_with_opts(c, filter, opts, NULL);
    const bson_t *doc;
    bson_error_t error;
    int rc = 0;
    if (mongoc_cursor_next(cur, &doc)) {
        bson_copy_to(doc, out);
        rc = 1;
    } else if (mongoc_cursor_error(cur, &error)) {
        tms__mongo_fail(e, &error, what);
        rc = -1;
    }
    mongoc_cursor_destroy(cur);
    bson_destroy(opts);
    return rc;
}

static void get_user(mongoc_collection_t *c, bson_t *filter, tms_user_op_t *op, const char *what)
{
    bson_t doc;
    int rc = find_one(c, filter, &doc, &op->err, what);
    if (rc == 1) {
        read_user(&doc, &op->user);
        bson_destroy(&doc);
    } else if (rc == 0) {
        tms_error_set(&op->err, TMS_NOT_FOUND, "user not found");
    }
    bson_destroy(filter);
}

/* findAndModify returning the document after the change: one atomic step, so
 * two concurrent logins get two different token versions. */
static void modify_user(mongoc_collection_t *c, bson_t *filter, bson_t *update, tms_user_op_t *op,
                        const char *what)
{
    mongoc_find_and_modify_opts_t *opts = mongoc_find_and_modify_opts_new();
    bson_t reply;
    bson_error_t error;
    bson_iter_t it;
    mongoc_find_and_modify_opts_set_update(opts, update);
    mongoc_find_and_modify_opts_set_flags(opts, MONGOC_FIND_AND_MODIFY_RETURN_NEW);
    if (!mongoc_collection_find_and_modify_with_opts(c, filter, opts, &reply, &error)) {
        tms__mongo_fail(&op->err, &error, what);
    } else if (bson_iter_init_find(&it, &reply, "value") && BSON_ITER_HOLDS_DOCUMENT(&it)) {
        const uint8_t *data;
        uint32_t len;
        bson_t doc;
        bson_iter_document(&it, &len, &data);
        if (bson_init_static(&doc, data, len))
            read_user(&doc, &op->user);
    } else {
        tms_error_set(&op->err, TMS_NOT_FOUND, "user not found");
    }
    bson_destroy(&reply);
    mongoc_find_and_modify_opts_destroy(opts);
    bson_destroy(filter);
    bson_destroy(update);
}

/* Bump = findAndModify $inc, which MongoDB runs atomically, then a claim on the
 * new version: an insert of "<id>:<version>" into a collection whose _id is unique.
 * FerretDB v1 runs findAndModify as a read and a later whole-document write
 * (FerretDB issue 3040), so two concurrent bumps can both come back with the same
 * version; the claim lets only one of them keep it and the other bumps again. So a
 * version is handed out at most once on either server, across TMS instances too:
 * no two tokens ever carry the same valid version. On MongoDB the first claim
 * always succeeds; it costs one small insert per login or logout. */
static void bump_version(tms_mongo_t *m, mongoc_client_t *client, mongoc_collection_t *users,
                         const bson_oid_t *oid, tms_user_op_t *op)
{
    enum { MAX_ATTEMPTS = 32 };
    mongoc_collection_t *claims = tms__mongo_coll(m, client, TMS_MONGO_TOKEN_CLAIMS);
    int attempt;
    for (attempt = 0; attempt < MAX_ATTEMPTS; attempt++) {
        bson_error_t error;
        bson_t *claim, *update;
        char id[TMS_USER_ID_LEN + 24];
        bool ok;
        if (op->new_hash[0])
            update = BCON_NEW("$inc", "{", "tokenVersion", BCON_INT32(1), "}", "$set", "{",
                              "password", BCON_UTF8(op->new_hash), "}");
        else
            update = BCON_NEW("$inc", "{", "tokenVersion", BCON_INT32(1), "}");
        modify_user(users, BCON_NEW("_id", BCON_OID(oid)), update, op, "bump_version");
        if (op->err.code != TMS_OK)
            break;
        snprintf(id, sizeof(id), "%s:%lld", op->user.id, (long long)op->user.token_version);
        claim = BCON_NEW("_id", BCON_UTF8(id), "createdAt", BCON_DATE_TIME(tms_now_ms()));
        ok = mongoc_collection_insert_one(claims, claim, NULL, NULL, &error);
        bson_destroy(claim);
        if (ok)
            break;
        if (!tms__mongo_duplicate(&error)) {
            tms__mongo_fail(&op->err, &error, "bump_version");
            break;
        }
        /* Lost the version to a concurrent bump: step aside (on a worker, never a
         * loop) for an exponentially growing, fully jittered time, 1 ms doubling up
         * to 64 ms, so the same few do not collide again even on a slow server. */
        {
            uint64_t cap_us = 1000ull << (attempt < 6 ? attempt : 6);
            usleep((useconds_t)(cap_us / 2 + uv_hrtime() % (cap_us / 2 + 1)));
        }
    }
    if (attempt == MAX_ATTEMPTS) {
        tms_log_warn("mongo_bump_contended", "user_id=%s attempts=%d", op->user.id, attempt);
        tms_error_set(&op->err, TMS_UNAVAILABLE, "user store busy, retry later");
    }
    mongoc_collection_destroy(claims);
}

static void insert_user(mongoc_collection_t *c, tms_user_op_t *op, const char *what)
{
    bson_oid_t oid;
    bson_t doc;
    bson_error_t error;
    if (!parse_id(op->user.id, &oid)) {
        tms_error_set(&op->err, TMS_INTERNAL, "internal error");
        return;
    }
    user_doc(&doc, &oid, &op->user);
    if (!mongoc_collection_insert_one(c, &doc, NULL, NULL, &error)) {
        if (tms__mongo_duplicate(&error))
            tms_error_set(&op->err, TMS_ALREADY_EXISTS, "%s",
                          strstr(error.message, "email") ? "email already registered"
                                                         : "user id already exists");
        else
            tms__mongo_fail(&op->err, &error, what);
    }
    bson_destroy(&doc);
}

/* Delete without a multi-document transaction (FerretDB v1 has none, and a
 * standalone MongoDB neither). The order makes every crash point recoverable:
 *   1. read the user (the event carries it as it was);
 *   2. upsert its tombstone (the whole user as read, for compensation; a stale
 *      tombstone of a user that still exists is harmless: only restore reads
 * it);
 *   3. insert the user_deleted event in state "prepared" (the relay skips it);
 *   4. delete the user;
 *   5. set the event "pending" (the relay publishes it).
 * Stopped after 3 or 4, an event stays "prepared"; once older than
 * TMS_MONGO_PREPARED_GRACE_MS, the relay's fetch settles it: user gone ->
 * "pending", user still there -> "aborted" (outbox.c). Each step is
 * idempotent, so running that recovery twice, or at every start, changes
 * nothing. */
static void delete_user(tms_mongo_t *m, mongoc_client_t *client, tms_user_op_t *op)
{
    mongoc_collection_t *users = tms__mongo_coll(m, client, TMS_MONGO_USERS);
    mongoc_collection_t *tombs = tms__mongo_coll(m, client, TMS_MONGO_DELETED_USERS);
    mongoc_collection_t *outbox = tms__mongo_coll(m, client, TMS_MONGO_OUTBOX);
    bson_t *filter = NULL, *tomb = NULL, *opts = NULL, *event = NULL, *mark = NULL, *ev_id = NULL;
    bson_t reply = BSON_INITIALIZER;
    bson_error_t error;
    bson_iter_t it;
    bson_oid_t oid;
    char event_id[37], *payload = NULL;
    int64_t seq, now = tms_now_ms();

    if (!parse_id(op->key, &oid)) {
        tms_error_set(&op->err, TMS_NOT_FOUND, "user not found");
        goto out;
    }
    get_user(users, BCON_NEW("_id", BCON_OID(&oid)), op, "delete");
    if (op->err.code != TMS_OK)
        goto out;
    filter = BCON_NEW("_id", BCON_OID(&oid));
    tomb = BCON_NEW("_id", BCON_OID(&oid), "password", BCON_UTF8(op->user.password_hash),
                    "tokenVersion", BCON_INT64(op->user.token_version), "deletedAt",
                    BCON_DATE_TIME(now), "email", BCON_UTF8(op->user.email), "role",
                    BCON_UTF8(op->user.role), "createdAt", BCON_DATE_TIME(op->user.created_at_ms));
    opts = BCON_NEW("upsert", BCON_BOOL(true));
    if (!mongoc_collection_replace_one(tombs, filter, tomb, opts, NULL, &error)) {
        tms__mongo_fail(&op->err, &error, "delete");
        goto out;
    }
    if ((seq = tms__mongo_next_seq(m, client, &op->err)) < 0)
        goto out;
    tms_event_id_new(event_id);
    payload = tms_event_user_json(&op->user, event_id);
    event =
        BCON_NEW("_id", BCON_UTF8(event_id), "seq", BCON_INT64(seq), "topic",
                 BCON_UTF8(TMS_TOPIC_USER_DELETED), "key", BCON_UTF8(op->user.id), "payload",
                 BCON_UTF8(payload), "createdAt", BCON_INT64(now), "state", BCON_UTF8("prepared"));
    if (!mongoc_collection_insert_one(outbox, event, NULL, NULL, &error)) {
        tms__mongo_fail(&op->err, &error, "delete");
        goto out;
    }
    ev_id = BCON_NEW("_id", BCON_UTF8(event_id));
    if (!mongoc_collection_delete_one(users, filter, NULL, &reply, &error)) {
        tms__mongo_fail(&op->err, &error, "delete");
        goto out; /* the event stays prepared; recovery settles it either way */
    }
    if (bson_iter_init_find(&it, &reply, "deletedCount") && bson_iter_as_int64(&it) == 0) {
        /* Someone else deleted it between 1 and 4: theirs is the event. */
        mark = BCON_NEW("$set", "{", "state", BCON_UTF8("aborted"), "}");
        mongoc_collection_update_one(outbox, ev_id, mark, NULL, NULL, NULL);
        tms_error_set(&op->err, TMS_NOT_FOUND, "user not found");
        goto out;
    }
    mark = BCON_NEW("$set", "{", "state", BCON_UTF8("pending"), "}");
    if (!mongoc_collection_update_one(outbox, ev_id, mark, NULL, NULL, &error)) {
        /* The user is gone, which is what the caller asked: answer OK and let
         * recovery publish the event after the grace period. */
        char quoted[300];
        tms_log_warn("mongo_delete_event_deferred", "event_id=%s msg=%s", event_id,
                     tms_log_quote(quoted, sizeof(quoted), error.message, strlen(error.message)));
    }
out:
    free(payload);
    bson_destroy(&reply);
    bson_destroy(filter);
    bson_destroy(tomb);
    bson_destroy(opts);
    bson_destroy(event);
    bson_destroy(mark);
    bson_destroy(ev_id);
    mongoc_collection_destroy(users);
    mongoc_collection_destroy(tombs);
    mongoc_collection_destroy(outbox);
}

static bool has_utf8(const bson_t *doc, const char *key)
{
    bson_iter_t it;
    return bson_iter_init_find(&it, doc, key) && BSON_ITER_HOLDS_UTF8(&it);
}

/* Restore re-inserts the user its tombstone keeps, with the token version one past
 * the deleted one (old tokens stay dead); the caller's email and role must match the
 * tombstone's, and are never what is written. */
static void restore_user(tms_mongo_t *m, mongoc_client_t *client, tms_user_op_t *op)
{
    mongoc_collection_t *users = tms__mongo_coll(m, client, TMS_MONGO_USERS);
    mongoc_collection_t *tombs = tms__mongo_coll(m, client, TMS_MONGO_DELETED_USERS);
    bson_t *filter = NULL, doc;
    bson_oid_t oid;
    tms_user_t tomb;
    bool complete;
    int found;

    if (!parse_id(op->user.id, &oid)) {
        tms_error_set(&op->err, TMS_NOT_FOUND, "no tombstone for this user");
        goto out;
    }
    filter = BCON_NEW("_id", BCON_OID(&oid));
    found = find_one(tombs, filter, &doc, &op->err, "restore");
    if (found < 0)
        goto out;
    if (found == 0) {
        tms_error_set(&op->err, TMS_NOT_FOUND, "no tombstone for this user");
        goto out;
    }
    read_user(&doc, &tomb);
    complete = has_utf8(&doc, "email") && has_utf8(&doc, "role");
    bson_destroy(&doc);
    if (!complete) {
        tms_error_set(&op->err, TMS_FAILED_PRECONDITION,
                      "the tombstone keeps no email and role (written by an older version)");
        goto out;
    }
    if (strcmp(tomb.email, op->user.email) != 0 || strcmp(tomb.role, op->user.role) != 0) {
        tms_error_set(&op->err, TMS_FAILED_PRECONDITION, "%s differs from the tombstone",
                      strcmp(tomb.email, op->user.email) != 0 ? "email" : "role");
        goto out;
    }
    if (!tomb.password_hash[0]) /* an unusable hash: the user must be given a new one */
        snprintf(tomb.password_hash, sizeof(tomb.password_hash), "!");
    tomb.token_version++;
    op->user = tomb;
    insert_user(users, op, "restore");
    if (op->err.code == TMS_OK) /* a tombstone left behind is harmless */
        mongoc_collection_delete_one(tombs, filter, NULL, NULL, NULL);
out:
    bson_destroy(filter);
    mongoc_collection_destroy(users);
    mongoc_collection_destroy(tombs);
}

static void ping(tms_mongo_t *m, mongoc_client_t *client, tms_user_op_t *op)
{
    bson_t *cmd = BCON_NEW("ping", BCON_INT32(1));
    bson_error_t error;
    if (!mongoc_client_command_simple(client, m->db_name, cmd, NULL, NULL, &error))
        tms__mongo_fail(&op->err, &error, "ping");
    bson_destroy(cmd);
}

void tms__mongo_users_run(tms_mongo_t *m, mongoc_client_t *client, tms_msg_t *msg)
{
    tms_user_op_t *op = (tms_user_op_t *)msg;
    mongoc_collection_t *users;
    bson_oid_t oid;

    switch (msg->op) {
    case TMS_USER_DELETE:
        delete_user(m, client, op);
        return;
    case TMS_USER_RESTORE:
        restore_user(m, client, op);
        return;
    case TMS_USER_PING:
        ping(m, client, op);
        return;
    default:
        break;
    }
    users = tms__mongo_coll(m, client, TMS_MONGO_USERS);
    switch (msg->op) {
    case TMS_USER_CREATE:
        insert_user(users, op, "create");
        break;
    case TMS_USER_GET_BY_EMAIL:
        get_user(users, BCON_NEW("email", BCON_UTF8(op->key)), op, "get_by_email");
        break;
    case TMS_USER_GET_BY_ID:
        if (parse_id(op->key, &oid))
            get_user(users, BCON_NEW("_id", BCON_OID(&oid)), op, "get_by_id");
        else
            tms_error_set(&op->err, TMS_NOT_FOUND, "user not found");
        break;
    case TMS_USER_BUMP_VERSION:
        if (parse_id(op->key, &oid))
            bump_version(m, client, users, &oid, op);
        else
            tms_error_set(&op->err, TMS_NOT_FOUND, "user not found");
        break;
    case TMS_USER_SET_ROLE:
        modify_user(users, BCON_NEW("email", BCON_UTF8(op->key)),
                    BCON_NEW("$set", "{", "role", BCON_UTF8(op->user.role), "}"), op, "set_role");
        break;
    default:
        tms_log_error("mongo_bad_op", "port=users op=%d", msg->op);
        tms_error_set(&op->err, TMS_INTERNAL, "internal error");
        break;
    }
    mongoc_collection_destroy(users);
}
