/* Shared by the MongoDB adapter's files (mongo.c, users.c,
 * outbox.c): the handle, the worker hand-off and error mapping. Not for
 * use outside src/io/store/mongo/. */
#ifndef TMS_IO_MONGO_INTERNAL_H
#define TMS_IO_MONGO_INTERNAL_H

#include <mongoc/mongoc.h>
#include <stdatomic.h>

#include "core/metrics.h"
#include "core/workpool.h"
#include "io/store/mongo/mongo.h"

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

/* Runs one op on a worker with a client from the pool; sets the op's err. */
typedef void (*tms_mongo_run_fn)(tms_mongo_t *m, mongoc_client_t *client, tms_msg_t *msg);

struct tms_mongo {
    tms_user_store_t users; /* first member: the port pointer is the handle */
    tms_outbox_t outbox;
    mongoc_client_pool_t *pool;
    char db_name[64];
    tms_workpool_t *workers;
    atomic_bool closing;
    _Atomic uint64_t down_until_ms;   /* fail fast until then (ms): see DOWN_WINDOW_MS */
    tms_histogram_t *duration[2][16]; /* [0] users, [1] outbox; by op code */
    tms_counter_t *errors[2][16];
};

/** Queue msg to run as run(m, client, msg) on a worker, which then replies with
 * msg. Takes ownership and clears *msg on success; 0, -TMS_EFULL or
 * -TMS_ECLOSED. */
int tms__mongo_submit(tms_mongo_t *m, tms_msg_t **msg, tms_mongo_run_fn run);

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

/** Register the duration histogram and error counter of each op (1..nops-1). */
void tms__mongo_port_metrics(const char *const *names, int nops, tms_histogram_t **duration,
                             tms_counter_t **errors);

/* The ports' run functions (users.c, outbox.c). */
void tms__mongo_users_run(tms_mongo_t *m, mongoc_client_t *client, tms_msg_t *msg);
void tms__mongo_outbox_run(tms_mongo_t *m, mongoc_client_t *client, tms_msg_t *msg);
extern const char *const tms__mongo_user_op_names[];
extern const int tms__mongo_user_nops;
extern const char *const tms__mongo_outbox_op_names[];
extern const int tms__mongo_outbox_nops;

#endif
