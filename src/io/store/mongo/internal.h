/* Shared by the MongoDB adapter's files (mongo.c, users.c,
 * outbox.c): the handle, the worker hand-off and error mapping. Not for
 * use outside src/io/store/mongo/. */
#ifndef TMS_IO_MONGO_INTERNAL_H
#define TMS_IO_MONGO_INTERNAL_H

#include <mongoc/mongoc.h>

#include "core/workpool.h"
#include "io/store/mongo/mongo.h"
#include "io/store/store.h"

/* Collections. `User` is the original's; the others are ours. */
#define TMS_MONGO_USERS "User"
#define TMS_MONGO_DELETED_USERS                                                                    \
    "DeletedUser" /* tombstones for compensation                                                   \
                   */
#define TMS_MONGO_OUTBOX "Outbox"
#define TMS_MONGO_INBOX "Inbox"
#define TMS_MONGO_COUNTERS "Counter"        /* {_id: "outbox", seq}: outbox order */
#define TMS_MONGO_TOKEN_CLAIMS "TokenClaim" /* {_id: "<user id>:<version>"}: see bump */

/* An outbox event left "prepared" this long belongs to a delete that stopped
 * half way (each step is bounded by the driver timeouts, seconds): recovery
 * settles it. */
#define TMS_MONGO_PREPARED_GRACE_MS 60000

struct tms_mongo {
    tms_store_t st; /* first member: the ports, their lifecycle and metrics */
    mongoc_client_pool_t *pool;
    char db_name[64];
    tms_workpool_t *workers;
    _Atomic uint64_t down_until_ms; /* fail fast until then (ms): see DOWN_WINDOW_MS */
};

/** Set e from a driver error: UNAVAILABLE when the server cannot be reached
 * (selection, network, timeout), INTERNAL otherwise (logged with what). */
void tms__mongo_fail(tms_error_t *e, const bson_error_t *error, const char *what);

/** True when error is a duplicate-key write error (E11000). */
bool tms__mongo_duplicate(const bson_error_t *error);

/** A collection of m's database; the caller destroys it. */
mongoc_collection_t *tms__mongo_coll(tms_mongo_t *m, mongoc_client_t *client, const char *name);

/** The next outbox seq: one findAndModify $inc (upsert) on a counter document.
 * Returns it, or -1 with e set. */
int64_t tms__mongo_next_seq(tms_mongo_t *m, mongoc_client_t *client, tms_error_t *e);

/* The ports' run functions (users.c, outbox.c): run one op (op code in range,
 * outputs reset) on a worker with a client from the pool; set the op's err. */
void tms__mongo_users_run(tms_mongo_t *m, mongoc_client_t *client, tms_msg_t *msg);
void tms__mongo_outbox_run(tms_mongo_t *m, mongoc_client_t *client, tms_msg_t *msg);

#endif
