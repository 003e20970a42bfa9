/* tms: the command line, and the one place that wires adapters to actors from the
 * configuration. */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <sodium.h>
#include <uv.h>

#include "actors/auth.h"
#include "actors/gateway.h"
#include "actors/notifier.h"
#include "actors/task.h"
#include "core/config.h"
#include "core/events.h"
#include "core/log.h"
#include "core/metrics.h"
#include "core/ops.h"
#include "core/relay.h"
#include "core/status.h"
#include "core/user_cache.h"
#include "core/workers.h"
#include "core/workpool.h"
#include "io/bus/local.h"
#include "io/grpc/server.h"
#include "io/grpc/service.h"
#include "io/http/http1.h"
#include "io/http/listen.h"
#include "io/bus/kafka.h"
#include "io/mail/dlq.h"
#include "io/mail/maildir.h"
#include "io/store/mongo/mongo.h"
#include "io/http/rest.h"
#include "io/mail/smtp.h"
#include "io/grpc/client.h"
#include "io/store/pg/pg.h"
#include "io/remote/actor.h"
#include "io/store/sqlite/sqlite.h"
#include "io/tls/tls.h"

#define MAX_SETS 64
#define LAG_INTERVAL_MS 100

typedef struct cli {
    const char *command;
    const char *config_path;
    const char *sets[MAX_SETS];
    int nsets;
    const char *args[4];
    int nargs;
    char roles_set[96]; /* --roles X, applied as --set server.roles=X */
} cli_t;

static const char usage[] =
    "usage: tms <command> [--config FILE] [--set section.key=value ...]\n"
    "commands:\n"
    "  serve [--roles R,...]      run the server (REST, actors, embedded stores); R any of\n"
    "                             gateway,auth,task,notifier (default all, one process)\n"
    "  migrate                    apply database migrations and exit\n"
    "  user set-role EMAIL ROLE   make a user 'admin' or 'user'\n"
    "  mail dlq list              list SMTP dead letters (mail.dlq_dir)\n"
    "  mail dlq replay [EVENT_ID] send dead letters again through mail.url\n"
    "  config                     print every setting with its default\n"
    "  version                    print the version\n";

static int parse_cli(int argc, char **argv, cli_t *cli)
{
    memset(cli, 0, sizeof(*cli));
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--config") == 0 && i + 1 < argc) {
            cli->config_path = argv[++i];
        } else if (strcmp(argv[i], "--set") == 0 && i + 1 < argc) {
            if (cli->nsets == MAX_SETS)
                return -1;
            cli->sets[cli->nsets++] = argv[++i];
        } else if (strncmp(argv[i], "--set=", 6) == 0 && cli->nsets < MAX_SETS) {
            cli->sets[cli->nsets++] = argv[i] + 6;
        } else if (strcmp(argv[i], "--roles") == 0 && i + 1 < argc && cli->nsets < MAX_SETS) {
            snprintf(cli->roles_set, sizeof(cli->roles_set), "server.roles=%s", argv[++i]);
            cli->sets[cli->nsets++] = cli->roles_set;
        } else if (argv[i][0] == '-') {
            return -1;
        } else if (!cli->command) {
            cli->command = argv[i];
        } else if (cli->nargs < 4) {
            cli->args[cli->nargs++] = argv[i];
        } else {
            return -1;
        }
    }
    return cli->command ? 0 : -1;
}

/* Defaults, file, environment, --set; one line naming the key on error. */
static int load_config(const cli_t *cli, tms_config_t *cfg)
{
    char err[512] = "";
    tms_log_level_t level;
    tms_config_defaults(cfg);
    if (tms_config_load_file(cfg, cli->config_path, err, sizeof(err)) ||
        tms_config_load_env(cfg, err, sizeof(err)))
        goto fail;
    for (int i = 0; i < cli->nsets; i++) {
        if (tms_config_set(cfg, cli->sets[i], err, sizeof(err)))
            goto fail;
    }
    if (tms_config_finish(cfg, err, sizeof(err)))
        goto fail;
    if (tms_log_parse_level(cfg->log.level, &level) == 0)
        tms_log_set_level(level);
    return 0;
fail:
    fprintf(stderr, "tms: %s\n", err);
    return -1;
}

static int make_dir(const char *path)
{
    char buf[1024];
    size_t n = strlen(path);
    if (n >= sizeof(buf))
        return -1;
    memcpy(buf, path, n + 1);
    for (size_t i = 1; i <= n; i++) {
        if (buf[i] == '/' || buf[i] == '\0') {
            char c = buf[i];
            buf[i] = '\0';
            if (mkdir(buf, 0700) != 0 && errno != EEXIST)
                return -1;
            buf[i] = c;
        }
    }
    return 0;
}

/* The configured secret (auth.jwt_secret or its file, read and checked by the config),
 * or the one kept in <data.dir>/jwt.secret, created once with 48 random bytes (hex) so
 * tokens survive restarts; a kept file is held to the rules of a configured secret file
 * (mode, length after trimming, no published value). */
static int load_secret(const tms_config_t *cfg, char *out, size_t size)
{
    char path[1100], err[1200];
    unsigned char raw[48];
    int fd;
    if (cfg->auth.jwt_secret[0]) {
        snprintf(out, size, "%s", cfg->auth.jwt_secret);
        return 0;
    }
    snprintf(path, sizeof(path), "%s/jwt.secret", cfg->data.dir);
    if (access(path, F_OK) == 0) {
        if (tms_config_read_secret_file("auth.jwt_secret", path, out, size, err, sizeof(err))) {
            fprintf(stderr, "tms: %s\n", err);
            return -1;
        }
        return 0;
    }
    randombytes_buf(raw, sizeof(raw));
    sodium_bin2hex(out, size, raw, sizeof(raw));
    sodium_memzero(raw, sizeof(raw));
    fd = open(path, O_WRONLY | O_CREAT | O_EXCL, 0600);
    if (fd < 0 || write(fd, out, strlen(out)) != (ssize_t)strlen(out) || fsync(fd) != 0) {
        fprintf(stderr, "tms: auth.jwt_secret: cannot write %s: %s\n", path, strerror(errno));
        if (fd >= 0)
            close(fd);
        return -1;
    }
    close(fd);
    tms_log_info("jwt_secret_generated", "path=%s", path);
    return 0;
}

static const char *sqlite_path(const char *url)
{
    return url + strlen("sqlite://");
}

/* ---- serve ------------------------------------------------------------ */

/* One worker's parts. Worker 0 owns what every worker shares (the embedded stores,
 * the hash threads, the user cache, the rate limits) and runs the outbox relays, the
 * notifier and the Kafka consumers; the others borrow the shared parts and kick
 * worker 0's relays through stand-ins. Worker 0 stops last. */
typedef struct server {
    uv_loop_t *loop;
    tms_config_t *cfg;
    int index;                         /* worker number */
    struct server *primary;            /* worker 0 on the others, else NULL */
    tms_workers_t *workers;            /* for the number of workers still running */
    tms_user_cache_t *user_cache;      /* shared by every worker's auth actor */
    tms_gateway_limits_t *limits;      /* shared by every worker's gateway */
    tms_counter_t *requests;           /* tms_worker_http_requests_total{worker="i"} */
    int http_port, grpc_port;          /* bound ports */
    tms_sqlite_t *users_db, *tasks_db; /* the same handle when both URLs name one file */
    tms_pg_t *tasks_pg;                /* tasks.url=postgres://...: instead of tasks_db */
    tms_mongo_t *users_mongo;          /* users.url=mongodb://...: instead of users_db */
    /* The store ports handed to the actors; this worker closes those it owns (worker 0
     * all; the others only their own PostgreSQL pool's). */
    tms_user_store_t *users_store;
    tms_task_store_t *tasks_store;
    tms_outbox_t *users_outbox, *tasks_outbox; /* the same port for one file */
    bool own_users, own_tasks;
    tms_workpool_t *hashers, *mail_pool;
    tms_event_bus_t *bus;
    tms_kafka_bus_t *kafka; /* the bus's adapter when it is Kafka (for /readyz) */
    tms_mailer_t *mailer;
    tms_relay_t *users_relay, *tasks_relay; /* the same relay for one file */
    tms_auth_t *auth;
    tms_task_actor_t *task;
    tms_notifier_t *notifier;
    tms_gateway_t *gateway;
    tms_rest_t *rest;
    tms_http_server_t *http;
    tms_grpc_server_t *grpc;         /* the gRPC listener (grpc.addr) */
    tms_grpc_service_t *grpc_api;    /* what it serves */
    tms_http_server_t *metrics_http; /* metrics.addr: worker 0 only */
    /* Roles that run elsewhere (split deployment): a client and a proxy mailbox each. */
    tms_grpc_client_t *auth_client, *task_client;
    tms_remote_actor_t *auth_proxy, *task_proxy;
    tms_tls_ctx_t *peers_tls; /* their TLS (peers.tls_*), shared by the workers; or NULL */
    uv_timer_t lag_timer, deadline_timer;
    uint64_t lag_expected;
    unsigned ticks;
    _Atomic double lag_max; /* seconds, decaying maximum; read by any worker's /metrics */
    int stopping;
    /* Shutdown (see "shutdown" below): the step under way and the callbacks it still
     * waits for; stop replies arrive in the control mailbox. */
    tms_mailbox_t *control;
    int step, step_pending;
    uint64_t deadline;
    /* Worker 0: the other workers not yet ended, and the async they wake it with. */
    int peers_running;
    bool peers_open, peers_waited;
    uv_async_t peers_async;
} server_t;

