/* The MongoDB adapter's handle: start-up checks on one blocking client, the
 * worker pool that runs every operation off the loop, and the driver error
 * mapping. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/alloc.h"
#include "core/clock.h"
#include "core/log.h"
#include "core/status.h"
#include "io/store/mongo/internal.h"

#define DEFAULT_DB "tms"

typedef struct mongo_job {
    tms_job_t job; /* first member */
    tms_mongo_t *m;
    tms_msg_t *op;
    tms_store_port_t port;
} mongo_job_t;

/* After an operation found no server, others fail at once for this long instead of
 * each waiting out the selection timeout on a worker: with the server down, a burst
 * gets its 503s now rather than queueing behind pool_size workers. Then one op at a
 * time probes (the others still fail fast until it is done; PROBE_MS only bounds a
 * probe that never reports). Pings always try, and any success ends it, so recovery
 * shows within about this time. */
#define DOWN_WINDOW_MS 1000
#define PROBE_MS 60000

static pthread_once_t init_once = PTHREAD_ONCE_INIT;

/* Set by tms__mongo_fail on the worker running an op: it found the server down. */
static _Thread_local bool op_found_down;

/* The driver's own log lines go through ours; below warning they are noise. */
static void on_driver_log(mongoc_log_level_t level, const char *domain, const char *message,
                          void *arg)
{
    char quoted[512];
    (void)arg;
    /* FerretDB has no sessions; the driver's goodbye to them is not a problem. */
    if (level > MONGOC_LOG_LEVEL_WARNING || strstr(message, "endSessions"))
        return;
    tms_log_warn("mongoc_log", "domain=%s msg=%s", domain,
                 tms_log_quote(quoted, sizeof(quoted), message, strlen(message)));
}

/* mongoc_init may run once per process (it uses pthread_once itself), so
 * cleanup waits for exit: ASan's leak check runs after atexit handlers
 * registered later. */
static void driver_init(void)
{
    mongoc_init();
    mongoc_log_set_handler(on_driver_log, NULL);
    atexit(mongoc_cleanup);
}

bool tms_mongo_url(const char *url)
{
    return strncmp(url, "mongodb://", 10) == 0 || strncmp(url, "mongodb+srv://", 14) == 0;
}

bool tms__mongo_duplicate(const bson_error_t *error)
{
    return error->code == MONGOC_ERROR_DUPLICATE_KEY;
}

/* Server error codes that mean "not reachable right now" rather than a bug:
 * HostUnreachable, HostNotFound, MaxTimeMSExpired, NetworkTimeout,
 * ShutdownInProgress, PrimarySteppedDown, SocketException, NotWritablePrimary,
 * InterruptedAtShutdown, NotPrimaryNoSecondaryOk, NotPrimaryOrSecondary. */
static bool transient_server_code(uint32_t code)
{
    static const uint32_t codes[] = {6, 7, 50, 89, 91, 189, 9001, 10107, 11600, 13435, 13436};
    for (size_t i = 0; i < sizeof(codes) / sizeof(codes[0]); i++) {
        if (codes[i] == code)
            return true;
    }
    return false;
}

void tms__mongo_fail(tms_error_t *e, const bson_error_t *error, const char *what)
{
    char quoted[300];
    bool down =
        error->domain == MONGOC_ERROR_SERVER_SELECTION || error->domain == MONGOC_ERROR_STREAM ||
        (error->domain == MONGOC_ERROR_CLIENT && error->code == MONGOC_ERROR_CLIENT_AUTHENTICATE) ||
        transient_server_code(error->code);
    tms_log(down ? TMS_LOG_WARN : TMS_LOG_ERROR, "mongo_error", "op=%s domain=%u code=%u msg=%s",
            what, error->domain, error->code,
            tms_log_quote(quoted, sizeof(quoted), error->message, strlen(error->message)));
    op_found_down = op_found_down || down;
    if (down)
        tms_error_set(e, TMS_UNAVAILABLE, "user store unavailable");
    else
        tms_error_set(e, TMS_INTERNAL, "internal error");
}

