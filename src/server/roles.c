/* The roles of server.roles on one worker: the actors this process runs, on the
 * adapters of the configuration, and for a role another process runs a gRPC client
 * with a proxy mailbox that callers post to as if it were the actor's own (a split
 * deployment). Also the REST handler every process has (/healthz, /readyz, /metrics,
 * and the API on a gateway). */
#define _GNU_SOURCE /* sched_getaffinity, CPU_COUNT */
#include <sched.h>
#include <stdio.h>
#include <string.h>

#include "core/ops.h"

/* How often worker 0's task actor trims the push log to push.retention and
 * push.max_events. */
#define PUSH_PURGE_MS 5000
/* When worker 0 trims its stores' inboxes to events.inbox_retention: soon after start,
 * then hourly (a record's age matters in days). */
#define INBOX_TRIM_FIRST_MS 5000
#define INBOX_TRIM_EVERY_MS 3600000
#include "server/internal.h"

/* Password hashes (argon2id: tens of ms of CPU and memory bandwidth each) run at this
 * nice value with a kicker (auth.hash_priority=nice, the default) or at SCHED_IDLE with
 * a kicker (idle; this nice value where the kernel has no SCHED_IDLE), on fewer threads
 * than the CPUs the
 * process may use: during a login storm the loops keep a core and hashes queue (issue
 * 20). */
#define HASH_NICE 10

int server_hash_threads(int64_t configured)
{
    cpu_set_t set;
    int cpus = 0, cap;
    if (sched_getaffinity(0, sizeof(set), &set) == 0)
        cpus = CPU_COUNT(&set);
    cap = cpus > 1 ? cpus - 1 : 1;
    return configured < cap ? (int)configured : cap;
}

/* What every worker shares: worker 0 makes the cache and the limits (and opens the
 * embedded stores and hash threads in server_start_roles); the others borrow all of it. */
static void share_parts(tms_server_t *s)
{
    const tms_config_t *cfg = s->cfg;
    tms_server_t *p = s->primary;
    if (!p) {
        s->user_cache = tms_user_cache_new((uint64_t)cfg->auth.user_cache_ms, 100000);
        s->tickets = tms_ticket_book_new(100000);
        s->limits = tms_gateway_limits_new((uint32_t)cfg->ratelimit.api_per_minute,
                                           (uint32_t)cfg->ratelimit.login_per_15min,
                                           (uint32_t)cfg->ratelimit.task_create_per_hour);
        return;
    }
    s->users_db = p->users_db;
    s->tasks_db = p->tasks_db;
    s->users_mongo = p->users_mongo;
    s->hashers = p->hashers;
    s->user_cache = p->user_cache;
    s->limits = p->limits;
    s->tickets = p->tickets;
}

/* Worker 0's push part, once the bus is open: doorbells go to other processes when
 * the bus reaches them (Kafka). */
static void start_push(tms_server_t *s)
{
    const tms_config_t *cfg = s->cfg;
    if (s->primary) {
        s->push = s->primary->push;
        return;
    }
    s->push = tms_push_shared_new(
        s->loop,
        &(tms_push_limits_t){
            .max_subscribers = (size_t)cfg->push.max_subscribers,
            .max_subscribers_per_user = (size_t)cfg->push.max_subscribers_per_user,
            .queue_bytes = (size_t)cfg->push.queue_bytes,
            .heartbeat_ms = (uint64_t)cfg->push.heartbeat * 1000,
            .recheck_ms = (uint64_t)cfg->push.recheck * 1000,
            .retention_ms = (uint64_t)cfg->push.retention * 1000,
        },
        s->bus, s->kafka != NULL);
}

/* ---- peers: roles that run in another process ------------------------------ */

static void on_probe_done(void *ctx, int status, const char *message, const uint8_t *resp,
                          size_t resp_len)
{
    (void)ctx; /* the client's own health state is what /readyz reads */
    (void)status;
    (void)message;
    (void)resp;
    (void)resp_len;
}