/* Guards peers_running and peers_open of worker 0 against the other workers. */
static pthread_mutex_t peers_lock = PTHREAD_MUTEX_INITIALIZER;

static double lag_gauge(void *arg)
{
    return atomic_load_explicit(&((server_t *)arg)->lag_max, memory_order_relaxed);
}

/* Measures how late the loop runs a 100 ms timer: the loop-lag gauge that shows a
 * blocked loop (the login-burst test watches it). */
static void probe_unhealthy_peers(server_t *s);

static void on_lag_tick(uv_timer_t *t)
{
    server_t *s = t->data;
    uint64_t now;
    if (++s->ticks % 10 == 0 && !s->stopping)
        probe_unhealthy_peers(s); /* once a second */
    now = uv_hrtime();
    double lag = now > s->lag_expected ? (double)(now - s->lag_expected) / 1e9 : 0;
    double decayed = atomic_load_explicit(&s->lag_max, memory_order_relaxed) * 0.9;
    atomic_store_explicit(&s->lag_max, lag > decayed ? lag : decayed, memory_order_relaxed);
    s->lag_expected = now + LAG_INTERVAL_MS * 1000000ull;
}

static void close_handle(uv_handle_t *h)
{
    if (h->loop && !uv_is_closing(h))
        uv_close(h, NULL);
}

/* ---- shutdown ------------------------------------------------------------ */

/* A worker stops in steps; each starts once every callback of the one before has
 * come, so nothing here polls:
 *   listeners  HTTP and gRPC stop accepting and finish their requests (grace)
 *   front      calls still with the actors come back to REST and gRPC; the gateway
 *              stops once the calls it took are answered
 *   peers      worker 0 only: the other workers have ended (their writes use its
 *              embedded stores and are published by its relays)
 *   relays     the relays finish the batch in flight, and the mailer closes: mails
 *              waiting come back at once (their events stay pending), sends in
 *              flight finish, so a batch whose events wait for mails ends soon
 *   bus        the bus closes (consumers finish the deliveries they hold)
 *   actors     the notifier and the task actor finish what they hold and stop
 *   auth       the auth actor and the proxies stop (the others ask them to the end)
 *   stores     the store ports this worker owns close, answering what they hold
 * then the rest is freed and the loop ends. Ports close through their vtables and
 * actors stop on a stop message, whatever the adapter. server.shutdown_grace bounds
 * the listeners; the steps after them get what is left of it, at least a second. */
enum {
    STEP_LISTENERS,
    STEP_FRONT,
    STEP_PEERS,
    STEP_RELAYS,
    STEP_BUS,
    STEP_ACTORS,
    STEP_AUTH,
    STEP_STORES,
    STEP_DONE,
};

static const char *const step_names[] = {"listeners", "front", "peers",  "relays", "bus",
                                         "actors",    "auth",  "stores", "done"};

#define MIN_AFTER_LISTENERS_MS 1000

static void run_steps(server_t *s);

static void step_done(void *arg)
{
    server_t *s = arg;
    if (--s->step_pending == 0)
        run_steps(s);
}

static void on_actor_stopped(tms_msg_t *msg)
{
    server_t *s = msg->ctx;
    msg->free_fn(msg);
    step_done(s);
}

static void stop_actor(server_t *s, tms_mailbox_t *mb)
{
    if (!mb)
        return;
    s->step_pending++;
    if (tms_stop_send(mb, s->control, on_actor_stopped, s) != 0)
        s->step_pending--; /* already stopped */
}

static void on_control(void *owner, tms_msg_t *msg)
{
    (void)owner; /* only replies are expected here */
    if (msg->free_fn)
        msg->free_fn(msg);
}

/* Worker 0: another worker ended. */
static void on_peer_ended(uv_async_t *a)
{
    server_t *s = a->data;
    int running;
    pthread_mutex_lock(&peers_lock);
    running = s->peers_running;
    pthread_mutex_unlock(&peers_lock);
    if (running == 0 && s->peers_waited) {
        s->peers_waited = false;
        step_done(s);
    }
}

/* Worker 0: wait for the other workers (step_done when the last has ended). */
static void wait_peers(server_t *s)
{
    pthread_mutex_lock(&peers_lock);
    if (s->peers_running > 0) {
        s->peers_waited = true;
        s->step_pending++;
    }
    pthread_mutex_unlock(&peers_lock);
}

/* A worker other than 0 ended: worker 0 may go on. */
static void peer_ended(server_t *primary)
{
    pthread_mutex_lock(&peers_lock);
    primary->peers_running--;
    if (primary->peers_open)
        uv_async_send(&primary->peers_async);
    pthread_mutex_unlock(&peers_lock);
}

/* Last step of shutdown: nothing is in flight and every port is closed, so what is
 * left can go. Every free here accepts NULL. */
static void finish_shutdown(server_t *s)
{
    tms_metrics_drop_thread_gauges(); /* before what the gauges read goes */
    close_handle((uv_handle_t *)&s->deadline_timer);
    close_handle((uv_handle_t *)&s->lag_timer);
    if (s->primary) { /* borrowed from worker 0, which frees them after this worker ended */
        s->hashers = NULL;
        s->user_cache = NULL;
        s->limits = NULL;
    }
    /* Pools first: what they still run answers into mailboxes that are still alive. */
    tms_workpool_free(&s->hashers);
    tms_workpool_free(&s->mail_pool);
    tms_http_server_free(&s->http);
    tms_http_server_free(&s->metrics_http);
    tms_grpc_server_free(&s->grpc);
    tms_grpc_service_free(&s->grpc_api);
    tms_rest_free(&s->rest);
    tms_gateway_free(&s->gateway);
    tms_notifier_free(&s->notifier);
    tms_task_actor_free(&s->task);
    tms_auth_free(&s->auth);
    tms_remote_actor_free(&s->task_proxy);
    tms_remote_actor_free(&s->auth_proxy);
    if (s->task_client)
        tms_grpc_client_close(&s->task_client, NULL, NULL);
    if (s->auth_client)
        tms_grpc_client_close(&s->auth_client, NULL, NULL);
    if (s->users_relay == s->tasks_relay)
        s->users_relay = NULL;
    tms_relay_free(&s->users_relay);
    tms_relay_free(&s->tasks_relay);
    tms_user_cache_free(&s->user_cache);
    tms_gateway_limits_free(&s->limits);
    tms_mailbox_free(&s->control);
    if (s->primary) {
        peer_ended(s->primary);
    } else if (s->peers_async.loop) {
        pthread_mutex_lock(&peers_lock);
        s->peers_open = false;
        pthread_mutex_unlock(&peers_lock);
        close_handle((uv_handle_t *)&s->peers_async);
    }
}

static void close_mailer(server_t *s)
{
    tms_mailer_t *mailer = s->mailer;
    s->mailer = NULL;
    if (mailer) {
        s->step_pending++;
        mailer->close(mailer, step_done, s);
    }
}