mongoc_collection_t *tms__mongo_coll(tms_mongo_t *m, mongoc_client_t *client, const char *name)
{
    return mongoc_client_get_collection(client, m->db_name, name);
}

/* With the server believed down: true when this op should fail at once, false when
 * it goes ahead (as the one probe, or a ping). */
static bool fail_fast(tms_mongo_t *m, bool is_ping)
{
    uint64_t until = atomic_load(&m->down_until_ms), now = (uint64_t)tms_now_ms();
    if (is_ping || until == 0)
        return false;
    return now < until ||
           !atomic_compare_exchange_strong(&m->down_until_ms, &until, now + PROBE_MS);
}

/* On a worker: borrow a client (the pool holds one per worker, so this never
 * waits), run the op, reply to its sender. */
static void run_job(tms_job_t *job)
{
    mongo_job_t *j = (mongo_job_t *)job;
    tms_mongo_t *m = j->m;
    tms_msg_t *msg = j->op;
    uint64_t t0 = tms_store_begin(&m->st);

    j->op = NULL;
    if (fail_fast(m, j->port == TMS_STORE_USERS && msg->op == TMS_USER_PING)) {
        tms_error_set(tms_store_op_err(j->port, msg), TMS_UNAVAILABLE, "user store unavailable");
    } else {
        mongoc_client_t *client = mongoc_client_pool_pop(m->pool);
        op_found_down = false;
        if (j->port == TMS_STORE_USERS)
            tms__mongo_users_run(m, client, msg);
        else
            tms__mongo_outbox_run(m, client, msg);
        mongoc_client_pool_push(m->pool, client);
        atomic_store(&m->down_until_ms,
                     op_found_down ? (uint64_t)tms_now_ms() + DOWN_WINDOW_MS : 0);
    }
    tms_store_reply(&m->st, j->port, msg, t0);
}

static void free_job(tms_msg_t *msg)
{
    free(msg);
}

/* The backend's submit (any thread): one job on the worker pool. */
static int mongo_submit(tms_store_t *st, tms_store_port_t port, tms_msg_t **msg)
{
    tms_mongo_t *m = (tms_mongo_t *)st;
    mongo_job_t *j = tms_new(mongo_job_t);
    int rc;
    j->job.run = run_job;
    j->job.msg.free_fn = free_job; /* no reply_to: the worker frees the job after run */
    j->m = m;
    j->op = *msg;
    j->port = port;
    rc = tms_workpool_submit(m->workers, (tms_job_t **)&j);
    if (rc != 0) {
        free(j);
        return rc;
    }
    *msg = NULL;
    return 0;
}

/* Every port handed out is closed and drained: join the workers and let go of the
 * connections. */
static void mongo_release(tms_store_t *st)
{
    tms_mongo_t *m = (tms_mongo_t *)st;
    tms_workpool_free(&m->workers);
    mongoc_client_pool_destroy(m->pool);
    tms_store_released(st);
    free(m);
}

static const tms_store_backend_t backend = {
    .name = "mongodb",
    .submit = mongo_submit,
    .release = mongo_release,
};

/* Token claims only matter while a token could carry their version; on MongoDB,
 * whose $inc never hands out a version twice, they are not needed at all. */
#define CLAIM_TTL_S (7 * 24 * 3600)