/* One health check to the peer: connects the client (it connects lazily) and
 * refreshes its health, so /readyz turns ready without waiting for traffic. */
static void probe_peer(tms_grpc_client_t *client, uv_loop_t *loop)
{
    static const uint8_t empty[1];
    tms_grpc_client_call(client, "/grpc.health.v1.Health/Check", empty, 0, uv_now(loop) + 1000,
                         true, on_probe_done, NULL);
}

/* A peer that is down is probed once a second, so its health (/readyz, tms_peer_up)
 * comes back without waiting for traffic; the client's breaker and back-off bound
 * what the probes cost while it stays down. */
void server_probe_unhealthy_peers(tms_server_t *s)
{
    if (s->auth_client && !tms_grpc_client_healthy(s->auth_client))
        probe_peer(s->auth_client, s->loop);
    if (s->task_client && !tms_grpc_client_healthy(s->task_client))
        probe_peer(s->task_client, s->loop);
}

static int peer_ready(tms_server_t *s, tms_grpc_client_t *c)
{
    if (tms_grpc_client_healthy(c))
        return 1;
    probe_peer(c, s->loop);
    return 0;
}

static int auth_peer_ready(void *arg)
{
    return peer_ready(arg, ((tms_server_t *)arg)->auth_client);
}

static int task_peer_ready(void *arg)
{
    return peer_ready(arg, ((tms_server_t *)arg)->task_client);
}

static double peer_up(void *client)
{
    return tms_grpc_client_healthy(client) ? 1 : 0;
}

/* A role this process does not run: a gRPC client for its peer and a proxy mailbox
 * that callers post to as if it were the actor's own. */
static tms_mailbox_t *start_proxy(tms_server_t *s, const char *role, const char *addr,
                                  tms_grpc_client_t **client, tms_remote_actor_t **proxy)
{
    const tms_config_t *cfg = s->cfg;
    char err[512], labels[48];
    *client = tms_grpc_client_new(s->loop,
                                  &(tms_grpc_client_options_t){
                                      .peer = role,
                                      .addr = addr,
                                      .credential = cfg->peers.secret,
                                      .pool_size = (int)cfg->peers.pool_size,
                                      .connect_timeout_ms = (int)cfg->peers.connect_timeout_ms,
                                      .retry_attempts = (int)cfg->peers.retry_attempts,
                                      .breaker_cooldown_ms = cfg->peers.breaker_cooldown_ms,
                                      .tls = s->sv->tls[SERVER_TLS_PEERS],
                                  },
                                  err, sizeof(err));
    if (!*client) {
        fprintf(stderr, "tms: peers.%s: %s\n", role, err);
        return NULL;
    }
    *proxy = tms_remote_actor_start(s->loop,
                                    &(tms_remote_actor_config_t){
                                        .name = role,
                                        .mailbox_capacity = (size_t)cfg->server.mailbox_capacity,
                                        .default_timeout_ms = (uint64_t)cfg->peers.timeout_ms,
                                        .client = *client,
                                    });
    probe_peer(*client, s->loop);
    snprintf(labels, sizeof(labels), "peer=\"%s\"", role);
    tms_metrics_gauge_fn("tms_peer_up", "1 while the peer answers and its breaker is closed",
                         labels, peer_up, *client);
    return tms_remote_actor_mailbox(*proxy);
}

/* ---- the actors ------------------------------------------------------------- */

/* The gateway's direct call into the auth actor of its own loop (same worker). */
static bool authenticate_now(void *auth, tms_api_call_t *call)
{
    return tms_auth_authenticate_now(auth, call);
}

static int kafka_ready(void *kafka)
{
    return tms_kafka_bus_reachable(kafka);
}

/* The stores of the roles: the user store for auth, the task store for task and
 * notifier (its inbox drops redelivered events). */