static void close_bus(server_t *s)
{
    tms_event_bus_t *bus = s->bus;
    s->bus = NULL;
    s->kafka = NULL;
    if (bus) {
        s->step_pending++;
        bus->close(bus, step_done, s);
    }
}

/* The store ports this worker owns; each backend goes with its last port. */
static void close_stores(server_t *s)
{
    tms_user_store_t *users = s->own_users ? s->users_store : NULL;
    tms_task_store_t *tasks = s->own_tasks ? s->tasks_store : NULL;
    tms_outbox_t *uo = s->own_users ? s->users_outbox : NULL;
    tms_outbox_t *to = s->own_tasks ? s->tasks_outbox : NULL;
    s->users_store = NULL;
    s->tasks_store = NULL;
    s->users_outbox = s->tasks_outbox = NULL;
    s->users_db = s->tasks_db = NULL;
    s->tasks_pg = NULL;
    s->users_mongo = NULL;
    if (users) {
        s->step_pending++;
        users->close(users, step_done, s);
    }
    if (tasks) {
        s->step_pending++;
        tasks->close(tasks, step_done, s);
    }
    if (uo) {
        s->step_pending++;
        uo->close(uo, step_done, s);
    }
    if (to && to != uo) {
        s->step_pending++;
        to->close(to, step_done, s);
    }
}

/* Starts the next step(s); a step whose stops all completed at once is followed by
 * the next straight away. */
static void run_steps(server_t *s)
{
    do {
        s->step++;
        s->step_pending = 1; /* held while this step's stops are started */
        switch (s->step) {
        case STEP_FRONT:
            if (s->rest) {
                s->step_pending++;
                tms_rest_drain(s->rest, step_done, s);
            }
            if (s->grpc_api) {
                s->step_pending++;
                tms_grpc_service_drain(s->grpc_api, step_done, s);
            }
            stop_actor(s, s->gateway ? tms_gateway_mailbox(s->gateway) : NULL);
            break;
        case STEP_PEERS:
            if (!s->primary)
                wait_peers(s);
            break;
        case STEP_RELAYS:
            if (s->tasks_relay) {
                s->step_pending++;
                tms_relay_stop(s->tasks_relay, step_done, s);
            }
            if (s->users_relay && s->users_relay != s->tasks_relay) {
                s->step_pending++;
                tms_relay_stop(s->users_relay, step_done, s);
            }
            close_mailer(s);
            break;
        case STEP_BUS:
            close_bus(s);
            break;
        case STEP_ACTORS:
            stop_actor(s, s->notifier ? tms_notifier_mailbox(s->notifier) : NULL);
            stop_actor(s, s->task ? tms_task_actor_mailbox(s->task) : NULL);
            break;
        case STEP_AUTH:
            stop_actor(s, s->auth ? tms_auth_mailbox(s->auth) : NULL);
            stop_actor(s, s->auth_proxy ? tms_remote_actor_mailbox(s->auth_proxy) : NULL);
            stop_actor(s, s->task_proxy ? tms_remote_actor_mailbox(s->task_proxy) : NULL);
            break;
        case STEP_STORES:
            close_stores(s);
            break;
        default:
            finish_shutdown(s);
            if (s->stopping)
                tms_log_info("stopped", "worker=%d clean=1", s->index);
            return;
        }
    } while (--s->step_pending == 0);
}

static void on_deadline(uv_timer_t *t)
{
    server_t *s = t->data;
    /* Acknowledged writes are committed; what is left (outbox events, emails) is
     * redone after the next start. */
    tms_log_warn("stopped", "worker=%d clean=0 waiting=%s", s->index, step_names[s->step]);
    fflush(stderr);
    _exit(0);
}

/* The listeners have stopped: what follows gets the rest of the grace period. */
static void on_listeners_stopped(void *arg)
{
    server_t *s = arg;
    uint64_t now = uv_now(s->loop);
    if (--s->step_pending > 0)
        return;
    uv_timer_start(
        &s->deadline_timer, on_deadline,
        s->deadline > now + MIN_AFTER_LISTENERS_MS ? s->deadline - now : MIN_AFTER_LISTENERS_MS, 0);
    run_steps(s);
}

/* On the worker's thread after the main thread took SIGINT/SIGTERM. */
static void stop_worker(server_t *s)
{
    uint64_t grace_ms = (uint64_t)s->cfg->server.shutdown_grace * 1000;
    s->stopping = 1;
    tms_log_info("worker_stopping", "worker=%d inflight=%zu grace_s=%lld", s->index,
                 tms_http_server_inflight(s->http), (long long)s->cfg->server.shutdown_grace);
    s->deadline = uv_now(s->loop) + grace_ms;
    s->step = STEP_LISTENERS;
    s->step_pending = 3; /* HTTP, gRPC, metrics */
    tms_http_server_stop(s->http, grace_ms, on_listeners_stopped, s);
    /* gRPC: GOAWAY now; streams already open finish. */
    if (s->grpc)
        tms_grpc_server_stop(s->grpc, grace_ms, on_listeners_stopped, s);
    else
        on_listeners_stopped(s);
    /* The metrics listener: what a scrape in progress needs, no more. */
    if (s->metrics_http)
        tms_http_server_stop(s->metrics_http, 1000, on_listeners_stopped, s);
    else
        on_listeners_stopped(s);
}

/* A failed start: stop what did start, as a stop does (the loop then runs it to the
 * end); listeners that were listening close first. */
static void abort_start(server_t *s)
{
    s->step = STEP_LISTENERS;
    s->step_pending = 1;
    if (s->http) {
        s->step_pending++;
        tms_http_server_stop(s->http, 0, step_done, s);
    }
    if (s->grpc) {
        s->step_pending++;
        tms_grpc_server_stop(s->grpc, 0, step_done, s);
    }
    if (s->metrics_http) {
        s->step_pending++;
        tms_http_server_stop(s->metrics_http, 0, step_done, s);
    }
    step_done(s);
}

static tms_sqlite_t *open_db(uv_loop_t *loop, const char *key, const char *url,
                             const tms_config_t *cfg)
{
    char err[512];
    tms_sqlite_t *db = tms_sqlite_open(loop, sqlite_path(url), (size_t)cfg->server.mailbox_capacity,
                                       err, sizeof(err));
    if (!db)
        fprintf(stderr, "tms: %s: %s\n", key, err);
    return db;
}

static tms_mongo_t *open_mongo(uv_loop_t *loop, const tms_config_t *cfg)
{
    char err[512];
    tms_mongo_t *m = tms_mongo_open(
        loop, cfg->users.url,
        &(tms_mongo_options_t){
            .pool_size = (int)cfg->users.pool_size,
            .server_selection_timeout_ms = (int)cfg->users.server_selection_timeout_ms,
            .socket_timeout_ms = (int)cfg->users.socket_timeout_ms,
            .queue_capacity = (size_t)cfg->server.mailbox_capacity,
        },
        err, sizeof(err));
    if (!m)
        fprintf(stderr, "tms: users.url: %s\n", err);
    return m;
}

/* The user store and its outbox: MongoDB for users.url=mongodb://..., else SQLite. */
static int open_users(server_t *s, const tms_config_t *cfg, tms_user_store_t **store,
                      tms_outbox_t **outbox)
{
    if (tms_mongo_url(cfg->users.url)) {
        if (!s->users_mongo && !(s->users_mongo = open_mongo(s->loop, cfg)))
            return -1;
        *store = tms_mongo_user_store(s->users_mongo);
        *outbox = tms_mongo_outbox(s->users_mongo);
        return 0;
    }
    if (!s->users_db && !(s->users_db = open_db(s->loop, "users.url", cfg->users.url, cfg)))
        return -1;
    *store = tms_sqlite_user_store(s->users_db);
    *outbox = tms_sqlite_outbox(s->users_db);
    return 0;
}