/* createIndexes for one index; unique and ttl_s (expireAfterSeconds, 0: none) optional. */
static bool create_index(mongoc_database_t *db, const char *coll, bson_t *keys, const char *name,
                         bool unique, int32_t ttl_s, bson_error_t *error)
{
    bson_t cmd = BSON_INITIALIZER, indexes, index;
    bool ok;
    BSON_APPEND_UTF8(&cmd, "createIndexes", coll);
    BSON_APPEND_ARRAY_BEGIN(&cmd, "indexes", &indexes);
    BSON_APPEND_DOCUMENT_BEGIN(&indexes, "0", &index);
    BSON_APPEND_DOCUMENT(&index, "key", keys);
    BSON_APPEND_UTF8(&index, "name", name);
    if (unique)
        BSON_APPEND_BOOL(&index, "unique", true);
    if (ttl_s > 0)
        BSON_APPEND_INT32(&index, "expireAfterSeconds", ttl_s);
    bson_append_document_end(&indexes, &index);
    bson_append_array_end(&cmd, &indexes);
    ok = mongoc_database_write_command_with_opts(db, &cmd, NULL, NULL, error);
    bson_destroy(&cmd);
    bson_destroy(keys);
    return ok;
}

/* A sent event's document is deleted (outbox.c); those that earlier versions left in
 * state "sent" go at each start, as on the SQL stores (migrations.c). After the first
 * start it finds none (the state index). */
static bool purge_sent(mongoc_database_t *db, bson_error_t *error)
{
    mongoc_collection_t *outbox = mongoc_database_get_collection(db, TMS_MONGO_OUTBOX);
    bson_t *sent = BCON_NEW("state", BCON_UTF8("sent"));
    bson_t reply;
    bool ok = mongoc_collection_delete_many(outbox, sent, NULL, &reply, error);
    bson_iter_t it;
    if (ok && bson_iter_init_find(&it, &reply, "deletedCount") && bson_iter_as_int64(&it) > 0)
        tms_log_info("mongo_outbox_purged", "sent=%lld", (long long)bson_iter_as_int64(&it));
    bson_destroy(&reply);
    bson_destroy(sent);
    mongoc_collection_destroy(outbox);
    return ok;
}

/* Start-up, on the calling thread before anything is served: the server answers
 * and has the indexes. The unique email index is what makes a second
 * registration of one email fail (there is no check-then-insert); `email_1` is
 * the name Mongoose gave the original's index, so an existing collection keeps
 * it as it is. */
static int prepare(const mongoc_uri_t *uri, const char *db_name, char *err, size_t err_len)
{
    mongoc_client_t *client = mongoc_client_new_from_uri(uri);
    mongoc_database_t *db = NULL;
    bson_t ping = BSON_INITIALIZER;
    bson_error_t error;
    int rc = -TMS_EIO;

    if (!client) {
        snprintf(err, err_len, "cannot create a MongoDB client");
        goto out;
    }
    mongoc_client_set_error_api(client, MONGOC_ERROR_API_VERSION_2);
    mongoc_client_set_appname(client, "tms");
    db = mongoc_client_get_database(client, db_name);
    BSON_APPEND_INT32(&ping, "ping", 1);
    if (!mongoc_database_command_simple(db, &ping, NULL, NULL, &error)) {
        snprintf(err, err_len, "MongoDB does not answer: %s", error.message);
        goto out;
    }
    if (!create_index(db, TMS_MONGO_USERS, BCON_NEW("email", BCON_INT32(1)), "email_1", true, 0,
                      &error) ||
        !create_index(db, TMS_MONGO_OUTBOX, BCON_NEW("state", BCON_INT32(1), "seq", BCON_INT32(1)),
                      "state_1_seq_1", false, 0, &error)) {
        snprintf(err, err_len, "cannot create indexes: %s", error.message);
        goto out;
    }
    if (!purge_sent(db, &error)) /* nothing reads a sent event: only said */
        tms_log_warn("mongo_outbox_purge_failed", "error=\"%s\"", error.message);
    /* FerretDB v1 has no TTL indexes (NotImplemented, 238): its claims are kept. */
    if (!create_index(db, TMS_MONGO_TOKEN_CLAIMS, BCON_NEW("createdAt", BCON_INT32(1)),
                      "createdAt_ttl", false, CLAIM_TTL_S, &error)) {
        if (error.code != 238) {
            snprintf(err, err_len, "cannot create indexes: %s", error.message);
            goto out;
        }
        tms_log_info("mongo_no_ttl", "collection=%s note=\"claims are kept\"",
                     TMS_MONGO_TOKEN_CLAIMS);
    }
    rc = 0;
out:
    bson_destroy(&ping);
    if (db)
        mongoc_database_destroy(db);
    if (client)
        mongoc_client_destroy(client);
    return rc;
}