static int open_stores(tms_server_t *s, unsigned roles)
{
    tms_user_store_t *users_store = NULL;
    tms_task_store_t *tasks_store = NULL;
    tms_outbox_t *users_outbox = NULL, *tasks_outbox = NULL;
    if ((roles & TMS_ROLE_AUTH) && server_open_users(s, &users_store, &users_outbox) != 0)
        return -1;
    s->users_store = users_store;
    s->users_outbox = users_outbox;
    s->own_users = !s->primary; /* the user store is worker 0's, whatever the backend */
    if ((roles & (TMS_ROLE_TASK | TMS_ROLE_NOTIFIER)) &&
        server_open_tasks(s, &tasks_store, &tasks_outbox) != 0)
        return -1;
    s->tasks_store = tasks_store;
    s->tasks_outbox = tasks_outbox;
    s->own_tasks = !s->primary || s->tasks_pg; /* PostgreSQL: a pool per worker */
    return 0;
}

/* Worker 0 trims the inboxes its consumers keep (events.inbox_retention): the task
 * actor's and the notifier's in the task store, the auth actor's in the user store
 * (one file holding both: once). A notifier-only process trims its own, as a task
 * process does on a shared database. */
static void start_inbox_trims(tms_server_t *s, unsigned roles)
{
    uint64_t keep_ms = (uint64_t)s->cfg->events.inbox_retention * 1000;
    bool both = s->tasks_outbox && s->users_outbox == s->tasks_outbox;
    if (s->tasks_outbox)
        s->tasks_trim = tms_inbox_trim_new(s->loop, s->tasks_outbox, keep_ms, INBOX_TRIM_FIRST_MS,
                                           INBOX_TRIM_EVERY_MS, both ? "tasks+users" : "tasks");
    if ((roles & TMS_ROLE_AUTH) && s->users_outbox && !both)
        s->users_trim = tms_inbox_trim_new(s->loop, s->users_outbox, keep_ms, INBOX_TRIM_FIRST_MS,
                                           INBOX_TRIM_EVERY_MS, "users");
}

/* Worker 0 runs the relays (and the mailer, and the hash threads); the others kick
 * its relays through stand-ins. */
static int start_relays(tms_server_t *s, unsigned roles)
{
    const tms_config_t *cfg = s->cfg;
    if (s->primary) {
        s->tasks_relay = tms_relay_remote_new(s->primary->tasks_relay);
        s->users_relay = s->primary->users_relay == s->primary->tasks_relay
                             ? s->tasks_relay
                             : tms_relay_remote_new(s->primary->users_relay);
        return 0;
    }
    if ((roles & TMS_ROLE_NOTIFIER) && server_open_mailer(s) != 0)
        return -1;
    if (roles & TMS_ROLE_TASK) /* one outbox (one SQLite file) may hold both kinds */
        s->tasks_relay = tms_relay_new(s->loop, s->tasks_outbox, s->bus, 1000,
                                       (roles & TMS_ROLE_AUTH) && s->users_outbox == s->tasks_outbox
                                           ? "tasks+users"
                                           : "tasks");
    if (roles & TMS_ROLE_AUTH) {
        s->users_relay = s->users_outbox == s->tasks_outbox && s->tasks_relay
                             ? s->tasks_relay
                             : tms_relay_new(s->loop, s->users_outbox, s->bus, 1000, "users");
        int n = server_hash_threads(cfg->auth.hash_threads);
        s->hashers =
            strcmp(cfg->auth.hash_priority, "nice") == 0
                ? tms_workpool_new_kicked("hash", n, (size_t)cfg->auth.hash_queue, HASH_NICE)
                : tms_workpool_new_idle("hash", n, (size_t)cfg->auth.hash_queue, HASH_NICE);
    }
    start_inbox_trims(s, roles);
    return 0;
}