static tms_smtp_options_t smtp_options(const tms_config_t *cfg)
{
    return (tms_smtp_options_t){
        .url = cfg->mail.url,
        .from = cfg->mail.from,
        .domain = strchr(cfg->mail.from, '@') + 1,
        .starttls = cfg->mail.starttls,
        .dlq_dir = cfg->mail.dlq_dir,
        .ca_file = cfg->mail.ca_file,
        .timeout_ms = cfg->mail.timeout_ms,
        .max_concurrent = (int)cfg->mail.max_concurrent,
        .queue_capacity = (size_t)cfg->server.mailbox_capacity,
        .retry_attempts = (int)cfg->mail.retry_attempts,
        .retry_base_ms = cfg->mail.retry_base_ms,
        .retry_max_ms = cfg->mail.retry_max_ms,
        .breaker_window = (int)cfg->mail.breaker_window,
        .breaker_threshold_pct = (int)cfg->mail.breaker_threshold,
        .breaker_cooldown_ms = cfg->mail.breaker_cooldown_ms,
    };
}

static int smtp_url(const char *url)
{
    return strncmp(url, "smtp://", 7) == 0 || strncmp(url, "smtps://", 8) == 0;
}

static int kafka_ready(void *kafka)
{
    return tms_kafka_bus_reachable(kafka);
}

/* The mailer (worker 0 only: it alone runs the notifier); 0 or -1 (already said). */
static int start_mailer(server_t *s, const tms_config_t *cfg)
{
    char err[512];
    const char *maildir = cfg->mail.url + strlen("maildir://");
    s->mail_pool = tms_workpool_new("mail", 2, (size_t)cfg->server.mailbox_capacity);
    if (smtp_url(cfg->mail.url)) {
        tms_smtp_options_t opt = smtp_options(cfg);
        s->mailer = tms_smtp_new(s->loop, &opt, s->mail_pool, err, sizeof(err));
    } else {
        s->mailer =
            tms_maildir_new(s->loop, maildir, cfg->mail.from, strchr(cfg->mail.from, '@') + 1,
                            s->mail_pool, err, sizeof(err));
    }
    if (!s->mailer) {
        fprintf(stderr, "tms: mail.url: %s\n", err);
        return -1;
    }
    return 0;
}

/* What every worker shares: worker 0 makes the cache and the limits (and opens the
 * embedded stores and hash threads in start_parts); the others borrow all of it. */
