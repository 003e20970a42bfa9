/* Users, their outbox and the auth inbox on MongoDB, through mongo-c-driver.
 * The driver has no asynchronous API, so every operation runs on a small pool
 * of worker threads (core/workpool.h) that share one mongoc_client_pool_t, and
 * its result is posted to the op's reply mailbox like every store
 * (io/store/store.h: submit from any thread, close on the loop given to open;
 * core/port.h). */
#ifndef TMS_IO_MONGO_H
#define TMS_IO_MONGO_H

#include <stdbool.h>
#include <stddef.h>
#include <uv.h>

#include "core/outbox.h"
#include "core/user_store.h"

typedef struct tms_mongo tms_mongo_t;

typedef struct tms_mongo_options {
    int pool_size;                   /* worker threads = pooled connections; 0 = 4 */
    int server_selection_timeout_ms; /* unless the URL sets
                                        serverSelectionTimeoutMS; 0 = 2000 */
    int socket_timeout_ms;           /* unless the URL sets socketTimeoutMS; 0 = 5000 */
    size_t queue_capacity;           /* ops waiting for a worker; 0 = 1024 */
} tms_mongo_options_t;

/** Connect with one blocking client (start-up only, before anything is served),
 * create the indexes (unique email, outbox order) and start the workers. The
 * database is the one the URL names (default "tms"). Call on loop's thread: the
 * ports close on that loop. Returns NULL with a one-line reason in err (bad URL,
 * unreachable server, index creation refused). */
tms_mongo_t *tms_mongo_open(uv_loop_t *loop, const char *url, const tms_mongo_options_t *opt,
                            char *err, size_t err_len);

/** The user store port served by m (the same pointer on every call). Close it
 * through its vtable (core/port.h); m is released, its workers joined, with the
 * last port it handed out. */
tms_user_store_t *tms_mongo_user_store(tms_mongo_t *m);

/** The outbox and inbox port served by m; as tms_mongo_user_store. */
tms_outbox_t *tms_mongo_outbox(tms_mongo_t *m);

/** True when url names MongoDB (mongodb:// or mongodb+srv://). */
bool tms_mongo_url(const char *url);

#endif