static void start_auth(tms_server_t *s)
{
    const tms_config_t *cfg = s->cfg;
    const char *secret = s->sv->secret;
    s->auth = tms_auth_start(
        s->loop,
        &(tms_auth_config_t){
            .jwt_key = (const unsigned char *)secret,
            .jwt_key_len = strlen(secret),
            .issuer = cfg->auth.issuer,
            .token_ttl = cfg->auth.token_ttl,
            .argon2_opslimit = (unsigned long long)cfg->auth.argon2_opslimit,
            .argon2_memlimit = (size_t)cfg->auth.argon2_memlimit_kib * 1024,
            .mailbox_capacity = (size_t)cfg->server.mailbox_capacity,
            .user_cache_ms = (uint64_t)cfg->auth.user_cache_ms,
            .bus = s->bus,
            .inbox = s->users_outbox,
            .relay = s->users_relay,
            .user_cache = s->user_cache,
            .dummy_hash = s->primary ? tms_auth_dummy_hash(s->primary->auth) : NULL,
            .hash_per_address = (size_t)cfg->auth.hash_per_address,
            .hash_queue_ms = (uint64_t)cfg->auth.hash_queue_ms,
            .ipv6_prefix = (unsigned)cfg->ratelimit.ipv6_prefix,
            .registration = strcmp(cfg->auth.registration, "admin") == 0 ? TMS_REGISTRATION_ADMIN
                            : strcmp(cfg->auth.registration, "closed") == 0
                                ? TMS_REGISTRATION_CLOSED
                                : TMS_REGISTRATION_OPEN,
            .login_keeps_others = strcmp(cfg->auth.login_revokes_others, "false") == 0,
            .tickets = s->tickets,
            .push = s->push,
        },
        s->users_store, s->hashers);
}

unsigned server_grpc_owners(const tms_config_t *cfg)
{
    unsigned m = cfg->server.role_mask;
    if (m & TMS_ROLE_GATEWAY)
        return 0;
    return (m & TMS_ROLE_AUTH ? 1u << TMS_OWNER_AUTH : 0) |
           (m & TMS_ROLE_TASK ? 1u << TMS_OWNER_TASK : 0);
}

/* Every process serves /healthz, /readyz and /metrics; only the gateway role the API
 * (a role-only process's gateway of migration mode is for gRPC alone).
 * /readyz asks worker 0's Kafka client, whichever worker answers. */
static void start_rest(tms_server_t *s, unsigned roles)
{
    const tms_config_t *cfg = s->cfg;
    tms_kafka_bus_t *events = s->primary ? s->primary->kafka : s->kafka;
    tms_rest_config_t rc = {
        .gateway =
            s->gateway && (roles & TMS_ROLE_GATEWAY) ? tms_gateway_mailbox(s->gateway) : NULL,
        .users = s->users_store,
        .tasks = s->tasks_store,
        .call_timeout_ms = (uint64_t)cfg->server.request_timeout * 1000,
        .events_ready = events && roles != TMS_ROLE_GATEWAY ? kafka_ready : NULL,
        .events_arg = events,
        .metrics_token = cfg->metrics.token,
        .push = s->push_hub,
        .sse_retry_ms = (uint64_t)cfg->push.retry_ms,
    };
    if (s->auth_client)
        rc.peers[rc.npeers++] = (tms_rest_peer_check_t){"auth", auth_peer_ready, s};
    if (s->task_client)
        rc.peers[rc.npeers++] = (tms_rest_peer_check_t){"task", task_peer_ready, s};
    s->rest = tms_rest_new(s->loop, &rc);
}

/* Starts the stores, bus, mailer, relays and actors of the roles in server.roles for
 * one worker, and a proxy for each role another process runs:
 *   gateway:  rate limits and routing (REST and public gRPC listen in listeners.c)
 *   auth:     user store, hashers, users relay, auth actor
 *   task:     task store, tasks relay, task actor
 *   notifier: mailer, the task store's inbox (dedup), notifier actor
 * With server.workers > 1 every role runs here (config.c): worker 0 owns the shared
 * parts, the relays and the notifier; the others borrow them. */