static void share_parts(server_t *s, const tms_config_t *cfg)
{
    server_t *p = s->primary;
    if (!p) {
        s->user_cache = tms_user_cache_new((uint64_t)cfg->auth.user_cache_ms, 100000);
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
}

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
static void probe_unhealthy_peers(server_t *s)
{
    if (s->auth_client && !tms_grpc_client_healthy(s->auth_client))
        probe_peer(s->auth_client, s->loop);
    if (s->task_client && !tms_grpc_client_healthy(s->task_client))
        probe_peer(s->task_client, s->loop);
}

static int peer_ready(server_t *s, tms_grpc_client_t *c)
{
    if (tms_grpc_client_healthy(c))
        return 1;
    probe_peer(c, s->loop);
    return 0;
}

static int auth_peer_ready(void *arg)
{
    return peer_ready(arg, ((server_t *)arg)->auth_client);
}

static int task_peer_ready(void *arg)
{
    return peer_ready(arg, ((server_t *)arg)->task_client);
}

static double peer_up(void *client)
{
    return tms_grpc_client_healthy(client) ? 1 : 0;
}

/* A role this process does not run: a gRPC client for its peer and a proxy mailbox
 * that callers post to as if it were the actor's own. */
static tms_mailbox_t *start_proxy(server_t *s, const tms_config_t *cfg, const char *role,
                                  const char *addr, tms_grpc_client_t **client,
                                  tms_remote_actor_t **proxy)
{
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
                                      .tls = s->peers_tls,
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

/* The task store and its outbox: PostgreSQL for tasks.url=postgres://..., else SQLite
 * (the users' file when both URLs name one). 0 or -1 (already said). */
static int open_tasks(server_t *s, const tms_config_t *cfg, tms_task_store_t **store,
                      tms_outbox_t **outbox)
{
    char err[512];
    if (tms_pg_url(cfg->tasks.url)) {
        s->tasks_pg = tms_pg_open(
            s->loop, cfg->tasks.url,
            &(tms_pg_options_t){
                .pool_size = (int)cfg->tasks.pool_size,
                .pipeline_depth = (int)cfg->tasks.pipeline_depth,
                .statement_timeout_ms = (int)cfg->tasks.statement_timeout_ms,
                .queue_capacity = (size_t)cfg->server.mailbox_capacity,
                .accept_async_commit = strcmp(cfg->tasks.synchronous_commit, "accept-off") == 0,
                .migrate = strcmp(cfg->tasks.migrate, "auto") == 0 && !s->primary,
            },
            err, sizeof(err));
        if (!s->tasks_pg) {
            fprintf(stderr, "tms: tasks.url: %s\n", err);
            return -1;
        }
        *store = tms_pg_task_store(s->tasks_pg);
        *outbox = tms_pg_outbox(s->tasks_pg);
        return 0;
    }
    if (!s->tasks_db && s->users_db &&
        strcmp(sqlite_path(cfg->users.url), sqlite_path(cfg->tasks.url)) == 0)
        s->tasks_db = s->users_db;
    else if (!s->tasks_db && !(s->tasks_db = open_db(s->loop, "tasks.url", cfg->tasks.url, cfg)))
        return -1;
    *store = tms_sqlite_task_store(s->tasks_db);
    *outbox = tms_sqlite_outbox(s->tasks_db);
    return 0;
}

/* The services a gateway of this process serves over gRPC, as a set of owners (the
 * grpc service's owners): all with the gateway role; without it, the roles run here
 * (auth: AuthService, task: TaskService), served only in migration mode. */
static unsigned serve_owners(const tms_config_t *cfg)
{
    unsigned m = cfg->server.role_mask;
    if (m & TMS_ROLE_GATEWAY)
        return 0;
    return (m & TMS_ROLE_AUTH ? 1u << TMS_OWNER_AUTH : 0) |
           (m & TMS_ROLE_TASK ? 1u << TMS_OWNER_TASK : 0);
}

/* Starts the stores, bus, mailer, relays and actors of the roles in server.roles for
 * one worker, and a proxy for each role another process runs; 0 or -1 (already said).
 *   gateway:  rate limits and routing (REST and public gRPC listen in start_worker)
 *   auth:     user store, hashers, users relay, auth actor
 *   task:     task store, tasks relay, task actor
 *   notifier: mailer, the task store's inbox (dedup), notifier actor
 * With server.workers > 1 every role runs here (config.c): worker 0 owns the shared
 * parts, the relays and the notifier; the others borrow them. */
static int start_parts(server_t *s, tms_config_t *cfg, const char *secret)
{
    char err[512];
    unsigned roles = cfg->server.role_mask;
    tms_outbox_t *users_outbox = NULL, *tasks_outbox = NULL;
    tms_task_store_t *tasks_store = NULL;
    tms_user_store_t *users_store = NULL;
    tms_mailbox_t *auth_mb = NULL, *task_mb = NULL;
    tms_kafka_bus_t *events;
    const char *dummy_hash;

    share_parts(s, cfg);
    if ((roles & TMS_ROLE_AUTH) && open_users(s, cfg, &users_store, &users_outbox) != 0)
        return -1;
    s->users_store = users_store;
    s->users_outbox = users_outbox;
    s->own_users = !s->primary; /* the user store is worker 0's, whatever the backend */
    if ((roles & (TMS_ROLE_TASK | TMS_ROLE_NOTIFIER)) &&
        open_tasks(s, cfg, &tasks_store, &tasks_outbox) != 0)
        return -1;
    s->tasks_store = tasks_store;
    s->tasks_outbox = tasks_outbox;
    s->own_tasks = !s->primary || s->tasks_pg; /* PostgreSQL: a pool per worker */

    /* The other workers get an in-process bus nothing publishes to: their writes are
     * published by worker 0's relays. */
    if (cfg->events.brokers[0] && !s->primary) {
        static const char *const topics[] = {TMS_TOPIC_NOTIFICATIONS, TMS_TOPIC_USER_DELETED,
                                             TMS_TOPIC_COMPENSATE, NULL};
        s->kafka = tms_kafka_bus_new(s->loop,
                                     &(tms_kafka_options_t){
                                         .brokers = cfg->events.brokers,
                                         .client_id = cfg->events.client_id,
                                         .ns = cfg->events.ns,
                                         .topics = topics,
                                         .partitions = (int)cfg->events.partitions,
                                         .replication = (int)cfg->events.replication,
                                         .dlq_after = (int)cfg->events.dlq_after,
                                         .retry_ms = (int)cfg->events.retry_ms,
                                         .publish_timeout_ms = (int)cfg->events.publish_timeout_ms,
                                         .security_protocol = cfg->events.security_protocol,
                                         .tls_ca = cfg->events.tls_ca,
                                         .tls_cert = cfg->events.tls_cert,
                                         .tls_key = cfg->events.tls_key,
                                     },
                                     err, sizeof(err));
        if (!s->kafka) {
            fprintf(stderr, "tms: events.brokers: %s\n", err);
            return -1;
        }
        s->bus = tms_kafka_bus_port(s->kafka);
    } else {
        s->bus = tms_bus_local_new(s->loop);
    }
    if (s->primary) {
        s->tasks_relay = tms_relay_remote_new(s->primary->tasks_relay);
        s->users_relay = s->primary->users_relay == s->primary->tasks_relay
                             ? s->tasks_relay
                             : tms_relay_remote_new(s->primary->users_relay);
    } else {
        if ((roles & TMS_ROLE_NOTIFIER) && start_mailer(s, cfg) != 0)
            return -1;
        if (roles & TMS_ROLE_TASK)
            s->tasks_relay = tms_relay_new(s->loop, tasks_outbox, s->bus, 1000);
        if (roles & TMS_ROLE_AUTH) {
            s->users_relay = users_outbox == tasks_outbox && s->tasks_relay
                                 ? s->tasks_relay
                                 : tms_relay_new(s->loop, users_outbox, s->bus, 1000);
            s->hashers =
                tms_workpool_new("hash", (int)cfg->auth.hash_threads, (size_t)cfg->auth.hash_queue);
        }
    }
    dummy_hash = s->primary ? tms_auth_dummy_hash(s->primary->auth) : NULL;

    if (roles & TMS_ROLE_AUTH) {
        s->auth =
            tms_auth_start(s->loop,
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
                               .inbox = users_outbox,
                               .relay = s->users_relay,
                               .user_cache = s->user_cache,
                               .dummy_hash = dummy_hash,
                               .hash_per_address = (size_t)cfg->auth.hash_per_address,
                               .ipv6_prefix = (unsigned)cfg->ratelimit.ipv6_prefix,
                           },
                           users_store, s->hashers);
        auth_mb = tms_auth_mailbox(s->auth);
    } else if (roles & (TMS_ROLE_GATEWAY | TMS_ROLE_TASK | TMS_ROLE_NOTIFIER)) {
        if (!(auth_mb =
                  start_proxy(s, cfg, "auth", cfg->peers.auth, &s->auth_client, &s->auth_proxy)))
            return -1;
    }
    if (roles & TMS_ROLE_TASK) {
        s->task = tms_task_actor_start(s->loop,
                                       &(tms_task_actor_config_t){
                                           .mailbox_capacity = (size_t)cfg->server.mailbox_capacity,
                                           .tasks = tasks_store,
                                           .outbox = tasks_outbox,
                                           .auth = auth_mb,
                                           .bus = s->bus,
                                           .relay = s->tasks_relay,
                                       });
        task_mb = tms_task_actor_mailbox(s->task);
    } else if (roles & TMS_ROLE_GATEWAY) {
        if (!(task_mb =
                  start_proxy(s, cfg, "task", cfg->peers.task, &s->task_client, &s->task_proxy)))
            return -1;
    }
    if ((roles & TMS_ROLE_NOTIFIER) && !s->primary)
        s->notifier = tms_notifier_start(
            s->loop, &(tms_notifier_config_t){
                         .mailbox_capacity = (size_t)cfg->server.mailbox_capacity,
                         .mailer = s->mailer,
                         .inbox = tasks_outbox,
                         .auth = auth_mb,
                         .bus = s->bus,
                         .per_assigner_per_hour = (uint32_t)cfg->notify.per_assigner_per_hour,
                         .per_recipient_per_hour = (uint32_t)cfg->notify.per_recipient_per_hour,
                     });
    /* Migration mode (grpc.trusted_peers): a process without the gateway role gets a
     * gateway of its own too, for the original services of its roles on grpc.addr
     * (serve_owners); REST stays without the API there. */
    if ((roles & TMS_ROLE_GATEWAY) || (cfg->grpc.trusted_peers[0] && serve_owners(cfg)))
        s->gateway = tms_gateway_start(
            s->loop,
            &(tms_gateway_config_t){
                .api_per_minute = (uint32_t)cfg->ratelimit.api_per_minute,
                .login_per_15min = (uint32_t)cfg->ratelimit.login_per_15min,
                .task_create_per_hour = (uint32_t)cfg->ratelimit.task_create_per_hour,
                .ipv6_prefix = (unsigned)cfg->ratelimit.ipv6_prefix,
                .mailbox_capacity = (size_t)cfg->server.mailbox_capacity,
                .limits = s->limits,
            },
            auth_mb, task_mb);
    /* Every process serves /healthz, /readyz and /metrics; only a gateway the API.
     * /readyz asks worker 0's Kafka client, whichever worker answers. */
    events = s->primary ? s->primary->kafka : s->kafka;
    {
        tms_rest_config_t rc = {
            .gateway =
                s->gateway && (roles & TMS_ROLE_GATEWAY) ? tms_gateway_mailbox(s->gateway) : NULL,
            .users = users_store,
            .tasks = tasks_store,
            .call_timeout_ms = (uint64_t)cfg->server.request_timeout * 1000,
            .events_ready = events && roles != TMS_ROLE_GATEWAY ? kafka_ready : NULL,
            .events_arg = events,
            .metrics_token = cfg->metrics.token,
        };
        if (s->auth_client)
            rc.peers[rc.npeers++] = (tms_rest_peer_check_t){"auth", auth_peer_ready, s};
        if (s->task_client)
            rc.peers[rc.npeers++] = (tms_rest_peer_check_t){"task", task_peer_ready, s};
        s->rest = tms_rest_new(s->loop, &rc);
    }
    return 0;
}

/* What the workers of `tms serve` share with the main thread. */
typedef struct serve {
    tms_config_t *cfg;
    char secret[600];
    server_t *servers;                   /* one per worker */
    char http_addr[160], grpc_addr[160]; /* worker 0's bound addresses, for the others */
    /* TLS contexts (NULL: cleartext), one per listener and one for the peers, shared by
     * every worker; SIGHUP reloads them on the main thread. */
    tms_tls_ctx_t *tls[3];
} serve_t;

enum { TLS_HTTP, TLS_GRPC, TLS_PEERS };

/* host:port with the port a listener actually got (the configured one may be 0). */
static void bound_addr(char *out, size_t size, const char *configured, int port)
{
    const char *colon = strrchr(configured, ':');
    snprintf(out, size, "%.*s:%d", (int)(colon - configured), configured, port);
}

static void on_http_request(void *ctx, tms_http_request_t *req)
{
    server_t *s = ctx;
    tms_counter_add(s->requests, 1);
    tms_rest_handle(s->rest, req);
}

/* Whether this process listens on grpc.addr: the public services on a gateway, and in
 * a split deployment the internal service on the roles others call. */
static bool serves_grpc(const tms_config_t *cfg)
{
    bool split = cfg->server.role_mask != TMS_ROLE_ALL;
    return (cfg->server.role_mask & TMS_ROLE_GATEWAY) ||
           (split && (cfg->server.role_mask & (TMS_ROLE_AUTH | TMS_ROLE_TASK)));
}

/* http.max_connections_per_address, but at most half of http.max_connections: one
 * address never holds every slot, whatever the two are set to. 0: no cap. */
static size_t per_address_cap(const tms_config_t *cfg)
{
    size_t cap = (size_t)cfg->http.max_connections_per_address;
    size_t half = (size_t)cfg->http.max_connections / 2;
    if (cap && cap > half)
        cap = half ? half : 1;
    return cap;
}

/* On worker index's thread: its parts, then its listeners on the ports worker 0 got. */
static int start_worker(void *arg, tms_workers_t *w, int index, uv_loop_t *loop)
{
    serve_t *sv = arg;
    server_t *s = &sv->servers[index];
    tms_config_t *cfg = sv->cfg;
    const char *http_addr = index ? sv->http_addr : cfg->http.addr;
    const char *grpc_addr = index ? sv->grpc_addr : cfg->grpc.addr;
    tms_http_limits_t limits;
    char labels[32];
    bool split;

    s->loop = loop;
    s->cfg = cfg;
    s->index = index;
    s->workers = w;
    s->primary = index ? &sv->servers[0] : NULL;
    s->peers_tls = sv->tls[TLS_PEERS];
    s->control = tms_mailbox_new(loop, "control", 8, on_control, s);
    uv_timer_init(s->loop, &s->deadline_timer);
    s->deadline_timer.data = s;
    if (s->primary) { /* counted before anything can fail: finish_shutdown counts it off */
        pthread_mutex_lock(&peers_lock);
        s->primary->peers_running++;
        pthread_mutex_unlock(&peers_lock);
    } else {
        uv_async_init(loop, &s->peers_async, on_peer_ended);
        s->peers_async.data = s;
        uv_unref((uv_handle_t *)&s->peers_async);
        s->peers_open = true;
    }
    if (start_parts(s, cfg, sv->secret) != 0)
        goto fail;

    snprintf(labels, sizeof(labels), "worker=\"%d\"", index);
    s->requests = tms_metrics_counter("tms_worker_http_requests_total",
                                      "HTTP requests taken by each worker loop", labels);
    tms_http_limits_default(&limits);
    limits.max_head_bytes = (size_t)cfg->http.max_head_bytes;
    limits.max_body_bytes = (size_t)cfg->http.max_body_bytes;
    limits.head_timeout_ms = (uint64_t)cfg->http.head_timeout * 1000;
    limits.idle_timeout_ms = (uint64_t)cfg->http.idle_timeout * 1000;
    limits.body_timeout_ms = (uint64_t)cfg->http.body_timeout * 1000;
    limits.send_timeout_ms = (uint64_t)cfg->http.send_timeout * 1000;
    limits.max_connections = (size_t)cfg->http.max_connections;
    limits.max_connections_per_address = per_address_cap(cfg);
    limits.ipv6_prefix = (unsigned)cfg->ratelimit.ipv6_prefix;
    limits.tls = sv->tls[TLS_HTTP];
    limits.tls_handshake_timeout_ms = (uint64_t)cfg->http.tls_handshake_timeout * 1000;
    s->http = tms_http_server_new(s->loop, &limits, on_http_request, s);
    if (tms_http_server_listen(s->http, http_addr) != 0) {
        fprintf(stderr, "tms: http.addr: cannot listen on %s: %s\n", http_addr,
                tms_http_server_error(s->http));
        goto fail;
    }

    /* The gRPC listener on grpc.addr (serves_grpc). */
    split = cfg->server.role_mask != TMS_ROLE_ALL;
    if (serves_grpc(cfg)) {
        s->grpc_api = tms_grpc_service_new(
            s->loop, &(tms_grpc_service_config_t){
                         .gateway = s->gateway ? tms_gateway_mailbox(s->gateway) : NULL,
                         .owners = serve_owners(cfg),
                         .trusted_peers = cfg->grpc.trusted_peers,
                         .service_token = split ? cfg->peers.secret : NULL,
                         .auth = split && s->auth ? tms_auth_mailbox(s->auth) : NULL,
                         .task = split && s->task ? tms_task_actor_mailbox(s->task) : NULL,
                         .call_timeout_ms = (uint64_t)cfg->server.request_timeout * 1000,
                     });
        s->grpc = tms_grpc_server_new(
            s->loop,
            &(tms_grpc_config_t){
                .handler = tms_grpc_service_handler(s->grpc_api),
                .idle_timeout_ms = (uint64_t)cfg->http.idle_timeout * 1000,
                .max_connections = (size_t)cfg->http.max_connections,
                .max_connections_per_address = per_address_cap(cfg),
                .ipv6_prefix = (unsigned)cfg->ratelimit.ipv6_prefix,
                .max_message_bytes = (size_t)cfg->grpc.max_message_bytes,
                .max_unauthenticated_message_bytes =
                    (size_t)cfg->grpc.max_unauthenticated_message_bytes,
                .max_connection_request_bytes = (size_t)cfg->grpc.max_connection_request_bytes,
                .max_stream_output_bytes = (size_t)cfg->grpc.max_stream_output_bytes,
                .max_connection_output_bytes = (size_t)cfg->grpc.max_connection_output_bytes,
                .max_buffered_bytes = (size_t)cfg->grpc.max_buffered_bytes,
                .receive_timeout_ms = (uint64_t)cfg->grpc.receive_timeout * 1000,
                .send_timeout_ms = (uint64_t)cfg->grpc.send_timeout * 1000,
                .tls = sv->tls[TLS_GRPC],
                .tls_handshake_timeout_ms = (uint64_t)cfg->http.tls_handshake_timeout * 1000,
            });
    }
    if (s->grpc && tms_grpc_server_listen(s->grpc, grpc_addr) != 0) {
        fprintf(stderr, "tms: grpc.addr: cannot listen on %s: %s\n", grpc_addr,
                tms_grpc_server_error(s->grpc));
        goto fail;
    }
    /* /metrics without a token, apart from the public port: worker 0 serves it for the
     * whole process (every counter is process-wide). */
    if (index == 0 && cfg->metrics.addr[0]) {
        tms_http_limits_t ml;
        tms_http_limits_default(&ml);
        ml.listener = "metrics";
        ml.max_body_bytes = 0;
        ml.max_connections = 64;
        ml.head_timeout_ms = limits.head_timeout_ms;
        ml.idle_timeout_ms = limits.idle_timeout_ms;
        ml.send_timeout_ms = limits.send_timeout_ms;
        s->metrics_http = tms_http_server_new(s->loop, &ml, tms_rest_handle_metrics, NULL);
        if (tms_http_server_listen(s->metrics_http, cfg->metrics.addr) != 0) {
            fprintf(stderr, "tms: metrics.addr: cannot listen on %s: %s\n", cfg->metrics.addr,
                    tms_http_server_error(s->metrics_http));
            goto fail;
        }
    }
#ifdef TMS_FAULTS
    if (index > 0 && getenv("TMS_FAULT_WORKER_START") &&
        atoi(getenv("TMS_FAULT_WORKER_START")) == index) { /* test-only: a late failure */
        fprintf(stderr, "tms: fault: worker %d refuses to start\n", index);
        goto fail;
    }
#endif
    s->http_port = tms_http_server_port(s->http);
    s->grpc_port = s->grpc ? tms_grpc_server_port(s->grpc) : -1;
    if (index == 0) { /* read by the other workers, which start after this returns */
        bound_addr(sv->http_addr, sizeof(sv->http_addr), cfg->http.addr, s->http_port);
        bound_addr(sv->grpc_addr, sizeof(sv->grpc_addr), cfg->grpc.addr, s->grpc_port);
    }

    uv_timer_init(s->loop, &s->lag_timer);
    s->lag_timer.data = s;
    s->lag_expected = uv_hrtime() + LAG_INTERVAL_MS * 1000000ull;
    uv_timer_start(&s->lag_timer, on_lag_tick, LAG_INTERVAL_MS, LAG_INTERVAL_MS);
    uv_unref((uv_handle_t *)&s->lag_timer);
    tms_metrics_gauge_fn("tms_loop_lag_seconds", "how late the event loop ran a 100 ms timer", "",
                         lag_gauge, s);
    tms_log_info("worker_started", "worker=%d port=%d grpc_port=%d", index, s->http_port,
                 s->grpc_port);
    return 0;
fail:
    abort_start(s); /* the loop runs it to the end */
    return -1;
}

static void on_worker_stop(void *arg, int index)
{
    stop_worker(&((serve_t *)arg)->servers[index]);
}

static int on_worker_finished(void *arg, int index)
{
    return ((serve_t *)arg)->servers[index].rest ? 1 : 0; /* ended without a full shutdown */
}

static void on_started(void *arg, int nworkers)
{
    serve_t *sv = arg;
    server_t *s = &sv->servers[0];
    tms_log_info("listening",
                 "proto=http addr=%s port=%d grpc_port=%d workers=%d version=%s roles=%s "
                 "users=%s tasks=%s events=%s mail=%s data_dir=%s",
                 sv->cfg->http.addr, s->http_port, s->grpc_port, nworkers, TMS_VERSION,
                 sv->cfg->server.roles,
                 !s->auth         ? "-"
                 : s->users_mongo ? "mongodb"
                                  : "sqlite",
                 !(s->task || s->notifier) ? "-"
                 : s->tasks_pg             ? "postgres"
                                           : "sqlite",
                 sv->cfg->events.brokers[0] ? "kafka" : "local",
                 !s->mailer                    ? "-"
                 : smtp_url(sv->cfg->mail.url) ? "smtp"
                                               : "maildir",
                 sv->cfg->data.dir);
    sodium_memzero(sv->secret, sizeof(sv->secret)); /* every auth actor has its copy */
    if (sv->cfg->grpc.trusted_peers[0] && s->grpc) {
        char q[1100];
        const char *tp = sv->cfg->grpc.trusted_peers;
        unsigned o = serve_owners(sv->cfg);
        tms_log_warn("trusted_peers",
                     "trusted_peers=%s services=%s note=\"gRPC calls without a token from these "
                     "addresses are served with the original system's semantics: no caller, no "
                     "permission checks (migration only; see README)\"",
                     tms_log_quote(q, sizeof(q), tp, strlen(tp)),
                     o == 1u << TMS_OWNER_AUTH   ? "AuthService"
                     : o == 1u << TMS_OWNER_TASK ? "TaskService"
                                                 : "AuthService,TaskService");
    }
}

static void on_stopping(void *arg, int signum)
{
    serve_t *sv = arg;
    tms_log_info("stopping", "signal=%d workers=%lld grace_s=%lld", signum,
                 (long long)sv->cfg->server.workers, (long long)sv->cfg->server.shutdown_grace);
}

/* The TLS contexts of the settings (config.c has checked how they combine): the
 * files are read and checked here, before anything else starts. 0 or -1 (said). */
static int open_tls(const tms_config_t *cfg, tms_tls_ctx_t *tls[3])
{
    unsigned m = cfg->server.role_mask;
    bool split = m != TMS_ROLE_ALL;
    char err[1400], about[400];
    tms_tls_options_t o[3];
    memset(o, 0, sizeof(o));
    if (cfg->http.tls_cert[0])
        o[TLS_HTTP] = (tms_tls_options_t){
            .section = "http",
            .cert = cfg->http.tls_cert,
            .key = cfg->http.tls_key,
            .ca = cfg->http.tls_client_ca,
            .protocols = cfg->http.tls_protocols,
            .ciphers = cfg->http.tls_ciphers,
            .alpn = "http/1.1",
        };
    if (serves_grpc(cfg) && split && !(m & TMS_ROLE_GATEWAY) && cfg->peers.tls_cert[0])
        /* The internal service alone: only peers with a certificate from peers.tls_ca. */
        o[TLS_GRPC] = (tms_tls_options_t){
            .section = "peers",
            .label = "grpc",
            .cert = cfg->peers.tls_cert,
            .key = cfg->peers.tls_key,
            .ca = cfg->peers.tls_ca,
            .alpn = "h2",
        };
    else if (serves_grpc(cfg) && cfg->grpc.tls_cert[0])
        o[TLS_GRPC] = (tms_tls_options_t){
            .section = "grpc",
            .cert = cfg->grpc.tls_cert,
            .key = cfg->grpc.tls_key,
            .ca = cfg->grpc.tls_client_ca,
            .protocols = cfg->grpc.tls_protocols,
            .ciphers = cfg->grpc.tls_ciphers,
            .alpn = "h2",
        };
    if (split && cfg->peers.tls_cert[0] && (cfg->peers.auth[0] || cfg->peers.task[0]))
        o[TLS_PEERS] = (tms_tls_options_t){
            .section = "peers",
            .label = "peers",
            .client = true,
            .cert = cfg->peers.tls_cert,
            .key = cfg->peers.tls_key,
            .ca = cfg->peers.tls_ca,
            .alpn = "h2",
        };
    for (int i = 0; i < 3; i++) {
        if (!o[i].section)
            continue;
        tls[i] = tms_tls_ctx_new(&o[i], err, sizeof(err));
        if (!tls[i]) {
            fprintf(stderr, "tms: %s\n", err);
            return -1;
        }
        tms_tls_ctx_describe(tls[i], about, sizeof(about));
        tms_log_info("tls", "context=%s %s", tms_tls_ctx_label(tls[i]), about);
    }
    return 0;
}

/* SIGHUP, on the main thread: new certificates for new connections; a file that does
 * not pass keeps the old one. */
static void on_reload(void *arg)
{
    serve_t *sv = arg;
    char err[1400], about[400];
    int n = 0;
    for (int i = 0; i < 3; i++) {
        tms_tls_ctx_t *t = sv->tls[i];
        if (!t)
            continue;
        n++;
        if (tms_tls_ctx_reload(t, err, sizeof(err)) != 0) {
            char q[1500];
            tms_log_error("tls_reload_failed", "context=%s kept=old error=%s", tms_tls_ctx_label(t),
                          tms_log_quote(q, sizeof(q), err, strlen(err)));
            continue;
        }
        tms_tls_ctx_describe(t, about, sizeof(about));
        tms_log_info("tls_reloaded", "context=%s %s", tms_tls_ctx_label(t), about);
    }
    if (n == 0)
        tms_log_info("reload", "tls=none");
}

/* One `tms serve` per data dir: two would run relays over one SQLite file and split
 * its Maildir. An flock on <data.dir>/tms.lock (holding the pid, for the message) is
 * kept until exit; the kernel drops it however the process ends. 0 or -1 (said). */
static int lock_data_dir(const tms_config_t *cfg)
{
    char path[1100], pid[32] = "";
    ssize_t n;
    int fd;
    snprintf(path, sizeof(path), "%s/tms.lock", cfg->data.dir);
    fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (fd < 0) {
        fprintf(stderr, "tms: data.dir: cannot open %s: %s\n", path, strerror(errno));
        return -1;
    }
    if (flock(fd, LOCK_EX | LOCK_NB) != 0) {
        n = read(fd, pid, sizeof(pid) - 1);
        pid[n > 0 ? strcspn(pid, "\n") : 0] = '\0';
        fprintf(stderr,
                "tms: data.dir: %s is in use by another tms serve (pid %s); each instance "
                "needs its own data.dir\n",
                cfg->data.dir, pid[0] ? pid : "unknown");
        close(fd);
        return -1;
    }
    if (ftruncate(fd, 0) == 0)
        dprintf(fd, "%ld\n", (long)getpid());
    return 0; /* fd stays open: the lock lives as long as the process */
}

/* A taken address stops start-up with one line before any store opens (the
 * listeners check again when they bind). 0 or -1 (said). */
static int check_addresses(const tms_config_t *cfg)
{
    const char *keys[] = {"http.addr", "grpc.addr", "metrics.addr"};
    const char *addrs[] = {cfg->http.addr, serves_grpc(cfg) ? cfg->grpc.addr : "",
                           cfg->metrics.addr};
    char why[160];
    for (int i = 0; i < 3; i++) {
        if (addrs[i][0] && tms_listener_check(addrs[i], why, sizeof(why)) != 0) {
            fprintf(stderr, "tms: %s: cannot listen on %s: %s\n", keys[i], addrs[i], why);
            return -1;
        }
    }
    return 0;
}

/* server.workers loops on their own threads (core/workers.h); this thread only takes
 * the signals. */
static int cmd_serve(tms_config_t *cfg)
{
    static serve_t sv;
    tms_workers_hooks_t hooks = {
        .start = start_worker,
        .stop = on_worker_stop,
        .finished = on_worker_finished,
        .started = on_started,
        .stopping = on_stopping,
        .reload = on_reload,
        .arg = &sv,
    };
    int rc;

    sv.cfg = cfg;
    signal(SIGPIPE, SIG_IGN);
    if (open_tls(cfg, sv.tls) != 0)
        goto out;
    if (make_dir(cfg->data.dir) != 0) {
        fprintf(stderr, "tms: data.dir: cannot create %s: %s\n", cfg->data.dir, strerror(errno));
        goto out;
    }
    if (lock_data_dir(cfg) != 0 || check_addresses(cfg) != 0)
        goto out;
    if (load_secret(cfg, sv.secret, sizeof(sv.secret)) != 0)
        goto out;
    sv.servers = calloc((size_t)cfg->server.workers, sizeof(server_t));
    if (!sv.servers)
        goto out;
    rc = tms_workers_run((int)cfg->server.workers, &hooks);
    sodium_memzero(sv.secret, sizeof(sv.secret));
    free(sv.servers);
    for (int i = 0; i < 3; i++)
        tms_tls_ctx_free(&sv.tls[i]);
    tms_metrics_reset();
    return rc;
out:
    for (int i = 0; i < 3; i++)
        tms_tls_ctx_free(&sv.tls[i]);
    return 1;
}

/* ---- one-shot store commands ------------------------------------------ */

static void on_role_set(tms_msg_t *msg)
{
    *(tms_user_op_t **)msg->ctx = (tms_user_op_t *)msg;
}

static void free_op(tms_msg_t *msg)
{
    free(msg);
}

static void on_store_closed(void *arg)
{
    *(bool *)arg = true;
}

/* Runs one SET_ROLE through the store's own thread on a private loop, so the CLI
 * and the server share one code path to the database (WAL lets both run at once). */
static int cmd_set_role(tms_config_t *cfg, const char *email, const char *role)
{
    uv_loop_t loop;
    tms_mailbox_t *replies;
    tms_user_op_t *op, *done = NULL;
    char err[512];
    tms_sqlite_t *db = NULL;
    tms_mongo_t *mongo = NULL;
    tms_user_store_t *store;
    bool closed = false;
    int rc = 1;

    if (strcmp(role, "admin") != 0 && strcmp(role, "user") != 0) {
        fprintf(stderr, "tms: role must be 'admin' or 'user'\n");
        return 2;
    }
    if (make_dir(cfg->data.dir) != 0) {
        fprintf(stderr, "tms: data.dir: cannot create %s\n", cfg->data.dir);
        return 1;
    }
    uv_loop_init(&loop);
    if (tms_mongo_url(cfg->users.url)) {
        if (!(mongo = open_mongo(&loop, cfg)))
            goto out;
        store = tms_mongo_user_store(mongo);
    } else if ((db = tms_sqlite_open(&loop, sqlite_path(cfg->users.url), 4, err, sizeof(err)))) {
        store = tms_sqlite_user_store(db);
    } else {
        fprintf(stderr, "tms: users.url: %s\n", err);
        goto out;
    }
    replies = tms_mailbox_new(&loop, "cli", 1, NULL, NULL);
    op = calloc(1, sizeof(*op));
    if (!op)
        abort();
    op->msg.op = TMS_USER_SET_ROLE;
    op->msg.reply_to = replies;
    op->msg.cont = on_role_set;
    op->msg.ctx = &done;
    op->msg.free_fn = free_op;
    snprintf(op->key, sizeof(op->key), "%s", email);
    snprintf(op->user.role, sizeof(op->user.role), "%s", role);
    if (tms_user_store_submit(store, &op) != 0) {
        free(op);
        fprintf(stderr, "tms: user store refused the request\n");
    } else {
        while (!done)
            uv_run(&loop, UV_RUN_ONCE);
        if (done->err.code == TMS_OK) {
            printf("%s is now %s\n", done->user.email, done->user.role);
            rc = 0;
        } else if (done->err.code == TMS_NOT_FOUND) {
            fprintf(stderr, "tms: no user with email %s\n", email);
        } else {
            fprintf(stderr, "tms: %s\n", done->err.message);
        }
        free(done);
    }
    tms_mailbox_free(&replies);
    store->close(store, on_store_closed, &closed); /* the store goes with its port */
    while (!closed)
        uv_run(&loop, UV_RUN_ONCE);
out:
    uv_run(&loop, UV_RUN_DEFAULT);
    uv_loop_close(&loop);
    return rc;
}

/* Dead letters are replayed through SMTP (io/mail/dlq.h takes the sender). */
static int dlq_send_smtp(void *opt, const char *to, const char *data, size_t len, long *code,
                         char *err, size_t err_len)
{
    return tms_smtp_send_blocking(opt, to, data, len, code, err, err_len);
}

/* `tms mail dlq list|replay [EVENT_ID]`: works on the files directly, so it runs
 * beside a live server; replay sends synchronously (this is not a loop). */
static int cmd_mail_dlq(tms_config_t *cfg, const cli_t *cli)
{
    int n;
    if (strcmp(cli->args[1], "list") == 0 && cli->nargs == 2) {
        n = tms_mail_dlq_list(cfg->mail.dlq_dir, stdout);
        if (n < 0) {
            if (errno == ENOENT)
                return 0; /* nothing was ever dead-lettered */
            fprintf(stderr, "tms: mail.dlq_dir %s: %s\n", cfg->mail.dlq_dir, strerror(errno));
            return 1;
        }
        return 0;
    }
    if (strcmp(cli->args[1], "replay") == 0 && cli->nargs <= 3) {
        tms_smtp_options_t opt = smtp_options(cfg);
        if (!smtp_url(cfg->mail.url)) {
            fprintf(stderr, "tms: mail.url: replay needs smtp:// or smtps://\n");
            return 2;
        }
        n = tms_mail_dlq_replay(cfg->mail.dlq_dir, cli->nargs == 3 ? cli->args[2] : NULL,
                                dlq_send_smtp, &opt, stdout);
        if (n < 0) {
            fprintf(stderr, "tms: mail.dlq_dir %s: %s\n", cfg->mail.dlq_dir, strerror(errno));
            return 1;
        }
        return n == 0 ? 0 : 1;
    }
    fputs(usage, stderr);
    return 2;
}

int main(int argc, char **argv)
{
    cli_t cli;
    tms_config_t *cfg;
    int rc;
    if (parse_cli(argc, argv, &cli) != 0) {
        fputs(usage, stderr);
        return 2;
    }
    if (strcmp(cli.command, "version") == 0) {
        printf("tms %s\n", TMS_VERSION);
        return 0;
    }
    if (sodium_init() < 0) {
        fprintf(stderr, "tms: libsodium failed to initialise\n");
        return 1;
    }
    cfg = calloc(1, sizeof(*cfg));
    if (!cfg)
        return 1;
    if (strcmp(cli.command, "config") == 0) {
        tms_config_write_defaults(stdout);
        free(cfg);
        return 0;
    }
    if (load_config(&cli, cfg) != 0) {
        free(cfg);
        return 2;
    }
    if (strcmp(cli.command, "serve") == 0 && cli.nargs == 0) {
        rc = cmd_serve(cfg);
    } else if (strcmp(cli.command, "migrate") == 0 && cli.nargs == 0) {
        char err[512];
        if (make_dir(cfg->data.dir) != 0 ||
            (tms_pg_url(cfg->tasks.url)
                 ? (!tms_mongo_url(cfg->users.url) &&
                    tms_sqlite_migrate(sqlite_path(cfg->users.url), err, sizeof(err)) != 0) ||
                       tms_pg_migrate_sync(cfg->tasks.url, err, sizeof(err)) != 0
                 : tms_sqlite_migrate(sqlite_path(cfg->tasks.url), err, sizeof(err)) != 0)) {
            fprintf(stderr, "tms: migrate: %s\n", err);
            rc = 1;
        } else {
            rc = 0;
        }
    } else if (strcmp(cli.command, "mail") == 0 && cli.nargs >= 2 &&
               strcmp(cli.args[0], "dlq") == 0) {
        rc = cmd_mail_dlq(cfg, &cli);
    } else if (strcmp(cli.command, "user") == 0 && cli.nargs == 3 &&
               strcmp(cli.args[0], "set-role") == 0) {
        rc = cmd_set_role(cfg, cli.args[1], cli.args[2]);
    } else {
        fputs(usage, stderr);
        rc = 2;
    }
    free(cfg);
    return rc;
}