/* Timeouts from the options unless the URL already says. A connect cannot take
 * longer than selection would wait anyway. */
static void set_timeouts(mongoc_uri_t *uri, const tms_mongo_options_t *o)
{
    int sel = o->server_selection_timeout_ms > 0 ? o->server_selection_timeout_ms : 2000;
    int sock = o->socket_timeout_ms > 0 ? o->socket_timeout_ms : 5000;
    if (!mongoc_uri_has_option(uri, MONGOC_URI_SERVERSELECTIONTIMEOUTMS))
        mongoc_uri_set_option_as_int32(uri, MONGOC_URI_SERVERSELECTIONTIMEOUTMS, sel);
    if (!mongoc_uri_has_option(uri, MONGOC_URI_CONNECTTIMEOUTMS))
        mongoc_uri_set_option_as_int32(
            uri, MONGOC_URI_CONNECTTIMEOUTMS,
            mongoc_uri_get_option_as_int32(uri, MONGOC_URI_SERVERSELECTIONTIMEOUTMS, sel));
    if (!mongoc_uri_has_option(uri, MONGOC_URI_SOCKETTIMEOUTMS))
        mongoc_uri_set_option_as_int32(uri, MONGOC_URI_SOCKETTIMEOUTMS, sock);
}

tms_mongo_t *tms_mongo_open(uv_loop_t *loop, const char *url, const tms_mongo_options_t *opt,
                            char *err, size_t err_len)
{
    tms_mongo_options_t o = opt ? *opt : (tms_mongo_options_t){0};
    bson_error_t error;
    mongoc_uri_t *uri;
    tms_mongo_t *m = NULL;
    const char *db_name;
    int threads = o.pool_size > 0 ? o.pool_size : 4;

    pthread_once(&init_once, driver_init);
    uri = mongoc_uri_new_with_error(url, &error);
    if (!uri) {
        snprintf(err, err_len, "bad MongoDB URL: %s", error.message);
        return NULL;
    }
    set_timeouts(uri, &o);
    /* One pooled connection per worker: the bound on concurrent server work. */
    mongoc_uri_set_option_as_int32(uri, MONGOC_URI_MAXPOOLSIZE, threads);
    db_name = mongoc_uri_get_database(uri) ? mongoc_uri_get_database(uri) : DEFAULT_DB;
    if (strlen(db_name) >= sizeof(m->db_name)) {
        snprintf(err, err_len, "database name too long");
        goto fail;
    }
    if (prepare(uri, db_name, err, err_len) != 0)
        goto fail;
    m = tms_new(tms_mongo_t);
    snprintf(m->db_name, sizeof(m->db_name), "%s", db_name);
    m->pool = mongoc_client_pool_new(uri);
    mongoc_client_pool_set_error_api(m->pool, MONGOC_ERROR_API_VERSION_2);
    mongoc_client_pool_set_appname(m->pool, "tms");
    tms_store_init(&m->st, &backend, loop,
                   TMS_STORE_SERVES(TMS_STORE_USERS) | TMS_STORE_SERVES(TMS_STORE_OUTBOX));
    m->workers = tms_workpool_new("mongo", threads, o.queue_capacity ? o.queue_capacity : 1024);
    mongoc_uri_destroy(uri);
    return m;
fail:
    mongoc_uri_destroy(uri);
    return NULL;
}

tms_user_store_t *tms_mongo_user_store(tms_mongo_t *m)
{
    return tms_store_users(&m->st);
}

tms_outbox_t *tms_mongo_outbox(tms_mongo_t *m)
{
    return tms_store_outbox(&m->st);
}