int server_start_roles(tms_server_t *s)
{
    const tms_config_t *cfg = s->cfg;
    unsigned roles = cfg->server.role_mask;
    tms_mailbox_t *auth_mb = NULL, *task_mb = NULL;

    share_parts(s);
    if (open_stores(s, roles) != 0 || server_open_bus(s) != 0 || start_relays(s, roles) != 0)
        return -1;
    start_push(s);
    if (roles & TMS_ROLE_AUTH) {
        start_auth(s);
        auth_mb = tms_auth_mailbox(s->auth);
    } else if (roles & (TMS_ROLE_GATEWAY | TMS_ROLE_TASK | TMS_ROLE_NOTIFIER)) {
        if (!(auth_mb = start_proxy(s, "auth", cfg->peers.auth, &s->auth_client, &s->auth_proxy)))
            return -1;
    }
    if (roles & TMS_ROLE_TASK) {
        s->task =
            tms_task_start(s->loop, &(tms_task_config_t){
                                        .mailbox_capacity = (size_t)cfg->server.mailbox_capacity,
                                        .tasks = s->tasks_store,
                                        .outbox = s->tasks_outbox,
                                        .auth = auth_mb,
                                        .bus = s->bus,
                                        .relay = s->tasks_relay,
                                        .push = s->push,
                                        .push_retention_ms = (uint64_t)cfg->push.retention * 1000,
                                        .push_purge_ms = s->primary ? 0 : PUSH_PURGE_MS,
                                        .push_max_events = cfg->push.max_events,
                                    });
        task_mb = tms_task_mailbox(s->task);
    } else if (roles & TMS_ROLE_GATEWAY) {
        if (!(task_mb = start_proxy(s, "task", cfg->peers.task, &s->task_client, &s->task_proxy)))
            return -1;
    }
    if ((roles & TMS_ROLE_NOTIFIER) && !s->primary)
        s->notifier = tms_notifier_start(
            s->loop, &(tms_notifier_config_t){
                         .mailbox_capacity = (size_t)cfg->server.mailbox_capacity,
                         .mailer = s->mailer,
                         .inbox = s->tasks_outbox,
                         .auth = auth_mb,
                         .bus = s->bus,
                         .per_assigner_per_hour = (uint32_t)cfg->notify.per_assigner_per_hour,
                         .per_recipient_per_hour = (uint32_t)cfg->notify.per_recipient_per_hour,
                     });
    /* Migration mode (grpc.trusted_peers): a process without the gateway role gets a
     * gateway of its own too, for the original services of its roles on grpc.addr
     * (server_grpc_owners). */
    if ((roles & TMS_ROLE_GATEWAY) || (cfg->grpc.trusted_peers[0] && server_grpc_owners(cfg)))
        s->gateway = tms_gateway_start(
            s->loop,
            &(tms_gateway_config_t){
                .api_per_minute = (uint32_t)cfg->ratelimit.api_per_minute,
                .login_per_15min = (uint32_t)cfg->ratelimit.login_per_15min,
                .task_create_per_hour = (uint32_t)cfg->ratelimit.task_create_per_hour,
                .ipv6_prefix = (unsigned)cfg->ratelimit.ipv6_prefix,
                .mailbox_capacity = (size_t)cfg->server.mailbox_capacity,
                .limits = s->limits,
                .authenticate_now = s->auth ? authenticate_now : NULL,
                .authenticate_ctx = s->auth,
            },
            auth_mb, task_mb);
    if ((roles & TMS_ROLE_GATEWAY) && task_mb && auth_mb)
        s->push_hub = tms_push_hub_start(s->loop, s->push, task_mb, auth_mb);
    start_rest(s, roles);
    return 0;
}
